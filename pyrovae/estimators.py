"""ELBO estimators by name: the objective, its gradient estimator, and what the guide needs.

An ``Estimator`` pairs a Pyro ELBO with the guide settings it relies on: the score-function
estimator needs a non-reparameterized latent sample and baseline options on the latent site.
``Estimator.wrap_guide`` applies those options with ``poutine.infer_config``, so the user's guide
stays a plain Pyro function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict

import pyro
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceGraph_ELBO

from .registry import Registry

ESTIMATORS: Registry = Registry("estimator")

# Our models have one plate (data, dim -1); particles vectorize in the dim left of it.
MAX_PLATE_NESTING = 1


@dataclass
class Estimator:
    """A named ELBO estimator.

    Attributes:
        name: registry name.
        elbo: the Pyro ``ELBO`` computing loss and gradients.
        reparameterized: whether the guide's latent must be reparameterized.
        guide_infer: options placed in the ``infer`` dict of the guide's latent sites.
        fixed_batch_shape: the estimator keeps state shaped like the batch (the decaying-average
            baseline), so every training batch must have the same size.
        objective: a formula for ``repr``.
        gradient: how the gradient is estimated, for ``repr``.
    """

    name: str
    elbo: ELBO
    reparameterized: bool = True
    guide_infer: Dict[str, Any] = field(default_factory=dict)
    fixed_batch_shape: bool = False
    objective: str = "ELBO = E_q[log p(x,z) - log q(z|x)]"
    gradient: str = ""

    def wrap_guide(self, guide: Callable) -> Callable:
        """``guide`` with ``guide_infer`` set on its latent (unobserved sample) sites."""
        if not self.guide_infer:
            return guide

        def config(site: Dict[str, Any]) -> Dict[str, Any]:
            if site["type"] == "sample" and not site["is_observed"]:
                return dict(self.guide_infer)
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
        Trace_ELBO(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=MAX_PLATE_NESTING,
        ),
        gradient="pathwise (reparameterized z, Trace_ELBO)",
    )


BASELINES = ("none", "decaying-average")


@ESTIMATORS.register("score-function")
def score_function(
    num_particles: int = 1, baseline: str = "decaying-average", baseline_beta: float = 0.9
) -> Estimator:
    """REINFORCE on the latent site (non-reparameterized guide) with Pyro's ``TraceGraph_ELBO``.

    ``baseline``: ``"decaying-average"`` (default) subtracts an exponential moving average of the
    downstream cost, per data point of the batch, decayed by ``baseline_beta``; ``"none"`` uses
    the raw score-function estimator.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}")
    infer: Dict[str, Any] = {}
    fixed = False
    if baseline == "decaying-average":
        infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": baseline_beta}}
        fixed = True
    return Estimator(
        "score-function",
        TraceGraph_ELBO(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=MAX_PLATE_NESTING,
        ),
        reparameterized=False,
        guide_infer=infer,
        fixed_batch_shape=fixed,
        gradient=f"score function (REINFORCE, TraceGraph_ELBO), baseline {baseline}",
    )


def make_estimator(name: str, num_particles: int = 1, **options: Any) -> Estimator:
    """The estimator registered as ``name`` with ``num_particles`` and its own options."""
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    return ESTIMATORS.get(name)(num_particles=num_particles, **options)


def clear_estimator_state() -> None:
    """Forget state estimators keep in Pyro's param store (decaying-average baselines)."""
    store = pyro.get_param_store()
    for name in [n for n in store.keys() if n.startswith("__baseline")]:
        del store[name]
