"""The one converter for PyTorch recurrent weights -> canonical CellWeights (numpy only).

PyTorch stores, per layer k and direction (suffix ``_reverse`` for backward):
``weight_ih_l{k}`` (G*H, I), ``weight_hh_l{k}`` (G*H, Ho), ``bias_ih_l{k}`` (G*H,),
``bias_hh_l{k}`` (G*H,), and for an LSTM with ``proj_size`` ``weight_hr_l{k}`` (P, H).
Gate order: GRU r, z, n; LSTM i, f, g, o; RNN one gate. Canonical (Keras) order:
GRU z, r, h; LSTM i, f, c, o (the same as PyTorch's): each cell's ``torch_order`` in
the cell registry (:mod:`rnnfast.cells`). Kernels are transposed to (I, G*H) /
(Ho, G*H); the projection to (H, P). :func:`torch_state_dict` is the way back.

It also holds the table of PyTorch element types (:data:`DTYPES`) that both file
readers (``torch_pickle``, ``safetensors``) use to size and decode raw tensor bytes.
"""
import numpy as np

from .. import cells
from ..layers import CellWeights

__all__ = ["GATES", "cell_weights_from_torch", "torch_state_dict", "torch_mode", "to_torch_module", "DTYPES",
           "FLOAT_DTYPES", "bfloat16_to_float32", "numpy_dtype", "to_native"]

#: gates per PyTorch mode (``torch.nn.RNNBase.mode``), from the cell registry
GATES = {mode: c.num_gates for c in cells.CELLS.values() for mode in c.torch_modes}


def _cell(mode):
    cell, _ = cells.by_torch_mode(mode)
    if cell is None:
        raise ValueError("unknown PyTorch RNN mode %r (known: %s)" % (mode, ", ".join(GATES)))
    return cell


def cell_weights_from_torch(mode, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None):
    """One direction of one layer of a PyTorch RNN module, as :class:`CellWeights`.

    Parameters
    ----------
    mode : {"GRU", "LSTM", "RNN_TANH", "RNN_RELU"}
    weight_ih : array (G*H, I)
    weight_hh : array (G*H, Ho)
    bias_ih, bias_hh : array (G*H,) or None
    weight_hr : array (P, H) or None
    """
    cell = _cell(mode)
    w_ih = np.asarray(weight_ih)
    w_hh = np.asarray(weight_hh)
    return CellWeights(
        kernel=cell.from_torch(w_ih, 0).T,
        recurrent_kernel=cell.from_torch(w_hh, 0).T,
        bias=None if bias_ih is None else cell.from_torch(np.asarray(bias_ih), 0),
        recurrent_bias=None if bias_hh is None else cell.from_torch(np.asarray(bias_hh), 0),
        projection=None if weight_hr is None else np.asarray(weight_hr).T,
    )


def torch_state_dict(layers, bias=True):
    """The canonical layers of a PyTorch-shaped stack back as that module's state_dict,
    numpy arrays in PyTorch's layout (the inverse of :func:`cell_weights_from_torch`).

    The biases come as the layers hold them (:meth:`~rnnfast.layers.RNNLayer.cell_weights`):
    ``bias_ih`` carries the sum of both biases where they add, ``bias_hh`` only the
    part a cell keeps apart (GRU's candidate ``b_hn``), zeros elsewhere: the same
    function, up to rounding.

    Parameters
    ----------
    layers : list of RNNLayer
        One per module layer (``TorchRNN.layers``), in the compute dtype.
    bias : bool
        Whether the module has biases (without, the layers' biases are zeros).

    Returns
    -------
    dict of str -> ndarray
        ``weight_ih_l{k}[_reverse]`` ..., as ``torch.nn.GRU/LSTM/RNN.state_dict()`` names them.
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = cells.TORCH_TENSORS
    sd = {}
    for k, layer in enumerate(layers):
        cell = layer.cell_spec
        for d, w in enumerate(layer.cell_weights()):
            sfx = "_l%d%s" % (k, "_reverse" if d else "")
            sd[w_ih + sfx] = cell.to_torch(w.kernel.T, 0)
            sd[w_hh + sfx] = cell.to_torch(w.recurrent_kernel.T, 0)
            if bias:
                sd[b_ih + sfx] = cell.to_torch(w.bias, 0)
                rb = w.recurrent_bias if w.recurrent_bias is not None else np.zeros_like(w.bias)
                sd[b_hh + sfx] = cell.to_torch(rb, 0)
            if w.projection is not None:
                sd[w_hr + sfx] = w.projection.T
    return {k: np.ascontiguousarray(v, dtype=layers[0].dtype) for k, v in sd.items()}


# -- canonical -> a live PyTorch module --------------------------------------------------


def torch_mode(layer):
    """The PyTorch mode (``RNNBase.mode``) of the module that computes what the
    :class:`~rnnfast.layers.RNNLayer` ``layer`` computes ("GRU", "LSTM", "RNN_TANH",
    "RNN_RELU"); ValueError for a layer no PyTorch module has (GRU reset-before, other
    activations, ``go_backwards``). The same rule as ``TorchRNN``'s."""
    cell = layer.cell_spec
    mode = None
    if not layer.go_backwards and not (cell.reset_before is not None and not layer.reset_after) and not (
            cell.recurrent_activation and layer.recurrent_activation != "sigmoid"):
        mode = next((m for m, act in cell.torch_modes.items() if act == layer.activation), None)
    if mode is None:
        raise ValueError("%r is not a layer PyTorch has" % (layer,))
    return mode


