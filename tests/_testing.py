"""Helpers shared by the test modules (the one place for them; fixtures live in conftest.py).

- :data:`TOL`: the contract's tolerances per compute dtype (API.md, "Numerics"), one table;
- :func:`assert_close`, :func:`assert_same_nan`: comparisons at that tolerance, the second
  one with NaN / Inf placement and a tolerance grown from the magnitudes involved for
  inputs far from unit scale;
- :func:`seed_of`: a stable seed from a test's parameters (never ``hash()``, which
  changes with PYTHONHASHSEED);
- :func:`random_weights`: one direction of canonical weights;
- PyTorch modules: :func:`make_module`, :func:`torch_run`, :func:`assert_same`
  (importing them needs torch, which the test install has: a missing torch fails, it does
  not skip).

Test modules import them as ``from _testing import ...``: pytest puts the tests folder
on ``sys.path`` for the test modules there (its default ``prepend`` import mode).
"""

import zlib

import numpy as np

from rnnfast import cells
from rnnfast.layers import CellWeights

#: The contract's tolerances per compute dtype (docs/API.md, "Numerics") on inputs of unit scale.
TOL = {
    np.dtype(np.float32): {"atol": 1e-5, "rtol": 1e-4},
    np.dtype(np.float64): {"atol": 1e-9, "rtol": 1e-7},
}

#: Rounding steps granted per element on inputs far from unit scale: an element's error
#: may reach ``MAGNITUDE_ULPS * eps * magnitude`` where ``magnitude`` is the largest
#: finite value it depends on (a dot product of n terms errs by up to about n eps times
#: the sum of the terms' magnitudes, and the recurrence carries errors on). Below a
#: magnitude of about 5 this is under the contract's float32 ``atol``: unit-scale values
#: are judged by the contract alone.
MAGNITUDE_ULPS = 16


def tol(dtype):
    """The contract's ``{"atol": ..., "rtol": ...}`` for compute dtype ``dtype``."""
    return TOL[np.dtype(dtype)]


def assert_close(got, want, dtype, what=""):
    """Compare to the contract's tolerance for ``dtype``."""
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), err_msg=what, **tol(dtype))


def seed_of(*parts):
    """A seed that depends only on ``parts`` (their ``repr``): stable across runs and
    processes, unlike ``hash()``, which PYTHONHASHSEED salts for strings."""
    return zlib.crc32(repr(parts).encode())


def assert_same_nan(got, want, dtype=np.float32, what="", magnitude=None):
    """``got`` equals ``want`` as a framework's result on special values is judged.

    NaN, +Inf and -Inf exactly where ``want`` has them; the finite elements within the
    contract's tolerance for ``dtype`` or, where it is larger, ``MAGNITUDE_ULPS * eps *
    magnitude``, with ``magnitude`` (broadcast against ``want``) the largest finite value
    the element depends on (see :func:`row_magnitude`). On unit-scale rows that term is
    below ``atol`` and the contract holds as it is; a row that carried a 3e38 input is
    judged by the rounding such values make (a value of 1e34 computed from terms of 1e38
    that cancel is exact only to about 1e31).
    """
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, "%s: shape %s, want %s" % (what, got.shape, want.shape)
    for name, where in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        np.testing.assert_array_equal(where(got), where(want), err_msg="%s: %s placement" % (what, name))
    finite = np.isfinite(want)
    t = tol(dtype)
    bound = t["atol"] + t["rtol"] * np.abs(want.astype(np.float64))
    if magnitude is not None:
        eps = np.finfo(np.dtype(dtype)).eps
        bound = np.maximum(bound, MAGNITUDE_ULPS * eps * np.broadcast_to(np.asarray(magnitude, np.float64), want.shape))
    with np.errstate(invalid="ignore"):  # inf - inf where both are Inf: placement checked above
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bad = finite & ~(err <= bound)
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise AssertionError(
            "%s: %d of %d finite elements differ; first at %s: got %r, want %r, allowed %.3g"
            % (what, bad.sum(), finite.sum(), i, got[i], want[i], bound[i])
        )


def row_magnitude(x, *outs, time_axis, causal):
    """The largest finite magnitude each element of a recurrent result may depend on, for
    :func:`assert_same_nan`: per batch row, the largest finite ``|value|`` of the input
    ``x`` and of the sequences ``outs`` (same time axis, features last) over the steps up to
    each step when ``causal`` (a forward-only stack), else over the whole row.

    Returns an array with ``x``'s time and batch axes and a last axis of 1 (it broadcasts
    against a sequence output); reduce it over time (``.max(axis=time_axis,
    keepdims=True)``) for final states.
    """
    m = None
    for a in (x, *outs):
        a = np.asarray(a, np.float64)
        a = np.where(np.isfinite(a), np.abs(a), 0.0).max(axis=-1, keepdims=True)
        m = a if m is None else np.maximum(m, a)
    if causal:
        return np.maximum.accumulate(m, axis=time_axis)
    return np.broadcast_to(m.max(axis=time_axis, keepdims=True), m.shape)


