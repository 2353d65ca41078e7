"""rnnfast.load on files written by live PyTorch 2.13 (and the safetensors package):
state_dicts in the zip and legacy formats, .safetensors, checkpoints with prefixes,
float16 / bfloat16 / float64 storage, architecture inference and its errors, and
loading in a process where torch cannot be imported."""

import copy
import itertools
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch

import rnnfast

from _testing import TOL, TORCH_MODES, assert_same, make_module, torch_run

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def write(kind, m, path, prefix=""):
    """Save ``m``'s state_dict as ``kind``: "pt", "legacy", "safetensors", or a checkpoint
    "ckpt" ({"model": {prefix + name: tensor, ...}, "epoch": 3, ...})."""
    sd = {prefix + k: v for k, v in m.state_dict().items()}
    if kind == "pt":
        torch.save(m.state_dict() if not prefix else sd, path)
    elif kind == "legacy":
        torch.save(m.state_dict() if not prefix else sd, path, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    elif kind == "ckpt":
        other = {
            "encoder.embedding.weight": torch.randn(11, m.input_size),
            "head.weight": torch.randn(2, 3),
            "head.bias": torch.zeros(2),
            "step": torch.tensor(7),
        }
        torch.save(
            {
                "model": {**other, **sd},
                "epoch": 3,
                "lr": 0.01,
                "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
                "history": [1.0, 2.0, ("a", None, True)],
                "name": "run-7",
            },
            path,
        )
    return path


# -- the grid --------------------------------------------------------------------------

FILE_GRID = []
for i, (mode, kind) in enumerate(itertools.product(TORCH_MODES, ("pt", "safetensors", "ckpt", "legacy"))):
    FILE_GRID.append(
        dict(
            mode=mode,
            kind=kind,
            num_layers=1 + i % 3,
            bidirectional=i % 2 == 0,
            proj_size=2 if mode == "LSTM" and i % 2 == 1 else 0,
            bias=i % 5 != 2,
            batch_first=i % 3 == 1,
            float64=i % 4 == 3,
            lengths=i % 2 == 1,
        )
    )


def _fid(c):
    return "%s-%s-L%d%s%s%s%s%s%s" % (
        c["mode"],
        c["kind"],
        c["num_layers"],
        "-bi" if c["bidirectional"] else "",
        "-proj" if c["proj_size"] else "",
        "" if c["bias"] else "-nobias",
        "-bf" if c["batch_first"] else "",
        "-f64" if c["float64"] else "",
        "-len" if c["lengths"] else "",
    )


@pytest.mark.parametrize("case", FILE_GRID, ids=[_fid(c) for c in FILE_GRID])
def test_load_file_matches_module(case, tmp_path):
    kw = dict(
        num_layers=case["num_layers"],
        bidirectional=case["bidirectional"],
        bias=case["bias"],
        batch_first=case["batch_first"],
    )
    if case["proj_size"]:
        kw["proj_size"] = case["proj_size"]
    m = make_module(case["mode"], 4, 5, seed=len(FILE_GRID) + FILE_GRID.index(case), **kw)
    dtype = np.float64 if case["float64"] else np.float32
    if case["float64"]:
        m = m.double()
    prefix = "encoder.rnn." if case["kind"] in ("ckpt", "safetensors") else ""
    path = write(case["kind"], m, str(tmp_path / "m.bin"), prefix)
    options = {"batch_first": case["batch_first"]}
    if case["mode"] == "RNN_RELU":
        options["nonlinearity"] = "relu"
    if case["kind"] == "ckpt" and case["num_layers"] != 2:
        options["prefix"] = "encoder.rnn."  # else found without one: the only RNN in it
    rnn = rnnfast.load(path, **options)
    assert isinstance(rnn, rnnfast.TorchRNN)
    assert rnn.dtype == dtype
    assert (
        rnn.mode,
        rnn.num_layers,
        rnn.bidirectional,
        rnn.proj_size,
        rnn.bias,
        rnn.batch_first,
        rnn.input_size,
        rnn.hidden_size,
    ) == (case["mode"], m.num_layers, m.bidirectional, m.proj_size, m.bias, m.batch_first, 4, 5)
    rng = np.random.default_rng(FILE_GRID.index(case))
    B, T = 3, 8
    x = rng.standard_normal((B, T, 4) if case["batch_first"] else (T, B, 4)).astype(dtype)
    lengths = np.array([5, 8, 1]) if case["lengths"] else None
    assert_same(rnn(x, lengths=lengths), torch_run(m, x, lengths=lengths), dtype)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["pt", "safetensors", "legacy"])
