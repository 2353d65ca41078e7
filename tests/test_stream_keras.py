"""Keras ``stateful=True`` models against live Keras 3: the state carried between
``predict`` calls (and between the batches of one call), ``reset_states()``, the batch
size fixed as Keras fixes it; refusals. Built on rnnfast.stream."""

import numpy as np
import pytest

import rnnfast
from rnnfast import UnsupportedLayerError

from _testing import assert_like_keras, lively

keras = pytest.importorskip("keras")
L = keras.layers
F, B = 3, 2


def _sequential():
    return keras.Sequential(
        [
            keras.Input((None, F), batch_size=B),
            L.LSTM(6, stateful=True, return_sequences=True),
            L.GRU(5, stateful=True),
            L.Dense(2, activation="tanh"),
        ]
    )


def _mixed():
    """A stateful GRU beside a layer that is not (it starts from zeros each call) and a
    non-causal layer (Keras runs it on each call's steps)."""
    inp = keras.Input((None, F), batch_size=B)
    h = L.GRU(4, stateful=True, return_sequences=True, reset_after=False)(inp)
    h2 = L.SimpleRNN(3, return_sequences=True)(h)
    both = L.Concatenate()([h, h2])
    pooled = L.GlobalAveragePooling1D()(both)
    return keras.Model(inp, [L.Dense(2)(both), pooled])


def _embedding():
    return keras.Sequential(
        [
            keras.Input((None,), batch_size=B, dtype="int32"),
            L.Embedding(9, 4, mask_zero=True),
            L.SimpleRNN(5, stateful=True, return_sequences=True),
        ]
    )


def _reset_keras(km):
    for layer in km.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()


@pytest.mark.parametrize("build", [_sequential, _mixed, _embedding])
def test_state_carried_between_predict_calls_like_keras(build, tmp_path, seed):
    km = lively(build(), seed=seed % 1000)
    path = tmp_path / "m.keras"
    km.save(path)
    loaded = rnnfast.load(path)
    live = rnnfast.from_keras(km)
    assert loaded.stateful_layers and loaded._fixed_batch == B
    rng = np.random.default_rng(seed)
    ids = build is _embedding
    for i in range(7):
        T = int(rng.integers(1, 6))
        if ids:
            x = rng.integers(0, 9, (B, T)).astype(np.int32)
        else:
            x = rng.standard_normal((B, T, F)).astype(np.float32)
        want = km.predict(x, verbose=0)
        for m in (loaded, live):
            assert_like_keras(m.predict(x), want, what="call %d" % i)
        if i == 3:
            _reset_keras(km)
            loaded.reset_states()
            live.reset_state()
    # several batches in one call: each the next part of the same B sequences
    x = rng.standard_normal((3 * B, 4, F)).astype(np.float32) if not ids else rng.integers(0, 9, (3 * B, 4))
    want = km.predict(x, batch_size=B, verbose=0)
    assert_like_keras(loaded.predict(x, batch_size=B), want, what="batches")
    # model(x) carries the state too, as in Keras
    x = x[:B]
    assert_like_keras(loaded(x), km.predict(x, verbose=0), what="call")


def test_batch_size_is_fixed_as_keras_fixes_it():
    km = _sequential()
    m = rnnfast.from_keras(km)
    with pytest.raises(ValueError, match="batch size of 2"):
        m.predict(np.zeros((3, 4, F), np.float32))
    with pytest.raises(ValueError, match="batch size of 2"):
        m.predict(np.zeros((5, 4, F), np.float32), batch_size=2)  # the last batch has 1 row
    # a failed call changes no state
    x = np.ones((B, 2, F), np.float32)
    m.reset_states()
    a = m.predict(x)
    m.reset_states()
    assert np.array_equal(m.predict(x), a)


def test_reset_and_streams_on_a_stateful_model(seed):
    """After reset_states() a stateful model starts over; model.stream() on it gives
    independent streams whose steps equal the stateful calls (same kernels)."""
    km = lively(_sequential(), seed=seed % 1000)
    m = rnnfast.from_keras(km)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((B, int(rng.integers(1, 5)), F)).astype(np.float32) for _ in range(4)]
    first = [m.predict(x) for x in xs]
    m.reset_states()
    assert all(np.array_equal(m.predict(x), y) for x, y in zip(xs, first))
    ss = [m.stream() for _ in range(B)]
    for x, y in zip(xs, first):
        got = m.step(list(x), ss)
        np.testing.assert_allclose(got, y, rtol=1e-6, atol=1e-7)


def test_stateful_bidirectional_refused_naming_the_layer():
    km = keras.Sequential([keras.Input((None, F), batch_size=B), L.Bidirectional(L.GRU(3, stateful=True), name="bidi")])
    with pytest.raises(UnsupportedLayerError, match="bidi"):
        rnnfast.from_keras(km)


def test_stateful_go_backwards_refused():
    km = keras.Sequential([keras.Input((None, F), batch_size=B), L.GRU(3, stateful=True, go_backwards=True, name="gb")])
    with pytest.raises(UnsupportedLayerError, match="gb"):
        rnnfast.from_keras(km)
