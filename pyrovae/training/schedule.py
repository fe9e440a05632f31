"""Training schedules: the learning rate per epoch and the KL warm-up weight per step.

- Learning rate (``lr_schedule``): ``constant``; ``iwae``, the IWAE paper's (Burda et al.,
  2015): stages i = 0, 1, 2, ... of 3^i epochs at ``lr`` · 10^(-i/7), 3,280 epochs for
  i = 0..7; ``cosine``: from ``lr`` down to 0 along half a cosine over the run's epochs.
- KL warm-up (``warmup`` epochs, Bowman et al., 2016; Sønderby et al., 2016): the weight β on
  the prior-to-guide term of the objective the estimator differentiates rises linearly, step by
  step, from 0 to 1 over the first ``warmup`` epochs (``Particles.kl_weight``). What is
  reported and validated is always the true ELBO.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "iwae", "cosine")


def iwae_stage(epoch: int) -> int:
    """The IWAE schedule's stage i of ``epoch`` (1-based): stage i holds 3^i epochs."""
    i, end = 0, 1
    while epoch > end:
        i += 1
        end += 3**i
    return i


def learning_rate(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (1-based) of a run of ``epochs`` under ``schedule``.

    >>> learning_rate(1e-3, "iwae", 5, 3280) == 1e-3 * 10 ** (-2 / 7)
    True
    """
    if schedule == "constant":
        return lr
    if schedule == "iwae":
        return lr * 10 ** (-iwae_stage(epoch) / 7)
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")


def kl_weight(step: int, warmup: int, steps_per_epoch: int) -> float:
    """β for training step ``step`` (0-based, counted over the whole run): step / (warmup ·
    steps_per_epoch), capped at 1; 1 when ``warmup`` is 0."""
    if warmup <= 0:
        return 1.0
    return min(1.0, step / (warmup * steps_per_epoch))
