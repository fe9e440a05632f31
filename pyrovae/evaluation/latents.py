"""What the code z of a trained VAE carries: the ELBO taken apart, and posterior collapse.

On N data points x_n with their guide q(z | x_n) and the aggregate posterior
q(z) = (1/N) Σ_n q(z | x_n) (Hoffman and Johnson, 2016):

    ELBO = -distortion - rate,   distortion = -E_n E_q(z|x_n) log p(x_n | z),
    rate = E_n KL(q(z | x_n) ‖ p(z)) = I_q(x; z) + KL(q(z) ‖ p(z)),

with I_q(x; z) = E_n E_q(z|x_n)[log q(z | x_n) - log q(z)] the mutual information between the
data point's index and its code (at most log N), and KL(q(z) ‖ p(z)) the marginal KL, how far
the codes as a whole are from the prior. Rate and distortion are the axes on which Alemi et
al. (2018) place models. All are Monte Carlo over the same S draws of z per point, so that
rate = mutual information + marginal KL holds exactly for the numbers reported. q(z) at each
draw costs N guide densities: the draws are scored against every point's q in chunks.

Posterior collapse, coordinate by coordinate:

- the **KL of each dimension** E_n KL(q(z_u | x_n) ‖ p(z_u)) between the two marginals of
  z_u, in closed form where both are Gaussian, else by Monte Carlo (a mixture prior's
  marginal is a mixture of its components' marginals: the VampPrior's);
- the **active units** (Burda et al., 2015): z_u is active when Cov_n(E_q[z_u | x_n]) > 0.01,
  that is when its code moves with the data. None active is posterior collapse; some
  inactive beside active ones are the dimensions the model does not need.

Pyro has none of these; they read the guide's and the prior's distributions from one trace
of each program (so they apply to any program with one continuous latent of each point), and
log p(x | z), log q and log p(z) from the traced producer's particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..parts.distributions import DiagonalGaussianMixture
from ..producers import TracedProducer, make_producer

# Cov_n(E_q[z_u | x_n]) above this and z_u is active (Burda et al., 2015).
ACTIVE_THRESHOLD = 0.01
# (draw, point, point, dimension) elements scored at once for q(z): bounds memory.
CROSS_ELEMENTS = 2**22


class NotOneLatent(ValueError):
    """A program these diagnostics do not apply to: not one continuous latent of each point."""


@dataclass
class LatentDiagnostics:
    """The ELBO taken apart and the collapse diagnostics of ``n`` points, ``samples`` draws
    of z each, in nats per point.

    ``kl_per_dim`` and ``activity`` (Cov_n E_q[z_u | x_n]) are (D,) tensors; ``active`` the
    number of active units; ``kl_per_dim_method`` ``closed form`` or ``Monte Carlo``;
    ``codes`` (N, D) each point's E_q[z | x_n] (for maps and traversals; not in the JSON).
    """

    site: str
    n: int
    samples: int
    distortion: float
    rate: float
    mutual_information: float
    marginal_kl: float
    kl_per_dim: torch.Tensor
    kl_per_dim_method: str
    activity: torch.Tensor
    active: int
    codes: Optional[torch.Tensor] = None

    @property
    def elbo(self) -> float:
        """The ELBO per point, −distortion − rate, in nats."""
        return -self.distortion - self.rate

    @property
    def collapsed(self) -> bool:
        """True when the posterior collapsed, no unit being active (the code then tells
        nothing of the data point). Inactive units beside active ones are not collapse: a
        VAE with more dimensions than it needs leaves the rest at the prior, and ``active``
        says how many it uses."""
        return self.active == 0

    def to_dict(self) -> Dict[str, object]:
        """The diagnostics in standard JSON types, as ``diagnose.json`` holds them."""
        return {
            "site": self.site,
            "n": self.n,
            "samples": self.samples,
            "elbo": self.elbo,
            "distortion": self.distortion,
            "rate": self.rate,
            "mutual_information": self.mutual_information,
            "mutual_information_cap": math.log(self.n),
            "marginal_kl": self.marginal_kl,
            "kl_per_dim": self.kl_per_dim.tolist(),
            "kl_per_dim_method": self.kl_per_dim_method,
            "activity": self.activity.tolist(),
            "active_units": self.active,
            "dims": self.activity.numel(),
            "collapsed": self.collapsed,
        }


@torch.no_grad()
def latent_diagnostics(subject: Any, x: torch.Tensor, samples: int = 1) -> LatentDiagnostics:
    """The diagnostics of the module's docstring for the points ``x`` (N, ...).

    Args:
        subject: a ``(model, guide)`` pair, a ``Program``, the library's ``VAE`` or a traced
            producer (``pyrovae.producers``), with one latent site of each point, continuous
            with one event dimension.
        x: the points, as the producer takes them (a label column for a program with labels);
            the aggregate posterior is over them (the mutual information is at most log N).
        samples: S, draws of z per point.

    Returns:
        A ``LatentDiagnostics``.
    """
    producer = subject if isinstance(subject, TracedProducer) else make_producer(subject, "traced")
    x = x.to(producer.device or x.device)
    q, p, site = _site_distributions(producer, x)
    particles = producer(x, None, samples, None)
    z = particles.latents[site]  # (S, N, D)
    log_q, log_p = particles.log_q.double(), particles.log_prior.double()
    log_q_agg = _aggregate_log_q(q, z).double()  # (S, N)
    kl_dims, method = _kl_per_dim(q, p, z)
    means = _means(q, z).double()  # (N, D)
    activity = means.var(0) if x.shape[0] > 1 else torch.zeros_like(means[0])
    return LatentDiagnostics(
        site=site,
        n=x.shape[0],
        samples=samples,
        distortion=-particles.log_lik.double().mean().item(),
        rate=(log_q - log_p).mean().item(),
        mutual_information=(log_q - log_q_agg).mean().item(),
        marginal_kl=(log_q_agg - log_p).mean().item(),
        kl_per_dim=kl_dims.double().cpu(),
        kl_per_dim_method=method,
        activity=activity.cpu(),
        active=int((activity > ACTIVE_THRESHOLD).sum()),
        codes=means.float().cpu(),
    )


def _site_distributions(
    producer: TracedProducer, x: torch.Tensor
) -> Tuple[dist.Distribution, dist.Distribution, str]:
    """(q(z | x) with batch shape (N,), p(z), the site's name), from one trace of each
    program; a program with other than one continuous latent of each point is refused."""
    args = producer.args(x)
    guide_trace = poutine.trace(producer.guide).get_trace(*args)
    latents = [
        name
        for name, node in guide_trace.nodes.items()
        if node["type"] == "sample" and not node["is_observed"] and not site_is_subsample(node)
    ]
    if len(latents) != 1:
        raise NotOneLatent(
            "the latent diagnostics look at one latent of each point; this guide has "
            f"{len(latents)} ({', '.join(latents) or 'none'}): give a one-latent model"
        )
    (site,) = latents
    q = guide_trace.nodes[site]["fn"]
    if q.event_dim != 1 or q.batch_shape[-1:] != (x.shape[0],) or q.support.is_discrete:
        raise NotOneLatent(
            f"the latent diagnostics need {site!r} continuous, one vector (event dim 1) per "
            f"point; its guide distribution has batch {tuple(q.batch_shape)}, event "
            f"{tuple(q.event_shape)}"
        )
    model_trace = poutine.trace(poutine.replay(producer.model, trace=guide_trace)).get_trace(*args)
    return q, model_trace.nodes[site]["fn"], site


def _aggregate_log_q(q: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """log q(z) = log (1/N) Σ_m q(z | x_m) at every draw z (S, N, D): (S, N). Each chunk of
    points' draws is scored against all N guides at once."""
    s, n, d = z.shape
    step = max(1, CROSS_ELEMENTS // (s * n * d))
    parts = [
        torch.logsumexp(q.log_prob(z[:, i : i + step].unsqueeze(-2)), -1) for i in range(0, n, step)
    ]
    return torch.cat(parts, 1) - math.log(n)


def _marginals(d: dist.Distribution) -> Optional[Callable]:
    """Each coordinate's marginal of a distribution over vectors (event shape (D,)), as a
    ``dist.Normal`` with the coordinates in its last batch dim for a Gaussian (diagonal or
    not), or as a function z (..., D) → (..., D) of log densities for a mixture of diagonal
    Gaussians that is the same for every point (a prior); None otherwise."""
    base = d
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Normal):
        return base
    if isinstance(d, dist.MultivariateNormal):
        return dist.Normal(d.loc, d.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt())
    if isinstance(d, DiagonalGaussianMixture):
        log_pi, loc, scale = d.logits.log_softmax(-1), d.loc, d.scale  # (C,), (C, D)
    elif isinstance(d, dist.MixtureSameFamily):
        comp = _marginals(d.component_distribution)
        if not isinstance(comp, dist.Normal):
            return None
        c, dims = comp.loc.shape[-2:]  # a prior's components, the same at every point
        log_pi = d.mixture_distribution.logits.log_softmax(-1).reshape(-1, c)[0]
        loc, scale = (t.expand_as(comp.loc).reshape(-1, c, dims)[0] for t in (comp.loc, comp.scale))
    else:
        return None

    components = dist.Normal(loc, scale)

    def log_marginals(z: torch.Tensor) -> torch.Tensor:
        rows = z.reshape(-1, z.shape[-1])
        step = max(1, CROSS_ELEMENTS // loc.numel())  # (rows, C, D) at a time: bounded memory
        parts = [
            torch.logsumexp(components.log_prob(r.unsqueeze(-2)) + log_pi.unsqueeze(-1), -2)
            for r in rows.split(step)
        ]
        return torch.cat(parts).reshape(z.shape)

    return log_marginals


def _kl_per_dim(q, p, z: torch.Tensor) -> Tuple[torch.Tensor, str]:
    """E_n KL(q(z_u | x_n) ‖ p(z_u)) for each u, (D,): closed form where both marginals are
    Gaussian, else Monte Carlo over the draws z (S, N, D)."""
    q_u, p_u = _marginals(q), _marginals(p)
    if not isinstance(q_u, dist.Normal) or p_u is None:
        return torch.full((z.shape[-1],), math.nan), "unavailable (not factorizable)"
    if isinstance(q_u, dist.Normal) and isinstance(p_u, dist.Normal):
        return torch.distributions.kl_divergence(q_u, p_u).reshape(-1, z.shape[-1]).mean(0), (
            "closed form"
        )

    def log_density(m, z):
        return m.log_prob(z) if isinstance(m, dist.Normal) else m(z)

    log_ratio = log_density(q_u, z) - log_density(p_u, z)  # (S, N, D)
    return log_ratio.reshape(-1, z.shape[-1]).mean(0), "Monte Carlo"


def _means(q: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """E_q[z | x_n] for each point, (N, D): the distribution's mean where it has one in closed
    form, else the draws' average."""
    try:
        return q.mean.reshape(-1, z.shape[-2], z.shape[-1])[-1]
    except NotImplementedError:  # a flow's transformed distribution
        return z.mean(0)
