"""Padding that costs nothing: in right-padded batches (PyTorch lengths, Keras
post-padding masks) rows whose sequence has ended drop out of each step's work, with
bitwise the same results as when every row steps (``_plan.SKIP_PADDING = False``),
and the same as the float64 reference."""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rnnfast import _plan, reference
from rnnfast.layers import RNNLayer, _padding_order

from _testing import assert_close, random_weights


@contextlib.contextmanager
def every_row_steps():
    _plan.SKIP_PADDING = False
    try:
        yield
    finally:
        _plan.SKIP_PADDING = True


def _layer(rng, cell, I, H, directions, dtype, **kw):
    name = "lstm" if cell == "lstm_peep" else cell
    ws = [random_weights(rng, name, I, H) for _ in range(directions)]
    if cell == "lstm_peep":
        ws = [dataclasses.replace(w, peephole=rng.uniform(-1, 1, (3, H))) for w in ws]
    return RNNLayer(name, ws, dtype=dtype, **kw)


def _same(a, b, what):
    for x, y in zip(a, b):
        if x is None:
            assert y is None
        else:
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), what


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["gru", "lstm", "simple", "lstm_peep"])
@pytest.mark.parametrize("H,B", [(20, 13), (130, 2), (130, 40)])  # item; blocked (small batch, wide)
def test_skipping_ended_rows_is_bitwise_the_same(rng, dtype, cell, H, B):
    """Lengths (unsorted, with zeros and full rows) and post-padding masks, forward,
    backward and bidirectional, time- and batch-major, with initial states, 1 and 2
    threads, output sequence or not."""
    I, T = 9, 17
    lengths = rng.integers(0, T + 1, B)
    lengths[0], lengths[-1] = T, 0
    mask = np.arange(T)[:, None] < lengths[None, :]
    for directions, back in ((1, False), (1, True), (2, False)):
        layer = _layer(rng, cell, I, H, directions, dtype, go_backwards=back)
        Ho = layer.output_size
        h0 = rng.standard_normal((directions, B, Ho))
        c0 = rng.standard_normal((directions, B, H)) if cell != "gru" and cell != "simple" else None
        for bfirst in (False, True):
            x = rng.standard_normal((B, T, I) if bfirst else (T, B, I))
            for kw in (
                dict(lengths=lengths),
                dict(mask=mask),
                dict(mask=mask, zero_output_for_mask=True),
                dict(lengths=lengths, return_sequences=False),
            ):
                for threads in (1, 2):
                    args = dict(kw, batch_first=bfirst, num_threads=threads)
                    got = layer(x, h0, c0, **args)
                    with every_row_steps():
                        want = layer(x, h0, c0, **args)
                    _same(got, want, "%s dirs=%d back=%s bfirst=%s %s" % (cell, directions, back, bfirst, sorted(kw)))
    # and the reference agrees (one case)
    out, h, c = layer(np.swapaxes(x, 0, 1) if bfirst else x, lengths=lengths)
    ref = reference.run_layer(
        layer.cell,
        layer.cell_weights(),
        np.swapaxes(x, 0, 1) if bfirst else x,
        lengths=lengths,
        input_forget=layer.input_forget,
    )
    for g, r in zip((out, h, c), ref):
        if r is not None:
            assert_close(g, r, dtype)


def test_padding_order():
    """Right padding is recognised (rows sorted longest first, the rows active per
    step); gaps, or no padding, leave the batch as it is."""
    lengths = np.array([2, 5, 0, 5, 3])
    mask = (np.arange(5)[:, None] < lengths[None, :]).view(np.uint8)
    order, active = _padding_order(mask)
    assert order.tolist() == [1, 3, 4, 0, 2]
    assert active.tolist() == [4, 4, 3, 2, 2] and active.dtype == np.int64
    order, active = _padding_order(mask[:, [1, 3, 4, 0, 2]].copy())
    assert order is None and active.tolist() == [4, 4, 3, 2, 2]
    gap = mask.copy()
    gap[1, 1] = 0
    assert _padding_order(gap) == (None, None)
    assert _padding_order(np.ones((4, 3), np.uint8)) == (None, None)


