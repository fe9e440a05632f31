"""The ``pyrovae`` command line: a thin layer over ``pyrovae.training`` and ``pyrovae.runs``.

pyrovae train --dataset binarized-mnist --data-dir DIR --epochs 100
pyrovae evaluate RUN_DIR --k 5000 [--json]
pyrovae sample RUN_DIR
pyrovae gradvar RUN_DIR [--estimators pathwise,stl,iwae:num_particles=10] [--draws 100]

Every command that computes takes ``--device auto|cpu|cuda|cuda:N``.

``train`` and ``evaluate`` also run as several processes under torchrun
(``torchrun --nproc-per-node N -m pyrovae train ...``, ``pyrovae.distributed``): process 0
prints and writes, the others stay quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import __version__, launch
from .config import Rule, check_values, flag_name
from .files import read_bytes
from .options import Option, Options, config_options
from .threads import apply_threads, prepare_runtime, stop_sharing


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except where it has none (``None``): there the help text
    says what applies (the config file's value, else the library's default)."""

    def _get_help_string(self, action):
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, naming ``--help``, not the whole usage (``train``'s is 25
    lines, which bury the error)."""

    def error(self, message: str):
        # The same argv gives every process torchrun started the same error: process 0 says it.
        line = f"{self.prog}: error: {message} (see {self.prog} --help)\n"
        self.exit(2, line if launch.rank() == 0 else None)


def train_options() -> Options:
    """``pyrovae train``'s flags: each field of ``TrainConfig`` and ``VAEConfig`` declared
    with a help text, the shorthands for a part's option, and the run's own."""
    from .model import VAEConfig
    from .runs import DEVICE
    from .training import TrainConfig

    data, model, optim = _groups(config_options(TrainConfig) + config_options(VAEConfig))
    run = [o.but(group="run") for o in (DEVICE, THREADS, QUIET)]
    shorthands = [BINARIZE], [SIGMA_SHORTHAND], [BASELINE, ENGINE]
    return Options.of(
        data, shorthands[0], model, shorthands[1], optim, shorthands[2], RUN_OPTIONS, run
    )


def _groups(options: List[Option]) -> Tuple[List[Option], ...]:
    """The train options of the data, the model and the optimisation, in that order."""
    return tuple([o for o in options if o.group == g] for g in ("data", "model", "optimisation"))


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE with the chosen estimator and Adam. Each step takes the "
        "particles of a minibatch (log p(x,z), log q(z|x), ... per sample of z and data point) "
        "from the VAE's parts (direct producer) or from Pyro traces of its model and guide "
        "(traced producer), applies the estimator and steps a fused Adam. Writes config.json, "
        "metrics.jsonl and checkpoints/{last,best}.pt to the run directory. Options left out "
        'take the values of --config (a JSON file {"train": {...}, "model": {...}}), else the '
        "defaults. Under torchrun (torchrun --nproc-per-node N -m pyrovae train ...) the run is "
        "split across the N processes: each computes its part of every global batch, and the "
        "gradients are summed before each step.",
        formatter_class=_Defaults,
    )
    train_options().add_to(p)


# The command line's own options, beside each command's (``pyrovae.runs``).
JSON = Option("json", False, "print one JSON object on stdout")
QUIET = Option("quiet", False, "no progress bar")
# Shorthands of ``pyrovae train`` for one option of a part (given both ways, they must agree).
BINARIZE = Option(
    "binarize", None, "binarize grayscale data (mnist, fashion-mnist)",
    choices=("dynamic", "static"), group="data",
)  # fmt: skip
SIGMA_SHORTHAND = Option(
    "sigma", None, "(initial) std of a Gaussian likelihood", Rule("number", optional=True),
    group="model",
)  # fmt: skip
BASELINE = Option(
    "baseline", None, "score-function baseline (default decaying-average)",
    choices=("none", "decaying-average", "neural"), group="optimisation",
)  # fmt: skip
# pyrovae 0.1.0's name for the producer, still read.
ENGINE = Option(
    "engine", None, argparse.SUPPRESS, choices=("auto", "fast", "pyro"), group="optimisation"
)
RUN_OPTIONS = [
    Option("config", None, 'JSON file with {"train": {...}, "model": {...}}', group="run"),
    Option("run_dir", None, "output directory (default runs/<dataset>-<estimator>-<time>)",
           group="run"),
    Option("resume", False, "continue the run in --run-dir from its last checkpoint",
           group="run"),
    Option("tensorboard", False, "also write each epoch's curves (and samples, for the VAE "
           "on images) to RUN_DIR/tensorboard, for tensorboard --logdir RUN_DIR/tensorboard "
           "(needs pip install tensorboard)", group="run"),
]  # fmt: skip
THREADS = Option(
    "threads", None,
    "CPU threads to compute on (default: $OMP_NUM_THREADS, else the cores this process may run "
    "on, one fewer for each core that other work keeps busy). Waiting threads spin briefly, "
    "then sleep (GOMP_SPINCOUNT=3000) unless you set OMP_WAIT_POLICY or GOMP_SPINCOUNT",
    Rule("int", minimum=1, optional=True), metavar="N",
)  # fmt: skip


def _run_parser(sub, name: str, options, output: bool = True, **texts: str) -> None:
    """The parser of a command on a run directory: RUN_DIR, its options (``pyrovae.runs``),
    ``--threads``, and with ``output`` ``--json`` and ``--quiet``; ``texts``: its help and
    description."""
    p = sub.add_parser(name, formatter_class=_Defaults, **texts)
    p.add_argument("run_dir", metavar="RUN_DIR")
    options.add_to(p)
    for option in (JSON, THREADS, QUIET) if output else (THREADS,):
        option.add_to(p)


def _run_parsers(sub) -> None:
    """The commands on a run directory."""
    from .runs import BDMC, EVALUATE, GAP, GRADVAR, SAMPLE

    _run_parser(
        sub,
        "evaluate",
        EVALUATE,
        help="importance-weighted log p(x) of a trained run",
        description="Estimate log p(x) per data point with K importance samples from the "
        "guide, log (1/K) sum_k p(x,z_k)/q(z_k|x), averaged over a split, with its standard "
        "error, next to the ELBO (and the exact log p(x) for linear-Gaussian models); for 8-bit "
        "images (cifar10, grayscale mnist) also in bits per dimension.",
    )
    _run_parser(
        sub,
        "sample",
        SAMPLE,
        output=False,
        help="figures of a trained run: samples, reconstructions, training curves",
    )
    _run_parser(
        sub,
        "gradvar",
        GRADVAR,
        help="gradient variance and signal-to-noise of each estimator at a checkpoint",
        description="At the checkpoint's parameters, draw N independent gradient estimates "
        "per estimator on one fixed minibatch and report, for the encoder (inference network) "
        "and the decoder (generative network), the total gradient variance, the mean "
        "signal-to-noise ratio |E g| / std g, and the wall time per estimate; writes "
        "gradvar.json and gradvar.png. Each estimate is what a training step computes, through "
        "the producer the run was trained with. Baselines adapt for --warmup steps on random "
        "minibatches first and are then held fixed, so the estimates are independent.",
    )
    _run_parser(
        sub,
        "gap",
        GAP,
        help="the inference gap of a trained run, split into approximation and amortization",
        description="For n test points: log p(x) - ELBO of the amortized guide q, split into "
        "the approximation gap log p(x) - ELBO(q*) and the amortization gap ELBO(q*) - ELBO(q), "
        "where q* is the guide's family fitted to each point alone (Adam on its parameters, "
        "from the encoder's output; Cremer, Li & Duvenaud, 2018). The ELBOs average K log "
        "weights; log p(x) is the importance-weighted estimate with K samples from q* (exact "
        "for a linear-Gaussian model). Writes gap.json and gap.png.",
    )
    _run_parser(
        sub,
        "bdmc",
        BDMC,
        help="bidirectional Monte Carlo: a sandwich around log p(x) on simulated data",
        description="Simulate N points (x, z) from the run's model; bracket each log p(x) "
        "between forward AIS from the prior (a stochastic lower bound) and reverse AIS from z, "
        "an exact posterior sample (a stochastic upper bound), beside the importance-weighted "
        "estimate with K samples (Grosse, Ghahramani & Adams, 2015). Reads no data.",
    )


def _look_parsers(sub) -> None:
    """The commands that look at what a trained run is doing."""
    from .diagnosis import DIAGNOSE
    from .report import REPORT

    _run_parser(
        sub,
        "diagnose",
        DIAGNOSE,
        help="what a trained run's code carries and whether its log p(x) can be trusted",
        description="On n seeded points of a split: the ELBO taken apart (distortion, rate = "
        "mutual information I(x; z) + marginal KL(q(z) || p(z)), Hoffman & Johnson 2016), the "
        "KL of each latent dimension and the active units (Cov_x E[z_u | x] > 0.01, Burda et "
        "al. 2015), and, of the K-sample importance-weighted log p(x), each point's effective "
        "sample size, Pareto k-hat (above 0.7: not to be trusted) and the estimate against K; "
        "with --ais-steps, AIS's acceptance along its schedule. Writes diagnose.json and "
        "diagnose.png.",
    )
    _run_parser(
        sub,
        "report",
        REPORT,
        help="one self-contained HTML page of a run, to open in a browser",
        description="Writes RUN_DIR/report.html (or --output): the configuration, training "
        "curves, samples, reconstructions, latent traversals, a map of the codes, the "
        "diagnosis of pyrovae diagnose (with its options) and the inference gap where pyrovae "
        "gap has run; every figure embedded, so the file opens anywhere without a network.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyrovae", description="Variational auto-encoders in Pyro: train, evaluate, sample."
    )
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    _train_parser(sub)
    _run_parsers(sub)
    _look_parsers(sub)
    return parser


# A config file is a few hundred bytes; anything this big is not one.
_MAX_CONFIG_BYTES = 1 << 20


def _read_config_file(path: str) -> Dict[str, Dict[str, Any]]:
    """The sections of a ``--config`` file, each checked to be an object of options."""
    fix = "give --config a pyrovae config file (JSON)"
    try:
        # /dev/zero, a FIFO, a directory, a huge file: never read (pyrovae.files).
        cfg = json.loads(read_bytes(Path(path), "a config file", _MAX_CONFIG_BYTES, fix))
    except FileNotFoundError:
        raise ValueError(f"--config {path} does not exist; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"--config {path} is not valid JSON (nested too deeply)") from None
    if not isinstance(cfg, dict):
        raise ValueError(
            f'--config {path} must hold an object {{"train": {{...}}, "model": {{...}}}}, '
            f"got {type(cfg).__name__}"
        )
    unknown = sorted(set(cfg) - {"train", "model"})
    if unknown:
        raise ValueError(f'--config {path}: unknown section(s) {unknown}; use "train" and "model"')
    for section, value in cfg.items():
        if not isinstance(value, dict):
            raise ValueError(
                f"--config {path}: {section} must be an object of options, got {value!r}"
            )
    return cfg


def _given_options(args) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The (training, model) options the user gave, from ``--config`` and the flags (which
    win), each value checked where it was given, so an error names the flag or the file's
    key. Options left out are absent: the defaults, or a resumed run's saved values, apply."""
    for flag, value in (("--config", args.config), ("--data-dir", args.data_dir)):
        if value is not None and not value.strip():
            raise ValueError(f"{flag} is empty (an unset shell variable?): give a path")
    _check_repeated_keys(args)
    train_d, model_d = _config_file_options(args.config) if args.config else ({}, {})
    _train_flags(args, train_d)
    _model_flags(args, model_d)
    return train_d, model_d


