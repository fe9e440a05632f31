"""The ELBO taken apart and the collapse diagnostics (``pyrovae.evaluation.latents``) against
cases whose answers are known: a linear-Gaussian model with its exact posterior as the guide
(the aggregate posterior is then the prior), a guide with dimensions collapsed by construction,
and a mixture prior's marginals against torch's own mixture."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae.evaluation.latents import _marginals, latent_diagnostics
from pyrovae.parts.distributions import DiagonalGaussianMixture

from programs import LinearGaussianProgram


def _model_data(program: LinearGaussianProgram, n: int) -> torch.Tensor:
    cov = program.W @ program.W.T + (2 * program.log_sigma).exp() * torch.eye(program.x_dim)
    return dist.MultivariateNormal(program.b, covariance_matrix=cov).sample((n,)).detach()


def test_with_the_exact_posterior_the_mutual_information_is_the_rate_and_the_marginal_kl_zero():
    """q(z | x) = p(z | x) on data from the model: q(z) = p(z), so KL(q(z) ‖ p(z)) = 0 and
    I_q(x; z) = E_x KL(p(z | x) ‖ p(z)) = -½ log det S, S the posterior covariance (the same
    for every x). N = 2000 points, 4 draws each; the estimator of q(z) is biased up by O(1/N)."""
    torch.manual_seed(0)
    exact = LinearGaussianProgram(exact=True)
    x = _model_data(exact, 2000)
    d = latent_diagnostics((exact.model, exact.guide), x, samples=4)
    _, tril = exact.posterior(x[:1])
    truth = -tril.diagonal().log().sum().item()
    assert d.mutual_information == pytest.approx(truth, abs=0.08)
    assert 0 <= d.marginal_kl < 0.03
    assert d.rate == pytest.approx(d.mutual_information + d.marginal_kl, abs=1e-9)
    assert d.mutual_information < d.to_dict()["mutual_information_cap"] == math.log(2000)
    # Every weight is p(x): the ELBO, -distortion - rate, is the mean exact log p(x).
    assert d.elbo == pytest.approx(exact.exact_log_px(x).mean().item(), abs=1e-6)
    # Cov_x E[z | x] = I - S for the exact posterior: both units active.
    cov = tril @ tril.T
    torch.testing.assert_close(d.activity, 1 - cov.diagonal().detach(), atol=0.08, rtol=0)
    assert d.active == 2 and not d.collapsed


class Collapsing(nn.Module):
    """z ~ N(0, I_4), x | z ~ N(W z, I); the guide N(m(x), diag s²) with its last ``dead``
    dimensions at the prior, N(0, 1), whatever x."""

    def __init__(self, dead: int):
        super().__init__()
        self.dead = dead
        self.W = torch.randn(6, 4, dtype=torch.float64)
        self.A = torch.randn(4, 6, dtype=torch.float64) * 0.3

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(4), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, 1.0).to_event(1), obs=x)

    def guide(self, x):
        loc = x @ self.A.T
        scale = torch.full_like(loc, 0.4)
        loc[:, 4 - self.dead :], scale[:, 4 - self.dead :] = 0.0, 1.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_collapsed_dimensions_have_no_kl_and_are_inactive_and_the_kl_sums_to_the_rate():
    torch.manual_seed(1)
    x = torch.randn(800, 6, dtype=torch.float64) * 2
    # One unit in use is not collapse; none is.
    for dead, collapsed in ((1, False), (3, False), (4, True)):
        program = Collapsing(dead)
        d = latent_diagnostics((program.model, program.guide), x, samples=8)
        assert d.kl_per_dim_method == "closed form"
        assert (d.kl_per_dim[4 - dead :] == 0).all() and (d.kl_per_dim[: 4 - dead] > 0.1).all()
        assert (d.activity[4 - dead :] == 0).all() and d.active == 4 - dead
        assert d.collapsed is collapsed
        # Σ_u KL_u is E_n KL(q ‖ p) in closed form (a diagonal q, a standard p); the rate is
        # its Monte Carlo estimate over the same draws, within 4 standard errors.
        exact = d.kl_per_dim.sum().item()
        assert d.rate == pytest.approx(exact, abs=4 * 1.5 / math.sqrt(800 * 8))


def test_a_mixture_priors_coordinate_marginals_are_torchs_one_dimensional_mixtures():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, generator=g)
    loc, scale = torch.randn(5, 3, generator=g), torch.rand(5, 3, generator=g) + 0.3
    z = torch.randn(7, 3, generator=g)
    for prior in (
        DiagonalGaussianMixture(logits, loc, scale).expand((4,)),
        dist.MixtureSameFamily(
            dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
        ).expand((4,)),
    ):
        got = _marginals(prior)(z)  # (7, 3)
        for u in range(3):
            one = dist.MixtureSameFamily(
                dist.Categorical(logits=logits), dist.Normal(loc[:, u], scale[:, u])
            )
            torch.testing.assert_close(got[:, u], one.log_prob(z[:, u]))


def test_a_vampprior_model_gets_its_kl_per_dimension_by_monte_carlo():
    from pyrovae import VAEConfig, build_vae

    torch.manual_seed(3)
    vae = build_vae(VAEConfig(x_dim=12, z_dim=3, hidden=[8], prior="vampprior",
                              prior_options={"components": 4}))  # fmt: skip
    x = torch.rand(300, 12).round()
    d = latent_diagnostics(vae, x, samples=2)
    assert d.kl_per_dim_method == "Monte Carlo" and d.kl_per_dim.shape == (3,)
    assert d.rate == pytest.approx(d.mutual_information + d.marginal_kl, abs=1e-6)


def test_a_guide_with_two_latents_or_a_discrete_one_is_refused_naming_them():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("b", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"this guide has 2 \(a, b\)"):
        latent_diagnostics((model, model), torch.zeros(3, 2))

    def discrete(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(x.new_full((2,), 0.5)).to_event(1))

    with pytest.raises(ValueError, match="'c' continuous"):
        latent_diagnostics((discrete, discrete), torch.zeros(3, 2))
