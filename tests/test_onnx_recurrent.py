"""ONNX LSTM / GRU / RNN nodes against ONNX Runtime: generated graphs (onnx.helper) with
random weights over every attribute rnnfast runs (both layouts, every direction,
sequence_lens, initial states, each optional output, activations, GRU
linear_before_reset), and the refusals of what the kernels lack."""

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnfast

from _testing import assert_close

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def ort_session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def recurrent_model(
    rng,
    op,
    *,
    I=5,
    H=7,
    direction="forward",
    layout=0,
    bias=True,
    lens=False,
    init_h=False,
    init_c=False,
    outputs=("Y", "Y_h", "Y_c"),
    attrs=None,
    weights_scale=0.5,
    batch="B",
    seq="T",
):
    """One recurrent node; weights as initializers, X (and the optional inputs) as graph inputs."""
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    inits = [
        numpy_helper.from_array((rng.standard_normal((D, G * H, I)) * weights_scale).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal((D, G * H, H)) * weights_scale).astype(np.float32), "R"),
    ]
    ins = ["X", "W", "R"]
    if bias:
        inits.append(numpy_helper.from_array((rng.standard_normal((D, 2 * G * H)) * 0.5).astype(np.float32), "B"))
    ins.append("B" if bias else "")
    xshape = [seq, batch, I] if layout == 0 else [batch, seq, I]
    sshape = [D, batch, H] if layout == 0 else [batch, D, H]
    graph_in = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)]
    ins.append("seq_lens" if lens else "")
    if lens:
        graph_in.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [batch]))
    ins.append("h0" if init_h else "")
    if init_h:
        graph_in.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, sshape))
    if op == "LSTM":
        ins.append("c0" if init_c else "")
        if init_c:
            graph_in.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, sshape))
    while ins and ins[-1] == "":
        ins.pop()
    names = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    node_out = [n if n in outputs else "" for n in names]
    while node_out and node_out[-1] == "":
        node_out.pop()
    node = helper.make_node(
        op, ins, node_out, name="rec", hidden_size=H, direction=direction, layout=layout, **(attrs or {})
    )
    graph_out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node_out if n]
    g = helper.make_graph([node], "g", graph_in, graph_out, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def feeds(rng, model, T, B, lens_values=None):
    out = {}
    for vi in model.graph.input:
        if vi.name == "X":
            layout = [a.i for a in model.graph.node[0].attribute if a.name == "layout"][0]
            I = vi.type.tensor_type.shape.dim[2].dim_value
            out["X"] = rng.standard_normal((T, B, I) if layout == 0 else (B, T, I)).astype(np.float32)
        elif vi.name == "seq_lens":
            out["seq_lens"] = (
                np.asarray(lens_values, np.int32)
                if lens_values is not None
                else rng.integers(1, T + 1, B).astype(np.int32)
            )
        else:
            dims = [d.dim_value or (B if d.dim_param == "B" else 0) for d in vi.type.tensor_type.shape.dim]
            out[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def to_layout0(model):
    """The same node with layout 0 (ONNX Runtime runs only that layout): the reference for layout 1."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for a in m.graph.node[0].attribute:
        if a.name == "layout":
            a.i = 0
    for vi in m.graph.input:  # (batch, seq / directions, ...) -> (seq / directions, batch, ...)
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 3:
            d0, d1 = onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension()
            d0.CopyFrom(dims[0])
            d1.CopyFrom(dims[1])
            dims[0].CopyFrom(d1)
            dims[1].CopyFrom(d0)
    return m


def reference(model, feed):
    """ONNX Runtime's outputs; for layout 1 the layout-0 node on transposed tensors."""
    layout = [a.i for a in model.graph.node[0].attribute if a.name == "layout"][0]
    if layout == 0:
        return ort_session(model).run(None, feed)
    f0 = {k: (np.swapaxes(v, 0, 1) if v.ndim == 3 else v) for k, v in feed.items()}
    outs = ort_session(to_layout0(model)).run(None, f0)
    names = [o.name for o in model.graph.output]
    # Y (T, D, B, H) -> (B, T, D, H); Y_h / Y_c (D, B, H) -> (B, D, H)
    return [np.transpose(o, (2, 0, 1, 3)) if n == "Y" else np.swapaxes(o, 0, 1) for n, o in zip(names, outs)]


def check(model, feed, what=""):
    """rnnfast against :func:`reference`, and its later calls (the fused step's direct
    call of the layer, ``model_onnx._Fused``) against its first, bit for bit."""
    want = reference(model, feed)
    m = rnnfast.from_onnx(model)
    got = m.run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, what
        assert_close(g, w, np.float32, what)
    for _ in range(2):
        for g, again in zip(got, m.run(None, feed)):
            np.testing.assert_array_equal(again, g, what)


GRID = list(
    itertools.product(
        ["LSTM", "GRU", "RNN"],
        ["forward", "reverse", "bidirectional"],
        [0, 1],
    )
)


@pytest.mark.parametrize("op, direction, layout", GRID)
def test_node_matches_onnxruntime(rng, op, direction, layout):
    model = recurrent_model(rng, op, direction=direction, layout=layout)
    check(model, feeds(rng, model, T=9, B=3), (op, direction, layout))


@pytest.mark.parametrize("op, direction, layout", GRID)
def test_sequence_lens_and_initial_states(rng, op, direction, layout):
    model = recurrent_model(rng, op, direction=direction, layout=layout, lens=True, init_h=True, init_c=True)
    check(model, feeds(rng, model, T=8, B=4, lens_values=[8, 1, 5, 3]), (op, direction, layout))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y", "Y_c"), ("Y_h", "Y_c")])
def test_each_optional_output(rng, op, outputs):
    if op != "LSTM" and "Y_c" in outputs:
        outputs = tuple(o for o in outputs if o != "Y_c") or ("Y_h",)
    model = recurrent_model(rng, op, direction="bidirectional", outputs=outputs, bias=False)
    check(model, feeds(rng, model, T=6, B=2), outputs)


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_linear_before_reset(rng, lbr, direction):
    model = recurrent_model(rng, "GRU", direction=direction, attrs={"linear_before_reset": lbr}, lens=True, init_h=True)
    check(model, feeds(rng, model, T=7, B=3), lbr)


ACTIVATION_CASES = [
    ("LSTM", ["Sigmoid", "Relu", "Relu"], None, None),
    ("LSTM", ["HardSigmoid", "Tanh", "Tanh"], None, None),
    ("LSTM", ["HardSigmoid", "Softsign", "Softsign"], [1 / 6], [0.5]),
    ("GRU", ["Sigmoid", "Relu"], None, None),
    ("GRU", ["HardSigmoid", "Tanh"], [0.2], [0.5]),
    ("GRU", ["Sigmoid", "Softplus"], None, None),
    ("RNN", ["Relu"], None, None),
    ("RNN", ["Affine"], [1.0], [0.0]),
    ("RNN", ["Elu"], [1.0], None),
    ("RNN", ["Softsign"], None, None),
]


@pytest.mark.parametrize("op, acts, alpha, beta", ACTIVATION_CASES)
def test_activations(rng, op, acts, alpha, beta):
    attrs = {"activations": acts}
    if alpha is not None:
        attrs["activation_alpha"] = alpha
    if beta is not None:
        attrs["activation_beta"] = beta
    model = recurrent_model(rng, op, attrs=attrs, weights_scale=0.3)
    check(model, feeds(rng, model, T=6, B=2), acts)


def test_bidirectional_activations_per_direction(rng):
    model = recurrent_model(rng, "GRU", direction="bidirectional", attrs={"activations": ["Sigmoid", "Relu"] * 2})
    check(model, feeds(rng, model, T=5, B=2))


def test_long_sequence(rng):
    model = recurrent_model(rng, "LSTM", direction="bidirectional", I=16, H=32, weights_scale=0.2)
    check(model, feeds(rng, model, T=1000, B=2))


def test_bidirectional_runs_as_one_layer(rng):
    model = rnnfast.from_onnx(recurrent_model(rng, "LSTM", direction="bidirectional"))
    (op,) = [op for op in model.layers if op.op_type == "LSTM"]
    assert op.layer.num_directions == 2


def test_results_do_not_depend_on_threads(rng):
    model = recurrent_model(rng, "GRU", direction="bidirectional", I=32, H=64)
    feed = feeds(rng, model, T=50, B=16)
    m = rnnfast.from_onnx(model)
    one = m.run(None, feed, num_threads=1)
    two = m.run(None, feed, num_threads=2)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("LSTM", {"clip": 0.7}),
        ("LSTM", {"input_forget": 1}),
        ("LSTM", {"clip": 1.5, "input_forget": 1}),
        ("GRU", {"clip": 0.5}),
        ("GRU", {"clip": 0.5, "linear_before_reset": 1}),
        ("RNN", {"clip": 0.3}),
    ],
)
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_clip_and_input_forget(rng, op, attrs, direction):
    model = recurrent_model(rng, op, attrs=attrs, direction=direction, lens=True, init_h=True, weights_scale=1.0)
    check(model, feeds(rng, model, T=9, B=3), attrs)


