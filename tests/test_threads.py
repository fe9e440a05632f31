"""The command line's thread policy (``pyrovae.threads``, issue 23): chosen before torch starts
its OpenMP runtime, read back from that runtime itself (``OMP_DISPLAY_ENV`` makes libgomp print
the settings it took when torch loaded it), and a user's own setting kept."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pyrovae.threads import LOOK_EVERY, SPIN_COUNT, CoreSharing, apply_threads, usable_cores

CLEARED = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("threads") / "run"
    argv = ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian-learned"]
    _pyrovae(argv + ["--epochs", "1", "--run-dir", str(run), "--quiet"])
    return run


def _pyrovae(argv, status=0, display=True, **env):
    """(stdout, stderr) of ``python -m pyrovae`` in a fresh process with no thread settings
    but ``env``'s; with ``display``, the OpenMP runtime printing what it read."""
    clean = {k: v for k, v in os.environ.items() if k not in CLEARED}
    clean.update(env, PYROVAE_DEVICE="cpu")
    if display:
        clean["OMP_DISPLAY_ENV"] = "VERBOSE"
    done = subprocess.run(
        [sys.executable, "-m", "pyrovae", *argv], env=clean, capture_output=True, text=True
    )
    assert done.returncode == status, done.stderr[-2000:]
    return done.stdout, done.stderr


def _evaluate(run, *flags, **env):
    """(the JSON's ``threads``, {setting: value} as the OpenMP runtime read them:
    OMP_WAIT_POLICY and GOMP_SPINCOUNT, the rounds a waiting thread spins before it sleeps)."""
    out, err = _pyrovae(["evaluate", str(run), "--k", "2", "--n", "5", "--json", *flags], **env)
    read = {}
    for line in err.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            read[name.strip()] = value.strip(" '")
    return json.loads(out)["threads"], read


def test_the_runtime_spins_briefly_on_the_usable_cores_by_default(run):
    threads, read = _evaluate(run)
    # Set before torch loaded the OpenMP runtime (whose own default is 300000 rounds).
    assert read["GOMP_SPINCOUNT"] == SPIN_COUNT
    assert threads == {
        "threads": usable_cores(),
        "threads_from": "the cores this process may use",
        "wait": f"spin {SPIN_COUNT}, then sleep",
        "wait_from": "pyrovae's choice",
        "seconds_at": {},  # an evaluation by importance weighting runs no team to share
    }


def test_a_users_wait_policy_and_thread_count_are_kept(run):
    threads, read = _evaluate(run, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert read["OMP_WAIT_POLICY"] == "ACTIVE"
    assert threads == {
        "threads": 1,
        "threads_from": "$OMP_NUM_THREADS",
        "wait": "active",
        "wait_from": "$OMP_WAIT_POLICY",
    }
    threads, read = _evaluate(run, GOMP_SPINCOUNT="5000")
    assert read["GOMP_SPINCOUNT"] == "5000" and threads["wait_from"] == "$GOMP_SPINCOUNT"
    # --threads wins over the environment.
    threads, _ = _evaluate(run, "--threads", "3", OMP_NUM_THREADS="1")
    assert (threads["threads"], threads["threads_from"]) == (3, "--threads")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no affinity masks here")
def test_threads_are_capped_at_the_cores_the_process_may_use(run):
    # taskset's limit, as a container's: one core usable, one thread.
    out = subprocess.run(["taskset", "--help"], capture_output=True)
    if out.returncode != 0:
        pytest.skip("no taskset")
    done = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-m", "pyrovae", "evaluate", str(run), "--k",
         "2", "--n", "5", "--json"],
        env={k: v for k, v in os.environ.items() if k not in CLEARED},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["threads"]["threads"] == 1


def test_bad_thread_counts_are_one_line_and_status_2(run):
    _, err = _pyrovae(["evaluate", str(run), "--threads", "0"], status=2, display=False)
    assert err.strip() == "pyrovae evaluate: error: --threads must be an integer >= 1, got 0"
    _, err = _pyrovae(["evaluate", str(run)], 2, False, OMP_NUM_THREADS="x")
    # Refused before torch loads the runtime, which would add a warning of its own.
    assert err.strip().startswith("pyrovae: error: $OMP_NUM_THREADS must be a count >= 1")
    assert len(err.strip().splitlines()) == 1


