"""Canonical layers: weights in the one layout the kernels want, converted once.

Loaders (``rnnfast.io``) turn Keras or PyTorch weights into these objects; the
compiled core never learns where weights came from.

Canonical recurrent weights (one :class:`CellWeights` per direction), ``G`` gates of
``H`` units each, in **Keras' gate order** (GRU: z, r, h; LSTM: i, f, c, o;
SimpleRNN: one gate):

================  ==================  ===============================================
name              shape               meaning
================  ==================  ===============================================
kernel            (I, G*H)            input weights, ``x @ kernel``
recurrent_kernel  (Ho, G*H)           recurrent weights, ``h @ recurrent_kernel``;
                                      ``Ho = P`` with an LSTM projection, else ``H``
bias              (G*H,) or None      input-side bias
recurrent_bias    (G*H,) or None      hidden-side bias (GRU reset-after keeps its
                                      candidate part apart: ``r * (h U_h + b_hh)``)
projection        (H, P) or None      LSTM projection, ``h = (o * act(c)) @ projection``
peephole          (3, H) or None      LSTM peepholes (ONNX ``P``), rows i, f, o:
                                      ``i = ract(... + p_i * c_prev)``, ``f`` alike,
                                      ``o = ract(... + p_o * c_new)``
================  ==================  ===============================================

Cells (``cell=``): the names of the cell registry :data:`rnnfast.cells.CELLS`:
``"gru"`` (with ``reset_after`` True: PyTorch and Keras' default; False: Keras
``reset_after=False``, Cho et al. 2014), ``"lstm"``, ``"simple"``.
"""

import contextlib
import copy
import math
import mmap
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _kernels, _plan, _products, _quant, cells
from ._plan import BATCH_FIRST_MIN_ROWS
from ._special import softmax
from ._threads import blas_single_threaded, resolve_num_threads
from ._validation import as_input, as_lengths, as_mask, as_numeric, as_state, compute_dtype, integer_option
from ._validation import weight as _checked
from ._version import __version__
from .errors import FormatError

__all__ = ["ACTIVATIONS", "CellWeights", "RNNLayer", "Dense", "merge_directions", "apply_activation", "softmax"]

#: Activation names the recurrent kernels run, and their codes: the RNN_ACT_* enum of
#: the C core (c/enums.h), named by it (RNN_ACT_HARD_SIGMOID_KERAS2 ->
#: "hard_sigmoid_keras2"). ``hard_sigmoid`` is Keras 3's ``relu6(x + 3) / 6``;
#: ``hard_sigmoid_keras2`` is Keras 2 / tf.keras' ``clip(0.2 x + 0.5, 0, 1)``.
ACTIVATIONS = {
    m.name[len("RNN_ACT_") :].lower(): int(m)
    for m in sorted(_kernels.rnn_activation, key=int)
    if m != _kernels.RNN_ACT_COUNT
}

_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _activation_code(name, what):
    if name is None:
        name = "linear"
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError("unknown %s %r; known: %s" % (what, name, ", ".join(ACTIVATIONS))) from None


def apply_activation(name, x):
    """Apply a recurrent-kernel activation to a copy of ``x``, exactly as the kernels do.

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS`.
    x : array_like of float32 or float64

    Returns
    -------
    numpy.ndarray, same shape and dtype as ``x``
    """
    code = _activation_code(name, "activation")
    a = as_numeric(x, "x")
    a = np.array(a, dtype=a.dtype if a.dtype in (np.float32, np.float64) else np.float64, order="C", copy=True)
    _activate(code, a.reshape(-1))
    return a


#: Elements per call of the element-wise activation kernel, at most: its C count is an
#: ``int``, so larger arrays go in slices of this many (C's INT_MAX).
ACTIVATE_MAX_ELEMENTS = 2**31 - 1


def _activate(code, v):
    """Apply activation ``code`` to the contiguous 1-D ``v`` in place, in slices the C
    kernel's ``int`` count can hold."""
    step = ACTIVATE_MAX_ELEMENTS
    for i in range(0, v.shape[0], step):
        _kernels.activate(code, v[i : i + step])


@dataclass
class CellWeights:
    """Weights of one direction of a recurrent layer, in canonical layout (see module doc)."""

    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: Optional[np.ndarray] = None
    recurrent_bias: Optional[np.ndarray] = None
    projection: Optional[np.ndarray] = None
    peephole: Optional[np.ndarray] = None
    #: The gates' order in the columns of ``kernel``, ``recurrent_kernel`` and the
    #: biases when it is not the canonical one: ``gate_order[g]`` is the column block
    #: holding canonical gate ``g`` (ONNX LSTM i, o, f, c: ``(0, 2, 3, 1)``). The layer
    #: reorders while it copies the weights into its layout (no copy of a source's
    #: order first).
    gate_order: Optional[tuple] = None


