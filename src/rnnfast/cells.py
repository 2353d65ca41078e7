"""The cell registry: every recurrent cell rnnfast runs, in one table (:data:`CELLS`).

A :class:`Cell` says what a cell is (its gates in canonical order, its states), how
the compiled core runs it (:class:`KernelCell`: the kernel's name and code for the
cell, and for GRU its reset-before variant), what the frameworks call it (Keras layer
and cell classes, the PyTorch module and its modes, PyTorch's gate order and the
reorder the converters apply), and its float64 reference step, written like the
equations. Everything else reads this table: :class:`rnnfast.layers.RNNLayer` (gates,
states, kernel code, bias handling), :mod:`rnnfast.reference` (the steps), the Keras
converter (class names), the PyTorch converter and file loader (module names, gate
order), the models (state counts, names) and the summaries.

Canonical weights (:class:`rnnfast.layers.CellWeights`) hold the gates in **Keras'
order**, the ``gates`` of each entry below; PyTorch's order differs only for GRU
(r, z, n).

Adding a cell: the walk
-----------------------
A new cell touches three source files (proved with ONNX's peephole LSTM, the kernel
cell ``lstm_peep``; ``src/rnnfast/c/README.md`` has the details):

1. ``src/rnnfast/c/cells.def.h``: one line of the C cell list, from which the kernel's
   cell enum, every ISA's kernel table, the dispatch and the Python codes
   (``_kernels.RNN_CELL_<CODE>``, read here by :func:`kernel_code`) are generated.
2. ``src/rnnfast/c/cellmath.template.h``: its fused element-wise step, written once
   for every type and instruction set, taking the one argument struct ``cell_args``.
3. ``src/rnnfast/cells.py`` (this file): its reference step (a function below, the
   equations in its docstring) and its entry: one ``Cell(...)`` in :data:`CELLS`
   (name, title, gates, states, ``KernelCell(kernel name)``, the step; framework
   names where a framework has the cell), or a ``KernelCell`` variant of an existing
   entry (GRU's ``reset_before``, LSTM's ``peephole``). ``RNNLayer``, the reference,
   the loaders, the models and the summaries pick it up from here.

A cell the frameworks have too is then loaded from their files with no further
change (``keras_layer`` / ``keras_cell``, and ``torch_module`` / ``torch_modes`` /
``torch_order``); a cell with weights beyond the canonical kernel, recurrent kernel,
biases and projection (the peephole vectors) also needs a field in ``CellWeights``
(layers.py), in the kernel's ``cell_args`` and ``rnn_weights``, and its place in the
converters.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from . import _kernels

__all__ = [
    "Cell",
    "KernelCell",
    "CELLS",
    "get",
    "kernel_code",
    "by_keras_layer",
    "by_keras_cell",
    "by_torch_module",
    "by_torch_mode",
    "TORCH_TENSORS",
    "gru_step",
    "lstm_step",
    "simple_step",
]

#: The tensor names of a PyTorch recurrent module's state_dict, per layer ``k`` and
#: direction (suffix ``_l{k}``, plus ``_reverse`` for the backward one); ``weight_hr``
#: only for an LSTM with ``proj_size``.
TORCH_TENSORS: tuple[str, ...] = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def kernel_code(kernel_name):
    """The compiled core's code of the kernel cell ``kernel_name`` ("gru", "gru_rb", ...)."""
    return int(getattr(_kernels, "RNN_CELL_" + kernel_name.upper()))


# -- the reference steps: float64, batch rows as matrix rows --------------------------------


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _biases(w, G, H):
    b = np.zeros(G * H) if w.bias is None else _f64(w.bias)
    rb = np.zeros(G * H) if w.recurrent_bias is None else _f64(w.recurrent_bias)
    return b, rb


def _clip(v, clip):
    """ONNX's cell clip: a gate's pre-activation bounded to [-clip, clip] (None: none)."""
    return v if clip is None else np.clip(v, -clip, clip)


def gru_step(x, states, w, act, ract, reset_after=True, clip=None, input_forget=False):
    """GRU, Keras gate order z, r, h; x (B, I), states (h,) with h (B, H). ::

        reset-after:  z = ract(x Wz + bz + h Uz + b'z);  r = ract(x Wr + br + h Ur + b'r)
                      hh = act(x Wh + bh + r ⊙ (h Uh + b'h))
        reset-before: hh = act(x Wh + bh + (r ⊙ h) Uh + b'h)
        h_new = z ⊙ h + (1 - z) ⊙ hh

    ``act`` and ``ract`` are functions (σ = sigmoid for ``ract`` by default). With
    ``clip`` (ONNX), every pre-activation is clipped to [-clip, clip] first. Returns
    ``(h_new,)``.
    """
    (h,) = states
    W, U = _f64(w.kernel), _f64(w.recurrent_kernel)
    H = U.shape[0]
    b, rb = _biases(w, 3, H)
    Wz, Wr, Wh = W[:, :H], W[:, H : 2 * H], W[:, 2 * H :]
    Uz, Ur, Uh = U[:, :H], U[:, H : 2 * H], U[:, 2 * H :]
    bz, br, bh = b[:H], b[H : 2 * H], b[2 * H :]
    rbz, rbr, rbh = rb[:H], rb[H : 2 * H], rb[2 * H :]
    z = ract(_clip(x @ Wz + bz + h @ Uz + rbz, clip))
    r = ract(_clip(x @ Wr + br + h @ Ur + rbr, clip))
    if reset_after:
        hh = act(_clip(x @ Wh + bh + r * (h @ Uh + rbh), clip))
    else:
        hh = act(_clip(x @ Wh + bh + (r * h) @ Uh + rbh, clip))
    return (z * h + (1.0 - z) * hh,)


