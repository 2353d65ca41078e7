"""Streams: one sequence's state, stepped chunk by chunk, many streams per call.

A model (any :class:`~rnnfast.graph.Graph` of ops, and :class:`~rnnfast.TorchRNN`)
stays immutable and shared; a :class:`Stream` holds one sequence's state: every
recurrent layer's ``h`` (and ``c``), and every causal Conv1D's last input frames.
``model.step(chunk, stream)`` runs the chunk's steps from the stream's state and leaves
the state after them in the stream;
``model.step([chunks], [streams])`` runs many streams in one batched compiled call per
recurrent layer (chunks of different lengths right-padded: the rows whose chunk
ended carry their state through the padded steps).

Exactness. A stream's results are bitwise those of the whole sequence in one call,
whatever the chunking and whatever other streams share the call, because every
product on the step path computes a row on its own:

- the input projection runs on packed weights (c/packgemm: one chain of
  multiply-adds per element, whatever the rows), for every dtype and instruction set
  (the whole-sequence path calls BLAS where that is faster: BLAS results depend on
  the number of rows, e.g. GEMV for one row);
- the recurrent product runs on packed weights too (GRU reset-after, LSTM, SimpleRNN),
  or, for the cells whose per-step product calls BLAS (GRU reset-before, LSTM with a
  projection), with one row per work item (``batch_rows=1``: always a GEMV of one row);
- the gate math is element-wise per row; dense heads use the packed product and
  apply their activation (softmax too) row by row, as ``predict`` does
  (:meth:`rnnfast.layers.Dense.forward`, or :func:`_kernels.packed_rows` directly for
  the small ones); the other per-step ops are element-wise
  NumPy or reduce over the features of one step.

Where the whole-sequence path (``predict``) runs the same kernels (float32 on AVX-512:
packed projection and product), a stream also equals ``predict`` bitwise; elsewhere
it equals it to the documented tolerance.

Streamable ops: recurrent layers (not ``go_backwards``), causal Conv1D (strides 1;
``_CausalConv``: row-exact packed products of each step's window), and ops that
act on each step alone (:data:`PER_STEP`). Anything whose output needs later steps (a
Bidirectional layer, ``go_backwards``, pooling or Flatten over time, a non-causal
convolution, attention, ...) is refused at :meth:`model.stream() <Program>` with an
:class:`~rnnfast.UnsupportedLayerError` naming the layer: no prefix of the model is run.

Threads. A step releases the GIL in the compiled calls; different streams may be
stepped from different threads at once. A stream in use by one call is refused by any
other (``RuntimeError``), never corrupted.
"""

import contextlib
import threading
import weakref
from typing import Any

import numpy as np

from . import _kernels, _plan, _stream
from ._products import PARTNER_MACS, pack
from ._threads import blas_single_threaded, resolve_num_threads
from ._validation import as_ids, as_input
from .errors import UnsupportedLayerError
from .graph import Graph, Step, map_structure
from .layers import ACTIVATIONS, _with_cut

__all__ = [
    "Stream",
    "Program",
    "program",
    "open_stream",
    "step",
    "torch_program",
    "RecurrentOp",
    "PER_STEP",
    "stateful_layers",
    "check_stateful",
    "stateful_predict",
    "reset_stateful",
]

#: Op classes (by class name) that act on each time step alone and keep no state:
#: they run on a stream's chunk as they run on a whole sequence. A new causal op joins
#: here (or as a case of :func:`_compile_op`).
PER_STEP = {
    "ActivationNode",
    "IdentityNode",
    "MaskingNode",
    "EmbeddingNode",
    "AffineNode",
    "NormNode",
}


class Stream(_stream.StreamBase):
    """One sequence's state for a model: made by ``model.stream()``, stepped by
    ``model.step(chunk, stream)``.

    Attributes
    ----------
    state : dict
        Per recurrent layer name, its states as Keras orders them (``h``, or ``h, c``
        for an LSTM; several cells: each cell's in turn), each a 1-D array (units,);
        per causal Conv1D, one array (``(kernel_size - 1) * dilation``, channels): the
        last input frames it read, the oldest first (zeros at a sequence's start).
        Reading gives copies; assigning takes a dict of the same layers and shapes
        (``ValueError`` naming the layer otherwise).

    A stream is a row of its model's state blocks (the compiled part,
    ``rnnfast._stream.StreamBase``, keeps the block, the row and the claim); the row
    goes back to the block when the stream is gone. A stream does not pickle
    (``TypeError``): pickle its ``state`` and assign it to a new stream.
    """

    __slots__ = ("_slots", "_seen", "__weakref__")

    def __init__(self, program):
        super().__init__(program)
        block, row = self._block, self._row
        # views of the stream's row of its block: the kernels read and write them in place
        self._slots = [a[row : row + 1][None] for a in block.slots]
        self._seen = block.seen[:, row : row + 1]

    def reset(self):
        """Back to the start of a sequence: zero states."""
        with self._held():
            for a in self._slots:
                a.fill(0)
            self._seen[:] = False

    @property
    def state(self):
        with self._held():
            out = {}
            for op in self._program.carried:
                out[op.name] = [self._slots[i][0, 0].reshape(shape).copy() for i, shape in zip(op.slots, op.shapes)]
            return out

    @state.setter
    def state(self, value):
        p = self._program
        if not isinstance(value, dict):
            raise ValueError(
                "a stream's state is a dict by layer name (%s), got %s" % (p.names(), type(value).__name__)
            )
        unknown = [k for k in value if k not in {r.name for r in p.carried}]
        if unknown:
            raise ValueError("state for unknown layer(s) %s; this model's layers with state: %s" % (unknown, p.names()))
        new = []
        for rec in p.carried:
            if rec.name not in value:
                raise ValueError("state: layer %r is missing (give every layer: %s)" % (rec.name, p.names()))
            arrays = value[rec.name]
            if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
                arrays = [arrays]
            if len(arrays) != len(rec.slots):
                raise ValueError(
                    "state of layer %r: %d arrays (%s), got %d"
                    % (rec.name, len(rec.slots), rec.state_names, len(arrays))
                )
            for i, shape, a in zip(rec.slots, rec.shapes, arrays):
                a = as_input(a, p.dtypes[i], "state of layer %r" % rec.name)
                if a.shape not in (shape, (1,) + shape):
                    raise ValueError("state of layer %r: arrays of shape %s, got %s" % (rec.name, shape, a.shape))
                new.append((i, a.reshape(p.widths[i])))
        with self._held():
            for i, a in new:
                self._slots[i][0, 0] = a
            self._seen[:] = True  # a restored state is a sequence under way

    @contextlib.contextmanager
    def _held(self):
        self._claim()
        try:
            yield
        finally:
            self._release()

    def __repr__(self):
        return "<Stream of %s>" % self._program.what


