"""Datasets, chosen by name: binarized MNIST, (Fashion-)MNIST and small synthetic sets.

Every loader returns a :class:`Dataset` holding three float32 tensors of flattened examples,
``(N, D)`` each, and is registered in :data:`DATASETS` so the command line can pick it by name::

    data = load_dataset("binarized-mnist", data_dir="/data/binarized_mnist")
    data = load_dataset("linear-gaussian", x_dim=5, seed=3)

Every problem with the data itself (a missing file that cannot be downloaded, a truncated or
non-binary file, an unknown option) raises :class:`DataError`, whose message says what was wrong
and how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import os
import shutil
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

import numpy as np
import torch

from pyrovae.linear_gaussian import LinearGaussian
from pyrovae.registry import Registry

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
SPLITS: Tuple[str, ...] = ("train", "valid", "test")


class DataError(ValueError):
    """A dataset is missing, corrupt, malformed, or was asked for with options it does not take."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Three splits of flattened examples plus what a model needs to know about them.

    Attributes:
        name: The registry name the dataset was loaded under.
        train: Training examples, (N_train, D) float32.
        valid: Validation examples, (N_valid, D) float32.
        test: Test examples, (N_test, D) float32.
        binary: Whether the likelihood sees values in {0, 1} only (after dynamic binarization,
            when ``binarize == "dynamic"``).
        image_shape: ``(H, W)`` with ``H * W == D`` for images, None for plain vectors.
        binarize: None, or ``"dynamic"``: the trainer replaces each training batch by
            ``torch.bernoulli(batch)`` at every step; valid and test are already binary.
        truth: The exact generative model, for datasets sampled from a linear-Gaussian model.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    binary: bool
    image_shape: Tuple[int, int] | None = None
    binarize: str | None = None
    truth: LinearGaussian | None = None

    def __post_init__(self) -> None:
        # Catch a malformed dataset here, once, rather than as a shape error deep in a model.
        shapes = {s: tuple(self.split(s).shape) for s in SPLITS}
        if any(len(shape) != 2 for shape in shapes.values()):
            raise DataError(f"dataset {self.name!r}: every split must be (N, D), got {shapes}")
        if len({shape[1] for shape in shapes.values()}) != 1:
            raise DataError(f"dataset {self.name!r}: splits disagree on D: {shapes}")
        if self.image_shape is not None and math.prod(self.image_shape) != self.x_dim:
            raise DataError(
                f"dataset {self.name!r}: image_shape {self.image_shape} does not hold "
                f"{self.x_dim} values"
            )
        if self.binarize not in (None, "dynamic"):
            raise DataError(f"dataset {self.name!r}: binarize must be None or 'dynamic'")

    def split(self, name: str) -> torch.Tensor:
        """The examples of one split.

        Args:
            name: ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            The split's examples, (N_split, D) float32.

        Raises:
            ValueError: For any other name.
        """
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def x_dim(self) -> int:
        """D, the number of values in one example."""
        return self.train.shape[1]

    def subset(
        self, n_train: int | None = None, n_eval: int | None = None, seed: int = 0
    ) -> Dataset:
        """A smaller copy made of seeded random rows, for tests and quick runs.

        Rows are drawn at random, never as a prefix, because the canonical MNIST test file is
        sorted by digit class: its first 1000 rows are all zeros.

        Args:
            n_train: Rows to keep from train, (n_train, D); None keeps all of them.
            n_eval: Rows to keep from each of valid and test, (n_eval, D); None keeps all.
            seed: Seed of the draw; equal seeds give equal subsets.

        Returns:
            A new Dataset with the same name, flags and truth.

        Raises:
            ValueError: If a size is negative or larger than its split.
        """
        generator = torch.Generator().manual_seed(seed)
        picked = {}
        for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
            full = self.split(split)
            if n is None:
                picked[split] = full
                continue
            if not 0 <= n <= len(full):
                raise ValueError(f"cannot take {n} rows from the {len(full)} {split} rows")
            picked[split] = full[torch.randperm(len(full), generator=generator)[:n]]
        return replace(self, **picked)

    def __repr__(self) -> str:
        # The dataclass default would print three large tensors.
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        return (
            f"Dataset({self.name!r}, {sizes}, x_dim={self.x_dim}, binary={self.binary}, "
            f"image_shape={self.image_shape}, binarize={self.binarize!r}, "
            f"truth={'yes' if self.truth is not None else 'no'})"
        )


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def load_dataset(name: str, data_dir: PathLike | None = None, **options: object) -> Dataset:
    """Load a registered dataset by name.

    Args:
        name: A name in ``DATASETS.names()``, e.g. ``"binarized-mnist"`` or ``"ring"``.
        data_dir: Where the files are (or go); None uses ``$PYROVAE_DATA`` or a directory under
            ``~/.cache/pyrovae``. Synthetic datasets ignore it.
        **options: Keyword options of that dataset's loader.

    Returns:
        The Dataset; every split is (N_split, D) float32.

    Raises:
        DataError: For an unknown name, an option the loader does not take, or bad data.
    """
    try:
        loader = DATASETS.get(name)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    # Check option names against the loader's signature so a typo names the accepted options
    # instead of surfacing as a TypeError about an unexpected keyword argument.
    params = list(inspect.signature(loader).parameters.values())[1:]
    accepted = [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(accepted) == len(params):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise DataError(
                f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
                f"accepted options: {', '.join(accepted) or '(none)'}"
            )
    return loader(data_dir, **options)


def _data_root(data_dir: PathLike | None, default_subdir: str) -> Path:
    """``data_dir``, else ``$PYROVAE_DATA``, else ``~/.cache/pyrovae/<default_subdir>``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("PYROVAE_DATA"):
        return Path(os.environ["PYROVAE_DATA"]).expanduser()
    return Path.home() / ".cache" / "pyrovae" / default_subdir


# --- statically binarized MNIST (.amat text files) ---------------------------------------------

BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
    "binarized_mnist_{split}.amat"
)
CANONICAL_ROWS: Dict[str, int] = {"train": 50000, "valid": 10000, "test": 10000}
_PIXELS = 784
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


# --- MNIST and Fashion-MNIST through torchvision -----------------------------------------------

MNIST_VALID_SIZE = 10000  # the last 10000 official training images become the validation split
_BINARIZE_SEED = 0  # fixed, so evaluation splits are the same binary images in every run


def _torchvision_images(class_name: str, root: Path, train: bool) -> torch.Tensor:
    """One official split as (N, 784) float32 in [0, 1]."""
    import torchvision.datasets  # lazily: importing torchvision is slow and rarely needed

    dataset_cls = getattr(torchvision.datasets, class_name)
    failures = []
    for download in (False, True):  # use files already there before touching the network
        try:
            dataset = dataset_cls(str(root), train=train, download=download)
            break
        except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
            failures.append(f"download={download}: {exc}")
    else:
        raise DataError(
            f"could not load {class_name} ({'train' if train else 'test'}) from {root}: "
            f"{'; '.join(failures)}. Put the raw files (train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each "
            f"optionally .gz) in {root / class_name / 'raw'} and pass --data-dir {root} or set "
            "PYROVAE_DATA, or run once where the network is reachable."
        )
    images = torch.as_tensor(dataset.data)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataError(
            f"{class_name} in {root} holds {tuple(images.shape)} {images.dtype} images, expected "
            "(N, 28, 28) uint8; delete its directory so it is downloaded again"
        )
    return images.reshape(len(images), _PIXELS).to(torch.float32) / 255.0


def _binarize_once(x: torch.Tensor, split: str) -> torch.Tensor:
    """One fixed Bernoulli draw per pixel, (N, D) -> (N, D) float32 of 0/1.

    Each split has its own seed, so the test split is the same binary images whether or not
    the training split was binarized too.
    """
    seed = int(np.random.SeedSequence([_BINARIZE_SEED, SPLITS.index(split)]).generate_state(1)[0])
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


def _load_torchvision(
    name: str, class_name: str, data_dir: PathLike | None, binarize: str | None
) -> Dataset:
    if binarize == "none":
        binarize = None  # the spelling a command line produces
    if binarize not in (None, "dynamic", "static"):
        raise DataError(
            f"dataset {name!r}: unknown binarize={binarize!r}; choose None, 'dynamic' or 'static'"
        )
    root = _data_root(data_dir, "torchvision")
    full_train = _torchvision_images(class_name, root, train=True)
    if len(full_train) <= MNIST_VALID_SIZE:
        raise DataError(
            f"{class_name} in {root} has only {len(full_train)} training images; expected 60000"
        )
    splits = {
        "train": full_train[:-MNIST_VALID_SIZE],
        "valid": full_train[-MNIST_VALID_SIZE:],
        "test": _torchvision_images(class_name, root, train=False),
    }
    # Dynamic: the trainer redraws training pixels each step, but evaluation must see the same
    # images every time, so valid and test are drawn once here. Static: every split drawn once.
    to_binarize = {None: (), "dynamic": ("valid", "test"), "static": SPLITS}[binarize]
    for split in to_binarize:
        splits[split] = _binarize_once(splits[split], split)
    return Dataset(
        name,
        binary=binarize is not None,
        image_shape=(28, 28),
        binarize="dynamic" if binarize == "dynamic" else None,
        **splits,
    )


@DATASETS.register("mnist")
def load_mnist(data_dir: PathLike | None = None, *, binarize: str | None = None) -> Dataset:
    """MNIST: train = first 50000 official training images, valid = last 10000, test = official.

    Args:
        data_dir: torchvision root (holding ``MNIST/raw``); None uses ``$PYROVAE_DATA``, else
            ``~/.cache/pyrovae/torchvision``. Downloads there when the files are absent.
        binarize: None for grayscale in [0, 1]; ``"dynamic"`` to resample training pixels each
            step (valid/test binarized once, seeded); ``"static"`` for every split binarized once.

    Returns:
        Dataset with splits (N_split, 784) float32, image_shape (28, 28).

    Raises:
        DataError: If the files are absent and cannot be downloaded, or binarize is unknown.
    """
    return _load_torchvision("mnist", "MNIST", data_dir, binarize)


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(data_dir: PathLike | None = None, *, binarize: str | None = None) -> Dataset:
    """Fashion-MNIST, split and binarized exactly like :func:`load_mnist`.

    Args:
        data_dir: torchvision root (holding ``FashionMNIST/raw``); None as for MNIST.
        binarize: None, ``"dynamic"`` or ``"static"``, as for MNIST.

    Returns:
        Dataset with splits (N_split, 784) float32, image_shape (28, 28).

    Raises:
        DataError: If the files are absent and cannot be downloaded, or binarize is unknown.
    """
    return _load_torchvision("fashion-mnist", "FashionMNIST", data_dir, binarize)


# --- synthetic datasets ------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DataError(f"option {name} must be a positive number, got {value!r}")
    return float(value)


def _generators(
    seed: object, n_train: object, n_valid: object, n_test: object
) -> Tuple[Dict[str, torch.Generator], Dict[str, int]]:
    """Validate the common options; one generator per purpose, derived from ``seed``.

    Separate streams keep each split fixed when another split's size changes.

    Returns:
        ``({"params", "train", "valid", "test"} -> torch.Generator, {split -> size})``.
    """
    seed = _check_int("seed", seed, 0)
    sizes = {
        "train": _check_int("n_train", n_train, 1),
        "valid": _check_int("n_valid", n_valid, 1),
        "test": _check_int("n_test", n_test, 1),
    }
    generators = {}
    for i, purpose in enumerate(("params",) + SPLITS):
        derived = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        generators[purpose] = torch.Generator().manual_seed(derived)
    return generators, sizes


@DATASETS.register("linear-gaussian")
def load_linear_gaussian(
    data_dir: PathLike | None = None,
    *,
    n_train: int = 10000,
    n_valid: int = 2000,
    n_test: int = 2000,
    seed: int = 0,
    x_dim: int = 10,
    z_dim: int = 2,
    noise_std: float = 0.5,
) -> Dataset:
    """Samples of ``z ~ N(0, I)``, ``x | z ~ N(W z + b, noise_std² I)``, with the model as truth.

    ``W`` (x_dim, z_dim) and ``b`` (x_dim,) are standard-normal draws from ``seed``, so the
    exact log-likelihood of every example is known (``dataset.truth.log_marginal``).

    Args:
        data_dir: Ignored.
        n_train: Training examples; (n_train, x_dim).
        n_valid: Validation examples; (n_valid, x_dim).
        n_test: Test examples; (n_test, x_dim).
        seed: Fixes the model and all samples.
        x_dim: D, the observed dimension.
        z_dim: The latent dimension.
        noise_std: Observation noise standard deviation.

    Returns:
        Dataset with float32 splits (N_split, x_dim), binary=False, truth set (float32).
    """
    generators, sizes = _generators(seed, n_train, n_valid, n_test)
    x_dim, z_dim = _check_int("x_dim", x_dim, 1), _check_int("z_dim", z_dim, 1)
    noise_std = _check_positive("noise_std", noise_std)
    params = generators["params"]
    weight = torch.randn(x_dim, z_dim, generator=params)
    bias = torch.randn(x_dim, generator=params)
    truth = LinearGaussian.standard(weight, bias, torch.full((x_dim,), noise_std**2))
    splits = {s: truth.sample(sizes[s], generators[s]) for s in SPLITS}
    return Dataset("linear-gaussian", binary=False, truth=truth, **splits)


@DATASETS.register("ring")
def load_ring(
    data_dir: PathLike | None = None,
    *,
    n_train: int = 10000,
    n_valid: int = 2000,
    n_test: int = 2000,
    seed: int = 0,
) -> Dataset:
    """Doersch's ring: ``z ~ N(0, I₂)``, ``x = z / 10 + z / ‖z‖``, so ``‖x‖ = 1 + ‖z‖ / 10``.

    Args:
        data_dir: Ignored.
        n_train: Training examples; (n_train, 2).
        n_valid: Validation examples; (n_valid, 2).
        n_test: Test examples; (n_test, 2).
        seed: Fixes all samples.

    Returns:
        Dataset with float32 splits (N_split, 2), binary=False.
    """
    generators, sizes = _generators(seed, n_train, n_valid, n_test)
    splits = {}
    for split in SPLITS:
        z = torch.randn(sizes[split], 2, generator=generators[split])
        # ‖z‖ = 0 has probability zero, but a clamp keeps a freak draw from producing NaN.
        splits[split] = z / 10 + z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Dataset("ring", binary=False, **splits)


@DATASETS.register("gmm2d")
def load_gmm2d(
    data_dir: PathLike | None = None,
    *,
    n_train: int = 10000,
    n_valid: int = 2000,
    n_test: int = 2000,
    seed: int = 0,
    n_components: int = 8,
    radius: float = 2.0,
    std: float = 0.1,
) -> Dataset:
    """Equal-weight mixture of isotropic Gaussians with means evenly spaced on a circle.

    Component ``k`` has mean ``radius * (cos 2πk/K, sin 2πk/K)`` and covariance ``std² I₂``.

    Args:
        data_dir: Ignored.
        n_train: Training examples; (n_train, 2).
        n_valid: Validation examples; (n_valid, 2).
        n_test: Test examples; (n_test, 2).
        seed: Fixes all samples.
        n_components: K, the number of components.
        radius: Radius of the circle of means.
        std: Standard deviation of each component.

    Returns:
        Dataset with float32 splits (N_split, 2), binary=False.
    """
    generators, sizes = _generators(seed, n_train, n_valid, n_test)
    n_components = _check_int("n_components", n_components, 1)
    radius, std = _check_positive("radius", radius), _check_positive("std", std)
    angles = 2 * math.pi * torch.arange(n_components, dtype=torch.float32) / n_components
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)
    splits = {}
    for split in SPLITS:
        gen = generators[split]
        component = torch.randint(n_components, (sizes[split],), generator=gen)
        splits[split] = means[component] + std * torch.randn(sizes[split], 2, generator=gen)
    return Dataset("gmm2d", binary=False, **splits)
