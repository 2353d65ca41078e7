"""Keras models against live Keras 3 (torch backend): every case is built once, given
random weights of a lively scale, saved as ``.keras`` and as legacy ``.h5``, and each of
the three sources (both files and the live model) must give what ``model.predict``
gives: same structure, shapes, dtype and values (the contract's tolerances).

The grid: GRU (both variants), LSTM, SimpleRNN x return_sequences x go_backwards
under masks with gaps; Bidirectional x merge modes (and a custom backward_layer);
return_state; RNN(cell) and StackedRNNCells; mask propagation through Dense,
TimeDistributed and dropout-like layers; Embedding(mask_zero); Flatten; the
activations; float64 models; a T=1000 case.
"""

import os
import zlib

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras

import rnnfast

from _testing import (
    KERAS_SOURCES,
    SEQ_B,
    SEQ_F,
    SEQ_T,
    TOL,
    assert_like_keras,
    functional,
    keras_model_from,
    lively,
    masked_ids,
    masked_input,
    save_keras,
    seq,
)

L = keras.layers
T, F, B = SEQ_T, SEQ_F, SEQ_B


# -- the cases --------------------------------------------------------------------------------

CASES = {}


def case(name, x=None):
    def register(fn):
        CASES[name] = (fn, x)
        return fn

    return register


CELLS = {
    "gru": lambda **kw: L.GRU(4, **kw),
    "gru_reset_before": lambda **kw: L.GRU(4, reset_after=False, **kw),
    "lstm": lambda **kw: L.LSTM(4, **kw),
    "simple": lambda **kw: L.SimpleRNN(4, **kw),
}

# one recurrent layer under a mask with gaps: cell x return_sequences x go_backwards
for _cell in CELLS:
    for _rs in (False, True):
        for _gb in (False, True):
            case("%s-rs%d-gb%d" % (_cell, _rs, _gb))(
                lambda c=_cell, rs=_rs, gb=_gb: seq(L.Masking(), CELLS[c](return_sequences=rs, go_backwards=gb))
            )
    case("%s-nobias" % _cell)(lambda c=_cell: seq(CELLS[c](use_bias=False, return_sequences=True)))
    case("%s-zero_output_for_mask" % _cell)(
        lambda c=_cell: seq(L.Masking(), CELLS[c](zero_output_for_mask=True, return_sequences=True))
    )
    case("%s-zero_output_last" % _cell)(
        lambda c=_cell: seq(L.Masking(), CELLS[c](zero_output_for_mask=True, go_backwards=True))
    )
    case("%s-unroll-dropout" % _cell)(
        lambda c=_cell: seq(CELLS[c](unroll=True, dropout=0.3, recurrent_dropout=0.2, return_sequences=True))
    )

case("gru-activations")(
    lambda: seq(
        L.GRU(4, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True),
        L.GRU(3, activation="softsign"),
    )
)
case("lstm-activations")(
    lambda: seq(
        L.LSTM(4, activation="elu", recurrent_activation="hard_sigmoid", return_sequences=True),
        L.LSTM(3, activation="selu"),
    )
)
case("simple-activations")(
    lambda: seq(L.SimpleRNN(4, activation="softplus", return_sequences=True), L.SimpleRNN(3, activation="linear"))
)
case("stack-seed-like")(lambda: seq(L.GRU(8, return_sequences=True), L.GRU(6), L.Dense(1, activation="sigmoid")))

# Bidirectional: merge modes x return_sequences (masked), plus LSTM, states and custom backward layers
for _mm in ("concat", "sum", "mul", "ave", None):
    for _rs in (False, True):
        case("bidi-gru-%s-rs%d" % (_mm, _rs))(
            lambda mm=_mm, rs=_rs: seq(L.Masking(), L.Bidirectional(L.GRU(4, return_sequences=rs), merge_mode=mm))
        )
