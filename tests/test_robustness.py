"""Robustness against bad input: the command line and the Python API, one table of cases.

Every row names a case (its id), what is run (a ``pyrovae`` argv, or for the Python API a small
callable) and what must come of it: the exit status (or the exception type) and a fragment that
the error message must contain (case-insensitive). Ids start with the area (``data-``,
``flag-``, ``config-``, ``rundir-``, ``resume-``, ``eval-``, ``sample-``, ``gradvar-``, ``gap-``,
``fault-``, ``api-``); a ``defect-`` prefix marks a row that reproduces one of the defects
reported against pyrovae 0.2.0 (it fails on that release and passes once the defect is fixed).

The harness (``run_cli``) calls ``pyrovae.cli.main`` in this process. A user error is exit 2
and one stderr line ``pyrovae <command>: error: <message>`` (argparse's usage lines and Python
warnings aside) that names the offending value as the user wrote it: a flag as ``--batch-size``,
a config-file key as ``batch_size`` together with the file, an API argument by its parameter
name. No traceback, ever. A command that fails with exit 2 changes nothing in the ``--run-dir``
it was given: a new run directory is not created, an existing one keeps every file
byte-for-byte. Faults of the machine (a full disk, an interrupted or diverging run) keep the
last good checkpoint loadable and leave no temporary files behind.

Nothing here touches the network (``urllib.request.urlopen`` fails in every test) and every run
is tiny: 200/60/60 rows of 784 pixels, one hidden layer of 16, two latents, batches of 50.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae.runs
from pyrovae import (
    TrainConfig,
    VAEConfig,
    build_vae,
    estimate_log_likelihood,
    evaluate_run,
    evaluate_vae,
    load_dataset,
    load_vae,
    make_estimator,
    train,
)
from pyrovae.cli import main
from pyrovae.data import Dataset
from pyrovae.training import Trainer, load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*not comparable to published numbers")

# --- the harness --------------------------------------------------------------------------------

TINY = ("--hidden", "16", "--z-dim", "2", "--epochs", "1", "--batch-size", "50", "--quiet")
_WARNING = re.compile(r"\w*Warning: ")


@dataclass
class Shared:
    """Module-wide, read-only: the data directory and two trained runs (2 epochs each)."""

    root: Path
    data: Path
    run: Path  # the tiny settings, --num-particles 1 given explicitly
    subset_run: Path  # the same with --n-train 150 --n-eval 40


class Ctx:
    """What a row's setup, argv and checks see. ``run`` and ``subset_run`` are private copies
    of the shared runs, made on first use; ``own_data()`` swaps ``data`` for a private copy
    that the row may damage; ``new`` is a run directory that does not exist yet."""

    def __init__(self, tmp: Path, shared: Shared, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.shared, self.monkeypatch = tmp, shared, monkeypatch
        self.data = shared.data
        self.new = tmp / "newrun"
        self._copies: Dict[str, Path] = {}

    def _copy(self, name: str, source: Path) -> Path:
        if name not in self._copies:
            self._copies[name] = Path(shutil.copytree(source, self.tmp / name))
        return self._copies[name]

    @property
    def run(self) -> Path:
        return self._copy("run", self.shared.run)

    @property
    def subset_run(self) -> Path:
        return self._copy("subset-run", self.shared.subset_run)

    def own_data(self) -> Path:
        if self.data == self.shared.data:
            self.data = Path(shutil.copytree(self.shared.data, self.tmp / "data"))
        return self.data

    def fmt(self, template: str) -> str:
        """``template`` with ``{run}``, ``{subset_run}``, ``{data}``, ``{new}``, ``{tmp}``."""
        return template.format_map(_Fields(self))


class _Fields(dict):
    def __init__(self, ctx: Ctx) -> None:
        super().__init__()
        self.ctx = ctx

    def __missing__(self, key: str) -> str:
        return str(getattr(self.ctx, key))


Fragment = Union[str, Tuple[str, ...]]


@dataclass(frozen=True)
class Cli:
    """A command line row. ``argv`` is formatted by ``Ctx.fmt`` after ``setup`` ran; ``check``
    gets (ctx, stdout, stderr) after the standard checks; ``absent`` are paths that must not
    exist afterwards; ``faulty`` rows (a full disk) may leave a new run directory behind."""

    id: str
    argv: Tuple[str, ...]
    code: int
    fragment: Fragment = ()
    setup: Optional[Callable[[Ctx], Any]] = None
    check: Optional[Callable[[Ctx, str, str], Any]] = None
    absent: Tuple[str, ...] = ()
    faulty: bool = False


@dataclass(frozen=True)
class Api:
    """A Python API row: ``call(ctx)`` raises ``raises`` (or a subclass) whose message holds
    ``fragment``; ``raises=None``: it returns, having made its own checks."""

    id: str
    call: Callable[[Ctx], Any]
    raises: Optional[type]
    fragment: Fragment = ()


def run_cli(argv, capsys) -> Tuple[int, str, str]:
    """``pyrovae.cli.main(argv)`` in this process: (exit status, stdout, stderr). argparse's
    ``SystemExit`` gives its code; any other exception escaping ``main`` fails the test."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    except Exception as e:  # noqa: BLE001 - reported, never expected
        err = capsys.readouterr().err
        tb = traceback.format_exc(limit=-3)
        pytest.fail(f"traceback: {e!r}\n{tb}\nstderr:\n{err[-2000:]}", pytrace=False)
    out, err = capsys.readouterr()
    return code, out, err


def message_lines(err: str):
    """The lines of stderr that are messages: without argparse's usage block and Python
    warnings, each with the indented lines that continue it."""
    lines, skipping = [], False
    for line in err.splitlines():
        if not line.strip():
            continue
        if line[:1].isspace() and skipping:
            continue
        skipping = line.startswith("usage:") or bool(_WARNING.search(line))
        if not skipping:
            lines.append(line)
    return lines


def _fragments(fragment: Fragment) -> Tuple[str, ...]:
    return (fragment,) if isinstance(fragment, str) else tuple(fragment)


def snapshot(path: Path) -> Optional[Dict[str, bytes]]:
    """{relative name: bytes} of every file under ``path`` (``path`` itself if a file); None
    if it does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def _option(argv, flag: str) -> Optional[str]:
    return argv[argv.index(flag) + 1] if flag in argv else None


# --- fixtures -----------------------------------------------------------------------------------


def _no_network(*args, **kwargs):
    raise OSError("network disabled in tests")


def write_amat_dir(root: Path) -> Path:
    """A tiny binarized-MNIST-shaped data set: 200/60/60 noisy copies of three random blobs."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    protos = rng.random((3, 784)) < 0.2
    for split, n in (("train", 200), ("valid", 60), ("test", 60)):
        rows = protos[rng.integers(0, 3, n)] ^ (rng.random((n, 784)) < 0.05)
        lines = (" ".join("1" if v else "0" for v in row) for row in rows)
        (root / f"binarized_mnist_{split}.amat").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    root = tmp_path_factory.mktemp("robustness")
    data = write_amat_dir(root / "bmnist")
    base = ["train", "--dataset", "binarized-mnist", "--data-dir", str(data), *TINY]
    base += ["--epochs", "2", "--num-particles", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYROVAE_CACHE", str(root / "cache"))
        mp.setattr(urllib.request, "urlopen", _no_network)
        assert main(base + ["--run-dir", str(root / "run")]) == 0
        subset = ["--n-train", "150", "--n-eval", "40", "--run-dir", str(root / "subset-run")]
        assert main(base + subset) == 0
    return Shared(root, data, root / "run", root / "subset-run")


@pytest.fixture
def ctx(tmp_path, monkeypatch, shared) -> Ctx:
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    # Where a config without data_dir looks (and would download to): inside tmp_path.
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "default-data"))
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.chdir(tmp_path)
    return Ctx(tmp_path, shared, monkeypatch)


# --- argv builders ------------------------------------------------------------------------------


# A small linear-Gaussian data set (its own splits, not the .amat files).
LG = ("--dataset", "linear-gaussian", "--dataset-option", "n_train=200")
LG += ("--dataset-option", "n_valid=60", "--dataset-option", "n_test=60")


def T(*extra: str, run_dir: str = "{new}") -> Tuple[str, ...]:
    """A tiny training run on the test data; ``extra`` comes last, so a repeated flag
    overrides the tiny value (argparse keeps the last)."""
    argv = ("train", "--dataset", "binarized-mnist", "--data-dir", "{data}", *TINY, *extra)
    return argv + ("--run-dir", run_dir) if run_dir else argv


def R(*extra: str, run: str = "{run}") -> Tuple[str, ...]:
    """Resume a copy of the 2-epoch run."""
    return ("train", "--resume", "--run-dir", run, "--quiet", *extra)


