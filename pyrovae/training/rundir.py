"""Run directories: claimed by one process at a time, never overwritten, written atomically.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/{last,best}.pt`` and,
while a process trains in it, a lock on ``.lock`` (an OS file lock: released when the process
ends, however it ends). A new run goes only into a directory that does not exist, is empty, or
holds a run that stopped before its first checkpoint; anything else (a run with checkpoints, a
user's own files) is refused, and nothing in it is touched.

Every file is replaced atomically (written to ``NAME.tmp``, then renamed), so a kill at any
moment leaves either the old or the new version; every file is read and written through
``pyrovae.files``, so none is read when it is a FIFO, a device or absurdly large, and none is
written through a symbolic link. The epoch commit is ordered so that a kill
between its steps loses nothing: ``best.pt``, then ``last.pt`` (the commit point: it holds the
metrics of every epoch so far), then ``metrics.jsonl``, which resume rebuilds from ``last.pt``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..files import open_lock, own_folder, read_bytes
from ..files import write_text as _write_text

try:  # POSIX; elsewhere a run directory is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".lock"
# The sane sizes of a run's text files: a config is a few KiB, a metrics line a few hundred
# bytes per epoch.
MAX_CONFIG_BYTES = 1 << 20
MAX_METRICS_BYTES = 256 << 20
# A run's own folders: never links (a linked checkpoints/ would overwrite another run's).
RUN_FOLDERS = ("checkpoints", "figures")
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


def write_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` by ``text`` (a ``.tmp`` file renamed into place; removed if
    the write fails)."""
    _write_text(Path(path), text)


