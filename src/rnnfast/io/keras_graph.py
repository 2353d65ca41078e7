"""The Keras frontend of the graph: a Sequential or functional model config (Keras 2,
tf.keras or Keras 3 dialect) and its weights to a :class:`~rnnfast.graph.Graph` of
the nodes of :mod:`rnnfast.model_keras`, wrapped in a :class:`~rnnfast.KerasModel`.

Tensors are keyed ``(layer name, call index, output index)`` as Keras' own
``keras_history`` / inbound-node references name them (the call index counts the
layer's calls inside the model: a shared layer has several). Each layer is converted
once (its weights once); each of its calls is one step of the graph.

What a call may carry:

- one tensor, or a list of tensors (the merges: ``Concatenate``, ``Add``, ``Dot``, ...);
- ``initial_state=`` (recurrent layers and ``Bidirectional``): tensors of the graph;
  in Keras 2 configs the states follow the input in the call's tensor list;
- ``mask=`` (Keras 3 writes the mask it computed as an argument): checked against the
  mask rnnfast propagates, else refused;
- ``training=`` (ignored: inference only).

A model nested as a layer (Sequential or functional, called once or several times)
is inlined: its layers join the graph as ``<model>/<layer>`` (:func:`_inline_models`).

Refused with :class:`~rnnfast.UnsupportedLayerError`: other call arguments, Keras
operations used as layers (``keras.ops`` calls in a functional model), and every class
the registry does not know.
"""

from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedLayerError
from ..graph import FALSE, TRUE, Graph, Step, leaves, map_structure, mask_or
from ..layers import Dense
from ..model_keras import AffineNode, ConvNode, DenseNode, GraphNode, KerasModel, TimeDistributedNode
from ..ops import fold_affine_into
from .keras_convert import RECURRENT_CLASSES, ConvertContext
from .keras_layers import ARGUMENT_CLASSES, MERGE_CLASSES, SUPPORTED_LAYERS, convert_layer

#: Most layers in a model config (each costs up to a millisecond to load; a chain of
#: recurrent layers has a handful).
MAX_LAYERS = 10000

__all__ = ["build_model", "MAX_PROBE_VALUES"]

#: The most values per sample a declared input shape may hold (the load-time probe
#: allocates one sample of it).
MAX_PROBE_VALUES = 1 << 24
#: Steps of the load-time probe when the model declares no length.
PROBE_STEPS = 16
PROBE_MAX_STEPS = 1024

_MODEL_CLASSES = ("Sequential", "Functional", "Model")


class _Call:
    """One call of a layer: its tensor arguments (keys), whether they came as a list
    (a merge), its ``initial_state`` keys and its explicit ``mask=`` key."""

    def __init__(self):
        self.inputs = []
        self.as_list = False
        self.states = []
        self.mask = None
        self.args = []  # Keras 3: the positional arguments (operations)
        self.kwargs = {}  # other (non-tensor) keyword arguments of the call
        self.tensor_kwargs = {}  # tensors given by keyword (MultiHeadAttention's key=, attention_mask=)
        self.input_shape = None  # Keras 3: the declared shape of the first tensor


class _Entry:
    def __init__(self, name, cls, cfg, module=None):
        self.name, self.cls, self.cfg = name, cls, cfg
        self.module = module or ""
        self.calls = []
        # a layer of a nested model: its weights getter and its name inside that model
        self.getter = None
        self.local = None


