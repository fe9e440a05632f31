"""The swappable parts a VAE is built from, each a plain ``torch.nn`` module chosen by name.

- ``pyrovae.parts.nets``: encoders and decoders (:data:`NETS`: ``mlp``, ``linear``,
  ``conv``).
- ``pyrovae.parts.priors``: priors p(z), :class:`Prior` and :data:`PRIORS`.
- ``pyrovae.parts.likelihoods``: likelihoods p(x | decoder output), :class:`Likelihood` and
  :data:`LIKELIHOODS`.
- ``pyrovae.parts.guides``: guide families q(z | x) from the encoder's output,
  :class:`GuideFamily` and :data:`GUIDES`.
- ``pyrovae.parts.refinement``: the ``local`` guide, an amortized guide refined per point.
- ``pyrovae.parts.distributions``: distributions Pyro lacks in the form the hot paths need.

A new part is one class and its registration: a subclass of :class:`Prior` under
``@PRIORS.register("my-prior")``, for example, after which ``VAEConfig(prior="my-prior")``
builds it (and ``--prior my-prior`` on the command line, where the module is imported).
docs/guides/estimators.md adds an estimator this way, step by step.
"""

from .autoregressive import (
    AutoregressiveImage,
    GatedLayer,
    MaskedConv2d,
    PixelCNN,
    PixelCNNLikelihood,
    PixelCNNLogisticLikelihood,
)
from .distributions import DiagonalGaussianMixture, DiscretizedLogistic, FactorizedBernoulli
from .guides import (
    GUIDES,
    BernoulliFamily,
    DiagonalGaussian,
    FullRankGaussian,
    GuideFamily,
    NormalizingFlow,
)
from .likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    Likelihood,
)
from .nets import NETS, ConvDecoder, ConvEncoder, conv, linear, mlp
from .priors import (
    PRIORS,
    BernoulliPrior,
    FlowPrior,
    GaussianMixturePrior,
    LearnedGaussian,
    Prior,
    StandardNormal,
    VampPrior,
)
from .refinement import LocalRefinement

__all__ = [
    "NETS",
    "mlp",
    "linear",
    "conv",
    "ConvEncoder",
    "ConvDecoder",
    "PRIORS",
    "Prior",
    "StandardNormal",
    "LearnedGaussian",
    "GaussianMixturePrior",
    "VampPrior",
    "FlowPrior",
    "BernoulliPrior",
    "LIKELIHOODS",
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "LearnedGaussianLikelihood",
    "DiscretizedLogisticLikelihood",
    "PixelCNNLikelihood",
    "PixelCNNLogisticLikelihood",
    "PixelCNN",
    "MaskedConv2d",
    "GatedLayer",
    "AutoregressiveImage",
    "GUIDES",
    "GuideFamily",
    "DiagonalGaussian",
    "FullRankGaussian",
    "NormalizingFlow",
    "BernoulliFamily",
    "LocalRefinement",
    "FactorizedBernoulli",
    "DiscretizedLogistic",
    "DiagonalGaussianMixture",
]
