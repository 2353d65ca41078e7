"""ONNX's recurrent options on RNNLayer: LSTM peepholes (``CellWeights.peephole``),
``input_forget`` and the cell ``clip`` (every cell), against the float64 reference
(:mod:`rnnfast.reference`) and against ONNX Runtime on small generated ONNX graphs.

ONNX layouts (operator spec): LSTM gates i, o, f, c (canonical: i, f, c, o) and
peepholes P = [p_i, p_o, p_f] (canonical rows i, f, o); GRU gates z, r, h as Keras,
``linear_before_reset=1`` is reset-after; B = [Wb, Rb].
"""

import dataclasses
import pickle

import numpy as np
import pytest

from _testing import assert_close, random_weights
from rnnfast import reference
from rnnfast.layers import CellWeights, RNNLayer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

DTYPES = (np.float32, np.float64)


def _peephole_weights(rng, I, H, P=0):
    w = random_weights(rng, "lstm", I, H, P=P, scale=1.5)
    return dataclasses.replace(w, peephole=rng.uniform(-1, 1, (3, H)))


def _reference(layer, x, **kw):
    """The float64 reference run on the layer's own weights (as the layer holds them)."""
    return reference.run_layer(
        layer.cell,
        layer.cell_weights(),
        x,
        clip=layer.clip,
        input_forget=layer.input_forget,
        act=layer.activation,
        ract=layer.recurrent_activation,
        reset_after=layer.reset_after,
        go_backwards=layer.go_backwards,
        **kw,
    )


# -- against the float64 reference ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [5, 130])  # 130: unit blocks (both strategies)
@pytest.mark.parametrize("opts", [dict(), dict(clip=0.3), dict(input_forget=True), dict(clip=0.8, input_forget=True)])
def test_peephole_lstm_against_float64(rng, dtype, H, opts):
    """Peepholes, clip and input_forget, both directions, with masks and lengths, for
    batches of 1 (the blocked strategy at 130 units) and 5 rows."""
    I, T = 7, 9
    ws = [_peephole_weights(rng, I, H) for _ in range(2)]
    layer = RNNLayer("lstm", ws, dtype=dtype, **opts)
    assert layer._kernel_cell == "lstm_peep"
    for B in (1, 5):
        x = rng.standard_normal((T, B, I))
        lengths = rng.integers(0, T + 1, B)
        mask = rng.random((T, B)) > 0.3
        for kw in (dict(), dict(lengths=lengths), dict(mask=mask)):
            out, h, c = layer(x, **kw)
            want = _reference(layer, x, **kw)
            for got, ref, name in zip((out, h, c), want, ("out", "h", "c")):
                assert_close(got, ref, dtype, "%s B=%d %s %s" % (name, B, sorted(kw), opts))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,kw", [("gru", {}), ("gru", dict(reset_after=False)), ("lstm", {}), ("simple", {})])
def test_clip_on_every_cell_against_float64(rng, dtype, cell, kw):
    """The cell clip on the plain cells (and the LSTM with a projection)."""
    I, H, T, B = 6, 20, 8, 4
    x = 2 * rng.standard_normal((T, B, I))
    for P in (0, 3) if cell == "lstm" else (0,):
        ws = [random_weights(rng, cell, I, H, P=P, scale=3.0) for _ in range(2)]
        layer = RNNLayer(cell, ws, dtype=dtype, clip=0.5, **kw)
        lengths = rng.integers(0, T + 1, B)
        got = layer(x, lengths=lengths)
        want = _reference(layer, x, lengths=lengths)
        for g, r in zip(got, want):
            if r is not None:
                assert_close(g, r, dtype, "%s P=%d" % (cell, P))
        # the clip does something here: without it the outputs differ
        plain = RNNLayer(cell, ws, dtype=dtype, **kw)(x, lengths=lengths)[0]
        assert np.abs(plain - got[0]).max() > 1e-3


