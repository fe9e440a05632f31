"""Devices: ``--device`` and ``device=``, over the devices present.

Every test that computes is parametrized over ``DEVICES`` (the CPU, and a CUDA GPU where torch
finds one). On a device, a command given ``--device`` (``device=``) gives bit for bit what it
gives without the flag when the default resolves to that device (``$PYROVAE_DEVICE``, set to
``cpu`` for the suite in conftest.py): the flag chooses where, never what. A run's checkpoints
hold CPU tensors and load on every device; a resumed run equals an uninterrupted one on its own
device. The messages for devices this machine lacks are checked with CUDA's answers
monkeypatched, so they are checked on every machine. A bad ``--device`` is exit status 2, one
line, and nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae import (
    TrainConfig,
    VAEConfig,
    build_vae,
    evaluate_run,
    evaluate_vae,
    load_vae,
    sample_run,
    train,
)
from pyrovae.cli import main
from pyrovae.config import OptionError
from pyrovae.data import Dataset
from pyrovae.parts.nets import Tanh
from pyrovae.producers import make_producer
from pyrovae.runs import bdmc_run, gap_run, gradvar_run
from pyrovae.runtime import (
    check_memory,
    fork_rng,
    place,
    resolve_device,
    tune_allocator,
)
from pyrovae.training import checkpoint_path, load_checkpoint

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

MODEL = VAEConfig(z_dim=2, hidden=(16,), decoder="linear", likelihood="gaussian-learned")
CLI_DATA = ["--dataset", "linear-gaussian", "--dataset-option", "x_dim=5", "--z-dim", "2"]
CLI_DATA += ["--decoder", "linear", "--likelihood", "gaussian-learned", "--hidden", "16"]
CLI_DATA += ["--n-train", "200", "--n-eval", "50", "--batch-size", "50", "--quiet"]


def config(**kw) -> TrainConfig:
    base = dict(
        dataset="linear-gaussian",
        dataset_options={"x_dim": 5, "z_dim": 2},
        n_train=200,
        n_eval=50,
        epochs=2,
        batch_size=50,
        lr=3e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def default_is(monkeypatch, device: str) -> None:
    """Make the default device (no flag, ``device=None``) ``device``."""
    monkeypatch.setenv("PYROVAE_DEVICE", device)


def state_on_cpu(vae) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in vae.state_dict().items()}


def assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def files(root: Path) -> Dict[str, bytes]:
    """Every file under ``root`` and its bytes: what a refused command must leave as it is."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def tensors(value):
    """Every tensor in a checkpoint's nested dicts and lists."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors(v)


# --- resolve_device ------------------------------------------------------------------------------


def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def gpus(monkeypatch, count: int, current: int = 0) -> None:
    """Pretend CUDA finds ``count`` GPUs, ``current`` the current one (only the answers that
    ``resolve_device`` asks for: nothing is placed on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)


def test_auto_is_the_cpu_without_cuda_and_the_current_gpu_with_it(monkeypatch):
    no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    gpus(monkeypatch, 2, current=1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # with its index
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_cpu_is_the_cpu_everywhere(monkeypatch):
    for setup in (no_cuda, lambda m: gpus(m, 1)):
        setup(monkeypatch)
        assert resolve_device("cpu") == torch.device("cpu")
        assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_the_default_is_pyrovae_device_else_auto(monkeypatch):
    no_cuda(monkeypatch)
    monkeypatch.setenv("PYROVAE_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.delenv("PYROVAE_DEVICE")
    assert resolve_device(None) == torch.device("cpu")  # auto
    gpus(monkeypatch, 1)
    assert resolve_device(None) == torch.device("cuda", 0)
    monkeypatch.setenv("PYROVAE_DEVICE", "")  # empty: unset
    assert resolve_device(None) == torch.device("cuda", 0)
    monkeypatch.setenv("PYROVAE_DEVICE", "tpu")
    with pytest.raises(OptionError, match=r"^\$PYROVAE_DEVICE: unknown device 'tpu'"):
        resolve_device(None)


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "cuda:", "cuda:-1", "CPU", " cpu", "cpu:0", ""])
def test_a_name_that_is_no_device_is_one_line_saying_what_is_accepted(spec, monkeypatch):
    no_cuda(monkeypatch)
    with pytest.raises(OptionError) as error:
        resolve_device(spec)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"unknown device {spec!r}")
    assert "choose auto, cpu, cuda or cuda:N" in message and "available here: cpu" in message


def test_an_empty_name_says_it_may_be_an_unset_variable(monkeypatch):
    with pytest.raises(OptionError, match="unset shell variable"):
        resolve_device("")


