"""The importance-weighted estimator of log p(x), checked against closed-form linear-Gaussian
answers."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae import estimate_log_likelihood, evaluate_vae, log_importance_weights

from helpers import (
    exact_posterior_guide,
    guide_params,
    linear_vae,
    mean_and_stderr,
    random_truth,
    set_mean_field_guide,
)

SETTINGS = [(3, 1, 0), (5, 2, 1), (8, 3, 2)]  # (x_dim, z_dim, seed)


@pytest.mark.parametrize("x_dim,z_dim,seed", SETTINGS)
def test_iw_estimate_brackets_exact_log_px_and_bias_shrinks_with_k(x_dim, z_dim, seed):
    truth = random_truth(x_dim, z_dim, seed)
    x = truth.sample(3000, torch.Generator().manual_seed(seed + 100))
    vae = linear_vae(truth)
    set_mean_field_guide(vae, truth, inflate=1.3)
    exact = truth.log_marginal(x)
    # The expected bias at K = 1 is minus the KL from the guide to the exact posterior.
    loc, scale = guide_params(vae, x)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    kl = torch.distributions.kl_divergence(q, truth.posterior(x)).mean().item()
    assert kl > 0.05  # the guide is far enough from exact for the bias to be measurable

    pyro.set_rng_seed(seed)
    gaps = {}
    for k in (1, 10, 1000):
        res = evaluate_vae(vae, x, k=k, progress=False)
        assert res.exact_log_px == pytest.approx(exact.mean().item(), abs=1e-9)
        # What a user sees on a 200-point test set: the estimate within 4 standard errors of
        # the exact answer.
        view = estimate_log_likelihood(vae.model, vae.guide, x[:200], k=k, progress=False)
        assert abs(view.log_px - exact[:200].mean().item()) < 4 * view.log_px_stderr
        # Paired differences on all points isolate the Monte Carlo error from the spread of
        # log p(x) over data points.
        gap, se = mean_and_stderr(res.per_point_log_px - exact)
        gaps[k] = (gap.item(), se.item())
        assert gap < 4 * se  # a lower bound in expectation
    (gap1, se1), (gap10, se10), (gap1000, se1000) = gaps[1], gaps[10], gaps[1000]
    assert abs(gap1 + kl) < 4 * se1, (gap1, kl, se1)
    assert abs(gap1000) < 4 * se1000, (gap1000, se1000)
    # The bias shrinks as K grows: K = 10 is measurably closer than the exact K = 1 bias, and
    # K = 1000 closer still.
    assert gap10 + kl > 4 * se10, (gap10, kl, se10)
    assert gap10 < gap1000, gaps


@pytest.mark.parametrize("x_dim,z_dim,seed", SETTINGS)
def test_exact_posterior_guide_gives_equal_weights_and_exact_log_px(x_dim, z_dim, seed):
    truth = random_truth(x_dim, z_dim, seed)
    x = truth.sample(50, torch.Generator().manual_seed(seed))
    vae = linear_vae(truth)
    guide = exact_posterior_guide(truth)
    log_w = log_importance_weights(vae.model, guide, x, k=64)
    assert log_w.shape == (64, 50)
    exact = truth.log_marginal(x)
    torch.testing.assert_close(log_w, exact.expand(64, 50), rtol=0, atol=1e-9)
    for k in (1, 7, 100):
        res = estimate_log_likelihood(vae.model, guide, x, k=k, chunk_pairs=128, progress=False)
        torch.testing.assert_close(res.per_point_log_px, exact, rtol=0, atol=1e-9)


def test_k1_reproduces_pyro_single_sample_elbo():
    truth = random_truth(6, 2, 3)
    x = truth.sample(40, torch.Generator().manual_seed(0))
    vae = linear_vae(truth)
    pyro.set_rng_seed(11)
    elbo = -Trace_ELBO().loss(vae.model, vae.guide, x) / x.shape[0]
    pyro.set_rng_seed(11)
    res = evaluate_vae(vae, x, k=1, progress=False)
    assert res.log_px == pytest.approx(elbo, abs=1e-9)
    assert res.elbo == pytest.approx(elbo, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_monte_carlo_elbo_matches_closed_form(seed):
    truth = random_truth(4, 2, seed)
    x = truth.sample(20, torch.Generator().manual_seed(seed))
    vae = linear_vae(truth)
    with torch.no_grad():  # a random, imperfect diagonal guide
        g = torch.Generator().manual_seed(seed + 7)
        for p in vae.encoder.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    loc, scale = guide_params(vae, x)
    closed = truth.elbo_diagonal(x, loc, scale).detach()
    # The closed form itself agrees with log p(x) - KL(q || exact posterior).
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    via_kl = truth.log_marginal(x) - torch.distributions.kl_divergence(q, truth.posterior(x))
    torch.testing.assert_close(closed, via_kl.detach(), rtol=0, atol=1e-9)

    pyro.set_rng_seed(seed)
    k = 4000
    log_w = log_importance_weights(vae.model, vae.guide, x, k).detach()
    per_point, per_point_se = mean_and_stderr(log_w)
    z = (per_point - closed) / per_point_se
    assert z.abs().max() < 4.5, z
    # Pyro's own vectorized Trace_ELBO on the same model/guide: the batch sum.
    elbo = Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    estimate = -elbo.loss(vae.model, vae.guide, x)
    se = (per_point_se**2).sum().sqrt().item()
    assert abs(estimate - closed.sum().item()) < 4 * se


def test_chunking_does_not_change_the_estimate():
    truth = random_truth(5, 2, 4)
    x = truth.sample(30, torch.Generator().manual_seed(1))
    vae = linear_vae(truth)
    pyro.set_rng_seed(5)
    a = estimate_log_likelihood(vae.model, vae.guide, x, k=200, chunk_pairs=10**6, progress=False)
    pyro.set_rng_seed(5)
    log_w = log_importance_weights(vae.model, vae.guide, x, 200)
    direct = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(200.0, dtype=torch.float64))
    torch.testing.assert_close(a.per_point_log_px, direct, rtol=0, atol=1e-9)
    # Small chunks (particles split across chunks) estimate the same quantity.
    b = estimate_log_likelihood(vae.model, vae.guide, x, k=200, chunk_pairs=64, progress=False)
    assert abs(a.log_px - b.log_px) < 4 * (a.log_px_stderr**2 + b.log_px_stderr**2) ** 0.5
    assert b.n == 30 and b.k == 200


def test_bad_k_and_empty_data_are_clear_errors():
    truth = random_truth(3, 1, 0)
    vae = linear_vae(truth)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        estimate_log_likelihood(vae.model, vae.guide, torch.zeros(2, 3, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="empty"):
        estimate_log_likelihood(vae.model, vae.guide, torch.zeros(0, 3, dtype=torch.float64), 5)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(B, 3\)"):
        estimate_log_likelihood(vae.model, vae.guide, torch.zeros(4, 5, dtype=torch.float64), 5)


def test_exact_guide_gap_is_the_kl_to_the_posterior():
    """``exact_guide_gap``: log p(x) - ELBO of a linear-Gaussian VAE's guide, in closed form
    for the Gaussian families (the KL from q to the exact posterior), by Monte Carlo for a flow
    (its mean within its error), ``None`` for a model without an exact log p(x)."""
    from pyrovae import VAEConfig, build_vae
    from pyrovae.evaluation.truth import exact_guide_gap

    from helpers import linear_vae, random_truth

    truth = random_truth(4, 2, seed=3)
    x = truth.sample(50, torch.Generator().manual_seed(3))
    for guide in ("diagonal-gaussian", "full-rank"):
        vae = linear_vae(truth, guide)
        with torch.no_grad():
            q = vae.guide_family(vae.encoder(x))
            tril = q.scale_tril if guide == "full-rank" else torch.diag_embed(q.base_dist.scale)
            kl = truth.kl_to_posterior(x, q.mean, tril)
        torch.testing.assert_close(exact_guide_gap(vae, x), kl, rtol=1e-9, atol=1e-9)
    vae = linear_vae(truth, "flow")
    with torch.no_grad():
        log_w = vae.particles(x, None, 4000, None).log_w
    gap = exact_guide_gap(vae, x, particles=4000)
    mc = (truth.log_marginal(x) - log_w.mean(0)).mean()
    assert abs(gap.mean() - mc) < 4 * log_w.std(0).mean() / 4000**0.5 * 2
    assert gap.min() > 0
    assert exact_guide_gap(build_vae(VAEConfig(x_dim=4, z_dim=2)), x.float()) is None