def test_half_precision_storage(half, kind, tmp_path):
    m = make_module("LSTM", 3, 6, num_layers=2, bidirectional=True, proj_size=4).to(getattr(torch, half))
    path = write(kind, m, str(tmp_path / "h.bin"))
    rnn = rnnfast.load(path)
    assert rnn.dtype == np.float32
    x = np.random.default_rng(0).standard_normal((7, 2, 3)).astype(np.float32)
    assert_same(rnn(x), torch_run(m.float(), x), np.float32)  # float32 of the same rounded weights
    rnn64 = rnnfast.load(path, dtype="float64")
    assert rnn64.dtype == np.float64
    x64 = x.astype(np.float64)
    assert_same(rnn64(x64), torch_run(m.double(), x64), np.float64)


def test_float64_storage_and_dtype_option(tmp_path):
    m = make_module("GRU", 3, 5, bidirectional=True).double()
    path = write("pt", m, str(tmp_path / "d.pt"))
    x = np.random.default_rng(1).standard_normal((6, 2, 3))
    rnn = rnnfast.load(path)
    assert rnn.dtype == np.float64
    assert_same(rnn(x), torch_run(m, x), np.float64)
    rnn32 = rnnfast.load(path, dtype="float32")
    assert rnn32.dtype == np.float32
    assert_same(rnn32(x), torch_run(m, x), np.float32)
    with pytest.raises(ValueError, match="float32 or float64"):
        rnnfast.load(path, dtype="float16")


def test_long_sequence_from_file(tmp_path):
    """T=1000 through a .pt file, stacked bidirectional GRU with lengths and hx."""
    m = make_module("GRU", 6, 12, num_layers=2, bidirectional=True, batch_first=True)
    path = write("pt", m, str(tmp_path / "long.pt"))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 1000, 6)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 12)).astype(np.float32)
    lengths = np.array([999, 1000, 400])
    rnn = rnnfast.load(path, batch_first=True)
    assert_same(rnn(x, h0, lengths=lengths), torch_run(m, x, torch.as_tensor(h0), lengths), np.float32)


def test_big_endian_zip_is_honoured(tmp_path):
    """A zip whose ``byteorder`` record says big: the storages are read big-endian
    (torch.load itself confirms the rewritten file means the same weights)."""
    m = make_module("LSTM", 3, 4, bidirectional=True)
    little = write("pt", m, str(tmp_path / "le.pt"))
    big = str(tmp_path / "be.pt")
    with zipfile.ZipFile(little) as zin, zipfile.ZipFile(big, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            zout.writestr(info.filename, data)
    back = torch.load(big, weights_only=True)
    for k, v in m.state_dict().items():
        assert torch.equal(back[k], v)
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)
    assert_same(rnnfast.load(big)(x), torch_run(m, x), np.float32)


def test_shared_storage_views(tmp_path):
    """Tensors that are views into one storage (offsets, as flattened weights give)."""
    m = make_module("GRU", 3, 4, bidirectional=True)
    flat = torch.cat([v.reshape(-1) for v in m.state_dict().values()])
    sd, pos = {}, 0
    for k, v in m.state_dict().items():
        sd[k] = flat[pos : pos + v.numel()].view(v.shape)
        pos += v.numel()
    path = str(tmp_path / "views.pt")
    torch.save(sd, path)
    with zipfile.ZipFile(path) as z:
        assert sum("/data/" in n and "serialization" not in n for n in z.namelist()) == 1
    x = np.random.default_rng(4).standard_normal((5, 2, 3)).astype(np.float32)
    assert_same(rnnfast.load(path)(x), torch_run(m, x), np.float32)


