"""Every instruction set's kernels, tested side by side at kernel level.

The build carries one kernel table per instruction set (src/rnnfast/c/isa.h) and uses
the best one the CPU supports; RNNFAST_ISA forces a lower one for a whole process.
Here each table this machine can run is called directly (``_kernels.activate``,
``cell_step`` and ``packed_matmul`` with ``isa=``) and compared with the float64
reference (rnnfast.reference) and with the baseline: every activation on values from
tiny to huge (NaN and Inf included), every cell's gate math with every pair of
activations and masked rows, and the packed product at the edges of its register tile
(6 rows) and its panels (64 columns). The engine above the kernels is the same for
every instruction set, so the engine tests need not be rerun per ISA; running the
whole suite under RNNFAST_ISA=avx2 or baseline (CI does) still covers it end to end.
"""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from rnnfast import _kernels, cells, reference
from rnnfast.layers import ACTIVATIONS, CellWeights

#: The instruction sets this build and CPU run, lowest first.
ISAS = _kernels.ISA_LEVELS[: _kernels.ISA_LEVELS.index(_kernels.best_isa()) + 1]
DTYPES = (np.float32, np.float64)
#: Kernel against the float64 reference: a few ulp of unit-scale values.
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}
#: Cell steps (a few operations and activations deep) against the reference.
CELL_TOL = {np.float32: dict(rtol=1e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
CELLS = {  # name -> (kernel code, gates)
    "gru": (_kernels.RNN_CELL_GRU, 3),
    "gru_rb": (_kernels.RNN_CELL_GRU_RB, 3),
    "lstm": (_kernels.RNN_CELL_LSTM, 4),
    "simple": (_kernels.RNN_CELL_SIMPLE, 1),
    "lstm_peep": (_kernels.RNN_CELL_LSTM_PEEP, 4),  # ONNX: peepholes (input_forget: below)
}


def test_imports_with_the_best_isa_or_the_one_asked_for():
    """The best ISA by default; with RNNFAST_ISA, the best one not above it."""
    levels, best = _kernels.ISA_LEVELS, _kernels.best_isa()
    asked = os.environ.get("RNNFAST_ISA", "").strip().lower()
    want = best if asked in ("", "auto", "best") else levels[min(levels.index(asked), levels.index(best))]
    assert _kernels.isa() == os.environ.get("RNNFAST_EXPECT_ISA", want)


def test_isa_levels_come_from_the_enum():
    assert _kernels.ISA_LEVELS[:3] == ("baseline", "avx2", "avx512")
    assert _kernels.ISA_LEVELS.index("avx2") == _kernels.RNN_ISA_AVX2
    assert len(_kernels.ISA_LEVELS) == _kernels.RNN_ISA_COUNT


def test_an_isa_not_available_is_refused():
    with pytest.raises(ValueError, match="unknown instruction set"):
        _kernels.activate(_kernels.RNN_ACT_TANH, np.zeros(3), isa="avx9000")
    for isa in _kernels.ISA_LEVELS[len(ISAS) :]:
        with pytest.raises(ValueError, match="not in this build or not on this CPU"):
            _kernels.activate(_kernels.RNN_ACT_TANH, np.zeros(3), isa=isa)


def test_unknown_isa_in_the_environment_is_refused():
    env = dict(os.environ, RNNFAST_ISA="avx9000")
    r = subprocess.run([sys.executable, "-c", "import rnnfast"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "RNNFAST_ISA" in r.stderr


@pytest.mark.parametrize("isa", ISAS[:-1])
def test_the_environment_selects_a_lower_isa(isa):
    """RNNFAST_ISA switches the whole process, engine included (one small layer)."""
    code = (
        "import numpy as np, rnnfast; from rnnfast import _kernels, reference;"
        "from rnnfast.layers import RNNLayer, CellWeights;"
        "assert _kernels.isa() == %r, _kernels.isa();"
        "r = np.random.default_rng(0); u = lambda *s: r.uniform(-.3, .3, s);"
        "w = [CellWeights(u(5, 3 * 130), u(130, 3 * 130), u(3 * 130), u(3 * 130))];"
        "x = r.standard_normal((9, 3, 5));"
        "got = RNNLayer('gru', w, dtype=np.float64).forward(x, num_threads=2)[0];"
        "want = reference.run_layer('gru', w, x)[0];"
        "np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)" % isa
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, RNNFAST_ISA=isa), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]


# -- activations ---------------------------------------------------------------------

VALUES = np.concatenate(
    [
        np.linspace(-30, 30, 1201),
        np.linspace(-1, 1, 401),
        [
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            0.625,
            -0.625,
            20.0,
            20.5,
            87.5,
            -87.5,
            88.5,
            -88.5,
            709.5,
            -709.5,
            710.0,
            -710.0,
            3e38,
            -3e38,
            1e300,
            -1e300,
            np.inf,
            -np.inf,
            np.nan,
        ],
    ]
)


def _expected(name, v, dtype):
    with np.errstate(all="ignore"):
        return reference.ACT[name](v.astype(np.float64)).astype(dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_activation_against_float64(isa, dtype):
    with np.errstate(all="ignore"):
        v = VALUES.astype(dtype)
    for name, code in ACTIVATIONS.items():
        got = v.copy()
        _kernels.activate(code, got, isa=isa)
        want = _expected(name, v, dtype)
        where = "%s %s %s" % (isa, np.dtype(dtype).name, name)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=where)
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=where)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=where)
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], err_msg=where, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_agree_across_isas_and_lengths(dtype):
    """Each ISA agrees with the baseline to an ulp or two, and a value's result does not
    depend on the length of the vector (vector bodies and their remainders)."""
    rng = np.random.default_rng(1)
    v = (rng.standard_normal(203) * 4).astype(dtype)
    for code in ACTIVATIONS.values():
        base = v.copy()
        _kernels.activate(code, base, isa="baseline")
        for isa in ISAS:
            got = v.copy()
            _kernels.activate(code, got, isa=isa)
            np.testing.assert_allclose(
                got, base, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps, err_msg=isa
            )
            for n in (1, 5, 15, 16, 17, 33):
                part = v[:n].copy()
                _kernels.activate(code, part, isa=isa)
                np.testing.assert_array_equal(part, got[:n], err_msg="%s n=%d" % (isa, n))


