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
"""

from __future__ import annotations

from . import ESTIMATORS
from .base import Estimator, Output


@ESTIMATORS.register("pathwise")
class Pathwise(Estimator):
    """Reparameterized Monte Carlo ELBO with a Monte Carlo KL."""

    gradient = "pathwise (reparameterized z)"

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        loss = p.log_w.sum() * (-p.scale / p.num_particles)
        return loss, loss


@ESTIMATORS.register("analytic-kl")
class AnalyticKL(Estimator):
    """Reparameterized ELBO with KL(q ‖ p) in closed form where torch registers it (Gaussian
    guide and prior), Monte Carlo elsewhere."""

    gradient = "pathwise on E_q[log p(x|z)], closed-form KL"

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        loss = (p.log_lik - p.kl).sum() * (-p.scale / p.num_particles)
        return loss, loss


@ESTIMATORS.register("stl")
class StickingTheLanding(Estimator):
    """ "Sticking the landing": pathwise with the score term of q dropped."""

    gradient = "pathwise with the score term of q dropped (sticking the landing)"

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        loss = (p.log_p - p.log_q_stopped).sum() * (-p.scale / p.num_particles)
        return loss, loss
