"""The best q of a Pyro program's own guide family for each data point: the inference gap of a
model and guide of the user's own (``pyrovae.evaluation.gap``).

pyrovae's VAE has a guide family with an input per point (the encoder's output, which
``pyrovae.parts.refinement`` refines). A user's guide has no such handle, but each latent site it
draws inside the data plate draws from a distribution whose parameters hold a slice per point:
those parameters, unconstrained and flattened, are the point's family input h (``SiteLayout``).
The fit keeps whatever else the guide computes and draws each such site from the same
distribution at h instead (``SiteParameters``); Adam on each point's ELBO (``refine_inputs``)
then finds the best member of the family, q*, as Cremer, Li & Duvenaud (2018) define it: a
Gaussian site's location and scale (or Cholesky factor) fitted to each point. Pyro has no
handler that replaces a site's distribution parameters (``poutine.condition`` fixes values,
``substitute`` fixes ``pyro.param``s, which are shared by every point).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch.distributions import transform_to

from ..particles import ProgramError, local_guide_sites, traced_particles
from ..producers import TracedProducer
from ..runtime import progress_bar

# The distributions whose parameters a point's family input holds: (class, ((constructor
# argument, its event dims), ...)). A site drawn from another one is refused by name.
FAMILIES = (
    (torch.distributions.Normal, (("loc", 0), ("scale", 0))),
    (torch.distributions.LogNormal, (("loc", 0), ("scale", 0))),
    (torch.distributions.Laplace, (("loc", 0), ("scale", 0))),
    (torch.distributions.MultivariateNormal, (("loc", 1), ("scale_tril", 2))),
)


@dataclass
class _Site:
    """One local site's family: its distribution class, how many batch dims ``to_event``
    took, where the data plate sits in its batch shape, and its parameters' per-point shapes
    (the point first, then the rest) with their constraints."""

    kind: type
    reinterpreted: int
    data_dim: int
    params: List[Tuple[str, Tuple[int, ...], Any]]


def _unwrapped(fn) -> Tuple[Any, int]:
    """(the base distribution, the batch dims reinterpreted as event dims on the way)."""
    reinterpreted = 0
    while isinstance(fn, torch.distributions.Independent):
        reinterpreted += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return fn, reinterpreted


def _family(fn) -> Tuple[type, Tuple[Tuple[str, int], ...]]:
    for kind, params in FAMILIES:
        if isinstance(fn, kind):
            return type(fn), params
    return None, ()


class SiteLayout:
    """Where each local site's parameters sit in a point's family input h (B, F), read from
    a guide traced on a batch of B points (no particle plate)."""

    def __init__(self, guide_trace, batch: int) -> None:
        frame, sites = local_guide_sites(guide_trace)
        if frame is None or not sites:
            raise ProgramError("the guide draws no latent inside a data plate: nothing to fit")
        if frame.size != batch:
            raise ProgramError(
                f"the data plate {frame.name!r} draws {frame.size} of the batch's {batch} "
                "points: fitting q per point needs a plate that takes every point it is given "
                "(leave subsample_size out)"
            )
        self.sites: Dict[str, _Site] = {}
        self.amortized: List[torch.Tensor] = []
        for site in sites:
            base, reinterpreted = _unwrapped(site["fn"])
            kind, params = _family(base)
            if kind is None:
                names = ", ".join(k.__name__ for k, _ in FAMILIES)
                raise ProgramError(
                    f"site {site['name']!r} draws from {type(base).__name__}: fitting q per "
                    f"point knows the parameters of {names}"
                )
            data_dim = len(site["fn"].batch_shape) + frame.dim
            shapes = []
            for name, event in params:
                value = getattr(base, name)
                value = value.expand(base.batch_shape + value.shape[value.dim() - event :])
                value = value.movedim(data_dim, 0)
                constraint = kind.arg_constraints[name]
                shapes.append((name, tuple(value.shape[1:]), constraint))
                self.amortized.append(transform_to(constraint).inv(value).reshape(batch, -1))
            self.sites[site["name"]] = _Site(kind, reinterpreted, data_dim, shapes)
        self.features = sum(t.shape[1] for t in self.amortized)

    def inputs(self) -> torch.Tensor:
        """The amortized guide's inputs, the parameters it computed: (B, F), detached."""
        return torch.cat(self.amortized, 1).detach()

    def distribution(self, name: str, h: torch.Tensor):
        """Site ``name``'s distribution at the inputs h (B, F)."""
        start = 0
        for other, site in self.sites.items():
            if other == name:
                break
            start += sum(_size(shape) for _, shape, _ in site.params)
        site, values = self.sites[name], {}
        for param, shape, constraint in site.params:
            u = h[:, start : start + _size(shape)].reshape((h.shape[0],) + shape)
            values[param] = transform_to(constraint)(u).movedim(0, site.data_dim)
            start += _size(shape)
        fn = site.kind(**values)
        return dist.Independent(fn, site.reinterpreted) if site.reinterpreted else fn


