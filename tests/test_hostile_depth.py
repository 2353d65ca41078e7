"""No recursion on depth the file controls (issue 12, item 2).

The unpickler's input is checked by a model of its stack before anything is built
(``rnnfast.io.torch_pickle.prescan_pickle``): no object nests deeper than
MAX_PICKLE_DEPTH, whatever the route (tuples, lists, dicts, a deep tuple as a dict key
or in a set, whose hashing recursed in C and crashed the process at 300,000 levels;
lists placed into each other after they were placed themselves). Keras configs and
safetensors headers are JSON whose depth is counted without recursion after the C
parser (which refuses very deep input itself); HDF5 groups are walked iteratively
with a depth limit (test_hostile_outside.py). Every case is a FormatError, never a
crash or a bare RecursionError; the deepest run in a subprocess.
"""
import json
import subprocess
import sys
import textwrap

import pytest

import rnnfast
from rnnfast.io import torch_pickle

from fuzz import hostile as H
from fuzz.picklegen import TorchDoc


KINDS = ("tuple", "list", "dict", "key", "set", "value", "late")


def _pt(tmp_path, pkl, name="deep.pt", legacy=False):
    p = tmp_path / name
    if legacy:
        doc = H.torch_doc()
        p.write_bytes(doc.legacy_bytes(pkl=pkl))
    else:
        p.write_bytes(H.torch_zip_with_pickle(pkl, compress=False))
    return str(p)


def _pickle(depth, kind):
    return H.late_nesting_pickle(depth) if kind == "late" else H.nested_pickle(depth, kind)


CHILD = textwrap.dedent(r"""
    import sys, rnnfast
    for path in sys.argv[1:]:
        try:
            rnnfast.load(path)
            print("LOADED")
        except rnnfast.FormatError as e:
            print("FormatError", str(e)[:200].replace("\n", " "))
        except BaseException as e:
            print("OTHER", type(e).__name__)
""")


