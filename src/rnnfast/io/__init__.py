"""Loaders: one module per source format, each turning a file or a live object into
canonical layers (rnnfast.layers). ``load`` detects the format from the content."""
import lzma
import os
import struct
import zipfile
import zlib

from ..errors import FormatError

__all__ = ["load", "from_keras", "from_torch", "KerasModel", "TorchRNN", "sniff", "ZIP_ERRORS", "check_zip_member"]

#: What ``zipfile`` raises on a damaged or hostile archive (an unknown format version
#: is a NotImplementedError, a short record a struct.error, a damaged deflate stream a
#: zlib.error, a damaged bzip2 one an OSError): every reader turns these
#: into :class:`~rnnfast.FormatError`.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError,
              struct.error, zlib.error, lzma.LZMAError)

#: A compressed zip member larger than SMALL_MEMBER may inflate at most this many
#: times its compressed size. torch.save and Keras store members uncompressed, and
#: weights hardly compress; deflate reaches ~1000:1 only on constant data, which is
#: what a zip bomb holds.
MAX_INFLATE_RATIO = 100
SMALL_MEMBER = 1 << 20


def check_zip_member(info, archive_size):
    """Refuse a zip member whose sizes are impossible in a file of ``archive_size``
    bytes, or bomb-like, before anything is read or allocated for it.

    ``zipfile`` never inflates a member past its declared ``file_size``, so bounding
    the declared size bounds what reading it allocates.
    """
    if info.compress_size > archive_size:
        raise FormatError("record %s claims %d bytes in a file of %d bytes"
                          % (info.filename, info.compress_size, archive_size))
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise FormatError("record %s: stored sizes disagree" % info.filename)
    elif info.file_size > max(SMALL_MEMBER, MAX_INFLATE_RATIO * info.compress_size):
        raise FormatError("record %s would inflate %d compressed bytes to %d (more than %d times: a zip "
                          "bomb?); torch.save and Keras store records uncompressed"
                          % (info.filename, info.compress_size, info.file_size, MAX_INFLATE_RATIO))

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path):
    """Name the format of the file at ``path`` from its first bytes:
    ``"zip"``, ``"hdf5"``, ``"safetensors"``, ``"torch-legacy"`` (a bare pickle), or raise
    :class:`~rnnfast.FormatError`."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise FormatError("%s is a directory, not a model file" % path) from None
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-legacy"
    raise FormatError("%s is not a model file rnnfast knows (first bytes %r): expected a Keras "
                      ".keras or HDF5 file, a PyTorch state_dict or a .safetensors file"
                      % (path, head[:8]))


def load(path, **options):
    """Load a model file; the format is detected from its content, not its name.

    Returns a :class:`KerasModel` for Keras ``.keras`` / HDF5 files, a
    :class:`TorchRNN` for PyTorch state_dicts (``.pt``) and ``.safetensors``.
    See API.md for the options.
    """
    path = os.fspath(path)
    kind = sniff(path)
    if kind == "hdf5":
        from .keras_file import load_keras_file

        return load_keras_file(path, **options)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except ZIP_ERRORS as e:
            raise FormatError("%s: corrupt zip archive (%s)" % (path, e)) from None
        if "config.json" in names:
            from .keras_file import load_keras_file

            return load_keras_file(path, **options)
        if any(n.endswith("data.pkl") for n in names):
            from .torch_file import load_torch_file

            return load_torch_file(path, **options)
        raise FormatError("%s: a zip archive that is neither a Keras .keras file (no config.json) "
                          "nor a PyTorch file (no data.pkl)" % path)
    from .torch_file import load_torch_file

    return load_torch_file(path, **options)


def from_keras(model, **options):
    """Convert a live ``keras.Model`` / ``Sequential`` (see :func:`load`)."""
    from .keras_file import from_keras as _fk

    return _fk(model, **options)


def from_torch(module, **options):
    """Convert a live ``torch.nn.GRU`` / ``LSTM`` / ``RNN``."""
    from .torch_file import from_torch as _ft

    return _ft(module, **options)


def __getattr__(name):
    if name == "KerasModel":
        from ..model_keras import KerasModel

        return KerasModel
    if name == "TorchRNN":
        from ..model_torch import TorchRNN

        return TorchRNN
    raise AttributeError(name)