# -- the gate math of one step ----------------------------------------------------------


def _step_inputs(rng, cell, dtype, nrows=5, I=7, H=37, scale=1.0):
    """Canonical weights and one step's operands: the kernel gets the products (xp =
    x W + biases, gh = h U), the reference the weights."""
    G = CELLS[cell][1]
    s = scale / np.sqrt(H)
    w = CellWeights(
        rng.uniform(-s, s, (I, G * H)),
        rng.uniform(-s, s, (H, G * H)),
        rng.uniform(-s, s, G * H),
        rng.uniform(-s, s, G * H),
    )
    if cell == "lstm_peep":
        w = dataclasses.replace(w, peephole=rng.uniform(-1, 1, (3, H)))
    x = rng.standard_normal((nrows, I))
    h = 0.8 * rng.standard_normal((nrows, H))
    c = 0.8 * rng.standard_normal((nrows, H))
    # what the kernel gets, rounded to dtype first so that both sides start equal
    x, h, c = (a.astype(dtype).astype(np.float64) for a in (x, h, c))
    w = CellWeights(
        *(
            None if a is None else a.astype(dtype).astype(np.float64)
            for a in (w.kernel, w.recurrent_kernel, w.bias, w.recurrent_bias, w.projection, w.peephole)
        )
    )
    xp = x @ w.kernel + w.bias
    bhn = np.zeros(H)
    if cell == "gru":  # reset-after keeps the candidate's recurrent bias apart
        xp[:, : 2 * H] += w.recurrent_bias[: 2 * H]
        bhn = w.recurrent_bias[2 * H :]
    else:
        xp += w.recurrent_bias
    gh = h @ w.recurrent_kernel
    return w, x, h, c, xp, gh, bhn


