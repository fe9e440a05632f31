"""Training speed of pyrovae against a hand-written PyTorch VAE, in the same process.

    python benchmarks/bench_train.py [--steps 100] [--reps 7] [--epochs]

Prints a table of times per step and their ratio to the reference, each a step of pyrovae's
trainer (``pyrovae.training.Trainer``: particles from a producer, the estimator, one fused
Adam): the default ``pyrovae train`` step (pathwise estimator, the VAE's direct producer), the
same default VAE given to the trainer as a plain Pyro model/guide pair (the traced producer),
and the score-function step (decaying-average baseline); and, for reference, the same pathwise
step through ``pyro.infer.SVI`` with ``Trace_ELBO``. With ``--epochs``, also whole epochs over
the 50,000 training images, data handling included.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings

from pyrovae.threads import prepare_runtime

# The command line's thread policy (pyrovae.threads), set before torch loads OpenMP.
prepare_runtime()

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from pyrovae import TrainConfig, VAEConfig, build_vae, make_estimator, train  # noqa: E402
from pyrovae.producers import make_producer  # noqa: E402
from pyrovae.runtime import tune_allocator  # noqa: E402
from pyrovae.training import Trainer  # noqa: E402

from common import (  # noqa: E402
    SHARED_MNIST,
    ReferenceVAE,
    binarized_mnist,
    interleaved_medians,
    reference_step,
    table,
)


def pyrovae_step(estimator: str, pair: bool, name: str):
    """A trainer step of the default VAE: through its direct producer, or given as the plain
    Pyro pair (vae.model, vae.guide), which only the traced producer can compute."""
    est = make_estimator(estimator)
    vae = build_vae(VAEConfig())
    vae.name = name  # its own names in Pyro's param store
    producer = make_producer((vae.model, vae.guide) if pair else vae)
    x0 = torch.zeros(100, vae.x_dim)
    est.prepare(x0)
    trainer = Trainer(producer, est, list(vae.parameters()), 1e-3)
    return lambda x: trainer.step(x, 50000), producer.name


def svi_step(name: str):
    """The same pathwise step through pyro.infer.SVI (per-parameter Adams, Trace_ELBO)."""
    vae = build_vae(VAEConfig())
    vae.name = name
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return lambda x: svi.step(x, 50000), "pyro.infer.SVI"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--epochs", action="store_true", help="also time whole epochs")
    args = parser.parse_args()
    torch.manual_seed(0)
    pyro.clear_param_store()
    data = binarized_mnist("train")
    batches = [data[i * 100 : (i + 1) * 100] for i in range(args.steps)]
    ref = ReferenceVAE()
    steps = {
        "hand-written PyTorch (reference)": reference_step(
            ref, torch.optim.Adam(ref.parameters(), lr=1e-3)
        )
    }
    tune_allocator()  # as pyrovae train does
    routes = {}
    for label, estimator, pair in (
        ("pyrovae train (pathwise, default)", "pathwise", False),
        ("trainer on the default VAE as a plain Pyro pair (pathwise)", "pathwise", True),
        ("pyrovae train, score-function (decaying-average baseline)", "score-function", False),
    ):
        steps[label], routes[label] = pyrovae_step(estimator, pair, f"v{len(steps)}")
    label = "pyro.infer.SVI + Trace_ELBO on the default VAE (reference)"
    steps[label], routes[label] = svi_step(f"v{len(steps)}")

    def runner(step):
        def run(rep):
            for x in batches:
                step(x)

        return run

    med = interleaved_medians({k: runner(f) for k, f in steps.items()}, reps=args.reps)
    ref_t = med["hand-written PyTorch (reference)"]
    rows = [
        (k, routes.get(k, "-"), f"{t / args.steps * 1e3:.2f}", f"{t / ref_t:.2f}")
        for k, t in med.items()
    ]
    print(
        f"threads: {torch.get_num_threads()}, batch 100, 784-200-200-50 tanh, "
        f"{args.steps} steps x {args.reps} interleaved repetitions (medians)\n"
    )
    print(table(rows, ["training step", "producer", "ms/step", "ratio to reference"]))
    if args.epochs:
        epoch_table(data, args.reps)


def epoch_table(data: torch.Tensor, reps: int) -> None:
    """Whole epochs: the reference loop against ``pyrovae.train`` (training time only)."""
    n = data.shape[0]
    ref = ReferenceVAE()
    step = reference_step(ref, torch.optim.Adam(ref.parameters(), lr=1e-3))
    gen = torch.Generator().manual_seed(0)

    def ref_epoch(rep):
        perm = torch.randperm(n, generator=gen)
        for i in range(n // 100):
            step(data[perm[i * 100 : (i + 1) * 100]])

    if not SHARED_MNIST.is_dir():
        print(f"\nepochs skipped: pyrovae train needs the data files in {SHARED_MNIST}")
        return
    times = {"ref": [], "pyrovae": []}
    tmp = tempfile.mkdtemp()
    try:
        for rep in range(reps):
            t = time.perf_counter()
            ref_epoch(rep)
            times["ref"].append(time.perf_counter() - t)
            cfg = TrainConfig(dataset="binarized-mnist", data_dir=str(SHARED_MNIST), epochs=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = train(cfg, run_dir=f"{tmp}/run{rep}", progress=False)
            times["pyrovae"].append(r.metrics[-1]["train_seconds"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref_t = sorted(times["ref"])[reps // 2]
    py_t = sorted(times["pyrovae"])[reps // 2]
    print()
    print(
        table(
            [
                ("hand-written PyTorch (reference)", f"{ref_t:.2f}", "1.00"),
                ("pyrovae train, 1 epoch (training loop)", f"{py_t:.2f}", f"{py_t / ref_t:.2f}"),
            ],
            ["epoch of 50,000 images", "seconds", "ratio to reference"],
        )
    )


if __name__ == "__main__":
    main()
