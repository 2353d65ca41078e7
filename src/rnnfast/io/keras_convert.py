"""The shared machinery of the Keras converters: a Keras layer's config and weights to
a model node (:mod:`rnnfast.model_keras`), with the options, dtype policies,
activations and weight lists checked the same way for every class.

The registry of Keras classes, which says which converter, summary row and parameter
count each class has, is :mod:`rnnfast.io.keras_layers`; the converters of the layers
with canonical weights (recurrent layers and their wrappers, Dense, Embedding) are here.

Input: a layer's ``class_name`` and ``config`` dict (as Keras 2, tf.keras and Keras 3
serialize them) and its weights as a list of ``(name or None, array)`` in Keras'
weight order (``layer.get_weights()``; the HDF5 ``weight_names`` order); output: a
node of :mod:`rnnfast.model_keras` holding canonical layers.

Keras weight layouts (gate order is the canonical one, so no reordering):

===========  ==========================================================  ============
cell         weights, in order                                           canonical
===========  ==========================================================  ============
GRU          kernel (I, 3H), recurrent_kernel (H, 3H), bias: (2, 3H)     bias = b[0],
             with ``reset_after`` (input row, recurrent row), else (3H,)  recurrent_bias = b[1]
LSTM         kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)        as is
SimpleRNN    kernel (I, H), recurrent_kernel (H, H), bias (H,)           as is
Dense        kernel (I, N), bias (N,)
Embedding    embeddings (input_dim, output_dim)
===========  ==========================================================  ============

``Bidirectional`` holds the forward layer's weights, then the backward layer's;
``RNN(StackedRNNCells)`` each cell's in turn; ``TimeDistributed`` its inner layer's.

Every option that changes what a layer computes is honoured or refused with
:class:`~rnnfast.UnsupportedLayerError`; options that only matter for training are
ignored (listed per layer below); an option this module does not know is refused
unless its value is empty (None, False, 0, "").
"""

import numpy as np

from .. import cells
from ..errors import FormatError, UnsupportedLayerError
from ..layers import ACTIVATIONS, CellWeights, Dense, RNNLayer
from ..model_keras import KERAS_ACTIVATIONS, BidirectionalNode, DenseNode, EmbeddingNode, RecurrentNode

__all__ = [
    "ConvertContext",
    "WeightList",
    "check_options",
    "resolve_dtype",
    "resolve_activation",
    "RECURRENT_CLASSES",
    "CELL_CLASSES",
    "recurrent",
    "CUDNN_CLASSES",
    "cudnn_weights",
    "bidirectional",
    "dense",
    "embedding",
]

#: Options every layer may carry that do not change inference.
_COMMON = {
    "name",
    "trainable",
    "dtype",
    "batch_input_shape",
    "batch_shape",
    "input_shape",
    "input_dim",
    "input_length",
    "build_config",
    "registered_name",
    "module",
    "activity_regularizer",
    "autocast",
}
_TRAINING_ONLY = {
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "embeddings_initializer",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "embeddings_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "embeddings_constraint",
    "dropout",
    "recurrent_dropout",
    "seed",
    "implementation",
    "unit_forget_bias",
    "unroll",
    "use_cudnn",
    # convolutions and normalisations
    "depthwise_initializer",
    "pointwise_initializer",
    "depthwise_regularizer",
    "pointwise_regularizer",
    "depthwise_constraint",
    "pointwise_constraint",
    "activity_regularizer",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "momentum",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
    "virtual_batch_size",
    "adjustment",
    "fused",
    "synchronized",
}
_RNN_LAYER_OPTIONS = {
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "zero_output_for_mask",
    "time_major",
}
_CELL_OPTIONS = {"units", "activation", "recurrent_activation", "use_bias", "reset_after"}

