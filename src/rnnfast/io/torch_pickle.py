"""Read ``torch.save`` files without PyTorch, and without running anything from them.

Two layouts exist:

* the zip format (``torch.save``'s default since PyTorch 1.6): one top folder holding
  ``data.pkl`` (the pickled object), ``data/<key>`` (the raw bytes of each storage),
  ``byteorder`` (``little`` or ``big``; absent in files older than 1.10, which are
  little-endian) and ``version``;
* the legacy format (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``):
  five pickles in a row (magic number, protocol version, system information, the
  object, the list of storage keys), then every storage in that order as an 8-byte
  little-endian element count followed by its little-endian raw bytes.

The pickles are read by :class:`RestrictedUnpickler`. Its ``find_class`` resolves only
the globals a state_dict needs, each to a harmless stand-in defined here, never to
a torch function: a tensor becomes a :class:`TensorRecord` (storage, offset, shape,
strides) whose values are read into numpy only on request, after checking that the
view lies inside the bytes the file actually holds. Any other global is refused with
:class:`~rnnfast.FormatError` naming it, so nothing from the file is executed (the
idea of ``torch.load(weights_only=True)``, without importing torch). Before the
unpickler runs, :func:`prescan_pickle` walks the opcodes with a model of its stack and
refuses what would cost more than the file justifies or recurse: declared lengths
beyond the data, memo indices out of range, more opcodes than the file's size allows
(max(MIN_PICKLE_OPS, half its bytes)), objects nested deeper than MAX_PICKLE_DEPTH, a
container changed after it was placed in another, a dict key given twice. Compressed
zip records may inflate at most MAX_STORAGE_INFLATE times.

Usage::

    with open_torch_file(path) as archive:
        obj = archive.root                  # dicts, lists, ..., TensorRecord leaves
        array = archive.array(record)       # numpy, native byte order
"""

import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from ..errors import FormatError
from ._foreign import WHOLE_MODULE_ROUTES
from ._sniff import sniff
from ._zip import ZIP_ERRORS, check_zip_member, read_member
from .torch_convert import DTYPES, numpy_dtype, to_native

__all__ = [
    "TensorRecord",
    "RestrictedUnpickler",
    "open_torch_file",
    "ZipArchive",
    "LegacyArchive",
    "MAX_PICKLE_BYTES",
    "prescan_pickle",
    "quote",
]

#: Largest pickle rnnfast reads (a state_dict's pickle is a few kB; a big checkpoint's
#: a few MB).
MAX_PICKLE_BYTES = 256 << 20
#: Most dimensions a tensor may have (numpy's own limit).
MAX_NDIM = 32

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: ``torch.<Name>Storage`` -> element type
STORAGE_TYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",
}


def printable(text):
    """``text`` with anything outside printable ASCII backslash-escaped (no quotes)."""
    text = text if isinstance(text, str) else str(text)
    if text.isascii() and text.isprintable():
        return text
    return ascii(text)[1:-1]


def quote(name):
    """A name from a file, quoted for an error message: ``ascii()`` escapes newlines,
    control characters, lone surrogates and anything outside ASCII, so that the
    message prints on any stream and shows what the file really holds."""
    return ascii(name) if isinstance(name, str) else ascii(str(name))


# -- stand-ins for the allowed globals -------------------------------------------------


class _Marker:
    """What ``find_class`` returns for a storage type or a dtype: inert, not callable."""

    __slots__ = ("kind", "dtype")

    def __init__(self, kind, dtype):
        self.kind = kind  # "storage" or "dtype"
        self.dtype = dtype  # a DTYPES key

    def __setstate__(self, state):
        raise FormatError("unexpected state for a torch %s type in the pickle" % self.kind)

    def __repr__(self):
        return "<torch %s %s>" % (self.kind, self.dtype)


class StorageRecord:
    """One storage named by the file: ``numel`` elements of ``dtype`` under ``key``."""

    __slots__ = ("key", "dtype", "numel", "nbytes")

    def __init__(self, key, dtype, numel):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.nbytes = numel * DTYPES[dtype][0]

    def __setstate__(self, state):
        raise FormatError("unexpected state for a storage in the pickle")


