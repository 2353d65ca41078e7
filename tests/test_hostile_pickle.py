"""The restricted unpickler against each class of pickle attack that
test_torch_hostile.py does not already cover (it has REDUCE on os.system, subprocess,
open, eval, exec, getattr and __import__ in zip, bare and legacy files; unlisted
globals by name; storage and view lies; deep nesting).

Here: more targets (importlib, runpy, marshal, ctypes, nested unpicklers), every
opcode route to a global (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX, EXT),
the allowed callables called with hostile arguments, BUILD / ``__setstate__`` on each
kind of object the unpickler can make, persistent-id abuse and nested pickles. Every
payload would create a marker file if it ran; each test checks that none exists.
The pickles are written opcode by opcode (tests/fuzz/picklegen.py), so each differs
from a valid torch.save file only where it means to.
"""

import copyreg
import os
import pickle

import numpy as np
import pytest

import rnnfast

from fuzz.mutators import CORPUS
from fuzz.picklegen import Build, Global, ODict, PersId, Reduce, TorchDoc, dumps


@pytest.fixture
def marker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # payloads write the marker in the working directory
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "code from the file ran"


def gru_doc():
    return TorchDoc.from_file(os.path.join(CORPUS, "torchzip-gru.pt"))


def write(tmp_path, value=None, *, extra=None, pkl=None, legacy=False, name="evil.pt"):
    """A GRU state_dict file whose pickle is ``pkl``, or the state_dict with the entry
    ``extra`` = value put first, or ``value`` as the whole pickle."""
    doc = gru_doc()
    if extra is not None:
        doc.root = dict([(extra, value)] + list(doc.root.items()))  # first: before any real storage
    elif pkl is None:
        pkl = dumps(value)
    path = tmp_path / name
    path.write_bytes(doc.legacy_bytes(pkl=pkl) if legacy else doc.zip_bytes(pkl=pkl))
    return str(path)


def refused(path, match):
    with pytest.raises(rnnfast.FormatError, match=match):
        rnnfast.load(path)


TOUCH = "touch PWNED"
PY_TOUCH = "open('PWNED', 'w').close()"


# -- globals: more targets ---------------------------------------------------------------


@pytest.mark.parametrize(
    "module,name,args",
    [
        ("importlib", "import_module", ("os",)),
        ("importlib._bootstrap", "_load", ("os",)),
        ("runpy", "run_path", ("PWNED.py",)),
        ("marshal", "loads", (b"\xe3",)),
        ("types", "FunctionType", (None, {})),
        ("ctypes", "CDLL", ("libc.so.6",)),
        ("pickle", "loads", (pickle.dumps(b"x"),)),
        ("_pickle", "loads", (pickle.dumps(b"x"),)),
        ("torch.serialization", "load", ("PWNED",)),
        ("numpy", "load", ("PWNED",)),
        ("numpy.lib.format", "read_array", (None,)),
        ("sys", "exit", (3,)),
        ("builtins", "breakpoint", ()),
        ("builtins", "compile", (PY_TOUCH, "x", "exec")),
        ("os", "popen", (TOUCH,)),
        ("nt", "system", (TOUCH,)),
        ("shutil", "rmtree", ("/nonexistent",)),
        ("code", "InteractiveInterpreter", ()),
        ("torch._utils", "_rebuild_device_tensor_from_numpy", ()),
        ("torch._tensor", "_rebuild_from_type_v2", ()),
        ("collections", "OrderedDict.fromkeys", ([1],)),  # a dotted name resolves to a method
        ("collections", "__builtins__", ()),
    ],
)
def test_more_globals_refused(module, name, args, tmp_path, marker):
    path = write(tmp_path, Reduce(Global(module, name), *args), extra="payload")
    refused(path, r"refused global '%s\.%s'" % (module, name.replace(".", r"\.")))


# -- every opcode route to a global ---------------------------------------------------------


OS_SYSTEM = {
    "GLOBAL": b"cos\nsystem\n",
    "STACK_GLOBAL": b"\x8c\x02os\x8c\x06system\x93",
    "STACK_GLOBAL (BINUNICODE)": b"X\x02\x00\x00\x00osX\x06\x00\x00\x00system\x93",
}


@pytest.mark.parametrize("route", sorted(OS_SYSTEM))
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_global_opcodes(route, protocol, tmp_path, marker):
    pkl = b"\x80" + bytes([protocol]) + OS_SYSTEM[route] + b"\x8c\x0b" + TOUCH.encode() + b"\x85R."
    refused(write(tmp_path, pkl=pkl), r"refused global 'os\.system'")


