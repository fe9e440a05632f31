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
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import nn

from ..config import Rule
from ..particles import NotApplicable
from ..registry import Registry
from .distributions import FactorizedBernoulli

#: Guide families by name (``diagonal-gaussian``, ``flow``, ...);
#: ``@GUIDES.register(name)`` adds one.
GUIDES: Registry = Registry("guide family")

LogDensity = Callable[[], torch.Tensor]
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Elements of an (n particles, C components, width) tensor of a chunk of particles in
# NormalizingFlow.mixture_log_prob: a bound on memory; on a CPU, small enough that a chunk's
# tensors stay in cache (2^19: 1.25x faster than 2^24 at 100 particles, 500 components).
_MIXTURE_CHUNK = 2**24
_MIXTURE_CHUNK_CPU = 2**19


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
        """The width of the encoder output the family reads."""
        raise NotImplementedError

    @property
    def spread_features(self) -> slice:
        """The encoder outputs that set q's spread (scales, correlations) rather than where it
        sits, as a slice of the ``in_features``: ``start_encoder`` starts them at zero. Empty
        here (a family whose outputs all place it, such as Bernoulli logits)."""
        return slice(0, 0)

    def start_encoder(self, encoder: nn.Module) -> None:
        """Start ``encoder``'s ``spread_features`` at zero for every input: the rows of its
        last ``nn.Linear`` (when that layer makes this family's ``in_features`` outputs; an
        encoder of the user's own that ends otherwise is left as it is) zeroed, so q starts
        at one spread for all x (a Gaussian family: unit scales, no correlation) while its
        location keeps the layer's random start.

        Why: the spread outputs are exponentiated (scales) or multiply the noise, so a random
        start is a random spread per point. A linear encoder reads x directly, and on data
        of a few units PyTorch's default initialization put log scales anywhere in [-5.6,
        5.3] (scales from 0.004 to 200; linear-Gaussian data, x_dim 5, z_dim 50): trained
        from there, the guides of the same configuration ended 0.12 to 0.89 nats short of
        log p(x) by the seed alone, 0.04 from zero (``experiments/guides_joint.py``). An MLP's
        last layer reads bounded features, whose random start is near zero already (±0.7).
        """
        linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
        rows = self.spread_features
        if not linears or linears[-1].out_features != self.in_features or rows.start == rows.stop:
            return
        with torch.no_grad():
            linears[-1].weight[rows].zero_()
            linears[-1].bias[rows].zero_()

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
            ``(z, log_q, log_q_stopped)``, z of shape (k, B, z_dim) and two functions of no
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

    def mixture_log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log (1/C) Σ_c q(z | h_c): the density at z of the equal-weight mixture of the
        family's distributions at C inputs (the VampPrior's density).

        Args:
            z: (..., z_dim).
            h: the components' inputs, (C, in_features).

        Returns:
            (...). This is the definition (Pyro's ``MixtureSameFamily`` with equal weights
            computes the same); a family may override it with a faster computation of the same
            numbers (tested equal to this one).
        """
        log_q = self(h).log_prob(z.unsqueeze(-2))  # (..., C)
        return torch.logsumexp(log_q, -1) - math.log(h.shape[0])


class _LowerCholeskyAffine(torch.distributions.Transform):
    """z = loc + L ε for a batch of lower-triangular L (..., n, n) with a positive diagonal,
    event_dim 1. Pyro's ``LowerCholeskyAffine`` takes a single (n, n) L: its Jacobian reads
    ``scale_tril.diag()``, which fails on a batch (a full-rank guide has one L per data point)."""

    domain = torch.distributions.constraints.real_vector
    codomain = torch.distributions.constraints.real_vector
    bijective = True

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        super().__init__()
        self.loc, self.scale_tril = loc, scale_tril

    def _call(self, eps: torch.Tensor) -> torch.Tensor:
        return self.loc + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        diff = (z - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(diff.shape[:-2] + self.scale_tril.shape[-2:])
        return torch.linalg.solve_triangular(tril, diff, upper=False).squeeze(-1)

    def log_abs_det_jacobian(self, eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return log_det.expand(torch.broadcast_shapes(log_det.shape, eps.shape[:-1]))


def noise_log_density(eps: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """log q(z) of a Gaussian sample z = loc + L ε from its standard normal noise ε (..., D) and
    log |det L| (broadcastable to (...)): Σ -ε²/2 - D log(2π)/2 - log |det L| -> (...).

    The density of z computed this way is exact at any scale, and as a function of the
    parameters it has the total derivative of log q(z(ε, φ); φ): what the pathwise estimators
    differentiate. (From z instead, ε is recovered as L⁻¹ (z - loc), which rounding loses when
    the scale is far below the location's resolution, or L is ill-conditioned.)
    """
    constant = torch.linalg.vecdot(eps, eps).mul_(-0.5).sub_(eps.shape[-1] * HALF_LOG_2PI)
    return constant - log_det


class _Noised:
    """A Gaussian guide distribution that keeps the noise ε of the last sample it drew with
    ``rsample``, and scores exactly that sample from it (``noise_log_density``), as the direct
    producer scores its own draws: the traced producer then computes the same log q(z | x) for
    any encoder output, where scoring z afresh would lose it to rounding (a scale of e^-60
    gives NaN; a badly conditioned L gives another number). Any other value, and samples drawn
    with ``sample`` (whose score function needs ∇ log q at fixed z), are scored as usual."""

    _drawn: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (z, ε)

    def log_det(self) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, sample_shape=()) -> torch.Tensor:
        # (torch's MultivariateNormal.sample is rsample under no_grad: not a draw to keep.)
        value = super().sample(sample_shape)
        self._drawn = None
        return value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        drawn = self._drawn
        if drawn is not None and value is drawn[0]:
            return noise_log_density(drawn[1], self.log_det())
        return super().log_prob(value)


class DiagonalNormal(_Noised, dist.Independent):
    """N(loc, diag(exp(log_scale)²)) over the last dim: Pyro's ``Normal(loc,
    log_scale.exp()).to_event(1)`` (the diagonal guide's and the flow's base distribution) that
    scores its own reparameterized samples from their noise (``_Noised``). ``loc`` and
    ``log_scale``: (..., D), broadcastable; batch shape (...), event shape (D,)."""

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        loc, log_scale = torch.broadcast_tensors(loc, log_scale)
        normal = dist.Normal(loc, log_scale.exp(), validate_args=False)
        super().__init__(normal, 1, validate_args=False)
        self.log_scale = log_scale

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return DiagonalNormal(self.base_dist.loc.expand(shape), self.log_scale.expand(shape))

    def log_det(self) -> torch.Tensor:
        return self.log_scale.sum(-1)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        base = self.base_dist
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=base.loc.dtype, device=base.loc.device)
        z = torch.addcmul(base.loc, base.scale, eps)
        self._drawn = (z, eps)
        return z


class FullRankNormal(_Noised, dist.MultivariateNormal):
    """N(loc, L Lᵀ) with L = ``scale_tril`` (..., D, D) lower-triangular, exp(``log_diag``) its
    diagonal: Pyro's ``MultivariateNormal`` (the full-rank guide's) that scores its own
    reparameterized samples from their noise (``_Noised``), with no triangular solve."""

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor, log_diag: torch.Tensor):
        # validate_args=False: L is lower-triangular with a positive diagonal by construction.
        super().__init__(loc, scale_tril=scale_tril, validate_args=False)
        self.log_diag = log_diag

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FullRankNormal, _instance)
        new = super().expand(batch_shape, new)
        new.log_diag = self.log_diag.expand(torch.Size(batch_shape) + self.event_shape)
        new._drawn = None
        return new

    def log_det(self) -> torch.Tensor:
        return self.log_diag.sum(-1)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        tril = self._unbroadcasted_scale_tril
        z = self.loc + (tril @ eps.unsqueeze(-1)).squeeze(-1)
        self._drawn = (z, eps)
        return z


def noise_transform(q: dist.Distribution) -> Tuple[dist.Distribution, T.Transform]:
    """A continuous guide distribution written as the reparameterization it samples by: z =
    T(ε), ε ~ N(0, I), T invertible and differentiable. The change of variables then gives
    log q(z | x) = log N(ε; 0, I) - log |det ∂T/∂ε| at z = T(ε), and any density over z pulls
    back to one over ε the same way (a VAE's p(x, z) to p(x, ε), Dinh's view of the VAE).

    Args:
        q: q(z | x) with batch shape (...) and event shape (z_dim,), as a real-latent guide
            family returns it: a diagonal Gaussian (``Normal(loc, scale).to_event(1)``), a
            full-rank one (``MultivariateNormal``), or a ``TransformedDistribution`` of either
            (the flow guide).

    Returns:
        ``(noise, transform)``: ``noise`` is N(0, I) with q's batch and event shapes, and
        ``transform`` maps ε (..., z_dim) to z (..., z_dim), ``event_dim`` 1 (its
        ``log_abs_det_jacobian(eps, z)`` is (...)). ``TransformedDistribution(noise,
        [transform])`` is q: the same density, and the same samples from the same random
        numbers (Pyro's samplers draw ε this way).

    Raises:
        NotApplicable: q is none of these (a discrete guide has no such transform).
    """
    if isinstance(q, torch.distributions.TransformedDistribution):
        noise, first = noise_transform(q.base_dist)
        return noise, T.ComposeTransform([first, *q.transforms])
    if (
        isinstance(q, torch.distributions.Independent)
        and isinstance(q.base_dist, torch.distributions.Normal)
        and q.reinterpreted_batch_ndims == 1
    ):
        loc, scale = q.base_dist.loc, q.base_dist.scale
        loc, scale = torch.broadcast_tensors(loc, scale)
        transform = T.AffineTransform(loc, scale, event_dim=1)
    elif isinstance(q, torch.distributions.MultivariateNormal):
        loc = q.loc.expand(q.batch_shape + q.event_shape)
        transform = _LowerCholeskyAffine(loc, q.scale_tril)
    else:
        raise NotApplicable(
            f"{type(q).__name__} is not a Gaussian or a flow of one: it has no standard-normal "
            "reparameterization z = T(ε)"
        )
    noise = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)
    return noise, transform


@GUIDES.register("diagonal-gaussian")
class DiagonalGaussian(GuideFamily):
    """q(z|x) = N(loc(x), diag(scale(x)²)); the encoder outputs (loc, log scale)."""

    @property
    def in_features(self) -> int:
        return 2 * self.z_dim

    @property
    def spread_features(self) -> slice:
        return slice(self.z_dim, 2 * self.z_dim)  # the log scales

    def split(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(loc, log scale), (..., z_dim) each, from h (..., 2 z_dim)."""
        loc, log_scale = h.split(self.z_dim, dim=-1)
        return loc, log_scale

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, log_scale = self.split(h)
        return DiagonalNormal(loc, log_scale)

    def draw(self, h: torch.Tensor, k: int, reparameterized: Optional[bool]):
        if reparameterized is False or type(self).forward is not DiagonalGaussian.forward:
            # (A subclass that changes the distribution gets the generic computation.)
            return super().draw(h, k, reparameterized)
        # z = loc + scale ε, so log q(z) = Σ -ε²/2 - log scale - log 2π/2 as a function of
        # the parameters too: the density from ε directly, its ε part computed without
        # autograd, which leaves two autograd nodes of Normal.log_prob's nine on the training
        # step's hot path. Same random numbers as Normal.rsample.
        loc, log_scale = self.split(h)
        eps = torch.randn((k,) + loc.shape, dtype=loc.dtype, device=loc.device)
        z = torch.addcmul(loc, log_scale.exp(), eps)

        def log_q() -> torch.Tensor:
            return noise_log_density(eps, log_scale.sum(-1))

        return z, log_q, (lambda: self.stopped(h).log_prob(z))


class BoundedDiagonalGaussian(DiagonalGaussian):
    """``DiagonalGaussian`` with its log scale clamped to [``low``, ``high``] (default [-3, 1],
    the log-variance range [-6, 2] of Tomczak & Welling's code): the conditional Gaussians
    between the two latent layers, p(z1 | z2) and q(z2 | z1). Unbounded, a scale can shrink
    until float32 rounding of z1 - loc decides the density, and training then climbs into
    "ELBOs" above zero on binary data (seen at epoch 66 of a two-layer VampPrior run). Not a
    registered guide."""

    def __init__(self, z_dim: int, low: float = -3.0, high: float = 1.0) -> None:
        super().__init__(z_dim)
        self.low, self.high = low, high

    def split(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = h.split(self.z_dim, dim=-1)
        return loc, log_scale.clamp(self.low, self.high)


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


@GUIDES.register("full-rank")
class FullRankGaussian(GuideFamily):
    """q(z|x) = N(loc(x), L(x) L(x)ᵀ), L lower-triangular with a positive diagonal: a Gaussian
    with a full covariance, so the posterior's correlations between latents can be modelled.

    The encoder outputs (loc (z_dim), log of L's diagonal (z_dim), u: z_dim (z_dim - 1) / 2
    values, row by row as ``torch.tril_indices(z_dim, z_dim, -1)`` lists them), and L's
    strictly-lower entries are u / ``off_divisor``, with ``off_divisor`` = z_dim. No options.

    Why 1 / z_dim. At a constant learning rate every encoder output ends jittering around its
    optimum by about one Adam step, whatever its gradient's noise, and each output's jitter costs
    ELBO. The diagonal family has 2 z_dim outputs; this one adds z_dim (z_dim - 1) / 2 more.
    With L's entries taken as they come (pyrovae 0.2.0) the full-rank guide ended 0.35 nats
    short of log p(x) at z_dim = 50, the diagonal one 0.12 (linear-Gaussian data, trained
    jointly, MLP encoder; this family can hold the exact posterior); with them scaled by
    1 / z_dim, 0.19 (``experiments/guides_joint.py``). Scaled, the off-diagonal outputs' summed
    jitter grows like z_dim, as the diagonal outputs' does, not like z_dim². Correlations are
    still reached: the encoder scales u up, at 1 / z_dim of the speed in L's units (slow for a
    linear encoder, which has few weights per output to do it with). What remains above the
    diagonal family's gap at a constant rate is gradient noise at the optimum: STL, whose noise
    vanishes there, ends at 0.019 against the diagonal family's 0.012 (the pathwise gradient:
    0.165 against 0.122), and so does a rate decaying to 0 (cosine: 0.011 for both). L starts
    at the identity for every x (``start_encoder``).

    ``off_divisor`` is a buffer saved with the parameters (a whole number, exact in any
    dtype): a state dict without it (written before the scale existed) loads with
    ``off_divisor`` = 1, the parameterization it was trained in.
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__(z_dim)
        self.register_buffer("off_divisor", torch.tensor(float(z_dim)))
        # Index constants, made on first use (``_indices``): O(z_dim²) of them, so that a
        # family too big for memory is refused (build_vae checks its in_features) before
        # anything that size exists.
        self._index_cache: dict = {}

    def _indices(self, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tril_index, tril_rows, tril_cols) on ``device``: where each entry of L (flattened
        row-major, z_dim² of them) is read from in [strictly-lower entries, diagonal, a zero],
        so that L is built by one gather for any batch shape of h; and the rows and columns of
        the strictly-lower entries."""
        if device not in self._index_cache:
            d = self.z_dim
            n_off = d * (d - 1) // 2
            index = torch.full((d, d), n_off + d, dtype=torch.long)  # the zero
            rows, cols = torch.tril_indices(d, d, -1)
            index[rows, cols] = torch.arange(n_off)
            index[range(d), range(d)] = n_off + torch.arange(d)
            self._index_cache[device] = tuple(t.to(device) for t in (index.reshape(-1), rows, cols))
        return self._index_cache[device]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict of pyrovae 0.2.0 or earlier: L's entries were the encoder's outputs.
        state_dict.setdefault(prefix + "off_divisor", torch.tensor(1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def in_features(self) -> int:
        return 2 * self.z_dim + self.z_dim * (self.z_dim - 1) // 2

    @property
    def spread_features(self) -> slice:
        return slice(self.z_dim, self.in_features)  # log diag and the strictly-lower entries

    def _outputs(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loc, log diag (..., z_dim) each, L's strictly-lower entries (..., z_dim (z_dim -
        1) / 2)) from h (..., in_features)."""
        d = self.z_dim
        loc, log_diag, u = h.split([d, d, d * (d - 1) // 2], dim=-1)
        return loc, log_diag, u / self.off_divisor

    def _split(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loc (..., z_dim), log diag (..., z_dim), L (..., z_dim, z_dim)) from h (..., in)."""
        d = self.z_dim
        loc, log_diag, off = self._outputs(h)
        entries = torch.cat([off, log_diag.exp(), off.new_zeros(off.shape[:-1] + (1,))], -1)
        tril = entries.index_select(-1, self._indices(h.device)[0]).unflatten(-1, (d, d))
        return loc, log_diag, tril

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, log_diag, tril = self._split(h)
        return FullRankNormal(loc, tril, log_diag)

    def draw(self, h: torch.Tensor, k: int, reparameterized: Optional[bool]):
        if reparameterized is False or type(self).forward is not FullRankGaussian.forward:
            return super().draw(h, k, reparameterized)
        # z = loc + L ε with the random numbers of MultivariateNormal.rsample, and log q(z) =
        # Σ -ε²/2 - Σ log L_dd - D log(2π)/2 from ε: no triangular solve, which is what
        # MultivariateNormal.log_prob spends its time on.
        d = self.z_dim
        eps = torch.randn((k,) + h.shape[:-1] + (d,), dtype=h.dtype, device=h.device)
        if k == 1:
            # (L ε)_i = L_ii ε_i + Σ_{j<i} L_ij ε_j: the strictly-lower products added to
            # their rows, L never formed. Its backward is a gather; at K = 1 it is 1.3 ms
            # against 2.0 for forming L and multiplying (z_dim 50, batch 100, one thread), but
            # the row sums (index_add) grow slow with K.
            loc, log_diag, off = self._outputs(h)
            _, rows, cols = self._indices(h.device)
            products = off * eps.index_select(-1, cols)
            z = torch.addcmul(loc, log_diag.exp(), eps).index_add(-1, rows, products)
        else:
            # One matrix product per data point over its K particles; MultivariateNormal's
            # matmul broadcasts L to every particle (20x slower at K = 100).
            loc, log_diag, tril = self._split(h)
            z = loc + torch.einsum("...ij,k...j->k...i", tril, eps)

        def log_q() -> torch.Tensor:
            return noise_log_density(eps, log_diag.sum(-1))

        return z, log_q, (lambda: self.stopped(h).log_prob(z))


class _ContextNet:
    """A conditional network ``net(inputs, context=...)`` with its context bound: the
    hypernetwork a conditioned Pyro transform calls (Pyro's ``condition`` binds it with
    ``functools.partial``; this does the same, and more).

    ``params``, where given, are tensors used in place of the network's parameters
    (``torch.func.functional_call``): a distribution built with the parameters cut from the
    graph (``GuideFamily.stopped``, or the traced producer's replay with the parameters frozen)
    evaluates its network only later, in ``log_prob``, after those parameters are live again,
    so it must keep the cut tensors themselves.
    """

    def __init__(
        self, net: nn.Module, context: torch.Tensor, params: Optional[Dict[str, torch.Tensor]]
    ) -> None:
        self.net = net
        self.context = context
        self.params = params

    @property
    def permutation(self) -> torch.Tensor:
        """The autoregressive order (``AffineAutoregressive``'s inverse reads it)."""
        return self.net.permutation

    def get_permutation(self) -> torch.Tensor:
        return self.net.permutation

    def __call__(self, inputs: torch.Tensor):
        """The network's outputs for ``inputs`` (..., n) given the bound context (..., c).
        Pyro's conditional nets expand the context to the inputs' batch shape, which covers
        the particle plate (inputs (K, B, n), context (B, c)); the flow distribution's
        ``log_prob`` broadcasts its argument to the batch shape, so that the inputs' shape
        always holds the context's."""
        if self.params is None:
            return self.net(inputs, context=self.context)
        return torch.func.functional_call(
            self.net, self.params, (inputs,), {"context": self.context}
        )


def _cut_parameters(net: nn.Module) -> Optional[Dict[str, torch.Tensor]]:
    """None when every parameter of ``net`` is live (requires grad); else all of them with
    those that do not require grad detached, so that they stay cut from the graph after
    ``torch.func.functional_call`` (they are stand-ins) or the traced producer's freezing
    (``requires_grad_(False)`` for the replay only) ends."""
    params = dict(net.named_parameters())
    if all(p.requires_grad for p in params.values()):
        return None
    return {name: p if p.requires_grad else p.detach() for name, p in params.items()}


class FlowDistribution(dist.TransformedDistribution):
    """The flow guide's distribution: Pyro's ``TransformedDistribution`` with two changes.

    - ``sample`` returns a copy of the sample. Pyro's affine transforms cache their last
      (input, output) pair and log scale, so ``log_prob`` of the very tensor ``sample`` returned
      would read them back instead of inverting the flow: computed under ``no_grad``, they
      would give log q(z) the gradient of the base density alone, a wrong score function
      (the score-function estimators need ∇ log q(z) at fixed z, through the inverse). A copy
      is scored afresh. ``rsample``'s cache is right (it has the graph) and is kept: scoring a
      reparameterized sample costs no inversion.
    - ``log_prob`` broadcasts its argument (..., z_dim) to the batch shape first: the
      transforms' networks take the context batch shape from their inputs, so an argument
      with fewer batch dims than the distribution (a mixture over guides' components, say)
      would not reach every context. An argument of the full shape is passed as it is, so
      that the cache still recognises it.
    """

    def sample(self, sample_shape=()) -> torch.Tensor:
        return super().sample(sample_shape).clone()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        if value.shape[:-1] != shape:
            value = value.expand(shape + value.shape[-1:])
        return super().log_prob(value)


TRANSFORMS = ("iaf", "coupling")


def _widths(name: str, value: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    """``value`` (an int or a non-empty list of ints, each >= 1) as a tuple; else a
    ``ValueError`` naming ``name``."""
    widths = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(widths, (list, tuple)) and len(widths) > 0
    ok = ok and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    if not ok:
        raise ValueError(
            f"{name} must be a whole number >= 1 or a non-empty list of them (hidden layer "
            f"widths), got {value!r}"
        )
    return tuple(widths)


@GUIDES.register("flow")
class NormalizingFlow(GuideFamily):
    """An amortized normalizing flow: ε ~ N(loc(x), diag(scale(x)²)), then ``layers``
    invertible transforms conditioned on encoder features c(x), z = f_L ∘ … ∘ f_1(ε), so
    log q(z|x) = log N(ε; loc, scale) - Σ_l log abs(det ∂f_l).

    The encoder outputs (loc (z_dim), log scale (z_dim), context c (``context``)). Between
    layers the dimensions are reversed, so that each dimension is transformed given the others.

    Args:
        z_dim: the latent's dimension.
        transform: ``"iaf"`` (default): an inverse autoregressive flow (Kingma et al., 2016),
            Pyro's ``ConditionalAffineAutoregressive`` over a ``ConditionalAutoRegressiveNN``
            (MADE) in the sampling direction: drawing z and scoring it are one network pass
            per layer, scoring any other z (``log_q_stopped``, ``log_prob`` of a given value)
            takes z_dim passes per layer. ``"coupling"``: RealNVP affine coupling layers
            (Dinh et al., 2017), Pyro's ``ConditionalAffineCoupling`` with a
            ``ConditionalDenseNN`` hypernet: the first z_dim // 2 dims (after any reversal)
            pass through and set the others' shift and scale, one pass either way; needs
            z_dim >= 2.
        layers: how many transforms, a whole number >= 1 (default 2).
        context: width of the encoder features the transforms are conditioned on (default
            z_dim).
        hidden: hidden layer widths of each transform's network, an int (one layer) or a
            list; default one layer of max(2 z_dim, 50) units. A MADE needs every width
            >= z_dim. The networks use ReLU (Pyro's default).

    The networks' parameters are submodules (``transforms``, an ``nn.ModuleList`` of Pyro's
    conditional transform modules): trained with the VAE and saved in its state dict.

    ``mixture_log_prob`` (a VampPrior's density) with coupling layers inverts the flows of all
    (particle, component) pairs at once; with ``iaf`` it is the generic one, each component's
    flow inverted dimension by dimension.
    """

    def __init__(
        self,
        z_dim: int,
        *,
        transform: str = "iaf",
        layers: int = 2,
        context: Optional[int] = None,
        hidden: Optional[Union[int, Sequence[int]]] = None,
    ) -> None:
        super().__init__(z_dim)
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        layers = Rule("int", minimum=1).check("layers", layers)
        context = z_dim if context is None else Rule("int", minimum=1).check("context", context)
        hidden = _widths("hidden", (max(2 * z_dim, 50),) if hidden is None else hidden)
        if transform == "iaf" and min(hidden) < z_dim:
            raise ValueError(
                f"hidden widths must be >= z_dim ({z_dim}) for the iaf transform (a MADE "
                f"cannot connect every output otherwise), got {list(hidden)}"
            )
        if transform == "coupling" and z_dim < 2:
            raise ValueError(
                "transform 'coupling' needs z_dim >= 2 (it splits z in two); use "
                f"transform 'iaf' for z_dim = {z_dim}"
            )
        self.transform, self.layers, self.context, self.hidden = transform, layers, context, hidden
        modules: List[nn.Module] = []
        for _ in range(layers):
            if transform == "iaf":
                # The identity order, not Pyro's default random one: the flow is then a
                # function of its options and parameters (a random order would be saved in the
                # state dict, but differ between two builds); the reversal between layers
                # alternates the order.
                order = torch.arange(z_dim)
                with warnings.catch_warnings():
                    # z_dim = 1: Pyro suggests an affine map, which is what the MADE then is
                    # (its output depends on the context alone).
                    warnings.filterwarnings("ignore", message=".*input_dim = 1")
                    net = ConditionalAutoRegressiveNN(
                        z_dim, context, list(hidden), permutation=order
                    )
                modules.append(T.ConditionalAffineAutoregressive(net))
            else:
                split = z_dim // 2
                net = ConditionalDenseNN(split, context, list(hidden), [z_dim - split] * 2)
                modules.append(T.ConditionalAffineCoupling(split, net))
            # Each transform starts as the identity (shift 0, scale 1: its net's last layer
            # zero), so that the flow starts as its base, a diagonal Gaussian guide, and adds
            # what training asks of it. With Pyro's random last layer a flow started further
            # from the prior (default MLP encoder, z_dim 2: KL 0.14 nats against 0.04) and,
            # on a linear encoder, ended 0.54 nats short of log p(x) against 0.31 from the
            # identity (3000 steps on linear-Gaussian data, seed 0).
            last = net.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.transforms = nn.ModuleList(modules)
        # A constant (not saved): the permutation between layers.
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1), persistent=False)
        self._plan_cache: dict = {}  # device -> mixture_log_prob's plan (_coupling_plan)

    @property
    def in_features(self) -> int:
        return 2 * self.z_dim + self.context

    @property
    def spread_features(self) -> slice:
        return slice(self.z_dim, 2 * self.z_dim)  # the base's log scales, not the context

    def _split(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loc, log scale, context) from h (..., in_features)."""
        return h.split([self.z_dim, self.z_dim, self.context], dim=-1)

    def conditioned(self, context: torch.Tensor) -> List[Any]:
        """The flow's transforms given context (..., context): the affine layers, Pyro's
        ``AffineAutoregressive`` / ``AffineCoupling`` (what the conditional modules'
        ``condition`` makes), with a ``Permute`` reversing the dimensions between them. Each
        maps (..., z_dim) -> (..., z_dim) where the inputs' batch shape holds the context's.
        """
        out: List[Any] = []
        for i, module in enumerate(self.transforms):
            if i:
                out.append(T.Permute(self.reverse))
            net = _ContextNet(module.nn, context, _cut_parameters(module.nn))
            if self.transform == "iaf":
                out.append(T.AffineAutoregressive(net, **module.kwargs))
            else:
                out.append(T.AffineCoupling(module.split_dim, net, **module.kwargs))
        return out

    def forward(self, h: torch.Tensor) -> dist.Distribution:
        loc, log_scale, context = self._split(h)
        base = DiagonalNormal(loc, log_scale)
        # Batch shape h.shape[:-1], event shape (z_dim,). Under plates Pyro expands it
        # (TransformedDistribution.expand expands the base and keeps the transforms): the
        # networks then get inputs (K, B, ·) and expand the context (B, c) to match.
        return FlowDistribution(base, self.conditioned(context), validate_args=False)

    def draw(self, h: torch.Tensor, k: int, reparameterized: Optional[bool]):
        if reparameterized is False or type(self).forward is not NormalizingFlow.forward:
            # Sampled without a path (score function): log q(z) must invert the flow, which
            # the generic computation does (FlowDistribution.sample).
            return super().draw(h, k, reparameterized)
        # The forward pass, as TransformedDistribution.rsample makes it (same random numbers
        # and ops), keeping each layer's log |det|: log q(z) = log N(ε; loc, scale) - Σ log
        # |det| with the base density from ε (as DiagonalGaussian), no inversion; the value
        # TransformedDistribution.log_prob gives from the transforms' caches.
        loc, log_scale, context = self._split(h)
        eps = torch.randn((k,) + loc.shape, dtype=loc.dtype, device=loc.device)
        x = torch.addcmul(loc, log_scale.exp(), eps)
        log_det = []
        for t in self.conditioned(context):
            y = t(x)
            if not isinstance(t, T.Permute):  # volume-preserving
                log_det.append(t.log_abs_det_jacobian(x, y))  # the cached log scale's sum
            x = y
        z = x

        def log_q() -> torch.Tensor:
            out = noise_log_density(eps, log_scale.sum(-1))
            for term in log_det:
                out = out - term
            return out

        # The stopped density inverts the flow with the parameters cut: for the iaf z_dim
        # passes of each layer's network (the inverse is sequential over dimensions), one for
        # coupling. Only STL and DReG read it.
        return z, log_q, (lambda: self.stopped(h).log_prob(z))

    def mixture_log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        generic = self.transform != "coupling" or h.dim() != 2
        if generic or type(self).forward is not NormalizingFlow.forward:
            return super().mixture_log_prob(z, h)
        # Coupling layers: the inverse passes of all (particle, component) pairs at once,
        # what depends on one side only computed once. Pyro's ConditionalDenseNN (1.9.2)
        # feeds its first layer [c_k, y1], so that layer is W_c c_k + b + W_y y1: the context
        # term once per component (C, H), the other per row, broadcast-added. The first
        # inverse step (the flow's last layer) reads y1 = z's first split, the same for every
        # component: its product is per particle. MixtureSameFamily would instead run every
        # net on (n, C) rows of [c_k, y1] and permute (n, C, z_dim) tensors between layers
        # (3.2x slower, training the default MLP at batch 100). Here the permutations move
        # no data: the running value is a list of pieces whose columns stay put, the plan
        # (``_coupling_plan``) tracks their positions in the flow's order and indexes the
        # small tensors (weights, loc, scale) to match. Otherwise Pyro's ops, its clamp of
        # the log scale (AffineCoupling._inverse) included; in chunks of particles.
        loc, log_scale, context = self._split(h)  # (C, ·)
        steps, positions = self._coupling_plan(h.device)
        layers = []
        for step in steps:
            module = self.transforms[step.layer]
            net = module.nn
            first, last = net.layers[0], net.layers[-1]
            c = net.context_dim  # the net's input is [context, y1]
            per_component = nn.functional.linear(context, first.weight[:, :c], first.bias)
            weights = [first.weight[:, c:].index_select(1, cols) for cols in step.in_columns]
            out = tuple(p.index_select(0, step.out_rows) for p in (last.weight, last.bias))
            # Pyro's settings (the log scale's clamp), as ``conditioned`` makes the layer.
            t = T.AffineCoupling(module.split_dim, net, **module.kwargs)
            layers.append((step, net, per_component, weights, out, t))
        inv_scale = torch.exp(-log_scale)
        base = [(loc.index_select(1, pos), inv_scale.index_select(1, pos)) for pos in positions]
        constant = -log_scale.sum(-1) - self.z_dim * HALF_LOG_2PI  # (C,)
        elements = _MIXTURE_CHUNK_CPU if h.device.type == "cpu" else _MIXTURE_CHUNK
        per_particle = max(max(self.hidden), 2 * self.z_dim) * h.shape[0]
        rows = z.reshape(-1, self.z_dim)
        out = [
            self._coupling_mixture(chunk, layers, base, constant)
            for chunk in rows.split(max(1, elements // per_particle))
        ]
        return torch.cat(out).reshape(z.shape[:-1])

    def _coupling_mixture(self, z, layers, base, constant) -> torch.Tensor:
        """``mixture_log_prob`` for z (n, z_dim) given what it precomputes: per layer (last
        first) its plan step, net, context term (C, H), y1's first-layer weight columns,
        output layer (rows reordered as the step says) and Pyro transform; the base's loc and
        1 / scale at the final pieces' positions; its constant (C,) -> (n,)."""
        pieces = [z.unsqueeze(-2)]  # (n, 1, ·): the components' dim appears at the first layer
        log_det = 0.0
        for step, net, per_component, weights, (w_out, b_out), t in layers:
            ins = [_take(pieces[k], cols) for k, cols in step.ins]
            outs = [_take(pieces[k], cols) for k, cols in step.outs]
            pre = _first_layer(ins, weights, per_component)  # (n, C, H)
            hidden = torch.relu_(pre) if type(net.f) is nn.ReLU else net.f(pre)
            for layer in net.layers[1:-1]:
                hidden = net.f(layer(hidden))
            mean, ls = nn.functional.linear(hidden, w_out, b_out).chunk(2, -1)  # (n, C, w)
            if len(outs) == 1:
                y2 = outs[0]
            else:  # (an odd z_dim: y2 spans two pieces)
                lead = torch.broadcast_shapes(*(piece.shape[:-1] for piece in outs))
                y2 = torch.cat([piece.expand(lead + piece.shape[-1:]) for piece in outs], -1)
            ls = clamp_preserve_gradients(ls, t.log_scale_min_clip, t.log_scale_max_clip)
            x2 = (y2 - mean) * torch.exp(-ls)
            log_det = log_det + ls.sum(-1)
            pieces = ins + list(x2.split([piece.shape[-1] for piece in outs], -1))
        quad = 0.0
        for piece, (loc, inv_scale) in zip(pieces, base):
            e = (piece - loc) * inv_scale
            quad = quad + torch.linalg.vecdot(e, e)
        log_q = constant - 0.5 * quad - log_det  # (n, C)
        return torch.logsumexp(log_q, -1) - math.log(constant.shape[0])

    def _coupling_plan(self, device) -> Tuple[List["_CouplingStep"], List[torch.Tensor]]:
        """The bookkeeping of ``mixture_log_prob``'s inverse pass, cached per device: a step
        per coupling layer, last layer first, and the flow-order positions of the final
        pieces' columns (where the base density reads them).

        The running value is a list of pieces, each a tensor whose columns sit at known
        positions of the vector the flow's layer sees; the permutation between layers only
        relabels them. A step says which columns of which pieces form the layer's y1 (and
        which of the net's first-layer input columns they meet) and y2 (and which rows of the
        net's output layer give their shift and log scale, shifts first)."""
        if device not in self._plan_cache:
            d = self.z_dim
            perm = self.reverse.tolist()  # Permute(perm).inv sends position p to perm[p]
            pieces: List[List[int]] = [list(range(d))]
            steps = []
            for i in reversed(range(self.layers)):
                module = self.transforms[i]
                split = module.split_dim
                mean_slice, scale_slice = module.nn.param_slices
                ins, outs, in_pos, out_pos = [], [], [], []
                for k, pos in enumerate(pieces):
                    for sel, where in ((ins, in_pos), (outs, out_pos)):
                        take = [j for j, p in enumerate(pos) if (p < split) == (sel is ins)]
                        if take:
                            sel.append((k, _selection(take, device)))
                            where.append([pos[j] for j in take])
                flat = [p - split for pos in out_pos for p in pos]
                rows = [mean_slice.start + p for p in flat] + [scale_slice.start + p for p in flat]
                steps.append(
                    _CouplingStep(
                        layer=i,
                        ins=ins,
                        outs=outs,
                        in_columns=[torch.tensor(pos, device=device) for pos in in_pos],
                        out_rows=torch.tensor(rows, device=device),
                    )
                )
                pieces = in_pos + out_pos
                if i:
                    pieces = [[perm[p] for p in pos] for pos in pieces]
            positions = [torch.tensor(pos, device=device) for pos in pieces]
            self._plan_cache[device] = (steps, positions)
        return self._plan_cache[device]


class _CouplingStep(NamedTuple):
    """One coupling layer's step of ``NormalizingFlow._coupling_plan``: ``ins`` and ``outs``
    as (piece, columns) pairs, y1's and y2's parts; ``in_columns``, for each part of y1, its
    columns of the net's input y1; ``out_rows``, the output layer's rows giving y2's shifts
    then log scales, in the order of its parts."""

    layer: int
    ins: List[Tuple[int, Union[Tuple[int, int], torch.Tensor]]]
    outs: List[Tuple[int, Union[Tuple[int, int], torch.Tensor]]]
    in_columns: List[torch.Tensor]
    out_rows: torch.Tensor


def _first_layer(ins, weights, per_component) -> torch.Tensor:
    """A coupling net's first layer before its nonlinearity: Σ_i ins_i W_iᵀ + per_component,
    ins_i (n, 1 or C, w_i) the parts of y1 and W_i their weight columns, per_component (C, H)
    the context's term and the bias -> (n, C, H)."""
    pre = torch.matmul(ins[0], weights[0].T) + per_component
    for piece, weight in zip(ins[1:], weights[1:]):
        pre = pre.add_(torch.matmul(piece, weight.T))
    return pre


def _selection(columns: List[int], device) -> Union[Tuple[int, int], torch.Tensor]:
    """Columns of a piece: (start, length) where they are a run (a view), else an index."""
    if columns == list(range(columns[0], columns[0] + len(columns))):
        return (columns[0], len(columns))
    return torch.tensor(columns, device=device)


def _take(piece: torch.Tensor, columns: Union[Tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """``piece``'s last-dim ``columns`` (a ``_selection``)."""
    if isinstance(columns, tuple):
        return piece if columns == (0, piece.shape[-1]) else piece.narrow(-1, *columns)
    return piece.index_select(-1, columns)
