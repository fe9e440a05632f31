"""Semi-supervised M2 (Kingma et al., 2014) on dynamically binarized MNIST: test classification
error with 100, 600, 1000 or 3000 labels, next to the paper's.

    python experiments/m2_semisupervised.py --labelled 3000 [--epochs 180] [--run-dir DIR]
        [--data-dir ../shared/data/torchvision] [--lr 1e-3] [--labelled-batch-size 100]
        [--paper-weight] [--lr-schedule cosine|constant]

Trains ``pyrovae.m2:make`` (the recipe's M2: y summed out by enumeration in the guide, the
classification term weighted by 46 per labelled point, a classifier of two hidden layers;
with ``--paper-weight``, ``pyrovae.m2:make_paper_<labelled>``, the paper's M2 with its
α = 0.1 N shared out over the labelled points, which stalls: see ``pyrovae.m2``) with
pyrovae's trainer,
``pyrovae.train``, on the 50,000 training images of which ``labelled`` keep their labels (as
many of each digit, seeded); each batch of unlabelled images is followed by a step on
``--labelled-batch-size`` labelled ones drawn at random (default 100; 0 mixes them in the
batches as they come). A run resumes where it stopped: run the same command again (the
default run directory is ``runs/m2-<labelled>``); a larger ``--epochs`` goes on. With
``--lr-schedule cosine`` (the default) epoch e of E has the learning rate
lr (1 + cos(π (e - 1) / E)) / 2, from lr down to nearly 0 (the recipe: 180 epochs from 1e-3,
chosen on the validation error of 10-epoch pilots). At the end it classifies the 10,000 test
images by argmax q(y | x) with the last checkpoint and writes
``experiments/results/m2_<labelled>.json``: the error, the epochs and the training time, and the
paper's number for the same labels (M2 alone, Table 1 of Kingma et al. 2014: 11.97, 4.94, 3.60
and 3.92 % for 100, 600, 1000 and 3000 labels).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import torch  # noqa: E402

from pyrovae import TrainConfig, train  # noqa: E402
from pyrovae.program_runs import load_program_run  # noqa: E402

HERE = Path(__file__).resolve().parent
PAPER = {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92}  # % test error, M2 alone (Table 1)


def test_error(run_dir: Path, data_dir: str) -> float:
    """The percentage of test images whose argmax q(y | x) is not their label (last
    checkpoint)."""
    producer, data, _ = load_program_run(run_dir, "last", data_dir, splits=("test",))
    m2 = producer.model.__self__
    x, y = data.split("test"), data.labels["test"]
    with torch.no_grad():
        guess = torch.cat([m2.classify(x[i : i + 1000]).argmax(-1) for i in range(0, len(x), 1000)])
    return 100.0 * (guess != y).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, choices=sorted(PAPER), default=3000)
    parser.add_argument("--epochs", type=int, default=180)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--labelled-batch-size", type=int, default=100)
    parser.add_argument("--paper-weight", action="store_true")
    parser.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared/data/torchvision"))
    args = parser.parse_args()
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    run_dir = Path(args.run_dir or f"runs/m2-{args.labelled}")
    cfg = TrainConfig(
        model=f"pyrovae.m2:make_paper_{args.labelled}" if args.paper_weight else "pyrovae.m2:make",
        labelled_batch_size=args.labelled_batch_size or None,
        dataset="mnist",
        data_dir=args.data_dir,
        dataset_options={"binarize": "dynamic", "labelled": args.labelled},
        epochs=args.epochs,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        estimator="pathwise",
    )
    resume = (run_dir / "config.json").exists()
    start = time.perf_counter()
    result = train(cfg, run_dir=str(run_dir), resume=resume)
    error = test_error(run_dir, args.data_dir)
    seconds = sum(m.get("train_seconds", 0.0) for m in result.metrics)
    out = {
        "labelled": args.labelled,
        "test_error_percent": round(error, 2),
        "paper_m2_percent": PAPER[args.labelled],
        "epochs": args.epochs,
        "train_seconds_total": round(seconds, 1),
        "valid_elbo_last": result.metrics[-1]["valid_elbo"],
        # the learning rate of each epoch (a run resumed with --lr-schedule cosine anneals)
        "lr_by_epoch": [m["lr"] for m in result.metrics],
        # the validation error per epoch (``Program.classify``), for the learning curve
        "valid_error_by_epoch": [
            round(m["valid_error"], 2) for m in result.metrics if "valid_error" in m
        ],
        "this_call_seconds": round(time.perf_counter() - start, 1),
        "run_dir": str(run_dir),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"m2_{args.labelled}.json").write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"M2, {args.labelled} labels: test error {error:.2f}% "
        f"(Kingma et al. 2014: {PAPER[args.labelled]}%) after {args.epochs} epochs, "
        f"{seconds / 3600:.2f} h of training"
    )


if __name__ == "__main__":
    main()
