"""The convolutional nets (``conv``): shapes for any leading dims and image size, the decoder's
output in the layout the likelihood reads, a conv VAE that learns through ``pyrovae.train``,
both producers agreeing on it, checkpoints, the command line, and the image shape carried from
the data to the config (old configs without one still load)."""

import json
import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyrovae import (
    LIKELIHOODS,
    TrainConfig,
    TwoLayerVAE,
    VAEConfig,
    build_vae,
    evaluate_vae,
    load_vae,
    train,
)
from pyrovae.cli import main
from pyrovae.config import OptionError
from pyrovae.data import DataError, Dataset
from pyrovae.parts.likelihoods import Likelihood
from pyrovae.parts.nets import CONV_HIDDEN, NETS, ConvDecoder, ConvEncoder
from pyrovae.plots import save_image_grid
from pyrovae.runtime import check_step_memory
from pyrovae.training import read_config

from helpers import assert_producers_agree

SHAPES = [(1, 28, 28), (3, 32, 32), (2, 5, 7)]


def _nets(shape, z=4, groups=1, hidden=(16,)):
    d = math.prod(shape)
    conv = NETS.get("conv")
    encoder = conv(d, 2 * z, hidden, "relu", image_shape=shape, role="encoder")
    decoder = conv(z, groups * d, hidden, "relu", image_shape=shape, role="decoder")
    return encoder, decoder


def _blobs(n, shape=(28, 28), seed=0):
    """``n`` binary images (n, H·W): three random prototypes with 5% of pixels flipped."""
    rng = np.random.default_rng(seed)
    protos = rng.random((3, math.prod(shape))) < 0.2
    flips = rng.random((n, math.prod(shape))) < 0.05
    return torch.from_numpy(protos[rng.integers(0, 3, n)] ^ flips).float()


# --- the nets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes_for_any_leading_dims(shape):
    d = math.prod(shape)
    encoder, decoder = _nets(shape, z=4, groups=2)
    assert isinstance(encoder, ConvEncoder) and isinstance(decoder, ConvDecoder)
    for lead in [(3, 5), (5,), (), (0,)]:
        assert encoder(torch.rand(*lead, d)).shape == (*lead, 8)
        assert decoder(torch.randn(*lead, 4)).shape == (*lead, 2 * d)
    # The leading dims are rows: a (K, B) batch gives what its rows give one by one.
    z = torch.randn(3, 5, 4)
    torch.testing.assert_close(decoder(z)[1, 2], decoder(z[1, 2]))
    x = torch.rand(3, 5, d)
    torch.testing.assert_close(encoder(x)[2, 4], encoder(x[2, 4]))


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=str)
def test_the_decoder_gives_back_the_encoder_s_image_shape(shape):
    encoder, decoder = _nets(shape)
    c, h, w = shape
    x = torch.rand(6, c * h * w)
    maps = encoder.convs(x.reshape(6, *shape))
    assert maps.shape == (6, 64, h // 4, w // 4)
    # The transposed convolutions undo the strided ones' sizes, level by level.
    h_dec = decoder.head(torch.randn(6, 4)).reshape(6, *decoder.start)
    assert h_dec.shape == maps.shape
    assert decoder.deconvs(h_dec).shape == (6, *shape)
    assert decoder(encoder(x)[:, :4]).shape == x.shape


def test_the_decoder_writes_whole_images_channel_by_channel():
    """Output value g·C·H·W + c·H·W + i·W + j is image g's pixel (c, i, j): the data's (C, H, W)
    row-major order, one image of values after another."""
    shape, groups = (3, 6, 5), 2
    _, decoder = _nets(shape, groups=groups)
    last = decoder.deconvs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.arange(groups * shape[0], dtype=torch.float32))
    out = decoder(torch.randn(4, 4))
    expected = torch.arange(groups * shape[0]).repeat_interleave(shape[1] * shape[2])
    torch.testing.assert_close(out, expected.float().expand(4, -1))


class MeanAndScale(Likelihood):
    """A test likelihood reading two decoder values per pixel: x ~ N(loc, softplus(raw)²) with
    (loc, raw) = out.chunk(2, -1), as a likelihood with a decoded variance would."""

    def forward(self, out):
        loc, raw = out.chunk(2, -1)
        return dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3).to_event(1)

    @property
    def out_features(self):
        return 2 * self.x_dim

    def mean(self, out):
        return out.chunk(2, -1)[0]


