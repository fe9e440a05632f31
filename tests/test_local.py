"""The ``local`` guide (semi-amortized refinement) against known truth: on a linear-Gaussian
model, whose ELBO under any diagonal Gaussian is in closed form, refinement closes the
amortization gap of an untrained encoder up to the mean-field optimum and never beyond it;
training through the refinement gives the finite-difference gradient; both producers see the
same refined q; and the options and combinations that cannot work are refused."""

import json

import pytest
import torch

from pyrovae import VAEConfig, build_vae, evaluate_vae, make_estimator
from pyrovae.config import OptionError
from pyrovae.parts.refinement import LocalRefinement, fit_guide_inputs
from pyrovae.producers import make_producer

from helpers import assert_producers_agree, linear_vae, random_truth


def _local_linear_vae(truth, **options):
    """A float64 VAE whose model is ``truth`` exactly and whose guide is the local refinement
    of a diagonal Gaussian from a linear encoder at its random initialization (untrained)."""
    torch.manual_seed(0)
    return linear_vae(truth, "local", options)


def _closed_form_elbo(truth, x, h):
    loc, log_scale = h.split(truth.z_dim, -1)
    return truth.elbo_diagonal(x, loc, log_scale.exp())


def test_local_refinement_closes_the_amortization_gap_of_an_untrained_encoder():
    truth = random_truth(5, 3, seed=4)
    x = truth.sample(64, torch.Generator().manual_seed(4))
    vae = _local_linear_vae(truth, steps=150, lr=0.1, samples=4)
    with torch.no_grad():
        amortized = _closed_form_elbo(truth, x, vae.train().guide_input(x))  # no refinement
        refined = _closed_form_elbo(truth, x, vae.eval().guide_input(x))
        post = truth.posterior(x)
        precision = torch.linalg.inv(post.covariance_matrix)
        best = truth.elbo_diagonal(  # the mean-field optimum: the best diagonal q per point
            x, post.loc, precision.diagonal(dim1=-2, dim2=-1).rsqrt()
        )
    gap = best - amortized
    assert gap.mean() > 2.0  # the encoder is deliberately bad
    assert (refined <= best + 1e-9).all()  # no diagonal q beats the optimum
    closed = (refined - amortized) / gap
    assert closed.mean() > 0.95 and closed.min() > 0.8, closed
    # The evaluator scores the same refinement (batched beforehand): its ELBO is the refined
    # one, within Monte Carlo error.
    res = evaluate_vae(vae, x, k=2000, progress=False)
    assert res.elbo == pytest.approx(refined.mean().item(), abs=0.05)
    assert res.log_px == pytest.approx(truth.log_marginal(x).mean().item(), abs=0.05)


def test_fewer_steps_close_less_of_the_gap():
    truth = random_truth(5, 3, seed=4)
    x = truth.sample(32, torch.Generator().manual_seed(5))
    vae = _local_linear_vae(truth)
    elbos = []
    for steps in (0, 5, 50):
        h = fit_guide_inputs(vae, x, steps=steps, lr=0.1, samples=4, progress=False)
        elbos.append(_closed_form_elbo(truth, x, h).mean().item())
    assert elbos[0] < elbos[1] < elbos[2]


def test_refinement_is_deterministic_and_leaves_the_random_stream_alone():
    truth = random_truth(4, 2, seed=1)
    x = truth.sample(8, torch.Generator().manual_seed(1))
    vae = _local_linear_vae(truth, steps=10).eval()
    state = torch.random.get_rng_state()
    first = vae.guide_input(x)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(vae.guide_input(x), first, rtol=0, atol=0)
    assert not torch.equal(first, vae.encoder(x))
    assert not first.requires_grad  # at evaluation the refined inputs are detached


def test_training_through_the_refinement_gives_the_finite_difference_gradient():
    """With train=True the guide is q(z | refine(encoder(x))), a differentiable function of the
    encoder's and the decoder's parameters: the pathwise gradient of the ELBO (noise fixed)
    matches central differences."""
    truth = random_truth(4, 2, seed=2)
    x = truth.sample(6, torch.Generator().manual_seed(2))
    vae = _local_linear_vae(truth, steps=4, lr=0.05, samples=2, train=True).train()

    def elbo():
        torch.manual_seed(7)
        return vae.particles(x, None, 3, True).log_w.mean()

    value = elbo()
    params = [vae.encoder[0].weight, vae.decoder[0].weight]
    grads = torch.autograd.grad(value, params)
    assert grads[0].abs().sum() > 0
    for p, g in zip(params, grads):
        for index in [(0, 0), (1, 1)]:
            with torch.no_grad():
                p[index] += 1e-6
                up = elbo()
                p[index] -= 2e-6
                down = elbo()
                p[index] += 1e-6
            assert g[index].item() == pytest.approx((up - down).item() / 2e-6, rel=1e-5, abs=1e-8)


