"""The Keras layer registry: one entry per Keras layer class (:data:`LAYERS`).

An entry (:class:`KerasLayer`) says everything rnnfast knows about a class: how its
config and weights become a model node (``convert``), whether a file holds weights
for it (``weights``), how Keras counts its parameters (``params``, what
``layer.count_params()`` gives), its row in ``model.summary()`` / ``rnnfast info``
(``row``), and whether ``TimeDistributed`` may wrap it (``per_step``). The loaders
(:mod:`rnnfast.io.keras_file`) and the summaries read it; every field but
``per_step`` must be given, so an entry cannot forget its summary row or its count.

:func:`convert_layer` converts one layer through its entry and leaves on the node
what the model reports without the registry: ``node.summary_row`` ``(type, units,
options)`` and ``node.num_params``.

Adding a Keras layer: the walk
------------------------------
A layer without weights touches two source files (``GlobalMaxPooling1D`` and
``GlobalAveragePooling1D`` came in so: ``GlobalPoolingNode`` in model_keras.py, the
``_global_pooling`` converter and two entries here):

1. ``src/rnnfast/model_keras.py``: its node, a ``_Node`` subclass whose ``run(x, mask,
   num_threads)`` computes the layer on the time-major input (and ``describe()`` for
   the repr, ``mask_rule`` for the mask it passes on);
2. ``src/rnnfast/io/keras_layers.py`` (this file): a converter (options checked with
   :func:`~rnnfast.io.keras_convert.check_options`, dtype with
   :func:`~rnnfast.io.keras_convert.resolve_dtype`) and one ``KerasLayer`` entry in
   :data:`LAYERS` with its summary row and ``params=_no_params``.

A layer with weights adds its canonical op to ``layers.py`` when the op is new (a
third file), ``weights=True`` and a ``params`` function here; its weights come in
Keras' order through :class:`~rnnfast.io.keras_convert.WeightList`.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import FormatError, UnsupportedLayerError
from ..model_keras import (
    ActivationNode,
    AffineNode,
    AttentionNode,
    ConvNode,
    DotNode,
    FlattenNode,
    GlobalPoolingNode,
    IdentityNode,
    MaskingNode,
    MergeNode,
    MultiHeadAttentionNode,
    NormNode,
    PoolNode,
    RepeatVectorNode,
    ReshapeNode,
    StepsNode,
    TimeDistributedNode,
)
from .keras_convert import (
    CUDNN_CLASSES,
    RECURRENT_CLASSES,
    WeightList,
    bidirectional,
    check_options,
    dense,
    embedding,
    recurrent,
    resolve_activation,
    resolve_dtype,
)

__all__ = [
    "KerasLayer",
    "LAYERS",
    "SUPPORTED_LAYERS",
    "RECURRENT_CLASSES",
    "MERGE_CLASSES",
    "convert_layer",
    "expects_weights",
]


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer class (see the module docstring).

    Attributes
    ----------
    name : str
        The Keras ``class_name``.
    convert : callable
        ``convert(cfg, weights, ctx, name)`` -> a node of :mod:`rnnfast.model_keras`;
        ``weights`` is a :class:`~rnnfast.io.keras_convert.WeightList` to take from in
        Keras' order, ``ctx`` a :class:`~rnnfast.io.keras_convert.ConvertContext`.
    weights : bool
        A saved model holds weights for the layer (a ``.keras`` archive without them is
        damaged).
    params : callable
        ``params(node)`` -> int, the layer's parameters as Keras counts them.
    row : callable
        ``row(node)`` -> ``(type, units, options)``, three strings: the layer's row of
        the summary table.
    per_step : bool
        The layer acts on each step alone, so ``TimeDistributed`` may wrap it.
    """

    name: str
    convert: Callable
    weights: bool
    params: Callable
    row: Callable
    per_step: bool = False


# -- parameter counts, as Keras counts them -----------------------------------------------


def _no_params(node):
    return 0


def _recurrent_params(node):
    # what the source gave: kernel, recurrent kernel and biases (GRU reset-after: two rows)
    return sum(layer.source_parameters for layer in node.rnn_layers)


def _dense_params(node):
    d = node.dense
    return int(d.kernel.size + (d.bias.size if d.bias is not None else 0))


def _embedding_params(node):
    return int(node.table.size)


def _inner_params(node):
    return LAYERS[node.inner.keras_class].params(node.inner)


# -- summary rows ------------------------------------------------------------------------------


def _cell_options(layer):
    opts = []
    if layer.cell_spec.reset_before is not None and not layer.reset_after:
        opts.append("reset_after=False")
    if layer.activation not in ("tanh", None):
        opts.append("activation=%s" % layer.activation)
    if layer.recurrent_activation not in (None, "sigmoid"):
        opts.append("recurrent_activation=%s" % layer.recurrent_activation)
    if layer.proj_size:
        opts.append("proj_size=%d" % layer.proj_size)
    return opts


