"""Synthetic datasets sampled from seeded models: linear-Gaussian, ring and a 2-D mixture."""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Dict, Iterator, Sequence, Tuple

import numpy as np
import torch

from pyrovae import runtime
from pyrovae.data import (
    DATASETS,
    SPLITS,
    DataError,
    Dataset,
    PathLike,
    _is_int,
    _one_line,
    _shown,
)
from pyrovae.linear_gaussian import LinearGaussian

# --- synthetic datasets ------------------------------------------------------------------------

# Upper bounds of the integer options. Far above any sane use, they keep every size (and every
# product of sizes: rows x x_dim, x_dim x z_dim, z_dim²) far inside torch's int64; whether the
# tensors fit in memory is checked separately, against the memory left.
_MAX_ROWS = 10**10  # per split
_MAX_X_DIM = 10**7
_MAX_Z_DIM = 10**6
_MAX_COMPONENTS = 10**6
_MAX_SEED = 2**64 - 1
# Scale options (noise_std, radius, std) lie in [1e-6, 1e6]: the samples and noise_std²
# then stay finite, nonzero and distinct from the means in float32.
_MIN_SCALE, _MAX_SCALE = 1e-6, 1e6
_FLOAT32_BYTES = 4


def _check_int(name: str, value: object, minimum: int, maximum: int) -> int:
    """``value`` as an int (numpy integers too); DataError naming option ``name`` otherwise."""
    if not _is_int(value) or not minimum <= value <= maximum:
        upper = "2**64 - 1" if maximum == 2**64 - 1 else str(maximum)
        raise DataError(
            f"option {name} must be an integer in [{minimum}, {upper}], got {_shown(value)}"
        )
    return int(value)


