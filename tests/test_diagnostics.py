"""Gradient diagnostics: the running moments are right, parameters are left alone, and the
numbers show the properties the estimators are known for."""

import pyro
import pytest
import torch

from pyrovae.evaluation.gradients import _Moments, gradient_variance, parse_estimator_spec

from helpers import linear_vae, random_truth, set_mean_field_guide


def test_running_moments_match_torch():
    g = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * torch.arange(7.0)
    m = _Moments()
    for row in g:
        m.add(row)
    total, snr = m.summary()
    assert total == pytest.approx(g.double().var(0).sum().item(), rel=1e-10)
    live = g.std(0) > 0  # the first column is all zeros: left out of the mean SNR
    expected = (g.mean(0).abs()[live] / g.std(0)[live]).mean().item()
    assert snr == pytest.approx(expected, rel=1e-5)


def test_estimator_specs():
    assert parse_estimator_spec("iwae:num_particles=10") == ("iwae", {"num_particles": 10})
    assert parse_estimator_spec("score-function:baseline=neural,baseline-beta=0.5") == (
        "score-function",
        {"baseline": "neural", "baseline_beta": 0.5},
    )
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_estimator_spec("iwae:10")


def test_gradient_variance_at_the_posterior():
    truth = random_truth(3, 1, 11)  # one latent: the mean-field guide can be exact
    x = truth.sample(8, torch.Generator().manual_seed(4))
    vae = linear_vae(truth)
    set_mean_field_guide(vae, truth)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    pyro.set_rng_seed(0)
    specs = ["pathwise", "stl", "dreg", "score-function:baseline=none"]
    stats = {s.estimator: s for s in gradient_variance(vae, x, specs, draws=50, progress=False)}
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {s.producer for s in stats.values()} == {"direct"}
    assert stats["stl"].encoder_variance < 1e-20 and stats["dreg"].encoder_variance < 1e-20
    assert stats["pathwise"].encoder_variance > 1e-3
    assert (
        stats["score-function:baseline=none"].encoder_variance > stats["pathwise"].encoder_variance
    )
    assert all(s.decoder_variance > 0 for s in stats.values())


def test_gradvar_holds_the_adapted_state_and_measures_the_runs_producer(tmp_path, monkeypatch):
    """Baselines adapt during the warm-up (state updated) and are then held fixed for every
    draw, so the draws are independent; and a run trained on the traced producer is measured
    on it."""
    from pyrovae import TrainConfig, VAEConfig, train
    from pyrovae.estimators.score_function import ScoreFunction
    from pyrovae.runs import gradvar_run

    cfg = TrainConfig(
        dataset="linear-gaussian",
        dataset_options={"x_dim": 4, "z_dim": 2},
        n_train=200,
        n_eval=50,
        epochs=1,
        batch_size=50,
        producer="traced",
    )
    model = VAEConfig(z_dim=2, hidden=(8,), decoder="linear", likelihood="gaussian-learned")
    train(cfg, model, run_dir=tmp_path / "run", progress=False)
    updates = []
    forward = ScoreFunction.forward

    def recording(self, particles, update_state=True):
        updates.append(update_state)
        return forward(self, particles, update_state)

    monkeypatch.setattr(ScoreFunction, "forward", recording)
    stats, _ = gradvar_run(
        str(tmp_path / "run"),
        estimators=["score-function"],
        draws=5,
        warmup=3,
        batch_size=20,
        progress=False,
        out_dir=str(tmp_path / "out"),
    )
    assert stats[0].producer == "traced"
    # applies() (no update), 3 warm-up steps (updates), the untimed call and 5 draws (none).
    assert updates == [False, True, True, True] + [False] * 6
