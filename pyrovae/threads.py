"""The CPU threads a command computes on: chosen by pyrovae, not inherited (issue 23).

PyTorch's CPU ops run on an OpenMP team (libgomp in the Linux wheels) whose threads, by
default, spin 300,000 rounds (a few ms) at the end of every parallel region waiting for the
next one before they sleep. Alone on a machine that is fast. Beside other work it is slow: a
spinning thread holds a core that a descheduled team-mate needs, and every region waits for the
slowest member. Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) is the cure beside other work but
costs alone: on this project's 2-core virtual machines a sleeping thread's core goes idle, and
waking it takes longer than the region it is woken for. Measured there, one epoch of 200
default training steps (seconds, alone / two trainings at once):

    spin 300,000 (OpenMP's default)  0.66 / 3.0-8.6
    spin 30,000                      0.62 / 10.8-17.0
    spin 3,000                       0.52-0.65 / 2.6-2.7
    spin 1,000 (pyrovae's)           0.70 / 1.5-1.6
    spin 100                         1.22-1.27 / 1.0-1.1
    passive (spin 0)                 1.0-1.3 / 1.0

So a short spin: long enough to catch the next region of a busy step, too short to hold a core
a team-mate needs for long (``benchmarks/bench_contention.py`` has the side-by-side ratios). It
is a compromise, not yet the answer: alone, the default step in ``bench_train.py``'s loop costs
about 9% more than with OpenMP's spin, and beside an identical training each epoch takes 2.75
times as long (issue 23 asks at most 3% and 2.3 times).

The policy, applied by the command line (``pyrovae ...``, ``python -m pyrovae``, and so every
process torchrun starts):

- ``prepare_runtime`` (before torch is first imported, which is when the OpenMP runtime reads
  its environment): ``GOMP_SPINCOUNT=1000`` unless the user set ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` themselves.
- ``apply_threads`` (after the flags are read): as many threads as ``--threads`` says; else
  as ``OMP_NUM_THREADS`` says (the user's, or torchrun's 1 per process); else no more than the
  cores this process may run on (``os.sched_getaffinity``), keeping a smaller number set
  earlier by ``torch.set_num_threads``.

The evaluation's scoring workers, AIS and BDMC take their thread counts from the same setting
(``torch.get_num_threads()``). Library users who import torch themselves choose their own
policy: call ``prepare_runtime`` (or set ``GOMP_SPINCOUNT=1000``) before importing torch to get
the command line's.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, NamedTuple, Optional

# The wait pyrovae sets (rounds a waiting thread spins before it sleeps), and the variables by
# which a user sets their own.
SPIN_COUNT = "1000"
USER_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# What ``prepare_runtime`` found: None until it has run; else whether it set the wait policy
# itself (False: the user had, or torch was imported first and it was too late).
_set_wait_policy: Optional[bool] = None


class ThreadPolicy(NamedTuple):
    """What a command computes on: ``threads`` (torch's intra-op threads) and where that number
    came from; the OpenMP runtime's wait policy and where it came from."""

    threads: int
    threads_from: str
    wait: str
    wait_from: str

    def describe(self) -> str:
        """One line for a command's summary, e.g. ``2 (the cores this process may use);
        waiting spin 1000, then sleep (pyrovae's choice)``."""
        return f"{self.threads} ({self.threads_from}); waiting {self.wait} ({self.wait_from})"

    def to_dict(self) -> Dict[str, object]:
        return dict(self._asdict())


def usable_cores() -> int:
    """The number of CPUs this process may run on: its affinity mask where the system has one
    (a container's or ``taskset``'s limit), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def prepare_runtime() -> None:
    """Set ``GOMP_SPINCOUNT=1000`` in this process's environment where the user has set
    no wait policy of their own and torch is not yet imported (the OpenMP runtime reads it once,
    when torch loads it; later it would be a setting that nothing reads, so none is made).
    Child processes inherit it.

    Raises:
        ValueError: one line, for an ``OMP_NUM_THREADS`` that is not a count.
    """
    global _set_wait_policy
    if "torch" not in sys.modules and os.environ.get("OMP_NUM_THREADS"):
        _check_omp_num_threads(os.environ["OMP_NUM_THREADS"])  # before libgomp warns of it
    if _set_wait_policy is not None:
        return
    user = any(v in os.environ for v in USER_WAIT_VARIABLES)
    _set_wait_policy = not user and "torch" not in sys.modules
    if _set_wait_policy:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def apply_threads(threads: Optional[int] = None) -> ThreadPolicy:
    """Set torch's intra-op threads by the policy above and say what is used.

    Args:
        threads: ``--threads``; None to choose.

    Raises:
        ValueError: one line, for a count below 1.
    """
    import torch

    cores = usable_cores()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {threads!r}")
        torch.set_num_threads(threads)
        source = "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        _check_omp_num_threads(os.environ["OMP_NUM_THREADS"])
        source = "$OMP_NUM_THREADS"
    elif torch.get_num_threads() >= cores:
        torch.set_num_threads(cores)
        source = "the cores this process may use"
    else:
        source = f"torch.set_num_threads; {cores} cores usable"
    return ThreadPolicy(torch.get_num_threads(), source, *_wait())


def _check_omp_num_threads(value: str) -> None:
    """``OMP_NUM_THREADS`` (a count, or counts per nesting level: ``4,2``), which the OpenMP
    runtime ignores with a warning where it cannot read it: a ValueError instead."""
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise ValueError(
            f"$OMP_NUM_THREADS must be a count >= 1, got {value!r}: set it to one, or unset "
            "it to let pyrovae use the cores this process may run on"
        )


def _wait() -> tuple:
    """(wait policy, where it came from) as the OpenMP runtime read it."""
    if _set_wait_policy:
        return f"spin {SPIN_COUNT}, then sleep", "pyrovae's choice"
    for name in USER_WAIT_VARIABLES:
        if name in os.environ:
            return os.environ[name].lower(), f"${name}"
    # torch was imported before the command line could choose (an in-process call of
    # ``pyrovae.cli.main``): libgomp's default.
    return "spin 300000, then sleep", "OpenMP's default: torch was imported first"
