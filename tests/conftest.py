import os
import sys
from pathlib import Path

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
