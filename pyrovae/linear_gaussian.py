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
        """D, the dimension of x."""
        return self.weight.shape[0]

    @property
    def z_dim(self) -> int:
        """The dimension of z."""
        return self.weight.shape[1]

    def prior(self) -> torch.distributions.MultivariateNormal:
        """p(z) = N(prior_loc, prior_cov), event shape (Dz,)."""
        return torch.distributions.MultivariateNormal(
            self.prior_loc, covariance_matrix=self.prior_cov
        )

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

    def elbo(self, x: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
        """Closed-form ELBO of the Gaussian guide q(z|x) = N(loc, L Lᵀ), L = ``scale_tril``.

        ``x`` (..., D), ``loc`` (..., Dz), ``scale_tril`` (..., Dz, Dz) lower-triangular with a
        positive diagonal -> (...). Any Gaussian prior. ELBO = E_q log p(x|z) - KL(q ‖ p(z)) with

        E_q log p(x|z) = Σ_d -½ log 2πσ²_d - ((x_d - W_d·loc - b_d)² + ‖(W L)_d‖²) / 2σ²_d

        (‖(W L)_d‖² = W_d Σ_q W_dᵀ, the spread of W_d·z under q) and the KL between two Gaussians
        in closed form (torch's). Computed without the posterior, so that log p(x) = ELBO +
        ``kl_to_posterior`` is a check, not a definition.
        """
        resid = x - loc @ self.weight.T - self.bias  # (..., D)
        spread = (self.weight @ scale_tril).pow(2).sum(-1)  # (..., D)
        expected_ll = -0.5 * (
            torch.log(2 * math.pi * self.noise_var) + (resid**2 + spread) / self.noise_var
        ).sum(-1)
        q = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril)
        return expected_ll - torch.distributions.kl_divergence(q, self.prior())

    def elbo_diagonal(
        self, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Closed-form ELBO (``elbo``) for the guide q(z|x) = N(loc, diag(scale²)).

        ``x`` (..., D), ``loc`` and ``scale`` (..., Dz) -> (...).
        """
        return self.elbo(x, loc, torch.diag_embed(scale))

    def kl_to_posterior(
        self, x: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor
    ) -> torch.Tensor:
        """KL(q(z|x) ‖ p(z|x)) for q = N(loc, L Lᵀ), L = ``scale_tril``, in closed form: the gap
        log p(x) - ``elbo``, zero exactly when q is the posterior.

        ``x`` (..., D), ``loc`` (..., Dz), ``scale_tril`` (..., Dz, Dz) -> (...).
        """
        q = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril)
        return torch.distributions.kl_divergence(q, self.posterior(x))