def _recurrent_row(node):
    layers = node.rnn_layers
    kind = node.keras_class
    if kind == "RNN":
        kind = "RNN(%s)" % "+".join(layer.cell_spec.keras_cell for layer in layers)
    units = ",".join(str(layer.units) for layer in layers)
    opts = [
        o
        for o in ("return_sequences", "return_state", "go_backwards", "zero_output_for_mask")
        if getattr(node, o, False)
    ]
    if len(layers) == 1:
        opts += _cell_options(layers[0])
    else:
        opts += ["cell %d: %s" % (i, o) for i, layer in enumerate(layers) for o in _cell_options(layer)]
    return kind, units, ", ".join(opts)


def _bidirectional_row(node):
    fwd = node.forward_node
    _, units, inner = _recurrent_row(fwd)
    # Keras itself sets zero_output_for_mask inside Bidirectional: not worth a word
    opts = [o for o in inner.split(", ") if o and o != "zero_output_for_mask"]
    if node.merge_mode != "concat":
        opts.append("merge_mode=%s" % node.merge_mode)
    if node.fused is None:
        bwd = node.backward_node
        opts.append("backward_layer=%s(%s)" % (bwd.keras_class, _recurrent_row(bwd)[1]))
    return "Bidirectional(%s)" % fwd.keras_class, "2x%s" % units, ", ".join(opts)


def _time_distributed_row(node):
    kind, units, opts = LAYERS[node.inner.keras_class].row(node.inner)
    return "TimeDistributed(%s)" % kind, units, opts


def _dense_row(node):
    opts = []
    act = node.activation or node.dense.activation
    if act != "linear":
        opts.append("activation=%s" % act)
    if node.dense.bias is None:
        opts.append("use_bias=False")
    return "Dense", str(node.dense.kernel.shape[1]), ", ".join(opts)


def _embedding_row(node):
    opts = ["input_dim=%d" % node.table.shape[0]]
    if node.mask_zero:
        opts.append("mask_zero=True")
    return "Embedding", str(node.table.shape[1]), ", ".join(opts)


def _masking_row(node):
    return "Masking", "", "mask_value=%g" % node.mask_value


def _activation_row(node):
    return node.keras_class, "", "activation=%s" % node.activation


def _plain_row(node):
    return node.keras_class, "", ""


def _pooling_row(node):
    return node.keras_class, "", "keepdims=True" if node.keepdims else ""


# -- converters of the layers without canonical weights --------------------------------------


def _activation(cfg, w, ctx, name):
    check_options("Activation", cfg, {"activation"})
    act = resolve_activation("Activation", "activation", cfg.get("activation"), ctx, recurrent=False)
    return ActivationNode(name, act, resolve_dtype("Activation", cfg, ctx))


def _masking(cfg, w, ctx, name):
    check_options("Masking", cfg, {"mask_value"})
    value = cfg.get("mask_value", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedLayerError("Masking", "mask_value", "%r is not a number" % (value,))
    return MaskingNode(name, value, resolve_dtype("Masking", cfg, ctx))


def _flatten(cfg, w, ctx, name):
    check_options("Flatten", cfg, {"data_format"})
    fmt = cfg.get("data_format") or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise UnsupportedLayerError("Flatten", "data_format", repr(fmt))
    return FlattenNode(name, resolve_dtype("Flatten", cfg, ctx), channels_first=fmt == "channels_first")


def _identity(cls, options):
    """The converter of a layer that is the identity at inference (``options``: the
    ones it may carry)."""

    def convert(cfg, w, ctx, name):
        check_options(cls, cfg, options)
        return IdentityNode(name, cls, resolve_dtype(cls, cfg, ctx))

    return convert


def _global_pooling(cls, reduce):
    """The converter of ``GlobalMaxPooling1D`` / ``GlobalAveragePooling1D``."""

    def convert(cfg, w, ctx, name):
        check_options(cls, cfg, {"data_format", "keepdims"})
        fmt = cfg.get("data_format") or "channels_last"
        if fmt != "channels_last":
            raise UnsupportedLayerError(
                cls, "data_format", "%r (rnnfast pools channels_last sequences (batch, steps, features))" % (fmt,)
            )
        return GlobalPoolingNode(
            name, cls, reduce, resolve_dtype(cls, cfg, ctx), keepdims=bool(cfg.get("keepdims", False))
        )

    return convert


#: The merge layers: Keras class -> the merge :class:`~rnnfast.model_keras.MergeNode` does.
MERGES = {
    "Add": "add",
    "Subtract": "subtract",
    "Multiply": "multiply",
    "Average": "average",
    "Maximum": "maximum",
    "Minimum": "minimum",
    "Concatenate": "concat",
}
#: Layers called on a list of tensors.
MERGE_CLASSES = frozenset(MERGES) | {"Dot", "Attention", "AdditiveAttention"}
#: Layers called on several tensors given as separate arguments (by position or name).
ARGUMENT_CLASSES = frozenset({"MultiHeadAttention"})


def _merge(cls):
    def convert(cfg, w, ctx, name):
        check_options(cls, cfg, {"axis"} if cls == "Concatenate" else set())
        axis = cfg.get("axis", -1)
        if cls == "Concatenate" and (not isinstance(axis, int) or isinstance(axis, bool)):
            raise UnsupportedLayerError(cls, "axis", repr(axis))
        if cls == "Concatenate" and axis == 0:
            raise UnsupportedLayerError(cls, "axis", "0 (the batch axis)")
        return MergeNode(name, cls, MERGES[cls], resolve_dtype(cls, cfg, ctx), axis=axis)

    return convert


def _dot(cfg, w, ctx, name):
    check_options("Dot", cfg, {"axes", "normalize"})
    axes = cfg.get("axes")
    ok = (isinstance(axes, int) and not isinstance(axes, bool)) or (
        isinstance(axes, (list, tuple))
        and len(axes) == 2
        and all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
    )
    if not ok:
        raise UnsupportedLayerError("Dot", "axes", repr(axes))
    if isinstance(axes, int) and axes == 0 or isinstance(axes, (list, tuple)) and 0 in axes:
        raise UnsupportedLayerError("Dot", "axes", "%r (the batch axis)" % (axes,))
    return DotNode(
        name,
        axes if isinstance(axes, int) else tuple(axes),
        bool(cfg.get("normalize", False)),
        resolve_dtype("Dot", cfg, ctx),
    )


def _repeat_vector(cfg, w, ctx, name):
    check_options("RepeatVector", cfg, {"n"})
    n = cfg.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise FormatError("RepeatVector %r: n must be a positive integer, got %r" % (name, n))
    return RepeatVectorNode(name, n, resolve_dtype("RepeatVector", cfg, ctx))


def _reshape(cfg, w, ctx, name):
    check_options("Reshape", cfg, {"target_shape"})
    t = cfg.get("target_shape")
    if (
        not isinstance(t, (list, tuple))
        or not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in t)
        or sum(d == -1 for d in t) > 1
    ):
        raise UnsupportedLayerError("Reshape", "target_shape", repr(t))
    return ReshapeNode(name, "Reshape", resolve_dtype("Reshape", cfg, ctx), target_shape=t)


