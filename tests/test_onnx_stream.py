"""Streams of ONNX models (OnnxModel.stream / step): chunked sequences bitwise the
whole sequence, alone and batched with ragged chunks; against ONNX Runtime with the
state threaded through the graph by hand; the refusals of graphs that need the future."""

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rnnfast
from rnnfast import UnsupportedLayerError

from _testing import assert_close, step_in_ragged_batches, streamed_products

I, H, N = 5, 16, 3


class _Net(torch.nn.Module):
    def __init__(self, cell, batch_first):
        super().__init__()
        self.rnn = getattr(torch.nn, cell)(I, H, batch_first=batch_first)
        self.head = torch.nn.Linear(H, N)

    def forward(self, x):
        y, _ = self.rnn(x)
        return torch.tanh(self.head(y))


def torch_export(cell, batch_first):
    torch.manual_seed(0)
    net = _Net(cell, batch_first).eval()
    axes = {0: "b", 1: "t"} if batch_first else {0: "t", 1: "b"}
    f = io.BytesIO()
    x = torch.randn(2, 7, I) if batch_first else torch.randn(7, 2, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x,), f, dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes={"x": axes, "y": axes}
        )
    return f.getvalue()


def _cuts(rng, n):
    cuts = [0]
    while cuts[-1] < n:
        cuts.append(min(n, cuts[-1] + int(rng.integers(1, 9))))
    return cuts


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_torch_export_streams_bitwise_and_matches_onnxruntime(cell, batch_first, threads, rng):
    data = torch_export(cell, batch_first)
    model = rnnfast.from_onnx(data)
    x = rng.standard_normal((40, I)).astype(np.float32)
    s = model.stream()
    whole = model.step(x, s, num_threads=threads)
    state = s.state
    assert whole.shape == (40, N) and list(state) == ["/rnn/%s" % cell]
    feed = x[None] if batch_first else x[:, None]
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0]
    assert_close(whole, want[0] if batch_first else want[:, 0], np.float32)
    for _ in range(2):
        s = model.stream()
        cuts = _cuts(rng, len(x))
        got = np.concatenate([model.step(x[a:b], s, num_threads=threads) for a, b in zip(cuts, cuts[1:])])
        assert np.array_equal(got, whole), cuts
        for a, b in zip(s.state[list(state)[0]], state[list(state)[0]]):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_continuous_batching_is_bitwise_each_stream_alone(cell, rng):
    model = rnnfast.from_onnx(torch_export(cell, True))
    xs = [rng.standard_normal((int(rng.integers(10, 30)), I)).astype(np.float32) for _ in range(5)]
    wants = []
    for x in xs:
        wants.append(model.step(x, model.stream()))
    outs, _ = step_in_ragged_batches(model, xs, rng, max_chunk=7, p_live=0.8)
    for i in range(len(xs)):
        assert np.array_equal(outs[i], wants[i]), i


