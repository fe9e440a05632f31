"""Decoder variance (Dai & Wipf, 2019): a learned γ falls towards zero and sharpens samples.

    python experiments/decoder_variance.py
    python experiments/decoder_variance.py --mnist-dir DIR     # also grayscale MNIST, if there

With a Gaussian decoder p(x | z) = N(g_θ(z), γ I), the ELBO's reconstruction term is
-‖x - g_θ(z)‖² / 2γ - (d/2) log 2πγ. For fixed γ it weighs reconstruction against the KL by
1/γ; learned (the library's ``gaussian-learned`` likelihood, one variance per dimension), its
optimum is the mean squared reconstruction error, so γ follows the reconstructions down, and
Dai & Wipf show that on data on a manifold of lower dimension than the space it lies in the
optimum is γ -> 0. A large fixed γ (σ = 1, the ``gaussian`` likelihood's default) makes
reconstruction cheap to give up: the model blurs, or ignores z altogether.

This script trains the same VAE on the ``ring`` data (``ring.py``'s nets) three ways, with the
library's trainer and the same KL warm-up for all: fixed σ = 1, fixed σ = ``--sigma-small``,
and learned γ started at 1; and the learned one again on the ring's points moved onto the unit
circle, x/‖x‖, data on a curve (r = 1 < d = 2, where the ring fills an area: r = d = 2). It
records the learned γ (the mean over dimensions of the per-dimension variance) after every
epoch, by resuming the run one epoch at a time (resume is bit for bit, so this is the
uninterrupted run). It prints γ at the start and the end, and for each ring model the spread of
the radius ‖x‖ of samples x ~ p(x | z), z ~ p(z), against the data's (a sharp model matches
it), and the test ELBO. On grayscale MNIST (torchvision's files under
``--mnist-dir``; skipped with a message where they are not there) it trains fixed σ = 1 against
learned γ and shows decoder means. The figure, ``experiments/figures/decoder_variance.png``: γ
during training; samples of each ring model (and MNIST's, where it ran).

The learned variance starts at 1 with a KL warm-up: without one, on the ring, the KL term wins
at the start and the run settles where z is ignored and γ is the data's variance (measured: γ
0.64 after 60 epochs, decoder mean ≈ 0), a posterior collapse rather than Dai & Wipf's optimum.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyrovae import TrainConfig, VAEConfig, load_dataset, train  # noqa: E402
from pyrovae.data import SPLITS, Dataset  # noqa: E402
from pyrovae.evaluation import evaluate_vae  # noqa: E402
from pyrovae.model import VAE  # noqa: E402
from pyrovae.plots import image_grid, save_figure  # noqa: E402
from pyrovae.runtime import progress_bar  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling script ring.py, also when imported from tests
from ring import ring_model  # noqa: E402

FIGURE = HERE / "figures" / "decoder_variance.png"
SHARED_DATA = HERE.parent.parent / "shared" / "data"
# torchvision's MNIST files under <root>/MNIST/raw (or their .gz archives).
MNIST_FILES = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]


def gamma(vae: VAE) -> float:
    """The decoder's variance γ: the mean over dimensions of its per-dimension variance."""
    return vae.likelihood.noise_variance().mean().item()


def train_recording(
    cfg: TrainConfig,
    model: VAEConfig,
    data: Dataset,
    record: Callable[[VAE], float],
    progress: bool,
) -> Tuple[VAE, List[float]]:
    """Train with ``pyrovae.train`` one epoch at a time, resuming the run (bit for bit the
    uninterrupted one), and ``record`` the model after each epoch. Returns the trained VAE
    and the recorded values, one per epoch (``cfg.epochs`` of them)."""
    values = []
    bar = progress_bar(cfg.epochs, f"{model.likelihood}", "epoch", progress)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = str(Path(tmp) / "run")
        for epoch in range(1, cfg.epochs + 1):
            if epoch == 1:
                one = dataclasses.replace(cfg, epochs=1)
                run = train(one, model, run_dir, data=data, progress=False)
            else:
                more = {"epochs": epoch}
                run = train(cfg, run_dir=run_dir, resume=more, progress=False, data=data)
            values.append(record(run.vae))
            bar.update()
    bar.close()
    return run.vae, values


def train_once(cfg: TrainConfig, model: VAEConfig, data: Dataset, progress: bool) -> VAE:
    """``pyrovae.train`` into a temporary run directory; the trained VAE."""
    with tempfile.TemporaryDirectory() as tmp:
        return train(cfg, model, str(Path(tmp) / "run"), data=data, progress=progress).vae