def _check_scale(name: str, value: object) -> float:
    """``value`` as a float in [1e-6, 1e6]; DataError naming option ``name`` otherwise."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not _MIN_SCALE <= value <= _MAX_SCALE  # False for NaN; no float() of a huge int
    ):
        raise DataError(
            f"option {name} must be a number in [{_MIN_SCALE:g}, {_MAX_SCALE:g}] (so that the "
            f"samples stay finite in float32), got {_shown(value)}"
        )
    return float(value)


def _gib(n_bytes: float) -> str:
    gib = n_bytes / 2**30
    return f"{gib:.1f}" if gib >= 0.1 else f"{gib:.2g}"


def _check_memory(
    dataset: str,
    sizes: Dict[str, int],
    width: str,
    row_bytes: int,
    scratch_row_bytes: int,
    model: Tuple[str, int, Sequence[str]] | None = None,
) -> None:
    """Refuse, before anything is allocated, a dataset that would not fit in the memory left.

    Args:
        dataset: The dataset's name, for the message.
        sizes: Rows per split.
        width: The values in one row, e.g. ``"2"`` or ``"x_dim = 10"``, for the message.
        row_bytes: Bytes one kept row takes.
        scratch_row_bytes: Bytes of temporaries per row while the largest split is drawn.
        model: ``(what, bytes, options)`` for the tensors besides the rows (e.g. a linear
            model's weights), with the options that size them.

    Raises:
        DataError: Naming the options to lower and the GiB needed against the GiB free.
    """
    free = runtime.available_memory()
    if free is None:  # not Linux: nothing to check against
        return
    rows = sum(sizes.values())
    data_bytes = rows * row_bytes + max(sizes.values()) * scratch_row_bytes
    model_what, model_bytes, model_options = model if model is not None else ("", 0, ())
    if data_bytes + model_bytes <= free:
        return
    if data_bytes >= model_bytes:
        lower = f"n_{max(SPLITS, key=lambda s: sizes[s])}"  # the largest split
    else:
        lower = " or ".join(model_options)
    model_part = f" and {model_what} about {_gib(model_bytes)} GiB" if model is not None else ""
    raise DataError(
        f"dataset {dataset!r}: n_train + n_valid + n_test = {rows} rows of {width} values need "
        f"about {_gib(data_bytes)} GiB{model_part}, {_gib(free)} GiB is free: lower {lower}"
    )


@contextlib.contextmanager
def _allocation_guard(dataset: str) -> Iterator[None]:
    """Turn torch's failure to allocate (where the memory left could not be read beforehand,
    or another process took it meanwhile) into a DataError."""
    try:
        yield
    except MemoryError:
        raise DataError(
            f"dataset {dataset!r}: out of memory while drawing the samples; lower n_train, "
            "n_valid, n_test or the dimensions"
        ) from None
    except RuntimeError as exc:
        if "allocate" not in str(exc):
            raise
        raise DataError(
            f"dataset {dataset!r}: out of memory while drawing the samples ({_one_line(exc)}); "
            "lower n_train, n_valid, n_test or the dimensions"
        ) from None


def _generators(
    seed: object, n_train: object, n_valid: object, n_test: object
) -> Tuple[Dict[str, torch.Generator], Dict[str, int]]:
    """Validate the common options; one generator per purpose, derived from ``seed``.

    Separate streams keep each split fixed when another split's size changes.

    Returns:
        ``({"params", "train", "valid", "test"} -> torch.Generator, {split -> size})``.
    """
    seed = _check_int("seed", seed, 0, _MAX_SEED)
    sizes = {
        "train": _check_int("n_train", n_train, 1, _MAX_ROWS),
        "valid": _check_int("n_valid", n_valid, 1, _MAX_ROWS),
        "test": _check_int("n_test", n_test, 1, _MAX_ROWS),
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

    Raises:
        DataError: If an option is out of range (sizes up to 1e10 rows per split, x_dim up to
            1e7, z_dim up to 1e6, noise_std in [1e-6, 1e6]), or the rows and the model would
            not fit in the memory left.
    """
    generators, sizes = _generators(seed, n_train, n_valid, n_test)
    x_dim = _check_int("x_dim", x_dim, 1, _MAX_X_DIM)
    z_dim = _check_int("z_dim", z_dim, 1, _MAX_Z_DIM)
    noise_std = _check_scale("noise_std", noise_std)
    # The model: weight, bias, noise variance, prior mean, prior covariance and its Cholesky
    # factor. Drawing a split holds (rows, z_dim) noise and latents and (rows, x_dim) terms.
    model_values = x_dim * z_dim + 2 * x_dim + z_dim + 2 * z_dim**2
    model = (
        f"the model (x_dim*z_dim = {x_dim * z_dim} weights, z_dim² = {z_dim**2} prior covariance)",
        _FLOAT32_BYTES * model_values,
        ("z_dim", "x_dim") if z_dim**2 > x_dim * z_dim else ("x_dim", "z_dim"),
    )
    row, scratch = _FLOAT32_BYTES * x_dim, _FLOAT32_BYTES * 3 * (x_dim + z_dim)
    _check_memory("linear-gaussian", sizes, f"x_dim = {x_dim}", row, scratch, model)
    with _allocation_guard("linear-gaussian"):
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

    Raises:
        DataError: If an option is out of range (sizes up to 1e10 rows per split), or the rows
            would not fit in the memory left.
    """
    generators, sizes = _generators(seed, n_train, n_valid, n_test)
    # Drawing a split holds z, z / 10 and z / ‖z‖ beside the kept rows.
    _check_memory("ring", sizes, "2", 2 * _FLOAT32_BYTES, 3 * 2 * _FLOAT32_BYTES)
    splits = {}
    with _allocation_guard("ring"):
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

    Raises:
        DataError: If an option is out of range (sizes up to 1e10 rows per split, n_components
            up to 1e6, radius and std in [1e-6, 1e6]), or the rows would not fit in the memory
            left.
    """
    generators, sizes = _generators(seed, n_train, n_valid, n_test)
    n_components = _check_int("n_components", n_components, 1, _MAX_COMPONENTS)
    radius, std = _check_scale("radius", radius), _check_scale("std", std)
    # Drawing a split holds the int64 components, the picked means, the noise and the scaled
    # noise; the means take about 8 float32 values per component while they are built.
    model = (
        f"the means of n_components = {n_components} components",
        8 * _FLOAT32_BYTES * n_components,
        ("n_components",),
    )
    _check_memory("gmm2d", sizes, "2", 2 * _FLOAT32_BYTES, 4 * 2 * _FLOAT32_BYTES, model)
    splits = {}
    with _allocation_guard("gmm2d"):
        angles = 2 * math.pi * torch.arange(n_components, dtype=torch.float32) / n_components
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)
        for split in SPLITS:
            gen = generators[split]
            component = torch.randint(n_components, (sizes[split],), generator=gen)
            splits[split] = means[component] + std * torch.randn(sizes[split], 2, generator=gen)
    return Dataset("gmm2d", binary=False, **splits)
