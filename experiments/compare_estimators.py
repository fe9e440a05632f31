"""Compare ELBO estimators on one model: same seed, equal budgets, same evaluation.

    python experiments/compare_estimators.py --model gaussian --steps 3000 --seconds 60
    python experiments/compare_estimators.py --model bernoulli --steps 3000 --seconds 60

For each estimator, trains the model from the same seed and initial parameters, recording a
learning curve (validation ELBO on a fixed subset, against steps and against training
seconds) and the encoder's gradient variance on a fixed minibatch along the way. Two snapshots
are evaluated with the importance-weighted test log p(x) (K = 5000 by default) and the test
ELBO: the model after ``--steps`` steps (equal steps) and the model after ``--seconds`` of
training (equal wall time; the clock stops during the recordings). Writes to ``--out``:
``results.json``, ``results.md`` (the table) and ``curves.png`` (learning curves against steps
and seconds, gradient variance during training).

``--model gaussian``: the default VAE (784-200-200-50 tanh, Gaussian latent) with every
estimator. ``--model bernoulli``: a sigmoid belief net (200 binary latents, 784-200-200
LeakyReLU nets both ways) with the score-function family.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import warnings
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import torch  # noqa: E402

from pyrovae import VAEConfig, build_vae, evaluate_vae, load_dataset, make_estimator  # noqa: E402
from pyrovae.evaluation.gradients import gradient_variance, parse_estimator_spec  # noqa: E402
from pyrovae.plots import markdown_table, save_figure  # noqa: E402
from pyrovae.producers import check_applies, make_producer  # noqa: E402
from pyrovae.runtime import tune_allocator  # noqa: E402
from pyrovae.training import Trainer  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED_MNIST = HERE.parent.parent / "shared" / "data" / "binarized_mnist"

MODELS = {
    "gaussian": (
        VAEConfig(),
        [
            "pathwise",
            "analytic-kl",
            "stl",
            "iwae",
            "dreg",
            "score-function:baseline=decaying-average",
            "score-function:baseline=neural",
            "vimco",
        ],
    ),
    "bernoulli": (
        VAEConfig(
            z_dim=200,
            hidden=(200, 200),
            activation="leaky-relu",
            prior="bernoulli",
            guide="bernoulli",
        ),
        [
            "score-function:baseline=none",
            "score-function:baseline=decaying-average",
            "score-function:baseline=neural",
            "vimco",
        ],
    ),
}


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless shuffled minibatch index tensors (full batches only)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for lo in range(0, n - batch_size + 1, batch_size):
            yield perm[lo : lo + batch_size]


def valid_elbo(vae, x) -> float:
    """Single-sample ELBO per data point on ``x`` (a fixed validation subset)."""
    with torch.no_grad():
        return evaluate_vae(vae, x, k=1, progress=False).elbo


def train_one(spec, cfg, data, args, init_state):
    """Train with one estimator; returns its curve and the two snapshots' states."""
    name, options = parse_estimator_spec(spec)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    est = make_estimator(name, **options)
    vae = build_vae(cfg)
    vae.load_state_dict(init_state)
    producer = make_producer(vae)  # as pyrovae train: the VAE's direct producer
    check_applies(producer, est, data.train[: args.batch_size])
    trainer = Trainer(producer, est, list(vae.parameters()), args.lr)
    tune_allocator()
    train, n = data.train, data.train.shape[0]
    valid = data.valid[: args.valid_n]
    probe = train[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:100]]
    order = batches(n, args.batch_size, torch.Generator().manual_seed(args.seed))
    curve, snapshots = [], {}
    seconds, step = 0.0, 0

    def record():
        rng = torch.get_rng_state()
        # A fresh estimator of the same spec, its baselines adapted to the current model.
        gv = gradient_variance(
            vae,
            probe,
            [spec],
            draws=args.gradvar_draws,
            warmup=args.gradvar_warmup,
            progress=False,
            warmup_data=train,
        )[0]
        torch.set_rng_state(rng)
        curve.append(
            {
                "step": step,
                "seconds": seconds,
                "valid_elbo": valid_elbo(vae, valid),
                "encoder_variance": gv.encoder_variance,
                "decoder_variance": gv.decoder_variance,
            }
        )

    record()
    while step < args.steps or seconds < args.seconds:
        start = time.perf_counter()
        for _ in range(args.record_every):
            loss = trainer.step(train[next(order)], n)
            step += 1
            if not math.isfinite(loss):
                raise FloatingPointError(f"{spec}: the loss became {loss} at step {step}")
            if step == args.steps:
                snapshots["steps"] = copy.deepcopy(vae.state_dict())
            if "seconds" not in snapshots and seconds + time.perf_counter() - start >= args.seconds:
                snapshots["seconds"] = copy.deepcopy(vae.state_dict())
                snapshots["seconds_steps"] = step
                break
        seconds += time.perf_counter() - start
        record()
        print(
            f"  {spec}: step {step}, {seconds:.0f} s, valid ELBO {curve[-1]['valid_elbo']:.2f}",
            file=sys.stderr,
        )
    return vae, curve, snapshots, est


