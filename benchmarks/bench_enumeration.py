"""Training speed of a model with an enumerated discrete latent: the semi-supervised M2
(``pyrovae.m2``, y summed out over 10 classes) through pyrovae's trainer against
``pyro.infer.SVI`` with ``TraceEnum_ELBO`` on the same program, in the same process.

    python benchmarks/bench_enumeration.py [--steps 30] [--reps 5]

Both compute the same loss and gradient at the same random numbers (``tests/test_enumeration.py``
holds them equal); the table gives each one's time per step on unlabelled batches of 100 and
its ratio to SVI's. A third row is the same step written by hand in PyTorch on M2's own
networks (no Pyro, no tracing, the same fused Adam): the floor that the networks' arithmetic
sets for any implementation of this program's step.
"""

from __future__ import annotations

import argparse
import math

from pyrovae.threads import prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import pyro  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pyro.infer import SVI, TraceEnum_ELBO  # noqa: E402

from pyrovae import make_estimator  # noqa: E402
from pyrovae.m2 import M2, joined  # noqa: E402
from pyrovae.producers import make_producer  # noqa: E402
from pyrovae.runtime import fused_adam, tune_allocator  # noqa: E402
from pyrovae.training import Trainer  # noqa: E402

from common import binarized_mnist, interleaved_medians, table  # noqa: E402


def pyrovae_step():
    """A trainer step (traced producer, pathwise estimator, one fused Adam) on M2."""
    m2 = M2()
    producer = make_producer((m2.model, m2.guide))
    trainer = Trainer(producer, make_estimator("pathwise"), list(m2.parameters()), 1e-3)
    return lambda x: trainer.step(x, 50000)


def svi_step(validation: bool = True):
    """The same step through pyro.infer.SVI with TraceEnum_ELBO (per-parameter Adams), with
    Pyro's validation as Pyro sets it (on), or off (``pyro.enable_validation(False)``: what
    pyrovae's trainer does after a program's first step, checking the data's support alone)."""
    m2 = M2()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    svi = SVI(m2.model, m2.guide, pyro.optim.Adam({"lr": 1e-3}), elbo)

    # SVI's loss is for the batch as given; the trainer's is scaled by N / B: the same work.
    def step(x):
        with pyro.validation_enabled(validation):
            return svi.step(x)

    return step


def hand_written_step():
    """The unlabelled bound U(x) and its gradient written out in PyTorch on M2's networks:
    Σ_y q(y|x) [log p(x|y,z_y) + log p(y) + log p(z_y) - log q(z_y|x,y) - log q(y|x)], z_y
    drawn for each of the 10 classes, scaled by N / B, one fused Adam step."""
    m2 = M2()
    optim = fused_adam(list(m2.parameters()), 1e-3)
    eye = torch.eye(m2.classes).unsqueeze(1)  # (C, 1, C): each class's one-hot
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def step(x):
        y = eye.expand(-1, x.shape[0], -1)
        log_q_y = m2.classify(x).log_softmax(-1).T  # (C, B)
        loc, log_scale = m2.encode(x, y).chunk(2, -1)
        eps = torch.randn_like(loc)
        z = loc + log_scale.exp() * eps
        log_q_z = (-0.5 * eps**2 - log_scale - half_log_2pi).sum(-1)
        log_p_z = (-0.5 * z**2 - half_log_2pi).sum(-1)
        logits = m2.decoder(joined(z, y))
        log_p_x = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)
        term = log_p_x + log_p_z - log_q_z - math.log(m2.classes) - log_q_y
        loss = -(log_q_y.exp() * term).sum() * (50000 / x.shape[0])
        optim.zero_grad()
        loss.backward()
        optim.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed repetition")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    pyro.clear_param_store()
    data = binarized_mnist("train")
    batches = [data[i * 100 : (i + 1) * 100] for i in range(args.steps)]
    tune_allocator()
    steps = {"pyro.infer.SVI + TraceEnum_ELBO (reference)": svi_step()}
    pyro.clear_param_store()
    steps["pyro.infer.SVI + TraceEnum_ELBO, validation off"] = svi_step(validation=False)
    pyro.clear_param_store()
    steps["pyrovae trainer (traced, pathwise, y enumerated)"] = pyrovae_step()
    steps["hand-written PyTorch step (the networks' floor)"] = hand_written_step()

    def runner(step):
        def run(rep):
            for x in batches:
                step(x)

        return run

    med = interleaved_medians({k: runner(f) for k, f in steps.items()}, reps=args.reps)
    ref = med["pyro.infer.SVI + TraceEnum_ELBO (reference)"]
    rows = [(k, f"{t / args.steps * 1e3:.1f}", f"{t / ref:.2f}") for k, t in med.items()]
    print(
        f"threads: {torch.get_num_threads()}, M2 (784-500-50, 10 classes enumerated), batch 100, "
        f"{args.steps} steps x {args.reps} interleaved repetitions (medians)\n"
    )
    print(table(rows, ["training step", "ms/step", "ratio to SVI"]))


if __name__ == "__main__":
    main()
