"""ONNX Runtime's ``com.microsoft`` ``DynamicQuantizeLSTM`` (what
``onnxruntime.quantization.quantize_dynamic`` writes for an ``LSTM``) to an
:class:`~rnnfast.layers.RNNLayer` in ``"int8"`` running the node's own int8 weights.

Inputs: ``X, W, R, B, sequence_lens, initial_h, initial_c, P`` as the ``LSTM`` op,
except that ``W`` (D, I, 4H) and ``R`` (D, H, 4H) are quantized and transposed (gate
order i, o, f, c along the columns), then ``W_scale, W_zero_point, R_scale,
R_zero_point``: one value per direction or one per column. rnnfast's int8 path
(:mod:`rnnfast._quant`) runs exactly these weights when they are symmetric: int8
values in [-127, 127], zero points 0 (``quantize_dynamic``'s ``weight_type=QInt8``,
per tensor or ``per_channel``); anything else (uint8 weights, a non-zero zero point,
-128) is refused naming it. The activations are quantized rnnfast's way (per row,
symmetric) where ONNX Runtime quantizes them per tensor with a zero point: the two
agree within the activations' quantization steps, not bitwise.
"""

import types

import numpy as np

from ...errors import FormatError, UnsupportedLayerError
from .recurrent import RECURRENT_ATTRS, convert_recurrent

__all__ = ["DQLSTM_ATTRS", "convert_dynamic_quantize_lstm"]

#: The attributes of DynamicQuantizeLSTM: the LSTM op's but ``layout``.
DQLSTM_ATTRS: dict = {k: v for k, v in RECURRENT_ATTRS["LSTM"].items() if k != "layout"}

_OP = "com.microsoft.DynamicQuantizeLSTM"


def _const(node, slots, i, what):
    slot = slots[i] if i < len(slots) else None
    if slot is None:
        raise FormatError("DynamicQuantizeLSTM node %r: %s is required" % (node.name, what))
    if slot[0] != "const":
        raise UnsupportedLayerError(
            _OP,
            what,
            "node %r: %s is computed in the graph; rnnfast takes weights that are initializers" % (node.name, what),
        )
    return np.asarray(slot[1])


def _weights(node, slots, i, what, D, K, GH):
    """Input ``i`` (quantized ``what``) and its scale and zero point (inputs 8 + 2j,
    9 + 2j): ``(q (D, K, GH) int8, scale (D, GH) float32)``."""
    j = 0 if what == "W" else 1
    q = _const(node, slots, i, what)
    scale = _const(node, slots, 8 + 2 * j, what + "_scale")
    zero = _const(node, slots, 9 + 2 * j, what + "_zero_point")
    if q.dtype != np.int8:
        raise UnsupportedLayerError(
            _OP,
            what,
            "node %r: %s of type %s with zero point %s: rnnfast's int8 path runs symmetric int8 weights "
            "(quantize_dynamic with weight_type=QInt8)" % (node.name, what, q.dtype, zero.ravel()[:1]),
        )
    if q.shape != (D, K, GH):
        raise FormatError(
            "DynamicQuantizeLSTM node %r: %s has shape %s, expected %s" % (node.name, what, q.shape, (D, K, GH))
        )
    if q.size and q.min() < -127:
        raise UnsupportedLayerError(
            _OP,
            what,
            "node %r: %s holds -128 (rnnfast's int8 weights are symmetric, in [-127, 127])" % (node.name, what),
        )
    if np.any(zero != 0):
        raise UnsupportedLayerError(
            _OP,
            what + "_zero_point",
            "node %r: non-zero zero points (rnnfast's int8 weights are symmetric)" % node.name,
        )
    if scale.dtype != np.float32 or scale.shape not in ((D,), (D, GH), (D, 1)):
        raise UnsupportedLayerError(
            _OP,
            what + "_scale",
            "node %r: %s_scale of type %s and shape %s (float32, one per direction or per column: %s or %s)"
            % (node.name, what, scale.dtype, scale.shape, (D,), (D, GH)),
        )
    if not np.all(np.isfinite(scale)) or np.any(scale < 0):
        raise FormatError("DynamicQuantizeLSTM node %r: %s_scale not finite and non-negative" % (node.name, what))
    return q, np.ascontiguousarray(np.broadcast_to(scale.reshape(D, -1), (D, GH)))


def convert_dynamic_quantize_lstm(node, slots, ctx):
    """Convert a DynamicQuantizeLSTM node (see the module docstring): the float LSTM
    on the dequantized weights (``q * scale``), then in "int8" on ``q`` and ``scale``
    themselves."""
    slots = list(slots) + [None] * (12 - len(slots))
    D = 2 if node.attrs["direction"] == "bidirectional" else 1
    Wq0 = _const(node, slots, 1, "W")
    Rq0 = _const(node, slots, 2, "R")
    if Wq0.ndim != 3 or Rq0.ndim != 3 or Wq0.shape[2] % 4 or Rq0.shape[1] * 4 != Rq0.shape[2]:
        raise FormatError(
            "DynamicQuantizeLSTM node %r: W %s / R %s are not (D, I, 4H) / (D, H, 4H)"
            % (node.name, Wq0.shape, Rq0.shape)
        )
    GH, I, H = Wq0.shape[2], Wq0.shape[1], Rq0.shape[1]
    Wq, ws = _weights(node, slots, 1, "W", D, I, GH)
    Rq, rs = _weights(node, slots, 2, "R", D, H, GH)
    # the float LSTM node on the dequantized weights, (D, 4H, K) as the LSTM op holds them
    lstm = types.SimpleNamespace(op_type="LSTM", name=node.name, attrs=dict(node.attrs, layout=0), outputs=node.outputs)
    fslots = list(slots[:8])
    fslots[1] = ("const", (Wq.astype(np.float32) * ws[:, None, :]).transpose(0, 2, 1))
    fslots[2] = ("const", (Rq.astype(np.float32) * rs[:, None, :]).transpose(0, 2, 1))
    op = convert_recurrent(lstm, fslots, ctx)
    # ONNX i, o, f, c -> canonical i, f, c, o (as convert_recurrent orders the float ones)
    order = np.concatenate([np.arange(g * H, (g + 1) * H) for g in (0, 2, 3, 1)])
    op.layer = op.layer._with_int8_weights(
        [(Wq[d][:, order], ws[d][order]) for d in range(D)], [(Rq[d][:, order], rs[d][order]) for d in range(D)]
    )
    op.op_type, op.domain = "DynamicQuantizeLSTM", "com.microsoft"
    op.options += ", int8"
    return op
