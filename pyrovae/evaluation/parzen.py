"""Kernel density (Parzen window) estimates of log p(x) from a model's samples.

The estimate the GAN literature reported for models without a likelihood: put an isotropic
Gaussian of bandwidth h on each of S samples from the model and score test points under that
mixture,

    log p̂(x) = logsumexp_s [−‖x − x_s‖² / (2h²)] − log S − (D/2) log(2π h²),

with h chosen to maximize the same score on validation points. Theis, van den Oord & Bethge
(2016) showed it misleads in high dimensions: with any feasible S it sits far from the model's
log-likelihood, and can rank models wrongly. pyrovae computes it to show by how much, against
the importance-weighted and AIS estimates of the same model (``experiments/parzen.py``). Pyro
and torch have no batched KDE; this is one matrix multiply per chunk of points.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

__all__ = ["parzen_log_likelihood", "choose_bandwidth"]

# Elements of the (points × samples) distance matrix computed at once: bounds the memory.
_CHUNK_ELEMENTS = 2**24


def parzen_log_likelihood(samples: torch.Tensor, x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """log p̂(x) of each row of ``x`` (N, D) under the Gaussian kernel density of ``samples``
    (S, D) with bandwidth ``bandwidth`` (> 0); (N,), in float64, nats."""
    if samples.dim() != 2 or x.dim() != 2 or samples.shape[1] != x.shape[1]:
        raise ValueError(f"samples (S, D) and x (N, D) must share D; got "
                         f"{tuple(samples.shape)} and {tuple(x.shape)}")  # fmt: skip
    if not bandwidth > 0:
        raise ValueError(f"the bandwidth must be positive, got {bandwidth}")
    samples, x = samples.to(torch.float64), x.to(torch.float64)
    s, d = samples.shape
    norms = samples.pow(2).sum(1)
    rows = max(1, _CHUNK_ELEMENTS // s)
    out = []
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows]
        # ‖x − x_s‖² = ‖x‖² − 2 x·x_s + ‖x_s‖², clamped at 0 against rounding.
        dist2 = (chunk.pow(2).sum(1, keepdim=True) - 2 * chunk @ samples.T + norms).clamp_min(0)
        out.append(torch.logsumexp(-dist2 / (2 * bandwidth**2), 1))
    log_norm = math.log(s) + 0.5 * d * math.log(2 * math.pi * bandwidth**2)
    return torch.cat(out) - log_norm


def choose_bandwidth(
    samples: torch.Tensor, valid: torch.Tensor, grid: Sequence[float]
) -> Tuple[float, Dict[float, float]]:
    """The bandwidth of ``grid`` whose kernel density of ``samples`` (S, D) gives the highest
    mean log p̂ on ``valid`` (N, D), and every grid point's mean score."""
    scores = {float(h): parzen_log_likelihood(samples, valid, h).mean().item() for h in grid}
    return max(scores, key=scores.get), scores
