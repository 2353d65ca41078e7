"""Streams of an :class:`~rnnfast.OnnxModel` (``model.stream()``, ``model.step()``).

The stream machinery (:mod:`rnnfast.stream`: state blocks, batched steps, ``state``,
``reset``, locking) runs an ONNX graph through :class:`OnnxProgram`: the model's data
steps run on the chunk as they run on a whole sequence, except that

- each recurrent node (``LSTM`` / ``GRU`` / ``RNN``, forward only) starts from the
  stream's states and leaves its final states there, through the step path's
  row-exact kernels (:class:`rnnfast.stream._Kernel`): a chunked sequence gives
  bitwise the outputs of the whole sequence in one step;
- ``MatMul`` / ``Gemm`` on a constant weight run as the model's own calls run them,
  on the weights packed at load (``ProductOp``: rnnfast's packed product, each element
  one chain of multiply-adds; one row's weights read past the caches where the model
  marked them, ``stream_weights``), so a row's result does not depend on how many rows
  share the call.

Which axis of a tensor is time and which is the batch is followed from the input
through the graph, op by op, at ``model.stream()``; an op that reads across time
(a reduction or softmax over time, a convolution, a reverse or bidirectional node,
``sequence_lens``...) or whose rule is not known here is refused there with
:class:`~rnnfast.UnsupportedLayerError` naming the op and its node. Reading the last
step (``Gather`` of index -1, ``Slice`` from -1 on the time axis) is allowed: it gives
the output as if the sequence ended with the chunk.

Outputs come time-major for the stream machinery: an output with a time axis as
``(time, batch, features)`` (its other axes flattened), one without as ``(batch,
features)``.
"""

import threading

import numpy as np

from ._threads import resolve_num_threads
from .errors import UnsupportedLayerError
from .stream import Program, _Kernel, _step_one

__all__ = ["OnnxProgram"]

T, B = "T", "B"  # the labels of the time and the batch axes
#: (time steps, streams) of the run whose shapes tell where a computed Reshape puts them.
PROBE = (7, 3)

#: Ops that act on each element alone (and keep the first input's axes).
_UNARY = {
    "Identity", "Cast", "Dropout", "Relu", "Sigmoid", "Tanh", "Softsign", "Softplus", "Elu", "Selu", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Mish", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "Not", "Sin", "Cos", "Clip",
}  # fmt: skip
#: Element-wise ops of several inputs (numpy broadcasting).
_NARY = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "Where", "PRelu",
}  # fmt: skip
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd"}


class _No(Exception):
    """An op the stream cannot run: why."""


class _Rec:
    """A recurrent node on the step path: its kernel and its stream state slots."""

    def __init__(self, op, index, slots, widths):
        self.op = op
        self.name = op.name
        self.index = index
        self.slots = slots
        self.shapes = [(w,) for w in widths]  # of each state as stream.state gives it
        self.kernel = _Kernel(op.layer)
        self.with_c = op.layer.cell_spec.num_states > 1
        self.state_names = ["h", "c"] if self.with_c else ["h"]


class _RecStep:
    """A recurrent node in the stream's plan (:func:`rnnfast.model_onnx.flat_plan`,
    through :meth:`OnnxModel._stream_runner`): ``compute(args, num_threads)`` takes the
    node's arguments as its slots give them (``X``, ``sequence_lens``, ``initial_h``,
    ``initial_c``) and runs its kernel's step from the states of the call this thread
    is running (:attr:`OnnxProgram._call`), which it leaves there. ``num_threads`` is the
    call's resolved count. Bound once per stream program: at B=1 a step's Python (the
    argument list, the plan's look-ups, the checks) cost 18 us around a 5 us kernel."""

    def __init__(self, program, rec):
        self.program, self.rec = program, rec
        self.zeros: set = set()  # signatures whose initial states were checked zeros
        self.compute = _step_function(program._call, rec, self.zeros)


