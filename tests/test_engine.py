"""The compiled engine against the float64 numpy reference (rnnfast.reference).

A grid over cell x variant x dtype x batch {1, 3, 64} x T {1, 7, 1000} x odd sizes x
direction x merge mode x masks/lengths x threads {1, 2} x read-only weights.
"""

import itertools

import numpy as np
import pytest

from rnnfast import Sequential, _plan
from rnnfast import reference as ref
from rnnfast.layers import ACTIVATIONS, CellWeights, Dense, RNNLayer, apply_activation, merge_directions

from _testing import TOL, assert_close, random_weights, seed_of

# (cell, reset_after, projection, activation, recurrent_activation)
VARIANTS = {
    "gru": ("gru", True, 0, "tanh", "sigmoid"),
    "gru_reset_before": ("gru", False, 0, "tanh", "sigmoid"),
    "lstm": ("lstm", True, 0, "tanh", "sigmoid"),
    "lstm_proj": ("lstm", True, 5, "tanh", "sigmoid"),
    "simple_tanh": ("simple", True, 0, "tanh", None),
    "simple_relu": ("simple", True, 0, "relu", None),
}
DIRECTIONS = ("forward", "go_backwards", "bidirectional")
DTYPES = (np.float32, np.float64)
I_SIZE, H_SIZE = 5, 13  # odd sizes


def make_layer(rng, variant, direction, dtype, readonly=False, I=I_SIZE, H=H_SIZE, bias=True):
    cell, reset_after, P, act, ract = VARIANTS[variant]
    ndir = 2 if direction == "bidirectional" else 1
    ws = [random_weights(rng, cell, I, H, P, bias=bias, scale=1.5, readonly=readonly) for _ in range(ndir)]
    layer = RNNLayer(
        cell,
        ws,
        reset_after=reset_after,
        activation=act,
        recurrent_activation=ract or "sigmoid",
        go_backwards=direction == "go_backwards",
        dtype=dtype,
    )
    return layer, ws


def reference(variant, ws, direction, x, **kw):
    cell, reset_after, _, act, ract = VARIANTS[variant]
    return ref.run_layer(
        cell, ws, x, go_backwards=direction == "go_backwards", act=act, ract=ract, reset_after=reset_after, **kw
    )


def check(got, want, dtype, what):
    out, h, c = got
    r_out, r_h, r_c = want
    if out is not None:
        assert out.dtype == np.dtype(dtype)
        assert_close(out, r_out, dtype, what + " out")
    assert_close(h, r_h, dtype, what + " h_n")
    if r_c is not None:
        assert_close(c, r_c, dtype, what + " c_n")


GRID = list(itertools.product(VARIANTS, DTYPES, (1, 3, 64), (1, 7, 1000), DIRECTIONS, (1, 2)))


