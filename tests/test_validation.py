"""Arguments checked at the boundary (rnnfast._validation): refused kinds and values
get a ValueError naming the argument, what it must be and what was given, whatever
the entry point; accepted ones compute what their float32 cast computes; every
message prints on a strict UTF-8 stream."""
import io

import numpy as np
import pytest
import torch

import rnnfast
from _testing import make_module, random_weights
from rnnfast import _validation, layers
from rnnfast.layers import Dense, RNNLayer, apply_activation
from rnnfast.model import Sequential


T, B, I, H = 5, 3, 4, 6


@pytest.fixture(scope="module")
def models():
    rng = np.random.default_rng(11)
    lstm = RNNLayer("lstm", [random_weights(rng, "lstm", I, H)])
    seq = Sequential([RNNLayer("gru", [random_weights(rng, "gru", I, H)]),
                      Dense(rng.standard_normal((H, 2)))])
    return {"layer": lstm, "sequential": seq, "dense": Dense(rng.standard_normal((I, 2)), activation="tanh"),
            "torch": rnnfast.from_torch(make_module("LSTM", I, H)),
            "torch_bf": rnnfast.from_torch(make_module("GRU", I, H, batch_first=True))}


@pytest.fixture(scope="module")
def keras_models():
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    floats = keras.Sequential([keras.Input((None, I)), L.GRU(H, return_sequences=True)])
    ids = keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(7, I, mask_zero=True), L.GRU(H)])
    return rnnfast.from_keras(floats), rnnfast.from_keras(ids)


def _entry_points(models, keras_models):
    """name -> call(x) for every public way in, x batch-major (B, T, I) or time-major."""
    kf, _ = keras_models
    return {
        "RNNLayer.forward": lambda x: models["layer"].forward(x)[0],
        "Sequential.predict": lambda x: models["sequential"].predict(x),
        "TorchRNN()": lambda x: models["torch"](x)[0],
        "TorchRNN.predict": lambda x: models["torch"].predict(x),
        "TorchRNN.predict(batch_first)": lambda x: models["torch_bf"].predict(x),
        "KerasModel.predict": lambda x: kf.predict(x),
        "Dense": lambda x: models["dense"].forward(x),
    }


REFUSED = [
    (np.zeros((B, T, I), "m8[s]"), r"numeric \(float, integer or bool\), got dtype timedelta64\[s\]"),
    (np.zeros((B, T, I), "M8[D]"), r"numeric \(float, integer or bool\), got dtype datetime64\[D\]"),
    (np.zeros((B, T, I), np.complex64), r"real \(float, integer or bool\), got dtype complex64"),
    (np.zeros((B, T, I), object), r"numeric .*got dtype object"),
    (np.full((B, T, I), "1.5"), r"numeric .*got dtype <U3"),
    (np.full((B, T, I), b"1"), r"numeric .*got dtype \|S1"),
    (np.zeros((B, T, I), [("a", "f4")]), r"numeric .*structured"),
    ([[[1.0] * I] * T] * (B - 1) + [[[1.0] * I] * (T - 1)], r"cannot read as one"),
    (torch.zeros(B, T, I, dtype=torch.complex64), r"real .*complex64"),
]


@pytest.mark.parametrize("x,match", REFUSED)
def test_inputs_of_other_kinds_refused_everywhere(models, keras_models, x, match):
    for name, call in _entry_points(models, keras_models).items():
        with pytest.raises(ValueError, match=match) as e:
            call(x)
        assert "input" in str(e.value), name


@pytest.mark.parametrize("dt", [bool, np.int8, np.int64, np.uint8, np.uint64, np.float16, np.float64,
                                np.longdouble])
def test_numeric_kinds_are_cast(models, keras_models, dt):
    x = np.random.default_rng(1).uniform(0, 3, (B, T, I)).astype(dt)
    for name, call in _entry_points(models, keras_models).items():
        np.testing.assert_array_equal(call(x), call(x.astype(np.float32)), err_msg=name)


