"""Models that travel: a pickle carries the canonical weights once (no packed copies),
arrives read-only and repacked for the CPU it lands on, and computes bitwise what the
original computes -- also in a spawned process and through out-of-band buffers
(pickle protocol 5, what Dask and Ray use)."""

import multiprocessing
import os
import pickle

import numpy as np
import pytest

import rnnfast
from rnnfast.layers import Dense, RNNLayer
from rnnfast.model import Sequential

from _testing import random_weights

DATA = os.path.join(os.path.dirname(rnnfast.__file__), "data")


def _weight_bytes(model):
    """The model's parameters (as the source framework counts them) in bytes."""
    return sum(r["parameters"] for r in model.summary_rows()) * model.dtype.itemsize


def _rnn_layers(model):
    if isinstance(model, rnnfast.TorchRNN):
        return list(model.layers)
    out = []
    for node in model.layers:
        for sub in (node, getattr(node, "forward_node", None), getattr(node, "backward_node", None)):
            out += list(getattr(sub, "rnn_layers", []) or [])
    return out


#: What a layer makes on its first call and keeps (its bound entry, its plans): not pickled.
_ON_FIRST_USE = {"_entry", "_plans"}


def _assert_same_layer(a, b):
    """Every attribute equal, arrays bitwise (the packed copies included)."""
    assert set(vars(a)) - _ON_FIRST_USE == set(vars(b)) - _ON_FIRST_USE
    for k, v in vars(a).items():
        if k in _ON_FIRST_USE:
            continue
        w = getattr(b, k)
        if isinstance(v, np.ndarray):
            assert w.dtype == v.dtype and w.shape == v.shape and w.tobytes() == v.tobytes(), k
            assert not w.flags.writeable, k
        else:
            assert w == v, k


def _bigru(rng, I=16, H=96, L=2):
    layers = []
    for k in range(L):
        layers.append(RNNLayer("gru", [random_weights(rng, "gru", I if k == 0 else 2 * H, H) for _ in range(2)]))
    return rnnfast.TorchRNN(layers, batch_first=True)


def _models(rng):
    return {
        "bigru": _bigru(rng),
        "digits_bigru.keras": rnnfast.load(os.path.join(DATA, "digits_bigru.keras")),
        "digits_lstm.pt": rnnfast.load(os.path.join(DATA, "digits_lstm.pt"), batch_first=True),
    }


@pytest.fixture(scope="module")
def models():
    return _models(np.random.default_rng(7))


def _predict(model, x, **kw):
    if isinstance(model, rnnfast.TorchRNN):
        return model(x, **kw)
    return model.predict(x, **kw)


def _equal(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", ["bigru", "digits_bigru.keras", "digits_lstm.pt"])
def test_pickle_carries_weights_once_and_computes_bitwise(models, name):
    model = models[name]
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) <= 1.1 * _weight_bytes(model), (len(blob), _weight_bytes(model))
    back = pickle.loads(blob)
    for a, b in zip(_rnn_layers(model), _rnn_layers(back)):
        _assert_same_layer(a, b)
    x = np.random.default_rng(1).standard_normal((37, 12, 8 if name != "bigru" else 16)).astype(np.float32)
    for nt in (1, 2):
        assert _equal(_predict(model, x, num_threads=nt), _predict(back, x, num_threads=nt))


