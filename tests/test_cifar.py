"""CIFAR-10 and 8-bit colour: the discretized-logistic likelihood against exact answers (masses
that sum to 1, CDF differences in float64 and in exact arithmetic, Pyro's OrderedLogistic, the
mean, sampling frequencies, finite values and gradients at extremes), bits per dimension
against hand computations and the convention's consequences, the ``cifar10`` loader end to end
through the real torchvision class on small fake files in its pickle format (split, layout,
missing and unsafe files), and a conv VAE trained and evaluated from Python and from the
command line."""

import hashlib
import json
import math
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyrovae import TrainConfig, VAEConfig, build_vae, evaluate_run, evaluate_vae, train
from pyrovae.cli import main
from pyrovae.config import OptionError
from pyrovae.data import DataError, Dataset, load_dataset, vision
from pyrovae.evaluation import bits_per_dim
from pyrovae.evaluation.bits import data_levels, with_bits_per_dim
from pyrovae.evaluation.importance import LogLikelihood
from pyrovae.parts.distributions import LOG_SCALE_BOUNDS, DiscretizedLogistic
from pyrovae.parts.likelihoods import LIKELIHOODS, DiscretizedLogisticLikelihood

D = 3 * 32 * 32
GRID64 = torch.arange(256, dtype=torch.float64) / 255
LOCS = [-50.0, -1.0, 0.0, 0.3, 0.5, 0.77, 1.0, 2.0, 1e3]
LOG_SCALES = [-30.0, -9.0, -7.0, -4.0, -1.0, 0.0, 3.0, 9.0, 30.0]  # +-30: beyond the clamp


def _over_grid(loc, log_scale, dtype=torch.float64):
    """The distribution at one (loc, log_scale) for each of the 256 values, and the values."""
    d = DiscretizedLogistic(
        torch.full((256,), loc, dtype=dtype), torch.full((256,), log_scale, dtype=dtype)
    )
    return d, GRID64.to(dtype)


def _direct_masses(loc, log_scale):
    """The 256 masses as plain CDF differences in float64: F((k + 1/2)/255) - F((k - 1/2)/255),
    with F(-inf) = 0 and F(+inf) = 1 at the ends."""
    scale = math.exp(min(max(log_scale, LOG_SCALE_BOUNDS[0]), LOG_SCALE_BOUNDS[1]))
    edges = (torch.arange(1, 256, dtype=torch.float64) - 0.5) / 255
    cdf = torch.sigmoid((edges - loc) / scale)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), cdf, torch.ones(1, dtype=torch.float64)])
    return cdf[1:] - cdf[:-1]


# --- the discretized logistic -------------------------------------------------------------------


@pytest.mark.parametrize("loc", LOCS)
@pytest.mark.parametrize("log_scale", LOG_SCALES)
def test_the_256_masses_sum_to_one_and_are_the_cdf_differences(loc, log_scale):
    d, x = _over_grid(loc, log_scale)
    log_p = d.log_prob(x)
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-13)
    direct = _direct_masses(loc, log_scale)
    torch.testing.assert_close(log_p.exp(), direct, rtol=0, atol=1e-14)
    # In log space wherever the plain difference still has its digits.
    held = direct > 1e-8
    torch.testing.assert_close(log_p[held], direct[held].log(), rtol=1e-9, atol=1e-12)
    # float32, the training dtype: the masses still sum to 1 to float32 precision, and each
    # log mass is float64's up to the rounding of the standardized edges (e - loc) / scale,
    # a few float32 ulps of max(1, |loc|) over the scale (the log mass moves by at most as
    # much as an edge does).
    d32, x32 = _over_grid(loc, log_scale, torch.float32)
    log_p32 = d32.log_prob(x32)
    assert torch.isfinite(log_p32).all()
    assert log_p32.double().exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    eps = torch.finfo(torch.float32).eps
    edge_rounding = 4 * eps * max(1.0, abs(loc)) * d32.log_scale[0].double().neg().exp()
    tolerance = edge_rounding + 1e-6 * (1 + log_p.abs())
    assert ((log_p32.double() - log_p).abs() <= tolerance).all()


