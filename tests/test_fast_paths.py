"""The per-call fast paths of a whole model (issue 14/15 speed): a recurrent layer's
common call through its bound compiled entry (``RNNLayer._forward_bound``) is bitwise
the general path, for every cell and any thread count; ``KerasModel.predict`` remembers
only the last few input shapes it checked; a Dense softmax (the row softmax the
product applies, ``_products.ROW_SOFTMAX``) gives NumPy's NaN rows and a row's values
whatever the rows around it."""

import numpy as np
import pytest

import rnnfast
from rnnfast import _kernels, _products
from rnnfast.layers import Dense, RNNLayer

from _testing import random_weights


@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("gru", {}), ("gru", {"reset_after": False}), ("simple", {})])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 7), (5, 3), (3, 40)])
def test_bound_entry_is_bitwise_the_general_path(rng, cell, kw, T, B):
    I, H = 5, 130  # two unit blocks: the blocked strategy, split among threads
    layer = RNNLayer(cell, [random_weights(rng, cell, I, H)], **kw)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    c0 = rng.standard_normal((1, B, H)).astype(np.float32) if cell == "lstm" else None
    h0_before = h0.copy()
    for n in (1, 2, 3):
        fast = layer.forward(x, h0, c0, num_threads=n)
        assert layer._entry is not None
        # the general path: a Fortran-ordered input is converted there (the same values)
        slow = layer.forward(np.asfortranarray(x), h0, c0, num_threads=n)
        ones = layer.forward(x, h0, c0, mask=np.ones((T, B), bool), num_threads=n)
        for got in (slow, ones):
            for a, b in zip(fast, got):
                if a is not None:
                    np.testing.assert_array_equal(a, b)
        if n == 1:
            first = fast
        for a, b in zip(fast, first):
            if a is not None:
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h0, h0_before)  # the caller's state is not written
    out, h, _ = layer.forward(x, h0, c0, return_sequences=False)
    assert out is None
    np.testing.assert_array_equal(h, first[1])


@pytest.mark.parametrize("prec", ["bf16", "int8"])
@pytest.mark.parametrize("cell,kw", [("lstm", {}), ("gru", {}), ("gru", {"reset_after": False}), ("simple", {})])
def test_bound_entry_of_reduced_precision_is_bitwise_the_general_path(rng, prec, cell, kw):
    I, H = 20, 130  # int8: a K-grouped input projection (K <= 64), a per-column recurrent one
    layer = RNNLayer(cell, [random_weights(rng, cell, I, H)], **kw).with_precision(prec)
    for T, B in ((1, 1), (7, 3)):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        h0 = rng.standard_normal((1, B, H)).astype(np.float32)
        for n in (1, 2):
            fast = layer.forward(x, h0, num_threads=n)
            assert layer._entry is not None
            slow = layer.forward(np.asfortranarray(x), h0, num_threads=n)
            for a, b in zip(fast, slow):
                if a is not None:
                    np.testing.assert_array_equal(a, b)


def test_bound_entry_made_again_for_a_new_precision_and_direction(rng):
    layer = RNNLayer("gru", [random_weights(rng, "gru", 4, 8), random_weights(rng, "gru", 4, 8)])
    x = rng.standard_normal((6, 2, 4)).astype(np.float32)
    one = layer.direction(1, go_backwards=True)
    fwd = layer.direction(0)
    y0 = fwd.forward(x)
    assert fwd._entry is not None and "_entry" not in one.__dict__
    yb = one.forward(x)  # backwards: the general path
    assert one._entry is None
    both = layer.forward(x)
    np.testing.assert_array_equal(y0[0], both[0][..., :8])
    np.testing.assert_array_equal(yb[0], both[0][..., 8:])
    for prec in ("bf16", "int8"):  # reduced precision: bound too, its own weights
        red = fwd.with_precision(prec)
        assert "_entry" not in red.__dict__
        fast = red.forward(x)
        assert red._entry is not None
        slow = red.forward(np.asfortranarray(x))  # the general path: the same bits
        for a, b in zip(fast, slow):
            if a is not None:
                np.testing.assert_array_equal(a, b)
        assert not np.array_equal(fast[0], y0[0])


def test_predict_remembers_a_few_shapes(rng):
    keras = pytest.importorskip("keras")
    inp = keras.Input((None, 3))
    km = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GRU(4, return_sequences=True)(inp)))
    m = rnnfast.from_keras(km)
    for T in range(1, 30):
        x = rng.standard_normal((2, T, 3)).astype(np.float32)
        np.testing.assert_array_equal(m.predict(x), m._predict_from_zero(x))
        assert len(m._inputs[0]["taken_shapes"]) <= 8
    assert (29, 3) in m._inputs[0]["taken_shapes"] and (1, 3) not in m._inputs[0]["taken_shapes"]


def test_fused_softmax_rows(rng):
    d = Dense(rng.standard_normal((6, 9)), rng.standard_normal(9), activation="softmax")
    x = rng.standard_normal((50, 6)).astype(np.float32)
    x[3, 2] = np.nan
    x[7, 0] = np.inf
    y = d.forward(x)
    with np.errstate(invalid="ignore"):
        z = x.astype(np.float64) @ d.kernel.astype(np.float64) + d.bias
        ref = np.exp(z - z.max(-1, keepdims=True))
        ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7)  # NaN where NumPy gives NaN
    assert np.isnan(y[3]).all() and np.isnan(y[7]).all() and not np.isnan(np.delete(y, [3, 7], 0)).any()
    for i in (0, 3, 11):  # a row's values whatever the rows around it
        np.testing.assert_array_equal(d.forward(x[i : i + 1])[0], y[i])
    with pytest.raises(ValueError, match="unknown activation"):  # (the softmax is dense's, not the kernel's)
        _kernels.packed_rows(x, d.packed_kernel(), d.bias, np.empty((50, 9), np.float32), _products.ROW_SOFTMAX)


@pytest.mark.parametrize("stride,pad,k", [(1, (1, 1), 3), (2, (0, 0), 4), (3, (2, 0), 1)])
def test_conv_reads_windows_in_place_bitwise_the_im2col_product(rng, stride, pad, k):
    """Conv1D (dilation 1) multiplies overlapping strided windows of its input in place:
    bitwise the product of the im2col matrix, for any thread count, with the activation
    applied by the product as the element-wise kernel applies it."""
    from rnnfast import ops
    from rnnfast.layers import ACTIVATIONS, apply_activation

    x = rng.standard_normal((5, 23, 6)).astype(np.float32)
    kernel = rng.standard_normal((k, 6, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    xp = np.pad(x, ((0, 0), pad, (0, 0)))
    n = (xp.shape[1] - k) // stride + 1
    cols = np.stack([xp[:, t * stride : t * stride + k].reshape(5, -1) for t in range(n)], 1)
    want = _products.matmul(cols.reshape(5 * n, -1), kernel.reshape(-1, 4), bias).reshape(5, n, 4)
    for nt in (1, 2, 3):
        np.testing.assert_array_equal(ops.conv1d(x, kernel, bias, stride=stride, padding=pad, num_threads=nt), want)
        got = ops.conv1d(x, kernel, bias, stride=stride, padding=pad, num_threads=nt, act=ACTIVATIONS["relu"])
        np.testing.assert_array_equal(got, apply_activation("relu", want))
