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

import warnings
from contextlib import ExitStack, contextmanager
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


def require_continuous_latents(model: Callable, args: Sequence[Any], what: str) -> None:
    """``require_continuous_latent`` for every latent site of ``model``, traced once on
    ``args`` (its parameters blocked, no gradient kept, the random streams left as they
    were: a check must not change the numbers of what it lets run)."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    with torch.no_grad(), fork_rng(x.device if x is not None else "cpu"):
        t = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(*args)
    for site in t.nodes.values():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
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
            reparameterization.
        scale: N / B, the factor by which the batch stands for the data set (1 without
            subsampling).
        kl_weight: β, the weight of the prior-to-guide ratio in the objective an estimator
            *differentiates* (1 by default; below 1 during KL warm-up). Estimators report the
            true objective (``log_w``) and differentiate the weighted one
            (``weighted_log_w``, ``weighted_log_p``); a score term ∇ log q is never weighted.

    Log densities, each (K, B) (read as attributes; computed on first use when given as
    functions):
        log_prior: Σ over latent sites of log p(z_s | parents), in the model.
        log_lik: Σ over observed sites of log p(x | z).
        log_q: Σ over latent sites of log q(z_s | x, parents), in the guide.
        log_q_stopped: log q(z | x) with the guide's parameters cut from the graph and the
            path through z kept (its gradient is the path term alone).
        kl: Σ over latent sites of KL(q || p) in closed form where torch registers one,
            log q - log p where it does not (Pyro's ``TraceMeanField_ELBO`` rule).

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
    ) -> None:
        self.x = x
        self.latents = dict(latents)
        self.scale = float(scale)
        self.kl_weight = 1.0
        # Tensors, or functions computing them on first read (``_LazyField``).
        self._fields: Dict[str, Optional[Field]] = {
            "log_prior": log_prior,
            "log_lik": log_lik,
            "log_q": log_q,
            "log_q_stopped": log_q_stopped,
            "kl": kl,
        }

    log_prior = _LazyField()
    log_lik = _LazyField()
    log_q = _LazyField()
    log_q_stopped = _LazyField()
    kl = _LazyField()

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
        """log p(x | z) + β log p(z), (K, B): ``log_p`` when β = 1."""
        if self.kl_weight == 1.0:
            return self.log_p
        return torch.add(self.log_lik, self.log_prior, alpha=self.kl_weight)

    @property
    def weighted_log_w(self) -> torch.Tensor:
        """log p(x | z) + β (log p(z) - log q(z | x)), (K, B): the log weight of the KL
        warm-up objective E_q[log p(x|z)] - β KL(q ‖ p); ``log_w`` when β = 1."""
        if self.kl_weight == 1.0:
            return self.log_w
        return torch.add(self.log_lik, self.log_prior - self.log_q, alpha=self.kl_weight)

    @property
    def num_particles(self) -> int:
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


def _per_point(site: Dict[str, Any], log_prob: torch.Tensor, k: int, nesting: int) -> torch.Tensor:
    """A site's log density reduced to (K, B): masked, broadcast over particles, and with the
    dims of plates nested inside the data plate summed out."""
    lp = scale_and_mask(log_prob, 1.0, site["mask"])
    lp = lp.expand(torch.broadcast_shapes(lp.shape, (k,) + (1,) * nesting))
    if lp.dim() != nesting + 1:
        raise ValueError(
            f"site {site['name']!r} has log-density shape {tuple(lp.shape)}: the particle "
            f"dimension sits left of max_plate_nesting = {nesting} plate dims, so that must "
            "count every plate of the model"
        )
    while lp.dim() > 2:  # plates right of the data plate
        lp = lp.sum(-1)
    return lp


def _check_shapes(per_site: Dict[str, torch.Tensor]) -> None:
    shapes = {tuple(t.shape) for t in per_site.values()}
    if len(shapes) > 1:
        detail = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in per_site.items())
        raise ValueError(
            "pyrovae's estimators need every sample site inside one data plate, so that each "
            f"reduces to one (particles, data points) log density, but the sites give {detail}; "
            "a latent shared by all data points (a global latent) is not supported"
        )


def _check_data_plate(sites: Sequence[Dict[str, Any]], nesting: int) -> None:
    """Every sample site must sit in the data plate (the plate at dim ``-nesting``): without
    it, a site's log density is one number for the whole batch, which would be taken for
    each data point's."""
    for site in sites:
        dims = {f.dim for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE}
        if -nesting not in dims:
            raise ValueError(
                f"sample site {site['name']!r} is not inside a data plate, so its log density "
                "cannot be split per data point: in the model and the guide, draw every sample "
                f'inside `with pyro.plate("data", x.shape[0], dim={-nesting}):`'
            )


