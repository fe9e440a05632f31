"""Discrete latents summed out by enumeration (issue 27), against Pyro's ``TraceEnum_ELBO`` and
exact answers: a mixture of linear-Gaussian components (exact log p(x)), summed out in the
model or in the guide, and a small semi-supervised M2 (``tests/discrete_programs.py``)."""

import math

import pyro
import pytest
import torch
from discrete_programs import LinearGaussianMixture, TinyM2
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyrovae.estimators import make_estimator
from pyrovae.evaluation.ais import ais_log_likelihood
from pyrovae.evaluation.importance import estimate_log_likelihood
from pyrovae.particles import NotApplicable, ProgramError, traced_particles

PAIRS = {
    "mixture, model-summed": lambda: LinearGaussianMixture(guide="model-summed"),
    "mixture, guide-summed": lambda: LinearGaussianMixture(guide="guide-summed"),
    "m2": lambda: TinyM2(),
}


def _grads(program, loss):
    params = [p for p in program.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pathwise_equals_traceenum_elbo(name, k):
    """At the same random numbers, the pathwise estimator's loss and gradient over enumerated
    particles are TraceEnum_ELBO's (vectorized particles for K > 1)."""
    program = PAIRS[name]()
    x = program.sample(5)
    torch.manual_seed(3)
    particles = traced_particles(program.model, program.guide, (x,), num_particles=k,
                                 max_plate_nesting=1)  # fmt: skip
    loss, surrogate = make_estimator("pathwise", k)(particles)
    torch.manual_seed(3)
    elbo = TraceEnum_ELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
    ref = elbo.differentiable_loss(program.model, program.guide, x)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    for ours, theirs in zip(_grads(program, surrogate), _grads(program, ref)):
        if theirs is None:
            assert ours is None or ours.abs().max() == 0
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_exact_guide_gives_log_px_in_every_weight():
    """With q(m | x) q(z | x, m) the exact posterior, every particle's ELBO term and its
    summed importance weight equal log p(x) exactly."""
    mixture = LinearGaussianMixture(guide="guide-summed", exact=True)
    x = mixture.sample(6)
    particles = traced_particles(mixture.model, mixture.guide, (x,), num_particles=4,
                                 max_plate_nesting=1, scaled=False)  # fmt: skip
    exact = mixture.exact_log_px(x).detach().expand(4, 6)
    torch.testing.assert_close(particles.log_w.detach(), exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(particles.log_w_summed.detach(), exact, rtol=0, atol=1e-6)


def test_stl_path_cancels_at_the_exact_posterior():
    """STL's log q with the guide's parameters cut keeps the path through each enumerated
    value's z_m, weighted by q(m | x): at the exact posterior it cancels log p(x, m, z_m)'s
    path for every draw (the reason STL's guide gradient vanishes there)."""
    mixture = LinearGaussianMixture(guide="guide-summed", exact=True)
    x = mixture.sample(6)
    particles = traced_particles(mixture.model, mixture.guide, (x,), num_particles=3,
                                 max_plate_nesting=1)  # fmt: skip
    stl = (particles.log_q_stopped.sum(), particles.log_q.sum())
    z = particles.enumerated_latents["z"]
    g_stl, g_path = (torch.autograd.grad(v, z, retain_graph=True)[0] for v in stl)
    # d/dz of log q_stopped equals d/dz log q: the path terms alone, which cancel those of
    # log p(x, m, z) at the exact posterior.
    log_p = particles.log_prior.sum() + particles.log_lik.sum()
    (g_p,) = torch.autograd.grad(log_p, z, retain_graph=True)
    torch.testing.assert_close(g_p - g_stl, torch.zeros_like(g_p), rtol=0, atol=1e-9)
    assert g_stl.abs().max() > 1e-3  # (the paths are there: the test can fail)
    torch.testing.assert_close(g_stl, g_path)


def test_importance_weighted_estimate_is_exact_with_the_model_summed():
    """IW at K = 5000 with the component summed out of the model lands within 4 standard
    errors of the exact log p(x)."""
    mixture = LinearGaussianMixture(guide="model-summed")
    x = mixture.sample(40)
    pyro.set_rng_seed(0)
    result = estimate_log_likelihood(mixture.model, mixture.guide, x, 5000)
    exact = mixture.exact_log_px(x).detach()
    gap = (result.per_point_log_px - exact).mean().item()
    assert abs(gap) < 4 * result.log_px_stderr + 0.01, (gap, result.log_px_stderr)
    assert abs(gap) < 0.05


def test_importance_weighted_estimate_sums_the_guide_enumerated_site():
    """A guide that enumerates m (not exact): the IW estimate at large K lands on the exact
    log p(x), and the ELBO column stays below it."""
    mixture = LinearGaussianMixture(guide="guide-summed")
    x = mixture.sample(20)
    pyro.set_rng_seed(0)
    result = estimate_log_likelihood(mixture.model, mixture.guide, x, 20000)
    exact = mixture.exact_log_px(x).detach()
    assert abs((result.per_point_log_px - exact).mean().item()) < 0.05
    assert result.elbo < exact.mean().item() - 0.1


def test_ais_lands_on_the_exact_log_px_with_the_model_summed():
    """AIS from the prior anneals z with the component summed out of the model: within 4
    standard errors of the exact log p(x)."""
    mixture = LinearGaussianMixture(guide="model-summed")
    x = mixture.sample(6)
    pyro.set_rng_seed(0)
    result = ais_log_likelihood((mixture.model, mixture.guide), x, steps=150, chains=32)
    error = result.per_point_log_px.double() - mixture.exact_log_px(x).detach()
    stderr = result.per_point_mc_stderr.double().clamp_min(1e-3)
    assert ((error / stderr).abs() < 4).all() and error.abs().max() < 0.15, (error, stderr)


def test_ais_from_the_exact_guide_sums_its_enumerated_site():
    """From the guide, AIS starts at q's marginal q(z | x) = Σ_m q(m | x) q(z | x, m), drawn
    with m sampled and scored with m summed out: with the exact posterior as q, every chain's
    weight is log p(x) exactly, at any number of steps (a wrong marginal would scatter them)."""
    mixture = LinearGaussianMixture(guide="guide-summed", exact=True)
    x = mixture.sample(5)
    pyro.set_rng_seed(0)
    result = ais_log_likelihood((mixture.model, mixture.guide), x, steps=3, chains=8,
                                init="guide")  # fmt: skip
    exact = mixture.exact_log_px(x).detach()
    torch.testing.assert_close(result.per_point_log_px.double(), exact, rtol=0, atol=1e-5)
    assert result.per_point_mc_stderr.max() < 1e-5


def test_m2_importance_weights_equal_a_loop_over_labels():
    """M2's IW log p(x), y summed inside each weight, against a separate estimate that
    loops over the labels in Python: log Σ_y (1/K) Σ_k p(x, y, z_k) / q(z_k | x, y)."""
    m2 = TinyM2()
    x = m2.sample(4)
    k = 4000
    pyro.set_rng_seed(0)
    ours = traced_particles(m2.model, m2.guide, (x,), num_particles=k, max_plate_nesting=1,
                            scaled=False).log_w_summed.detach()  # fmt: skip
    per_label = []
    for c in range(m2.classes):
        y = torch.nn.functional.one_hot(torch.full((4,), c), m2.classes).double()
        p = traced_particles(m2.model, m2.guide, (x, y), num_particles=k, max_plate_nesting=1,
                             scaled=False)  # fmt: skip
        per_label.append(p.log_w.detach())
    loop = torch.stack(per_label)  # (C, K, B)

    def estimate(log_w):  # (K, B) -> (log mean exp, its standard error by the delta method)
        w = (log_w - log_w.max(0).values).exp()
        return log_w.max(0).values + w.mean(0).log(), w.std(0) / w.mean(0) / math.sqrt(k)

    a, se_a = estimate(ours)
    # The loop: each label's mean weight, then summed.
    top = loop.amax((0, 1))
    w = (loop - top).exp()
    b = top + w.mean(1).sum(0).log()
    se_b = (w.var(1) / k).sum(0).sqrt() / w.mean(1).sum(0)
    assert ((a - b).abs() < 4 * (se_a**2 + se_b**2).sqrt()).all(), (a - b, se_a, se_b)


@pytest.mark.parametrize("name", ["score-function", "vimco", "dreg"])
def test_estimators_that_do_not_follow_enumeration_are_refused(name):
    m2 = TinyM2()
    x = m2.sample(4)
    estimator = make_estimator(name)
    particles = traced_particles(m2.model, m2.guide, (x,), num_particles=estimator.num_particles,
                                 reparameterized=estimator.reparameterized or None,
                                 max_plate_nesting=1)  # fmt: skip
    with pytest.raises(NotApplicable, match="sums y out by enumeration.*pathwise"):
        estimator(particles)


def test_sequential_enumeration_is_refused():
    m2 = TinyM2()
    sequential = {"enumerate": "sequential"}
    guide = poutine.infer_config(m2.guide, lambda msg: sequential if msg["name"] == "y" else {})
    with pytest.raises(ProgramError, match="sequential enumeration.*parallel"):
        traced_particles(m2.model, guide, (m2.sample(3),), max_plate_nesting=1)


def test_bdmc_brackets_the_exact_log_px_with_the_component_summed():
    """BDMC on the model-summed mixture: the simulated points' exact log p(x) lies between the
    forward (lower) and reverse (upper) AIS bounds, within their standard errors; the reverse
    chains start at the simulated z alone (the component is summed, not annealed)."""
    from pyrovae.evaluation.ais import bdmc

    mixture = LinearGaussianMixture(guide="model-summed")
    pyro.set_rng_seed(0)
    result = bdmc((mixture.model, mixture.guide), mixture.sample(6), steps=100, chains=8, k=500,
                  progress=False)  # fmt: skip
    exact = mixture.exact_log_px(result.points).detach().mean().item()
    assert result.lower - 4 * result.lower_stderr - 0.05 <= exact
    assert exact <= result.upper + 4 * result.upper_stderr + 0.05
    assert result.width < 0.5
