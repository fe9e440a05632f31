"""M2, the semi-supervised VAE of Kingma et al. (2014), written as a Pyro program.

    p(y) = Cat(1/C),  p(z) = N(0, I),  p(x | y, z) = Bernoulli(decoder(y, z));
    q(y | x) = Cat(classifier(x)),  q(z | x, y) = N(encoder(x, y)).

The label y is a latent marked for enumeration in the guide: pyrovae (as Pyro's
``TraceEnum_ELBO``) sums it out exactly, E_q(y|x)[log p(x, y, z_y) - log q(y | x) -
log q(z_y | x, y)] with z_y drawn for every y, which is the paper's unlabelled bound U(x). A
point whose label is known (y ≥ 0 in the labels pyrovae passes, ``Program(labels=True)``)
gets the degenerate q(y | x) at its label, so that the same sum is the labelled bound L(x, y);
a batch of labelled points alone observes y in the model instead (the same bound, one z per
point rather than one per class: ``--labelled-batch-size`` trains on such batches, and
``evaluate`` on labelled test images estimates log p(x, y)).
The networks are the paper's: one hidden layer of 500 softplus units each, z of 50 dims.

The classifier q(y | x) learns from the unlabelled bound alone otherwise (a labelled point's q
is fixed at its label), so the paper adds α E_labelled[log q(y | x)] to the objective, with
α = 0.1 N for N training points: w log q(y | x) for each of the N_l labelled points, w =
0.1 N / N_l (``paper_weight``; ``M2.classification``, the program's auxiliary term: in
training only). A weight per labelled point, not per batch, keeps the objective the same
however batches are drawn (mixed, or labelled batches beside unlabelled ones:
``--labelled-batch-size``).

The recipe (``make``) weighs each labelled point by ``RECIPE_WEIGHT`` = 46 instead, chosen on
validation error: with 3000 labels the paper's w = 1.67 stalled at 18-21 % validation error
(mixed or labelled batches), w = 46 (the value of Pyro's ss_vae example) reached 5.8 % after
27 epochs and was still falling (docs/results.md, "Semi-supervised M2"). Its classifier has
``RECIPE_CLASSIFIER_LAYERS`` = 2 hidden layers: in 10-epoch pilots at lr 1e-3 (3000 labels)
the validation error was 5.55 % with two, 5.89 % with the paper's one.

``pyrovae train --model pyrovae.m2:make ...`` trains it; ``make()`` returns the program.
"""

from __future__ import annotations

import math
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .program import Program

__all__ = [
    "M2",
    "make",
    "make_paper_100",
    "make_paper_600",
    "make_paper_1000",
    "make_paper_3000",
    "paper_weight",
    "RECIPE_WEIGHT",
    "RECIPE_CLASSIFIER_LAYERS",
]

# q(y | x)'s logit for the classes a labelled point does not have: exp() of it is 0 exactly in
# float32 and float64, and, finite, it keeps 0 · log q = 0 (no NaN) in the enumerated sums.
IMPOSSIBLE = -1e4
#: The recipe's classification weight per labelled point (the module's docstring says why).
RECIPE_WEIGHT = 46.0
#: The recipe's hidden layers in the classifier q(y | x) (the paper's networks have one).
RECIPE_CLASSIFIER_LAYERS = 2


def _mlp(inputs: int, hidden: int, outputs: int, layers: int = 1) -> nn.Module:
    """An MLP with ``layers`` hidden layers of ``hidden`` softplus units."""
    widths = [inputs] + [hidden] * layers
    body = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.Softplus())]
    return nn.Sequential(*body, nn.Linear(widths[-1], outputs))


def joined(*parts: torch.Tensor) -> torch.Tensor:
    """The tensors broadcast over their batch dims (an enumerated y's, a particle plate's)
    and joined along the last: (..., Σ widths)."""
    batch = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(batch + p.shape[-1:]) for p in parts], -1)