def test_transposed_strides(tmp_path):
    """A non-contiguous tensor (a transpose's strides) is read by its strides."""
    m = make_module("RNN_TANH", 3, 4)
    sd = dict(m.state_dict())
    sd["weight_hh_l0"] = sd["weight_hh_l0"].t().contiguous().t()
    assert not sd["weight_hh_l0"].is_contiguous()
    path = str(tmp_path / "t.pt")
    torch.save(sd, path)
    x = np.random.default_rng(5).standard_normal((5, 2, 3)).astype(np.float32)
    assert_same(rnnfast.load(path)(x), torch_run(m, x), np.float32)


# -- checkpoints and prefixes ------------------------------------------------------------


def test_checkpoint_prefixes(tmp_path):
    enc = make_module("LSTM", 3, 4, seed=1)
    dec = make_module("GRU", 4, 5, seed=2, bidirectional=True)
    ckpt = {
        "model": {
            **{"encoder.rnn." + k: v for k, v in enc.state_dict().items()},
            **{"decoder.rnn." + k: v for k, v in dec.state_dict().items()},
            "decoder.out.weight": torch.randn(2, 10),
        },
        "epoch": 3,
    }
    path = str(tmp_path / "ckpt.pt")
    torch.save(ckpt, path)
    with pytest.raises(
        rnnfast.FormatError,
        match=r"2 recurrent modules.*'model\.decoder\.rnn\.'.*"
        r"'model\.encoder\.rnn\.'.*prefix=",
    ):
        rnnfast.load(path)
    x = np.random.default_rng(6).standard_normal((5, 2, 3)).astype(np.float32)
    for prefix in ("encoder.rnn.", "encoder.rnn", "model.encoder.rnn."):
        rnn = rnnfast.load(path, prefix=prefix)
        assert rnn.mode == "LSTM"
        assert_same(rnn(x), torch_run(enc, x), np.float32)
    y = np.random.default_rng(7).standard_normal((5, 2, 4)).astype(np.float32)
    assert_same(rnnfast.load(path, prefix="decoder.rnn.")(y), torch_run(dec, y), np.float32)
    with pytest.raises(
        rnnfast.FormatError,
        match=r"no recurrent module under prefix 'encoder\.gru\.'.*"
        r"'model\.encoder\.rnn\.'",
    ):
        rnnfast.load(path, prefix="encoder.gru.")


def test_nested_module_dicts_and_lists(tmp_path):
    """The dict path counts as part of the prefix: {"encoder": {"rnn": state_dict}}."""
    m = make_module("GRU", 3, 4)
    path = str(tmp_path / "nested.pt")
    torch.save({"encoder": {"rnn": m.state_dict()}, "ensemble": [{"other": torch.zeros(2)}]}, path)
    x = np.random.default_rng(8).standard_normal((4, 1, 3)).astype(np.float32)
    assert_same(rnnfast.load(path)(x), torch_run(m, x), np.float32)
    assert_same(rnnfast.load(path, prefix="encoder.rnn.")(x), torch_run(m, x), np.float32)
    path2 = str(tmp_path / "list.pt")
    torch.save([m.state_dict(), make_module("GRU", 3, 4, seed=9).state_dict()], path2)
    with pytest.raises(rnnfast.FormatError, match=r"'0\.', '1\.'"):
        rnnfast.load(path2)
    assert_same(rnnfast.load(path2, prefix="0.")(x), torch_run(m, x), np.float32)


def test_safetensors_with_prefix_and_metadata(tmp_path):
    m = make_module("LSTM", 3, 4, num_layers=2)
    path = str(tmp_path / "p.safetensors")
    sd = {"rnn." + k: v for k, v in m.state_dict().items()}
    sd["fc.weight"] = torch.randn(2, 4)
    safetensors_torch.save_file(sd, path, metadata={"format": "pt"})
    x = np.random.default_rng(9).standard_normal((4, 2, 3)).astype(np.float32)
    assert_same(rnnfast.load(path)(x), torch_run(m, x), np.float32)
    assert_same(rnnfast.load(path, prefix="rnn.")(x), torch_run(m, x), np.float32)


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_no_rnn_in_file(kind, tmp_path):
    lin = torch.nn.Linear(3, 4)
    path = str(tmp_path / "lin.bin")
    if kind == "pt":
        torch.save(lin.state_dict(), path)
    else:
        safetensors_torch.save_file(lin.state_dict(), path)
    with pytest.raises(
        rnnfast.FormatError,
        match=r"no nn\.GRU / nn\.LSTM / nn\.RNN state_dict.*"
        r"2 tensors: ",
    ) as err:
        rnnfast.load(path)
    assert "'weight' [4, 3] float32" in str(err.value) and "'bias' [4] float32" in str(err.value)


