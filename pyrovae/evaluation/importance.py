"""Estimating log p(x): the importance-weighted estimator, vectorized over particles and chunked.

For each data point x the estimator is

    log p̂_K(x) = log (1/K) Σ_k p(x, z_k) / q(z_k | x),    z_k ~ q(z | x),

a stochastic lower bound whose bias shrinks as K grows (Burda et al., 2015); K = 1 gives a
single-sample ELBO. The log weights are the particles' ``log_w_summed`` (``pyrovae.particles``:
``log_w``, with the guide's enumerated discrete sites summed exactly where it has any), from a
producer: traced (one trace of the guide and one replay of the model under a particle plate
left of the data plate: any Pyro model/guide pair) or, for the library's VAE, direct (the same
numbers from its parts, tested equal). Particles and data points are evaluated in chunks whose
size bounds memory whatever K is, on the producer's device: the data go there whole where they
fit (``pyrovae.runtime.place``), else chunk by chunk; the per-point results come back on the CPU.
Given a seed, each chunk draws from a stream of its own, so that each point's estimate does not
depend on the chunks before it: processes can then split the points (``pyrovae.distributed``).

Why not Pyro's own tools: ``pyro.infer.Importance`` draws one trace per sample (sequential) and
returns no per-data-point estimates.

The same estimator with the prior as the proposal, log (1/K) Σ_k p(x | z_k), z_k ~ p(z) (naive
Monte Carlo over the prior), is ``estimate_log_likelihood(model, prior_guide(model), x, k)``:
the guide is the model with its observed sites hidden, as Pyro's ``Importance`` proposes when
given no guide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import torch
from pyro import poutine

from ..config import SEED_RULE, Rule
from ..data import as_data_tensor
from ..distributed import World, chunk_seed
from ..model import VAE, TwoLayerVAE
from ..particles import traced_particles
from ..parts.refinement import LocalRefinement, fit_guide_inputs
from ..producers import (
    DirectProducer,
    GivenInputProducer,
    Producer,
    TracedProducer,
    make_producer,
)
from ..runtime import fork_rng, module_device, place, progress_bar, seed_streams, tune_allocator
from .bits import data_levels, with_bits_per_dim
from .partial import PartialStore
from .truth import mean_stderr, with_exact_log_px
from .weights import WeightDiagnostics, WeightStream, k_ladder, verdict

# (particle, data point) pairs evaluated at once. Memory is bounded by this whatever K is, and
# smaller is faster up to a point: a (4096, 784) float tensor (13 MB) stays in cache between the
# elementwise ops of the likelihood, where a 32768-pair chunk made the MNIST evaluation 1.6x
# slower on 2 cores.
#: (particle, point) pairs scored at once by default: bounds the evaluator's memory.
DEFAULT_CHUNK_PAIRS = 4096
# With chunk seeds (``seed=``), a chunk holds at most this many data points, so that the points
# split into enough whole chunks to share out evenly between processes (a chunk is the unit
# that draws from one stream, so the split must not cut one).
SEEDED_CHUNK_POINTS = 256


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    k: int,
    max_plate_nesting: Optional[int] = None,
) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k | x) for k particles and every row of ``x``, traced (with
    the guide's enumerated sites summed: ``Particles.log_w_summed``).

    Args:
        model, guide: Pyro programs taking ``x`` (B, ...) with a data plate at dim -1.
        x: a batch, (B, ...).
        k: number of particles, drawn in one vectorized pass.
        max_plate_nesting: plates nested inside the model; particles go left of them (None:
            inferred as Pyro's ELBOs infer it).

    Returns:
        (k, B) log weights.
    """
    return traced_particles(
        model, guide, (x,), num_particles=k, max_plate_nesting=max_plate_nesting, scaled=False
    ).log_w_summed


