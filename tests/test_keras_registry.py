"""The Keras layer registry (rnnfast.io.keras_layers) and the Keras conventions of
KerasModel, against live Keras 3 (torch backend).

- every registered class has a converter, a parameter count and a summary row, and a
  model holding every registered class is counted as Keras counts it;
- GlobalMaxPooling1D / GlobalAveragePooling1D, with and without masks, from the three
  sources (.keras, .h5, the live model);
- ``predict(x, batch_size, verbose, *, num_threads)``, ``model(x, training=False)``,
  ``count_params()``, ``get_weights()``, ``output_shape`` as Keras has them.
"""

import inspect
import os

import numpy as np
import pytest

from _testing import SEQ_B, SEQ_F, SEQ_T, assert_like_keras, functional, lively, masked_ids, masked_input

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras

import rnnfast
from rnnfast.io import keras_layers

L = keras.layers
T, F, B = SEQ_T, SEQ_F, SEQ_B


def seq(*layers, shape=(T, F), dtype="float32", name=None):
    return keras.Sequential([keras.Input(shape, dtype=dtype)] + list(layers), name=name)


# -- the registry ------------------------------------------------------------------------------


def test_every_entry_is_complete():
    assert set(keras_layers.SUPPORTED_LAYERS) == set(keras_layers.LAYERS) | {"InputLayer"}
    for name, entry in keras_layers.LAYERS.items():
        assert entry.name == name
        for fn in (entry.convert, entry.params, entry.row):
            assert callable(fn), (name, fn)
        assert isinstance(entry.weights, bool) and isinstance(entry.per_step, bool)
    # the fields a new entry cannot leave out
    required = [
        f
        for f, p in inspect.signature(keras_layers.KerasLayer).parameters.items()
        if p.default is inspect.Parameter.empty
    ]
    assert required == ["name", "convert", "weights", "params", "row"]


def _every_class_models():
    """Models that between them hold every registered Keras class."""
    models = [
        seq(
            L.Masking(name="mask"),
            L.GRU(4, return_sequences=True, name="gru"),
            L.LSTM(3, return_sequences=True, name="lstm"),
            L.SimpleRNN(3, return_sequences=True, name="simple"),
            L.RNN([L.GRUCell(3), L.LSTMCell(2)], return_sequences=True, name="rnn"),
            L.Bidirectional(L.GRU(2, return_sequences=True), name="bidi"),
            L.TimeDistributed(L.Dense(3), name="td"),
            L.Dense(4, activation="relu", name="dense"),
            L.Activation("tanh", name="act"),
            L.Dropout(0.1, name="drop"),
            L.SpatialDropout1D(0.1, name="sdrop"),
            L.GaussianNoise(0.1, name="gnoise"),
            L.GaussianDropout(0.1, name="gdrop"),
            L.AlphaDropout(0.1, name="adrop"),
            L.ActivityRegularization(0.1, name="actreg"),
            L.Identity(name="ident"),
            L.GlobalAveragePooling1D(name="gap"),
            L.Dense(2, name="out"),
            name="every_a",
        ),
        seq(
            L.Embedding(9, 4, mask_zero=True, name="emb"),
            L.GRU(3, return_sequences=True, name="g"),
            L.GlobalMaxPooling1D(name="gmp"),
            shape=(T,),
            dtype="int32",
            name="every_b",
        ),
        seq(L.GRU(3, return_sequences=True, name="g2"), L.Flatten(name="flat"), L.Dense(2, name="d2"), name="every_c"),
        seq(
            L.Conv1D(4, 3, padding="same", name="conv"),
            L.DepthwiseConv1D(2, name="dw"),
            L.SeparableConv1D(3, 2, name="sep"),
            L.MaxPooling1D(name="maxp"),
            L.UpSampling1D(name="up"),
            L.AveragePooling1D(2, name="avgp"),
            L.ZeroPadding1D(name="zpad"),
            L.Cropping1D(name="crop"),
            L.BatchNormalization(name="bn"),
            L.LayerNormalization(name="ln"),
            L.UnitNormalization(name="un"),
            L.Normalization(mean=0.5, variance=2.0, name="norm"),
            L.GRU(4, name="g3"),
            L.RepeatVector(4, name="rep"),
            L.Reshape((2, 8), name="resh"),
            L.Permute((2, 1), name="perm"),
            name="every_d",
        ),
    ]
    a, b = keras.Input((T, F), name="in_a"), keras.Input((T, F), name="in_b")
    ga, gb = L.GRU(3, name="ga")(a), L.GRU(3, name="gb")(b)
    merged = [
        L.Add(name="add")([ga, gb]),
        L.Subtract(name="sub")([ga, gb]),
        L.Multiply(name="mul")([ga, gb]),
        L.Average(name="avg")([ga, gb]),
        L.Maximum(name="max")([ga, gb]),
        L.Minimum(name="min")([ga, gb]),
        L.Dot(axes=1, name="dot")([ga, gb]),
    ]
    models.append(keras.Model([a, b], L.Concatenate(name="cat")(merged), name="every_e"))
    sa, sb = L.GRU(3, return_sequences=True, name="sa")(a), L.GRU(3, return_sequences=True, name="sb")(b)
    models.append(
        keras.Model(
            [a, b],
            [
                L.Attention(use_scale=True, name="att")([sa, sb]),
                L.AdditiveAttention(name="addatt")([sa, sb]),
                L.MultiHeadAttention(2, 3, value_dim=2, name="mha")(sa, sb),
            ],
            name="every_f",
        )
    )
    return [lively(m, seed=i) for i, m in enumerate(models)]


