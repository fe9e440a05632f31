"""Process-level settings that the hot paths need to run at speed, and where they run.

``resolve_device`` turns ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a
``torch.device``; every command and API function that computes takes it. The device is where a
computation runs, not part of a run: a run directory holds CPU tensors and no device, so a run
trained on a GPU evaluates, samples and resumes on a CPU and the other way round. ``place``
puts data on the device where it fits; ``fork_rng`` forks the random streams a device draws
from. The CPU tricks below (the allocator's thresholds, ``Tanh``'s sigmoid, the evaluator's
worker threads) were measured on CPUs and apply to CPU work only.

``fused_adam`` is the fastest ``torch.optim.Adam`` this torch has.

glibc's ``malloc`` serves blocks above a threshold (128 KiB, raised on the fly up to the size
of the last large block freed) with fresh ``mmap`` pages and gives memory back to the system
when the heap's free top exceeds a trim threshold. An evaluation chunk allocates and frees
tensors of 2-8 MB many times a second, so by default each new tensor pays page faults on first
touch: measured here, the same decoder and likelihood ran at 41 GFLOP/s on one core against
63 GFLOP/s once freed blocks are reused. ``tune_allocator`` raises both thresholds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import time

try:  # POSIX
    import resource
except ImportError:  # pragma: no cover
    resource = None
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .config import OptionError

DEVICES = "auto, cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")
# Data is kept on a GPU when it takes at most this share of the memory free there: the rest is
# left to the activations, which a training step or an evaluation chunk needs too.
_DATA_SHARE = 0.5

Device = Union[str, torch.device, None]


def resolve_device(spec: Device = "auto") -> torch.device:
    """The ``torch.device`` that ``spec`` names, checked against this machine: the one
    definition behind every ``--device`` and ``device=``.

    ``auto``: the current CUDA GPU where CUDA is available, else the CPU; ``cpu``; ``cuda``:
    the current CUDA GPU; ``cuda:N``: GPU N. A ``torch.device`` is read as its name. ``None``
    (what every command and function defaults to) is the environment variable
    ``PYROVAE_DEVICE`` where it is set (the test suite sets ``cpu``), else ``auto``. A CUDA
    device comes back with its index (``cuda:0``, not ``cuda``), so that it compares equal to
    the devices of the tensors placed on it.

    Raises:
        OptionError: one line, for a name that is none of these (saying what is accepted), or
            a GPU this machine does not have (saying which devices it has).
    """
    if spec is None:
        env = os.environ.get("PYROVAE_DEVICE")
        if not env:
            return resolve_device("auto")
        try:
            return resolve_device(env)
        except OptionError as e:
            raise OptionError(f"$PYROVAE_DEVICE: {e}") from None
    if isinstance(spec, torch.device):
        spec = "cpu" if spec.type == "cpu" else str(spec)
    if not isinstance(spec, str):
        raise OptionError(f"device must be one of {DEVICES} or a torch.device, got {spec!r}")
    if spec == "auto":
        return resolve_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = _CUDA.fullmatch(spec)
    if match is None:
        empty = " (an unset shell variable?)" if not spec.strip() else ""
        raise OptionError(
            f"unknown device {spec!r}{empty}: choose {DEVICES} (N: a GPU's index); available "
            f"here: {available_devices()}"
        )
    if not torch.cuda.is_available():
        raise OptionError(f"device {spec!r}: {_no_cuda()}; available here: cpu (or auto)")
    index = torch.cuda.current_device() if match[1] is None else int(match[1])
    if index >= torch.cuda.device_count():
        raise OptionError(
            f"device {spec!r}: this machine has no GPU {index}; available here: "
            f"{available_devices()}"
        )
    return torch.device("cuda", index)


def available_devices() -> str:
    """The devices ``resolve_device`` accepts here, by name: ``cpu, cuda:0, ...``."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ", ".join(["cpu"] + [f"cuda:{i}" for i in range(gpus)])


def _no_cuda() -> str:
    """Why CUDA is not available, in words."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return "CUDA finds no GPU here (check the driver and CUDA_VISIBLE_DEVICES)"


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (else buffer): where it computes; the CPU
    for a module with neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def fork_rng(device: Union[str, torch.device]) -> contextlib.AbstractContextManager:
    """``torch.random.fork_rng`` over the streams that work on ``device`` draws from: the
    CPU's, and a CUDA device's own generator. Whatever is drawn inside leaves both as they
    were (forking the CPU's alone would let a GPU's draws move its stream)."""
    device = torch.device(device)
    gpus = []
    if device.type == "cuda":
        gpus = [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.random.fork_rng(devices=gpus)


def seed_streams(seed: int, device: Union[str, torch.device]) -> None:
    """Seed the streams that work on ``device`` draws from (those ``fork_rng`` forks): the
    CPU's, and a CUDA device's own generator; other GPUs' are left alone."""
    device = torch.device(device)
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def place(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device`` when it fits there with room to spare (``_DATA_SHARE`` of the GPU
    memory free), so that batches are sliced where they are used; else ``x`` as it is, whose
    batches the caller moves as it uses them (``batch.to(device)``). On the CPU, or where ``x``
    already is, ``x`` itself."""
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda":
        free = _cuda_memory(device)
        if free is not None and x.numel() * x.element_size() > _DATA_SHARE * free:
            return x
    return x.to(device)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 64 MiB come from the heap and are reused; up to 256 MiB of free heap is kept.
_MMAP_THRESHOLD = 64 << 20
_TRIM_THRESHOLD = 256 << 20

_tuned = False


def tune_allocator(device: Optional[torch.device] = None) -> bool:
    """Raise glibc's mmap and trim thresholds once per process (a no-op elsewhere, or when the
    environment variable ``PYROVAE_NO_MALLOPT`` is set, or ``MALLOC_MMAP_THRESHOLD_`` already
    chooses). Returns whether the thresholds are set by this call or an earlier one.

    ``device``: where the work about to run computes; for another than the CPU nothing is
    done (and ``False`` returned): a GPU's tensors come from torch's own caching allocator, and
    what was measured is host tensors' page faults."""
    global _tuned
    if device is not None and torch.device(device).type != "cpu":
        return False
    if _tuned:
        return True
    if os.environ.get("PYROVAE_NO_MALLOPT") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _tuned


