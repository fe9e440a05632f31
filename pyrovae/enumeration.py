"""Discrete latents summed out exactly, as Pyro's ``TraceEnum_ELBO`` sums them.

A latent site marked for parallel enumeration (``infer={"enumerate": "parallel"}``, which
``pyro.infer.config_enumerate`` sets on every discrete site) is not sampled: Pyro's
``EnumMessenger`` gives it every value of its support along a tensor dimension left of the
particles' plate, and every site downstream of it broadcasts over that dimension. The traced
producer keeps each site's log density per (enumerated values, particle, data point) and this
module reduces them to the (K, B) fields every estimator reads:

- a site enumerated in the **model** alone (a mixture's component m) is summed out of the
  model: log p(x, z) = log Σ_m p(x, z, m) and log p(z) = log Σ_m p(z, m), so that
  log p(x | z) is their difference and every estimator and evaluator sees the model with m
  marginalized;
- a site enumerated in the **guide** (a semi-supervised VAE's label y, with z ~ q(z | x, y)
  drawn for every value of y) is averaged under q exactly: each ELBO field is E_q(y|x)[·],
  the objective ``TraceEnum_ELBO`` differentiates (the tests hold them equal). The
  importance weight sums it: w = Σ_y q(y|x) p(x, y, z_y) / (q(y|x) q(z_y|x, y)) =
  Σ_y p(x, y, z_y) / q(z_y | x, y), whose mean is p(x) (each term's is p(x, y)); the K-sample
  bound and the importance-weighted log p(x) average these (``Particles.log_w_summed``).

Why not Pyro's own contraction (``TraceEnum_ELBO``'s ``contract_tensor_tree``): it returns the
whole objective, not the per-particle, per-point terms pyrovae's estimators are written in.
Hence the one restriction it does not have: an enumerated site sits in the data plate, not in
a plate nested in it (whose values would be summed per position, not jointly).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from pyro import poutine
from pyro.poutine.enum_messenger import EnumMessenger

# (particles.py imports this module where it traces; the names it needs come from there)
from .particles import PARTICLE_PLATE, ProgramError


class _MarkedEnumeration(EnumMessenger):
    """Pyro's ``EnumMessenger`` acting on the sites marked for parallel enumeration alone: the
    record of every other site's dims it keeps for ``TraceEnum_ELBO``'s contraction (which
    pyrovae does not run) would cost each site of every program a training step's time."""

    def _pyro_sample(self, msg) -> None:
        if msg["infer"].get("enumerate") != "parallel" or msg["is_observed"]:
            return
        if msg["infer"].get("_markov_scope") is not None:
            raise ProgramError(
                f"site {msg['name']!r} is enumerated inside pyro.markov, which pyrovae does not "
                "sum (it sums each data point's discrete latents jointly): drop pyro.markov, or "
                "train the program with Pyro's TraceEnum_ELBO"
            )
        super()._pyro_sample(msg)

    def _pyro_post_sample(self, msg) -> None:
        pass


def guide_enumeration(nesting: int) -> EnumMessenger:
    """The handler that enumerates the guide's marked sites in dims left of the particles'
    plate (which sits at ``-(nesting + 1)``), as ``TraceEnum_ELBO`` enumerates its guide."""
    return _MarkedEnumeration(first_available_dim=-(nesting + 2))


def model_enumeration() -> EnumMessenger:
    """The handler that enumerates the model's own marked sites, in dims left of the guide's
    (it continues Pyro's dim allocation where the guide's handler left it)."""
    return _MarkedEnumeration()


def marked_for_enumeration(program, names: Sequence[str]):
    """``program`` with its sites ``names`` marked for parallel enumeration (the guide's
    enumerated sites, marked in the model that a sampler scores without replaying a guide)."""
    if not names:
        return program
    names = frozenset(names)
    return poutine.infer_config(
        program, lambda msg: {"enumerate": "parallel"} if msg["name"] in names else {}
    )


def unmarked(program):
    """``program`` with every enumeration mark taken off: its discrete sites sampled, as
    drawing from the guide's marginal q(z | x) = Σ_g q(g | x) q(z | x, g) needs."""
    return poutine.infer_config(program, lambda msg: {"enumerate": None})


