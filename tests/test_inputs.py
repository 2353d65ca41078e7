"""Inputs at the edges: NaN and Inf (compared with live PyTorch and Keras), wrong rank,
size and dtype (a ValueError stating expected and got), arrays that are not plain
C-contiguous writable memory (views, read-only, memory-mapped), and empty batches and
sequences.

Empty inputs, what the frameworks do and what rnnfast does:

============================  ==============================  ===============================
input                         framework                       rnnfast
============================  ==============================  ===============================
TorchRNN, batch 0             out (T, 0, H), h_n (L, 0, H)    the same
TorchRNN, T = 0               RuntimeError "Expected          out (0, B, H); h_n = h_0 (zeros
                              sequence length to be larger    if not given): the state after
                              than 0"                         no step, as for lengths of 0
KerasModel, batch 0           model(x): empty output;         empty output, as model(x)
                              predict(x): UnboundLocalError
KerasModel, T = 0             IndexError inside the layer     ValueError "expected input ...
                                                              with at least one time step"
============================  ==============================  ===============================
"""

import numpy as np
import pytest
import torch

import rnnfast

from _testing import TOL, assert_same_nan, make_module, row_magnitude, torch_run

pytestmark = pytest.mark.usefixtures("torch_one_thread")
F32 = TOL[np.dtype(np.float32)]
MODES = ["GRU", "LSTM", "RNN_TANH", "RNN_RELU"]


def special_inputs(I=3):
    """(name, x of shape (T=6, B=4, I)): row 0 clean, others hit by NaN / Inf / huge values
    at one step, so that a value leaking across rows or steps shows."""
    rng = np.random.default_rng(5)
    base = rng.uniform(-1, 1, (6, 4, I)).astype(np.float32)
    cases = []
    for name, value in [("nan", np.nan), ("+inf", np.inf), ("-inf", -np.inf), ("huge", 3e38)]:
        x = base.copy()
        x[2, 1, 0] = value  # row 1, mid-sequence, one feature
        x[0, 2, :] = value  # row 2, first step, all features
        x[5, 3, I - 1] = -value if name != "nan" else value  # row 3, last step
        cases.append((name, x))
    return cases


# -- NaN and Inf ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nan_inf_like_torch(mode, bidirectional):
    m = make_module(mode, 3, 5, num_layers=2, bidirectional=bidirectional, seed=3)
    rnn = rnnfast.from_torch(m)
    for name, x in special_inputs():
        want_out, want_h = torch_run(m, x)
        got_out, got_h = rnn(x)
        # values from a 3e38 input are judged by the rounding such magnitudes make
        mag = row_magnitude(x, want_out, time_axis=0, causal=not bidirectional)
        assert_same_nan(got_out, want_out, np.float32, "%s %s out" % (mode, name), magnitude=mag)
        for g, w in zip(
            got_h if isinstance(got_h, tuple) else [got_h], want_h if isinstance(want_h, tuple) else [want_h]
        ):
            assert_same_nan(g, w, np.float32, "%s %s state" % (mode, name), magnitude=mag.max(axis=0, keepdims=True))
        assert not np.isnan(got_out[:, 0]).any()  # the clean row stays clean


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_nan_in_initial_state_like_torch(mode):
    m = make_module(mode, 3, 4, seed=4)
    rnn = rnnfast.from_torch(m)
    x = np.random.default_rng(0).standard_normal((5, 3, 3)).astype(np.float32)
    h0 = np.zeros((1, 3, 4), np.float32)
    h0[0, 1, 2] = np.nan
    hx = (h0, np.zeros_like(h0)) if mode == "LSTM" else h0
    thx = tuple(torch.as_tensor(a) for a in hx) if mode == "LSTM" else torch.as_tensor(hx)
    want_out, _ = torch_run(m, x, thx)
    got_out, _ = rnn(x, hx)
    assert_same_nan(got_out, want_out)
    assert np.isnan(got_out[:, 1]).all() and not np.isnan(got_out[:, [0, 2]]).any()


@pytest.fixture(scope="module")
def keras_models():
    import keras

    keras.utils.set_random_seed(1)
    L = keras.layers
    out = []
    for layer in (
        L.GRU(4, return_sequences=True),
        L.GRU(4, reset_after=False),
        L.LSTM(4, return_sequences=True),
        L.SimpleRNN(4, return_sequences=True),
        L.Bidirectional(L.LSTM(3, return_sequences=True)),
    ):
        m = keras.Sequential([keras.Input((None, 3)), layer])
        out.append((m, rnnfast.from_keras(m)))
    return out


def keras_call(m, x):
    import keras

    return keras.ops.convert_to_numpy(m(x))


def test_nan_inf_like_keras(keras_models):
    for m, r in keras_models:
        for name, x in special_inputs():
            xb = np.ascontiguousarray(x.swapaxes(0, 1))  # Keras is batch-major
            want = keras_call(m, xb)
            if want.ndim == 3:  # the sequence
                mag = row_magnitude(xb, want, time_axis=1, causal=False)
            else:  # the last output only
                mag = row_magnitude(xb, time_axis=1, causal=False).max(axis=1)
            assert_same_nan(r.predict(xb), want, np.float32, "%s %s" % (m.layers[-1].name, name), magnitude=mag)