def E(*extra: str, run: str = "{run}") -> Tuple[str, ...]:
    return ("evaluate", run, "--k", "5", "--quiet", *extra)


def S(*extra: str, run: str = "{run}") -> Tuple[str, ...]:
    return ("sample", run, "--n", "10", *extra)


def G(*extra: str, run: str = "{run}") -> Tuple[str, ...]:
    argv = ("gradvar", run, "--estimators", "pathwise", "--draws", "3", "--warmup", "1")
    return argv + ("--quiet", *extra)


def P(*extra: str, run: str = "{run}") -> Tuple[str, ...]:
    argv = ("gap", run, "--n", "4", "--k", "5", "--steps", "2", "--samples", "1")
    return argv + ("--quiet", *extra)


# --- setups and checks --------------------------------------------------------------------------


def chain(*setups):
    def setup(c: Ctx) -> None:
        for s in setups:
            s(c)

    return setup


def put(rel: str, content: Union[str, bytes] = "my notes\n"):
    """Write a file at ``ctx.fmt(rel)`` (parents made)."""

    def setup(c: Ctx) -> None:
        path = Path(c.fmt(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def mkdir(rel: str):
    return lambda c: Path(c.fmt(rel)).mkdir(parents=True)


def remove(rel: str):
    return lambda c: Path(c.fmt(rel)).unlink()


def truncate(rel: str, keep: int = 100):
    def setup(c: Ctx) -> None:
        path = Path(c.fmt(rel))
        path.write_bytes(path.read_bytes()[:keep])

    return setup


def copy_best_pt(rel: str):
    """A copy of the shared run's best.pt at ``rel``."""

    def setup(c: Ctx) -> None:
        path = Path(c.fmt(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(c.shared.run / "checkpoints" / "best.pt", path)

    return setup


def amat(split: str, edit: Optional[Callable[[bytes], bytes]]):
    """Damage (or, with ``edit=None``, delete) one split file of a private copy of the data."""

    def setup(c: Ctx) -> None:
        path = c.own_data() / f"binarized_mnist_{split}.amat"
        if edit is None:
            path.unlink()
        else:
            path.write_bytes(edit(path.read_bytes()))

    return setup


def _line_5_has_a_2(raw: bytes) -> bytes:
    lines = raw.split(b"\n")
    lines[4] = b"2" + lines[4][1:]
    return b"\n".join(lines)


def edit_json(rel: str, edit: Callable[[Any], Any]):
    def setup(c: Ctx) -> None:
        path = Path(c.fmt(rel))
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return setup


def append_metrics(text: str):
    def setup(c: Ctx) -> None:
        with open(c.run / "metrics.jsonl", "a") as f:
            f.write(text)

    return setup


def prepend_metrics(text: str):
    def setup(c: Ctx) -> None:
        path = c.run / "metrics.jsonl"
        path.write_text(text + path.read_text())

    return setup


def unreadable_config(c: Ctx) -> None:
    """The run's config.json cannot be opened for reading (as a non-root user's chmod 000:
    root, who runs CI, may read anything)."""
    denied = PermissionError(errno.EACCES, "Permission denied")
    real_open, real_read_text = os.open, Path.read_text

    def guarded_open(path, flags, *args, **kwargs):
        if str(path).endswith("config.json") and not flags & (os.O_WRONLY | os.O_RDWR):
            raise denied
        return real_open(path, flags, *args, **kwargs)

    def read_text(self, *args, **kwargs):
        if self.name == "config.json":
            raise denied
        return real_read_text(self, *args, **kwargs)

    c.monkeypatch.setattr(os, "open", guarded_open)
    c.monkeypatch.setattr(Path, "read_text", read_text)


DEEP = "[" * 100000 + "]" * 100000  # beyond Python's JSON parser's recursion


def corrupt_first_metrics_line(c: Ctx) -> None:
    path = c.run / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0][: len(lines[0]) // 2] + "\n"
    path.write_text("".join(lines))


def unreadable_amat(c: Ctx) -> None:
    real = Path.read_bytes

    def read_bytes(self):
        if self.suffix == ".amat":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    c.monkeypatch.setattr(Path, "read_bytes", read_bytes)


def disk_full(c: Ctx) -> None:
    """torch.save writes half a file, then the disk is full."""

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(b"PK\x03\x04half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    c.monkeypatch.setattr(pyrovae.training.checkpoint.torch, "save", save)


def trainer_step(effect: Callable[[], float]):
    def setup(c: Ctx) -> None:
        c.monkeypatch.setattr(Trainer, "step", lambda self, x, num_data, *args: effect())

    return setup


def _interrupt() -> float:
    raise KeyboardInterrupt


def gradient_variance_must_not_run(c: Ctx) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("gradvar computed before checking --out")

    c.monkeypatch.setattr(pyrovae.runs, "gradient_variance", fail)


def config(content: Union[str, Dict[str, Any]], tiny: bool = True):
    """Write ``{tmp}/cfg.json``: raw text, or a dict merged into a complete tiny config."""

    def setup(c: Ctx) -> None:
        if isinstance(content, str):
            text = content
        else:
            cfg: Dict[str, Any] = {}
            if tiny:
                cfg = {
                    "train": {
                        "dataset": "binarized-mnist",
                        "data_dir": str(c.data),
                        "epochs": 1,
                        "batch_size": 50,
                    },
                    "model": {"hidden": [16], "z_dim": 2},
                }
            for section, values in content.items():
                if isinstance(values, dict) and isinstance(cfg.get(section), dict):
                    cfg[section] = {**cfg[section], **values}
                else:
                    cfg[section] = values
            text = json.dumps(cfg)
        (c.tmp / "cfg.json").write_text(text)

    return setup


CFG = ("train", "--config", "{tmp}/cfg.json", "--run-dir", "{new}", "--quiet")


def metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def epoch_of(run: Path, which: str = "last") -> int:
    return load_checkpoint(run / "checkpoints" / f"{which}.pt")["epoch"]


def saved_config(run: Path) -> Dict[str, Any]:
    return json.loads((run / "config.json").read_text())


def trained(epochs: int, where: str = "new"):
    """A complete run of ``epochs`` epochs at ctx.<where>."""

    def check(c: Ctx, out: str, err: str) -> None:
        run = getattr(c, where)
        assert epoch_of(run) == epochs
        assert [m["epoch"] for m in metrics(run)] == list(range(1, epochs + 1))

    return check


def kept_epoch_2(c: Ctx, out: str, err: str) -> None:
    """After a failed epoch 3: the epoch-2 checkpoints load, no temporary file is left."""
    assert epoch_of(c.run, "last") == 2
    load_checkpoint(c.run / "checkpoints" / "best.pt")
    assert not list(c.run.rglob("*.tmp")), sorted(map(str, c.run.rglob("*.tmp")))


def metrics_repaired(c: Ctx, out: str, err: str) -> None:
    """Every line of metrics.jsonl is a record again, one per epoch."""
    records = [json.loads(line) for line in (c.run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epoch_of(c.run, "last") + 1))


def no_tmp_files(c: Ctx, out: str, err: str) -> None:
    assert not list(c.new.rglob("*.tmp")), sorted(map(str, c.new.rglob("*.tmp")))


def no_partial_download(c: Ctx, out: str, err: str) -> None:
    assert not list(c.data.glob("*.part")), sorted(map(str, c.data.glob("*.part")))


def last_epoch_by(producer: str):
    def check(c: Ctx, out: str, err: str) -> None:
        assert epoch_of(c.run) == 3
        assert metrics(c.run)[-1]["producer"] == producer, metrics(c.run)[-1]

    return check


def saved(section: str, key: str, value: Any, where: str = "new"):
    def check(c: Ctx, out: str, err: str) -> None:
        assert saved_config(getattr(c, where))[section][key] == value

    return check


def checkpoint_row(expected: str):
    """The "run / checkpoint" row of `pyrovae evaluate` names ``expected``, not the other."""

    def check(c: Ctx, out: str, err: str) -> None:
        row = next(line for line in out.splitlines() if "run / checkpoint" in line)
        label = row.replace(str(c.run), "").replace("run / checkpoint", "")
        other = {"best": "last", "last": "best"}[expected]
        assert expected in label and other not in label, row

    return check


def json_out(**expected):
    def check(c: Ctx, out: str, err: str) -> None:
        res = json.loads(out)
        for key, value in expected.items():
            assert res[key] == value, (key, res[key])
        if "log_px" in res:
            assert res["elbo"] <= res["log_px"] < 0

    return check


def pngs(*names: str, where: str = "{run}/figures"):
    def check(c: Ctx, out: str, err: str) -> None:
        for name in names:
            assert (Path(c.fmt(where)) / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    return check


def gradvar_json(c: Ctx, out: str, err: str) -> None:
    rows = json.loads(out)["estimators"]
    assert [r["estimator"] for r in rows] == ["pathwise", "iwae"]
    assert all(r["encoder_variance"] > 0 for r in rows)
    assert json.loads((c.run / "figures" / "gradvar.json").read_text())["batch_size"] == 50


def in_stdout(text: str):
    def check(c: Ctx, out: str, err: str) -> None:
        assert text in out, out

    return check


def _unstarted_run(c: Ctx, path: Path, best: bool = False) -> None:
    """A run that stopped before its first epoch was committed: its config, and (when the
    stop fell between best.pt and last.pt) a best.pt."""
    (path / "checkpoints").mkdir(parents=True)
    shutil.copyfile(c.shared.run / "config.json", path / "config.json")
    if best:
        shutil.copyfile(c.shared.run / "checkpoints" / "best.pt", path / "checkpoints" / "best.pt")


def _edit_checkpoint(path: Path, edit: Callable[[Dict[str, Any]], Any]) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _nan_weights(state: Dict[str, Any]) -> None:
    for value in state["model_state"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


# --- the command line table ---------------------------------------------------------------------

RESUME = ("--epochs", "3")

CLI_CASES = [
    # data ----------------------------------------------------------------------------------------
    Cli("data-baseline-ok", T(), 0, check=trained(1)),
    Cli("data-crlf-line-endings-ok", T(), 0, amat("train", lambda b: b.replace(b"\n", b"\r\n"))),
    Cli("data-nonexistent-data-dir", T("--data-dir", "{tmp}/nodata"), 2, "nodata"),
    Cli(
        "data-missing-file-download-disabled",
        T("--dataset-option", "download=false"),
        2,
        "binarized_mnist_test.amat",
        amat("test", None),
    ),
    Cli(
        "data-missing-file-offline",
        T(),
        2,
        "binarized_mnist_valid.amat",
        amat("valid", None),
        check=no_partial_download,
    ),
    Cli("data-truncated-last-line", T(), 2, "line 200", amat("train", lambda b: b[:-800])),
    Cli("data-non-binary-value", T(), 2, "line 5", amat("valid", _line_5_has_a_2)),
    Cli("data-empty-file", T(), 2, "binarized_mnist_test.amat", amat("test", lambda b: b"")),
    Cli(
        "data-binary-garbage",
        T(),
        2,
        "binarized_mnist_train.amat",
        amat("train", lambda b: bytes(range(256)) * 40),
    ),
    Cli("data-dir-is-a-file", T("--data-dir", "{tmp}/afile"), 2, "afile", put("{tmp}/afile")),
    Cli(
        "defect-data-unreadable-amat",
        T(),
        2,
        "binarized_mnist_train.amat",
        unreadable_amat,
    ),
    Cli("data-unknown-dataset", T("--dataset", "nope"), 2, "--dataset"),
    Cli("data-unknown-dataset-option", T("--dataset-option", "foo=1"), 2, "foo"),
    Cli("data-dataset-option-not-key-value", T("--dataset-option", "foo"), 2, "--dataset-option"),
    Cli(
        "defect-data-dataset-option-download-not-bool",
        T("--dataset-option", "download=maybe"),
        2,
        "download",
    ),
    Cli("data-binarize-on-binary-data", T("--binarize", "dynamic"), 2, "binarize"),
    Cli(
        "data-linear-gaussian-x-dim-0",
        T(*LG, "--dataset-option", "x_dim=0"),
        2,
        "x_dim",
    ),
    Cli(
        "data-linear-gaussian-x-dim-float",
        T(*LG, "--dataset-option", "x_dim=2.5"),
        2,
        "x_dim",
    ),
    Cli(
        "data-linear-gaussian-noise-std-negative",
        T(*LG, "--dataset-option", "noise_std=-1"),
        2,
        "noise_std",
    ),
    Cli(
        "data-ring-seed-negative", T("--dataset", "ring", "--dataset-option", "seed=-1"), 2, "seed"
    ),
    # flags: ranges and types ---------------------------------------------------------------------
    Cli("defect-flag-epochs-0", T("--epochs", "0"), 2, "--epochs"),
    Cli("defect-flag-epochs-negative", T("--epochs", "-1"), 2, "--epochs"),
    Cli("flag-epochs-not-a-number", T("--epochs", "ten"), 2, "--epochs"),
    Cli("defect-flag-batch-size-0", T("--batch-size", "0"), 2, "--batch-size"),
    Cli("defect-flag-batch-size-negative", T("--batch-size", "-3"), 2, "--batch-size"),
    Cli("defect-flag-lr-0", T("--lr", "0"), 2, "--lr"),
    Cli("defect-flag-lr-negative", T("--lr", "-0.001"), 2, "--lr"),
    Cli("defect-flag-lr-nan", T("--lr", "nan"), 2, "--lr"),
    Cli("defect-flag-lr-inf", T("--lr", "inf"), 2, "--lr"),
    Cli("flag-lr-not-a-number", T("--lr", "fast"), 2, "--lr"),
    Cli("defect-flag-num-particles-0", T("--num-particles", "0"), 2, "--num-particles"),
    Cli("defect-flag-z-dim-0", T("--z-dim", "0"), 2, "--z-dim"),
    Cli("defect-flag-z-dim-negative", T("--z-dim", "-2"), 2, "--z-dim"),
    Cli("defect-flag-hidden-0", T("--hidden", "16,0"), 2, "--hidden"),
    Cli("defect-flag-hidden-negative", T("--hidden", "-4"), 2, "--hidden"),
    Cli("flag-hidden-not-numbers", T("--hidden", "a,b"), 2, "--hidden"),
    Cli("defect-flag-n-train-0", T("--n-train", "0"), 2, "--n-train"),
    Cli("defect-flag-n-train-negative", T("--n-train", "-5"), 2, "--n-train"),
    Cli("defect-flag-n-train-above-data", T("--n-train", "1000"), 2, "--n-train"),
    Cli("defect-flag-n-eval-0", T("--n-eval", "0"), 2, "--n-eval"),
    Cli("defect-flag-n-eval-above-data", T("--n-eval", "1000"), 2, "--n-eval"),
    Cli("defect-flag-seed-negative", T("--seed", "-1"), 2, "--seed"),
    Cli("defect-flag-sigma-0", T("--likelihood", "gaussian", "--sigma", "0"), 2, "--sigma"),
    Cli("defect-flag-sigma-negative", T("--likelihood", "gaussian", "--sigma", "-1"), 2, "--sigma"),
    Cli("defect-flag-sigma-nan", T("--likelihood", "gaussian", "--sigma", "nan"), 2, "--sigma"),
    Cli(
        "flag-likelihood-option-unknown-key",
        T("--likelihood-option", "sigma=0.5"),  # the default Bernoulli takes no options
        2,
        "--likelihood-option",
    ),
    Cli(
        "defect-flag-likelihood-option-sigma-0",
        T("--likelihood", "gaussian", "--likelihood-option", "sigma=0"),
        2,
        "sigma",
    ),
    Cli("flag-unknown-estimator", T("--estimator", "nope"), 2, "--estimator"),
    Cli("flag-unknown-producer", T("--producer", "gpu"), 2, "--producer"),
    Cli("flag-estimator-option-unknown-key", T("--estimator-option", "foo=1"), 2, "foo"),
    Cli(
        "flag-estimator-option-wrong-type",
        T("--estimator", "score-function", "--estimator-option", "baseline_beta=fast"),
        2,
        "baseline_beta",
    ),
    Cli(
        "flag-estimator-option-not-key-value",
        T("--estimator-option", "foo"),
        2,
        "--estimator-option",
    ),
    Cli(
        "flag-num-particles-given-twice",
        T("--num-particles", "5", "--estimator", "iwae", "--estimator-option", "num_particles=3"),
        2,
        "num_particles",
    ),
    Cli("flag-baseline-for-pathwise", T("--baseline", "neural"), 2, "baseline"),
    Cli(
        "defect-flag-engine-contradicts-producer",
        T("--engine", "pyro", "--producer", "direct"),
        2,
        "--engine",
    ),
    Cli("flag-prior-bernoulli-gaussian-guide", T("--prior", "bernoulli"), 2, "guide"),
    Cli(
        "flag-bernoulli-likelihood-real-data",
        T(*LG, "--likelihood", "bernoulli"),
        2,
        "bernoulli",
    ),
    Cli(
        "flag-pathwise-on-binary-latents",
        T("--prior", "bernoulli", "--guide", "bernoulli", "--estimator", "pathwise"),
        2,
        "pathwise",
    ),
    # config files --------------------------------------------------------------------------------
    Cli("config-ok", CFG, 0, (), config({}), check=saved("model", "hidden", [16])),
    Cli(
        "config-ok-flag-overrides-file",
        CFG + ("--batch-size", "25"),
        0,
        (),
        config({}),
        check=saved("train", "batch_size", 25),
    ),
    Cli(
        "config-ok-0.1.0-engine-key",
        CFG,
        0,
        (),
        config({"train": {"engine": "fast"}}),
        check=saved("train", "producer", "direct"),
    ),
    Cli("config-missing-file", CFG, 2, "cfg.json"),
    Cli("config-is-a-directory", CFG, 2, "cfg.json", mkdir("{tmp}/cfg.json")),
    Cli("config-invalid-json", CFG, 2, "cfg.json", config('{"train": {"epochs": 1')),
    Cli(
        "defect-config-not-utf8",
        CFG,
        2,
        "cfg.json",
        put("{tmp}/cfg.json", b'\xff\xfe{"train": {}}'),
    ),
    Cli("config-top-level-list", CFG, 2, "cfg.json", config("[1, 2]")),
    Cli("defect-config-top-level-number", CFG, 2, "cfg.json", config("3")),
    Cli("defect-config-top-level-null", CFG, 2, "cfg.json", config("null")),
    Cli("defect-config-train-null", CFG, 2, ("train", "cfg.json"), config({"train": None})),
    Cli("defect-config-train-list", CFG, 2, ("train", "cfg.json"), config({"train": []})),
    Cli("defect-config-train-string", CFG, 2, ("train", "cfg.json"), config({"train": "fast"})),
    Cli("defect-config-model-null", CFG, 2, ("model", "cfg.json"), config({"model": None})),
    Cli("defect-config-model-number", CFG, 2, ("model", "cfg.json"), config({"model": 3})),
    Cli("config-unknown-section", CFG, 2, ("training", "cfg.json"), config({"training": {}})),
    Cli(
        "defect-config-unknown-train-key",
        CFG,
        2,
        ("epochz", "cfg.json"),
        config({"train": {"epochz": 3}}),
    ),
    Cli(
        "defect-config-unknown-model-key",
        CFG,
        2,
        ("zdim", "cfg.json"),
        config({"model": {"zdim": 3}}),
    ),
    *[
        Cli(
            f"defect-config-{key.replace('_', '-')}-{label}",
            CFG,
            2,
            (key, "cfg.json"),
            config({section: {key: value}}),
        )
        for section, key, value, label in [
            ("train", "epochs", "100", "string"),
            ("train", "epochs", 1.5, "float"),
            ("train", "epochs", True, "bool"),
            ("train", "epochs", 0, "zero"),
            ("train", "n_train", True, "bool"),
            ("model", "hidden", 200, "scalar"),
            ("model", "hidden", ["a"], "strings"),
            ("model", "hidden", [0], "zero"),
            ("model", "hidden", [16.5], "float"),
            ("train", "lr", "fast", "string"),
            ("train", "lr", -1, "negative"),
            ("train", "estimator", 3, "number"),
            ("model", "z_dim", "50", "string"),
            ("model", "z_dim", 0, "zero"),
            ("train", "producer", "gpu", "unknown"),
            ("train", "batch_size", "50", "string"),
            ("train", "batch_size", 0, "zero"),
            ("train", "seed", "0", "string"),
            ("train", "num_particles", 2.5, "float"),
            ("train", "dataset", 5, "number"),
            ("train", "data_dir", 5, "number"),
            ("train", "dataset_options", "x", "string"),
            ("train", "estimator_options", [1], "list"),
            ("model", "likelihood_options", 3, "number"),
            ("model", "activation", "nope", "unknown"),
            ("train", "engine", "turbo", "unknown"),
        ]
    ],
    Cli(
        "defect-config-sigma-zero",
        CFG,
        2,
        ("sigma", "cfg.json"),
        config({"model": {"likelihood": "gaussian", "likelihood_options": {"sigma": 0}}}),
    ),
    # run directories -----------------------------------------------------------------------------
    Cli("rundir-empty-existing-dir-ok", T(), 0, (), mkdir("{new}"), check=trained(1)),
    Cli(
        "defect-rundir-best-only",
        T(),
        2,
        (),
        copy_best_pt("{new}/checkpoints/best.pt"),
    ),
    Cli("defect-rundir-user-file", T(), 2, (), put("{new}/notes.txt")),
    Cli("defect-rundir-foreign-content", T(), 2, (), put("{new}/data/x.bin", b"\x00\x01")),
    Cli("rundir-holds-a-run", T(run_dir="{run}"), 2, "--resume"),
    Cli("rundir-is-a-file", T(run_dir="{tmp}/afile"), 2, "afile", put("{tmp}/afile")),
    Cli(
        "defect-rundir-unwritable",
        T(run_dir="{tmp}/afile/run"),
        2,
        "afile",
        put("{tmp}/afile"),
    ),
    # resume --------------------------------------------------------------------------------------
    Cli("resume-more-epochs-ok", R(*RESUME), 0, check=trained(3, "run")),
    Cli(
        "defect-resume-new-lr",
        R(*RESUME, "--lr", "5e-4"),
        0,
        check=saved("train", "lr", 5e-4, "run"),
    ),
    Cli(
        "resume-producer-traced-ok",
        R(*RESUME, "--producer", "traced"),
        0,
        check=last_epoch_by("traced"),
    ),
    *[
        Cli(f"defect-resume-changed-{flag[2:]}", R(*RESUME, flag, value), 2, flag)
        for flag, value in [
            ("--z-dim", "3"),
            ("--hidden", "32"),
            ("--estimator", "iwae"),
            ("--batch-size", "25"),
            ("--num-particles", "3"),
            ("--seed", "1"),
            ("--dataset", "ring"),
            ("--n-train", "100"),
        ]
    ],
    Cli(
        "defect-resume-changed-n-train-of-subset",
        R(*RESUME, "--n-train", "100", run="{subset_run}"),
        2,
        "--n-train",
    ),
    *[
        Cli(f"resume-same-{flag[2:]}-ok", R(*RESUME, flag, value), 0, check=trained(3, "run"))
        for flag, value in [
            ("--z-dim", "2"),
            ("--hidden", "16"),
            ("--estimator", "pathwise"),
            ("--batch-size", "50"),
            ("--num-particles", "1"),
            ("--seed", "0"),
            ("--dataset", "binarized-mnist"),
        ]
    ],
    Cli(
        "resume-same-n-train-ok",
        R(*RESUME, "--n-train", "150", run="{subset_run}"),
        0,
        check=trained(3, "subset_run"),
    ),
    Cli(
        "resume-all-same-ok",
        R(*RESUME, "--z-dim", "2", "--hidden", "16", "--batch-size", "50", "--seed", "0"),
        0,
        check=trained(3, "run"),
    ),
    Cli("resume-without-run-dir", ("train", "--resume", "--quiet", *RESUME), 2, "--run-dir"),
    Cli("resume-nonexistent-dir", R(*RESUME, run="{tmp}/nothere"), 2, "nothere"),
    Cli(
        "resume-no-checkpoint",
        R(*RESUME),
        2,
        "checkpoint",
        lambda c: shutil.rmtree(c.run / "checkpoints"),
    ),
    Cli("defect-resume-epochs-equal-to-done", R("--epochs", "2"), 2, "--epochs"),
    Cli("defect-resume-epochs-below-done", R("--epochs", "1"), 2, "--epochs"),
    Cli(
        "defect-resume-truncated-last-metrics-line",
        R(*RESUME),
        0,
        (),
        append_metrics('{"epoch": 3, "step": 12, "train_el'),
        check=trained(3, "run"),
    ),
    Cli(
        # last.pt holds every epoch's record: resume rewrites the damaged file from it.
        "defect-resume-corrupt-metrics-line",
        R(*RESUME),
        0,
        (),
        corrupt_first_metrics_line,
        check=metrics_repaired,
    ),
    Cli("resume-corrupt-last-pt", R(*RESUME), 2, "last.pt", truncate("{run}/checkpoints/last.pt")),
    Cli(
        "resume-corrupt-config-json",
        R(*RESUME),
        2,
        "config.json",
        truncate("{run}/config.json", 20),
    ),
    # evaluate ------------------------------------------------------------------------------------
    Cli("eval-json-ok", E("--json"), 0, check=json_out(k=5, n=60)),
    Cli("eval-subset-ok", E("--json", "--n", "10", "--split", "valid"), 0, check=json_out(n=10)),
    Cli(
        "eval-traced-ok", E("--json", "--producer", "traced"), 0, check=json_out(producer="traced")
    ),
    Cli("eval-checkpoint-last-ok", E("--checkpoint", "last"), 0, check=checkpoint_row("last")),
    Cli(
        "defect-eval-fallback-to-last-says-last",
        E(),
        0,
        (),
        remove("{run}/checkpoints/best.pt"),
        check=checkpoint_row("last"),
    ),
    Cli(
        "defect-eval-test-split-with-corrupt-train-file",
        E("--split", "test", "--data-dir", "{data}"),
        0,
        (),
        amat("train", lambda b: b[:-800]),
    ),
    Cli(
        "defect-eval-test-split-with-missing-train-file",
        E("--split", "test", "--data-dir", "{data}"),
        0,
        (),
        amat("train", None),
    ),
    Cli(
        "defect-eval-nonexistent-data-dir",
        E("--data-dir", "{tmp}/nodata"),
        2,
        "nodata",
        absent=("{tmp}/nodata",),
    ),
    Cli("defect-eval-unreadable-data", E("--data-dir", "{data}"), 2, ".amat", unreadable_amat),
    Cli("defect-eval-k-0", E("--k", "0"), 2, "--k"),
    Cli("defect-eval-k-negative", E("--k", "-5"), 2, "--k"),
    Cli("defect-eval-n-0", E("--n", "0"), 2, "--n"),
    Cli("defect-eval-n-negative", E("--n", "-3"), 2, "--n"),
    Cli("defect-eval-seed-negative", E("--seed", "-1"), 2, "--seed"),
    Cli("eval-unknown-split", E("--split", "bogus"), 2, "--split"),
    Cli("eval-unknown-checkpoint", E("--checkpoint", "bogus"), 2, "--checkpoint"),
    Cli("eval-not-a-run", E(run="{tmp}/notarun"), 2, "notarun", mkdir("{tmp}/notarun")),
    Cli("eval-run-is-a-file", E(run="{tmp}/afile"), 2, "afile", put("{tmp}/afile")),
    Cli("eval-nonexistent-run", E(run="{tmp}/nothere"), 2, "nothere"),
    Cli(
        "eval-no-checkpoints",
        E(),
        2,
        "checkpoint",
        lambda c: shutil.rmtree(c.run / "checkpoints"),
    ),
    Cli("eval-corrupt-checkpoint", E(), 2, "best.pt", truncate("{run}/checkpoints/best.pt")),
    Cli(
        "eval-foreign-checkpoint",
        E(),
        2,
        "best.pt",
        lambda c: torch.save({"weights": torch.zeros(3)}, c.run / "checkpoints" / "best.pt"),
    ),
    Cli("eval-corrupt-config-json", E(), 2, "config.json", truncate("{run}/config.json", 20)),
    Cli(
        "eval-config-json-without-model",
        E(),
        2,
        "config.json",
        edit_json("{run}/config.json", lambda d: {"train": d["train"]}),
    ),
    Cli(
        "defect-eval-config-json-unknown-key",
        E(),
        2,
        "config.json",
        edit_json("{run}/config.json", lambda d: {**d, "train": {**d["train"], "epochz": 1}}),
    ),
    # sample --------------------------------------------------------------------------------------
    Cli(
        "sample-ok", S(), 0, check=pngs("samples.png", "reconstructions.png", "training_curves.png")
    ),
    Cli(
        "sample-n-1-ok",
        S("--n", "1", "--out", "{tmp}/figs"),
        0,
        check=pngs("samples.png", where="{tmp}/figs"),
    ),
    Cli("sample-n-1000-ok", S("--n", "1000"), 0, check=pngs("samples.png")),
    Cli("defect-sample-n-0", S("--n", "0"), 2, "--n"),
    Cli("defect-sample-n-negative", S("--n", "-1"), 2, "--n"),
    Cli("defect-sample-n-1001", S("--n", "1001"), 2, "--n"),
    Cli("defect-sample-seed-negative", S("--seed", "-1"), 2, "--seed"),
    Cli(
        "defect-sample-out-under-a-file",
        S("--out", "{tmp}/afile/figs"),
        2,
        "afile",
        put("{tmp}/afile"),
    ),
    Cli(
        "defect-sample-truncated-last-metrics-line",
        S(),
        0,
        (),
        append_metrics('{"epoch": 3, "st'),
        check=pngs("training_curves.png"),
    ),
    Cli(
        "defect-sample-corrupt-metrics-line",
        S(),
        2,
        "metrics.jsonl",
        corrupt_first_metrics_line,
    ),
    Cli("sample-corrupt-checkpoint", S(), 2, "best.pt", truncate("{run}/checkpoints/best.pt")),
    Cli("sample-not-a-run", S(run="{tmp}/notarun"), 2, "notarun", mkdir("{tmp}/notarun")),
    Cli(
        "defect-sample-nonexistent-data-dir",
        S("--data-dir", "{tmp}/nodata"),
        2,
        "nodata",
        absent=("{tmp}/nodata",),
    ),
    # gradvar -------------------------------------------------------------------------------------
    Cli(
        "gradvar-json-ok",
        G("--estimators", "pathwise,iwae", "--batch-size", "50", "--json"),
        0,
        check=gradvar_json,
    ),
    Cli("gradvar-warmup-0-ok", G("--warmup", "0"), 0),
    Cli("gradvar-traced-ok", G("--producer", "traced", "--json"), 0),
    Cli(
        "defect-gradvar-header-says-batch-used",
        G("--batch-size", "5000"),
        0,
        check=in_stdout("minibatch of 200"),
    ),
    Cli(
        "defect-gradvar-out-under-a-file-fails-first",
        G("--out", "{tmp}/afile/figs"),
        2,
        "afile",
        chain(put("{tmp}/afile"), gradient_variance_must_not_run),
    ),
    Cli("defect-gradvar-draws-1", G("--draws", "1"), 2, "--draws"),
    Cli("defect-gradvar-draws-0", G("--draws", "0"), 2, "--draws"),
    Cli("defect-gradvar-batch-size-0", G("--batch-size", "0"), 2, "--batch-size"),
    Cli("defect-gradvar-batch-size-negative", G("--batch-size", "-5"), 2, "--batch-size"),
    Cli("defect-gradvar-warmup-negative", G("--warmup", "-1"), 2, "--warmup"),
    Cli("gradvar-unknown-estimator", G("--estimators", "nope"), 2, "nope"),
    Cli("gradvar-unknown-estimator-option", G("--estimators", "iwae:foo=1"), 2, "foo"),
    Cli(
        "gradvar-bad-estimator-option-value",
        G("--estimators", "iwae:num_particles=0"),
        2,
        "num_particles",
    ),
    Cli("defect-gradvar-seed-negative", G("--seed", "-1"), 2, "--seed"),
    Cli(
        "gradvar-missing-last-checkpoint",
        G("--checkpoint", "last"),
        2,
        "last.pt",
        remove("{run}/checkpoints/last.pt"),
    ),
    Cli("gradvar-corrupt-config-json", G(), 2, "config.json", truncate("{run}/config.json", 20)),
    Cli("gradvar-not-a-run", G(run="{tmp}/notarun"), 2, "notarun", mkdir("{tmp}/notarun")),
    # gap -----------------------------------------------------------------------------------------
    Cli("gap-json-ok", P("--json"), 0, check=in_stdout('"amortization_gap"')),
    Cli("gap-k-0", P("--k", "0"), 2, "--k"),
    Cli("gap-n-0", P("--n", "0"), 2, "--n"),
    Cli("gap-steps-negative", P("--steps", "-1"), 2, "--steps"),
    Cli("gap-lr-0", P("--lr", "0"), 2, "--lr"),
    Cli("gap-lr-nan", P("--lr", "nan"), 2, "--lr"),
    Cli("gap-samples-0", P("--samples", "0"), 2, "--samples"),
    Cli("gap-seed-negative", P("--seed", "-1"), 2, "--seed"),
    Cli("gap-out-under-a-file", P("--out", "{tmp}/afile/figs"), 2, "afile", put("{tmp}/afile")),
    Cli(
        "gap-missing-last-checkpoint",
        P("--checkpoint", "last"),
        2,
        "last.pt",
        remove("{run}/checkpoints/last.pt"),
    ),
    Cli("gap-corrupt-config-json", P(), 2, "config.json", truncate("{run}/config.json", 20)),
    Cli("gap-not-a-run", P(run="{tmp}/notarun"), 2, "notarun", mkdir("{tmp}/notarun")),
    Cli("eval-refine-negative", E("--refine", "-1"), 2, "--refine"),
    Cli(
        "eval-refine-ok",
        E("--refine", "2", "--n", "4", "--json"),
        0,
        check=in_stdout('"refine_steps": 2'),
    ),
    # faults --------------------------------------------------------------------------------------
    Cli(
        "defect-fault-disk-full-on-resume",
        R(*RESUME),
        2,
        "space",
        disk_full,
        check=kept_epoch_2,
        faulty=True,
    ),
    Cli(
        "defect-fault-disk-full-on-new-run",
        T(),
        2,
        "space",
        disk_full,
        check=no_tmp_files,
        faulty=True,
    ),
    Cli(
        "fault-diverged-on-resume",
        R(*RESUME),
        3,
        "nan",
        trainer_step(lambda: float("nan")),
        check=kept_epoch_2,
    ),
    Cli(
        "fault-interrupted-on-resume",
        R(*RESUME),
        130,
        "interrupted",
        trainer_step(_interrupt),
        check=kept_epoch_2,
    ),
    # found by a hostile-user probe after the first fixes ---------------------------------------
    Cli("hostile-flag-z-dim-beyond-int64", T("--z-dim", "99999999999999999999"), 2, "--z-dim"),
    Cli("hostile-flag-hidden-too-big-for-memory", T("--hidden", "100000000"), 2, "--hidden"),
    Cli("hostile-flag-seed-beyond-int64", T("--seed", "99999999999999999999"), 2, "--seed"),
    Cli("hostile-eval-seed-beyond-numpy", E("--seed", "4294967296"), 2, "--seed"),
    Cli("hostile-gradvar-draws-beyond-int64", G("--draws", "9223372036854775808"), 2, "--draws"),
    Cli("hostile-eval-k-beyond-int64", E("--k", "99999999999999999999"), 2, "--k"),
    Cli(
        "hostile-flag-sigma-beyond-float32",
        T("--likelihood", "gaussian", "--sigma", "1e300"),
        2,
        "--sigma",
    ),  # fmt: skip
    Cli(
        "hostile-flag-sigma-below-float32",
        T("--likelihood", "gaussian", "--sigma", "1e-50"),
        2,
        "--sigma",
    ),  # fmt: skip
    Cli("hostile-config-dev-zero", ("train", "--config", "/dev/zero", "--quiet"), 2, "/dev/zero"),
    Cli(
        "defect-run-config-nested-too-deeply",
        E(),
        2,
        "config.json",
        put("{run}/config.json", '{"train": ' + DEEP + "}"),
    ),
    Cli(
        "defect-run-metrics-line-nested-too-deeply",
        S(),
        2,
        ("metrics.jsonl", "line 1"),
        prepend_metrics(DEEP + "\n"),
    ),
    Cli(
        "defect-run-config-unreadable-on-resume",
        R(*RESUME),
        2,
        ("config.json", "Permission denied"),
        unreadable_config,
    ),
    Cli(
        "hostile-config-nested-too-deeply",
        CFG,
        2,
        "cfg.json",
        config('{"train": {"estimator_options": ' + "[" * 100000 + "]" * 100000 + "}}"),
    ),
    Cli(
        "hostile-baseline-contradicts-estimator-option",
        T(
            "--estimator",
            "score-function",
            "--baseline",
            "neural",
            "--estimator-option",
            "baseline=none",
        ),
        2,
        "--baseline",
    ),  # fmt: skip
    Cli(
        "hostile-estimator-option-python-spelling",
        T("--estimator", "score-function", "--estimator-option", "baseline_beta=.5"),
        0,
        check=saved("train", "estimator_options", {"baseline_beta": 0.5}),
    ),
    Cli(
        "hostile-rundir-user-tmp-file-kept",
        T(run_dir="{tmp}/ud"),
        2,
        "draft.tmp",
        put("{tmp}/ud/draft.tmp", "my important draft\n"),
    ),
    Cli(
        "hostile-rundir-user-config-json-kept",
        T(run_dir="{tmp}/ud"),
        2,
        "not a pyrovae run",
        put("{tmp}/ud/config.json", '{"database": "prod"}\n'),
    ),
    Cli(
        "hostile-resume-user-tmp-file-kept",
        R(*RESUME),
        0,
        (),
        put("{run}/notes.tmp", "notes\n"),
        check=lambda c, out, err: (c.run / "notes.tmp").read_text() == "notes\n" or pytest.fail(),
    ),
    Cli(
        "hostile-resume-metrics-is-a-directory",
        R(*RESUME),
        2,
        "metrics.jsonl",
        chain(remove("{run}/metrics.jsonl"), mkdir("{run}/metrics.jsonl")),
    ),
    Cli(
        "hostile-rundir-dangling-symlink",
        T(run_dir="{tmp}/link"),
        2,
        "does not exist",
        lambda c: os.symlink(c.tmp / "nowhere" / "dir", c.tmp / "link"),
    ),  # fmt: skip
    Cli(
        "hostile-eval-checkpoint-of-another-run",
        E(),
        2,
        "does not belong",
        lambda c: shutil.copyfile(
            c.shared.subset_run / "checkpoints" / "best.pt", c.run / "checkpoints" / "best.pt"
        ),
    ),
    Cli(
        "hostile-resume-checkpoint-of-another-estimator",
        R(*RESUME),
        2,
        "does not belong",
        edit_json(
            "{run}/config.json", lambda d: {**d, "train": {**d["train"], "estimator": "stl"}}
        ),
    ),
    Cli(
        "hostile-resume-checkpoint-missing-trainer-state",
        R(*RESUME),
        2,
        "trainer_state",
        lambda c: _edit_checkpoint(
            c.run / "checkpoints" / "last.pt", lambda s: s.pop("trainer_state")
        ),
    ),
    Cli(
        "hostile-resume-checkpoint-epoch-a-string",
        R(*RESUME),
        2,
        "epoch",
        lambda c: _edit_checkpoint(
            c.run / "checkpoints" / "last.pt", lambda s: s.__setitem__("epoch", "2")
        ),
    ),
    Cli(
        "hostile-sample-checkpoint-with-nan-weights",
        S(),
        2,
        "non-finite",
        lambda c: _edit_checkpoint(c.run / "checkpoints" / "best.pt", _nan_weights),
    ),
    Cli(
        "hostile-gradvar-checkpoint-with-nan-weights",
        G(),
        2,
        "non-finite",
        lambda c: _edit_checkpoint(c.run / "checkpoints" / "best.pt", _nan_weights),
    ),
    Cli(
        "hostile-sample-metrics-record-without-elbo",
        S(),
        2,
        "metrics.jsonl",
        put("{run}/metrics.jsonl", '{"epoch": 1}\n{"epoch": 2}\n'),
    ),
    Cli(
        "hostile-eval-json-one-point-is-valid-json",
        E("--n", "1", "--json"),
        0,
        check=lambda c, out, err: json.loads(out, parse_constant=_refuse_constant),
    ),
    # found by a second hostile-user probe ---------------------------------------------------
    Cli(
        "hostile2-eval-last-when-only-best",
        E("--checkpoint", "last"),
        2,
        "--checkpoint best",
        remove("{run}/checkpoints/last.pt"),
    ),  # fmt: skip
    Cli(
        "hostile2-eval-run-stopped-before-first-epoch",
        E(run="{tmp}/early"),
        2,
        "stopped before its first epoch",
        lambda c: _unstarted_run(c, c.tmp / "early"),
    ),  # fmt: skip
    Cli(
        "hostile2-train-again-after-a-first-commit-cut-short",
        T(run_dir="{tmp}/cut"),
        0,
        (),
        lambda c: _unstarted_run(c, c.tmp / "cut", best=True),
    ),  # fmt: skip
    Cli(
        "hostile2-resume-after-a-first-commit-cut-short",
        R(run="{tmp}/cut"),
        2,
        "start it again",
        lambda c: _unstarted_run(c, c.tmp / "cut", best=True),
    ),  # fmt: skip
    Cli("hostile2-flag-empty-config", ("train", "--config", "", "--quiet"), 2, "--config"),
    Cli("hostile2-flag-empty-data-dir", T("--data-dir", ""), 2, "--data-dir"),
    Cli("hostile2-flag-blank-hidden", T("--hidden", " "), 2, "--hidden"),
    Cli(
        "defect-likelihood-option-given-twice",
        T(
            "--likelihood",
            "gaussian",
            "--likelihood-option",
            "sigma=0.5",
            "--likelihood-option",
            "sigma=2",
        ),
        2,
        ("--likelihood-option sigma is given twice", "give it once"),
    ),  # fmt: skip
    Cli(
        "hostile2-estimator-option-given-twice",
        T(
            "--estimator",
            "score-function",
            "--estimator-option",
            "baseline=none",
            "--estimator-option",
            "baseline=neural",
        ),
        2,
        "--estimator-option",
    ),  # fmt: skip
    Cli(
        "hostile2-num-particles-given-twice",
        T("--num-particles", "3", "--estimator-option", "num_particles=4"),
        2,
        ("--num-particles", "--estimator-option"),
    ),  # fmt: skip
    Cli(
        "hostile2-default-runs-is-a-file",
        T(run_dir=""),
        2,
        "exists and is not a directory",
        lambda c: (c.monkeypatch.chdir(c.tmp), (c.tmp / "runs").write_text("x")),
    ),  # fmt: skip
    Cli(
        "hostile2-sample-out-is-a-file",
        S("--out", "{run}/checkpoints/best.pt"),
        2,
        "exists and is not a directory",
    ),  # fmt: skip
    Cli(
        "hostile2-sample-out-not-made-when-refused",
        S("--out", "{tmp}/pf", run="{tmp}/no"),
        2,
        "no",
        mkdir("{tmp}/no"),
        absent=("{tmp}/pf",),
    ),  # fmt: skip
    Cli(
        "hostile2-resume-on-other-data-of-the-same-shape",
        R(*RESUME, "--data-dir", "{data}"),
        2,
        "not the data",
        amat("valid", lambda b: b.replace(b"0", b"2").replace(b"1", b"0").replace(b"2", b"1")),
    ),
]

# --- the Python API table -----------------------------------------------------------------------


def _small_vae():
    torch.manual_seed(0)
    return build_vae(VAEConfig(x_dim=6, z_dim=2, hidden=(4,)))


def _binary_batch() -> torch.Tensor:
    return (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def _with_nan(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[1, 2] = float("nan")
    return x


def _no_plate_pair():
    """A Normal latent and a Normal observation per data point, written without pyro.plate."""
    weight = torch.ones(2, 3)

    def model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ weight, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    return model, guide


def _log_px(function: str, vae, x) -> float:
    pyro.set_rng_seed(0)
    if function == "evaluate_vae":
        return evaluate_vae(vae, x, k=4, progress=False).log_px
    return estimate_log_likelihood(vae.model, vae.guide, x, k=4, progress=False).log_px


CONVERSIONS = {
    "uint8": lambda x: x.to(torch.uint8),
    "bool": lambda x: x.bool(),
    "float64": lambda x: x.double(),
    "numpy": lambda x: x.numpy(),
}


def same_log_px(function: str, conversion: str):
    def call(c: Ctx) -> None:
        vae, x = _small_vae(), _binary_batch()
        expected = _log_px(function, vae, x)
        got = _log_px(function, vae, CONVERSIONS[conversion](x))
        assert math.isfinite(expected)
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-6)

    return call


def two_runs_in_one_second(c: Ctx) -> None:
    """run_dir=None twice in the same second: two run directories, the first untouched."""
    c.monkeypatch.setattr(time, "strftime", lambda fmt, t=None: "20260101-120000")
    cfg, model = tiny_train_config(c), TINY_MODEL
    first = train(cfg, model, progress=False)
    before = snapshot(Path(first.run_dir))
    second = train(cfg, model, progress=False)
    assert Path(first.run_dir).resolve() != Path(second.run_dir).resolve()
    assert snapshot(Path(first.run_dir)) == before
    assert epoch_of(Path(second.run_dir)) == 1


def tiny_train_config(c: Ctx, **changes) -> TrainConfig:
    """The tiny settings on the test data, with ``changes``."""
    fields = dict(dataset="binarized-mnist", data_dir=str(c.data), epochs=1, batch_size=50)
    return TrainConfig(**{**fields, **changes})


TINY_MODEL = VAEConfig(z_dim=2, hidden=(16,))


def train_with_dict_configs(c: Ctx) -> None:
    """Configs as dicts are read as the dataclasses, checked the same way."""
    fields = dict(dataset="binarized-mnist", data_dir=str(c.data), epochs=1, batch_size=50)
    result = train(fields, {"z_dim": 2, "hidden": [16]}, run_dir=str(c.new), progress=False)
    assert result.vae.z_dim == 2
    with pytest.raises(ValueError, match=r"model\['z_dim'\] must be an integer >= 1"):
        train(fields, {"z_dim": 0}, run_dir=str(c.tmp / "other"), progress=False)


def evaluate_a_run_trained_on_given_data(c: Ctx) -> None:
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) * 5 + 3
    mine = Dataset("mine", x[:200], x[200:250], x[250:], binary=False)
    cfg = TrainConfig(dataset="linear-gaussian", epochs=1, batch_size=50)
    model = VAEConfig(likelihood="gaussian-learned", z_dim=2, hidden=(4,))
    train(cfg, model, run_dir=str(c.new), data=mine, progress=False)
    with pytest.raises(ValueError, match="trained on a Dataset passed in Python"):
        evaluate_run(str(c.new), k=5)
    with pytest.raises(ValueError, match="pass it again"):
        train(TrainConfig(epochs=2), run_dir=str(c.new), resume=True, progress=False)


def relative_data_dir_saved_absolute(c: Ctx) -> None:
    c.monkeypatch.chdir(c.data.parent)
    cfg = tiny_train_config(c, data_dir=c.data.name)
    train(cfg, TINY_MODEL, run_dir=str(c.new), progress=False)
    saved_dir = json.loads((c.new / "config.json").read_text())["train"]["data_dir"]
    assert saved_dir == str(c.data.resolve())


def train_a_subsampling_pair(c: Ctx) -> None:
    loc = torch.nn.Parameter(torch.zeros(6))

    def model(x):
        pyro.param("loc", loc)
        with pyro.plate("data", 1000, subsample_size=x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + loc, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 1000, subsample_size=x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    x = torch.randn(300, 6)
    data = Dataset("pair", x[:200], x[200:250], x[250:], binary=False)
    train(TrainConfig(dataset="pair", epochs=1, batch_size=50), data=data, model=(model, guide),
          run_dir=str(c.new), progress=False)  # fmt: skip


def train_without_validation_data(c: Ctx) -> None:
    x = torch.randn(100, 6)
    data = Dataset("m", x, torch.zeros(0, 6), torch.zeros(0, 6), binary=False)
    model = VAEConfig(likelihood="gaussian-learned", z_dim=2, hidden=(4,))
    train(TrainConfig(dataset="m", epochs=1, batch_size=50), model, data=data,
          run_dir=str(c.new), progress=False)  # fmt: skip


API_CASES = [
    Api(
        "defect-api-trainconfig-batch-size-0",
        lambda c: TrainConfig(batch_size=0),
        ValueError,
        "batch_size",
    ),
    Api("defect-api-trainconfig-lr-negative", lambda c: TrainConfig(lr=-1.0), ValueError, "lr"),
    Api("defect-api-trainconfig-lr-nan", lambda c: TrainConfig(lr=float("nan")), ValueError, "lr"),
    Api(
        "defect-api-trainconfig-epochs-string",
        lambda c: TrainConfig(epochs="3"),
        ValueError,
        "epochs",
    ),
    Api("defect-api-trainconfig-epochs-0", lambda c: TrainConfig(epochs=0), ValueError, "epochs"),
    Api(
        "defect-api-trainconfig-epochs-float",
        lambda c: TrainConfig(epochs=1.5),
        ValueError,
        "epochs",
    ),
    Api(
        "defect-api-trainconfig-num-particles-0",
        lambda c: TrainConfig(num_particles=0),
        ValueError,
        "num_particles",
    ),
    Api("defect-api-trainconfig-seed-negative", lambda c: TrainConfig(seed=-1), ValueError, "seed"),
    Api(
        "defect-api-trainconfig-n-train-bool",
        lambda c: TrainConfig(n_train=True),
        ValueError,
        "n_train",
    ),
    Api("defect-api-trainconfig-n-eval-0", lambda c: TrainConfig(n_eval=0), ValueError, "n_eval"),
    Api("defect-api-vaeconfig-z-dim-0", lambda c: VAEConfig(z_dim=0), ValueError, "z_dim"),
    Api("defect-api-vaeconfig-z-dim-string", lambda c: VAEConfig(z_dim="50"), ValueError, "z_dim"),
    Api("defect-api-vaeconfig-x-dim-0", lambda c: VAEConfig(x_dim=0), ValueError, "x_dim"),
    Api("defect-api-vaeconfig-hidden-0", lambda c: VAEConfig(hidden=(0,)), ValueError, "hidden"),
    Api(
        "defect-api-vaeconfig-hidden-negative",
        lambda c: VAEConfig(hidden=(16, -1)),
        ValueError,
        "hidden",
    ),
    Api(
        "defect-api-vaeconfig-hidden-scalar", lambda c: VAEConfig(hidden=200), ValueError, "hidden"
    ),
    Api(
        "api-trainconfig-from-dict-unknown-key",
        lambda c: TrainConfig.from_dict({"epochz": 1}),
        ValueError,
        "epochz",
    ),
    Api(
        "api-build-vae-bernoulli-prior-gaussian-guide",
        lambda c: build_vae(VAEConfig(prior="bernoulli")),
        ValueError,
        "guide",
    ),
    Api(
        "api-evaluate-vae-k-0",
        lambda c: evaluate_vae(_small_vae(), _binary_batch(), k=0, progress=False),
        ValueError,
        "k",
    ),
    Api(
        "api-estimate-log-likelihood-k-0",
        lambda c: estimate_log_likelihood(*_no_plate_pair(), torch.zeros(4, 3), k=0),
        ValueError,
        "k",
    ),
    Api(
        "api-evaluate-vae-wrong-width",
        lambda c: evaluate_vae(_small_vae(), torch.zeros(5, 5), k=3, progress=False),
        ValueError,
        "shape",
    ),
    Api(
        "api-evaluate-vae-one-dimensional",
        lambda c: evaluate_vae(_small_vae(), torch.zeros(6), k=3, progress=False),
        ValueError,
        "shape",
    ),
    Api(
        "defect-api-estimate-log-likelihood-without-plate",
        lambda c: estimate_log_likelihood(
            *_no_plate_pair(), torch.randn(7, 3), k=4, progress=False
        ),
        ValueError,
        "plate",
    ),
    Api(
        "api-evaluate-vae-nan",
        lambda c: evaluate_vae(_small_vae(), _with_nan(_binary_batch()), k=3, progress=False),
        ValueError,
        "nan",
    ),
    Api(
        "defect-api-estimate-log-likelihood-nan",
        lambda c: estimate_log_likelihood(
            (v := _small_vae()).model, v.guide, _with_nan(_binary_batch()), k=3, progress=False
        ),
        ValueError,
        "nan",
    ),
    Api(
        "api-make-estimator-num-particles-0",
        lambda c: make_estimator("pathwise", num_particles=0),
        ValueError,
        "num_particles",
    ),
    Api(
        "api-make-estimator-unknown-option",
        lambda c: make_estimator("iwae", foo=1),
        ValueError,
        "foo",
    ),
    Api(
        "api-load-dataset-n-train-0",
        lambda c: load_dataset("ring", n_train=0),
        ValueError,
        "n_train",
    ),
    Api(
        "api-load-dataset-missing-files",
        lambda c: load_dataset("binarized-mnist", data_dir=str(c.tmp), download=False),
        ValueError,
        "binarized_mnist_train.amat",
    ),
    Api(
        "defect-api-train-epochs-0",
        lambda c: train(
            tiny_train_config(c, epochs=0),
            TINY_MODEL,
            run_dir=str(c.new),
            progress=False,
        ),
        ValueError,
        "epochs",
    ),
    Api(
        "defect-api-train-resume-without-run-dir",
        lambda c: train(tiny_train_config(c), resume=True, progress=False),
        ValueError,
        "run_dir",
    ),
    Api("defect-api-train-two-default-run-dirs-in-one-second", two_runs_in_one_second, None),
    *[
        Api(
            f"defect-api-{function.replace('_', '-')}-{conversion}-input",
            same_log_px(function, conversion),
            None,
        )
        for function in ("evaluate_vae", "estimate_log_likelihood")
        for conversion in CONVERSIONS
    ],
    # found by a hostile-user probe after the first fixes
    Api(
        "hostile-api-build-vae-from-a-dict",
        lambda c: build_vae({"z_dim": 4}),
        ValueError,
        "VAEConfig",
    ),  # fmt: skip
    Api(
        "hostile-api-chunk-pairs-0",
        lambda c: evaluate_vae(_small_vae(), _binary_batch(), k=5, chunk_pairs=0, progress=False),
        ValueError,
        "chunk_pairs",
    ),
    Api(
        "hostile-api-sigma-a-string",
        lambda c: build_vae(VAEConfig(likelihood="gaussian", likelihood_options={"sigma": "x"})),
        ValueError,
        "sigma",
    ),
    Api(
        "hostile-api-load-vae-typo",
        lambda c: load_vae(str(c.tmp / "r1x")),
        ValueError,
        "does not exist",
    ),  # fmt: skip
    Api("hostile-api-train-model-config-a-dict", train_with_dict_configs, None),
    # found by a second hostile-user probe
    Api("hostile2-api-run-trained-on-given-data", evaluate_a_run_trained_on_given_data, None),
    Api("hostile2-api-relative-data-dir-saved-absolute", relative_data_dir_saved_absolute, None),
    Api(
        "hostile2-api-pair-that-subsamples-its-plate",
        train_a_subsampling_pair,
        ValueError,
        "subsamples",
    ),  # fmt: skip
    Api(
        "hostile2-api-changes-not-a-dict",
        lambda c: train(run_dir=str(c.run), resume=[("epochs", 3)], progress=False),
        ValueError,
        "changes",
    ),
    Api(
        "hostile2-api-changes-unknown-key",
        lambda c: train(run_dir=str(c.run), resume={"bogus": 1}, progress=False),
        ValueError,
        "unknown option",
    ),
    Api(
        "hostile2-api-num-particles-beyond-int32",
        lambda c: make_estimator("pathwise", num_particles=2**40),
        ValueError,
        "num_particles",
    ),  # fmt: skip
    Api(
        "hostile2-api-num-data-nan",
        lambda c: _small_vae().model(_binary_batch(), float("nan")),
        ValueError,
        "num_data",
    ),  # fmt: skip
    Api(
        "hostile2-api-run-dir-not-a-path",
        lambda c: train(tiny_train_config(c), TINY_MODEL, run_dir=5, progress=False),
        ValueError,
        "run_dir",
    ),  # fmt: skip
    Api("hostile2-api-evaluate-run-none", lambda c: evaluate_run(None), ValueError, "run_dir"),
    Api(
        "hostile2-api-data-not-a-dataset",
        lambda c: train(
            tiny_train_config(c),
            TINY_MODEL,
            data=torch.zeros(10, 3),
            run_dir=str(c.new),
            progress=False,
        ),
        ValueError,
        "Dataset",
    ),  # fmt: skip
    Api(
        "hostile2-api-empty-validation-split",
        train_without_validation_data,
        ValueError,
        "validation split",
    ),  # fmt: skip
]


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli(case: Cli, ctx: Ctx, capsys) -> None:
    if case.setup is not None:
        case.setup(ctx)
    argv = [ctx.fmt(a) for a in case.argv]
    run_dir = _option(argv, "--run-dir")
    before = snapshot(Path(run_dir)) if run_dir else None

    code, out, err = run_cli(argv, capsys)

    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err[-2000:]}"
    assert "Traceback" not in err, err
    if case.code != 0:
        lines = message_lines(err)
        assert len(lines) == 1, f"expected one message line on stderr, got {lines}"
        line = lines[0]
        assert line.startswith(f"pyrovae {argv[0]}: "), line
        if case.code == 2:
            assert "error" in line.lower(), line
        for fragment in _fragments(case.fragment):
            assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    if case.code == 2 and run_dir and not case.faulty:
        after = snapshot(Path(run_dir))
        if before is None:
            assert after is None, f"{run_dir} was created: {sorted(after)}"
        else:
            assert after is not None and set(after) == set(before), (
                f"files in {run_dir} changed: {sorted(before)} -> {sorted(after or {})}"
            )
            changed = sorted(name for name in before if before[name] != after[name])
            assert not changed, f"files in {run_dir} were rewritten: {changed}"
    for path in case.absent:
        assert not Path(ctx.fmt(path)).exists(), f"{ctx.fmt(path)} was created"
    if case.check is not None:
        case.check(ctx, out, err)


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api(case: Api, ctx: Ctx) -> None:
    if case.raises is None:
        case.call(ctx)
        return
    try:
        result = case.call(ctx)
    except case.raises as e:
        message = str(e).lower()
        for fragment in _fragments(case.fragment):
            assert fragment.lower() in message, f"{fragment!r} not in {str(e)!r}"
    except Exception as e:  # noqa: BLE001 - the wrong type is the finding
        pytest.fail(f"raised {e!r}, expected {case.raises.__name__}", pytrace=False)
    else:
        pytest.fail(f"returned {result!r}, expected {case.raises.__name__}", pytrace=False)


def test_the_table_is_large_and_its_ids_unique() -> None:
    ids = [c.id for c in CLI_CASES] + [c.id for c in API_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 95