def test_torch_tensors(models):
    x = torch.randn(T, B, I)
    rnn = models["torch"]
    want = rnn(x.numpy())[0]
    np.testing.assert_array_equal(rnn(x.clone().requires_grad_())[0], want)
    np.testing.assert_array_equal(rnn(x.to(torch.bfloat16))[0], rnn(x.to(torch.bfloat16).float().numpy())[0])
    np.testing.assert_array_equal(rnn(x, lengths=torch.tensor([5, 1, 3]))[0],
                                  rnn(x.numpy(), lengths=[5, 1, 3])[0])
    with pytest.raises(ValueError, match="input must be a dense numeric tensor"):
        rnn(x.to_sparse())


# -- lengths -------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths,match", [
    ([2**70, 1, 1], r"lengths must be integers in \[0, 5\], got min 1 max 1180591620717411303424 \(beyond int64\)"),
    ([-2**70, 1, 1], r"beyond int64"),
    (np.array([2**64 - 1, 1, 1], np.uint64), r"got max 18446744073709551615 \(beyond int64\)"),
    (["a", "b", "c"], r"lengths must be integers in \[0, 5\], got dtype <U1"),
    ([None, 1, 2], r"lengths must be integers in \[0, 5\], got the value None \(NoneType\)"),
    ([1.5, 1, 2], r"got a non-integral value, 1\.5 \(float\)"),
    ([np.nan, 1, 2], r"got a non-finite value, nan \(float\)"),
    ([np.inf, 1, 2], r"non-finite"),
    ([1e30, 1, 2], r"must lie in \[0, 5\]|beyond int64"),
    ([1 + 2j, 1, 2], r"lengths must be real"),
    (np.array([1, 1, 1], "m8[s]"), r"got dtype timedelta64\[s\]"),
    ([6, 1, 2], r"lengths must lie in \[0, 5\], got min 1 max 6"),
    ([-1, 1, 2], r"lengths must lie in \[0, 5\], got min -1 max 2"),
    ([1, 2], r"lengths must have shape \(batch,\) = \(3,\), got \(2,\)"),
    ([[1, 2, 3]], r"lengths must have shape"),
    ([[1], [2, 3], 4], r"lengths must be an array of numbers"),
])
def test_bad_lengths(models, lengths, match):
    x = np.zeros((T, B, I), np.float32)
    calls = [lambda: models["layer"].forward(x, lengths=lengths),
             lambda: models["torch"](x, lengths=lengths),
             lambda: models["torch"].predict(x, lengths=lengths),
             lambda: models["torch"].predict(x, lengths=lengths, batch_size=2),
             lambda: models["torch_bf"](np.swapaxes(x, 0, 1), lengths=lengths)]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


def test_lengths_taken(models):
    x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
    rnn = models["torch"]
    want = rnn(x, lengths=np.array([5, 0, 2]))
    for same in ([5, 0, 2], [5.0, 0.0, 2.0], np.array([5, 0, 2], np.uint8), np.array([5, 0, 2], object),
                 torch.tensor([5, 0, 2]), (5, 0, 2)):
        got = rnn(x, lengths=same)
        for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
            np.testing.assert_array_equal(a, b)


# -- masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mask,match", [
    (np.full((T, B), "yes"), r"mask must be boolean \(or numbers 0 and 1\), got dtype <U3"),
    (np.full((T, B), ""), r"got dtype <U1"),
    (np.full((T, B), np.nan), r"mask must be boolean \(or numbers 0 and 1\), got the value nan \(float\)"),
    (np.full((T, B), 2), r"got the value 2 \(int\)"),
    (np.full((T, B), -1.0), r"got the value -1\.0 \(float\)"),
    (np.ones((T, B), complex), r"mask must be real"),
    (np.ones((T, B), object), r"got dtype object"),
    (np.ones((T, B + 1), bool), r"mask must have shape \(time, batch\) = \(5, 3\), got \(5, 4\)"),
])
def test_bad_masks(models, mask, match):
    with pytest.raises(ValueError, match=match):
        models["layer"].forward(np.zeros((T, B, I)), mask=mask)


