"""Distributions Pyro lacks in the form the hot paths need.

``FactorizedBernoulli`` is ``dist.Bernoulli(logits=l).to_event(1)`` with a faster ``log_prob``.
Torch scores a Bernoulli through ``binary_cross_entropy_with_logits``, several passes over the
(particles, batch, pixels) logits with ``exp`` and ``log`` that, on CPUs where torch sends them
to MKL's vector math library, run at about 1 ns per element; on the importance-weighted
evaluation that alone cost as much as the decoder's largest matrix multiply.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F

# The smallest normal float32: a sigmoid below it has lost relative precision, and so may a
# factor of a product below it.
_TINY32 = torch.finfo(torch.float32).tiny
# Products of 2**4 = 16 pixels: 784 -> 49 logarithms per image.
_HALVINGS = 4


def bernoulli_log_prob_sum(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Σ_d log Bernoulli(value_d | sigmoid(logits_d)) over the last dimension.

    Shapes: ``logits`` (..., D) and ``value`` (..., D) broadcast; returns their broadcast
    batch shape. Differentiable; ``value`` may be any real (the usual x·l - softplus(l)).
    """
    return (value * logits).sum(-1) - F.softplus(logits).sum(-1)


def _bernoulli_log_prob_sum_no_grad(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The same sum for binary ``value``, without autograd, at a fraction of the cost.

    log Bernoulli(x | sigmoid(l)) = log sigmoid(s l) with s = 2x - 1, and a sum of logs is the
    log of a product. ``sigmoid`` is one fast vectorized pass; multiplying the two halves of
    the pixel dimension four times leaves a sixteenth of the logarithms to take. A product
    that stays a normal float32 has every partial product and factor normal too, so it is
    accurate to a few ulps; rows with a product below that range (very confidently wrong
    pixels) are recomputed in the exact softplus form, so the result never loses precision.
    """
    probs = torch.mul(logits, value * 2 - 1).sigmoid_()
    d = probs.shape[-1]
    for _ in range(_HALVINGS):
        if d % 2:
            break
        d //= 2
        probs = probs[..., :d].mul_(probs[..., d:])  # in place: the halves stay in cache
    probs = probs[..., :d]
    log_p = probs.log().sum(-1)
    if bool(probs.min() < _TINY32):
        bad = (probs < _TINY32).any(-1)
        full_logits, full_value = torch.broadcast_tensors(logits, value)
        log_p[bad] = bernoulli_log_prob_sum(full_logits[bad], full_value[bad])
    return log_p


class FactorizedBernoulli(dist.Independent):
    """Independent Bernoulli(sigmoid(logits)) pixels: event shape (D,), batch shape
    ``logits.shape[:-1]``; ``dist.Bernoulli(logits=logits).to_event(1)`` with a faster
    ``log_prob`` (see the module docstring). Argument checks are off: the likelihood checks the
    data once (``BernoulliLikelihood.check_data``) rather than on every score.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(dist.Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    @property
    def logits(self) -> torch.Tensor:
        return self.base_dist.logits

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return FactorizedBernoulli(self.logits.expand(batch_shape + self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.logits
        if (
            logits.dtype == torch.float32
            and not (torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad))
            and bool(((value == 0) | (value == 1)).all())
        ):
            return _bernoulli_log_prob_sum_no_grad(logits, value)
        return bernoulli_log_prob_sum(logits, value)