def lstm_graph(rng, *, with_state, last_step=False, layout=0):
    """x (batch, time, I) -> Transpose -> LSTM -> Squeeze -> Transpose -> MatMul + Add ->
    Sigmoid, as torch writes it; ``with_state``: initial_h / initial_c inputs and Y_h /
    Y_c outputs (the state threaded by hand for ONNX Runtime); ``last_step``: the output
    is the last step's (Gather -1 over time)."""
    W = (rng.standard_normal((1, 4 * H, I)) * 0.4).astype(np.float32)
    R = (rng.standard_normal((1, 4 * H, H)) * 0.4).astype(np.float32)
    Bb = (rng.standard_normal((1, 8 * H)) * 0.1).astype(np.float32)
    K = rng.standard_normal((H, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    rec_in = ["xt", "W", "R", "B", ""] + (["h0", "c0"] if with_state else [])
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="tr"),
        helper.make_node("LSTM", rec_in, ["y", "hn", "cn"], hidden_size=H, name="lstm"),
        helper.make_node("Squeeze", ["y", "one"], ["ys"], name="sq"),
    ]
    if last_step:
        nodes.append(helper.make_node("Gather", ["ys", "minus1"], ["yl"], axis=0, name="last"))
        nodes.append(helper.make_node("MatMul", ["yl", "K"], ["p"], name="mm"))
    else:
        nodes.append(helper.make_node("Transpose", ["ys"], ["yb"], perm=[1, 0, 2], name="tr2"))
        nodes.append(helper.make_node("MatMul", ["yb", "K"], ["p"], name="mm"))
    nodes += [
        helper.make_node("Add", ["p", "b"], ["q"], name="add"),
        helper.make_node("Sigmoid", ["q"], ["out"], name="sig"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (Bb, "B"), (K, "K"), (b, "b"))]
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(-1, np.int64), "minus1"),
    ]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", I])]
    outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if with_state:
        ins += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "batch", H]) for n in ("h0", "c0")]
        outs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("hn", "cn")]
    g = helper.make_graph(nodes, "g", ins, outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("last_step", [False, True])
def test_matches_onnxruntime_with_the_state_threaded_by_hand(last_step):
    rng = np.random.default_rng(5)
    plain = lstm_graph(np.random.default_rng(1), with_state=False, last_step=last_step)
    threaded = lstm_graph(np.random.default_rng(1), with_state=True, last_step=last_step)
    sess = ort.InferenceSession(threaded.SerializeToString(), providers=["CPUExecutionProvider"])
    model = rnnfast.from_onnx(plain)
    x = rng.standard_normal((33, I)).astype(np.float32)
    s = model.stream()
    h = np.zeros((1, 1, H), np.float32)
    c = np.zeros((1, 1, H), np.float32)
    cuts = _cuts(rng, len(x))
    for a, b in zip(cuts, cuts[1:]):
        got = model.step(x[a:b], s)
        want, h, c = sess.run(None, {"x": x[None, a:b], "h0": h, "c0": c})
        assert_close(got, want[0], np.float32)
        st = s.state["lstm"]
        assert_close(st[0], h[0, 0], np.float32)
        assert_close(st[1], c[0, 0], np.float32)
    # the state saved and restored, and reset
    saved = s.state
    y1 = model.step(x[:3], s)
    s.state = saved
    assert np.array_equal(model.step(x[:3], s), y1)
    s.reset()
    assert np.array_equal(model.step(x[:3], s), model.step(x[:3], model.stream()))


def _refusal_models(rng):
    def reverse():
        m = lstm_graph(rng, with_state=False)
        rec = m.graph.node[1]
        rec.attribute.append(helper.make_attribute("direction", "reverse"))
        return m

    def reduce_over_time():
        m = lstm_graph(rng, with_state=False)
        m.graph.node.append(helper.make_node("ReduceMean", ["out"], ["pooled"], axes=[1], keepdims=0, name="pool"))
        del m.graph.output[:]
        m.graph.output.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None))
        return m

    def state_input():
        return lstm_graph(rng, with_state=True)

    def nonzero_state():
        m = lstm_graph(rng, with_state=False)
        rec = m.graph.node[1]
        del rec.input[4:]
        rec.input.extend(["", "h0"])
        m.graph.initializer.append(numpy_helper.from_array(np.full((1, 1, H), 0.5, np.float32), "h0"))
        return m

    def fixed_time():
        m = lstm_graph(rng, with_state=False)
        m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 12
        return m

    return {
        "reverse": (reverse, "lstm", "future"),
        "pooling over time": (reduce_over_time, "pool", "time axis"),
        "state inputs": (state_input, None, "one input"),
        "initial state not zeros": (nonzero_state, "lstm", "stream.state"),
        "fixed time axis": (fixed_time, None, "dynamic time axis"),
    }


@pytest.mark.parametrize(
    "what", ["reverse", "pooling over time", "state inputs", "initial state not zeros", "fixed time axis"]
)
def test_graphs_that_cannot_stream_are_refused_naming_the_node(what):
    make, node, match = _refusal_models(np.random.default_rng(2))[what]
    model = rnnfast.from_onnx(make())
    with pytest.raises(UnsupportedLayerError, match=match) as e:
        model.stream()
    if node is not None:
        assert repr(node) in str(e.value)
    x = np.zeros((1, 12, I), np.float32)
    if what != "state inputs":
        model.run(None, {"x": x})  # the model itself still runs


