"""The built-in semi-supervised M2 (``pyrovae.m2``): its enumerated bound against Pyro's
``TraceEnum_ELBO`` on a batch mixing labelled and unlabelled points, the labelled points'
terms against the paper's L(x, y), and its classification term (``Program.auxiliary``) in
training only."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyrovae.estimators import make_estimator
from pyrovae.m2 import M2, make
from pyrovae.particles import traced_particles
from pyrovae.producers import make_producer
from pyrovae.program import Program


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    m2 = M2(x_dim=12, z_dim=2, classes=3, hidden=8, **kw)
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    y = torch.tensor([0, -1, 2, -1, 1, -1])
    return m2, x, y


def test_mixed_batch_equals_traceenum_elbo():
    """Labelled and unlabelled points in one batch: pathwise equals TraceEnum_ELBO (loss and
    gradient) at the same random numbers."""
    m2, x, y = _small()
    torch.manual_seed(1)
    particles = traced_particles(m2.model, m2.guide, (x, y), max_plate_nesting=1)
    loss, surrogate = make_estimator("pathwise")(particles)
    torch.manual_seed(1)
    ref = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, m2.guide, x, y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    params = list(m2.parameters())
    ours = torch.autograd.grad(surrogate, params, allow_unused=True)
    theirs = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_labelled_points_get_the_bound_of_their_label():
    """A labelled point's term is L(x, y) = E_q(z|x,y)[log p(x, y, z) - log q(z | x, y)]: the
    same as the program conditioned on y (the guide's y then fixed, the model's observed),
    in expectation over z (many particles), and with no classifier gradient from it."""
    m2, x, y = _small()
    k = 4000
    pyro.set_rng_seed(2)
    summed = traced_particles(m2.model, m2.guide, (x, y), num_particles=k, max_plate_nesting=1)
    onehot = torch.nn.functional.one_hot(y.clamp_min(0), 3).float()
    model = poutine.condition(m2.model, data={"y": onehot})
    guide = poutine.condition(m2.guide, data={"y": onehot})
    given = traced_particles(model, guide, (x, y), num_particles=k, max_plate_nesting=1)
    labelled = y >= 0
    a, b = summed.log_w[:, labelled], given.log_w[:, labelled]
    se = ((a.var(0) + b.var(0)) / k).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()
    classifier = list(m2.classifier.parameters())
    grads = torch.autograd.grad(a.sum(), classifier, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)


def test_a_batch_of_labelled_points_observes_y_with_the_same_bound():
    """A batch whose every point is labelled observes y (nothing enumerated, one z per point)
    and equals TraceEnum_ELBO there; its per-point terms agree in expectation with the same
    points' terms in a mixed batch (the degenerate q(y | x) summed over every class)."""
    m2, x, y = _small()
    labelled = y >= 0
    xl, yl = x[labelled], y[labelled]
    torch.manual_seed(1)
    alone = traced_particles(m2.model, m2.guide, (xl, yl), max_plate_nesting=1)
    assert alone.enumerated == () and alone.latents["z"].shape == (1, 3, 2)
    loss, _ = make_estimator("pathwise")(alone)
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="no sample sites configured for enumeration"):
        ref = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(m2.model, m2.guide, xl, yl)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    k = 4000
    pyro.set_rng_seed(3)
    a = traced_particles(m2.model, m2.guide, (xl, yl), num_particles=k, max_plate_nesting=1)
    b = traced_particles(m2.model, m2.guide, (x, y), num_particles=k, max_plate_nesting=1)
    a, b = a.log_w, b.log_w[:, labelled]
    se = ((a.var(0) + b.var(0)) / k).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() < 4 * se).all()


def test_classification_term_is_trained_and_never_evaluated():
    """The program's auxiliary term (w log q(y | x) on each labelled point) adds to the
    training loss, scaled by N / B, and gives the classifier a gradient; evaluation leaves it
    out."""
    m2, x, y = _small(weight=2.5)
    program = Program(m2.model, m2.guide, labels=True, auxiliary=m2.classification)
    producer = make_producer(program)
    batch = torch.cat([x, y.double().unsqueeze(1).float()], 1)
    torch.manual_seed(3)
    trained = producer(batch, 600, 1, None)
    torch.manual_seed(3)
    plain = make_producer(Program(m2.model, m2.guide, labels=True))(batch, 600, 1, None)
    log_q = m2.classify(x).log_softmax(-1)
    labelled = y >= 0
    expected = 2.5 * log_q[labelled, y[labelled]]
    torch.testing.assert_close(
        (trained.log_lik - plain.log_lik)[0, labelled], expected, rtol=1e-5, atol=1e-6
    )
    assert ((trained.log_lik - plain.log_lik)[0, ~labelled] == 0).all()
    loss, surrogate = make_estimator("pathwise")(trained)
    (g,) = torch.autograd.grad(surrogate, [m2.classifier[0].weight])
    assert g.abs().max() > 0
    torch.manual_seed(3)
    evaluated = producer(batch, None, 1, None)
    torch.manual_seed(3)
    reference = make_producer(Program(m2.model, m2.guide, labels=True))(batch, None, 1, None)
    torch.testing.assert_close(evaluated.log_w, reference.log_w)


