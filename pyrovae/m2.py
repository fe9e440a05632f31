"""M2, the semi-supervised VAE of Kingma et al. (2014), written as a Pyro program.

    p(y) = Cat(1/C),  p(z) = N(0, I),  p(x | y, z) = Bernoulli(decoder(y, z));
    q(y | x) = Cat(classifier(x)),  q(z | x, y) = N(encoder(x, y)).

The label y is a latent marked for enumeration in the guide: pyrovae (as Pyro's
``TraceEnum_ELBO``) sums it out exactly, E_q(y|x)[log p(x, y, z_y) - log q(y | x) -
log q(z_y | x, y)] with z_y drawn for every y, which is the paper's unlabelled bound U(x). A
point whose label is known (y ≥ 0 in the labels pyrovae passes, ``Program(labels=True)``)
gets the degenerate q(y | x) at its label, so that the same sum is the labelled bound L(x, y).
The networks are the paper's: one hidden layer of 500 softplus units each, z of 50 dims.

The classifier q(y | x) learns from the unlabelled bound alone otherwise (a labelled point's q
is fixed at its label), so the paper adds α E_labelled[log q(y | x)] to the objective, with
α = 0.1 N for N training points: w log q(y | x) for each of the N_l labelled points, w =
0.1 N / N_l (``M2.classification``, the program's auxiliary term: in training only). A weight
per labelled point, not per batch, keeps the objective the same however batches are drawn
(mixed, or labelled batches beside unlabelled ones: ``--labelled-batch-size``).

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

# q(y | x)'s logit for the classes a labelled point does not have: exp() of it is 0 exactly in
# float32 and float64, and, finite, it keeps 0 · log q = 0 (no NaN) in the enumerated sums.
IMPOSSIBLE = -1e4


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Softplus(), nn.Linear(hidden, outputs))


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
        weight: the classification term's weight per labelled point, w (``paper_weight``;
            the default is the paper's for 3000 labels among MNIST's 50,000 points).
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        classes: int = 10,
        hidden: int = 500,
        weight: float = 0.1 * 50000 / 3000,
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.classes, self.weight = x_dim, z_dim, classes, weight
        self.decoder = _mlp(z_dim + classes, hidden, x_dim)
        self.classifier = _mlp(x_dim, hidden, classes)
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

    def model(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        pyro.module("m2", self)
        prior = x.new_full((self.classes,), -math.log(self.classes))
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("y", dist.OneHotCategorical(logits=prior))
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = self.decoder(joined(z, label))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        pyro.module("m2", self)
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample(
                "y",
                dist.OneHotCategorical(logits=self._label_logits(x, y)),
                infer={"enumerate": "parallel"},
            )
            loc, log_scale = self.encoder(joined(x, label)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def paper_weight(labelled: int, points: int = 50000) -> float:
    """The paper's classification weight per labelled point, w = α / N_l with α = 0.1 N: for
    ``labelled`` labels among ``points`` training points."""
    return 0.1 * points / labelled


def make(labelled: int = 3000) -> Program:
    """The paper's M2 for 28×28 binary images and 10 classes, as a program taking labels, its
    classification term weighted as the paper weights it for ``labelled`` labels among MNIST's
    50,000 training points (``paper_weight``). ``make_100`` … ``make_3000`` name it for the
    command line (``--model pyrovae.m2:make_100``); ``make`` is ``make_3000``."""
    m2 = M2(weight=paper_weight(labelled))
    return Program(
        m2.model, m2.guide, labels=True, auxiliary=m2.classification, classify=m2.classify
    )


def make_100() -> Program:
    return make(100)


def make_600() -> Program:
    return make(600)


def make_1000() -> Program:
    return make(1000)


def make_3000() -> Program:
    return make(3000)