def with_likelihood(model: VAEConfig, likelihood: str, sigma: float) -> VAEConfig:
    """``model`` with a Gaussian decoder: fixed ``sigma``, or learned starting at ``sigma``."""
    return dataclasses.replace(model, likelihood=likelihood, likelihood_options={"sigma": sigma})


@torch.no_grad()
def ring_summary(vae: VAE, data: Dataset, n: int, progress: bool) -> Dict[str, Any]:
    """Samples x ~ p(x | z), z ~ p(z) (n, 2), their radius spread, and the test ELBO."""
    samples = vae.sample(n, mean=False)
    fit = evaluate_vae(vae, data.test, k=1, seed=0, progress=progress)
    radius = samples.norm(dim=1)
    return {"samples": samples, "radius_sd": radius.std().item(), "elbo": fit.elbo}


def circle(ring: Dataset) -> Dataset:
    """The ring's points moved onto the unit circle, x/‖x‖ = z/‖z‖: data on a curve in the
    plane (a manifold of dimension r = 1 in d = 2), where Dai & Wipf's optimum is γ -> 0 and
    the ELBO grows without bound. The same splits, (N, 2) each."""
    return Dataset("circle", binary=False, **{s: _unit(ring.split(s)) for s in SPLITS})


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def mnist_root(path: Path) -> Optional[Path]:
    """``path`` if torchvision's MNIST files are under it (``MNIST/raw``), else ``None``: a
    missing file would make torchvision try to download it."""
    raw = path / "MNIST" / "raw"
    found = all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in MNIST_FILES)
    return path if found else None


def run_ring(args: argparse.Namespace) -> Dict[str, Any]:
    """The three ring models: fixed σ = 1, fixed σ = ``args.sigma_small``, learned γ."""
    data = load_dataset("ring", n_train=args.n_train, seed=args.seed)
    cfg = TrainConfig(
        dataset="ring", epochs=args.epochs, lr=args.lr, warmup=args.warmup, seed=args.seed
    )
    base = ring_model(1.0)
    models = {}
    for sigma in (1.0, args.sigma_small):
        vae = train_once(cfg, with_likelihood(base, "gaussian", sigma), data, args.progress)
        models[f"fixed σ² = {sigma**2:g}"] = vae
    learned = with_likelihood(base, "gaussian-learned", 1.0)
    vae, gammas = train_recording(cfg, learned, data, gamma, args.progress)
    models["learned γ"] = vae
    # The same learned model on data of a lower dimension than the space: the unit circle.
    on_circle = dataclasses.replace(cfg, dataset="circle")
    _, circle_gammas = train_recording(on_circle, learned, circle(data), gamma, args.progress)
    torch.manual_seed(args.seed)
    summaries = {
        name: ring_summary(m, data, args.samples, args.progress) for name, m in models.items()
    }
    data_sd = data.train.norm(dim=1).std().item()
    return {
        "gammas": [1.0] + gammas,
        "circle_gammas": [1.0] + circle_gammas,
        "summaries": summaries,
        "data_radius_sd": data_sd,
        "data": data,
    }


def run_mnist(args: argparse.Namespace, root: Path) -> Dict[str, Any]:
    """Grayscale MNIST (``args.mnist_n`` seeded random training images, 1000 validation ones):
    fixed σ = 1 against learned γ, the default 784-200-200-50 VAE; decoder means of prior
    samples. (Adam moves log σ by at most about its learning rate a step, so γ can fall by
    e^(-2 lr steps) at most: 2500 steps at 1e-3 allow a factor of 150.)"""
    data = load_dataset("mnist", data_dir=str(root)).subset(n_train=args.mnist_n, n_eval=1000)
    cfg = TrainConfig(
        dataset="mnist", epochs=args.mnist_epochs, warmup=args.mnist_warmup, seed=args.seed
    )
    fixed = train_once(cfg, with_likelihood(VAEConfig(), "gaussian", 1.0), data, args.progress)
    learned, gammas = train_recording(
        cfg, with_likelihood(VAEConfig(), "gaussian-learned", 1.0), data, gamma, args.progress
    )
    torch.manual_seed(args.seed)
    means = {"fixed σ² = 1": fixed.sample(64), "learned γ": learned.sample(64)}
    return {"gammas": [1.0] + gammas, "means": means}


