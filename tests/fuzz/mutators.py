"""Mutations of valid seed files, drawn by hypothesis.

A fuzz case is a seed file (tests/fuzz/corpus/), a list of *structured* mutations
that understand the seed's format, and a list of *byte* mutations applied to the
result. Every mutation is a tuple of plain values that hypothesis draws and shrinks;
positions and indexes are taken modulo what the file has, so any draw applies.

Structured mutations per format:

- PyTorch (zip and legacy): a tensor's fields (offset, shape, stride, storage size,
  key, storage type, rebuild function, location), tensor names, dropped / duplicated
  tensors, storage bytes cut or grown, the state_dict wrapped in containers, extra
  entries (bytes, sets, big ints, NaN), code-execution payloads (``os.system`` ...
  writing a marker file that the runner checks), raw opcodes (INST, OBJ, EXT, BUILD,
  bad memo); for zips: members dropped, renamed, added, compressed, header sizes
  falsified (a zip bomb's declared sizes); for legacy files: magic, protocol, key list
  and on-disk element counts.
- safetensors: JSON header mutations, a false header length, the data cut or grown.
- Keras ``.keras``: JSON mutations of config.json / metadata.json, HDF5 mutations of
  model.weights.h5, zip member mutations.
- Keras HDF5: JSON mutations of ``model_config``, other attributes (``keras_version``,
  ``weight_names``, ``layer_names``) replaced, datasets reshaped, retyped, deleted,
  replaced by groups, or given huge unallocated shapes (a few bytes on disk).

JSON mutations pick a node (any node, or one under a key that matters to the loader)
and replace, delete, rename, wrap or deeply nest it.

Structure classes of issue 12 (built by ``hostile.py``):

- HDF5 (all three Keras formats): a weight or the whole weights group taken from
  outside the file (external storage, external link, soft link, soft link through an
  external link, virtual dataset) naming the files in the worker's ``outside/``
  folder, whose opening the runner watches (``runner.Worker``); groups nested 70
  deep; global heap signatures appended that a naive check walks quadratically;
- pickles: values nested deep (tuples, lists, dicts, dict keys, sets, lists placed
  before they are filled) and a million empty lists; key spellings (a trailing
  newline or space, a shadowing copy of a key with a newline, leading zeros and huge
  layer indices, non-ASCII and lone surrogates, a key given twice in one dict, a
  stray ``weight_hr_l0`` that would make a GRU look like an LSTM with projection);
- safetensors: the same key spellings, a key given twice in the header;
- Keras configs: thousands of layers.

ONNX (``onnx-*`` seeds, exported from PyTorch and tf2onnx and written with onnx.helper):
a node's (also one inside a Loop / Scan body) op type, domain, attribute values, inputs
and outputs; an initializer's dims, data type and raw bytes (cut, grown); external data
naming the worker's ``outside/`` files, ``..``, absolute paths, the case itself, with any offset and length; Loop
bodies nested 100 to 5000 deep (raw protobuf); 20,000-node chains; graph input dims.
"""

import copy
import io
import json
import os
import struct
import zipfile

from hypothesis import strategies as st

from .picklegen import Build, Global, Raw, Reduce, Tensor, TorchDoc, dumps

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
FORMATS = ("torchzip", "torchlegacy", "safetensors", "keras", "keras3h5", "keras2h5", "onnx")
#: The marker file a code-execution payload would create in the worker's folder.
MARKER = "PWNED"


def seeds(fmt):
    """Seed files of one format, sorted."""
    return sorted(os.path.join(CORPUS, f) for f in os.listdir(CORPUS) if f.split("-")[0] == fmt)


# -- value pools ------------------------------------------------------------------------

INT_POOL = [
    0,
    1,
    2,
    3,
    4,
    -1,
    -2,
    7,
    12,
    255,
    256,
    65535,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**62,
    2**63 - 1,
    2**63,
    2**64,
    10**9,
    10**12,
    10**15,
    -(2**63),
    2**100,
]
INTS = st.one_of(st.sampled_from(INT_POOL), st.integers(-8, 64))
ANY = st.one_of(
    INTS,
    st.sampled_from(
        [
            None,
            True,
            3.0,
            float("nan"),
            float("inf"),
            "x",
            "",
            b"xy",
            (),
            [],
            {},
            ("a",),
            (1, 2, 3),
            (2,) * 40,
            (10**12,),
            (10**6, 10**6),
            (-1, 4),
            (0, 3),
        ]
    ),
)
JSON_POOL = [
    0,
    -1,
    1,
    2,
    3,
    10**9,
    10**12,
    2**31,
    2**63,
    -(2**63),
    10**30,
    0.5,
    1e308,
    -0.0,
    "",
    "x",
    None,
    True,
    False,
    [],
    {},
    [10**9, 10**9],
    [None, 5, 3],
    [None, None, 10**9],
    "float64",
    "float16",
    "int32",
    "bfloat16",
    "mixed_float16",
    "GRU",
    "LSTM",
    "SimpleRNN",
    "Bidirectional",
    "Dense",
    "Lambda",
    "InputLayer",
    "TimeDistributed",
    "Embedding",
    "Masking",
    "relu",
    "hard_sigmoid",
    "swish",
    "linear",
    "concat",
    "mul",
    "ave",
    "sum",
    "channels_first",
    "F32",
    "F64",
    "F16",
    "BF16",
    "I64",
    "BOOL",
    "U8",
    [0, 10**12],
    [10**12, 0],
    [0, 0],
    [-4, 0],
    {"class_name": "GRU", "config": {}},
    {"module": "os", "class_name": "system"},
    "3.0",
    "2.1.6",
    "1.2",
]
JSON_VALUES = st.one_of(st.sampled_from(JSON_POOL), st.integers(-3, 40), st.text(max_size=6))
#: keys whose values the loaders read; focused JSON mutations pick nodes under them
FOCUS_KEYS = {
    "units",
    "batch_shape",
    "batch_input_shape",
    "shape",
    "class_name",
    "layers",
    "inbound_nodes",
    "activation",
    "recurrent_activation",
    "return_sequences",
    "return_state",
    "go_backwards",
    "reset_after",
    "use_bias",
    "merge_mode",
    "layer",
    "forward_layer",
    "backward_layer",
    "input_dim",
    "output_dim",
    "mask_zero",
    "dtype",
    "name",
    "config",
    "mask_value",
    "data_format",
    "data_offsets",
    "__metadata__",
    "keras_version",
    "input_layers",
    "output_layers",
    "args",
    "kwargs",
    "cell",
    "cells",
    "stateful",
    "unroll",
    "time_major",
    "implementation",
    "build_config",
    "input_shape",
    "zero_output_for_mask",
    "target_shape",
    "rate",
    "policy",
    "module",
}
POS = st.integers(0, 2**32 - 1)
IDX = st.integers(0, 63)

