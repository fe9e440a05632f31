"""A Pyro program of the user's own from the command line (issue 26): ``pyrovae train --model
PACKAGE.MODULE:FUNCTION`` trains it, resumes it exactly, and ``evaluate`` (IW and AIS),
``sample`` and ``bdmc`` work on its run; what needs the library's VAE, and every mistake in
naming or writing the program, is one line and exit status 2."""

import json
import re
from pathlib import Path

import pytest
import torch

from pyrovae.cli import main

from helpers import docs_example

DATA = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=5", "--dataset-option",
        "n_train=80", "--dataset-option", "n_valid=20", "--batch-size", "20", "--seed", "3",
        "--quiet", "--threads", "1"]  # fmt: skip


def train(run: Path, *flags: str) -> int:
    return main(["train", *DATA, "--run-dir", str(run), *flags])


def params(run: Path):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state"]["params"]


@pytest.mark.parametrize("program", ["nested", "kl_annealed", "scaled", "subsampled"])
def test_a_program_trains_resumes_exactly_and_evaluates_from_the_command_line(
    program, tmp_path, capsys
):
    spec = ["--model", f"programs:{program}", "--estimator", "iwae"]
    assert train(tmp_path / "a", *spec, "--epochs", "2") == 0
    assert train(tmp_path / "b", *spec, "--epochs", "1") == 0
    assert train(tmp_path / "b", "--resume", "--epochs", "2") == 0
    straight, resumed = params(tmp_path / "a"), params(tmp_path / "b")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert saved["model"] == f"programs:{program}"
    run = str(tmp_path / "a")
    capsys.readouterr()
    assert main(["evaluate", run, "--k", "20", "--n", "10", "--json", "--quiet"]) == 0
    iw = json.loads(capsys.readouterr().out)
    ais = ["--method", "ais", "--init", "guide", "--steps", "50", "--chains", "4"]
    assert main(["evaluate", run, "--n", "10", *ais, "--json", "--quiet"]) == 0
    annealed = json.loads(capsys.readouterr().out)
    # Two estimates of one log p(x), both short (K = 20, T = 50) on a guide trained 2 epochs.
    assert abs(iw["log_px"] - annealed["log_px"]) < 2.0
    assert main(["sample", run, "--n", "30"]) == 0
    assert (tmp_path / "a" / "figures" / "samples.png").stat().st_size > 0
    bdmc = ["--n", "4", "--steps", "20", "--chains", "2", "--leapfrog", "2", "--k", "20"]
    assert main(["bdmc", run, *bdmc, "--quiet"]) == 0


