"""MNIST and Fashion-MNIST through torchvision, split 50000/10000/10000 and optionally binarized."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pyrovae.data import _PIXELS, DATASETS, SPLITS, DataError, Dataset, PathLike, _data_root

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
