"""Reduced precision for whole models: ``model.with_precision(p)``, the ``precision=``
keyword of the loaders, and :func:`precision_error`, the error of a reduced-precision
model against float32 on the user's own inputs.

A model in ``"bf16"`` or ``"int8"`` runs every recurrent layer's products on
reduced-precision weights (:mod:`rnnfast._quant` says how); gate math, states and
every other layer (dense heads, embeddings, convolutions, ...) stay float32.
``"float32"`` is the exact path and the default.
"""

import copy

import numpy as np

from ._quant import PRECISIONS, check_precision
from .layers import RNNLayer

__all__ = ["PRECISIONS", "with_precision", "precision_error", "recurrent_layers", "ReducedPrecision"]


def _walk(obj, seen, layers, frozen):
    """Collect the RNNLayers and the read-only arrays reachable from ``obj``."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, RNNLayer):
        layers.append(obj)
        return
    if isinstance(obj, np.ndarray):
        if not obj.flags.writeable:
            frozen.append(obj)
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _walk(v, seen, layers, frozen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _walk(v, seen, layers, frozen)
    elif not isinstance(obj, type) and type(obj).__module__.startswith("rnnfast"):
        if hasattr(obj, "__dict__"):
            _walk(vars(obj), seen, layers, frozen)
        for cls in type(obj).__mro__:  # graph steps keep their fields in slots
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    _walk(getattr(obj, name), seen, layers, frozen)


def recurrent_layers(model):
    """The :class:`~rnnfast.layers.RNNLayer` objects of a model (or of any of its parts),
    each once."""
    layers: list = []
    _walk(model, set(), layers, [])
    return layers


def with_precision(model, precision):
    """A new model computing like ``model`` with its recurrent layers' products in
    ``precision``: "float32" (exact), "bf16" or "int8". It shares nothing mutable with
    ``model`` (only read-only weights). ValueError for an unknown precision, or a
    reduced one on a float64 model."""
    p = check_precision(precision)
    layers: list = []
    frozen: list = []
    _walk(model, set(), layers, frozen)
    memo = {id(a): a for a in frozen}  # read-only arrays are shared, not copied
    memo.update({id(layer): layer.with_precision(p) for layer in layers})
    new = copy.deepcopy(model, memo)
    new._precision = p
    return new


class ReducedPrecision:
    """Gives a model class ``precision`` and ``with_precision()``."""

    _precision = "float32"

    @property
    def precision(self):
        """The precision of the recurrent layers' products: "float32", "bf16" or "int8"."""
        return self._precision

    def with_precision(self, precision):
        """This model with its recurrent layers' products in ``precision`` ("float32",
        "bf16" or "int8"): a new model sharing nothing mutable with this one. Gate math,
        states and the other layers stay float32. See :func:`rnnfast.precision_error`
        for what it costs in accuracy on your inputs."""
        return with_precision(self, precision)


def _arrays(y):
    """The output arrays of a model call, flattened in order."""
    if isinstance(y, (list, tuple)):
        return [a for v in y for a in _arrays(v)]
    if isinstance(y, dict):
        return [a for k in sorted(y) for a in _arrays(y[k])]
    return [np.asarray(y)]


def precision_error(model, x, precision="int8", **call_options):
    """The error of ``model`` in a reduced ``precision`` against float32, on the inputs
    ``x``.

    Parameters
    ----------
    model : KerasModel, TorchRNN or Sequential
        In any precision: float32 and ``precision`` versions are made from it.
    x : array_like
        Inputs as the model takes them (``model(x, **call_options)``).
    precision : {"int8", "bf16", "float32"}
    **call_options
        Keywords of the model's call (``lengths=``, ``num_threads=``, ...).

    Returns
    -------
    dict
        ``precision``; ``max_abs`` and ``mean_abs``: the largest and the mean absolute
        difference over every output value; ``argmax_agreement``: the fraction of rows
        of the first output whose argmax over its last axis agrees (None when that axis
        has one value: not a classifier); ``outputs``: the arrays compared.
    """
    p = check_precision(precision)
    y0 = _arrays(model.with_precision("float32")(x, **call_options))
    y1 = _arrays(model.with_precision(p)(x, **call_options))
    diffs = [np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel() for a, b in zip(y0, y1)]
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    agree = None
    first0, first1 = y0[0], y1[0]
    if first0.ndim >= 1 and first0.shape[-1] > 1 and first0.size:
        agree = float(np.mean(first0.argmax(axis=-1) == first1.argmax(axis=-1)))
    return dict(
        precision=p,
        max_abs=float(d.max()) if d.size else 0.0,
        mean_abs=float(d.mean()) if d.size else 0.0,
        argmax_agreement=agree,
        outputs=len(y0),
    )
