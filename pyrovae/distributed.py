"""More than one process: training and evaluation with ``torch.distributed``, launched by
``torchrun``.

``torchrun --nproc-per-node N -m pyrovae train ...`` starts N processes; each finds its place
from the environment variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and ``setup`` joins them into one process group: ``gloo`` on
the CPU, ``nccl`` on CUDA GPUs, each process on ``cuda:LOCAL_RANK``. Without those variables
(or with ``WORLD_SIZE=1``) everything runs in one process exactly as before: ``World()`` of
size 1, whose collectives are plain calls.

**Training** (``pyrovae.training.trainer``; one training loop whatever the number of
processes). ``--batch-size`` is the *global* batch: the training set is shuffled by one
generator seeded from the run's seed, the same on every process (and saved in checkpoints), and
each global batch of B rows is split into N contiguous parts (``World.shard``), one per
process. A process's part stands for the data set with the scale N_data / B of the global
batch (not N_data / its own part), so the sum over processes of their surrogates is the
single-process surrogate of the global batch, term for term. The gradients are then *summed*
across processes (``GradientSync``) before one fused Adam step on every process: the union of
the processes' batches is the single-process global batch, and the step is the single-process
step on it up to float rounding, given the same particles. This is what
``torch.utils.data.DistributedSampler`` with ``set_epoch`` does for a data set (each process a
shard of each epoch's permutation, reshuffled every epoch), done on the index permutation the
one-process trainer already draws; the sampler itself is not used because it pads the epoch
with repeated points (which would weigh those points twice) and shuffles with its own seed
(which would change every one-process run).

Why an explicit all-reduce and not the ``DistributedDataParallel`` module wrapper: DDP hooks
the gradients of one ``nn.Module`` whose ``forward`` runs the step. A pyrovae step runs no
such forward: particles come from a producer (the VAE's parts, or Pyro traces of a model/guide
pair whose parameters may be bare ``pyro.param`` tensors that no module holds), the estimator
(which may own a baseline network of its own) turns them into a surrogate, and one fused Adam
steps over the model's and the estimator's tensors. ``GradientSync`` all-reduces exactly that
list of tensors, flattened into buckets of at most 25 MiB (as DDP's), one ``all_reduce`` per
bucket, with the batch's loss and a failure flag riding in the first. The sum is exact
arithmetic on the gradients the one-process step would accumulate part by part (with 2
processes it is bit for bit the same, ``tests/test_distributed.py``). What it does not do is
overlap the all-reduce with the backward pass, as DDP does: the default VAE's gradient is
1.7 MB, one bucket, ready only when the backward pass ends (benchmarks/bench_ddp.py).

**Random streams.** Every process builds the model from the run's seed (the same initial
parameters, and process 0's are broadcast to the others to make sure), then draws its
particles (and dynamically binarized pixels) from a stream of its own: process 0 continues the
one-process stream, so a run with one process is bit for bit what it was; process r > 0
reseeds with ``rank_seed(seed, r)``. A checkpoint holds every process's stream and estimator
state (``ranks``, gathered to process 0, which alone writes the run directory), so a resumed
run continues bit for bit with the same number of processes; another number is refused.

**Evaluation** (``estimate_log_likelihood(..., seed=, world=)``, ``pyrovae evaluate`` under
torchrun, and the validation of every epoch): the data points are split across processes in
contiguous blocks of whole chunks, each chunk of particles is drawn from a stream of its own
(``chunk_seed``: the seed, the chunk's first point and first particle), and the per-point
results are gathered (``World.gather_rows``: padded to the longest block for the all-gather,
the padding dropped). So every point's estimate is the same whatever the number of processes,
and the same as one process's with the same seed (``pyrovae evaluate``'s default).

**Errors** stay together: a step that fails on one process fails on all (the flag in the
gradient all-reduce), an evaluation chunk that fails fails the gather, and a check that fails
on one process before training (``World.together``: reading the run directory on process 0,
loading the data on each) is raised on every process, so that no process waits forever for the
others. Process 0 reports it; the others stay quiet about errors process 0 reports
(``reported_everywhere``).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import torch

from .config import OptionError
from .launch import launched
from .runtime import Device, resolve_device

# The gradients of one all-reduce call at most, as DDP's default bucket.
BUCKET_BYTES = 25 << 20
_SHARED = "pyrovae_reported_everywhere"
_OWN = "pyrovae_this_process_only"


class DistributedError(ValueError):
    """Another process failed, or the processes disagree (their data, say): one line saying
    which process and why."""


def reported_everywhere(error: BaseException) -> bool:
    """Whether every process raised ``error`` (or its report) together, so that process 0
    alone need print it."""
    return bool(getattr(error, _SHARED, False))


def everywhere(error: BaseException) -> BaseException:
    """Mark ``error`` as raised on every process together (``reported_everywhere``)."""
    setattr(error, _SHARED, True)
    return error


def only_here(error: Optional[BaseException]) -> bool:
    """Whether ``error`` was this process's alone (the others raise a report of it)."""
    return bool(getattr(error, _OWN, False))