@pytest.fixture
def mean_and_scale():
    """``MeanAndScale`` registered as a likelihood, and unregistered afterwards."""
    LIKELIHOODS.register("test-mean-and-scale")(MeanAndScale)
    try:
        yield "test-mean-and-scale"
    finally:
        del LIKELIHOODS._entries["test-mean-and-scale"]


def test_the_decoder_layout_is_the_one_the_likelihood_reads(mean_and_scale):
    shape = (3, 8, 8)
    cfg = VAEConfig(
        x_dim=192,
        z_dim=4,
        hidden=(16,),
        encoder="conv",
        decoder="conv",
        image_shape=shape,
        likelihood=mean_and_scale,
    )
    vae = build_vae(cfg)
    assert vae.decoder.out_shape == (6, 8, 8)
    z = torch.randn(2, 5, 4)
    before = vae.likelihood(vae.decoder(z))
    bias = vae.decoder.deconvs[-1].bias
    for group, (same, changed) in enumerate([("scale", "loc"), ("loc", "scale")]):
        with torch.no_grad():
            bias[3 * group : 3 * group + 3] += 1.0  # group 0: the loc image; 1: the scale one
        after = vae.likelihood(vae.decoder(z))
        with torch.no_grad():
            bias[3 * group : 3 * group + 3] -= 1.0
        a, b = before.base_dist, after.base_dist
        torch.testing.assert_close(getattr(a, same), getattr(b, same))
        assert (getattr(a, changed) != getattr(b, changed)).all()


def test_conv_factory_errors():
    conv = NETS.get("conv")
    with pytest.raises(ValueError, match="at least 4x4 pixels"):
        conv(9, 4, (), "relu", image_shape=(1, 3, 3), role="encoder")
    with pytest.raises(ValueError, match=r"image_shape must be \(C, H, W\)"):
        conv(784, 4, (), "relu", image_shape=(28, 28), role="encoder")
    with pytest.raises(ValueError, match="reads images of 784 values"):
        conv(100, 4, (), "relu", image_shape=(1, 28, 28), role="encoder")
    with pytest.raises(ValueError, match="writes whole images of 784 values"):
        conv(4, 1000, (), "relu", image_shape=(1, 28, 28), role="decoder")
    with pytest.raises(ValueError, match="role must be 'encoder' or 'decoder'"):
        conv(784, 4, (), "relu", image_shape=(1, 28, 28), role="top")
    # Without hidden sizes the fully connected layer has CONV_HIDDEN units.
    net = conv(784, 4, (), "relu", image_shape=(1, 28, 28), role="encoder")
    assert net.head[0].out_features == CONV_HIDDEN


# --- the VAE ------------------------------------------------------------------------------------


def test_build_vae_needs_an_image_shape_for_conv_nets():
    for flag in ("encoder", "decoder"):
        with pytest.raises(OptionError) as info:
            build_vae(VAEConfig(x_dim=784, **{flag: "conv"}))
        assert str(info.value) == (
            f"the conv {flag} needs image data, but the data has no image shape "
            f"(VAEConfig.image_shape is None): use --{flag} mlp"
        )
    with pytest.raises(OptionError, match=r"the conv encoder: conv nets need images of at least"):
        build_vae(VAEConfig(x_dim=12, encoder="conv", image_shape=(3, 2, 2)))
    # An mlp ignores the image shape; a conv encoder goes with an mlp decoder and back.
    for encoder, decoder in (("mlp", "mlp"), ("conv", "mlp"), ("mlp", "conv")):
        cfg = VAEConfig(encoder=encoder, decoder=decoder, image_shape=(1, 28, 28), hidden=(8,))
        assert build_vae(cfg).particles(torch.zeros(2, 784), num_particles=3).log_w.shape == (3, 2)


def test_image_shape_is_validated():
    with pytest.raises(OptionError, match=r"C\*H\*W = x_dim = 784, got \[28, 28\]"):
        VAEConfig(image_shape=(28, 28))
    with pytest.raises(OptionError, match=r"C\*H\*W = x_dim = 100, got \[1, 28, 28\]"):
        VAEConfig(x_dim=100, image_shape=(1, 28, 28))
    with pytest.raises(OptionError, match="image_shape must be a list of integers"):
        VAEConfig.from_dict({"image_shape": "28x28"})
    assert VAEConfig(x_dim=3072, image_shape=[3, 32, 32]).image_shape == (3, 32, 32)