def test_no_rnn_other_objects(tmp_path):
    path = str(tmp_path / "t.pt")
    torch.save(torch.zeros(3, 2), path)
    with pytest.raises(rnnfast.FormatError, match=r"a single tensor \[3, 2\] float32"):
        rnnfast.load(path)
    torch.save({"epoch": 3, "name": "x"}, path)
    with pytest.raises(rnnfast.FormatError, match="no tensors; other keys: 'epoch', 'name'"):
        rnnfast.load(path)
    torch.save([1, 2], path)
    with pytest.raises(rnnfast.FormatError, match="a list of 2 items"):
        rnnfast.load(path)


# -- architecture inference ---------------------------------------------------------------


def _save(sd, tmp_path, name="x.pt"):
    path = str(tmp_path / name)
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "mode,kw,expect",
    [
        ("GRU", dict(num_layers=3, bidirectional=True), "GRU(5, 7, num_layers=3, bidirectional=True)"),
        ("LSTM", dict(proj_size=3, bias=False), "LSTM(5, 7, bias=False, proj_size=3)"),
        ("LSTM", dict(num_layers=2), "LSTM(5, 7, num_layers=2)"),
        ("RNN_TANH", dict(bidirectional=True), "RNN(5, 7, bidirectional=True)"),
        ("GRU", dict(proj_size=0), "GRU(5, 7)"),
    ],
)
def test_architecture_inferred(mode, kw, expect, tmp_path):
    if mode != "LSTM":
        kw.pop("proj_size", None)
    m = make_module(mode, 5, 7, **kw)
    rnn = rnnfast.load(_save(m.state_dict(), tmp_path))
    assert repr(rnn) == "TorchRNN(%s, dtype=float32)" % expect


def test_inconsistent_tensors(tmp_path):
    base = make_module("LSTM", 3, 4, num_layers=2, proj_size=2).state_dict()

    def bad(**changes):
        sd = dict(base)
        for k, v in changes.items():
            if v is None:
                del sd[k]
            else:
                sd[k] = v
        return _save(sd, tmp_path)

    with pytest.raises(
        rnnfast.FormatError,
        match=r"'weight_hh_l1' has shape \(16, 3\); an LSTM\(3, 4, "
        r"num_layers=2, proj_size=2\) needs \(16, 2\)",
    ):
        rnnfast.load(bad(weight_hh_l1=torch.zeros(16, 3)))
    with pytest.raises(rnnfast.FormatError, match=r"'bias_hh_l1' is missing.*\(16,\)"):
        rnnfast.load(bad(bias_hh_l1=None))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_hr_l0' has shape \(3, 4\).*proj_size = 2"):
        rnnfast.load(bad(weight_hr_l0=torch.zeros(3, 4)))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l0' is missing"):
        rnnfast.load(bad(weight_ih_l0=None))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l2' is missing"):
        rnnfast.load(bad(weight_hh_l2=torch.zeros(16, 2)))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l0_reverse' is missing"):
        rnnfast.load(bad(weight_hh_l0_reverse=torch.zeros(16, 2)))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l0_raw' is not a parameter of nn\.GRU"):
        rnnfast.load(bad(weight_ih_l0_raw=torch.zeros(16, 3)))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l0' must be 2-D.*\(48,\)"):
        rnnfast.load(bad(weight_ih_l0=torch.zeros(48)))
    with pytest.raises(rnnfast.FormatError, match="element type int64"):
        rnnfast.load(bad(bias_ih_l0=torch.zeros(16, dtype=torch.int64)))

    gru = make_module("GRU", 3, 4).state_dict()
    sd = dict(gru, weight_ih_l0=torch.zeros(10, 3), weight_hh_l0=torch.zeros(10, 4))
    with pytest.raises(
        rnnfast.FormatError,
        match=r"'weight_ih_l0' has shape \(10, 3\).*\(10, 4\).*"
        r"1 \(RNN\), 3 \(GRU\) or 4 \(LSTM\)",
    ):
        rnnfast.load(_save(sd, tmp_path))
    sd = dict(gru, weight_hh_l0=torch.zeros(11, 4))
    with pytest.raises(
        rnnfast.FormatError,
        match=r"'weight_ih_l0' has shape \(12, 3\) but 'weight_hh_l0' "
        r"has shape \(11, 4\)",
    ):
        rnnfast.load(_save(sd, tmp_path))
    sd = dict(gru, weight_hr_l0=torch.zeros(4, 4))
    with pytest.raises(rnnfast.FormatError, match="only an LSTM has"):
        rnnfast.load(_save(sd, tmp_path))
    # names carry the prefix in messages
    sd = {"enc.rnn." + k: v for k, v in gru.items()}
    sd["enc.rnn.bias_hh_l0"] = torch.zeros(5)
    with pytest.raises(rnnfast.FormatError, match=r"'enc\.rnn\.bias_hh_l0' has shape \(5,\)"):
        rnnfast.load(_save(sd, tmp_path))


