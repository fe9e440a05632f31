"""Two stochastic layers (``VAEConfig(latent_layers=2)``, ``TwoLayerVAE``): the direct producer
equals tracing the model and guide for every registered estimator, the importance-weighted
estimate reaches a two-layer linear-Gaussian model's exact log p(x), training, loading,
resuming and the command line work, and what is written for one layer is refused."""

import itertools
import json
import math

import pyro
import pytest
import torch

from pyrovae import (
    TrainConfig,
    VAEConfig,
    build_vae,
    evaluate_vae,
    load_vae,
    make_estimator,
    train,
)
from pyrovae.cli import main
from pyrovae.config import OptionError
from pyrovae.model import VAE, TwoLayerVAE
from pyrovae.particles import NotApplicable
from pyrovae.producers import make_producer

from helpers import assert_producers_agree, case_id, estimator_specs, linear_two_layer_vae

FIELDS = ("log_prior", "log_lik", "log_q", "log_q_stopped")
NUM_DATA = 40
LATENTS = ("z1", "z2")
ONE_LAYER_ONLY = ("analytic-kl", "dreg")


def _vae(prior, guide, likelihood):
    """A small float64 two-layer VAE of these parts, its parameters moved off their starting
    values (where gradients can cancel)."""
    torch.manual_seed(0)
    cfg = VAEConfig(
        x_dim=6,
        z_dim=2,
        z1_dim=3,
        hidden=(8,),
        hidden_top=(5,),
        latent_layers=2,
        prior=prior,
        guide=guide,
        likelihood=likelihood,
    )
    vae = build_vae(cfg).double()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae


COMBINATIONS = [
    (name, options, prior, "diagonal-gaussian", likelihood)
    for (name, options), prior, likelihood in itertools.product(
        estimator_specs(),
        ["standard-normal", "mixture", "vampprior", "flow"],
        ["bernoulli", "gaussian"],
    )
] + [
    (name, options, prior, guide, "gaussian")
    for (name, options), prior, guide in itertools.product(
        estimator_specs(), ["standard-normal", "vampprior"], ["full-rank", "flow"]
    )
]


@pytest.mark.parametrize("case", COMBINATIONS, ids=[case_id(c) for c in COMBINATIONS])
def test_direct_producer_equals_traced_for_two_layers(case):
    name, options, prior, guide, likelihood = case
    vae = _vae(prior, guide, likelihood)
    assert isinstance(vae, TwoLayerVAE) and vae.z_dim == 2 and vae.z1_dim == 3
    result = assert_producers_agree(vae, name, options, FIELDS, NUM_DATA)
    # Both producers refuse what is written for one layer, and nothing else.
    assert (result is None) == (name in ONE_LAYER_ONLY)
    particles = make_producer(vae)(vae.sample(3, mean=False), None, 2, None)
    assert tuple(particles.latents) == LATENTS
    with pytest.raises(NotApplicable, match="one latent layer"):
        _ = particles.kl
    if result is None:
        with pytest.raises(NotApplicable, match="one latent layer"):
            make_estimator(name, **options)(particles)
        return
    params, history = result
    for grads in history:
        for module in (vae.top_encoder, vae.top_decoder):  # the nets between z1 and z2 learn
            assert any(
                g.abs().sum() > 0
                for p, g in zip(params, grads)
                if any(p is q for q in module.parameters())
            )


def test_vampprior_on_the_top_layer_is_made_of_q_z2_at_the_pseudo_inputs():
    """p(z2) = (1/C) Σ_c q(z2 | z1 = mean of q(z1 | u_c)), and its nets are the VAE's, once."""
    torch.manual_seed(0)
    cfg = VAEConfig(
        x_dim=6,
        z_dim=2,
        z1_dim=3,
        hidden=(8,),
        hidden_top=(5,),
        latent_layers=2,
        prior="vampprior",
        prior_options={"components": 4},
        likelihood="gaussian",
    )
    vae = build_vae(cfg).double()
    names = list(vae.state_dict())
    assert "prior.pseudo_inputs" in names
    assert not any(n.startswith("prior.") and n != "prior.pseudo_inputs" for n in names)
    u = vae.prior.pseudo_inputs
    z1 = vae.encoder(u)[:, :3]
    q = vae.q_z2(z1)  # batch (4,)
    z2 = torch.randn(7, 2, dtype=torch.float64)
    expected = torch.logsumexp(q.log_prob(z2.unsqueeze(-2)), -1) - math.log(4)
    torch.testing.assert_close(vae.prior.log_prob(z2), expected, rtol=1e-10, atol=1e-10)