def _reference_step(cell, w, x, h, c, act, ract, clip=None, input_forget=False):
    """The cell registry's float64 step (rnnfast.cells), activations by name."""
    act_fn, ract_fn = reference.ACT[act], reference.ACT[ract]
    if cell in ("gru", "gru_rb"):
        (h_new,) = cells.gru_step(x, (h,), w, act_fn, ract_fn, reset_after=cell == "gru", clip=clip)
        return h_new, None
    if cell in ("lstm", "lstm_peep"):
        return cells.lstm_step(x, (h, c), w, act_fn, ract_fn, clip=clip, input_forget=input_forget)
    (h_new,) = cells.simple_step(x, (h,), w, act_fn, clip=clip)
    return h_new, None


def _kernel_step(isa, cell, act, ract, dtype, xp, gh, bhn, h, c, mask, w, clip=0.0, input_forget=False):
    hk, ck = h.astype(dtype), c.astype(dtype)
    _kernels.cell_step(
        CELLS[cell][0],
        ACTIVATIONS[act],
        ACTIVATIONS[ract],
        xp.astype(dtype),
        gh.astype(dtype),
        bhn.astype(dtype),
        hk,
        ck,
        mask,
        U=np.ascontiguousarray(w.recurrent_kernel, dtype=dtype),  # for a cell making its own products
        peep=None if w.peephole is None else np.ascontiguousarray(w.peephole, dtype=dtype),
        clip=clip,
        input_forget=input_forget,
        isa=isa,
    )
    return hk, ck


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_every_cell_with_every_activation_against_float64(isa, dtype, cell):
    """Each cell's step for every (activation, recurrent activation) pair -- the fused
    fast paths (sigmoid, tanh) and the general ones -- with masked rows carried over."""
    rng = np.random.default_rng(list(CELLS).index(cell))
    w, x, h, c, xp, gh, bhn = _step_inputs(rng, cell, dtype)
    mask = np.array([1, 0, 1, 1, 0], np.uint8)
    racts = ["linear"] if cell == "simple" else list(ACTIVATIONS)
    for act in ACTIVATIONS:
        for ract in racts:
            hk, ck = _kernel_step(isa, cell, act, ract, dtype, xp, gh, bhn, h, c, mask, w)
            want_h, want_c = _reference_step(cell, w, x, h, c, act, ract)
            where = "%s %s %s act=%s ract=%s" % (isa, np.dtype(dtype).name, cell, act, ract)
            keep = mask == 0
            np.testing.assert_array_equal(hk[keep], h[keep].astype(dtype), err_msg=where)
            np.testing.assert_allclose(hk[~keep], want_h[~keep], err_msg=where, **CELL_TOL[dtype])
            if cell in ("lstm", "lstm_peep"):
                np.testing.assert_array_equal(ck[keep], c[keep].astype(dtype), err_msg=where)
                np.testing.assert_allclose(ck[~keep], want_c[~keep], err_msg=where, **CELL_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_cells_agree_across_isas(dtype, cell):
    """Each ISA's step agrees with the baseline's to a few ulp, for the fused path
    (sigmoid, tanh) and a general one, with H on and off the vector width."""
    eps = np.finfo(dtype).eps
    for H in (1, 16, 37, 64):
        rng = np.random.default_rng(H)
        w, x, h, c, xp, gh, bhn = _step_inputs(rng, cell, dtype, H=H)
        for act, ract in (("tanh", "sigmoid"), ("relu", "hard_sigmoid")):
            base = _kernel_step("baseline", cell, act, ract, dtype, xp, gh, bhn, h, c, None, w)
            for isa in ISAS:
                got = _kernel_step(isa, cell, act, ract, dtype, xp, gh, bhn, h, c, None, w)
                np.testing.assert_allclose(
                    got[0], base[0], rtol=16 * eps, atol=16 * eps, err_msg="%s H=%d %s" % (isa, H, act)
                )
                np.testing.assert_allclose(got[1], base[1], rtol=16 * eps, atol=16 * eps)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_clip_and_input_forget_against_float64(isa, dtype, cell):
    """ONNX's cell clip on every cell (the fused activations' case too: it takes the
    general path), and the LSTMs' input_forget, against the reference."""
    rng = np.random.default_rng(list(CELLS).index(cell) + 100)
    w, x, h, c, xp, gh, bhn = _step_inputs(rng, cell, dtype, scale=4.0)  # past the clip
    forgets = (False, True) if cell == "lstm_peep" else (False,)  # (RNNLayer runs input_forget there)
    for input_forget in forgets:
        for act, ract in (("tanh", "sigmoid"), ("relu", "hard_sigmoid")):
            hk, ck = _kernel_step(isa, cell, act, ract, dtype, xp, gh, bhn, h, c, None, w, 0.7, input_forget)
            want_h, want_c = _reference_step(cell, w, x, h, c, act, ract, 0.7, input_forget)
            where = "%s %s %s %s input_forget=%s" % (isa, np.dtype(dtype).name, cell, act, input_forget)
            np.testing.assert_allclose(hk, want_h, err_msg=where, **CELL_TOL[dtype])
            if want_c is not None:
                np.testing.assert_allclose(ck, want_c, err_msg=where, **CELL_TOL[dtype])


# -- the packed product ----------------------------------------------------------------

ROWS = (1, 2, 5, 6, 7, 11, 12, 13)  # around the 6-row register tile
COLS = (1, 15, 16, 63, 64, 65, 127, 128, 129, 200, 257, 384, 420, 520)  # around the 64-column panels;
# 5 to 9 panels: the AVX-512 one-row product takes panels in groups of 2 to 4
DEPTH = (1, 3, 64, 100, 129, 300)  # past 128: the AVX-512 product K-blocks many rows


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_product_at_tile_and_panel_edges(isa, dtype):
    """bias + A B on every ISA within the rounding bound of float64, for row counts
    around the register tile and column counts around the panels; and each row's
    result is the same, bit for bit, whatever rows are computed with it."""
    assert _kernels.RNN_TILE_ROWS == 6 and _kernels.RNN_PANEL_COLS == 64
    rng = np.random.default_rng(7)
    eps = np.finfo(dtype).eps
    for K in DEPTH:
        for N in COLS:
            A = rng.standard_normal((max(ROWS), K)).astype(dtype)
            B = rng.standard_normal((K, N)).astype(dtype)
            bias = rng.standard_normal(N).astype(dtype)
            full = _kernels.packed_matmul(A, B, bias=bias, isa=isa)
            want = A.astype(np.float64) @ B.astype(np.float64) + bias
            bound = 2 * (K + 1) * eps * (np.abs(A).astype(np.float64) @ np.abs(B) + np.abs(bias))
            assert np.all(np.abs(full - want) <= bound), "%s K=%d N=%d" % (isa, K, N)
            nobias = _kernels.packed_matmul(A, B, isa=isa)
            assert np.all(np.abs(nobias - (want - bias)) <= bound), "%s K=%d N=%d" % (isa, K, N)
            for M in ROWS:
                np.testing.assert_array_equal(
                    _kernels.packed_matmul(A[:M], B, bias=bias, isa=isa),
                    full[:M],
                    err_msg="%s M=%d K=%d N=%d" % (isa, M, K, N),
                )
            for i in (0, max(ROWS) - 1):
                np.testing.assert_array_equal(_kernels.packed_matmul(A[i : i + 1], B, bias=bias, isa=isa)[0], full[i])


@pytest.mark.parametrize("isa", ISAS)
def test_packed_product_past_its_row_block(isa):
    """Many rows (a chunk's projection): row blocks of the AVX-512 product (240 rows)
    with K blocks (128 steps: the generic CPU family's blocking, whatever this CPU's)
    and the prefetch of the block read next, at panel and row-block edges; each row the
    same, bit for bit, as computed alone or in a tile."""
    _kernels.product_tuning(*_kernels.family_tunings()["generic"])
    try:
        _product_past_its_row_block(isa)
    finally:
        _kernels.product_tuning(reset=True)


def _product_past_its_row_block(isa):
    rng = np.random.default_rng(11)
    eps = np.finfo(np.float32).eps
    K = 300
    for N in (64, 129, 320):
        A = rng.standard_normal((490, K)).astype(np.float32)
        B = rng.standard_normal((K, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        full = _kernels.packed_matmul(A, B, bias=bias, isa=isa)
        want = A.astype(np.float64) @ B.astype(np.float64) + bias
        bound = 2 * (K + 1) * eps * (np.abs(A).astype(np.float64) @ np.abs(B) + np.abs(bias))
        assert np.all(np.abs(full - want) <= bound), "%s N=%d" % (isa, N)
        for M in (239, 240, 241, 246, 481):
            np.testing.assert_array_equal(_kernels.packed_matmul(A[:M], B, bias=bias, isa=isa), full[:M])
        for i in (0, 239, 240, 489):
            np.testing.assert_array_equal(_kernels.packed_matmul(A[i : i + 6], B, bias=bias, isa=isa), full[i : i + 6])


#: The product's blockings tried (kblock, mblock, prefetch): every CPU family's, and
#: odd ones (blocks of one step or one row, blocks not a multiple of the tile).
TUNINGS = sorted(set(_kernels.family_tunings().values())) + [(1, 1, 1), (7, 6, 1), (64, 13, 0), (300, 480, 1)]


def test_cpu_family_and_its_tuning():
    """This CPU's family is one of the dispatcher's, its tuning the current one at import
    (and after reset); a blocking that cannot be is refused."""
    assert _kernels.cpu_family() in _kernels.family_tunings()
    assert set(_kernels.family_tunings()) == {"generic", "zen4", "zen1"}
    mine = _kernels.family_tunings()[_kernels.cpu_family()]
    assert _kernels.product_tuning() == mine
    try:
        assert _kernels.product_tuning(7, 6, 1 - mine[2]) == (7, 6, 1 - mine[2])
        assert _kernels.product_tuning(mblock=12) == (7, 12, 1 - mine[2])
    finally:
        assert _kernels.product_tuning(reset=True) == mine
    for bad in (dict(kblock=0), dict(mblock=0), dict(kblock=-2), dict(prefetch=2), dict(prefetch=-2)):
        with pytest.raises(ValueError):
            _kernels.product_tuning(**bad)
    assert _kernels.product_tuning() == mine


@pytest.mark.parametrize("isa", ISAS)
def test_packed_product_same_bits_under_every_blocking(isa):
    """The product's blocking (each CPU family's, c/isa.h; and odd ones) changes no bit
    of the result: every element is one chain of multiply-adds over k whatever the K
    blocks, row blocks and prefetches, at one row, a tile's, and many (a projection)."""
    rng = np.random.default_rng(13)
    cases = []
    for M, K, N in ((1, 300, 320), (6, 129, 200), (13, 300, 129), (64, 257, 256), (490, 300, 320)):
        cases.append(
            (
                rng.standard_normal((M, K)).astype(np.float32),
                rng.standard_normal((K, N)).astype(np.float32),
                rng.standard_normal(N).astype(np.float32),
            )
        )
    try:
        want = None
        for tuning in TUNINGS:
            _kernels.product_tuning(*tuning)
            got = [_kernels.packed_matmul(A, B, bias=bias, isa=isa) for A, B, bias in cases]
            if want is None:
                want = got
            for g, w, (A, B, _) in zip(got, want, cases):
                np.testing.assert_array_equal(g, w, err_msg="%s %s %s x %s" % (isa, tuning, A.shape, B.shape))
    finally:
        _kernels.product_tuning(reset=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndir", [1, 2])
def test_packed_weights_start_on_cache_lines(dtype, ndir):
    """Packed weights start on a 64-byte boundary, each direction's too: the products
    load whole cache lines of a panel (numpy's own allocation of a large array is
    16 bytes past one, and every load of an unaligned panel spans two lines)."""
    rng = np.random.default_rng(3)
    for K, GH, ncb in ((256, 768, 4), (300, 1024, 4), (9, 48, 1)):
        M = rng.standard_normal((ndir, K, GH)).astype(dtype)
        packed = _kernels.pack_blocks(M, GH // 16, ncb)
        assert packed.ctypes.data % 64 == 0
        assert packed.strides[0] % 64 == 0


@pytest.mark.parametrize("K", [5, 130])
def test_one_row_int8_product_same_bits_in_either_order(K):
    """A one-row int8 product (a batch-1 step) runs its panels and K forward and
    backward on alternate calls (c/x86/avx512_vnni_quant.h: a step starts on the
    weights the last one read last): on every kernel set and for 1 to 9 panels (4 at a
    time, then 2, then 1; the last partial), consecutive calls give the same bits as
    each other and as the row's place in a multi-row product, and match float64."""
    from rnnfast import _quant

    rng = np.random.default_rng(K)
    code = _quant.PRECISIONS["int8"]
    A = rng.standard_normal((5, K)).astype(np.float32)
    for N in (40, 64, 130, 192, 256, 300, 384, 512, 520):
        W = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        data, scale, comp = _quant.pack_block(W, code)
        want = _quant.reference_product(A, W, "int8", b, 0)
        mag = np.abs(_quant.activations(A, "int8", 0)) @ np.abs(_quant.dequantized(W, "int8", 0)) + np.abs(b)
        for isa in _kernels.quant_isas():
            rows = _kernels.qmatmul(code, A, data, N, scale, comp, bias=b, isa=isa)
            assert np.all(np.abs(rows - want) <= 4 * np.finfo(np.float32).eps / 2 * mag), (isa, N)
            for i in range(3):
                one = [_kernels.qmatmul(code, A[i : i + 1], data, N, scale, comp, bias=b, isa=isa) for _ in range(2)]
                assert np.array_equal(one[0], rows[i : i + 1]) and np.array_equal(one[1], rows[i : i + 1]), (isa, N, i)


def _widened(a, G, H):
    """(rows, G*H) gate-major columns with one more unit per gate (its columns 1.0)."""
    rows = a.shape[0]
    out = np.ones((rows, G, H + 1), a.dtype)
    out[:, :, :H] = a.reshape(rows, G, H)
    return out.reshape(rows, G * (H + 1))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_a_units_step_does_not_depend_on_the_block_width(isa, cell):
    """float32 GRU and LSTM with sigmoid gates and tanh: the fused steps (x86/avx2_cellmath.h
    for widths of whole eight-unit groups, x86/avx512_cellmath.h) give each unit the bits
    of the portable body (a width of 8k + 1 units runs it on AVX2), saturated gates and
    clamps included (sigmoid of -88 and below, tanh of 2|x| >= 40); NaN stays NaN."""
    code, G = CELLS[cell]
    rng = np.random.default_rng(7)
    rows, H = 6, 64
    special = np.array(
        [
            0.0,
            -0.0,
            87.0,
            -87.0,
            88.0,
            -88.0,
            88.5,
            -88.5,
            100.0,
            -100.0,
            20.0,
            -20.0,
            9.5,
            1e-30,
            3e38,
            -3e38,
            np.inf,
            -np.inf,
        ],
        np.float32,
    )

    def values(n):
        v = np.concatenate(
            [rng.uniform(-6, 6, n // 2), rng.uniform(-120, 120, n // 4), rng.choice(special, n - n // 2 - n // 4)]
        )
        return rng.permutation(v).astype(np.float32)

    xp = values(rows * G * H).reshape(rows, G * H)
    gh = values(rows * G * H).reshape(rows, G * H)
    bhn, h, c = values(H), values(rows * H).reshape(rows, H), rng.uniform(-3, 3, (rows, H)).astype(np.float32)
    xp[0, 0] = np.nan  # a NaN gate: its unit's outputs are NaN either way
    mask = np.array([1, 0, 1, 1, 1, 1], np.uint8)
    got_h, got_c = h.copy(), c.copy()
    _kernels.cell_step(code, _kernels.RNN_ACT_TANH, _kernels.RNN_ACT_SIGMOID, xp, gh, bhn, got_h, got_c, mask, isa=isa)
    wide_h, wide_c = _widened(h, 1, H), _widened(c, 1, H)
    _kernels.cell_step(
        code, _kernels.RNN_ACT_TANH, _kernels.RNN_ACT_SIGMOID, _widened(xp, G, H), _widened(gh, G, H),
        _widened(bhn[None], 1, H)[0], wide_h, wide_c, mask, isa=isa,
    )  # fmt: skip
    for got, want in ((got_h, wide_h[:, :H]), (got_c, wide_c[:, :H])):
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan, err_msg=isa)
        np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32), err_msg=isa)
    assert np.isnan(got_h[0, 0])
