"""Reduced precision (int8, bf16): the products against float64 references of the
quantized computation on every kernel set this CPU runs, one step of every cell against
a float64 model of the quantized step, sequences against the float64 model within the
bound the quantization implies, thread-count invariance, the instruction sets end to
end, the bundled digits models, and the API (precision=, with_precision,
precision_error, the summary, the CLI)."""

import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnnfast
from rnnfast import _kernels, _plan, _quant, cells, reference
from rnnfast.cli import main as cli_main
from rnnfast.layers import CellWeights, RNNLayer
from rnnfast.precision import recurrent_layers

from _testing import random_weights

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
REDUCED = ("bf16", "int8")
# the kernel sets whose bf16 products run on bf16 instructions (vdpbf16ps, tdpbf16ps),
# and those whose sums are their own (c/x86/amx_quant.h: AMX-BF16 tiles)
BF16_INSTRUCTIONS = ("avx512_bf16", "avx512_amx")
TILE_BF16 = ("avx512_amx",)
# (cell, layer options, projection size)
CELLS = {
    "gru": ("gru", {}, 0),
    "gru_rb": ("gru", {"reset_after": False}, 0),
    "lstm": ("lstm", {}, 0),
    "lstm_proj": ("lstm", {}, 5),
    "simple": ("simple", {}, 0),
}


# -- the products ----------------------------------------------------------------------


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize(
    "M,K,N,kg",
    [(1, 64, 192, None), (1, 37, 100, None), (1, 1, 1, None), (3, 130, 257, None), (5, 3, 64, None),
     (70, 96, 130, None), (4, 301, 520, None), (100, 1030, 70, None), (1, 32, 96, None), (6, 9, 70, None),
     (2, 130, 257, 8), (70, 96, 130, 32), (1, 301, 200, 64)],
)  # fmt: skip
def test_product_matches_float64_of_the_quantized_operands_on_every_kernel_set(rng, precision, M, K, N, kg):
    """bias + A W with A and W as the kernels see them (int8: per-row and per-column
    symmetric quantization, exact int32 sums; K-grouped int8 (``kg`` rows of K per
    scale; None: the layers' choice, _quant.group_rows): int16 activations, scales per
    group, exact int32 sums per group; bf16: both rounded, float32 sums), in float64:
    within the float32 rounding of the kernel's arithmetic; every kernel set gives the
    same bits (bf16 on AMX tiles: its own, see test_bf16_rows_on_tiles_do_not_depend_on_the_batch)."""
    code = _quant.PRECISIONS[precision]
    kg = (_quant.group_rows(K) if kg is None else kg) if precision == "int8" else 0
    A = rng.standard_normal((M, K)).astype(np.float32)
    A[0, 0] = 0.0
    W = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    data, scale, comp = _quant.pack_block(W, code, kg=kg)
    want = _quant.reference_product(A, W, precision, b, kg)
    mag = np.abs(_quant.activations(A, precision, kg)) @ np.abs(_quant.dequantized(W, precision, kg)) + np.abs(b)
    # int8: the sum is exact; float(sum), sa*ws and the fma round once each.
    # K-grouped int8: per group float(sum) (not exact past 2**24), sa*ws and the fma
    # adding it to the sum so far round once each, every rounding at most eps/2 of mag.
    # bf16: the products are exact; each of the K sums rounds once.
    ng = int(_kernels.qgroups(K, kg))
    bound = (4 if kg == 0 else 3 * ng + 1) * EPS32 / 2 * mag if precision == "int8" else (K + 2) * EPS32 / 2 * mag
    assert (precision == "int8" and kg > 0) == (ng > 1)  # the grouped cases do run the grouped kernels
    first = None
    for isa in _kernels.quant_isas():
        got = _kernels.qmatmul(code, A, data, N, scale, comp, bias=b, isa=isa, kg=kg)
        assert np.all(np.abs(got - want) <= bound), (isa, float(np.max(np.abs(got - want) - bound)))
        if precision == "bf16" and isa in TILE_BF16:
            continue
        if first is None:
            first = got
        else:
            assert np.array_equal(got, first), isa


@pytest.mark.parametrize("K", [1, 37, 64, 301])
def test_bf16_rows_on_tiles_do_not_depend_on_the_batch(rng, K):
    """bf16 on AMX tiles (every product there, one row included; tdpbf16ps's sums are not
    vdpbf16ps's): a row gives the same bits alone, in a block of fewer than 16 rows,
    in whole blocks and after them (70 rows: four blocks and six), with and without
    bias, K of whole 32-value tiles and tails; within one float rounding per product of
    the float64 sum, like the other kernel sets."""
    if not set(TILE_BF16) & set(_kernels.quant_isas()):
        pytest.skip("no AMX-BF16 on this CPU")
    code = _quant.PRECISIONS["bf16"]
    N = 200  # three whole panels and a partial one
    A = rng.standard_normal((70, K)).astype(np.float32)
    W = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    data, scale, comp = _quant.pack_block(W, code)
    mag = np.abs(_quant.activations(A, "bf16", 0)) @ np.abs(_quant.dequantized(W, "bf16", 0)) + np.abs(b)
    for isa in TILE_BF16:
        for bias in (b, None):
            every = _kernels.qmatmul(code, A, data, N, scale, comp, bias=bias, isa=isa)
            want = _quant.reference_product(A, W, "bf16", bias, 0)
            assert np.all(np.abs(every - want) <= (K + 2) * EPS32 / 2 * mag), isa
            for lo, hi in ((0, 1), (69, 70), (3, 8), (10, 26), (5, 37), (16, 64)):
                got = _kernels.qmatmul(code, A[lo:hi], data, N, scale, comp, bias=bias, isa=isa)
                assert np.array_equal(got, every[lo:hi]), (isa, lo, hi)


