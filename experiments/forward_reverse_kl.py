"""Forward against reverse KL: a Gaussian q fitted to a bimodal mixture p both ways.

    python experiments/forward_reverse_kl.py   # about 10 s; writes figures/forward_reverse_kl.png

p is an equal mixture of N(-2, 0.6²) and N(2, 0.6²) (Pyro's ``MixtureSameFamily``); q = N(m, s²).

- **Forward, KL(p ‖ q)** = -H(p) - E_p[log q]: minimizing it maximizes the expected
  log-likelihood of q under p, so it is what maximum likelihood on samples of p converges to
  (density estimation). Setting its derivatives in m and s to zero gives q's mean and variance
  equal to p's: a closed form (``p.mean``, ``p.variance``), which puts q's mass between the modes,
  where p has almost none. The script checks the closed form against L-BFGS on the exact KL
  (by quadrature) and against maximum likelihood on draws of p.
- **Reverse, KL(q ‖ p)** = E_q[log q - log p], the objective of variational inference (minus
  the ELBO of the model z ~ p with nothing observed): q pays dearly for mass where p is small,
  so it locks onto one mode. Fitted by SVI from q₀ = N(1, 1) with Pyro's estimators:
  the score-function gradient E_q[∇ log q (log q - log p + 1)] (``TraceGraph_ELBO``, with z
  drawn by ``sample``, not ``rsample``) and, for comparison, the pathwise one (``Trace_ELBO``).
  The +1 term has mean zero (E_q ∇ log q = 0) and Pyro leaves it out; the script computes the
  formula with it by autograd of log q and shows the two differ by exactly the score ∇ log q on
  the same draws.

The reverse fits are held against L-BFGS on the exact reverse KL from the same start: q locked
to the mode at 2 (m 1.997, s 0.605), KL 0.692, just under log 2 = 0.693, the KL of q equal to
one component, against which p is half as dense (the other mode's tail adds a little). Reverse
KL has another, worse local minimum: a broad q centred between the modes (L-BFGS from N(0.5,
1.5): m = 0, s = 1.79, KL 1.138), which a fit started near the midpoint settles into; the start
N(1, 1) lies in the basin of the mode at 2.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

from pyrovae.threads import apply_threads, prepare_runtime

prepare_runtime()  # the command line's thread policy, before torch loads OpenMP

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from pyrovae.plots import save_figure  # noqa: E402

FIGURE = Path(__file__).resolve().parent / "figures" / "forward_reverse_kl.png"
MODES = (-2.0, 2.0)
MODE_STD = 0.6
START = (1.0, 1.0)  # q₀ = N(1, 1²), the reverse fits' start
# The real line for the quadrature: outside it p and every q here have densities below 1e-20,
# and the trapezoid rule on a smooth, rapidly decaying integrand is accurate to rounding at this
# spacing (0.005).
GRID = torch.linspace(-20.0, 20.0, 8001, dtype=torch.float64)


def mixture(weights=(0.5, 0.5), locs=MODES, scale: float = MODE_STD) -> dist.MixtureSameFamily:
    """p: a mixture of 1-D Gaussians, batch shape (), event shape ()."""
    kw = {"dtype": torch.float64}
    return dist.MixtureSameFamily(
        dist.Categorical(torch.tensor(weights, **kw)),
        dist.Normal(torch.tensor(locs, **kw), torch.tensor(scale, **kw)),
    )


def kl_by_quadrature(a: dist.Distribution, b: dist.Distribution) -> torch.Tensor:
    """KL(a ‖ b) = ∫ a (log a - log b) dz for 1-D densities, by the trapezoid rule on ``GRID``;
    a scalar, differentiable in the parameters of both (the exact answer the fits are judged
    against)."""
    log_a = a.log_prob(GRID)
    return torch.trapezoid(log_a.exp() * (log_a - b.log_prob(GRID)), GRID)


def fit_by_lbfgs(p: dist.Distribution, direction: str, start=START) -> Dict[str, float]:
    """The Gaussian q = N(m, s²) minimizing KL(p ‖ q) (``direction="forward"``) or KL(q ‖ p)
    (``"reverse"``), by L-BFGS over (m, log s) on the exact KL (``kl_by_quadrature``) from
    ``start``: the fits found numerically, without sampling, for the closed form and the SVI
    fits to be held against. Returns ``loc``, ``scale``, ``var`` and the ``kl`` reached."""
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    loc = torch.tensor(start[0], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(math.log(start[1]), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [loc, log_scale],
        lr=1,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def kl() -> torch.Tensor:
        q = dist.Normal(loc, log_scale.exp())
        return kl_by_quadrature(p, q) if direction == "forward" else kl_by_quadrature(q, p)

    def closure():
        opt.zero_grad()
        loss = kl()
        loss.backward()
        return loss

    opt.step(closure)
    scale = log_scale.exp().item()
    return {"loc": loc.item(), "scale": scale, "var": scale**2, "kl": kl().item()}


def model(p: dist.Distribution):
    """The 'model' whose ELBO is minus KL(q ‖ p): one latent z ~ p, nothing observed."""
    pyro.sample("z", p)


def sample_q(loc: torch.Tensor, scale: torch.Tensor, reparameterized: bool) -> torch.Tensor:
    """Draw z ~ q = N(loc, scale²) at the site ``z``. ``reparameterized=False`` makes the draw
    a plain ``sample`` (Pyro's ``has_rsample_(False)``), so Pyro's ELBOs take the
    score-function gradient at z."""
    q = dist.Normal(loc, scale)
    return pyro.sample("z", q if reparameterized else q.has_rsample_(False))


def guide(reparameterized: bool, start=START):
    """q = N(m, s²) with learnable m and s > 0 (Pyro params ``loc`` and ``scale``), from
    ``start`` = (m, s)."""

    def program():
        loc = pyro.param("loc", torch.tensor(start[0], dtype=torch.float64))
        scale = pyro.param(
            "scale",
            torch.tensor(start[1], dtype=torch.float64),
            constraint=dist.constraints.positive,
        )
        return sample_q(loc, scale, reparameterized)

    return program


def elbo(reparameterized: bool, particles: int):
    """Pyro's estimator of the ELBO gradient, ``particles`` draws vectorized: ``Trace_ELBO``
    (pathwise) or ``TraceGraph_ELBO`` (score function, for the non-reparameterized guide)."""
    cls = Trace_ELBO if reparameterized else TraceGraph_ELBO
    return cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=0)


def score_function_kl_gradient(p: dist.Distribution, loc, scale, z):
    """The score-function estimate of ∇_(m, s) KL(q ‖ p) for q = N(m, s²) at draws z (N,):
    the mean over z of ∇ log q(z) (log q(z) - log p(z) + 1), by autograd of log q at fixed z.
    ``loc``, ``scale``: scalar tensors requiring grad. Returns (∂/∂m, ∂/∂s)."""
    log_q = dist.Normal(loc, scale).log_prob(z.detach())  # (N,)
    weight = (log_q - p.log_prob(z) + 1).detach()  # the cost: held fixed, differentiated not
    return torch.autograd.grad((log_q * weight).mean(), (loc, scale))


def reverse_fit(
    p,
    reparameterized: bool,
    steps: int,
    particles: int,
    lr: float,
    seed: int,
    record_every: int = 10,
) -> Dict[str, object]:
    """Minimize KL(q ‖ p) by SVI (Adam) with Pyro's estimator; the fit and the exact KL along
    the way (every ``record_every`` steps)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(
        lambda: model(p),
        guide(reparameterized),
        pyro.optim.Adam({"lr": lr}),
        elbo(reparameterized, particles),
    )
    q0 = dist.Normal(*(torch.tensor(v, dtype=torch.float64) for v in START))
    trace_steps, trace_kl = [], []
    name = "score function" if not reparameterized else "pathwise"
    for step in tqdm(range(steps + 1), desc=f"reverse KL, {name}", leave=False):
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                started = "loc" in pyro.get_param_store()  # made by the first step
                q = dist.Normal(pyro.param("loc"), pyro.param("scale")) if started else q0
                trace_steps.append(step)
                trace_kl.append(kl_by_quadrature(q, p).item())
        if step < steps:
            svi.step()
    loc, scale = pyro.param("loc").item(), pyro.param("scale").item()
    return {"loc": loc, "scale": scale, "steps": trace_steps, "kl": trace_kl}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="SVI steps per reverse fit")
    parser.add_argument("--particles", type=int, default=16, help="draws of z per step")
    parser.add_argument("--lr", type=float, default=0.03, help="Adam's step size")
    parser.add_argument("--samples", type=int, default=10000, help="draws of p for the MLE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FIGURE, help="the figure's path")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the experiment; print what it checks, write the figure, return the numbers."""
    args = parse_args(argv)
    p = mixture()

    # Forward: the closed form, L-BFGS on the exact KL, and maximum likelihood on draws of p.
    closed = {"loc": p.mean.item(), "var": p.variance.item()}
    lbfgs = fit_by_lbfgs(p, "forward")
    gap = max(abs(lbfgs["loc"] - closed["loc"]), abs(lbfgs["var"] - closed["var"]))
    print(
        f"forward fit, argmin KL(p ‖ q): closed form mean {closed['loc']:.6f} var "
        f"{closed['var']:.6f}; L-BFGS on the exact KL: max difference {gap:.1e}"
    )
    pyro.set_rng_seed(args.seed)
    draws = p.sample((args.samples,))
    mle = {"loc": draws.mean().item(), "var": draws.var(unbiased=False).item()}
    print(
        f"  maximum likelihood on {args.samples} draws of p: mean {mle['loc']:.3f}, var "
        f"{mle['var']:.3f} (the same fit, up to sampling noise)"
    )

    # Reverse: the optimum near q₀ without sampling, then SVI with either gradient.
    best = fit_by_lbfgs(p, "reverse")
    print(
        f"reverse fit, argmin KL(q ‖ p) from q₀ = N{START}: L-BFGS on the exact KL: mean "
        f"{best['loc']:.3f}, std {best['scale']:.3f}, KL {best['kl']:.4f} "
        f"(log 2 = {math.log(2):.4f}: q one component)"
    )
    fits = {
        "score function": reverse_fit(p, False, args.steps, args.particles, args.lr, args.seed),
        "pathwise": reverse_fit(p, True, args.steps, args.particles, args.lr, args.seed),
    }
    p_std = math.sqrt(closed["var"])
    for name, fit in fits.items():
        mode = min(MODES, key=lambda m: abs(m - fit["loc"]))
        print(
            f"  SVI, {name} gradient: mean {fit['loc']:.3f} (mode at {mode:g}), std "
            f"{fit['scale']:.3f} (p's {p_std:.3f}), KL {fit['kl'][-1]:.4f}"
        )

    check = score_function_check(p, args.seed)
    print(
        "score-function formula E_q[∇ log q (log q - log p + 1)] by autograd, against Pyro's "
        f"TraceGraph_ELBO on the same {check['draws']} draws: they differ by the mean score "
        f"E[∇ log q] to {check['max_error']:.1e}"
    )

    draw(args.out, p, closed, fits, args.particles)
    print(f"wrote {args.out}")
    return {
        "closed": closed,
        "lbfgs": lbfgs,
        "mle": mle,
        "reverse_lbfgs": best,
        "fits": fits,
        "check": check,
    }


def score_function_check(
    p: dist.Distribution, seed: int, draws: int = 64, loc: float = 1.0, scale: float = 1.0
) -> Dict[str, object]:
    """Pyro's score-function gradient of KL(q ‖ p) (``TraceGraph_ELBO``, ``draws`` particles) and
    ``score_function_kl_gradient`` on the same draws; Pyro's equals the formula less the mean
    of ∇ log q (the +1 term, which has expectation zero).

    Returns the two gradients (∂/∂m, ∂/∂s), the mean score and the largest difference."""
    # Leaf tensors, not Pyro params: the gradient is with respect to (m, s) themselves.
    loc_t = torch.tensor(loc, dtype=torch.float64, requires_grad=True)
    scale_t = torch.tensor(scale, dtype=torch.float64, requires_grad=True)

    def program():
        return sample_q(loc_t, scale_t, reparameterized=False)

    # Pyro's gradient of KL(q ‖ p) = -ELBO, from a fixed seed ...
    pyro.set_rng_seed(seed)
    elbo(False, draws).loss_and_grads(lambda: model(p), program)
    pyro_grad = (loc_t.grad.clone(), scale_t.grad.clone())
    # ... the same draws again, from the same seed, under a plate at the same dim ...
    pyro.set_rng_seed(seed)
    with pyro.plate("particles", draws, dim=-1):
        z = program().detach()
    # ... and the formula with its +1, by autograd of log q at those draws.
    formula = score_function_kl_gradient(p, loc_t, scale_t, z)
    log_q = dist.Normal(loc_t, scale_t).log_prob(z)
    mean_score = torch.autograd.grad(log_q.mean(), (loc_t, scale_t))
    error = max(abs((f - s - g).item()) for f, s, g in zip(formula, mean_score, pyro_grad))
    return {
        "draws": draws,
        "pyro": [g.item() for g in pyro_grad],
        "formula": [f.item() for f in formula],
        "mean_score": [s.item() for s in mean_score],
        "max_error": error,
    }


def draw(path, p, closed, fits, particles) -> None:
    """The figure: p with the forward fit and both reverse fits; the reverse KL along SVI."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    z = torch.linspace(-5, 5, 801, dtype=torch.float64)
    left.fill_between(z, p.log_prob(z).exp(), color="0.8", label="p: mixture of two Gaussians")
    forward = dist.Normal(closed["loc"], math.sqrt(closed["var"]))
    left.plot(
        z,
        forward.log_prob(z).exp(),
        color="tab:blue",
        lw=2,
        label="argmin KL(p ‖ q): mean and variance of p",
    )
    styles = {"score function": ("tab:red", "-"), "pathwise": ("k", "--")}
    for name, fit in fits.items():
        color, ls = styles[name]
        q = dist.Normal(fit["loc"], fit["scale"])
        left.plot(
            z,
            q.log_prob(z).exp(),
            color=color,
            ls=ls,
            lw=2 if ls == "-" else 1.2,
            label=f"argmin KL(q ‖ p), {name} gradient",
        )
    start = dist.Normal(*START)
    left.plot(
        z, start.log_prob(z).exp(), color="0.4", ls=":", lw=1, label="q₀, the reverse fits' start"
    )
    left.set_xlabel("z")
    left.set_ylabel("density")
    left.set_title("forward KL covers both modes, reverse KL picks one")
    left.legend(fontsize=8, loc="upper left")
    left.set_ylim(0, 0.85)

    for name, fit in fits.items():
        color, ls = styles[name]
        right.plot(
            fit["steps"],
            fit["kl"],
            color=color,
            ls=ls,
            lw=1.5,
            label=f"{name} ({particles} draws/step)",
        )
    right.axhline(math.log(2), color="0.4", ls=":", lw=1, label="log 2: q one of the components")
    right.set_xlabel("SVI step (Adam)")
    right.set_ylabel("KL(q ‖ p), exact (quadrature)")
    right.set_title("the reverse fits along the way")
    right.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    apply_threads()  # (beside other work, a thread lent back: docs, "Threads")
    main()
