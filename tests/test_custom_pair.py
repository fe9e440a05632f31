"""A user's own Pyro model/guide pair goes through the same trainer, evaluator and estimators as
the library's VAE: the documentation's hand-written VAE with two stochastic layers trains with every
estimator that applies to it, resumes exactly and evaluates; and on a two-layer
linear-Gaussian pair with its exact posterior as the guide, the traced log weights equal the
exact log p(x) and the hierarchical STL guide gradient is exactly zero."""

import math
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import (
    ESTIMATORS,
    TrainConfig,
    estimate_log_likelihood,
    log_importance_weights,
    make_estimator,
    train,
)
from pyrovae.cli import main
from pyrovae.data import Dataset
from pyrovae.producers import applies, make_producer
from pyrovae.training import estimate_and_backward, load_pair_state

from helpers import docs_example


def docs_two_layer_vae():
    """The ``TwoLayerVAE`` class as the documentation defines it (docs/guides/own-program.md)."""
    namespace = {}
    exec(compile(docs_example("class TwoLayerVAE("), "own-program.md", "exec"), namespace)
    return namespace["TwoLayerVAE"]


TwoLayerVAE = docs_two_layer_vae()


def toy_data(x_dim=20):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(x_dim, generator=g)
    splits = [torch.bernoulli(probs.expand(n, x_dim), generator=g) for n in (300, 100, 100)]
    return Dataset("toy", *splits, binary=True)


def small_net():
    torch.manual_seed(0)
    return TwoLayerVAE(x_dim=20, z1=4, z2=2)


def config(**kw):
    base = dict(dataset="toy", epochs=2, batch_size=50, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


SPECS = [(n, o) for n in ESTIMATORS.names() for o in ESTIMATORS.get(n).variants()]


def test_the_two_layer_vae_trains_with_every_estimator_that_applies(tmp_path):
    data = toy_data()
    trained = set()
    for name, options in SPECS:
        net = small_net()
        est = make_estimator(name, **options)
        if not applies(make_producer((net.model, net.guide)), est, data.train[:50]):
            continue
        result = train(
            config(estimator=name, estimator_options=options),
            data=data,
            model=(net.model, net.guide),
            run_dir=tmp_path / est.spec.replace(":", "-"),
            progress=False,
        )
        assert result.vae is None and result.producer == "traced"
        assert all(math.isfinite(m["valid_elbo"]) for m in result.metrics)
        trained.add(est.spec)
    # Written for one latent layer, these two refuse a hierarchical guide, with a reason.
    assert trained == {s.spec for s in map(lambda c: make_estimator(c[0], **c[1]), SPECS)} - {
        "analytic-kl",
        "dreg",
    }
    net = small_net()
    with pytest.raises(ValueError, match="'dreg' estimator does not apply.*one latent layer"):
        train(config(estimator="dreg"), data=data, model=(net.model, net.guide),
              run_dir=tmp_path / "refused", progress=False)  # fmt: skip
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    "estimator,options", [("iwae", {}), ("score-function", {"baseline": "neural"})]
)
def test_the_two_layer_vae_resumes_exactly(tmp_path, estimator, options):
    data = toy_data()
    net = small_net()
    cfg = config(estimator=estimator, estimator_options=options, epochs=3)
    straight = train(cfg, data=data, model=(net.model, net.guide), run_dir=tmp_path / "a",
                     progress=False)  # fmt: skip
    first = small_net()
    train(config(estimator=estimator, estimator_options=options, epochs=1), data=data,
          model=(first.model, first.guide), run_dir=tmp_path / "b", progress=False)  # fmt: skip
    again = small_net()  # rebuilt, as a user resuming in a new process would
    with torch.no_grad():
        for p in again.parameters():
            p.mul_(0.5)  # the checkpoint, not the construction, sets the parameters
    resumed = train(config(epochs=3), data=data, model=(again.model, again.guide),
                    run_dir=tmp_path / "b", resume=True, progress=False)  # fmt: skip
    for (name, a), b in zip(net.named_parameters(), again.parameters()):
        assert torch.equal(a, b), name
    assert [m["valid_elbo"] for m in straight.metrics] == [m["valid_elbo"] for m in resumed.metrics]
    with pytest.raises(ValueError, match=r"pass it again as model=\(model, guide\)"):
        train(config(epochs=4), data=data, run_dir=tmp_path / "b", resume=True, progress=False)


