"""Real exports from PyTorch (``torch.onnx.export`` with the TorchScript-based exporter,
``dynamo=False``, and the default dynamo exporter) of nn.GRU / nn.LSTM / nn.RNN
(bidirectional, stacked, batch_first, given initial states) and a small
Embedding -> BiLSTM -> Linear classifier: rnnfast's outputs against PyTorch's and ONNX
Runtime's on the same file."""

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

import rnnfast

from _testing import assert_close


def export(module, args, dynamo, names=None, dynamic=None):
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, args, dynamo=True, verbose=False, input_names=names)
            return prog.model_proto.SerializeToString()
        f = io.BytesIO()
        torch.onnx.export(module, args, f, dynamo=False, input_names=names, dynamic_axes=dynamic)
        return f.getvalue()


def compare(data, feed, torch_out):
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    model = rnnfast.from_onnx(data)
    assert [i.name for i in model.get_inputs()] == [i.name for i in sess.get_inputs()]
    assert [i.shape for i in model.get_inputs()] == [i.shape for i in sess.get_inputs()]
    want = sess.run(None, feed)
    got = model.run(None, feed)
    assert len(got) == len(want) == len(torch_out)
    for g, w, t in zip(got, want, torch_out):
        assert g.shape == w.shape == tuple(t.shape)
        assert_close(g, w, np.float32, "vs ONNX Runtime")
        assert_close(g, t.detach().numpy(), np.float32, "vs PyTorch")
    return model


def _flat(out):
    if isinstance(out, tuple):
        return [v for o in out for v in _flat(o)]
    return [out]


MODULES = [
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("GRU", dict(batch_first=True)),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("LSTM", dict()),
    ("RNN", dict(bidirectional=True)),
    ("RNN", dict(nonlinearity="relu", num_layers=2)),
]


# the dynamo exporter takes seconds per module: those cases are slow
EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo", marks=pytest.mark.slow)]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("cls, kw", MODULES, ids=["%s-%s" % (c, "-".join(sorted(k))) for c, k in MODULES])
def test_torch_rnn_modules(seed, cls, kw, dynamo):
    torch.manual_seed(seed % 2**31)
    m = getattr(torch.nn, cls)(6, 10, **kw)
    T, B = 12, 3
    x = torch.randn((B, T, 6) if kw.get("batch_first") else (T, B, 6))
    data = export(m, (x,), dynamo, names=["x"])
    with torch.no_grad():
        out = _flat(m(x))
    compare(data, {"x": x.numpy()}, out)


@pytest.mark.parametrize("cls", ["GRU", "LSTM"])
def test_initial_states_as_inputs(seed, cls):
    torch.manual_seed(seed % 2**31)
    m = getattr(torch.nn, cls)(4, 8, num_layers=2, bidirectional=True)
    x = torch.randn(7, 2, 4)
    h = torch.randn(4, 2, 8)
    args = (x, (h, torch.randn(4, 2, 8))) if cls == "LSTM" else (x, h)
    names = ["x", "h0", "c0"] if cls == "LSTM" else ["x", "h0"]
    data = export(m, args, False, names=names)
    with torch.no_grad():
        out = _flat(m(*args))
    feed = {"x": x.numpy(), "h0": h.numpy()}
    if cls == "LSTM":
        feed["c0"] = args[1][1].numpy()
    compare(data, feed, out)


def test_dynamic_axes_run_other_shapes(seed):
    torch.manual_seed(seed % 2**31)
    m = torch.nn.LSTM(5, 9, num_layers=2, bidirectional=True, batch_first=True)
    data = export(m, (torch.randn(2, 4, 5),), False, names=["x"], dynamic={"x": {0: "batch", 1: "time"}})
    model = None
    for B, T in [(1, 3), (5, 20), (1, 3), (64, 7)]:
        x = torch.randn(B, T, 5)
        with torch.no_grad():
            out = _flat(m(x))
        model = compare(data, {"x": x.numpy()}, out) if model is None else model
        for g, t in zip(model.run(None, {"x": x.numpy()}), out):
            assert_close(g, t.numpy(), np.float32)
    assert model.get_inputs()[0].shape == ["batch", "time", 5]


