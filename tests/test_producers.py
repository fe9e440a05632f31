"""The direct producer (``VAE.particles``) gives what tracing ``VAE.model`` and ``VAE.guide``
gives: particles, every estimator's loss, gradient and state update, for every registered
estimator (and variant) x prior x guide family with the Bernoulli likelihood, and every other
likelihood with each of them but the guide families (see ``COMBINATIONS``). The combinations
come from the registries, so a part registered later is covered without editing this file."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import (
    GUIDES,
    LIKELIHOODS,
    PRIORS,
    VAE,
    VAEConfig,
    build_vae,
    evaluate_vae,
    log_importance_weights,
    make_estimator,
)
from pyrovae.particles import traced_particles
from pyrovae.producers import applies, make_producer

from helpers import assert_producers_agree, case_id, estimator_specs

FIELDS = ("log_prior", "log_lik", "log_q", "log_q_stopped", "kl")
NUM_DATA = 40


def _vae(prior, guide, likelihood):
    """A small float64 VAE of these parts, or None where the prior and guide disagree on the
    kind of latent (which build_vae refuses)."""
    torch.manual_seed(0)
    cfg = VAEConfig(x_dim=6, z_dim=3, hidden=(8,), prior=prior, guide=guide, likelihood=likelihood)
    try:
        vae = build_vae(cfg)
    except ValueError as e:
        assert "kind" in str(e)
        return None
    vae = vae.double()
    with torch.no_grad():  # away from symmetric starting values, where gradients can cancel
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae


# Every estimator x prior x guide family with the Bernoulli likelihood, and with every other
# likelihood the guides of one continuous and one binary family: the likelihood enters only
# through log p(x | z), whichever family drew z, while a prior can read the likelihood (the
# VampPrior's pseudo-inputs take its data range). A third of the full product's cases.
GUIDES_BESIDE_OTHER_LIKELIHOODS = ("diagonal-gaussian", "bernoulli")
COMBINATIONS = [
    (name, options, prior, guide, likelihood)
    for (name, options), prior, guide, likelihood in itertools.product(
        estimator_specs(), PRIORS.names(), GUIDES.names(), LIKELIHOODS.names()
    )
    if likelihood == "bernoulli" or guide in GUIDES_BESIDE_OTHER_LIKELIHOODS
]


@pytest.mark.parametrize("case", COMBINATIONS, ids=[case_id(c) for c in COMBINATIONS])
def test_direct_producer_equals_traced_for_every_registered_part(case):
    name, options, prior, guide, likelihood = case
    vae = _vae(prior, guide, likelihood)
    if vae is None:
        return  # a continuous prior with a binary guide (or the reverse): refused, as checked
    assert_producers_agree(vae, name, options, FIELDS, NUM_DATA)


def test_every_registered_estimator_applies_to_some_registered_vae():
    """Nothing is registered that the equality test would only ever see refused."""
    for name, options in estimator_specs():
        found = False
        for prior, guide, likelihood in itertools.product(
            PRIORS.names(), GUIDES.names(), LIKELIHOODS.names()
        ):
            vae = _vae(prior, guide, likelihood)
            if vae is not None:
                est = make_estimator(name, **options).double()
                if applies(make_producer(vae, "direct"), est, vae.sample(4, mean=False)):
                    found = True
                    break
        assert found, (name, options)


def test_traced_producer_scale_and_argument_routes_agree():
    """The trainer calls model(x) and passes N / B; SVI users call model(x, N) and the plate
    scales: the same particles either way."""
    vae = _vae("standard-normal", "diagonal-gaussian", "bernoulli")
    x = vae.sample(5, mean=False)
    pyro.set_rng_seed(0)
    a = make_producer(vae, "traced")(x, 50, 2, True)
    pyro.set_rng_seed(0)
    b = traced_particles(vae.model, vae.guide, (x, 50), num_particles=2)
    assert a.scale == b.scale == 10
    torch.testing.assert_close(a.log_w, b.log_w, rtol=0, atol=0)
    with pytest.raises(ValueError, match="smaller than the batch"):
        make_producer(vae, "traced")(x, 2, 1, True)


def test_direct_producer_only_for_the_library_model_and_guide():
    class Custom(VAE):
        def model(self, x, num_data=None):
            return super().model(x, num_data)

    vae = _vae("standard-normal", "diagonal-gaussian", "bernoulli")
    custom = Custom(vae.encoder, vae.decoder, vae.prior, vae.likelihood, vae.guide_family)
    assert make_producer(vae).name == "direct"
    assert make_producer(custom).name == "traced"
    with pytest.raises(ValueError, match="traced producer"):
        make_producer(custom, "direct")
    with pytest.raises(ValueError, match="unknown producer"):
        make_producer(vae, "turbo")
    with pytest.raises(ValueError, match="traced producer"):
        make_producer((vae.model, vae.guide), "direct")


@pytest.mark.parametrize("latent", ["standard-normal", "bernoulli"])
@pytest.mark.parametrize("k", [1, 7])
def test_evaluation_log_weights_match_tracing(latent, k):
    """Evaluation uses the direct producer's log weights: equal to tracing (float32, as run)."""
    guide = "diagonal-gaussian" if latent == "standard-normal" else "bernoulli"
    vae = _vae(latent, guide, "bernoulli").float()
    x = vae.sample(12, mean=False)
    pyro.set_rng_seed(3)
    expected = log_importance_weights(vae.model, vae.guide, x, k)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        got = make_producer(vae, "direct")(x, None, k, None).log_w
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    pyro.set_rng_seed(5)
    direct = evaluate_vae(vae, x, k=100, progress=False, chunk_pairs=256)
    pyro.set_rng_seed(5)
    traced = evaluate_vae(vae, x, k=100, progress=False, chunk_pairs=256, producer="traced")
    torch.testing.assert_close(
        direct.per_point_log_px, traced.per_point_log_px, rtol=1e-6, atol=1e-4
    )
    torch.testing.assert_close(direct.per_point_elbo, traced.per_point_elbo, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("latent", ["standard-normal", "bernoulli"])
def test_worker_threads_give_the_serial_estimate(latent):
    """Particles are drawn in order on the calling thread whatever the number of workers, so
    the estimate is the same up to float rounding of one- against two-threaded ops."""
    guide = "diagonal-gaussian" if latent == "standard-normal" else "bernoulli"
    vae = _vae(latent, guide, "bernoulli").float()
    x = vae.sample(12, mean=False)
    results = []
    for workers in (1, 3):
        pyro.set_rng_seed(6)
        results.append(
            evaluate_vae(vae, x, k=300, progress=False, chunk_pairs=128, workers=workers)
        )
    threads = torch.get_num_threads()
    serial, threaded = results
    assert torch.get_num_threads() == threads  # restored after the workers
    torch.testing.assert_close(
        threaded.per_point_log_px, serial.per_point_log_px, rtol=1e-6, atol=1e-5
    )
    torch.testing.assert_close(threaded.per_point_elbo, serial.per_point_elbo, rtol=1e-6, atol=1e-5)
    pyro.set_rng_seed(7)
    other = evaluate_vae(vae, x, k=300, progress=False, chunk_pairs=128, workers=3)
    assert not torch.allclose(other.per_point_log_px, serial.per_point_log_px)


def test_a_part_subclass_that_changes_its_distribution_gets_the_generic_densities():
    """The parts' fast densities reproduce their own forward only: a subclass with another
    distribution must still give the traced producer's numbers."""
    from pyrovae.parts.guides import DiagonalGaussian
    from pyrovae.parts.priors import StandardNormal

    class SoftplusScale(DiagonalGaussian):
        def forward(self, h):
            loc, raw = h.split(self.z_dim, dim=-1)
            return dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1)

    class Wide(StandardNormal):
        def forward(self):
            return dist.Normal(self.loc, 3 * self.scale).to_event(1)

    vae = _vae("standard-normal", "diagonal-gaussian", "bernoulli")
    vae.guide_family, vae.prior = SoftplusScale(3), Wide(3).double()
    x = vae.sample(5, mean=False)
    for reparameterized in (True, False):
        pyro.set_rng_seed(0)
        a = make_producer(vae, "direct")(x, None, 2, reparameterized)
        pyro.set_rng_seed(0)
        b = make_producer(vae, "traced")(x, None, 2, reparameterized)
        for field in FIELDS:
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-10, atol=1e-10)


