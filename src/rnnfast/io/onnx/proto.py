"""Reading an ONNX ModelProto safely: the protobuf parse (the ``onnx`` package, imported
here on first use), tensors checked against the bytes that hold them before anything is
allocated, attributes as plain values, and external data read only from the model's
own folder.

External data (``TensorProto.data_location == EXTERNAL``): ``location`` must name a
regular file in the model file's own folder (a bare file name, as ``torch.onnx.export``
and ``onnx.save_model(..., save_as_external_data=True)`` write it: no folder part, no
``..``, not absolute, no symlink leading elsewhere); ``offset`` and ``length`` must lie
inside that file and ``length`` must be the tensor's size. Every refusal is a :class:`~rnnfast.FormatError`.
"""

import mmap
import os

import numpy as np

from ...errors import FormatError
from ...model_onnx import ONNX_DTYPES

__all__ = [
    "onnx_module",
    "parse_model",
    "split_initializers",
    "TensorReader",
    "attribute_value",
    "MAX_FILE_BYTES",
    "text",
]

#: protobuf cannot hold a message of 2 GiB or more (weights beyond go to external data).
MAX_FILE_BYTES = (1 << 31) - 1

_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


def text(v):
    """A protobuf string field as ``str`` (protobuf hands a field holding invalid UTF-8
    over as bytes)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def onnx_module():
    """The ``onnx`` package (rnnfast's optional extra ``rnnfast[onnx]``)."""
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "reading ONNX files needs the onnx package: pip install 'rnnfast[onnx]' (or pip install onnx)"
        ) from None
    return onnx


def parse_model(data, what):
    """Parse serialized ModelProto bytes. FormatError for anything protobuf refuses
    (including nesting deeper than its recursion limit).

    Returns ``(model, raws)``: ``raws[k]`` is the ``raw_data`` of the graph's ``k``-th
    initializer as a read-only uint8 view of ``data`` (None where it has none; then
    the initializer's own fields hold its values), or ``raws`` is None and the
    initializers are whole. The weights are not copied by the parse (see
    :func:`split_initializers`)."""
    onnx = onnx_module()
    if len(data) > MAX_FILE_BYTES:
        raise FormatError("%s: %d bytes, more than a protobuf message can hold" % (what, len(data)))
    if not isinstance(data, (bytes, mmap.mmap)):  # (a map is read in place, as bytes are)
        data = bytes(data)
    split = split_initializers(data)
    m = onnx.ModelProto()
    try:
        m.ParseFromString(split[0] if split is not None else bytes(data))
    except Exception as e:  # google.protobuf.message.DecodeError, RecursionError, ...
        raise FormatError("%s is not a readable ONNX model: %s" % (what, e)) from None
    if not m.HasField("graph"):
        raise FormatError("%s: an ONNX ModelProto without a graph" % what)
    raws = None
    if split is not None:
        if len(m.graph.initializer) != len(split[1]):  # (cannot happen: the scan counts them as protobuf does)
            raise FormatError("%s: the initializers could not be read" % what)
        whole = np.frombuffer(data, np.uint8)
        raws = [None if r is None else whole[r[0] : r[0] + r[1]] for r in split[1]]
    return m, raws


class _Bail(Exception):
    """The scan met something it leaves to protobuf."""


#: Fields the initializer scan steps over at most (a tensor stored as millions of
#: unpacked values is left to protobuf).
SCAN_MAX_FIELDS = 1 << 16


def _varint(b, i, end):
    v = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Bail
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7


def _fields(b, i, end, budget):
    """(field number, wire type, start of the field, start of its payload, end) of each
    field of the message in ``b[i:end]``; groups (wire types 3, 4) and anything out of
    bounds raise _Bail."""
    while i < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Bail
        start = i
        tag = b[i]  # (a one-byte varint read here: tags and most lengths; ~40% of the scan)
        if tag < 0x80:
            i += 1
        else:
            tag, i = _varint(b, i, end)
        num, wire = tag >> 3, tag & 7
        if wire == 2:
            n = b[i] if i < end else 0x80
            if n < 0x80:
                i += 1
            else:
                n, i = _varint(b, i, end)
            j = i + n
        elif wire == 0:
            _, j = _varint(b, i, end)
        elif wire == 1:
            j = i + 8
        elif wire == 5:
            j = i + 4
        else:
            raise _Bail
        if j > end or num == 0:
            raise _Bail
        yield num, wire, start, i, j
        i = j


def _varint_bytes(v):
    out = bytearray()
    while True:
        if v < 0x80:
            out.append(v)
            return bytes(out)
        out.append((v & 0x7F) | 0x80)
        v >>= 7


_MODEL_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9  # ModelProto.graph, GraphProto.initializer, TensorProto.raw_data


