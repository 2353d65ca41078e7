"""Whole-model HDF5 files written by tf.keras 2 (tf_keras 2.21) holding the layers
beyond the recurrent ones, against the outputs tf_keras computed for them
(tests/fixtures/keras2_layers, made by its make_fixtures.py): Conv1D and its kin,
poolings, step layers, BatchNormalization, LayerNormalization, TimeDistributed, the
toxic-comment BiGRU with pooled heads, the merges, Attention / AdditiveAttention /
MultiHeadAttention with masks, the seq2seq training model and inference decoder step,
nested models (a shared Sequential, a functional head), and Keras 2's CuDNNGRU /
CuDNNLSTM (expected outputs: Keras loading those weights into GRU / LSTM)."""

import glob
import json
import os

import h5py
import numpy as np
import pytest

import rnnfast

from _testing import TOL

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "keras2_layers")
FIXTURES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(HERE, "*.h5")))


def _expected(name):
    d = np.load(os.path.join(HERE, name + ".npz"))
    xs = [d["x%d" % i] for i in range(sum(k.startswith("x") for k in d.files))]
    ys = [d["y%d" % i] for i in range(sum(k.startswith("y") for k in d.files))]
    return xs, ys, str(d["keras_version"])


def test_all_fixtures_present():
    assert set(FIXTURES) >= {
        "crnn",
        "conv_pool_steps",
        "norms_masked",
        "toxic_bigru_pooled",
        "merges",
        "attention",
        "multi_head_attention",
        "seq2seq_train",
        "seq2seq_decoder_step",
        "nested_shared",
        "nested_two_deep",
        "time_distributed_models",
        "cudnn_gru",
        "cudnn_lstm",
    }


@pytest.mark.parametrize("name", FIXTURES)
def test_tf_keras_fixture(name):
    xs, ys, version = _expected(name)
    assert version.startswith("2.")
    m = rnnfast.load(os.path.join(HERE, name + ".h5"))
    assert m.keras_version == version
    got = m.predict(xs if len(xs) > 1 else xs[0])
    if len(ys) == 1:
        assert isinstance(got, np.ndarray)
        got = [got]
    else:
        assert isinstance(got, list) and len(got) == len(ys)
    for i, (g, y) in enumerate(zip(got, ys)):
        assert g.shape == y.shape and g.dtype == y.dtype, (i, g.shape, y.shape, g.dtype, y.dtype)
        np.testing.assert_allclose(g, y, err_msg="%s output %d" % (name, i), **TOL[np.dtype(np.float32)])


def test_cudnn_layers_named_and_counted():
    """A cuDNN layer keeps its class in the summary and its parameters as Keras counts
    them (cuDNN's two bias vectors)."""
    m = rnnfast.load(os.path.join(HERE, "cudnn_gru.h5"))
    rows = [r for r in m.summary_rows() if r["type"].startswith("CuDNN")]
    assert [r["type"] for r in rows] == ["CuDNNGRU", "CuDNNGRU"]
    # kernel + recurrent kernel + 2 biases per gate: 3 * (I*H + H*H + 2H)
    assert rows[0]["parameters"] == 3 * (6 * 7 + 7 * 7 + 2 * 7)
    m = rnnfast.load(os.path.join(HERE, "cudnn_lstm.h5"))
    bidi = next(r for r in m.summary_rows() if r["type"].startswith("Bidirectional"))
    assert bidi["parameters"] == 2 * 4 * (6 * 6 + 6 * 6 + 2 * 6)


@pytest.mark.parametrize("option, value", [("stateful", True), ("time_major", True), ("activation", "relu")])
def test_cudnn_options_refused(tmp_path, option, value):
    """cuDNN layers have fixed activations and no state between calls: an option that
    would change that is refused by name (the weights file with an edited config)."""
    path = os.path.join(HERE, "cudnn_gru.h5")
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    layer = next(x for x in config["config"]["layers"] if x["class_name"] == "CuDNNGRU")
    layer["config"][option] = value
    with pytest.raises(rnnfast.UnsupportedLayerError) as info:
        rnnfast.load(path, config=json.dumps(config))
    assert info.value.layer_class == "CuDNNGRU" and info.value.option == option