def _with_peepholes(rng, model, D, H):
    node = model.graph.node[0]
    while len(node.input) < 7:
        node.input.append("")
    node.input.append("P")
    model.graph.initializer.append(numpy_helper.from_array(rng.uniform(-1, 1, (D, 3 * H)).astype(np.float32), "P"))
    return model


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_peepholes(rng, direction, layout):
    D = 2 if direction == "bidirectional" else 1
    model = recurrent_model(
        rng, "LSTM", direction=direction, layout=layout, lens=True, init_h=True, init_c=True, attrs={"clip": 2.0}
    )
    model = _with_peepholes(rng, model, D, 7)
    check(model, feeds(rng, model, T=8, B=3), direction)


@pytest.mark.parametrize(
    "op, attrs, option",
    [
        ("LSTM", {"activations": ["Sigmoid", "Tanh", "Relu"]}, "activations"),
        ("GRU", {"activations": ["LeakyRelu", "Tanh"]}, "activations"),
        ("RNN", {"activations": ["HardSigmoid"], "activation_alpha": [0.3], "activation_beta": [0.5]}, "activations"),
        ("RNN", {"activations": ["ThresholdedRelu"]}, "activations"),
        ("GRU", {"activations": ["Sigmoid", "Tanh", "Sigmoid", "Relu"]}, "activations"),
    ],
)
def test_refused_options_name_option_and_node(rng, op, attrs, option):
    direction = "bidirectional" if len(attrs.get("activations", [])) == 4 else "forward"
    model = recurrent_model(rng, op, attrs=attrs, direction=direction)
    with pytest.raises(rnnfast.UnsupportedLayerError, match=option) as e:
        rnnfast.from_onnx(model)
    assert "'rec'" in str(e.value)
    assert e.value.layer_class == op