def to_torch_module(model, *, batch_first=None, bias=None):
    """The ``torch.nn.GRU`` / ``LSTM`` / ``RNN`` (eval mode, the layers' dtype) that
    computes what ``model`` computes: the inverse of :func:`rnnfast.from_torch`, its
    weights from :func:`torch_state_dict`.

    Parameters
    ----------
    model : TorchRNN, RNNLayer or list of RNNLayer
        One layer per module layer, all of one PyTorch mode (:func:`torch_mode`).
    batch_first : bool, optional
        Default: a TorchRNN's ``batch_first``, else False (time-major).
    bias : bool, optional
        Whether the module has biases. Default: a TorchRNN's ``bias``, else True.
        ``bias=False`` for layers whose biases are not all zero is a ValueError.

    Needs PyTorch (imported here, nowhere else in rnnfast's loading path).
    """
    import torch

    if hasattr(model, "layers") and hasattr(model, "batch_first"):  # a TorchRNN
        layers = list(model.layers)
        batch_first = model.batch_first if batch_first is None else batch_first
        bias = model.bias if bias is None else bias
    else:
        layers = [model] if hasattr(model, "cell_weights") else list(model)
    if not layers:
        raise ValueError("no layers")
    bias = True if bias is None else bool(bias)
    mode = torch_mode(layers[0])
    for k, layer in enumerate(layers):
        if torch_mode(layer) != mode:
            raise ValueError("layer %d (%r) is not a %s layer as layer 0 is" % (k, layer, mode))
    if not bias and any(np.any(w.bias) or (w.recurrent_bias is not None and np.any(w.recurrent_bias))
                        for layer in layers for w in layer.cell_weights()):
        raise ValueError("the layers have biases: a module with bias=False cannot hold them")
    first = layers[0]
    kw = dict(num_layers=len(layers), bias=bias, batch_first=bool(batch_first),
              bidirectional=first.num_directions == 2)
    if first.proj_size:
        kw["proj_size"] = first.proj_size
    if len(first.cell_spec.torch_modes) > 1:                       # nn.RNN: its nonlinearity
        kw["nonlinearity"] = first.activation
    cls = getattr(torch.nn, first.cell_spec.torch_module)
    m = cls(first.input_size, first.units, **kw).to(torch.float64 if first.dtype == np.float64 else torch.float32)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in torch_state_dict(layers, bias=bias).items()})
    return m.eval()


# -- PyTorch element types -> numpy ----------------------------------------------------

#: PyTorch element type name -> (bytes per element, numpy type code or None).
#: ``None``: rnnfast can size such tensors (to validate a file that holds them) but
#: not read their values. bfloat16 is read as its 16-bit pattern and widened exactly.
DTYPES = {
    "float64": (8, "f8"),
    "float32": (4, "f4"),
    "float16": (2, "f2"),
    "bfloat16": (2, "u2"),
    "int64": (8, "i8"),
    "int32": (4, "i4"),
    "int16": (2, "i2"),
    "int8": (1, "i1"),
    "uint8": (1, "u1"),
    "uint16": (2, "u2"),
    "uint32": (4, "u4"),
    "uint64": (8, "u8"),
    "bool": (1, "?"),
    "complex64": (8, "c8"),
    "complex128": (16, "c16"),
    "complex32": (4, None),
    "qint8": (1, None),
    "quint8": (1, None),
    "qint32": (4, None),
    "quint4x2": (1, None),
    "quint2x4": (1, None),
    "float8_e5m2": (1, None),
    "float8_e4m3fn": (1, None),
    "float8_e5m2fnuz": (1, None),
    "float8_e4m3fnuz": (1, None),
    "float8_e8m0fnu": (1, None),
    "bits8": (1, None),
    "bits16": (2, None),
    "bits1x8": (1, None),
    "bits2x4": (1, None),
    "bits4x2": (1, None),
}

#: Element types that hold real floating-point weights rnnfast can compute with.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")


def bfloat16_to_float32(bits):
    """Widen bfloat16 values, given as their uint16 bit patterns, to float32 (exactly).

    Parameters
    ----------
    bits : ndarray of uint16, any shape

    Returns
    -------
    ndarray of float32, same shape
    """
    bits = np.asarray(bits, dtype=np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def numpy_dtype(name, byteorder="little"):
    """The numpy dtype that reads raw PyTorch elements of type ``name`` stored in
    ``byteorder`` ("little" or "big"); bfloat16 reads as uint16 bit patterns.
    Raises KeyError for a type that has no numpy reading (see :data:`DTYPES`)."""
    code = DTYPES[name][1]
    if code is None:
        raise KeyError(name)
    return np.dtype(code).newbyteorder("<" if byteorder == "little" else ">")


def to_native(raw, name):
    """A native-order copy of ``raw`` (read with :func:`numpy_dtype`), bfloat16 widened
    to float32; float16 stays float16."""
    if name == "bfloat16":
        return bfloat16_to_float32(raw)
    return np.array(raw, dtype=raw.dtype.newbyteorder("="), order="C", copy=True)
