"""Files pyrovae writes never follow a symbolic link; files it reads are refused in one line
when they are a FIFO, a device or absurdly large (``pyrovae.files``, issue 24).

The files are not listed by hand: each command is run once on a copy of a small run, and what
it wrote (new or changed files) is what the tests then plant links at, at the final path and
at the temporary path (``NAME.tmp``) of pyrovae's atomic writes.
"""

import errno
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import pyrovae.training.checkpoint
from pyrovae.cli import main

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")

TRAIN = ["--dataset", "linear-gaussian", "--likelihood", "gaussian-learned", "--hidden", "8"]
TRAIN += ["--dataset-option", "n_train=100", "--dataset-option", "n_valid=40"]
TRAIN += ["--dataset-option", "n_test=40", "--batch-size", "50", "--quiet"]
# The commands that write into a run, on the run directory ``{run}``.
COMMANDS = {
    "resume": ["train", "--run-dir", "{run}", "--resume", "--epochs", "2", "--quiet"],
    "sample": ["sample", "{run}", "--n", "4"],
    "gap": ["gap", "{run}", "--n", "4", "--steps", "2", "--k", "4", "--quiet"],
    "gradvar": ["gradvar", "{run}", "--draws", "3", "--batch-size", "4", "--quiet"],
    "evaluate": ["evaluate", "{run}", "--k", "2", "--n", "4", "--quiet"],
    "diagnose": ["diagnose", "{run}", "--n", "4", "--k", "4", "--samples", "1", "--quiet"],
    "report": ["report", "{run}", "--n", "4", "--k", "4", "--samples", "1", "--quiet"],
}
PRECIOUS = b"someone else's file\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", *TRAIN, "--epochs", "1", "--run-dir", str(run)]) == 0
    return run


def _argv(command: str, run: Path) -> List[str]:
    return [a.replace("{run}", str(run)) for a in COMMANDS[command]]


def _files(path: Path) -> Dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def _stamps(path: Path) -> Dict[str, tuple]:
    """{name: (bytes, mtime)}: a file rewritten with the same bytes (the lock's process id, in
    this same process) counts as written."""
    return {n: (b, (path / n).stat().st_mtime_ns) for n, b in _files(path).items()}


@pytest.fixture(scope="module")
def written(base, tmp_path_factory) -> Dict[str, List[str]]:
    """{command: the run files it writes}, found by running it on a copy of the run."""
    out = {}
    for command in COMMANDS:
        run = tmp_path_factory.mktemp(command) / "run"
        shutil.copytree(base, run)
        before = _stamps(run)
        assert main(_argv(command, run)) == 0, command
        after = _stamps(run)
        out[command] = sorted(n for n, b in after.items() if before.get(n) != b)
    return out


def test_the_commands_write_what_the_tests_below_plant_links_at(written):
    # So that the tests below cannot pass by finding nothing to test.
    assert {"config.json", "metrics.jsonl", "checkpoints/last.pt", ".lock"} <= set(
        written["resume"]
    )
    assert "figures/samples.png" in written["sample"]
    assert {"figures/gap.json", "figures/gap.png"} <= set(written["gap"])
    assert {"figures/gradvar.json", "figures/gradvar.png"} <= set(written["gradvar"])
    assert {"figures/diagnose.json", "figures/diagnose.png"} <= set(written["diagnose"])
    assert "report.html" in written["report"]


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "evaluate"])
@pytest.mark.parametrize("where", ["final", "tmp"])
def test_no_write_follows_a_link_planted_at_the_file_or_its_temporary(
    command, where, base, written, tmp_path, capsys
):
    for name in written[command]:
        run = tmp_path / f"{where}-{name.replace('/', '-')}" / "run"
        shutil.copytree(base, run)
        victim = run.parent / "victim"
        victim.write_bytes(PRECIOUS)
        planted = run / (name if where == "final" else name + ".tmp")
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.unlink(missing_ok=True)
        planted.symlink_to(victim)
        capsys.readouterr()
        code = main(_argv(command, run))
        assert victim.read_bytes() == PRECIOUS, (command, name, where)
        if code != 0:  # a refusal instead: one line that names the link
            assert name.split("/")[-1] in _one_line(capsys, code), (command, name, where)
        elif where == "tmp" and name != ".lock":  # the lock is opened in place, no .tmp
            assert not planted.is_symlink() and not planted.exists(), (command, name)


