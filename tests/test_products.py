"""The products outside the recurrent layers (rnnfast._products): the core's packed
product in rnnfast's own threads, never NumPy's BLAS; the same bits for every thread
count; against a float64 reference."""

import pickle

import numpy as np
import pytest

from rnnfast import _kernels, _plan, _products, _rowops, _special, ops
from rnnfast.layers import ACTIVATIONS, Dense

SHAPES = [
    ((5, 7), (7, 3)),
    ((2, 5, 7), (7, 3)),
    ((2, 3, 5, 7), (2, 3, 7, 4)),
    ((2, 3, 5, 7), (3, 7, 4)),
    ((5, 7), (2, 3, 7, 4)),
    ((2, 1, 5, 7), (1, 3, 7, 4)),
    ((130, 64), (64, 70)),
    ((3, 0, 4), (4, 5)),
    ((3, 4), (4, 0)),
]


@pytest.fixture
def split_everything(monkeypatch):
    """Every product splits among the team, however small."""
    monkeypatch.setattr(_plan, "MIN_PRODUCT_FLOPS_PER_THREAD", 1)
    _kernels.team_backoff(reset=True)
    yield
    _kernels.team_backoff(reset=True)


@pytest.fixture
def no_numpy_matmul(monkeypatch):
    """NumPy's matmul (its own multithreaded BLAS) is not called (``@`` cannot be
    patched: the source below uses neither)."""

    def refuse(*a, **k):
        raise AssertionError("NumPy's matmul called")

    monkeypatch.setattr(np, "matmul", refuse)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb", SHAPES)
