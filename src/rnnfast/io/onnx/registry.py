"""The ONNX op registry: op type -> how its node becomes a canonical op.

One :class:`OpSpec` per op of the default domain (``""`` / ``"ai.onnx"``): its
attributes and their defaults (any other attribute is refused, naming it), how many
inputs and outputs it takes, which inputs are *shape arguments* (their values decide
the output's shape: a value computed from data there makes the output's shape
data-dependent), and its converter (default: a :class:`~rnnfast.model_onnx.FnOp`
running the op's kernel from :data:`rnnfast.model_onnx.KERNELS`). Ops of other domains
(``com.microsoft``: ONNX Runtime's contrib ops), but for those in ``CONTRIB_OPS``
(``DynamicQuantizeLSTM``, in ``io/onnx/quantized.py``), and ops not listed are refused
with :class:`~rnnfast.UnsupportedLayerError` naming the op, its node and its domain.
"""

import numpy as np

from ...errors import FormatError, UnsupportedLayerError
from ...model_onnx import ONNX_DTYPES, FnOp, convert_product
from .control import IF_ATTRS, LOOP_ATTRS, SCAN_ATTRS, convert_if, convert_loop, convert_scan
from .quantized import DQLSTM_ATTRS, convert_dynamic_quantize_lstm
from .recurrent import RECURRENT_ATTRS, convert_recurrent
from .spatial import unit_axis_converter

__all__ = ["OpSpec", "OPS", "DEFAULT_DOMAINS", "lookup", "REQUIRED"]

DEFAULT_DOMAINS = ("", "ai.onnx")
REQUIRED = object()


class OpSpec:
    """How one op type converts (see the module docstring)."""

    def __init__(
        self, attrs=None, inputs=(1, 1), outputs=(1, 1), shape_args=(), convert=None, check=None, fold=True, graphs=()
    ):
        self.attrs = dict(attrs or {})
        self.graphs = tuple(graphs)  # attributes holding a subgraph (Loop / Scan bodies)
        self.inputs = inputs
        self.outputs = outputs
        self.shape_args = tuple(shape_args)
        self.convert = convert
        self.check = check  # check(node, ctx) -> extra attrs for the kernel, or raises
        self.fold = fold


def _unsupported(node, option, detail):
    return UnsupportedLayerError(node.op_type, option, "node %r: %s" % (node.name, detail))


# -- checks: attribute values the kernels do not take ----------------------------------


def _cast_check(node, ctx):
    to = node.attrs["to"]
    if to not in ONNX_DTYPES:
        raise _unsupported(node, "to", "Cast to data type %r" % (to,))
    return {"_dtype": ONNX_DTYPES[to][0]}


def _softmax_check(node, ctx):
    if ctx.opset < 13:
        return {"legacy": True, "axis": node.attrs["axis"] if node.attrs["axis"] is not None else 1}
    return {"axis": node.attrs["axis"] if node.attrs["axis"] is not None else -1}


def _gemm_check(node, ctx):
    return {}


def _conv_check(node, ctx):
    a = node.attrs
    for k in ("kernel_shape", "strides", "dilations"):
        if a[k] is not None and len(a[k]) != 1:
            raise _unsupported(node, k, "%s=%s: rnnfast runs 1-D convolutions" % (k, a[k]))
    if a["pads"] is not None and len(a["pads"]) != 2:
        raise _unsupported(node, "pads", "pads=%s: rnnfast runs 1-D convolutions" % (a["pads"],))
    if a["auto_pad"] not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise FormatError("Conv node %r: auto_pad %r" % (node.name, a["auto_pad"]))
    w = ctx.const(node.inputs[1])
    extra = {
        "strides": (a["strides"] or [1])[0],
        "dilations": (a["dilations"] or [1])[0],
        "group": a["group"],
        "pads": a["pads"],
    }
    if w is not None:
        if w.ndim != 3:
            raise _unsupported(node, "W", "a weight of shape %s: rnnfast runs 1-D convolutions" % (w.shape,))
        extra["_kernel"] = np.ascontiguousarray(np.transpose(w, (2, 1, 0)))
    return extra


