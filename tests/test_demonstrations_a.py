"""The demonstrations in experiments/ (Jensen and the ELBO, forward against reverse KL, score
function against pathwise gradients), each run on small settings with its claim asserted against
known truth; and the library helpers they added (``LinearGaussian.elbo`` and
``kl_to_posterior``, ``linear_gaussian_vae``, ``gradient_variance(per_element=True)``)."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import LinearGaussian, linear_gaussian_vae
from pyrovae.evaluation.gradients import gradient_variance

from helpers import experiment_script, imperfect_linear_vae, mean_and_stderr, random_truth

experiment = experiment_script


# --- library helpers ------------------------------------------------------------------------


def _general_truth(seed=4):
    """A linear-Gaussian model (float64) with a non-standard prior, so that the general ELBO's
    prior term is exercised."""
    base = random_truth(4, 3, seed)
    g = torch.Generator().manual_seed(seed + 1)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    prior_loc = torch.randn(3, generator=g, dtype=torch.float64)
    return LinearGaussian(base.weight, base.bias, base.noise_var, prior_loc, a @ a.T + torch.eye(3))


def _random_guide(batch, z_dim, seed):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(batch, z_dim, generator=g, dtype=torch.float64)
    raw = 0.3 * torch.randn(batch, z_dim, z_dim, generator=g, dtype=torch.float64)
    tril = raw.tril(-1) + torch.diag_embed(0.5 + torch.rand(batch, z_dim, generator=g).double())
    return loc, tril


def test_elbo_and_kl_to_posterior_match_monte_carlo():
    """The closed-form ELBO and KL(q ‖ p(z|x)) of a full-covariance guide against averages over
    200k draws of q, scored with torch's densities (4 standard errors)."""
    truth = _general_truth()
    x = truth.sample(3, torch.Generator().manual_seed(0))
    loc, tril = _random_guide(3, truth.z_dim, 1)
    q = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    torch.manual_seed(2)
    z = q.sample((200_000,))  # (N, B, Dz)
    log_lik = (
        torch.distributions.Normal(z @ truth.weight.T + truth.bias, truth.noise_var.sqrt())
        .log_prob(x)
        .sum(-1)
    )
    log_w = log_lik + truth.prior().log_prob(z) - q.log_prob(z)
    mean, se = mean_and_stderr(log_w)
    assert ((truth.elbo(x, loc, tril) - mean).abs() < 4 * se).all()
    kl_draws = q.log_prob(z) - truth.posterior(x).log_prob(z)
    mean, se = mean_and_stderr(kl_draws)
    assert ((truth.kl_to_posterior(x, loc, tril) - mean).abs() < 4 * se).all()
    # and the ELBO is a different number from log p(x) here: the test can tell them apart
    assert (truth.log_marginal(x) - truth.elbo(x, loc, tril) > 50 * se).all()


def test_elbo_diagonal_is_the_general_elbo_and_the_old_closed_form():
    """``elbo_diagonal`` against the formula it had before it delegated to ``elbo``
    (standard prior), to float64 rounding."""
    truth = random_truth(5, 3, 0)
    x = truth.sample(4, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    loc = torch.randn(4, 3, generator=g, dtype=torch.float64)
    scale = 0.2 + torch.rand(4, 3, generator=g, dtype=torch.float64)
    resid = x - loc @ truth.weight.T - truth.bias
    spread = (scale**2) @ (truth.weight**2).T
    expected_ll = -0.5 * (
        torch.log(2 * math.pi * truth.noise_var) + (resid**2 + spread) / truth.noise_var
    ).sum(-1)
    kl = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).sum(-1)
    torch.testing.assert_close(truth.elbo_diagonal(x, loc, scale), expected_ll - kl)


def test_linear_gaussian_vae_holds_the_truth():
    truth = random_truth(4, 2, 3)
    vae = linear_gaussian_vae(truth)
    back = vae.linear_gaussian()
    for name in ("weight", "bias", "noise_var", "prior_loc", "prior_cov"):
        torch.testing.assert_close(getattr(back, name), getattr(truth, name))
    assert next(vae.parameters()).dtype == torch.float64
    assert next(linear_gaussian_vae(truth, dtype=torch.float32).parameters()).dtype == (
        torch.float32
    )
    with pytest.raises(ValueError, match="standard-normal prior"):
        linear_gaussian_vae(_general_truth())


