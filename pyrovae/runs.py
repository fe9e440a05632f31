"""Working with a trained run directory: evaluate its model, draw its figures.

These are the functions behind ``pyrovae evaluate``, ``pyrovae sample``, ``pyrovae gradvar``,
``pyrovae gap`` and ``pyrovae bdmc``. Each takes ``device`` (``auto``, ``cpu``, ``cuda``,
``cuda:N``; default ``$PYROVAE_DEVICE``, else ``auto``: ``pyrovae.runtime.resolve_device``),
where the run's model is loaded and computes, whatever device trained it. Data subsets, and
the random numbers that pick them, are drawn on the CPU, so every device evaluates the same
points; results come back on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch

from . import distributed, program_runs
from .config import SEED_RULE, Rule
from .data import SPLITS, Dataset
from .evaluation import LogLikelihood, evaluate_vae
from .evaluation.ais import INITS, AISResult, BDMCResult, ais_log_likelihood, bdmc
from .evaluation.bits import data_levels, with_bits_per_dim
from .evaluation.gap import InferenceGap, inference_gap
from .evaluation.gradients import GradientStats, default_estimator_specs, gradient_variance
from .evaluation.importance import refine_guide
from .evaluation.partial import PartialStore, evaluation_key
from .evaluation.truth import with_exact_log_px
from .files import own_folder
from .model import VAE
from .options import Option, Options
from .plots import (
    save_gap,
    save_gradient_variance,
    save_image_grid,
    save_reconstructions,
    save_scatter,
    save_training_curves,
)
from .producers import make_producer
from .program import with_labels
from .runtime import Device, resolve_device
from .training import load_vae, prepare_data, read_config, read_metrics
from .training.checkpoint import check_belongs, epoch_of, find_checkpoint
from .training.rundir import RunDirError, read_record, trained_on_python_data, write_text

# A figure of samples shows at most this many; drawing more would only cost memory.
MAX_FIGURE_SAMPLES = 1000
# Options that every command on a run directory takes (its help said per command).
SEED = Option("seed", 0, "seeds what the command draws", SEED_RULE)
WHICH = Option(
    "which", "best", "best (by validation ELBO) or last", choices=("best", "last"),
    flag="--checkpoint",
)  # fmt: skip
DATA_DIR = Option("data_dir", None, "override the data directory saved in the run")
PRODUCER = Option(
    "producer", None, "the producer (default: as the run was trained)",
    choices=("auto", "direct", "traced"),
)  # fmt: skip
DEVICE = Option(
    "device", None,
    "where to compute: auto (a CUDA GPU where there is one, else the CPU), cpu, cuda (the "
    "current GPU) or cuda:N (default: $PYROVAE_DEVICE, else auto). Not part of the run: a run "
    "trained on one device evaluates, samples and resumes on any other",
    metavar="DEVICE",
)  # fmt: skip
POSITIVE = Rule("int", minimum=1)
METHODS = ("iw", "ais")
EVALUATE = Options(
    Option("k", 5000, "importance samples per data point", POSITIVE),
    Option("split", "test", "the data to evaluate", choices=SPLITS),
    Option("n", None, "evaluate a seeded random subset of this size",
           Rule("int", minimum=1, optional=True)),
    SEED.but(help="seeds the subset and the samples"),
    WHICH,
    DATA_DIR,
    PRODUCER.but(help="how the log weights are computed: direct (the VAE's parts), traced "
                 "(Pyro traces of its model and guide); the same numbers up to float rounding "
                 "(default: as the run was trained)"),
    Option("method", "iw", "iw: the importance-weighted estimate with K samples from the "
           "guide; ais: annealed importance sampling with HMC (--steps, --chains, --leapfrog, "
           "--init), slower and tighter", choices=METHODS),
    Option("steps", 1000, "ais: intermediate distributions T", POSITIVE),
    Option("chains", 16, "ais: chains per data point", POSITIVE),
    Option("leapfrog", 10, "ais: leapfrog steps per transition", POSITIVE),
    Option("init", "prior", "ais: anneal from p(z) or q(z|x)", choices=INITS),
    Option("refine", 0, "refine each point's q by STEPS Adam steps on its own ELBO first (the "
           "local guide's refinement, e.g. 100): a better proposal, so a tighter estimate of "
           "log p(x), and the ELBO of the refined q; 0: the run's guide as it is",
           Rule("int", minimum=0), metavar="STEPS"),
    Option("one_stream", False, "draw every particle from one random stream in order, as "
           "pyrovae 0.1.0 did; such an evaluation is not saved as it goes, and runs in one "
           "process. By default each chunk of points draws from a stream of its own, seeded "
           "by --seed and the chunk, so that the points can be shared between processes "
           "(torchrun) and the finished ones are saved in RUN_DIR/evaluations: the same "
           "command, run again after an interruption, continues where it stopped",
           Rule("bool")),
    DEVICE,
)  # fmt: skip
OUT_DIR = Option("out_dir", None, "output directory (default RUN_DIR/figures)", flag="--out")
SAMPLE = Options(
    Option("n", 100, "number of samples", Rule("int", minimum=1, maximum=MAX_FIGURE_SAMPLES)),
    OUT_DIR,
    SEED.but(help="seeds the images shown and the samples"),
    WHICH,
    DATA_DIR,
    DEVICE,
)
BDMC = Options(
    Option("n", 100, "points simulated from the model", POSITIVE),
    Option("steps", 1000, "AIS intermediate distributions T", POSITIVE),
    Option("chains", 16, "chains per point, each direction", POSITIVE),
    Option("leapfrog", 10, "leapfrog steps per transition", POSITIVE),
    Option("k", 5000, "importance samples for the IW estimate", POSITIVE),
    SEED.but(help="seeds the simulation and the chains"),
    WHICH.but(help="best or last"),
    PRODUCER.but(help="how log densities are computed (default: as the run was trained)"),
    DEVICE,
)
GAP = Options(
    Option("n", 1000, "points (a seeded random subset)", Rule("int", minimum=1, optional=True)),
    Option("k", 5000, "importance samples per point", POSITIVE),
    Option("steps", 1000, "Adam steps fitting q* per point", Rule("int", minimum=0)),
    Option("lr", 0.05, "their initial step size (cosine decay to 0)",
           Rule("number", positive=True)),
    Option("samples", 8, "particles per step's ELBO", POSITIVE),
    Option("ais_steps", 0, "take log p(x) from AIS with this many steps (the stronger "
           "estimate; 0: the importance-weighted estimate with q* as proposal)",
           Rule("int", minimum=0)),
    Option("ais_chains", 16, "AIS chains per point", POSITIVE),
    Option("split", "test", "the data used", choices=SPLITS),
    SEED.but(help="seeds the subset, the fit and the samples"),
    WHICH,
    DATA_DIR,
    DEVICE,
    OUT_DIR,
)  # fmt: skip
GRADVAR = Options(
    Option("estimators", None, "comma-separated estimator specs NAME or "
           "NAME:KEY=VALUE;KEY=VALUE, e.g. pathwise,stl,iwae:num_particles=10,"
           "score-function:baseline=neural (default: every estimator that applies to the run's "
           "guide)"),
    Option("draws", 100, "gradient estimates per estimator", Rule("int", minimum=2)),
    Option("batch_size", 100, "the minibatch's size", POSITIVE),
    Option("warmup", 200, "baseline adaptation steps", Rule("int", minimum=0)),
    SEED.but(help="seeds the minibatch and the estimates"),
    WHICH,
    DATA_DIR,
    OUT_DIR,
    PRODUCER.but(help="the route gradients are computed by (default: the one the run was "
                 "trained with)"),
    DEVICE,
)  # fmt: skip


def strict_json(obj: Any, indent: Optional[int] = None) -> str:
    """``obj`` as standard JSON: a NaN or infinite number (a standard error of one data point,
    say) becomes ``null``, which every JSON parser reads."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def load_run(
    run_dir: str,
    which: str = "best",
    data_dir: Optional[str] = None,
    splits: Sequence[str] = SPLITS,
    device: Device = None,
) -> Tuple[VAE, Dataset, Dict]:
    """The trained VAE of ``run_dir`` (its ``which`` checkpoint, else ``last``) on ``device``,
    the run's dataset (only ``splits`` loaded; the others are empty; on the CPU) and the
    checkpoint dict, whose ``"checkpoint"`` entry names the file used (``best`` or ``last``).

    ``data_dir`` overrides the data directory saved in the run's config.
    """
    device = resolve_device(device)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ValueError(f"run_dir must be a path, got {run_dir!r}")
    train_cfg, model_cfg = read_config(Path(run_dir))
    if data_dir is not None:
        train_cfg = dataclasses.replace(train_cfg, data_dir=str(Path(data_dir).resolve()))
    # The model first: a run of a model/guide pair of the user's own is refused before its
    # data is loaded.
    program_runs.refuse_program_run(run_dir, "this command")
    vae, state = load_vae(run_dir, which, device)
    if trained_on_python_data(read_record(Path(run_dir))):
        raise ValueError(
            f"{run_dir} was trained on a Dataset passed in Python (train(data=...)), which the "
            "run cannot load: evaluate it in Python, evaluate_vae(load_vae(run_dir)[0], data)"
        )
    path = find_checkpoint(run_dir, which)
    check_belongs(state, path, train_cfg, model_cfg)
    state["checkpoint"] = path.stem
    return vae, prepare_data(train_cfg, splits), state


