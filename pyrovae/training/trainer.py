"""Training: one trainer for every estimator, producer and model/guide pair.

A step takes a minibatch's particles from the producer (``pyrovae.producers``: direct for the
library's VAE, traced for any Pyro model/guide pair), applies the estimator (particles in,
loss and surrogate out), differentiates the surrogate and takes one fused ``torch.optim.Adam``
step over the model's and the estimator's parameters. The run records which producer it used.

A run directory holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one record
per epoch), ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (by validation ELBO). A checkpoint
holds the parameters, the optimizer state, the estimator's state (baselines) and the
random-number states, so ``resume`` continues exactly where the run left off: a resumed run ends
with the same parameters as an uninterrupted one.

The device (``train(device=...)``, ``--device``) is where the run computes, not part of the run:
it is not in ``config.json``, checkpoints hold CPU tensors, and a run resumes on any device. The
VAE is built (and initialized) on the CPU and moved there; the training and validation splits go
there whole where they fit (``pyrovae.runtime.place``), else batch by batch; the shuffling
generator stays on the CPU, so the batches are the same on every device.

Under torchrun the same loop runs in every process (``pyrovae.distributed``): each process
takes its part of every global batch, ``Trainer.step`` sums the gradients across processes
before the Adam step, validation splits its points, and process 0 alone claims and writes the
run directory, its checkpoints holding every process's random streams and estimator state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..config import OptionError
from ..data import SPLITS, DataError, Dataset, load_dataset
from ..estimators import BOUND_OBJECTIVE, ESTIMATORS, Estimator, make_estimator
from ..evaluation import estimate_log_likelihood
from ..model import VAE, VAEConfig, build_vae
from ..particles import traced_particles
from ..producers import (
    Producer,
    check_applies,
    classification_error,
    estimate_and_backward,
    make_producer,
)
from ..program import Program, as_program, load_program, with_labels
from ..runtime import (
    Device,
    check_step_memory,
    fork_rng,
    fused_adam,
    module_device,
    place,
    resolve_device,
    tune_allocator,
)
from ..threads import share_cores
from .checkpoint import (
    CheckpointError,
    Resumable,
    check_belongs,
    checkpoint_path,
    epoch_of,
    load_checkpoint,
    load_pair_checkpoint,
    position,
    save_checkpoint,
    saved_metrics,
    saved_world_size,
    trained_pair,
)
from .config import TrainConfig, given_fields, read_config, resumed_config
from .rundir import (
    RunLock,
    check_new_run_dir,
    check_resumable,
    default_run_dir,
    read_metrics,
    read_record,
    remove_leftovers,
    run_record,
    trained_on_python_data,
    write_json,
    write_metrics,
)
from .schedule import kl_weight, learning_rate
from .tensorboard import TensorBoardLog, require_tensorboard, vae_sampler


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite, or the validation ELBO blew up (``diverged_floor``);
    the last good checkpoint is kept."""


# A validation ELBO per point this many times (plus a nat) further below zero than the worst
# the run had before (the objective of its first batch before any update, or the validation
# ELBO of an earlier epoch) is a blow-up, not a bad epoch: no training makes its model a
# thousand times worse than the untrained one, while a learning rate too high for the model
# finds such values (-5e26) well before NaN or inf.
DIVERGED_FACTOR = 1000.0


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def diverged_floor(worst: float) -> float:
    """The validation ELBO per point below which a run whose worst ELBO so far was ``worst``
    has diverged (see ``DIVERGED_FACTOR``); -inf where there is none (``worst`` inf)."""
    if not math.isfinite(worst):
        return -math.inf
    return worst - DIVERGED_FACTOR * (abs(worst) + 1.0)


