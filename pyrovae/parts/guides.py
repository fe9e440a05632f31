"""Guide families q(z | x): modules turning encoder output into a distribution over z.

A family says how many encoder outputs it needs (``in_features``) and maps them to a distribution
with event shape (z_dim,). ``draw`` samples K particles and gives their log density; the VAE's
direct producer calls it, and a family may override it with a faster computation of the same
numbers (the tests hold every family's ``draw`` equal to tracing ``VAE.guide``).

Whether a sample is reparameterized is the estimator's choice, passed to ``draw`` (and, for a
traced guide, asked for by a Pyro handler), never a setting of the family.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import pyro.distributions as dist
import torch
from torch import nn

from ..particles import NotApplicable
from ..registry import Registry
from .distributions import FactorizedBernoulli

GUIDES: Registry = Registry("guide family")

LogDensity = Callable[[], torch.Tensor]
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class GuideFamily(nn.Module):
    """Base class. ``forward(h)`` with ``h`` (..., in_features) -> distribution with batch shape
    (...) and event shape (z_dim,).

    Class attributes: ``latent``, the kind of z it models (``"real"`` or ``"binary"``; the
    prior must model the same); ``reparameterizable``, whether it can give pathwise gradients
    at all (a discrete family cannot).
    """

    latent = "real"
    reparameterizable = True

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim

    @property
    def in_features(self) -> int:
        raise NotImplementedError

    def draw(
        self, h: torch.Tensor, k: int, reparameterized: Optional[bool]
    ) -> Tuple[torch.Tensor, LogDensity, LogDensity]:
        """K samples z ~ q(z | h) and their log density.

        Args:
            h: encoder output, (B, in_features).
            k: particles per data point.
            reparameterized: sample with ``rsample`` (z differentiable in the family's inputs),
                with ``sample`` (False), or with ``rsample`` where the family has it (None).

        Returns:
            (z (k, B, z_dim), log_q, log_q_stopped): the last two are functions of no
            arguments giving (k, B) tensors, log q(z | h) and the same with ``h`` cut from the
            graph (the path through z kept). They draw no random numbers.
        """
        q = self(h)
        if reparameterized is None:
            reparameterized = self.reparameterizable
        if reparameterized and not self.reparameterizable:
            raise NotApplicable(
                f"the {type(self).__name__} guide's latent is discrete and cannot be "
                "reparameterized; use a score-function estimator (score-function, vimco)"
            )
        z = q.rsample((k,)) if reparameterized else q.sample((k,))
        return z, (lambda: q.log_prob(z)), (lambda: self.stopped(h).log_prob(z))

    def stopped(self, h: torch.Tensor) -> dist.Distribution:
        """q(z | h) with ``h`` and the family's own parameters cut from the graph: scoring a
        sample under it leaves the gradient's path through z alone (STL, DReG)."""
        frozen = {name: p.detach() for name, p in self.named_parameters()}
        return torch.func.functional_call(self, frozen, (h.detach(),))


@GUIDES.register("diagonal-gaussian")
class DiagonalGaussian(GuideFamily):
    """q(z|x) = N(loc(x), diag(scale(x)²)); the encoder outputs (loc, log scale)."""

    @property
    def in_features(self) -> int:
        return 2 * self.z_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, log_scale = h.split(self.z_dim, dim=-1)
        return dist.Normal(loc, log_scale.exp(), validate_args=False).to_event(1)

    def draw(self, h: torch.Tensor, k: int, reparameterized: Optional[bool]):
        if reparameterized is False or type(self).forward is not DiagonalGaussian.forward:
            # (A subclass that changes the distribution gets the generic computation.)
            return super().draw(h, k, reparameterized)
        # z = loc + scale ε, so log q(z) = Σ -ε²/2 - log scale - log 2π/2 as a function of
        # the parameters too: the density from ε directly, its ε part computed without
        # autograd, which leaves two autograd nodes of Normal.log_prob's nine on the training
        # step's hot path. Same random numbers as Normal.rsample.
        loc, log_scale = h.split(self.z_dim, dim=-1)
        eps = torch.randn((k,) + loc.shape, dtype=loc.dtype, device=loc.device)
        z = torch.addcmul(loc, log_scale.exp(), eps)

        def log_q() -> torch.Tensor:
            constant = torch.linalg.vecdot(eps, eps).mul_(-0.5).sub_(self.z_dim * HALF_LOG_2PI)
            return constant - log_scale.sum(-1)

        return z, log_q, (lambda: self.stopped(h).log_prob(z))


@GUIDES.register("bernoulli")
class BernoulliFamily(GuideFamily):
    """q(z|x) = Π_d Bernoulli(z_d | sigmoid(h_d(x))): binary latents, the encoder outputs one
    logit per latent. Never reparameterized: train with ``score-function`` or ``vimco``."""

    latent = "binary"
    reparameterizable = False

    @property
    def in_features(self) -> int:
        return self.z_dim

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        return FactorizedBernoulli(h)
