"""Statically binarized MNIST: the ``.amat`` reader, its parse cache, download and loader."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

from pyrovae.data import (
    _PIXELS,
    DATASETS,
    SPLITS,
    DataError,
    Dataset,
    PathLike,
    _check_data_file,
    _check_splits,
    _data_root,
    _expand,
    _one_line,
    _shown,
)
from pyrovae.files import open_regular, os_reason, size_text

logger = logging.getLogger(__name__)

# --- statically binarized MNIST (.amat text files) ---------------------------------------------

#: Where the static split's ``.amat`` files are downloaded from (``{split}``: train, valid, test).
BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)
#: Rows of each split of the canonical files (other counts load, with a warning).
CANONICAL_ROWS: Dict[str, int] = {"train": 50000, "valid": 10000, "test": 10000}
_LINE_BYTES = 2 * _PIXELS  # 784 digits, each followed by a space or, last, a newline
_DOWNLOAD_TIMEOUT_S = 10.0
_CACHE_VERSION = 1  # bump when the cached format changes so old entries are never read
# The canonical train file is 78.4 MB (50000 lines of 1568 bytes); no sane .amat file nears this.
_MAX_AMAT_BYTES = 1 << 30


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, so a failure leaves no partial file.

    Creates ``dest``'s directory: the loader only downloads into an explicitly given directory
    that exists, so only the default cache directory is ever created here.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fetch_amat(path: Path, split: str, download: bool) -> None:
    """Download a missing split file, or explain where to put it."""
    url = BINARIZED_MNIST_URL.format(split=split)
    fix = (
        "Put the canonical binarized_mnist_{train,valid,test}.amat files in one directory and "
        "pass --data-dir DIR (data_dir=DIR) or set PYROVAE_DATA=DIR."
    )
    if not download:
        raise DataError(f"{path} does not exist (download disabled; it is at {url}). {fix}")
    logger.info("downloading %s to %s", url, path)
    try:
        _download(url, path)
    except Exception as exc:  # offline, timeout, HTTP error, read-only directory: all "not here"
        raise DataError(
            f"{path} does not exist and downloading it from {url} failed ({exc}). {fix}"
        ) from exc


def _parse_fast(raw: bytes) -> np.ndarray | None:
    """Vectorized parse of a file in the exact canonical layout, or None if it is not.

    Returns:
        (N, 784) uint8 of 0/1, or None when any byte is out of place.
    """
    if raw and not raw.endswith(b"\n"):
        raw += b"\n"  # a missing final newline is harmless; keep such files on the fast path
    buf = np.frombuffer(raw, dtype=np.uint8)
    if buf.size == 0 or buf.size % _LINE_BYTES:
        return None
    rows = buf.reshape(-1, _LINE_BYTES)
    digits, separators = rows[:, 0::2], rows[:, 1::2]
    if not ((digits | 1) == ord("1")).all():  # '0' is 48 and '1' is 49: | 1 maps both to 49
        return None
    if not (separators[:, :-1] == ord(" ")).all() or not (separators[:, -1] == ord("\n")).all():
        return None
    return digits - ord("0")


def _parse_lines(raw: bytes, path: Path) -> np.ndarray:
    """Tolerant parse (any whitespace, CRLF) that names the first bad line.

    Returns:
        (N, 784) uint8 of 0/1.

    Raises:
        DataError: On an empty file, a line without 784 values, or a value other than 0 or 1.
    """
    fix = (
        "Delete the file so it is downloaded again, or replace it with the canonical one "
        "from " + BINARIZED_MNIST_URL.format(split="{train,valid,test}") + "."
    )
    lines = raw.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are harmless
        lines.pop()
    if not lines:
        raise DataError(f"{path} is empty ({len(raw)} bytes; interrupted download?). {fix}")
    allowed = {b"0", b"1"}
    rows = []
    for lineno, line in enumerate(lines, start=1):
        values = line.split()
        if len(values) != _PIXELS:
            raise DataError(
                f"{path}: line {lineno} has {len(values)} values, expected {_PIXELS} "
                f"(file truncated or corrupt?). {fix}"
            )
        if not allowed.issuperset(values):
            col, bad = next((i, v) for i, v in enumerate(values, start=1) if v not in allowed)
            shown = bad.decode("utf-8", "replace")[:20]
            raise DataError(
                f"{path}: line {lineno}, value {col}: {shown!r} is not 0 or 1 — "
                f"binarized MNIST must be binary. {fix}"
            )
        rows.append(b"".join(values))
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), _PIXELS) - ord("0")


def _cache_dir() -> Path:
    """``$PYROVAE_CACHE``, else ``~/.cache/pyrovae/parsed``; never beside the data.

    The data directory may be read-only or shared, so parsed copies live in a per-user cache.
    """
    if os.environ.get("PYROVAE_CACHE"):
        return Path(os.environ["PYROVAE_CACHE"]).expanduser()
    return Path.home() / ".cache" / "pyrovae" / "parsed"


def _cache_file(path: Path, info: os.stat_result) -> Path:
    """Cache location keyed by absolute path, size and mtime: an edited file misses the cache.

    Args:
        path: The data file.
        info: Its ``os.stat`` result.
    """
    key = f"v{_CACHE_VERSION}\0{path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}"
    return _cache_dir() / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def _load_cache(cache_file: Path) -> torch.Tensor | None:
    """The cached (N, 784) uint8 tensor, or None when absent or unusable.

    An entry that is not a regular file (a FIFO would block ``torch.load``) or is larger than
    any parsed .amat file is unusable: the parse rebuilds it.
    """
    try:
        with open_regular(cache_file, "a parse cache", _MAX_AMAT_BYTES, "", DataError) as f:
            cached = torch.load(f, map_location="cpu", weights_only=True)
    except Exception:  # absent, unreadable, truncated by a crash, garbage, another torch's
        return None
    ok = (
        isinstance(cached, torch.Tensor)
        and cached.dtype == torch.uint8
        and cached.dim() == 2
        and cached.shape[0] > 0
        and cached.shape[1] == _PIXELS
        and int(cached.max()) <= 1
    )
    return cached if ok else None


def _save_cache(cache_file: Path, values: torch.Tensor) -> None:
    """Write the cache atomically, so a concurrent reader never sees half a file.

    A failure is a warning, never an error: the cache only saves time.
    """
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            torch.save(values, out)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the parsed data is no secret
        os.replace(tmp, cache_file)
    except Exception as exc:  # OSError; torch.save raises RuntimeError on a full disk
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        warnings.warn(
            f"could not write the parse cache {cache_file} ({_one_line(exc)}); every load will "
            "re-parse. Set PYROVAE_CACHE to a writable directory.",
            stacklevel=3,
        )


def _read_capped(path: Path, info: os.stat_result, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, whose ``os.stat`` is ``info``, at most
    ``max_bytes`` of them.

    A file that reports a size (checked against ``max_bytes`` already) is read whole; one that
    reports none is empty or a pseudo-file (``/proc``) whose size is unknown, and is read only
    up to the cap. A file that grew past the cap meanwhile is refused too.
    """
    if info.st_size:
        raw = path.read_bytes()
    else:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise DataError(
            f"{path} holds more than {size_text(max_bytes)}, more than any .amat file (the "
            f"canonical train file is 78.4 MB); {_replace_fix()}"
        )
    return raw


