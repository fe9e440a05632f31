"""Training: one trainer (``trainer``), its configuration (``config``), run directories
(``rundir``), checkpoints (``checkpoint``) and the reading of pyrovae 0.1.0's checkpoints
(``legacy``)."""

from .checkpoint import CheckpointError, checkpoint_path, load_checkpoint, load_vae, save_checkpoint
from .config import TrainConfig, read_config, resumed_config
from .rundir import RunDirError, RunLock
from .trainer import (
    TrainedState,
    Trainer,
    TrainingDiverged,
    TrainResult,
    estimate_and_backward,
    fused_adam,
    load_pair_state,
    prepare_data,
    read_metrics,
    train,
)

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "TrainedState",
    "Trainer",
    "TrainingDiverged",
    "checkpoint_path",
    "estimate_and_backward",
    "fused_adam",
    "load_checkpoint",
    "load_pair_state",
    "load_vae",
    "prepare_data",
    "read_config",
    "read_metrics",
    "resumed_config",
    "RunDirError",
    "RunLock",
    "save_checkpoint",
    "train",
]
