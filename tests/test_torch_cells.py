"""nn.GRUCell / nn.LSTMCell / nn.RNNCell as rnnfast.TorchCell (from state_dict files,
checkpoints and live cells), called like the module and compared with live PyTorch 2.13;
fastai's AWD-LSTM (WeightDropout's ``weight_hh_l0_raw``) loaded with the weight it runs
with at inference."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch
import torch.nn.functional as F

import rnnfast

from _testing import assert_close, assert_same, seed_of, torch_run

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CELLS = {
    "GRUCell": lambda i, h, **kw: torch.nn.GRUCell(i, h, **kw),
    "LSTMCell": lambda i, h, **kw: torch.nn.LSTMCell(i, h, **kw),
    "RNNCell": lambda i, h, **kw: torch.nn.RNNCell(i, h, **kw),
    "RNNCell-relu": lambda i, h, **kw: torch.nn.RNNCell(i, h, nonlinearity="relu", **kw),
}


def make_cell(kind, I, H, *, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return CELLS[kind](I, H, bias=bias).to(dtype).eval()


def torch_step(cell, x, hx):
    with torch.no_grad():
        out = cell(
            torch.as_tensor(x),
            hx if hx is None else tuple(map(torch.as_tensor, hx)) if isinstance(hx, tuple) else torch.as_tensor(hx),
        )
    return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


def assert_state(got, want, dtype):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == dtype
            assert_close(g, w, dtype)
    else:
        assert isinstance(got, np.ndarray) and got.shape == want.shape and got.dtype == dtype
        assert_close(got, want, dtype)


def save(cell, kind, path, prefix=""):
    sd = {prefix + k: v for k, v in cell.state_dict().items()}
    if kind == "pt":
        torch.save(sd, path)
    elif kind == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:  # a checkpoint: the cell inside a bigger model, with optimizer state
        torch.save({"model": dict(sd, **{"embed.weight": torch.randn(9, 3)}), "optimizer": {"state": {}}}, path)
    return path


GRID = [
    (kind, file_kind, bias, B)
    for kind in CELLS
    for file_kind, bias, B in (("pt", True, 3), ("safetensors", False, 1), ("ckpt", True, 0), ("legacy", True, None))
]


@pytest.mark.parametrize("kind, file_kind, bias, B", GRID)
def test_cell_file_matches_torch(kind, file_kind, bias, B, tmp_path):
    """One step, then a chain of steps feeding the state back (as a decoder loop does),
    batched (B rows, 0 included) and unbatched (B None)."""
    I, H = 5, 7
    cell = make_cell(kind, I, H, bias=bias, seed=seed_of(kind, file_kind))
    path = save(cell, file_kind, str(tmp_path / "cell.bin"), prefix="decoder.cell." if file_kind == "ckpt" else "")
    options = {"nonlinearity": "relu"} if kind == "RNNCell-relu" else {}
    rc = rnnfast.load(path, **options)
    assert isinstance(rc, rnnfast.TorchCell)
    name = kind.split("-")[0]
    assert repr(rc).startswith("TorchCell(%s(5, 7" % name)
    rng = np.random.default_rng(seed_of(kind, B))
    shape = (I,) if B is None else (B, I)
    hshape = (H,) if B is None else (B, H)
    lstm = name == "LSTMCell"
    x = rng.standard_normal(shape, dtype=np.float32)
    # no state given: zeros
    assert_state(rc(x), torch_step(cell, x, None), np.float32)
    h = rng.standard_normal(hshape, dtype=np.float32)
    state = (h, rng.standard_normal(hshape, dtype=np.float32)) if lstm else h
    want = state
    got = state
    for _ in range(40):
        x = rng.standard_normal(shape, dtype=np.float32)
        want = torch_step(cell, x, want)
        got = rc(x, got)
        assert_state(got, want, np.float32)
    if file_kind == "ckpt":
        assert set(rc.ignored_tensors) == {"model.embed.weight"}


@pytest.mark.parametrize("kind", list(CELLS))
def test_live_cell_float64_and_torch_tensors(kind):
    cell = make_cell(kind, 4, 6, dtype=torch.float64, seed=2)
    rc = rnnfast.from_torch(cell)
    assert rc.dtype == np.float64 and rc.source == "live torch.nn.%s" % type(cell).__name__
    x = torch.randn(3, 4, dtype=torch.float64)
    hx = torch.randn(3, 6, dtype=torch.float64)
    state = (hx, torch.randn(3, 6, dtype=torch.float64)) if kind == "LSTMCell" else hx
    want = torch_step(cell, x, state)
    assert_state(rc(x, state), want, np.float64)  # torch tensors accepted as they are
    # float32 on request
    rc32 = rnnfast.from_torch(cell, dtype="float32")
    assert_state(rc32(x.numpy().astype(np.float32)), torch_step(cell, x, None), np.float32)


def test_cell_equals_a_one_step_module(tmp_path):
    """A cell and an nn.GRU holding its weights agree step for step (one engine call each)."""
    cell = make_cell("GRUCell", 3, 4, seed=5)
    gru = torch.nn.GRU(3, 4).eval()
    gru.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    rc, rg = rnnfast.from_torch(cell), rnnfast.from_torch(gru)
    x = np.random.default_rng(0).standard_normal((2, 3), dtype=np.float32)
    out, h = rg(x[None])
    np.testing.assert_array_equal(rc(x), h[0])
    assert_same(rg(x[None]), torch_run(gru, x[None]), np.float32)


def test_cell_on_the_command_line(tmp_path):
    cell = make_cell("GRUCell", 4, 6)
    path = save(cell, "pt", str(tmp_path / "c.pt"))
    np.save(str(tmp_path / "x.npy"), np.zeros((3, 4), np.float32))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rnnfast", *args], capture_output=True, text=True, timeout=120)

    r = cli("info", path)
    assert r.returncode == 0 and "TorchCell(GRUCell(4, 6), dtype=float32)" in r.stdout, r.stderr
    assert "total parameters: %d" % sum(p.numel() for p in cell.parameters()) in r.stdout
    for args in (("predict", path, str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")), ("bench", path)):
        r = cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert "holds an nn.GRUCell: a cell takes one step, h = cell(x, h), run from Python" in r.stderr


def test_cell_summary_and_threads(tmp_path):
    cell = make_cell("LSTMCell", 6, 8, bias=False)
    path = save(cell, "pt", str(tmp_path / "c.pt"))
    rc = rnnfast.load(path)
    lines = []
    rc.summary(print_fn=lines.append)
    text = lines[0]
    assert "TorchCell(LSTMCell(6, 8, bias=False), dtype=float32)" in text
    assert "cell   LSTMCell" in text and "bias=False" in text
    assert "total parameters: %s" % format(sum(p.numel() for p in cell.parameters()), ",") in text
    assert rc.describe()["input_shape"] == (None, 6)
    x = np.random.default_rng(1).standard_normal((64, 6), dtype=np.float32)
    h1 = rc(x, num_threads=1)
    h2 = rc(x, num_threads=2)
    np.testing.assert_array_equal(h1[0], h2[0])
    np.testing.assert_array_equal(h1[1], h2[1])


def test_cell_refusals(tmp_path):
    gru = make_cell("GRUCell", 3, 4)
    lstm = make_cell("LSTMCell", 3, 4)
    g, l = rnnfast.from_torch(gru), rnnfast.from_torch(lstm)
    with pytest.raises(ValueError, match=r"GRUCell expects input of shape \(batch, 3\) or \(3,\), got shape \(2, 5\)"):
        g(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"expects input of shape"):
        g(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 4\) for input of batch 2, got \(3, 4\)"):
        g(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"h must have shape \(4,\)"):
        g(np.zeros(3, np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"takes hx as one array h, not a tuple"):
        g(np.zeros((2, 3), np.float32), (np.zeros((2, 4)), np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"LSTMCell takes hx as a tuple \(h, c\)"):
        l(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"c must have shape \(2, 4\)"):
        l(np.zeros((2, 3), np.float32), (np.zeros((2, 4)), np.zeros((2, 5))))
    # a live cell whose attributes disagree with its weights
    odd = make_cell("GRUCell", 3, 4)
    odd.hidden_size = 5
    with pytest.raises(rnnfast.FormatError, match=r"weights describe GRUCell\(3, 4\) but the cell says \(3, 5, True\)"):
        rnnfast.from_torch(odd)
    # files: options that do not apply, tensors that are not one cell's
    path = save(gru, "pt", str(tmp_path / "g.pt"))
    # a cell's input has no time axis: batch_first changes nothing
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(rnnfast.load(path, batch_first=True)(x), rnnfast.load(path)(x))
    with pytest.raises(ValueError, match=r"nonlinearity='relu' is an nn\.RNN option"):
        rnnfast.load(path, nonlinearity="relu")
    sd = gru.state_dict()

    def bad(**change):
        d = dict(sd)
        for k, v in change.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v
        p = str(tmp_path / "bad.pt")
        torch.save(d, p)
        return p

    with pytest.raises(rnnfast.FormatError, match=r"tensor 'weight_hh' is missing"):
        rnnfast.load(bad(weight_hh=None))
    with pytest.raises(
        rnnfast.FormatError, match=r"tensor 'bias_hh' is missing: an GRUCell\(3, 4\) has one of shape \(12,\)"
    ):
        rnnfast.load(bad(bias_hh=None))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_hh' has shape \(12, 5\).*G = 1 \(RNNCell\), 3 \(GRUCell\)"):
        rnnfast.load(bad(weight_hh=torch.zeros(12, 5)))
    with pytest.raises(rnnfast.FormatError, match=r"'bias_ih' has shape \(4,\); an GRUCell\(3, 4\) needs \(12,\)"):
        rnnfast.load(bad(bias_ih=torch.zeros(4)))
    with pytest.raises(rnnfast.FormatError, match=r"'scale' is not a parameter of nn\.GRUCell"):
        rnnfast.load(bad(scale=torch.zeros(4)))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l0' is not a parameter of nn\.GRUCell"):
        rnnfast.load(bad(weight_ih_l0=torch.zeros(12, 3)))
    with pytest.raises(rnnfast.FormatError, match=r"element type int64"):
        rnnfast.load(bad(weight_ih=torch.zeros(12, 3, dtype=torch.int64)))


# -- fastai AWD-LSTM -------------------------------------------------------------------


class WeightDropout(torch.nn.Module):
    """fastai's WeightDropout (fastai/text/models/awdlstm.py, v1 and v2 alike): the
    wrapped module's weight is a dropped-out copy of ``<name>_raw``, a parameter of the
    wrapper; ``module._parameters[name]`` keeps the last copy made, so the state_dict
    holds both. In eval mode the copy is ``F.dropout(raw, training=False)``: the raw
    weight itself."""

    def __init__(self, module, weight_p, layer_names=("weight_hh_l0",)):
        super().__init__()
        self.module, self.weight_p, self.layer_names = module, weight_p, list(layer_names)
        for layer in self.layer_names:
            w = getattr(self.module, layer)
            self.register_parameter(f"{layer}_raw", torch.nn.Parameter(w.data))
            self.module._parameters[layer] = F.dropout(w, p=self.weight_p, training=False)

    def _setweights(self):
        for layer in self.layer_names:
            raw_w = getattr(self, f"{layer}_raw")
            self.module._parameters[layer] = F.dropout(raw_w, p=self.weight_p, training=self.training)

    def forward(self, *args):
        self._setweights()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.module(*args)


class AWDLSTM(torch.nn.Module):
    """fastai's AWD_LSTM layout: an encoder embedding and one WeightDropout(nn.LSTM) per
    layer in ``rnns`` (the last layer's size is the embedding's)."""

    def __init__(self, vocab=30, emb=6, hidden=10, n_layers=3, weight_p=0.5):
        super().__init__()
        self.encoder = torch.nn.Embedding(vocab, emb)
        self.rnns = torch.nn.ModuleList(
            [
                WeightDropout(
                    torch.nn.LSTM(emb if k == 0 else hidden, hidden if k != n_layers - 1 else emb, batch_first=True),
                    weight_p,
                )
                for k in range(n_layers)
            ]
        )

    def forward(self, ids):
        x = self.encoder(ids)
        for rnn in self.rnns:
            x, _ = rnn(x)
        return x


def test_awd_lstm_weight_hh_raw(tmp_path):
    torch.manual_seed(11)
    model = AWDLSTM()
    ids = torch.randint(0, 30, (4, 8))
    model.train()
    model(ids).sum().backward()  # training: the modules' weight_hh_l0 are dropped-out copies
    model.eval()
    sd = model.state_dict()
    stale = sd["rnns.0.module.weight_hh_l0"]
    assert (stale == 0).any() and not torch.equal(stale, sd["rnns.0.weight_hh_l0_raw"])
    path = str(tmp_path / "lm.pth")
    torch.save({"model": sd, "opt": None}, path)
    with pytest.raises(rnnfast.FormatError) as err:
        rnnfast.load(path)
    assert "holds 3 recurrent modules" in str(err.value)
    for k in range(3):
        assert "'model.rnns.%d.module.'" % k in str(err.value)
    x = model.encoder(ids).detach()
    for k, wd in enumerate(model.rnns):
        rnn = rnnfast.load(path, prefix="rnns.%d.module." % k, batch_first=True)
        with torch.no_grad():
            want_out, (want_h, want_c) = wd(x)  # eval: runs with the raw weight
        got_out, (got_h, got_c) = rnn(x.numpy())
        assert_close(got_out, want_out.numpy(), np.float32)
        assert_close(got_c, want_c.numpy(), np.float32)
        # the stale copy is named as left out, the raw one is used
        assert "model.rnns.%d.module.weight_hh_l0" % k in rnn.ignored_tensors
        assert "model.rnns.%d.weight_hh_l0_raw" % k not in rnn.ignored_tensors
        x = want_out
    # a _raw tensor without a wrapped module beside it is not taken for one
    torch.save({"weight_hh_l0_raw": torch.zeros(40, 10), "head.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(rnnfast.FormatError, match=r"no nn\.GRU / nn\.LSTM / nn\.RNN state_dict"):
        rnnfast.load(path)