# -- byte mutations ---------------------------------------------------------------------

BYTE_OP = st.one_of(
    st.tuples(st.just("flip"), POS, st.integers(0, 7)),
    st.tuples(st.just("set"), POS, st.one_of(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]), st.integers(0, 255))),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), POS, st.integers(1, 64)),
    st.tuples(st.just("dup"), POS, st.integers(1, 64)),
    st.tuples(st.just("int"), POS, st.sampled_from([1, 2, 4, 8]), INTS),
)


def apply_bytes(data, ops):
    b = bytearray(data)
    for op in ops:
        n = len(b)
        kind, pos = op[0], op[1] % (n + 1)
        if kind == "flip" and n:
            b[pos % n] ^= 1 << op[2]
        elif kind == "set" and n:
            b[pos % n] = op[2]
        elif kind == "truncate":
            del b[pos:]
        elif kind == "insert":
            b[pos:pos] = op[2]
        elif kind == "delete":
            del b[pos : pos + op[2]]
        elif kind == "dup":
            b[pos:pos] = b[pos : pos + op[2]]
        elif kind == "int":
            width, v = op[2], op[3]
            b[pos : pos + width] = (v % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(b)


# -- JSON mutations ---------------------------------------------------------------------

JSON_OP = st.tuples(
    st.just("json"),
    st.booleans(),
    IDX,
    st.sampled_from(["replace", "replace", "replace", "delete", "rename", "wrap", "deep", "tweak", "dup"]),
    JSON_VALUES,
)
DEEP = 100000


def _nodes(obj, focus):
    """(container, key) of every node in a JSON tree, in a fixed order."""
    out, stack = [], [(obj, False)]
    while stack:
        o, under = stack.pop()
        items = list(o.items()) if isinstance(o, dict) else list(enumerate(o)) if isinstance(o, list) else []
        for k, v in items:
            hot = under or (isinstance(k, str) and k in FOCUS_KEYS)
            if not focus or hot:
                out.append((o, k))
            if isinstance(v, (dict, list)):
                stack.append((v, hot and isinstance(k, str) and k in FOCUS_KEYS))
    return out


def apply_json(obj, ops):
    """Mutate a parsed JSON document; returns the new JSON text (str)."""
    obj = copy.deepcopy(obj)
    deep = []
    for _, focus, idx, action, value in ops:
        nodes = _nodes(obj, focus) or _nodes(obj, False)
        if not nodes:
            obj = value
            continue
        parent, key = nodes[idx % len(nodes)]
        if action == "replace":
            parent[key] = copy.deepcopy(value)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[str(value) if not isinstance(value, str) else value + "_"] = parent.pop(key)
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif action == "deep":
            parent[key] = "\x00DEEP%d\x00" % len(deep)
            deep.append(1)
        elif action == "tweak":
            v = parent[key]
            if isinstance(v, bool) or v is None:
                parent[key] = not v
            elif isinstance(v, (int, float)):
                parent[key] = [v + 1, v - 1, v * 1000, -v, 0, v * 10**8][idx % 6]
            elif isinstance(v, str):
                parent[key] = v[: idx % (len(v) + 1)] + ("_" if idx % 2 else "")
            elif isinstance(v, list) and v:
                parent[key] = v[:-1] if idx % 2 else v + v[-1:]
        elif action == "dup" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    text = json.dumps(obj)
    for i in range(len(deep)):
        text = text.replace('"\\u0000DEEP%d\\u0000"' % i, "[" * DEEP + "]" * DEEP)
    return text


# -- PyTorch ----------------------------------------------------------------------------

PARAM_NAMES = [
    "weight_ih_l0",
    "weight_hh_l0",
    "bias_ih_l0",
    "bias_hh_l0",
    "weight_hr_l0",
    "weight_ih_l1",
    "weight_hh_l1",
    "weight_ih_l0_reverse",
    "bias_hh_l1_reverse",
    "weight_ih_l99",
    "weight_ih_l0.x",
    "rnn.weight_ih_l0",
    "x",
    "",
    "parametrizations.weight_ih_l0.original0",
    "weight_hh_l-1",
]
STORAGE_NAMES = [
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "ByteStorage",
    "BoolStorage",
    "QInt8Storage",
    "UntypedStorage",
    "ComplexFloatStorage",
    "Storage",
    "FloatTensor",
    "float32",
]
#: (module, name, args) payloads: each would create MARKER in the worker's folder
ATTACKS = [
    ("os", "system", ("touch %s" % MARKER,)),
    ("posix", "system", ("touch %s" % MARKER,)),
    ("subprocess", "call", (["touch", MARKER],)),
    ("builtins", "exec", ("open(%r, 'w').close()" % MARKER,)),
    ("builtins", "eval", ("open(%r, 'w').close()" % MARKER,)),
    ("__builtin__", "eval", ("open(%r, 'w').close()" % MARKER,)),
    ("builtins", "open", (MARKER, "w")),
    ("io", "open", (MARKER, "w")),
    ("pathlib", "Path.touch", (MARKER,)),
    ("importlib", "import_module", ("os",)),
    ("pickle", "loads", (b"cos\nsystem\n(S'touch " + MARKER.encode() + b"'\ntR.",)),
    ("torch", "load", (MARKER,)),
    ("numpy", "load", (MARKER,)),
    ("collections", "OrderedDict", ({"a": 1},)),
    ("builtins", "set", ([[1]],)),
    ("_codecs", "encode", (b"x", "rot13")),
    ("torch", "Size", ((10**12,) * 40,)),
]
RAW = [
    Raw(b"(S'touch " + MARKER.encode() + b"'\nios\nsystem\n"),  # INST
    Raw(b"(cos\nsystem\nS'touch " + MARKER.encode() + b"'\no"),  # OBJ
    Raw(b"\x82\x01"),
    Raw(b"\x83\x01\x02"),  # EXT1, EXT2
    Raw(b"h\x07"),
    Raw(b"j\xff\xff\xff\x7f"),  # bad memo GET
    Raw(b"ccollections\nOrderedDict\n)\x81"),  # NEWOBJ
    Raw(b"ctorch\nFloatStorage\n)\x81"),
    Raw(b"ctorch\nfloat32\n)R"),
    Raw(b"X\x02\x00\x00\x00osX\x06\x00\x00\x00system\x93"),  # STACK_GLOBAL
    Build(Reduce(Global("collections", "OrderedDict")), {"__class__": 1, "_metadata": 3}),
    Build(Reduce(Global("builtins", "set"), [1, 2]), {"a": 1}),
    Build(Reduce(Global("torch._utils", "_rebuild_tensor_v2"), ("x",)), None),
    Raw(b"\x95\xff\xff\xff\xff\xff\xff\xff\x7f"),  # FRAME of 2^63
    Raw(b"\x8e\x00\x00\x00\x00\x00\x00\x00\x01"),
    Raw(b"\x8d\x00\x00\x00\x00\x00\x01\x00\x00"),
    Raw(b"P"),
    Raw(b"(P0\nh\x00t"),
    Raw(b"\x8f("),
    Raw(b"0"),
    Raw(b"("),
]

#: Ways to misspell a key (a function of the key): each must be refused, never taken
#: for the real name.
KEY_SPELLINGS = [
    lambda k: k + "\n",
    lambda k: k + " ",
    lambda k: " " + k,
    lambda k: k + "\t",
    lambda k: k + "\x00",
    lambda k: k.upper(),
    lambda k: k + "\u200b",
    lambda k: k + "\ud800",
    lambda k: k.replace("_l0", "_l00"),
    lambda k: k.replace("_l0", "_l999999"),
    lambda k: k.replace("_l0", "_l999999999"),
    lambda k: k.replace("_l0", "_l" + "9" * 5000),
    lambda k: k.replace("_l0", "_l\u0660"),
    lambda k: "\n" + k,
]
TORCH_OP = st.one_of(
    st.tuples(st.just("field"), IDX, st.sampled_from(["offset", "numel", "shape", "stride"]), ANY),
    st.tuples(st.just("dim"), IDX, st.sampled_from(["shape", "stride"]), IDX, INTS),
    st.tuples(st.just("key"), IDX, st.sampled_from(["0", "1", "99", "", "../data.pkl", "data.pkl", 5, None])),
    st.tuples(st.just("storage_type"), IDX, st.sampled_from(STORAGE_NAMES)),
    st.tuples(
        st.just("rebuild"),
        IDX,
        st.sampled_from(
            ["_rebuild_tensor", "_rebuild_tensor_v3", "_rebuild_qtensor", "_rebuild_parameter", "_rebuild_tensor_v2"]
        ),
    ),
    st.tuples(st.just("location"), IDX, st.sampled_from(["cuda:0", "", "meta", 5])),
    st.tuples(st.just("parameter"), IDX),
    st.tuples(st.just("rename"), IDX, st.sampled_from(PARAM_NAMES)),
    st.tuples(st.just("drop"), IDX),
    st.tuples(st.just("duplicate"), IDX, st.sampled_from(PARAM_NAMES)),
    st.tuples(st.just("storage_bytes"), IDX, st.integers(-64, 64)),
    st.tuples(st.just("wrap"), st.sampled_from(["list", "tuple", "dict", "deep", "twice"])),
    st.tuples(st.just("extra"), st.sampled_from(["bytes", "set", "bigint", "nan", "none", "nested", "raw"]), IDX),
    st.tuples(st.just("attack"), IDX, st.integers(0, len(ATTACKS) - 1)),
    st.tuples(st.just("raw"), IDX, st.integers(0, len(RAW) - 1)),
)


def _torch_structure_ops(depths, counts):
    """The issue-12 structure operators of PyTorch files, at the given sizes."""
    return [
        st.tuples(
            st.just("nest"),
            st.sampled_from(["tuple", "list", "dict", "key", "set", "late"]),
            st.sampled_from(depths),
            st.sampled_from(["value", "key", "extra"]),
            IDX,
        ),
        st.tuples(st.just("count"), st.sampled_from(counts)),
        st.tuples(st.just("keyspell"), IDX, st.sampled_from(list(range(len(KEY_SPELLINGS)))), st.booleans()),
        st.tuples(st.just("dupkey"), IDX),
        st.tuples(
            st.just("stray_proj"),
        ),
    ]


#: The bounded run (``make test``) draws the structures at sizes that cost milliseconds
#: (the prescan walks a pickle in Python: a 300,000-opcode one takes a second);
#: tests/test_hostile_fuzz.py checks the large ones case by case.
TORCH_OP_SMOKE = st.one_of(TORCH_OP, *_torch_structure_ops([20, 150, 1000], [1000, 20000]))
TORCH_OP = st.one_of(TORCH_OP, *_torch_structure_ops([20, 150, 5000, 40000], [1000, 300000]))
ZIP_OP = st.one_of(
    st.tuples(st.just("zip_drop"), IDX),
    st.tuples(
        st.just("zip_rename"),
        IDX,
        st.sampled_from(
            [
                "archive/data.pkl",
                "other/data.pkl",
                "data.pkl",
                "archive/data/0",
                "archive/data/../x",
                "config.json",
                "archive/constants.pkl",
                "archive/code/x.py",
                "model.weights.h5",
            ]
        ),
    ),
    st.tuples(
        st.just("zip_add"),
        st.sampled_from(["b/data.pkl", "archive/extra", "config.json", "metadata.json", "model.weights.h5"]),
        st.binary(max_size=8),
    ),
    st.tuples(st.just("zip_compress"), st.booleans()),
    st.tuples(
        st.just("zip_lie"),
        IDX,
        st.sampled_from(["file_size", "compress_size", "crc", "offset", "local_file_size", "local_compress_size"]),
        INTS,
    ),
    st.tuples(st.just("byteorder"), st.sampled_from([b"big", b"middle", b"", b"little\n", None])),
)
LEGACY_OP = st.one_of(
    st.tuples(st.just("magic"), INTS),
    st.tuples(st.just("protocol"), INTS),
    st.tuples(st.just("keys"), st.sampled_from(["drop", "dup", "reverse", "int", "extra", "empty"])),
    st.tuples(st.just("numel"), IDX, INTS),
)

_docs = {}


def _doc(seed):
    if seed not in _docs:
        _docs[seed] = TorchDoc.from_file(seed)
    return copy.deepcopy(_docs[seed])


def _entries(root):
    """(container, key, Tensor) for every tensor, in a fixed order."""
    out, stack = [], [root]
    while stack:
        o = stack.pop()
        items = list(o.items()) if isinstance(o, dict) else list(enumerate(o)) if isinstance(o, list) else []
        for k, v in items:
            if isinstance(v, Tensor):
                out.append((o, k, v))
            elif isinstance(v, (dict, list)):
                stack.append(v)
    return out


def _state_dict(root):
    """The dict holding the first tensor (where extra entries go)."""
    entries = _entries(root)
    return entries[0][0] if entries and isinstance(entries[0][0], dict) else root


def _with_dim(seq, i, v):
    seq = list(seq) if isinstance(seq, (tuple, list)) else [seq]
    if seq:
        seq[i % len(seq)] = v
    else:
        seq = [v]
    return tuple(seq)


def apply_torch(doc, ops):
    """Apply TORCH_OP mutations to a TorchDoc (in place)."""
    for op in ops:
        kind = op[0]
        entries = _entries(doc.root)
        if kind == "wrap":
            how = op[1]
            doc.root = {
                "list": lambda r: [r],
                "tuple": lambda r: (r, 1),
                "dict": lambda r: {"state_dict": r},
                "twice": lambda r: {"a": r, "b": copy.deepcopy(r)},
                "deep": lambda r: _deep(r),
            }[how](doc.root)
            continue
        if kind == "extra":
            sd = _state_dict(doc.root)
            value = {
                "bytes": b"\x80\x02cos\nsystem\n.",
                "set": Reduce(Global("builtins", "set"), [1, 2]),
                "bigint": 1 << 4000,
                "nan": float("nan"),
                "none": None,
                "nested": [[[{"a": ()}]]],
                "raw": RAW[op[2] % len(RAW)],
            }[op[1]]
            if isinstance(sd, dict):
                sd["extra_%s" % op[1]] = value
            continue
        if kind in ("nest", "count", "dupkey", "stray_proj"):
            _structure_op(doc, op, entries)
            continue
        if not entries:
            continue
        parent, key, t = entries[op[1] % len(entries)]
        if kind == "field":
            setattr(t, op[2], op[3])
        elif kind == "dim":
            setattr(t, op[2], _with_dim(getattr(t, op[2]), op[3], op[4]))
        elif kind == "key":
            t.key = op[2]
        elif kind == "storage_type":
            t.storage_type = op[2]
        elif kind == "rebuild":
            t.rebuild = op[2]
        elif kind == "location":
            t.location = op[2]
        elif kind == "parameter":
            t.parameter = True
        elif kind == "rename" and isinstance(parent, dict):
            items = [(op[2] if k == key else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
        elif kind == "drop":
            del parent[key]
        elif kind == "duplicate" and isinstance(parent, dict):
            parent[op[2]] = copy.deepcopy(t)
        elif kind == "storage_bytes" and t.key in doc.storages:
            data = doc.storages[t.key]
            n = op[2]
            doc.storages[t.key] = data[: max(0, len(data) + n)] if n < 0 else data + b"\x01" * n
        elif kind == "attack":
            mod, name, args = ATTACKS[op[2]]
            parent[key] = Reduce(Global(mod, name), *args)
        elif kind == "raw":
            parent[key] = RAW[op[2] % len(RAW)]
        elif kind == "keyspell" and isinstance(parent, dict) and isinstance(key, str):
            spelled = KEY_SPELLINGS[op[2]](key)
            if op[3]:  # a shadowing copy beside the real key (the override attack)
                parent[spelled] = copy.deepcopy(t)
            else:
                items = [(spelled if k == key else k, v) for k, v in parent.items()]
                parent.clear()
                parent.update(items)
    return doc


def _structure_op(doc, op, entries):
    """The depth, count and duplicate-key mutations of a TorchDoc (issue 12)."""
    from . import hostile
    from .picklegen import ODict, Raw

    kind = op[0]
    sd = _state_dict(doc.root)
    if kind == "nest":
        _, how, depth, where, idx = op
        value = Raw(hostile.nested_body(depth, how, memo_base=0))
        if where == "value" and entries:
            parent, key, _t = entries[idx % len(entries)]
            parent[key] = value
        elif where == "key" and isinstance(sd, dict):
            sd[value] = 1
        elif isinstance(sd, dict):
            sd["extra_deep"] = value
    elif kind == "count" and isinstance(sd, dict):
        sd["extra_lists"] = Raw(hostile.many_lists_body(op[1]))
    elif kind == "dupkey" and entries and isinstance(sd, dict) and sd:
        items = list(sd.items())
        k, v = items[op[1] % len(items)]
        other = next((t for _p, kk, t in entries if kk != k), v)
        doc.root = _replace(doc.root, sd, ODict(items + [(k, copy.deepcopy(other))]))
    elif kind == "stray_proj" and isinstance(sd, dict):
        ih = next((v for k, v in sd.items() if isinstance(k, str) and k.endswith("weight_ih_l0")), None)
        hh = next((v for k, v in sd.items() if isinstance(k, str) and k.endswith("weight_hh_l0")), None)
        if (
            isinstance(ih, Tensor)
            and isinstance(hh, Tensor)
            and isinstance(hh.shape, tuple)
            and isinstance(ih.shape, tuple)
            and len(hh.shape) == 2
            and len(ih.shape) == 2
            and all(isinstance(d, int) for d in ih.shape + hh.shape)
            and ih.shape[0] % 4 == 0
        ):
            t = copy.deepcopy(hh)
            t.shape, t.stride = (hh.shape[1], ih.shape[0] // 4), (ih.shape[0] // 4, 1)
            name = next(k for k, v in sd.items() if v is hh).replace("weight_hh_l0", "weight_hr_l0")
            sd[name] = t


def _replace(root, old, new):
    """``root`` with the container ``old`` replaced by ``new`` (``old`` may be the root)."""
    if root is old:
        return new
    stack = [root]
    while stack:
        o = stack.pop()
        items = list(o.items()) if isinstance(o, dict) else list(enumerate(o)) if isinstance(o, list) else []
        for k, v in items:
            if v is old:
                o[k] = new
                return root
            if isinstance(v, (dict, list)):
                stack.append(v)
    return root


def _deep(root, depth=150):
    for _ in range(depth):
        root = [root]
    return root


def _zip_members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i), i.compress_type) for i in z.infolist()]


def _write_zip(members):
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore")  # duplicate names are wanted here
        for name, data, method in members:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, compress_type=method)
    return buf.getvalue()


