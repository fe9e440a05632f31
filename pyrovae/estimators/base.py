"""The estimator interface: particles in, (loss, surrogate) out, state in an ``nn.Module``.

An ``Estimator`` is one objective and one gradient estimator, written once as a function of a
batch's ``Particles`` (``pyrovae.particles``). It returns the *loss*, minus the objective
estimate scaled to the data set, which is what gets reported, and the *surrogate*, the scalar
whose gradient is the estimator's gradient. Whatever it keeps between steps (a decaying
average, a baseline network) is a buffer or parameter of the estimator's own module, saved with
the run and optimized by the same Adam as the model.

``Estimator.elbo`` gives the same estimator as a ``pyro.infer.ELBO`` (``loss``,
``loss_and_grads``, ``differentiable_loss``) over the traced producer, for ``pyro.infer.SVI``
and plain ``torch.optim`` loops.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import pyro
import torch
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from torch import nn

from ..config import Rule
from ..particles import NotApplicable, Particles, guess_max_plate_nesting, traced_particles

#: The ELBO estimators' objective, as their ``repr`` states it.
ELBO_OBJECTIVE = "ELBO = E_q[log p(x,z) - log q(z|x)]"
#: The K-sample bound estimators' objective, as their ``repr`` states it.
BOUND_OBJECTIVE = "K-sample bound E[log (1/K) sum_k p(x,z_k)/q(z_k|x)]"

Output = Tuple[torch.Tensor, torch.Tensor]


def k_sample_bound(log_w: torch.Tensor) -> torch.Tensor:
    """Per-point K-sample bound log (1/K) Σ_k w_k from log weights (K, B): (B,)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def shift_to(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor with ``value``'s value and ``surrogate``'s gradient."""
    return value.detach() + (surrogate - surrogate.detach())


class Estimator(nn.Module):
    """Base class of the named estimators.

    Subclasses set the class attributes and define ``forward``; registering one with
    ``@ESTIMATORS.register(name)`` makes it a name on the command line, in config files and in
    ``make_estimator``, and puts it under the producer-equality test.

    Class attributes:
        name: the registered name (set by the registry).
        objective: a formula for ``repr``.
        gradient: how the gradient is estimated, for ``repr``.
        reparameterized: whether the estimator differentiates through z (the producer then
            samples with ``rsample``); False for score-function estimators.
        default_particles: K when ``num_particles`` is not given.
        min_particles: the smallest K it is defined for.
        supports_warmup: whether it differentiates the KL warm-up objective when
            ``Particles.kl_weight`` β < 1 (reporting the true one); the trainer refuses
            ``warmup`` with an estimator that does not.
        takes_global_latents: whether it estimates the data set's objective when the
            particles share global latents' densities out over the points (an average of one
            weight per point at a time does; a K-sample bound or a score-function surrogate
            of the shares would not). Refused otherwise (``NotApplicable``), so that a
            user's own estimator is safe by default.
        takes_enumerated: whether it estimates its objective when the guide sums discrete
            sites out exactly (``Particles.enumerated``): the ELBO's fields are then
            expectations over them and the K-sample weight their sum (``log_w_summed``),
            which an estimator that differentiates ∇ log q(z) of sampled particles (a score
            function) or the weight's path alone (DReG) does not follow. Refused otherwise.

    Args:
        num_particles: K, samples of z per data point per step.
    """

    name: ClassVar[str] = ""
    objective: ClassVar[str] = ELBO_OBJECTIVE
    gradient: ClassVar[str] = ""
    reparameterized: ClassVar[bool] = True
    default_particles: ClassVar[int] = 1
    min_particles: ClassVar[int] = 1
    supports_warmup: ClassVar[bool] = False
    takes_global_latents: ClassVar[bool] = False
    takes_enumerated: ClassVar[bool] = False

    def __init__(self, num_particles: Optional[int] = None) -> None:
        super().__init__()
        if num_particles is not None:
            Rule("int", minimum=1).check("num_particles", num_particles)
        k = self.default_particles if num_particles is None else num_particles
        if k < self.min_particles:
            raise ValueError(
                f"the {self.name} estimator needs at least {self.min_particles} particle"
                f"{'s' if self.min_particles > 1 else ''}, got {k}"
            )
        self.num_particles = k
        self._elbo: Optional[EstimatorELBO] = None

    def __call__(self, particles: Particles, *args, **kwargs) -> Output:
        if particles.global_latents and not self.takes_global_latents:
            raise NotApplicable(
                f"the program has global latents ({', '.join(particles.global_latents)}), "
                f"which the {self.name or type(self).__name__} estimator cannot take: its "
                "objective is not a sum of one weight per data point; use pathwise or stl"
            )
        if particles.enumerated and not self.takes_enumerated:
            raise NotApplicable(
                f"the guide sums {', '.join(particles.enumerated)} out by enumeration, which the "
                f"{self.name or type(self).__name__} estimator does not follow; use pathwise, "
                "stl, analytic-kl or iwae, or leave the site unmarked to sample it (a "
                "score-function estimator then gives it a score term)"
            )
        return super().__call__(particles, *args, **kwargs)

    def forward(self, particles: Particles, update_state: bool = True) -> Output:
        """(loss, surrogate) for a batch's particles: scalars, the loss minus the objective
        estimate summed over the batch and scaled by N / B, the surrogate's gradient the
        estimator's. ``update_state=False`` leaves the estimator's state (baselines) as it
        was, for reporting a loss without taking a step."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor) -> None:
        """Create state shaped by the data from a batch ``x`` (B, ...) as the model sees it:
        called before the optimizer collects ``parameters()``. Nothing by default."""

    @property
    def fixed_batch_shape(self) -> bool:
        """Whether the estimator keeps state shaped like the batch, so every training batch
        must have the same size."""
        return False

    @property
    def options(self) -> Dict[str, Any]:
        """The options it was made with, as ``make_estimator`` takes them (besides
        ``num_particles``)."""
        return {}

    @classmethod
    def variants(cls) -> List[Dict[str, Any]]:
        """Option sets worth comparing and testing (every baseline of the score-function
        estimator, say); ``[{}]`` when the defaults say it all."""
        return [{}]

    @property
    def spec(self) -> str:
        """``name`` or ``name:key=value,...``, as ``pyrovae gradvar --estimators`` takes it."""
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name

    @property
    def elbo(self) -> "EstimatorELBO":
        """This estimator as a ``pyro.infer.ELBO`` over the traced producer."""
        if self._elbo is None:
            self._elbo = EstimatorELBO(self)
        return self._elbo

    def extra_repr(self) -> str:
        return f"num_particles={self.num_particles}"

    def __repr__(self) -> str:
        k = self.num_particles
        return (
            f"{self.name}: objective {self.objective}; gradient {self.gradient}; "
            f"{k} particle{'s' if k > 1 else ''}"
        )