def random_weights(rng, cell, I, H, P=0, bias=True, scale=1.0, readonly=False):
    """One direction of canonical weights, uniform in ±scale/sqrt(H) (lively, not saturated)."""
    G = cells.get(cell).num_gates
    Ho = P or H
    s = scale / np.sqrt(H)

    def u(*shape):
        a = rng.uniform(-s, s, shape)
        if readonly:
            a.flags.writeable = False
        return a

    return CellWeights(
        u(I, G * H),
        u(Ho, G * H),
        u(G * H) if bias else None,
        u(G * H) if bias else None,
        u(H, P) if P else None,
    )


# -- PyTorch modules -------------------------------------------------------------------


def _torch():
    import torch

    return torch


#: PyTorch modes (``RNNBase.mode``), one per module class and nonlinearity.
TORCH_MODES = ("GRU", "LSTM", "RNN_TANH", "RNN_RELU")


def torch_classes():
    """PyTorch mode -> module class."""
    nn = _torch().nn
    return {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}


def make_module(mode, input_size, hidden_size, *, seed=0, dtype=None, **kw):
    """A fresh ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` (mode as ``RNNBase.mode``) in eval
    mode, its weights drawn by torch's default initialisation from ``seed``."""
    torch = _torch()
    torch.manual_seed(seed)
    if mode != "LSTM" and kw.pop("proj_size", 0) != 0:
        raise ValueError("proj_size is an LSTM option")
    if mode.startswith("RNN"):
        kw["nonlinearity"] = "relu" if mode == "RNN_RELU" else "tanh"
    m = torch_classes()[mode](input_size, hidden_size, **kw).to(dtype or torch.float32)
    return m.eval()


def torch_run(m, x, hx=None, lengths=None):
    """The module's result, as numpy: (out, h_n) or (out, (h_n, c_n)); packed when
    ``lengths`` are given (padding positions of ``out`` are zeros)."""
    torch = _torch()
    x = torch.as_tensor(x)
    with torch.no_grad():
        if lengths is None:
            out, h = m(x, hx)
        else:
            from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

            T = x.shape[1] if m.batch_first else x.shape[0]
            packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=m.batch_first, enforce_sorted=False)
            out, h = m(packed, hx)
            out, _ = pad_packed_sequence(out, batch_first=m.batch_first, total_length=T)
    if isinstance(h, tuple):
        return out.numpy(), tuple(s.numpy() for s in h)
    return out.numpy(), h.numpy()


def assert_same(got, want, dtype):
    """Compare (out, h_n) or (out, (h_n, c_n)) structures at the contract's tolerance."""
    t = tol(dtype)
    out, h = got
    w_out, w_h = want
    assert isinstance(out, np.ndarray)
    assert out.dtype == dtype and out.shape == w_out.shape
    np.testing.assert_allclose(out, w_out, **t)
    if isinstance(w_h, tuple):
        assert isinstance(h, tuple) and len(h) == 2
        for a, b in zip(h, w_h):
            assert a.shape == b.shape and a.dtype == dtype
            np.testing.assert_allclose(a, b, **t)
    else:
        assert isinstance(h, np.ndarray) and h.shape == w_h.shape and h.dtype == dtype
        np.testing.assert_allclose(h, w_h, **t)


# -- Keras models ----------------------------------------------------------------------

#: The Keras test models' default input: time steps, features, and batch.
SEQ_T, SEQ_F, SEQ_B = 9, 5, 5