# -- the compiled form of a model for streaming ------------------------------------------


class RecurrentOp:
    """A recurrent op as a graph node, for models that are not graphs of Keras nodes
    (TorchRNN): the ``rnn_layers`` run in turn, the last one's outputs returned.

    Parameters
    ----------
    name : str
        What messages and ``stream.state`` call it.
    rnn_layers : list of RNNLayer
    """

    keras_class = "RNN"
    return_state = False
    go_backwards = False
    zero_output_for_mask = False
    return_sequences = True
    stacked = False

    def __init__(self, name, rnn_layers, keras_class="RNN"):
        self.name = name
        self.rnn_layers = list(rnn_layers)
        self.keras_class = keras_class

    def run(self, x, mask, num_threads=None):
        h = x
        for layer in self.rnn_layers:
            h, _, _ = layer.forward(h, mask=mask, num_threads=num_threads)
        return [h], [mask]


class _Kernel:
    """One :class:`~rnnfast.layers.RNNLayer` as the step path runs it: its compiled entry
    with the weights bound (the input weights packed here where the layer projects
    through BLAS), and the plan's fixed parts."""

    def __init__(self, layer):
        self.layer = layer
        G = layer.cell_spec.num_gates
        Wp = layer._Wp
        if Wp.size == 0:
            Wp = _kernels.pack_blocks(layer._W, G, layer._ncb)
            Wp.flags.writeable = False
        # (a weight the layer keeps only packed comes as an array of its shape: not read)
        W, _, bx, U, Up, bhn, Wr = layer._kernel_weights()
        # float GRU reset-before and LSTM with projection: their per-step product calls
        # BLAS, whose result for a row depends on the rows of the call: one row per item
        # (bf16 / int8 products are the core's own at every batch)
        self.one_row = layer._Up.size == 0 and layer._q is None
        self.ncb = layer._ncb
        self.GH = layer._gh
        self.Ho, self.H, self.I = layer.output_size, layer.units, layer.input_size
        self.with_c = layer.cell_spec.num_states > 1
        self.dtype = layer.dtype
        self._plans = {}
        self._cuts = {}
        self._tails = {}
        # the compiled entry with the weights (float, and bf16 / int8 where reduced: the
        # layer's q) bound once (checked there, once), the peephole LSTM's vectors and the
        # ONNX cell options (layers.RNNLayer); every step runs it
        self.entry = _kernels.StepEntry(
            layer._kernel.code, layer._act, layer._ract, W, Wp, bx, U, Up, bhn, Wr,
            _plan.plan(B=1, D=1, Ho=self.Ho, GH=self.GH, ncb=self.ncb, num_threads=1), q=layer._q,
            peep=layer._peep, clip=0.0 if layer.clip is None else layer.clip, input_forget=layer.input_forget,
        )  # fmt: skip

    def cuts(self, B, T, num_threads):
        """The plan of :meth:`plan` as the numbers :class:`_kernels.StepEntry` takes:
        (strategy, unit blocks, batch rows, chunk, threads)."""
        got = self._cuts.get((B, T))
        if got is None:
            p = self.plan(B, T, 1 << 20)
            got = self._cuts[(B, T)] = (p.strategy, p.unit_blocks, p.batch_rows, p.chunk, p.num_threads)
        if got[4] > 1:
            return got[:4] + (min(got[4], resolve_num_threads(num_threads)),)
        return got

    def plan(self, B, T, num_threads):
        """The plan of a call of T steps over B rows: the shapes' plan (cached), one row
        per item where the cell's product calls BLAS, and the team: ``num_threads``
        (resolved only when the call is big enough to use more than one thread, or to
        share a step with the partner thread, which one thread does not:
        :func:`rnnfast._plan.uses_partner`)."""
        got = self._plans.get((B, T))
        if got is None:
            p = _plan.plan(
                B=B, D=1, Ho=self.Ho, GH=self.GH, ncb=self.ncb, num_threads=1 << 20, T=T, precision=self.layer.precision
            )
            if self.one_row:
                p = p._replace(batch_rows=1)
            got = (p._replace(num_threads=1), p.num_threads)  # the plan, and the most threads it uses
            if len(self._plans) > 512:
                self._plans.clear()
            self._plans[(B, T)] = got
        p, cap = got
        if cap > 1:
            p = p._replace(num_threads=min(cap, resolve_num_threads(num_threads)))
        elif p.partner and resolve_num_threads(num_threads) < 2:
            p = p._replace(partner=False)
        return p

    def tail(self, B, T, num_threads):
        """:meth:`plan` as the last arguments of the entry's ``run`` (strategy, unit
        blocks, batch rows, chunk, threads, keep_team, partner), for a thread count
        already resolved (an int): kept per (B, T, count)."""
        key = (B, T, num_threads)
        got = self._tails.get(key)
        if got is None:
            got = _with_cut(self.plan(B, T, num_threads))[1]
            if len(self._tails) > 512:
                self._tails.clear()
            self._tails[key] = got
        return got

    def run(self, x, T, B, mask, h, c, out, num_threads):
        """x (T*B, I), mask (T, B) uint8 or (0, 0), h (1, B, Ho) and c (1, B, H) or
        (0, 0, 0) IN/OUT, out (T*B, Ho) or (0, 0): the bound entry (:attr:`entry`; the
        general ``rnn_forward`` took ~25 us a call to read its arrays) on the plan."""
        self.run_tail(
            x, T, B, mask if mask.size else None, out if out.size else None, h, c if self.with_c else None,
            _with_cut(self.plan(B, T, num_threads))[1],
        )  # fmt: skip

    def run_tail(self, x, T, B, mask, out, h, c, tail):
        """The entry's ``run`` on the plan's fields ``tail`` (:meth:`tail`), mask, out and
        c None where absent; under :func:`blas_single_threaded` where a product of the
        cell calls BLAS."""
        if self.one_row:
            with blas_single_threaded():
                self.entry.run(x, T, B, mask, out, h, c, *tail)
        else:
            self.entry.run(x, T, B, mask, out, h, c, *tail)