def prior_guide(model: Callable) -> Callable:
    """The model's prior as a guide: ``model`` with its observed sites hidden, so that running
    it draws every latent site from the model's own distribution, p(z) (p(z2) p(z1 | z2) for
    two layers), and a trace of it scores z there. This is the proposal Pyro's
    ``pyro.infer.Importance`` uses when given no guide.

    With it every log weight is log p(x, z) - log p(z) = log p(x | z), and the importance-
    weighted estimator becomes naive Monte Carlo over the prior, log (1/K) Σ_k p(x | z_k),
    z_k ~ p(z): ``estimate_log_likelihood(model, prior_guide(model), x, k)`` (traced; no
    second copy of the estimator). It is unbiased for p(x) like the guide's, but its variance
    grows with how far the posterior is from the prior.

    Args:
        model: a Pyro model taking ``x`` (B, ...), its sites in a data plate at dim -1.

    Returns:
        A guide, called as ``guide(x)`` (and with the model's other arguments): its latent
        sites are the model's, shaped (..., B, ...) as in the model. (The observed sites still
        run, hidden: the model's likelihood is built, not scored.)
    """
    return poutine.block(model, hide_types=["observe"])


@dataclass
class LogLikelihood:
    """The result of an importance-weighted evaluation, in nats per data point.

    ``log_px`` is the mean over data points of log p̂_K(x) and ``elbo`` the mean of the average
    log weight (a K-sample estimate of the ELBO), each with the standard error of that mean over
    data points. ``exact_log_px`` is the closed-form mean log p(x) where the model admits one.
    ``per_point_log_px`` and ``per_point_elbo`` are (n,) tensors. ``producer`` names the route
    the log weights took (``direct`` or ``traced``). ``weights``: what each point's weights say
    about whether its estimate can be trusted (effective sample size, Pareto k̂, the estimate
    against K: ``pyrovae.evaluation.weights``).
    """

    log_px: float
    log_px_stderr: float
    elbo: float
    elbo_stderr: float
    k: int
    n: int
    seconds: float
    exact_log_px: Optional[float] = None
    exact_log_px_stderr: Optional[float] = None
    producer: Optional[str] = None
    checkpoint: Optional[str] = None  # the run's checkpoint evaluated (best, last), if any
    refine_steps: Optional[int] = None  # the proposal refined per point by this many steps
    # A program's global latents, held at the guide's draws: log p(x) is then the predictive
    # log E_q(θ)[p(x | θ)] (``pyrovae.particles.Particles``).
    global_latents: Optional[List[str]] = None
    bits_per_dim: Optional[float] = None
    bits_per_dim_stderr: Optional[float] = None
    # Points whose results an earlier, interrupted run of this evaluation saved
    # (``pyrovae.evaluation.partial``); ``seconds`` is this run's time alone.
    resumed_points: Optional[int] = None
    per_point_log_px: Optional[torch.Tensor] = None
    per_point_elbo: Optional[torch.Tensor] = None
    weights: Optional[WeightDiagnostics] = None

    def warning(self) -> Optional[str]:
        """One line on why this estimate may not be trusted (``weights.verdict``), or None."""
        return None if self.weights is None else verdict(self.weights, self.log_px_stderr)

    def to_dict(self) -> Dict[str, Any]:
        """The scalar fields, JSON-ready (per-point tensors left out, and the optional fields
        that are unset), with ``method``: ``iw``, and the weights' diagnostics summed up
        (``weights``), and ``warning`` (null when none)."""
        weights = self.weights
        d = {"method": "iw", **asdict(dataclasses.replace(self, weights=None))}
        d.pop("per_point_log_px")
        d.pop("per_point_elbo")
        d.pop("weights")
        if weights is not None:
            d["weights"] = weights.to_dict()
            d["warning"] = self.warning()
        if d["exact_log_px"] is None:
            d.pop("exact_log_px")
            d.pop("exact_log_px_stderr")
        if d["bits_per_dim"] is None:
            d.pop("bits_per_dim")
            d.pop("bits_per_dim_stderr")
        for key in ("checkpoint", "refine_steps", "global_latents", "resumed_points"):
            if d[key] is None:
                d.pop(key)
        return d


