"""A plain float64 numpy model of every cell, written like the equations.

It takes canonical weights (rnnfast.layers.CellWeights, Keras gate order) and
loops over time (batch rows as matrix rows) with no tricks, so that it can be read
against the papers and the frameworks' documentation. Each cell's step is its entry's
``step`` in the cell registry (:mod:`rnnfast.cells`, e.g. :func:`rnnfast.cells.gru_step`);
this module runs them over time and directions, with the activations below. The tests
check the compiled kernels against it; the demo and the benchmarks compare speed with it.
"""

import numpy as np

from . import cells

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACT = {
    "linear": lambda x: x,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,  # Keras 3: relu6(x+3)/6
    "hard_sigmoid_keras2": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),  # Keras 2
    "relu": lambda x: np.maximum(x, 0.0),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softplus": lambda x: np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "exponential": np.exp,
}


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def run_direction(
    cell, w, x, h0, c0, mask, zero_output, reverse, act, ract, reset_after, clip=None, input_forget=False
):
    """One direction over time-major x (T, B, I). Returns out (T, B, Ho) aligned
    with input time, h_n (B, Ho), c_n (B, H) or None (cells without a cell state).

    ``cell`` is a name of :data:`rnnfast.cells.CELLS`; ``act``, ``ract`` names of
    :data:`ACT`. Mask semantics (Keras): a masked step keeps the row's state; its output
    is zero when zero_output, else the row's previous output (zero before its first
    valid step).
    """
    step = cells.get(cell).step
    x = _f64(x)
    T, B, _ = x.shape
    states = tuple(_f64(s).copy() for s in ((h0,) if c0 is None else (h0, c0)))
    act_fn, ract_fn = ACT[act], (ACT[ract] if ract is not None else None)
    out = np.zeros((T, B, states[0].shape[1]))
    prev_out = np.zeros_like(states[0])
    for t in range(T - 1, -1, -1) if reverse else range(T):
        new = step(x[t], states, w, act_fn, ract_fn, reset_after, clip, input_forget)
        valid = np.ones((B, 1), bool) if mask is None else np.asarray(mask[t], bool)[:, None]
        states = tuple(np.where(valid, n, s) for n, s in zip(new, states))
        h = states[0]
        out[t] = np.where(valid, h, 0.0 if zero_output else prev_out)
        prev_out = out[t] if not zero_output else np.where(valid, h, prev_out)
    return out, states[0], (states[1] if len(states) > 1 else None)


def run_layer(
    cell,
    weights,
    x,
    h0=None,
    c0=None,
    mask=None,
    lengths=None,
    zero_output=False,
    go_backwards=False,
    act="tanh",
    ract="sigmoid",
    reset_after=True,
    clip=None,
    input_forget=False,
):
    """All directions, outputs concatenated (forward first). Returns out, h_n, c_n
    (None for cells without a cell state). ``clip`` and ``input_forget`` are ONNX's
    (:func:`rnnfast.cells.lstm_step`); LSTM peepholes come with the weights
    (``CellWeights.peephole``)."""
    spec = cells.get(cell)
    x = _f64(x)
    T, B, _ = x.shape
    if lengths is not None:
        mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
        zero_output = True
    with_c = spec.num_states > 1
    outs, hs, cs = [], [], []
    for d, w in enumerate(weights):
        H = np.asarray(w.kernel).shape[1] // spec.num_gates
        Ho = np.asarray(w.recurrent_kernel).shape[0]
        hd = np.zeros((B, Ho)) if h0 is None else _f64(h0)[d]
        cd = None
        if with_c:
            cd = np.zeros((B, H)) if c0 is None else _f64(c0)[d]
        reverse = d == 1 or go_backwards
        o, h, c = run_direction(
            cell, w, x, hd, cd, mask, zero_output, reverse, act, ract, reset_after, clip, input_forget
        )
        outs.append(o)
        hs.append(h)
        cs.append(c)
    return (np.concatenate(outs, axis=-1), np.stack(hs), np.stack(cs) if with_c else None)