def _step_function(call, rec, zeros):
    """:attr:`_RecStep.compute` of node ``rec``: its kernel on the chunk, from the
    stream's states (``call.states``), which it leaves there. ``zeros``: the call
    signatures (``call.sig``) whose initial states were seen to be zeros (they are
    constants or come from the input's shape alone: the same for the same signature),
    checked once each."""
    op, kern = rec.op, rec.kernel
    dt, I, Ho, with_c = kern.dtype, kern.I, kern.Ho, rec.with_c
    hs, cs = rec.slots[0], rec.slots[1] if rec.with_c else None
    batch_first = op.layout == 1
    want_y, want_h, want_c = (list(op.outputs) + [False, False])[:3]
    nout = op.num_outputs
    tail, one_row, run_tail, entry_run = kern.tail, kern.one_row, kern.run_tail, kern.entry.run
    empty, ascontiguousarray, swapaxes = np.empty, np.ascontiguousarray, np.swapaxes

    def compute(args, num_threads):
        x, _, h0, c0 = args
        sig = call.sig
        if sig not in zeros:
            for s, what in ((h0, "initial_h"), (c0, "initial_c")):
                if s is not None and np.any(s):
                    raise ValueError("%s node %r: its %s is not zeros for this shape" % (op.op_type, rec.name, what))
            zeros.add(sig)
        if batch_first:
            x = swapaxes(x, 0, 1)
        if x.dtype != dt or not x.flags.c_contiguous:
            x = ascontiguousarray(x, dtype=dt)
        if x.shape[2] != I:
            raise ValueError("%s node %r expects %d input features, got %d" % (op.op_type, rec.name, I, x.shape[2]))
        Tn, Bn, states, mask = call.Tn, call.Bn, call.states, call.mask
        h = states[hs]
        c = states[cs] if with_c else None
        out = empty((Tn, Bn, Ho), dt) if want_y else None
        fields = tail(Bn, Tn, num_threads)
        if one_row:  # (BLAS held to one thread)
            run_tail(x, Tn, Bn, mask, out, h, c, fields)
        else:
            entry_run(x, Tn, Bn, mask, out, h, c, *fields)
        y = None if out is None else out[:, None] if not batch_first else swapaxes(out, 0, 1)[:, :, None]
        if nout == 1:
            return [y]
        res = [y, _final_state(h, batch_first) if want_h else None]
        if nout > 2:
            res.append(_final_state(c, batch_first) if want_c and c is not None else None)
        return res

    return compute


def _final_state(a, batch_first):
    """A stream's state ``a`` (1, B, H) as the node's ``Y_h`` / ``Y_c`` gives it: a copy,
    (B, 1, H) for a node of ``layout`` 1."""
    return (np.swapaxes(a, 0, 1) if batch_first else a).copy()


