"""``pyrovae diagnose RUN``: what a trained VAE is doing, at a glance.

On a split (or a seeded subset of it), one command gathers:

- the latent diagnostics (``pyrovae.evaluation.latents``): the ELBO taken apart into
  distortion, mutual information and marginal KL, the KL of each dimension, the active units
  and whether the posterior has collapsed;
- what the importance weights say of the K-sample log p(x) (``pyrovae.evaluation.weights``):
  the effective sample size, each point's Pareto k̂, the estimate against K on one set of
  draws, and the warning ``evaluate`` would print;
- with ``ais_steps`` > 0, AIS from the prior beside it, with its HMC acceptance rate at each
  stage of the schedule (``pyrovae.evaluation.ais``);
- with ``bdmc_steps`` > 0, the BDMC sandwich on ``BDMC_POINTS`` points simulated from the
  model: how wide it is says how far AIS with that many steps is from log p(x) there.

It writes ``diagnose.json`` and ``diagnose.png`` (``pyrovae.plots.save_diagnosis``) to the
run's ``figures/`` (or ``out_dir``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import pyro
import torch

from . import program_runs
from .config import Rule
from .data import SPLITS
from .evaluation import estimate_log_likelihood
from .evaluation.ais import ais_log_likelihood, bdmc
from .evaluation.latents import LatentDiagnostics, NotOneLatent, latent_diagnostics
from .evaluation.weights import weight_rows
from .options import Option, Options
from .producers import make_producer
from .runs import DATA_DIR, DEVICE, OUT_DIR, SEED, WHICH, _points, load_run, output_dir
from .runtime import resolve_device
from .training.checkpoint import epoch_of
from .training.rundir import write_text

# Points BDMC simulates (its sandwich is measured on the model's own data, not the split's).
BDMC_POINTS = 100
DIAGNOSE = Options(
    Option("split", "test", "the data diagnosed", choices=SPLITS),
    Option("n", 1000, "a seeded random subset of this many points (the mutual information "
           "is at most log n); 0: the whole split", Rule("int", minimum=0)),
    Option("k", 1000, "importance samples per point for the weights' diagnostics",
           Rule("int", minimum=1)),
    Option("samples", 4, "draws of z per point for the latent diagnostics",
           Rule("int", minimum=1)),
    Option("ais_steps", 0, "also run AIS from the prior with this many distributions and "
           "report its acceptance rate along the schedule (0: no AIS)", Rule("int", minimum=0)),
    Option("ais_chains", 8, "AIS (and BDMC) chains per point", Rule("int", minimum=1)),
    Option("bdmc_steps", 0, f"also bracket log p(x) by BDMC with this many distributions on "
           f"{BDMC_POINTS} points simulated from the model and report the sandwich's width "
           "(0: no BDMC)", Rule("int", minimum=0)),
    SEED.but(help="seeds the subset and every draw"),
    WHICH,
    DATA_DIR,
    DEVICE,
    OUT_DIR,
)  # fmt: skip


@dataclasses.dataclass
class Diagnosis:
    """Everything ``diagnose_run`` found (see the module): ``latents`` (None where the
    program has not one continuous latent of each point, with ``latents_skipped`` saying
    why), the importance-weighted estimate ``iw`` (a ``LogLikelihood`` with its
    ``weights``), and ``ais`` (an ``AISResult`` with ``acceptance_by_stage``) and ``bdmc`` (a
    ``BDMCResult``) where they ran."""

    run_dir: str
    checkpoint: str
    epoch: int
    split: str
    n: int
    latents: Optional[LatentDiagnostics]
    iw: Any
    ais: Optional[Any]
    seconds: float
    bdmc: Optional[Any] = None
    latents_skipped: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The diagnosis as ``diagnose.json`` holds it (standard JSON types)."""
        out: Dict[str, Any] = {
            "run_dir": self.run_dir,
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "split": self.split,
            "n": self.n,
            "latents": None if self.latents is None else self.latents.to_dict(),
            "iw": self.iw.to_dict(),
            "seconds": self.seconds,
        }
        if self.latents_skipped:
            out["latents_skipped"] = self.latents_skipped
        if self.ais is not None:
            out["ais"] = self.ais.to_dict()
        if self.bdmc is not None:
            out["bdmc"] = self.bdmc.to_dict()
        return out

    def rows(self) -> List[Tuple[str, str]]:
        """The diagnosis as (name, value) rows, for the command's table and the report."""
        iw = self.iw
        rows = [("split, points", f"{self.split}, {self.n}")] + _latent_rows(
            self.latents, self.latents_skipped
        )
        rows += [(f"log p(x), K={iw.k}", f"{iw.log_px:.3f} ± {iw.log_px_stderr:.3f}")]
        rows += weight_rows(iw.weights)
        if self.ais is not None:
            a, stages = self.ais, self.ais.acceptance_by_stage
            rows.append((f"AIS, T={a.steps}", f"{a.log_px:.3f} ± {a.log_px_stderr:.3f}; "
                         f"acceptance {stages[0]:.2f} at the start, {min(stages):.2f} at its "
                         f"lowest, {stages[-1]:.2f} at the end"))  # fmt: skip
        if self.bdmc is not None:
            b = self.bdmc
            width = f"{b.width:.3f} ± {b.width_stderr:.3f} ({b.lower:.3f} to {b.upper:.3f})"
            rows.append((f"BDMC, T={b.steps}, {b.n} simulated points", f"sandwich width {width}"))
        return rows + [("wall time", f"{self.seconds:.1f} s")]


