"""Priors p(z): modules that return a Pyro distribution over z with event shape (z_dim,).

A prior is an ``nn.Module`` (so it may hold learned parameters) whose ``forward()`` returns a
distribution with batch shape () and event shape (z_dim,). The model places it inside its data
plate, which broadcasts it over data points and particles. ``log_prob(z)`` is its density at z;
a prior may override it with a faster computation of the same numbers (tested equal to tracing
``VAE.model``).
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import pyro.distributions as dist
import torch
from torch import nn

from ..registry import Registry
from .distributions import DiagonalGaussianMixture, FactorizedBernoulli, UniformMixture
from .guides import NormalizingFlow

#: Prior classes by name (``standard-normal``, ``vampprior``, ...);
#: ``@PRIORS.register(name)`` adds one.
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

    def bind(self, encoder: nn.Module, guide_family: nn.Module, x_dim: int, data_range) -> None:
        """Called by the ``VAE`` that holds this prior, with its encoder, guide family, data
        width and ``Likelihood.data_range`` (the VampPrior is made of them). Nothing by
        default."""


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


def _whole(name: str, value, minimum: int = 1) -> int:
    """An option that must be a whole number ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


@PRIORS.register("learned-gaussian")
class LearnedGaussian(Prior):
    """p(z) = N(loc, diag(scale²)) with learned loc (started at 0) and scale (started at 1)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.loc = nn.Parameter(torch.zeros(z_dim))
        self.log_scale = nn.Parameter(torch.zeros(z_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.log_scale.exp(), validate_args=False).to_event(1)

    def gaussian(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.loc, torch.diag(self.log_scale.exp() ** 2)


@PRIORS.register("mixture")
class GaussianMixturePrior(Prior):
    """p(z) = Σ_c π_c N(z; loc_c, diag(scale_c²)), a learned mixture of ``components``
    diagonal Gaussians (default 10). The means start spread as draws from N(0, I), the scales
    at 1 and the weights equal, so the components start apart."""

    def __init__(self, z_dim: int, components: int = 10) -> None:
        super().__init__(z_dim)
        self.components = _whole("components", components)
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, z_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, z_dim))

    def forward(self) -> dist.Distribution:
        return DiagonalGaussianMixture(self.logits, self.loc, self.log_scale.exp())


@PRIORS.register("vampprior")
class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) Σ_k q(z | u_k), the guide's own
    posteriors at K = ``components`` learned pseudo-inputs u_k (default 500).

    The pseudo-inputs live in the data's space: for data in [0, 1] (a Bernoulli likelihood)
    they are clipped to it (hardtanh, as the paper) and start near 0.05 (its initialisation,
    mean 0.05 and standard deviation 0.01); otherwise they are unconstrained and start as
    draws from N(0, 1). The prior is bound to the VAE's encoder and guide family, whose
    parameters it shares, when the VAE is built.

    With a diagonal Gaussian guide the mixture is a ``DiagonalGaussianMixture`` (its density
    by matrix multiplies); with another family, ``MixtureSameFamily`` of that family's
    distributions, which must accept z broadcast against its K components, its density the
    family's ``mixture_log_prob`` where it has one (the flow guide with coupling layers computes
    it for all K components at once). With the flow guide's iaf transform, scoring a z inverts
    each component's flow one dimension at a time: a warning says so when the prior is bound.
    """

    def __init__(self, z_dim: int, components: int = 500) -> None:
        super().__init__(z_dim)
        self.components = _whole("components", components)
        self._posterior: Tuple[nn.Module, ...] = ()  # (encoder, family): not submodules
        self.clip: Optional[Tuple[float, float]] = None

    def bind(self, encoder, guide_family, x_dim, data_range) -> None:
        # A plain tuple: the encoder and family belong to the VAE; registering them here too
        # would put them twice in the state dict.
        self._posterior = (encoder, guide_family)
        if isinstance(guide_family, NormalizingFlow) and guide_family.transform == "iaf":
            warnings.warn(
                "a VampPrior with the flow guide's iaf transform inverts each of its "
                f"{self.components} components' flows one dimension at a time to score a z "
                f"(z_dim = {guide_family.z_dim} passes of each layer's network, against one "
                "with coupling layers): a training step is z_dim times slower or worse; use "
                "--guide-option transform=coupling (guide_options={'transform': 'coupling'})",
                stacklevel=2,
            )
        if getattr(self, "pseudo_inputs", None) is not None:
            return
        if data_range == (0.0, 1.0):
            self.clip = data_range
            init = 0.05 + 0.01 * torch.randn(self.components, x_dim)
        else:
            init = torch.randn(self.components, x_dim)
        self.pseudo_inputs = nn.Parameter(init)

    def forward(self) -> dist.Distribution:
        if not self._posterior:
            raise RuntimeError(
                "the VampPrior is made of a VAE's encoder and guide: build the VAE with it "
                "(build_vae, or VAE(encoder, decoder, prior, ...)) before using it"
            )
        encoder, family = self._posterior
        u = self.pseudo_inputs
        if self.clip is not None:
            u = torch.nn.functional.hardtanh(u, *self.clip)
        h = encoder(u)
        q = family(h)  # batch shape (K,)
        base = q.base_dist if isinstance(q, dist.Independent) else None
        if isinstance(base, dist.Normal) and q.reinterpreted_batch_ndims == 1:
            return DiagonalGaussianMixture(
                torch.zeros(self.components, dtype=u.dtype, device=u.device), base.loc, base.scale
            )
        if hasattr(family, "mixture_log_prob"):
            return UniformMixture(q, lambda z: family.mixture_log_prob(z, h), u)
        mixing = dist.Categorical(
            logits=torch.zeros(self.components, dtype=u.dtype, device=u.device)
        )
        return dist.MixtureSameFamily(mixing, q, validate_args=False)


