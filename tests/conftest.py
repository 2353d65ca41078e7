"""Fixtures shared by the test modules (helpers are in _testing.py).

- ``seed``: a seed per test, stable across runs (crc32 of the test's id); set
  RNNFAST_TEST_SEED to another integer to draw other data in a whole run;
- ``rng``: a numpy Generator from ``seed``;
- ``torch_one_thread``: PyTorch (only the reference here) on one thread for a module.
"""

import os

import numpy as np
import pytest

from _testing import seed_of

os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture
def seed(request):
    """A seed for this test: stable across runs and processes."""
    return seed_of(request.node.nodeid, int(os.environ.get("RNNFAST_TEST_SEED", "0")))


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one thread for the module (the machine is shared; torch is only the
    reference here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
