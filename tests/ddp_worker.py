"""One process of the distributed tests (``tests/test_distributed.py``), started by torchrun
with 2 gloo processes on the CPU: ``torchrun --standalone --nproc-per-node 2
tests/ddp_worker.py OUT``. Each process trains, resumes and evaluates through pyrovae's own
API and CLI, and saves what it ended with to ``OUT/rank{r}.pt`` for the test to compare.

The configurations are here, and imported by the test for its one-process references.
"""

import contextlib
import io
import os
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyrovae import TrainConfig, VAEConfig, estimate_log_likelihood, train
from pyrovae.cli import main
from pyrovae.data import Dataset
from pyrovae.distributed import current
from pyrovae.producers import make_producer
from pyrovae.training import prepare_data

MODEL = VAEConfig(z_dim=2, hidden=(16,), decoder="linear", likelihood="gaussian-learned")
# 110 points in global batches of 25: parts of 12 and 13 rows, and a last batch of 10 (5 + 5).
PLAIN = TrainConfig(
    dataset="linear-gaussian",
    dataset_options={"x_dim": 5, "z_dim": 2},
    n_train=110,
    n_eval=40,
    epochs=2,
    batch_size=25,
    lr=3e-3,
)
# Score-function with its decaying average: state shaped like each process's part (K, 12) and
# (K, 13), saved per process and restored on resume.
SCORE = TrainConfig(**{**PLAIN.to_dict(), "estimator": "score-function", "epochs": 3})
EVAL = {"k": 6, "chunk_pairs": 24, "seed": 5}  # 4 points a chunk: 10 chunks over 40 points


def pair_data() -> Dataset:
    g = torch.Generator().manual_seed(1)
    splits = [torch.randn(n, 3, generator=g) * 2 + 1 for n in (60, 20, 20)]
    return Dataset("toy-gaussian", *splits, binary=False)


def model(x):
    w = pyro.param("w", lambda: torch.randn(3, 2))
    b = pyro.param("b", lambda: torch.zeros(3))
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + b, 1.0).to_event(1), obs=x)


def guide(x):
    a = pyro.param("a", lambda: 0.1 * torch.randn(2, 3))
    s = pyro.param("s", lambda: torch.ones(2), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Normal(x @ a.T, s).to_event(1))


def state(result) -> dict:
    return {k: v.detach().clone() for k, v in result.vae.state_dict().items()}


def run(out: Path) -> None:
    saved = {}
    plain = train(PLAIN, MODEL, run_dir=out / "plain", progress=False)
    world = current()
    saved["world"] = (world.rank, world.size)
    saved["plain"] = state(plain)
    saved["plain_metrics"] = plain.metrics

    # A run stopped after one epoch and resumed, against the same run uninterrupted.
    first = TrainConfig(**{**SCORE.to_dict(), "epochs": 1})
    train(first, MODEL, run_dir=out / "resumed", progress=False)
    resumed = train(TrainConfig(epochs=3), run_dir=out / "resumed", resume=True, progress=False)
    whole = train(SCORE, MODEL, run_dir=out / "whole", progress=False)
    for name, result in (("resumed", resumed), ("whole", whole)):
        saved[name] = state(result)
        saved[name + "_metrics"] = result.metrics
    ckpt = torch.load(out / "whole" / "checkpoints" / "last.pt", weights_only=True)
    saved["ranks_saved"] = {k: ckpt[k] for k in ("world_size", "ranks") if k in ckpt}

    # A model/guide pair of bare pyro.param statements: broadcast, all-reduced, the same.
    pair = train(
        TrainConfig(dataset="toy-gaussian", epochs=1, batch_size=20, lr=1e-2),
        data=pair_data(),
        model=(model, guide),
        run_dir=out / "pair",
        progress=False,
    )
    saved["pair"] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    saved["pair_metrics"] = pair.metrics

    # The importance-weighted estimate, its points split between the processes.
    points = prepare_data(PLAIN).test
    result = estimate_log_likelihood(
        None, None, points, producer=make_producer(plain.vae), world=world, **EVAL
    )
    saved["eval"] = (result.per_point_log_px, result.per_point_elbo)

    # The CLI's evaluate, last (it leaves the process group when done): one JSON line, from
    # process 0 alone.
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["evaluate", str(out / "plain"), "--k", "7", "--json", "--quiet"])
    saved["cli_evaluate"] = (status, stdout.getvalue())
    saved["threads_after"] = thread_names()
    torch.save(saved, out / f"rank{world.rank}.pt")


def thread_names():
    """The names of this process's threads (Linux's /proc), or None where they cannot be
    read: gloo names its threads gloo_tcp_loop and pt_gloo_runloop."""
    try:
        tasks = os.listdir("/proc/self/task")
        return [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in tasks]
    except OSError:
        return None


if __name__ == "__main__":
    run(Path(sys.argv[1]))