@pytest.mark.parametrize("attrs", [{"clip": -1.0}, {"input_forget": 2}])
def test_bad_option_values_are_format_errors(rng, attrs):
    with pytest.raises(rnnfast.FormatError):
        rnnfast.from_onnx(recurrent_model(rng, "LSTM", attrs=attrs))


def test_peephole_shape_checked(rng):
    model = _with_peepholes(rng, recurrent_model(rng, "LSTM"), 1, 6)
    with pytest.raises(rnnfast.FormatError, match="P has shape"):
        rnnfast.from_onnx(model)


def test_weights_from_the_graph_refused(rng):
    model = recurrent_model(rng, "GRU")
    w = [t for t in model.graph.initializer if t.name == "W"][0]
    model.graph.initializer.remove(w)
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [1, 21, 5]))
    with pytest.raises(rnnfast.UnsupportedLayerError, match="W"):
        rnnfast.from_onnx(model)


def test_inconsistent_weights_are_format_errors(rng):
    model = recurrent_model(rng, "LSTM", H=7)
    for a in model.graph.node[0].attribute:
        if a.name == "hidden_size":
            a.i = 6
    with pytest.raises(rnnfast.FormatError, match="hidden_size"):
        rnnfast.from_onnx(model)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", [0, 1])
def test_transposed_input_read_in_place(rng, op, layout):
    # a Transpose(1, 0, 2) before the node (what exporters write around a batch-first
    # module): the node reads the transposed view as it lies, with lengths and states
    base = recurrent_model(rng, op, direction="bidirectional", layout=layout, lens=True, init_h=True, init_c=True)
    feed = feeds(rng, base, T=9, B=4, lens_values=[9, 2, 5, 1])
    want = reference(base, feed)
    model = onnx.ModelProto()
    model.CopyFrom(base)
    g = model.graph
    g.node[0].input[0] = "Xt"
    g.node.insert(0, helper.make_node("Transpose", ["X"], ["Xt"], perm=[1, 0, 2]))
    dims = g.input[0].type.tensor_type.shape.dim
    d0, d1 = onnx.TensorShapeProto.Dimension(), onnx.TensorShapeProto.Dimension()
    d0.CopyFrom(dims[0])
    d1.CopyFrom(dims[1])
    dims[0].CopyFrom(d1)
    dims[1].CopyFrom(d0)
    got = rnnfast.from_onnx(model).run(None, dict(feed, X=np.ascontiguousarray(np.swapaxes(feed["X"], 0, 1))))
    for g_, w in zip(got, want):
        assert g_.shape == w.shape
        assert_close(g_, w, np.float32)