def test_tail_masses_match_exact_arithmetic():
    """Far in a tail the plain difference rounds to 0; the log-sigmoid form keeps every digit
    (compared with 50-digit arithmetic, differencing the CDF left of the location and the
    survival function right of it, so that no digits cancel)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    for loc, log_scale, k in [(0.9, -6.0, 3), (-2.0, -5.0, 200), (0.0, -9.0, 128), (3.0, -3.0, 17)]:
        s = mpmath.exp(log_scale)
        lower, upper = mpmath.mpf(k - 0.5) / 255, mpmath.mpf(k + 0.5) / 255

        def cdf(e, loc=loc, s=s):
            return 1 / (1 + mpmath.exp(-(e - loc) / s))

        def survival(e, loc=loc, s=s):
            return 1 / (1 + mpmath.exp((e - loc) / s))

        mass = survival(lower) - survival(upper) if lower >= loc else cdf(upper) - cdf(lower)
        d, _ = _over_grid(loc, log_scale)
        ours = d.log_prob(torch.full((256,), k / 255, dtype=torch.float64))[0].item()
        assert ours == pytest.approx(float(mpmath.log(mass)), rel=1e-12), (loc, log_scale, k)
        assert ours < -60  # far in a tail
    # Right of the location the plain difference of CDFs near 1 is 0 in float64.
    assert _direct_masses(-2.0, -5.0)[200] == 0


def test_agrees_with_pyros_ordered_logistic():
    """Pyro's OrderedLogistic with cutpoints (e_j - loc) / scale at unit scale is the same
    distribution (it builds all 256 masses per value, which is why it is not used)."""
    edges = (torch.arange(1, 256, dtype=torch.float64) - 0.5) / 255
    for loc, log_scale in [(0.4, -3.0), (0.05, -5.0), (0.9, -1.0)]:
        scale = math.exp(log_scale)
        ordered = dist.OrderedLogistic(
            torch.tensor(loc / scale, dtype=torch.float64), edges / scale
        )
        d, x = _over_grid(loc, log_scale)
        torch.testing.assert_close(
            d.log_prob(x).exp(), ordered.log_prob(torch.arange(256)).exp(), rtol=0, atol=1e-13
        )


@pytest.mark.parametrize("loc", [-1e6, -3.0, 0.0, 0.5, 1.0, 4.0, 1e6])
@pytest.mark.parametrize("log_scale", [-1e4, -9.0, -8.5, 0.0, 8.5, 9.0, 1e4])
def test_extreme_values_give_finite_log_probs_and_gradients(loc, log_scale):
    loc_t = torch.full((256,), loc, requires_grad=True)
    log_scale_t = torch.full((256,), log_scale, requires_grad=True)
    log_p = DiscretizedLogistic(loc_t, log_scale_t).log_prob(GRID64.float())
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    log_p.sum().backward()
    assert torch.isfinite(loc_t.grad).all() and torch.isfinite(log_scale_t.grad).all()
    # The clamp of the log scale: no gradient beyond its bounds, some within them.
    inside = LOG_SCALE_BOUNDS[0] < log_scale < LOG_SCALE_BOUNDS[1]
    assert bool(log_scale_t.grad.abs().sum() > 0) == inside


def test_gradients_are_the_derivatives_of_the_mass():
    """Also with the location on a bin's edge (0.5 = 127.5/255), where a standardized edge is
    exactly 0 and a log σ written with a clamp or |x| would have autograd's derivative wrong."""
    loc = torch.tensor([0.3, 0.0, 1.0, 0.62, 0.5, 0.5], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(
        [-4.0, -2.0, -3.0, -6.0, -4.0, -5.0], dtype=torch.float64, requires_grad=True
    )
    x = torch.tensor([80, 0, 255, 160, 127, 128], dtype=torch.float64) / 255
    assert torch.autograd.gradcheck(
        lambda m, s: DiscretizedLogistic(m, s).log_prob(x), (loc, log_scale)
    )


def test_mean_is_exact_and_in_the_unit_interval():
    for loc in LOCS:
        for log_scale in LOG_SCALES:
            d, x = _over_grid(loc, log_scale)
            expected = (x * d.log_prob(x).exp()).sum()
            assert d.mean[0].item() == pytest.approx(expected.item(), abs=1e-12)
    d32 = DiscretizedLogistic(torch.tensor([-5.0, 0.5, 7.0]), torch.tensor([-2.0, 8.0, -9.0]))
    assert ((d32.mean >= 0) & (d32.mean <= 1)).all()


def test_samples_are_grid_values_with_the_masses_as_frequencies():
    torch.manual_seed(0)
    loc, log_scale = torch.tensor([0.02, 0.5, 0.97]), torch.tensor([-4.0, -3.0, -5.0])
    d = DiscretizedLogistic(loc, log_scale)
    n = 200_000
    x = d.sample((n,))
    assert x.shape == (n, 3)
    k = (x * 255).round()
    assert torch.equal(k / 255, x) and k.min() >= 0 and k.max() <= 255
    for j in range(3):
        masses = DiscretizedLogistic(loc[j].double(), log_scale[j].double()).log_prob(GRID64).exp()
        counts = torch.bincount(k[:, j].long(), minlength=256).double()
        # Each bin's frequency within 5 binomial standard errors of its mass.
        tolerance = 5 * (masses * (1 - masses) / n).sqrt() + 1e-6
        assert ((counts / n - masses).abs() <= tolerance).all(), j


def test_batch_and_event_shapes_as_a_likelihood():
    lik = DiscretizedLogisticLikelihood(12)
    assert lik.out_features == 24 and lik.discrete and lik.data_range == (0.0, 1.0)
    assert (
        lik.levels == 256
        and LIKELIHOODS.get("discretized-logistic") is DiscretizedLogisticLikelihood
    )
    out = torch.randn(5, 4, 24)
    p = lik(out)
    assert p.batch_shape == (5, 4) and p.event_shape == (12,)
    x = p.sample()
    assert x.shape == (5, 4, 12)
    torch.testing.assert_close(
        p.log_prob(x), DiscretizedLogistic(out[..., :12], out[..., 12:]).log_prob(x).sum(-1)
    )
    assert p.expand((3, 5, 4)).log_prob(x).shape == (3, 5, 4)
    assert lik.mean(out).shape == (5, 4, 12)
    assert p.support.check(x).all() and not p.support.check(torch.full((12,), 0.5)).any()


@pytest.mark.parametrize(
    "value, shown", [(0.5, "0.5"), (-1 / 255, "-0.00392157"), (256 / 255, "1.00392")]
)
def test_data_off_the_8_bit_grid_is_refused_in_one_line(value, shown):
    lik = DiscretizedLogisticLikelihood(4)
    x = torch.tensor([[0.0, 1.0, 3 / 255, 254 / 255], [0.0, value, 1.0, 1.0]])
    with pytest.raises(ValueError) as info:
        lik.check_data(x, "the cifar10 training split")
    message = str(info.value)
    assert "\n" not in message
    assert f"the cifar10 training split holds the value {shown};" in message
    assert "values k/255" in message and "scale 8-bit images by 1/255" in message
    lik.check_data(x[:1], "fine")  # on the grid: binary values are 8-bit values too


def test_the_likelihood_takes_no_options():
    cfg = VAEConfig(
        x_dim=8,
        z_dim=2,
        hidden=(4,),
        likelihood="discretized-logistic",
        likelihood_options={"sigma": 0.5},
    )
    with pytest.raises(OptionError, match="takes no option.*--sigma is for the Gaussian"):
        build_vae(cfg)


# --- bits per dimension -------------------------------------------------------------------------


def test_bits_per_dim_by_hand():
    # 5000 nats over 3072 dims: 5000 / (3072 x 0.693147) = 5000 / 2129.348 = 2.348136 bits.
    assert bits_per_dim(-5000.0, 3072, discrete=True) == pytest.approx(2.3481364598, rel=1e-10)
    # A density: plus log2(255) = 7.9943534369 bits for bins of width 1/255.
    assert bits_per_dim(-5000.0, 3072, discrete=False) == pytest.approx(
        2.3481364598 + 7.9943534369, rel=1e-10
    )
    per_point = torch.tensor([-5000.0, -6000.0], dtype=torch.float64)
    torch.testing.assert_close(
        bits_per_dim(per_point, 3072, True),
        torch.tensor([2.3481364598, 2.8177637517], dtype=torch.float64),
    )


def test_uniform_models_are_8_bits_either_way():
    """The uniform mass over 256 values is 8 bits/dim; so is the uniform density over the union
    of their bins, [-1/510, 1 + 1/510] (width 256/255): the convention makes the two agree."""
    x_dim = 3072
    assert bits_per_dim(-x_dim * math.log(256), x_dim, discrete=True) == pytest.approx(8, abs=1e-12)
    log_density = x_dim * math.log(255 / 256)
    assert bits_per_dim(log_density, x_dim, discrete=False) == pytest.approx(8, abs=1e-12)
    # 16 levels: a density over bins of width 1/15.
    assert bits_per_dim(4 * math.log(15 / 16), 4, discrete=False, levels=16) == pytest.approx(4)


def test_a_smooth_density_gives_the_bits_of_its_discretization():
    """For a Gaussian smooth at the scale of a bin, the density's bits/dim (bins of width
    1/255) are those of the masses it puts in the bins, to 2e-4 bits (the midpoint rule's
    error); the 1/256 convention would be 0.0056 bits off."""
    loc, scale = torch.tensor(0.45, dtype=torch.float64), 0.2
    normal = torch.distributions.Normal(loc, scale)
    edges = torch.cat(
        [torch.tensor([-math.inf]), (torch.arange(1, 256) - 0.5) / 255, torch.tensor([math.inf])]
    ).double()
    masses = normal.cdf(edges[1:]) - normal.cdf(edges[:-1])
    inner = slice(20, 236)  # away from the edge bins, which reach to infinity
    discrete = bits_per_dim(masses[inner].log(), 1, discrete=True)
    dense = bits_per_dim(normal.log_prob(GRID64[inner]), 1, discrete=False)
    assert (dense - discrete).abs().max() < 2e-4
    assert (dense + math.log2(256 / 255) - discrete).abs().min() > 5e-3


def test_with_bits_per_dim_converts_the_mean_and_the_standard_error():
    result = LogLikelihood(-6000.0, 12.0, -6100.0, 13.0, k=10, n=4, seconds=1.0)
    converted = with_bits_per_dim(result, D, discrete=True, levels=256)
    assert converted.bits_per_dim == pytest.approx(6000 / (D * math.log(2)))
    assert converted.bits_per_dim_stderr == pytest.approx(12 / (D * math.log(2)))
    dense = with_bits_per_dim(result, D, discrete=False, levels=256)
    assert dense.bits_per_dim == pytest.approx(converted.bits_per_dim + math.log2(255))
    assert dense.bits_per_dim_stderr == converted.bits_per_dim_stderr
    assert result.bits_per_dim is None and "bits_per_dim" not in result.to_dict()
    assert converted.to_dict()["bits_per_dim"] == converted.bits_per_dim


def test_data_levels_are_checked():
    gaussian, logistic = LIKELIHOODS.get("gaussian")(3), DiscretizedLogisticLikelihood(3)
    x = torch.tensor([[0.0, 128 / 255, 1.0]])
    assert data_levels(gaussian, x) is None
    assert data_levels(gaussian, x, 256) == 256 and data_levels(logistic, x) == 256
    with pytest.raises(ValueError, match="data hold the value 0.3; leave levels out"):
        data_levels(gaussian, torch.tensor([[0.3, 0.0, 1.0]]), 256)
    with pytest.raises(ValueError, match="models 256 levels, but levels=16 was given"):
        data_levels(logistic, x, 16)
    for bad in (1, True, 2.5, 2**17):
        with pytest.raises(ValueError, match="levels must be None or an integer from 2 to 65536"):
            data_levels(gaussian, x, bad)


def _eight_bit(n, x_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, x_dim), generator=g).float() / 255