def test_bidirectional_torch_export_refused():
    torch.manual_seed(0)
    net = torch.nn.GRU(I, H, bidirectional=True, batch_first=True).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.randn(1, 4, I),), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b", 1: "t"}}
        )
    with pytest.raises(UnsupportedLayerError, match="backward direction"):
        rnnfast.from_onnx(f.getvalue()).stream()


class _Classifier(torch.nn.Module):
    """Embedding -> LSTM -> the last step's log-softmax, and a head on h_n."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.rnn = torch.nn.LSTM(8, H, batch_first=True)
        self.head = torch.nn.Linear(H, 4)

    def forward(self, ids):
        y, (h, _) = self.rnn(self.emb(ids))
        return torch.log_softmax(self.head(y[:, -1]), -1), self.head(h[-1])


@pytest.mark.parametrize("dynamo", [False, True])
def test_ids_model_many_to_one_is_the_output_as_if_the_sequence_ended_there(dynamo):
    torch.manual_seed(0)
    net = _Classifier().eval()
    f = io.BytesIO()
    ids = torch.randint(0, 50, (2, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:  # its Reshape's target shape is computed from the input's
            dims = ({0: torch.export.Dim("b"), 1: torch.export.Dim("t")},)
            torch.onnx.export(net, (ids,), f, dynamo=True, input_names=["ids"], dynamic_shapes=dims, verbose=False)
        else:
            torch.onnx.export(net, (ids,), f, dynamo=False, input_names=["ids"], dynamic_axes={"ids": {0: "b", 1: "t"}})
    model = rnnfast.from_onnx(f.getvalue())
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    seq = np.random.default_rng(0).integers(0, 50, 20)
    s = model.stream()
    for a, b in ((0, 3), (3, 4), (4, 11), (11, 20)):
        got = model.step(seq[a:b], s)
        want = sess.run(None, {"ids": seq[None, :b]})
        assert len(got) == 2
        for g, w in zip(got, want):
            assert g.shape == w[0].shape
            assert_close(g, w[0], np.float32)
    whole = model.step(seq, model.stream())
    for g, w in zip(got, whole):
        assert np.array_equal(g, w)


class _LanguageModel(torch.nn.Module):
    """PyTorch's word_language_model shape, small: Embedding -> GRU -> Linear over the
    vocabulary (logits for every step)."""

    def __init__(self, vocab):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 8)
        self.rnn = torch.nn.GRU(8, H, batch_first=True)
        self.head = torch.nn.Linear(H, vocab)

    def forward(self, ids):
        return self.head(self.rnn(self.emb(ids))[0])


def test_a_head_read_past_the_cache_steps_a_token_at_a_time_with_the_same_bits(monkeypatch):
    """A language model whose weights overflow the last-level cache (made small here)
    has its head's product marked to read its weights past the caches (ProductOp.stream,
    as the model's calls mark it); its stream, stepped a token at a time as generation
    steps it, runs that product on the weights packed at load, streamed at one row: the
    bits of the same model with every weight kept, on 1 and 2 threads, and ONNX
    Runtime's values."""
    from rnnfast import _plan
    from rnnfast.model_onnx import ProductOp, _weight_bytes

    vocab = 2000
    torch.manual_seed(0)
    net = _LanguageModel(vocab).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.randint(0, vocab, (2, 7)),), f, dynamo=False, input_names=["ids"],
            dynamic_axes={"ids": {0: "b", 1: "t"}},
        )  # fmt: skip
    data = f.getvalue()
    monkeypatch.setattr(_plan, "_l3", [1 << 40])
    kept = rnnfast.from_onnx(data)
    ops = [op for op, *_ in kept._compiled()[0]]
    assert not any(getattr(op, "stream", False) for op in ops)
    monkeypatch.setattr(_plan, "_l3", [sum(_weight_bytes(op) for op in ops) - 1])
    model = rnnfast.from_onnx(data)  # (its stream marks the products before any call)
    streamed = [op for op, *_ in model._compiled()[0] if isinstance(op, ProductOp) and op.stream]
    assert streamed
    seen = streamed_products(monkeypatch)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(0, vocab, 9)
    for n in (1, 2):
        want = kept.step(ids, kept.stream(), num_threads=n)
        s = model.stream()
        got = np.concatenate([model.step(ids[t : t + 1], s, num_threads=n) for t in range(len(ids))])
        assert got.shape == want.shape and np.array_equal(got, want), n
    assert any(seen), "the one-row head did not read its weights past the caches"
    assert_close(got, sess.run(None, {"ids": ids[None]})[0][0], np.float32)