def _permute(cfg, w, ctx, name):
    check_options("Permute", cfg, {"dims"})
    dims = cfg.get("dims")
    if not isinstance(dims, (list, tuple)) or sorted(dims) != list(range(1, len(dims) + 1)):
        raise UnsupportedLayerError("Permute", "dims", repr(dims))
    return ReshapeNode(name, "Permute", resolve_dtype("Permute", cfg, ctx), permute=list(dims))


def _int1(cls, cfg, key, default=None, minimum=1):
    """A Keras 1-D size option: an int or a one-element list (Keras writes both)."""
    v = cfg.get(key, default)
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise UnsupportedLayerError(cls, key, repr(cfg.get(key, default)))
    return v


def _data_format(cls, cfg):
    fmt = cfg.get("data_format") or "channels_last"
    if fmt not in ("channels_last", "channels_first"):
        raise UnsupportedLayerError(cls, "data_format", repr(fmt))
    return fmt == "channels_first"


def _conv(cls):
    """Conv1D, DepthwiseConv1D, SeparableConv1D."""
    opts = {"kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation", "use_bias"}
    if cls == "Conv1D":
        opts |= {"filters", "groups"}
    if cls == "DepthwiseConv1D":
        opts |= {"depth_multiplier"}
    if cls == "SeparableConv1D":
        opts |= {"filters", "depth_multiplier"}
    if cls != "Conv1D":
        opts |= {"groups"}  # tf.keras writes groups=1 for them too

    def convert(cfg, w, ctx, name):
        for opt in ("lora_rank", "quantization_config"):
            if cfg.get(opt):
                raise UnsupportedLayerError(cls, opt, repr(cfg[opt]))
        check_options(cls, cfg, opts | {"lora_rank", "lora_alpha", "quantization_config"})
        if cls != "Conv1D" and cfg.get("groups", 1) != 1:
            raise UnsupportedLayerError(cls, "groups", repr(cfg["groups"]))
        k = _int1(cls, cfg, "kernel_size")
        strides = _int1(cls, cfg, "strides", 1)
        dilation = _int1(cls, cfg, "dilation_rate", 1)
        padding = cfg.get("padding", "valid")
        allowed = ("valid", "same", "causal") if cls == "Conv1D" else ("valid", "same")
        if padding not in allowed:
            raise UnsupportedLayerError(cls, "padding", repr(padding))
        if strides > 1 and dilation > 1:
            raise UnsupportedLayerError(cls, "strides", "strides > 1 with dilation_rate > 1")
        cf = _data_format(cls, cfg)
        act = resolve_activation(cls, "activation", cfg.get("activation"), ctx, recurrent=False)
        dtype = resolve_dtype(cls, cfg, ctx)
        use_bias = bool(cfg.get("use_bias", True))
        shape = w.peek_shape()
        if shape is None or len(shape) != 3:
            raise FormatError("%s %r: kernel missing" % (cls, name))
        cin = shape[1]
        kw = dict(strides=strides, dilation=dilation, padding=padding, activation=act, channels_first=cf)
        if cls == "Conv1D":
            filters = _int1(cls, cfg, "filters")
            groups = _int1(cls, cfg, "groups", 1)
            if filters % groups:
                raise FormatError("Conv1D %r: filters %d not divisible by groups %d" % (name, filters, groups))
            kernel = w.take("kernel", (k, cin, filters))
            bias = w.take("bias", (filters,)) if use_bias else None
            return ConvNode(
                name,
                cls,
                dtype,
                kernel=kernel,
                bias=bias,
                groups=groups,
                keras_weights=[kernel] + ([bias] if use_bias else []),
                **kw,
            )
        dm = _int1(cls, cfg, "depth_multiplier", 1)
        if cls == "DepthwiseConv1D":
            kernel = w.take("kernel", (k, cin, dm), also=("depthwise_kernel",))  # (tf.keras' name)
            bias = w.take("bias", (cin * dm,)) if use_bias else None
            return ConvNode(
                name,
                cls,
                dtype,
                depthwise=np.reshape(kernel, (k, 1, cin * dm)),
                bias=bias,
                keras_weights=[kernel] + ([bias] if use_bias else []),
                **kw,
            )
        filters = _int1(cls, cfg, "filters")
        dk = w.take("depthwise_kernel", (k, cin, dm))
        pk = w.take("pointwise_kernel", (1, cin * dm, filters))
        bias = w.take("bias", (filters,)) if use_bias else None
        return ConvNode(
            name,
            cls,
            dtype,
            depthwise=np.reshape(dk, (k, 1, cin * dm)),
            kernel=pk,
            bias=bias,
            keras_weights=[dk, pk] + ([bias] if use_bias else []),
            **kw,
        )

    return convert


