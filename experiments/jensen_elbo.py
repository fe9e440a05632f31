"""Jensen and the two routes to the ELBO, on a linear-Gaussian model where every term is exact.

    python experiments/jensen_elbo.py    # about 10 s; writes experiments/figures/jensen_elbo.png

Two routes lead to the same lower bound on log p(x) for any guide q(z | x):

- Jensen: log p(x) = log E_q[p(x, z) / q(z | x)] >= E_q[log p(x, z) / q(z | x)] = ELBO, since log
  is concave;
- the decomposition log p(x) = ELBO + KL(q(z | x) ‖ p(z | x)), an identity for every q.

So Jensen's gap is the KL divergence to the posterior, and the bound touches log p(x) exactly
where q is the posterior.

On the ``linear-gaussian`` dataset (z 2-D), with the library's VAE holding the true model
(``pyrovae.linear_gaussian_vae``), the script

1. checks the identity in closed form (``LinearGaussian.elbo``, ``kl_to_posterior`` and
   ``log_marginal``, each computed on its own) for six guides at every data point;
2. moves the guide on a straight line in (mean, Cholesky factor) from the prior N(0, I) to the
   exact posterior and draws log p(x), the ELBO and the gap between them (the KL is convex along
   the line and zero at its end, so the gap shrinks monotonically to zero);
3. estimates both sides of Jensen's inequality with the library's evaluator
   (``estimate_log_likelihood``: the mean log weight is the Monte Carlo ELBO, the log of the
   mean weight tends to log p(x) as K grows) at five points on the line, against the closed
   forms.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

from pyrovae import (  # noqa: E402
    LinearGaussian,
    estimate_log_likelihood,
    linear_gaussian_vae,
    load_dataset,
)
from pyrovae.plots import save_figure  # noqa: E402

FIGURE = Path(__file__).resolve().parent / "figures" / "jensen_elbo.png"

# A guide: x (B, D) -> (loc (B, Dz), scale_tril (B, Dz, Dz)). Every one here is affine in x, as
# the posterior of a linear-Gaussian model is.
Guide = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


def prior_guide(truth: LinearGaussian) -> Guide:
    """q(z | x) = p(z) = N(0, I) for every x: the guide that ignores the data."""

    def params(x):
        eye = torch.eye(truth.z_dim, dtype=x.dtype)
        return x.new_zeros(x.shape[0], truth.z_dim), eye.expand(x.shape[0], -1, -1)

    return params


def posterior_guide(truth: LinearGaussian) -> Guide:
    """q(z | x) = p(z | x), the exact posterior (full covariance)."""

    def params(x):
        post = truth.posterior(x)
        return post.loc, post.scale_tril.expand(x.shape[0], -1, -1)

    return params


def mean_field_guide(truth: LinearGaussian) -> Guide:
    """The best diagonal Gaussian: the posterior mean, variances 1 / Λ_ii (Λ the posterior
    precision), which maximizes the ELBO over diagonal guides; it cannot reach log p(x) when the
    posterior's latents are correlated."""

    def params(x):
        post = truth.posterior(x)
        precision = torch.linalg.inv(post.covariance_matrix)
        scale = precision.diagonal(dim1=-2, dim2=-1).rsqrt()
        return post.loc, torch.diag_embed(scale).expand(x.shape[0], -1, -1)

    return params


def moved(guide: Guide, shift: float = 0.0, stretch: float = 1.0) -> Guide:
    """``guide`` with its mean shifted by ``shift`` in every coordinate and its Cholesky factor
    multiplied by ``stretch``."""

    def params(x):
        loc, tril = guide(x)
        return loc + shift, tril * stretch

    return params


def between(a: Guide, b: Guide, t: float) -> Guide:
    """The guide a fraction ``t`` of the way from ``a`` to ``b`` on the straight line between
    their means and between their Cholesky factors (lower-triangular with a positive diagonal
    all along, so a valid Gaussian at every t)."""

    def params(x):
        (loc_a, tril_a), (loc_b, tril_b) = a(x), b(x)
        return torch.lerp(loc_a, loc_b, t), torch.lerp(tril_a, tril_b, t)

    return params


def pyro_guide(guide: Guide):
    """``guide`` as a Pyro program of x with the VAE's sites: ``z`` in the plate ``data``."""

    def program(x, num_data=None):
        loc, tril = guide(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=tril))

    return program


