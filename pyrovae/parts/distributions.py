"""Distributions Pyro lacks in the form the hot paths need.

``DiagonalGaussianMixture`` is Pyro's ``MixtureSameFamily`` of diagonal Gaussians with a log
density computed by matrix multiplies; ``UniformMixture`` (at the end), its equal-weight mixture
of any family with a log density given by a faster function.

``DiscretizedLogistic`` is a logistic over 8-bit values k/255, the colour likelihood of image
models, which Pyro lacks (see its docstring).

``FactorizedBernoulli`` is ``dist.Bernoulli(logits=l).to_event(1)`` with a faster ``log_prob``.
Torch scores a Bernoulli through ``binary_cross_entropy_with_logits``, several passes over the
(particles, batch, pixels) logits with ``exp`` and ``log`` that, on CPUs where torch sends them
to MKL's vector math library, run at about 1 ns per element; on the importance-weighted
evaluation that alone cost as much as the decoder's largest matrix multiply.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints

from ..data import on_grid

# The smallest normal float32: a sigmoid below it has lost relative precision, and so may a
# factor of a product below it.
_TINY32 = torch.finfo(torch.float32).tiny
# Products of 2**4 = 16 pixels: 784 -> 49 logarithms per image.
_HALVINGS = 4


def bernoulli_log_prob_sum(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Σ_d log Bernoulli(value_d | sigmoid(logits_d)) over the last dimension.

    Shapes: ``logits`` (..., D) and ``value`` (..., D) broadcast; returns their broadcast
    batch shape. Differentiable; ``value`` may be any real (the usual x·l - softplus(l)).
    """
    return (value * logits).sum(-1) - softplus(logits).sum(-1)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) elementwise, any shape, as max(x, 0) - log σ(|x|), with the absolute error
    of one float ulp of 1 (σ(|x|) lies in [½, 1]).

    Not ``F.softplus``: on the CPU it runs as a scalar loop, about 10x slower per element than
    torch's vectorized sigmoid and log (measured: 15 % of the default VAE's training step).
    max(x, 0) is written (x + |x|) / 2 so that autograd's derivative at 0 is σ(0) = ½ (a
    clamp's or relu's would be 0 there).
    """
    a = x.abs()
    return (x + a).mul_(0.5) - torch.log(torch.sigmoid(a))


def _bernoulli_log_prob_sum_no_grad(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The same sum for binary ``value``, without autograd, at a fraction of the cost.

    log Bernoulli(x | sigmoid(l)) = log sigmoid(s l) with s = 2x - 1, and a sum of logs is the
    log of a product. ``sigmoid`` is one fast vectorized pass; multiplying the two halves of
    the pixel dimension four times leaves a sixteenth of the logarithms to take. A product
    that stays a normal float32 has every partial product and factor normal too, so it is
    accurate to a few ulps; rows with a product below that range (very confidently wrong
    pixels) are recomputed in the exact softplus form, so the result never loses precision.
    """
    probs = torch.mul(logits, value * 2 - 1).sigmoid_()
    d = probs.shape[-1]
    for _ in range(_HALVINGS):
        if d % 2:
            break
        d //= 2
        probs = probs[..., :d].mul_(probs[..., d:])  # in place: the halves stay in cache
    probs = probs[..., :d]
    log_p = probs.log().sum(-1)
    if bool(probs.min() < _TINY32):
        bad = (probs < _TINY32).any(-1)
        full_logits, full_value = torch.broadcast_tensors(logits, value)
        log_p[bad] = bernoulli_log_prob_sum(full_logits[bad], full_value[bad])
    return log_p