@pytest.mark.parametrize("K", [65, 67, 72, 129, 257, 4103])
def test_int8_rows_quantize_alike_on_every_kernel_set(rng, K):
    """The per-column int8 product (kg 0) on rows every kernel set must quantize alike
    (a zero row, a tiny one, an infinite and a NaN value, K past whole vectors, more rows
    than one group holds at K = 4103) and columns ending inside a panel: the same bits on
    every kernel set, and within the float32 rounding of the float64 reference."""
    M, N = 70, 75
    A = rng.standard_normal((M, K)).astype(np.float32)
    A[1] = 0.0
    A[2] *= np.float32(1e-30)
    A[3, K // 2] = np.inf
    A[4, K - 1] = np.nan
    W = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    code = _quant.PRECISIONS["int8"]
    data, scale, comp = _quant.pack_block(W, code)
    want = _quant.reference_product(A[5:], W, "int8", b, 0)
    mag = np.abs(_quant.activations(A[5:], "int8", 0)) @ np.abs(_quant.dequantized(W, "int8", 0)) + np.abs(b)
    first = None
    for isa in _kernels.quant_isas():
        got = _kernels.qmatmul(code, A, data, N, scale, comp, bias=b, isa=isa)
        assert np.all(np.abs(got[5:] - want) <= 4 * EPS32 / 2 * mag), isa
        np.testing.assert_array_equal(got[1], b)  # a zero row: the bias
        if first is None:
            first = got
        else:
            assert np.array_equal(got.view(np.int32), first.view(np.int32)), isa


@pytest.mark.parametrize("M", [1, 2, 6, 7, 12, 13])
def test_bf16_product_rounds_rows_alike_on_every_kernel_set(rng, M):
    """The rows of A rounded to bf16 (c/x86/avx2_quant.h: eight at a time, the tail
    one by one) as rnnfast._quant.bf16_round rounds them: ties to even both ways and
    signs, a carry into the next binade, the largest finite, subnormals, zeros. A
    against the identity (no bias) gives the rounded A exactly, on every kernel set
    (the bf16 instructions: or with subnormals flushed to zero, as Intel's do); a
    value rounding up to infinity gives infinity in its column and NaN in the others
    (infinity times the identity's zeros), a NaN a row of NaN. Then A against random
    weights without bias, 1 to 13 rows (the AVX2 tiles of 6 rows and their
    remainders): the same bits on every kernel set but AMX tiles, whose sums are their
    own, all within the bound."""
    code = _quant.PRECISIONS["bf16"]
    K = 37
    bits = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x3FFFFFFF, 0x7F7F7FFF, 0xFF7F7FFF, 0x000116C2,
                     0x80208000, 0x00008000, 0x00018000, 0, 0x80000000], np.uint32)  # fmt: skip
    special = bits.view(np.float32)
    A = rng.standard_normal((M, K)).astype(np.float32)
    for i in range(M):
        A[i, 9 + i % 3 : 9 + i % 3 + special.size] = special
    A[0, K - 1] = special[0]  # a tie in the scalar tail too
    data, scale, comp = _quant.pack_block(np.eye(K, dtype=np.float32), code)
    want = _quant.bf16_round(A)
    assert (want != A).any() and np.isfinite(want).all()
    bad = A.copy()
    bad[0, 12] = np.array([0x7F7F8000], np.uint32).view(np.float32)[0]  # rounds to infinity
    bad[1:, 30] = np.nan
    # vdpbf16ps and tdpbf16ps take subnormal inputs as zero and flush subnormal sums
    # (Intel's SDM: "daz in, ftz out"; seen on a Xeon); AMD's Zen 4 keeps them
    daz = np.where(np.abs(want) < np.finfo(np.float32).tiny, np.float32(0), want)
    assert not np.array_equal(daz, want)
    for isa in _kernels.quant_isas():
        got = _kernels.qmatmul(code, A, data, K, scale, comp, isa=isa)
        if isa in BF16_INSTRUCTIONS:
            assert np.array_equal(got, want) or np.array_equal(got, daz), isa
        else:
            assert np.array_equal(got, want), isa
        got = _kernels.qmatmul(code, bad, data, K, scale, comp, isa=isa)
        assert got[0, 12] == np.inf and np.isnan(np.delete(got[0], 12)).all() and np.isnan(got[1:]).all(), isa
    W = (rng.standard_normal((301, 130)) * 0.1).astype(np.float32)
    B = rng.standard_normal((M, 301)).astype(np.float32)
    data, scale, comp = _quant.pack_block(W, code)
    outs = {isa: _kernels.qmatmul(code, B, data, 130, scale, comp, isa=isa) for isa in _kernels.quant_isas()}
    mag = np.abs(_quant.bf16_round(B)).astype(np.float64) @ np.abs(_quant.dequantized(W, "bf16", 0))
    want = _quant.reference_product(B, W, "bf16", None, 0)
    for isa, got in outs.items():
        assert np.all(np.abs(got - want) <= 303 * EPS32 / 2 * mag), isa
        if isa not in TILE_BF16:  # tiles: their own sums
            assert np.array_equal(got, outs["baseline"]), isa


