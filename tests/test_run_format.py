"""The run directory's format, held against a run written before the shell was restructured
(issue 25): ``config.json`` byte for byte and every checkpoint key and value.

``tests/fixtures/run_format`` holds the run that commit 52abdb3 wrote with the settings below
(one thread, so that every sum is taken in one order): a new run of 2 epochs, then resumed to 3
with a new learning rate. ``python tests/test_run_format.py`` writes it again, only after a
change to the format that is meant.
"""

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from pyrovae.cli import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_format"
FLAGS = ["--dataset", "linear-gaussian", "--dataset-option", "n_train=120", "--hidden", "8"]
FLAGS += ["--dataset-option", "n_valid=30", "--batch-size", "40", "--z-dim", "3", "--seed", "4"]
FLAGS += ["--likelihood", "gaussian-learned", "--threads", "1", "--quiet"]


def write_run(run: Path) -> None:
    """The fixture's run at ``run``: 2 epochs, then resumed to 3 at another learning rate."""
    before = torch.get_num_threads()
    try:
        assert main(["train", *FLAGS, "--epochs", "2", "--run-dir", str(run)]) == 0
        resume = ["--epochs", "3", "--lr", "5e-4", "--resume", "--run-dir", str(run)]
        assert main(["train", *FLAGS, *resume]) == 0
    finally:
        torch.set_num_threads(before)


def _same(saved: Any, now: Any, where: str) -> None:
    """Same keys, types and values, recursively; tensors equal within float rounding of
    another CPU's kernels."""
    assert type(saved) is type(now), f"{where}: {type(saved).__name__} -> {type(now).__name__}"
    if isinstance(saved, dict):
        assert sorted(saved, key=str) == sorted(now, key=str), f"{where}: keys differ"
        for key in saved:
            _same(saved[key], now[key], f"{where}.{key}")
    elif isinstance(saved, (list, tuple)):
        assert len(saved) == len(now), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(saved, now)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(saved, torch.Tensor):
        assert saved.dtype == now.dtype and saved.shape == now.shape, where
        if saved.dtype.is_floating_point:
            assert torch.allclose(saved, now, rtol=1e-4, atol=1e-6), where
        else:
            assert torch.equal(saved, now), where
    elif isinstance(saved, float):
        assert now == pytest.approx(saved, rel=1e-4, abs=1e-6), where
    elif where.endswith("train_seconds") or where.endswith("valid_seconds"):
        pass  # wall time
    else:
        assert saved == now, where


def test_a_run_is_written_as_before(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    assert (run / "config.json").read_bytes() == (FIXTURE / "config.json").read_bytes()
    for name in ("last.pt", "best.pt"):
        saved = torch.load(FIXTURE / name, weights_only=True)
        now = torch.load(run / "checkpoints" / name, weights_only=True)
        _same(_timeless(saved), _timeless(now), name)


def _timeless(value: Any) -> Any:
    """``value`` without the wall times a run records (they differ every run)."""
    if isinstance(value, dict):
        return {
            k: _timeless(v) for k, v in value.items() if k not in ("train_seconds", "valid_seconds")
        }
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


if __name__ == "__main__":  # rewrite the fixture
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_run(Path(tmp) / "run")
        FIXTURE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "run" / "config.json", FIXTURE / "config.json")
        for name in ("last.pt", "best.pt"):
            shutil.copyfile(Path(tmp) / "run" / "checkpoints" / name, FIXTURE / name)
    print(f"wrote {FIXTURE}", file=sys.stderr)
