"""rnnfast: fast CPU inference for recurrent networks trained in Keras or PyTorch.

Public names: :func:`load`, :func:`from_keras`, :func:`from_torch`,
:func:`from_onnx`, :func:`read_tensors`, the model classes :class:`KerasModel`,
:class:`TorchRNN`, :class:`TorchCell` and :class:`OnnxModel`, the thread settings
:func:`set_num_threads` / :func:`get_num_threads`, the bundled example files
:func:`example` / :func:`examples`, the errors :class:`FormatError`
and :class:`UnsupportedLayerError`, and the canonical layers in :mod:`rnnfast.layers`.
"""

from ._threads import get_num_threads, load_kernels, set_num_threads
from ._version import __version__
from .errors import FormatError, RnnfastError, UnsupportedLayerError

load_kernels()  # before anything imports the compiled core: see its docstring
from . import cells, layers  # noqa: E402
from .demo import example, examples  # noqa: E402
from .io import from_keras, from_onnx, from_torch, load, read_tensors  # noqa: E402
from .model import Sequential  # noqa: E402
from .model_keras import KerasModel  # noqa: E402
from .model_onnx import OnnxModel  # noqa: E402
from .model_torch import TorchCell, TorchRNN  # noqa: E402
from .precision import PRECISIONS, precision_error  # noqa: E402

__all__ = [
    "__version__",
    "load",
    "from_keras",
    "from_torch",
    "from_onnx",
    "example",
    "examples",
    "KerasModel",
    "TorchRNN",
    "TorchCell",
    "OnnxModel",
    "read_tensors",
    "Sequential",
    "precision_error",
    "PRECISIONS",
    "layers",
    "cells",
    "set_num_threads",
    "get_num_threads",
    "FormatError",
    "UnsupportedLayerError",
    "RnnfastError",
]


def __getattr__(name):
    # rnnfast.dask and rnnfast.ray (adapters to Dask and Ray Data) load on first use:
    # `import rnnfast` never imports those engines
    if name in ("dask", "ray"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