def _patch_zip(data, idx, field, value):
    """Overwrite a size, CRC or offset field of one member's local or central header."""
    b = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
    if not infos:
        return data
    info = infos[idx % len(infos)]
    v = struct.pack("<I", value % (1 << 32))
    if field.startswith("local_"):
        off = info.header_offset + {"local_file_size": 22, "local_compress_size": 18}[field]
        b[off : off + 4] = v
        return bytes(b)
    # the central directory entry: find it by the local header offset it records
    pos = b.find(b"PK\x01\x02")
    while pos >= 0:
        if struct.unpack_from("<I", b, pos + 42)[0] == info.header_offset:
            off = pos + {"crc": 16, "compress_size": 20, "file_size": 24, "offset": 42}[field]
            b[off : off + 4] = v
            break
        pos = b.find(b"PK\x01\x02", pos + 4)
    return bytes(b)


def apply_zip(data, ops):
    for op in ops:
        kind = op[0]
        if kind == "zip_lie":
            data = _patch_zip(data, op[1], op[2], op[3])
            continue
        try:
            members = _zip_members(data)
        except Exception:  # an earlier lie broke the archive: leave it so
            continue
        if kind == "zip_drop" and members:
            del members[op[1] % len(members)]
        elif kind == "zip_rename" and members:
            i = op[1] % len(members)
            members[i] = (op[2],) + members[i][1:]
        elif kind == "zip_add":
            members.append((op[1], op[2], zipfile.ZIP_STORED))
        elif kind == "zip_compress":
            method = zipfile.ZIP_DEFLATED if op[1] else zipfile.ZIP_BZIP2
            members = [(n, d, method) for n, d, _ in members]
        elif kind == "byteorder":
            members = [m for m in members if not m[0].endswith("/byteorder")]
            if op[1] is not None:
                members.append(("archive/byteorder", op[1], zipfile.ZIP_STORED))
        data = _write_zip(members)
    return data


