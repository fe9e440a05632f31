"""Gradient diagnostics: how noisy each estimator's gradient is at given parameters.

At fixed parameters and on one fixed minibatch, draw N independent gradient estimates per
estimator and report, separately for the inference network (encoder and guide family) and the
generative network (decoder, prior, likelihood): the total variance (the sum over parameter
elements of each element's variance across draws), the mean signal-to-noise ratio
|E g| / std g over elements (Rainforth et al., 2018), and the wall time per estimate. The
gradients are those of the objective averaged over the minibatch's data points.

Each estimate is what a training step computes (``pyrovae.producers.estimate_and_backward``:
the same producer, the same estimator, the model in training mode), so the time per estimate is
the training route's. A
baseline first adapts on random minibatches, as in training, and is then held fixed, so the
estimates are independent.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..estimators import ELBO_OBJECTIVE, ESTIMATORS, Estimator, make_estimator
from ..model import VAE
from ..producers import (
    Producer,
    applies,
    check_applies,
    estimate_and_backward,
    make_producer,
)
from ..runtime import check_step_memory, fused_adam, module_device, place
from ..threads import share_cores


@dataclass
class GradientStats:
    """One estimator's gradient noise at fixed parameters (see the module docstring).

    ``per_element``, when asked for (``gradient_variance(..., per_element=True)``), holds
    float64 CPU tensors ``encoder_mean`` and ``encoder_var`` (P_enc,), ``decoder_mean`` and
    ``decoder_var`` (P_dec,): each gradient element's mean and variance over the draws, the
    elements in the order of the parameters of ``vae.inference_modules()`` (encoder) and of
    the rest of ``vae.parameters()`` (decoder), each flattened. With the variance, the mean can
    be tested against an exact gradient (its standard error is sqrt(var / draws)).
    """

    estimator: str
    description: str
    producer: str
    draws: int
    encoder_variance: float
    decoder_variance: float
    encoder_snr: float
    decoder_snr: float
    seconds_per_estimate: float
    batch_size: Optional[int] = None  # the minibatch's size, B
    per_element: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """The scalar fields, JSON-ready (``per_element`` left out)."""
        d = asdict(self)
        d.pop("per_element")
        return d


def parse_estimator_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (name, options); numbers are parsed,
    e.g. ``"iwae:num_particles=10"``, ``"score-function:baseline=neural"``."""
    name, _, rest = spec.partition(":")
    options: Dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"estimator option {item!r} in {spec!r} is not KEY=VALUE")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        options[key.strip().replace("-", "_")] = value
    return name.strip(), options


def estimator_specs() -> List[str]:
    """Every registered estimator with each of its variants (``Estimator.variants``): the ELBO
    estimators, then the K-sample bounds, each pathwise before score-function, then by name."""

    def order(name: str):
        cls = ESTIMATORS.get(name)
        return cls.objective != ELBO_OBJECTIVE, not cls.reparameterized, name

    specs = []
    for name in sorted(ESTIMATORS.names(), key=order):
        for options in ESTIMATORS.get(name).variants():
            specs.append(make_estimator(name, **options).spec)
    return specs


def default_estimator_specs(vae: VAE, x: torch.Tensor, producer: str = "auto") -> List[str]:
    """Every registered estimator (and variant) that applies to ``vae``, judged on ``x`` as
    training computes it (``training_mode``)."""
    route = make_producer(vae, producer)
    x = x.to(module_device(vae))
    with training_mode(vae):
        return [s for s in estimator_specs() if applies(route, _make(s), x)]


@contextlib.contextmanager
def training_mode(vae: VAE):
    """``vae`` in training mode for the block, then back in the mode it was in: its gradients
    are then the ones a training step computes. (In eval mode, as ``load_vae`` returns it, a
    ``local`` guide refines its input with the steps cut from the graph, so the encoder would
    get no gradient at all, though training gives it one.)"""
    was_training = vae.training
    vae.train()
    try:
        yield vae
    finally:
        vae.train(was_training)


def _make(spec: str) -> Estimator:
    name, options = parse_estimator_spec(spec)
    return make_estimator(name, **options)


class _Moments:
    """Running mean and variance per element (Welford), float64, for gradients too many to
    keep."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, g: torch.Tensor) -> None:
        g = g.double()
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = g.clone(), torch.zeros_like(g)
            return
        delta = g - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (g - self.mean)

    def variance(self) -> torch.Tensor:
        """Each element's unbiased variance over the draws."""
        return self.m2 / max(self.n - 1, 1)

    def summary(self) -> Tuple[float, float]:
        """(total variance, mean SNR over elements with nonzero variance)."""
        var = self.variance()
        std = var.sqrt()
        live = std > 0
        snr = (self.mean.abs()[live] / std[live]).mean().item() if live.any() else math.inf
        return var.sum().item(), snr


def _measured(spec: str, encoder: _Moments, decoder: _Moments):
    """The encoder's and the decoder's ``_Moments.summary()`` for estimator ``spec``.

    Raises:
        ValueError: a part's gradient was exactly zero in every draw: it gets no gradient, and
            a variance of 0 with an SNR of inf would read as a measurement.
    """
    for part, moments in (("encoder", encoder), ("decoder", decoder)):
        if moments.n and moments.mean.numel() and not (moments.mean.any() or moments.m2.any()):
            raise ValueError(
                f"{spec!r} gives the {part} a gradient of exactly zero in every draw at these "
                "parameters: there is no gradient noise to measure"
            )
    return encoder.summary(), decoder.summary()


