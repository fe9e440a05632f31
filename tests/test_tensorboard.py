"""``pyrovae train --tensorboard``: each epoch's record as TensorBoard scalars equal to the run's
metrics, samples for the VAE on images, and a clear refusal where tensorboard is missing."""

import builtins
import json

import pytest

from pyrovae.cli import main

pytest.importorskip("tensorboard")

TINY = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=4", "--z-dim", "2",
        "--likelihood", "gaussian-learned", "--n-train", "200", "--n-eval", "50",
        "--quiet", "--threads", "1"]  # fmt: skip


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return events


def test_each_epoch_is_written_as_the_metrics_say_and_a_resume_appends(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--run-dir", str(run), "--tensorboard"]) == 0
    assert main(["train", "--resume", "--run-dir", str(run), "--epochs", "3", "--tensorboard",
                 "--quiet"]) == 0  # fmt: skip
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = _scalars(run / "tensorboard")
    for key in ("train_elbo", "valid_elbo", "lr", "train_seconds"):
        written = events.Scalars(key)
        assert [e.step for e in written] == [1, 2, 3]
        assert [e.value for e in written] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    assert "tensorboard" not in (run / "config.json").read_text()  # not part of the run


def test_the_vae_on_images_gets_a_grid_of_samples_each_epoch(tmp_path, mnist_dir):
    run = tmp_path / "img"
    flags = ["--dataset", "binarized-mnist", "--data-dir", str(mnist_dir), "--hidden", "16",
             "--z-dim", "2", "--epochs", "1", "--quiet", "--tensorboard"]  # fmt: skip
    assert main(["train", *flags, "--run-dir", str(run)]) == 0
    images = _scalars(run / "tensorboard").Images("samples")
    # 64 samples of 28 x 28 in an 8 x 8 grid
    assert len(images) == 1 and images[0].step == 1
    assert images[0].height == images[0].width == 8 * 28


def test_without_the_tensorboard_package_training_is_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    real = builtins.__import__

    def missing(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", missing)
    run = tmp_path / "never"
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(run), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install tensorboard" in err
    assert not run.exists()
