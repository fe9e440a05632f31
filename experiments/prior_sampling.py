"""Why not sample from the prior? Naive Monte Carlo against importance sampling with the guide.

    python experiments/prior_sampling.py                         # the run in runs/bmnist
    python experiments/prior_sampling.py --run-dir /work/runs/bmnist-100 --max-k 100000

p(x) = E_{p(z)} p(x | z), so (1/K) Σ_k p(x | z_k), z_k ~ p(z), is an unbiased estimate of it. On
a trained binarized-MNIST VAE it is useless: almost every z from the prior decodes to another
digit, and the few z that explain x are too rare to be drawn. This script estimates log p(x) of
``--n`` seeded random test images both ways, for K from 1 to ``--max-k``: with the prior as
the proposal (``pyrovae.evaluation.prior_guide``, the library's own importance-weighted
estimator with the model's prior as the guide) and with the trained guide q(z | x)
(``evaluate_vae``, the usual estimate). It prints both, the K the prior needs to come within
1 nat of the guide's best estimate (where it gets there), and the K it would need by the rule of
Chatterjee & Diaconis (2018): importance sampling needs about exp(KL(target ‖ proposal))
samples, here exp(KL(p(z | x) ‖ p(z))), which the guide's particles estimate. The figure,
``experiments/figures/prior_sampling.png``, is the estimate against K for both proposals.

The model: the run in ``--run-dir`` (its best checkpoint). Where there is none, a small VAE is
trained now for ``--epochs`` epochs, on binarized MNIST where ``--data-dir`` holds it, else on
the ``linear-gaussian`` data set (whose exact log p(x) and posterior are then printed too), and
the script says so.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyrovae import TrainConfig, VAEConfig, load_dataset, train  # noqa: E402
from pyrovae.data import SPLITS  # noqa: E402
from pyrovae.evaluation import estimate_log_likelihood, evaluate_vae, prior_guide  # noqa: E402
from pyrovae.model import VAE  # noqa: E402
from pyrovae.plots import save_figure  # noqa: E402
from pyrovae.runs import load_run  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_RUN = HERE.parent / "runs" / "bmnist"
SHARED_MNIST = HERE.parent.parent / "shared" / "data" / "binarized_mnist"
FIGURE = HERE / "figures" / "prior_sampling.png"
# The guide's estimate stops changing long before this (docs, "Which estimate to trust": K = 50
# is within 1.6 nats of K = 5000 on the default model); larger K would only cost time.
GUIDE_MAX_K = 5000
# "Near" the importance-weighted estimate: within this many nats of the guide's best.
NEAR_NATS = 1.0


def k_grid(max_k: int) -> List[int]:
    """1, 3, 10, 30, ... (two per decade) up to ``max_k``, which is included."""
    ks = sorted({round(10 ** (i / 2)) for i in range(int(2 * math.log10(max_k)) + 1)})
    return [k for k in ks if k < max_k] + [max_k]


def _mnist_found(data_dir: Path) -> bool:
    return all((data_dir / f"binarized_mnist_{s}.amat").is_file() for s in SPLITS)


def model_and_points(args: argparse.Namespace) -> Tuple[VAE, torch.Tensor, str]:
    """The VAE to study, ``args.n`` seeded random test points (n, x_dim) and a line saying
    where they come from: the run in ``args.run_dir``, else a small model trained now."""
    run = Path(args.run_dir)
    if (run / "config.json").is_file():
        data_dir = str(args.data_dir) if _mnist_found(Path(args.data_dir)) else None
        vae, data, state = load_run(str(run), splits=("test",), data_dir=data_dir, device="cpu")
        x = data.subset(n_eval=args.n, seed=0).test
        return (
            vae,
            x,
            f"the run in {run} ({state['checkpoint']} checkpoint, epoch {state['epoch']})",
        )
    if args.dataset == "binarized-mnist" and _mnist_found(Path(args.data_dir)):
        cfg = TrainConfig(
            dataset="binarized-mnist", data_dir=str(args.data_dir), epochs=args.epochs
        )
        model = VAEConfig()  # the default 784-200-200-50 VAE
        what = f"binarized MNIST from {args.data_dir}"
    else:
        # Data the script can always make; a linear decoder makes log p(x) exact.
        cfg = TrainConfig(dataset="linear-gaussian", epochs=args.epochs, lr=1e-2)
        model = VAEConfig(z_dim=2, hidden=(32,), decoder="linear", likelihood="gaussian-learned")
        what = "the linear-gaussian data set (no binarized MNIST was asked for or found)"
    data = load_dataset(cfg.dataset, cfg.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        vae = train(
            cfg, model, run_dir=str(Path(tmp) / "run"), data=data, progress=args.progress
        ).vae
    x = data.subset(n_eval=args.n, seed=0).test
    note = f"no run in {run}: a small VAE trained now, {args.epochs} epoch(s) on {what}"
    return vae, x, note


@torch.no_grad()
def posterior_kl_from_prior(vae: VAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """KL(p(z | x) ‖ p(z)) per data point, estimated with ``k`` particles of the guide.

    log p(z | x) - log p(z) = log p(x | z) - log p(x), so the KL is E_{p(z|x)} log p(x | z)
    - log p(x): the first term by self-normalized importance sampling with the guide's
    particles (weights w_k ∝ p(x, z_k) / q(z_k | x)), the second by the same particles'
    importance-weighted estimate. Both are consistent as k grows.

    Args:
        vae: the model and guide.
        x: (n, x_dim) data points.
        k: guide particles per point.

    Returns:
        (n,) float64 tensor of nats.
    """
    out = []
    for row in x.split(1):  # one point at a time bounds memory at k decoder outputs
        p = vae.particles(row, None, k)  # (k, 1) fields
        log_w = p.log_w.double()
        log_px = torch.logsumexp(log_w, 0) - math.log(k)
        expected_lik = (torch.softmax(log_w, 0) * p.log_lik.double()).sum(0)
        out.append(expected_lik - log_px)
    return torch.cat(out)


def estimates(
    vae: VAE, x: torch.Tensor, ks: Sequence[int], proposal: str, progress: bool
) -> Dict[int, torch.Tensor]:
    """{K: (n,) per-point log p̂_K(x)} with the ``prior`` or the ``guide`` as the proposal,
    each K an independent seeded estimate by the library's evaluator."""
    out = {}
    for k in ks:
        if proposal == "prior":
            est = estimate_log_likelihood(
                vae.model, prior_guide(vae.model), x, k=k, seed=0, progress=progress
            )
        else:
            est = evaluate_vae(vae, x, k=k, seed=0, progress=progress)
        out[k] = est.per_point_log_px
    return out


