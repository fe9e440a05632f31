"""Bits per dimension: log p(x) of 8-bit data as image-modelling papers report it.

For data whose values are k / (L - 1), k = 0 .. L - 1 (L = 256 for 8-bit images scaled by
1/255; ``Dataset.levels``), a model's log p(x) in nats per data point becomes

    bits/dim = -log P(x) / (D ln 2)

when p(x | z) is a probability mass over those values (``Likelihood.discrete``: the
discretized logistic, Bernoulli on binary data). A density (the Gaussians) is first turned into
masses over bins: the convention here is the bins the discretized logistic uses, width 1 / (L -
1) = 1/255 centred on each value (the unit interval around k on the 0..255 scale), so that
P(x) ≈ p(x) (1/255)^D and

    bits/dim = (-log p(x) + D log(L - 1)) / (D ln 2).

That is the 8-bit figure of a density p that is smooth at the scale of a bin; with a density
integrated over uniformly dequantized data y = (k + u) / 256 instead, the bins would be 1/256
wide and the correction log2(256/255) = 0.0056 bits/dim larger. The Gaussian likelihoods are
not trained on dequantized data, so their figure is this approximation, not a bound: a learned
variance that shrinks below the bin width makes it meaningless (it can then drop below 0).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, TypeVar, Union

import torch

from ..data import MAX_LEVELS, off_grid_value

R = TypeVar("R")
Number = Union[float, torch.Tensor]


def bits_per_dim(log_px: Number, x_dim: int, discrete: bool, levels: int = 256) -> Number:
    """log p(x) in nats per data point -> bits per dimension (see the module docstring).

    Args:
        log_px: log p(x) of data points in nats: a float, or a tensor of any shape (...).
        x_dim: D, the values per data point.
        discrete: whether log p(x) is a log probability mass over the grid values; else a
            log density, corrected for bins of width 1 / (levels - 1).
        levels: L, the number of grid values (k / (L - 1)).

    Returns:
        Bits per dimension, the shape (and type) of ``log_px``.

    >>> round(bits_per_dim(-3072 * math.log(256), 3072, discrete=True), 12)
    8.0
    """
    nats = -log_px if discrete else -log_px + x_dim * math.log(levels - 1)
    return nats / _nats_per_bit(x_dim)


def _nats_per_bit(x_dim: int) -> float:
    """The nats per data point that one bit per dimension is: D ln 2."""
    return x_dim * math.log(2)


def data_levels(likelihood, x: torch.Tensor, levels: Optional[int] = None) -> Optional[int]:
    """The L to report bits per dimension for, or None where there is none: ``levels``, else
    the likelihood's own; checked, with the data.

    Args:
        likelihood: The model's likelihood; its ``levels`` (the discretized logistic's 256) is
            the default for ``levels``.
        x: The data points to evaluate, (n, D); checked to be on the grid of L values.
        levels: L when the data are values k / (L - 1) (``Dataset.levels``); None: the
            likelihood's own.

    Returns:
        L, or None when neither ``levels`` nor the likelihood gives one.

    Raises:
        ValueError: If ``levels`` is not an integer from 2 to ``MAX_LEVELS``, disagrees with the
            likelihood's own, or a value of ``x`` is not on the grid.
    """
    own = getattr(likelihood, "levels", None)
    if levels is None:
        levels = own
    if levels is None:
        return None
    integer = isinstance(levels, numbers.Integral) and not isinstance(levels, bool)
    if not (integer and 2 <= levels <= MAX_LEVELS):
        raise ValueError(
            f"levels must be None or an integer from 2 to {MAX_LEVELS} (256 for 8-bit images), "
            f"got {levels!r}"
        )
    levels = int(levels)
    if own is not None and own != levels:
        raise ValueError(
            f"the {type(likelihood).__name__} models {own} levels, but levels={levels} was given"
        )
    bad = off_grid_value(x, levels)
    if bad is not None:
        raise ValueError(
            f"bits per dimension need data of {levels} levels, values k/{levels - 1}, but the "
            f"data hold the value {bad:.6g}; leave levels out for data that are not"
        )
    return levels


def with_bits_per_dim(result: R, x_dim: int, discrete: bool, levels: int) -> R:
    """``result`` (a ``LogLikelihood`` or ``AISResult``, in nats) with ``bits_per_dim`` and
    ``bits_per_dim_stderr`` set from its ``log_px`` and ``log_px_stderr``.

    Args:
        result: An evaluation's result: the mean of log p(x) over data points in nats, and the
            standard error of that mean.
        x_dim: D, the values per data point.
        discrete: Whether the likelihood is a probability mass (``Likelihood.discrete``).
        levels: L, the data's grid values (``data_levels``).

    Returns:
        A copy of ``result`` with the two fields set: the mean over the points in bits per
        dimension (the conversion is affine, so it is the mean of the points' figures) and its
        standard error.
    """
    return dataclasses.replace(
        result,
        bits_per_dim=bits_per_dim(result.log_px, x_dim, discrete, levels),
        # A spread of log p(x) converts by the scale alone: the offset cancels.
        bits_per_dim_stderr=result.log_px_stderr / _nats_per_bit(x_dim),
    )