def test_masks_taken(models):
    layer = models["layer"]
    x = np.random.default_rng(3).standard_normal((T, B, I))
    m = np.random.default_rng(4).random((T, B)) < 0.6
    want = layer.forward(x, mask=m)
    for same in (m.astype(np.int8), m.astype(np.float64), m.astype(np.uint64), torch.tensor(m), m.tolist()):
        got = layer.forward(x, mask=same)
        for a, b in zip(got, want):
            if a is not None:
                np.testing.assert_array_equal(a, b)


# -- states ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,match", [
    ("zeros", r"got dtype <U5"),
    (np.zeros((1, B, H), "m8[s]"), r"got dtype timedelta64\[s\]"),
    (np.zeros((1, B, H), complex), r"must be real"),
    ({"h": 1}, r"got dtype object"),
    (np.zeros((1, B, H + 1)), r"must have shape \(1, 3, 6\), got \(1, 3, 7\)"),
])
def test_bad_states(models, bad, match):
    x = np.zeros((T, B, I))
    with pytest.raises(ValueError, match="h0 .*" + match):
        models["layer"].forward(x, h0=bad)
    with pytest.raises(ValueError, match="c0 .*" + match):
        models["layer"].forward(x, c0=bad)
    ok = np.zeros((1, B, H))
    with pytest.raises(ValueError, match="h_0 .*" + match):
        models["torch"](x, (bad, ok))
    with pytest.raises(ValueError, match="c_0 .*" + match):
        models["torch"](x, (ok, bad))
    with pytest.raises(ValueError, match="h_0 .*" + match):
        models["torch_bf"](np.swapaxes(x, 0, 1), bad)


@pytest.mark.parametrize("hx,match", [
    (np.zeros((2, 1, B, H)), r"tuple \(h_0, c_0\), got ndarray"),
    ({"h_0": 0, "c_0": 0}, r"tuple \(h_0, c_0\), got dict"),
    ((np.zeros((1, B, H)),) * 3, r"tuple \(h_0, c_0\), got a tuple of 3"),
    ("hc", r"tuple \(h_0, c_0\), got str"),
])
def test_lstm_hx_of_the_wrong_kind(models, hx, match):
    with pytest.raises(ValueError, match=match):
        models["torch"](np.zeros((T, B, I)), hx)


# -- ids, dtypes, weights --------------------------------------------------------------------


def test_keras_ids(keras_models):
    _, m = keras_models
    ids = np.random.default_rng(5).integers(0, 7, (B, T))
    want = m.predict(ids)
    for same in (ids.astype(np.uint8), ids.astype(np.float32), ids.astype(object), torch.tensor(ids)):
        np.testing.assert_array_equal(m.predict(same), want)
    for bad, match in [(ids + 0.5, r"ids must be integers, got a non-integral value, \d\.5 \(float\)"),
                       (np.full((B, T), np.nan), r"ids must be integers, got a non-finite value"),
                       (np.full((B, T), 1e300), r"ids must be integers, got min 1e\+300 max 1e\+300 \(beyond int64\)"),
                       (np.full((B, T), 2**64 - 1, np.uint64), r"beyond int64"),
                       (np.full((B, T), 2**70, object), r"beyond int64"),
                       (np.zeros((B, T), "m8[s]"), r"ids must be integers, got dtype timedelta64"),
                       (np.full((B, T), "3"), r"ids must be integers, got dtype <U1"),
                       (np.zeros((B, T), complex), r"ids must be real"),
                       (np.full((B, T), 7), r"ids must lie in \[0, 7\)")]:
        with pytest.raises(ValueError, match=match):
            m.predict(bad)


