"""Particles: what every estimator and the evaluator consume, and the traced producer of them.

A batch's **particles** are, for K samples z_k ~ q(z | x_b) of every data point x_b, the
per-particle and per-point log densities the estimators are written in: log p(x, z) split into
the latent part log p(z) and the likelihood log p(x | z), log q(z | x), the guide's density
with its parameters cut from the graph (for STL and DReG), the KL to the prior in closed form
where torch has one (for the analytic-KL ELBO), the latent values z and the data scale N / B.
Every field has shape (K, B), unscaled: an estimator multiplies by ``scale`` itself.

Two producers make them:

- ``traced_particles`` (here): any Pyro model/guide pair. The guide is traced once under a
  particle plate left of the data plate and the model replayed against it, as in Pyro's
  vectorized ELBOs; the per-site log densities are kept per data point.
- ``VAE.particles`` (``pyrovae.model``): the library's VAE computed from its parts without
  Pyro's handlers; tests hold it equal to tracing ``VAE.model`` and ``VAE.guide``.

Fields may be given as tensors or as functions of no arguments, computed on first use: an
estimator pays only for what it reads, and evaluation can draw the particles (random) on one
thread and score them (deterministic) on another.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .runtime import fork_rng

Field = Union[torch.Tensor, Callable[[], torch.Tensor]]

# Pyro's vectorized ELBOs use this name for their particle plate; a user's model will not.
PARTICLE_PLATE = "num_particles_vectorized"


class NotApplicable(ValueError):
    """An estimator needs something this model/guide pair cannot give (a reparameterized
    sample of a discrete latent, say); the message says what and what to use instead."""


def no_reparameterized_sampler(name: str, fn) -> NotApplicable:
    """The error for a reparameterized sample asked of latent site ``name`` whose distribution
    ``fn`` has no ``rsample``: the same words from every producer."""
    return NotApplicable(
        f"latent {name!r} has no reparameterized sampler ({type(fn).__name__}), so its "
        "gradient cannot pass through z; use a score-function estimator (score-function, vimco)"
    )


# What handles discrete latents where the gradient-following methods do not.
DISCRETE_INSTEAD = (
    "use the importance-weighted estimate instead (pyrovae evaluate --method iw, without --refine)"
)


def require_continuous_latent(name: str, fn, what: str, instead: str = DISCRETE_INSTEAD) -> None:
    """Refuse latent site ``name``, drawn from ``fn``, to ``what``: a method that moves the
    latents along the gradient of a log density (the HMC of AIS and BDMC, the refinement's
    Adam steps), which a discrete latent does not have. Pyro's own marks decide: a
    reparameterized sampler (``fn.has_rsample``) and a support that is not discrete.

    Raises:
        NotApplicable: naming the site, its distribution and ``instead``.
    """
    try:
        discrete = fn.support.is_discrete
    except NotImplementedError:  # a distribution of the user's own that declares no support
        discrete = False
    if fn.has_rsample and not discrete:
        return
    raise NotApplicable(
        f"{what} moves latent {name!r} along the gradient of its log density, which a discrete "
        f"latent ({type(fn).__name__}) does not have: {instead}"
    )


def require_continuous_latents(
    model: Callable, args: Sequence[Any], what: str, summed: Sequence[str] = ()
) -> None:
    """``require_continuous_latent`` for every latent site of ``model`` but those ``summed``
    out by enumeration, traced once on ``args`` (its parameters blocked, no gradient kept,
    the random streams left as they were: a check must not change the numbers of what it
    lets run)."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    program = _SubsampleProbe()(poutine.block(model, hide_types=["param"]))
    with torch.no_grad(), fork_rng(x.device if x is not None else "cpu"):
        try:
            t = poutine.trace(program).get_trace(*args)
        except _SmallBatch as small:  # the sites are those of a batch the plate takes
            t = poutine.trace(program).get_trace(*_padded(args, small.subsample_size))
    for site in t.nodes.values():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
            if site["name"] not in summed:
                require_continuous_latent(site["name"], site["fn"], what)


