"""The documentation's "add an estimator" example (docs/guides/estimators.md), run as
written: under 40 lines, registered by its one decorator, and right (at α = 0 it is the
K-sample bound, loss and gradient; near α = 1 the ELBO), on both producers, through the trainer
and as a pyro.infer.ELBO."""

import math

import pyro
import pytest
import torch

from pyrovae import ESTIMATORS, TrainConfig, VAEConfig, make_estimator, train
from pyrovae.producers import make_producer

from helpers import docs_example, imperfect_linear_vae


def example_block() -> str:
    return docs_example('@ESTIMATORS.register("renyi")')


@pytest.fixture
def renyi():
    """The example's estimator registered, and unregistered afterwards."""
    assert "renyi" not in ESTIMATORS
    exec(compile(example_block(), "docs/guides/estimators.md", "exec"), {})
    try:
        yield ESTIMATORS.get("renyi")
    finally:
        del ESTIMATORS._entries["renyi"]


def _loss_and_grads(vae, x, est, producer="auto"):
    particles = make_producer(vae, producer)(x, 40, est.num_particles, est.reparameterized)
    loss, surrogate = est(particles)
    return loss, torch.autograd.grad(surrogate, list(vae.parameters()))


def test_the_example_is_short():
    assert len(example_block().strip().splitlines()) < 40


def test_the_example_estimator_is_the_bound_at_alpha_zero_and_the_elbo_near_one(renyi):
    vae, x = imperfect_linear_vae()
    est = make_estimator("renyi", alpha=0.0)
    assert repr(est).startswith("renyi: objective Renyi bound") and est.spec == "renyi:alpha=0.0"
    for producer in ("direct", "traced"):
        pyro.set_rng_seed(0)
        loss, grads = _loss_and_grads(vae, x, est, producer)
        pyro.set_rng_seed(0)
        iwae_loss, iwae_grads = _loss_and_grads(vae, x, make_estimator("iwae"), producer)
        torch.testing.assert_close(loss, iwae_loss)
        for g, h in zip(grads, iwae_grads):
            torch.testing.assert_close(g, h)
    # Near α = 1 the bound is the mean log weight: the K-particle ELBO estimate.
    pyro.set_rng_seed(1)
    near_one, _ = _loss_and_grads(vae, x, make_estimator("renyi", alpha=1 - 1e-7))
    pyro.set_rng_seed(1)
    elbo, _ = _loss_and_grads(vae, x, make_estimator("pathwise", num_particles=5))
    assert near_one.item() == pytest.approx(elbo.item(), rel=1e-5)
    with pytest.raises(ValueError, match="use the pathwise estimator"):
        make_estimator("renyi", alpha=1)


def test_the_example_estimator_trains_and_is_a_pyro_elbo(renyi, tmp_path):
    cfg = TrainConfig(
        dataset="linear-gaussian",
        dataset_options={"x_dim": 5, "z_dim": 2},
        n_train=200,
        n_eval=50,
        epochs=2,
        batch_size=50,
        estimator="renyi",
        estimator_options={"alpha": 0.5},
    )
    model = VAEConfig(z_dim=2, hidden=(8,), decoder="linear", likelihood="gaussian-learned")
    result = train(cfg, model, run_dir=tmp_path / "run", progress=False)
    assert all(math.isfinite(m["train_elbo"]) for m in result.metrics)
    assert result.metrics[-1]["estimator"] == "renyi"
    vae, x = imperfect_linear_vae()
    est = make_estimator("renyi", alpha=0.5)
    pyro.set_rng_seed(2)
    via_pyro = est.elbo.loss(vae.model, vae.guide, x, 40)
    pyro.set_rng_seed(2)
    assert _loss_and_grads(vae, x, est)[0].item() == pytest.approx(via_pyro, rel=1e-9)
