"""The CPU threads a command computes on: chosen by pyrovae, not inherited (issue 23).

PyTorch's CPU ops run on an OpenMP team (libgomp in the Linux wheels) whose threads, by
default, spin 300,000 rounds (a few ms) at the end of every parallel region waiting for the
next one before they sleep. Alone on a machine that is fast. Beside other work it is slow: a
team is only as fast as its slowest member, and a member that the kernel deschedules to run
someone else stalls every region until it is back (on 2 cores a training ran 15-85 times
slower beside other work, where sharing should cost 2 times). Shorter waits help but cost
alone; measured on this project's 2-core virtual machines, one epoch of 200 default training
steps (seconds, alone / two trainings at once, each a fixed team of 2 threads):

    spin 300,000 (OpenMP's default)  0.66 / 3.0-8.6
    spin 30,000                      0.62 / 10.8-17.0
    spin 3,000                       0.52-0.65 / 2.6-2.7
    spin 1,000                       0.70 / 1.5-1.6
    spin 100                         1.22-1.27 / 1.0-1.1
    passive (spin 0)                 1.0-1.3 / 1.0
    one thread                       0.80 / 0.80-0.87

No wait policy is both fast alone and beside other work; the last row is. So the team shrinks
while others are busy (``CoreSharing``): one thread fewer for each core that other work keeps
busy, looked at twice a second between the steps of the long loops (training, AIS and BDMC,
gradient variances), and taken back when the other work stops. The wait is 3000 rounds: as
fast alone as OpenMP's default within the noise of 10 paired runs (and 1000 rounds about 9%
slower), and shorter for the half second before a busy neighbour is seen
(``benchmarks/bench_contention.py`` has the side-by-side ratios).

The policy, applied by the command line (``pyrovae ...``, ``python -m pyrovae``, and so every
process torchrun starts):

- ``prepare_runtime`` (before torch is first imported, which is when the OpenMP runtime reads
  its environment): ``GOMP_SPINCOUNT=3000`` unless the user set ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` themselves.
- ``apply_threads`` (after the flags are read): as many threads as ``--threads`` says; else
  as ``OMP_NUM_THREADS`` says (the user's, or torchrun's 1 per process); else no more than the
  cores this process may run on (``os.sched_getaffinity``), keeping a smaller number set
  earlier by ``torch.set_num_threads``. Only in the third case, pyrovae's own count, is it
  lent (``share_cores``); a count the user sets, then or later, is never changed.

The evaluation's scoring workers are single-threaded, one per thread (they never form a team).
Library users who import torch themselves choose their own policy: call ``prepare_runtime``
before importing torch and ``apply_threads`` after to get the command line's.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional

# The wait pyrovae sets (rounds a waiting thread spins before it sleeps), and the variables by
# which a user sets their own.
__all__ = ["ThreadPolicy", "prepare_runtime", "apply_threads", "usable_cores"]

SPIN_COUNT = "3000"
USER_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# What ``prepare_runtime`` found: None until it has run; else whether it set the wait policy
# itself (False: the user had, or torch was imported first and it was too late).
_set_wait_policy: Optional[bool] = None
# The thread count lent and taken back by ``share_cores``: set by ``apply_threads`` where it
# chose the count itself.
_sharing: Optional["CoreSharing"] = None


class ThreadPolicy(NamedTuple):
    """What a command computes on: ``threads`` (torch's intra-op threads) and where that number
    came from; the OpenMP runtime's wait policy and where it came from; and, where pyrovae
    chose the count, the ``sharing`` that lends threads back while other work is busy."""

    threads: int
    threads_from: str
    wait: str
    wait_from: str
    sharing: Optional["CoreSharing"] = None

    def describe(self) -> str:
        """One line for a command's summary, e.g. ``2 (the cores this process may use), 1 for
        12.0 of 40.3 s while other work was busy; waiting spin 1000, then sleep (pyrovae's
        choice)``."""
        shared = self.sharing.describe() if self.sharing is not None else ""
        return (
            f"{self.threads} ({self.threads_from}){shared}; waiting {self.wait} ({self.wait_from})"
        )

    def to_dict(self) -> Dict[str, object]:
        """The JSON's ``threads``: the fields above; ``seconds_at``, {threads: wall seconds
        spent at that count}, where the count was shared."""
        out: Dict[str, object] = dict(self._asdict())
        sharing = out.pop("sharing")
        if sharing is not None:
            out["seconds_at"] = sharing.seconds_at()
        return out


def usable_cores() -> int:
    """The number of CPUs this process may run on: its affinity mask where the system has one
    (a container's or ``taskset``'s limit), else the machine's count."""
    return len(_usable_cpus()) or max(1, os.cpu_count() or 1)


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

    global _sharing
    stop_sharing()
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
    _sharing = CoreSharing.start(cores) if source == "the cores this process may use" else None
    return ThreadPolicy(torch.get_num_threads(), source, *_wait(), sharing=_sharing)


