"""Shared builders for tests: linear-Gaussian models whose answers are known exactly."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from pyrovae import LinearGaussian, VAEConfig, build_vae


def random_truth(x_dim: int, z_dim: int, seed: int) -> LinearGaussian:
    """A random linear-Gaussian model (float64) with per-dimension noise."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
    bias = torch.randn(x_dim, generator=g, dtype=torch.float64)
    noise_var = 0.3 + torch.rand(x_dim, generator=g, dtype=torch.float64)
    return LinearGaussian.standard(weight, bias, noise_var)


def linear_vae(truth: LinearGaussian):
    """A float64 VAE whose model is exactly ``truth`` (linear decoder, learned-variance Gaussian
    likelihood) with a linear encoder, so the diagonal guide can be set in closed form."""
    cfg = VAEConfig(
        x_dim=truth.x_dim,
        z_dim=truth.z_dim,
        encoder="linear",
        decoder="linear",
        likelihood="gaussian-learned",
    )
    vae = build_vae(cfg).double()
    with torch.no_grad():
        dec = vae.decoder[0]
        dec.weight.copy_(truth.weight)
        dec.bias.copy_(truth.bias)
        vae.likelihood.log_scale.copy_(0.5 * truth.noise_var.log())
    return vae


def set_mean_field_guide(vae, truth: LinearGaussian, inflate: float = 1.0) -> None:
    """Set the linear encoder to the posterior mean and the mean-field optimal scales
    1/sqrt(Λ_ii) (Λ the posterior precision), multiplied by ``inflate``."""
    zd = truth.z_dim
    w_scaled = truth.weight / truth.noise_var.unsqueeze(-1)  # (D, Dz)
    precision = torch.eye(zd, dtype=torch.float64) + truth.weight.T @ w_scaled
    cov = torch.linalg.inv(precision)
    gain = w_scaled @ cov  # posterior mean = (x - b) @ gain
    with torch.no_grad():
        enc = vae.encoder[0]
        enc.weight.zero_()
        enc.weight[:zd] = gain.T
        enc.bias[:zd] = -(truth.bias @ gain)
        enc.bias[zd:] = math.log(inflate) - 0.5 * torch.diagonal(precision).log()


def guide_params(vae, x):
    """(loc, scale) of the VAE's diagonal guide at ``x``: (B, Dz) each."""
    loc, log_scale = vae.encoder(x).split(vae.z_dim, -1)
    return loc, log_scale.exp()


def exact_posterior_guide(truth: LinearGaussian):
    """A Pyro guide drawing z from the exact posterior p(z | x) (full covariance)."""

    def guide(x, num_data=None):
        post = truth.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(post.loc, scale_tril=post.scale_tril))

    return guide


def mean_and_stderr(values: torch.Tensor, dim: int = 0):
    """Mean and standard error of the mean along ``dim``."""
    n = values.shape[dim]
    return values.mean(dim), values.std(dim) / math.sqrt(n)


def imperfect_linear_vae(seed: int = 5, z_dim: int = 2):
    """A linear-Gaussian VAE (x 3-D) with a deliberately imperfect guide, so that every
    gradient is nonzero, and a batch of 4 points from its model: (vae, x)."""
    truth = random_truth(3, z_dim, seed)
    x = truth.sample(4, torch.Generator().manual_seed(3))
    vae = linear_vae(truth)
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        for p in vae.encoder.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return vae, x


def gradient_draws(vae, x, est, repeats: int, producer: str = "auto"):
    """``repeats`` independent gradient estimates of minus the objective summed over ``x``'s
    points, each as a training step computes it (``estimate_and_backward``): (repeats, P)."""
    from pyrovae.producers import make_producer
    from pyrovae.training import estimate_and_backward

    route = make_producer(vae, producer)
    est.prepare(x)
    out = []
    for _ in range(repeats):
        for p in vae.parameters():
            p.grad = None
        estimate_and_backward(route, est, x, None)
        out.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).clone()
                    for p in vae.parameters()
                ]
            )
        )
    return torch.stack(out)