def output_dir(
    run_dir: Union[str, os.PathLike], out_dir: Optional[Union[str, os.PathLike]]
) -> Path:
    """Where a command writes its figures: ``out_dir`` if given, else the run's own
    ``figures/`` (which must not be a link into another folder), made if needed and checked
    to take files, so that a command fails before its work, not after (an ``OSError`` naming
    the path)."""
    if out_dir is None:
        path = own_folder(Path(run_dir) / "figures", RunDirError)
    else:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
    probe = path / f".pyrovae-write-test-{os.getpid()}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)))
    probe.unlink()
    return path


def evaluate_run(
    run_dir: str, progress: bool = True, **options: Any
) -> Union[LogLikelihood, AISResult]:
    """log p(x) of a run's model on one split: importance-weighted (``method="iw"``) or by
    annealed importance sampling (``"ais"``, ``pyrovae.evaluation.ais``); for 8-bit data
    (``Dataset.levels``, or a discretized-logistic likelihood) also in bits per dimension
    (``bits_per_dim``, ``pyrovae.evaluation.bits``).

    The keyword ``options`` are ``EVALUATE``'s, which declares each one's default and rule.

    Args:
        run_dir: a directory made by ``train``.
        progress: show progress bars.
        k: importance samples per data point.
        split: ``train``, ``valid`` or ``test``; only that split's data is read.
        n: evaluate a seeded random subset of this many points (the MNIST test file is sorted
            by digit, so a prefix would be biased); ``None`` for the whole split.
        seed: seeds the subset and the importance samples.
        which: ``best`` (by validation ELBO) or ``last`` checkpoint; the result's
            ``checkpoint`` says which was evaluated (``last`` where there is no ``best``).
        producer: how the particles are computed (``pyrovae.producers``); default: as the run
            was trained.
        refine: refine each point's guide by this many Adam steps on its ELBO first
            (``pyrovae.parts.refinement.refine_guide``): a better proposal, so a tighter
            estimate, and the refined q's ELBO; 0 (default) evaluates the run's guide as it is.
        method, steps, chains, leapfrog, init: ``ais`` anneals ``chains`` HMC chains per point
            (``leapfrog`` steps a transition) through ``steps`` distributions from the prior
            or the guide (``init``); ``k`` is then unused.
        device: where to compute (see the module docstring).
        one_stream: draw every particle from torch's global stream in order (pyrovae
            0.1.0's numbers), in one process, with nothing saved. By default (False) each chunk
            of points draws from a stream of its own, seeded by ``seed`` and the chunk
            (``estimate_log_likelihood(seed=...)``, ``ais_log_likelihood(seed=...)``), so that
            each point's estimate does not depend on the points before it: under torchrun the
            points are split between the processes (``pyrovae.distributed``, the
            importance-weighted estimate only), and the finished points are saved in
            ``RUN_DIR/evaluations/METHOD-KEY/`` (``pyrovae.evaluation.partial``, KEY a hash of
            the settings, the points and the checkpoint) as the evaluation goes: run again
            after an interruption, the same evaluation continues where it stopped, and ends
            with the result of one uninterrupted run. The folder is removed once the result
            is in.
    """
    o = EVALUATE.bind(options, "evaluate_run")
    world, process_device = distributed.setup(o.device)
    device = process_device if world.distributed else resolve_device(o.device)
    if o.method == "ais" and o.refine and o.init == "prior":
        raise ValueError(
            "--refine improves the guide, which --method ais --init prior does not use (its "
            "chains start at the prior): add --init guide, or drop --refine"
        )
    if o.method == "ais" and world.distributed:
        raise distributed.everywhere(
            ValueError(
                "--method ais runs in one process: start it without torchrun (the "
                "importance-weighted estimate splits its points across processes)"
            )
        )
    if o.one_stream and world.distributed:
        raise distributed.everywhere(
            ValueError(
                "--one-stream draws every particle in one process: start it without torchrun, "
                "or drop --one-stream to share the points between the processes"
            )
        )
    if program_runs.is_program_run(run_dir):
        with world.together():
            o = SimpleNamespace(**{**vars(o), "device": device})
            return program_runs.evaluate_program(
                run_dir,
                o,
                progress and world.main,
                lambda x, producer: seeded_evaluation(run_dir, o, x, producer, world),
            )
    # Every process reads the run and the data (an error anywhere stops all of them).
    with world.together():
        vae, data, state = load_run(run_dir, o.which, o.data_dir, (o.split,), device=device)
        producer = o.producer or read_config(Path(run_dir))[0].producer
        x = _points(data, o.split, o.n, o.seed)
        if o.refine:
            refine_guide(vae, o.refine)
    pyro.set_rng_seed(o.seed)
    said = {"checkpoint": state["checkpoint"], "refine_steps": o.refine or None}
    seeded = seeded_evaluation(run_dir, o, x, producer, world)
    if o.method == "ais":
        made = make_producer(vae, producer)
        vae.likelihood.check_data(x)
        levels = data_levels(vae.likelihood, x, data.levels)
        result = ais_log_likelihood(
            made, x, o.steps, o.chains, o.leapfrog, o.init, progress=progress, **seeded
        )
        result = with_exact_log_px(result, vae, x)
        if levels is not None:
            result = with_bits_per_dim(result, vae.x_dim, vae.likelihood.discrete, levels)
        return dataclasses.replace(result, **said)
    progress = progress and world.main
    result = evaluate_vae(
        vae, x, k=o.k, progress=progress, producer=producer, levels=data.levels, **seeded
    )
    return dataclasses.replace(result, **said)


