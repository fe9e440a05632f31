"""Training engines: how one optimisation step is taken.

Two engines compute the same objective:

- ``pyro``: ``pyro.infer.SVI`` with the estimator's Pyro ELBO and ``pyro.optim.Adam``. Works
  for every estimator and any model/guide.
- ``fast``: the pathwise and score-function estimators computed directly from the VAE's parts
  (``pyrovae.fastpath``; the same losses and gradients as ``Trace_ELBO`` and
  ``TraceGraph_ELBO`` under the same random numbers) with one fused ``torch.optim.Adam`` over
  all parameters. Pyro's per-parameter optimizers and trace handlers cost about as much as the
  network itself at batch 100 on a CPU.

``auto`` (the default) picks ``fast`` where it applies and ``pyro`` elsewhere.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import pyro
import pyro.optim
import torch
from pyro.infer import SVI

from .elbos import materialize_baseline
from .estimators import NEURAL_BASELINE_NAME, Estimator, clear_estimator_state
from .fastpath import (
    supports_fast_path,
    vae_analytic_kl_loss,
    vae_bound_losses,
    vae_elbo_loss,
    vae_score_function_losses,
    vae_stl_loss,
    vae_vimco_losses,
)
from .model import VAE
from .runtime import tune_allocator

ENGINES = ("auto", "fast", "pyro")


class PyroEngine:
    """``pyro.infer.SVI`` + ``pyro.optim.Adam``; state includes estimator state kept in the
    param store (decaying-average baselines)."""

    name = "pyro"

    def __init__(self, vae: VAE, estimator: Estimator, lr: float) -> None:
        self.vae = vae
        self.baseline_net = estimator.baseline_net
        self.optim = pyro.optim.Adam({"lr": lr})
        self.svi = SVI(vae.model, estimator.wrap_guide(vae.guide), self.optim, loss=estimator.elbo)

    def step(self, x: torch.Tensor, num_data: int) -> float:
        """One SVI step on batch ``x`` (B, x_dim); returns the loss (minus scaled ELBO)."""
        return self.svi.step(x, num_data)

    def _own_params(self, name: str) -> bool:
        # The VAE's and the neural baseline's parameters live in their modules (saved as
        # state dicts): pyro.module registers a module's own tensors, but a value already in
        # the store would shadow the module's rather than update it.
        return name.startswith(self.vae.name + "$$$") or name.startswith(
            NEURAL_BASELINE_NAME + "$$$"
        )

    def state_dict(self) -> Dict[str, Any]:
        store = pyro.get_param_store()
        extra = {k: store[k].detach().clone() for k in store.keys() if not self._own_params(k)}
        state = {"optim": self.optim.get_state(), "param_store_extra": extra}
        if self.baseline_net is not None and not _is_lazy(self.baseline_net):
            state["baseline_net"] = self.baseline_net.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optim.set_state(state["optim"])
        clear_estimator_state()
        store = pyro.get_param_store()
        for k in [k for k in store.keys() if k.startswith(NEURAL_BASELINE_NAME + "$$$")]:
            del store[k]
        for k, v in state["param_store_extra"].items():
            store[k] = v
        if "baseline_net" in state:
            if self.baseline_net is None:
                raise ValueError("the checkpoint holds a neural baseline this estimator lacks")
            self.baseline_net.load_state_dict(state["baseline_net"])


def _is_lazy(module: torch.nn.Module) -> bool:
    return any(
        isinstance(p, torch.nn.parameter.UninitializedParameter) for p in module.parameters()
    )


class FastEngine:
    """Every estimator computed from the VAE's parts (``pyrovae.fastpath``) with one fused Adam
    over all parameters, a neural baseline's included. The decaying-average baseline is engine
    state (saved in checkpoints)."""

    name = "fast"

    def __init__(self, vae: VAE, estimator: Estimator, lr: float) -> None:
        if not fast_engine_applies(vae, estimator):
            raise ValueError(
                f"the fast engine supports the estimators {', '.join(FAST_ESTIMATORS)} on a "
                f"pyrovae VAE, not "
                f"{estimator.name!r} on {type(vae).__name__}; use --engine pyro"
            )
        self.vae = vae
        self.estimator = estimator.name
        self.num_particles = estimator.elbo.num_particles
        self.score_function = estimator.name == "score-function"
        self.baseline_net = estimator.baseline_net
        if self.baseline_net is not None:
            param = next(vae.parameters())
            materialize_baseline(self.baseline_net, param.new_zeros(1, vae.x_dim))
        self.use_baseline = estimator.decaying_average
        self.baseline_beta = estimator.baseline_beta
        self.baseline: Optional[torch.Tensor] = None
        params = list(vae.parameters())
        if self.baseline_net is not None:
            params += list(self.baseline_net.parameters())
        try:  # the fused CPU kernel (torch >= 2.4) updates every parameter in one call
            self.optim = torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optim = torch.optim.Adam(params, lr=lr, foreach=True)

    def step(self, x: torch.Tensor, num_data: int) -> float:
        """One Adam step on batch ``x`` (B, x_dim); returns the loss (minus scaled ELBO)."""
        self.optim.zero_grad(set_to_none=True)
        if self.score_function:
            if self.use_baseline and self.baseline is None:
                self.baseline = torch.zeros(_cost_shape(x, self.num_particles), dtype=x.dtype)
            loss, surrogate, self.baseline = vae_score_function_losses(
                self.vae,
                x,
                num_data,
                self.num_particles,
                self.baseline if self.use_baseline else None,
                self.baseline_beta,
                self.baseline_net,
            )
        elif self.estimator in ("iwae", "dreg"):
            dreg = self.estimator == "dreg"
            loss, surrogate = vae_bound_losses(self.vae, x, num_data, self.num_particles, dreg)
        elif self.estimator == "vimco":
            loss, surrogate = vae_vimco_losses(self.vae, x, num_data, self.num_particles)
        else:
            loss = surrogate = _ELBO_LOSSES[self.estimator](
                self.vae, x, num_data, self.num_particles
            )
        surrogate.backward()
        self.optim.step()
        return loss.item()

    def state_dict(self) -> Dict[str, Any]:
        state = {"optim": self.optim.state_dict(), "baseline": self.baseline}
        if self.baseline_net is not None:
            state["baseline_net"] = self.baseline_net.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "baseline_net" in state:
            if self.baseline_net is None:
                raise ValueError("the checkpoint holds a neural baseline this estimator lacks")
            self.baseline_net.load_state_dict(state["baseline_net"])
        self.optim.load_state_dict(state["optim"])
        self.baseline = state.get("baseline")


def _cost_shape(x: torch.Tensor, num_particles: int):
    return (x.shape[0],) if num_particles == 1 else (num_particles, x.shape[0])


_ELBO_LOSSES = {
    "pathwise": vae_elbo_loss,
    "analytic-kl": vae_analytic_kl_loss,
    "stl": vae_stl_loss,
}
FAST_ESTIMATORS = ("score-function", "iwae", "dreg", "vimco", *_ELBO_LOSSES)


def fast_engine_applies(vae: object, estimator: Estimator) -> bool:
    """Whether the fast engine computes exactly what the Pyro engine would."""
    return estimator.name in FAST_ESTIMATORS and supports_fast_path(vae)


def make_engine(name: str, vae: VAE, estimator: Estimator, lr: float):
    """The engine called ``name`` (``auto``, ``fast`` or ``pyro``) for this VAE and estimator."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    family = getattr(vae, "guide_family", None)
    if estimator.reparameterized and not getattr(family, "reparameterizable", True):
        raise ValueError(
            f"the {estimator.name!r} estimator differentiates through samples of z, but the "
            f"{type(family).__name__} guide is discrete and cannot be reparameterized; use "
            "--estimator score-function (e.g. --baseline neural) or --estimator vimco"
        )
    if name == "auto":
        name = "fast" if fast_engine_applies(vae, estimator) else "pyro"
    tune_allocator()  # batches of tensors above glibc's mmap threshold, every step
    return (FastEngine if name == "fast" else PyroEngine)(vae, estimator, lr)
