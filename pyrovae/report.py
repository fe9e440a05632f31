"""``pyrovae report RUN``: one self-contained HTML page of a run, to open in any browser.

The page holds, with every figure embedded (PNG as data URIs: no network, no other file):
the run's configuration; its training and validation curves; samples and reconstructions;
latent traversals (each of the most informative dimensions swept across its codes' spread,
the others held at one test point's code) and a map of the codes (the 2-D latent itself, or
its first two principal components, coloured by label where the data have labels); the
diagnosis of ``pyrovae diagnose`` (``pyrovae.diagnosis``: the ELBO taken apart, the KL per
dimension and the active units, the weights' effective sample size and Pareto k̂, the
estimate against K and against seconds, AIS's acceptance where it ran); and the inference
gap where ``pyrovae gap`` has written one. A run of a program of the user's own gets what
applies to it, and a line saying what was left out and why.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import program_runs
from .diagnosis import DIAGNOSE, Diagnosis, diagnose_run
from .options import Option, Options
from .runs import _points, load_run
from .runtime import resolve_device
from .training import read_metrics
from .training.rundir import write_text

REPORT = Options.of(
    [o for o in DIAGNOSE if o.name != "out_dir"],
    [Option("output", None, "the HTML file (default RUN_DIR/report.html)")],
)
# Dimensions shown in the latent traversals, and the steps of each sweep.
TRAVERSED, STEPS = 8, 9


def report_run(run_dir: str, *, progress: bool = True, **options: Any) -> Path:
    """Write the run's report (the module's list) and return its path. ``options``: ``REPORT``
    declares them (those of ``diagnose``, and ``output``). The diagnosis's own files go to the
    run's ``figures/`` as ``pyrovae diagnose`` writes them."""
    o = REPORT.bind(options, "report_run")
    given = {k: v for k, v in vars(o).items() if k != "output"}
    found, _ = diagnose_run(run_dir, progress=progress, **given)
    out = Path(o.output) if o.output else Path(run_dir) / "report.html"
    with tempfile.TemporaryDirectory() as tmp:
        sections = _sections(run_dir, SimpleNamespace(**given), found, Path(tmp))
    write_text(out, _page(Path(run_dir).name, sections))
    return out


Section = Tuple[str, str]  # (title, HTML body)


def _sections(run_dir: str, o: Any, found: Diagnosis, tmp: Path) -> List[Section]:
    from .plots import save_training_curves

    metrics = read_metrics(Path(run_dir))
    config = json.loads((Path(run_dir) / "config.json").read_text())
    out: List[Section] = [("Configuration", _config_table(config, found))]
    if metrics:
        curves = _image(tmp, "curves", lambda p: save_training_curves(metrics, p))
        out.append(("Training", curves + _metrics_table(metrics)))
    if program_runs.is_program_run(run_dir):
        out.append(("Samples", _program_samples(run_dir, o, tmp)))
        left = "reconstructions, traversals and the code map need the library's VAE (a decoder)"
        out.append(("Not shown", f"<p>{html.escape(left)}.</p>"))
    else:
        out += _vae_sections(run_dir, o, found, tmp)
    out.append(("Diagnosis", _diagnosis(found, tmp)))
    gap = Path(run_dir) / "figures" / "gap.json"
    if gap.exists():
        out.append(("Inference gap", _gap(gap)))
    return out


def _vae_sections(run_dir: str, o: Any, found: Diagnosis, tmp: Path) -> List[Section]:
    from .plots import save_image_grid, save_reconstructions

    device = resolve_device(o.device)
    vae, data, _ = load_run(run_dir, o.which, o.data_dir, (o.split,), device=device)
    x = _points(data, o.split, o.n or None, o.seed)
    torch.manual_seed(o.seed)
    out: List[Section] = []
    if data.image_shape is not None:
        shape = data.image_shape
        samples = vae.sample(100).cpu()
        title = "100 samples: E[x | z], z ~ p(z)"
        grid = _image(tmp, "samples", lambda p: save_image_grid(samples, shape, p, title=title))
        recon = vae.reconstruct(x[:50]).cpu()
        pairs = _image(tmp, "recon", lambda p: save_reconstructions(x[:50].cpu(), recon, shape, p))
        out.append(("Samples and reconstructions", grid + pairs))
        if found.latents is not None:
            traversal, caption = _traversals(vae, found, shape, tmp)
            out.append(("Latent traversals", f"<p>{html.escape(caption)}</p>" + traversal))
    labels = data.split_labels(o.split) if data.labels is not None else None
    if labels is not None and o.n and o.n < len(labels):
        labels = _points(data, o.split, o.n, o.seed, labels=True)[:, -1].long()
    if found.latents is not None:
        out.append(("Map of the codes", _code_map(found.latents.codes, labels, tmp)))
    return out