def lstm_step(x, states, w, act, ract, reset_after=True, clip=None, input_forget=False):
    """LSTM, gate order i, f, c, o; x (B, I), states (h, c) with h (B, Ho), c (B, H). ::

        g = x W + h U + b                      (gates i, f, c, o)
        i = ract(g_i + p_i ⊙ c)                f = ract(g_f + p_f ⊙ c)
        u = act(g_c)                           c_new = f ⊙ c + i ⊙ u
        o = ract(g_o + p_o ⊙ c_new)            m = o ⊙ act(c_new)
        h_new = m (or m Wr with a projection)

    The peepholes ``p = w.peephole`` (rows i, f, o; ONNX) are zeros when None; with
    ``input_forget`` (ONNX) f = 1 - i; with ``clip`` (ONNX) every gate pre-activation
    is clipped to [-clip, clip] before its activation (not c_new before act). Returns
    ``(h_new, c_new)``.
    """
    h, c = states
    W, U = _f64(w.kernel), _f64(w.recurrent_kernel)
    H = W.shape[1] // 4
    b, rb = _biases(w, 4, H)
    p = np.zeros((3, H)) if getattr(w, "peephole", None) is None else _f64(w.peephole)
    g = x @ W + h @ U + (b + rb)
    i = ract(_clip(g[:, :H] + p[0] * c, clip))
    f = 1.0 - i if input_forget else ract(_clip(g[:, H : 2 * H] + p[1] * c, clip))
    u = act(_clip(g[:, 2 * H : 3 * H], clip))
    c_new = f * c + i * u
    o = ract(_clip(g[:, 3 * H :] + p[2] * c_new, clip))
    m = o * act(c_new)
    h_new = m if w.projection is None else m @ _f64(w.projection)
    return h_new, c_new


def simple_step(x, states, w, act, ract=None, reset_after=True, clip=None, input_forget=False):
    """SimpleRNN / nn.RNN: h_new = act(x W + h U + b) (the sum clipped to [-clip, clip]
    with ``clip``, ONNX). Returns ``(h_new,)``."""
    (h,) = states
    W, U = _f64(w.kernel), _f64(w.recurrent_kernel)
    b, rb = _biases(w, 1, W.shape[1])
    return (act(_clip(x @ W + h @ U + (b + rb), clip)),)


# -- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelCell:
    """How the compiled core runs a cell (or a variant of it).

    Attributes
    ----------
    name : str
        The kernel's name of the cell: its code in the C cell list ``c/cells.def.h`` in
        lower case ("gru", "gru_rb", "lstm", "lstm_peep", "simple").
    bias_apart : bool
        The last gate's recurrent bias stays apart from its input bias (GRU
        reset-after: ``r ⊙ (h Uh + b'h)``): the layer passes it to the kernel on its own
        and Keras stores the cell's biases as one ``(2, G*H)`` weight. Elsewhere the two
        biases are folded into one.
    """

    name: str
    bias_apart: bool = False

    @property
    def code(self):
        """The compiled core's code for this cell."""
        return kernel_code(self.name)

    @property
    def packed(self):
        """The per-step product runs on weights packed in unit blocks (else the cell's
        step makes its own products by BLAS): the cell list says (``c/cells.def.h``)."""
        return _kernels.cell_packed(self.code)


