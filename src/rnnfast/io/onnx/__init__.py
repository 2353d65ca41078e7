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

import mmap
import os
from typing import Optional

import numpy as np

from ... import _kernels
from ...errors import FormatError, UnsupportedLayerError
from ...graph import Graph, Step
from ...model_onnx import ONNX_DTYPES, FnOp, OnnxModel, ProductOp, make_graphs
from .proto import MAX_FILE_BYTES, TensorReader, _Unreadable, attribute_value, onnx_module, parse_model, text
from .recurrent import RECURRENT_ATTRS, drop_zero_states
from .registry import DEFAULT_DOMAINS, REQUIRED, lookup, make_op

__all__ = ["load_onnx_file", "from_onnx", "build_model", "MAX_NODES", "MAX_DEPTH", "FOLD_BUDGET_MIN", "FOLD_WORK_MIN"]

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
#: Subgraphs (Loop / Scan bodies) nested at most this deep.
MAX_DEPTH = 8
_GRAPH_ATTR = 5  # AttributeProto.GRAPH
_TENSOR_ATTR = 4  # AttributeProto.TENSOR
#: What a kernel raises on inputs it refuses (at load: a FormatError).
_KERNEL_ERRORS = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
)


def load_onnx_file(path, **options):
    """Load an ``.onnx`` file (its external data, if any, from the same folder)."""
    _no_options(options)
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise FormatError("%s: %d bytes, more than an ONNX (protobuf) file can hold" % (path, size))
    with open(path, "rb") as f:
        data = _mapped(f)
    try:
        m, raws = parse_model(data, path)
        model = build_model(m, base_dir=os.path.dirname(os.path.abspath(path)), size=len(data), what=path, raws=raws)
    finally:
        m = raws = None
        if isinstance(data, mmap.mmap):
            try:
                data.close()  # the model holds no view of the file (_own_constants)
            except BufferError:  # (a view an error's traceback holds: closed when it goes)
                pass
    model.source = path
    return model


#: Files from this size on are mapped, not read (:func:`_mapped`).
MAP_MIN_BYTES = 1 << 16


def _mapped(f):
    """The bytes of the open file ``f``: mapped read-only (and its pages populated in one
    call) from :data:`MAP_MIN_BYTES` on where the system can, else read. A read copies
    the file into fresh memory, and a fresh page costs a fault on first touch: ~3 ms
    for a 4 MB file on a virtual machine, more than the rest of the load; the map
    hands over the page cache's pages. The weights are copied out of it by the ops (no
    op keeps a view of the file: :func:`_own_constants`) and the map is closed at the
    end of the load, so a later change to the file changes no loaded model."""
    populate = getattr(mmap, "MAP_POPULATE", None)
    try:
        size = os.fstat(f.fileno()).st_size
        if populate is not None and size >= MAP_MIN_BYTES:
            return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE | populate, prot=mmap.PROT_READ)
    except (OSError, ValueError, AttributeError):
        pass  # not a regular file, or no map here: read it
    return f.read()


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
    __slots__ = ("op_type", "name", "domain", "inputs", "outputs", "attrs", "num_explicit")

    def __init__(self, proto, index, depth=0):
        self.op_type = text(proto.op_type)
        self.domain = text(proto.domain)
        self.name = text(proto.name) or "%s_%d" % (self.op_type, index)
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        try:  # every name a str (one C call per list, not text() per name: ~20 us of 29 nodes)
            "".join(self.inputs)
            "".join(self.outputs)
        except TypeError:  # a name protobuf handed over as bytes (invalid UTF-8)
            self.inputs = list(map(text, self.inputs))
            self.outputs = list(map(text, self.outputs))
        self.attrs = {}
        # the outer tensors a Loop / Scan body reads (ONNX Runtime's "implicit inputs"):
        # after the node's own inputs, so that the graph keeps and orders their producers
        self.num_explicit = len(self.inputs)
        if proto.attribute and any(a.type == _GRAPH_ATTR for a in proto.attribute):
            self.inputs += [v for v in _free_names(proto, depth) if v not in self.inputs]