_NULL = contextlib.nullcontext()


class _Recurrent:
    """A recurrent op of the graph on the step path: its kernels (one per cell) and
    the stream's state slots they read and write."""

    def __init__(self, op, slots, widths):
        self.op = op
        self.name = op.name
        self.kernels = [_Kernel(layer) for layer in op.rnn_layers]
        self.index = -1  # its place in the program's recurrent ops (set by the program)
        self.slots = slots
        self.state_names = []
        for layer in op.rnn_layers:
            self.state_names += ["h", "c"][: layer.cell_spec.num_states]
        self.return_sequences = op.return_sequences
        self.return_state = op.return_state
        self.zero_output_for_mask = op.zero_output_for_mask
        self.widths = widths
        self.shapes = [(w,) for w in widths]  # of each slot's state as stream.state gives it


class _Dense:
    """A dense layer on the step path: the layer's own call
    (:meth:`rnnfast.layers.Dense.forward`: the packed product, its activation, softmax
    too, row by row; a row's values do not depend on the rows beside it, so a stream's
    are those of ``predict``; weights read past the caches at one row where the model
    marked them, :attr:`~rnnfast.layers.Dense.stream`), then the node's extra activation
    if any."""

    def __init__(self, node, dense, post):
        self.node = node
        self.dense = dense
        self.dtype = dense.dtype
        K, N = dense.kernel.shape
        self.K, self.N = K, N
        self.Bp = dense.packed_kernel()  # the layer's own packed copy, not a second one
        self.bias = dense.bias if dense.bias is not None else np.zeros(0, self.dtype)
        act = dense.activation
        self.softmax = act == "softmax"
        self.act = -1 if act in ("linear", "softmax") else ACTIVATIONS[act]
        self.extra = getattr(node, "activation", None) if node is not None else None
        self.post = post

    def run(self, x, mask, num_threads=None):
        if x.dtype != self.dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.shape[-1] != self.K:
            raise ValueError("Dense %r expects %d input features, got shape %s" % (self.node.name, self.K, x.shape))
        y = self.dense.forward(x, num_threads=num_threads)
        if self.extra is not None:
            y = self.post(self.extra, y)
        return [y], [mask]


class _CausalConv:
    """A causal Conv1D on the step path (strides 1): the output at a step reads that
    step's input and the ``keep = (kernel_size - 1) * dilation`` before it, which a
    stream keeps as its state (slot ``slot``: (keep, channels) frames, the oldest first;
    zeros at a sequence's start, as Keras' causal padding). Each output row is one
    packed product of its window (:func:`_kernels.packed_rows`, per group): its values
    never depend on the other rows, so any chunking gives the whole call's bits."""

    def __init__(self, op, slot, activation):
        self.op = op
        self.name = op.name
        self.dtype = op.dtype
        k, cin_g, cout = op.kernel.shape
        self.k, self.d, self.groups = k, op.dilation, op.groups
        self.keep = (k - 1) * op.dilation
        self.C, self.cin_g, self.cout_g = cin_g * op.groups, cin_g, cout // op.groups
        self.cout = cout
        self.slot = slot
        self.slots = [slot] if self.keep else []
        self.shapes = [(self.keep, self.C)] if self.keep else []
        self.packed = []
        for g in range(op.groups):
            w = op.kernel[:, :, g * self.cout_g : (g + 1) * self.cout_g].reshape(k * cin_g, self.cout_g)
            bp = pack(w)
            b = op.bias[g * self.cout_g : (g + 1) * self.cout_g] if op.bias is not None else np.zeros(0, self.dtype)
            self.packed.append((bp, np.ascontiguousarray(b, dtype=self.dtype)))
        self.activation = op.activation
        self.post = activation

    def run(self, x, states, lengths):
        """x (T, B, C) time-major; ``states`` per slot (1, B, width), this one's
        IN/OUT; ``lengths`` (B,) or None: a row's state keeps the frames before its
        chunk's end (padded steps never enter it). Returns (T, B, Cout)."""
        if x.ndim != 3 or x.shape[2] != self.C:
            raise ValueError("Conv1D %r expects %d input channels, got shape %s" % (self.name, self.C, x.shape))
        T, B, C = x.shape
        keep, k, d, dt = self.keep, self.k, self.d, self.dtype
        if keep:
            buf = states[self.slot][0]  # (B, keep * C)
            ext = np.empty((keep + T, B, C), dt)
            ext[:keep] = buf.reshape(B, keep, C).swapaxes(0, 1)
            ext[keep:] = x
        else:
            ext = x
        cols = np.empty((T, B, k, C), dt)
        for j in range(k):
            cols[:, :, j] = ext[j * d : j * d + T]
        M = T * B
        if self.groups == 1:
            bp, bias = self.packed[0]
            y = np.empty((T, B, self.cout), dt)
            _kernels.packed_rows(cols.reshape(M, k * C), bp, bias, y.reshape(M, self.cout))
        else:
            y = np.empty((T, B, self.cout), dt)
            yg = np.empty((M, self.cout_g), dt)
            cg, og = self.cin_g, self.cout_g
            for g, (bp, bias) in enumerate(self.packed):
                a = np.ascontiguousarray(cols[..., g * cg : (g + 1) * cg]).reshape(M, k * cg)
                _kernels.packed_rows(a, bp, bias, yg)
                y[..., g * og : (g + 1) * og] = yg.reshape(T, B, og)
        if keep:
            if lengths is None:
                last = ext[T:]
            else:  # row b's last frames end at its length
                last = ext[lengths[None, :] + np.arange(keep)[:, None], np.arange(B)[None, :]]
            buf[...] = last.swapaxes(0, 1).reshape(B, keep * C)
        if self.activation != "linear":
            y = self.post(self.activation, y)
        return y