def build_model(model_config, weights, keras_version, *, dtype=None, source=None, inputs_from=None):
    """Build a :class:`~rnnfast.KerasModel` from a model config and a weights getter.

    Parameters
    ----------
    model_config : dict
        ``{"class_name": "Sequential" | "Functional" | "Model", "config": {...}}``.
    weights : callable
        ``weights(layer_name, class_name, config)`` -> [(name or None, ndarray)] in
        Keras' order; may have ``bind(entries)``.
    keras_version : str
        The version that wrote the model (``hard_sigmoid`` means what it meant there).
    dtype : optional
        Compute dtype override.
    inputs_from : str, optional
        Start the model at this layer: its input becomes the model's input (the layers
        before it, e.g. string preprocessing rnnfast cannot run, are left out).
    """
    ctx = ConvertContext(keras_version, dtype)
    if not isinstance(model_config, dict):
        raise FormatError("the model config is not a JSON object")
    cls = model_config.get("class_name")
    cfg = model_config.get("config")
    layers = cfg if isinstance(cfg, list) else cfg.get("layers") if isinstance(cfg, dict) else None
    if isinstance(layers, list) and len(layers) > MAX_LAYERS:
        raise FormatError("the model has %d layers (rnnfast loads at most %d)" % (len(layers), MAX_LAYERS))
    if cls == "Sequential":
        entries, inputs, outputs = _sequential(cfg)
    elif cls in ("Functional", "Model"):
        entries, inputs, outputs = _functional(cfg)
    else:
        raise UnsupportedLayerError(
            cls,
            None,
            "model class %r: rnnfast loads Sequential and functional "
            "models (a subclassed model has no config to follow)" % (cls,),
        )
    if inputs_from is not None:
        inputs = _cut_at(entries, inputs, inputs_from)
        if outputs is None:  # Sequential: the last layer's outputs
            last = [e for e in entries.values() if e.calls and e.cls != "InputLayer"][-1]
            outputs = map_structure(lambda i: (last.name, 0, i), 0)
    if hasattr(weights, "bind"):
        weights.bind([(e.name, e.cls) for e in entries.values()])
    if any(e.cls in _MODEL_CLASSES for e in entries.values()):
        entries, inputs, outputs = _inline_models(entries, inputs, outputs, weights, ctx, cls == "Sequential")

    order = _execution_order(entries, inputs, outputs)
    if inputs_from is not None:
        read = {
            k for e, c in order for k in e.calls[c].inputs + e.calls[c].states + list(e.calls[c].tensor_kwargs.values())
        }
        inputs = [k for k in inputs if k in read]
    nodes: dict[str, Any] = {}  # layer name -> its node (model_keras' node classes)
    steps = []
    for e, c in order:
        node = nodes.get(e.name)
        if node is None:
            if e.module.startswith("keras.src.ops") or e.module.startswith("keras.ops"):
                raise UnsupportedLayerError(
                    e.cls,
                    None,
                    "%r is a keras.ops operation used in the model's "
                    "graph: rnnfast runs Keras layers only (use the matching "
                    "layer, e.g. keras.layers.Add)" % e.name,
                )
            # (an unsupported class is refused by convert_layer before its weights matter)
            getter = e.getter or weights
            if _distributes_model(e):
                node = nodes[e.name] = _distributed_model(e, getter, ctx)
            else:
                w = getter(e.local or e.name, e.cls, e.cfg) if e.cls in SUPPORTED_LAYERS else []
                layer_cfg = e.cfg if e.local is None else dict(e.cfg, name=e.name)
                node = nodes[e.name] = convert_layer(e.cls, layer_cfg, w, ctx)
        call = e.calls[c]
        multi = getattr(node, "multi_input", False)
        options = {}
        call_inputs = call.inputs
        names = getattr(node, "tensor_arguments", None)
        if names is not None:
            call_inputs, options["arguments"] = _bind_arguments(e, call, names)
        elif call.tensor_kwargs:
            k = next(iter(call.tensor_kwargs))
            raise UnsupportedLayerError(e.cls, k, "layer %r is called with a tensor as %s=" % (e.name, k))
        if names is None and multi and not call.as_list:
            raise UnsupportedLayerError(e.cls, None, "layer %r takes a list of tensors" % e.name)
        if not multi and (call.as_list or len(call.inputs) != 1):
            raise UnsupportedLayerError(
                e.cls, None, "layer %r takes %d tensors: rnnfast runs it on one" % (e.name, len(call.inputs))
            )
        if call.states and not hasattr(node, "num_states"):
            if not hasattr(node, "forward_node"):
                raise UnsupportedLayerError(e.cls, "initial_state", "layer %r is called with initial_state=" % e.name)
        if call.states:
            want = (
                node.num_states
                if hasattr(node, "num_states")
                else node.forward_node.num_states + node.backward_node.num_states
            )
            if len(call.states) != want:
                raise FormatError("layer %r is given %d initial states, it has %d" % (e.name, len(call.states), want))
        supported = getattr(node, "call_options", {})
        for k, v in call.kwargs.items():
            if k not in supported:
                raise UnsupportedLayerError(e.cls, k, "layer %r is called with %s=%r" % (e.name, k, v))
            if k == "return_attention_scores" and v:
                raise UnsupportedLayerError(e.cls, k, "layer %r is called with return_attention_scores=True" % e.name)
            options[k] = bool(v)
        if call.states and ctx.keras_major >= 3 and call.mask is None:
            # Keras 3 fills in a layer's mask only when it is called on one tensor: with
            # initial_state= the layer runs unmasked (its output still carries the mask)
            options["use_mask"] = False
        steps.append(
            Step(
                node,
                call_inputs,
                [(e.name, c, i) for i in range(node.num_outputs)],
                states=call.states,
                options=options,
            )
        )

    # outputs: Sequential gives the last layer's outputs in its own nesting
    if outputs is None:
        if not order:
            raise FormatError("the model has no layers")
        last = order[-1][0]
        outputs = map_structure(lambda i: (last.name, 0, i), nodes[last.name].structure)
        for e, _ in order[:-1]:
            if nodes[e.name].num_outputs > 1:
                raise UnsupportedLayerError(
                    e.cls, "return_state", "a layer with several outputs (%r) inside a Sequential" % e.name
                )
    flat = leaves(outputs)
    input_names = {k[0] for k in inputs}
    for key in flat:
        if key[0] not in input_names and key[2] >= nodes[key[0]].num_outputs:
            raise FormatError(
                "model output %r: layer %r has only %d outputs" % (key[0], key[0], nodes[key[0]].num_outputs)
            )
    if len(flat) == 1:
        outputs = flat[0]
    elif ctx.keras_major < 3:
        outputs = flat  # Keras 2 returns a flat list

    _check_masks(steps, order, inputs, entries)
    if FOLD_BATCH_NORM:
        fold_batch_norms(steps, flat)
    specs = _input_specs(entries, inputs, steps, ctx)
    name = (cfg.get("name") if isinstance(cfg, dict) else None) or cls.lower()
    graph = Graph(steps, inputs, outputs)
    model = KerasModel(graph, inputs=specs, name=name, keras_version=ctx.keras_version, source=source)
    _check_shapes(model)
    return model