def read_run_file(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Optional[bytes]:
    """The bytes of a run's text file (``config.json``, ``metrics.jsonl``), None if there is
    none; a FIFO, device, directory or oversized file there is a ``RunDirError``."""
    fix = "a pyrovae run keeps a plain file there: move it away or restore it"
    try:
        return read_bytes(path, f"a run's {Path(path).name}", max_bytes, fix, RunDirError)
    except FileNotFoundError:
        return None


# ``config.json``'s mark of a run trained on a Dataset passed in Python (not loadable by name).
PYTHON_DATA = "python"


def run_record(
    identity: Dict[str, Any], python_data: bool, fingerprint: str, processes: int = 1
) -> Dict[str, Any]:
    """A run's ``config.json``, but its resume history: the training config (``train``), the
    model's (``model``; None for a pair of the user's own, described by ``custom_model``), the
    mark of data passed in Python (``data``), the data's fingerprint, and the number of
    processes where more than one. ``identity`` is what its checkpoints say was trained
    (``train_config``, ``model_config``, ``custom_model``)."""
    record: Dict[str, Any] = {"train": identity["train_config"], "model": identity["model_config"]}
    if identity.get("custom_model") is not None:
        record["custom_model"] = identity["custom_model"]
    if python_data:
        record["data"] = PYTHON_DATA
    record["data_fingerprint"] = fingerprint
    if processes > 1:
        record["processes"] = processes
    return record


def trained_on_python_data(record: Dict[str, Any]) -> bool:
    """Whether the run of ``record`` (``read_record``) trained on a Dataset passed in Python,
    which it cannot load by name."""
    return record.get("data") == PYTHON_DATA


def read_record(run_dir: Path) -> Dict[str, Any]:
    """A run's ``config.json`` as written, with the keys ``read_config`` does not read
    (``resumed``, ``data``, ``data_fingerprint``); ``{}`` if it is missing or not JSON."""
    raw = read_run_file(Path(run_dir) / "config.json")
    try:
        record = _json(raw or b"")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _json(text) -> Any:
    """``json.loads``, with nesting too deep for Python's parser a ``ValueError`` too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_record(record: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return (
        isinstance(record, dict)
        and isinstance(record.get("epoch"), int)
        and number(record.get("train_elbo"))
        and number(record.get("valid_elbo"))
    )


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of a run, oldest first.

    A last line cut short (a copy interrupted, a disk that filled) is dropped: ``last.pt``
    holds every record and resume rewrites the file from it. A bad line before the last is a
    ``ValueError`` naming the file and the line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    raw = read_run_file(path, MAX_METRICS_BYTES)
    if raw is None:
        return []
    lines = raw.decode(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = _json(line)
            if not _is_record(record):
                raise ValueError("not an epoch record with epoch, train_elbo and valid_elbo")
        except ValueError as e:
            if number == len(lines):
                break  # a truncated last line
            raise ValueError(
                f"{path}, line {number}, is not a metrics record ({e}); delete that line (the "
                "checkpoints are unaffected), or restore the file"
            ) from None
        records.append(record)
    return records


# The files a run writes; none of them may be a directory or another kind of file.
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt")
# The temporary files of pyrovae's own writes of them, which a kill may leave behind.
LEFTOVERS = tuple(f"{name}.tmp" for name in RUN_FILES)


def _entries(path: Path) -> List[str]:
    """The names in ``path``, less the temporary files of pyrovae's own interrupted writes
    (``remove_leftovers`` deletes those, and only those)."""
    if not path.is_dir():
        return []
    own = {name for name in LEFTOVERS if "/" not in name}
    return sorted(p.name for p in path.iterdir() if p.name not in own)


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files of writes a kill interrupted (the lock holder alone may: no
    other process is writing)."""
    for name in LEFTOVERS:
        path = Path(run_dir) / name
        if path.is_file() and not path.is_symlink():
            path.unlink()


def _check_run_files(path: Path) -> None:
    """Each folder a run writes into is its own (not a link), and each file a run writes is a
    regular file where it exists, so no write fails midway or lands in another run."""
    for name in RUN_FOLDERS:
        if (path / name).is_symlink():
            own_folder(path / name, RunDirError)  # the refusal, in one place
    for name in RUN_FILES:
        file = path / name
        if file.is_symlink() or (file.exists() and not file.is_file()):
            raise RunDirError(
                f"{file} is not a regular file (a directory or a link?); a pyrovae run writes "
                "a file there: move it away"
            )


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a pyrovae run's ``config.json`` (not a file of the same name)."""
    raw = read_run_file(path)  # a FIFO, a device, an unreadable file: its own error
    try:
        record = _json(raw or b"")
    except ValueError:
        return False
    return isinstance(record, dict) and {"train", "model"} <= set(record)


def is_unstarted_run(path: Path) -> bool:
    """Whether ``path`` holds only what a run that stopped before its first checkpoint wrote
    (a config, no metrics, no checkpoints): starting a new run there loses nothing."""
    if set(_entries(path)) - {"config.json", "metrics.jsonl", "checkpoints", LOCK_FILE}:
        return False
    if (path / "config.json").exists() and not _is_run_config(path / "config.json"):
        return False
    # No last.pt: no epoch was committed (a best.pt beside the run's config is half of the
    # first commit; without that config it is someone's file).
    checkpoints = set(_entries(path / "checkpoints"))
    if checkpoints - {"best.pt"}:
        return False
    if checkpoints and not _is_run_config(path / "config.json"):
        return False
    metrics = read_run_file(path / "metrics.jsonl", MAX_METRICS_BYTES)
    return metrics is None or not metrics.strip()


def check_new_run_dir(path: Path) -> None:
    """Refuse a directory a new run must not write into, touching nothing."""
    if path.is_symlink() and not path.exists():
        raise RunDirError(
            f"{path} is a symbolic link to {os.readlink(path)}, which does not exist (or loops): "
            "choose another --run-dir"
        )
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path} is a file, not a directory: choose another --run-dir")
    entries = _entries(path)
    if not entries:
        return
    if is_unstarted_run(path):
        _check_run_files(path)
        return
    if _is_run_config(path / "config.json") and set(entries) <= RUN_ENTRIES:
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
    if not _is_run_config(path / "config.json"):
        raise RunDirError(
            f"{path} holds no pyrovae run (no valid config.json) to resume: check --run-dir, "
            "or leave out --resume to start a new run"
        )
    _check_run_files(path)
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
        """Take the lock, or raise ``RunDirError`` naming the process that holds it."""
        fd = open_lock(self.path, RunDirError)
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
        """Drop the lock (closing its file); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
