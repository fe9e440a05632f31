"""Producers: the route by which a batch's particles are computed, chosen once per run.

A producer is called as ``producer(x, num_data, num_particles, reparameterized)`` and returns
``Particles`` (``pyrovae.particles``); ``reparameterized`` is True (``rsample``), False
(``sample``, for score-function estimators) or None (as the guide samples by default, for
evaluation). Two exist:

- ``direct``: ``VAE.particles``, the library's VAE computed from its parts (the default where it
  applies: a ``VAE`` whose ``model`` and ``guide`` are the library's own).
- ``traced``: any Pyro model/guide pair, traced (``traced_particles``). The model and guide are
  called as ``model(x)`` and ``guide(x)`` with a minibatch x; the data scale N / B is applied
  by the producer, so the pair needs no ``num_data`` argument. Called with ``num_data`` (a
  training step) it computes the objective as Pyro's ELBOs do (``poutine.scale`` and a plate
  that subsamples by itself multiply in); without (evaluation), the model's own densities of
  every point of the batch.

The trainer, the evaluator and ``pyrovae gradvar`` take the same producer, so what is measured
is what trains; the run records which one it was. ``estimate_and_backward`` is the part of a
training step they share (particles, estimator, gradient), and ``check_applies`` asks whether
an estimator can be computed for a model at all.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch

from .enumeration import enumerated_names, unmarked
from .model import VAE, TwoLayerVAE
from .particles import (
    HeldGlobals,
    NotApplicable,
    Particles,
    guess_max_plate_nesting,
    require_continuous_latents,
    traced_particles,
    traced_prior_latents,
    traced_scores,
    traced_simulation,
)
from .program import Program, as_program, call_args
from .runtime import fork_rng, module_device

if TYPE_CHECKING:
    from .estimators import Estimator

PRODUCERS = ("auto", "direct", "traced")


class _ModelDraws:
    """What both producers draw from the model alone, by tracing it: the model is the same
    Pyro program whichever route computes the particles (``model`` and
    ``max_plate_nesting`` are the producer's)."""

    model: Callable

    def nesting(self, x: torch.Tensor) -> int:
        """The plates the model nests (the library's VAE: one, the data plate)."""
        return 1

    def args(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The model's and guide's arguments for the batch ``x``: ``(x,)``."""
        return (x,)

    def summed_sites(self, x: torch.Tensor) -> Tuple[str, ...]:
        """The discrete sites summed out by enumeration (``pyrovae.enumeration``): none in
        the library's VAE."""
        return ()

    def sample_prior(self, x: torch.Tensor, num_samples: int) -> Dict[str, torch.Tensor]:
        """Latents drawn from the model's prior, (num_samples, B, ...) per site; those summed
        out by enumeration left out (the others are then a draw from their marginal)."""
        drawn = traced_prior_latents(self.model, self.args(x), num_samples, self.nesting(x))
        summed = self.summed_sites(x)
        return {name: v for name, v in drawn.items() if name not in summed}

    def sample_guide(self, x: torch.Tensor, num_samples: int) -> Dict[str, torch.Tensor]:
        """Latents drawn from the guide, (num_samples, B, ...) per site, detached."""
        drawn = self(x, None, num_samples, None).latents
        return {name: v.detach() for name, v in drawn.items()}

    def simulate(self, x_like: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(x, latents) drawn from the model, one per row of ``x_like`` (its shape only, and
        the labels it carries for a program that takes them); the sites summed out by
        enumeration left out of the latents (the others are then a draw of their marginal
        posterior given x, as BDMC's reverse chains need)."""
        x_shape, *rest = self.args(x_like)
        x, latents = traced_simulation(self.model, x_shape, *rest)
        summed = self.summed_sites(x_like)
        return x, {name: v for name, v in latents.items() if name not in summed}

    def holding_globals(self, x: torch.Tensor, chains: int) -> "_ModelDraws":
        """This producer with the program's global latents held, for ``chains`` particles of
        the batch ``x``, at draws from the guide (``TracedProducer``'s); itself where the
        program has none (the library's VAE)."""
        return self

    def require_continuous(self, x: torch.Tensor, what: str) -> None:
        """Refuse ``what`` (a method that follows gradients in z) for a model with a discrete
        latent (``pyrovae.particles.require_continuous_latents``), traced on the batch ``x``."""
        require_continuous_latents(self.model, self.args(x), what, self.summed_sites(x))


class DirectProducer(_ModelDraws):
    """``vae.particles``: a ``VAE``'s particles from its parts, tested equal to tracing it."""

    name = "direct"
    # Scoring particles runs no Pyro handler, so it may run on worker threads.
    thread_safe = True

    def __init__(self, vae: VAE) -> None:
        if not supports_direct(vae):
            raise ValueError(
                f"the direct producer computes the library's own VAE.model and VAE.guide; "
                f"{type(vae).__name__} overrides them: use the traced producer"
            )
        self.vae = vae

    @property
    def device(self) -> torch.device:
        """Where the particles are computed: the VAE's device."""
        return module_device(self.vae)

    def __call__(
        self,
        x: torch.Tensor,
        num_data: Optional[int],
        num_particles: int,
        reparameterized: Optional[bool],
    ) -> Particles:
        return self.vae.particles(x, num_data, num_particles, reparameterized)

    def score(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> Particles:
        """The log densities at given latents (C, B, ...): ``vae.scores``."""
        return self.vae.scores(x, latents)

    @property
    def model(self) -> Callable:
        """The VAE's model (``VAE.model``)."""
        return self.vae.model


class GivenInputProducer(DirectProducer):
    """The direct producer at given guide inputs: each row of its ``x`` argument is a data
    point followed by the guide family's input for it, (B, x_dim + F), and the particles are
    ``vae.particles(x, ..., guide_input=h)``. The evaluator runs on such rows to score a guide
    whose inputs were computed beforehand in batches (refined per data point, see
    ``pyrovae.parts.refinement``), while its chunks hold one data point each."""

    def __call__(
        self,
        x: torch.Tensor,
        num_data: Optional[int],
        num_particles: int,
        reparameterized: Optional[bool],
    ) -> Particles:
        d = self.vae.x_dim
        return self.vae.particles(
            x[:, :d], num_data, num_particles, reparameterized, guide_input=x[:, d:]
        )


class TracedProducer(_ModelDraws):
    """Any Pyro model/guide pair, called as ``model(x)``/``guide(x)`` and traced."""

    name = "traced"
    # Pyro's handler stack is global to the process: one trace at a time.
    thread_safe = False

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        max_plate_nesting: Optional[int] = None,
        record_params: bool = False,
        params: Sequence[torch.Tensor] = (),
        labels: bool = False,
        auxiliary: Optional[Callable] = None,
        classify: Optional[Callable] = None,
    ) -> None:
        self.model, self.guide, self.max_plate_nesting = model, guide, max_plate_nesting
        # A term of the training objective beside the ELBO, and a classifier whose validation
        # error training records (``Program.auxiliary``, ``Program.classify``).
        self.auxiliary, self.classify = auxiliary, classify
        # Called as model(x, y), the labels carried in the batch's last column (``Program``).
        self.labels = labels
        # The pair's trainable tensors where known (the trainer's): held fixed in
        # ``log_q_stopped``.
        self.params = list(params)
        # The trainer holds the parameters already: the pair's param statements need not
        # reach any handler (see ``traced_particles``).
        self.record_params = record_params
        self._summed: Optional[Tuple[str, ...]] = None  # (``summed_sites``)
        self._validated = False  # (``_validation``)

    def nesting(self, x: torch.Tensor) -> int:
        """The plates the pair nests: as given, else inferred on the first batch ``x`` as
        Pyro's ELBOs infer it (``guess_max_plate_nesting``) and kept."""
        if self.max_plate_nesting is None:
            args = self.args(x)
            self.max_plate_nesting = guess_max_plate_nesting(self.model, self.guide, args)
        return self.max_plate_nesting

    def args(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The model's and guide's arguments for the batch ``x``: ``(x,)``, or ``(x, y)`` for
        a program with labels (``pyrovae.program.call_args``)."""
        return call_args(x, bool(self.labels))

    @property
    def device(self) -> Optional[torch.device]:
        """Where the particles are computed, where known: that of the pair's parameters (the
        trainer's), else of the module whose method the model is; ``None`` for a pair of bare
        ``pyro.param`` calls (the data then stay on their own device)."""
        if self.params:
            return self.params[0].device
        owner = getattr(self.model, "__self__", None)
        return module_device(owner) if isinstance(owner, torch.nn.Module) else None

    def __call__(
        self,
        x: torch.Tensor,
        num_data: Optional[int],
        num_particles: int,
        reparameterized: Optional[bool],
    ) -> Particles:
        scale = None  # evaluation: the program's own plates
        if num_data is not None:
            if num_data < x.shape[0]:
                raise ValueError(f"num_data={num_data} is smaller than the batch ({x.shape[0]})")
            scale = num_data / x.shape[0]
        training = num_data is not None
        with self._validation(training):
            particles = self._traced(x, num_particles, reparameterized, scale)
        self._validated = self._validated or training
        if num_data is not None and self.auxiliary is not None:  # training only
            particles.add_auxiliary(self.auxiliary(*self.args(x)))
        return particles

    def _validation(self, training: bool):
        """Pyro's validation as the user set it, except in training steps after the first
        one that succeeded: there off. It checks every distribution's parameters and values
        at every step (1 % of an M2 step, more where the networks are small); the program's
        structure and parameters were checked on the first step, a NaN in them later makes
        the loss NaN (which the trainer refuses), and the data's support is checked at every
        step regardless (``traced_particles``)."""
        if training and self._validated:
            return pyro.validation_enabled(False)
        return contextlib.nullcontext()

    def _traced(self, x, num_particles, reparameterized, scale) -> Particles:
        return traced_particles(
            self.model,
            self.guide,
            self.args(x),
            num_particles=num_particles,
            reparameterized=reparameterized,
            scale=scale,
            max_plate_nesting=self.nesting(x),
            record_params=self.record_params,
            params=self.params,
            scaled=scale is not None,
        )

    def score(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> Particles:
        """The log densities at given latents (C, B, ...), the enumerated sites summed out:
        ``traced_scores``."""
        return traced_scores(
            self.model, self.guide, self.args(x), latents, self.nesting(x), self.summed_sites(x)
        )

    def summed_sites(self, x: torch.Tensor) -> Tuple[str, ...]:
        """The sites the pair sums out by enumeration (marked in the guide, or in the model
        alone), found on the first batch ``x`` and kept."""
        if self._summed is None:
            self._summed = enumerated_names(self.model, self.guide, self.args(x), self.nesting(x))
        return self._summed

    def sample_guide(self, x: torch.Tensor, num_samples: int) -> Dict[str, torch.Tensor]:
        """Latents drawn from the guide's marginal q(z | x) = Σ_g q(g | x) q(z | x, g): the
        guide with its enumeration marks off (its discrete sites sampled), the summed sites'
        draws left out. (num_samples, B, ...) per site, detached."""
        summed = self.summed_sites(x)
        if not summed:
            return super().sample_guide(x, num_samples)
        drawn = traced_particles(
            self.model, unmarked(self.guide), self.args(x), num_particles=num_samples,
            max_plate_nesting=self.nesting(x), record_params=self.record_params, scaled=False,
        ).latents  # fmt: skip
        return {name: v.detach() for name, v in drawn.items() if name not in summed}

    def global_sites(self, x: torch.Tensor) -> List[str]:
        """The program's global latents (sites outside the data plate, an autoguide's
        auxiliary ones included), traced on the batch ``x``."""
        with torch.no_grad(), fork_rng(x.device):
            return sorted(self(x, None, 1, None).global_latents)

    def holding_globals(self, x: torch.Tensor, chains: int) -> "TracedProducer":
        """This producer with each of ``chains`` particles' global latents drawn once from the
        guide and held there (``pyrovae.particles.HeldGlobals``), so that a sampler that moves
        the local latents (annealing: its chains are the particles) does so given them, and
        log p(x) is the predictive density E_q(θ)[p(x | θ)], as the importance-weighted
        estimate's. Itself where the program has no global latent (the random streams then
        untouched, as for the direct producer)."""
        if not self.global_sites(x):
            return self
        with torch.no_grad():
            drawn = self(x, None, chains, None).global_latents
        held = copy.copy(self)
        held.model, held.guide = HeldGlobals(drawn)(self.model), HeldGlobals(drawn)(self.guide)
        return held

    def simulate(self, x_like: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """(x, latents) drawn from the model, one per row of ``x_like``; a program's global
        latents drawn once from the guide (what training learnt of them), not the prior."""
        return _ModelDraws.simulate(self.holding_globals(x_like, 1), x_like)


Producer = Union[DirectProducer, GivenInputProducer, TracedProducer]
Subject = Union[VAE, Tuple[Callable, Callable], Program]


def supports_direct(vae: object) -> bool:
    """Whether ``vae`` is a ``VAE`` whose model and guide are the library's own (``VAE``'s, or
    ``TwoLayerVAE``'s for a two-layer one), so that its ``particles`` method is their equal."""
    if not isinstance(vae, VAE):
        return False
    own = TwoLayerVAE if isinstance(vae, TwoLayerVAE) else VAE
    return type(vae).model is own.model and type(vae).guide is own.guide


def make_producer(
    subject: Subject,
    kind: str = "auto",
    max_plate_nesting: Optional[int] = None,
    params: Sequence[torch.Tensor] = (),
) -> Producer:
    """The producer called ``kind`` for ``subject``: a ``VAE``, a ``(model, guide)`` pair or a
    ``pyrovae.program.Program``.

    ``auto`` is ``direct`` for a ``VAE`` that supports it and ``traced`` otherwise. ``params``,
    the pair's trainable tensors where the caller knows them, go to the traced producer (see
    ``TracedProducer``).
    """
    if kind not in PRODUCERS:
        raise ValueError(f"unknown producer {kind!r}; choose one of: {', '.join(PRODUCERS)}")
    if isinstance(subject, (tuple, Program)):
        if kind == "direct":
            raise ValueError(
                "the direct producer is the library's VAE computed from its parts; a "
                "model/guide pair of your own goes through the traced producer"
            )
        program = as_program(subject)
        return TracedProducer(program.model, program.guide, max_plate_nesting, params=params,
                              labels=program.labels, auxiliary=program.auxiliary,
                              classify=program.classify)  # fmt: skip
    if kind == "direct" or (kind == "auto" and supports_direct(subject)):
        return DirectProducer(subject)
    # The library's VAE nests one plate, the data plate: nothing to infer.
    nesting = max_plate_nesting or 1
    return TracedProducer(subject.model, subject.guide, nesting, params=params)


def classification_error(producer: Producer, points: torch.Tensor) -> Optional[float]:
    """The percentage of labelled ``points`` (a program's batch: x and a labels column) whose
    argmax of the program's ``classify(x)`` is not their label; None for a producer without a
    classifier, or no labelled point."""
    classify = getattr(producer, "classify", None)
    if classify is None or not getattr(producer, "labels", False):
        return None
    wrong = known = 0
    with torch.no_grad():
        for start in range(0, points.shape[0], 1000):
            x, y = producer.args(points[start : start + 1000])
            labelled = y >= 0
            wrong += int((classify(x).argmax(-1) != y)[labelled].sum())
            known += int(labelled.sum())
    return 100.0 * wrong / known if known else None


def check_applies(producer: Producer, estimator: "Estimator", x: torch.Tensor) -> None:
    """Compute ``estimator`` once on ``producer``'s particles of ``x`` (B, ...), leaving no
    trace on the random stream or the estimator's state (which it shapes, ``prepare``).

    Raises:
        NotApplicable: the estimator cannot be computed for this model (a reparameterized
            estimator on discrete latents, say), with its name in the message.
    """
    with fork_rng(x.device):
        try:
            # As a training step computes them (a program's plate may subsample the batch: the
            # state is shaped by the points the particles are of).
            k, reparameterized = estimator.num_particles, estimator.reparameterized
            particles = producer(x, x.shape[0], k, reparameterized)
            estimator.prepare(particles.x if particles.x is not None else x)
            estimator(particles, update_state=False)
        except NotApplicable as e:
            raise NotApplicable(f"the {estimator.name!r} estimator does not apply: {e}") from e


def applies(producer: Producer, estimator: "Estimator", x: torch.Tensor) -> bool:
    """Whether ``check_applies`` passes."""
    try:
        check_applies(producer, estimator, x)
    except NotApplicable:
        return False
    return True


def estimate_and_backward(
    producer: Producer,
    estimator: "Estimator",
    x: torch.Tensor,
    num_data: Optional[int],
    update_state: bool = True,
    kl_weight: float = 1.0,
    batch_size: Optional[int] = None,
) -> float:
    """The gradient part of a training step: particles of ``x`` (B, ...) from ``producer``,
    the estimator's surrogate differentiated into ``.grad``. Returns the loss (minus the
    objective estimate, scaled by num_data / B). ``update_state=False`` leaves the
    estimator's state as it is (``pyrovae gradvar`` measures this with its state frozen);
    ``kl_weight`` is the warm-up weight β (``Particles.kl_weight``). ``batch_size``: the
    global batch ``x`` is one process's part of (``pyrovae.distributed``), whose scale
    num_data / batch_size the part takes instead of num_data / B (the particles' log densities
    are unscaled: the estimator applies the scale), so that the processes' losses and
    gradients add up to the global batch's."""
    particles = producer(x, num_data, estimator.num_particles, estimator.reparameterized)
    if batch_size is not None and num_data is not None:
        particles.scale = num_data / batch_size
    particles.kl_weight = float(kl_weight)
    loss, surrogate = estimator(particles, update_state=update_state)
    if surrogate.requires_grad:
        surrogate.backward()
    return loss.item()
