"""Streams (rnnfast.stream): model.stream() / model.step(chunk, stream), batched steps
over many streams, stream.state / reset, refusals, threads.

The exactness contract: a sequence fed in chunks of any sizes, alone or batched with
other streams (joining and leaving between steps, chunks of different lengths), gives
bitwise the outputs and final states of the whole sequence in one call -- for every
cell, dtype and thread count.
"""

import threading

import numpy as np
import pytest

import rnnfast
from rnnfast import UnsupportedLayerError
from rnnfast.graph import Graph, Step
from rnnfast.layers import Dense, RNNLayer
from rnnfast.model_keras import DenseNode, EmbeddingNode, KerasModel, RecurrentNode

from _testing import assert_close, lively, make_module, random_weights, step_in_ragged_batches, streamed_products, tol

I_SIZE = 5

#: (cell, reset_after, activation, projection): every kernel path of the engine.
VARIANTS = {
    "gru": ("gru", True, "tanh", 0),
    "gru_rb": ("gru", False, "tanh", 0),
    "lstm": ("lstm", True, "tanh", 0),
    "lstm_proj": ("lstm", True, "tanh", 20),
    "simple": ("simple", True, "tanh", 0),
    "simple_relu": ("simple", True, "relu", 0),
}


def _layer(rng, variant, I, H, dtype):
    cell, ra, act, P = VARIANTS[variant]
    w = random_weights(rng, cell, I, H, P=P, scale=1.5)
    return RNNLayer(cell, [w], reset_after=ra, activation=act, dtype=dtype)


def graph_model(rng, variant, dtype, *, H=(24, 40), many_to_one=False, head=True, ids=None, N=20, act="sigmoid"):
    """A KerasModel (graph of nodes) of stacked recurrent layers of ``variant`` and a
    Dense head (``N`` units, ``act``), on random weights; ``ids``: an Embedding of that
    vocabulary first."""
    steps, key, I = [], "in", I_SIZE
    if ids is not None:
        table = rng.standard_normal((ids, I_SIZE))
        steps.append(Step(EmbeddingNode("emb", table, True, dtype), [key], ["e"]))
        key = "e"
    for k, h in enumerate(H):
        last = k == len(H) - 1
        layer = _layer(rng, variant, I, h, dtype)
        node = RecurrentNode(
            "rnn%d" % k,
            "RNN",
            [layer],
            return_sequences=not (last and many_to_one),
            return_state=False,
            go_backwards=False,
            zero_output_for_mask=False,
        )
        steps.append(Step(node, [key], ["r%d" % k]))
        key, I = "r%d" % k, layer.output_size
    if head:
        d = Dense(rng.standard_normal((I, N)) / np.sqrt(I), rng.standard_normal(N), act, dtype=dtype)
        steps.append(Step(DenseNode("head", d), [key], ["y"]))
        key = "y"
    spec = dict(
        name="in",
        shape=(None, None) if ids else (None, None, I_SIZE),
        dtype=dtype,
        integer=ids is not None,
        declared=None,
    )
    return KerasModel(Graph(steps, ["in"], key), inputs=[spec], name="m", keras_version="3")


def torch_model(variant, dtype, num_layers=2):
    torch = pytest.importorskip("torch")
    cell, _, act, P = VARIANTS[variant]
    mode = {"gru": "GRU", "lstm": "LSTM", "simple": "RNN_RELU" if act == "relu" else "RNN_TANH"}[cell]
    kw = dict(proj_size=P) if P else {}
    m = make_module(mode, I_SIZE, 30, num_layers=num_layers, dtype=getattr(torch, np.dtype(dtype).name), **kw)
    return rnnfast.from_torch(m)


def model_for(variant, dtype, rng, **kw):
    """TorchRNN where PyTorch has the cell (its LSTM projection only there), else a graph."""
    if variant == "lstm_proj":
        return torch_model(variant, dtype)
    return graph_model(rng, variant, dtype, **kw)


