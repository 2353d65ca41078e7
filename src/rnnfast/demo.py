"""`rnnfast demo`: the seed's two Keras-shaped models on random weights.

1. ``GRU(128, return_sequences) -> GRU(64) -> Dense(1, sigmoid)``
2. ``Bidirectional(GRU(128, return_sequences), concat) -> Bidirectional(GRU(64,
   return_sequences)) -> Dense(1, sigmoid)``

Input shape (10, 50). Prints how closely rnnfast agrees with the float64 numpy
reference (rnnfast.reference) and the throughput of both.
"""
import time

import numpy as np

from . import reference
from ._threads import get_num_threads
from .layers import CellWeights, Dense, RNNLayer, merge_directions
from .model import Sequential

T, FEATURES = 10, 50


def _glorot(rng, fan_in, fan_out):
    s = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-s, s, (fan_in, fan_out))


def _gru_weights(rng, I, H):
    """Keras-initialised GRU weights (glorot kernels, small random biases)."""
    return CellWeights(_glorot(rng, I, 3 * H), _glorot(rng, H, 3 * H),
                       rng.uniform(-0.1, 0.1, 3 * H), rng.uniform(-0.1, 0.1, 3 * H))


def seed_models(seed=0):
    """Build both seed models. Returns ``[(name, Sequential, reference_fn), ...]``."""
    rng = np.random.default_rng(seed)
    w1, w2 = _gru_weights(rng, FEATURES, 128), _gru_weights(rng, 128, 64)
    d1 = (_glorot(rng, 64, 1), rng.uniform(-0.1, 0.1, 1))
    m1 = Sequential([RNNLayer("gru", [w1]), (RNNLayer("gru", [w2]), dict(return_sequences=False)),
                     Dense(*d1, activation="sigmoid")])

    def ref1(x):
        s = reference.run_layer("gru", [w1], x.transpose(1, 0, 2))[0]
        h = reference.run_layer("gru", [w2], s)[1][0]
        return reference.ACT["sigmoid"](h @ d1[0] + d1[1])

    b1 = [_gru_weights(rng, FEATURES, 128) for _ in range(2)]
    b2 = [_gru_weights(rng, 256, 64) for _ in range(2)]
    d2 = (_glorot(rng, 128, 1), rng.uniform(-0.1, 0.1, 1))
    m2 = Sequential([RNNLayer("gru", b1), RNNLayer("gru", b2), Dense(*d2, activation="sigmoid")])

    def ref2(x):
        s = reference.run_layer("gru", b1, x.transpose(1, 0, 2))[0]
        s = merge_directions(reference.run_layer("gru", b2, s)[0], "concat", 64)
        return reference.ACT["sigmoid"](s @ d2[0] + d2[1]).transpose(1, 0, 2)

    return [("GRU(128)->GRU(64)->Dense(1)", m1, ref1),
            ("BiGRU(128)->BiGRU(64)->Dense(1)", m2, ref2)]


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run_demo(batch=256, repeats=15, seed=0, out=print):
    """Run the demo and print its table. Returns the rows as dicts."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, T, FEATURES)).astype(np.float32)
    out("rnnfast demo: the seed's two models on random weights, input (batch, %d, %d), "
        "%d threads" % (T, FEATURES, get_num_threads()))
    out("")
    head = "%-33s %14s %12s %12s %12s %8s" % ("model", "max|diff|", "rnnfast ms", "numpy ms",
                                             "rnnfast seq/s", "speed-up")
    out(head)
    out("-" * len(head))
    rows = []
    for name, model, ref in seed_models(seed):
        got = model.predict(x)
        want = ref(x.astype(np.float64))
        diff = float(np.abs(got - want).max())
        t_fast = _median_ms(lambda: model.predict(x), repeats)
        t_ref = _median_ms(lambda: ref(x.astype(np.float64)), max(3, repeats // 5))
        rows.append(dict(model=name, max_abs_diff=diff, rnnfast_ms=t_fast, numpy_ms=t_ref,
                         batch=batch))
        out("%-33s %14.2e %12.2f %12.2f %12.0f %7.1fx" % (name, diff, t_fast, t_ref,
                                                          batch / t_fast * 1e3, t_ref / t_fast))
    out("")
    out("max|diff|: largest absolute difference from the float64 numpy reference "
        "(rnnfast computes in float32); times are medians over %d runs at batch %d." % (repeats, batch))
    return rows