def plot(ring: Dict[str, Any], mnist: Optional[Dict[str, Any]], path: Path) -> None:
    """Row 1: γ against epoch, and the ring models' samples; row 2 (MNIST): its γ and means."""
    rows = 1 if mnist is None else 2
    fig, axes = plt.subplots(rows, 4, figsize=(16, 4 * rows), squeeze=False)
    ax = axes[0, 0]
    ax.plot(range(len(ring["gammas"])), ring["gammas"], "o-", ms=3, label="learned γ, ring")
    circle_gammas = ring["circle_gammas"]
    ax.plot(range(len(circle_gammas)), circle_gammas, "s-", ms=3, label="learned γ, unit circle")
    for name, style in zip([n for n in ring["summaries"] if n.startswith("fixed")], ("--", ":")):
        ax.axhline(float(name.split("= ")[1]), color="gray", ls=style, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("γ (decoder variance)")
    ax.set_title("the learned γ during training", fontsize=10)
    ax.legend(fontsize=8)
    data = ring["data"].train
    for ax, (name, s) in zip(axes[0, 1:], ring["summaries"].items()):
        ax.scatter(data[:2000, 0], data[:2000, 1], s=1, color="lightgray")
        ax.scatter(s["samples"][:, 0], s["samples"][:, 1], s=1, color="tab:blue")
        ax.set_xlim(-2.5, 2.5)
        ax.set_ylim(-2.5, 2.5)
        ax.set_aspect("equal")
        ax.set_title(
            f"{name}: x ~ p(x|z), z ~ N(0, I)\nradius sd {s['radius_sd']:.3f} "
            f"(data {ring['data_radius_sd']:.3f}), ELBO {s['elbo']:.2f}",
            fontsize=10,
        )
    if mnist is not None:
        ax = axes[1, 0]
        ax.plot(range(len(mnist["gammas"])), mnist["gammas"], "o-", ms=3)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("γ")
        ax.set_title("grayscale MNIST: the learned γ", fontsize=10)
        for ax, (name, images) in zip(axes[1, 1:], mnist["means"].items()):
            grid = image_grid(images.clamp(0, 1).reshape(-1, 28, 28), nrow=8)
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"MNIST, {name}: decoder means", fontsize=10)
            ax.axis("off")
        axes[1, 3].axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110, bbox_inches="tight")


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60, help="ring training epochs")
    p.add_argument("--warmup", type=int, default=10, help="KL warm-up epochs (all models)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (ring)")
    p.add_argument("--n-train", type=int, default=10000, help="ring training points")
    p.add_argument("--sigma-small", type=float, default=0.1, help="the small fixed σ")
    p.add_argument("--samples", type=int, default=3000, help="ring samples per model")
    p.add_argument("--mnist-dir", type=Path, default=SHARED_DATA, help="holds MNIST/raw")
    p.add_argument("--mnist-epochs", type=int, default=5)
    p.add_argument("--mnist-warmup", type=int, default=1, help="MNIST's KL warm-up epochs")
    p.add_argument("--mnist-n", type=int, default=50000, help="MNIST training images")
    p.add_argument("--out", type=Path, default=FIGURE, help="the figure (PNG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; returns {"ring": {"gammas" (epochs + 1, from the start),
    "summaries": {model: {"radius_sd", "elbo", "samples"}}, "data_radius_sd"}, "mnist": the
    same for MNIST, or None where it was skipped}."""
    args = parse(argv)
    torch.manual_seed(args.seed)
    ring = run_ring(args)
    g = ring["gammas"]
    print(
        f"ring: learned γ {g[0]:.3g} at the start, {g[-1]:.3g} after {len(g) - 1} epochs "
        f"({g[0] / g[-1]:.0f}x lower; the fixed ones: 1 and {args.sigma_small**2:g})"
    )
    c = ring["circle_gammas"]
    print(
        f"unit circle (data on a curve): learned γ {c[0]:.3g} at the start, {c[-1]:.3g} after "
        f"{len(c) - 1} epochs ({c[0] / c[-1]:.0f}x lower)"
    )
    for name, s in ring["summaries"].items():
        print(
            f"ring, {name:>14}: samples' radius sd {s['radius_sd']:.3f} "
            f"(data {ring['data_radius_sd']:.3f}), test ELBO {s['elbo']:.3f}"
        )
    root = mnist_root(args.mnist_dir)
    mnist = None
    if root is None:
        print(
            f"grayscale MNIST: skipped, torchvision's MNIST files are not under "
            f"{args.mnist_dir}/MNIST/raw (pass --mnist-dir to where they are)"
        )
    else:
        mnist = run_mnist(args, root)
        m = mnist["gammas"]
        print(f"grayscale MNIST: learned γ {m[0]:.3g} -> {m[-1]:.3g} after {len(m) - 1} epochs")
    plot(ring, mnist, args.out)
    print(f"figure: {args.out}")
    return {"ring": ring, "mnist": mnist}


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
