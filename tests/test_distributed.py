"""Training and evaluation split across processes (``pyrovae.distributed``): 2 gloo processes
on the CPU, started by torchrun, against one-process references computed here.

The processes keep identical parameters; a step is the one-process step on the same global
batch (each process's part of it with its own random stream: the reference below draws each
part from that process's stream, and the same reference with one process is checked to be
``train`` itself, so it is the trainer's arithmetic and not a copy of the distributed code);
the distributed evaluation gives the one-process estimate of every point for the same seed;
a resumed run ends where an uninterrupted one does; the command line works under torchrun,
prints once, and refuses to resume a run with another number of processes.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
from ddp_worker import EVAL, MODEL, PLAIN

from pyrovae import build_vae, estimate_log_likelihood, make_estimator, train
from pyrovae.cli import main
from pyrovae.distributed import World, chunk_seed, rank_seed
from pyrovae.producers import estimate_and_backward, make_producer
from pyrovae.threads import SPIN_COUNT
from pyrovae.training import Trainer, load_checkpoint, prepare_data

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def torchrun(*args, cwd=None, ok=True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS``: 2 processes on this machine's CPU,
    one thread each, on a free port; ``ok``: they must succeed."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", PYROVAE_DEVICE="cpu")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", *map(str, args)]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 processes of ``ddp_worker.py`` ended with, by rank."""
    out = tmp_path_factory.mktemp("ddp")
    torchrun(WORKER, out)
    saved = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [s["world"] for s in saved] == [(0, 2), (1, 2)]
    return out, saved


def reference(cfg, processes: int):
    """``cfg``'s run as ``processes`` processes compute it, in this one process: the same
    model, shuffle and Adam; each global batch split as ``World.shard`` splits it, each part's
    particles drawn from its process's stream (process 0's is the one-process stream, process
    r's seeded ``rank_seed``), the gradients of the parts summed before one step. With one
    process it also validates every epoch, as ``train`` does (which draws from the stream);
    with more, validation draws from streams of its own. Returns (VAE, train ELBO per epoch)."""
    data = prepare_data(cfg)
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(dataclasses.replace(MODEL, x_dim=data.x_dim))
    producer, estimator = make_producer(vae), make_estimator(cfg.estimator)
    trainer = Trainer(producer, estimator, list(vae.parameters()), cfg.lr)
    streams = [torch.get_rng_state()]
    for r in range(1, processes):
        torch.manual_seed(rank_seed(cfg.seed, r))
        streams.append(torch.get_rng_state())
    shuffle = torch.Generator().manual_seed(cfg.seed)
    n, b = data.train.shape[0], cfg.batch_size
    steps = math.ceil(n / b)
    elbos = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=shuffle)
        total = 0.0
        for i in range(steps):
            rows = perm[i * b : (i + 1) * b]
            trainer.optim.zero_grad(set_to_none=True)
            for r in range(processes):
                part = rows[slice(*World(rank=r, size=processes).shard(rows.shape[0]))]
                torch.set_rng_state(streams[r])
                scale = {"batch_size": rows.shape[0]} if processes > 1 else {}
                x = data.train[part]
                total += estimate_and_backward(producer, estimator, x, n, **scale)
                streams[r] = torch.get_rng_state()
            trainer.optim.step()
        elbos.append(-total / (steps * n))
        if processes == 1:
            estimate_log_likelihood(None, None, data.valid, k=1, progress=False, producer=producer)
            streams[0] = torch.get_rng_state()
    return vae, elbos


def untimed(metrics):
    return [{k: v for k, v in m.items() if not k.endswith("_seconds")} for m in metrics]


