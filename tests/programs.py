"""Pyro programs written the ways Pyro users write them, for the tests of issue 26: each a
model and a guide of a linear-Gaussian VAE (so that log p(x) is exact and the exact posterior
is the guide), in one of the common styles:

- ``nested``: the pixels as a plate nested inside the data plate (``max_plate_nesting = 2``);
- ``beta``: ``poutine.scale`` on z alone in the model and the guide (KL annealing);
- ``scale``: the whole program under ``poutine.scale`` (a loss in nats per data point, say);
- ``subsample``: the data plate draws ``subsample_size`` points of the batch it is given;
- ``masked``: the likelihood indexed by a (B, D) mask, ``x[mask]``, as code written for
  ``Trace_ELBO`` may do (it does not broadcast over a particle dimension).

With ``exact=True`` the guide is the exact posterior, so every log weight is log p(x).
"""

import math
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample, pyro_method
from torch import nn


class LinearGaussianProgram(nn.Module):
    """z ~ N(0, I_d), x | z ~ N(W z + b, σ² I_D); the guide N(A x + c, L Lᵀ), or with
    ``exact`` the exact posterior N(S Wᵀ (x - b) / σ², S), S = (I + WᵀW / σ²)⁻¹."""

    def __init__(self, x_dim=5, z_dim=2, exact=False, nested=False, beta=1.0, scale=1.0,
                 subsample: Optional[int] = None, masked=False, seed=0):  # fmt: skip
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x_dim, self.z_dim, self.exact = x_dim, z_dim, exact
        self.nested, self.beta, self.scale = nested, beta, scale
        self.subsample, self.masked = subsample, masked
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(x_dim, generator=g, dtype=torch.float64) * 0.5)
        self.log_sigma = nn.Parameter(torch.tensor(-0.3, dtype=torch.float64))
        self.A = nn.Parameter(torch.randn(z_dim, x_dim, generator=g, dtype=torch.float64) * 0.1)
        self.c = nn.Parameter(torch.zeros(z_dim, dtype=torch.float64))
        self.log_diag = nn.Parameter(torch.full((z_dim,), -0.5, dtype=torch.float64))

    # -- the program ---------------------------------------------------------------------
    def _plate(self, x):
        dim = -2 if self.nested else -1
        return pyro.plate("data", x.shape[0], subsample_size=self.subsample, dim=dim)

    def model(self, x):
        pyro.module("program", self)
        with poutine.scale(scale=self.scale), self._plate(x) as idx:
            x = x[idx]
            prior = dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1)
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", prior)
            loc = z @ self.W.T + self.b
            sigma = self.log_sigma.exp()
            if self.nested:  # z (..., B, 1, d): the pixels at dim -1, the points at dim -2
                with pyro.plate("pixels", self.x_dim, dim=-1):
                    pyro.sample("x", dist.Normal(loc.squeeze(-2), sigma), obs=x)
            elif self.masked:  # x[mask] flattens: written for one particle
                mask = torch.ones_like(x, dtype=torch.bool)
                lp = dist.Normal(loc[mask], sigma).log_prob(x[mask]).reshape(x.shape).sum(-1)
                pyro.factor("x", lp)
            else:
                pyro.sample("x", dist.Normal(loc, sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("program", self)
        with poutine.scale(scale=self.scale), self._plate(x) as idx:
            x = x[idx]
            if self.exact:
                loc, tril = self.posterior(x)
            else:
                loc = x @ self.A.T + self.c
                tril = torch.diag(self.log_diag.exp())
            if self.nested:
                loc = loc.unsqueeze(-2)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    # -- the truth -----------------------------------------------------------------------
    def posterior(self, x):
        """The exact posterior's mean (B, d) and Cholesky factor (d, d)."""
        var = (2 * self.log_sigma).exp()
        precision = torch.eye(self.z_dim, dtype=x.dtype) + self.W.T @ self.W / var
        cov = torch.linalg.inv(precision)
        loc = (x - self.b) @ self.W @ cov / var
        return loc, torch.linalg.cholesky(cov)

    def exact_log_px(self, x):
        """log N(x; b, W Wᵀ + σ² I), (B,)."""
        cov = self.W @ self.W.T + (2 * self.log_sigma).exp() * torch.eye(self.x_dim)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)


def loop_log_px(model, guide, x, k: int, skip=()) -> torch.Tensor:
    """log (1/K) Σ_k p(x, z_k) / q(z_k | x) per point, as a plain loop over Pyro traces: one
    point and one particle at a time, each a guide trace and a model replay, every site's log
    density unscaled (``scale`` undone, as log p(x) is the model's own density). The sites
    named in ``skip`` (global latents) are drawn from the guide and left out of the weights:
    log E_q(θ)[p(x | θ)]."""
    out = []
    for i in range(x.shape[0]):
        log_w = []
        for _ in range(k):
            guide_trace = poutine.trace(guide).get_trace(x[i : i + 1])
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                x[i : i + 1]
            )
            total = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] == "sample" and site["name"] not in ("data", *skip):
                        lp = site["fn"].log_prob(site["value"])
                        if site["mask"] is not None:
                            lp = lp * site["mask"]
                        total = total + sign * lp.sum()
            log_w.append(total)
        out.append(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
    return torch.stack(out).detach()


# Factories for ``pyrovae train --model programs:NAME`` (this folder on the path): each builds
# the same program, with the same parameters, every time it is called.
def _made(**style):
    torch.manual_seed(0)
    program = LinearGaussianProgram(**style).float()
    return program.model, program.guide


def nested():
    return _made(nested=True)


def kl_annealed():
    return _made(beta=0.3)


def scaled():
    return _made(scale=0.01)


def subsampled():
    return _made(subsample=4)


def raising():
    """A program with a bug of its own, in the model."""
    model, guide = _made()

    def buggy(x):
        model(x)
        raise RuntimeError("a bug in the user's model")

    return buggy, guide


class ConditionalVAE(nn.Module):
    """A class-conditional VAE: p(z) p(x | z, y) with guide q(z | x, y), y one of 10 classes,
    binary pixels; called as ``model(x, y)``, as Pyro's conditional VAEs are written."""

    def __init__(self, x_dim=784, z_dim=8, classes=10, hidden=64):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.encoder = nn.Sequential(
            nn.Linear(x_dim + classes, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim + classes, hidden), nn.Tanh(), nn.Linear(hidden, x_dim)
        )

    def _onehot(self, y, like):
        onehot = torch.nn.functional.one_hot(y, self.classes).to(like.dtype)
        return onehot.expand(*like.shape[:-1], self.classes)

    def model(self, x, y):
        pyro.module("conditional_vae", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z, self._onehot(y, z)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("conditional_vae", self)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(torch.cat([x, self._onehot(y, x)], -1))
            loc, log_scale = h.chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def keyword_model(self, x, *, digit):  # the label by keyword only
        self.model(x, digit)

    def keyword_guide(self, x, *, digit):
        self.guide(x, digit)


def conditional():
    """``pyrovae train --model programs:conditional``: the program takes the points' labels."""
    from pyrovae import Program

    torch.manual_seed(0)
    vae = ConditionalVAE()
    return Program(vae.model, vae.guide, labels=True)


def conditional_by_keyword():
    """The same program, taking the labels by keyword: ``model(x, digit=y)``."""
    from pyrovae import Program

    torch.manual_seed(0)
    vae = ConditionalVAE()
    return Program(vae.keyword_model, vae.keyword_guide, labels="digit")


class GlobalBiasVAE(PyroModule):
    """A linear-Gaussian VAE with a Bayesian decoder bias, as Pyro users declare one: θ ~ N(0,
    I_D) a ``PyroSample`` shared by every point (drawn outside the data plate), z ~ N(0, I_d),
    x | z, θ ~ N(W z + θ, σ² I_D). ``local_guide`` is an amortized guide for z alone; the
    guide of θ is an autoguide (``global_bias``). Under a guide q(θ) = N(m, diag s²), the
    predictive density of a point is exact: N(x; m, W Wᵀ + diag s² + σ² I)."""

    def __init__(self, x_dim=5, z_dim=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x_dim, self.z_dim = x_dim, z_dim
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=g))
        self.log_sigma = nn.Parameter(torch.tensor(-0.3))
        self.A = nn.Parameter(torch.randn(z_dim, x_dim, generator=g) * 0.1)
        self.c = nn.Parameter(torch.zeros(z_dim))
        self.log_diag = nn.Parameter(torch.full((z_dim,), -0.5))
        self.register_buffer("zero", torch.zeros(x_dim))
        self.bias = PyroSample(lambda self: dist.Normal(self.zero, 1.0).to_event(1))

    @pyro_method  # the module's samples drawn as in forward
    def model(self, x):
        bias = self.bias  # drawn here, outside the data plate: one for every point
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            loc = z @ self.W.T + bias
            pyro.sample("x", dist.Normal(loc, self.log_sigma.exp()).to_event(1), obs=x)

    def local_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            loc = x @ self.A.T + self.c
            pyro.sample("z", dist.Normal(loc, self.log_diag.exp()).to_event(1))

    def predictive_log_px(self, x, loc, scale):
        """log N(x; m, W Wᵀ + diag s² + σ² I) under q(θ) = N(loc, diag scale²), (B,)."""
        eye = torch.eye(self.x_dim, dtype=x.dtype)
        cov = self.W @ self.W.T + torch.diag(scale**2) + (2 * self.log_sigma).exp() * eye
        return dist.MultivariateNormal(loc, covariance_matrix=cov).log_prob(x)


def global_bias(autoguide=AutoNormal):
    """``--model programs:global_bias``: the Bayesian-bias VAE, θ's guide an autoguide of the
    model with θ alone exposed, beside the amortized guide of z."""
    torch.manual_seed(0)
    vae = GlobalBiasVAE()
    bias_guide = autoguide(poutine.block(vae.model, expose=["bias"]))

    def guide(x):
        bias_guide(x)
        vae.local_guide(x)

    guide.bias_guide, guide.vae = bias_guide, vae  # for the tests
    return vae.model, guide


def global_bias_diagonal():
    """The same with AutoDiagonalNormal, whose joint draw is an auxiliary site."""
    return global_bias(AutoDiagonalNormal)