def test_a_device_that_is_not_a_name_is_refused():
    with pytest.raises(OptionError, match="device must be one of auto, cpu, cuda or cuda:N"):
        resolve_device(3)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_says_so_and_what_is_here(spec, monkeypatch):
    no_cuda(monkeypatch)
    with pytest.raises(OptionError) as error:
        resolve_device(spec)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"device {spec!r}: ")
    assert "without CUDA" in message or "CUDA finds no GPU" in message, message
    assert message.endswith("available here: cpu (or auto)")


def test_a_gpu_index_out_of_range_names_the_gpus_there_are(monkeypatch):
    gpus(monkeypatch, 2)
    with pytest.raises(OptionError) as error:
        resolve_device("cuda:2")
    assert str(error.value) == (
        "device 'cuda:2': this machine has no GPU 2; available here: cpu, cuda:0, cuda:1"
    )


# --- the CPU-only tricks and the helpers -------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_tanh_takes_the_sigmoid_route_on_the_cpu_only(device):
    a = torch.linspace(-6, 6, 1001, device=device)
    with torch.no_grad():
        out = Tanh()(a)
    torch.testing.assert_close(out, torch.tanh(a), rtol=0, atol=1e-6)
    if device != "cpu":
        assert torch.equal(out, torch.tanh(a))  # torch.tanh itself
    # With a gradient to take, torch.tanh everywhere.
    b = a.clone().requires_grad_()
    assert torch.equal(Tanh()(b), torch.tanh(b))


def test_the_allocator_is_tuned_for_cpu_work_only():
    assert tune_allocator(torch.device("cuda", 0)) is False
    assert tune_allocator(torch.device("cpu")) == tune_allocator()


def test_memory_is_checked_on_the_device_that_holds_the_tensors(monkeypatch):
    """A GPU's tensors take its own memory (``torch.cuda.mem_get_info``), not the host's."""
    monkeypatch.setattr("pyrovae.runtime._cuda_memory", lambda device: 2**30)
    monkeypatch.setattr("pyrovae.runtime.available_memory", lambda: 2**40)
    with pytest.raises(MemoryError, match=r"2\.0 GiB, but 1\.0 GiB of cuda:0 memory is free"):
        check_memory(2**31, "a step", "lower it", torch.device("cuda", 0))
    check_memory(2**31, "a step", "lower it", torch.device("cpu"))  # the host has room
    check_memory(2**31, "a step", "lower it")


def test_data_that_does_not_fit_on_the_gpu_stays_on_the_host(monkeypatch):
    x = torch.zeros(1000, 10)
    assert place(x, torch.device("cpu")) is x
    monkeypatch.setattr("pyrovae.runtime._cuda_memory", lambda device: 1000)
    assert place(x, torch.device("cuda", 0)) is x  # 40 kB > half of 1000 bytes: not moved


@pytest.mark.parametrize("device", DEVICES)
def test_data_is_placed_on_the_device_where_it_fits(device):
    x = torch.arange(12.0).reshape(3, 4)
    placed = place(x, resolve_device(device))
    assert placed.device.type == device and torch.equal(placed.cpu(), x)


@pytest.mark.parametrize("device", DEVICES)
def test_forking_a_devices_streams_leaves_them_as_they_were(device):
    device = resolve_device(device)
    torch.manual_seed(1)
    with fork_rng(device):
        torch.manual_seed(5)
        torch.randn(3, device=device)
    after = torch.randn(3, device=device)
    torch.manual_seed(1)
    assert torch.equal(after, torch.randn(3, device=device))