class Program:
    """A model compiled for streaming: the graph's steps with their step-path form,
    the state slots a :class:`Stream` holds, and the batched step.

    Built once per model (:func:`program`), read-only after; shared by every stream
    and thread.

    Parameters
    ----------
    graph : Graph
        The model's graph (time-major sequences, as :class:`~rnnfast.KerasModel` runs it).
    inputs : list of dict
        Per graph input: ``dtype`` and ``integer`` (ids for an Embedding), ``features``
        (or None for ids).
    what : str
        The model, for messages.
    activation : callable, optional
        ``activation(name, y)``: the activations a Dense node applies after its product
        (:func:`rnnfast.model_keras.keras_activation`).
    """

    def __init__(self, graph, inputs, what, activation=None, stateful=False):
        self.activation = activation
        self.stateful = bool(stateful)
        self.graph = graph
        self.inputs = inputs
        self.what = what
        self.widths, self.dtypes = [], []
        self.recurrent = []
        self.carried = []  # every op with state in a stream: the recurrent ones, causal convolutions
        self.entries = []  # (kind, obj, step)
        for step in graph.steps:
            self.entries.append(self._compile(step) + (bool(getattr(step.op, "multi_input", False)),))
        self._free = graph._free
        outs = graph.outputs
        self.single_output = outs if not isinstance(outs, (list, dict)) else None
        self.single_input = len(inputs) == 1 and not inputs[0]["integer"]
        self.single_ids = len(inputs) == 1 and inputs[0]["integer"]
        self.in_dtype, self.in_features = np.dtype(inputs[0]["dtype"]), inputs[0].get("features")
        self.chain = None if self.stateful else self._chain()
        # model.step(x, stream) of one stream: the chain's, with the common case inline
        self.step_one = _chain_step_one(self) if self.chain is not None and self.single_input else None
        self.seq_outputs = None  # filled on the first step: which outputs have a time axis

    def names(self):
        return ", ".join(repr(r.name) for r in self.carried)

    def _refuse(self, op, why):
        cls = getattr(op, "keras_class", type(op).__name__)
        raise UnsupportedLayerError(
            cls,
            None,
            "%s layer %r cannot run on a stream: %s (%s refused for streaming; nothing of it runs)"
            % (cls, getattr(op, "name", "?"), why, self.what),
        )

    def _compile(self, step):
        if self.stateful:
            return self._compile_stateful(step)
        op = step.op
        kind = type(op).__name__
        if hasattr(op, "forward_node") or (getattr(op, "rnn_layers", None) and op.rnn_layers[0].num_directions == 2):
            self._refuse(op, "its backward direction reads the sequence from its end (the future)")
        if getattr(op, "rnn_layers", None) is not None and hasattr(op, "return_sequences"):
            if op.go_backwards:
                self._refuse(op, "go_backwards reads the sequence from its end (the future)")
            if step.states:
                self._refuse(op, "its initial state comes from another layer (give it with stream.state instead)")
            return self._recurrent_entry(op, step)
        if step.options.get("use_mask") is False:
            self._refuse(op, "it is called with options the step path does not take")
        if kind == "DenseNode":
            return ("op", _Dense(op, op.dense, self.activation), step)
        if kind == "ConvNode" and op.padding == "causal":
            return self._conv_entry(op, step)
        if kind == "TimeDistributedNode":
            inner = op.inner
            if type(inner).__name__ == "DenseNode":
                return ("op", _Dense(inner, inner.dense, self.activation), step)
            if type(inner).__name__ in PER_STEP:
                return ("op", op, step)
            self._refuse(op, "its inner layer %s is not a per-step layer" % type(inner).__name__)
        if kind == "MergeNode":
            if op.kind == "concat" and op.axis not in (-1, 2):
                self._refuse(op, "it concatenates along axis %d (the step path concatenates features only)" % op.axis)
            return ("op", op, step)
        if kind in PER_STEP:
            return ("op", op, step)
        why = {
            "GlobalPoolingNode": "it pools over the whole sequence",
            "FlattenNode": "it flattens the whole sequence",
            "PoolNode": "it pools windows of steps",
            "ConvNode": "a convolution reads steps around each step (the future): only padding='causal' streams",
            "AttentionNode": "attention reads every step of its values (the future)",
            "RepeatVectorNode": "it repeats a whole-sequence summary",
            "ReshapeNode": "it reshapes across time",
            "DotNode": "it multiplies along time",
            "StepsNode": "it pads, crops or repeats steps",
        }.get(kind, "rnnfast does not know it to act on each step alone")
        self._refuse(op, why)

    def _compile_stateful(self, step):
        """Keras ``stateful=True``: each call is the next part of the batch's sequences
        for the stateful recurrent layers (their states carried); every other op runs
        on the call's input as ``predict`` runs it (Keras runs them per call)."""
        op = step.op
        inner = [getattr(op, "forward_node", None), getattr(op, "backward_node", None)]
        for n in inner:
            if n is not None and getattr(n, "stateful", False):
                raise UnsupportedLayerError(
                    n.keras_class,
                    "stateful",
                    "stateful=True inside Bidirectional %r (its backward direction starts each call at "
                    "the call's last step: no state to carry; %s)" % (op.name, self.what),
                )
        if not getattr(op, "stateful", False):
            return ("op", op, step)
        if op.go_backwards:
            raise UnsupportedLayerError(
                op.keras_class, "stateful", "layer %r: stateful=True with go_backwards=True (%s)" % (op.name, self.what)
            )
        if step.states:
            raise UnsupportedLayerError(
                op.keras_class,
                "stateful",
                "layer %r: stateful=True with an initial_state from another layer (%s)" % (op.name, self.what),
            )
        return self._recurrent_entry(op, step)

    def _recurrent_entry(self, op, step):
        slots, widths = [], []
        for layer in op.rnn_layers:
            for w in [layer.output_size, layer.units][: layer.cell_spec.num_states]:
                slots.append(len(self.widths))
                self.widths.append(w)
                self.dtypes.append(layer.dtype)
                widths.append(w)
        rec = _Recurrent(op, slots, widths)
        rec.index = len(self.recurrent)
        self.recurrent.append(rec)
        self.carried.append(rec)
        return ("recurrent", rec, step)

    def _conv_entry(self, op, step):
        """A causal Conv1D: its state slot (the last input frames), or the refusal of
        the options the step path does not take."""
        if op.strides != 1:
            self._refuse(op, "a causal convolution with strides=%d (the step path runs strides=1)" % op.strides)
        if op.channels_first or op.depthwise is not None:
            self._refuse(op, "a causal convolution on channels_first data or a depthwise one (not stepped)")
        conv = _CausalConv(op, len(self.widths), self.activation)
        if conv.keep:
            self.widths.append(conv.keep * conv.C)
            self.dtypes.append(conv.dtype)
            self.carried.append(conv)
        return ("conv", conv, step)

    # -- running ----------------------------------------------------------------------

    def _chain(self):
        """The fast form of a model that is a chain with no mask anywhere (one input,
        each op reading the previous op's only output): one function per op,
        ``f(x, states, num_threads) -> y``, run by a single stream's step without the
        graph's bookkeeping. None for any other model."""
        prev = self.graph.inputs[0] if len(self.graph.inputs) == 1 else None
        fns = []
        # what the step guarantees of the value entering the next op (features, dtype;
        # contiguous): the step's checked input (``_step_one``, ``_step_many``), then each op's
        known = (self.in_features, self.in_dtype) if self.single_input else None
        for kind, obj, step, multi in self.entries:
            op = step.op
            if (
                prev is None
                or multi
                or step.inputs != [prev]
                or len(step.outputs) != 1
                or step.states
                or step.options
                or type(op).__name__ == "MaskingNode"
                or (type(op).__name__ == "EmbeddingNode" and op.mask_zero)
                or getattr(op, "mask_rule", "keep") == "create"
            ):
                return None
            if kind == "recurrent":
                one = len(obj.kernels) == 1 and not obj.kernels[0].one_row
                fns.append(_chain_one_kernel(obj, known) if one else _chain_recurrent(obj))
                last = obj.kernels[-1]
                known = (last.Ho, last.dtype) if one and obj.return_sequences else None
            elif kind == "conv":
                fns.append(_chain_conv(obj))
                known = None
            elif isinstance(obj, _Dense) and obj.extra is None:
                fns.append(_chain_dense(obj, known))
                known = (obj.N, obj.dtype)
            else:
                fns.append(_chain_op(obj))
                known = None
            prev = step.outputs[0]
        return fns if prev == self.graph.outputs else None

    def take_row(self):
        """A free row of a state block (a new block when all are full), zeroed."""
        with _programs_lock:
            blocks = self.__dict__.setdefault("_blocks", [])
            for block in blocks:
                if block.free:
                    row = block.free.pop()  # (rows come back without the lock: one list call)
                    break
            else:
                block = _stream.Block(self, self.widths, self.dtypes, len(self.recurrent))
                blocks.append(block)
                row = block.free.pop()
        block.clear(row)
        return block, row

    def prepare(self, x, what):
        """One stream's input (one array per graph input, or a list / dict for several)
        -> list of arrays, time first: (T, F) floats or (T,) ids."""
        n = len(self.inputs)
        if n == 1:
            xs = [x]
        elif isinstance(x, dict):
            names = [spec["name"] for spec in self.inputs]
            missing = [k for k in names if k not in x]
            if missing:
                raise ValueError("%s: missing input(s) %s" % (what, missing))
            xs = [x[k] for k in names]
        elif isinstance(x, (list, tuple)) and len(x) == n:
            xs = list(x)
        else:
            raise ValueError("%s takes %d inputs: pass a list or a dict of chunks" % (what, n))
        out = []
        T = None
        for spec, a in zip(self.inputs, xs):
            if spec["integer"]:
                a = as_ids(a, "%s: ids" % what)
                if a.ndim != 1:
                    raise ValueError("%s: a chunk of ids has shape (time,), got %s" % (what, a.shape))
            else:
                a = as_input(a, spec["dtype"], "%s: chunk" % what)
                F = spec["features"]
                if a.ndim != 2 or (F is not None and a.shape[1] != F):
                    raise ValueError(
                        "%s: a chunk has shape (time, %s), got %s" % (what, F if F is not None else "features", a.shape)
                    )
            if a.shape[0] < 1:
                raise ValueError("%s: a chunk needs at least one time step, got shape %s" % (what, a.shape))
            if T is not None and a.shape[0] != T:
                raise ValueError("%s: the inputs' chunks have different lengths %d and %d" % (what, T, a.shape[0]))
            T = a.shape[0]
            out.append(a)
        return out, T

    def run(self, feeds, lengths, states, seen, num_threads):
        """Run the graph on a batch of streams.

        feeds : list of time-major arrays (T, B, F) or (T, B) ids, right-padded
        lengths : (B,) ints, or None when every chunk has T steps
        states : per slot an array (1, B, width), IN/OUT
        seen : (recurrent ops, B) bool: rows that have stepped (a masked step outputs
            the carried state only after one), IN/OUT
        Returns the output values (time-major), in the graph's output structure.
        """
        pad = None
        if lengths is not None:
            pad = np.arange(feeds[0].shape[0])[:, None] < lengths[None, :]
        values = dict(zip(self.graph.inputs, feeds))
        masks = dict.fromkeys(self.graph.inputs)
        for (kind, obj, step, multi), free in zip(self.entries, self._free):
            if kind == "recurrent":
                k = step.inputs[0]
                outs = self._recurrent(obj, values[k], masks[k], pad, lengths, states, seen, num_threads)
                out_masks = [masks[k] if obj.return_sequences else None] + [None] * (len(outs) - 1)
            elif kind == "conv":
                outs, out_masks = [obj.run(values[step.inputs[0]], states, lengths)], [None]
            else:
                x: Any
                m: Any
                if multi:
                    x = [values[k] for k in step.inputs]
                    m = [masks[k] for k in step.inputs]
                else:
                    x, m = values[step.inputs[0]], masks[step.inputs[0]]
                extra = step.options
                if step.states:
                    extra = dict(extra, initial_state=[values[k] for k in step.states])
                outs, out_masks = obj.run(x, m, num_threads, **extra)
            for k in free:
                del values[k]
                del masks[k]
            for k, v, mk in zip(step.outputs, outs, out_masks):
                values[k] = v
                masks[k] = mk
        if self.single_output is not None:
            return values[self.single_output]
        return map_structure(values.__getitem__, self.graph.outputs)

    def _recurrent(self, rec, x, mask, pad, lengths, states, seen, num_threads):
        if x.ndim != 3:
            raise ValueError("%s %r needs a sequence, got shape %s" % (rec.op.keras_class, rec.name, x.shape))
        T, B = x.shape[:2]
        valid = None  # the steps the kernel runs: the user's mask and the padding
        if mask is not None:
            valid = np.asarray(mask, bool)
            if pad is not None:
                valid = valid & pad
        elif pad is not None:
            valid = pad
        km = np.ascontiguousarray(valid).view(np.uint8) if valid is not None else _NO_MASK
        kernels = rec.kernels
        n = len(kernels)
        si = 0
        h0 = None
        for k, kern in enumerate(kernels):
            last = k == n - 1
            if x.dtype != kern.dtype or not x.flags.c_contiguous:
                x = np.ascontiguousarray(x, dtype=kern.dtype)
            h = states[rec.slots[si]]
            if kern.with_c:
                c = states[rec.slots[si + 1]]
                si += 2
            else:
                c = _NO_STATE[kern.dtype.char]
                si += 1
            seq = not last or rec.return_sequences
            if last and mask is not None and seq and not rec.zero_output_for_mask:
                h0 = h[0].copy()  # masked leading steps output the carried state
            if seq:
                out = np.empty((T, B, kern.Ho), kern.dtype)
                kern.run(x.reshape(T * B, kern.I), T, B, km, h, c, out.reshape(T * B, kern.Ho), num_threads)
                x = out
            else:
                kern.run(x.reshape(T * B, kern.I), T, B, km, h, c, _NO_OUT[kern.dtype.char], num_threads)
        s = seen[rec.index]
        if rec.return_sequences:
            y = x
            if mask is not None:
                assert valid is not None  # computed with the mask
                if rec.zero_output_for_mask:
                    y = np.where(valid[:, :, None], y, y.dtype.type(0))
                else:
                    # before a row's first valid step in this chunk the kernel emits
                    # zeros; a row that stepped in an earlier chunk emits its carried state
                    first = np.where(valid.any(axis=0), valid.argmax(axis=0), T)
                    assert h0 is not None  # kept above for this case
                    for b in np.nonzero(s & (first > 0))[0]:
                        y[: first[b], b] = h0[b]
        else:
            y = h[0].copy()
            if mask is not None and rec.zero_output_for_mask:
                m = np.asarray(mask, bool)
                idx = (lengths - 1) if lengths is not None else np.full(B, T - 1)
                y = np.where(m[idx, np.arange(B)][:, None], y, y.dtype.type(0))
        if valid is not None:
            s |= valid.any(axis=0)
        else:
            s[:] = True
        if rec.return_state:
            return [y] + [states[i][0].copy() for i in rec.slots]
        return [y]


