"""Write pickles and ``torch.save`` files by hand, without PyTorch.

The fuzzer needs files that differ from a valid ``torch.save`` file in one chosen
field (a shape, a stride, a storage size, a global), including values PyTorch would
never write (a float shape, a negative size, ``os.system``). ``pickle.Pickler`` cannot
name a global it cannot import, so this module emits the opcodes itself: a value tree
of plain Python objects plus the markers :class:`Global`, :class:`Reduce`,
:class:`PersId`, :class:`Build` and :class:`Raw` becomes a pickle (protocol 2, as
``torch.save`` writes).

:class:`TorchDoc` is a state_dict in that form (tensors as :class:`Tensor` fields and
storages as raw bytes) with writers for both ``torch.save`` layouts.
"""

import io
import struct
import zipfile

__all__ = [
    "Global",
    "Reduce",
    "PersId",
    "Build",
    "Raw",
    "ODict",
    "dumps",
    "Tensor",
    "TorchDoc",
    "LEGACY_MAGIC",
    "STORAGE_TYPES",
]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
#: element type -> (torch storage class name, bytes per element)
STORAGE_TYPES = {
    "float32": ("FloatStorage", 4),
    "float64": ("DoubleStorage", 8),
    "float16": ("HalfStorage", 2),
    "bfloat16": ("BFloat16Storage", 2),
    "int64": ("LongStorage", 8),
    "uint8": ("ByteStorage", 1),
}


class Global:
    """``module.name`` as a GLOBAL opcode."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Reduce:
    """``func(*args)`` as a REDUCE opcode (``func`` usually a :class:`Global`)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args


class PersId:
    """A persistent id (BINPERSID) whose value is ``pid``."""

    def __init__(self, pid):
        self.pid = pid


class Build:
    """``obj`` followed by ``state`` and a BUILD opcode (``__setstate__``)."""

    def __init__(self, obj, state):
        self.obj, self.state = obj, state


class Raw:
    """Opcodes inserted as they are (for INST, OBJ, EXT and other rarely written ones)."""

    def __init__(self, data):
        self.data = data


def _emit(out, v):
    w = out.write
    if isinstance(v, Raw):
        w(v.data)
    elif v is None:
        w(b"N")
    elif v is True or v is False:
        w(b"\x88" if v else b"\x89")
    elif isinstance(v, int):
        if 0 <= v < 256:
            w(b"K" + bytes([v]))
        elif -(1 << 31) <= v < (1 << 31):
            w(b"J" + struct.pack("<i", v))
        else:
            n = (v.bit_length() + 8) // 8
            raw = v.to_bytes(n, "little", signed=True)
            w((b"\x8a" + bytes([n]) if n < 256 else b"\x8b" + struct.pack("<i", n)) + raw)
    elif isinstance(v, float):
        w(b"G" + struct.pack(">d", v))
    elif isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        w(b"X" + struct.pack("<I", len(b)) + b)
    elif isinstance(v, (bytes, bytearray)):
        w(b"B" + struct.pack("<I", len(v)) + bytes(v))  # BINBYTES (protocol 3)
    elif isinstance(v, tuple):
        if not v:
            w(b")")
        else:
            w(b"(")
            for x in v:
                _emit(out, x)
            w(b"t")
    elif isinstance(v, list):
        w(b"]")
        if v:
            w(b"(")
            for x in v:
                _emit(out, x)
            w(b"e")
    elif isinstance(v, dict):
        w(b"}")
        if v:
            w(b"(")
            for k, x in v.items():
                _emit(out, k)
                _emit(out, x)
            w(b"u")
    elif isinstance(v, Global):
        w(b"c" + v.module.encode() + b"\n" + v.name.encode() + b"\n")
    elif isinstance(v, Reduce):
        _emit(out, v.func)
        _emit(out, tuple(v.args))
        w(b"R")
    elif isinstance(v, PersId):
        _emit(out, v.pid)
        w(b"Q")
    elif isinstance(v, Build):
        _emit(out, v.obj)
        _emit(out, v.state)
        w(b"b")
    elif isinstance(v, ODict):
        _emit(out, Global("collections", "OrderedDict"))
        w(b")R")
        if v.items:
            w(b"(")
            for k, x in v.items:
                _emit(out, k)
                _emit(out, x)
            w(b"u")
        if v.state is not None:
            _emit(out, v.state)
            w(b"b")
    elif isinstance(v, Tensor):
        _emit(out, v.as_pickle_value())
    else:
        raise TypeError("cannot emit %r" % type(v).__name__)


def dumps(value, protocol=2):
    """The pickle of ``value`` (see the module docstring for what it may hold)."""
    out = io.BytesIO()
    out.write(b"\x80" + bytes([protocol]))
    _emit(out, value)
    out.write(b".")
    return out.getvalue()


class ODict:
    """``collections.OrderedDict`` as torch pickles a state_dict: ``OrderedDict()``,
    SETITEMS, and a BUILD of ``state`` (``{"_metadata": ...}``) when given."""

    def __init__(self, items, state=None):
        self.items, self.state = list(items), state


def ordered_dict(items, state=None):
    return ODict(items, state)


