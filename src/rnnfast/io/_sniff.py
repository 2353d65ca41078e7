"""Which format a file is in, from its content (never its name)."""

from ..errors import FormatError
from ._foreign import name_foreign
from ._zip import zip_kind

__all__ = ["ZIP_MAGIC", "HDF5_MAGIC", "sniff", "detect", "FORMAT_NAMES"]

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: The formats :func:`detect` names, in words (what ``rnnfast info`` prints).
FORMAT_NAMES = {
    "keras-zip": "Keras .keras archive",
    "keras-hdf5": "Keras HDF5 file",
    "torch-zip": "PyTorch file (zip)",
    "torch-legacy": "PyTorch file (legacy format)",
    "safetensors": "safetensors file",
}


def sniff(path):
    """Name the format of the file at ``path`` from its first bytes:
    ``"zip"``, ``"hdf5"``, ``"safetensors"``, ``"torch-legacy"`` (a bare pickle), or raise
    :class:`~rnnfast.FormatError`."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
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
    what = name_foreign(path, head)  # ONNX, a TensorFlow SavedModel ...: named as what it is
    if what:
        if ":" not in what:  # a name without the way to a file rnnfast reads
            what += "; rnnfast reads Keras, PyTorch state_dict and safetensors files"
        raise FormatError("%s is %s" % (path, what))
    raise FormatError(
        "%s is not a model file rnnfast knows (first bytes %r): expected a Keras "
        ".keras or HDF5 file, a PyTorch state_dict or a .safetensors file" % (path, head[:8])
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
