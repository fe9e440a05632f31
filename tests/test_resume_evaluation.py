"""Evaluations that resume (``pyrovae.evaluation.partial``): an importance-weighted or AIS
estimate interrupted part way (by an exception raised where a signal would land) and run again
gives, point for point, the result of one uninterrupted run; the saved points are not computed
again; files that do not fit are left out with a warning; the store is emptied at the end."""

import copy

import pytest
import torch

import pyrovae.evaluation.ais as ais_module
from pyrovae import VAEConfig, build_vae, estimate_log_likelihood
from pyrovae.evaluation.ais import ais_log_likelihood
from pyrovae.evaluation.partial import PartialStore, evaluation_key
from pyrovae.producers import make_producer


class Interrupting:
    """A producer that raises ``KeyboardInterrupt`` (what SIGTERM becomes in the CLI) on
    its ``after``-th call, and counts the points it was asked for."""

    def __init__(self, producer, after=None):
        self.producer, self.after, self.calls, self.points = producer, after, 0, 0

    def __getattr__(self, name):
        return getattr(self.producer, name)

    def __call__(self, x, *args, **kwargs):
        self.calls += 1
        if self.after is not None and self.calls == self.after:
            raise KeyboardInterrupt
        self.points += x.shape[0]
        return self.producer(x, *args, **kwargs)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_vae(VAEConfig(x_dim=6, z_dim=2, hidden=(8,)))


@pytest.fixture(scope="module")
def x():
    return torch.bernoulli(torch.full((40, 6), 0.4), generator=torch.Generator().manual_seed(1))


def _iw(vae, x, store=None, after=None, workers=1):
    producer = Interrupting(make_producer(vae, "direct"), after)
    # 24 pairs a chunk at k = 12: 2 points a batch, so 20 batches; the store saves at every
    # batch (every=0).
    result = estimate_log_likelihood(
        None, None, x, 12, chunk_pairs=24, progress=False, producer=producer, seed=5,
        workers=workers, store=store,
    )  # fmt: skip
    return result, producer


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_iw_evaluation_resumes_to_the_uninterrupted_result(
    vae, x, tmp_path, workers
):
    whole, _ = _iw(vae, x, workers=workers)
    store = PartialStore(tmp_path / "eval", every=0.0)
    with pytest.raises(KeyboardInterrupt):
        _iw(vae, x, store, after=9, workers=workers)
    saved = sorted(p.name for p in (tmp_path / "eval").glob("points-*.pt"))
    assert saved, "nothing was saved before the interruption"
    store = PartialStore(tmp_path / "eval", every=0.0)
    resumed, producer = _iw(vae, x, store, workers=workers)
    assert 0 < resumed.resumed_points < 40
    assert producer.points == 40 - resumed.resumed_points  # the saved points not redrawn
    assert torch.equal(resumed.per_point_log_px, whole.per_point_log_px)
    assert torch.equal(resumed.per_point_elbo, whole.per_point_elbo)
    for field in ("ess", "pareto_k", "log_px_by_k"):
        a, b = getattr(resumed.weights, field), getattr(whole.weights, field)
        assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0)), field
    assert resumed.log_px == whole.log_px and resumed.elbo == whole.elbo
    assert not (tmp_path / "eval").exists()  # emptied once the result is in


def test_a_store_needs_chunk_seeds(vae, x, tmp_path):
    with pytest.raises(ValueError, match="needs a seed"):
        estimate_log_likelihood(
            None, None, x, 4, progress=False, producer=make_producer(vae, "direct"),
            store=PartialStore(tmp_path / "e"),
        )  # fmt: skip


def test_a_corrupt_block_is_computed_again_and_other_settings_start_over(vae, x, tmp_path):
    whole, _ = _iw(vae, x)
    folder = tmp_path / "eval"
    with pytest.raises(KeyboardInterrupt):
        _iw(vae, x, PartialStore(folder, every=0.0), after=9)
    blocks = sorted(folder.glob("points-*.pt"))
    blocks[0].write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="cannot be read"):
        resumed, _ = _iw(vae, x, PartialStore(folder, every=0.0))
    assert resumed.resumed_points == 2 * (len(blocks) - 1)
    assert torch.equal(resumed.per_point_log_px, whole.per_point_log_px)
    # Saved with k = 12; asked again with k = 6: the old points do not fit and are dropped.
    with pytest.raises(KeyboardInterrupt):
        _iw(vae, x, PartialStore(folder, every=0.0), after=9)
    with pytest.warns(UserWarning, match="other settings"):
        other = estimate_log_likelihood(
            None, None, x, 6, chunk_pairs=24, progress=False,
            producer=make_producer(vae, "direct"), seed=5, store=PartialStore(folder),
        )  # fmt: skip
    assert other.resumed_points == 0