def test_the_two_layer_vae_evaluates_and_loads_from_its_run(tmp_path, capsys):
    data = toy_data()
    net = small_net()
    train(config(estimator="iwae"), data=data, model=(net.model, net.guide),
          run_dir=tmp_path / "run", progress=False)  # fmt: skip
    pyro.set_rng_seed(0)
    res = estimate_log_likelihood(net.model, net.guide, data.test, k=200, progress=False)
    assert math.isfinite(res.log_px) and res.elbo < res.log_px < 0
    loaded = small_net()
    state = load_pair_state(tmp_path / "run", loaded.model, loaded.guide, data.test[:5], "last")
    assert state["epoch"] == 2
    for a, b in zip(net.parameters(), loaded.parameters()):
        assert torch.equal(a, b)
    pyro.set_rng_seed(0)
    again = estimate_log_likelihood(loaded.model, loaded.guide, data.test, k=200, progress=False)
    assert again.log_px == res.log_px
    # The command line cannot rebuild a user's code: it says so and how to evaluate instead.
    assert main(["evaluate", str(tmp_path / "run")]) == 2
    assert "model/guide pair of your own" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run")


class TwoLayerLinearGaussian:
    """z2 ~ N(0, 1), z1 | z2 ~ N(α z2 + a, s1²), x | z1 ~ N(w z1 + b, diag σ²), x 3-D; its guide
    q(z1 | x) q(z2 | z1) has pyro.param parameters, set to the exact posterior
    p(z1 | x) p(z2 | z1) (x is independent of z2 given z1)."""

    alpha, a, s1 = 1.5, 0.3, 0.7
    w = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    b = torch.tensor([0.2, 0.0, -1.0], dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 0.8], dtype=torch.float64)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(()), 1.0))
            z1 = pyro.sample("z1", dist.Normal(self.alpha * z2 + self.a, self.s1))
            mean = z1.unsqueeze(-1) * self.w + self.b
            pyro.sample("x", dist.Normal(mean, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        g1, c1 = pyro.param("g1", self.g1.clone()), pyro.param("c1", self.c1.clone())
        g2, c2 = pyro.param("g2", self.g2.clone()), pyro.param("c2", self.c2.clone())
        s1 = pyro.param("q_s1", self.q_s1.clone(), constraint=dist.constraints.positive)
        s2 = pyro.param("q_s2", self.q_s2.clone(), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x @ g1 + c1, s1))
            pyro.sample("z2", dist.Normal(g2 * z1 + c2, s2))

    def __init__(self):
        m1, v1 = self.a, self.alpha**2 + self.s1**2  # the marginal of z1
        precision1 = 1 / v1 + (self.w**2 / self.sigma**2).sum()
        self.g1 = self.w / self.sigma**2 / precision1
        self.c1 = (m1 / v1 - (self.w * self.b / self.sigma**2).sum()) / precision1
        self.q_s1 = precision1**-0.5
        precision2 = 1 + self.alpha**2 / self.s1**2
        self.g2 = torch.tensor(self.alpha / self.s1**2 / precision2, dtype=torch.float64)
        self.c2 = torch.tensor(-self.alpha * self.a / self.s1**2 / precision2, dtype=torch.float64)
        self.q_s2 = torch.tensor(precision2**-0.5, dtype=torch.float64)
        cov = v1 * torch.outer(self.w, self.w) + torch.diag(self.sigma**2)
        self.marginal = torch.distributions.MultivariateNormal(self.w * m1 + self.b, cov)


def test_two_layer_exact_guide_gives_exact_log_weights_and_zero_variance_stl():
    pair = TwoLayerLinearGaussian()
    x = pair.marginal.sample((6,))
    exact = pair.marginal.log_prob(x)
    log_w = log_importance_weights(pair.model, pair.guide, x, k=50)
    torch.testing.assert_close(log_w, exact.expand(50, 6), rtol=0, atol=1e-9)
    producer = make_producer((pair.model, pair.guide))
    spread = {}
    for name in ("stl", "pathwise"):
        est = make_estimator(name)
        draws = []
        for _ in range(30):
            pyro.get_param_store().clear()
            pair.guide(x)  # the exact guide again
            estimate_and_backward(producer, est, x, None)
            store = pyro.get_param_store()
            draws.append(torch.stack([store[n].unconstrained().grad.sum() for n in store.keys()]))
        spread[name] = torch.stack(draws).std(0).max().item()
    assert spread["stl"] < 1e-10 < 0.05 < spread["pathwise"], spread
