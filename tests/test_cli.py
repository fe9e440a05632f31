"""The command line end to end: train -> evaluate -> sample, as Getting started runs it."""

import json
import subprocess
import sys

import pytest

from pyrovae.cli import main

# A linear-Gaussian data set and model: its log p(x) is exact.
LINEAR_GAUSSIAN = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=4", "--z-dim", "2"]
LINEAR_GAUSSIAN += ["--decoder", "linear", "--likelihood", "gaussian-learned"]


def test_train_evaluate_sample_end_to_end(tmp_path, mnist_dir, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "binarized-mnist",
            "--data-dir",
            str(mnist_dir),
            "--epochs",
            "2",
            "--run-dir",
            str(run),
            "--hidden",
            "32",
            "--z-dim",
            "4",
            "--batch-size",
            "50",
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "training finished" in out and "best valid ELBO" in out

    assert main(["evaluate", str(run), "--k", "50", "--json"]) == 0
    printed = capsys.readouterr()
    res = json.loads(printed.out)
    for key in ("log_px", "log_px_stderr", "elbo", "k", "n", "weights", "warning"):
        assert key in res
    # the warning in the JSON is the one line on stderr, where there is one
    assert [f"pyrovae: {res['warning']}"] == printed.err.splitlines() if res["warning"] else True
    assert res["weights"]["k_ladder"][-1] == 50 and 1 <= res["weights"]["ess_mean"] <= 50
    assert res["k"] == 50 and res["n"] == 60 and "exact_log_px" not in res
    assert res["elbo"] <= res["log_px"] < 0  # the K-sample bound is above the ELBO

    assert main(["evaluate", str(run), "--k", "5", "--split", "valid", "--n", "10"]) == 0
    out = capsys.readouterr().out
    assert "log p(x), K=5" in out and "effective sample size" in out
    assert "not fitted (K too small)" in out

    assert main(["sample", str(run)]) == 0
    assert "figures written" in capsys.readouterr().out
    for name in ("samples.png", "reconstructions.png", "training_curves.png"):
        png = run / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    spec = "pathwise,dreg:num_particles=3,score-function:baseline=neural"
    args = ["gradvar", str(run), "--estimators", spec, "--draws", "4", "--warmup", "2"]
    assert main(args + ["--quiet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["estimators"]
    assert [r["estimator"] for r in rows] == spec.split(",")
    assert all(r["encoder_variance"] > 0 and r["seconds_per_estimate"] > 0 for r in rows)
    assert (run / "figures" / "gradvar.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["gradvar", str(run), "--estimators", "nope", "--draws", "2"]) == 2
    assert "unknown estimator" in capsys.readouterr().err
    assert main(["gradvar", str(run), "--estimators", "iwae:foo=1", "--draws", "2"]) == 2
    assert "unknown option(s) ['foo'] for the 'iwae' estimator" in capsys.readouterr().err
    assert main(["gradvar", str(run), "--batch-size", "0"]) == 2
    assert "--batch-size must be an integer >= 1, got 0" in capsys.readouterr().err

    # Resume to 3 epochs from the CLI: one more record, same run directory.
    assert main(["train", "--run-dir", str(run), "--resume", "--epochs", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_linear_gaussian_run_reports_exact_log_px(tmp_path, capsys):
    run = tmp_path / "lg"
    assert (
        main(
            [
                "train",
                *LINEAR_GAUSSIAN,
                "--n-train",
                "500",
                "--n-eval",
                "200",
                "--epochs",
                "3",
                "--hidden",
                "16",
                "--lr",
                "0.01",
                "--run-dir",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "2000", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "exact_log_px" in res
    assert abs(res["log_px"] - res["exact_log_px"]) < 4 * res["log_px_stderr"]
    assert main(["sample", str(run)]) == 0  # 2-D data: a scatter plot
    assert (run / "figures" / "samples.png").is_file()


def test_clear_errors_for_bad_input(tmp_path, mnist_dir, capsys, monkeypatch):
    import pyrovae.data.binarized_mnist

    def no_network(url, dest):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(pyrovae.data.binarized_mnist, "_download", no_network)
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a pyrovae run directory" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--dataset",
                "binarized-mnist",
                "--data-dir",
                str(tmp_path / "nodata"),
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nodata does not exist" in err and not (tmp_path / "nodata").exists()
    assert main(["train", "--resume", "--quiet"]) == 2
    assert "--resume needs --run-dir" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--estimator" in out and "--data-dir" in out and "--resume" in out


def test_config_file_sets_options_and_rejects_typos(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "train": {
                    "dataset": "ring",
                    "n_train": 200,
                    "n_eval": 50,
                    "epochs": 1,
                    "batch_size": 50,
                },
                "model": {
                    "z_dim": 2,
                    "hidden": [8],
                    "likelihood": "gaussian",
                    "likelihood_options": {"sigma": 0.1},
                },
            }
        )
    )
    run = tmp_path / "run"
    assert (
        main(["train", "--config", str(cfg), "--seed", "3", "--run-dir", str(run), "--quiet"]) == 0
    )
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["dataset"] == "ring" and saved["train"]["seed"] == 3
    assert saved["model"]["hidden"] == [8] and saved["model"]["likelihood_options"]["sigma"] == 0.1
    capsys.readouterr()
    cfg.write_text(json.dumps({"train": {"epochz": 3}}))
    assert main(["train", "--config", str(cfg), "--quiet"]) == 2
    assert f"unknown training option(s) --config {cfg}: train.epochz" in capsys.readouterr().err


def test_bernoulli_latent_model_with_score_function_estimators(tmp_path, mnist_dir, capsys):
    common = ["--dataset", "binarized-mnist", "--data-dir", str(mnist_dir), "--quiet"]
    model = ["--z-dim", "8", "--hidden", "16", "--prior", "bernoulli", "--guide", "bernoulli"]
    run = tmp_path / "sbn"
    args = ["train", *common, *model, "--epochs", "1", "--run-dir", str(run)]
    assert main(args + ["--estimator", "vimco", "--num-particles", "3"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "20", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["elbo"] <= res["log_px"] < 0
    assert main(["gradvar", str(run), "--draws", "3", "--warmup", "1", "--json", "--quiet"]) == 0
    names = [r["estimator"] for r in json.loads(capsys.readouterr().out)["estimators"]]
    assert "vimco" in names and "pathwise" not in names  # only estimators that apply
    bad = ["train", *common, *model, "--epochs", "1", "--run-dir", str(tmp_path / "bad")]
    assert main(bad + ["--estimator", "pathwise"]) == 2
    assert "has no reparameterized sampler" in capsys.readouterr().err


def test_producer_and_estimator_options_and_the_0_1_0_engine_flag(tmp_path, capsys):
    common = ["train", *LINEAR_GAUSSIAN, "--n-train", "200", "--n-eval", "50", "--epochs", "1"]
    common += ["--batch-size", "50", "--hidden", "8", "--quiet"]
    run = tmp_path / "traced"
    args = ["--producer", "traced", "--estimator", "score-function"]
    args += ["--estimator-option", "baseline_beta=0.8", "--run-dir", str(run)]
    assert main(common + args) == 0
    out = capsys.readouterr().out
    assert "the traced producer" in out
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["producer"] == "traced"
    assert saved["estimator_options"] == {"baseline_beta": 0.8}
    assert json.loads((run / "metrics.jsonl").read_text())["producer"] == "traced"
    assert main(["evaluate", str(run), "--k", "10", "--json", "--producer", "traced"]) == 0
    assert json.loads(capsys.readouterr().out)["producer"] == "traced"
    # pyrovae 0.1.0's --engine still works, as the producer it now names.
    assert main(common + ["--engine", "pyro", "--run-dir", str(tmp_path / "old")]) == 0
    assert "--engine pyro is --producer traced" in capsys.readouterr().err
    assert json.loads((tmp_path / "old" / "config.json").read_text())["train"]["producer"] == (
        "traced"
    )
    assert main(common + ["--estimator-option", "beta=2", "--run-dir", str(tmp_path / "x")]) == 2
    assert "unknown option(s) ['beta'] for the 'pathwise' estimator" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["train", "--lr-schedule", "bogus"], "--lr-schedule"),
        (["train", "--warmup", "x"], "--warmup"),
        (["evaluate"], "RUN_DIR"),
        (["bogus"], "COMMAND"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_flag_and_help(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and flag in err and "--help" in err, err
