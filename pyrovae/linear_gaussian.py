"""Closed-form truth for linear-Gaussian latent models.

The model ``z ~ N(m, S)``, ``x | z ~ N(W z + b, diag(noise_var))`` has a Gaussian marginal and a
Gaussian posterior. These are the exact answers our estimators are tested against, and what
``pyrovae evaluate`` reports beside the importance-weighted estimate for any trained VAE with a
linear decoder, a Gaussian likelihood and a Gaussian prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LinearGaussian:
    """``z ~ N(prior_loc, prior_cov)``, ``x | z ~ N(weight @ z + bias, diag(noise_var))``.

    Shapes: ``weight`` (D, Dz), ``bias`` (D,), ``noise_var`` (D,), ``prior_loc`` (Dz,),
    ``prior_cov`` (Dz, Dz).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    noise_var: torch.Tensor
    prior_loc: torch.Tensor
    prior_cov: torch.Tensor

    @classmethod
    def standard(cls, weight, bias, noise_var) -> "LinearGaussian":
        """The model with a standard-normal prior over z."""
        z_dim = weight.shape[-1]
        return cls(
            weight,
            bias,
            noise_var,
            weight.new_zeros(z_dim),
            torch.eye(z_dim, dtype=weight.dtype, device=weight.device),
        )

    @property
    def x_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def z_dim(self) -> int:
        return self.weight.shape[1]

    def marginal(self) -> torch.distributions.MultivariateNormal:
        """p(x) = N(W m + b, W S Wᵀ + diag(noise_var)), event shape (D,)."""
        loc = self.weight @ self.prior_loc + self.bias
        cov = self.weight @ self.prior_cov @ self.weight.T + torch.diag(self.noise_var)
        return torch.distributions.MultivariateNormal(loc, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x); ``x`` (..., D) -> (...)."""
        return self.marginal().log_prob(x)

    def posterior(self, x: torch.Tensor) -> torch.distributions.MultivariateNormal:
        """Exact p(z | x); ``x`` (..., D) -> distribution with batch shape (...), event (Dz,).

        Precision Λ = S⁻¹ + Wᵀ diag(1/noise_var) W, mean Λ⁻¹ (S⁻¹ m + Wᵀ (x - b) / noise_var).
        """
        prior_prec = torch.linalg.inv(self.prior_cov)
        w_scaled = self.weight / self.noise_var.unsqueeze(-1)  # (D, Dz)
        precision = prior_prec + self.weight.T @ w_scaled
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        rhs = prior_prec @ self.prior_loc + (x - self.bias) @ w_scaled  # (..., Dz)
        loc = rhs @ cov  # cov is symmetric
        return torch.distributions.MultivariateNormal(loc, covariance_matrix=cov)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of x, shape (n, D)."""
        chol = torch.linalg.cholesky(self.prior_cov)
        eps_z = torch.randn(n, self.z_dim, generator=generator, dtype=self.weight.dtype)
        z = self.prior_loc + eps_z @ chol.T
        eps_x = torch.randn(n, self.x_dim, generator=generator, dtype=self.weight.dtype)
        return z @ self.weight.T + self.bias + eps_x * self.noise_var.sqrt()

    def elbo_diagonal(
        self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Closed-form ELBO for the guide q(z|x) = N(loc, diag(scale²)) under a standard prior.

        ``x`` (..., D), ``loc`` and ``scale`` (..., Dz) -> (...). Requires the standard-normal
        prior (``prior_loc`` 0, ``prior_cov`` I).
        E_q log p(x|z) = Σ_d -½ log 2πσ²_d - ((x_d - W_d·loc - b_d)² + Σ_j W²_dj scale²_j) / 2σ²_d,
        KL(q ‖ N(0, I)) = ½ Σ_j (scale²_j + loc²_j - 1 - log scale²_j).
        """
        resid = x - loc @ self.weight.T - self.bias
        spread = (scale**2) @ (self.weight**2).T
        expected_ll = -0.5 * (
            torch.log(2 * math.pi * self.noise_var) + (resid**2 + spread) / self.noise_var
        ).sum(-1)
        kl = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).sum(-1)
        return expected_ll - kl