def test_stopped_guide_density_with_a_stale_param_store():
    """A VAE built after another of the same name: Pyro's param store holds the first one's
    tensors under the names the second registers. The traced log_q_stopped must still stop
    the parameters the guide computes with (STL's gradient equal on both producers)."""
    first = _vae("standard-normal", "diagonal-gaussian", "bernoulli")
    x = first.sample(5, mean=False)
    _ = make_producer(first, "traced")(x, None, 1, True).log_w  # fills the store
    second = _vae("standard-normal", "diagonal-gaussian", "bernoulli")
    with torch.no_grad():
        for p in second.parameters():
            p.mul_(1.5)
    stl = make_estimator("stl")
    grads = []
    for kind in ("direct", "traced"):
        pyro.set_rng_seed(0)
        _, surrogate = stl(make_producer(second, kind)(x, None, 1, True))
        grads.append(torch.autograd.grad(surrogate, list(second.encoder.parameters())))
    for g, h in zip(*grads):
        torch.testing.assert_close(g, h, rtol=1e-8, atol=1e-10)


# Extreme encoder outputs, as a diverging training run reaches them: each a function of the
# family's latent width d and input width F giving the encoder's output (F,), or None where
# the family has no such output. Every registered real-latent family reads (location, log
# scale) first; the locations are 3, so that a scale of e^-60 is far below their float32
# resolution.
def _scales(log_scale):
    def outputs(family, d, f):
        if family.latent == "binary":
            return torch.full((f,), 4 * log_scale)  # logits far into either tail
        h = torch.zeros(f)
        h[:d], h[d : 2 * d] = 3.0, log_scale
        return h

    return outputs


