"""The VAE: a Pyro model p(z) p_θ(x|z) and guide q_φ(z|x) built from swappable parts.

``TwoLayerVAE`` (``VAEConfig(latent_layers=2)``) is the IWAE paper's two-stochastic-layer
model p(z2) p(z1 | z2) p(x | z1) with the guide q(z1 | x) q(z2 | z1), sites ``"z1"``, ``"z2"``.

``VAE.model(x)`` and ``VAE.guide(x)`` are plain Pyro programs with one latent site ``"z"`` and one
observed site ``"x"`` inside a ``pyro.plate("data", dim=-1)``: the definition of the model.
``VAE.particles`` is their *direct producer*: the particles (``pyrovae.particles``) that tracing
the two programs gives, computed from the same parts and random numbers without Pyro's
handlers, which cost as much as the network itself on a CPU training step. The tests hold it
equal to ``traced_particles(vae.model, vae.guide, ...)`` for every registered prior, guide
family and likelihood. Estimators, the trainer and the evaluator take particles from either
producer, so a user's own model/guide pair is trained and evaluated by the same code through the
traced one.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import pyro
import torch
from torch import nn

from .config import OptionError, Rule, config_from_dict, option, part_options, validate_fields
from .data import as_data_tensor
from .linear_gaussian import LinearGaussian
from .particles import NotApplicable, Particles, no_reparameterized_sampler
from .parts.guides import (
    GUIDES,
    HALF_LOG_2PI,
    BoundedDiagonalGaussian,
    DiagonalGaussian,
    GuideFamily,
)
from .parts.likelihoods import LIKELIHOODS, Likelihood
from .parts.nets import ACTIVATIONS, NETS
from .parts.priors import PRIORS, Prior
from .parts.refinement import LocalRefinement  # noqa: F401  (registers the local guide)
from .runtime import available_memory, check_memory, module_device

# The group of ``pyrovae train --help`` that the model's options are listed under.
M = "model"


@dataclass(frozen=True)
class VAEConfig:
    """Everything needed to rebuild a VAE; saved in every checkpoint.

    Defaults are the IWAE paper's one-stochastic-layer net, 784-200-200-50 with tanh both ways.
    ``encoder``/``decoder`` name a network (``mlp``, ``linear`` or ``conv``); ``prior``,
    ``likelihood`` and ``guide`` name a registered part; ``prior_options``,
    ``likelihood_options`` and ``guide_options`` go to that part's constructor (e.g.
    ``{"components": 500}`` for the VampPrior, ``{"sigma": 0.5}`` for a Gaussian likelihood,
    ``{"layers": 4}`` for a flow guide).

    ``latent_layers=2`` builds a ``TwoLayerVAE``, the IWAE paper's two-stochastic-layer net:
    x -> ``hidden`` -> z1 (``z1_dim``) -> ``hidden_top`` -> z2 (``z_dim``) in the guide and back
    in the model; ``prior`` is then p(z2), ``guide`` q(z1 | x). ``z1_dim`` and ``hidden_top``
    are unused with one layer.

    ``image_shape``: (C, H, W) when the data are images flattened in that row-major order
    (C·H·W = ``x_dim``; the trainer takes it from the data), else ``None``. The ``conv`` nets
    need it; the nets between z1 and z2 are then ``mlp`` ones, for those are vectors. Configs
    saved before it existed load with ``None``.
    """

    x_dim: int = option(784, Rule("int", minimum=1))  # the data's: no flag
    z_dim: int = option(50, Rule("int", minimum=1), "latent dimension", M)
    hidden: Tuple[int, ...] = option(
        (200, 200), Rule("ints", minimum=1), "hidden sizes, comma-separated", M
    )
    activation: str = option("tanh", Rule("str", choices=sorted(ACTIVATIONS)), "activation", M)
    encoder: str = option(
        "mlp", Rule("str", choices=NETS.names),
        "encoder network (conv: convolutional, for image data)", M,
    )  # fmt: skip
    decoder: str = option(
        "mlp", Rule("str", choices=NETS.names),
        "decoder network (conv: convolutional, for image data; linear + a Gaussian likelihood "
        "gives an exact log p(x))", M,
    )  # fmt: skip
    prior: str = option("standard-normal", Rule("str", choices=PRIORS.names), "prior", M)
    prior_options: Dict[str, Any] = part_options(
        "an option of the prior, e.g. components=500 for vampprior or "
        "mixture, layers=4 for flow (repeatable)",
        M,
    )
    likelihood: str = option(
        "bernoulli", Rule("str", choices=LIKELIHOODS.names),
        "bernoulli for binary data; discretized-logistic for 8-bit images", M,
    )  # fmt: skip
    likelihood_options: Dict[str, Any] = part_options(
        "an option of the likelihood, e.g. sigma=0.5 for the Gaussians "
        "(repeatable; --sigma is its shorthand)",
        M,
    )
    guide: str = option("diagonal-gaussian", Rule("str", choices=GUIDES.names), "guide", M)
    guide_options: Dict[str, Any] = part_options(
        "an option of the guide, e.g. layers=4 or transform=coupling for flow (repeatable)",
        M,
    )
    latent_layers: int = option(
        1, Rule("int", minimum=1, maximum=2),
        "stochastic layers: 1, or 2 for the IWAE paper's x -> z1 -> z2 net, where --z-dim is "
        "z2's width and --prior its prior", M,
    )  # fmt: skip
    z1_dim: int = option(100, Rule("int", minimum=1), "the lower latent z1's width, 2 layers", M)
    hidden_top: Tuple[int, ...] = option(
        (100, 100), Rule("ints", minimum=1),
        "hidden sizes of the nets between z1 and z2, comma-separated, 2 layers", M,
    )  # fmt: skip
    image_shape: Optional[Tuple[int, ...]] = option(None, Rule("ints", minimum=1, optional=True))

    def __post_init__(self) -> None:
        validate_fields(self)
        shape = self.image_shape
        if shape is not None and (len(shape) != 3 or math.prod(shape) != self.x_dim):
            raise OptionError(
                f"image_shape must be None or (C, H, W) with C*H*W = x_dim = {self.x_dim}, "
                f"got {list(shape)}"
            )

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["hidden_top"] = list(self.hidden_top)
        d["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], name=None) -> "VAEConfig":
        """Inverse of ``to_dict``; unknown keys and bad values are an ``OptionError`` naming
        them (``name(key)``: how the user wrote the key), so that typos fail loudly."""
        return config_from_dict(cls, d, "model", name)


class VAE(nn.Module):
    """A variational auto-encoder as a Pyro model/guide pair.

    Args:
        encoder: network (..., x_dim) -> (..., guide_family.in_features).
        decoder: network (..., z_dim) -> (..., likelihood.out_features).
        prior: module returning p(z), event shape (z_dim,).
        likelihood: module mapping decoder output to p(x|z), event shape (x_dim,).
        guide_family: module mapping encoder output to q(z|x), event shape (z_dim,).
        name: prefix of the parameters in Pyro's param store.
        config: the ``VAEConfig`` it was built from, if any (kept for checkpoints).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        guide_family: GuideFamily,
        name: str = "vae",
        config: Optional[VAEConfig] = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        self.guide_family = guide_family
        self.name = name
        self.config = config
        self._index_cache = torch.arange(0)
        self._bind_prior()
        if prior.latent != guide_family.latent:
            raise ValueError(
                f"the prior models {prior.latent} latents but the guide family "
                f"{type(guide_family).__name__} draws {guide_family.latent} ones: choose a prior "
                "and a guide of the same kind (binary latents: --prior bernoulli --guide "
                "bernoulli)"
            )
        self._check_widths()

    def _check_widths(self) -> None:
        """Refuse parts whose widths do not fit (``check_net_widths``), at construction rather
        than as a shape error from torch at the first batch."""
        g, p = self.guide_family, self.prior
        if g.z_dim != p.z_dim:
            raise ValueError(
                f"the guide family {type(g).__name__} draws {g.z_dim} latents per point, but the "
                f"prior {type(p).__name__} models {p.z_dim}: build both for the same z_dim"
            )
        check_net_widths(self._net_widths())

    def _net_widths(self) -> List[Tuple[str, nn.Module, int, int, str]]:
        """(name, net, input width, output width, the part that reads the output) of each
        net between the parts."""
        g, lik = self.guide_family, self.likelihood
        family, likelihood = f"guide family {type(g).__name__}", f"likelihood {type(lik).__name__}"
        return [
            ("encoder", self.encoder, lik.x_dim, g.in_features, family),
            ("decoder", self.decoder, g.z_dim, lik.out_features, likelihood),
        ]

    def _bind_prior(self) -> None:
        """Hand the prior what it may be made of (``Prior.bind``: the VampPrior's posteriors)."""
        self.prior.bind(
            self.encoder, self.guide_family, self.likelihood.x_dim, self.likelihood.data_range
        )

    def inference_modules(self) -> Tuple[nn.Module, ...]:
        """The modules of the guide q(z | x) (the inference network); the others are the
        model's."""
        return (self.encoder, self.guide_family)

    @property
    def x_dim(self) -> int:
        """D, the dimension of x."""
        return self.likelihood.x_dim

    @property
    def z_dim(self) -> int:
        """The dimension of z (of the top latent z2 in the two-layer model)."""
        return self.prior.z_dim

    def data_scale(self, x: torch.Tensor, num_data: Optional[int] = None) -> float:
        """num_data / B, the factor by which a minibatch ``x`` (B, x_dim) stands for the data
        set (1 when ``num_data`` is None); a wrong shape or too small a ``num_data`` is an
        error."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"expected a batch of shape (B, {self.x_dim}), got {tuple(x.shape)}; "
                "flatten images to vectors first"
            )
        batch = x.shape[0]
        if num_data is None:
            return 1.0
        Rule("int", minimum=1).check("num_data", num_data)
        if num_data < batch:
            raise ValueError(f"num_data={num_data} is smaller than the batch ({batch})")
        return num_data / batch

    def _data_plate(self, x: torch.Tensor, num_data: Optional[int]) -> pyro.plate:
        """The plate over data points; scales log-densities by num_data / batch under
        minibatching."""
        batch = x.shape[0]
        if self.data_scale(x, num_data) == 1.0:
            return pyro.plate("data", batch, dim=-1)
        if self._index_cache.numel() != batch or self._index_cache.device != x.device:
            self._index_cache = torch.arange(batch, device=x.device)
        return pyro.plate("data", num_data, subsample=self._index_cache, dim=-1)

    def model(self, x: torch.Tensor, num_data: Optional[int] = None) -> torch.Tensor:
        """p(z) p_θ(x|z). ``x`` (B, x_dim); ``num_data`` is the dataset size when ``x`` is a
        minibatch (log-densities are scaled by num_data / B). Returns z, (..., B, z_dim)."""
        pyro.module(self.name, self)
        with self._data_plate(x, num_data):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def guide(self, x: torch.Tensor, num_data: Optional[int] = None) -> torch.Tensor:
        """q_φ(z|x), amortized by the encoder. ``x`` (B, x_dim). Returns z, (..., B, z_dim)."""
        pyro.module(self.name, self)
        with self._data_plate(x, num_data):
            return pyro.sample("z", self.guide_family(self.guide_input(x)))

    def guide_input(self, x: torch.Tensor) -> torch.Tensor:
        """The guide family's input for ``x`` (B, x_dim): the encoder's output (B, F), refined
        per data point when the family refines it (the ``local`` guide,
        ``pyrovae.parts.refinement``)."""
        h = self.encoder(x)
        refine = getattr(self.guide_family, "refine", None)
        return h if refine is None else refine(h, x, self)

    def particles(
        self,
        x: torch.Tensor,
        num_data: Optional[int] = None,
        num_particles: int = 1,
        reparameterized: Optional[bool] = None,
        guide_input: Optional[torch.Tensor] = None,
    ) -> Particles:
        """The direct producer: what ``traced_particles(self.model, self.guide, (x, num_data),
        num_particles=..., reparameterized=...)`` gives, from the parts and the same random
        numbers, without Pyro's handlers.

        Args:
            x: a batch, (B, x_dim).
            num_data: the data set size when ``x`` is a minibatch (the scale is N / B).
            num_particles: K samples of z per data point.
            reparameterized: sample z with ``rsample`` (pathwise gradients), ``sample``
                (False), or as the guide does by default (None: ``rsample`` where it can).
            guide_input: the guide family's input (B, F) to use instead of
                ``guide_input(x)``: q(z | x) at given parameters (the local refinement's
                objective; ``pyrovae gap``'s per-point fitted q).

        Returns:
            ``Particles`` with (K, B) fields. z is drawn now; the densities (the decoder pass
            among them) are computed when first read and draw no random numbers, so they may
            be computed on another thread.
        """
        scale = self.data_scale(x, num_data)
        h = self.guide_input(x) if guide_input is None else guide_input
        if reparameterized and not self.guide_family.reparameterizable:
            raise no_reparameterized_sampler("z", self.guide_family(h))
        z, log_q, log_q_stopped = self.guide_family.draw(h, num_particles, reparameterized)

        def kl() -> torch.Tensor:
            # Closed form where torch registers one, else Monte Carlo: TraceMeanField_ELBO's rule.
            q = self.guide_family(h)
            try:
                # Expanded to q's batch shape, as the plates expand it: some of torch's KLs
                # (Bernoulli's) do not broadcast.
                value = torch.distributions.kl_divergence(q, self.prior().expand(q.batch_shape))
            except NotImplementedError:
                return log_q() - self.prior.log_prob(z)
            return value.expand(z.shape[:-1])

        return Particles(
            x=x,
            latents={"z": z},
            scale=scale,
            log_prior=lambda: self._log_prior({"z": z}),
            log_lik=lambda: self._log_lik(x, {"z": z}),
            log_q=log_q,
            log_q_stopped=log_q_stopped,
            kl=kl,
        )

    def scores(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> Particles:
        """The model's and the guide's log densities at given latents: what tracing ``model``
        and ``guide`` conditioned on them gives (``traced_scores``), from the parts. For MCMC
        and annealed importance sampling, which move z themselves.

        Args:
            x: a batch, (B, x_dim).
            latents: ``{"z": (C, B, z_dim)}``, C values of z per data point.

        Returns:
            ``Particles`` with those latents, scale 1 and (C, B) fields ``log_prior``,
            ``log_lik`` and ``log_q`` (computed when read), differentiable in z.
        """
        return Particles(
            x=x,
            latents=latents,
            scale=1.0,
            log_prior=lambda: self._log_prior(latents),
            log_lik=lambda: self._log_lik(x, latents),
            log_q=lambda: self._log_guide(x, latents),
        )

    def _log_prior(self, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(z), (C, B), of latents {"z": (C, B, z_dim)}."""
        return self.prior.log_prob(latents["z"])

    def _log_lik(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(x | z), (C, B)."""
        return self.likelihood(self._decode(latents["z"])).log_prob(x)

    def _log_guide(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log q(z | x), (C, B), scored afresh (a flow guide inverts its flow)."""
        return self.guide_family(self.guide_input(x)).log_prob(latents["z"])

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder on z (..., z_dim) with the leading dims as one: matrix multiplies on
        (K B, z_dim) rows, not (K, B, z_dim) batches, are 5% of a training step faster
        (measured at K = 1, batch 100). The same function of each row."""
        return _rows(self.decoder, z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at z = the guide's sample for each row of ``x`` (B, x_dim) -> (B, x_dim),
        on the VAE's device (``x`` is moved there)."""
        x = as_data_tensor(x, "x", next(self.parameters()).dtype).to(module_device(self))
        self.data_scale(x)  # the shape
        z = self.guide_family(self.guide_input(x)).sample()
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` draws from the model: E[x | z] (``mean=True``) or x itself; shape (n, x_dim)."""
        z = self.prior().sample((n,))
        out = self.decoder(z)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def linear_gaussian(self) -> Optional[LinearGaussian]:
        """The model as a ``LinearGaussian`` if it is one (affine decoder, Gaussian likelihood,
        Gaussian prior), else ``None``. Then its exact log p(x) is known."""
        noise_var = self.likelihood.noise_variance()
        prior = self.prior.gaussian()
        affine = [m for m in self.decoder.modules() if not isinstance(m, nn.Sequential)]
        if noise_var is None or prior is None or len(affine) != 1:
            return None
        layer = affine[0]
        if not isinstance(layer, nn.Linear):
            return None
        with torch.no_grad():
            bias = layer.bias if layer.bias is not None else layer.weight.new_zeros(self.x_dim)
            return LinearGaussian(
                layer.weight.detach().clone(),
                bias.detach().clone(),
                noise_var.detach().clone(),
                prior[0].detach().clone(),
                prior[1].detach().clone(),
            )


def check_net_widths(specs: List[Tuple[str, nn.Module, int, int, str]]) -> None:
    """Run each net of ``specs`` (name, net, input width, output width, the part that reads
    its output) once on a row of zeros, in eval mode and without gradients, and refuse one
    that does not take its input width or does not give its output width, naming the net and
    the width expected.

    Raises:
        ValueError: naming the net, the width expected and the part that expects it.
    """
    for name, net, width_in, width_out, reader in specs:
        like = next(net.parameters(), torch.zeros(()))
        was_training = net.training
        net.eval()  # a batch-norm layer takes a single row only in eval mode
        try:
            with torch.no_grad():
                out = net(like.new_zeros(1, width_in))
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"the {name} does not take inputs of width {width_in} ({_first_line(e)}): build "
                f"it for {width_in} inputs"
            ) from None
        finally:
            net.train(was_training)
        if out.dim() != 2 or out.shape[-1] != width_out:
            raise ValueError(
                f"the {name} gives outputs of shape {tuple(out.shape[1:])} per row, but the "
                f"{reader} takes {width_out} values per row: build the {name} with {width_out} "
                "outputs"
            )


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _rows(net: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``net`` on z (..., n) with the leading dims as one (see ``VAE._decode``)."""
    out = net(z.reshape(-1, z.shape[-1]))
    return out.reshape(z.shape[:-1] + out.shape[-1:])


def _gaussian_log_prob(z: torch.Tensor, family: DiagonalGaussian, h: torch.Tensor) -> torch.Tensor:
    """``family(h).log_prob(z)`` (the same numbers) in fewer autograd nodes: p(z1 | z2) on the
    training step's path."""
    loc, log_scale = family.split(h)
    u = (z - loc) * torch.exp(-log_scale)
    return torch.linalg.vecdot(u, u).mul(-0.5).sub(family.z_dim * HALF_LOG_2PI) - log_scale.sum(-1)


def _location(q: pyro.distributions.Distribution) -> torch.Tensor:
    """A guide distribution's point: its mean for a Gaussian (diagonal or full-rank), and for
    a flow the image of its base distribution's point under the flow's transforms."""
    if isinstance(q, torch.distributions.TransformedDistribution):
        z = _location(q.base_dist)
        for t in q.transforms:
            z = t(z)
        return z
    if isinstance(q, torch.distributions.Independent):
        return _location(q.base_dist)
    return q.mean


class TwoLayerVAE(VAE):
    """The IWAE paper's two-stochastic-layer VAE (Burda et al., 2015) as a Pyro model/guide
    pair: model p(z2) p(z1 | z2) p(x | z1), guide q(z1 | x) q(z2 | z1), with sites ``"z2"``,
    ``"z1"``, ``"x"`` in the model and ``"z1"``, ``"z2"`` in the guide, all in the data plate.

    Args:
        encoder: network (..., x_dim) -> (..., guide_family.in_features), for q(z1 | x).
        decoder: network (..., z1_dim) -> (..., likelihood.out_features), for p(x | z1).
        prior: p(z2), event shape (z_dim,).
        likelihood: p(x | z1), event shape (x_dim,).
        guide_family: q(z1 | x), event shape (z1_dim,); must model real latents.
        top_encoder: network (..., z1_dim) -> (..., 2 z_dim), the (loc, log scale) of the
            diagonal Gaussian q(z2 | z1).
        top_decoder: network (..., z_dim) -> (..., 2 z1_dim), the (loc, log scale) of the
            diagonal Gaussian p(z1 | z2).
        name, config: as for ``VAE``.

    ``z_dim`` is the top latent's width (z2), ``z1_dim`` the lower one's. The direct producer
    (``particles``) computes what tracing ``model`` and ``guide`` gives, as ``VAE``'s does.
    DReG and the closed-form KL (``analytic-kl``) are written for one latent layer and refused.

    A VampPrior on z2 is a mixture of the guide's posteriors over z2 at its pseudo-inputs u_k
    (in data space), and the guide has no marginal q(z2 | u) in closed form. The choice made
    here: q(z2 | u) = q(z2 | z1 = z̄1(u)), at the point z̄1(u) of q(z1 | u): its mean for a
    Gaussian guide family (the first z1_dim encoder outputs), for a flow the flow's image of
    its base mean. The prior is bound (``Prior.bind``) to that map u -> q(z2 | z̄1(u))'s net
    output, a bound method of the VAE, and a parameterless ``BoundedDiagonalGaussian(z_dim)``
    family: the nets are the VAE's own, trained with it and saved in its state dict once.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: Prior,
        likelihood: Likelihood,
        guide_family: GuideFamily,
        top_encoder: nn.Module,
        top_decoder: nn.Module,
        name: str = "vae",
        config: Optional[VAEConfig] = None,
    ) -> None:
        for part, what in ((prior, "prior"), (guide_family, "guide family")):
            if part.latent != "real":
                raise ValueError(
                    f"two latent layers need real latents (p(z1 | z2) and q(z2 | z1) are "
                    f"Gaussian), but the {what} {type(part).__name__} models {part.latent} "
                    "ones: choose a continuous prior and guide, or --latent-layers 1"
                )
        if hasattr(guide_family, "refine"):
            raise ValueError(
                "the local guide refines one latent layer's q(z | x), but a two-layer VAE's "
                "guide is q(z1 | x) q(z2 | z1): choose another guide, or --latent-layers 1"
            )
        z1, z2 = guide_family.z_dim, prior.z_dim
        check_net_widths(
            [
                ("top_encoder", top_encoder, z1, 2 * z2, "Gaussian q(z2 | z1) (loc, log scale)"),
                ("top_decoder", top_decoder, z2, 2 * z1, "Gaussian p(z1 | z2) (loc, log scale)"),
            ]
        )
        # The prior is bound (``_bind_prior``) to a method that reads top_encoder when called.
        super().__init__(encoder, decoder, prior, likelihood, guide_family, name, config)
        self.top_encoder = top_encoder
        self.top_decoder = top_decoder

    def _check_widths(self) -> None:
        # The prior models z2, the guide family z1: their widths differ (the top nets, checked
        # in __init__, join them).
        check_net_widths(self._net_widths())

    def _bind_prior(self) -> None:
        # q(z2 | z1) and p(z1 | z2) are diagonal Gaussian families (parameterless) on the top
        # nets' outputs. The prior gets a bound method and the q(z2 | .) family, not modules of
        # its own: the nets are the VAE's (registered once, in its state dict once).
        self.top_family = BoundedDiagonalGaussian(self.prior.z_dim)
        self.z1_family = BoundedDiagonalGaussian(self.guide_family.z_dim)
        self.prior.bind(
            self._top_posterior_net,
            self.top_family,
            self.likelihood.x_dim,
            self.likelihood.data_range,
        )

    def _top_posterior_net(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., x_dim) -> (loc, log scale) of q(z2 | z̄1(u)), (..., 2 z_dim): the VampPrior's
        "encoder" (see the class docstring)."""
        return self.top_encoder(_location(self.guide_family(self.encoder(u))))

    def inference_modules(self) -> Tuple[nn.Module, ...]:
        return (self.encoder, self.guide_family, self.top_encoder)

    @property
    def z1_dim(self) -> int:
        """The dimension of the lower latent z1."""
        return self.guide_family.z_dim

    def p_z1(self, z2: torch.Tensor) -> pyro.distributions.Distribution:
        """p(z1 | z2), z2 (..., z_dim) -> batch shape (...), event (z1_dim,)."""
        return self.z1_family(self.top_decoder(z2))

    def q_z2(self, z1: torch.Tensor) -> pyro.distributions.Distribution:
        """q(z2 | z1), z1 (..., z1_dim) -> batch shape (...), event (z_dim,)."""
        return self.top_family(self.top_encoder(z1))

    def model(
        self, x: torch.Tensor, num_data: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """p(z2) p(z1 | z2) p_θ(x | z1). ``x`` (B, x_dim); ``num_data`` as for ``VAE.model``.
        Returns (z1, z2), (..., B, z1_dim) and (..., B, z_dim)."""
        pyro.module(self.name, self)
        with self._data_plate(x, num_data):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.p_z1(z2))
            pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)
        return z1, z2

    def guide(
        self, x: torch.Tensor, num_data: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """q(z1 | x) q(z2 | z1). ``x`` (B, x_dim). Returns (z1, z2)."""
        pyro.module(self.name, self)
        with self._data_plate(x, num_data):
            z1 = pyro.sample("z1", self.guide_family(self.encoder(x)))
            z2 = pyro.sample("z2", self.q_z2(z1))
        return z1, z2

    def particles(
        self,
        x: torch.Tensor,
        num_data: Optional[int] = None,
        num_particles: int = 1,
        reparameterized: Optional[bool] = None,
    ) -> Particles:
        """The direct producer: what ``traced_particles(self.model, self.guide, ...)`` gives
        (see ``VAE.particles``), latents ``{"z1": (K, B, z1_dim), "z2": (K, B, z_dim)}``.
        z1 and z2 are drawn now, in the guide's order (z1 first), from the random numbers
        tracing the guide would use; the densities are computed when first read. ``kl``
        raises ``NotApplicable``: the closed-form KL is written for one latent layer."""
        scale = self.data_scale(x, num_data)
        h = self.encoder(x)
        z1, log_q1, log_q1_stopped = self.guide_family.draw(h, num_particles, reparameterized)
        g = _rows(self.top_encoder, z1)  # q(z2 | z1)'s (loc, log scale), (K, B, 2 z_dim)
        # One z2 per z1 particle: the family's draw of one particle for each (K, B) row, which
        # takes the random numbers tracing q(z2 | z1) would.
        z2, log_q2_one, _ = self.top_family.draw(g, 1, reparameterized)
        z2 = z2.squeeze(0)

        def log_q2() -> torch.Tensor:
            return log_q2_one().squeeze(0)

        latents = {"z1": z1, "z2": z2}

        def log_prior() -> torch.Tensor:
            return self._log_prior(latents)

        def log_q_stopped() -> torch.Tensor:
            # Every guide parameter and the encoder output cut, the paths through z1 and z2
            # kept: q(z2 | z1)'s density still depends on z1, through the frozen net.
            frozen = {n: p.detach() for n, p in self.top_encoder.named_parameters()}
            g_stopped = torch.func.functional_call(self.top_encoder, frozen, (z1,))
            return log_q1_stopped() + self.top_family(g_stopped).log_prob(z2)

        def kl() -> torch.Tensor:
            raise NotApplicable(
                "the closed-form KL (analytic-kl) is written for one latent layer, but this "
                "guide has latent sites ['z1', 'z2']"
            )

        return Particles(
            x=x,
            latents={"z1": z1, "z2": z2},
            scale=scale,
            log_prior=log_prior,
            log_lik=lambda: self._log_lik(x, latents),
            log_q=lambda: log_q1() + log_q2(),
            log_q_stopped=log_q_stopped,
            kl=kl,
        )

    def _log_prior(self, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(z2) + log p(z1 | z2), (C, B), of latents {"z1": (C, B, z1_dim), "z2": (C, B,
        z_dim)}."""
        z1, z2 = latents["z1"], latents["z2"]
        return self.prior.log_prob(z2) + _gaussian_log_prob(
            z1, self.z1_family, _rows(self.top_decoder, z2)
        )

    def _log_lik(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.likelihood(self._decode(latents["z1"])).log_prob(x)

    def _log_guide(self, x: torch.Tensor, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        z1, z2 = latents["z1"], latents["z2"]
        return self.guide_family(self.guide_input(x)).log_prob(z1) + self.q_z2(z1).log_prob(z2)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` draws from the model: z2 ~ p(z2), z1 ~ p(z1 | z2), then E[x | z1]
        (``mean=True``) or x itself; shape (n, x_dim)."""
        z2 = self.prior().sample((n,))
        z1 = self.p_z1(z2).sample()
        out = self.decoder(z1)
        return self.likelihood.mean(out) if mean else self.likelihood(out).sample()

    def linear_gaussian(self) -> Optional[LinearGaussian]:
        """The model as a ``LinearGaussian`` over z1 if it is one, else ``None``: affine nets
        both ways, a Gaussian prior N(m, S) and likelihood, and p(z1 | z2) of a constant scale
        (the log-scale rows of the top decoder's weight exactly zero), N(A z2 + c, diag(s²)).
        Then z1 ~ N(A m + c, A S Aᵀ + diag(s²)) and log p(x) is known exactly."""
        top = [m for m in self.top_decoder.modules() if not isinstance(m, nn.Sequential)]
        if len(top) != 1 or not isinstance(top[0], nn.Linear) or top[0].bias is None:
            return None
        one = VAE.linear_gaussian(self)  # z1 with the prior p(z2) in its place: W, b, σ², m, S
        if one is None:
            return None
        d1 = self.z1_dim
        with torch.no_grad():
            weight, bias = top[0].weight, top[0].bias
            if (weight[d1:] != 0).any():
                return None
            a, c = weight[:d1], bias[:d1]
            _, log_s = self.z1_family.split(bias)  # the scale p(z1 | z2) uses, bounded
            loc = a @ one.prior_loc + c
            cov = a @ one.prior_cov @ a.T + torch.diag(torch.exp(2 * log_s))
            return LinearGaussian(
                one.weight, one.bias, one.noise_var, loc.clone(), (0.5 * (cov + cov.T)).clone()
            )


def _needs_images(name: str) -> bool:
    """Whether the net registered as ``name`` needs image data: its factory declares an
    ``image_shape`` keyword without a default (``conv``)."""
    param = inspect.signature(NETS.get(name)).parameters.get("image_shape")
    return param is not None and param.default is inspect.Parameter.empty


def _net_specs(config: VAEConfig, enc_out: int, dec_out: int) -> List[Tuple[str, str, int, int]]:
    """(registered name, role, in_features, out_features) of each net of the VAE: the
    encoder's and decoder's (``enc_out``, ``dec_out`` outputs), with two latent layers then the
    top encoder's and decoder's (z1 <-> z2), role ``"top"``. The top nets read and write plain
    vectors, so a net that needs images gives way to an ``mlp`` there."""
    two = config.latent_layers == 2
    specs = [
        (config.encoder, "encoder", config.x_dim, enc_out),
        (config.decoder, "decoder", config.z1_dim if two else config.z_dim, dec_out),
    ]
    if two:
        top = [n if not _needs_images(n) else "mlp" for n in (config.encoder, config.decoder)]
        specs += [
            (top[0], "top", config.z1_dim, 2 * config.z_dim),
            (top[1], "top", config.z_dim, 2 * config.z1_dim),
        ]
    return specs


def _net(config: VAEConfig, name: str, role: str, in_features: int, out_features: int):
    """The net registered as ``name``, made for ``role``: ``image_shape`` and ``role`` go to a
    factory that declares them (``pyrovae.parts.nets``); a net that needs images, asked for
    without an image shape, is an ``OptionError`` saying so."""
    factory = NETS.get(name)
    hidden = config.hidden_top if role == "top" else config.hidden
    takes = inspect.signature(factory).parameters
    if "image_shape" not in takes:
        return factory(in_features, out_features, hidden, config.activation)
    if config.image_shape is None and _needs_images(name):
        raise OptionError(
            f"the {name} {role} needs image data, but the data has no image shape "
            f"(VAEConfig.image_shape is None): use --{role} mlp"
        )
    extra: Dict[str, Any] = {"image_shape": config.image_shape}
    if "role" in takes:
        extra["role"] = role
    try:
        return factory(in_features, out_features, hidden, config.activation, **extra)
    except ValueError as e:
        raise OptionError(f"the {name} {role}: {e}") from None


def _check_size(config: VAEConfig, enc_out: int, dec_out: int, parts: int) -> None:
    """Refuse, before allocating the networks, a VAE whose parameters with their gradients and
    Adam's two moments (16 bytes each) would not fit in memory: the nets' (``_net_specs``) and
    ``parts`` more (the prior's, guide family's and likelihood's own). The nets are counted
    exactly, whatever their layers, by building them on PyTorch's meta device, which allocates
    no memory."""
    two = config.latent_layers == 2
    hint = "lower --hidden or --z-dim" + (", --hidden-top or --z1-dim" if two else "")
    try:
        with torch.device("meta"):
            nets = [_net(config, *spec) for spec in _net_specs(config, enc_out, dec_out)]
    except RuntimeError as e:
        # A layer's byte count beyond int64 ("Storage size calculation overflowed"), or a
        # size product that wrapped around to a negative dimension.
        if "overflow" not in str(e) and "negative dimension" not in str(e):
            raise
        sizes = f"hidden {list(config.hidden)}, z_dim {config.z_dim}"
        raise MemoryError(
            f"a VAE of these sizes ({sizes}) has a layer too large for any memory (its byte "
            f"count overflows torch's 64-bit sizes): {hint}; {_what_fits()}"
        ) from None
    count = sum(p.numel() for net in nets for p in net.parameters())
    check_memory(16 * (count + parts), "a VAE of this size", hint)


def _what_fits() -> str:
    """How many parameters (with their gradients and Adam's two moments, 16 bytes each) the
    memory left holds, for a message."""
    free = available_memory()
    if free is None:
        return "the memory left could not be read"
    return f"about {free // 16:,} parameters fit in the {free / 2**30:.1f} GiB of memory free"


def _count(value: Any) -> int:
    """A positive whole-number option's value, else 0."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return min(value, 2**40) if ok else 0


def _part(registry, name: str, what: str, options: Dict[str, Any], size: int, **context: Any):
    """The part registered as ``name``, made with ``size`` and its ``options``, and the
    ``context`` entries its factory declares (``image_shape`` for a likelihood that reads
    images); an option it does not take, or a bad value, is an ``OptionError`` naming it and
    the flag."""
    factory = registry.get(name)
    declared = list(inspect.signature(factory).parameters)[1:]
    context = {k: v for k, v in context.items() if k in declared}
    takes = sorted(set(declared) - set(context))
    unknown = sorted(set(options) - set(takes))
    flag = f"--{what}-option"
    if unknown:
        raise OptionError(
            f"the {name!r} {what} takes no option(s) {unknown} ({flag})"
            + (f"; it takes: {', '.join(takes)}" if takes else "; it takes none")
            + (" (--sigma is for the Gaussian likelihoods)" if "sigma" in unknown else "")
        )
    try:
        return factory(size, **options, **context)
    except (TypeError, ValueError) as e:
        raise OptionError(f"the {name!r} {what}: {e} ({flag})") from None


def build_vae(config: VAEConfig) -> VAE:
    """Build a VAE from a config, each part looked up by name in its registry: a
    ``TwoLayerVAE`` when ``config.latent_layers`` is 2.

    Raises ``OptionError`` for a config that is not a ``VAEConfig`` and ``MemoryError`` for a
    model too big for the memory left.

    Example:
        >>> vae = build_vae(VAEConfig(x_dim=4, z_dim=2, hidden=(8,)))
        >>> vae.guide(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """
    if not isinstance(config, VAEConfig):
        raise OptionError(
            f"build_vae takes a VAEConfig (VAEConfig.from_dict(d) for a dict), got "
            f"{type(config).__name__}"
        )
    # Before making anything, at the smallest the parts can be (a diagonal guide); then again
    # with the parts' real widths. The parts' own parameters are few, except a mixture's or
    # VampPrior's components.
    two = config.latent_layers == 2
    guided = config.z1_dim if two else config.z_dim  # the latent the guide family draws
    _check_size(config, 2 * guided, config.x_dim, 2 * guided)
    check_memory(
        16
        * sum(_count(v) * (config.x_dim + 2 * config.z_dim) for v in config.prior_options.values()),
        "a prior of this size",
        "lower its components",
    )
    prior = _part(PRIORS, config.prior, "prior", config.prior_options, config.z_dim)
    likelihood = _part(
        LIKELIHOODS,
        config.likelihood,
        "likelihood",
        config.likelihood_options,
        config.x_dim,
        image_shape=config.image_shape,
    )
    family = _part(GUIDES, config.guide, "guide", config.guide_options, guided)
    parts = sum(p.numel() for m in (prior, likelihood, family) for p in m.parameters())
    out = likelihood.out_features
    _check_size(config, family.in_features, out, parts)
    nets = [_net(config, *spec) for spec in _net_specs(config, family.in_features, out)]
    family.start_encoder(nets[0])  # q's spread the same for every x at the start
    if not two:
        return VAE(*nets, prior, likelihood, family, config=config)
    encoder, decoder, top_encoder, top_decoder = nets
    vae = TwoLayerVAE(
        encoder, decoder, prior, likelihood, family, top_encoder, top_decoder, config=config
    )
    vae.top_family.start_encoder(top_encoder)
    return vae


def linear_gaussian_vae(
    truth: LinearGaussian,
    guide: str = "diagonal-gaussian",
    guide_options: Optional[Dict[str, Any]] = None,
    dtype: Optional[torch.dtype] = None,
) -> VAE:
    """A VAE whose model is exactly ``truth``: a linear decoder holding its weight (D, Dz) and
    bias (D,), a learned-variance Gaussian likelihood holding its noise variance (D,), a
    standard-normal prior; a linear encoder (at its seeded default initialization) into the
    ``guide`` family named, with ``guide_options``.

    A linear encoder can hold the exact posterior of such a model (its mean is affine in x, its
    covariance constant) in the ``full-rank`` family, and the mean-field optimum in the
    diagonal one, so the guide's gaps are known in closed form (``LinearGaussian.elbo``).
    ``vae.linear_gaussian()`` gives ``truth`` back. Parameters in ``dtype`` (default
    ``truth``'s).

    Raises:
        ValueError: ``truth``'s prior is not N(0, I), which the VAE's prior is.
    """
    z_dim = truth.z_dim
    eye = torch.eye(z_dim, dtype=truth.prior_cov.dtype, device=truth.prior_cov.device)
    if truth.prior_loc.abs().max() > 0 or not torch.equal(truth.prior_cov, eye):
        raise ValueError(
            "linear_gaussian_vae needs a standard-normal prior over z (LinearGaussian.standard)"
        )
    cfg = VAEConfig(
        x_dim=truth.x_dim,
        z_dim=z_dim,
        encoder="linear",
        decoder="linear",
        likelihood="gaussian-learned",
        guide=guide,
        guide_options=guide_options or {},
    )
    vae = build_vae(cfg).to(dtype=dtype or truth.weight.dtype, device=truth.weight.device)
    with torch.no_grad():
        dec = vae.decoder[0]
        dec.weight.copy_(truth.weight)
        dec.bias.copy_(truth.bias)
        vae.likelihood.log_scale.copy_(0.5 * truth.noise_var.log())
    return vae