def test_300000_deep_pickles_in_a_subprocess(tmp_path):
    """300 kB pickles nesting 300,000 levels, each route: before, a deep tuple hashed as
    a dict key or a set element overflowed the C stack (SIGSEGV)."""
    paths = [_pt(tmp_path, _pickle(300000, k), "deep-%s.pt" % k) for k in KINDS if k != "late"]
    paths.append(_pt(tmp_path, _pickle(20000, "late"), "deep-late.pt"))
    paths.append(_pt(tmp_path, _pickle(300000, "key"), "deep-legacy.pt", legacy=True))
    out = subprocess.run([sys.executable, "-c", CHILD] + paths, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    lines = out.stdout.splitlines()
    assert len(lines) == len(paths), out.stdout
    for path, line in zip(paths, lines):
        assert line.startswith("FormatError"), (path, line)
        # (the list route pushes all its lists before nesting them: the opcode budget ends it first)
        assert ("nested more than 100 levels" in line or "after placing it in another" in line
                or "deep-list" in path and "opcodes" in line), line


@pytest.mark.parametrize("depth", [120, 1000, 5000])
@pytest.mark.parametrize("kind", KINDS)
def test_shallower_nesting_is_a_format_error(kind, depth, tmp_path):
    """Shallower nestings raised RecursionError (the repr of a deep key in a message)."""
    path = _pt(tmp_path, _pickle(depth, kind))
    with pytest.raises(rnnfast.FormatError, match=r"nested more than 100 levels|after placing it in another"):
        rnnfast.load(path)


def test_depth_limit_is_on_the_pickle_not_the_checkpoint(tmp_path):
    """A state_dict inside 60 levels of checkpoint dicts loads (a pickled tensor adds a
    few levels of its own); past the walker's 100 levels it is refused either way."""
    doc = H.torch_doc()
    root = doc.root
    for _ in range(60):
        root = {"m": root}
    doc.root = root
    p = tmp_path / "ckpt.pt"
    p.write_bytes(doc.zip_bytes())
    rnn = rnnfast.load(str(p))
    assert rnn.hidden_size == 4
    p.write_bytes(doc.legacy_bytes())
    assert rnnfast.load(str(p)).hidden_size == 4
    for _ in range(50):
        root = {"m": root}
    doc.root = root
    p.write_bytes(doc.zip_bytes())
    with pytest.raises(rnnfast.FormatError, match="nested more than 100 levels"):
        rnnfast.load(str(p))


def test_prescan_model_of_the_stack():
    """Depths as the model counts them: a state_dict's pickle nests a few levels."""
    import io

    from fuzz.picklegen import dumps

    n = torch_pickle.prescan_pickle(io.BytesIO(dumps(H.torch_doc()._value(False))), 10 ** 6)
    assert 20 < n < 1000
    for kind in ("tuple", "list", "dict", "key", "set"):
        assert torch_pickle.prescan_pickle(io.BytesIO(_pickle(torch_pickle.MAX_PICKLE_DEPTH - 5, kind)), 10 ** 6)
        with pytest.raises(rnnfast.FormatError, match="nested more than"):
            torch_pickle.prescan_pickle(io.BytesIO(_pickle(torch_pickle.MAX_PICKLE_DEPTH + 2, kind)), 10 ** 6)
    # a self-referencing list (a pickler writes one for `l = []; l.append(l)`) is not deep
    import pickle

    loop = []
    loop.append(loop)
    torch_pickle.prescan_pickle(io.BytesIO(pickle.dumps({"a": loop}, protocol=2)), 10 ** 6)


def _keras_deep(depth, where):
    data = H.read(H.seed_path("keras"))
    cfg = json.loads(H.keras_member(data, "config.json"))
    cfg["config"]["layers"][-1]["config"]["name" if where == "name" else "extra"] = "\x00DEEP\x00"
    text = json.dumps(cfg).replace('"\\u0000DEEP\\u0000"', "[" * depth + "]" * depth)
    return H.keras_with(data, config_json=text.encode())


def _h5_deep(depth):
    import io

    import h5py

    bio = io.BytesIO(H.read(H.seed_path("keras3h5")))
    with h5py.File(bio, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][-1]["config"]["name"] = "\x00DEEP\x00"
        f.attrs["model_config"] = json.dumps(cfg).replace('"\\u0000DEEP\\u0000"', "[" * depth + "]" * depth)
    return bio.getvalue()


@pytest.mark.parametrize("depth", [101, 990, 5000, 100000])
def test_deep_keras_config(depth, tmp_path):
    """A config nesting lists ``depth`` deep where the loader's walkers recurse (a layer
    name, an output reference): a FormatError, counted without recursion (or the C
    parser's own RecursionError, turned into one)."""
    for name, data in (("deep.keras", _keras_deep(depth, "name")), ("deep.h5", _h5_deep(depth))):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(rnnfast.FormatError, match=r"more than 100 levels deep|not valid JSON"):
            rnnfast.load(str(p))


def test_config_depth_within_the_limit_still_loads(tmp_path):
    """Depth 60 in an option the loader refuses by name: the refusal is about the option."""
    p = tmp_path / "d.keras"
    p.write_bytes(_keras_deep(60, "extra"))
    with pytest.raises(rnnfast.UnsupportedLayerError, match="extra"):
        rnnfast.load(str(p))


@pytest.mark.parametrize("depth", [17, 990, 100000])
def test_deep_safetensors_header(depth, tmp_path):
    import struct

    text = json.dumps({"__metadata__": {"a": "b"}, "w": "\x00DEEP\x00"})
    text = text.replace('"\\u0000DEEP\\u0000"', "[" * depth + "]" * depth).encode()
    p = tmp_path / "d.safetensors"
    p.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(rnnfast.FormatError, match=r"nests more than 16 levels|not valid JSON"):
        rnnfast.load(str(p))


def test_deep_mutation_operators_in_the_fuzzer(tmp_path):
    """The fuzzer's "nest" operator (tests/fuzz/mutators.py) builds each route into a
    real state_dict: refused, for every place it can go."""
    from fuzz.mutators import apply_torch

    for how in ("tuple", "list", "dict", "key", "set", "late"):
        for where in ("value", "key", "extra"):
            doc = apply_torch(TorchDoc.from_file(H.seed_path("torchzip")), [("nest", how, 5000, where, 1)])
            p = tmp_path / ("%s-%s.pt" % (how, where))
            p.write_bytes(doc.zip_bytes())
            with pytest.raises(rnnfast.FormatError, match=r"nested more than|after placing it|no nn.GRU"):
                rnnfast.load(str(p))