@pytest.mark.parametrize(
    "variant,dtype,B,T,direction,threads",
    [
        # 1000 steps of a batch: a tenth of the suite's cases, most of this grid's time
        pytest.param(*case, marks=pytest.mark.slow if case[3] == 1000 and case[2] > 1 else ())
        for case in GRID
    ],
    ids=["-".join(map(str, (v, d.__name__, B, T, dr, t))) for v, d, B, T, dr, t in GRID],
)
def test_grid_against_reference(variant, dtype, B, T, direction, threads):
    rng = np.random.default_rng(seed_of(variant, B, T, direction))
    readonly = (B + T + threads) % 2 == 0
    layer, ws = make_layer(rng, variant, direction, dtype, readonly=readonly)
    x = rng.standard_normal((T, B, I_SIZE))
    if readonly:
        x.flags.writeable = False
    got = layer.forward(x, num_threads=threads)
    check(got, reference(variant, ws, direction, x), dtype, "%s %s" % (variant, direction))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_sequence_1000_steps(variant, dtype):
    """T=1000, bidirectional, chunked projection, both threads: the contract's tolerance."""
    rng = np.random.default_rng(7)
    layer, ws = make_layer(rng, variant, "bidirectional", dtype, I=9, H=17)
    x = rng.standard_normal((1000, 3, 9))
    want = reference(variant, ws, "bidirectional", x)
    check(layer.forward(x, num_threads=2, chunk_steps=64), want, dtype, variant)
    check(layer.forward(x, num_threads=1), want, dtype, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("how", ["mask", "mask_zero_output", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_and_lengths(variant, direction, how, dtype):
    rng = np.random.default_rng(11)
    T, B = 9, 6
    layer, ws = make_layer(rng, variant, direction, dtype)
    x = rng.standard_normal((T, B, I_SIZE))
    if how == "lengths":
        lengths = np.array([9, 0, 4, 1, 7, 3])
        kw = dict(lengths=lengths)
        rkw = dict(lengths=lengths)
    else:
        mask = rng.random((T, B)) > 0.35  # gaps anywhere, not only trailing padding
        mask[:, 1] = False  # a row with no valid step at all
        mask[:3, 2] = False  # leading masked steps
        zero = how == "mask_zero_output"
        kw = dict(mask=mask, zero_output_for_mask=zero)
        rkw = dict(mask=mask, zero_output=zero)
    for threads in (1, 2):
        got = layer.forward(x, num_threads=threads, chunk_steps=4, **kw)
        check(got, reference(variant, ws, direction, x, **rkw), dtype, how)


@pytest.mark.parametrize("variant", VARIANTS)
def test_initial_states_in_final_states_out(variant, rng):
    dtype = np.float64
    layer, ws = make_layer(rng, variant, "bidirectional", dtype)
    T, B = 6, 4
    x = rng.standard_normal((T, B, I_SIZE))
    h0 = rng.standard_normal((2, B, layer.output_size))
    c0 = rng.standard_normal((2, B, layer.units)) if layer.cell == "lstm" else None
    got = layer.forward(x, h0, c0)
    check(got, reference(variant, ws, "bidirectional", x, h0=h0, c0=c0), dtype, "h0")
    # a unidirectional final state fed back in continues the sequence
    uni, _ = make_layer(rng, variant, "forward", dtype)
    full = uni.forward(x)
    a = uni.forward(x[:3])
    b = uni.forward(x[3:], a[1], a[2])
    np.testing.assert_allclose(b[0], full[0][3:], **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(b[1], full[1], **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "lstm", "simple_tanh"])
def test_without_bias(variant, rng):
    layer, ws = make_layer(rng, variant, "bidirectional", np.float64, bias=False)
    x = rng.standard_normal((5, 3, I_SIZE))
    check(layer.forward(x), reference(variant, ws, "bidirectional", x), np.float64, "no bias")


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("cell", ["gru", "lstm", "simple"])
def test_activations_in_cells(act, cell, rng):
    """Each activation as the cell's activation, and as its recurrent activation."""
    T, B = 6, 3
    combos = [(act, "sigmoid")]
    if cell != "simple":
        combos.append(("tanh", act))
    for a, ra in combos:
        ws = [random_weights(rng, cell, 4, 7, scale=0.5)]
        layer = RNNLayer(cell, ws, activation=a, recurrent_activation=ra, dtype=np.float64)
        x = rng.standard_normal((T, B, 4)) * 0.5
        with np.errstate(over="ignore"):
            want = ref.run_layer(cell, ws, x, act=a, ract=ra)
        check(layer.forward(x), want, np.float64, "%s/%s" % (a, ra))


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_accuracy(name, dtype):
    """The kernels' own sigmoid/tanh/... against float64 numpy, over a wide range."""
    x = np.linspace(-40, 40, 200001).astype(dtype)
    if name == "exponential":
        x = x[x < (80 if dtype == np.float32 else 700)]
    got = apply_activation(name, x)
    with np.errstate(over="ignore"):
        want = ref.ACT[name](x.astype(np.float64))
    eps = np.finfo(dtype).eps
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 4 * eps, (name, err.max())


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_nan_propagates(name):
    for dtype in DTYPES:
        got = apply_activation(name, np.array([np.nan, 1.0], dtype))
        assert np.isnan(got[0]) and not np.isnan(got[1]), name


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave", None])
@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_bidirectional_merge_modes(mode, dtype):
    """Seed-shaped stacks: Bi(GRU, seq) -> Bi(GRU or LSTM) -> Dense, every merge mode."""
    rng = np.random.default_rng(3)
    B, T, I, H1, H2 = 4, 10, 6, 9, 7
    w1 = [random_weights(rng, "gru", I, H1) for _ in range(2)]
    in2 = 2 * H1 if mode in ("concat", None) else H1
    w2 = [random_weights(rng, "lstm", in2, H2) for _ in range(2)]
    l1 = RNNLayer("gru", w1, dtype=dtype)
    l2 = RNNLayer("lstm", w2, dtype=dtype)
    x = rng.standard_normal((B, T, I))

    def merged(o, H):
        m = merge_directions(o, mode, H)
        return np.concatenate(m, axis=-1) if mode is None else m

    r1 = merged(ref.run_layer("gru", w1, x.transpose(1, 0, 2))[0], H1)
    r2 = ref.run_layer("lstm", w2, r1)[0]
    if mode is None:
        # merge_mode=None returns [forward, backward]; a following layer sees the concat
        seq = Sequential([(l1, dict(merge_mode=None))])
        got = seq.predict(x)
        want = merge_directions(ref.run_layer("gru", w1, x.transpose(1, 0, 2))[0], None, H1)
        for g, w in zip(got, want):
            assert_close(g, w.transpose(1, 0, 2), dtype, "None")
        return
    dk = rng.standard_normal((2 * H2 if mode == "concat" else H2, 1))
    db = rng.standard_normal(1)
    model = Sequential(
        [(l1, dict(merge_mode=mode)), (l2, dict(merge_mode=mode)), Dense(dk, db, "sigmoid", dtype=dtype)]
    )
    got = model.predict(x)
    want = 1 / (1 + np.exp(-(merged(r2, H2) @ dk + db)))
    assert got.shape == (B, T, 1)
    assert_close(got, want.transpose(1, 0, 2), dtype, mode)


def test_stacked_last_output_and_dense(rng):
    """GRU(seq) -> GRU(last) -> Dense(1, sigmoid): the seed's first model."""
    B, T, I = 5, 10, 8
    w1 = [random_weights(rng, "gru", I, 11)]
    w2 = [random_weights(rng, "gru", 11, 6)]
    dk, db = rng.standard_normal((6, 1)), rng.standard_normal(1)
    model = Sequential(
        [RNNLayer("gru", w1), (RNNLayer("gru", w2), dict(return_sequences=False)), Dense(dk, db, "sigmoid")]
    )
    x = rng.standard_normal((B, T, I))
    s1 = ref.run_layer("gru", w1, x.transpose(1, 0, 2))[0]
    h2 = ref.run_layer("gru", w2, s1)[1][0]
    want = 1 / (1 + np.exp(-(h2 @ dk + db)))
    assert_close(model.predict(x), want, np.float32, "seed model 1")


def test_return_sequences_false_gives_same_state(rng):
    layer, _ = make_layer(rng, "lstm", "bidirectional", np.float64)
    x = rng.standard_normal((40, 3, I_SIZE))
    a = layer.forward(x)
    b = layer.forward(x, return_sequences=False, chunk_steps=3)
    assert b[0] is None
    np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a[2], b[2], rtol=0, atol=1e-12)


# -- invariances ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("B", [1, 3, 64, 130])
def test_thread_count_invariance_bitwise(variant, B):
    rng = np.random.default_rng(B)
    layer, _ = make_layer(rng, variant, "bidirectional", np.float32)
    x = rng.standard_normal((23, B, I_SIZE)).astype(np.float32)
    mask = rng.random((23, B)) > 0.2
    base = layer.forward(x, mask=mask, num_threads=1)
    for n in (2, 3, 4, 7):
        got = layer.forward(x, mask=mask, num_threads=n)
        for g, b in zip(got, base):
            if b is not None:
                assert np.array_equal(g, b), "threads=%d changed the result" % n


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_invariance(variant):
    """A row run alone equals the same row inside a batch (within tolerance)."""
    rng = np.random.default_rng(5)
    layer, _ = make_layer(rng, variant, "bidirectional", np.float32)
    x = rng.standard_normal((30, 64, I_SIZE)).astype(np.float32)
    out, h, _ = layer.forward(x)
    for b in (0, 17, 63):
        o1, h1, _ = layer.forward(x[:, b : b + 1])
        assert_close(o1[:, 0], out[:, b], np.float32, "row %d" % b)
        assert_close(h1[:, 0], h[:, b], np.float32, "row %d" % b)


def test_chunking_does_not_change_results(rng):
    layer, ws = make_layer(rng, "gru", "bidirectional", np.float64)
    x = rng.standard_normal((50, 4, I_SIZE))
    want = reference("gru", ws, "bidirectional", x)
    for chunk in (1, 3, 7, 50, 1000):
        check(layer.forward(x, chunk_steps=chunk), want, np.float64, "chunk %d" % chunk)


# -- input handling -------------------------------------------------------------------


def test_inputs_cast_and_noncontiguous(rng):
    layer, ws = make_layer(rng, "gru", "forward", np.float32)
    x = rng.standard_normal((8, 12, 2 * I_SIZE))[:, ::3, ::2]  # non-contiguous float64
    want = reference("gru", ws, "forward", x)
    check(layer.forward(x), want, np.float32, "noncontig")
    check(layer.forward(x.astype(np.float16)), reference("gru", ws, "forward", x.astype(np.float16)), np.float32, "f16")


def test_empty_time_and_batch(rng):
    layer, _ = make_layer(rng, "lstm", "bidirectional", np.float32)
    out, h, c = layer.forward(np.zeros((0, 3, I_SIZE)))
    assert out.shape == (0, 3, 2 * H_SIZE) and not h.any() and not c.any()
    out, h, c = layer.forward(np.zeros((4, 0, I_SIZE)))
    assert out.shape == (4, 0, 2 * H_SIZE) and h.shape == (2, 0, H_SIZE)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((3, I_SIZE)), "shape"),
        (np.zeros((3, 2, I_SIZE + 1)), "features"),
        (np.array([[["a"] * I_SIZE]]), "numeric"),
        (np.zeros((2, 2, I_SIZE), complex), "real"),
    ],
)
def test_bad_inputs_raise_valueerror(bad, match, rng):
    layer, _ = make_layer(rng, "gru", "forward", np.float32)
    with pytest.raises(ValueError, match=match):
        layer.forward(bad)