def _off_diagonal(family, d, f):
    if f != 2 * d + d * (d - 1) // 2 or family.latent != "real":
        return None
    h = torch.zeros(f)
    h[:d], h[2 * d :] = 3.0, 1e4 * d  # L's strictly-lower entries 1e4
    return h


EXTREMES = {
    "large-scales": _scales(60.0),
    "small-scales": _scales(-60.0),
    "large-off-diagonal": _off_diagonal,
}
EXTREME_CASES = [
    (guide, extreme)
    for guide in GUIDES.names()
    for extreme in EXTREMES
    if EXTREMES[extreme](GUIDES.get(guide)(4), 4, GUIDES.get(guide)(4).in_features) is not None
]


@pytest.mark.parametrize("guide,extreme", EXTREME_CASES, ids=["-".join(c) for c in EXTREME_CASES])
def test_producers_agree_on_extreme_encoder_outputs(guide, extreme):
    """On encoder outputs a diverging run reaches (scales of e^±60, L's entries of 1e4), in the
    float32 the command line trains in, the direct and traced producers give every estimator
    the same loss and log densities (NaN and infinities included), or refuse it with the same
    message. (The traced producer used to score z afresh: NaN at a scale of e^-60 where the
    direct one, scoring from the noise, was finite; another number for a badly conditioned L.)
    """
    import copy

    from pyrovae.particles import NotApplicable

    prior = "bernoulli" if GUIDES.get(guide).latent == "binary" else "standard-normal"
    torch.manual_seed(0)
    cfg = VAEConfig(x_dim=6, z_dim=4, hidden=(8,), prior=prior, guide=guide, likelihood="gaussian")
    vae = build_vae(cfg)
    family = vae.guide_family
    last = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(EXTREMES[extreme](family, 4, family.in_features))
    x = torch.randn(5, 6)
    twin = copy.deepcopy(vae)
    twin.name = "twin"
    producers = (make_producer(vae, "direct"), make_producer(twin, "traced"))
    for name, options in estimator_specs():
        torch.manual_seed(1)
        est = make_estimator(name, **options)
        outcomes = []
        for producer, estimator in zip(producers, (est, copy.deepcopy(est))):
            pyro.set_rng_seed(2)
            try:
                estimator.prepare(x)
                k, reparameterized = estimator.num_particles, estimator.reparameterized
                particles = producer(x, NUM_DATA, k, reparameterized)
                loss, _ = estimator(particles, update_state=False)
                outcomes.append((loss.detach(), particles.log_q.detach(), particles.log_w.detach()))
            except NotApplicable as e:
                outcomes.append(str(e))
        direct, traced = outcomes
        assert type(direct) is type(traced), (name, options, direct, traced)
        if isinstance(direct, str):
            assert direct == traced, (name, options)
            continue
        for a, b in zip(direct, traced):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, equal_nan=True, msg=name)