@pytest.mark.parametrize("H", [5, 96])
def test_lstm_gate_order_is_applied_in_the_layers_one_copy(rng, H):
    """``CellWeights.gate_order`` (how the ONNX LSTM's i, o, f, c reach the layer, as views
    of the file) builds the same layer, bitwise, as weights reordered beforehand."""
    from rnnfast.layers import CellWeights, RNNLayer

    I, order = 3, (0, 2, 3, 1)
    cols = np.concatenate([np.arange(g * H, (g + 1) * H) for g in order])
    W, R = rng.standard_normal((I, 4 * H)), rng.standard_normal((H, 4 * H))
    b, rb = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    a = RNNLayer("lstm", [CellWeights(W, R, b, rb, gate_order=order)] * 2)
    want = RNNLayer("lstm", [CellWeights(W[:, cols], R[:, cols], b[cols], rb[cols])] * 2)
    x = rng.standard_normal((2, 7, I)).astype(np.float32)
    for k in ("_W", "_U", "_bx"):
        np.testing.assert_array_equal(getattr(a, k), getattr(want, k))
    np.testing.assert_array_equal(a.forward(x, batch_first=True)[0], want.forward(x, batch_first=True)[0])


def test_an_input_transpose_taken_into_the_recurrent_step(rng):
    """``Transpose`` -> GRU, the ``Transpose``'s input also read by a later op (that op
    its last reader in the graph): the recurrent step makes the transposed view itself
    (``_Fused.perm``) and the input stays until it has read it."""
    from rnnfast.model_onnx import _Fused

    I, H = 5, 7
    inits = [
        numpy_helper.from_array((rng.standard_normal((1, 3 * H, I)) * 0.5).astype(np.float32), "W"),
        numpy_helper.from_array((rng.standard_normal((1, 3 * H, H)) * 0.5).astype(np.float32), "R"),
    ]
    nodes = [
        helper.make_node("Transpose", ["X"], ["Xt"], perm=[1, 0, 2]),
        helper.make_node("Relu", ["X"], ["Z"]),
        helper.make_node("GRU", ["Xt", "W", "R"], ["Y"], hidden_size=H),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Z")],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    feed = {"X": rng.standard_normal((3, 6, I)).astype(np.float32)}
    want = ort_session(model).run(None, feed)
    m = rnnfast.from_onnx(model)
    first = m.run(None, feed)
    for got in [first] + [m.run(None, feed) for _ in range(2)]:
        for g, w, f in zip(got, want, first):
            assert_close(g, w, np.float32)
            np.testing.assert_array_equal(g, f)
    ops = [op for op, *_ in m._fast[0]]
    assert [op.op_type for op in ops if type(op) is not _Fused] == ["Relu"]
    assert [op.perm for op in ops if type(op) is _Fused] == [(1, 0, 2)]
