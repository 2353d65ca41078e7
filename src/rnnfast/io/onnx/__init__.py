"""The ONNX frontend: a ModelProto (a ``.onnx`` file, its bytes, or a live
``onnx.ModelProto``) to an :class:`~rnnfast.model_onnx.OnnxModel` over a
:class:`~rnnfast.graph.Graph` of canonical ops.

At load, in one pass over the nodes (ONNX stores them in topological order; no
recursion anywhere, whatever the file holds):

- every node's op is looked up in the registry (:mod:`.registry`): an op of another
  domain, one not listed, an attribute the op does not take or a value the kernels
  do not run is refused with :class:`~rnnfast.UnsupportedLayerError` naming the op, the
  node and the domain;
- nodes the outputs do not need are dropped; ``Constant`` nodes and every node whose
  inputs are all constants are computed here (constant folding, with a work budget
  proportional to the file's size);
- each tensor is marked as depending on data or on the input shapes only (``Shape``
  turns a data tensor into shape arithmetic unless the tensor's shape itself
  depends on data values). The model runs the shape-only steps once per distinct set
  of input shapes and keeps their results (:class:`~rnnfast.model_onnx.OnnxModel`).

Tensors are read by :class:`.proto.TensorReader` (sizes checked before anything is
allocated; external data only from the model's own folder).
"""

import os
from typing import Optional

import numpy as np

from ...errors import FormatError, UnsupportedLayerError
from ...graph import Step
from ...model_onnx import ONNX_DTYPES, FnOp, OnnxModel, make_graphs
from .proto import MAX_FILE_BYTES, TensorReader, _Unreadable, attribute_value, onnx_module, parse_model, text
from .registry import DEFAULT_DOMAINS, REQUIRED, lookup, make_op

__all__ = ["load_onnx_file", "from_onnx", "build_model", "MAX_NODES", "FOLD_BUDGET_MIN", "FOLD_WORK_MIN"]

#: Most nodes in a graph.
MAX_NODES = 200_000
#: Elements constant folding may produce, at least (else 4 per byte of the file).
FOLD_BUDGET_MIN = 1 << 24
#: Multiply-adds constant folding may cost, at least (else 64 per byte of the file).
FOLD_WORK_MIN = 1 << 28
#: Input values above which the load-time run on zeros is skipped (its shape
#: arithmetic is then done on the first call).
MAX_PROBE_VALUES = 1 << 24
#: Constant elements the steps read (with repeats) above which -- and above 16 per byte
#: of the file -- the load-time run is skipped (a graph that reads one weight many times).
PROBE_READS_MIN = 1 << 26


def load_onnx_file(path, **options):
    """Load an ``.onnx`` file (its external data, if any, from the same folder)."""
    _no_options(options)
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise FormatError("%s: %d bytes, more than an ONNX (protobuf) file can hold" % (path, size))
    with open(path, "rb") as f:
        data = f.read()
    m, raws = parse_model(data, path)
    model = build_model(m, base_dir=os.path.dirname(os.path.abspath(path)), size=len(data), what=path, raws=raws)
    model.source = path
    return model


def from_onnx(model, **options):
    """An :class:`~rnnfast.model_onnx.OnnxModel` from an ``onnx.ModelProto`` or its
    serialized bytes (what ``model.SerializeToString()`` or
    ``torch.onnx.export(..., f=io.BytesIO())`` gives).

    Weights in external files cannot be read from bytes: load such a model from its
    file with :func:`rnnfast.load`.

    Raises
    ------
    rnnfast.FormatError
        Not a readable ONNX model.
    rnnfast.UnsupportedLayerError
        An op, attribute or value rnnfast cannot run (named with its node and domain).
    """
    _no_options(options)
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif hasattr(model, "SerializeToString") and hasattr(model, "graph"):
        data = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)):
        raise TypeError("from_onnx takes a ModelProto or bytes; load a file with rnnfast.load(path)")
    else:
        raise TypeError("from_onnx takes an onnx.ModelProto or its serialized bytes, got %s" % type(model).__name__)
    m, raws = parse_model(data, "the ONNX model")
    return build_model(m, base_dir=None, size=len(data), what="the ONNX model", raws=raws)


def _no_options(options):
    if options:
        raise TypeError("ONNX models take no load options (got %s)" % ", ".join(sorted(options)))


class _Node:
    __slots__ = ("op_type", "name", "domain", "inputs", "outputs", "attrs")

    def __init__(self, proto, index):
        self.op_type = text(proto.op_type)
        self.domain = text(proto.domain)
        self.name = text(proto.name) or "%s_%d" % (self.op_type, index)
        self.inputs = [text(v) for v in proto.input]
        self.outputs = [text(v) for v in proto.output]
        self.attrs = {}