def test_evaluate_vae_reports_bits_per_dim_for_8_bit_data():
    x = _eight_bit(6, 10)
    torch.manual_seed(0)
    logistic = build_vae(
        VAEConfig(x_dim=10, z_dim=2, hidden=(8,), likelihood="discretized-logistic")
    )
    res = evaluate_vae(logistic, x, k=7, progress=False)  # levels from the likelihood
    assert res.bits_per_dim == pytest.approx(-res.log_px / (10 * math.log(2)), rel=1e-12)
    assert res.bits_per_dim_stderr == pytest.approx(res.log_px_stderr / (10 * math.log(2)))
    assert res.bits_per_dim > 0
    gauss = build_vae(VAEConfig(x_dim=10, z_dim=2, hidden=(8,), likelihood="gaussian"))
    plain = evaluate_vae(gauss, x, k=7, progress=False)
    assert plain.bits_per_dim is None and "bits_per_dim" not in plain.to_dict()
    res = evaluate_vae(gauss, x, k=7, progress=False, levels=256)
    expected = (-res.log_px + 10 * math.log(255)) / (10 * math.log(2))
    assert res.bits_per_dim == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="need data of 256 levels"):
        evaluate_vae(gauss, x + 0.001, k=7, progress=False, levels=256)


def test_dataset_levels():
    x = torch.zeros(2, 3)
    assert Dataset("toy", x, x, x, binary=False).levels is None
    assert Dataset("toy", x, x, x, binary=False, levels=np.int64(256)).levels == 256
    assert "levels=256" in repr(Dataset("toy", x, x, x, binary=False, levels=256))
    for bad in (1, 2**16 + 1, 2.0, True):
        with pytest.raises(DataError, match="levels must be None or an integer from 2 to 65536"):
            Dataset("toy", x, x, x, binary=False, levels=bad)