def test_two_latent_layers_keep_mlp_nets_between_z1_and_z2():
    cfg = VAEConfig(
        latent_layers=2,
        z_dim=2,
        z1_dim=3,
        hidden=(8,),
        hidden_top=(5,),
        encoder="conv",
        decoder="conv",
        image_shape=(1, 28, 28),
        prior="vampprior",
        prior_options={"components": 4},
    )
    vae = build_vae(cfg)
    assert isinstance(vae, TwoLayerVAE)
    assert isinstance(vae.encoder, ConvEncoder) and isinstance(vae.decoder, ConvDecoder)
    for top in (vae.top_encoder, vae.top_decoder):
        assert [type(m).__name__ for m in top] == ["Linear", "Tanh", "Linear"]
    p = vae.particles(_blobs(5), num_particles=3)
    assert p.log_w.shape == (3, 5) and torch.isfinite(p.log_w).all()


def test_the_size_checks_count_the_conv_nets(monkeypatch):
    """The parameter count before allocation is exact (nets built on the meta device), and a
    step's memory estimate counts the feature maps."""
    needs = []
    monkeypatch.setattr("pyrovae.model.check_memory", lambda need, *a: needs.append(need))
    vae = build_vae(VAEConfig(encoder="conv", decoder="conv", image_shape=(1, 28, 28)))
    assert needs[-1] == 16 * sum(p.numel() for p in vae.parameters())
    maps = vae.encoder.values_per_row + vae.decoder.values_per_row
    assert maps == (32 * 14 * 14 + 64 * 7 * 7) + (32 * 14 * 14 + 1 * 28 * 28)
    x, params = torch.zeros(10, 784), list(vae.parameters())
    rows = sum(p.shape[0] for p in params if p.dim() == 2) + 3 * 784
    free = 10 * 5 * (rows + maps // 2) * 4  # room for the fully connected layers, not the maps
    monkeypatch.setattr("pyrovae.runtime.available_memory", lambda: free)
    check_step_memory(params, x, 5, "a step")
    with pytest.raises(MemoryError, match="a step on 5 particles x 10 data points"):
        check_step_memory(params, x, 5, "a step", [vae])


@pytest.mark.parametrize("estimator", ["pathwise", "iwae", "dreg", "score-function"])
def test_direct_producer_equals_traced_for_a_conv_vae(estimator):
    torch.manual_seed(0)
    cfg = VAEConfig(
        x_dim=2 * 6 * 5,
        z_dim=3,
        hidden=(8,),
        encoder="conv",
        decoder="conv",
        image_shape=(2, 6, 5),
        likelihood="gaussian-learned",
    )
    vae = build_vae(cfg).double()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.3 * torch.randn_like(p))
    options = {"num_particles": 3} if estimator in ("iwae", "dreg") else {}
    fields = ("log_prior", "log_lik", "log_q", "log_q_stopped", "kl")
    assert assert_producers_agree(vae, estimator, options, fields) is not None


# --- training, checkpoints, the command line ----------------------------------------------------


def test_a_conv_vae_learns_and_its_checkpoint_gives_the_same_log_px(tmp_path):
    x = _blobs(32)
    data = Dataset("blobs", x, x[:16], x[:16], binary=True, image_shape=(28, 28))
    cfg = TrainConfig(dataset="blobs", epochs=12, batch_size=8, lr=3e-3)
    model = VAEConfig(z_dim=4, hidden=(32,), encoder="conv", decoder="conv", activation="relu")
    result = train(cfg, model, run_dir=tmp_path / "run", progress=False, data=data)
    assert result.producer == "direct" and result.metrics[-1]["step"] == 48
    assert result.vae.config.image_shape == (1, 28, 28)  # taken from the data
    valid = [m["valid_elbo"] for m in result.metrics]
    assert valid[-1] > valid[0] + 50, valid  # from about -540 nats: it learns the blobs
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["image_shape"] == [1, 28, 28] and saved["encoder"] == "conv"

    loaded, state = load_vae(tmp_path / "run", "last")
    assert state["epoch"] == 12 and isinstance(loaded.decoder, ConvDecoder)
    estimates = []
    for vae in (result.vae, loaded):
        pyro.set_rng_seed(3)
        estimates.append(evaluate_vae(vae.eval(), x[:16], k=20, progress=False))
    assert estimates[0].log_px == estimates[1].log_px
    torch.testing.assert_close(estimates[0].per_point_log_px, estimates[1].per_point_log_px)