def test_padding_order_against_its_definition(rng):
    """Over random masks, right-padded or with a row that steps again after a gap (in
    the middle, at the last step, after a first invalid step), ``_padding_order``
    gives what its definition does: a mask is right padding when it equals
    ``t < length`` per row, the order is a stable sort by length, longest first, and
    ``active[t]`` counts the rows longer than t."""
    for T, B in [(1, 1), (1, 5), (2, 3), (7, 1), (9, 6), (40, 64)]:
        for trial in range(12):
            lengths = rng.integers(0, T + 1, B)
            mask = (np.arange(T)[:, None] < lengths[None, :]).astype(np.uint8)
            if trial % 3 == 2:  # a step valid after an invalid one
                b, t = rng.integers(0, B), rng.integers(0, T)
                mask[t, b] = 1
                if t > 0 and mask[t - 1, b]:
                    mask[t - 1, b] = 0
            steps = np.arange(T)[:, None]
            lens = mask.sum(axis=0, dtype=np.int64)
            right = np.array_equal(mask, (steps < lens[None, :]).astype(np.uint8))
            order, active = _padding_order(mask)
            if not right or lens.min() == T:
                assert (order, active) == (None, None)
                continue
            want = np.argsort(-lens, kind="stable")
            assert active.dtype == np.int64 and active.tolist() == [int((lens > t).sum()) for t in range(T)]
            if np.array_equal(want, np.arange(B)):
                assert order is None
            else:
                assert order.tolist() == want.tolist()


def test_cells_that_make_their_own_products_step_every_row(rng):
    """GRU reset-before and the LSTM with a projection (BLAS products) keep every row:
    the same results either way."""
    T, B, I, H = 9, 6, 5, 8
    lengths = rng.integers(1, T + 1, B)
    x = rng.standard_normal((T, B, I))
    for layer in (
        RNNLayer("gru", [random_weights(rng, "gru", I, H)], reset_after=False),
        RNNLayer("lstm", [random_weights(rng, "lstm", I, H, P=3)]),
    ):
        got = layer(x, lengths=lengths)
        with every_row_steps():
            want = layer(x, lengths=lengths)
        _same(got, want, repr(layer))


def test_a_blas_projection_is_made_in_the_callers_order(rng, monkeypatch):
    """Where the input projection runs on BLAS (float64 on every ISA, float32 below
    AVX-512), the kernel reads x and writes out in the caller's row order (``rows``) and
    makes the projection in that order, as every row stepping does: BLAS's sums depend
    on where a row lies in the call (OpenBLAS's sgemm on Zen 1, AVX2, gave last-bit
    differences between a batch and its rows sorted by length). Both strategies (item:
    H = 8; blocked: H = 130), with one batch block and several (B = 100: 3 and 2), on 1
    and 2 threads, forward, backward and bidirectional, time- and batch-major."""
    from rnnfast import _kernels

    calls = []
    real = _kernels.rnn_forward
    monkeypatch.setattr(_kernels, "rnn_forward", lambda *a, **k: calls.append(k) or real(*a, **k))
    T, I = 9, 5
    for dtype in (np.float64, np.float32):
        for H, B in ((8, 7), (8, 100), (130, 40), (130, 100)):
            lengths = rng.integers(0, T + 1, B)
            lengths[:2] = (3, T)  # not sorted
            for directions, back in ((1, False), (1, True), (2, False)):
                layer = _layer(rng, "gru", I, H, directions, dtype, go_backwards=back)
                if layer._Wp.size:  # float32 on AVX-512: the packed projection
                    continue
                for bfirst in (False, True):
                    x = rng.standard_normal((B, T, I) if bfirst else (T, B, I))
                    for threads in (1, 2):
                        args = dict(lengths=lengths, batch_first=bfirst, num_threads=threads)
                        calls.clear()
                        got = layer(x, **args)
                        assert calls[-1]["active"] is not None and calls[-1]["rows"] is not None
                        with every_row_steps():
                            want = layer(x, **args)
                        what = "%s H=%d dirs=%d back=%s bfirst=%s threads=%d" % (
                            np.dtype(dtype),
                            H,
                            directions,
                            back,
                            bfirst,
                            threads,
                        )
                        _same(got, want, what)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("kept", [False, True])
