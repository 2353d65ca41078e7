"""OnnxModel: an ONNX model loaded into canonical ops, called like an ONNX Runtime session.

The ONNX frontend (``rnnfast.io.onnx``, through its op registry) turns each ONNX node
into one *op* below and wires them into a :class:`~rnnfast.graph.Graph` keyed by the
ONNX tensor names; :class:`OnnxModel` runs it with ONNX Runtime's call shape:
``run(output_names, input_feed)``, ``get_inputs()``, ``get_outputs()``. This module
imports nothing from ``rnnfast.io``.

Tensors keep ONNX's layouts (an LSTM's ``X`` is ``(seq, batch, input)`` or, with
``layout=1``, ``(batch, seq, input)``); the recurrent ops run one compiled
:class:`~rnnfast.layers.RNNLayer` call per node (both directions at once) and hand
their outputs on as views where ONNX's output layout allows.

Shape arithmetic (``Shape`` -> ``Gather`` -> ``Concat`` -> ``ConstantOfShape`` ...)
depends only on the input shapes: the frontend marks those steps, and the model runs
them once per distinct set of input shapes (at load when the inputs' shapes are all
fixed) and keeps their results, so a repeated call runs only the ops on data.
"""

import copy
import operator
import threading

import numpy as np

from . import _onnx_stream, _plan, _products, _rowops, _validation
from . import stream as _stream
from ._progress import run_batched
from ._special import erf, row_softmax
from ._summary import Summarized
from ._threads import resolve_num_threads
from .graph import Graph
from .layers import ACTIVATIONS, apply_activation
from .ops import _windows, conv1d, pool1d

__all__ = [
    "OnnxModel",
    "NodeArg",
    "OnnxOp",
    "FnOp",
    "ProductOp",
    "convert_product",
    "RecurrentOp",
    "KERNELS",
    "ONNX_DTYPES",
    "run_compiled",
    "fuse_views",
    "fuse_products",
    "fuse_attention",
    "flat_plan",
    "run_plan",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # the dtypes of the core's products

#: ONNX TensorProto data types rnnfast reads and computes with: code -> (numpy dtype,
#: ORT's type name).
ONNX_DTYPES: dict[int, tuple[np.dtype, str]] = {
    1: (np.dtype(np.float32), "tensor(float)"),
    2: (np.dtype(np.uint8), "tensor(uint8)"),
    3: (np.dtype(np.int8), "tensor(int8)"),
    4: (np.dtype(np.uint16), "tensor(uint16)"),
    5: (np.dtype(np.int16), "tensor(int16)"),
    6: (np.dtype(np.int32), "tensor(int32)"),
    7: (np.dtype(np.int64), "tensor(int64)"),
    9: (np.dtype(np.bool_), "tensor(bool)"),
    10: (np.dtype(np.float16), "tensor(float16)"),
    11: (np.dtype(np.float64), "tensor(double)"),
    12: (np.dtype(np.uint32), "tensor(uint32)"),
    13: (np.dtype(np.uint64), "tensor(uint64)"),
}

#: What a failed load-time run raises (a kernel's refusal of the shapes it met).
PROBE_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, ZeroDivisionError, OverflowError)
#: Distinct input-shape signatures whose shape arithmetic a model keeps.
SHAPE_CACHE_SIZE = 64
#: The size the load-time run gives a symbolic dimension past the first (batch) axis.
PROBE_STEPS = 16
#: Iterations a ``Loop`` may run in that load-time run: a loop that runs longer there
#: (a trip count or a condition the zeros do not bound) stops the trial, and the first
#: call checks the shapes, so that loading a file never costs a long inference.
PROBE_LOOP_TRIPS = 1024


class ProbeTooLong(Exception):
    """A ``Loop`` of the load-time trial run passed :data:`PROBE_LOOP_TRIPS`."""


_probing = threading.local()


def probing():
    """True while this thread runs a model's load-time trial (:meth:`OnnxModel._probe`)."""
    return getattr(_probing, "on", False)