def lively(model, seed=0, scale=0.5):
    """Random weights uniform in ±min(scale, 1.5/sqrt(fan_in)): gates neither saturated
    nor trivial (Keras' own init gives near-zero biases)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.get_weights():
            fan_in = w.shape[0] if w.ndim == 2 else 1
            a = min(scale, 1.5 / np.sqrt(fan_in))
            new.append(rng.uniform(-a, a, w.shape).astype(w.dtype))
        layer.set_weights(new)
    return model


def masked_input(shape, seed=1, dtype=np.float32):
    """N(0, 1) input with masked (all-zero) steps: a gap mid-sequence, trailing padding,
    leading padding, a fully masked row, and a row whose last step only is masked."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    b, t = shape[:2]
    x[0, t // 3 : t // 3 + 2] = 0
    x[1, t - 3 :] = 0
    x[2, :2] = 0
    x[3] = 0
    x[4, t - 1] = 0
    x[4, 1] = 0
    return x


def masked_ids(shape, vocab, seed=2):
    """Token ids in [1, vocab) with 0 (masked) in the patterns of :func:`masked_input`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=shape)
    b, t = shape
    ids[0, t // 3 : t // 3 + 2] = 0
    ids[1, t - 3 :] = 0
    ids[2, :2] = 0
    ids[3] = 0
    return ids.astype(np.int32)


def assert_like_keras(got, want, dtype=np.float32, what=""):
    """Same nesting (Keras' tuples as lists), shapes, dtype, values within tolerance."""
    if isinstance(want, (list, tuple)):
        assert isinstance(got, list), "%s: expected a list of %d outputs, got %s" % (what, len(want), type(got))
        assert len(got) == len(want), "%s: %d outputs, Keras gives %d" % (what, len(got), len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            assert_like_keras(g, w, dtype, "%s[%d]" % (what, i))
        return
    want = np.asarray(want)
    assert isinstance(got, np.ndarray), "%s: expected an array, got %s" % (what, type(got))
    assert got.shape == want.shape, "%s: shape %s, Keras %s" % (what, got.shape, want.shape)
    assert got.dtype == want.dtype, "%s: dtype %s, Keras %s" % (what, got.dtype, want.dtype)
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), err_msg=what, **tol(dtype))


def seq(*layers, shape=(SEQ_T, SEQ_F), dtype="float32"):
    """``keras.Sequential`` of ``layers`` on an input of ``shape``."""
    import keras

    return keras.Sequential([keras.Input(shape, dtype=dtype)] + list(layers))


def functional(build, shape=(SEQ_T, SEQ_F), dtype="float32"):
    """A functional ``keras.Model``: ``build(input) -> outputs``."""
    import keras

    inp = keras.Input(shape, dtype=dtype)
    return keras.Model(inp, build(inp))


#: Where a Keras test model comes from: the two files Keras writes, and the live model.
KERAS_SOURCES = ("keras", "h5", "live")


def save_keras(model, folder, name):
    """Save ``model`` as ``name.keras`` and ``name.h5`` in ``folder``: {ext: path}."""
    paths = {}
    for ext in ("keras", "h5"):
        paths[ext] = str(folder / ("%s.%s" % (name, ext)))
        model.save(paths[ext])
    return paths


def keras_model_from(source, model, paths):
    """The rnnfast model of ``model`` from ``source`` (one of :data:`KERAS_SOURCES`)."""
    import rnnfast

    return rnnfast.from_keras(model) if source == "live" else rnnfast.load(paths[source])


def step_in_ragged_batches(model, xs, rng, *, max_chunk, start=None, p_live=None, on_step=None, **step_options):
    """Continuous batching: the sequences ``xs`` stepped together through ``model`` in
    ragged batches, a random chunk of 1 to ``max_chunk - 1`` steps per live stream per
    round; stream i joins at round ``start[i]`` (default 0) and, with ``p_live``, sits out
    a round with probability ``1 - p_live``. ``on_step(chunks, ys)`` sees each batched
    step. Returns each stream's outputs, concatenated, and the streams."""
    n = len(xs)
    start = start if start is not None else [0] * n
    pos, outs, streams, rnd = [0] * n, [[] for _ in range(n)], [None] * n, 0
    while any(p < len(x) for p, x in zip(pos, xs)):
        live = [
            i for i in range(n) if start[i] <= rnd and pos[i] < len(xs[i]) and (p_live is None or rng.random() < p_live)
        ]
        rnd += 1
        if not live:
            continue
        chunks = []
        for i in live:
            if streams[i] is None:
                streams[i] = model.stream()
            k = int(rng.integers(1, max_chunk))
            chunks.append(xs[i][pos[i] : pos[i] + k])
            pos[i] += len(chunks[-1])
        ys = model.step(chunks, [streams[i] for i in live], **step_options)
        if on_step is not None:
            on_step(chunks, ys)
        for i, y in zip(live, ys):
            outs[i].append(y)
    return [np.concatenate(o) for o in outs], streams


def count_layer_pickles(monkeypatch):
    """Count RNNLayer pickles in this process (``__getstate__`` calls, one per layer of a
    model pickled): a one-item list, reset it by assigning ``[0] = 0``."""
    from rnnfast.layers import RNNLayer

    pickled = [0]
    real = RNNLayer.__getstate__

    def counting(self):
        pickled[0] += 1
        return real(self)

    monkeypatch.setattr(RNNLayer, "__getstate__", counting)
    return pickled


def streamed_products(monkeypatch):
    """Watch ``_rowops.packed_rows`` for calls that read their weights past the caches
    (its ``stream`` argument): the list each call's flag is appended to."""
    from rnnfast import _rowops

    seen: list = []
    packed_rows = _rowops.packed_rows

    def spy(*args):
        seen.append(len(args) > 6 and bool(args[6]))
        return packed_rows(*args)

    monkeypatch.setattr(_rowops, "packed_rows", spy)
    return seen
