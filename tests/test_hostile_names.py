"""Names matched exactly (issue 12, item 4).

A regex ``$`` matches before a trailing newline, so ``'weight_ih_l0\\n'`` was taken for
``weight_ih_l0`` and, written after the real key, replaced it (in .pt and safetensors
files alike; PyTorch's strict loading refuses such keys). Parameter names are now
matched whole: any other spelling (whitespace, control characters, leading zeros,
non-ASCII digits, a huge layer index) is a FormatError naming the tensor, a key given
twice (in a pickled dict, an OrderedDict's arguments, a safetensors header) is refused
rather than silently replaced, and an architecture is inferred only where PyTorch could
build it (a GRU plus a stray ``weight_hr_l0`` is not an LSTM with a projection larger
than its hidden size). Names from files are quoted with ``ascii()``, so every message
prints on any stream.
"""
import copy
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast

from fuzz import hostile as H
from fuzz.mutators import KEY_SPELLINGS
from fuzz.picklegen import Global, ODict, Reduce, TorchDoc, _emit, dumps

torch = pytest.importorskip("torch")


def _state(cell="GRU", proj=0, seed=0):
    torch.manual_seed(seed)
    m = {"GRU": torch.nn.GRU(3, 4), "LSTM": torch.nn.LSTM(3, 4, proj_size=proj)}[cell]
    return m, {k: v.detach().clone() for k, v in m.state_dict().items()}


def _save_pt(path, items):
    """``items``: [(key, tensor)] in order, duplicates allowed (written by torch.save of
    a dict, then the pickle's keys patched where a dict could not hold them)."""
    torch.save(dict(items), str(path))
    return str(path)


def _save_st(path, items):
    path.write_bytes(H.safetensors_from([(k, v.numpy()) for k, v in items]))
    return str(path)