def assert_same(a, b, **tolerance):
    assert a.keys() == b.keys()
    for key in a:
        if tolerance:
            torch.testing.assert_close(a[key], b[key], **tolerance, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


def test_the_process_group_is_gone_when_the_command_ends(ranks):
    # A group that outlives ``shutdown`` is torn down with the interpreter, where gloo's
    # threads aborted about one exit in twenty after a finished run (torch 2.15 keeps the
    # group alive once torch._dynamo is imported after it: the first optimizer imports it).
    _, saved = ranks
    for rank in saved:
        names = rank["threads_after"]
        if names is None:
            pytest.skip("this system does not list a process's threads in /proc")
        assert not [n for n in names if "gloo" in n], names


def test_the_processes_keep_identical_parameters(ranks):
    _, (zero, one) = ranks
    for run in ("plain", "resumed", "whole", "pair"):
        assert_same(zero[run], one[run])
    for run in ("plain", "whole", "pair"):  # the same losses, gathered; times of their own
        assert untimed(zero[run + "_metrics"]) == untimed(one[run + "_metrics"])


def test_the_one_process_reference_is_train_itself(tmp_path):
    vae, elbos = reference(PLAIN, 1)
    result = train(PLAIN, MODEL, run_dir=tmp_path / "run", progress=False)
    assert_same(vae.state_dict(), result.vae.state_dict())
    assert elbos == [m["train_elbo"] for m in result.metrics]


def test_two_processes_take_the_one_process_steps_on_the_same_global_batches(ranks):
    _, (zero, _) = ranks
    vae, elbos = reference(PLAIN, 2)
    assert_same(zero["plain"], vae.state_dict(), rtol=1e-5, atol=1e-6)
    trained = [m["train_elbo"] for m in zero["plain_metrics"]]
    assert trained == pytest.approx(elbos, rel=1e-6)
    # Not vacuous: the one-process run (other particles for process 1's parts) is elsewhere.
    alone, _ = reference(PLAIN, 1)
    far = [(alone.state_dict()[k] - v).abs().max() for k, v in zero["plain"].items()]
    assert max(far) > 1e-3


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(ranks):
    _, saved = ranks
    for process in saved:
        assert_same(process["resumed"], process["whole"])
        assert untimed(process["resumed_metrics"]) == untimed(process["whole_metrics"])
    # Each process's own estimator state and stream are in the checkpoint, by rank.
    per_rank = saved[0]["ranks_saved"]
    assert per_rank["world_size"] == 2
    shapes = [tuple(r["estimator"]["average"].shape) for r in per_rank["ranks"]]
    assert shapes == [(1, 12), (1, 13)]
    assert not torch.equal(per_rank["ranks"][0]["torch_rng"], per_rank["ranks"][1]["torch_rng"])


def test_the_distributed_evaluation_is_the_one_process_estimate_point_for_point(ranks):
    _, (zero, one) = ranks
    vae = build_vae(dataclasses.replace(MODEL, x_dim=5))
    vae.load_state_dict(zero["plain"])
    points = prepare_data(PLAIN).test
    alone = estimate_log_likelihood(None, None, points, producer=make_producer(vae), **EVAL)
    for process in (zero, one):
        log_px, elbo = process["eval"]
        assert torch.equal(log_px, alone.per_point_log_px)
        assert torch.equal(elbo, alone.per_point_elbo)


def test_chunk_seeds_make_each_point_independent_of_the_others(ranks):
    _, (zero, _) = ranks
    vae = build_vae(dataclasses.replace(MODEL, x_dim=5))
    vae.load_state_dict(zero["plain"])
    points, producer = prepare_data(PLAIN).test, make_producer(vae)
    before = torch.get_rng_state()
    whole = estimate_log_likelihood(None, None, points, producer=producer, **EVAL)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left alone
    back = estimate_log_likelihood(None, None, points[20:], producer=producer, **EVAL)
    # Points 20... start chunk 0 of their own evaluation, which draws from chunk 0's seed.
    assert not torch.equal(back.per_point_log_px, whole.per_point_log_px[20:])
    front = estimate_log_likelihood(None, None, points[:20], producer=producer, **EVAL)
    assert torch.equal(front.per_point_log_px, whole.per_point_log_px[:20])
    threads = estimate_log_likelihood(None, None, points, producer=producer, workers=2, **EVAL)
    assert torch.equal(threads.per_point_log_px, whole.per_point_log_px)
    assert len({chunk_seed(5, lo, 0) for lo in range(0, 40, 4)}) == 10


def test_evaluate_under_torchrun_prints_once_what_one_process_gives(ranks, capsys):
    out, (zero, one) = ranks
    assert zero["cli_evaluate"][0] == one["cli_evaluate"][0] == 0
    assert one["cli_evaluate"][1] == ""
    (line,) = zero["cli_evaluate"][1].splitlines()
    split = json.loads(line)
    capsys.readouterr()
    args = ["evaluate", str(out / "plain"), "--k", "7", "--json", "--quiet"]
    assert main(args) == 0
    alone = json.loads(capsys.readouterr().out)
    # The threads differ: torchrun's one per process ($OMP_NUM_THREADS) against this one's.
    assert split == {**alone, "seconds": split["seconds"], "threads": split["threads"]}
    assert split["threads"]["threads_from"] == "$OMP_NUM_THREADS"


def test_train_under_torchrun_and_resume_with_another_number_of_processes(tmp_path, capsys):
    flags = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=5", "--n-train", "100"]
    flags += ["--n-eval", "40", "--epochs", "1", "--batch-size", "20", "--z-dim", "2"]
    flags += ["--hidden", "16", "--decoder", "linear", "--likelihood", "gaussian-learned"]
    done = torchrun("-m", "pyrovae", "train", *flags, "--run-dir", "run", cwd=tmp_path)
    assert done.stdout.count("training finished") == 1  # process 0 reports
    assert done.stderr.count("pyrovae: training the VAE") == 1
    assert "on 2 processes on cpu" in done.stderr
    # Each process chose its thread policy before torch started: one thread each (torchrun's
    # OMP_NUM_THREADS), spinning briefly.
    waits = f"1 ($OMP_NUM_THREADS); waiting spin {SPIN_COUNT}, then sleep (pyrovae's choice)"
    assert waits in done.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["processes"] == 2
    # An error that process 0 meets (the directory holds a run) stops both, said once.
    again = torchrun("-m", "pyrovae", "train", *flags, "--run-dir", "run", cwd=tmp_path, ok=False)
    said = [line for line in again.stderr.splitlines() if line.startswith("pyrovae train")]
    assert len(said) == 1 and "already holds a training run" in said[0], again.stderr
    # A bad flag is the same error in every process: said once, by process 0.
    for bad in (["--epochs", "-3"], ["--dataset", "nope"]):
        wrong = torchrun(
            "-m", "pyrovae", "train", *bad, "--run-dir", "other", cwd=tmp_path, ok=False
        )
        said = [line for line in wrong.stderr.splitlines() if line.startswith("pyrovae train")]
        assert len(said) == 1 and bad[0] in said[0], wrong.stderr
    capsys.readouterr()
    status = main(["train", "--resume", "--run-dir", str(tmp_path / "run"), "--epochs", "2"])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = err.splitlines()
    assert "trained by 2 processes, and this is 1" in line and "--nproc-per-node 2" in line


def test_shards_tile_the_batch_and_streams_differ():
    for size in (1, 2, 3, 8):
        for total in (0, 1, 7, 25, 100):
            parts = [World(rank=r, size=size).shard(total) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
    assert len({rank_seed(s, r) for s in range(3) for r in range(1, 4)}) == 9


KILLER = '''"""pyrovae's command line, with process 1 killed (SIGKILL) at its 3rd training step."""
import os
import signal
import sys

import pyrovae.training.trainer as trainer

real, steps = trainer.Trainer.step, []


def step(self, *args, **kwargs):
    steps.append(1)
    if len(steps) == 3 and os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, *args, **kwargs)


trainer.Trainer.step = step
from pyrovae.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


def test_a_process_killed_mid_run_leaves_one_line_and_a_run_that_resumes(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    flags = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=5", "--n-train", "100"]
    flags += ["--n-eval", "40", "--batch-size", "20", "--z-dim", "2", "--hidden", "16"]
    flags += ["--decoder", "linear", "--likelihood", "gaussian-learned", "--run-dir", "run"]
    first = ["train", *flags, "--epochs", "1"]
    torchrun("-m", "pyrovae", *first, cwd=tmp_path)  # one epoch checkpointed
    done = torchrun("--tee", "3", "killer.py", "train", *flags, "--epochs", "3", "--resume",
                    cwd=tmp_path, ok=False)  # fmt: skip
    # Process 0 (torchrun tees its lines as "[default0]:") says one line, whichever comes
    # first: the collective failing as the peer's socket closes, or torchrun's SIGTERM.
    mine = [line for line in done.stderr.splitlines() if line.startswith("[default0]:")]
    assert not any("Traceback" in line for line in mine), "\n".join(mine)
    said = [line for line in mine if "another process of this run stopped" in line]
    said += [line for line in mine if "terminated (SIGTERM)" in line]
    assert len(said) == 1, "\n".join(mine)
    # Nothing written was lost: the run resumes from its checkpoint.
    torchrun("-m", "pyrovae", "train", *flags, "--epochs", "2", "--resume", cwd=tmp_path)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 2


def test_a_lost_process_is_one_line_not_a_gloo_traceback(monkeypatch, capsys):
    # Deterministic: the collective's error as gloo raises it, on process 0 of 2.
    import pyrovae.cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
        "[127.0.0.1]:36036: Connection reset by peer. This is typically caused by a remote "
        "worker hanging or bugs in the application. Check the logs of the remote worker."
    )

    def train(args):
        raise gloo

    monkeypatch.setattr(pyrovae.cli, "_cmd_train", train)
    assert main(["train", "--dataset", "linear-gaussian", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "pyrovae train: error: another process of this run stopped (Read error "
        "[127.0.0.1]:36036: Connection reset by peer); the checkpoints written so far are "
        "intact: find why it stopped (its own lines above), then run the same torchrun "
        "command with --resume"
    )