def test_ended_rows_keep_their_states_over_chunks_and_teams(rng, monkeypatch, cell, kept):
    """The blocked strategy copies an ended row's state once, in the step after its
    last (both state buffers then hold it), and writes the outputs of ended rows once
    after the run: over chunks of 3 steps (the buffers' parity runs on across chunks),
    on one and two threads, and in a kept team (the new state made in the thread's own
    buffer, then published), forward, backward and bidirectional, with the batch's
    longest row shorter than T (no row steps at the last steps) and rows of no steps."""
    if kept:
        monkeypatch.setattr(_plan, "_l2", [1 << 16])  # every blocked layer keeps its team
    I, H, B, T = 7, 130, 21, 11
    lengths = rng.integers(0, T, B)
    lengths[:3] = (T - 2, 1, 0)
    mask = np.arange(T)[:, None] < lengths[None, :]
    for directions, back in ((1, False), (1, True), (2, False)):
        layer = _layer(rng, cell, I, H, directions, np.float32, go_backwards=back)
        h0 = rng.standard_normal((directions, B, H))
        c0 = rng.standard_normal((directions, B, H)) if cell == "lstm" else None
        for bfirst in (False, True):
            x = rng.standard_normal((B, T, I) if bfirst else (T, B, I))
            for kw in (dict(lengths=lengths), dict(mask=mask)):
                for threads in (1, 2):
                    args = dict(kw, batch_first=bfirst, num_threads=threads, chunk_steps=3)
                    got = layer(x, h0, c0, **args)
                    with every_row_steps():
                        want = layer(x, h0, c0, **args)
                    _same(got, want, "%s dirs=%d back=%s bfirst=%s %s" % (cell, directions, back, bfirst, sorted(kw)))


def test_keras_post_padding_masks_take_the_skip_path(rng, monkeypatch):
    """A Keras model's post-padding mask (Masking before the recurrent layers) is right
    padding: its layers sort the rows and drop the ended ones (``_padding_order`` finds
    the active rows), with bitwise the results of every row stepping, and Keras'."""
    keras = pytest.importorskip("keras")
    import rnnfast
    from rnnfast import layers

    from _testing import assert_like_keras, lively

    L = keras.layers
    T, F, B = 12, 5, 9
    inp = keras.Input((T, F))
    h = L.GRU(130, return_sequences=True)(L.Masking()(inp))
    model = lively(keras.Model(inp, [L.LSTM(6, return_sequences=True)(h), L.Bidirectional(L.GRU(4))(h)]))
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T - 3
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0  # post-padding
    found = []
    real = layers._padding_order
    monkeypatch.setattr(layers, "_padding_order", lambda m: found.append(real(m)) or found[-1])
    ours = rnnfast.from_keras(model)
    found.clear()
    got = ours.predict(x)
    assert len(found) == 3  # the GRU, the LSTM, the bidirectional GRU
    assert all(order is not None and active is not None for order, active in found)
    with every_row_steps():
        want = ours.predict(x)
    _same(got, want, "keras post-padding")
    assert_like_keras(got, model.predict(x, verbose=0))


def test_bench_padding_profile_gives_a_bound_below_the_ideal(tmp_path):
    """bench/padding.py --profile: per case, the padded and skip runs' parts measured
    (positive, within the call: one thread), and the speed-up's bound between 1 and the
    ideal (no timed comparison: only what holds for any timings)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    args = ["--cells", "gru,lstm", "--units", "32", "--steps", "40", "--dirs", "1", "--rounds", "3", "--profile"]
    subprocess.run([sys.executable, os.path.join(root, "bench", "padding.py"), *args, "--out", str(tmp_path)],
                   env=env, capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    rows = json.loads((tmp_path / "padding.json").read_text())["rows"]
    assert [(r["cell"], r["units"], r["steps"]) for r in rows] == [("gru", 32, 40), ("lstm", 32, 40)]
    for r in rows:
        p = r["profile"]
        for run in ("padded", "skip"):
            parts = [p[run][k] for k in ("projection", "product", "gates")]
            assert all(v > 0 for v in parts) and sum(parts) <= p[run]["call"], (run, p)
        assert 1 < p["bound"] < r["ideal"], p
