"""``pyrovae gap`` against known truth: on a linear-Gaussian model the best diagonal Gaussian per
data point is the mean-field optimum, in closed form, so the approximation gap is the analytic
mean-field gap and the amortization gap the closed-form ELBO difference; a full-rank family has
no approximation gap."""

import json

import pytest
import torch

from pyrovae.evaluation.gap import inference_gap

from helpers import linear_vae, random_truth


def _linear_vae(truth, guide):
    torch.manual_seed(1)
    return linear_vae(truth, guide).eval()


def test_gap_parts_match_the_closed_form_on_linear_gaussian():
    truth = random_truth(5, 3, seed=6)
    x = truth.sample(40, torch.Generator().manual_seed(6))
    vae = _linear_vae(truth, "diagonal-gaussian")
    res = inference_gap(vae, x, k=4000, steps=1000, lr=0.1, samples=8, progress=False)
    with torch.no_grad():
        loc, log_scale = vae.encoder(x).split(3, -1)
        amortized = truth.elbo_diagonal(x, loc, log_scale.exp())
        post = truth.posterior(x)
        precision = torch.linalg.inv(post.covariance_matrix)
        best = truth.elbo_diagonal(x, post.loc, precision.diagonal(dim1=-2, dim2=-1).rsqrt())
        exact = truth.log_marginal(x)
    assert res.log_px_source == "exact"
    assert res.log_px == pytest.approx(exact.mean().item(), abs=1e-9)
    assert (exact - best).mean() > 0.05 and (best - amortized).mean() > 1.0  # both gaps real
    # Monte Carlo ELBOs of K = 4000 log weights, within 5 standard errors (that of the mean of
    # 40 x 4000 log weights under the amortized q, from a sample of them); the fit within 0.03
    # nats of the optimum.
    with torch.no_grad():
        log_w = vae.particles(x, None, 4000, None).log_w  # (K, n)
    mc = (log_w.var(0).sum() / 4000).sqrt().item() / x.shape[0]
    assert res.elbo_amortized == pytest.approx(amortized.mean().item(), abs=5 * mc)
    assert res.approximation_gap == pytest.approx((exact - best).mean().item(), abs=0.03)
    assert res.amortization_gap == pytest.approx(
        (best - amortized).mean().item(), abs=5 * mc + 0.03
    )
    assert res.inference_gap == pytest.approx(res.approximation_gap + res.amortization_gap)
    # The importance-weighted estimate under the amortized q is a (stochastic) lower bound.
    assert res.log_px_amortized <= res.log_px + 0.05


def test_full_rank_family_has_no_approximation_gap_on_linear_gaussian():
    truth = random_truth(4, 2, seed=7)
    x = truth.sample(20, torch.Generator().manual_seed(7))
    vae = _linear_vae(truth, "full-rank")
    res = inference_gap(vae, x, k=2000, steps=1000, lr=0.1, samples=8, progress=False)
    assert res.approximation_gap == pytest.approx(0.0, abs=0.03)
    assert res.amortization_gap > 0.5


def test_gap_command_writes_its_table_and_figure(tmp_path, capsys):
    from pyrovae.cli import main

    run = tmp_path / "run"
    argv = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian-learned"]
    argv += ["--encoder", "linear", "--decoder", "linear"]
    assert main(argv + ["--epochs", "1", "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    gap = ["gap", str(run), "--n", "10", "--k", "50", "--steps", "20", "--quiet"]
    assert main(gap) == 0
    out = capsys.readouterr().out
    assert "approximation gap" in out and "amortization gap" in out
    assert (run / "figures" / "gap.png").stat().st_size > 1000
    saved = json.loads((run / "figures" / "gap.json").read_text())
    assert saved["n"] == 10 and saved["log_px_source"] == "exact"
    assert saved["inference_gap"] == pytest.approx(
        saved["approximation_gap"] + saved["amortization_gap"]
    )
    assert main(gap + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 20
    assert main(gap + ["--steps", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--steps must be an integer >= 0" in err and "\n" not in err


def test_gap_refuses_a_two_layer_model(tmp_path, capsys):
    from pyrovae.cli import main

    run = tmp_path / "two"
    argv = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian-learned"]
    argv += ["--latent-layers", "2", "--z1-dim", "2", "--z-dim", "1"]
    assert main(argv + ["--epochs", "1", "--run-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["gap", str(run), "--n", "5", "--k", "10", "--quiet"]) == 2
    assert "one latent layer" in capsys.readouterr().err


def test_gap_takes_log_px_from_ais_when_asked():
    """A small nonlinear model (no exact answer): log p(x) by AIS agrees with the
    importance-weighted estimates (K = 2000 on a 2-D latent is nearly exact), and the gaps
    are taken from it."""
    from pyrovae import VAEConfig, build_vae

    torch.manual_seed(0)
    vae = build_vae(VAEConfig(x_dim=4, z_dim=2, hidden=(8,), likelihood="gaussian")).double()
    vae.eval()
    x = vae.sample(12, mean=False)
    res = inference_gap(
        vae, x, k=2000, steps=200, lr=0.1, samples=4, progress=False, ais_steps=300, ais_chains=8
    )
    # Per point the larger of AIS and the importance-weighted estimate with q*.
    assert res.log_px_source.startswith("the larger per point of importance-weighted")
    assert "AIS, T=300, 8 chains" in res.log_px_source
    assert res.log_px >= max(res.log_px_ais, res.log_px_fitted)
    assert res.log_px == pytest.approx(res.log_px_ais, abs=0.1)
    assert res.log_px == pytest.approx(res.log_px_fitted, abs=0.1)
    assert res.log_px == pytest.approx(res.log_px_amortized, abs=0.2)
    assert res.approximation_gap == pytest.approx(res.log_px - res.elbo_fitted)