def test_peephole_results_do_not_depend_on_threads_or_chunks(rng):
    """Bitwise the same for 1 and 2 threads and any chunking (blocked and item)."""
    I, H, T = 5, 130, 12
    layer = RNNLayer("lstm", [_peephole_weights(rng, I, H)], clip=1.0)
    for B in (1, 7):
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        ref = layer(x, num_threads=1)
        for threads, chunk in ((2, None), (1, 5), (2, 1)):
            got = layer(x, num_threads=threads, chunk_steps=chunk)
            for g, r in zip(got, ref):
                assert g.tobytes() == r.tobytes()


def test_options_refused_where_they_mean_nothing(rng):
    w = random_weights(rng, "gru", 3, 4)
    with pytest.raises(ValueError, match="LSTM"):
        RNNLayer("gru", [dataclasses.replace(w, peephole=np.zeros((3, 4)))])
    with pytest.raises(ValueError, match="LSTM"):
        RNNLayer("simple", [random_weights(rng, "simple", 3, 4)], input_forget=True)
    for bad in (0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="clip"):
            RNNLayer("gru", [w], clip=bad)
    with pytest.raises(ValueError, match="peephole"):
        RNNLayer("lstm", [dataclasses.replace(random_weights(rng, "lstm", 3, 4), peephole=np.zeros((2, 4)))])


def test_peephole_layer_pickles_and_describes_itself(rng):
    layer = RNNLayer("lstm", [_peephole_weights(rng, 3, 4)], clip=2.0, input_forget=True)
    assert "peephole=True" in repr(layer) and "clip=2" in repr(layer) and "input_forget=True" in repr(layer)
    x = rng.standard_normal((5, 2, 3))
    back = pickle.loads(pickle.dumps(layer))
    assert back(x)[0].tobytes() == layer(x)[0].tobytes()
    assert layer.source_parameters == 3 * 16 + 4 * 16 + 2 * 16 + 12


# -- against ONNX Runtime ---------------------------------------------------------------


def _onnx_session(op, inputs, attrs, T, B, I):
    """A one-node ONNX graph: X (and sequence_lens) fed, the weights as initialisers."""
    names, inits = [], []
    for name, a in inputs:
        names.append(name)
        if name in ("X", "sequence_lens") or a is None:
            continue
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, a.shape, a.astype(np.float32).ravel()))
    names = [n if dict(inputs)[n] is not None or n in ("X", "sequence_lens") else "" for n in names]
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, names, outs, **attrs)
    feeds = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    if "sequence_lens" in names:
        feeds.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
    graph = helper.make_graph(
        [node], "g", feeds, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outs], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _onnx_lstm_to_canonical(W, R, Bias, P, H):
    """ONNX LSTM tensors of one direction -> CellWeights (gates i, o, f, c -> i, f, c, o)."""

    def gates(a):
        i, o, f, c = np.split(a, 4, axis=0)
        return np.concatenate([i, f, c, o], axis=0)

    p_i, p_o, p_f = np.split(P, 3)
    return CellWeights(
        gates(W).T.copy(), gates(R).T.copy(), gates(Bias[: 4 * H]), gates(Bias[4 * H :]), None, np.stack([p_i, p_f, p_o])
    )


def _run_onnx(sess, x, lengths):
    feed = {"X": x.astype(np.float32)}
    if lengths is not None:
        feed["sequence_lens"] = lengths.astype(np.int32)
    return sess.run(None, feed)


def _as_torch_layout(Y):
    """ONNX Y (T, D, B, H) -> (T, B, D*H), directions concatenated."""
    T, D, B, H = Y.shape
    return np.transpose(Y, (0, 2, 1, 3)).reshape(T, B, D * H)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("opts", [dict(), dict(clip=0.4), dict(input_forget=1), dict(clip=0.9, input_forget=1)])