def _pool_check(node, ctx):
    a = node.attrs
    ks = a["kernel_shape"]
    if ks is None or len(ks) != 1:
        raise _unsupported(node, "kernel_shape", "kernel_shape=%s: rnnfast pools over 1-D inputs" % (ks,))
    if a.get("ceil_mode"):
        raise _unsupported(node, "ceil_mode", "ceil_mode=1")
    if a.get("dilations") not in (None, [1]):
        raise _unsupported(node, "dilations", "dilations=%s" % (a["dilations"],))
    if a.get("storage_order"):
        raise _unsupported(node, "storage_order", "storage_order=%s" % a["storage_order"])
    if a["strides"] is not None and len(a["strides"]) != 1:
        raise _unsupported(node, "strides", "strides=%s" % (a["strides"],))
    if a["pads"] is not None and len(a["pads"]) != 2:
        raise _unsupported(node, "pads", "pads=%s" % (a["pads"],))
    if len(node.outputs) > 1 and node.outputs[1]:
        raise _unsupported(node, "Indices", "the Indices output of MaxPool")
    return {}


def _bn_check(node, ctx):
    if node.attrs.get("training_mode"):
        raise _unsupported(node, "training_mode", "training_mode=1 (rnnfast runs inference only)")
    if len([o for o in node.outputs if o]) > 1:
        raise _unsupported(node, "outputs", "the running mean / variance outputs (training mode)")
    if node.attrs.get("spatial", 1) != 1:
        raise _unsupported(node, "spatial", "spatial=0")
    return {}


def _ln_check(node, ctx):
    if len([o for o in node.outputs if o]) > 1:
        raise _unsupported(node, "outputs", "the Mean / InvStdDev outputs")
    if node.attrs["stash_type"] != 1:
        raise _unsupported(node, "stash_type", "stash_type=%d" % node.attrs["stash_type"])
    return {}


def _cos_check(node, ctx):
    v = node.attrs["value"]
    if v is None:
        v = np.zeros(1, np.float32)
    return {"value": np.asarray(v)}


def _split_check(node, ctx):
    return {"_num_outputs": len(node.outputs)}


def _gelu_check(node, ctx):
    if node.attrs["approximate"] not in ("none", "tanh"):
        raise FormatError("Gelu node %r: approximate=%r" % (node.name, node.attrs["approximate"]))
    return {}


def _dropout_check(node, ctx):
    if node.attrs.get("is_test", 1) == 0 and ctx.opset < 7:
        raise _unsupported(node, "is_test", "is_test=0 (training)")
    return {}


def _mod_check(node, ctx):
    return {}


def _as_1d(check, inputs):
    """How a 1-D Conv / pooling node becomes its op (a FnOp after ``check``): for
    :func:`.spatial.unit_axis_converter`, which runs 2-D nodes with a unit axis on it."""
    plain = OpSpec(inputs=inputs, check=check)
    return unit_axis_converter(lambda node, slots, ctx: make_op(node, plain, slots, ctx))


def _constant_convert(node, slots, ctx):  # never called: the builder folds Constant
    raise AssertionError


_ACT = dict(inputs=(1, 1))
_BIN = dict(inputs=(2, 2))
_REDUCE = dict(attrs={"axes": None, "keepdims": 1, "noop_with_empty_axes": 0}, inputs=(1, 2), shape_args=(1,))

