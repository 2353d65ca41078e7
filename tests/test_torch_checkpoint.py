"""Checkpoints as PyTorch users write them, read without torch: rnnfast.read_tensors
(every tensor of a state_dict, a checkpoint or a .safetensors file, compared with what
torch.load returns), and rnnfast.load of a checkpoint that holds more than the recurrent
module (what it left out: ``ignored_tensors``, ``summary()``, ``rnnfast info``; two
recurrent modules refused until ``prefix=`` picks one)."""

import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch

import rnnfast
from rnnfast.io import torch_file, torch_pickle

from _testing import assert_close, assert_same, torch_run

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class TextClassifier(torch.nn.Module):
    """Embedding -> BiLSTM -> Linear on the last step, as tutorials write it."""

    def __init__(self, vocab=40, emb=6, hidden=8, classes=3):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, emb)
        self.lstm = torch.nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        self.fc = torch.nn.Linear(2 * hidden, classes)

    def forward(self, ids):
        out, _ = self.lstm(self.embedding(ids))
        return self.fc(out[:, -1])


def trained(model, ids):
    """``model`` after one Adam step (so the optimizer has state), in eval mode, and
    the optimizer."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(ids).square().mean().backward()
    opt.step()
    return model.eval(), opt


def lightning_checkpoint(model, opt):
    """The layout of a PyTorch Lightning checkpoint (``Trainer.save_checkpoint``): the
    module's state_dict under "state_dict" (its attribute names as prefixes), optimizer
    and scheduler states in lists, loop counters and plain values beside them."""
    return {
        "epoch": 4,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"step_size": 10, "gamma": 0.5, "base_lrs": [0.01], "last_epoch": 4}],
        "hparams_name": "kwargs",
        "hyper_parameters": {"vocab": 40, "hidden": 8},
    }


def torch_tensors(obj, prefix=""):
    """What read_tensors should return, from torch.load's object: every tensor, nested
    keys joined with "."."""
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(torch_tensors(v, "%s%s." % (prefix, k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(torch_tensors(v, "%s%d." % (prefix, i)))
    return out


def assert_same_tensors(got, want):
    assert list(got) == list(want)
    for k, t in want.items():
        a = got[k]
        assert isinstance(a, np.ndarray) and a.shape == tuple(t.shape), k
        expect = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert a.dtype == expect.dtype, (k, a.dtype, expect.dtype)
        np.testing.assert_array_equal(a, expect, err_msg=k)


@pytest.fixture
def classifier():
    torch.manual_seed(3)
    ids = torch.randint(0, 40, (4, 9))
    model, opt = trained(TextClassifier(), ids)
    return model, opt, ids


# -- read_tensors ------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_read_tensors_lightning_checkpoint(classifier, legacy, tmp_path):
    model, opt, _ = classifier
    path = str(tmp_path / "last.ckpt")
    torch.save(lightning_checkpoint(model, opt), path, _use_new_zipfile_serialization=not legacy)
    want = torch_tensors(torch.load(path, weights_only=True))
    got = rnnfast.read_tensors(path)
    assert_same_tensors(got, want)
    # the names a user reaches for, and the optimizer's state (Adam's step is a tensor)
    assert "state_dict.model.lstm.weight_hh_l0_reverse" in got and "state_dict.model.fc.bias" in got
    assert (
        "optimizer_states.0.state.0.exp_avg_sq" in got
        and "callbacks.ModelCheckpoint{'monitor': 'val_loss'}.best_model_score" in got
    )
    assert "epoch" not in got and "hyper_parameters.vocab" not in got  # not tensors


def test_read_tensors_state_dict_and_safetensors(classifier, tmp_path):
    model = classifier[0]
    sd = model.state_dict()
    pt, st = str(tmp_path / "m.pt"), str(tmp_path / "m.safetensors")
    torch.save(sd, pt)
    safetensors_torch.save_file(sd, st, metadata={"format": "pt"})
    assert_same_tensors(rnnfast.read_tensors(pt), dict(sd))
    got = rnnfast.read_tensors(st)
    assert sorted(got) == sorted(sd)  # safetensors orders tensors its own way
    assert_same_tensors({k: got[k] for k in sd}, dict(sd))


def test_read_tensors_element_types_and_sharing(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    shared = torch.randn(5, 2)
    obj = {
        "f64": torch.randn(2, 3, dtype=torch.float64),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(3, 2).bfloat16(),
        "i64": torch.tensor([1, -2, 3]),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "view_t": base.t(),  # strided views read as torch shows them
        "view_row": base[1],
        "tied": {"encoder.weight": shared, "decoder.weight": shared},
        "nested": [[torch.ones(1)], (torch.zeros(2),)],
    }
    path = str(tmp_path / "types.pt")
    torch.save(obj, path)
    got = rnnfast.read_tensors(path)
    assert_same_tensors(got, torch_tensors(torch.load(path, weights_only=True)))
    assert got["bf16"].dtype == np.float32  # widened exactly
    assert got["tied.encoder.weight"] is got["tied.decoder.weight"]  # one tensor, one array
    assert got["nested.0.0"].shape == (1,) and got["nested.1.0"].shape == (2,)
    got["i64"][0] = 9  # the caller's own arrays
    assert rnnfast.read_tensors(path)["i64"][0] == 1


def test_read_tensors_runs_no_torch(classifier, tmp_path):
    model, opt, _ = classifier
    path = str(tmp_path / "c.ckpt")
    torch.save(lightning_checkpoint(model, opt), path)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import rnnfast\n"
        "t = rnnfast.read_tensors(%r)\n"
        "print(len(t), t['state_dict.model.embedding.weight'].shape)\n" % path
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(torch_tensors(torch.load(path, weights_only=True)))), "(40,", "6)"]


def test_read_tensors_refusals(tmp_path):
    # a name two tensors share (keys 1 and "1" of one dict)
    p = str(tmp_path / "dup.pt")
    torch.save({1: torch.zeros(1), "1": torch.ones(1)}, p)
    with pytest.raises(rnnfast.FormatError, match=r"two tensors under the name '1'"):
        rnnfast.read_tensors(p)
    # element types numpy cannot hold are named, not skipped
    p = str(tmp_path / "f8.safetensors")
    safetensors_torch.save_file({"v": torch.zeros(2), "w": torch.zeros(3).to(torch.float8_e4m3fn)}, p)
    with pytest.raises(rnnfast.FormatError, match=r"tensor 'w' has element type float8_e4m3fn"):
        rnnfast.read_tensors(p)
    # many views of one storage cannot make the reader allocate far past the file
    big = torch.zeros(1 << 18)
    p = str(tmp_path / "views.pt")
    torch.save([big[i:] for i in range(32)], p)
    assert os.path.getsize(p) < 2 << 20
    with pytest.raises(rnnfast.FormatError, match=r"more than 4 times the file's size"):
        rnnfast.read_tensors(p)
    # other formats are named
    p = str(tmp_path / "m.keras")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(rnnfast.FormatError, match=r"Keras \.keras archive, not a PyTorch or safetensors file"):
        rnnfast.read_tensors(p)
    p = str(tmp_path / "x.txt")
    with open(p, "w") as f:
        f.write("hello world, not a model")
    with pytest.raises(rnnfast.FormatError, match="not a model file rnnfast knows"):
        rnnfast.read_tensors(p)
    # a refused global is refused here as in load
    p = str(tmp_path / "whole.pt")
    torch.save(torch.nn.GRU(2, 3), p)
    with pytest.raises(rnnfast.FormatError, match=r"refused global 'torch\.nn\.modules\.rnn\.GRU'.*state_dict\(\)"):
        rnnfast.read_tensors(p)


# -- load: what it left out ----------------------------------------------------------------


def test_load_lightning_checkpoint_names_what_it_left_out(classifier, tmp_path):
    model, opt, ids = classifier
    path = str(tmp_path / "last.ckpt")
    torch.save(lightning_checkpoint(model, opt), path)
    rnn = rnnfast.load(path, batch_first=True)
    x = model.embedding(ids).detach()
    assert_same(rnn(x.numpy()), torch_run(model.lstm, x), np.float32)
    all_names = torch_tensors(torch.load(path, weights_only=True))
    used = {"state_dict.model.lstm." + k for k in model.lstm.state_dict()}
    expect = {k: tuple(t.shape) for k, t in all_names.items() if k not in used}
    assert dict(rnn.ignored_tensors) == expect
    assert list(rnn.ignored_tensors)[:3] == [
        "state_dict.model.embedding.weight",
        "state_dict.model.fc.weight",
        "state_dict.model.fc.bias",
    ]
    lines = []
    rnn.summary(print_fn=lines.append)
    note = lines[0].splitlines()[-1]
    assert note.startswith("left out: %d tensors of the file that are not this module's: " % len(expect)), note
    assert "state_dict.model.embedding.weight [40, 6]" in note and "(%d more)" % (len(expect) - 8) in note
    # the command line says it too
    r = subprocess.run(
        [sys.executable, "-m", "rnnfast", "info", path, "--batch-first"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "left out: %d tensors" % len(expect) in r.stdout


def test_nothing_left_out(classifier, tmp_path):
    model = classifier[0]
    path = str(tmp_path / "lstm.pt")
    torch.save(model.lstm.state_dict(), path)
    rnn = rnnfast.load(path)
    assert dict(rnn.ignored_tensors) == {}
    lines = []
    rnn.summary(print_fn=lines.append)
    assert "left out" not in lines[0]
    assert dict(rnnfast.from_torch(model.lstm).ignored_tensors) == {}


@pytest.mark.parametrize(
    "layout",
    [
        "flat",  # torch.save(model.state_dict()): rnn.weight_ih_l0 beside embedding.weight ...
        "model",  # {"model": state_dict, "optimizer": ...}
        "nested",  # {"encoder": {"rnn": {...}}}: keys as path
        "safetensors",
    ],
)
def test_prefixes_found_as_today(classifier, layout, tmp_path):
    """The module is found wherever it sits, as before: no prefix needed for one RNN."""
    model = classifier[0]
    sd = model.state_dict()
    path = str(tmp_path / "m.bin")
    if layout == "flat":
        torch.save(sd, path)
        name = "lstm.weight_ih_l0"
    elif layout == "model":
        torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 2}, path)
        name = "model.lstm.weight_ih_l0"
    elif layout == "nested":
        torch.save({"encoder": {"lstm": model.lstm.state_dict(), "embedding": model.embedding.state_dict()}}, path)
        name = "encoder.lstm.weight_ih_l0"
    else:
        safetensors_torch.save_file(sd, path)
        name = "lstm.weight_ih_l0"
    rnn = rnnfast.load(path, batch_first=True)
    x = torch.randn(2, 5, 6)
    assert_same(rnn(x.numpy()), torch_run(model.lstm, x), np.float32)
    assert name not in rnn.ignored_tensors
    # embedding.weight, fc.weight, fc.bias (the nested layout holds no head)
    assert len(rnn.ignored_tensors) == (1 if layout == "nested" else 3)
    assert_close(rnnfast.read_tensors(path)[name], sd["lstm.weight_ih_l0"].numpy(), np.float32)


class Seq2Seq(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.GRU(4, 6)
        self.decoder = torch.nn.GRU(5, 6)
        self.out = torch.nn.Linear(6, 5)


def test_two_rnns_refused_until_prefix_picks_one(tmp_path):
    torch.manual_seed(1)
    m = Seq2Seq().eval()
    path = str(tmp_path / "s2s.pt")
    torch.save({"model": m.state_dict(), "epoch": 1}, path)
    with pytest.raises(rnnfast.FormatError) as err:
        rnnfast.load(path)
    msg = str(err.value)
    assert "holds 2 recurrent modules" in msg
    assert "'model.decoder.'" in msg and "'model.encoder.'" in msg
    assert "prefix=" in msg and "rnnfast.load(path, prefix='model.decoder.')" in msg
    x = torch.randn(7, 2, 5)
    dec = rnnfast.load(path, prefix="model.decoder.")
    assert_same(dec(x.numpy()), torch_run(m.decoder, x), np.float32)
    assert sorted(dec.ignored_tensors) == sorted(["model." + k for k in m.state_dict() if not k.startswith("decoder.")])
    enc = rnnfast.load(path, prefix="encoder")
    x = torch.randn(7, 2, 4)
    assert_same(enc(x.numpy()), torch_run(m.encoder, x), np.float32)
    # a cell beside a module is a second candidate too
    sd = dict(m.encoder.state_dict(), **{"cell." + k: v for k, v in torch.nn.GRUCell(4, 6).state_dict().items()})
    torch.save(sd, path)
    with pytest.raises(rnnfast.FormatError, match=r"holds 2 recurrent modules, under the prefixes '', 'cell\.'"):
        rnnfast.load(path)
    assert isinstance(rnnfast.load(path, prefix="cell."), rnnfast.TorchCell)


def test_checkpoint_models_pickle(classifier, tmp_path):
    """Loaded models travel (rnnfast.dask / ray pickle them) with what they left out."""
    model, opt, _ = classifier
    path = str(tmp_path / "c.ckpt")
    torch.save(lightning_checkpoint(model, opt), path)
    rnn = rnnfast.load(path, batch_first=True)
    back = pickle.loads(pickle.dumps(rnn))
    assert dict(back.ignored_tensors) == dict(rnn.ignored_tensors) and len(back.ignored_tensors) > 30
    x = np.random.default_rng(0).standard_normal((3, 5, 6), dtype=np.float32)
    np.testing.assert_array_equal(back(x)[0], rnn(x)[0])
    torch.save({"model": {"cell." + k: v for k, v in torch.nn.GRUCell(6, 4).state_dict().items()}, "e": 1}, path)
    cell = rnnfast.load(path)
    back = pickle.loads(pickle.dumps(cell))
    assert repr(back) == repr(cell) and back.ignored_tensors == {}
    np.testing.assert_array_equal(back(x[:, 0]), cell(x[:, 0]))
    assert torch_file.MAX_READ_RATIO == 4


def fake_module(monkeypatch, dotted, **attrs):
    """Register module ``dotted`` (and its parents) in sys.modules, holding ``attrs``,
    so that torch.save can pickle classes of a package this test install lacks."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for k, v in attrs.items():
        v.__module__ = dotted
        monkeypatch.setattr(sys.modules[dotted], k, v, raising=False)


