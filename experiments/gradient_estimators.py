"""Score function against pathwise gradients: both unbiased, their variances orders apart.

    python experiments/gradient_estimators.py  # about 20 s; writes figures/gradient_estimators.png

The gradient of E_{z~q_λ}[f(z)] has two standard Monte Carlo estimators:

- score function (REINFORCE): E_q[f(z) ∇_λ log q_λ(z)], which needs only log q's gradient and
  works for any q, discrete too; a baseline b subtracted from f leaves it unbiased (E_q ∇ log q
  = 0) and can cut its variance;
- pathwise (reparameterization): z = g_λ(ε), ∇_λ E_ε[f(g_λ(ε))] = E_ε[∇_z f · ∇_λ g], which
  needs a differentiable f and a reparameterizable q, and uses f's gradient.

The case here has a known answer: the ELBO of the library's VAE holding a linear-Gaussian model
(``pyrovae.linear_gaussian_vae`` on ``linear-gaussian`` data), with its linear encoder set to
zero so that the diagonal guide is q(z | x) = N(0, I) for every x, a guide far from the
posterior as at the start of training. The exact gradient of the ELBO in the encoder's
parameters is autograd of the closed form (``LinearGaussian.elbo_diagonal``). The estimators are
the library's (``pathwise``, ``score-function`` without a baseline and with its decaying-average
baseline), each gradient drawn as a training step draws it, by the library's diagnostics
(``pyrovae.evaluation.gradients.gradient_variance``, with its per-element means and variances):

1. unbiasedness: each element's mean over the draws against the exact gradient, in standard
   errors;
2. variance per encoder parameter (the mean over the parameters of each one's variance) as the
   latent dimension grows, at one particle: the score function's grows about one power of the
   dimension faster, because its one scalar cost f multiplies every coordinate's score, and
   f's variance is a sum over the coordinates;
3. variance against the number of particles K at one dimension: every estimator's falls as 1/K,
   so the score function needs about (its variance / pathwise's) times more samples.

The baseline is a running average of each data point's cost, adapted for ``--warmup`` steps on
the batch and then held fixed while the gradients are drawn.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pyrovae import linear_gaussian_vae, load_dataset  # noqa: E402
from pyrovae.evaluation.gradients import gradient_variance  # noqa: E402
from pyrovae.plots import save_figure  # noqa: E402

FIGURE = Path(__file__).resolve().parent / "figures" / "gradient_estimators.png"
# Display name -> the library's estimator spec (``num_particles`` is added per setting).
ESTIMATORS = {
    "pathwise": "pathwise",
    "score function": "score-function:baseline=none",
    "score function + baseline": "score-function:baseline=decaying-average",
}
SHORT = {"pathwise": "pathwise", "score function": "score", "score function + baseline": "score+b"}
STYLES = {
    "pathwise": ("k", "o", "-"),
    "score function": ("tab:red", "s", "-"),
    "score function + baseline": ("tab:orange", "^", "--"),
}


def setting(z_dim: int, x_dim: int, batch: int, noise_std: float, seed: int):
    """The library's VAE holding a linear-Gaussian model with ``z_dim`` latents and its guide at
    q(z | x) = N(0, I) (encoder zeroed), ``batch`` test points x (B, x_dim) of that model, and
    the model as a float64 ``LinearGaussian``: (vae, x, truth)."""
    data = load_dataset(
        "linear-gaussian",
        x_dim=x_dim,
        z_dim=z_dim,
        noise_std=noise_std,
        seed=seed,
        n_train=1,
        n_valid=1,
        n_test=batch,
    )
    vae = linear_gaussian_vae(data.truth, dtype=torch.float64)
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.zero_()
    return vae, data.test.double(), vae.linear_gaussian()


def exact_encoder_gradient(vae, truth, x: torch.Tensor) -> torch.Tensor:
    """∇ of minus the closed-form ELBO averaged over the batch ``x`` (B, D), in the parameters
    of ``vae.inference_modules()`` flattened in order: (P_enc,), what each gradient draw of
    ``gradient_variance`` estimates."""
    params = [p for m in vae.inference_modules() for p in m.parameters()]
    q = vae.guide_family(vae.guide_input(x))  # N(loc, diag(scale²)), batch (B,)
    loss = -truth.elbo_diagonal(x, q.mean, q.stddev).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def measure(vae, x, truth, particles: int, draws: int, warmup: int) -> Dict[str, dict]:
    """Each estimator's encoder-gradient noise at ``particles`` particles: per-parameter mean
    variance, and the z-scores (mean - exact) / standard error of every element."""
    specs = [spec_with_particles(s, particles) for s in ESTIMATORS.values()]
    stats = gradient_variance(
        vae, x, specs, draws=draws, warmup=warmup, progress=False, per_element=True
    )
    exact = exact_encoder_gradient(vae, truth, x).double()
    out = {}
    for name, s in zip(ESTIMATORS, stats):
        mean, var = s.per_element["encoder_mean"], s.per_element["encoder_var"]
        z = (mean - exact) / (var / draws).sqrt()
        out[name] = {"variance": var.mean().item(), "z": z, "params": var.numel()}
    return out


def spec_with_particles(spec: str, particles: int) -> str:
    """``spec`` with ``num_particles`` set (``pathwise`` -> ``pathwise:num_particles=4``)."""
    sep = "," if ":" in spec else ":"
    return f"{spec}{sep}num_particles={particles}"


def parse_ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dims",
        type=parse_ints,
        default=[1, 2, 5, 10, 20, 50, 100],
        help="latent dimensions (comma-separated)",
    )
    parser.add_argument(
        "--particles",
        type=parse_ints,
        default=[1, 2, 4, 8, 16, 32],
        help="numbers of particles K, at --particles-dim",
    )
    parser.add_argument("--particles-dim", type=int, default=10)
    parser.add_argument("--x-dim", type=int, default=10, help="observed dimension")
    parser.add_argument("--batch", type=int, default=10, help="data points per gradient")
    parser.add_argument("--noise-std", type=float, default=1.0)
    parser.add_argument("--draws", type=int, default=300, help="gradient draws per setting")
    parser.add_argument("--warmup", type=int, default=100, help="baseline adaptation steps")
    parser.add_argument("--seed", type=int, default=0, help="seeds the data and the draws")
    parser.add_argument("--out", type=Path, default=FIGURE, help="the figure's path")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the experiment; print what it checks, write the figure, return the numbers."""
    args = parse_args(argv)
    jobs = [(d, 1) for d in args.dims] + [(args.particles_dim, k) for k in args.particles]
    results: Dict[tuple, Dict[str, dict]] = {}
    for d, k in tqdm(list(dict.fromkeys(jobs)), desc="settings", leave=False):
        # Seeded per setting: its numbers do not depend on the settings run before it.
        torch.manual_seed(args.seed)
        vae, x, truth = setting(d, args.x_dim, args.batch, args.noise_std, args.seed)
        results[d, k] = measure(vae, x, truth, k, args.draws, args.warmup)
    by_dim = {d: results[d, 1] for d in args.dims}
    by_particles = {k: results[args.particles_dim, k] for k in args.particles}

    # 1. Unbiasedness, over every element of every setting.
    print(
        f"unbiased: z = (mean of {args.draws} draws - exact gradient) / standard error, over "
        "the encoder's parameters of every setting (mean z² = 1 if unbiased):"
    )
    unbiased = {}
    for name in ESTIMATORS:
        z = torch.cat([r[name]["z"] for r in results.values()])
        unbiased[name] = {"mean_z2": z.pow(2).mean().item(), "max_abs_z": z.abs().max().item()}
        print(
            f"  {name:<26} mean z² {unbiased[name]['mean_z2']:.2f}, max |z| "
            f"{unbiased[name]['max_abs_z']:.1f} over {z.numel()} elements"
        )

    # 2. Variance against the latent dimension.
    print(
        "variance per encoder parameter at K = 1 (score+b: with the baseline), and the ratio "
        "pathwise / score:"
    )
    names = list(ESTIMATORS)
    print(
        f"  {'dim':>4} {'params':>6} "
        + "".join(f"{SHORT[n]:>11}" for n in names)
        + f"{'ratio':>10}{'ratio (b)':>11}"
    )
    ratios = {"score function": [], "score function + baseline": []}
    for d, r in by_dim.items():
        for name in ratios:
            ratios[name].append(r["pathwise"]["variance"] / r[name]["variance"])
        print(
            f"  {d:>4} {r['pathwise']['params']:>6} "
            + "".join(f"{r[n]['variance']:>11.3g}" for n in names)
            + f"{ratios['score function'][-1]:>10.2g}"
            + f"{ratios['score function + baseline'][-1]:>11.2g}"
        )

    # 3. Variance against the number of particles.
    print(f"variance per encoder parameter times K, at dimension {args.particles_dim} (flat: 1/K):")
    for k, r in by_particles.items():
        print(
            f"  K = {k:>3}: " + ", ".join(f"{SHORT[n]} {k * r[n]['variance']:.3g}" for n in names)
        )
    one = by_particles[min(by_particles)]
    need = {n: one[n]["variance"] / one["pathwise"]["variance"] for n in ratios}
    print(
        f"so the score function needs about {need['score function']:.0f}x the particles "
        f"(with the baseline {need['score function + baseline']:.0f}x) for pathwise's variance"
    )

    draw(args.out, by_dim, by_particles, ratios, args)
    print(f"wrote {args.out}")
    return {"by_dim": by_dim, "by_particles": by_particles, "ratios": ratios, "unbiased": unbiased}


