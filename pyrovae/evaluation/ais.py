"""Annealed importance sampling (Neal, 2001) of log p(x), with Hamiltonian Monte Carlo moves.

For each data point x, C chains start at z ~ p_0 (the prior p(z), or the guide q(z | x)) and move
through T intermediate distributions f_t(z) = p_0(z)^(1 - β_t) p(x, z)^β_t, 0 = β_0 < … < β_T = 1.
Each chain's log weight gathers Σ_t (β_t - β_{t-1}) [log p(x, z_{t-1}) - log p_0(z_{t-1})], and
z_t is z_{t-1} moved by one HMC transition that leaves f_t invariant. Then

    log p̂(x) = log (1/C) Σ_c exp(log w_c),

a stochastic lower bound on log p(x) (its exponential is unbiased) that tightens as T grows,
without the importance-weighted estimate's need for a good proposal (Wu et al., 2017).

The transitions follow the published reference code (Wu et al.'s, which follows Neal's HMC):
``leapfrog`` steps of a step size per chain, multiplied by 1.02 or 0.98 after each transition as
the chain's running acceptance rate (an exponential average with weight 0.9 on the past) is above
or below 0.65, and clipped to [1e-4, 0.5]. Chains and data points are tensor dimensions; the log
densities and their gradients in z come from the producer's ``score`` (``VAE.scores`` for the
library's VAE, ``traced_scores`` for any Pyro model: tested equal), so every model the
evaluator handles, hierarchical ones included, is annealed by the same code.

Why not Pyro's ``mcmc.HMC``: it runs one chain per process with one step size, and has no
annealing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..config import Rule
from ..data import as_data_tensor
from ..distributed import chunk_seed
from ..particles import ProgramError
from ..producers import Producer, make_producer
from ..runtime import fork_rng, progress_bar, seed_streams
from ..threads import share_cores
from .importance import data_dtype, estimate_log_likelihood
from .partial import PartialStore
from .truth import mean_stderr

INITS = ("prior", "guide")
SCHEDULES = ("sigmoid", "linear")
TARGET_ACCEPTANCE = 0.65
# The acceptance rate along the schedule is reported in at most this many stretches.
STAGES = 20
STEP_SIZE_RANGE = (1e-4, 0.5)
# (chain, data point) pairs annealed at once: memory is bounded by this.
DEFAULT_CHAIN_PAIRS = 4096


def schedule(steps: int, kind: str = "sigmoid", sharpness: float = 4.0) -> torch.Tensor:
    """β_0 = 0 < β_1 < … < β_T = 1, (T + 1,) float64: ``linear``, or ``sigmoid``, σ(δ (2t/T -
    1)) rescaled to [0, 1] (Grosse et al., 2015), which spends more steps near both ends."""
    Rule("int", minimum=1).check("steps", steps)
    t = torch.arange(steps + 1, dtype=torch.float64) / steps
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISResult:
    """Annealed importance sampling's estimate, in nats per data point.

    ``log_px`` is the mean over data points of log p̂(x), ``log_px_stderr`` the standard error of
    that mean over data points; ``mc_stderr`` the mean over points of each estimate's own Monte
    Carlo standard error (across its chains, by the delta method); ``acceptance`` the mean HMC
    acceptance rate; ``refine_steps``, where set, the Adam steps per point that refined the
    guide annealed from (``pyrovae evaluate --refine``). ``bits_per_dim`` (with its standard
    error) is ``log_px`` in bits per dimension, set for data of 256 (or L) levels
    (``pyrovae.evaluation.bits``).
    ``per_point_*`` are (n,) tensors, on the CPU.
    """

    log_px: float
    log_px_stderr: float
    mc_stderr: float
    acceptance: float
    steps: int
    chains: int
    leapfrog: int
    init: str
    n: int
    seconds: float
    producer: Optional[str] = None
    checkpoint: Optional[str] = None  # the run's checkpoint evaluated (best, last), if any
    refine_steps: Optional[int] = None  # the guide annealed from, refined by so many steps
    # A program's global latents, held at the guide's draws: log p(x) is then the predictive
    # log E_q(θ)[p(x | θ)] (``pyrovae.particles.Particles``).
    global_latents: Optional[List[str]] = None
    bits_per_dim: Optional[float] = None
    bits_per_dim_stderr: Optional[float] = None
    exact_log_px: Optional[float] = None
    exact_log_px_stderr: Optional[float] = None
    # Points whose results an earlier, interrupted run saved (``pyrovae.evaluation.partial``);
    # ``seconds`` is this run's time alone.
    resumed_points: Optional[int] = None
    per_point_log_px: Optional[torch.Tensor] = None
    per_point_mc_stderr: Optional[torch.Tensor] = None
    per_point_acceptance: Optional[torch.Tensor] = None
    # The mean acceptance rate over chains and points in each of (at most) ``STAGES`` equal
    # stretches of the schedule, first to last: where along it the chains stop moving.
    acceptance_by_stage: Optional[List[float]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The scalar fields, JSON-ready (the optional ones only when set), with ``method``:
        ``ais``."""
        d = {"method": "ais", **asdict(self)}
        if d["acceptance_by_stage"] is None:
            d.pop("acceptance_by_stage")
        for key in ("per_point_log_px", "per_point_mc_stderr", "per_point_acceptance"):
            d.pop(key)
        for key in ("checkpoint", "refine_steps", "global_latents", "resumed_points"):
            if d[key] is None:
                d.pop(key)
        for key in ("bits_per_dim", "exact_log_px"):
            if d[key] is None:
                d.pop(key)
                d.pop(f"{key}_stderr")
        return d


