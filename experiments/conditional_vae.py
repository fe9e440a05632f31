"""A class-conditional VAE, a Pyro program of the user's own that takes MNIST's labels, against
a deterministic baseline: log p(x | y) on the test set.

    python experiments/conditional_vae.py [--data-dir ../shared/data/torchvision] [--epochs 30]

The program is written as Pyro users write a conditional VAE, ``model(x, y)`` and
``guide(x, y)``, and trained by pyrovae's trainer as a ``pyrovae.Program(labels=True)`` on
dynamically binarized MNIST (the IWAE paper's protocol), with the K = 5 bound. Its log p(x | y)
on the test images is the importance-weighted estimate with K = 1000 (a stochastic lower
bound). The baseline is deterministic given the label: the best factorized Bernoulli p(x | y) =
Π_d Bern(x_d; μ_{y,d}), μ_y the mean of the training images of class y (the maximum-likelihood
answer of any network from y to pixel probabilities; clipped to [1e-3, 1 - 1e-3]), whose
log p(x | y) is exact. The gap between the two is what the latent z explains beyond the label:
the style of each digit. Prints both and writes ``experiments/results/conditional_vae.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pyrovae import Program, TrainConfig, estimate_log_likelihood, load_dataset, train  # noqa: E402
from pyrovae.producers import make_producer  # noqa: E402
from pyrovae.program import with_labels  # noqa: E402

HERE = Path(__file__).resolve().parent


class ConditionalVAE(nn.Module):
    """p(z) p(x | z, y) with q(z | x, y): y one of 10 classes, one-hot, beside z or x."""

    def __init__(self, x_dim=784, z_dim=32, classes=10, hidden=500):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.encoder = nn.Sequential(
            nn.Linear(x_dim + classes, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + classes, hidden), nn.Tanh(), nn.Linear(hidden, x_dim)
        )

    def _onehot(self, y, like):
        onehot = torch.nn.functional.one_hot(y, self.classes).to(like.dtype)
        return onehot.expand(*like.shape[:-1], self.classes)

    def model(self, x, y):
        pyro.module("conditional_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z, self._onehot(y, z)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("conditional_vae", self)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(torch.cat([x, self._onehot(y, x)], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def baseline_log_px(train_x, train_y, test_x, test_y) -> torch.Tensor:
    """log p(x | y) per test point under the class-mean factorized Bernoulli, exact."""
    means = torch.stack([train_x[train_y == c].mean(0) for c in range(10)])
    mu = means[test_y].clamp(1e-3, 1 - 1e-3)
    return (test_x * mu.log() + (1 - test_x) * (1 - mu).log()).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(HERE.parents[1] / "shared/data/torchvision"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000)
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir, binarize="dynamic")
    torch.manual_seed(0)
    vae = ConditionalVAE()
    program = Program(vae.model, vae.guide, labels=True)
    cfg = TrainConfig(dataset="mnist", epochs=args.epochs, batch_size=100, lr=1e-3,
                      estimator="iwae", seed=0)  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run:
        result = train(cfg, program, run_dir=run, data=data)
    seconds = time.perf_counter() - started
    rows = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))
    rows = rows[: args.n_test]
    x, y = data.test[rows], data.labels["test"][rows]
    pyro.set_rng_seed(0)
    ours = estimate_log_likelihood(None, None, with_labels(x, y), k=args.k,
                                   producer=make_producer(program))  # fmt: skip
    base = baseline_log_px(data.train, data.labels["train"], x, y)
    out = {
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "best_valid_elbo": result.best_valid_elbo,
        "test_points": args.n_test,
        "k": args.k,
        "cvae_log_px_given_y": ours.log_px,
        "cvae_log_px_given_y_stderr": ours.log_px_stderr,
        "baseline_log_px_given_y": base.mean().item(),
        "baseline_log_px_given_y_stderr": (base.std() / len(base) ** 0.5).item(),
    }
    print(json.dumps(out, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "conditional_vae.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
