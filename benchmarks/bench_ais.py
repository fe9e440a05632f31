"""Throughput of annealed importance sampling's HMC, next to the importance-weighted evaluator's.

    python benchmarks/bench_ais.py [--run-dir RUN] [--n 256] [--steps 10] [--chains 16]

HMC's cost is the decoder: each leapfrog step evaluates log p(x, z) at new z and its gradient
in z, one forward and one input-gradient backward pass (the backward of a Linear layer with
respect to its input is one matrix multiply of the forward's size; no weight gradients are
formed). The script counts those matrix-multiply FLOPs, 2 x the decoder's forward FLOPs per
(chain, data point, leapfrog step), and reports the throughput as a fraction of the fp32
matmul peak measured in the same process, beside the evaluator's (decoder forward per
(particle, data point)) on the same points, so the two fractions are comparable.
"""

from __future__ import annotations

import argparse
import warnings

from pyrovae.threads import prepare_runtime

# The command line's thread policy (pyrovae.threads), set before torch loads OpenMP.
prepare_runtime()

import pyro  # noqa: E402
import torch  # noqa: E402
from bench_eval import network_flops  # noqa: E402

from common import binarized_mnist, matmul_peak_gflops, table  # noqa: E402


def decoder_flops(vae) -> int:
    """Matrix-multiply FLOPs of one decoder forward pass on one row."""
    return sum(
        2 * m.in_features * m.out_features
        for m in vae.decoder.modules()
        if isinstance(m, torch.nn.Linear)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a trained run (default: an untrained default VAE)")
    parser.add_argument("--n", type=int, default=256, help="test images")
    parser.add_argument("--steps", type=int, default=10, help="AIS distributions T")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--leapfrog", type=int, default=10)
    parser.add_argument("--k", type=int, default=5000, help="the evaluator's K, for comparison")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    from pyrovae import VAEConfig, build_vae, evaluate_vae, load_vae
    from pyrovae.evaluation.ais import ais_log_likelihood
    from pyrovae.producers import make_producer

    torch.manual_seed(0)
    vae = load_vae(args.run_dir)[0] if args.run_dir else build_vae(VAEConfig())
    test = binarized_mnist("test")
    x = test[torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))[: args.n]]

    peak = matmul_peak_gflops()
    rows = []
    for init in ("prior", "guide"):
        pyro.set_rng_seed(0)
        res = ais_log_likelihood(
            make_producer(vae),
            x,
            steps=args.steps,
            chains=args.chains,
            leapfrog=args.leapfrog,
            init=init,
            progress=False,
        )
        # T transitions of L leapfrog steps, and the starting point's evaluation.
        evaluations = args.n * args.chains * (args.steps * args.leapfrog + 1)
        gflops = 2 * decoder_flops(vae) * evaluations / res.seconds / 1e9
        rows.append(
            (
                f"AIS from the {init}, T={args.steps}, {args.chains} chains, L={args.leapfrog}",
                f"{res.seconds:.2f}",
                f"{res.seconds / evaluations * 1e6:.2f} per (chain, image, leapfrog step)",
                f"{gflops:.0f}",
                gflops / peak,
            )
        )
    pyro.set_rng_seed(0)
    iw = evaluate_vae(vae, x, k=args.k, progress=False)
    gflops = network_flops(vae, args.n, args.k) / iw.seconds / 1e9
    rows.append(
        (
            f"IW evaluator, K={args.k}",
            f"{iw.seconds:.2f}",
            f"{iw.seconds / (args.n * args.k) * 1e6:.2f} per (particle, image)",
            f"{gflops:.0f}",
            gflops / peak,
        )
    )
    peak = max(peak, matmul_peak_gflops())  # the machine drifts: the stricter of before/after
    print(
        f"threads: {torch.get_num_threads()}; model: {args.run_dir or 'untrained default VAE'}; "
        f"{args.n} test images; fp32 matmul peak (4096^3, best before and after): "
        f"{peak:.0f} GFLOP/s\n"
    )
    rows = [r[:-1] + (f"{float(r[3]) / peak:.0%}",) for r in rows]
    print(table(rows, ["work", "seconds", "µs", "GFLOP/s", "of peak"]))


if __name__ == "__main__":
    main()