def _distributes_model(e):
    inner = e.cfg.get("layer") if e.cls == "TimeDistributed" and isinstance(e.cfg, dict) else None
    return isinstance(inner, dict) and inner.get("class_name") in _MODEL_CLASSES


def _distributed_model(e, getter, ctx):
    """``TimeDistributed(model)``: the wrapped model built as a model of its own (its
    weights through ``getter.distributed``), run on each step's slice."""
    inner = e.cfg["layer"]
    if not hasattr(getter, "distributed"):
        raise UnsupportedLayerError("TimeDistributed", "layer", "layer %r wraps a model" % e.name)
    sub = getter.distributed(e.local or e.name, inner.get("class_name"), inner.get("config"))
    model = build_model(inner, sub, ctx.keras_version, dtype=ctx.dtype, source="TimeDistributed %r" % e.name)
    node = TimeDistributedNode(e.name, GraphNode(model.name, model), per_step=False)
    node.summary_row = ("TimeDistributed(%s)" % inner.get("class_name"), "", "model %r" % model.name)
    node.num_params = model.count_params()
    return node


def _bind_arguments(e, call, names):
    """The tensors of a call of a layer that takes them as separate arguments (by
    position, then by name): their keys in the order of ``names``, and the names given."""
    if call.as_list:
        raise UnsupportedLayerError(e.cls, None, "layer %r is called on a list of tensors" % e.name)
    if len(call.inputs) > len(names):
        raise UnsupportedLayerError(e.cls, None, "layer %r is called with %d tensors" % (e.name, len(call.inputs)))
    given = dict(zip(names, call.inputs))
    for k, ref in call.tensor_kwargs.items():
        if k not in names:
            raise UnsupportedLayerError(e.cls, k, "layer %r is called with a tensor as %s=" % (e.name, k))
        if k in given:
            raise FormatError("layer %r is given %s twice" % (e.name, k))
        given[k] = ref
    order = tuple(n for n in names if n in given)
    return [given[n] for n in order], order


#: Fold each BatchNormalization into the Dense / Conv1D before it where that is exact
#: (see :func:`fold_batch_norms`); False keeps them apart (tests compare the two).
FOLD_BATCH_NORM = True


def fold_batch_norms(steps, outputs):
    """Fold a ``BatchNormalization`` (an affine ``y * a + b`` per channel at inference)
    into the ``Dense`` or ``Conv1D`` / ``SeparableConv1D`` / ``DepthwiseConv1D`` whose
    output it alone reads: ``kernel * a``, ``bias * a + b`` (:func:`rnnfast.ops.fold_affine_into`,
    in float64, then cast). Legal when the layer has no activation (a linear output),
    works channels-last, and neither op is shared (one call each) and the layer's output
    is not a model output. The batch normalisation's node stays in the model (summary,
    parameters, ``get_weights`` as Keras has them) and passes its input on.

    The folded model computes the same function; in float32 the results differ from the
    two ops in turn by rounding (a few ulp, far inside the float32 tolerance)."""
    producer: dict = {}
    readers: dict = {}
    calls: dict[int, int] = {}
    for step in steps:
        calls[id(step.op)] = calls.get(id(step.op), 0) + 1
        for k in step.outputs:
            producer[k] = step
        for k in step.inputs + step.states:
            readers.setdefault(k, []).append(step)
    outs = set(outputs)
    for step in steps:
        bn = step.op
        if not (isinstance(bn, AffineNode) and bn.keras_class == "BatchNormalization" and bn.folded_into is None):
            continue
        src = producer.get(step.inputs[0])
        if (
            src is None
            or getattr(bn, "positive_axis", None) not in (None, 2)
            or calls[id(bn)] != 1
            or calls[id(src.op)] != 1
            or len(readers.get(step.inputs[0], [])) != 1
            or step.inputs[0] in outs
            or src.op.dtype != bn.dtype
        ):
            continue
        op = src.op
        axis = getattr(bn, "positive_axis", None)  # (Keras 2 writes the last axis as 2 or 1)
        if isinstance(op, DenseNode) and op.activation is None and op.dense.activation == "linear" and axis is None:
            if op.dense.kernel.shape[1] != bn.scale.size:
                continue
            k, b = fold_affine_into(op.dense.kernel, op.dense.bias, bn.scale, bn.shift)
            op.source_weights = op.get_weights()
            op.dense = Dense(k, b, activation="linear", dtype=op.dense.dtype)
        elif isinstance(op, ConvNode) and op.activation == "linear" and not op.channels_first:
            attr = "kernel" if op.kernel is not None else "depthwise"
            kernel = getattr(op, attr)
            if kernel.shape[-1] != bn.scale.size:
                continue
            k, b = fold_affine_into(kernel, op.bias, bn.scale, bn.shift)
            setattr(op, attr, np.ascontiguousarray(k, dtype=op.dtype))
            op.bias = np.asarray(b, dtype=op.dtype)
        else:
            continue
        bn.folded_into = op.name


#: Deepest nesting of models inside models.
MAX_MODEL_DEPTH = 32


