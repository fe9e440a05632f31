"""Training a VAE: run directories, checkpoints, resume, divergence; steps by an engine
(``pyrovae.engines``: ``pyro.infer.SVI``, or the same estimator computed from the parts).

A run directory holds ``config.json`` (the resolved configuration), ``metrics.jsonl`` (one record
per epoch), ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (by validation ELBO). A checkpoint
holds the parameters, the optimizer state, estimator state (baselines) and the random-number
states, so ``resume`` continues exactly where the run left off: a resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pyro
import torch
from tqdm.auto import tqdm

from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .config import config_from_dict
from .data import Dataset, load_dataset
from .engines import make_engine
from .estimators import Estimator, make_estimator
from .evaluation import evaluate_vae
from .model import VAE, VAEConfig, build_vae


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Saved as ``config.json`` in the run directory.

    ``n_train``/``n_eval`` take seeded random subsets of the training and of the validation and
    test splits (quick runs, tests). ``estimator_options`` go to the estimator's factory (e.g.
    ``{"baseline": "none"}`` for ``score-function``). ``engine`` picks how a step is taken
    (``pyrovae.engines``): ``auto`` (fast where it applies), ``fast`` or ``pyro`` (SVI).
    """

    dataset: str = "binarized-mnist"
    data_dir: Optional[str] = None
    dataset_options: Dict[str, Any] = field(default_factory=dict)
    n_train: Optional[int] = None
    n_eval: Optional[int] = None
    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    estimator: str = "pathwise"
    estimator_options: Dict[str, Any] = field(default_factory=dict)
    num_particles: Optional[int] = (
        None  # None: the estimator's default (1, or 5 for K-sample bounds)
    )
    seed: int = 0
    engine: str = "auto"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict``; unknown keys are an error so that typos fail loudly."""
        return config_from_dict(cls, d, "training")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    vae: VAE
    metrics: List[Dict[str, Any]]
    best_valid_elbo: float

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of the training part of an epoch (validation excluded)."""
        times = [m["train_seconds"] for m in self.metrics]
        return sum(times) / len(times) if times else float("nan")


def prepare_data(cfg: TrainConfig) -> Dataset:
    """Load the configured dataset and take the configured subsets."""
    data = load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)
    if cfg.n_train is not None or cfg.n_eval is not None:
        data = data.subset(n_train=cfg.n_train, n_eval=cfg.n_eval, seed=cfg.seed)
    return data


def _check_data(vae: VAE, data: Dataset) -> None:
    vae.likelihood.check_data(data.valid, f"the {data.name} validation split")
    if data.binarize == "dynamic":
        if data.train.min() < 0 or data.train.max() > 1:
            raise ValueError(f"dynamic binarization needs {data.name} in [0, 1]")
    else:
        vae.likelihood.check_data(data.train, f"the {data.name} training split")