def traced_particles(
    model: Callable,
    guide: Callable,
    args: Sequence[Any] = (),
    kwargs: Optional[Dict[str, Any]] = None,
    num_particles: int = 1,
    reparameterized: Optional[bool] = None,
    scale: float = 1.0,
    max_plate_nesting: int = 1,
    record_params: bool = True,
    params: Sequence[torch.Tensor] = (),
) -> Particles:
    """The particles of any Pyro model/guide pair, from one guide trace and one model replay.

    Args:
        model, guide: Pyro programs called as ``model(*args, **kwargs)``, every sample site
            inside one data plate, the leftmost of the model's ``max_plate_nesting`` plates.
        args, kwargs: their arguments; ``args[0]``, when a tensor, is taken as the batch x
            (a neural baseline's input).
        num_particles: K, drawn in one vectorized pass under a plate at dim
            ``-(max_plate_nesting + 1)``.
        reparameterized: draw latents with ``rsample`` (pathwise gradients; an error for a
            latent without one), with ``sample`` (False: score-function estimators), or as
            Pyro does by default (None: ``rsample`` where the distribution has it).
        scale: a further factor on the data scale, for callers that subsample outside the
            model (the trainer calls ``model(x)`` with a minibatch x and passes N / B here).
            The sites' own subsampling scale (a plate with ``subsample``) multiplies it.
        record_params: let the pair's ``pyro.param`` statements (``pyro.module`` makes one per
            parameter) reach the handlers outside, as Pyro does, so that ``pyro.infer.SVI`` and
            ``poutine.trace(param_only=True)`` see them. False hides them from every handler
            (they still return their values): a caller that holds the parameters already, like
            the trainer, saves a third of the traced step's handler work.
        params: the pair's trainable tensors where the caller knows them (the trainer does).
            ``log_q_stopped`` holds them fixed, with those Pyro knows of and those of the module
            whose method the guide is.

    Returns:
        ``Particles`` with (K, B) fields.

    Raises:
        NotApplicable: a reparameterized sample was asked of a latent without ``rsample``.
        ValueError: a site outside the data plate, or a model latent missing from the guide.
    """
    kwargs = kwargs or {}
    k, nesting = num_particles, max_plate_nesting
    user_guide = guide  # before any wrapping: log_q_stopped looks for its module
    if not record_params:
        # Innermost, so that a param statement stops here instead of visiting every handler.
        model = poutine.block(model, hide_types=["param"])
        guide = poutine.block(guide, hide_types=["param"])
    with ExitStack() as stack:
        if reparameterized is False:
            stack.enter_context(_ScoreFunctionSampling())
        stack.enter_context(pyro.plate(PARTICLE_PLATE, k, dim=-(nesting + 1)))
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    with pyro.plate(PARTICLE_PLATE, k, dim=-(nesting + 1)):
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )

    def sample_sites(trace):
        return [
            s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)
        ]

    guide_sites = {s["name"]: s for s in sample_sites(guide_trace) if not s["is_observed"]}
    model_latent = {s["name"]: s for s in sample_sites(model_trace) if not s["is_observed"]}
    observed = [s for s in sample_sites(model_trace) if s["is_observed"]]
    if not guide_sites or not observed:
        what = "no latent site" if not guide_sites else "no observed site (obs=...)"
        raise ValueError(
            f"the guide and model have {what}: pyrovae's estimators need a latent z drawn by the "
            "guide and an observed x in the model"
        )
    missing = sorted(set(model_latent) - set(guide_sites))
    if missing:
        raise ValueError(
            f"the model samples {missing} but the guide does not: every latent of the model "
            "needs a site of the same name in the guide"
        )
    extra = sorted(set(guide_sites) - set(model_latent))
    if extra:
        raise ValueError(
            f"the guide samples {extra} but the model does not: every latent of the guide "
            "needs a site of the same name in the model"
        )
    _check_data_plate(list(guide_sites.values()) + list(model_latent.values()) + observed, nesting)
    if reparameterized:
        for name, site in guide_sites.items():
            if not site["fn"].has_rsample:
                raise no_reparameterized_sampler(name, site["fn"])
    scales = {float(s["scale"]) for s in list(guide_sites.values()) + observed}
    scales |= {float(s["scale"]) for s in model_latent.values()}
    if len(scales) > 1:
        raise ValueError(
            "every sample site must sit in the same data plate with one subsampling scale, "
            f"but the sites have scales {sorted(scales)}"
        )

    def reduce(site, lp):
        return _per_point(site, lp, k, nesting)

    log_q_sites = {n: reduce(s, s["fn"].log_prob(s["value"])) for n, s in guide_sites.items()}
    log_p_sites = {n: reduce(s, s["fn"].log_prob(s["value"])) for n, s in model_latent.items()}
    log_lik_sites = {s["name"]: reduce(s, s["fn"].log_prob(s["value"])) for s in observed}
    _check_shapes({**log_q_sites, **log_p_sites, **log_lik_sites})

    def total(per_site: Dict[str, torch.Tensor]) -> torch.Tensor:
        values = list(per_site.values())
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out

    def one_layer(what: str) -> Tuple[str, Dict[str, Any]]:
        if len(guide_sites) != 1:
            raise NotApplicable(
                f"{what} is written for one latent layer, but this guide has latent sites "
                f"{sorted(guide_sites)}"
            )
        return next(iter(guide_sites.items()))

    def log_q_stopped() -> torch.Tensor:
        # The guide replayed on the same z with its parameters frozen: each site's density
        # then depends on the parameters only through z (and, in a hierarchical guide, through
        # the latents upstream of it), which is the path term alone.
        # Every tensor the guide may compute from: the caller's, those of the module whose
        # method the guide is (what pyro.module-registered code computes with, even when
        # Pyro's param store holds stale tensors under its names), and those Pyro knows of
        # (the store's and the trace's). Freezing the model's too is harmless: only the guide
        # runs.
        frozen = list(params) + _module_parameters(user_guide)
        store = pyro.get_param_store()
        frozen += [_leaf(store[name]) for name in store.keys()]
        frozen += [_leaf(s["value"]) for s in guide_trace.nodes.values() if s["type"] == "param"]
        with _frozen(frozen), pyro.plate(PARTICLE_PLATE, k, dim=-(nesting + 1)):
            replayed = poutine.trace(poutine.replay(guide, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        return total(
            {
                n: reduce(s, replayed.nodes[n]["fn"].log_prob(s["value"]))
                for n, s in guide_sites.items()
            }
        )

    def kl() -> torch.Tensor:
        # Closed form per site, as TraceMeanField_ELBO; valid for one latent layer.
        # Per site, as TraceMeanField_ELBO: unbiased only when no latent's prior depends on a
        # latent the guide draws after it, which a trace cannot check; hence one layer.
        name, site = one_layer("the closed-form KL (analytic-kl)")
        q, p = site["fn"], model_latent[name]["fn"]
        if p.batch_shape != q.batch_shape:  # some of torch's KLs (Bernoulli's) do not broadcast
            p = p.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))
            q = q.expand(p.batch_shape)
        try:
            value = torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            return log_q_sites[name] - log_p_sites[name]
        return reduce(site, value)

    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    site_scale = scales.pop() if scales else 1.0
    return Particles(
        x=x,
        latents={n: s["value"] for n, s in guide_sites.items()},
        scale=site_scale * scale,
        log_prior=total(log_p_sites),
        log_lik=total(log_lik_sites),
        log_q=total(log_q_sites),
        log_q_stopped=log_q_stopped,
        kl=kl,
    )