# --- fake CIFAR-10 files, read by the real torchvision class ------------------------------------

N_BATCH, N_TEST, N_VALID = 8, 12, 10  # five batches of 8: 30 train, 10 valid; 12 test


def _images(n, rng):
    """``n`` 8-bit colour images as the official files store them, (n, 3072) uint8 rows in
    (C, H, W) order: one of three blocky prototypes each, with a little noise."""
    protos = rng.integers(0, 256, (3, 3, 8, 8)).repeat(4, axis=2).repeat(4, axis=3)
    noise = rng.integers(-6, 7, (n, 3, 32, 32))
    return np.clip(protos[rng.integers(0, 3, n)] + noise, 0, 255).astype(np.uint8).reshape(n, D)


def _write_cifar(root: Path, seed: int = 0) -> dict:
    """The six batch files and batches.meta in torchvision's pickle format under
    ``root/cifar-10-batches-py``; returns {file name: (rows, md5)}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        rows = _images(N_TEST if name == "test_batch" else N_BATCH, rng)
        entry = {"data": rows, "labels": rng.integers(0, 10, len(rows)).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        written[name] = rows
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [str(i) for i in range(10)]})
    )
    return written


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _trust(monkeypatch, root: Path) -> None:
    """Make torchvision's CIFAR10 accept the fake files: their checksums as the official ones."""
    import torchvision.datasets

    cls = torchvision.datasets.CIFAR10
    folder = root / "cifar-10-batches-py"
    monkeypatch.setattr(
        cls,
        "train_list",
        [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)],
    )
    monkeypatch.setattr(cls, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / "batches.meta")})


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    """No network and no user environment: every download attempt is recorded and refused."""
    import torchvision.datasets.cifar
    import torchvision.datasets.utils

    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PYROVAE_DATA", raising=False)
    monkeypatch.setattr(vision, "CIFAR10_VALID_SIZE", N_VALID)
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", refuse)
    monkeypatch.setattr(torchvision.datasets.utils, "_get_redirect_url", refuse)
    return attempts


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    root = tmp_path / "cifar"
    written = _write_cifar(root)
    _trust(monkeypatch, root)
    return root, written


