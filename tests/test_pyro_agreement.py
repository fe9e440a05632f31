"""pyrovae's estimators equal Pyro's own ELBOs wherever Pyro has the same estimator, taken the
way training takes them (the VAE's direct producer) under the same random numbers:
``pathwise`` is ``Trace_ELBO``, ``analytic-kl`` is ``TraceMeanField_ELBO``, ``score-function``
(with every baseline) is ``TraceGraph_ELBO``, step for step with its baseline state; and
``iwae`` is ``RenyiELBO(alpha=0)`` without subsampling but not with it."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from pyrovae import VAEConfig, build_vae, make_estimator
from pyrovae.producers import make_producer

from helpers import imperfect_linear_vae, linear_vae, random_truth

NUM_DATA = 50


def bernoulli_vae_and_batch(latent="gaussian"):
    torch.manual_seed(0)
    if latent == "gaussian":
        vae = build_vae(VAEConfig(x_dim=30, z_dim=4, hidden=(16, 8)))
    else:
        vae = build_vae(
            VAEConfig(x_dim=30, z_dim=6, hidden=(16,), prior="bernoulli", guide="bernoulli")
        )
    x = torch.bernoulli(torch.full((12, 30), 0.3))
    return vae, x


def gaussian_vae_and_batch(latent="gaussian"):
    truth = random_truth(6, 2, 0)
    return linear_vae(truth), truth.sample(12, torch.Generator().manual_seed(1))


BUILDERS = [bernoulli_vae_and_batch, gaussian_vae_and_batch]


def _ours(vae, x, name, num_particles, **options):
    """(loss, gradients) of one pyrovae estimator through the route training takes."""
    est = make_estimator(name, num_particles, **options).to(next(vae.parameters()).dtype)
    est.prepare(x)
    particles = make_producer(vae)(x, NUM_DATA, est.num_particles, est.reparameterized)
    loss, surrogate = est(particles)
    return loss, torch.autograd.grad(surrogate, list(vae.parameters()))


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("particles", [1, 5])
@pytest.mark.parametrize(
    "name,pyro_elbo", [("pathwise", Trace_ELBO), ("analytic-kl", TraceMeanField_ELBO)]
)
def test_reparameterized_elbos_equal_pyros(build, particles, name, pyro_elbo):
    vae, x = build()
    elbo = pyro_elbo(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
    )
    params = list(vae.parameters())
    pyro.set_rng_seed(4)
    expected = elbo.differentiable_loss(vae.model, vae.guide, x, NUM_DATA)
    expected_grads = torch.autograd.grad(expected, params)
    pyro.set_rng_seed(4)
    loss, grads = _ours(vae, x, name, particles)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


class NoRsampleNormal(dist.Normal):
    """A Normal that Pyro's TraceGraph_ELBO scores with the score function."""

    has_rsample = False


def pyro_score_function_guide(vae, baseline, net=None, beta=0.9):
    """``vae.guide`` written for TraceGraph_ELBO: a non-reparameterized latent carrying Pyro's
    baseline options (what pyrovae 0.1.0 did to its guide)."""

    def guide(x, num_data=None):
        pyro.module(vae.name, vae)
        h = vae.encoder(x)
        if vae.guide_family.latent == "binary":
            q = vae.guide_family(h)
        else:
            loc, log_scale = h.split(vae.z_dim, -1)
            q = NoRsampleNormal(loc, log_scale.exp()).to_event(1)
        options = {}
        if baseline != "none":
            options = {"use_decaying_avg_baseline": True, "baseline_beta": beta}
        if net is not None:
            scale = num_data / x.shape[0]
            options.update(nn_baseline=lambda inp: scale * net(inp), nn_baseline_input=x)
        with poutine.infer_config(config_fn=lambda site: {"baseline": options}):
            with vae._data_plate(x, num_data):
                return pyro.sample("z", q)

    return guide