class _Context:
    """What converters see: the opset, the constants, the tensors the graph needs; and
    for a Loop / Scan converter, :meth:`body` (its subgraph converted into a graph)."""

    def __init__(self, opset, consts, needed, read=None, budget=None, depth=0):
        self.opset = opset
        self.consts = consts
        self.needed = needed
        self.read = read
        self.budget = budget
        self.depth = depth
        self.functions: set = set()

    def const(self, name):
        return self.consts.get(name) if name else None

    def body(self, node, graph, slots):
        """The subgraph ``graph`` of ``node`` (see ``_build_body``); ``slots``: the
        node's input slots (its implicit inputs after its own)."""
        return _build_body(node, graph, slots, self)


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
    specs = [_lookup(node, functions) for node in nodes]
    if any(node.op_type in RECURRENT_ATTRS for node in nodes):
        consts.update(_zero_states(nodes, specs, g.node, consts, set(names) | set(consts), outputs, read))
    needed = _needed(nodes, outputs)
    budget = _Budget(size, what, len(nodes))
    ctx = _Context(opset, consts, needed, read, budget)
    ctx.functions = functions

    static = {s["name"]: s["shape"] for s in inputs if s["ranked"] and all(isinstance(d, int) for d in s["shape"])}
    known = set(names)
    data = set(names)  # tensors computed from data values
    unstable: set = set()  # tensors whose shape may depend on data values
    steps, shape_steps = [], []
    for node, spec, proto in zip(nodes, specs, g.node):
        if needed.isdisjoint(filter(None, node.outputs)):
            continue
        _read_attrs(node, spec, proto, read)
        _check_node(node, spec, known, consts)
        n_in = node.num_explicit
        op_type = node.op_type
        if op_type == "Constant":
            consts[node.outputs[0]] = _constant_value(node)
            continue
        if op_type == "Shape" and node.inputs[0] in static:
            # the shape of an input whose dimensions are all fixed: a constant
            consts[node.outputs[0]] = _ro(
                np.asarray(static[node.inputs[0]], np.int64)[node.attrs["start"] : node.attrs["end"]]
            )
            continue
        slots, keys = _slots(node, consts, known)
        op = _make(node, spec, slots, ctx)
        if spec.fold and not keys and n_in:
            consts.update(budget.fold(node, op, slots))
            continue
        out_keys = [o if o else (node.name, "absent", i) for i, o in enumerate(node.outputs)]
        while len(out_keys) < op.num_outputs:
            out_keys.append((node.name, "absent", len(out_keys)))
        steps.append(Step(op, keys, out_keys))
        # what each output depends on: keys holds the node's inputs that are not constants
        shaky = not unstable.isdisjoint(keys)
        tainted = shaky if op_type in ("Shape", "Size") else not data.isdisjoint(keys)
        if not shaky and spec.shape_args:
            shaky = any(node.inputs[j] in data for j in spec.shape_args if j < n_in and node.inputs[j])
        known.update(out_keys)
        if tainted:
            data.update(out_keys)
        else:
            shape_steps.append(len(steps) - 1)
        if shaky:
            unstable.update(out_keys)

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
    except _KERNEL_ERRORS as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError(
            "%s: the ops do not fit together on zeros of the declared input shapes: %s" % (what, e)
        ) from None


def _zero_states(nodes, specs, protos, consts, taken, outputs, read):
    """:func:`.recurrent.drop_zero_states` on the graph's nodes, the constants read as
    they are needed (a ``Constant`` node's value read here is read again, as it is, by
    the node's own turn if the graph still needs it)."""
    made = {n.outputs[0]: k for k, n in enumerate(nodes) if n.op_type == "Constant" and len(n.outputs) == 1}

    def const(name):
        if name in consts:
            return consts[name]
        k = made.get(name)
        if k is None or not name:
            return None
        attrs = protos[k].attribute
        try:
            a = attrs[0] if len(attrs) == 1 else None
            if a is not None and a.type == _TENSOR_ATTR and a.name == "value" and not a.ref_attr_name:
                return read(a.t, "%s.value" % nodes[k].name)  # (the common Constant, directly)
            _read_attrs(nodes[k], specs[k], protos[k], read)
            return _constant_value(nodes[k])
        except (FormatError, UnsupportedLayerError):
            return None

    return drop_zero_states(nodes, protos, const, taken, set(outputs))


def _lookup(node, functions):
    if (node.domain, node.op_type) in functions:
        raise UnsupportedLayerError(
            node.op_type,
            None,
            "node %r calls a function defined in the model (domain %r)" % (node.name, node.domain),
        )
    return lookup(node)


def _needed(nodes, outputs):
    """The tensors the outputs need (read backwards over the nodes)."""
    needed = set(outputs)
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs if o):
            needed.update(i for i in node.inputs if i)
    return needed


def _check_node(node, spec, known, consts):
    """FormatError for a node whose inputs or outputs do not fit its op."""
    n_in = node.num_explicit
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


def _slots(node, consts, known):
    """The node's input slots (see :class:`~rnnfast.model_onnx.OnnxOp`) and the keys
    its ``("key", i)`` slots index."""
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
            raise FormatError("%s node %r reads %r, which no earlier node computes" % (node.op_type, node.name, name))
    return slots, keys


def _make(node, spec, slots, ctx):
    try:
        return make_op(node, spec, slots, ctx)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError("%s node %r: %s" % (node.op_type, node.name, e)) from None


