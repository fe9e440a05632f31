"""Probabilistic PCA fitted by maximum likelihood: in closed form, and by EM.

Probabilistic PCA (Tipping & Bishop, 1999) is the linear-Gaussian model z ~ N(0, I_q),
x | z ~ N(W z + μ, σ² I_D): a VAE with a linear decoder, an isotropic Gaussian likelihood and
the exact posterior as its guide. Its log-likelihood has a closed-form maximum: μ the sample
mean, σ² the mean of the D − q smallest eigenvalues of the sample covariance S, and
W = U_q (Λ_q − σ² I)^½ from the q largest, so that the maximum is

    −N/2 (D log 2π + Σ_{j≤q} log λ_j + (D − q) log σ² + D).

EM reaches the same maximum by coordinate ascent on the ELBO, whose E-step is the exact
posterior (so each step raises log p(x), never lowers it). Both return a
:class:`~pyrovae.LinearGaussian`, whose ``log_marginal`` is exact: the classical baseline a
VAE's log p(x) is compared against. Pyro has no PPCA; these are a few lines of linear algebra on
the sample covariance.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .linear_gaussian import LinearGaussian

__all__ = ["ppca_maximum", "ppca_em", "ppca_max_log_likelihood"]


def _moments(x: torch.Tensor, q: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sample mean (D,) and covariance (D, D) of ``x`` (N, D), in float64."""
    if x.dim() != 2 or not 0 < q < x.shape[1]:
        raise ValueError(f"ppca needs x of shape (N, D) and 0 < q < D; got {tuple(x.shape)}, q={q}")
    x = x.to(torch.float64)
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / x.shape[0]


def _model(weight: torch.Tensor, mean: torch.Tensor, noise_var: float) -> LinearGaussian:
    return LinearGaussian.standard(weight, mean, torch.full_like(mean, noise_var))


def ppca_maximum(x: torch.Tensor, q: int) -> LinearGaussian:
    """The maximum-likelihood PPCA model of ``x`` (N, D) with ``q`` latent dimensions, in
    closed form (W up to a rotation of z, which leaves p(x) unchanged). float64."""
    mean, cov = _moments(x, q)
    eigenvalues, vectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
    noise_var = eigenvalues[q:].mean().item()
    scales = (eigenvalues[:q] - noise_var).clamp_min(0).sqrt()
    return _model(vectors[:, :q] * scales, mean, noise_var)


def ppca_max_log_likelihood(x: torch.Tensor, q: int) -> float:
    """The closed-form maximum of Σ_n log p(x_n) over PPCA models with ``q`` latents, divided
    by N: the mean log-likelihood the maximum-likelihood model reaches on ``x`` (N, D)."""
    _, cov = _moments(x, q)
    eigenvalues = torch.linalg.eigvalsh(cov).flip(0)
    d = cov.shape[0]
    noise_var = eigenvalues[q:].mean()
    log_det = eigenvalues[:q].log().sum() + (d - q) * noise_var.log()
    return -0.5 * (d * math.log(2 * math.pi) + log_det.item() + d)


def ppca_em(
    x: torch.Tensor,
    q: int,
    steps: int = 100,
    seed: int = 0,
    weight: Optional[torch.Tensor] = None,
    noise_var: float = 1.0,
) -> Tuple[LinearGaussian, List[float]]:
    """PPCA fitted to ``x`` (N, D) by ``steps`` EM steps from ``weight`` (D, q; default a
    seeded random draw) and ``noise_var``. Returns the model and the mean log-likelihood of
    ``x`` before each step and after the last (``steps + 1`` values, never decreasing).

    Each step is Tipping & Bishop's, on the sample covariance S (so a step costs O(D² q), not
    O(N D q)): with M = Wᵀ W + σ² I, W ← S W (σ² I + M⁻¹ Wᵀ S W)⁻¹ and
    σ² ← tr(S − S W M⁻¹ W_newᵀ) / D.
    """
    mean, cov = _moments(x, q)
    d = cov.shape[0]
    if weight is None:
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(d, q, generator=g, dtype=torch.float64)
    weight = weight.to(torch.float64)
    history = []
    eye = torch.eye(q, dtype=torch.float64)
    for _ in range(steps):
        history.append(_mean_log_likelihood(cov, weight, noise_var))
        m_inv = torch.linalg.inv(weight.T @ weight + noise_var * eye)
        sw = cov @ weight
        new = sw @ torch.linalg.inv(noise_var * eye + m_inv @ weight.T @ sw)
        noise_var = (torch.trace(cov) - torch.trace(sw @ m_inv @ new.T)).item() / d
        weight = new
    history.append(_mean_log_likelihood(cov, weight, noise_var))
    return _model(weight, mean, noise_var), history


def _mean_log_likelihood(cov: torch.Tensor, weight: torch.Tensor, noise_var: float) -> float:
    """(1/N) Σ_n log N(x_n; μ, W Wᵀ + σ² I) at the sample mean μ, from the covariance S alone:
    −½ (D log 2π + log det C + tr(C⁻¹ S))."""
    c = weight @ weight.T + noise_var * torch.eye(cov.shape[0], dtype=cov.dtype)
    chol = torch.linalg.cholesky(c)
    log_det = 2 * chol.diagonal().log().sum()
    trace = torch.cholesky_solve(cov, chol).diagonal().sum()
    return -0.5 * (cov.shape[0] * math.log(2 * math.pi) + log_det + trace).item()
