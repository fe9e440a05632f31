"""The training configuration: ``TrainConfig``, reading a run's saved configuration, and what
a resumed run may change (``resumed_config``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..config import (
    SEED_RULE,
    OptionError,
    Rule,
    check_values,
    config_from_dict,
    flag_name,
    option,
    part_options,
    validate_fields,
)
from ..data import DATASETS
from ..estimators import ESTIMATORS
from ..model import VAEConfig
from ..producers import PRODUCERS
from ..program import SPEC
from .rundir import read_run_file
from .schedule import LR_SCHEDULES

# 0.1.0 named the route an "engine"; a config file, run directory or command line may still.
ENGINE_TO_PRODUCER = {"auto": "auto", "fast": "direct", "pyro": "traced"}


# The groups of ``pyrovae train --help`` that these options are listed under.
DATA, MODEL, OPTIM = "data", "model", "optimisation"
# Fields that describe a Pyro program of the user's own, written to config.json only when set.
PROGRAM_FIELDS = ("model", "max_plate_nesting", "labelled_batch_size")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Saved as ``config.json`` in the run directory.

    ``n_train``/``n_eval`` take seeded random subsets of the training and of the validation and
    test splits (quick runs, tests). ``estimator_options`` go to the estimator's factory (e.g.
    ``{"baseline": "none"}`` for ``score-function``). ``producer`` picks how particles are
    computed (``pyrovae.producers``): ``auto`` (direct for the library's VAE), ``direct`` or
    ``traced``. ``lr_schedule`` and ``warmup`` (KL warm-up epochs) are described in
    ``pyrovae.training.schedule``.
    """

    dataset: str = option(  # a name, or a label with data=
        "binarized-mnist", Rule("str"), "dataset name", DATA, choices=DATASETS.names
    )
    data_dir: Optional[str] = option(
        None, Rule("str", optional=True), "directory with the data files (default: "
        "$PYROVAE_DATA, else a cache directory, downloading when possible)", DATA,
    )  # fmt: skip
    dataset_options: Dict[str, Any] = part_options(
        "extra dataset option, e.g. x_dim=5 (repeatable)", DATA
    )
    n_train: Optional[int] = option(
        None, Rule("int", minimum=1, optional=True),
        "train on a seeded random subset of this size", DATA,
    )  # fmt: skip
    n_eval: Optional[int] = option(
        None, Rule("int", minimum=1, optional=True), "validation/test subsets of this size", DATA
    )
    epochs: int = option(
        100, Rule("int", minimum=1), "number of epochs (with --resume: the new total)", OPTIM
    )
    batch_size: int = option(
        100, Rule("int", minimum=1),
        "the minibatch; under torchrun, the global batch, split across the processes", OPTIM,
    )  # fmt: skip
    lr: float = option(1e-3, Rule("number", positive=True), "Adam learning rate", OPTIM)
    lr_schedule: str = option(
        "constant", Rule("str", choices=LR_SCHEDULES),
        "learning rate per epoch: constant; iwae, the IWAE paper's (3^i epochs at "
        "lr * 10^(-i/7), 3280 epochs for i = 0..7); cosine (down to 0 over --epochs)", OPTIM,
    )  # fmt: skip
    warmup: int = option(
        0, Rule("int", minimum=0),
        "KL warm-up: epochs over which the KL weight rises from 0 to 1 (0: none); the ELBO "
        "reported is always the true one", OPTIM,
    )  # fmt: skip
    estimator: str = option("pathwise", Rule("str", choices=ESTIMATORS.names), "estimator", OPTIM)
    estimator_options: Dict[str, Any] = part_options(
        "an option of the estimator, e.g. baseline_beta=0.8 (repeatable)", OPTIM
    )
    # None: the estimator's default (1, or 5 for K-sample bounds)
    num_particles: Optional[int] = option(
        None, Rule("int", minimum=1, optional=True), "samples of z per data point per step", OPTIM
    )
    seed: int = option(0, SEED_RULE, "random seed", OPTIM)
    producer: str = option(
        "auto", Rule("str", choices=PRODUCERS),
        "how a batch's particles are computed: direct (from the VAE's parts, tested equal to "
        "tracing its model and guide), traced (Pyro traces of the model and guide), auto "
        "(direct where it applies). Every estimator runs on either.", OPTIM,
    )  # fmt: skip

    model: Optional[str] = option(
        None, Rule("str", optional=True),
        "train a Pyro program of your own instead of the VAE: PACKAGE.MODULE:FUNCTION, a "
        "function returning (model, guide), called as model(x) and guide(x) with a minibatch "
        "x, every sample site inside one data plate (the VAE's options do not apply)", MODEL,
    )  # fmt: skip
    max_plate_nesting: Optional[int] = option(
        None, Rule("int", minimum=1, optional=True),
        "the plates a program of your own nests (pixels in a plate inside the data plate: 2); "
        "default: inferred as Pyro's ELBOs infer it", MODEL,
    )  # fmt: skip

    labelled_batch_size: Optional[int] = option(
        None, Rule("int", minimum=1, optional=True),
        "semi-supervised training of a program that takes labels: batches of the unlabelled "
        "points (label -1), each followed by a step on this many labelled points drawn at "
        "random, scaled by the labelled points' number (the few labels revisited, as "
        "Kingma et al.'s M2 trains); default: batches take the points as they come", DATA,
    )  # fmt: skip

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.model is not None and not SPEC.match(self.model):
            raise OptionError(
                "model (--model) takes PACKAGE.MODULE:FUNCTION, a function returning the model "
                f"and guide of your Pyro program (e.g. mypkg.vaes:make), got {self.model!r}"
            )

    def to_dict(self) -> Dict[str, Any]:
        """The fields, as ``config.json`` holds them. Those of a program of the user's own
        (``PROGRAM_FIELDS``) only where set: a run of the library's VAE is written as before
        they existed."""
        d = dataclasses.asdict(self)
        for key in PROGRAM_FIELDS:
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], name: Optional[Callable[[str], str]] = None):
        """Inverse of ``to_dict``; unknown keys and bad values are an ``OptionError`` naming
        them (``name(key)``: how the user wrote the key), so that typos fail loudly. The 0.1.0
        key ``engine`` (``fast``, ``pyro``, ``auto``) is read as ``producer``."""
        if isinstance(d, dict) and "engine" in d:
            d = dict(d)
            engine = d.pop("engine")
            if engine not in ENGINE_TO_PRODUCER:
                raise OptionError(f"unknown engine {engine!r} in the training config")
            d.setdefault("producer", ENGINE_TO_PRODUCER[engine])
        return config_from_dict(cls, d, "training", name)


