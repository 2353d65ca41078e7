"""Convolutions, poolings, normalisations and step-shaping layers against live Keras 3
(torch backend), each option of each layer, with masks where the layer passes them
on; and the numpy ops against their float64 references."""

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
pytestmark = [
    # Keras 3 deprecates rms_scaling=True (it scales by the variance); rnnfast follows what it computes
    pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`:UserWarning")
]

T2 = 12


def seq(*layers, shape=(T2, F)):
    return keras.Sequential([keras.Input(shape)] + list(layers))


CASES = {
    # Conv1D: padding x strides x dilation x groups x data_format x activation
    "conv-valid": lambda: seq(L.Conv1D(4, 3), L.GRU(3)),
    "conv-same-stride2": lambda: seq(L.Conv1D(4, 4, strides=2, padding="same", activation="relu")),
    "conv-same-stride3-odd": lambda: seq(L.Conv1D(3, 3, strides=3, padding="same")),
    "conv-causal-dilated": lambda: seq(L.Conv1D(6, 3, padding="causal", dilation_rate=2, use_bias=False)),
    "conv-groups": lambda: seq(L.Conv1D(6, 2, groups=2, activation="tanh"), shape=(T2, 4)),
    "conv-channels-first": lambda: seq(L.Conv1D(4, 3, data_format="channels_first"), shape=(F, T2)),
    "conv-same-dilated": lambda: seq(L.Conv1D(2, 3, padding="same", dilation_rate=3, activation="gelu")),
    "depthwise": lambda: seq(L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", activation="relu")),
    "depthwise-stride": lambda: seq(L.DepthwiseConv1D(2, strides=2, use_bias=False)),
    "separable": lambda: seq(L.SeparableConv1D(4, 3, depth_multiplier=2, padding="same", activation="elu")),
    "separable-dilated": lambda: seq(L.SeparableConv1D(3, 2, dilation_rate=2, use_bias=False)),
    # pooling
    "maxpool": lambda: seq(L.MaxPooling1D()),
    "maxpool-same-3-2": lambda: seq(L.MaxPooling1D(3, strides=2, padding="same")),
    "avgpool": lambda: seq(L.AveragePooling1D(3)),
    # (same padding split evenly: Keras' torch backend counts an uneven split's zeros in
    # the mean, its TensorFlow backend and rnnfast do not -- tested against the reference)
    "avgpool-same-3-1": lambda: seq(L.AveragePooling1D(3, strides=1, padding="same")),
    "avgpool-same-5-2": lambda: seq(L.AveragePooling1D(5, strides=2, padding="same"), shape=(13, F)),
    "pool-channels-first": lambda: seq(L.MaxPooling1D(2, data_format="channels_first"), shape=(F, T2)),
    "crnn": lambda: seq(
        L.Conv1D(8, 3, padding="same", activation="relu"),
        L.BatchNormalization(),
        L.MaxPooling1D(2),
        L.Bidirectional(L.GRU(4, return_sequences=True)),
        L.GlobalAveragePooling1D(),
        L.Dense(2, activation="softmax"),
    ),
    # normalisations (masks pass through them into the GRU)
    "batchnorm-masked": lambda: seq(L.Masking(), L.BatchNormalization(), L.GRU(3, return_sequences=True)),
    "batchnorm-noscale-nocenter": lambda: seq(L.BatchNormalization(scale=False, center=False, epsilon=0.1)),
    "batchnorm-vector": lambda: seq(L.GRU(4), L.BatchNormalization(), L.Dense(2)),
    "layernorm-masked": lambda: seq(L.Masking(), L.LayerNormalization(), L.GRU(3, return_sequences=True)),
    "layernorm-options": lambda: seq(
        L.LayerNormalization(epsilon=0.01, center=False),
        L.LayerNormalization(scale=False),
        L.LayerNormalization(rms_scaling=True),
    ),
    "unitnorm-masked": lambda: seq(L.Masking(), L.UnitNormalization(), L.LSTM(3, return_sequences=True)),
    "timedistributed-batchnorm": lambda: seq(L.TimeDistributed(L.BatchNormalization()), L.GRU(2)),
    # steps
    "upsampling": lambda: seq(L.UpSampling1D(3), L.GRU(2, return_sequences=True)),
    "zeropadding": lambda: seq(L.ZeroPadding1D((2, 1)), L.GRU(2, return_sequences=True)),
    "zeropadding-int": lambda: seq(L.ZeroPadding1D(2)),
    "cropping": lambda: seq(L.Cropping1D((1, 3)), L.GRU(2, return_sequences=True)),
    "masked-then-steps": lambda: seq(
        L.Masking(), L.ZeroPadding1D(1), L.Cropping1D(1), L.UpSampling1D(2), L.GRU(2, return_sequences=True)
    ),
}


def _fix_variances(model):
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, L.BatchNormalization):
            w = inner.get_weights()
            w[-1] = np.abs(w[-1]) + 0.5
            inner.set_weights(w)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("keras_layers")


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request, workdir):
    model = CASES[request.param]()
    lively(model, seed=zlib.crc32(request.param.encode()))
    _fix_variances(model)
    shape = (B,) + tuple(model.input_shape[1:])
    x = masked_input(shape, seed=3)
    want = model.predict(x, verbose=0)
    return model, x, want, save_keras(model, workdir, request.param)


@pytest.mark.parametrize("source", KERAS_SOURCES)
def test_layer_matches_keras(built, source):
    model, x, want, paths = built
    m = keras_model_from(source, model, paths)
    assert_like_keras(m.predict(x), want, what=source)
    assert m.count_params() == model.count_params()
    if source == "live":
        for got, w in zip(m.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(got, w)


def test_normalization_adapted(tmp_path):
    data = np.random.default_rng(0).standard_normal((40, T, F)).astype(np.float32) * 3 + 1
    norm = L.Normalization()
    norm.adapt(data)
    model = keras.Sequential([keras.Input((T, F)), norm, L.GRU(3)])
    lively_gru = model.layers[-1]
    lively_gru.set_weights(
        [w * 0 + np.random.default_rng(1).uniform(-0.5, 0.5, w.shape).astype(w.dtype) for w in lively_gru.get_weights()]
    )
    x = data[:B]
    want = model.predict(x, verbose=0)
    p = str(tmp_path / "n.keras")
    model.save(p)
    for m in (rnnfast.from_keras(model), rnnfast.load(p)):
        assert_like_keras(m.predict(x), want)
        assert m.count_params() == model.count_params()
    given = keras.Sequential([keras.Input((T, F)), L.Normalization(mean=[1.0] * F, variance=[4.0] * F)])
    assert_like_keras(rnnfast.from_keras(given).predict(x), given.predict(x, verbose=0))


@pytest.mark.parametrize(
    "layer, option",
    [
        (lambda: L.Normalization(invert=True, mean=[0.0] * F, variance=[1.0] * F), "invert"),
        (lambda: L.LayerNormalization(axis=1), "axis"),
        (lambda: L.BatchNormalization(axis=1), "axis"),
        (lambda: L.UnitNormalization(axis=1), "axis"),
    ],
)
def test_refused_options(layer, option):
    model = keras.Sequential([keras.Input((T, F)), layer()])
    with pytest.raises(UnsupportedLayerError) as info:
        rnnfast.from_keras(model)
    assert info.value.option == option


@pytest.mark.parametrize(
    "stride, dilation, padding, groups",
    [(1, 1, (0, 0), 1), (2, 1, (1, 2), 1), (1, 3, (4, 0), 1), (1, 1, (0, 0), 3), (3, 2, (2, 2), 3)],
)
def test_conv1d_against_reference(stride, dilation, padding, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 17, 6))
    k = rng.standard_normal((3, 6 // groups, 9))
    b = rng.standard_normal(9)
    got = ops.conv1d(x, k, b, stride=stride, dilation=dilation, padding=padding, groups=groups)
    want = ops.conv1d_reference(x, k, b, stride=stride, dilation=dilation, padding=padding, groups=groups)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("size, stride, padding", [(2, 2, (0, 0)), (3, 2, (1, 1)), (4, 1, (1, 2))])
def test_pool1d_against_reference(reduce, size, stride, padding):
    x = np.random.default_rng(1).standard_normal((2, 11, 3))
    np.testing.assert_allclose(
        ops.pool1d(x, size, stride, padding, reduce), ops.pool1d_reference(x, size, stride, padding, reduce), rtol=1e-12
    )


def test_norms_against_reference():
    rng = np.random.default_rng(2)
    x, g, b = rng.standard_normal((2, 5, 7)), rng.standard_normal(7), rng.standard_normal(7)
    for rms in (False, True):
        np.testing.assert_allclose(
            ops.layer_norm(x, g, b, 1e-3, rms), ops.layer_norm_reference(x, g, b, 1e-3, rms), rtol=1e-12, atol=1e-12
        )
    np.testing.assert_allclose(ops.unit_norm(x), ops.unit_norm_reference(x), rtol=1e-12)