def fused_adam(params: Sequence[torch.Tensor], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam`` over ``params`` with the fused kernel where torch has it for their
    device (one call updates every parameter; CPU since torch 2.4, CUDA before), else the
    multi-tensor one."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still use: Linux's ``MemAvailable``, or less where an
    address-space limit (``ulimit -v``) leaves less; ``None`` where neither can be read."""
    free = _meminfo("/proc/meminfo", "MemAvailable:")
    limit = resource.getrlimit(resource.RLIMIT_AS)[0] if resource is not None else None
    if limit is not None and limit != resource.RLIM_INFINITY:
        left = limit - (_meminfo("/proc/self/status", "VmSize:") or 0)
        free = left if free is None else min(free, left)
    return free


def _cuda_memory(device: torch.device) -> Optional[int]:
    """Bytes a CUDA device can still give this process: what its driver reports free, plus
    what torch's caching allocator holds unused (handed out first); ``None`` if unknown."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except (RuntimeError, AssertionError, ValueError):
        return None


def _meminfo(path: str, key: str) -> Optional[int]:
    """A ``key: N kB`` line of a /proc file, in bytes."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Bytes per (particle, data point) pair per value a layer computes. Measured on the default
# VAE (4036 such values per pair): a step's peak grew by 8.7 KB per pair (2.2 bytes per value)
# for pathwise, IWAE and DReG, 10.6 KB for score-function; 4 bytes leaves room for the rest.
_BYTES_PER_VALUE = 4


def check_step_memory(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    num_particles: int,
    what: str,
    modules: Sequence[torch.nn.Module] = (),
) -> None:
    """Refuse, with a ``MemoryError`` saying what to lower, a step on ``num_particles`` samples
    of z for each row of the batch ``x`` (B, D) whose activations would not fit in the memory
    left. The estimate is an upper bound: every layer (each 2-D parameter's rows) computes one
    value per (particle, data point) pair, as the decoder does, plus the likelihood's D. A
    convolution's output is not its weight's rows but feature maps: the submodules of
    ``modules`` that say how many values they compute per row (``values_per_row``, the conv
    nets') add those. The memory checked is ``x``'s device's (host memory for the CPU)."""
    maps = sum(getattr(m, "values_per_row", 0) for top in modules for m in top.modules())
    widths = sum(p.shape[0] for p in params if p.dim() == 2) + 3 * x[0].numel() + maps
    pairs = num_particles * x.shape[0]
    check_memory(
        pairs * widths * _BYTES_PER_VALUE,
        f"{what} on {num_particles} particles x {x.shape[0]} data points",
        "lower the number of particles (--num-particles) or the batch size (--batch-size)",
        x.device,
    )


def check_memory(need: int, what: str, advice: str, device: Optional[torch.device] = None) -> None:
    """A ``MemoryError`` saying ``what`` needs ``need`` bytes, how much is free, and
    ``advice``, when ``need`` is more than the memory available: the host's (``device`` None
    or the CPU: ``available_memory``) or a CUDA device's own, which is what a GPU's tensors
    take (``torch.cuda.mem_get_info`` and torch's cache); other devices are not checked."""
    kind = "cpu" if device is None else torch.device(device).type
    if kind == "cpu":
        free, where = available_memory(), "memory"
    elif kind == "cuda":
        free, where = _cuda_memory(torch.device(device)), f"{device} memory"
    else:
        free, where = None, ""
    if free is not None and need > free:
        raise MemoryError(
            f"{what} needs about {need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB of {where} "
            f"is free: {advice}"
        )


def progress_bar(total: int, desc: str, unit: str, progress: bool):
    """A tqdm bar for long work, shown on a terminal (not in logs) when ``progress``; a
    disabled one when not. Close it when done."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        disable=None if progress else True,  # None: shown on a terminal, not in logs
        leave=False,
    )


def matmul_peak_gflops(n: int = 4096, reps: int = 5) -> float:
    """Measured fp32 matrix-multiply throughput of this process's threads, GFLOP/s: the best
    of ``reps`` (n x n) @ (n x n) products after a warm-up (4096 is past the size where MKL
    reaches its plateau on these machines). The scale speed is reported against, measured in
    the same process because these machines drift."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