class TextClassifier(torch.nn.Module):
    def __init__(self, vocab=50, dim=12, hidden=16, classes=4):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.lstm = torch.nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(2 * hidden, classes)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        return torch.log_softmax(self.fc(y.mean(dim=1)), dim=-1)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_text_classifier(seed, dynamo):
    torch.manual_seed(seed % 2**31)
    m = TextClassifier().eval()
    ids = torch.randint(0, 50, (3, 9))
    dynamic = None if dynamo else {"ids": {0: "batch", 1: "time"}}
    data = export(m, (ids,), dynamo, names=["ids"], dynamic=dynamic)
    with torch.no_grad():
        out = [m(ids)]
    model = compare(data, {"ids": ids.numpy()}, out)
    y = model.predict(ids.numpy())
    assert_close(y, out[0].numpy(), np.float32)


def test_load_from_file_and_summary(tmp_path, seed):
    torch.manual_seed(seed % 2**31)
    m = TextClassifier().eval()
    path = tmp_path / "classifier.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randint(0, 50, (2, 5)),), str(path), dynamo=False, input_names=["ids"])
    model = rnnfast.load(path)
    assert isinstance(model, rnnfast.OnnxModel)
    assert model.source_format == "ONNX model"
    lines = []
    model.summary(print_fn=lines.append)
    assert "LSTM" in lines[0] and "ONNX model" in lines[0]
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        assert_close(model(ids.numpy()), m(ids).numpy(), np.float32)


class Speech(torch.nn.Module):
    """Conv1d + BatchNorm1d + ReLU + MaxPool1d -> stacked BiGRU -> LayerNorm -> Linear -> GELU -> softmax."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(13, 32, 5, padding=2)
        self.bn = torch.nn.BatchNorm1d(32)
        self.pool = torch.nn.MaxPool1d(2)
        self.gru = torch.nn.GRU(32, 24, batch_first=True, bidirectional=True, num_layers=2)
        self.ln = torch.nn.LayerNorm(48)
        self.fc = torch.nn.Linear(48, 10)

    def forward(self, x):  # (batch, 13, time)
        y = self.pool(torch.relu(self.bn(self.conv(x)))).transpose(1, 2)
        y, _ = self.gru(y)
        return torch.nn.functional.gelu(self.fc(self.ln(y))).softmax(-1)


class DecoderStep(torch.nn.Module):
    """One step of a seq2seq decoder: token and state in, log-probabilities and state out."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.gru = torch.nn.GRU(16, 32, batch_first=True)
        self.out = torch.nn.Linear(32, 50)

    def forward(self, tok, h):
        y, h = self.gru(torch.relu(self.emb(tok)), h)
        return torch.log_softmax(self.out(y.squeeze(1)), -1), h