def test_every_registered_class_is_counted_and_summarized_like_keras():
    """A model holding every registered class: each layer's row, its parameters (as
    Keras' count_params), the total, and the registry has no class no model covers
    (a new entry must join a model here)."""
    seen = set()
    for km in _every_class_models():
        m = rnnfast.from_keras(km)
        assert m.count_params() == km.count_params()
        rows = {r["name"]: r for r in m.summary_rows()}
        for layer in km.layers:
            if isinstance(layer, L.InputLayer):
                continue
            node = next(n for n in m.layers if n.name == layer.name)
            seen.add(node.keras_class)
            assert node.summary_row is not None and len(node.summary_row) == 3, layer.name
            assert node.num_params == layer.count_params(), layer.name
            assert rows[layer.name]["parameters"] == layer.count_params()
            assert rows[layer.name]["type"].startswith(node.keras_class.split("(")[0]), rows[layer.name]
    # Keras 2's cuDNN layers do not exist in Keras 3: their rows and counts are checked
    # on tf.keras files (test_keras2_layer_fixtures.py)
    assert seen | {"CuDNNGRU", "CuDNNLSTM"} == set(keras_layers.LAYERS)


def test_expects_weights_follows_the_registry():
    assert keras_layers.expects_weights("GRU") and keras_layers.expects_weights("Dense")
    assert not keras_layers.expects_weights("GlobalMaxPooling1D")
    assert not keras_layers.expects_weights("NoSuchLayer")


# -- global pooling -------------------------------------------------------------------------------

