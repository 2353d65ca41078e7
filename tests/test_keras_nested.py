"""Models used as layers inside other models (a Sequential or functional model nested
in a Sequential or functional one, shared by several calls, nested two deep) against
live Keras 3: from the live model, its .keras archive (the nested model's layers under
``layers/<sequential|functional>/layers/...``) and its HDF5 file (all the nested
model's weights listed in its group's ``weight_names``). tf.keras files holding nested
models are among the Keras 2 fixtures (test_keras2_layer_fixtures.py)."""

import zlib

import keras
import numpy as np
import pytest

import rnnfast

from _testing import KERAS_SOURCES, assert_like_keras, keras_model_from, lively, masked_ids, masked_input, save_keras
from _testing import SEQ_B as B
from _testing import SEQ_F as F
from _testing import SEQ_T as T

L = keras.layers
pytestmark = [
    # Keras 3 warns that a nested model "destroys" the mask it is given; its layers use it
    pytest.mark.filterwarnings("ignore:Layer 'enc' .* was passed an input with a mask:UserWarning")
]


def _encoder(name="enc"):
    return keras.Sequential([keras.Input((T, F)), L.Masking(), L.GRU(4, return_sequences=True), L.Dense(3)], name=name)


def _shared():
    enc = _encoder()
    hi = keras.Input((T, 3))
    head = keras.Model(hi, [L.Dense(2, name="fd")(hi), L.Dense(1, name="fd2")(hi)], name="head")
    a, b = keras.Input((T, F)), keras.Input((T, F))
    o1, o2 = head(enc(a))
    return keras.Model([a, b], L.Concatenate()([o1, enc(b), o2]))


def _seq_in_seq():
    return keras.Sequential([keras.Input((T, F)), _encoder(), L.GRU(2)])


def _seq_last():
    return keras.Sequential([keras.Input((T, F)), L.Dense(F), _encoder()])


def _two_deep():
    i2 = keras.Input((T, F))
    mid = keras.Model(i2, L.Dense(4)(_encoder()(i2)), name="mid")
    i3 = keras.Input((T, F))
    return keras.Model(i3, L.GRU(2)(mid(i3)))


def _siamese():
    """One functional branch applied to two inputs, its outputs compared."""
    xi = keras.Input((T, F))
    branch = keras.Model(xi, L.Bidirectional(L.LSTM(3))(L.Masking()(xi)), name="branch")
    a, b = keras.Input((T, F)), keras.Input((T, F))
    d = L.Subtract()([branch(a), branch(b)])
    return keras.Model([a, b], L.Dense(1, activation="sigmoid")(L.Multiply()([d, d])))


def _masked_ids_in():
    """An Embedding(mask_zero) outside, its mask into a nested functional encoder (Keras 3
    records it as the call's mask=) and on out of it into the next GRU."""
    i = keras.Input((T, 4))
    inner = keras.Model(i, L.GRU(3, return_sequences=True)(i), name="enc")
    ids = keras.Input((T,), dtype="int32")
    return keras.Model(ids, L.GRU(2)(inner(L.Embedding(12, 4, mask_zero=True)(ids))))


CASES = {
    "masked-ids-into-nested": _masked_ids_in,
    "shared": _shared,
    "seq-in-seq": _seq_in_seq,
    "seq-last": _seq_last,
    "two-deep": _two_deep,
    "siamese": _siamese,
}


def _lively_all(model, seed):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            _lively_all(layer, seed + 1)
    lively(model, seed)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_nested")


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request, workdir):
    model = CASES[request.param]()
    _lively_all(model, zlib.crc32(request.param.encode()))
    if "int" in str(model.inputs[0].dtype):
        xs = [masked_ids((B, T), 12)]
    else:
        xs = [masked_input((B, T, F), seed=3 + i) for i in range(len(model.inputs))]
    x = xs if len(xs) > 1 else xs[0]
    want = model.predict(x, verbose=0)
    return model, x, want, save_keras(model, workdir, request.param)


@pytest.mark.parametrize("source", KERAS_SOURCES)
def test_nested_matches_keras(built, source):
    model, x, want, paths = built
    m = keras_model_from(source, model, paths)
    assert_like_keras(m.predict(x), want, what=source)
    assert m.count_params() == model.count_params()


def test_shared_nested_model_converted_once():
    """A nested model called twice: its layers are converted once and run twice."""
    model = _shared()
    _lively_all(model, 1)
    m = rnnfast.from_keras(model)
    grus = [n for n in m.layers if n.name.startswith("enc/") and n.keras_class == "GRU"]
    assert len(grus) == 1
    assert sum(s.op is grus[0] for s in m._graph.steps) == 2
    x = [masked_input((B, T, F), seed=1), np.zeros((B, T, F), np.float32)]
    assert_like_keras(m.predict(x), model.predict(x, verbose=0))


def test_model_keeps_its_name_and_pickles():
    """The outer model's name survives its layers' conversion; a model holding nested
    models and multi-head attention pickles (rnnfast.dask / rnnfast.ray)."""
    import pickle

    model = _shared()
    model.name = "outer"
    _lively_all(model, 2)
    m = rnnfast.from_keras(model)
    assert m.name == "outer"
    x = [masked_input((B, T, F), seed=1), masked_input((B, T, F), seed=2)]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).predict(x), m.predict(x))
    inp = keras.Input((T, F))
    att = lively(keras.Model(inp, L.MultiHeadAttention(2, 3)(inp, inp, use_causal_mask=True)), seed=4)
    m = rnnfast.from_keras(att)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(m)).predict(x[0]), m.predict(x[0]))
