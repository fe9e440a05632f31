"""Reparameterized estimators of the ELBO: pathwise, analytic KL, sticking the landing.

Each averages ``num_particles`` particles per data point and differentiates through z; they
differ in how the gradient is formed:

- ``pathwise``: E_q[log p(x, z) - log q(z | x)] by Monte Carlo, differentiated through
  z = g(ε, φ); the number Pyro's ``Trace_ELBO`` computes.
- ``analytic-kl``: E_q[log p(x | z)] by Monte Carlo and KL(q(z | x) ‖ p(z)) in closed form where
  torch registers one, as Pyro's ``TraceMeanField_ELBO``.
- ``stl``: "sticking the landing" (Roeder et al., 2017): pathwise with the score term
  ∇_φ log q_φ(z)|_z dropped. Its expectation is the ELBO gradient (the dropped term has mean
  zero), and when q is the exact posterior its guide gradient is zero for every sample. Pyro's
  ELBOs have no way to drop that term.

Each reports the ELBO and, under KL warm-up (``Particles.kl_weight`` β < 1), differentiates
E_q[log p(x | z)] - β KL(q ‖ p) instead.
"""

from __future__ import annotations

import torch

from . import ESTIMATORS
from .base import Estimator, Output


@ESTIMATORS.register("pathwise")
class Pathwise(Estimator):
    """Reparameterized Monte Carlo ELBO with a Monte Carlo KL."""

    supports_warmup = True
    takes_global_latents = True
    takes_enumerated = True
    gradient = "pathwise (reparameterized z)"

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        c = -p.scale / p.num_particles
        loss = p.log_w.sum() * c
        return loss, (loss if p.kl_weight == 1.0 else p.weighted_log_w.sum() * c)


@ESTIMATORS.register("analytic-kl")
class AnalyticKL(Estimator):
    """Reparameterized ELBO with KL(q ‖ p) in closed form where torch registers it (Gaussian
    guide and prior), Monte Carlo elsewhere."""

    supports_warmup = True
    takes_enumerated = True
    gradient = "pathwise on E_q[log p(x|z)], closed-form KL"

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        c = -p.scale / p.num_particles
        loss = (p.log_lik - p.kl).sum() * c
        if p.kl_weight == 1.0:
            return loss, loss
        return loss, (p.log_lik - p.kl_weight * p.kl).sum() * c


@ESTIMATORS.register("stl")
class StickingTheLanding(Estimator):
    """ "Sticking the landing": pathwise with the score term of q dropped."""

    supports_warmup = True
    takes_global_latents = True
    takes_enumerated = True
    gradient = "pathwise with the score term of q dropped (sticking the landing)"

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        c = -p.scale / p.num_particles
        loss = (p.log_p - p.log_q_stopped).sum() * c
        if p.kl_weight == 1.0:
            return loss, loss
        weighted = torch.add(p.log_lik, p.log_prior - p.log_q_stopped, alpha=p.kl_weight)
        return loss, weighted.sum() * c
