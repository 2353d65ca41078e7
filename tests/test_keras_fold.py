"""BatchNormalization folded into the Dense / Conv1D before it at load: against live
Keras 3 and against the unfolded path (``keras_graph.FOLD_BATCH_NORM = False``), and
where folding is not legal (an activation or a second reader in between) left apart."""

import keras
import numpy as np
import pytest

import rnnfast
from rnnfast.io import keras_graph

from _testing import SEQ_B as B
from _testing import SEQ_F as F
from _testing import SEQ_T as T
from _testing import assert_like_keras, lively, masked_input, tol

L = keras.layers


def _bn_variances(model):
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            w = layer.get_weights()
            w[-1] = np.abs(w[-1]) + 0.5
            layer.set_weights(w)
    return model


def _seq(*layers):
    return keras.Sequential([keras.Input((T, F))] + list(layers))


def _branch():
    inp = keras.Input((T, F))
    h = L.Dense(4)(inp)
    return keras.Model(inp, [L.BatchNormalization()(h), h])


CASES = {
    # folded
    "dense-bn": (lambda: _seq(L.Masking(), L.Dense(4), L.BatchNormalization(), L.GRU(3)), True),
    "dense-nobias-bn": (lambda: _seq(L.Dense(4, use_bias=False), L.BatchNormalization(center=False)), True),
    "conv-bn-relu": (
        lambda: _seq(L.Conv1D(6, 3, padding="same"), L.BatchNormalization(), L.Activation("relu"), L.GRU(2)),
        True,
    ),
    "separable-bn": (lambda: _seq(L.SeparableConv1D(4, 3), L.BatchNormalization(scale=False)), True),
    "depthwise-bn": (lambda: _seq(L.DepthwiseConv1D(2, depth_multiplier=2), L.BatchNormalization()), True),
    # not folded
    "conv-relu-bn": (lambda: _seq(L.Conv1D(6, 3, activation="relu"), L.BatchNormalization()), False),
    "dense-output-read-twice": (_branch, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_like_keras_and_unfolded(case, tmp_path, monkeypatch):
    build, folds = CASES[case]
    model = _bn_variances(lively(build(), seed=3))
    x = masked_input((B, T, F), seed=4)
    want = model.predict(x, verbose=0)
    p = str(tmp_path / "m.keras")
    model.save(p)
    m = rnnfast.load(p)
    bns = [n for n in m.layers if n.keras_class == "BatchNormalization"]
    assert all((n.folded_into is not None) == folds for n in bns), [n.describe() for n in bns]
    got = m.predict(x)
    assert_like_keras(got, want)
    assert m.count_params() == model.count_params()
    for g, w in zip(rnnfast.from_keras(model).get_weights(), model.get_weights()):
        np.testing.assert_array_equal(g, w)  # Keras' weights, not the folded ones
    monkeypatch.setattr(keras_graph, "FOLD_BATCH_NORM", False)
    apart = rnnfast.load(p)
    assert all(n.folded_into is None for n in apart.layers if n.keras_class == "BatchNormalization")
    ref = apart.predict(x)
    for g, r in zip(got if isinstance(got, list) else [got], ref if isinstance(ref, list) else [ref]):
        np.testing.assert_allclose(g, r, **tol(np.float32))
