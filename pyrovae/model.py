"""The VAE: a Pyro model p(z) p_θ(x|z) and guide q_φ(z|x) built from swappable parts.

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
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import pyro
import torch
from torch import nn

from .config import OptionError, Rule, config_from_dict, option, validate_fields
from .data import as_data_tensor
from .linear_gaussian import LinearGaussian
from .particles import Particles
from .parts.guides import GUIDES, GuideFamily
from .parts.likelihoods import LIKELIHOODS, Likelihood
from .parts.nets import ACTIVATIONS, NETS
from .parts.priors import PRIORS, Prior
from .runtime import check_memory


@dataclass(frozen=True)
class VAEConfig:
    """Everything needed to rebuild a VAE; saved in every checkpoint.

    Defaults are the IWAE paper's one-stochastic-layer net, 784-200-200-50 with tanh both ways.
    ``encoder``/``decoder`` name a network (``mlp`` or ``linear``); ``prior``, ``likelihood`` and
    ``guide`` name a registered part; ``prior_options``, ``likelihood_options`` and
    ``guide_options`` go to that part's constructor (e.g. ``{"components": 500}`` for the
    VampPrior, ``{"sigma": 0.5}`` for a Gaussian likelihood, ``{"layers": 4}`` for a flow guide).
    """

    x_dim: int = option(784, Rule("int", minimum=1))
    z_dim: int = option(50, Rule("int", minimum=1))
    hidden: Tuple[int, ...] = option((200, 200), Rule("ints", minimum=1))
    activation: str = option("tanh", Rule("str", choices=sorted(ACTIVATIONS)))
    encoder: str = option("mlp", Rule("str", choices=NETS.names))
    decoder: str = option("mlp", Rule("str", choices=NETS.names))
    prior: str = option("standard-normal", Rule("str", choices=PRIORS.names))
    prior_options: Dict[str, Any] = option(rule=Rule("dict"), default_factory=dict)
    likelihood: str = option("bernoulli", Rule("str", choices=LIKELIHOODS.names))
    likelihood_options: Dict[str, Any] = option(rule=Rule("dict"), default_factory=dict)
    guide: str = option("diagonal-gaussian", Rule("str", choices=GUIDES.names))
    guide_options: Dict[str, Any] = option(rule=Rule("dict"), default_factory=dict)

    def __post_init__(self) -> None:
        validate_fields(self)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
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
        prior.bind(encoder, guide_family, likelihood.x_dim, likelihood.data_range)
        if prior.latent != guide_family.latent:
            raise ValueError(
                f"the prior models {prior.latent} latents but the guide family "
                f"{type(guide_family).__name__} draws {guide_family.latent} ones: choose a prior "
                "and a guide of the same kind (binary latents: --prior bernoulli --guide "
                "bernoulli)"
            )

    @property
    def x_dim(self) -> int:
        return self.likelihood.x_dim

    @property
    def z_dim(self) -> int:
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
        if self._index_cache.numel() != batch:
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
            return pyro.sample("z", self.guide_family(self.encoder(x)))

    def particles(
        self,
        x: torch.Tensor,
        num_data: Optional[int] = None,
        num_particles: int = 1,
        reparameterized: Optional[bool] = None,
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

        Returns:
            ``Particles`` with (K, B) fields. z is drawn now; the densities (the decoder pass
            among them) are computed when first read and draw no random numbers, so they may
            be computed on another thread.
        """
        scale = self.data_scale(x, num_data)
        h = self.encoder(x)
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
            log_prior=lambda: self.prior.log_prob(z),
            log_lik=lambda: self.likelihood(self._decode(z)).log_prob(x),
            log_q=log_q,
            log_q_stopped=log_q_stopped,
            kl=kl,
        )

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder on z (..., z_dim) with the leading dims as one: matrix multiplies on
        (K B, z_dim) rows, not (K, B, z_dim) batches, are 5% of a training step faster
        (measured at K = 1, batch 100). The same function of each row."""
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        return out.reshape(z.shape[:-1] + out.shape[-1:])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z] at z = the guide's sample for each row of ``x`` (B, x_dim) -> (B, x_dim)."""
        x = as_data_tensor(x, "x", next(self.parameters()).dtype)
        self.data_scale(x)  # the shape
        z = self.guide_family(self.encoder(x)).sample()
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


def _check_size(config: VAEConfig, enc_out: int, dec_out: int, parts: int) -> None:
    """Refuse, before allocating the networks, a VAE whose parameters with their gradients and
    Adam's two moments (16 bytes each) would not fit in memory: the encoder's and decoder's
    (``enc_out``, ``dec_out`` outputs) and ``parts`` more (the prior's, guide family's and
    likelihood's own)."""
    enc = [config.x_dim, *config.hidden, enc_out]
    dec = [config.z_dim, *config.hidden, dec_out]
    count = sum((a + 1) * b for widths in (enc, dec) for a, b in zip(widths, widths[1:]))
    check_memory(16 * (count + parts), "a VAE of this size", "lower --hidden or --z-dim")


def _count(value: Any) -> int:
    """A positive whole-number option's value, else 0."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return min(value, 2**40) if ok else 0


def _part(registry, name: str, what: str, options: Dict[str, Any], size: int):
    """The part registered as ``name``, made with ``size`` and its ``options``; an option it
    does not take, or a bad value, is an ``OptionError`` naming it and the flag."""
    factory = registry.get(name)
    takes = sorted(set(list(inspect.signature(factory).parameters)[1:]))
    unknown = sorted(set(options) - set(takes))
    flag = f"--{what}-option"
    if unknown:
        raise OptionError(
            f"the {name!r} {what} takes no option(s) {unknown} ({flag})"
            + (f"; it takes: {', '.join(takes)}" if takes else "; it takes none")
            + (" (--sigma is for the Gaussian likelihoods)" if "sigma" in unknown else "")
        )
    try:
        return factory(size, **options)
    except (TypeError, ValueError) as e:
        raise OptionError(f"the {name!r} {what}: {e} ({flag})") from None


def build_vae(config: VAEConfig) -> VAE:
    """Build a VAE from a config, each part looked up by name in its registry.

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
    _check_size(config, 2 * config.z_dim, config.x_dim, 2 * config.z_dim)
    check_memory(
        16 * sum(_count(v) * (config.x_dim + 2 * config.z_dim) for v in config.prior_options.values()),
        "a prior of this size",
        "lower its components",
    )
    prior = _part(PRIORS, config.prior, "prior", config.prior_options, config.z_dim)
    likelihood = _part(
        LIKELIHOODS, config.likelihood, "likelihood", config.likelihood_options, config.x_dim
    )
    family = _part(GUIDES, config.guide, "guide", config.guide_options, config.z_dim)
    parts = sum(p.numel() for m in (prior, likelihood, family) for p in m.parameters())
    _check_size(config, family.in_features, likelihood.out_features, parts)
    encoder = NETS.get(config.encoder)(
        config.x_dim, family.in_features, config.hidden, config.activation
    )
    decoder = NETS.get(config.decoder)(
        config.z_dim, likelihood.out_features, config.hidden, config.activation
    )
    return VAE(encoder, decoder, prior, likelihood, family, config=config)