def _hidden_layers(net) -> list:
    return [m.out_features for m in net if isinstance(m, torch.nn.Linear)][:-1]


def test_make_returns_the_paper_sizes_and_weights_as_a_program_with_labels():
    """The paper's networks (one hidden layer of 500 each) with the paper's classification
    weight α = 0.1 N shared out over the labelled points, w = 0.1 · 50000 / N_l per labelled
    point; the recipe's weight and its classifier of two hidden layers."""
    from pyrovae import m2 as module

    program = make()
    m2 = program.model.__self__
    assert (m2.x_dim, m2.z_dim, m2.classes) == (784, 50, 10)
    assert program.labels is True and program.auxiliary == m2.classification
    assert program.classify == m2.classify
    for labels in (100, 600, 1000, 3000):
        made = getattr(module, f"make_paper_{labels}")().model.__self__
        assert made.weight == pytest.approx(5000 / labels)
        for net in (made.classifier, made.encoder, made.decoder):
            assert _hidden_layers(net) == [500]
    assert m2.weight == module.RECIPE_WEIGHT == 46.0
    assert _hidden_layers(m2.classifier) == [500] * module.RECIPE_CLASSIFIER_LAYERS == [500, 500]
    assert _hidden_layers(m2.encoder) == _hidden_layers(m2.decoder) == [500]


def test_program_refuses_an_auxiliary_or_classifier_that_is_not_callable():
    from pyrovae.particles import ProgramError

    m2, _, _ = _small()
    for name in ("auxiliary", "classify"):
        with pytest.raises(ProgramError, match=f"{name} must be a callable"):
            Program(m2.model, m2.guide, labels=True, **{name: 3})


def test_an_auxiliary_term_of_the_wrong_shape_is_refused_in_one_line():
    from pyrovae.particles import ProgramError

    m2, x, y = _small()
    program = Program(m2.model, m2.guide, labels=True, auxiliary=lambda x, y: x.sum())
    batch = torch.cat([x, y.float().unsqueeze(1)], 1)
    with pytest.raises(ProgramError, match=r"one number per point of the batch, \(6,\)"):
        make_producer(program)(batch, 600, 1, None)


TORCHVISION = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/data/torchvision"


def test_labelled_batches_alternate_with_unlabelled_ones_each_scaled_to_its_part(
    monkeypatch, tmp_path
):
    """With labelled_batch_size, each step of an epoch is a batch of unlabelled points (a
    permutation of them), scaled by their number, then that many labelled points drawn at
    random, scaled by the labelled points' number."""
    from pyrovae import TrainConfig, train
    from pyrovae.training import trainer as module

    calls = []
    original = module.Trainer.step

    def recorded(self, x, n, beta, **kw):
        calls.append((x[:, -1].clone(), n))
        return original(self, x, n, beta, **kw)

    monkeypatch.setattr(module.Trainer, "step", recorded)
    options = {"binarize": "dynamic", "labelled": 3000}
    cfg = TrainConfig(model="pyrovae.m2:make", dataset="mnist", data_dir=str(TORCHVISION),
                      dataset_options=options, n_train=400, n_eval=40, epochs=1,
                      batch_size=100, labelled_batch_size=8)  # fmt: skip
    train(cfg, run_dir=str(tmp_path / "run"), progress=False)
    unlabelled, labelled = calls[0::2], calls[1::2]
    n_u, n_l = unlabelled[0][1], labelled[0][1]
    assert n_u + n_l == 400 and n_l > 0
    assert len(unlabelled) == len(labelled) == -(-n_u // 100)
    assert sum(len(y) for y, _ in unlabelled) == n_u
    assert all((y < 0).all() and n == n_u for y, n in unlabelled)
    assert all((y >= 0).all() and len(y) == 8 and n == n_l for y, n in labelled)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--dataset", "binarized-mnist"], "is for a program that takes labels"),
        (["--model", "pyrovae.m2:make", "--dataset", "mnist", "--data-dir", str(TORCHVISION)],
         "every one has a label"),
    ],
)  # fmt: skip
def test_labelled_batches_are_refused_where_they_cannot_apply(flags, words, tmp_path, capsys):
    from pyrovae.cli import main

    data = (
        ["--data-dir", str(TORCHVISION.parent / "binarized_mnist")]
        if "binarized-mnist" in flags
        else []
    )
    rest = ["--n-train", "200", "--n-eval", "20", "--epochs", "1", "--labelled-batch-size", "10",
            "--quiet", "--run-dir", str(tmp_path / "r")]  # fmt: skip
    code = main(["train", *flags, *data, *rest])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_the_encoder_takes_x_once_for_every_enumerated_label():
    """``M2.encode`` is the encoder on [x, y] (the same function, x's part computed once for
    all the labels): against the plain concatenation, for enumerated and given labels."""
    from pyrovae.m2 import joined

    m2, x, y = _small()
    for label in (torch.eye(3).view(3, 1, 1, 3), torch.eye(3)[y.clamp_min(0)]):
        torch.testing.assert_close(m2.encode(x, label), m2.encoder(joined(x, label)))
