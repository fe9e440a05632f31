"""Run directories: claimed by one process at a time, never overwritten, written atomically.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/{last,best}.pt`` and,
while a process trains in it, a lock on ``.lock`` (an OS file lock: released when the process
ends, however it ends). A new run goes only into a directory that does not exist, is empty, or
holds a run that stopped before its first checkpoint; anything else (a run with checkpoints, a
user's own files) is refused, and nothing in it is touched.

Every file is replaced atomically (written to ``NAME.tmp``, then renamed), so a kill at any
moment leaves either the old or the new version. The epoch commit is ordered so that a kill
between its steps loses nothing: ``best.pt``, then ``last.pt`` (the commit point: it holds the
metrics of every epoch so far), then ``metrics.jsonl``, which resume rebuilds from ``last.pt``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

try:  # POSIX; elsewhere a run directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".lock"
# What pyrovae itself writes into a run directory.
RUN_ENTRIES = {"config.json", "metrics.jsonl", "checkpoints", LOCK_FILE, "figures"}


class RunDirError(ValueError):
    """A run directory cannot be used: it holds other files, or another process trains in it."""


def write_json(path: Path, obj: Any) -> None:
    """Atomically replace ``path`` by ``obj`` as indented JSON."""
    _write_text(path, json.dumps(obj, indent=2) + "\n")


def write_metrics(run_dir: Path, records: List[Dict[str, Any]]) -> None:
    """Atomically replace ``run_dir/metrics.jsonl`` by one JSON line per record."""
    _write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in records))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a file behind


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of a run, oldest first.

    A last line cut short (a copy interrupted, a disk that filled) is dropped: ``last.pt``
    holds every record and resume rewrites the file from it. A bad line before the last is a
    ``ValueError`` naming the file and the line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError as e:
            if number == len(lines):
                break  # a truncated last line
            raise ValueError(
                f"{path}, line {number}, is not a metrics record ({e}); delete that line (the "
                "checkpoints are unaffected), or restore the file"
            ) from None
        records.append(record)
    return records


def _entries(path: Path) -> List[str]:
    """The names in ``path``, less the ``.tmp`` files a killed process may leave: pyrovae's own
    (``remove_leftovers`` deletes them), not a sign of foreign content."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if not p.name.endswith(".tmp"))


def remove_leftovers(run_dir: Path) -> None:
    """Delete the ``NAME.tmp`` files of writes a kill interrupted (the lock holder alone may:
    no other process is writing)."""
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for tmp in folder.glob("*.tmp"):
                tmp.unlink(missing_ok=True)


def is_unstarted_run(path: Path) -> bool:
    """Whether ``path`` holds only what a run that stopped before its first checkpoint wrote
    (a config, no metrics, no checkpoints): starting a new run there loses nothing."""
    if set(_entries(path)) - {"config.json", "metrics.jsonl", "checkpoints", LOCK_FILE}:
        return False
    if _entries(path / "checkpoints"):
        return False
    metrics = path / "metrics.jsonl"
    return not metrics.exists() or not metrics.read_text(errors="replace").strip()


def check_new_run_dir(path: Path) -> None:
    """Refuse a directory a new run must not write into, touching nothing."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory: choose another --run-dir")
    entries = _entries(path)
    if not entries or is_unstarted_run(path):
        return
    if (path / "config.json").is_file() and set(entries) <= RUN_ENTRIES:
        raise FileExistsError(
            f"{path} already holds a training run; pass --resume (resume=True) to continue it, "
            "or choose another run directory"
        )
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise RunDirError(
        f"{path} is not empty and is not a pyrovae run (it holds {shown}); nothing was written: "
        "choose a new or empty run directory"
    )


def check_resumable(path: Path) -> None:
    """Refuse to resume from a directory without a run or without a checkpoint."""
    if not (path / "config.json").is_file():
        raise RunDirError(
            f"{path} holds no pyrovae run (no config.json) to resume: check --run-dir, or "
            "leave out --resume to start a new run"
        )
    if not (path / "checkpoints" / "last.pt").is_file():
        if is_unstarted_run(path):
            raise RunDirError(
                f"the run in {path} stopped before its first epoch ended, so there is no "
                "checkpoint to resume from: start it again without --resume"
            )
        raise RunDirError(
            f"{path}/checkpoints/last.pt is missing, so the run cannot resume; restore it, "
            "or start a new run in another directory"
        )


def default_run_dir(dataset: str, estimator: str) -> Path:
    """``runs/<dataset>-<estimator>-<time>``, a name no other run has taken (``-2``, ``-3``...
    when runs start in the same second); the directory is created, empty, to claim the name."""
    stem = f"{dataset}-{estimator}-{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path("runs")
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10000):
        path = root / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()  # atomic: of two processes, one gets each name
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"too many runs named {stem} in {root}")  # pragma: no cover


class RunLock:
    """An exclusive OS lock on ``run_dir/.lock`` for as long as a process trains there.

    ``acquire`` fails at once with a ``RunDirError`` naming the process that holds it. The
    lock goes with the process (the OS drops it on exit, kill -9 included), so a crashed run
    never leaves a stale lock; ``release`` frees it earlier.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunDirError(
                    f"another pyrovae process (pid {holder}) is training in {self.path.parent}; "
                    "wait for it to finish, or choose another run directory"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
