"""The inference gap of a VAE and its two parts (Cremer, Li & Duvenaud, 2018).

For each data point x, with q_φ(z | x) the amortized guide (the family at the encoder's output)
and q*(z | x) the best member of the same family fitted to x alone:

    log p(x) - ELBO(q_φ)  =  [log p(x) - ELBO(q*)]   +   [ELBO(q*) - ELBO(q_φ)]
         inference gap       approximation gap          amortization gap

The approximation gap is what a richer family could gain; the amortization gap is what a better
encoder (or local refinement, the ``local`` guide) could gain. q* is found by
``pyrovae.parts.refinement.fit_guide_inputs``: Adam on each point's family input, started at the
encoder's output. For a Pyro program of the user's own, the family is each local site's
distribution at parameters of the point's own, started at those the guide computed
(``pyrovae.evaluation.site_fit``). Both ELBOs are averages of K log weights, and log p(x) is the
importance-weighted estimate with K samples from q*, the better proposal (or the exact value for a
linear-Gaussian model); asked for AIS as well, the larger per point of the two, so that log p(x)
is never below ELBO(q*) (``larger_lower_bound``). The importance-weighted estimate under q_φ is
reported beside it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ..config import SEED_RULE, Rule
from ..data import as_data_tensor
from ..model import TwoLayerVAE
from ..parts.refinement import fit_guide_inputs
from ..producers import GivenInputProducer, make_producer
from ..runtime import module_device
from .ais import ais_log_likelihood, as_producer
from .importance import LogLikelihood, data_dtype, estimate_log_likelihood
from .site_fit import GivenSiteInputs, fit_site_inputs
from .truth import exact_log_px, mean_stderr


@dataclass
class InferenceGap:
    """The gap's parts in nats per data point, means over the points with standard errors.

    ``log_px`` is the estimate of log p(x) the gaps use, ``log_px_source`` says which it is
    (``importance-weighted, fitted q``, ``exact``, or the larger per point of that and AIS,
    with how many points each gave); ``log_px_fitted`` and ``log_px_amortized`` are the
    importance-weighted estimates with the fitted and the amortized guide as proposals, and
    ``log_px_ais`` AIS's, where it ran. ``steps``, ``lr`` and ``samples`` describe the
    per-point fit; ``per_point`` holds (n,) tensors of each quantity, on the CPU.
    """

    n: int
    k: int
    steps: int
    lr: float
    samples: int
    log_px: float
    log_px_stderr: float
    log_px_source: str
    log_px_fitted: float
    log_px_fitted_stderr: float
    log_px_amortized: float
    log_px_amortized_stderr: float
    elbo_amortized: float
    elbo_amortized_stderr: float
    elbo_fitted: float
    elbo_fitted_stderr: float
    approximation_gap: float
    approximation_gap_stderr: float
    amortization_gap: float
    amortization_gap_stderr: float
    inference_gap: float
    inference_gap_stderr: float
    seconds: float
    checkpoint: Optional[str] = None
    log_px_ais: Optional[float] = None
    log_px_ais_stderr: Optional[float] = None
    per_point: Optional[Dict[str, torch.Tensor]] = None

    def to_dict(self) -> Dict[str, Any]:
        """The scalar fields, JSON-ready (``checkpoint`` and ``log_px_ais`` only when set)."""
        d = asdict(self)
        d.pop("per_point")
        for key in ("checkpoint", "log_px_ais", "log_px_ais_stderr"):
            if d[key] is None:
                d.pop(key)
        return d


def larger_lower_bound(bounds: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, str]:
    """The larger, per point, of stochastic lower bounds on log p(x) (name -> (n,) values), as
    Cremer, Li & Duvenaud (2018) took the larger of AIS and the importance-weighted estimate:
    each is one, so their maximum is too, and it is at least the importance-weighted
    estimate with q*, which is at least ELBO(q*) (the same K log weights, by Jensen). So the
    approximation gap is never below zero. Returns the values and a source that says which
    bound won on how many points, and, where the last bound (AIS) lost on most, what to
    raise."""
    names = list(bounds)
    best, which = torch.stack([bounds[name] for name in names]).max(0)
    if len(names) == 1:
        return best, names[0]
    wins = [int((which == i).sum()) for i in range(len(names))]
    n = best.shape[0]
    source = "the larger per point of " + " and ".join(
        f"{name} ({won} of {n} points)" for name, won in zip(names, wins)
    )
    if 2 * wins[-1] < n:
        source += f"; {names[-1]} is the weaker bound on most points: raise --ais-steps"
    return best, source


def inference_gap(
    vae,
    data: torch.Tensor,
    k: int = 5000,
    steps: int = 1000,
    lr: float = 0.05,
    samples: int = 8,
    seed: int = 0,
    progress: bool = True,
    ais_steps: int = 0,
    ais_chains: int = 16,
) -> InferenceGap:
    """Split log p(x) - ELBO of ``vae``'s amortized guide on ``data`` (N, x_dim) into the
    approximation and amortization gaps (see the module docstring), on the VAE's device (the
    points are moved there, whole: the fit holds an input per point anyway).

    Args:
        vae: a ``VAE`` (one latent layer; a ``local`` guide is taken as its base family at the
            encoder's output), or a Pyro program of the user's own (a ``(model, guide)`` pair,
            a ``pyrovae.Program`` or its traced producer), whose family is each local site's
            distribution at parameters of the point's own (``pyrovae.evaluation.site_fit``).
        data: (N, x_dim) points (with a program that takes labels, their labels as a last
            column, ``pyrovae.program.with_labels``).
        k: importance samples per point for each ELBO and log p(x).
        steps, lr, samples: the per-point fit of q*: Adam steps, initial step size (cosine
            decay), and particles per step's ELBO estimate. On the default binarized-MNIST VAE
            the defaults' ELBO is within 0.015 nats of 2000 steps'.
        seed: seeds the fit's noise and the importance samples.
        ais_steps, ais_chains: when ``ais_steps`` > 0, log p(x) is per point the larger of
            the importance-weighted estimate with q* and annealed importance sampling's
            (``pyrovae.evaluation.ais``, from the prior, that many intermediate distributions
            and chains per point; ``larger_lower_bound``), as Cremer et al. took it; the
            AIS estimate is also reported alone (``log_px_ais``).
    """
    Rule("int", minimum=1).check("k", k)
    Rule("int", minimum=0).check("steps", steps)
    Rule("number", positive=True).check("lr", lr)
    Rule("int", minimum=1).check("samples", samples)
    SEED_RULE.check("seed", seed)
    start = time.perf_counter()
    fit = (steps, lr, samples, seed, progress)
    if isinstance(vae, torch.nn.Module) and hasattr(vae, "encoder"):
        fits = _vae_fits(vae, data, *fit)
    else:
        fits = _program_fits(vae, data, *fit)

    def evaluate(rows: torch.Tensor) -> LogLikelihood:
        torch.manual_seed(seed)
        return estimate_log_likelihood(None, None, rows, k, producer=fits.scorer, progress=progress)

    amortized, fitted = evaluate(fits.amortized), evaluate(fits.fitted)
    bounds = {f"importance-weighted, K={k}, fitted q": fitted.per_point_log_px}
    ais = None
    if fits.exact is None and ais_steps:
        torch.manual_seed(seed)
        ais = ais_log_likelihood(fits.producer, fits.data, ais_steps, ais_chains,
                                 progress=progress)  # fmt: skip
        bounds[f"AIS, T={ais_steps}, {ais_chains} chains"] = ais.per_point_log_px
    exact = fits.exact
    log_px, source = (exact, "exact") if exact is not None else larger_lower_bound(bounds)
    per_point = {
        "log_px": log_px,
        "log_px_fitted": fitted.per_point_log_px,
        "log_px_amortized": amortized.per_point_log_px,
        "elbo_amortized": amortized.per_point_elbo,
        "elbo_fitted": fitted.per_point_elbo,
        "approximation_gap": log_px - fitted.per_point_elbo,
        "amortization_gap": fitted.per_point_elbo - amortized.per_point_elbo,
        "inference_gap": log_px - amortized.per_point_elbo,
    }
    if ais is not None:
        per_point["log_px_ais"] = ais.per_point_log_px
    stats = {name: mean_stderr(v) for name, v in per_point.items()}
    fields = {}
    for name, (mean, stderr) in stats.items():
        fields[name], fields[f"{name}_stderr"] = mean, stderr
    return InferenceGap(
        n=fits.data.shape[0],
        k=k,
        steps=steps,
        lr=lr,
        samples=samples,
        log_px_source=source,
        seconds=time.perf_counter() - start,
        per_point=per_point,
        **fields,
    )


@dataclass
class _Fits:
    """What the gap scores: rows (point, family input) under the amortized and the fitted
    inputs, the producer that scores such rows (``scorer``) and the one of the points alone
    (``producer``, for AIS), the points, and the exact log p(x) where known."""

    scorer: Any
    amortized: torch.Tensor
    fitted: torch.Tensor
    producer: Any
    data: torch.Tensor
    exact: Optional[torch.Tensor]


def _vae_fits(vae, data, steps, lr, samples, seed, progress) -> _Fits:
    """The library's VAE: its guide family's inputs, the encoder's output refined per point
    (``fit_guide_inputs``)."""
    if isinstance(vae, TwoLayerVAE):
        raise ValueError(
            "the inference gap fits q(z | x) per data point for one latent layer; a two-layer "
            "VAE's guide q(z1 | x) q(z2 | z1) is not a family of per-point inputs"
        )
    dtype = next(vae.parameters()).dtype
    data = as_data_tensor(data, "data", dtype).to(module_device(vae))
    vae.data_scale(data)  # the shape
    vae.likelihood.check_data(data)
    with torch.no_grad():
        amortized = torch.cat(
            [vae.encoder(data[lo : lo + 1000]) for lo in range(0, data.shape[0], 1000)]
        )
    fitted = fit_guide_inputs(vae, data, steps, lr, samples, seed, progress=progress)
    rows = [torch.cat([data, h], -1) for h in (amortized, fitted)]
    return _Fits(GivenInputProducer(vae), *rows, make_producer(vae), data, exact_log_px(vae, data))


def _program_fits(subject, data, steps, lr, samples, seed, progress) -> _Fits:
    """A program of the user's own: its local sites' parameters fitted per point
    (``pyrovae.evaluation.site_fit``); no exact log p(x)."""
    producer = as_producer(subject)
    device = getattr(producer, "device", None) or data.device
    data = as_data_tensor(data, "data", data_dtype(data, producer.model)).to(device)
    amortized, fitted, layout = fit_site_inputs(producer, data, steps, lr, samples, seed,
                                                progress=progress)  # fmt: skip
    rows = [torch.cat([data, h.to(data.dtype)], -1) for h in (amortized, fitted)]
    return _Fits(GivenSiteInputs(producer, layout), *rows, producer, data, None)