def traced_scores(
    model: Callable,
    guide: Callable,
    args: Sequence[Any],
    latents: Mapping[str, torch.Tensor],
    max_plate_nesting: int = 1,
) -> Particles:
    """Any Pyro model/guide pair's log densities at given latents: the model traced
    conditioned on them (``poutine.condition``) under a particle plate of their leading size C,
    and, when ``log_q`` is read, the guide likewise. For samplers that move z themselves
    (annealed importance sampling); ``VAE.scores`` is the direct equal.

    Args:
        model, guide: as for ``traced_particles``, called with ``*args``.
        args: their arguments; ``args[0]`` the batch x (B, ...).
        latents: every latent site of the model, name -> (C, B, ...) values.
        max_plate_nesting: plates nested inside the model.

    Returns:
        ``Particles`` with those latents, scale 1 and (C, B) fields ``log_prior``, ``log_lik``
        and ``log_q``, differentiable in the latents.
    """
    latents = dict(latents)
    c = next(iter(latents.values())).shape[0]
    nesting = max_plate_nesting

    def trace(program: Callable):
        with pyro.plate(PARTICLE_PLATE, c, dim=-(nesting + 1)):
            conditioned = poutine.condition(program, data=latents)
            return poutine.trace(conditioned).get_trace(*args)

    def sites(t):
        return [s for s in t.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]

    model_sites = sites(trace(model))
    drawn = sorted(s["name"] for s in model_sites if not s["is_observed"])
    if drawn:
        raise ValueError(
            f"the model samples {drawn}, which the given latents do not hold: give a value for "
            "every latent site of the model"
        )
    unknown = sorted(set(latents) - {s["name"] for s in model_sites})
    if unknown:
        raise ValueError(f"the model has no sample site {unknown}")

    def total(chosen) -> torch.Tensor:
        out = [_per_point(s, s["fn"].log_prob(s["value"]), c, nesting) for s in chosen]
        _check_shapes({s["name"]: lp for s, lp in zip(chosen, out)})
        return sum(out[1:], out[0])

    def log_q() -> torch.Tensor:
        return total([s for s in sites(trace(guide)) if s["name"] in latents])

    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return Particles(
        x=x,
        latents=latents,
        scale=1.0,
        log_prior=total([s for s in model_sites if s["name"] in latents]),
        log_lik=total([s for s in model_sites if s["name"] not in latents]),
        log_q=log_q,
    )


