"""Pyro programs with discrete latents, written as Pyro users write them, for the tests of
issue 27 (enumeration):

- ``LinearGaussianMixture``: m ~ Categorical(π), z ~ N(0, I), x | z, m ~ N(W_m z + b_m, σ² I),
  whose log p(x) is exact: log Σ_m π_m N(x; b_m, W_m W_mᵀ + σ² I). Its component m is summed
  out in the model (``guide="model-summed"``: the guide draws z alone), or in the guide
  (``guide="guide-summed"``: m ~ q(m | x) marked for enumeration, z ~ q(z | x, m)), whose
  ``exact=True`` version is the exact posterior p(m | x) p(z | x, m);
- ``TinyM2``: a semi-supervised VAE (Kingma et al., 2014, M2) with a one-hot label y, given
  or drawn by a classifier marked with ``config_enumerate``, and z ~ q(z | x, y).
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from pyro.ops.indexing import Vindex
from torch import nn


def _joined(*parts: torch.Tensor) -> torch.Tensor:
    """The tensors broadcast over their batch dims and joined along the last."""
    batch = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(batch + p.shape[-1:]) for p in parts], -1)


class LinearGaussianMixture(nn.Module):
    """A mixture of C linear-Gaussian components sharing z ~ N(0, I_d); see the module."""

    def __init__(self, x_dim=3, z_dim=2, components=3, guide="model-summed", exact=False,
                 seed=0):  # fmt: skip
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c, self.x_dim, self.z_dim, self.kind, self.exact = components, x_dim, z_dim, guide, exact
        f64 = dict(generator=g, dtype=torch.float64)
        self.W = nn.Parameter(torch.randn(c, x_dim, z_dim, **f64))
        self.b = nn.Parameter(torch.randn(c, x_dim, **f64) * 2)
        self.logits = nn.Parameter(torch.randn(c, **f64) * 0.5)
        self.sigma = 0.7
        # The guide's own parameters (linear in x), used where it is not exact.
        self.A = nn.Parameter(torch.randn(c, z_dim, x_dim, **f64) * 0.1)
        self.c = nn.Parameter(torch.zeros(c, z_dim, dtype=torch.float64))
        self.L = nn.Parameter(torch.randn(c, x_dim, **f64) * 0.1)
        self.log_scale = nn.Parameter(torch.zeros(c, z_dim, dtype=torch.float64))

    def marginals(self):
        """(log π (C,), the components' marginals N(b_m, W_m W_mᵀ + σ² I), batch (C,))."""
        cov = self.W @ self.W.transpose(-1, -2) + self.sigma**2 * torch.eye(self.x_dim)
        return self.logits.log_softmax(-1), dist.MultivariateNormal(self.b, cov)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), (B,)."""
        log_pi, comp = self.marginals()
        return (log_pi + comp.log_prob(x.unsqueeze(-2))).logsumexp(-1)

    def posterior(self, x: torch.Tensor):
        """(log p(m | x) (B, C), means (B, C, d), covariances (C, d, d)) of p(z | x, m)."""
        log_pi, comp = self.marginals()
        joint = log_pi + comp.log_prob(x.unsqueeze(-2))
        eye = torch.eye(self.z_dim, dtype=torch.float64)
        s = torch.linalg.inv(eye + self.W.transpose(-1, -2) @ self.W / self.sigma**2)
        resid = (x.unsqueeze(-2) - self.b).unsqueeze(-1)  # (B, C, D, 1)
        mean = (s @ self.W.transpose(-1, -2) @ resid).squeeze(-1) / self.sigma**2
        return joint - joint.logsumexp(-1, keepdim=True), mean, s

    def model(self, x: torch.Tensor):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            m = pyro.sample(
                "m", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"}
            )
            z = pyro.sample(
                "z", dist.Normal(torch.zeros(self.z_dim, dtype=torch.float64), 1.0).to_event(1)
            )
            loc = (self.W[m] @ z.unsqueeze(-1)).squeeze(-1) + self.b[m]
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def guide(self, x: torch.Tensor):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            if self.kind == "model-summed":  # q(z | x): the posterior's mean, the prior's scale
                log_pm, mean, _ = self.posterior(x)
                loc = (log_pm.exp().unsqueeze(-1) * mean).sum(-2).detach()
                pyro.sample("z", dist.Normal(loc, self.log_scale[0].exp()).to_event(1))
                return
            if self.exact:
                log_pm, mean, s = self.posterior(x)
            else:
                log_pm = x @ self.L.T
            m = pyro.sample("m", dist.Categorical(logits=log_pm), infer={"enumerate": "parallel"})
            if self.exact:
                points = torch.arange(x.shape[0])
                pyro.sample("z", dist.MultivariateNormal(Vindex(mean)[points, m, :], s[m]))
            else:
                loc = (self.A[m] @ x.unsqueeze(-1)).squeeze(-1) + self.c[m]
                pyro.sample("z", dist.Normal(loc, self.log_scale[m].exp()).to_event(1))

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        """n draws of x from the model, (n, D)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            m = torch.multinomial(self.logits.softmax(-1), n, True, generator=g)
            z = torch.randn(n, self.z_dim, generator=g, dtype=torch.float64)
            noise = torch.randn(n, self.x_dim, generator=g, dtype=torch.float64)
            return (self.W[m] @ z.unsqueeze(-1)).squeeze(-1) + self.b[m] + self.sigma * noise


