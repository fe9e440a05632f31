"""Evaluation: the importance-weighted estimate of log p(x) (``importance``) and the noise of
each estimator's gradient (``gradients``), both from the producers' particles."""

from .importance import (
    DEFAULT_CHUNK_PAIRS,
    LogLikelihood,
    estimate_log_likelihood,
    evaluate_vae,
    log_importance_weights,
    prior_guide,
)

__all__ = [
    "DEFAULT_CHUNK_PAIRS",
    "LogLikelihood",
    "estimate_log_likelihood",
    "evaluate_vae",
    "log_importance_weights",
    "prior_guide",
]
