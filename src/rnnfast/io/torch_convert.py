"""The one converter for PyTorch recurrent weights -> canonical CellWeights (numpy only).

PyTorch stores, per layer k and direction (suffix ``_reverse`` for backward):
``weight_ih_l{k}`` (G*H, I), ``weight_hh_l{k}`` (G*H, Ho), ``bias_ih_l{k}`` (G*H,),
``bias_hh_l{k}`` (G*H,), and for an LSTM with ``proj_size`` ``weight_hr_l{k}`` (P, H).
Gate order: GRU r, z, n; LSTM i, f, g, o; RNN one gate. Canonical (Keras) order:
GRU z, r, h; LSTM i, f, c, o (the same as PyTorch's). Kernels are transposed to
(I, G*H) / (Ho, G*H); the projection to (H, P).

It also holds the table of PyTorch element types (:data:`DTYPES`) that both file
readers (``torch_pickle``, ``safetensors``) use to size and decode raw tensor bytes.
"""
import numpy as np

from ..layers import CellWeights

__all__ = ["GATES", "cell_weights_from_torch", "DTYPES", "FLOAT_DTYPES", "bfloat16_to_float32",
           "numpy_dtype", "to_native", "torch_mode", "cell_weights_to_torch", "to_torch_state_dict",
           "to_torch_module"]

#: gates per PyTorch mode
GATES = {"GRU": 3, "LSTM": 4, "RNN_TANH": 1, "RNN_RELU": 1}


def _reorder(a, mode, axis):
    """PyTorch gate order -> canonical along ``axis`` (only GRU differs: r,z,n -> z,r,n)."""
    if mode != "GRU":
        return a
    r, z, n = np.split(a, 3, axis=axis)
    return np.concatenate([z, r, n], axis=axis)


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
    w_ih = np.asarray(weight_ih)
    w_hh = np.asarray(weight_hh)
    return CellWeights(
        kernel=_reorder(w_ih, mode, 0).T,
        recurrent_kernel=_reorder(w_hh, mode, 0).T,
        bias=None if bias_ih is None else _reorder(np.asarray(bias_ih), mode, 0),
        recurrent_bias=None if bias_hh is None else _reorder(np.asarray(bias_hh), mode, 0),
        projection=None if weight_hr is None else np.asarray(weight_hr).T,
    )


# -- canonical -> PyTorch (the inverse) ------------------------------------------------


def torch_mode(layer):
    """The PyTorch mode (``RNNBase.mode``) of the module that computes what the
    :class:`~rnnfast.layers.RNNLayer` ``layer`` computes: "GRU" (reset-after, tanh /
    sigmoid), "LSTM" (tanh / sigmoid), "RNN_TANH" or "RNN_RELU". Raises ValueError for a
    layer no PyTorch module has (GRU reset-before, other activations, ``go_backwards``)."""
    acts = (layer.activation, layer.recurrent_activation)
    if not layer.go_backwards:
        if layer.cell == "gru" and layer.reset_after and acts == ("tanh", "sigmoid"):
            return "GRU"
        if layer.cell == "lstm" and acts == ("tanh", "sigmoid"):
            return "LSTM"
        if layer.cell == "simple" and layer.activation in ("tanh", "relu"):
            return "RNN_TANH" if layer.activation == "tanh" else "RNN_RELU"
    raise ValueError("%r is not a layer PyTorch has" % (layer,))


def cell_weights_to_torch(mode, weights):
    """The inverse of :func:`cell_weights_from_torch`: one direction's
    :class:`CellWeights` as PyTorch's tensors (numpy arrays, C-contiguous).

    Returns
    -------
    dict
        ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, Ho), ``bias_ih`` / ``bias_hh`` (G*H,)
        or None, ``weight_hr`` (P, H) or None. A missing ``recurrent_bias`` next to a
        ``bias`` becomes zeros (PyTorch holds both or neither).
    """
    def c(a):
        return None if a is None else np.ascontiguousarray(a)

    b, rb = weights.bias, weights.recurrent_bias
    if b is None and rb is not None:
        b = np.zeros_like(np.asarray(rb))
    if rb is None and b is not None:
        rb = np.zeros_like(np.asarray(b))
    return {
        "weight_ih": c(_reorder(np.asarray(weights.kernel).T, mode, 0)),
        "weight_hh": c(_reorder(np.asarray(weights.recurrent_kernel).T, mode, 0)),
        "bias_ih": None if b is None else c(_reorder(np.asarray(b), mode, 0)),
        "bias_hh": None if rb is None else c(_reorder(np.asarray(rb), mode, 0)),
        "weight_hr": None if weights.projection is None else c(np.asarray(weights.projection).T),
    }


