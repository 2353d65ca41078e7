"""ONNX ``Loop`` and ``Scan``: a recurrence written as a subgraph (``body``) run once per
step, as tf2onnx writes a Keras RNN it cannot fuse into an ``LSTM`` / ``GRU`` node (a
masked LSTM, a ``reset_after=False`` GRU) and as hand-written cells are exported; and
``If``, which ``torch.onnx.export`` writes for a ``squeeze(dim)`` of an axis whose size
the graph does not fix (a dynamic batch or length: "squeeze if it is 1").

The body is converted at load as the main graph is (``rnnfast.io.onnx._build_body``:
every op looked up in the registry and checked, constants folded, nothing from the file
executed) into a :class:`~rnnfast.graph.Graph` that the op runs with the model's own
executor (:func:`rnnfast.model_onnx.run_compiled`) once per iteration. The tensors of the
outer graph the body reads are the node's *implicit inputs*: constants become the body
ops' constants, the others are fed to the body after its own inputs.

``Loop`` (``M`` trip count and ``cond``, both optional; loop-carried values; scan
outputs stacked on a new first axis): at most :data:`MAX_LOOP_TRIPS` iterations (a
larger ``M``, or a loop whose condition stays true that long, is a ``ValueError`` at
run time, a ``FormatError`` at load where ``M`` is a constant; the trial run at load
stops a loop after ``PROBE_LOOP_TRIPS`` iterations and leaves the first call to check
the shapes); the scan outputs hold at most
:data:`MAX_LOOP_VALUES` elements together. ``Scan`` (opset 9 on: ``num_scan_inputs``,
``scan_input_axes`` / ``_directions``, ``scan_output_axes`` / ``_directions``) steps over
its scan inputs' axis; the opset-8 form (with ``sequence_lens`` and a batch axis) is
refused. ``If`` converts both branches at load and runs the one its condition (one
boolean value) picks; the branches take no inputs of their own and give the node's
outputs.
"""

import numpy as np

from ...errors import FormatError, UnsupportedLayerError
from ...model_onnx import PROBE_LOOP_TRIPS, OnnxOp, ProbeTooLong, _compile, probing, run_compiled

__all__ = [
    "IfOp",
    "LoopOp",
    "ScanOp",
    "convert_if",
    "convert_loop",
    "convert_scan",
    "IF_ATTRS",
    "LOOP_ATTRS",
    "SCAN_ATTRS",
    "MAX_LOOP_TRIPS",
]

#: Most iterations of one ``Loop`` run (a bound on an unbounded or data-driven loop).
MAX_LOOP_TRIPS = 1 << 20
#: Most elements a ``Loop`` 's scan outputs gather in one run.
MAX_LOOP_VALUES = 1 << 28

IF_ATTRS: dict = {"then_branch": None, "else_branch": None}
LOOP_ATTRS: dict = {"body": None}
SCAN_ATTRS: dict = {
    "body": None,
    "num_scan_inputs": None,
    "scan_input_axes": None,
    "scan_input_directions": None,
    "scan_output_axes": None,
    "scan_output_directions": None,
}


class _BodyOp(OnnxOp):
    """An op running a converted subgraph; ``captured``: the slots fed to the body after
    its own inputs."""

    def __init__(self, node, slots, num_outputs, graph, captured, dtypes):
        super().__init__(node.op_type, node.name, slots, num_outputs)
        self.subgraphs = [graph]
        self.captured = list(captured)
        self.dtypes = list(dtypes)
        self.program = _compile(graph)
        # (parameters: the floating-point constants among its inputs, implicit ones included,
        # as OnnxOp counts them; the body's ops hold the same arrays)
        self.units = "%d ops" % len(graph.steps)

    def _body(self, feeds, captured, num_threads):
        return run_compiled(self.program, list(feeds) + captured, num_threads)

    def _empty(self, k):
        """Body output ``k`` gathered over no step: its declared shape after a 0 axis."""
        dtype, shape = self.dtypes[k]
        return np.zeros((0,) + (shape or ()), dtype or np.float32)

    def describe(self):
        return "%s(%s)" % (self.op_type, self.units)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("program", None)  # (the compiled plan: remade on unpickling)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.program = _compile(self.subgraphs[0])


def _scalar(v, what, name, op_type="Loop"):
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError("%s %r: %s must hold one value, got shape %s" % (op_type, name, what, a.shape))
    return a.reshape(-1)[0]


