"""Read ``.safetensors`` files directly.

Layout: an 8-byte little-endian header length ``N``; ``N`` bytes of UTF-8 JSON mapping
each tensor name to ``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}``
(offsets relative to the byte buffer, plus an optional ``"__metadata__"`` map of
strings); then the byte buffer, little-endian, row-major.

rnnfast reads the format itself rather than through the ``safetensors`` package:
the format is small enough to read in a few dozen lines, which keeps rnnfast free
of an extra runtime dependency, and it lets this reader apply the same checks as the
PyTorch zip reader (``torch_pickle``): the header size is bounded before it is read,
every dtype, shape and offset is validated against the bytes actually present (the
tensors must tile the buffer without overlap or holes, as the specification
requires), and values are read only for the tensors a model uses. The
``safetensors`` package is used only by the tests, to write files.
"""

import json
import math
import os

import numpy as np

from ..errors import FormatError
from ._json import json_depth
from .torch_convert import DTYPES, numpy_dtype, to_native
from .torch_pickle import quote

__all__ = ["SafetensorsFile", "SafeTensorRecord", "MAX_HEADER_BYTES", "DTYPE_NAMES"]

#: Largest header accepted (the reference implementation's limit too).
MAX_HEADER_BYTES = 100 << 20

#: safetensors dtype tag -> element type name (see rnnfast.io.torch_convert.DTYPES)
DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E8M0": "float8_e8m0fnu",
}


#: Deepest JSON nesting accepted in a header (a header nests 3 levels: the tensors,
#: an entry, its shape).
MAX_HEADER_DEPTH = 16


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs):
    """``json.loads``' object hook: a JSON object naming a key twice is refused (the
    standard reader would keep the last silently, letting a second ``weight_ih_l0``
    replace the first)."""
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class SafeTensorRecord:
    """One tensor of a safetensors file: ``name``, ``dtype`` (element type name),
    ``shape`` (tuple) and its byte range ``begin:end`` in the data buffer."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    def __repr__(self):
        return "tensor%s %s" % (list(self.shape), self.dtype)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class SafetensorsFile:
    """A ``.safetensors`` file opened for reading (a context manager).

    Attributes
    ----------
    root : dict
        Tensor name -> :class:`SafeTensorRecord`, in header order.
    metadata : dict of str
        The header's ``__metadata__`` (empty if absent).
    """

    def __init__(self, path):
        self.path = path
        self._f = open(path, "rb")
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    def _fail(self, msg):
        return FormatError("%s: %s" % (self.path, msg))

    def _open(self):
        f = self._f
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) != 8:
            raise self._fail("too short for a safetensors file (%d bytes)" % size)
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            raise self._fail("safetensors header claims %d bytes (at most %d)" % (n, MAX_HEADER_BYTES))
        if 8 + n > size:
            raise self._fail("truncated safetensors file: header of %d bytes, file of %d" % (n, size))
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise self._fail(
                "safetensors header names %s twice (a JSON reader would keep only the last)" % quote(e.args[0])
            ) from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise self._fail("safetensors header is not valid JSON (%s)" % e) from None
        if not isinstance(header, dict):
            raise self._fail("safetensors header is not a JSON object")
        if json_depth(header, MAX_HEADER_DEPTH) > MAX_HEADER_DEPTH:
            raise self._fail("safetensors header nests more than %d levels (a header has 3)" % MAX_HEADER_DEPTH)
        self._start = 8 + n
        data_len = size - self._start
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._fail("safetensors __metadata__ must map strings to strings")
        self.metadata = meta
        self.root = {}
        for name, entry in header.items():
            self.root[name] = self._record(name, entry, data_len)
        spans = sorted((r.begin, r.end, r.name) for r in self.root.values())
        pos = 0
        for begin, end, name in spans:
            if begin != pos:
                raise self._fail(
                    "tensor %s starts at byte %d of the data buffer, expected %d (tensors "
                    "must tile the buffer, without overlap or gaps)" % (quote(name), begin, pos)
                )
            pos = end
        if pos != data_len:
            raise self._fail("the data buffer holds %d bytes but the tensors cover %d" % (data_len, pos))

    def _record(self, name, entry, data_len):
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise self._fail("tensor %s: header entry must have exactly dtype, shape, data_offsets" % quote(name))
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(tag, str) or tag not in DTYPE_NAMES:
            raise self._fail("tensor %s: unknown dtype %s" % (quote(name), ascii(tag)[:80]))
        dtype = DTYPE_NAMES[tag]
        if not isinstance(shape, list) or len(shape) > 32 or not all(_is_int(d) and d >= 0 for d in shape):
            raise self._fail("tensor %s: invalid shape %s" % (quote(name), ascii(shape)[:200]))
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise self._fail(
                "tensor %s: data_offsets %s outside the %d-byte data buffer"
                % (quote(name), ascii(offsets)[:200], data_len)
            )
        nbytes = math.prod(shape) * DTYPES[dtype][0]
        if offsets[1] - offsets[0] != nbytes:
            raise self._fail(
                "tensor %s: shape %s of %s needs %d bytes, data_offsets give %d"
                % (quote(name), tuple(shape), dtype, nbytes, offsets[1] - offsets[0])
            )
        return SafeTensorRecord(name, dtype, tuple(shape), offsets[0], offsets[1])

    def array(self, t):
        """The values of record ``t`` as a new native-order numpy array (bfloat16
        widened to float32)."""
        try:
            dt = numpy_dtype(t.dtype, "little")
        except KeyError:
            raise self._fail("tensors of type %s cannot be read by rnnfast" % t.dtype) from None
        self._f.seek(self._start + t.begin)
        data = self._f.read(t.end - t.begin)
        if len(data) != t.end - t.begin:
            raise self._fail("tensor %s: file truncated" % quote(t.name))
        return to_native(np.frombuffer(data, dt).reshape(t.shape), t.dtype)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