def enumerate_dim(site: Mapping[str, Any]) -> Optional[int]:
    """The dim (from the right of the log density's batch dims) holding a site's enumerated
    values; None for a site that was sampled."""
    return site["infer"].get("_enumerate_dim")


def _check_site(site: Mapping[str, Any], depth: int) -> None:
    """Refuse an enumerated site outside the data plate or in a plate nested in it."""
    if -depth not in {f.dim for f in site["cond_indep_stack"] if f.name != PARTICLE_PLATE}:
        raise ProgramError(
            f"site {site['name']!r} is enumerated outside the data plate: pyrovae sums "
            "enumerated sites per data point, so draw a discrete latent marked for enumeration "
            "inside the data plate"
        )
    plates = [
        f.name
        for f in site["cond_indep_stack"]
        if f.vectorized and f.name != PARTICLE_PLATE and f.dim != -depth
    ]
    if plates:
        raise ProgramError(
            f"site {site['name']!r} is enumerated inside the plate {plates[0]!r}, nested in the "
            "data plate: pyrovae sums enumerated sites per data point, so draw a discrete "
            "latent marked for enumeration in the data plate itself, or leave it unmarked "
            "(a score-function estimator then handles it)"
        )


def refuse_sequential(sites: Sequence[Mapping[str, Any]]) -> None:
    """Refuse sites marked ``enumerate="sequential"`` (one trace per value), which pyrovae's
    one vectorized trace does not run."""
    for site in sites:
        if site["infer"].get("enumerate") == "sequential":
            raise ProgramError(
                f"site {site['name']!r} is marked for sequential enumeration, which pyrovae "
                'does not run: mark it infer={"enumerate": "parallel"} (config_enumerate\'s '
                "default), which sums it in one vectorized pass"
            )