class OnnxProgram(Program):
    """An OnnxModel compiled for streaming (see the module docstring). Built by
    ``model.stream()`` once per model; read-only after."""

    def __init__(self, model):
        self.model = model
        self.what = model._what()
        self.stateful = False
        self.chain = None
        self.seq_outputs = None
        self.widths, self.dtypes, self.recurrent = [], [], []
        self.carried = self.recurrent  # the ops with state in a stream: the recurrent nodes
        self.step_one = None  # (set below where one stream's common chunk has a path of its own)
        if len(model._inputs) != 1:
            raise UnsupportedLayerError(
                "OnnxModel",
                None,
                "%s: streams run models of one input (this one takes %d)" % (self.what, len(model._inputs)),
            )
        spec = model._inputs[0]
        rank = len(spec["shape"])
        integer = spec["dtype"].kind in "iu"
        if not spec.get("ranked", True) or rank != (2 if integer else 3):
            raise UnsupportedLayerError(
                "OnnxModel",
                None,
                "%s: streams take an input of (batch, time, features) or (batch, time) ids, in any order; "
                "input %r has shape %s" % (self.what, spec["name"], spec["shape"]),
            )
        self.steps, self.count, self.out_index = model._compiled()
        self.n_frontier = len(model._frontier)
        # which input axes are time and batch: followed to the first recurrent node
        t_ax, b_ax = self._input_axes(rank)
        if isinstance(spec["shape"][t_ax], int):
            raise UnsupportedLayerError(
                "OnnxModel",
                None,
                "%s: input %r fixes its time axis to %d steps (export it with a dynamic time axis to stream)"
                % (self.what, spec["name"], spec["shape"][t_ax]),
            )
        self.fixed_batch = spec["shape"][b_ax] if isinstance(spec["shape"][b_ax], int) else None
        labels: list = [None] * rank
        labels[t_ax], labels[b_ax] = T, B
        self.in_axes = (t_ax, b_ax)
        rest = [i for i in range(rank) if i not in (t_ax, b_ax)]
        # (time, batch, rest) -> the input's axis order
        self.in_perm = [([t_ax, b_ax] + rest).index(i) for i in range(rank)]
        self.rec = {}
        self._call = threading.local()  # the call each thread is running: its states, mask, sizes
        self.keys = list(model._data.inputs) + [k for st in model._data.steps for k in st.outputs]
        self._shapes = None  # every tensor's shape at PROBE (time, batch), when a rule needs them
        self._in_shape = [PROBE[0] if i == t_ax else PROBE[1] if i == b_ax else d for i, d in enumerate(spec["shape"])]
        out_labels = self._follow(labels, strict=True)
        self.out_layouts = []
        for name, k in zip(model.output_names, self.out_index):
            lab = out_labels[k]
            if lab is None or B not in lab:
                raise UnsupportedLayerError(
                    "OnnxModel", None, "%s: output %r has no batch axis a stream can split" % (self.what, name)
                )
            order = ([lab.index(T)] if T in lab else []) + [lab.index(B)]
            order += [i for i in range(len(lab)) if i not in order]
            self.out_layouts.append((order, T in lab))
        self.inputs = [
            dict(
                name=spec["name"],
                dtype=spec["dtype"],
                integer=integer,
                features=None
                if integer
                else spec["shape"][rest[0]]
                if isinstance(spec["shape"][rest[0]], int)
                else None,
            )
        ]
        self.single_input, self.single_ids = not integer, integer
        self.in_dtype, self.in_features = spec["dtype"], self.inputs[0]["features"]
        self.single_output = model.output_names[0] if len(model.output_names) == 1 else None
        if self.single_output is not None and self.fixed_batch in (None, 1):
            self.step_one = _one_stream_step(self)

    # -- following the axes -------------------------------------------------------------

    def _input_axes(self, rank):
        """The input's (time, batch) axes: where the first recurrent node reads them."""
        labels = self._follow(list(range(rank)), strict=False)
        if labels is None:
            raise UnsupportedLayerError(
                "OnnxModel", None, "%s: no recurrent node reads the input (nothing to stream)" % self.what
            )
        return labels

    def _follow(self, in_labels, strict):
        """Labels (None, T, B; or input axis numbers when not ``strict``) of each
        tensor's axes, step by step. Not strict: returns the input axes the first
        recurrent node reads as time and batch (None if none does); strict: checks
        every op, refusing with UnsupportedLayerError, and returns every tensor's
        labels."""
        vals: list = [None] * self.count
        vals[0] = list(in_labels)
        for op, ins, outs, _ in self.steps:
            args: list = []
            for s in op.slots:
                if s is None:
                    args.append(None)
                elif s[0] == "const":
                    args.append(("const", s[1]))
                else:
                    i = ins[s[1]]
                    if 1 <= i <= self.n_frontier:
                        args.append(("shape", None))
                    else:
                        args.append(("data", vals[i]))
            if not strict and op.recurrent:
                x = args[0]
                if x[0] == "data" and x[1] is not None and len(x[1]) == 3:
                    t, b = (x[1][0], x[1][1]) if op.layout == 0 else (x[1][1], x[1][0])
                    if isinstance(t, int) and isinstance(b, int) and t is not b:
                        return t, b
                continue
            self._at = (ins, outs)
            try:
                res = self._rule(op, args, strict)
            except _No as e:
                if strict:
                    raise UnsupportedLayerError(
                        op.op_type,
                        None,
                        "%s node %r cannot run on a stream: %s (%s refused for streaming; nothing of it runs)"
                        % (op.op_type, op.name, e, self.what),
                    ) from None
                res = [None] * len(outs)
            for i, lab in zip(outs, res):
                vals[i] = lab
        return vals if strict else None

    def _rule(self, op, args, strict):
        """The output labels of ``op`` given its inputs' (kind, labels-or-value)."""
        kind = op.op_type
        data = [a for a in args if a is not None and a[0] == "data"]
        if any(a[1] is None for a in data):
            raise _No("it reads a tensor whose axes are not known")
        if not data:
            raise _No("it reads no data")  # (cannot happen: such steps are shape steps)
        if (
            any(a is not None and a[0] == "shape" for a in args[1:])
            and op.op_type not in ("Reshape",)
            and not op.recurrent
        ):
            raise _No("it reads a value computed from the input's shape")
        if op.recurrent:
            return self._recurrent_rule(op, args, strict)
        x = args[0][1] if args[0][0] == "data" else None
        attrs = getattr(op, "attrs", {})

        def const(j):
            a = args[j] if j < len(args) else None
            if a is None:
                return None
            if a[0] != "const":
                raise _No("input %d is not a constant" % j)
            return a[1]

        def free(axes, lab):  # the axes must carry neither time nor batch
            for a in axes:
                if lab[a % len(lab)] is not None:
                    raise _No("it acts along the %s axis" % ("time" if lab[a % len(lab)] == T else "batch"))

        if kind in _UNARY:
            if x is None or len(data) != 1:
                raise _No("its data is not its first input")
            return [x] + ([[None] * len(x)] if kind == "Dropout" else [])
        if kind in _NARY:
            rank = max(len(a[1]) if a[0] == "data" else a[1].ndim for a in args if a is not None)
            out: list = [None] * rank
            for a in args:
                if a is None:
                    continue
                if a[0] == "data":
                    lab = [None] * (rank - len(a[1])) + list(a[1])
                    for i, v in enumerate(lab):
                        if v is not None:
                            if out[i] not in (None, v):
                                raise _No("its inputs disagree on the time and batch axes")
                            out[i] = v
            for a in args:  # constants broadcast along time and batch (size 1 there)
                if a is not None and a[0] == "const":
                    shape = (1,) * (rank - a[1].ndim) + a[1].shape
                    if any(out[i] is not None and shape[i] != 1 for i in range(rank)):
                        raise _No("a constant input spans the time or batch axis")
            for a in data:
                lab = [None] * (rank - len(a[1])) + list(a[1])
                if any(out[i] is not None and lab[i] is None for i in range(rank)):
                    raise _No("an input lacks the time or batch axis the others have")
            return [out]
        if kind == "Gather" and x is None:  # an embedding: Gather(constant table, data ids)
            table, ids = const(0), args[1][1]
            if attrs["axis"] % table.ndim != 0:
                raise _No("it gathers from a constant along axis %d" % attrs["axis"])
            return [list(ids) + [None] * (table.ndim - 1)]
        if x is None:
            raise _No("its data is not its first input")
        n = len(x)
        if kind == "Transpose":
            perm = attrs.get("perm") or list(range(n))[::-1]
            return [[x[p] for p in perm]]
        if kind in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes")
            if len(args) > 1 and args[1] is not None:
                axes = [int(v) for v in np.asarray(const(1)).reshape(-1)]
            if axes is None:
                raise _No("it squeezes every axis of size 1 (which depends on the batch)")
            if kind == "Squeeze":
                gone = {a % n for a in axes}
                free(gone, x)
                return [[v for i, v in enumerate(x) if i not in gone]]
            m = n + len(axes)
            new = sorted(a % m for a in axes)
            lab, it = [], iter(x)
            for i in range(m):
                lab.append(None if i in new else next(it))
            return [lab]
        if kind == "MatMul":
            w = const(1)
            if w is None or w.ndim != 2 or n < 2:
                raise _No("it multiplies by a tensor that is not a constant matrix")
            free([n - 1], x)
            return [x[:-1] + [None]]
        if kind == "Gemm":
            if attrs.get("transA") or n != 2:
                raise _No("transA=1")
            if const(1) is None:
                raise _No("it multiplies by a tensor that is not a constant matrix")
            free([1], x)
            c = const(2)
            if c is not None and (c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1)):
                raise _No("its C spans the batch")
            return [[x[0], None]]
        if kind == "Gather":
            idx = const(1)
            if idx is None:
                raise _No("it gathers by data from data")
            axis = attrs["axis"] % n
            if x[axis] == T:
                if idx.ndim != 0 or int(idx) != -1:
                    raise _No("it gathers steps other than the last one")
                return [x[:axis] + x[axis + 1 :]]
            free([axis], x)
            return [x[:axis] + [None] * idx.ndim + x[axis + 1 :]]
        if kind == "Slice":
            if len(args) == 1:
                starts, ends, axes = attrs["starts"], attrs["ends"], attrs.get("axes")
                steps = None
            else:
                starts, ends = const(1).reshape(-1).tolist(), const(2).reshape(-1).tolist()
                axes = None if const(3) is None else const(3).reshape(-1).tolist()
                steps = None if const(4) is None else const(4).reshape(-1).tolist()
            axes = list(range(len(starts))) if not axes else axes
            steps = steps or [1] * len(starts)
            lab = list(x)
            for s, e, a, st in zip(starts, ends, axes, steps):
                a %= n
                if lab[a] == B:
                    raise _No("it slices the batch axis")
                if lab[a] == T:
                    if not (s == -1 and st == 1 and e >= 1 << 30):
                        raise _No("it slices time other than to the last step")
                    lab[a] = None
            return [lab]
        if kind in ("Softmax", "LogSoftmax"):
            axis = attrs["axis"] % n
            free(range(axis, n) if attrs.get("legacy") else [axis], x)
            return [x]
        if kind == "LayerNormalization":
            free(range(attrs["axis"] % n, n), x)
            return [x]
        if kind in _REDUCE:
            axes = attrs.get("axes")
            if len(args) > 1 and args[1] is not None:
                axes = const(1).reshape(-1).tolist()
            if not axes:
                raise _No("it reduces every axis")
            gone = {a % n for a in axes}
            free(gone, x)
            if attrs["keepdims"]:
                return [[None if i in gone else v for i, v in enumerate(x)]]
            return [[v for i, v in enumerate(x) if i not in gone]]
        if kind == "Concat":
            axis = attrs["axis"] % n
            free([axis], x)
            if any(a is not None and (a[0] != "data" or a[1] != x) for a in args):
                raise _No("it joins tensors whose time and batch axes differ (or constants)")
            return [x]
        if kind == "Split":
            axis = attrs["axis"] % n
            free([axis], x)
            return [x] * op.num_outputs
        if kind == "Reshape" and args[1] is not None and args[1][0] == "shape":
            return [self._reshaped(x)]
        if kind == "Reshape":
            shape = const(1)
            if shape is None or attrs.get("allowzero"):
                raise _No("its target shape is not a constant")
            shape = shape.reshape(-1).tolist()
            last = max(i for i, v in enumerate(x) if v is not None) if any(v is not None for v in x) else -1
            if last >= len(shape) or any(shape[i] != 0 for i in range(last + 1)):
                raise _No("it reshapes across the time or batch axis")
            return [x[: last + 1] + [None] * (len(shape) - last - 1)]
        if kind == "Flatten":
            axis = attrs["axis"] % (n + 1)
            if axis != 1 or any(v is not None for v in x[1:]):
                raise _No("it flattens the time or batch axis")
            return [[x[0], None]]
        raise _No("rnnfast does not know it to act on each step alone")

    def _reshaped(self, x):
        """The labels after a Reshape to a shape computed from the input's: read from
        the shapes of a run at :data:`PROBE` steps and streams. Each labelled axis must
        stay one axis with the same elements before it (row-major order kept)."""
        if self._shapes is None:
            model = self.model
            feed = np.zeros(self._in_shape, model._inputs[0]["dtype"])
            with np.errstate(all="ignore"):
                values, _ = model._graph.run([feed], 1, keep_all=True)
            self._shapes = {k: np.shape(v) for k, v in values.items()}
        ins, outs = self._at
        a, b = self._shapes.get(self.keys[ins[0]]), self._shapes.get(self.keys[outs[0]])
        if a is None or b is None or len(a) != len(x):
            raise _No("its shapes are not known")
        lab: list = [None] * len(b)
        for i, v in enumerate(x):
            if v is None:
                continue
            before = int(np.prod(a[:i], dtype=np.int64))
            j = next((j for j in range(len(b)) if int(np.prod(b[:j], dtype=np.int64)) == before and b[j] == a[i]), None)
            if j is None:
                raise _No("it reshapes across the time or batch axis")
            lab[j] = v
        return lab

    def _recurrent_rule(self, op, args, strict):
        x = args[0][1]
        layer = op.layer
        if layer.num_directions == 2 or layer.go_backwards:
            raise _No("its %s direction reads the sequence from its end (the future)" % (
                "backward" if layer.num_directions == 2 else "reverse"))  # fmt: skip
        want = [T, B, None] if op.layout == 0 else [B, T, None]
        if len(x) != 3 or x != want:
            raise _No("its X does not have the time and batch axes its layout says")
        lens, h0, c0 = args[1], args[2], args[3]
        if lens is not None:
            raise _No("sequence_lens (give the chunks their lengths instead)")
        for s, what in ((h0, "initial_h"), (c0, "initial_c")):
            if s is None:
                continue
            if s[0] == "data":
                raise _No("its %s comes from the graph's inputs (give it with stream.state instead)" % what)
            if s[0] == "const" and np.any(s[1]):
                raise _No("its %s is not zeros (give it with stream.state instead)" % what)
        if op not in self.rec:
            slots = []
            for w in [layer.output_size, layer.units][: layer.cell_spec.num_states]:
                slots.append(len(self.widths))
                self.widths.append(w)
                self.dtypes.append(layer.dtype)
            rec = self.rec[op] = _Rec(op, len(self.recurrent), slots, [self.widths[i] for i in slots])
            self.recurrent.append(rec)
        y = [T, None, B, None] if op.layout == 0 else [B, T, None, None]
        st = [None, B, None] if op.layout == 0 else [B, None, None]
        return ([y] + [st] * (op.num_outputs - 1))[: op.num_outputs]

    # -- running ------------------------------------------------------------------------

    def run(self, feeds, lengths, states, seen, num_threads):
        """The stream machinery's call (:meth:`rnnfast.stream.Program.run`): ``feeds``
        time-major ``(time, batch, ...)``, right-padded where ``lengths`` is given."""
        num_threads = resolve_num_threads(num_threads)  # (once, not per op: OnnxModel.run)
        x = feeds[0]
        Tn, Bn = x.shape[0], x.shape[1]
        if self.fixed_batch is not None and Bn != self.fixed_batch:
            raise ValueError(
                "%s fixes its batch to %d: step %d stream(s) at a time"
                % (self.what, self.fixed_batch, self.fixed_batch)
            )
        if x.dtype != self.in_dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self.in_dtype)
        feed = x.transpose(self.in_perm)
        model = self.model
        sig = model._shape_key([feed])
        cached = model._shape_cache.get(sig)
        while cached is None:  # the shape results for this chunk shape (a run on zeros, kept;
            # again should other calls have pushed them out of the cache meanwhile)
            model._values([np.zeros(feed.shape, feed.dtype)], 1)
            cached = model._shape_cache.get(sig)
        mask = None
        if lengths is not None:
            mask = np.ascontiguousarray(np.arange(Tn)[:, None] < lengths[None, :]).view(np.uint8)
        vals = self._vals(feed, sig, cached, states, mask, Tn, Bn, num_threads)
        out = []
        for v, (order, timed) in zip(vals, self.out_layouts):
            y = v.transpose(order)
            y = y.reshape(y.shape[:2] + (-1,)) if timed else y.reshape(y.shape[0], -1)
            out.append(y if y.flags.c_contiguous else np.ascontiguousarray(y))
        return out[0] if self.single_output is not None else out

    def _vals(self, feed, sig, cached, states, mask, Tn, Bn, num_threads):
        """The graph's outputs on ``feed`` (the input, as the model takes it) of signature
        ``sig`` and shape results ``cached``, from and to the stream ``states``, with the
        call's context (:attr:`_call`) set for the recurrent steps while it runs."""
        runner = self.__dict__.get("_runner")
        if runner is None or runner[0] != len(cached):
            runner = self._runner = (len(cached), self.model._stream_runner(self._plan_steps(), len(cached)))
        call = self._call
        call.states, call.mask, call.Tn, call.Bn, call.sig = states, mask, Tn, Bn, sig
        try:
            return runner[1]([feed], cached, num_threads)
        finally:
            call.states = None

    def _plan_steps(self):
        """The data steps (:meth:`OnnxModel._compiled`) as the stream runs them: each
        recurrent node's op replaced by its :class:`_RecStep`."""
        steps, count, outputs = self.steps, self.count, self.out_index
        return [(_RecStep(self, self.rec[op]) if op in self.rec else op, ins, outs, free)
                for op, ins, outs, free in steps], count, outputs  # fmt: skip


