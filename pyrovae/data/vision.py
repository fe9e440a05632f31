"""Images through torchvision: MNIST and Fashion-MNIST, split 50000/10000/10000 and optionally
binarized; CIFAR-10, split 45000/5000/10000, in colour."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

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
    _one_line,
)
from pyrovae.files import open_regular

# --- torchvision, shared by the loaders -------------------------------------------------------

# The largest official file (the CIFAR-10 archive) is 163 MiB; no sane data file nears this.
_MAX_TORCHVISION_FILE_BYTES = 1 << 30
# 8-bit images scaled by 1/255 take 256 values, k / 255 (``Dataset.levels``).
_EIGHT_BIT_LEVELS = 256


def _check_torchvision_files(class_name: str, folder: Path, names: Sequence[str]) -> None:
    """Refuse, before torchvision opens anything, a data file (``folder / name`` for each of
    ``names``) that is a FIFO (reading or extracting into it blocks forever), a device such as
    ``/dev/zero`` (reading never ends), a dangling symbolic link (a download would write through
    it), a directory, or a file larger than 1 GiB. Absent files are fine: torchvision downloads
    them."""
    for name in names:
        path = folder / name
        fix = f"delete it so that {class_name} is downloaded again, or put the official file there"
        _check_data_file(path, f"a {class_name} data file", _MAX_TORCHVISION_FILE_BYTES, fix)


def _open_torchvision(class_name: str, root: Path, train: bool, where: str) -> Any:
    """``torchvision.datasets.<class_name>(root, train=train)``: from the files already in
    ``root``, else downloaded there. ``where`` ends the error message: which files to put where.

    Raises:
        DataError: If torchvision cannot be imported, or the files are absent (or corrupt) and
            cannot be downloaded; one line with torchvision's reasons and ``where``.
    """
    try:  # lazily: importing torchvision is slow and rarely needed
        import torchvision.datasets
    except Exception as exc:  # not installed, or built for another torch (RuntimeError)
        raise DataError(
            f"cannot import torchvision, needed for {class_name} ({_one_line(exc)}); install the "
            f"torchvision release that matches torch {torch.__version__}"
        ) from None
    dataset_cls = getattr(torchvision.datasets, class_name)
    failures = []
    for download in (False, True):  # use files already there before touching the network
        try:
            return dataset_cls(str(root), train=train, download=download)
        except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
            failures.append(f"download={download}: {_one_line(exc)}")
    raise DataError(
        f"could not load {class_name} ({'train' if train else 'test'}) from {root}: "
        f"{'; '.join(failures)}. {where}, and pass --data-dir {root} or set PYROVAE_DATA, or "
        "run once where the network is reachable."
    )


# --- MNIST and Fashion-MNIST ----------------------------------------------------------------------

#: The last this many official training images of (Fashion-)MNIST become the validation split.
MNIST_VALID_SIZE = 10000
_BINARIZE_SEED = 0  # fixed, so evaluation splits are the same binary images in every run
# The files torchvision reads, or writes when it downloads, under <root>/<class name>: the raw
# files (and their .gz archives) and the processed files of old torchvision releases.
_TORCHVISION_FILES = tuple(
    f"raw/{prefix}-{kind}-ubyte{ext}"
    for prefix in ("train", "t10k")
    for kind in ("images-idx3", "labels-idx1")
    for ext in ("", ".gz")
) + ("processed/training.pt", "processed/test.pt")


# The idx files' magic numbers (0x0803: unsigned bytes, 3 dimensions; 0x0801: 1 dimension).
_IDX_MAGIC = {"images-idx3": (0x0803, 3), "labels-idx1": (0x0801, 1)}


def _check_idx_files(class_name: str, raw: Path) -> None:
    """Refuse an uncompressed raw file that is not what its name says, naming it and the
    fault: torchvision's reader only asserts, so a corrupt file reached the user as a bare
    ``AssertionError``. Checks the magic number and that the size is what the header's
    dimensions make; absent files are torchvision's to download."""
    fix = f"delete it so that {class_name} is downloaded again, or put the official file there"
    for name in _TORCHVISION_FILES:
        path = raw.parent / name
        if not name.startswith("raw/") or name.endswith(".gz") or not path.is_file():
            continue
        magic, ndim = _IDX_MAGIC[name.split("-", 1)[1].rsplit("-", 1)[0]]
        what = f"a {class_name} data file"
        with open_regular(path, what, _MAX_TORCHVISION_FILE_BYTES, fix, DataError) as f:
            header, size = f.read(4 + 4 * ndim), os.fstat(f.fileno()).st_size
        if len(header) < 4 + 4 * ndim or int.from_bytes(header[:4], "big") != magic:
            raise DataError(
                f"{path} is not an idx file of {class_name} (its first bytes are not the magic "
                f"number {magic:#06x}); {fix}"
            )
        dims = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        expected = 4 + 4 * ndim + math.prod(dims)
        if size != expected:
            raise DataError(
                f"{path} holds {size} bytes where its header ({' x '.join(map(str, dims))}) "
                f"makes {expected}: it is truncated or corrupt; {fix}"
            )