def _chain_op(obj):
    run = obj.run

    def f(x, states, num_threads):
        return run(x, None, num_threads)[0][0]

    return f


def _chain_one_kernel(rec, known):
    """The usual recurrent op of a chain: one cell whose products need no BLAS guard,
    the compiled entry called directly (the step's hot path: no other Python).
    ``known``: the (features, dtype) of its input where the chain guarantees them (the
    previous op's output, or the step's checked input): then nothing is re-checked."""
    (kern,) = rec.kernels
    hs = rec.slots[0]
    cs = rec.slots[1] if kern.with_c else None
    dt, I, Ho = kern.dtype, kern.I, kern.Ho
    seq = rec.return_sequences
    cuts = kern.cuts
    run = kern.entry.run
    empty = np.empty

    if known == (I, dt) and cs is None and seq:

        def known_input(x, states, num_threads):  # GRU / SimpleRNN returning sequences
            T, B = x.shape[0], x.shape[1]
            out = empty((T, B, Ho), dt)
            run(x, T, B, None, out, states[hs], None, *cuts(B, T, num_threads))
            return out

        return known_input

    def f(x, states, num_threads):
        T, B = x.shape[0], x.shape[1]
        if x.dtype != dt or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=dt)
        h = states[hs]
        c = states[cs] if cs is not None else None
        if x.shape[2] != I:
            raise ValueError("%s %r expects %d input features, got %d" % (rec.op.keras_class, rec.name, I, x.shape[2]))
        if seq:
            out = empty((T, B, Ho), dt)
            run(x, T, B, None, out, h, c, *cuts(B, T, num_threads))
            return out
        run(x, T, B, None, None, h, c, *cuts(B, T, num_threads))
        return h[0].copy()

    return f


