"""Gradient diagnostics: how noisy each estimator's gradient is at given parameters.

At fixed parameters and on one fixed minibatch, draw N independent gradient estimates per
estimator and report, separately for the inference network (encoder and guide family) and the
generative network (decoder, prior, likelihood): the total variance (the sum over parameter
elements of each element's variance across draws), the mean signal-to-noise ratio
|E g| / std g over elements (Rainforth et al., 2018), and the wall time per estimate. The
gradients are those of the objective averaged over the minibatch's data points.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyro
import torch
from tqdm.auto import tqdm

from .estimators import Estimator, clear_estimator_state, make_estimator
from .model import VAE


@dataclass
class GradientStats:
    """One estimator's gradient noise at fixed parameters (see the module docstring)."""

    estimator: str
    description: str
    draws: int
    encoder_variance: float
    decoder_variance: float
    encoder_snr: float
    decoder_snr: float
    seconds_per_estimate: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


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


def default_estimator_specs(vae: VAE) -> List[str]:
    """Every estimator that applies to ``vae``'s guide (discrete guides: score-function ones)."""
    score = [
        "score-function:baseline=none",
        "score-function:baseline=decaying-average",
        "score-function:baseline=neural",
        "vimco",
    ]
    if not getattr(vae.guide_family, "reparameterizable", True):
        return score
    return ["pathwise", "analytic-kl", "stl", "iwae", "dreg"] + score


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

    def summary(self) -> Tuple[float, float]:
        """(total variance, mean SNR over elements with nonzero variance)."""
        var = self.m2 / max(self.n - 1, 1)
        std = var.sqrt()
        live = std > 0
        snr = (self.mean.abs()[live] / std[live]).mean().item() if live.any() else math.inf
        return var.sum().item(), snr


def _split_params(vae: VAE) -> Tuple[List[torch.nn.Parameter], List[torch.nn.Parameter]]:
    inference = list(vae.encoder.parameters()) + list(vae.guide_family.parameters())
    ids = {id(p) for p in inference}
    generative = [p for p in vae.parameters() if id(p) not in ids]
    return inference, generative


def _flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def _warm_up_baselines(
    vae: VAE, est: Estimator, guide, x: torch.Tensor, steps: int, data=None
) -> None:
    """Let an estimator's baselines adapt at the fixed VAE: decaying averages settle, a neural
    baseline is fitted by Adam (the VAE's own parameters are frozen meanwhile). With ``data``
    (N, ...), each step uses a fresh random minibatch of ``x``'s size from it, as in training;
    otherwise ``x`` itself, which lets a per-position decaying average fit that batch's points
    (a state training never reaches, since its batches change)."""
    if steps <= 0 or not est.decaying_average:
        return
    frozen = [p for p in vae.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    training = vae.training
    vae.train(False)  # (quiets pyro.module about the frozen parameters)

    def batch():
        if data is None:
            return x
        return data[torch.randint(data.shape[0], (x.shape[0],))]

    try:
        if est.baseline_net is None:
            for _ in range(steps):
                est.elbo.loss_and_grads(vae.model, guide, batch())  # updates the average
        else:
            svi = pyro.infer.SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-2}), est.elbo)
            for _ in range(steps):
                svi.step(batch())
    finally:
        for p in frozen:
            p.requires_grad_(True)
        vae.train(training)


def gradient_variance(
    vae: VAE,
    x: torch.Tensor,
    estimators: Sequence[str],
    draws: int = 100,
    warmup: int = 200,
    progress: bool = True,
    warmup_data: Optional[torch.Tensor] = None,
) -> List[GradientStats]:
    """Gradient noise of each estimator at ``vae``'s current parameters on minibatch ``x``.

    Args:
        vae: the model (its parameters are not changed).
        x: the minibatch, (B, x_dim); every draw uses it.
        estimators: specs as in ``parse_estimator_spec``.
        draws: independent gradient estimates per estimator.
        warmup: baseline adaptation steps before measuring (see ``_warm_up_baselines``).
        warmup_data: (N, ...) data whose random minibatches the baselines adapt on (default:
            ``x`` itself).

    Returns:
        One ``GradientStats`` per estimator, in order.
    """
    if draws < 2:
        raise ValueError(f"draws must be at least 2 to estimate a variance, got {draws}")
    inference, generative = _split_params(vae)
    saved = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    reparameterized = vae.reparameterized
    out = []
    try:
        for spec in estimators:
            name, options = parse_estimator_spec(spec)
            est = make_estimator(name, **options)
            family = vae.guide_family
            if est.reparameterized and not getattr(family, "reparameterizable", True):
                raise ValueError(
                    f"{spec!r} needs a reparameterizable guide; this run's guide is discrete"
                )
            vae.reparameterized = est.reparameterized
            clear_estimator_state()
            guide = est.wrap_guide(vae.guide)
            _warm_up_baselines(vae, est, guide, x, warmup, warmup_data)
            enc, dec = _Moments(), _Moments()
            est.elbo.loss_and_grads(vae.model, guide, x)  # untimed: first-call costs
            seconds = 0.0
            for _ in tqdm(range(draws), desc=spec, disable=None if progress else True):
                vae.zero_grad(set_to_none=True)
                start = time.perf_counter()
                est.elbo.loss_and_grads(vae.model, guide, x)
                seconds += time.perf_counter() - start
                enc.add(_flat_grad(inference) / x.shape[0])
                dec.add(_flat_grad(generative) / x.shape[0])
            (enc_var, enc_snr), (dec_var, dec_snr) = enc.summary(), dec.summary()
            out.append(
                GradientStats(
                    spec, repr(est), draws, enc_var, dec_var, enc_snr, dec_snr, seconds / draws
                )
            )
    finally:
        vae.zero_grad(set_to_none=True)
        vae.reparameterized = reparameterized
        vae.load_state_dict(saved)
        clear_estimator_state()
    return out