def _own(error: BaseException) -> BaseException:
    setattr(error, _OWN, True)
    return error


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process of the run is gone
    (killed, out of memory, its machine down): torch raises gloo's and NCCL's transport errors
    as ``DistError``s, or, in some releases, as plain ``RuntimeError``s naming the backend."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("gloo" in text or "NCCL" in text)


def peer_reason(error: BaseException) -> str:
    """The transport's reason in a ``lost_peer`` error, e.g. ``Read error [127.0.0.1]:36036:
    Connection reset by peer``: without gloo's source location and its advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", _describe(error))
    return text.split(". This is typically")[0][:200]


def _describe(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class World:
    """The processes one run is split across, seen from one of them.

    ``rank`` is this process's place among ``size`` processes (0: the one that writes and
    reports); ``local_rank`` its place on its machine; ``device`` the device its collectives
    go through (its GPU with nccl, the CPU with gloo). ``World()`` is the single process: every
    method is then a plain call, with no collective.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Process 0: it writes the run directory and prints."""
        return self.rank == 0

    def shard(self, total: int, rank: Optional[int] = None) -> Tuple[int, int]:
        """Process ``rank``'s (default: this one's) contiguous part [lo, hi) of ``total``
        items: sizes differ by at most one, and the parts of ranks 0..size-1 tile [0, total)
        in order."""
        r = self.rank if rank is None else rank
        return total * r // self.size, total * (r + 1) // self.size

    # --- collectives that keep errors together ---------------------------------------------

    def together(self) -> "_Together":
        """A block every process enters: if it raises on any process, it raises on every
        one when the block ends (each process that failed its own error, the others a
        ``DistributedError`` naming the first process that failed), so that no process goes
        on to wait for the others. Work for process 0 alone goes inside as ``if world.main:``
        (and its result to the others with ``share``). With one process, nothing is added."""
        return _Together(self)

    def share(self, value: Any) -> Any:
        """Process 0's ``value`` (picklable), on every process."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def everyone(self, value: Any) -> List[Any]:
        """Every process's ``value`` (picklable), by rank, on every process."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: List[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with process 0's values (in place, outside autograd)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t.detach(), src=0)

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every process's ``obj`` (picklable: move tensors to the CPU first), by rank, on
        process 0; ``None`` elsewhere."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: Optional[List[Any]] = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def gather_rows(
        self, rows: Optional[torch.Tensor], error: Optional[BaseException] = None
    ) -> torch.Tensor:
        """The concatenation, by rank, of every process's ``rows`` (its block of per-point
        results, (n_r, ...), on any device), on every process, on the CPU. The blocks are
        padded to the longest for one all-gather and the padding dropped. ``error``: this
        process's failure instead of its rows; it is raised on every process."""
        if not self.distributed:
            if error is not None:
                raise error
            return rows.cpu()
        import torch.distributed as dist

        count = -1 if error is not None else rows.shape[0]
        counts_t = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.size)]
        dist.all_gather(counts_t, torch.tensor([count], device=self.device))
        counts = [int(c.item()) for c in counts_t]
        if error is not None:
            raise _own(error)
        if min(counts) < 0:
            failed = counts.index(min(counts))
            raise FloatingPointError(
                f"the evaluation failed in process {failed} (its error is shown there)"
            )
        padded = torch.zeros(max(counts), *rows.shape[1:], dtype=rows.dtype, device=self.device)
        padded[: rows.shape[0]] = rows.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()