def test_bad_states_masks_lengths(rng):
    layer, _ = make_layer(rng, "lstm", "forward", np.float32)
    x = np.zeros((4, 2, I_SIZE))
    with pytest.raises(ValueError, match="h0"):
        layer.forward(x, h0=np.zeros((1, 3, H_SIZE)))
    with pytest.raises(ValueError, match="c0"):
        layer.forward(x, c0=np.zeros((2, 2, H_SIZE)))
    with pytest.raises(ValueError, match="mask"):
        layer.forward(x, mask=np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="lengths"):
        layer.forward(x, lengths=[5, 1])
    with pytest.raises(ValueError, match="not both"):
        layer.forward(x, mask=np.ones((4, 2), bool), lengths=[1, 1])


def test_bad_weights_raise(rng):
    w = random_weights(rng, "gru", 4, 6)
    with pytest.raises(ValueError, match="recurrent_kernel"):
        RNNLayer("gru", [CellWeights(w.kernel, np.zeros((6, 17)), w.bias)])
    with pytest.raises(ValueError, match="kernel"):
        RNNLayer("lstm", [w])  # 18 columns is not a multiple of 4
    with pytest.raises(ValueError, match="cell"):
        RNNLayer("transformer", [w])
    with pytest.raises(ValueError, match="activation"):
        RNNLayer("gru", [w], activation="swishy")
    with pytest.raises(ValueError, match="dtype"):
        RNNLayer("gru", [w], dtype=np.int32)


