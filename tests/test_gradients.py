"""Gradients of the ELBO: score-function and pathwise estimators, averaged over many draws,
against the analytic gradient of the closed-form linear-Gaussian ELBO."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyrovae import LinearGaussian, make_estimator

from helpers import guide_params, imperfect_linear_vae, mean_and_stderr

REPEATS, PARTICLES = 40, 5000


def _setup():
    return imperfect_linear_vae()


def _params(vae):
    return dict(vae.named_parameters())


def analytic_gradient(vae, x):
    """Gradient of minus the closed-form ELBO (summed over the batch) by autograd."""
    dec = vae.decoder[0]
    model = LinearGaussian.standard(dec.weight, dec.bias, vae.likelihood.noise_variance())
    loc, scale = guide_params(vae, x)
    loss = -model.elbo_diagonal(x, loc, scale).sum()
    params = _params(vae)
    grads = torch.autograd.grad(loss, list(params.values()))
    return torch.cat([g.reshape(-1) for g in grads])


def sampled_gradients(vae, x, estimator_name, **options):
    """REPEATS independent gradient estimates, each averaging PARTICLES draws: (REPEATS, P)."""
    est = make_estimator(estimator_name, num_particles=PARTICLES, **options)
    vae.reparameterized = est.reparameterized
    guide = est.wrap_guide(vae.guide)
    params = list(_params(vae).values())
    out = []
    for _ in range(REPEATS):
        for p in params:
            p.grad = None
        est.elbo.loss_and_grads(vae.model, guide, x)
        out.append(torch.cat([p.grad.reshape(-1).clone() for p in params]))
    return torch.stack(out)


@pytest.mark.parametrize(
    "name,options",
    [
        ("pathwise", {}),
        ("score-function", {"baseline": "none"}),
        ("score-function", {"baseline": "decaying-average"}),
    ],
)
def test_mean_gradient_matches_analytic(name, options):
    vae, x = _setup()
    exact = analytic_gradient(vae, x)
    pyro.set_rng_seed(1)
    grads = sampled_gradients(vae, x, name, **options)
    mean, se = mean_and_stderr(grads)
    # The tolerance must be tight enough to catch a wrong gradient.
    assert se.max() < 0.05 * exact.abs().max()
    z = (mean - exact) / se
    assert z.abs().max() < 4.5, z


def test_score_function_and_pathwise_agree_with_each_other():
    vae, x = _setup()
    pyro.set_rng_seed(2)
    pw_mean, pw_se = mean_and_stderr(sampled_gradients(vae, x, "pathwise"))
    sf_mean, sf_se = mean_and_stderr(sampled_gradients(vae, x, "score-function", baseline="none"))
    z = (pw_mean - sf_mean) / (pw_se**2 + sf_se**2).sqrt()
    assert z.abs().max() < 4.5, z


def test_score_function_guide_is_not_reparameterized():
    vae, x = _setup()
    est = make_estimator("score-function")
    vae.reparameterized = est.reparameterized
    trace = pyro.poutine.trace(est.wrap_guide(vae.guide)).get_trace(x)
    site = trace.nodes["z"]
    assert not site["fn"].has_rsample
    assert not site["value"].requires_grad
    assert site["infer"]["baseline"]["use_decaying_avg_baseline"]
    vae.reparameterized = True
    trace = pyro.poutine.trace(vae.guide).get_trace(x)
    assert trace.nodes["z"]["fn"].has_rsample and trace.nodes["z"]["value"].requires_grad


def test_minibatch_plate_scales_the_loss():
    vae, x = _setup()
    pyro.set_rng_seed(0)
    full = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    scaled = Trace_ELBO().loss(vae.model, vae.guide, x, 40)
    assert scaled == pytest.approx(10 * full, rel=1e-12)
    with pytest.raises(ValueError, match="smaller than the batch"):
        Trace_ELBO().loss(vae.model, vae.guide, x, 2)


def test_estimator_repr_states_objective_and_gradient():
    r = repr(make_estimator("score-function", num_particles=3, baseline="none"))
    assert "ELBO" in r and "score function" in r and "baseline none" in r and "3 particles" in r
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        make_estimator("nope")
    with pytest.raises(ValueError, match="unknown baseline"):
        make_estimator("score-function", baseline="neural-net")
