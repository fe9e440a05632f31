"""Training schedules: the learning rate per epoch, and KL warm-up, whose gradient must be that of
E_q[log p(x|z)] - β KL(q ‖ p) for every estimator while the reported ELBO stays the true one."""

import json
import math

import pytest
import torch
from test_training import SMALL_MODEL, small_config
from torch.distributions import Normal

from pyrovae import TrainConfig, VAEConfig, train
from pyrovae.config import OptionError
from pyrovae.estimators import make_estimator
from pyrovae.particles import Particles
from pyrovae.training.schedule import iwae_stage, kl_weight, learning_rate


def test_the_iwae_schedule_has_3_to_the_i_epochs_per_stage():
    stages = [iwae_stage(e) for e in range(1, 3281)]
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert stages == sorted(stages) and iwae_stage(3281) == 8
    assert learning_rate(1e-3, "iwae", 1, 3280) == 1e-3
    assert learning_rate(1e-3, "iwae", 3280, 3280) == pytest.approx(1e-4)
    assert learning_rate(2e-3, "constant", 77, 100) == 2e-3


def test_cosine_falls_from_lr_towards_zero():
    rates = [learning_rate(1.0, "cosine", e, 10) for e in range(1, 11)]
    assert rates[0] == 1.0 and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[5] == pytest.approx(0.5) and 0 < rates[-1] < 0.03


def test_kl_weight_rises_linearly_over_the_warmup_epochs():
    assert [kl_weight(s, 2, 4) for s in (0, 1, 4, 7, 8, 100)] == [0, 0.125, 0.5, 0.875, 1, 1]
    assert kl_weight(0, 0, 4) == 1.0


# One data point x, prior N(0, 1), likelihood N(x | z, 1), guide N(μ, 1): then
# d/dμ (E_q[log p(x|z)] - β KL(q ‖ p)) = (x - μ) - β μ exactly.
X, MU = 1.5, 0.7


def _particles(mu, k, reparameterized, beta, seed=0):
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(k, 1, generator=g, dtype=torch.float64)
    z = mu + eps if reparameterized else (mu + eps).detach()
    q, prior = Normal(mu, 1.0), Normal(0.0, 1.0)
    p = Particles(
        x=torch.tensor([[X]], dtype=torch.float64),
        latents={"z": z.unsqueeze(-1)},
        scale=1.0,
        log_prior=prior.log_prob(z),
        log_lik=Normal(z, 1.0).log_prob(torch.tensor(X, dtype=torch.float64)),
        log_q=q.log_prob(z),
        log_q_stopped=Normal(mu.detach(), 1.0).log_prob(z),
        kl=torch.distributions.kl_divergence(q, prior).expand(k, 1),
    )
    p.kl_weight = beta
    return p


@pytest.mark.parametrize(
    "name,options,k",
    [
        ("pathwise", {}, 100_000),
        ("analytic-kl", {}, 100_000),
        ("stl", {}, 100_000),
        ("score-function", {"baseline": "none"}, 400_000),
    ],
)
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_warmup_gradient_is_that_of_the_weighted_elbo_and_the_loss_the_true_elbo(
    name, options, k, beta
):
    mu = torch.tensor(MU, dtype=torch.float64, requires_grad=True)
    est = make_estimator(name, k, **options)
    p = _particles(mu, k, est.reparameterized, beta)
    loss, surrogate = est(p, update_state=False)
    (grad,) = torch.autograd.grad(surrogate, mu)
    # The loss is minus the true ELBO's estimate (analytic-kl: with the closed-form KL).
    true_elbo = (p.log_lik - p.kl) if name == "analytic-kl" else p.log_w
    assert loss.item() == pytest.approx(-true_elbo.mean().item(), rel=1e-9)
    exact = (X - MU) - beta * MU
    # Monte Carlo error of each estimator's mean gradient: 5 standard errors.
    tolerance = 5 * (1.0 if name != "score-function" else 4.0) / math.sqrt(k)
    assert -grad.item() == pytest.approx(exact, abs=tolerance), (name, beta)


def _bound_particles(mu, k, b, reparameterized, beta, fold=1.0):
    """K particles of B copies of the point X; ``fold`` multiplies the prior's and guide's log
    densities."""
    p = _particles(mu, k * b, reparameterized, 1.0)

    def grid(t):
        return t.reshape(k, b)

    out = Particles(
        x=None,
        latents={"z": grid(p.latents["z"].squeeze(-1)).unsqueeze(-1)},
        scale=1.0,
        log_prior=fold * grid(p.log_prior),
        log_lik=grid(p.log_lik),
        log_q=fold * grid(p.log_q),
        log_q_stopped=fold * grid(p.log_q_stopped),
    )
    out.kl_weight = beta
    return out


