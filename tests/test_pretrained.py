"""The bundled pretrained digits models (src/rnnfast/data, made by examples/train_digits.py)
and the Python conveniences: summary(), repr, predict(batch_size=, verbose=).

Expected values come from the frameworks: the probabilities Keras and PyTorch saved at
training, the frameworks loading the bundled files themselves, Keras' count_params()
and PyTorch's numel().
"""

import fnmatch
import json
import os
import re

import keras
import numpy as np
import pytest
import torch

import rnnfast
from rnnfast import demo

from _testing import TOL

FILES = ["digits_bigru.keras", "digits_lstm.pt", "digits_lstm_head.npz", "digits_test.npz", "digits_info.json"]


@pytest.fixture(scope="module")
def split():
    with np.load(demo.data_path("digits_test.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def kmodel():
    return rnnfast.load(demo.data_path("digits_bigru.keras"))


@pytest.fixture(scope="module")
def tmodel():
    return rnnfast.load(demo.data_path("digits_lstm.pt"), batch_first=True)


def head():
    with np.load(demo.data_path("digits_lstm_head.npz")) as f:
        return {k: f[k] for k in f.files}


def accuracy(proba, y):
    return float((np.asarray(proba).argmax(1) == y).mean())


# -- the bundled files --------------------------------------------------------------------


def test_files_are_small_and_packaged():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "pyproject.toml"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    patterns = json.loads(re.search(r"^rnnfast\s*=\s*(\[.*?\])", section, re.M | re.S).group(1))
    for name in FILES:
        path = demo.data_path(name)
        assert os.path.getsize(path) < 1 << 20, name
        assert any(fnmatch.fnmatch("data/" + name, p) for p in patterns), (name, patterns)


def test_split_shapes(split):
    x, y = split["x"], split["y"]
    assert x.shape == (450, 8, 8) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.shape == (450,) and set(np.unique(y)) == set(range(10))
    for k in ("keras_proba", "torch_proba"):
        assert split[k].shape == (450, 10)


# -- rnnfast against the frameworks' saved predictions ---------------------------------------


def test_keras_model_matches_saved_keras_predictions(kmodel, split):
    p = kmodel.predict(split["x"])
    assert p.dtype == np.float32 and p.shape == (450, 10)
    np.testing.assert_allclose(p, split["keras_proba"], **TOL[np.dtype(np.float32)])
    assert accuracy(p, split["y"]) == accuracy(split["keras_proba"], split["y"])
    assert accuracy(p, split["y"]) > 0.9


def test_torch_model_matches_saved_torch_predictions(tmodel, split):
    out, (h_n, c_n) = tmodel(split["x"])
    assert h_n.shape == (4, 450, 32)
    p = demo.lstm_head_proba(h_n, head())
    np.testing.assert_allclose(p, split["torch_proba"], **TOL[np.dtype(np.float32)])
    assert accuracy(p, split["y"]) == accuracy(split["torch_proba"], split["y"])
    assert accuracy(p, split["y"]) > 0.9


def test_saved_predictions_are_the_frameworks_own(split):
    """The bundled files and the saved probabilities belong together: the frameworks
    themselves, loading the bundled files, give those probabilities."""
    km = keras.saving.load_model(demo.data_path("digits_bigru.keras"))
    np.testing.assert_allclose(km.predict(split["x"], verbose=0), split["keras_proba"], atol=1e-6)
    sd = torch.load(demo.data_path("digits_lstm.pt"), weights_only=True)
    m = torch.nn.LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True)
    m.load_state_dict(sd)
    hw = head()
    with torch.no_grad():
        _, (h, _) = m(torch.from_numpy(split["x"]))
        feats = torch.cat([h[-2], h[-1]], -1)
        logits = feats @ torch.from_numpy(hw["weight"]).T + torch.from_numpy(hw["bias"])
        want = torch.softmax(logits, -1).numpy()
    np.testing.assert_allclose(want, split["torch_proba"], atol=1e-6)


def test_demo_reference_runners_agree(kmodel, tmodel, split):
    """The demo's float64 numpy runners (rnnfast.reference on the loaded weights) give the
    frameworks' probabilities."""
    x = split["x"][:50]
    np.testing.assert_allclose(demo.reference_keras(kmodel, x), split["keras_proba"][:50], atol=1e-5)
    _, h = demo.reference_torch(tmodel, x)
    np.testing.assert_allclose(demo.lstm_head_proba(h, head()), split["torch_proba"][:50], atol=1e-5)


# -- summary, repr, predict ----------------------------------------------------------------


def _total(text):
    m = re.search(r"total parameters: ([\d,]+)", text)
    return int(m.group(1).replace(",", ""))


def test_keras_summary_counts_like_keras(kmodel, capsys):
    assert kmodel.summary() is None
    text = capsys.readouterr().out
    km = keras.saving.load_model(demo.data_path("digits_bigru.keras"))
    assert _total(text) == km.count_params()
    for layer in km.layers:
        line = next(ln for ln in text.splitlines() if ln.startswith(layer.name + " "))
        assert f"{layer.count_params():,}" in line, line
    assert "Bidirectional(GRU)" in text and "return_sequences" in text and "softmax" in text
    assert "Keras .keras archive" in text


def test_summary_of_every_kind_of_keras_layer(capsys):
    L = keras.layers
    km = keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            L.Embedding(20, 6, mask_zero=True, name="emb"),
            L.Dropout(0.1, name="drop"),
            L.Bidirectional(L.LSTM(5, return_sequences=True), merge_mode="sum", name="bi_sum"),
            L.TimeDistributed(L.Dense(4, activation="relu"), name="td"),
            L.RNN(
                [L.GRUCell(3, reset_after=False), L.SimpleRNNCell(2, activation="relu")],
                return_sequences=True,
                name="stacked",
            ),
            L.Bidirectional(
                L.GRU(3, return_sequences=True),
                name="bi_mixed",
                backward_layer=L.SimpleRNN(3, return_sequences=True, go_backwards=True),
            ),
            L.Flatten(name="flat"),
            L.Activation("gelu", name="act"),
            L.Dense(2, use_bias=False, name="out"),
        ],
        name="every",
    )
    rnnfast.from_keras(km).summary()
    text = capsys.readouterr().out
    assert _total(text) == km.count_params()
    lines = text.splitlines()
    seps = [i for i, ln in enumerate(lines) if set(ln) == {"-"}]
    rows = {ln.split()[0]: ln for ln in lines[seps[1] + 1 : seps[2]]}
    assert set(rows) == {layer.name for layer in km.layers}
    for layer in km.layers:
        assert rows[layer.name].split()[-2] == f"{layer.count_params():,}", rows[layer.name]
    want = {
        "emb": "mask_zero=True",
        "bi_sum": "merge_mode=sum",
        "td": "TimeDistributed(Dense)",
        "stacked": "cell 1: activation=relu",
        "bi_mixed": "backward_layer=SimpleRNN(3)",
        "act": "gelu",
        "out": "use_bias=False",
    }
    for name, words in want.items():
        assert words in rows[name], rows[name]


