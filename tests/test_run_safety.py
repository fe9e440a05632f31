"""Nothing lost: a training killed at each stage of an epoch commit resumes to exactly the run
that was never killed; one process at a time trains in a run directory; a divergence says
what was kept; a resumed run takes the options it may change and records them."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from pyrovae.cli import main

# A small linear-Gaussian problem: an epoch takes a few tens of milliseconds.
TINY = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=4"]
TINY += ["--dataset-option", "n_train=200", "--dataset-option", "n_valid=50"]
TINY += ["--dataset-option", "n_test=50", "--z-dim", "2", "--hidden", "8", "--batch-size", "50"]
TINY += ["--likelihood", "gaussian-learned"]
TINY += ["--quiet"]


def _train(run, epochs, *extra):
    return main(["train", *TINY, "--run-dir", str(run), "--epochs", str(epochs), *extra])


def _last(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _without_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# The epoch commit writes best.pt, then last.pt, then metrics.jsonl, each to NAME.tmp renamed
# into place; the script kills the training just before or just after the nth rename onto one
# of them (at the file system, so the kill does not depend on how the trainer is written).
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pyrovae.cli import main

    name, nth, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    replace, seen = os.replace, [0]

    def replace_and_maybe_die(src, dst, *args, **kwargs):
        hit = os.path.basename(dst) == name and seen[0] + 1 == nth
        seen[0] += os.path.basename(dst) == name
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst, *args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_and_maybe_die
    sys.exit(main(sys.argv[4:]))
    """
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 3-epoch run, never stopped: what every interrupted run must end as."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert _train(run, 3) == 0
    return run


@pytest.mark.parametrize(
    "name,nth,when",
    [
        ("best.pt", 2, "before"),  # epoch 2's commit, before anything of it is written
        ("best.pt", 2, "after"),
        ("last.pt", 2, "after"),  # the commit point passed, the metrics not yet written
        ("metrics.jsonl", 3, "before"),  # (written once at the start, then every epoch)
        ("metrics.jsonl", 3, "after"),
    ],
)
def test_a_kill_at_any_stage_of_an_epoch_commit_loses_nothing(
    tmp_path, uninterrupted, name, nth, when
):
    run = tmp_path / "run"
    argv = ["train", *TINY, "--run-dir", str(run), "--epochs", "3"]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, name, str(nth), when, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # it did stop mid-commit
    assert _train(run, 3, "--resume") == 0
    assert not list(run.rglob("*.tmp"))  # what the kill left is cleared
    a, b = _last(uninterrupted), _last(run)
    assert a["epoch"] == b["epoch"] == 3
    for name, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][name]), name
    best_a = torch.load(uninterrupted / "checkpoints" / "best.pt", weights_only=True)
    best_b = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    for name, value in best_a["model_state"].items():
        assert torch.equal(value, best_b["model_state"][name]), name
    assert _without_times(_metrics(run)) == _without_times(_metrics(uninterrupted))


def test_a_metrics_file_behind_its_checkpoint_is_repaired_on_resume(tmp_path, uninterrupted):
    run = tmp_path / "run"
    assert _train(run, 2) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:7])  # cut mid-line
    assert main(["sample", str(run), "--n", "4"]) == 0  # the cut line is dropped, not an error
    assert _train(run, 3, "--resume") == 0
    assert _without_times(_metrics(run)) == _without_times(_metrics(uninterrupted))


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pyrovae.training import RunLock
    RunLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_one_process_at_a_time_trains_in_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # The holder is another process (flock locks conflict between open files, in any process).
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(run, 1) == 2
        err = capsys.readouterr().err
        assert f"another pyrovae process (pid {holder.pid}) is training in {run}" in err
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()  # kill -9: the OS drops the lock with the process
        holder.wait()
    assert _train(run, 1) == 0


def test_a_lock_is_held_for_the_whole_run_and_released_after(tmp_path, monkeypatch, capsys):
    import pyrovae.training.trainer as trainer
    from pyrovae.training import RunLock

    run = tmp_path / "run"
    seen = []
    write = trainer.write_metrics

    def write_and_try_the_lock(path, records):
        with pytest.raises(ValueError, match="another pyrovae process"):
            RunLock(path).acquire()
        seen.append(len(records))
        write(path, records)

    monkeypatch.setattr(trainer, "write_metrics", write_and_try_the_lock)
    assert _train(run, 2) == 0
    assert seen == [0, 1, 2]
    RunLock(run).acquire().release()  # free again


def test_default_run_directories_never_collide(tmp_path, monkeypatch):
    from pyrovae.training.rundir import default_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *a: "20261121-120000")
    names = {default_run_dir("ring", "pathwise").name for _ in range(3)}
    assert names == {"ring-pathwise-20261121-120000", "ring-pathwise-20261121-120000-2",
                     "ring-pathwise-20261121-120000-3"}  # fmt: skip


