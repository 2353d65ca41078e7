"""Keras (tf.keras 2.15) models exported with tf2onnx 1.16 run whole and match Keras and
ONNX Runtime (tests/fixtures/tf2onnx, made by tests/fixtures/make_tf2onnx_fixtures.py):
GRU reset_after True and False, stacked LSTMs, Bidirectional LSTM and GRU,
Embedding(mask_zero) -> LSTM -> Dense, Conv1D -> MaxPooling1D -> GRU -> Dense, and
LSTMs -> GlobalAveragePooling1D -> Dense(softmax).

tf2onnx writes a fused ``LSTM`` / ``GRU`` node where it can, and the Keras while loop as
an ONNX ``Loop`` where it cannot (a masked LSTM, a ``reset_after=False`` GRU); Conv1D and
MaxPooling1D become 2-D nodes with a unit axis."""

import glob
import os

import numpy as np
import pytest

import rnnfast

from _testing import assert_close

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "tf2onnx")
FIXTURES = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(HERE, "*.onnx")))


def _load(name):
    d = np.load(os.path.join(HERE, name + ".npz"))
    return os.path.join(HERE, name + ".onnx"), d["x"], d["y"]


def test_all_fixtures_present():
    assert set(FIXTURES) == {
        "gru_reset_after",
        "gru_reset_before",
        "lstm",
        "bidirectional",
        "embedding_mask_lstm",
        "conv_pool_gru",
        "stacked_lstm_softmax",
    }


def test_the_fixtures_hold_what_tf2onnx_writes():
    """The files exercise the paths they are here for (a regenerated fixture that lost
    its Loop would silently test less)."""
    onnx = pytest.importorskip("onnx")
    ops = {name: {n.op_type for n in onnx.load(_load(name)[0]).graph.node} for name in FIXTURES}
    assert "Loop" in ops["gru_reset_before"] and "Loop" in ops["embedding_mask_lstm"]
    assert "LSTM" in ops["bidirectional"] and "GRU" in ops["bidirectional"]
    assert {"Conv", "MaxPool", "GRU"} <= ops["conv_pool_gru"]


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_keras(name):
    path, x, y = _load(name)
    model = rnnfast.load(path)
    got = model.predict(x)
    assert got.shape == y.shape
    assert_close(got, y, np.float32, name)
    # a smaller batch and a shorter sequence (the batch and time axes are symbolic)
    part = x[:2, :9]
    one = model.predict(part, num_threads=1)
    two = model.predict(part, num_threads=2)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    path, x, _ = _load(name)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    model = rnnfast.load(path)
    assert [i.name for i in model.get_inputs()] == [i.name for i in sess.get_inputs()]
    for part in (x, x[:1, :5]):
        feed = {sess.get_inputs()[0].name: part}
        want = sess.run(None, feed)
        got = model.run(None, feed)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert_close(g, w, np.float32, name)
