"""Datasets, chosen by name: binarized MNIST, (Fashion-)MNIST, CIFAR-10 and small synthetic sets.

Every loader returns a :class:`Dataset` holding three float32 tensors of flattened examples,
``(N, D)`` each, and is registered in :data:`DATASETS` so the command line can pick it by
name (``load_dataset("binarized-mnist", data_dir=...)`` reads the files there):

>>> data = load_dataset("linear-gaussian", x_dim=5, seed=3)
>>> data.train.shape[1], data.train.dtype
(5, torch.float32)

``splits`` loads only some splits, so evaluating the test split never reads the training file;
the others come back empty, ``(0, D)``:

>>> load_dataset("linear-gaussian", x_dim=5, seed=3, splits=("test",)).train.shape
torch.Size([0, 5])

Every problem with the data itself (a mistyped data directory, a missing file that cannot be
downloaded, an unreadable, truncated or non-binary file, a data file that is a FIFO, a device or
a dangling symbolic link, an unknown option or split, NaN values, a synthetic set too large for
the memory left) raises :class:`DataError`, whose one-line message says what was wrong, names the
file or option and says how to fix it. Only the default cache directory is ever created: a data
directory given explicitly (``data_dir`` or ``$PYROVAE_DATA``) must exist.

This package holds :class:`Dataset`, :class:`DataError`, :data:`DATASETS`, :func:`load_dataset`,
:func:`as_data_tensor` and the helpers the sources share; each source is a module that
registers its loaders when ``pyrovae.data`` is imported:

- ``pyrovae.data.binarized_mnist``: statically binarized MNIST from ``.amat`` files.
- ``pyrovae.data.vision``: MNIST, Fashion-MNIST and CIFAR-10 through torchvision.
- ``pyrovae.data.synthetic``: linear-Gaussian, ring and 2-D Gaussian-mixture samples.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import numpy as np
import torch

from pyrovae.files import check_regular, file_kind, os_reason
from pyrovae.linear_gaussian import LinearGaussian
from pyrovae.registry import Registry

#: A path given as a string or a path-like object.
PathLike = Union[str, "os.PathLike[str]"]
#: The names of a data set's three splits, in order.
SPLITS: Tuple[str, ...] = ("train", "valid", "test")
_PIXELS = 784  # values in one flattened 28x28 MNIST image
_MIN_TORCH_SEED, _MAX_TORCH_SEED = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


class DataError(ValueError):
    """A dataset is missing, corrupt, malformed, or was asked for with options it does not take."""


# --- converting user-supplied values ------------------------------------------------------------

# numpy dtype kinds that are not numbers, as an error message names them
_NON_NUMERIC_KINDS = {
    "U": "string",
    "S": "bytes",
    "O": "Python object",
    "c": "complex",
    "M": "datetime",
    "m": "timedelta",
    "V": "structured",
}
_NUMPY_FLOATS = {torch.float16: np.float16, torch.float64: np.float64}  # else via float32


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, or its type when the message is empty."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` for a message, cut to about ``limit`` characters (a hostile option can be
    a number with thousands of digits)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 13]}... ({len(text)} chars)"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def as_data_tensor(x: object, what: str = "x", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert user-supplied data to a floating tensor, refusing values a model would choke on.

    Bool and integer values (e.g. the ``uint8`` of :func:`read_amat` or of image files) become
    the floating numbers they stand for; NaN and infinite values are refused rather than left
    to turn a loss into NaN many steps later.

    Args:
        x: Values of any shape ``(...)``: a torch tensor, a numpy array or a nested list of
            bool, integer or floating numbers (float16, float32 or float64).
        what: What ``x`` is, for error messages, e.g. ``"the train split"``.
        dtype: The floating dtype wanted.

    Returns:
        A tensor of shape ``(...)`` and dtype ``dtype``: ``x`` itself, not a copy, when it already
        is one; a tensor sharing memory with a writable numpy array of that dtype; a new tensor
        otherwise. A tensor keeps its device.

    Raises:
        DataError: For values that are not numbers (strings, objects, complex), rows of unequal
            length, or NaN or infinite values (including values too large for ``dtype``); the
            message names ``what``.

    >>> as_data_tensor(np.array([[0, 1], [1, 1]], dtype=np.uint8))
    tensor([[0., 1.],
            [1., 1.]])
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise DataError(f"as_data_tensor: dtype must be a floating torch dtype, got {dtype!r}")
    if isinstance(x, torch.Tensor):
        if x.dtype.is_complex or x.is_quantized:
            raise DataError(
                f"{what} holds {x.dtype} values, not real numbers; convert it to bool, integer or "
                "floating values first"
            )
        source_floating = x.dtype.is_floating_point
        tensor = x.to(dtype)
    else:
        try:
            array = np.asarray(x)
        except (ValueError, TypeError) as exc:  # rows of unequal length, an odd object
            raise DataError(
                f"{what} is not a rectangular array of numbers ({_one_line(exc)}); pass a tensor, "
                "a numpy array or a nested list whose rows have equal lengths"
            ) from None
        if array.dtype.kind not in "biuf":
            kind = _NON_NUMERIC_KINDS.get(array.dtype.kind, "non-numeric")
            raise DataError(
                f"{what} holds {kind} values (numpy dtype {array.dtype}), not numbers; convert it "
                "to bool, integer or floating values first"
            )
        source_floating = array.dtype.kind == "f"
        with np.errstate(over="ignore"):  # values too large for dtype become inf: reported below
            array = array.astype(_NUMPY_FLOATS.get(dtype, np.float32), copy=False)
        if not array.flags.writeable:
            array = array.copy()  # torch cannot share a read-only buffer safely
        tensor = torch.from_numpy(array).to(dtype)
    # Bool and integer values (at most 2**64 in size) are finite in float32 and float64.
    if source_floating or torch.finfo(dtype).max < 2.0**64:
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(tensor).sum())
            n_inf = int((~finite).sum()) - n_nan
            found = []
            if n_nan:
                found.append(_plural(n_nan, "NaN value"))
            if n_inf:
                found.append(_plural(n_inf, "infinite value") + f" (or too large for {dtype})")
            raise DataError(
                f"{what} has {' and '.join(found)}; remove or replace them (e.g. with "
                "torch.nan_to_num) before using it as data"
            )
    return tensor


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


# The most levels a grid may have: float32 rounds k / 65535 by less than 0.01 of a level, so
# 16-bit values are still told apart from their neighbours.
#: The most levels an 8-bit-style grid of values k / (levels - 1) may have.
MAX_LEVELS = 2**16
# How far from a whole k a value times (levels - 1) may be and still count as k: float32's
# rounding of k / 255, times 255, is off by about 1e-5.
_GRID_TOLERANCE = 0.01
_GRID_CHUNK = 1 << 20  # values tested at once: bounds the temporaries for a whole CIFAR split


def on_grid(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Which values of ``x`` are k / (levels - 1) for a whole k from 0 to levels - 1 (8-bit
    images scaled to [0, 1] are on the grid of 256 levels).

    Args:
        x: Values of any shape ``(...)``, floating.
        levels: L, the number of grid values, from 2 to ``MAX_LEVELS``.

    Returns:
        A bool tensor of shape ``(...)``.
    """
    scaled = x * (levels - 1)
    return ((scaled - scaled.round()).abs() <= _GRID_TOLERANCE) & (x >= 0) & (x <= 1)