case("bidi-lstm-stack")(
    lambda: seq(
        L.Masking(),
        L.Bidirectional(L.LSTM(4, return_sequences=True)),
        L.Bidirectional(L.LSTM(3, return_sequences=True), merge_mode="ave"),
        L.TimeDistributed(L.Dense(2, activation="softmax")),
    )
)
case("bidi-simple-reset_before")(
    lambda: seq(L.Bidirectional(L.SimpleRNN(3, return_sequences=True)), L.Bidirectional(L.GRU(3, reset_after=False)))
)
case("bidi-custom-backward")(
    lambda: seq(
        L.Masking(),
        L.Bidirectional(
            L.GRU(4, return_sequences=True), backward_layer=L.SimpleRNN(3, return_sequences=True, go_backwards=True)
        ),
    )
)
case("bidi-custom-backward-last")(
    lambda: seq(L.Masking(), L.Bidirectional(L.LSTM(4), backward_layer=L.LSTM(2, go_backwards=True, activation="relu")))
)
case("bidi-forward-go_backwards")(
    lambda: seq(
        L.Masking(),
        L.Bidirectional(
            L.GRU(3, return_sequences=True, go_backwards=True), backward_layer=L.GRU(3, return_sequences=True)
        ),
    )
)
case("bidi-lstm-state-concat")(
    lambda: functional(lambda i: L.Bidirectional(L.LSTM(3, return_sequences=True, return_state=True))(L.Masking()(i)))
)
case("bidi-gru-state-none")(
    lambda: functional(lambda i: L.Bidirectional(L.GRU(3, return_state=True), merge_mode=None)(L.Masking()(i)))
)

# return_state in functional models, one recurrent layer feeding several outputs
case("gru-state")(lambda: functional(lambda i: L.GRU(4, return_sequences=True, return_state=True)(L.Masking()(i))))
case("lstm-state")(lambda: functional(lambda i: L.LSTM(4, return_state=True, go_backwards=True)(L.Masking()(i))))
case("simple-state-to-dense")(
    lambda: functional(
        lambda i: (lambda o: [L.Dense(2)(o[0]), o[1]])(L.SimpleRNN(4, return_sequences=True, return_state=True)(i))
    )
)
case("state-to-dense")(
    lambda: functional(
        lambda i: (lambda o: [o[0], L.Dense(2, activation="tanh")(o[2])])(L.LSTM(4, return_state=True)(i))
    )
)
case("sequential-return_state")(lambda: seq(L.Masking(), L.GRU(3, return_sequences=True), L.LSTM(3, return_state=True)))

# RNN(cell) wrappers
case("rnn-grucell")(lambda: seq(L.Masking(), L.RNN(L.GRUCell(4, reset_after=False), return_sequences=True)))
case("rnn-lstmcell-state")(lambda: functional(lambda i: L.RNN(L.LSTMCell(4), return_state=True)(L.Masking()(i))))
case("rnn-simplecell-backwards")(
    lambda: seq(L.Masking(), L.RNN(L.SimpleRNNCell(4), return_sequences=True, go_backwards=True))
)
case("rnn-stacked")(
    lambda: seq(L.Masking(), L.RNN([L.GRUCell(4), L.LSTMCell(3), L.SimpleRNNCell(2)], return_sequences=True))
)
case("rnn-stacked-backwards-state")(
    lambda: functional(
        lambda i: L.RNN([L.LSTMCell(3), L.GRUCell(4)], return_state=True, go_backwards=True)(L.Masking()(i))
    )
)
case("bidi-rnn-stacked")(
    lambda: seq(
        L.Masking(), L.Bidirectional(L.RNN([L.GRUCell(3), L.GRUCell(2)], return_sequences=True), merge_mode="sum")
    )
)

# masks propagated through other layers, and their makers
case("mask-through-dense-dropout")(
    lambda: seq(
        L.Masking(),
        L.Dense(6, activation="tanh"),
        L.Dropout(0.5),
        L.TimeDistributed(L.Dense(4)),
        L.GaussianNoise(0.3),
        L.Activation("relu"),
        L.SpatialDropout1D(0.2),
        L.GRU(3, return_sequences=True),
        L.GaussianDropout(0.2),
        L.AlphaDropout(0.1),
        L.ActivityRegularization(0.1, 0.1),
        L.LSTM(2),
    )
)
case("mask-after-go_backwards")(
    lambda: seq(L.Masking(), L.GRU(4, return_sequences=True, go_backwards=True), L.SimpleRNN(3, return_sequences=True))
)
case("mask-value", x=np.where(masked_input((B, T, F)) == 0, np.float32(0.5), masked_input((B, T, F))))(
    lambda: seq(L.Masking(mask_value=0.5), L.LSTM(3, return_sequences=True))
)
case("masking-alone")(lambda: seq(L.Masking(), L.Dense(3)))
case("embedding-mask_zero", x=masked_ids((B, T), 7))(
    lambda: functional(
        lambda i: L.SimpleRNN(2)(
            L.GRU(4, return_sequences=True, go_backwards=True)(
                L.Dense(3)(L.Dropout(0.2)(L.Embedding(7, 4, mask_zero=True)(i)))
            )
        ),
        shape=(T,),
        dtype="int32",
    )
)
case("embedding-bidi", x=masked_ids((B, T), 7))(
    lambda: seq(L.Embedding(7, 3, mask_zero=True), L.Bidirectional(L.LSTM(3)), shape=(T,), dtype="int32")
)
case("embedding-no-mask", x=masked_ids((B, T), 7))(lambda: seq(L.Embedding(7, 3), L.GRU(3), shape=(T,), dtype="int32"))
case("flatten")(lambda: seq(L.GRU(3, return_sequences=True), L.Flatten(), L.Dense(2)))
case("flatten-channels_first")(
    lambda: seq(L.GRU(3, return_sequences=True), L.Flatten(data_format="channels_first"), L.Dense(2))
)
case("flatten-drops-mask")(lambda: seq(L.Masking(), L.GRU(3, return_sequences=True), L.Flatten(), L.Dense(2)))
case("dense-2d-input", x=np.random.default_rng(3).standard_normal((B, F)).astype(np.float32))(
    lambda: seq(L.Dense(4, activation="relu"), L.Dense(2), shape=(F,))
)