class TensorRecord:
    """A tensor as the file describes it: a strided view of a storage.

    Attributes
    ----------
    storage : StorageRecord
    dtype : str
        Element type (a key of :data:`rnnfast.io.torch_convert.DTYPES`).
    offset : int
        First element, in elements of ``dtype``.
    shape, stride : tuple of int
        Strides in elements, as PyTorch counts them.
    """

    __slots__ = ("storage", "dtype", "offset", "shape", "stride")

    def __init__(self, storage, dtype, offset, shape, stride):
        self.storage, self.dtype, self.offset, self.shape, self.stride = storage, dtype, offset, shape, stride

    def __setstate__(self, state):
        raise FormatError("unexpected state for a tensor in the pickle")

    def __repr__(self):
        return "tensor%s %s" % (list(self.shape), self.dtype)


class _StateDict(OrderedDict):
    """``collections.OrderedDict`` as unpickled: a state_dict's ``_metadata`` (module
    versions) arrives as BUILD state and is dropped rather than set as attributes.
    Built from arguments (``OrderedDict([(k, v), ...])``, which torch never writes),
    a key given twice is refused rather than silently replaced."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        if kwargs or len(args) > 1:
            raise TypeError("OrderedDict expected at most 1 argument, got %d" % len(args))
        if args:
            items = args[0]
            if isinstance(items, dict):
                items = list(items.items())
            if not isinstance(items, (list, tuple)):
                raise TypeError("%r object is not iterable" % type(items).__name__)
            for pair in items:
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise TypeError("OrderedDict items must be pairs")
                key, value = pair
                if key in self:
                    raise FormatError("the pickle gives the key %s twice in one OrderedDict" % ascii(key)[:80])
                self[key] = value

    def __setstate__(self, state):
        pass


def _int(v, what):
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError("%s must be an integer, got %r" % (what, type(v).__name__))
    return v


def _int_tuple(v, what):
    if not isinstance(v, (tuple, list)):
        raise FormatError("%s must be a tuple of integers, got %s" % (what, type(v).__name__))
    if len(v) > MAX_NDIM:
        raise FormatError("%s has %d dimensions (at most %d)" % (what, len(v), MAX_NDIM))
    return tuple(_int(x, what) for x in v)


def _tensor(storage, offset, size, stride, dtype=None):
    """Validate a strided view of ``storage`` against the storage's size."""
    if not isinstance(storage, StorageRecord):
        raise FormatError("a tensor must be built on a storage, got %s" % type(storage).__name__)
    if dtype is None:
        dtype = storage.dtype
    offset = _int(offset, "storage offset")
    shape = _int_tuple(size, "tensor size")
    stride = _int_tuple(stride, "tensor stride")
    if len(stride) != len(shape):
        raise FormatError("tensor size %s and stride %s differ in length" % (shape, stride))
    if offset < 0 or any(n < 0 for n in shape) or any(s < 0 for s in stride):
        raise FormatError(
            "negative tensor offset, size or stride (offset %d, size %s, stride %s)" % (offset, shape, stride)
        )
    capacity = storage.nbytes // DTYPES[dtype][0]
    count = math.prod(shape)
    if count == 0:
        last = offset - 1
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= capacity or offset > capacity or count > capacity:
        raise FormatError(
            "tensor of size %s, stride %s at offset %d does not fit its storage "
            "%s of %d %s elements" % (shape, stride, offset, quote(storage.key), capacity, dtype)
        )
    return TensorRecord(storage, dtype, offset, shape, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, _Marker) or dtype.kind != "dtype":
        raise FormatError("_rebuild_tensor_v3 needs a torch dtype, got %s" % type(dtype).__name__)
    return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, TensorRecord):
        raise FormatError("a Parameter must wrap a tensor, got %s" % type(data).__name__)
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _torch_size(dims=()):
    return _int_tuple(dims, "torch.Size")


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    """Protocol-2 pickles write ``bytes`` as ``_codecs.encode(text, "latin1")``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise FormatError("refused _codecs.encode call other than text.encode('latin1')")
    return text.encode("latin1")


class _Callable:
    """An allowed function as the unpickler sees it: callable, but without attributes a
    pickle could set (BUILD on a plain function would write into its ``__dict__``, or,
    with slot state, replace its ``__defaults__`` for every later load)."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn, name):
        self._fn, self._name = fn, name

    def __call__(self, *args):
        return self._fn(*args)

    def __setstate__(self, state):
        raise FormatError("unexpected state for %s in the pickle" % self._name)

    def __reduce__(self):
        raise TypeError("not picklable")