def test_one_thread_steps_leave_the_partner_thread_alone():
    """A wide layer's one-step call shares its tasks with the products' partner thread
    at 2 threads or more (_plan.uses_partner); a stream stepped on one thread
    (``num_threads=1``, or ``rnnfast.set_num_threads(1)``) runs on the caller alone and
    gives the same bits."""
    from rnnfast import _rowops

    if not _rowops.PARTNER:
        pytest.skip("no partner thread in this build (not Linux)")
    torch.manual_seed(0)
    rnn, head = torch.nn.GRU(8, 256), torch.nn.Linear(256, 3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = rnn, head

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {0: "t", 1: "b"}
        torch.onnx.export(
            Net().eval(), (torch.randn(7, 2, 8),), f, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": axes, "y": axes},
        )  # fmt: skip
    model = rnnfast.from_onnx(f.getvalue())
    x = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)
    want = model.step(x, model.stream(), num_threads=2)
    before = rnnfast.get_num_threads()
    try:
        for how in ("argument", "default"):
            jobs = _rowops.partner_jobs()
            s = model.stream()
            if how == "default":
                rnnfast.set_num_threads(1)
                got = np.concatenate([model.step(x[t : t + 1], s) for t in range(len(x))])
            else:
                got = np.concatenate([model.step(x[t : t + 1], s, num_threads=1) for t in range(len(x))])
            assert _rowops.partner_jobs() == jobs, how
            assert np.array_equal(got, want), how
    finally:
        rnnfast.set_num_threads(before)


def test_bench_stream_lm_checks_every_engine_against_pytorch(tmp_path):
    """bench/stream_lm.py (a small model, one round): every engine's logits over 20
    tokens against PyTorch's first (its assertion), then a row per engine and thread
    count in its JSON."""
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import stream_lm

    stream_lm.main(["--vocab", "300", "--units", "16", "--threads", "1,2", "--rounds", "1", "--calls", "2",
                    "--out", str(tmp_path)])  # fmt: skip
    rows = json.loads((tmp_path / "stream_lm.json").read_text())["rows"]
    assert {(r["engine"], r["threads"]) for r in rows} == {
        (e, n) for e in ("rnnfast", "rnnfast kept", "onnxruntime", "torch") for n in (1, 2)
    }
    assert all(r["wall_us"] > 0 for r in rows)