def _one_stream_step(p):
    """``p.step_one`` (:func:`rnnfast.stream.step`) of a model of one output: one
    stream's chunk of the common form (a C-contiguous ndarray of the input's dtype, (T,)
    ids or (T, F) features) whose shape results the model holds, run as
    :meth:`OnnxProgram.run` runs it, without the general path's list of chunks, their
    checks and the batch's output layout (the same values); any other chunk, or a new
    shape, through :func:`rnnfast.stream._step_one`."""
    ids, dt, F, perm = p.single_ids, p.in_dtype, p.in_features, p.in_perm
    model, ndarray = p.model, np.ndarray
    [(order, timed)] = p.out_layouts

    def one(p, x, s, num_threads):
        if (
            type(x) is ndarray
            and x.dtype == dt
            and x.flags.c_contiguous
            and x.shape[0] > 0
            and (x.ndim == 1 if ids else x.ndim == 2 and (F is None or x.shape[1] == F))
        ):
            T = x.shape[0]
            feed = (x.reshape(T, 1) if ids else x.reshape(T, 1, x.shape[1])).transpose(perm)
            sig = model._shape_key([feed])
            cached = model._shape_cache.get(sig)
            if cached is not None:
                num_threads = resolve_num_threads(num_threads)
                s._claim()
                try:
                    (v,) = p._vals(feed, sig, cached, s._slots, None, T, 1, num_threads)
                finally:
                    s._release()
                y = v.transpose(order)
                y = y.reshape(T, -1) if timed else y.reshape(-1)
                return y if y.flags.c_contiguous else np.ascontiguousarray(y)
        return _step_one(p, x, s, num_threads)

    return one
