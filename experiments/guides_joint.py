"""Guide families trained jointly with their model at the command line's latent width: how far
from the exact log p(x) each ends (issue 22).

    python experiments/guides_joint.py            # every cell (resumable), then the table
    python experiments/guides_joint.py --estimators pathwise &  # half the cells ...
    python experiments/guides_joint.py --estimators stl --guides diagonal-gaussian full-rank
    python experiments/guides_joint.py --report   # the table from the finished cells

The data and model are the issue's: linear-Gaussian data (x_dim 5, z_dim 2, seed 1, 3000
training points), a linear decoder with a learned-variance Gaussian likelihood, so that the
trained model's log p(x) is exact, and the command line's default latent width of 50. Each cell
(guide family, encoder, learning-rate schedule, gradient estimator: the default pathwise ELBO
or STL) trains 200 epochs from seed 1 with everything else at the command line's defaults
(Adam 1e-3, batch 100) through
``pyrovae.train``. The gap exact log p(x) - ELBO on the 2000 test points is then computed in
closed form for the Gaussian families (it is KL(q ‖ p(z | x)), no Monte Carlo) and from 2000
particles per point for the flow. A cell's result is written when it is done; an interrupted
cell starts again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

from pyrovae import TrainConfig, VAEConfig, load_dataset, train  # noqa: E402
from pyrovae.evaluation.truth import exact_guide_gap  # noqa: E402
from pyrovae.plots import markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = {"x_dim": 5, "z_dim": 2, "seed": 1, "n_train": 3000}
GUIDES = ("diagonal-gaussian", "full-rank", "flow")
ENCODERS = ("linear", "mlp")
SCHEDULES = ("constant", "cosine")
ESTIMATORS = ("pathwise", "stl")


def cells():
    """(guide, encoder, schedule, estimator) of every cell."""
    return [
        (g, e, s, est) for est in ESTIMATORS for s in SCHEDULES for e in ENCODERS for g in GUIDES
    ]


def cell_name(guide: str, encoder: str, schedule: str, estimator: str) -> str:
    return f"{guide}-{encoder}-{schedule}-{estimator}"


def run_cell(guide: str, encoder: str, schedule: str, estimator: str, args) -> dict:
    data = load_dataset("linear-gaussian", **DATA)
    start = time.perf_counter()
    run_dir = args.runs / cell_name(guide, encoder, schedule, estimator)
    result = train(
        TrainConfig(
            dataset="linear-gaussian",
            dataset_options=DATA,
            epochs=args.epochs,
            seed=1,
            lr_schedule=schedule,
            estimator=estimator,
        ),
        VAEConfig(
            z_dim=50,
            encoder=encoder,
            decoder="linear",
            likelihood="gaussian-learned",
            guide=guide,
        ),
        run_dir=str(run_dir),
        progress=False,
    )
    return {
        "guide": guide,
        "encoder": encoder,
        "schedule": schedule,
        "estimator": estimator,
        "epochs": args.epochs,
        "gap": exact_guide_gap(result.vae, data.test).mean().item(),
        "seconds": time.perf_counter() - start,
    }


def report(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    order = ("estimator", "schedule", "encoder", "guide")
    table = [
        [*(r[key] for key in order), f"{r['gap']:.3f}", f"{r['seconds']:.0f}"]
        for r in sorted(rows, key=lambda r: tuple(r[key] for key in order))
    ]
    header = [*order, "exact log p(x) - ELBO (nats)", "seconds"]
    text = markdown_table(table, header)
    (out / "results.md").write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "guides_joint")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "guides_joint")
    parser.add_argument("--report", action="store_true", help="only write the table")
    parser.add_argument(
        "--schedules", nargs="+", default=SCHEDULES, help="these schedules' cells only"
    )
    parser.add_argument(
        "--estimators", nargs="+", default=ESTIMATORS, help="these estimators' cells only"
    )
    parser.add_argument("--guides", nargs="+", default=GUIDES, help="these guides' cells only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for cell in cells():
            guide, _, schedule, estimator = cell
            if (
                guide not in args.guides
                or schedule not in args.schedules
                or estimator not in args.estimators
            ):
                continue
            path = args.out / f"{cell_name(*cell)}.json"
            if path.exists():
                continue
            run = args.runs / cell_name(*cell)
            if run.exists():  # an interrupted cell starts again
                shutil.rmtree(run)
            record = run_cell(*cell, args)
            path.write_text(json.dumps(record, indent=1) + "\n")
            print(json.dumps(record), flush=True)
    print(report(args.out))


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