def _replace_fix() -> str:
    return (
        "replace it with the canonical file from "
        + BINARIZED_MNIST_URL.format(split="{train,valid,test}")
        + ", or pass the path of that file"
    )


def read_amat(path: PathLike, cache: bool = True) -> torch.Tensor:
    """Read one binarized-MNIST ``.amat`` file, through the parse cache.

    Args:
        path: The file: one image per line, 784 values 0 or 1 separated by whitespace.
        cache: Whether to read and write the parse cache (see ``PYROVAE_CACHE``).

    Returns:
        (N, 784) uint8 tensor of 0/1.

    Raises:
        DataError: If the file is absent, a directory, not a regular file (a FIFO, socket or
            device, through a symbolic link or not: refused before it is opened), a dangling
            symbolic link, larger than 1 GiB, unreadable (the OS's reason), empty, truncated or
            not binary; the message names the file and the first bad line.
    """
    path = _expand(Path(path), "the path of an .amat file")
    info = _check_data_file(path, "an .amat file", _MAX_AMAT_BYTES, _replace_fix())
    if info is None:
        raise DataError(f"{path} does not exist; check the path")
    try:
        cache_file = _cache_file(path, info) if cache else None
        cached = _load_cache(cache_file) if cache_file is not None else None
        if cached is not None:
            return cached
        raw = _read_capped(path, info, _MAX_AMAT_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path} does not exist; check the path") from None
    except OSError as exc:  # permission denied, a directory, an I/O error, ...
        raise DataError(
            f"cannot read {path}: {os_reason(exc)}; check that it is a readable file, or "
            "replace it with a fresh copy"
        ) from None
    values = _parse_fast(raw)
    if values is None:
        values = _parse_lines(raw, path)
    tensor = torch.from_numpy(values)
    if cache_file is not None:
        _save_cache(cache_file, tensor)
    return tensor