def exact_terms(truth: LinearGaussian, guide: Guide, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The closed forms per data point, each (B,): ``log_px``, ``elbo`` and ``kl`` (to the
    posterior), computed independently of each other."""
    loc, tril = guide(x)
    return {
        "log_px": truth.log_marginal(x),
        "elbo": truth.elbo(x, loc, tril),
        "kl": truth.kl_to_posterior(x, loc, tril),
    }


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200, help="test points (default 200)")
    parser.add_argument("--x-dim", type=int, default=3, help="observed dimension (default 3)")
    parser.add_argument("--noise-std", type=float, default=1.0, help="observation noise")
    parser.add_argument("--data-seed", type=int, default=3, help="the dataset's seed")
    parser.add_argument("--k", type=int, default=1000, help="evaluator particles (default 1000)")
    parser.add_argument("--steps", type=int, default=41, help="guides along the line")
    parser.add_argument("--seed", type=int, default=0, help="the evaluator's seed")
    parser.add_argument("--out", type=Path, default=FIGURE, help="the figure's path")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the experiment; print what it checks, write the figure, return the numbers."""
    args = parse_args(argv)
    data = load_dataset(
        "linear-gaussian",
        x_dim=args.x_dim,
        z_dim=2,
        noise_std=args.noise_std,
        seed=args.data_seed,
        n_train=1,
        n_valid=1,
        n_test=args.points,
    )
    # The library's VAE holding the dataset's true model, in float64 so that the identity holds
    # to float64 rounding; its model is the ``p(x, z)`` the evaluator scores.
    vae = linear_gaussian_vae(data.truth, dtype=torch.float64)
    truth = vae.linear_gaussian()
    x = data.test.double()

    prior, posterior = prior_guide(truth), posterior_guide(truth)
    guides = {
        "prior N(0, I)": prior,
        "halfway": between(prior, posterior, 0.5),
        "best diagonal": mean_field_guide(truth),
        "posterior, scale x2": moved(posterior, stretch=2.0),
        "posterior, mean +1": moved(posterior, shift=1.0),
        "exact posterior": posterior,
    }
    terms = {name: exact_terms(truth, g, x) for name, g in guides.items()}
    identity_error = max(
        (t["log_px"] - (t["elbo"] + t["kl"])).abs().max().item() for t in terms.values()
    )
    print(
        f"max |log p(x) - (ELBO + KL)| over {len(guides)} guides x {args.points} points = "
        f"{identity_error:.1e} nats"
    )
    others = [name for name in guides if name != "exact posterior"]
    min_gap = min(terms[n]["kl"].min().item() for n in others)
    gap_at_posterior = terms["exact posterior"]["kl"].abs().max().item()
    print(
        f"gap log p(x) - ELBO: at least {min_gap:.3f} nats for the other {len(others)} guides "
        f"at every point; at the exact posterior at most {gap_at_posterior:.1e}"
    )
    for name in guides:
        print(
            f"  {name:<20} mean ELBO {terms[name]['elbo'].mean():9.4f}   "
            f"mean KL to p(z|x) {terms[name]['kl'].mean().abs():8.4f}"
        )

    # The line from the prior to the posterior, in closed form.
    ts = torch.linspace(0, 1, args.steps, dtype=torch.float64)
    line = [exact_terms(truth, between(prior, posterior, t.item()), x) for t in ts]
    elbo_line = torch.stack([t["elbo"].mean() for t in line])
    kl_line = torch.stack([t["kl"].mean() for t in line])
    log_px = terms["prior N(0, I)"]["log_px"].mean().item()

    # Jensen's two sides by Monte Carlo, from the evaluator: mean log w and log mean w. (The
    # tiny KL at the posterior is float rounding, printed as its size.)
    mc = []
    print(f"the evaluator, K = {args.k} per point, against the closed forms (means over points):")
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        guide = between(prior, posterior, t)
        res = estimate_log_likelihood(
            vae.model, pyro_guide(guide), x, k=args.k, progress=False, seed=args.seed
        )
        exact = exact_terms(truth, guide, x)
        diff = res.per_point_elbo - exact["elbo"]
        jensen = res.per_point_log_px - res.per_point_elbo  # log mean w - mean log w
        row = {
            "t": t,
            "elbo_mc": res.elbo,
            "elbo_mc_stderr": diff.std().item() / math.sqrt(diff.numel()),
            "elbo_exact": exact["elbo"].mean().item(),
            "log_mean_w": res.log_px,
            "jensen_gap": jensen.mean().item(),
            "kl": exact["kl"].mean().item(),
        }
        mc.append(row)
        print(
            f"  t = {t:4.2f}: mean log w {row['elbo_mc']:9.4f} ± {row['elbo_mc_stderr']:.4f} "
            f"(exact ELBO {row['elbo_exact']:9.4f}); log mean w {row['log_mean_w']:9.4f} "
            f"(exact log p(x) {log_px:9.4f}); Jensen gap {row['jensen_gap']:.4f} "
            f"(KL {abs(row['kl']):.4f})"
        )

    draw(
        args.out,
        truth,
        x[0],
        prior,
        posterior,
        guides["best diagonal"],
        ts,
        elbo_line,
        kl_line,
        log_px,
        terms["best diagonal"]["elbo"].mean().item(),
        mc,
        args.k,
    )
    print(f"wrote {args.out}")
    return {
        "identity_error": identity_error,
        "min_gap": min_gap,
        "gap_at_posterior": gap_at_posterior,
        "terms": terms,
        "t": ts,
        "elbo_line": elbo_line,
        "kl_line": kl_line,
        "log_px": log_px,
        "monte_carlo": mc,
    }


def _ellipse(loc: torch.Tensor, tril: torch.Tensor, radius: float = 2.0):
    """The points loc + radius L u for unit vectors u: a contour of N(loc, L Lᵀ)."""
    angle = torch.linspace(0, 2 * math.pi, 200, dtype=loc.dtype)
    unit = torch.stack([angle.cos(), angle.sin()])  # (2, 200)
    pts = loc.unsqueeze(-1) + radius * tril @ unit
    return pts[0].numpy(), pts[1].numpy()


def draw(
    path,
    truth,
    x0,
    prior,
    posterior,
    mean_field,
    ts,
    elbo_line,
    kl_line,
    log_px,
    mean_field_elbo,
    mc,
    k,
) -> None:
    """The figure: the guides in the latent plane for one point, and the bound along the line."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    x0 = x0.unsqueeze(0)
    colors = plt.cm.viridis([0.0, 0.45, 0.85])
    for t, color in zip((0.0, 0.5, 1.0), colors):
        loc, tril = between(prior, posterior, t)(x0)
        label = {0.0: "q at t = 0 (the prior)", 0.5: "q at t = 0.5", 1.0: "q at t = 1"}[t]
        left.plot(*_ellipse(loc[0], tril[0]), color=color, lw=2 if t == 1 else 1.5, label=label)
        left.plot(*loc[0].numpy(), "o", color=color, ms=4)
    loc, tril = posterior(x0)
    left.plot(*_ellipse(loc[0], tril[0]), "k--", lw=1, label="p(z | x) (exact)")
    loc, tril = mean_field(x0)
    left.plot(*_ellipse(loc[0], tril[0]), color="tab:red", ls=":", lw=1.5, label="best diagonal q")
    left.set_aspect("equal")
    left.set_xlabel("z₁")
    left.set_ylabel("z₂")
    left.set_title("guides for one data point (2-σ contours)")
    left.legend(fontsize=8, loc="best")

    t = ts.numpy()
    right.axhline(log_px, color="k", lw=1.5, label="log p(x) (exact)")
    right.plot(t, elbo_line.numpy(), color="tab:blue", lw=2, label="ELBO (closed form)")
    right.fill_between(
        t, elbo_line.numpy(), log_px, color="tab:blue", alpha=0.15, label="gap = KL(q ‖ p(z | x))"
    )
    right.errorbar(
        [r["t"] for r in mc],
        [r["elbo_mc"] for r in mc],
        yerr=[2 * r["elbo_mc_stderr"] for r in mc],
        fmt="o",
        color="tab:orange",
        ms=5,
        capsize=3,
        label=f"mean log w (evaluator, K = {k})",
    )
    right.plot(
        [r["t"] for r in mc],
        [r["log_mean_w"] for r in mc],
        "x",
        color="tab:green",
        ms=7,
        label=f"log mean w (evaluator, K = {k})",
    )
    right.axhline(
        mean_field_elbo, color="tab:red", ls=":", lw=1.5, label="ELBO of the best diagonal q"
    )
    right.set_xlabel("t: the guide's place on the line from the prior (0) to p(z | x) (1)")
    right.set_ylabel("nats, mean over test points")
    right.set_title("log p(x) = ELBO + KL: they meet only at the posterior")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
