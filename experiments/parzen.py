"""How far a kernel density (Parzen) estimate of log p(x) is from the truth.

    python experiments/parzen.py                                    # Gaussians: a minute or two
    python experiments/parzen.py --run-dir runs/bmnist --run-dir runs/vamp   # and trained VAEs

Models without a likelihood were long compared by a Parzen window estimate: S samples from the
model, an isotropic Gaussian of bandwidth h on each (h chosen on validation points), test points
scored under that mixture (``pyrovae.evaluation.parzen``). Theis, van den Oord & Bethge (2016)
showed it misleads. The script measures by how much:

1. on N(0, I_D) for D from 1 to 100, whose log p(x) is exact, with S = 1,000 and 10,000
   samples: the estimate's shortfall grows with D, and ten times the samples barely move it;
2. on trained binarized-MNIST VAEs (each ``--run-dir``; none by default): the Parzen estimate
   from S binary samples of the model against the importance-weighted estimate of the same
   model on the same seeded test images. (A Gaussian kernel density of binary images is a
   density, not a probability of them: it is compared here as the literature compared it.)

It prints a table and writes ``experiments/figures/parzen.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyrovae import evaluate_vae  # noqa: E402
from pyrovae.evaluation.parzen import choose_bandwidth, parzen_log_likelihood  # noqa: E402
from pyrovae.plots import save_figure  # noqa: E402
from pyrovae.runs import load_run  # noqa: E402

FIGURE = Path(__file__).resolve().parent / "figures" / "parzen.png"
GRID = [0.05 * 1.3**i for i in range(20)]  # bandwidths tried: 0.05 to about 7


def gaussian_rows(dims: Sequence[int], sizes: Sequence[int], seed: int) -> List[Dict[str, Any]]:
    """For each D and S: the exact mean log N(x; 0, I_D) of 1000 test points, the Parzen
    estimate from S samples with h chosen on 500 validation points, and h."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for d in dims:
        test = torch.randn(1000, d, generator=g, dtype=torch.float64)
        exact = (-0.5 * test.pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)).mean().item()
        for s in sizes:
            samples = torch.randn(s, d, generator=g, dtype=torch.float64)
            valid = torch.randn(500, d, generator=g, dtype=torch.float64)
            h, _ = choose_bandwidth(samples, valid, GRID)
            estimate = parzen_log_likelihood(samples, test, h).mean().item()
            rows.append({"D": d, "S": s, "h": h, "exact": exact, "parzen": estimate})
    return rows


def vae_row(run_dir: str, samples: int, n: int, k: int, seed: int) -> Dict[str, Any]:
    """A trained VAE's Parzen estimate from ``samples`` binary draws and its importance-weighted
    estimate (K = ``k``) on the same ``n`` seeded test images."""
    vae, data, _ = load_run(run_dir, splits=("valid", "test"))
    points = data.subset(n_eval=n, seed=seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        drawn = vae.sample(samples, mean=False)
    h, _ = choose_bandwidth(drawn, points.valid[:500], GRID)
    parzen = parzen_log_likelihood(drawn, points.test, h).mean().item()
    iw = evaluate_vae(vae, points.test, k=k, seed=seed, progress=False)
    return {"run": run_dir, "S": samples, "h": h, "parzen": parzen, "iw": iw.log_px, "k": k}


def plot(rows: List[Dict[str, Any]], vaes: List[Dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2 if vaes else 1, figsize=(11 if vaes else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for s in sorted({r["S"] for r in rows}):
        mine = [r for r in rows if r["S"] == s]
        ax.plot([r["D"] for r in mine], [r["exact"] - r["parzen"] for r in mine], "o-",
                label=f"S = {s:,} samples")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dimension D of N(0, I)")
    ax.set_ylabel("exact log p(x) − Parzen estimate, nats")
    ax.set_title("a Parzen estimate falls short as D grows", fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    if vaes:
        ax = axes[0, 1]
        names = [Path(v["run"]).name for v in vaes]
        x = range(len(vaes))
        for key, label, marker in (("iw", "importance weighted", "o"), ("parzen", "Parzen", "s")):
            values = [v[key] for v in vaes]
            ax.plot(list(x), values, marker, ms=9, ls="none", label=label)
            for i, value in zip(x, values):
                ax.annotate(f"{value:.1f}", (i, value), xytext=(10, -3), textcoords="offset points")
        ax.set_xticks(list(x), names)
        ax.set_xlim(-0.5, len(vaes) - 0.5)
        ax.set_ylabel("mean log p(x) of the test images, nats")
        ax.set_title("trained VAEs on binarized MNIST", fontsize=10)
        ax.legend(fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="1,2,5,10,20,50,100", help="the Gaussians' dimensions")
    p.add_argument("--sizes", default="1000,10000", help="the numbers of samples S")
    p.add_argument("--run-dir", action="append", default=[], help="a trained VAE's run")
    p.add_argument("--samples", type=int, default=10000, help="S for the VAEs")
    p.add_argument("--n", type=int, default=1000, help="seeded random test images")
    p.add_argument("--k", type=int, default=1000, help="K of the importance-weighted estimate")
    p.add_argument("--out", type=Path, default=FIGURE, help="the figure (PNG)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; returns the Gaussian "rows" and the trained VAEs' "vaes"."""
    args = parse(argv)
    dims = [int(d) for d in args.dims.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = gaussian_rows(dims, sizes, args.seed)
    print("| D | S | bandwidth | exact log p(x) | Parzen | shortfall |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['D']} | {r['S']:,} | {r['h']:.3f} | {r['exact']:.2f} | {r['parzen']:.2f} "
              f"| {r['exact'] - r['parzen']:.2f} |")  # fmt: skip
    vaes = [vae_row(run, args.samples, args.n, args.k, args.seed) for run in args.run_dir]
    for v in vaes:
        print(f"{v['run']}: importance weighted (K = {v['k']}) {v['iw']:.2f}, Parzen from "
              f"{v['S']:,} samples (h = {v['h']:.3f}) {v['parzen']:.2f} nats an image")  # fmt: skip
    plot(rows, vaes, args.out)
    print(f"figure: {args.out}")
    return {"rows": rows, "vaes": vaes}


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