def test_keras_bidirectional_shares_its_directions(models):
    """The forward and backward layers a fused Bidirectional keeps arrive as views of
    the fused layer's weights: one copy in memory too."""
    model = pickle.loads(pickle.dumps(models["digits_bigru.keras"]))
    for node in model.layers:
        if getattr(node, "fused", None) is None:
            continue
        for d, sub in enumerate((node.forward_node, node.backward_node)):
            layer = sub.rnn_layers[0]
            assert layer.num_directions == 1 and layer.go_backwards == bool(d)
            kept = [k for k, v in vars(layer).items() if isinstance(v, np.ndarray) and v.size]
            assert "_Wp" in kept or "_W" in kept
            for k in kept:  # canonical or packed, whichever the layers keep
                assert np.shares_memory(vars(layer)[k], vars(node.fused)[k]), k
            assert layer._W.tobytes() == node.fused._W[d].tobytes()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_every_protocol_and_out_of_band_buffers(models, protocol):
    model = models["bigru"]
    x = np.random.default_rng(2).standard_normal((9, 20, 16)).astype(np.float32)
    want = model(x, num_threads=1)
    if protocol < 5:
        back = pickle.loads(pickle.dumps(model, protocol=protocol))
    else:
        buffers = []
        blob = pickle.dumps(model, protocol=5, buffer_callback=buffers.append)
        # the buffers as a receiver may hold them: read-only and misaligned
        shifted = []
        for b in buffers:
            raw = bytearray(len(b.raw()) + 1)
            raw[1:] = b.raw()
            shifted.append(memoryview(bytes(raw))[1:])
        back = pickle.loads(blob, buffers=shifted)
        for layer in back.layers:
            assert layer._W.flags.aligned and layer._W.flags.c_contiguous
    assert _equal(back(x, num_threads=1), want)


@pytest.mark.parametrize(
    "spec",
    [
        dict(cell="lstm", P=5),
        dict(cell="gru", reset_after=False),
        dict(cell="simple", activation="relu"),
        dict(cell="lstm", dtype=np.float64),
        dict(cell="gru", H=200),
    ],
)
def test_layer_variants(spec):
    rng = np.random.default_rng(3)
    spec = dict(spec)
    cell, P, H = spec.pop("cell"), spec.pop("P", 0), spec.pop("H", 24)
    layer = RNNLayer(cell, [random_weights(rng, cell, 6, H, P=P) for _ in range(2)], **spec)
    back = pickle.loads(pickle.dumps(layer))
    _assert_same_layer(layer, back)
    x = rng.standard_normal((15, 7, 6))
    lengths = rng.integers(0, 16, 7)
    assert _equal(layer(x, lengths=lengths)[:2], back(x, lengths=lengths)[:2])


def test_sequential_and_dense():
    rng = np.random.default_rng(4)
    model = Sequential(
        [
            (RNNLayer("gru", [random_weights(rng, "gru", 5, 16)] * 2), dict(return_sequences=False)),
            Dense(rng.standard_normal((32, 3)), rng.standard_normal(3), activation="softmax"),
        ]
    )
    back = pickle.loads(pickle.dumps(model))
    assert not back.layers[1].kernel.flags.writeable
    x = rng.standard_normal((4, 9, 5))
    assert _equal(model(x), back(x))


def test_pickle_from_another_version_is_refused():
    layer = RNNLayer("gru", [random_weights(np.random.default_rng(5), "gru", 3, 4)])
    state = layer.__getstate__()
    state["_pickle_format"] = 0
    fresh = RNNLayer.__new__(RNNLayer)
    with pytest.raises(rnnfast.FormatError, match="another rnnfast version"):
        fresh.__setstate__(state)


def _child(blob, x):
    model = pickle.loads(blob)
    layer = model.layers[0]
    return model(x, num_threads=1), layer._Wp.size, rnnfast.layers._kernels.isa()


def test_spawned_worker_on_a_lower_isa_repacks(models):
    """A model pickled here arrives in a fresh process that runs another instruction set
    (RNNFAST_ISA=avx2): it packs its own copies for that CPU (the pickle carries the
    canonical weights only) and computes the same numbers to the contract's tolerance."""
    model = models["bigru"]
    x = np.random.default_rng(6).standard_normal((5, 30, 16)).astype(np.float32)
    want = model(x, num_threads=1)
    blob = pickle.dumps(model)
    old = os.environ.get("RNNFAST_ISA")
    os.environ["RNNFAST_ISA"] = "avx2"
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            (out, h), wp_size, isa = pool.apply(_child, (blob, x))
    finally:
        if old is None:
            del os.environ["RNNFAST_ISA"]
        else:
            os.environ["RNNFAST_ISA"] = old
    if rnnfast.layers._kernels.best_isa() in ("avx2", "avx512"):
        assert isa == "avx2"
        # float32 projections run on packed weights on every instruction set
        assert wp_size == model.layers[0]._Wp.size > 0
    np.testing.assert_allclose(out, want[0], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(h, want[1], atol=1e-5, rtol=1e-4)
