"""ELBO estimators Pyro lacks, as ``pyro.infer.ELBO`` subclasses.

Every class here has ``loss``, ``loss_and_grads`` and ``differentiable_loss``, so it works with
``pyro.infer.SVI`` and with a plain ``torch.optim`` loop. ``differentiable_loss`` returns a
tensor whose *value* is minus the objective estimate and whose *gradient* is the estimator's
(a surrogate shifted to the loss's value).

- ``STL_ELBO``: "sticking the landing" (Roeder et al., 2017). Pyro has no way to drop the score
  term of q from the pathwise gradient.
- ``ScoreFunctionELBO``: Pyro's ``TraceGraph_ELBO``, which lacks ``differentiable_loss``.
- ``ImportanceWeightedELBO``: the K-sample bound (Burda et al., 2015) per data point, with the
  reparameterized (IWAE) or doubly reparameterized (DReG, Tucker et al., 2018) gradient. Pyro's
  ``RenyiELBO(alpha=0)`` takes the log-mean-exp of the weight of the whole *batch* (all data
  points' log weights summed per particle) and then scales it by num_data / B, which is not
  the sum of the per-point bounds and is biased under data subsampling; it also has no
  ``differentiable_loss`` and no DReG.
- ``VIMCO_ELBO``: the K-sample bound with the score-function gradient and leave-one-out
  control variates (Mnih & Rezende, 2016); not in Pyro.

The K-sample estimators need latents local to the data plate (a (K, B) log weight per particle
and data point); the model's only plate over data must be at dim -1 - ``max_plate_nesting`` + 1,
as in ``pyrovae.VAE``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.util import torch_item
from pyro.poutine.util import site_is_subsample


def _shift_to(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor with ``value``'s value and ``surrogate``'s gradient."""
    return value.detach() + (surrogate - surrogate.detach())


def k_sample_bound(log_w: torch.Tensor) -> torch.Tensor:
    """Per-point K-sample bound log (1/K) Σ_k w_k from log weights (K, B): (B,)."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def _has_params(*traces) -> bool:
    return any(site["type"] == "param" for trace in traces for site in trace.nodes.values())


class STL_ELBO(Trace_ELBO):
    """The single-sample (or ``num_particles``-averaged) ELBO with the "sticking the landing"
    gradient: the pathwise gradient with the guide's score term ∇_φ log q_φ(z)|_z dropped.

    Its expectation is the ELBO gradient (the dropped term has mean zero), and when q equals
    the posterior its guide gradient is exactly zero for every sample. Written for
    reparameterized guides; non-reparameterized sites fall back to ``Trace_ELBO``'s treatment.
    Why not Pyro's: its ELBOs always keep the score term; there is no option to drop it.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        loss, surrogate_loss = super()._differentiable_loss_particle(model_trace, guide_trace)
        for site in guide_trace.nodes.values():
            if site["type"] != "sample" or not site["fn"].has_rsample:
                continue
            # log q_φ(stop(z)): its φ-gradient is the score term. The loss holds +log q_φ(z),
            # whose φ-gradient is the path through z plus that score term; subtracting the
            # term (with value zero) leaves the path alone.
            score = scale_and_mask(
                site["fn"].log_prob(site["value"].detach()), site["scale"], site["mask"]
            ).sum()
            surrogate_loss = surrogate_loss - (score - score.detach())
        return loss, surrogate_loss


class ScoreFunctionELBO(TraceGraph_ELBO):
    """Pyro's ``TraceGraph_ELBO`` (Rao-Blackwellized score-function gradient with optional
    baselines) with the ``differentiable_loss`` it lacks."""

    def differentiable_loss(self, model, guide, *args, **kwargs):
        # Pyro's helper returns the ELBO (not the loss) and the surrogate loss, which includes
        # the baselines' own squared-error losses.
        elbo, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return _shift_to(-torch.as_tensor(elbo), surrogate_loss)


