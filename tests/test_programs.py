"""Pyro programs in the styles Pyro users write them (``tests/programs.py``: pixels as a nested
plate, ``poutine.scale`` KL annealing, a scale on the whole program, a data plate that
subsamples, code that indexes with a (B, D) mask) train and evaluate (issue 26):

- log p(x) per point ignores scales and scores every point: with the exact posterior as the
  guide, each importance weight is the exact log p(x), by pyrovae's evaluator and by a plain
  loop over Pyro traces;
- the training losses and gradients are Pyro's own ``Trace_ELBO`` and ``RenyiELBO(0)`` at the
  same random numbers, scales and subsampling included;
- ``max_plate_nesting`` is inferred as Pyro infers it;
- a program written for ``Trace_ELBO`` runs unchanged at one particle, and at more the error
  says that pyrovae's particle dimension is the cause;
- each trains through ``train`` and resumes exactly.
"""

from functools import partial

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoLowRankMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
)

from pyrovae import TrainConfig, estimate_log_likelihood, make_estimator, train
from pyrovae.data import Dataset
from pyrovae.particles import ProgramError, guess_max_plate_nesting, traced_particles
from pyrovae.producers import make_producer

from programs import LinearGaussianProgram, global_bias, global_bias_diagonal, loop_log_px

STYLES = {
    "plain": {},
    "nested": {"nested": True},
    "kl-annealed": {"beta": 0.3},
    "scaled": {"scale": 0.01},
    "subsampled": {"subsample": 4},
    "masked": {"masked": True},
}


