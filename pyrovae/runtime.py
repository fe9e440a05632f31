"""Process-level settings that the hot paths need to run at speed.

``fused_adam`` is the fastest ``torch.optim.Adam`` this torch has.

glibc's ``malloc`` serves blocks above a threshold (128 KiB, raised on the fly up to the size
of the last large block freed) with fresh ``mmap`` pages and gives memory back to the system
when the heap's free top exceeds a trim threshold. An evaluation chunk allocates and frees
tensors of 2-8 MB many times a second, so by default each new tensor pays page faults on first
touch: measured here, the same decoder and likelihood ran at 41 GFLOP/s on one core against
63 GFLOP/s once freed blocks are reused. ``tune_allocator`` raises both thresholds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

try:  # POSIX
    import resource
except ImportError:  # pragma: no cover
    resource = None
from typing import Optional, Sequence

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 64 MiB come from the heap and are reused; up to 256 MiB of free heap is kept.
_MMAP_THRESHOLD = 64 << 20
_TRIM_THRESHOLD = 256 << 20

_tuned = False


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (a no-op elsewhere, or when the
    environment variable ``PYROVAE_NO_MALLOPT`` is set, or ``MALLOC_MMAP_THRESHOLD_`` already
    chooses). Returns whether the thresholds are set by this call or an earlier one."""
    global _tuned
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
    """``torch.optim.Adam`` over ``params`` with the fused CPU kernel where torch has it (one
    call updates every parameter; torch >= 2.4), else the multi-tensor one."""
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
    nets') add those."""
    maps = sum(getattr(m, "values_per_row", 0) for top in modules for m in top.modules())
    widths = sum(p.shape[0] for p in params if p.dim() == 2) + 3 * x[0].numel() + maps
    pairs = num_particles * x.shape[0]
    check_memory(
        pairs * widths * _BYTES_PER_VALUE,
        f"{what} on {num_particles} particles x {x.shape[0]} data points",
        "lower the number of particles (--num-particles) or the batch size (--batch-size)",
    )


def check_memory(need: int, what: str, advice: str) -> None:
    """A ``MemoryError`` saying ``what`` needs ``need`` bytes, how much is free, and
    ``advice``, when ``need`` is more than the memory available."""
    free = available_memory()
    if free is not None and need > free:
        raise MemoryError(
            f"{what} needs about {need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB of memory "
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