#: Keras recurrent layer classes and cell classes -> rnnfast cell names (cell registry).
RECURRENT_CLASSES = {c.keras_layer: c.name for c in cells.CELLS.values() if c.keras_layer}
CELL_CLASSES = {c.keras_cell: c.name for c in cells.CELLS.values() if c.keras_cell}

#: Activation names whose Keras 2 meaning is the one implemented (Keras 2 and tf.keras
#: know no others by name; ``hard_sigmoid`` is mapped to ``hard_sigmoid_keras2``).
_KERAS2_ACTIVATIONS = {
    "linear",
    "relu",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "gelu",
    "tanh",
    "sigmoid",
    "exponential",
    "hard_sigmoid",
    "softmax",
    "mish",
    "relu6",
    "log_softmax",
    "leaky_relu",
}
_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}


class ConvertContext:
    """What a conversion needs beyond one layer: the Keras major version that wrote the
    model (activation meanings) and the ``dtype`` override of :func:`rnnfast.load`."""

    def __init__(self, keras_version, dtype=None):
        self.keras_version = str(keras_version)
        self.keras_major = _major(self.keras_version)
        if dtype is not None:
            dt = np.dtype(dtype)
            if dt not in (np.float32, np.float64):
                raise ValueError("dtype must be float32 or float64, got %s" % dt)
            dtype = dt
        self.dtype = dtype


def _major(version):
    digits = ""
    for ch in version:
        if not ch.isdigit():
            break
        digits += ch
    if not digits:
        raise FormatError("unreadable keras_version %r" % version)
    return int(digits)


# -- options ------------------------------------------------------------------------


def check_options(cls, cfg, handled):
    """Refuse any option of ``cfg`` that is neither handled, nor known to be
    training-only, nor empty."""
    for key, value in cfg.items():
        if key in handled or key in _COMMON or key in _TRAINING_ONLY:
            continue
        if value in (None, False, 0, "", [], {}):
            continue
        raise UnsupportedLayerError(cls, key, "value %r: rnnfast does not know this option" % (value,))


def resolve_dtype(cls, cfg, ctx):
    """The compute dtype of a layer: ``ctx.dtype`` if given, else its dtype policy
    (float32 or float64; other policies are refused)."""
    policy = cfg.get("dtype")
    name = _policy_name(policy)
    if name is not None and ("int8" in name or "int4" in name or "float8" in name or name.startswith("gptq")):
        raise UnsupportedLayerError(cls, "dtype", "quantized dtype policy %r" % name)
    if ctx.dtype is not None:
        return ctx.dtype
    if name in (None, "float32"):
        return np.dtype(np.float32)
    if name == "float64":
        return np.dtype(np.float64)
    raise UnsupportedLayerError(
        cls,
        "dtype",
        "dtype policy %r (rnnfast computes in float32 or float64; pass dtype= to load() to choose one)" % name,
    )


def _policy_name(policy):
    if policy is None or isinstance(policy, str):
        return policy
    if isinstance(policy, dict):
        inner = policy.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            return inner["name"]
        if isinstance(inner, str):
            return inner
    return repr(policy)


def resolve_activation(cls, option, value, ctx, *, recurrent):
    """Map a serialized Keras activation to an rnnfast activation name, with the
    meaning it had in the Keras version that wrote the model."""
    if value is None:
        return "linear"
    if isinstance(value, dict):
        # Keras 3 may write a built-in function as {"class_name": "function", "config": "tanh"}
        if (
            value.get("class_name") == "function"
            and isinstance(value.get("config"), str)
            and str(value.get("module", "keras")).startswith("keras")
        ):
            value = value["config"]
        else:
            raise UnsupportedLayerError(cls, option, "custom activation %r" % (value.get("class_name"),))
    if not isinstance(value, str):
        raise UnsupportedLayerError(cls, option, "activation %r" % (value,))
    name = value
    if ctx.keras_major < 3:
        if name not in _KERAS2_ACTIVATIONS:
            raise UnsupportedLayerError(cls, option, "activation %r of Keras %s" % (name, ctx.keras_version))
        if name == "hard_sigmoid":
            name = "hard_sigmoid_keras2"
    name = _ALIASES.get(name, name)
    if recurrent:
        if name not in ACTIVATIONS:
            raise UnsupportedLayerError(
                cls,
                option,
                "activation %r in a recurrent layer (supported: %s)" % (value, ", ".join(sorted(ACTIVATIONS))),
            )
    elif name not in ACTIVATIONS and name not in KERAS_ACTIVATIONS:
        raise UnsupportedLayerError(cls, option, "activation %r" % (value,))
    return name


