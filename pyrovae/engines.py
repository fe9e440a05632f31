"""Training engines: how one optimisation step is taken.

Two engines compute the same objective:

- ``pyro``: ``pyro.infer.SVI`` with the estimator's Pyro ELBO and ``pyro.optim.Adam``. Works
  for every estimator and any model/guide.
- ``fast``: the pathwise estimator computed directly from the VAE's parts
  (``pyrovae.fastpath``; same loss as ``Trace_ELBO`` under the same random numbers) with one
  fused ``torch.optim.Adam`` over all parameters. Pyro's per-parameter optimizers and trace
  handlers cost about as much as the network itself at batch 100 on a CPU.

``auto`` (the default) picks ``fast`` where it applies and ``pyro`` elsewhere.
"""

from __future__ import annotations

from typing import Any, Dict

import pyro
import pyro.optim
import torch
from pyro.infer import SVI

from .estimators import Estimator, clear_estimator_state
from .fastpath import supports_fast_path, vae_elbo_loss
from .model import VAE

ENGINES = ("auto", "fast", "pyro")


class PyroEngine:
    """``pyro.infer.SVI`` + ``pyro.optim.Adam``; state includes estimator state kept in the
    param store (decaying-average baselines)."""

    name = "pyro"

    def __init__(self, vae: VAE, estimator: Estimator, lr: float) -> None:
        self.vae = vae
        self.optim = pyro.optim.Adam({"lr": lr})
        self.svi = SVI(vae.model, estimator.wrap_guide(vae.guide), self.optim, loss=estimator.elbo)

    def step(self, x: torch.Tensor, num_data: int) -> float:
        """One SVI step on batch ``x`` (B, x_dim); returns the loss (minus scaled ELBO)."""
        return self.svi.step(x, num_data)

    def state_dict(self) -> Dict[str, Any]:
        store = pyro.get_param_store()
        prefix = self.vae.name + "$$$"
        extra = {k: store[k].detach().clone() for k in store.keys() if not k.startswith(prefix)}
        return {"optim": self.optim.get_state(), "param_store_extra": extra}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optim.set_state(state["optim"])
        clear_estimator_state()
        store = pyro.get_param_store()
        for k, v in state["param_store_extra"].items():
            store[k] = v


class FastEngine:
    """The pathwise ELBO from the VAE's parts with one fused Adam over all parameters."""

    name = "fast"

    def __init__(self, vae: VAE, estimator: Estimator, lr: float) -> None:
        if not fast_engine_applies(vae, estimator):
            raise ValueError(
                f"the fast engine supports the pathwise estimator on a pyrovae VAE, not "
                f"{estimator.name!r} on {type(vae).__name__}; use --engine pyro"
            )
        self.vae = vae
        self.num_particles = estimator.elbo.num_particles
        params = list(vae.parameters())
        try:  # the fused CPU kernel (torch >= 2.4) updates every parameter in one call
            self.optim = torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optim = torch.optim.Adam(params, lr=lr, foreach=True)

    def step(self, x: torch.Tensor, num_data: int) -> float:
        """One Adam step on batch ``x`` (B, x_dim); returns the loss (minus scaled ELBO)."""
        self.optim.zero_grad(set_to_none=True)
        loss = vae_elbo_loss(self.vae, x, num_data, self.num_particles)
        loss.backward()
        self.optim.step()
        return loss.item()

    def state_dict(self) -> Dict[str, Any]:
        return {"optim": self.optim.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optim.load_state_dict(state["optim"])


def fast_engine_applies(vae: object, estimator: Estimator) -> bool:
    """Whether the fast engine computes exactly what the Pyro engine would."""
    return estimator.name == "pathwise" and supports_fast_path(vae)


def make_engine(name: str, vae: VAE, estimator: Estimator, lr: float):
    """The engine called ``name`` (``auto``, ``fast`` or ``pyro``) for this VAE and estimator."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
    if name == "auto":
        name = "fast" if fast_engine_applies(vae, estimator) else "pyro"
    return (FastEngine if name == "fast" else PyroEngine)(vae, estimator, lr)
