"""The score-function (REINFORCE) estimator of the ELBO, with variance-reducing baselines.

z is sampled without reparameterization, so the gradient reaches the guide through its score
∇_φ log q(z | x). With s = N / B and the cost of particle k of data point b

    c_kb = s (log p(x_b, z_kb) - log q(z_kb | x_b)),

the surrogate is s Σ log p(x, z) + Σ log q(z | x) · stop(c - baseline), averaged over
particles: its gradient is the decoder's (z held fixed) plus the score-function term. This is
the estimator Pyro's ``TraceGraph_ELBO`` computes for a one-latent model (the tests check it
step for step); here it is written over particles, so it serves every producer.

Baselines (subtracted from the cost in the score term only, so the estimate stays unbiased):

- ``none``: the raw estimator.
- ``decaying-average`` (default): an exponential moving average of the cost per (particle,
  batch position), decayed by ``baseline_beta`` and updated after each step, as Pyro's
  ``use_decaying_avg_baseline``.
- ``neural``: an input-dependent baseline b(x), a small MLP scaled by N / B like the costs,
  added to the decaying average and fitted to the cost by squared error (NVIL, Mnih & Gregor,
  2014).

``tracegraph`` (below) is the same estimator for programs with discrete latents, as Pyro's
``TraceGraph_ELBO`` computes it: score terms for the sites without a reparameterized sampler
only, each with the costs downstream of it (``pyrovae.dependencies``), and pathwise gradients
through the other latents.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from ..runtime import fork_rng
from . import ESTIMATORS
from .base import Estimator, Output

BASELINES = ("none", "decaying-average", "neural")


class BaselineNet(nn.Module):
    """An input-dependent baseline b(x) for the score-function estimator: a one-hidden-layer
    tanh MLP, (B, ...) -> (B,). Its input width is set by the first batch it sees."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def materialize(net: nn.Module, x: torch.Tensor) -> None:
    """Give a lazily sized net its input width from ``x`` (B, ...) and initial weights, once.

    The weights come from a fixed seed, outside the global random streams, so that runs with
    the same seed agree and a resumed run (whose net is then loaded from the checkpoint) draws
    what an uninterrupted run draws. They are drawn on the CPU and then moved to ``x``'s
    device: the same weights on every device.
    """
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in net.parameters()):
        return
    net.to(dtype=x.dtype)
    # torch.manual_seed seeds the GPU's stream too: fork it as well.
    with fork_rng(x.device), torch.no_grad():
        torch.manual_seed(0)
        net(x[:1].cpu())  # only x's width matters: any rows draw the same weights
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
    net.to(device=x.device)


