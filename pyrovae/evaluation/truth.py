"""What every estimate of log p(x) reports beside itself: the mean over points with its standard
error, and the exact log p(x) where the model has one in closed form.

A VAE with an affine decoder, a Gaussian likelihood and a Gaussian prior is a linear-Gaussian
model (``VAE.linear_gaussian``), whose log p(x) is known exactly. Every estimator of log p(x)
(importance weighting, AIS, BDMC, the inference gap) takes it from ``exact_log_px`` here and
reports it under the same keys, ``exact_log_px`` and ``exact_log_px_stderr``, so that any
estimate of such a model can be checked against the truth whatever method made it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple, TypeVar

import torch

R = TypeVar("R")


def mean_stderr(values: torch.Tensor) -> Tuple[float, float]:
    """The mean of per-point values (n,) and the standard error of that mean over the points
    (NaN for one point), in float64."""
    values = values.double()
    n = values.numel()
    stderr = values.std().item() / math.sqrt(n) if n > 1 else math.nan
    return values.mean().item(), stderr


def exact_log_px(vae, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The exact log p(x) of each row of ``x`` (n, x_dim) under ``vae``'s model, (n,) float64
    on the CPU, computed in float64 (rows 4096 at a time); ``None`` where the model is not
    linear-Gaussian (``vae.linear_gaussian()`` is None, or ``vae`` has no such method: a
    model/guide pair of the user's own)."""
    find = getattr(vae, "linear_gaussian", None)
    truth = find() if find is not None else None
    if truth is None:
        return None
    fields = (truth.weight, truth.bias, truth.noise_var, truth.prior_loc, truth.prior_cov)
    truth64 = type(truth)(*(t.double() for t in fields))
    rows = x.to(device=truth.weight.device, dtype=torch.float64).reshape(x.shape[0], -1)
    return torch.cat([truth64.log_marginal(part) for part in rows.split(4096)]).cpu()


def with_exact_log_px(result: R, vae, x: torch.Tensor) -> R:
    """``result`` (a dataclass with fields ``exact_log_px`` and ``exact_log_px_stderr``: an
    evaluation's result on the points ``x``) with them set to the mean exact log p(x) of the
    points and its standard error, where ``vae`` has one (``exact_log_px``); else unchanged."""
    exact = exact_log_px(vae, x)
    if exact is None:
        return result
    mean, stderr = mean_stderr(exact)
    return dataclasses.replace(result, exact_log_px=mean, exact_log_px_stderr=stderr)