def stop_sharing() -> None:
    """End the lending that ``apply_threads`` started (the command line calls it when a
    command ends): threads lent are given back, so that the next command in this process
    finds torch's count as the user left it; a count someone else set since is kept."""
    global _sharing
    torch = sys.modules.get("torch")
    if _sharing is not None and not _sharing.stopped and torch is not None:
        if torch.get_num_threads() == _sharing.threads:
            torch.set_num_threads(_sharing.most)
    _sharing = None


def share_cores() -> None:
    """Between the steps of a long loop (training, AIS): lend threads back while other work
    is busy on this process's cores, and take them again when it stops (``CoreSharing``). A
    no-op unless ``apply_threads`` chose the thread count itself."""
    if _sharing is not None:
        _sharing.look()


# How often ``share_cores`` reads the machine (seconds), and the margins, in cores, beyond
# which a thread is lent (others busier than the free cores plus LEND) or taken back (others
# idler than the free cores plus TAKE): apart, so that noise of a few jiffies does not flap.
LOOK_EVERY = 0.5
LEND, TAKE = 0.25, 0.1


class CoreSharing:
    """Torch's thread count, lowered while other processes are busy on this process's cores.

    Why: a team of OpenMP threads is only as fast as its slowest member, and a member that
    the kernel deschedules to run someone else stalls every parallel region until it returns
    (tens of times slower on 2 cores, issue 23), however briefly the others then spin. One
    thread fewer per core that others use keeps the team on cores of its own. The measure is
    the busy time of the cores in the affinity mask (``/proc/stat``) less this process's own
    CPU time, over the last ``LOOK_EVERY`` seconds. torch.set_num_threads acts on the calling
    thread's OpenMP setting, so ``look`` runs on the thread that computes (the loop's own), not
    on a watcher thread of its own.

    Args:
        most: the thread count to return to (the usable cores).
        read_busy: seconds the usable cores have been busy, by anyone, since boot.
        own_cpu: CPU seconds of this process (all its threads).
        clock: wall seconds.
    """

    def __init__(
        self,
        most: int,
        read_busy: Callable[[], float],
        own_cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most, self.threads = most, most
        self.read_busy, self.own_cpu, self.clock = read_busy, own_cpu, clock
        self.stopped = False
        self._seconds: Dict[int, float] = {}
        self._last = (clock(), read_busy(), own_cpu())

    @classmethod
    def start(cls, cores: int) -> Optional["CoreSharing"]:
        """Sharing of ``cores`` threads, or None where there is nothing to share (one core)
        or no ``/proc/stat`` to read (not Linux)."""
        cpus = _usable_cpus()
        if cores < 2 or not cpus or _busy_seconds(cpus) is None:
            return None
        return cls(cores, lambda: _busy_seconds(cpus) or 0.0)

    def look(self) -> None:
        """Every ``LOOK_EVERY`` seconds: set the thread count from what others used since the
        last look. Stops for good once someone else has set torch's count (theirs wins)."""
        now = self.clock()
        if self.stopped or now - self._last[0] < LOOK_EVERY:
            return
        import torch

        if torch.get_num_threads() != self.threads:
            self.stopped = True
            return
        busy, own = self.read_busy(), self.own_cpu()
        wall = now - self._last[0]
        others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / wall
        self._seconds[self.threads] = self._seconds.get(self.threads, 0.0) + wall
        self._last = (now, busy, own)
        threads = self.decide(others)
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads

    def decide(self, others: float) -> int:
        """The thread count beside ``others`` cores' worth of other work."""
        free = self.most - others
        if self.threads > free + LEND:
            return max(1, math.floor(free + LEND))
        return max(self.threads, min(self.most, math.floor(free + TAKE)))

    def seconds_at(self) -> Dict[int, float]:
        """{thread count: wall seconds at it} over the looks so far."""
        return {k: round(v, 1) for k, v in sorted(self._seconds.items(), reverse=True)}

    def describe(self) -> str:
        """``, 1 for 12.0 of 40.3 s while other work was busy``, or empty if never lowered."""
        lowered = sum(v for k, v in self._seconds.items() if k < self.most)
        if not lowered:
            return ""
        counts = "-".join(str(k) for k in sorted({k for k in self._seconds if k < self.most}))
        total = sum(self._seconds.values())
        return f", {counts} for {lowered:.1f} of {total:.1f} s while other work was busy"


def _usable_cpus() -> List[int]:
    """The CPUs in this process's affinity mask; empty where there is none (not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def _busy_seconds(cpus: List[int]) -> Optional[float]:
    """Seconds that ``cpus`` have been busy since boot, by anyone (``/proc/stat``: user, nice,
    system, irq, softirq and steal; a vCPU that the host gives to others is as lost as one
    another process holds), or None where it cannot be read."""
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in wanted:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
                    total += user + nice + system + irq + softirq + steal
    except (OSError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


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