def read_config(run_dir: Path) -> Tuple[TrainConfig, Optional[VAEConfig]]:
    """The (training, model) configuration saved in a run directory; the model's is ``None``
    for a run that trained a model/guide pair of the user's own."""
    path = Path(run_dir) / "config.json"
    raw = read_run_file(path)
    if raw is None:
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a pyrovae run directory")
    try:
        cfg = json.loads(raw)
        model = cfg["model"]
        return TrainConfig.from_dict(cfg["train"]), (
            None if model is None else VAEConfig.from_dict(model)
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid pyrovae config ({e}); restore it") from None
    except RecursionError:
        raise ValueError(f"{path} is not a valid pyrovae config (nested too deeply)") from None


# What a resumed run may change: the state saved does not depend on these.
RESUMABLE = ("epochs", "lr", "lr_schedule", "producer", "data_dir")


def given_fields(config: Any) -> Dict[str, Any]:
    """The fields of a config that differ from its class's defaults: what an API caller asked
    for when resuming with ``train(TrainConfig(epochs=20), ..., resume=True)``."""
    default = type(config)()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def resumed_config(
    saved_train: TrainConfig,
    saved_model: Optional[VAEConfig],
    changes: Dict[str, Any],
    epochs_done: int,
) -> Tuple[TrainConfig, Dict[str, Tuple[Any, Any]]]:
    """The configuration a resumed run continues under: the saved one with ``changes`` (keys
    of ``TrainConfig`` or ``VAEConfig``) applied where they may change (``RESUMABLE``: the
    total of epochs, the learning rate, the producer, where the data is). A change to anything
    else (the architecture, the estimator, the batch size, the data...) is an ``OptionError``:
    the saved parameters and optimizer state belong to the saved values. Returns the config
    and {key: (old, new)} for what changed."""
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    model_keys = {f.name for f in dataclasses.fields(VAEConfig)}
    if not isinstance(changes, dict):
        raise OptionError(f"changes must be a dict of options, got {type(changes).__name__}")
    unknown = sorted(set(changes) - train_keys - model_keys)
    if unknown:
        raise OptionError(f"unknown option(s) {unknown} in changes")
    changes = {
        **check_values(TrainConfig, {k: v for k, v in changes.items() if k in train_keys}),
        **check_values(VAEConfig, {k: v for k, v in changes.items() if k in model_keys}),
    }
    saved_model_d = saved_model.to_dict() if saved_model is not None else {}
    updates, changed = {}, {}
    for key, value in changes.items():
        if key == "producer" and value == "auto":
            continue  # auto keeps the run's route
        if key == "x_dim":
            continue  # taken from the data
        old = getattr(saved_train, key) if key in train_keys else saved_model_d.get(key)
        if key in ("hidden", "hidden_top", "image_shape"):  # lists in config.json
            old, value = (None if v is None else tuple(v) for v in (old, value))
        if value == old:
            continue
        if key not in RESUMABLE:
            raise OptionError(
                f"a resumed run cannot change {key} ({flag_name(key)}): the run has {old!r}, asked "
                f"for {value!r}; its saved state belongs to its own settings: leave "
                f"{flag_name(key)} out, or start a new run in another directory"
            )
        updates[key], changed[key] = value, (old, value)
    cfg = dataclasses.replace(saved_train, **updates)
    if cfg.epochs <= epochs_done:
        raise OptionError(
            f"epochs (--epochs) is the new total and must be more than the {epochs_done} epochs "
            f"the run has done, got {cfg.epochs}"
        )
    return cfg, changed
