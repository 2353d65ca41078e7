"""Keras ``MultiHeadAttention`` against live Keras 3 (torch backend): self- and
cross-attention, key=, attention_mask=, use_causal_mask, masks of the query, value
and key, key_dim / value_dim / output_shape / use_bias / use_gate / sliding_window,
dropout (the identity at inference); from the live model, .keras and .h5; and the
numpy op against its float64 reference."""

import zlib

import keras
import numpy as np
import pytest

import rnnfast
from rnnfast import UnsupportedLayerError, ops

from _testing import KERAS_SOURCES, assert_like_keras, keras_model_from, lively, masked_input, save_keras
from _testing import SEQ_B as B
from _testing import SEQ_F as F
from _testing import SEQ_T as T

L = keras.layers
TV = 6


def _self(layer, masked=False, **call):
    def build():
        inp = keras.Input((T, F))
        h = L.Masking()(inp) if masked else inp
        return keras.Model(inp, layer()(h, h, **call))

    return build


def _cross(**call):
    def build():
        q, v, k, am = keras.Input((T, F)), keras.Input((TV, 4)), keras.Input((TV, 3)), keras.Input((T, TV))
        hq, hv, hk = L.Masking()(q), L.Masking()(v), L.Masking()(k)
        y = L.MultiHeadAttention(2, 3, value_dim=5, name="mha")(hq, hv, key=hk, attention_mask=am, **call)
        return keras.Model([q, v, k, am], L.GRU(3, return_sequences=True)(y))

    return build


def _ids_query():
    ids = keras.Input((T,), dtype="int32")
    e = L.Embedding(11, F, mask_zero=True)(ids)
    y = L.MultiHeadAttention(2, 4)(e, e, use_causal_mask=True)
    pooled = L.GlobalAveragePooling1D()(L.LayerNormalization()(L.Add()([e, y])))
    return keras.Model(ids, L.Dense(2, activation="softmax")(pooled))


CASES = {
    "self": _self(lambda: L.MultiHeadAttention(2, 3)),
    "self-masked-value-dim-output": _self(lambda: L.MultiHeadAttention(2, 3, value_dim=4, output_shape=6), True),
    "causal": _self(lambda: L.MultiHeadAttention(3, 2, use_bias=False), use_causal_mask=True),
    "causal-masked": _self(lambda: L.MultiHeadAttention(2, 3), True, use_causal_mask=True),
    "gate-dropout": _self(lambda: L.MultiHeadAttention(2, 3, dropout=0.3, use_gate=True), True),
    "sliding-window": _self(lambda: L.MultiHeadAttention(1, 4, sliding_window=3), use_causal_mask=True),
    "cross-key-attention-mask": _cross(),
    "cross-causal": _cross(use_causal_mask=True),
    "embedding-block": _ids_query,
}


def _inputs(model):
    rng = np.random.default_rng(7)
    out = []
    for i, inp in enumerate(model.inputs):
        shape = (B,) + tuple(inp.shape[1:])
        if "int" in str(inp.dtype):
            ids = rng.integers(1, 11, shape).astype(np.int32)
            ids[0, 5:] = 0
            ids[1, :2] = 0
            ids[3] = 0
            out.append(ids)
        elif inp.name.startswith("input_layer_3") or len(out) == 3:
            out.append((rng.random(shape) > 0.3).astype(np.float32))  # attention_mask
        else:
            out.append(masked_input(shape, seed=3 + i))
    return out if len(out) > 1 else out[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_mha")


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request, workdir):
    model = CASES[request.param]()
    lively(model, seed=zlib.crc32(request.param.encode()))
    x = _inputs(model)
    want = model.predict(x, verbose=0)
    return model, x, want, save_keras(model, workdir, request.param)


@pytest.mark.parametrize("source", KERAS_SOURCES)
def test_mha_matches_keras(built, source):
    model, x, want, paths = built
    m = keras_model_from(source, model, paths)
    assert_like_keras(m.predict(x), want, what=source)
    assert m.count_params() == model.count_params()
    if source == "live":
        for got, w in zip(m.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(got, w)
        row = next(r for r in m.summary_rows() if r["type"] == "MultiHeadAttention")
        assert "num_heads=" in row["options"]


def test_fully_masked_query_attends_to_all():
    """A query step with no value step to attend to: Keras attends to every one alike
    (the large negative swamps the scores in float32); rnnfast does too."""
    inp = keras.Input((T, F))
    h = L.Masking()(inp)
    model = lively(keras.Model(inp, L.MultiHeadAttention(2, 3)(h, h)), seed=5)
    x = masked_input((B, T, F), seed=2)  # row 3 is all masked
    got = rnnfast.from_keras(model).predict(x)
    assert np.isfinite(got[3]).all()
    assert_like_keras(got, model.predict(x, verbose=0))


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_against_reference(gate, masked, dtype):
    rng = np.random.default_rng(11)
    Bq, Tq, Tv, N, dk, dv, E = 2, 5, 4, 3, 2, 3, 4
    q, v, k = (rng.standard_normal(s).astype(dtype) for s in ((Bq, Tq, 6), (Bq, Tv, 5), (Bq, Tv, 4)))
    w = [
        rng.standard_normal(s).astype(dtype) * 0.5
        for s in ((6, N, dk), (N, dk), (4, N, dk), (N, dk), (5, N, dv), (N, dv), (N, dv, E), (E,))
    ]
    valid = None
    if masked:
        valid = rng.random((Bq, Tq, Tv)) > 0.4
        valid[0, 1] = False  # a query step that attends to none
    g = (rng.standard_normal((6, N, dv)).astype(dtype), rng.standard_normal((N, dv)).astype(dtype)) if gate else None
    for neg, zero in ((-1e9, False), (-1e9, True), (-0.7 * 3.38953e38, False)):
        got = ops.multi_head_attention(q, v, k, *w, valid=valid, gate=g, large_negative=neg, zero_masked=zero)
        want = ops.multi_head_attention_reference(
            q, v, k, *w, valid=valid, gate=g, large_negative=neg, zero_masked=zero
        )
        assert got.dtype == dtype
        t = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got, want, **t)


@pytest.mark.parametrize(
    "layer, option",
    [
        (lambda: L.MultiHeadAttention(2, 3, output_shape=(2, 3)), "output_shape"),
        (lambda: L.MultiHeadAttention(2, 3, attention_axes=(2,)), "attention_axes"),
    ],
)
def test_refused_options(layer, option):
    inp = keras.Input((T, F, 4) if option == "attention_axes" else (T, F))
    model = keras.Model(inp, layer()(inp, inp))
    with pytest.raises(UnsupportedLayerError) as info:
        rnnfast.from_keras(model)
    assert info.value.option == option


def test_refused_attention_scores():
    inp = keras.Input((T, F))
    y, scores = L.MultiHeadAttention(2, 3)(inp, inp, return_attention_scores=True)
    with pytest.raises(UnsupportedLayerError) as info:
        rnnfast.from_keras(keras.Model(inp, y))
    assert info.value.option == "return_attention_scores"