def _default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.dataset}-{cfg.estimator}-{stamp}"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def read_metrics(run_dir: Path) -> List[Dict[str, Any]]:
    """The per-epoch records of a run, oldest first."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_config(run_dir: Path) -> Tuple[TrainConfig, VAEConfig]:
    """The (training, model) configuration saved in a run directory."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a pyrovae run directory")
    try:
        cfg = json.loads(path.read_text())
        return TrainConfig.from_dict(cfg["train"]), VAEConfig.from_dict(cfg["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid pyrovae config ({e})") from e


def train(
    train_config: TrainConfig = TrainConfig(),
    model_config: Optional[VAEConfig] = None,
    run_dir: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    data: Optional[Dataset] = None,
) -> TrainResult:
    """Train a VAE with SVI and Adam, checkpointing every epoch.

    Args:
        train_config: data, optimisation and estimator settings.
        model_config: the VAE's parts; ``x_dim`` is taken from the data. Default: ``VAEConfig()``.
        run_dir: where to write config, metrics and checkpoints (default ``runs/<name>-<time>``).
        resume: continue the run in ``run_dir`` from its last checkpoint. Its saved config is
            used, except ``epochs``, which is taken from ``train_config`` (the new total).
        progress: show a progress bar.
        data: an already loaded dataset (otherwise loaded from ``train_config``).

    Returns:
        A ``TrainResult`` with the trained VAE (the last epoch's parameters) and its metrics.

    Raises:
        TrainingDiverged: the loss became NaN/inf; the checkpoints of earlier epochs are kept.
    """
    state = None
    if resume:
        if run_dir is None:
            raise ValueError("resume needs the run directory to continue")
        run_path = Path(run_dir)
        saved_train, model_config = read_config(run_path)
        train_config = dataclasses.replace(saved_train, epochs=train_config.epochs)
        state = load_checkpoint(checkpoint_path(run_path, "last"))
    else:
        run_path = Path(run_dir) if run_dir else _default_run_dir(train_config)
        if checkpoint_path(run_path, "last").exists():
            raise FileExistsError(
                f"{run_path} already holds a training run; pass resume=True (--resume) to "
                "continue it, or choose another run directory"
            )
    cfg = train_config
    data = data if data is not None else prepare_data(cfg)
    model_config = dataclasses.replace(model_config or VAEConfig(), x_dim=data.x_dim)
    estimator = make_estimator(cfg.estimator, cfg.num_particles, **cfg.estimator_options)

    # Pyro's param store is global: stale parameters with our names would shadow the new ones.
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(model_config, reparameterized=estimator.reparameterized)
    _check_data(vae, data)
    # A resumed run keeps the engine its optimizer state belongs to.
    engine_name = state["engine"] if state is not None else cfg.engine
    engine = make_engine(engine_name, vae, estimator, cfg.lr)
    shuffle = torch.Generator().manual_seed(cfg.seed)

    run_path.mkdir(parents=True, exist_ok=True)
    (run_path / "checkpoints").mkdir(exist_ok=True)
    _write_json(run_path / "config.json", {"train": cfg.to_dict(), "model": model_config.to_dict()})

    metrics: List[Dict[str, Any]] = []
    start_epoch, step, best = 0, 0, -math.inf
    if state is not None:
        _restore(state, vae, engine, shuffle)
        start_epoch, step, best = state["epoch"], state["step"], state["best_valid_elbo"]
        metrics = [m for m in read_metrics(run_path) if m["epoch"] <= start_epoch]
    # Rewrite the metrics file: after a resume it drops epochs newer than the checkpoint.
    (run_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))

    n = data.train.shape[0]
    steps_per_epoch = _steps_per_epoch(n, cfg.batch_size, estimator)
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
            t0 = time.perf_counter()
            total_loss = 0.0
            perm = torch.randperm(n, generator=shuffle)
            for i in range(steps_per_epoch):
                x = data.train[perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]]
                if data.binarize == "dynamic":
                    x = torch.bernoulli(x)
                loss = engine.step(x, n)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss} at epoch {epoch}, step {i + 1}; training stopped. "
                        f"The checkpoints of epoch {epoch - 1} in {run_path / 'checkpoints'} are "
                        "kept: lower the learning rate (--lr) and resume, or check the data"
                    )
                total_loss += loss
                step += 1
                bar.update()
                if i % 50 == 0:
                    bar.set_postfix(epoch=epoch, elbo=f"{-total_loss / ((i + 1) * n):.2f}")
            train_seconds = time.perf_counter() - t0
            record = _end_epoch(
                vae, data, estimator, epoch, step, total_loss / (steps_per_epoch * n), train_seconds
            )
            bar.set_postfix(epoch=epoch, valid_elbo=f"{record['valid_elbo']:.2f}")
            improved = record["valid_elbo"] > best
            best = max(best, record["valid_elbo"])
            ckpt = _snapshot(vae, engine, shuffle, model_config, cfg, epoch, step, best, record)
            save_checkpoint(ckpt, checkpoint_path(run_path, "last"))
            if improved:
                save_checkpoint(ckpt, checkpoint_path(run_path, "best"))
            metrics.append(record)
            with open(run_path / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
    finally:
        bar.close()
    vae.eval()
    return TrainResult(run_path, vae, metrics, best)


def _steps_per_epoch(n: int, batch_size: int, estimator: Estimator) -> int:
    # A decaying-average baseline is a buffer shaped like the batch: drop a short final batch.
    if n < batch_size:
        raise ValueError(f"the training set has {n} points, fewer than one batch ({batch_size})")
    return n // batch_size if estimator.fixed_batch_shape else math.ceil(n / batch_size)


def _end_epoch(
    vae: VAE,
    data: Dataset,
    estimator: Estimator,
    epoch: int,
    step: int,
    train_loss: float,
    train_seconds: float,
) -> Dict[str, Any]:
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"the training loss of epoch {epoch} is {train_loss}")
    valid = evaluate_vae(vae, data.valid, k=1, progress=False)
    if not math.isfinite(valid.elbo):
        raise TrainingDiverged(f"the validation ELBO became {valid.elbo} at epoch {epoch}")
    return {
        "epoch": epoch,
        "step": step,
        "train_elbo": -train_loss,
        "valid_elbo": valid.elbo,
        "train_seconds": train_seconds,
        "valid_seconds": valid.seconds,
        "estimator": estimator.name,
    }


def _snapshot(vae, engine, shuffle, model_config, cfg, epoch, step, best, record):
    return {
        "epoch": epoch,
        "step": step,
        "best_valid_elbo": best,
        "valid_elbo": record["valid_elbo"],
        "model_config": model_config.to_dict(),
        "train_config": cfg.to_dict(),
        "model_state": vae.state_dict(),
        "engine": engine.name,
        "engine_state": engine.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "shuffle_rng": shuffle.get_state(),
    }


def _restore(state, vae, engine, shuffle) -> None:
    vae.load_state_dict(state["model_state"])
    engine.load_state_dict(state["engine_state"])
    torch.set_rng_state(state["torch_rng"])
    shuffle.set_state(state["shuffle_rng"])
