"""The weight diagnostics of an importance-weighted estimate (``pyrovae.evaluation.weights``),
against what they are defined to be on the whole weight matrix, and against weights whose tail
index is known."""

import math

import pytest
import torch

from pyrovae.evaluation.weights import (
    WeightDiagnostics,
    WeightStream,
    k_ladder,
    pareto_k,
    tail_size,
    verdict,
)


def _streamed(log_w: torch.Tensor, seed: int = 0):
    """The diagnostics of (K, n) log weights fed in chunks of uneven sizes, in shuffled
    order."""
    k, n = log_w.shape
    g = torch.Generator().manual_seed(seed)
    cuts_k = sorted({0, k, *torch.randint(1, k, (4,), generator=g).tolist()})
    cuts_n = sorted({0, n, *torch.randint(1, n, (2,), generator=g).tolist()})
    chunks = [(a, b, c, d) for a, b in zip(cuts_k, cuts_k[1:]) for c, d in zip(cuts_n, cuts_n[1:])]
    stream = WeightStream(n, k)
    for i in torch.randperm(len(chunks), generator=g).tolist():
        k_lo, k_hi, lo, hi = chunks[i]
        stream.add(lo, k_lo, log_w[k_lo:k_hi, lo:hi])
    return stream.result()


def test_streamed_statistics_equal_their_definitions_on_the_whole_matrix():
    torch.manual_seed(0)
    log_w = torch.randn(300, 7, dtype=torch.float64) * 2 - 50
    d = _streamed(log_w)
    w = (log_w - log_w.max(0).values).exp()
    torch.testing.assert_close(d.ess, w.sum(0) ** 2 / (w**2).sum(0))
    assert d.ladder == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    for row, count in zip(d.log_px_by_k, d.ladder):
        torch.testing.assert_close(row, torch.logsumexp(log_w[:count], 0) - math.log(count))
    # The tail fitted is the M + 1 largest weights of each point.
    top = log_w.T.sort(1, descending=True).values[:, : tail_size(300) + 1]
    torch.testing.assert_close(d.pareto_k, pareto_k(top), equal_nan=True)
    assert d.remaining() == pytest.approx((d.log_px_by_k[-1] - d.log_px_by_k[-2]).mean().item())


def test_ess_is_k_for_equal_weights_and_one_for_a_single_dominant_weight():
    equal = _streamed(torch.zeros(64, 3, dtype=torch.float64))
    torch.testing.assert_close(equal.ess, torch.full((3,), 64.0, dtype=torch.float64))
    one = torch.full((64, 2), -1e3, dtype=torch.float64)
    one[17] = 0.0
    torch.testing.assert_close(_streamed(one).ess, torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9])
def test_pareto_k_recovers_the_tail_index_of_pareto_weights(shape):
    """Weights w = U^(-ξ) (a Pareto tail of index ξ: P(w > t) = t^(-1/ξ)), K = 5000 per point:
    the median k̂ over 40 points within 0.1 of ξ, and the share flagged (k̂ > 0.7) most of
    them for ξ = 0.9 (the fit's noise on M = 213 weights is about 0.1) and none for ξ ≤ 0.5."""
    torch.manual_seed(1)
    u = torch.rand(5000, 40, dtype=torch.float64)
    d = _streamed(-shape * u.log())
    assert d.pareto_k.median().item() == pytest.approx(shape, abs=0.1)
    share = d.unreliable_share()
    assert share > 0.8 if shape > 0.7 else share < 0.05


def test_pareto_k_is_not_fitted_on_too_few_weights_and_the_ladder_ends_at_k():
    assert tail_size(20) == 4 and k_ladder(1) == [1] and k_ladder(8) == [1, 2, 4, 8]
    d = _streamed(torch.randn(20, 3, dtype=torch.float64))
    assert d.pareto_k.isnan().all() and math.isnan(d.unreliable_share())
    assert d.to_dict()["pareto_k_max"] is None and d.to_dict()["k_ladder"][-1] == 20


def test_the_estimate_against_k_rises_toward_the_truth_for_a_heavy_tail():
    """For lognormal weights of σ = 2 (E w = e², so log p = 2 exactly), log p̂_k climbs with
    k on average and is still short of 2 at K = 4096: ``remaining`` is positive."""
    torch.manual_seed(2)
    d = _streamed(torch.randn(4096, 200, dtype=torch.float64) * 2)
    curve = d.curve()
    assert curve[0] == pytest.approx(0.0, abs=0.4) and curve[-1] < 2.0
    assert all(b > a for a, b in zip(curve, curve[1:]))
    assert d.remaining() > 0


def test_the_evaluator_reports_each_points_weights_exact_guide_and_an_imperfect_one():
    """With the exact posterior as the guide every weight is p(x): ESS = K and the estimate is
    log p(x) at every K. With a poor guide, ESS < K and the curve climbs to the estimate the
    evaluator returns, in the JSON as ``weights``."""
    from pyrovae.evaluation import estimate_log_likelihood

    from programs import LinearGaussianProgram

    torch.manual_seed(0)
    exact = LinearGaussianProgram(exact=True)
    x = torch.randn(6, exact.x_dim, dtype=torch.float64)
    res = estimate_log_likelihood(exact.model, exact.guide, x, k=400, chunk_pairs=300,
                                  progress=False)  # fmt: skip
    torch.testing.assert_close(res.weights.ess, torch.full((6,), 400.0, dtype=torch.float64))
    truth = exact.exact_log_px(x).detach()
    for row in res.weights.log_px_by_k:
        torch.testing.assert_close(row, truth)
    assert not (res.weights.pareto_k > 0.5).any()  # bounded weights: k̂ < 0 (or none fitted)
    poor = LinearGaussianProgram(exact=False)
    res = estimate_log_likelihood(poor.model, poor.guide, x, k=400, chunk_pairs=300,
                                  progress=False, seed=3)  # fmt: skip
    w = res.weights
    assert (w.ess < 400).all() and (w.ess >= 1).all() and w.remaining() > 0
    torch.testing.assert_close(w.log_px_by_k[-1], res.per_point_log_px)
    assert w.log_px_by_k.shape == (len(w.ladder), 6) and not w.pareto_k.isnan().any()
    summary = res.to_dict()["weights"]
    assert summary["k_ladder"][-1] == 400 and summary["ess_mean"] < 400
    assert summary["log_px_by_k"][-1] == pytest.approx(res.log_px)


def test_the_verdict_names_a_heavy_tail_and_an_unconverged_estimate_and_is_silent_otherwise():
    def diagnostics(k_hat, rise):
        by_k = torch.tensor([[-90.0] * 100, [-90.0 + rise] * 100], dtype=torch.float64)
        ess = torch.full((100,), 50.0, dtype=torch.float64)
        return WeightDiagnostics(5000, ess, k_hat, [2500, 5000], by_k)

    fine = torch.full((100,), 0.3, dtype=torch.float64)
    assert verdict(diagnostics(fine, 0.05), stderr=0.2) is None
    heavy = fine.clone()
    heavy[:3] = 0.9  # 3 % of the points
    line = verdict(diagnostics(heavy, 0.05), stderr=0.2)
    assert "3.0 % of the points have Pareto k̂ above 0.7" in line and "converged" not in line
    line = verdict(diagnostics(fine, 0.5), stderr=0.2)
    assert "rose 0.500 nats over the last doubling" in line and "Pareto" not in line
    assert len(line.splitlines()) == 1 and "--k" in line
    heavy[:3] = 0.3
    heavy[0] = 0.9  # 1 %: not above the share that warns
    assert verdict(diagnostics(heavy, 0.05), stderr=0.2) is None