# the seed's two models at full width, batch 1 and 3 (the kernels' unit-blocked paths)
case("seed-stacked-gru", x=np.random.default_rng(4).standard_normal((1, 10, 50)).astype(np.float32))(
    lambda: seq(L.GRU(128, return_sequences=True), L.GRU(64), L.Dense(1, activation="sigmoid"), shape=(10, 50))
)
case("seed-bidirectional-gru", x=np.random.default_rng(5).standard_normal((3, 10, 50)).astype(np.float32))(
    lambda: seq(
        L.Bidirectional(L.GRU(128, return_sequences=True)),
        L.Bidirectional(L.GRU(64, return_sequences=True)),
        L.Dense(1, activation="sigmoid"),
        shape=(10, 50),
    )
)

CASE_IDS = sorted(CASES)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_models")


@pytest.fixture(scope="module", params=CASE_IDS)
def built(request, workdir):
    """(model, x, Keras' prediction, paths) -- built and saved once per case."""
    fn, x = CASES[request.param]
    model = lively(fn(), seed=zlib.crc32(request.param.encode()))
    if x is None:
        x = masked_input((B, T, F))
    want = model.predict(x, verbose=0)
    return model, x, want, save_keras(model, workdir, request.param)


@pytest.mark.parametrize("source", KERAS_SOURCES)
def test_matches_keras(built, source):
    model, x, want, paths = built
    m = keras_model_from(source, model, paths)
    assert isinstance(m, rnnfast.KerasModel)
    assert_like_keras(m.predict(x), want, what=source)
    assert_like_keras(m(x), want, what=source + " __call__")


# -- long sequences, dtypes, input casting, threads -----------------------------------------------


@pytest.mark.slow
def test_long_sequence(tmp_path):
    """T = 1000 under masks: errors must not grow along the sequence."""
    model = lively(
        seq(L.Masking(), L.Bidirectional(L.GRU(6, return_sequences=True)), L.LSTM(4), shape=(1000, F)), seed=7
    )
    x = masked_input((B, 1000, F), seed=8)
    want = model.predict(x, verbose=0)
    model.save(str(tmp_path / "long.keras"))
    m = rnnfast.load(str(tmp_path / "long.keras"))
    assert_like_keras(m.predict(x), want)


def test_float64_model(tmp_path):
    """A float64 model runs in float64 (and float64 input keeps its precision)."""
    f64 = dict(dtype="float64")
    model = lively(
        seq(
            L.Masking(**f64),
            L.Bidirectional(L.GRU(4, return_sequences=True, **f64), **f64),
            L.LSTM(3, **f64),
            L.Dense(2, activation="softmax", **f64),
            dtype="float64",
        ),
        seed=11,
    )
    x = masked_input((B, T, F), dtype=np.float64)
    want = model.predict(x, verbose=0)
    assert want.dtype == np.float64
    for p in (tmp_path / "m64.keras", tmp_path / "m64.h5"):
        model.save(str(p))
        m = rnnfast.load(str(p))
        assert m.dtype == np.float64
        assert_like_keras(m.predict(x), want, dtype=np.float64)
    assert_like_keras(rnnfast.from_keras(model).predict(x), want, dtype=np.float64)


def test_float64_input_to_float32_model():
    """Keras' predict casts float64 input to a float32 model's float32."""
    model = lively(seq(L.GRU(4, return_sequences=True), L.Dense(2)), seed=12)
    x = np.random.default_rng(5).standard_normal((B, T, F)) * 3
    want = model.predict(x, verbose=0)
    got = rnnfast.from_keras(model).predict(x)
    assert got.dtype == np.float32
    assert_like_keras(got, want)