def _exists(path: Path) -> bool:
    """Whether anything is at ``path``: a dangling symbolic link or an error other than
    "absent" counts as there, for read_amat to report with its reason (a download would write
    through the link)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


@DATASETS.register("binarized-mnist")
def load_binarized_mnist(
    data_dir: PathLike | None = None, *, download: bool = True, splits: Sequence[str] = SPLITS
) -> Dataset:
    """Statically binarized MNIST in the Larochelle & Murray split (50000/10000/10000).

    Args:
        data_dir: Directory of ``binarized_mnist_{train,valid,test}.amat`` (or its parent, if it
            has a ``binarized_mnist`` subdirectory holding them); None uses ``$PYROVAE_DATA``,
            else ``~/.cache/pyrovae/binarized_mnist``. A directory given here or in
            ``$PYROVAE_DATA`` must exist; only the default one is created for a download.
        download: Whether to fetch missing files from ``BINARIZED_MNIST_URL``.
        splits: The splits to read; only their files are read (or downloaded), the other
            splits are empty, (0, 784).

    Returns:
        Dataset with splits (N_split, 784) float32 of 0/1, binary=True, image_shape (28, 28).

    Raises:
        DataError: If the data directory is missing, a file is missing and cannot be
            downloaded, or is not a regular file (a FIFO, a device, a dangling symbolic link:
            refused before it is opened), over 1 GiB, unreadable or malformed, or an option is
            bad.
    """
    if not isinstance(download, bool):
        raise DataError(
            f"option download must be true or false, got {_shown(download)}; write "
            "--dataset-option download=true or download=false (JSON booleans; True or False "
            "from Python)"
        )
    wanted = _check_splits(splits)
    root = _data_root(data_dir, "binarized_mnist")
    names = {s: f"binarized_mnist_{s}.amat" for s in wanted}
    nested = root / "binarized_mnist"
    if not any(_exists(root / n) for n in names.values()) and any(
        _exists(nested / n) for n in names.values()
    ):
        root = nested  # let PYROVAE_DATA point at a shared data root
    values = {s: torch.zeros(0, _PIXELS) for s in SPLITS}
    for split, name in names.items():
        path = root / name
        if not _exists(path):
            _fetch_amat(path, split, download)
        values[split] = read_amat(path)
        if len(values[split]) != CANONICAL_ROWS[split]:
            warnings.warn(
                f"{path} has {len(values[split])} rows, the canonical {split} split has "
                f"{CANONICAL_ROWS[split]}: results are not comparable to published numbers",
                stacklevel=2,
            )
    # Dataset converts the uint8 values to float32.
    return Dataset("binarized-mnist", binary=True, image_shape=(28, 28), **values)