def seeded_evaluation(
    run_dir: Union[str, Path], o: Any, x: torch.Tensor, producer: str, world: distributed.World
) -> Dict[str, Any]:
    """The keywords that seed an evaluation's chunks and save its progress (``seed``,
    ``store``, and ``world`` for the importance-weighted estimate) for ``evaluate``'s bound
    options ``o`` on points ``x`` (N, ...) with the named ``producer``; none with
    ``o.one_stream``. The store's folder is named by a hash of what decides the result: the
    method's settings, the points, and the checkpoint file's bytes."""
    if o.one_stream:
        return {}
    names = ("k",) if o.method == "iw" else ("steps", "chains", "leapfrog", "init")
    settings = {name: getattr(o, name) for name in (*names, "seed", "refine", "which")}
    settings.update(method=o.method, producer=producer)
    checkpoint = find_checkpoint(run_dir, o.which).read_bytes()
    key = evaluation_key(settings, x, torch.frombuffer(bytearray(checkpoint), dtype=torch.uint8))
    store = PartialStore(Path(run_dir) / "evaluations" / f"{o.method}-{key}")
    return {"seed": o.seed, "store": store, **({"world": world} if o.method == "iw" else {})}


def _points(
    data: Dataset, split: str, n: Optional[int], seed: int, labels: bool = False
) -> torch.Tensor:
    """A split's points, or a seeded random subset of ``n`` of them (the MNIST test file is
    sorted by digit, so a prefix would be biased); training images binarized (seeded) when the
    dataset binarizes dynamically. ``labels``: each point's label as a last column, for a
    program that takes them (``pyrovae.program.with_labels``)."""
    x, y = data.split(split), data.split_labels(split) if labels else None
    if n is not None and n < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx] if y is not None else None
    if data.binarize == "dynamic" and split == "train":
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return with_labels(x, y)