@pytest.mark.parametrize(
    "opcodes,what",
    [
        (b"(S'touch PWNED'\nios\nsystem\n.", "INST"),
        (b"(cos\nsystem\nS'touch PWNED'\no.", "OBJ"),
        (b"\x80\x02cos\nsystem\n\x8c\x0btouch PWNED\x85\x81.", "NEWOBJ"),
        (b"\x80\x04cos\nsystem\n\x8c\x0btouch PWNED\x85}\x92.", "NEWOBJ_EX"),
        (b"\x80\x02cbuiltins\ngetattr\n(cos\nsystem\n\x8c\x08__call__tR.", "getattr on a refused global"),
    ],
)
def test_instantiating_opcodes(opcodes, what, tmp_path, marker):
    refused(write(tmp_path, pkl=opcodes), r"refused global '(os\.system|builtins\.getattr)'")


def test_instantiating_opcodes_on_allowed_classes_build_only_containers(tmp_path, marker):
    """INST / OBJ / NEWOBJ on the allowed OrderedDict make a plain container; on a storage
    type or a dtype (inert markers, not classes) they are refused."""
    reduce_form = b"ccollections\nOrderedDict\n)R"
    pkl = dumps(ODict([("x", 1)]))
    assert reduce_form in pkl
    for how in (b"(icollections\nOrderedDict\n", b"(ccollections\nOrderedDict\no", b"ccollections\nOrderedDict\n)\x81"):
        refused(write(tmp_path, pkl=pkl.replace(reduce_form, how), name="od.pt"), "holds no nn.GRU.*found a dict")
    for how in (
        b"(ctorch\nFloatStorage\no.",
        b"\x80\x02ctorch\nFloatStorage\n)\x81.",
        b"\x80\x02ctorch\nfloat32\n)R.",
        b"(itorch\nFloatStorage\n.",
    ):
        refused(write(tmp_path, pkl=how, name="m.pt"), "corrupt or unsupported pickle data")


def test_ext_opcodes_go_through_find_class(tmp_path, marker):
    """EXT1/2/4 name a global through the process-wide extension registry; an entry
    registered by any library still goes through find_class."""
    code = 0x7E
    copyreg.add_extension("os", "system", code)
    try:
        for op in (b"\x82\x7e", b"\x83\x7e\x00", b"\x84\x7e\x00\x00\x00"):
            pkl = b"\x80\x02" + op + b"\x8c\x0b" + TOUCH.encode() + b"\x85R."
            refused(write(tmp_path, pkl=pkl), r"refused global 'os\.system'")
    finally:
        copyreg.remove_extension("os", "system", code)
    refused(
        write(tmp_path, pkl=b"\x80\x02\x82\x7dN\x85R."),
        r"corrupt or unsupported pickle data \(ValueError: "
        r"unregistered extension code",
    )


# -- allowed callables, hostile arguments ------------------------------------------------------


STORAGE = PersId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 12))
V2 = Global("torch._utils", "_rebuild_tensor_v2")


@pytest.mark.parametrize(
    "call,match",
    [
        (Reduce(Global("_codecs", "encode"), "touch", "rot13"), r"refused _codecs\.encode call"),
        (Reduce(Global("_codecs", "encode"), b"x", "latin1"), r"refused _codecs\.encode call"),
        (Reduce(Global("_codecs", "encode"), "x", "latin1", "surrogateescape"), r"refused _codecs\.encode call"),
        (Reduce(Global("builtins", "set"), [[1, 2]]), r"corrupt or unsupported pickle data \(TypeError"),
        (Reduce(Global("builtins", "frozenset"), 5), r"corrupt or unsupported pickle data \(TypeError"),
        (Reduce(Global("collections", "OrderedDict"), 5), r"corrupt or unsupported pickle data \(TypeError"),
        (Reduce(Global("torch", "Size"), (2,) * 100), r"torch\.Size has 100 dimensions"),
        (Reduce(Global("torch", "Size"), ("a",)), r"torch\.Size must be an integer"),
        (Reduce(Global("torch", "FloatStorage"), 10**12), r"corrupt or unsupported pickle data \(TypeError"),
        (Reduce(Global("torch", "float32")), r"corrupt or unsupported pickle data \(TypeError"),
        (Reduce(V2, "not a storage", 0, (3,), (1,), False, {}), r"a tensor must be built on a storage, got str"),
        (Reduce(V2, {"storage": 1}, 0, (3,), (1,), False, {}), r"a tensor must be built on a storage, got dict"),
        (
            Reduce(V2, Reduce(V2, STORAGE, 0, (12,), (1,), False, {}), 0, (3,), (1,), False, {}),
            r"a tensor must be built on a storage, got TensorRecord",
        ),
        (Reduce(V2, STORAGE, 0, "abc", (1,), False, {}), r"tensor size must be a tuple of integers"),
        (Reduce(V2, STORAGE, 0, (True,), (1,), False, {}), r"tensor size must be an integer"),
        (Reduce(V2, STORAGE, 2**70, (3,), (1,), False, {}), r"does not fit its storage"),
        (Reduce(V2, STORAGE, 0, (3,), (2**70,), False, {}), r"does not fit its storage"),
        (Reduce(V2, STORAGE, 0, (12,) * 2, (0, 0), False, {}), r"does not fit its storage"),
        (Reduce(V2, STORAGE), r"corrupt or unsupported pickle data \(TypeError"),
        (
            Reduce(
                Global("torch._utils", "_rebuild_tensor_v3"),
                STORAGE,
                0,
                (3,),
                (1,),
                False,
                {},
                Global("torch", "FloatStorage"),
            ),
            r"_rebuild_tensor_v3 needs a torch dtype",
        ),
        (Reduce(Global("torch._utils", "_rebuild_parameter"), [1, 2], False, {}), r"a Parameter must wrap a tensor"),
        (
            Reduce(Global("torch._utils", "_rebuild_parameter_with_state"), "x", False, {}, {}),
            r"a Parameter must wrap a tensor",
        ),
    ],
)
def test_allowed_callables_with_hostile_arguments(call, match, tmp_path, marker):
    refused(write(tmp_path, call, extra="payload"), match)