def split_initializers(data):
    """The ModelProto ``data`` without its initializers' ``raw_data``, and where each
    one lay: ``(stripped bytes, [(offset, length) or None per initializer])``, so that
    the weights are read in place from ``data`` (protobuf would copy them twice: into
    its message, then out of it). None where the layout is not the plain one (the
    graph given once, each ``raw_data`` at most once, a bounded number of fields):
    protobuf then parses ``data`` itself."""
    try:
        return _split(memoryview(data), [SCAN_MAX_FIELDS])
    except _Bail:
        return None


def _split(b, budget):
    graphs = [f for f in _fields(b, 0, len(b), budget) if f[0] == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0][1] != 2:
        raise _Bail
    _, _, gstart, gi, gend = graphs[0]
    parts, raws = [], []
    kept_from = gi  # the graph's fields from here on are kept as they are (one slice per run)
    for num, wire, start, i, j in _fields(b, gi, gend, budget):
        if num != _INITIALIZER or wire != 2:
            continue
        if start > kept_from:
            parts.append(b[kept_from:start])
        kept_from = j
        kept, raw = [], None
        for tnum, twire, tstart, ti, tj in _fields(b, i, j, budget):
            if tnum == _RAW_DATA:
                if raw is not None or twire != 2:
                    raise _Bail
                raw = (ti, tj - ti)
            else:
                kept.append(b[tstart:tj])
        tensor = b"".join(kept)
        parts += [_varint_bytes((_INITIALIZER << 3) | 2), _varint_bytes(len(tensor)), tensor]
        raws.append(raw)
    parts.append(b[kept_from:gend])
    graph = b"".join(parts)
    out = b"".join([b[:gstart], _varint_bytes((_MODEL_GRAPH << 3) | 2), _varint_bytes(len(graph)), graph, b[gend:]])
    return out, raws


#: The little-endian form of each dtype ONNX stores (raw data is little-endian).
_LITTLE = {dt: dt.newbyteorder("<") for dt, _ in ONNX_DTYPES.values()}


def _from_le(raw, dt):
    """The little-endian bytes ``raw`` as a flat array of ``dt`` (a view where ``dt`` is
    the machine's byte order, of ``dt`` itself: NumPy's own float32 descriptor, not an
    equal one, is what the compiled calls' fast paths take, c/ndarray.h)."""
    le = _LITTLE[dt]
    a = np.frombuffer(raw, dtype=le)
    return a.view(dt) if le == dt else a.astype(dt)


