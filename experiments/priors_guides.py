"""Priors × guides × latent layers on static binarized MNIST, at an equal budget.

    python experiments/priors_guides.py --epochs 30                 # every cell, then the report
    python experiments/priors_guides.py --cells 'vampprior/*' &     # a share of the cells ...
    python experiments/priors_guides.py --cells 'standard-normal/*' # ... on another core
    python experiments/priors_guides.py --report                    # the table and figure only

Each cell (prior, guide, latent layers) trains from seed 0 with the same estimator (pathwise
ELBO), batch, learning rate, KL warm-up and number of epochs, through ``pyrovae.train`` into its
own run directory under ``--runs``, and is then evaluated with ``pyrovae.evaluate_run``:
test log p(x) (importance-weighted, K = 5000) and ELBO on ``--n-test`` seeded random test
images (the same images for every cell). A cell's result is written as soon as it is done, and
an interrupted cell resumes from its last checkpoint, so the grid may be run in pieces, across
machines' sessions or in parallel processes (one core each) on disjoint ``--cells``. The report
(``results.md``, ``grid.png``) gathers every finished cell beside the published numbers for
this data set.

The nets use ELU activations, not the library's default tanh: with tanh encoders and the
pathwise ELBO the VampPrior cells collapse at the start of training and do not recover within
the budget (measured: validation ELBO stuck at -207 nats, the model that ignores z, for all 30
epochs with a 10-epoch warm-up, and for 7 epochs with a 50-epoch one; with ELU the same cell
reaches -113 after 4 epochs). The VampPrior pulls every posterior towards its components, which
the same encoder makes; the encoder's tanh units saturate into a constant output with a narrow
scale, where z carries nothing and no gradient brings it back. (The VampPrior paper's nets are
gated, not tanh; the VampPrior recipe (docs/results.md) trains tanh nets with the K = 5 bound,
which escapes after 4 epochs.)

The flow guide is the coupling flow (``transform=coupling``): a VampPrior scores each z under
every component's flow, which the coupling flow inverts in one pass and an IAF in z_dim. That
one-layer cell is the grid's costliest by far: about 21x the default's training step, and its
K = 5000 evaluation scores 5000 particles of each image under 500 flows. (With two layers the
VampPrior is over z2, whose guide q(z2 | z1) is a diagonal Gaussian: cheap.)
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pyrovae import TrainConfig, VAEConfig, train  # noqa: E402
from pyrovae.plots import markdown_table, save_figure  # noqa: E402
from pyrovae.runs import evaluate_run  # noqa: E402
from pyrovae.training import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED_MNIST = HERE.parent.parent / "shared" / "data" / "binarized_mnist"
PRIORS = ["standard-normal", "mixture", "vampprior", "flow"]
GUIDES = {"diagonal": ("diagonal-gaussian", {}), "flow": ("flow", {"transform": "coupling"})}
LAYERS = [1, 2]
# Test NLL on statically binarized MNIST, K = 5000 (pythae: its benchmark's reproductions;
# VampPrior paper: Tomczak & Welling, 2018, one stochastic layer, Table 2).
PUBLISHED = {
    "VAE (pythae)": 89.78,
    "IWAE (pythae)": 86.82,
    "VampPrior (pythae)": 85.79,
    "VampPrior (T&W)": 85.57,
}


def cell_name(prior: str, guide: str, layers: int) -> str:
    return f"{prior}/{guide}/{layers}"


def all_cells():
    return [cell_name(p, g, n) for n in LAYERS for g in GUIDES for p in PRIORS]


def run_cell(name: str, args) -> dict:
    """Train (or resume) and evaluate one cell; returns its result record."""
    prior, guide, layers = name.split("/")
    family, options = GUIDES[guide]
    run_dir = args.runs / args.activation / name.replace("/", "-")
    train_cfg = TrainConfig(
        dataset="binarized-mnist",
        data_dir=str(args.data_dir),
        epochs=args.epochs,
        batch_size=100,
        lr=1e-3,
        warmup=args.warmup,
        estimator="pathwise",
        seed=0,
    )
    model_cfg = VAEConfig(
        prior=prior,
        guide=family,
        guide_options=options,
        latent_layers=int(layers),
        activation=args.activation,
    )
    done = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    if len(done) < args.epochs:
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        print(f"{name}: training epochs {len(done) + 1}..{args.epochs}", file=sys.stderr)
        train(train_cfg, model_cfg, run_dir=str(run_dir), resume=resume, progress=not args.quiet)
    metrics = read_metrics(run_dir)[: args.epochs]
    start = time.perf_counter()
    res = evaluate_run(str(run_dir), k=args.k, n=args.n_test, seed=0, progress=not args.quiet)
    record = {
        "cell": name,
        "prior": prior,
        "guide": guide,
        "latent_layers": int(layers),
        "epochs": len(metrics),
        "train_seconds_per_epoch": sum(m["train_seconds"] for m in metrics) / len(metrics),
        "best_valid_elbo": max(m["valid_elbo"] for m in metrics),
        "test_log_px": res.log_px,
        "test_log_px_stderr": res.log_px_stderr,
        "test_elbo": res.elbo,
        "test_elbo_stderr": res.elbo_stderr,
        "k": res.k,
        "n_test": res.n,
        "eval_seconds": time.perf_counter() - start,
        "warmup": args.warmup,
        "activation": args.activation,
    }
    path = args.out / "cells" / f"{name.replace('/', '-')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record


def report(args) -> None:
    """results.md and grid.png from every finished cell."""
    records = [json.loads(p.read_text()) for p in sorted((args.out / "cells").glob("*.json"))]
    if not records:
        print("no finished cells yet", file=sys.stderr)
        return
    order = {c: i for i, c in enumerate(all_cells())}
    records.sort(key=lambda r: order.get(r["cell"], len(order)))
    base = next((r for r in records if r["cell"] == "standard-normal/diagonal/1"), None)
    rows = []
    for r in records:
        cost = (
            f"{r['train_seconds_per_epoch'] / base['train_seconds_per_epoch']:.1f}x" if base else ""
        )
        rows.append(
            (
                r["prior"],
                r["guide"],
                r["latent_layers"],
                f"{-r['test_log_px']:.2f} ± {r['test_log_px_stderr']:.2f}",
                f"{-r['test_elbo']:.2f}",
                f"{r['test_log_px'] - r['test_elbo']:.2f}",
                f"{r['train_seconds_per_epoch']:.1f}",
                cost,
            )
        )
    header = [
        "prior",
        "guide",
        "layers",
        f"test NLL (K={records[0]['k']})",
        "test −ELBO",
        "log p(x) − ELBO",
        "s/epoch",
        "epoch cost vs standard-normal/diagonal/1",
    ]
    r0 = records[0]
    lines = [
        "# Priors × guides × layers on static binarized MNIST",
        "",
        f"Every cell: {r0['epochs']} epoch{'s' * (r0['epochs'] > 1)} from seed 0, "
        f"{r0.get('activation', 'tanh')} nets, pathwise ELBO, batch 100, Adam 1e-3, "
        f"KL warm-up over {r0['warmup']} epochs; test NLL = −log p(x) with K = {r0['k']} on "
        f"{r0['n_test']} seeded random test images (± standard error over images; the same "
        "images for every cell). Seconds per epoch were measured on one core of a shared "
        "2-core machine: compare them within this table only.",
        "",
        markdown_table(rows, header),
        "",
        "Published test NLL on this data (thousands of epochs, for scale): "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
        + ".",
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    _figure(records, args.out / "grid.png")
    print("\n".join(lines))


def _figure(records, path: Path) -> None:
    groups = [(g, n) for n in LAYERS for g in GUIDES]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(PRIORS)
    for i, prior in enumerate(PRIORS):
        xs, ys, es = [], [], []
        for j, (guide, layers) in enumerate(groups):
            r = next((r for r in records if r["cell"] == cell_name(prior, guide, layers)), None)
            if r is not None:
                xs.append(j + (i - (len(PRIORS) - 1) / 2) * width)
                ys.append(-r["test_log_px"])
                es.append(r["test_log_px_stderr"])
        if xs:
            ax.bar(xs, ys, width, yerr=es, label=f"{prior} prior", capsize=2, color=f"C{i}")
    low, high = min(PUBLISHED.values()), max(PUBLISHED.values())
    ax.axhspan(low, high, color="gray", alpha=0.25, label=f"published, {low}–{high}")
    ax.set_xticks(range(len(groups)), [f"{g} guide, {n} layer{'s' * (n > 1)}" for g, n in groups])
    ax.set_xlim(-0.5, len(groups) - 0.5)
    values = [-r["test_log_px"] for r in records] + list(PUBLISHED.values())
    ax.set_ylim(min(values) - 2, max(values) + 2)
    ax.set_ylabel("test NLL, nats (lower is better)")
    r0 = records[0]
    ax.set_title(
        f"{r0['epochs']} epochs per cell, K = {r0['k']} on {r0['n_test']} test images", fontsize=9
    )
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10, help="KL warm-up epochs")
    p.add_argument(
        "--activation",
        default="elu",
        help="the nets' activation (default elu: with tanh the VampPrior cells collapse, "
        "see the module docstring)",
    )
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--cells", default="*", help="glob over prior/guide/layers, e.g. 'flow/*/1'")
    p.add_argument("--data-dir", type=Path, default=SHARED_MNIST)
    p.add_argument("--out", type=Path, default=HERE / "results" / "priors_guides")
    p.add_argument(
        "--runs",
        type=Path,
        default=HERE.parent / "runs" / "priors_guides",
        help="where the cells' run directories (checkpoints) go; not committed",
    )
    p.add_argument("--report", action="store_true", help="only gather finished cells")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if not args.report:
        cells = [c for c in all_cells() if fnmatch.fnmatch(c, args.cells)]
        if not cells:
            p.error(f"--cells {args.cells!r} matches none of: {', '.join(all_cells())}")
        for name in cells:
            done = args.out / "cells" / f"{name.replace('/', '-')}.json"
            record = json.loads(done.read_text()) if done.exists() else {}
            same = record.get("activation", "tanh") == args.activation
            if same and record.get("epochs", 0) >= args.epochs:
                continue
            run_cell(name, args)
    report(args)
    return 0


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    sys.exit(main())
