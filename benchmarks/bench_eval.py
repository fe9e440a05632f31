"""Speed and memory of the importance-weighted log-likelihood evaluation.

    python benchmarks/bench_eval.py [--run-dir RUN] [--n 1000] [--k 5000] [--scaling]

Measures, in one run: the machine's fp32 matrix-multiply peak (large ``torch.matmul``), the
throughput of ``pyrovae.evaluate_vae`` counted in the network's matrix-multiply FLOPs (decoder
once per particle and data point, encoder once per data point) as a fraction of that peak,
and the peak resident memory of a fresh process doing the evaluation. With ``--scaling``, the
cost against K and against the number of data points. Each measurement runs in its own
process so peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from pyrovae.threads import prepare_runtime

# The command line's thread policy (pyrovae.threads), set before torch loads OpenMP.
prepare_runtime()

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def network_flops(vae, n: int, k: int) -> float:
    """Matrix-multiply FLOPs of an evaluation: 2·in·out per Linear layer and row."""

    def per_row(net):
        return sum(
            2 * m.in_features * m.out_features
            for m in net.modules()
            if isinstance(m, torch.nn.Linear)
        )

    return n * k * per_row(vae.decoder) + n * per_row(vae.encoder)


def decoder_matmuls_gflops(rows: int, sizes=(50, 200, 200, 784), reps: int = 10) -> float:
    """Throughput of the decoder's matrix multiplies alone on ``rows`` rows (one evaluation
    chunk): the ceiling for an evaluation that did nothing else."""
    import statistics
    import time

    weights = [torch.randn(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    z = torch.randn(rows, sizes[0])
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        h = z
        for w in weights:
            h = h @ w
        times.append(time.perf_counter() - start)
    flops = 2 * rows * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return flops / statistics.median(times[1:]) / 1e9


def worker(run_dir: str, n: int, k: int, chunk_pairs: int) -> None:
    """Evaluate once and print a JSON line (runs in a subprocess)."""
    import warnings

    import pyro

    from pyrovae import VAEConfig, build_vae, evaluate_vae, load_vae

    from common import binarized_mnist

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    vae = load_vae(run_dir)[0] if run_dir else build_vae(VAEConfig())
    test = binarized_mnist("test")
    x = test[torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))[:n]]
    from common import matmul_peak_gflops

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pyro.set_rng_seed(0)
    res = evaluate_vae(vae, x, k=k, chunk_pairs=chunk_pairs, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The machine's speed drifts by 10-20% over minutes here: measure the matmul peak right
    # after the evaluation, in the same process, and keep the higher of that and the
    # measurement before it (the stricter ratio).
    gemm_peak = matmul_peak_gflops()
    print(
        json.dumps(
            {
                "seconds": res.seconds,
                "log_px": res.log_px,
                "peak_mb": peak,
                "before_mb": before,
                "flops": network_flops(vae, n, k),
                "gemm_peak": gemm_peak,
            }
        )
    )


def run_worker(run_dir, n, k, chunk_pairs):
    cmd = [
        sys.executable,
        str(HERE / "bench_eval.py"),
        "--worker",
        "--n",
        str(n),
        "--k",
        str(k),
        "--chunk-pairs",
        str(chunk_pairs),
    ]
    if run_dir:
        cmd += ["--run-dir", run_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=HERE).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir",
        help="a trained run (default: an untrained default VAE; "
        "speed depends a little on the weights)",
    )
    parser.add_argument("--n", type=int, default=1000, help="test images (10000: all)")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--chunk-pairs", type=int, default=4096)
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.run_dir, args.n, args.k, args.chunk_pairs)

    from common import matmul_peak_gflops, table

    peak = matmul_peak_gflops()
    r = run_worker(args.run_dir, args.n, args.k, args.chunk_pairs)
    peak = max(peak, r["gemm_peak"])
    gflops = r["flops"] / r["seconds"] / 1e9
    print(
        f"threads: {torch.get_num_threads()}; model: {args.run_dir or 'untrained default VAE'}"
        f"; fp32 matmul peak (4096^3 matmul, best before and after the evaluation): "
        f"{peak:.0f} GFLOP/s\n"
    )
    rows = [
        (
            f"{args.n} x {args.k}",
            f"{r['seconds']:.1f}",
            f"{r['seconds'] / (args.n * args.k) * 1e6:.2f}",
            f"{gflops:.0f}",
            f"{gflops / peak:.0%}",
            f"{r['peak_mb']:.0f}",
            f"{r['seconds'] * 10000 / args.n:.0f}",
        )
    ]
    print(
        table(
            rows,
            [
                "images x K",
                "seconds",
                "µs per (particle, image)",
                "GFLOP/s",
                "of peak",
                "peak RSS MB",
                "projected s for 10,000 images",
            ],
        )
    )
    ceiling = decoder_matmuls_gflops(args.chunk_pairs)
    print(
        f"\nthe decoder's matrix multiplies alone, on one chunk of {args.chunk_pairs} rows: "
        f"{ceiling:.0f} GFLOP/s ({ceiling / peak:.0%} of peak)"
    )
    if args.scaling:
        scaling(args, peak)


def scaling(args, peak: float) -> None:
    from common import table

    rows = []
    base = None
    for n, k in [
        (200, 500),
        (200, 1000),
        (200, 2000),
        (200, 4000),
        (200, 16000),
        (100, 1000),
        (400, 1000),
        (800, 1000),
    ]:
        r = run_worker(args.run_dir, n, k, args.chunk_pairs)
        per_pair = r["seconds"] / (n * k) * 1e6
        base = base or per_pair
        rows.append(
            (
                n,
                k,
                f"{r['seconds']:.2f}",
                f"{per_pair:.2f}",
                f"{per_pair / base:.2f}",
                f"{r['peak_mb']:.0f}",
            )
        )
    print(
        "\nscaling: time per (particle, image) should stay flat as K and N grow; peak memory "
        "should not grow with K\n"
    )
    print(table(rows, ["images", "K", "seconds", "µs per pair", "relative", "peak RSS MB"]))


if __name__ == "__main__":
    main()
