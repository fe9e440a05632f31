"""ELBO estimators by name: the objective, its gradient estimator, and what the guide needs.

An ``Estimator`` pairs a Pyro ELBO with the guide settings it relies on: the score-function
estimator needs a non-reparameterized latent sample and baseline options on the latent site.
``Estimator.wrap_guide`` applies those options with ``poutine.infer_config``, so the user's guide
stays a plain Pyro function.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import pyro
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from .elbos import (
    STL_ELBO,
    VIMCO_ELBO,
    ImportanceWeightedELBO,
    ScoreFunctionELBO,
    nn_baseline_guide,
)
from .registry import Registry

ESTIMATORS: Registry = Registry("estimator")

# Our models have one plate (data, dim -1); particles vectorize in the dim left of it.
MAX_PLATE_NESTING = 1

# pyro.module name of the score-function estimator's neural baseline.
NEURAL_BASELINE_NAME = "score_function_baseline"


def _particles(num_particles: int) -> Dict[str, Any]:
    """Pyro ELBO arguments: ``num_particles`` drawn in one vectorized pass when more than 1."""
    return dict(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=MAX_PLATE_NESTING,
    )


ELBO_OBJECTIVE = "ELBO = E_q[log p(x,z) - log q(z|x)]"
BOUND_OBJECTIVE = "K-sample bound E[log (1/K) sum_k p(x,z_k)/q(z_k|x)]"


@dataclass
class Estimator:
    """A named ELBO estimator.

    Attributes:
        name: registry name.
        elbo: the Pyro ``ELBO`` computing loss and gradients.
        reparameterized: whether the guide's latent must be reparameterized.
        objective: a formula for ``repr``.
        gradient: how the gradient is estimated, for ``repr``.
        baseline: the score-function baseline (``none``, ``decaying-average``, ``neural``), or
            ``None`` for estimators without one.
        baseline_beta: decay of the decaying average (which the neural baseline sits on too).
        baseline_net: the neural baseline b(x), when ``baseline`` is ``neural``.
    """

    name: str
    elbo: ELBO
    reparameterized: bool = True
    objective: str = ELBO_OBJECTIVE
    gradient: str = ""
    baseline: Optional[str] = None
    baseline_beta: float = 0.9
    baseline_net: Optional[nn.Module] = None

    @property
    def decaying_average(self) -> bool:
        """Whether a decaying average of the cost is subtracted (alone or under b(x))."""
        return self.baseline in ("decaying-average", "neural")

    @property
    def fixed_batch_shape(self) -> bool:
        """The estimator keeps state shaped like the batch (the decaying average), so every
        training batch must have the same size."""
        return self.decaying_average

    def wrap_guide(self, guide: Callable) -> Callable:
        """``guide`` with its baseline attached: Pyro's ``infer`` options on its latent
        (unobserved sample) sites, or the neural baseline."""
        if self.baseline_net is not None:
            return nn_baseline_guide(
                guide, self.baseline_net, NEURAL_BASELINE_NAME, self.baseline_beta
            )
        if not self.decaying_average:
            return guide
        options = {
            "baseline": {"use_decaying_avg_baseline": True, "baseline_beta": self.baseline_beta}
        }

        def config(site: Dict[str, Any]) -> Dict[str, Any]:
            if site["type"] == "sample" and not site["is_observed"]:
                return options
            return {}

        return poutine.infer_config(guide, config)

    def __repr__(self) -> str:
        k = self.elbo.num_particles
        return (
            f"{self.name}: objective {self.objective}; gradient {self.gradient}; "
            f"{k} particle{'s' if k > 1 else ''}"
        )


@ESTIMATORS.register("pathwise")
def pathwise(num_particles: int = 1) -> Estimator:
    """Reparameterized Monte Carlo ELBO with a Monte Carlo KL: Pyro's ``Trace_ELBO``."""
    return Estimator(
        "pathwise",
        Trace_ELBO(**_particles(num_particles)),
        gradient="pathwise (reparameterized z, Trace_ELBO)",
    )


BASELINES = ("none", "decaying-average", "neural")