class _Context:
    """What converters see: the opset, the constants, the tensors the graph needs."""

    def __init__(self, opset, consts, needed):
        self.opset = opset
        self.consts = consts
        self.needed = needed

    def const(self, name):
        return self.consts.get(name) if name else None


def _dims(type_proto) -> Optional[list]:
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return None
    out: list = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(text(d.dim_param))
        else:
            out.append(None)
    return out


def _value_spec(vi, what, required_type=True):
    name = text(vi.name)
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedLayerError(
            "input" if required_type else "output", "type", "%s %r is not a tensor" % (what, name)
        )
    code = int(vi.type.tensor_type.elem_type)
    if code not in ONNX_DTYPES:
        raise UnsupportedLayerError("input", "type", "%s %r has element type %d" % (what, name, code))
    dt, tname = ONNX_DTYPES[code]
    shape = _dims(vi.type)
    return dict(name=name, shape=shape if shape is not None else [], dtype=dt, type=tname, ranked=shape is not None)


def _opset(m):
    version = None
    for o in m.opset_import:
        if text(o.domain) in DEFAULT_DOMAINS:
            version = int(o.version)
    if version is None:
        raise FormatError("the ONNX model imports no version of the default (ai.onnx) opset")
    return version


def _planned_elements(op_type, args, attrs):
    """Elements a folded node would produce at most, computed before it runs."""
    present = [a for a in args if a is not None]
    try:
        if op_type == "ConstantOfShape":
            return int(np.prod(np.asarray(present[0], np.float64)))
        if op_type == "Expand":
            shape = [int(v) for v in np.asarray(present[1]).reshape(-1)]
            return int(
                np.prod(np.broadcast_shapes(present[0].shape, tuple(max(v, 1) for v in shape)), dtype=np.float64)
            )
        if op_type == "Tile":
            return int(present[0].size * np.prod(np.abs(np.asarray(present[1], np.float64))))
        if op_type == "Range":
            s, lim, d = (float(np.asarray(v).reshape(-1)[0]) for v in present)
            return int(abs((lim - s) / d)) + 1 if d else 0
        if op_type in ("MatMul", "Gemm"):  # rows of a times columns of b (batch dims of the larger)
            a, b = present[0], present[1]
            rows = a.size // max(a.shape[-1], 1) if a.ndim else 1
            cols = b.size // max(b.shape[-2], 1) if b.ndim > 1 else 1
            return int(max(rows * (b.shape[-1] if b.ndim else 1), cols * (a.shape[-2] if a.ndim > 1 else 1)))
        if op_type == "Gather":
            return int(present[1].size * max(present[0].size, 1))
        if len(present) > 1:
            return int(np.prod(np.broadcast_shapes(*(a.shape for a in present)), dtype=np.float64))
    except (ValueError, TypeError, IndexError, OverflowError):
        return 0  # the kernel refuses it
    return max([a.size for a in present] + [1])


def _fold_work(op_type, args, planned):
    """Multiply-adds (or element operations) a folded node costs, before it runs."""
    present = [a for a in args if a is not None]
    try:
        if op_type in ("MatMul", "Gemm"):
            return float(present[0].size) * float(present[1].shape[-1] if present[1].ndim else 1)
        if op_type == "Conv":
            w = present[1]
            return float(present[0].size) * float(w.shape[0]) * float(w.shape[-1])
    except (IndexError, AttributeError):
        return 0.0
    return float(planned) + sum(float(a.size) for a in present)