def test_both_producers_see_the_same_refined_guide():
    truth = random_truth(4, 2, seed=3)
    x = truth.sample(5, torch.Generator().manual_seed(3))
    # At evaluation (refined, detached): the same latents and log weights.
    vae = _local_linear_vae(truth, steps=3, samples=2).eval()
    particles = []
    for kind in ("direct", "traced"):
        torch.manual_seed(11)
        particles.append(make_producer(vae, kind)(x, None, 4, None))
    a, b = particles
    torch.testing.assert_close(a.latents["z"], b.latents["z"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.log_w, b.log_w, rtol=1e-10, atol=1e-10)
    # Training through the refinement: the same losses and gradients for every estimator.
    vae = _local_linear_vae(truth, steps=3, samples=2, train=True).train()
    fields = ["log_prior", "log_lik", "log_q", "log_q_stopped", "log_w"]
    for name in ("pathwise", "score-function", "iwae", "dreg"):
        assert assert_producers_agree(vae, name, {}, fields) is not None


def test_local_guide_trains_and_evaluates_from_the_cli(tmp_path):
    from pyrovae.cli import main

    run = tmp_path / "run"
    argv = ["train", "--dataset", "linear-gaussian", "--epochs", "2", "--run-dir", str(run)]
    argv += ["--likelihood", "gaussian-learned", "--guide", "local", "--guide-option", "steps=5"]
    argv += ["--quiet"]
    assert main(argv) == 0
    assert main(["evaluate", str(run), "--k", "50", "--n", "20", "--quiet", "--json"]) == 0


def test_bad_local_options_and_combinations_are_refused():
    with pytest.raises(ValueError, match="discrete"):
        LocalRefinement(3, base="bernoulli")
    with pytest.raises(ValueError, match="'local' itself"):
        LocalRefinement(3, base="local")
    with pytest.raises(ValueError, match="train must be true or false"):
        LocalRefinement(3, train="yes")
    with pytest.raises(OptionError, match="steps"):
        build_vae(VAEConfig(x_dim=4, z_dim=2, guide="local", guide_options={"steps": -1}))
    with pytest.raises(OptionError, match="lr"):
        build_vae(VAEConfig(x_dim=4, z_dim=2, guide="local", guide_options={"lr": 0}))
    with pytest.raises(ValueError, match="one latent layer"):
        build_vae(VAEConfig(x_dim=4, z_dim=2, guide="local", latent_layers=2, z1_dim=3))
    # The estimators that need the base family's own things still work through it.
    vae = build_vae(VAEConfig(x_dim=4, z_dim=2, hidden=(8,), guide="local"))
    x = torch.rand(5, 4).round()
    loss, _ = make_estimator("analytic-kl")(vae.particles(x, None, 1, True))
    assert torch.isfinite(loss)


def test_evaluate_refine_gives_the_refined_elbo_and_refuses_two_layers(tmp_path, capsys):
    from pyrovae.cli import main

    run = tmp_path / "run"
    argv = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian-learned"]
    # Two steps (200 points): q starts at unit scales for every x (``start_encoder``), so a
    # longer first epoch leaves too small an amortization gap to see the refinement close it.
    short = ["--epochs", "1", "--dataset-option", "n_train=200"]
    assert main(argv + short + ["--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    results = []
    for refine in ("0", "50"):
        evaluate = ["evaluate", str(run), "--k", "200", "--n", "50", "--quiet", "--json"]
        assert main(evaluate + ["--refine", refine]) == 0
        results.append(json.loads(capsys.readouterr().out))
    plain, refined = results
    assert "refine_steps" not in plain and refined["refine_steps"] == 50
    # Two steps leave an amortization gap that 50 steps per point close in part.
    assert refined["elbo"] > plain["elbo"] + 0.05
    assert refined["log_px"] > plain["log_px"] - 0.05
    assert main(["evaluate", str(run), "--refine", "-1"]) == 2
    assert "--refine must be an integer >= 0" in capsys.readouterr().err

    two = tmp_path / "two"
    argv += ["--latent-layers", "2", "--z1-dim", "2", "--z-dim", "1"]
    assert main(argv + ["--epochs", "1", "--run-dir", str(two), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(two), "--k", "10", "--n", "5", "--refine", "5"]) == 2
    assert "one latent layer" in capsys.readouterr().err