def gap_run(
    run_dir: str, *, progress: bool = True, **options: Any
) -> Tuple[InferenceGap, Dict[str, Path]]:
    """The inference gap of a run's model on ``n`` seeded random points of ``split`` (all of
    them when ``n`` is None), split into the approximation and amortization gaps
    (``pyrovae.evaluation.gap``; ``ais_steps`` > 0: log p(x) by AIS). Writes ``gap.json`` and
    ``gap.png`` to ``out_dir`` (default ``run_dir/figures``); returns the result and the
    paths. ``options``: ``GAP`` declares them; ``device``: where to compute (see the module
    docstring)."""
    o = GAP.bind(options, "gap_run")
    device = resolve_device(o.device)
    if program_runs.is_program_run(run_dir):  # q* in the family of its guide's sites
        o = SimpleNamespace(**{**vars(o), "device": device})
        subject, x, state = program_runs.program_points(run_dir, o)
    else:
        subject, data, state = load_run(run_dir, o.which, o.data_dir, (o.split,), device=device)
        x = _points(data, o.split, o.n, o.seed)
    out = output_dir(run_dir, o.out_dir)
    pyro.set_rng_seed(o.seed)
    fit = (o.k, o.steps, o.lr, o.samples, o.seed, progress, o.ais_steps, o.ais_chains)
    result = inference_gap(subject, x, *fit)
    result = dataclasses.replace(result, checkpoint=state["checkpoint"])
    info = {
        "run_dir": str(run_dir),
        "split": o.split,
        "epoch": epoch_of(state),
        "seed": o.seed,
        **result.to_dict(),
    }
    title = (
        f"{Path(run_dir).name}, epoch {epoch_of(state)}: {result.n} {o.split} points, "
        f"K={o.k}, q* by {o.steps} Adam steps per point"
    )
    return result, _write_json_and_plot(out, "gap", info, lambda p: save_gap(result, p, title))