def random_cuts(rng, T, max_len=None):
    """Random chunk boundaries of T steps (some of one step)."""
    cuts, t = [0], 0
    while t < T:
        n = int(rng.integers(1, (max_len or max(2, T // 3)) + 1))
        t = min(T, t + n)
        cuts.append(t)
    return cuts


def whole(model, x, num_threads=1):
    s = model.stream()
    return model.step(x, s, num_threads=num_threads), s.state


def assert_bitwise(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, "%s: %s %s vs %s %s" % (
        what,
        got.dtype,
        got.shape,
        want.dtype,
        want.shape,
    )
    assert np.array_equal(got, want, equal_nan=True), "%s: max diff %g" % (what, np.abs(got - want).max())


def assert_state_bitwise(got, want, what):
    assert got.keys() == want.keys()
    for k in want:
        for i, (a, b) in enumerate(zip(got[k], want[k])):
            assert_bitwise(a, b, "%s: state %s[%d]" % (what, k, i))


# -- exactness -------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_random_chunkings_alone_are_bitwise_the_whole_call(variant, dtype, threads, seed):
    rng = np.random.default_rng(seed)
    model = model_for(variant, dtype, rng)
    x = rng.standard_normal((61, I_SIZE)).astype(dtype)
    want, want_state = whole(model, x)
    for trial in range(3):
        s = model.stream()
        cuts = random_cuts(rng, len(x), max_len=[1, 7, 40][trial])
        got = np.concatenate([model.step(x[a:b], s, num_threads=threads) for a, b in zip(cuts, cuts[1:])])
        assert_bitwise(got, want, "%s cuts %s" % (variant, cuts))
        assert_state_bitwise(s.state, want_state, variant)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_continuous_batching_is_bitwise_each_stream_alone(variant, dtype, threads, seed):
    """Streams joining and leaving, stepped together in ragged batches of random
    chunks: each stream's outputs and states are those of its whole sequence alone."""
    rng = np.random.default_rng(seed)
    model = model_for(variant, dtype, rng)
    n = 7
    xs = [rng.standard_normal((int(rng.integers(20, 70)), I_SIZE)).astype(dtype) for _ in range(n)]
    wants = [whole(model, x) for x in xs]
    start = [int(rng.integers(0, 4)) for _ in range(n)]  # the round each stream joins at

    def stacked_when_equal(chunks, ys):
        if len({len(c) for c in chunks}) == 1:
            assert isinstance(ys, np.ndarray) and ys.shape[:2] == (len(chunks), len(chunks[0]))

    outs, streams = step_in_ragged_batches(
        model, xs, rng, max_chunk=12, start=start, p_live=0.8, on_step=stacked_when_equal, num_threads=threads
    )
    for i in range(n):
        assert_bitwise(outs[i], wants[i][0], "%s stream %d" % (variant, i))
        assert_state_bitwise(streams[i].state, wants[i][1], "%s stream %d" % (variant, i))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["gru", "lstm", "simple"])
def test_wide_layers_blocked_strategy_bitwise(variant, dtype, seed):
    """Layers wide enough for unit blocks (and the blocked strategy at 2 threads)."""
    rng = np.random.default_rng(seed)
    model = graph_model(rng, variant, dtype, H=(160,))
    x = rng.standard_normal((30, I_SIZE)).astype(dtype)
    want, _ = whole(model, x)
    ss = [model.stream() for _ in range(3)]
    got = [[] for _ in ss]
    for a, b in ((0, 1), (1, 9), (9, 30)):
        ys = model.step([x[a:b]] * 3, ss, num_threads=2)
        for g, y in zip(got, ys):
            g.append(y)
    for g in got:
        assert_bitwise(np.concatenate(g), want, variant)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_many_to_one_gives_the_output_as_if_the_sequence_ended_there(variant, dtype, seed):
    rng = np.random.default_rng(seed)
    if variant == "lstm_proj":
        pytest.skip("TorchRNN has no many-to-one head")
    model = graph_model(rng, variant, dtype, many_to_one=True)
    x = rng.standard_normal((25, I_SIZE)).astype(dtype)
    s = model.stream()
    for a, b in zip(range(0, 25, 5), range(5, 30, 5)):
        y = model.step(x[a:b], s)
        assert y.shape == (20,)
        want, _ = whole(model, x[:b])
        assert_bitwise(y, want, "prefix %d" % b)
        assert_close(y, model.predict(x[None, :b])[0], dtype, "prefix %d vs predict" % b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stream_equals_predict(variant, dtype, seed):
    """The whole-sequence call and predict agree (tolerance of the contract; bitwise
    where predict runs the same row-exact kernels: float32 packed cells on AVX-512,
    recurrent outputs)."""
    rng = np.random.default_rng(seed)
    model = model_for(variant, dtype, rng)
    x = rng.standard_normal((40, I_SIZE)).astype(dtype)
    got, _ = whole(model, x)
    if variant == "lstm_proj":
        want = model(x)[0]
    else:
        want = model.predict(x[None])[0]
    assert_close(got, want, dtype, variant)
    if variant != "lstm_proj" and dtype == np.float32 and rnnfast._kernels.packed_projection(dtype):
        bare = graph_model(np.random.default_rng(seed), variant, dtype, head=False)
        if VARIANTS[variant][1]:  # reset-before runs BLAS per step in predict
            assert_bitwise(whole(bare, x)[0], bare.predict(x[None])[0], variant)


@pytest.mark.parametrize("act", ["softmax", "tanh"])
def test_heads_read_past_the_cache_step_with_the_bits_of_predicts_head(act, monkeypatch, seed):
    """A Keras language model (Embedding -> GRU -> Dense over a vocabulary) whose head's
    weights the model marks to read past the caches (its weights overflow the
    last-level cache, made small here: Dense.stream), stepped a token at a time as
    generation steps it: each row through the head's own call (the product, its
    activation, softmax too, row by row; the weights prefetched past the caches at one
    row), so the bits of the same model with its weights kept, of the whole sequence in
    one call, and of Dense.forward on the recurrent layer's outputs (predict's head)."""
    keras = pytest.importorskip("keras")
    from rnnfast import _plan

    L = keras.layers
    inp = keras.Input((None,), dtype="int32")
    seq = L.GRU(24, return_sequences=True)(L.Embedding(40, 5)(inp))
    km = lively(keras.Model(inp, L.Dense(3000, activation=act)(seq)), seed=seed % 1000)
    monkeypatch.setattr(_plan, "_l3", [1 << 40])
    kept = rnnfast.from_keras(km)
    bare = rnnfast.from_keras(keras.Model(inp, seq))
    head = kept.layers[-1].dense
    assert not head.stream
    monkeypatch.setattr(_plan, "_l3", [head.kernel.nbytes])  # (the head alone fills it: it streams)
    model = rnnfast.from_keras(km)
    assert model.layers[-1].dense.stream
    ids = np.random.default_rng(seed).integers(1, 40, 9)
    seen = streamed_products(monkeypatch)
    for n in (1, 2):
        want = whole(kept, ids, n)[0]
        assert_bitwise(want, head.forward(whole(bare, ids, n)[0]), "the head's own call")
        s = model.stream()
        got = np.concatenate([model.step(ids[t : t + 1], s, num_threads=n) for t in range(len(ids))])
        assert_bitwise(got, want, "%d thread(s), a token at a time" % n)
    assert any(seen), "the one-row head did not read its weights past the caches"
    assert_close(want, km.predict(ids[None], verbose=0)[0], np.float32)


def test_torch_stream_matches_pytorch_step_by_step(seed):
    torch = pytest.importorskip("torch")
    m = make_module("LSTM", I_SIZE, 8, num_layers=2, seed=seed % 1000)
    model = rnnfast.from_torch(m)
    x = np.random.default_rng(seed).standard_normal((30, I_SIZE)).astype(np.float32)
    s = model.stream()
    hx = None
    for a, b in ((0, 1), (1, 2), (2, 17), (17, 30)):
        y = model.step(x[a:b], s)
        with torch.no_grad():
            want, hx = m(torch.as_tensor(x[a:b]), hx)
        np.testing.assert_allclose(y, want.numpy(), **tol(np.float32))
    h = np.stack([s.state["l0"][0], s.state["l1"][0]])
    np.testing.assert_allclose(h, hx[0].numpy()[:, 0] if hx[0].ndim == 3 else hx[0].numpy(), **tol(np.float32))


def test_embedding_with_masked_ids_exact_and_like_predict(seed):
    """Masked steps (id 0) carry the state; a chunk that starts with masked steps after
    valid ones outputs the carried state, as the whole call does."""
    rng = np.random.default_rng(seed)
    model = graph_model(rng, "gru", np.float32, ids=11)
    ids = rng.integers(1, 11, 40)
    ids[[3, 4, 5, 10, 20, 21, 22, 23, 39]] = 0
    ids[:2] = 0
    want, want_state = whole(model, ids)
    assert_close(want, model.predict(ids[None])[0], np.float32, "whole vs predict")
    for cuts in ([0, 1, 4, 6, 20, 22, 40], [0, 21, 22, 23, 24, 40], list(range(41))):
        s = model.stream()
        got = np.concatenate([model.step(ids[a:b], s) for a, b in zip(cuts, cuts[1:])])
        assert_bitwise(got, want, "cuts %s" % cuts)
        assert_state_bitwise(s.state, want_state, "cuts %s" % cuts)
    # batched with another stream of other lengths
    s1, s2 = model.stream(), model.stream()
    o1, o2 = [], []
    for a, b in ((0, 4), (4, 22), (22, 40)):
        y1, y2 = model.step([ids[a:b], ids[: b - a]], [s1, s2])
        o1.append(y1)
        o2.append(y2)
    assert_bitwise(np.concatenate(o1), want, "batched")


# -- the API ---------------------------------------------------------------------------


def test_state_roundtrip_reset_and_validation(rng):
    model = graph_model(rng, "lstm", np.float32)
    x = rng.standard_normal((20, I_SIZE)).astype(np.float32)
    s = model.stream()
    model.step(x[:8], s)
    saved = s.state
    assert set(saved) == {"rnn0", "rnn1"} and [a.shape for a in saved["rnn0"]] == [(24,), (24,)]
    rest = model.step(x[8:], s)
    t = model.stream()
    t.state = saved
    assert_bitwise(model.step(x[8:], t), rest, "restored")
    s.reset()
    assert not any(a.any() for v in s.state.values() for a in v)
    assert_bitwise(model.step(x, s), whole(model, x)[0], "after reset")
    bad = dict(saved, rnn1=[np.zeros(3), np.zeros(40)])
    with pytest.raises(ValueError, match="rnn1"):
        t.state = bad
    with pytest.raises(ValueError, match="rnn0"):
        t.state = {"rnn1": saved["rnn1"]}
    with pytest.raises(ValueError, match="nope"):
        t.state = dict(saved, nope=[np.zeros(1)])
    with pytest.raises(ValueError, match="rnn0"):
        t.state = dict(saved, rnn0=[np.zeros(24)])


def test_bad_chunks_and_streams(rng):
    model = graph_model(rng, "gru", np.float32)
    other = graph_model(rng, "gru", np.float32)
    s = model.stream()
    with pytest.raises(ValueError, match="shape"):
        model.step(np.zeros((3, I_SIZE + 1)), s)
    with pytest.raises(ValueError, match="shape"):
        model.step(np.zeros((1, 3, I_SIZE)), s)
    with pytest.raises(ValueError, match="at least one"):
        model.step(np.zeros((0, I_SIZE)), s)
    with pytest.raises(ValueError, match="another model"):
        other.step(np.zeros((2, I_SIZE)), s)
    with pytest.raises(ValueError, match="twice"):
        model.step([np.zeros((2, I_SIZE))] * 2, [s, s])
    t = model.stream()
    with pytest.raises(ValueError, match="twice"):
        model.step([np.zeros((2, I_SIZE))] * 3, [t, s, t])
    t.reset()  # not left claimed by the refused call
    with pytest.raises(ValueError, match="2 chunks"):
        model.step([np.zeros((2, I_SIZE))], [s, model.stream()])
    with pytest.raises(TypeError):
        model.step(np.zeros((2, I_SIZE)), "stream")
    assert model.step([], []) == []
    # a failed step leaves the stream usable and unchanged
    assert not any(a.any() for v in s.state.values() for a in v)


def test_model_stays_immutable_and_pickles(rng):
    import pickle

    model = graph_model(rng, "gru", np.float32)
    x = rng.standard_normal((9, I_SIZE)).astype(np.float32)
    before = model.predict(x[None])
    s = model.stream()
    model.step(x, s)
    assert_bitwise(model.predict(x[None]), before, "predict after a step")
    again = pickle.loads(pickle.dumps(model))
    assert_bitwise(whole(again, x)[0], whole(model, x)[0], "unpickled")


# -- the state blocks (rnnfast._stream) ------------------------------------------------


@pytest.mark.parametrize("variant", ["gru", "lstm"])
def test_batched_step_in_place_gathered_and_across_blocks_agree(variant, rng):
    """A batched step of equal chunks runs on the block's own rows when its streams are
    one block's consecutive rows in order, else on their rows gathered (shuffled, in
    two blocks): every form gives each stream's outputs and states alone, bitwise."""
    from rnnfast import _stream

    model = graph_model(rng, variant, np.float32, H=(16,))
    n = _stream.ROWS + 8
    streams = [model.stream() for _ in range(n)]
    p = streams[0]._program
    assert len({s._block for s in streams}) == 2
    forms = {
        "consecutive": list(range(3, 40)),
        "shuffled": list(rng.permutation(40)),
        "two blocks": list(rng.permutation(n)[:50]),
        "one": [17],
    }
    in_place = {}
    for name, pick in forms.items():
        batch = _stream.take([streams[i] for i in pick], p)
        in_place[name] = batch.rows
        batch.release()
    assert in_place == {"consecutive": True, "shuffled": False, "two blocks": False, "one": True}
    for name, pick in forms.items():
        chosen = [streams[i] for i in pick]
        for c in chosen:
            c.reset()
        xs = [rng.standard_normal((6, I_SIZE)).astype(np.float32) for _ in pick]
        got = [model.step([x[a : a + 2] for x in xs], chosen) for a in range(0, 6, 2)]
        for j, (x, c) in enumerate(zip(xs, chosen)):
            want, want_state = whole(model, x)
            assert_bitwise(np.concatenate([g[j] for g in got]), want, "%s stream %d" % (name, j))
            assert_state_bitwise(c.state, want_state, "%s stream %d" % (name, j))


def test_state_blocks_grow_and_rows_come_back_zeroed(rng):
    """Streams past a block's rows open new blocks; a stream that is gone gives its row
    back, and the next stream takes it with zero states; a stream outlives its model."""
    import gc

    from rnnfast import _stream

    model = graph_model(rng, "lstm", np.float32, H=(8,))
    x = rng.standard_normal((5, I_SIZE)).astype(np.float32)
    streams = [model.stream() for _ in range(2 * _stream.ROWS + 3)]
    blocks = list(dict.fromkeys(s._block for s in streams))
    assert len(blocks) == 3 and [len(b.free) for b in blocks] == [0, 0, _stream.ROWS - 3]
    victim = streams[_stream.ROWS + 7]
    block, row = victim._block, victim._row
    model.step(x, victim)
    assert np.any(block.slots[0][row])
    del streams[_stream.ROWS + 7], victim
    gc.collect()
    assert row in block.free
    new = model.stream()  # the first block with a free row: the freed one's
    assert (new._block, new._row) == (block, row) and len(blocks[2].free) == _stream.ROWS - 3
    assert not any(a.any() for v in new.state.values() for a in v)
    want, want_state = whole(model, x)
    assert_bitwise(model.step(x, new), want, "a reused row")
    assert_state_bitwise(new.state, want_state, "a reused row")
    keep = new.state
    del model
    gc.collect()
    assert_state_bitwise(new.state, keep, "after the model is gone")
    new.reset()
    assert not any(a.any() for v in new.state.values() for a in v)


def test_a_stream_is_not_pickled_its_state_is(rng):
    """Pickling or copying a stream is refused with the way to do it: its state pickles
    and restores into a new stream, which continues the sequence bitwise."""
    import copy
    import pickle

    model = graph_model(rng, "gru", np.float32)
    x = rng.standard_normal((10, I_SIZE)).astype(np.float32)
    s = model.stream()
    model.step(x[:4], s)
    for f in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="stream.state"):
            f(s)
    t = model.stream()
    t.state = pickle.loads(pickle.dumps(s.state))
    assert_bitwise(model.step(x[4:], t), model.step(x[4:], s), "restored from a pickle")


def test_refused_batched_steps_claim_nothing(rng):
    """A batched step refused for any of its streams (not a stream, another model's, one
    not made by model.stream(), one that another thread is stepping) leaves every
    stream of the list free and unchanged."""
    from rnnfast.stream import Stream

    model = graph_model(rng, "gru", np.float32, H=(64,), head=False)
    other = graph_model(rng, "gru", np.float32, H=(64,), head=False)
    a, b = model.stream(), model.stream()
    x = np.ones((2, I_SIZE), np.float32)
    cases = {
        TypeError: [a, b, "a stream"],
        ValueError: [a, b, other.stream()],
        RuntimeError: [a, b, Stream.__new__(Stream)],
    }
    for error, streams in cases.items():
        with pytest.raises(error):
            model.step([x] * 3, streams)
        assert not a._in_use() and not b._in_use()
    with pytest.raises(RuntimeError, match="model.stream"):
        Stream.__new__(Stream).reset()
    with pytest.raises(RuntimeError, match="once"):
        Stream.__init__(a, a._program)
    long_x = rng.standard_normal((200_000, I_SIZE)).astype(np.float32)
    s, t, result = _stepping_in_a_thread(model, long_x)
    refused = 0
    while t.is_alive():
        try:
            model.step([x] * 3, [a, b, s])
        except RuntimeError as e:
            assert "another thread" in str(e)
            refused += 1
            assert not a._in_use() and not b._in_use()
            assert not any(v.any() for st in (a, b) for arrays in st.state.values() for v in arrays)
        # (once the thread is done, the step runs)
    t.join()
    assert refused
    assert_bitwise(result["y"], whole(model, long_x)[0], "the first call's result")


# -- refusals --------------------------------------------------------------------------


def _keras_refused(build, name):
    keras = pytest.importorskip("keras")
    inp = keras.Input((None, I_SIZE))
    model = rnnfast.from_keras(keras.Model(inp, build(keras.layers, inp)))
    with pytest.raises(UnsupportedLayerError, match=name):
        model.stream()


@pytest.mark.parametrize(
    "what",
    ["bidirectional", "go_backwards", "pool", "conv_same", "attention", "initial_state"],
)
def test_models_that_need_the_future_are_refused(what):
    builds = {
        "bidirectional": lambda L, i: L.Dense(2)(
            L.Bidirectional(L.GRU(4), name="bidi")(L.GRU(3, return_sequences=True)(i))
        ),
        "go_backwards": lambda L, i: L.GRU(4, go_backwards=True, name="backw")(i),
        "pool": lambda L, i: L.GlobalAveragePooling1D(name="poolx")(L.GRU(4, return_sequences=True)(i)),
        "conv_same": lambda L, i: L.GRU(3)(L.Conv1D(4, 3, padding="same", name="convx")(i)),
        "attention": lambda L, i: L.Attention(name="attx")([L.GRU(4, return_sequences=True)(i)] * 2),
        "initial_state": lambda L, i: L.GRU(4, name="dec")(i, initial_state=L.GRU(4, return_state=True)(i)[1:]),
    }
    names = {
        "bidirectional": "bidi",
        "go_backwards": "backw",
        "pool": "poolx",
        "conv_same": "convx",
        "attention": "attx",
        "initial_state": "dec",
    }
    _keras_refused(builds[what], names[what])


def test_bidirectional_torch_module_refused():
    model = rnnfast.from_torch(make_module("GRU", I_SIZE, 4, bidirectional=True))
    with pytest.raises(UnsupportedLayerError, match="l0"):
        model.stream()


# -- threads ---------------------------------------------------------------------------


def test_streams_from_threads_equal_serial(rng):
    model = graph_model(rng, "lstm", np.float32, H=(48,))
    xs = [rng.standard_normal((300, I_SIZE)).astype(np.float32) for _ in range(6)]
    serial = [whole(model, x)[0] for x in xs]
    got = [None] * len(xs)
    errors = []

    def work(i):
        try:
            s = model.stream()
            got[i] = np.concatenate([model.step(xs[i][a : a + 7], s) for a in range(0, 300, 7)])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for g, w in zip(got, serial):
        assert_bitwise(g, w, "threaded")


def _stepping_in_a_thread(model, x):
    """A new stream stepped through ``x`` by a thread, returned once the step runs:
    (stream, thread, result: ``result["y"]`` once the thread is done)."""
    s = model.stream()
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("y", model.step(x, s, num_threads=1)))
    t.start()
    while not s._in_use() and t.is_alive():
        pass
    return s, t, result


def test_one_stream_from_two_threads_is_refused_and_not_corrupted(rng):
    """While one thread steps a stream (a long chunk: the compiled call runs without the
    GIL), another thread's step, state read or reset of the same stream is refused;
    the first call's result is intact; Python code runs meanwhile (GIL released)."""
    model = graph_model(rng, "gru", np.float32, H=(64,), head=False)
    x = rng.standard_normal((200_000, I_SIZE)).astype(np.float32)
    s, t, result = _stepping_in_a_thread(model, x)
    ticks = 0
    refused = []
    while t.is_alive():
        ticks += 1
        for call in (lambda: model.step(x[:3], s), lambda: s.state, s.reset):
            try:
                call()
            except RuntimeError as e:
                refused.append(str(e))
    t.join()
    assert refused and all("another thread" in r for r in refused)
    assert ticks > 10, "the main thread did not run while the step computed (GIL held?)"
    want, _ = whole(model, x)
    assert_bitwise(result["y"], want, "the first call's result")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_streams_step_in_that_precision(precision):
    """A bf16 / int8 model's stream runs its reduced-precision products (the step path's
    compiled entry binds the packed reduced weights), giving what its whole call gives,
    not float32's."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.GRU(16, 32, num_layers=2)
    exact = rnnfast.from_torch(module)
    model = exact.with_precision(precision)
    x = np.random.default_rng(0).standard_normal((40, 1, 16)).astype(np.float32)
    want, _ = model(x)
    float_out, _ = exact(x)
    s = model.stream()
    got = np.concatenate([model.step(x[t : t + 7, 0], s) for t in range(0, 40, 7)])
    np.testing.assert_allclose(got, want[:, 0], rtol=1e-5, atol=1e-6)
    assert np.abs(got - float_out[:, 0]).max() > 1e-5  # the reduced products ran, not float32's


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("variant", ["gru", "gru_rb", "lstm", "simple"])
def test_reduced_precision_chain_steps_through_the_bound_entry(precision, variant, rng):
    """A chain model in bf16 / int8 takes the step's hot path (one bound compiled entry
    per recurrent op, no rnn_forward per chunk), bit for bit its whole call, alone and
    with other streams in one batched step."""
    exact = graph_model(rng, variant, np.float32)
    model = exact.with_precision(precision)
    x = rng.standard_normal((3, 30, I_SIZE)).astype(np.float32)
    want = model.predict(x)
    s = model.stream()
    got = np.concatenate([model.step(x[0, a : a + 7], s) for a in range(0, 30, 7)])
    assert_bitwise(got, want[0], "%s %s stream" % (precision, variant))
    streams = [model.stream() for _ in range(3)]
    parts = [model.step([x[k, a : a + 7] for k in range(3)], streams) for a in range(0, 30, 7)]
    for k in range(3):
        got = np.concatenate([part[k] for part in parts])
        assert_bitwise(got, want[k], "%s %s stream %d of 3" % (precision, variant, k))
    p = model._stream_program()
    assert p.chain is not None
    bound = [f for f in p.chain if f.__qualname__.startswith("_chain_one_kernel.")]
    assert len(bound) == 2, [f.__qualname__ for f in p.chain]
    assert np.abs(got - exact.predict(x)[2]).max() > 1e-5  # the reduced products ran, not float32's


@pytest.mark.parametrize("model_kind", ["graph", "torch"])
def test_chunks_of_any_form_give_the_same_bits(model_kind, rng):
    """The common chunk (a C-contiguous ndarray of the model's dtype) runs inline; any
    other form (a strided view, another dtype, a list, a float64 chunk of whole
    numbers) goes through the checked path: the same results, bit for bit."""
    model = graph_model(rng, "gru", np.float32) if model_kind == "graph" else torch_model("gru", np.float32)
    x = rng.standard_normal((12, I_SIZE)).astype(np.float32)
    want, want_state = whole(model, x)
    wide = np.zeros((12, 2 * I_SIZE), np.float32)
    wide[:, ::2] = x
    forms = {
        "strided": lambda a, b: wide[a:b, ::2],
        "float64": lambda a, b: x[a:b].astype(np.float64),
        "list": lambda a, b: x[a:b].tolist(),
        "fortran": lambda a, b: np.asfortranarray(x[a:b]),
    }
    for name, form in forms.items():
        s = model.stream()
        got = np.concatenate([model.step(form(a, a + 3), s) for a in range(0, 12, 3)])
        assert_bitwise(got, want, name)
        assert_state_bitwise(s.state, want_state, name)
    with pytest.raises(ValueError):
        model.step(x[:, :3], model.stream())


@pytest.mark.parametrize("masked", [False, True])
def test_batched_streams_over_several_state_blocks(masked, rng):
    """More live streams than one state block holds (ROWS): a batched step
    gathers each block's rows, in the call's order, and scatters them back (chunks equal
    and ragged, the same stream twice refused); results bitwise each stream alone."""
    from rnnfast._stream import ROWS

    model = graph_model(rng, "lstm", np.float32, H=(8,), ids=7 if masked else None)
    n = ROWS + 40
    streams = [model.stream() for _ in range(n)]
    pick = rng.permutation(n)[: ROWS // 2 + 30]  # from both blocks, shuffled
    assert len({streams[i]._block for i in pick}) == 2

    def chunk(T):
        if masked:
            ids = rng.integers(0, 7, size=T)
            ids[rng.random(T) < 0.3] = 0  # masked steps (Embedding mask_zero)
            return ids
        return rng.standard_normal((T, I_SIZE)).astype(np.float32)

    xs = {int(i): chunk(9) for i in pick}
    cuts = {i: random_cuts(rng, 9, max_len=4) for i in xs}
    cuts[int(pick[0])] = [0, 3, 6, 9]  # with the others' random cuts: rounds equal and ragged
    got: dict = {i: [] for i in xs}
    for r in range(9):
        live = [i for i in xs if r < len(cuts[i]) - 1]
        if not live:
            break
        ys = model.step([xs[i][cuts[i][r] : cuts[i][r + 1]] for i in live], [streams[i] for i in live])
        for i, y in zip(live, ys):
            got[i].append(y)
    for i in list(xs)[:40]:
        want, want_state = whole(model, xs[i])
        assert_bitwise(np.concatenate(got[i]), want, "stream %d" % i)
        assert_state_bitwise(streams[i].state, want_state, "stream %d" % i)
    a, b = streams[int(pick[0])], streams[int(pick[-1])]
    with pytest.raises(ValueError, match="twice"):
        model.step([xs[int(pick[0])][:1]] * 3, [a, b, a])
    b.reset()  # not left claimed
    other = graph_model(rng, "lstm", np.float32, H=(8,), ids=7 if masked else None)
    with pytest.raises(ValueError, match="another model"):
        other.step([xs[int(pick[0])][:1]] * 2, [a, b])
