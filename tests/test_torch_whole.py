"""Whole PyTorch models: rnnfast.from_torch(module, example_inputs) (exported to ONNX in
memory, run by rnnfast's ONNX frontend) on real model shapes compared with live PyTorch
2.13, the deployment route (torch.onnx.export once, rnnfast.load without torch), and the
refusals that name what a file is: a whole pickled module (with the two ways out),
TorchScript, torch.export programs, TensorFlow SavedModels, ONNX given to read_tensors."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import rnnfast
from rnnfast.io import torch_export

from _testing import assert_close, seed_of

pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROUTES = ("torch.save(model.state_dict(), path)", 'torch.onnx.export(model, example_inputs, "model.onnx")')


class TextClassifier(torch.nn.Module):
    """Embedding -> BiLSTM -> Linear on the last step."""

    def __init__(self, vocab=60, emb=12, hidden=16, classes=4):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, emb)
        self.lstm = torch.nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(2 * hidden, classes)

    def forward(self, ids):
        out, _ = self.lstm(self.embedding(ids))
        return self.fc(out[:, -1])


class SpeechModel(torch.nn.Module):
    """(batch, mel, time) -> Conv1d + BatchNorm1d + ReLU -> BiGRU -> Linear per frame."""

    def __init__(self, mels=10, channels=16, hidden=12, classes=6):
        super().__init__()
        self.conv = torch.nn.Conv1d(mels, channels, kernel_size=3, padding=1)
        self.bn = torch.nn.BatchNorm1d(channels)
        self.gru = torch.nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(2 * hidden, classes)

    def forward(self, mel):
        x = torch.relu(self.bn(self.conv(mel)))
        out, _ = self.gru(x.transpose(1, 2))
        return self.fc(out)


class NamesClassifier(torch.nn.Module):
    """The PyTorch tutorial's char-RNN classifier: nn.RNN + Linear + LogSoftmax on the
    final hidden state; input (time, batch, letters) one-hot, time-major."""

    def __init__(self, letters=20, hidden=24, classes=5):
        super().__init__()
        self.rnn = torch.nn.RNN(letters, hidden)
        self.h2o = torch.nn.Linear(hidden, classes)
        self.softmax = torch.nn.LogSoftmax(dim=1)

    def forward(self, line):
        _, hidden = self.rnn(line)
        return self.softmax(self.h2o(hidden[0]))


class DecoderStep(torch.nn.Module):
    """A seq2seq decoder step: token ids and the encoder's state in, logits and the next
    state out (Embedding + GRU with an initial state + Linear)."""

    def __init__(self, vocab=30, emb=8, hidden=14):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, emb)
        self.gru = torch.nn.GRU(emb, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, vocab)

    def forward(self, ids, hidden):
        out, hidden = self.gru(self.embedding(ids), hidden)
        return self.out(out), hidden


def trained_bn(model, mel):
    """BatchNorm with running statistics that are not the defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(mel * 2 + 1)
    return model.eval()


def torch_out(model, *args):
    with torch.no_grad():
        out = model(*(torch.as_tensor(a) for a in args))
    return [o.numpy() for o in out] if isinstance(out, tuple) else [out.numpy()]


