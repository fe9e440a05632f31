"""Checkpoints: everything needed to rebuild a VAE and to resume its training exactly.

A checkpoint is a ``torch.save``d dict of tensors and plain values (loaded with
``weights_only=True``, so loading one cannot run code). It is written to a temporary file and
renamed into place, so a crash while saving never destroys the previous checkpoint.

A checkpoint's tensors are CPU tensors, whatever device trained the model, and it is read onto
the CPU (``map_location``): a run trained on a GPU loads, evaluates and resumes on a machine
without one, and the other way round. ``load_vae`` then moves the model to the device asked for.

Format 2 (pyrovae 0.2) holds the model's state, the estimator's state (its module's
``state_dict``: baselines) and the optimizer's, whichever producer trained it, so a run resumes
with either producer. Format 1 (pyrovae 0.1.0) kept estimator state per engine, partly in
Pyro's param store; ``pyrovae.training.legacy`` reads it, so those runs evaluate, sample and
resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..files import open_regular, write_atomic
from ..model import VAE, VAEConfig, build_vae
from ..runtime import Device, resolve_device
from . import legacy
from .config import RESUMABLE

FORMAT = "pyrovae-checkpoint"
VERSION = 2
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a pyrovae checkpoint."""


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Atomically write ``state`` (plus format tags) to ``path``, every tensor in it as a CPU
    tensor (what a GPU trained is moved to the host: the file loads anywhere, with or without
    ``map_location``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = on_cpu({"format": FORMAT, "version": VERSION, **state})
    # Atomic, never through a link; a full disk an OSError, not torch's RuntimeError.
    write_atomic(path, lambda f: torch.save(state, f))


@dataclass
class Resumable:
    """What a training carries across its checkpoints beside its settings: the trained state
    (``TrainedState``), the ``Trainer`` (Adam's state and the estimator's), the shuffle's
    generator, and the device whose random stream is saved. The keys of a checkpoint are
    written (``to_checkpoint``) and read back (``restore``; ``load_checkpoint`` checks them)
    in this module alone."""

    trained: Any
    trainer: Any
    shuffle: torch.Generator
    device: torch.device

    def own_streams(self) -> Dict[str, Any]:
        """This process's random streams and estimator state: what a run of several
        processes keeps for each, in ``ranks``."""
        own = {
            "torch_rng": torch.get_rng_state(),
            "estimator": on_cpu(self.trainer.estimator.state_dict()),
        }
        if self.device.type == "cuda":
            own["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return own

    def to_checkpoint(
        self,
        progress: Dict[str, Any],
        identity: Dict[str, Any],
        metrics: List[Dict[str, Any]],
        ranks: Optional[List[Dict[str, Any]]] = None,
    ) -> Dict[str, Any]:
        """The checkpoint of this state: ``progress`` (``epoch``, ``step``,
        ``best_valid_elbo``, ``valid_elbo``), the run's ``identity`` (``model_config``,
        ``custom_model``, ``train_config``), every epoch's record so far, and, for a run of
        several processes, each one's ``own_streams`` (``ranks``)."""
        ckpt = {
            **progress,
            **identity,
            "model_state": self.trained.state_dict(),
            "producer": self.trainer.producer.name,
            "trainer_state": self.trainer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
            "metrics": list(metrics),
        }
        if self.device.type == "cuda":
            ckpt["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if ranks is not None:
            ckpt["world_size"], ckpt["ranks"] = len(ranks), ranks
        return ckpt

    def restore(self, state: Dict[str, Any], vae: Any, rank: Optional[int] = None) -> None:
        """Load a checkpoint into this state. The GPU's random stream is restored where the
        checkpoint has one and the run is on a GPU; a run resumed on another device than its
        checkpoint's restores what applies (the CPU's stream and the shuffle always). Process
        ``rank`` of several restores its own streams and estimator state
        (``state["ranks"][rank]``); 0.1.0's checkpoints are read through ``legacy``."""
        own = state if rank is None else state["ranks"][rank]
        self.trained.load_state_dict(state["model_state"])
        if state.get("version", 1) < 2:
            trainer_state = legacy.trainer_state(state, vae, self.trainer)
        else:
            trainer_state = state["trainer_state"]
        if own is not state:
            trainer_state = {**trainer_state, "estimator": own["estimator"]}
        self.trainer.load_state_dict(trainer_state)
        torch.set_rng_state(own["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in own:
            torch.cuda.set_rng_state(own["cuda_rng"], self.device)
        self.shuffle.set_state(state["shuffle_rng"])


# Reading a loaded checkpoint (``load_checkpoint``'s dict): the rest of the package asks these
# rather than indexing it, so that its keys are written and read here alone.
def position(state: Dict[str, Any]) -> Tuple[int, int, float]:
    """(epochs done, optimizer steps taken, best validation ELBO so far) of a checkpoint."""
    return state["epoch"], state["step"], state["best_valid_elbo"]


def epoch_of(state: Dict[str, Any]) -> Optional[int]:
    """The epochs a checkpoint's model was trained for (None for a foreign dict)."""
    return state.get("epoch")


def saved_metrics(state: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
    """Every epoch's record up to the checkpoint, or None where it has none (0.1.0, 0.2.0)."""
    return state.get("metrics") or None


def trained_pair(state: Dict[str, Any]) -> Optional[str]:
    """What a run of the user's own model/guide pair trained (``custom_model``), or None for a
    pyrovae VAE's run."""
    return state.get("custom_model")


def saved_world_size(state: Dict[str, Any]) -> int:
    """The number of processes that trained the checkpoint (1 without torchrun)."""
    return state.get("world_size", 1)


def load_pair_checkpoint(source: PathLike, which: str, trained: Any) -> Dict[str, Any]:
    """Load the parameters that a run of a model/guide pair of the user's own saved into
    ``trained`` (a ``TrainedState`` of that pair), from a run directory (its ``which``
    checkpoint) or a checkpoint file. Returns the checkpoint dict."""
    path = find_checkpoint(source, which)
    state = load_checkpoint(path)
    if state.get("model_config") is not None:
        raise ValueError(f"{path} holds a pyrovae VAE: load it with pyrovae.load_vae")
    trained.load_state_dict(state["model_state"])
    return state


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in its dicts, lists and tuples on the CPU (a CPU tensor is
    kept as it is, not copied)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint onto the CPU, with a clear error if it is missing, corrupt or foreign.

    On the CPU whatever the device it was written on (``map_location="cpu"``, for files
    written before checkpoints were moved to the host when saved), and whatever the device it
    will be used on: the random-number states must be CPU tensors, and the model's and the
    optimizer's tensors are copied to their device as they are loaded into them."""
    path = Path(path)
    fix = "restore it, or use the other checkpoint of the run (last.pt / best.pt)"
    try:
        # A FIFO, a device or a file larger than this machine's memory: refused unread.
        f = open_regular(path, "a checkpoint", _max_checkpoint_bytes(), fix, CheckpointError)
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint at {path}; train a model first with `pyrovae train --run-dir "
            f"{path.parent.parent if path.parent.name == 'checkpoints' else path.parent}`"
        ) from None
    try:
        with f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbled files
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:200]}); it may be "
            "truncated or corrupt: restore it, or use the other checkpoint of the run "
            "(last.pt / best.pt)"
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyrovae checkpoint")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer pyrovae (format {state['version']}); upgrade pyrovae"
        )
    _check_fields(state, path)
    return state


def _max_checkpoint_bytes() -> int:
    """The largest checkpoint worth reading: this machine's memory (``torch.load`` holds it
    all); unbounded where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What every checkpoint holds, and what a format-2 one adds (0.1.0's kept "engine_state").
_FIELDS = {
    "epoch": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "step": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "best_valid_elbo": _is_number,
    "model_config": lambda v: v is None or isinstance(v, dict),
    "train_config": lambda v: isinstance(v, dict),
    "model_state": lambda v: isinstance(v, dict),
    "torch_rng": lambda v: isinstance(v, torch.Tensor),
    "shuffle_rng": lambda v: isinstance(v, torch.Tensor),
}
_FIELDS_2 = {
    "trainer_state": lambda v: isinstance(v, dict) and {"optim", "estimator"} <= set(v),
}
# Written since the epoch commit keeps the metrics in last.pt; pyrovae 0.2.0's checkpoints,
# format 2 too, have none (resume then reads metrics.jsonl). "cuda_rng": the CUDA device's
# random-number state, in checkpoints written on one.
_OPTIONAL = {
    "metrics": lambda v: isinstance(v, list),
    "cuda_rng": lambda v: isinstance(v, torch.Tensor),
    # Written by a run of more than one process (``pyrovae.distributed``): their number, and
    # each one's random streams and estimator state, by rank (the top-level ones are rank 0's).
    "world_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
    "ranks": lambda v: isinstance(v, list) and all(_is_rank_state(r) for r in v),
}


def _is_rank_state(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and isinstance(v.get("torch_rng"), torch.Tensor)
        and isinstance(v.get("estimator"), dict)
        and isinstance(v.get("cuda_rng", torch.empty(0)), torch.Tensor)
    )


def _check_fields(state: Dict[str, Any], path: Path) -> None:
    fields = dict(_FIELDS, **(_FIELDS_2 if state.get("version", 1) >= 2 else {}))
    bad = [name for name, ok in fields.items() if name not in state or not ok(state[name])]
    bad += [name for name, ok in _OPTIONAL.items() if name in state and not ok(state[name])]
    if ("world_size" in state) != ("ranks" in state) or (
        "ranks" in state and len(state["ranks"]) != state.get("world_size")
    ):
        bad.append("ranks")
    if bad:
        raise CheckpointError(
            f"checkpoint {path} is damaged: {', '.join(bad)} missing or of the wrong type; "
            "restore it, or use the other checkpoint of the run (last.pt / best.pt)"
        )


def check_belongs(state: Dict[str, Any], path: Path, train: Any, model: Any) -> None:
    """Refuse a checkpoint that another run wrote (a file copied in by hand): its model, and
    the training settings its saved state depends on, must be the run's ``config.json``
    ones (``train``: a ``TrainConfig``; ``model``: a ``VAEConfig`` or ``None``)."""
    mine = {"model": None if model is None else model.to_dict(), **train.to_dict()}
    # Fields added since the checkpoint was written take their defaults, as in config.json.
    theirs_model = state["model_config"]
    if model is not None and isinstance(theirs_model, dict):
        theirs_model = {**type(model)().to_dict(), **theirs_model}
    theirs = {"model": theirs_model, **type(train)().to_dict(), **state["train_config"]}
    keys = [k for k in mine if k not in RESUMABLE and k != "producer"]
    differ = [k for k in keys if _comparable(mine.get(k)) != _comparable(theirs.get(k))]
    if differ:
        key = differ[0]
        raise CheckpointError(
            f"checkpoint {path} does not belong to this run: its {key} is {theirs.get(key)!r}, "
            f"config.json says {mine.get(key)!r}; restore the run's own checkpoint"
        )


def _comparable(value: Any) -> Any:
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def checkpoint_path(run_dir: PathLike, which: str = "best") -> Path:
    """``run_dir/checkpoints/{which}.pt``; ``which`` is ``best`` or ``last``."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def find_checkpoint(source: PathLike, which: str = "best") -> Path:
    """The checkpoint file of a run directory (its ``which`` one, falling back from ``best``
    to ``last``), or ``source`` itself when it is a file."""
    source = Path(source)
    if not source.exists():
        raise CheckpointError(
            f"{source} does not exist: give a run directory made by `pyrovae train`, or a "
            "checkpoint file"
        )
    if not source.is_dir():
        return source
    path = checkpoint_path(source, which)
    if not path.is_file() and which == "best":
        path = checkpoint_path(source, "last")
    if path.is_file():
        return path
    if which == "last" and checkpoint_path(source, "best").is_file():
        raise CheckpointError(
            f"{source} has no checkpoints/last.pt (best.pt is there): use --checkpoint best"
        )
    if (source / "config.json").is_file():
        raise CheckpointError(
            f"the run in {source} stopped before its first epoch ended, so it has no "
            "checkpoint yet: train it again (the same `pyrovae train` command)"
        )
    raise CheckpointError(
        f"{source} holds no checkpoint (looked for checkpoints/best.pt and last.pt); "
        "is it a run directory made by `pyrovae train`?"
    )


def load_vae(
    source: PathLike, which: str = "best", device: Device = None
) -> Tuple[VAE, Dict[str, Any]]:
    """Rebuild a trained VAE from a run directory (its ``which`` checkpoint, falling back to
    ``last``) or from a checkpoint file, on ``device`` (``pyrovae.runtime.resolve_device``:
    default ``$PYROVAE_DEVICE``, else ``auto``), whatever device trained it. Returns (vae in
    eval mode, checkpoint dict with its tensors on the CPU)."""
    device = resolve_device(device)
    path = find_checkpoint(source, which)
    state = load_checkpoint(path)
    if state.get("model_config") is None:
        raise CheckpointError(
            f"{path} holds a model/guide pair of your own ({state.get('custom_model', '?')}), "
            "not a pyrovae VAE: rebuild it in Python and load its state with "
            "pyrovae.training.load_pair_state"
        )
    try:
        config = VAEConfig.from_dict(state["model_config"])
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} holds a damaged model config: {e}") from None
    vae = build_vae(config)
    try:
        vae.load_state_dict(state["model_state"])
    except (RuntimeError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match its own model config: {' '.join(str(e).split())}"
        ) from None
    bad = [
        n for n, t in vae.state_dict().items() if t.is_floating_point() and not t.isfinite().all()
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite values ({', '.join(bad[:3])}): it is damaged "
            "(training never saves a diverged model); restore it, or use the other checkpoint"
        )
    vae.to(device).eval()
    return vae, state