def _chain_conv(conv):
    run = conv.run

    def f(x, states, num_threads):
        return run(x, states, None)

    return f


def _chain_dense(d, known):
    """A Dense of a chain whose activation the packed product applies; ``known`` as
    :func:`_chain_one_kernel`'s. A softmax, weights marked to stream past the caches, or
    a product big enough for a second thread (:data:`rnnfast._products.PARTNER_MACS`
    per row) go through the layer's own call (:class:`_Dense`); the rest call the packed
    product directly (the same bits, less Python per step)."""
    K, N, dt, Bp, bias, act = d.K, d.N, d.dtype, d.Bp, d.bias, d.act
    name = d.node.name
    if d.softmax or d.dense.stream or K * N >= PARTNER_MACS:
        return _chain_op(d)

    rows = _kernels.packed_rows  # (float ndarrays read through their fields: no memoryviews, no dispatch)
    empty = np.empty

    if known == (K, dt):

        def known_input(x, states, num_threads):  # contiguous, (..., K), of dtype dt
            y = empty(x.shape[:-1] + (N,), dt)
            rows(x.reshape(-1, K), Bp, bias, y.reshape(-1, N), act)
            return y

        return known_input

    def f(x, states, num_threads):
        if x.shape[-1] != K:
            raise ValueError("Dense %r expects %d input features, got shape %s" % (name, K, x.shape))
        if x.dtype != dt or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=dt)
        y = empty(x.shape[:-1] + (N,), dt)
        rows(x.reshape(-1, K), Bp, bias, y.reshape(-1, N), act)
        return y

    return f