def build_torch(seed, layout, torch_ops, file_ops):
    doc = apply_torch(_doc(seed), torch_ops)
    if layout == "zip":
        return apply_zip(doc.zip_bytes(), file_ops)
    keys, numels, magic_ops = list(doc.storages), {}, {}
    for op in file_ops:
        if op[0] in ("magic", "protocol"):
            magic_ops[op[0]] = op[1]
        elif op[0] == "keys":
            keys = {
                "drop": keys[1:],
                "dup": keys + keys[:1],
                "reverse": keys[::-1],
                "int": [1] + keys,
                "extra": keys + ["zzz"],
                "empty": [],
            }[op[1]]
        elif op[0] == "numel" and keys:
            numels[keys[op[1] % len(keys)]] = op[2]
    return doc.legacy_bytes(keys=keys, numels=numels, replace={k: dumps(v) for k, v in magic_ops.items()})


# -- safetensors ------------------------------------------------------------------------

ST_OP = st.one_of(
    JSON_OP,
    st.tuples(st.just("st_len"), INTS),
    st.tuples(st.just("st_pad"), st.integers(1, 64)),
    st.tuples(st.just("st_data"), st.integers(-64, 64)),
    st.tuples(st.just("st_key"), IDX, st.sampled_from(list(range(len(KEY_SPELLINGS)))), st.booleans()),
    st.tuples(st.just("st_dup"), IDX),
)


