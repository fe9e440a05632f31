"""Shared pieces of the benchmarks: the in-process PyTorch reference, timing, tables.

The reference is what a careful user would write by hand: the same 784-200-200-50 tanh
network, a reparameterized single-sample ELBO with the analytic KL, and ``torch.optim.Adam``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyrovae.plots import markdown_table as table  # noqa: F401  (re-exported for the scripts)
from pyrovae.runtime import matmul_peak_gflops  # noqa: F401  (re-exported for the scripts)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ReferenceVAE(nn.Module):
    """A hand-written PyTorch VAE: Bernoulli decoder, diagonal Gaussian encoder."""

    def __init__(self, x_dim: int = 784, hidden: Sequence[int] = (200, 200), z_dim: int = 50):
        super().__init__()
        self.encoder = mlp([x_dim, *hidden, 2 * z_dim])
        self.decoder = mlp([z_dim, *reversed(hidden), x_dim])

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Minus the single-sample ELBO with analytic KL, summed over the batch."""
        loc, log_scale = self.encoder(x).chunk(2, dim=-1)
        z = loc + log_scale.exp() * torch.randn_like(loc)
        nll = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (torch.exp(2 * log_scale) + loc**2 - 1 - 2 * log_scale).sum()
        return nll + kl


def reference_step(model: ReferenceVAE, optim: torch.optim.Optimizer) -> Callable:
    def step(x: torch.Tensor) -> float:
        optim.zero_grad()
        loss = model.loss(x)
        loss.backward()
        optim.step()
        return loss.item()

    return step


def interleaved_medians(
    fns: Dict[str, Callable[[int], None]], reps: int = 7, warmup: int = 1
) -> Dict[str, float]:
    """Median seconds of each ``fn(rep)``, run in turn so drifts in machine speed hit all."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(-1)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for rep in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(rep)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def binarized_mnist(split: str = "train") -> torch.Tensor:
    """The shared static binarized MNIST split if present, else random binary data."""
    if SHARED_MNIST.is_dir():
        from pyrovae.data import load_dataset

        return load_dataset("binarized-mnist", data_dir=SHARED_MNIST).split(split)
    n = {"train": 50000, "valid": 10000, "test": 10000}[split]
    return torch.bernoulli(torch.full((n, 784), 0.13))
