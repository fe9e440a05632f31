"""ELBO estimators by name, each defined once as a function of a batch's particles.

- ``base``: the ``Estimator`` interface and its ``pyro.infer.ELBO`` view (``EstimatorELBO``);
- ``elbo``: ``pathwise``, ``analytic-kl``, ``stl``;
- ``score_function``: ``score-function``, baselines ``none``, ``decaying-average``, ``neural``;
  ``tracegraph``, its Rao-Blackwellized form for programs with discrete latents;
- ``bounds``: the K-sample bound with three gradients, ``iwae``, ``dreg``, ``vimco``.

Adding an estimator is one subclass of ``Estimator`` and one ``@ESTIMATORS.register(name)``
line, in a new module here or in the user's own code (docs/guides/estimators.md shows a
worked example); nothing else changes.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, Optional, Type, TypeVar

from ..registry import Registry
from .base import (
    BOUND_OBJECTIVE,
    ELBO_OBJECTIVE,
    Estimator,
    EstimatorELBO,
    k_sample_bound,
    shift_to,
)

E = TypeVar("E", bound=Type[Estimator])


class EstimatorRegistry(Registry):
    """The registry of estimators; registering a class also sets its ``name``."""

    def register(self, name: str) -> Callable[[E], E]:
        add = super().register(name)

        def decorate(cls: E) -> E:
            cls.name = name
            return add(cls)

        return decorate


#: Estimator classes by name (``pathwise``, ``iwae``, ...); ``@ESTIMATORS.register(name)`` adds one.
ESTIMATORS: EstimatorRegistry = EstimatorRegistry("estimator")


def make_estimator(name: str, num_particles: Optional[int] = None, **options: Any) -> Estimator:
    """The estimator registered as ``name`` with ``num_particles`` (default: 1 for the ELBO
    estimators, 5 for the K-sample bounds) and its own options (e.g. ``baseline="neural"``);
    an unknown option is an error naming the known ones."""
    if num_particles is not None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int):
            raise ValueError(f"num_particles must be a whole number, got {num_particles!r}")
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    cls = ESTIMATORS.get(name)
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "num_particles"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for the {name!r} estimator; it takes: "
            f"{', '.join(sorted(known | {'num_particles'}))}"
        )
    try:
        return cls(num_particles=num_particles, **options)
    except TypeError as e:  # a value of the wrong type, compared or computed with
        raise ValueError(f"bad option value for the {name!r} estimator ({options}): {e}") from e


def _import_families() -> None:
    """Import every module of this package: each registers its estimators, so a new module
    here is a new name on the command line with no other edit."""
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "base":
            importlib.import_module(f"{__name__}.{module}")


_import_families()

__all__ = [
    "BOUND_OBJECTIVE",
    "ELBO_OBJECTIVE",
    "ESTIMATORS",
    "Estimator",
    "EstimatorELBO",
    "k_sample_bound",
    "make_estimator",
    "shift_to",
]