#: The registry: op type (default domain) -> OpSpec.
OPS = {
    # recurrent
    "LSTM": OpSpec(RECURRENT_ATTRS["LSTM"], inputs=(3, 8), outputs=(0, 3), convert=convert_recurrent, fold=False),
    "GRU": OpSpec(RECURRENT_ATTRS["GRU"], inputs=(3, 6), outputs=(0, 2), convert=convert_recurrent, fold=False),
    "RNN": OpSpec(RECURRENT_ATTRS["RNN"], inputs=(3, 6), outputs=(0, 2), convert=convert_recurrent, fold=False),
    # control flow: a recurrence written as a subgraph (io/onnx/control.py); M and cond
    # of Loop are optional but positional (an empty name), checked by the converter
    "Loop": OpSpec(
        LOOP_ATTRS,
        inputs=(0, 1 << 16),
        outputs=(1, 1 << 16),
        shape_args=(0, 1),
        convert=convert_loop,
        fold=False,
        graphs=("body",),
    ),
    "Scan": OpSpec(
        SCAN_ATTRS, inputs=(1, 1 << 16), outputs=(1, 1 << 16), convert=convert_scan, fold=False, graphs=("body",)
    ),
    # a branch (torch.onnx.export: squeeze of an axis of unknown size); folded at load
    # where the condition and what the branches read are constants
    "If": OpSpec(
        IF_ATTRS, inputs=(1, 1), outputs=(1, 1 << 16), convert=convert_if, graphs=("then_branch", "else_branch")
    ),
    # element-wise
    "Identity": OpSpec(**_ACT),
    "Add": OpSpec(**_BIN),
    "Sub": OpSpec(**_BIN),
    "Mul": OpSpec(**_BIN),
    "Div": OpSpec(**_BIN),
    "Pow": OpSpec(**_BIN),
    "Mod": OpSpec({"fmod": 0}, inputs=(2, 2)),
    "Max": OpSpec(inputs=(1, 1 << 16)),
    "Min": OpSpec(inputs=(1, 1 << 16)),
    "Sum": OpSpec(inputs=(1, 1 << 16)),
    "Mean": OpSpec(inputs=(1, 1 << 16)),
    "Neg": OpSpec(**_ACT),
    "Abs": OpSpec(**_ACT),
    "Sqrt": OpSpec(**_ACT),
    "Exp": OpSpec(**_ACT),
    "Log": OpSpec(**_ACT),
    "Reciprocal": OpSpec(**_ACT),
    "Floor": OpSpec(**_ACT),
    "Ceil": OpSpec(**_ACT),
    "Round": OpSpec(**_ACT),
    "Sign": OpSpec(**_ACT),
    "Erf": OpSpec(**_ACT),
    "Sin": OpSpec(**_ACT),
    "Cos": OpSpec(**_ACT),
    "Not": OpSpec(**_ACT),
    "And": OpSpec(**_BIN),
    "Or": OpSpec(**_BIN),
    "Xor": OpSpec(**_BIN),
    "Equal": OpSpec(**_BIN),
    "Less": OpSpec(**_BIN),
    "Greater": OpSpec(**_BIN),
    "LessOrEqual": OpSpec(**_BIN),
    "GreaterOrEqual": OpSpec(**_BIN),
    "Where": OpSpec(inputs=(3, 3)),
    # activations
    "Relu": OpSpec(**_ACT),
    "Sigmoid": OpSpec(**_ACT),
    "Tanh": OpSpec(**_ACT),
    "Softsign": OpSpec(**_ACT),
    "Softplus": OpSpec(**_ACT),
    "Elu": OpSpec({"alpha": 1.0}),
    "Selu": OpSpec({"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "LeakyRelu": OpSpec({"alpha": 0.01}),
    "PRelu": OpSpec(inputs=(2, 2)),
    "HardSigmoid": OpSpec({"alpha": 0.2, "beta": 0.5}),
    "HardSwish": OpSpec(),
    "Mish": OpSpec(),
    "Gelu": OpSpec({"approximate": "none"}, check=_gelu_check),
    "Clip": OpSpec({"min": None, "max": None}, inputs=(1, 3)),
    "Softmax": OpSpec({"axis": None}, check=_softmax_check),
    "LogSoftmax": OpSpec({"axis": None}, check=_softmax_check),
    # linear algebra, convolution, normalisation, pooling
    "Gemm": OpSpec({"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, inputs=(2, 3), convert=convert_product),
    "MatMul": OpSpec(inputs=(2, 2), convert=convert_product),
    "Conv": OpSpec(
        {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None, "pads": None, "strides": None},
        inputs=(2, 3),
        convert=_as_1d(_conv_check, (2, 3)),
    ),
    "BatchNormalization": OpSpec(
        {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "spatial": 1, "is_test": 1},
        inputs=(5, 5),
        outputs=(1, 5),
        check=_bn_check,
    ),
    "LayerNormalization": OpSpec(
        {"axis": -1, "epsilon": 1e-5, "stash_type": 1}, inputs=(2, 3), outputs=(1, 3), check=_ln_check
    ),
    "MaxPool": OpSpec(
        {
            "auto_pad": "NOTSET",
            "ceil_mode": 0,
            "dilations": None,
            "kernel_shape": None,
            "pads": None,
            "storage_order": 0,
            "strides": None,
        },
        outputs=(1, 2),
        convert=_as_1d(_pool_check, (1, 1)),
    ),
    "AveragePool": OpSpec(
        {
            "auto_pad": "NOTSET",
            "ceil_mode": 0,
            "count_include_pad": 0,
            "dilations": None,
            "kernel_shape": None,
            "pads": None,
            "strides": None,
        },
        convert=_as_1d(_pool_check, (1, 1)),
    ),
    "GlobalAveragePool": OpSpec(),
    "GlobalMaxPool": OpSpec(),
    "ReduceMean": OpSpec(**_REDUCE),
    "ReduceMax": OpSpec(**_REDUCE),
    "ReduceMin": OpSpec(**_REDUCE),
    "ReduceSum": OpSpec(**_REDUCE),
    "ReduceProd": OpSpec(**_REDUCE),
    "ArgMax": OpSpec({"axis": 0, "keepdims": 1, "select_last_index": 0}),
    "ArgMin": OpSpec({"axis": 0, "keepdims": 1, "select_last_index": 0}),
    # shapes and layout
    "Transpose": OpSpec({"perm": None}),
    "Squeeze": OpSpec({"axes": None}, inputs=(1, 2), shape_args=(1,)),
    "Unsqueeze": OpSpec({"axes": None}, inputs=(1, 2), shape_args=(1,)),
    "Reshape": OpSpec({"allowzero": 0}, inputs=(2, 2), shape_args=(1,)),
    "Flatten": OpSpec({"axis": 1}),
    "Concat": OpSpec({"axis": REQUIRED}, inputs=(1, 1 << 16)),
    "Split": OpSpec(
        {"axis": 0, "split": None, "num_outputs": None},
        inputs=(1, 2),
        outputs=(1, 1 << 16),
        shape_args=(1,),
        check=_split_check,
    ),
    "Slice": OpSpec({"starts": None, "ends": None, "axes": None}, inputs=(1, 5), shape_args=(1, 2, 3, 4)),
    "Shape": OpSpec({"start": 0, "end": None}),
    "Size": OpSpec(),
    "Gather": OpSpec({"axis": 0}, inputs=(2, 2)),
    # sequences (lists of tensors): what the torch.export-based exporter writes for an
    # unrolled nn.RNN (never folded: a folded value is one tensor)
    "SplitToSequence": OpSpec({"axis": 0, "keepdims": 1}, inputs=(1, 2), shape_args=(1,), fold=False),
    "SequenceAt": OpSpec(inputs=(2, 2), shape_args=(1,), fold=False),
    "Constant": OpSpec(
        {
            "value": None,
            "value_float": None,
            "value_floats": None,
            "value_int": None,
            "value_ints": None,
            "sparse_value": None,
            "value_string": None,
            "value_strings": None,
        },
        inputs=(0, 0),
    ),
    "ConstantOfShape": OpSpec({"value": None}, shape_args=(0,), check=_cos_check),
    "Expand": OpSpec(inputs=(2, 2), shape_args=(1,)),
    "Tile": OpSpec(inputs=(2, 2), shape_args=(1,)),
    "Cast": OpSpec({"to": REQUIRED, "saturate": 1}, check=_cast_check),
    "Range": OpSpec(inputs=(3, 3), shape_args=(0, 1, 2)),
    "Dropout": OpSpec({"ratio": 0.5, "seed": None, "is_test": 1}, inputs=(1, 3), outputs=(1, 2), check=_dropout_check),
}

#: The ops of ONNX Runtime's ``com.microsoft`` domain rnnfast runs.
CONTRIB_OPS = {
    "DynamicQuantizeLSTM": OpSpec(
        DQLSTM_ATTRS, inputs=(3, 12), outputs=(0, 3), convert=convert_dynamic_quantize_lstm, fold=False
    ),
}


def lookup(node):
    """The OpSpec of ``node``, or UnsupportedLayerError naming its op, node and domain."""
    domain = node.domain or ""
    if domain == "com.microsoft" and node.op_type in CONTRIB_OPS:
        return CONTRIB_OPS[node.op_type]
    if domain not in DEFAULT_DOMAINS:
        extra = " (an ONNX Runtime contrib op: rnnfast runs the standard ONNX ops)" if domain == "com.microsoft" else ""
        raise UnsupportedLayerError(
            "%s.%s" % (domain, node.op_type),
            None,
            "node %r of domain %r%s" % (node.name, domain, extra),
        )
    spec = OPS.get(node.op_type)
    if spec is None:
        raise UnsupportedLayerError(
            node.op_type,
            None,
            "ONNX op %s (node %r, domain %r) is not one rnnfast runs" % (node.op_type, node.name, domain or "ai.onnx"),
        )
    return spec


def make_op(node, spec, slots, ctx):
    """The runtime op of ``node`` (after its attributes were checked)."""
    if spec.convert is not None:
        return spec.convert(node, slots, ctx)
    attrs = dict(node.attrs)
    if spec.check is not None:
        attrs.update(spec.check(node, ctx))
    attrs["_name"] = node.name
    if spec.inputs[1] <= 8:  # kernels unpack their inputs: absent trailing ones are None
        slots = list(slots) + [None] * (spec.inputs[1] - len(slots))
    return FnOp(node.op_type, node.name, slots, len(node.outputs), attrs)
