"""TimeDistributed around layers that are not per-step (Conv1D, poolings, Flatten,
recurrent layers, Dense on 4-D input) on (batch, time, steps, features) input, against
live Keras 3; models taking (batch, time, steps) token ids through a wrapped model that
starts with an Embedding; and the refusals (several-input layers, Masking)."""

import keras
import numpy as np
import pytest

import rnnfast
from rnnfast import UnsupportedLayerError

from _testing import KERAS_SOURCES, assert_like_keras, keras_model_from, lively, save_keras

L = keras.layers
B, T, S, F = 3, 4, 7, 5


def _td(*layers, shape=(T, S, F)):
    return keras.Sequential([keras.Input(shape)] + [L.TimeDistributed(x) for x in layers])


CASES = {
    "conv-pool-flatten": lambda: _td(L.Conv1D(4, 3, padding="same", activation="relu"), L.MaxPooling1D(2), L.Flatten()),
    "dense-4d": lambda: _td(L.Dense(3), L.GlobalAveragePooling1D()),
    "gru-per-slice": lambda: keras.Sequential(
        [keras.Input((T, S, F)), L.TimeDistributed(L.GRU(3)), L.GRU(2, return_sequences=True)]
    ),
    "bigru-then-max": lambda: _td(L.Bidirectional(L.GRU(2, return_sequences=True)), L.GlobalMaxPooling1D()),
    "separable-avgpool": lambda: _td(L.SeparableConv1D(3, 2), L.AveragePooling1D(2), L.LayerNormalization()),
    "flatten-3d": lambda: _td(L.Flatten(), L.Dense(2), shape=(T, F)),
    "hierarchical": lambda: keras.Sequential(
        [
            keras.Input((T, S, F)),
            L.TimeDistributed(L.Conv1D(4, 2)),
            L.TimeDistributed(L.LSTM(3)),
            L.Bidirectional(L.GRU(2)),
            L.Dense(1, activation="sigmoid"),
        ]
    ),
}


def _sentence_encoder():
    si = keras.Input((S, F))
    h = L.Bidirectional(L.GRU(3, return_sequences=True))(L.Masking()(si))
    return keras.Model(si, L.Concatenate()([L.GlobalMaxPooling1D()(h), L.GlobalAveragePooling1D()(h)]), name="sent")


CASES["model-hierarchical"] = lambda: keras.Sequential(
    [keras.Input((T, S, F)), L.TimeDistributed(_sentence_encoder()), L.GRU(2)]
)
CASES["sequential-model"] = lambda: keras.Sequential(
    [keras.Input((T, S, F)), L.TimeDistributed(keras.Sequential([keras.Input((S, F)), L.Conv1D(3, 2), L.Flatten()]))]
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_time_distributed_like_keras(case, tmp_path):
    model = lively(CASES[case](), seed=len(case))
    x = np.random.default_rng(5).standard_normal((B,) + tuple(model.input_shape[1:])).astype(np.float32)
    _like_keras_from_every_source(model, x, tmp_path)


def _like_keras_from_every_source(model, x, folder):
    """``model`` saved as .keras and .h5 and taken live: each gives Keras' output on ``x``
    and counts its parameters; returns the live one."""
    want = model.predict(x, verbose=0)
    paths = save_keras(model, folder, "m")
    for source in KERAS_SOURCES:
        m = keras_model_from(source, model, paths)
        assert_like_keras(m.predict(x), want, what=source)
        assert m.count_params() == model.count_params()
    return m


def _sentences_of_ids(mask_zero):
    """The hierarchical text model: (batch, sentences, words) ids, a sentence encoder
    (Embedding -> GRU) over each sentence, a GRU over the sentence vectors."""
    ids = keras.Input((S,), dtype="int32")
    inner = keras.Model(ids, L.GRU(3)(L.Embedding(9, 4, mask_zero=mask_zero)(ids)), name="sentence")
    doc = keras.Input((T, S), dtype="int32")
    return keras.Model(doc, L.Dense(2)(L.GRU(2)(L.TimeDistributed(inner)(doc))))


@pytest.mark.parametrize("mask_zero", [False, True])
def test_time_distributed_model_of_ids(mask_zero, tmp_path):
    model = lively(_sentences_of_ids(mask_zero), seed=11)
    x = np.random.default_rng(6).integers(1, 9, (B, T, S)).astype(np.int32)
    x[0, 1, S - 3 :] = 0  # padded words
    x[1, 2, :] = 0  # an empty sentence
    m = _like_keras_from_every_source(model, x, tmp_path)
    assert m.input_shape == (None, None, S) and m.output_shape == (None, 2)
    with pytest.raises(ValueError, match="ids must lie in"):
        m.predict(np.full((1, T, S), 9, np.int32))
    with pytest.raises(ValueError, match="shape"):
        m.predict(x[:, 0])


def test_time_distributed_model_of_ids_on_floats_refused():
    ids = keras.Input((S,), dtype="int32")
    inner = keras.Model(ids, L.GRU(3)(L.Embedding(9, 4)(ids)), name="sentence")
    model = keras.Sequential([keras.Input((T, S, F)), L.TimeDistributed(inner)])
    with pytest.raises(UnsupportedLayerError) as info:
        rnnfast.from_keras(model)
    assert "ids of shape (batch, time, steps)" in str(info.value)


def test_time_distributed_masking_refused():
    model = _td(L.Masking(), shape=(T, F))
    with pytest.raises(UnsupportedLayerError) as info:
        rnnfast.from_keras(model)
    assert "Masking" in str(info.value)