def test_cifar10_splits_layout_and_values(cifar_dir, _offline):
    root, written = cifar_dir
    ds = load_dataset("cifar10", data_dir=root)
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((30, D), (10, D), (12, D))
    official_train = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    # Each row is the official row, channel by channel (C, H, W), divided by 255: exactly.
    as_values = torch.from_numpy(official_train).float() / 255
    assert torch.equal(ds.train, as_values[:30]) and torch.equal(ds.valid, as_values[30:])
    assert torch.equal(ds.test, torch.from_numpy(written["test_batch"]).float() / 255)
    assert ds.train.dtype == torch.float32 and ds.name == "cifar10"
    assert ds.image_shape == ds.channels_shape == (3, 32, 32)
    assert ds.levels == 256 and not ds.binary and ds.binarize is None
    # Pixel (c, h, w) of image i is at c·1024 + h·32 + w.
    image = official_train[3].reshape(3, 32, 32)
    assert ds.train[3, 2 * 1024 + 5 * 32 + 7].item() * 255 == pytest.approx(image[2, 5, 7])
    assert _offline == []  # nothing downloaded
    test_only = load_dataset("cifar10", data_dir=root, splits=("test",))
    assert test_only.train.shape == (0, D) and torch.equal(test_only.test, ds.test)


def test_cifar10_from_the_archive_alone(tmp_path, monkeypatch, _offline):
    """The official archive without its extracted folder is extracted, with no network."""
    import torchvision.datasets

    staging = tmp_path / "staging"
    written = _write_cifar(staging)
    _trust(monkeypatch, staging)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "tgz_md5", _md5(archive))
    ds = load_dataset("cifar10", data_dir=root)
    assert torch.equal(ds.test, torch.from_numpy(written["test_batch"]).float() / 255)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file() and _offline == []