def build_safetensors(seed, ops):
    with open(seed, "rb") as f:
        data = f.read()
    n = struct.unpack_from("<Q", data)[0]
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    text = json.dumps(header)
    json_ops = [op for op in ops if op[0] == "json"]
    if json_ops:
        text = apply_json(header, json_ops)
    key_ops = [op for op in ops if op[0] in ("st_key", "st_dup")]
    if key_ops and not json_ops:
        text = _st_keys(header, key_ops)
    raw = text.encode("utf-8", "surrogatepass")
    length = None
    for op in ops:
        if op[0] == "st_len":
            length = op[1]
        elif op[0] == "st_pad":
            raw += b" " * op[1]
        elif op[0] == "st_data":
            body = body[: max(0, len(body) + op[1])] if op[1] < 0 else body + b"\0" * op[1]
    length = len(raw) if length is None else length % (1 << 64)
    return struct.pack("<Q", length) + raw + body


def _st_keys(header, ops):
    """The header's text with keys respelled, shadowed (a respelled copy beside the
    key, pointing at the same bytes) or given twice."""
    pairs = list(header.items())
    names = [i for i, (k, _) in enumerate(pairs) if k != "__metadata__"]
    for op in ops:
        if not names:
            break
        i = names[op[1] % len(names)]
        k, v = pairs[i]
        if op[0] == "st_key":
            spelled = KEY_SPELLINGS[op[2]](k)
            if op[3]:
                pairs.append((spelled, v))
            else:
                pairs[i] = (spelled, v)
        else:
            pairs.append((k, v))
    return "{" + ", ".join("%s: %s" % (json.dumps(k), json.dumps(v)) for k, v in pairs) + "}"