def _write_json_and_plot(
    out: Path, name: str, info: Dict[str, Any], plot: Callable[[Path], Path]
) -> Dict[str, Path]:
    """A command's results in ``out``: ``name.json`` (``info``, strict JSON) and
    ``name.png`` (drawn by ``plot(path)``); returns {"json": path, "plot": path}."""
    paths = {"json": out / f"{name}.json"}
    write_text(paths["json"], strict_json(info, indent=1))
    paths["plot"] = plot(out / f"{name}.png")
    return paths


def sample_run(run_dir: str, **options: Any) -> Dict[str, Path]:
    """Draw a run's figures as PNG files: ``n`` (at most ``MAX_FIGURE_SAMPLES``) model
    samples, reconstructions of test points next to the inputs (image data) or a scatter of
    data, samples and reconstructions (2-D data), and the training curves. Returns {figure
    name: path}; files go to ``out_dir`` (default ``run_dir/figures``). ``device``: where
    the samples are drawn (see the module docstring); ``options``: ``SAMPLE`` declares them."""
    o = SAMPLE.bind(options, "sample_run")
    n, seed = o.n, o.seed
    if program_runs.is_program_run(run_dir):
        return _sample_program(run_dir, o)
    device = resolve_device(o.device)
    vae, data, _ = load_run(run_dir, o.which, o.data_dir, splits=("test",), device=device)
    out = output_dir(run_dir, o.out_dir)
    pyro.set_rng_seed(seed)
    idx = torch.randperm(data.test.shape[0], generator=torch.Generator().manual_seed(seed))
    x = data.test[idx[:n]]
    samples, recons = vae.sample(n).cpu(), vae.reconstruct(x).cpu()
    paths: Dict[str, Path] = {}
    if data.image_shape is not None:
        paths["samples"] = save_image_grid(
            samples, data.image_shape, out / "samples.png", title=f"{n} samples: E[x | z], z ~ p(z)"
        )
        n_rec = min(50, x.shape[0])
        paths["reconstructions"] = save_reconstructions(
            x[:n_rec], recons[:n_rec], data.image_shape, out / "reconstructions.png"
        )
    elif data.x_dim >= 2:
        many = vae.sample(max(n, 1000), mean=False).cpu()
        paths["samples"] = save_scatter(data.test, many, out / "samples.png", recons)
    metrics = read_metrics(Path(run_dir))
    if metrics:
        paths["training_curves"] = save_training_curves(metrics, out / "training_curves.png")
    return paths


