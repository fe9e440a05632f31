"""Run directories written by pyrovae 0.1.0 (``tests/fixtures/v0.1.0``, see its README) still
evaluate and sample, with the numbers 0.1.0 gave, and resume to the parameters 0.1.0 reached,
whichever of its engines wrote them."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from pyrovae import TrainConfig, evaluate_run, sample_run, train
from pyrovae.cli import main
from pyrovae.training import load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1.0"
RUNS = sorted(p.name for p in (FIXTURES / "runs").iterdir())


def _expected(name):
    return json.loads((FIXTURES / "expected" / f"{name}.json").read_text())


def test_every_fixture_run_is_from_0_1_0():
    assert len(RUNS) == 7
    for name in RUNS:
        state = load_checkpoint(FIXTURES / "runs" / name / "checkpoints" / "last.pt")
        assert state["version"] == 1 and state["engine"] == _expected(name)["engine"]


@pytest.mark.parametrize("name", RUNS)
def test_a_0_1_0_run_evaluates_to_the_same_numbers(name, capsys):
    expected = _expected(name)["evaluate_k50_seed0_test"]
    # The one stream 0.1.0 drew from (evaluate's default now seeds each chunk's own).
    res = evaluate_run(str(FIXTURES / "runs" / name), k=50, progress=False, one_stream=True)
    assert res.n == expected["n"] and res.k == expected["k"]
    assert (res.exact_log_px is None) == ("exact_log_px" not in expected)  # linear-Gaussian
    for key in ("log_px", "elbo", "exact_log_px"):
        if key in expected:
            assert getattr(res, key) == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key
    capsys.readouterr()
    run = str(FIXTURES / "runs" / name)
    assert main(["evaluate", run, "--k", "50", "--json", "--one-stream"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["log_px"] == pytest.approx(expected["log_px"], rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", RUNS)
def test_a_0_1_0_run_samples(name, tmp_path):
    paths = sample_run(str(FIXTURES / "runs" / name), out_dir=str(tmp_path), n=20)
    assert set(paths) == {"samples", "training_curves"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())


@pytest.mark.parametrize("name", RUNS)
def test_a_0_1_0_run_resumes_to_where_0_1_0_went(name, tmp_path):
    """0.1.0 resumed each run from epoch 2 to 3 with its own engine; resuming here (the fast
    engine's runs on the direct producer, the pyro engine's on the traced one, with one fused
    Adam) reaches the same parameters and metrics up to float rounding."""
    run = tmp_path / name
    shutil.copytree(FIXTURES / "runs" / name, run)
    result = train(TrainConfig(epochs=3), run_dir=str(run), resume=True, progress=False)
    engine = _expected(name)["engine"]
    assert result.producer == {"fast": "direct", "pyro": "traced"}[engine]
    expected_metrics = _expected(name)["resumed_epoch3_metrics"]
    last = result.metrics[-1]
    assert [m["epoch"] for m in result.metrics] == [1, 2, 3]
    assert last["step"] == expected_metrics["step"]
    for key in ("train_elbo", "valid_elbo"):
        assert last[key] == pytest.approx(expected_metrics[key], rel=1e-5), key
    expected_state = torch.load(
        FIXTURES / "expected" / f"{name}.resumed-epoch3.pt", weights_only=True
    )["model_state"]
    state = result.vae.state_dict()
    assert state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # The new checkpoint is format 2 and resumes in turn.
    assert load_checkpoint(run / "checkpoints" / "last.pt")["version"] == 2
    again = train(TrainConfig(epochs=4), run_dir=str(run), resume=True, progress=False)
    assert [m["epoch"] for m in again.metrics] == [1, 2, 3, 4]