def test_in_process_a_smaller_torch_setting_is_kept_and_a_larger_one_capped():
    before = torch.get_num_threads()
    try:
        env = os.environ.pop("OMP_NUM_THREADS", None)
        if usable_cores() > 1:
            torch.set_num_threads(1)
            policy = apply_threads()
            assert policy.threads == 1
            assert policy.threads_from.startswith("torch.set_num_threads")
        torch.set_num_threads(usable_cores() + 3)
        policy = apply_threads()
        assert policy.threads == usable_cores() == torch.get_num_threads()
        with pytest.raises(ValueError, match="--threads must be an integer >= 1"):
            apply_threads(-1)
    finally:
        torch.set_num_threads(before)
        if env is not None:
            os.environ["OMP_NUM_THREADS"] = env


class _Machine:
    """A fake clock and /proc/stat for ``CoreSharing``: ``advance`` moves time on with this
    process and the others each using so many cores."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0

    def advance(self, seconds, own_cores, other_cores):
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


@pytest.fixture
def sharing():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    machine = _Machine()
    share = CoreSharing(2, lambda: machine.busy, lambda: machine.own, lambda: machine.now)
    yield share, machine
    torch.set_num_threads(before)


def test_a_thread_is_lent_while_others_are_busy_and_taken_back_after(sharing):
    share, machine = sharing
    seen = []
    # (seconds, this process's cores, other work's cores): alone; a second training starts
    # (each gets a core); a little noise (not enough to lend or take); the other one ends.
    for seconds, own, others in [(0.6, 2, 0), (0.6, 1, 1), (0.6, 1, 0.9), (0.6, 1, 0.2),
                                 (0.6, 1, 0.05), (0.6, 2, 0.2), (0.6, 2, 0.3)]:  # fmt: skip
        machine.advance(seconds, own, others)
        share.look()
        seen.append(torch.get_num_threads())
    assert seen == [2, 1, 1, 1, 2, 2, 1]
    assert share.seconds_at() == {2: 2.4, 1: 1.8}
    assert share.describe() == ", 1 for 1.8 of 4.2 s while other work was busy"
    # Looks closer together than LOOK_EVERY read nothing.
    machine.advance(LOOK_EVERY / 2, 1, 0)
    share.look()
    assert torch.get_num_threads() == 1 and sum(share.seconds_at().values()) == 4.2


def test_a_count_set_by_someone_else_is_kept(sharing):
    share, machine = sharing
    torch.set_num_threads(3)  # the user's own call, between steps
    machine.advance(1.0, 1, 1)
    share.look()
    machine.advance(1.0, 1, 0)
    share.look()
    assert torch.get_num_threads() == 3 and share.stopped


@pytest.mark.skipif(usable_cores() < 2 or not os.path.exists("/proc/stat"), reason="one core")
def test_a_training_beside_a_busy_core_lends_it_a_thread(tmp_path):
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        out, _ = _pyrovae(
            ["train", "--dataset", "linear-gaussian", "--likelihood", "gaussian-learned",
             "--epochs", "30", "--run-dir", str(tmp_path / "run"), "--quiet"],
            display=False,
        )  # fmt: skip
    finally:
        spinner.kill()
        spinner.wait()
    assert re.search(r"threads\s+\d+ \(the cores this process may use\), [\d-]+ for "
                     r"[\d.]+ of [\d.]+ s while other work was busy", out), out  # fmt: skip


def test_a_command_gives_back_the_threads_it_lent(sharing, monkeypatch):
    import pyrovae.threads as threads

    share, machine = sharing
    monkeypatch.setattr(threads, "_sharing", share)
    machine.advance(0.6, 1, 1)
    share.look()
    assert torch.get_num_threads() == 1  # lent while the other work ran
    threads.stop_sharing()  # the command ends (``pyrovae.cli.main``)
    assert torch.get_num_threads() == 2 and threads._sharing is None
    # A count someone set since is theirs: kept.
    monkeypatch.setattr(threads, "_sharing", share)
    share.threads = 1
    torch.set_num_threads(3)
    threads.stop_sharing()
    assert torch.get_num_threads() == 3