def _latent_rows(lat: Optional[LatentDiagnostics], skipped: Optional[str]) -> List[Tuple[str, str]]:
    if lat is None:
        return [("latent diagnostics", f"not applicable: {skipped}")]
    return [
        ("ELBO", f"{lat.elbo:.3f} = -distortion {lat.distortion:.3f} - rate {lat.rate:.3f}"),
        ("mutual information I(x; z)", f"{lat.mutual_information:.3f} (at most log n = "
         f"{math.log(lat.n):.3f})"),
        ("marginal KL(q(z) || p(z))", f"{lat.marginal_kl:.3f}"),
        ("active units", f"{lat.active} of {lat.activity.numel()}"
         + ("  (posterior collapse: no unit moves with the data)" if lat.collapsed else "")),
        ("KL per dimension", f"{_spread(lat.kl_per_dim)} ({lat.kl_per_dim_method})"),
    ]  # fmt: skip


def _spread(values) -> str:
    """Per-dimension values in a few words: their largest, median and smallest."""
    v = values[~values.isnan()]
    if v.numel() == 0:
        return "unavailable"
    return f"largest {v.max():.3f}, median {v.median():.3f}, smallest {v.min():.3f}"


def diagnose_run(
    run_dir: str, *, progress: bool = True, **options: Any
) -> Tuple[Diagnosis, Dict[str, Path]]:
    """The diagnosis of a run (the module's list) on ``n`` seeded points of ``split``; writes
    ``diagnose.json`` and ``diagnose.png``. ``options``: ``DIAGNOSE`` declares them. Returns
    the ``Diagnosis`` and the paths written."""
    o = DIAGNOSE.bind(options, "diagnose_run")
    o = SimpleNamespace(**{**vars(o), "n": o.n or None, "device": resolve_device(o.device)})
    subject, producer, x, state = _subject(run_dir, o)
    out = output_dir(run_dir, o.out_dir)
    start = time.perf_counter()
    pyro.set_rng_seed(o.seed)
    latents, skipped = None, None
    try:
        latents = latent_diagnostics(subject, x, o.samples)
    except NotOneLatent as e:  # the weights' diagnostics still apply
        skipped = str(e)
    iw = estimate_log_likelihood(
        None, None, x, o.k, producer=producer, progress=progress, seed=o.seed
    )
    ais = None
    if o.ais_steps:
        ais = ais_log_likelihood(
            producer, x, o.ais_steps, o.ais_chains, init="prior", progress=progress
        )
    sandwich = None
    if o.bdmc_steps:
        like = x[:1].expand(BDMC_POINTS, *x.shape[1:])
        sandwich = bdmc(producer, like, o.bdmc_steps, o.ais_chains, k=o.k, progress=progress)
    found = Diagnosis(
        str(run_dir),
        state["checkpoint"],
        epoch_of(state),
        o.split,
        x.shape[0],
        latents,
        iw,
        ais,
        time.perf_counter() - start,
        sandwich,
        skipped,
    )
    return found, _write(out, found)


def _subject(run_dir: str, o: Any) -> Tuple[Any, Any, torch.Tensor, Dict[str, Any]]:
    """(what the latent diagnostics look at, the producer of its log weights, the points,
    the checkpoint dict) of a run: the library's VAE (its direct producer where it has one)
    or a program of the user's own (traced)."""
    if program_runs.is_program_run(run_dir):
        producer, x, state = program_runs.program_points(run_dir, o)
        return producer, producer, x, state
    vae, data, state = load_run(run_dir, o.which, o.data_dir, (o.split,), device=o.device)
    x = _points(data, o.split, o.n, o.seed)
    vae.likelihood.check_data(x)
    return vae, make_producer(vae, "auto"), x, state


def _write(out: Path, found: Diagnosis) -> Dict[str, Path]:
    from .plots import save_diagnosis
    from .runs import strict_json

    paths = {"json": out / "diagnose.json"}
    write_text(paths["json"], strict_json(found.to_dict(), indent=1))
    name, n = Path(found.run_dir).name, found.n
    title = f"{name}, epoch {found.epoch}: {n} {found.split} points, K = {found.iw.k}"
    paths["plot"] = save_diagnosis(found, out / "diagnose.png", title)
    return paths
