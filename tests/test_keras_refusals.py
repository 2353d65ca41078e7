"""What the Keras loader refuses, and how: unsupported layers and options
(UnsupportedLayerError naming the layer class and option, at load), files that are not
Keras models (FormatError), bad input (ValueError stating expected and got), and the
loading path never importing Keras or TensorFlow."""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import rnnfast
from rnnfast import FormatError, UnsupportedLayerError

from _testing import SEQ_F, SEQ_T, lively, masked_input, seq

L = keras.layers
T, F = SEQ_T, SEQ_F


def refused(model, layer_class, option=None, tmp_path=None):
    """The live model and (when tmp_path is given) its .keras file are refused alike."""
    sources = [lambda: rnnfast.from_keras(model)]
    if tmp_path is not None:
        p = str(tmp_path / "m.keras")
        model.save(p)
        sources.append(lambda: rnnfast.load(p))
    for load in sources:
        with pytest.raises(UnsupportedLayerError) as info:
            load()
        assert info.value.layer_class == layer_class, str(info.value)
        assert info.value.option == option, str(info.value)
        assert layer_class in str(info.value)
        if option is not None:
            assert option in str(info.value)


def test_unsupported_layer(tmp_path):
    # (Conv1D, refused here before, is supported now: tests/test_keras_layers_conv_norm.py)
    refused(seq(L.Conv1DTranspose(4, 3), L.GRU(3)), "Conv1DTranspose", tmp_path=tmp_path)


def test_formerly_refused_conv1d_runs(tmp_path):
    from test_keras_models import assert_like_keras

    model = lively(seq(L.Conv1D(4, 3), L.GRU(3)))
    x = masked_input((5, T, F))
    p = str(tmp_path / "c.keras")
    model.save(p)
    assert_like_keras(rnnfast.load(p).predict(x), model.predict(x, verbose=0))


def test_unsupported_wrapped_layers():
    # (TimeDistributed(Flatten) on 4-D input runs: tests/test_keras_time_distributed.py)
    refused(seq(L.TimeDistributed(L.Embedding(5, 2)), shape=(T, F)), "TimeDistributed", "layer")
    refused(
        keras.Sequential([keras.Input(batch_shape=(2, T, F)), L.Bidirectional(L.RNN(L.GRUCell(3), stateful=True))]),
        "RNN",
        "stateful",
    )


@pytest.mark.parametrize(
    "cell, option, value",
    [(L.GRU, "activation", "gelu"), (L.LSTM, "recurrent_activation", "relu6"), (L.SimpleRNN, "activation", "swish")],
)
def test_recurrent_activation_not_in_kernels(cell, option, value):
    refused(seq(cell(3, **{option: value})), cell.__name__, option)


def _runs_like_keras(model, x, tmp_path):
    """Formerly refused graph shapes (branches, merges, several inputs, shared layers):
    now loaded and run as Keras runs them (tests/test_keras_graph.py has the grid)."""
    from test_keras_models import assert_like_keras

    lively(model)
    want = model.predict(x, verbose=0)
    p = str(tmp_path / "m.keras")
    model.save(p)
    for m in (rnnfast.from_keras(model), rnnfast.load(p)):
        assert_like_keras(m.predict(x), want)


def test_branch(tmp_path):
    inp = keras.Input((T, F))
    x = masked_input((5, T, F))
    _runs_like_keras(keras.Model(inp, [L.GRU(3)(inp), L.LSTM(3)(inp)]), x, tmp_path)
    h = L.GRU(3, return_sequences=True)(inp)
    _runs_like_keras(keras.Model(inp, [L.GRU(2)(h), L.Dense(2)(h)]), x, tmp_path)


def test_merge(tmp_path):
    inp = keras.Input((T, F))
    a, b = L.GRU(3, return_sequences=True)(inp), L.Dense(3)(inp)
    _runs_like_keras(keras.Model(inp, L.Concatenate()([a, b])), masked_input((5, T, F)), tmp_path)


