"""Annealed importance sampling against exact answers: on one- and two-layer linear-Gaussian
models (closed-form log p(x)) the estimate lands within 4 standard errors of the truth, and its
error shrinks as the number of intermediate distributions grows; the direct producer's scores
at given latents equal tracing the model and guide conditioned on them."""

import math

import pytest
import torch

from pyrovae import VAEConfig, build_vae
from pyrovae.evaluation.ais import ais_log_likelihood, bdmc, schedule
from pyrovae.producers import make_producer

from helpers import linear_two_layer_vae, linear_vae, random_truth, set_mean_field_guide


def _errors(vae, x, exact, seed=1, **options):
    torch.manual_seed(seed)
    res = ais_log_likelihood(make_producer(vae), x, progress=False, **options)
    err = res.per_point_log_px - exact
    # The standard error of the mean error: each point's own Monte Carlo error.
    stderr = res.per_point_mc_stderr.pow(2).sum().sqrt().item() / x.shape[0]
    return err.mean().item(), stderr, res


def test_ais_from_the_prior_reaches_the_exact_log_likelihood_and_improves_with_steps():
    truth = random_truth(5, 3, seed=2)
    x = truth.sample(20, torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    vae = linear_vae(truth).eval()
    exact = truth.log_marginal(x)
    errors = {}
    for steps in (5, 50, 500):
        errors[steps] = _errors(vae, x, exact, steps=steps, chains=16, leapfrog=5)
    mean, stderr, res = errors[500]
    assert abs(mean) < 4 * stderr + 1e-3, errors
    assert abs(errors[5][0]) > abs(errors[50][0]) > abs(mean), errors
    assert 0.3 < res.acceptance <= 1.0 and res.steps == 500 and res.chains == 16
    # 500 transitions in 20 stretches of 25: their rates average to the overall rate.
    stages = res.acceptance_by_stage
    assert len(stages) == 20 and all(0 <= a <= 1 for a in stages)
    assert sum(stages) / 20 == pytest.approx(res.acceptance)
    assert len(errors[5][2].acceptance_by_stage) == 5


def test_ais_from_the_guide_reaches_the_exact_log_likelihood():
    truth = random_truth(4, 2, seed=3)
    x = truth.sample(20, torch.Generator().manual_seed(3))
    vae = linear_vae(truth).eval()
    set_mean_field_guide(vae, truth, inflate=1.5)
    mean, stderr, res = _errors(
        vae, x, truth.log_marginal(x), steps=200, chains=16, leapfrog=5, init="guide"
    )
    assert abs(mean) < 4 * stderr + 1e-3, (mean, stderr)
    assert res.init == "guide"


def test_ais_on_a_two_layer_linear_gaussian_model():
    vae, _ = linear_two_layer_vae()
    torch.manual_seed(0)
    x = vae.sample(20, mean=False)
    exact = vae.linear_gaussian().log_marginal(x)
    errors = {s: _errors(vae, x, exact, steps=s, chains=16, leapfrog=5) for s in (5, 300)}
    mean, stderr, _ = errors[300]
    assert abs(mean) < 4 * stderr + 1e-3, errors
    assert abs(errors[5][0]) > abs(mean), errors


@pytest.mark.parametrize("layers", [1, 2])
def test_direct_scores_equal_tracing_the_conditioned_model_and_guide(layers):
    torch.manual_seed(0)
    options = {"latent_layers": 2, "z1_dim": 3} if layers == 2 else {}
    cfg = VAEConfig(x_dim=6, z_dim=2, hidden=(8,), prior="vampprior", **options)
    vae = build_vae(cfg).double()
    x = vae.sample(5, mean=False)
    latents = {k: v.detach() for k, v in vae.particles(x, None, 3, None).latents.items()}
    scored = {}
    for kind in ("direct", "traced"):
        z = {k: v.clone().requires_grad_() for k, v in latents.items()}
        particles = make_producer(vae, kind).score(x, z)
        fields = [particles.log_prior, particles.log_lik, particles.log_q]
        grads = torch.autograd.grad(sum(f.sum() for f in fields), list(z.values()))
        scored[kind] = fields + list(grads)
    for a, b in zip(scored["direct"], scored["traced"]):
        assert a.shape[:2] == (3, 5)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="give a value for every latent"):
        make_producer(vae, "traced").score(
            x, {"z1" if layers == 2 else "w": latents[next(iter(latents))]}
        )