@dataclass
class TrainResult:
    """What a training run produced.

    ``vae`` is the trained VAE (``None`` when a model/guide pair of the user's own was
    trained: ``model`` and ``guide`` are then that pair, trained in place), on ``device``, where
    the run computed. ``producer`` names the route particles took (``direct`` or ``traced``).
    ``processes``: how many processes trained it (``pyrovae.distributed``; each returns the
    same result).
    """

    run_dir: Path
    vae: Optional[VAE]
    metrics: List[Dict[str, Any]]
    best_valid_elbo: float
    producer: str
    model: Callable
    guide: Callable
    device: torch.device = torch.device("cpu")
    processes: int = 1

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of the training part of an epoch (validation excluded)."""
        times = [m["train_seconds"] for m in self.metrics]
        return sum(times) / len(times) if times else float("nan")


class Trainer:
    """Steps of one estimator on one producer, with one fused Adam over ``params`` (the
    model's) and the estimator's own parameters.

    In a run of more than one process (``world``, ``pyrovae.distributed``), each process's
    step computes the gradient of its part of the global batch, the gradients are summed
    across processes (``distributed.GradientSync``), and every process takes the same Adam
    step. Every parameter must exist by then: a lazily sized one (a neural baseline's, made
    by ``estimator.prepare``) is refused.

    Args:
        producer: gives a batch's particles.
        estimator: its state must already be shaped (``estimator.prepare``).
        params: the model's trainable tensors.
        lr: Adam's learning rate.
        world: the processes the run is split across (default: this one alone).
    """

    def __init__(
        self,
        producer: Producer,
        estimator: Estimator,
        params: Sequence[torch.Tensor],
        lr: float,
        world: Optional[distributed.World] = None,
    ) -> None:
        self.producer, self.estimator = producer, estimator
        self.params = list(params) + list(estimator.parameters())
        self.optim = fused_adam(self.params, lr)
        self.sync = None
        if world is not None and world.distributed:
            if any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.params):
                raise ValueError(
                    "a parameter is still lazily sized: shape the estimator's state first "
                    "(estimator.prepare(x)), so that every process sums the same gradients"
                )
            self.sync = distributed.GradientSync(self.params, world)

    def step(
        self,
        x: torch.Tensor,
        num_data: int,
        kl_weight: float = 1.0,
        batch_size: Optional[int] = None,
    ) -> float:
        """One Adam step on batch ``x`` (B, ...); returns the loss (minus the scaled
        objective estimate). ``kl_weight``: the KL warm-up weight β of this step.
        ``batch_size``: the global batch ``x`` is this process's part of, in a run of more
        than one process (``x`` may then be empty); the loss returned is the global batch's."""
        self.optim.zero_grad(set_to_none=True)

        def backward() -> float:
            return estimate_and_backward(
                self.producer,
                self.estimator,
                x,
                num_data,
                kl_weight=kl_weight,
                batch_size=batch_size,
            )

        if self.sync is None:
            loss = backward()
        else:
            loss, error = 0.0, None
            try:
                if x.shape[0]:
                    loss = backward()
            except FloatingPointError as e:  # a NaN inside a distribution: stop together
                error = e
            loss = self.sync(loss, error)
        self.optim.step()
        return loss

    def set_lr(self, lr: float) -> None:
        """Change Adam's learning rate (a resumed run may)."""
        for group in self.optim.param_groups:
            group["lr"] = lr

    def state_dict(self) -> Dict[str, Any]:
        """Adam's and the estimator's state, as a checkpoint holds it."""
        return {"optim": self.optim.state_dict(), "estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave."""
        self.estimator.load_state_dict(state["estimator"])
        self.optim.load_state_dict(state["optim"])


class TrainedState:
    """The trainable tensors and saved state of what is trained.

    For a ``VAE`` (or any ``nn.Module``): its parameters and ``state_dict``. For a model/guide
    pair of the user's own: the parameters found by tracing it once on a batch (every
    ``pyro.param`` site: modules registered with ``pyro.module``, ``PyroModule`` attributes and
    bare ``pyro.param`` calls), by their names in Pyro's param store, plus the buffers of the
    ``nn.Module`` whose method ``model`` is, if it is one.
    """

    def __init__(self, module: Optional[nn.Module] = None, params=None, buffers=None) -> None:
        self.module = module
        self.named_params: Dict[str, torch.Tensor] = dict(params or {})
        self.buffers: Dict[str, torch.Tensor] = dict(buffers or {})

    @classmethod
    def of_pair(cls, model: Callable, guide: Callable, x: torch.Tensor, *rest: torch.Tensor):
        """The pair's parameters, found by tracing ``model(x, *rest)`` and its guide once."""
        for name, fn in (("model", model), ("guide", guide)):
            if not callable(fn):
                raise OptionError(f"{name} must be a Pyro program (a callable), got {fn!r}")
        if x.shape[0] == 0:
            raise OptionError("x must hold at least one data point to trace the pair on")
        with fork_rng(x.device), poutine.trace(param_only=True) as capture:
            args = (x, *rest)
            traced_particles(model, guide, args, reparameterized=False, record_params=True)
        params = {}
        # By name: the optimizer's state is saved by position, which must not depend on the
        # order in which a rebuilt pair happens to register its parameters.
        for name, site in sorted(capture.trace.nodes.items()):
            value = site["value"]
            value = value.unconstrained() if hasattr(value, "unconstrained") else value
            if value.requires_grad:
                params[name] = value
        if not params:
            raise ValueError(
                "the model and guide have no parameters to train: register their modules with "
                "pyro.module, use PyroModule, or pyro.param"
            )
        owner = getattr(model, "__self__", None)
        buffers = dict(owner.named_buffers()) if isinstance(owner, nn.Module) else {}
        return cls(params=params, buffers=buffers)

    @property
    def params(self) -> List[torch.Tensor]:
        """The trained parameters, those that require a gradient."""
        if self.module is not None:
            return [p for p in self.module.parameters() if p.requires_grad]
        return list(self.named_params.values())

    def state_dict(self) -> Dict[str, Any]:
        """The parameters by name: the module's state dict, or the pair's named parameters."""
        if self.module is not None:
            return self.module.state_dict()
        return {
            "params": {k: v.detach().clone() for k, v in self.named_params.items()},
            "buffers": {k: v.detach().clone() for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Load what :meth:`state_dict` gave into the module or the pair's parameters."""
        if self.module is not None:
            self.module.load_state_dict(state)
            return
        for what, mine in (("parameters", self.named_params), ("buffers", self.buffers)):
            saved = state[what if what == "buffers" else "params"]
            if set(saved) != set(mine):
                raise ValueError(
                    f"the model/guide pair's {what} {sorted(mine)} are not the saved ones "
                    f"{sorted(saved)}: resume with the pair the run was trained with"
                )
            with torch.no_grad():
                for name, value in saved.items():
                    if value.is_floating_point() and not value.isfinite().all():
                        raise ValueError(f"the saved {name} holds non-finite values: damaged")
                    if mine[name].shape != value.shape:
                        raise ValueError(
                            f"{name} has shape {tuple(mine[name].shape)}, but the saved value "
                            f"{tuple(value.shape)}"
                        )
                    mine[name].copy_(value)


def prepare_data(cfg: TrainConfig, splits: Sequence[str] = SPLITS) -> Dataset:
    """Load the configured dataset (``splits``; the others may be empty) and take the
    configured subsets."""
    # A subset's rows are drawn from one generator split after split, so the rows of a split
    # depend on the sizes of the subsetted splits before it: those are loaded too.
    order = [("train", cfg.n_train), ("valid", cfg.n_eval), ("test", cfg.n_eval)]
    last = max(i for i, (name, _) in enumerate(order) if name in splits)
    needed = [name for i, (name, n) in enumerate(order) if name in splits or (i < last and n)]
    data = load_dataset(cfg.dataset, cfg.data_dir, splits=needed, **cfg.dataset_options)
    if cfg.n_train is not None or cfg.n_eval is not None:
        data = data.subset(n_train=cfg.n_train, n_eval=cfg.n_eval, seed=cfg.seed)
    return data


def _check_data(vae: VAE, data: Dataset) -> None:
    vae.likelihood.check_data(data.valid, f"the {data.name} validation split")
    if data.binarize != "dynamic":
        vae.likelihood.check_data(data.train, f"the {data.name} training split")


def _fitted_config(config: VAEConfig, data: Dataset, resumed: bool) -> VAEConfig:
    """``config`` with the data's ``x_dim``, and for a new run its image shape (C, H, W) when
    the data has one (a resumed run keeps its saved config: its checkpoints must keep
    matching config.json). An image shape given that differs from the data's is an
    ``OptionError``."""
    shape = config.image_shape
    found = data.channels_shape
    if not resumed and found is not None:
        if shape is not None and shape != found:
            raise OptionError(
                f"the model's image_shape {list(shape)} is not the data's {list(found)}: leave "
                "image_shape out, it is taken from the data"
            )
        shape = found
    return dataclasses.replace(config, x_dim=data.x_dim, image_shape=shape)


def _describe(fn: Callable) -> str:
    owner = getattr(fn, "__self__", None)
    where = type(owner) if owner is not None else fn
    return f"{where.__module__}.{getattr(where, '__qualname__', repr(where))}"


def _batch(data: Dataset, train: torch.Tensor, rows, device: torch.device) -> torch.Tensor:
    """The training batch of ``rows`` (a slice or an index tensor on ``train``'s device) on
    ``device``, binarized there when the data binarize dynamically."""
    x = train[rows].to(device)  # a no-op where the split was placed whole
    if data.binarize != "dynamic":
        return x
    d = data.x_dim  # the columns after it are a point's labels (``with_labels``): kept
    return (
        torch.bernoulli(x)
        if x.shape[1] == d
        else torch.cat([torch.bernoulli(x[:, :d]), x[:, d:]], 1)
    )


def _warn_collapse_prone(config: VAEConfig, estimator: str) -> None:
    """Warn, for a new run, of the one combination measured to collapse from the start: a
    VampPrior with tanh nets trained on a single-sample ELBO. On binarized MNIST the encoder's
    tanh units saturate within the first epoch into one constant, narrow q(z | x) that the
    VampPrior's components (made by the same encoder) match exactly, and the model stays at
    the ELBO of a decoder that ignores z (about -207 nats): for all 30 epochs with a 10-epoch
    KL warm-up, 7 with a 50-epoch one, 2 with β near 0 throughout. With ELU nets it trains
    (-113 after 4 epochs); with tanh nets and the K = 5 bound under a 50-epoch warm-up it
    escaped after 4 epochs (the VampPrior recipe, docs/results.md). With two latent layers the
    VampPrior on z2 collapses the top layer with tanh nets whatever the estimator (0 of 50
    units of z2 active after 150 epochs of the K = 5 bound); with ELU nets 49 are active
    after 3 epochs. ``experiments/priors_guides.py`` says more."""
    if config.prior != "vampprior" or config.activation != "tanh":
        return
    if config.latent_layers == 2:
        warnings.warn(
            "a VampPrior on z2 with tanh nets collapses the top layer (no unit of z2 active "
            "after 150 epochs of the K = 5 bound or 450 of the ELBO, measured): --activation "
            "elu trains it",
            stacklevel=3,
        )
    elif ESTIMATORS.get(estimator).objective != BOUND_OBJECTIVE:
        # The K-sample bounds (each estimator class declares its objective) were measured to
        # train it (the VampPrior recipe in docs/results.md), where the single-sample ELBOs
        # collapse.
        warnings.warn(
            f"a VampPrior with tanh nets trained with {estimator} tends to collapse at the "
            "start (q(z | x) the same for every x; validation ELBO stuck where z is ignored); "
            "--activation elu trains it, as does --estimator iwae with --warmup 50",
            stacklevel=3,
        )


def _pair_device(device: Device, model: Callable) -> torch.device:
    """Where a model/guide pair of the user's own trains: ``device`` when given, and then the
    ``nn.Module`` whose method ``model`` is, if it is one, is moved there (trained in place);
    without ``device``, that module's own device, else as ``resolve_device`` says. The
    parameters of a pair that no module holds are the user's to place."""
    owner = getattr(model, "__self__", None)
    if device is None and isinstance(owner, nn.Module):
        return module_device(owner)
    device = resolve_device(device)
    if isinstance(owner, nn.Module):
        owner.to(device)
    return device


def train(
    train_config: Optional[TrainConfig] = None,
    model: Union[VAEConfig, Dict[str, Any], Tuple[Callable, Callable], None] = None,
    run_dir: Optional[str] = None,
    resume: Union[bool, Dict[str, Any]] = False,
    progress: bool = True,
    data: Optional[Dataset] = None,
    *,
    device: Device = None,
    tensorboard: bool = False,
) -> TrainResult:
    """Train a VAE, or a Pyro model/guide pair of the user's own, checkpointing every epoch.

    Args:
        train_config: data, optimisation, estimator and producer settings (default
            ``TrainConfig()``).
        model: what to train. A ``VAEConfig`` (or a dict of its fields): the library's VAE,
            its ``x_dim`` taken from the data, and so is ``image_shape`` (as (C, H, W)) for a
            new run on image data; default ``VAEConfig()``. Or a Pyro program of your own, a
            ``(model, guide)`` pair: called as ``model(x)`` and ``guide(x)`` with a minibatch
            x (B, ...), every sample site inside one data plate, the leftmost of the
            program's plates (the trainer scales by N / B). Trained through the traced
            producer, with any estimator that applies to it. Pyro's param store is cleared
            first, as for the VAE.
        run_dir: where to write config, metrics and checkpoints (default
            ``runs/<dataset>-<estimator>-<time>``, a new name). A new run needs a directory
            that does not exist or is empty; one process at a time trains in a directory.
        resume: True: continue the run in ``run_dir`` from its last checkpoint, under its
            saved config with the fields of ``train_config`` and of a ``VAEConfig`` that differ
            from their defaults applied; a dict: exactly these changes applied (the command
            line passes the flags it was given, ``{}`` for none): ``epochs`` (the new
            total), ``lr``, ``producer`` (not ``auto``: the run continues on that route) and
            ``data_dir`` may change, and the change is recorded in ``config.json``; asking to
            change anything else is an ``OptionError``. A pair of the user's own must be passed
            again, built as before.
        progress: show a progress bar and say which producer runs.
        data: an already loaded dataset (otherwise loaded from ``train_config``).
        device: where to compute, ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
            (``pyrovae.runtime.resolve_device``; default ``$PYROVAE_DEVICE``, else ``auto``).
            A runtime choice, not part of the run: it is not saved in ``config.json``, the
            checkpoints hold CPU tensors, and a run resumes on any device. A resumed run is
            bit-for-bit an uninterrupted one on the device it was trained on (the GPU's random
            stream is saved and restored with the CPU's); on another device it continues from
            the same state, but draws other random numbers. A pair of your own trains where
            its module is (see ``_pair_device``).
        tensorboard: also write each epoch's record (and, for the VAE on images, samples) to
            ``run_dir/tensorboard`` (``pyrovae.training.tensorboard``; needs the tensorboard
            package). A runtime choice, like ``device``: not saved in the run.

    Under torchrun (``pyrovae.distributed``: more than one process, each calling ``train``
    with the same arguments), the run is split across the processes: ``batch_size`` is the
    global batch, each process computes its part of it with its own random stream, the
    gradients are summed before every step, process 0 alone reads and writes ``run_dir``, and
    a run resumes only with as many processes as it was trained with. Each process returns
    the same result.

    Returns:
        A ``TrainResult`` with the trained model (the last epoch's parameters) and its metrics.

    Raises:
        TrainingDiverged: the loss became NaN/inf; the checkpoints of earlier epochs are kept.
        NotApplicable: the estimator does not apply to the model (a reparameterized estimator
            on discrete latents, say); nothing is written.
        OptionError, DataError, RunDirError, FileExistsError: a bad value, bad data, or a run
            directory that is taken; nothing is written.
    """
    if tensorboard:
        require_tensorboard()  # refused before anything is written
    model_config, program = _what_to_train(model)
    world, device = _join(device, program)
    plan = _new_plan(run_dir, train_config, model_config)
    plan = _read_run_dir(world, plan, resume, program, data)
    program = _program(plan, program)
    python_data = data is not None
    with world.together():
        cfg = _resolved_data_dir(plan.train_config)
        data, fingerprint = _checked_data(cfg, data, plan)
        session = _build_session(cfg, data, device, world, plan, program)
    if world.distributed:
        _start_together(world, session, fingerprint, plan, cfg)
    tune_allocator(session.device)  # batches of tensors above glibc's mmap threshold
    # The shuffle on the CPU whatever the device: the same batches everywhere, portably.
    shuffle = torch.Generator().manual_seed(cfg.seed)
    resumable = Resumable(session.trained, session.trainer, shuffle, session.device)
    lock = log = None
    try:
        plan.run_path, lock = _claim(world, plan.run_path, cfg, plan.state is not None)
        start, metrics, history = _resume_state(world, plan, resumable, session.vae)
        record = run_record(_identity(cfg, session), python_data, fingerprint, world.size)
        with world.together():
            if world.main:
                _write_run_files(plan.run_path, metrics, {**record, **_resumed(history)})
        progress = progress and world.main
        if progress:
            _announce(session, plan.changed, world)
        log = _tensorboard(session, data, plan.run_path) if tensorboard and world.main else None
        commit = _RunCommit(plan.run_path, _identity(cfg, session), resumable, world, log)
        splits = (session.train_split, session.valid_split)
        loop = _EpochLoop(cfg, data, *splits, resumable, commit, world)
        best = loop.run(*start, metrics, session.steps_per_epoch, progress)
    finally:
        if lock is not None:
            lock.release()
        if log is not None:
            log.close()
    if session.vae is not None:
        session.vae.eval()
    return TrainResult(
        plan.run_path, session.vae, metrics, best, session.trainer.producer.name,
        session.model, session.guide, session.device, world.size,
    )  # fmt: skip


def _tensorboard(session: "_Session", data: Dataset, run_path: Path) -> TensorBoardLog:
    """The TensorBoard log of a run: samples each epoch for the library's VAE on images."""
    sampler = None
    if session.vae is not None and data.image_shape is not None:
        sampler = vae_sampler(session.vae)
    return TensorBoardLog(run_path / "tensorboard", sampler, data.image_shape)


def _what_to_train(model) -> Tuple[Any, Optional[Program]]:
    """(the VAE's config or None, the user's ``Program`` or None) from ``train``'s ``model``
    argument, checked."""
    if model is None or isinstance(model, (VAEConfig, dict)):
        return model, None
    if isinstance(model, Program) or (isinstance(model, tuple) and len(model) == 2):
        return None, as_program(model)
    raise OptionError(
        "model must be a VAEConfig (the library's VAE), a (model, guide) pair of Pyro "
        f"programs of your own or a pyrovae.Program, got {type(model).__name__}"
    )


def _program(plan: "_RunPlan", program: Optional[Program]) -> Optional[Program]:
    """The user's program: as given, or built from the training config's ``model``
    (``PACKAGE.MODULE:FUNCTION``, ``pyrovae.program``) in every process; None for the
    library's VAE."""
    spec = plan.train_config.model
    if spec is None:
        return program
    if program is not None:
        raise OptionError(
            f"give the program once: as model=(model, guide), or as the training config's "
            f"model={spec!r} (--model), not both"
        )
    if plan.model_config is not None and plan.state is None:
        raise OptionError(
            f"the VAE's options (a VAEConfig: --z-dim, --prior, ...) do not apply to a program "
            f"of your own (--model {spec}): leave them out"
        )
    return load_program(spec)


def _join(device: Device, program: Optional[Program]) -> Tuple[distributed.World, Any]:
    """(the processes' world, the device to train on): under torchrun this process joins
    the others, each on its own device; a bad device fails here, before anything is read (a
    pair of the user's own keeps its module's device unless one is asked for)."""
    world, process_device = distributed.setup(device)
    if world.distributed:
        return world, process_device
    if program is None or device is not None:
        return world, resolve_device(device)
    return world, device


def _read_run_dir(world, plan: "_RunPlan", resume, program, data) -> "_RunPlan":
    """The plan once the run directory is read: a resumed run's saved state (``resume`` True,
    or a dict of the changes to make), or a new run's directory checked. The directory is
    process 0's: it alone reads it (the others get what it read)."""
    if not isinstance(resume, (bool, dict)):
        raise OptionError(
            "resume must be True, False or a dict of the changes to make on resuming, got "
            f"{resume!r}"
        )
    changes = resume if isinstance(resume, dict) else None
    with world.together():
        if world.main and resume is not False:
            plan = _plan_resume(plan, world, changes, program, data)
        elif world.main and plan.run_path is not None:
            check_new_run_dir(plan.run_path)
    return world.share(plan) if world.distributed else plan


def _start_together(world, session: "_Session", fingerprint, plan: "_RunPlan", cfg) -> None:
    """Processes under torchrun start alike: the same data, process 0's parameters, and for a
    new run each process's own random stream."""
    _check_same_data(world, fingerprint)
    world.broadcast_(session.trainer.params)  # every process starts from process 0's
    if plan.state is None and not world.main:
        torch.manual_seed(distributed.rank_seed(cfg.seed, world.rank))  # its own stream


def _new_plan(run_dir, train_config, model_config) -> "_RunPlan":
    """A new run's plan from the arguments of ``train``, checked."""
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise OptionError(f"run_dir must be a path, got {run_dir!r}")
    plan = _RunPlan(None, {}, Path(run_dir) if run_dir is not None else None, {})
    plan.train_config = _as_config(TrainConfig, train_config, "train_config")
    if model_config is not None:
        plan.model_config = _as_config(VAEConfig, model_config, "model")
    return plan


def _write_run_files(run_path: Path, metrics: List[Dict[str, Any]], record: Dict[str, Any]):
    """``metrics.jsonl``, then ``config.json``. After a resume this repairs the metrics:
    records the checkpoint has and the file lost are written back, records of epochs newer
    than the checkpoint dropped. Before the config, so that a failure here leaves the run's
    config as it was."""
    write_metrics(run_path, metrics)
    write_json(run_path / "config.json", record)


@dataclass
class _RunPlan:
    """What process 0 found in the run directory, shared with the others: the checkpoint to
    resume from (None for a new run), the settings a resume changes, the directory, its
    ``config.json`` as written, and the settings to train with."""

    state: Optional[Dict[str, Any]]
    changed: Dict[str, Any]
    run_path: Optional[Path]
    record: Dict[str, Any]
    train_config: Optional[TrainConfig] = None
    model_config: Optional[VAEConfig] = None


def _plan_resume(
    plan: _RunPlan, world: distributed.World, changes, program: Optional[Program], data
) -> _RunPlan:
    """The plan to resume the run at ``plan.run_path``: its checkpoint, checked to belong to
    it and to this number of processes, and its settings with ``changes`` (default: the
    fields of the configs given that differ from their defaults) applied."""
    if plan.run_path is None:
        raise ValueError("resume needs run_dir (--run-dir), the run directory to continue")
    run_path = plan.run_path
    check_resumable(run_path)
    saved_train, saved_model = read_config(run_path)
    model = program.model if program is not None else None
    custom = model is not None or saved_train.model is not None
    if (saved_model is None) != custom:
        raise ValueError(
            f"{run_path} trained "
            + (
                "a model/guide pair of your own: pass it again as model=(model, guide)"
                if saved_model is None
                else "a pyrovae VAE: resume it without a model/guide pair"
            )
        )
    state = load_checkpoint(checkpoint_path(run_path, "last"))
    check_belongs(state, checkpoint_path(run_path, "last"), saved_train, saved_model)
    _check_world_size(state, world, run_path)
    if changes is None:
        changes = given_fields(plan.train_config)
        if plan.model_config is not None:
            changes.update(given_fields(plan.model_config))
    if model is not None and trained_pair(state) not in (None, _describe(model)):
        raise ValueError(
            f"{run_path} trained {trained_pair(state)}, but the model passed is "
            f"{_describe(model)}: resume with the pair the run was trained with"
        )
    record = read_record(run_path)
    if data is None and trained_on_python_data(record):
        raise ValueError(
            f"{run_path} was trained on a Dataset passed in Python (data=): pass it again"
        )
    train_config, changed = resumed_config(saved_train, saved_model, changes, epoch_of(state))
    return _RunPlan(state, changed, run_path, record, train_config, saved_model)


def _checked_data(cfg: TrainConfig, data: Optional[Dataset], plan: _RunPlan):
    """(the data to train on: ``data`` if given, else loaded by ``cfg``; its fingerprint),
    refused if it cannot serve (no validation split, values a dynamic binarization cannot
    take) or, on resume, is not the run's."""
    if data is not None and not isinstance(data, Dataset):
        raise OptionError(f"data must be a pyrovae.data.Dataset, got {type(data).__name__}")
    data = data if data is not None else prepare_data(cfg)
    if len(data.valid) == 0:
        raise DataError(
            f"the validation split of {data.name!r} is empty: training keeps the best epoch "
            "by validation ELBO, so it needs validation data"
        )
    if data.binarize == "dynamic" and (data.train.min() < 0 or data.train.max() > 1):
        raise DataError(f"dynamic binarization needs {data.name} in [0, 1]")
    resumed = plan.state is not None
    if resumed and plan.model_config is not None and data.x_dim != plan.model_config.x_dim:
        raise DataError(
            f"the data has {data.x_dim} values per point, but the run's model takes "
            f"{plan.model_config.x_dim}: resume with the run's data"
        )
    fingerprint = _fingerprint(data)
    saved = plan.record.get("data_fingerprint") if resumed else None
    if saved is not None and saved != fingerprint:
        raise DataError(
            f"the data found now is not the data {plan.run_path} was trained on (its "
            "fingerprint differs): resume with the run's own data"
        )
    return data, fingerprint


@dataclass
class _Session:
    """What trains: the VAE (None for a pair of the user's own) or the pair, the model's
    config, the trained state, the ``Trainer`` (producer, estimator, Adam), the data's splits
    where they are placed, and the device."""

    vae: Optional[VAE]
    model: Callable
    guide: Callable
    model_config: Optional[VAEConfig]
    trained: TrainedState
    trainer: Trainer
    train_split: torch.Tensor
    valid_split: torch.Tensor
    device: torch.device
    steps_per_epoch: int


def _build_session(cfg, data, device, world, plan: _RunPlan, program) -> _Session:
    """Build what trains from ``cfg``, the data and the plan: the estimator, the VAE (its
    config fitted to the data) or the user's ``program``, the producer and the ``Trainer``, with
    everything that cannot apply or fit refused before anything is written."""
    estimator = _estimator(cfg)
    if cfg.warmup and not estimator.supports_warmup:
        raise OptionError(
            f"the {estimator.name!r} estimator does not support KL warm-up (its class does "
            "not set supports_warmup = True: it ignores Particles.kl_weight): drop --warmup"
        )
    points = _permuted_points(cfg, data, program, estimator)
    steps_per_epoch = _steps_per_epoch(points, cfg.batch_size, estimator)
    if cfg.batch_size < world.size:
        raise OptionError(
            f"batch_size (--batch-size) is the global batch, split between the "
            f"{world.size} processes: it must be at least {world.size}, got {cfg.batch_size}"
        )
    # Pyro's param store is global: stale parameters with our names would shadow the new ones.
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    vae, model_config = None, plan.model_config
    if program is not None:
        device = _pair_device(device, program.model)
    train_split, valid_split = (place(s, device) for s in _program_splits(data, program))
    with fork_rng(device):
        x0 = _batch(data, train_split, slice(0, cfg.batch_size), device)
    if program is not None:
        model, guide = program.model, program.guide
        trained = TrainedState.of_pair(model, guide, *program.args(x0))
    else:
        resumed = plan.state is not None
        model_config = _fitted_config(model_config or VAEConfig(), data, resumed=resumed)
        # Built on the CPU, from the CPU's random stream: the same initial parameters on
        # every device.
        vae = build_vae(model_config).to(device)
        _check_data(vae, data)
        if not resumed and world.main:
            _warn_collapse_prone(model_config, cfg.estimator)
        model, guide, trained = vae.model, vae.guide, TrainedState(module=vae)
    subject = vae if vae is not None else program
    producer = make_producer(subject, cfg.producer, cfg.max_plate_nesting, trained.params)
    # This process's part of the first batch: what it computes each step, and what shapes
    # the estimator's state. An estimator that does not apply, or a step that would not fit
    # in memory, fails here, before anything is written.
    x0 = x0[slice(*world.shard(x0.shape[0]))]
    modules = [vae] if vae is not None else []
    check_step_memory(trained.params, x0, estimator.num_particles, "a training step", modules)
    check_applies(producer, estimator, x0)
    trainer = Trainer(producer, estimator, trained.params, cfg.lr, world)
    return _Session(
        vae, model, guide, model_config, trained, trainer, train_split, valid_split, device,
        steps_per_epoch,
    )  # fmt: skip


def _permuted_points(cfg: TrainConfig, data: Dataset, program, estimator: Estimator) -> int:
    """How many training points an epoch's permutation covers: all of them, or with
    ``labelled_batch_size`` the unlabelled ones (the labelled ones drawn beside each batch),
    refused where that cannot apply."""
    if not cfg.labelled_batch_size:
        return data.train.shape[0]
    flag = "labelled_batch_size (--labelled-batch-size)"
    if program is None or not program.labels or data.labels is None:
        raise OptionError(
            f"{flag} is for a program that takes labels (Program(labels=True)) on data with "
            "labels, some of them -1 (unlabelled): drop it, or train such a program"
        )
    labels = data.labels["train"]
    if not (labels < 0).any() or not (labels >= 0).any():
        raise DataError(
            f"{flag} needs training points with labels and without (-1), but every one "
            f"{'has' if (labels >= 0).all() else 'lacks'} a label: keep some "
            "(--dataset-option labelled=N) or drop it"
        )
    if estimator.fixed_batch_shape and cfg.labelled_batch_size != cfg.batch_size:
        raise OptionError(
            f"the {estimator.name!r} estimator keeps state shaped like the batch, so {flag} "
            f"must equal batch_size ({cfg.batch_size}), got {cfg.labelled_batch_size}"
        )
    return int((labels < 0).sum())


def _program_splits(data: Dataset, program: Optional[Program]):
    """(the training split, the validation split) as the trainer passes them: for a program
    that takes labels, each point's label as a last column (``with_labels``)."""
    if program is None or not program.labels:
        return data.train, data.valid
    if data.labels is None:
        raise DataError(
            f"the program takes labels (Program(labels=True): model(x, y)), but {data.name!r} "
            "has none: train it on data with labels (mnist, fashion-mnist, or a Dataset with "
            "labels=)"
        )
    return (with_labels(data.split(s), data.labels[s]) for s in ("train", "valid"))


def _claim(world: distributed.World, run_path: Optional[Path], cfg: TrainConfig, resume: bool):
    """(the run directory, its lock held by process 0): from here on that process alone
    writes there. A new run's directory is checked again under the lock (another process may
    have started there meanwhile); leftovers of interrupted writes are removed."""
    lock = None
    try:
        with world.together():
            if world.main:
                if run_path is None:
                    run_path = default_run_dir(cfg.dataset, cfg.estimator)
                run_path.mkdir(parents=True, exist_ok=True)
                lock = RunLock(run_path).acquire()
                if not resume:
                    check_new_run_dir(run_path)
                remove_leftovers(run_path)
        return world.share(run_path), lock
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _resume_state(world: distributed.World, plan: _RunPlan, resumable: Resumable, vae):
    """((first epoch, step, best validation ELBO), the epochs' records, the resume history):
    a new run's, or the checkpoint's, restored into ``resumable``."""
    state, run_path = plan.state, plan.run_path
    if state is None:
        return (0, 0, -math.inf), [], []
    with world.together():
        try:
            resumable.restore(state, vae, world.rank if world.distributed else None)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"checkpoint {checkpoint_path(run_path, 'last')} cannot be restored "
                f"({' '.join(str(e).split())[:300]}); restore it from a copy"
            ) from None
    metrics: List[Dict[str, Any]] = []
    history: List[Dict[str, Any]] = []
    with world.together():
        if world.main:
            # The checkpoint holds every record up to it (0.1.0's did not: read the file).
            metrics = saved_metrics(state) or [
                m for m in read_metrics(run_path) if m["epoch"] <= epoch_of(state)
            ]
            history = _saved_history(run_path)
    metrics, history = world.share((metrics, history))
    if plan.changed:
        changed = {k: list(v) for k, v in plan.changed.items()}
        history.append({"epoch": epoch_of(state), "changed": changed})
    return position(state), metrics, history


def _identity(cfg: TrainConfig, session: _Session) -> Dict[str, Any]:
    """What was trained, as the run's record and checkpoints say it: the model's config (None
    for a pair of the user's own), the pair's description, the training config."""
    custom = session.vae is None
    return {
        "model_config": None if custom else session.model_config.to_dict(),
        "custom_model": _describe(session.model) if custom else None,
        "train_config": cfg.to_dict(),
    }


def _resumed(history: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"resumed": history} if history else {}


def _announce(session: _Session, changed: Dict[str, Any], world: distributed.World) -> None:
    """The line that says what trains, how, and on what, with the settings a resume changed."""
    what = "VAE" if session.vae is not None else _describe(session.model)
    device = session.device
    where = f"{world.size} processes on {device.type}" if world.distributed else device
    producer = session.trainer.producer
    # (a program's auxiliary term, M2's classifier loss, is part of what trains: say so)
    has_auxiliary = getattr(producer, "auxiliary", None) is not None
    auxiliary = "; plus the program's auxiliary term" if has_auxiliary else ""
    print(
        f"pyrovae: training the {what} with {session.trainer.estimator!r}{auxiliary}, "
        f"particles from the {producer.name} producer, on {where}"
        + "".join(f"; {k} {old} -> {new}" for k, (old, new) in changed.items()),
        file=sys.stderr,
    )


def _check_world_size(state: Dict[str, Any], world: distributed.World, run_path: Path) -> None:
    """Refuse to resume a run with another number of processes than it was trained with: its
    checkpoint holds each process's random streams and estimator state."""
    saved = saved_world_size(state)
    if saved == world.size:
        return
    how = (
        "without torchrun (or with --nproc-per-node 1)"
        if saved == 1
        else f"with {saved} processes (torchrun --nproc-per-node {saved}, or nodes x processes "
        f"per node = {saved})"
    )
    raise OptionError(
        f"the run in {run_path} was trained by {saved} process{'es' if saved > 1 else ''}, "
        f"and this is {world.size}: resume it {how}; its checkpoint holds each process's "
        "random stream, so it continues exactly only with the same number"
    )


def _check_same_data(world: distributed.World, fingerprint: str) -> None:
    """Every process must train on the same data (each loads its own copy)."""
    prints = world.everyone(fingerprint)
    other = next((r for r, p in enumerate(prints) if p != prints[0]), None)
    if other is not None:
        raise distributed.DistributedError(
            f"process {other} loaded other data than process 0 (the fingerprints of their "
            "training and validation splits differ): give every process the same data "
            "(--data-dir)"
        )


def _as_config(cls, value, name: str):
    """A config from itself, a dict of its fields (checked), or ``None`` (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls.from_dict(value, name=lambda k: f"{name}[{k!r}]")
    if not isinstance(value, cls):
        raise OptionError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")
    return value


def _saved_history(run_path: Path) -> List[Dict[str, Any]]:
    history = read_record(run_path).get("resumed", [])
    return history if isinstance(history, list) else []


def _resolved_data_dir(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the data directory that loading will use, absolute (a relative one, or
    ``$PYROVAE_DATA``, would mean other data from another working directory later)."""
    where = cfg.data_dir if cfg.data_dir is not None else os.environ.get("PYROVAE_DATA") or None
    if where is None:
        return cfg
    return dataclasses.replace(cfg, data_dir=str(Path(where).expanduser().resolve()))


def _fingerprint(data: Dataset) -> str:
    """A hash of the training and validation splits, so that a resumed run can tell that it
    is given the data it was trained on (a moved directory may hold other data)."""
    digest = hashlib.sha1()
    for split in (data.train, data.valid):
        digest.update(str(tuple(split.shape)).encode())
        digest.update(split.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _EpochLoop:
    """The epochs of one ``train`` call: steps, validation, and each epoch's commit.
    ``train_split`` and ``valid_split`` are the data's, placed on ``device`` where they fit."""

    cfg: TrainConfig
    data: Dataset
    train_split: torch.Tensor
    valid_split: torch.Tensor
    resumable: Resumable
    # Where each epoch goes, and what a divergence leaves behind (``_RunCommit``): the epoch
    # loop itself knows nothing of files.
    on_epoch: "_RunCommit"
    world: distributed.World = dataclasses.field(default_factory=distributed.World)

    @property
    def trainer(self) -> Trainer:
        return self.resumable.trainer

    @property
    def producer(self) -> Producer:
        return self.resumable.trainer.producer

    @property
    def device(self) -> torch.device:
        return self.resumable.device

    # The worst ELBO per point before this call's epochs (set by ``run``): the divergence
    # criterion's reference (``diverged_floor``); inf while there is none.
    worst_elbo: float = math.inf

    def _diverged(self, what: str, epoch: int) -> TrainingDiverged:
        return TrainingDiverged(f"{what}; training stopped. {self.on_epoch.kept(epoch - 1)}")

    def run(self, start_epoch, step, best, metrics, steps_per_epoch, progress) -> float:
        cfg, n = self.cfg, self.data.train.shape[0]
        # The worst validation ELBO so far; a new run adds its objective before any update.
        seen = [m.get("valid_elbo") for m in metrics]
        self.worst_elbo = min((v for v in seen if _finite_number(v)), default=math.inf)
        bar = tqdm(
            total=cfg.epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch,
            desc="train",
            unit="step",
            disable=None if progress else True,  # None: shown on a terminal, not in logs
            dynamic_ncols=True,
        )
        try:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                lr = learning_rate(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
                self.trainer.set_lr(lr)
                t0 = time.perf_counter()
                total_loss = 0.0
                for i, batches in enumerate(self._batches(steps_per_epoch)):
                    beta = kl_weight(step, cfg.warmup, steps_per_epoch)
                    where = f"epoch {epoch}, step {i + 1}"
                    for rows, count in batches:
                        total_loss += self._step(rows, count, beta, step, where, epoch)
                    step += 1
                    share_cores()
                    bar.update()
                    if i % 50 == 0:
                        bar.set_postfix(epoch=epoch, elbo=f"{-total_loss / ((i + 1) * n):.2f}")
                train_seconds = time.perf_counter() - t0
                record = self._validate(epoch, step, total_loss / (steps_per_epoch * n))
                record["train_seconds"] = train_seconds
                record["lr"] = lr
                if cfg.warmup:
                    record["kl_weight"] = beta
                bar.set_postfix(epoch=epoch, valid_elbo=f"{record['valid_elbo']:.2f}")
                improved = record["valid_elbo"] > best
                best = max(best, record["valid_elbo"])
                metrics.append(record)
                self.on_epoch(epoch, step, best, record, metrics, improved)
        except (TrainingDiverged, DataError) as e:
            # Raised from the global batch's loss or the gathered validation: on every process
            # together, unless it is this process's own failure.
            if self.world.distributed and not distributed.only_here(e.__cause__):
                distributed.everywhere(e)
            raise
        finally:
            bar.close()
        return best

    def _batches(self, steps: int):
        """Each step's batches of an epoch, as (rows of the training split, the number of
        points they stand for): a permutation's batches of the whole split; with
        ``labelled_batch_size``, of its unlabelled points, each followed by that many
        labelled points drawn at random (with replacement), which stand for the labelled
        ones (semi-supervised training: the few labels revisited, each step scaled to its
        part). Drawn on the CPU (``shuffle``), then indexing where the split is."""
        cfg, shuffle, where = self.cfg, self.resumable.shuffle, self.train_split.device
        size = cfg.batch_size
        if not cfg.labelled_batch_size:
            perm = torch.randperm(self.data.train.shape[0], generator=shuffle).to(where)
            for i in range(steps):
                yield [(perm[i * size : (i + 1) * size], self.data.train.shape[0])]
            return
        labels = self.train_split[:, -1]
        unlabelled, labelled = (labels < 0).nonzero().squeeze(1), (labels >= 0).nonzero().squeeze(1)
        perm = unlabelled[torch.randperm(len(unlabelled), generator=shuffle).to(where)]
        for i in range(steps):
            picked = torch.randint(len(labelled), (cfg.labelled_batch_size,), generator=shuffle)
            yield [
                (perm[i * size : (i + 1) * size], len(unlabelled)),
                (labelled[picked.to(where)], len(labelled)),
            ]

    def _step(self, rows, n: int, beta: float, step: int, where: str, epoch: int) -> float:
        """One training step on ``rows`` of the training split (this process's part of them,
        under torchrun), which stand for ``n`` points, at KL weight ``beta``: its loss,
        refused where it is not finite (at the very first step the data's fault, later a
        divergence)."""
        split = {}
        if self.world.distributed:  # this process's part of the global batch
            split["batch_size"] = rows.shape[0]
            rows = rows[slice(*self.world.shard(rows.shape[0]))]
        x = _batch(self.data, self.train_split, rows, self.device)
        try:
            loss = self.trainer.step(x, n, beta, **split)
        except FloatingPointError as e:  # a NaN inside a distribution
            raise self._diverged(f"{e} at {where}", epoch) from e
        if not math.isfinite(loss) and step == 0:
            raise DataError(
                f"the loss is {loss} at the very first step, before any update: the model gives "
                "the data zero or NaN density (check the data's scale and values, and --sigma); "
                "a lower --lr would not help"
            )
        if not math.isfinite(loss):
            raise self._diverged(f"the loss became {loss} at {where}", epoch)
        if step == 0:  # per point: what the untrained model gives
            self.worst_elbo = min(self.worst_elbo, -loss / n)
        return loss

    def _validate(self, epoch: int, step: int, train_loss: float) -> Dict[str, Any]:
        if not math.isfinite(train_loss):
            raise self._diverged(f"the training loss of epoch {epoch} is {train_loss}", epoch)
        # With more than one process, the validation points are split between them, each
        # chunk's particles drawn from a stream of its own (the training streams untouched).
        split = {}
        if self.world.distributed:
            split = {"seed": distributed.derived_seed(self.cfg.seed, "valid", epoch)}
            split["world"] = self.world
        try:
            valid = estimate_log_likelihood(
                None, None, self.valid_split, k=1, progress=False, producer=self.producer, **split
            )
        except FloatingPointError as e:
            raise self._diverged(f"validation at epoch {epoch} failed: {e}", epoch) from e
        if not math.isfinite(valid.elbo):
            raise self._diverged(f"the validation ELBO became {valid.elbo} at epoch {epoch}", epoch)
        if valid.elbo < diverged_floor(self.worst_elbo):
            raise self._diverged(
                f"the validation ELBO fell to {valid.elbo:.4g} at epoch {epoch}, over "
                f"{DIVERGED_FACTOR:g} times further below zero than the worst before it "
                f"({self.worst_elbo:.4g}, before the first update or at an earlier epoch)",
                epoch,
            )
        likelihood = getattr(self.resumable.trained.module, "likelihood", None)
        if getattr(likelihood, "discrete", False) and valid.elbo > 0:
            # log p(x) <= 0 for a probability mass, and the ELBO below it: an average above 0
            # over the validation set is arithmetic breaking down (a variance shrunk below
            # float precision, say), which training would otherwise keep exploiting.
            raise self._diverged(
                f"the validation ELBO is {valid.elbo:.4g} at epoch {epoch}, above 0, which no "
                "model of discrete data (binary pixels, 8-bit colours) can reach (log p(x) <= 0): "
                "the arithmetic broke down",
                epoch,
            )
        record = {
            "epoch": epoch,
            "step": step,
            "train_elbo": -train_loss,
            "valid_elbo": valid.elbo,
            "train_seconds": None,
            "valid_seconds": valid.seconds,
            "estimator": self.trainer.estimator.name,
            "producer": self.producer.name,
        }
        error = classification_error(self.producer, self.valid_split)
        if error is not None:  # a program that classifies (M2)
            record["valid_error"] = error
        return record


@dataclass
class _RunCommit:
    """Each epoch's commit to the run directory (process 0 writes; every process sends its
    streams), and what a divergence leaves there."""

    run_path: Path
    # What the checkpoints say was trained: model_config, custom_model, train_config.
    identity: Dict[str, Any]
    resumable: Resumable
    world: distributed.World
    # Told each committed epoch (process 0's): ``TensorBoardLog`` where asked for.
    log: Optional[Callable[[int, Dict[str, Any]], None]] = None

    def __call__(self, epoch, step, best, record, metrics, improved) -> None:
        """Write the epoch: ``best.pt`` first, then ``last.pt`` (the commit point, holding the
        metrics), then ``metrics.jsonl``. A kill between any two leaves a run that resumes
        from ``last.pt`` with nothing lost: an epoch newer than ``last.pt`` is redone, exactly,
        and rewrites ``best.pt``; a metrics file behind ``last.pt`` is rebuilt from it."""
        world = self.world
        # Every process's streams and estimator state, to process 0.
        ranks = world.gather(self.resumable.own_streams()) if world.distributed else None
        with world.together():
            if world.main:
                progress = {"epoch": epoch, "step": step, "best_valid_elbo": best}
                progress["valid_elbo"] = record["valid_elbo"]
                ckpt = self.resumable.to_checkpoint(progress, self.identity, metrics, ranks)
                if improved:
                    save_checkpoint(ckpt, checkpoint_path(self.run_path, "best"))
                save_checkpoint(ckpt, checkpoint_path(self.run_path, "last"))
                write_metrics(self.run_path, metrics)
                if self.log is not None:
                    self.log(epoch, record)

    def kept(self, epoch: int) -> str:
        """What a run that diverged after committing ``epoch`` keeps, and what to do."""
        if epoch < 1:
            return (
                "no checkpoint was written (it diverged in its first epoch): lower the learning "
                "rate (--lr) and start the run again"
            )
        return (
            f"the checkpoints of epoch {epoch} in {self.run_path / 'checkpoints'} are kept: "
            "lower the learning rate and resume (--resume --lr ...), or check the data"
        )


def _estimator(cfg: TrainConfig) -> Estimator:
    """The configured estimator; ``num_particles`` may also come as one of its options."""
    options = dict(cfg.estimator_options)
    k = cfg.num_particles
    if "num_particles" in options:
        given = options.pop("num_particles")
        if k is not None and given != k:
            raise OptionError(
                f"num_particles is given twice, as {k} (--num-particles) and as {given} "
                "(--estimator-option num_particles=): give it once"
            )
        k = given
    return make_estimator(cfg.estimator, k, **options)


def _steps_per_epoch(n: int, batch_size: int, estimator: Estimator) -> int:
    # Estimator state shaped like the batch (a decaying average): drop a short final batch.
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if n < batch_size:
        raise ValueError(f"the training set has {n} points, fewer than one batch ({batch_size})")
    return n // batch_size if estimator.fixed_batch_shape else math.ceil(n / batch_size)


def load_pair_state(
    source, model: Callable, guide: Callable, x: torch.Tensor, which: str = "best", *rest
) -> Dict[str, Any]:
    """Load the parameters a run saved for a model/guide pair of the user's own into that pair
    (rebuilt as it was trained), from a run directory or a checkpoint file. ``x`` (B, ...) is
    a batch to trace the pair on, to find its parameters (``rest``: the pair's further
    arguments, a conditional program's labels (B,)). Returns the checkpoint dict."""
    pyro.clear_param_store()
    return load_pair_checkpoint(source, which, TrainedState.of_pair(model, guide, x, *rest))