def data_dtype(data: Any, *programs: Any) -> torch.dtype:
    """The dtype to give the data: that of the module whose method (or producer) the model or
    guide is, else the data's own floating dtype, else torch's default."""
    for program in programs:
        owner = getattr(program, "__self__", None)
        if owner is None:
            owner = getattr(program, "vae", None)  # the direct producer
        if isinstance(owner, torch.nn.Module):
            for p in owner.parameters():
                return p.dtype
    if isinstance(data, torch.Tensor) and data.is_floating_point():
        return data.dtype
    return torch.get_default_dtype()


@torch.no_grad()
def estimate_log_likelihood(
    model: Optional[Callable],
    guide: Optional[Callable],
    data: torch.Tensor,
    k: int = 5000,
    chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
    exact_log_px: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    progress: bool = True,
    max_plate_nesting: Optional[int] = None,
    producer: Optional[Producer] = None,
    workers: Optional[int] = None,
    seed: Optional[int] = None,
    world: Optional[World] = None,
    store: Optional[PartialStore] = None,
) -> LogLikelihood:
    """The importance-weighted estimate of log p(x) over a data set, in bounded memory.

    Args:
        model, guide: Pyro programs of ``x`` (B, ...), data plate at dim -1 (traced); ignored
            when ``producer`` is given.
        data: (N, ...) data points.
        k: particles per data point.
        chunk_pairs: at most this many (particle, data point) pairs are evaluated at once; the
            particles of a data point are split across chunks when k exceeds it.
        exact_log_px: optional function (B, ...) -> (B,) giving the exact log p(x).
        progress: show a progress bar.
        producer: where the particles come from (``pyrovae.producers``); default: tracing
            ``model`` and ``guide``. The data are moved to its device (``producer.device``;
            where it has none, they stay where they are). On the CPU, a producer whose scoring
            is thread-safe (the direct one) has its particles drawn in order on the calling
            thread and scored on ``workers`` threads of one core each, so the estimate does not
            depend on ``workers``.
        workers: threads for scoring on the CPU (default: ``torch.get_num_threads()``); a GPU
            scores on its own, in the order drawn.
        seed: ``None`` (default): the particles are drawn from torch's global random stream,
            chunk after chunk (pyrovae 0.1.0's numbers). An int: each chunk draws from a
            stream of its own, seeded by ``pyrovae.distributed.chunk_seed(seed, first point,
            first particle)``, and chunks hold at most ``SEEDED_CHUNK_POINTS`` points; the
            global streams are left as they were. Every point's estimate then depends only on
            the seed, not on which process computes it or on the chunks before it.
        world: the processes to split the points across (``pyrovae.distributed.World``;
            needs ``seed``): each takes a contiguous block of whole chunks, and the per-point
            results are gathered, so every process returns the whole result, equal point for
            point to one process's with the same seed.
        store: save the finished points' results there as the evaluation goes, and take up
            those an earlier run saved (``pyrovae.evaluation.partial.PartialStore``; needs
            ``seed``): an interrupted evaluation continues where it stopped, and gives the
            result one uninterrupted run gives. The store is emptied once the result is in.

    Returns:
        A ``LogLikelihood`` with the means, standard errors and per-point values (on the CPU).
    """
    _check_settings(k, chunk_pairs, seed, world, store)
    world = world if world is not None else World()
    data, producer, device = _prepared(data, producer, model, guide, max_plate_nesting)
    n = data.shape[0]
    plan = _ChunkPlan.of(n, k, chunk_pairs, seed, world)
    elbo = torch.zeros(n, dtype=torch.float64, device=device)
    # Each point's log-sum-exp of its weights (the estimate), and the weights' diagnostics.
    stream = WeightStream(n, k, device)
    done = torch.zeros(n, dtype=torch.bool)
    if store is not None:
        settings = {"method": "iw", "n": n, "k": k, "k_chunk": plan.k_chunk, "batch": plan.batch}
        done = store.attach({**settings, "seed": seed}, stream.rows(elbo=elbo))
    start = time.perf_counter()
    resumed = int(done[plan.first : plan.last].sum())
    todo = (plan.last - plan.first - resumed) * k
    bar = progress_bar(todo, f"log p(x), K={k}", "sample", progress)

    def finish(
        lo: int, hi: int, kk: int, k_lo: int, log_w: torch.Tensor, sum_log_w: torch.Tensor
    ) -> None:
        stream.add(lo, k_lo, log_w)
        elbo[lo:hi] += sum_log_w
        bar.update(kk * (hi - lo))
        if store is not None and k_lo + kk == k:  # the points' last particles
            store.finished(lo, hi)

    def rows(lo: int, hi: int) -> torch.Tensor:
        return data[lo:hi].to(device)  # a no-op where the data were placed whole

    def draw(lo: int, hi: int, kk: int, k_lo: int):
        if seed is not None:
            seed_streams(chunk_seed(seed, lo, k_lo), device)
        return producer(rows(lo, hi), None, kk, None)  # sampled as the guide does

    error: Optional[Exception] = None
    try:
        with fork_rng(device) if seed is not None else contextlib.nullcontext():
            _score_chunks(producer, draw, plan.chunks(done), workers, device, finish)
    except Exception as e:
        if not world.distributed:
            raise
        error = e  # raised on every process by the gather below
    finally:
        bar.close()
        if store is not None:
            store.flush()  # what is finished, kept through a signal or an error
    weights = _gathered(world, None if error else stream.result(plan.first, plan.last), k, error)
    if world.distributed:
        elbo = world.gather_rows(elbo[plan.first : plan.last])
    if store is not None:
        store.remove()  # every process has the whole result
    result = _result(
        weights,
        elbo / k,
        time.perf_counter() - start,
        producer.name,
        None if store is None else sum(world.everyone(resumed)),
    )
    if exact_log_px is not None:
        exact = torch.cat([exact_log_px(rows(lo, lo + 4096)) for lo in range(0, n, 4096)])
        result.exact_log_px, result.exact_log_px_stderr = mean_stderr(exact)
    return result


