"""A plain float64 numpy model of every cell, written like the equations.

It takes canonical weights (rnnfast.layers.CellWeights, Keras gate order) and
loops over time (batch rows as matrix rows) with no tricks, so that it can be read
against the papers and the frameworks' documentation. The tests check the compiled
kernels against it; the demo and the benchmarks compare speed with it.
"""
import numpy as np

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACT = {
    "linear": lambda x: x,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,       # Keras 3: relu6(x+3)/6
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


def gru_step(x, h, w, act, ract, reset_after):
    """GRU, Keras gate order z, r, h; x (B, I), h (B, H) -> h_new (B, H).

    reset-after:  z = σ(x Wz + bz + h Uz + b'z);  r = σ(x Wr + br + h Ur + b'r)
                  hh = act(x Wh + bh + r ⊙ (h Uh + b'h))
    reset-before: hh = act(x Wh + bh + (r ⊙ h) Uh + b'h)
    h_new = z ⊙ h + (1 - z) ⊙ hh
    """
    W, U = _f64(w.kernel), _f64(w.recurrent_kernel)
    H = U.shape[0]
    b = np.zeros(3 * H) if w.bias is None else _f64(w.bias)
    rb = np.zeros(3 * H) if w.recurrent_bias is None else _f64(w.recurrent_bias)
    Wz, Wr, Wh = W[:, :H], W[:, H:2 * H], W[:, 2 * H:]
    Uz, Ur, Uh = U[:, :H], U[:, H:2 * H], U[:, 2 * H:]
    bz, br, bh = b[:H], b[H:2 * H], b[2 * H:]
    rbz, rbr, rbh = rb[:H], rb[H:2 * H], rb[2 * H:]
    z = ACT[ract](x @ Wz + bz + h @ Uz + rbz)
    r = ACT[ract](x @ Wr + br + h @ Ur + rbr)
    if reset_after:
        hh = ACT[act](x @ Wh + bh + r * (h @ Uh + rbh))
    else:
        hh = ACT[act](x @ Wh + bh + (r * h) @ Uh + rbh)
    return z * h + (1.0 - z) * hh


def lstm_step(x, h, c, w, act, ract):
    """LSTM, gate order i, f, c, o; x (B, I), h (B, Ho), c (B, H).

    i = σ(x Wi + h Ui + b_i), f = σ(...), o = σ(...), u = act(x Wc + h Uc + b_c)
    c_new = f ⊙ c + i ⊙ u;  m = o ⊙ act(c_new);  h_new = m (or m Wr with a projection)
    """
    W, U = _f64(w.kernel), _f64(w.recurrent_kernel)
    H = W.shape[1] // 4
    b = np.zeros(4 * H) if w.bias is None else _f64(w.bias)
    if w.recurrent_bias is not None:
        b = b + _f64(w.recurrent_bias)
    g = x @ W + h @ U + b
    i = ACT[ract](g[:, :H])
    f = ACT[ract](g[:, H:2 * H])
    u = ACT[act](g[:, 2 * H:3 * H])
    o = ACT[ract](g[:, 3 * H:])
    c_new = f * c + i * u
    m = o * ACT[act](c_new)
    h_new = m if w.projection is None else m @ _f64(w.projection)
    return h_new, c_new


def simple_step(x, h, w, act):
    """SimpleRNN / nn.RNN: h_new = act(x W + h U + b)."""
    W, U = _f64(w.kernel), _f64(w.recurrent_kernel)
    H = W.shape[1]
    b = np.zeros(H) if w.bias is None else _f64(w.bias)
    if w.recurrent_bias is not None:
        b = b + _f64(w.recurrent_bias)
    return ACT[act](x @ W + h @ U + b)


def run_direction(cell, w, x, h0, c0, mask, zero_output, reverse, act, ract, reset_after):
    """One direction over time-major x (T, B, I). Returns out (T, B, Ho) aligned
    with input time, h_n (B, Ho), c_n (B, H) or None.

    Mask semantics (Keras): a masked step keeps the row's state; its output is zero
    when zero_output, else the row's previous output (zero before its first valid step).
    """
    x = _f64(x)
    T, B, _ = x.shape
    h = _f64(h0).copy()
    c = None if c0 is None else _f64(c0).copy()
    out = np.zeros((T, B, h.shape[1]))
    prev_out = np.zeros_like(h)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if cell == "gru":
            h_new = gru_step(x[t], h, w, act, ract, reset_after)
        elif cell == "lstm":
            h_new, c_new = lstm_step(x[t], h, c, w, act, ract)
        else:
            h_new = simple_step(x[t], h, w, act)
        valid = np.ones((B, 1), bool) if mask is None else np.asarray(mask[t], bool)[:, None]
        h = np.where(valid, h_new, h)
        if cell == "lstm":
            c = np.where(valid, c_new, c)
        out[t] = np.where(valid, h, 0.0 if zero_output else prev_out)
        prev_out = out[t] if not zero_output else np.where(valid, h, prev_out)
    return out, h, c


def run_layer(cell, weights, x, h0=None, c0=None, mask=None, lengths=None, zero_output=False,
              go_backwards=False, act="tanh", ract="sigmoid", reset_after=True):
    """All directions, outputs concatenated (forward first). Returns out, h_n, c_n."""
    x = _f64(x)
    T, B, _ = x.shape
    if lengths is not None:
        mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
        zero_output = True
    outs, hs, cs = [], [], []
    for d, w in enumerate(weights):
        H = np.asarray(w.kernel).shape[1] // {"gru": 3, "lstm": 4, "simple": 1}[cell]
        Ho = np.asarray(w.recurrent_kernel).shape[0]
        hd = np.zeros((B, Ho)) if h0 is None else _f64(h0)[d]
        cd = None
        if cell == "lstm":
            cd = np.zeros((B, H)) if c0 is None else _f64(c0)[d]
        reverse = d == 1 or go_backwards
        o, h, c = run_direction(cell, w, x, hd, cd, mask, zero_output, reverse, act, ract, reset_after)
        outs.append(o)
        hs.append(h)
        cs.append(c)
    return (np.concatenate(outs, axis=-1), np.stack(hs),
            np.stack(cs) if cell == "lstm" else None)
