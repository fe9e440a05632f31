"""Evaluation: the importance-weighted estimate of log p(x) (``importance``) and the noise of
each estimator's gradient (``gradients``), both from the producers' particles; log p(x) of
8-bit data in bits per dimension (``bits``); whether an estimate can be trusted, from its
weights (``weights``); evaluations that resume where they stopped (``partial``)."""

from .bits import bits_per_dim
from .importance import (
    DEFAULT_CHUNK_PAIRS,
    LogLikelihood,
    estimate_log_likelihood,
    evaluate_vae,
    log_importance_weights,
    prior_guide,
)
from .partial import PartialStore
from .parzen import choose_bandwidth, parzen_log_likelihood
from .weights import WeightDiagnostics, verdict

__all__ = [
    "DEFAULT_CHUNK_PAIRS",
    "LogLikelihood",
    "bits_per_dim",
    "estimate_log_likelihood",
    "evaluate_vae",
    "log_importance_weights",
    "prior_guide",
    "parzen_log_likelihood",
    "choose_bandwidth",
    "verdict",
    "WeightDiagnostics",
    "PartialStore",
]