# -- weights --------------------------------------------------------------------------


class WeightList:
    """A layer's weights in Keras order, taken one by one and checked by name (when the
    file names them) and shape."""

    def __init__(self, layer_name, items):
        self.layer_name = layer_name
        self.items = list(items)
        self.pos = 0

    def take(self, expected, shape, also=()):
        """The next weight, named ``expected`` (or one of ``also``: names other Keras
        versions give it) when the file names it, of ``shape``."""
        if self.pos >= len(self.items):
            raise FormatError(
                "layer %r: weight %r is missing (%d weights found for the layer)"
                % (self.layer_name, expected, len(self.items))
            )
        name, arr = self.items[self.pos]
        self.pos += 1
        if name is not None:
            base = str(name).rsplit("/", 1)[-1].split(":", 1)[0]
            if base != expected and base not in also:
                raise FormatError("layer %r: expected weight %r, found %r" % (self.layer_name, expected, name))
        # shape and dtype first: a weight still in the file is read only once they fit
        if tuple(np.shape(arr)) != tuple(shape):
            raise FormatError(
                "layer %r: weight %r has shape %s, expected %s"
                % (self.layer_name, expected, tuple(np.shape(arr)), tuple(shape))
            )
        dtype = getattr(arr, "dtype", None)
        if dtype is not None and not np.issubdtype(dtype, np.floating):
            raise FormatError(
                "layer %r: weight %r has dtype %s, expected floating point" % (self.layer_name, expected, dtype)
            )
        arr = np.asarray(arr)
        if not np.issubdtype(arr.dtype, np.floating):
            raise FormatError(
                "layer %r: weight %r has dtype %s, expected floating point" % (self.layer_name, expected, arr.dtype)
            )
        return arr

    def take_any(self, expected):
        """The next weight whatever its shape and dtype (Normalization's ``count``)."""
        if self.pos >= len(self.items):
            raise FormatError("layer %r: weight %r is missing" % (self.layer_name, expected))
        name, arr = self.items[self.pos]
        self.pos += 1
        return np.asarray(arr)

    def peek_shape(self):
        """The shape of the next weight (None when there is none)."""
        return tuple(np.shape(self.items[self.pos][1])) if self.pos < len(self.items) else None

    def done(self):
        if self.pos != len(self.items):
            raise FormatError(
                "layer %r: %d weights found, the layer's config uses %d" % (self.layer_name, len(self.items), self.pos)
            )


# -- the layers with canonical weights ------------------------------------------------------


def _rnn_layer_options(cls, cfg):
    if cfg.get("time_major"):
        raise UnsupportedLayerError(cls, "time_major", "time_major=True")
    return dict(
        return_sequences=bool(cfg.get("return_sequences", False)),
        return_state=bool(cfg.get("return_state", False)),
        go_backwards=bool(cfg.get("go_backwards", False)),
        zero_output_for_mask=bool(cfg.get("zero_output_for_mask", False)),
        stateful=bool(cfg.get("stateful", False)),  # carried between calls: rnnfast.stream
    )


