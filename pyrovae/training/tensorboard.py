"""Live training curves where PyTorch users already watch them: TensorBoard.

``pyrovae train --tensorboard`` (``train(..., tensorboard=True)``) writes, after each epoch's
commit, the epoch's record as scalars (the training and validation ELBO, the learning rate,
the KL weight during warm-up, the validation classification error of a program that
classifies, the epoch's seconds) and, for the library's VAE on images, a grid of 64 samples
E[x | z], z ~ p(z), to ``RUN_DIR/tensorboard``. ``tensorboard --logdir RUN_DIR/tensorboard``
shows them as they come; a resumed run appends to the same folder. TensorBoard is an optional
dependency (``pip install 'pyrovae[tensorboard]'``); asked for without it, training is
refused before it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

# The record's fields written as scalars, where the epoch has them.
SCALARS = ("train_elbo", "valid_elbo", "lr", "kl_weight", "valid_error", "train_seconds")
SAMPLES = 64


def require_tensorboard() -> None:
    """Refuse ``--tensorboard`` where the tensorboard package is missing (a ``ValueError`` that
    says how to install it), before anything is written."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:  # torch's module needs the tensorboard package
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or "
            "pip install 'pyrovae[tensorboard]'), or train without --tensorboard"
        ) from e


class TensorBoardLog:
    """Each epoch's record as TensorBoard scalars (and a sample grid) under ``log_dir``.

    Args:
        log_dir: the event files' folder (``RUN_DIR/tensorboard``).
        sampler: returns (N, D) images in [0, 1] to show each epoch, or None for none.
        image_shape: their shape, (C, H, W) or (H, W).
    """

    def __init__(
        self,
        log_dir: Path,
        sampler: Optional[Callable[[], torch.Tensor]] = None,
        image_shape: Optional[Tuple[int, ...]] = None,
    ) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.sampler, self.image_shape = sampler, image_shape

    def __call__(self, epoch: int, record: Dict[str, Any]) -> None:
        """Write epoch ``epoch``'s record (and samples) and flush, so a watcher sees it now."""
        for key in SCALARS:
            if isinstance(record.get(key), (int, float)):
                self.writer.add_scalar(key, record[key], epoch)
        if self.sampler is not None and self.image_shape is not None:
            images = self.sampler().detach().float().clamp(0, 1).cpu()
            shape = tuple(self.image_shape)
            shape = shape if len(shape) == 3 else (1, *shape)
            self.writer.add_images("samples", images.reshape(-1, *shape), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def vae_sampler(vae: Any) -> Callable[[], torch.Tensor]:
    """``SAMPLES`` draws E[x | z], z ~ p(z) of the library's VAE, without gradients."""

    def draw() -> torch.Tensor:
        with torch.no_grad():
            return vae.sample(SAMPLES)

    return draw