class M2(nn.Module):
    """The M2 model and guide (see the module). Called as ``model(x)``, ``guide(x)`` on
    unlabelled points, or ``model(x, y)``, ``guide(x, y)`` with y (B,) int64 labels, -1 where
    unknown.

    Args:
        x_dim, z_dim, classes, hidden: the data's, latent's and label's sizes, and the
            hidden layers' width.
        weight: the classification term's weight per labelled point, w (the recipe's
            ``RECIPE_WEIGHT`` by default; ``paper_weight`` gives the paper's).
        classifier_layers: q(y | x)'s hidden layers (the paper's 1 by default; the recipe's
            ``RECIPE_CLASSIFIER_LAYERS``).
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        classes: int = 10,
        hidden: int = 500,
        weight: float = RECIPE_WEIGHT,
        classifier_layers: int = 1,
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.classes, self.weight = x_dim, z_dim, classes, weight
        self.decoder = _mlp(z_dim + classes, hidden, x_dim)
        self.classifier = _mlp(x_dim, hidden, classes, classifier_layers)
        self.encoder = _mlp(x_dim + classes, hidden, 2 * z_dim)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x)'s logits, (B, classes)."""
        return self.classifier(x)

    def classification(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The paper's classification term per point (B,): w log q(y | x) at each labelled
        point (y ≥ 0), 0 at the others."""
        log_q = self.classify(x).log_softmax(-1).gather(-1, y.clamp_min(0).unsqueeze(-1))
        return torch.where(y >= 0, self.weight * log_q.squeeze(-1), torch.zeros(()))

    def _label_logits(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """q(y | x)'s logits, at the label where a point has one (degenerate there)."""
        logits = self.classify(x)
        if y is None:
            return logits
        known = (y >= 0).unsqueeze(-1)
        at_label = torch.full_like(logits, IMPOSSIBLE).scatter(
            -1, y.clamp_min(0).unsqueeze(-1), 0.0
        )
        return torch.where(known, at_label, logits)

    def _observed(self, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The one-hot labels (B, classes) of a batch whose every point is labelled, else
        None: such a batch observes y (the labelled bound L(x, y) with one z per point, where
        the degenerate q(y | x) would draw z for every class and weigh all but one by 0)."""
        if y is None or not bool((y >= 0).all()):
            return None
        return torch.nn.functional.one_hot(y, self.classes).to(torch.get_default_dtype())

    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """p(y) p(z) p(x | y, z) for x (B, 784); y (B,) observes the labels, -1 for none."""
        pyro.module("m2", self)
        prior = x.new_full((self.classes,), -math.log(self.classes))
        with pyro.plate("data", x.shape[0]):
            observed = self._observed(y)
            label = pyro.sample("y", dist.OneHotCategorical(logits=prior), obs=observed)
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.decoder(joined(z, label))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """q(y | x) q(z | x, y), y enumerated (a labelled point's q(y | x) put at its label)."""
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            label = self._observed(y)
            if label is None:
                label = pyro.sample(
                    "y",
                    dist.OneHotCategorical(logits=self._label_logits(x, y)),
                    infer={"enumerate": "parallel"},
                )
            loc, log_scale = self.encode(x, label).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def encode(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """q(z | x, y)'s parameters, (..., B, 2 z_dim): the encoder on [x, y], its first layer
        computed as W_x x + W_y y + b, so that x's part (the layer's 784 of 794 columns) is
        multiplied once for all the enumerated labels rather than once for each."""
        first, *rest = self.encoder
        w_x, w_y = first.weight.split([self.x_dim, self.classes], -1)
        h = nn.functional.linear(x, w_x, first.bias) + nn.functional.linear(label, w_y)
        for layer in rest:
            h = layer(h)
        return h


def paper_weight(labelled: int, points: int = 50000) -> float:
    """The paper's classification weight per labelled point, w = α / N_l with α = 0.1 N: for
    ``labelled`` labels among ``points`` training points."""
    return 0.1 * points / labelled


def make(
    weight: float = RECIPE_WEIGHT, classifier_layers: int = RECIPE_CLASSIFIER_LAYERS
) -> Program:
    """The recipe's M2 for 28×28 binary images and 10 classes, as a program taking labels: its
    classification term weighted by ``weight`` per labelled point and its classifier with
    ``classifier_layers`` hidden layers (the recipe's, chosen on validation error). The
    paper's M2, ``make_paper_100`` … ``make_paper_3000`` for the command line (``--model
    pyrovae.m2:make_paper_3000``), has its weight ``paper_weight(labels)`` and one hidden
    layer."""
    m2 = M2(weight=weight, classifier_layers=classifier_layers)
    return Program(
        m2.model, m2.guide, labels=True, auxiliary=m2.classification, classify=m2.classify
    )


def make_paper_100() -> Program:
    """The paper's M2 for 100 labels: its weight 0.1 N / N_l, one hidden layer in q(y | x)."""
    return make(paper_weight(100), classifier_layers=1)


def make_paper_600() -> Program:
    """The paper's M2 for 600 labels: its weight 0.1 N / N_l, one hidden layer in q(y | x)."""
    return make(paper_weight(600), classifier_layers=1)


def make_paper_1000() -> Program:
    """The paper's M2 for 1000 labels: its weight 0.1 N / N_l, one hidden layer in q(y | x)."""
    return make(paper_weight(1000), classifier_layers=1)


def make_paper_3000() -> Program:
    """The paper's M2 for 3000 labels: its weight 0.1 N / N_l, one hidden layer in q(y | x)."""
    return make(paper_weight(3000), classifier_layers=1)