def _cell(cls, kind, cfg, w, ctx):
    """One cell's config and weights -> its CellWeights, its spec (the RNNLayer's
    options, ``cell`` included) and its Keras bias as stored (or None)."""
    cell = cells.get(kind)
    G = cell.num_gates
    units = cfg.get("units")
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise FormatError("%s: units must be a positive integer, got %r" % (cls, units))
    act = resolve_activation(cls, "activation", cfg.get("activation", "tanh"), ctx, recurrent=True)
    ract = None
    if cell.recurrent_activation:
        ract = resolve_activation(
            cls, "recurrent_activation", cfg.get("recurrent_activation", "sigmoid"), ctx, recurrent=True
        )
    reset_after = bool(cfg.get("reset_after", ctx.keras_major >= 3)) if cell.reset_before is not None else True
    use_bias = bool(cfg.get("use_bias", True))
    # input size: from the kernel itself
    if w.pos >= len(w.items):
        raise FormatError("%s %r: weights are missing" % (cls, w.layer_name))
    I = np.shape(w.items[w.pos][1])[0] if np.ndim(w.items[w.pos][1]) == 2 else -1
    kernel = w.take("kernel", (I, G * units))
    rec = w.take("recurrent_kernel", (units, G * units))
    bias = rbias = b = None
    if use_bias:
        if cell.kernel_for(reset_after).bias_apart:  # GRU reset-after: input and recurrent rows
            b = w.take("bias", (2, G * units))
            bias, rbias = b[0], b[1]
        else:
            bias = b = w.take("bias", (G * units,))
    dtype = resolve_dtype(cls, cfg, ctx)
    weights = CellWeights(kernel, rec, bias, rbias)
    spec = dict(reset_after=reset_after, activation=act, recurrent_activation=ract or "sigmoid", dtype=dtype)
    keras_bias = None if b is None else np.array(b, dtype=dtype)
    return weights, dict(spec, cell=kind), keras_bias


#: Keras 2's cuDNN layers -> the layer that computes the same (what Keras 2 itself
#: loads their weights into: ``GRU(reset_after=True, recurrent_activation="sigmoid")``
#: and ``LSTM``; tanh and sigmoid are fixed in cuDNN).
CUDNN_CLASSES = {"CuDNNGRU": "GRU", "CuDNNLSTM": "LSTM"}
_CUDNN_OPTIONS = {"units", "return_sequences", "return_state", "go_backwards", "stateful", "time_major"}


def cudnn_weights(cls, kernel, recurrent_kernel, bias):
    """Keras 2 ``CuDNNGRU`` / ``CuDNNLSTM`` weights -> ``GRU(reset_after=True)`` /
    ``LSTM`` weights, as Keras 2 converts them on load (``_convert_rnn_weights`` in
    keras/engine/saving.py of Keras 2.2-2.3, tf_keras/src/saving/legacy/hdf5_format.py):

    - the kernel (I, G*H), per gate block k (I, H): ``k.T.reshape(k.shape, order="F")``
      (cuDNN's input kernel is stored in the other memory order);
    - the recurrent kernel (H, G*H), per gate block: transposed;
    - GRU: the bias (6H,) is the input bias then the recurrent bias: ``reshape(2, 3H)``,
      GRU(reset_after=True)'s two rows; LSTM: the bias (8H,) is two halves that cuDNN
      adds: their sum (4H,).

    The gate order is Keras' (z, r, h; i, f, c, o) in both: no reordering."""
    G = 3 if cls == "CuDNNGRU" else 4
    kernel, recurrent_kernel, bias = (np.asarray(a) for a in (kernel, recurrent_kernel, bias))
    k = np.hstack([b.T.reshape(b.shape, order="F") for b in np.hsplit(kernel, G)])
    r = np.hstack([b.T for b in np.hsplit(recurrent_kernel, G)])
    if G == 3:
        b = bias.reshape(2, -1)
    else:
        b = np.sum(np.split(bias, 2, axis=0), axis=0)
    return k, r, b