def test_two_inputs(tmp_path):
    a, b = keras.Input((T, F)), keras.Input((T, F))
    x = [masked_input((5, T, F)), masked_input((5, T, F), seed=4)]
    _runs_like_keras(keras.Model([a, b], [L.GRU(3)(a), L.GRU(3)(b)]), x, tmp_path)
    _runs_like_keras(keras.Model([a, b], L.Add()([L.GRU(3)(a), L.GRU(3)(b)])), x, tmp_path)


def test_shared_layer(tmp_path):
    inp = keras.Input((T, F))
    d = L.Dense(F)
    _runs_like_keras(keras.Model(inp, L.GRU(2)(d(d(inp)))), masked_input((5, T, F)), tmp_path)


def test_nested_model(tmp_path):
    """A nested model runs (tests/test_keras_nested.py); one holding a layer rnnfast
    cannot run is refused naming that layer."""
    inner = seq(L.GRU(3, return_sequences=True))
    inp = keras.Input((T, F))
    _runs_like_keras(keras.Model(inp, L.GRU(2)(inner(inp))), masked_input((5, T, F)), tmp_path)
    inner = seq(L.Lambda(lambda t: t * 2))
    refused(keras.Model(inp, L.GRU(2)(inner(inp))), "Lambda")


def test_lambda_and_ops():
    refused(seq(L.Lambda(lambda t: t * 2), L.GRU(2)), "Lambda")
    inp = keras.Input((T, F))
    refused(keras.Model(inp, L.GRU(2)(keras.ops.add(inp, 1.0))), "Add")


def test_explicit_mask_argument():
    """A mask rnnfast would not derive itself is refused, not ignored."""
    inp = keras.Input((T, F))
    mask = keras.ops.any(keras.ops.not_equal(inp, 1.0), axis=-1)
    refused(keras.Model(inp, L.GRU(2)(inp, mask=mask)), "GRU", "mask")


def test_custom_layer():
    @keras.saving.register_keras_serializable(package="rnnfast_test")
    class Doubler(L.Layer):
        def call(self, x):
            return 2 * x

    refused(seq(Doubler(), L.GRU(2)), "Doubler")


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.gru = L.GRU(2)

        def call(self, x):
            return self.gru(x)

    net = Net()
    net(np.zeros((1, T, F), np.float32))
    with pytest.raises(UnsupportedLayerError) as info:
        rnnfast.from_keras(net)
    assert info.value.layer_class == "Net"


def test_lora_and_mixed_precision():
    d = L.Dense(2)
    model = seq(L.GRU(3), d)
    d.enable_lora(1)
    refused(model, "Dense", "lora_rank")
    refused(seq(L.GRU(3, dtype="mixed_float16")), "GRU", "dtype")


def test_unknown_option_is_refused():
    from rnnfast.io.keras_file import build_model

    model = lively(seq(L.GRU(3)))
    config = {"class_name": "Sequential", "config": model.get_config()}
    weights = {layer.name: [(None, w) for w in layer.get_weights()] for layer in model.layers}
    getter = lambda name, cls, cfg: weights.get(name, [])  # noqa: E731
    assert build_model(config, getter, keras.__version__).predict(masked_input((5, T, F))).shape == (5, 3)
    config["config"]["layers"][1]["config"]["time_window"] = 4
    with pytest.raises(UnsupportedLayerError) as info:
        build_model(config, getter, keras.__version__)
    assert (info.value.layer_class, info.value.option) == ("GRU", "time_window")


# -- files that are not Keras models ------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras_refusals")
    model = lively(seq(L.Masking(), L.GRU(3, return_sequences=True), L.Dense(2)))
    model.save(str(d / "m.keras"))
    model.save(str(d / "m.h5"))
    model.save_weights(str(d / "m.weights.h5"))
    return d, model


def test_weights_only_file(saved):
    d, _ = saved
    with pytest.raises(FormatError, match="model_config"):
        rnnfast.load(str(d / "m.weights.h5"))