def check(model, rn, inputs_list):
    """rn.run equals model(...) on each tuple of inputs (numpy)."""
    names = [i.name for i in rn.get_inputs()]
    for inputs in inputs_list:
        got = rn.run(None, dict(zip(names, inputs)))
        want = torch_out(model, *inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape, (g.shape, w.shape)
            assert_close(g, w, np.float32)


def ids(rng, vocab, shape):
    return rng.integers(0, vocab, shape).astype(np.int64)


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_text_classifier(dynamo, seed):
    torch.manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    model = TextClassifier().eval()
    rn = rnnfast.from_torch(model, torch.as_tensor(ids(rng, 60, (2, 7))), dynamo=dynamo)
    assert isinstance(rn, rnnfast.OnnxModel)
    assert "exported to ONNX" in rn.source
    check(model, rn, [(ids(rng, 60, s),) for s in ((2, 7), (1, 1), (5, 23), (3, 1000))])
    x = ids(rng, 60, (4, 9))
    assert_close(rn.predict(x), torch_out(model, x)[0], np.float32)
    assert_close(rn(x), torch_out(model, x)[0], np.float32)
    assert not model.training


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_speech_conv_bigru(dynamo, seed):
    torch.manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    mel = torch.randn(3, 10, 20)
    model = trained_bn(SpeechModel(), mel)
    rn = rnnfast.from_torch(model, mel, dynamo=dynamo)
    check(model, rn, [(rng.standard_normal(s, dtype=np.float32),) for s in ((3, 10, 20), (1, 10, 5), (6, 10, 131))])


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_names_classifier(dynamo, seed):
    torch.manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    model = NamesClassifier().eval()

    def one_hot(T, B):
        x = np.zeros((T, B, 20), np.float32)
        x[np.arange(T)[:, None], np.arange(B)[None, :], rng.integers(0, 20, (T, B))] = 1
        return x

    rn = rnnfast.from_torch(model, torch.as_tensor(one_hot(6, 1)), dynamo=dynamo)
    # the torch.export-based exporter unrolls nn.RNN over the example's 6 steps
    # (SplitToSequence, then SequenceAt per step): its graph takes 6 steps only
    steps = (6, 6, 6) if dynamo else (6, 1, 17)
    check(model, rn, [(one_hot(T, B),) for T, B in zip(steps, (1, 3, 8))])
    out = rn.predict(one_hot(9, 2))
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1, rtol=1e-5)  # log-probabilities


@pytest.mark.slow
def test_names_classifier_dynamo_static(seed):
    """With its shapes fixed (dynamic_axes={}) the torch.export-based exporter unrolls
    nn.RNN with Slice ops, which run: a graph for the example's shape only."""
    torch.manual_seed(seed % 1000)
    model = NamesClassifier().eval()
    x = np.zeros((6, 2, 20), np.float32)
    x[np.arange(6), :, np.random.default_rng(seed).integers(0, 20, 6)] = 1
    rn = rnnfast.from_torch(model, torch.as_tensor(x), dynamo=True, dynamic_axes={})
    assert [i.shape for i in rn.get_inputs()] == [[6, 2, 20]]
    check(model, rn, [(x,), (x[::-1].copy(),)])


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_seq2seq_decoder_step(dynamo, seed):
    torch.manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    model = DecoderStep().eval()
    example = (torch.as_tensor(ids(rng, 30, (2, 1))), torch.randn(1, 2, 14))
    rn = rnnfast.from_torch(model, example, dynamo=dynamo, input_names=["ids", "hidden"])
    assert len(rn.get_inputs()) == 2 and len(rn.get_outputs()) == 2
    cases = [
        (ids(rng, 30, (B, T)), rng.standard_normal((1, B, 14), dtype=np.float32)) for B, T in ((2, 1), (5, 1), (1, 4))
    ]
    check(model, rn, cases)
    # greedy decoding, the state fed back step after step, as a chatbot does
    names = [i.name for i in rn.get_inputs()]
    tok, h = np.zeros((3, 1), np.int64), rng.standard_normal((1, 3, 14), dtype=np.float32)
    ttok, th = torch.as_tensor(tok), torch.as_tensor(h)
    for _ in range(12):
        logits, h = rn.run(None, {names[0]: tok, names[1]: h})
        with torch.no_grad():
            tlogits, th = model(ttok, th)
        assert_close(h, th.numpy(), np.float32)
        tok = logits.argmax(-1)
        ttok = tlogits.argmax(-1)
        np.testing.assert_array_equal(tok, ttok.numpy())


def test_dynamic_axes_found_by_calling_the_module():
    """The default dynamic axes: batch and length, not features, channels or layers; the
    batch axis of a state passed beside the ids found together with theirs."""
    find = torch_export.dynamic_input_axes
    assert find(TextClassifier().eval(), (torch.zeros(2, 7, dtype=torch.int64),), ["ids"]) == {
        "ids": {0: "ids_0", 1: "ids_1"}
    }
    assert find(SpeechModel().eval(), (torch.zeros(3, 10, 20),), ["mel"]) == {"mel": {0: "mel_0", 2: "mel_2"}}
    assert find(NamesClassifier().eval(), (torch.zeros(6, 1, 20),), ["line"]) == {"line": {0: "line_0", 1: "line_1"}}
    args = (torch.zeros(2, 1, dtype=torch.int64), torch.zeros(1, 2, 14))
    assert find(DecoderStep().eval(), args, ["ids", "h"]) == {"ids": {0: "ids_0", 1: "ids_1"}, "h": {1: "ids_0"}}
    # a fixed-length model (a Linear over the flattened sequence) keeps its length fixed
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5 * 3, 2)).eval()
    assert find(flat, (torch.zeros(4, 5, 3),), ["x"]) == {"x": {0: "x_0"}}