class _Flow(dist.TransformedDistribution):
    """A ``TransformedDistribution`` whose samples follow its dtype: Pyro's (1.9.2)
    ``AffineAutoregressive`` inverse starts from ``torch.zeros`` in the default dtype, which
    fails for a float64 model."""

    def sample(self, sample_shape=()) -> torch.Tensor:
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.base_dist.mean.dtype)
        try:
            return super().sample(sample_shape)
        finally:
            torch.set_default_dtype(default)


@PRIORS.register("flow")
class FlowPrior(Prior):
    """p(z): a learned normalizing flow on N(0, I), ``layers`` masked autoregressive
    transforms (default 2; Papamakarios et al., 2017), each an ``AffineAutoregressive`` of
    ``pyro.distributions.transforms`` whose net (a ``pyro.nn.AutoRegressiveNN``, each with its
    own random order of the dimensions) has one hidden layer of ``hidden`` units (default
    max(2 z_dim, 50)).

    The transforms are applied inverted (``.inv``): scoring a z, which the model does for every
    guide sample, is then one parallel pass of each net, and sampling (generation only) is the
    sequential direction. Each net's output layer starts at zero, so the prior starts as
    N(0, I) and moves away as it learns."""

    def __init__(self, z_dim: int, layers: int = 2, hidden: Optional[int] = None) -> None:
        super().__init__(z_dim)
        from pyro.distributions.transforms import AffineAutoregressive
        from pyro.nn import AutoRegressiveNN

        self.layers = _whole("layers", layers)
        width = _whole("hidden", hidden) if hidden is not None else max(2 * z_dim, 50)
        if z_dim < 2:
            raise ValueError(
                "the flow prior needs z_dim >= 2 (an autoregressive flow in 1-D is affine)"
            )
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        self.transforms = nn.ModuleList(
            AffineAutoregressive(AutoRegressiveNN(z_dim, [width]), stable=False)
            for _ in range(self.layers)
        )
        with torch.no_grad():
            for t in self.transforms:
                t.arn.layers[-1].weight.zero_()
                t.arn.layers[-1].bias.zero_()

    def forward(self) -> dist.Distribution:
        base = dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)
        return _Flow(base, [t.inv for t in self.transforms])