class IfOp(OnnxOp):
    """An ONNX ``If`` node: slot ``cond``, then the outer tensors either branch reads;
    ``branches``: (graph, captured) of then_branch and else_branch, ``captured`` the
    slots fed to that branch."""

    def __init__(self, node, slots, branches):
        super().__init__(node.op_type, node.name, slots, len(node.outputs))
        self.subgraphs = [g for g, _ in branches]
        self.captured = [list(c) for _, c in branches]
        self.programs = [_compile(g) for g in self.subgraphs]
        self.units = "%d / %d ops" % tuple(len(g.steps) for g in self.subgraphs)

    def compute(self, args, num_threads):
        k = 0 if bool(_scalar(args[0], "cond", self.name, "If")) else 1
        outs = run_compiled(self.programs[k], [args[i] for i in self.captured[k]], num_threads)
        return [np.asarray(v) for v in outs][: self.num_outputs]

    def describe(self):
        return "If(%s)" % self.units

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("programs", None)  # (the compiled plans: remade on unpickling)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.programs = [_compile(g) for g in self.subgraphs]


class LoopOp(_BodyOp):
    """An ONNX ``Loop`` node (see the module docstring): slots ``M``, ``cond``, the ``N``
    loop-carried initial values, then the implicit inputs."""

    def __init__(self, node, slots, graph, captured, dtypes, carried):
        super().__init__(node, slots, len(node.outputs), graph, captured, dtypes)
        self.carried = int(carried)
        self.scans = len(graph.outputs) - 1 - self.carried
        self.options = "%d loop-carried, %d scan outputs" % (self.carried, self.scans)

    def compute(self, args, num_threads):
        M, cond = args[0], args[1]
        values = list(args[2 : 2 + self.carried])
        captured = [args[i] for i in self.captured]
        limit = None
        if M is not None:
            limit = int(_scalar(M, "M", self.name))
            if limit > MAX_LOOP_TRIPS:
                raise ValueError(
                    "Loop %r: trip count %d (rnnfast runs at most %d iterations)" % (self.name, limit, MAX_LOOP_TRIPS)
                )
        go = True if cond is None else bool(_scalar(cond, "cond", self.name))
        gathered: list = [[] for _ in range(self.scans)]
        total = 0
        i = 0
        trial = probing()
        while go and (limit is None or i < limit):
            if trial and i >= PROBE_LOOP_TRIPS:
                raise ProbeTooLong(self.name)
            if i >= MAX_LOOP_TRIPS:
                raise ValueError(
                    "Loop %r: still running after %d iterations (rnnfast runs at most that many)"
                    % (self.name, MAX_LOOP_TRIPS)
                )
            outs = self._body([np.array(i, np.int64), np.array(go)] + values, captured, num_threads)
            if cond is not None:  # (without a cond input, the body's condition is ignored)
                go = bool(_scalar(outs[0], "the body's condition", self.name))
            values = outs[1 : 1 + self.carried]
            for g, v in zip(gathered, outs[1 + self.carried :]):
                v = np.asarray(v)
                total += v.size
                g.append(v)
            if total > MAX_LOOP_VALUES:
                raise ValueError(
                    "Loop %r: its scan outputs pass %d values (rnnfast gathers at most %d)"
                    % (self.name, total, MAX_LOOP_VALUES)
                )
            i += 1
        out = [np.asarray(v) for v in values]
        for k, g in enumerate(gathered):
            out.append(np.stack(g) if g else self._empty(1 + self.carried + k))
        return out[: self.num_outputs]


class ScanOp(_BodyOp):
    """An ONNX ``Scan`` node (opset 9 on): slots the ``N`` initial states, the ``M`` scan
    inputs, then the implicit inputs."""

    def __init__(self, node, slots, graph, captured, dtypes, states, in_axes, in_dirs, out_axes, out_dirs):
        super().__init__(node, slots, len(node.outputs), graph, captured, dtypes)
        self.states = int(states)
        self.in_axes, self.in_dirs = list(in_axes), list(in_dirs)
        self.out_axes, self.out_dirs = list(out_axes), list(out_dirs)
        self.options = "%d states, %d scan inputs, %d scan outputs" % (states, len(in_axes), len(out_axes))

    def compute(self, args, num_threads):
        N = self.states
        states = list(args[:N])
        xs = [np.asarray(x) for x in args[N : N + len(self.in_axes)]]
        captured = [args[i] for i in self.captured]
        axes = []
        for x, a in zip(xs, self.in_axes):
            if not -x.ndim <= a < x.ndim:
                raise ValueError("Scan %r: scan axis %d of an input of shape %s" % (self.name, a, x.shape))
            axes.append(a % x.ndim)
        lengths = {x.shape[a] for x, a in zip(xs, axes)}
        if len(lengths) != 1:
            raise ValueError("Scan %r: scan inputs of different lengths %s" % (self.name, sorted(lengths)))
        T = lengths.pop()
        gathered: list = [[] for _ in self.out_axes]
        for t in range(T):
            slices = [x[(slice(None),) * a + (T - 1 - t if d else t,)] for x, a, d in zip(xs, axes, self.in_dirs)]
            outs = self._body(states + slices, captured, num_threads)
            states = outs[:N]
            for g, v in zip(gathered, outs[N:]):
                g.append(np.asarray(v))
        out = [np.asarray(v) for v in states]
        for k, (g, a, d) in enumerate(zip(gathered, self.out_axes, self.out_dirs)):
            y = np.stack(g[::-1] if d else g) if g else self._empty(N + k)
            if not -y.ndim <= a < y.ndim:
                raise ValueError("Scan %r: scan output axis %d of a result of rank %d" % (self.name, a, y.ndim))
            out.append(np.moveaxis(y, 0, a % y.ndim) if a % y.ndim else y)
        return out[: self.num_outputs]