class _Budget:
    """What loading one file may cost: values and operations of constant folding (in
    proportion to the file's size) and nodes (subgraphs included)."""

    def __init__(self, size, what, nodes):
        self.size, self.what = size, what
        self.values = max(FOLD_BUDGET_MIN, 4 * size)
        self.work = float(max(FOLD_WORK_MIN, 64 * size))
        self.nodes = MAX_NODES - nodes

    def take_nodes(self, n, where):
        self.nodes -= n
        if self.nodes < 0:
            raise FormatError("%s: more than %d nodes, subgraphs included (at %s)" % (self.what, MAX_NODES, where))

    def fold(self, node, op, slots):
        """The node computed on its constant inputs: {output name: read-only array}."""
        what, size = self.what, self.size
        args = [None if s is None else s[1] for s in slots]
        planned = _planned_elements(node.op_type, args, node.attrs)
        if planned > self.values:
            raise FormatError(
                "%s: folding the constants of %s node %r would make %d values (the budget left "
                "for %d bytes of file is %d)" % (what, node.op_type, node.name, planned, size, self.values)
            )
        self.work -= _fold_work(node.op_type, args, planned)
        if self.work < 0:
            raise FormatError(
                "%s: folding the constants up to %s node %r costs more operations than the budget for "
                "%d bytes of file (%d)" % (what, node.op_type, node.name, size, max(FOLD_WORK_MIN, 64 * size))
            )
        try:
            with np.errstate(all="ignore"):
                vals = op.compute(args, 1)
        except _KERNEL_ERRORS as e:
            raise FormatError("%s node %r (on constants): %s" % (node.op_type, node.name, e)) from None
        out = {}
        for o, v in zip(node.outputs, vals):
            if o and v is not None:
                v = np.array(v, copy=True) if not isinstance(v, np.ndarray) or not v.flags.owndata else v
                self.values -= v.size
                v.flags.writeable = False
                out[o] = v
        return out


def _free_names(proto, depth):
    """The names the graph attributes of node ``proto`` read from outside themselves (in
    order of first use; nested subgraphs included), at most :data:`MAX_DEPTH` deep."""
    if depth >= MAX_DEPTH:
        raise UnsupportedLayerError(
            text(proto.op_type),
            "body",
            "node %r: subgraphs nested more than %d deep" % (text(proto.name), MAX_DEPTH),
        )
    free: list = []
    seen: set = set()
    for a in proto.attribute:
        if int(a.type) != _GRAPH_ATTR:
            continue
        g = a.g
        defined = {text(v.name) for v in g.input} | {text(t.name) for t in g.initializer}
        reads: list = []
        for n in g.node:
            here = [text(v) for v in n.input]
            if any(int(b.type) == _GRAPH_ATTR for b in n.attribute):
                here += _free_names(n, depth + 1)
            reads += [v for v in here if v and v not in defined]
            defined.update(text(v) for v in n.output)
        reads += [text(v.name) for v in g.output if text(v.name) not in defined]
        for v in reads:
            if v not in seen:
                seen.add(v)
                free.append(v)
    return free


