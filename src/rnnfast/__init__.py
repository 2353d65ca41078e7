"""rnnfast: fast CPU inference for recurrent networks trained in Keras or PyTorch.

Public names: :func:`load`, :func:`from_keras`, :func:`from_torch`,
:func:`from_onnx`, :func:`read_tensors`, the model classes :class:`KerasModel`,
:class:`TorchRNN`, :class:`TorchCell` and :class:`OnnxModel`, the thread settings
:func:`set_num_threads` / :func:`get_num_threads`, the bundled example files
:func:`example` / :func:`examples`, the errors :class:`FormatError`
and :class:`UnsupportedLayerError`, and the canonical layers in :mod:`rnnfast.layers`.

``import rnnfast`` loads only the compiled core, the thread settings and the errors; every
other name is imported the first time it is used (PEP 562 ``__getattr__``), and
``rnnfast.load`` imports only the loader of the format it finds in the file. Every name is
there as before: ``from rnnfast import KerasModel``, ``rnnfast.layers``, ``dir(rnnfast)``.
"""

from typing import TYPE_CHECKING

from . import _lazy
from ._threads import get_num_threads, load_kernels, set_num_threads
from ._version import __version__
from .errors import FormatError, RnnfastError, UnsupportedLayerError

load_kernels()  # before anything imports the compiled core: see its docstring

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from typing import Any

    from . import cells, layers
    from . import dask as dask
    from . import ray as ray
    from .demo import example, examples
    from .io import from_keras, from_onnx, from_torch, load, read_tensors
    from .model import Sequential
    from .model_keras import KerasModel
    from .model_onnx import OnnxModel
    from .model_torch import TorchCell, TorchRNN
    from .precision import PRECISIONS, precision_error

    _kernels: Any  # the compiled core (load_kernels imported it; no type stubs)
    _stream: Any  # the compiled stream bookkeeping (no type stubs)
    _rowops: Any  # the compiled row ops of ONNX graphs (no type stubs)

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

# name -> the submodule that defines it; imported on first use
_LAZY = {
    "load": ".io",
    "from_keras": ".io",
    "from_torch": ".io",
    "from_onnx": ".io",
    "read_tensors": ".io",
    "example": ".demo",
    "examples": ".demo",
    "KerasModel": ".model_keras",
    "TorchRNN": ".model_torch",
    "TorchCell": ".model_torch",
    "OnnxModel": ".model_onnx",
    "Sequential": ".model",
    "precision_error": ".precision",
    "PRECISIONS": ".precision",
}


if not TYPE_CHECKING:  # (type checkers see the imports above; a name missing from them is an error)

    def __getattr__(name):
        # the public names of heavier modules (_LAZY), and every submodule (rnnfast.layers,
        # rnnfast.io, rnnfast.dask, rnnfast.ray...: Dask and Ray are imported only then)
        return _lazy.attribute(__name__, _LAZY, name)


def __dir__():
    # rnnfast.dask and rnnfast.ray (and rnnfast.dask's _dask_workers): listed once used
    # (they need Dask, Ray, distributed)
    return _lazy.names(__name__, _LAZY, optional=("dask", "ray", "_dask_workers"))