class Tensor:
    """A tensor as ``torch._utils._rebuild_tensor_v2`` (or a chosen rebuild function)
    receives it. Every field may be set to any value, valid or not."""

    def __init__(
        self,
        key,
        storage_type,
        numel,
        offset,
        shape,
        stride,
        rebuild="_rebuild_tensor_v2",
        location="cpu",
        parameter=False,
    ):
        self.key, self.storage_type, self.numel = key, storage_type, numel
        self.offset, self.shape, self.stride = offset, shape, stride
        self.rebuild, self.location, self.parameter = rebuild, location, parameter
        self.legacy = False

    def storage_pid(self):
        typ = (
            self.storage_type if isinstance(self.storage_type, (Global, Reduce)) else Global("torch", self.storage_type)
        )
        pid = ("storage", typ, self.key, self.location, self.numel)
        return PersId(pid + (None,) if self.legacy else pid)

    def as_pickle_value(self):
        args = [self.storage_pid(), self.offset, self.shape, self.stride, False, ordered_dict([])]
        if self.rebuild == "_rebuild_tensor":
            args = args[:4]
        elif self.rebuild == "_rebuild_tensor_v3":
            args.insert(6, Global("torch", "float32"))
        t = Reduce(Global("torch._utils", self.rebuild), *args)
        if self.parameter:
            t = Reduce(Global("torch._utils", "_rebuild_parameter"), t, True, ordered_dict([]))
        return t


class TorchDoc:
    """A state_dict (or checkpoint) to be written as a ``torch.save`` file.

    Attributes
    ----------
    root : object
        The pickled object: containers with :class:`Tensor` leaves (an ordered dict
        is written as ``collections.OrderedDict``).
    storages : dict of str -> bytes
        The raw bytes of each storage, by key, in the order they are written.
    """

    def __init__(self, root, storages):
        self.root, self.storages = root, dict(storages)

    @classmethod
    def from_file(cls, path):
        """Read a valid ``torch.save`` file (zip or legacy) into a TorchDoc, with
        rnnfast's own reader (seeds are valid files)."""
        from rnnfast.io.torch_pickle import TensorRecord, open_torch_file

        storages = {}

        def convert(obj):
            if isinstance(obj, TensorRecord):
                st = obj.storage
                if st.key not in storages:
                    storages[st.key] = archive._storage_bytes(st)[: st.nbytes]
                return Tensor(
                    st.key, STORAGE_TYPES[st.dtype][0], st.numel, obj.offset, tuple(obj.shape), tuple(obj.stride)
                )
            if isinstance(obj, dict):
                return {k: convert(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [convert(v) for v in obj]
            if isinstance(obj, tuple):
                return tuple(convert(v) for v in obj)
            return obj

        with open_torch_file(str(path)) as archive:
            root = convert(archive.root)
        return cls(root, storages)

    def _value(self, legacy):
        def conv(v):
            if isinstance(v, Tensor):
                v.legacy = legacy
                return v
            if isinstance(v, dict):
                return ordered_dict([(k, conv(x)) for k, x in v.items()])
            if isinstance(v, list):
                return [conv(x) for x in v]
            if isinstance(v, tuple):
                return tuple(conv(x) for x in v)
            return v

        return conv(self.root)

    def zip_bytes(self, pkl=None, compress=False, byteorder=b"little"):
        """The zip layout (``torch.save`` >= 1.6): ``archive/data.pkl`` and friends."""
        buf = io.BytesIO()
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(buf, "w", method) as z:
            z.writestr("archive/data.pkl", dumps(self._value(False)) if pkl is None else pkl)
            if byteorder is not None:
                z.writestr("archive/byteorder", byteorder)
            for key, data in self.storages.items():
                z.writestr("archive/data/%s" % key, data)
            z.writestr("archive/version", b"3\n")
        return buf.getvalue()

    def legacy_bytes(self, pkl=None, keys=None, numels=None, replace=None):
        """The legacy layout: magic, protocol, system info, object and key pickles,
        then each storage as an int64 element count and its bytes. ``replace`` maps
        "magic", "protocol", "sys_info" or "keys" to the raw pickle written instead."""
        keys = list(self.storages) if keys is None else keys
        replace = replace or {}
        out = io.BytesIO()
        out.write(replace.get("magic") or dumps(LEGACY_MAGIC))
        out.write(replace.get("protocol") or dumps(LEGACY_PROTOCOL))
        out.write(
            replace.get("sys_info")
            or dumps(
                {
                    "protocol_version": LEGACY_PROTOCOL,
                    "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4},
                }
            )
        )
        out.write(dumps(self._value(True)) if pkl is None else pkl)
        out.write(replace.get("keys") or dumps(keys))
        for key, data in self.storages.items():
            itemsize = 4
            for v in _tensors(self.root):
                if v.key == key and isinstance(v.storage_type, str):
                    itemsize = dict(STORAGE_TYPES.values()).get(v.storage_type, 4)
            numel = (numels or {}).get(key, len(data) // itemsize)
            out.write(struct.pack("<Q", numel % (1 << 64)) + data)
        return out.getvalue()


def _tensors(v):
    if isinstance(v, Tensor):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _tensors(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _tensors(x)
