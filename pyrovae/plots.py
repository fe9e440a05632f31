"""Figures saved as PNG: sample grids, reconstructions, 2-D scatter plots, training curves.

Uses matplotlib's non-interactive Agg backend, so it works on machines without a display.
"""

from __future__ import annotations

import math
import unicodedata
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
    """Two-column text table of (name, value) rows, aligned as a terminal shows them (a
    combining mark, the hat of k̂, takes no column)."""
    width = max(_columns(k) for k, _ in rows)
    return "\n".join(f"  {k}{' ' * (width - _columns(k))}  {v}" for k, v in rows)


def _columns(text: str) -> int:
    return sum(not unicodedata.combining(c) for c in text)


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


def save_diagnosis(found: Any, path: Path, title: str = "") -> Path:
    """The panels of a ``pyrovae.diagnosis.Diagnosis``: the KL of each latent dimension (active
    units in colour) and each unit's activity Cov_x E[z_u | x] against the 0.01 line (where
    the latent diagnostics apply), the importance-weighted estimate against K on one set of
    draws, the points' Pareto k̂ against the 0.5 and 0.7 lines, and AIS's acceptance along
    its schedule where it ran."""
    lat, weights = found.latents, found.iw.weights
    ais = found.ais if found.ais is not None and found.ais.acceptance_by_stage else None
    columns = 3 if ais is not None else 2
    rows = 2 if lat is not None else 1
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows + 0.4), squeeze=False)
    if lat is not None:
        _latent_panels(axes[0][0], axes[0][1], lat)
        summary = (f"ELBO {lat.elbo:.2f} = -distortion {lat.distortion:.2f} - rate "
                   f"{lat.rate:.2f}; rate = I(x; z) {lat.mutual_information:.2f} (at most log n "
                   f"= {math.log(lat.n):.2f}) + marginal KL {lat.marginal_kl:.2f}")  # fmt: skip
    else:
        summary = f"latent diagnostics not applicable: {found.latents_skipped}"
    _estimate_panel(axes[-1][0], weights)
    _pareto_panel(axes[-1][1], weights)
    if ais is not None:
        _acceptance_panel(axes[0][2], ais)
        if rows == 2:
            axes[1][2].axis("off")
    fig.suptitle(f"{title}\n{summary}" if title else summary, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _latent_panels(kl_ax, activity_ax, lat: Any) -> None:
    dims = list(range(lat.kl_per_dim.numel()))
    colours = ["tab:blue" if a else "lightgray" for a in (lat.activity > 0.01).tolist()]
    kl_ax.bar(dims, lat.kl_per_dim.nan_to_num(0).tolist(), color=colours)
    kl_ax.set_title(f"KL per dimension ({lat.kl_per_dim_method}); {lat.active} of {len(dims)} "
                    "units active", fontsize=9)  # fmt: skip
    kl_ax.set_ylabel("nats")
    activity_ax.bar(dims, lat.activity.clamp_min(1e-6).tolist(), color=colours)
    activity_ax.axhline(0.01, color="k", lw=0.8, ls="--")
    activity_ax.set_yscale("log")
    activity_ax.set_title("activity Cov_x E_q[z_u | x] (active above 0.01)", fontsize=9)
    for ax in (kl_ax, activity_ax):
        ax.set_xlabel("latent dimension")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _estimate_panel(ax, weights: Any) -> None:
    ax.plot(weights.ladder, weights.curve(), marker="o", ms=3)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (first K of one set of draws)")
    ax.set_ylabel("mean log p̂_K(x), nats")
    ax.set_title(f"estimate against K (last doubling +{weights.remaining():.3f})", fontsize=9)
    ax.grid(alpha=0.3)


def _pareto_panel(ax, weights: Any) -> None:
    k_hat = weights.pareto_k[~weights.pareto_k.isnan()]
    ax.set_xlabel("k̂")
    if not k_hat.numel():
        ax.set_title("Pareto k̂: K too small to fit", fontsize=9)
        return
    ax.hist(k_hat.tolist(), bins=40, color="tab:gray")
    for line, colour in ((0.5, "tab:orange"), (0.7, "tab:red")):
        ax.axvline(line, color=colour, lw=1)
    share = weights.unreliable_share()
    ax.set_title(f"Pareto k̂ of each point's weights ({100 * share:.1f} % above 0.7)", fontsize=9)


def _acceptance_panel(ax, ais: Any) -> None:
    stages = ais.acceptance_by_stage
    ax.plot([(i + 0.5) / len(stages) for i in range(len(stages))], stages, marker="o", ms=3)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("position along the schedule (0: the prior, 1: the posterior)")
    ax.set_title(f"AIS acceptance, T = {ais.steps} (log p(x) {ais.log_px:.2f})", fontsize=9)
    ax.grid(alpha=0.3)
