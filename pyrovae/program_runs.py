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
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import pyro
import torch

from .data import SPLITS, Dataset
from .evaluation import LogLikelihood, estimate_log_likelihood
from .evaluation.ais import AISResult, BDMCResult, ais_log_likelihood, bdmc
from .producers import TracedProducer, make_producer
from .program import load_program, with_labels
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
            "iw or ais), sample, gap and bdmc take it"
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
    program = load_program(train_cfg.model)
    device = resolve_device(device)
    owner = getattr(program.model, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        owner.to(device).eval()
    data = prepare_data(train_cfg, splits)
    if program.labels and data.labels is None:
        raise ValueError(f"{train_cfg.model} takes labels, and {data.name!r} has none")
    split = next((s for s in splits if len(data.split(s))), None)
    if split is None:
        raise ValueError(f"{run_dir}: the data has no points in {', '.join(splits)}")
    # A batch to find the program's parameters by tracing it.
    batch = points(data, split, labels=program.labels)[:100].to(device)
    x, *rest = program.args(batch)
    state = load_pair_state(run_dir, program.model, program.guide, x, which, *rest)
    state["checkpoint"] = find_checkpoint(run_dir, which).stem
    producer = make_producer(program, "traced", train_cfg.max_plate_nesting)
    return producer, data, state


def points(data: Dataset, split: str, n=None, seed: int = 0, labels: bool = False):
    """A split's points (``runs._points``: a seeded subset of ``n``), with their labels as a
    last column for a program that takes them (``with_labels``)."""
    from .runs import _points  # (runs dispatches here: imported when called)

    return _points(data, split, n, seed, labels)


def program_points(run_dir: Union[str, Path], o: Any) -> Tuple[TracedProducer, torch.Tensor, Dict]:
    """(the run's program as a producer, ``o.n`` seeded points of ``o.split`` as it takes
    them, the checkpoint dict): what ``evaluate`` and ``gap`` compute on (``o``: their bound
    options ``which``, ``data_dir``, ``split``, ``n``, ``seed``, ``device``)."""
    producer, data, state = load_program_run(run_dir, o.which, o.data_dir, (o.split,), o.device)
    return producer, points(data, o.split, o.n, o.seed, producer.labels), state


def evaluate_program(
    run_dir: Union[str, Path],
    o: Any,
    progress: bool,
    seeding: Callable[[torch.Tensor, str], Dict[str, Any]],
) -> Union[LogLikelihood, AISResult]:
    """``pyrovae evaluate`` on a program run: ``o`` the bound ``EVALUATE`` options;
    ``seeding(x, producer name)`` the keywords that seed the estimate's chunks, save its
    progress and share its points between processes (``runs.seeded_evaluation``). For a
    program with labels, the density its model gives x with them: log p(x | y) for a
    conditional VAE, log p(x, y) for M2 (``pyrovae.m2``: a batch of labelled points observes
    y)."""
    if o.refine:
        refuse_program_run(run_dir, "--refine")
    if o.producer == "direct":
        refuse_program_run(run_dir, "--producer direct")
    producer, x, state = program_points(run_dir, o)
    pyro.set_rng_seed(o.seed)
    seeded = seeding(x, "traced")
    if o.method == "ais":
        result = ais_log_likelihood(
            producer, x, o.steps, o.chains, o.leapfrog, o.init, progress=progress, **seeded
        )
    else:
        result = estimate_log_likelihood(
            None, None, x, k=o.k, producer=producer, progress=progress, **seeded
        )
    held = producer.global_sites(x[:1].to(producer.device or x.device)) or None
    return dataclasses.replace(result, checkpoint=state["checkpoint"], global_latents=held)


def simulated_program(run_dir: Union[str, Path], o: Any) -> Tuple[torch.Tensor, Dataset, str]:
    """``o.n`` points x ~ p(x) simulated from a program run's model (its observed site
    unconditioned), on the CPU, the run's test data and a title for them: ``pyrovae sample``'s
    figures. A program with labels is given the classes in turn."""
    producer, data, _ = load_program_run(run_dir, o.which, o.data_dir, ("test",), o.device)
    pyro.set_rng_seed(o.seed)
    x, _ = producer.simulate(_shaped_like(data, o.n, producer))
    title = f"{o.n} samples: x ~ p(x | z), z ~ p(z)"
    if producer.labels:
        title = f"{o.n} samples: x ~ p(x | z, y), z ~ p(z), y = 0, 1, ... in turn"
    return x.cpu(), data, title


def _shaped_like(data: Dataset, n: int, producer: TracedProducer) -> torch.Tensor:
    """``n`` rows shaped like the data's points (zeros) for simulating from the model; for a
    program with labels, each with a label, the classes in turn (0, 1, ..., 0, 1, ...)."""
    x = torch.zeros(n, data.x_dim, device=producer.device)
    if not producer.labels:
        return x
    classes = next(y.unique() for y in data.labels.values() if len(y))
    classes = classes[classes >= 0].to(x.device)
    return with_labels(x, classes[torch.arange(n, device=x.device) % len(classes)])


def bdmc_program(run_dir: Union[str, Path], o: Any, progress: bool) -> BDMCResult:
    """``pyrovae bdmc`` on a program run: ``o`` the bound ``BDMC`` options."""
    if o.producer == "direct":
        refuse_program_run(run_dir, "--producer direct")
    producer, data, _ = load_program_run(run_dir, o.which, None, ("valid",), o.device)
    pyro.set_rng_seed(o.seed)
    x_like = _shaped_like(data, o.n, producer)
    return bdmc(producer, x_like, o.steps, o.chains, o.leapfrog, o.k, progress=progress)