def _split_params(vae: VAE) -> Tuple[List[torch.nn.Parameter], List[torch.nn.Parameter]]:
    inference = [p for m in vae.inference_modules() for p in m.parameters()]
    ids = {id(p) for p in inference}
    generative = [p for p in vae.parameters() if id(p) not in ids]
    return inference, generative


def _flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def _warm_up_baselines(
    producer: Producer, est: Estimator, x: torch.Tensor, steps: int, vae: VAE, data=None
) -> None:
    """Let an estimator's baselines adapt at the fixed VAE: decaying averages settle, a neural
    baseline is fitted by Adam (the VAE's own parameters are frozen meanwhile). With ``data``
    (N, ...), each step uses a fresh random minibatch of ``x``'s size from it, as in training;
    otherwise ``x`` itself, which lets a per-position decaying average fit that batch's points
    (a state training never reaches, since its batches change)."""
    own = list(est.parameters())
    if steps <= 0 or (not own and not est.fixed_batch_shape):
        return
    frozen = [p for p in vae.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    optim = fused_adam(own, 1e-2) if own else None

    def batch():
        if data is None:
            return x
        # Drawn from the CPU's stream, so that the batches are the same on every device.
        idx = torch.randint(data.shape[0], (x.shape[0],))
        return data[idx.to(data.device)].to(x.device)

    try:
        for _ in range(steps):
            if optim is None:  # a decaying average alone: no gradient to take
                with torch.no_grad():
                    xb = batch()
                    est(producer(xb, None, est.num_particles, est.reparameterized))
            else:
                optim.zero_grad(set_to_none=True)
                estimate_and_backward(producer, est, batch(), None)
                optim.step()
            share_cores()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        vae.zero_grad(set_to_none=True)


def gradient_variance(
    vae: VAE,
    x: torch.Tensor,
    estimators: Sequence[str],
    draws: int = 100,
    warmup: int = 200,
    progress: bool = True,
    warmup_data: Optional[torch.Tensor] = None,
    producer: str = "auto",
    per_element: bool = False,
) -> List[GradientStats]:
    """Gradient noise of each estimator at ``vae``'s current parameters on minibatch ``x``.

    Args:
        vae: the model (its parameters are not changed); the draws run on its device, where
            ``x`` and ``warmup_data`` are moved (the latter whole where it fits).
        x: the minibatch, (B, x_dim); every draw uses it.
        estimators: specs as in ``parse_estimator_spec``.
        draws: independent gradient estimates per estimator.
        warmup: baseline adaptation steps before measuring (see ``_warm_up_baselines``).
        warmup_data: (N, ...) data whose random minibatches the baselines adapt on (default:
            ``x`` itself).
        producer: the route particles take (``pyrovae.runs.gradvar_run`` passes the one the run
            trained with).
        per_element: also keep each gradient element's mean and variance over the draws
            (``GradientStats.per_element``; four vectors the size of the model per estimator).

    Returns:
        One ``GradientStats`` per estimator, in order.
    """
    if draws < 2:
        raise ValueError(f"draws must be at least 2 to estimate a variance, got {draws}")
    route = make_producer(vae, producer)
    device = module_device(vae)
    x = x.to(device)
    if warmup_data is not None:
        warmup_data = place(warmup_data, device)
    inference, generative = _split_params(vae)
    saved = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    out = []
    try:
        # As training computes them (a local guide refines in eval mode only).
        with training_mode(vae):
            for spec in estimators:
                est = _make(spec)
                check_step_memory(
                    list(vae.parameters()), x, est.num_particles, f"{spec!r}'s step", [vae]
                )
                check_applies(route, est, x)  # NotApplicable says why, and what to use
                est.prepare(x)
                _warm_up_baselines(route, est, x, warmup, vae, warmup_data)
                enc, dec = _Moments(), _Moments()
                # The state the baselines reached is held for the draws: updating it on the fixed
                # batch would fit the average to that batch's points, which training never does,
                # and make the draws depend on each other.
                estimate_and_backward(route, est, x, None, False)  # untimed: first-call costs
                seconds = 0.0
                for _ in tqdm(range(draws), desc=spec, disable=None if progress else True):
                    vae.zero_grad(set_to_none=True)
                    start = time.perf_counter()
                    estimate_and_backward(route, est, x, None, False)
                    seconds += time.perf_counter() - start
                    enc.add(_flat_grad(inference) / x.shape[0])
                    dec.add(_flat_grad(generative) / x.shape[0])
                    share_cores()  # untimed
                (enc_var, enc_snr), (dec_var, dec_snr) = _measured(spec, enc, dec)
                moments = None
                if per_element:
                    moments = {
                        "encoder_mean": enc.mean.cpu(),
                        "encoder_var": enc.variance().cpu(),
                        "decoder_mean": dec.mean.cpu(),
                        "decoder_var": dec.variance().cpu(),
                    }
                out.append(
                    GradientStats(
                        spec,
                        repr(est),
                        route.name,
                        draws,
                        enc_var,
                        dec_var,
                        enc_snr,
                        dec_snr,
                        seconds / draws,
                        x.shape[0],
                        moments,
                    )
                )
    finally:
        vae.zero_grad(set_to_none=True)
        vae.load_state_dict(saved)
    return out