# -- wrong rank, size, dtype ---------------------------------------------------------------


@pytest.fixture(scope="module")
def models(keras_models):
    return {
        "torch": rnnfast.from_torch(make_module("LSTM", 3, 4, num_layers=2)),
        "torch_bf": rnnfast.from_torch(make_module("GRU", 3, 4, batch_first=True)),
        "keras": keras_models[0][1],
    }


@pytest.mark.parametrize(
    "which,x,expected,got",
    [
        ("torch", np.zeros(3), r"\(time, batch, 3\) or unbatched \(time, 3\)", r"got shape \(3,\)"),
        ("torch", np.zeros((2, 2, 2, 3)), r"\(time, batch, 3\)", r"got shape \(2, 2, 2, 3\)"),
        ("torch_bf", np.zeros((2, 2, 2, 3)), r"\(batch, time, 3\)", r"got shape \(2, 2, 2, 3\)"),
        ("torch", np.zeros((5, 2, 4)), r"expected 3 input features", r"input of shape \(5, 2, 4\)"),
        ("torch", np.zeros((5, 4)), r"expected 3 input features", r"input of shape \(5, 4\)"),
        ("torch", np.array([[["a", "b", "c"]]]), r"numeric \(float, integer or bool\)", r"got dtype <U1"),
        ("torch", np.zeros((2, 2, 3), complex), r"real \(float, integer or bool\)", r"got dtype complex128"),
        ("torch", np.array([[[None, 1, 2]]]), r"numeric", r"got dtype object"),
        ("keras", np.zeros((2, 5)), r"expected input of shape \(batch, any, 3\)", r"got shape \(2, 5\)"),
        ("keras", np.zeros((2, 5, 4)), r"expected input of shape \(batch, any, 3\)", r"got shape \(2, 5, 4\)"),
        ("keras", np.zeros((2, 5, 3, 1)), r"expected input of shape \(batch, any, 3\)", r"got shape \(2, 5, 3, 1\)"),
        ("keras", np.full((2, 5, 3), "x"), r"numeric array of shape \(batch, any, 3\)", r"got dtype <U1"),
        (
            "keras",
            np.zeros((2, 5, 3), np.complex64),
            r"numeric array of shape \(batch, any, 3\)",
            r"got dtype complex64",
        ),
    ],
)
def test_wrong_input_states_expected_and_got(models, which, x, expected, got):
    with pytest.raises(ValueError, match=expected) as e:
        models[which](x)
    assert e.match(got)


def test_wrong_states_and_layer_inputs(models):
    rnn = models["torch"]
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\), got \(2, 3, 4\)"):
        rnn(x, (np.zeros((2, 3, 4)), np.zeros((2, 2, 4))))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 4\), got \(2, 2\)"):
        rnn(x, (np.zeros((2, 2, 4)), np.zeros((2, 2))))
    layer = rnn.layers[0]
    with pytest.raises(ValueError, match=r"expected input of shape \(time, batch, 3\), got shape \(5, 3\)"):
        layer.forward(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"expected input features 3, got 7 \(input shape \(5, 2, 7\)\)"):
        layer.forward(np.zeros((5, 2, 7)))


def test_other_dtypes_are_cast(models):
    rnn = models["torch"]
    x = np.random.default_rng(0).uniform(-2, 2, (4, 2, 3))
    want = rnn(x.astype(np.float32))[0]
    for dt in (np.float16, np.float64, np.int32, np.int8, bool):
        xs = x.astype(dt)
        np.testing.assert_allclose(rnn(xs)[0], rnn(xs.astype(np.float32))[0], rtol=0, atol=0)
        assert rnn(xs)[0].dtype == np.float32
    np.testing.assert_array_equal(rnn(x.tolist())[0], want)  # nested lists too


# -- memory layouts ------------------------------------------------------------------------