def _inline_models(entries, inputs, outputs, getter, ctx, sequential, depth=0):
    """Replace each model used as a layer (a Sequential or functional model nested in
    the model, called once or several times) by its layers, named
    ``<model>/<layer>``: each call of the nested model becomes calls of its layers on
    that call's tensors (a layer called k times inside it gets k calls per call of the
    model), so a nested model called twice shares its weights as Keras does. Its layers
    read their weights through ``getter.nested(model, ...)``.

    Keras 2 configs number a nested model's calls from 1 when the model was built on
    an Input (its call 0 is its own construction, left out of the config: tf.keras'
    ``_should_skip_first_node``); Keras 3 from 0.

    Returns (entries, inputs, outputs), with every reference to a nested model's
    output resolved to the layer output it is."""
    if depth > MAX_MODEL_DEPTH:
        raise FormatError("models nested more than %d deep" % MAX_MODEL_DEPTH)
    alias = {}
    new = {}
    for name, e in entries.items():
        if e.cls not in _MODEL_CLASSES:
            new[name] = e
            continue
        if not hasattr(getter, "nested"):
            raise UnsupportedLayerError(e.cls, None, "a model nested inside the model (layer %r)" % name)
        cfg = e.cfg
        if e.cls == "Sequential":
            sub, sub_inputs, sub_outputs = _sequential(cfg)
        else:
            sub, sub_inputs, sub_outputs = _functional(cfg)
        sub_getter = getter.nested(name, e.cls, cfg)
        if hasattr(sub_getter, "bind"):
            sub_getter.bind([(x.name, x.cls) for x in sub.values()])
        sub_seq = sub_outputs is None
        if sub_seq:
            last = [x for x in sub.values() if x.cls != "InputLayer"]
            if not last:
                raise FormatError("nested model %r has no layers" % name)
            sub_outputs = (last[-1].name, 0, 0)
        if any(x.cls in _MODEL_CLASSES for x in sub.values()):
            sub, sub_inputs, sub_outputs = _inline_models(
                sub, sub_inputs, sub_outputs, sub_getter, ctx, False, depth + 1
            )
        layers = cfg.get("layers") if isinstance(cfg, dict) else cfg
        first = layers[0] if isinstance(layers, list) and layers else {}
        offset = 1 if ctx.keras_major < 3 and isinstance(first, dict) and first.get("class_name") == "InputLayer" else 0
        inner = [x for x in sub.values() if x.name not in {k[0] for k in sub_inputs} and x.cls != "InputLayer"]
        copies = {}
        for x in inner:
            c = copies[x.name] = _Entry("%s/%s" % (name, x.name), x.cls, x.cfg, x.module)
            # (a layer of a model nested deeper keeps its own getter and name there)
            c.getter, c.local = (x.getter, x.local) if x.getter is not None else (sub_getter, x.name)
            new[c.name] = c
        for ci, call in enumerate(e.calls):
            # (an explicit mask= is the one its input carries in, which rnnfast passes on)
            if call.states or call.kwargs or call.tensor_kwargs:
                raise UnsupportedLayerError(
                    e.cls, None, "nested model %r is called with arguments other than its inputs" % name
                )
            if len(call.inputs) != len(sub_inputs):
                raise FormatError(
                    "nested model %r takes %d inputs, is called on %d" % (name, len(sub_inputs), len(call.inputs))
                )
            feed = dict(zip(sub_inputs, call.inputs))

            def mapped(k, ci=ci, feed=feed, copies=copies, name=name, sub=sub):
                if k in feed:
                    return feed[k]
                if k[0] not in copies:
                    raise FormatError("nested model %r: unknown layer %r" % (name, k[0]))
                return ("%s/%s" % (name, k[0]), ci * len(sub[k[0]].calls) + k[1], k[2])

            for x in inner:
                for call_x in x.calls:
                    copies[x.name].calls.append(_mapped_call(call_x, mapped))
            for t, k in enumerate(leaves(sub_outputs)):
                alias[(name, ci + offset, t)] = mapped(k)
    for e in new.values():
        for i, call in enumerate(e.calls):
            e.calls[i] = _mapped_call(call, lambda k: _resolve(alias, k))
    outputs = None if outputs is None else map_structure(lambda k: _resolve(alias, k), outputs)
    if sequential and outputs is None:
        last = [x for x in entries.values() if x.cls != "InputLayer"]
        if last and last[-1].cls in _MODEL_CLASSES:
            outputs = _resolve(alias, (last[-1].name, 0, 0))
    return new, inputs, outputs


def _resolve(alias, k):
    seen = 0
    while k in alias:
        k = alias[k]
        seen += 1
        if seen > 10000:
            raise FormatError("a cycle through nested models")
    return k


def _mapped_call(call, fn):
    """A copy of ``call`` with every tensor key passed through ``fn``."""
    out = _Call()
    out.inputs = [fn(k) for k in call.inputs]
    out.as_list = call.as_list
    out.states = [fn(k) for k in call.states]
    if isinstance(call.mask, list):
        out.mask = [None if k is None else fn(k) for k in call.mask]
    else:
        out.mask = None if call.mask is None else fn(call.mask)
    out.args = [
        fn(a)
        if isinstance(a, tuple)
        else [fn(k) for k in a]
        if isinstance(a, list) and a and isinstance(a[0], tuple)
        else a
        for a in call.args
    ]
    out.kwargs = dict(call.kwargs)
    out.tensor_kwargs = {k: fn(v) for k, v in call.tensor_kwargs.items()}
    out.input_shape = call.input_shape
    return out


