"""What every estimate of log p(x) reports beside itself: the mean over points with its standard
error, and the exact log p(x) where the model has one in closed form.

A VAE with an affine decoder, a Gaussian likelihood and a Gaussian prior is a linear-Gaussian
model (``VAE.linear_gaussian``), whose log p(x) is known exactly. Every estimator of log p(x)
(importance weighting, AIS, BDMC, the inference gap) takes it from ``exact_log_px`` here and
reports it under the same keys, ``exact_log_px`` and ``exact_log_px_stderr``, so that any
estimate of such a model can be checked against the truth whatever method made it; and
``exact_guide_gap`` says how far a trained guide falls short of it.
"""

from __future__ import annotations

import copy
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


def exact_guide_gap(vae, x: torch.Tensor, particles: int = 2000) -> Optional[torch.Tensor]:
    """How far the guide of a linear-Gaussian ``vae`` falls short of its model's exact log p(x):
    exact log p(x) - ELBO for each row of ``x`` (n, x_dim), that is KL(q(z | x) ‖ p(z | x)),
    (n,) float64 on the CPU; ``None`` where the model is not linear-Gaussian.

    In closed form for the Gaussian families, diagonal and full-rank (``LinearGaussian.elbo``:
    no Monte Carlo at all); for any other family the ELBO is the mean log weight of
    ``particles`` draws per point (500 at a time). Computed on a float64 copy of ``vae``.
    """
    if getattr(vae, "linear_gaussian", lambda: None)() is None:
        return None
    vae = copy.deepcopy(vae).double()
    truth = vae.linear_gaussian()
    x = x.to(device=truth.weight.device, dtype=torch.float64)
    with torch.no_grad():
        q = vae.guide_family(vae.encoder(x))
        if isinstance(q, torch.distributions.MultivariateNormal):
            elbo = truth.elbo(x, q.loc, q.scale_tril)
        elif isinstance(q, torch.distributions.Independent) and isinstance(
            q.base_dist, torch.distributions.Normal
        ):
            elbo = truth.elbo_diagonal(x, q.base_dist.loc, q.base_dist.scale)
        else:
            sizes = [min(500, particles - lo) for lo in range(0, particles, 500)]
            total = sum(vae.particles(x, None, k, None).log_w.sum(0) for k in sizes)
            elbo = total / particles
    return (truth.log_marginal(x) - elbo).cpu()
