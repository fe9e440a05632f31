"""The VampPrior with the flow guide: its density with coupling layers, computed for all
components at once (``NormalizingFlow.mixture_log_prob``), equals the mixture's definition
(``GuideFamily.mixture_log_prob``, Pyro's ``MixtureSameFamily``), values and gradients; with
the iaf transform it warns once that scoring is sequential."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import VAEConfig, build_vae
from pyrovae.parts import guides
from pyrovae.parts.distributions import UniformMixture
from pyrovae.parts.guides import GuideFamily


def _vae(z_dim=5, layers=2, hidden=(6,), components=7, seed=0, jitter=0.3, likelihood="gaussian"):
    """A float64 VAE, VampPrior × coupling flow guide, its parameters moved off their start."""
    torch.manual_seed(seed)
    cfg = VAEConfig(
        x_dim=6,
        z_dim=z_dim,
        hidden=(8,),
        prior="vampprior",
        prior_options={"components": components},
        guide="flow",
        guide_options={"transform": "coupling", "layers": layers, "hidden": list(hidden)},
        likelihood=likelihood,
    )
    vae = build_vae(cfg).double()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(jitter * torch.randn_like(p))
    return vae


def _components(vae):
    """The prior's components' guide inputs h (C, in_features), from the pseudo-inputs."""
    u = vae.prior.pseudo_inputs
    if vae.prior.clip is not None:
        u = torch.nn.functional.hardtanh(u, *vae.prior.clip)
    return vae.encoder(u)


def _value_and_grads(vae, z, density):
    """density(z, h) summed with weights, and its gradients w.r.t. z and every parameter."""
    z = z.clone().requires_grad_()
    value = density(z, _components(vae))
    weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)
    params = [p for _, p in vae.named_parameters()]
    grads = torch.autograd.grad((value * weights).sum(), [z, *params], allow_unused=True)
    return value.detach(), grads


CASES = [
    # z_dim, layers, hidden: even and odd z_dim (an odd one splits y2 over two pieces),
    # one to three layers, one or two hidden layers
    (2, 1, (6,)),
    (4, 2, (6,)),
    (5, 2, (6,)),
    (5, 3, (6, 5)),
    (7, 3, (9,)),
]


@pytest.mark.parametrize("chunk", [1, 2**24], ids=["chunked", "whole"])
@pytest.mark.parametrize("z_dim,layers,hidden", CASES)
def test_coupling_mixture_density_and_gradients_equal_the_definition(
    z_dim, layers, hidden, chunk, monkeypatch
):
    # chunk 1: one particle per chunk; 2^24: all at once
    monkeypatch.setattr(guides, "_MIXTURE_CHUNK_CPU", chunk)
    vae = _vae(z_dim, layers, hidden)
    family = vae.guide_family
    z = 1.5 * torch.randn(3, 4, z_dim, dtype=torch.float64)
    fast, fast_grads = _value_and_grads(vae, z, family.mixture_log_prob)
    slow, slow_grads = _value_and_grads(
        vae, z, lambda z, h: GuideFamily.mixture_log_prob(family, z, h)
    )
    assert fast.shape == (3, 4)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    names = ["z"] + [n for n, _ in vae.named_parameters()]
    checked = set()
    for name, a, b in zip(names, fast_grads, slow_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
            checked.add(name.split(".")[0])
    # the gradient reaches z, the encoder, the pseudo-inputs and the flow's nets
    assert {"z", "encoder", "prior", "guide_family"} <= checked


def test_the_clamp_of_the_log_scale_is_pyros():
    """Log scales pushed past Pyro's clamp [-5, 3] both ways: the value is clamped and the
    gradient passes through, as in AffineCoupling."""
    vae = _vae(z_dim=4, layers=2)
    family = vae.guide_family
    with torch.no_grad():
        for module in family.transforms:
            module.nn.layers[-1].weight.mul_(40.0)
    z = 2.0 * torch.randn(6, 4, dtype=torch.float64)
    h = _components(vae).detach()
    _, _, context = family._split(h)
    y1 = z[:, None, : family.transforms[-1].split_dim].expand(6, h.shape[0], -1)
    _, log_scale = family.transforms[-1].nn(y1, context=context.expand(6, -1, -1))
    assert (log_scale < -5).any() and (log_scale > 3).any()  # the clamp is exercised
    fast, fast_grads = _value_and_grads(vae, z, family.mixture_log_prob)
    slow, slow_grads = _value_and_grads(
        vae, z, lambda z, h: GuideFamily.mixture_log_prob(family, z, h)
    )
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-10)
    for a, b in zip(fast_grads, slow_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_vampprior_density_is_pyros_mixture_same_family_of_the_flow_posteriors(likelihood):
    vae = _vae(likelihood=likelihood)
    z = torch.randn(2, 3, 5, dtype=torch.float64)
    p = vae.prior()
    assert isinstance(p, UniformMixture) and p.batch_shape == () and p.event_shape == (5,)
    with torch.no_grad():
        h = _components(vae)
        reference = dist.MixtureSameFamily(
            dist.Categorical(logits=torch.zeros(7, dtype=torch.float64)), vae.guide_family(h)
        ).log_prob(z)
        torch.testing.assert_close(vae.prior.log_prob(z), reference, rtol=1e-12, atol=1e-12)
        # under the model's plates (expanded), as the traced producer scores it
        x = torch.randn(3, 6, dtype=torch.float64).clamp(0, 1)
        trace = pyro.poutine.trace(pyro.poutine.condition(vae.model, {"z": z})).get_trace(x)
        site = trace.nodes["z"]
        torch.testing.assert_close(site["fn"].log_prob(z), reference, rtol=1e-12, atol=1e-12)
        assert isinstance(site["fn"], UniformMixture) and site["fn"].batch_shape == (3,)
        # it samples as MixtureSameFamily does
        assert p.sample((4,)).shape == (4, 5)


def test_a_vampprior_with_an_iaf_flow_guide_warns_once_and_coupling_does_not():
    config = dict(x_dim=6, z_dim=3, hidden=(8,), prior="vampprior", guide="flow")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_vae(VAEConfig(**config, guide_options={"transform": "coupling"}))
        assert not [w for w in caught if "VampPrior" in str(w.message)]
        vae = build_vae(VAEConfig(**config))  # iaf, the default
    messages = [str(w.message) for w in caught if "VampPrior" in str(w.message)]
    assert len(messages) == 1
    assert "one dimension at a time" in messages[0]
    assert "--guide-option transform=coupling" in messages[0]
    # still built and usable: the generic density
    with torch.no_grad():
        assert torch.isfinite(vae.prior.log_prob(torch.randn(4, 3))).all()


@pytest.mark.parametrize(
    "z_dim,layers,perm", [(5, 3, [0, 4, 2, 3, 1]), (8, 3, [0, 4, 1, 5, 2, 6, 3, 7])]
)
def test_any_permutation_between_layers(z_dim, layers, perm):
    """The plan follows any permutation between layers, not only the reversal; an interleaving
    one leaves pieces whose columns are not a run (gathered by index)."""
    vae = _vae(z_dim, layers)
    family = vae.guide_family
    family.reverse = torch.tensor(perm)  # the buffer both computations read
    family._plan_cache.clear()
    steps, _ = family._coupling_plan(torch.device("cpu"))
    gathered = any(
        isinstance(cols, torch.Tensor) for step in steps for _, cols in step.ins + step.outs
    )
    assert gathered == (z_dim == 8)
    z = torch.randn(4, z_dim, dtype=torch.float64)
    fast, fast_grads = _value_and_grads(vae, z, family.mixture_log_prob)
    slow, slow_grads = _value_and_grads(
        vae, z, lambda z, h: GuideFamily.mixture_log_prob(family, z, h)
    )
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    for a, b in zip(fast_grads, slow_grads):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