def _cut_at(entries, inputs, layer):
    """Make ``layer``'s input tensor a new model input (``inputs_from=``)."""
    e = entries.get(layer)
    if e is None or e.cls == "InputLayer":
        raise ValueError(
            "inputs_from=%r: no such layer in the model (layers: %s)"
            % (layer, ", ".join(n for n, x in entries.items() if x.cls != "InputLayer"))
        )
    if len(e.calls) != 1 or len(e.calls[0].inputs) != 1:
        raise ValueError("inputs_from=%r: the layer must be called once on one tensor" % layer)
    name = "%s_input" % layer
    while name in entries:
        name += "_"
    shape = e.calls[0].input_shape
    cfg = {"batch_shape": list(shape) if shape is not None else None}
    entries[name] = _Entry(name, "InputLayer", cfg)
    entries[name].alias_of = e.calls[0].inputs[0]  # masks computed from it stay comparable
    e.calls[0].inputs = [(name, 0, 0)]
    return [(name, 0, 0)] + list(inputs)


def _check_shapes(model):
    """Run the model once on one all-zero sample (of the declared or a probe length),
    so that layers whose weights do not fit together are a FormatError at load, not a
    ValueError at the first call."""
    probe = []
    for spec in model._inputs:
        shape = spec["shape"]
        if any(d is None for d in shape[2:]) or (len(shape) == 2 and not spec["integer"] and shape[1] is None):
            return  # features unknown: the first call checks them
        dims = [1] + [1 if d is None else d for d in shape[1:]]
        values = int(np.prod(dims, dtype=np.float64))
        if values > MAX_PROBE_VALUES:
            raise FormatError(
                "%r declares input of shape %s: %d values per sample (at most %d)"
                % (model.name, _shape_text(shape), values, MAX_PROBE_VALUES)
            )
        if (len(shape) >= 3 or spec["integer"]) and shape[1] is None:
            # a free length: the declared one (at most PROBE_MAX_STEPS), else PROBE_STEPS
            # (enough for the usual convolutions and poolings), within MAX_PROBE_VALUES
            declared = spec["declared"][1]
            steps = min(declared, PROBE_MAX_STEPS) if declared is not None else PROBE_STEPS
            dims[1] = max(1, min(steps, MAX_PROBE_VALUES // values))
        probe.append(np.zeros(dims, dtype=np.int64 if spec["integer"] else spec["dtype"]))
    try:
        model._predict_from_zero(probe if len(probe) > 1 else probe[0], num_threads=1)  # no carried state
    except ValueError as e:
        raise FormatError("the layers of %r do not fit together: %s" % (model.name, e)) from None


def _shape_text(shape):
    return "(%s)" % ", ".join("batch" if i == 0 else ("any" if d is None else str(d)) for i, d in enumerate(shape))


def _layer_entry_name(item):
    cfg = item.get("config") if isinstance(item.get("config"), dict) else {}
    return item.get("name") or cfg.get("name")


# -- Sequential ------------------------------------------------------------------------------


def _sequential(cfg):
    layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers")
    if not isinstance(layers, list):
        raise FormatError("Sequential config has no layer list")
    entries = {}
    items = [l for l in layers if isinstance(l, dict)]
    if len(items) != len(layers):
        raise FormatError("Sequential config: unreadable layer entries")
    if items and items[0].get("class_name") == "InputLayer":
        first = items.pop(0)
        icfg = first.get("config", {})
        input_entry = _Entry(_layer_entry_name(first) or "input", "InputLayer", icfg)
    else:
        icfg = {}
        first_cfg = items[0].get("config", {}) if items else {}
        for key in ("batch_shape", "batch_input_shape"):
            if first_cfg.get(key) is not None:
                icfg = {"batch_shape": first_cfg[key], "dtype": _policy_str(first_cfg.get("dtype"))}
        if not icfg and isinstance(cfg, dict) and cfg.get("build_input_shape") is not None:
            icfg = {"batch_shape": cfg["build_input_shape"]}
        input_entry = _Entry("__input__", "InputLayer", icfg)
    entries[input_entry.name] = input_entry
    prev = (input_entry.name, 0, 0)
    for item in items:
        name = _layer_entry_name(item)
        if not name or name in entries:
            raise FormatError("Sequential config: missing or repeated layer name %r" % (name,))
        e = _Entry(name, item.get("class_name"), item.get("config", {}), item.get("module"))
        call = _Call()
        call.inputs = [prev]
        e.calls.append(call)
        entries[name] = e
        prev = (name, 0, 0)
    return entries, [(input_entry.name, 0, 0)], None


def _policy_str(policy):
    if isinstance(policy, dict):
        inner = policy.get("config")
        return inner.get("name") if isinstance(inner, dict) else None
    return policy


# -- functional ------------------------------------------------------------------------------


def _functional(cfg):
    if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
        raise FormatError("functional model config has no layer list")
    entries = {}
    for item in cfg["layers"]:
        if not isinstance(item, dict):
            raise FormatError("functional model config: unreadable layer entry")
        name, cls = _layer_entry_name(item), item.get("class_name")
        if not name or name in entries:
            raise FormatError("functional model config: missing or repeated layer name %r" % (name,))
        e = _Entry(name, cls, item.get("config", {}), item.get("module"))
        nodes = item.get("inbound_nodes") or []
        if not isinstance(nodes, list):
            raise FormatError("layer %r: unreadable inbound nodes" % name)
        for node in nodes:
            e.calls.append(_parse_node(e, node))
        entries[name] = e
    inputs = leaves(_parse_refs(cfg.get("input_layers")))
    if not inputs:
        raise FormatError("functional model config: no inputs")
    for key in inputs:
        ie = entries.get(key[0])
        if ie is None or ie.cls != "InputLayer":
            raise FormatError("functional model config: input %r is not an InputLayer" % (key[0],))
    if len(set(inputs)) != len(inputs):
        raise FormatError("functional model config: an input is listed twice")
    outputs = _parse_refs(cfg.get("output_layers"))
    for key in leaves(outputs):
        if key[0] not in entries:
            raise FormatError("functional model config: unknown output layer %r" % (key[0],))
    return entries, inputs, outputs


def _is_ref(v):
    return (
        isinstance(v, (list, tuple))
        and len(v) in (3, 4)
        and isinstance(v[0], str)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in v[1:3])
    )


def _ref3(ref, what):
    if not (
        isinstance(ref, (list, tuple))
        and len(ref) >= 3
        and isinstance(ref[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ref[1:3])
    ):
        raise FormatError("unreadable %s %r" % (what, ref))
    return (ref[0], int(ref[1]), int(ref[2]))


def _parse_refs(refs):
    """input_layers / output_layers: [name, node, tensor], or nested lists/dicts of them."""
    if isinstance(refs, dict):
        return {k: _parse_refs(v) for k, v in refs.items()}
    if isinstance(refs, (list, tuple)):
        if len(refs) == 3 and isinstance(refs[0], str) and isinstance(refs[2], int):
            return _ref3(refs, "layer reference")
        return [_parse_refs(r) for r in refs]
    raise FormatError("functional model config: unreadable layer reference %r" % (refs,))


def _tensor_ref(arg):
    """A Keras 3 ``__keras_tensor__`` argument -> its key, else None."""
    if isinstance(arg, dict) and arg.get("class_name") == "__keras_tensor__":
        hist = (arg.get("config") or {}).get("keras_history")
        return _ref3(hist, "keras_history")
    return None


def _parse_node(e, node):
    call = _Call()
    if isinstance(node, dict):  # Keras 3
        args, kwargs = node.get("args", []), node.get("kwargs", {}) or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise FormatError("layer %r: unreadable inbound node" % e.name)
        for a in args:
            r = _tensor_ref(a)
            if r is not None:
                if not call.inputs:
                    shape = (a.get("config") or {}).get("shape")
                    call.input_shape = tuple(shape) if isinstance(shape, (list, tuple)) else None
                call.inputs.append(r)
                call.args.append(r)
            elif isinstance(a, (list, tuple)) and a and all(_tensor_ref(x) is not None for x in a):
                call.inputs.extend(_tensor_ref(x) for x in a)
                call.as_list = True
                call.args.append([_tensor_ref(x) for x in a])
            elif isinstance(a, (list, tuple)) and any(_tensor_ref(x) is not None for x in a):
                raise UnsupportedLayerError(e.cls, None, "layer %r takes a list mixing tensors and values" % e.name)
            else:
                call.args.append(a)
        for k, v in kwargs.items():
            if k == "training":
                continue
            if k == "mask":
                if v is None:
                    continue
                if isinstance(v, (list, tuple)):
                    refs = [_tensor_ref(x) if x is not None else None for x in v]
                    if any(r is None for r, x in zip(refs, v) if x is not None):
                        raise UnsupportedLayerError(e.cls, "mask", "an explicit mask argument")
                    call.mask = refs
                else:
                    call.mask = _tensor_ref(v)
                    if call.mask is None:
                        raise UnsupportedLayerError(e.cls, "mask", "an explicit mask argument")
                continue
            if k == "initial_state" and v is not None:
                vs = list(v) if isinstance(v, (list, tuple)) else [v]
                refs = [_tensor_ref(x) for x in vs]
                if any(r is None for r in refs):
                    raise UnsupportedLayerError(
                        e.cls, "initial_state", "layer %r: initial_state that is not a tensor of the model" % e.name
                    )
                call.states = refs
                continue
            if v is not None:
                if _tensor_ref(v) is not None and e.cls in ARGUMENT_CLASSES:
                    call.tensor_kwargs[k] = _tensor_ref(v)
                    continue
                if _tensor_ref(v) is not None or isinstance(v, (list, tuple, dict)):
                    raise UnsupportedLayerError(e.cls, k, "layer %r is called with %s=" % (e.name, k))
                call.kwargs[k] = v  # honoured or refused once the layer is known
        return call
    # Keras 2: [[layer, node, tensor, kwargs], ...]
    if not isinstance(node, list) or not node:
        raise FormatError("layer %r: unreadable inbound node %r" % (e.name, node))
    refs = []
    for ref in node:
        refs.append(_ref3(ref, "inbound tensor of layer %r" % e.name))
        kwargs = ref[3] if len(ref) > 3 and isinstance(ref[3], dict) else {}
        for k, v in kwargs.items():
            if k == "training":
                continue
            if k == "initial_state" and v is not None:
                continue  # the states are the call's extra tensors
            if e.cls in ARGUMENT_CLASSES and _is_ref(v):
                call.tensor_kwargs[k] = _ref3(v, "tensor argument %s of layer %r" % (k, e.name))
                continue
            if isinstance(v, bool):
                call.kwargs[k] = v  # honoured or refused once the layer is known
                continue
            if v is not None:
                raise UnsupportedLayerError(e.cls, k, "layer %r is called with %s=" % (e.name, k))
    if e.cls in ARGUMENT_CLASSES:
        call.inputs = refs  # separate arguments, not a list
    elif len(refs) > 1 and (e.cls in RECURRENT_CLASSES or e.cls in ("RNN", "Bidirectional")):
        call.inputs, call.states = refs[:1], refs[1:]  # RNN(x, initial_state=s): [x] + s
    else:
        call.inputs = refs
        call.as_list = len(refs) > 1 or e.cls in MERGE_CLASSES
    return call


def _execution_order(entries, inputs, outputs):
    """The calls (entry, call index) the outputs need, in a topological order."""
    if outputs is None:  # Sequential: all, in order
        return [(e, 0) for e in entries.values() if e.cls != "InputLayer" or e.calls]
    input_names = {k[0] for k in inputs}
    done, order = set(), []
    visiting = set()

    def visit(key):
        name, c = key[0], key[1]
        if (name, c) in done:
            return
        e = entries.get(name)
        if e is None:
            raise FormatError("functional model config: unknown layer %r" % (name,))
        if name in input_names:
            if c != 0:
                raise FormatError("functional model config: input %r has no call %d" % (name, c))
            done.add((name, c))
            return
        if e.cls == "InputLayer":
            raise UnsupportedLayerError(
                "Functional", "inputs", "input %r is used but is not one of the model's inputs" % name
            )
        if c >= len(e.calls):
            raise FormatError("functional model config: layer %r has no call %d" % (name, c))
        if (name, c) in visiting:
            raise FormatError("functional model config: a cycle through layer %r" % name)
        visiting.add((name, c))
        call = e.calls[c]
        if not call.inputs:
            raise UnsupportedLayerError(e.cls, None, "layer %r has no input tensor" % name)
        for k in call.inputs + call.states + list(call.tensor_kwargs.values()):
            visit(k)
        visiting.discard((name, c))
        done.add((name, c))
        order.append((e, c))

    # an explicit iterative-enough DFS: configs are small (recursion depth = graph depth)
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(entries) + 100))
    try:
        for key in leaves(outputs):
            visit(key)
    finally:
        sys.setrecursionlimit(limit)
    return order


