"""Training end to end: run directories, checkpoints, exact resume, divergence, bad input."""

import json
import math

import pytest
import torch

from pyrovae import TrainConfig, TrainingDiverged, VAEConfig, load_vae, train
from pyrovae.particles import NotApplicable
from pyrovae.training import CheckpointError, Trainer, checkpoint_path

SMALL_MODEL = VAEConfig(z_dim=2, hidden=(16,), decoder="linear", likelihood="gaussian-learned")


def small_config(**kw):
    base = dict(
        dataset="linear-gaussian",
        dataset_options={"x_dim": 5, "z_dim": 2},
        n_train=300,
        n_eval=100,
        epochs=2,
        batch_size=50,
        lr=3e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_run_directory_and_improves(tmp_path):
    result = train(small_config(epochs=3), SMALL_MODEL, run_dir=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert (run / "config.json").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["x_dim"] == 5
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["valid_elbo"]) for m in metrics)
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"]
    best = max(m["valid_elbo"] for m in metrics)
    assert result.best_valid_elbo == pytest.approx(best)
    vae, state = load_vae(run, "best")
    assert state["valid_elbo"] == pytest.approx(best)
    last_vae, last_state = load_vae(run, "last")
    assert last_state["epoch"] == 3
    for a, b in zip(last_vae.state_dict().values(), result.vae.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "estimator,options",
    [
        ("pathwise", {}),
        ("score-function", {}),
        ("score-function", {"baseline": "neural"}),
        ("dreg", {}),
        ("vimco", {}),
    ],
)
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, estimator, options):
    cfg = small_config(estimator=estimator, estimator_options=options, epochs=3)
    straight = train(cfg, SMALL_MODEL, run_dir=tmp_path / "a", progress=False)
    train(
        small_config(estimator=estimator, estimator_options=options, epochs=1),
        SMALL_MODEL,
        run_dir=tmp_path / "b",
        progress=False,
    )
    resumed = train(small_config(epochs=3), run_dir=tmp_path / "b", resume=True, progress=False)
    for (name, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), name
    assert [m["valid_elbo"] for m in straight.metrics] == [m["valid_elbo"] for m in resumed.metrics]


def test_existing_run_is_not_overwritten(tmp_path):
    train(small_config(epochs=1), SMALL_MODEL, run_dir=tmp_path / "run", progress=False)
    before = checkpoint_path(tmp_path / "run", "last").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(epochs=1), SMALL_MODEL, run_dir=tmp_path / "run", progress=False)
    assert checkpoint_path(tmp_path / "run", "last").read_bytes() == before


@pytest.mark.parametrize("producer", ["direct", "traced"])
def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch, producer
):
    calls = {"n": 0}
    real_step = Trainer.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        return float("nan") if calls["n"] > 8 else real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", step)  # 6 steps per epoch: NaN in epoch 2
    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2.*epoch 1.*--lr"):
        train(
            small_config(epochs=3, producer=producer),
            SMALL_MODEL,
            run_dir=tmp_path / "run",
            progress=False,
        )
    vae, state = load_vae(tmp_path / "run", "last")
    assert state["epoch"] == 1 and state["producer"] == producer
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1


def test_bernoulli_likelihood_rejects_non_binary_data(tmp_path):
    with pytest.raises(ValueError, match="binary data.*--likelihood gaussian"):
        train(
            small_config(), VAEConfig(z_dim=2, hidden=(8,)), run_dir=tmp_path / "r", progress=False
        )


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train(small_config(epochs=1), SMALL_MODEL, run_dir=tmp_path / "run", progress=False)
    path = checkpoint_path(tmp_path / "run", "best")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_vae(tmp_path / "run", "best")
    with pytest.raises(CheckpointError, match="nothing does not exist: give a run directory"):
        load_vae(tmp_path / "nothing")


@pytest.mark.parametrize(
    "estimator,options",
    [("pathwise", {}), ("score-function", {"baseline": "neural"}), ("vimco", {})],
)
def test_the_producers_train_alike_and_a_run_resumes_on_the_other(tmp_path, estimator, options):
    """The direct and traced producers take the same steps (up to float rounding), and a run
    checkpointed by one resumes on the other: estimator and optimizer state are the trainer's,
    not the producer's."""
    runs = {}
    for producer in ("direct", "traced"):
        cfg = small_config(
            estimator=estimator, estimator_options=options, epochs=2, producer=producer
        )
        runs[producer] = train(cfg, SMALL_MODEL, run_dir=tmp_path / producer, progress=False)
        assert runs[producer].producer == producer
        assert {m["producer"] for m in runs[producer].metrics} == {producer}
    for a, b in zip(runs["direct"].vae.parameters(), runs["traced"].vae.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    cfg = small_config(estimator=estimator, estimator_options=options, epochs=1, producer="traced")
    train(cfg, SMALL_MODEL, run_dir=tmp_path / "switch", progress=False)
    again = small_config(epochs=2, producer="direct")  # named: the run continues on it
    resumed = train(again, run_dir=tmp_path / "switch", resume=True, progress=False)
    assert [m["producer"] for m in resumed.metrics] == ["traced", "direct"]
    # "auto" keeps the run's own producer.
    kept = train(small_config(epochs=3), run_dir=tmp_path / "switch", resume=True, progress=False)
    assert kept.producer == "direct"
    for a, b in zip(runs["direct"].vae.parameters(), resumed.vae.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_an_estimator_that_does_not_apply_fails_before_anything_is_written(tmp_path):
    with pytest.raises(NotApplicable, match="'pathwise' estimator does not apply.*no reparam"):
        train(
            small_config(),
            VAEConfig(
                z_dim=2,
                hidden=(8,),
                likelihood="gaussian-learned",
                prior="bernoulli",
                guide="bernoulli",
            ),
            run_dir=tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="same kind"):
        train(
            small_config(estimator="vimco"),
            VAEConfig(z_dim=2, hidden=(8,), likelihood="gaussian-learned", prior="bernoulli"),
            run_dir=tmp_path / "run",
            progress=False,
        )
    assert not (tmp_path / "run").exists()