def test_ais_direct_and_traced_give_the_same_estimate():
    truth = random_truth(3, 2, seed=4)
    x = truth.sample(6, torch.Generator().manual_seed(4))
    vae = linear_vae(truth).eval()
    results = []
    for kind in ("direct", "traced"):
        torch.manual_seed(5)
        results.append(
            ais_log_likelihood(make_producer(vae, kind), x, steps=20, chains=4, progress=False)
        )
    torch.testing.assert_close(results[0].per_point_log_px, results[1].per_point_log_px)


def test_schedule_and_bad_arguments():
    for kind in ("sigmoid", "linear"):
        betas = schedule(10, kind)
        assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    assert math.isclose(schedule(4, "linear")[1].item(), 0.25)
    truth = random_truth(3, 2, seed=4)
    producer = make_producer(linear_vae(truth))
    x = truth.sample(2, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="init must be one of"):
        ais_log_likelihood(producer, x, init="posterior")
    with pytest.raises(ValueError, match="steps"):
        ais_log_likelihood(producer, x, steps=0)
    with pytest.raises(ValueError, match="schedule"):
        ais_log_likelihood(producer, x, schedule_kind="cosine")


@pytest.mark.parametrize("layers", [1, 2])
def test_bdmc_brackets_the_exact_log_likelihood_and_narrows_with_steps(layers):
    if layers == 1:
        truth = random_truth(5, 3, seed=2)
        torch.manual_seed(0)
        vae = linear_vae(truth).eval()
    else:
        vae, _ = linear_two_layer_vae()
        truth = vae.linear_gaussian()
    x_like = torch.zeros(20, truth.x_dim, dtype=torch.float64)
    widths = []
    for steps in (10, 300):
        torch.manual_seed(1)
        res = bdmc(make_producer(vae), x_like, steps=steps, chains=8, leapfrog=5, k=200,
                   progress=False)  # fmt: skip
        widths.append(res.width)
    # The bounds are stochastic: each holds on average. Paired per point against the truth,
    # the mean lower error is not above 0 and the mean upper error not below 0 beyond Monte
    # Carlo noise, and both are small.
    exact = truth.log_marginal(res.points)
    for name, sign in (("lower", 1), ("upper", -1)):
        err = res.per_point[name] - exact
        stderr = err.std().item() / math.sqrt(err.numel())
        assert sign * err.mean().item() < 4 * stderr + 0.01, (name, err.mean(), stderr)
        # (the 5-D hierarchical posterior of two layers anneals more slowly)
        assert abs(err.mean().item()) < (0.15 if layers == 1 else 0.4), (name, err.mean())
    # The sandwich closes (up to Monte Carlo noise, which can make it cross slightly).
    assert widths[0] > 0.5 and abs(widths[1]) < (0.2 if layers == 1 else 0.5), widths
    assert abs(widths[1]) < widths[0] / 4, widths