def _pool(cls, reduce):
    def convert(cfg, w, ctx, name):
        check_options(cls, cfg, {"pool_size", "strides", "padding", "data_format"})
        size = _int1(cls, cfg, "pool_size", 2)
        strides = cfg.get("strides")
        strides = size if strides is None or strides == [None] else _int1(cls, cfg, "strides")
        padding = cfg.get("padding", "valid")
        if padding not in ("valid", "same"):
            raise UnsupportedLayerError(cls, "padding", repr(padding))
        return PoolNode(
            name,
            cls,
            resolve_dtype(cls, cfg, ctx),
            reduce,
            size,
            strides,
            padding,
            channels_first=_data_format(cls, cfg),
        )

    return convert


def _last_axis(cls, cfg, key="axis"):
    axis = cfg.get(key, -1)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if axis != -1:
        raise UnsupportedLayerError(cls, key, "%r (rnnfast normalises over the last axis, -1)" % (cfg.get(key),))


def _batch_norm(cfg, w, ctx, name):
    cls = "BatchNormalization"
    check_options(cls, cfg, {"axis", "epsilon", "center", "scale"})
    axis = cfg.get("axis", -1)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if axis != -1:
        # Keras 2 writes the channel axis as a positive index: the last one of a
        # sequence (2) or of a vector (1)
        if axis not in (1, 2) or not isinstance(axis, int):
            raise UnsupportedLayerError(cls, "axis", "%r (rnnfast normalises over the last axis)" % (axis,))
    shape = w.peek_shape()
    if shape is None or len(shape) != 1:
        raise FormatError("%s %r: weights missing" % (cls, name))
    n = shape[0]
    eps = float(cfg.get("epsilon", 1e-3))
    gamma = w.take("gamma", (n,)) if cfg.get("scale", True) else None
    beta = w.take("beta", (n,)) if cfg.get("center", True) else None
    mean = w.take("moving_mean", (n,))
    var = w.take("moving_variance", (n,))
    dtype = resolve_dtype(cls, cfg, ctx)
    # folded once, in float64: y = x * a + b
    with np.errstate(invalid="ignore", divide="ignore"):  # a negative variance: NaN, as in Keras
        a = 1 / np.sqrt(np.asarray(var, np.float64) + eps)
    if gamma is not None:
        a = a * np.asarray(gamma, np.float64)
    b = -np.asarray(mean, np.float64) * a
    if beta is not None:
        b = b + np.asarray(beta, np.float64)
    node = AffineNode(
        name, cls, dtype, a, b, keep_mask=True, keras_weights=[x for x in (gamma, beta, mean, var) if x is not None]
    )
    node.positive_axis = axis if axis != -1 else None
    return node


