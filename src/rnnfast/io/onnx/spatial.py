"""``Conv`` / ``MaxPool`` / ``AveragePool`` nodes of two spatial axes, one of them a unit
axis: a 1-D convolution or pooling in 2-D clothes, as tf2onnx writes Keras' ``Conv1D``
(``(N, C, 1, L)`` with kernel ``(1, k)``) and ``MaxPooling1D`` (``(N, C, L, 1)`` with
kernel ``(k, 1)``).

The node runs as the 1-D op (the registry's own check and kernel) over the other axis,
the unit axis folded into the batch: ``kernel_shape``, ``strides``, ``dilations`` and
``pads`` on the unit axis must be 1, 1, 1 and 0 (``auto_pad`` then adds none there).
Anything else of two or more spatial axes is refused as before, by the 1-D check.
"""

import numpy as np

from ...errors import UnsupportedLayerError
from ...model_onnx import OnnxOp

__all__ = ["unit_axis_converter", "UnitAxisOp"]


class UnitAxisOp(OnnxOp):
    """A 2-D node run as its 1-D twin ``inner`` over axis ``2 + (1 - unit)`` of its
    input, the spatial axis ``unit`` (0 or 1) folded into the batch."""

    def __init__(self, node, slots, inner, unit):
        super().__init__(node.op_type, node.name, slots, 1)
        self.inner = inner
        self.unit = int(unit)
        self.attrs = inner.attrs
        self.num_params = inner.num_params

    def compute(self, args, num_threads):
        x = args[0]
        if x.ndim != 4:
            raise ValueError(
                "%s %r: a 2-D node expects (N, C, H, W), got shape %s" % (self.op_type, self.name, x.shape)
            )
        rest = list(args[1:])
        if len(rest) and rest[0] is not None and np.ndim(rest[0]) == 4:  # a Conv weight computed in the graph
            rest[0] = np.squeeze(rest[0], 2 + self.unit)
        N, C = x.shape[:2]
        u = x.shape[2 + self.unit]
        # (N, C, H, W) -> (N * unit, C, L): the unit axis next to the batch
        xt = np.moveaxis(x, 2 + self.unit, 1).reshape(N * u, C, -1)
        y = self.inner.compute([xt] + rest, num_threads)[0]
        y = y.reshape(N, u, y.shape[1], y.shape[2])
        return [np.moveaxis(y, 1, 2 + self.unit)]

    def describe(self):
        return "%s(2-D, unit axis %d: %s)" % (self.op_type, self.unit, self.inner.describe())


def _one_d(node, unit):
    """The node's attributes for its 1-D twin (the unit axis dropped), or
    UnsupportedLayerError."""
    a = dict(node.attrs)
    keep = 1 - unit
    for k in ("kernel_shape", "strides", "dilations"):
        v = a.get(k)
        if v is None:
            continue
        if v[unit] != 1:
            raise UnsupportedLayerError(
                node.op_type,
                k,
                "node %r: %s=%s (rnnfast runs 2-D nodes whose other axis has kernel, stride and dilation 1)"
                % (node.name, k, v),
            )
        a[k] = [v[keep]]
    pads = a.get("pads")
    if pads is not None:
        if len(pads) != 4 or pads[unit] or pads[2 + unit]:
            raise UnsupportedLayerError(node.op_type, "pads", "node %r: pads=%s on a unit axis" % (node.name, pads))
        a["pads"] = [pads[keep], pads[2 + keep]]
    return a


def _unit_axis(node, ctx):
    """0 or 1: the spatial axis a 2-D node leaves alone; None for a node that is not 2-D."""
    ks = node.attrs.get("kernel_shape")
    if ks is None and node.op_type == "Conv":
        w = ctx.const(node.inputs[1])
        ks = list(w.shape[2:]) if w is not None else None
    if ks is None or len(ks) != 2:
        return None
    return 0 if ks[0] == 1 else 1 if ks[1] == 1 else None


class _Ctx1D:
    """The converter's context with the Conv weight's unit axis dropped."""

    def __init__(self, ctx, name, w):
        self._ctx, self._name, self._w = ctx, name, w

    def const(self, name):
        return self._w if name == self._name else self._ctx.const(name)

    def __getattr__(self, k):
        return getattr(self._ctx, k)


def unit_axis_converter(make_1d):
    """A registry converter: the 1-D node as ``make_1d(node, slots, ctx)`` makes it (the
    registry's check and FnOp), a 2-D node with a unit axis as a :class:`UnitAxisOp`
    around the op it makes of the node's 1-D twin."""

    def convert(node, slots, ctx):
        unit = _unit_axis(node, ctx)
        if unit is None:
            return make_1d(node, slots, ctx)
        inner_node = _Shadow(node, _one_d(node, unit))
        slots = list(slots)
        if node.op_type == "Conv":
            w = ctx.const(node.inputs[1])
            if w is not None:
                w = np.squeeze(w, 2 + unit)
                slots[1] = ("const", w)
                ctx = _Ctx1D(ctx, node.inputs[1], w)
        inner = make_1d(inner_node, slots, ctx)
        return UnitAxisOp(node, inner.slots, inner, unit)

    return convert


class _Shadow:
    """A node with other attributes."""

    def __init__(self, node, attrs):
        for k in ("op_type", "name", "domain", "inputs", "outputs", "num_explicit"):
            setattr(self, k, getattr(node, k))
        self.attrs = attrs