def build_model(m, *, base_dir, size, what, raws=None):
    """Build an OnnxModel from a parsed ModelProto (see the module docstring); ``raws``:
    the initializers' ``raw_data`` read beside it (:func:`.proto.parse_model`)."""
    g = m.graph
    opset = _opset(m)
    read = TensorReader(base_dir, what)
    if len(g.node) > MAX_NODES:
        raise FormatError("%s: %d nodes (rnnfast loads at most %d)" % (what, len(g.node), MAX_NODES))
    if len(g.sparse_initializer):
        raise UnsupportedLayerError("sparse_initializer", None, "%s stores sparse initializers" % what)
    functions = {(text(f.domain), text(f.name)) for f in m.functions}
    consts = {}
    for k, t in enumerate(g.initializer):
        consts[text(t.name)] = read(t, raw=None if raws is None else raws[k])
    inputs = [_value_spec(vi, "input") for vi in g.input if text(vi.name) not in consts]
    names = [s["name"] for s in inputs]
    if len(set(names)) != len(names):
        raise FormatError("%s: repeated input names" % what)
    outputs = [text(vi.name) for vi in g.output]
    if not outputs:
        raise FormatError("%s: the graph has no outputs" % what)

    nodes = [_Node(p, i) for i, p in enumerate(g.node)]
    # every op must be one rnnfast runs (also in branches the outputs do not need)
    specs = []
    for node in nodes:
        if (node.domain, node.op_type) in functions:
            raise UnsupportedLayerError(
                node.op_type,
                None,
                "node %r calls a function defined in the model (domain %r)" % (node.name, node.domain),
            )
        specs.append(lookup(node))
    needed = set(outputs)
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs if o):
            needed.update(i for i in node.inputs if i)
    ctx = _Context(opset, consts, needed)

    static = {s["name"]: s["shape"] for s in inputs if s["ranked"] and all(isinstance(d, int) for d in s["shape"])}
    known = set(names)
    data = set(names)  # tensors computed from data values
    unstable = set()  # tensors whose shape may depend on data values
    steps, shape_steps = [], []
    budget = max(FOLD_BUDGET_MIN, 4 * size)
    work_budget = float(max(FOLD_WORK_MIN, 64 * size))
    for node, spec, proto in zip(nodes, specs, g.node):
        if not any(o in needed for o in node.outputs if o):
            continue
        _read_attrs(node, spec, proto, read)
        n_in = len(node.inputs)
        if not spec.inputs[0] <= n_in <= spec.inputs[1]:
            raise FormatError(
                "%s node %r has %d inputs (expected %d to %d)" % (node.op_type, node.name, n_in, *spec.inputs)
            )
        if not spec.outputs[0] <= len(node.outputs) <= spec.outputs[1] or (
            node.outputs and len({o for o in node.outputs if o}) != len([o for o in node.outputs if o])
        ):
            raise FormatError(
                "%s node %r has %d outputs (expected %d to %d)"
                % (node.op_type, node.name, len(node.outputs), *spec.outputs)
            )
        for j in range(min(spec.inputs[0], n_in)):
            if not node.inputs[j]:
                raise FormatError("%s node %r: its input %d is required" % (node.op_type, node.name, j))
        for o in node.outputs:
            if o and (o in known or o in consts):
                raise FormatError("%s node %r: tensor %r is computed twice" % (node.op_type, node.name, o))
        if node.op_type == "Constant":
            consts[node.outputs[0]] = _constant_value(node)
            continue
        if node.op_type == "Shape" and node.inputs[0] in static:
            # the shape of an input whose dimensions are all fixed: a constant
            consts[node.outputs[0]] = _ro(
                np.asarray(static[node.inputs[0]], np.int64)[node.attrs["start"] : node.attrs["end"]]
            )
            continue
        slots: list = []
        keys: list = []
        for name in node.inputs:
            if not name:
                slots.append(None)
            elif name in consts:
                slots.append(("const", consts[name]))
            elif name in known:
                if name not in keys:
                    keys.append(name)
                slots.append(("key", keys.index(name)))
            else:
                raise FormatError(
                    "%s node %r reads %r, which no earlier node computes" % (node.op_type, node.name, name)
                )
        try:
            op = make_op(node, spec, slots, ctx)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError("%s node %r: %s" % (node.op_type, node.name, e)) from None
        if spec.fold and not keys and n_in:
            args = [None if s is None else s[1] for s in slots]
            planned = _planned_elements(node.op_type, args, node.attrs)
            if planned > budget:
                raise FormatError(
                    "%s: folding the constants of %s node %r would make %d values (the budget left "
                    "for %d bytes of file is %d)" % (what, node.op_type, node.name, planned, size, budget)
                )
            work_budget -= _fold_work(node.op_type, args, planned)
            if work_budget < 0:
                raise FormatError(
                    "%s: folding the constants up to %s node %r costs more operations than the budget for "
                    "%d bytes of file (%d)" % (what, node.op_type, node.name, size, max(FOLD_WORK_MIN, 64 * size))
                )
            try:
                with np.errstate(all="ignore"):
                    vals = op.compute(args, 1)
            except (
                ValueError,
                TypeError,
                IndexError,
                KeyError,
                AttributeError,
                ZeroDivisionError,
                OverflowError,
                MemoryError,
            ) as e:
                raise FormatError("%s node %r (on constants): %s" % (node.op_type, node.name, e)) from None
            for o, v in zip(node.outputs, vals):
                if o and v is not None:
                    v = np.array(v, copy=True) if not isinstance(v, np.ndarray) or not v.flags.owndata else v
                    budget -= v.size
                    v.flags.writeable = False
                    consts[o] = v
            continue
        out_keys = [o if o else (node.name, "absent", i) for i, o in enumerate(node.outputs)]
        while len(out_keys) < op.num_outputs:
            out_keys.append((node.name, "absent", len(out_keys)))
        steps.append(Step(op, keys, out_keys))
        # what each output depends on
        ins = [i for i in node.inputs if i and i not in consts]
        if node.op_type in ("Shape", "Size"):
            tainted = any(i in unstable for i in ins)
        else:
            tainted = any(i in data for i in ins)
        shaky = any(i in unstable for i in ins) or any(
            node.inputs[j] in data for j in spec.shape_args if j < n_in and node.inputs[j]
        )
        for o in out_keys:
            known.add(o)
            if tainted:
                data.add(o)
            if shaky:
                unstable.add(o)
        if not tainted:
            shape_steps.append(len(steps) - 1)

    out_specs = []
    if len(set(outputs)) != len(outputs):
        raise FormatError("%s: repeated output names" % what)
    for vi, name in zip(g.output, outputs):
        if name in consts and name not in known:
            steps.append(Step(FnOp("Identity", name, [("const", consts[name])], 1, {}), [], [name]))
            shape_steps.append(len(steps) - 1)
            known.add(name)
        if name not in known:
            raise FormatError("%s: output %r is never computed" % (what, name))
        spec = dict(name=name, shape=[], type="tensor(float)")
        if vi.type.HasField("tensor_type"):
            code = int(vi.type.tensor_type.elem_type)
            spec["type"] = ONNX_DTYPES.get(code, (None, "tensor(%d)" % code))[1]
            spec["shape"] = _dims(vi.type) or []
        out_specs.append(spec)
    if raws is not None:  # no op keeps a view of the file's bytes (nor an unaligned array)
        _own_constants(steps, [r for r in raws if r is not None])
    graph, data_graph, frontier = make_graphs(steps, names, outputs, shape_steps)
    producer = text(m.producer_name) + (" " + text(m.producer_version) if m.producer_version else "")
    # the load-time run costs about the constants each step reads: bounded by the file's size
    reads = sum(float(sl[1].size) for st in steps for sl in st.op.slots if sl is not None and sl[0] == "const")
    probe = sum(
        float(np.prod([d if isinstance(d, int) else 16 for d in s["shape"]], dtype=np.float64)) for s in inputs
    ) <= MAX_PROBE_VALUES and reads <= max(PROBE_READS_MIN, 16 * size)
    try:
        return OnnxModel(
            graph=graph,
            data_graph=data_graph,
            frontier=frontier,
            inputs=inputs,
            outputs=out_specs,
            name=text(g.name) or "onnx",
            producer=producer,
            opset=opset,
            probe=probe,
        )
    except (
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        ZeroDivisionError,
        OverflowError,
        MemoryError,
    ) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(
            "%s: the ops do not fit together on zeros of the declared input shapes: %s" % (what, e)
        ) from None