class AttributeDict(dict):
    """As Lightning defines it: a dict with attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key, val):
        self[key] = val


@pytest.mark.parametrize("where", ["lightning.fabric.utilities.data", "pytorch_lightning.utilities.parsing"])
def test_lightning_hyper_parameters_attribute_dict(classifier, where, monkeypatch, tmp_path):
    """save_hyperparameters() makes Lightning store hyper_parameters as an AttributeDict:
    read as the mapping it is."""
    model, opt, ids = classifier
    fake_module(monkeypatch, where, AttributeDict=AttributeDict)
    ckpt = lightning_checkpoint(model, opt)
    ckpt["hyper_parameters"] = AttributeDict(vocab=40, hidden=8, optimizer={"lr": 0.01})
    path = str(tmp_path / "hp.ckpt")
    torch.save(ckpt, path)
    with zipfile.ZipFile(path) as z:  # the pickle names the class (GLOBAL "module\nname")
        assert (where + "\nAttributeDict").encode() in z.read("hp/data.pkl")
    rnn = rnnfast.load(path, batch_first=True)
    x = model.embedding(ids).detach()
    assert_same(rnn(x.numpy()), torch_run(model.lstm, x), np.float32)
    assert len(rnnfast.read_tensors(path)) == len(torch_tensors(ckpt))


class RunConfig:
    def __init__(self):
        self.lr = 0.1


def test_other_classes_refused_with_both_readings(monkeypatch, tmp_path):
    """A class of another package: the whole model, or a value beside the weights."""
    fake_module(monkeypatch, "myproject.config", RunConfig=RunConfig)
    path = str(tmp_path / "cfg.pt")
    torch.save({"model": torch.nn.GRU(2, 3).state_dict(), "config": RunConfig()}, path)
    for fn in (rnnfast.load, rnnfast.read_tensors):
        with pytest.raises(rnnfast.FormatError) as err:
            fn(path)
        msg = str(err.value)
        assert "refused global 'myproject.config.RunConfig'" in msg
        assert "If it is the whole model" in msg and "torch.save(model.state_dict(), path)" in msg
        assert "a value saved beside the weights (a config, hyper-parameters), save the checkpoint without it" in msg


class CountingFile:
    """A file whose reads are counted (bytes)."""

    def __init__(self, f):
        self.f, self.read_bytes = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.read_bytes += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_legacy_storage_read_once_for_many_views(tmp_path):
    """Many tensors viewing one storage of a legacy file read its bytes once, not once
    per tensor (which would cost the storage's size times the number of tensors)."""
    big = torch.arange(1 << 16, dtype=torch.float32)
    views = [big[i : i + 2] for i in range(200)]
    path = str(tmp_path / "views.pt")
    torch.save({"views": views}, path, _use_new_zipfile_serialization=False)
    with torch_pickle.open_torch_file(path) as archive:
        archive._f = counting = CountingFile(archive._f)
        arrays = [archive.array(r) for r in archive.root["views"]]
    assert counting.read_bytes == big.numel() * 4  # the storage, once
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(a, [i, i + 1])
    got = rnnfast.read_tensors(path)
    assert len(got) == 200 and got["views.199"].tolist() == [199.0, 200.0]
