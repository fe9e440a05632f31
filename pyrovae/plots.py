"""Figures saved as PNG: sample grids, reconstructions, 2-D scatter plots, training curves.

Uses matplotlib's non-interactive Agg backend, so it works on machines without a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import write_atomic  # noqa: E402


def save_figure(fig, path: Path, **options: Any) -> Path:
    """Save the matplotlib figure ``fig`` as a PNG at ``path`` (its folder made if missing),
    atomically, and close it; ``options`` go to ``savefig`` (``dpi``, ``bbox_inches``).
    Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, **options)
    return path


def _save(fig, path: Path, **options: Any) -> None:
    """Save ``fig`` as a PNG at ``path`` atomically and never through a link
    (``pyrovae.files.write_atomic``: a full disk leaves the previous figure, not half a new
    one)."""
    try:
        write_atomic(Path(path), lambda f: fig.savefig(f, format="png", **options))
    finally:
        plt.close(fig)


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """Tile ``images`` (N, H, W), or (N, H, W, 3) in colour, into one (rows·(H+pad)+pad,
    nrow·(W+pad)+pad) image (with the colour dimension last)."""
    n, h, w = images.shape[:3]
    rows = math.ceil(n / nrow)
    grid = images.new_ones(rows * (h + pad) + pad, nrow * (w + pad) + pad, *images.shape[3:])
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def _pictures(images: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    """Vectors (N, D) as pictures: (N, H, W) for ``shape`` (H, W) or (1, H, W); (N, H, W, 3)
    for (3, H, W), colour last as matplotlib wants it; for another number of channels, which
    has no colour to show, their mean in grey."""
    x = images.detach().float().clamp(0, 1).cpu()
    if len(shape) == 2:
        return x.reshape(-1, *shape)
    x = x.reshape(-1, *shape)
    return x.permute(0, 2, 3, 1) if shape[0] == 3 else x.mean(1)


def save_image_grid(
    images: torch.Tensor, shape: Tuple[int, ...], path: Path, nrow: int = 10, title: str = ""
) -> Path:
    """Save vectors ``images`` (N, D) with values in [0, 1] as a grid PNG at ``path``; ``shape``
    is the data's image shape, (H, W) or (C, H, W) (see ``_pictures`` for colour)."""
    grid = image_grid(_pictures(images, shape), nrow)
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 0.4, grid.shape[0] / 40 + 0.6))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path, dpi=100, bbox_inches="tight")
    return Path(path)


def save_reconstructions(
    inputs: torch.Tensor, recons: torch.Tensor, shape: Tuple[int, ...], path: Path, nrow: int = 10
) -> Path:
    """Inputs (N, D) on odd rows and their reconstructions directly below them; ``shape`` as
    for ``save_image_grid``."""
    rows = []
    for lo in range(0, inputs.shape[0], nrow):
        rows += [inputs[lo : lo + nrow], recons[lo : lo + nrow]]
    return save_image_grid(
        torch.cat(rows), shape, path, nrow, "inputs (odd rows) and reconstructions (even rows)"
    )


def save_scatter(
    data: torch.Tensor, samples: torch.Tensor, path: Path, recons: Optional[torch.Tensor] = None
) -> Path:
    """2-D data (N, 2) beside model samples (M, 2) (and reconstructions) as one scatter PNG."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(*data[:, :2].T.cpu(), s=3, alpha=0.4, label="data")
    ax.scatter(*samples[:, :2].T.cpu(), s=3, alpha=0.4, label="model samples")
    if recons is not None:
        ax.scatter(*recons[:, :2].T.cpu(), s=3, alpha=0.4, label="reconstructions")
    ax.set_aspect("equal")
    ax.legend(markerscale=4)
    _save(fig, path, dpi=100, bbox_inches="tight")
    return Path(path)


def save_training_curves(metrics: Sequence[Dict[str, Any]], path: Path) -> Path:
    """Training and validation ELBO per epoch (nats per data point) as a PNG."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [m["epoch"] for m in metrics]
    for key, label in (("train_elbo", "train ELBO"), ("valid_elbo", "validation ELBO")):
        ax.plot(
            epochs, [m[key] for m in metrics], marker="." if len(epochs) < 30 else None, label=label
        )
    if len(epochs) > 10:  # the first epochs would squash the rest of the curve
        settled = [
            m[k] for m in metrics[len(metrics) // 10 :] for k in ("train_elbo", "valid_elbo")
        ]
        top = max(settled)
        ax.set_ylim(min(settled) - 0.1 * (top - min(settled)), top + 0.1 * (top - min(settled)))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point; train: running mean over the epoch)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path, dpi=100, bbox_inches="tight")
    return Path(path)


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` under ``header``."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def summary_table(rows: List[Tuple[str, str]]) -> str:
    """Two-column text table of (name, value) rows."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def save_gradient_variance(stats: Sequence[Any], path: Path, title: str = "") -> Path:
    """Bar charts of ``GradientStats``: total gradient variance and mean SNR of the inference
    and generative networks (log scales), and seconds per estimate."""
    names = [s.estimator for s in stats]
    y = range(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(names) + 1.6), sharey=True)
    panels = [
        ("total gradient variance", "encoder_variance", "decoder_variance", True),
        ("mean SNR |E g| / std g", "encoder_snr", "decoder_snr", True),
    ]
    for ax, (label, enc, dec, log) in zip(axes, panels):
        h = 0.38
        ax.barh([i - h / 2 for i in y], [getattr(s, enc) for s in stats], h, label="encoder")
        ax.barh([i + h / 2 for i in y], [getattr(s, dec) for s in stats], h, label="decoder")
        ax.set_xscale("log" if log else "linear")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].barh(list(y), [1e3 * s.seconds_per_estimate for s in stats], color="gray")
    axes[2].set_xlabel("ms per gradient estimate")
    axes[2].grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(y), names)
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, dpi=120)
    return path


def save_gap(gap: Any, path: Path, title: str = "") -> Path:
    """A bar chart of an ``InferenceGap``: the amortization and approximation gaps and their
    sum, the inference gap log p(x) - ELBO, in nats per data point with standard errors."""
    names = ["amortization gap\nELBO(q*) - ELBO(q)", "approximation gap\nlog p(x) - ELBO(q*)"]
    names.append("inference gap\nlog p(x) - ELBO(q)")
    values = [gap.amortization_gap, gap.approximation_gap, gap.inference_gap]
    errors = [
        gap.amortization_gap_stderr,
        gap.approximation_gap_stderr,
        gap.inference_gap_stderr,
    ]
    errors = [e if math.isfinite(e) else 0.0 for e in errors]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    y = list(range(len(names)))
    bars = ax.barh(y, values, xerr=errors, color=["tab:orange", "tab:blue", "gray"], capsize=3)
    for bar, value, error in zip(bars, values, errors):
        ax.annotate(
            f"{value:.2f} ± {error:.2f}",
            (max(value, 0) + error, bar.get_y() + bar.get_height() / 2),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )
    ax.set_yticks(y, names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel(
        f"nats per data point (log p(x) {gap.log_px:.2f}, ELBO(q) {gap.elbo_amortized:.2f})"
    )
    ax.set_xlim(left=min(0.0, min(values) * 1.1), right=max(values) * 1.35 + 1e-9)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(fig, path, dpi=120)
    return path