def off_grid_value(x: torch.Tensor, levels: int) -> float | None:
    """The first value of ``x`` that is not on the grid of ``levels`` values (:func:`on_grid`),
    or None when all are; tested chunk by chunk, so a whole data split costs little memory.

    Args:
        x: Values of any shape ``(...)``, floating.
        levels: L, as for :func:`on_grid`.

    Returns:
        The offending value as a Python float, or None.
    """
    flat = x.reshape(-1)
    for lo in range(0, flat.numel(), _GRID_CHUNK):
        part = flat[lo : lo + _GRID_CHUNK]
        bad = ~on_grid(part, levels)
        if bool(bad.any()):
            return part[bad][0].item()
    return None


# --- the dataset --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Three splits of flattened examples plus what a model needs to know about them.

    The splits are converted with :func:`~pyrovae.data.as_data_tensor`, so bool, integer and
    float64 tensors, numpy arrays and nested lists are accepted and stored as float32; NaN is
    refused. A split that was not loaded (see :func:`load_dataset`'s ``splits``) is empty,
    ``(0, D)``.

    Attributes:
        name: The registry name the dataset was loaded under.
        train: Training examples, (N_train, D) float32.
        valid: Validation examples, (N_valid, D) float32.
        test: Test examples, (N_test, D) float32.
        binary: Whether the likelihood sees values in {0, 1} only (after dynamic binarization,
            when ``binarize == "dynamic"``).
        image_shape: ``(H, W)`` with ``H * W == D`` for grey images, ``(C, H, W)`` with
            ``C * H * W == D`` for images of C channels (each row flattened in that row-major
            order, channel by channel), None for plain vectors.
        binarize: None, or ``"dynamic"``: the trainer replaces each training batch by
            ``torch.bernoulli(batch)`` at every step; valid and test are already binary.
        truth: The exact generative model, for datasets sampled from a linear-Gaussian model.
        levels: L when every value is k / (L - 1) for a whole k (256 for 8-bit images scaled
            by 1/255: ``mnist``, ``fashion-mnist`` not binarized, ``cifar10``), else None. The
            loader's word, not checked here (a pass over every value); the evaluator checks
            the points it evaluates, and reports log p(x) also in bits per dimension for such
            data (``pyrovae.evaluation.bits``).
        labels: {split: (N_split,) int64} class labels (``mnist`` and ``fashion-mnist``: the
            digit or garment, 0-9), -1 for an example without one; None for unlabelled data.
            A program of the user's own that takes them (``Program(labels=True)``) is called
            as ``model(x, y)``.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    binary: bool
    image_shape: Tuple[int, ...] | None = None
    binarize: str | None = None
    truth: LinearGaussian | None = None
    levels: int | None = None
    labels: Dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        # Catch a malformed dataset here, once, rather than as a shape error deep in a model.
        if not isinstance(self.name, str):
            raise DataError(f"dataset name must be a string, got {self.name!r}")
        for split in SPLITS:
            what = f"dataset {self.name!r}: the {split} split"
            object.__setattr__(self, split, as_data_tensor(getattr(self, split), what))
        shapes = {s: tuple(self.split(s).shape) for s in SPLITS}
        if any(len(shape) != 2 for shape in shapes.values()):
            raise DataError(f"dataset {self.name!r}: every split must be (N, D), got {shapes}")
        if len({shape[1] for shape in shapes.values()}) != 1:
            raise DataError(f"dataset {self.name!r}: splits disagree on D: {shapes}")
        if not isinstance(self.binary, (bool, np.bool_)):
            raise DataError(f"dataset {self.name!r}: binary must be True or False")
        if self.image_shape is not None and not (
            isinstance(self.image_shape, (tuple, list))
            and len(self.image_shape) in (2, 3)
            and all(_is_int(n) and n > 0 for n in self.image_shape)
        ):
            raise DataError(
                f"dataset {self.name!r}: image_shape must be None or (H, W) of positive integers "
                f"(or (C, H, W) for C channels), got {self.image_shape!r}"
            )
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(n) for n in self.image_shape))
        if self.image_shape is not None and math.prod(self.image_shape) != self.x_dim:
            raise DataError(
                f"dataset {self.name!r}: image_shape {self.image_shape} does not hold "
                f"{self.x_dim} values"
            )
        if self.binarize not in (None, "dynamic"):
            raise DataError(f"dataset {self.name!r}: binarize must be None or 'dynamic'")
        levels = self.levels
        if levels is not None and not (_is_int(levels) and 2 <= levels <= MAX_LEVELS):
            raise DataError(
                f"dataset {self.name!r}: levels must be None or an integer from 2 to "
                f"{MAX_LEVELS} (256 for 8-bit images), got {_shown(levels)}"
            )
        if levels is not None:
            object.__setattr__(self, "levels", int(levels))
        if self.labels is not None:
            object.__setattr__(self, "labels", self._checked_labels(self.labels))
        if self.truth is not None and self.truth.x_dim != self.x_dim:
            raise DataError(
                f"dataset {self.name!r}: truth has x_dim {self.truth.x_dim}, the data {self.x_dim}"
            )

    def _checked_labels(self, labels: Any) -> Dict[str, torch.Tensor]:
        """``labels`` as {split: (N_split,) int64}, one per example of each split, whole
        numbers from -1 (unlabelled) up."""
        if not isinstance(labels, dict) or set(labels) != set(SPLITS):
            raise DataError(
                f"dataset {self.name!r}: labels must be a dict with a tensor for each of "
                f"{', '.join(SPLITS)}, got {_shown(labels)}"
            )
        out = {}
        for split in SPLITS:
            y = torch.as_tensor(labels[split])
            n = len(self.split(split))
            if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise DataError(
                    f"dataset {self.name!r}: the {split} labels must be {n} whole numbers, one "
                    f"per example, got {y.dtype} of shape {tuple(y.shape)}"
                )
            if n and int(y.min()) < -1:
                raise DataError(
                    f"dataset {self.name!r}: the {split} labels hold {int(y.min())}; labels are "
                    "0, 1, ... (-1 for an example without one)"
                )
            out[split] = y.to(torch.int64)
        return out

    def split_labels(self, name: str) -> torch.Tensor | None:
        """The labels of one split, (N_split,) int64 (-1: unlabelled), or None without labels."""
        self.split(name)  # the name checked
        return None if self.labels is None else self.labels[name]

    def keeping_labels(self, count: int, seed: int = 0) -> "Dataset":
        """This data set with ``count`` of its training labels kept and the others set to -1
        (unlabelled), as a semi-supervised protocol has it: the same number of each class
        (``count`` must be a multiple of the classes' number), drawn with ``seed``, the same
        each time. The validation and test labels are kept, to measure classification.

        Raises:
            DataError: the data set has no labels, or ``count`` is not a positive multiple of
                the classes' number up to the training split's size of the rarest class.
        """
        if self.labels is None:
            raise DataError(f"dataset {self.name!r} has no labels to keep")
        y = self.labels["train"]
        classes = int(y.max()) + 1 if y.numel() else 0
        rarest = min((int((y == c).sum()) for c in range(classes)), default=0)
        if (
            isinstance(count, bool)
            or not isinstance(count, numbers.Integral)
            or count < 1
            or (classes and (count % classes or count // classes > rarest))
        ):
            raise DataError(
                f"dataset {self.name!r}: labelled={count!r}; give a positive multiple of its "
                f"{classes} classes, at most {classes * rarest} (as many of each class)"
            )
        g = torch.Generator().manual_seed(seed)
        kept = torch.full_like(y, -1)
        for c in range(classes):
            rows = (y == c).nonzero().squeeze(1)
            rows = rows[torch.randperm(len(rows), generator=g)[: count // classes]]
            kept[rows] = c
        return replace(self, labels={**self.labels, "train": kept})

    def split(self, name: str) -> torch.Tensor:
        """The examples of one split.

        Args:
            name: ``"train"``, ``"valid"`` or ``"test"``.

        Returns:
            The split's examples, (N_split, D) float32; (0, D) when the split was not loaded.

        Raises:
            DataError: For any other name (a ValueError).
        """
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def x_dim(self) -> int:
        """D, the number of values in one example."""
        return self.train.shape[1]

    @property
    def channels_shape(self) -> Tuple[int, int, int] | None:
        """``image_shape`` as (C, H, W), C = 1 for grey (H, W) images; None for vectors."""
        shape = self.image_shape
        return None if shape is None else (1, *shape) if len(shape) == 2 else shape

    def subset(
        self, n_train: int | None = None, n_eval: int | None = None, seed: int = 0
    ) -> Dataset:
        """A smaller copy made of seeded random rows, for tests and quick runs.

        Rows are drawn at random, never as a prefix, because the canonical MNIST test file is
        sorted by digit class: its first 1000 rows are all zeros. The splits are drawn in turn
        from one generator, so the rows picked from valid and test depend on the sizes of the
        splits before them. Empty splits (not loaded) are kept empty.

        Args:
            n_train: Rows to keep from train, (n_train, D); None keeps all of them.
            n_eval: Rows to keep from each of valid and test, (n_eval, D); None keeps all.
            seed: Seed of the draw; equal seeds give equal subsets.

        Returns:
            A new Dataset with the same name, flags and truth.

        Raises:
            DataError: If a size is not an integer, is negative or is larger than its split
                (a ValueError).
        """
        for option, value in (("n_train", n_train), ("n_eval", n_eval)):
            if value is not None and not (_is_int(value) and value >= 0):
                raise DataError(
                    f"subset: {option} must be None or an integer >= 0, got {_shown(value)}"
                )
        if not (_is_int(seed) and _MIN_TORCH_SEED <= seed <= _MAX_TORCH_SEED):
            raise DataError(
                f"subset: seed must be an integer in [-2**63, 2**64 - 1] (torch's seeds), "
                f"got {_shown(seed)}"
            )
        generator = torch.Generator().manual_seed(int(seed))
        picked, labels = {}, None if self.labels is None else dict(self.labels)
        for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
            full = self.split(split)
            if n is None or len(full) == 0:
                picked[split] = full
                continue
            if n > len(full):
                option = "n_train" if split == "train" else "n_eval"
                raise DataError(
                    f"cannot take {n} rows from the {len(full)} {split} rows of {self.name!r}; "
                    f"pass --{option.replace('_', '-')} ({option}) <= {len(full)}, or leave it "
                    "out to keep them all"
                )
            rows = torch.randperm(len(full), generator=generator)[:n]
            picked[split] = full[rows]
            if labels is not None:
                labels[split] = labels[split][rows]
        return replace(self, **picked, labels=labels)

    def __repr__(self) -> str:
        # The dataclass default would print three large tensors.
        sizes = ", ".join(f"{s}={len(self.split(s))}" for s in SPLITS)
        return (
            f"Dataset({self.name!r}, {sizes}, x_dim={self.x_dim}, binary={self.binary}, "
            f"image_shape={self.image_shape}, binarize={self.binarize!r}, "
            f"truth={'yes' if self.truth is not None else 'no'}, levels={self.levels}, "
            f"labels={'yes' if self.labels is not None else 'no'})"
        )


# --- loading by name ----------------------------------------------------------------------------

#: Dataset loaders by name (``binarized-mnist``, ``mnist``, ...);
#: ``@DATASETS.register(name)`` adds one.
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def load_dataset(
    name: str,
    data_dir: PathLike | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    **options: object,
) -> Dataset:
    """Load a registered dataset by name.

    Args:
        name: A name in ``DATASETS.names()``, e.g. ``"binarized-mnist"`` or ``"ring"``.
        data_dir: Where the files are (or go); None uses ``$PYROVAE_DATA`` or a directory under
            ``~/.cache/pyrovae``. A directory given here or in ``$PYROVAE_DATA`` must exist;
            only the default one is created. Synthetic datasets ignore it.
        splits: The splits to load, some of ``SPLITS`` (a single name is one split). The others
            are empty, (0, D), and their files are not read where the loader can avoid it
            (binarized MNIST never reads them; MNIST reads the official test file for
            ``("test",)`` only).
        **options: Keyword options of that dataset's loader.

    Returns:
        The Dataset; every split is (N_split, D) float32.

    Raises:
        DataError: For an unknown name, split or option, a missing data directory, or bad data.
    """
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string such as 'ring', got {name!r}")
    try:
        loader = DATASETS.get(name)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    wanted = _check_splits(splits)
    # Check option names against the loader's signature so a typo names the accepted options
    # instead of surfacing as a TypeError about an unexpected keyword argument. ``splits`` is
    # ours, not a dataset option: passed on to the loaders that take it.
    params = list(inspect.signature(loader).parameters.values())[1:]
    takes_splits = any(p.name == "splits" for p in params)
    params = [p for p in params if p.name != "splits"]
    accepted = [p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if len(accepted) == len(params):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise DataError(
                f"dataset {name!r} does not take option(s) {', '.join(unknown)}; "
                f"accepted options: {', '.join(accepted) or '(none)'}"
            )
    if takes_splits:
        options["splits"] = wanted
    return _keep_splits(loader(data_dir, **options), wanted)


def _check_splits(splits: object) -> Tuple[str, ...]:
    """The requested splits as a tuple in ``SPLITS`` order; a single name is one split.

    Raises:
        DataError: For an unknown or missing split name.
    """
    if isinstance(splits, str):
        splits = (splits,)
    try:
        asked = list(splits)  # type: ignore[call-overload]
    except TypeError:
        raise DataError(
            f"splits must be a sequence of split names from {', '.join(SPLITS)}, got {splits!r}"
        ) from None
    unknown = [s for s in asked if not isinstance(s, str) or s not in SPLITS]
    if unknown:
        raise DataError(
            f"unknown split(s) {', '.join(map(repr, unknown))} in splits; "
            f"choose from: {', '.join(SPLITS)}"
        )
    if not asked:
        raise DataError(f"splits is empty; ask for at least one of: {', '.join(SPLITS)}")
    return tuple(s for s in SPLITS if s in asked)


def _keep_splits(dataset: Dataset, wanted: Sequence[str]) -> Dataset:
    """``dataset`` with every split not in ``wanted`` emptied to (0, D)."""
    emptied = {s: dataset.split(s)[:0] for s in SPLITS if s not in wanted and len(dataset.split(s))}
    if not emptied:
        return dataset
    labels = dataset.labels
    if labels is not None:
        labels = {s: y[:0] if s in emptied else y for s, y in labels.items()}
    return replace(dataset, **emptied, labels=labels)


def _expand(path: Path, source: str) -> Path:
    """``path`` with ``~`` expanded; DataError naming ``source`` when that is impossible."""
    try:
        return path.expanduser()
    except RuntimeError as exc:  # "~nosuchuser", or no home directory at all
        raise DataError(f"cannot expand {path} from {source}: {_one_line(exc)}") from None


def _data_root(data_dir: PathLike | None, default_subdir: str) -> Path:
    """``data_dir``, else ``$PYROVAE_DATA``, else ``~/.cache/pyrovae/<default_subdir>``.

    A directory given explicitly must exist: a typo must not create a new directory tree and
    start a download there. Only the default directory is created, by the download.

    Raises:
        DataError: If ``data_dir`` is not a path, or an explicit directory is missing or is not
            a directory.
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)) or not isinstance(os.fspath(data_dir), str):
            raise DataError(
                f"data_dir must be a path (str or os.PathLike), got {data_dir!r}; "
                "pass --data-dir DIR"
            )
        if os.fspath(data_dir) == "":
            raise DataError(
                "data_dir is an empty string; pass --data-dir DIR, or leave it out to use "
                "PYROVAE_DATA or the default cache directory"
            )
        source = "--data-dir (data_dir)"
        root = _expand(Path(data_dir), source)
    elif os.environ.get("PYROVAE_DATA"):
        source = "PYROVAE_DATA"
        root = _expand(Path(os.environ["PYROVAE_DATA"]), source)
    else:
        try:
            return Path.home() / ".cache" / "pyrovae" / default_subdir
        except RuntimeError as exc:
            raise DataError(
                f"no home directory for the default data directory ({_one_line(exc)}); "
                "pass --data-dir DIR or set PYROVAE_DATA"
            ) from None
    try:
        info = root.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(
            f"data directory {root} does not exist; check {source} for a typo (a directory "
            "named there must exist: only the default cache directory is ever created)"
        ) from None
    except OSError as exc:
        raise DataError(
            f"cannot read data directory {root}: {os_reason(exc)}; check {source} and the "
            "directory's permissions"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        kind = "a file" if stat.S_ISREG(info.st_mode) else file_kind(info.st_mode)
        raise DataError(
            f"data directory {root} is {kind}, not a directory; check {source}: it names the "
            "directory that holds the data files"
        )
    return root


def _check_data_file(path: Path, what: str, max_bytes: int, fix: str) -> os.stat_result | None:
    """``pyrovae.files.check_regular`` with a ``DataError``: a data file that is not a regular
    file (a FIFO would block, ``/dev/zero`` never end) or is too large is refused before any
    read; None when nothing is at ``path``."""
    return check_regular(path, what, max_bytes, fix, DataError)


# The source modules import the names above and register their loaders in DATASETS, so they are
# imported last.
from pyrovae.data.binarized_mnist import (  # noqa: E402
    BINARIZED_MNIST_URL,
    CANONICAL_ROWS,
    load_binarized_mnist,
    read_amat,
)
from pyrovae.data.synthetic import load_gmm2d, load_linear_gaussian, load_ring  # noqa: E402
from pyrovae.data.vision import (  # noqa: E402
    CIFAR10_VALID_SIZE,
    MNIST_VALID_SIZE,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
)

__all__ = [
    "BINARIZED_MNIST_URL",
    "CANONICAL_ROWS",
    "CIFAR10_VALID_SIZE",
    "DATASETS",
    "MAX_LEVELS",
    "MNIST_VALID_SIZE",
    "SPLITS",
    "DataError",
    "Dataset",
    "PathLike",
    "as_data_tensor",
    "load_binarized_mnist",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_gmm2d",
    "load_linear_gaussian",
    "load_mnist",
    "load_ring",
    "off_grid_value",
    "on_grid",
    "read_amat",
]
