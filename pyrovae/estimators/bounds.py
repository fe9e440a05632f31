"""Estimators of the K-sample importance-weighted bound, per data point.

    L_K(x) = E[log (1/K) Σ_k p(x, z_k) / q(z_k | x)],   z_1..K ~ q(z | x)   (Burda et al., 2015)

summed over the batch and scaled by N / B. Under KL warm-up (``Particles.kl_weight`` β < 1)
the bound reported stays this one, and the gradient is that of the same bound over the weights
p(x | z) (p(z) / q(z | x))^β. Three gradients:

- ``iwae``: reparameterized, autograd of the bound.
- ``dreg``: doubly reparameterized (Tucker et al., 2018): the decoder's gradient is IWAE's, the
  guide's Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ with normalized weights w̃ and the score term dropped.
  Zero guide gradient when q is the posterior; its signal-to-noise ratio does not decay as K
  grows. Written for one latent layer.
- ``vimco``: score function with leave-one-out control variates (Mnih & Rezende, 2016), for
  latents that cannot be reparameterized.

Why not Pyro's ``RenyiELBO(alpha=0)``: without subsampling its loss is this bound (it keeps the
data plate, ``get_dependent_plate_dims``), but under subsampling it applies the N / B scale
inside the exponential, log (1/K) Σ_k w_k^(N/B), which is not N / B times the bound
(``tests/test_pyro_agreement.py`` checks both). It also has no DReG or VIMCO gradient.
"""

from __future__ import annotations

import math

import torch

from ..particles import NotApplicable
from . import ESTIMATORS
from .base import BOUND_OBJECTIVE, Estimator, Output, k_sample_bound


@ESTIMATORS.register("iwae")
class IWAE(Estimator):
    """The K-sample bound with its reparameterized gradient."""

    supports_warmup = True
    takes_enumerated = True
    objective = BOUND_OBJECTIVE
    gradient = "reparameterized (IWAE)"
    default_particles = 5

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        # (the guide's enumerated sites summed in each weight: log_w_summed)
        loss = k_sample_bound(p.log_w_summed).sum() * -p.scale
        if p.kl_weight == 1.0:
            return loss, loss
        if p.enumerated:
            raise NotApplicable(
                "KL warm-up with iwae is not defined where the guide enumerates "
                f"{', '.join(p.enumerated)}: train without warm-up, or with pathwise"
            )
        return loss, k_sample_bound(p.weighted_log_w).sum() * -p.scale


@ESTIMATORS.register("dreg")
class DReG(Estimator):
    """The K-sample bound with the doubly reparameterized gradient."""

    supports_warmup = True
    objective = BOUND_OBJECTIVE
    gradient = "doubly reparameterized (DReG)"
    default_particles = 5

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        if len(p.latents) != 1:
            raise NotApplicable(
                f"DReG is written for one latent layer; this guide has {sorted(p.latents)}"
            )
        log_w = p.log_p - p.log_q_stopped  # the value of log w; φ reaches it through z only
        loss = k_sample_bound(log_w).sum() * -p.scale
        if p.kl_weight != 1.0:  # warm-up: the weights of the weighted bound
            log_w = torch.add(p.log_lik, p.log_prior - p.log_q_stopped, alpha=p.kl_weight)
        weights = torch.softmax(log_w.detach(), 0)  # (K, B)
        # Σ_k w̃_k log w_k gives the decoder IWAE's gradient and the guide w̃_k ∂log w_k/∂z_k;
        # scaling the gradient arriving at each z_k by w̃_k once more makes that w̃_k².
        for z in p.latents.values():
            if z.requires_grad:
                w = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
                z.register_hook(lambda g, w=w: g * w)
        return loss, (weights * log_w).sum() * -p.scale


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """VIMCO's L̂_{-k} for each particle k: the bound with log w_k replaced by the mean of the
    other particles' log weights, (K, B) from log weights (K, B)."""
    k = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (K, B)
    # Row k of the (K, K, B) stack is log_w with entry k replaced by others_mean[k].
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device).unsqueeze(-1)
    stacked = torch.where(eye, others_mean.unsqueeze(1), log_w.unsqueeze(0))
    return torch.logsumexp(stacked, 1) - math.log(k)


@ESTIMATORS.register("vimco")
class VIMCO(Estimator):
    """The K-sample bound with VIMCO's gradient: with L̂ the bound and L̂_{-k} its leave-one-out
    version, Σ_k (L̂ - L̂_{-k}) ∇ log q(z_k) + Σ_k w̃_k ∇ log w_k (z held fixed). K ≥ 2."""

    supports_warmup = True
    objective = BOUND_OBJECTIVE
    gradient = "score function with leave-one-out control variates (VIMCO)"
    reparameterized = False
    default_particles = 5
    min_particles = 2

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        # z is not reparameterized: gradients reach the parameters directly
        loss = k_sample_bound(p.log_w).sum() * -p.scale
        log_w = p.weighted_log_w
        bound = k_sample_bound(log_w)  # (B,)
        with torch.no_grad():
            signal = bound.unsqueeze(0) - leave_one_out_bounds(log_w)  # (K, B)
        return loss, bound.sum() * -p.scale - p.scale * (signal * p.log_q).sum()