def plot(result: Dict[str, Any], path: Path) -> None:
    """Mean log p̂_K(x) against K for both proposals, with the guide's best (and the exact
    value where known) as lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, color in (("prior", "tab:red"), ("guide", "tab:blue")):
        ks = sorted(result[name])
        ax.plot(ks, [result[name][k] for k in ks], "o-", color=color, label=f"proposal: {name}")
    ax.axhline(result["reference"], color="tab:blue", ls=":", lw=1, label="guide, largest K")
    if result.get("exact") is not None:
        ax.axhline(result["exact"], color="k", ls="--", lw=1, label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("K, samples per data point")
    ax.set_ylabel(f"mean log p̂_K(x) over {result['n']} points (nats)")
    kl = result["kl"]
    ax.set_title(
        f"Sampling from the prior: KL(p(z|x) ‖ p(z)) ≈ {kl:.1f} nats, "
        f"so K ≈ e^KL ≈ {math.exp(kl):.1g}",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN, help="a trained run (default %(default)s)"
    )
    p.add_argument(
        "--data-dir", type=Path, default=SHARED_MNIST, help="binarized MNIST's .amat files"
    )
    p.add_argument(
        "--dataset",
        default="binarized-mnist",
        choices=["binarized-mnist", "linear-gaussian"],
        help="what to train a small model on when there is no run",
    )
    p.add_argument("--epochs", type=int, default=3, help="epochs of that small model")
    p.add_argument("--n", type=int, default=20, help="test points (seeded random)")
    p.add_argument("--max-k", type=int, default=100_000, help="largest K for the prior")
    p.add_argument("--kl-k", type=int, default=5000, help="guide particles for the KL estimate")
    p.add_argument("--out", type=Path, default=FIGURE, help="the figure (PNG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the experiment; returns {"prior": {K: mean}, "guide": {K: mean}, "reference",
    "k_near" (None if never near), "kl", "exact" (or None), "n", "per_point": {...}}."""
    args = parse(argv)
    torch.manual_seed(args.seed)
    vae, x, source = model_and_points(args)
    vae.eval()
    print(f"model: {source}; {x.shape[0]} seeded random test points")
    prior_ks = k_grid(args.max_k)
    guide_ks = k_grid(min(args.max_k, GUIDE_MAX_K))
    per_point = {
        "prior": estimates(vae, x, prior_ks, "prior", args.progress),
        "guide": estimates(vae, x, guide_ks, "guide", args.progress),
    }
    means = {name: {k: v.mean().item() for k, v in d.items()} for name, d in per_point.items()}
    reference = means["guide"][guide_ks[-1]]
    kl = posterior_kl_from_prior(vae, x, args.kl_k).mean().item()
    truth = vae.linear_gaussian()
    exact = exact_kl = None
    if truth is not None:
        xd = x.double()
        truth = type(truth)(*(t.double() for t in vars(truth).values()))
        exact = truth.log_marginal(xd).mean().item()
        prior = torch.distributions.MultivariateNormal(truth.prior_loc, truth.prior_cov)
        exact_kl = torch.distributions.kl_divergence(truth.posterior(xd), prior).mean().item()
    k_near = next((k for k in prior_ks if means["prior"][k] >= reference - NEAR_NATS), None)

    print("log p(x), mean over the points (nats):")
    print(f"{'K':>8} {'prior':>10} {'guide':>10}")
    for k in sorted(set(prior_ks) | set(guide_ks)):
        row = [f"{means[m][k]:10.2f}" if k in means[m] else f"{'':>10}" for m in ("prior", "guide")]
        print(f"{k:>8} {' '.join(row)}")
    top = prior_ks[-1]
    print(
        f"at K = {top} the prior's estimate is {means['prior'][top]:.2f} nats: "
        f"{means['prior'][top] - reference:+.2f} against the guide's at K = {guide_ks[-1]} "
        f"({reference:.2f}), {means['prior'][top] - means['guide'][1]:+.2f} against the "
        f"guide's at K = 1 (the ELBO, {means['guide'][1]:.2f})"
    )
    if k_near is None:
        print(f"the prior's estimate never came within {NEAR_NATS:g} nat of it (K <= {top})")
    else:
        print(f"the prior's estimate first came within {NEAR_NATS:g} nat of it at K = {k_near}")
    print(
        f"KL(p(z|x) || p(z)) ≈ {kl:.2f} nats per point (guide, K = {args.kl_k}): the prior "
        f"needs about exp(KL) ≈ {math.exp(kl):.2g} samples (Chatterjee & Diaconis, 2018)"
    )
    if exact is not None:
        print(f"exact: log p(x) = {exact:.2f}, KL(p(z|x) || p(z)) = {exact_kl:.2f} nats")
    result = {
        **means,
        "reference": reference,
        "k_near": k_near,
        "kl": kl,
        "exact": exact,
        "exact_kl": exact_kl,
        "n": x.shape[0],
        "per_point": per_point,
    }
    plot(result, args.out)
    print(f"figure: {args.out}")
    return result


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
