"""Reading the training state of pyrovae 0.1.0 checkpoints (format 1), so those runs resume.

0.1.0 had two engines, each with its own state:

- ``fast``: one ``torch.optim.Adam`` over the VAE's parameters and then the neural baseline's,
  the decaying average as a tensor (``baseline``), the baseline net's ``state_dict``.
- ``pyro``: ``pyro.optim.Adam``, one torch Adam per parameter keyed by its name in Pyro's param
  store (``vae$$$...``, ``score_function_baseline$$$...``), the decaying average in the param
  store as ``__baseline_avg_downstream_cost_z``, the baseline net's ``state_dict``.

Both become the trainer's state: one fused Adam over the VAE's parameters and then the
estimator's, and the estimator's ``state_dict``. The mathematics of every estimator is
unchanged, so a resumed run continues the same training.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

# Names 0.1.0 used in Pyro's param store.
_V1_BASELINE_MODULE = "score_function_baseline"
_V1_AVERAGE = "__baseline_avg_downstream_cost_z"


def _estimator_state(trainer, average, baseline_net) -> Dict[str, Any]:
    estimator = trainer.estimator
    state = dict(estimator.state_dict())
    if "average" in state and average is not None:
        state["average"] = average.reshape(estimator.num_particles, -1).clone()
    if baseline_net is not None:
        if getattr(estimator, "baseline_net", None) is None:
            raise ValueError("the checkpoint holds a neural baseline this estimator lacks")
        for key, value in baseline_net.items():
            state["baseline_net." + key] = value
    return state


def trainer_state(state: Dict[str, Any], vae, trainer) -> Dict[str, Any]:
    """The v2 trainer state (``{"optim", "estimator"}``) equal to a v1 checkpoint's
    ``engine_state``, for ``vae`` and ``trainer`` built from the run's config."""
    engine, old = state.get("engine"), state["engine_state"]
    if engine == "fast":
        return {
            "optim": old["optim"],
            "estimator": _estimator_state(trainer, old.get("baseline"), old.get("baseline_net")),
        }
    if engine != "pyro":
        raise ValueError(f"a 0.1.0 checkpoint from an unknown engine {engine!r}")
    # One Adam per parameter, by its param-store name -> the fused Adam's per-index state.
    names = [f"{vae.name}$$${n}" for n, p in vae.named_parameters() if p.requires_grad]
    names += [
        f"{_V1_BASELINE_MODULE}$$${n.removeprefix('baseline_net.')}"
        for n, _ in trainer.estimator.named_parameters()
    ]
    optim = trainer.optim.state_dict()
    per_index: Dict[int, Dict[str, torch.Tensor]] = {}
    for index, name in enumerate(names):
        saved = old["optim"].get(name)
        if saved is None or not saved["state"]:
            continue
        per_index[index] = dict(saved["state"][0])
    optim["state"] = per_index
    extra = old.get("param_store_extra", {})
    return {
        "optim": optim,
        "estimator": _estimator_state(trainer, extra.get(_V1_AVERAGE), old.get("baseline_net")),
    }
