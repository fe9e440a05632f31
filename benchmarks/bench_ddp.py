"""One process with 2 threads against 2 processes with 1 thread each (torchrun, gloo), for an
epoch of the default model, on this machine's cores.

    python benchmarks/bench_ddp.py [--n-train 50000] [--reps 3] [--data-dir DIR]

Each repetition runs ``pyrovae train`` for one epoch of the default VAE (784-200-200-50 tanh,
pathwise, batch 100) both ways, in turn, and reads the epoch's training time from the run's
``metrics.jsonl`` (``train_seconds``: the steps alone, not the start-up of the processes or
the validation). The 2-process run takes the same global batches (``--batch-size`` is the
global batch: 50 rows per process) and all-reduces every parameter's gradient each step.

It then times that all-reduce alone (``torch.distributed.all_reduce`` of one flat float32
buffer of the model's size, over gloo between the 2 processes) and prints what a step
exchanges against what it computes: the numbers behind the documentation's note on more machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import SHARED_MNIST, table

REPO = Path(__file__).resolve().parents[1]


def _env(threads: int) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}


def _torchrun(processes: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        "--nproc-per-node",
        str(processes),
    ]


def epoch(args, run_dir: Path, processes: int, threads: int) -> float:
    """Seconds of the training part of one epoch, as ``pyrovae train`` records it."""
    launcher = _torchrun(processes) if processes > 1 else [sys.executable]
    command = launcher + ["-m", "pyrovae", "train", "--dataset", "binarized-mnist"]
    command += ["--data-dir", str(args.data_dir), "--epochs", "1", "--quiet"]
    command += ["--run-dir", str(run_dir), "--device", "cpu"]
    if args.n_train:
        command += ["--n-train", str(args.n_train), "--n-eval", str(min(args.n_train, 10000))]
    subprocess.run(command, env=_env(threads), check=True, capture_output=True, text=True)
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return record["train_seconds"]


def probe(numel: int, reps: int) -> None:
    """Under torchrun: median seconds of an all-reduce of ``numel`` float32 values (rank 0
    prints them)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    flat = torch.randn(numel)
    times = []
    for i in range(reps + 5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(flat)
        if i >= 5:
            times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        print(json.dumps({"seconds": statistics.median(times)}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, help="a subset of the training set (default all)")
    parser.add_argument("--reps", type=int, default=3, help="epochs each way, interleaved")
    parser.add_argument("--data-dir", type=Path, default=SHARED_MNIST)
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)  # the all-reduce probe
    args = parser.parse_args()
    if args.probe:
        probe(args.probe, reps=50)
        return
    if not args.data_dir.is_dir():
        sys.exit(f"bench_ddp: the binarized MNIST files are not in {args.data_dir} (--data-dir)")

    from pyrovae import VAEConfig, build_vae

    vae = build_vae(VAEConfig())
    params = sum(p.numel() for p in vae.parameters())
    n = args.n_train or 50000
    steps = n // 100 + (n % 100 > 0)
    settings = {"1 process x 2 threads": (1, 2), "2 processes x 1 thread (gloo)": (2, 1)}
    times = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for i, (name, (processes, threads)) in enumerate(settings.items()):
                run_dir = Path(tmp) / f"run-{rep}-{i}"
                times[name].append(epoch(args, run_dir, processes, threads))
    medians = {name: statistics.median(t) for name, t in times.items()}
    one = medians["1 process x 2 threads"]
    rows = [
        (name, f"{t:.2f}", f"{1e3 * t / steps:.2f}", f"{one / t:.2f}")
        for name, t in medians.items()
    ]
    print(
        f"an epoch of {n} images, default VAE ({params:,} parameters), batch 100 (global), "
        f"{args.reps} epochs each way, interleaved (medians)\n"
    )
    print(table(rows, ["setting", "s per epoch (training)", "ms per step", "speed-up"]))

    probe_cmd = _torchrun(2) + [str(Path(__file__).resolve()), "--probe", str(params)]
    done = subprocess.run(probe_cmd, env=_env(1), check=True, capture_output=True, text=True)
    reduce_s = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    volume = 4 * params
    flops = 6 * params * 100  # forward (2 per weight and row) and backward (twice that)
    step_s = one / steps
    print(
        "\n"
        + table(
            [
                ("gradient all-reduced per step", f"{volume / 1e6:.2f} MB (4 bytes x {params:,})"),
                (
                    "sent and received per process per step, ring all-reduce",
                    f"about 2 (N-1)/N x {volume / 1e6:.2f} MB (N processes)",
                ),
                ("all-reduce of it, 2 local processes (gloo)", f"{1e3 * reduce_s:.2f} ms"),
                (
                    "compute per step (batch 100)",
                    f"~{flops / 1e6:.0f} MFLOP, {1e3 * step_s:.2f} ms",
                ),
                (
                    "network to move one step's gradients in one step's compute",
                    f"{2 * volume / step_s / 1e9:.1f} GB/s per process",
                ),
            ],
            ["per step", "amount"],
        )
    )


if __name__ == "__main__":
    main()