@pytest.mark.parametrize("K,kg", [(260, 0), (64, 4), (520, 260)])
def test_int8_products_never_saturate(rng, K, kg):
    """Rows of ±max and weights of ±127 everywhere: the worst sums are exact (K-grouped:
    int16 activations of ±32767, kg 32767 127 per group)."""
    N = 70
    A = np.where(rng.random((2, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    W = np.where(rng.random((K, N)) < 0.5, -1.0, 1.0).astype(np.float32)
    W[:, 0] = 1.0
    A[0] = 1.0  # row 0 times column 0: K * 127 * 127, the largest sum
    code = _quant.PRECISIONS["int8"]
    data, scale, comp = _quant.pack_block(W, code, kg=kg)
    ng = int(_kernels.qgroups(K, kg))
    for isa in _kernels.quant_isas():
        got = _kernels.qmatmul(code, A, data, N, scale, comp, isa=isa, kg=kg)
        # per group: float(sum) (exact below 2**24), sa*ws, the fma: eps/2 of K each
        np.testing.assert_allclose(got, A.astype(np.float64) @ W, rtol=0, atol=(3 * ng + 1) * EPS32 / 2 * K)


def test_the_kernel_set_follows_the_instruction_set():
    assert _kernels.quant_isa() in _kernels.quant_isas()
    assert _kernels.quant_isas()[0] == "baseline"
    with pytest.raises(ValueError, match="kernel set"):
        _kernels.qmatmul(2, np.zeros((1, 4), np.float32), np.zeros(256, np.int8), 64, np.zeros(64), np.zeros(64),
                         isa="avx9000")  # fmt: skip


# -- one step of every cell against a float64 model of the quantized step --------------


def _act(name):
    return reference.ACT[name]


def _quantized_step(kind, w, x, h, c, precision, given=False):
    """One step in float64 with every product on the operands as the kernels see them
    (the input projection in float32 where the precision keeps it so). ``given``: the
    kernel and recurrent kernel of ``w`` are int8 weights already dequantized (float64
    ``q * scale``), taken as they are."""
    cell, opts, P = CELLS[kind]
    G = cells.get(cell).num_gates
    H = w.kernel.shape[1] // G
    qin = _quant.reduced_input(precision, w.kernel.shape[0], given)

    def prod(a, m, reduced=True):
        if not reduced:
            return np.asarray(a, np.float64) @ np.asarray(m, np.float64)
        seen = np.asarray(m, np.float64) if given else _quant.dequantized(m, precision)
        return _quant.activations(np.asarray(a, np.float32), precision) @ seen

    xp = prod(x, w.kernel, qin) + w.bias
    sig, tanh = _act("sigmoid"), _act("tanh")
    if cell == "gru" and opts.get("reset_after", True):
        gh = prod(h, w.recurrent_kernel)
        z = sig(xp[:, :H] + gh[:, :H])
        r = sig(xp[:, H : 2 * H] + gh[:, H : 2 * H])
        n = tanh(xp[:, 2 * H :] + r * (gh[:, 2 * H :] + w.recurrent_bias[2 * H :]))
        return z * h + (1 - z) * n, None
    if cell == "gru":
        gzr = prod(h, w.recurrent_kernel[:, : 2 * H])
        z = sig(xp[:, :H] + gzr[:, :H])
        r = sig(xp[:, H : 2 * H] + gzr[:, H:])
        n = tanh(xp[:, 2 * H :] + prod((r * h).astype(np.float32), w.recurrent_kernel[:, 2 * H :]))
        return z * h + (1 - z) * n, None
    if cell == "lstm":
        g = xp + prod(h, w.recurrent_kernel)
        i, f, u, o = sig(g[:, :H]), sig(g[:, H : 2 * H]), tanh(g[:, 2 * H : 3 * H]), sig(g[:, 3 * H :])
        c2 = f * c + i * u
        m = o * tanh(c2)
        if P:
            m = prod(m.astype(np.float32), w.projection)
        return m, c2
    return tanh(xp + prod(h, w.recurrent_kernel)), None


def _layer(rng, kind, I, H, D=1, precision="float32", scale=1.0):
    cell, opts, P = CELLS[kind]
    ws = [random_weights(rng, cell, I, H, P=P, scale=scale) for _ in range(D)]
    return RNNLayer(cell, ws, **opts).with_precision(precision), ws


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("H", [7, 70, 260])
def test_one_step_matches_the_float64_quantized_step(rng, kind, precision, H):
    """T = 1 from a random state: the kernels' float32 gate math against float64 on the
    same quantized operands (so only float32 rounding separates them)."""
    B, I = 3, 11
    layer, _ = _layer(rng, kind, I, H, precision=precision)
    w = layer.cell_weights()[0]  # the biases as the layer holds them
    Ho = layer.output_size
    x = rng.standard_normal((1, B, I)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (1, B, Ho)).astype(np.float32)
    c0 = rng.uniform(-1, 1, (1, B, H)).astype(np.float32) if kind.startswith("lstm") else None
    out, h, c = layer(x, h0, c0)
    want_h, want_c = _quantized_step(kind, w, x[0], h0[0].astype(np.float64), None if c0 is None else c0[0], precision)
    np.testing.assert_allclose(h[0], want_h, rtol=0, atol=2e-5)
    np.testing.assert_allclose(out[0], want_h, rtol=0, atol=2e-5)
    if c0 is not None:
        np.testing.assert_allclose(c[0], want_c, rtol=0, atol=2e-5)


# -- sequences ---------------------------------------------------------------------------


def _quantized_sequence(kind, layer, x, mask, precision, weights=None):
    """The float64 model of the quantized computation over a sequence (time-major x,
    Keras mask semantics, both directions concatenated): _quantized_step at every step.
    ``weights``: per direction, CellWeights whose kernels are given int8 weights."""
    T, B, _ = x.shape
    outs = []
    for d, w in enumerate(weights or layer.cell_weights()):
        h = np.zeros((B, layer.output_size))
        c = np.zeros((B, layer.units)) if kind.startswith("lstm") else None
        seen = np.zeros(B, bool)
        out = np.zeros((T, B, layer.output_size))
        for t in range(T - 1, -1, -1) if d == 1 else range(T):
            h2, c2 = _quantized_step(kind, w, x[t], h, c, precision, given=weights is not None)
            v = mask[t][:, None]
            h = np.where(v, h2, h)
            if c is not None:
                c = np.where(v, c2, c)
            seen |= mask[t]
            out[t] = np.where(seen[:, None], h, 0.0)
        outs.append(out)
    return np.concatenate(outs, axis=-1)


# One activation flipping to its neighbouring level between the two (the float32 and
# float64 states differ by rounding; a value that close to a rounding tie is rare) moves
# a pre-activation by a level times a weight: int8 at most (1/127) (1/sqrt(40)), bf16
# 2**-8 |a| (1/sqrt(40)). Measured over 5 seeds: int8 within 8e-8, bf16 within 4e-5.
SEQUENCE_ATOL = 2e-3


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("I,H", [(6, 40), (24, 90)])
def test_sequences_match_the_float64_quantized_model(rng, kind, precision, I, H):
    """Bidirectional, masked, batch-major, 12 steps: against the float64 model of the
    quantized computation (and far from the float32 path: it is not that one). int8:
    I = 6 keeps the input projection float32 and the recurrent product K-grouped; I =
    24, H = 90: the input projection K-grouped, the recurrent one per column."""
    T, B = 12, 4
    layer, ws = _layer(rng, kind, I, H, D=2, precision=precision)
    x = rng.uniform(-1, 1, (B, T, I)).astype(np.float32)
    lengths = np.array([T, 5, 1, 9])
    mask = np.arange(T)[None, :] < lengths[:, None]
    out, h, c = layer(x, mask=mask.T, batch_first=True)
    got = np.swapaxes(out, 0, 1)
    want = _quantized_sequence(kind, layer, np.swapaxes(x, 0, 1), mask.T, precision)
    np.testing.assert_allclose(got, want, rtol=0, atol=SEQUENCE_ATOL)
    exact, _, _ = layer.with_precision("float32")(x, mask=mask.T, batch_first=True)
    assert np.abs(out - exact).max() > 1e-5


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bf16_rows_kept_across_unit_blocks_match_the_float64_model(rng, kind):
    """A blocked bf16 layer keeps a thread's rounding of the rows that every unit block's
    product reads (a step's state, a chunk's input rows: quant.h, named rows): H = 130
    (two unit blocks), both directions, B = 64 (chunks of a few steps), then a second call
    on new values in the same input buffer: each against the
    float64 model of the quantized computation, the second bitwise as a fresh layer's."""
    T, B, I, H = 12, 64, 24, 130
    layer, ws = _layer(rng, kind, I, H, D=2, precision="bf16")
    plan = layer._plan_for(B, T, 1)
    assert layer._ncb == 2 and plan.strategy == _plan.BLOCKED and plan.chunk < T
    mask = np.ones((T, B), bool)
    x = np.empty((T, B, I), np.float32)
    for _ in range(2):
        x[...] = rng.uniform(-1, 1, x.shape)  # the same input buffer, new values
        want = _quantized_sequence(kind, layer, x, mask, "bf16")
        for n in (1, 2):
            out = layer(x, num_threads=n)[0]
            np.testing.assert_allclose(out, want, rtol=0, atol=SEQUENCE_ATOL)
    fresh = RNNLayer(CELLS[kind][0], ws, **CELLS[kind][1]).with_precision("bf16")
    assert np.array_equal(fresh(x)[0], out)


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("kind", ["gru", "lstm", "gru_rb"])
@pytest.mark.parametrize("B,H", [(1, 256), (5, 40), (70, 130)])
@pytest.mark.parametrize("I", [9, 24])
def test_results_do_not_depend_on_the_thread_count(rng, kind, precision, B, H, I):
    """I = 9: a float32 input projection; I = 24: in the reduced precision."""
    layer, _ = _layer(rng, kind, I, H, D=2, precision=precision)
    x = rng.standard_normal((17, B, I)).astype(np.float32)
    runs = [layer(x, num_threads=n) for n in (1, 2, 3)]
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            if a is not None:
                assert np.array_equal(a, b)


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("I", [9, 24])
def test_a_row_does_not_depend_on_its_batch(rng, precision, I):
    layer, _ = _layer(rng, "lstm", I, 130, precision=precision)
    assert (layer._q.W is not None) == _quant.reduced_input(precision, I) == (I > 16)
    x = rng.standard_normal((10, 7, I)).astype(np.float32)
    full, _, _ = layer(x)
    one, _, _ = layer(x[:, 3:4])
    assert np.array_equal(full[:, 3:4], one)


_ISA_SCRIPT = """
import sys, numpy as np
from rnnfast import _kernels
from rnnfast.layers import RNNLayer, CellWeights
rng = np.random.default_rng(5)
w = [CellWeights(*(rng.uniform(-0.2, 0.2, s).astype(np.float32) for s in ((6, 120), (40, 120), (120,))))]
x = rng.standard_normal((6, 3, 6)).astype(np.float32)
out = {p: RNNLayer("gru", w).with_precision(p)(x)[0] for p in ("bf16", "int8")}
w = [CellWeights(*(rng.uniform(-0.2, 0.2, s).astype(np.float32) for s in ((24, 120), (40, 120), (120,))))]
x = rng.standard_normal((6, 3, 24)).astype(np.float32)
out.update({p + "_in": RNNLayer("gru", w).with_precision(p)(x)[0] for p in ("bf16", "int8")})
np.savez(sys.argv[1], isa=_kernels.quant_isa(), **out)
"""


def test_every_instruction_set_runs_reduced_precision_alike(tmp_path):
    """A whole layer under RNNFAST_ISA=baseline / avx2 and the best: the products are
    bitwise the same on every kernel set; only the float32 gate math differs."""
    results = {}
    for isa in ("baseline", "avx2", "auto"):
        path = tmp_path / ("%s.npz" % isa)
        env = dict(os.environ, RNNFAST_ISA=isa)
        r = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(path)], env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        results[isa] = np.load(path)
    assert str(results["baseline"]["isa"]) == "baseline"
    for isa in ("avx2", "auto"):
        for p in ("bf16", "int8", "bf16_in", "int8_in"):  # _in: the input projection reduced too
            np.testing.assert_allclose(results[isa][p], results["baseline"][p], rtol=0, atol=1e-5)


# -- ONNX Runtime's DynamicQuantizeLSTM ---------------------------------------------------


def _dynamic_quantized_lstm(tmp_path, per_channel, bidirectional=True, weight_type="QInt8", I=8, H=16,
                            reduce_range=False):  # fmt: skip
    """A PyTorch LSTM exported to ONNX and quantized by onnxruntime's quantize_dynamic
    (``reduce_range``: 7-bit weights): (float path, quantized path, its
    DynamicQuantizeLSTM node's initializers by input)."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    quantization = pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(3)
    m = torch.nn.LSTM(I, H, bidirectional=bidirectional).eval()
    f32, q8 = tmp_path / "lstm.onnx", tmp_path / "lstm_q.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(4, 2, I),), str(f32), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "T", 1: "B"}})  # fmt: skip
        quantization.quantize_dynamic(str(f32), str(q8), weight_type=getattr(quantization.QuantType, weight_type),
                                      per_channel=per_channel, reduce_range=reduce_range)  # fmt: skip
    g = onnx.load(str(q8)).graph
    (node,) = [n for n in g.node if n.op_type == "DynamicQuantizeLSTM"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    given = {k: inits[name] for k, name in zip(["X", "W", "R", "B"] + [None] * 4 + ["Ws", "Wz", "Rs", "Rz"], node.input)
             if k and name in inits}  # fmt: skip
    return f32, q8, given


def _given_cell_weights(layer, given):
    """Per direction, the layer's CellWeights with the node's int8 weights, dequantized
    in float64 (``q * scale``, ONNX gate order i, o, f, c to i, f, c, o)."""
    H = layer.units
    order = np.concatenate([np.arange(g * H, (g + 1) * H) for g in (0, 2, 3, 1)])
    out = []
    for d, w in enumerate(layer.cell_weights()):
        deq = [given[q][d].astype(np.float64) * np.broadcast_to(given[s][d].reshape(-1), (4 * H,)) for q, s in
               (("W", "Ws"), ("R", "Rs"))]  # fmt: skip
        out.append(CellWeights(deq[0][:, order], deq[1][:, order], w.bias, w.recurrent_bias))
    return out


@pytest.mark.parametrize("per_channel,bidirectional", [(False, True), (True, True), (False, False)])
def test_dynamic_quantize_lstm_runs_its_own_int8_weights(tmp_path, rng, monkeypatch, per_channel, bidirectional):
    """The node's int8 weights and scales as they are (one per tensor or per column),
    not quantized again: one step from zero state against the float64 model of those
    operands within float32 rounding, 9 steps within SEQUENCE_ATOL. Quantizing the
    dequantized per-tensor weights again per column would move a step's sums by about
    half a column step times |x| (measured 3e-4 here): over the one-step bound."""
    _, q8, given = _dynamic_quantized_lstm(tmp_path, per_channel, bidirectional)
    model = rnnfast.load(q8)
    (layer,) = recurrent_layers(model)
    assert layer.precision == "int8" and layer.num_directions == 1 + bidirectional
    weights = _given_cell_weights(layer, given)
    for T, atol in ((1, 2e-5), (9, SEQUENCE_ATOL)):
        x = rng.uniform(-1, 1, (T, 3, 8)).astype(np.float32)
        out, _, _ = layer(x)
        want = _quantized_sequence("lstm", layer, x, np.ones((T, 3), bool), "int8", weights)
        np.testing.assert_allclose(out, want, rtol=0, atol=atol)
        if T == 1 and not per_channel:
            with monkeypatch.context() as m:  # the float weights quantized again per column
                m.setattr(_quant, "dequantized", lambda w, p, kg=None, f=_quant.dequantized: f(w, p, 0))
                m.setattr(_quant, "reduced_input", lambda p, i, given=False: True)
                again = _quantized_sequence("lstm", layer, x, np.ones((T, 3), bool), "int8")
            assert np.abs(again - want).max() > 4 * atol  # the check above can tell them apart
    # the given weights travel with a pickled model (rnnfast.dask, rnnfast.ray)
    x = rng.uniform(-1, 1, (5, 2, 8)).astype(np.float32)
    for a, b in zip(model(x), pickle.loads(pickle.dumps(model))(x)):
        assert np.array_equal(a, b)


def test_dynamic_quantize_lstm_agrees_with_onnx_runtime(tmp_path, rng):
    """One step from zero state (Y, Y_h, Y_c) against ONNX Runtime running the same
    file. The two quantize the input differently (rnnfast per row, symmetric: an error
    of at most max|row| / 254; ONNX Runtime per tensor with a zero point: at most one
    step, range / 255), on the same weights: a pre-activation differs by at most
    ||W[:, j]||_1 times the sum, and the outputs (i, f, o sigmoid: slope 1/4; g, tanh:
    1) by o' tanh(c) + tanh'(c) (i' g + i g') <= (1/4 + 1/4 + 1) times it, each from
    its own column's bound (measured: differences 1/17 of it; a gate out of place
    moves them by tenths). Which weights run: the test above. The weights are 7-bit
    (``reduce_range``, as ONNX Runtime advises for CPUs without VNNI): on such a CPU its
    u8 x s8 product adds pairs in 16 bits with saturation (``vpmaddubsw``), and 8-bit
    weights put its own result off by up to 0.084 here (AMD Zen 1, AVX2), outside the
    bound; 255 * 64 * 2 < 2**15 never saturates."""
    ort = pytest.importorskip("onnxruntime")
    _, q8, given = _dynamic_quantized_lstm(tmp_path, per_channel=True, reduce_range=True)
    model = rnnfast.load(q8)
    (layer,) = recurrent_layers(model)
    x = rng.uniform(-1, 1, (1, 5, 8)).astype(np.float32)
    got = model(x)
    want = ort.InferenceSession(str(q8), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ex = np.abs(x[0]).max(1) / 254 + (max(x.max(), 0) - min(x.min(), 0)) / 255  # (B,)
    H = layer.units
    bounds = []
    for w in _given_cell_weights(layer, given):
        col = np.abs(w.kernel).sum(0)  # (4H,) canonical i, f, c, o
        e = ex[:, None] * col[None, :]  # (B, 4H)
        # c = i g (c0 = 0: f does not count), h = o tanh(c)
        bounds.append(e[:, :H] / 4 + e[:, 2 * H : 3 * H] + e[:, 3 * H :] / 4)
    bound = np.stack(bounds) + 1e-5  # (D, B, H) plus float32 rounding
    y, yh = got[0], got[1]  # Y (T, D, B, H) after the graph's reshape, Y_h (D, B, H)
    np.testing.assert_array_less(np.abs(yh - want[1]), bound)
    np.testing.assert_array_less(np.abs(y - want[0]).max(), bound.max())
    assert np.abs(yh - want[1]).max() > 0  # the activations are quantized differently


@pytest.mark.parametrize(
    "change,match",
    [
        ("zero point", "W_zero_point.*non-zero zero points"),
        ("-128", "holds -128"),
        ("uint8", "uint8 with zero point"),
        ("scale shape", "W_scale of type float32 and shape"),
    ],
)
def test_dynamic_quantize_lstm_refuses_what_its_int8_path_does_not_run(tmp_path, change, match):
    """Asymmetric weights (a zero point, uint8), -128, scales per row: refused, named."""
    onnx = pytest.importorskip("onnx")
    _, q8, _ = _dynamic_quantized_lstm(tmp_path, per_channel=True)
    proto = onnx.load(str(q8))
    (node,) = [n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    inits = {t.name: t for t in proto.graph.initializer}
    w, ws, wz = (inits[node.input[i]] for i in (1, 8, 9))
    a = onnx.numpy_helper.to_array(w).copy()
    if change == "zero point":
        z = onnx.numpy_helper.to_array(wz).copy()
        z.flat[3] = 1
        wz.CopyFrom(onnx.numpy_helper.from_array(z, wz.name))
    elif change == "-128":
        a.flat[5] = -128
        w.CopyFrom(onnx.numpy_helper.from_array(a, w.name))
    elif change == "uint8":
        w.CopyFrom(onnx.numpy_helper.from_array((a.astype(np.int16) + 128).astype(np.uint8), w.name))
    else:
        sc = onnx.numpy_helper.to_array(ws)
        ws.CopyFrom(onnx.numpy_helper.from_array(np.repeat(sc[:, :1], a.shape[1], 1), ws.name))
    with pytest.raises(rnnfast.UnsupportedLayerError, match=match):
        rnnfast.from_onnx(proto.SerializeToString())


# -- the bundled digits models -----------------------------------------------------------


def _digits():
    d = np.load(rnnfast.example("digits_test"))
    return d["x"], d["y"]


def _lstm_classify(model, x):
    head = np.load(rnnfast.example("digits_lstm_head"))
    _, (h, _) = model(x)
    z = np.concatenate([h[-2], h[-1]], 1) @ head["weight"].T + head["bias"]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


# The target (bench/README.md, "Reduced precision"): measured bf16 0.0078 /
# 0.0035, int8 0.0075 / 0.0060 (float32 input projection of the 8 inputs, K-grouped
# products: per-column int8 gave 0.023 / 0.026).
MAX_PROB_DIFF = {"bf16": 1e-2, "int8": 1e-2}


@pytest.mark.parametrize("precision", REDUCED)
def test_digits_models_keep_their_accuracy(precision):
    x, y = _digits()
    keras = rnnfast.load(rnnfast.example("digits_bigru"))
    torch_ = rnnfast.load(rnnfast.example("digits_lstm"), batch_first=True)
    for name, run, model in (
        ("bigru", lambda m: m.predict(x), keras),
        ("lstm", lambda m: _lstm_classify(m, x), torch_),
    ):
        p32 = run(model)
        pq = run(model.with_precision(precision))
        acc32, accq = (p32.argmax(1) == y).mean(), (pq.argmax(1) == y).mean()
        assert accq >= acc32 - 0.005, (name, acc32, accq)
        assert 0 < np.abs(pq - p32).max() <= MAX_PROB_DIFF[precision], name


# -- the API -----------------------------------------------------------------------------


def test_precision_keyword_on_load_and_with_precision():
    path = rnnfast.example("digits_lstm")
    m = rnnfast.load(path, batch_first=True)
    q = rnnfast.load(path, batch_first=True, precision="int8")
    assert m.precision == "float32" and q.precision == "int8"
    assert all(layer.precision == "int8" for layer in recurrent_layers(q))
    assert all(layer.precision == "float32" for layer in recurrent_layers(m))
    x, _ = _digits()
    a = q(x)[0]
    b = m.with_precision("int8")(x)[0]
    assert np.array_equal(a, b)
    back = q.with_precision("float32")(x)[0]
    assert np.array_equal(back, m(x)[0])  # the float32 path, bitwise, from an int8 model


def test_with_precision_shares_nothing_mutable():
    m = rnnfast.load(rnnfast.example("digits_bigru"))
    q = m.with_precision("bf16")
    old = set(map(id, recurrent_layers(m)))
    assert not old & set(map(id, recurrent_layers(q)))
    for layer in recurrent_layers(q):
        for v in vars(layer).values():
            if isinstance(v, np.ndarray):
                assert not v.flags.writeable


@pytest.mark.parametrize("bad", ["int4", "fp16", "", None.__class__.__name__, 8])
def test_unknown_precision_is_a_value_error(bad):
    path = rnnfast.example("digits_lstm")
    with pytest.raises(ValueError, match="precision"):
        rnnfast.load(path, precision=bad)
    with pytest.raises(ValueError, match="precision"):
        rnnfast.load(path).with_precision(bad)


def test_reduced_precision_needs_float32():
    m = rnnfast.load(rnnfast.example("digits_lstm"), dtype="float64")
    with pytest.raises(ValueError, match="float32"):
        m.with_precision("int8")
    assert m.with_precision("float32").precision == "float32"


def test_from_torch_takes_precision():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mod = torch.nn.GRU(5, 33, batch_first=True)
    x = np.random.default_rng(0).standard_normal((2, 9, 5)).astype(np.float32)
    q = rnnfast.from_torch(mod, precision="int8")
    assert q.precision == "int8"
    assert np.array_equal(q(x)[0], rnnfast.from_torch(mod).with_precision("int8")(x)[0])
    with torch.no_grad():
        want = mod(torch.from_numpy(x))[0].numpy()
    assert np.abs(q(x)[0] - want).max() < 0.05


def test_reduced_models_pickle_and_compute_the_same():
    q = rnnfast.load(rnnfast.example("digits_bigru"), precision="int8")
    x, _ = _digits()
    r = pickle.loads(pickle.dumps(q))
    assert r.precision == "int8"
    assert np.array_equal(r.predict(x), q.predict(x))


def test_precision_error_and_summary():
    m = rnnfast.load(rnnfast.example("digits_bigru"))
    x, _ = _digits()
    e = rnnfast.precision_error(m, x, "int8")
    assert set(e) == {"precision", "max_abs", "mean_abs", "argmax_agreement", "outputs"}
    assert 0 < e["mean_abs"] < e["max_abs"] < 0.05 and e["argmax_agreement"] >= 0.99
    assert rnnfast.precision_error(m, x, "float32")["max_abs"] == 0.0
    lines = []
    m.with_precision("int8").summary(print_fn=lines.append)
    assert "precision" in lines[0] and "int8" in lines[0]
    lines = []
    m.summary(print_fn=lines.append)
    assert "precision" not in lines[0]  # the float32 table is as it was


def test_cli_precision_command(capsys):
    data = rnnfast.example("digits_test")
    assert cli_main(["precision", "--example", "digits_bigru", data, "--key", "x"]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and "bf16" in out and "argmax" in out
    assert cli_main(["info", "--example", "digits_lstm", "--precision", "bf16"]) == 0
    assert "bf16" in capsys.readouterr().out
    assert cli_main(["precision", "--example", "digits_bigru", data, "--key", "x", "--compare", "int3"]) == 1


def test_bench_precision_profile_splits_each_precision():
    """bench/precision.py --profile: one row per precision, the three parts of a step
    measured (positive) and within the call's time."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    args = ["--profile", "2", "--H", "16", "--B", "2", "--T", "5", "--cells", "lstm", "gru"]
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "precision.py"), *args], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout  # fmt: skip
    rows = [ln.strip("|").split("|") for ln in out.splitlines() if ln.startswith(("| lstm", "| gru"))]
    assert [(r[0].strip(), r[4].strip()) for r in rows] == [
        (c, p) for c in ("lstm", "gru") for p in ("float32", "bf16", "int8")
    ], out
    for r in rows:
        ms, parts = float(r[5]), [float(v) for v in r[6:9]]
        assert all(v > 0 for v in parts), out
        assert sum(parts) * 5 / 1e3 <= ms * 1.5, out


