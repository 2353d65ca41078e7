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
idea of ``torch.load(weights_only=True)``, without importing torch).

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
from ._sniff import sniff
from ._zip import ZIP_ERRORS, check_zip_member
from .torch_convert import DTYPES, numpy_dtype, to_native

__all__ = ["TensorRecord", "RestrictedUnpickler", "open_torch_file", "ZipArchive", "LegacyArchive",
           "MAX_PICKLE_BYTES", "prescan_pickle"]

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


# -- stand-ins for the allowed globals -------------------------------------------------


class _Marker:
    """What ``find_class`` returns for a storage type or a dtype: inert, not callable."""

    __slots__ = ("kind", "dtype")

    def __init__(self, kind, dtype):
        self.kind = kind        # "storage" or "dtype"
        self.dtype = dtype      # a DTYPES key

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
    versions) arrives as BUILD state and is dropped rather than set as attributes."""

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
        raise FormatError("negative tensor offset, size or stride (offset %d, size %s, stride %s)"
                          % (offset, shape, stride))
    capacity = storage.nbytes // DTYPES[dtype][0]
    count = math.prod(shape)
    if count == 0:
        last = offset - 1
    else:
        last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= capacity or offset > capacity or count > capacity:
        raise FormatError("tensor of size %s, stride %s at offset %d does not fit its storage "
                          "'%s' of %d %s elements" % (shape, stride, offset, storage.key, capacity, dtype))
    return TensorRecord(storage, dtype, offset, shape, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
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


_ALLOWED = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "Size"): _torch_size,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,              # protocol 2 writes Python 2 module names
    ("__builtin__", "frozenset"): frozenset,
}
# Not bytearray: bytearray(n) from a few pickle bytes would allocate and zero n bytes.


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
        hint = ""
        if module.startswith("torch.nn") or module.startswith("__torch__"):
            hint = " (a whole module or TorchScript object? save module.state_dict() instead)"
        raise FormatError("refused global '%s.%s' in the pickle: a weights file may hold only tensors "
                          "and plain containers, and rnnfast runs nothing from it%s" % (module, name, hint))

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
            raise FormatError("storage views (PyTorch < 1.0 files) are not supported: re-save the "
                              "state_dict with a current PyTorch")
        return self._storage(key, typ.dtype, numel)


def prescan_pickle(f):
    """Walk a pickle's opcodes without building anything, and refuse what would make
    the C unpickler allocate memory the file does not hold.

    CPython's unpickler allocates a ``BINBYTES8`` / ``BYTEARRAY8`` object at the size
    the opcode declares before reading it, and grows its memo table to the index a
    ``PUT`` names (and clears it): seven bytes ``]r\x00\x00\x00\x10.`` make it fill
    4 GB. ``pickletools.genops`` reads every argument through ``f.read(n)``, which
    returns only the bytes present, so a declared length beyond the data is an error
    here, before any allocation; a memo index must be below the number of opcodes
    read so far (a pickler numbers its memo entries from 0, one opcode each).
    ``f`` is left after the pickle's STOP opcode.
    """
    n = 0
    try:
        for op, arg, _ in pickletools.genops(f):
            n += 1
            if op.name in _PUTS and not 0 <= arg < n:
                raise FormatError("pickle memo index %d out of range (opcode %d)" % (arg, n))
    except FormatError:
        raise
    except Exception as e:          # whatever pickletools makes of damaged data
        raise FormatError("corrupt or unsupported pickle data (%s: %s)" % (type(e).__name__, e)) from None


_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


# -- archives ---------------------------------------------------------------------------


class _Archive:
    """A torch.save file opened for reading: ``root`` is the unpickled object."""

    byteorder = "little"

    def __init__(self, path):
        self.path = path
        self._storages = {}     # key -> StorageRecord
        self.root = None

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
            raise FormatError("storage '%s' is named twice with different types or sizes" % key)
        return rec

    def _unpickle(self, f, legacy=False):
        start = f.tell()
        try:
            prescan_pickle(f)
        except FormatError as e:
            raise self._fail(str(e)) from None
        f.seek(start)
        try:
            return RestrictedUnpickler(f, self._storage, legacy=legacy).load()
        except FormatError as e:
            raise self._fail(str(e)) from None
        except Exception as e:       # whatever a corrupt pickle makes the unpickler raise
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
            raise self._fail("storage '%s' holds %d bytes, fewer than the %d it claims"
                             % (t.storage.key, len(data), t.storage.nbytes))
        size = dt.itemsize
        capacity = t.storage.nbytes // size
        if math.prod(t.shape) == 0:
            return to_native(np.zeros(t.shape, dt), t.dtype)
        flat = np.frombuffer(data, dt, count=capacity)
        view = np.lib.stride_tricks.as_strided(flat[t.offset:], t.shape, [s * size for s in t.stride],
                                               writeable=False)
        return to_native(view, t.dtype)

    def close(self):
        pass


class ZipArchive(_Archive):
    """A ``torch.save`` zip file (PyTorch >= 1.6)."""

    def __init__(self, path):
        super().__init__(path)
        self._cache = {}
        try:
            self._size = os.path.getsize(path)
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
            raise self._fail("a zip archive without exactly one <name>/data.pkl (found %d): not a "
                             "torch.save file" % len(tops))
        self._prefix = prefix = tops[0]
        if prefix + "constants.pkl" in infos or any(n.startswith(prefix + "code/") for n in infos):
            raise self._fail("a TorchScript archive (torch.jit.save): rnnfast reads state_dicts; save "
                             "module.state_dict() with torch.save instead")
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
            raise self._fail("record %s claims %d bytes (more than the %d allowed)"
                             % (name, info.file_size, limit))
        try:
            self._check_sizes(info)
        except FormatError as e:
            raise self._fail(str(e)) from None
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as e:
            raise self._fail("cannot read record %s (%s: %s)" % (name, type(e).__name__, e)) from None
        except Exception as e:      # zlib.error and friends from a damaged record
            raise self._fail("cannot read record %s (%s: %s)" % (name, type(e).__name__, e)) from None

    def _check_sizes(self, info):
        """A record's claimed sizes must be possible in this file, before reading it."""
        check_zip_member(info, self._size)

    def _check_storage(self, rec):
        name = "%sdata/%s" % (self._prefix, rec.key)
        info = self._infos.get(name)
        if info is None:
            raise FormatError("storage '%s' has no record %s in the archive" % (rec.key, name))
        self._check_sizes(info)
        if info.file_size < rec.nbytes:
            raise FormatError("storage '%s' claims %d %s elements (%d bytes) but its record holds %d bytes"
                              % (rec.key, rec.numel, rec.dtype, rec.nbytes, info.file_size))

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
        self._f = open(path, "rb")
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    def _open(self):
        f = self._f
        size = os.fstat(f.fileno()).st_size
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
                raise self._fail("storage '%s' is listed but no tensor uses it" % key)
            f.seek(pos)
            head = f.read(8)
            if len(head) != 8:
                raise self._fail("truncated file: storage '%s' is missing" % key)
            (numel,) = struct.unpack("<q", head)
            if numel != rec.numel:
                raise self._fail("storage '%s' holds %d elements on disk but the pickle says %d"
                                 % (key, numel, rec.numel))
            pos += 8
            if pos + rec.nbytes > size:
                raise self._fail("truncated file: storage '%s' needs %d bytes, %d remain"
                                 % (key, rec.nbytes, size - pos))
            self._offsets[key] = pos
            pos += rec.nbytes

    def _check_storage(self, rec):
        pass        # sizes are checked against the file once the key list is read

    def _storage_bytes(self, rec):
        pos = self._offsets.get(rec.key)
        if pos is None:
            raise self._fail("storage '%s' is not in the file's storage list" % rec.key)
        self._f.seek(pos)
        return self._f.read(rec.nbytes)

    def close(self):
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