def test_options(tmp_path):
    gru = _save(make_module("GRU", 3, 4).state_dict(), tmp_path, "g.pt")
    rnn_path = _save(make_module("RNN_RELU", 3, 4).state_dict(), tmp_path, "r.pt")
    with pytest.raises(ValueError, match="nonlinearity='relu' is an nn.RNN option"):
        rnnfast.load(gru, nonlinearity="relu")
    assert rnnfast.load(gru, nonlinearity="tanh").mode == "GRU"
    with pytest.raises(ValueError, match="nonlinearity must be"):
        rnnfast.load(rnn_path, nonlinearity="sigmoid")
    assert rnnfast.load(rnn_path).mode == "RNN_TANH"  # a file cannot say; tanh is the default
    relu = rnnfast.load(rnn_path, nonlinearity="relu")
    assert relu.mode == "RNN_RELU"
    m = make_module("RNN_RELU", 3, 4)
    x = np.random.default_rng(10).standard_normal((6, 2, 3)).astype(np.float32)
    assert_same(relu(x), torch_run(m, x), np.float32)
    with pytest.raises(TypeError):
        rnnfast.load(gru, no_such_option=1)
    with pytest.raises(TypeError):
        rnnfast.load(gru, batch_first="yes")
    with pytest.raises(TypeError):
        rnnfast.load(gru, prefix=3)


# -- without torch ------------------------------------------------------------------------

NO_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    import rnnfast
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch was importable")
    x = np.load(sys.argv[1])
    results = {}
    for i, (path, kw) in enumerate(%s):
        rnn = rnnfast.load(path, **kw)
        out, h = rnn(x, lengths=[5, 2])
        results["out%%d" %% i] = out
        results["h%%d" %% i] = h[0] if isinstance(h, tuple) else h
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    np.savez(sys.argv[2], **results)
""")


def test_load_without_torch(tmp_path):
    m = make_module("LSTM", 3, 4, num_layers=2, bidirectional=True, proj_size=2)
    files = [
        (write("pt", m, str(tmp_path / "a.pt")), {}),
        (write("safetensors", m, str(tmp_path / "a.safetensors")), {}),
        (write("legacy", m, str(tmp_path / "a.legacy")), {}),
        (
            write("ckpt", copy.deepcopy(m).to(torch.bfloat16), str(tmp_path / "a.ckpt"), "encoder.rnn."),
            {"prefix": "encoder.rnn."},
        ),
    ]
    x = np.random.default_rng(11).standard_normal((5, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "child.py"
    script.write_text(NO_TORCH % (files,))
    env = dict(os.environ, PYTHONWARNINGS="error")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "x.npy"), str(tmp_path / "r.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "r.npz")
    for i in range(3):
        want_out, (want_h, _) = torch_run(m, x, lengths=[5, 2])
        np.testing.assert_allclose(got["out%d" % i], want_out, **TOL[np.dtype(np.float32)])
        np.testing.assert_allclose(got["h%d" % i], want_h, **TOL[np.dtype(np.float32)])
    want_out, (want_h, _) = torch_run(m.to(torch.bfloat16).float(), x, lengths=[5, 2])  # rounded weights
    np.testing.assert_allclose(got["out3"], want_out, **TOL[np.dtype(np.float32)])
    np.testing.assert_allclose(got["h3"], want_h, **TOL[np.dtype(np.float32)])
