"""Shared test helpers: tolerances (one table), random canonical weights."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("KERAS_BACKEND", "torch")

from rnnfast import cells  # noqa: E402
from rnnfast.layers import CellWeights  # noqa: E402

#: The contract's tolerances per compute dtype (docs/API.md, "Numerics").
TOL = {
    np.dtype(np.float32): dict(atol=1e-5, rtol=1e-4),
    np.dtype(np.float64): dict(atol=1e-9, rtol=1e-7),
}


def assert_close(got, want, dtype, what=""):
    """Compare to the contract's tolerance for ``dtype``."""
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               err_msg=what, **tol)


def random_weights(rng, cell, I, H, P=0, bias=True, scale=1.0, readonly=False):
    """One direction of canonical weights, uniform in ±scale/sqrt(H) (lively, not saturated)."""
    G = cells.get(cell).num_gates
    Ho = P or H
    s = scale / np.sqrt(H)

    def u(*shape):
        a = rng.uniform(-s, s, shape)
        if readonly:
            a.flags.writeable = False
        return a

    return CellWeights(u(I, G * H), u(Ho, G * H), u(G * H) if bias else None,
                       u(G * H) if bias else None, u(H, P) if P else None)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