class _KSampleELBO(ELBO):
    """Shared machinery of the K-sample bounds: K = ``num_particles`` particles drawn in one
    vectorized pass, per-data-point log weights (K, B)."""

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        # (Particles are vectorized by ``_traces``; Pyro's own vectorization would move the
        # particle plate one dim further left.)
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("K-sample bounds draw their particles in one vectorized trace")

    def _traces(self, model, guide, args, kwargs):
        dim = -(self.max_plate_nesting + 1)
        with pyro.plate("num_particles_vectorized", self.num_particles, dim=dim):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        return model_trace, guide_trace

    def _per_point(self, site: Dict[str, Any], log_prob: torch.Tensor) -> torch.Tensor:
        """A site's log density reduced to (K, B): nested plates and event dims summed."""
        lp = scale_and_mask(log_prob, 1.0, site["mask"])
        k, n = self.num_particles, self.max_plate_nesting
        lp = lp.expand(torch.broadcast_shapes(lp.shape, (k,) + (1,) * n))
        if lp.dim() != n + 1:
            raise ValueError(
                f"site {site['name']!r} has log-density shape {tuple(lp.shape)}: a K-sample "
                f"bound needs max_plate_nesting ({n}) to count every plate of the model"
            )
        # Plates nested inside the data plate (dims right of it) are summed out.
        while lp.dim() > 2:
            lp = lp.sum(-1)
        return lp

    def _log_weights(self, model_trace, guide_trace, stop_guide_score: bool = False):
        """(log_w (K, B), log_q (K, B), scale, latent sites).

        ``stop_guide_score`` scores the guide with its parameters' direct influence removed
        (log q_{stop φ}(z) with the path through z kept), as DReG needs.
        """
        log_p: List[torch.Tensor] = []
        log_q: List[torch.Tensor] = []
        scales = set()
        latents = []
        for trace, out in ((model_trace, log_p), (guide_trace, log_q)):
            for site in trace.nodes.values():
                if site["type"] != "sample" or site_is_subsample(site):
                    continue
                lp = site["fn"].log_prob(site["value"])
                if trace is guide_trace:
                    latents.append(site)
                    if stop_guide_score:
                        stopped = site["fn"].log_prob(site["value"].detach())
                        lp = lp - stopped + stopped.detach()
                out.append(self._per_point(site, lp))
                scales.add(float(site["scale"]))
        if len(scales) > 1:
            raise ValueError(
                "a K-sample bound needs every sample site inside the same data plate (one "
                f"subsampling scale), but the sites have scales {sorted(scales)}"
            )
        shapes = {tuple(t.shape) for t in log_p + log_q}
        if len(shapes) > 1:
            raise ValueError(
                "a K-sample bound needs latents local to each data point: the per-site log "
                f"densities reduce to shapes {sorted(shapes)}, not one (K, B)"
            )
        total_q = sum(log_q)
        return sum(log_p) - total_q, total_q, scales.pop() if scales else 1.0, latents

    def _loss_and_surrogate(self, model, guide, args, kwargs) -> Tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            loss, _, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        return torch_item(loss)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss, surrogate, _ = self._loss_and_surrogate(model, guide, args, kwargs)
        return _shift_to(loss, surrogate)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss, surrogate, traces = self._loss_and_surrogate(model, guide, args, kwargs)
        if _has_params(*traces) and getattr(surrogate, "requires_grad", False):
            surrogate.backward(retain_graph=self.retain_graph)
        return torch_item(loss)