class Pooled(torch.nn.Module):
    """LSTM -> [mean over time, max over time] -> Linear -> sigmoid."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.fc = torch.nn.Linear(32, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        return torch.sigmoid(self.fc(torch.cat([y.mean(1), y.amax(1)], -1)))


WHOLE = [
    ("speech", Speech, lambda: (torch.randn(2, 13, 40),), ["x"], {"x": {0: "b", 2: "t"}}),
    (
        "decoder",
        DecoderStep,
        lambda: (torch.randint(0, 50, (3, 1)), torch.randn(1, 3, 32)),
        ["tok", "h"],
        {"tok": {0: "b"}, "h": {1: "b"}},
    ),
    ("pooled", Pooled, lambda: (torch.randn(2, 9, 8),), ["x"], {"x": {0: "b", 1: "t"}}),
]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("name, cls, make_args, names, dynamic", WHOLE, ids=[w[0] for w in WHOLE])
def test_whole_models(seed, name, cls, make_args, names, dynamic, dynamo):
    torch.manual_seed(seed % 2**31)
    m = cls().eval()
    if name == "speech":  # running statistics as a trained model has them
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.5, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
    args = make_args()
    data = export(m, args, dynamo, names=names, dynamic=None if dynamo else dynamic)
    with torch.no_grad():
        out = _flat(m(*args))
    compare(data, {n: a.numpy() for n, a in zip(names, args)}, out)


@pytest.mark.slow
def test_dynamo_export_with_dynamic_shapes(seed):
    torch.manual_seed(seed % 2**31)
    m = torch.nn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=True).eval()
    b, t = torch.export.Dim("batch"), torch.export.Dim("time")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            m, (torch.randn(3, 7, 6),), dynamo=True, input_names=["x"], dynamic_shapes=({0: b, 1: t},), verbose=False
        )
    data = prog.model_proto.SerializeToString()
    model = rnnfast.from_onnx(data)
    shape = model.get_inputs()[0].shape
    assert shape == ort.InferenceSession(data, providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape[:2] == ["batch", "time"]  # (conftest's _fresh_torch_exports keeps "time" dynamic)
    for B, T in [(1, 4), (5, 11), (1, 4)]:
        x = torch.randn(B, T, 6)
        with torch.no_grad():
            out = _flat(m(x))
        for g, w in zip(model.run(None, {"x": x.numpy()}), out):
            assert_close(g, w.numpy(), np.float32)


class _Stacked(torch.nn.Module):
    """Two recurrent layers between batch-major input and output, as bench/compare.py
    exports its grid: ``Transpose``, each node's ``Squeeze`` (or ``Transpose`` and
    ``Reshape``), ``Transpose``."""

    def __init__(self, cls, bidirectional):
        super().__init__()
        self.rnn = cls(6, 8, num_layers=2, bidirectional=bidirectional)

    def forward(self, x):
        return self.rnn(x.transpose(0, 1))[0].transpose(0, 1)


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stacked_nodes_call_their_layers_directly(seed, cls, bidirectional):
    """Every recurrent node's later calls go straight to its layer (``_Fused._memo``),
    the first node's too, whose output reaches the next as a (time, batch, features) view
    of the kernel's batch-major array (not C-contiguous at batch 3): ONNX Runtime's
    values, the first call's bits, at 1 and 2 threads, a new batch size included."""
    from rnnfast.model_onnx import _Fused

    torch.manual_seed(seed % 2**31)
    net = _Stacked(cls, bidirectional)
    x = torch.randn(3, 5, 6)
    data = export(net, (x,), False, ["x"], dynamic={"x": {0: "batch"}})
    model = rnnfast.from_onnx(data)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for B in (3, 2):
        feed = {"x": torch.randn(B, 5, 6).numpy()}
        want = sess.run(None, feed)[0]
        first = model.run(None, feed)[0]
        assert_close(first, want, np.float32, "vs ONNX Runtime")
        for threads in (1, 2, 1):
            got = model.run(None, feed, num_threads=threads)[0]
            np.testing.assert_array_equal(got, first)
            assert got.flags.c_contiguous and not np.shares_memory(got, first)
    fused = [op for op, *_ in model._fast[0] if isinstance(op, _Fused)]
    assert len(fused) == 2 and all(len(f._memo) == 2 for f in fused)


class _LastState(torch.nn.Module):
    """A sequence GRU into a GRU read for its final state, as bench/compare.py's seed
    model: torch traces each zero initial state as zeros of the export's batch."""

    def __init__(self):
        super().__init__()
        self.first, self.second = torch.nn.GRU(6, 8), torch.nn.GRU(8, 5)

    def forward(self, x):
        y, _ = self.first(x.transpose(0, 1))
        return self.second(y)[1][0]


def test_recurrent_steps_take_their_input_transpose_and_zero_states(seed):
    """Per call, the graph's leading ``Transpose`` is made by the recurrent step that alone
    reads it (``_Fused.perm``), a node whose ``Y`` nothing reads is a fused step too, and
    the constant zero states (``zeros(1, 3, H)``, the traced batch) reach the layer as
    None: ONNX Runtime's values and the first call's bits, at 1 and 2 threads."""
    from rnnfast.model_onnx import _Fused

    torch.manual_seed(seed % 2**31)
    x = torch.randn(3, 7, 6)
    data = export(_LastState(), (x,), False, ["x"])
    model = rnnfast.from_onnx(data)
    feed = {"x": torch.randn(3, 7, 6).numpy()}
    first = model.run(None, feed)[0]
    assert_close(first, ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)[0], np.float32)
    for threads in (1, 2, 1):
        np.testing.assert_array_equal(model.run(None, feed, num_threads=threads)[0], first)
    ops = [op for op, *_ in model._fast[0]]
    assert [type(op) for op in ops[:2]] == [_Fused, _Fused] and ops[0].perm == (1, 0, 2) and not ops[1].views
    assert [op.op_type for op in ops[2:]] == ["Gather"]  # (Y_h[0]; no Transpose step left)
    for op in ops[:2]:
        ((flip, view, zero_h, zero_c, _),) = op._memo.values()
        assert zero_h and not zero_c and (view is None) == (op is ops[1])