class _Target:
    """log f_β(z) = v0(z) + β v1(z) for one batch, with v0 = log p_0 and v1 = log p(x, z) -
    log p_0, and their gradients in z kept apart, so that one evaluation serves every β."""

    def __init__(self, producer: Producer, x: torch.Tensor, init: str, shapes) -> None:
        self.producer, self.x, self.init, self.shapes = producer, x, init, shapes

    def unflatten(self, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, start = {}, 0
        for name, shape in self.shapes:
            size = math.prod(shape)
            out[name] = z[..., start : start + size].reshape(z.shape[:-1] + shape)
            start += size
        return out

    def __call__(self, z: torch.Tensor):
        """(v0, v1, ∇v0, ∇v1) at z (C, B, D): (C, B) values and (C, B, D) gradients."""
        with torch.enable_grad():
            z = z.detach().requires_grad_()
            scored = self.producer.score(self.x, self.unflatten(z))
            if self.init == "prior":
                v0, v1 = scored.log_prior, scored.log_lik
            else:
                v0 = scored.log_q
                v1 = scored.log_prior + scored.log_lik - v0
            (g0,) = torch.autograd.grad(v0.sum(), z, retain_graph=True)
            (g1,) = torch.autograd.grad(v1.sum(), z)
        return v0.detach(), v1.detach(), g0, g1


def _hmc(target: _Target, state, beta: float, eps: torch.Tensor, leapfrog: int):
    """One HMC transition leaving f_β invariant, for every chain at once: ``leapfrog`` steps of
    size ``eps`` (C, B, 1), then a Metropolis test per chain. ``state`` is (z, v0, v1, g0, g1);
    returns the new state and the acceptance indicator (C, B)."""
    z, v0, v1, g0, g1 = state
    momentum = torch.randn_like(z)
    energy = -(v0 + beta * v1) + 0.5 * momentum.pow(2).sum(-1)
    p = momentum + 0.5 * eps * (g0 + beta * g1)
    new = state
    for step in range(leapfrog):
        z_new = new[0] + eps * p
        new = (z_new, *target(z_new))
        if step < leapfrog - 1:
            p = p + eps * (new[3] + beta * new[4])
    p = p + 0.5 * eps * (new[3] + beta * new[4])
    new_energy = -(new[1] + beta * new[2]) + 0.5 * p.pow(2).sum(-1)
    log_ratio = energy - new_energy
    accept = torch.log(torch.rand_like(log_ratio)) < torch.nan_to_num(log_ratio, nan=-math.inf)
    keep = accept.unsqueeze(-1)
    chosen = (
        torch.where(keep, new[0], z),
        torch.where(accept, new[1], v0),
        torch.where(accept, new[2], v1),
        torch.where(keep, new[3], g0),
        torch.where(keep, new[4], g1),
    )
    return chosen, accept


def _anneal(
    producer: Producer,
    x: torch.Tensor,
    betas: torch.Tensor,
    chains: int,
    leapfrog: int,
    init: str,
    step_size: float,
    on_step=None,
    start: Optional[Dict[str, torch.Tensor]] = None,
    by_step: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """AIS for one batch x (B, ...) along ``betas``: (log weights (C, B), mean acceptance per
    point (B,)); ``by_step`` (T,), where given, gains each transition's count of accepted
    moves over the batch's chains. The chains start at ``start`` (name -> (C, B, ...)) where
    given, else at draws from p_0 (the prior or the guide, as ``init`` says). A program's
    global latents are held at one draw from the guide per chain (``holding_globals``)."""
    producer = producer.holding_globals(x, chains)
    with torch.no_grad():
        if start is not None:
            start = {k: v.detach() for k, v in start.items()}
        elif init == "prior":
            start = producer.sample_prior(x, chains)
        else:
            start = producer.sample_guide(x, chains)
    shapes = [(name, tuple(v.shape[2:])) for name, v in start.items()]
    z = torch.cat([v.reshape(v.shape[:2] + (-1,)) for v in start.values()], -1)
    target = _Target(producer, x, init, shapes)
    state = (z, *target(z))
    log_w = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
    eps = torch.full(z.shape[:2] + (1,), step_size, dtype=z.dtype, device=z.device)
    running = torch.full(z.shape[:2], TARGET_ACCEPTANCE, dtype=z.dtype, device=z.device)
    accepted = torch.zeros(z.shape[:2], dtype=z.dtype, device=z.device)
    low, high = STEP_SIZE_RANGE
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]) * state[2].double()
        state, accept = _hmc(target, state, float(betas[t]), eps, leapfrog)
        accept = accept.to(z.dtype)
        accepted += accept
        if by_step is not None:
            by_step[t - 1] += accept.sum()  # (on the chains' device: no sync per step)
        running = 0.9 * running + 0.1 * accept
        eps = (eps * torch.where(running > TARGET_ACCEPTANCE, 1.02, 0.98).unsqueeze(-1)).clamp(
            low, high
        )
        share_cores()
        if on_step is not None:
            on_step()
    return log_w, (accepted / (len(betas) - 1)).mean(0)