# -- masks ---------------------------------------------------------------------------------


def _check_masks(steps, order, inputs, entries):
    """Keras 3 records a layer's mask as an explicit ``mask=`` argument, computed by
    operations from the tensor the mask came from; rnnfast propagates masks as Keras
    does implicitly. Check that the two agree (they do for models built the usual way),
    else refuse: the model computes masks rnnfast would not."""
    tokens = dict.fromkeys(inputs)
    for step, (e, c) in zip(steps, order):
        node = step.op
        call = e.calls[c]
        in_tokens = [tokens.get(k) for k in step.inputs]
        if call.mask is not None:
            masks = call.mask if isinstance(call.mask, list) else [call.mask]
            if len(masks) != len(in_tokens):
                raise UnsupportedLayerError(
                    e.cls, "mask", "layer %r is given %d masks for %d tensors" % (e.name, len(masks), len(in_tokens))
                )
            for m, t in zip(masks, in_tokens):
                if m is None:
                    continue
                explicit = _mask_token(m, entries)
                if explicit is None or not _same_mask(explicit, t):
                    raise UnsupportedLayerError(
                        e.cls, "mask", "layer %r is given a mask rnnfast cannot reproduce" % e.name
                    )
        if getattr(node, "multi_input", False):
            outs = node.output_masks(in_tokens)
        else:
            src = step.inputs[0]
            created = node.mask_token(getattr(entries.get(src[0]), "alias_of", src))
            outs = node.output_masks(in_tokens[0], created)
        for k, m in zip(step.outputs, outs):
            tokens[k] = m