def test_compute_dtype():
    assert _validation.compute_dtype("float64") == np.float64
    for bad, match in [("foo", r"dtype must be float32 or float64, got 'foo' \(str\)"),
                       (np.int32, r"dtype must be float32 or float64, got int32"),
                       (np.float16, r"got float16")]:
        with pytest.raises(ValueError, match=match):
            RNNLayer("gru", [random_weights(np.random.default_rng(0), "gru", 2, 3)], dtype=bad)


def test_weights_of_other_kinds(rng):
    w = random_weights(rng, "gru", 2, 3)
    for bad in (w.kernel.astype(complex), w.kernel.astype(bool), w.kernel.astype("m8[s]"),
                w.kernel.astype(str)):
        with pytest.raises(ValueError, match="direction 0: kernel must be numeric"):
            RNNLayer("gru", [layers.CellWeights(bad, w.recurrent_kernel)])


def test_chunk_steps(models):
    layer = models["layer"]
    x = np.random.default_rng(9).standard_normal((T, B, I))
    want = layer.forward(x)
    for n in (1, 2, T, 2**70, 0, -5, np.int32(3)):
        for a, b in zip(layer.forward(x, chunk_steps=n), want):
            np.testing.assert_array_equal(a, b)
    for bad in (2.5, "2", True):
        with pytest.raises(TypeError, match=r"chunk_steps must be an int"):
            layer.forward(x, chunk_steps=bad)


# -- C counts and printable messages ----------------------------------------------------------


def test_activation_in_slices_the_c_int_count_holds(monkeypatch):
    """The element-wise kernel takes an int count: more than INT_MAX elements go in
    slices (shown here with a slice of 7 elements; the results are the same bits)."""
    x = np.random.default_rng(6).standard_normal((13, 17)).astype(np.float32)
    dense = Dense(np.random.default_rng(7).standard_normal((17, 9)), activation="tanh")
    want = {name: apply_activation(name, x) for name in layers.ACTIVATIONS}
    want_dense = dense(x)
    monkeypatch.setattr(layers, "ACTIVATE_MAX_ELEMENTS", 7)
    for name in layers.ACTIVATIONS:
        np.testing.assert_array_equal(apply_activation(name, x), want[name])
    np.testing.assert_array_equal(dense(x), want_dense)
    with pytest.raises(ValueError, match=r"x must be numeric"):
        apply_activation("tanh", np.zeros(3, "m8[s]"))


class _Evil:
    def __array__(self, *args, **kwargs):
        raise ValueError("no array here \udc80\ud800 (lone surrogates)")


def _strict_print(text):
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    print(text, file=stream)
    stream.flush()


def test_messages_print_on_a_strict_utf8_stream(models, keras_models):
    bad = "\udc80x\ud83d"
    kf, ki = keras_models
    x = np.zeros((T, B, I))
    calls = [lambda: models["torch"](_Evil()),
             lambda: models["layer"].forward(x, lengths=[None, bad, 1]),
             lambda: models["layer"].forward(x, lengths=np.array([bad] * B)),
             lambda: models["layer"].forward(x, mask=np.array([[bad] * B] * T, object)),
             lambda: models["torch"].predict(x, num_threads=bad),
             lambda: rnnfast.set_num_threads(bad),
             lambda: models["torch"](x, {bad: bad}),
             lambda: kf.predict(_Evil()),
             lambda: ki.predict(np.array([[bad] * T] * B, object)),
             lambda: RNNLayer("gru", [random_weights(np.random.default_rng(0), "gru", 2, 3)], dtype=bad),
             lambda: RNNLayer("gru", [random_weights(np.random.default_rng(0), "gru", 2, 3)], activation=bad)]
    for call in calls:
        with pytest.raises((ValueError, TypeError)) as e:
            call()
        _strict_print(str(e.value))
    assert _validation.printable(bad) == "\\udc80x\\ud83d"
    assert _validation.printable("ok ä €") == "ok ä €"