def test_foreign_hdf5(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.arange(3)
    with pytest.raises(FormatError):
        rnnfast.load(str(tmp_path / "x.h5"))


def test_truncated_and_corrupt_archives(saved, tmp_path):
    d, _ = saved
    blob = (d / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FormatError):
        rnnfast.load(str(tmp_path / "cut.keras"))
    with zipfile.ZipFile(d / "m.keras") as src, zipfile.ZipFile(tmp_path / "bad.keras", "w") as dst:
        for n in src.namelist():
            dst.writestr(n, b"{not json" if n == "config.json" else src.read(n))
    with pytest.raises(FormatError, match="config.json"):
        rnnfast.load(str(tmp_path / "bad.keras"))


def test_weights_missing_or_misshapen(saved, tmp_path):
    import h5py

    d, _ = saved
    shutil.copy(d / "m.h5", tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "a") as f:
        g = f["model_weights"]
        gru = [k for k in g if k.startswith("gru")][0]
        del g[gru]
    with pytest.raises(FormatError, match="weight"):
        rnnfast.load(str(tmp_path / "a.h5"))
    shutil.copy(d / "m.h5", tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "a") as f:
        g = f["model_weights"]
        dense = g[[k for k in g if k.startswith("dense")][0]]
        name = [n.decode() if isinstance(n, bytes) else n for n in dense.attrs["weight_names"]][0]
        del dense[name]
        dense[name] = np.zeros((7, 2), np.float32)
    with pytest.raises(FormatError, match="shape"):
        rnnfast.load(str(tmp_path / "b.h5"))


def test_unknown_load_option(saved):
    d, _ = saved
    with pytest.raises(TypeError, match="batch_first"):
        rnnfast.load(str(d / "m.keras"), batch_first=True)


# -- bad input -------------------------------------------------------------------------------------


def test_input_validation(saved):
    d, _ = saved
    m = rnnfast.load(str(d / "m.keras"))
    x = masked_input((5, T, F))
    with pytest.raises(
        ValueError, match=r"expected input of shape \(batch, any, %d\), got shape \(5, %d, 4\)" % (F, T)
    ):
        m.predict(x[..., :4])
    with pytest.raises(ValueError, match="expected input of shape"):
        m.predict(x[0])
    with pytest.raises(ValueError, match="numeric"):
        m.predict(np.full((2, T, F), "a"))
    with pytest.raises(ValueError, match="time step"):
        m.predict(x[:, :0])
    assert m.predict(x[:, :3]).shape == (5, 3, 2)  # any length


def test_integer_input_validation():
    model = lively(seq(L.Embedding(7, 3, mask_zero=True), L.GRU(2), shape=(T,), dtype="int32"))
    m = rnnfast.from_keras(model)
    ids = np.random.default_rng(0).integers(0, 7, (3, T))
    np.testing.assert_allclose(m.predict(ids.astype(np.float64)), m.predict(ids))
    with pytest.raises(ValueError, match="ids"):
        m.predict(ids + 0.5)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        m.predict(ids + 7)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        m.predict(-ids - 1)
    with pytest.raises(ValueError, match="expected integer ids of shape"):
        m.predict(ids[..., None])


# -- no Keras or TensorFlow on the loading path ----------------------------------------------------

BLOCKER = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("keras", "tensorflow", "tf_keras"):
                raise ImportError("blocked: " + name)
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import rnnfast

    for path in sys.argv[1:]:
        d = np.load(path + ".npz")
        got = rnnfast.load(path).predict(d["x"])
        got = got if isinstance(got, list) else [got]
        for i, g in enumerate(got):
            np.testing.assert_allclose(g, d["y%d" % i], rtol=1e-4, atol=1e-5)
    assert not any(m.split(".")[0] in ("keras", "tensorflow", "tf_keras") for m in sys.modules)
    print("ok")
""")


def test_loading_never_imports_keras(saved, tmp_path):
    d, model = saved
    x = masked_input((5, T, F))
    np.savez(str(d / "m.keras.npz"), x=x, y0=model.predict(x, verbose=0))
    np.savez(str(d / "m.h5.npz"), x=x, y0=model.predict(x, verbose=0))
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "keras2", "bidirectional.h5")
    shutil.copy(fixture, tmp_path / "k2.h5")
    shutil.copy(fixture[:-3] + ".npz", tmp_path / "k2.h5.npz")
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    files = [str(d / "m.keras"), str(d / "m.h5"), str(tmp_path / "k2.h5")]
    r = subprocess.run([sys.executable, "-c", BLOCKER] + files, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
