"""Speed beside other work: pyrovae's thread policy against the one PyTorch inherits (issue 23).

    python bench_contention.py [--reps 2] [--jobs train,evaluate,ais,small] [--n-train 50000]
                               [--epochs 3]

Each job is a real command in a fresh process, timed from start to exit (start-up, data and
writing included): a training of the default VAE (``--epochs`` on ``--n-train`` images of the
shared binarized MNIST, whose "seconds per epoch" also gives ms per step), the
importance-weighted evaluation (``evaluate --k 5000``) and AIS (``evaluate --method ais``) of
a one-epoch run (500 test images; AIS on 50, T = 100); and ``small``, issue 22's training on
linear-Gaussian data (50 epochs of 30 steps of a linear VAE with 50 latents), whose ops are so
small that synchronizing the threads is most of each step. Each runs

- alone;
- beside a second copy of itself started at the same moment (its time: the later of the two);
- beside one busy core (a Python loop that spins for the whole job);

under the two policies: ``new``, pyrovae's (the command line's own choice: a 3000-round spin,
threads up to the usable cores, one lent back for each core that other work keeps busy), and
``old``, what torch would otherwise inherit: OpenMP's default spin of 300,000 rounds before
sleeping (``GOMP_SPINCOUNT=300000``, libgomp's default when ``OMP_WAIT_POLICY`` is unset) on a
fixed team of the usable cores (``OMP_NUM_THREADS``, a user's setting, which pyrovae keeps and
never lends). Repetitions are interleaved and medians reported, with the ratios that issue 23
asks for: each scene against the same policy alone, and new against old alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "binarized_mnist"
# The old policy: OpenMP's default spin, and a thread count fixed at the usable cores (torch's
# own default here), which, given as OMP_NUM_THREADS, is the user's and so is never lent.
POLICIES = {
    "new": {},
    "old": {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))},
}
SCENES = ("alone", "beside a second copy", "beside a busy core")
# A busy core that stops when the benchmark does, however it ends (a plain loop outlives a
# benchmark killed by a signal, and would sit beside every later measurement).
SPIN = (
    "import os\nparent = os.getppid()\n"
    "while os.getppid() == parent:\n    for _ in range(10**5): pass"
)
# Settings a user might have exported, which would otherwise decide both policies.
CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def commands(job: str, run: Path, n_train: int, out: Path, epochs: int = 1) -> List[str]:
    """The ``pyrovae`` command of a job; ``out`` a fresh directory for a training's run."""
    pyrovae = [sys.executable, "-m", "pyrovae"]
    if job == "train":
        return pyrovae + [
            "train", "--dataset", "binarized-mnist", "--data-dir", str(DATA), "--epochs",
            str(epochs), "--n-train", str(n_train), "--n-eval", "1000", "--run-dir", str(out),
            "--quiet",
        ]  # fmt: skip
    if job == "small":  # issue 22's linear-Gaussian training: many tiny parallel regions
        return pyrovae + [
            "train", "--dataset", "linear-gaussian", "--dataset-option", "x_dim=5",
            "--dataset-option", "z_dim=2", "--dataset-option", "n_train=3000", "--encoder",
            "linear", "--decoder", "linear", "--likelihood", "gaussian-learned", "--epochs",
            "50", "--run-dir", str(out), "--quiet",
        ]  # fmt: skip
    if job == "evaluate":
        return pyrovae + ["evaluate", str(run), "--k", "5000", "--n", "500", "--quiet"]
    if job == "ais":
        return pyrovae + [
            "evaluate",
            str(run),
            "--method",
            "ais",
            "--n",
            "50",
            "--steps",
            "100",
            "--quiet",
        ]
    raise ValueError(f"unknown job {job!r}")


def _env(policy: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    return {**env, **POLICIES[policy], "PYROVAE_DEVICE": "cpu"}


def _seconds_per_epoch(text: str) -> float:
    found = re.search(r"seconds per epoch\s+([0-9.]+)", text)
    return float(found.group(1)) if found else float("nan")


def measure(job: str, policy: str, scene: str, run: Path, args, tmp: Path) -> Tuple[float, float]:
    """(wall seconds of the job, seconds per training epoch or NaN) in one scene."""
    copies = 2 if scene == "beside a second copy" else 1
    spinner = None
    if scene == "beside a busy core":
        spinner = subprocess.Popen([sys.executable, "-c", SPIN])
        time.sleep(0.5)  # it is running before the job starts
    try:
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                commands(
                    job, run, args.n_train, Path(tempfile.mkdtemp(dir=tmp)) / "run", args.epochs
                ),
                env=_env(policy),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(copies)
        ]
        outputs, ends = [], []
        for p in procs:
            outputs.append(p.communicate()[0])
            ends.append(time.perf_counter())
            if p.returncode != 0:
                raise SystemExit(f"{job} ({policy}, {scene}) failed:\n{outputs[-1][-2000:]}")
        wall = max(ends) - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return wall, max(_seconds_per_epoch(o) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--jobs", default="train,evaluate,ais,small")
    parser.add_argument("--n-train", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=3, help="of the timed trainings")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()
    jobs = args.jobs.split(",")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        run = tmp / "trained"
        print("training the run that evaluate and AIS read ...", flush=True)
        subprocess.run(commands("train", run, args.n_train, run), env=_env("new"), check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        times: Dict[tuple, List[Tuple[float, float]]] = {}
        for rep in range(args.reps):
            for job in jobs:
                order = list(POLICIES) if rep % 2 == 0 else list(reversed(POLICIES))
                for policy in order:
                    for scene in SCENES:
                        got = measure(job, policy, scene, run, args, tmp)
                        times.setdefault((job, policy, scene), []).append(got)
                        print(f"rep {rep} {job:8} {policy} {scene:22} {got[0]:7.1f} s", flush=True)
    report(jobs, times, args)


def report(jobs: List[str], times: Dict[tuple, List[Tuple[float, float]]], args) -> None:
    from pyrovae.plots import markdown_table

    def med(key, i=0):
        return statistics.median(t[i] for t in times[key])

    rows = []
    for job in jobs:
        for scene in SCENES:
            new, old = med((job, "new", scene)), med((job, "old", scene))
            row = [job, scene, f"{old:.1f}", f"{new:.1f}"]
            row += [
                f"{old / med((job, 'old', 'alone')):.2f}",
                f"{new / med((job, 'new', 'alone')):.2f}",
            ]
            row.append(f"{new / old:.2f}")
            if job == "train":  # epochs of n_train / 100 steps
                steps = args.n_train / 100
                ms = [1e3 * med((job, p, scene), 1) / steps for p in ("old", "new")]
                row[1] += f" (ms per step: old {ms[0]:.1f}, new {ms[1]:.1f})"
            rows.append(row)
    head = ["job", "scene", "old s", "new s", "old / old alone", "new / new alone", "new / old"]
    print(f"\nmedians of {args.reps} interleaved repetitions, wall seconds from start to exit\n")
    print(markdown_table(rows, head))
    if args.json:
        medians = {" | ".join(k): [med(k), med(k, 1)] for k in times}
        args.json.write_text(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