def _body(node, slots, ctx, n_inputs, what, key="body"):
    graph, captured, dtypes = ctx.body(node, node.attrs[key], slots)
    own = len(graph.inputs) - len(captured)
    if own != n_inputs:
        raise FormatError(
            "%s node %r: its %s takes %d inputs, expected %d (%s)" % (node.op_type, node.name, key, own, n_inputs, what)
        )
    return graph, captured, dtypes


def convert_if(node, slots, ctx):
    """An ONNX ``If`` node to an :class:`IfOp` (both branches converted)."""
    if node.num_explicit != 1:
        raise FormatError("If node %r has %d inputs (the condition only)" % (node.name, node.num_explicit))
    branches = []
    for key in ("then_branch", "else_branch"):
        if node.attrs[key] is None:
            raise FormatError("If node %r: attribute %r is required" % (node.name, key))
        graph, captured, _ = _body(node, slots, ctx, 0, "none: a branch reads the outer graph's tensors", key)
        if len(graph.outputs) != len(node.outputs):
            raise FormatError(
                "If node %r: its %s gives %d outputs, the node has %d"
                % (node.name, key, len(graph.outputs), len(node.outputs))
            )
        branches.append((graph, captured))
    return IfOp(node, slots, branches)


def convert_loop(node, slots, ctx):
    """An ONNX ``Loop`` node to a :class:`LoopOp`."""
    if node.attrs["body"] is None:
        raise FormatError("Loop node %r: attribute 'body' is required" % node.name)
    n = node.num_explicit
    if n < 2:
        raise FormatError("Loop node %r has %d inputs (M, cond and the loop-carried values)" % (node.name, n))
    carried = n - 2
    graph, captured, dtypes = _body(node, slots, ctx, 2 + carried, "iteration number, condition, loop-carried")
    scans = len(graph.outputs) - 1 - carried
    if scans < 0:
        raise FormatError(
            "Loop node %r: its body gives %d outputs for %d loop-carried values (expected the "
            "condition, then them, then the scan outputs)" % (node.name, len(graph.outputs), carried)
        )
    if len(node.outputs) > carried + scans:
        raise FormatError(
            "Loop node %r has %d outputs, its body gives %d" % (node.name, len(node.outputs), carried + scans)
        )
    return LoopOp(node, slots, graph, captured, dtypes, carried)


def convert_scan(node, slots, ctx):
    """An ONNX ``Scan`` node (opset 9 on) to a :class:`ScanOp`."""
    a = node.attrs
    if ctx.opset < 9:
        raise UnsupportedLayerError(
            "Scan",
            "opset",
            "node %r: Scan of opset %d (with sequence_lens and a batch axis: rnnfast runs Scan from opset 9)"
            % (node.name, ctx.opset),
        )
    if a["body"] is None or a["num_scan_inputs"] is None:
        raise FormatError("Scan node %r: attributes 'body' and 'num_scan_inputs' are required" % node.name)
    M = int(a["num_scan_inputs"])
    n = node.num_explicit
    if not 1 <= M <= n:
        raise FormatError("Scan node %r: num_scan_inputs=%d for %d inputs" % (node.name, M, n))
    N = n - M
    graph, captured, dtypes = _body(node, slots, ctx, n, "states, then one slice of each scan input")
    K = len(graph.outputs) - N
    if K < 0:
        raise FormatError("Scan node %r: its body gives %d outputs for %d states" % (node.name, len(graph.outputs), N))
    if len(node.outputs) > N + K:
        raise FormatError("Scan node %r has %d outputs, its body gives %d" % (node.name, len(node.outputs), N + K))

    def ints(key, count, default):
        v = a[key]
        if v is None:
            return [default] * count
        if len(v) != count:
            raise FormatError("Scan node %r: %s has %d values, expected %d" % (node.name, key, len(v), count))
        return [int(x) for x in v]

    in_axes, in_dirs = ints("scan_input_axes", M, 0), ints("scan_input_directions", M, 0)
    out_axes, out_dirs = ints("scan_output_axes", K, 0), ints("scan_output_directions", K, 0)
    for key, dirs in (("scan_input_directions", in_dirs), ("scan_output_directions", out_dirs)):
        if any(d not in (0, 1) for d in dirs):
            raise FormatError("Scan node %r: %s=%s (0 or 1)" % (node.name, key, dirs))
    return ScanOp(node, slots, graph, captured, dtypes, N, in_axes, in_dirs, out_axes, out_dirs)
