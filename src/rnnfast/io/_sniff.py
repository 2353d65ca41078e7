"""Which format a file is in, from its content (never its name)."""

from ..errors import FormatError
from ._foreign import name_foreign
from ._zip import zip_kind

__all__ = ["ZIP_MAGIC", "HDF5_MAGIC", "sniff", "detect", "FORMAT_NAMES", "looks_like_onnx"]

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: The formats :func:`detect` names, in words (what ``rnnfast info`` prints).
FORMAT_NAMES = {
    "keras-zip": "Keras .keras archive",
    "keras-hdf5": "Keras HDF5 file",
    "torch-zip": "PyTorch file (zip)",
    "torch-legacy": "PyTorch file (legacy format)",
    "safetensors": "safetensors file",
    "onnx": "ONNX model",
}

# ModelProto's fields (number -> protobuf wire type): ir_version 1, producer_name 2,
# producer_version 3, domain 4, model_version 5, doc_string 6, graph 7, opset_import 8,
# metadata_props 14, training_info 20, functions 25, configuration 26
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _varint(b, i):
    v, shift = 0, 0
    while i < len(b) and shift < 64:
        c = b[i]
        v |= (c & 0x7F) << shift
        i += 1
        if not c & 0x80:
            return v, i
        shift += 7
    return None, i


def looks_like_onnx(head, size):
    """Whether the first bytes ``head`` of a ``size``-byte file read as a serialized
    ONNX ModelProto: known fields with their wire types, starting with ``ir_version``
    (the first field every writer emits), lengths inside the file."""
    if not head or head[0] != 0x08:
        return False
    i, fields = 0, 0
    while i < len(head):
        tag, j = _varint(head, i)
        if tag is None:
            break
        num, wire = tag >> 3, tag & 7
        if _ONNX_FIELDS.get(num) != wire:
            return False
        if wire == 0:
            v, j = _varint(head, j)
            if v is None:
                break
            if num == 1 and not 1 <= v <= 100:
                return False
        else:
            n, j = _varint(head, j)
            if n is None:
                break
            if j + n > size:
                return False
            j += n
        fields += 1
        i = j
    return fields >= 2 or (fields == 1 and size <= len(head))


def sniff(path):
    """Name the format of the file at ``path`` from its first bytes:
    ``"zip"``, ``"hdf5"``, ``"safetensors"``, ``"torch-legacy"`` (a bare pickle),
    ``"onnx"`` (a serialized ModelProto), or raise
    :class:`~rnnfast.FormatError`."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = f.seek(0, 2)
    except IsADirectoryError:
        what = name_foreign(path)  # a TensorFlow SavedModel, say: named as what it is
        raise FormatError("%s is %s" % (path, what or "a directory, not a model file")) from None
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy"
    if looks_like_onnx(head, size):
        return "onnx"
    what = name_foreign(path, head)  # a TensorFlow SavedModel ...: named as what it is
    if what:
        raise FormatError("%s is %s" % (path, what))
    raise FormatError(
        "%s is not a model file rnnfast knows (first bytes %r): expected a Keras "
        ".keras or HDF5 file, a PyTorch state_dict, a .safetensors file or an ONNX model" % (path, head[:8])
    )


def detect(path):
    """The format of the model file at ``path``, a key of :data:`FORMAT_NAMES`: what
    :func:`sniff` says, with a zip archive looked inside (:func:`~rnnfast.io._zip.zip_kind`).

    Raises
    ------
    FormatError
        Not a model file rnnfast knows, or a zip archive that is damaged or neither a
        Keras nor a PyTorch one.
    OSError
        The file cannot be read.
    """
    kind = sniff(path)
    if kind == "hdf5":
        return "keras-hdf5"
    if kind != "zip":
        return kind
    inside = zip_kind(path)
    if inside is None:
        what = name_foreign(path)  # a torch.export program, say
        if what:
            raise FormatError("%s is %s" % (path, what))
        raise FormatError(
            "%s: a zip archive that is neither a Keras .keras file (no config.json) "
            "nor a PyTorch file (no data.pkl)" % path
        )
    return inside + "-zip"