def _normalization(cfg, w, ctx, name):
    cls = "Normalization"
    check_options(cls, cfg, {"axis", "invert", "mean", "variance"})
    _last_axis(cls, cfg)
    if cfg.get("invert"):
        raise UnsupportedLayerError(cls, "invert", "True")
    dtype = resolve_dtype(cls, cfg, ctx)
    if cfg.get("mean") is not None:
        mean = np.asarray(cfg["mean"], np.float64).reshape(-1)
        var = np.asarray(cfg["variance"], np.float64).reshape(-1)
        kw = []
    else:
        shape = w.peek_shape()
        if shape is None or len(shape) != 1:
            raise FormatError("%s %r: mean and variance missing" % (cls, name))
        mean = w.take("mean", shape)
        var = w.take("variance", shape)
        count = w.take_any("count") if w.pos < len(w.items) else None
        kw = [mean, var] + ([count] if count is not None else [])
        mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    eps = 1e-7  # keras.backend.epsilon()
    with np.errstate(invalid="ignore"):
        a = 1 / np.maximum(np.sqrt(var), eps)
    return AffineNode(name, cls, dtype, a, -mean * a, keep_mask=True, keras_weights=kw)


def _layer_norm(cfg, w, ctx, name):
    cls = "LayerNormalization"
    check_options(cls, cfg, {"axis", "epsilon", "center", "scale", "rms_scaling"})
    axis = cfg.get("axis", -1)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if axis != -1 and axis not in (1, 2):
        raise UnsupportedLayerError(cls, "axis", "%r (rnnfast normalises over the last axis)" % (cfg.get("axis"),))
    shape = w.peek_shape()
    gamma = beta = None
    if cfg.get("scale", True):
        gamma = w.take("gamma", shape)
    if cfg.get("center", True) and not cfg.get("rms_scaling", False):
        beta = w.take("beta", w.peek_shape())
    node = NormNode(
        name,
        cls,
        resolve_dtype(cls, cfg, ctx),
        gamma=gamma,
        beta=beta,
        epsilon=float(cfg.get("epsilon", 1e-3)),
        rms_scaling=bool(cfg.get("rms_scaling", False)),
    )
    node.positive_axis = axis if axis != -1 else None
    return node


def _unit_norm(cfg, w, ctx, name):
    check_options("UnitNormalization", cfg, {"axis"})
    _last_axis("UnitNormalization", cfg)
    return NormNode(name, "UnitNormalization", resolve_dtype("UnitNormalization", cfg, ctx), unit=True)


def _pair(cls, cfg, key, default):
    v = cfg.get(key, default)
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if not (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
    ):
        raise UnsupportedLayerError(cls, key, repr(cfg.get(key)))
    return tuple(v)


def _upsampling(cfg, w, ctx, name):
    check_options("UpSampling1D", cfg, {"size"})
    return StepsNode(
        name, "UpSampling1D", resolve_dtype("UpSampling1D", cfg, ctx), repeat=_int1("UpSampling1D", cfg, "size", 2)
    )


def _zero_padding(cfg, w, ctx, name):
    check_options("ZeroPadding1D", cfg, {"padding", "data_format"})
    return StepsNode(
        name,
        "ZeroPadding1D",
        resolve_dtype("ZeroPadding1D", cfg, ctx),
        pad=_pair("ZeroPadding1D", cfg, "padding", 1),
        channels_first=_data_format("ZeroPadding1D", cfg),
    )


def _cropping(cfg, w, ctx, name):
    check_options("Cropping1D", cfg, {"cropping"})
    return StepsNode(
        name, "Cropping1D", resolve_dtype("Cropping1D", cfg, ctx), crop=_pair("Cropping1D", cfg, "cropping", 1)
    )


def _conv_row(node):
    opts = ["kernel_size=%d" % node.kernel_size]
    if node.strides != 1:
        opts.append("strides=%d" % node.strides)
    if node.dilation != 1:
        opts.append("dilation_rate=%d" % node.dilation)
    if node.padding != "valid":
        opts.append("padding=%s" % node.padding)
    if node.groups != 1:
        opts.append("groups=%d" % node.groups)
    if node.activation != "linear":
        opts.append("activation=%s" % node.activation)
    out = node.kernel.shape[2] if node.kernel is not None else node.depthwise.shape[2]
    return node.keras_class, str(out), ", ".join(opts)


def _pool_row(node):
    return node.keras_class, "", "pool_size=%d, strides=%d, padding=%s" % (node.pool_size, node.strides, node.padding)


def _weights_params(node):
    return int(sum(np.size(wt) for wt in node._keras_weights))


def _norm_params(node):
    return int(sum(wt.size for wt in node.get_weights()))


def _attention(cls):
    def convert(cfg, w, ctx, name):
        check_options(cls, cfg, {"use_scale", "score_mode", "dropout", "causal"})
        if cfg.get("causal"):
            raise UnsupportedLayerError(
                cls, "causal", "True (Keras 2's option; rnnfast takes use_causal_mask= in the call)"
            )
        dtype = resolve_dtype(cls, cfg, ctx)
        if cls == "AdditiveAttention":
            scale = w.take("scale", w.peek_shape()) if cfg.get("use_scale", True) else None
            return AttentionNode(name, cls, dtype, additive=True, scale=scale)
        mode = cfg.get("score_mode", "dot")
        if mode not in ("dot", "concat"):
            raise UnsupportedLayerError(cls, "score_mode", repr(mode))
        scale = w.take("scale", ()) if cfg.get("use_scale", False) else None
        csw = w.take("concat_score_weight", ()) if mode == "concat" else None
        return AttentionNode(name, cls, dtype, score_mode=mode, scale=scale, concat_score_weight=csw)

    return convert


