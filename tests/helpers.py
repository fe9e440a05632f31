"""Shared builders for tests: linear-Gaussian models whose answers are known exactly."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from pyrovae import LinearGaussian, VAEConfig, build_vae, linear_gaussian_vae


def random_truth(x_dim: int, z_dim: int, seed: int) -> LinearGaussian:
    """A random linear-Gaussian model (float64) with per-dimension noise."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64)
    bias = torch.randn(x_dim, generator=g, dtype=torch.float64)
    noise_var = 0.3 + torch.rand(x_dim, generator=g, dtype=torch.float64)
    return LinearGaussian.standard(weight, bias, noise_var)


def linear_vae(truth: LinearGaussian, guide: str = "diagonal-gaussian", guide_options=None):
    """A float64 VAE whose model is exactly ``truth`` (``pyrovae.linear_gaussian_vae``: linear
    decoder, learned-variance Gaussian likelihood, linear encoder), so the diagonal guide can be
    set in closed form; the ``guide`` family named (with ``guide_options``)."""
    return linear_gaussian_vae(truth, guide, guide_options, dtype=torch.float64)


def set_mean_field_guide(vae, truth: LinearGaussian, inflate: float = 1.0) -> None:
    """Set the linear encoder to the posterior mean and the mean-field optimal scales
    1/sqrt(Λ_ii) (Λ the posterior precision), multiplied by ``inflate``."""
    zd = truth.z_dim
    w_scaled = truth.weight / truth.noise_var.unsqueeze(-1)  # (D, Dz)
    precision = torch.eye(zd, dtype=torch.float64) + truth.weight.T @ w_scaled
    cov = torch.linalg.inv(precision)
    gain = w_scaled @ cov  # posterior mean = (x - b) @ gain
    with torch.no_grad():
        enc = vae.encoder[0]
        enc.weight.zero_()
        enc.weight[:zd] = gain.T
        enc.bias[:zd] = -(truth.bias @ gain)
        enc.bias[zd:] = math.log(inflate) - 0.5 * torch.diagonal(precision).log()


def guide_params(vae, x):
    """(loc, scale) of the VAE's diagonal guide at ``x``: (B, Dz) each."""
    loc, log_scale = vae.encoder(x).split(vae.z_dim, -1)
    return loc, log_scale.exp()


def exact_posterior_guide(truth: LinearGaussian):
    """A Pyro guide drawing z from the exact posterior p(z | x) (full covariance)."""

    def guide(x, num_data=None):
        post = truth.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(post.loc, scale_tril=post.scale_tril))

    return guide


def mean_and_stderr(values: torch.Tensor, dim: int = 0):
    """Mean and standard error of the mean along ``dim``."""
    n = values.shape[dim]
    return values.mean(dim), values.std(dim) / math.sqrt(n)


def imperfect_linear_vae(seed: int = 5, z_dim: int = 2):
    """A linear-Gaussian VAE (x 3-D) with a deliberately imperfect guide, so that every
    gradient is nonzero, and a batch of 4 points from its model: (vae, x)."""
    truth = random_truth(3, z_dim, seed)
    x = truth.sample(4, torch.Generator().manual_seed(3))
    vae = linear_vae(truth)
    with torch.no_grad():
        g = torch.Generator().manual_seed(9)
        for p in vae.encoder.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return vae, x


def gradient_draws(vae, x, est, repeats: int, producer: str = "auto"):
    """``repeats`` independent gradient estimates of minus the objective summed over ``x``'s
    points, each as a training step computes it (``estimate_and_backward``): (repeats, P)."""
    from pyrovae.producers import make_producer
    from pyrovae.training import estimate_and_backward

    route = make_producer(vae, producer)
    est.prepare(x)
    out = []
    for _ in range(repeats):
        for p in vae.parameters():
            p.grad = None
        estimate_and_backward(route, est, x, None)
        out.append(
            torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).clone()
                    for p in vae.parameters()
                ]
            )
        )
    return torch.stack(out)


def estimator_specs():
    """Every registered estimator with each of its variants' options: [(name, options)]."""
    from pyrovae import ESTIMATORS

    return [(n, options) for n in ESTIMATORS.names() for options in ESTIMATORS.get(n).variants()]


def case_id(case) -> str:
    """A test id for (estimator, options, prior, guide, likelihood)."""
    name, options, prior, guide, likelihood = case
    opts = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{name}{':' + opts if opts else ''}-{prior}-{guide}-{likelihood}"