class ImportanceWeightedELBO(_KSampleELBO):
    """The K-sample importance-weighted bound, summed over data points and scaled for
    subsampling: Σ_b log (1/K) Σ_k p(x_b, z_kb) / q(z_kb | x_b), K = ``num_particles``.

    ``dreg=False``: the reparameterized gradient of the bound (IWAE, Burda et al., 2015).
    ``dreg=True``: the doubly reparameterized gradient (Tucker et al., 2018): the decoder's
    gradient is IWAE's, the guide's is Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ with normalized weights
    w̃ and the score term dropped. Its guide gradient is exactly zero when q is the posterior,
    and its signal-to-noise ratio does not decay as K grows. DReG assumes one stochastic
    layer (latents conditionally independent given x under the guide).

    Why not Pyro's ``RenyiELBO(alpha=0)``: it bounds the whole batch's joint weight and scales
    it by num_data / B (biased under subsampling, not a sum of per-point bounds), has no
    ``differentiable_loss``, and no DReG.
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1, dreg: bool = False):
        super().__init__(num_particles, max_plate_nesting)
        self.dreg = dreg

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        log_w, _, scale, latents = self._log_weights(
            model_trace, guide_trace, stop_guide_score=self.dreg
        )
        for site in latents:
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"the importance-weighted pathwise gradient needs a reparameterized latent, "
                    f"but site {site['name']!r} is not; use the vimco estimator for it"
                )
        loss = -scale * k_sample_bound(log_w).sum()
        if not self.dreg:
            return loss, loss, (model_trace, guide_trace)
        weights = torch.softmax(log_w.detach(), 0)  # (K, B)
        # Σ_k w̃_k log w_k gives the decoder IWAE's gradient and the guide w̃_k ∂log w_k/∂z_k;
        # scaling the gradient arriving at each z_k by w̃_k once more makes that w̃_k².
        for site in latents:
            z = site["value"]
            if z.requires_grad:
                w = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
                z.register_hook(lambda g, w=w: g * w)
        surrogate = -scale * (weights * log_w).sum()
        return loss, surrogate, (model_trace, guide_trace)


class VIMCO_ELBO(_KSampleELBO):
    """The K-sample bound with the VIMCO gradient (Mnih & Rezende, 2016): score function with
    a leave-one-out control variate per particle, for latents that cannot be reparameterized.

    With L̂ = log (1/K) Σ_j w_j and L̂_{-k} the same with log w_k replaced by the mean of the
    other particles' log weights, the gradient is Σ_k (L̂ - L̂_{-k}) ∇ log q(z_k) + Σ_k w̃_k
    ∇ log w_k (z_k held fixed). Needs K ≥ 2. Pyro has no VIMCO.
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1) -> None:
        if num_particles < 2:
            raise ValueError(f"VIMCO needs at least 2 particles, got {num_particles}")
        super().__init__(num_particles, max_plate_nesting)

    @staticmethod
    def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
        """L̂_{-k} for each particle k: (K, B) from log weights (K, B)."""
        k = log_w.shape[0]
        others_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (K, B)
        # Row k of the (K, K, B) stack is log_w with entry k replaced by others_mean[k].
        eye = torch.eye(k, dtype=torch.bool, device=log_w.device).unsqueeze(-1)
        stacked = torch.where(eye, others_mean.unsqueeze(1), log_w.unsqueeze(0))
        return torch.logsumexp(stacked, 1) - math.log(k)

    def _loss_and_surrogate(self, model, guide, args, kwargs):
        model_trace, guide_trace = self._traces(model, guide, args, kwargs)
        log_w, log_q, scale, latents = self._log_weights(model_trace, guide_trace)
        for site in latents:
            if site["value"].requires_grad:
                raise ValueError(
                    f"VIMCO is a score-function estimator: latent {site['name']!r} must be "
                    "sampled without reparameterization (build the VAE with "
                    "reparameterized=False, or use a discrete latent)"
                )
        bound = k_sample_bound(log_w)  # (B,), differentiable in θ and φ with z fixed
        with torch.no_grad():
            signal = bound.unsqueeze(0) - self.leave_one_out_bounds(log_w)  # (K, B)
        loss = -scale * bound.sum()
        surrogate = loss - scale * (signal * log_q).sum()
        return loss, surrogate, (model_trace, guide_trace)


def materialize_baseline(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Give a lazily sized baseline net its input width and initial weights, once.

    A lazy first layer takes its width from ``x`` (B, ...). The initial weights come from a
    fixed seed, outside the global random stream, so that runs with the same seed agree, both
    engines start from the same net, and a resumed run (whose net is then overwritten from the
    checkpoint) draws what an uninterrupted run draws.
    """
    if not any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in net.parameters()):
        return
    net.to(dtype=x.dtype)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        net(x)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def nn_baseline_guide(
    guide: Callable, net: torch.nn.Module, name: str, baseline_beta: float
) -> Callable:
    """``guide`` with an input-dependent (NVIL-style) baseline on its latent sites.

    ``net`` maps the guide's first argument x (B, ...) to a baseline per data point (B,); it is
    registered with ``pyro.module(name, ...)`` so the optimizer trains it, and Pyro's
    ``TraceGraph_ELBO`` fits it to the downstream cost by squared error, on top of a decaying
    average of the cost (NVIL's centring). The guide's second argument, when it is the data
    set size N (``guide(x, num_data)``, as ``pyrovae.VAE.guide``), scales the net's output by
    N / B like the costs, so the net predicts a per-data-point cost in nats: unscaled, it
    would have to learn outputs hundreds of times larger.
    """

    def guided(x, *args, **kwargs):
        materialize_baseline(net, x)
        pyro.module(name, net)
        num_data = kwargs.get("num_data", args[0] if args else None)
        scale = num_data / x.shape[0] if isinstance(num_data, int) and num_data > 0 else 1.0
        options = {
            "baseline": {
                "nn_baseline": (lambda inp: scale * net(inp)) if scale != 1.0 else net,
                "nn_baseline_input": x,
                "use_decaying_avg_baseline": True,
                "baseline_beta": baseline_beta,
            }
        }

        def config(site):
            if site["type"] == "sample" and not site["is_observed"]:
                return options
            return {}

        return poutine.infer_config(guide, config)(x, *args, **kwargs)

    return guided