def test_ais_and_bdmc_from_the_command_line(tmp_path, capsys):
    import json

    from pyrovae.cli import main

    run = str(tmp_path / "run")
    argv = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian-learned"]
    assert main(argv + ["--epochs", "1", "--run-dir", run, "--quiet"]) == 0
    capsys.readouterr()
    ais = ["evaluate", run, "--method", "ais", "--steps", "20", "--chains", "4", "--n", "10"]
    assert main(ais + ["--quiet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "ais" and out["steps"] == 20 and out["chains"] == 4
    assert out["n"] == 10 and 0 <= out["acceptance"] <= 1 and math.isfinite(out["log_px"])
    assert main(["evaluate", run, "--k", "10", "--n", "10", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "iw"
    bd = ["bdmc", run, "--n", "6", "--steps", "20", "--chains", "3", "--k", "10", "--quiet"]
    assert main(bd + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 6 and out["width"] == pytest.approx(out["upper"] - out["lower"])
    assert main(bd) == 0 and "sandwich width" in capsys.readouterr().out
    for bad, flag in ((ais + ["--steps", "0"], "--steps"), (bd + ["--chains", "0"], "--chains")):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and "\n" not in err


def test_every_method_reports_the_exact_log_px_under_the_same_keys(tmp_path, capsys):
    """A linear-Gaussian run's log p(x) is known exactly: the importance-weighted and AIS
    evaluations of the same points, and BDMC on its simulated points, all report it as
    ``exact_log_px`` with ``exact_log_px_stderr``; a run without one reports neither."""
    import json

    from pyrovae.cli import main

    keys = {"exact_log_px", "exact_log_px_stderr"}
    common = ["--dataset", "linear-gaussian", "--likelihood", "gaussian-learned"]
    results = {}
    for decoder in ("linear", "mlp"):
        run = str(tmp_path / decoder)
        argv = ["train", *common, "--decoder", decoder, "--epochs", "1", "--run-dir", run]
        assert main(argv + ["--quiet"]) == 0
        capsys.readouterr()
        commands = {
            "iw": ["evaluate", run, "--k", "1000", "--n", "10"],
            "ais": ["evaluate", run, "--method", "ais", "--steps", "20", "--chains", "4"],
            "bdmc": ["bdmc", run, "--n", "6", "--steps", "20", "--chains", "3", "--k", "10"],
        }
        commands["ais"] += ["--n", "10"]
        for method, command in commands.items():
            assert main(command + ["--quiet", "--json"]) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["method"] == method
            results[decoder, method] = out
            assert main(command + ["--quiet"]) == 0  # and the summary table says it
            assert ("exact log p(x)" in capsys.readouterr().out) == (decoder == "linear")
    for method in ("iw", "ais", "bdmc"):
        assert keys <= set(results["linear", method]), method
        assert not keys & set(results["mlp", method]), method
    iw, ais, bdmc = (results["linear", m] for m in ("iw", "ais", "bdmc"))
    # The same ten test points: the same truth, whichever method estimated it.
    assert ais["exact_log_px"] == iw["exact_log_px"]
    assert ais["exact_log_px_stderr"] == iw["exact_log_px_stderr"]
    # The estimates against it.
    # (IW at K = 1000 on this model is within 0.02 of it; AIS at T = 20 about 0.7 below.)
    assert abs(iw["log_px"] - iw["exact_log_px"]) < 0.1
    assert ais["exact_log_px"] - 2.0 < ais["log_px"] < ais["exact_log_px"] + 0.1
    assert math.isfinite(bdmc["exact_log_px"]) and bdmc["exact_log_px_stderr"] > 0


def _pair_of_your_own(truth):
    """The linear-Gaussian ``truth`` as a Pyro model and guide written as a user would, with
    nothing of pyrovae's in them (the guide: the prior, amortizing nothing)."""
    import pyro
    import pyro.distributions as dist

    weight, bias, scale = truth.weight, truth.bias, truth.noise_var.sqrt()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(truth.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight.T + bias, scale).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], truth.z_dim), 1.0).to_event(1))

    return model, guide


def test_ais_and_bdmc_take_a_model_and_guide_of_your_own():
    import pyrovae

    truth = random_truth(4, 2, seed=6)
    model, guide = _pair_of_your_own(truth)
    x = truth.sample(20, torch.Generator().manual_seed(6))
    torch.manual_seed(0)
    # Exported from pyrovae, and given the pair itself: no producer to build.
    res = pyrovae.ais_log_likelihood((model, guide), x, 300, 16, 5, progress=False)
    err = res.per_point_log_px - truth.log_marginal(x)
    stderr = res.per_point_mc_stderr.pow(2).sum().sqrt().item() / x.shape[0]
    assert abs(err.mean().item()) < 4 * stderr + 1e-3, (err.mean(), stderr)
    assert res.producer == "traced"
    torch.manual_seed(1)
    x_like = torch.zeros(20, truth.x_dim, dtype=torch.float64)
    sandwich = pyrovae.bdmc((model, guide), x_like, 300, 8, 5, k=200, progress=False)
    exact = truth.log_marginal(sandwich.points)
    for name, sign in (("lower", 1), ("upper", -1)):
        err = sandwich.per_point[name] - exact
        stderr = err.std().item() / math.sqrt(err.numel())
        assert sign * err.mean().item() < 4 * stderr + 0.01, (name, err.mean(), stderr)