def test_a_loss_that_is_not_finite_before_any_update_blames_the_data(tmp_path):
    from pyrovae import TrainConfig, VAEConfig, train
    from pyrovae.data import DataError, Dataset

    x = torch.full((100, 3), 1e30)  # finite, but its squared error is not
    data = Dataset("huge", x, x[:20], x[:20], binary=False)
    cfg = TrainConfig(dataset="huge", epochs=1, batch_size=50)
    model = VAEConfig(z_dim=2, hidden=(4,), likelihood="gaussian-learned")
    with pytest.raises(DataError, match="at the very first step, before any update"):
        train(cfg, model, run_dir=str(tmp_path / "run"), data=data, progress=False)


@pytest.mark.parametrize("epoch", [1, 2])
@pytest.mark.parametrize("where", ["step", "validation"])
def test_a_divergence_says_what_was_kept(tmp_path, monkeypatch, capsys, epoch, where):
    import pyrovae.training.trainer as trainer

    run = tmp_path / "run"
    if where == "step":
        step = trainer.Trainer.step
        calls = {"n": 0}

        def nan_step(self, x, n, *args):
            calls["n"] += 1
            loss = step(self, x, n, *args)
            # From the second step on: a NaN at the very first is the data's fault, exit 2.
            return float("nan") if calls["n"] > 4 * (epoch - 1) + 1 else loss

        monkeypatch.setattr(trainer.Trainer, "step", nan_step)
    else:
        estimate = trainer.estimate_log_likelihood
        calls = {"n": 0}

        def nan_validation(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == epoch:
                raise FloatingPointError("log weights are NaN")
            return estimate(*args, **kwargs)

        monkeypatch.setattr(trainer, "estimate_log_likelihood", nan_validation)
    assert _train(run, 3) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyrovae train: training diverged:") and "\n" not in err
    if epoch == 1:
        assert "no checkpoint was written" in err
        assert not (run / "checkpoints" / "last.pt").exists()
        monkeypatch.undo()
        assert _train(run, 1) == 0  # the same command again: nothing of value was there
    else:
        assert "the checkpoints of epoch 1" in err and "--resume --lr" in err
        assert _last(run)["epoch"] == 1
        monkeypatch.undo()
        assert _train(run, 2, "--resume", "--lr", "5e-4") == 0


def test_an_elbo_above_zero_on_binary_data_stops_training(tmp_path, monkeypatch):
    """log p(x) <= 0 for binary data: a positive validation ELBO is arithmetic gone wrong (a
    variance collapsed below float precision), and training must not select it as its best."""
    import dataclasses

    import pyrovae.training.trainer as trainer

    estimate = trainer.estimate_log_likelihood
    calls = {"n": 0}

    def impossible(*args, **kwargs):
        calls["n"] += 1
        result = estimate(*args, **kwargs)
        return dataclasses.replace(result, elbo=12.5) if calls["n"] == 2 else result

    monkeypatch.setattr(trainer, "estimate_log_likelihood", impossible)
    from pyrovae import TrainConfig, TrainingDiverged, VAEConfig, train
    from pyrovae.data import Dataset

    x = (torch.rand(120, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    data = Dataset("bits", x[:80], x[80:100], x[100:], binary=True)
    run = tmp_path / "run"
    cfg = TrainConfig(dataset="bits", epochs=3, batch_size=40)
    with pytest.raises(TrainingDiverged, match="above 0, which no model of discrete data"):
        train(cfg, VAEConfig(z_dim=2, hidden=(4,)), run_dir=str(run), data=data, progress=False)
    assert _last(run)["epoch"] == 1 and _last(run)["best_valid_elbo"] < 0


def test_a_resumed_run_takes_a_new_learning_rate_and_records_it(tmp_path, capsys):
    run, same = tmp_path / "run", tmp_path / "same"
    assert _train(run, 2) == 0 and _train(same, 2) == 0
    assert _train(run, 3, "--resume", "--lr", "5e-4") == 0
    assert _train(same, 3, "--resume") == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["lr"] == 5e-4
    assert saved["resumed"] == [{"epoch": 2, "changed": {"epochs": [2, 3], "lr": [1e-3, 5e-4]}}]
    assert [m["lr"] for m in _metrics(run)] == [1e-3, 1e-3, 5e-4]
    assert _last(run)["trainer_state"]["optim"]["param_groups"][0]["lr"] == 5e-4
    moved = [
        not torch.equal(a, b)
        for a, b in zip(_last(run)["model_state"].values(), _last(same)["model_state"].values())
    ]
    assert any(moved)  # the new rate took effect
    capsys.readouterr()
    assert _train(run, 4, "--resume", "--z-dim", "3") == 2
    err = capsys.readouterr().err
    assert "cannot change z_dim (--z-dim)" in err and "the run has 2, asked for 3" in err
    assert _train(run, 4, "--resume", "--z-dim", "2", "--batch-size", "50") == 0  # unchanged
    assert _train(run, 4, "--resume") == 2
    assert "must be more than the 4 epochs" in capsys.readouterr().err


def test_sigterm_mid_epoch_resumes_exactly(tmp_path, uninterrupted):
    run = tmp_path / "run"
    argv = ["train", *TINY, "--run-dir", str(run), "--epochs", "3"]
    script = textwrap.dedent(
        """
        import os, signal, sys
        import pyrovae.training.trainer as trainer
        from pyrovae.cli import main
        step, calls = trainer.Trainer.step, [0]
        def step_then_term(self, x, n, *args):
            calls[0] += 1
            if calls[0] == 6:  # mid epoch 2
                os.kill(os.getpid(), signal.SIGTERM)
            return step(self, x, n, *args)
        trainer.Trainer.step = step_then_term
        sys.exit(main(sys.argv[1:]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, timeout=300)
    assert done.returncode != 0
    assert _last(run)["epoch"] == 1
    assert _train(run, 3, "--resume") == 0
    for name, value in _last(uninterrupted)["model_state"].items():
        assert torch.equal(value, _last(run)["model_state"][name]), name
    assert os.path.exists(run / "checkpoints" / "best.pt")


def test_ctrl_c_while_the_command_line_starts_is_one_line(tmp_path):
    """A Ctrl-C while torch is still being imported (the first second) is exit 130 and one
    line, as later: the console script's own imports are light."""
    # Python leaves SIGINT ignored in a process started with it ignored, and pytest run in
    # the background of a non-interactive shell (``cmd &``) passes that on to this child;
    # a terminal's foreground command has the default, so the child restores it first. It
    # says when its own imports are done, so the signal lands while ``main`` imports torch
    # however busy the machine is.
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from pyrovae.cli import main; print('ready', flush=True); sys.exit(main())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "train", *TINY, "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert "interrupted" in err


def test_a_run_of_pyrovae_0_2_0_evaluates_and_resumes(tmp_path, uninterrupted, capsys):
    """0.2.0's checkpoints (format 2) hold no metrics records and its config.json no data
    fingerprint: such a run still evaluates, and resumes exactly with its metrics file."""
    run = tmp_path / "run"
    assert _train(run, 2) == 0
    for name in ("last", "best"):
        path = run / "checkpoints" / f"{name}.pt"
        state = torch.load(path, weights_only=True)
        del state["metrics"]
        torch.save(state, path)
    record = json.loads((run / "config.json").read_text())
    del record["data_fingerprint"]
    (run / "config.json").write_text(json.dumps(record))
    assert main(["evaluate", str(run), "--k", "5", "--quiet"]) == 0
    assert _train(run, 3, "--resume") == 0
    for name, value in _last(uninterrupted)["model_state"].items():
        assert torch.equal(value, _last(run)["model_state"][name]), name
    assert _without_times(_metrics(run)) == _without_times(_metrics(uninterrupted))


@pytest.mark.parametrize(
    "estimator, activation, layers, warned",
    [
        ("pathwise", "tanh", 1, True),
        ("iwae", "tanh", 1, False),
        ("pathwise", "elu", 1, False),
        ("iwae", "tanh", 2, True),
        ("iwae", "elu", 2, False),
    ],
)
def test_a_vampprior_with_tanh_nets_on_an_elbo_is_warned_of_collapse(
    tmp_path, estimator, activation, layers, warned
):
    """The combination measured to collapse on binarized MNIST (experiments/priors_guides.py)
    is named when a run starts, and only that one."""
    import warnings

    from pyrovae import TrainConfig, VAEConfig, train
    from pyrovae.data import Dataset

    x = (torch.rand(120, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    data = Dataset("bits", x[:80], x[80:100], x[100:], binary=True)
    cfg = TrainConfig(dataset="bits", epochs=1, batch_size=40, estimator=estimator)
    model = VAEConfig(
        z_dim=2,
        hidden=(4,),
        prior="vampprior",
        activation=activation,
        latent_layers=layers,
        z1_dim=3,
        hidden_top=(4,),
    )
    model = VAEConfig.from_dict({**model.to_dict(), "prior_options": {"components": 3}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg, model, run_dir=str(tmp_path / "run"), data=data, progress=False)
    named = [w for w in caught if "with tanh nets" in str(w.message)]
    assert bool(named) == warned