def _variance_lines(ax, table) -> None:
    """One log-log line per estimator: ``table[x][name]["variance"]`` against the keys x."""
    xs = list(table)
    for name in ESTIMATORS:
        color, marker, ls = STYLES[name]
        ax.loglog(
            xs,
            [table[x][name]["variance"] for x in xs],
            color=color,
            marker=marker,
            ls=ls,
            label=name,
        )


def draw(path, by_dim, by_particles, ratios, args) -> None:
    """The figure: variance against dimension, the ratio against dimension, variance against K."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    dims = list(by_dim)
    _variance_lines(axes[0], by_dim)
    axes[0].set_xlabel("latent dimension")
    axes[0].set_ylabel("gradient variance per encoder parameter")
    axes[0].set_title("K = 1 particle")
    axes[0].legend(fontsize=8)

    for name, values in ratios.items():
        color, marker, ls = STYLES[name]
        axes[1].loglog(dims, values, color=color, marker=marker, ls=ls, label=f"pathwise / {name}")
    ref = ratios["score function + baseline"][0]
    axes[1].loglog(
        dims, [ref * dims[0] / d for d in dims], color="0.5", ls=":", lw=1, label="∝ 1 / dimension"
    )
    axes[1].set_xlabel("latent dimension")
    axes[1].set_ylabel("variance ratio")
    axes[1].set_title("pathwise's variance as a fraction of the score function's")
    axes[1].legend(fontsize=8)

    ks = list(by_particles)
    _variance_lines(axes[2], by_particles)
    # Drawn above the score function's line, which it would hide.
    first = 3 * by_particles[ks[0]]["score function"]["variance"] * ks[0]
    axes[2].loglog(ks, [first / k for k in ks], color="0.5", ls=":", lw=1, label="∝ 1 / K")
    axes[2].set_xlabel("particles K per data point")
    axes[2].set_ylabel("gradient variance per encoder parameter")
    axes[2].set_title(f"latent dimension {args.particles_dim}")
    axes[2].legend(fontsize=8)
    fig.suptitle(
        f"encoder-gradient variance of the ELBO, linear-Gaussian VAE, q = N(0, I), "
        f"x {args.x_dim}-D, batch {args.batch}, {args.draws} draws per point",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
