"""The products outside the recurrent layers (rnnfast._products): the core's packed
product in rnnfast's own threads, never NumPy's BLAS; the same bits for every thread
count; against a float64 reference."""

import pickle

import numpy as np
import pytest

from rnnfast import _kernels, _plan, _products, ops
from rnnfast.layers import Dense

SHAPES = [
    ((5, 7), (7, 3)),
    ((2, 5, 7), (7, 3)),
    ((2, 3, 5, 7), (2, 3, 7, 4)),
    ((2, 3, 5, 7), (3, 7, 4)),
    ((5, 7), (2, 3, 7, 4)),
    ((2, 1, 5, 7), (1, 3, 7, 4)),
    ((130, 64), (64, 70)),
    ((3, 0, 4), (4, 5)),
    ((3, 4), (4, 0)),
]


@pytest.fixture
def split_everything(monkeypatch):
    """Every product splits among the team, however small."""
    monkeypatch.setattr(_plan, "MIN_PRODUCT_FLOPS_PER_THREAD", 1)
    _kernels.team_backoff(reset=True)
    yield
    _kernels.team_backoff(reset=True)


@pytest.fixture
def no_numpy_matmul(monkeypatch):
    """NumPy's matmul (its own multithreaded BLAS) is not called (``@`` cannot be
    patched: the source below uses neither)."""

    def refuse(*a, **k):
        raise AssertionError("NumPy's matmul called")

    monkeypatch.setattr(np, "matmul", refuse)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_matmul_against_float64_and_bitwise_for_any_thread_count(rng, split_everything, dt, sa, sb):
    a = rng.standard_normal(sa).astype(dt)
    b = rng.standard_normal(sb).astype(dt)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    outs = [_products.matmul(a, b, num_threads=n) for n in (1, 2, 3, 4)]
    assert outs[0].shape == ref.shape and outs[0].dtype == dt
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-5)
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_matmul_reads_transposed_heads_in_place(rng, split_everything):
    """Attention's scores: q (B, N, Tq, d) and k^T (B, N, d, Tv), both strided views."""
    q = rng.standard_normal((2, 6, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((2, 9, 3, 8)).astype(np.float32).transpose(0, 2, 3, 1)
    bias = rng.standard_normal(9).astype(np.float32)
    ref = q.astype(np.float64) @ k.astype(np.float64) + bias
    got = [_products.matmul(q, k, bias, num_threads=n) for n in (1, 2, 3)]
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(g, got[0]) for g in got)


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_dense_against_float64_and_bitwise_for_any_thread_count(rng, split_everything, act):
    kernel = rng.standard_normal((40, 30))
    bias = rng.standard_normal(30)
    d = Dense(kernel, bias, activation=act)
    x = rng.standard_normal((4, 33, 40)).astype(np.float32)
    z = x.astype(np.float64) @ kernel + bias
    ref = {
        "linear": z,
        "relu": np.maximum(z, 0),
        "tanh": np.tanh(z),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "softmax": np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True),
    }[act]
    outs = [d.forward(x, num_threads=n) for n in (1, 2, 3)]
    np.testing.assert_allclose(outs[0], ref, rtol=2e-4, atol=2e-5)
    assert all(np.array_equal(o, outs[0]) for o in outs)


def test_dense_conv_attention_never_call_numpys_blas(rng, no_numpy_matmul):
    """The products of Dense, Conv1D and MultiHeadAttention run on the core's product:
    NumPy's matmul (its own threads: on a busy machine up to 40 ms to wake for a 0.03
    ms product) is never called."""
    Dense(rng.standard_normal((8, 5))).forward(rng.standard_normal((3, 8)).astype(np.float32), num_threads=2)
    x = rng.standard_normal((2, 12, 6)).astype(np.float32)
    ops.conv1d(x, rng.standard_normal((3, 6, 4)).astype(np.float32), np.ones(4, np.float32), num_threads=2)
    ops.conv1d(x, rng.standard_normal((3, 3, 4)).astype(np.float32), None, groups=2, num_threads=2)
    w = [
        rng.standard_normal(s).astype(np.float32)
        for s in [(6, 2, 4), (2, 4), (6, 2, 4), (2, 4), (6, 2, 4), (2, 4), (2, 4, 6), (6,)]
    ]
    ops.multi_head_attention(x, x, x, *w, num_threads=2)


def test_dense_pickles_without_its_packed_kernel(rng):
    d = Dense(rng.standard_normal((8, 5)), rng.standard_normal(5))
    x = rng.standard_normal((3, 8)).astype(np.float32)
    y = d.forward(x)
    assert d._packed is not None
    e = pickle.loads(pickle.dumps(d))
    assert getattr(e, "_packed", None) is None
    assert np.array_equal(e.forward(x), y)
