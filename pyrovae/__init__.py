"""pyrovae: variational auto-encoders the probabilistic-programming way, in Pyro.

A VAE is a Pyro model p(z) p_θ(x|z) and guide q_φ(z|x) built from swappable parts (prior,
decoder, likelihood, encoder, guide family). Estimators of the ELBO and of the K-sample bound
are each defined once, on the particles of a batch (log p(x, z), log q(z | x), ... per particle
and data point), which come from tracing any Pyro model/guide pair or, for the library's VAE,
straight from its parts; one trainer takes Adam steps on them, and the importance-weighted
estimate of log p(x) is computed from the same particles.

    >>> import pyrovae
    >>> vae = pyrovae.build_vae(pyrovae.VAEConfig(x_dim=784))

Layout: ``parts`` (nets, priors, likelihoods, guide families, distributions), ``data``,
``model`` (the VAE and its direct producer), ``particles`` (the particles and the traced
producer), ``producers``, ``estimators``, ``evaluation``, ``training``, ``distributed``
(several processes under torchrun), ``runs``, ``diagnosis`` and ``report`` (what a trained run
is doing) and ``cli``.
"""

__version__ = "0.2.0"

import importlib

# Public names and the module each comes from. They are imported when first used (PEP 562), so
# that ``import pyrovae.cli`` is quick: the command line then imports torch inside its own error
# handling, where a Ctrl-C in the first second is one line, not a traceback.
_EXPORTS = {
    ".data": ("DATASETS", "Dataset", "load_dataset"),
    ".estimators": ("ESTIMATORS", "Estimator", "make_estimator"),
    ".evaluation": (
        "LogLikelihood",
        "estimate_log_likelihood",
        "evaluate_vae",
        "log_importance_weights",
    ),
    ".evaluation.ais": ("AISResult", "BDMCResult", "ais_log_likelihood", "bdmc"),
    ".evaluation.latents": ("LatentDiagnostics", "latent_diagnostics"),
    ".evaluation.weights": ("WeightDiagnostics",),
    ".diagnosis": ("Diagnosis", "diagnose_run"),
    ".report": ("report_run",),
    ".linear_gaussian": ("LinearGaussian",),
    ".model": ("VAE", "TwoLayerVAE", "VAEConfig", "build_vae", "linear_gaussian_vae"),
    ".particles": ("NotApplicable", "Particles", "ProgramError", "traced_particles"),
    ".config": ("OptionError",),
    ".parts.guides": ("GUIDES",),
    ".parts.likelihoods": ("LIKELIHOODS",),
    ".parts.priors": ("PRIORS",),
    ".producers": ("make_producer",),
    ".program": ("Program",),
    ".runs": ("evaluate_run", "sample_run"),
    ".training": ("TrainConfig", "TrainingDiverged", "TrainResult", "load_vae", "train"),
}
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _SOURCE:
        value = getattr(importlib.import_module(_SOURCE[name], __name__), name)
        globals()[name] = value  # once
        return value
    try:  # a subpackage, as ``pyrovae.data`` after a plain ``import pyrovae``
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise  # a module that is there failed to import: say why
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_SOURCE))


__all__ = [
    "AISResult",
    "BDMCResult",
    "DATASETS",
    "ESTIMATORS",
    "GUIDES",
    "LIKELIHOODS",
    "PRIORS",
    "VAE",
    "TwoLayerVAE",
    "Dataset",
    "Diagnosis",
    "Estimator",
    "LatentDiagnostics",
    "LinearGaussian",
    "LogLikelihood",
    "NotApplicable",
    "OptionError",
    "Particles",
    "Program",
    "ProgramError",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "VAEConfig",
    "WeightDiagnostics",
    "ais_log_likelihood",
    "bdmc",
    "build_vae",
    "diagnose_run",
    "estimate_log_likelihood",
    "evaluate_run",
    "evaluate_vae",
    "latent_diagnostics",
    "linear_gaussian_vae",
    "load_dataset",
    "load_vae",
    "log_importance_weights",
    "make_estimator",
    "make_producer",
    "report_run",
    "sample_run",
    "traced_particles",
    "train",
]