def test_colour_images_train_and_draw(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3 * 32 * 32, generator=g)
    data = Dataset("colour", x, x[:8], x[:8], binary=False, image_shape=(3, 32, 32))
    assert data.channels_shape == (3, 32, 32)
    model = VAEConfig(
        z_dim=4, hidden=(16,), encoder="conv", decoder="conv", likelihood="gaussian-learned"
    )
    cfg = TrainConfig(dataset="colour", epochs=1, batch_size=8)
    result = train(cfg, model, run_dir=tmp_path / "run", progress=False, data=data)
    assert math.isfinite(result.metrics[-1]["valid_elbo"])
    assert result.vae.config.image_shape == (3, 32, 32)
    # An image shape given that is not the data's is refused before anything is written.
    wrong = VAEConfig(**{**model.__dict__, "x_dim": 3072, "image_shape": (3, 16, 64)})
    with pytest.raises(OptionError, match=r"image_shape \[3, 16, 64\] is not the data's"):
        train(cfg, wrong, run_dir=tmp_path / "wrong", progress=False, data=data)
    assert not (tmp_path / "wrong").exists()
    # Grids of colour, grey and other images (their channels' mean) are drawn.
    samples = result.vae.sample(6)
    for shape, values in (((3, 32, 32), samples), ((32, 96), samples), ((4, 16, 48), samples)):
        path = save_image_grid(values, shape, tmp_path / f"{len(shape)}-{shape[0]}.png", nrow=3)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dataset_image_shapes():
    x = torch.zeros(2, 12)
    assert Dataset("toy", x, x, x, binary=False, image_shape=(3, 4)).channels_shape == (1, 3, 4)
    assert Dataset("toy", x, x, x, binary=False, image_shape=[3, 2, 2]).image_shape == (3, 2, 2)
    assert Dataset("toy", x, x, x, binary=False).channels_shape is None
    with pytest.raises(DataError, match=r"\(or \(C, H, W\) for C channels\)"):
        Dataset("toy", x, x, x, binary=False, image_shape=(1, 3, 2, 2))
    with pytest.raises(DataError, match="does not hold 12 values"):
        Dataset("toy", x, x, x, binary=False, image_shape=(2, 3, 3))


@pytest.fixture
def blobs_dir(tmp_path, monkeypatch):
    """A tiny binarized-MNIST-shaped data set in .amat files."""
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "bmnist"
    root.mkdir()
    for seed, (split, n) in enumerate((("train", 40), ("valid", 20), ("test", 20))):
        rows = _blobs(n, seed=seed).int().tolist()
        lines = (" ".join(map(str, row)) for row in rows)
        (root / f"binarized_mnist_{split}.amat").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.filterwarnings("ignore:.*not comparable to published numbers")
def test_command_line_conv_nets(tmp_path, blobs_dir, capsys):
    run = tmp_path / "run"
    flags = ["--encoder", "conv", "--decoder", "conv", "--hidden", "16", "--z-dim", "4"]
    common = ["--epochs", "1", "--batch-size", "20", "--quiet"]
    data = ["--dataset", "binarized-mnist", "--data-dir", str(blobs_dir)]
    assert main(["train", *data, *flags, *common, "--run-dir", str(run)]) == 0
    assert "training finished" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["encoder"], saved["decoder"], saved["image_shape"]) == (
        "conv",
        "conv",
        [1, 28, 28],
    )
    assert main(["evaluate", str(run), "--k", "5", "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["log_px"])
    assert main(["sample", str(run), "--n", "10"]) == 0
    assert (run / "figures" / "reconstructions.png").is_file()
    capsys.readouterr()

    # On data that are not images: one line, exit status 2, nothing written.
    ring = ["--dataset", "ring", "--n-train", "50", "--n-eval", "20"]
    assert main(["train", *ring, *flags, *common, "--run-dir", str(tmp_path / "ring")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "the conv encoder needs image data" in err and "use --encoder mlp" in err
    assert not (tmp_path / "ring").exists()


def test_old_configs_load_without_an_image_shape():
    d = VAEConfig(x_dim=4, z_dim=2, hidden=(8,)).to_dict()
    del d["image_shape"]
    cfg = VAEConfig.from_dict(d)
    assert cfg.image_shape is None and type(build_vae(cfg).encoder).__name__ == "Sequential"
    # A config with one survives JSON.
    cfg = VAEConfig(encoder="conv", image_shape=(1, 28, 28))
    assert VAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # A 0.1.0 run's config.json.
    runs = Path(__file__).parent / "fixtures" / "v0.1.0" / "runs"
    run = sorted(runs.iterdir())[0]
    assert "image_shape" not in json.loads((run / "config.json").read_text())["model"]
    assert read_config(run)[1].image_shape is None