def test_an_interrupted_ais_evaluation_resumes_to_the_uninterrupted_result(
    vae, x, tmp_path, monkeypatch
):
    def ais(store=None):
        kw = dict(steps=6, chains=3, leapfrog=2, chain_pairs=12, progress=False)
        return ais_log_likelihood(make_producer(vae, "direct"), x, seed=8, store=store, **kw)

    whole = ais()
    transitions = []

    def interrupt():  # called once per HMC transition: the 20th is in the 4th batch of 4
        transitions.append(1)
        if len(transitions) == 20:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ais_module, "share_cores", interrupt)
        with pytest.raises(KeyboardInterrupt):
            ais(PartialStore(tmp_path / "ais", every=0.0))
    assert len(list((tmp_path / "ais").glob("points-*.pt"))) == 3
    resumed = ais(PartialStore(tmp_path / "ais", every=0.0))
    assert resumed.resumed_points == 12
    for field in ("per_point_log_px", "per_point_mc_stderr", "per_point_acceptance"):
        assert torch.equal(getattr(resumed, field), getattr(whole, field)), field
    # (the acceptance by step summed in another order: equal up to rounding)
    assert resumed.acceptance_by_stage == pytest.approx(whole.acceptance_by_stage, rel=1e-12)
    assert resumed.log_px == whole.log_px
    assert not (tmp_path / "ais").exists()


def weights(vae):
    return torch.cat([p.detach().flatten() for p in vae.parameters()])


def test_the_key_changes_with_the_model_the_points_and_the_settings(vae, x):
    key = evaluation_key({"k": 5}, x, weights(vae))
    assert key == evaluation_key({"k": 5}, x.clone(), weights(vae))
    assert key != evaluation_key({"k": 6}, x, weights(vae))
    assert key != evaluation_key({"k": 5}, 1 - x, weights(vae))
    other = copy.deepcopy(vae)  # one weight changed by 1e-6
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1e-6
    assert key != evaluation_key({"k": 5}, x, weights(other))


STOPPER = '''"""pyrovae's command line, sent SIGTERM once it has saved its 3rd block of points."""
import os
import signal
import sys

import pyrovae.evaluation.partial as partial

real, saves = partial.PartialStore.flush, []


def flush(self):
    real(self)
    saves.append(1)
    if len(saves) == 3:
        os.kill(os.getpid(), signal.SIGTERM)


partial.PartialStore.flush = flush
partial.PartialStore.__init__.__defaults__ = (0.0,)  # save every finished chunk of points
from pyrovae.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


def test_evaluate_stopped_by_sigterm_continues_when_run_again(tmp_path, capsys):
    """The command line: ``pyrovae evaluate`` terminated by SIGTERM says one line naming where
    its points are; the same command run again prints the uninterrupted run's estimate."""
    import json
    import subprocess
    import sys

    from pyrovae.cli import main

    run = str(tmp_path / "run")
    flags = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=5", "--n-train", "100"]
    flags += ["--n-eval", "60", "--batch-size", "20", "--z-dim", "2", "--hidden", "16"]
    flags += ["--decoder", "linear", "--likelihood", "gaussian-learned"]
    assert main(["train", *flags, "--epochs", "1", "--run-dir", run, "--quiet"]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", run, "--k", "300", "--json", "--quiet"]
    assert main(evaluate) == 0
    whole = json.loads(capsys.readouterr().out)
    assert whole.pop("resumed_points") == 0
    assert not (tmp_path / "run" / "evaluations").exists()  # removed once complete
    (tmp_path / "stopper.py").write_text(STOPPER)
    stopped = subprocess.run(
        [sys.executable, "stopper.py", *evaluate], cwd=tmp_path, capture_output=True, text=True
    )
    assert stopped.returncode == 143, stopped.stderr
    (line,) = stopped.stderr.splitlines()
    assert "terminated (SIGTERM)" in line and "run the same command again" in line
    (folder,) = (tmp_path / "run" / "evaluations").iterdir()
    assert len(list(folder.glob("points-*.pt"))) == 3
    assert main(evaluate) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert 0 < resumed.pop("resumed_points") < whole["n"]
    assert resumed == {**whole, "seconds": resumed["seconds"]}
    assert not folder.exists()
