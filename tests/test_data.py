"""Tests for pyrovae.data: the .amat reader and its cache, torchvision splits, synthetic sets,
and that every bad input (a mistyped directory, an unreadable file, an unknown split, NaN values,
a bad option) is a one-line DataError that names what was wrong."""

from __future__ import annotations

import io
import math
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae import data as D
from pyrovae.data import (
    DATASETS,
    DataError,
    Dataset,
    binarized_mnist,
    load_dataset,
    read_amat,
    vision,
)

ROWS = {"train": 5, "valid": 4, "test": 3}
_REAL_DOWNLOAD = binarized_mnist._download  # before the autouse fixture replaces it


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Keep every test's cache in tmp_path and away from the user's environment and network."""
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PYROVAE_DATA", raising=False)

    def no_network(url, dest):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(binarized_mnist, "_download", no_network)


def _amat_text(values: np.ndarray, newline: str = "\n", trailing: str = "") -> str:
    return "".join(" ".join(str(v) for v in row) + trailing + newline for row in values)


def _write_splits(directory: Path, seed: int = 0, **text_kwargs) -> dict:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in ROWS.items():
        arrays[split] = rng.integers(0, 2, size=(n, 784))
        path = directory / f"binarized_mnist_{split}.amat"
        path.write_text(_amat_text(arrays[split], **text_kwargs), newline="")
    return arrays


def _load_small(directory: Path) -> Dataset:
    # Small files are not the canonical split, so the loader must say so.
    with pytest.warns(UserWarning, match="not comparable to published numbers"):
        return load_dataset("binarized-mnist", data_dir=directory)


def _assert_matches(ds: Dataset, arrays: dict) -> None:
    for split, expected in arrays.items():
        got = ds.split(split)
        assert got.dtype == torch.float32
        assert got.shape == (ROWS[split], 784)
        assert torch.equal(got, torch.as_tensor(expected, dtype=torch.float32))


def test_amat_parses_exact_values(tmp_path):
    arrays = _write_splits(tmp_path / "data")
    ds = _load_small(tmp_path / "data")
    _assert_matches(ds, arrays)
    assert ds.binary and ds.image_shape == (28, 28) and ds.binarize is None and ds.x_dim == 784
    assert ds.name == "binarized-mnist"


def test_pyrovae_data_env_and_parent_directory(tmp_path, monkeypatch):
    arrays = _write_splits(tmp_path / "root" / "binarized_mnist")
    monkeypatch.setenv("PYROVAE_DATA", str(tmp_path / "root"))
    with pytest.warns(UserWarning):
        ds = load_dataset("binarized-mnist")
    _assert_matches(ds, arrays)


def test_second_load_uses_cache_and_cache_is_not_beside_data(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    arrays = _write_splits(data_dir)
    first = _load_small(data_dir)
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 3
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        f"binarized_mnist_{s}.amat" for s in ROWS
    )

    def must_not_parse(*args):
        raise AssertionError("parsed again despite a valid cache")

    monkeypatch.setattr(binarized_mnist, "_parse_fast", must_not_parse)
    monkeypatch.setattr(binarized_mnist, "_parse_lines", must_not_parse)
    start = time.perf_counter()
    second = _load_small(data_dir)
    assert time.perf_counter() - start < 1.0
    _assert_matches(second, arrays)
    for split in ROWS:
        assert torch.equal(first.split(split), second.split(split))


def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path):
    data_dir = tmp_path / "data"
    arrays = _write_splits(data_dir)
    _load_small(data_dir)
    cache_files = sorted((tmp_path / "cache").glob("*.pt"))
    cache_files[0].write_bytes(b"this is not a torch file")
    torch.save(torch.full((2, 784), 7, dtype=torch.uint8), cache_files[1])  # loads, but wrong
    torch.save({"not": "a tensor"}, cache_files[2])
    _assert_matches(_load_small(data_dir), arrays)
    for f in cache_files:  # rebuilt in place
        assert torch.load(f, weights_only=True).max() <= 1


def test_edited_file_misses_cache(tmp_path):
    data_dir = tmp_path / "data"
    _write_splits(data_dir, seed=0)
    _load_small(data_dir)
    arrays = _write_splits(data_dir, seed=1)  # different content and size/mtime
    path = data_dir / "binarized_mnist_train.amat"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _assert_matches(_load_small(data_dir), arrays)


def test_windows_line_endings_and_trailing_spaces_parse(tmp_path):
    arrays = _write_splits(tmp_path / "data", newline="\r\n", trailing="  ")
    raw = (tmp_path / "data" / "binarized_mnist_train.amat").read_bytes()
    assert binarized_mnist._parse_fast(raw) is None  # really exercises the tolerant path
    _assert_matches(_load_small(tmp_path / "data"), arrays)


def test_missing_final_newline_and_trailing_blank_lines(tmp_path):
    rows = np.random.default_rng(3).integers(0, 2, size=(3, 784))
    path = tmp_path / "a.amat"
    path.write_text(_amat_text(rows)[:-1])
    assert torch.equal(read_amat(path), torch.as_tensor(rows, dtype=torch.uint8))
    path.write_text(_amat_text(rows) + "\n\n")
    assert torch.equal(read_amat(path), torch.as_tensor(rows, dtype=torch.uint8))


def _corrupt(tmp_path: Path, text: str) -> Path:
    arrays = _write_splits(tmp_path / "data")
    path = tmp_path / "data" / "binarized_mnist_train.amat"
    path.write_text(text(arrays["train"]) if callable(text) else text)
    return path


def _lines(rows: np.ndarray) -> list:
    return _amat_text(rows).splitlines()


@pytest.mark.parametrize(
    "make, message",
    [
        # the last line cut mid-way
        (lambda a: _amat_text(a)[:-500], r"line 5 has 534 values, expected 784 \(file truncated"),
        # a value that is not 0 or 1 on line 3
        (
            lambda a: "\n".join(
                line if i != 2 else line.replace("0", "0.5", 1).replace("1", "0.5", 1)
                for i, line in enumerate(_lines(a))
            ),
            r"line 3, value \d+: '0\.5' is not 0 or 1",
        ),
        # a middle line with half its values
        (
            lambda a: "\n".join(
                line if i != 2 else line[: 392 * 2 - 1] for i, line in enumerate(_lines(a))
            ),
            r"line 3 has 392 values, expected 784",
        ),
        ("", r"is empty"),
        ("\n \n", r"is empty"),
    ],
    ids=["truncated", "non-binary", "short-middle-line", "empty", "blank"],
)
def test_malformed_file_names_file_and_line(tmp_path, make, message):
    path = _corrupt(tmp_path, make)
    with pytest.raises(DataError, match=message) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset("binarized-mnist", data_dir=tmp_path / "data")
    assert str(path) in str(info.value)


def test_non_binary_value_reports_exact_column(tmp_path):
    rows = np.zeros((4, 784), dtype=int)
    text = _lines(rows)
    values = text[2].split(" ")
    values[4] = "2"
    text[2] = " ".join(values)
    path = tmp_path / "x.amat"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"x\.amat: line 3, value 5: '2' is not 0 or 1"):
        read_amat(path)


def test_missing_file_names_path_url_and_fix(tmp_path):
    _write_splits(tmp_path / "data")
    missing = tmp_path / "data" / "binarized_mnist_valid.amat"
    missing.unlink()
    with pytest.raises(DataError) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_dataset("binarized-mnist", data_dir=tmp_path / "data")
    message = str(info.value)
    assert str(missing) in message
    assert D.BINARIZED_MNIST_URL.format(split="valid") in message
    assert "--data-dir" in message and "PYROVAE_DATA" in message
    assert not any(p.name.endswith(".part") for p in (tmp_path / "data").iterdir())


def test_download_fills_missing_file(tmp_path, monkeypatch):
    arrays = _write_splits(tmp_path / "data")
    target = tmp_path / "data" / "binarized_mnist_test.amat"
    text = target.read_text()
    target.unlink()
    fetched = []

    def fake_download(url, dest):
        fetched.append(url)
        Path(dest).write_text(text)

    monkeypatch.setattr(binarized_mnist, "_download", fake_download)
    _assert_matches(_load_small(tmp_path / "data"), arrays)
    assert fetched == [D.BINARIZED_MNIST_URL.format(split="test")]


# --- options and registry ---------------------------------------------------------------------


def test_registry_and_option_errors():
    assert {"binarized-mnist", "mnist", "fashion-mnist", "linear-gaussian", "ring", "gmm2d"} <= set(
        DATASETS.names()
    )
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(DataError, match=r"does not take option\(s\) n_trian; accepted options: "):
        load_dataset("ring", n_trian=10)
    with pytest.raises(DataError, match="accepted options: n_train, n_valid, n_test, seed, x_dim"):
        load_dataset("linear-gaussian", bogus=1)
    with pytest.raises(DataError, match=r"noise_std must be a number in \[1e-06, 1e\+06\]"):
        load_dataset("linear-gaussian", noise_std=0)
    with pytest.raises(DataError, match=r"n_train must be an integer in \[1, 10000000000\], got 0"):
        load_dataset("gmm2d", n_train=0)


def test_split_rejects_unknown_name():
    ds = load_dataset("ring", n_train=10, n_valid=5, n_test=5)
    with pytest.raises(ValueError, match="unknown split 'validation'; choose one of: train"):
        ds.split("validation")


# --- synthetic datasets -----------------------------------------------------------------------


@pytest.mark.parametrize("name, dim", [("linear-gaussian", 10), ("ring", 2), ("gmm2d", 2)])
def test_synthetic_shapes_and_determinism(name, dim):
    sizes = dict(n_train=300, n_valid=50, n_test=40)
    a = load_dataset(name, seed=1, **sizes)
    b = load_dataset(name, seed=1, **sizes)
    c = load_dataset(name, seed=2, **sizes)
    for split, n in zip(D.SPLITS, sizes.values()):
        assert a.split(split).shape == (n, dim) and a.split(split).dtype == torch.float32
        assert torch.equal(a.split(split), b.split(split))
        assert not torch.equal(a.split(split), c.split(split))
    assert not a.binary and a.image_shape is None and a.binarize is None
    assert not torch.equal(a.train[:40], a.test)  # splits are distinct draws
    # Each split has its own stream: resizing one split leaves the others unchanged.
    d = load_dataset(name, seed=1, n_train=100, n_valid=50, n_test=40)
    assert torch.equal(d.test, a.test)


def test_ring_radius():
    ds = load_dataset("ring", n_train=5000)
    radius = ds.train.norm(dim=1)
    assert radius.min() >= 1 - 1e-5  # ‖x‖ = 1 + ‖z‖ / 10
    assert radius.max() < 1.6
    # E‖z‖ = sqrt(pi / 2) for a 2-D standard normal.
    assert abs(radius.mean().item() - (1 + 0.1 * math.sqrt(math.pi / 2))) < 0.01


def test_gmm2d_components():
    ds = load_dataset("gmm2d", n_train=8000, radius=3.0, std=0.05)
    assert torch.allclose(ds.train.norm(dim=1), torch.tensor(3.0), atol=0.3)
    angles = torch.atan2(ds.train[:, 1], ds.train[:, 0])
    component = torch.round(angles / (2 * math.pi / 8)).long() % 8
    counts = torch.bincount(component, minlength=8).float()
    assert (counts - 1000).abs().max() < 150  # equal weights
    centre = 3.0 * torch.tensor([math.cos(2 * math.pi * 3 / 8), math.sin(2 * math.pi * 3 / 8)])
    assert (ds.train[component == 3] - centre).std(dim=0).sub(0.05).abs().max() < 0.01
    assert load_dataset("gmm2d", n_components=3, n_train=10).train.shape == (10, 2)


def test_linear_gaussian_matches_truth():
    n = 10000
    ds = load_dataset("linear-gaussian", n_train=n, x_dim=6, z_dim=3, noise_std=0.3, seed=4)
    truth = ds.truth
    assert truth is not None and truth.x_dim == 6 and truth.z_dim == 3
    assert torch.allclose(truth.noise_var, torch.full((6,), 0.09))
    marginal = truth.marginal()
    x = ds.train.double()
    cov = marginal.covariance_matrix.double()
    emp_cov = torch.cov(x.T)
    # Standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij²) / n).
    se = ((cov.diag()[:, None] * cov.diag()[None, :] + cov**2) / n).sqrt()
    assert ((emp_cov - cov).abs() < 5 * se).all()
    se_mean = (cov.diag() / n).sqrt()
    assert ((x.mean(0) - marginal.loc.double()).abs() < 5 * se_mean).all()
    # E_p[log p(x)] = -H(p); log p(x) of a D-dim Gaussian has standard deviation sqrt(D / 2).
    mean_log_p = truth.log_marginal(ds.train).double().mean().item()
    assert abs(mean_log_p + marginal.entropy().item()) < 5 * math.sqrt(6 / 2 / n)


# --- torchvision datasets ---------------------------------------------------------------------


class _FakeMNIST:
    """Stands in for torchvision.datasets.MNIST: same constructor, ``.data`` (N, 28, 28) uint8."""

    sizes = {True: 60, False: 15}
    calls: list = []

    def __init__(self, root, train=True, download=False):
        type(self).calls.append((root, train, download))
        gen = torch.Generator().manual_seed(int(train))
        n = self.sizes[train]
        self.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        self.data[:, 0, 0] = torch.arange(n, dtype=torch.uint8)  # marks each image's index
        self.targets = (torch.arange(n) * 7 + int(train)) % 10  # a label per image, known


@pytest.fixture
def fake_torchvision(monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(vision, "MNIST_VALID_SIZE", 20)
    monkeypatch.setattr(_FakeMNIST, "calls", [])
    monkeypatch.setattr(torchvision.datasets, "MNIST", _FakeMNIST)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _FakeMNIST)
    return _FakeMNIST


def test_torchvision_split_sizes_and_grayscale(fake_torchvision, tmp_path):
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((40, 784), (20, 784), (15, 784))
    # train is the first 40 official training images, valid the last 20, in order.
    assert ds.train[:, 0].mul(255).round().tolist() == list(range(40))
    assert ds.valid[:, 0].mul(255).round().tolist() == list(range(40, 60))
    assert all(s.dtype == torch.float32 for s in (ds.train, ds.valid, ds.test))
    assert 0 <= ds.train.min() and ds.train.max() <= 1
    assert ((ds.train > 0) & (ds.train < 1)).any()
    assert not ds.binary and ds.binarize is None and ds.image_shape == (28, 28)
    assert ds.name == "fashion-mnist"
    assert fake_torchvision.calls == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    # Each image keeps its own label, through the split and a subset.
    index = {s: ds.split(s)[:, 0].mul(255).round().long() for s in ("train", "valid", "test")}
    for split, train in (("train", 1), ("valid", 1), ("test", 0)):
        assert torch.equal(ds.labels[split], (index[split] * 7 + train) % 10)
    small = ds.subset(n_train=10, n_eval=5, seed=3)
    rows = small.train[:, 0].mul(255).round().long()
    assert torch.equal(small.labels["train"], (rows * 7 + 1) % 10)
    only_test = load_dataset("fashion-mnist", data_dir=tmp_path, splits=("test",))
    assert only_test.labels["train"].shape == (0,) and torch.equal(only_test.labels["test"],
                                                                   ds.labels["test"])  # fmt: skip


def test_labels_must_be_one_whole_number_per_example():
    x = torch.zeros(4, 2)
    good = {"train": torch.tensor([0, 1, -1, 2]), "valid": torch.tensor([3, 3, 3, 3]),
            "test": torch.zeros(4, dtype=torch.int32)}  # fmt: skip
    assert Dataset("d", x, x, x, binary=False, labels=good).labels["test"].dtype == torch.int64
    for bad, said in (({**good, "test": torch.zeros(3)}, "4 whole numbers"),
                      ({**good, "valid": torch.full((4,), -2)}, "hold -2"),
                      ({"train": good["train"]}, "a tensor for each of")):  # fmt: skip
        with pytest.raises(DataError, match=said):
            Dataset("d", x, x, x, binary=False, labels=bad)


def test_torchvision_full_size_split(monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(_FakeMNIST, "sizes", {True: 60000, False: 10000})
    monkeypatch.setattr(torchvision.datasets, "MNIST", _FakeMNIST)
    ds = load_dataset("mnist")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50000, 10000, 10000)
    root = str(Path.home() / ".cache" / "pyrovae" / "torchvision")
    assert _FakeMNIST.calls[-1] == (root, False, False)


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def test_torchvision_dynamic_binarization(fake_torchvision):
    ds = load_dataset("mnist", binarize="dynamic")
    assert ds.binary and ds.binarize == "dynamic"
    assert not _is_binary(ds.train)  # the trainer resamples train every step
    assert _is_binary(ds.valid) and _is_binary(ds.test)
    again = load_dataset("mnist", binarize="dynamic")
    assert torch.equal(ds.valid, again.valid) and torch.equal(ds.test, again.test)
    # The fixed draw has the grayscale values as its probabilities.
    gray = load_dataset("mnist")
    assert abs(ds.test.mean().item() - gray.test.mean().item()) < 0.01


def test_torchvision_static_binarization(fake_torchvision):
    ds = load_dataset("mnist", binarize="static")
    assert ds.binary and ds.binarize is None
    assert all(_is_binary(ds.split(s)) for s in D.SPLITS)
    dynamic = load_dataset("mnist", binarize="dynamic")
    assert torch.equal(ds.test, dynamic.test)  # the same fixed evaluation images either way
    with pytest.raises(DataError, match="unknown binarize='always'"):
        load_dataset("mnist", binarize="always")


def test_torchvision_downloads_then_explains(monkeypatch, tmp_path):
    import torchvision.datasets

    attempts = []

    class Offline(_FakeMNIST):
        def __init__(self, root, train=True, download=False):
            attempts.append(download)
            if not download:
                raise RuntimeError("Dataset not found.")
            super().__init__(root, train, download)

    monkeypatch.setattr(vision, "MNIST_VALID_SIZE", 20)
    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    assert len(load_dataset("mnist", data_dir=tmp_path).train) == 40
    assert attempts == [False, True, False, True]

    class Unavailable:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Unavailable)
    with pytest.raises(DataError, match="could not load MNIST") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)
    assert "PYROVAE_DATA" in str(info.value)


# --- subset -----------------------------------------------------------------------------------


def test_subset_is_seeded_random_and_sized():
    ds = load_dataset("ring", n_train=200, n_valid=100, n_test=100)
    a = ds.subset(n_train=50, n_eval=30, seed=0)
    assert (len(a.train), len(a.valid), len(a.test)) == (50, 30, 30)
    assert torch.equal(a.test, ds.subset(n_train=50, n_eval=30, seed=0).test)
    assert not torch.equal(a.test, ds.subset(n_train=50, n_eval=30, seed=1).test)
    assert not torch.equal(a.test, ds.test[:30])  # not a prefix
    # every row comes from its own split, without repeats
    rows = {tuple(r) for r in ds.test.tolist()}
    assert all(tuple(r) in rows for r in a.test.tolist())
    assert len({tuple(r) for r in a.test.tolist()}) == 30
    whole = ds.subset(n_eval=10)
    assert whole.train is ds.train and len(whole.valid) == 10
    assert a.name == ds.name and a.binary == ds.binary
    with pytest.raises(ValueError, match="cannot take 500 rows from the 200 train rows"):
        ds.subset(n_train=500)


def test_unwritable_cache_warns_but_loads(tmp_path, monkeypatch):
    arrays = _write_splits(tmp_path / "data")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("PYROVAE_CACHE", str(blocker))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("binarized-mnist", data_dir=tmp_path / "data")
    assert any("could not write the parse cache" in str(w.message) for w in record)
    _assert_matches(ds, arrays)


def test_download_disabled_names_url(tmp_path, monkeypatch):
    def must_not_download(url, dest):
        raise AssertionError("download attempted")

    monkeypatch.setattr(binarized_mnist, "_download", must_not_download)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"binarized_mnist_train\.amat does not exist \(download"):
        load_dataset("binarized-mnist", data_dir=tmp_path / "empty", download=False)


REAL_BMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"


@pytest.mark.skipif(not REAL_BMNIST.is_dir(), reason="the shared binarized MNIST is not here")
def test_real_binarized_mnist_matches_its_readme():
    ds = load_dataset("binarized-mnist", data_dir=REAL_BMNIST)
    assert [len(ds.split(s)) for s in ("train", "valid", "test")] == [50000, 10000, 10000]
    means = [round(ds.split(s).mean().item(), 4) for s in ("train", "valid", "test")]
    assert means == [0.1306, 0.1311, 0.1325]  # as ../shared/data/binarized_mnist/README.md says
    start = time.perf_counter()
    load_dataset("binarized-mnist", data_dir=REAL_BMNIST)
    assert time.perf_counter() - start < 1.0  # the parse cache


# --- data directories: a typo creates nothing -------------------------------------------------


@pytest.fixture
def recorded_urlopen(monkeypatch):
    """The real ``_download``, with a network that refuses every URL and records it."""
    urls = []

    def refuse(url, timeout=None):
        urls.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(binarized_mnist, "_download", _REAL_DOWNLOAD)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return urls


@pytest.mark.parametrize("via", ["argument", "PYROVAE_DATA"])
def test_missing_data_dir_creates_nothing_and_downloads_nothing(
    tmp_path, monkeypatch, recorded_urlopen, via
):
    typo = tmp_path / "dta" / "binarized_mnist"
    if via == "PYROVAE_DATA":
        monkeypatch.setenv("PYROVAE_DATA", str(typo))
    with pytest.raises(DataError) as info:
        load_dataset("binarized-mnist", data_dir=typo if via == "argument" else None)
    assert not (tmp_path / "dta").exists()
    assert recorded_urlopen == []
    message = str(info.value)
    assert message.startswith(f"data directory {typo} does not exist; check ")
    assert ("--data-dir" if via == "argument" else "PYROVAE_DATA") in message
    assert "\n" not in message


def test_default_cache_dir_is_created_by_the_real_download(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {s: rng.integers(0, 2, size=(n, 784)) for s, n in ROWS.items()}
    served = {D.BINARIZED_MNIST_URL.format(split=s): _amat_text(a) for s, a in arrays.items()}
    monkeypatch.setattr(binarized_mnist, "_download", _REAL_DOWNLOAD)
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(served[url].encode())
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ds = _load_small(None)
    _assert_matches(ds, arrays)
    default = tmp_path / "home" / ".cache" / "pyrovae" / "binarized_mnist"
    assert sorted(p.name for p in default.iterdir()) == sorted(
        f"binarized_mnist_{s}.amat" for s in ROWS
    )


def test_missing_torchvision_dir_creates_nothing_and_downloads_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.mnist

    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(url)
        raise RuntimeError("network disabled in tests")

    # The real torchvision MNIST class: it creates MNIST/raw before it downloads.
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse)
    typo = tmp_path / "torchvison"
    for name in ("mnist", "fashion-mnist"):
        with pytest.raises(DataError) as info:
            load_dataset(name, data_dir=typo)
        assert not typo.exists()
        assert attempts == []
        assert str(info.value).startswith(f"data directory {typo} does not exist; check --data-dir")


def test_data_dir_that_is_a_file_or_not_a_path(tmp_path):
    _write_splits(tmp_path / "data")
    amat = tmp_path / "data" / "binarized_mnist_train.amat"
    with pytest.raises(DataError, match=r"is a file, not a directory; check --data-dir") as info:
        load_dataset("binarized-mnist", data_dir=amat)
    assert str(amat) in str(info.value)
    with pytest.raises(DataError, match=r"data_dir must be a path \(str or os.PathLike\), got 5"):
        load_dataset("binarized-mnist", data_dir=5)
    with pytest.raises(DataError, match="data_dir is an empty string; pass --data-dir DIR"):
        load_dataset("mnist", data_dir="")


# --- OS errors and the parse cache --------------------------------------------------------------


@pytest.mark.parametrize(
    "error, reason",
    [
        (PermissionError(13, "Permission denied"), "Permission denied"),
        (IsADirectoryError(21, "Is a directory"), "Is a directory"),
        (OSError(5, "Input/output error"), "Input/output error"),
        (OSError("disk on fire"), "disk on fire"),
    ],
    ids=["permission", "is-a-directory", "io-error", "no-errno"],
)
def test_os_error_while_reading_names_file_and_reason(tmp_path, monkeypatch, error, reason):
    _write_splits(tmp_path / "data")
    bad = tmp_path / "data" / "binarized_mnist_valid.amat"
    read_bytes = Path.read_bytes

    def failing_read_bytes(self):
        if self == bad:
            raise error
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", failing_read_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError) as info:
            load_dataset("binarized-mnist", data_dir=tmp_path / "data")
    message = str(info.value)
    assert message.startswith(f"cannot read {bad}: {reason}; ")
    assert "\n" not in message


def test_directory_where_a_file_should_be(tmp_path):
    _write_splits(tmp_path / "data")
    path = tmp_path / "data" / "binarized_mnist_test.amat"
    path.unlink()
    path.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"is a directory, not an \.amat file") as info:
            load_dataset("binarized-mnist", data_dir=tmp_path / "data")
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match=r"nope\.amat does not exist; check the path"):
        read_amat(tmp_path / "nope.amat")


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    "target, error",
    [
        ("tempfile.mkstemp", PermissionError(13, "Permission denied")),
        ("os.replace", OSError(28, "No space left on device")),
        ("torch.save", RuntimeError("PytorchStreamWriter failed writing file data/0")),
    ],
    ids=["read-only-cache", "disk-full-on-rename", "torch-save-disk-full"],
)
def test_cache_write_failure_is_only_a_warning(tmp_path, monkeypatch, target, error):
    arrays = _write_splits(tmp_path / "data")
    monkeypatch.setattr(target, _raise(error))
    with pytest.warns(UserWarning) as record:
        ds = load_dataset("binarized-mnist", data_dir=tmp_path / "data")
    assert any("could not write the parse cache" in str(w.message) for w in record)
    _assert_matches(ds, arrays)
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no half-written file left behind


def test_unreadable_cache_directory_is_ignored(tmp_path, monkeypatch):
    arrays = _write_splits(tmp_path / "data")
    cache = tmp_path / "cache"
    exists = Path.exists

    def guarded_exists(self, *args, **kwargs):
        if cache in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", guarded_exists)
    _assert_matches(_load_small(tmp_path / "data"), arrays)


# --- loading only some splits -----------------------------------------------------------------


def test_evaluating_test_split_never_reads_the_train_file(tmp_path):
    arrays = _write_splits(tmp_path / "data")
    (tmp_path / "data" / "binarized_mnist_train.amat").write_text("garbage\n")
    (tmp_path / "data" / "binarized_mnist_valid.amat").unlink()
    with pytest.warns(UserWarning, match=r"binarized_mnist_test\.amat has 3 rows") as record:
        ds = load_dataset("binarized-mnist", data_dir=tmp_path / "data", splits=("test",))
    assert len(record) == 1  # only the test file was looked at
    assert torch.equal(ds.test, torch.as_tensor(arrays["test"], dtype=torch.float32))
    for split in ("train", "valid"):
        assert ds.split(split).shape == (0, 784) and ds.split(split).dtype == torch.float32
    assert ds.x_dim == 784 and ds.image_shape == (28, 28) and ds.binary
    # A single name is one split; the loader called directly takes the same keyword.
    with pytest.warns(UserWarning):
        direct = D.load_binarized_mnist(tmp_path / "data", splits="test", download=False)
    assert torch.equal(direct.test, ds.test) and len(direct.train) == 0


def test_splits_of_a_synthetic_dataset_are_the_same_rows():
    full = load_dataset("linear-gaussian", n_train=30, n_valid=20, n_test=10, x_dim=4)
    part = load_dataset(
        "linear-gaussian", n_train=30, n_valid=20, n_test=10, x_dim=4, splits=["valid"]
    )
    assert torch.equal(part.valid, full.valid)
    assert part.train.shape == (0, 4) and part.test.shape == (0, 4)
    assert part.truth is not None


def test_unknown_or_no_splits():
    with pytest.raises(DataError, match=r"unknown split\(s\) 'tset' in splits; choose from: train"):
        load_dataset("ring", splits=("tset",))
    with pytest.raises(DataError, match="splits is empty; ask for at least one of"):
        load_dataset("ring", splits=())
    with pytest.raises(DataError, match="splits must be a sequence of split names"):
        load_dataset("ring", splits=3)
    # splits is not a dataset option: the accepted options do not list it.
    with pytest.raises(DataError, match=r"accepted options: download$"):
        load_dataset("binarized-mnist", bogus=1)
    with pytest.raises(DataError, match=r"accepted options: binarize, labelled$"):
        load_dataset("mnist", bogus=1)


def test_torchvision_reads_only_the_needed_official_file(fake_torchvision, tmp_path):
    full = load_dataset("mnist", data_dir=tmp_path, binarize="dynamic")
    fake_torchvision.calls.clear()
    test_only = load_dataset("mnist", data_dir=tmp_path, binarize="dynamic", splits=["test"])
    assert fake_torchvision.calls == [(str(tmp_path), False, False)]
    assert torch.equal(test_only.test, full.test)  # the same fixed binarization
    assert test_only.train.shape == (0, 784) and test_only.valid.shape == (0, 784)
    fake_torchvision.calls.clear()
    valid_only = load_dataset("mnist", data_dir=tmp_path, binarize="dynamic", splits=["valid"])
    assert fake_torchvision.calls == [(str(tmp_path), True, False)]
    assert torch.equal(valid_only.valid, full.valid) and len(valid_only.test) == 0


def test_subset_skips_empty_splits():
    ds = load_dataset("ring", n_test=50, splits=("test",))
    small = ds.subset(n_train=10, n_eval=5, seed=0)
    assert (len(small.train), len(small.valid), len(small.test)) == (0, 0, 5)
    rows = {tuple(r) for r in ds.test.tolist()}
    assert all(tuple(r) in rows for r in small.test.tolist())


# --- as_data_tensor and what a Dataset accepts --------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda v: torch.as_tensor(v, dtype=torch.uint8),
        lambda v: torch.as_tensor(v, dtype=torch.bool),
        lambda v: torch.as_tensor(v, dtype=torch.int64),
        lambda v: torch.as_tensor(v, dtype=torch.float64),
        lambda v: torch.as_tensor(v, dtype=torch.float16),
        lambda v: np.asarray(v, dtype=np.uint8),
        lambda v: np.asarray(v, dtype=np.float64),
        lambda v: np.asarray(v, dtype=">f4"),  # big-endian, as some files hold it
        lambda v: v,  # nested list of ints
    ],
    ids=["uint8", "bool", "int64", "float64", "float16", "np-uint8", "np-float64", "np-be", "list"],
)
def test_as_data_tensor_converts_to_float32(make):
    values = [[0, 1, 1], [1, 0, 1]]
    out = D.as_data_tensor(make(values))
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert torch.equal(out, torch.tensor(values, dtype=torch.float32))


def test_as_data_tensor_copies_only_when_needed():
    x = torch.rand(4, 3)
    assert D.as_data_tensor(x) is x
    array = np.zeros((2, 3), dtype=np.float32)
    out = D.as_data_tensor(array)
    array[0, 0] = 5  # shares memory
    assert out[0, 0] == 5
    read_only = np.zeros((2, 3), dtype=np.float32)
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about sharing a read-only buffer
        assert D.as_data_tensor(read_only).sum() == 0
    assert D.as_data_tensor([[1, 2]], dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([["0", "1"]]), r"pixels holds string values \(numpy dtype <U1\), not numbers"),
        ([[0, "a"]], r"pixels holds string values"),
        ([[0, None]], r"pixels holds Python object values"),
        (np.array([[1 + 2j]]), r"pixels holds complex values"),
        (torch.ones(2, 2, dtype=torch.complex64), r"pixels holds torch.complex64 values"),
        ([[0, 1], [1]], r"pixels is not a rectangular array of numbers"),
        (
            torch.tensor([[0.0, math.nan], [math.nan, math.nan]]),
            r"pixels has 3 NaN values; remove or replace them",
        ),
        (np.array([[math.inf, 0.0], [-math.inf, 1.0]]), r"pixels has 2 infinite values"),
        (np.array([[1e300, math.nan]]), r"pixels has 1 NaN value and 1 infinite value \(or too"),
    ],
    ids=[
        "np-str",
        "list-str",
        "object",
        "complex",
        "torch-complex",
        "ragged",
        "nan",
        "inf",
        "overflow",
    ],
)
def test_as_data_tensor_rejects_non_numbers_and_nan(bad, message):
    with pytest.raises(DataError, match=message) as info:
        D.as_data_tensor(bad, what="pixels")
    assert "\n" not in str(info.value)


def test_dataset_converts_its_splits():
    rows = [[0, 1, 1, 0], [1, 1, 0, 0]]
    ds = Dataset(
        "toy",
        torch.tensor(rows, dtype=torch.uint8),  # what read_amat returns
        np.asarray(rows, dtype=np.float64),
        rows,
        binary=True,
        image_shape=(2, 2),
    )
    for split in D.SPLITS:
        assert ds.split(split).dtype == torch.float32
        assert torch.equal(ds.split(split), torch.tensor(rows, dtype=torch.float32))
    assert len(ds.subset(n_train=1).train) == 1  # and survives dataclasses.replace
    nan = torch.tensor([[0.0, math.nan, 1.0, 1.0]])
    with pytest.raises(DataError, match=r"dataset 'toy': the valid split has 1 NaN value"):
        Dataset("toy", torch.ones(2, 4), nan, torch.ones(1, 4), binary=False)


# --- other bad input --------------------------------------------------------------------------


def test_bad_option_values_are_data_errors(tmp_path):
    _write_splits(tmp_path / "data")
    with pytest.raises(DataError, match="option download must be true or false, got 'no'; "):
        load_dataset("binarized-mnist", data_dir=tmp_path / "data", download="no")
    with pytest.raises(DataError, match=r"option noise_std must be a number in \[1e-06, 1e\+06\]"):
        load_dataset("linear-gaussian", noise_std=math.inf)
    with pytest.raises(DataError, match=r"option radius must be a number in \[1e-06, 1e\+06\]"):
        load_dataset("gmm2d", radius=float("nan"))
    with pytest.raises(DataError, match=r"option n_test must be an integer in \[1, \d+\], got 2.5"):
        load_dataset("ring", n_test=2.5)
    with pytest.raises(DataError, match=r"dataset name must be a string"):
        load_dataset(["ring"])
    # numpy integers (from a config computed with numpy) are integers
    assert load_dataset("ring", n_train=np.int64(7)).train.shape == (7, 2)


def test_bad_subset_sizes_and_split_names():
    ds = load_dataset("ring", n_train=20, n_valid=10, n_test=10)
    for kwargs, message in [
        (dict(n_train=-1), r"n_train must be None or an integer >= 0, got -1"),
        (dict(n_eval=2.5), r"n_eval must be None or an integer >= 0, got 2.5"),
        (dict(n_eval=True), r"n_eval must be None or an integer >= 0, got True"),
        (dict(seed="0"), r"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\] .*, got '0'"),
        (
            dict(n_eval=11),
            r"cannot take 11 rows from the 10 valid rows of 'ring'; pass --n-eval \(n_eval\) <= 10",
        ),
    ]:
        with pytest.raises(DataError, match=message):
            ds.subset(**kwargs)
    with pytest.raises(DataError, match="unknown split 'validation'"):
        ds.split("validation")


def test_malformed_dataset_fields():
    x = torch.zeros(3, 4)
    with pytest.raises(DataError, match=r"image_shape must be None or \(H, W\) of positive"):
        Dataset("toy", x, x, x, binary=False, image_shape=4)
    with pytest.raises(DataError, match="binary must be True or False"):
        Dataset("toy", x, x, x, binary="yes")
    truth = load_dataset("linear-gaussian", n_train=5, x_dim=3).truth
    with pytest.raises(DataError, match="truth has x_dim 3, the data 4"):
        Dataset("toy", x, x, x, binary=False, truth=truth)


def test_torchvision_errors_are_one_line(monkeypatch, tmp_path):
    import torchvision.datasets

    class Broken:
        def __init__(self, root, train=True, download=False):
            if download:
                raise RuntimeError("Error downloading x.gz:\nTried a, got:\nno network\n")
            raise AssertionError()  # what torchvision's reader does on a corrupt raw file

    monkeypatch.setattr(torchvision.datasets, "MNIST", Broken)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "download=False: AssertionError; download=True: Error downloading x.gz: Tried" in message
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)  # a broken install
    with pytest.raises(DataError, match="cannot import torchvision, needed for MNIST"):
        load_dataset("mnist", data_dir=tmp_path)


# --- hostile sizes, values and files ----------------------------------------------------------


@pytest.fixture
def no_allocation(monkeypatch):
    """Make every way the synthetic loaders allocate fail loudly: a refusal must come first."""

    def allocated(*args, **kwargs):
        raise AssertionError(f"allocated {args}: the refusal must come before any tensor")

    for name in ("randn", "randint", "arange", "full", "zeros", "empty"):
        monkeypatch.setattr(torch, name, allocated)


def _free_memory(monkeypatch, n_bytes):
    from pyrovae import runtime

    monkeypatch.setattr(runtime, "available_memory", lambda: n_bytes)


@pytest.mark.parametrize(
    "name, options, free, message",
    [
        (
            "ring",
            dict(n_train=10**9),
            2**30,
            r"^dataset 'ring': n_train \+ n_valid \+ n_test = 1000004000 rows of 2 values need "
            r"about [\d.]+ GiB, 1\.0 GiB is free: lower n_train$",
        ),
        (
            "gmm2d",
            dict(n_valid=10**9),
            2**30,
            r"^dataset 'gmm2d': n_train \+ n_valid \+ n_test = 1000012000 rows of 2 values need "
            r"about [\d.]+ GiB and the means of n_components = 8 components about [\d.e-]+ GiB, "
            r"1\.0 GiB is free: lower n_valid$",
        ),
        (
            "gmm2d",
            dict(n_components=10**6),
            2**20,
            r"n_components = 1000000 components about 0\.03 GiB, 0\.00098 GiB is free: lower "
            r"n_components$",
        ),
        (
            "linear-gaussian",
            dict(x_dim=10_000_000, z_dim=1_000_000),
            16 * 2**30,
            r"^dataset 'linear-gaussian': n_train \+ n_valid \+ n_test = 14000 rows of x_dim = "
            r"10000000 values need about [\d.]+ GiB and the model \(x_dim\*z_dim = 10000000000000 "
            r"weights, z_dim² = 1000000000000 prior covariance\) about 44703\.6 GiB, 16\.0 GiB is "
            r"free: lower x_dim or z_dim$",
        ),
        (
            "linear-gaussian",
            dict(z_dim=100_000, n_train=1, n_valid=1, n_test=1),
            16 * 2**30,
            r"prior covariance\) about 74\.5 GiB, 16\.0 GiB is free: lower z_dim or x_dim$",
        ),
        (
            "linear-gaussian",
            dict(x_dim=100_000, n_train=10**6),
            16 * 2**30,
            r"x_dim = 100000 values need about 1491\.6 GiB and the model .*: lower n_train$",
        ),
    ],
    ids=["ring-rows", "gmm2d-rows", "gmm2d-components", "lg-weights", "lg-prior", "lg-rows"],
)
def test_synthetic_set_larger_than_free_memory_is_refused_before_allocating(
    monkeypatch, no_allocation, name, options, free, message
):
    _free_memory(monkeypatch, free)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(name, **options)
    assert "\n" not in str(info.value)


def test_synthetic_set_that_fits_loads_and_unknown_memory_skips_the_check(monkeypatch):
    # The estimate counts the kept rows plus the temporaries of the largest split: 14000 ring
    # rows are 112 KB kept + 10000 x 24 bytes drawing; 400 KB is enough, 300 KB is not.
    _free_memory(monkeypatch, 400_000)
    assert load_dataset("ring").train.shape == (10000, 2)
    _free_memory(monkeypatch, 300_000)
    with pytest.raises(DataError, match="lower n_train"):
        load_dataset("ring")
    _free_memory(monkeypatch, None)  # not Linux: nothing to check against
    assert load_dataset("ring", n_train=10).train.shape == (10, 2)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("ring", dict(n_train=10**12), r"option n_train must be an integer in \[1, 10000000000\]"),
        ("ring", dict(n_test=10**30), r"option n_test must be an integer in \[1, 10000000000\]"),
        ("ring", dict(seed=2**64), r"option seed must be an integer in \[0, 2\*\*64 - 1\]"),
        (
            "gmm2d",
            dict(n_components=100_000_000_000),
            r"option n_components must be an integer in \[1, 1000000\], got 100000000000$",
        ),
        (
            "linear-gaussian",
            dict(x_dim=10**8),
            r"option x_dim must be an integer in \[1, 10000000\]",
        ),
        (
            "linear-gaussian",
            dict(z_dim=2**63),
            r"option z_dim must be an integer in \[1, 1000000\]",
        ),
        (
            "ring",
            dict(n_valid=10**400),
            r"option n_valid must be .*, got 10000000+\.\.\. \(401 chars\)$",
        ),
    ],
    ids=["n-train", "n-test-int64-overflow", "seed", "n-components", "x-dim", "z-dim", "huge"],
)
def test_integer_options_have_upper_bounds(monkeypatch, no_allocation, name, options, message):
    _free_memory(monkeypatch, None)  # the bound holds even where free memory is unknown
    with pytest.raises(DataError, match=message):
        load_dataset(name, **options)


def test_failed_allocation_is_a_data_error(monkeypatch):
    _free_memory(monkeypatch, None)

    def cannot_allocate(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 80000000000 bytes.\nError code 12"
        )

    monkeypatch.setattr(torch, "randn", cannot_allocate)
    with pytest.raises(
        DataError, match=r"^dataset 'ring': out of memory while drawing the samples"
    ):
        load_dataset("ring")
    with pytest.raises(DataError, match="lower n_train, n_valid, n_test or the dimensions$"):
        load_dataset("linear-gaussian")
    monkeypatch.setattr(torch, "randn", _raise(RuntimeError("some other bug")))
    with pytest.raises(RuntimeError, match="some other bug"):  # not hidden as a data error
        load_dataset("gmm2d")


@pytest.mark.parametrize(
    "name, option, value",
    [
        ("gmm2d", "std", 1e300),
        ("gmm2d", "radius", 1e7),
        ("gmm2d", "radius", 10**400),  # float() of it would overflow
        ("gmm2d", "std", -1.0),
        ("linear-gaussian", "noise_std", 1e300),
        ("linear-gaussian", "noise_std", 1e-300),  # noise_std² is 0: a singular model
        ("linear-gaussian", "noise_std", True),
    ],
    ids=[
        "std-1e300",
        "radius-1e7",
        "radius-huge-int",
        "std-negative",
        "noise-1e300",
        "noise-1e-300",
        "noise-bool",
    ],
)
def test_scale_options_are_bounded(name, option, value):
    with pytest.raises(DataError) as info:
        load_dataset(name, **{option: value})
    message = str(info.value)
    assert message.startswith(f"option {option} must be a number in [1e-06, 1e+06] (so that ")
    assert "nan_to_num" not in message


def test_scale_options_at_their_bounds_give_finite_data():
    wide = load_dataset("gmm2d", n_train=100, radius=1e6, std=1e6)
    assert torch.isfinite(wide.train).all() and wide.train.abs().max() > 1e5
    exact = load_dataset("linear-gaussian", n_train=100, noise_std=1e-6)
    assert (exact.truth.noise_var > 0).all()
    assert torch.isfinite(load_dataset("linear-gaussian", n_train=100, noise_std=1e6).train).all()


def test_download_option_says_what_to_write(tmp_path):
    _write_splits(tmp_path / "data")
    with pytest.raises(DataError) as info:
        load_dataset("binarized-mnist", data_dir=tmp_path / "data", download="False")
    message = str(info.value)
    assert message.startswith("option download must be true or false, got 'False'; write ")
    assert "download=true or download=false" in message


@pytest.fixture
def never_opened(monkeypatch):
    """Paths added to the returned set make ``Path.open`` (what ``read_bytes`` uses) fail, so
    that a FIFO, /dev/zero or a huge file reached by the reader fails the test instead of
    blocking it or filling the memory."""
    guarded = set()
    path_open = Path.open

    def guarded_open(self, *args, **kwargs):
        if self in guarded:
            raise AssertionError(f"{self} was opened: it must be refused before")
        return path_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    return guarded


def _replace_with(path: Path, make) -> Path:
    path.unlink()
    make(path)
    return path


def _bind_socket(path: Path) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # the socket file stays


@pytest.mark.parametrize(
    "make, message",
    [
        (os.mkfifo, r"is not a regular file \(a FIFO\); replace it with the canonical file"),
        (
            lambda p: p.symlink_to("/dev/zero"),
            r"is not a regular file \(a character device, through the symbolic link to /dev/zero\)",
        ),
        (
            lambda p: p.symlink_to("/dev/urandom"),
            r"is not a regular file \(a character device, through the symbolic link to /dev/",
        ),
        (_bind_socket, r"is not a regular file \(a socket\)"),
        (
            lambda p: p.symlink_to(p.parent / "gone.amat"),
            r"is a symbolic link to .*gone\.amat, which does not exist; fix or remove the link",
        ),
        (
            lambda p: (p.symlink_to(p.parent / "loop"), (p.parent / "loop").symlink_to(p)),
            r"is a symbolic link that loops \(to .*loop\); fix or remove the link",
        ),
        (
            lambda p: p.open("wb").truncate(2**30 + 1),  # sparse: takes no disk and no memory
            r"holds 1073741825 bytes, more than the 1\.0 GiB that an \.amat file can sanely hold",
        ),
    ],
    ids=["fifo", "dev-zero", "dev-urandom", "socket", "dangling-link", "link-loop", "over-1-GiB"],
)
def test_amat_that_is_not_a_sane_regular_file_is_refused_before_reading(
    tmp_path, monkeypatch, never_opened, make, message
):
    _write_splits(tmp_path / "d")
    path = _replace_with(tmp_path / "d" / "binarized_mnist_train.amat", make)
    never_opened.add(path)
    monkeypatch.setattr(binarized_mnist, "_download", _raise(AssertionError("download tried")))
    with pytest.raises(DataError, match=message) as info:
        load_dataset("binarized-mnist", data_dir=tmp_path / "d", splits=("train",))
    assert str(info.value).startswith(f"{path} ")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=message):
        read_amat(path, cache=False)


def test_amat_reader_stops_at_its_cap(tmp_path):
    path = tmp_path / "grows.amat"
    path.write_bytes(b"0 " * 50)
    info = path.stat()
    path.write_bytes(b"0 " * 100)  # grew after its size was checked
    with pytest.raises(DataError, match=r"grows\.amat holds more than 100 bytes, more than any"):
        binarized_mnist._read_capped(path, info, 100)
    assert binarized_mnist._read_capped(path, info, 200) == b"0 " * 100


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="no /proc")
def test_amat_reader_caps_a_file_that_reports_no_size():
    maps = Path("/proc/self/maps")  # a regular file of size 0 that holds far more than 16 bytes
    info = maps.stat()
    assert info.st_size == 0
    with pytest.raises(DataError, match=r"/proc/self/maps holds more than 16 bytes"):
        binarized_mnist._read_capped(maps, info, 16)


def test_parse_cache_entry_that_is_a_fifo_is_never_loaded(tmp_path, monkeypatch):
    arrays = _write_splits(tmp_path / "d")
    path = tmp_path / "d" / "binarized_mnist_test.amat"
    fifo = binarized_mnist._cache_file(path, path.stat())
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    loaded = []

    def recording_load(f, *args, **kwargs):
        loaded.append(Path(f))  # never opens it: torch.load of a FIFO would block forever
        return None

    monkeypatch.setattr(torch, "load", recording_load)
    with pytest.warns(UserWarning, match="has 3 rows"):
        ds = load_dataset("binarized-mnist", data_dir=tmp_path / "d", splits=("test",))
    assert fifo not in loaded
    assert torch.equal(ds.test, torch.as_tensor(arrays["test"], dtype=torch.float32))


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("raw/train-images-idx3-ubyte", os.mkfifo, r"is not a regular file \(a FIFO\); delete it"),
        (
            "raw/t10k-labels-idx1-ubyte.gz",
            lambda p: p.symlink_to("/dev/zero"),
            r"is not a regular file \(a character device, through the symbolic link to /dev/zero",
        ),
        (
            "raw/train-labels-idx1-ubyte",
            lambda p: p.symlink_to(p.parent / "nowhere"),
            r"is a symbolic link to .*nowhere, which does not exist",
        ),
        ("processed/training.pt", os.mkfifo, r"is not a regular file \(a FIFO\)"),
        (
            "raw/t10k-images-idx3-ubyte",
            lambda p: p.open("wb").truncate(2**30 + 1),
            r"holds 1073741825 bytes, more than the 1\.0 GiB that a MNIST data file can sanely",
        ),
    ],
    ids=["fifo", "dev-zero", "dangling-link", "legacy-fifo", "over-1-GiB"],
)
def test_torchvision_file_that_is_not_a_sane_regular_file_is_refused(
    fake_torchvision, tmp_path, name, make, message
):
    path = tmp_path / "MNIST" / name
    path.parent.mkdir(parents=True)
    make(path)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(info.value).startswith(f"{path} ")
    assert fake_torchvision.calls == []  # refused before torchvision looked at anything


def test_data_dir_that_is_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataError, match=r"pipe is a FIFO, not a directory; check --data-dir"):
        load_dataset("binarized-mnist", data_dir=tmp_path / "pipe")


def test_subset_seed_is_bounded_to_torch_seeds():
    ds = load_dataset("ring", n_train=20, n_valid=10, n_test=10)
    assert len(ds.subset(n_train=5, seed=2**64 - 1).train) == 5
    assert len(ds.subset(n_train=5, seed=-(2**63)).train) == 5
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(
            DataError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64 - 1\]"
        ):
            ds.subset(n_train=5, seed=seed)


@pytest.mark.parametrize(
    "raw, fault",
    [
        (b"\x00\x00\x08\x01" + bytes(12), "magic number 0x0803"),  # a labels file's header
        ((0x0803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (10, 28, 28))
         + bytes(100), "truncated or corrupt"),
    ],
)  # fmt: skip
def test_a_corrupt_raw_mnist_file_is_named_with_its_fault(tmp_path, raw, fault):
    # torchvision's reader only asserts: the message named neither the file nor the fault.
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte").write_bytes(raw)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and fault in message, message
    assert "\n" not in message


def test_keeping_labels_keeps_as_many_of_each_class(fake_torchvision, tmp_path):
    """``labelled=N`` keeps N training labels, N / 10 of each class, the same ones each time,
    the others -1; validation and test labels stay whole; a count that cannot be shared out
    evenly is refused in one line."""
    full = load_dataset("mnist", data_dir=tmp_path)
    data = load_dataset("mnist", data_dir=tmp_path, labelled=20)
    kept = data.labels["train"]
    assert (kept >= 0).sum() == 20
    assert torch.bincount(kept[kept >= 0], minlength=10).tolist() == [2] * 10
    assert (kept[kept >= 0] == full.labels["train"][kept >= 0]).all()
    again = load_dataset("mnist", data_dir=tmp_path, labelled=20)
    assert torch.equal(again.labels["train"], kept)
    assert torch.equal(data.labels["test"], full.labels["test"])
    with pytest.raises(DataError, match="labelled=25; give a positive multiple of its 10"):
        load_dataset("mnist", data_dir=tmp_path, labelled=25)
