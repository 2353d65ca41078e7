"""Heavy use: one model called from many threads at once, and memory, file handles
and threads that stay flat over long runs of small calls and repeated loads.

The concurrency tests compare every concurrent result with the serial one, bitwise
(results must not depend on threads, docs/API.md "Numerics"). The leak test runs in a
subprocess (no PyTorch or Keras imported there, so their caches do not blur the
figures) and reads RSS from /proc/self/statm after a warm-up and after 100,000 calls.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rnnfast
from _testing import make_module


HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "fuzz", "corpus")


def _hammer(call, inputs, threads=8, calls=1000):
    """``threads`` threads each make ``calls`` calls over ``inputs`` (each thread starts at
    a different input); returns [(input index, result)] of every call."""
    barrier = threading.Barrier(threads)

    def work(t):
        barrier.wait()                  # all start together
        out = []
        for k in range(calls):
            i = (t * 7 + k) % len(inputs)
            out.append((i, call(inputs[i], t)))
        return out
    with ThreadPoolExecutor(threads) as ex:
        return [r for part in ex.map(work, range(threads)) for r in part]


def _flat(result):
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _flat(r)]
    return [result]


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_eight_threads_thousand_calls_torch(mode):
    rnn = rnnfast.from_torch(make_module(mode, 3, 4, num_layers=2, bidirectional=True, seed=2))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1 + i % 5, 1 + i % 3, 3)).astype(np.float32) for i in range(13)]
    serial = [_flat(rnn(x, num_threads=1)) for x in inputs]
    # odd threads also split each call in two (OpenMP inside concurrent Python threads)
    results = _hammer(lambda x, t: rnn(x, num_threads=1 + t % 2), inputs)
    assert len(results) == 8000
    for i, res in results:
        for a, b in zip(_flat(res), serial[i]):
            assert np.array_equal(a, b)


def test_eight_threads_keras_model_and_lengths():
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    m = keras.Sequential([keras.Input((None, 3)), L.Masking(0.0), L.GRU(4, return_sequences=True),
                          L.Bidirectional(L.LSTM(3)), L.Dense(2, activation="softmax")])
    model = rnnfast.from_keras(m)
    lstm = rnnfast.from_torch(make_module("LSTM", 3, 4, seed=5))
    rng = np.random.default_rng(1)
    inputs = []
    for i in range(11):
        x = rng.standard_normal((2 + i % 3, 4 + i % 4, 3)).astype(np.float32)
        x[0, -1:] = 0                                       # a masked step
        inputs.append(x)
    lengths = [np.arange(x.shape[0]) % x.shape[1] + 1 for x in inputs]

    def call(x, t):
        i = next(k for k, v in enumerate(inputs) if v is x)
        return model.predict(x, num_threads=1 + t % 2), lstm(x.swapaxes(0, 1), lengths=lengths[i])
    serial = [_flat(call(x, 0)) for x in inputs]
    results = _hammer(call, inputs, calls=250)
    for i, res in results:
        for a, b in zip(_flat(res), serial[i]):
            assert np.array_equal(a, b)


LEAK = textwrap.dedent(r"""
    import gc, json, os, sys, threading
    import numpy as np
    import rnnfast

    corpus = sys.argv[1]
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        gc.collect()
        return int(open("/proc/self/statm").read().split()[1]) * page / 2**20

    def fds():
        return len(os.listdir("/proc/self/fd"))

    gru = rnnfast.load(os.path.join(corpus, "safetensors-gru-bi.safetensors"))
    lstm = rnnfast.load(os.path.join(corpus, "torchzip-lstm-proj-bi.pt"))
    keras = rnnfast.load(os.path.join(corpus, "keras-lstm-dense.keras"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    h0 = np.zeros((2, 2, 4), np.float32)
    xk = rng.standard_normal((2, 4, 3)).astype(np.float32)
    lengths = np.array([4, 2])
    hostile = os.path.join(sys.argv[2], "bad.pt")
    with open(os.path.join(corpus, "torchzip-gru.pt"), "rb") as f:
        data = f.read()
    with open(hostile, "wb") as f:
        f.write(data[:len(data) // 2])

    def calls(n):
        for i in range(n):
            k = i % 4
            if k == 0:
                gru(x, h0)
            elif k == 1:
                lstm(x, lengths=lengths)
            elif k == 2:
                gru(x[:, 0], num_threads=2)
            else:
                keras.predict(xk)

    def loads(n):
        for i in range(n):
            for name in ("torchzip-gru.pt", "torchlegacy-lstm.pt", "safetensors-lstm-f16.safetensors",
                         "keras-gru.keras", "keras3h5-gru.h5"):
                rnnfast.load(os.path.join(corpus, name))
            try:
                rnnfast.load(hostile)
            except rnnfast.FormatError:
                pass

    calls(4000)
    loads(20)
    r0, f0, t0 = rss(), fds(), threading.active_count()
    calls(100000)
    r1 = rss()
    loads(300)
    r2, f2, t2 = rss(), fds(), threading.active_count()
    print(json.dumps({"rss_start_mb": r0, "rss_after_calls_mb": r1, "rss_after_loads_mb": r2,
                      "fds": [f0, f2], "threads": [t0, t2]}))
""")


def test_rss_flat_over_100000_calls_and_repeated_loads(tmp_path):
    """100,000 small calls (GRU with h0, LSTM with lengths, unbatched on 2 threads, a
    Keras model), then 1,800 loads of every format (300 of them refused): RSS grows
    by less than 20 MB; no file handle or thread is left behind."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", LEAK, CORPUS, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    assert r["rss_after_calls_mb"] - r["rss_start_mb"] < 20, r
    assert r["rss_after_loads_mb"] - r["rss_after_calls_mb"] < 20, r
    assert r["fds"][0] == r["fds"][1], r
    assert r["threads"][0] == r["threads"][1], r


SCRATCH = textwrap.dedent("""
    import json, sys
    import numpy as np
    from rnnfast.layers import CellWeights, RNNLayer

    def peak_during(fn):
        # reset the kernel's high-water mark, then read it after the call (KiB)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        def status(key):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith(key))
        base = status("VmRSS:")
        fn()
        return (status("VmHWM:") - base) / 1024.0

    rng = np.random.default_rng(0)
    res = {}
    for cell, H in (("gru", 256), ("lstm", 64)):          # the blocked path, the item path
        G = 3 if cell == "gru" else 4
        w = CellWeights(rng.uniform(-.1, .1, (8, G * H)), rng.uniform(-.1, .1, (H, G * H)))
        layer = RNNLayer(cell, [w, w])
        for T in (2000, 200000):
            x = rng.standard_normal((T, 1, 8)).astype(np.float32)
            layer(x[:10], return_sequences=False)
            res["%s %d" % (cell, T)] = peak_during(lambda: layer(x, return_sequences=False))
    print(json.dumps(res))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_scratch_memory_does_not_grow_with_the_sequence():
    """With only the last state returned, a call's peak memory (above the input, which
    exists before it) is the chunked projection's scratch: the same at T=200,000 as at
    T=2,000, and a few MB, for the blocked and the item path."""
    out = subprocess.run([sys.executable, "-c", SCRATCH], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="2"), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    for cell in ("gru", "lstm"):
        assert r["%s 200000" % cell] < 12, r
        assert r["%s 200000" % cell] - r["%s 2000" % cell] < 2, r
