"""Priors against known truth: every density integrates to 1, the VampPrior is the mixture of
the guide's posteriors at its pseudo-inputs, the flow prior obeys the change of variables, and
the fast mixture density equals Pyro's ``MixtureSameFamily``."""

import math

import pyro.distributions as dist
import pytest
import torch

from pyrovae import VAEConfig, build_vae
from pyrovae.config import OptionError
from pyrovae.parts.distributions import DiagonalGaussianMixture
from pyrovae.parts.priors import PRIORS

CONTINUOUS = [name for name in PRIORS.names() if name != "bernoulli"]


def _vae(prior, z_dim=2, likelihood="gaussian", seed=0, jitter=0.3, **options):
    """A float64 VAE with this prior, every parameter moved off its start by ``jitter`` × a
    standard normal (so that learned priors are not at their N(0, I) starting point)."""
    torch.manual_seed(seed)
    cfg = VAEConfig(
        x_dim=4,
        z_dim=z_dim,
        hidden=(8,),
        prior=prior,
        prior_options=options,
        likelihood=likelihood,
    )
    vae = build_vae(cfg).double()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(jitter * torch.randn_like(p))
    return vae


def _grid(z_dim, half_width=9.0, n=601):
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    cell = (axis[1] - axis[0]).item() ** z_dim
    if z_dim == 1:
        return axis.unsqueeze(-1), cell
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], -1), cell


@pytest.mark.parametrize("prior", CONTINUOUS)
def test_every_prior_density_integrates_to_one(prior):
    # Few VampPrior components and a small move of the flow: tails that a ±30 box holds.
    options = {"components": 5} if prior == "vampprior" else {}
    vae = _vae(prior, jitter=0.1 if prior == "flow" else 0.3, **options)
    z, cell = _grid(2, half_width=30.0, n=1201)
    with torch.no_grad():
        mass = vae.prior.log_prob(z).exp().sum().item() * cell
        # the distribution the model samples from, as Pyro scores it
        mass_model = vae.prior().log_prob(z).exp().sum().item() * cell
    assert mass == pytest.approx(1.0, abs=1e-2)
    assert mass_model == pytest.approx(mass, rel=1e-9)


@pytest.mark.parametrize("prior", ["learned-gaussian", "mixture", "vampprior"])
def test_one_dimensional_priors_integrate_to_one(prior):
    vae = _vae(prior, z_dim=1, **({"components": 5} if prior == "vampprior" else {}))
    z, cell = _grid(1, half_width=60.0, n=40001)
    with torch.no_grad():
        assert vae.prior.log_prob(z).exp().sum().item() * cell == pytest.approx(1.0, abs=1e-3)


def test_the_fast_mixture_density_equals_pyros_mixture_same_family():
    g = torch.Generator().manual_seed(0)
    c, d = 7, 5
    logits = torch.randn(c, generator=g, dtype=torch.float64)
    loc = 3 * torch.randn(c, d, generator=g, dtype=torch.float64)
    scale = 0.05 + torch.rand(c, d, generator=g, dtype=torch.float64)
    fast = DiagonalGaussianMixture(logits, loc, scale).expand((4, 3))
    reference = dist.MixtureSameFamily(
        dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1)
    ).expand((4, 3))
    z = 3 * torch.randn(2, 4, 3, d, generator=g, dtype=torch.float64)
    assert fast.batch_shape == reference.batch_shape and fast.event_shape == (d,)
    torch.testing.assert_close(fast.log_prob(z), reference.log_prob(z), rtol=1e-12, atol=1e-10)
    # Its samples follow the mixture: the mean of many is Σ π_c loc_c.
    torch.manual_seed(0)
    draws = DiagonalGaussianMixture(logits, loc, scale).sample((200_000,))
    expected = (torch.softmax(logits, 0).unsqueeze(-1) * loc).sum(0)
    spread = (loc.square() + scale.square()).sum(0).sqrt().max().item()
    torch.testing.assert_close(draws.mean(0), expected, rtol=0, atol=5 * spread / 200_000**0.5)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_vampprior_is_the_mixture_of_the_guide_posteriors_at_the_pseudo_inputs(likelihood):
    vae = _vae("vampprior", z_dim=3, likelihood=likelihood, components=6)
    u = vae.prior.pseudo_inputs.detach()
    if likelihood == "bernoulli":  # data in [0, 1]: pseudo-inputs clipped into it
        u = u.clamp(0, 1)
    with torch.no_grad():
        loc, log_scale = vae.encoder(u).split(3, -1)
        scale = log_scale.exp()
        z = torch.randn(5, 3, dtype=torch.float64)
        # (1/K) Σ_k Π_d N(z_d; μ_kd, σ_kd), written out
        sq = ((z.unsqueeze(1) - loc) / scale).square()  # (5, K, 3)
        density = (torch.exp(-0.5 * sq) / (scale * math.sqrt(2 * math.pi))).prod(-1).mean(-1)
        torch.testing.assert_close(vae.prior.log_prob(z), density.log(), rtol=1e-10, atol=1e-12)
    assert vae.prior.components == 6 and u.shape == (6, 4)