@pytest.mark.parametrize("latent", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("baseline", ["none", "decaying-average", "neural"])
@pytest.mark.parametrize("particles", [1, 3])
def test_score_function_steps_equal_tracegraph_elbo(latent, baseline, particles):
    """Loss, gradients (the neural baseline's too) and the decaying average of pyrovae's
    score-function estimator equal Pyro's TraceGraph_ELBO over several steps."""
    vae, x = bernoulli_vae_and_batch(latent)
    est = make_estimator("score-function", particles, baseline=baseline)
    est.prepare(x)
    net = est.baseline_net
    guide = pyro_score_function_guide(vae, baseline, net)
    elbo = TraceGraph_ELBO(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
    )
    params = list(vae.parameters()) + list(est.parameters())
    route = make_producer(vae)
    for step in range(3):
        pyro.set_rng_seed(step)
        # Pyro's helper returns the ELBO and the surrogate loss (with the baseline's own loss).
        expected_elbo, expected_surrogate = elbo._loss_and_surrogate_loss(
            vae.model, guide, (x, NUM_DATA), {}
        )
        expected_grads = torch.autograd.grad(expected_surrogate, params)
        pyro.set_rng_seed(step)
        loss, surrogate = est(route(x, NUM_DATA, particles, False))
        grads = torch.autograd.grad(surrogate, params)
        assert loss.item() == pytest.approx(-torch.as_tensor(expected_elbo).item(), rel=1e-5)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-3)
        if baseline != "none":
            torch.testing.assert_close(
                est.average, pyro.param("__baseline_avg_downstream_cost_z").reshape(particles, -1)
            )


@pytest.mark.parametrize("build", BUILDERS)
def test_iwae_loss_is_renyi_alpha_zero_without_subsampling_but_not_with(build):
    """Pyro's RenyiELBO(alpha=0) keeps the data plate (it sums only the plates not common to
    every site): without subsampling its loss and gradient are pyrovae's K-sample bound's.
    Under subsampling it multiplies the log weights by N / B *inside* the log-mean-exp, so it
    is not N / B times the per-point bound; pyrovae's iwae is."""
    vae, x = build()
    k = 5
    renyi = RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    est = make_estimator("iwae", k)
    params = list(vae.parameters())

    pyro.set_rng_seed(1)
    expected = renyi.loss_and_grads(vae.model, vae.guide, x)
    expected_grads = [p.grad.clone() for p in params]
    pyro.set_rng_seed(1)
    particles = make_producer(vae)(x, None, k, True)
    loss, surrogate = est(particles)
    grads = torch.autograd.grad(surrogate, params)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)

    scale = NUM_DATA / x.shape[0]
    pyro.set_rng_seed(2)
    renyi_scaled = renyi.loss(vae.model, vae.guide, x, NUM_DATA)
    pyro.set_rng_seed(2)
    particles = make_producer(vae)(x, NUM_DATA, k, True)
    ours = est(particles)[0].item()
    log_w = particles.log_w.detach().double()
    scale_inside = -(torch.logsumexp(scale * log_w, 0) - math.log(k)).sum().item()
    scale_outside = -scale * (torch.logsumexp(log_w, 0) - math.log(k)).sum().item()
    assert renyi_scaled == pytest.approx(scale_inside, rel=1e-5)
    assert ours == pytest.approx(scale_outside, rel=1e-5)
    assert abs(renyi_scaled - ours) > 1e-3 * abs(ours)


def test_minibatch_plate_scales_the_loss():
    vae, x = imperfect_linear_vae()
    pyro.set_rng_seed(0)
    full = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    scaled = Trace_ELBO().loss(vae.model, vae.guide, x, 40)
    assert scaled == pytest.approx(10 * full, rel=1e-12)
    with pytest.raises(ValueError, match="smaller than the batch"):
        Trace_ELBO().loss(vae.model, vae.guide, x, 2)
