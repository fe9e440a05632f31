"""An autoregressive likelihood: a PixelCNN p(x | z) = Π_i p(x_i | x_<i, z) over the pixels in
raster order (van den Oord et al., 2016; PixelVAE, Gulrajani et al., 2017).

The decoder writes ``cond_channels`` feature maps of the image's size from z; a stack of masked
convolutions reads the image x itself, each layer's kernel cut so that the output at pixel i
sees only pixels before i (the first layer, type A, not pixel i either; later ones, type B,
also their own position, which by then holds only what came before i). Each layer is gated,
tanh(W_f * h + V_f * c) ⊙ σ(W_g * h + V_g * c), with the decoder's maps c entering through
1x1 convolutions (so p(x_i | ·) reads z's maps at pixel i), and residual. A 1x1 output layer
gives each pixel's distribution: a Bernoulli logit (``pixelcnn``, binary images) or a
discretized logistic's location and log scale (``pixelcnn-logistic``, 8-bit images).

- log p(x | z) is one parallel pass over x (teacher forcing): every conditional at once.
- Sampling is pixel by pixel: H·W passes, each keeping the pixel it is for.
- One-channel images (MNIST, Fashion-MNIST); several channels would need the masks to order
  them within a pixel as well, which these layers do not.
- Stacked masked convolutions have a blind spot (pixels up and to the right that no layer's
  field reaches); the gated PixelCNN's two stacks remove it. Here the decoder's z carries
  what the stack does not see.

Why not Pyro's or torch's: neither has masked convolutions or an autoregressive image
distribution.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from ..config import Rule
from .distributions import DiscretizedLogistic
from .likelihoods import LIKELIHOODS, BernoulliLikelihood, Likelihood, check_8bit


class MaskedConv2d(nn.Conv2d):
    """A ``kernel`` x ``kernel`` convolution (odd ``kernel``, same padding) whose output at a
    pixel reads only the pixels before it in raster order: type ``"A"`` not the pixel itself,
    type ``"B"`` the pixel too. (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, kind: str) -> None:
        if kernel % 2 == 0 or kind not in ("A", "B"):
            raise ValueError(f"a masked convolution needs an odd kernel and kind A or B, got "
                             f"{kernel}, {kind!r}")  # fmt: skip
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        mask = torch.ones_like(self.weight)
        c = kernel // 2
        mask[:, :, c, c + (kind == "B") :] = 0  # the centre row from the centre (A) or after (B)
        mask[:, :, c + 1 :] = 0  # every row below
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedLayer(nn.Module):
    """h + 1x1(tanh(a) ⊙ σ(b)), (a, b) = masked(h) + 1x1(c): a residual gated layer of
    ``channels`` maps conditioned on ``cond`` maps c."""

    def __init__(self, channels: int, cond: int, kernel: int, kind: str = "B") -> None:
        super().__init__()
        self.masked = MaskedConv2d(channels, 2 * channels, kernel, kind)
        self.cond = nn.Conv2d(cond, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a, b = (self.masked(h) + self.cond(c)).chunk(2, 1)
        return h + self.out(torch.tanh(a) * torch.sigmoid(b))


class PixelCNN(nn.Module):
    """x (N, 1, H, W) and the decoder's maps c (N, cond, H, W) -> (N, per_pixel, H, W), the
    parameters of each pixel's conditional: a type-A masked 7x7 convolution into ``channels``
    maps, ``layers`` gated type-B 3x3 layers, a 1x1 output."""

    def __init__(self, cond: int, per_pixel: int, channels: int, layers: int) -> None:
        super().__init__()
        self.first = MaskedConv2d(1, channels, 7, "A")
        self.first_cond = nn.Conv2d(cond, channels, 1)
        self.layers = nn.ModuleList(GatedLayer(channels, cond, 3) for _ in range(layers))
        self.head = nn.Conv2d(channels, per_pixel, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x) + self.first_cond(c))
        for layer in self.layers:
            h = layer(h, c)
        return self.head(torch.relu(h))