class RNNLayer:
    """One recurrent layer (one or two directions), run by one compiled call.

    Parameters
    ----------
    cell : {"gru", "lstm", "simple"}
        A name of the cell registry (:data:`rnnfast.cells.CELLS`).
    weights : list of CellWeights
        One entry (unidirectional) or two (forward, backward).
    reset_after : bool
        GRU variant (ignored for other cells only when True, the default).
    activation, recurrent_activation : str
        Names from :data:`ACTIVATIONS`. ``recurrent_activation`` is for the gates
        (GRU, LSTM); SimpleRNN has none.
    go_backwards : bool
        Unidirectional only: run from the last step to the first. Outputs stay
        aligned with input time (Keras' reversed output order is the loader's
        business).
    dtype : float32 or float64
        The compute dtype; weights are converted to it once, here.
    clip : float, optional
        ONNX's cell clip: every gate pre-activation is clipped to ``[-clip, clip]``
        before its activation (None: no clipping).
    input_forget : bool
        LSTM only: couple the input and forget gates, ``f = 1 - i`` (ONNX).

    Peepholes (ONNX LSTM ``P``) come with the weights (``CellWeights.peephole``); an
    LSTM with peepholes or ``input_forget`` runs the kernel's peephole variant.
    precision : {"float32", "bf16", "int8"}
        The weights' precision in the products (``rnnfast._quant``): reduced
        precision keeps float32 gate math and state and needs ``dtype`` float32.
        "float32" (the default) means the compute dtype, exactly.

    Attributes
    ----------
    cell : str
        The cell's name; ``cell_spec`` its :class:`rnnfast.cells.Cell` entry.
    source_parameters : int
        The parameters as given (kernels, biases, projection; both directions): what
        the source framework counts.
    """

    def __init__(
        self,
        cell,
        weights,
        *,
        reset_after=True,
        activation="tanh",
        recurrent_activation="sigmoid",
        go_backwards=False,
        dtype=np.float32,
        clip=None,
        input_forget=False,
        precision="float32",
    ):
        spec = cells.get(cell)
        weights = list(weights)
        if len(weights) not in (1, 2):
            raise ValueError("weights must hold 1 or 2 directions, got %d" % len(weights))
        if go_backwards and len(weights) == 2:
            raise ValueError("go_backwards is for a unidirectional layer")
        self.cell = cell
        self.cell_spec = spec
        self.reset_after = bool(reset_after)
        self.activation = activation
        self.recurrent_activation = recurrent_activation if spec.recurrent_activation else None
        self.go_backwards = bool(go_backwards)
        self.dtype = compute_dtype(dtype)
        self._act = _activation_code(activation, "activation")
        self._ract = _activation_code(self.recurrent_activation, "recurrent_activation")
        if clip is not None:
            clip = float(clip)
            if not clip > 0 or not np.isfinite(clip):
                raise ValueError("clip must be a positive finite number or None, got %r" % clip)
        self.clip = clip
        self.input_forget = bool(input_forget)
        peephole = any(getattr(w, "peephole", None) is not None for w in weights)
        if (peephole or self.input_forget) and spec.peephole is None:
            raise ValueError("peepholes and input_forget are for an LSTM, not %s" % spec.title)
        self._kernel = spec.kernel_for(self.reset_after, peephole or self.input_forget)
        self._kernel_cell = self._kernel.name
        self.precision = self._checked_precision(precision)
        self._convert(weights)

    def _checked_precision(self, precision):
        p = _quant.check_precision(precision)
        if p != "float32" and self.dtype != np.float32:
            raise ValueError("precision %r needs a float32 layer; this one computes in %s" % (p, self.dtype.name))
        return p

    def with_precision(self, precision):
        """This layer with its products in ``precision`` ("float32", "bf16" or
        "int8"): a new layer sharing only the read-only canonical weights."""
        p = self._checked_precision(precision)
        new = copy.copy(self)
        new.precision = p
        new._pack()
        return new

    # -- weights ---------------------------------------------------------------------

    def _convert(self, weights):
        """Check the weights and copy each once, straight into the kernels' layout:
        directions stacked, columns in unit-block order, the compute dtype. No other
        copy of a weight is made while loading (a 64 MB file's weights take 64 MB
        here, plus the packed copy :meth:`_pack` makes).

        Where the kernels read a weight only packed (W with ``packed_projection``, U of
        a cell whose product runs on packed weights) and it comes in the compute dtype,
        it is packed straight from the source's layout (``_kernels.pack_columns``: an
        ONNX file's transposed, gate-reordered bytes) and the canonical copy is not made:
        ``_W`` / ``_U`` then unpack it on use (:meth:`_canonical`), bitwise the same."""
        dt = self.dtype
        G = self.cell_spec.num_gates
        D = len(weights)
        k0 = np.asarray(weights[0].kernel)
        if k0.ndim != 2 or k0.shape[1] % G or k0.shape[1] == 0 or k0.shape[0] == 0:
            raise ValueError("kernel must be (input_size, %d*units), got %s" % (G, k0.shape))
        I, GH = k0.shape
        H = GH // G
        proj = weights[0].projection
        if proj is not None and not self.cell_spec.projection:
            raise ValueError(
                "a projection exists only for %s" % " and ".join(c.title for c in cells.CELLS.values() if c.projection)
            )
        P = np.asarray(proj).shape[1] if proj is not None else 0
        Ho = P if proj is not None else H
        self._ncb = _plan.unit_blocks(H, self._kernel.packed and proj is None)
        runs = _column_runs(H, G, self._ncb)
        # packed straight from the source, no canonical copy (see above)
        direct = self.precision == "float32"
        direct_w = direct and _kernels.packed_projection(dt) and all(_in_dtype(w.kernel, dt) for w in weights)
        direct_u = (
            direct and self._kernel.packed and proj is None and all(_in_dtype(w.recurrent_kernel, dt) for w in weights)
        )
        ncb = self._ncb
        Wp = _kernels._zeros_lines((D, _kernels.packed_blocks_size(I, GH, G, ncb)), dt) if direct_w else None
        Up = _kernels._zeros_lines((D, _kernels.packed_blocks_size(Ho, GH, G, ncb)), dt) if direct_u else None
        W = None if direct_w else np.empty((D, I, GH), dt)
        U = None if direct_u else np.empty((D, Ho, GH), dt)
        bx = np.zeros((D, GH), dt)
        bhn = np.zeros((D, H), dt)
        Wr = np.empty((D, H, P) if proj is not None else (D, 0, 0), dt)
        peeps = np.zeros((D, 3, H), dt) if self._kernel.name == "lstm_peep" else None  # zeros where not given
        given = []
        for d, w in enumerate(weights):
            peep = getattr(w, "peephole", None)
            order = getattr(w, "gate_order", None)
            wruns = runs if order is None else _column_runs(H, G, self._ncb, order)
            given += [
                sum(
                    np.size(a)
                    for a in (w.kernel, w.recurrent_kernel, w.bias, w.recurrent_bias, w.projection, peep)
                    if a is not None
                )
            ]
            where = "direction %d" % d
            k = _checked(w.kernel, (I, GH), "kernel", where)
            r = _checked(w.recurrent_kernel, (Ho, GH), "recurrent_kernel", where)
            cols = _run_columns(wruns) if direct_w or direct_u else None
            for src, canonical, packed in ((k, W, Wp), (r, U, Up)):
                if packed is not None:
                    _kernels.pack_columns(src[None], cols, G, ncb, packed[d : d + 1])
                elif canonical is not None:
                    _copy_columns(canonical[d], src, wruns)
            b = _checked(w.bias, (GH,), "bias", where, np.float64, optional=True)
            rb = _checked(w.recurrent_bias, (GH,), "recurrent_bias", where, np.float64, optional=True)
            if order is not None:  # (the biases are small: into the canonical order here)
                gates = _gate_columns(H, order)
                b = None if b is None else b[gates]
                rb = None if rb is None else rb[gates]
            if (w.projection is None) != (proj is None):
                raise ValueError("%s: projection given for one direction only" % where)
            b = np.zeros(GH) if b is None else b
            if rb is not None:
                if self._kernel.bias_apart:
                    k = (G - 1) * H
                    b[:k] += rb[:k]  # GRU z, r: both biases add before the gate
                    bhn[d] = rb[k:]  # h: r * (h U_h + b_hh)
                else:
                    b += rb  # everywhere else the two biases just add
            _copy_columns(bx[d], b, runs)
            if proj is not None:
                Wr[d] = _checked(w.projection, (H, P), "projection", where)
            if peeps is not None and peep is not None:
                peeps[d] = _checked(peep, (3, H), "peephole", where)
        self.source_parameters = int(sum(given))
        self._direction_parameters = [int(n) for n in given]
        self.input_size, self.units, self.proj_size = I, H, P
        self.output_size = Ho
        self.num_directions = D
        for name, a in (("_W", W), ("_U", U), ("_Wp", Wp), ("_Up", Up)):
            if a is not None:
                self.__dict__[name] = _frozen(a)
        self._bx, self._bhn, self._Wr = (_frozen(a) for a in (bx, bhn, Wr))
        self._peep = _frozen(peeps) if peeps is not None else None
        self._pack()

    @property
    def _W(self):
        """The canonical input weights (ndir, I, G*H) (module doc; columns in unit-block
        order): kept, or unpacked from the packed ones on each use (:meth:`_convert`)."""
        return self._canonical("_W", "_Wp", self.input_size)

    @_W.setter
    def _W(self, value):
        self.__dict__["_W"] = value

    @property
    def _U(self):
        """The canonical recurrent weights (ndir, Ho, G*H), as :attr:`_W`."""
        return self._canonical("_U", "_Up", self.output_size)

    @_U.setter
    def _U(self, value):
        self.__dict__["_U"] = value

    def _canonical(self, name, packed, K):
        a = self.__dict__.get(name)
        if a is None:  # kept only packed: a read-only copy, unpacked
            a = _frozen(_kernels.unpack_blocks(self.__dict__[packed], K, self._gh, self.cell_spec.num_gates, self._ncb))
        return a

    @property
    def _gh(self):
        """G*H: the gate columns of each weight matrix."""
        return self.cell_spec.num_gates * self.units

    def direction(self, d, *, go_backwards=False):
        """Direction ``d`` as a one-direction layer that shares this layer's arrays
        (views of the canonical and packed weights: nothing is copied or packed again).
        A Keras ``Bidirectional`` runs its two directions fused, and each alone when
        given initial states."""
        one = RNNLayer.__new__(RNNLayer)
        one.__dict__.update(self.__dict__)
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray):
                one.__dict__[k] = _frozen(v[d : d + 1])
        one.num_directions = 1
        one.go_backwards = bool(go_backwards)
        one.__dict__.pop("_entry", None)  # bound to this layer's arrays: made again
        one.__dict__.pop("_plans", None)
        one.source_parameters = self._direction_parameters[d]
        return one

    def cell_weights(self):
        """The layer's weights back in canonical layout, one :class:`CellWeights` per
        direction, in the compute dtype.

        They compute exactly what the layer computes, with the biases as the layer
        holds them: folded into ``bias`` where the two biases add, so that
        ``recurrent_bias`` is None, or, for GRU reset-after, zeros but for its
        candidate part ``b_hh``. For the reference model (:mod:`rnnfast.reference`)
        and for rebuilding a framework's module from a loaded one.

        Returns
        -------
        list of CellWeights
            ``kernel`` (I, G*H), ``recurrent_kernel`` (Ho, G*H), ``bias`` (G*H,),
            ``recurrent_bias`` (G*H,) or None, ``projection`` (H, P) or None,
            ``peephole`` (3, H) or None.
        """
        H, GH = self.units, self._gh
        W, U = self._W, self._U
        inv = np.argsort(_unit_block_order(H, GH // H, self._ncb))  # undo _convert's order
        out = []
        for d in range(self.num_directions):
            rb = None
            if self._kernel.bias_apart:
                rb = np.zeros(GH, self.dtype)
                rb[GH - H :] = self._bhn[d]
            out.append(
                CellWeights(
                    W[d][:, inv].copy(),
                    U[d][:, inv].copy(),
                    self._bx[d][inv].copy(),
                    rb,
                    self._Wr[d].copy() if self.proj_size else None,
                    self._peep[d].copy() if self._peep is not None else None,
                )
            )
        return out

    def __repr__(self):
        kind = self.cell_spec.title
        extra = ""
        if self.cell_spec.reset_before is not None:
            extra += ", reset_after=%s" % self.reset_after
        if self.proj_size:
            extra += ", proj_size=%d" % self.proj_size
        if self._peep is not None:
            extra += ", peephole=True"
        if self.input_forget:
            extra += ", input_forget=True"
        if self.clip is not None:
            extra += ", clip=%g" % self.clip
        if self.go_backwards:
            extra += ", go_backwards=True"
        if self.precision != "float32":
            extra += ", precision=%r" % self.precision
        return "RNNLayer(%s, input_size=%d, units=%d, directions=%d%s, dtype=%s)" % (
            kind,
            self.input_size,
            self.units,
            self.num_directions,
            extra,
            self.dtype.name,
        )

    # -- pickling (models that travel to workers: rnnfast.dask, rnnfast.ray) ---------

    #: Attributes a pickle leaves out and the arriving process rebuilds: the packed
    #: copies of the weights (made for the CPU that runs the layer, which need not be
    #: the one that pickled it) and what is decided with them.
    _PICKLE_DERIVED = ("_Wp", "_Up", "_uses_blas", "_q", "_entry", "_plans")
    #: Bumped when the pickled state changes meaning; an older pickle is refused.
    _PICKLE_FORMAT = 1
    #: What a pickle made before these options existed means (format 1 still).
    clip = None
    input_forget = False
    _peep = None

    def __getstate__(self):
        """The canonical weights and options, once; no packed copies (see
        :meth:`__setstate__`); canonical weights the layer keeps only packed are
        unpacked here."""
        state = {k: v for k, v in self.__dict__.items() if k not in self._PICKLE_DERIVED}
        state["_W"], state["_U"] = self._W, self._U
        state["_pickle_format"] = self._PICKLE_FORMAT
        return state

    def __setstate__(self, state):
        """Restore the canonical weights (read-only, as loaded) and pack them again for
        this CPU: the layer computes bitwise what the pickled one computed."""
        state = dict(state)
        fmt = state.pop("_pickle_format", None)
        if fmt != self._PICKLE_FORMAT:
            raise FormatError(
                "this RNNLayer was pickled by another rnnfast version (pickle format "
                "%r, this one reads %r): pickle it again with rnnfast %s" % (fmt, self._PICKLE_FORMAT, __version__)
            )
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                state[k] = _frozen(_usable(v))
        state.setdefault("precision", "float32")  # pickled before reduced precision existed
        self.__dict__.update(state)
        self._pack()

    def _pack(self):
        """The packed copies of ``_W`` and ``_U``, made once per layer (and again when a
        pickled layer arrives): the input projection reads W packed where that beats
        BLAS (``packed_projection``), and always in a reduced precision; the per-step
        product of the cells that run it on packed weights reads U packed in panels."""
        G = self.cell_spec.num_gates
        D = self.num_directions
        plain = self._kernel.packed and self._Wr.shape[1] == 0
        # the bound entry and the plans are made again on first use (_bind_entry)
        self.__dict__.pop("_entry", None)
        self.__dict__.pop("_plans", None)
        packed_w = _kernels.packed_projection(self.dtype)
        kept = self.__dict__
        if self.precision != "float32":  # the products on the reduced-precision weights
            for name in ("_W", "_U"):  # made from the canonical weights: kept from here on
                kept[name] = getattr(self, name)
            reduced_input = _quant.reduced_input(self.precision, self.input_size, given=self._qW is not None)
            self._q = _quant.pack_layer(
                self.precision,
                self._W if reduced_input else None,
                self._U,
                self._Wr if self._Wr.shape[1] else None,
                G=G,
                H=self.units,
                ncb=self._ncb,
                reset_before=self._kernel.code == _kernels.RNN_CELL_GRU_RB,
                given=self._int8_given() if self.precision == "int8" else None,
            )
            # a float32 input projection runs on the packed W on every ISA, never BLAS (whose
            # sums depend on the ISA and on the rows of the call): the whole call, a stream
            # and any batch give the same bits, as the state's rounding to bf16 can turn a
            # last-bit difference into a bf16 step (about 1e-4)
            float_w = not reduced_input
            self._Wp = _frozen(_kernels.pack_blocks(self._W, G, self._ncb) if float_w else np.zeros((D, 0), self.dtype))
            self._Up = _frozen(np.zeros((D, 0), self.dtype))
            self._uses_blas = False
            return
        self._q = None
        none = np.zeros((D, 0), self.dtype)
        if "_W" in kept:  # (else packed from the source: _convert)
            self._Wp = _frozen(_kernels.pack_blocks(self._W, G, self._ncb) if packed_w else none)
        if "_U" in kept:
            self._Up = _frozen(_kernels.pack_blocks(self._U, G, self._ncb) if plain else none.copy())
        self._uses_blas = self._Wp.size == 0 or not plain
        # each weight kept once: one the kernels read packed is kept only packed (its
        # canonical form unpacked on use: _W, _U)
        if self._Wp.size:
            kept.pop("_W", None)
        if self._Up.size:
            kept.pop("_U", None)

    def _recurrent_bytes(self):
        """Bytes of the recurrent weights the per-step products read (all directions, in
        the precision they run in): the plan keeps the team where they overflow a core's
        L2 (rnnfast._plan.keeps_team)."""
        if self._q is not None and self._q.U is not None:
            return self._q.matrix_bytes(self._q.U)
        return self._Up.nbytes if self._Up.size else self._U.nbytes

    #: Int8 weights given with the layer (:meth:`_with_int8_weights`): ``W`` and ``U``
    #: quantized (ndir, K, G*H) and their per-column scales (ndir, G*H) in the layer's
    #: column layout, run as they are in "int8"; None: "int8" quantizes ``_W`` and ``_U``.
    _qW = _qWs = _qU = _qUs = None

    def _int8_given(self):
        return None if self._qW is None else ((self._qW, self._qWs), (self._qU, self._qUs))

    def _with_int8_weights(self, kernels, recurrent_kernels):
        """This layer in "int8" on int8 weights it is given instead of its own
        quantization of the float ones (weights that arrive quantized: ONNX Runtime's
        ``DynamicQuantizeLSTM``, ``rnnfast.io.onnx.quantized``). Per direction ``(q,
        scale)``: ``q`` (I, G*H) for the kernel, (H, G*H) for the recurrent kernel, in
        canonical column order, integers in [-127, 127]; ``scale`` (G*H,) float32, one
        per column (``W ~ q * scale``). An LSTM projection is quantized as usual. The
        float weights stay as they are (the "float32" and "bf16" precisions run them).
        ValueError when they do not fit."""
        D, GH = self.num_directions, self._gh
        runs = _column_runs(self.units, GH // self.units, self._ncb)

        def take(pairs, K, what):
            if len(pairs) != D:
                raise ValueError("%s: %d directions given, the layer has %d" % (what, len(pairs), D))
            q = np.empty((D, K, GH), np.int8)
            sc = np.empty((D, GH), np.float32)
            for d, (qd, sd) in enumerate(pairs):
                qd, sd = np.asarray(qd), np.asarray(sd)
                if qd.shape != (K, GH) or sd.shape != (GH,):
                    raise ValueError(
                        "%s: shapes %s and %s, expected %s and %s" % (what, qd.shape, sd.shape, (K, GH), (GH,))
                    )
                if qd.dtype.kind not in "iu" or (qd.size and (qd.min() < -127 or qd.max() > 127)):
                    raise ValueError("%s: integers in [-127, 127] (symmetric int8) expected" % what)
                if sd.dtype != np.float32 or not np.all(np.isfinite(sd)) or np.any(sd < 0):
                    raise ValueError("%s: scales must be finite non-negative float32" % what)
                _copy_columns(q[d], qd, runs)
                _copy_columns(sc[d], sd, runs)
            return _frozen(q), _frozen(sc)

        new = copy.copy(self)
        new._qW, new._qWs = take(kernels, self.input_size, "kernel")
        new._qU, new._qUs = take(recurrent_kernels, self.output_size, "recurrent kernel")
        new.precision = "int8"
        new._pack()
        return new

    def _direction_matches(self, other, d):
        """Whether this one-direction layer is direction ``d`` of ``other`` bitwise (the
        same options and canonical arrays): a Keras ``Bidirectional`` keeps both, and a
        pickle then carries the weights once (:func:`_layer_from_direction`)."""
        if self.num_directions != 1 or other.num_directions != 2:
            return False
        mine = self.__getstate__()
        theirs = other.__getstate__()
        for k, v in mine.items():
            w = theirs.get(k)
            if isinstance(v, np.ndarray):
                if not (
                    isinstance(w, np.ndarray)
                    and w.dtype == v.dtype
                    and w.shape[1:] == v.shape[1:]
                    and v.shape[0] == 1
                    and w[d].tobytes() == v[0].tobytes()
                ):
                    return False
            elif (
                k
                in (
                    "cell",
                    "reset_after",
                    "activation",
                    "recurrent_activation",
                    "dtype",
                    "_ncb",
                    "_kernel_cell",
                    "_act",
                    "_ract",
                    "precision",
                    "units",
                    "input_size",
                    "proj_size",
                    "output_size",
                    "clip",
                    "input_forget",
                )
                and v != w
            ):
                return False
        return True

    # -- running ---------------------------------------------------------------------

    def forward(
        self,
        x,
        h0=None,
        c0=None,
        *,
        mask=None,
        lengths=None,
        zero_output_for_mask=False,
        return_sequences=True,
        num_threads=None,
        chunk_steps=None,
        batch_first=False,
    ):
        """Run the layer over a whole sequence.

        Parameters
        ----------
        x : array_like, shape (T, B, I), or (B, T, I) with ``batch_first``
            The input; cast to the layer's dtype.
        h0 : array_like, shape (D, B, Ho), optional
            Initial hidden state per direction (zeros if omitted).
        c0 : array_like, shape (D, B, H), optional
            Initial LSTM cell state (zeros if omitted).
        mask : array_like of bool, shape (T, B), optional
            False marks a masked step: the row's state is carried over (Keras).
        lengths : array_like of int, shape (B,), optional
            Valid steps per row (PyTorch packed semantics): steps past the length
            are masked and output zeros; the backward direction starts at each
            row's last valid step. Exclusive with ``mask``.
        zero_output_for_mask : bool
            Masked steps output zeros (else the row's last output, zeros before it
            has one, as Keras does).
        return_sequences : bool
            Produce the output sequence (else only the final states).
        num_threads : int, optional
            Threads for this call (default: :func:`rnnfast.get_num_threads`), with the
            meaning :func:`rnnfast.set_num_threads` gives it (0: the default, negative:
            counted from it, at most 4 per CPU of the machine).
        chunk_steps : int, optional
            Steps per input-projection chunk (default: bounded by
            :data:`rnnfast._plan.CHUNK_ELEMENTS` and ``CHUNK_ELEMENTS_CACHED``). A
            tuning and testing knob; results do not depend on it.
        batch_first : bool
            ``x`` and the output sequence are batch-major. The kernel reads and writes
            that layout itself, with no transposed copies; the results are the
            time-major ones (bitwise where the projection runs on packed weights).

        Returns
        -------
        out : ndarray (T, B, D*Ho) or (B, T, D*Ho), or None
            Outputs, directions concatenated (forward first), aligned with input time.
        h_n : ndarray (D, B, Ho)
            Final hidden state per direction.
        c_n : ndarray (D, B, H) or None
            Final LSTM cell state per direction.
        """
        dt = self.dtype
        if mask is None and lengths is None and chunk_steps is None and not batch_first and self._entry_takes(x):
            entry = self._entry if "_entry" in self.__dict__ else self._bind_entry()
            if entry is not None:
                return self._forward_bound(entry, x, h0, c0, return_sequences, num_threads)
        x = as_input(x, dt)
        if x.ndim != 3:
            raise ValueError(
                "expected input of shape (%s, %d), got shape %s"
                % ("batch, time" if batch_first else "time, batch", self.input_size, x.shape)
            )
        if batch_first and 1 < x.shape[0] < BATCH_FIRST_MIN_ROWS:
            # a batch this small is cheaper to transpose than to project a few rows at a time
            out, h, c = self.forward(
                np.swapaxes(x, 0, 1),
                h0,
                c0,
                mask=mask,
                lengths=lengths,
                zero_output_for_mask=zero_output_for_mask,
                return_sequences=return_sequences,
                num_threads=num_threads,
                chunk_steps=chunk_steps,
            )
            return (np.ascontiguousarray(np.swapaxes(out, 0, 1)) if out is not None else None), h, c
        B, T, I = x.shape if batch_first else (x.shape[1], x.shape[0], x.shape[2])
        if I != self.input_size:
            raise ValueError("expected input features %d, got %d (input shape %s)" % (self.input_size, I, x.shape))
        D, Ho, H = self.num_directions, self.output_size, self.units
        h = as_state(h0, (D, B, Ho), dt, "h0")
        with_c = self.cell_spec.num_states > 1
        c = as_state(c0, (D, B, H), dt, "c0") if with_c else np.zeros((0, 0, 0), dt)
        if c0 is not None and not with_c:
            raise ValueError("c0 is only for a cell with a cell state (LSTM)")
        if chunk_steps is not None:  # as the kernel takes it: at least 1, at most T
            chunk_steps = min(max(1, integer_option(chunk_steps, "chunk_steps")), max(1, T))
        if mask is not None and lengths is not None:
            raise ValueError("give mask or lengths, not both")
        if lengths is not None:
            mask = lengths_to_mask(lengths, T, B)
            zero_output_for_mask = True
        elif mask is not None:
            mask = as_mask(mask, T, B)
        order, active = None, None
        if mask is not None and _plan.SKIP_PADDING and self._kernel.packed and not self.proj_size:
            order, active = _padding_order(mask)
        # rows sorted by length, longest first: the states and the mask here; x and out
        # too unless the kernel reads and writes them in place (float input weights: packed,
        # or BLAS's, whose projection the kernel makes in the caller's order, as without
        # the skip: its sums depend on where a row lies in the call)
        in_place = order is not None and (self._Wp.size > 0 or self._q is None)
        if order is not None:
            if not in_place:
                x = np.take(x, order, axis=0 if batch_first else 1)
            h = np.take(h, order, axis=1)
            c = np.take(c, order, axis=1) if with_c else c
            mask = np.ascontiguousarray(mask[:, order])
        m = mask if mask is not None else np.zeros((0, 0), np.uint8)
        out = None
        if return_sequences:
            out = _kernels._zeros_lines((B, T, D * Ho) if batch_first else (T, B, D * Ho), dt)
        o2 = out.reshape(T * B, D * Ho) if out is not None else np.zeros((0, 0), dt)
        if chunk_steps is None:  # kept per shape; the default count not read for a team of one
            plan = self._plan_for(B, T, num_threads, ragged=order is not None)
        else:
            plan = self._plan(B, T, resolve_num_threads(num_threads), order is not None, chunk_steps)
        # BLAS is held to one thread only when this layer calls it (_threads)
        with blas_single_threaded() if self._uses_blas else contextlib.nullcontext():
            _kernels.rnn_forward(
                self._kernel.code,
                self._act,
                self._ract,
                x.reshape(T * B, I),
                T,
                B,
                *self._kernel_weights(),
                m,
                o2,
                h,
                c,
                batch_first=bool(batch_first),
                zero_output=bool(zero_output_for_mask),
                reverse_first=self.go_backwards,
                plan=plan,
                peep=self._peep,
                clip=0.0 if self.clip is None else self.clip,
                input_forget=self.input_forget,
                active=active,
                rows=order.astype(np.int64) if in_place and order is not None else None,
                q=self._q,
            )
        if order is not None:  # back to the caller's order
            inv = np.argsort(order)
            if out is not None and not in_place:
                out = np.take(out, inv, axis=0 if batch_first else 1)
            h = np.take(h, inv, axis=1)
            c = np.take(c, inv, axis=1) if with_c else c
        return out, h, (c if with_c else None)

    __call__ = forward

    def _kernel_weights(self):
        """The weights as the kernel entries take them: W, packed W, bx, U, packed U, bhn,
        Wr; a canonical W or U the layer keeps only packed is given as an array of its
        shape that holds no weights (the kernels read the packed one)."""
        kept = self.__dict__
        W, U = kept.get("_W"), kept.get("_U")
        D, GH = self.num_directions, self._gh
        if W is None:
            W = _shape_only((D, self.input_size, GH), self.dtype)
        if U is None:
            U = _shape_only((D, self.output_size, GH), self.dtype)
        return W, self._Wp, self._bx, U, self._Up, self._bhn, self._Wr

    def _bind_entry(self):
        """The compiled entry with this layer's weights bound once (``_kernels.StepEntry``,
        checked there once), for :meth:`forward`'s common call: one direction forward in
        time, time-major input of the compute dtype, no mask; float32, bf16 or int8
        weights. None where the layer is not such a one (it runs the general path)."""
        entry = None
        if self.num_directions == 1 and not self.go_backwards:
            entry = _kernels.StepEntry(
                self._kernel.code,
                self._act,
                self._ract,
                *self._kernel_weights(),
                self._plan(1, 1, 1),
                peep=self._peep,
                clip=0.0 if self.clip is None else self.clip,
                input_forget=self.input_forget,
                q=self._q,
            )
        self._entry = entry
        return entry

    def _plan_for(self, B, T, num_threads, ragged=False):
        """``_plan.plan`` of a call of T steps over B rows on ``num_threads`` threads (as
        :meth:`forward` takes it), rows sorted by length if ``ragged``: a function of these
        and the layer's shapes only, so kept per layer (a few dozen shapes at most: a free
        sequence length brings a new T per call). A call whose work gives no second thread its share (the plan's team
        is one however many threads it may use, and it shares no partner thread:
        ``_plan.uses_partner``) does not resolve the default count."""
        return self._planned(B, T, num_threads, ragged)[0]

    def _planned(self, B, T, num_threads, ragged=False):
        """``(plan, cut)``: :meth:`_plan_for`'s plan and its fields as
        ``StepEntry.run`` takes them (:meth:`_forward_bound`), both kept."""
        plans: dict | None = self.__dict__.get("_plans")  # {(B, T, ragged): [plan or None, {count: plan}]}
        if plans is None:
            plans = self._plans = {}
        got = plans.get((B, T, ragged))
        if got is None:
            if len(plans) >= 64:
                plans.clear()
            one = self._plan(B, T, 1 << 20, ragged)
            got = plans[(B, T, ragged)] = [_with_cut(one) if one.num_threads == 1 and not one.partner else None, {}]
        if got[0] is not None and num_threads is None:
            return got[0]
        n = resolve_num_threads(num_threads)
        if got[0] is not None:
            return got[0]
        p = got[1].get(n)
        if p is None:
            p = got[1][n] = _with_cut(self._plan(B, T, n, ragged))
        return p

    def _plan(self, B, T, num_threads, ragged=False, chunk=None):
        """``_plan.plan`` of this layer's call (``chunk``: steps per projection chunk,
        None: the plan's)."""
        return _plan.plan(
            B=B,
            D=self.num_directions,
            Ho=self.output_size,
            GH=self._gh,
            ncb=self._ncb,
            num_threads=num_threads,
            chunk=chunk,
            T=T,
            recurrent_bytes=self._recurrent_bytes(),
            may_split_rows=not ragged and not self._uses_blas,
            precision=self.precision,
        )

    def _entry_takes(self, x):
        """Whether ``x`` is an input :meth:`_forward_bound` takes as it is (time-major, the
        layer's dtype, C-contiguous, not empty): :meth:`forward`'s common call (with no
        mask, lengths, chunks or batch_first), and the ONNX executor's later calls."""
        return (
            type(x) is np.ndarray
            and x.dtype == self.dtype
            and x.ndim == 3
            and x.flags.c_contiguous
            and x.shape[0] > 0
            and x.shape[1] > 0
            and x.shape[2] == self.input_size
        )

    def _forward_bound(self, entry, x, h0, c0, return_sequences, num_threads):
        """:meth:`forward` of the common call (see :meth:`_bind_entry`) through the bound
        entry: the same kernel call with the same plan as the general path (so the same
        bits), without its per-call conversions. The output is left unset for the kernel
        to write whole (no mask: every step of every row)."""
        T, B = x.shape[0], x.shape[1]
        dt, Ho = self.dtype, self.output_size
        h = np.zeros((1, B, Ho), dt) if h0 is None else _state(h0, (1, B, Ho), dt, "h0")
        if self.cell_spec.num_states > 1:
            H = self.units
            c = np.zeros((1, B, H), dt) if c0 is None else _state(c0, (1, B, H), dt, "c0")
        elif c0 is not None:
            raise ValueError("c0 is only for a cell with a cell state (LSTM)")
        else:
            c = None
        out = _kernels._empty_lines((T, B, Ho), dt) if return_sequences else None
        s, n, b, k, t, keep, partner = self._planned(B, T, num_threads)[1]
        if self._uses_blas:
            with blas_single_threaded():
                entry.run(x, T, B, None, out, h, c, s, n, b, k, t, keep, partner)
        else:
            entry.run(x, T, B, None, out, h, c, s, n, b, k, t, keep, partner)
        return out, h, c


def _with_cut(p):
    """``(p, its fields as StepEntry.run takes them)``, for :meth:`RNNLayer._planned`
    and the streams' kernels (:meth:`rnnfast.stream._Kernel.tail`)."""
    return p, (p.strategy, p.unit_blocks, p.batch_rows, p.chunk, p.num_threads, p.keep_team, p.partner)


def _state(s, shape, dt, name):
    """:func:`as_state` with the common case first: an array already of ``dt`` and
    ``shape`` is copied (the kernel writes the final state into its copy)."""
    if type(s) is np.ndarray and s.dtype == dt and s.shape == shape:
        return s.copy()
    return as_state(s, shape, dt, name)


def _padding_order(mask):
    """Right padding, made free: for a (T, B) mask in which every row's valid steps come
    first (PyTorch lengths, Keras post-padding), ``(order, active)``: the rows sorted by
    length, longest first (None when they already are), and ``active[t]``, the number of
    rows valid at step t (int64, (T,)), with which the kernel drops ended rows out of
    each step's work. ``(None, None)`` when the mask is not right padding, or pads
    nothing."""
    T, B = mask.shape
    if T == 0 or B == 0:
        return None, None
    m = mask.view(bool)
    lens = np.count_nonzero(m, axis=0)
    if lens.min() == T:
        return None, None
    if np.count_nonzero(m[1:] > m[:-1]):
        return None, None  # a step valid after one that is not (gaps inside a row): every row steps
    order = np.argsort(-lens, kind="stable")
    # active[t]: the rows longer than t (from the count of each length, not a (T, B) test)
    active = (B - np.cumsum(np.bincount(lens, minlength=T)[:T])).astype(np.int64, copy=False)
    if np.array_equal(order, np.arange(B)):
        return None, active
    return order, active


def lengths_to_mask(lengths, T, B):
    """(B,) valid lengths -> (T, B) uint8 mask of the first ``length`` steps per row.

    ``lengths``: integers in [0, T] (or integral floats), else ValueError."""
    lengths = as_lengths(lengths, T, B)
    return np.ascontiguousarray(np.arange(T)[:, None] < lengths[None, :]).view(np.uint8)


def merge_directions(out, mode, units):
    """Merge a bidirectional output ``(..., 2*units)`` as Keras' ``merge_mode`` says.

    ``"concat"`` returns ``out`` itself (the kernel already wrote it in place);
    ``"sum"``, ``"mul"``, ``"ave"`` reduce the halves; ``None`` returns
    ``[forward, backward]``.
    """
    if mode not in _MERGE_MODES:
        raise ValueError("merge_mode must be one of %s, got %r" % (_MERGE_MODES, mode))
    if mode == "concat":
        return out
    f, b = out[..., :units], out[..., units:]
    if mode == "sum":
        return f + b
    if mode == "mul":
        return f * b
    if mode == "ave":
        return (f + b) / out.dtype.type(2)
    return [np.ascontiguousarray(f), np.ascontiguousarray(b)]


#: Dense's activations as the product applies them (:func:`rnnfast._products.dense`).
_DENSE_ACT = dict(ACTIVATIONS, linear=-1, softmax=_products.ROW_SOFTMAX)


class Dense:
    """A dense layer ``act(x @ kernel + bias)`` on the last axis.

    Parameters
    ----------
    kernel : array (I, N)
    bias : array (N,) or None
    activation : str or None
        A key of :data:`ACTIVATIONS`, or ``"softmax"``.
    """

    #: One-row calls read the kernel past the caches (a model sets it:
    #: rnnfast._plan.streamed_weights; the same bits).
    stream = False

    def __init__(self, kernel, bias=None, activation="linear", dtype=np.float32):
        self.dtype = compute_dtype(dtype)
        self.kernel = _frozen(np.array(kernel, dtype=self.dtype, order="C"))
        if self.kernel.ndim != 2:
            raise ValueError("Dense kernel must be 2-D, got shape %s" % (self.kernel.shape,))
        N = self.kernel.shape[1]
        self.bias = None if bias is None else _frozen(_checked(bias, (N,), "bias", "Dense", self.dtype))
        if activation != "softmax":
            _activation_code(activation, "activation")
        self.activation = activation or "linear"
        self._packed: Optional[np.ndarray] = None  # the kernel packed (rnnfast._products), on first use

    def __getstate__(self):
        """Pickled without the packed kernel (packed again on first use)."""
        state = dict(self.__dict__)
        state.pop("_packed", None)
        return state

    def __setstate__(self, state):
        """Unpickled: the weights read-only again, as loaded."""
        state = dict(state)
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                state[k] = _frozen(_usable(v))
        self.__dict__.update(state)

    def packed_kernel(self):
        """The kernel in the core's packed form (``rnnfast._products.pack``), made on
        first use and kept (not pickled): read by :meth:`forward` and the stream path."""
        packed = getattr(self, "_packed", None)
        if packed is None:
            packed = self._packed = _products.pack(self.kernel)
        return packed

    def forward(self, x, *, num_threads=None):
        """``x``: (..., I) -> (..., N), on the core's product (rnnfast._products:
        ``num_threads`` as in :meth:`RNNLayer.forward`; the results do not depend on it),
        the activation applied to each row by the product itself (a softmax: the row
        softmax ONNX models' ``Softmax`` runs, ``rnnfast._products.ROW_SOFTMAX``)."""
        if type(x) is not np.ndarray or x.dtype != self.dtype:
            x = np.asarray(as_numeric(x, "input"), dtype=self.dtype)
        kernel = self.kernel
        if x.ndim == 0 or x.shape[-1] != kernel.shape[0]:
            raise ValueError("Dense expects %d input features, got shape %s" % (kernel.shape[0], x.shape))
        return _products.dense(
            x,
            self.packed_kernel(),
            kernel.shape[1],
            self.bias,
            _DENSE_ACT[self.activation],
            num_threads,
            self.stream,
        )

    __call__ = forward


class SharedDirection:
    """Stands in a pickle for a one-direction :class:`RNNLayer` that is direction ``d``
    of the two-direction ``layer`` (see :meth:`RNNLayer._direction_matches`): the
    weights travel once, with ``layer``, and arrive as views of its arrays."""

    def __init__(self, layer, d, one):
        self.layer, self.d, self.one = layer, d, one

    def __reduce__(self):
        state = self.one.__getstate__()
        meta = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
        names = [k for k, v in state.items() if isinstance(v, np.ndarray)]
        return _layer_from_direction, (self.layer, self.d, meta, names)


def _layer_from_direction(layer, d, meta, names):
    """Direction ``d`` of the arrived ``layer`` (:meth:`RNNLayer.direction`: views of its
    arrays, the packed ones included) with the one-direction layer's options (``meta``;
    ``names``: its arrays, which are ``layer``'s)."""
    if meta.get("_pickle_format") != RNNLayer._PICKLE_FORMAT:
        RNNLayer.__new__(RNNLayer).__setstate__(dict(meta))  # refused as RNNLayer refuses it
    one = layer.direction(d)
    one.__dict__.update((k, v) for k, v in meta.items() if k != "_pickle_format")
    one.precision = getattr(layer, "precision", "float32")  # a direction runs as its layer
    return one


def _usable(a):
    """``a`` as the kernels read it: C-contiguous and aligned, copied only if not (an
    unpickled array may be a view of a received buffer)."""
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


# -- helpers --------------------------------------------------------------------------


def _unit_block_order(H, G, ncb):
    """Column order of the unit-block layout: gate-major columns [g0 | g1 | ...] become
    [g0[b0] g1[b0] ... | g0[b1] g1[b1] ... | ...] for ``ncb`` blocks of units (the
    identity for one block)."""
    return np.concatenate([np.arange(frm, frm + n) for _, frm, n in _column_runs(H, G, ncb)])


def _column_runs(H, G, ncb, order=None):
    """:func:`_unit_block_order` as runs ``(to, from, n)``: destination column ``to``
    onwards takes the ``n`` source columns from ``from``; ``order``: the source's column
    block of each canonical gate (:attr:`CellWeights.gate_order`; None: the same)."""
    runs, to = [], 0
    for cb in range(ncb):
        lo, hi = cb * H // ncb, (cb + 1) * H // ncb
        for g in range(G):
            runs.append((to, (g if order is None else order[g]) * H + lo, hi - lo))
            to += hi - lo
    return runs


def _run_columns(runs):
    """The source column of each destination column of ``runs`` (:func:`_column_runs`),
    as ``_kernels.pack_columns`` takes them."""
    return np.concatenate([np.arange(frm, frm + n, dtype=np.int64) for _, frm, n in runs])


def _in_dtype(a, dt):
    """Whether weight ``a`` is an array of the compute dtype (packed straight from it)."""
    return isinstance(a, np.ndarray) and a.dtype == dt


#: dtype -> a flat read-only array of zeros on pages never touched (:func:`_shape_only`).
_UNTOUCHED: dict = {}


def _shape_only(shape, dt):
    """A read-only C-contiguous array of ``shape`` and ``dt`` that takes no memory: a
    view of an anonymous read-only map whose pages are never touched (read, they are
    zeros). It stands for a weight matrix the kernels do not read
    (:meth:`RNNLayer._kernel_weights`): they take its shape."""
    dt = np.dtype(dt)
    n = math.prod(shape)
    flat = _UNTOUCHED.get(dt)
    if flat is None or flat.size < n:
        flat = np.frombuffer(mmap.mmap(-1, max(n, 1) * dt.itemsize, access=mmap.ACCESS_READ), dt)
        _UNTOUCHED[dt] = flat
    return flat[:n].reshape(shape)


def _gate_columns(H, order):
    """The source columns of the canonical gate-major columns (gate blocks in ``order``)."""
    return np.concatenate([np.arange(g * H, (g + 1) * H) for g in order])


def _copy_columns(out, a, runs):
    """``out[..., to:to+n] = a[..., from:from+n]`` for each run, cast on assignment
    (numpy casts in small buffers: no whole-array temporary)."""
    for to, frm, n in runs:
        out[..., to : to + n] = a[..., frm : frm + n]


def _frozen(a):
    a.flags.writeable = False
    return a
