"""The ``tracegraph`` estimator (issue 27): score-function terms for the latents without a
reparameterized sampler, each with the costs downstream of it, pathwise gradients through the
others; against Pyro's ``TraceGraph_ELBO`` at the same random numbers, against the exact
gradient of the enumerated objective in expectation, and against ``pathwise`` and
``score-function`` where it reduces to them."""

import pyro
import pytest
import torch
from discrete_programs import LateDiscrete, TinyM2
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

from pyrovae import VAEConfig, build_vae
from pyrovae.enumeration import unmarked
from pyrovae.estimators import make_estimator
from pyrovae.particles import traced_particles
from pyrovae.producers import make_producer

PROGRAMS = {
    "m2, y sampled": lambda: (TinyM2(), "y"),
    "z before c": lambda: (LateDiscrete(), "c"),
}


def _pair(program):
    guide = unmarked(program.guide) if isinstance(program, TinyM2) else program.guide
    return program.model, guide


def _pyro_grads(elbo, model, guide, x, params):
    for p in params:
        p.grad = None
    loss = elbo.loss_and_grads(model, guide, x)
    return loss, [p.grad for p in params]


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_equals_tracegraph_elbo(name, k):
    """Loss and gradient equal TraceGraph_ELBO's (no baseline) at the same random numbers."""
    program, _ = PROGRAMS[name]()
    model, guide = _pair(program)
    x = program.sample(5)
    params = list(program.parameters())
    torch.manual_seed(4)
    particles = traced_particles(model, guide, (x,), num_particles=k, max_plate_nesting=1)
    loss, surrogate = make_estimator("tracegraph", k, baseline="none")(particles)
    ours = torch.autograd.grad(surrogate, params)
    torch.manual_seed(4)
    elbo = TraceGraph_ELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
    ref, theirs = _pyro_grads(elbo, model, guide, x, params)
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_decaying_average_baselines_step_with_tracegraph_elbo():
    """Per-site decaying averages: three steps equal TraceGraph_ELBO with
    use_decaying_avg_baseline on the discrete site, gradient for gradient."""
    program, site = PROGRAMS["z before c"]()
    model, guide = _pair(program)
    x = program.sample(5)
    params = list(program.parameters())
    baseline = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
    pyro_guide = poutine.infer_config(guide, lambda msg: baseline if msg["name"] == site else {})
    est = make_estimator("tracegraph", 1)
    elbo = TraceGraph_ELBO(max_plate_nesting=1)
    pyro.clear_param_store()
    for step in range(3):
        torch.manual_seed(10 + step)
        _, surrogate = est(traced_particles(model, guide, (x,), max_plate_nesting=1))
        ours = torch.autograd.grad(surrogate, params)
        torch.manual_seed(10 + step)
        _, theirs = _pyro_grads(elbo, model, pyro_guide, x, params)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert est.average.shape == (1, 1, 5)


def test_gradient_expectation_is_the_enumerated_objectives():
    """Averaged over many particles, the classifier's tracegraph gradient (y sampled, scored)
    is the gradient of the objective with y summed out exactly (pathwise over enumerated
    particles), within 4 Monte Carlo standard errors (from 10 independent batches)."""
    m2 = TinyM2()
    x = m2.sample(4)
    weight = m2.classifier.weight

    def gradient(name, guide, k, seed):
        pyro.set_rng_seed(seed)
        particles = traced_particles(m2.model, guide, (x,), num_particles=k, max_plate_nesting=1)
        est = make_estimator(name, k, **({"baseline": "none"} if name == "tracegraph" else {}))
        return torch.autograd.grad(est(particles)[1], [weight])[0]

    parts = torch.stack([gradient("tracegraph", unmarked(m2.guide), 4000, s) for s in range(10)])
    mean, stderr = parts.mean(0), parts.std(0) / 10**0.5
    exact = gradient("pathwise", m2.guide, 4000, 99)  # y exact; z's error far below the above
    assert stderr.max() > 0 and ((mean - exact).abs() < 4 * stderr + 1e-6).all(), (
        (mean - exact).abs().max(),
        stderr.max(),
    )


def test_reduces_to_pathwise_on_a_gaussian_vae_and_to_score_function_on_a_binary_one():
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((12, 30), 0.3))
    for latent, other in (("gaussian", "pathwise"), ("bernoulli", "score-function")):
        options = {} if latent == "gaussian" else dict(prior="bernoulli", guide="bernoulli")
        torch.manual_seed(0)
        vae = build_vae(VAEConfig(x_dim=30, z_dim=4, hidden=(16,), **options))
        params = list(vae.parameters())
        grads = []
        for name in ("tracegraph", other):
            est = make_estimator(name, 2, **({} if name == "pathwise" else {"baseline": "none"}))
            torch.manual_seed(5)
            particles = make_producer(vae)(x, 60, 2, est.reparameterized)
            loss, surrogate = est(particles)
            grads.append((loss, torch.autograd.grad(surrogate, params)))
        (l1, g1), (l2, g2) = grads
        torch.testing.assert_close(l1, l2)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)


def test_neural_baseline_is_refused():
    with pytest.raises(ValueError, match="baseline per site"):
        make_estimator("tracegraph", baseline="neural")