def test_matmul_against_float64_and_bitwise_for_any_thread_count(rng, split_everything, dt, sa, sb):
    a = rng.standard_normal(sa).astype(dt)
    b = rng.standard_normal(sb).astype(dt)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    outs = [_products.matmul(a, b, num_threads=n) for n in (1, 2, 3, 4)]
    assert outs[0].shape == ref.shape and outs[0].dtype == dt
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-5)
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_matmul_reads_transposed_heads_in_place(rng, split_everything):
    """Attention's scores: q (B, N, Tq, d) and k^T (B, N, d, Tv), both strided views."""
    q = rng.standard_normal((2, 6, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    k = rng.standard_normal((2, 9, 3, 8)).astype(np.float32).transpose(0, 2, 3, 1)
    bias = rng.standard_normal(9).astype(np.float32)
    ref = q.astype(np.float64) @ k.astype(np.float64) + bias
    got = [_products.matmul(q, k, bias, num_threads=n) for n in (1, 2, 3)]
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(g, got[0]) for g in got)


@pytest.mark.parametrize("B,M", [(1, 1), (64, 1), (5, 4), (3, 5)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_of_few_rows_against_per_batch_or_strided_b(rng, split_everything, no_numpy_matmul, B, M, transposed):
    """A decoder step's attention, q (B, M, d) @ enc^T (B, d, S) then weights @ enc: M at
    most FEW_ROWS on the row kernel (no packing), more on the core's product; with a
    bias and an activation, the same bits for any thread count."""
    q = rng.standard_normal((B, M, 16)).astype(np.float32)
    enc = rng.standard_normal((B, 20, 16)).astype(np.float32)
    b = enc.transpose(0, 2, 1) if transposed else rng.standard_normal((B, 16, 20)).astype(np.float32)
    bias = rng.standard_normal(20).astype(np.float32)
    ref = np.tanh(np.einsum("bmk,bkn->bmn", q.astype(np.float64), b.astype(np.float64)) + bias)
    tanh = int(_kernels.RNN_ACT_TANH)
    got = [_products.matmul(q, b, bias, num_threads=n, act=tanh) for n in (1, 2)]
    assert got[0].shape == (B, M, 20) and got[0].dtype == np.float32 and got[0].flags.c_contiguous
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(got[0], got[1])
    one = _products.matmul(q[0], b[0], num_threads=1)  # (M, 16) @ (16, 20): one B, maybe transposed
    np.testing.assert_allclose(one, q[0].astype(np.float64) @ b[0].astype(np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_dense_against_float64_and_bitwise_for_any_thread_count(rng, split_everything, act):
    kernel = rng.standard_normal((40, 30))
    bias = rng.standard_normal(30)
    d = Dense(kernel, bias, activation=act)
    x = rng.standard_normal((4, 33, 40)).astype(np.float32)
    z = x.astype(np.float64) @ kernel + bias
    ref = {
        "linear": z,
        "relu": np.maximum(z, 0),
        "tanh": np.tanh(z),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "softmax": np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True),
    }[act]
    outs = [d.forward(x, num_threads=n) for n in (1, 2, 3)]
    np.testing.assert_allclose(outs[0], ref, rtol=2e-4, atol=2e-5)
    assert all(np.array_equal(o, outs[0]) for o in outs)


@pytest.mark.parametrize("act", [-1, ACTIVATIONS["tanh"], _products.ROW_LOG_SOFTMAX])
@pytest.mark.parametrize("M", [1, 3, 40])
def test_dense_of_2d_rows_contiguous_or_not_the_bits_of_3d(rng, act, M):
    """dense on 2-D C-contiguous rows (a Gemm's: taken as they are), on a strided 2-D
    view and on the same rows in 3-D: one result, bit for bit, new arrays of (.., N),
    and float64's values."""
    kernel, bias = rng.standard_normal((24, 37)).astype(np.float32), rng.standard_normal(37).astype(np.float32)
    packed = _products.pack(kernel)
    wide = rng.standard_normal((M, 48)).astype(np.float32)
    x = np.ascontiguousarray(wide[:, ::2])
    got = _products.dense(x, packed, 37, bias, act, num_threads=1)
    strided = _products.dense(wide[:, ::2], packed, 37, bias, act, num_threads=1)
    in3d = _products.dense(x[None], packed, 37, bias, act, num_threads=1)
    assert got.shape == (M, 37) and in3d.shape == (1, M, 37) and got.base is None
    assert np.array_equal(got, strided) and np.array_equal(got, in3d[0])
    z = x.astype(np.float64) @ kernel.astype(np.float64) + bias
    if act == ACTIVATIONS["tanh"]:
        z = np.tanh(z)
    elif act == _products.ROW_LOG_SOFTMAX:
        z = z - z.max(-1, keepdims=True)
        z = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, z, rtol=1e-4, atol=1e-5)


def test_dense_conv_attention_never_call_numpys_blas(rng, no_numpy_matmul):
    """The products of Dense, Conv1D and MultiHeadAttention run on the core's product:
    NumPy's matmul (its own threads: on a busy machine up to 40 ms to wake for a 0.03
    ms product) is never called."""
    Dense(rng.standard_normal((8, 5))).forward(rng.standard_normal((3, 8)).astype(np.float32), num_threads=2)
    x = rng.standard_normal((2, 12, 6)).astype(np.float32)
    ops.conv1d(x, rng.standard_normal((3, 6, 4)).astype(np.float32), np.ones(4, np.float32), num_threads=2)
    ops.conv1d(x, rng.standard_normal((3, 3, 4)).astype(np.float32), None, groups=2, num_threads=2)
    w = [
        rng.standard_normal(s).astype(np.float32)
        for s in [(6, 2, 4), (2, 4), (6, 2, 4), (2, 4), (6, 2, 4), (2, 4), (2, 4, 6), (6,)]
    ]
    ops.multi_head_attention(x, x, x, *w, num_threads=2)


def test_dense_pickles_without_its_packed_kernel(rng):
    d = Dense(rng.standard_normal((8, 5)), rng.standard_normal(5))
    x = rng.standard_normal((3, 8)).astype(np.float32)
    y = d.forward(x)
    assert d._packed is not None
    e = pickle.loads(pickle.dumps(d))
    assert getattr(e, "_packed", None) is None
    assert np.array_equal(e.forward(x), y)


def _gemm_op(W, C, transB, alpha=1.0, beta=1.0, transA=0):
    from rnnfast.model_onnx import ProductOp

    attrs = {"alpha": alpha, "beta": beta, "transA": transA, "transB": transB, "_name": "g"}
    slots = [("key", 0), ("const", W), None if C is None else ("const", C)]
    return ProductOp("Gemm", "g", slots, 1, attrs)


@pytest.mark.parametrize(
    "transB,alpha,beta,cshape",
    [(1, 1.0, 1.0, (30,)), (0, 1.0, 0.5, (1, 30)), (1, 2.0, 1.0, (30,)), (0, 1.0, 1.0, None)],
)
def test_onnx_gemm_on_packed_weights_against_float64_and_bitwise(
    rng, split_everything, no_numpy_matmul, transB, alpha, beta, cshape
):
    """ONNX Gemm with constant weights (exporters' Linear): packed once at load, its C
    the product's bias where it can be; against float64, the same bits for any thread
    count; a data ``C`` (spanning rows) and a data ``B`` on the product too."""
    W = rng.standard_normal((30, 40) if transB else (40, 30)).astype(np.float32)
    C = None if cshape is None else rng.standard_normal(cshape).astype(np.float32)
    op = _gemm_op(W, C, transB, alpha, beta)
    x = rng.standard_normal((70, 40)).astype(np.float32)
    w64 = W.astype(np.float64).T if transB else W.astype(np.float64)
    ref = alpha * (x.astype(np.float64) @ w64) + (0 if C is None else beta * C.astype(np.float64))
    outs = [op.compute([x, W, C], n)[0] for n in (1, 2, 3)]
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(o, outs[0]) for o in outs)
    # data operands: the generic product
    from rnnfast.model_onnx import ProductOp

    attrs = {"alpha": alpha, "beta": beta, "transA": 1, "transB": transB, "_name": "g"}
    dyn = ProductOp("Gemm", "g", [("key", 0), ("key", 1), ("key", 2)], 1, attrs)
    Cr = rng.standard_normal((70, 30)).astype(np.float32)
    got = dyn.compute([np.ascontiguousarray(x.T), W, Cr], 2)[0]
    np.testing.assert_allclose(got, alpha * (x.astype(np.float64) @ w64) + beta * Cr, rtol=1e-5, atol=1e-5)


def test_onnx_matmul_on_packed_weights(rng, split_everything, no_numpy_matmul):
    from rnnfast.model_onnx import ProductOp

    W = rng.standard_normal((16, 9)).astype(np.float32)
    op = ProductOp("MatMul", "m", [("key", 0), ("const", W)], 1, {"_name": "m"})
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    outs = [op.compute([x, W], n)[0] for n in (1, 2, 3)]
    np.testing.assert_allclose(outs[0], x.astype(np.float64) @ W, rtol=1e-5, atol=1e-5)
    assert all(np.array_equal(o, outs[0]) for o in outs)
    dyn = ProductOp("MatMul", "m", [("key", 0), ("key", 1)], 1, {"_name": "m"})
    b = rng.standard_normal((3, 16, 4)).astype(np.float32)
    np.testing.assert_allclose(dyn.compute([x, b], 2)[0], x.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_onnx_matmul_of_a_vector_as_numpy(rng):
    from rnnfast.model_onnx import ProductOp

    W = rng.standard_normal((16, 9)).astype(np.float32)
    op = ProductOp("MatMul", "m", [("key", 0), ("const", W)], 1, {"_name": "m"})
    v = rng.standard_normal(16).astype(np.float32)
    np.testing.assert_allclose(op.compute([v, W], 1)[0], v.astype(np.float64) @ W, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("K,N", [(150, 37), (16, 16), (48, 20), (256, 20), (15, 33), (20, 300), (64, 130)])
def test_few_rows_give_the_bits_of_the_same_rows_in_a_larger_batch(rng, dtype, transposed, K, N):
    """A row's values do not depend on its batch: the few-row product (read in place)
    sums each element in the packed product's chain, bias first (streaming contract).
    K past the row kernel's k block and its 16 x 16 transposes of B^T (attention's k^T,
    AVX-512), or short of them; N past its lanes, and past its wide blocks of contiguous
    columns (8 vectors of 16 on AVX-512, 4 on AVX2) and their tail."""
    q = rng.standard_normal((9, K)).astype(dtype)
    b = rng.standard_normal((N, K)).astype(dtype).T if transposed else rng.standard_normal((K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    many = _products.matmul(q, b, bias, num_threads=1)  # 9 rows: the packed product
    ref = q.astype(np.float64) @ b.astype(np.float64) + bias
    np.testing.assert_allclose(many, ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
    for m in (1, 2, 4):
        few = _products.matmul(q[None, :m], b[None], bias, num_threads=1)[0]
        np.testing.assert_array_equal(few, many[:m])
        y = np.empty((1, 1, m, N), dtype)
        _rowops.rows_products(q[None, None, :m], b[None, None], y, bias)
        np.testing.assert_array_equal(y[0, 0], many[:m])


@pytest.mark.parametrize("K", [256, 300])
@pytest.mark.parametrize("N", [5, 16, 29, 32, 33, 93])
def test_narrow_panels_give_a_rows_bits_in_any_batch(rng, K, N):
    """A head of a few classes (N % 64 <= 32: AVX-512 runs the panel's first 32 columns
    only, 12 rows at a time): against float64, and each row's bits those of the row
    alone (one row runs the wide tile or the one-row path), for row counts that leave
    every remainder of the 12-row tile, and K past the product's k block."""
    x = rng.standard_normal((12 * 25 + 11, K)).astype(np.float32)
    w = (0.1 * rng.standard_normal((K, N))).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    p = _products.pack(w)
    many = _products.dense(x, p, N, b, num_threads=1)
    np.testing.assert_allclose(many, x.astype(np.float64) @ w + b, rtol=1e-4, atol=1e-4)
    for r in range(1, 12):
        np.testing.assert_array_equal(_products.dense(x[:r], p, N, b, num_threads=1), many[:r])
    for i in (0, 11, 12, 150, len(x) - 1):
        np.testing.assert_array_equal(_products.dense(x[i : i + 1], p, N, b, num_threads=1), many[i : i + 1])


def _softmax64(x, log=False):
    d = x.astype(np.float64) - x.max(-1, keepdims=True)
    s = np.exp(d).sum(-1, keepdims=True)
    return d - np.log(s) if log else np.exp(d) / s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("n", [1, 5, 16, 37, 512, 513, 1100, 8000, 40000])
def test_row_softmax_against_float64_and_the_same_bits_per_row(rng, dtype, log, n):
    """The compiled row (log-)softmax: against float64, a row's bits the same alone, in
    any batch and on any thread count. Rows of one block of columns and of many (the
    sum's fixed partition, c/rowops.template.h), past the blocks kept on the stack."""
    x = (3 * rng.standard_normal((70, n))).astype(dtype)
    x[3, : max(1, n // 2)] = -200  # exps under the range: 0
    got = [_special.row_softmax(x, log, num_threads=t) for t in (1, 2)]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[0], _softmax64(x, log), **tol)
    assert got[0].dtype == dtype and got[0].shape == x.shape
    np.testing.assert_array_equal(got[0], got[1])
    for r in (0, 3, 69):
        np.testing.assert_array_equal(_special.row_softmax(x[r : r + 1], log), got[0][r : r + 1])
    y = x.copy()
    _special.row_softmax(y, log, out=y)  # in place
    np.testing.assert_array_equal(y, got[0])


def test_row_softmax_splits_among_threads_with_the_same_bits(rng, monkeypatch):
    monkeypatch.setattr(_special, "SOFTMAX_ELEMENTS_PER_THREAD", 16)
    x = rng.standard_normal((33, 40)).astype(np.float32)
    got = [_special.row_softmax(x, num_threads=t) for t in (1, 2, 3)]
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log", [False, True])
def test_row_softmax_blocks_far_apart_of_minus_inf_and_nan(dtype, log):
    """The blocks' sums combined at the row's max: blocks whose maxima lie far below the
    row's (their exps under the range, or all -inf: 0) against float64; a NaN in one
    block makes the whole row NaN."""
    n = 2000  # four blocks of 512 columns, the last shorter
    x = np.linspace(-3, 3, n).astype(dtype)[None].repeat(4, 0)
    x[0, :512] -= 120  # block 0 far below the others
    x[1, 512:1024] = -np.inf  # a block of -inf
    x[2, :1536] = -np.inf  # all but the last block
    x[3, 1700] = np.nan
    got = _special.row_softmax(x, log)
    with np.errstate(all="ignore"):
        want = _softmax64(x, log)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[3]).all()
    ok = np.isfinite(want[:3])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got[:3][ok], want[:3][ok], **tol)
    if not log:
        assert (got[1, 512:1024] == 0).all() and (got[2, :1536] == 0).all()
        np.testing.assert_allclose(got[:3].astype(np.float64).sum(-1), 1, rtol=1e-5)
    else:
        assert (got[1, 512:1024] == -np.inf).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("n", [37, 520])
def test_row_softmax_of_differences_far_under_exps_range(dtype, log, n):
    """Differences from the max far under exp's range, to the most negative finite value
    (the vectorised exp masks such lanes to 0 after computing them, without a clamp
    before): their exps exactly 0, the rest against float64, in every lane of the
    vectors and in a row's tail."""
    lo = np.finfo(dtype).min
    x = np.tile(np.linspace(-5, 5, n).astype(dtype), (4, 1))
    x[0, ::3] = lo
    x[1, 1::2] = -1e30
    x[2, : n // 2] = x[2, : n // 2] - 86.5  # (around the float cut at -87)
    x[3, 5::7] = lo / 2
    with np.errstate(all="ignore"):
        want = _softmax64(x, log)
    got = _special.row_softmax(x, log)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got, want, **tol)
    if not log:
        assert (got[0, ::3] == 0).all() and (got[1, 1::2] == 0).all() and (got[3, 5::7] == 0).all()


def test_row_softmax_of_nan_and_inf_rows_as_numpy():
    """A NaN, or an infinity that makes the max infinite, makes the whole row NaN; a
    row of -inf is NaN too (NumPy's x - max); -inf among finite values gives 0."""
    x = np.array([[1, np.nan, 3], [-np.inf, -np.inf, -np.inf], [np.inf, 1, 2], [-np.inf, 0, 1], [0, 0, 0]], np.float32)
    with np.errstate(all="ignore"):
        want = _softmax64(x)
    got = _special.row_softmax(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[3:], want[3:], rtol=1e-6)
    assert got[3, 0] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("G,M", [(1, 1), (3, 2), (64, 1)])
def test_attend_gives_the_bits_of_its_three_ops(rng, dtype, G, M):
    """softmax(q @ k^T) @ v in one call: the bits of the few-row products and the row
    softmax one after another, for any thread count."""
    q = rng.standard_normal((G, M, 24)).astype(dtype)
    enc = rng.standard_normal((G, 7, 24)).astype(dtype)
    kt = enc.transpose(0, 2, 1)
    s = _products.matmul(q, kt, num_threads=1)
    p = _special.row_softmax(s)
    want = _products.matmul(p, enc, num_threads=1)
    for t in (1, 2):
        P, O = np.empty((G, M, 7), dtype), np.empty((G, M, 24), dtype)
        _rowops.attend(q, kt, enc, P, O, t)
        np.testing.assert_array_equal(P, p)
        np.testing.assert_array_equal(O, want)
    ref = _softmax64(q.astype(np.float64) @ kt.astype(np.float64)) @ enc
    np.testing.assert_allclose(O, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "G,M,K,T,N",
    [
        (37, 1, 256, 20, None),
        (41, 3, 40, 17, 300),
        (5, 4, 600, 9, 33),
        (16, 2, 7, 3, 130),
        (64, 1, 512, 20, 256),
        (19, 2, 256, 20, None),
        (4, 1, 256, 20, 64),
    ],
)
def test_attend_of_many_entries_gives_the_packed_products_bits(rng, dtype, G, M, K, T, N):
    """Attention over many batch entries (a decoder step at B=64: AVX-512 sums the
    scores of 16 entries at once, one per lane, K up to 512; longer rows, and a block
    of fewer than 5 entries (G 19's last 3, G 4), entry by entry): each entry's scores
    and output the bits of the packed product (rows enough for it) and the row softmax,
    whatever entries share its block (G not a multiple of 16, K not one of 16), for any
    thread count; v the keys (N None) or its own."""
    q = (rng.standard_normal((G, M, K)) / np.sqrt(K)).astype(dtype)  # scores of unit scale
    enc = rng.standard_normal((G, T, K)).astype(dtype)
    v = enc if N is None else rng.standard_normal((G, T, N)).astype(dtype)
    kt = enc.transpose(0, 2, 1)
    pad = 9  # rows: the packed product, not the few-row kernel
    want_p = np.empty((G, M, T), dtype)
    want = np.empty((G, M, v.shape[2]), dtype)
    for g in range(G):
        s = _products.matmul(np.vstack([q[g], np.zeros((pad, K), dtype)]), kt[g], num_threads=1)[:M]
        want_p[g] = _special.row_softmax(s)
        want[g] = _products.matmul(np.vstack([want_p[g], np.zeros((pad, T), dtype)]), v[g], num_threads=1)[:M]
    for t in (1, 2, 3):
        P, O = np.empty((G, M, T), dtype), np.empty_like(want)
        _rowops.attend(q, kt, v, P, O, t)
        np.testing.assert_array_equal(P, want_p)
        np.testing.assert_array_equal(O, want)
    P1, O1 = np.empty((1, M, T), dtype), np.empty((1, M, v.shape[2]), dtype)
    _rowops.attend(q[-1:], kt[-1:], v[-1:], P1, O1, 1)  # the last entry alone
    np.testing.assert_array_equal(O1[0], want[-1])
    ref = _softmax64(q.astype(np.float64) @ kt.astype(np.float64)) @ v
    np.testing.assert_allclose(O, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


class _Sub(np.ndarray):
    """An ndarray subclass: the compiled calls read it through typed memoryviews."""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_array_reads_give_the_memoryviews_bits(rng, dtype):
    """attend and the few-row products read float ndarrays through their fields
    (c/ndarray.h) and anything else through typed memoryviews: the same bits from both,
    on strided views (Q's rows apart, Kt a transpose, V every other row), a bias or
    none; what the direct reads do not take (other dtypes, read-only or non-contiguous
    outputs, shapes that do not match) gets the memoryviews' answer."""
    G, M, K, T, N = 3, 2, 24, 7, 10
    wide = rng.standard_normal((G, M, K + 5)).astype(dtype)
    q = wide[:, :, :K]  # rows contiguous, K + 5 apart
    enc = rng.standard_normal((G, 2 * T, K)).astype(dtype)
    kt, v = enc[:, :T].transpose(0, 2, 1), enc[:, ::2, :N]
    outs = []
    for view in (lambda a: a, lambda a: a.view(_Sub)):
        P, O = np.full((G, M, T), np.nan, dtype), np.full((G, M, N), np.nan, dtype)
        _rowops.attend(view(q), view(kt), view(v), view(P), view(O), 1)
        outs.append((P, O))
    assert np.array_equal(outs[0][0].view(np.uint8), outs[1][0].view(np.uint8))
    assert np.array_equal(outs[0][1].view(np.uint8), outs[1][1].view(np.uint8))
    ref = _softmax64(q.astype(np.float64) @ kt.astype(np.float64)) @ v
    np.testing.assert_allclose(outs[0][1], ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    W = rng.standard_normal((K, 700)).astype(dtype)
    Pk, x, b = _products.pack(W), rng.standard_normal((2, K)).astype(dtype), rng.standard_normal(700).astype(dtype)
    for bias in (b, np.zeros(0, dtype)):
        for call in (
            lambda A, B, c, C: _kernels.packed_rows(A, B, c, C, _kernels.RNN_ACT_TANH, 1),
            lambda A, B, c, C: _rowops.packed_rows(A, B, c, C, 1, 1),
        ):
            ys = []
            for view in (lambda a: a, lambda a: a.view(_Sub)):
                y = np.full((2, 700), np.nan, dtype)
                call(view(x), view(Pk), view(bias), view(y))
                ys.append(y)
            assert np.array_equal(ys[0].view(np.uint8), ys[1].view(np.uint8))
    # the memoryviews' answers
    P, O = np.empty((G, M, T), dtype), np.empty((G, M, N), dtype)
    with pytest.raises(ValueError, match="do not match"):
        _rowops.attend(q, kt, v, np.empty((G, M, T - 1), dtype), O, 1)
    with pytest.raises(ValueError, match="dtype mismatch"):
        _rowops.attend(q, kt.astype(np.float32 if dtype == np.float64 else np.float64), v, P, O, 1)
    ro = np.empty((G, M, N), dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _rowops.attend(q, kt, v, P, ro, 1)
    with pytest.raises(ValueError):
        _rowops.attend(q, kt, v, P, np.empty((G, M, 2 * N), dtype)[:, :, ::2], 1)
    y = np.empty((2, 700), dtype)
    for call in (_kernels.packed_rows, _rowops.packed_rows):
        with pytest.raises(ValueError, match="packed B"):
            call(x, Pk[:-1], b, y)
        with pytest.raises(ValueError):
            call(x, Pk, b, np.empty((2, 1400), dtype)[:, ::2])
        with pytest.raises((TypeError, ValueError)):
            call(x.astype(np.float16), Pk, b, y)
    with pytest.raises(ValueError, match="activation"):
        _kernels.packed_rows(x, Pk, b, y, 99)


@pytest.fixture
def partner_awake():
    """The partner thread polls for work between products (its default), and is
    restored after the test."""
    old = _rowops.partner_spin_us()
    yield
    _rowops.partner_spin_us(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(1, 256, 8000), (3, 37, 130), (4, 5, 64), (2, 64, 1), (1, 300, 65)])
@pytest.mark.parametrize("bias", [True, False])
def test_partner_packed_rows_give_the_packed_products_bits(rng, partner_awake, dtype, M, K, N, bias):
    """The few-row product on the partner thread (c/rowops.team.h): against a float64
    reference, the bits of the packed product (_kernels.packed_rows) on 1 to 3 threads,
    with the partner polling and asleep (every task then on the caller or late to it),
    and each row the bits of that row in a larger batch."""
    W = rng.standard_normal((K, N)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype) if bias else np.zeros(0, dtype)
    x = rng.standard_normal((M, K)).astype(dtype)
    P = _products.pack(W)
    ref = x.astype(np.float64) @ W.astype(np.float64) + (b.astype(np.float64) if bias else 0)
    want = np.empty((M, N), dtype)
    _kernels.packed_rows(x, P, b, want, -1, 1)
    np.testing.assert_allclose(want, ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
    for spin in (500, 0):
        _rowops.partner_spin_us(spin)
        for n in (1, 2, 3, 2, 2):
            for stream in (False, True):  # (weights prefetched past the caches where M = 1)
                got = np.full((M, N), np.nan, dtype)
                _rowops.packed_rows(x, P, b, got, n, 0, stream)
                assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (spin, n, stream)
    big = np.concatenate([rng.standard_normal((5, K)).astype(dtype), x])
    rows = np.empty((len(big), N), dtype)
    _kernels.packed_rows(big, P, b, rows, -1, 1)
    assert np.array_equal(rows[5:].view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(1, 256, 8000), (3, 37, 1100), (4, 5, 64), (2, 64, 1), (1, 30, 40000)])
@pytest.mark.parametrize("log", [False, True])
def test_partner_packed_rows_softmax_gives_the_product_then_the_row_kernel(rng, partner_awake, dtype, M, K, N, log):
    """The few-row product with its rows' (log-)softmax in its column tasks (a decoder's
    vocabulary head): the bits of the packed product followed by the row kernel, on 1 to
    3 threads, the partner polling and asleep; against float64. A bias of -inf over a
    block of columns (their exps 0) and rows past the blocks kept on the stack."""
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    b[512:1024] = -np.inf
    x = rng.standard_normal((M, K)).astype(dtype)
    P = _products.pack(W)
    want = np.empty((M, N), dtype)
    _kernels.packed_rows(x, P, b, want, -1, 1)
    with np.errstate(all="ignore"):
        ref = _softmax64(x.astype(np.float64) @ W.astype(np.float64) + b, log)
    _rowops.softmax_rows(want, want, log, 1)
    ok = np.isfinite(ref)
    np.testing.assert_allclose(want[ok], ref[ok], rtol=1e-4 if dtype == np.float32 else 1e-11, atol=1e-6)
    np.testing.assert_array_equal(want[~ok], ref[~ok])
    for spin in (500, 0):
        _rowops.partner_spin_us(spin)
        for n in (1, 2, 3, 2):
            for stream in (False, True):
                got = np.full((M, N), np.nan, dtype)
                _rowops.packed_rows(x, P, b, got, n, 2 if log else 1, stream)
                assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (spin, n, stream)
    with pytest.raises(ValueError, match="softmax"):
        _rowops.packed_rows(x, P, b, np.empty((M, N), dtype), 1, 3)


@pytest.mark.parametrize("act", [_products.ROW_SOFTMAX, _products.ROW_LOG_SOFTMAX])
@pytest.mark.parametrize("K", [70, 0])
@pytest.mark.parametrize("N", [1100, 29, 5])
@pytest.mark.parametrize("few_on_partner", [True, False])
def test_dense_row_softmax_is_the_product_then_the_row_kernel(
    rng, partner_awake, act, K, N, few_on_partner, monkeypatch
):
    """dense's ROW_SOFTMAX / ROW_LOG_SOFTMAX: the product, then _special.row_softmax over
    the last axis, on any thread count and batch (a few rows: the partner's fused tasks,
    or below PARTNER_MACS one fused call on the caller's thread)."""
    monkeypatch.setattr(_products, "PARTNER_MACS", 1 if few_on_partner else 1 << 30)
    W = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    P = _products.pack(W) if K else np.zeros(0, np.float32)
    x = rng.standard_normal((9, 2, K)).astype(np.float32)
    full = _products.dense(x, P, N, b, -1, num_threads=1)
    want = _special.row_softmax(full, act == _products.ROW_LOG_SOFTMAX)
    for n in (1, 2, 3):
        got = _products.dense(x, P, N, b, act, num_threads=n)
        assert got.shape == (9, 2, N) and np.array_equal(got, want), n
        for r in (0, 4, 8):  # a few rows
            assert np.array_equal(_products.dense(x[r], P, N, b, act, num_threads=n), want[r]), (r, n)


def test_onnx_gemm_and_softmax_fuse_into_the_head(rng, partner_awake, monkeypatch):
    """ONNX Gemm -> Softmax / LogSoftmax over the last axis is one product with the row
    kernel's softmax (_products.ROW_SOFTMAX, the partner's tasks at a few rows and 2+
    threads); against ONNX Runtime, the same bits for 1 to 3 threads and for a row alone
    or in a batch. Another axis stays the ops one by one."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    import rnnfast
    from rnnfast.model_onnx import _FusedProduct

    monkeypatch.setattr(_products, "PARTNER_MACS", 1)
    W = (rng.standard_normal((1100, 48)) / 7).astype(np.float32)
    c = rng.standard_normal(1100).astype(np.float32)
    for kind, axis, act in [
        ("Softmax", -1, _products.ROW_SOFTMAX),
        ("LogSoftmax", -1, _products.ROW_LOG_SOFTMAX),
        ("Softmax", 0, -1),
    ]:
        graph = helper.make_graph(
            [
                helper.make_node("Gemm", ["x", "W", "c"], ["z"], transB=1),
                helper.make_node(kind, ["z"], ["y"], axis=axis),
            ],
            "head",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 48])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1100])],
            [numpy_helper.from_array(W, "W"), numpy_helper.from_array(c, "c")],
        )
        data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
        model = rnnfast.from_onnx(data)
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = rng.standard_normal((6, 48)).astype(np.float32)
        model.run(None, {"x": x})  # (the first call of a shape runs the ops one by one)
        full = model.run(None, {"x": x})[0]
        np.testing.assert_allclose(full, sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-6)
        heads = [op for op, *_ in model._fast[0] if isinstance(op, _FusedProduct)]
        assert [h.act for h in heads] == [act]
        for n in (1, 2, 3):
            assert np.array_equal(model.run(None, {"x": x}, num_threads=n)[0], full)
            if axis == -1:
                for r in (0, 5):
                    one = model.run(None, {"x": x[r : r + 1]}, num_threads=n)[0]
                    assert np.array_equal(one, full[r : r + 1]), (kind, r, n)


@pytest.mark.skipif(not _rowops.PARTNER, reason="no partner thread in this build (not Linux)")
def test_partner_runs_tasks_while_it_polls(rng, partner_awake):
    """With a long poll the partner takes part in back-to-back products (the schedule
    may leave it out of any one of them, not of all)."""
    _rowops.partner_spin_us(200000)
    W = rng.standard_normal((256, 4096)).astype(np.float32)
    P, x, y = _products.pack(W), rng.standard_normal((1, 256)).astype(np.float32), np.empty((1, 4096), np.float32)
    before = _rowops.partner_jobs()
    for _ in range(20000):  # (a busy machine may keep it off a core for a while)
        _rowops.packed_rows(x, P, np.zeros(0, np.float32), y, 2)
        if _rowops.partner_jobs() > before:
            break
    assert _rowops.partner_jobs() > before


@pytest.mark.parametrize("act", [-1, _kernels.RNN_ACT_TANH, _kernels.RNN_ACT_SIGMOID])
def test_dense_of_few_rows_on_the_partner_bitwise_for_any_thread_count(rng, partner_awake, act, monkeypatch):
    """dense routes a few rows on many weights to the partner thread at 2 threads or
    more: the bits of one thread's packed product, activation included."""
    monkeypatch.setattr(_products, "PARTNER_MACS", 1)
    W = rng.standard_normal((70, 300)).astype(np.float32)
    b = rng.standard_normal(300).astype(np.float32)
    P = _products.pack(W)
    for M in (1, 2, 4):
        x = rng.standard_normal((M, 70)).astype(np.float32)
        want = np.empty((M, 300), np.float32)
        _kernels.packed_rows(x, P, b, want, act, 1)
        for n in (1, 2, 3):
            assert np.array_equal(_products.dense(x, P, 300, b, act, num_threads=n), want), (M, n)


@pytest.mark.skipif(not _rowops.PARTNER, reason="no partner thread in this build (not Linux)")
def test_partner_sleeps_after_its_poll_and_wakes_to_poll(rng, partner_awake):
    """After its poll the partner sleeps; partner_wake has it poll again (each state
    reached within a bound: a busy machine may keep it off a core for a while)."""
    import time

    def reaches(asleep):
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if _rowops.partner_asleep() == asleep:
                return True
            time.sleep(0.001)
        return False

    W = rng.standard_normal((64, 1000)).astype(np.float32)
    x, y = rng.standard_normal((1, 64)).astype(np.float32), np.empty((1, 1000), np.float32)
    _rowops.partner_spin_us(1000)
    _rowops.packed_rows(x, _products.pack(W), np.zeros(0, np.float32), y, 2)  # started
    assert reaches(True)
    _rowops.partner_spin_us(5000000)
    assert _rowops.partner_wake()
    assert reaches(False)
    _rowops.partner_spin_us(0)
    assert _rowops.partner_wake()  # (its poll ends at once)
    assert reaches(True)


@pytest.mark.skipif(not _rowops.PARTNER, reason="no partner thread in this build (not Linux)")
def test_partner_after_fork_gives_the_same_bits(rng, partner_awake):
    """A forked child (it has no partner thread; pthread_atfork lets its first product
    start one) gets the parent's bits from 2-thread products, and finishes them (no wait
    on the parent's partner, which the child does not have)."""
    import os
    import time

    W = rng.standard_normal((64, 1000)).astype(np.float32)
    P, x = _products.pack(W), rng.standard_normal((1, 64)).astype(np.float32)
    b = np.zeros(0, np.float32)
    want = np.empty((1, 1000), np.float32)
    _rowops.packed_rows(x, P, b, want, 2)  # the parent's partner exists
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if every product gives the bits
        ok = True
        try:
            for _ in range(50):
                got = np.empty_like(want)
                _rowops.packed_rows(x, P, b, got, 2)
                ok = ok and np.array_equal(got, want)
        finally:
            os._exit(0 if ok else 1)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, 9)
    raise AssertionError("the forked child did not finish its products")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M", [1, 2, 5])
@pytest.mark.parametrize("act", [-1, int(_kernels.RNN_ACT_TANH), _products.ROW_SOFTMAX, _products.ROW_LOG_SOFTMAX])
@pytest.mark.parametrize("threads", [1, 2])
def test_dense_streamed_gives_the_same_bits(rng, dtype, M, act, threads):
    """``dense(..., stream=True)`` (a model's weights read past the caches,
    _plan.streamed_weights): one row on the few-row kernel with its weights prefetched
    non-temporally, more rows as without; the same bits as without, for every
    activation, against float64."""
    K, N = 96, 1000
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    x = rng.standard_normal((M, K)).astype(dtype)
    P = _products.pack(W)
    want = _products.dense(x, P, N, b, act, threads)
    got = _products.dense(x, P, N, b, act, threads, stream=True)
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))
    z = x.astype(np.float64) @ W.astype(np.float64) + b
    if act == int(_kernels.RNN_ACT_TANH):
        z = np.tanh(z)
    elif act == _products.ROW_SOFTMAX:
        z = _softmax64(z, False)
    elif act == _products.ROW_LOG_SOFTMAX:
        z = _softmax64(z, True)
    np.testing.assert_allclose(got, z, rtol=1e-4 if dtype == np.float32 else 1e-11, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "act", [-1, ACTIVATIONS["relu"], ACTIVATIONS["sigmoid"], _products.ROW_SOFTMAX, _products.ROW_LOG_SOFTMAX]
)
@pytest.mark.parametrize("shape,K,N", [((1, 1), 64, 100), ((3, 7), 37, 130), ((2,), 256, 8000), ((40,), 5, 3)])
def test_dense_with_an_addend_gives_the_bits_of_numpys_add_after(rng, partner_awake, dtype, act, shape, K, N):
    """``dense(..., addend=c)`` (an ONNX MatMul's bias Add, in the product's call): the
    product, NumPy's add of ``c`` to its rounded sums, then the activation or the row
    (log-)softmax, bit for bit, on any thread count, one row's weights streamed past the
    caches or not (the few-row kernel, with the add after it), through the direct array
    reads and the memoryviews; against a float64 reference."""
    W = rng.standard_normal((K, N)).astype(dtype)
    c = rng.standard_normal(N).astype(dtype)
    x = rng.standard_normal(shape + (K,)).astype(dtype)
    P = _products.pack(W)
    y = _products.dense(x, P, N, None, -1, 1)
    np.add(y, c, out=y)
    want = _products._activated(y, act, 1)
    ref = x.astype(np.float64) @ W.astype(np.float64) + c
    if act in (_products.ROW_SOFTMAX, _products.ROW_LOG_SOFTMAX):
        ref = np.exp(ref - ref.max(-1, keepdims=True))
        ref /= ref.sum(-1, keepdims=True)
        if act == _products.ROW_LOG_SOFTMAX:
            ref = np.log(ref)
    elif act == ACTIVATIONS["relu"]:
        ref = np.maximum(ref, 0)
    elif act == ACTIVATIONS["sigmoid"]:
        ref = 1 / (1 + np.exp(-ref))
    np.testing.assert_allclose(want, ref, rtol=2e-4 if dtype == np.float32 else 1e-10, atol=2e-4)
    for n in (1, 2, 3):
        for stream in (False, True):
            got = _products.dense(x, P, N, None, act, n, stream, c)
            assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (n, stream)
    if act == -1:  # the compiled call itself: the direct reads and the memoryviews
        x2 = x.reshape(-1, K)
        for view in (lambda a: a, lambda a: a.view(_Sub)):
            got = np.full((len(x2), N), np.nan, dtype)
            _kernels.packed_rows(view(x2), view(P), view(np.zeros(0, dtype)), view(got), -1, 1, view(c))
            assert np.array_equal(got.view(np.uint8), want.reshape(-1, N).view(np.uint8))
        with pytest.raises(ValueError, match="addend"):
            _kernels.packed_rows(x2, P, np.zeros(0, dtype), np.empty((len(x2), N), dtype), -1, 1, c[:-1])