# -- HDF5 (Keras) ---------------------------------------------------------------------

#: The files a fuzz case may point at from inside an HDF5 file, relative to the worker's
#: folder (its working directory and the case file's folder): the runner reports any
#: case during which one of them is opened.
OUTSIDE_FILES = {
    "external": "outside/secret.bin",
    "external-unlimited": "outside/secret.bin",
    "elink-dataset": "outside/donor.h5",
    "elink-group": "outside/donor.h5",
    "softlink": None,
    "softlink-outside": "outside/donor.h5",
    "vds": "outside/donor.h5",
    "vds-self": None,
}
H5_OP = st.one_of(
    st.tuples(st.just("outside"), IDX, st.sampled_from(sorted(OUTSIDE_FILES))),
    st.tuples(st.just("h5_deep"), st.sampled_from([10, 70])),
    st.tuples(st.just("gcol"), st.sampled_from([4096, 32768])),
    st.tuples(st.just("attr_json"), JSON_OP),
    st.tuples(
        st.just("attr"),
        IDX,
        st.sampled_from(["drop", "int", "str", "empty", "list", "bytes", "version1", "version3", "shuffle"]),
    ),
    st.tuples(
        st.just("dset"),
        IDX,
        st.sampled_from(
            [
                "reshape",
                "grow",
                "shrink",
                "scalar",
                "int",
                "f64",
                "f16",
                "bool",
                "str",
                "complex",
                "delete",
                "group",
                "huge",
                "nan",
                "empty",
                "3d",
            ]
        ),
    ),
)


def _h5_targets(f):
    attrs, dsets = [], []

    def visit(name, obj):
        if hasattr(obj, "shape"):
            dsets.append(name)
        for a in sorted(obj.attrs):
            attrs.append((name, a))

    for a in sorted(f.attrs):
        attrs.append(("/", a))
    f.visititems(visit)
    return attrs, dsets


def apply_h5(data, ops):
    import h5py

    from . import hostile

    if not ops:
        return data
    tail = b""
    for op in ops:
        if op[0] == "gcol":
            tail += hostile.gcol_records(op[1])
        elif op[0] == "outside":
            try:
                with h5py.File(io.BytesIO(data), "r") as f:
                    dsets = _h5_targets(f)[1]
                if dsets:
                    data = hostile.point_outside(
                        data, op[2], OUTSIDE_FILES[op[2]] or "", path=dsets[op[1] % len(dsets)]
                    )
            except Exception:  # a damaged file, or one an earlier mutation made odd
                pass
    ops = [op for op in ops if op[0] not in ("gcol", "outside")]
    if ops:
        bio = io.BytesIO(data)
        try:
            with h5py.File(bio, "r+") as f:
                _apply_h5(f, ops)
        except Exception:  # a damaged file (an earlier byte mutation): mutate no further
            return data + tail
        data = bio.getvalue()
    return data + tail


def _apply_h5(f, ops):
    import numpy as np

    if True:
        for op in ops:
            attrs, dsets = _h5_targets(f)
            if op[0] == "attr_json":
                if "model_config" in f.attrs:
                    raw = f.attrs["model_config"]
                    raw = raw.decode() if isinstance(raw, bytes) else str(raw)
                    try:
                        doc = json.loads(raw)
                    except (ValueError, RecursionError):
                        continue
                    f.attrs["model_config"] = apply_json(doc, [op[1]])
            elif op[0] == "h5_deep":
                g = f
                for _i in range(op[1]):
                    g = g.create_group("d")
            elif op[0] == "attr" and attrs:
                where, name = attrs[op[1] % len(attrs)]
                obj = f[where]
                how = op[2]
                old = obj.attrs[name]
                if how == "drop":
                    del obj.attrs[name]
                elif how == "int":
                    obj.attrs[name] = 10**12
                elif how == "str":
                    obj.attrs[name] = "garbage"
                elif how == "empty":
                    obj.attrs[name] = np.array([], dtype="S1")
                elif how == "list":
                    obj.attrs[name] = np.array([b"a", b"../../b", b"model_weights"])
                elif how == "bytes":
                    obj.attrs[name] = np.void(b"\x00\xff")
                elif how == "version1":
                    obj.attrs[name] = "1.2.2"
                elif how == "version3":
                    obj.attrs[name] = "3.0"
                elif how == "shuffle" and getattr(old, "ndim", 0) == 1 and len(old) > 1:
                    obj.attrs[name] = old[::-1]
            elif op[0] == "dset" and dsets:
                path = dsets[op[1] % len(dsets)]
                ds = f[path]
                if ds.shape is None or ds.size > 100000 or ds.is_virtual or ds.external:
                    continue  # (one this fuzzer made huge, or outside the file: leave it;
                    #  reading a virtual dataset of a file in memory crashes HDF5)
                a = ds[()]
                how = op[2]
                del f[path]
                shape = a.shape
                if how == "reshape" and a.size:
                    f[path] = a.reshape(-1)
                elif how == "grow":
                    f[path] = np.zeros(tuple(s + 1 for s in shape) or (2,), a.dtype)
                elif how == "shrink":
                    f[path] = np.zeros(tuple(max(0, s - 1) for s in shape), a.dtype)
                elif how == "scalar":
                    f[path] = np.float32(1.5)
                elif how in ("int", "f64", "f16", "bool", "complex"):
                    dt = {"int": "i4", "f64": "f8", "f16": "f2", "bool": "?", "complex": "c8"}[how]
                    f[path] = a.astype(dt) if a.dtype.kind in "fiub" else np.zeros(shape, dt)
                elif how == "str":
                    f[path] = np.array([b"abc"] * max(1, a.size))
                elif how == "group":
                    f.create_group(path)
                elif how == "huge":
                    big = tuple(10**6 for _ in shape) or (10**12,)
                    f.create_dataset(path, shape=big, dtype="f4", chunks=(1,) * len(big), compression="gzip")
                elif how == "nan" and a.dtype.kind == "f":
                    f[path] = np.full(shape, np.nan, a.dtype)
                elif how == "empty":
                    f.create_dataset(path, shape=None, dtype="f4")
                elif how == "3d":
                    f[path] = a[None]
                elif how != "delete":
                    f[path] = a


