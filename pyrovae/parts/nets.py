"""Neural networks used as encoders and decoders: plain ``torch.nn`` modules.

A network maps (..., in_features) to (..., out_features) for any leading shape, so the decoder
runs on particles × batch × latent tensors without reshaping.

A factory in ``NETS`` is called ``factory(in_features, out_features, hidden, act)``. One that
also declares the keywords ``image_shape`` and ``role`` gets the data's (C, H, W) and
``"encoder"`` or ``"decoder"`` from ``build_vae`` (the ``conv`` nets); if its ``image_shape``
has no default it needs image data, and ``build_vae`` says so when the data has no image shape.
"""

from __future__ import annotations

import math
from typing import Any, List, Sequence, Tuple

import torch
from torch import nn

from ..registry import Registry


class Tanh(nn.Module):
    """``torch.tanh``, computed on the CPU as 2 sigmoid(2a) - 1 when no gradient is needed.

    On CPUs where torch sends ``tanh`` to MKL's vector math library it runs about 6x slower
    than ``sigmoid`` (1.25 ms against 0.2 ms for a 2500 x 200 evaluation chunk on one core),
    which made the activations a sixth of the importance-weighted evaluation. The identity is
    exact; in float32 the two agree to a few 1e-8 in absolute terms. Training keeps
    ``torch.tanh``, whose backward is the cheapest, and so does every other device: the trick
    was measured against MKL only, and on a GPU either is one elementwise kernel, where the
    identity's three would cost more.
    """

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.device.type != "cpu" or (torch.is_grad_enabled() and a.requires_grad):
            return torch.tanh(a)
        return torch.sigmoid(a * 2).mul_(2).sub_(1)


#: Encoder and decoder builders by name (``mlp``, ``linear``, ``conv``).
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


# The convolutional nets: two stride-2 layers of these many channels (the decoder mirrors them).
CONV_CHANNELS = (32, 64)
# The width of their one fully connected hidden layer when ``hidden`` is empty.
CONV_HIDDEN = 256
# 4x4 kernels, stride 2, padding 1: a side of n pixels becomes floor(n / 2), and a transposed
# layer with output padding n % 2 gives back exactly n, for every n >= 2 (so images >= 4x4).
_KERNEL, _STRIDE, _PADDING = 4, 2, 1
_MIN_SIDE = _STRIDE ** len(CONV_CHANNELS)