class FactorizedBernoulli(dist.Independent):
    """Independent Bernoulli(sigmoid(logits)) pixels: event shape (D,), batch shape
    ``logits.shape[:-1]``; ``dist.Bernoulli(logits=logits).to_event(1)`` with a faster
    ``log_prob`` (see the module docstring). Argument checks are off: the likelihood checks the
    data once (``BernoulliLikelihood.check_data``) rather than on every score.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(dist.Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    @property
    def logits(self) -> torch.Tensor:
        """The logits of each pixel, (..., D)."""
        return self.base_dist.logits

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return FactorizedBernoulli(self.logits.expand(batch_shape + self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.logits
        if (
            logits.dtype == torch.float32
            and not (torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad))
            and bool(((value == 0) | (value == 1)).all())
        ):
            return _bernoulli_log_prob_sum_no_grad(logits, value)
        return bernoulli_log_prob_sum(logits, value)


class _Grid(constraints.Constraint):
    """The values k / (levels - 1), k = 0 .. levels - 1 (``pyrovae.data.on_grid``)."""

    is_discrete = True
    event_dim = 0

    def __init__(self, levels: int) -> None:
        self.levels = levels
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return on_grid(value, self.levels)


# The log scales a DiscretizedLogistic uses, clamped to these. At e^-9 (1.2e-4) a bin of width
# 1/255 holds 1 - 2.5e-7 of the mass when the location is at its centre, so smaller scales buy
# nothing but lost float32 precision in (x - loc) / scale; at e^9 the 256 bins are already
# nearly flat, and the bin width over the scale (their log-mass) stays far from underflow.
LOG_SCALE_BOUNDS = (-9.0, 9.0)


# The edges of the two outer bins (-inf and +inf), stood in for by a finite value so that the
# gradients stay finite: their terms come out exactly 0 all the same (below). Locations must be
# well inside ±1e30, as any sane decoder's are.
_FAR = 1e30


class DiscretizedLogistic(dist.TorchDistribution):
    """A logistic of location ``loc`` and scale exp(``log_scale``) over [0, 1], discretized to
    the ``levels`` = 256 values k/255: the bin of k is [(k - ½)/255, (k + ½)/255), width 1/255
    around its value, except that the first and last bins reach out to -∞ and +∞, so the 256
    masses sum to 1 (the single-logistic version of PixelCNN++'s and IAF's colour likelihood,
    without the mixture). Batch shape: ``loc`` and ``log_scale`` broadcast; event shape ();
    ``.to_event(1)`` makes the pixels of an image one event, as the likelihoods do.

    Pyro has no such distribution. ``pyro.distributions.OrderedLogistic`` is the same family
    in principle (cutpoints (e_k - loc) / scale), but it builds all 256 probabilities of every
    value, a (..., 256) tensor, as differences of sigmoids: 256 times the memory of an image
    batch, and no accuracy in the tails, where both sigmoids round to 1.

    log P(k) is computed as a sum of log-sigmoids. With a, b the bin's edges standardized,
    σ(b) - σ(a) = σ(b) σ(-a) (1 - e^-(b - a)) exactly, so

        log P(k) = log σ(b) + log σ(-a) + log(1 - e^-δ),    δ = b - a = 1 / (255 scale),

    with log σ(b) = 0 for the last bin and log σ(-a) = 0 and the last term 0 for the first
    and last bins (a = -∞, b = +∞). Every term is finite and accurate for any location (well
    inside ±1e30): no difference of two nearly equal numbers is taken, so the tiny masses far
    in a tail need no approximation by the density (PixelCNN++'s branch for bins below 1e-5).
    The three terms are summed as one log of a product of factors in (0, 1] (``log_prob``'s
    comments). The log scale is clamped to ``LOG_SCALE_BOUNDS``.

    Args:
        loc: Locations, any shape (...), on the data's [0, 1] scale (not constrained to it).
        log_scale: Log scales, broadcastable with ``loc``.

    ``log_prob(x)`` takes values k/255 (``round(255 x)`` is the bin: the likelihood checks the
    data once, ``DiscretizedLogisticLikelihood.check_data``); ``sample`` draws from the
    logistic and rounds to the nearest value, the edge bins taking everything beyond them;
    ``mean`` is exact.
    """

    levels = 256
    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = _Grid(levels)
    has_rsample = False

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, validate_args=None) -> None:
        self.loc, log_scale = torch.broadcast_tensors(loc, log_scale)
        self.log_scale = log_scale.clamp(*LOG_SCALE_BOUNDS)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return DiscretizedLogistic(
            self.loc.expand(batch_shape), self.log_scale.expand(batch_shape), validate_args=False
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log P(value) for values k/255, any shape broadcastable with the batch shape."""
        if self._validate_args:
            self._validate_sample(value)
        top = self.levels - 1
        k = torch.round(value * top)
        inner_upper, inner_lower = k < top, k > 0
        # Both edges from k by the same arithmetic, so that bin k's upper edge is bin k + 1's
        # lower edge to the last bit and the masses add up to 1 in float too. The outer bins'
        # edges are ±_FAR, so that their log σ terms are exactly 0 with no mask on the batch.
        upper = torch.where(inner_upper, (k + 0.5) / top, _FAR)
        lower = torch.where(inner_lower, (k - 0.5) / top, -_FAR)
        width = torch.where(inner_upper & inner_lower, 1.0, _FAR).to(k.dtype) / top
        inv_scale = torch.exp(-self.log_scale)
        b = (upper - self.loc) * inv_scale  # log σ(b) = log F(upper edge)
        minus_a = (self.loc - lower) * inv_scale  # log σ(-a) = log (1 - F(lower edge))
        delta = width * inv_scale  # log (1 - e^-δ): the width's term
        # log σ(x) = min(x, 0) + log σ(|x|), and 1 - e^-δ = tanh(δ/2) / σ(δ): every factor in
        # the one log lies in (0, 1] and none underflows (σ(|x|) >= ½, tanh(δ/2) >= 2e-7 at
        # the largest scale), so each term is exact to a few ulps, also far in a tail. Not
        # F.logsigmoid, log1p or expm1: on the CPU they run about 10x slower per element than
        # the vectorized sigmoid, tanh, exp and log (measured), and this log-mass is most of an
        # 8-bit model's evaluation. min(x, 0) is (x - |x|) / 2, whose autograd derivative is
        # right at 0 too. For an outer bin, x or δ is about 1e30 / scale: min is 0, σ and tanh
        # are 1, and so are their terms' derivatives 0.
        abs_b, abs_a = b.abs(), minus_a.abs()
        mins = (b - abs_b) + (minus_a - abs_a)
        ratio = torch.sigmoid(abs_b) * torch.sigmoid(abs_a) * torch.tanh(delta * 0.5)
        return torch.add(torch.log(ratio / torch.sigmoid(delta)), mins, alpha=0.5)

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Values k/255, shape ``sample_shape + batch_shape``."""
        with torch.no_grad():
            top = self.levels - 1
            y = dist.Logistic(self.loc, self.log_scale.exp(), validate_args=False).sample(
                sample_shape
            )
            return torch.round(y * top).clamp(0, top) / top

    @property
    def mean(self) -> torch.Tensor:
        """E[x] = Σ_k (k/255) P(k) = 1 - (1/255) Σ_j F(e_j) over the 255 inner edges e_j =
        (j - ½)/255 (summation by parts), shape: the batch shape. Edges are summed 8 at a
        time, so the memory stays a few times the batch's (for the plots' 1000 samples)."""
        top = self.levels - 1
        j = torch.arange(1, self.levels, dtype=self.loc.dtype, device=self.loc.device)
        edges = (j - 0.5) / top
        loc, inv_scale = self.loc.unsqueeze(-1), torch.exp(-self.log_scale).unsqueeze(-1)
        total = torch.zeros_like(self.loc)
        for part in edges.split(8):
            total = total + torch.sigmoid((part - loc) * inv_scale).sum(-1)
        return 1 - total / top


class DiagonalGaussianMixture(dist.TorchDistribution):
    """A mixture of C diagonal Gaussians over z (event shape (D,)): Σ_c π_c N(z; loc_c,
    diag(scale_c²)) with π = softmax(logits). The mixture and VampPrior priors use it.

    It is ``dist.MixtureSameFamily(Categorical(logits), Normal(loc, scale).to_event(1))``
    (tests hold the two equal) with a ``log_prob`` that costs two matrix multiplies instead
    of a (..., C, D) tensor: with a = 1 / scale²,

        log N(z; m_c, s_c) = -½ z² · a_c + z · (m_c a_c) - ½ m_c² · a_c - Σ_d log s_cd
                             - D log(2π)/2,

    so scoring N points against C components is (N, D) × (D, C) products; the importance-
    weighted evaluation's chunks of 10^5 particles against a VampPrior's 500 components would
    otherwise need gigabytes.

    Args:
        logits: (C,) unnormalized log weights.
        loc, scale: (C, D) component means and standard deviations.

    The parameters have no batch dimensions; ``expand`` (as Pyro's plates call it) gives the
    distribution a batch shape without copying them.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, logits, loc, scale, batch_shape=(), validate_args=None) -> None:
        if loc.dim() != 2 or scale.shape != loc.shape or logits.shape != loc.shape[:1]:
            raise ValueError(
                "DiagonalGaussianMixture takes logits (C,), loc and scale (C, D); got "
                f"{tuple(logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return DiagonalGaussianMixture(self.logits, self.loc, self.scale, batch_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(z) for z (..., D) -> (...), broadcast against the batch shape."""
        precision = self.scale.pow(-2)  # (C, D)
        quad = torch.matmul(value.square(), precision.T).mul_(-0.5)  # (..., C)
        quad = quad.add_(torch.matmul(value, (self.loc * precision).T))
        const = (
            torch.log_softmax(self.logits, -1)
            - 0.5 * (self.loc.square() * precision).sum(-1)
            - self.scale.log().sum(-1)
            - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)
        )
        lp = torch.logsumexp(quad + const, -1)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def sample(self, sample_shape=()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            which = torch.distributions.Categorical(logits=self.logits).sample(shape)
            eps = torch.randn(
                shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return self.loc[which] + self.scale[which] * eps

    def component_distribution(self) -> dist.Distribution:
        """The components as one distribution with batch shape (C,)."""
        return dist.Normal(self.loc, self.scale, validate_args=False).to_event(1)


class UniformMixture(dist.MixtureSameFamily):
    """(1/C) Σ_c p_c(z): Pyro's ``MixtureSameFamily`` with equal weights over the C components
    of ``components`` (batch shape (C,)), its ``log_prob`` given by ``log_density``, a
    function z (..., D) -> (...) computing the same numbers faster (the VampPrior passes its
    guide family's ``mixture_log_prob``). Sampling is ``MixtureSameFamily``'s.
    """

    def __init__(
        self, components: dist.Distribution, log_density, like: torch.Tensor, validate_args=None
    ) -> None:
        # ``like``: a tensor of the components' dtype and device, for the (zero) mixing logits.
        logits = like.new_zeros(components.batch_shape[-1])
        super().__init__(dist.Categorical(logits=logits), components, validate_args=False)
        self.log_density = log_density

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(UniformMixture, _instance)
        new = super().expand(batch_shape, new)
        new.log_density = self.log_density
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log p(z) for z (..., D) -> (...), broadcast against the batch shape."""
        lp = self.log_density(value)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))