def _cudnn(cls, cfg, w, name):
    """The config and weights of the layer a cuDNN layer computes as."""
    check_options(cls, cfg, _CUDNN_OPTIONS)
    if _rnn_layer_options(cls, cfg)["stateful"]:  # time_major: refused there, naming the cuDNN class
        raise UnsupportedLayerError(cls, "stateful", "stateful=True on a cuDNN layer")
    units = cfg.get("units")
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise FormatError("%s: units must be a positive integer, got %r" % (cls, units))
    G = 3 if cls == "CuDNNGRU" else 4
    shape = w.peek_shape()
    if shape is None or len(shape) != 2:
        raise FormatError("%s %r: weights are missing" % (cls, name))
    kernel = w.take("kernel", (shape[0], G * units))
    rec = w.take("recurrent_kernel", (units, G * units))
    bias = w.take("bias", (2 * G * units,))
    k, r, b = cudnn_weights(cls, kernel, rec, bias)
    target = CUDNN_CLASSES[cls]
    new = {key: cfg[key] for key in _CUDNN_OPTIONS | {"name", "dtype", "trainable"} if key in cfg}
    new.update(units=units, activation="tanh", recurrent_activation="sigmoid", use_bias=True)
    if target == "GRU":
        new["reset_after"] = True
    source = int(kernel.size + rec.size + bias.size)
    return target, new, WeightList(name, [(None, k), (None, r), (None, b)]), source


def recurrent(cls, cfg, w, ctx, name, *, force_zero_output=None):
    """GRU / LSTM / SimpleRNN / RNN(cell) -> (RecurrentNode, [(CellWeights, spec)] per
    cell: what a Bidirectional needs to fuse two of them)."""
    make_node, parts = recurrent_parts(cls, cfg, w, ctx, name, force_zero_output=force_zero_output)
    return make_node([_layer(weights, spec) for weights, spec in parts]), parts


def recurrent_parts(cls, cfg, w, ctx, name, *, force_zero_output=None):
    """A recurrent layer read but not built: ``(make_node, parts)``, where
    ``make_node(rnn_layers)`` makes its RecurrentNode from one RNNLayer per cell and
    ``parts`` holds each cell's ``(CellWeights, spec)`` (``spec`` the RNNLayer's options,
    ``cell`` and ``go_backwards`` included). A Bidirectional builds one two-direction
    layer from both parts and gives each node a view of its direction: each weight is
    converted once. Keras 2's CuDNNGRU / CuDNNLSTM become the GRU / LSTM they compute
    as (:func:`cudnn_weights`)."""
    if cls in CUDNN_CLASSES:
        target, cfg2, w2, source = _cudnn(cls, cfg, w, name)
        make_target, parts = recurrent_parts(target, cfg2, w2, ctx, name, force_zero_output=force_zero_output)
        w2.done()

        def make_cudnn_node(layers):
            node = make_target(layers)
            node.keras_class = cls
            node.rnn_layers[0].source_parameters = source  # as Keras counts them (cuDNN's two biases)
            return node

        return make_cudnn_node, parts
    opts = _rnn_layer_options(cls, cfg)
    if force_zero_output is not None:
        opts["zero_output_for_mask"] = force_zero_output
    resolve_dtype(cls, cfg, ctx)  # refuse unsupported policies on the layer too
    if cls in RECURRENT_CLASSES:
        check_options(cls, cfg, _RNN_LAYER_OPTIONS | _CELL_OPTIONS)
        cell_list = [(cls, RECURRENT_CLASSES[cls], cfg)]
        stacked = False
    else:
        check_options(cls, cfg, _RNN_LAYER_OPTIONS | {"cell"})
        cell_list, stacked = _rnn_cells(cfg.get("cell"))
    parts, biases = [], []
    for ccls, kind, ccfg in cell_list:
        if ccls in CELL_CLASSES:
            check_options(ccls, ccfg, _CELL_OPTIONS)
        weights, spec, keras_bias = _cell(ccls, kind, ccfg, w, ctx)
        parts.append((weights, dict(spec, go_backwards=opts["go_backwards"])))
        biases.append(keras_bias)

    def make_node(layers):
        return RecurrentNode(name, cls, layers, stacked=stacked, keras_biases=biases, **opts)

    return make_node, parts