def _sample_program(run_dir: str, o: Any) -> Dict[str, Path]:
    """``sample_run`` for a run of a program of the user's own: points simulated from its
    model (x ~ p(x | z), z ~ p(z): a program has no decoder mean to show) and the curves."""
    x, data, title = program_runs.simulated_program(run_dir, o)
    out = output_dir(run_dir, o.out_dir)
    paths: Dict[str, Path] = {}
    if data.image_shape is not None:
        paths["samples"] = save_image_grid(x, data.image_shape, out / "samples.png", title=title)
    elif data.x_dim >= 2:
        paths["samples"] = save_scatter(data.test, x, out / "samples.png")
    metrics = read_metrics(Path(run_dir))
    if metrics:
        paths["training_curves"] = save_training_curves(metrics, out / "training_curves.png")
    return paths


def gradvar_run(
    run_dir: str, *, progress: bool = True, **options: Any
) -> Tuple[List[GradientStats], Dict[str, Path]]:
    """Gradient variance of each estimator at a run's checkpoint, on one seeded minibatch of
    its training data (see ``pyrovae.evaluation.gradients``). Writes ``gradvar.json`` and
    ``gradvar.png`` to ``out_dir`` (default ``run_dir/figures``); returns the stats and the
    paths. ``device``: where the gradients are computed (see the module docstring);
    ``options``: ``GRADVAR`` declares them (``estimators`` a list of specs here)."""
    o = GRADVAR.bind(options, "gradvar_run")
    program_runs.refuse_program_run(run_dir, "pyrovae gradvar")
    estimators, draws, warmup, seed = o.estimators, o.draws, o.warmup, o.seed
    device = resolve_device(o.device)
    if isinstance(estimators, str):
        raise ValueError(f"estimators must be a list of specs, got the string {estimators!r}")
    if estimators is not None and not all(isinstance(e, str) for e in estimators):
        raise ValueError("estimators must be a list of strings like 'iwae:num_particles=5'")
    vae, data, state = load_run(run_dir, o.which, o.data_dir, splits=("train",), device=device)
    out = output_dir(run_dir, o.out_dir)
    producer = o.producer or read_config(Path(run_dir))[0].producer
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(data.train.shape[0], generator=g)[: o.batch_size]
    x = data.train[idx]
    if data.binarize == "dynamic":
        x = torch.bernoulli(x, generator=g)
    specs = list(estimators) if estimators else default_estimator_specs(vae, x, producer)
    pyro.set_rng_seed(seed)
    warm = data.train
    if data.binarize == "dynamic":
        warm = torch.bernoulli(warm, generator=g)
    stats = gradient_variance(
        vae,
        x,
        specs,
        draws=draws,
        warmup=warmup,
        progress=progress,
        warmup_data=warm,
        producer=producer,
    )
    info = {
        "run_dir": str(run_dir),
        "checkpoint": state["checkpoint"],
        "epoch": epoch_of(state),
        "batch_size": int(x.shape[0]),
        "draws": draws,
        "warmup": warmup,
        "seed": seed,
        "producer": stats[0].producer if stats else None,
        "estimators": [s.to_dict() for s in stats],
    }
    title = (
        f"{Path(run_dir).name}, epoch {epoch_of(state)}: {draws} gradient estimates per "
        f"estimator on one minibatch of {x.shape[0]}"
    )
    return stats, _write_json_and_plot(
        out, "gradvar", info, lambda p: save_gradient_variance(stats, p, title)
    )


def bdmc_run(run_dir: str, *, progress: bool = True, **options: Any) -> BDMCResult:
    """The BDMC sandwich of a run's model on ``n`` points simulated from it
    (``pyrovae.evaluation.ais.bdmc``), seeded, on ``device`` (see the module docstring); no
    data is read; ``options``: ``BDMC`` declares them."""
    o = BDMC.bind(options, "bdmc_run")
    device = resolve_device(o.device)
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ValueError(f"run_dir must be a path, got {run_dir!r}")
    if program_runs.is_program_run(run_dir):
        return program_runs.bdmc_program(
            run_dir, SimpleNamespace(**{**vars(o), "device": device}), progress
        )
    vae, _ = load_vae(run_dir, o.which, device)
    producer = o.producer or read_config(Path(run_dir))[0].producer
    dtype = next(vae.parameters()).dtype
    pyro.set_rng_seed(o.seed)
    x_like = torch.zeros(o.n, vae.x_dim, dtype=dtype, device=device)
    made = make_producer(vae, producer)
    result = bdmc(made, x_like, o.steps, o.chains, o.leapfrog, o.k, progress=progress)
    return with_exact_log_px(result, vae, result.points)