def _build_body(node, g, slots, ctx):
    """The subgraph ``g`` of a Loop / Scan ``node`` converted as the main graph is (ops
    looked up and checked, constants folded), for the node's op to run with the same
    executor.

    Returns ``(graph, captured, out_dtypes)``: a :class:`~rnnfast.graph.Graph` whose
    inputs are the body's own inputs, then the outer tensors it reads that are not
    constants (``captured``: their indices in ``slots``; outer constants are the ops'
    constants), and the numpy dtype each body output declares (None where it does not)."""
    where = "%s node %r" % (node.op_type, node.name)
    depth = ctx.depth + 1
    ctx.budget.take_nodes(len(g.node), where)
    if len(g.sparse_initializer):
        raise UnsupportedLayerError(node.op_type, "body", "node %r: its body stores sparse initializers" % node.name)
    formal = [text(vi.name) for vi in g.input]
    if len(set(formal)) != len(formal) or not all(formal):
        raise FormatError("%s: its body's inputs have repeated or empty names" % where)
    known = set(formal)
    consts = {}
    for t in g.initializer:
        name = text(t.name)
        if name not in known:
            consts[name] = ctx.read(t)
    captured = []
    for i in range(node.num_explicit, len(node.inputs)):
        name = node.inputs[i]
        if name in known or name in consts:
            continue
        if slots[i][0] == "const":
            consts[name] = slots[i][1]
        else:
            captured.append(i)
            known.add(name)
    nodes = [_Node(p, i, depth) for i, p in enumerate(g.node)]
    specs = [_lookup(n, ctx.functions) for n in nodes]
    outputs = [text(vi.name) for vi in g.output]
    needed = _needed(nodes, outputs)
    bctx = _Context(ctx.opset, consts, needed, ctx.read, ctx.budget, depth)
    bctx.functions = ctx.functions
    steps = []
    for n, spec, proto in zip(nodes, specs, g.node):
        if not any(o in needed for o in n.outputs if o):
            continue
        _read_attrs(n, spec, proto, ctx.read)
        _check_node(n, spec, known, consts)
        if n.op_type == "Constant":
            consts[n.outputs[0]] = _constant_value(n)
            continue
        sl, keys = _slots(n, consts, known)
        op = _make(n, spec, sl, bctx)
        if spec.fold and not keys and n.num_explicit:
            consts.update(ctx.budget.fold(n, op, sl))
            continue
        out_keys = [o if o else (n.name, "absent", i) for i, o in enumerate(n.outputs)]
        while len(out_keys) < op.num_outputs:
            out_keys.append((n.name, "absent", len(out_keys)))
        steps.append(Step(op, keys, out_keys))
        known.update(out_keys)
    for name in outputs:
        if name in consts and name not in known:
            steps.append(Step(FnOp("Identity", name, [("const", consts[name])], 1, {}), [], [name]))
            known.add(name)
        if name not in known:
            raise FormatError("%s: its body's output %r is never computed" % (where, name))
    dtypes = []  # (dtype or None, shape or None) each body output declares
    for vi in g.output:
        code = int(vi.type.tensor_type.elem_type) if vi.type.HasField("tensor_type") else 0
        dims = _dims(vi.type) if vi.type.HasField("tensor_type") else None
        fixed = None
        if dims is not None and all(isinstance(d, int) and 0 <= d <= 1 << 24 for d in dims):
            fixed = tuple(dims)
        dtypes.append((ONNX_DTYPES[code][0] if code in ONNX_DTYPES else None, fixed))
    graph = Graph(steps, formal + [node.inputs[i] for i in captured], outputs)
    return graph, captured, dtypes


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

    todo = list(steps)
    while todo:
        op = todo.pop().op
        if type(op) is ProductOp and op._packed is not None and np.may_share_memory(op.slots[1][1], whole):
            op.slots[1] = ("const", PackedWeight.of(op))  # its weights once: the packed copy
        op.slots = [s if s is None or s[0] != "const" else ("const", own(s[1])) for s in op.slots]
        attrs = getattr(op, "attrs", None)
        if attrs:
            for k, v in attrs.items():
                attrs[k] = own(v)
        for sub in getattr(op, "subgraphs", ()):  # a Loop / Scan body's ops
            todo += sub.steps


class PackedWeight:
    """The constant weight ``B`` of a :class:`~rnnfast.model_onnx.ProductOp` read back
    from the op's packed copy (``op._packed``, :func:`rnnfast._products.pack`) where
    a path needs the array (not the packed product's): the load then copies a file's
    weight once, into the packed form, not a second time beside it (a decoder's
    (8000, 256) output Gemm: 8 MB and ~2 ms of a 13 ms load). ``shape``, ``dtype``,
    ``ndim``, ``size`` and ``T`` as the array's; ``np.asarray`` unpacks it (bitwise
    the file's values) and keeps the result. Pickled as the packed array (the op's own:
    the weights travel once)."""

    def __init__(self, packed, K, N, transposed):
        self.packed, self.K, self.N, self.transposed = packed, int(K), int(N), bool(transposed)
        self.dtype = packed.dtype
        self.shape = (self.N, self.K) if self.transposed else (self.K, self.N)
        self.ndim, self.size = 2, self.K * self.N

    @classmethod
    def of(cls, op):
        b = op.slots[1][1]
        transposed = op.op_type == "Gemm" and bool(op.attrs["transB"])
        K, N = (b.shape[1], b.shape[0]) if transposed else b.shape
        return cls(op._packed, K, N, transposed)

    @property
    def T(self):
        return PackedWeight(self.packed, self.K, self.N, not self.transposed)

    def __array__(self, dtype=None, copy=None):
        w = self.__dict__.get("_array")
        if w is None:  # (K, N), as pack took it
            w = _kernels.unpack_blocks(self.packed.reshape(1, -1), self.K, self.N, 1, 1)[0]
            w.flags.writeable = False
            self._array = w
        w = w.T if self.transposed else w
        if dtype is not None and np.dtype(dtype) != w.dtype:
            return w.astype(dtype)
        return np.array(w, copy=True) if copy else w

    def __getstate__(self):
        return dict(packed=self.packed, K=self.K, N=self.N, transposed=self.transposed)

    def __setstate__(self, state):
        PackedWeight.__init__(self, state["packed"], state["K"], state["N"], state["transposed"])

    def __repr__(self):
        return "PackedWeight(shape=%s, dtype=%s)" % (self.shape, self.dtype)


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
        if isinstance(v, _Unreadable) and v.graph is not None and name in spec.graphs:
            v = v.graph  # a Loop / Scan body: converted by the op's converter
        elif isinstance(v, _Unreadable):
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
