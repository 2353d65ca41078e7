"""Loaders: one module per source format, each turning a file or a live object into a
model of canonical layers (:mod:`rnnfast.layers`). :func:`load` detects the format from
the content and dispatches; the format modules build the models.

Imports flow one way: this package -> the models (``model_keras``, ``model_torch``) ->
``layers`` -> the compiled core. Nothing below imports it back.
"""

import os

from .._quant import check_precision
from ..errors import UnsupportedLayerError
from ..model_keras import KerasModel
from ..model_torch import TorchCell, TorchRNN
from ._sniff import FORMAT_NAMES, detect, sniff
from ._zip import ZIP_ERRORS, check_zip_member
from .keras_file import from_keras, load_keras_file
from .onnx import from_onnx, load_onnx_file
from .torch_export import from_torch
from .torch_file import load_torch_file, read_tensors

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
    if kind.startswith("keras"):
        model = load_keras_file(path, **options)
    elif kind == "onnx":
        model = load_onnx_file(path, **options)
    else:
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