# --- Python: train, evaluate, sample -----------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run per device present, trained with ``device=``; and on each device the same run
    trained with no device given, the default resolving to it."""
    root = tmp_path_factory.mktemp("devices")
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for device in DEVICES:
            default_is(monkeypatch, device)
            pyro.set_rng_seed(0)
            flag = train(config(), MODEL, run_dir=root / device, progress=False, device=device)
            pyro.set_rng_seed(0)
            plain = train(config(), MODEL, run_dir=root / f"{device}-plain", progress=False)
            out[device] = (flag, plain)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_train_on_a_device_is_training_without_the_flag_there(runs, device):
    flag, plain = runs[device]
    assert flag.device == resolve_device(device) == plain.device
    assert all(p.device.type == device for p in flag.vae.parameters())
    assert_same_state(state_on_cpu(flag.vae), state_on_cpu(plain.vae))
    assert [m["valid_elbo"] for m in flag.metrics] == [m["valid_elbo"] for m in plain.metrics]
    assert all(math.isfinite(m["valid_elbo"]) for m in flag.metrics)


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_is_not_part_of_the_run(runs, device):
    run = runs[device][0].run_dir
    assert "device" not in json.dumps(json.loads((run / "config.json").read_text()))
    assert (run / "config.json").read_text() == (
        (runs[device][1].run_dir / "config.json").read_text()
    )


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoints_hold_cpu_tensors_and_load_on_every_device(runs, device):
    run = runs[device][0]
    for which in ("best", "last"):
        state = torch.load(checkpoint_path(run.run_dir, which), weights_only=True)  # no map
        assert all(t.device.type == "cpu" for t in tensors(state))
        assert ("cuda_rng" in state) == (device == "cuda")
    trained = state_on_cpu(run.vae)
    for target in DEVICES:
        vae, state = load_vae(run.run_dir, "last", device=target)
        assert all(p.device.type == target for p in vae.parameters())
        assert not vae.training
        assert_same_state(state_on_cpu(vae), trained)
        assert all(t.device.type == "cpu" for t in tensors(state))
    assert load_checkpoint(checkpoint_path(run.run_dir, "last"))["epoch"] == 2


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_on_a_device_is_evaluating_without_the_flag_there(runs, device, monkeypatch):
    default_is(monkeypatch, device)
    run = runs[device][0].run_dir
    for method in ("iw", "ais"):
        options = dict(k=20, n=10, method=method, steps=5, chains=2, progress=False)
        flag = evaluate_run(run, device=device, **options)
        plain = evaluate_run(run, **options)
        assert flag.per_point_log_px.device.type == "cpu"
        assert torch.equal(flag.per_point_log_px, plain.per_point_log_px)
        assert flag.log_px == plain.log_px and math.isfinite(flag.log_px)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_vae_computes_where_the_vae_is(runs, device):
    vae = runs[device][0].vae
    x = torch.randn(30, 5)  # on the CPU
    pyro.set_rng_seed(3)
    result = evaluate_vae(vae, x, k=10, progress=False)
    assert result.per_point_log_px.device.type == "cpu"
    assert result.per_point_elbo.device.type == "cpu"
    assert result.exact_log_px is not None and math.isfinite(result.log_px)
    pyro.set_rng_seed(3)
    again = evaluate_vae(vae, x.to(device), k=10, progress=False)  # data already there
    assert torch.equal(result.per_point_log_px, again.per_point_log_px)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_gradvar_gap_and_bdmc_on_a_device_are_the_commands_without_the_flag(
    runs, device, monkeypatch, tmp_path
):
    default_is(monkeypatch, device)
    run = runs[device][0].run_dir
    pictures = {}
    for name, given in (("flag", {"device": device}), ("plain", {})):
        paths = sample_run(run, out_dir=tmp_path / name / "sample", n=20, **given)
        pictures[name] = {k: p.read_bytes() for k, p in paths.items()}
    assert pictures["flag"] == pictures["plain"] and "samples" in pictures["flag"]

    options = dict(estimators=["pathwise", "score-function"], draws=3, warmup=2, progress=False)
    flag, _ = gradvar_run(run, out_dir=tmp_path / "g1", device=device, **options)
    plain, _ = gradvar_run(run, out_dir=tmp_path / "g2", **options)
    for a, b in zip(flag, plain):
        assert (a.encoder_variance, a.decoder_variance) == (b.encoder_variance, b.decoder_variance)

    options = dict(n=8, k=10, steps=5, samples=2, progress=False)
    flag, _ = gap_run(run, out_dir=tmp_path / "p1", device=device, **options)
    plain, _ = gap_run(run, out_dir=tmp_path / "p2", **options)
    assert all(t.device.type == "cpu" for t in flag.per_point.values())
    assert flag.to_dict() | {"seconds": 0} == plain.to_dict() | {"seconds": 0}

    options = dict(n=4, steps=5, chains=2, leapfrog=2, k=10, progress=False)
    flag, plain = bdmc_run(run, device=device, **options), bdmc_run(run, **options)
    assert flag.points.device.type == "cpu"
    assert flag.to_dict() | {"seconds": 0} == plain.to_dict() | {"seconds": 0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "estimator,options", [("pathwise", {}), ("score-function", {"baseline": "neural"})]
)
def test_a_run_resumed_on_its_device_equals_an_uninterrupted_one(
    tmp_path, device, estimator, options
):
    """The CPU's and the GPU's random streams, the shuffle, Adam's and the estimator's state
    all come back (a neural baseline's weights are drawn on the CPU, whatever the device)."""
    cfg = config(estimator=estimator, estimator_options=options, epochs=3)
    straight = train(cfg, MODEL, run_dir=tmp_path / "a", progress=False, device=device)
    first = config(estimator=estimator, estimator_options=options, epochs=1)
    train(first, MODEL, run_dir=tmp_path / "b", progress=False, device=device)
    resumed = train(
        config(epochs=3), run_dir=tmp_path / "b", resume=True, progress=False, device=device
    )
    assert_same_state(state_on_cpu(straight.vae), state_on_cpu(resumed.vae))
    assert [m["valid_elbo"] for m in straight.metrics] == [m["valid_elbo"] for m in resumed.metrics]


@pytest.mark.parametrize("start", DEVICES)
@pytest.mark.parametrize("then", DEVICES)
def test_a_run_resumes_on_any_device(tmp_path, start, then):
    """Bit for bit on its own device (above); on another it continues from the same state."""
    train(config(epochs=1), MODEL, run_dir=tmp_path / "run", progress=False, device=start)
    before = load_vae(tmp_path / "run", "last", device="cpu")[0]
    resumed = train(
        config(epochs=2), run_dir=tmp_path / "run", resume=True, progress=False, device=then
    )
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert resumed.device.type == then and math.isfinite(resumed.best_valid_elbo)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(state_on_cpu(before).values(), state_on_cpu(resumed.vae).values())
    )


