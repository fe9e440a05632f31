"""Priors p(z): modules that return a Pyro distribution over z with event shape (z_dim,).

A prior is an ``nn.Module`` (so it may hold learned parameters) whose ``forward()`` returns a
distribution with batch shape () and event shape (z_dim,). The model places it inside its data
plate, which broadcasts it over data points and particles. ``log_prob(z)`` is its density at z;
a prior may override it with a faster computation of the same numbers (tested equal to tracing
``VAE.model``).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import pyro.distributions as dist
import torch
from torch import nn

from ..registry import Registry
from .distributions import FactorizedBernoulli

PRIORS: Registry = Registry("prior")


class Prior(nn.Module):
    """Base class: ``forward()`` -> distribution over z, batch shape (), event shape (z_dim,).
    ``latent`` is the kind of z it models (``"real"`` or ``"binary"``); the guide family must
    model the same."""

    latent = "real"

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z (..., z_dim) -> (...)."""
        return self().log_prob(z)

    def gaussian(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(loc (z_dim,), covariance (z_dim, z_dim)) if the prior is Gaussian, else ``None``.

        Used to compute exact log p(x) for linear-Gaussian models.
        """
        return None


@PRIORS.register("standard-normal")
class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        # Buffers, not parameters: they follow .to(device) and dtype changes but are not trained.
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        # -D log(2π)/2, a constant (not saved): float64 so that a model made float64 later has
        # it exact; a 0-dim tensor does not change the dtype of float32 arithmetic.
        self.register_buffer(
            "log_normalizer",
            torch.tensor(-0.5 * z_dim * math.log(2 * math.pi), dtype=torch.float64),
            persistent=False,
        )

    def forward(self) -> dist.Distribution:
        # validate_args=False: constant, valid parameters; checking them every step costs.
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if type(self).forward is not StandardNormal.forward:  # a subclass changed p(z)
            return super().log_prob(z)
        # -|z|²/2 - D log(2π)/2 on the training step's hot path: two autograd nodes instead
        # of Normal.log_prob's nine.
        return torch.add(self.log_normalizer, torch.linalg.vecdot(z, z), alpha=-0.5)

    def gaussian(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.loc, torch.diag(self.scale**2)


@PRIORS.register("bernoulli")
class BernoulliPrior(Prior):
    """p(z) = Π_d Bernoulli(z_d | sigmoid(logit_d)) with learned logits (started at 0, p = 1/2):
    the top layer of a sigmoid belief net. Discrete, so only score-function estimators
    (``score-function``, ``vimco``) can train a model with it."""

    latent = "binary"

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.logits = nn.Parameter(torch.zeros(z_dim))

    def forward(self) -> dist.Distribution:
        return FactorizedBernoulli(self.logits)
