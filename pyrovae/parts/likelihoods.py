"""Likelihoods p(x | decoder output): modules turning decoder output into a distribution over x.

A likelihood says how many decoder outputs it needs per data dimension (``out_features``),
turns them into a distribution with event shape (x_dim,), checks that data suits it, and gives the
mean of x for plots. ``bernoulli`` is for binary pixels, ``discretized-logistic`` for 8-bit
values k/255 (colour or grey images), the Gaussians for any real data.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import pyro.distributions as dist
import torch
from torch import nn

from ..config import Rule
from ..data import off_grid_value
from ..registry import Registry
from .distributions import DiscretizedLogistic, FactorizedBernoulli

#: Likelihood classes by name (``bernoulli``, ``gaussian``, ...);
#: ``@LIKELIHOODS.register(name)`` adds one.
LIKELIHOODS: Registry = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class. ``forward(out)`` with ``out`` (..., out_features) -> distribution with batch
    shape (...) and event shape (x_dim,).

    ``data_range``: the interval the data lies in, (low, high), or ``None`` for any real.
    ``discrete``: whether p(x | z) is a probability mass (so log p(x) <= 0 for every x).
    ``levels``: L when the likelihood models values k / (L - 1) only (the discretized
    logistic: 256), else ``None``; its log p(x) is then also reported in bits per dimension.
    """

    data_range: Optional[Tuple[float, float]] = None
    discrete = False
    levels: Optional[int] = None

    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.x_dim = x_dim

    @property
    def out_features(self) -> int:
        """How many decoder outputs this likelihood consumes."""
        return self.x_dim

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x | decoder output], shape (..., x_dim)."""
        raise NotImplementedError

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Raise ``ValueError`` if ``x`` (N, x_dim) is not data this likelihood can score."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"{what} has shape {tuple(x.shape)}, expected (N, {self.x_dim}): the model was "
                f"built for {self.x_dim}-dimensional data"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{what} contains NaN or infinite values; clean the data first")

    def noise_variance(self) -> Optional[torch.Tensor]:
        """Per-dimension variance (x_dim,) if x | out is N(out, diag(var)), else ``None``."""
        return None


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """x_d ~ Bernoulli(sigmoid(out_d)): the decoder outputs logits. Data must be 0 or 1."""

    data_range = (0.0, 1.0)
    discrete = True

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return FactorizedBernoulli(out)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        super().check_data(x, what)
        if not ((x == 0) | (x == 1)).all():
            bad = x[(x != 0) & (x != 1)][0].item()
            raise ValueError(
                f"the Bernoulli likelihood needs binary data (0 or 1), but {what} holds the value "
                f"{bad:g}; binarize the data (e.g. --binarize dynamic for mnist) or use "
                "--likelihood gaussian"
            )


# A noise scale that float32 holds with room to spare (its square too).
SIGMA = Rule("number", positive=True, minimum=1e-15, maximum=1e15)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(Likelihood):
    """x_d ~ N(out_d, sigma²) with a fixed ``sigma``."""

    def __init__(self, x_dim: int, sigma: float = 1.0) -> None:
        super().__init__(x_dim)
        sigma = SIGMA.check("sigma", sigma)
        self.register_buffer("scale", torch.full((x_dim,), float(sigma)))

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.Normal(out, self.scale, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def noise_variance(self) -> torch.Tensor:
        return self.scale**2


@LIKELIHOODS.register("gaussian-learned")
class LearnedGaussianLikelihood(Likelihood):
    """x_d ~ N(out_d, sigma_d²) with a learned per-dimension ``sigma_d`` (initialised at ``sigma``),
    or with ``isotropic=True`` one learned ``sigma`` shared by every dimension.

    The variance is a free parameter, not a decoder output, so a linear decoder keeps the model
    linear-Gaussian (and its log p(x) exact): factor analysis, or with ``isotropic=True``
    probabilistic PCA, whose maximum likelihood is known in closed form (``pyrovae.ppca``).
    """

    def __init__(self, x_dim: int, sigma: float = 1.0, isotropic: bool = False) -> None:
        super().__init__(x_dim)
        sigma = SIGMA.check("sigma", sigma)
        self.isotropic = Rule("bool").check("isotropic", isotropic)
        shape = () if self.isotropic else (x_dim,)
        self.log_scale = nn.Parameter(torch.full(shape, math.log(sigma)))

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        scale = self.log_scale.exp().expand(out.shape[-1:])
        return dist.Normal(out, scale, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def noise_variance(self) -> torch.Tensor:
        return (2 * self.log_scale).exp().expand(self.x_dim)


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """x_d ~ DiscretizedLogistic(loc_d, log_scale_d): a logistic discretized to the 256 values
    k/255 of 8-bit colour (``pyrovae.parts.distributions.DiscretizedLogistic``), with its
    location and log scale per sub-pixel from the decoder. ``out_features`` is 2 x_dim: the
    first x_dim outputs are the locations, the last x_dim the log scales (a ``conv`` decoder
    writes them as two images, in the data's (C, H, W) order). No options. Data must be
    values k/255 (``cifar10``, ``mnist`` and ``fashion-mnist`` without ``--binarize``).
    """

    data_range = (0.0, 1.0)
    discrete = True
    levels = DiscretizedLogistic.levels

    @property
    def out_features(self) -> int:
        return 2 * self.x_dim

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        """``out`` (..., 2 x_dim) -> batch shape (...), event shape (x_dim,)."""
        loc, log_scale = out.split(self.x_dim, dim=-1)
        return DiscretizedLogistic(loc, log_scale, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x | out], (..., x_dim), in [0, 1]."""
        loc, log_scale = out.split(self.x_dim, dim=-1)
        return DiscretizedLogistic(loc, log_scale, validate_args=False).mean

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        super().check_data(x, what)
        check_8bit(x, what, self.levels, "discretized-logistic", "gaussian")


def check_8bit(x: torch.Tensor, what: str, levels: int, name: str, instead: str) -> None:
    """Raise ``ValueError`` unless ``x`` holds only values k / (levels - 1): the data of the
    ``name`` likelihood, which says to scale the images or use ``instead``."""
    bad = off_grid_value(x, levels)
    if bad is not None:
        raise ValueError(
            f"the {name} likelihood needs 8-bit data, values k/255 for whole k from 0 to 255, "
            f"but {what} holds the value {bad:.6g}; scale 8-bit images by 1/255 (as the "
            "cifar10, mnist and fashion-mnist loaders do, without --binarize), or use "
            f"--likelihood {instead}"
        )
