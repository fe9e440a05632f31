"""Whether an importance-weighted log p(x) can be trusted: what each point's K weights say.

The estimate log p̂_K(x) = log (1/K) Σ_k w_k, w_k = p(x, z_k) / q(z_k | x), is a lower bound
whose bias shrinks as K grows, and whose error is ruled by the largest weights. Three
diagnostics of each point's weights, streamed over the evaluator's chunks
(``WeightStream``: every chunk merged in, in any order, with memory of O(√K) per point):

- the **effective sample size** (Σ w)² / Σ w², from 1 (one weight dominates) to K (all equal);
- the **Pareto k̂** of the weights' upper tail (Vehtari et al., PSIS; Yao et al., 2018): the
  generalized Pareto shape fitted to the M = ⌈min(K / 5, 3 √K)⌉ largest weights' excess over
  the next one. Above 0.7 the weights' variance is effectively infinite and the estimate of
  that point cannot be trusted; 0.5-0.7 it converges slowly; below 0.5 it is fine. The fit is
  Pyro's own, ``pyro.ops.stats.fit_generalized_pareto`` (Zhang and Stephens, 2009, as in
  PSIS), on the tail that ``pyro.infer.importance.psis_diagnostic`` takes. That function
  cannot be called here: it draws its own weights by running the program, and sums them over
  the whole batch into one k̂, where the evaluator has each point's weights in chunks;
- the **estimate against K** on one set of draws, log p̂_k from the first k weights for
  k = 1, 2, 4, ... and K: a curve still rising at K says the bound has not converged. As the
  bound's bias falls about as 1/K (Burda et al., 2015), the rise over the last doubling is
  about what is left between log p̂_K and log p(x) (``remaining``).

``verdict`` turns these into the one line of warning that ``pyrovae evaluate`` prints (and
its ``--json`` carries as ``warning``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from pyro.ops.stats import fit_generalized_pareto

# Above this k̂ a point's estimate cannot be trusted (Vehtari et al.; Pyro's psis_diagnostic).
PARETO_K_UNRELIABLE = 0.7
# ``evaluate`` warns when more than this share of the points have k̂ above 0.7: a few points
# in thousands cross it by the noise of the fit alone.
PARETO_SHARE_WARNING = 0.01
# Fewer tail weights than this and no k̂ is fitted (NaN), as in Pyro's psis_diagnostic.
MIN_TAIL = 10


def tail_size(k: int) -> int:
    """M, the number of largest weights the Pareto fit uses out of ``k``:
    ⌈min(0.2 k, 3 √k)⌉ (PSIS; ``pyro.infer.importance.psis_diagnostic``)."""
    return int(math.ceil(min(0.2 * k, 3.0 * math.sqrt(k))))


def k_ladder(k: int) -> List[int]:
    """The particle counts at which the estimate against K is read: 1, 2, 4, ... below ``k``,
    and ``k``."""
    ladder = [2**i for i in range(max(1, math.ceil(math.log2(k))))]
    return [n for n in ladder if n < k] + [k]


@dataclass
class WeightDiagnostics:
    """Each point's weight diagnostics, from one evaluation's draws.

    ``ess`` (n,): effective sample size; ``pareto_k`` (n,): the tail's k̂ (NaN where K is too
    small to fit one, fewer than ``MIN_TAIL`` tail weights); ``ladder``: the particle counts of
    ``log_px_by_k`` (len(ladder), n), each point's log p̂_k from its first k draws (the last
    row is the evaluation's own estimate).
    """

    k: int
    ess: torch.Tensor
    pareto_k: torch.Tensor
    ladder: List[int]
    log_px_by_k: torch.Tensor

    def curve(self) -> List[float]:
        """The mean over points of log p̂_k, one number per count of ``ladder``."""
        return self.log_px_by_k.mean(1).tolist()

    def remaining(self) -> float:
        """How much the mean estimate rose over the last doubling of K (0 with one count):
        with a bias falling as 1/K, about what still separates it from log p(x)."""
        if len(self.ladder) < 2:
            return 0.0
        return (self.log_px_by_k[-1] - self.log_px_by_k[-2]).mean().item()

    def unreliable_share(self) -> float:
        """The share of points whose k̂ is above ``PARETO_K_UNRELIABLE`` (NaN if none was
        fitted)."""
        fitted = self.pareto_k[~self.pareto_k.isnan()]
        if fitted.numel() == 0:
            return math.nan
        return (fitted > PARETO_K_UNRELIABLE).double().mean().item()

    def to_dict(self) -> Dict[str, object]:
        """The JSON fields: ESS and k̂ summaries, the curve, and what was left at K."""
        fitted = self.pareto_k[~self.pareto_k.isnan()]
        quantile = (lambda q: fitted.quantile(q).item()) if fitted.numel() else (lambda q: None)
        return {
            "ess_mean": self.ess.mean().item(),
            "ess_median": self.ess.median().item(),
            "pareto_k_median": quantile(0.5),
            "pareto_k_max": fitted.max().item() if fitted.numel() else None,
            "pareto_k_share_above_0.7": None if fitted.numel() == 0 else self.unreliable_share(),
            "k_ladder": self.ladder,
            "log_px_by_k": self.curve(),
            "rise_last_doubling": self.remaining(),
        }


class WeightStream:
    """Each point's weight statistics, merged chunk by chunk in any order.

    Args:
        n: data points; k: particles per point (the ladder and the tail size follow from it).
        device: where the running statistics live.
    """

    def __init__(self, n: int, k: int, device: Optional[torch.device] = None) -> None:
        self.k, self.ladder, self.keep = k, k_ladder(k), tail_size(k) + 1
        minus_inf = dict(dtype=torch.float64, device=device)
        self.lse_sq = torch.full((n,), -math.inf, **minus_inf)  # log Σ w²
        self.prefix = torch.full((len(self.ladder), n), -math.inf, **minus_inf)
        self.top = torch.full((n, self.keep), -math.inf, **minus_inf)

    def add(self, lo: int, k_lo: int, log_w: torch.Tensor) -> None:
        """Merge the (kk, B) log weights of particles k_lo … k_lo + kk - 1 of points
        lo … lo + B - 1."""
        log_w = log_w.double()
        kk, b = log_w.shape
        rows = slice(lo, lo + b)
        self.lse_sq[rows] = torch.logaddexp(self.lse_sq[rows], torch.logsumexp(2 * log_w, 0))
        whole = torch.logsumexp(log_w, 0)  # (the same for every count past this chunk)
        for i, count in enumerate(self.ladder):
            upto = min(kk, count - k_lo)  # this chunk's draws among the first ``count``
            if upto > 0:
                part = whole if upto == kk else torch.logsumexp(log_w[:upto], 0)
                self.prefix[i, rows] = torch.logaddexp(self.prefix[i, rows], part)
        # (``top`` starts at -inf, so the merge always has ``keep`` columns to take)
        merged = torch.cat([self.top[rows], log_w.T], 1)
        self.top[rows] = merged.topk(self.keep, 1).values  # sorted, largest first

    def rows(self, **more: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The running statistics as (n, ...) views, points first, with ``more`` of the
        caller's: what a ``pyrovae.evaluation.partial.PartialStore`` saves and restores."""
        return {"lse_sq": self.lse_sq, "prefix": self.prefix.T, "top": self.top, **more}

    def result(self, first: int = 0, last: Optional[int] = None) -> WeightDiagnostics:
        """The diagnostics of points ``first`` … ``last`` - 1 (default: all), on the CPU, once
        all K weights of each are in."""
        rows = slice(first, last)
        lse, prefix = self.prefix[-1, rows], self.prefix[:, rows]
        ess = (2 * lse - self.lse_sq[rows]).exp()
        counts = torch.tensor(self.ladder, dtype=torch.float64, device=lse.device)
        by_k = prefix - counts.log().unsqueeze(1)
        return WeightDiagnostics(
            self.k, ess.cpu(), pareto_k(self.top[rows].cpu()), self.ladder, by_k.cpu()
        )