@pytest.mark.parametrize(
    "flags,said",
    [
        (["--model", "programs"], "takes PACKAGE.MODULE:FUNCTION"),
        (["--model", "no_such_module:make"], "no module 'no_such_module'"),
        (["--model", "programs:no_such_function"], "programs has no function"),
        (["--model", "programs:loop_log_px"], r"loop_log_px\(\) failed: TypeError"),
        (["--model", "programs:nested", "--z-dim", "3"], "do not apply to a program"),
        (["--model", "programs:raising"], "your program raised RuntimeError: a bug in the "
                                           "user's model (.*programs.py:[0-9]+, in buggy)"),
        (["--model", "programs:subsampled", "--batch-size", "3"], "subsample_size=4 points, "
                                                                   "but the batch holds 3"),
    ],
)  # fmt: skip
def test_mistakes_in_a_program_are_one_line_and_status_2(flags, said, tmp_path, capsys):
    assert train(tmp_path / "r", *flags, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(said, err), err
    assert not (tmp_path / "r" / "config.json").exists()


def test_what_needs_the_librarys_vae_says_what_works_on_a_program_run(tmp_path, capsys):
    assert train(tmp_path / "r", "--model", "programs:nested", "--epochs", "1") == 0
    run = str(tmp_path / "r")
    for command in (["gradvar", run], ["evaluate", run, "--refine", "5"]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "needs the library's VAE" in err and "evaluate (--method iw or ais)" in err, err
        assert "gap" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("program", ["nested", "global_bias"])
def test_gap_fits_each_points_q_in_the_family_of_a_programs_guide(program, tmp_path, capsys):
    """``pyrovae gap`` on a program run: q* is each local site's distribution at parameters
    of the point's own, fitted; the gaps add up and the fit only closes the amortized one."""
    assert train(tmp_path / "r", "--model", f"programs:{program}", "--estimator", "stl",
                 "--epochs", "2") == 0  # fmt: skip
    run = tmp_path / "r"
    flags = ["--n", "6", "--k", "200", "--steps", "60", "--quiet"]
    assert main(["gap", str(run), *flags]) == 0
    said = json.loads((run / "figures" / "gap.json").read_text())
    assert said["n"] == 6 and (run / "figures" / "gap.png").stat().st_size > 0
    parts = said["approximation_gap"] + said["amortization_gap"]
    assert parts == pytest.approx(said["inference_gap"], abs=1e-9)
    assert said["amortization_gap"] > -0.05  # q* is at least as good as the amortized q


BMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"


@pytest.mark.skipif(not BMNIST.is_dir(), reason="../shared/data/binarized_mnist is not here")
def test_the_docs_program_trains_resumes_and_evaluates_as_the_docs_say(
    tmp_path, monkeypatch, capsys
):
    import pyro
    from pyro.infer import Trace_ELBO

    from pyrovae import make_estimator
    from pyrovae.producers import make_producer

    block = docs_example("class PixelPlateVAE(")
    (tmp_path / "readme_vaes.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    flags = ["--model", "readme_vaes:make", "--dataset", "binarized-mnist", "--data-dir",
             str(BMNIST), "--n-train", "200", "--n-eval", "40", "--batch-size", "50",
             "--estimator", "iwae", "--quiet", "--threads", "1"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "1", "--run-dir", str(run)]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10", "--n", "20", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["elbo"] <= result["log_px"] < 0 and result["n"] == 20
    # Its loss is Pyro's Trace_ELBO's, the KL annealing and the pixel plate included.
    import readme_vaes

    model, guide = readme_vaes.make()
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    pyro.set_rng_seed(0)
    expected = Trace_ELBO(max_plate_nesting=2).loss(model, guide, x)
    pyro.set_rng_seed(0)
    particles = make_producer((model, guide))(x, 8, 1, True)
    assert make_estimator("pathwise")(particles)[0].item() == pytest.approx(expected, rel=1e-5)


def test_a_program_trains_and_evaluates_under_torchrun_as_in_one_process(tmp_path, capsys):
    """2 processes train the program named on the command line (each builds it) and split the
    evaluation's points: the estimate is the one process's, point for point."""
    from test_distributed import torchrun

    tests = Path(__file__).resolve().parent  # the working directory: programs.py is found
    run = str(tmp_path / "run")
    flags = [*DATA, "--model", "programs:nested", "--epochs", "1", "--run-dir", run]
    torchrun("-m", "pyrovae", "train", *flags, cwd=tests)
    evaluate = ["evaluate", run, "--k", "20", "--json", "--quiet"]
    together = json.loads(torchrun("-m", "pyrovae", *evaluate, cwd=tests).stdout)
    capsys.readouterr()
    assert main(evaluate) == 0
    alone = json.loads(capsys.readouterr().out)
    assert together["n"] == alone["n"]
    assert together["log_px"] == pytest.approx(alone["log_px"], rel=1e-5)


TORCHVISION = Path(__file__).resolve().parents[2] / "shared" / "data" / "torchvision"


@pytest.mark.skipif(not TORCHVISION.is_dir(), reason="../shared/data/torchvision is not here")
def test_a_conditional_program_takes_the_labels_and_evaluates_log_p_x_given_y(tmp_path, capsys):
    """MNIST's labels reach model(x, y): the loss is Trace_ELBO's on (x, y), log p(x | y) by IW
    is the plain loop's over Pyro traces, and the CLI trains, resumes exactly, evaluates and
    draws class-conditional samples."""
    import pyro
    from pyro.infer import Trace_ELBO

    from pyrovae import load_dataset, make_estimator
    from pyrovae.evaluation import estimate_log_likelihood
    from pyrovae.producers import make_producer
    from pyrovae.program import with_labels

    from programs import conditional, loop_log_px

    data = load_dataset("mnist", TORCHVISION, binarize="dynamic", splits=("test",))
    x, y = data.test[:6], data.labels["test"][:6]
    program = conditional()
    producer = make_producer(program)
    pyro.set_rng_seed(0)
    expected = Trace_ELBO().loss(program.model, program.guide, x, y)
    pyro.set_rng_seed(0)
    particles = producer(with_labels(x, y), 6, 1, True)
    assert make_estimator("pathwise")(particles)[0].item() == pytest.approx(expected, rel=1e-5)
    assert particles.x.shape == (6, 785)  # a neural baseline sees the label too
    iw = estimate_log_likelihood(None, None, with_labels(x, y), k=400, producer=producer,
                                 progress=False).per_point_log_px  # fmt: skip
    loop = loop_log_px(lambda x: program.model(x, y[:1]), lambda x: program.guide(x, y[:1]),
                       x[:1], k=400)  # fmt: skip
    assert abs(iw[0].item() - loop[0].item()) < 1.0  # two K = 400 estimates of one log p(x | y)

    flags = ["--model", "programs:conditional", "--dataset", "mnist", "--data-dir",
             str(TORCHVISION), "--binarize", "dynamic", "--n-train", "200", "--n-eval", "40",
             "--batch-size", "50", "--quiet", "--threads", "1"]  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *flags, "--epochs", "2", "--run-dir", str(a)]) == 0
    assert main(["train", *flags, "--epochs", "1", "--run-dir", str(b)]) == 0
    assert main(["train", "--resume", "--run-dir", str(b), "--epochs", "2", "--quiet"]) == 0
    for name, value in params(a).items():
        assert torch.equal(value, params(b)[name]), name
    capsys.readouterr()
    assert main(["evaluate", str(a), "--k", "20", "--n", "10", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["log_px"] < 0
    assert main(["sample", str(a), "--n", "20"]) == 0
    assert (a / "figures" / "samples.png").stat().st_size > 0
    ais = ["--method", "ais", "--init", "guide", "--steps", "20", "--chains", "4", "--n", "5"]
    capsys.readouterr()
    assert main(["evaluate", str(a), *ais, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["log_px"] < 0
    # The same program taking the labels by keyword, model(x, digit=y): the same run.
    flags[1] = "programs:conditional_by_keyword"
    c = tmp_path / "c"
    assert main(["train", *flags, "--epochs", "2", "--run-dir", str(c)]) == 0
    for name, value in params(a).items():
        assert torch.equal(value, params(c)[name]), name
    assert main(["evaluate", str(c), "--k", "20", "--n", "10", "--json", "--quiet"]) == 0
    # Every estimator that applies trains it from the command line; the others say why not.
    from pyrovae import ESTIMATORS
    from pyrovae.producers import applies

    capsys.readouterr()
    for name in ESTIMATORS.names():
        applicable = applies(producer, make_estimator(name), with_labels(x, y))
        run = ["--epochs", "1", "--estimator", name, "--run-dir", str(tmp_path / name)]
        status = main(["train", *flags, *run])
        err = capsys.readouterr().err.strip()
        assert status == (0 if applicable else 2), (name, err)


def test_a_program_with_labels_on_data_without_them_is_one_line(tmp_path, capsys):
    assert train(tmp_path / "r", "--model", "programs:conditional", "--epochs", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "the program takes labels" in err and "has none" in err and len(err.splitlines()) == 1


def test_a_program_with_a_global_latent_from_the_command_line(tmp_path, capsys):
    """A Bayesian bias guided by an autoguide: trains with an estimator that takes global
    latents, resumes exactly, evaluates by IW and AIS saying what log p(x) then is, samples;
    what does not apply is one line and status 2."""
    spec = ["--model", "programs:global_bias", "--estimator", "stl"]
    assert train(tmp_path / "a", *spec, "--epochs", "2") == 0
    assert train(tmp_path / "b", *spec, "--epochs", "1") == 0
    assert train(tmp_path / "b", "--resume", "--epochs", "2") == 0
    straight, resumed = params(tmp_path / "a"), params(tmp_path / "b")
    assert any("bias" in name for name in straight)  # the autoguide's q(θ) is saved
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    run = str(tmp_path / "a")
    capsys.readouterr()
    assert main(["evaluate", run, "--k", "200", "--n", "10", "--json", "--quiet"]) == 0
    iw = json.loads(capsys.readouterr().out)
    assert iw["global_latents"] == ["bias", "bias_unconstrained"]
    ais = ["--method", "ais", "--init", "guide", "--steps", "50", "--chains", "20"]
    assert main(["evaluate", run, "--n", "10", *ais, "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "log p(x) = log E_q(θ)[p(x | θ)]" in said
    annealed = float(re.search(r"log p\(x\), AIS[^\n]*?(-?\d+\.\d+) ±", said).group(1))
    assert abs(iw["log_px"] - annealed) < 1.0
    assert main(["sample", run, "--n", "30"]) == 0
    capsys.readouterr()
    assert main(["bdmc", run, "--n", "4", "--steps", "5", "--chains", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "BDMC is not supported for a program with global latents (bias" in err
    assert len(err.splitlines()) == 1
    assert train(tmp_path / "c", "--model", "programs:global_bias", "--estimator", "iwae") == 2
    err = capsys.readouterr().err.strip()
    assert "global latents (bias, bias_unconstrained)" in err and "use pathwise or stl" in err


def test_the_docs_global_latent_program_trains_and_says_what_log_p_x_is(
    tmp_path, monkeypatch, capsys
):
    import pyro
    from pyro.infer import Trace_ELBO

    from pyrovae import make_estimator
    from pyrovae.producers import make_producer

    block = docs_example("class BayesianBiasVAE(")
    (tmp_path / "readme_bias.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    flags = ["--model", "readme_bias:make", "--dataset", "binarized-mnist", "--data-dir",
             str(BMNIST), "--n-train", "200", "--n-eval", "40", "--batch-size", "50",
             "--estimator", "stl", "--quiet", "--threads", "1"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "1", "--run-dir", str(run)]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10", "--n", "20", "--quiet"]) == 0
    assert "log p(x) = log E_q(θ)[p(x | θ)]" in capsys.readouterr().out
    import readme_bias

    pyro.clear_param_store()
    model, guide = readme_bias.make()
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    guide(x)  # the autoguide's parameters, made on first use
    pyro.set_rng_seed(0)
    expected = Trace_ELBO(max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(0)
    particles = make_producer((model, guide), "traced", 1)(x, 8, 1, True)
    assert make_estimator("pathwise")(particles)[0].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "program",
    ["nested", "kl_annealed", "scaled", "subsampled", "global_bias", "global_bias_diagonal"],
)
def test_every_estimator_trains_a_program_from_the_command_line_or_says_why_not(
    program, tmp_path, capsys
):
    """Each registered estimator, named with --estimator, trains the program for an epoch
    where it applies (``pyrovae.producers.applies`` on the program's particles), and where it
    does not, training stops before it starts with one line naming it, status 2."""
    from pyrovae import ESTIMATORS, make_estimator
    from pyrovae.producers import applies, make_producer

    import programs

    model, guide = getattr(programs, program)()
    x = torch.randn(20, 5)
    trained = []
    for name in ESTIMATORS.names():
        applicable = applies(make_producer((model, guide)), make_estimator(name), x)
        run = tmp_path / name
        status = train(run, "--model", f"programs:{program}", "--estimator", name, "--epochs", "1")
        err = capsys.readouterr().err.strip()
        if applicable:
            assert status == 0, (name, err)
            trained.append(name)
        else:
            assert status == 2 and len(err.splitlines()) == 1 and name in err, (name, err)
    assert {"pathwise", "stl"} <= set(trained)


def test_the_docs_discrete_latent_program_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    """The documentation's ClusterVAE (a mixture prior whose component is summed out by enumeration)
    from the command line: trained with iwae, resumed, evaluated by IW and AIS; its pathwise
    loss is TraceEnum_ELBO's at the same random numbers."""
    import pyro
    from pyro.infer import TraceEnum_ELBO

    from pyrovae import make_estimator
    from pyrovae.producers import make_producer

    block = docs_example("class ClusterVAE(")
    (tmp_path / "readme_clusters.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    flags = ["--model", "readme_clusters:make", "--dataset", "binarized-mnist", "--data-dir",
             str(BMNIST), "--n-train", "200", "--n-eval", "40", "--batch-size", "50",
             "--estimator", "iwae", "--quiet", "--threads", "1"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *flags, "--epochs", "1", "--run-dir", str(run)]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "2", "--quiet"]) == 0
    assert main(["evaluate", str(run), "--k", "10", "--n", "20", "--quiet"]) == 0
    args = ["--method", "ais", "--steps", "5", "--chains", "4", "--n", "4", "--quiet"]
    assert main(["evaluate", str(run), *args]) == 0
    capsys.readouterr()
    import readme_clusters

    pyro.clear_param_store()
    model, guide = readme_clusters.make()
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    pyro.set_rng_seed(0)
    expected = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    pyro.set_rng_seed(0)
    particles = make_producer((model, guide), "traced", 1)(x, 8, 1, True)
    assert make_estimator("pathwise")(particles)[0].item() == pytest.approx(expected, rel=1e-5)


def test_m2_trains_from_the_command_line_and_refuses_score_functions(tmp_path, capsys):
    """The built-in M2 (pyrovae.m2:make) on MNIST with 20 of its labels kept: trained with
    pathwise; score-function, which does not follow the enumerated label, refused in one line
    naming it, status 2."""
    flags = ["--model", "pyrovae.m2:make", "--dataset", "mnist", "--data-dir", str(TORCHVISION),
             "--dataset-option", "binarize=dynamic", "--dataset-option", "labelled=20",
             "--n-train", "100", "--n-eval", "40", "--batch-size", "50", "--quiet",
             "--threads", "1", "--epochs", "1"]  # fmt: skip
    loud = [f for f in flags if f != "--quiet"]
    assert main(["train", *loud, "--run-dir", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr()
    assert "valid error (last epoch)" in printed.out
    # what trains is what is printed: the classifier's term beside the ELBO
    assert "with pathwise" in printed.err and "plus the program's auxiliary term" in printed.err
    # The recorded validation error is the trained classifier's on the validation points.
    from pyrovae.producers import classification_error
    from pyrovae.program_runs import load_program_run, points

    producer, data, _ = load_program_run(tmp_path / "a", "last", splits=("valid",))
    recorded = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    expected = classification_error(producer, points(data, "valid", labels=True))
    assert recorded["valid_error"] == pytest.approx(expected)
    # diagnose and report take a program run: here the labelled test points observe y, so the
    # guide's one latent is z, and its diagnostics are q(z | x, y)'s.
    assert main(["diagnose", str(tmp_path / "a"), "--n", "20", "--k", "8", "--quiet",
                 "--json", "--samples", "1"]) == 0  # fmt: skip
    found = json.loads(capsys.readouterr().out)
    assert found["n"] == 20 and found["latents"]["site"] == "z" and found["iw"]["k"] == 8
    code = main(
        ["train", *flags, "--estimator", "score-function", "--run-dir", str(tmp_path / "b")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "sums y out by enumeration" in err