def test_streams_stepped_from_threads_at_once_equal_serial():
    """Streams of one ONNX model stepped from several threads at once (each call's
    states are its own: the program keeps them per thread) give the serial bits."""
    import threading

    model = rnnfast.from_onnx(torch_export("LSTM", True))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((40, I)).astype(np.float32) for _ in range(4)]
    want = [model.step(x, model.stream()) for x in xs]
    got: list = [None] * len(xs)
    start = threading.Barrier(len(xs))

    def work(k):
        s = model.stream()
        start.wait()
        got[k] = np.concatenate([model.step(xs[k][t : t + 1], s) for t in range(len(xs[k]))])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_batch_major_node_streams_its_sequence_and_final_states(rng):
    """An LSTM node of ``layout`` 1 (batch-major X, Y, Y_h, Y_c) whose three outputs the
    graph reads: the sequence through a bias-added product, the final states squeezed.
    Chunks give the whole sequence's outputs bitwise (the states: the last chunk's),
    and the whole sequence the model's call's."""
    W = (rng.standard_normal((1, 4 * H, I)) * 0.4).astype(np.float32)
    R = (rng.standard_normal((1, 4 * H, H)) * 0.4).astype(np.float32)
    K = rng.standard_normal((H, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R"], ["y", "hn", "cn"], hidden_size=H, layout=1, name="lstm"),
        helper.make_node("Squeeze", ["y", "two"], ["ys"], name="sq"),
        helper.make_node("MatMul", ["ys", "K"], ["p"], name="mm"),
        helper.make_node("Add", ["p", "b"], ["out"], name="add"),
        helper.make_node("Squeeze", ["hn", "one"], ["h"], name="sqh"),
        helper.make_node("Squeeze", ["cn", "one"], ["c"], name="sqc"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (K, "K"), (b, "b"))]
    inits += [numpy_helper.from_array(np.array([v], np.int64), n) for v, n in ((1, "one"), (2, "two"))]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "h", "c")],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = rnnfast.from_onnx(m)
    x = rng.standard_normal((29, I)).astype(np.float32)
    whole = model.step(x, model.stream())
    want = model.run(None, {"x": x[None]})  # (ONNX Runtime runs no layout 1: test_onnx_recurrent checks this one)
    for got, w in zip(whole, want):
        assert_close(got, w[0], np.float32)
    s = model.stream()
    cuts = _cuts(rng, len(x))
    parts = [model.step(x[a:b], s) for a, b in zip(cuts, cuts[1:])]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0]), cuts
    for got, w in zip(parts[-1][1:], whole[1:]):
        assert np.array_equal(got, w)
    h, c = s.state["lstm"]
    assert np.array_equal(h, whole[1]) and np.array_equal(c, whole[2])


@pytest.mark.parametrize("ids", [True, False])
def test_one_streams_common_chunk_takes_the_short_path_with_the_general_paths_bits(ids, monkeypatch):
    """One stream's chunk of the common form (a C-contiguous ndarray of the input's dtype)
    whose shape the model has run before skips the general path (the chunks' checks and
    lists, the batch's output layout): the same values as the general path gives a
    chunk it must convert (ids as a list, features in float64), chunk after chunk, and
    the same state."""
    from rnnfast import _onnx_stream

    torch.manual_seed(0)
    if ids:
        net, x = _LanguageModel(40).eval(), torch.randint(0, 40, (2, 7))
        seq = np.random.default_rng(1).integers(0, 40, 23)
        other = [int(v) for v in seq]  # (a list: converted by the general path)
    else:
        net, x = _Net("LSTM", True).eval(), torch.randn(2, 7, I)
        seq = np.random.default_rng(1).standard_normal((23, I)).astype(np.float32)
        other = seq.astype(np.float64)  # (converted to the model's float32 by the general path)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b", 1: "t"}})
    model = rnnfast.from_onnx(f.getvalue())
    general: list = []
    real = _onnx_stream._step_one
    monkeypatch.setattr(_onnx_stream, "_step_one", lambda *a: general.append(1) or real(*a))
    s, t = model.stream(), model.stream()
    cuts = [0, 1, 2, 3, 7, 8, 9, 20, 21, 23]
    for a, b in zip(cuts, cuts[1:]):
        n = len(general)
        got = model.step(seq[a:b], s)
        shortcut = len(general) == n
        want = model.step(other[a:b], t)
        assert len(general) == n + 1 + (not shortcut)  # (the converted chunk: the general path)
        assert np.array_equal(got, want) and got.flags.c_contiguous, (a, b)
    for a, b in zip(s.state["/rnn/%s" % ("GRU" if ids else "LSTM")], t.state["/rnn/%s" % ("GRU" if ids else "LSTM")]):
        assert np.array_equal(a, b)
    assert len(general) < 2 * (len(cuts) - 1)  # (chunks of shapes seen before: the short path)