def test_zero_strides_over_a_whole_storage_read_only_what_exists(tmp_path):
    """A view with stride 0 (every element the same storage value) is valid: PyTorch
    makes them (expand); rnnfast reads it without copying more than the view."""
    doc = gru_doc()
    t = doc.root["bias_hh_l0"]
    t.stride = (0,)
    path = tmp_path / "zero.pt"
    path.write_bytes(doc.zip_bytes())
    import torch

    want = torch.load(str(path), weights_only=True)["bias_hh_l0"].numpy()
    assert np.all(want == want[0])
    rnn = rnnfast.load(str(path))
    m = torch.nn.GRU(3, 4)
    m.load_state_dict(torch.load(str(path), weights_only=True))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(rnn(x)[0], m(torch.as_tensor(x))[0].numpy(), atol=1e-5, rtol=1e-4)


# -- BUILD / __setstate__ ------------------------------------------------------------------


def test_build_on_the_state_dict_is_dropped(tmp_path, marker):
    """torch pickles a state_dict's ``_metadata`` as BUILD state: dropped, whatever it holds."""
    doc = gru_doc()
    for state in (
        {"_metadata": {"": {"version": 1}}},
        {"__class__": 5, "__dict__": 1, "keys": 3},
        ({"a": 1}, {"__setstate__": 2}),
    ):
        pkl = dumps(ODict(list(doc.root.items()), state=state))
        rnn = rnnfast.load(write(tmp_path, pkl=pkl, name="b.pt"))
        assert rnn.hidden_size == 4


@pytest.mark.parametrize(
    "obj,state,match",
    [
        (Reduce(V2, STORAGE, 0, (12,), (1,), False, {}), {"shape": (10**12,)}, "unexpected state for a tensor"),
        (Reduce(V2, STORAGE, 0, (12,), (1,), False, {}), (None, {"offset": -5}), "unexpected state for a tensor"),
        (Global("torch", "FloatStorage"), {"dtype": "x"}, "unexpected state for a torch storage type"),
        (Global("torch", "float64"), (None, {"dtype": "float64"}), "unexpected state for a torch dtype"),
        (STORAGE, {"numel": 1}, "unexpected state for a storage"),
        (Reduce(Global("builtins", "set"), [1]), {"add": 1}, r"corrupt or unsupported pickle data"),
        ({}, {"x": 1}, r"corrupt or unsupported pickle data"),
        ([], (None, {"append": 1}), r"corrupt or unsupported pickle data"),
        ("text", {"x": 1}, r"corrupt or unsupported pickle data"),
        (Reduce(Global("_codecs", "encode"), "ab", "latin1"), {"x": 1}, r"corrupt or unsupported pickle data"),
    ],
)
def test_build_on_other_objects_refused(obj, state, match, tmp_path, marker):
    refused(write(tmp_path, Build(obj, state), extra="payload"), match)


def test_build_state_carrying_a_payload(tmp_path, marker):
    refused(
        write(
            tmp_path,
            Build(Reduce(Global("collections", "OrderedDict")), {"x": Reduce(Global("os", "system"), TOUCH)}),
            extra="payload",
        ),
        r"refused global 'os\.system'",
    )