def test_weights_are_converted_once_and_frozen(rng):
    w = random_weights(rng, "gru", 4, 6)
    layer = RNNLayer("gru", [w])
    x = rng.standard_normal((3, 2, 4))
    before = layer.forward(x)[0].copy()
    w.kernel[...] = 0.0  # the caller's arrays are not aliased
    np.testing.assert_array_equal(layer.forward(x)[0], before)
    with pytest.raises(ValueError):
        layer._W[...] = 1.0


# -- the blocked path (batch x unit blocks as tasks, one barrier per step; H >= 128) --

SPLIT_VARIANTS = ["gru", "lstm", "simple_tanh"]  # the cells whose layout has unit blocks


@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
@pytest.mark.parametrize("H", [130, 200])  # 2 and 3 uneven unit blocks
@pytest.mark.parametrize("B,T", [(1, 1), (1, 300), (3, 17), (40, 9), pytest.param(130, 5, marks=pytest.mark.slow)])
@pytest.mark.parametrize("direction", ["forward", "go_backwards", "bidirectional"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_path(variant, H, B, T, direction, dtype, monkeypatch):
    rng = np.random.default_rng(H + B + T)
    layer, ws = make_layer(rng, variant, direction, dtype, I=7, H=H)
    assert layer._ncb > 1
    x = rng.standard_normal((T, B, 7))
    D = layer.num_directions
    h0 = rng.standard_normal((D, B, H))
    c0 = rng.standard_normal((D, B, H)) if layer.cell == "lstm" else None
    want = reference(variant, ws, direction, x, h0=h0, c0=c0)
    base = layer.forward(x, h0, c0, num_threads=1, chunk_steps=64)
    check(base, want, dtype, "blocked")
    for n in (2, 3):
        for share in (0.0, _plan.ITEM_L2_SHARE):  # blocked; items where _plan.prefers_items
            monkeypatch.setattr(_plan, "ITEM_L2_SHARE", share)
            got = layer.forward(x, h0, c0, num_threads=n, chunk_steps=64)
            for g, b in zip(got, base):
                if b is not None:
                    assert np.array_equal(g, b), "threads=%d (L2 share %g) changed the result" % (n, share)


@pytest.mark.parametrize("precision", ["float32", "bf16", "int8"])
@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
@pytest.mark.parametrize("B,direction", [(40, "forward"), (70, "go_backwards"), (3, "bidirectional")])
def test_items_on_unit_blocks_are_the_blocked_strategys_bits(precision, variant, B, direction, monkeypatch):
    """A layer laid out in unit blocks takes the item strategy on two threads where its
    weights fit a core's L2 (_plan.prefers_items: rows, or a direction, per thread): its
    results are bitwise the blocked strategy's and one thread's, with initial states and a
    mask that is not right padding, in every precision; right padding (rows sorted by
    length) stays blocked."""
    rng = np.random.default_rng(B + len(variant))
    T, I, H = 100, 7, 130  # enough work for two threads in int8 too (_plan.FLOP_COST)
    layer, _ = make_layer(rng, variant, direction, np.float32, I=I, H=H)
    layer = layer.with_precision(precision)
    D = layer.num_directions
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((D, B, H)).astype(np.float32)
    c0 = rng.standard_normal((D, B, H)).astype(np.float32) if layer.cell == "lstm" else None
    mask = rng.random((T, B)) > 0.3
    monkeypatch.setattr(_plan, "_l2", [2 << 20])
    assert layer._plan_for(B, T, 1).strategy == _plan.BLOCKED
    assert layer._plan_for(B, T, 2).strategy == _plan.ITEM
    assert layer._plan_for(B, T, 2, ragged=True).strategy == _plan.BLOCKED
    base = layer.forward(x, h0, c0, mask=mask, num_threads=1)
    items = layer.forward(x, h0, c0, mask=mask, num_threads=2)
    monkeypatch.setattr(_plan, "ITEM_L2_SHARE", 0.0)
    layer._plans = {}
    assert layer._plan_for(B, T, 2).strategy == _plan.BLOCKED
    blocked = layer.forward(x, h0, c0, mask=mask, num_threads=2)
    for i, b, k in zip(items, base, blocked):
        if b is not None:
            assert i.tobytes() == b.tobytes() == k.tobytes()


def test_items_where_the_weights_fit_a_cores_l2():
    """_plan.prefers_items: two threads or more, two items or more, and the recurrent
    weights one item's thread reads within ITEM_L2_SHARE of L2; the plan takes it only
    where the caller lets it (may_split_rows)."""
    l2 = 2 << 20
    assert _plan.prefers_items(2, 64, 1, 1 << 20, l2)  # LSTM H=256, B=64: two blocks of rows
    assert not _plan.prefers_items(1, 64, 1, 1 << 20, l2)  # one thread
    assert not _plan.prefers_items(2, 8, 1, 1 << 20, l2)  # one item
    assert not _plan.prefers_items(2, 64, 1, 4 << 20, l2)  # LSTM H=512: beyond L2
    assert _plan.prefers_items(2, 1, 2, 2 << 20, l2)  # BiLSTM H=256, B=1: a direction a thread
    assert not _plan.prefers_items(2, 32, 2, 2 << 20, l2)  # ... B=32: a thread may read both
    assert _plan.prefers_items(2, 64, 1, 1 << 20, 2 << 20)
    assert not _plan.prefers_items(2, 64, 1, 1 << 20, 1 << 20)  # the same on a 1 MB L2
    kw = dict(B=64, D=1, Ho=256, GH=1024, ncb=4, T=100, recurrent_bytes=1 << 18)
    assert _plan.plan(num_threads=2, may_split_rows=True, **kw).strategy == _plan.ITEM
    assert _plan.plan(num_threads=2, **kw).strategy == _plan.BLOCKED
    assert _plan.plan(num_threads=1, may_split_rows=True, **kw).strategy == _plan.BLOCKED


@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_blocked_serpentine_order_b1(variant, direction):
    """B=1 on four unit blocks: a thread runs its unit blocks of every other step in
    reverse (the blocks read last are still in its cache); chunks of odd length restart
    the alternation (a team of one) or carry it on (a team: by phase). The results are
    the reference's, and bitwise the same on one thread and on two, for any chunking."""
    rng = np.random.default_rng(31)
    layer, ws = make_layer(rng, variant, direction, np.float32, I=9, H=256)
    assert layer._ncb == 4
    x = rng.standard_normal((23, 1, 9)).astype(np.float32)
    want = reference(variant, ws, direction, x)
    base = layer.forward(x, num_threads=1, chunk_steps=5)
    check(base, want, np.float32, "serpentine")
    for n, chunk in ((1, 7), (2, 5), (2, 23)):
        got = layer.forward(x, num_threads=n, chunk_steps=chunk)
        for g, b in zip(got, base):
            if b is not None:
                assert np.array_equal(g, b), "threads=%d chunk=%d changed the result" % (n, chunk)


@pytest.mark.parametrize("variant", SPLIT_VARIANTS)
@pytest.mark.parametrize("how", ["mask", "mask_zero_output", "lengths"])
def test_blocked_path_masks(variant, how):
    rng = np.random.default_rng(9)
    T, B, H = 12, 70, 136
    layer, ws = make_layer(rng, variant, "bidirectional", np.float64, I=5, H=H)
    x = rng.standard_normal((T, B, 5))
    if how == "lengths":
        kw = rkw = dict(lengths=rng.integers(0, T + 1, B))
    else:
        mask = rng.random((T, B)) > 0.4
        mask[:4, 1] = False
        mask[:, 66] = False
        zero = how == "mask_zero_output"
        kw, rkw = dict(mask=mask, zero_output_for_mask=zero), dict(mask=mask, zero_output=zero)
    want = reference(variant, ws, "bidirectional", x, **rkw)
    for n in (1, 2):
        check(layer.forward(x, num_threads=n, chunk_steps=5, **kw), want, np.float64, how)
    out_seq = layer.forward(x, **kw)
    last = layer.forward(x, return_sequences=False, **kw)
    np.testing.assert_array_equal(out_seq[1], last[1])


# -- the packed per-step product (c/packgemm.template.h) ---------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 2, 5, 6, 7, 13])
@pytest.mark.parametrize("K,N", [(1, 1), (3, 17), (64, 64), (50, 65), (129, 130), (37, 200)])
def test_packed_product(dtype, M, K, N):
    """The packed product equals A @ B in float64 to rounding, for tile and panel edges."""
    from rnnfast import _kernels

    rng = np.random.default_rng(M * 1000 + K + N)
    A = rng.standard_normal((M, K)).astype(dtype)
    B = rng.standard_normal((K, N)).astype(dtype)
    got = _kernels.packed_matmul(A, B)
    want = A.astype(np.float64) @ B.astype(np.float64)
    bound = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64)
    assert got.shape == (M, N) and got.dtype == dtype
    assert np.all(np.abs(got - want) <= 4 * K * np.finfo(dtype).eps * bound + 1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_product_rows_do_not_depend_on_the_batch(dtype):
    """Each row is one chain of multiply-adds: the same bits alone or in any tile."""
    from rnnfast import _kernels

    rng = np.random.default_rng(3)
    A = rng.standard_normal((23, 96)).astype(dtype)
    B = rng.standard_normal((96, 150)).astype(dtype)
    full = _kernels.packed_matmul(A, B)
    for i in (0, 5, 6, 22):
        np.testing.assert_array_equal(_kernels.packed_matmul(A[i : i + 1], B)[0], full[i])
    np.testing.assert_array_equal(_kernels.packed_matmul(A[7:11], B), full[7:11])


def test_profile_counts_where_the_time_goes(rng):
    """The kernel counters behind bench/compare.py's time split: off by default, every
    part counted while on (the blocked path here, so the barrier too), reset on start."""
    from rnnfast import _kernels

    layer, _ = make_layer(rng, "lstm", "bidirectional", np.float32, I=7, H=130)
    assert layer._ncb > 1
    x = rng.standard_normal((40, 3, 7)).astype(np.float32)
    _kernels.profile(True)
    try:
        layer.forward(x, num_threads=2)
    finally:
        _kernels.profile(False)
    got = _kernels.profile_times()
    assert set(got) == {"projection", "product", "gates", "wait"}
    assert got["projection"] > 0 and got["product"] > 0 and got["gates"] > 0 and got["wait"] >= 0
    layer.forward(x)  # counting is off: nothing changes
    assert _kernels.profile_times() == got
    _kernels.profile(True)
    _kernels.profile(False)
    assert all(v == 0 for v in _kernels.profile_times().values())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("B", [1, 3, 7, 64])
@pytest.mark.parametrize("H", [H_SIZE, 136])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_first_equals_time_major_bitwise(variant, B, H, dtype):
    """Batch-major input and output (read and written by the kernel in place, or
    transposed for 2-5 rows) give the time-major results: both paths, both directions,
    a mask, several chunks, two threads. Bitwise where the projection runs on packed
    weights (each row one chain of multiply-adds); where BLAS projects (float64, CPUs
    without AVX-512), its rows may round differently in a product of another height."""
    rng = np.random.default_rng(B + H)
    layer, _ = make_layer(rng, variant, "bidirectional", dtype, I=5, H=H)
    x = rng.standard_normal((13, B, 5)).astype(dtype)
    mask = rng.random((13, B)) > 0.3
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    for kw in (dict(), dict(mask=mask, chunk_steps=4, num_threads=2)):
        want = layer.forward(x, **kw)
        got = layer.forward(xb, batch_first=True, **kw)
        assert got[0].shape == (B, 13, want[0].shape[2])
        same = np.testing.assert_array_equal if layer._Wp.size else (lambda a, b: assert_close(a, b, dtype))
        same(got[0], want[0].transpose(1, 0, 2))
        for g, w in zip(got[1:], want[1:]):
            if w is not None:
                same(g, w)
    last = layer.forward(xb, batch_first=True, return_sequences=False)
    assert last[0] is None
    same(last[1], layer.forward(x)[1])