class TensorReader:
    """Turns TensorProtos into read-only numpy arrays.

    Parameters
    ----------
    base_dir : str or None
        The model file's folder (external data is read from there only); None for a
        model given as bytes (external data is then refused).
    what : str
        The model, as messages name it.
    """

    def __init__(self, base_dir, what):
        self._folder = base_dir
        self.what = what
        self.bytes_read = 0

    @property
    def base_dir(self):
        """The model's folder, its real path (looked up on the first external tensor)."""
        if self._folder is not None and "_real" not in self.__dict__:
            self._real = os.path.realpath(self._folder)
        return self.__dict__.get("_real")

    def __call__(self, t, name=None, raw=None):
        """``t`` as a read-only array; ``raw``: its ``raw_data`` as a uint8 array read
        beside the message (:func:`split_initializers`), the array is then a view of it."""
        name = name or text(t.name) or "?"
        code = int(t.data_type)
        if code not in ONNX_DTYPES:
            raise FormatError(
                "%s: tensor %r has data type %d, which rnnfast does not read (it reads %s)"
                % (self.what, name, code, ", ".join(v[1] for v in ONNX_DTYPES.values()))
            )
        dt = ONNX_DTYPES[code][0]
        dims = list(t.dims)  # (ints: protobuf's int64 field)
        if dims and min(dims) < 0:
            raise FormatError("%s: tensor %r has a negative dimension %s" % (self.what, name, dims))
        n = 1
        for d in dims:
            n *= d
            if n > MAX_FILE_BYTES * 8:
                raise FormatError("%s: tensor %r of shape %s is larger than any file" % (self.what, name, dims))
        nbytes = n * dt.itemsize
        if t.data_location == _EXTERNAL:  # (0, DEFAULT, where the field is absent)
            raw = self._external(t, name, nbytes)
            a = _from_le(raw, dt)
        elif raw is not None or t.HasField("raw_data"):
            if raw is None:
                raw = t.raw_data  # (a copy each time protobuf hands it over: once)
            if len(raw) != nbytes:
                raise FormatError(
                    "%s: tensor %r of shape %s needs %d bytes, its raw_data has %d"
                    % (self.what, name, dims, nbytes, len(raw))
                )
            a = _from_le(raw, dt)
        else:
            a = self._typed(t, name, dt, n)
        a = a.reshape(dims)
        if a.flags.writeable:
            a.flags.writeable = False
        return a

    def _typed(self, t, name, dt, n):
        if dt == np.float32:
            field = t.float_data
        elif dt == np.float64:
            field = t.double_data
        elif dt == np.int64:
            field = t.int64_data
        elif dt in (np.uint32, np.uint64):
            field = t.uint64_data
        else:  # int32, int16, int8, uint16, uint8, bool, float16 (its bits)
            field = t.int32_data
        if len(field) != n:
            raise FormatError(
                "%s: tensor %r holds %d values, its shape %s needs %d" % (self.what, name, len(field), list(t.dims), n)
            )
        if dt == np.float16:
            return np.asarray(field, np.uint16).view(np.float16)
        return np.asarray(field, dtype=dt)

    def _external(self, t, name, nbytes):
        info = {text(e.key): text(e.value) for e in t.external_data}
        unknown = set(info) - {"location", "offset", "length", "checksum"}
        if unknown:
            raise FormatError("%s: tensor %r: unknown external data keys %s" % (self.what, name, sorted(unknown)))
        if self.base_dir is None:
            raise FormatError(
                "%s: tensor %r is stored in an external file (%r): load the model from its file "
                "(rnnfast.load(path)) so the weights can be read beside it" % (self.what, name, info.get("location"))
            )
        loc = info.get("location", "")
        path = self._inside(loc, name)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else nbytes
        except ValueError:
            raise FormatError("%s: tensor %r: unreadable external offset / length" % (self.what, name)) from None
        if length != nbytes:
            raise FormatError(
                "%s: tensor %r needs %d bytes, its external data says %d" % (self.what, name, nbytes, length)
            )
        size = os.path.getsize(path)
        if offset < 0 or offset + length > size:
            raise FormatError(
                "%s: tensor %r: bytes [%d, %d) of %r lie outside the file (%d bytes)"
                % (self.what, name, offset, offset + length, loc, size)
            )
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read(length)
        if len(raw) != length:
            raise FormatError("%s: tensor %r: %r ended early" % (self.what, name, loc))
        self.bytes_read += length
        return raw

    def _inside(self, loc, name):
        """The real path of external file ``loc``, which must be inside the model's folder."""
        bad = (
            not loc
            or "\x00" in loc
            or "/" in loc
            or "\\" in loc
            or loc in (".", "..")
            or os.path.isabs(loc)
            or (len(loc) > 1 and loc[1] == ":")
        )
        if bad:
            raise FormatError(
                "%s: tensor %r: external data location %r is not a file name in the model's own folder"
                % (self.what, name, loc)
            )
        assert self.base_dir is not None  # refused above without a folder
        full = os.path.realpath(os.path.join(self.base_dir, loc))
        if os.path.dirname(full) != self.base_dir:
            raise FormatError(
                "%s: tensor %r: external data %r leads out of the model's folder (a symlink)" % (self.what, name, loc)
            )
        if not os.path.isfile(full):
            raise FormatError("%s: tensor %r: external data file %r is missing or not a file" % (self.what, name, loc))
        return full


# AttributeProto.AttributeType
_FLOAT, _INT, _STRING, _TENSOR, _GRAPH, _FLOATS, _INTS, _STRINGS = 1, 2, 3, 4, 5, 6, 7, 8


def attribute_value(a, read_tensor, op_type, node):
    """An attribute as a plain value (float, int, str, ndarray, or a list of them);
    other kinds as an ``_Unreadable`` (holding the GraphProto of a graph attribute)."""
    t = int(a.type)
    if a.ref_attr_name:
        raise FormatError("node %r: attribute %r refers to a function's attribute" % (node, text(a.name)))
    if t == _FLOAT:
        return float(a.f)
    if t == _INT:
        return int(a.i)
    if t == _STRING:
        return text(a.s) if isinstance(a.s, str) else a.s.decode("utf-8", "replace")
    if t == _TENSOR:
        return read_tensor(a.t, "%s.%s" % (node, text(a.name)))
    if t == _FLOATS:
        return [float(v) for v in a.floats]
    if t == _INTS:
        return [int(v) for v in a.ints]
    if t == _STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    return _Unreadable(t, a.g if t == _GRAPH else None)


class _Unreadable:
    """An attribute of a kind rnnfast does not take as a plain value (a graph, a sparse
    tensor ...); a graph is kept (``graph``) for the ops whose spec takes it (Loop, Scan)."""

    def __init__(self, kind, graph=None):
        self.kind = kind
        self.graph = graph

    def __repr__(self):
        names = {5: "a graph", 9: "tensors", 10: "graphs", 11: "a sparse tensor", 12: "sparse tensors"}
        return names.get(self.kind, "an attribute of type %d" % self.kind)
