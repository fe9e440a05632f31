"""The VAE as a model of (x, ε) (Dinh): the ELBO is the expected log-density of x and its noise.

    python experiments/epsilon_model.py

A guide that samples by reparameterization draws z = T_x(ε), ε ~ q(ε) = N(0, I), with T_x
invertible (for the diagonal Gaussian, T_x(ε) = μ(x) + σ(x) ε). Pulling the model's joint
density back through T_x defines a density over pairs (x, ε),

    p(x, ε) = p(x, T_x(ε)) |det ∂T_x/∂ε|,

and since q(z | x) = q(ε) |det ∂T_x/∂ε|⁻¹ at z = T_x(ε), for every ε

    log p(x, ε) = log p(x, z) - log q(z | x) + log q(ε).                     (1)

Taking E_ε of both sides: E_ε log p(x, ε) = ELBO(x) + E_ε log q(ε) = ELBO(x) - H[q(ε)], with
H[N(0, I_d)] = (d/2) log(2πe) a constant. So maximizing the ELBO is maximum likelihood for the
model p(x, ε) on data augmented with independent standard-normal noise; and p(x, ε) is a proper
density whose x-marginal is the VAE's own p(x), ∫ p(x, ε) dε = ∫ p(x, z) dz = p(x).

This script trains the ring VAE (``ring.py``'s model, with the library's trainer) and checks all
three on test points: (1) per sample, with the left side computed by the change of variables
(``pyrovae.parts.guides.noise_transform`` gives T_x and its Jacobian) and the right side from
the model's and guide's densities (``VAE.scores``), in float64; the expectation, against the
ELBO the library's evaluator estimates from its own independent draws; and the marginal, by
quadrature over a grid of ε against the importance-weighted log p(x). The figure,
``experiments/figures/epsilon_model.png``: the two sides of (1) per sample; E_ε log p(x, ε)
against ELBO - H per point; and p(ε | x) = p(x, ε) / p(x) for one x against q(ε) = N(0, I),
which it would equal if the guide were the exact posterior.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyrovae import TrainConfig, load_dataset, train  # noqa: E402
from pyrovae.evaluation import evaluate_vae  # noqa: E402
from pyrovae.model import VAE  # noqa: E402
from pyrovae.parts.guides import noise_transform  # noqa: E402
from pyrovae.plots import save_figure  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling script ring.py, also when imported from tests
from ring import ring_model  # noqa: E402

FIGURE = HERE / "figures" / "epsilon_model.png"


@torch.no_grad()
def two_sides(vae: VAE, x: torch.Tensor, eps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Both sides of log p(x, ε) = log p(x, z) - log q(z | x) + log q(ε) at given noise.

    Args:
        vae: a VAE whose guide samples by a standard-normal reparameterization.
        x: (B, x_dim) data points.
        eps: (C, B, z_dim) noise values, C per point.

    Returns:
        (lhs, rhs), (C, B) each: lhs = log p(x, T_x(ε)) + log |det ∂T_x/∂ε| (the change of
        variables), rhs = log p(x, z) - log q(z | x) + log N(ε; 0, I) with z = T_x(ε) and
        log q(z | x) the guide's own density at z.
    """
    noise, transform = noise_transform(vae.guide_family(vae.guide_input(x)))
    z = transform(eps)
    scored = vae.scores(x, {"z": z})
    log_p = scored.log_prior + scored.log_lik
    lhs = log_p + transform.log_abs_det_jacobian(eps, z)
    rhs = log_p - scored.log_q + noise.log_prob(eps)
    return lhs, rhs


def noise_entropy(d: int) -> float:
    """H[N(0, I_d)] = (d/2) log(2πe), nats."""
    return 0.5 * d * math.log(2 * math.pi * math.e)


def grid(half_width: float, points: int, dtype: torch.dtype) -> Tuple[torch.Tensor, float]:
    """A square grid over [-half_width, half_width]² as (points², 2) rows, and a cell's area."""
    axis = torch.linspace(-half_width, half_width, points, dtype=dtype)
    cells = torch.cartesian_prod(axis, axis)
    return cells, (axis[1] - axis[0]).item() ** 2


@torch.no_grad()
def log_marginal_by_quadrature(
    vae: VAE, x: torch.Tensor, half_width: float = 8.0, points: int = 301
) -> Tuple[torch.Tensor, torch.Tensor]:
    """log ∫ p(x, ε) dε for each row of x (B, x_dim), by the midpoint rule over a grid of ε
    (2-D latents only). Returns ((B,) log-integrals, (points², B) log p(x, ε) on the grid)."""
    cells, area = grid(half_width, points, x.dtype)
    eps = cells.unsqueeze(1).expand(-1, x.shape[0], -1)  # (G, B, 2)
    lhs, _ = two_sides(vae, x, eps)
    return torch.logsumexp(lhs, 0) + math.log(area), lhs


