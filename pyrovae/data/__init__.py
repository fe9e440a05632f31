"""Datasets, chosen by name: binarized MNIST, (Fashion-)MNIST and small synthetic sets.

Every loader returns a :class:`Dataset` holding three float32 tensors of flattened examples,
``(N, D)`` each, and is registered in :data:`DATASETS` so the command line can pick it by name::

    data = load_dataset("binarized-mnist", data_dir="/data/binarized_mnist")
    data = load_dataset("linear-gaussian", x_dim=5, seed=3)

Every problem with the data itself (a missing file that cannot be downloaded, a truncated or
non-binary file, an unknown option) raises :class:`DataError`, whose message says what was wrong
and how to fix it.

This package holds :class:`Dataset`, :class:`DataError`, :data:`DATASETS`, :func:`load_dataset`
and the helpers the sources share; each source is a module that registers its loaders when
``pyrovae.data`` is imported:

- :mod:`pyrovae.data.binarized_mnist`: statically binarized MNIST from ``.amat`` files.
- :mod:`pyrovae.data.vision`: MNIST and Fashion-MNIST through torchvision.
- :mod:`pyrovae.data.synthetic`: linear-Gaussian, ring and 2-D Gaussian-mixture samples.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Tuple, Union

import torch

from pyrovae.linear_gaussian import LinearGaussian
from pyrovae.registry import Registry

PathLike = Union[str, "os.PathLike[str]"]
SPLITS: Tuple[str, ...] = ("train", "valid", "test")
_PIXELS = 784  # values in one flattened 28x28 MNIST image


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


# The source modules import the names above and register their loaders in DATASETS, so they are
# imported last.
from pyrovae.data.binarized_mnist import (  # noqa: E402
    BINARIZED_MNIST_URL,
    CANONICAL_ROWS,
    load_binarized_mnist,
    read_amat,
)
from pyrovae.data.synthetic import load_gmm2d, load_linear_gaussian, load_ring  # noqa: E402
from pyrovae.data.vision import MNIST_VALID_SIZE, load_fashion_mnist, load_mnist  # noqa: E402

__all__ = [
    "BINARIZED_MNIST_URL",
    "CANONICAL_ROWS",
    "DATASETS",
    "MNIST_VALID_SIZE",
    "SPLITS",
    "DataError",
    "Dataset",
    "PathLike",
    "load_binarized_mnist",
    "load_dataset",
    "load_fashion_mnist",
    "load_gmm2d",
    "load_linear_gaussian",
    "load_mnist",
    "load_ring",
    "read_amat",
]