# -- Keras archives -------------------------------------------------------------------

KERAS_OP = st.one_of(
    st.tuples(st.just("many_layers"), st.sampled_from([50, 1000, 10001])),
    st.tuples(st.just("member_json"), st.sampled_from(["config.json", "metadata.json"]), JSON_OP),
    st.tuples(st.just("member_h5"), H5_OP),
    st.tuples(st.just("member_bytes"), st.sampled_from(["config.json", "metadata.json", "model.weights.h5"]), BYTE_OP),
)


def build_keras(seed, ops, zip_ops):
    with open(seed, "rb") as f:
        members = _zip_members(f.read())
    for op in ops:
        for i, (name, data, method) in enumerate(members):
            if op[0] == "member_json" and name == op[1]:
                try:
                    doc = json.loads(data)
                except (ValueError, RecursionError):  # an earlier mutation broke it
                    continue
                data = apply_json(doc, [op[2]]).encode("utf-8", "surrogatepass")
            elif op[0] == "many_layers" and name == "config.json":
                data = _many_layers(data, op[1])
            elif op[0] == "member_h5" and name == "model.weights.h5":
                data = apply_h5(data, [op[1]])
            elif op[0] == "member_bytes" and name == op[1]:
                data = apply_bytes(data, [op[2]])
            members[i] = (name, data, method)
    return apply_zip(_write_zip(members), zip_ops)


def _many_layers(data, n):
    """A Sequential config with ``n`` Dropout layers appended (else unchanged)."""
    try:
        cfg = json.loads(data)
        layers = cfg["config"]["layers"]
        if cfg.get("class_name") != "Sequential" or not isinstance(layers, list):
            return data
    except (ValueError, KeyError, TypeError, RecursionError):
        return data
    for i in range(n):
        layers.append(
            {
                "module": "keras.layers",
                "class_name": "Dropout",
                "registered_name": None,
                "config": {
                    "name": "fuzz_dropout_%d" % i,
                    "trainable": True,
                    "dtype": "float32",
                    "rate": 0.0,
                    "seed": None,
                    "noise_shape": None,
                },
            }
        )
    return json.dumps(cfg).encode()


def build_h5(seed, ops):
    with open(seed, "rb") as f:
        return apply_h5(f.read(), ops)


# -- cases ------------------------------------------------------------------------------


HDF5_FORMATS = ("keras", "keras3h5", "keras2h5")


def case_strategy(fmt, hdf5_bytes=True):
    """A hypothesis strategy of (seed, structured ops, file-level ops, byte ops).

    ``hdf5_bytes=False`` leaves out byte mutations of HDF5 data (for the bounded smoke
    run): they mostly exercise the HDF5 library, whose known hangs (README.md) would
    eat the run's time budget; it also draws the pickle structure classes at small
    sizes (TORCH_OP_SMOKE).
    """
    torch_op = TORCH_OP if hdf5_bytes else TORCH_OP_SMOKE
    structured = {
        "torchzip": torch_op,
        "torchlegacy": torch_op,
        "safetensors": ST_OP,
        "keras": KERAS_OP,
        "keras3h5": H5_OP,
        "keras2h5": H5_OP,
        "onnx": ONNX_OP,
    }[fmt]
    if fmt == "keras" and not hdf5_bytes:
        structured = st.one_of(
            st.tuples(st.just("many_layers"), st.sampled_from([50, 300, 10001])),
            st.tuples(st.just("member_json"), st.sampled_from(["config.json", "metadata.json"]), JSON_OP),
            st.tuples(st.just("member_h5"), H5_OP),
            st.tuples(st.just("member_bytes"), st.sampled_from(["config.json", "metadata.json"]), BYTE_OP),
        )
    file_level = {"torchzip": ZIP_OP, "torchlegacy": LEGACY_OP, "keras": ZIP_OP}.get(fmt)
    byte_ops = st.lists(BYTE_OP, max_size=3)
    if fmt in ("keras3h5", "keras2h5") and not hdf5_bytes:
        byte_ops = st.just([])  # (a .keras zip's CRCs keep byte mutations out of its HDF5 member)
    return st.tuples(
        st.sampled_from(seeds(fmt)),
        st.lists(structured, max_size=4),
        st.lists(file_level, max_size=2) if file_level is not None else st.just([]),
        byte_ops,
    )


# -- ONNX -------------------------------------------------------------------------------

ONNX_OPS = [
    "LSTM",
    "GRU",
    "RNN",
    "Loop",
    "Scan",
    "If",
    "DynamicQuantizeLSTM",
    "Reshape",
    "Expand",
    "ConstantOfShape",
    "Tile",
    "Range",
    "Concat",
    "Gather",
    "Slice",
    "Split",
    "MatMul",
    "Conv",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Softmax",
    "Shape",
    "Cast",
    "Where",
    "Identity",
]
ONNX_LOCATIONS = [
    "outside/secret.bin",
    "../outside/secret.bin",
    "/etc/passwd",
    "case.bin",
    "missing.bin",
    "outside",
    ".",
    "",
    "..",
    "outside\\secret.bin",
]
ONNX_OP = st.one_of(
    st.tuples(st.just("onnx_op"), IDX, st.sampled_from(ONNX_OPS)),
    st.tuples(st.just("onnx_domain"), IDX, st.sampled_from(["", "ai.onnx", "com.microsoft", "ai.onnx.ml", "x"])),
    st.tuples(st.just("onnx_attr"), IDX, IDX, INTS),
    st.tuples(st.just("onnx_attr_drop"), IDX, IDX),
    st.tuples(st.just("onnx_input"), IDX, IDX, st.sampled_from(["", "missing", "x", "other"])),
    st.tuples(st.just("onnx_output"), IDX, IDX, st.sampled_from(["", "x", "dup", "other"])),
    st.tuples(st.just("onnx_dims"), IDX, IDX, INTS),
    st.tuples(st.just("onnx_dtype"), IDX, st.integers(0, 20)),
    st.tuples(st.just("onnx_raw"), IDX, st.integers(-64, 64)),
    st.tuples(st.just("onnx_external"), IDX, st.sampled_from(ONNX_LOCATIONS), INTS, INTS),
    st.tuples(st.just("onnx_shape"), IDX, IDX, INTS),
    st.tuples(st.just("onnx_deep"), st.sampled_from([100, 5000])),
    st.tuples(st.just("onnx_many"), st.sampled_from([300, 20000])),
)


