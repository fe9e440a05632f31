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
from typing import Dict

import numpy as np
import torch

from pyrovae.data import _PIXELS, DATASETS, SPLITS, DataError, Dataset, PathLike, _data_root

logger = logging.getLogger(__name__)

# --- statically binarized MNIST (.amat text files) ---------------------------------------------

BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)
CANONICAL_ROWS: Dict[str, int] = {"train": 50000, "valid": 10000, "test": 10000}
_LINE_BYTES = 2 * _PIXELS  # 784 digits, each followed by a space or, last, a newline
_DOWNLOAD_TIMEOUT_S = 10.0
_CACHE_VERSION = 1  # bump when the cached format changes so old entries are never read


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, so a failure leaves no partial file."""
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


def _cache_file(path: Path) -> Path:
    """Cache location keyed by absolute path, size and mtime: an edited file misses the cache."""
    stat = path.stat()
    key = f"v{_CACHE_VERSION}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return _cache_dir() / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


def _load_cache(cache_file: Path) -> torch.Tensor | None:
    """The cached (N, 784) uint8 tensor, or None when absent or unusable."""
    if not cache_file.exists():
        return None
    try:
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
    except Exception:  # truncated by a crash, garbage, or written by another torch: rebuild it
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
    """Write the cache atomically, so a concurrent reader never sees half a file."""
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            torch.save(values, out)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the parsed data is no secret
        os.replace(tmp, cache_file)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        warnings.warn(
            f"could not write the parse cache {cache_file} ({exc}); every load will re-parse. "
            "Set PYROVAE_CACHE to a writable directory.",
            stacklevel=3,
        )


def read_amat(path: PathLike, cache: bool = True) -> torch.Tensor:
    """Read one binarized-MNIST ``.amat`` file, through the parse cache.

    Args:
        path: The file: one image per line, 784 values 0 or 1 separated by whitespace.
        cache: Whether to read and write the parse cache (see ``PYROVAE_CACHE``).

    Returns:
        (N, 784) uint8 tensor of 0/1.

    Raises:
        DataError: If the file is absent, empty, truncated or not binary; the message names
            the file and the first bad line.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    cache_file = _cache_file(path) if cache else None
    if cache_file is not None:
        cached = _load_cache(cache_file)
        if cached is not None:
            return cached
    raw = path.read_bytes()
    values = _parse_fast(raw)
    if values is None:
        values = _parse_lines(raw, path)
    tensor = torch.from_numpy(values)
    if cache_file is not None:
        _save_cache(cache_file, tensor)
    return tensor


@DATASETS.register("binarized-mnist")
def load_binarized_mnist(data_dir: PathLike | None = None, *, download: bool = True) -> Dataset:
    """Statically binarized MNIST in the Larochelle & Murray split (50000/10000/10000).

    Args:
        data_dir: Directory of ``binarized_mnist_{train,valid,test}.amat`` (or its parent, if it
            has a ``binarized_mnist`` subdirectory holding them); None uses ``$PYROVAE_DATA``,
            else ``~/.cache/pyrovae/binarized_mnist``.
        download: Whether to fetch missing files from ``BINARIZED_MNIST_URL``.

    Returns:
        Dataset with splits (N_split, 784) float32 of 0/1, binary=True, image_shape (28, 28).

    Raises:
        DataError: If a file is missing and cannot be downloaded, or is malformed.
    """
    root = _data_root(data_dir, "binarized_mnist")
    names = {s: f"binarized_mnist_{s}.amat" for s in SPLITS}
    nested = root / "binarized_mnist"
    if not any((root / n).exists() for n in names.values()) and any(
        (nested / n).exists() for n in names.values()
    ):
        root = nested  # let PYROVAE_DATA point at a shared data root
    splits = {}
    for split, name in names.items():
        path = root / name
        if not path.exists():
            _fetch_amat(path, split, download)
        splits[split] = read_amat(path).to(torch.float32)
        if len(splits[split]) != CANONICAL_ROWS[split]:
            warnings.warn(
                f"{path} has {len(splits[split])} rows, the canonical {split} split has "
                f"{CANONICAL_ROWS[split]}: results are not comparable to published numbers",
                stacklevel=2,
            )
    return Dataset("binarized-mnist", binary=True, image_shape=(28, 28), **splits)