def _layers_of(model):
    """(layers, batch_first, bias) of a TorchRNN, an RNNLayer or a list of RNNLayer."""
    if hasattr(model, "layers") and hasattr(model, "batch_first"):          # a TorchRNN
        return list(model.layers), model.batch_first, model.bias
    if hasattr(model, "cell_weights"):                                      # one RNNLayer
        return [model], None, None
    return list(model), None, None


def to_torch_state_dict(model, *, bias=None):
    """The ``state_dict`` (numpy arrays under PyTorch's names) of the ``nn.GRU`` /
    ``nn.LSTM`` / ``nn.RNN`` that computes what ``model`` computes.

    Parameters
    ----------
    model : TorchRNN, RNNLayer or list of RNNLayer
        One layer per module layer (as :class:`~rnnfast.TorchRNN` holds them).
    bias : bool, optional
        Whether the module has biases; default: a TorchRNN's ``bias``, else True. The
        biases are the layers' as they hold them (:meth:`RNNLayer.cell_weights`): the
        sum of both where they add in ``bias_ih``, ``bias_hh`` zeros but for GRU's
        candidate part, the same function up to rounding. ``bias=False`` on layers
        whose biases are not all zero is a ValueError.

    Returns
    -------
    (mode, dict)
        The PyTorch mode (:func:`torch_mode`) and ``{name: ndarray}`` in the layers'
        dtype, loadable with ``module.load_state_dict`` after ``torch.from_numpy``.
    """
    layers, _, model_bias = _layers_of(model)
    if not layers:
        raise ValueError("no layers")
    if bias is None:
        bias = True if model_bias is None else bool(model_bias)
    mode = torch_mode(layers[0])
    sd = {}
    for k, layer in enumerate(layers):
        if torch_mode(layer) != mode:
            raise ValueError("layer %d (%r) is not a %s layer as layer 0 is" % (k, layer, mode))
        for d, w in enumerate(layer.cell_weights()):
            sfx = "_l%d%s" % (k, "_reverse" if d else "")
            t = cell_weights_to_torch(mode, w)
            for name in ("weight_ih", "weight_hh", "weight_hr"):
                if t[name] is not None:
                    sd[name + sfx] = t[name]
            for name in ("bias_ih", "bias_hh"):
                if bias:
                    sd[name + sfx] = t[name] if t[name] is not None else np.zeros(t["weight_ih"].shape[0],
                                                                                  layer.dtype)
                elif t[name] is not None and np.any(t[name]):
                    raise ValueError("layer %d has biases: a module with bias=False cannot hold them" % k)
    return mode, sd


def to_torch_module(model, *, batch_first=None, bias=None):
    """The ``torch.nn.GRU`` / ``LSTM`` / ``RNN`` (eval mode, the layers' dtype) that
    computes what ``model`` computes: the inverse of :func:`rnnfast.from_torch`.

    Parameters
    ----------
    model : TorchRNN, RNNLayer or list of RNNLayer
    batch_first : bool, optional
        Default: a TorchRNN's ``batch_first``, else False (time-major).
    bias : bool, optional
        See :func:`to_torch_state_dict`.

    Needs PyTorch (imported here, nowhere else in rnnfast's loading path).
    """
    import torch

    layers, model_batch_first, _ = _layers_of(model)
    mode, sd = to_torch_state_dict(model, bias=bias)
    if batch_first is None:
        batch_first = bool(model_batch_first)
    first = layers[0]
    kw = dict(num_layers=len(layers), bias=any(k.startswith("bias_") for k in sd), batch_first=batch_first,
              bidirectional=first.num_directions == 2)
    nn = torch.nn
    if mode == "GRU":
        m = nn.GRU(first.input_size, first.units, **kw)
    elif mode == "LSTM":
        m = nn.LSTM(first.input_size, first.units, proj_size=first.proj_size, **kw)
    else:
        m = nn.RNN(first.input_size, first.units, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kw)
    m = m.to(torch.float64 if first.dtype == np.float64 else torch.float32)
    m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=first.dtype)) for k, v in sd.items()})
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
