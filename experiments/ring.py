"""The ring: a VAE's decoder learns to bend a Gaussian into a ring (Doersch, 2016, Figure 2).

    python experiments/ring.py

Doersch's tutorial makes the point that a deterministic function of z ~ N(0, I) can have almost
any distribution: g(z) = z/10 + z/‖z‖ maps the 2-D standard normal onto a ring of radius
1 + ‖z‖/10. The library's ``ring`` data set is exactly those samples; this script first checks
that, by inverting g (z = 10 (‖x‖ - 1) x/‖x‖) and testing that the z recovered are standard
normal. It then trains a VAE with a 2-D latent and a Gaussian decoder of fixed σ (``--sigma``)
on the ring with the library's trainer, and draws from it: z ~ N(0, I) through the learned
decoder mean g_θ(z). It prints the radius of the data and of the samples (mean and spread), and
the share of samples that fall inside the unit circle (none of the data does). The figure,
``experiments/figures/ring.png``: the data, the learned samples coloured by the angle of their
z (the decoder has to wrap the plane around the ring), and the latent space: the guide's means
of the test points, coloured by the angle of x.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyrovae import TrainConfig, VAEConfig, load_dataset, train  # noqa: E402
from pyrovae.evaluation import evaluate_vae  # noqa: E402
from pyrovae.model import VAE  # noqa: E402
from pyrovae.plots import save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
FIGURE = HERE / "figures" / "ring.png"


def ring_model(sigma: float) -> VAEConfig:
    """The VAE for 2-D data: 2-D latent, two hidden layers of 128 ReLUs each way, Gaussian
    decoder of fixed ``sigma``. (With tanh units of 64 the decoder needed several times the
    epochs to open the hole in the middle.)"""
    return VAEConfig(
        z_dim=2,
        hidden=(128, 128),
        activation="relu",
        likelihood="gaussian",
        likelihood_options={"sigma": sigma},
    )


def invert_ring(x: torch.Tensor) -> torch.Tensor:
    """z from x = g(z) = z/10 + z/‖z‖: x (n, 2) -> z (n, 2) = 10 (‖x‖ - 1) x / ‖x‖."""
    r = x.norm(dim=1, keepdim=True)
    return 10 * (r - 1) * x / r


@torch.no_grad()
def decode_prior(vae: VAE, n: int) -> tuple:
    """n draws z ~ p(z) (n, z_dim) and the decoder's mean E[x | z] for each, (n, x_dim)."""
    z = vae.prior().sample((n,))
    return z, vae.likelihood.mean(vae.decoder(z))


@torch.no_grad()
def guide_means(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """The guide's mean of z for each row of x (n, x_dim) -> (n, z_dim)."""
    return vae.guide_family(vae.guide_input(x)).mean


def radius_stats(x: torch.Tensor) -> Dict[str, float]:
    """Mean and standard deviation of ‖x‖ over the rows of x (n, 2), and the share inside the
    unit circle."""
    r = x.norm(dim=1)
    return {"mean": r.mean().item(), "std": r.std().item(), "inside": (r < 1).float().mean().item()}


def angle_colors(v: torch.Tensor) -> torch.Tensor:
    """The angle of each row of v (n, 2), in [-π, π]: a hue for scatter plots."""
    return torch.atan2(v[:, 1], v[:, 0])


def plot(data: torch.Tensor, z: torch.Tensor, samples: torch.Tensor, test, means, path: Path):
    """Three panels: the data, the learned samples coloured by the angle of z, and the guide's
    means of the test points coloured by the angle of x."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    style = {"s": 2, "cmap": "hsv", "vmin": -math.pi, "vmax": math.pi}
    axes[0].scatter(data[:, 0], data[:, 1], c=angle_colors(data), **style)
    axes[0].set_title("data: g(z) = z/10 + z/‖z‖, z ~ N(0, I)", fontsize=10)
    axes[1].scatter(samples[:, 0], samples[:, 1], c=angle_colors(z), **style)
    axes[1].set_title(
        "VAE samples: decoder mean g_θ(z), z ~ N(0, I)\n(colour: angle of z)", fontsize=10
    )
    for ax in axes[:2]:
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-1.6, 1.6)
        ax.add_patch(plt.Circle((0, 0), 1, fill=False, ls=":", color="k", lw=0.8))
    axes[2].scatter(means[:, 0], means[:, 1], c=angle_colors(test), **style)
    for r in (1, 2):
        axes[2].add_patch(plt.Circle((0, 0), r, fill=False, ls=":", color="k", lw=0.8))
    axes[2].set_xlim(-3.2, 3.2)
    axes[2].set_ylim(-3.2, 3.2)
    axes[2].set_title("latent space: guide means of test x\n(colour: angle of x)", fontsize=10)
    for ax in axes:
        ax.set_aspect("equal")
    fig.tight_layout()
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--n-train", type=int, default=10000, help="training points")
    p.add_argument("--sigma", type=float, default=0.05, help="the decoder's fixed noise scale")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--samples", type=int, default=5000, help="samples drawn for the figure")
    p.add_argument("--eval-k", type=int, default=1000, help="K of the test log p(x)")
    p.add_argument("--out", type=Path, default=FIGURE, help="the figure (PNG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; returns the radius statistics ("data", "samples"), the recovered
    z's "z_mean" (2,) and "z_cov" (2, 2), the test "elbo" and "log_px", and the VAE."""
    args = parse(argv)
    data = load_dataset("ring", n_train=args.n_train, seed=args.seed)
    z_data = invert_ring(data.train)
    z_mean, z_cov = z_data.mean(0), torch.cov(z_data.T)
    cfg = TrainConfig(dataset="ring", epochs=args.epochs, lr=args.lr, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = train(
            cfg, ring_model(args.sigma), str(Path(tmp) / "run"), data=data, progress=args.progress
        )
    vae = run.vae
    torch.manual_seed(args.seed)
    z, samples = decode_prior(vae, args.samples)
    test = data.test
    means = guide_means(vae, test)
    fit = evaluate_vae(vae, test, k=args.eval_k, seed=0, progress=args.progress)
    stats = {"data": radius_stats(data.train), "samples": radius_stats(samples)}
    print(
        f"the ring data set is g(z) = z/10 + z/|z|: inverting g gives z with mean "
        f"({z_mean[0]:.3f}, {z_mean[1]:.3f}) and covariance [[{z_cov[0, 0]:.3f}, "
        f"{z_cov[0, 1]:.3f}], [{z_cov[1, 0]:.3f}, {z_cov[1, 1]:.3f}]] (N(0, I): 0 and I)"
    )
    for name, s in stats.items():
        print(
            f"{name:>8}: radius {s['mean']:.3f} ± {s['std']:.3f} (mean ± sd), "
            f"{100 * s['inside']:.1f}% inside the unit circle"
        )
    print(
        f"radius of the samples - radius of the data: "
        f"{stats['samples']['mean'] - stats['data']['mean']:+.3f}; test ELBO {fit.elbo:.3f}, "
        f"log p(x) {fit.log_px:.3f} nats (K = {fit.k}, {fit.n} points)"
    )
    plot(data.train[: args.samples], z, samples, test, means, args.out)
    print(f"figure: {args.out}")
    return {
        **stats,
        "z_mean": z_mean,
        "z_cov": z_cov,
        "elbo": fit.elbo,
        "log_px": fit.log_px,
        "vae": vae,
    }


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