def test_missing_cifar10_says_where_to_put_it(tmp_path, _offline):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"could not load CIFAR10 (train) from {tmp_path}: download=False:")
    assert "network disabled in tests" in message
    assert "Put the official cifar-10-python.tar.gz (or the cifar-10-batches-py folder" in message
    assert f"pass --data-dir {tmp_path} or set PYROVAE_DATA" in message
    assert len(_offline) == 1  # one attempt to download, refused
    typo = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data directory {typo} does not exist"):
        load_dataset("cifar10", data_dir=typo)
    assert not typo.exists()


def test_a_corrupt_cifar10_file_is_reported(cifar_dir):
    root, _ = cifar_dir
    with (root / "cifar-10-batches-py" / "test_batch").open("ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="Dataset not found or corrupted"):
        load_dataset("cifar10", data_dir=root)


@pytest.mark.parametrize(
    "name, make, message",
    [
        (
            "cifar-10-batches-py/data_batch_1",
            os.mkfifo,
            r"is not a regular file \(a FIFO\); delete it",
        ),
        (
            "cifar-10-batches-py/test_batch",
            lambda p: p.symlink_to("/dev/zero"),
            r"is not a regular file \(a character device, through the symbolic link to /dev/zero",
        ),
        ("cifar-10-batches-py/batches.meta", os.mkfifo, r"is not a regular file \(a FIFO\)"),
        (
            "cifar-10-python.tar.gz",
            lambda p: p.symlink_to(p.parent / "gone"),
            r"is a symbolic link to .*gone, which does not exist",
        ),
        (
            "cifar-10-python.tar.gz",
            lambda p: p.open("wb").truncate(2**30 + 1),
            r"more than the 1\.0 GiB that a CIFAR10 data file can sanely hold",
        ),
    ],
    ids=["fifo", "dev-zero", "meta-fifo", "dangling-archive", "over-1-GiB"],
)
def test_a_cifar10_file_that_is_not_a_sane_regular_file_is_refused(
    tmp_path, monkeypatch, name, make, message
):
    import torchvision.datasets

    opened = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: opened.append(a))
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(info.value).startswith(f"{path} ")
    assert opened == []  # refused before torchvision looked at anything


