"""Which estimate of log p(x) to trust, at what cost: IW against AIS against the BDMC sandwich.

    python experiments/marginal_likelihood.py --run-dir runs/bmnist          # everything
    python experiments/marginal_likelihood.py --run-dir runs/bmnist --only 'ais-guide-*'
    python experiments/marginal_likelihood.py --report                       # table + figure

On one trained binarized-MNIST model and the same ``--n`` seeded random test images (the subset
``pyrovae evaluate --n`` picks), this measures, each through the library's own entry points
(``pyrovae.runs.evaluate_run`` and ``bdmc_run``, what the CLI runs):

- the importance-weighted estimate at each K of ``--iw-k`` (default 1, 50, 5000);
- AIS from the prior and from the guide at each T of ``--ais-steps`` (``--chains`` chains,
  ``--leapfrog`` leapfrog steps a transition);
- the BDMC sandwich on ``--bdmc-n`` points simulated from the model, at each T of
  ``--bdmc-steps``, with the IW estimate (K = 5000) on the same simulated points;

with each one's wall time. Every measurement is written to ``--out``/cells/NAME.json as soon as
it is done and skipped when it exists, so the work may be split across processes (disjoint
``--only`` globs, one core each) and sessions. The report (``results.md``, ``compute.png``:
estimate against seconds) gathers every finished one. Times depend on the machine and on what
else ran beside: each record keeps the threads it used and the fp32 matmul peak measured right
after it, so runs can be put on one scale.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
import warnings
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyrovae.plots import markdown_table, save_figure  # noqa: E402
from pyrovae.runs import bdmc_run, evaluate_run  # noqa: E402
from pyrovae.runtime import matmul_peak_gflops  # noqa: E402

HERE = Path(__file__).resolve().parent


def measurements(args):
    """(name, thunk) for every measurement, cheapest kind first."""
    common = {"n": args.n, "seed": 0, "progress": not args.quiet}
    out = []
    for k in args.iw_k:
        out.append((f"iw-k{k}", lambda k=k: evaluate_run(args.run_dir, k=k, **common)))
    for t in args.ais_steps:
        for init in ("guide", "prior"):
            out.append(
                (
                    f"ais-{init}-t{t}",
                    lambda t=t, init=init: evaluate_run(
                        args.run_dir,
                        method="ais",
                        steps=t,
                        chains=args.chains,
                        leapfrog=args.leapfrog,
                        init=init,
                        **common,
                    ),
                )
            )
    for t in args.bdmc_steps:
        out.append(
            (
                f"bdmc-t{t}",
                lambda t=t: bdmc_run(
                    args.run_dir,
                    n=args.bdmc_n,
                    steps=t,
                    chains=args.chains,
                    leapfrog=args.leapfrog,
                    seed=0,
                    progress=not args.quiet,
                ),
            )
        )
    return out


def run(name: str, thunk, args) -> dict:
    print(f"{name} ...", file=sys.stderr)
    start = time.perf_counter()
    result = thunk()
    seconds = time.perf_counter() - start
    record = {
        "name": name,
        "run_dir": str(args.run_dir),
        **result.to_dict(),
        "wall_seconds": seconds,
        "threads": torch.get_num_threads(),
        "matmul_gflops_after": matmul_peak_gflops(),
    }
    record.setdefault("method", "bdmc" if name.startswith("bdmc") else "iw")
    path = args.out / "cells" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def _load(args):
    return {p.stem: json.loads(p.read_text()) for p in sorted((args.out / "cells").glob("*.json"))}


def _row(r):
    if r["method"] == "bdmc":
        return None
    if r["method"] == "iw":
        what = f"IW, K = {r['k']}"
    else:
        what = f"AIS from the {r['init']}, T = {r['steps']}"
    extra = f"{r['acceptance']:.2f}" if r["method"] == "ais" else ""
    mc = r.get("mc_stderr")
    return (
        what,
        f"{r['log_px']:.2f} ± {r['log_px_stderr']:.2f}",
        f"{mc:.3f}" if mc is not None else "",
        f"{r['wall_seconds']:.3g}",
        r["threads"],
        extra,
    )


def report(args) -> None:
    records = _load(args)
    if not records:
        print("no finished measurements yet", file=sys.stderr)
        return
    estimates = [r for r in records.values() if r["method"] != "bdmc"]
    estimates.sort(key=lambda r: (r["method"], r.get("init", ""), r.get("k") or r["steps"]))
    lines = ["# Marginal likelihood estimates against their cost", ""]
    if estimates:
        r0 = estimates[0]
        lines += [
            f"Model: `{r0['run_dir']}`; {r0['n']} seeded random test images (the same for every "
            "row); log p(x) in nats per image ± standard error over images; MC s.e.: the "
            "mean of each image's own Monte Carlo standard error (AIS: across its chains); "
            f"AIS with {r0.get('chains', args.chains)} chains and "
            f"{r0.get('leapfrog', args.leapfrog)} leapfrog steps a transition.",
            "",
            markdown_table(
                [_row(r) for r in estimates],
                ["estimate", "log p(x)", "MC s.e.", "seconds", "threads", "HMC acceptance"],
            ),
            "",
        ]
        iw = [r for r in estimates if r["method"] == "iw"]
        if iw:
            best = max(iw, key=lambda r: r["k"])
            lines.append(
                "Each estimate minus IW at K = "
                f"{best['k']} (paired over the same images): "
                + ", ".join(
                    f"{_row(r)[0]} {r['log_px'] - best['log_px']:+.2f}"
                    for r in estimates
                    if r is not best
                )
                + "."
            )
            lines.append("")
    sandwiches = sorted(
        (r for r in records.values() if r["method"] == "bdmc"), key=lambda r: r["steps"]
    )
    if sandwiches:
        rows = [
            (
                r["steps"],
                f"{r['lower']:.2f} ± {r['lower_stderr']:.2f}",
                f"{r['upper']:.2f} ± {r['upper_stderr']:.2f}",
                f"{r['width']:.3f} ± {r['width_stderr']:.3f}",
                f"{r['iw']:.2f} ± {r['iw_stderr']:.2f}",
                f"{r['acceptance']:.2f}",
                f"{r['wall_seconds']:.0f}",
            )
            for r in sandwiches
        ]
        lines += [
            f"BDMC on {sandwiches[0]['n']} points simulated from the model (exact latents "
            "known): forward AIS from the prior (lower bound), reverse AIS from the true latent "
            f"(upper bound), and IW with K = {sandwiches[0]['k']} on the same points.",
            "",
            markdown_table(
                rows,
                [
                    "T",
                    "lower (forward AIS)",
                    "upper (reverse AIS)",
                    "width",
                    "IW",
                    "acceptance",
                    "seconds",
                ],
            ),
            "",
        ]
    (args.out / "results.md").write_text("\n".join(lines))
    if estimates:
        _figure(estimates, args.out / "compute.png")
    print("\n".join(lines))


def _figure(estimates, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series = [
        ("IW (K)", [r for r in estimates if r["method"] == "iw"], "k", "C0"),
        (
            "AIS from the guide (T)",
            [r for r in estimates if r["method"] == "ais" and r["init"] == "guide"],
            "steps",
            "C1",
        ),
        (
            "AIS from the prior (T)",
            [r for r in estimates if r["method"] == "ais" and r["init"] == "prior"],
            "steps",
            "C2",
        ),
    ]
    for label, rs, key, color in series:
        if not rs:
            continue
        rs = sorted(rs, key=lambda r: r["wall_seconds"])
        xs, ys = [r["wall_seconds"] for r in rs], [r["log_px"] for r in rs]
        ax.plot(xs, ys, "o-", color=color, label=label)
        # The prior-started AIS ends beside the guide-started one: its labels go below the line.
        below = color == "C2"
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(
                str(r[key]),
                (x, y),
                textcoords="offset points",
                xytext=(4, -10 if below else 4),
                fontsize=7,
            )
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the labels of the costliest points
    ax.set_xlabel(f"wall seconds for {estimates[0]['n']} test images")
    ax.set_ylabel("estimated log p(x), nats per image")
    ax.set_title("Estimate against compute (higher is tighter: all are stochastic lower bounds)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=HERE.parent / "runs" / "bmnist")
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--iw-k", type=int, nargs="+", default=[1, 50, 5000])
    p.add_argument("--ais-steps", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--bdmc-n", type=int, default=100)
    p.add_argument("--bdmc-steps", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--only", default="*", help="glob over measurement names, e.g. 'ais-guide-*'")
    p.add_argument("--out", type=Path, default=HERE / "results" / "marginal_likelihood")
    p.add_argument("--report", action="store_true", help="only gather finished measurements")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    warnings.simplefilter("ignore")  # the IAF notice etc. would bury the progress bars
    if not args.report:
        todo = [(name, f) for name, f in measurements(args) if fnmatch.fnmatch(name, args.only)]
        if not todo:
            p.error(f"--only {args.only!r} matches none of: {[n for n, _ in measurements(args)]}")
        for name, thunk in todo:
            if (args.out / "cells" / f"{name}.json").exists():
                continue
            run(name, thunk, args)
    report(args)
    return 0


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    sys.exit(main())