def _callables(table):
    return {k: _Callable(fn, "%s.%s" % k) for k, fn in table.items()}


_ALLOWED = _callables(
    {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch", "Size"): _torch_size,
        ("_codecs", "encode"): _codecs_encode,
    }
)
_ALLOWED.update(
    {
        ("collections", "OrderedDict"): _StateDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "set"): set,  # protocol 2 writes Python 2 module names
        ("__builtin__", "frozenset"): frozenset,
    }
)
# Not bytearray: bytearray(n) from a few pickle bytes would allocate and zero n bytes.

#: PyTorch Lightning's ``AttributeDict`` (a ``dict`` subclass with attribute access), in
#: which ``Trainer.save_checkpoint`` stores ``hyper_parameters`` after
#: ``save_hyperparameters()``: pickled as ``NEWOBJ`` + ``SETITEMS``, read as a plain mapping.
LIGHTNING_ATTRIBUTE_DICTS = (
    ("lightning.fabric.utilities.data", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
    ("lightning.pytorch.utilities.parsing", "AttributeDict"),
)
_ALLOWED.update(dict.fromkeys(LIGHTNING_ATTRIBUTE_DICTS, _StateDict))


def _whole_module_hint(module, name):
    """What a refused global says about the file, with the ways out when it is a whole
    pickled model: a ``torch.nn`` class, a TorchScript one (``__torch__``), or a class of
    the script that saved it (``__main__``) or of the user's package (a capitalised name)."""
    if module.startswith("__torch__"):
        what = "a TorchScript object (torch.jit.save), which holds code"
    elif module == "torch.nn" or module.startswith("torch.nn."):
        what = "a whole pickled module (torch.save(model) of a torch.nn.%s)" % name
    elif module == "__main__":
        what = (
            "a pickled object of class __main__.%s, defined in the script that saved it: a whole module "
            "saved with torch.save(model)?" % name
        )
    elif name[:1].isupper() and not module.startswith(("torch", "numpy", "builtins", "__builtin__")):
        return (
            ". The file holds an object of class %s.%s, which rnnfast does not unpickle. If it is the whole "
            "model (a whole module saved with torch.save(model)), %s; if it is a value saved beside the "
            "weights (a config, hyper-parameters), save the checkpoint without it" % (module, name, WHOLE_MODULE_ROUTES)
        )
    else:
        return ""
    return ". The file is %s; %s" % (what, WHOLE_MODULE_ROUTES)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers and :class:`TensorRecord`.

    Parameters
    ----------
    file : binary file object
    storage : callable(key, dtype, numel) -> StorageRecord
        Called for each storage the pickle names (``persistent_load``); it checks the
        storage against the bytes present and returns the shared record.
    legacy : bool
        Storage ids in the legacy layout carry a sixth element (view metadata).
    """

    def __init__(self, file, storage, legacy=False):
        super().__init__(file)
        self._storage = storage
        self._legacy = legacy

    def find_class(self, module, name):
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        if module in ("torch", "torch.cuda") and name in STORAGE_TYPES:
            return _Marker("storage", STORAGE_TYPES[name])
        if module == "torch" and name in DTYPES:
            return _Marker("dtype", name)
        raise FormatError(
            "refused global '%s.%s' in the pickle: a weights file may hold only tensors "
            "and plain containers, and rnnfast runs nothing from it%s"
            % (module, name, _whole_module_hint(module, name))
        )

    def persistent_load(self, pid):
        n = 6 if self._legacy else 5
        if not isinstance(pid, tuple) or len(pid) != n or pid[0] != "storage":
            what = repr(pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__)
            raise FormatError("unsupported persistent id %s in the pickle (expected a storage)" % what[:60])
        typ, key, location, numel = pid[1:5]
        if not isinstance(typ, _Marker) or typ.kind != "storage":
            raise FormatError("storage id names no torch storage type")
        if not isinstance(key, str) or not isinstance(location, str):
            raise FormatError("storage key and location must be strings")
        numel = _int(numel, "storage size")
        if numel < 0:
            raise FormatError("negative storage size %d" % numel)
        if self._legacy and pid[5] is not None:
            raise FormatError(
                "storage views (PyTorch < 1.0 files) are not supported: re-save the state_dict with a current PyTorch"
            )
        return self._storage(key, typ.dtype, numel)


#: Most levels of containers a pickle may nest: the containers a checkpoint may use
#: (:data:`rnnfast.io.torch_file.MAX_DEPTH`) plus the few levels inside a pickled tensor.
MAX_NESTING = 100
MAX_PICKLE_DEPTH = MAX_NESTING + 12
#: Opcodes a pickle may run: at most max(MIN_PICKLE_OPS, the file's bytes // 2). A
#: state_dict's pickle runs about one opcode per 8 bytes and the file also holds the
#: tensors; each opcode makes at most one object or container slot, so this bounds
#: the objects and container sizes a file can make (a deflated pickle of repeated
#: one-byte opcodes cannot make a million lists from a kilobyte).
MIN_PICKLE_OPS = 1 << 18


class _Node:
    """A container or constructed object in :func:`prescan_pickle`'s model of the
    unpickler's stack: its nesting depth, whether it has been placed inside another
    object, and (for mappings) the keys set so far."""

    __slots__ = ("depth", "placed", "keys")

    def __init__(self, depth):
        self.depth = depth
        self.placed = False
        self.keys = None


#: Stands for a global (a class or function) on the modelled stack.
_GLOBAL = _Node(0)
#: Opcodes pushing a value given by their argument (a leaf of depth 0).
_LEAF_ARG = frozenset(
    [
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "FLOAT",
        "BINFLOAT",
    ]
)
_CONST = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "NEXT_BUFFER": None}
_EMPTY = frozenset(["EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "EMPTY_SET"])
_GET = frozenset(["GET", "BINGET", "LONG_BINGET"])
_PUTS = frozenset(["PUT", "BINPUT", "LONG_BINPUT"])
_KEYS = (str, bytes, int, float)


def _depth(v):
    return v.depth if type(v) is _Node else 0


def prescan_pickle(f, max_ops=None):
    """Walk a pickle's opcodes, modelling the unpickler's stack without building
    anything, and refuse what would make the C unpickler allocate memory the file does
    not hold, nest objects deeply, or take one key twice.

    - A declared length beyond the data is an error (``pickletools.genops`` reads
      arguments with ``f.read(n)``, which returns only the bytes present): CPython's
      unpickler allocates a ``BINBYTES8`` object at the size the opcode declares.
    - A memo index must be below the number of opcodes read so far (a pickler numbers
      its memo entries from 0, one opcode each): the unpickler grows its memo table to
      the index a ``PUT`` names; seven bytes ``]r\x00\x00\x00\x10.`` make it fill 4 GB.
    - At most ``max_ops`` opcodes (each makes at most one object or container slot).
    - No object nested more than :data:`MAX_PICKLE_DEPTH` deep: hashing a tuple nested
      300,000 deep (a dict key) overflows the C stack, and its repr raises
      RecursionError. Each container's depth is known when it is placed in another,
      because a container is never changed after it has been placed (a pickler fills
      each container before its parent takes it; only recursive structures do
      otherwise, and a state_dict has none), which is checked too; a container placed
      in itself (a self-referencing list) does not nest deeper.
    - No dict or OrderedDict given one key twice (the unpickler would keep the last
      value silently: a second ``weight_ih_l0`` overriding the first).

    ``f`` is left after the pickle's STOP opcode.
    """
    if max_ops is None:
        max_ops = MIN_PICKLE_OPS
    stack: list = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    n = 0
    try:
        for op, arg, _pos in pickletools.genops(f):
            n += 1
            if n > max_ops:
                raise FormatError(
                    "the pickle runs more than %d opcodes: more objects than a file of this size may make" % max_ops
                )
            name = op.name
            if name in _LEAF_ARG:
                stack.append(arg)
            elif name in _EMPTY:
                stack.append(_Node(1))
            elif name in _CONST:
                stack.append(_CONST[name])
            elif name == "MARK":
                marks.append(len(stack))
            elif name in _GET:
                if arg not in memo:
                    raise FormatError(
                        "corrupt or unsupported pickle data (memo key %r missing at opcode %d)" % (arg, n)
                    )
                stack.append(memo[arg])
            elif name in _PUTS:
                if not isinstance(arg, int) or not 0 <= arg < n:
                    raise FormatError("pickle memo index %r out of range (opcode %d)" % (arg, n))
                memo[arg] = _top(stack, marks)
            elif name == "MEMOIZE":
                memo[len(memo)] = _top(stack, marks)
            elif name in ("GLOBAL", "EXT1", "EXT2", "EXT4"):
                stack.append(_GLOBAL)
            elif name == "STACK_GLOBAL":
                _pop(stack, marks, 2)
                stack.append(_GLOBAL)
            elif name in ("APPEND", "SETITEM", "APPENDS", "SETITEMS", "ADDITEMS", "BUILD"):
                if name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                    items = _pop_mark(stack, marks)
                else:
                    items = _pop(stack, marks, 2 if name == "SETITEM" else 1)
                _add(_top(stack, marks), items, name, n)
            elif name in ("TUPLE", "LIST", "DICT", "FROZENSET", "INST", "OBJ"):
                items = _pop_mark(stack, marks)
                node = _node(items, n)
                if name == "DICT":
                    _add_keys(node, items[0::2], n)
                stack.append(node)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BINPERSID"):
                k = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3, "BINPERSID": 1}[
                    name
                ]
                stack.append(_node(_pop(stack, marks, k), n))
            elif name == "PERSID":
                stack.append(_Node(1))
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    _pop(stack, marks, 1)
            elif name == "POP_MARK":
                _pop_mark(stack, marks)
            elif name == "DUP":
                stack.append(_top(stack, marks))
            elif name == "STOP":
                _pop(stack, marks, 1)
            elif name not in ("PROTO", "FRAME", "READONLY_BUFFER"):
                raise FormatError("corrupt or unsupported pickle data (opcode %s)" % name)
    except FormatError:
        raise
    except Exception as e:  # whatever pickletools makes of damaged data
        raise FormatError("corrupt or unsupported pickle data (%s: %s)" % (type(e).__name__, e)) from None
    return n


def _top(stack, marks):
    if not stack or (marks and marks[-1] == len(stack)):
        raise FormatError("corrupt or unsupported pickle data (stack underflow)")
    return stack[-1]


def _pop(stack, marks, k):
    floor = marks[-1] if marks else 0
    if len(stack) - floor < k:
        raise FormatError("corrupt or unsupported pickle data (stack underflow)")
    items = stack[-k:]
    del stack[-k:]
    return items


def _pop_mark(stack, marks):
    if not marks:
        raise FormatError("corrupt or unsupported pickle data (no MARK on the stack)")
    k = marks.pop()
    items = stack[k:]
    del stack[k:]
    return items


def _node(children, n):
    """A new object made of ``children`` (placed in it)."""
    depth = 0
    for c in children:
        if type(c) is _Node:
            c.placed = True
            if c.depth > depth:
                depth = c.depth
    if depth >= MAX_PICKLE_DEPTH:
        raise FormatError(
            "containers nested more than %d levels deep (the pickle nests objects %d deep at "
            "opcode %d)" % (MAX_NESTING, depth + 1, n)
        )
    return _Node(depth + 1)


def _add(target, items, name, n):
    """``items`` put into the container (or, BUILD, state given to the object) ``target``."""
    if type(target) is not _Node or target is _GLOBAL:
        return  # (the unpickler refuses it, or a stand-in's __setstate__ does)
    if target.placed:
        raise FormatError(
            "the pickle changes a container after placing it in another (opcode %d): a "
            "recursive structure, which a state_dict never is" % n
        )
    depth = target.depth
    for c in items:
        if type(c) is _Node and c is not target:
            c.placed = True
            if c.depth >= depth:
                depth = c.depth + 1
    if depth > MAX_PICKLE_DEPTH:
        raise FormatError(
            "containers nested more than %d levels deep (the pickle nests objects %d deep at "
            "opcode %d)" % (MAX_NESTING, depth, n)
        )
    target.depth = depth
    if name in ("SETITEM", "SETITEMS"):
        _add_keys(target, items[0::2], n)


def _add_keys(node, keys, n):
    seen = node.keys
    if seen is None:
        seen = node.keys = set()
    for k in keys:
        if isinstance(k, _KEYS):
            if k in seen:
                raise FormatError(
                    "the pickle sets the key %s twice in one dict (opcode %d): the second "
                    "would silently replace the first" % (ascii(k)[:80], n)
                )
            seen.add(k)


# -- archives ---------------------------------------------------------------------------


class _Archive:
    """A torch.save file opened for reading: ``root`` is the unpickled object. A
    subclass (one per container format) checks and reads the storages."""

    byteorder = "little"

    def _check_storage(self, rec):
        """Refuse storage record ``rec`` if the file cannot hold it (FormatError)."""
        raise NotImplementedError

    def _storage_bytes(self, storage):
        """The bytes of storage record ``storage``, as the file holds them."""
        raise NotImplementedError

    def __init__(self, path):
        self.path = path
        self._storages = {}  # key -> StorageRecord
        self.root = None
        self._ops_left = MIN_PICKLE_OPS  # set from the file's size by the subclass

    def _budget(self, file_size):
        """The opcodes all of the file's pickles may run together (see MIN_PICKLE_OPS)."""
        self._ops_left = max(MIN_PICKLE_OPS, file_size // 2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fail(self, msg):
        return FormatError("%s: %s" % (self.path, msg))

    def _storage(self, key, dtype, numel):
        rec = self._storages.get(key)
        if rec is None:
            rec = StorageRecord(key, dtype, numel)
            self._check_storage(rec)
            self._storages[key] = rec
        elif rec.dtype != dtype or rec.numel != numel:
            raise FormatError("storage %s is named twice with different types or sizes" % quote(key))
        return rec

    def _unpickle(self, f, legacy=False):
        start = f.tell()
        try:
            self._ops_left -= prescan_pickle(f, self._ops_left)
        except FormatError as e:
            raise self._fail(str(e)) from None
        f.seek(start)
        try:
            return RestrictedUnpickler(f, self._storage, legacy=legacy).load()
        except FormatError as e:
            raise self._fail(str(e)) from None
        except Exception as e:  # whatever a corrupt pickle makes the unpickler raise
            raise self._fail("corrupt or unsupported pickle data (%s: %s)" % (type(e).__name__, e)) from None

    def array(self, t):
        """The values of :class:`TensorRecord` ``t`` as a new native-order numpy array
        (bfloat16 widened to float32)."""
        try:
            dt = numpy_dtype(t.dtype, self.byteorder)
        except KeyError:
            raise self._fail("tensors of type %s cannot be read by rnnfast" % t.dtype) from None
        data = self._storage_bytes(t.storage)
        if len(data) < t.storage.nbytes:
            raise self._fail(
                "storage %s holds %d bytes, fewer than the %d it claims"
                % (quote(t.storage.key), len(data), t.storage.nbytes)
            )
        size = dt.itemsize
        capacity = t.storage.nbytes // size
        if math.prod(t.shape) == 0:
            return to_native(np.zeros(t.shape, dt), t.dtype)
        flat = np.frombuffer(data, dt, count=capacity)
        view = np.lib.stride_tricks.as_strided(flat[t.offset :], t.shape, [s * size for s in t.stride], writeable=False)
        return to_native(view, t.dtype)

    def close(self):
        pass


#: A compressed record (a storage, the pickle) larger than SMALL_STORAGE may inflate
#: at most this many times (torch.save stores records uncompressed; float weights
#: deflate about 1.1 times): the tensors read from it and their converted copies stay
#: within about 100 times the file's size.
MAX_STORAGE_INFLATE = 10
SMALL_STORAGE = 1 << 20


def _read_record(z, info):
    """A zip record's bytes (:func:`rnnfast.io._zip.read_member`); small ones as bytes."""
    out = read_member(z, info, "record %s" % printable(info.filename))
    return bytes(out) if info.file_size < 4096 else out


class ZipArchive(_Archive):
    """A ``torch.save`` zip file (PyTorch >= 1.6)."""

    def __init__(self, path):
        super().__init__(path)
        self._cache = {}
        try:
            self._size = os.path.getsize(path)
            self._budget(self._size)
            self._zip = zipfile.ZipFile(path)
        except ZIP_ERRORS as e:
            raise self._fail("corrupt zip archive (%s)" % e) from None
        try:
            self._open()
        except BaseException:
            self._zip.close()
            raise

    def _open(self):
        infos = {i.filename: i for i in self._zip.infolist()}
        tops = sorted(n[: -len("data.pkl")] for n in infos if n.endswith("/data.pkl") and n.count("/") == 1)
        if len(tops) != 1:
            raise self._fail(
                "a zip archive without exactly one <name>/data.pkl (found %d): not a torch.save file" % len(tops)
            )
        self._prefix = prefix = tops[0]
        if prefix + "constants.pkl" in infos or any(n.startswith(prefix + "code/") for n in infos):
            raise self._fail(
                "a TorchScript archive (torch.jit.save), which holds code: rnnfast reads state_dicts and "
                "ONNX; " + WHOLE_MODULE_ROUTES
            )
        self._infos = infos
        if prefix + "byteorder" in infos:
            order = self._read(prefix + "byteorder", 16).strip()
            if order not in (b"little", b"big"):
                raise self._fail("unknown byteorder record %r" % order[:16])
            self.byteorder = order.decode()
        data = self._read(prefix + "data.pkl", MAX_PICKLE_BYTES)
        self.root = self._unpickle(io.BytesIO(data))

    def _read(self, name, limit):
        info = self._infos[name]
        if info.file_size > limit:
            raise self._fail(
                "record %s claims %d bytes (more than the %d allowed)" % (printable(name), info.file_size, limit)
            )
        try:
            self._check_sizes(info)
        except FormatError as e:
            raise self._fail(str(e)) from None
        try:
            return _read_record(self._zip, info)
        except FormatError as e:
            raise self._fail(str(e)) from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
            raise self._fail("cannot read record %s (%s: %s)" % (printable(name), type(e).__name__, e)) from None
        except Exception as e:  # zlib.error and friends from a damaged record
            raise self._fail("cannot read record %s (%s: %s)" % (printable(name), type(e).__name__, e)) from None

    def _check_sizes(self, info):
        """A record's claimed sizes must be possible in this file, before reading it."""
        check_zip_member(info, self._size)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(
            SMALL_STORAGE, MAX_STORAGE_INFLATE * info.compress_size
        ):
            raise FormatError(
                "record %s would inflate %d compressed bytes to %d (more than %d times; torch.save "
                "stores records uncompressed)"
                % (printable(info.filename), info.compress_size, info.file_size, MAX_STORAGE_INFLATE)
            )

    def _check_storage(self, rec):
        name = "%sdata/%s" % (self._prefix, rec.key)
        info = self._infos.get(name)
        if info is None:
            raise FormatError("storage %s has no record %s in the archive" % (quote(rec.key), printable(name)))
        self._check_sizes(info)
        if info.file_size < rec.nbytes:
            raise FormatError(
                "storage %s claims %d %s elements (%d bytes) but its record holds %d bytes"
                % (quote(rec.key), rec.numel, rec.dtype, rec.nbytes, info.file_size)
            )

    def _storage_bytes(self, rec):
        data = self._cache.get(rec.key)
        if data is None:
            info = self._infos["%sdata/%s" % (self._prefix, rec.key)]
            data = self._cache[rec.key] = self._read(info.filename, max(rec.nbytes, info.file_size))
        return data

    def close(self):
        self._cache.clear()
        self._zip.close()


class _BoundedReader:
    """A file view for the unpickler whose reads never exceed what the file holds (a
    hostile length field then reads as truncated data instead of a huge allocation)."""

    def __init__(self, f, size):
        self._f = f
        self._size = size

    def read(self, n=-1):
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, n=-1):
        left = max(0, self._size - self._f.tell())
        return self._f.readline(left if n is None or n < 0 else min(n, left))

    def tell(self):
        return self._f.tell()

    def seek(self, pos):
        return self._f.seek(pos)