class NodeArg:
    """An input or output of the model, as ONNX Runtime's ``NodeArg``: ``name``,
    ``shape`` (a list: ints, strings for symbolic dims, None for unknown ones) and
    ``type`` (``"tensor(float)"``, ...)."""

    __slots__ = ("name", "shape", "type")

    def __init__(self, name, shape, type):
        self.name, self.shape, self.type = name, shape, type

    def __repr__(self):
        return "NodeArg(name=%r, type=%r, shape=%r)" % (self.name, self.type, self.shape)

    def __eq__(self, other):
        return isinstance(other, NodeArg) and (self.name, self.shape, self.type) == (
            other.name,
            other.shape,
            other.type,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking value object: unhashable, as ORT's


# -- ops -------------------------------------------------------------------------------


class OnnxOp:
    """One ONNX node. Its inputs are ``slots``: per ONNX input, ``("key", i)`` (the
    step's ``i``-th tensor), ``("const", array)`` (an initializer or a folded
    constant) or None (an absent optional input). ``run`` follows the graph's op
    protocol (:mod:`rnnfast.graph`) with ``multi_input``."""

    multi_input = True
    #: An LSTM / GRU / RNN node (:class:`RecurrentOp`): state a stream carries.
    recurrent = False
    #: (type, units, options) for the summary table; parameters as ONNX counts them
    #: (the elements of the node's constant inputs).
    units = ""
    options = ""

    def __init__(self, op_type, name, slots, num_outputs, domain=""):
        self.op_type = op_type
        self.name = name
        self.domain = domain
        self.slots = list(slots)
        self.num_outputs = num_outputs
        self.num_params = int(sum(w.size for w in self.weights()))

    def weights(self):
        """The floating-point constants it holds (index and shape constants are not
        weights)."""
        return [s[1] for s in self.slots if s is not None and s[0] == "const" and s[1].dtype.kind == "f"]

    def args(self, xs):
        out: list = []
        for s in self.slots:
            if s is None:
                out.append(None)
            elif s[0] == "const":
                out.append(s[1])
            else:
                out.append(xs[s[1]])
        return out

    def run(self, xs, masks, num_threads=None):
        outs = self.compute(self.args(xs), num_threads)
        return outs, [None] * len(outs)

    def compute(self, args, num_threads):
        raise NotImplementedError

    def describe(self):
        return self.op_type

    def __repr__(self):
        return "<%s %r>" % (self.op_type, self.name)


class FnOp(OnnxOp):
    """A node computed by one function of :data:`KERNELS` (by op type) with the node's
    attributes (checked and given their defaults by the frontend)."""

    def __init__(self, op_type, name, slots, num_outputs, attrs, domain="", kernel=None):
        super().__init__(op_type, name, slots, num_outputs, domain)
        self.attrs = dict(attrs)
        self.kernel = kernel or op_type
        if self.kernel not in KERNELS:
            raise KeyError(self.kernel)
        kernel = self.attrs.get("_kernel")
        if (
            self.kernel == "Conv"
            and kernel is not None
            and kernel.dtype in _FLOATS
            and kernel.size
            and self.attrs["group"] == 1
        ):
            # the weights as the im2col product takes them (_conv), packed once
            self.attrs["_packed"] = _products.pack(kernel.reshape(-1, kernel.shape[2]))
        if op_type in ("Squeeze", "Unsqueeze") and len(self.slots) > 1 and self.slots[1] is not None:
            if self.slots[1][0] == "const":  # constant axes (opset 13 on): read once, here
                self.attrs["axes"] = _ints(self.slots[1][1])
                self.slots[1] = None

    def compute(self, args, num_threads):
        if self.kernel in _TAKES_THREADS:
            out = KERNELS[self.kernel](args, self.attrs, num_threads)
        else:
            out = KERNELS[self.kernel](args, self.attrs)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def describe(self):
        shown = {
            k: v
            for k, v in self.attrs.items()
            if not k.startswith("_") and v is not None and not isinstance(v, np.ndarray)
        }
        return "%s(%s)" % (self.op_type, ", ".join("%s=%r" % kv for kv in sorted(shown.items())))


class ProductOp(FnOp):
    """An ONNX ``Gemm`` or ``MatMul`` node on the core's packed product
    (:mod:`rnnfast._products`: rnnfast's own threads, the call's ``num_threads``, the
    same bits for any thread count), not NumPy's BLAS. A constant float second operand
    (the weights, as exporters write a Linear layer) is packed once, at load, and a
    Gemm's constant ``C`` that broadcasts along the rows (with ``alpha`` 1) is the
    product's bias."""

    #: One-row calls read the packed weights past the caches (:func:`stream_weights`).
    stream = False

    def __init__(self, op_type, name, slots, num_outputs, attrs, domain=""):
        super().__init__(op_type, name, slots, num_outputs, attrs, domain)
        a = self.attrs
        gemm = op_type == "Gemm"
        self._packed = self._bias = None  # B packed (K, N), and the bias C makes
        b = self.slots[1]
        if b is None or b[0] != "const" or b[1].ndim != 2 or b[1].dtype not in _FLOATS:
            return
        w = b[1].T if gemm and a["transB"] else b[1]
        K, N = w.shape
        if K == 0 or N == 0:
            return
        self._packed, self._n = _products.pack(w), N
        c = self.slots[2] if gemm else None
        if c is not None and c[0] == "const" and a["alpha"] == 1:
            cv = c[1]
            if cv.dtype == w.dtype and cv.ndim <= 2 and cv.size in (1, N) and cv.shape[-1:] in ((1,), (N,)):
                bias = np.broadcast_to(cv.reshape(-1), (N,)).astype(cv.dtype)
                if a["beta"] != 1:
                    bias = bias * bias.dtype.type(a["beta"])
                self._bias = _frozen(bias)

    def compute(self, args, num_threads):
        y = self.packed(args, num_threads)
        if y is not None:
            return [y]
        if self.op_type == "Gemm":
            return [_gemm(args, self.attrs, num_threads)]
        return [_matmul(args, self.attrs, num_threads)]

    def packed(self, args, num_threads, act=-1):
        """The product on the weights packed at load, ``act`` (an ``RNN_ACT_*`` code,
        :data:`rnnfast._products.ROW_SOFTMAX` or ``ROW_LOG_SOFTMAX``) applied by the product
        (:class:`_FusedProduct`), or None where the packed path does not apply (then
        nothing is computed)."""
        x, w = args[0], args[1]
        if self._packed is None or x.dtype != w.dtype:
            return None
        if self.op_type == "Gemm":
            if self.attrs["transA"]:
                x = x.T
            if x.ndim != 2 or (self._bias is None and act >= 0 and (args[2] is not None or self.attrs["alpha"] != 1)):
                return None
            if self._bias is None:
                y = _products.dense(x, self._packed, self._n, None, act, num_threads, self.stream)
                return _gemm_tail(y, args[2], self.attrs)
            return _products.dense(x, self._packed, self._n, self._bias, act, num_threads, self.stream)
        if x.ndim >= 2 and x.shape[-1] == w.shape[0]:
            return _products.dense(x, self._packed, self._n, None, act, num_threads, self.stream)
        return None


def _weight_bytes(op):
    """Bytes of weights one call of ``op`` reads: its floating-point constants (a
    product's packed weights; a recurrent node's, in its layer), none of a ``Gather``'s
    (it reads the rows it picks)."""
    if isinstance(op, ProductOp) and op._packed is not None:
        return op._packed.nbytes
    if isinstance(op, RecurrentOp):
        return op.num_params * op.layer.dtype.itemsize
    if op.op_type == "Gather":
        return 0
    return sum(w.nbytes for w in op.weights())


def stream_weights(program):
    """Marks the products of ``program`` (what :func:`_compile` gives) whose weights a
    call reads past the caches (:attr:`ProductOp.stream`), where the model's weights do
    not all fit the last-level cache (:func:`rnnfast._plan.streamed_weights`)."""
    ops = [step[0] for step in program[0]]
    sizes = [_weight_bytes(op) for op in ops]
    can = [isinstance(op, ProductOp) and op._packed is not None for op in ops]
    chosen = _plan.streamed_weights(sizes, can)
    for i, op in enumerate(ops):
        if can[i]:
            op.stream = i in chosen


def convert_product(node, slots, ctx):
    """The op of a ``Gemm`` or ``MatMul`` node (the ONNX op registry's converter for
    both): a :class:`ProductOp`, its absent optional inputs None."""
    attrs = dict(node.attrs, _name=node.name)
    n = 3 if node.op_type == "Gemm" else 2
    return ProductOp(node.op_type, node.name, list(slots) + [None] * (n - len(slots)), len(node.outputs), attrs)


class RecurrentOp(OnnxOp):
    """An ONNX ``LSTM`` / ``GRU`` / ``RNN`` node: one :class:`~rnnfast.layers.RNNLayer`
    (both directions of a bidirectional node in one compiled call).

    Slots: ``X``, ``sequence_lens``, ``initial_h``, ``initial_c`` (the weights are in
    the layer). ``outputs``: which of ``Y``, ``Y_h``, ``Y_c`` the graph reads.
    """

    recurrent = True

    def __init__(self, op_type, name, slots, layer, *, layout, outputs):
        super().__init__(op_type, name, slots, len(outputs))
        self.layer = layer
        self.layout = int(layout)
        self.outputs = list(outputs)  # bools: Y, Y_h[, Y_c] wanted
        self.num_params = int(layer.source_parameters)
        self.units = str(layer.units)
        dirs = {1: "forward", 2: "bidirectional"}[layer.num_directions]
        if layer.go_backwards:
            dirs = "reverse"
        self.options = "%s, layout=%d" % (dirs, self.layout)
        if layer.cell == "gru":
            self.options += ", linear_before_reset=%d" % int(layer.reset_after)
        if getattr(layer, "clip", None) is not None:
            self.options += ", clip=%g" % layer.clip
        if getattr(layer, "input_forget", False):
            self.options += ", input_forget=1"

    def compute(self, args, num_threads):
        x, lens, h0, c0, bf = self._inputs(args)
        if self.dry:
            return self._dry(x, lens, h0, c0, bf)
        return self._outputs(*self._forward(x, lens, h0, c0, bf, num_threads))

    def _forward(self, x, lens, h0, c0, bf, num_threads):
        """The layer's call: ``(out, bf, h_n, c_n)``, ``out`` the output sequence as the
        kernel wrote it, (B, T, D*H) where ``bf`` else (T, B, D*H) (a new array)."""
        if not x.flags.c_contiguous and np.swapaxes(x, 0, 1).flags.c_contiguous:
            # a Transpose(1, 0, 2) view of a (batch-)major array (what exporters put before
            # the node): the kernel reads the array as it lies, no transposed copy
            x, bf = np.swapaxes(x, 0, 1), not bf
        out, h_n, c_n = self.layer.forward(
            x,
            h0,
            c0,
            lengths=lens,
            return_sequences=self.outputs[0],
            num_threads=num_threads,
            batch_first=bf,
        )
        return out, bf, h_n, c_n

    def _outputs(self, out, bf, h_n, c_n, seq=True):
        """The node's outputs (views) of what :meth:`_forward` gives (``seq`` False: Y
        left None, for :class:`_Fused` to make)."""
        layer = self.layer
        D, Ho = layer.num_directions, layer.output_size
        res = []
        if self.outputs[0] and seq:
            y = out.reshape(out.shape[0], out.shape[1], D, Ho)  # the same memory
            if bf:  # (B, T, D, H), as the kernel wrote it -> the node's layout, a view
                y = y if self.layout == 1 else y.transpose(1, 2, 0, 3)
            else:  # (T, B, D, H)
                y = np.swapaxes(y, 0, 1) if self.layout == 1 else y.transpose(0, 2, 1, 3)
            res.append(y)
        else:
            res.append(None)
        states = [h_n, c_n]
        for want, s in zip(self.outputs[1:], states):
            res.append((np.swapaxes(s, 0, 1) if self.layout == 1 else s) if want else None)
        return res[: self.num_outputs]

    def _inputs(self, args):
        """``(x, lens, h0, c0, bf)`` of the node's arguments, as :meth:`compute` reads them."""
        x, lens, h0, c0 = args
        if x.ndim != 3:
            raise ValueError("%s %r: X must have 3 dimensions, got shape %s" % (self.op_type, self.name, x.shape))
        lens, h0, c0 = self._lens_states(lens, h0, c0)
        return x, lens, h0, c0, self.layout == 1

    def _lens_states(self, lens, h0, c0):
        """``sequence_lens`` as an array and the initial states as the layer takes them
        (layout 1: the node's (batch, directions, hidden) states swapped)."""
        if self.layout == 1:
            h0 = None if h0 is None else np.swapaxes(h0, 0, 1)
            c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
        return (None if lens is None else np.asarray(lens)), h0, c0

    #: Set during the model's load-time run: check the shapes, compute nothing (zeros
    #: of the output shapes; that run keeps only what depends on shapes). ``"view"``:
    #: the zeros are one zero seen through zero strides (``_dry_zeros``; a 64-row
    #: bidirectional output's np.zeros took 0.1-0.3 ms), where every step that reads
    #: them is value-blind (:func:`_dry_shims` found shims).
    dry: object = False

    def _dry(self, x, lens, h0, c0, bf):
        layer = self.layer
        B, T, I = x.shape if bf else (x.shape[1], x.shape[0], x.shape[2])
        D, Ho, H = layer.num_directions, layer.output_size, layer.units
        if I != layer.input_size:
            raise ValueError(
                "%s %r expects %d input features, got X of shape %s"
                % (self.op_type, self.name, layer.input_size, x.shape)
            )
        for s, want, what in ((h0, (D, B, Ho), "initial_h"), (c0, (D, B, H), "initial_c")):
            if s is not None and s.shape != want:
                raise ValueError("%s %r: %s of shape %s, expected %s" % (self.op_type, self.name, what, s.shape, want))
        if lens is not None and lens.shape != (B,):
            raise ValueError(
                "%s %r: sequence_lens of shape %s for a batch of %d" % (self.op_type, self.name, lens.shape, B)
            )
        dt = layer.dtype
        zeros = _dry_zeros if self.dry == "view" else np.zeros  # "view": every reader is value-blind (_dry_shims)
        y = zeros((B, T, D, Ho) if self.layout == 1 else (T, D, B, Ho), dt) if self.outputs[0] else None
        st = (B, D, Ho) if self.layout == 1 else (D, B, Ho)
        return ([y] + [zeros(st, dt) if w else None for w in self.outputs[1:]])[: self.num_outputs]

    def describe(self):
        return "%s(%s, %s)" % (self.op_type, self.units, self.options)


#: Kernels of ops that only view their input anew (:class:`_Fused`).
_VIEW_KERNELS = frozenset(("Squeeze", "Unsqueeze", "Transpose", "Reshape", "Flatten", "Identity"))
#: Output layouts a :class:`_Fused` step remembers (distinct input shapes).
_FUSED_MEMO_SIZE = 64


class _Fused:
    """A recurrent node and the chain of view ops (``Squeeze``, ``Transpose``,
    ``Reshape`` ...) that alone read its ``Y``, as one step of the per-call program
    (:func:`fuse_views`; a node with no such chain, or whose ``Y`` nothing reads, too),
    and the ``Transpose`` that alone gives its ``X`` (:attr:`perm`).

    Exporters put such a chain after every LSTM / GRU (torch: ``Squeeze`` then
    ``Transpose`` back to (batch, time, features); bidirectional: ``Transpose``,
    ``Reshape``, ``Transpose``), and it often ends in the very array the kernel wrote,
    read in C order, or in another order of its axes (torch's ``Squeeze`` of a batch-major
    kernel output: (time, batch, features) seen through strides). The first call of given
    shapes of ``X`` runs the node and the chain, and where the chain's result is a view of
    all of the kernel's array (:func:`_view_of`) remembers how: later calls of those shapes
    call the layer straight away and make ``Y`` as one reshape (and transpose) of the
    kernel's array, without the node's argument and output handling or the chain (11 -> 3 us
    per call after the kernel, BiGRU B=1, where the kernel left the caches cold). The values
    and the memory are the chain's own: the view ops depend only on the shapes and their
    constant inputs. A constant initial state of zeros of the call's shape (torch's traced
    ``zeros(D, b, H)``, :func:`rnnfast.io.onnx.recurrent.drop_zero_states`) goes to the layer
    as None on those calls: the same zeros, not copied."""

    multi_input = True

    def __init__(self, rec, views):
        self.rec = rec
        self.views = list(views)
        self.name = rec.name
        # (X's shape, X's strides) -> (flip, view, zero_h, zero_c): flip whether the kernel
        # reads X swapped (RecurrentOp._forward); view Y as (shape, perm) of the kernel's
        # array (_view_of), None where Y is not wanted; zero_h / zero_c whether initial_h /
        # initial_c is a constant of zeros of the call's shape (drop_zero_states' constant
        # state of a traced batch), given to the layer as None: the same zeros, no copy
        self._memo: dict = {}
        # the states after Y, wanted or not, where each is one as the kernel gives it
        # (layout 0); else None (RecurrentOp._outputs makes them)
        self._wants = tuple(rec.outputs[1 : rec.num_outputs]) if rec.layout == 0 else None
        self._zeros = [_zero_constant(sl) for sl in rec.slots[2:4]]
        # the permutation of a Transpose whose output only X was, taken in (fuse_views):
        # X is args[0] so permuted (the Transpose's own call); None: none taken
        self.perm: tuple | None = None

    def args(self, xs):
        return self.rec.args(xs)

    def compute(self, args, num_threads):
        rec = self.rec
        x, lens, h0, c0 = args
        if self.perm is not None:
            x = x.transpose(self.perm) if type(x) is np.ndarray else np.transpose(x, self.perm)
            args = (x, lens, h0, c0)
        known = self._memo.get((x.shape, x.strides)) if type(x) is np.ndarray and not rec.dry else None
        if known is None:
            return self._first(args, num_threads)
        # shapes seen before: the layer's call and Y's view, nothing else
        flip, view, zero_h, zero_c, plain = known
        if zero_h:
            h0 = None
        if zero_c:
            c0 = None
        layer = rec.layer
        if plain and lens is None and x.dtype == layer.dtype:
            # RNNLayer.forward's common call, whose tests these shapes passed: its bound entry
            entry = layer.__dict__.get("_entry")
            if entry is not None:
                out, h_n, c_n = layer._forward_bound(entry, x, h0, c0, view is not None, num_threads)
                return self._results(out, False, h_n, c_n, view)
        layout1 = rec.layout == 1
        bf = layout1 != flip
        if layout1 or lens is not None:  # (else _lens_states gives them back as they are)
            lens, h0, c0 = rec._lens_states(lens, h0, c0)
        out, h_n, c_n = layer.forward(
            x.swapaxes(0, 1) if flip else x,
            h0,
            c0,
            lengths=lens,
            return_sequences=view is not None,
            num_threads=num_threads,
            batch_first=bf,
        )
        return self._results(out, bf, h_n, c_n, view)

    def _results(self, out, bf, h_n, c_n, view):
        """The step's outputs of the layer's: Y as ``view`` of ``out``, the states."""
        y = (
            None
            if view is None
            else out.reshape(view[0])
            if view[1] is None
            else out.reshape(view[0]).transpose(view[1])
        )
        wants = self._wants
        if wants is None:
            res = self.rec._outputs(out, bf, h_n, c_n, seq=False)
            res[0] = y
            return res
        if not wants:
            return [y]
        if len(wants) == 1:
            return [y, h_n if wants[0] else None]
        return [y, h_n if wants[0] else None, c_n if wants[1] else None]

    def _first(self, args, num_threads):
        """A call of new shapes: the node's own call and the chain, and what
        :meth:`compute` needs to make their results alone next time (:attr:`_memo`)."""
        rec = self.rec
        x, lens, h0, c0, bf = rec._inputs(args)
        if rec.dry:  # (the load-time run uses the graph, not this step: for safety only)
            res = rec._dry(x, lens, h0, c0, bf)
            return [self._chain(res[0], num_threads)] + res[1:]
        key = (x.shape, x.strides)
        out, bf_out, h_n, c_n = rec._forward(x, lens, h0, c0, bf, num_threads)
        res = rec._outputs(out, bf_out, h_n, c_n, seq=True)
        y = self._chain(res[0], num_threads) if rec.outputs[0] else None
        view = _view_of(y, out) if rec.outputs[0] else None
        if type(x) is np.ndarray and (view is not None or not rec.outputs[0]):
            D, B = rec.layer.num_directions, x.shape[0 if bf else 1]
            zero = [
                z and s is not None and s.shape == (D, B, n)
                for z, s, n in zip(self._zeros, (h0, c0), (rec.layer.output_size, rec.layer.units))
            ]
            # plain: the layer's forward takes its bound entry for X of these shapes and
            # strides, given as they are (time-major, no lengths) in the layer's dtype
            layer = rec.layer
            plain = bf_out == bf and not bf and layer._entry_takes(x) and layer.__dict__.get("_entry") is not None
            _remember(self._memo, key, (bf_out != bf, view, zero[0], zero[1], plain), _FUSED_MEMO_SIZE)
        res[0] = y
        return res

    def _chain(self, y, num_threads):
        for op in self.views:
            y = op.compute(op.args([y]), num_threads)[0]
        return y

    def __repr__(self):
        return "<fused %r + %s>" % (self.rec.name, ", ".join(op.op_type for op in self.views) or "no views")


def _zero_constant(slot):
    """Whether an op's input ``slot`` is a constant of numbers all of whose bytes are
    zero (+0.0 alike: a -0.0 is not one)."""
    if slot is None or slot[0] != "const":
        return False
    v = slot[1]
    return type(v) is np.ndarray and v.dtype.kind in "biuf" and v.tobytes() == bytes(v.nbytes)


def _view_of(y, out):
    """``(shape, perm)`` such that ``out.reshape(shape)``, transposed by ``perm`` (None:
    not transposed), is ``y`` (its shape, and its strides on every axis longer than 1),
    where ``y`` is a view of all of ``out`` (C-contiguous, of its first element, dtype
    and size); else None."""
    if not (
        type(y) is np.ndarray
        and y.size
        and y.dtype == out.dtype
        and y.size == out.size
        and out.flags.c_contiguous
        and y.__array_interface__["data"][0] == out.__array_interface__["data"][0]
    ):
        return None
    if y.flags.c_contiguous:
        return y.shape, None
    order = sorted(range(y.ndim), key=lambda i: (-y.strides[i], i))  # y's axes as they lie in memory
    shape = tuple(y.shape[i] for i in order)
    perm = tuple(order.index(i) for i in range(y.ndim))
    v = out.reshape(shape).transpose(perm)
    if v.shape != y.shape or any(n > 1 and a != b for n, a, b in zip(y.shape, v.strides, y.strides)):
        return None
    return shape, perm


def _fuse(program, follow):
    """``program`` with each step that ``follow(op, outs, steps, sole)`` takes and the
    steps it names as one: ``follow`` gives None, or ``(chain, op, last)``: the indices
    of the steps taken after it, the step's new op and its first output's new index.
    ``sole(i)``: the one step that reads tensor ``i``, None where ``i`` is a model output
    or read by more or fewer than one step."""
    steps, n, outputs = program
    readers: dict = {}
    for j, (_, ins, _, _) in enumerate(steps):
        for i in set(ins):
            readers.setdefault(i, []).append(j)
    final = set(outputs)

    def sole(i):
        return readers[i][0] if i not in final and len(readers.get(i, ())) == 1 else None

    taken: set = set()
    fused = []
    for j, (op, ins, outs, free) in enumerate(steps):
        if j in taken:
            continue
        found = follow(op, outs, steps, sole)
        if not found or not found[0]:
            fused.append((op, ins, outs, free))
            continue
        chain, new, last = found
        taken.update(chain)
        gone = list(free) + [i for k in chain for i in steps[k][3]]  # (the chain frees only its own input)
        fused.append((new, ins, [last] + list(outs[1:]), gone))
    return fused, n, outputs


def fuse_views(program):
    """``program`` (what :func:`_compile` gives) with each recurrent step and the view
    ops that alone read its ``Y`` (one after another, each reading only the last one's
    output and constants, no intermediate a model output) as one :class:`_Fused` step;
    a recurrent step without such ops as a :class:`_Fused` step of none (its later calls
    as short)."""
    steps, n, outputs = _fuse(program, _view_chain)
    steps = [(_Fused(op, []) if type(op) is RecurrentOp else op, ins, outs, free) for op, ins, outs, free in steps]
    return _take_transposes(steps, outputs), n, outputs


def _take_transposes(steps, outputs):
    """``steps`` with each ``Transpose`` step whose output only a :class:`_Fused` step's
    ``X`` reads (once; no model output) taken into that step (:attr:`_Fused.perm`): the
    transposed view it gave, made by the recurrent step, one step fewer per call (torch's
    ``Transpose`` of batch-major input before every exported LSTM / GRU)."""
    made = {o: k for k, st in enumerate(steps) for o in st[2]}
    reads: dict = {}
    for st in steps:
        for i in st[1]:
            reads[i] = reads.get(i, 0) + 1
    final = set(outputs)
    steps = [list(st) for st in steps]
    gone = set()
    for j, st in enumerate(steps):
        op, ins = st[0], st[1]
        sl = op.rec.slots[0] if type(op) is _Fused else None
        if sl is None or sl[0] != "key" or op.perm is not None:
            continue
        t = ins[sl[1]]
        k = made.get(t)
        if k is None or k in gone or t in final or reads[t] != 1:
            continue
        top, tins = steps[k][0], steps[k][1]
        if not (
            type(top) is FnOp
            and top.kernel == "Transpose"
            and not top.domain
            and top.num_outputs == 1
            and len(top.slots) == 1
            and top.slots[0] == ("key", 0)
            and top.attrs.get("perm")
        ):
            continue
        src = tins[0]
        freed = [i for m in range(k, j) for i in steps[m][3] if i == src]
        for m in range(k + 1, j):  # (the Transpose's input, read until this step now)
            steps[m][3] = [i for i in steps[m][3] if i != src]
        op.perm = tuple(top.attrs["perm"])
        st[1] = list(ins)
        st[1][sl[1]] = src
        st[3] = [i for i in steps[k][3] if i != src] + list(st[3]) + freed[:1]
        gone.add(k)
    return [tuple(st) for k, st in enumerate(steps) if k not in gone]


def _view_chain(op, outs, steps, sole):
    if not (type(op) is RecurrentOp and op.outputs[0] and outs):
        return None
    chain: list = []
    cur = outs[0]
    while (k := sole(cur)) is not None:
        vop, vins, vouts, _ = steps[k]
        if not (
            type(vop) is FnOp
            and vop.kernel in _VIEW_KERNELS
            and vins == [cur]
            and len(vouts) == 1
            and vop.slots
            and vop.slots[0] == ("key", 0)
            and all(sl is None or sl[0] == "const" for sl in vop.slots[1:])
        ):
            break
        chain.append(k)
        cur = vouts[0]
    return chain, _Fused(op, [steps[k][0] for k in chain]), cur


#: Element-wise ops a product applies itself (:func:`fuse_products`): their ``RNN_ACT_*``
#: codes, the bits of the op's own kernel (:func:`rnnfast.layers.apply_activation`).
_PRODUCT_ACTS = {"Relu": ACTIVATIONS["relu"], "Tanh": ACTIVATIONS["tanh"], "Sigmoid": ACTIVATIONS["sigmoid"]}


class _FusedProduct:
    """A :class:`ProductOp` on packed weights (or a ``Conv``) and the ops that alone
    read its output after it (:func:`fuse_products`): one ``Relu`` / ``Tanh`` /
    ``Sigmoid`` (``act``), applied by the product to each row as it is written
    (``c/products.template.h``), not as passes of their own over a copy; or (``act``
    -1) the ``Add`` of a constant (a MatMul's bias) and/or a ``Softmax`` /
    ``LogSoftmax`` or activation, run on the product's new array, in place where the op
    allows (:func:`_on_new_array`: no second array, at (64, 8000) a new one cost its
    page faults, 0.1-0.2 ms). Where the packed path does not take the call's arrays, the
    ops run one by one. (The core's fused row softmax is not used: it sums in one chain,
    slower at thousands of columns, and gives other bits.)"""

    multi_input = True

    def __init__(self, prod, tail, act):
        self.prod = prod
        self.tail = list(tail)
        self.act = act
        self.name = prod.name

    def args(self, xs):
        return self.prod.args(xs)

    def compute(self, args, num_threads):
        if type(self.prod) is FnOp:  # a Conv: the activation applied by its product
            return [_conv(args, self.prod.attrs, self.act, num_threads)]
        if self.act >= 0:
            y = self.prod.packed(args, num_threads, self.act)
            if y is not None:
                return [y]
        y = self.prod.compute(args, num_threads)[0]
        for op in self.tail:
            y = _on_new_array(op, y, num_threads)
        return [y]

    def one(self):
        """:meth:`compute`'s only output as ``call(args, num_threads)``, one frame where the
        packed path applies the activation (:meth:`ProductOp.packed`'s tests, on what the
        load fixed: the weights' dtype, a Gemm's bias and ``transA``), that method's call
        where it does not; None for a step that runs its ops one by one (``act`` -1). A
        B=1 decoder step's two products each crossed three Python frames and a list. (The
        product's function is looked up per call: ``_products.dense`` as it is then.)"""
        prod, act, compute = self.prod, self.act, self.compute
        if "packed" in vars(prod):  # (a ``packed`` of its own: called as it is)
            return None
        if act < 0:
            return self._one_with_bias()
        if type(prod) is FnOp:  # a Conv
            attrs = prod.attrs

            def conv(args, num_threads):
                return _conv(args, attrs, act, num_threads)

            return conv
        packed, n, bias, dt, stream = prod._packed, prod._n, prod._bias, prod.slots[1][1].dtype, prod.stream
        if prod.op_type == "Gemm":
            if prod.attrs["transA"] or bias is None:
                return None

            def gemm(args, num_threads):
                x = args[0]
                if x.dtype == dt and x.ndim == 2:
                    return _products.dense(x, packed, n, bias, act, num_threads, stream)
                return compute(args, num_threads)[0]

            return gemm
        k = prod.slots[1][1].shape[0]

        def matmul(args, num_threads):
            x = args[0]
            if x.dtype == dt and x.ndim >= 2 and x.shape[-1] == k:
                return _products.dense(x, packed, n, None, act, num_threads, stream)
            return compute(args, num_threads)[0]

        return matmul

    def _one_with_bias(self):
        """:meth:`one` for a MatMul and the Add of its bias (PyTorch's Linear on a 3-D
        input), and the activation or (log-)softmax after them where there is one: a
        bias of one row (N values) is the product's ``addend`` (:func:`rnnfast._products.dense`:
        added to the rounded sums as NumPy's add gives it, then the activation, in the
        product's call); another is NumPy's add of the constant into the product's new
        array, as :func:`_on_new_array` adds it (the same bits), the test of whether the
        constant adds in place made once per output shape (``np.broadcast_shapes`` took
        4 us a call); None for any other tail. A (1, 64) @ (64, 100) product and its Add
        took 10 us as two calls, 6 as one (Zen 1)."""
        prod, compute, tail = self.prod, self.compute, self.tail
        if not (1 <= len(tail) <= 2 and tail[0].kernel == "Add" and prod.op_type == "MatMul"):
            return None
        add = tail[0]
        c, packed, n, dt, stream = _const_operand(add), prod._packed, prod._n, prod.slots[1][1].dtype, prod.stream
        k = prod.slots[1][1].shape[0]
        act = -1 if len(tail) == 1 else _act_code(tail[1])
        if act is None:  # (a softmax over another axis: the ops one by one)
            return None
        if c.dtype == dt and c.size == n and c.ndim >= 1 and c.shape[-1] == n:
            # (NumPy's own descriptor of the dtype: what the product's direct reads take)
            row, cnd = np.ascontiguousarray(c.reshape(n), dtype=dt.type), c.ndim

            def matmul_addend(args, num_threads):
                x = args[0]
                if not (x.dtype == dt and x.ndim >= cnd and x.ndim >= 2 and x.shape[-1] == k):
                    return compute(args, num_threads)[0]
                return _products.dense(x, packed, n, None, act, num_threads, stream, row)

            return matmul_addend
        if len(tail) != 1:
            return None
        fits: dict = {}  # output shape -> whether c adds in place

        def matmul_add(args, num_threads):
            x = args[0]
            if not (x.dtype == dt and x.ndim >= 2 and x.shape[-1] == k):
                return compute(args, num_threads)[0]
            y = _products.dense(x, packed, n, None, -1, num_threads, stream)
            ok = fits.get(y.shape)
            if ok is None:
                ok = c.dtype == dt and c.ndim <= y.ndim and np.broadcast_shapes(c.shape, y.shape) == y.shape
                _remember(fits, y.shape, ok, _FUSED_MEMO_SIZE)
            return np.add(y, c, out=y) if ok else _on_new_array(add, y, num_threads)

        return matmul_add

    def __repr__(self):
        return "<fused %r + %s>" % (self.prod.name, ", ".join(op.op_type for op in self.tail))


def _on_new_array(op, y, num_threads):
    """``op`` (a step after a product, :func:`_product_chain`) on ``y``, its only input
    and a new array no one else reads: a (log-)softmax and the ``Add`` of a constant that
    leaves ``y``'s shape and dtype write into ``y`` (the values of the op's own kernel:
    NumPy's add, in either order, and the row kernel); the rest as the op computes."""
    if op.kernel in _THREADED:
        return _softmax([y], op.attrs, num_threads, op.kernel == "LogSoftmax", out=y)
    if op.kernel == "Add" and type(y) is np.ndarray and y.flags.writeable:
        c = _const_operand(op)
        if c.dtype == y.dtype and c.ndim <= y.ndim and np.broadcast_shapes(c.shape, y.shape) == y.shape:
            return np.add(y, c, out=y)
    return op.compute(op.args([y]), num_threads)[0]


def _const_operand(op):
    """The constant operand of a two-input op whose other input is a key."""
    return next(sl[1] for sl in op.slots if sl[0] == "const")


def fuse_products(program):
    """``program`` (what :func:`fuse_views` gives) with each :class:`ProductOp` on
    packed weights or ``Conv`` and the element-wise activation that alone reads its
    output (not a model output) as one :class:`_FusedProduct` step, each element
    computed as the ops do (the same activation kernel on the product's result)."""
    return _fuse(program, _product_chain)


def _product_chain(op, outs, steps, sole):
    # (a MatMul's Add of a bias is added to the product's result, in place, never made
    # the product's starting sums: the Add rounds the sum and then adds, the first call
    # of new shapes runs the graph's ops one by one, and every call must give the same bits)
    conv = type(op) is FnOp and op.kernel == "Conv"
    if not ((conv or (type(op) is ProductOp and op._packed is not None)) and len(outs) == 1):
        return None
    chain: list = []
    cur = outs[0]
    while len(chain) < 2 and (k := sole(cur)) is not None:
        nop, nins, nouts, _ = steps[k]
        if not (type(nop) is FnOp and not nop.domain and nins == [cur] and len(nouts) == 1):
            break
        bias = (
            nop.kernel == "Add"
            and not conv
            and not chain
            and len(nop.slots) == 2
            and sorted(sl[0] for sl in nop.slots) == ["const", "key"]
            and ("key", 0) in nop.slots
        )
        last = nop.kernel in _PRODUCT_ACTS or (nop.kernel in _THREADED and not conv)
        if not ((bias or last) and (bias or nop.slots == [("key", 0)])):
            break
        chain.append(k)
        cur = nouts[0]
        if last:
            break
    if not chain:
        return None
    tail = [steps[k][0] for k in chain]
    act = _act_code(tail[0]) if len(tail) == 1 else None
    return chain, _FusedProduct(op, tail, -1 if act is None else act), cur


def _act_code(op):
    """What :func:`rnnfast._products.dense` applies for ``op`` at the end of a product's
    chain: the code of a ``Relu`` / ``Tanh`` / ``Sigmoid``, or the row kernel's
    (log-)softmax for one over the last axis (by the product's column tasks where it
    splits them); None for any other op."""
    if op.kernel in _PRODUCT_ACTS:
        return _PRODUCT_ACTS[op.kernel]
    if op.kernel in _THREADED and op.attrs.get("axis") == -1:
        return _products.ROW_LOG_SOFTMAX if op.kernel == "LogSoftmax" else _products.ROW_SOFTMAX
    return None


#: :class:`_FusedAttention`'s compiled call splits the batch among the call's threads,
#: one per this many batch entries at most (each entry's values its own: the same bits
#: for any split). A decoder step's attention over 20 encoder outputs of 256 at B=64
#: took 158 us on one thread, 122 us on two (Zen 4, chrt).
ATTEND_ENTRIES_PER_THREAD = 16


class _FusedAttention:
    """``MatMul`` -> ``Softmax`` over the last axis -> ``MatMul`` (the second product's
    first input the softmax's, each intermediate read by the next op alone): attention,
    ``softmax(q @ kt) @ v``, as one step (:func:`fuse_attention`). Where the arrays are
    float (one dtype), 3-D with one batch size, the products of at most
    :data:`rnnfast._products.FEW_ROWS` rows (a decoder step's), it is one compiled call
    (``_rowops.attend``) that gives the bits of the three ops' own kernels (the products'
    chains and the row softmax); otherwise the three ops run one by one."""

    multi_input = True

    def __init__(self, scores, soft, mix, n_in):
        self.ops = (scores, soft, mix)
        self.n_in = n_in  # the inputs of ``scores``; then ``mix``'s second, if a key
        self.name = scores.name
        # (shapes, dtypes) -> (_team's answer, the scores' shape, the output's shape)
        self._teams: dict = {}

    def args(self, xs):
        scores, _, mix = self.ops
        q, kt = scores.args(xs[: self.n_in])
        v = mix.slots[1][1] if mix.slots[1][0] == "const" else xs[self.n_in]
        return [q, kt, v]

    def compute(self, args, num_threads):
        q, kt, v = args
        if type(q) is np.ndarray and type(kt) is np.ndarray and type(v) is np.ndarray:
            key = (q.shape, kt.shape, v.shape, q.dtype, kt.dtype, v.dtype)
            known = self._teams.get(key)
            if known is None:
                team = self._team(q, kt, v)
                p_shape = y_shape = ()
                if team:  # (3-D arrays)
                    p_shape, y_shape = q.shape[:2] + kt.shape[2:], q.shape[:2] + v.shape[2:]
                known = (team, p_shape, y_shape)
                _remember(self._teams, key, known, _FUSED_MEMO_SIZE)
            team, p_shape, y_shape = known
            if team:
                if q.strides[2] != q.itemsize:
                    q = np.ascontiguousarray(q)
                dt = q.dtype
                y = np.empty(y_shape, dt)
                _rowops.attend(
                    q, kt, v, np.empty(p_shape, dt), y, 1 if team == 1 else min(team, resolve_num_threads(num_threads))
                )
                return [y]
        scores, soft, mix = self.ops
        p = scores.compute([q, kt], num_threads)[0]
        p = soft.compute([p], num_threads)[0]
        return mix.compute([p, v], num_threads)

    def _team(self, q, kt, v):
        """The threads ``_rowops.attend`` may split the batch among for arrays of these
        shapes and dtypes (one per :data:`ATTEND_ENTRIES_PER_THREAD` batch entries, the
        call's count at most), or 0 where it does not take them (the ops run one by
        one)."""
        ok = (
            q.ndim == kt.ndim == v.ndim == 3
            and q.dtype in _FLOATS
            and q.dtype == kt.dtype == v.dtype
            and q.shape[0] == kt.shape[0] == v.shape[0]
            and q.shape[1] <= _products.FEW_ROWS
            and q.shape[2] == kt.shape[1]
            and kt.shape[2] == v.shape[1]
            and q.shape[2] > 0
            and kt.shape[2] > 0
            and _axis(self.ops[1].attrs["axis"], 3) == 2
        )
        return max(1, q.shape[0] // ATTEND_ENTRIES_PER_THREAD) if ok else 0

    def __repr__(self):
        return "<fused attention %r + Softmax, MatMul>" % self.name


def fuse_attention(program):
    """``program`` (what :func:`_compile` gives) with each ``MatMul`` -> ``Softmax`` ->
    ``MatMul`` chain (:class:`_FusedAttention`: each output read by the next op alone,
    not a model output; the last product's second input computed before the first
    product and read by no step between the two) as one step, its inputs the first
    product's and then the second input of the last."""
    steps, n, outputs = program
    readers: dict = {}
    made: dict = {}
    for j, (_, ins, outs, _) in enumerate(steps):
        for i in set(ins):
            readers.setdefault(i, []).append(j)
        for i in outs:
            made[i] = j
    final = set(outputs)

    def sole(i):
        return readers[i][0] if i not in final and len(readers.get(i, ())) == 1 else None

    def unpacked_matmul(op):
        return type(op) is ProductOp and op.op_type == "MatMul" and op._packed is None

    taken: set = set()
    fused = []
    for j, (op, ins, outs, free) in enumerate(steps):
        if j in taken:
            continue
        found = _attention_chain(j, op, outs, steps, sole, made, readers, unpacked_matmul)
        if found is None:
            fused.append((op, ins, outs, free))
            continue
        k1, k2 = found
        soft, mix = steps[k1], steps[k2]
        taken.update((k1, k2))
        extra = [mix[1][1]] if mix[0].slots[1][0] == "key" else []
        gone = list(free) + list(soft[3]) + list(mix[3])
        fused.append((_FusedAttention(op, soft[0], mix[0], len(ins)), list(ins) + extra, list(mix[2]), gone))
    return fused, n, outputs


def _attention_chain(j, op, outs, steps, sole, made, readers, unpacked_matmul):
    """``(k1, k2)``: the Softmax and MatMul steps that make step ``j`` the start of an
    attention block (:func:`fuse_attention`), or None."""
    k1 = sole(outs[0]) if unpacked_matmul(op) and len(outs) == 1 else None
    if k1 is None:
        return None
    sop, sins, souts, _ = steps[k1]
    if not (type(sop) is FnOp and sop.kernel == "Softmax" and sins == [outs[0]] and sop.slots == [("key", 0)]):
        return None
    k2 = sole(souts[0]) if len(souts) == 1 else None
    if k2 is None:
        return None
    mop, mins, mouts, _ = steps[k2]
    if not (unpacked_matmul(mop) and len(mouts) == 1 and mop.slots[0] == ("key", 0) and mins[0] == souts[0]):
        return None
    if mop.slots[1][0] == "key":
        v = mins[1]  # computed before step j, and read by no step between the two
        if made.get(v, -1) >= j or any(j < r < k2 for r in readers[v]):
            return None
    return k1, k2


# -- the flat plan: the per-call program of pre-bound steps ----------------------------


def flat_plan(program):
    """``program`` (what :func:`fuse_attention` gives) as the plan :func:`run_plan` runs:
    ``(steps, tensor count, output indices, constants)``, each step ``(call, get, outs,
    free, one, idx)``: ``call(args, num_threads)`` the op's compute bound once (:func:`_bind`:
    a list of outputs, or the one output where ``one``), ``get(values)`` its arguments
    (a tuple, :func:`_getter`: the entries ``idx``) from one list of the tensors followed
    by the constants (an op's constant inputs, None for an absent one), ``outs`` the
    indices of its outputs (where ``one``: the index itself) and ``free`` those freed
    after it.
    What a step of ``program`` does, in the same kernels, without the per-op ``args``
    list, the attribute and kernel look-ups and the list of a single output: at B=1 a
    decoder step's ten ops cost 10 us of dispatch before."""
    steps, n, outputs = program
    consts: list = [None]
    where = {id(None): n}  # constant (by identity) -> its index in the list

    def const(v):
        if id(v) not in where:
            where[id(v)] = n + len(consts)
            consts.append(v)
        return where[id(v)]

    plan = []
    for op, ins, outs, free in steps:
        slots = _plain_slots(op)
        if slots is not None:
            call, one = _bind(op)
        elif type(op) is _FusedAttention:  # (q, kt, v) as its args gives them, fetched directly
            scores, _, mix = op.ops
            v = mix.slots[1] if mix.slots[1][0] == "const" else ("key", op.n_in)
            slots = list(scores.slots) + [v]
            call, one = op.compute, False
        else:  # an op of its own argument order (a Loop ...): its own args
            compute, args = op.compute, op.args

            def own(xs, num_threads, compute=compute, args=args):
                return compute(args(xs), num_threads)

            call, idx, one = own, list(ins), False
        if slots is not None:
            idx = [const(None) if s is None else const(s[1]) if s[0] == "const" else ins[s[1]] for s in slots]
        one = one and len(outs) == 1
        plan.append((call, _getter(idx), outs[0] if one else tuple(outs), tuple(free), one, tuple(idx)))
    return plan, n, list(outputs), consts


def _getter(idx):
    """``get(values)``: the tuple of ``values[i]`` for ``i`` in ``idx`` (one C call where
    ``idx`` has two or more; a list comprehension per step cost 0.4 us more)."""
    if len(idx) >= 2:
        return operator.itemgetter(*idx)
    if len(idx) == 1:
        i = idx[0]
        return lambda values: (values[i],)
    return lambda values: ()


def _plain_slots(op):
    """The slots ``op`` reads its arguments by (:meth:`OnnxOp.args`), or None for an op
    that reads them its own way. A fused step's are its first op's, a stream's recurrent
    step's (:class:`rnnfast._onnx_stream._RecStep`) its node's."""
    t = type(op)
    base = op.rec if t is _Fused else op.prod if t is _FusedProduct else op.rec.op if t is _onnx_stream._RecStep else op
    if isinstance(base, OnnxOp) and type(base).args is OnnxOp.args and "args" not in vars(base):
        return base.slots
    return None


def _bind(op):
    """``(call, one)``: ``op.compute`` as ``call(args, num_threads)``; ``one``: ``call``
    gives the op's only output itself, not a list of it. An :class:`FnOp` calls its
    kernel directly (the view ops, ``Concat`` and ``Gather`` of the common shapes their
    NumPy call alone, the same arrays: :func:`_fast_kernel`)."""
    if type(op) is _FusedProduct and "compute" not in vars(op):
        one = op.one()
        if one is not None:
            return one, True
    if type(op) is not FnOp or "compute" in vars(op):
        return op.compute, False
    kernel, a = KERNELS[op.kernel], op.attrs
    fast = _fast_kernel(op)
    if fast is not None:
        return fast, op.num_outputs == 1
    if op.kernel in _TAKES_THREADS:

        def threaded(args, num_threads):
            return kernel(args, a, num_threads)

        return threaded, op.num_outputs == 1
    if op.num_outputs == 1:

        def single(args, num_threads):
            out = kernel(args, a)
            return out[0] if isinstance(out, (list, tuple)) else out

        return single, True

    def several(args, num_threads):
        out = kernel(args, a)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return several, False


def _fast_kernel(op):
    """A shorter ``call(args, num_threads)`` for a single-output :class:`FnOp` whose
    kernel's checks can be done at load: ``Transpose`` (NumPy's own, on the
    permutation), ``Squeeze`` / ``Unsqueeze`` of constant axes, ``Identity``,
    ``Concat`` of one dtype and ``Gather`` on a non-negative axis (their kernels where
    the call's arrays are otherwise); None for the rest."""
    if op.num_outputs != 1 or op.domain:
        return None
    kernel, a, k = KERNELS[op.kernel], op.attrs, op.kernel
    n_args = len(op.slots)
    if k == "Identity":
        return lambda args, num_threads: args[0]
    if k == "Transpose" and n_args == 1:
        perm = tuple(a["perm"]) if a.get("perm") else None

        def transpose(args, num_threads):  # (np.transpose's own call, without its wrapper)
            x = args[0]
            return x.transpose(perm) if type(x) is np.ndarray else np.transpose(x, perm)

        return transpose
    if k in ("Squeeze", "Unsqueeze") and a.get("axes") is not None and (n_args == 1 or op.slots[1] is None):
        axes = tuple(a["axes"])
        if k == "Squeeze":

            def squeeze(args, num_threads):
                x = args[0]
                return x.squeeze(axis=axes) if type(x) is np.ndarray else np.squeeze(x, axis=axes)

            return squeeze
        return _unsqueeze_call(axes)
    if k == "Concat" and all(s is not None for s in op.slots):
        axis = int(a["axis"])

        def concat(args, num_threads):
            x = args[0]
            if type(x) is np.ndarray and -x.ndim <= axis < x.ndim:
                dt = x.dtype
                for v in args:
                    if type(v) is not np.ndarray or v.dtype != dt:
                        return kernel(args, a)
                return np.concatenate(args, axis=axis)
            return kernel(args, a)

        return concat
    if k == "Gather" and n_args == 2 and int(a["axis"]) >= 0:
        axis = int(a["axis"])

        def gather(args, num_threads):
            x = args[0]
            if type(x) is np.ndarray and axis < x.ndim:
                try:
                    return x.take(args[1], axis=axis)  # (np.take without its wrapper)
                except IndexError:
                    pass
            return kernel(args, a)

        return gather
    return None


def _unsqueeze_call(axes):
    """``Unsqueeze`` of constant ``axes`` as ``call(args, num_threads)``: the reshape
    :func:`numpy.expand_dims` makes (a view), its output shape kept per input shape."""
    shapes: dict = {}

    def unsqueeze(args, num_threads):
        x = args[0]
        if type(x) is np.ndarray:
            shape = shapes.get(x.shape)
            if shape is None:
                shape = np.expand_dims(x, axes).shape  # (its checks and messages)
                _remember(shapes, x.shape, shape, _FUSED_MEMO_SIZE)
            return x.reshape(shape)
        return np.expand_dims(x, axes)

    return unsqueeze


def run_plan(plan, feeds, num_threads, more=()):
    """Run ``plan`` (what :func:`flat_plan` gives) on ``feeds`` (one per graph input, or
    their first ones and ``more`` the rest: the model's inputs, then its cached shape
    results): its outputs, a list; what :func:`run_compiled` gives on the program it was
    made of."""
    steps, n, outputs, consts = plan
    vals = [*feeds, *more]
    vals += [None] * (n - len(vals))
    vals += consts
    for call, get, outs, free, one, _ in steps:
        res = call(get(vals), num_threads)
        for i in free:
            vals[i] = None
        if one:
            vals[outs] = res
        else:
            for i, v in zip(outs, res):
                vals[i] = v
    return [vals[i] for i in outputs]


#: The most steps a plan's straight-line function (:func:`plan_runner`) is written for
#: (its compile: 40-65 us a step, 17 ms for 256 at its first call); a longer plan runs in
#: :func:`run_plan`.
RUNNER_MAX_STEPS = 256


def plan_runner(plan, n_feeds, n_more):
    """``run(feeds, more, num_threads)``: :func:`run_plan` on ``plan`` for ``n_feeds``
    inputs and ``n_more`` shape results, as one function of straight-line code (each
    tensor a local variable, each step's call and constants bound to the function), with
    NumPy's floating-point errors ignored (``np.errstate``'s decorator: 0.7 us a call
    where its ``with`` block took 1.4). The same calls on the same arguments in the same
    order, the same tensors freed after the same step; without the steps' tuples, the
    getters and the list of tensors that :func:`run_plan` reads per step (4-7 us of a B=1
    decoder step's call, where a 130 us product left the caches cold). The code is made
    of indices alone (``t3 = s1((t0, k21), num_threads)``): no name from the model."""
    steps, n, outputs, consts = plan
    n_in = n_feeds + n_more
    if len(steps) > RUNNER_MAX_STEPS:

        def run_long(feeds, more, num_threads):
            return run_plan(plan, feeds, num_threads, more)

        return np.errstate(all="ignore")(run_long)
    env: dict = {}
    made = set(range(n_in))  # tensors with a value (an input, or a step's output so far)

    def read(i):
        if i >= n:  # a constant of the ops (None for an absent input)
            env["k%d" % i] = consts[i - n]
            return "k%d" % i
        if i not in made:  # (read before any step gives it: None, as in run_plan's list)
            made.add(i)
            first.append("    t%d = None" % i)
        return "t%d" % i

    body: list = []
    first: list = []
    env["_outs"] = _outs
    for j, (call, _, outs, free, one, idx) in enumerate(steps):
        env["s%d" % j] = call
        res = "t%d" % outs if one and outs not in free else "r"
        body.append("    %s = s%d((%s), num_threads)" % (res, j, "".join(read(i) + ", " for i in idx)))
        if free:
            body.append("    %s = %s" % (", ".join("t%d" % i for i in free), ", ".join(["None"] * len(free))))
        if one:
            if res == "r":
                body.append("    t%d, r = r, None" % outs)
            made.add(outs)
        else:  # (r let go at once: it would keep a freed output alive to the next step)
            known = "".join(read(i) + ", " for i in outs)
            if outs:
                line = "    %s= r if type(r) is list and len(r) == %d else _outs(r, (%s))"
                body.append(line % (known, len(outs), known))
            body.append("    r = None")
            made.update(outs)
    head = ["def run(feeds, more, num_threads):"]
    if n_feeds:
        head.append("    %s= feeds" % "".join("t%d, " % i for i in range(n_feeds)))
    if n_more:
        head.append("    %s= more" % "".join("t%d, " % i for i in range(n_feeds, n_in)))
    tail = ["    return [%s]" % ", ".join(read(i) for i in outputs)]
    exec(compile("\n".join(head + first + body + tail), "<rnnfast plan>", "exec"), env)
    return np.errstate(all="ignore")(env["run"])


def _outs(res, old):
    """A step's results ``res`` for its outputs, whose values so far are ``old``: as
    :func:`run_plan`'s ``zip`` assigns them (an output past the results' end keeps its
    value; results past the outputs' end are dropped)."""
    res = list(res)[: len(old)]
    return tuple(res) + tuple(old[len(res) :])


def _remember(memo, key, value, size):
    """``memo[key] = value``, ``memo`` emptied first where it holds ``size`` keys: the
    bounded memos of the per-call path (shapes seen, layouts, teams), whose keys are few
    in a real application and never grow without bound in a hostile one."""
    if len(memo) >= size:
        memo.clear()
    memo[key] = value


# -- kernels: one function per op type (args: the inputs, None where absent) -----------


def _i(v):
    return int(np.asarray(v).reshape(-1)[0]) if np.ndim(v) else int(v)


def _ints(v):
    return [int(a) for a in np.asarray(v).reshape(-1)]


def _axis(axis, ndim):
    a = int(axis)
    if not -ndim <= a < max(ndim, 1):
        raise ValueError("axis %d out of range for rank %d" % (a, ndim))
    return a % max(ndim, 1)


def _same(x, y):
    """``y`` in ``x``'s dtype (numpy keeps float32 in float32 ops; this covers the rest)."""
    return np.asarray(y, dtype=x.dtype) if isinstance(y, np.ndarray) or np.isscalar(y) else y


def _sigmoid(x):
    return apply_activation("sigmoid", x) if x.dtype in (np.float32, np.float64) else 1 / (1 + np.exp(-x))


def _act(name):
    def f(args, a):
        x = args[0]
        if x.dtype in (np.float32, np.float64):
            return apply_activation(name, x)
        return apply_activation(name, x.astype(np.float32)).astype(x.dtype)

    return f


def _int_div(a, b):
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(np.result_type(a, b))


def _div(args, a):
    x, y = args
    if x.dtype.kind in "iu":
        return _int_div(x, y)
    return x / y


def _mod(args, a):
    x, y = args
    if a["fmod"]:
        return np.fmod(x, y)
    return np.mod(x, y)


def _softmax(args, a, num_threads=None, log=False, out=None):
    """ONNX ``Softmax`` / ``LogSoftmax`` (``log``) on the compiled row kernel
    (:func:`rnnfast._special.row_softmax`), any axis; ``out``: where to write it (the
    input itself, for :class:`_FusedProduct`) where the rows lie in it, else unused."""
    x = args[0]
    axis = _axis(a["axis"], x.ndim)
    if a.get("legacy"):  # opset < 13: over the axes from `axis` on, flattened
        shape = x.shape
        x2 = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
        y = _softmax([x2], {"axis": -1}, num_threads, log)
        return y.reshape(shape)
    if axis != x.ndim - 1:
        y = _softmax([np.moveaxis(x, axis, -1)], {"axis": -1}, num_threads, log)
        return np.moveaxis(y, -1, axis)
    return row_softmax(x, log, num_threads, out=out)


def _gemm(args, a, num_threads=None):
    A, B, C = args
    if a["transA"]:
        A = A.T
    if a["transB"]:
        B = B.T
    return _gemm_tail(_products.matmul(A, B, num_threads=num_threads), C, a)


def _gemm_tail(y, C, a):
    """``alpha * y + beta * C`` of a Gemm, in place in the product ``y``."""
    if a["alpha"] != 1:
        y *= y.dtype.type(a["alpha"])
    if C is not None:
        y += C * y.dtype.type(a["beta"]) if a["beta"] != 1 else C
    return y


def _conv(args, a, act=-1, num_threads=None):
    """1-D convolution on (B, C, T) with weight (Cout, Cin/group, k): ops.conv1d on the
    channels-last views, on up to ``num_threads`` threads (the call's)."""
    x, w, b = args
    if x.ndim != 3:
        raise ValueError(
            "Conv %r: rnnfast runs 1-D convolutions (input (N, C, L)), got shape %s" % (a["_name"], x.shape)
        )
    k = w.shape[2]
    pads = _pads_1d(a, x.shape[2], k, a["strides"], a["dilations"])
    kernel = a.get("_kernel")
    if kernel is None:
        kernel = np.ascontiguousarray(np.transpose(w, (2, 1, 0)))
    xt = np.swapaxes(x, 1, 2)
    if pads != (0, 0):  # zeros around a copy (np.pad, in conv1d, costs 20 us at (1, 100, 40))
        padded = np.zeros((xt.shape[0], xt.shape[1] + pads[0] + pads[1], xt.shape[2]), xt.dtype)
        padded[:, pads[0] : pads[0] + xt.shape[1]] = xt
        xt, pads = padded, (0, 0)
    packed = a.get("_packed")
    if packed is not None and x.dtype == packed.dtype and xt.shape[2] == kernel.shape[1]:
        span = (k - 1) * a["dilations"] + 1
        n = (xt.shape[1] - span) // a["strides"] + 1 if xt.shape[1] >= span else 0
        if 1 <= n and xt.shape[0] * n <= kernel.shape[2]:
            # the im2col rows, copied (no larger than the weights, which conv1d's product
            # would pack on every call), on the weights packed at load (FnOp): the same
            # rows and products, so the same bits
            cols = _windows(xt, k, a["strides"], a["dilations"]).reshape(xt.shape[0] * n, k * xt.shape[2])
            bias = None if b is None else np.ascontiguousarray(b, x.dtype).reshape(-1)
            y = _products.dense(cols, packed, kernel.shape[2], bias, act, num_threads)
            return np.swapaxes(y.reshape(xt.shape[0], n, kernel.shape[2]), 1, 2)
    y = conv1d(
        xt,
        kernel,
        b,
        stride=a["strides"],
        dilation=a["dilations"],
        padding=pads,
        groups=a["group"],
        num_threads=num_threads,
        act=act,
    )
    return np.swapaxes(y, 1, 2)


def _pads_1d(a, length, k, stride, dilation):
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        p = a.get("pads") or [0, 0]
        return (0, 0) if auto == "VALID" else (int(p[0]), int(p[1]))
    span = (k - 1) * dilation + 1
    out = -(-length // stride)
    total = max((out - 1) * stride + span - length, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if auto == "SAME_UPPER" else (big, small)


def _pool(args, a, reduce):
    x = args[0]
    if x.ndim != 3:
        raise ValueError("%s: rnnfast pools 1-D inputs (N, C, L), got shape %s" % (a["_name"], x.shape))
    k = a["kernel_shape"][0]
    stride = a["strides"][0] if a.get("strides") else 1
    pads = _pads_1d(a, x.shape[2], k, stride, 1)
    xt = np.swapaxes(x, 1, 2)
    if reduce == "avg" and a.get("count_include_pad") and pads != (0, 0):
        xt = np.pad(xt, ((0, 0), pads, (0, 0)))
        pads = (0, 0)
    y = pool1d(np.ascontiguousarray(xt), k, stride, pads, "max" if reduce == "max" else "avg")
    return np.swapaxes(y, 1, 2)


def _batchnorm(args, a):
    x, scale, bias, mean, var = args
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + var.dtype.type(a["epsilon"]))
    y = x * inv.reshape(shape).astype(x.dtype)
    y += (bias - mean * inv).reshape(shape).astype(x.dtype)
    return y


def _layernorm(args, a):
    x, scale, bias = args
    axis = _axis(a["axis"], x.ndim)
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    y = d * (1 / np.sqrt(var + x.dtype.type(a["epsilon"])))
    y *= scale
    if bias is not None:
        y += bias
    return y


def _reduce(fn):
    def f(args, a):
        x = args[0]
        axes = a.get("axes")
        if len(args) > 1 and args[1] is not None:
            axes = _ints(args[1])
        if not axes:
            if a.get("noop_with_empty_axes"):
                return x
            axes = None
        else:
            axes = tuple(_axis(v, x.ndim) for v in axes)
        return fn(x, axis=axes, keepdims=bool(a["keepdims"]))

    return f


def _squeeze(args, a):
    x = args[0]
    axes = a.get("axes")
    if len(args) > 1 and args[1] is not None:
        axes = _ints(args[1])
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(axes))  # (numpy checks them as ONNX does: in range, of size 1)


def _unsqueeze(args, a):
    x = args[0]
    axes = a.get("axes")
    if len(args) > 1 and args[1] is not None:
        axes = _ints(args[1])
    return np.expand_dims(x, tuple(axes))  # (axes of the output, negative from its end; repeats refused)


def _reshape(args, a):
    x, shape = args
    shape = _ints(shape)
    if not a.get("allowzero"):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(args, a):
    x = args[0]
    axis = _axis(a["axis"], x.ndim + 1)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _concat(args, a):
    xs = [v for v in args if v is not None]
    axis = _axis(a["axis"], xs[0].ndim)
    dt = np.result_type(*xs)
    return np.concatenate([np.asarray(v, dt) for v in xs], axis=axis)


def _split(args, a):
    x = args[0]
    axis = _axis(a["axis"], x.ndim)
    split = a.get("split")
    if len(args) > 1 and args[1] is not None:
        split = _ints(args[1])
    n = x.shape[axis]
    if not split:
        k = a["_num_outputs"]
        size = -(-n // k)
        split = [min(size, n - i * size) for i in range(k)]
    if sum(split) != n:
        raise ValueError("Split %r: parts %s do not add up to %d" % (a["_name"], split, n))
    cuts = np.cumsum(split)[:-1]
    return np.split(x, cuts, axis=axis)


def _slice(args, a):
    x = args[0]
    if len(args) > 1:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    else:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes") or list(range(len(starts)))
        steps = [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.ndim)
        if st == 0:
            raise ValueError("Slice %r: a step of 0" % a["_name"])
        n = x.shape[ax]
        # ONNX clamps starts / ends as python slicing does, with its own INT_MAX / INT_MIN
        s = max(min(s, n), -n - 1) if st > 0 else max(min(s, n - 1), -n - 1)
        e = max(min(e, n), -n - 1)
        if st < 0 and e < -n:
            e = None
        idx[ax] = slice(s, e, st)
    return x[tuple(idx)]


def _shape(args, a):
    s = np.asarray(args[0].shape, np.int64)
    start, end = a.get("start", 0), a.get("end")
    return s[start:end] if end is not None else s[start:]


def _gather(args, a):
    x, idx = args
    axis = _axis(a["axis"], x.ndim)
    try:  # numpy's take reads negative indices as ONNX does and checks the range
        return np.take(x, idx, axis=axis)
    except IndexError:
        n = x.shape[axis]
        raise ValueError("Gather %r: index out of range [%d, %d)" % (a["_name"], -n, n)) from None


def _split_to_sequence(args, a):
    """A sequence (a list of arrays): ``x`` cut along ``axis`` in pieces of 1 (the axis
    dropped unless ``keepdims``), of ``split`` each (a scalar: the last piece may be
    shorter) or of the sizes ``split`` lists."""
    x = args[0]
    axis = _axis(a["axis"], x.ndim)
    n = x.shape[axis]
    split = args[1] if len(args) > 1 else None
    if split is None:
        parts = np.split(x, n, axis=axis) if n else []
        return [parts if a["keepdims"] else [np.squeeze(p, axis) for p in parts]]
    s = np.asarray(split)
    if s.ndim == 0:
        k = int(s)
        if k <= 0:
            raise ValueError("SplitToSequence %r: split %d" % (a["_name"], k))
        sizes = [min(k, n - i) for i in range(0, n, k)]
    else:
        sizes = _ints(s)
        if sum(sizes) != n or any(v < 0 for v in sizes):
            raise ValueError("SplitToSequence %r: parts %s do not add up to %d" % (a["_name"], sizes, n))
    return [np.split(x, np.cumsum(sizes)[:-1], axis=axis) if sizes else []]


def _sequence_at(args, a):
    seq, pos = args
    p, n = _i(pos), len(seq)
    if not -n <= p < n:
        raise ValueError("SequenceAt %r: position %d of a sequence of %d tensors" % (a["_name"], p, n))
    return seq[p]


def _constant_of_shape(args, a):
    shape = _ints(args[0])
    if any(d < 0 for d in shape):
        raise ValueError("ConstantOfShape %r: negative dimension in %s" % (a["_name"], shape))
    v = a["value"]
    return np.full(shape, v.reshape(-1)[0], dtype=v.dtype)


def _expand(args, a):
    x, shape = args
    shape = _ints(shape)
    target = np.broadcast_shapes(x.shape, tuple(shape))
    return np.broadcast_to(x, target)


def _cast(args, a):
    return args[0].astype(a["_dtype"])


def _where(args, a):
    c, x, y = args
    return np.where(c, x, y)


def _range(args, a):
    start, limit, delta = (np.asarray(v).reshape(()) for v in args)
    if delta == 0:
        raise ValueError("Range %r: delta 0" % a["_name"])
    n = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + np.arange(n, dtype=np.result_type(start, delta)) * delta).astype(start.dtype)


def _clip(args, a):
    x = args[0]
    lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
    hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
    if lo is not None:
        x = np.maximum(x, _same(x, lo))
    if hi is not None:
        x = np.minimum(x, _same(x, hi))
    return x


def _transpose(args, a):
    x = args[0]
    perm = a.get("perm")
    return np.transpose(x, perm if perm else None)


def _tile(args, a):
    return np.tile(args[0], _ints(args[1]))


def _matmul(args, a, num_threads=None):
    return _products.matmul(args[0], args[1], num_threads=num_threads)


def _hardsigmoid(args, a):
    x = args[0]
    t = x.dtype.type
    return np.clip(x * t(a["alpha"]) + t(a["beta"]), 0, 1)


def _gelu(args, a):
    x = args[0]
    t = x.dtype.type
    if a["approximate"] == "tanh":
        return t(0.5) * x * (1 + np.tanh(t(np.sqrt(2 / np.pi)) * (x + t(0.044715) * x**3)))
    return t(0.5) * x * (1 + _erf(x / t(np.sqrt(2))))


def _erf(x):
    return erf(x)


def _softplus(x):
    return np.logaddexp(x, x.dtype.type(0))


def _dropout(args, a):
    x = args[0]
    if len(args) > 2 and args[2] is not None and bool(np.asarray(args[2])):
        raise ValueError("Dropout %r: training_mode=True (rnnfast runs inference only)" % a["_name"])
    return [x, np.ones(x.shape, bool)]


def _elu(args, a):
    x = args[0]
    t = x.dtype.type
    return np.where(x > 0, x, t(a["alpha"]) * np.expm1(np.minimum(x, 0)))


def _selu(args, a):
    x = args[0]
    t = x.dtype.type
    return t(a["gamma"]) * np.where(x > 0, x, t(a["alpha"]) * np.expm1(np.minimum(x, 0)))


def _leaky(args, a):
    x = args[0]
    return np.where(x >= 0, x, x.dtype.type(a["alpha"]) * x)


def _prelu(args, a):
    x, s = args
    return np.where(x >= 0, x, x * s)


def _argextreme(fn, flip):
    def f(args, a):
        x = args[0]
        axis = _axis(a["axis"], x.ndim)
        if a.get("select_last_index"):
            r = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            r = fn(x, axis=axis)
        r = r.astype(np.int64)
        return np.expand_dims(r, axis) if a["keepdims"] else r

    return f


def _pow(args, a):
    x, y = args
    return np.power(x, y.astype(x.dtype) if x.dtype.kind == "f" else y).astype(x.dtype)


#: The op kernels by op type: ``fn(args, attrs)`` -> an array or a list of them.
KERNELS = {
    "Identity": lambda args, a: args[0],
    "Add": lambda args, a: np.add(*args),
    "Sub": lambda args, a: np.subtract(*args),
    "Mul": lambda args, a: np.multiply(*args),
    "Div": _div,
    "Mod": _mod,
    "Pow": _pow,
    "Max": lambda args, a: _fold(np.maximum, args),
    "Min": lambda args, a: _fold(np.minimum, args),
    "Sum": lambda args, a: _fold(np.add, args),
    "Mean": lambda args, a: _fold(np.add, args) / args[0].dtype.type(len(args)),
    "Neg": lambda args, a: np.negative(args[0]),
    "Abs": lambda args, a: np.abs(args[0]),
    "Sqrt": lambda args, a: np.sqrt(args[0]),
    "Exp": lambda args, a: np.exp(args[0]),
    "Log": lambda args, a: np.log(args[0]),
    "Reciprocal": lambda args, a: np.reciprocal(args[0]),
    "Floor": lambda args, a: np.floor(args[0]),
    "Ceil": lambda args, a: np.ceil(args[0]),
    "Round": lambda args, a: np.round(args[0]),
    "Sign": lambda args, a: np.sign(args[0]),
    "Erf": lambda args, a: _erf(args[0]),
    "Sin": lambda args, a: np.sin(args[0]),
    "Cos": lambda args, a: np.cos(args[0]),
    "Not": lambda args, a: np.logical_not(args[0]),
    "And": lambda args, a: np.logical_and(*args),
    "Or": lambda args, a: np.logical_or(*args),
    "Xor": lambda args, a: np.logical_xor(*args),
    "Equal": lambda args, a: np.equal(*args),
    "Less": lambda args, a: np.less(*args),
    "Greater": lambda args, a: np.greater(*args),
    "LessOrEqual": lambda args, a: np.less_equal(*args),
    "GreaterOrEqual": lambda args, a: np.greater_equal(*args),
    "Relu": _act("relu"),
    "Sigmoid": lambda args, a: _sigmoid(args[0]),
    "Tanh": _act("tanh"),
    "Softsign": _act("softsign"),
    "Softplus": lambda args, a: _softplus(args[0]),
    "Elu": _elu,
    "Selu": _selu,
    "LeakyRelu": _leaky,
    "PRelu": _prelu,
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda args, a: args[0] * _hardsigmoid(args, {"alpha": 1 / 6, "beta": 0.5}),
    "Mish": lambda args, a: args[0] * np.tanh(_softplus(args[0])),
    "Gelu": _gelu,
    "Clip": _clip,
    "Softmax": _softmax,
    "LogSoftmax": lambda args, a, num_threads=None: _softmax(args, a, num_threads, log=True),
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Conv": lambda args, a, num_threads=None: _conv(args, a, -1, num_threads),
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "MaxPool": lambda args, a: _pool(args, a, "max"),
    "AveragePool": lambda args, a: _pool(args, a, "avg"),
    "GlobalAveragePool": lambda args, a: args[0].mean(axis=tuple(range(2, args[0].ndim)), keepdims=True),
    "GlobalMaxPool": lambda args, a: args[0].max(axis=tuple(range(2, args[0].ndim)), keepdims=True),
    "ReduceMean": _reduce(np.mean),
    "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
    "ReduceSum": _reduce(np.sum),
    "ReduceProd": _reduce(np.prod),
    "ArgMax": _argextreme(np.argmax, False),
    "ArgMin": _argextreme(np.argmin, False),
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Shape": _shape,
    "Size": lambda args, a: np.asarray(args[0].size, np.int64),
    "Gather": _gather,
    "SplitToSequence": _split_to_sequence,
    "SequenceAt": _sequence_at,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Cast": _cast,
    "Where": _where,
    "Range": _range,
    "Dropout": _dropout,
}


#: Kernels that take the call's thread count too, ``(args, attrs, num_threads)``: the
#: (log-)softmax, which :class:`_FusedProduct` also takes.
_THREADED = frozenset(("Softmax", "LogSoftmax"))
#: Kernels called with the call's thread count: those and ``Conv`` (its product's team).
_TAKES_THREADS = _THREADED | {"Conv"}


def _fold(fn, args):
    y = args[0]
    for v in args[1:]:
        y = fn(y, v)
    return y


# -- the model -------------------------------------------------------------------------


class OnnxModel(Summarized):
    """An ONNX model converted to canonical ops, called as an ONNX Runtime
    ``InferenceSession`` is.

    Built by :func:`rnnfast.load` (``.onnx`` files) and :func:`rnnfast.from_onnx`, not
    directly.

    Attributes
    ----------
    name : str
        The ONNX graph's name.
    producer : str
        Who wrote the file (``producer_name`` and ``producer_version``).
    opset : int
        The default domain's opset version.
    input_names, output_names : list of str
    """

    framework = "ONNX"
    #: ``predict`` takes no ``batch_size``: which input axis is the batch is not recorded
    #: in an ONNX model (the command line runs such a model in one pass).
    splits_batches = False

    def __init__(self, *, graph, data_graph, frontier, inputs, outputs, name, producer, opset, probe=True):
        self._graph = graph  # every step: the first call with new input shapes
        self._data = data_graph  # the steps on data, fed the shape results too
        self._frontier = list(frontier)  # keys of the shape results the data steps read
        self._inputs = list(inputs)  # dicts: name, shape (ints / str / None), dtype, type
        self._outputs = list(outputs)  # dicts: name, shape, type
        self.name = name
        self.producer = producer
        self.opset = int(opset)
        self.source = None
        self.input_names = [s["name"] for s in self._inputs]
        self.output_names = [s["name"] for s in self._outputs]
        self._shape_cache = {}
        self._shapes = None  # tensor key -> shape in the first run
        self._lock = threading.Lock()
        dts = {op.layer.dtype for op in self.layers if isinstance(op, RecurrentOp)}
        self.dtype = dts.pop() if len(dts) == 1 else np.dtype(np.float32)
        if probe:
            self._probe()

    # -- ONNX Runtime's face ----------------------------------------------------------

    def get_inputs(self):
        """The model's inputs as ``NodeArg`` s (``name``, ``shape``, ``type``)."""
        return [NodeArg(s["name"], list(s["shape"]), s["type"]) for s in self._inputs]

    def get_outputs(self):
        """The model's outputs as ``NodeArg`` s."""
        return [NodeArg(s["name"], list(s["shape"]), s["type"]) for s in self._outputs]

    def run(self, output_names, input_feed, run_options=None, *, num_threads=None):
        """Compute the outputs ``output_names`` (None or empty: all) from ``input_feed``
        (a dict: input name -> array), as ``InferenceSession.run`` does.

        Parameters
        ----------
        output_names : list of str or None
        input_feed : dict
            Every input by name. Arrays are cast to the input's type (a float array to a
            float input, an integer one to an integer input).
        run_options : None
            Accepted for ONNX Runtime's signature; must be None.
        num_threads : int, optional, keyword only
            Threads for this call (default :func:`rnnfast.get_num_threads`).

        Returns
        -------
        list of numpy.ndarray, one per name in ``output_names``
        """
        # the count resolved once per call, not by each op (the default reads the
        # affinity mask: a system call, 3-5 us on a VM, per op)
        num_threads = resolve_num_threads(num_threads)
        if run_options is None and not output_names:
            out = self._plain_run(input_feed, num_threads)
            if out is not None:  # the common call: checked as below, in fewer steps
                return out
        if run_options is not None:
            raise ValueError("%s: run_options is not supported (pass None)" % self._what())
        if not isinstance(input_feed, dict):
            raise ValueError("%s: input_feed must be a dict of input name -> array" % self._what())
        unknown = [k for k in input_feed if k not in self.input_names]
        if unknown:
            raise ValueError(
                "%s: unknown input(s) %s (inputs: %s)"
                % (self._what(), ", ".join(map(str, unknown)), ", ".join(self.input_names))
            )
        missing = [k for k in self.input_names if k not in input_feed]
        if missing:
            raise ValueError("%s: missing input(s) %s" % (self._what(), ", ".join(missing)))
        names = list(output_names) if output_names else list(self.output_names)
        for n in names:
            if n not in self.output_names:
                raise ValueError("%s: no output %r (outputs: %s)" % (self._what(), n, ", ".join(self.output_names)))
        feeds = [self._validated(spec, input_feed[spec["name"]]) for spec in self._inputs]
        values = self._run(feeds, num_threads)
        by_name = dict(zip(self.output_names, values))
        return [by_name[n] for n in names]

    def predict(self, x, batch_size=None, verbose=0, *, num_threads=None):
        """Run a single-input model on ``x``: its only output, or a list of its outputs.

        ``batch_size`` must be None (an ONNX model does not say which axis of its input
        is the batch: slice the input yourself); ``verbose`` as for Keras models (one
        pass, so 1 shows a bar of one step)."""
        if batch_size is not None:
            raise ValueError(
                "%s: batch_size is not supported (an ONNX model does not say which axis of its input is the "
                "batch); call it on slices of the input" % self._what()
            )
        if isinstance(x, dict) or len(self._inputs) != 1:
            return self._predict(x, num_threads)
        x = _validation.array(x, "%s input" % self._what())
        return run_batched(lambda part: self._predict(part, num_threads), x, None, verbose=verbose)

    def _predict(self, x, num_threads):
        if len(self._inputs) != 1:
            if isinstance(x, dict):
                out = self.run(None, x, num_threads=num_threads)
                return out[0] if len(out) == 1 else out
            raise ValueError(
                "%s takes %d inputs (%s): call run(None, {name: array, ...})"
                % (self._what(), len(self._inputs), ", ".join(self.input_names))
            )
        if isinstance(x, dict):
            x = x[self.input_names[0]] if len(x) == 1 and self.input_names[0] in x else x
        out = self.run(None, {self.input_names[0]: x}, num_threads=num_threads)
        return out[0] if len(out) == 1 else out

    def __call__(self, x, *, num_threads=None):
        """``model(x)``: :meth:`predict`."""
        return self._predict(x, num_threads)

    # -- streaming (rnnfast.stream) ---------------------------------------------------

    def stream(self):
        """A new :class:`~rnnfast.stream.Stream` at the start of a sequence: every
        recurrent node's state (``stream.state``: ``{node name: [h] or [h, c]}``).

        For a model of one input, ``(batch, time, features)`` or ``(batch, time)`` ids in
        any axis order, whose recurrent nodes run forward and whose other ops act on each
        step alone (or read the last step); anything else is refused here with
        :class:`~rnnfast.UnsupportedLayerError` naming the node."""
        return _stream.open_stream(self, lambda: _onnx_stream.OnnxProgram(self))

    def step(self, x, stream, *, num_threads=None):
        """Run the next steps of one stream (``x``: ``(time, features)`` or ``(time,)``
        ids), or of many in one batched call (lists of chunks and streams). Returns each
        output for these steps: ``(time, features)`` for an output with a time axis,
        ``(features,)`` for one without (the output as if the sequence ended with the
        chunk); other axes flattened into the features. Several outputs: a list. See
        :meth:`rnnfast.KerasModel.step`."""
        return _stream.step(self, x, stream, num_threads)

    # -- running ----------------------------------------------------------------------

    def _plain_run(self, input_feed, num_threads):
        """The outputs of a call whose ``input_feed`` is a dict of exactly the inputs,
        each a C-contiguous ndarray of the input's dtype whose shape fits the declared one
        (what :meth:`_validated` passes on unchanged); else None (the full checks).

        Decided per signature (the feeds' shapes) once: :attr:`_feed_sigs` remembers a
        fitting signature's plan, the plan's function (:func:`plan_runner`, made once a
        plan) and its shape results (:attr:`_shape_cache`'s), at most
        :data:`SHAPE_CACHE_SIZE` signatures, so that a later call of it tests no shape and
        calls that function straight away."""
        checks = self.__dict__.get("_feed_checks")
        if checks is None:  # per input: name and dtype; () where an input declares no shape
            ranked = all(s.get("ranked", True) for s in self._inputs)
            self._feed_sigs: dict = {}  # (set before the checks: another thread's call reads both)
            checks = self._feed_checks = tuple((s["name"], s["dtype"]) for s in self._inputs) if ranked else ()
        if type(input_feed) is not dict or len(input_feed) != len(checks) or not checks:
            return None
        feeds, shapes = [], []
        owners = True  # every input owns its data (_callers': looked at here, in cache)
        for name, dt in checks:
            a = input_feed.get(name)
            if type(a) is not np.ndarray or a.dtype != dt:
                return None
            flags = a.flags
            if not flags.c_contiguous:
                return None
            owners = owners and flags.owndata
            feeds.append(a)
            shapes.append(a.shape)
        sig = tuple(shapes)
        known = self._feed_sigs.get(sig)
        if known is None or known[0] is not self.__dict__.get("_plan"):
            # a new signature (or a new plan): its test, the full call, then what to remember
            if not all(_fits(spec["shape"], shape) for spec, shape in zip(self._inputs, sig)):
                return None
            out = self._values(feeds, num_threads)
            cached = self._shape_cache.get(sig)
            plan = self.__dict__.get("_plan")
            if cached is not None and plan is not None:
                runner = self.__dict__.get("_runner")
                if runner is None or runner[0] is not plan:
                    runner = self._runner = (plan, plan_runner(plan, len(feeds), len(cached)))
                _remember(self._feed_sigs, sig, (plan, runner[1], cached), SHAPE_CACHE_SIZE)
            return _callers(out, feeds, owners)
        return _callers(known[1](feeds, known[2], num_threads), feeds, owners)

    def _validated(self, spec, x):
        what = "%s input %r" % (self._what(), spec["name"])
        a = _validation.array(x, what)
        dt = spec["dtype"]
        if a.dtype.kind not in "biuf":
            raise ValueError("%s: expected %s, got an array of %s" % (what, spec["type"], a.dtype))
        if dt.kind in "iu" and a.dtype.kind == "f":
            raise ValueError("%s: expected %s, got an array of %s" % (what, spec["type"], a.dtype))
        shape = spec["shape"]
        if not spec.get("ranked", True):  # the model declares no shape: any goes
            return np.ascontiguousarray(a, dtype=dt)
        if not _fits(shape, a.shape):
            raise ValueError("%s: expected shape %s, got %s" % (what, _shape_text(shape), tuple(a.shape)))
        return np.ascontiguousarray(a, dtype=dt)

    def _run(self, feeds, num_threads):
        return _callers(self._values(feeds, num_threads), feeds)

    def _values(self, feeds, num_threads):
        """The outputs as the ops leave them (views, cached arrays)."""
        sig = tuple([a.shape for a in feeds])  # (_shape_key's, inline: the common call)
        cached = self._shape_cache.get(sig)
        with np.errstate(all="ignore"):
            if cached is None:
                n = len(self._outputs)
                if self._shapes is None:  # the first run (at load): each tensor's shape, for the summary
                    values, _ = self._graph.run(feeds, num_threads, keep_all=True)
                    self._shapes = {k: tuple(v.shape) for k, v in values.items() if isinstance(v, np.ndarray)}
                    res = [values[k] for k in self._graph.outputs]
                else:  # the graph's outputs are the model's, then the shape results (the rest is freed)
                    res, _ = self._graph.run(feeds, num_threads)
                out, cached = res[:n], [v if isinstance(v, list) else _frozen(np.asarray(v)) for v in res[n:]]
                with self._lock:
                    if len(self._shape_cache) >= SHAPE_CACHE_SIZE:
                        self._shape_cache.pop(next(iter(self._shape_cache)))
                    self._shape_cache[sig] = cached
            else:
                out = self._run_data(feeds, num_threads, cached)
        return out

    @staticmethod
    def _shape_key(feeds):
        """The key of :attr:`_shape_cache` for ``feeds``: their shapes (each feed has
        its input's dtype, :meth:`_validated`)."""
        return tuple([a.shape for a in feeds])

    def _compiled(self):
        """The data graph as :func:`_compile` gives it (made on the first call), its
        products' weights marked for streaming (:func:`stream_weights`) for this
        machine's cache: read by the model's calls and by its streams alike."""
        prog = self.__dict__.get("_program")
        if prog is None:
            prog = _compile(self._data)
            stream_weights(prog)
            self._program = prog
        return prog

    @staticmethod
    def _stream_runner(program, n_more):
        """``run(feeds, more, num_threads)`` of a stream's ``program`` (the data steps,
        its recurrent nodes' ops replaced by the stream's: rnnfast._onnx_stream) on one
        input and ``n_more`` shape results: the plan and straight-line function of a
        call (:func:`flat_plan`, :func:`plan_runner`), each product and the bias ``Add``
        or activation after it one step as in the model's calls (:func:`fuse_products`:
        the bits of the ops one by one)."""
        return plan_runner(flat_plan(fuse_products(program)), 1, n_more)

    def _run_data(self, feeds, num_threads, more=()):
        """The data graph (:attr:`_data`) run as a list of steps over a list of tensors
        (``feeds``, then ``more``: the model's inputs, then the shape results it reads):
        what :meth:`Graph.run <rnnfast.graph.Graph.run>` does, without its dicts and
        masks (an ONNX graph carries none), for the per-call overhead at small sizes."""
        plan = self.__dict__.get("_plan")
        if plan is None:
            prog = self.__dict__.get("_fast")
            if prog is None:
                prog = self._compiled()
                prog = self._fast = fuse_attention(fuse_products(fuse_views(prog)))
            if probing():  # (the load-time run's stand-ins are bound to no plan)
                return run_compiled(prog, [*feeds, *more], num_threads)
            plan = self._plan = flat_plan(prog)
        return run_plan(plan, feeds, num_threads, more)

    def _example_feed(self, steps=PROBE_STEPS):
        """Zeros of every input's declared shape, a symbolic or unknown dimension taken
        as 1 for the first axis and ``steps`` elsewhere (one value per symbol:
        dimensions that share a name share a size). Each is one zero seen through zero
        strides (:func:`_dry_zeros`), as the trial run's shims give theirs: a 64-row
        (64, 100, 256) input's ``np.zeros`` cost 0.2-2 ms of a load (clearing reused heap
        memory, or faulting in fresh pages), where the recurrent ops only read its shape."""
        sizes: dict = {}
        feed: dict = {}
        for s in self._inputs:
            shape = []
            for i, d in enumerate(s["shape"]):
                if isinstance(d, int):
                    shape.append(d)
                elif isinstance(d, str):
                    shape.append(sizes.setdefault(d, 1 if i == 0 else steps))
                else:
                    shape.append(1 if i == 0 else steps)
            feed[s["name"]] = _dry_zeros(shape, s["dtype"])
        return feed

    def _probe(self):
        """Run once on zeros (:meth:`_example_feed`): with every input's shape fixed,
        ops that do not fit together are found at load and the shape arithmetic is
        done here. The recurrent ops only check their shapes in this run
        (:attr:`RecurrentOp.dry`): loading costs no inference.

        Symbolic dimensions are a guess (different names may have to be one size, or
        sizes a guess cannot know): the guess is tried with :data:`PROBE_STEPS` and with
        1 for every symbol, and where neither fits, the model loads and its first call
        checks the shapes it is given."""
        if not all(s.get("ranked", True) for s in self._inputs):
            return  # an input of no declared shape: nothing to run it on
        fixed = all(isinstance(d, int) for s in self._inputs for d in s["shape"])
        ops = [op for op in self.layers if isinstance(op, RecurrentOp)]
        shims = _dry_shims(self._graph, self._data)
        for op in ops:  # (the model is not shared yet) what reads their zeros is checked where there are shims
            op.dry = "view" if shims else True
        for op, shim in shims:
            op.compute = shim  # (an instance attribute: removed below)
        _probing.on = True
        try:
            for steps in (PROBE_STEPS,) if fixed else (PROBE_STEPS, 1):
                feed = self._example_feed(steps)
                try:
                    self._values([feed[n] for n in self.input_names], 1)
                    return
                except PROBE_ERRORS:
                    if fixed:
                        raise
        except ProbeTooLong:
            return  # a loop longer than a trial: the first call checks the shapes
        finally:
            _probing.on = False
            for op in ops:
                op.dry = False
            for op, _ in shims:
                del op.compute

    # -- describing itself ------------------------------------------------------------

    @property
    def layers(self):
        """The ops, in execution order (the ones folded at load left out)."""
        return self._graph.ops

    def count_params(self):
        """The elements of the weights the ops hold."""
        return int(sum(op.num_params for op in self.layers))

    @property
    def is_chain(self):
        return False

    def summary_rows(self):
        rows = []
        producer = {}
        for k in self._graph.inputs:
            producer[k] = k
        for step in self._graph.steps:
            for k in step.outputs:
                producer[k] = step.op.name
        for step in self._graph.steps:
            op = step.op
            rows.append(
                dict(
                    name=op.name,
                    type=op.op_type,
                    units=op.units,
                    options=op.options,
                    parameters=int(op.num_params),
                    dtype=getattr(getattr(op, "layer", None), "dtype", np.dtype(np.float32)).name,
                    connected_to=[producer.get(k, k) for k in step.inputs],
                    output_shape=", ".join(
                        "(%s)" % ", ".join(map(str, (self._shapes or {}).get(k, ("?",))))
                        for k, want in zip(step.outputs, getattr(op, "outputs", [True] * len(step.outputs)))
                        if want and not isinstance(k, tuple)
                    ),
                )
            )
        return rows

    def summary_title(self):
        ins = ", ".join("%s %s" % (s["name"], _shape_text(s["shape"])) for s in self._inputs)
        return "OnnxModel %r: %s, opset %d, input %s" % (
            self.name,
            self.producer or "unknown producer",
            self.opset,
            ins,
        )

    def describe(self):
        """What the model is and takes, as a dict (``framework``, ``name``, ``inputs``,
        ``outputs``, ``layers``)."""
        return dict(
            framework=self.framework,
            name=self.name,
            inputs=[(s["name"], list(s["shape"]), s["type"]) for s in self._inputs],
            outputs=[(s["name"], list(s["shape"]), s["type"]) for s in self._outputs],
            input_shape=tuple(self._inputs[0]["shape"]) if self._inputs else (),
            dtype=self._inputs[0]["dtype"] if self._inputs else self.dtype,
            layers=self.summary_rows(),
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_shape_cache"] = {}
        state.pop("_program", None)
        state.pop("_fast", None)
        state.pop("_plan", None)
        state.pop("_feed_checks", None)
        state.pop("_feed_sigs", None)
        state.pop("_runner", None)
        state["_graph"] = copy.copy(self._graph)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _what(self):
        return "OnnxModel %r" % self.name

    def __repr__(self):
        lines = ["OnnxModel(%r, opset %d, inputs %s)" % (self.name, self.opset, ", ".join(self.input_names))]
        width = max([len(op.name) for op in self.layers] + [4])
        for op in self.layers:
            lines.append("  %-*s  %s" % (width, op.name, op.describe()))
        return "\n".join(lines)


def _compile(graph):
    """``graph`` as (steps, tensor count, output indices): each step ``(op, input
    indices, output indices, indices freed after it)`` over one list of tensors."""
    index = {k: i for i, k in enumerate(graph.inputs)}
    steps = []
    for step, free in zip(graph.steps, graph._free):
        ins = [index[k] for k in step.inputs]
        gone = [index[k] for k in free]
        outs = []
        for k in step.outputs:
            index[k] = len(index)
            outs.append(index[k])
        steps.append((step.op, ins, outs, gone))
    return steps, len(index), [index[k] for k in graph.outputs]


def run_compiled(program, feeds, num_threads):
    """Run ``program`` (what ``_compile`` gives) on ``feeds`` (one per graph input):
    its outputs, a list."""
    steps, n, outputs = program
    vals = list(feeds) + [None] * (n - len(feeds))
    for op, ins, outs, free in steps:
        res = op.compute(op.args([vals[i] for i in ins]), num_threads)
        for i in free:
            vals[i] = None
        for i, v in zip(outs, res):
            vals[i] = v
    return [vals[i] for i in outputs]


#: Ops whose output shapes and errors do not depend on the values of their float inputs
#: (the slots where that holds; None: all): what may read a dry output in the trial run.
_VALUE_BLIND = dict.fromkeys(
    ("Relu", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Log")
    + ("Sqrt", "Erf", "LeakyRelu", "Identity", "Transpose", "Concat", "Flatten", "MatMul", "Gemm", "Shape", "Size"),
    None,
)
_VALUE_BLIND.update(
    dict.fromkeys(("Reshape", "Expand", "Tile", "Slice", "Gather", "Conv", "Squeeze", "Unsqueeze"), (0,))
)
_VALUE_BLIND.update(dict.fromkeys(("GRU", "LSTM", "RNN"), (0, 2, 3)))  # not sequence_lens
#: Float ops whose output has their input's shape, computed dry in the trial run.
_DRY_SAME_SHAPE = ("Relu", "Tanh", "Sigmoid", "Softmax", "LogSoftmax")
#: Layout ops the trial run gives a dry input as a zero-stride view.
_DRY_LAYOUT = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
#: Element-wise float arithmetic computed dry in the trial run where it reads a dry
#: input: zeros of the broadcast shape (a 64-row Linear's bias Add on zeros took 0.77 ms
#: of a 2.1 ms trial, faulting in the fresh pages of its zero input).
_DRY_ARITH = ("Add", "Sub", "Mul", "Div")


def _dry_zeros(shape, dtype):
    """A shim's output: zeros of ``shape`` as one zero seen through zero strides (writable,
    as an op's own outputs are). What reads it computes nothing from its values, and a
    fresh zero array cost its pages: ``np.zeros`` of a 64-row speech model's shims took
    0.65 ms of its 2.8 ms load. One ndarray constructor (1.5 us), not ``as_strided`` (its
    interface dict and checks: 20 us)."""
    shape = tuple(shape)
    return np.ndarray(shape, dtype, np.zeros(1, dtype), 0, (0,) * len(shape))


def _dry_broadcast(args):
    """The broadcast shape of two float arrays of one dtype (what ``np.add`` of them
    gives), or None: anything else (then the op computes, and raises as it does)."""
    if len(args) != 2:
        return None
    a, b = args
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.dtype in _FLOATS):
        return None
    try:
        return np.broadcast(a, b).shape  # (of the arrays themselves: 2.6 us, broadcast_shapes 5.7)
    except ValueError:
        return None


def _dry_shims(graph, data_graph):
    """``[(op, compute)]``: the trial run's stand-ins for the data steps whose cost is
    their output's values (a product on packed constant weights, an activation): each
    checks what the op's own compute checks and gives zeros of its output's shape.
    Only where no value they leave off can change a shape or an error downstream:
    every step that reads a dry output (or one computed from it) is one of
    :data:`_VALUE_BLIND` on such a slot, else the trial computes everything."""
    data_ops = {id(st.op) for st in data_graph.steps}
    shims, dry = [], set()
    if len(graph.ops) != len(graph.steps):
        return []  # an op of two steps: computed
    for st in graph.steps:
        op = st.op
        reads = [j for j, sl in enumerate(getattr(op, "slots", ())) if sl is not None and sl[0] == "key"]
        tainted = any(st.inputs[op.slots[j][1]] in dry for j in reads)
        if tainted:
            blind = _VALUE_BLIND.get(getattr(op, "op_type", ""), ())
            if getattr(op, "domain", "") or (
                blind is not None and any(st.inputs[op.slots[j][1]] in dry for j in reads if j not in blind)
            ):
                return []
        shim = None
        if id(op) in data_ops:
            shim = _dry_compute(op, [j for j in reads if st.inputs[op.slots[j][1]] in dry] if tainted else [])
        if shim is not None:
            shims.append((op, shim))
        # (a recurrent op's outputs are zeros in the trial run: RecurrentOp.dry; shapes are exact)
        if shim is not None or getattr(op, "recurrent", False) or (tainted and op.op_type not in ("Shape", "Size")):
            dry.update(st.outputs)
    return shims


def _dry_compute(op, dry_slots):
    """The trial run's compute of ``op`` (see :func:`_dry_shims`), or None;
    ``dry_slots``: the op's inputs that are dry outputs (or computed from them)."""
    real = op.compute
    if type(op) is FnOp and op.kernel in _DRY_LAYOUT and dry_slots == [0] and not op.domain:

        def layout(args, num_threads):  # on a zero-stride view: a reshape copies nothing
            x = args[0]
            if isinstance(x, np.ndarray):  # (writable, as the op's own outputs are)
                args = [_dry_zeros(x.shape, x.dtype)] + list(args[1:])
            return real(args, num_threads)

        return layout
    if type(op) is FnOp and op.kernel == "Conv" and not op.domain:

        def conv(args, num_threads):
            # one row of the batch and one window of the steps (the kernel's span) check
            # what all rows and steps do; the steps out follow the op's own padding rule
            x, w, a = args[0], args[1], op.attrs
            if not (isinstance(x, np.ndarray) and x.ndim == 3 and isinstance(w, np.ndarray) and w.ndim == 3):
                return real(args, num_threads)
            stride, dilation, T = a["strides"], a["dilations"], x.shape[2]
            if not (type(stride) is int and type(dilation) is int and stride >= 1 and dilation >= 1):
                return real(args, num_threads)
            span = (w.shape[2] - 1) * dilation + 1
            pads = _pads_1d(a, T, w.shape[2], stride, dilation)
            if T + pads[0] + pads[1] < span or (x.shape[0] == 1 and T <= span):
                return real(args, num_threads)
            y = real([x[:1, :, : min(T, span)]] + list(args[1:]), num_threads)[0]
            return [_dry_zeros((x.shape[0], y.shape[1], (T + pads[0] + pads[1] - span) // stride + 1), y.dtype)]

        return conv
    if isinstance(op, ProductOp) and op._packed is not None:
        gemm = op.op_type == "Gemm"
        K, N = op.slots[1][1].shape[1 if gemm and op.attrs["transB"] else 0], op._n

        def product(args, num_threads):
            x, w = args[0], args[1]
            if not isinstance(x, np.ndarray):
                return real(args, num_threads)
            if gemm:
                x = x.T if op.attrs["transA"] else x
                fits = x.ndim == 2 and (op._bias is not None or args[2] is None)
            else:
                fits = x.ndim >= 2
            if fits and x.dtype == w.dtype and x.shape[-1] == K:
                return [_dry_zeros(x.shape[:-1] + (N,), x.dtype)]
            return real(args, num_threads)

        return product
    if dry_slots and type(op) is FnOp and op.kernel in _DRY_ARITH and not op.domain:

        def arith(args, num_threads):  # two floats of one dtype: their broadcast shape
            shape = _dry_broadcast(args)
            return real(args, num_threads) if shape is None else [_dry_zeros(shape, args[0].dtype)]

        return arith
    if dry_slots and type(op) is ProductOp and op.op_type == "MatMul" and op._packed is None:

        def matmul(args, num_threads):  # the shape _products.matmul gives (else its own checks)
            a, b = args[0], args[1]
            if (
                isinstance(a, np.ndarray)
                and isinstance(b, np.ndarray)
                and a.dtype == b.dtype
                and a.dtype in _FLOATS
                and 2 <= a.ndim <= 4
                and 2 <= b.ndim <= 4
                and a.shape[-1] == b.shape[-2]
            ):
                batch = _dry_broadcast([a[..., 0, 0], b[..., 0, 0]])
                if batch is not None:
                    return [_dry_zeros(batch + (a.shape[-2], b.shape[-1]), a.dtype)]
            return real(args, num_threads)

        return matmul
    if type(op) is FnOp and op.kernel in _DRY_SAME_SHAPE and not op.domain:

        def same_shape(args, num_threads):
            x = args[0]
            if isinstance(x, np.ndarray) and x.dtype in _FLOATS and x.size:
                if op.kernel in ("Softmax", "LogSoftmax"):
                    _axis(op.attrs["axis"], x.ndim)  # raises as the op does
                return [_dry_zeros(x.shape, x.dtype)]
            return real(args, num_threads)

        return same_shape
    return None


def make_graphs(steps, inputs, outputs, shape_steps):
    """The full graph and the data-only graph of a model: ``shape_steps`` (indices into
    ``steps``) compute from input shapes only; the data graph takes the values they
    produce that the other steps (or the outputs) read as extra inputs.

    Returns ``(graph, data_graph, frontier)``."""
    shape_steps = set(shape_steps)
    made = {k for i in shape_steps for k in steps[i].outputs}
    data_steps = [s for i, s in enumerate(steps) if i not in shape_steps]
    read = {k for s in data_steps for k in s.inputs} | set(outputs)
    frontier = [
        k for k in dict.fromkeys(k for i in sorted(shape_steps) for k in steps[i].outputs) if k in read and k in made
    ]
    # the full graph also gives the shape results, so that they can be kept per input shape
    graph = Graph(steps, inputs, list(outputs) + frontier)
    data = Graph(data_steps, list(inputs) + frontier, list(outputs))
    return graph, data, frontier


def _fits(declared, shape):
    """Whether ``shape`` fits the ``declared`` one: its rank, and its size on each axis
    that the model fixes (an int; a name or None takes any size)."""
    return len(shape) == len(declared) and all(not isinstance(d, int) or d == n for d, n in zip(declared, shape))


def _callers(out, feeds, owners=None):
    """``out`` as arrays the caller owns: never the caller's own input, a view of it, or
    a cached value (copies of those). An output whose memory belongs to an array made
    in this call (its base chain ends in an array that owns its data and is no input)
    shares none with inputs that own theirs: no overlap test (0.5 us an output and
    input) where every input owns its data (``owners``, where the caller knows it;
    None: looked at here, once, where an output needs it)."""
    res = []
    for v in out:
        if type(v) is not np.ndarray:
            res.append(_contiguous(v))
            continue
        root, base, flags = v, v.base, v.flags
        while type(base) is np.ndarray:
            root, base = base, base.base
        shared = True
        if base is None:
            if owners is None:
                owners = True
                for f in feeds:
                    if not f.flags.owndata:
                        owners = False
                        break
            if owners and (flags if root is v else root.flags).owndata:
                shared = False
                for f in feeds:
                    if root is f:
                        shared = True
                        break
        if shared and any(np.may_share_memory(v, f) for f in feeds):
            res.append(np.array(v, copy=True))
            continue
        res.append(v if flags.c_contiguous and flags.writeable else np.array(v, order="C", copy=True))
    return res


def _contiguous(v):
    """A C-contiguous array the caller owns (0-d arrays stay 0-d, unlike np.ascontiguousarray)."""
    if type(v) is not np.ndarray:
        v = np.asarray(v)
    flags = v.flags
    return v if flags.c_contiguous and flags.writeable else np.array(v, order="C", copy=True)


def _frozen(a):
    if isinstance(a, np.ndarray) and a.flags.writeable and a.base is None:
        a.flags.writeable = False
    return a


def _shape_text(shape):
    return "(%s)" % ", ".join("?" if d is None else str(d) for d in shape)