def _fusable(forward, backward):
    """Whether two cells' ``(CellWeights, spec)`` make one two-direction layer: the
    same options, a forward and a backward direction, the same weight shapes."""
    (fw, fs), (bw, bs) = forward, backward
    return (
        not fs["go_backwards"]
        and bs["go_backwards"]
        and dict(fs, go_backwards=None) == dict(bs, go_backwards=None)
        and np.shape(fw.kernel) == np.shape(bw.kernel)
        and np.shape(fw.recurrent_kernel) == np.shape(bw.recurrent_kernel)
    )


def _layer(weights, spec):
    spec = dict(spec)
    return RNNLayer(spec.pop("cell"), [weights], **spec)


def _rnn_cells(cell):
    """The cells of ``RNN(cell=...)``: [(class, kind, config)], and whether stacked."""
    if isinstance(cell, list):  # very old configs: a list of cells
        cell = {"class_name": "StackedRNNCells", "config": {"cells": cell}}
    if not isinstance(cell, dict) or "class_name" not in cell:
        raise FormatError("RNN: unreadable cell config %r" % (cell,))
    ccls, ccfg = cell["class_name"], cell.get("config", {})
    if ccls in CELL_CLASSES:
        return [(ccls, CELL_CLASSES[ccls], ccfg)], False
    if ccls == "StackedRNNCells":
        check_options(ccls, ccfg, {"cells"})
        out = []
        for c in ccfg.get("cells", []):
            if not isinstance(c, dict) or c.get("class_name") not in CELL_CLASSES:
                what = c.get("class_name") if isinstance(c, dict) else c
                raise UnsupportedLayerError(
                    "StackedRNNCells", "cells", "cell %r (supported: %s)" % (what, ", ".join(sorted(CELL_CLASSES)))
                )
            out.append((c["class_name"], CELL_CLASSES[c["class_name"]], c.get("config", {})))
        if not out:
            raise FormatError("StackedRNNCells without cells")
        return out, True
    raise UnsupportedLayerError(
        "RNN", "cell", "cell class %r (supported: %s, StackedRNNCells)" % (ccls, ", ".join(sorted(CELL_CLASSES)))
    )