def _traversals(vae, found: Diagnosis, shape, tmp: Path) -> Tuple[str, str]:
    """The decoder's mean along each of the (at most ``TRAVERSED``) dimensions of largest KL,
    swept over ±3 standard deviations of the points' codes, the others at the first point's
    code: one row per dimension."""
    from .plots import save_image_grid

    lat = found.latents
    codes = lat.codes
    order = lat.kl_per_dim.nan_to_num(0).argsort(descending=True)[:TRAVERSED].tolist()
    spread = codes.std(0).clamp_min(1e-3) if codes.shape[0] > 1 else torch.ones(codes.shape[1])
    sweep = torch.linspace(-3, 3, STEPS)
    z = codes[0].repeat(len(order) * STEPS, 1)
    for row, u in enumerate(order):
        z[row * STEPS : (row + 1) * STEPS, u] = codes[:, u].mean() + sweep * spread[u]
    param = next(vae.parameters())
    with torch.no_grad():
        images = vae.likelihood.mean(vae.decoder(z.to(param))).cpu()
    title = ""
    caption = (f"Rows: latent dimensions {', '.join(map(str, order))} (largest KL first), each "
               f"swept from -3 to +3 standard deviations of the codes; the others held at one "
               f"test point's code.")  # fmt: skip
    return _image(
        tmp, "traverse", lambda p: save_image_grid(images, shape, p, STEPS, title)
    ), caption