class TinyM2(nn.Module):
    """M2 in miniature: y ~ OneHotCategorical(1/C), z ~ N(0, I), x ~ Bernoulli(dec(z, y));
    the guide y ~ q(y | x) (marked for enumeration), z ~ N(enc(x, y)). Called as
    ``model(x)`` or ``model(x, y)`` with labels (B, C) one-hot."""

    def __init__(self, x_dim=6, z_dim=2, classes=3, hidden=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.x_dim, self.z_dim, self.classes = x_dim, z_dim, classes
        self.decoder = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.Tanh(),
                                     nn.Linear(hidden, x_dim))  # fmt: skip
        self.classifier = nn.Linear(x_dim, classes)
        self.encoder = nn.Linear(x_dim + classes, 2 * z_dim)
        self.double()

    def model(self, x: torch.Tensor, y=None):
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            prior = torch.full((self.classes,), -math.log(self.classes), dtype=x.dtype)
            y = pyro.sample("y", dist.OneHotCategorical(logits=prior), obs=y)
            z = pyro.sample("z", dist.Normal(torch.zeros(self.z_dim, dtype=x.dtype), 1.0)
                            .to_event(1))  # fmt: skip
            logits = self.decoder(_joined(z, y))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    @config_enumerate
    def guide(self, x: torch.Tensor, y=None):
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", dist.OneHotCategorical(logits=self.classifier(x)))
            out = self.encoder(_joined(x, y))
            loc, log_scale = out[..., : self.z_dim], out[..., self.z_dim :]
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.bernoulli(torch.full((n, self.x_dim), 0.4, dtype=torch.float64), generator=g)


class LateDiscrete(nn.Module):
    """A guide that draws the continuous z first and the discrete c after it, given z: c's
    score term then leaves out q(z | x)'s cost, upstream of it (Rao-Blackwellization).
    Model: c ~ Cat(π), z ~ N(μ_c, I), x ~ N(W z + b_c, I)."""

    def __init__(self, x_dim=4, z_dim=2, components=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        c, self.z_dim = components, z_dim
        self.logits = nn.Parameter(torch.randn(c, dtype=torch.float64))
        self.means = nn.Parameter(torch.randn(c, z_dim, dtype=torch.float64))
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(c, x_dim, dtype=torch.float64))
        self.encoder = nn.Linear(x_dim, 2 * z_dim).double()
        self.classifier = nn.Linear(x_dim + z_dim, c).double()

    def model(self, x):
        pyro.module("late", self)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=self.logits))
            z = pyro.sample("z", dist.Normal(self.means[c], 1.0).to_event(1))
            loc = z @ self.W.T + self.b[c]
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("late", self)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x).chunk(2, -1)
            z = pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
            pyro.sample("c", dist.Categorical(logits=self.classifier(_joined(x, z))))

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, self.W.shape[0], generator=g, dtype=torch.float64)