def test_gradient_variance_keeps_per_element_moments_on_request():
    vae, x = imperfect_linear_vae()
    plain = gradient_variance(vae, x, ["pathwise"], draws=5, progress=False)[0]
    assert plain.per_element is None
    s = gradient_variance(vae, x, ["pathwise"], draws=5, progress=False, per_element=True)[0]
    n_enc = sum(p.numel() for m in vae.inference_modules() for p in m.parameters())
    n_all = sum(p.numel() for p in vae.parameters())
    assert s.per_element["encoder_mean"].shape == (n_enc,)
    assert s.per_element["decoder_var"].shape == (n_all - n_enc,)
    assert s.per_element["encoder_var"].sum().item() == pytest.approx(s.encoder_variance)
    assert s.per_element["decoder_var"].sum().item() == pytest.approx(s.decoder_variance)
    assert "per_element" not in s.to_dict()
    json.dumps(s.to_dict())


# --- 1. Jensen and the two routes to the ELBO ---------------------------------------------


def test_jensen_elbo(tmp_path):
    out = tmp_path / "jensen.png"
    res = experiment("jensen_elbo").main(
        ["--points", "20", "--k", "300", "--steps", "11", "--out", str(out)]
    )
    assert out.stat().st_size > 0
    # The identity, for six guides at every point, to float64 rounding.
    assert res["identity_error"] < 1e-10
    # A lower bound that touches log p(x) at the posterior only.
    assert res["gap_at_posterior"] < 1e-10
    assert res["min_gap"] > 0.2  # the best diagonal guide's, the smallest, is 0.30 nats
    for name, terms in res["terms"].items():
        if name != "exact posterior":
            assert (terms["elbo"] < terms["log_px"] - 0.2).all(), name
    # Along the line the gap shrinks monotonically to zero.
    kl = res["kl_line"]
    assert (kl[1:] < kl[:-1]).all() and abs(kl[-1]) < 1e-10 and kl[0] > 5
    # The evaluator's Monte Carlo: mean log w is the ELBO (4 standard errors; exact at the
    # posterior, where every weight is p(x)), and log mean w lies above it, near log p(x).
    for row in res["monte_carlo"]:
        tolerance = max(4 * row["elbo_mc_stderr"], 1e-9)
        assert abs(row["elbo_mc"] - row["elbo_exact"]) < tolerance, row
        assert row["log_mean_w"] >= row["elbo_mc"] - 1e-9
        assert abs(row["log_mean_w"] - res["log_px"]) < 0.05, row
        assert row["jensen_gap"] == pytest.approx(row["kl"], abs=max(0.05 * row["kl"], 1e-9))


# --- 2. Forward against reverse KL --------------------------------------------------------


def test_forward_fit_is_the_moment_match_in_closed_form():
    """L-BFGS on the exact forward KL lands on p's mean and variance, which are those of the
    mixture computed here by hand, to 1e-6."""
    fr = experiment("forward_reverse_kl")
    p = fr.mixture()
    w, mu, s = torch.tensor([0.5, 0.5]), torch.tensor(fr.MODES), fr.MODE_STD
    mean = (w * mu).sum().item()
    var = (w * (s**2 + mu**2)).sum().item() - mean**2
    fit = fr.fit_by_lbfgs(p, "forward")
    assert fit["loc"] == pytest.approx(mean, abs=1e-6)
    assert fit["var"] == pytest.approx(var, abs=1e-6)
    # ... and it is far from either mode: spread over both
    assert abs(fit["loc"] - fr.MODES[1]) > 1.5 and math.sqrt(var) > 3 * fr.MODE_STD


def test_reverse_fits_lock_onto_one_mode(tmp_path):
    out = tmp_path / "kl.png"
    fr = experiment("forward_reverse_kl")
    res = fr.main(["--steps", "200", "--samples", "2000", "--out", str(out)])
    assert out.stat().st_size > 0
    p_std = math.sqrt(res["closed"]["var"])
    best = res["reverse_lbfgs"]  # the optimum without sampling: locked to the mode at 2
    assert abs(best["loc"] - fr.MODES[1]) < 0.01 and abs(best["scale"] - fr.MODE_STD) < 0.01
    assert best["kl"] == pytest.approx(math.log(2), abs=0.005)
    for name, fit in res["fits"].items():
        assert min(abs(fit["loc"] - m) for m in fr.MODES) < 0.2, name
        assert fit["scale"] < 0.5 * p_std and abs(fit["scale"] - fr.MODE_STD) < 0.15, name
        assert abs(fit["loc"] - best["loc"]) < 0.1 and abs(fit["scale"] - best["scale"]) < 0.05
        # (Adam at a constant step size jitters around the optimum: 0.013 nats above it
        # measured; the broad local minimum between the modes is 0.45 nats above.)
        assert fit["kl"][-1] == pytest.approx(best["kl"], abs=0.03), name
    # maximum likelihood on draws of p is the forward fit, up to sampling noise
    assert res["mle"]["loc"] == pytest.approx(res["closed"]["loc"], abs=4 * p_std / math.sqrt(2000))
    assert res["mle"]["var"] == pytest.approx(res["closed"]["var"], rel=0.1)