class _LazyField:
    """A log-density attribute of ``Particles``: the tensor its producer gave, or the result
    of the function it gave, computed on first read and kept."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, particles: "Particles", owner=None) -> torch.Tensor:
        value = particles._fields[self.name]
        if value is None:
            raise NotApplicable(f"this producer does not give {self.name}")
        if callable(value):
            value = particles._fields[self.name] = value()
        return value


class Particles:
    """K particles of a batch of B data points; every log density is (K, B), unscaled.

    Attributes:
        x: the batch as the model sees it, (B, ...), or ``None`` when unknown.
        latents: latent site name -> value z, (K, B, ...); differentiable when sampled with
            reparameterization. (At K = 1 the traced producer draws without a particle plate,
            as ``Trace_ELBO`` does, and each z here is a view with a leading dim of 1 of the
            value the program computed with, its ``_base``, which derivatives in z reach.)
        scale: N / B, the factor by which the batch stands for the data set (1 without
            subsampling).
        kl_weight: β, the weight of the prior-to-guide ratio in the objective an estimator
            *differentiates* (1 by default; below 1 during KL warm-up). Estimators report the
            true objective (``log_w``) and differentiate the weighted one
            (``weighted_log_w``, ``weighted_log_p``); a score term ∇ log q is never weighted.

    The log densities, each (K, B), are read as attributes and computed on first use when
    given as functions.

    Log densities:
        log_prior: Σ over latent sites of log p(z_s | parents), in the model.
        log_lik: Σ over observed sites of log p(x | z).
        log_q: Σ over latent sites of log q(z_s | x, parents), in the guide.
        log_q_stopped: log q(z | x) with the guide's parameters cut from the graph and the
            path through z kept (its gradient is the path term alone).
        kl: Σ over latent sites of KL(q || p) in closed form where torch registers one,
            log q - log p where it does not (Pyro's ``TraceMeanField_ELBO`` rule).

    Global latents (``global_latents``: name -> value, (K, ...), or as drawn at K = 1, of
    the sites outside the data plate, shared by every point: a Bayesian decoder's weights,
    say, and an autoguide's auxiliary sites) are not in ``latents``. In a training objective
    their log densities are shared out evenly over the data set's points: each point's fields
    hold 1 / (``scale`` B) of each, so that the batch's total, scaled by ``scale``, counts
    each once, as Pyro's ELBOs count it. In evaluation (log p(x) per point) they are left
    out: each particle's global latents are a draw from the guide q(θ), and the weights
    estimate the predictive density E_q(θ)[p(x | θ)]. Only the ELBO estimators that average
    one weight per point at a time apply (``Estimator.takes_global_latents``); a K-sample
    bound or a score-function surrogate of a shared-out share would not estimate the data
    set's objective.

    Enumerated discrete latents (``pyrovae.enumeration``): a site the model alone enumerates
    is summed out of ``log_prior`` and ``log_lik``; a site the guide enumerates (named in
    ``enumerated``) is averaged under q exactly in every field above, so that ``log_w`` is
    E_q(g)[log w], the ELBO's term, and ``log_w_summed`` is log Σ_g p(x, z_g, g) /
    q(z_g | x, g), the importance weight whose mean is p(x). Latents drawn for each enumerated
    value are in ``enumerated_latents`` (name -> (E..., K, B, ...)), not in ``latents``.

    Gradients: every field is differentiable in the parameters as the traced producer's is,
    through z where z is reparameterized (its total derivative). ``log_prior``, ``log_lik``
    and ``log_q_stopped`` also carry their derivative with respect to z as a tensor (STL and
    DReG rely on it). ``log_q`` need not: a producer may compute it from the noise behind z
    (the direct producer does), which gives the same value and the same parameter gradient.
    """

    def __init__(
        self,
        *,
        x: Optional[torch.Tensor],
        latents: Mapping[str, torch.Tensor],
        scale: float,
        log_prior: Field,
        log_lik: Field,
        log_q: Field,
        log_q_stopped: Optional[Field] = None,
        kl: Optional[Field] = None,
        global_latents: Optional[Mapping[str, torch.Tensor]] = None,
        log_w_summed: Optional[Field] = None,
        enumerated: Sequence[str] = (),
        enumerated_latents: Optional[Mapping[str, torch.Tensor]] = None,
        num_particles: Optional[int] = None,
        score_sites: Optional[Callable[[], List[Any]]] = None,
    ) -> None:
        self.x = x
        self.latents = dict(latents)
        self.global_latents = dict(global_latents or {})
        self.enumerated = tuple(enumerated)
        self.enumerated_latents = dict(enumerated_latents or {})
        self._num_particles = num_particles
        self._score_sites = score_sites
        self.scale = float(scale)
        self.kl_weight = 1.0
        # Tensors, or functions computing them on first read (``_LazyField``).
        self._fields: Dict[str, Optional[Field]] = {
            "log_prior": log_prior,
            "log_lik": log_lik,
            "log_q": log_q,
            "log_q_stopped": log_q_stopped,
            "kl": kl,
            # Without enumerated guide sites, the importance weight is log_w itself.
            "log_w_summed": (lambda: self.log_w) if log_w_summed is None else log_w_summed,
        }

    log_prior = _LazyField()
    log_lik = _LazyField()
    log_q = _LazyField()
    log_q_stopped = _LazyField()
    kl = _LazyField()
    log_w_summed = _LazyField()

    def score_sites(self) -> List[Any]:
        """The latent sites drawn without reparameterization, each with the costs downstream
        of it (``pyrovae.dependencies.ScoreSite``: name, log q (K, B), cost (K, B)), as Pyro's
        ``TraceGraph_ELBO`` finds them; the traced producer's, computed on first call. A
        producer that does not give them (the library's VAE) has one latent: a score site
        with the whole log weight as its cost where it was sampled, none where it was
        reparameterized."""
        from .dependencies import ScoreSite

        if self._score_sites is not None:
            if callable(self._score_sites):
                self._score_sites = self._score_sites()
            return self._score_sites
        drawn = [z.requires_grad for z in self.latents.values()]
        if all(drawn):
            return []
        if any(drawn):
            raise NotApplicable(
                "this producer does not say which costs sit downstream of which latent, and "
                f"some of {sorted(self.latents)} were reparameterized: use the traced producer"
            )
        return [ScoreSite(", ".join(self.latents), self.log_q, self.log_w)]

    def add_auxiliary(self, terms: torch.Tensor) -> None:
        """Add a training objective's term beside the ELBO, ``terms`` (B,) per point (M2's
        classification loss, ``Program.auxiliary``), to every particle's ``log_lik`` (and so
        to ``log_w`` and ``log_w_summed``), as a ``pyro.factor`` in the model would add it."""
        points = self.log_lik.shape[-1]
        if terms.shape != (points,):
            raise ProgramError(
                f"the program's auxiliary term must give one number per point of the batch, "
                f"({points},), got shape {tuple(terms.shape)}"
            )
        self._fields["log_lik"] = self.log_lik + terms
        if self.enumerated:  # (else log_w_summed is log_w, which reads log_lik)
            self._fields["log_w_summed"] = self.log_w_summed + terms

    @property
    def log_p(self) -> torch.Tensor:
        """log p(x, z) = log p(z) + log p(x | z), (K, B)."""
        return self.log_prior + self.log_lik

    @property
    def log_w(self) -> torch.Tensor:
        """Log importance weights log p(x, z) - log q(z | x), (K, B)."""
        return self.log_prior + self.log_lik - self.log_q

    @property
    def weighted_log_p(self) -> torch.Tensor:
        """The model's log density with the prior weighted, (K, B), log p(x | z) + β log p(z);
        ``log_p`` when β = 1."""
        if self.kl_weight == 1.0:
            return self.log_p
        return torch.add(self.log_lik, self.log_prior, alpha=self.kl_weight)

    @property
    def weighted_log_w(self) -> torch.Tensor:
        """The log weight of the KL warm-up objective E_q[log p(x|z)] - β KL(q ‖ p), (K, B),
        log p(x | z) + β (log p(z) - log q(z | x)); ``log_w`` when β = 1."""
        if self.kl_weight == 1.0:
            return self.log_w
        return torch.add(self.log_lik, self.log_prior - self.log_q, alpha=self.kl_weight)

    @property
    def num_particles(self) -> int:
        """K, the particles per data point."""
        if self._num_particles is not None:
            return self._num_particles
        return next(iter(self.latents.values())).shape[0]

    def __repr__(self) -> str:
        z = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.latents.items())
        return f"Particles(latents {{{z}}}, scale {self.scale:g})"


def _leaf(value: torch.Tensor) -> torch.Tensor:
    """The tensor a ``pyro.param`` value is computed from (itself for an unconstrained one)."""
    return value.unconstrained() if hasattr(value, "unconstrained") else value


def _module_parameters(fn: Callable) -> List[torch.Tensor]:
    """The parameters of the ``nn.Module`` whose bound method ``fn`` is (none otherwise)."""
    owner = getattr(fn, "__self__", None)
    return list(owner.parameters()) if isinstance(owner, torch.nn.Module) else []


@contextmanager
def _frozen(params: Sequence[torch.Tensor]):
    """Parameters with ``requires_grad`` off for the duration: computations from them record no
    gradient path back to them. (pyro.module warns about such parameters; not here.)"""
    live = list({id(p): p for p in params if p.requires_grad}.values())
    for p in live:
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was not registered in the param store")
            yield
    finally:
        for p in live:
            p.requires_grad_(True)


class _ScoreFunctionSampling(Messenger):
    """Draws the latent sites it sees with ``fn.sample()``: no gradient path from z back to the
    guide's parameters, as the score-function estimators need. It asks for this by handler,
    leaving the guide (and its distributions) as the user wrote them.

    Entered outside the particle plate, it processes each site after the plates have
    broadcast its distribution, so it draws the same numbers as ``rsample`` would.
    """

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        msg["value"] = msg["fn"].sample(*msg["args"], **msg["kwargs"])


class ProgramError(ValueError):
    """A Pyro program pyrovae cannot compute as written, or that failed inside pyrovae's
    handlers; the message names the site, plate or option and says what to do."""


def guess_max_plate_nesting(model: Callable, guide: Callable, args, kwargs=None) -> int:
    """How many plates the pair nests, found as Pyro's ELBOs find it: traced once without
    particles (Pyro's ``ELBO._guess_max_plate_nesting``, which ``TraceEnum_ELBO`` also relies
    on), with no gradient kept and the random streams left as they were. At least 1."""
    elbo = pyro.infer.Trace_ELBO()
    x = _batch_of(args)
    logger = logging.getLogger("pyro.infer.elbo")  # it says what it guessed, at INFO
    level, logger.level = logger.level, logging.WARNING
    try:
        with torch.no_grad(), fork_rng(x.device if x is not None else "cpu"):
            try:  # (probed inside: the guess blocks every handler outside)
                probed = (_SubsampleProbe()(model), _SubsampleProbe()(guide))
                elbo._guess_max_plate_nesting(*probed, tuple(args), dict(kwargs or {}))
            except _SmallBatch as small:  # the structure is that of a batch it takes
                padded = _padded(args, small.subsample_size)
                elbo._guess_max_plate_nesting(model, guide, padded, dict(kwargs or {}))
    finally:
        logger.setLevel(level)
    return max(int(elbo.max_plate_nesting), 1)


def _batch_of(args: Sequence[Any]) -> Optional[torch.Tensor]:
    """The batch x: the first argument, when it is a tensor, with the other arguments that
    hold one row per data point (a conditional model's labels, say) as further columns, so
    that a neural baseline sees all of a point's fields: (B, ...) or (B, D + ...)."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    x, n = args[0], args[0].shape[0]
    rest = [a for a in args[1:] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n]
    if not rest:
        return x
    return torch.cat([x.reshape(n, -1)] + [a.reshape(n, -1).to(x.dtype) for a in rest], 1)


def _particle_plate(k: int, nesting: int):
    """K particles in a plate left of the program's ``nesting`` plates, as Pyro's vectorized
    ELBOs draw them; at K = 1 no plate at all, as ``Trace_ELBO`` draws one particle, so that a
    program written for it (one that indexes a (B, D) tensor with a (B, D) mask, say) runs
    unchanged."""
    return pyro.plate(PARTICLE_PLATE, k, dim=-(nesting + 1)) if k > 1 else nullcontext()


def _with_particle_dim(value: torch.Tensor, event_dim: int, nesting: int) -> torch.Tensor:
    """A latent drawn without the particle plate (K = 1) as a view with the leading dims it
    would have had under it: (1, ...) left of the program's ``nesting`` plate dims. The
    program computed with ``value`` itself (which a distribution that remembers its draws
    recognizes), so derivatives in z reach the view's ``_base``."""
    missing = nesting + 1 - (value.dim() - event_dim)
    return value.reshape((1,) * missing + value.shape) if missing > 0 else value


def _per_point(
    site: Dict[str, Any], log_prob: torch.Tensor, k: int, nesting: int, depth: int, enum: int = 0
):
    """A site's log density reduced to (K, B): masked, broadcast over particles, with the dims
    of plates nested inside the data plate (at dim ``-depth``) summed out. With ``enum``
    enumeration dims left of the particles: (E_1, ..., E_enum, K, B), size 1 where the site
    does not depend on that enumerated site."""
    lp = scale_and_mask(log_prob, 1.0, site["mask"])
    full = enum + nesting + 1
    if lp.dim() < full:
        lp = lp.reshape((1,) * (full - lp.dim()) + lp.shape)
    lp = lp.expand(torch.broadcast_shapes(lp.shape, (k,) + (1,) * nesting))
    if lp.dim() != full:
        raise ProgramError(
            f"site {site['name']!r} has log-density shape {tuple(lp.shape)}: the particle "
            f"dimension sits left of max_plate_nesting = {nesting} plate dims, so that must "
            "count every plate of the model (leave it out to have it inferred)"
        )
    data = full - depth  # the data plate's position in lp
    if data + 1 < full:  # plates right of the data plate
        lp = lp.sum(tuple(range(data + 1, full)))
    if data > enum + 1:  # unused dims between the particles and the data plate, of size 1
        lp = lp.sum(tuple(range(enum + 1, data)))
    return lp


def _check_shapes(per_site: Dict[str, torch.Tensor]) -> None:
    shapes = {tuple(t.shape[-2:]) for t in per_site.values()}
    if len(shapes) > 1:
        detail = ", ".join(f"{n}: {tuple(t.shape[-2:])}" for n, t in per_site.items())
        raise ProgramError(
            "pyrovae's estimators need every sample site inside one data plate, so that each "
            f"reduces to one (particles, data points) log density, but the sites give {detail}; "
            "a latent shared by all data points (a global latent) is not supported"
        )


def _data_plate_depth(sites: Sequence[Dict[str, Any]]) -> int:
    """How deep the data plate sits: the leftmost plate dim any sample site uses (the
    particles' plate aside), counted from the right."""
    dims = [
        f.dim
        for s in sites
        for f in s["cond_indep_stack"]
        if f.name != PARTICLE_PLATE and f.vectorized and f.dim is not None
    ]
    return -min(dims) if dims else 1


def _check_data_plate(sites: Sequence[Dict[str, Any]], depth: int) -> None:
    """Every sample site must sit in the data plate (the plate at dim ``-depth``): without
    it, a site's log density is one number for the whole batch, which would be taken for
    each data point's."""
    for site in sites:
        dims = {f.dim for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE}
        if -depth not in dims:
            raise ProgramError(
                f"sample site {site['name']!r} is not inside a data plate, so its log density "
                "cannot be split per data point: in the model and the guide, draw every sample "
                f'inside `with pyro.plate("data", x.shape[0], dim={-depth}):`'
            )


def _in_data_plate(site: Dict[str, Any], depth: int) -> bool:
    return -depth in {f.dim for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE}


def _global_sites(guide_sites, model_latent, observed, depth: int) -> List[str]:
    """The latent sites outside the data plate (global latents shared by every point, and an
    autoguide's auxiliary sites), refused where a site is inside it in one program and outside
    it in the other, or where no latent is inside it. Observed sites must be inside it."""
    _check_data_plate(observed, depth)
    guide_global = {n for n, s in guide_sites.items() if not _in_data_plate(s, depth)}
    model_global = {n for n, s in model_latent.items() if not _in_data_plate(s, depth)}
    mixed = sorted((guide_global ^ model_global) & set(model_latent))
    if mixed:
        outside = "model" if mixed[0] in model_global else "guide"
        inside = "guide" if outside == "model" else "model"
        raise ProgramError(
            f"site {mixed[0]!r} is drawn outside the data plate in the {outside} but inside it "
            f"in the {inside}: draw a latent shared by every data point (a global latent) "
            "outside the data plate in both, and a latent of each point inside it in both"
        )
    if not set(guide_sites) - guide_global:
        raise ProgramError(
            f"every latent of the guide ({', '.join(sorted(guide_sites))}) is drawn outside the "
            "data plate, shared by all points: pyrovae trains and evaluates VAEs, which need a "
            "latent of each data point drawn inside the data plate (for global latents alone "
            "use Pyro's SVI)"
        )
    return sorted(guide_global)


def _autoguides(guide: Callable) -> List[Any]:
    """The autoguides a guide is, or calls where one can see it: the guide itself, the
    object whose method it is, an ``AutoGuideList``'s parts, a closure's cells."""
    from pyro.infer.autoguide import AutoGuide, AutoGuideList, AutoMessenger

    seen: List[Any] = []
    for fn in (guide, getattr(guide, "__wrapped__", None)):  # (a wrapper: what it wraps)
        seen += [fn, getattr(fn, "__self__", None)]
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                seen.append(cell.cell_contents)
            except ValueError:  # a cell not yet filled
                pass
    found = [g for g in seen if isinstance(g, (AutoGuide, AutoMessenger))]
    found += [part for g in found if isinstance(g, AutoGuideList) for part in g]
    return [g for g in found if not isinstance(g, AutoGuideList)]


def _refuse_local_autoguides(guide: Callable, guide_sites, data_plate: str) -> None:
    """An autoguide that draws a latent inside the data plate keeps one set of parameters
    per position of the batch it first saw, which shuffled minibatches would not follow.
    (An ``AutoGuide``'s sites are those of its prototype trace; an ``AutoMessenger``'s, the
    guide's sites it drew, which carry their prior in ``infer``.)"""
    from pyro.infer.autoguide import AutoMessenger

    for autoguide in _autoguides(guide):
        if isinstance(autoguide, AutoMessenger):
            sites = [s for s in guide_sites.values() if "prior" in s["infer"]]
        else:
            trace = getattr(autoguide, "prototype_trace", None)
            sites = _sample_sites(trace) if trace is not None else []
        for site in sites:
            frames = {f.name for f in site["cond_indep_stack"]}
            if not site["is_observed"] and data_plate in frames:
                kind = type(autoguide).__name__
                raise ProgramError(
                    f"the autoguide {kind} draws {site['name']!r} inside the data plate "
                    f"{data_plate!r}: its parameters are one set per point of the batch it "
                    "first saw, which pyrovae's shuffled minibatches would not follow; write an "
                    "amortized guide for the latents of each point (computed from x) and give "
                    f"the autoguide the global latents alone, {kind}(poutine.block(model, "
                    "expose=[...]))"
                )


def _shared_out(site, log_prob: torch.Tensor, k: int, nesting: int, points: int, factor: float):
    """A global site's log density, one number per particle, times ``factor`` and given to
    each of the batch's ``points``: (K, points)."""
    lp = scale_and_mask(log_prob, 1.0, site["mask"])
    lp = lp.expand(torch.broadcast_shapes(lp.shape, (k,) + (1,) * nesting))
    return (lp.reshape(k, -1).sum(1) * factor).unsqueeze(1).expand(k, points)


def local_guide_sites(guide_trace) -> Tuple[Any, List[Dict[str, Any]]]:
    """(the data plate's frame, the guide's latent sites inside it, in order) of a guide
    traced on a batch without a particle plate; the frame None where no site is in a plate."""
    sites = [s for s in _sample_sites(guide_trace) if not s["is_observed"]]
    depth = _data_plate_depth(sites)
    return _data_frame(sites, depth), [s for s in sites if _in_data_plate(s, depth)]


def _data_frame(sites: Sequence[Dict[str, Any]], depth: int):
    """The data plate's frame (name, size, full size) as the sites record it."""
    for site in sites:
        for f in site["cond_indep_stack"]:
            if f.dim == -depth and f.name != PARTICLE_PLATE:
                return f
    return None


HELD = "pyrovae_held"  # marks a global latent held at given values (``HeldGlobals``)


def _counted(site: Dict[str, Any]) -> bool:
    """Whether a trace node is a sample site whose density counts: not a plate's subsample
    draw, not a global latent held at given values."""
    return site["type"] == "sample" and not site_is_subsample(site) and not site["infer"].get(HELD)


def _sample_sites(trace) -> List[Dict[str, Any]]:
    return [s for s in trace.nodes.values() if _counted(s)]


class HeldGlobals(Messenger):
    """Holds a program's global latents at given values (name -> value, drawn from the guide
    beforehand): their sample statements return the values and drop out of every log density
    (``_counted``), as if the program had been written for those values. Annealing holds each
    chain's global latents so (``TracedProducer.holding_globals``), and so does simulation."""

    def __init__(self, values: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.values = dict(values)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True
            msg["infer"] = {**msg["infer"], HELD: True}


class _SmallBatch(Exception):
    """A plate asked for a subsample larger than the batch it was given (raised by
    ``_SubsampleProbe`` before Pyro refuses it with a bare size mismatch)."""

    def __init__(self, name: str, size: int, subsample_size: int) -> None:
        super().__init__(name, size, subsample_size)
        self.name, self.size, self.subsample_size = name, size, subsample_size


class _SubsampleProbe(Messenger):
    """Stops a program at a plate whose ``subsample_size`` exceeds its size, which Pyro
    refuses (``_SmallBatch``: a batch smaller than the program's subsample), and, given the
    ``batch`` size, at a plate that would draw a subsample of the batch (where every point is
    to be scored: the caller then passes batches the plate takes whole)."""

    def __init__(self, batch: Optional[int] = None) -> None:
        super().__init__()
        self.batch = batch

    def _pyro_sample(self, msg) -> None:
        if not site_is_subsample(msg) or msg["value"] is not None:
            return
        fn = msg["fn"]
        wanted = getattr(fn, "subsample_size", None)
        if wanted is None:
            return
        if 0 <= fn.size < wanted or (self.batch is not None and wanted < fn.size == self.batch):
            raise _SmallBatch(msg["name"], fn.size, wanted)


def _small_batch_error(small: _SmallBatch) -> ProgramError:
    return ProgramError(
        f"the plate {small.name!r} draws subsample_size={small.subsample_size} points, but the "
        f"batch holds {small.size} (Pyro refuses a subsample larger than the plate): train "
        f"with batches of at least {small.subsample_size} points (batch_size), or give the "
        "plate a smaller subsample_size"
    )


def _padded(args: Sequence[Any], rows: int) -> Tuple[Any, ...]:
    """The arguments with their batch repeated cyclically up to ``rows`` points (every
    tensor argument with the batch's leading size)."""
    n = args[0].shape[0]
    index = torch.arange(rows, device=args[0].device) % n
    return tuple(
        a[index] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a for a in args
    )


def _traced_pair(model, guide, args, kwargs, k: int, nesting: int, reparameterized, whole=False):
    """(guide trace, model trace): the guide traced under the particles' plate and the model
    replayed against it, as Pyro's ELBOs do. ``whole``: stop at a plate that would subsample
    the batch (``_SubsampleProbe``)."""
    from .enumeration import guide_enumeration, model_enumeration

    x = _batch_of(args)
    with ExitStack() as stack:
        stack.enter_context(_SubsampleProbe(x.shape[0] if whole and x is not None else None))
        if reparameterized is False:
            stack.enter_context(_ScoreFunctionSampling())
        # Sites marked for enumeration take every value of their support in dims left of the
        # particles', as in TraceEnum_ELBO (the handler acts on marked sites alone).
        stack.enter_context(guide_enumeration(nesting))
        stack.enter_context(_particle_plate(k, nesting))
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    with model_enumeration(), _particle_plate(k, nesting):
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _explained(error: Exception, model, guide, args, kwargs, k: int, nesting: int) -> Exception:
    """The error a program raised under pyrovae's K > 1 particles, explained where the particle
    dimension is the cause: when the same program runs with one particle (no particle plate),
    it is. Otherwise the program's own error, unchanged."""
    x = _batch_of(args)
    try:
        with torch.no_grad(), fork_rng(x.device if x is not None else "cpu"):
            _traced_pair(model, guide, args, kwargs, 1, nesting, None)
    except Exception:
        return error
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ProgramError(
        f"the program fails with {k} particles ({type(error).__name__}: {first}) and runs "
        f"with one: pyrovae draws K particles in a plate at dim {-(nesting + 1)}, left of the "
        f"program's {nesting} plate dim(s), as Pyro's ELBOs with vectorize_particles=True do, so "
        "every sample gets a dimension of size K on the left: write the program to broadcast "
        "over it (index with x[..., mask], not x[mask]), set max_plate_nesting if the program "
        "nests more plates than that, or train with one particle"
    )


def _split_rows(args: Sequence[Any], rows: int) -> List[Tuple[int, int, Tuple[Any, ...]]]:
    """The arguments cut into batches of exactly ``rows`` data points (a plate with
    ``subsample_size`` refuses a smaller one), the last one moved back to overlap the one
    before: (first new point, first point of the batch, the batch's arguments) each. Every
    tensor argument with the batch's leading size is cut, the others are passed whole."""
    n = args[0].shape[0]
    cut = [isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n for a in args]
    out = []
    for lo in range(0, n, rows):
        start = min(lo, n - rows)
        out.append(
            (lo, start, tuple(a[start : start + rows] if c else a for a, c in zip(args, cut)))
        )
    return out


def _points(particles: Particles, start: int, stop: Optional[int] = None) -> Particles:
    """The particles of points ``start:stop`` of the batch (the others were scored already,
    or were padding)."""
    if start == 0 and stop is None:
        return particles
    cut = slice(start, stop)

    def field(name: str) -> Field:
        if particles._fields[name] is None:
            return None
        return lambda: getattr(particles, name)[:, cut]

    return Particles(
        x=particles.x[cut] if particles.x is not None else None,
        latents={n: v[:, cut] for n, v in particles.latents.items()},
        scale=particles.scale,
        global_latents=particles.global_latents,
        enumerated=particles.enumerated,  # (their enumerated latents are not cut)
        num_particles=particles.num_particles,
        **{name: field(name) for name in particles._fields},
    )


def joined_particles(parts: Sequence[Particles]) -> Particles:
    """The particles of consecutive batches as one: every field joined along the data
    points (dim 1); fields not yet computed are joined when read."""

    def field(name: str) -> Field:
        if any(p._fields[name] is None for p in parts):
            return None
        return lambda: torch.cat([getattr(p, name) for p in parts], 1)

    xs = [p.x for p in parts]
    return Particles(
        x=torch.cat(xs) if all(x is not None for x in xs) else None,
        latents={n: torch.cat([p.latents[n] for p in parts], 1) for n in parts[0].latents},
        scale=parts[0].scale,
        global_latents=parts[0].global_latents,
        enumerated=parts[0].enumerated,  # (their enumerated latents are not joined)
        num_particles=parts[0].num_particles,
        **{name: field(name) for name in parts[0]._fields},
    )


def _checked_sites(guide_trace, model_trace):
    """(the guide's latent sites by name, the model's latent sites by name, the model's
    observed sites), refused where the pair's latents do not match or a side is missing."""
    guide_sites = {s["name"]: s for s in _sample_sites(guide_trace) if not s["is_observed"]}
    model_latent = {s["name"]: s for s in _sample_sites(model_trace) if not s["is_observed"]}
    observed = [s for s in _sample_sites(model_trace) if s["is_observed"]]
    if not guide_sites or not observed:
        what = "no latent site" if not guide_sites else "no observed site (obs=...)"
        raise ProgramError(
            f"the guide and model have {what}: pyrovae's estimators need a latent z drawn by the "
            "guide and an observed x in the model"
        )
    summed = {n for n, s in model_latent.items() if s["infer"].get("_enumerate_dim") is not None}
    missing = sorted(set(model_latent) - set(guide_sites) - summed)
    if missing:
        raise ProgramError(
            f"the model samples {missing} but the guide does not: every latent of the model "
            "needs a site of the same name in the guide, or, for a discrete one, a mark that "
            'sums it out of the model (infer={"enumerate": "parallel"}, or config_enumerate)'
        )
    # An autoguide's auxiliary sites (AutoDiagonalNormal's joint draw, say) are the guide's
    # alone: their density is part of q's, as in Pyro's ELBOs.
    auxiliary = {n for n, s in guide_sites.items() if s["infer"].get("is_auxiliary")}
    extra = sorted(set(guide_sites) - set(model_latent) - auxiliary)
    if extra:
        raise ProgramError(
            f"the guide samples {extra} but the model does not: every latent of the guide "
            "needs a site of the same name in the model"
        )
    _check_observed_support(observed)
    return guide_sites, model_latent, observed


def _check_observed_support(observed) -> None:
    """Refuse data outside an observed site's support, in one line. Pyro's validation would
    catch it where it is on, but the trainer turns that off after a program's first step
    (``TracedProducer``), and the data's every batch still needs the check: it is this one."""
    for site in observed:
        try:
            inside = site["fn"].support.check(site["value"])
        except (NotImplementedError, RuntimeError, TypeError):  # a support the site can't check
            continue
        if not bool(torch.as_tensor(inside).all()):
            raise ProgramError(
                f"site {site['name']!r} observes values outside its distribution's support "
                f"({site['fn'].support}): check the data against the likelihood (a Bernoulli "
                "takes 0 and 1: binarize the data, or choose a likelihood for its values)"
            )


def _subsampled(frame, x: Optional[torch.Tensor]) -> bool:
    """Whether the data plate draws a subsample of the batch ``x`` (``subsample_size`` smaller
    than the batch). A plate whose subsample is the batch itself (``pyro.plate("data", N,
    subsample=...)`` called with a minibatch, as SVI users write it) scores every row. Refused
    where the plate draws from something other than the batch."""
    if frame is None or frame.full_size is None or x is None or frame.size == x.shape[0]:
        return False
    if frame.size > x.shape[0] or x.shape[0] != frame.full_size:
        raise ProgramError(
            f"the data plate {frame.name!r} takes {frame.size} of {frame.full_size} points, "
            f"but the batch holds {x.shape[0]}: pyrovae passes minibatches and scales them "
            f'itself, so size the plate by the batch, pyro.plate("{frame.name}", x.shape[0]) '
            "(with subsample_size= if it should subsample the batch)"
        )
    return True


def _check_not_scaled_up(frame, x: Optional[torch.Tensor]) -> None:
    """Refuse a data plate that says the batch stands for more points than it holds, where
    the caller scales the batch itself (the trainer: N / B)."""
    if frame is None or x is None or frame.full_size is None:
        return
    if frame.size == x.shape[0] < frame.full_size:
        raise ProgramError(
            f"the data plate {frame.name!r} subsamples {frame.full_size} points to the batch "
            f"of {x.shape[0]}, and pyrovae passes minibatches and scales them itself (N / B), "
            "so the batch would be scaled twice: size the plate by the batch, "
            f'pyro.plate("{frame.name}", x.shape[0]) (subsample_size= may subsample it)'
        )


def traced_particles(
    model: Callable,
    guide: Callable,
    args: Sequence[Any] = (),
    kwargs: Optional[Dict[str, Any]] = None,
    num_particles: int = 1,
    reparameterized: Optional[bool] = None,
    scale: Optional[float] = None,
    max_plate_nesting: Optional[int] = None,
    record_params: bool = True,
    params: Sequence[torch.Tensor] = (),
    scaled: bool = True,
) -> Particles:
    """The particles of any Pyro model/guide pair, from one guide trace and one model replay.

    Args:
        model, guide: Pyro programs called as ``model(*args, **kwargs)``, every sample site
            inside one data plate, the leftmost of the program's plates (pixels may sit in a
            plate nested inside it; their log densities are summed per data point).
        args, kwargs: their arguments; ``args[0]``, when a tensor, is taken as the batch x
            (a neural baseline's input).
        num_particles: K, drawn in one vectorized pass under a plate at dim
            ``-(max_plate_nesting + 1)``; K = 1 draws without a particle plate, as
            ``Trace_ELBO`` does (the fields still have a leading dim of 1).
        reparameterized: draw latents with ``rsample`` (pathwise gradients; an error for a
            latent without one), with ``sample`` (False: score-function estimators), or as
            Pyro does by default (None: ``rsample`` where the distribution has it).
        scale: a further factor on the data scale, for callers that subsample outside the
            model (the trainer calls ``model(x)`` with a minibatch x and passes N / B here).
            Given, a data plate that says the batch stands for more points than it holds
            (``pyro.plate("data", 60000, subsample_size=len(x))``) is refused: the batch
            would be scaled up twice. None: the program's own plates say what the batch
            stands for (``model(x, num_data)`` as SVI users call it).
        max_plate_nesting: the plates the program nests; None infers it as Pyro's ELBOs do
            (``guess_max_plate_nesting``, one more trace).
        record_params: let the pair's ``pyro.param`` statements (``pyro.module`` makes one per
            parameter) reach the handlers outside, as Pyro does, so that ``pyro.infer.SVI`` and
            ``poutine.trace(param_only=True)`` see them. False hides them from every handler
            (they still return their values): a caller that holds the parameters already, like
            the trainer, saves a third of the traced step's handler work.
        params: the pair's trainable tensors where the caller knows them (the trainer does).
            ``log_q_stopped`` holds them fixed, with those Pyro knows of and those of the module
            whose method the guide is.
        scaled: the objective as Pyro's ELBOs compute it (training): each site's
            ``poutine.scale`` and the data plate's subsampling apply, the data plate's scale in
            ``Particles.scale`` and each site's own factor relative to it folded into its log
            density. False: the model's own densities, every data point of the batch scored
            (in batches the data plate takes whole where it subsamples) and no scale applied,
            for log p(x) per point.

    Returns:
        ``Particles`` with (K, B) fields.

    Raises:
        NotApplicable: a reparameterized sample was asked of a latent without ``rsample``.
        ProgramError: a site outside the data plate, a model latent missing from the guide,
            or a program that fails under the particle plate only (the message says why).
    """
    kwargs, k = kwargs or {}, num_particles
    caller_scales, scale = scale is not None, 1.0 if scale is None else scale
    nesting = max_plate_nesting or guess_max_plate_nesting(model, guide, args, kwargs)
    user_model, user_guide = model, guide  # before any wrapping
    # The same call on other points of the data (``scaled=False``: every point scored).
    again = dict(kwargs=kwargs, num_particles=k, reparameterized=reparameterized, scale=scale,
                 max_plate_nesting=nesting, record_params=record_params, params=params,
                 scaled=False)  # fmt: skip
    if not record_params:
        # Innermost, so that a param statement stops here instead of visiting every handler.
        model = poutine.block(model, hide_types=["param"])
        guide = poutine.block(guide, hide_types=["param"])
    try:
        guide_trace, model_trace = _traced_pair(
            model, guide, args, kwargs, k, nesting, reparameterized, whole=not scaled
        )
    except _SmallBatch as small:
        if scaled:
            raise _small_batch_error(small) from None
        # Every point scored, in batches the plate takes whole.
        again = partial(traced_particles, user_model, user_guide, **again)
        return _every_point(again, args, small.subsample_size, dim=1)
    except (IndexError, RuntimeError, ValueError) as e:
        explained = e if k == 1 else _explained(e, model, guide, args, kwargs, k, nesting)
        if explained is e:
            raise
        raise explained from e
    scored = _ScoredPair(
        (guide_trace, model_trace), (guide, user_guide, args, kwargs), k, nesting, scaled, scale
    )
    x = scored.points_drawn(_batch_of(args), caller_scales)
    return scored.particles(x, reparameterized, params)


class _ScoredPair:
    """A traced model/guide pair's log densities, per site and per data point, and the
    particles' fields from them (``traced_particles``; the lazy fields are its methods).

    Args:
        traces: (the guide's trace, the model's replayed on it).
        call: (the guide as traced, the user's guide, args, kwargs): what ``log_q_stopped``
            replays.
        k, nesting, scaled, scale: as ``traced_particles`` takes them (k particles).
    """

    def __init__(self, traces, call, k: int, nesting: int, scaled: bool, scale: float) -> None:
        from .enumeration import SummedSites  # (it takes PARTICLE_PLATE and ProgramError here)

        self.guide_trace, self.model_trace = traces
        self.call, self.k, self.nesting, self.scaled, self.scale = call, k, nesting, scaled, scale
        guide_sites, model_latent, observed = _checked_sites(*traces)
        self.guide_sites, self.model_latent, self.observed = guide_sites, model_latent, observed
        self.depth = _data_plate_depth(
            list(guide_sites.values()) + list(model_latent.values()) + observed
        )
        self.summed = SummedSites(guide_sites, model_latent, nesting, self.depth)
        self.global_names = _global_sites(guide_sites, model_latent, observed, self.depth)
        if self.summed and self.global_names:
            raise ProgramError(
                f"the program enumerates {sorted(self.summed.guide + self.summed.model)} and "
                f"has global latents {self.global_names}: pyrovae does not yet sum enumerated "
                "sites beside global latents; sample the discrete site (leave it unmarked) or "
                "fix the global latents"
            )
        self.data_scale = float(observed[0]["scale"]) if scaled else 1.0

    def score(self) -> None:
        """Each site's log density per point: the model's observed (``log_lik_sites``) and
        latent (``log_p_sites``) sites', the guide's (``log_q_sites``)."""
        self.log_lik_sites = {
            s["name"]: self.reduce(s, s["fn"].log_prob(s["value"])) for s in self.observed
        }
        self.points = next(iter(self.log_lik_sites.values())).shape[-1]
        self.log_q_sites = self.densities(self.guide_sites)
        self.log_p_sites = self.densities(self.model_latent)
        _check_shapes({**self.log_q_sites, **self.log_p_sites, **self.log_lik_sites})

    def reduce(self, site, log_prob: torch.Tensor) -> torch.Tensor:
        """A site's log density per (enumerated values, particle, point), its own scale
        relative to the data plate's folded in where the objective is Pyro's."""
        lp = _per_point(site, log_prob, self.k, self.nesting, self.depth, self.summed.count)
        factor = float(site["scale"]) / self.data_scale if self.scaled else 1.0
        return lp if factor == 1.0 else lp * factor

    def densities(self, sites: Dict[str, Dict[str, Any]], fn=lambda site: site["fn"]):
        """Each site's log density per point (``fn(site)`` its distribution); a global site's
        shared out over the data set where training (its own scale kept: Particles.scale
        then counts it once), left out where evaluating."""
        out = {}
        for n, site in sites.items():
            lp = fn(site).log_prob(site["value"])
            if n not in self.global_names:
                out[n] = self.reduce(site, lp)
            elif self.scaled:
                share = float(site["scale"]) / (self.data_scale * self.scale * self.points)
                out[n] = _shared_out(site, lp, self.k, self.nesting, self.points, share)
        return out

    def points_drawn(self, x: Optional[torch.Tensor], caller_scales: bool):
        """The batch's points the data plate drew (all of ``x`` unless it subsamples: a
        neural baseline's input), after refusing what the data plate says that pyrovae
        cannot follow."""
        frame = _data_frame(self.observed, self.depth)
        if frame is not None:
            _refuse_local_autoguides(self.call[1], self.guide_sites, frame.name)
        if caller_scales and self.scaled:
            _check_not_scaled_up(frame, x)
        if _subsampled(frame, x):
            x = x[self.guide_trace.nodes[frame.name]["value"]]
        return x

    def fields(self) -> Dict[str, Optional[torch.Tensor]]:
        """The particles' (K, B) log_prior, log_lik, log_q and log_w_summed."""
        if self.summed:
            return self.summed.fields(self.log_p_sites, self.log_lik_sites, self.log_q_sites)
        return dict(log_prior=_total(self.log_p_sites), log_lik=_total(self.log_lik_sites),
                    log_q=_total(self.log_q_sites), log_w_summed=None)  # fmt: skip

    def particles(self, x, reparameterized: Optional[bool], params) -> Particles:
        """The particles, their lazy fields bound to this pair."""
        summed, k, guide_sites = self.summed, self.k, self.guide_sites
        if reparameterized:
            for name, site in guide_sites.items():
                if name not in summed.guide and not site["fn"].has_rsample:
                    raise no_reparameterized_sampler(name, site["fn"])
        self.score()
        fields = self.fields()
        local = {n: s for n, s in guide_sites.items() if n not in self.global_names}
        latents, enumerated_latents = summed.sampled_values(local, self.nesting)
        return Particles(
            x=x,
            latents={
                n: _with_particle_dim(v, local[n]["fn"].event_dim, self.nesting) if k == 1 else v
                for n, v in latents.items()
            },
            global_latents={n: guide_sites[n]["value"] for n in self.global_names},
            scale=self.data_scale * self.scale,
            log_q_stopped=partial(self.log_q_stopped, params),
            kl=partial(self.kl, fields),
            enumerated=summed.guide,
            enumerated_latents=enumerated_latents,
            num_particles=k,
            score_sites=partial(self.score_sites, fields, reparameterized),
            **fields,
        )

    def log_q_stopped(self, params) -> torch.Tensor:
        """The guide replayed on the same z with its parameters frozen: each site's density
        then depends on the parameters only through z (and, in a hierarchical guide, through
        the latents upstream of it), which is the path term alone."""
        guide, user_guide, args, kwargs = self.call
        # Every tensor the guide may compute from: the caller's, those of the module whose
        # method the guide is (what pyro.module-registered code computes with, even when
        # Pyro's param store holds stale tensors under its names), and those Pyro knows of
        # (the store's and the trace's). Freezing the model's too is harmless: only the guide
        # runs.
        frozen = list(params) + _module_parameters(user_guide)
        store = pyro.get_param_store()
        frozen += [_leaf(store[name]) for name in store.keys()]
        frozen += [
            _leaf(s["value"]) for s in self.guide_trace.nodes.values() if s["type"] == "param"
        ]
        with _frozen(frozen), _particle_plate(self.k, self.nesting):
            replayed = poutine.trace(poutine.replay(guide, trace=self.guide_trace)).get_trace(
                *args, **kwargs
            )
        stopped = self.densities(self.guide_sites, lambda site: replayed.nodes[site["name"]]["fn"])
        if self.summed:
            return self.summed.expected_q(self.log_q_sites, stopped)
        return _total(stopped)

    def kl(self, fields) -> torch.Tensor:
        """KL(q ‖ p) per point in closed form per site, as TraceMeanField_ELBO: unbiased only
        when no latent's prior depends on a latent the guide draws after it, which a trace
        cannot check; hence one layer. Sites the guide enumerates are averaged exactly (their
        KL is exact); a model that sums a site out has no per-site prior to take a closed
        form against."""
        summed, log_q_sites, log_p_sites = self.summed, self.log_q_sites, self.log_p_sites
        sampled = [n for n in self.guide_sites if n not in summed.guide]
        if len(sampled) != 1:
            raise NotApplicable(
                "the closed-form KL (analytic-kl) is written for one latent layer, but this "
                f"guide has latent sites {sorted(sampled)}"
            )
        if summed.model:
            return fields["log_q"] - fields["log_prior"]
        name, site = sampled[0], self.guide_sites[sampled[0]]
        value = _closed_form_kl(site["fn"], self.model_latent[name]["fn"])
        kl_z = log_q_sites[name] - log_p_sites[name] if value is None else self.reduce(site, value)
        if not summed.guide:
            return summed.expected(None, kl_z)
        log_q_g = _total({n: log_q_sites[n] for n in summed.guide})
        log_p_g = _total({n: log_p_sites[n] for n in summed.guide})
        return summed.expected(log_q_g, log_q_g - log_p_g + kl_z)

    def score_sites(self, fields, reparameterized: Optional[bool]):
        """The guide's sites drawn without rsample, with the costs downstream of each; where
        the model sums a site out, its densities do not split by site: the whole weight."""
        from .dependencies import ScoreSite, downstream_costs

        local = [
            n for n in self.guide_sites if n not in self.global_names and n not in self.summed.guide
        ]
        sampled = [
            n
            for n in local
            if reparameterized is False or not self.guide_sites[n]["fn"].has_rsample
        ]
        if self.summed:
            log_w = fields["log_prior"] + fields["log_lik"] - fields["log_q"]
            return [ScoreSite(n, self.log_q_sites[n], log_w) for n in sampled]
        order = [s["name"] for s in _sample_sites(self.model_trace)]
        log_p = {**self.log_p_sites, **self.log_lik_sites}
        return downstream_costs(sampled, local, order, self.log_q_sites, log_p)


def _closed_form_kl(q, p) -> Optional[torch.Tensor]:
    """KL(q ‖ p) where torch registers it in closed form, else None."""
    if p.batch_shape != q.batch_shape:  # some of torch's KLs (Bernoulli's) do not broadcast
        p = p.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
        q = q.expand(p.batch_shape)
    try:
        return torch.distributions.kl_divergence(q, p)
    except NotImplementedError:
        return None


def _total(per_site: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the sites' (K, B) log densities."""
    values = list(per_site.values())
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out


def traced_scores(
    model: Callable,
    guide: Callable,
    args: Sequence[Any],
    latents: Mapping[str, torch.Tensor],
    max_plate_nesting: Optional[int] = None,
    enumerated: Sequence[str] = (),
) -> Particles:
    """Any Pyro model/guide pair's log densities at given latents: the model traced
    conditioned on them (``poutine.condition``) under a particle plate of their leading size C,
    and, when ``log_q`` is read, the guide likewise. For samplers that move z themselves
    (annealed importance sampling); ``VAE.scores`` is the direct equal.

    Discrete sites marked for enumeration (in the program, or named in ``enumerated``) are
    summed out of each density: log p(z) = log Σ_g p(z, g), log p(x | z) = log Σ_g p(x, z, g)
    - log p(z) and log q(z | x) = log Σ_g q(g | x) q(z | x, g), so that a sampler moves the
    continuous latents of the model with the discrete ones marginalized.

    Args:
        model, guide: as for ``traced_particles``, called with ``*args``.
        args: their arguments; ``args[0]`` the batch x (B, ...).
        latents: every latent site of the model that is not enumerated, name -> (C, B, ...).
        max_plate_nesting: plates nested inside the model (None: inferred).
        enumerated: sites to sum out wherever they appear (those the guide enumerates, which
            the model, replayed against the guide in training, does not mark itself).

    Returns:
        ``Particles`` with those latents, scale 1 and (C, B) fields ``log_prior``, ``log_lik``
        and ``log_q``, differentiable in the latents.
    """
    latents = dict(latents)
    c = next(iter(latents.values())).shape[0]
    nesting = max_plate_nesting or guess_max_plate_nesting(model, guide, args)

    from .enumeration import enumerate_dim, guide_enumeration, marked_for_enumeration

    def trace(program: Callable):
        x = _batch_of(args)
        probe = _SubsampleProbe(x.shape[0] if x is not None else None)
        program = marked_for_enumeration(poutine.condition(program, data=latents), enumerated)
        with probe, guide_enumeration(nesting), pyro.plate(PARTICLE_PLATE, c, dim=-(nesting + 1)):
            return poutine.trace(program).get_trace(*args)

    try:
        model_sites = _sample_sites(trace(model))
    except _SmallBatch as small:  # every point, in batches the plate takes whole
        names = list(latents)  # passed (B, C, ...), cut with the batch
        moved = tuple(latents[name].transpose(0, 1) for name in names)

        def scores(part: Tuple[Any, ...]) -> Particles:
            given = len(part) - len(names)
            some = {n: v.transpose(0, 1) for n, v in zip(names, part[given:])}
            return traced_scores(model, guide, part[:given], some, nesting, enumerated)

        return _every_point(scores, tuple(args) + moved, small.subsample_size, dim=1)
    summed = [s for s in model_sites if not s["is_observed"] and enumerate_dim(s) is not None]
    drawn = sorted(
        s["name"] for s in model_sites if not s["is_observed"] and enumerate_dim(s) is None
    )
    if drawn:
        raise ValueError(
            f"the model samples {drawn}, which the given latents do not hold: give a value for "
            "every latent site of the model"
        )
    unknown = sorted(set(latents) - {s["name"] for s in model_sites})
    if unknown:
        raise ValueError(f"the model has no sample site {unknown}")
    depth = _data_plate_depth(model_sites)
    x = _batch_of(args)

    def total(chosen) -> torch.Tensor:
        # log Σ over the enumerated values (their dims left of the chains') of the density
        dims = [-enumerate_dim(s) - nesting - 1 for s in chosen if enumerate_dim(s) is not None]
        enum = max(dims, default=0)
        out = [_per_point(s, s["fn"].log_prob(s["value"]), c, nesting, depth, enum) for s in chosen]
        _check_shapes({s["name"]: lp for s, lp in zip(chosen, out)})
        out = sum(out[1:], out[0])
        return out.logsumexp(tuple(range(enum))) if enum else out

    def log_q() -> torch.Tensor:
        sites = _sample_sites(trace(guide))
        return total([s for s in sites if s["name"] in latents or enumerate_dim(s) is not None])

    latent = [s for s in model_sites if s["name"] in latents] + summed
    log_prior = total(latent)
    return Particles(
        x=x,
        latents=latents,
        scale=1.0,
        log_prior=log_prior,
        log_lik=(total(model_sites) - log_prior)
        if summed
        else total([s for s in model_sites if s["name"] not in latents]),
        log_q=log_q,
    )


def traced_prior_latents(
    model: Callable, args: Sequence[Any], num_samples: int, max_plate_nesting: int = 1
) -> Dict[str, torch.Tensor]:
    """``num_samples`` draws of every latent site from the model's prior, for each data point:
    the model traced under a particle plate (its observed sites stay observed). Returns
    name -> (num_samples, B, ...) values, detached."""
    program = _SubsampleProbe()(poutine.block(model, hide_types=["param"]))
    try:
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-(max_plate_nesting + 1)):
            with torch.no_grad():
                t = poutine.trace(program).get_trace(*args)
        rows = _subsample_of(t, args[0].shape[0])
    except _SmallBatch as small:
        rows = small.subsample_size
    if rows is not None:  # a plate that subsamples: every point, in batches it takes whole
        again = partial(traced_prior_latents, model, num_samples=num_samples,
                        max_plate_nesting=max_plate_nesting)  # fmt: skip
        return _every_point(again, args, rows, dim=1)
    return {
        s["name"]: s["value"].detach()
        for s in t.nodes.values()
        if _counted(s) and not s["is_observed"]
    }


def traced_simulation(
    model: Callable, x_like: torch.Tensor, *rest: Any
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One draw of (x, z) from the model for each row of ``x_like`` (B, ...; its shape sets the
    batch): the model traced with its observed site unconditioned (``poutine.uncondition``),
    called as ``model(x_like, *rest)`` (``rest``: a conditional model's labels, say).
    Returns (x (B, ...), latents name -> (B, ...)), detached. The model must observe one site,
    shaped like ``x_like``."""
    program = _SubsampleProbe()(poutine.uncondition(poutine.block(model, hide_types=["param"])))
    try:
        with torch.no_grad():
            trace = poutine.trace(program).get_trace(x_like, *rest)
        rows = _subsample_of(trace, x_like.shape[0])
    except _SmallBatch as small:
        rows = small.subsample_size
    if rows is not None:  # a plate that subsamples: every point, in batches it takes whole
        return _every_point(lambda a: traced_simulation(model, *a), (x_like, *rest), rows, dim=0)
    sites = _sample_sites(trace)
    observed = [s for s in sites if s["infer"].get("was_observed")]
    if len(observed) != 1 or observed[0]["value"].shape != x_like.shape:
        raise ValueError(
            "simulating data needs a model with one observed site shaped like the data, got "
            f"{[(s['name'], tuple(s['value'].shape)) for s in observed]}"
        )
    latents = {s["name"]: s["value"].detach() for s in sites if s is not observed[0]}
    return observed[0]["value"].detach(), latents


def _subsample_of(trace, n: int) -> Optional[int]:
    """The subsample size of a plate in ``trace`` that draws a subsample of the ``n`` points
    of the batch; None where none does."""
    for site in trace.nodes.values():
        if site["type"] == "sample" and site_is_subsample(site):
            fn = site["fn"]
            if fn.subsample_size is not None and fn.subsample_size < fn.size == n:
                return fn.subsample_size
    return None


def _every_point(run: Callable, args: Sequence[Any], rows: int, dim: int):
    """``run(args)`` for every point of the batch, for a program whose plate subsamples
    ``rows`` points: on batches of exactly ``rows`` points (``_split_rows``; a smaller batch
    padded, ``_padded``), the results (tensors, in dicts and tuples) cut to the batch's points
    along ``dim`` and joined."""

    def cut(out, start: int, stop: Optional[int]):
        if isinstance(out, Particles):  # (its points along dim 1)
            return _points(out, start, stop)
        if isinstance(out, torch.Tensor):
            return out[(slice(None),) * dim + (slice(start, stop),)]
        if isinstance(out, dict):
            return {k: cut(v, start, stop) for k, v in out.items()}
        return tuple(cut(v, start, stop) for v in out)

    n = args[0].shape[0]
    if n < rows:
        return cut(run(_padded(args, rows)), 0, n)
    parts = [cut(run(a), lo - start, None) for lo, start, a in _split_rows(args, rows)]

    def joined(first, *rest):
        if isinstance(first, Particles):
            return joined_particles([first, *rest])
        if isinstance(first, torch.Tensor):
            return torch.cat([first, *rest], dim)
        if isinstance(first, dict):
            return {k: joined(first[k], *(r[k] for r in rest)) for k in first}
        return tuple(joined(*items) for items in zip(first, *rest))

    return joined(*parts)
