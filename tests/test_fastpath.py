"""The fast path computes what Pyro computes from the model and guide, under the same seed."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae import VAE, VAEConfig, build_vae, evaluate_vae, log_importance_weights
from pyrovae.diagnostics import parse_estimator_spec
from pyrovae.engines import make_engine
from pyrovae.estimators import make_estimator
from pyrovae.fastpath import (
    supports_fast_path,
    vae_elbo_loss,
    vae_log_weights,
    vae_score_function_losses,
)

from helpers import linear_vae, random_truth


def bernoulli_vae_and_batch(latent="gaussian"):
    torch.manual_seed(0)
    if latent == "gaussian":
        vae = build_vae(VAEConfig(x_dim=30, z_dim=4, hidden=(16, 8)))
    else:
        vae = build_vae(
            VAEConfig(x_dim=30, z_dim=6, hidden=(16,), prior="bernoulli", guide="bernoulli")
        )
        with torch.no_grad():  # off 1/2, where a gradient can cancel to float noise and flip
            vae.prior.logits.normal_()  # the sign of Adam's first step

    x = torch.bernoulli(torch.full((12, 30), 0.3))
    return vae, x


def gaussian_vae_and_batch():
    truth = random_truth(6, 2, 0)
    return linear_vae(truth), truth.sample(12, torch.Generator().manual_seed(1))


BUILDERS = [bernoulli_vae_and_batch, gaussian_vae_and_batch]


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("k", [1, 7])
def test_log_weights_match_pyro_traces(build, k):
    vae, x = build()
    pyro.set_rng_seed(3)
    expected = log_importance_weights(vae.model, vae.guide, x, k)
    pyro.set_rng_seed(3)
    got = vae_log_weights(vae, x, k)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("particles", [1, 5])
def test_elbo_loss_and_gradients_match_trace_elbo(build, particles):
    vae, x = build()
    elbo = Trace_ELBO(
        num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1
    )
    params = list(vae.parameters())
    pyro.set_rng_seed(4)
    expected = elbo.differentiable_loss(vae.model, vae.guide, x, 50)
    expected_grads = torch.autograd.grad(expected, params)
    pyro.set_rng_seed(4)
    got = vae_elbo_loss(vae, x, 50, particles)
    got_grads = torch.autograd.grad(got, params)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", BUILDERS)
def test_fast_and_traced_evaluation_agree(build):
    vae, x = build()
    pyro.set_rng_seed(5)
    fast = evaluate_vae(vae, x, k=100, progress=False, chunk_pairs=256)
    pyro.set_rng_seed(5)
    traced = evaluate_vae(vae, x, k=100, progress=False, chunk_pairs=256, fast=False)
    torch.testing.assert_close(fast.per_point_log_px, traced.per_point_log_px, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(fast.per_point_elbo, traced.per_point_elbo, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("latent", ["gaussian", "bernoulli"])
@pytest.mark.parametrize(
    "estimator",
    [
        "pathwise",
        "score-function",
        "score-function:baseline=neural",
        "analytic-kl",
        "stl",
        "iwae",
        "dreg",
        "vimco",
    ],
)
def test_fast_and_pyro_engines_take_the_same_steps(estimator, latent):
    vae, x = bernoulli_vae_and_batch(latent)
    name, options = parse_estimator_spec(estimator)
    est, est_pyro = make_estimator(name, **options), make_estimator(name, **options)
    if est.reparameterized and latent == "bernoulli":
        pytest.skip("binary latents take score-function estimators only")
    twin = build_vae(vae.config, reparameterized=est.reparameterized)
    twin.load_state_dict(vae.state_dict())
    twin.name = "twin"  # its own names in Pyro's param store
    fast, slow = make_engine("fast", vae, est, 1e-2), make_engine("pyro", twin, est_pyro, 1e-2)
    for step in range(5):
        pyro.set_rng_seed(step)
        a = fast.step(x, 100)
        pyro.set_rng_seed(step)
        b = slow.step(x, 100)
        assert a == pytest.approx(b, rel=1e-4)
    for p, q in zip(vae.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
    if est.baseline_net is not None:  # the neural baselines were fitted alike
        for p, q in zip(est.baseline_net.parameters(), est_pyro.baseline_net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_fast_path_only_for_the_library_model_and_guide():
    class Custom(VAE):
        def model(self, x, num_data=None):
            return super().model(x, num_data)

    vae, _ = bernoulli_vae_and_batch()
    assert supports_fast_path(vae)
    custom = Custom(vae.encoder, vae.decoder, vae.prior, vae.likelihood, vae.guide_family)
    assert not supports_fast_path(custom)
    assert make_engine("auto", custom, make_estimator("pathwise"), 1e-3).name == "pyro"
    assert make_engine("auto", vae, make_estimator("score-function"), 1e-3).name == "fast"
    with pytest.raises(ValueError, match="--engine pyro"):
        make_engine("fast", custom, make_estimator("pathwise"), 1e-3)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("turbo", vae, make_estimator("pathwise"), 1e-3)


@pytest.mark.parametrize("build", BUILDERS)
@pytest.mark.parametrize("baseline", ["none", "decaying-average"])
@pytest.mark.parametrize("particles", [1, 3])
def test_score_function_steps_match_tracegraph_elbo(build, baseline, particles):
    """Loss, gradients and baseline state of the fast score-function estimator equal Pyro's
    TraceGraph_ELBO over several steps (same random numbers, no parameter updates)."""
    vae, x = build()
    est = make_estimator("score-function", num_particles=particles, baseline=baseline)
    vae.reparameterized = est.reparameterized
    guide = est.wrap_guide(vae.guide)
    params = list(vae.parameters())
    avg = None
    for step in range(3):
        for p in params:
            p.grad = None
        pyro.set_rng_seed(step)
        expected_loss = est.elbo.loss_and_grads(vae.model, guide, x, 40)
        expected_grads = [p.grad.clone() for p in params]
        if avg is None and baseline != "none":
            avg = torch.zeros_like(pyro.param("__baseline_avg_downstream_cost_z"))
        pyro.set_rng_seed(step)
        loss, surrogate, avg = vae_score_function_losses(vae, x, 40, particles, avg)
        grads = torch.autograd.grad(surrogate, params)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-5)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-3)
        if baseline != "none":
            torch.testing.assert_close(avg, pyro.param("__baseline_avg_downstream_cost_z"))


@pytest.mark.parametrize("build", BUILDERS)
def test_worker_threads_give_the_serial_estimate(build):
    """Particles are drawn in order on the calling thread whatever the number of workers, so
    the estimate is the same up to float rounding of one- against two-threaded ops."""
    vae, x = build()
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