def _own_constants(steps, raws):
    """Copy the constants the steps hold that are views of the file's bytes (``raws``):
    the model then holds only what it uses, aligned."""
    if not raws:
        return
    owner = raws[0]
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    whole = np.frombuffer(owner, np.uint8)

    def own(v):
        if isinstance(v, np.ndarray) and np.may_share_memory(v, whole):
            v = np.array(v, order="C", copy=True)
            v.flags.writeable = False
        return v

    for st in steps:
        op = st.op
        op.slots = [s if s is None or s[0] != "const" else ("const", own(s[1])) for s in op.slots]
        attrs = getattr(op, "attrs", None)
        if attrs:
            for k, v in attrs.items():
                attrs[k] = own(v)


def _read_attrs(node, spec, proto, read):
    attrs = {}
    for a in proto.attribute:
        name = text(a.name)
        if name not in spec.attrs:
            raise UnsupportedLayerError(
                node.op_type,
                name,
                "node %r: attribute %r is not one rnnfast runs %s with" % (node.name, name, node.op_type),
            )
        if name in attrs:
            raise FormatError("%s node %r: attribute %r given twice" % (node.op_type, node.name, name))
        v = attribute_value(a, read, node.op_type, node.name)
        if isinstance(v, _Unreadable):
            raise UnsupportedLayerError(node.op_type, name, "node %r: attribute %r holds %r" % (node.name, name, v))
        attrs[name] = v
    for k, default in spec.attrs.items():
        if k not in attrs:
            if default is REQUIRED:
                raise FormatError("%s node %r: attribute %r is required" % (node.op_type, node.name, k))
            attrs[k] = default
    node.attrs = attrs


def _constant_value(node):
    a = node.attrs
    given = [k for k, v in a.items() if v is not None]
    if len(given) != 1:
        raise FormatError("Constant node %r: exactly one value attribute expected, got %s" % (node.name, given))
    k = given[0]
    v = a[k]
    if k == "value":
        return v
    if k == "value_float":
        return _ro(np.asarray(v, np.float32))
    if k == "value_floats":
        return _ro(np.asarray(v, np.float32).reshape(-1))
    if k == "value_int":
        return _ro(np.asarray(v, np.int64))
    if k == "value_ints":
        return _ro(np.asarray(v, np.int64).reshape(-1))
    raise UnsupportedLayerError("Constant", k, "node %r: a %s constant" % (node.name, k))


def _ro(a):
    a.flags.writeable = False
    return a


__all__ += ["onnx_module"]