def _check_settings(
    k: int, chunk_pairs: int, seed: Optional[int], world: Optional[World], store
) -> None:
    """Refuse, before any work, settings ``estimate_log_likelihood`` cannot honour."""
    Rule("int", minimum=1).check("k", k)
    Rule("int", minimum=1).check("chunk_pairs", chunk_pairs)
    if seed is not None:
        SEED_RULE.check("seed", seed)
    if store is not None and seed is None:
        raise ValueError(
            "an evaluation that saves its progress (store=) needs a seed (seed=): each chunk "
            "then draws from a stream of its own, so a resumed run draws what this one would"
        )
    if world is not None and world.distributed and seed is None:
        raise ValueError(
            "an evaluation split across processes needs a seed (seed=): each chunk of "
            "particles then draws from a stream of its own, whichever process computes it"
        )


def _prepared(data, producer, model, guide, max_plate_nesting):
    """The data as a tensor (N, ...), placed for the producer's device (where it has none,
    where they are; ``pyrovae.runtime.place`` keeps data too large for it on the CPU), the
    producer (default: tracing ``model`` and ``guide``), and the device."""
    data = as_data_tensor(data, "data", data_dtype(data, producer, model, guide))
    if data.dim() < 2:
        raise ValueError(
            f"data must have shape (N, ...), one row per data point, got {tuple(data.shape)}"
        )
    if data.shape[0] == 0:
        raise ValueError("cannot evaluate an empty data set")
    if producer is None:
        if model is None or guide is None:
            raise ValueError("give a model and a guide, or a producer")
        producer = TracedProducer(model, guide, max_plate_nesting)
    device = getattr(producer, "device", None) or data.device
    tune_allocator(device)
    return place(data, device), producer, device