def _same_mask(a, b):
    """Masks equal as tokens; an all-valid mask is no mask."""
    return (None if a == TRUE else a) == (None if b == TRUE else b)


def _mask_token(key, entries, depth=0):
    """Read the Keras operations that compute a Keras 3 mask argument into a token
    comparable with the ones the nodes propagate (:meth:`output_masks`):
    ``NotEqual(t, v)`` (Embedding(mask_zero)), ``Any(NotEqual(t, v), axis=-1)``
    (Masking), ``ConvertToTensor`` (attention layers pass the query mask so), and what
    the merges build from masks: ``LogicalOr`` / ``LogicalAnd``,
    ``ExpandDims(m, -1)``, ``ZerosLike`` / ``OnesLike``, ``Concatenate`` and ``Any``
    over the features. None: an operation rnnfast does not read."""
    e = entries.get(key[0])
    if e is None or key[2] != 0 or key[1] >= len(e.calls) or depth > 200:
        return None
    if not (e.module.startswith("keras.src.ops") or e.module == ""):
        return None
    args = e.calls[key[1]].args
    cfg = e.cfg or {}

    def sub(k):
        return _mask_token(k, entries, depth + 1) if isinstance(k, tuple) else None

    if (
        e.cls == "NotEqual"
        and len(args) == 2
        and isinstance(args[0], tuple)
        and isinstance(args[1], (int, float))
        and not isinstance(args[1], bool)
    ):
        return ("ne", args[0], float(args[1]))
    if e.cls == "ConvertToTensor" and len(args) == 1 and cfg.get("dtype") in (None, "bool"):
        return sub(args[0])
    if e.cls in ("ZerosLike", "OnesLike") and len(args) == 1 and cfg.get("dtype") == "bool":
        return FALSE if e.cls == "ZerosLike" else TRUE
    if e.cls == "ExpandDims" and len(args) == 1 and cfg.get("axis") == -1:
        inner = sub(args[0])
        return None if inner is None else (inner if inner in (TRUE, FALSE) else ("feat", inner))
    if e.cls in ("LogicalOr", "LogicalAnd") and len(args) == 2:
        parts = [sub(a) for a in args]
        if any(p is None for p in parts):
            return None
        if e.cls == "LogicalOr":
            return mask_or(parts)
        parts = [p for p in parts if p != TRUE]
        if FALSE in parts:
            return FALSE
        return parts[0] if len(parts) == 1 else ("and", frozenset(parts)) if parts else TRUE
    if e.cls == "Concatenate" and len(args) == 1 and isinstance(args[0], list):
        parts = [sub(a) for a in args[0]]
        if any(p is None for p in parts):
            return None
        axis = cfg.get("axis", 0)
        if axis in (-1, 2):
            return ("fconcat", tuple(parts))
        if axis == 1:
            return ("tconcat", tuple(parts))
        return None
    if e.cls == "Any" and len(args) == 1 and cfg.get("axis") == -1 and not cfg.get("keepdims", False):
        return _any_last(sub(args[0]))
    return None