def test_direction_weights_of_a_reduced_layer():
    """cell_weights() of a reduced layer are the float weights it was built from."""
    rng = np.random.default_rng(0)
    w = [CellWeights(rng.standard_normal((3, 12)), rng.standard_normal((4, 12)), np.zeros(12))]
    a = RNNLayer("gru", w)
    b = a.with_precision("int8")
    for x, y in zip(a.cell_weights(), b.cell_weights()):
        assert np.array_equal(x.kernel, y.kernel) and np.array_equal(x.recurrent_kernel, y.recurrent_kernel)
    assert "precision='int8'" in repr(b)


@pytest.mark.parametrize("precision", REDUCED)
@pytest.mark.parametrize("kind,H", [("gru", 40), ("lstm", 256), ("gru_rb", 30), ("lstm_proj", 20)])
def test_lengths_give_each_row_what_it_gives_alone(rng, kind, H, precision):
    """Right padding (rows that ended drop out of the step): each row, bitwise, as when
    it runs alone over its own length, both directions."""
    layer, _ = _layer(rng, kind, 7, H, D=2, precision=precision)
    T, B = 15, 6
    x = rng.standard_normal((T, B, 7)).astype(np.float32)
    lengths = np.array([15, 3, 9, 1, 15, 6])
    out, h, _ = layer(x, lengths=lengths)
    for i, n in enumerate(lengths):
        o1, h1, _ = layer(x[:n, i : i + 1])
        assert np.array_equal(out[:n, i : i + 1], o1), i
        assert np.array_equal(h[:, i], h1[:, 0]), i
        assert not out[n:, i].any()


