"""pyrovae: variational auto-encoders the probabilistic-programming way, in Pyro.

A VAE is a Pyro model p(z) p_θ(x|z) and guide q_φ(z|x) built from swappable parts (prior,
decoder, likelihood, encoder, guide family), trained with ``pyro.infer.SVI`` under a named ELBO
estimator, and evaluated with a vectorized importance-weighted estimate of log p(x).

    >>> import pyrovae
    >>> vae = pyrovae.build_vae(pyrovae.VAEConfig(x_dim=784))
"""

__version__ = "0.1.0"

from .checkpoint import load_vae  # noqa: E402
from .data import DATASETS, Dataset, load_dataset  # noqa: E402
from .estimators import ESTIMATORS, Estimator, make_estimator  # noqa: E402
from .evaluation import (  # noqa: E402
    LogLikelihood,
    estimate_log_likelihood,
    evaluate_vae,
    log_importance_weights,
)
from .guides import GUIDES  # noqa: E402
from .likelihoods import LIKELIHOODS  # noqa: E402
from .linear_gaussian import LinearGaussian  # noqa: E402
from .model import VAE, VAEConfig, build_vae  # noqa: E402
from .priors import PRIORS  # noqa: E402
from .runs import evaluate_run, sample_run  # noqa: E402
from .training import TrainConfig, TrainingDiverged, TrainResult, train  # noqa: E402

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
    "sample_run",
    "train",
]