def _set_guide(vae, model):
    """The linear guide with the exact posterior means, q(z1 | x) at E[z1 | x] and q(z2 | z1)
    at E[z2 | z1], and diagonal scales widened to cover the posterior (d diag(Σ) ⪰ Σ for a
    d x d covariance Σ): bounded importance weights, and an ELBO well below log p(x)."""
    a, c, s, w, b, sigma = model
    eye = lambda n: torch.eye(n, dtype=torch.float64)  # noqa: E731
    prior_z1 = a @ a.T + torch.diag(s**2)  # p(z1) = N(c, A Aᵀ + diag(s²))
    cov1 = torch.linalg.inv(torch.linalg.inv(prior_z1) + w.T @ w / sigma**2)  # p(z1 | x)
    gain1 = cov1 @ w.T / sigma**2  # E[z1 | x] = gain1 (x - b) + cov1 prior_z1⁻¹ c
    shift1 = cov1 @ torch.linalg.solve(prior_z1, c) - gain1 @ b
    cov2 = torch.linalg.inv(eye(2) + a.T @ torch.diag(s**-2) @ a)  # p(z2 | z1)
    gain2 = cov2 @ a.T @ torch.diag(s**-2)  # E[z2 | z1] = gain2 (z1 - c)
    with torch.no_grad():
        for net, gain, shift, cov in (
            (vae.encoder[0], gain1, shift1, cov1),
            (vae.top_encoder[0], gain2, -gain2 @ c, cov2),
        ):
            d = cov.shape[0]
            net.weight.zero_()
            net.weight[:d] = gain
            net.bias[:d] = shift
            net.bias[d:] = 0.5 * torch.log(d * torch.diagonal(cov))