def dynamic_data() -> Dataset:
    """Grey values binarized afresh at every step (``binarize="dynamic"``)."""
    g = torch.Generator().manual_seed(0)
    train_x = torch.rand(200, 6, generator=g)
    valid_x = torch.bernoulli(torch.rand(50, 6, generator=g), generator=g)
    test_x = torch.bernoulli(torch.rand(50, 6, generator=g), generator=g)
    return Dataset("grey", train_x, valid_x, test_x, binary=True, binarize="dynamic")


@pytest.mark.parametrize("device", DEVICES)
def test_data_that_does_not_fit_trains_batch_by_batch_to_the_same_numbers(
    tmp_path, device, monkeypatch
):
    """Batches are binarized where the model is, so whether the split sits on the device or
    its batches come from the host, the same random numbers make the same steps."""
    cfg = TrainConfig(dataset="grey", epochs=2, batch_size=50)
    model = VAEConfig(z_dim=2, hidden=(8,))
    whole = train(
        cfg, model, tmp_path / "whole", progress=False, data=dynamic_data(), device=device
    )
    monkeypatch.setattr("pyrovae.runtime._DATA_SHARE", 0.0)  # nothing fits on a GPU now
    parts = train(
        cfg, model, tmp_path / "parts", progress=False, data=dynamic_data(), device=device
    )
    assert_same_state(state_on_cpu(whole.vae), state_on_cpu(parts.vae))
    assert [m["valid_elbo"] for m in whole.metrics] == [m["valid_elbo"] for m in parts.metrics]


# --- a model/guide pair of the user's own ----------------------------------------------------


class Pair(nn.Module):
    """A tiny Gaussian VAE written as a Pyro model/guide pair."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dec = nn.Linear(2, 5)
        self.enc = nn.Linear(5, 4)

    def model(self, x):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("pair", self)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def pair_data() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("pair", *(torch.randn(n, 5, generator=g) for n in (100, 50, 50)), binary=False)


@pytest.mark.parametrize("device", DEVICES)
def test_a_pair_of_your_own_is_moved_to_the_device_named(tmp_path, device):
    net = Pair()
    cfg = TrainConfig(dataset="pair", epochs=1, batch_size=50)
    pair = dict(model=(net.model, net.guide), data=pair_data(), progress=False)
    result = train(cfg, run_dir=tmp_path / "r", device=device, **pair)
    assert result.device.type == device
    assert all(p.device.type == device for p in net.parameters())


def test_a_pair_without_a_device_trains_where_its_module_is(tmp_path, monkeypatch):
    """The default device is not imposed on the user's own module: it stays where it is."""
    monkeypatch.setenv("PYROVAE_DEVICE", "cuda:99")  # refused, were it asked
    net = Pair()
    cfg = TrainConfig(dataset="pair", epochs=1, batch_size=50)
    pair = dict(model=(net.model, net.guide), data=pair_data(), progress=False)
    result = train(cfg, run_dir=tmp_path / "r", **pair)
    assert result.device == torch.device("cpu")


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run the command line trained (on the default device)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *CLI_DATA, "--epochs", "2", "--run-dir", str(run)]) == 0
    return run