class LegacyArchive(_Archive):
    """A legacy (pre-1.6) ``torch.save`` file: pickles followed by raw storages."""

    def __init__(self, path):
        super().__init__(path)
        self._cache = {}
        self._f = open(path, "rb")
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    def _open(self):
        f = self._f
        size = os.fstat(f.fileno()).st_size
        self._budget(size)
        reader = _BoundedReader(f, min(size, MAX_PICKLE_BYTES))
        magic = self._unpickle(reader)
        if magic != LEGACY_MAGIC:
            raise self._fail("a pickle file that is not a torch.save file (no PyTorch magic number)")
        version = self._unpickle(reader)
        if version != LEGACY_PROTOCOL:
            raise self._fail("unknown legacy PyTorch protocol version %r" % (version,))
        info = self._unpickle(reader)
        if not isinstance(info, dict):
            raise self._fail("corrupt legacy header")
        self.root = self._unpickle(reader, legacy=True)
        keys = self._unpickle(reader)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise self._fail("corrupt legacy storage key list")
        # Storages follow in key order: an int64 element count, then the bytes.
        self._offsets = {}
        pos = f.tell()
        for key in keys:
            rec = self._storages.get(key)
            if rec is None:
                raise self._fail("storage %s is listed but no tensor uses it" % quote(key))
            f.seek(pos)
            head = f.read(8)
            if len(head) != 8:
                raise self._fail("truncated file: storage %s is missing" % quote(key))
            (numel,) = struct.unpack("<q", head)
            if numel != rec.numel:
                raise self._fail(
                    "storage %s holds %d elements on disk but the pickle says %d" % (quote(key), numel, rec.numel)
                )
            pos += 8
            if pos + rec.nbytes > size:
                raise self._fail(
                    "truncated file: storage %s needs %d bytes, %d remain" % (quote(key), rec.nbytes, size - pos)
                )
            self._offsets[key] = pos
            pos += rec.nbytes

    def _check_storage(self, rec):
        pass  # sizes are checked against the file once the key list is read

    def _storage_bytes(self, rec):
        # read once per storage (many tensors may view one: their reads would otherwise
        # cost the storage's size each); the storages are disjoint parts of the file
        data = self._cache.get(rec.key)
        if data is None:
            pos = self._offsets.get(rec.key)
            if pos is None:
                raise self._fail("storage %s is not in the file's storage list" % quote(rec.key))
            self._f.seek(pos)
            data = self._cache[rec.key] = self._f.read(rec.nbytes)
        return data

    def close(self):
        self._cache.clear()
        self._f.close()


def open_torch_file(path, kind=None):
    """Open a ``torch.save`` file (``kind``: "zip" or "torch-legacy"; sniffed if None).

    Returns
    -------
    ZipArchive or LegacyArchive
        A context manager; ``.root`` is the unpickled object with
        :class:`TensorRecord` leaves, ``.array(record)`` reads one tensor.
    """
    if kind is None:
        kind = sniff(path)
    if kind == "zip":
        return ZipArchive(path)
    if kind == "torch-legacy":
        return LegacyArchive(path)
    raise FormatError("%s: not a torch.save file (%s)" % (path, kind))
