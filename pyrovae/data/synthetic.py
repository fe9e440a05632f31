"""Synthetic datasets sampled from seeded models: linear-Gaussian, ring and a 2-D mixture."""

from __future__ import annotations

import math
import numbers
from typing import Dict, Tuple

import numpy as np
import torch

from pyrovae.data import DATASETS, SPLITS, DataError, Dataset, PathLike, _is_int
from pyrovae.linear_gaussian import LinearGaussian

# --- synthetic datasets ------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int (numpy integers too); DataError naming option ``name`` otherwise."""
    if not _is_int(value) or value < minimum:
        raise DataError(f"option {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positive(name: str, value: object) -> float:
    """``value`` as a finite positive float; DataError naming option ``name`` otherwise."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not 0 < value < math.inf
    ):
        raise DataError(f"option {name} must be a finite positive number, got {value!r}")
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