def _any_last(t):
    """The token of ``any(x, axis=-1)`` for a per-feature token ``x``."""
    if t is None or t in (TRUE, FALSE):
        return t
    kind = t[0]
    if kind == "ne":
        return ("any_ne",) + t[1:]
    if kind == "feat":
        return t[1]
    if kind == "or":
        parts = [_any_last(p) for p in t[1]]
        return None if any(p is None for p in parts) else mask_or(parts)
    if kind == "fconcat":
        parts = [_any_last(p) for p in t[1]]
        return None if any(p is None for p in parts) else mask_or(parts)
    if kind == "tconcat":
        pieces = tuple(_any_last(p) for p in t[1])
        return None if any(p is None for p in pieces) else ("tconcat", pieces)
    return None


# -- inputs --------------------------------------------------------------------------------


def _input_specs(entries, inputs, steps, ctx):
    readers: dict[object, list] = {}
    for step in steps:
        for k in step.inputs:
            readers.setdefault(k, []).append(step.op)
    fixes_length = any(step.op.fixes_length for step in steps)
    specs = []
    for key in inputs:
        e = entries[key[0]]
        cfg = e.cfg or {}
        if cfg.get("sparse") or cfg.get("ragged"):
            raise UnsupportedLayerError("InputLayer", "sparse" if cfg.get("sparse") else "ragged", "")
        declared = cfg.get("batch_shape", cfg.get("batch_input_shape"))
        shape = declared
        ops = readers.get(key, [])
        ids = [op.takes_ids for op in ops]
        integer = bool(ids) and ids[0]
        if any(ids) and not all(ids):
            raise UnsupportedLayerError("InputLayer", None, "input %r feeds an Embedding and other layers" % key[0])
        dt = _policy_str(cfg.get("dtype")) or "float32"
        if shape is None:
            shape = [None, None] if integer else [None, None, None]
        shape = tuple(None if d is None else int(d) for d in shape)
        # ids (batch, time), or (batch, time, steps) into TimeDistributed models starting with an Embedding
        distributed = all(isinstance(op, TimeDistributedNode) for op in ops)
        if integer and len(shape) != (3 if distributed else 2):
            raise UnsupportedLayerError(
                "Embedding",
                None,
                "input of shape %s: rnnfast takes ids of shape %s"
                % (shape, "(batch, time, steps)" if distributed else "(batch, time)"),
            )
        if not integer and len(shape) not in (2, 3, 4):
            raise UnsupportedLayerError(
                "InputLayer",
                "shape",
                "input of rank %d: rnnfast takes (batch, time, features), (batch, features), or "
                "(batch, time, steps, features) for TimeDistributed layers" % len(shape),
            )
        if (integer or len(shape) >= 3) and not fixes_length:
            # any sequence length runs (Keras 2 functional models and Keras 3 Sequential
            # models accept one other than the declared; only Flatten fixes it)
            shape = (shape[0], None) + shape[2:]
        if ctx.dtype is not None:
            in_dtype = ctx.dtype
        else:
            in_dtype = np.dtype(np.float64) if dt in ("float64", "double") else np.dtype(np.float32)
        specs.append(dict(name=key[0], shape=shape, dtype=in_dtype, integer=integer, declared=declared))
    return specs