def _log_mean_exp(log_w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log mean exp over chains (B,), its Monte Carlo standard error (B,)) from (C, B) log
    weights: the delta method, std(w) / (mean(w) √C)."""
    c = log_w.shape[0]
    top = log_w.max(0).values
    w = torch.exp(log_w - top)
    mean = w.mean(0)
    stderr = w.std(0) / (mean * math.sqrt(c)) if c > 1 else torch.full_like(mean, math.nan)
    return top + mean.log(), stderr


def as_producer(subject: Any) -> Producer:
    """``subject`` as a producer: one already (``pyrovae.producers``), else a ``VAE`` or a
    ``(model, guide)`` pair of the user's own (``make_producer``: traced for a pair)."""
    if hasattr(subject, "score") and hasattr(subject, "sample_prior"):
        return subject
    if isinstance(subject, list):
        subject = tuple(subject)
    return make_producer(subject)


def _check_settings(steps, chains, leapfrog, chain_pairs, step_size, init) -> None:
    """Refuse AIS settings out of range, each by its name."""
    for name, value in (
        ("steps", steps),
        ("chains", chains),
        ("leapfrog", leapfrog),
        ("chain_pairs", chain_pairs),
    ):
        Rule("int", minimum=1).check(name, value)
    Rule("number", positive=True).check("step_size", step_size)
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def ais_log_likelihood(
    producer: Any,
    data: torch.Tensor,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 10,
    init: str = "prior",
    schedule_kind: str = "sigmoid",
    step_size: float = 0.05,
    chain_pairs: int = DEFAULT_CHAIN_PAIRS,
    progress: bool = True,
    seed: Optional[int] = None,
    store: Optional[PartialStore] = None,
) -> AISResult:
    """Annealed importance sampling of log p(x) for every row of ``data`` (module docstring).

    Args:
        producer: what computes the model's log densities at given latents: a ``VAE``, a
            ``(model, guide)`` pair of Pyro programs of your own (called as ``model(x)``,
            ``guide(x)``, every sample site in one data plate), or a producer
            (``pyrovae.producers``).
        data: (N, ...) data points, annealed in batches on the producer's device
            (``producer.device``; where it has none, the data's).
        steps: T, the intermediate distributions.
        chains: C, chains per data point.
        leapfrog: leapfrog steps per HMC transition.
        init: ``prior`` (anneal from p(z)) or ``guide`` (from q(z | x)).
        schedule_kind: ``sigmoid`` or ``linear`` (``schedule``).
        step_size: the chains' initial HMC step size (then adapted per chain).
        chain_pairs: at most this many (chain, data point) pairs at once (bounds memory).
        progress: show a progress bar with an ETA.
        seed: ``None``: the chains draw from torch's global stream, batch after batch. An int:
            each batch of points from a stream of its own (``chunk_seed(seed, first point,
            0)``), so each point's estimate depends only on the seed; the global streams are
            left as they were.
        store: save the finished batches' results there and take up those an earlier run
            saved (``pyrovae.evaluation.partial.PartialStore``; needs ``seed``): an
            interrupted evaluation continues where it stopped, with the uninterrupted result.

    Returns:
        An ``AISResult``.
    """
    producer = as_producer(producer)
    _check_settings(steps, chains, leapfrog, chain_pairs, step_size, init)
    betas = schedule(steps, schedule_kind)
    # NaN or infinite values refused by name here, not blamed on the chains at the end.
    data = as_data_tensor(data, "data", data_dtype(data, producer))
    n = data.shape[0]
    if n == 0:
        raise ValueError("cannot evaluate an empty data set")
    if store is not None and seed is None:
        raise ValueError("an AIS evaluation that saves its progress (store=) needs a seed")
    batch = max(1, min(n, chain_pairs // chains))
    device = getattr(producer, "device", None) or data.device
    producer.require_continuous(data[:1].to(device), "annealed importance sampling (HMC)")
    start = time.perf_counter()
    # Per point: the estimate, its Monte Carlo error, the chains' acceptance rate.
    rows = {k: torch.zeros(n, dtype=torch.float64) for k in ("log_px", "mc", "acceptance")}
    by_step = torch.zeros(steps, dtype=torch.float64, device=device)
    done = torch.zeros(n, dtype=torch.bool)
    if store is not None:
        settings = {"method": "ais", "n": n, "steps": steps, "chains": chains, "batch": batch}
        settings.update(leapfrog=leapfrog, init=init, step_size=step_size, seed=seed)
        done = store.attach({**settings, "schedule": schedule_kind}, rows, {"by_step": by_step})
    todo = [lo for lo in range(0, n, batch) if not done[lo]]
    bar = progress_bar(
        (n - int(done.sum())) * steps, f"AIS, T={steps}, {chains} chains", "point-step", progress
    )
    anneal = functools.partial(
        _anneal, producer, betas=betas, chains=chains, leapfrog=leapfrog, init=init,
        step_size=step_size,
    )  # fmt: skip
    _anneal_batches(anneal, data, todo, batch, seed, rows, by_step, bar, store)
    result = AISResult(
        *_checked_mean(rows["log_px"]),
        mc_stderr=rows["mc"].mean().item(),
        acceptance=rows["acceptance"].mean().item(),
        steps=steps,
        chains=chains,
        leapfrog=leapfrog,
        init=init,
        n=n,
        seconds=time.perf_counter() - start,
        producer=getattr(producer, "name", None),
        per_point_log_px=rows["log_px"],
        per_point_mc_stderr=rows["mc"],
        per_point_acceptance=rows["acceptance"],
        acceptance_by_stage=_stages(by_step.cpu() / (chains * n)),
        resumed_points=None if store is None else store.resumed,
    )
    if store is not None:
        store.remove()
    return result


def _anneal_batches(anneal, data, todo, batch: int, seed, rows, by_step, bar, store) -> None:
    """Anneal the batches of ``data`` starting at the points ``todo``, each from its own
    stream where ``seed`` is given, writing each point's estimate, Monte Carlo error and
    acceptance into ``rows`` (name -> (N,)) and the acceptance by step into ``by_step`` (T,);
    each finished batch goes to ``store``, which is flushed however the loop ends."""
    device = by_step.device
    try:
        with fork_rng(device) if seed is not None else contextlib.nullcontext():
            for lo in todo:
                x = data[lo : lo + batch].to(device)
                if seed is not None:
                    seed_streams(chunk_seed(seed, lo, 0), device)
                batch_steps = torch.zeros_like(by_step)
                log_w, acc = anneal(
                    x, on_step=lambda size=x.shape[0]: bar.update(size), by_step=batch_steps
                )
                hi = lo + x.shape[0]
                for name, value in zip(rows, (*_log_mean_exp(log_w), acc)):
                    rows[name][lo:hi] = value.double().cpu()
                by_step += batch_steps
                if store is not None:
                    store.finished(lo, hi, {"by_step": batch_steps})
    finally:
        bar.close()
        if store is not None:
            store.flush()


def _checked_mean(per_point: torch.Tensor) -> Tuple[float, float]:
    """The mean of the points' AIS estimates (N,) and its standard error over points; refused
    when some estimate is not finite."""
    if not torch.isfinite(per_point).all():
        raise FloatingPointError(
            "the AIS estimate is not finite for some data points: the model assigns them zero "
            "density or the chains diverged; check the data and the checkpoint"
        )
    return mean_stderr(per_point)


def _stages(rates: torch.Tensor) -> List[float]:
    """Per-transition rates (T,) averaged over at most ``STAGES`` equal stretches."""
    return [part.mean().item() for part in rates.tensor_split(min(STAGES, rates.numel()))]


@dataclass
class BDMCResult:
    """The bidirectional Monte Carlo sandwich on data simulated from the model, nats per point.

    ``lower``: forward AIS from the prior (a stochastic lower bound); ``upper``: reverse AIS
    from the latent that simulated each point, an exact posterior sample (a stochastic upper
    bound); ``width`` = upper - lower, the mean over points of each point's sandwich;
    ``iw``: the importance-weighted estimate with ``k`` samples from the guide on the same
    points (another lower bound). Each mean comes with the standard error over points; the
    sandwich's width is a paired difference, so its standard error is far smaller.
    ``points`` holds the simulated data; it and ``per_point``'s (n,) tensors are on the CPU.
    """

    n: int
    steps: int
    chains: int
    leapfrog: int
    k: int
    lower: float
    lower_stderr: float
    upper: float
    upper_stderr: float
    width: float
    width_stderr: float
    iw: float
    iw_stderr: float
    acceptance: float
    seconds: float
    exact_log_px: Optional[float] = None
    exact_log_px_stderr: Optional[float] = None
    per_point: Optional[Dict[str, torch.Tensor]] = None
    points: Optional[torch.Tensor] = None  # the simulated data, (n, ...)

    def to_dict(self) -> Dict[str, Any]:
        """The scalar fields, JSON-ready (``exact_log_px`` and its standard error only where
        the model has one)."""
        d = asdict(self)
        d.pop("per_point")
        d.pop("points")
        if d["exact_log_px"] is None:
            d.pop("exact_log_px")
            d.pop("exact_log_px_stderr")
        return d


def _refuse_global_latents(producer: Producer, x: torch.Tensor) -> None:
    """BDMC needs the simulating latents to be an exact posterior draw of the model it
    anneals: refused for a program with global latents, whose annealing holds them at the
    guide's draws."""
    names = producer.global_sites(x) if hasattr(producer, "global_sites") else []
    if names:
        raise ProgramError(
            f"BDMC is not supported for a program with global latents ({', '.join(names)}): "
            "its sandwich needs data simulated from the very model each chain anneals, and "
            "each chain holds the global latents at its own draw from the guide; use evaluate "
            "(importance weighting, or --ais) instead"
        )


def _reverse_ais(
    producer, x, truth, steps, chains, leapfrog, step_size, chain_pairs, progress
) -> Tuple[torch.Tensor, float]:
    """BDMC's reverse AIS: from the exact posterior draws ``truth`` (name -> (N, ...)) of the
    simulated points x (N, ...), annealing from β = 1 to 0. Returns the upper bounds on
    log p(x), (N,) on the CPU (minus the log mean of the weights, which are unbiased for
    1 / p(x)), and the mean acceptance rate."""
    betas = schedule(steps).flip(0)  # 1 -> 0
    n = x.shape[0]
    batch = max(1, min(n, chain_pairs // chains))
    upper, acceptance = [], []
    bar = progress_bar(n * steps, f"reverse AIS, T={steps}", "point-step", progress)
    try:
        for lo in range(0, n, batch):
            part = {name: v[lo : lo + batch] for name, v in truth.items()}
            exact = {name: v.unsqueeze(0).expand((chains,) + v.shape) for name, v in part.items()}
            size = x[lo : lo + batch].shape[0]
            log_w, acc = _anneal(
                producer,
                x[lo : lo + batch],
                betas,
                chains,
                leapfrog,
                "prior",
                step_size,
                on_step=lambda size=size: bar.update(size),
                start=exact,
            )
            estimate, _ = _log_mean_exp(log_w)  # of 1 / p(x)
            upper.append(-estimate)
            acceptance.append(acc.double())
    finally:
        bar.close()
    return torch.cat(upper).cpu(), torch.cat(acceptance).mean().item()


def bdmc(
    producer: Any,
    x_like: torch.Tensor,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 10,
    k: int = 5000,
    step_size: float = 0.05,
    chain_pairs: int = DEFAULT_CHAIN_PAIRS,
    progress: bool = True,
) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse, Ghahramani & Adams, 2015): simulate one (z, x) from
    the model per row of ``x_like`` (N, ...; only its shape is used), then bracket each
    simulated x's log p(x) between forward AIS from the prior and reverse AIS from z (the
    annealing run backwards, from p(z | x), of which z is an exact sample, to the prior: its
    weights are unbiased for 1 / p(x)). Also the importance-weighted estimate with ``k``
    samples on the same points. Returns a ``BDMCResult``. ``producer``: as for
    ``ais_log_likelihood`` (a ``VAE``, a ``(model, guide)`` pair, or a producer). Runs on the
    producer's device (``producer.device``; where it has none, ``x_like``'s)."""
    start = time.perf_counter()
    producer = as_producer(producer)
    x_like = x_like.to(getattr(producer, "device", None) or x_like.device)
    producer.require_continuous(x_like[:1], "BDMC's annealed importance sampling (HMC)")
    _refuse_global_latents(producer, x_like[:1])
    x, truth = producer.simulate(x_like)
    forward = ais_log_likelihood(
        producer, x, steps, chains, leapfrog, "prior", "sigmoid", step_size, chain_pairs, progress
    )
    upper_pp, reverse_acceptance = _reverse_ais(
        producer, x, truth, steps, chains, leapfrog, step_size, chain_pairs, progress
    )
    iw = estimate_log_likelihood(None, None, x, k, producer=producer, progress=progress)
    per_point = {
        "lower": forward.per_point_log_px,
        "upper": upper_pp,
        "width": upper_pp - forward.per_point_log_px,
        "iw": iw.per_point_log_px,
    }
    stats = {name: mean_stderr(v) for name, v in per_point.items()}
    return BDMCResult(
        n=x.shape[0],
        steps=steps,
        chains=chains,
        leapfrog=leapfrog,
        k=k,
        lower=stats["lower"][0],
        lower_stderr=stats["lower"][1],
        upper=stats["upper"][0],
        upper_stderr=stats["upper"][1],
        width=stats["width"][0],
        width_stderr=stats["width"][1],
        iw=stats["iw"][0],
        iw_stderr=stats["iw"][1],
        acceptance=(forward.acceptance + reverse_acceptance) / 2,
        seconds=time.perf_counter() - start,
        per_point=per_point,
        points=x.cpu(),
    )