def bidirectional(cfg, w, ctx, name):
    """Keras ``Bidirectional`` around a recurrent layer -> BidirectionalNode."""
    check_options("Bidirectional", cfg, {"layer", "backward_layer", "merge_mode"})
    merge_mode = cfg.get("merge_mode", "concat")
    if merge_mode not in ("concat", "sum", "mul", "ave", None):
        raise UnsupportedLayerError("Bidirectional", "merge_mode", repr(merge_mode))
    inner = cfg.get("layer")
    if not isinstance(inner, dict) or "class_name" not in inner:
        raise FormatError("Bidirectional %r: unreadable inner layer config" % name)
    back = cfg.get("backward_layer")
    if back is None:
        # tf.keras writes no backward_layer when it is the default: the same layer
        # with go_backwards flipped
        back = {
            "class_name": inner["class_name"],
            "config": dict(
                inner.get("config", {}), go_backwards=not inner.get("config", {}).get("go_backwards", False)
            ),
        }
    pending = []
    for sub in (inner, back):
        scls, scfg = sub["class_name"], sub.get("config", {})
        if scls not in RECURRENT_CLASSES and scls != "RNN" and scls not in CUDNN_CLASSES:
            raise UnsupportedLayerError("Bidirectional", "layer", "wrapped layer %s" % scls)
        rs = bool(scfg.get("return_sequences", False))
        # Keras sets zero_output_for_mask = return_sequences on both inner layers
        pending.append(recurrent_parts(scls, scfg, w, ctx, scfg.get("name", scls), force_zero_output=rs))
    (fmake, fp), (bmake, bp) = pending
    fused = None
    if len(fp) == 1 and len(bp) == 1 and _fusable(fp[0], bp[0]):
        # the usual case: one two-direction layer, one compiled call, halves written in
        # place; each direction's node runs a view of it (initial_state calls)
        spec = dict(fp[0][1])
        del spec["go_backwards"]
        fused = RNNLayer(spec.pop("cell"), [fp[0][0], bp[0][0]], **spec)
        fwd, bwd = fmake([fused.direction(0)]), bmake([fused.direction(1, go_backwards=True)])
        # what the source counts (cuDNN LSTM layers hold two biases)
        fused.source_parameters = sum(layer.source_parameters for layer in fwd.rnn_layers + bwd.rnn_layers)
    else:
        fwd, bwd = fmake([_layer(*p) for p in fp]), bmake([_layer(*p) for p in bp])
    for attr in ("return_sequences", "return_state"):
        if getattr(fwd, attr) != getattr(bwd, attr):
            raise FormatError("Bidirectional %r: forward and backward layers differ in %s" % (name, attr))
    if fwd.go_backwards == bwd.go_backwards:
        raise FormatError("Bidirectional %r: forward and backward layers have the same go_backwards" % name)
    if merge_mode in ("sum", "mul", "ave") and fwd.rnn_layers[-1].output_size != bwd.rnn_layers[-1].output_size:
        raise FormatError("Bidirectional %r: merge_mode %r needs equal units" % (name, merge_mode))
    return BidirectionalNode(name, fwd, bwd, merge_mode, fused=fused)


def dense(cfg, w, ctx, name):
    """Keras ``Dense`` -> DenseNode."""
    cls = "Dense"
    for opt in ("quantization_config", "lora_rank"):
        if cfg.get(opt):
            raise UnsupportedLayerError(cls, opt, "%r" % (cfg[opt],))
    check_options(cls, cfg, {"units", "activation", "use_bias", "lora_alpha", "quantization_config", "lora_rank"})
    units = cfg.get("units")
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise FormatError("Dense %r: units must be a positive integer, got %r" % (name, units))
    act = resolve_activation(cls, "activation", cfg.get("activation"), ctx, recurrent=False)
    dtype = resolve_dtype(cls, cfg, ctx)
    if w.pos >= len(w.items) or np.ndim(w.items[w.pos][1]) != 2:
        raise FormatError("Dense %r: kernel missing" % name)
    I = np.shape(w.items[w.pos][1])[0]
    kernel = w.take("kernel", (I, units))
    bias = w.take("bias", (units,)) if cfg.get("use_bias", True) else None
    in_kernel = act in ACTIVATIONS or act == "softmax"
    dense = Dense(kernel, bias, activation=act if in_kernel else "linear", dtype=dtype)
    return DenseNode(name, dense, None if in_kernel else act)


def embedding(cfg, w, ctx, name):
    """Keras ``Embedding`` -> EmbeddingNode."""
    cls = "Embedding"
    for opt in ("quantization_config", "lora_rank"):
        if cfg.get(opt):
            raise UnsupportedLayerError(cls, opt, "%r" % (cfg[opt],))
    check_options(
        cls, cfg, {"input_dim", "output_dim", "mask_zero", "sparse", "lora_alpha", "quantization_config", "lora_rank"}
    )
    n, d = cfg.get("input_dim"), cfg.get("output_dim")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (n, d)):
        raise FormatError("Embedding %r: input_dim and output_dim must be positive integers" % name)
    table = w.take("embeddings", (n, d))
    return EmbeddingNode(name, table, bool(cfg.get("mask_zero", False)), resolve_dtype(cls, cfg, ctx))