def _code_map(codes: torch.Tensor, labels: Optional[torch.Tensor], tmp: Path) -> str:
    """The codes E_q[z | x] in 2-D: themselves for a 2-D latent, else their first two
    principal components, coloured by label where there are labels."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    centred = codes - codes.mean(0)
    if codes.shape[1] == 2:
        xy, axes = centred, ("z_0", "z_1")
    else:
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ v[:2].T
        share = (s[:2] ** 2).sum() / (s**2).sum()
        axes = ("first principal component", f"second ({100 * share:.0f} % of the variance in two)")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colour = labels.tolist() if labels is not None else None
    points = ax.scatter(xy[:, 0], xy[:, 1], s=4, c=colour, cmap="tab10" if colour else None)
    if colour is not None:
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"{codes.shape[0]} codes E_q[z | x]", fontsize=9)
    return _image(tmp, "map", lambda p: save_figure(fig, p, dpi=100, bbox_inches="tight"))


def _program_samples(run_dir: str, o: Any, tmp: Path) -> str:
    from .plots import save_image_grid, save_scatter

    x, data, title = program_runs.simulated_program(
        run_dir, SimpleNamespace(**{**vars(o), "n": 100})
    )
    if data.image_shape is not None:
        return _image(
            tmp, "samples", lambda p: save_image_grid(x, data.image_shape, p, title=title)
        )
    return _image(tmp, "samples", lambda p: save_scatter(data.test, x, p))


def _diagnosis(found: Diagnosis, tmp: Path) -> str:
    """The diagnosis's figure, its numbers, the estimate against K and against seconds, and
    the warning ``evaluate`` would print."""
    from .plots import save_diagnosis

    iw = found.iw
    figure = _image(tmp, "diagnosis", lambda p: save_diagnosis(found, p))
    rows = found.rows()
    warning = iw.warning()
    said = f'<p class="warn">{html.escape(warning)}</p>' if warning else ""
    curves = _image(tmp, "estimates", lambda p: _save_estimates(found, p))
    return said + figure + _table(rows) + curves


def _save_estimates(found: Diagnosis, path: Path) -> Path:
    """The importance-weighted estimate against seconds (the evaluation's time shared out in
    proportion to K, its cost being linear in K), with AIS's estimate at its own time where it
    ran."""
    import matplotlib.pyplot as plt

    from .plots import save_figure

    w, iw = found.iw.weights, found.iw
    fig, ax = plt.subplots(figsize=(6, 3.6))
    seconds = [iw.seconds * k / iw.k for k in w.ladder]
    ax.plot(seconds, w.curve(), marker="o", ms=3, label=f"importance weighted, K = 1 … {iw.k}")
    if found.ais is not None:
        ais = found.ais
        ax.plot([ais.seconds], [ais.log_px], "s", color="tab:green", label=f"AIS, T = {ais.steps}")
    ax.set_xscale("log")
    ax.set_xlabel("seconds (for the IW curve, K's share of its time)")
    ax.set_ylabel("mean log p̂(x), nats")
    ax.set_title("estimate against time", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def _gap(path: Path) -> str:
    gap = json.loads(path.read_text())
    keys = ("log_px", "elbo_fitted", "elbo_amortized", "approximation_gap", "amortization_gap",
            "inference_gap")  # fmt: skip
    rows = [(k.replace("_", " "), f"{gap[k]:.3f} ± {gap.get(k + '_stderr', math.nan):.3f}")
            for k in keys if k in gap]  # fmt: skip
    png = path.with_suffix(".png")
    image = _embed(png.read_bytes(), "inference gap") if png.exists() else ""
    return f"<p>From <code>{html.escape(str(path))}</code> ({gap.get('n')} points).</p>" + (
        image + _table(rows)
    )


def _config_table(config: Dict[str, Any], found: Diagnosis) -> str:
    """A line of what the run is, and every setting folded away below it."""
    train, model = config.get("train") or {}, config.get("model") or {}
    what = config.get("custom_model") or (
        f"VAE, {model.get('prior')} prior, {model.get('guide')} guide, "
        f"{model.get('likelihood')} likelihood, z of {model.get('z_dim')} dims"
    )
    line = (f"{what}; trained on {train.get('dataset')} with {train.get('estimator')} for "
            f"{train.get('epochs')} epochs; this page: the {found.checkpoint} checkpoint, "
            f"epoch {found.epoch}.")  # fmt: skip
    rows = [(f"{part}: {key}", json.dumps(value))
            for part, fields in (("train", train), ("model", model))
            for key, value in fields.items()]  # fmt: skip
    folded = f"<details><summary>every setting</summary>{_table(rows)}</details>"
    return f"<p>{html.escape(line)}</p>{folded}"


def _metrics_table(metrics: List[Dict[str, Any]]) -> str:
    last = metrics[-1]
    best = max(metrics, key=lambda m: m["valid_elbo"])
    seconds = sum(m.get("train_seconds", 0.0) for m in metrics)
    rows = [
        ("epochs", str(last["epoch"])),
        ("last train / validation ELBO", f"{last['train_elbo']:.3f} / {last['valid_elbo']:.3f}"),
        ("best validation ELBO", f"{best['valid_elbo']:.3f} (epoch {best['epoch']})"),
        ("training time", _duration(seconds)),
    ]
    if "valid_error" in last:
        rows.append(("validation classification error", f"{last['valid_error']:.2f} %"))
    return _table(rows)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _table(rows: List[Tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _image(tmp: Path, name: str, draw: Callable[[Path], Path]) -> str:
    """A figure drawn by ``draw(path)`` into ``tmp``, embedded as a data URI."""
    return _embed(draw(tmp / f"{name}.png").read_bytes(), name)


def _embed(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; } img { max-width: 100%; display: block; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th { text-align: left; font-weight: normal; color: #555; padding: 2px 1.5em 2px 0; }
td { font-family: ui-monospace, monospace; } .warn { color: #a00; font-weight: bold; }
"""


def _page(name: str, sections: List[Section]) -> str:
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, (t, _) in zip(anchors, sections))
    body = "".join(
        f'<section id="{a}"><h2>{html.escape(t)}</h2>{content}</section>'
        for a, (t, content) in zip(anchors, sections)
    )
    title = f"pyrovae report: {html.escape(name)}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1><nav>{nav}</nav>{body}"
            "</body></html>\n")  # fmt: skip