def test_dtype_option(tmp_path):
    """load(dtype="float64") computes a float32 model in float64 (close to Keras' float32)."""
    model = lively(seq(L.Masking(), L.LSTM(4, return_sequences=True), L.Dense(2)), seed=13)
    x = masked_input((B, T, F))
    want = model.predict(x, verbose=0)
    model.save(str(tmp_path / "m.keras"))
    m = rnnfast.load(str(tmp_path / "m.keras"), dtype="float64")
    assert m.dtype == np.float64
    got = m.predict(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, **TOL[np.dtype(np.float32)])
    with pytest.raises(ValueError):
        rnnfast.load(str(tmp_path / "m.keras"), dtype="float16")


def test_threads_and_batches_do_not_change_results():
    model = lively(seq(L.Masking(), L.Bidirectional(L.GRU(6, return_sequences=True)), L.LSTM(5)), seed=14)
    x = masked_input((B, T, F))
    m = rnnfast.from_keras(model)
    ref = m.predict(x, num_threads=1)
    assert_like_keras(ref, model.predict(x, verbose=0))
    for nt in (2, 3):
        np.testing.assert_array_equal(m.predict(x, num_threads=nt), ref)
    np.testing.assert_array_equal(m.predict(x, batch_size=2), ref)


# -- activations of Dense / Activation layers ---------------------------------------------------

DENSE_ACTIVATIONS = [
    "linear",
    "relu",
    "relu6",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "softplus",
    "softsign",
    "silu",
    "swish",
    "gelu",
    "glu",
    "tanh",
    "tanh_shrink",
    "sigmoid",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "hard_shrink",
    "soft_shrink",
    "sparse_plus",
    "sparse_sigmoid",
    "squareplus",
    "exponential",
    "mish",
    "softmax",
    "log_softmax",
    "log_sigmoid",
    "sparsemax",
]


@pytest.mark.parametrize("activation", DENSE_ACTIVATIONS)
def test_dense_activation(activation):
    model = lively(seq(L.Dense(8, activation=activation), L.Activation(activation)), seed=15, scale=1.5)
    x = 2 * masked_input((B, T, F), seed=16)
    assert_like_keras(rnnfast.from_keras(model).predict(x), model.predict(x, verbose=0), what=activation)


def test_repr_and_layers():
    model = lively(
        seq(L.Masking(), L.Bidirectional(L.GRU(4, return_sequences=True)), L.LSTM(3), L.Dense(2, activation="softmax"))
    )
    m = rnnfast.from_keras(model)
    assert [layer.keras_class for layer in m.layers] == ["Masking", "Bidirectional", "LSTM", "Dense"]
    assert [layer.name for layer in m.layers] == [layer.name for layer in model.layers]
    text = repr(m)
    for word in ("KerasModel", "Bidirectional(GRU(4", "LSTM(3)", "softmax", "(batch, any, %d)" % F):
        assert word in text, text
    assert m.input_shape == (None, None, F)
    assert m.keras_version == keras.__version__


def test_a_large_dense_streams_its_kernel_where_the_weights_overflow_the_cache(monkeypatch):
    """Where the model's weights overflow the last-level cache (here made small), its
    largest Dense reads its kernel past the caches at one row (``Dense.stream``,
    rnnfast._plan.streamed_weights; the Embedding's table counts as none): the same
    bits as the model that streams nothing, at 1 and 2 threads, and Keras' values."""
    from rnnfast import _plan

    inp = keras.Input((5,), dtype="int32")
    y = L.Embedding(50, 8)(inp)
    y = L.GRU(16)(y)
    y = L.Dense(12, activation="tanh")(y)
    y = L.Dense(300, activation="softmax")(y)
    model = lively(keras.Model(inp, y), seed=21)
    ids = np.random.default_rng(3).integers(0, 50, (3, 5)).astype(np.int32)
    monkeypatch.setattr(_plan, "_l3", [1 << 40])
    kept = rnnfast.from_keras(model)
    denses = [n.dense for n in kept.layers if n.keras_class == "Dense"]
    assert len(denses) == 2 and not any(d.stream for d in denses)
    monkeypatch.setattr(_plan, "_l3", [16 << 10])  # the head's 300 x 12 kernel and the GRU's overflow it
    streamed = rnnfast.from_keras(model)
    denses = [n.dense for n in streamed.layers if n.keras_class == "Dense"]
    assert [d.stream for d in denses] == [False, True]
    assert_like_keras(kept.predict(ids), model.predict(ids, verbose=0))
    for rows in (ids[:1], ids[1:2], ids):
        want = kept.predict(rows)
        for n in (1, 2):
            got = streamed.predict(rows, num_threads=n)
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