# the user's own export: the TorchScript-based exporter says it is deprecated, the tracer warns
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning", "ignore:Exporting a model to ONNX:UserWarning"
)
def test_deployment_route_without_torch(tmp_path, seed):
    """The README's route: torch.onnx.export once; rnnfast.load("model.onnx") where torch is not installed."""
    torch.manual_seed(seed % 1000)
    model = TextClassifier().eval()
    example = torch.randint(0, 60, (2, 7))
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(
        model, (example,), path, dynamo=False, input_names=["ids"], dynamic_axes={"ids": {0: "batch", 1: "time"}}
    )
    x = np.random.default_rng(seed).integers(0, 60, (3, 11))
    np.save(str(tmp_path / "x.npy"), x)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, rnnfast\n"
        "m = rnnfast.load(%r)\n"
        "np.save(%r, m.run(None, {'ids': np.load(%r)})[0])\n" % (path, str(tmp_path / "y.npy"), str(tmp_path / "x.npy"))
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_close(np.load(str(tmp_path / "y.npy")), torch_out(model, x)[0], np.float32)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's imports (torch.jit.script_method)
def test_torch_compiled_model(seed, tmp_path):
    """torch.compile(model): converted as the module it wraps; its state_dict (keys under
    ``_orig_mod.``) loads as any checkpoint."""
    torch.manual_seed(seed % 1000)
    rng = np.random.default_rng(seed)
    model = TextClassifier().eval()
    compiled = torch.compile(model)
    rn = rnnfast.from_torch(compiled, torch.as_tensor(ids(rng, 60, (2, 7))))
    check(model, rn, [(ids(rng, 60, (3, 13)),)])
    assert isinstance(rnnfast.from_torch(torch.compile(model.lstm)), rnnfast.TorchRNN)
    path = str(tmp_path / "compiled.pt")
    torch.save(compiled.state_dict(), path)
    rnn = rnnfast.load(path, batch_first=True)
    x = torch.randn(2, 5, 12)
    assert_close(rnn(x.numpy())[0], model.lstm(x)[0].detach().numpy(), np.float32)
    assert sorted(rnn.ignored_tensors) == ["_orig_mod.embedding.weight", "_orig_mod.fc.bias", "_orig_mod.fc.weight"]


def test_from_torch_recurrent_modules_unchanged():
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4).eval()
    assert isinstance(rnnfast.from_torch(gru), rnnfast.TorchRNN)
    # example inputs are not needed for these (their weights say everything)
    assert isinstance(rnnfast.from_torch(gru, torch.randn(5, 1, 3)), rnnfast.TorchRNN)
    assert isinstance(rnnfast.from_torch(torch.nn.LSTMCell(3, 4)), rnnfast.TorchCell)


def test_from_torch_refusals():
    with pytest.raises(TypeError, match=r"from_torch takes a torch\.nn\.Module, got ndarray"):
        rnnfast.from_torch(np.zeros(3))
    lin = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(
        rnnfast.UnsupportedLayerError, match=r"Sequential.*exported to ONNX, which needs example inputs"
    ):
        rnnfast.from_torch(lin)
    with pytest.raises(ValueError, match=r"dtype applies to nn\.GRU / nn\.LSTM / nn\.RNN and their cells"):
        rnnfast.from_torch(lin, torch.randn(2, 3), dtype="float64")
    with pytest.raises(ValueError, match=r"GRU is converted from its weights, not exported"):
        rnnfast.from_torch(torch.nn.GRU(3, 4), dynamo=True)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments opset"):
        rnnfast.from_torch(lin, torch.randn(2, 3), opset=17)


class Unrunnable(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.det(x)


def test_from_torch_names_an_op_it_cannot_run():
    """An exported op the ONNX frontend does not run is refused at conversion, named."""
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"Det"):
        rnnfast.from_torch(Unrunnable(), torch.randn(2, 3, 3))


# -- refusals that name the file --------------------------------------------------------


class MyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4)