_store_names = itertools.count()


class EstimatorELBO(ELBO):
    """An ``Estimator`` as a ``pyro.infer.ELBO``: each call traces the model and guide
    (``traced_particles``, particles vectorized left of ``max_plate_nesting`` plates) and
    applies the estimator. Works with ``pyro.infer.SVI`` and with ``torch.optim``.

    The estimator's own parameters (a neural baseline) are registered with ``pyro.module``
    under a name unique to this object, so that ``SVI`` optimizes them; their values live in
    the estimator's module. A neural baseline takes the model's first argument as its input.
    """

    def __init__(self, estimator: Estimator, max_plate_nesting: Optional[int] = None) -> None:
        # (Not Pyro's vectorize_particles, which would count the particle plate in
        # max_plate_nesting: ``traced_particles`` vectorizes the particles itself.) None:
        # inferred on each call, as Pyro's ELBOs do (Pyro's own "unknown" is inf).
        nesting = float("inf") if max_plate_nesting is None else max_plate_nesting
        super().__init__(num_particles=estimator.num_particles, max_plate_nesting=nesting)
        self.estimator = estimator
        self._store_name = f"pyrovae-estimator-{estimator.name}-{next(_store_names)}"
        self._prepared = False

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("the particles are drawn in one vectorized trace")

    def _particles(self, model, guide, args, kwargs) -> Particles:
        if self.max_plate_nesting == float("inf"):  # inferred once, as Pyro's ELBOs do
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        particles = traced_particles(
            model,
            guide,
            args,
            kwargs,
            num_particles=self.estimator.num_particles,
            reparameterized=self.estimator.reparameterized,
            max_plate_nesting=self.max_plate_nesting,
        )
        if not self._prepared and particles.x is not None:
            self.estimator.prepare(particles.x)
            self._prepared = True
        if any(p.requires_grad for p in self.estimator.parameters()):
            pyro.module(self._store_name, self.estimator)
        return particles

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the objective estimate, without gradients or state updates."""
        with torch.no_grad():
            loss, _ = self.estimator(
                self._particles(model, guide, args, kwargs), update_state=False
            )
        return torch_item(loss)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss, carrying the estimator's gradient (and updating its state)."""
        loss, surrogate = self.estimator(self._particles(model, guide, args, kwargs))
        return shift_to(loss, surrogate)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The loss; the estimator's gradient is accumulated into ``.grad``."""
        loss, surrogate = self.estimator(self._particles(model, guide, args, kwargs))
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        return torch_item(loss)
