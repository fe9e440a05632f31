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
producer), ``producers``, ``estimators``, ``evaluation``, ``training``, ``runs`` and ``cli``.
"""

__version__ = "0.2.0"

from .data import DATASETS, Dataset, load_dataset  # noqa: E402
from .estimators import ESTIMATORS, Estimator, make_estimator  # noqa: E402
from .evaluation import (  # noqa: E402
    LogLikelihood,
    estimate_log_likelihood,
    evaluate_vae,
    log_importance_weights,
)
from .linear_gaussian import LinearGaussian  # noqa: E402
from .model import VAE, VAEConfig, build_vae  # noqa: E402
from .particles import Particles, traced_particles  # noqa: E402
from .parts.guides import GUIDES  # noqa: E402
from .parts.likelihoods import LIKELIHOODS  # noqa: E402
from .parts.priors import PRIORS  # noqa: E402
from .producers import make_producer  # noqa: E402
from .runs import evaluate_run, sample_run  # noqa: E402
from .training import (  # noqa: E402
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    load_vae,
    train,
)

__all__ = [
    "DATASETS",
    "ESTIMATORS",
    "GUIDES",
    "LIKELIHOODS",
    "PRIORS",
    "VAE",
    "Dataset",
    "Estimator",
    "LinearGaussian",
    "LogLikelihood",
    "Particles",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "VAEConfig",
    "build_vae",
    "estimate_log_likelihood",
    "evaluate_run",
    "evaluate_vae",
    "load_dataset",
    "load_vae",
    "log_importance_weights",
    "make_estimator",
    "make_producer",
    "sample_run",
    "traced_particles",
    "train",
]