@ESTIMATORS.register("score-function")
class ScoreFunction(Estimator):
    """REINFORCE on the latents with a baseline ``none``, ``decaying-average`` (default) or
    ``neural``; ``baseline_beta`` is the decay of the average (which the neural baseline sits
    on too)."""

    supports_warmup = True
    reparameterized = False

    def __init__(
        self,
        num_particles: int | None = None,
        baseline: str = "decaying-average",
        baseline_beta: float = 0.9,
    ) -> None:
        super().__init__(num_particles)
        if baseline not in BASELINES:
            raise ValueError(
                f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}"
            )
        if isinstance(baseline_beta, bool) or not isinstance(baseline_beta, (int, float)):
            raise ValueError(f"baseline_beta must be a number in [0, 1), got {baseline_beta!r}")
        if not 0 <= baseline_beta < 1:
            raise ValueError(f"baseline_beta must be in [0, 1), got {baseline_beta}")
        self.baseline = baseline
        self.baseline_beta = float(baseline_beta)
        # The decaying average, shaped (K, B) by ``prepare``: empty until then.
        self.register_buffer("average", torch.zeros(0))
        self.baseline_net = BaselineNet() if baseline == "neural" else None

    @property
    def gradient(self) -> str:  # type: ignore[override]
        return f"score function (REINFORCE), baseline {self.baseline}"

    @property
    def uses_average(self) -> bool:
        return self.baseline != "none"

    @property
    def fixed_batch_shape(self) -> bool:
        return self.uses_average

    @property
    def options(self) -> Dict[str, Any]:
        opts: Dict[str, Any] = {"baseline": self.baseline}
        if self.baseline_beta != 0.9:
            opts["baseline_beta"] = self.baseline_beta
        return opts

    @classmethod
    def variants(cls) -> List[Dict[str, Any]]:
        return [{"baseline": b} for b in BASELINES]

    def prepare(self, x: torch.Tensor) -> None:
        if self.uses_average and self.average.numel() == 0:
            self.average = x.new_zeros(self.num_particles, x.shape[0])
        if self.baseline_net is not None:
            materialize(self.baseline_net, x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The average's shape comes from the data: take the saved one.
        saved = state_dict.get(prefix + "average")
        if saved is not None and saved.shape != self.average.shape:
            self.average = torch.zeros_like(saved, device=self.average.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _average_before(self, cost: torch.Tensor, update_state: bool) -> torch.Tensor:
        """The decaying average of the costs as it was before this batch's ``cost`` (shaped
        like it: the first costs give its shape where ``prepare`` did not), then updated with
        them where ``update_state``."""
        if self.average.numel() == 0:
            self.average = torch.zeros_like(cost)
        if self.average.shape != cost.shape:
            raise ValueError(
                f"the decaying-average baseline has shape {tuple(self.average.shape)} but "
                f"the batch gives costs of shape {tuple(cost.shape)}: it needs batches of "
                "one size"
            )
        if not update_state:
            return self.average
        before = self.average.clone()
        with torch.no_grad():
            self.average.mul_(self.baseline_beta).add_(cost, alpha=1 - self.baseline_beta)
        return before

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        k = p.num_particles
        log_p, log_q = p.weighted_log_p, p.log_q
        # Under warm-up (β < 1) the cost is that of the weighted ELBO; the score ∇ log q is not
        # weighted.
        cost = (p.scale * p.weighted_log_w).detach()  # (K, B)
        advantage = cost
        baseline_loss = 0.0
        if self.uses_average:
            average = self._average_before(cost, update_state)
            advantage = cost - average
            if self.baseline_net is not None:
                if p.x is None:
                    raise ValueError("the neural baseline needs the batch x as its input")
                fitted = average + p.scale * self.baseline_net(p.x)
                baseline_loss = (cost - fitted).pow(2).sum()
                advantage = cost - fitted.detach()
        surrogate = p.scale * log_p.sum() + (log_q * advantage).sum()
        # The loss reported is always the true ELBO's.
        reported = cost.sum() if p.kl_weight == 1.0 else p.scale * p.log_w.detach().sum()
        return -reported / k, (baseline_loss - surrogate) / k


@ESTIMATORS.register("tracegraph")
class TraceGraph(ScoreFunction):
    """The score function on the latents that have no reparameterized sampler (discrete ones),
    each site's term with only the costs downstream of it (Rao-Blackwellized, as Pyro's
    ``TraceGraph_ELBO``: ``pyrovae.dependencies``), and pathwise gradients through the
    others. With s = N / B and, for each such site j, its downstream cost c_j:

        surrogate = s Σ [log p(x, z) - log q_pathwise(z | x)] + Σ_j log q_j · stop(s c_j - b_j)

    averaged over particles; b_j a decaying average per site (``decaying-average``) or none.
    On a model whose one latent is discrete it is ``score-function``; on a Gaussian VAE it is
    ``pathwise``."""

    reparameterized = None  # rsample where the distribution has it, sample elsewhere
    supports_warmup = False

    def __init__(
        self,
        num_particles: int | None = None,
        baseline: str = "decaying-average",
        baseline_beta: float = 0.9,
    ) -> None:
        if baseline == "neural":
            raise ValueError(
                "the tracegraph estimator keeps a baseline per site, decaying-average or none; "
                "the neural baseline is score-function's"
            )
        super().__init__(num_particles, baseline, baseline_beta)

    @property
    def gradient(self) -> str:  # type: ignore[override]
        return (
            "score function on non-reparameterized sites with their downstream costs "
            f"(Rao-Blackwellized, baseline {self.baseline}), pathwise on the others"
        )

    @classmethod
    def variants(cls) -> List[Dict[str, Any]]:
        return [{"baseline": b} for b in BASELINES if b != "neural"]

    def prepare(self, x: torch.Tensor) -> None:
        """Nothing: the averages (sites, K, B) take their shape from the first costs."""

    def forward(self, particles, update_state: bool = True) -> Output:
        p = particles
        sites = p.score_sites()
        log_q_sampled = sum((site.log_q for site in sites), torch.zeros(()))
        advantage = None
        if sites:
            cost = torch.stack([p.scale * site.cost.detach() for site in sites])  # (S, K, B)
            advantage = cost
            if self.uses_average:  # one average per site
                advantage = cost - self._average_before(cost, update_state)
        surrogate = p.scale * (p.log_p - (p.log_q - log_q_sampled)).sum()
        if advantage is not None:
            surrogate = surrogate + sum((site.log_q * a).sum() for site, a in zip(sites, advantage))
        k = p.num_particles
        return -p.scale * p.log_w.detach().sum() / k, -surrogate / k
