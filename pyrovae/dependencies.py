"""Which costs sit downstream of a latent the guide samples without reparameterization: the
Rao-Blackwellization of the score function that Pyro's ``TraceGraph_ELBO`` makes.

A score term ∇ log q(z_s) · c needs in c only the costs that z_s can change; the others have
mean zero against it and only add variance. ``TraceGraph_ELBO`` reads the dependencies off
dense traces, in which a site depends on every site drawn before it (in the same plate
iteration): the costs downstream of a guide site s are log p - log q of s and of every guide
site drawn after it, and log p of every model site drawn after any of those in the model.
This module applies the same rule to the per-point (K, B) log densities of pyrovae's
particles, so each data point's score term carries its own point's downstream costs.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Sequence

import torch


class ScoreSite(NamedTuple):
    """A non-reparameterized latent site's score term: its name, log q(z_s | ...) (K, B) with
    its gradient in the guide's parameters, and the costs downstream of it (K, B), unscaled,
    carrying no gradient that the estimator uses (it detaches them)."""

    name: str
    log_q: torch.Tensor
    cost: torch.Tensor


def downstream_costs(
    sampled: Sequence[str],
    guide_order: Sequence[str],
    model_order: Sequence[str],
    log_q: Dict[str, torch.Tensor],
    log_p: Dict[str, torch.Tensor],
) -> List[ScoreSite]:
    """The score sites of the guide's ``sampled`` sites (non-reparameterized), in guide order.

    Args:
        sampled: the guide's latent sites drawn without reparameterization.
        guide_order, model_order: every latent site of the guide, and every sample site of the
            model (latent and observed), in the order the programs drew them.
        log_q: the guide's (K, B) log density per latent site.
        log_p: the model's (K, B) log density per sample site (latent and observed).
    """
    place = {name: i for i, name in enumerate(model_order)}
    out = []
    for s in sampled:
        after = list(guide_order[guide_order.index(s) :])  # s and the guide sites after it
        first = min((place[t] for t in after if t in place), default=len(model_order))
        model_after = [m for m in model_order[first:] if m not in after]
        terms = [log_p[t] - log_q[t] if t in log_p else -log_q[t] for t in after]
        terms += [log_p[m] for m in model_after]
        out.append(ScoreSite(s, log_q[s], sum(terms[1:], terms[0])))
    return out