def _pb_field(num, payload):
    n, out = len(payload), bytearray([num << 3 | 2])
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


def _i64(v):
    return (v + (1 << 63)) % (1 << 64) - (1 << 63)


def _onnx_nodes(g):
    """The graph's nodes, then those of its Loop / Scan bodies (at any depth): node
    mutations reach into subgraphs."""
    out, todo = list(g.node), list(g.node)
    while todo:
        for a in todo.pop(0).attribute:
            if a.type == 5:  # AttributeProto.GRAPH
                out += a.g.node
                todo += a.g.node
    return out


def build_onnx(seed, ops):
    import onnx

    with open(seed, "rb") as f:
        m = onnx.load_model_from_string(f.read())
    g = m.graph
    extra = b""
    for op in ops:
        kind = op[0]
        nodes, inits = _onnx_nodes(g), g.initializer
        if kind == "onnx_deep":
            graph = b""
            for _ in range(op[1]):
                attr = _pb_field(1, b"body") + _pb_field(6, graph) + bytes([0xA0, 0x01, 5])
                graph = _pb_field(1, _pb_field(4, b"Loop") + _pb_field(5, attr))
            extra = graph  # appended to the graph's own bytes: one more (deep) node
        elif kind == "onnx_many":
            prev = g.input[0].name if len(g.input) else "x"
            for i in range(op[1]):
                g.node.add(op_type="Identity", input=[prev], output=["many%d" % i])
                prev = "many%d" % i
        elif kind in ("onnx_op", "onnx_domain", "onnx_attr", "onnx_attr_drop", "onnx_input", "onnx_output") and nodes:
            n = nodes[op[1] % len(nodes)]
            if kind == "onnx_op":
                n.op_type = op[2]
            elif kind == "onnx_domain":
                n.domain = op[2]
            elif kind == "onnx_attr" and n.attribute:
                a = n.attribute[op[2] % len(n.attribute)]
                if a.type == onnx.AttributeProto.INT:
                    a.i = _i64(op[3])
                elif a.type == onnx.AttributeProto.FLOAT:
                    a.f = float(op[3])
                elif a.type == onnx.AttributeProto.INTS:
                    a.ints.append(_i64(op[3]))
                elif a.type == onnx.AttributeProto.STRING:
                    a.s = str(op[3]).encode()
                elif a.type == onnx.AttributeProto.TENSOR and len(a.t.dims):
                    a.t.dims[0] = _i64(op[3])
            elif kind == "onnx_attr_drop" and n.attribute:
                del n.attribute[op[2] % len(n.attribute)]
            elif kind == "onnx_input":
                names = {
                    "x": g.input[0].name if len(g.input) else "x",
                    "other": nodes[-1].output[0] if nodes[-1].output else "",
                }
                v = names.get(op[3], op[3])
                if n.input:
                    n.input[op[2] % len(n.input)] = v
                else:
                    n.input.append(v)
            elif kind == "onnx_output" and n.output:
                names = {
                    "x": g.input[0].name if len(g.input) else "x",
                    "dup": nodes[0].output[0] if nodes[0].output else "",
                    "other": g.output[0].name,
                }
                n.output[op[2] % len(n.output)] = names.get(op[3], op[3])
        elif kind in ("onnx_dims", "onnx_dtype", "onnx_raw", "onnx_external") and inits:
            t = inits[op[1] % len(inits)]
            if kind == "onnx_dims":
                if t.dims:
                    t.dims[op[2] % len(t.dims)] = _i64(op[3])
                else:
                    t.dims.append(_i64(op[3]))
            elif kind == "onnx_dtype":
                t.data_type = op[2]
            elif kind == "onnx_raw":
                t.raw_data = t.raw_data[: max(0, len(t.raw_data) + op[2])] if op[2] < 0 else t.raw_data + b"\0" * op[2]
            else:
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                t.external_data.add(key="location", value=op[2])
                t.external_data.add(key="offset", value=str(op[3]))
                t.external_data.add(key="length", value=str(op[4]))
        elif kind == "onnx_shape" and len(g.input):
            vi = g.input[op[1] % len(g.input)]
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dims[op[2] % len(dims)].dim_value = op[3] % (1 << 63)
    data = m.SerializeToString()
    if extra:  # the deep node goes into the graph (ModelProto field 7): re-frame it
        graph = m.graph.SerializeToString() + extra
        m.ClearField("graph")
        data = m.SerializeToString() + _pb_field(7, graph)
    return data


def build_case(fmt, case):
    """The bytes of a fuzz case drawn from :func:`case_strategy`."""
    import warnings

    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # (casting NaN to int and the like, on purpose)
        return _build_case(fmt, case)


def _build_case(fmt, case):
    seed, ops, file_ops, byte_ops = case
    if fmt in ("torchzip", "torchlegacy"):
        data = build_torch(seed, "zip" if fmt == "torchzip" else "legacy", ops, file_ops)
    elif fmt == "safetensors":
        data = build_safetensors(seed, ops)
    elif fmt == "keras":
        data = build_keras(seed, ops, file_ops)
    elif fmt == "onnx":
        data = build_onnx(seed, ops)
    else:
        data = build_h5(seed, ops)
    return apply_bytes(data, byte_ops)