def _chain_recurrent(rec):
    """A recurrent op of a chain (no mask): its kernels in turn on the stream's slots."""
    plan = []
    si = 0
    for kern in rec.kernels:
        plan.append((kern, rec.slots[si], rec.slots[si + 1] if kern.with_c else None))
        si += 2 if kern.with_c else 1
    last_seq = rec.return_sequences
    n = len(plan)

    def f(x, states, num_threads):
        T, B = x.shape[0], x.shape[1]
        for k, (kern, hs, cs) in enumerate(plan):
            if x.dtype != kern.dtype or not x.flags.c_contiguous:
                x = np.ascontiguousarray(x, dtype=kern.dtype)
            h = states[hs]
            c = states[cs] if cs is not None else _NO_STATE[kern.dtype.char]
            if k < n - 1 or last_seq:
                out = np.empty((T, B, kern.Ho), kern.dtype)
                kern.run(x.reshape(T * B, kern.I), T, B, _NO_MASK, h, c, out.reshape(T * B, kern.Ho), num_threads)
                x = out
            else:
                kern.run(x.reshape(T * B, kern.I), T, B, _NO_MASK, h, c, _NO_OUT[kern.dtype.char], num_threads)
                x = h[0].copy()
        return x

    return f


_NO_MASK = np.zeros((0, 0), np.uint8)
_NO_STATE = {"f": np.zeros((0, 0, 0), np.float32), "d": np.zeros((0, 0, 0), np.float64)}
_NO_OUT = {"f": np.zeros((0, 0), np.float32), "d": np.zeros((0, 0), np.float64)}


# -- the API the models expose -----------------------------------------------------------

_programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_programs_lock = threading.RLock()  # re-entered: a stateful model makes its streams under it


def program(model, build, cache=_programs):
    """The model's :class:`Program`, built once (``build()``) and kept beside the model
    (not in it: the model pickles and compares as it did)."""
    p = cache.get(model)
    if p is None:
        with _programs_lock:
            p = cache.get(model)
            if p is None:
                p = build()
                p.owner = weakref.ref(model)
                cache[model] = p
    return p


def open_stream(model, build):
    """``model.stream()``: a new :class:`Stream` at the start of a sequence."""
    return Stream(program(model, build))


def step(model, x, streams, num_threads=None):
    """``model.step(x, stream)`` / ``model.step([x, ...], [stream, ...])`` (see
    docs/API.md, Streaming)."""
    if isinstance(streams, Stream):
        p = streams._program
        if p.owner() is not model:
            raise ValueError("this stream was opened by another model (%s)" % p.what)
        return (p.step_one or _step_one)(p, x, streams, num_threads)
    if not isinstance(streams, (list, tuple)):
        raise TypeError("step takes a Stream or a list of them, got %s" % type(streams).__name__)
    if not isinstance(x, (list, tuple)) or len(x) != len(streams):
        raise ValueError(
            "step with %d streams takes a list of %d chunks, got %s"
            % (len(streams), len(streams), "%d" % len(x) if isinstance(x, (list, tuple)) else type(x).__name__)
        )
    if not streams:
        return []
    first = streams[0]
    if not isinstance(first, Stream):
        raise TypeError("step takes a list of Streams, got a %s in it" % type(first).__name__)
    p = first._program
    if p.owner() is not model:
        raise ValueError("the streams were opened by another model (%s)" % p.what)
    return _step_many(p, x, streams, num_threads)  # (the others' programs: checked there)


def _step_one(p, x, s, num_threads):
    if (
        p.single_input
        and type(x) is np.ndarray
        and x.dtype == p.in_dtype
        and x.ndim == 2
        and x.shape[1] == p.in_features
        and x.shape[0] > 0
        and x.flags.c_contiguous
    ):
        T = x.shape[0]  # what prepare() would check, checked: the common case
        feeds: list = [x.reshape(T, 1, x.shape[1])]
    elif p.single_ids and type(x) is np.ndarray and x.dtype == np.int64 and x.ndim == 1 and x.shape[0] > 0:
        feeds = [x.reshape(x.shape[0], 1)]  # (ids, as prepare() would give them)
    else:
        xs, T = p.prepare(x, p.what)
        feeds = [np.ascontiguousarray(a).reshape((T, 1) + a.shape[1:]) for a in xs]
    s._claim()
    try:
        if p.chain is not None:
            out = feeds[0]
            for f in p.chain:
                out = f(out, s._slots, num_threads)
        else:
            out = p.run(feeds, None, s._slots, s._seen, num_threads)
    finally:
        s._release()
    if p.single_output is not None:
        return out[:, 0] if out.ndim == 3 else out[0]
    return map_structure(_first, out)


def _chain_step_one(p):
    """:func:`_step_one` of a chain model on float chunks, its common case (an ndarray
    (T, F) of the model's dtype, C-contiguous) checked and run inline; any other
    chunk goes through :func:`_step_one`."""
    chain = tuple(p.chain)
    dt, F = p.in_dtype, p.in_features
    ndarray = np.ndarray

    def one(p, x, s, num_threads):
        if type(x) is ndarray and x.ndim == 2 and x.dtype == dt and x.flags.c_contiguous:
            T, f = x.shape
            if f == F and T > 0:
                slots = s._slots
                s._claim()
                try:
                    out = x.reshape(T, 1, F)
                    for fn in chain:
                        out = fn(out, slots, num_threads)
                finally:
                    s._release()
                return out[:, 0] if out.ndim == 3 else out[0]
        return _step_one(p, x, s, num_threads)

    return one