def test_unexpected_cifar10_contents_are_refused(tmp_path, monkeypatch):
    import torchvision.datasets

    class Odd:
        def __init__(self, root, train=True, download=False):
            self.data = np.zeros((60 if train else 5, 28, 28, 3), dtype=np.uint8)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Odd)
    with pytest.raises(DataError, match=r"holds \(60, 28, 28, 3\) torch.uint8 images, expected"):
        load_dataset("cifar10", data_dir=tmp_path)

    class Few(Odd):
        def __init__(self, root, train=True, download=False):
            self.data = np.zeros((N_VALID, 32, 32, 3), dtype=np.uint8)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Few)
    with pytest.raises(DataError, match="has only 10 training images, expected 50000"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- a conv VAE on CIFAR-shaped data ------------------------------------------------------------

SMALL = {"z_dim": 4, "hidden": (16,), "encoder": "conv", "decoder": "conv", "activation": "relu"}


def test_a_conv_vae_learns_cifar_with_the_discretized_logistic(cifar_dir, tmp_path):
    root, _ = cifar_dir
    cfg = TrainConfig(dataset="cifar10", data_dir=str(root), epochs=20, batch_size=10, lr=1e-2)
    model = VAEConfig(likelihood="discretized-logistic", **SMALL)
    result = train(cfg, model, run_dir=tmp_path / "run", progress=False)
    assert result.vae.config.image_shape == (3, 32, 32) and result.vae.config.x_dim == D
    valid = [m["valid_elbo"] for m in result.metrics]
    assert all(math.isfinite(v) and v < 0 for v in valid)
    # From about 10 bits/dim at the start (a logistic of scale 1) to below 8.5 (uniform
    # colours are 8).
    bits = [-v / (D * math.log(2)) for v in valid]
    assert bits[0] > 9.5 and bits[-1] < 8.5, bits
    res = evaluate_run(str(tmp_path / "run"), k=10, split="test", progress=False)
    assert res.n == N_TEST and res.log_px >= res.elbo
    assert res.bits_per_dim == pytest.approx(-res.log_px / (D * math.log(2)), rel=1e-12)
    assert 0 < res.bits_per_dim < 8.5
    ais = evaluate_run(
        str(tmp_path / "run"),
        split="test",
        n=3,
        method="ais",
        steps=3,
        chains=2,
        leapfrog=2,
        progress=False,
    )
    assert ais.bits_per_dim == pytest.approx(-ais.log_px / (D * math.log(2)), rel=1e-12)
    assert "bits_per_dim" in ais.to_dict()
    # Means for the figures are colours in [0, 1].
    means = result.vae.sample(4)
    assert means.shape == (4, D) and 0 <= means.min() and means.max() <= 1


def test_a_gaussian_on_cifar_reports_the_corrected_bits(cifar_dir, tmp_path):
    root, _ = cifar_dir
    cfg = TrainConfig(dataset="cifar10", data_dir=str(root), epochs=1, batch_size=10)
    model = VAEConfig(likelihood="gaussian-learned", **SMALL)
    train(cfg, model, run_dir=tmp_path / "run", progress=False)
    res = evaluate_run(str(tmp_path / "run"), k=5, progress=False)
    expected = (-res.log_px + D * math.log(255)) / (D * math.log(2))
    assert res.bits_per_dim == pytest.approx(expected, rel=1e-12)


def test_command_line_cifar10(cifar_dir, tmp_path, capsys):
    root, _ = cifar_dir
    run = tmp_path / "run"
    flags = ["--encoder", "conv", "--decoder", "conv", "--hidden", "16", "--z-dim", "4"]
    data = ["--dataset", "cifar10", "--data-dir", str(root)]
    common = [
        "--likelihood",
        "discretized-logistic",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--quiet",
    ]
    assert main(["train", *data, *flags, *common, "--run-dir", str(run)]) == 0
    assert "training finished" in capsys.readouterr().out
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["likelihood"] == "discretized-logistic"
    assert saved["model"]["image_shape"] == [3, 32, 32] and saved["train"]["dataset"] == "cifar10"

    assert main(["evaluate", str(run), "--k", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == N_TEST and out["k"] == 10
    assert out["bits_per_dim"] == pytest.approx(-out["log_px"] / (D * math.log(2)), rel=1e-12)
    assert out["bits_per_dim_stderr"] == pytest.approx(out["log_px_stderr"] / (D * math.log(2)))

    assert main(["evaluate", str(run), "--k", "10", "--quiet"]) == 0
    table = capsys.readouterr().out
    line = next(row for row in table.splitlines() if "in bits/dim" in row)
    assert f"{out['bits_per_dim']:.4f} ± {out['bits_per_dim_stderr']:.4f}" in line
    assert main(["sample", str(run), "--n", "4"]) == 0
    assert (run / "figures" / "samples.png").is_file()
    capsys.readouterr()


def test_command_line_without_cifar10_files(tmp_path, capsys, _offline):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(empty),
        "--encoder",
        "conv",
        "--decoder",
        "conv",
        "--likelihood",
        "discretized-logistic",
        "--run-dir",
        str(run),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("pyrovae train: error: could not load CIFAR10 (train) from")
    assert "cifar-10-python.tar.gz" in err and not run.exists()


def test_command_line_discretized_logistic_on_real_valued_data(tmp_path, capsys):
    run = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "ring",
        "--n-train",
        "40",
        "--n-eval",
        "20",
        "--likelihood",
        "discretized-logistic",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--run-dir",
        str(run),
        "--quiet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "the discretized-logistic likelihood needs 8-bit data" in err
    assert not run.exists()