def assert_ways_out(msg):
    for route in ROUTES:
        assert route in msg, msg
    assert 'rnnfast.load("model.onnx")' in msg


def test_whole_pickled_module_refused_with_ways_out(tmp_path, monkeypatch):
    cases = {}
    p = cases["torch.nn.modules.rnn.LSTM"] = str(tmp_path / "lstm.pt")
    torch.save(torch.nn.LSTM(3, 4), p)
    p = cases["torch.nn.modules.container.Sequential"] = str(tmp_path / "seq.pt")
    torch.save(torch.nn.Sequential(torch.nn.GRU(3, 4)), p)
    p = cases["test_torch_whole.MyModel"] = str(tmp_path / "mine.pt")
    torch.save(MyModel(), p)
    main = sys.modules["__main__"]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(2, 3)

    Net.__module__, Net.__qualname__ = "__main__", "Net"
    monkeypatch.setattr(main, "Net", Net, raising=False)
    p = cases["__main__.Net"] = str(tmp_path / "main.pt")
    torch.save(Net(), p)
    p = cases["torch.nn.modules.rnn.GRU"] = str(tmp_path / "legacy.pt")
    torch.save({"model": torch.nn.GRU(2, 3)}, p, _use_new_zipfile_serialization=False)
    for glob, path in cases.items():
        for fn in (rnnfast.load, rnnfast.read_tensors):
            with pytest.raises(rnnfast.FormatError) as err:
                fn(path)
            msg = str(err.value)
            assert "refused global '%s'" % glob in msg, msg
            assert "whole pickled module" in msg or "whole module saved with torch.save(model)" in msg, msg
            assert_ways_out(msg)
    # the command line prints the same message
    r = subprocess.run(
        [sys.executable, "-m", "rnnfast", "info", cases["torch.nn.modules.rnn.LSTM"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert_ways_out(r.stderr + r.stdout)


def test_other_globals_keep_the_plain_refusal(tmp_path):
    p = str(tmp_path / "np.pt")
    torch.save({"w": torch.zeros(2), "best": np.float64(0.5)}, p)
    with pytest.raises(rnnfast.FormatError, match=r"refused global 'numpy\.") as err:
        rnnfast.read_tensors(p)
    assert "whole" not in str(err.value)


# torch.jit.script is deprecated; torch.export warns about the LSTM's flat weights
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_torchscript_and_torch_export_named(tmp_path):
    m = TextClassifier().eval()
    ts = str(tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.script(m), ts)
    pt2 = str(tmp_path / "model.pt2")
    torch.export.save(torch.export.export(m, (torch.randint(0, 60, (2, 5)),)), pt2)
    for path, what in ((ts, "a TorchScript archive (torch.jit.save)"), (pt2, "a torch.export program")):
        for fn in (rnnfast.load, rnnfast.read_tensors):
            with pytest.raises(rnnfast.FormatError) as err:
                fn(path)
            assert what in str(err.value)
            assert_ways_out(str(err.value))


def test_saved_model_named(tmp_path):
    d = tmp_path / "export"
    d.mkdir()
    (d / "variables").mkdir()
    # the first bytes of a SavedModel protobuf: saved_model_schema_version 1, meta_graphs ...
    (d / "saved_model.pb").write_bytes(b"\x08\x01\x12\x9c\x02\n\x8f\x01\n\x0bserve")
    for path in (str(d), str(d / "saved_model.pb")):
        for fn in (rnnfast.load, rnnfast.read_tensors):
            with pytest.raises(rnnfast.FormatError, match=r"TensorFlow SavedModel.*tf2onnx"):
                fn(path)
    r = subprocess.run([sys.executable, "-m", "rnnfast", "info", str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "TensorFlow SavedModel directory" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(rnnfast.FormatError, match=r"is a directory, not a model file"):
        rnnfast.load(str(d / "variables"))


def test_onnx_named_by_read_tensors(tmp_path):
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.GRU(3, 4), (torch.randn(5, 1, 3),), path, dynamo=False)
    with pytest.raises(
        rnnfast.FormatError, match=r"is an ONNX model, not a PyTorch or safetensors file: rnnfast\.load"
    ):
        rnnfast.read_tensors(path)
    assert isinstance(rnnfast.load(path), rnnfast.OnnxModel)


def test_seed_is_stable():
    assert seed_of("whole") == seed_of("whole")
