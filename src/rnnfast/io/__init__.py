"""Loaders: one module per source format, each turning a file or a live object into
canonical layers (rnnfast.layers). ``load`` detects the format from the content."""
import os

from ..errors import FormatError

__all__ = ["load", "from_keras", "from_torch", "KerasModel", "TorchRNN", "sniff"]

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
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
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