@dataclass(frozen=True)
class Cell:
    """One recurrent cell (see the module docstring).

    Attributes
    ----------
    name : str
        rnnfast's name (``RNNLayer(cell=...)``).
    title : str
        Its name in reprs and summaries ("GRU", "LSTM", "SimpleRNN").
    gates : tuple of str
        Gate names in canonical (Keras) order; ``len(gates)`` blocks of ``H`` columns.
    states : tuple of str
        The states a step carries, ``("h",)`` or ``("h", "c")``; ``h`` first.
    kernel : KernelCell
        How the core runs it.
    step : callable
        The float64 reference step ``step(x, states, w, act, ract, reset_after, clip,
        input_forget)`` -> new states (``act``, ``ract`` are functions).
    recurrent_activation : bool
        The cell's gates take a ``recurrent_activation`` (SimpleRNN has none).
    projection : bool
        The cell may have an output projection (PyTorch's LSTM ``proj_size``).
    reset_before : KernelCell or None
        GRU: the kernel of the reset-before variant (Keras ``reset_after=False``).
    peephole : KernelCell or None
        LSTM: the kernel of the ONNX variant (peepholes, ``input_forget``).
    keras_layer, keras_cell : str or None
        Keras' layer and cell class names.
    torch_module : str or None
        The ``torch.nn`` module class.
    torch_modes : dict of str -> str
        ``torch.nn.RNNBase.mode`` values of that module -> the activation they mean.
    torch_gates : tuple of str
        PyTorch's gate names in its own order.
    torch_order : tuple of int
        Canonical gate ``k`` is PyTorch's gate ``torch_order[k]``.
    """

    name: str
    title: str
    gates: tuple[str, ...]
    states: tuple[str, ...]
    kernel: KernelCell
    step: Callable
    recurrent_activation: bool = True
    projection: bool = False
    reset_before: Optional[KernelCell] = None
    peephole: Optional[KernelCell] = None
    keras_layer: Optional[str] = None
    keras_cell: Optional[str] = None
    torch_module: Optional[str] = None
    torch_modes: dict[str, str] = field(default_factory=dict)
    torch_gates: tuple[str, ...] = ()
    torch_order: tuple[int, ...] = ()

    @property
    def num_gates(self):
        return len(self.gates)

    @property
    def num_states(self):
        return len(self.states)

    def kernel_for(self, reset_after=True, peephole=False):
        """The :class:`KernelCell` that runs this cell (GRU: per ``reset_after``; LSTM:
        the peephole variant with ``peephole``, for peepholes or ``input_forget``)."""
        if not reset_after and self.reset_before is not None:
            return self.reset_before
        if peephole and self.peephole is not None:
            return self.peephole
        return self.kernel

    def from_torch(self, a, axis=0):
        """Reorder the gate blocks of ``a`` along ``axis`` from PyTorch's order to the
        canonical one."""
        return _reorder(a, self.torch_order, axis)

    def to_torch(self, a, axis=0):
        """Reorder the gate blocks of ``a`` along ``axis`` from canonical to PyTorch's order."""
        return _reorder(a, tuple(np.argsort(self.torch_order)), axis)


def _reorder(a, order, axis):
    if not order or tuple(order) == tuple(range(len(order))):
        return a
    parts = np.split(np.asarray(a), len(order), axis=axis)
    return np.concatenate([parts[k] for k in order], axis=axis)


#: The cells, by rnnfast name.
CELLS: dict[str, Cell] = {
    c.name: c
    for c in (
        Cell(
            "gru",
            "GRU",
            gates=("z", "r", "h"),
            states=("h",),
            kernel=KernelCell("gru", bias_apart=True),
            reset_before=KernelCell("gru_rb"),
            step=gru_step,
            keras_layer="GRU",
            keras_cell="GRUCell",
            torch_module="GRU",
            torch_modes={"GRU": "tanh"},
            torch_gates=("r", "z", "n"),
            torch_order=(1, 0, 2),
        ),
        Cell(
            "lstm",
            "LSTM",
            gates=("i", "f", "c", "o"),
            states=("h", "c"),
            kernel=KernelCell("lstm"),
            peephole=KernelCell("lstm_peep"),
            step=lstm_step,
            projection=True,
            keras_layer="LSTM",
            keras_cell="LSTMCell",
            torch_module="LSTM",
            torch_modes={"LSTM": "tanh"},
            torch_gates=("i", "f", "g", "o"),
            torch_order=(0, 1, 2, 3),
        ),
        Cell(
            "simple",
            "SimpleRNN",
            gates=("h",),
            states=("h",),
            kernel=KernelCell("simple"),
            step=simple_step,
            recurrent_activation=False,
            keras_layer="SimpleRNN",
            keras_cell="SimpleRNNCell",
            torch_module="RNN",
            torch_modes={"RNN_TANH": "tanh", "RNN_RELU": "relu"},
            torch_gates=("h",),
            torch_order=(0,),
        ),
    )
}


def get(name):
    """The :class:`Cell` called ``name``; ValueError naming the known ones otherwise."""
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError("cell must be one of %s, got %r" % (sorted(CELLS), name)) from None


def _index(attr):
    return {getattr(c, attr): c for c in CELLS.values() if getattr(c, attr)}


def by_keras_layer(cls):
    """The cell of a Keras recurrent layer class ("GRU" ...), or None."""
    return _index("keras_layer").get(cls)


def by_keras_cell(cls):
    """The cell of a Keras cell class ("GRUCell" ...), or None."""
    return _index("keras_cell").get(cls)


def by_torch_module(cls):
    """The cell of a ``torch.nn`` module class name ("GRU", "LSTM", "RNN"), or None."""
    return _index("torch_module").get(cls)


def by_torch_mode(mode):
    """``(cell, activation)`` of a ``torch.nn.RNNBase.mode`` ("GRU", "RNN_RELU" ...), or
    ``(None, None)``."""
    for c in CELLS.values():
        if mode in c.torch_modes:
            return c, c.torch_modes[mode]
    return None, None
