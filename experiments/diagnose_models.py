"""What the default VAE and the VampPrior recipe model do with their codes: ``pyrovae
diagnose`` on both, side by side (issue 28).

    python experiments/diagnose_models.py [--runs runs/diagnose] [--epochs 100]
        [--vamp-epochs 50] [--n 1000] [--k 5000] [--data-dir ../shared/data/binarized_mnist]

Trains (or resumes: run the same command again) two models on statically binarized MNIST at a
reduced budget: the default model of the main job (docs/getting-started.md, 100 epochs) and the
VampPrior recipe (500 pseudo-inputs, the IWAE bound with K = 5, KL warm-up and a cosine learning
rate) for ``--vamp-epochs`` epochs with a tenth of them warm-up. Then diagnoses each on the same
``n`` seeded test images with K importance samples: active units, KL per dimension, mutual
information and marginal KL, the weights' effective sample size and Pareto k̂. Writes
``experiments/results/diagnose/{default,vampprior}.json``, a markdown table ``table.md``, the
two models in the rate-distortion plane of Alemi et al. (2018), ``rate_distortion.png`` (lines
of equal ELBO = -(rate + distortion) dashed), and each run's ``figures/diagnose.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

from pyrovae import TrainConfig, VAEConfig, diagnose_run, train  # noqa: E402
from pyrovae.plots import markdown_table  # noqa: E402
from pyrovae.runs import strict_json  # noqa: E402
from pyrovae.training import read_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "diagnose"


def models(epochs: int, vamp_epochs: int, data_dir: str):
    """(name, TrainConfig, VAEConfig) of the two models."""
    data = {"dataset": "binarized-mnist", "data_dir": data_dir}
    default = (TrainConfig(**data, epochs=epochs), VAEConfig())
    vamp = (
        TrainConfig(**data, epochs=vamp_epochs, estimator="iwae", num_particles=5,
                    warmup=max(1, vamp_epochs // 10), lr_schedule="cosine"),
        VAEConfig(prior="vampprior", prior_options={"components": 500}),
    )  # fmt: skip
    return [("default", *default), ("vampprior", *vamp)]


def row(name: str, found) -> list:
    lat, w = found.latents, found.iw.weights.to_dict()
    kl = lat.kl_per_dim
    return [
        name,
        f"{found.iw.log_px:.2f}",
        f"{lat.active} of {kl.numel()}",
        f"{kl.max():.2f} / {kl.median():.3f} / {kl.min():.4f}",
        f"{lat.rate:.2f}",
        f"{lat.mutual_information:.2f}",
        f"{lat.marginal_kl:.2f}",
        f"{w['ess_median']:.0f}",
        _number(w["pareto_k_median"], "{:.2f}"),
        _number(w["pareto_k_share_above_0.7"], "{:.1%}"),
    ]


def _number(value, form: str) -> str:
    return "not fitted" if value is None else form.format(value)


HEADER = ["model", "log p(x)", "active units", "KL per dim: max / median / min", "rate",
          "I(x; z)", "marginal KL", "ESS (median)", "k̂ (median)", "k̂ > 0.7"]  # fmt: skip


def save_rate_distortion(found: dict, path: Path) -> None:
    """Each model at (rate, distortion), with dashed lines of equal ELBO through them; the
    rate split into I(x; z) (filled) and the marginal KL (the rest of the bar below)."""
    import matplotlib.pyplot as plt

    from pyrovae.plots import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, d in found.items():
        lat = d.latents
        ax.plot([lat.rate], [lat.distortion], "o", label=f"{name}: ELBO {lat.elbo:.1f}")
        line = [0, lat.rate + lat.distortion]
        ax.plot(line, line[::-1], ls="--", lw=0.7, color=ax.lines[-1].get_color())
        ax.annotate(f"I(x; z) {lat.mutual_information:.1f}\nmarginal KL {lat.marginal_kl:.1f}",
                    (lat.rate, lat.distortion), xytext=(6, 6), textcoords="offset points",
                    fontsize=8)  # fmt: skip
    rates = [d.latents.rate for d in found.values()]
    dists = [d.latents.distortion for d in found.values()]
    ax.set_xlim(0, max(rates) * 1.6)
    ax.set_ylim(min(dists) - 10, max(dists) + 10)
    ax.set_xlabel("rate: E KL(q(z|x) || p(z)), nats")
    ax.set_ylabel("distortion: -E log p(x|z), nats")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/diagnose")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--vamp-epochs", type=int, default=50)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument(
        "--data-dir", default=str(HERE.parent.parent / "shared/data/binarized_mnist")
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows, found_all = [], {}
    for name, train_cfg, model_cfg in models(args.epochs, args.vamp_epochs, args.data_dir):
        run = Path(args.runs) / name
        done = len(read_metrics(run)) if (run / "config.json").exists() else None
        if done is None or done < train_cfg.epochs:  # new, or resumed where it stopped
            train(train_cfg, model_cfg, run_dir=str(run), resume=done is not None)
        found, _ = diagnose_run(str(run), n=args.n, k=args.k, seed=0)
        (OUT / f"{name}.json").write_text(strict_json(found.to_dict(), indent=1) + "\n")
        rows.append(row(name, found))
        found_all[name] = found
    save_rate_distortion(found_all, OUT / "rate_distortion.png")
    table = markdown_table(rows, HEADER)
    (OUT / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