POOLING = {
    "gap": lambda: seq(L.GRU(4, return_sequences=True), L.GlobalAveragePooling1D(), L.Dense(2)),
    "gmp": lambda: seq(L.GRU(4, return_sequences=True), L.GlobalMaxPooling1D(), L.Dense(2)),
    "gap-masked": lambda: seq(L.Masking(), L.LSTM(4, return_sequences=True), L.GlobalAveragePooling1D()),
    "gmp-masked": lambda: seq(L.Masking(), L.LSTM(4, return_sequences=True), L.GlobalMaxPooling1D()),
    "gap-masked-input": lambda: seq(L.Masking(), L.GlobalAveragePooling1D(keepdims=True)),
    "gmp-keepdims": lambda: seq(
        L.Masking(), L.GRU(3, return_sequences=True, go_backwards=True), L.GlobalMaxPooling1D(keepdims=True)
    ),
    "gap-bidi-functional": lambda: functional(
        lambda i: L.Dense(2)(
            L.GlobalAveragePooling1D()(L.Bidirectional(L.GRU(3, return_sequences=True))(L.Masking()(i)))
        )
    ),
    "gmp-functional": lambda: functional(
        lambda i: L.GlobalMaxPooling1D()(L.SimpleRNN(3, return_sequences=True)(L.Masking()(i)))
    ),
    "gap-embedding": lambda: seq(
        L.Embedding(7, 4, mask_zero=True),
        L.GRU(3, return_sequences=True),
        L.GlobalAveragePooling1D(),
        shape=(T,),
        dtype="int32",
    ),
    "gmp-embedding": lambda: seq(L.Embedding(7, 4, mask_zero=True), L.GlobalMaxPooling1D(), shape=(T,), dtype="int32"),
}


@pytest.mark.parametrize("name", sorted(POOLING))
def test_global_pooling_like_keras(name, tmp_path):
    model = lively(POOLING[name](), seed=len(name))
    x = masked_ids((B, T), 7) if "embedding" in name else masked_input((B, T, F))
    want = model.predict(x, verbose=0)
    sources = {"live": rnnfast.from_keras(model)}
    for ext in ("keras", "h5"):
        p = str(tmp_path / ("m." + ext))
        model.save(p)
        sources[ext] = rnnfast.load(p)
    for src, m in sources.items():
        if np.isnan(want).any():
            # a row masked everywhere averages nothing: NaN in Keras and here
            assert name.startswith("gap")
            np.testing.assert_array_equal(np.isnan(m.predict(x)), np.isnan(want))
            keep = ~np.isnan(want)
            np.testing.assert_allclose(m.predict(x)[keep], want[keep], atol=1e-5, rtol=1e-4, err_msg=src)
        else:
            assert_like_keras(m.predict(x), want, what=src)
        assert m.count_params() == model.count_params()
        assert m.output_shape == model.output_shape, src


def test_global_pooling_refuses_channels_first():
    model = seq(L.GRU(3, return_sequences=True), L.GlobalAveragePooling1D(data_format="channels_first"))
    with pytest.raises(rnnfast.UnsupportedLayerError, match="data_format"):
        rnnfast.from_keras(model)


def test_global_pooling_needs_a_sequence():
    model = seq(L.GRU(3), L.Dense(2))  # fine; pooling a 2-D input is not
    cfg = {
        "class_name": "Sequential",
        "config": {
            "name": "s",
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_shape": [None, T, F], "name": "in"}},
                {"class_name": "GRU", "config": dict(model.layers[0].get_config())},
                {"class_name": "GlobalMaxPooling1D", "config": {"name": "p", "data_format": "channels_last"}},
            ],
        },
    }
    from rnnfast.io.keras_file import build_model

    def weights(name, cls, c):
        return list(zip([None] * 3, model.layers[0].get_weights())) if cls == "GRU" else []

    with pytest.raises(rnnfast.FormatError, match="GlobalMaxPooling1D"):
        build_model(cfg, weights, keras.__version__)


