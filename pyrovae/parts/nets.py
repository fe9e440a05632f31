"""Neural networks used as encoders and decoders: plain ``torch.nn`` modules.

A network maps (..., in_features) to (..., out_features) for any leading shape, so the decoder
runs on particles × batch × latent tensors without reshaping.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..registry import Registry


class Tanh(nn.Module):
    """``torch.tanh``, computed as 2 sigmoid(2a) - 1 when no gradient is needed.

    On CPUs where torch sends ``tanh`` to MKL's vector math library it runs about 6x slower
    than ``sigmoid`` (1.25 ms against 0.2 ms for a 2500 x 200 evaluation chunk on one core),
    which made the activations a sixth of the importance-weighted evaluation. The identity is
    exact; in float32 the two agree to a few 1e-8 in absolute terms. Training keeps
    ``torch.tanh``, whose backward is the cheapest.
    """

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and a.requires_grad:
            return torch.tanh(a)
        return torch.sigmoid(a * 2).mul_(2).sub_(1)


NETS: Registry = Registry("network")
ACTIVATIONS = {
    "tanh": Tanh,
    "relu": nn.ReLU,
    "leaky-relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``ACTIVATIONS``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        known = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; choose one of: {known}") from None


@NETS.register("mlp")
def mlp(
    in_features: int, out_features: int, hidden: Sequence[int] = (200, 200), act: str = "tanh"
) -> nn.Sequential:
    """A multilayer perceptron ``in -> hidden... -> out`` with ``act`` after each hidden layer.

    Shapes: (..., in_features) -> (..., out_features). The default is the IWAE paper's
    one-stochastic-layer net (Burda et al., 2015): two hidden layers of 200 tanh units.
    """
    layers = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation(act)]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@NETS.register("linear")
def linear(
    in_features: int, out_features: int, hidden: Sequence[int] = (), act: str = "tanh"
) -> nn.Sequential:
    """A single affine map (no hidden layer; ``hidden`` and ``act`` are ignored).

    Shapes: (..., in_features) -> (..., out_features). A linear decoder with a Gaussian
    likelihood and a Gaussian prior makes the VAE a linear-Gaussian model whose log p(x) is
    known in closed form.
    """
    return nn.Sequential(nn.Linear(in_features, out_features))