@pytest.mark.parametrize("device", DEVICES)
def test_the_cli_with_device_gives_the_numbers_it_gives_without(
    device, tmp_path, monkeypatch, capsys
):
    default_is(monkeypatch, device)
    argv = ["train", *CLI_DATA, "--epochs", "2", "--run-dir"]
    assert main([*argv, str(tmp_path / "flag"), "--device", device]) == 0
    assert main([*argv, str(tmp_path / "plain")]) == 0
    assert f"on {resolve_device(device)}" in capsys.readouterr().out
    for which in ("best", "last"):
        a, b = (load_checkpoint(checkpoint_path(tmp_path / r, which)) for r in ("flag", "plain"))
        assert_same_state(a["model_state"], b["model_state"])
        for key in ("train_elbo", "valid_elbo"):
            assert [m[key] for m in a["metrics"]] == [m[key] for m in b["metrics"]]

    outputs = []
    for extra in (["--device", device], []):
        assert main(["evaluate", str(tmp_path / "flag"), "--k", "20", "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        out.pop("seconds")
        outputs.append(out)
    assert outputs[0] == outputs[1]

    for name, extra in (("s1", ["--device", device]), ("s2", [])):
        out = tmp_path / name
        assert main(["sample", str(tmp_path / "flag"), "--out", str(out), *extra]) == 0
    assert files(tmp_path / "s1") == files(tmp_path / "s2")


@pytest.mark.parametrize("device", DEVICES)
def test_resuming_with_device_equals_an_uninterrupted_run(device, tmp_path, capsys):
    argv = ["train", *CLI_DATA, "--device", device, "--run-dir"]
    assert main([*argv, str(tmp_path / "a"), "--epochs", "3"]) == 0
    assert main([*argv, str(tmp_path / "b"), "--epochs", "1"]) == 0
    resume = ["train", "--resume", "--run-dir", str(tmp_path / "b"), "--epochs", "3", "--quiet"]
    assert main([*resume, "--device", device]) == 0
    a, b = (load_checkpoint(checkpoint_path(tmp_path / r, "last")) for r in ("a", "b"))
    assert_same_state(a["model_state"], b["model_state"])
    assert [m["valid_elbo"] for m in a["metrics"]] == [m["valid_elbo"] for m in b["metrics"]]


BAD_DEVICES = ["tpu", "cuda:x", "", "cuda:99"]
COMMANDS = {
    "evaluate": ["--k", "5"],
    "sample": [],
    "gradvar": ["--draws", "2", "--warmup", "0"],
    "gap": ["--n", "2", "--k", "5", "--steps", "1"],
    "bdmc": ["--n", "2", "--steps", "2", "--k", "5"],
}


def assert_one_line_error(err: str, command: str, device: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith(f"pyrovae {command}: error: ") and repr(device) in err, err


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_bad_device_for_train_is_exit_2_one_line_and_no_run(device, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *CLI_DATA, "--run-dir", str(run), "--device", device]) == 2
    assert_one_line_error(capsys.readouterr().err, "train", device)
    assert not run.exists()


@pytest.mark.parametrize("device", BAD_DEVICES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_device_for_a_command_on_a_run_is_exit_2_one_line_and_nothing_written(
    cli_run, command, device, capsys
):
    before = files(cli_run)
    assert main([command, str(cli_run), *COMMANDS[command], "--device", device]) == 2
    assert_one_line_error(capsys.readouterr().err, command, device)
    assert files(cli_run) == before
    assert not (cli_run / "figures").exists()


def test_a_bad_device_for_a_resume_leaves_the_run_as_it_was(cli_run, capsys):
    before = files(cli_run)
    argv = ["train", "--resume", "--run-dir", str(cli_run), "--epochs", "3", "--device", "tpu"]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "train", "tpu")
    assert files(cli_run) == before


def test_a_bad_pyrovae_device_is_exit_2_naming_the_variable(cli_run, monkeypatch, capsys):
    monkeypatch.setenv("PYROVAE_DEVICE", "tpu")
    before = files(cli_run)
    assert main(["evaluate", str(cli_run), "--k", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "$PYROVAE_DEVICE: unknown device 'tpu'" in err
    assert files(cli_run) == before


def test_every_command_that_computes_takes_device(capsys):
    for command in ("train", *COMMANDS):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--device DEVICE" in capsys.readouterr().out, command


@pytest.mark.parametrize("device", DEVICES)
def test_the_producer_of_a_vae_computes_where_the_vae_is(device):
    vae = build_vae(VAEConfig(x_dim=5, z_dim=2, hidden=(4,))).to(device)
    for kind in ("direct", "traced"):
        assert make_producer(vae, kind).device == resolve_device(device)