def data(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("style", STYLES)
def test_log_px_of_each_program_is_exact_with_the_exact_posterior(style):
    program = LinearGaussianProgram(exact=True, **STYLES[style])
    x = data()
    exact = program.exact_log_px(x).detach()
    k = 1 if style == "masked" else 3  # (the masked program runs with one particle only)
    ours = estimate_log_likelihood(program.model, program.guide, x, k=k, progress=False)
    torch.testing.assert_close(ours.per_point_log_px.double(), exact, rtol=0, atol=1e-5)
    # One point per chunk: a batch smaller than a plate's subsample is padded, then cut.
    ones = estimate_log_likelihood(program.model, program.guide, x, k=k, chunk_pairs=k,
                                   progress=False)  # fmt: skip
    torch.testing.assert_close(ones.per_point_log_px.double(), exact, rtol=0, atol=1e-5)
    # (Pyro refuses a one-point batch to a plate that subsamples 4: the loop scores the same
    # program with its plate taking every point.)
    program.subsample = None
    loop = loop_log_px(program.model, program.guide, x[:3], k=2)
    torch.testing.assert_close(loop, exact[:3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("k", [1, 3])
def test_training_losses_and_gradients_are_pyros(style, k):
    """pathwise = Trace_ELBO and iwae = RenyiELBO(0), vectorized, at the same random numbers,
    with the trainer's route (the data scale N / B passed, here 1)."""
    if style == "masked" and k > 1:
        pytest.skip("written for one particle")
    program = LinearGaussianProgram(**STYLES[style])
    x = data()
    params = list(program.parameters())
    nesting = 2 if style == "nested" else 1
    # RenyiELBO multiplies the data plate's scale into the log weights, inside the
    # log-mean-exp: its objective is not the K-sample bound's where that scale is not 1
    # (tests/test_pyro_agreement.py).
    coincide = k > 1 and style not in ("scaled", "subsampled")
    cases = [("pathwise", Trace_ELBO)] + ([("iwae", RenyiELBO)] if coincide else [])
    for name, elbo_class in cases:
        options = {"alpha": 0.0} if elbo_class is RenyiELBO else {}
        elbo = elbo_class(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=nesting,
                          **options)  # fmt: skip
        pyro.set_rng_seed(3)
        for p in params:
            p.grad = None
        expected = elbo.loss_and_grads(program.model, program.guide, x)
        expected_grads = [p.grad.clone() for p in params]
        estimator = make_estimator(name, k)
        producer = make_producer((program.model, program.guide))
        pyro.set_rng_seed(3)
        particles = producer(x, x.shape[0], k, True)
        loss, surrogate = estimator(particles)
        grads = torch.autograd.grad(surrogate, params)
        assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-10), name
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10, msg=name)


def test_max_plate_nesting_is_inferred_as_pyro_infers_it():
    x = data()
    for style, nesting in (("plain", 1), ("nested", 2), ("subsampled", 1)):
        program = LinearGaussianProgram(**STYLES[style])
        before = torch.get_rng_state()
        assert guess_max_plate_nesting(program.model, program.guide, (x,)) == nesting
        assert torch.equal(torch.get_rng_state(), before)  # no draw taken from the stream


def test_a_subsampling_plate_trains_on_its_subsample_and_evaluates_every_point():
    program = LinearGaussianProgram(subsample=4)
    x = data()
    particles = make_producer((program.model, program.guide))(x, 100, 2, True)
    assert particles.log_w.shape == (2, 4)
    assert particles.scale == pytest.approx(100 / 10 * 10 / 4)
    assert particles.x.shape == (4, 5)  # the rows the plate drew: a neural baseline's input
    every = traced_particles(program.model, program.guide, (x,), num_particles=2, scaled=False)
    assert every.log_w.shape == (2, 10) and every.scale == 1.0


def test_a_program_written_for_one_particle_runs_there_and_is_explained_at_more():
    program = LinearGaussianProgram(masked=True)
    x = data()
    one = traced_particles(program.model, program.guide, (x,), num_particles=1)
    assert one.log_w.shape == (1, 10) and one.latents["z"].shape == (1, 10, 2)
    with pytest.raises(ProgramError, match="fails with 3 particles.*runs with one.*dim -2"):
        traced_particles(program.model, program.guide, (x,), num_particles=3)


def test_a_training_batch_smaller_than_the_subsample_is_refused_with_the_fix():
    program = LinearGaussianProgram(subsample=4)
    producer = make_producer((program.model, program.guide))
    with pytest.raises(ProgramError, match="subsample_size=4 points, but the batch holds 3.*"
                       "batches of at least 4"):  # fmt: skip
        producer(data(3), 30, 1, True)


def test_a_plate_that_subsamples_something_other_than_the_batch_is_refused():
    program = LinearGaussianProgram(subsample=4)
    model = lambda x: program.model(torch.cat([x, x]))  # noqa: E731
    guide = lambda x: program.guide(torch.cat([x, x]))  # noqa: E731
    with pytest.raises(ProgramError, match="takes 4 of 20 points, but the batch holds 10"):
        traced_particles(model, guide, (data(),), num_particles=1)


@pytest.mark.parametrize("style", ["nested", "kl-annealed", "scaled", "subsampled", "masked"])
def test_each_program_trains_and_resumes_exactly(style, tmp_path):
    x = data(60).float()
    dataset = Dataset("programs", x[:40], x[40:50], x[50:], binary=False)
    cfg = dict(dataset="programs", batch_size=10, lr=1e-2, seed=2)
    if style != "masked":
        cfg.update(estimator="iwae", estimator_options={"num_particles": 3})

    def program():
        torch.manual_seed(0)
        return LinearGaussianProgram(**STYLES[style]).float()

    straight = program()
    train(TrainConfig(epochs=2, **cfg), (straight.model, straight.guide), tmp_path / "a",
          progress=False, data=dataset)  # fmt: skip
    first = program()
    train(TrainConfig(epochs=1, **cfg), (first.model, first.guide), tmp_path / "b",
          progress=False, data=dataset)  # fmt: skip
    again = program()
    result = train(TrainConfig(epochs=2, **cfg), (again.model, again.guide), tmp_path / "b",
                   resume=True, progress=False, data=dataset)  # fmt: skip
    for a, b in zip(straight.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert all(torch.isfinite(torch.tensor(m["valid_elbo"])) for m in result.metrics)


GLOBALS = {
    "autonormal": global_bias,
    "autodiagonalnormal": global_bias_diagonal,
    "autodelta": partial(global_bias, AutoDelta),
    "autolowrank": partial(global_bias, AutoLowRankMultivariateNormal),
    "autonormalmessenger": partial(global_bias, AutoNormalMessenger),
}


def _global_and_local(model, guide, x):
    """(Σ log p - log q over the global sites, the same over the rest), from one guide trace
    and one model replay, as Pyro's ELBOs trace them."""
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    parts = {True: 0.0, False: 0.0}
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["name"] != "data":
                shared = not any(f.name == "data" for f in site["cond_indep_stack"])
                parts[shared] = parts[shared] + sign * site["fn"].log_prob(site["value"]).sum()
    return parts[True], parts[False]


@pytest.mark.parametrize("guide_kind", GLOBALS)
def test_a_global_latent_counts_once_in_the_loss_as_pyros_elbo_counts_it(guide_kind):
    """A Bayesian bias (``PyroSample``) guided by an autoguide beside an amortized guide of z:
    the pathwise loss and its gradients are ``Trace_ELBO``'s at the same random numbers; under
    the trainer's N / B the local terms are scaled and the global ones counted once."""
    pyro.clear_param_store()
    model, guide = GLOBALS[guide_kind]()
    x = data().float()
    guide(x)  # the autoguide's parameters, made (and drawn) on first use
    pyro.set_rng_seed(4)
    expected = Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    pyro.set_rng_seed(4)
    particles = traced_particles(model, guide, (x,), max_plate_nesting=1)
    assert "bias" in particles.global_latents and list(particles.latents) == ["z"]
    loss = make_estimator("pathwise")(particles)[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    params = [p for p in guide.vae.parameters()] + list(guide.bias_guide.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(a, b)
    pyro.set_rng_seed(4)
    scaled = make_estimator("pathwise")(traced_particles(model, guide, (x,), scale=6.0))[0]
    pyro.set_rng_seed(4)
    shared, local = _global_and_local(model, guide, x)
    assert scaled.item() == pytest.approx(-(6.0 * local + shared).item(), rel=1e-6)


def test_only_estimators_of_one_weight_per_point_take_global_latents():
    from pyrovae import ESTIMATORS
    from pyrovae.particles import NotApplicable
    from pyrovae.producers import applies

    pyro.clear_param_store()
    model, guide = global_bias()
    producer, x = make_producer((model, guide)), data().float()
    taken = {n for n in ESTIMATORS.names() if applies(producer, make_estimator(n), x)}
    assert taken == {"pathwise", "stl"}
    with pytest.raises(NotApplicable, match=r"global latents \(bias, bias_unconstrained\)"):
        make_estimator("iwae")(producer(x, 10, 5, True))


def _q_theta(bias_guide, loc, scale):
    """Set the autoguide's q(θ) to N(loc, diag scale²)."""
    from torch.distributions import biject_to

    if isinstance(bias_guide, AutoNormal):
        places = ((bias_guide.locs, "bias", loc), (bias_guide.scales, "bias", scale))
    else:
        places = ((bias_guide, "loc", loc), (bias_guide, "scale", scale))
    with torch.no_grad():
        for module, name, value in places:
            if name in module._pyro_params:  # a PyroParam: held unconstrained
                constraint = module._pyro_params[name][0]
                getattr(module, name + "_unconstrained").copy_(biject_to(constraint).inv(value))
            else:
                getattr(module, name).copy_(value)


@pytest.mark.parametrize("guide_kind", ["autonormal", "autodiagonalnormal"])
def test_log_px_with_a_global_latent_is_the_exact_predictive_density(guide_kind):
    """IW (and AIS, each chain holding its own draw of θ) estimate log E_q(θ)[p(x | θ)],
    exact here: N(x; m, W Wᵀ + diag s² + σ² I). A separate loop over Pyro traces agrees."""
    from pyrovae import ais_log_likelihood

    pyro.clear_param_store()
    model, guide = GLOBALS[guide_kind]()
    x = data(6).float()
    guide(x)  # the autoguide's parameters, made on first use
    loc, scale = torch.linspace(-0.5, 0.5, 5), torch.full((5,), 0.3)
    _q_theta(guide.bias_guide, loc, scale)
    exact = guide.vae.predictive_log_px(x, loc, scale).detach().double()
    pyro.set_rng_seed(0)
    iw = estimate_log_likelihood(model, guide, x, k=20000, progress=False)
    torch.testing.assert_close(iw.per_point_log_px, exact, rtol=0, atol=0.05)
    assert iw.elbo < iw.log_px
    pyro.set_rng_seed(0)
    ais = ais_log_likelihood((model, guide), x, steps=100, chains=400, leapfrog=5,
                             init="guide", progress=False)  # fmt: skip
    # (θ varies per chain: a point far from the data's bulk has a heavy-tailed average.)
    assert ((ais.per_point_log_px - exact).abs() <= 4 * ais.per_point_mc_stderr + 0.02).all()
    pyro.set_rng_seed(0)
    loop = loop_log_px(model, guide, x[:2], k=3000, skip=("bias", "bias_unconstrained",
                       "_AutoDiagonalNormal_latent"))  # fmt: skip
    torch.testing.assert_close(loop.double(), exact[:2], rtol=0, atol=0.1)


@pytest.mark.parametrize("guide_kind", GLOBALS)
def test_a_global_latent_program_trains_and_resumes_exactly(guide_kind, tmp_path):
    x = data(60).float()
    dataset = Dataset("programs", x[:40], x[40:50], x[50:], binary=False)
    cfg = dict(dataset="programs", batch_size=10, lr=1e-2, seed=2, estimator="stl")

    def parameters(guide):
        return list(guide.vae.parameters()) + list(guide.bias_guide.parameters())

    pyro.clear_param_store()
    model, straight = GLOBALS[guide_kind]()
    train(TrainConfig(epochs=2, **cfg), (model, straight), tmp_path / "a", progress=False,
          data=dataset)  # fmt: skip
    pyro.clear_param_store()
    model, first = GLOBALS[guide_kind]()
    train(TrainConfig(epochs=1, **cfg), (model, first), tmp_path / "b", progress=False,
          data=dataset)  # fmt: skip
    pyro.clear_param_store()
    model, again = GLOBALS[guide_kind]()
    result = train(TrainConfig(epochs=2, **cfg), (model, again), tmp_path / "b", resume=True,
                   progress=False, data=dataset)  # fmt: skip
    for a, b in zip(parameters(straight), parameters(again)):
        assert torch.equal(a, b)
    assert result.metrics[-1]["valid_elbo"] > result.metrics[0]["valid_elbo"] - 5


def test_what_pyrovae_cannot_do_with_global_latents_is_refused_naming_the_site():
    import pyro.distributions as dist

    from pyrovae import bdmc

    def model(x):
        bias = pyro.sample("bias", dist.Normal(0.0, 1.0))  # a global latent
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            loc = (z.sum(-1, keepdim=True) + bias.unsqueeze(-1)).expand(x.shape)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    x = data()
    # An autoguide of the whole model: z's parameters would be one set per batch position.
    with pytest.raises(ProgramError, match="AutoNormal draws 'z' inside the data plate 'data'"):
        traced_particles(model, AutoNormal(model), (x,))
    pyro.clear_param_store()
    with pytest.raises(ProgramError, match="AutoNormalMessenger draws 'z' inside the data"):
        traced_particles(model, AutoNormalMessenger(model), (x,))

    def local_bias(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("bias", dist.Normal(0.0, 1.0))
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))

    with pytest.raises(ProgramError, match="'bias' is drawn outside the data plate in the model"):
        traced_particles(model, local_bias, (x,), max_plate_nesting=1)

    def regression(x):  # no latent of each point: Bayesian regression, not a VAE
        bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(bias, 1.0).expand(x.shape).to_event(1), obs=x)

    def bias_guide(x):
        pyro.sample("bias", dist.Normal(0.0, 1.0))

    with pytest.raises(ProgramError, match="every latent of the guide .bias. is drawn outside"):
        traced_particles(regression, bias_guide, (x,))
    pyro.clear_param_store()
    with pytest.raises(ProgramError, match=r"BDMC is not supported .* global latents \(bias"):
        bdmc(global_bias(), data(4).float(), steps=2, chains=2, k=2, progress=False)


@pytest.mark.parametrize("style", ["nested", "kl-annealed", "scaled", "subsampled"])
def test_every_estimator_that_applies_trains_each_program(style, tmp_path):
    """Each registered estimator, with each of its variants, that applies to the program
    trains it for an epoch from Python (finite losses and validation ELBOs); the score-function
    estimator's loss is TraceGraph_ELBO's at the same random numbers."""
    from pyro.infer import TraceGraph_ELBO

    from pyrovae import ESTIMATORS
    from pyrovae.producers import applies

    x = data(60).float()
    dataset = Dataset("programs", x[:40], x[40:50], x[50:], binary=False)
    trained = []
    for name in ESTIMATORS.names():
        for options in ESTIMATORS.get(name).variants():
            torch.manual_seed(0)
            program = LinearGaussianProgram(**STYLES[style]).float()
            pair = (program.model, program.guide)
            if not applies(make_producer(pair), make_estimator(name, **options), x[:10]):
                continue
            cfg = TrainConfig(dataset="programs", epochs=1, batch_size=10, estimator=name,
                              estimator_options=options)  # fmt: skip
            result = train(cfg, pair, tmp_path / f"{name}-{len(trained)}", progress=False,
                           data=dataset)  # fmt: skip
            assert all(torch.isfinite(torch.tensor(m["valid_elbo"])) for m in result.metrics)
            trained.append(name)
    assert {"pathwise", "stl", "iwae", "score-function", "vimco"} <= set(trained), trained
    program = LinearGaussianProgram(**STYLES[style])
    pyro.set_rng_seed(5)
    expected = TraceGraph_ELBO(max_plate_nesting=2 if style == "nested" else 1).loss(
        program.model, program.guide, data()
    )
    pyro.set_rng_seed(5)
    particles = make_producer((program.model, program.guide))(data(), 10, 1, False)
    loss = make_estimator("score-function")(particles)[0].item()
    assert loss == pytest.approx(expected, rel=1e-8)


def test_labels_by_keyword_reach_the_program_as_by_position():
    """``Program(model, guide, labels="digit")`` calls ``model(x, digit=y)``: its particles are
    those of the same program taking y by position; a bad name is one line."""
    from pyrovae import Program
    from pyrovae.program import with_labels

    from programs import conditional, conditional_by_keyword

    x = torch.bernoulli(torch.full((5, 784), 0.3))
    batch = with_labels(x, torch.tensor([0, 3, 9, 3, 1]))
    out = []
    for factory in (conditional, conditional_by_keyword):
        pyro.set_rng_seed(0)
        out.append(make_producer(factory())(batch, 5, 3, True))
    torch.testing.assert_close(out[0].log_w, out[1].log_w)
    with pytest.raises(ProgramError, match="labels must be True, False or the name"):
        Program(lambda x: None, lambda x: None, labels="not a name")


@pytest.mark.parametrize("family", ["full-rank", "diagonal"])
def test_the_gap_of_a_program_fits_q_in_its_guides_family_to_the_known_optimum(family):
    """The inference gap of a user's program (``inference_gap`` on a pair): q* is each local
    site's distribution at per-point parameters, fitted. Linear-Gaussian truth: the posterior
    is N(m(x), S), S = Λ⁻¹; the full-rank guide's family holds it (approximation gap 0, the
    amortization gap KL(q ‖ p(z | x))); a diagonal Gaussian's best is N(m(x), diag(1 / Λ_ii)),
    approximation gap ½ (Σ log Λ_ii - log det Λ)."""
    import pyro.distributions as dist

    from pyrovae.evaluation.gap import inference_gap

    torch.manual_seed(0)
    program = LinearGaussianProgram(nested=family == "full-rank")
    x = data(6)

    def diagonal(x):  # a mean-field guide of the same model
        with pyro.plate("data", x.shape[0]):
            loc = x @ program.A.T + program.c
            pyro.sample("z", dist.Normal(loc, program.log_diag.exp()).to_event(1))

    guide = program.guide if family == "full-rank" else diagonal
    gap = inference_gap((program.model, guide), x, k=2000, steps=300, samples=8,
                        progress=False)  # fmt: skip
    exact = program.exact_log_px(x).detach()
    loc, tril = program.posterior(x)
    var = (2 * program.log_sigma).exp()
    precision = (torch.eye(2, dtype=x.dtype) + program.W.T @ program.W / var).detach()
    if family == "full-rank":
        best = torch.zeros(())
    else:
        best = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    q = dist.Normal(x @ program.A.T + program.c, program.log_diag.exp()).to_event(1)
    kl = torch.distributions.kl_divergence(
        dist.MultivariateNormal(q.base_dist.loc, scale_tril=torch.diag_embed(q.base_dist.scale)),
        dist.MultivariateNormal(loc, scale_tril=tril),
    ).detach()
    pp = gap.per_point
    torch.testing.assert_close(pp["elbo_fitted"], exact - best, rtol=0, atol=0.02)
    assert abs(gap.approximation_gap - best.item()) < 0.02
    assert (
        abs(gap.amortization_gap - (kl.mean() - best).item())
        < 4 * gap.amortization_gap_stderr + 0.05
    )


def test_training_turns_pyros_validation_off_after_its_first_step_and_still_checks_the_data():
    """Pyro's validation (every distribution's parameters and values, at every step) is on in
    a program's first training step and in evaluation, off in later training steps; data
    outside the likelihood's support is refused in one line in every one of them."""
    from pyro.distributions.util import is_validation_enabled

    from pyrovae.m2 import M2

    torch.manual_seed(0)
    m2 = M2(x_dim=12, z_dim=2, classes=3, hidden=8)
    seen = []

    def model(x):
        seen.append(is_validation_enabled())
        m2.model(x)

    producer = make_producer((model, m2.guide))
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    with pyro.validation_enabled(True):
        by_call = []
        for num_data in (60, 60, None, 60):
            seen.clear()
            producer(x, num_data, 1, True)
            by_call.append(set(seen))
        assert by_call == [{True}, {False}, {True}, {False}] and is_validation_enabled()
        bad = x.clone()
        bad[3, 5] = 0.5
        for num_data in (60, None):
            with pytest.raises(ProgramError, match=r"site 'x' observes values outside its "
                               r"distribution's support .*binarize the data"):  # fmt: skip
                producer(bad, num_data, 1, True)