class _Together:
    """``World.together``'s block."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if not self.world.distributed:
            return False
        if kind is not None and not issubclass(kind, Exception):
            return False  # Ctrl-C, SIGTERM: the launcher stops the others
        mine = None if error is None else (type(error).__name__, _describe(error))
        everyone = self.world.everyone(mine)
        failed = [(rank, desc) for rank, desc in enumerate(everyone) if desc is not None]
        if not failed:
            return False
        if error is None:
            first, (_, message) = failed[0]
            raise everywhere(DistributedError(f"process {first} stopped: {message}"))
        if failed[0][0] == self.world.rank or everyone[0] == mine:
            everywhere(error)  # process 0 reports it: as its own, or as the first one elsewhere
        return False  # this process's own error goes on


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s own random stream in a run seeded ``seed`` (process 0
    keeps the one-process stream and does not use it): 63 bits of a hash of both, so that no
    two (seed, rank) pairs share a stream in practice."""
    return _hash_seed("rank", seed, rank)


def chunk_seed(seed: int, first_point: int, first_particle: int) -> int:
    """The seed of one evaluation chunk's stream: its particles ``first_particle``... of the
    points ``first_point``... (``estimate_log_likelihood(seed=...)``)."""
    return _hash_seed("chunk", seed, first_point, first_particle)


def derived_seed(seed: int, *keys: Any) -> int:
    """A seed for one purpose (``keys``) of a run seeded ``seed``: the validation of an
    epoch, say. 32 bits, as a run's seed."""
    return _hash_seed("derived", seed, *keys) >> 31


def _hash_seed(*parts: Any) -> int:
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


_world: Optional[World] = None
_we_started = False


def current() -> World:
    """The world ``setup`` made (a single process before it, or outside torchrun)."""
    return _world if _world is not None else World()


def setup(device: Device = None) -> Tuple[World, Optional[torch.device]]:
    """Join this process to the others torchrun started, once (later calls return the same
    world), and say where it computes.

    Returns ``(world, device)``. Outside torchrun (or with one process): ``World()`` and
    ``None``; the caller resolves ``device`` as usual. Under torchrun: each process on its
    own device, ``cuda:LOCAL_RANK`` for ``auto`` (where CUDA is available) and ``cuda``, the
    CPU for ``cpu`` (or ``auto`` without CUDA); the process group uses ``nccl`` on GPUs and
    ``gloo`` on the CPU. A process group the caller initialized already is used as it is
    (import ``torch._dynamo`` before making it, or it may outlive ``destroy_process_group``:
    see below); the one made here is left with ``shutdown``.

    Raises:
        OptionError: ``cuda:N`` under torchrun (each process takes the GPU of its
            ``LOCAL_RANK``), or a ``LOCAL_RANK`` with no GPU of its own.
    """
    global _world, _we_started
    import torch.distributed as dist

    if _world is not None:
        return _world, _process_device(device, _world.local_rank)
    initialized = dist.is_available() and dist.is_initialized()
    if not initialized and not launched():
        return World(), None
    if initialized:
        rank, size = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ["LOCAL_RANK"])
    if size == 1:
        return World(), None
    try:
        where = _process_device(device, local)
    except OptionError as e:
        raise everywhere(e) from None  # the same on every process
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not initialized:
        # torch._dynamo, imported once a process group exists (building a torch.optim
        # optimizer imports it), keeps references to the group that destroy_process_group
        # cannot drop (torch 2.15): gloo's threads then outlive ``shutdown`` and are torn
        # down with the interpreter, which aborted about one exit in twenty ("terminate
        # called without an active exception", SIGABRT, after the run had finished).
        # Imported before the group, it holds none. (By importlib: an ``import torch._dynamo``
        # here would make ``torch`` a local name of this function.)
        importlib.import_module("torch._dynamo")

        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
        _we_started = True
    comm = where if dist.get_backend() == "nccl" else torch.device("cpu")
    _world = World(rank=rank, size=size, local_rank=local, device=comm)
    return _world, where