def _size(shape: Tuple[int, ...]) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


class SiteParameters(Messenger):
    """Draws each local site of ``layout`` from its family at the inputs h (B, F), whatever
    the guide computed for it."""

    def __init__(self, layout: SiteLayout, h: torch.Tensor) -> None:
        super().__init__()
        self.layout, self.h = layout, h

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.layout.sites and not msg["is_observed"]:
            msg["fn"] = self.layout.distribution(msg["name"], self.h)


class GivenSiteInputs(TracedProducer):
    """A program's particles with its local sites drawn at given family inputs: each row of
    the batch is a point (as the program's producer takes it) followed by its h (F columns),
    so that the evaluator's chunks carry each point's own q."""

    def __init__(self, producer: TracedProducer, layout: SiteLayout) -> None:
        inner, f = producer, layout.features

        def model(*args):
            return inner.model(*args[:-1])

        def guide(*args):
            return SiteParameters(layout, args[-1])(inner.guide)(*args[:-1])

        super().__init__(model, guide, inner.max_plate_nesting)
        self.inner, self.features = inner, f

    def args(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return (*self.inner.args(x[:, : -self.features]), x[:, -self.features :])


def _layout(producer: TracedProducer, x: torch.Tensor) -> SiteLayout:
    args = producer.args(x)
    with torch.no_grad():
        trace = poutine.trace(poutine.block(producer.guide, hide_types=["param"])).get_trace(*args)
    return SiteLayout(trace, x.shape[0])


def fit_site_inputs(
    producer: TracedProducer,
    data: torch.Tensor,
    steps: int,
    lr: float,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, SiteLayout]:
    """(the amortized inputs (N, F), the fitted ones (N, F), the layout) for every row of
    ``data`` (N, ...; as ``producer`` takes it), in batches: the guide's own parameters, then
    ``steps`` Adam steps (``lr``) on each point's ELBO estimated with ``samples`` particles
    (``refine_inputs``). Detached."""
    from ..parts.refinement import refine_inputs

    amortized, fitted, layout = [], [], None
    nesting = producer.nesting(data[:batch_size])
    bar = progress_bar(data.shape[0], f"fitting q, {steps} steps", "point", progress)
    try:
        for lo in range(0, data.shape[0], batch_size):
            x = data[lo : lo + batch_size]
            layout = _layout(producer, x)
            args, h = producer.args(x), layout.inputs()

            def objective(h: torch.Tensor, args=args, layout=layout) -> torch.Tensor:
                guide = SiteParameters(layout, h)(producer.guide)
                return traced_particles(producer.model, guide, args, num_particles=samples,
                                        reparameterized=True, scaled=False,
                                        max_plate_nesting=nesting,
                                        record_params=False).log_w.mean(0)  # fmt: skip

            amortized.append(h)
            fitted.append(refine_inputs(h, objective, steps, lr, seed))
            bar.update(x.shape[0])
    finally:
        bar.close()
    return torch.cat(amortized), torch.cat(fitted), layout