# -- Keras conventions ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def convention_models():
    a = lively(
        seq(
            L.Masking(),
            L.Bidirectional(L.GRU(4, return_sequences=True)),
            L.LSTM(3, return_sequences=True),
            L.RNN([L.GRUCell(2, reset_after=False), L.SimpleRNNCell(2)]),
            L.Dense(2, activation="softmax"),
            name="conv_a",
        ),
        seed=21,
    )
    b = lively(
        seq(
            L.Embedding(7, 3, mask_zero=True),
            L.Bidirectional(
                L.LSTM(3, return_sequences=True), backward_layer=L.GRU(3, return_sequences=True, go_backwards=True)
            ),
            L.TimeDistributed(L.Dense(2, use_bias=False)),
            shape=(T,),
            dtype="int32",
            name="conv_b",
        ),
        seed=22,
    )
    c = lively(functional(lambda i: L.LSTM(4, return_state=True)(L.Masking()(i)), shape=(None, F)), seed=23)
    d = lively(
        seq(L.SimpleRNN(3, return_sequences=True, use_bias=False), L.Flatten(), L.Dense(2), name="conv_d"), seed=24
    )
    return [
        (a, masked_input((B, T, F))),
        (b, masked_ids((B, T), 7)),
        (c, masked_input((B, T, F))),
        (d, masked_input((B, T, F))),
    ]


def test_count_params_get_weights_output_shape_like_keras(convention_models, tmp_path):
    for km, _x in convention_models:
        p = str(tmp_path / (km.name + ".keras"))
        km.save(p)
        for m in (rnnfast.from_keras(km), rnnfast.load(p)):
            assert m.count_params() == km.count_params(), km.name
            got, want = m.get_weights(), km.get_weights()
            assert [w.shape for w in got] == [w.shape for w in want], km.name
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
            assert m.output_shape == km.output_shape, km.name
    # the weights are copies
    m = rnnfast.from_keras(convention_models[0][0])
    m.get_weights()[0][...] = 0
    assert np.any(m.get_weights()[0] != 0)


def test_weights_round_trip_into_keras(convention_models):
    """Keras given rnnfast's get_weights() computes what it computed."""
    km, x = convention_models[0]
    want = km.predict(x, verbose=0)
    clone = keras.models.clone_model(km)
    clone.set_weights(rnnfast.from_keras(km).get_weights())
    np.testing.assert_allclose(clone.predict(x, verbose=0), want, atol=1e-6)


def test_predict_and_call_take_keras_arguments(convention_models):
    km, x = convention_models[0]
    m = rnnfast.from_keras(km)
    want = km.predict(x, verbose=0)
    assert_like_keras(m.predict(x, 2), want)  # batch_size, Keras' 2nd positional
    assert_like_keras(m.predict(x, 2, 0), want)  # verbose, the 3rd
    assert_like_keras(m.predict(x, batch_size=3, verbose="auto", num_threads=2), want)
    assert_like_keras(m(x), want)
    assert_like_keras(m(x, training=False), want)
    assert_like_keras(m(x, False), want)
    assert_like_keras(m(x, num_threads=1), want)
    assert_like_keras(m(x), keras.ops.convert_to_numpy(km(x, training=False)))
    with pytest.raises(ValueError, match="training"):
        m(x, training=True)
    with pytest.raises(TypeError):
        m.predict(x, 2, 0, 1)  # num_threads is keyword-only
    params = inspect.signature(rnnfast.KerasModel.predict).parameters
    assert list(params)[:4] == ["self", "x", "batch_size", "verbose"]
    assert params["num_threads"].kind is inspect.Parameter.KEYWORD_ONLY
    kparams = inspect.signature(type(km).predict).parameters
    assert list(kparams)[:4] == ["self", "x", "batch_size", "verbose"]


def test_torch_call_convention_unchanged():
    params = inspect.signature(rnnfast.TorchRNN.forward).parameters
    assert list(params)[:3] == ["self", "x", "hx"]
    assert params["lengths"].kind is params["num_threads"].kind is inspect.Parameter.KEYWORD_ONLY


def test_models_describe_themselves(convention_models):
    km, x = convention_models[1]
    d = rnnfast.from_keras(km).describe()
    assert d["framework"] == "Keras" and d["integer_input"] and d["vocabulary"] == 7
    assert d["input_shape"] == (None, None) and len(d["layers"]) == len(km.layers)
