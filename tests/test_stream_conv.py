"""Causal Conv1D on a stream (rnnfast.stream._CausalConv): the last
``(kernel_size - 1) * dilation`` input frames kept per stream, bitwise the whole call
for any chunking (alone and batched, ragged), against live Keras 3 and a float64 numpy
reference; state save / restore / reset; refusals of what it does not step."""

import numpy as np
import pytest
from test_stream import assert_bitwise, assert_state_bitwise, random_cuts, whole

import rnnfast
from rnnfast import UnsupportedLayerError
from rnnfast.ops import conv1d_reference, conv_padding

from _testing import assert_like_keras, lively, step_in_ragged_batches, tol

keras = pytest.importorskip("keras")
L = keras.layers
F = 6


def _keras_model():
    """Two causal convolutions (dilated with an activation; grouped; a kernel of one
    step: no state) before a GRU and a Dense head."""
    inp = keras.Input((None, F))
    h = L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu", name="c1")(inp)
    h = L.Conv1D(4, 2, padding="causal", groups=2, name="c2")(h)
    h = L.Conv1D(4, 1, padding="causal", name="c3")(h)
    h = L.GRU(7, return_sequences=True, name="gru")(h)
    return lively(keras.Model(inp, L.Dense(3, name="head")(h)))


@pytest.fixture(scope="module", params=["float32", "float64"])
def models(request):
    """The Keras model (float32) and rnnfast's, computing in ``dtype``."""
    km = _keras_model()
    return km, rnnfast.from_keras(km, dtype=request.param), np.dtype(request.param)


def test_whole_stream_is_keras(models, rng):
    km, model, dt = models
    x = rng.standard_normal((50, F)).astype(dt)
    got, state = whole(model, x)
    want = km.predict(x[None].astype(np.float32), verbose=0)[0]
    assert_like_keras(got.astype(np.float32), want, np.float32, "causal conv stream vs Keras")
    # and the model's own whole-sequence path (BLAS products: to tolerance)
    np.testing.assert_allclose(got, model.predict(x[None])[0], **tol(dt))
    assert [a.shape for a in state["c1"]] == [(4, F)] and [a.shape for a in state["c2"]] == [(1, 8)]
    assert "c3" not in state  # a kernel of one step keeps nothing
    # the kept frames are the chunk's last input frames (c1 reads the input)
    assert_bitwise(state["c1"][0], x[-4:], "c1's kept frames")


def test_conv_alone_is_the_float64_reference(rng):
    inp = keras.Input((None, F))
    km = lively(keras.Model(inp, L.Conv1D(5, 4, padding="causal", dilation_rate=3, name="c")(inp)))
    model = rnnfast.from_keras(km)
    x = rng.standard_normal((30, F)).astype(np.float32)
    s = model.stream()
    got = np.concatenate([model.step(x[a:b], s) for a, b in zip(*(lambda c: (c[:-1], c[1:]))(random_cuts(rng, 30)))])
    kernel, bias = km.layers[-1].get_weights()
    want = conv1d_reference(x[None], kernel, bias, dilation=3, padding=conv_padding(30, 4, 1, 3, "causal"))[0]
    np.testing.assert_allclose(got, want, **tol(np.float32))


@pytest.mark.parametrize("max_len", [1, 3, 20])
def test_random_chunkings_are_bitwise_the_whole_call(models, rng, max_len):
    _, model, dt = models
    x = rng.standard_normal((61, F)).astype(dt)
    want, want_state = whole(model, x)
    s = model.stream()
    cuts = random_cuts(rng, len(x), max_len=max_len)
    got = np.concatenate([model.step(x[a:b], s) for a, b in zip(cuts[:-1], cuts[1:])])
    assert_bitwise(got, want, "chunked (max %d)" % max_len)
    assert_state_bitwise(s.state, want_state, "chunked")


def test_batched_ragged_joining_and_leaving_are_bitwise(models, rng):
    """Streams of different lengths in one batched step (right-padded: a row's kept
    frames end at its chunk's end, not at the padding), joining and leaving."""
    _, model, dt = models
    xs = [rng.standard_normal((int(n), F)).astype(dt) for n in rng.integers(5, 40, size=6)]
    wants = [whole(model, x) for x in xs]
    start = [0, 0, 2, 3, 3, 5]  # rounds at which each stream joins
    got, streams = step_in_ragged_batches(model, xs, rng, max_chunk=6, start=start)
    for i, (want, want_state) in enumerate(wants):
        assert_bitwise(got[i], want, "stream %d batched" % i)
        assert_state_bitwise(streams[i].state, want_state, "stream %d batched" % i)


def test_state_restore_and_reset(models, rng):
    _, model, dt = models
    x = rng.standard_normal((30, F)).astype(dt)
    want, _ = whole(model, x)
    s = model.stream()
    head = model.step(x[:11], s)
    saved = s.state
    t = model.stream()
    t.state = saved
    assert_bitwise(np.concatenate([head, model.step(x[11:], t)]), want, "restored in another stream")
    s.reset()
    assert not any(a.any() for v in s.state.values() for a in v)
    assert_bitwise(model.step(x, s), want, "after reset")
    bad = dict(saved, c1=[np.zeros((3, F), dt)])
    with pytest.raises(ValueError, match="c1"):
        t.state = bad


def test_strided_causal_conv_refused():
    inp = keras.Input((None, F))
    model = rnnfast.from_keras(keras.Model(inp, L.GRU(3)(L.Conv1D(4, 3, strides=2, padding="causal", name="cs")(inp))))
    with pytest.raises(UnsupportedLayerError, match="cs.*strides=2"):
        model.stream()