class BaselineNet(nn.Module):
    """An input-dependent baseline b(x) for the score-function estimator: a one-hidden-layer
    tanh MLP, (B, ...) -> (B,). Its input width is set by the first batch it sees."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.LazyLinear(hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


@ESTIMATORS.register("score-function")
def score_function(
    num_particles: int = 1, baseline: str = "decaying-average", baseline_beta: float = 0.9
) -> Estimator:
    """REINFORCE on the latent site (non-reparameterized guide) with Pyro's ``TraceGraph_ELBO``.

    ``baseline``: ``"decaying-average"`` (default) subtracts an exponential moving average of the
    downstream cost, per data point of the batch, decayed by ``baseline_beta``; ``"neural"``
    adds an input-dependent baseline network b(x) fitted to the cost by squared error (NVIL,
    Mnih & Gregor, 2014) on top of that average; ``"none"`` uses the raw score-function
    estimator.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}")
    return Estimator(
        "score-function",
        ScoreFunctionELBO(**_particles(num_particles)),
        reparameterized=False,
        gradient=f"score function (REINFORCE, TraceGraph_ELBO), baseline {baseline}",
        baseline=baseline,
        baseline_beta=baseline_beta,
        baseline_net=BaselineNet() if baseline == "neural" else None,
    )


@ESTIMATORS.register("analytic-kl")
def analytic_kl(num_particles: int = 1) -> Estimator:
    """Reparameterized ELBO with the KL(q || p) in closed form where torch registers it
    (Gaussian guide and prior): Pyro's ``TraceMeanField_ELBO``."""
    return Estimator(
        "analytic-kl",
        TraceMeanField_ELBO(**_particles(num_particles)),
        gradient="pathwise on E_q[log p(x|z)], closed-form KL (TraceMeanField_ELBO)",
    )


@ESTIMATORS.register("stl")
def stl(num_particles: int = 1) -> Estimator:
    """ "Sticking the landing" (Roeder et al., 2017): pathwise with the score term of q dropped."""
    return Estimator(
        "stl",
        STL_ELBO(**_particles(num_particles)),
        gradient="pathwise with the score term of q dropped (sticking the landing)",
    )


@ESTIMATORS.register("iwae")
def iwae(num_particles: int = 5) -> Estimator:
    """The K = ``num_particles`` importance-weighted bound, reparameterized (Burda et al.)."""
    return Estimator(
        "iwae",
        ImportanceWeightedELBO(num_particles, MAX_PLATE_NESTING),
        objective=BOUND_OBJECTIVE,
        gradient="reparameterized (IWAE)",
    )


@ESTIMATORS.register("dreg")
def dreg(num_particles: int = 5) -> Estimator:
    """The K-sample bound with the doubly reparameterized gradient (Tucker et al., 2018)."""
    return Estimator(
        "dreg",
        ImportanceWeightedELBO(num_particles, MAX_PLATE_NESTING, dreg=True),
        objective=BOUND_OBJECTIVE,
        gradient="doubly reparameterized (DReG)",
    )


@ESTIMATORS.register("vimco")
def vimco(num_particles: int = 5) -> Estimator:
    """The K-sample bound with VIMCO's leave-one-out score-function gradient (Mnih & Rezende,
    2016), for latents that cannot be reparameterized."""
    return Estimator(
        "vimco",
        VIMCO_ELBO(num_particles, MAX_PLATE_NESTING),
        reparameterized=False,
        objective=BOUND_OBJECTIVE,
        gradient="score function with leave-one-out control variates (VIMCO)",
    )


def make_estimator(name: str, num_particles: Optional[int] = None, **options: Any) -> Estimator:
    """The estimator registered as ``name`` with ``num_particles`` (default: 1 for the ELBO
    estimators, 5 for the K-sample bounds) and its own options."""
    if num_particles is not None and num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    if num_particles is not None:
        options["num_particles"] = num_particles
    factory = ESTIMATORS.get(name)
    known = set(inspect.signature(factory).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for the {name!r} estimator; it takes: "
            f"{', '.join(sorted(known))}"
        )
    return factory(**options)


def clear_estimator_state() -> None:
    """Forget state estimators keep in Pyro's param store (decaying-average baselines)."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith("__baseline")]:
        del store[name]
