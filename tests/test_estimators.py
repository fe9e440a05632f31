"""Every named estimator against exact gradients on a linear-Gaussian model, and the properties
that define them: zero-variance guide gradients at the posterior (STL, DReG) and the variance
that baselines remove from the score-function estimator. Gradients are taken as a training
step takes them (the producer training uses, then the estimator)."""

import copy
import math

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyrovae import ESTIMATORS, LinearGaussian, make_estimator
from pyrovae.estimators import BOUND_OBJECTIVE, ELBO_OBJECTIVE
from pyrovae.estimators.bounds import leave_one_out_bounds

from helpers import (
    gradient_draws,
    guide_params,
    imperfect_linear_vae,
    linear_vae,
    mean_and_stderr,
    random_truth,
    set_mean_field_guide,
)

K = 5  # particles of the K-sample bounds

CASES = [
    (name, options) for name in ESTIMATORS.names() for options in ESTIMATORS.get(name).variants()
]


def _id(case):
    name, options = case
    return name + "".join(f":{k}={v}" for k, v in options.items())


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
    average of ``copies`` independent estimates (the batch repeated ``copies`` times, which
    the K-sample bounds need, or ``num_particles`` for the ELBO ones)."""
    if ESTIMATORS.get(name).objective == BOUND_OBJECTIVE:
        est = make_estimator(name, num_particles=K, **options)
        return gradient_draws(vae, x.repeat(copies, 1), est, repeats) / copies
    est = make_estimator(name, num_particles=copies, **options)
    return gradient_draws(vae, x, est, repeats)


def test_every_registered_estimator_has_a_known_objective():
    """The gradient test below knows the exact answer for these objectives; an estimator of
    another objective needs its own truth here."""
    for name, _ in CASES:
        assert ESTIMATORS.get(name).objective in (ELBO_OBJECTIVE, BOUND_OBJECTIVE), name


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_estimator_matches_the_exact_gradient_of_its_objective(case):
    """ELBO estimators against autograd of the closed-form ELBO (40 x 5000 draws); K-sample
    bound estimators against a brute-force gradient of the bound written without Pyro (200k
    common draws), which the test first shows differs from the ELBO's."""
    name, options = case
    vae, x = imperfect_linear_vae()
    pyro.set_rng_seed(1)
    if ESTIMATORS.get(name).objective == ELBO_OBJECTIVE:
        truth, truth_se = elbo_gradient(vae, x), 0.0
        mean, se = mean_and_stderr(estimator_draws(vae, x, name, 40, 5000, **options))
    else:
        truth, truth_se = bound_gradient_brute_force(vae, x)
        assert ((truth - elbo_gradient(vae, x)).abs() / truth_se).max() > 20
        copies = 8000 if name == "vimco" else 2000
        mean, se = mean_and_stderr(estimator_draws(vae, x, name, 40, copies, **options))
    assert se.max() < 0.05 * truth.abs().max()  # tight enough to catch a wrong gradient
    z = (mean - truth) / (se**2 + truth_se**2) ** 0.5
    assert z.abs().max() < 4.5, z