def test_importance_weighted_estimate_reaches_the_exact_two_layer_log_px():
    """log p̂_K(x) converges to the exact log p(x) of a two-layer linear-Gaussian model."""
    vae, (a, c, s, w, b, sigma) = linear_two_layer_vae()
    pyro.set_rng_seed(0)
    x = vae.sample(40, mean=False)
    # By hand: z1 ~ N(c, A Aᵀ + diag(s²)), x ~ N(W c + b, W (A Aᵀ + diag(s²)) Wᵀ + σ² I).
    cov_z1 = a @ a.T + torch.diag(s**2)
    cov_x = w @ cov_z1 @ w.T + sigma**2 * torch.eye(4, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(w @ c + b, cov_x).log_prob(x)
    truth = vae.linear_gaussian()  # the same model, as the library sees it
    torch.testing.assert_close(truth.log_marginal(x), exact, rtol=1e-10, atol=1e-10)

    _set_guide(vae, (a, c, s, w, b, sigma))
    errors = {}
    for k in (10, 20000):
        pyro.set_rng_seed(1)
        res = evaluate_vae(vae, x, k=k, progress=False)
        assert res.exact_log_px == pytest.approx(exact.mean().item(), abs=1e-8)
        err = res.per_point_log_px.double() - exact
        errors[k] = (err.mean().item(), err.std().item() / math.sqrt(err.numel()))
    mean, stderr = errors[20000]
    assert abs(mean) < 4 * stderr, errors
    assert abs(errors[10][0]) > abs(mean), errors
    assert errors[10][0] < 0  # a lower bound on average


SMALL_TWO_LAYER = VAEConfig(
    latent_layers=2, z_dim=2, z1_dim=3, hidden=(16,), hidden_top=(8,), likelihood="gaussian-learned"
)


def _small_train(epochs, **kw):
    return TrainConfig(
        dataset="linear-gaussian",
        dataset_options={"x_dim": 5, "z_dim": 2},
        n_train=300,
        n_eval=100,
        epochs=epochs,
        batch_size=50,
        **kw,
    )


def test_training_loading_and_resuming_a_two_layer_vae(tmp_path):
    run = tmp_path / "run"
    result = train(_small_train(2, lr=3e-3), SMALL_TWO_LAYER, run_dir=run, progress=False)
    assert isinstance(result.vae, TwoLayerVAE) and result.producer == "direct"
    valid = [m["valid_elbo"] for m in result.metrics]
    assert len(valid) == 2 and all(math.isfinite(v) for v in valid)
    assert valid[1] > valid[0]
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["latent_layers"], saved["z1_dim"], list(saved["hidden_top"])) == (2, 3, [8])
    vae, state = load_vae(run, "last")
    assert isinstance(vae, TwoLayerVAE) and state["epoch"] == 2
    mine, theirs = result.vae.state_dict(), vae.state_dict()
    assert mine.keys() == theirs.keys()
    assert any(k.startswith("top_encoder.") for k in mine)
    assert any(k.startswith("top_decoder.") for k in mine)
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key

    # Resume: one epoch and then another gives what two straight epochs give.
    train(_small_train(1, lr=3e-3), SMALL_TWO_LAYER, run_dir=tmp_path / "b", progress=False)
    resumed = train(_small_train(2), run_dir=tmp_path / "b", resume=True, progress=False)
    assert isinstance(resumed.vae, TwoLayerVAE)
    for (name, p), q in zip(result.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(p, q), name
    assert [m["valid_elbo"] for m in resumed.metrics] == valid


def test_old_configs_load_as_one_layer():
    d = VAEConfig(x_dim=4, z_dim=2, hidden=(8,)).to_dict()
    for key in ("latent_layers", "z1_dim", "hidden_top"):
        del d[key]
    cfg = VAEConfig.from_dict(d)
    assert (cfg.latent_layers, cfg.z1_dim, cfg.hidden_top) == (1, 100, (100, 100))
    vae = build_vae(cfg)
    assert type(vae) is VAE and make_producer(vae).name == "direct"


def test_command_line_two_layers(tmp_path, capsys):
    run = tmp_path / "cli"
    flags = ["--dataset", "linear-gaussian", "--likelihood", "gaussian", "--latent-layers", "2"]
    flags += ["--z1-dim", "3", "--z-dim", "2", "--hidden", "16", "--hidden-top", "8"]
    assert main(["train", *flags, "--epochs", "1", "--run-dir", str(run), "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["latent_layers"], saved["z1_dim"], list(saved["hidden_top"])) == (2, 3, [8])
    assert (saved["z_dim"], list(saved["hidden"])) == (2, [16])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "50", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert math.isfinite(res["log_px"]) and res["log_px"] >= res["elbo"]
    # Resuming with the run's own model flags given again is no change.
    assert (
        main(["train", *flags, "--epochs", "2", "--run-dir", str(run), "--resume", "--quiet"]) == 0
    )
    assert (
        main(
            [
                "train",
                "--hidden-top",
                "9",
                "--epochs",
                "3",
                "--run-dir",
                str(run),
                "--resume",
                "--quiet",
            ]
        )
        == 2
    )
    assert "hidden_top" in capsys.readouterr().err


@pytest.mark.parametrize("estimator", ONE_LAYER_ONLY)
def test_one_layer_estimators_are_refused_before_anything_is_written(tmp_path, estimator):
    with pytest.raises(
        NotApplicable, match=f"'{estimator}' estimator does not apply.*one latent layer"
    ):
        train(
            _small_train(1, estimator=estimator),
            SMALL_TWO_LAYER,
            run_dir=tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run").exists()


def test_bad_values_are_one_line_errors(tmp_path, capsys):
    base = ["train", "--dataset", "linear-gaussian", "--epochs", "1", "--quiet"]
    for flags, expected in (
        (["--latent-layers", "3"], "--latent-layers must be an integer from 1 to 2, got 3"),
        (["--z1-dim", "0"], "--z1-dim must be an integer >= 1, got 0"),
        (["--hidden-top", "0"], "--hidden-top must be"),
    ):
        assert main([*base, *flags, "--run-dir", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "r").exists()
    with pytest.raises(OptionError, match="latent_layers"):
        VAEConfig(latent_layers=0)
    # The memory pre-check counts the nets between z1 and z2 (unused with one layer).
    with pytest.raises(MemoryError, match="--hidden-top"):
        build_vae(VAEConfig(latent_layers=2, hidden_top=(10**6, 10**6)))
    assert type(build_vae(VAEConfig(hidden_top=(10**6, 10**6)))) is VAE
    with pytest.raises(ValueError, match="real latents"):
        build_vae(VAEConfig(x_dim=4, latent_layers=2, prior="bernoulli", guide="bernoulli"))