def _check_repeated_keys(args) -> None:
    """A KEY=VALUE flag may repeat a key only with the same value."""
    for flag, pairs in (
        ("--dataset-option", args.dataset_options),
        ("--estimator-option", args.estimator_options),
        ("--prior-option", args.prior_options),
        ("--guide-option", args.guide_options),
        ("--likelihood-option", args.likelihood_options),
    ):
        seen: Dict[str, Any] = {}
        for key, value in pairs:
            if key in seen and seen[key] != value:
                raise ValueError(
                    f"{flag} {key} is given twice, as {seen[key]!r} and as {value!r}: give it once"
                )
            seen[key] = value


def _config_file_options(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The (training, model) options of a ``--config`` file, each section checked whole
    (unknown keys too) with the file's key names; 0.1.0's ``train.engine`` read as the
    producer."""
    from .model import VAEConfig
    from .parts.likelihoods import SIGMA
    from .training import TrainConfig
    from .training.config import ENGINE_TO_PRODUCER

    cfg = _read_config_file(path)
    out: Tuple[Dict[str, Any], Dict[str, Any]] = ({}, {})
    for section, cls, into in (("train", TrainConfig, out[0]), ("model", VAEConfig, out[1])):
        given = dict(cfg.get(section, {}))
        if section == "train" and "engine" in given:  # 0.1.0's name
            engine = given.pop("engine")
            if engine not in ENGINE_TO_PRODUCER:
                raise ValueError(f"--config {path}: unknown train.engine {engine!r}")
            given.setdefault("producer", ENGINE_TO_PRODUCER[engine])
        where = f"--config {path}: {section}"
        cls.from_dict(given, name=lambda k, where=where: f"{where}.{k}")
        sigma = given.get("likelihood_options", {}).get("sigma") if section == "model" else None
        if sigma is not None:
            SIGMA.check(f"{where}.likelihood_options.sigma", sigma)
        into.update(given)
    return out


def _train_flags(args, train_d: Dict[str, Any]) -> None:
    """The training flags given, checked and merged over ``train_d`` (a config file's):
    the plain ones, the old ``--engine``, the data directory and the part options with their
    shorthands (``--binarize``, ``--baseline``)."""
    from .training import TrainConfig
    from .training.config import ENGINE_TO_PRODUCER

    flags = _plain_flags(args, TrainConfig, skip=("data_dir",))
    if args.engine is not None:
        producer = ENGINE_TO_PRODUCER[args.engine]
        if args.producer is not None and args.producer != producer:
            raise ValueError(
                f"--engine {args.engine} (the old name of --producer {producer}) contradicts "
                f"--producer {args.producer}: give --producer alone"
            )
        print(
            f"pyrovae train: --engine is now --producer; --engine {args.engine} is "
            f"--producer {producer}",
            file=sys.stderr,
        )
        train_d.pop("engine", None)
        flags.setdefault("producer", producer)
    train_d.update(check_values(TrainConfig, flags, flag_name))
    if args.data_dir is not None:
        train_d["data_dir"] = str(Path(args.data_dir).resolve())
    options = {**train_d.get("dataset_options", {}), **dict(args.dataset_options)}
    if args.binarize:
        options["binarize"] = args.binarize
    if options:
        train_d["dataset_options"] = options
    given = dict(args.estimator_options)
    _check_shorthand("--baseline", args.baseline, "--estimator-option", given, "baseline")
    estimator_options = {**train_d.get("estimator_options", {}), **given}
    if args.baseline:
        estimator_options["baseline"] = args.baseline
    if estimator_options:
        train_d["estimator_options"] = estimator_options


def _model_flags(args, model_d: Dict[str, Any]) -> None:
    """The model flags given, checked and merged over ``model_d`` (a config file's): the
    plain ones and the part options, with ``--sigma`` for the likelihood's."""
    from .model import VAEConfig
    from .parts.likelihoods import SIGMA

    model_d.update(check_values(VAEConfig, _plain_flags(args, VAEConfig), flag_name))
    for key, pairs in (
        ("prior_options", args.prior_options),
        ("guide_options", args.guide_options),
        ("likelihood_options", args.likelihood_options),
    ):
        if pairs:
            model_d[key] = {**model_d.get(key, {}), **dict(pairs)}
    if args.sigma is not None:
        given = dict(args.likelihood_options)
        _check_shorthand("--sigma", args.sigma, "--likelihood-option", given, "sigma")
        sigma = SIGMA.check("--sigma", args.sigma)
        model_d["likelihood_options"] = {**model_d.get("likelihood_options", {}), "sigma": sigma}


def _plain_flags(args, cls, skip: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The flags of ``cls``'s fields (not the KEY=VALUE ones, nor ``skip``) that were given."""
    return {
        o.name: getattr(args, o.name)
        for o in config_options(cls)
        if o.rule.kind != "dict" and o.name not in skip and getattr(args, o.name) is not None
    }


def _check_shorthand(flag: str, value: Any, option_flag: str, given: Dict, key: str) -> None:
    """Refuse a flag that is a shorthand for an option (``--baseline`` for ``--estimator-option
    baseline=``, ``--sigma`` for ``--likelihood-option sigma=``) given with another value than
    that option: neither may win silently."""
    if value is not None and key in given and given[key] != value:
        raise ValueError(
            f"{flag} {value} contradicts {option_flag} {key}={given[key]}: give one of them"
        )


def _cmd_train(args) -> int:
    from .model import VAEConfig
    from .plots import summary_table
    from .training import TrainConfig, train

    with _said_by_process_0():
        train_d, model_d = _given_options(args)
        if args.resume:
            if not args.run_dir:
                raise ValueError("--resume needs --run-dir, the run to continue")
            train_cfg, model_cfg, changes = TrainConfig(), None, {**train_d, **model_d}
        else:
            # A program of the user's own (--model) takes no VAE options unless some are given
            # (which train refuses, naming them).
            vae = VAEConfig(**model_d) if model_d or "model" not in train_d else None
            train_cfg, model_cfg, changes = TrainConfig(**train_d), vae, None
    t0 = time.perf_counter()
    result = train(
        train_cfg,
        model_cfg,
        run_dir=args.run_dir,
        resume=changes if args.resume else False,
        progress=not args.quiet,
        device=args.device,
        tensorboard=args.tensorboard,
    )
    if launch.rank() > 0:
        return 0  # process 0 reports
    last = result.metrics[-1] if result.metrics else {}
    rows = [
        ("run directory", str(result.run_dir)),
        ("epochs", str(last.get("epoch", 0))),
        ("train ELBO (last epoch)", f"{last.get('train_elbo', float('nan')):.3f} nats"),
        ("valid ELBO (last epoch)", f"{last.get('valid_elbo', float('nan')):.3f} nats"),
        ("best valid ELBO", f"{result.best_valid_elbo:.3f} nats"),
        ("particles from", f"the {result.producer} producer, on {_where(result)}"),
        ("seconds per epoch", f"{result.seconds_per_epoch:.2f} (training only)"),
        ("wall time", f"{time.perf_counter() - t0:.1f} s"),
        ("next", f"pyrovae evaluate {result.run_dir}"),
    ]
    rows.insert(-1, _threads_row(args))
    if "valid_error" in last:  # a program that classifies (M2)
        rows.insert(5, ("valid error (last epoch)", f"{last['valid_error']:.2f}% misclassified"))
    print("training finished\n" + summary_table(rows))
    return 0


def _where(result) -> str:
    if result.processes > 1:
        return f"{result.processes} processes on {result.device.type}"
    return str(result.device)


def _cmd_evaluate(args) -> int:
    from .evaluation.weights import weight_rows
    from .plots import summary_table
    from .runs import EVALUATE, evaluate_run

    options = EVALUATE.from_args(args)
    with _said_by_process_0():
        EVALUATE.checked(options)  # named by their flags
    res = evaluate_run(args.run_dir, progress=not args.quiet, **options)
    if launch.rank() > 0:
        return 0  # process 0 reports
    _warn(getattr(res, "warning", lambda: None)())
    if args.json:
        out = {"run_dir": str(args.run_dir), "split": args.split, **res.to_dict()}
        print(_json(out, args))
        return 0
    if args.method == "ais":
        rows = [
            ("run / checkpoint", f"{args.run_dir} ({res.checkpoint})"),
            ("split, points", f"{args.split}, {res.n}"),
            (
                f"log p(x), AIS T={res.steps}, {res.chains} chains",
                f"{res.log_px:.3f} ± {res.log_px_stderr:.3f} nats",
            ),
            *_bits_rows(res),
            *_exact_rows(res),
            *_global_rows(res),
            ("Monte Carlo error per point", f"{res.mc_stderr:.3f} nats (mean over points)"),
            ("annealed from", _annealed_from(res)),
            ("HMC acceptance", f"{res.acceptance:.2f}"),
            ("log densities from", f"the {res.producer} producer"),
            *_time_rows(res),
        ]
        print(
            "evaluation (± is the standard error over data points)\n"
            + summary_table(rows + [_threads_row(args)])
        )
        return 0
    rows = [
        ("run / checkpoint", f"{args.run_dir} ({res.checkpoint})"),
        ("split, points", f"{args.split}, {res.n}"),
        (f"log p(x), K={res.k}", f"{res.log_px:.3f} ± {res.log_px_stderr:.3f} nats"),
        *_bits_rows(res),
        ("ELBO", f"{res.elbo:.3f} ± {res.elbo_stderr:.3f} nats"),
    ]
    rows += _exact_rows(res) + _global_rows(res) + weight_rows(getattr(res, "weights", None))
    if res.refine_steps:
        rows.append(("proposal", f"q refined by {res.refine_steps} Adam steps per point"))
    rows.append(("particles from", f"the {res.producer} producer"))
    rows += _time_rows(res)
    rows.append(_threads_row(args))
    print("evaluation (± is the standard error over data points)\n" + summary_table(rows))
    return 0


def _time_rows(res) -> List[Tuple[str, str]]:
    """The wall time, and the points an interrupted run of the same evaluation saved."""
    rows = [("wall time", f"{res.seconds:.1f} s")]
    if res.resumed_points:
        rows[0] = ("wall time", f"{res.seconds:.1f} s (this run)")
        rows.append(("resumed", f"{res.resumed_points} of {res.n} points from an earlier run"))
    return rows


def _annealed_from(res) -> str:
    """Where AIS's chains started (the prior, the guide, or the guide refined by
    ``--refine``), and how they moved."""
    start = f"the {res.init}"
    if res.refine_steps:
        start = f"the guide refined by {res.refine_steps} Adam steps per point"
    return f"{start}; {res.leapfrog} leapfrog steps per transition"


def _exact_rows(res) -> List[Tuple[str, str]]:
    """The summary row of the exact log p(x), where the model has one (linear-Gaussian)."""
    if res.exact_log_px is None:
        return []
    value = f"{res.exact_log_px:.3f} ± {res.exact_log_px_stderr:.3f}"
    return [("exact log p(x)", value + " nats (closed form, linear-Gaussian model)")]


def _global_rows(res) -> List[Tuple[str, str]]:
    """What log p(x) means for a program with global latents (held at the guide's draws)."""
    if not res.global_latents:
        return []
    what = "log p(x) = log E_q(θ)[p(x | θ)], the predictive density under the guide's q(θ)"
    return [(f"global latents {', '.join(res.global_latents)}", what)]


def _bits_rows(res) -> List[Tuple[str, str]]:
    """The summary row of log p(x) in bits per dimension, where the evaluation has it."""
    if res.bits_per_dim is None:
        return []
    return [("in bits/dim", f"{res.bits_per_dim:.4f} ± {res.bits_per_dim_stderr:.4f}")]


def _cmd_sample(args) -> int:
    from .plots import summary_table
    from .runs import SAMPLE, sample_run

    options = SAMPLE.from_args(args)
    SAMPLE.checked(options)
    paths = sample_run(args.run_dir, **options)
    print("figures written\n" + summary_table([(k, str(v)) for k, v in paths.items()]))
    return 0


def _cmd_gradvar(args) -> int:
    from .plots import markdown_table
    from .runs import GRADVAR, gradvar_run

    options = GRADVAR.from_args(args)
    GRADVAR.checked(options)
    # Specs are comma-separated, and so are an estimator's options: "iwae:a=1;b=2".
    if args.estimators:
        options["estimators"] = [s.replace(";", ",") for s in args.estimators.split(",")]
    stats, paths = gradvar_run(args.run_dir, progress=not args.quiet, **options)
    if args.json:
        out = {"run_dir": str(args.run_dir), "estimators": [s.to_dict() for s in stats]}
        print(_json(out, args))
        return 0
    table = markdown_table(
        [
            (
                s.estimator,
                f"{s.encoder_variance:.4g}",
                f"{s.decoder_variance:.4g}",
                f"{s.encoder_snr:.3f}",
                f"{s.decoder_snr:.3f}",
                f"{1e3 * s.seconds_per_estimate:.1f}",
            )
            for s in stats
        ],
        [
            "estimator",
            "encoder total var",
            "decoder total var",
            "encoder mean SNR",
            "decoder mean SNR",
            "ms per estimate",
        ],
    )
    route = stats[0].producer if stats else args.producer or "the run's"
    batch = stats[0].batch_size if stats else args.batch_size
    used = json.loads(paths["json"].read_text()).get("checkpoint", args.which)
    print(
        f"gradient noise at {args.run_dir} ({used}), {args.draws} draws on one "
        f"minibatch of {batch}, particles from the {route} producer; threads: "
        f"{args.threads_used.describe()}\n{table}"
    )
    _print_files(paths)
    return 0


def _cmd_gap(args) -> int:
    from .plots import summary_table
    from .runs import GAP, gap_run

    options = GAP.from_args(args)
    GAP.checked(options)
    res, paths = gap_run(args.run_dir, progress=not args.quiet, **options)
    if args.json:
        print(_json({"run_dir": str(args.run_dir), "split": args.split, **res.to_dict()}, args))
        return 0

    def nats(name: str) -> str:
        return f"{getattr(res, name):.3f} ± {getattr(res, name + '_stderr'):.3f}"

    rows = [
        ("run / checkpoint", f"{args.run_dir} ({res.checkpoint})"),
        ("split, points", f"{args.split}, {res.n}"),
        ("log p(x)", f"{nats('log_px')} ({res.log_px_source})"),
        (f"log p(x), K={res.k}, fitted q*", nats("log_px_fitted")),
        (f"log p(x), K={res.k}, amortized q", nats("log_px_amortized")),
        *([("log p(x), AIS", nats("log_px_ais"))] if res.log_px_ais is not None else []),
        ("ELBO, fitted q*", nats("elbo_fitted")),
        ("ELBO, amortized q", nats("elbo_amortized")),
        ("approximation gap", f"{nats('approximation_gap')}  log p(x) - ELBO(q*)"),
        ("amortization gap", f"{nats('amortization_gap')}  ELBO(q*) - ELBO(q)"),
        ("inference gap", f"{nats('inference_gap')}  log p(x) - ELBO(q)"),
        ("q* fit", f"{res.steps} Adam steps, lr {res.lr:g}, {res.samples} particles per step"),
        ("wall time", f"{res.seconds:.1f} s"),
        _threads_row(args),
    ]
    print("inference gap, nats per point (± is the standard error over points)")
    print(summary_table(rows))
    _print_files(paths)
    return 0


def _cmd_diagnose(args) -> int:
    from .diagnosis import DIAGNOSE, diagnose_run
    from .plots import summary_table

    options = DIAGNOSE.from_args(args)
    DIAGNOSE.checked(options)
    found, paths = diagnose_run(args.run_dir, progress=not args.quiet, **options)
    _warn(found.iw.warning())
    if args.json:
        print(_json(found.to_dict(), args))
        return 0
    where = f"{args.run_dir} ({found.checkpoint}, epoch {found.epoch})"
    rows = [("run / checkpoint", where), *found.rows(), _threads_row(args)]
    print("diagnosis, nats per point (± is the standard error over points)")
    print(summary_table(rows))
    _print_files(paths)
    return 0


def _cmd_report(args) -> int:
    from .report import REPORT, report_run

    options = REPORT.from_args(args)
    REPORT.checked(options)
    path = report_run(args.run_dir, progress=not args.quiet, **options)
    if args.json:
        print(_json({"run_dir": str(args.run_dir), "report": str(path)}, args))
    else:
        print(f"report written: {path}\nopen it in a browser, e.g. xdg-open {path}")
    return 0


def _cmd_bdmc(args) -> int:
    from .plots import summary_table
    from .runs import BDMC, bdmc_run

    options = BDMC.from_args(args)
    BDMC.checked(options)
    res = bdmc_run(args.run_dir, progress=not args.quiet, **options)
    if args.json:
        print(_json({"run_dir": str(args.run_dir), "method": "bdmc", **res.to_dict()}, args))
        return 0

    def nats(name: str) -> str:
        return f"{getattr(res, name):.3f} ± {getattr(res, name + '_stderr'):.3f}"

    rows = [
        ("run", str(args.run_dir)),
        ("simulated points", str(res.n)),
        (f"upper: reverse AIS, T={res.steps}", nats("upper")),
        (f"lower: forward AIS, T={res.steps}", nats("lower")),
        ("sandwich width", f"{nats('width')}  (paired per point)"),
        *_exact_rows(res),
        (f"importance-weighted, K={res.k}", nats("iw")),
        ("chains, leapfrog", f"{res.chains} per point each way, {res.leapfrog} steps"),
        ("HMC acceptance", f"{res.acceptance:.2f}"),
        ("wall time", f"{res.seconds:.1f} s"),
    ]
    rows.append(_threads_row(args))
    print("BDMC, nats per point (± is the standard error over points)\n" + summary_table(rows))
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it ends as a Ctrl-C does."""


def _warn(warning: Optional[str]) -> None:
    """An estimate's one line of warning (``LogLikelihood.warning``), on stderr, if any."""
    if warning:
        print(f"pyrovae: {warning}", file=sys.stderr)


def _print_files(paths: Dict[str, Path]) -> None:
    """The files a command wrote, as a table."""
    from .plots import summary_table

    print("\nfiles written\n" + summary_table([(k, str(v)) for k, v in paths.items()]))


def _threads_row(args) -> Tuple[str, str]:
    """The summary row that says what the command computed on (``args.threads_used``)."""
    return ("threads", args.threads_used.describe())


def _json(out: Dict[str, Any], args) -> str:
    """A command's JSON output, with the threads it computed on."""
    from .runs import strict_json

    return strict_json({**out, "threads": args.threads_used.to_dict()})


def _kept(args) -> str:
    """What an interrupted command leaves behind, for its last line."""
    if getattr(args, "command", None) == "evaluate" and not args.one_stream:
        return (
            f"the points finished so far are saved in {args.run_dir}/evaluations: run the same "
            "command again to continue"
        )
    return "checkpoints written so far are kept"


def _terminate(signum, frame) -> None:
    raise _Terminated()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"pyrovae: warning: {' '.join(str(message).split())}\n"


# The commands that split their work across the processes torchrun starts.
DISTRIBUTED_COMMANDS = ("train", "evaluate")


@contextlib.contextmanager
def _said_by_process_0():
    """A block that checks the command's flags (and the config file it names): a bad value
    is the same error in every process torchrun started, so process 0 alone reports it."""
    try:
        yield
    except ValueError as e:
        if launch.processes() > 1:
            from .distributed import everywhere

            everywhere(e)
        raise


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``pyrovae`` console script; returns the exit status."""
    name, args = "pyrovae", None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    filters = warnings.filters[:]
    if launch.rank() > 0:
        warnings.simplefilter("ignore")  # process 0 warns for all
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if sys.stdout is None or sys.stdout.closed:
            print(f"{name}: error: standard output is closed: nowhere to print results",
                  file=sys.stderr)  # fmt: skip
            return 2
        # Before torch is first imported (building the parser imports it): the OpenMP
        # runtime reads its wait policy once, when torch loads it.
        try:
            prepare_runtime()
        except ValueError as e:  # a $OMP_NUM_THREADS the OpenMP runtime could not read
            print(f"{name}: error: {e}", file=sys.stderr)
            return 2
        # Inside the try: importing torch takes a second or two.
        args = build_parser().parse_args(argv)
        name = f"pyrovae {args.command}"
        if launch.processes() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            if launch.rank() == 0:
                print(
                    f"{name}: error: runs in one process, not under torchrun with "
                    f"{launch.processes()} (only {' and '.join(DISTRIBUTED_COMMANDS)} split their "
                    "work across processes): start it without torchrun",
                    file=sys.stderr,
                )
            return 2
        status = _run(args, name)
        sys.stdout.flush()  # a pipe closed early is found here, not at exit
        return status
    except KeyboardInterrupt as e:
        what = "terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        if launch.rank() == 0:  # torchrun stops every process: one line for all
            print(f"{name}: {what}; {_kept(args)}", file=sys.stderr)
        return 143 if isinstance(e, _Terminated) else 130
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{name}: error: the output was closed before all of it was written (a pipe "
              "that closed early)", file=sys.stderr)  # fmt: skip
        return 2
    finally:
        warnings.formatwarning = formatwarning
        warnings.filters[:] = filters
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stop_sharing()  # the threads lent during the command, given back
        if "pyrovae.distributed" in sys.modules:  # leave the processes' group, if joined
            sys.modules["pyrovae.distributed"].shutdown()


def _run(args, name: str) -> int:
    from .data import DataError
    from .training import CheckpointError, TrainingDiverged

    command = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "sample": _cmd_sample,
        "gradvar": _cmd_gradvar,
        "gap": _cmd_gap,
        "bdmc": _cmd_bdmc,
        "diagnose": _cmd_diagnose,
        "report": _cmd_report,
    }
    if launch.rank() > 0:
        name = f"{name} (process {launch.rank()})"
    try:
        args.threads_used = apply_threads(args.threads)
        return _command(command[args.command], args, name)
    except TrainingDiverged as e:
        _report(f"{name}: training diverged: {_one_line(e)}", e)
        return 3
    except (
        DataError,
        CheckpointError,
        ValueError,  # OptionError, RunDirError, NotApplicable among them
        FloatingPointError,  # a non-finite estimate from a damaged model
        MemoryError,
        RecursionError,  # a config file nested beyond reason
    ) as e:
        _report(f"{name}: error: {_one_line(e)}", e)
        return 2
    except BrokenPipeError:
        raise  # main's
    except OSError as e:  # a file or directory the system refuses: FileExistsError among them
        _report(f"{name}: error: {_os_error(e)}", e)
        return 2
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError among them
        distributed = sys.modules.get("pyrovae.distributed")
        if launch.processes() > 1 and distributed is not None and distributed.lost_peer(e):
            print(
                f"{name}: error: another process of this run stopped "
                f"({distributed.peer_reason(e)}); "
                "the checkpoints written so far are intact: find why it stopped (its own "
                "lines above), then run the same torchrun command with --resume",
                file=sys.stderr,
            )
            return 2
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise  # a bug: its traceback is what a report needs
        print(
            f"{name}: error: out of memory ({_one_line(e)[:200]}); lower the sizes asked for",
            file=sys.stderr,
        )
        return 2


def _command(run: Callable[[Any], int], args, name: str) -> int:
    """``run(args)``, with an error raised by the user's own program (``--model``) reported as
    one line naming where; pyrovae's own errors go on to ``_run``'s handlers."""
    from .program import ProgramError, forget_programs, program_error_line, program_frame

    forget_programs()  # the programs of an earlier command in this process are not this one's
    try:
        return run(args)
    except Exception as e:
        frame = None if isinstance(e, ProgramError) else program_frame(e)
        if frame is None:
            raise
        _report(f"{name}: error: {program_error_line(_root(e), frame)}", e)
        return 2


def _root(error: BaseException) -> BaseException:
    """The error ``error`` was raised from, through every cause."""
    while error.__cause__ is not None and error.__cause__ is not error:
        error = error.__cause__
    return error


def _report(line: str, error: BaseException) -> None:
    """Print an error's line on stderr, unless process 0 of several prints it for all."""
    if launch.rank() > 0 and getattr(error, "pyrovae_reported_everywhere", False):
        return
    print(line, file=sys.stderr)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, MemoryError):
        return text or "out of memory: lower the sizes asked for"
    return text or type(e).__name__


def _os_error(e: OSError) -> str:
    """One line for an error from the system: what it refused, and on which path."""
    if e.strerror is None:  # raised by pyrovae with its own message
        return _one_line(e)
    if e.errno == errno.EEXIST and e.filename is not None:
        return f"{e.filename} exists and is not a directory: choose another path"
    if e.filename is None:
        return f"{e.strerror} ({_hint(e)})"
    return f"cannot use {e.filename}: {e.strerror} ({_hint(e)})"


def _hint(e: OSError) -> str:
    return {
        errno.ENOSPC: "free some disk space; files written before are intact",
        errno.EACCES: "check the permissions, or choose another path",
        errno.EROFS: "choose a writable path",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.ENOENT: "check the path",
    }.get(e.errno, "check the path")


if __name__ == "__main__":
    sys.exit(main())