def test_bound_loss_is_the_per_point_bound_scaled_for_subsampling():
    vae, x = imperfect_linear_vae()
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
    got = leave_one_out_bounds(log_w)[:, 0]
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
    g = gradient_draws(vae, x, make_estimator(name), draws)
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
    from pyrovae.producers import make_producer

    n_enc = sum(p.numel() for p in vae.encoder.parameters())
    est.prepare(x)
    route = make_producer(vae)
    with torch.no_grad():  # lets a decaying average settle at fixed parameters
        for _ in range(warmup):
            est(route(x, None, est.num_particles, est.reparameterized))
    return gradient_draws(vae, x, est, draws)[:, :n_enc].var(0).sum().item()


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
def test_baselines_reduce_the_score_function_variance():
    """With a near-optimal guide (as after training), measured on this model over six seeds:
    the decaying average cuts the total encoder-gradient variance by 17-34x and the trained
    neural baseline by 21-30x; the test asks for 8x and 15x. The neural baseline is trained
    (Adam 0.01, 600 steps, where its fit has settled) through pyro.infer.SVI and the
    estimator's ELBO view, with the VAE frozen."""
    truth = random_truth(3, 2, 5)
    x = truth.sample(4, torch.Generator().manual_seed(3))
    vae = linear_vae(truth)
    set_mean_field_guide(vae, truth, inflate=1.2)  # near the optimum, as after training
    pyro.set_rng_seed(5)
    none = _encoder_variance(vae, x, make_estimator("score-function", baseline="none"))
    est = make_estimator("score-function", baseline="decaying-average").double()
    average = _encoder_variance(vae, x, est, warmup=100)
    est = make_estimator("score-function", baseline="neural").double()
    for p in vae.parameters():
        p.requires_grad_(False)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), est.elbo)
    for _ in range(600):
        svi.step(x)
    for p in vae.parameters():
        p.requires_grad_(True)
    neural = _encoder_variance(vae, x, est)
    assert none / average > 8, (none, average)
    assert none / neural > 15, (none, neural)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_estimator_has_loss_grads_and_differentiable_loss(case):
    """The ``pyro.infer.ELBO`` view's three entry points agree under the same random numbers:
    ``loss`` and the value of ``differentiable_loss`` are the same estimate, and the gradient
    of ``differentiable_loss`` is what ``loss_and_grads`` leaves in ``.grad`` (so a plain
    torch.optim loop and SVI take the same step); and the trainer's step computes the same."""
    from pyrovae.producers import make_producer
    from pyrovae.training import estimate_and_backward

    name, options = case
    vae, x = imperfect_linear_vae()
    base = make_estimator(name, **options).double()
    base.prepare(x)
    r = repr(base)
    assert name in r and "objective" in r and "gradient" in r
    assert ("K-sample" in r) == (base.objective == BOUND_OBJECTIVE)

    def fresh():  # the same estimator state for every route
        pyro.set_rng_seed(0)
        for p in vae.parameters():
            p.grad = None
        return copy.deepcopy(base)

    def params(est):  # the model's and the estimator's own (a neural baseline's)
        return list(vae.parameters()) + list(est.parameters())

    loss = fresh().elbo.loss(vae.model, vae.guide, x, 40)
    est = fresh()
    diff = est.elbo.differentiable_loss(vae.model, vae.guide, x, 40)
    assert diff.item() == pytest.approx(loss, rel=1e-9)
    grads = torch.autograd.grad(diff, params(est))
    est = fresh()
    assert est.elbo.loss_and_grads(vae.model, vae.guide, x, 40) == pytest.approx(loss, rel=1e-9)
    for p, g in zip(params(est), grads):
        torch.testing.assert_close(p.grad, g)
    est = fresh()
    step_loss = estimate_and_backward(make_producer(vae), est, x, 40)
    assert step_loss == pytest.approx(loss, rel=1e-9)
    for p, g in zip(params(est), grads):
        torch.testing.assert_close(p.grad, g)


def test_estimator_repr_and_option_errors():
    r = repr(make_estimator("score-function", num_particles=3, baseline="none"))
    assert "ELBO" in r and "score function" in r and "baseline none" in r and "3 particles" in r
    assert make_estimator("score-function", baseline="neural").spec == (
        "score-function:baseline=neural"
    )
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        make_estimator("nope")
    with pytest.raises(ValueError, match="unknown baseline"):
        make_estimator("score-function", baseline="neural-net")
    with pytest.raises(ValueError, match="unknown option.*'k'.*num_particles"):
        make_estimator("iwae", k=3)
    with pytest.raises(ValueError, match="at least 2 particles"):
        make_estimator("vimco", num_particles=1)
    with pytest.raises(ValueError, match="at least 1"):
        make_estimator("pathwise", num_particles=0)