def plot(result: Dict[str, Any], path: Path) -> None:
    """The three panels described in the module's docstring."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    lhs, rhs = result["lhs"].flatten(), result["rhs"].flatten()
    pick = torch.randperm(lhs.numel(), generator=torch.Generator().manual_seed(0))[:4000]
    ax = axes[0]
    ax.scatter(rhs[pick], lhs[pick], s=2, alpha=0.5)
    lo, hi = rhs[pick].min().item(), rhs[pick].max().item()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("log p(x, z) - log q(z|x) + log q(ε)")
    ax.set_ylabel("log p(x, ε) = log p(x, T(ε)) + log|det ∂T/∂ε|")
    ax.set_title(f"per sample: max |difference| = {result['max_abs_diff']:.1e}", fontsize=10)
    ax = axes[1]
    ax.scatter(result["elbo_minus_h"], result["expected"], s=6)
    lo = min(result["elbo_minus_h"].min().item(), result["expected"].min().item())
    hi = max(result["elbo_minus_h"].max().item(), result["expected"].max().item())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("ELBO(x) - H[q(ε)]  (the evaluator)")
    ax.set_ylabel(f"mean of log p(x, ε) over {result['k']} ε")
    ax.set_title("per data point: E_ε log p(x, ε) = ELBO - H", fontsize=10)
    ax = axes[2]
    cells, log_joint, log_px = result["grid"], result["grid_log_joint"], result["grid_log_px"]
    side = int(round(math.sqrt(cells.shape[0])))
    shape = (side, side)
    e1, e2 = cells[:, 0].reshape(shape), cells[:, 1].reshape(shape)
    density = (log_joint - log_px).exp().reshape(shape)
    ax.contourf(e1, e2, density, levels=20, cmap="Blues")
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(cells).sum(-1).exp().reshape(shape)
    ax.contour(e1, e2, normal, levels=5, colors="tab:red", linewidths=0.8)
    ax.set_xlim(-4, 4)
    ax.set_ylim(-4, 4)
    ax.set_aspect("equal")
    ax.set_xlabel("ε₁")
    ax.set_ylabel("ε₂")
    ax.set_title("p(ε | x) for one test x (blue) and q(ε) = N(0, I) (red)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=50, help="training epochs of the ring VAE")
    p.add_argument("--n-train", type=int, default=10000, help="training points")
    p.add_argument("--sigma", type=float, default=0.05, help="the decoder's fixed noise scale")
    p.add_argument("--n", type=int, default=200, help="test points checked")
    p.add_argument("--k", type=int, default=1000, help="noise draws ε per test point")
    p.add_argument("--quadrature-n", type=int, default=5, help="test points integrated over ε")
    p.add_argument("--iw-k", type=int, default=100_000, help="K of the IW log p(x) to compare")
    p.add_argument("--out", type=Path, default=FIGURE, help="the figure (PNG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; returns "max_abs_diff" (identity (1)), per point "expected" and
    "elbo_minus_h" (n,) with their "elbo_mc_stderr" (n,), "quadrature" and "iw_log_px"
    (quadrature_n,), and the arrays of the figure."""
    args = parse(argv)
    data = load_dataset("ring", n_train=args.n_train, seed=args.seed)
    cfg = TrainConfig(dataset="ring", epochs=args.epochs, lr=3e-3, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        run = train(
            cfg, ring_model(args.sigma), str(Path(tmp) / "run"), data=data, progress=args.progress
        )
    # float64 from here: identity (1) then holds to ~1e-12, not float32's ~1e-5.
    vae = copy.deepcopy(run.vae).double().eval()
    x = data.subset(n_eval=args.n, seed=0).test.double()
    torch.manual_seed(args.seed)
    eps = torch.randn(args.k, x.shape[0], vae.z_dim, dtype=torch.float64)
    lhs, rhs = two_sides(vae, x, eps)
    max_abs_diff = (lhs - rhs).abs().max().item()
    h = noise_entropy(vae.z_dim)
    expected = lhs.mean(0)
    fit = evaluate_vae(vae, x, k=args.k, seed=1, progress=args.progress)
    elbo_minus_h = fit.per_point_elbo - h
    # Both sides are Monte Carlo averages over k independent draws: the standard error of
    # their difference, per point.
    scored = vae.particles(x, None, args.k)
    stderr = ((lhs.var(0) + scored.log_w.var(0)) / args.k).sqrt()
    diff = expected - elbo_minus_h
    q = x[: args.quadrature_n]
    quadrature, grid_log_joint = log_marginal_by_quadrature(vae, q)
    iw = evaluate_vae(vae, q, k=args.iw_k, seed=2, progress=args.progress).per_point_log_px
    cells, _ = grid(8.0, 301, torch.float64)

    print(
        f"(1) per sample: log p(x, ε) by the change of variables against log p(x, z) - "
        f"log q(z|x) + log q(ε): max |difference| {max_abs_diff:.2e} over {lhs.numel()} (x, ε) "
        "pairs (float64)"
    )
    print(
        f"E_ε: mean over {x.shape[0]} points of E_ε log p(x, ε) = {expected.mean():.4f}; "
        f"ELBO - H[q(ε)] = {fit.elbo:.4f} - {h:.4f} = {fit.elbo - h:.4f} (the evaluator's "
        f"ELBO, its own draws; K = {args.k} each)"
    )
    print(
        f"   per point: |difference| / its Monte Carlo standard error: mean "
        f"{(diff.abs() / stderr).mean():.2f}, max {(diff.abs() / stderr).max():.2f}"
    )
    print(
        f"marginal: log ∫ p(x, ε) dε by quadrature against the IW log p(x) (K = {args.iw_k}) "
        f"on {q.shape[0]} points: max |difference| {(quadrature - iw).abs().max():.4f} nats "
        f"(log p(x) from {iw.min():.3f} to {iw.max():.3f})"
    )
    result = {
        "max_abs_diff": max_abs_diff,
        "expected": expected,
        "elbo_minus_h": elbo_minus_h,
        "elbo_mc_stderr": stderr,
        "quadrature": quadrature,
        "iw_log_px": iw,
        "entropy": h,
        "k": args.k,
        "lhs": lhs,
        "rhs": rhs,
        "grid": cells,
        "grid_log_joint": grid_log_joint[:, 0],
        "grid_log_px": quadrature[0],
    }
    plot(result, args.out)
    print(f"figure: {args.out}")
    return result


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