def _x():
    return np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_trailing_newline_key_does_not_override(fmt, tmp_path):
    """The original attack: the real weight_ih_l0, then 'weight_ih_l0\\n' holding other
    values (it came last, so it won). PyTorch's strict load refuses the file; so does
    rnnfast, naming the key with its newline escaped."""
    m, sd = _state()
    items = list(sd.items()) + [("weight_ih_l0\n", torch.full_like(sd["weight_ih_l0"], 5.0))]
    save = _save_pt if fmt == "pt" else _save_st
    path = save(tmp_path / ("nl." + fmt), items)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        torch.nn.GRU(3, 4).load_state_dict(dict(items))
    with pytest.raises(rnnfast.FormatError, match=r"'weight_ih_l0\\n' is not a parameter of nn\.GRU"):
        rnnfast.load(path)
    # the clean file loads, and gives PyTorch's outputs
    clean = save(tmp_path / ("ok." + fmt), list(sd.items()))
    with torch.no_grad():
        want = m(torch.as_tensor(_x()))[0].numpy()
    np.testing.assert_allclose(rnnfast.load(clean)(_x())[0], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("spelling", range(len(KEY_SPELLINGS)))
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_key_spellings_refused(fmt, spelling, tmp_path):
    """Every misspelling of ``weight_ih_l0`` the fuzzer uses (a trailing newline, space,
    tab or NUL, a leading space or newline, upper case, a zero-width space, a lone
    surrogate, leading zeros, layer 999999 / 999999999 / a 5000-digit index, an Arabic
    digit), alone (renaming the real key) or beside the real key: a FormatError."""
    _, sd = _state()
    bad = KEY_SPELLINGS[spelling]("weight_ih_l0")
    if fmt == "safetensors" and "\ud800" in bad:
        pytest.skip("(the lone surrogate case is test_lone_surrogate_key_message_prints)")
    save = _save_pt if fmt == "pt" else _save_st
    renamed = [(bad if k == "weight_ih_l0" else k, v) for k, v in sd.items()]
    for items in (renamed, list(sd.items()) + [(bad, sd["weight_ih_l0"])]):
        path = save(tmp_path / ("k." + fmt), items)
        with pytest.raises(rnnfast.FormatError) as e:
            rnnfast.load(path)
        msg = str(e.value)
        msg.encode("ascii")                         # printable anywhere
        assert ascii(bad)[:40] in msg or "names layer 999999" in msg or "holds 2 recurrent" in msg, msg


def test_layer_index_bounded_by_the_tensors_present(tmp_path):
    """weight_ih_l999999 would make a module of a million layers (the loader looped over
    them, 3 GB at 10^9): the index must be one the file's tensors can fill."""
    _, sd = _state()
    for idx, match in ((999999, r"'weight_ih_l999999' names layer 999999, but the file holds no tensors of "
                                r"layer 1"),
                       (999999999, r"'weight_ih_l999999999' is not a parameter"),
                       (2, r"names layer 2, but the file holds no tensors of layer 1")):
        path = _save_pt(tmp_path / "i.pt", list(sd.items()) + [("weight_ih_l%d" % idx, sd["weight_ih_l0"])])
        with pytest.raises(rnnfast.FormatError, match=match):
            rnnfast.load(path)


def test_duplicate_keys_in_a_pickle(tmp_path):
    """A pickled dict (SETITEMS) or OrderedDict (SETITEMS, or its constructor's pairs)
    giving weight_ih_l0 twice: the second would silently replace the first."""
    doc = TorchDoc.from_file(H.seed_path("torchzip"))
    items = list(doc.root.items())
    k = items[0][0]
    other = copy.deepcopy(items[1][1])
    cases = {"OrderedDict SETITEMS": dumps(ODict(items + [(k, other)]))}
    out = io.BytesIO()                      # a plain dict, opcode by opcode: } ( k v k v ... u
    out.write(b"\x80\x02}(")
    for key, value in items + [(k, other)]:
        _emit(out, key)
        _emit(out, value)
    out.write(b"u.")
    cases["dict SETITEMS"] = out.getvalue()
    cases["OrderedDict(pairs)"] = dumps(Reduce(Global("collections", "OrderedDict"),
                                               [(key, value) for key, value in items + [(k, other)]]))
    for what, pkl in cases.items():
        p = tmp_path / "dup.pt"
        p.write_bytes(doc.zip_bytes(pkl=pkl))
        with pytest.raises(rnnfast.FormatError, match=r"key '%s' twice" % k) as e:
            rnnfast.load(str(p))
        assert "twice" in str(e.value), what


def test_duplicate_keys_in_a_safetensors_header(tmp_path):
    _, sd = _state()
    items = list(sd.items())
    data = H.safetensors_from([(n, v.numpy()) for n, v in items],
                              raw_header=lambda pairs: "{" + ", ".join(
                                  '"%s": %s' % (n, json.dumps(e)) for n, e in pairs + pairs[:1]) + "}")
    p = tmp_path / "dup.safetensors"
    p.write_bytes(data)
    with pytest.raises(rnnfast.FormatError, match=r"header names 'weight_ih_l0' twice"):
        rnnfast.load(str(p))


def test_same_name_from_two_containers(tmp_path):
    """Keys 1 and "1" of a checkpoint both lead to the dotted name "1.": which module the
    name means cannot be told."""
    _, sd = _state()
    torch.save({1: dict(sd), "1": {k: v * 2 for k, v in sd.items()}}, str(tmp_path / "two.pt"))
    with pytest.raises(rnnfast.FormatError, match=r"two containers hold tensors under the same name '1\.'"):
        rnnfast.load(str(tmp_path / "two.pt"))


def test_stray_projection_is_not_an_lstm(tmp_path):
    """A GRU(3, 4) state_dict plus weight_hr_l0 of shape (4, 3): rows 12 = 4 x 3 made it
    an LSTM with hidden_size 3 and proj_size 4, which PyTorch refuses to build."""
    _, sd = _state()
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        torch.nn.LSTM(3, 3, proj_size=4)
    for save, ext in ((_save_pt, "pt"), (_save_st, "safetensors")):
        path = save(tmp_path / ("hr." + ext), list(sd.items()) + [("weight_hr_l0", torch.zeros(4, 3))])
        with pytest.raises(rnnfast.FormatError, match=r"'weight_hr_l0' \(4, 3\) would make an LSTM with proj_size "
                                                      r"4 and hidden_size 3, which PyTorch cannot build"):
            rnnfast.load(path)
    # proj_size == hidden_size: refused too; a real projection loads
    m, lsd = _state("LSTM", proj=2)
    path = _save_pt(tmp_path / "lstm.pt", list(lsd.items()))
    with torch.no_grad():
        want = m(torch.as_tensor(_x()))[0].numpy()
    np.testing.assert_allclose(rnnfast.load(path)(_x())[0], want, atol=1e-5, rtol=1e-4)
    bad = dict(lsd)
    bad["weight_hr_l0"] = torch.zeros(4, 4)
    bad["weight_hh_l0"] = torch.zeros(16, 4)
    with pytest.raises(rnnfast.FormatError, match="proj_size 4 and hidden_size 4"):
        rnnfast.load(_save_pt(tmp_path / "eq.pt", list(bad.items())))


def test_lone_surrogate_key_message_prints(tmp_path):
    """A safetensors key with a lone surrogate (JSON "\\ud800"): the message escapes it,
    so that it prints on a strict UTF-8 (or ASCII) stream."""
    _, sd = _state()
    items = [(k, v) for k, v in sd.items()] + [("weight_ih_l0\ud800", sd["weight_ih_l0"])]
    path = _save_st(tmp_path / "s.safetensors", items)
    with pytest.raises(rnnfast.FormatError) as e:
        rnnfast.load(path)
    assert "\\ud800" in str(e.value)
    str(e.value).encode("ascii")
    code = ("import rnnfast, sys\ntry:\n    rnnfast.load(sys.argv[1])\nexcept rnnfast.FormatError as e:\n"
            "    print(e)\n")
    for enc in ("utf-8:strict", "ascii:strict"):
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, PYTHONIOENCODING=enc))
        assert out.returncode == 0 and "weight_ih_l0\\ud800" in out.stdout, (enc, out.stderr[-2000:])