def _multi_head_attention(cfg, w, ctx, name):
    """Keras ``MultiHeadAttention`` on sequences (attention over the steps)."""
    cls = "MultiHeadAttention"
    check_options(
        cls,
        cfg,
        {
            "num_heads",
            "key_dim",
            "value_dim",
            "use_bias",
            "output_shape",
            "attention_axes",
            "use_gate",
            "sliding_window",
            "flash_attention",
            # tf.keras records the shapes it was built on
            "query_shape",
            "key_shape",
            "value_shape",
        },
    )
    heads = _int1(cls, cfg, "num_heads")
    key_dim = _int1(cls, cfg, "key_dim")
    value_dim = cfg.get("value_dim") or key_dim
    if not isinstance(value_dim, int) or isinstance(value_dim, bool) or value_dim < 1:
        raise UnsupportedLayerError(cls, "value_dim", repr(value_dim))
    axes = cfg.get("attention_axes")
    if isinstance(axes, int) and not isinstance(axes, bool):
        axes = [axes]
    if axes is not None and list(axes) not in ([1], [-3]):
        raise UnsupportedLayerError(
            cls, "attention_axes", "%r (rnnfast attends over the steps of sequences: axis 1)" % (cfg["attention_axes"],)
        )
    out = cfg.get("output_shape")
    if isinstance(out, (list, tuple)) and len(out) == 1:
        out = out[0]
    if out is not None and (not isinstance(out, int) or isinstance(out, bool) or out < 1):
        raise UnsupportedLayerError(
            cls, "output_shape", "%r (rnnfast takes one output size)" % (cfg.get("output_shape"),)
        )
    window = cfg.get("sliding_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
        raise UnsupportedLayerError(cls, "sliding_window", repr(window))
    use_bias = bool(cfg.get("use_bias", True))
    use_gate = bool(cfg.get("use_gate", False))
    dtype = resolve_dtype(cls, cfg, ctx)
    kept: list[np.ndarray] = []

    def projection(part, heads_size):
        shape = w.peek_shape()
        if shape is None or len(shape) != 3:
            raise FormatError("%s %r: the %s kernel is missing" % (cls, name, part))
        kernel = w.take("kernel", (shape[0], heads, heads_size))
        bias = w.take("bias", (heads, heads_size)) if use_bias else None
        kept.extend(a for a in (kernel, bias) if a is not None)
        return kernel, bias

    weights = {"query": projection("query", key_dim), "key": projection("key", key_dim)}
    if use_gate:
        weights["gate"] = projection("gate", value_dim)
    weights["value"] = projection("value", value_dim)
    if weights["gate" if use_gate else "query"][0].shape[0] != weights["query"][0].shape[0]:
        raise FormatError("%s %r: the gate and query kernels differ in input size" % (cls, name))
    E = out if out is not None else weights["query"][0].shape[0]
    kernel = w.take("kernel", (heads, value_dim, E))
    bias = w.take("bias", (E,)) if use_bias else None
    kept.extend(a for a in (kernel, bias) if a is not None)
    weights["output"] = (kernel, bias)
    # masked scores: tf.keras' Softmax adds -1e9; Keras 3 with dropout takes its explicit
    # path (Softmax: -1e9 in place of the score, the weight zeroed after the softmax),
    # without dropout its dot-product attention (-0.7 * 3.38953e38 added)
    explicit = ctx.keras_major >= 3 and float(cfg.get("dropout") or 0) > 0
    return MultiHeadAttentionNode(
        name,
        dtype,
        weights,
        large_negative=-1e9 if ctx.keras_major < 3 or explicit else -0.7 * 3.38953e38,
        zero_masked=explicit,
        sliding_window=window,
        keras_weights=kept,
    )


def _mha_row(node):
    opts = ["num_heads=%d" % node.num_heads, "key_dim=%d" % node.key_dim]
    if node.value_dim != node.key_dim:
        opts.append("value_dim=%d" % node.value_dim)
    if node.projections["query"][1] is None:
        opts.append("use_bias=False")
    if "gate" in node.projections:
        opts.append("use_gate=True")
    if node.sliding_window is not None:
        opts.append("sliding_window=%d" % node.sliding_window)
    return "MultiHeadAttention", str(node.output_dim), ", ".join(opts)


def _attention_row(node):
    opts = [] if node.additive else ["score_mode=%s" % node.score_mode]
    if node.scale is not None:
        opts.append("use_scale=True")
    return node.keras_class, "", ", ".join(opts)


def _merge_row(node):
    return node.keras_class, "", ("axis=%d" % node.axis) if node.kind == "concat" and node.axis != -1 else ""


def _dot_row(node):
    return "Dot", "", "axes=%r%s" % (node.axes, ", normalize=True" if node.normalize else "")


def _shape_row(node):
    if node.permute is not None:
        return "Permute", "", "dims=%s" % (tuple(node.permute),)
    return "Reshape", "", "target_shape=%s" % (node.target_shape,)


def _recurrent(cls):
    def convert(cfg, w, ctx, name):
        return recurrent(cls, cfg, w, ctx, name)[0]

    return convert


def _time_distributed(cfg, w, ctx, name):
    check_options("TimeDistributed", cfg, {"layer"})
    inner = cfg.get("layer")
    if not isinstance(inner, dict) or "class_name" not in inner:
        raise FormatError("TimeDistributed %r: unreadable inner layer config" % name)
    icls, icfg = inner["class_name"], inner.get("config", {})
    entry = LAYERS.get(icls)
    if icls in ("Sequential", "Functional", "Model"):
        raise UnsupportedLayerError(
            "TimeDistributed",
            "layer",
            "wrapped model %r: rnnfast distributes single layers, not nested models (wrap "
            "each layer of the model in its own TimeDistributed)" % icfg.get("name", icls),
        )
    if entry is None or icls in _NOT_DISTRIBUTED:
        raise UnsupportedLayerError(
            "TimeDistributed",
            "layer",
            "wrapped layer %s (supported: layers of one floating input and one output: %s)"
            % (icls, ", ".join(n for n in sorted(LAYERS) if n not in _NOT_DISTRIBUTED)),
        )
    node = _convert(entry, icfg, w, ctx, icfg.get("name", icls))
    if node.num_outputs != 1:
        raise UnsupportedLayerError("TimeDistributed", "layer", "wrapped layer %s with several outputs" % icls)
    return TimeDistributedNode(name, node, per_step=entry.per_step)


# -- the table ---------------------------------------------------------------------------------


def _entries():
    out = [
        KerasLayer(cls, _recurrent(cls), weights=True, params=_recurrent_params, row=_recurrent_row)
        for cls in list(RECURRENT_CLASSES) + ["RNN"] + list(CUDNN_CLASSES)
    ]
    out += [
        KerasLayer("Bidirectional", bidirectional, weights=True, params=_recurrent_params, row=_bidirectional_row),
        KerasLayer("Dense", dense, weights=True, params=_dense_params, row=_dense_row, per_step=True),
        KerasLayer("TimeDistributed", _time_distributed, weights=True, params=_inner_params, row=_time_distributed_row),
        KerasLayer("Embedding", embedding, weights=True, params=_embedding_params, row=_embedding_row),
        KerasLayer("Activation", _activation, weights=False, params=_no_params, row=_activation_row, per_step=True),
        KerasLayer("Masking", _masking, weights=False, params=_no_params, row=_masking_row),
        KerasLayer("Flatten", _flatten, weights=False, params=_no_params, row=_plain_row),
        KerasLayer(
            "GlobalMaxPooling1D",
            _global_pooling("GlobalMaxPooling1D", "max"),
            weights=False,
            params=_no_params,
            row=_pooling_row,
        ),
        KerasLayer(
            "GlobalAveragePooling1D",
            _global_pooling("GlobalAveragePooling1D", "mean"),
            weights=False,
            params=_no_params,
            row=_pooling_row,
        ),
        KerasLayer("Dot", _dot, weights=False, params=_no_params, row=_dot_row),
        KerasLayer("Attention", _attention("Attention"), weights=True, params=_norm_params, row=_attention_row),
        KerasLayer(
            "AdditiveAttention", _attention("AdditiveAttention"), weights=True, params=_norm_params, row=_attention_row
        ),
        KerasLayer("MultiHeadAttention", _multi_head_attention, weights=True, params=_weights_params, row=_mha_row),
        KerasLayer("Conv1D", _conv("Conv1D"), weights=True, params=_weights_params, row=_conv_row),
        KerasLayer("DepthwiseConv1D", _conv("DepthwiseConv1D"), weights=True, params=_weights_params, row=_conv_row),
        KerasLayer("SeparableConv1D", _conv("SeparableConv1D"), weights=True, params=_weights_params, row=_conv_row),
        KerasLayer("MaxPooling1D", _pool("MaxPooling1D", "max"), weights=False, params=_no_params, row=_pool_row),
        KerasLayer(
            "AveragePooling1D", _pool("AveragePooling1D", "mean"), weights=False, params=_no_params, row=_pool_row
        ),
        KerasLayer(
            "BatchNormalization", _batch_norm, weights=True, params=_weights_params, row=_plain_row, per_step=True
        ),
        KerasLayer(
            "Normalization", _normalization, weights=True, params=_weights_params, row=_plain_row, per_step=True
        ),
        KerasLayer("LayerNormalization", _layer_norm, weights=True, params=_norm_params, row=_plain_row, per_step=True),
        KerasLayer("UnitNormalization", _unit_norm, weights=False, params=_no_params, row=_plain_row, per_step=True),
        KerasLayer(
            "UpSampling1D",
            _upsampling,
            weights=False,
            params=_no_params,
            row=lambda n: ("UpSampling1D", "", "size=%d" % n.repeat),
        ),
        KerasLayer(
            "ZeroPadding1D",
            _zero_padding,
            weights=False,
            params=_no_params,
            row=lambda n: ("ZeroPadding1D", "", "padding=%s" % (n.pad,)),
        ),
        KerasLayer(
            "Cropping1D",
            _cropping,
            weights=False,
            params=_no_params,
            row=lambda n: ("Cropping1D", "", "cropping=%s" % (n.crop,)),
        ),
        KerasLayer(
            "RepeatVector",
            _repeat_vector,
            weights=False,
            params=_no_params,
            row=lambda n: ("RepeatVector", "", "n=%d" % n.n),
        ),
        KerasLayer("Reshape", _reshape, weights=False, params=_no_params, row=_shape_row),
        KerasLayer("Permute", _permute, weights=False, params=_no_params, row=_shape_row),
    ]
    out += [KerasLayer(cls, _merge(cls), weights=False, params=_no_params, row=_merge_row) for cls in MERGES]
    # the identity at inference (options they may carry)
    identity = {
        "Dropout": {"rate", "noise_shape", "seed"},
        "SpatialDropout1D": {"rate", "noise_shape", "seed"},
        "GaussianNoise": {"stddev", "seed"},
        "GaussianDropout": {"rate", "seed"},
        "AlphaDropout": {"rate", "noise_shape", "seed"},
        "ActivityRegularization": {"l1", "l2"},
        "Identity": set(),
    }
    out += [
        KerasLayer(cls, _identity(cls, opts), weights=False, params=_no_params, row=_plain_row, per_step=True)
        for cls, opts in identity.items()
    ]
    return out


#: Keras class name -> its :class:`KerasLayer`.
LAYERS = {e.name: e for e in _entries()}
#: Layers TimeDistributed cannot wrap: several tensors in, or ids.
_NOT_DISTRIBUTED = MERGE_CLASSES | ARGUMENT_CLASSES | {"Embedding", "Masking"}
#: Keras preprocessing layers of strings (refused with a hint to use ``inputs_from=``).
STRING_PREPROCESSING = frozenset({"TextVectorization", "StringLookup", "Hashing", "HashedCrossing", "IntegerLookup"})
#: Every class a model may hold (``InputLayer`` is read by the loader itself).
SUPPORTED_LAYERS = sorted(set(LAYERS) | {"InputLayer"})


def expects_weights(cls):
    """Whether a saved model holds weights for a layer of class ``cls``."""
    entry = LAYERS.get(cls)
    return entry is not None and entry.weights


def _convert(entry, cfg, w, ctx, name):
    node = entry.convert(cfg, w, ctx, name)
    node.summary_row = tuple(entry.row(node))
    node.num_params = int(entry.params(node))
    return node


def convert_layer(cls, cfg, weights, ctx):
    """Convert one Keras layer through its registry entry.

    Parameters
    ----------
    cls : str
        The Keras ``class_name``.
    cfg : dict
        The layer's ``config``.
    weights : list of (str or None, ndarray)
        Its weights in Keras order.
    ctx : ConvertContext

    Returns
    -------
    A node of :mod:`rnnfast.model_keras`, with ``summary_row`` and ``num_params`` set.

    Raises
    ------
    UnsupportedLayerError
        A class not in :data:`LAYERS`, or an option rnnfast cannot honour.
    FormatError
        Weights that do not fit the config.
    """
    name = cfg.get("name", cls)
    entry = LAYERS.get(cls)
    if entry is None:
        if cls in ("Sequential", "Functional", "Model"):
            raise UnsupportedLayerError(cls, None, "a model nested inside the model (layer %r)" % name)
        if cls == "Lambda":
            raise UnsupportedLayerError(
                cls,
                None,
                "layer %r runs Python code that the file does not hold "
                "(a Lambda's function); rnnfast runs only what a model's config "
                "describes: rebuild the model with built-in layers in place of the "
                "Lambda" % name,
            )
        if cls in STRING_PREPROCESSING:
            raise UnsupportedLayerError(
                cls,
                None,
                "layer %r preprocesses strings, which rnnfast does not "
                "do: run it in Keras (or your own code) and load the model from the "
                "layer after it, e.g. rnnfast.load(path, inputs_from=%r)" % (name, "embedding"),
            )
        raise UnsupportedLayerError(
            cls,
            None,
            "layer %r: not a built-in Keras layer rnnfast knows (a custom "
            "or subclassed layer runs code its config does not describe); "
            "rnnfast supports %s" % (name, ", ".join(SUPPORTED_LAYERS)),
        )
    w = WeightList(name, weights)
    node = _convert(entry, cfg, w, ctx, name)
    w.done()
    return node