def _first(y):
    return y[:, 0] if y.ndim == 3 else y[0]


def _step_many(p, x, streams, num_threads):
    """A batched step: the chunks stacked time-major (rnnfast._stream.stack for the
    common form: arrays of one length, the model's dtype and features), the streams
    checked and claimed (rnnfast._stream.take), their states' rows gathered, the
    program run, the rows scattered back and the claims released."""
    lengths = None
    f = None
    if p.single_input and p.in_features is not None:
        f = _stream.stack(x if type(x) is list else list(x), p.in_features, p.in_dtype)
    if f is not None:
        feeds = [f]
    else:
        parts = [p.prepare(xi, p.what) for xi in x]
        lengths = np.fromiter((T for _, T in parts), np.intp, len(parts))
        T = int(lengths.max())
        ragged = bool((lengths != T).any())
        feeds = []
        for j in range(len(p.inputs)):
            chunks = [xs[j] for xs, _ in parts]
            if not ragged:
                feeds.append(np.stack(chunks, axis=1))
            else:
                g = np.zeros((T, len(chunks)) + chunks[0].shape[1:], chunks[0].dtype)
                for b, c in enumerate(chunks):
                    g[: c.shape[0], b] = c
                feeds.append(g)
        if not ragged:
            lengths = None
    batch = _stream.take(streams, p)
    try:
        if p.chain is not None and lengths is None:  # no mask, no padding: the fast form
            # (and no mask anywhere: ``seen`` is never read, not kept); the block's rows
            # in place when the streams are consecutive rows of one block
            states = batch.gather(True)
            out = feeds[0]
            for fn in p.chain:
                out = fn(out, states, num_threads)
        else:
            states = batch.gather()
            seen = batch.gather_seen()
            out = p.run(feeds, lengths, states, seen, num_threads)
            batch.scatter_seen(seen)
        batch.scatter(states)
    finally:
        batch.release()
    if lengths is None:
        if type(out) is np.ndarray:
            return _batch_major(out)
        return map_structure(_batch_major, out)
    return [map_structure(lambda y, b=b, n=n: _row(y, b, n), out) for b, n in enumerate(lengths.tolist())]


def _batch_major(y):
    return np.ascontiguousarray(np.swapaxes(y, 0, 1)) if y.ndim == 3 else y


def _row(y, b, n):
    return y[:n, b].copy() if y.ndim == 3 else y[b].copy()


def torch_program(model):
    """The :class:`Program` of a :class:`~rnnfast.TorchRNN`: one recurrent op per module
    layer (``l0``, ``l1``, ...), chained; the output is the last layer's sequence."""
    steps = [
        Step(RecurrentOp("l%d" % k, [layer], model.layers[0].cell_spec.torch_module), [k], [k + 1])
        for k, layer in enumerate(model.layers)
    ]
    graph = Graph(steps, [0], len(model.layers))
    spec = dict(name="input", dtype=model.dtype, integer=False, features=model.input_size)
    return Program(graph, [spec], repr(model))


# -- Keras stateful=True models ----------------------------------------------------------

_stateful_streams: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_stateful_programs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stateful_layers(graph):
    """The names of the graph's ops that carry state between calls (Keras
    ``stateful=True``), a Bidirectional's inner layers included."""
    names = []
    for op in graph.ops:
        inner = [op, getattr(op, "forward_node", None), getattr(op, "backward_node", None)]
        if any(getattr(n, "stateful", False) for n in inner):
            names.append(op.name)
    return names


def check_stateful(model, build, batch_size):
    """At load: a stateful model needs a fixed batch size and layers rnnfast can carry
    (its :class:`Program` in stateful mode is built now, so refusals come at load)."""
    names = stateful_layers(model._graph)
    if not names:
        return
    if batch_size is None:
        raise UnsupportedLayerError(
            "RNN",
            "stateful",
            "%s: stateful layer(s) %s without a fixed batch size (Keras needs batch_shape / "
            "batch_input_shape / batch_size on the input)" % (model._what(), ", ".join(map(repr, names))),
        )
    program(model, build, _stateful_programs)


def stateful_predict(model, xs, batch_size, num_threads, build, fixed):
    """``predict`` of a Keras ``stateful=True`` model, as Keras runs it: batches of
    ``batch_size`` rows (Keras' default 32), each of exactly the model's batch size
    ``fixed``, each the next part of the same ``fixed`` sequences: the stateful layers'
    states carry over from batch to batch and from call to call; the rest of the model
    runs on each batch alone (non-stateful recurrent layers start from zeros)."""
    p = program(model, build, _stateful_programs)
    streams = _stateful_streams.get(model)
    if streams is None:
        with _programs_lock:
            streams = _stateful_streams.get(model)
            if streams is None:
                streams = _stateful_streams[model] = [Stream(p) for _ in range(fixed)]
    N = xs[0].shape[0]
    bs = 32 if batch_size is None else int(batch_size)
    outs = []
    for start in range(0, N, bs):
        part = [a[start : start + bs] for a in xs]
        n = part[0].shape[0]
        if n != fixed:
            raise ValueError(
                "%s is stateful with a batch size of %d: each batch must have %d rows, got %d "
                "(%d rows in batches of %d)" % (p.what, fixed, fixed, n, N, bs)
            )
        for s in streams:
            s._seen[:] = False  # Keras' previous output starts at zeros per call
        chunks = [[a[b] for a in part] if len(part) > 1 else part[0][b] for b in range(n)]
        outs.append(_step_many(p, chunks, streams, num_threads))
    if len(outs) == 1:
        return outs[0]
    return map_structure(lambda *ys: np.concatenate(ys, axis=0), *outs)


def reset_stateful(model):
    """Keras ``reset_states()``: the stateful layers' states back to zeros."""
    for s in _stateful_streams.get(model, ()):
        s.reset()