def test_bench_precision_runs_each_column_in_a_worker_of_its_own(tmp_path):
    """bench/precision.py's timed table: every installed column in its own worker process
    on the same seeded weights, its error measured against PyTorch float32 in the parent:
    float32 engines within float32 rounding, bf16 and int8 off by a reduced precision's
    error (not 0: not compared with themselves), one row per case, the JSON as before."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "src"))
    out_json = str(tmp_path / "p.json")
    args = ["--H", "16", "--B", "2", "--T", "5", "--cells", "lstm", "gru", "--budget", "0.01", "--json", out_json]
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "precision.py"), *args], env=env,
                         capture_output=True, text=True, timeout=600, check=True).stdout  # fmt: skip
    with open(out_json) as f:
        rows = json.load(f)["rows"]
    assert [(r["cell"], r["H"], r["B"], r["T"], r["threads"]) for r in rows] == [
        ("lstm", 16, 2, 5, 1),
        ("gru", 16, 2, 5, 1),
    ], out
    for r in rows:
        want = {"rnnfast float32", "rnnfast bf16", "rnnfast int8", "torch float32", "torch int8"}
        if importlib.util.find_spec("onnxruntime"):
            want.add("onnxruntime float32")
            if r["cell"] == "lstm":  # ONNX Runtime quantizes LSTM only
                want |= {"onnxruntime int8", "rnnfast int8 (ORT file)"}
        if importlib.util.find_spec("openvino"):
            want.add("openvino bf16")
        assert set(r["ms"]) == want and set(r["err"]) == want, (r, out)
        assert all(v > 0 for v in r["ms"].values()), r
        assert r["err"]["torch float32"] == 0, r
        for c in ("rnnfast float32", "onnxruntime float32"):
            assert r["err"].get(c, 0) <= 1e-5, r
        for c in ("rnnfast bf16", "rnnfast int8"):
            assert 1e-5 < r["err"][c] < 0.05, r
        for c in ("torch int8", "onnxruntime int8"):  # (ONNX Runtime's: 0.2 at H = 16)
            assert 1e-5 < r["err"].get(c, 1e-3) < 1, r