def evaluate_snapshot(vae, state, test, k):
    vae.load_state_dict(state)
    pyro.set_rng_seed(0)
    res = evaluate_vae(vae, test, k=k, progress=False)
    return {"log_px": res.log_px, "log_px_se": res.log_px_stderr, "elbo": res.elbo}


def plot(results, path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in results:
        c = r["curve"]
        axes[0].plot([p["step"] for p in c], [p["valid_elbo"] for p in c], label=r["estimator"])
        axes[1].plot([p["seconds"] for p in c], [p["valid_elbo"] for p in c])
        axes[2].plot([p["step"] for p in c], [p["encoder_variance"] for p in c])
    lows = [min(p["valid_elbo"] for p in r["curve"][1:]) for r in results if len(r["curve"]) > 1]
    highs = [max(p["valid_elbo"] for p in r["curve"]) for r in results]
    for ax, xl in zip(axes[:2], ["training steps", "training seconds"]):
        ax.set_xlabel(xl)
        ax.set_ylabel("validation ELBO (nats)")
        if lows:
            ax.set_ylim(min(lows) - 5, max(highs) + 5)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("training steps")
    axes[2].set_ylabel("encoder gradient total variance")
    axes[2].grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gaussian")
    parser.add_argument("--estimators", help="comma-separated specs (default: per model)")
    parser.add_argument("--data-dir", default=str(SHARED_MNIST))
    parser.add_argument("--steps", type=int, default=3000, help="equal-steps budget")
    parser.add_argument("--seconds", type=float, default=60.0, help="equal-time budget")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record-every", type=int, default=250, help="steps between records")
    parser.add_argument("--gradvar-draws", type=int, default=10)
    parser.add_argument("--gradvar-warmup", type=int, default=50, help="baseline adaptation")
    parser.add_argument("--valid-n", type=int, default=1000)
    parser.add_argument("--test-n", type=int, default=1000, help="10000: the whole test set")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--out", help="output directory (default experiments/results/MODEL)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*was not registered in the param store")

    cfg, default_specs = MODELS[args.model]
    specs = args.estimators.split(",") if args.estimators else default_specs
    out = Path(args.out) if args.out else HERE / "results" / args.model
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("binarized-mnist", data_dir=args.data_dir)
    cfg = VAEConfig(**{**cfg.__dict__, "x_dim": data.x_dim})
    torch.manual_seed(args.seed)
    init_state = copy.deepcopy(build_vae(cfg).state_dict())
    idx = torch.randperm(data.test.shape[0], generator=torch.Generator().manual_seed(0))
    test = data.test[idx[: args.test_n]]

    results = []
    for spec in specs:
        print(f"training with {spec}", file=sys.stderr)
        vae, curve, snaps, est = train_one(spec, cfg, data, args, init_state)
        row = {"estimator": spec, "description": repr(est), "curve": curve}
        row["equal_steps"] = evaluate_snapshot(vae, snaps["steps"], test, args.k)
        row["equal_time"] = evaluate_snapshot(vae, snaps["seconds"], test, args.k)
        row["equal_time"]["steps"] = snaps["seconds_steps"]
        row["ms_per_step"] = 1e3 * curve[-1]["seconds"] / curve[-1]["step"]
        results.append(row)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}))

    rows = [
        (
            r["estimator"],
            f"{r['ms_per_step']:.1f}",
            f"{r['equal_steps']['log_px']:.2f} ± {r['equal_steps']['log_px_se']:.2f}",
            f"{r['equal_steps']['elbo']:.2f}",
            r["equal_time"]["steps"],
            f"{r['equal_time']['log_px']:.2f} ± {r['equal_time']['log_px_se']:.2f}",
            f"{r['equal_time']['elbo']:.2f}",
        )
        for r in results
    ]
    header = [
        "estimator",
        "ms/step",
        f"log p(x) after {args.steps} steps",
        f"ELBO after {args.steps} steps",
        f"steps in {args.seconds:.0f} s",
        f"log p(x) after {args.seconds:.0f} s",
        f"ELBO after {args.seconds:.0f} s",
    ]
    table = (
        f"Model `{args.model}`, seed {args.seed}, batch {args.batch_size}, Adam {args.lr}; "
        f"test log p(x) with K = {args.k} on {test.shape[0]} test images (± standard error)."
        f"\n\n{markdown_table(rows, header)}"
    )
    (out / "results.md").write_text(table + "\n")
    plot(
        results,
        out / "curves.png",
        f"{args.model} model: validation ELBO and encoder gradient variance during training",
    )
    print(table)
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}, {out / 'curves.png'}")


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