@dataclass(frozen=True)
class _ChunkPlan:
    """How an evaluation of n points with k particles each is cut: chunks of ``k_chunk``
    particles of ``batch`` points, this process's points being ``first:last`` (a block of
    whole batches; all of them in one process)."""

    n: int
    k: int
    k_chunk: int
    batch: int
    first: int
    last: int

    @classmethod
    def of(cls, n: int, k: int, chunk_pairs: int, seed: Optional[int], world: World):
        # Equal particle chunks (5000 -> 2 x 2500, not 4096 + 904) keep every chunk near the
        # size that runs fastest.
        k_chunk = math.ceil(k / math.ceil(k / chunk_pairs))
        batch = max(1, min(n, chunk_pairs // k_chunk))
        if seed is not None:
            batch = min(batch, SEEDED_CHUNK_POINTS)
        first, last = (min(n, b * batch) for b in world.shard(math.ceil(n / batch)))
        return cls(n, k, k_chunk, batch, first, last)

    def chunks(self, done: torch.Tensor):
        """(lo, hi, particles, first particle) of each chunk of this process's points not
        ``done`` (N,), in order. A generator: at a huge k the list would fill the memory."""
        n, k, k_chunk, batch = self.n, self.k, self.k_chunk, self.batch
        return (
            (lo, min(lo + batch, n), min(k_chunk, k - k_lo), k_lo)
            for lo in range(self.first, self.last, batch)
            if not done[lo]
            for k_lo in range(0, k, k_chunk)
        )


def _score_chunks(producer, draw, chunks, workers: Optional[int], device, finish) -> None:
    """Draw and score every chunk, handing each chunk's weights to ``finish`` in order."""
    workers = torch.get_num_threads() if workers is None else workers
    # Worker threads were measured to help on CPU cores only (``_run_on_workers``).
    if producer.thread_safe and workers > 1 and device.type == "cpu":
        _run_on_workers(draw, chunks, workers, finish)
    else:
        for chunk in chunks:
            finish(*chunk, *_reduce(draw(*chunk)))


def _result(
    weights: WeightDiagnostics,
    elbo: torch.Tensor,
    seconds: float,
    producer: str,
    resumed: Optional[int],
) -> LogLikelihood:
    """The ``LogLikelihood`` of the points' weight diagnostics and ELBOs (N,); refused when
    some estimate is not finite."""
    log_px = weights.log_px_by_k[-1]
    if not torch.isfinite(log_px).all():
        raise FloatingPointError(
            "the log-likelihood estimate is not finite for some data points: the model assigns "
            "them zero density or the guide produced NaN; check the data and the checkpoint"
        )
    return LogLikelihood(
        *mean_stderr(log_px),
        *mean_stderr(elbo),
        weights.k,
        log_px.shape[0],
        seconds,
        producer=producer,
        per_point_log_px=log_px.cpu(),
        per_point_elbo=elbo.cpu(),
        weights=weights,
        resumed_points=resumed,
    )


def _reduce(particles):
    """A chunk's (k, B) particles -> the importance weights (with the guide's enumerated sites
    summed, ``log_w_summed``), (k, B), and the sum over particles of the ELBO's log weights
    (``log_w``), (B,), float64."""
    log_w = particles.log_w.double()
    if particles.enumerated:
        return particles.log_w_summed.double(), log_w.sum(0)
    return log_w, log_w.sum(0)  # (the same weights: read once)


def _gathered(
    world: World, part: Optional[WeightDiagnostics], k: int, error: Optional[Exception]
) -> WeightDiagnostics:
    """Every process's points' weight diagnostics (``part``: this process's, None where it
    failed with ``error``), joined in rank order on every process."""
    if not world.distributed:
        if error is not None:
            raise error
        return part
    table = None
    if part is not None:
        table = torch.cat([part.ess[:, None], part.pareto_k[:, None], part.log_px_by_k.T], 1)
    table = world.gather_rows(table, error)
    ladder = k_ladder(k)
    return WeightDiagnostics(k, table[:, 0], table[:, 1], ladder, table[:, 2:].T.contiguous())


def _reduce_on_worker(particles):
    with torch.no_grad():  # grad mode is per thread
        return _reduce(particles)


def _run_on_workers(draw, chunks, workers: int, finish) -> None:
    """Draw each chunk's particles here, in order; score them on ``workers`` threads that run
    one core's worth of torch ops each; hand results to ``finish`` in chunk order.

    One single-threaded chunk per core beats splitting every op across cores: the many small
    ops of a chunk (sampling, the prior's and guide's densities, the reductions) then cost no
    fork/join, and each core keeps its chunk's tensors in its own cache. Measured on 2 cores,
    the decoder and likelihood ran at 64% of one core's matmul peak on one thread, against
    about 52% of two cores' peak with two threads per op.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # for the sampling on this thread
    pending: deque = deque()
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        for chunk in chunks:
            future = pool.submit(_reduce_on_worker, draw(*chunk))
            pending.append((chunk, future))
            # Two chunks per worker in flight keep every core busy and memory bounded.
            while len(pending) > 2 * workers:
                done_chunk, done = pending.popleft()
                finish(*done_chunk, *done.result())
        while pending:
            done_chunk, done = pending.popleft()
            finish(*done_chunk, *done.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def evaluate_vae(
    vae,
    data: torch.Tensor,
    k: int = 5000,
    producer: str = "auto",
    levels: Optional[int] = None,
    **kwargs: Any,
) -> LogLikelihood:
    """``estimate_log_likelihood`` for a ``VAE``, adding the exact log p(x) when the VAE is
    linear-Gaussian, and log p(x) in bits per dimension for data of ``levels`` values.

    ``data`` (N, x_dim). ``producer`` (``auto``, ``direct``, ``traced``) picks how the
    particles are computed (``pyrovae.producers``; the same numbers either way). ``data`` may
    be a tensor or numpy array of any real dtype (bool and uint8 data as ``read_amat`` returns
    it, float64...): it is converted to the VAE's, and evaluated on the VAE's device
    (``vae.to(device)`` chooses it); the per-point results are on the CPU. ``levels``: L when
    the data are values k / (L - 1) (256 for 8-bit images; ``Dataset.levels``), which adds
    ``bits_per_dim`` (``pyrovae.evaluation.bits``); None: the likelihood's own (the
    discretized logistic's 256), else no bits per dimension. ``kwargs`` go to
    ``estimate_log_likelihood``."""
    dtype = next(vae.parameters()).dtype
    data = place(as_data_tensor(data, "data", dtype), module_device(vae))
    vae.data_scale(data)  # the shape: (N, x_dim)
    vae.likelihood.check_data(data)
    levels = data_levels(vae.likelihood, data, levels)  # refused now, not after the work
    made = make_producer(vae, producer)
    family = vae.guide_family
    if isinstance(made, DirectProducer) and getattr(family, "refines", lambda: False)():
        # A locally refined guide: refine every point's q first, in batches (one evaluation
        # chunk holds one data point at K = 5000, too few rows to refine efficiently), then
        # score rows [x | refined input]. Tracing the guide instead (--producer traced)
        # refines in the evaluator's chunks, so the refinement's noise, and the numbers,
        # differ slightly.
        inputs = fit_guide_inputs(
            vae,
            data,
            family.steps,
            family.lr,
            family.samples,
            family.seed,
            progress=kwargs.get("progress", True),
        )
        result = estimate_log_likelihood(
            None,
            None,
            torch.cat([data, inputs.to(data)], -1),  # data's dtype and device
            k,
            producer=GivenInputProducer(vae),
            **kwargs,
        )
    else:
        result = estimate_log_likelihood(None, None, data, k, producer=made, **kwargs)
    result = with_exact_log_px(result, vae, data)
    if levels is None:
        return result
    return with_bits_per_dim(result, vae.x_dim, vae.likelihood.discrete, levels)


def refine_guide(vae: VAE, steps: int) -> VAE:
    """``vae`` (changed in place, and returned in eval mode) with its guide family replaced by
    the local refinement of it: ``steps`` Adam steps per data point from the encoder's output,
    the ``local`` guide's other defaults (a ``local`` guide's base is refined afresh). A better
    proposal for the importance-weighted estimate of log p(x), which stays a stochastic lower
    bound. One latent layer only."""
    if isinstance(vae, TwoLayerVAE):
        raise ValueError(
            "refinement fits q(z | x) per data point for one latent layer; a two-layer VAE's "
            "guide q(z1 | x) q(z2 | z1) cannot be refined: evaluate without --refine"
        )
    family = vae.guide_family
    base = family.base if isinstance(family, LocalRefinement) else family
    vae.guide_family = LocalRefinement(base.z_dim, base=base, steps=steps)
    return vae.eval()