class AutoregressiveImage(dist.TorchDistribution):
    """p(x | z) of one-channel images flattened to (..., H·W), event shape (H·W,), batch
    shape the decoder maps' leading shape: ``log_prob`` in one pass, ``sample`` pixel by
    pixel. ``pixel(params)`` makes each pixel's distribution from the net's output
    (..., per_pixel) -> batch (...)."""

    arg_constraints = {}

    def __init__(self, likelihood: "PixelCNNLikelihood", maps: torch.Tensor) -> None:
        self.likelihood, self.maps = likelihood, maps
        super().__init__(maps.shape[:-1], torch.Size([likelihood.x_dim]), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(self.likelihood.pixel_support, 1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        maps = self.maps.expand(batch_shape + self.maps.shape[-1:])
        return AutoregressiveImage(self.likelihood, maps)

    def _params(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The net on images x (..., D) with maps (..., cond·D): (..., D, per_pixel)."""
        lik, lead = self.likelihood, x.shape[:-1]
        h, w = lik.image_shape[1:]
        rows = math.prod(lead)
        out = lik.net(x.reshape(rows, 1, h, w), maps.reshape(rows, lik.cond_channels, h, w))
        return out.reshape(*lead, lik.per_pixel, h * w).transpose(-1, -2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Σ_i log p(x_i | x_<i, z) over the pixels, (batch...) broadcast with value's."""
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        x = value.expand(shape + value.shape[-1:]).to(self.maps.dtype)
        maps = self.maps.expand(shape + self.maps.shape[-1:])
        return self.likelihood.pixel_log_prob(self._params(x, maps), x).sum(-1)

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Images ``sample_shape + batch_shape + (D,)``, drawn pixel by pixel in raster order."""
        shape = torch.Size(sample_shape) + self.batch_shape
        maps = self.maps.expand(shape + self.maps.shape[-1:])
        x = torch.zeros(shape + self.event_shape, dtype=maps.dtype, device=maps.device)
        with torch.no_grad():
            for i in range(self.likelihood.x_dim):
                params = self._params(x, maps)[..., i, :]
                x[..., i] = self.likelihood.pixel(params).sample()
        return x

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        """Each pixel's mean given the pixels before it in ``x`` (..., D): E[x_i | x_<i, z]."""
        maps = self.maps.expand(x.shape[:-1] + self.maps.shape[-1:])
        return self.likelihood.pixel(self._params(x.to(maps.dtype), maps)).mean


class PixelCNNLikelihood(BernoulliLikelihood):
    """x ~ PixelCNN(decoder maps): binary one-channel images, each pixel Bernoulli given the
    pixels before it and z (module docstring). ``out_features`` is ``cond_channels`` x_dim: the
    decoder writes that many maps of the image's size. Options: ``channels`` (the stack's
    width, 32), ``layers`` (gated layers, 4), ``cond_channels`` (4). The image's shape comes
    from the data (``image_shape``); data without one are read as one row of pixels."""

    per_pixel = 1
    pixel_support = constraints.boolean

    def __init__(
        self,
        x_dim: int,
        channels: int = 32,
        layers: int = 4,
        cond_channels: int = 4,
        image_shape: Optional[Tuple[int, int, int]] = None,
    ) -> None:
        super().__init__(x_dim)
        count = Rule("int", minimum=1, maximum=4096)
        channels, cond_channels = (
            count.check("channels", channels),
            count.check("cond_channels", cond_channels),
        )
        layers = Rule("int", minimum=0, maximum=64).check("layers", layers)
        image_shape = tuple(image_shape) if image_shape is not None else (1, 1, x_dim)
        if image_shape[0] != 1 or math.prod(image_shape) != x_dim:
            raise ValueError(
                f"the PixelCNN models one-channel images, but the data are {image_shape} "
                "(C, H, W): use a likelihood without pixel order (bernoulli, "
                "discretized-logistic) for colour images"
            )
        self.image_shape, self.cond_channels = image_shape, cond_channels
        self.net = PixelCNN(cond_channels, self.per_pixel, channels, layers)

    @property
    def out_features(self) -> int:
        return self.cond_channels * self.x_dim

    def forward(self, out: torch.Tensor) -> AutoregressiveImage:
        """``out`` (..., cond_channels·x_dim) -> batch shape (...), event shape (x_dim,)."""
        return AutoregressiveImage(self, out)

    def pixel(self, params: torch.Tensor) -> dist.Distribution:
        """One pixel's distribution from its (..., per_pixel) parameters."""
        return dist.Bernoulli(logits=params[..., 0], validate_args=False)

    def pixel_log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i | x_<i, z) of each pixel, (..., D), from params (..., D, per_pixel)."""
        logits = params[..., 0]
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """What the figures show for E[x | out], which has no closed form here: each pixel's
        probability given the pixels before it in one image drawn pixel by pixel, (..., x_dim)."""
        image = self(out)
        return image.conditionals(image.sample())


LIKELIHOODS.register("pixelcnn")(PixelCNNLikelihood)


@LIKELIHOODS.register("pixelcnn-logistic")
class PixelCNNLogisticLikelihood(PixelCNNLikelihood):
    """x ~ PixelCNN(decoder maps) for 8-bit one-channel images (values k/255): each pixel a
    discretized logistic (``DiscretizedLogistic``) given the pixels before it and z. Options
    as ``pixelcnn``'s."""

    per_pixel = 2
    pixel_support = DiscretizedLogistic.support
    levels = DiscretizedLogistic.levels

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        Likelihood.check_data(self, x, what)
        check_8bit(x, what, self.levels, "pixelcnn-logistic", "pixelcnn")

    def pixel(self, params: torch.Tensor) -> dist.Distribution:
        return DiscretizedLogistic(params[..., 0], params[..., 1], validate_args=False)

    def pixel_log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.pixel(params).log_prob(x)


__all__ = [
    "AutoregressiveImage",
    "GatedLayer",
    "MaskedConv2d",
    "PixelCNN",
    "PixelCNNLikelihood",
    "PixelCNNLogisticLikelihood",
]