def traced_prior_latents(
    model: Callable, args: Sequence[Any], num_samples: int, max_plate_nesting: int = 1
) -> Dict[str, torch.Tensor]:
    """``num_samples`` draws of every latent site from the model's prior, for each data point:
    the model traced under a particle plate (its observed sites stay observed). Returns
    name -> (num_samples, B, ...) values, detached."""
    with pyro.plate(PARTICLE_PLATE, num_samples, dim=-(max_plate_nesting + 1)):
        with torch.no_grad():
            t = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(*args)
    return {
        s["name"]: s["value"].detach()
        for s in t.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    }


def traced_simulation(
    model: Callable, x_like: torch.Tensor
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """One draw of (x, z) from the model for each row of ``x_like`` (B, ...; its shape sets the
    batch): the model traced with its observed site unconditioned (``poutine.uncondition``).
    Returns (x (B, ...), latents name -> (B, ...)), detached. The model must observe one site,
    shaped like ``x_like``."""
    with torch.no_grad():
        t = poutine.trace(poutine.uncondition(poutine.block(model, hide_types=["param"])))
        trace = t.get_trace(x_like)
    sites = [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
    observed = [s for s in sites if s["infer"].get("was_observed")]
    if len(observed) != 1 or observed[0]["value"].shape != x_like.shape:
        raise ValueError(
            "simulating data needs a model with one observed site shaped like the data, got "
            f"{[(s['name'], tuple(s['value'].shape)) for s in observed]}"
        )
    latents = {s["name"]: s["value"].detach() for s in sites if s is not observed[0]}
    return observed[0]["value"].detach(), latents