def test_vampprior_pseudo_inputs_are_trained_and_shared_with_the_encoder():
    vae = _vae("vampprior", components=3)
    z = torch.randn(4, 2, dtype=torch.float64)
    vae.prior.log_prob(z).sum().backward()
    assert vae.prior.pseudo_inputs.grad.abs().sum() > 0
    assert vae.encoder[0].weight.grad.abs().sum() > 0
    names = [n for n, _ in vae.named_parameters()]
    assert names.count("prior.pseudo_inputs") == 1
    assert not any(n.startswith("prior.") and "encoder" in n for n in names)


def test_the_flow_prior_obeys_the_change_of_variables_on_its_own_samples():
    vae = _vae("flow", z_dim=3, layers=3)
    prior = vae.prior
    with torch.no_grad():
        z = prior().sample((6,))

    def to_base(v):  # z -> u: each transform forward, last layer first
        for t in reversed(prior.transforms):
            v = t(v)
        return v

    for point in z:
        jac = torch.autograd.functional.jacobian(to_base, point)
        u = to_base(point)
        expected = dist.Normal(0.0, 1.0).log_prob(u).sum() + torch.linalg.slogdet(jac)[1]
        assert prior.log_prob(point).item() == pytest.approx(expected.item(), abs=1e-9)


def test_the_flow_prior_starts_as_the_standard_normal():
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(x_dim=4, z_dim=3, hidden=(8,), prior="flow")).double()
    z = torch.randn(5, 3, dtype=torch.float64)
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(vae.prior.log_prob(z), expected)


@pytest.mark.parametrize(
    "prior,options,match",
    [
        ("mixture", {"components": 0}, "components must be a whole number >= 1"),
        ("vampprior", {"components": 2.5}, "components must be a whole number"),
        ("flow", {"layers": True}, "layers must be a whole number"),
        ("vampprior", {"pseudo": 3}, r"takes no option\(s\) \['pseudo'\].*components"),
        ("standard-normal", {"components": 3}, "it takes none"),
    ],
)
def test_bad_prior_options_are_refused_naming_the_option(prior, options, match):
    with pytest.raises(OptionError, match=match):
        build_vae(VAEConfig(x_dim=4, z_dim=2, hidden=(8,), prior=prior, prior_options=options))


def test_the_flow_prior_needs_two_dimensions():
    with pytest.raises(OptionError, match="z_dim >= 2"):
        build_vae(VAEConfig(x_dim=4, z_dim=1, hidden=(8,), prior="flow"))


def test_a_learned_gaussian_prior_keeps_the_model_linear_gaussian_with_its_exact_answer():
    vae = _vae("learned-gaussian", likelihood="gaussian-learned")
    vae.decoder = torch.nn.Sequential(torch.nn.Linear(2, 4)).double()
    truth = vae.linear_gaussian()
    assert truth is not None
    torch.testing.assert_close(truth.prior_loc, vae.prior.loc.detach())
    torch.testing.assert_close(truth.prior_cov, torch.diag(vae.prior.log_scale.detach().exp() ** 2))


def test_priors_and_guides_by_name_from_the_command_line(tmp_path, capsys):
    from pyrovae.cli import main

    base = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian", "--epochs", "1"]
    base += ["--n-train", "200", "--n-eval", "50", "--quiet"]
    run = str(tmp_path / "run")
    argv = [*base, "--prior", "vampprior", "--prior-option", "components=7", "--run-dir", run]
    assert main([*argv, "--guide", "flow", "--guide-option", "transform=coupling"]) == 0
    assert main(["evaluate", run, "--k", "20", "--json"]) == 0
    config = __import__("json").loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert config["prior_options"] == {"components": 7}
    assert config["guide_options"] == {"transform": "coupling"}
    capsys.readouterr()
    bad = [*base, "--prior", "mixture", "--prior-option", "componets=3", "--run-dir", run + "2"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert "takes no option(s) ['componets']" in err and "components" in err and "\n" not in err
    assert not (tmp_path / "run2").exists()