def _layouts(x, tmp_path):
    """The same values as ``x`` in memory rnnfast does not own or cannot write."""
    ro = x.copy()
    ro.flags.writeable = False
    big = np.zeros((x.shape[0] * 2, x.shape[1] + 3, x.shape[2] * 3), x.dtype)
    big[::2, 1:-2, ::3] = x
    fortran = np.asfortranarray(x)
    reversed_ = np.ascontiguousarray(x[::-1])[::-1]
    mm = np.memmap(tmp_path / "x.dat", dtype=x.dtype, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    np.save(tmp_path / "x.npy", x)
    loaded = np.load(tmp_path / "x.npy", mmap_mode="r")
    mm_ro = np.memmap(tmp_path / "x.dat", dtype=x.dtype, mode="r", shape=x.shape)
    mm_view = np.memmap(tmp_path / "x.dat", dtype=x.dtype, mode="r", shape=x.shape)[:, ::-1][:, ::-1]
    return {
        "read-only": ro,
        "strided view": big[::2, 1:-2, ::3],
        "Fortran order": fortran,
        "negative strides": reversed_,
        "np.memmap": mm,
        "np.memmap read-only": mm_ro,
        "np.load(mmap_mode='r')": loaded,
        "memmap view": mm_view,
        "float64 read-only strided": np.asarray(big[::2, 1:-2, ::3], np.float64),
    }


def test_layouts_torch(models, tmp_path):
    for name in ("torch", "torch_bf"):
        rnn = models[name]
        x = np.random.default_rng(1).standard_normal((7, 3, 3)).astype(np.float32)
        want = rnn(x)
        for what, v in _layouts(x, tmp_path).items():
            before = np.array(v, copy=True)
            got = rnn(v)
            np.testing.assert_array_equal(got[0], want[0], err_msg=what)
            np.testing.assert_array_equal(np.asarray(v), before, err_msg=what)  # input untouched


def test_layouts_keras_and_torch_tensors(models, tmp_path):
    m = models["keras"]
    x = np.random.default_rng(2).standard_normal((3, 7, 3)).astype(np.float32)
    want = m.predict(x)
    for what, v in _layouts(x, tmp_path).items():
        np.testing.assert_array_equal(m.predict(v), want, err_msg=what)
    t = torch.as_tensor(x).transpose(0, 1).contiguous().transpose(0, 1)  # a non-contiguous tensor
    assert not t.is_contiguous()
    np.testing.assert_array_equal(m.predict(t), want)


def test_states_in_read_only_and_mapped_memory(models, tmp_path):
    rnn = models["torch"]
    x = np.random.default_rng(3).standard_normal((4, 2, 3)).astype(np.float32)
    h0 = np.random.default_rng(4).standard_normal((2, 2, 4)).astype(np.float32)
    c0 = np.random.default_rng(5).standard_normal((2, 2, 4)).astype(np.float32)
    want = rnn(x, (h0, c0))
    np.save(tmp_path / "h.npy", h0)
    h_map = np.load(tmp_path / "h.npy", mmap_mode="r")
    c_ro = c0.copy()
    c_ro.flags.writeable = False
    got = rnn(x, (h_map, c_ro[:, ::-1][:, ::-1]))
    for a, b in zip([got[0]] + list(got[1]), [want[0]] + list(want[1])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(h_map), h0)


# -- empty batches and sequences -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_like_torch(mode):
    m = make_module(mode, 3, 4, num_layers=2, bidirectional=True)
    rnn = rnnfast.from_torch(m)
    x = np.zeros((5, 0, 3), np.float32)
    want_out, want_h = torch_run(m, x)
    got_out, got_h = rnn(x)
    assert got_out.shape == want_out.shape
    for g, w in zip(got_h if isinstance(got_h, tuple) else [got_h], want_h if isinstance(want_h, tuple) else [want_h]):
        assert g.shape == w.shape


@pytest.mark.parametrize("mode", MODES)
def test_empty_sequence(mode):
    """PyTorch refuses T = 0; rnnfast returns the state after no step (see the table)."""
    m = make_module(mode, 3, 4, num_layers=2)
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        torch_run(m, np.zeros((0, 2, 3), np.float32))
    rnn = rnnfast.from_torch(m)
    out, h = rnn(np.zeros((0, 2, 3), np.float32))
    assert out.shape == (0, 2, 4)
    h0 = np.random.default_rng(0).standard_normal((2, 2, 4)).astype(np.float32)
    hx = (h0, h0 + 1) if mode == "LSTM" else h0
    out, h = rnn(np.zeros((0, 2, 3), np.float32), hx)
    for g, w in zip(h if mode == "LSTM" else [h], hx if mode == "LSTM" else [hx]):
        np.testing.assert_array_equal(g, w)


def test_keras_empty_batch_and_sequence(keras_models):
    for m, r in keras_models:
        x = np.zeros((0, 5, 3), np.float32)
        assert r.predict(x).shape == keras_call(m, x).shape
        with pytest.raises(IndexError):
            m(np.zeros((2, 0, 3), np.float32))
        with pytest.raises(
            ValueError,
            match=r"expected input of shape \(batch, any, 3\) with at least one time "
            r"step, got shape \(2, 0, 3\)",
        ):
            r.predict(np.zeros((2, 0, 3), np.float32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("B", [1, 3, 70])
def test_nan_inf_like_torch_on_every_kernel_path(mode, B):
    """Wide layers take the unit-blocked paths (small batches split each step across
    threads; large batches run in blocks): NaN and Inf behave the same on each."""
    m = make_module(mode, 3, 130, seed=6)
    rnn = rnnfast.from_torch(m)
    rng = np.random.default_rng(B)
    x = rng.uniform(-1, 1, (4, B, 3)).astype(np.float32)
    x[1, B // 2, 0] = np.nan
    x[2, B - 1, 1] = np.inf
    x[0, 0, 2] = -np.inf
    want_out, _ = torch_run(m, x)
    for threads in (1, 2):
        got_out, _ = rnn(x, num_threads=threads)
        assert_same_nan(got_out, want_out, np.float32, "%s B=%d threads=%d" % (mode, B, threads))