# -- persistent ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pid,match",
    [
        ("storage", "unsupported persistent id 'str'"),
        (("storage",), "unsupported persistent id 'storage'"),
        (("module", Global("torch", "FloatStorage"), "0", "cpu", 12), "unsupported persistent id 'module'"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", 12, None), "unsupported persistent id"),
        (("storage", Global("torch", "float32"), "0", "cpu", 12), "storage id names no torch storage type"),
        (("storage", "FloatStorage", "0", "cpu", 12), "storage id names no torch storage type"),
        (("storage", Global("torch", "FloatStorage"), 0, "cpu", 12), "storage key and location must be strings"),
        (("storage", Global("torch", "FloatStorage"), "0", None, 12), "storage key and location must be strings"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", -1), "negative storage size"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", 12.0), "storage size must be an integer"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", True), "storage size must be an integer"),
        (("storage", Global("torch", "FloatStorage"), "../data.pkl", "cpu", 1), r"no record archive/data/\.\./data"),
        (("storage", Global("torch", "FloatStorage"), "0", "cpu", 2**64), r"claims 18446744073709551616"),
        (("storage", Reduce(Global("os", "system"), TOUCH), "0", "cpu", 12), r"refused global 'os\.system'"),
    ],
)
def test_persistent_id_abuse(pid, match, tmp_path, marker):
    value = Reduce(V2, PersId(pid), 0, (3,), (1,), False, {})
    refused(write(tmp_path, value, extra="payload"), match)


def test_text_persistent_id_and_storage_named_twice(tmp_path, marker):
    refused(write(tmp_path, pkl=b"\x80\x02P0\n."), "unsupported persistent id 'str'")
    other = PersId(("storage", Global("torch", "DoubleStorage"), "0", "cpu", 6))
    refused(
        write(tmp_path, Reduce(V2, other, 0, (3,), (1,), False, {}), extra="payload"),
        "storage '0' is named twice with different types or sizes",
    )


def test_legacy_storage_views_refused(tmp_path, marker):
    doc = TorchDoc.from_file(os.path.join(CORPUS, "torchlegacy-lstm.pt"))
    pid = PersId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 1, ("view", 0, 1)))
    doc.root["weight_ih_l0"] = Reduce(V2, pid, 0, (1,), (1,), False, {})
    path = tmp_path / "view.pt"
    path.write_bytes(doc.legacy_bytes())
    refused(str(path), r"storage views \(PyTorch < 1\.0 files\) are not supported")


# -- nested pickles ----------------------------------------------------------------------------


EVIL = dumps(Reduce(Global("os", "system"), TOUCH))


def test_pickle_bytes_inside_the_state_dict_stay_bytes(tmp_path, marker):
    """A pickle held as a bytes value, or as a storage's raw bytes, is data: never unpickled."""
    rnn = rnnfast.load(write(tmp_path, EVIL, extra="_extra_state"))
    assert rnn.hidden_size == 4
    rnn = rnnfast.load(
        write(
            tmp_path,
            Reduce(Global("_codecs", "encode"), EVIL.decode("latin1"), "latin1"),
            extra="_extra_state",
            name="p2.pt",
        )
    )
    assert rnn.hidden_size == 4
    doc = gru_doc()
    key = doc.root["weight_ih_l0"].key
    data = doc.storages[key]
    doc.storages[key] = (EVIL + data)[: len(data)]
    path = tmp_path / "s.pt"
    path.write_bytes(doc.zip_bytes())
    assert rnnfast.load(str(path)).hidden_size == 4


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "keys"])
def test_legacy_layout_payload_in_each_pickle(where, tmp_path, marker):
    """The legacy layout has five pickles in a row: a payload in any of them is refused."""
    doc = TorchDoc.from_file(os.path.join(CORPUS, "torchlegacy-lstm.pt"))
    path = tmp_path / "legacy.pt"
    path.write_bytes(doc.legacy_bytes(replace={where: dumps(Reduce(Global("os", "system"), TOUCH))}))
    refused(str(path), r"refused global 'os\.system'")


def test_raw_opcode_soup_is_a_format_error(tmp_path, marker):
    """Opcodes no pickler writes for a state_dict: each is a FormatError."""
    for i, ops in enumerate(
        [
            b"\x80\x02h\x07.",
            b"\x80\x02j\xff\xff\xff\x7f.",
            b"\x80\x02(.",
            b"\x80\x020.",
            b"\x80\x05\x97.",
            b"\x80\x05\x98.",
            b"\x80\x02(P0\nh\x00t.",
            b"\x80\x02\x8f(.",
            b"\x80\x02I12\nJ\x01\x02\x03\x04\x94.",
            b"\x80\x02Vabc\n\x8a\x09" + b"\xff" * 9 + b".",
        ]
    ):
        refused(
            write(tmp_path, pkl=ops, name="r%d.pt" % i),
            r"corrupt or unsupported pickle data|"
            r"unsupported persistent id|holds no nn\.GRU",
        )