class SummedSites:
    """The enumerated sites of a traced model/guide pair and the dims they hold.

    Per-point log densities here have shape (E_1, ..., E_n, K, B), n = ``count`` enumeration
    dims left of the particles (size 1 where a site does not depend on that enumerated site).

    Args:
        guide_sites, model_latent: the latent sites by name of the guide and of the model.
        nesting: the plates the program nests (the particles' plate is at -(nesting + 1)).
        depth: the data plate's depth (at dim -depth).
    """

    def __init__(self, guide_sites, model_latent, nesting: int, depth: int) -> None:
        refuse_sequential(list(guide_sites.values()) + list(model_latent.values()))
        self.guide = tuple(n for n, s in guide_sites.items() if enumerate_dim(s) is not None)
        self.model = tuple(
            n
            for n, s in model_latent.items()
            if n not in guide_sites and enumerate_dim(s) is not None
        )
        sites = [guide_sites[n] for n in self.guide] + [model_latent[n] for n in self.model]
        for site in sites:
            _check_site(site, depth)
        self.count = max((-enumerate_dim(s) for s in sites), default=nesting + 1) - (nesting + 1)

        def position(site) -> int:  # of its dim in an (E..., K, B) tensor
            return self.count + nesting + 1 + enumerate_dim(site)

        self.guide_dims = tuple(sorted({position(guide_sites[n]) for n in self.guide}))
        self.model_dims = tuple(sorted({position(model_latent[n]) for n in self.model}))

    def __bool__(self) -> bool:
        return bool(self.guide or self.model)

    def _model_summed(self, log_p: torch.Tensor) -> torch.Tensor:
        """log Σ over the model's enumerated values (their dims kept, of size 1)."""
        if not self.model_dims:
            return log_p
        return log_p.logsumexp(self.model_dims, keepdim=True)

    def _reduced(self, t: torch.Tensor) -> torch.Tensor:
        """(E..., K, B) with every enumeration dim of size 1 -> (K, B)."""
        return t.reshape(t.shape[self.count :]) if self.count else t

    def expected(self, log_q_guide: Optional[torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """E over the guide's enumerated values of ``t``, exactly: Σ_g q(g) t_g, (K, B)."""
        if log_q_guide is None:
            return self._reduced(t)
        t, log_q_guide = torch.broadcast_tensors(t, log_q_guide)
        q = log_q_guide.exp()
        # A value q gives no mass contributes nothing, though its log q is -inf (0 · -inf
        # would be NaN, and so would the gradient of a product masked after it).
        t = torch.where(q > 0, t, torch.zeros((), dtype=t.dtype, device=t.device))
        return self._reduced((q * t).sum(self.guide_dims, keepdim=True))

    def _split_q(self, log_q_sites: Dict[str, torch.Tensor]):
        """(log q(g): the guide's enumerated sites' joint, or None; log q(z | g): the rest)."""
        enumerated = [v for n, v in log_q_sites.items() if n in self.guide]
        rest = [v for n, v in log_q_sites.items() if n not in self.guide]
        return (sum(enumerated[1:], enumerated[0]) if enumerated else None,
                sum(rest[1:], rest[0]) if rest else torch.zeros(()))  # fmt: skip

    def fields(
        self,
        log_p_sites: Dict[str, torch.Tensor],
        log_lik_sites: Dict[str, torch.Tensor],
        log_q_sites: Dict[str, torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """The particles' (K, B) ``log_prior``, ``log_lik``, ``log_q`` and ``log_w_summed``
        from per-site (E..., K, B) log densities (the model's latent and observed sites, the
        guide's latent sites)."""
        log_q_guide, log_q_rest = self._split_q(log_q_sites)
        latent = sum(log_p_sites.values())
        log_pz = self._model_summed(latent)
        log_pxz = self._model_summed(latent + sum(log_lik_sites.values()))
        log_q = log_q_rest if log_q_guide is None else log_q_guide + log_q_rest
        summand = log_pxz - log_q_rest  # log p(x, z_g, g) - log q(z_g | g)
        if log_q_guide is not None:
            summand = torch.broadcast_tensors(summand, log_q_guide)[0]
            summand = summand.logsumexp(self.guide_dims, keepdim=True)
        return {
            "log_prior": self.expected(log_q_guide, log_pz),
            "log_lik": self.expected(log_q_guide, log_pxz - log_pz),
            "log_q": self.expected(log_q_guide, log_q),
            "log_w_summed": self._reduced(summand),
        }

    def expected_q(
        self, log_q_sites: Dict[str, torch.Tensor], stopped: Dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """E_q(g)[log q(g) + log q_stopped(z | g)], (K, B): the guide's density with the
        sampled sites' parameters cut (``stopped``, by name), the enumerated sites' weights
        and densities kept (their gradient is exact, not a score term)."""
        log_q_guide, _ = self._split_q(log_q_sites)
        _, log_q_rest = self._split_q(stopped)
        if log_q_guide is None:
            return self._reduced(log_q_rest)
        return self.expected(log_q_guide, log_q_guide + log_q_rest)

    def sampled_values(
        self, guide_sites: Mapping[str, Mapping[str, Any]], nesting: int
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """(the latents drawn once per particle, those with enumeration dims): the guide's
        sites split by whether their values broadcast over enumerated values."""
        plain, enumerated = {}, {}
        for n, s in guide_sites.items():
            batch = s["value"].dim() - s["fn"].event_dim
            (enumerated if n in self.guide or batch > nesting + 1 else plain)[n] = s["value"]
        return plain, enumerated


def enumerated_names(model, guide, args: Sequence[Any], nesting: int) -> Tuple[str, ...]:
    """The sites a model/guide pair sums out by enumeration (marked in the guide, or in the
    model alone), found by tracing it once as training does: no gradient kept, the random
    streams left as they were."""
    from .particles import _batch_of, _padded, _SmallBatch, _traced_pair
    from .runtime import fork_rng

    x = _batch_of(args)
    model, guide = (poutine.block(p, hide_types=["param"]) for p in (model, guide))
    with torch.no_grad(), fork_rng(x.device if x is not None else "cpu"):
        try:
            guide_trace, model_trace = _traced_pair(model, guide, args, {}, 1, nesting, None)
        except _SmallBatch as small:  # a plate that subsamples more points than given
            args = _padded(args, small.subsample_size)
            guide_trace, model_trace = _traced_pair(model, guide, args, {}, 1, nesting, None)
    names = [
        site["name"]
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample" and enumerate_dim(site) is not None
    ]
    return tuple(dict.fromkeys(names))
