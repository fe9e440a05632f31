"""The commands on a run of a Pyro program of the user's own (``pyrovae train --model
PACKAGE.MODULE:FUNCTION``): ``evaluate`` (importance-weighted and AIS), ``sample`` and ``bdmc``.

The program is rebuilt from the name the run recorded (``pyrovae.program.load_program``), the
run's parameters are loaded into it (``load_pair_state``), and its particles come from the
traced producer with the run's ``max_plate_nesting``. What needs the library's VAE (``gap``'s
per-point guides, ``gradvar``, ``--refine``, reconstructions) says so and stops.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple, Union

import pyro
import torch

from .data import SPLITS, Dataset
from .evaluation import LogLikelihood, estimate_log_likelihood
from .evaluation.ais import AISResult, BDMCResult, ais_log_likelihood, bdmc
from .producers import TracedProducer, make_producer
from .program import load_program
from .runtime import Device, resolve_device
from .training import load_pair_state, prepare_data, read_config
from .training.checkpoint import find_checkpoint
from .training.rundir import read_record, trained_on_python_data

# What the library's VAE alone can do, and so what a program of the user's own is refused.
VAE_ONLY = "needs the library's VAE (its guide family and decoder mean)"


def is_program_run(run_dir: Union[str, Path]) -> bool:
    """Whether ``run_dir`` trained a Pyro program named on the command line (``--model``)."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ValueError(f"run_dir must be a path, got {run_dir!r}")
    return read_config(Path(run_dir))[0].model is not None


def refuse_program_run(run_dir: Union[str, Path], what: str) -> None:
    """Stop ``what`` (a command, an option) on a run of a program of the user's own, saying
    what does work on it."""
    if is_program_run(run_dir):
        spec = read_config(Path(run_dir))[0].model
        raise ValueError(
            f"{what} {VAE_ONLY}, and {run_dir} trained the program {spec}: evaluate (--method "
            "iw or ais), sample and bdmc take it"
        )


def load_program_run(
    run_dir: Union[str, Path],
    which: str = "best",
    data_dir: Union[str, None] = None,
    splits: Sequence[str] = SPLITS,
    device: Device = None,
) -> Tuple[TracedProducer, Dataset, Dict[str, Any]]:
    """(the traced producer of the run's program with its ``which`` parameters loaded, on
    ``device``; the run's dataset, ``splits`` loaded, on the CPU; the checkpoint dict, its
    ``"checkpoint"`` naming the file used)."""
    train_cfg, _ = read_config(Path(run_dir))
    if data_dir is not None:
        train_cfg = dataclasses.replace(train_cfg, data_dir=str(Path(data_dir).resolve()))
    if trained_on_python_data(read_record(Path(run_dir))):
        raise ValueError(
            f"{run_dir} was trained on a Dataset passed in Python (train(data=...)), which the "
            "run cannot load: evaluate the program in Python (estimate_log_likelihood)"
        )
    model, guide = load_program(train_cfg.model)
    device = resolve_device(device)
    owner = getattr(model, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        owner.to(device).eval()
    data = prepare_data(train_cfg, splits)
    x = next((data.split(s) for s in splits if len(data.split(s))), None)
    if x is None:
        raise ValueError(f"{run_dir}: the data has no points in {', '.join(splits)}")
    # A batch to find the program's parameters by tracing it (a subsampling plate's size).
    state = load_pair_state(run_dir, model, guide, x[:100].to(device), which)
    state["checkpoint"] = find_checkpoint(run_dir, which).stem
    producer = make_producer((model, guide), "traced", train_cfg.max_plate_nesting)
    return producer, data, state


def evaluate_program(
    run_dir: Union[str, Path], o: Any, x_of: Any, progress: bool, seeded: Dict[str, Any]
) -> Union[LogLikelihood, AISResult]:
    """``pyrovae evaluate`` on a program run: ``o`` the bound ``EVALUATE`` options, ``x_of``
    the function picking the points of a split (``runs._points``), ``seeded`` the chunk
    seeds and processes of the importance-weighted estimate."""
    if o.refine:
        refuse_program_run(run_dir, "--refine")
    if o.producer == "direct":
        refuse_program_run(run_dir, "--producer direct")
    producer, data, state = load_program_run(run_dir, o.which, o.data_dir, (o.split,), o.device)
    x = x_of(data, o.split, o.n, o.seed)
    pyro.set_rng_seed(o.seed)
    if o.method == "ais":
        result = ais_log_likelihood(
            producer, x, o.steps, o.chains, o.leapfrog, o.init, progress=progress
        )
    else:
        result = estimate_log_likelihood(
            None, None, x, k=o.k, producer=producer, progress=progress, **seeded
        )
    return dataclasses.replace(result, checkpoint=state["checkpoint"])


def simulated_program(run_dir: Union[str, Path], o: Any) -> Tuple[torch.Tensor, Dataset]:
    """``o.n`` points x ~ p(x) simulated from a program run's model (its observed site
    unconditioned), on the CPU, and the run's test data: ``pyrovae sample``'s figures."""
    producer, data, _ = load_program_run(run_dir, o.which, o.data_dir, ("test",), o.device)
    pyro.set_rng_seed(o.seed)
    x_like = torch.zeros(o.n, data.x_dim, device=producer.device)
    x, _ = producer.simulate(x_like)
    return x.cpu(), data


def bdmc_program(run_dir: Union[str, Path], o: Any, progress: bool) -> BDMCResult:
    """``pyrovae bdmc`` on a program run: ``o`` the bound ``BDMC`` options."""
    if o.producer == "direct":
        refuse_program_run(run_dir, "--producer direct")
    producer, data, _ = load_program_run(run_dir, o.which, None, ("valid",), o.device)
    pyro.set_rng_seed(o.seed)
    x_like = torch.zeros(o.n, data.x_dim, device=producer.device)
    return bdmc(producer, x_like, o.steps, o.chains, o.leapfrog, o.k, progress=progress)
