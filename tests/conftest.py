import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The suite's numbers are CPU numbers (the bit-exact regressions among them): every test runs on
# the CPU unless it names a device. tests/test_devices.py runs over the devices present.
os.environ["PYROVAE_DEVICE"] = "cpu"


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def mnist_dir(tmp_path, monkeypatch):
    """A tiny binarized-MNIST-shaped data set in .amat files (digits are random blobs)."""
    monkeypatch.setenv("PYROVAE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "bmnist"
    root.mkdir()
    protos = rng.random((3, 784)) < 0.2
    for split, n in (("train", 200), ("valid", 60), ("test", 60)):
        flips = rng.random((n, 784)) < 0.05
        rows = protos[rng.integers(0, 3, n)] ^ flips
        lines = (" ".join("1" if v else "0" for v in row) for row in rows)
        (root / f"binarized_mnist_{split}.amat").write_text("\n".join(lines) + "\n")
    warnings.filterwarnings("ignore", message=".*not comparable to published numbers")
    return root