def _sides(image_shape: Tuple[int, int, int]) -> List[Tuple[int, int]]:
    """(H, W) of the image and of each convolution's output: [(H, W), (H/2, W/2), (H/4, W/4)],
    rounded down."""
    sides = [tuple(image_shape[1:])]
    for _ in CONV_CHANNELS:
        sides.append(tuple((n + 2 * _PADDING - _KERNEL) // _STRIDE + 1 for n in sides[-1]))
    return sides


def _check_image_shape(image_shape: Any) -> Tuple[int, int, int]:
    """``image_shape`` as a (C, H, W) tuple; ``ValueError`` unless it is one the nets handle."""
    ok = isinstance(image_shape, (tuple, list)) and len(image_shape) == 3
    if not ok or not all(isinstance(n, int) and not isinstance(n, bool) for n in image_shape):
        raise ValueError(f"image_shape must be (C, H, W), three integers, got {image_shape!r}")
    c, h, w = image_shape
    if c < 1 or min(h, w) < _MIN_SIDE:
        raise ValueError(
            f"conv nets need images of at least {_MIN_SIDE}x{_MIN_SIDE} pixels and one channel "
            f"(two stride-2 layers), got image_shape {tuple(image_shape)}; use mlp"
        )
    return (c, h, w)


class ConvEncoder(nn.Module):
    """Images flattened in (C, H, W) row-major order, (..., C·H·W) -> (..., out_features):
    two stride-2 convolutions (``CONV_CHANNELS``), a fully connected hidden layer of ``width``
    units and a linear output, ``act`` after every layer but the last.

    ``values_per_row``: the values the convolutions compute per input row (their feature maps),
    which ``runtime.check_step_memory`` adds to the fully connected layers' widths.
    """

    def __init__(
        self, image_shape: Tuple[int, int, int], out_features: int, width: int, act: str
    ) -> None:
        super().__init__()
        self.image_shape = image_shape
        layers: List[nn.Module] = []
        channels = image_shape[0]
        for c in CONV_CHANNELS:
            layers += [nn.Conv2d(channels, c, _KERNEL, _STRIDE, _PADDING), activation(act)]
            channels = c
        self.convs = nn.Sequential(*layers)
        sides = _sides(image_shape)
        h, w = sides[-1]
        self.head = nn.Sequential(
            nn.Linear(channels * h * w, width), activation(act), nn.Linear(width, out_features)
        )
        self.values_per_row = sum(c * h * w for c, (h, w) in zip(CONV_CHANNELS, sides[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # The number of rows, not -1: a reshape of zero rows cannot infer it.
        h = self.convs(x.reshape(math.prod(lead), *self.image_shape))
        out = self.head(h.flatten(1))
        return out.reshape(*lead, out.shape[-1])


class ConvDecoder(nn.Module):
    """Vectors (..., in_features) -> ``groups`` images per row, (..., groups·C·H·W): a fully
    connected hidden layer of ``width`` units, a linear map to the smallest feature map, and two
    stride-2 transposed convolutions (mirroring ``ConvEncoder``'s) back to (groups·C, H, W),
    ``act`` after every layer but the last.

    The output is flattened channel-major: image g's values come as a block, g = 0 first, each
    in the data's (C, H, W) row-major order. That is the layout a likelihood reading several
    values per pixel expects: ``out.chunk(groups, -1)`` gives one image of values each.
    """

    def __init__(
        self,
        in_features: int,
        image_shape: Tuple[int, int, int],
        groups: int,
        width: int,
        act: str,
    ) -> None:
        super().__init__()
        self.out_shape = (groups * image_shape[0], *image_shape[1:])
        sides = _sides(image_shape)
        self.start = (CONV_CHANNELS[-1], *sides[-1])  # the smallest feature map
        self.head = nn.Sequential(
            nn.Linear(in_features, width),
            activation(act),
            nn.Linear(width, math.prod(self.start)),
            activation(act),
        )
        layers: List[nn.Module] = []
        widths = [*reversed(CONV_CHANNELS), self.out_shape[0]]
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            target = sides[-2 - i]
            # Odd sides were rounded down on the way in: one more row (column) brings them back.
            pad = tuple(n % _STRIDE for n in target)
            layers.append(nn.ConvTranspose2d(a, b, _KERNEL, _STRIDE, _PADDING, output_padding=pad))
            layers.append(activation(act))
        self.deconvs = nn.Sequential(*layers[:-1])
        self.values_per_row = sum(c * h * w for c, (h, w) in zip(widths[1:], reversed(sides[:-1])))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        rows = math.prod(lead)
        h = self.head(z.reshape(rows, z.shape[-1])).reshape(rows, *self.start)
        return self.deconvs(h).reshape(*lead, math.prod(self.out_shape))


@NETS.register("conv")
def conv(
    in_features: int,
    out_features: int,
    hidden: Sequence[int] = (),
    act: str = "tanh",
    *,
    image_shape: Tuple[int, int, int],
    role: str,
) -> nn.Module:
    """A convolutional encoder or decoder for images of ``image_shape`` (C, H, W), H, W >= 4.

    The direction is said, not guessed (an encoder from 784 to 784 values would look like a
    decoder): ``role="encoder"`` reads images, (..., C·H·W) -> (..., out_features), a
    ``ConvEncoder``; ``role="decoder"`` writes them, (..., in_features) -> (..., out_features)
    with out_features a multiple m of C·H·W (m values per pixel for the likelihood), a
    ``ConvDecoder``. ``build_vae`` passes ``image_shape`` and ``role`` to every net factory
    that declares them as keywords; one whose ``image_shape`` has no default, like this one,
    needs image data. Its fully connected hidden layer has ``hidden[-1]`` units
    (``CONV_HIDDEN`` when ``hidden`` is empty).
    """
    image_shape = _check_image_shape(image_shape)
    pixels = math.prod(image_shape)
    width = hidden[-1] if len(hidden) else CONV_HIDDEN
    if role == "encoder":
        if in_features != pixels:
            raise ValueError(
                f"a conv encoder reads images of {pixels} values {image_shape}, but was asked "
                f"for {in_features} inputs"
            )
        return ConvEncoder(image_shape, out_features, width, act)
    if role == "decoder":
        if out_features % pixels:
            raise ValueError(
                f"a conv decoder writes whole images of {pixels} values {image_shape}, but was "
                f"asked for {out_features} outputs"
            )
        return ConvDecoder(in_features, image_shape, out_features // pixels, width, act)
    raise ValueError(f"role must be 'encoder' or 'decoder', got {role!r}")