def _torchvision_images(
    class_name: str, root: Path, train: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One official MNIST-like split: its images (N, 784) float32 in [0, 1] and their labels
    (N,) int64."""
    _check_torchvision_files(class_name, root / class_name, _TORCHVISION_FILES)
    _check_idx_files(class_name, root / class_name / "raw")
    where = (
        "Put the raw files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz) in "
        f"{root / class_name / 'raw'}"
    )
    dataset = _open_torchvision(class_name, root, train, where)
    images = torch.as_tensor(dataset.data)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise DataError(
            f"{class_name} in {root} holds {tuple(images.shape)} {images.dtype} images, expected "
            f"(N, 28, 28) uint8; delete {root / class_name} so it is downloaded again"
        )
    labels = torch.as_tensor(dataset.targets).to(torch.int64)
    if labels.shape != (len(images),):
        raise DataError(
            f"{class_name} in {root} holds {len(labels)} labels for {len(images)} images; "
            f"delete {root / class_name} so it is downloaded again"
        )
    return images.reshape(len(images), _PIXELS).to(torch.float32) / 255.0, labels


def _binarize_once(x: torch.Tensor, split: str) -> torch.Tensor:
    """One fixed Bernoulli draw per pixel, (N, D) -> (N, D) float32 of 0/1.

    Each split has its own seed, so the test split is the same binary images whether or not
    the training split was binarized too.
    """
    seed = int(np.random.SeedSequence([_BINARIZE_SEED, SPLITS.index(split)]).generate_state(1)[0])
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


def _official_splits(
    read: Callable[[bool], Tuple[torch.Tensor, ...]],
    wanted: Sequence[str],
    pixels: int,
    valid_size: int,
    what: str,
    train_size: int,
    folder: Path,
) -> Tuple[Dict[str, torch.Tensor], ...]:
    """The wanted splits from an official train/test pair: the last ``valid_size`` official
    training images become the validation split; unwanted splits are empty (0, ``pixels``).
    ``read(train)`` gives an official split's tensors, the images (N, pixels) first (their
    labels (N,) after them, where there are); returns a {split: tensor} dict for each,
    likewise. ``what``, ``train_size`` and ``folder`` word the error when the training file
    holds too few images."""
    out: Tuple[Dict[str, torch.Tensor], ...] = ()
    if "train" in wanted or "valid" in wanted:
        full_train = read(True)
        if len(full_train[0]) <= valid_size:
            raise DataError(
                f"{what} has only {len(full_train[0])} training images, expected {train_size}; "
                f"delete {folder} so it is downloaded again"
            )
        out = tuple({"train": t[:-valid_size], "valid": t[-valid_size:]} for t in full_train)
    if "test" in wanted:
        test = read(False)
        out = tuple({**(out[i] if out else {}), "test": t} for i, t in enumerate(test))
    empty = (torch.zeros(0, pixels), torch.zeros(0, dtype=torch.int64))  # images, labels
    return tuple({s: d.get(s, empty[min(i, 1)]) for s in SPLITS} for i, d in enumerate(out))


def _load_torchvision(
    name: str,
    class_name: str,
    data_dir: PathLike | None,
    binarize: str | None,
    splits: Sequence[str],
    labelled: int | None = None,
) -> Dataset:
    """One torchvision dataset, reading only the official files that ``splits`` need.

    train and valid come from the official training file, test from the official test file;
    the splits not asked for are empty, (0, 784).
    """
    if binarize == "none":
        binarize = None  # the spelling a command line produces
    if binarize not in (None, "dynamic", "static"):
        raise DataError(
            f"dataset {name!r}: unknown binarize={binarize!r}; choose None, 'dynamic' or 'static'"
        )
    wanted = _check_splits(splits)
    root = _data_root(data_dir, "torchvision")
    images, labels = _official_splits(
        lambda train: _torchvision_images(class_name, root, train),
        wanted,
        _PIXELS,
        MNIST_VALID_SIZE,
        f"{class_name} in {root}",
        60000,
        root / class_name,
    )
    # Dynamic: the trainer redraws training pixels each step, but evaluation must see the same
    # images every time, so valid and test are drawn once here. Static: every split drawn once.
    to_binarize = {None: (), "dynamic": ("valid", "test"), "static": SPLITS}[binarize]
    for split in to_binarize:
        images[split] = _binarize_once(images[split], split)
    data = Dataset(
        name,
        binary=binarize is not None,
        image_shape=(28, 28),
        binarize="dynamic" if binarize == "dynamic" else None,
        levels=None if binarize is not None else _EIGHT_BIT_LEVELS,
        labels=labels,
        **images,
    )
    return data if labelled is None else data.keeping_labels(labelled)


@DATASETS.register("mnist")
def load_mnist(
    data_dir: PathLike | None = None,
    *,
    binarize: str | None = None,
    splits: Sequence[str] = SPLITS,
    labelled: int | None = None,
) -> Dataset:
    """MNIST: train = first 50000 official training images, valid = last 10000, test = official.

    Args:
        data_dir: torchvision root (holding ``MNIST/raw``); None uses ``$PYROVAE_DATA``, else
            ``~/.cache/pyrovae/torchvision``. Downloads there when the files are absent; a
            directory given here or in ``$PYROVAE_DATA`` must exist, only the default one is
            created.
        binarize: None for grayscale in [0, 1]; ``"dynamic"`` to resample training pixels each
            step (valid/test binarized once, seeded); ``"static"`` for every split binarized once.
        splits: The splits to load; the others are empty, (0, 784). The official training
            file is read only for train or valid, the official test file only for test.
        labelled: keep this many training labels, as many of each digit, and mark the others
            -1, unlabelled (``Dataset.keeping_labels``): semi-supervised training (M2,
            ``pyrovae.m2``). None keeps them all.

    Returns:
        Dataset with splits (N_split, 784) float32, image_shape (28, 28); levels 256 (values
        k/255) when not binarized, else None.

    Raises:
        DataError: If the data directory is missing, the files are absent and cannot be
            downloaded, a data file is not a regular file (a FIFO, a device, a dangling
            symbolic link: refused before torchvision opens it) or is over 1 GiB, or binarize or
            a split is unknown.
    """
    return _load_torchvision("mnist", "MNIST", data_dir, binarize, splits, labelled)


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(
    data_dir: PathLike | None = None,
    *,
    binarize: str | None = None,
    splits: Sequence[str] = SPLITS,
    labelled: int | None = None,
) -> Dataset:
    """Fashion-MNIST, split and binarized exactly like :func:`load_mnist`.

    Args:
        data_dir: torchvision root (holding ``FashionMNIST/raw``); None as for MNIST.
        binarize: None, ``"dynamic"`` or ``"static"``, as for MNIST.
        splits: The splits to load, as for MNIST.
        labelled: as for MNIST (as many of each garment).

    Returns:
        Dataset with splits (N_split, 784) float32, image_shape (28, 28), levels as for MNIST.

    Raises:
        DataError: As for MNIST.
    """
    return _load_torchvision("fashion-mnist", "FashionMNIST", data_dir, binarize, splits, labelled)


# --- CIFAR-10 -----------------------------------------------------------------------------------

#: The last this many official CIFAR-10 training images become the validation split.
CIFAR10_VALID_SIZE = 5000
CIFAR10_SHAPE: Tuple[int, int, int] = (3, 32, 32)  # (C, H, W), the order each row is flattened in
_CIFAR10_FOLDER = "cifar-10-batches-py"  # what the official archive extracts to
_CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
# The files torchvision reads, or writes when it downloads, under the root.
_CIFAR10_FILES = tuple(
    f"{_CIFAR10_FOLDER}/{name}"
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
) + (_CIFAR10_ARCHIVE,)


def _cifar10_images(root: Path, train: bool) -> torch.Tensor:
    """One official CIFAR-10 split as (N, 3072) float32 values k/255, each row an image
    flattened channel by channel, (C, H, W) = (3, 32, 32) in row-major order.

    The batch files are Python pickles, which can run code when read; torchvision compares
    each with the official MD5 checksum before unpickling it (and so refuses any other file),
    after which it reads every training batch for ``train`` and the test batch otherwise.
    """
    _check_torchvision_files("CIFAR10", root, _CIFAR10_FILES)
    where = (
        f"Put the official {_CIFAR10_ARCHIVE} (or the {_CIFAR10_FOLDER} folder it extracts to, "
        f"with data_batch_1 to data_batch_5, test_batch and batches.meta) in {root}"
    )
    dataset = _open_torchvision("CIFAR10", root, train, where)
    images = torch.as_tensor(dataset.data)  # torchvision's (N, H, W, C)
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (32, 32, 3):
        raise DataError(
            f"CIFAR10 in {root} holds {tuple(images.shape)} {images.dtype} images, expected "
            f"(N, 32, 32, 3) uint8; delete {root / _CIFAR10_FOLDER} so it is downloaded again"
        )
    # Back to channel-first, the order of the official files' rows and of the conv nets.
    chw = images.permute(0, 3, 1, 2).reshape(len(images), -1)
    return chw.to(torch.float32) / 255.0


@DATASETS.register("cifar10")
def load_cifar10(data_dir: PathLike | None = None, *, splits: Sequence[str] = SPLITS) -> Dataset:
    """CIFAR-10 in colour: train = first 45000 official training images, valid = last 5000,
    test = the official 10000.

    Args:
        data_dir: torchvision root (holding ``cifar-10-batches-py`` or the official
            ``cifar-10-python.tar.gz``); None uses ``$PYROVAE_DATA``, else
            ``~/.cache/pyrovae/torchvision``. Downloads there (163 MiB) when the files are
            absent; a directory given here or in ``$PYROVAE_DATA`` must exist, only the
            default one is created.
        splits: The splits to load; the others are empty, (0, 3072). The training batches are
            read only for train or valid, the test batch only for test (torchvision checks
            the checksums of all six either way).

    Returns:
        Dataset with splits (N_split, 3072) float32 of values k/255 for whole k in [0, 255],
        each row flattened as (C, H, W); image_shape (3, 32, 32), levels 256.

    Raises:
        DataError: If the data directory is missing, the files are absent (or fail
            torchvision's checksums) and cannot be downloaded, a data file is not a regular
            file (a FIFO, a device, a dangling symbolic link: refused before torchvision opens
            it) or is over 1 GiB, or a split is unknown.
    """
    wanted = _check_splits(splits)
    root = _data_root(data_dir, "torchvision")
    pixels = math.prod(CIFAR10_SHAPE)
    (images,) = _official_splits(
        lambda train: (_cifar10_images(root, train),),
        wanted,
        pixels,
        CIFAR10_VALID_SIZE,
        f"CIFAR10 in {root}",
        50000,
        root / _CIFAR10_FOLDER,
    )
    return Dataset(
        "cifar10",
        binary=False,
        image_shape=CIFAR10_SHAPE,
        levels=_EIGHT_BIT_LEVELS,
        **images,
    )