@pytest.mark.parametrize("name,b", [("iwae", 3), ("dreg", 3), ("vimco", 50_000)])
def test_warmup_of_a_bound_differentiates_the_bound_of_the_weighted_weights(name, b):
    """With β < 1 the K-sample estimators report the true bound and follow the gradient of the
    bound over the weights p(x|z) (p(z)/q(z|x))^β: IWAE's and DReG's equal their gradient on
    particles whose prior and guide log densities are multiplied by β; VIMCO's (whose score
    ∇ log q is not weighted) equals IWAE's gradient of that bound in expectation."""
    beta, k = 0.4, 5
    mu = torch.tensor(MU, dtype=torch.float64, requires_grad=True)
    est = make_estimator(name, k)
    p = _bound_particles(mu, k, b, est.reparameterized, beta)
    loss, surrogate = est(p, update_state=False)
    (grad,) = torch.autograd.grad(surrogate, mu)
    true_bound = torch.logsumexp(p.log_w, 0) - math.log(k)
    assert loss.item() == pytest.approx(-true_bound.sum().item(), rel=1e-9)
    folded = _bound_particles(mu, k, b, True, 1.0, fold=beta)
    ref_est = make_estimator("iwae" if name == "vimco" else name, k)
    (ref,) = torch.autograd.grad(ref_est(folded, update_state=False)[1], mu)
    if name == "vimco":  # per data point, within Monte Carlo error
        assert grad.item() / b == pytest.approx(ref.item() / b, abs=0.03)
    else:
        assert grad.item() == pytest.approx(ref.item(), rel=1e-9)


def test_a_warmup_run_records_the_weight_and_learning_rate_of_each_epoch(tmp_path):
    cfg = small_config(epochs=4, warmup=2, lr_schedule="iwae")
    train(cfg, SMALL_MODEL, run_dir=tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = 300 // 50
    assert [r["kl_weight"] for r in rows] == [
        kl_weight(e * steps - 1, 2, steps) for e in range(1, 5)
    ]
    assert rows[-1]["kl_weight"] == 1.0 and rows[0]["kl_weight"] < 0.5
    assert [r["lr"] for r in rows] == [learning_rate(3e-3, "iwae", e, 4) for e in range(1, 5)]
    assert rows[0]["lr"] > rows[1]["lr"] == rows[3]["lr"]


def test_resume_may_change_the_lr_schedule_but_not_the_warmup(tmp_path):
    run = tmp_path / "run"
    train(small_config(epochs=2, warmup=1), SMALL_MODEL, run_dir=run, progress=False)
    with pytest.raises(OptionError, match="warmup"):
        train(run_dir=run, resume={"epochs": 3, "warmup": 3}, progress=False)
    train(run_dir=run, resume={"epochs": 3, "lr_schedule": "cosine"}, progress=False)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(learning_rate(3e-3, "cosine", 3, 3))


@pytest.mark.parametrize("bad", [{"warmup": -1}, {"warmup": 1.5}, {"lr_schedule": "linear"}])
def test_bad_schedule_options_are_refused(bad):
    with pytest.raises(OptionError):
        TrainConfig(**bad)
    assert VAEConfig()  # unchanged


def test_warmup_with_an_estimator_that_would_ignore_it_is_refused(tmp_path):
    """A user's estimator that does not declare ``supports_warmup`` would train the plain
    objective under --warmup without a word: refused before anything is written."""
    from pyrovae.estimators import ESTIMATORS, Estimator

    @ESTIMATORS.register("plain-elbo-test")
    class PlainELBO(Estimator):
        def forward(self, particles, update_state=True):
            loss = -particles.scale * particles.log_w.mean(0).sum()
            return loss, loss

    try:
        with pytest.raises(OptionError, match="does not support KL warm-up"):
            train(
                small_config(estimator="plain-elbo-test", warmup=1),
                SMALL_MODEL,
                run_dir=tmp_path / "run",
                progress=False,
            )
        assert not (tmp_path / "run").exists()
        train(
            small_config(estimator="plain-elbo-test"),
            SMALL_MODEL,
            run_dir=tmp_path / "ok",
            progress=False,
        )
    finally:
        del ESTIMATORS._entries["plain-elbo-test"]