def test_torch_summary_counts_like_torch(tmodel):
    lines = []
    tmodel.summary(print_fn=lines.append)
    text = "\n".join(lines)
    m = torch.nn.LSTM(8, 32, num_layers=2, bidirectional=True)
    assert _total(text) == sum(p.numel() for p in m.parameters())
    for k in range(2):
        n = sum(p.numel() for name, p in m.named_parameters() if re.search(r"_l%d(_reverse)?$" % k, name))
        row = next(ln for ln in text.splitlines() if ln.startswith("l%d " % k))
        assert f"{n:,}" in row and "bidirectional" in row and "LSTM" in row


def test_reprs_say_what_the_model_is(kmodel, tmodel):
    assert repr(kmodel).startswith("KerasModel('digits_bigru'")
    assert "Bidirectional(GRU(32" in repr(kmodel)
    assert repr(tmodel) == ("TorchRNN(LSTM(8, 32, num_layers=2, batch_first=True, bidirectional=True), dtype=float32)")


def test_keras_predict_batches_and_progress_bar(kmodel, split, capsys):
    x = split["x"]
    whole = kmodel.predict(x)
    capsys.readouterr()
    got = kmodel.predict(x, batch_size=100, verbose=1)
    np.testing.assert_allclose(got, whole, **TOL[np.dtype(np.float32)])
    err = capsys.readouterr().err
    assert re.search(r"5/5 \S+ \d+s \d+[mu]?s/step", err), err
    kmodel.predict(x, batch_size=100, verbose=0)
    kmodel.predict(x, batch_size=100)
    assert capsys.readouterr() == ("", "")
    kmodel.predict(x[:7], batch_size=3, verbose=2)
    assert re.search(r"^3/3 ", capsys.readouterr().err)
    with pytest.raises(ValueError, match="batch_size"):
        kmodel.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="verbose"):
        kmodel.predict(x, verbose=3)


def test_torch_predict_is_the_output_sequence(split, capsys):
    rnn = rnnfast.load(demo.data_path("digits_lstm.pt"))  # time-major, as PyTorch
    x = np.ascontiguousarray(split["x"][:37].swapaxes(0, 1))
    lengths = np.random.default_rng(0).integers(1, 9, size=37)
    m = torch.nn.LSTM(8, 32, num_layers=2, bidirectional=True)
    m.load_state_dict(torch.load(demo.data_path("digits_lstm.pt"), weights_only=True))
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(x), torch.from_numpy(lengths), enforce_sorted=False
        )
        want = torch.nn.utils.rnn.pad_packed_sequence(m(packed)[0], total_length=8)[0].numpy()
    capsys.readouterr()
    got = rnn.predict(x, lengths=lengths, batch_size=10, verbose=1)
    assert got.shape == (8, 37, 64)
    np.testing.assert_allclose(got, want, **TOL[np.dtype(np.float32)])
    assert "4/4" in capsys.readouterr().err
    np.testing.assert_allclose(rnn.predict(x), m(torch.from_numpy(x))[0].detach().numpy(), **TOL[np.dtype(np.float32)])
    with pytest.raises(ValueError, match="lengths"):
        rnn.predict(x, lengths=lengths[:5], batch_size=10)
