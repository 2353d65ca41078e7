"""A subset of the engine test grid, small enough to run under valgrind memcheck.

Every cell variant (GRU reset-after and reset-before, LSTM with and without a
projection, SimpleRNN tanh and relu) x dtype x direction, each at batch sizes that
take each kernel path (1: one work item; 5: a few rows; 70: several batch blocks),
with hidden sizes below and above the unit-block threshold (13, 130: the item
strategy and the blocked strategy), sequence lengths 1 and 6, masks / lengths / none,
1 and 2 threads and a chunked input projection, cycled so that every value of each
factor meets every variant. Each result is compared with the float64 reference, so a
kernel that misbehaves quietly under memcheck fails here too.

Run by run_memcheck.sh; also runs on its own: ``python tests/memcheck/grid.py``.
"""
import itertools
import sys

import numpy as np

from rnnfast import cells
from rnnfast import reference as ref
from rnnfast.layers import CellWeights, RNNLayer, apply_activation, ACTIVATIONS

VARIANTS = {
    "gru": ("gru", True, 0, "tanh", "sigmoid"),
    "gru_reset_before": ("gru", False, 0, "tanh", "sigmoid"),
    "lstm": ("lstm", True, 0, "tanh", "sigmoid"),
    "lstm_proj": ("lstm", True, 3, "tanh", "hard_sigmoid"),
    "simple_tanh": ("simple", True, 0, "tanh", None),
    "simple_relu": ("simple", True, 0, "relu", None),
}
TOL = {np.float32: dict(atol=2e-5, rtol=2e-4), np.float64: dict(atol=1e-9, rtol=1e-7)}


def weights(rng, cell, I, H, P):
    G, Ho = cells.get(cell).num_gates, P or H
    s = 1.0 / np.sqrt(H)
    u = lambda *shape: rng.uniform(-s, s, shape)        # noqa: E731
    return CellWeights(u(I, G * H), u(Ho, G * H), u(G * H), u(G * H), u(H, P) if P else None)


def run_case(rng, variant, dtype, direction, B, T, H, how, threads, chunk):
    cell, reset_after, P, act, ract = VARIANTS[variant]
    I = 4
    ndir = 2 if direction == "bidirectional" else 1
    ws = [weights(rng, cell, I, H, P) for _ in range(ndir)]
    layer = RNNLayer(cell, ws, reset_after=reset_after, activation=act, recurrent_activation=ract or "sigmoid",
                     go_backwards=direction == "go_backwards", dtype=dtype)
    x = rng.standard_normal((T, B, I))
    kw = {}
    if how == "mask":
        kw["mask"] = rng.random((T, B)) > 0.3
    elif how == "lengths":
        kw["lengths"] = rng.integers(0, T + 1, B)
    h0 = rng.standard_normal((ndir, B, P or H)) * 0.5
    c0 = rng.standard_normal((ndir, B, H)) * 0.5 if cell == "lstm" else None
    got = layer.forward(x, h0, c0, num_threads=threads, chunk_steps=chunk, **kw)
    want = ref.run_layer(cell, ws, x, h0=h0, c0=c0, go_backwards=direction == "go_backwards", act=act, ract=ract,
                         reset_after=reset_after, **kw)
    for g, w in zip(got, want):
        if w is not None:
            np.testing.assert_allclose(g, w, err_msg="%s %s %s B=%d T=%d H=%d %s threads=%d chunk=%s" % (
                variant, np.dtype(dtype).name, direction, B, T, H, how, threads, chunk), **TOL[dtype])


def out_of_bounds(what):
    """Call the kernel directly (bypassing RNNLayer's shape checks) with an input
    (``what="read"``: read inside BLAS, for memcheck) or an output (``"write"``: written
    by the kernel's own loops, for AddressSanitizer) two rows shorter than T*B says
    (``--selftest``: proves that the checks can fail)."""
    from rnnfast import _kernels

    rng = np.random.default_rng(1)
    layer = RNNLayer("gru", [weights(rng, "gru", 4, 13, 0)], dtype=np.float64)
    T, B = 3, 2
    x = rng.standard_normal((T * B - (2 if what == "read" else 0), 4))
    out = np.zeros((T * B - (2 if what == "write" else 0), 13))
    h = np.zeros((1, B, 13))
    from rnnfast import _plan

    plan = _plan.plan(B=B, D=1, Ho=13, GH=3 * 13, ncb=layer._ncb, num_threads=1, chunk=T)
    _kernels.rnn_forward(_kernels.RNN_CELL_GRU, _kernels.RNN_ACT_TANH, _kernels.RNN_ACT_SIGMOID, x,
                         T, B, layer._W, layer._Wp, layer._bx, layer._U, layer._Up, layer._bhn,
                         layer._Wr, np.zeros((0, 0), np.uint8), out, h, np.zeros((0, 0, 0)),
                         batch_first=False, zero_output=False, reverse_first=False, plan=plan)


def main():
    for what in ("read", "write"):
        if "--selftest-" + what in sys.argv:
            out_of_bounds(what)
            print("selftest: ran an out-of-bounds %s" % what)
            return 0
    rng = np.random.default_rng(0)
    cycle = itertools.cycle(itertools.product((13, 130), (6, 1), ("none", "mask", "lengths"), (2, 1), (None, 2)))
    n = 0
    for variant, dtype, direction in itertools.product(VARIANTS, (np.float32, np.float64),
                                                       ("forward", "go_backwards", "bidirectional")):
        for B in (1, 5, 70):
            H, T, how, threads, chunk = next(cycle)
            run_case(rng, variant, dtype, direction, B, T, H, how, threads, chunk)
            n += 1
    for name in ACTIVATIONS:                                 # the element-wise kernels on their own
        for dtype in (np.float32, np.float64):
            a = np.linspace(-30, 30, 37).astype(dtype)
            apply_activation(name, a)
            apply_activation(name, a[:1])
    print("memcheck grid: %d layer runs against the reference" % n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