def _process_device(spec: Device, local_rank: int) -> torch.device:
    """This process's device under torchrun: see ``setup``."""
    if (isinstance(spec, str) and spec.startswith("cuda:")) or (
        isinstance(spec, torch.device) and spec.type == "cuda" and spec.index is not None
    ):
        raise OptionError(
            f"device {str(spec)!r}: under torchrun each process computes on the GPU of its "
            "LOCAL_RANK; give --device cuda (or auto), not a GPU's index"
        )
    resolved = resolve_device(spec)  # a bad name fails here, as without torchrun
    if resolved.type != "cuda":
        return resolved
    count = torch.cuda.device_count()
    if local_rank < count:
        return torch.device("cuda", local_rank)
    if count == 1:  # one GPU visible to each process (CUDA_VISIBLE_DEVICES set per process)
        return torch.device("cuda", 0)
    raise OptionError(
        f"this process's LOCAL_RANK is {local_rank}, but {count} GPUs are visible: start at "
        "most one process per GPU (--nproc-per-node), or use --device cpu"
    )


def shutdown() -> None:
    """Leave the process group ``setup`` started (at the end of a command)."""
    global _world, _we_started
    if _we_started:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _we_started = False
    _world = None


class GradientSync:
    """Sums the gradients of ``params`` over the processes (``torch.distributed.all_reduce``
    of flat buckets, each at most ``bucket_bytes``), with the batch's loss and whether the
    step failed riding in the first bucket. A tensor whose gradient is ``None`` on every
    process keeps ``None`` (Adam skips it, as it would in one process); where some processes
    have one, the others count zeros.
    """

    def __init__(
        self, params: Sequence[torch.Tensor], world: World, bucket_bytes: int = BUCKET_BYTES
    ) -> None:
        self.params, self.world = list(params), world
        self.buckets: List[Tuple[List[int], torch.Tensor]] = []
        groups: dict = {}
        for i, p in enumerate(self.params):
            groups.setdefault((p.device, p.dtype), []).append(i)
        extra = len(self.params) + 2  # a "has a gradient" count per tensor, loss, failures
        for (device, dtype), members in groups.items():
            size = torch.empty(0, dtype=dtype).element_size()
            bucket: List[int] = []
            numel = 0
            for i in members:
                n = self.params[i].numel()
                if bucket and (numel + n) * size > bucket_bytes:
                    self.buckets.append((bucket, torch.zeros(numel, dtype=dtype, device=device)))
                    bucket, numel = [], 0
                bucket.append(i)
                numel += n
            self.buckets.append((bucket, torch.zeros(numel, dtype=dtype, device=device)))
        first_members, first = self.buckets[0]
        self.buckets[0] = (first_members, first.new_zeros(first.numel() + extra))

    @property
    def numel(self) -> int:
        """The number of gradient values all-reduced per step."""
        return sum(p.numel() for p in self.params)

    def __call__(self, loss: float, error: Optional[BaseException] = None) -> float:
        """All-reduce the gradients in place; returns the global batch's loss (the sum of the
        processes' losses). ``error``: this process's step failed (its gradients are not
        used); every process then raises, this one its own error."""
        import torch.distributed as dist

        count = len(self.params)
        present = [0.0] * count
        for members, flat in self.buckets:
            offset = 0
            for i in members:
                p = self.params[i]
                n = p.numel()
                if p.grad is not None and error is None:
                    flat[offset : offset + n].copy_(p.grad.reshape(-1))
                    present[i] = 1.0
                else:
                    flat[offset : offset + n].zero_()
                offset += n
        tail = present + [0.0 if error is not None else loss, float(error is not None)]
        first = self.buckets[0][1]
        first[-count - 2 :].copy_(torch.tensor(tail, dtype=first.dtype))
        works = [dist.all_reduce(flat, async_op=True) for _, flat in self.buckets]
        for work in works:
            work.wait()
        flags = first[-count - 2 :].tolist()  # one read of the device
        if error is not None:
            raise _own(error)
        if flags[-1]:
            raise FloatingPointError(
                "the step failed in another process (its error is shown there)"
            )
        for members, flat in self.buckets:
            offset = 0
            for i in members:
                p = self.params[i]
                n = p.numel()
                if flags[i]:
                    value = flat[offset : offset + n].view_as(p)
                    if p.grad is None:
                        p.grad = value.clone()
                    else:
                        p.grad.copy_(value)
                offset += n
        return float(flags[-2])