def _grads(surrogate, params):
    grads = torch.autograd.grad(surrogate, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def assert_producers_agree(vae, name, options, fields, num_data=40, steps=3):
    """The direct producer of ``vae`` against tracing a copy of its model and guide, for the
    estimator ``name`` with ``options``, over ``steps`` small parameter steps: they agree on
    whether the estimator applies; and where it does, on the latents, each of ``fields``, the
    derivatives in z of those STL and DReG use, the loss, the surrogate, every gradient and the
    estimator's state.

    Returns ``None`` where the estimator does not apply, else (params, [grads of each step]).
    """
    import copy

    import pytest

    from pyrovae import make_estimator
    from pyrovae.particles import NotApplicable
    from pyrovae.producers import applies, make_producer

    twin = copy.deepcopy(vae)
    twin.name = "twin"  # its own names in Pyro's param store
    direct, traced = make_producer(vae, "direct"), make_producer(twin, "traced")
    assert (direct.name, traced.name) == ("direct", "traced")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        x = vae.sample(10, mean=False)  # data the likelihood can score
    est = make_estimator(name, **options).double()
    est_twin = make_estimator(name, **options).double()
    if not applies(direct, est, x):
        assert not applies(traced, est_twin, x)
        with pytest.raises(NotApplicable):
            est(direct(x, num_data, est.num_particles, est.reparameterized))
        return None
    assert applies(traced, est_twin, x)

    params = list(vae.parameters()) + list(est.parameters())
    params_twin = list(twin.parameters()) + list(est_twin.parameters())
    history = []
    for step in range(steps):
        pyro.set_rng_seed(step)
        a = direct(x, num_data, est.num_particles, est.reparameterized)
        pyro.set_rng_seed(step)
        b = traced(x, num_data, est.num_particles, est.reparameterized)
        assert a.scale == b.scale == num_data / x.shape[0]
        assert tuple(a.latents) == tuple(b.latents)
        for z in a.latents:
            torch.testing.assert_close(a.latents[z], b.latents[z], rtol=1e-12, atol=1e-12)
        for field in fields:
            torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-10, atol=1e-10)
        if est.reparameterized:  # the fields whose derivative in z STL and DReG use
            # (At K = 1 the traced latents are views of the values the program used.)
            za = list(a.latents.values())
            zb = [z if z._base is None else z._base for z in b.latents.values()]
            for field in ("log_prior", "log_lik", "log_q_stopped"):
                da = torch.autograd.grad(
                    getattr(a, field).sum(), za, retain_graph=True, allow_unused=True
                )
                db = torch.autograd.grad(
                    getattr(b, field).sum(), zb, retain_graph=True, allow_unused=True
                )
                for u, v in zip(da, db):
                    assert (u is None) == (v is None), field
                    if u is not None:
                        v = v.reshape(u.shape)
                        # (1e-9: derivatives of order 1e3, summed in another order by each)
                        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)
        loss, surrogate = est(a)
        loss_twin, surrogate_twin = est_twin(b)
        torch.testing.assert_close(loss, loss_twin, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(surrogate, surrogate_twin, rtol=1e-10, atol=1e-10)
        grads, grads_twin = _grads(surrogate, params), _grads(surrogate_twin, params_twin)
        assert any(g.abs().sum() > 0 for g in grads)
        for g, h in zip(grads, grads_twin):
            torch.testing.assert_close(g, h, rtol=1e-8, atol=1e-9)
        state, state_twin = est.state_dict(), est_twin.state_dict()
        assert state.keys() == state_twin.keys()
        for key in state:
            torch.testing.assert_close(state[key], state_twin[key], rtol=1e-10, atol=1e-10)
        history.append(grads)
        with torch.no_grad():  # the same small step on both, so the next one is elsewhere
            # (bounded: a plain gradient step from randomised flows can blow the values up)
            lr = 1e-3 / max(1.0, max(g.abs().max().item() for g in grads))
            for p, q, g in zip(params, params_twin, grads):
                p.sub_(lr * g)
                q.sub_(lr * g)
    return params, history


def linear_two_layer_vae(seed=1):
    """A float64 two-layer linear-Gaussian VAE: z2 ~ N(0, I), z1 | z2 ~ N(A z2 + c, diag(s²)),
    x | z1 ~ N(W z1 + b, σ² I); and (A, c, s, W, b, σ)."""
    torch.manual_seed(seed)
    cfg = VAEConfig(
        x_dim=4,
        z_dim=2,
        z1_dim=3,
        latent_layers=2,
        encoder="linear",
        decoder="linear",
        likelihood="gaussian",
        likelihood_options={"sigma": 0.5},
    )
    vae = build_vae(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        top = vae.top_decoder[0]
        top.weight.copy_(torch.randn(top.weight.shape, generator=g, dtype=torch.float64))
        top.weight[3:] = 0.0  # p(z1 | z2) of a constant scale
        top.bias.copy_(0.5 * torch.randn(top.bias.shape, generator=g, dtype=torch.float64))
        dec = vae.decoder[0]
        dec.weight.copy_(torch.randn(dec.weight.shape, generator=g, dtype=torch.float64))
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g, dtype=torch.float64))
    a, c, s = top.weight[:3].detach(), top.bias[:3].detach(), top.bias[3:].detach().exp()
    return vae, (a, c, s, dec.weight.detach(), dec.bias.detach(), 0.5)


DOCUMENTATION = Path(__file__).resolve().parents[1] / "docs"


def docs_example(marker: str) -> str:
    """The one Python example of the documentation (``docs/**/*.md``) that contains ``marker``,
    as a reader copies it."""
    found = [
        block
        for page in sorted(DOCUMENTATION.rglob("*.md"))
        if "_build" not in page.parts
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
        if marker in block
    ]
    assert len(found) == 1, f"{len(found)} examples in docs/ hold {marker!r}"
    return found[0]


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def experiment_script(name: str):
    """The script ``experiments/<name>.py`` as a module (its ``main`` runs the experiment)."""
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
