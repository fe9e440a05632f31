"""Checkpoints: everything needed to rebuild a VAE and to resume its training exactly.

A checkpoint is a ``torch.save``d dict of tensors and plain values (loaded with
``weights_only=True``, so loading one cannot run code). It is written to a temporary file and
renamed into place, so a crash while saving never destroys the previous checkpoint.

Format 2 (pyrovae 0.2) holds the model's state, the estimator's state (its module's
``state_dict``: baselines) and the optimizer's, whichever producer trained it, so a run resumes
with either producer. Format 1 (pyrovae 0.1.0) kept estimator state per engine, partly in
Pyro's param store; ``pyrovae.training.legacy`` reads it, so those runs evaluate, sample and
resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from ..model import VAE, VAEConfig, build_vae

FORMAT = "pyrovae-checkpoint"
VERSION = 2
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not a pyrovae checkpoint."""


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Atomically write ``state`` (plus format tags) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half a checkpoint behind


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint, with a clear error if it is missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; train a model first with `pyrovae train --run-dir "
            f"{path.parent.parent if path.parent.name == 'checkpoints' else path.parent}`"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    return state


def checkpoint_path(run_dir: PathLike, which: str = "best") -> Path:
    """``run_dir/checkpoints/{which}.pt``; ``which`` is ``best`` or ``last``."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    return Path(run_dir) / "checkpoints" / f"{which}.pt"


def find_checkpoint(source: PathLike, which: str = "best") -> Path:
    """The checkpoint file of a run directory (its ``which`` one, falling back from ``best``
    to ``last``), or ``source`` itself when it is a file."""
    source = Path(source)
    if not source.is_dir():
        return source
    path = checkpoint_path(source, which)
    if not path.is_file() and which == "best":
        path = checkpoint_path(source, "last")
    if not path.is_file():
        raise CheckpointError(
            f"{source} holds no checkpoint (looked for checkpoints/best.pt and last.pt); "
            "is it a run directory made by `pyrovae train`?"
        )
    return path


def load_vae(source: PathLike, which: str = "best") -> Tuple[VAE, Dict[str, Any]]:
    """Rebuild a trained VAE from a run directory (its ``which`` checkpoint, falling back to
    ``last``) or from a checkpoint file. Returns (vae in eval mode, checkpoint dict)."""
    path = find_checkpoint(source, which)
    state = load_checkpoint(path)
    if state.get("model_config") is None:
        raise CheckpointError(
            f"{path} holds a model/guide pair of your own ({state.get('custom_model', '?')}), "
            "not a pyrovae VAE: rebuild it in Python and load its state with "
            "pyrovae.training.load_pair_state"
        )
    vae = build_vae(VAEConfig.from_dict(state["model_config"]))
    try:
        vae.load_state_dict(state["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its own model config: {e}") from e
    vae.eval()
    return vae, state
