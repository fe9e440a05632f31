"""Every named estimator against exact gradients on a linear-Gaussian model, and the properties
that define them: zero-variance guide gradients at the posterior (STL, DReG) and the variance
that baselines remove from the score-function estimator."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyrovae import ESTIMATORS, LinearGaussian, make_estimator
from pyrovae.elbos import VIMCO_ELBO

from helpers import (
    guide_params,
    imperfect_linear_vae,
    linear_vae,
    mean_and_stderr,
    random_truth,
    set_mean_field_guide,
)

K = 5  # particles of the K-sample bounds


def _setup():
    return imperfect_linear_vae()


def _flat_grads(vae):
    return torch.cat([p.grad.reshape(-1).clone() for p in vae.parameters()])


def elbo_gradient(vae, x):
    """Gradient of minus the closed-form ELBO, summed over the batch."""
    dec = vae.decoder[0]
    model = LinearGaussian.standard(dec.weight, dec.bias, vae.likelihood.noise_variance())
    loc, scale = guide_params(vae, x)
    loss = -model.elbo_diagonal(x, loc, scale).sum()
    grads = torch.autograd.grad(loss, list(vae.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def bound_gradient_brute_force(vae, x, k=K, draws=200_000, chunks=20):
    """Gradient of minus the K-sample bound summed over the batch, by autograd of its average
    over ``draws`` common reparameterized draws, computed from closed-form densities without
    Pyro. Returns (mean, standard error) over ``chunks`` independent parts."""
    g = torch.Generator().manual_seed(1234)
    dec = vae.decoder[0]
    parts = []
    for _ in range(chunks):
        m = draws // chunks
        loc, scale = guide_params(vae, x)  # (B, Dz)
        eps = torch.randn((m, k) + loc.shape, generator=g, dtype=loc.dtype)
        z = loc + scale * eps
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        mean = dec(z)
        std = vae.likelihood.noise_variance().sqrt()
        log_lik = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
        log_w = log_prior + log_lik - log_q  # (m, k, B)
        bound = torch.logsumexp(log_w, 1) - math.log(k)  # (m, B)
        loss = -bound.sum(-1).mean()
        grads = torch.autograd.grad(loss, list(vae.parameters()))
        parts.append(torch.cat([gr.reshape(-1) for gr in grads]))
    return mean_and_stderr(torch.stack(parts))


def estimator_draws(vae, x, name, repeats, copies, **options):
    """``repeats`` gradient estimates of minus the objective summed over the batch, each the
    average of ``copies`` independent estimates (the batch repeated ``copies`` times inside the
    data plate, which the K-sample bounds need, or ``num_particles`` for the ELBO ones)."""
    bound = name in ("iwae", "dreg", "vimco")
    if bound:
        est = make_estimator(name, num_particles=K, **options)
        data = x.repeat(copies, 1)
    else:
        est = make_estimator(name, num_particles=copies, **options)
        data = x
    vae.reparameterized = est.reparameterized
    guide = est.wrap_guide(vae.guide)
    out = []
    for _ in range(repeats):
        vae.zero_grad(set_to_none=False)
        for p in vae.parameters():
            p.grad = torch.zeros_like(p)
        est.elbo.loss_and_grads(vae.model, guide, data)
        out.append(_flat_grads(vae) / (copies if bound else 1))
    vae.reparameterized = True
    return torch.stack(out)


ELBO_CASES = [
    ("pathwise", {}),
    ("analytic-kl", {}),
    ("stl", {}),
    ("score-function", {"baseline": "neural"}),
]
BOUND_CASES = [("iwae", {}), ("dreg", {}), ("vimco", {})]


def test_every_registered_estimator_is_tested():
    tested = {name for name, _ in ELBO_CASES + BOUND_CASES} | {"score-function"}
    assert tested == set(ESTIMATORS.names())


@pytest.mark.parametrize("name,options", ELBO_CASES)
def test_elbo_estimators_match_the_analytic_gradient(name, options):
    vae, x = _setup()
    exact = elbo_gradient(vae, x)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    mean, se = mean_and_stderr(estimator_draws(vae, x, name, 40, 5000, **options))
    assert se.max() < 0.05 * exact.abs().max()  # tight enough to catch a wrong gradient
    z = (mean - exact) / se
    assert z.abs().max() < 4.5, z


@pytest.mark.parametrize("name,options", BOUND_CASES)
def test_bound_estimators_match_the_brute_force_gradient(name, options):
    vae, x = _setup()
    truth, truth_se = bound_gradient_brute_force(vae, x)
    # ... which differs from the ELBO's gradient: the test tells the objectives apart.
    elbo = elbo_gradient(vae, x)
    assert ((truth - elbo).abs() / truth_se).max() > 20
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    copies = 2000 if name != "vimco" else 8000
    mean, se = mean_and_stderr(estimator_draws(vae, x, name, 40, copies, **options))
    assert se.max() < 0.05 * truth.abs().max()
    z = (mean - truth) / (se**2 + truth_se**2).sqrt()
    assert z.abs().max() < 4.5, z


def test_bound_loss_is_the_per_point_bound_scaled_for_subsampling():
    vae, x = _setup()
    est = make_estimator("iwae", num_particles=3)
    pyro.set_rng_seed(0)
    full = est.elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    scaled = est.elbo.loss(vae.model, vae.guide, x, 40)
    assert scaled == pytest.approx(10 * full, rel=1e-12)
    pyro.set_rng_seed(0)
    diff = est.elbo.differentiable_loss(vae.model, vae.guide, x, 40)
    assert diff.item() == pytest.approx(scaled, rel=1e-12) and diff.requires_grad


def test_vimco_leave_one_out_bounds():
    log_w = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    got = VIMCO_ELBO.leave_one_out_bounds(log_w)[:, 0]
    for k in range(3):
        others = [v for j, v in enumerate([0.0, 1.0, 3.0]) if j != k]
        replaced = [sum(others) / 2 if j == k else v for j, v in enumerate([0.0, 1.0, 3.0])]
        expected = math.log(sum(math.exp(v) for v in replaced) / 3)
        assert got[k].item() == pytest.approx(expected, rel=1e-12)


def _guide_grad_spread(name, draws=200):
    """Across independent single-batch estimates at the exact posterior: the largest standard
    deviation of a guide-parameter gradient, and of a decoder-parameter gradient."""
    truth = random_truth(3, 1, 11)  # one latent: the mean-field guide can be exact
    x = truth.sample(6, torch.Generator().manual_seed(4))
    vae = linear_vae(truth)
    set_mean_field_guide(vae, truth)
    pyro.set_rng_seed(3)
    g = estimator_draws(vae, x, name, draws, 1)
    n_enc = sum(p.numel() for p in vae.encoder.parameters())
    std = g.std(0)
    return std[:n_enc].max().item(), std[n_enc:].max().item()


@pytest.mark.parametrize("name", ["stl", "dreg"])
def test_stl_and_dreg_guide_gradients_have_zero_variance_at_the_posterior(name):
    guide_std, decoder_std = _guide_grad_spread(name)
    assert guide_std < 1e-10
    assert decoder_std > 1e-3  # the decoder's gradient is still random
    pathwise_guide_std, _ = _guide_grad_spread("pathwise")
    assert pathwise_guide_std > 0.1


def _encoder_variance(vae, x, est, draws=400, warmup=0):
    vae.reparameterized = est.reparameterized
    guide = est.wrap_guide(vae.guide)
    n_enc = sum(p.numel() for p in vae.encoder.parameters())
    for _ in range(warmup):  # lets a decaying average settle at fixed parameters
        est.elbo.loss_and_grads(vae.model, guide, x)
    out = []
    for _ in range(draws):
        for p in vae.parameters():
            p.grad = None
        est.elbo.loss_and_grads(vae.model, guide, x)
        out.append(_flat_grads(vae)[:n_enc])
    vae.reparameterized = True
    return torch.stack(out).var(0).sum().item()


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
def test_baselines_reduce_the_score_function_variance():
    """With a near-optimal guide (as after training), measured on this model: the decaying
    average cuts the total encoder-gradient variance by 20x and the trained neural baseline
    by 41x; the test asks for 8x and 15x."""
    truth = random_truth(3, 2, 5)
    x = truth.sample(4, torch.Generator().manual_seed(3))
    vae = linear_vae(truth)
    set_mean_field_guide(vae, truth, inflate=1.2)  # near the optimum, as after training
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    none = _encoder_variance(vae, x, make_estimator("score-function", baseline="none"))
    pyro.clear_param_store()
    est = make_estimator("score-function", baseline="decaying-average")
    average = _encoder_variance(vae, x, est, warmup=100)
    # The neural baseline learns b(x) while the VAE stays fixed (its parameters frozen).
    pyro.clear_param_store()
    est = make_estimator("score-function", baseline="neural")
    vae.reparameterized = False
    for p in vae.parameters():
        p.requires_grad_(False)
    svi = SVI(vae.model, est.wrap_guide(vae.guide), pyro.optim.Adam({"lr": 0.05}), est.elbo)
    for _ in range(300):
        svi.step(x)
    for p in vae.parameters():
        p.requires_grad_(True)
    neural = _encoder_variance(vae, x, est)
    assert none / average > 8, (none, average)
    assert none / neural > 15, (none, neural)


@pytest.mark.parametrize("name", sorted(ESTIMATORS.names()))
def test_every_estimator_has_loss_grads_and_differentiable_loss(name):
    """The three entry points agree under the same random numbers: ``loss`` and the value of
    ``differentiable_loss`` are the same estimate, and the gradient of ``differentiable_loss``
    is what ``loss_and_grads`` leaves in ``.grad`` (so a plain torch.optim loop and SVI take the
    same step)."""
    vae, x = _setup()
    est = make_estimator(name)
    vae.reparameterized = est.reparameterized
    guide = est.wrap_guide(vae.guide)
    r = repr(est)
    assert name in r and "objective" in r and "gradient" in r
    assert ("K-sample" in r) == (name in ("iwae", "dreg", "vimco"))
    pyro.clear_param_store()
    guide(x, 40)  # a neural baseline takes its input width from the first batch
    pyro.set_rng_seed(0)
    loss = est.elbo.loss(vae.model, guide, x, 40)
    pyro.clear_param_store()
    guide(x, 40)
    pyro.set_rng_seed(0)
    diff = est.elbo.differentiable_loss(vae.model, guide, x, 40)
    assert diff.item() == pytest.approx(loss, rel=1e-9)
    grads = torch.autograd.grad(diff, list(vae.parameters()))
    pyro.clear_param_store()
    guide(x, 40)
    pyro.set_rng_seed(0)
    for p in vae.parameters():
        p.grad = None
    assert est.elbo.loss_and_grads(vae.model, guide, x, 40) == pytest.approx(loss, rel=1e-9)
    for p, g in zip(vae.parameters(), grads):
        torch.testing.assert_close(p.grad, g)