def test_score_function_formula_is_pyros_gradient_plus_a_mean_zero_term():
    """On the same draws: the formula E_q[∇ log q (log q - log p + 1)] by autograd equals Pyro's
    TraceGraph_ELBO gradient plus the mean score (to rounding); and over many draws both average
    to the exact gradient of KL(q ‖ p) (autograd of the quadrature), as the pathwise gradient
    does."""
    fr = experiment("forward_reverse_kl")
    p = fr.mixture()
    check = fr.score_function_check(p, seed=3)
    assert check["max_error"] < 1e-12
    assert max(abs(s) for s in check["mean_score"]) > 1e-3  # the +1 term is not zero per draw

    loc = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    exact = torch.stack(
        torch.autograd.grad(fr.kl_by_quadrature(dist.Normal(loc, scale), p), (loc, scale))
    )
    pyro.set_rng_seed(0)
    formula, pyro_grads, pathwise = [], [], []
    for _ in range(40):
        z = dist.Normal(loc, scale).sample((5000,))
        formula.append(torch.stack(fr.score_function_kl_gradient(p, loc, scale, z)))
        loc.grad = scale.grad = None
        fr.elbo(False, 5000).loss_and_grads(
            lambda: fr.model(p), lambda: fr.sample_q(loc, scale, False)
        )
        pyro_grads.append(torch.stack([loc.grad.clone(), scale.grad.clone()]))
        # (Trace_ELBO's loss_and_grads steps only Pyro params: take the gradient itself.)
        loss = fr.elbo(True, 5000).differentiable_loss(
            lambda: fr.model(p), lambda: fr.sample_q(loc, scale, True)
        )
        pathwise.append(torch.stack(torch.autograd.grad(loss, (loc, scale))))
    for draws in (formula, pyro_grads, pathwise):
        mean, se = mean_and_stderr(torch.stack(draws))
        assert ((mean - exact).abs() < 4 * se + 1e-12).all(), (mean, exact, se)
        assert (se < 0.05 * exact.abs().max()).all()  # tight enough to see a wrong gradient


# --- 3. Score function against pathwise gradients ----------------------------------------


def test_gradient_estimators(tmp_path):
    out = tmp_path / "grads.png"
    ge = experiment("gradient_estimators")
    res = ge.main(
        [
            "--dims",
            "1,10",
            "--particles",
            "1,8",
            "--particles-dim",
            "10",
            "--draws",
            "200",
            "--warmup",
            "50",
            "--out",
            str(out),
        ]
    )
    assert out.stat().st_size > 0
    # Unbiased: the means over the draws agree with the exact gradient, element by element.
    for name, u in res["unbiased"].items():
        assert 0.7 < u["mean_z2"] < 1.4, (name, u)
        assert u["max_abs_z"] < 5.5, (name, u)
    # Orders of magnitude apart, more so as the dimension grows.
    ratios = res["ratios"]
    for name in ratios:
        assert ratios[name][1] < 0.1, (name, ratios)  # at dimension 10 (measured 0.009, 0.05)
        assert ratios[name][1] < ratios[name][0] / 2.5, (name, ratios)
    for r in res["by_dim"].values():
        assert r["score function + baseline"]["variance"] < r["score function"]["variance"] / 2
    # Every estimator's variance falls as 1/K.
    one, eight = res["by_particles"][1], res["by_particles"][8]
    for name in ge.ESTIMATORS:
        assert 0.6 < 8 * eight[name]["variance"] / one[name]["variance"] < 1.6, name


def test_the_unbiasedness_check_sees_a_small_bias():
    """The z-test of the experiment rejects the pathwise gradient against an exact gradient
    that is 10% off: the check has teeth."""
    ge = experiment("gradient_estimators")
    vae, x, truth = ge.setting(5, 10, 10, 1.0, 0)
    stats = gradient_variance(vae, x, ["pathwise"], draws=400, progress=False, per_element=True)
    moments = stats[0].per_element
    exact = ge.exact_encoder_gradient(vae, truth, x).double()
    se = (moments["encoder_var"] / 400).sqrt()
    assert ((moments["encoder_mean"] - exact) / se).pow(2).mean() < 1.5
    assert ((moments["encoder_mean"] - 1.1 * exact) / se).pow(2).mean() > 4