def pareto_k(top: torch.Tensor) -> torch.Tensor:
    """k̂ of each row's tail: ``top`` (n, M + 1) the M + 1 largest log weights of each point,
    in descending order; the fit is to the M largest weights' excess over the (M + 1)-th,
    relative to the largest (those below 1e-15 of it left out, as Pyro leaves them). (n,),
    NaN where fewer than ``MIN_TAIL`` weights are in the tail.

    A Python loop over points: Pyro's fit takes one point's tail at a time (about 0.2 ms
    each, so 2 s for 10,000 points, against hours for the weights themselves)."""
    out = torch.full((top.shape[0],), math.nan, dtype=torch.float64)
    floor = math.log(1e-15)
    for i, row in enumerate(top.double()):
        row = row - row[0]
        cutoff = max(floor, row[-1].item())
        tail = row[:-1][row[:-1] > cutoff]
        if tail.numel() >= MIN_TAIL:
            out[i] = fit_generalized_pareto(tail.exp() - math.exp(cutoff))[0]
    return out


def verdict(weights: WeightDiagnostics, stderr: float) -> Optional[str]:
    """One line saying why the estimate cannot be trusted, or None: more than
    ``PARETO_SHARE_WARNING`` of the points with k̂ above 0.7, or a rise over the last doubling
    of K larger than the estimate's own standard error over the points (the bias left is then
    as large as the error the estimate reports)."""
    reasons = []
    share = weights.unreliable_share()
    if share > PARETO_SHARE_WARNING:  # (False for NaN: no k̂ fitted)
        reasons.append(
            f"{100 * share:.1f} % of the points have Pareto k̂ above {PARETO_K_UNRELIABLE} "
            f"(their weights' tail is too heavy for K = {weights.k})"
        )
    rise = weights.remaining()
    if len(weights.ladder) > 1 and rise > stderr:
        reasons.append(
            f"the estimate rose {rise:.3f} nats over the last doubling of K, more than its "
            f"standard error {stderr:.3f}: it has not converged"
        )
    if not reasons:
        return None
    return (
        "warning: this log p(x) may not be trusted: "
        + "; ".join(reasons)
        + "; raise --k, refine the proposal (--refine) or compare with --method ais"
    )


def weight_rows(weights: Optional[WeightDiagnostics]) -> List[Tuple[str, str]]:
    """What the weights say of an estimate, as (name, value) rows for a summary table (none
    without weights)."""
    if weights is None:
        return []
    w = weights.to_dict()
    share = w["pareto_k_share_above_0.7"]
    tail = "not fitted (K too small)" if share is None else f"{100 * share:.1f} % of points"
    return [
        ("effective sample size", f"{w['ess_mean']:.1f} mean, {w['ess_median']:.1f} median"),
        ("Pareto k̂ above 0.7", tail),
        ("rise over the last doubling of K", f"{w['rise_last_doubling']:.4f} nats"),
    ]