@pytest.mark.parametrize("folder", ["checkpoints", "figures"])
def test_a_run_folder_that_is_a_link_is_refused(folder, base, written, tmp_path, capsys):
    other = tmp_path / "other-run"
    shutil.copytree(base, other)
    (other / "figures").mkdir(exist_ok=True)
    (other / folder / "keep").write_bytes(PRECIOUS)
    kept = _files(other)
    commands = [c for c, names in written.items() if any(n.startswith(folder) for n in names)]
    assert commands  # every folder is written by some command
    for command in commands:
        run = tmp_path / command / "run"
        shutil.copytree(base, run)
        shutil.rmtree(run / folder, ignore_errors=True)
        (run / folder).symlink_to(other / folder)
        capsys.readouterr()
        line = _one_line(capsys, main(_argv(command, run)))
        assert f"{folder} is a symbolic link" in line, line
        assert _files(other) == kept, command


@contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging: a FIFO read would block forever."""

    def stop(*_):
        raise TimeoutError("blocked: a special file was opened and read")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# What a file a run reads may be instead of a regular file, and the words that refuse it.
KINDS = {
    "fifo": (lambda p: os.mkfifo(p), "a FIFO"),
    "device": (lambda p: p.symlink_to("/dev/zero"), "/dev/zero"),
    "huge": (None, "bytes, more than"),  # a sparse file beyond the file's bound
}
# The bound of each file a run reads, a little beyond it.
HUGE = {
    "config.json": (1 << 20) + 1,
    "metrics.jsonl": (256 << 20) + 1,
    "checkpoints/last.pt": None,  # this machine's memory
    "checkpoints/best.pt": None,
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", list(HUGE))
def test_a_run_file_that_is_not_a_sane_regular_file_is_refused_unread(
    name, kind, base, tmp_path, capsys
):
    make, words = KINDS[kind]
    refused = 0
    for command in ("resume", "evaluate", "sample", "new run"):
        run = tmp_path / command.replace(" ", "-") / "run"
        shutil.copytree(base, run)
        if command == "new run":  # into a run that stopped before its first checkpoint
            if name.startswith("checkpoints"):
                continue
            shutil.rmtree(run / "checkpoints")
        path = run / name
        path.unlink()
        if make is not None:
            make(path)
        else:
            with open(path, "wb") as f:
                f.truncate(HUGE[name] or _memory_bytes() + (1 << 30))
        argv = _argv(command, run) if command != "new run" else ["train", *TRAIN]
        if command == "new run":  # a run into that folder looks at what it holds
            argv += ["--run-dir", str(run)]
        capsys.readouterr()
        with _deadline(60):
            code = main(argv)
        if code == 0:  # this command does not read that file
            continue
        line = _one_line(capsys, code)
        assert name.split("/")[-1] in line and (words in line or "not a regular file" in line), (
            command,
            line,
        )
        refused += 1
    assert refused, f"no command read {name}"


def test_a_lock_file_that_is_a_fifo_is_refused(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    (run / ".lock").unlink(missing_ok=True)
    os.mkfifo(run / ".lock")
    with _deadline(60):
        line = _one_line(capsys, main(_argv("resume", run)))
    assert ".lock is not a regular file" in line


class _FullDisk:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_full_disk_inside_torch_save_is_one_line_and_loses_nothing(
    base, tmp_path, monkeypatch, capsys
):
    # torch.save reports a failed write as RuntimeError("unexpected pos ..."), not OSError.
    real = torch.save

    def save(obj, f, *args, **kwargs):
        target = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        try:
            real(obj, _FullDisk(target, 200), *args, **kwargs)
        finally:
            if target is not f:
                target.close()

    run = tmp_path / "run"
    shutil.copytree(base, run)
    kept = _files(run / "checkpoints")
    monkeypatch.setattr(pyrovae.training.checkpoint.torch, "save", save)
    line = _one_line(capsys, main(_argv("resume", run)))
    assert "No space left on device" in line or "space" in line, line
    assert _files(run / "checkpoints") == kept
    assert not list(run.rglob("*.tmp"))
