"""Loaders: one module per source format, each turning a file or a live object into a
model of canonical layers (:mod:`rnnfast.layers`). :func:`load` detects the format from
the content and dispatches; the format modules build the models.

Imports flow one way: this package -> the models (``model_keras``, ``model_torch``) ->
``layers`` -> the compiled core. Nothing below imports it back.
"""

import os
from typing import TYPE_CHECKING

from .. import _lazy
from .._quant import check_precision
from ..errors import UnsupportedLayerError
from ._sniff import FORMAT_NAMES, detect, sniff
from ._zip import ZIP_ERRORS, check_zip_member

if TYPE_CHECKING:
    from ..model_keras import KerasModel as KerasModel
    from ..model_torch import TorchCell as TorchCell
    from ..model_torch import TorchRNN as TorchRNN
    from .keras_file import from_keras as from_keras
    from .keras_file import load_keras_file as load_keras_file
    from .onnx import from_onnx as from_onnx
    from .onnx import load_onnx_file as load_onnx_file
    from .torch_export import from_torch as from_torch
    from .torch_file import load_torch_file as load_torch_file
    from .torch_file import read_tensors as read_tensors

# name -> the module that defines it: a format's loader (and what it imports: h5py, the
# models' code) is imported the first time a file of that format is loaded, or the name used
_LAZY = {
    "from_keras": ".keras_file",
    "load_keras_file": ".keras_file",
    "from_onnx": ".onnx",
    "load_onnx_file": ".onnx",
    "from_torch": ".torch_export",
    "load_torch_file": ".torch_file",
    "read_tensors": ".torch_file",
    "KerasModel": "..model_keras",
    "TorchRNN": "..model_torch",
    "TorchCell": "..model_torch",
}


if not TYPE_CHECKING:

    def __getattr__(name):
        return _lazy.attribute(__name__, _LAZY, name)


def __dir__():
    return _lazy.names(__name__, _LAZY)


__all__ = [
    "load",
    "from_keras",
    "from_torch",
    "from_onnx",
    "KerasModel",
    "TorchRNN",
    "TorchCell",
    "read_tensors",
    "sniff",
    "detect",
    "ZIP_ERRORS",
    "check_zip_member",
]


def load(path, **options):
    """Load a model file; the format is detected from its content, not its name.

    Parameters
    ----------
    path : str or os.PathLike
        A Keras ``.keras`` archive or whole-model HDF5 file, a PyTorch state_dict
        (``torch.save``, zip or legacy format; a checkpoint holding one), a
        ``.safetensors`` file of one, or an ONNX model (takes no options).
    **options
        Keras files: ``dtype``. PyTorch files: ``prefix``, ``nonlinearity``,
        ``batch_first``, ``dtype``. Each is a keyword of the format's loader:
        :func:`rnnfast.io.keras_file.load_keras_file` and
        :func:`rnnfast.io.torch_file.load_torch_file` document them. In short:
        ``dtype`` ("float32" or "float64"; default the model's), ``batch_first``
        (default False, PyTorch's: a state_dict cannot record it), ``nonlinearity``
        ("tanh" or "relu" for an ``nn.RNN``; default "tanh"), ``prefix`` (the module
        whose tensor names start with it, in a checkpoint holding several).
        Every format: ``precision`` ("float32", the default and exact; "bf16" or
        "int8": the recurrent layers' products on reduced-precision weights, see
        :meth:`rnnfast.KerasModel.with_precision`).

    Returns
    -------
    KerasModel, TorchRNN or OnnxModel
        A :class:`KerasModel` for Keras files, a :class:`TorchRNN` for PyTorch
        state_dicts and ``.safetensors``, an :class:`~rnnfast.OnnxModel` for ONNX
        models (``.onnx``; external weights beside it are read from its folder only).

    Raises
    ------
    rnnfast.FormatError
        Not a model file rnnfast can read.
    rnnfast.UnsupportedLayerError
        A model using a layer or an option rnnfast cannot run.
    """
    precision = check_precision(options.pop("precision", "float32"))
    path = os.fspath(path)
    kind = detect(path)
    if kind.startswith("keras"):  # the format's loader is imported now, the first time
        from .keras_file import load_keras_file

        model = load_keras_file(path, **options)
    elif kind == "onnx":
        from .onnx import load_onnx_file

        model = load_onnx_file(path, **options)
    else:
        from .torch_file import load_torch_file

        model = load_torch_file(path, **options)
    model.source_format = FORMAT_NAMES[kind]
    if precision == "float32":
        return model
    if not hasattr(model, "with_precision"):
        raise UnsupportedLayerError(
            type(model).__name__,
            "precision",
            "%r: reduced precision is not yet implemented for this format" % precision,
        )
    return model.with_precision(precision)