def test_lstm_against_onnxruntime(rng, direction, opts):
    """ONNX LSTM with peepholes, clip and input_forget, with sequence_lens, over a
    sequence long enough for the cell state to pass the clip (not clipped itself)."""
    T, B, I, H = 40, 3, 4, 6
    D = 2 if direction == "bidirectional" else 1
    W = rng.uniform(-1, 1, (D, 4 * H, I))
    R = rng.uniform(-1, 1, (D, 4 * H, H))
    Bias = rng.uniform(-1, 1, (D, 8 * H))
    P = rng.uniform(-1, 1, (D, 3 * H))
    x = 2 * rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([T, 1, T // 2])
    sess = _onnx_session(
        "LSTM",
        [("X", None), ("W", W), ("R", R), ("B", Bias), ("sequence_lens", lengths), ("initial_h", None),
         ("initial_c", None), ("P", P)],
        dict(hidden_size=H, direction=direction, **opts),
        T, B, I,
    )
    Y, Y_h, Y_c = _run_onnx(sess, x, lengths)
    ws = [_onnx_lstm_to_canonical(W[d].astype(np.float32), R[d].astype(np.float32),
                                  Bias[d].astype(np.float32), P[d].astype(np.float32), H) for d in range(D)]
    layer = RNNLayer(
        "lstm", ws, clip=opts.get("clip"), input_forget=bool(opts.get("input_forget")),
        go_backwards=direction == "reverse",
    )
    out, h, c = layer(x, lengths=lengths)
    if "clip" in opts and not opts.get("input_forget"):  # (coupled gates keep |c| below it)
        assert np.abs(c).max() > opts["clip"]  # the cell state passes the clip: not clipped itself
    assert_close(out, _as_torch_layout(Y), np.float32, "Y")
    assert_close(h, Y_h, np.float32, "Y_h")
    assert_close(c, Y_c, np.float32, "Y_c")


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("clip", [None, 0.5])
def test_gru_against_onnxruntime(rng, linear_before_reset, clip):
    """ONNX GRU (both reset variants) with clip, bidirectional, with sequence_lens."""
    T, B, I, H = 12, 3, 4, 5
    W = rng.uniform(-1, 1, (2, 3 * H, I))
    R = rng.uniform(-1, 1, (2, 3 * H, H))
    Bias = rng.uniform(-1, 1, (2, 6 * H))
    x = 2 * rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([T, 3, 7])
    attrs = dict(hidden_size=H, direction="bidirectional", linear_before_reset=linear_before_reset)
    if clip is not None:
        attrs["clip"] = clip
    sess = _onnx_session("GRU", [("X", None), ("W", W), ("R", R), ("B", Bias), ("sequence_lens", lengths)], attrs, T, B, I)
    Y, Y_h = _run_onnx(sess, x, lengths)
    W, R, Bias = (a.astype(np.float32) for a in (W, R, Bias))
    ws = [CellWeights(W[d].T.copy(), R[d].T.copy(), Bias[d, : 3 * H], Bias[d, 3 * H :]) for d in range(2)]
    out, h, _ = RNNLayer("gru", ws, reset_after=bool(linear_before_reset), clip=clip)(x, lengths=lengths)
    assert_close(out, _as_torch_layout(Y), np.float32, "Y")
    assert_close(h, Y_h, np.float32, "Y_h")


def test_rnn_against_onnxruntime(rng):
    """ONNX RNN (tanh) with clip."""
    T, B, I, H = 10, 2, 3, 4
    W, R, Bias = rng.uniform(-1, 1, (1, H, I)), rng.uniform(-1, 1, (1, H, H)), rng.uniform(-1, 1, (1, 2 * H))
    x = 2 * rng.standard_normal((T, B, I)).astype(np.float32)
    sess = _onnx_session("RNN", [("X", None), ("W", W), ("R", R), ("B", Bias)], dict(hidden_size=H, clip=0.3), T, B, I)
    Y, Y_h = _run_onnx(sess, x, None)
    W, R, Bias = (a.astype(np.float32) for a in (W, R, Bias))
    out, h, _ = RNNLayer("simple", [CellWeights(W[0].T.copy(), R[0].T.copy(), Bias[0, :H], Bias[0, H:])], clip=0.3)(x)
    assert_close(out, _as_torch_layout(Y), np.float32, "Y")
    assert_close(h, Y_h, np.float32, "Y_h")
