"""Guide families q(z | x): modules turning encoder output into a distribution over z.

A family says how many encoder outputs it needs (``in_features``) and maps them to a distribution
with event shape (z_dim,). With ``reparameterized=False`` the distribution reports
``has_rsample = False``, so Pyro's ELBOs score the latent site with the score-function
(REINFORCE) estimator instead of differentiating through the sample.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .distributions import FactorizedBernoulli
from .registry import Registry

GUIDES: Registry = Registry("guide family")


class ScoreFunctionNormal(dist.Normal):
    """A Normal whose samples are not reparameterized (``has_rsample`` is False).

    Why a class and not ``Normal(...).to_event(1).has_rsample_(False)``: in Pyro 1.9 that raises
    ``AttributeError`` (``Independent.has_rsample`` is a read-only property), and setting the flag
    on the base ``Normal`` instead is lost when a plate expands the distribution. A class
    attribute survives both ``to_event`` and ``expand``.
    """

    has_rsample = False


class GuideFamily(nn.Module):
    """Base class. ``forward(h)`` with ``h`` (..., in_features) -> distribution with batch shape
    (...) and event shape (z_dim,). ``reparameterizable``: whether the family can give
    pathwise gradients at all (a discrete family cannot)."""

    reparameterizable = True

    def __init__(self, z_dim: int, reparameterized: bool = True) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.reparameterized = reparameterized

    @property
    def in_features(self) -> int:
        raise NotImplementedError


@GUIDES.register("diagonal-gaussian")
class DiagonalGaussian(GuideFamily):
    """q(z|x) = N(loc(x), diag(scale(x)²)); the encoder outputs (loc, log scale)."""

    @property
    def in_features(self) -> int:
        return 2 * self.z_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, log_scale = h.split(self.z_dim, dim=-1)
        normal = dist.Normal if self.reparameterized else ScoreFunctionNormal
        return normal(loc, log_scale.exp(), validate_args=False).to_event(1)


@GUIDES.register("bernoulli")
class BernoulliFamily(GuideFamily):
    """q(z|x) = Π_d Bernoulli(z_d | sigmoid(h_d(x))): binary latents, the encoder outputs one
    logit per latent. Never reparameterized: train with ``score-function`` or ``vimco``."""

    reparameterizable = False

    @property
    def in_features(self) -> int:
        return self.z_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return FactorizedBernoulli(h)
