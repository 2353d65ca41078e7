"""Every non-recurrent ONNX op rnnfast runs, against ONNX Runtime: one node per case with
random inputs, run once with the inputs fed at run time and once with them as
initializers (the node is then folded at load); plus shape-arithmetic folding and the
refusals (unknown ops, other domains, attributes)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnfast

from _testing import assert_close

F, I64, I32, B = np.float32, np.int64, np.int32, np.bool_
_CODES = {F: TensorProto.FLOAT, I64: TensorProto.INT64, I32: TensorProto.INT32, B: TensorProto.BOOL}


def _x(*shape):
    return ("x", shape, F)


# (op, inputs: list of (kind, shape or value, dtype) with kind "x" random / "v" a given value, attrs, opset)
CASES = [
    ("Add", [_x(2, 3, 4), _x(4)], {}, 17),
    ("Sub", [_x(2, 3, 4), _x(3, 1)], {}, 17),
    ("Mul", [_x(2, 3, 4), _x(2, 3, 4)], {}, 17),
    ("Div", [_x(2, 3), ("v", [[2.0, -4.0, 0.5]], F)], {}, 17),
    ("Div", [("v", [7, -7, 9], I64), ("v", [2, 2, -4], I64)], {}, 17),
    ("Pow", [("v", [[1.5, 2.0, 0.3]], F), ("v", [2.0], F)], {}, 17),
    ("Max", [_x(3, 4), _x(4)], {}, 17),
    ("Min", [_x(3, 4), _x(3, 4)], {}, 17),
    ("Sum", [_x(3, 4), _x(3, 4), _x(4)], {}, 17),
    ("Neg", [_x(3, 4)], {}, 17),
    ("Abs", [_x(3, 4)], {}, 17),
    ("Exp", [_x(3, 4)], {}, 17),
    ("Sqrt", [("v", [[1.0, 4.0, 2.5]], F)], {}, 17),
    ("Log", [("v", [[1.0, 4.0, 2.5]], F)], {}, 17),
    ("Reciprocal", [("v", [[1.0, 4.0, -2.5]], F)], {}, 17),
    ("Erf", [_x(3, 4)], {}, 17),
    ("Floor", [_x(3, 4)], {}, 17),
    ("Relu", [_x(2, 3, 4)], {}, 17),
    ("Sigmoid", [_x(2, 3, 4)], {}, 17),
    ("Tanh", [_x(2, 3, 4)], {}, 17),
    ("Softsign", [_x(2, 3, 4)], {}, 17),
    ("Softplus", [_x(2, 3, 4)], {}, 17),
    ("Elu", [_x(2, 3, 4)], {"alpha": 0.7}, 17),
    ("Selu", [_x(2, 3, 4)], {}, 17),
    ("LeakyRelu", [_x(2, 3, 4)], {"alpha": 0.1}, 17),
    ("PRelu", [_x(2, 3, 4), _x(4)], {}, 17),
    ("HardSigmoid", [_x(2, 3, 4)], {"alpha": 0.3, "beta": 0.4}, 17),
    ("HardSwish", [_x(2, 3, 4)], {}, 17),
    ("Mish", [_x(2, 3, 4)], {}, 18),
    ("Gelu", [_x(2, 3, 4)], {}, 20),
    ("Gelu", [_x(2, 3, 4)], {"approximate": "tanh"}, 20),
    ("Clip", [_x(2, 3, 4), ("v", -0.5, F), ("v", 0.5, F)], {}, 17),
    ("Softmax", [_x(2, 3, 4)], {}, 17),
    ("Softmax", [_x(2, 3, 4)], {"axis": 1}, 17),
    ("Softmax", [_x(2, 3, 4)], {"axis": 1}, 11),
    ("LogSoftmax", [_x(2, 3, 4)], {}, 17),
    ("LogSoftmax", [_x(2, 3, 4)], {"axis": 0}, 17),
    ("Gemm", [_x(3, 4), _x(4, 5), _x(5)], {}, 17),
    ("Gemm", [_x(4, 3), _x(5, 4), _x(1, 5)], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, 17),
    ("MatMul", [_x(2, 3, 4), _x(4, 5)], {}, 17),
    ("MatMul", [_x(2, 3, 4), _x(2, 4, 5)], {}, 17),
    ("Conv", [_x(2, 4, 11), _x(6, 4, 3), _x(6)], {"pads": [1, 1]}, 17),
    ("Conv", [_x(2, 4, 11), _x(6, 2, 3)], {"group": 2, "strides": [2], "dilations": [2]}, 17),
    ("Conv", [_x(2, 4, 11), _x(5, 4, 4)], {"auto_pad": "SAME_UPPER"}, 17),
    ("Conv", [_x(2, 4, 11), _x(5, 4, 4)], {"auto_pad": "SAME_LOWER", "kernel_shape": [4]}, 17),
    # 2-D nodes with a unit axis (tf2onnx's Conv1D / MaxPooling1D): run as the 1-D op
    ("Conv", [_x(2, 4, 1, 11), _x(6, 4, 1, 3), _x(6)], {"auto_pad": "SAME_UPPER", "kernel_shape": [1, 3]}, 17),
    (
        "Conv",
        [_x(2, 4, 3, 11), _x(6, 4, 1, 3)],
        {"pads": [0, 1, 0, 2], "dilations": [1, 2], "kernel_shape": [1, 3]},
        17,
    ),
    (
        "Conv",
        [_x(2, 4, 9, 2), _x(6, 2, 3, 1)],
        {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 0], "kernel_shape": [3, 1]},
        17,
    ),
    ("MaxPool", [_x(2, 3, 10, 1)], {"kernel_shape": [2, 1], "strides": [2, 1]}, 17),
    ("AveragePool", [_x(2, 3, 2, 10)], {"kernel_shape": [1, 3], "pads": [0, 1, 0, 1]}, 17),
    ("BatchNormalization", [_x(2, 4, 6), _x(4), _x(4), _x(4), ("v", [0.5, 1.0, 2.0, 0.1], F)], {"epsilon": 1e-3}, 15),
    ("LayerNormalization", [_x(2, 3, 4), _x(4), _x(4)], {}, 17),
    ("LayerNormalization", [_x(2, 3, 4), _x(3, 4)], {"axis": 1, "epsilon": 1e-3}, 17),
    ("MaxPool", [_x(2, 3, 10)], {"kernel_shape": [3], "strides": [2]}, 17),
    ("MaxPool", [_x(2, 3, 10)], {"kernel_shape": [3], "pads": [1, 1]}, 17),
    ("AveragePool", [_x(2, 3, 10)], {"kernel_shape": [2], "strides": [2]}, 17),
    ("AveragePool", [_x(2, 3, 10)], {"kernel_shape": [3], "pads": [1, 1]}, 17),
    ("AveragePool", [_x(2, 3, 10)], {"kernel_shape": [3], "pads": [1, 1], "count_include_pad": 1}, 17),
    ("GlobalAveragePool", [_x(2, 3, 10)], {}, 17),
    ("GlobalMaxPool", [_x(2, 3, 10)], {}, 17),
    ("ReduceMean", [_x(2, 3, 4), ("v", [1], I64)], {}, 18),
    ("ReduceMean", [_x(2, 3, 4)], {"axes": [-1], "keepdims": 0}, 13),
    ("ReduceMax", [_x(2, 3, 4), ("v", [0, 2], I64)], {"keepdims": 0}, 18),
    ("ReduceSum", [_x(2, 3, 4), ("v", [1], I64)], {}, 13),
    ("ReduceMin", [_x(2, 3, 4)], {}, 18),
    ("ArgMax", [_x(2, 3, 4)], {"axis": 1}, 13),
    ("Transpose", [_x(2, 3, 4)], {"perm": [1, 0, 2]}, 17),
    ("Transpose", [_x(2, 3, 4)], {}, 17),
    ("Squeeze", [_x(2, 1, 4), ("v", [1], I64)], {}, 17),
    ("Squeeze", [_x(2, 1, 4)], {"axes": [1]}, 11),
    ("Squeeze", [_x(1, 3, 1)], {}, 17),
    ("Unsqueeze", [_x(2, 4), ("v", [0, -1], I64)], {}, 17),
    ("Unsqueeze", [_x(2, 4)], {"axes": [1]}, 11),
    ("Reshape", [_x(2, 3, 4), ("v", [0, -1], I64)], {}, 17),
    ("Reshape", [_x(2, 3, 4), ("v", [4, 6], I64)], {}, 17),
    ("Flatten", [_x(2, 3, 4)], {}, 17),
    ("Flatten", [_x(2, 3, 4)], {"axis": 2}, 17),
    ("Concat", [_x(2, 3), _x(2, 5)], {"axis": 1}, 17),
    ("Concat", [_x(2, 3), _x(1, 3)], {"axis": -2}, 17),
    ("Split", [_x(2, 6), ("v", [2, 4], I64)], {"axis": 1}, 17),
    ("Split", [_x(6, 2)], {}, 17),
    ("Split", [_x(7, 2)], {"num_outputs": 3}, 18),
    ("Split", [_x(6, 2)], {"split": [1, 5]}, 11),
    ("Slice", [_x(5, 6), ("v", [1, 0], I64), ("v", [4, 100], I64)], {}, 17),
    ("Slice", [_x(5, 6), ("v", [-1], I64), ("v", [-100000], I64), ("v", [1], I64), ("v", [-2], I64)], {}, 17),
    ("Slice", [_x(5, 6), ("v", [4], I64), ("v", [0], I64), ("v", [0], I64), ("v", [-1], I64)], {}, 17),
    ("Shape", [_x(2, 3, 4)], {}, 17),
    ("Shape", [_x(2, 3, 4)], {"start": 1, "end": -1}, 17),
    ("Size", [_x(2, 3, 4)], {}, 17),
    ("Gather", [_x(5, 3), ("v", [[0, 4], [-1, 2]], I64)], {}, 17),
    ("Gather", [_x(5, 3), ("v", 1, I64)], {"axis": 1}, 17),
    ("ConstantOfShape", [("v", [2, 3], I64)], {"value": numpy_helper.from_array(np.array([1.5], np.float32))}, 17),
    ("ConstantOfShape", [("v", [2], I64)], {}, 17),
    ("Expand", [_x(3, 1), ("v", [2, 3, 4], I64)], {}, 17),
    ("Tile", [_x(2, 3), ("v", [2, 1], I64)], {}, 17),
    ("Cast", [_x(2, 3)], {"to": TensorProto.INT64}, 17),
    ("Cast", [("v", [1, 0, 3], I64)], {"to": TensorProto.FLOAT}, 17),
    ("Identity", [_x(2, 3)], {}, 17),
    ("Where", [("v", [[True, False, True]], B), _x(2, 3), _x(3)], {}, 17),
    ("Equal", [("v", [1, 2, 3], I64), ("v", [1, 0, 3], I64)], {}, 17),
    ("Less", [_x(2, 3), _x(3)], {}, 17),
    ("Greater", [_x(2, 3), _x(2, 3)], {}, 17),
    ("Not", [("v", [True, False], B)], {}, 17),
    ("Range", [("v", 1, I64), ("v", 10, I64), ("v", 3, I64)], {}, 17),
    ("Range", [("v", 1.0, F), ("v", -2.0, F), ("v", -0.5, F)], {}, 17),
    ("Dropout", [_x(2, 3)], {}, 17),
]


def _ids(case):
    return "%s-%s" % (case[0], "-".join("%s=%s" % kv for kv in sorted(case[2].items()) if kv[0] != "value"))


def make_case(rng, op, inputs, attrs, opset, as_initializers):
    values, graph_in, inits, names = {}, [], [], []
    for i, (kind, spec, dt) in enumerate(inputs):
        name = "in%d" % i
        names.append(name)
        v = rng.standard_normal(spec).astype(dt) if kind == "x" else np.asarray(spec, dt)
        # the graph's first input is always fed at run time; the others as initializers where asked
        if as_initializers and i > 0 or kind == "v":
            inits.append(numpy_helper.from_array(v, name))
        else:
            graph_in.append(helper.make_tensor_value_info(name, _CODES[dt], list(v.shape)))
            values[name] = v
    if not graph_in:  # every input constant: one extra graph input and an Add keeps it a graph
        pass
    n_out = {"Split": 2 if "split" not in attrs and len(inputs) == 1 and "num_outputs" not in attrs else 2}.get(op, 1)
    if op == "Split" and "num_outputs" in attrs:
        n_out = attrs["num_outputs"]
    outs = ["out%d" % k for k in range(n_out)]
    node = helper.make_node(op, names, outs, name="node", **attrs)
    return typed_model(node, graph_in, outs, inits, opset), values


def typed_model(node, graph_in, outs, inits, opset):
    """A one-node model whose outputs carry the types ONNX's shape inference gives them."""
    g = helper.make_graph([node], "g", graph_in, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(m).graph.value_info}
    for vi in m.graph.output:
        vi.type.CopyFrom(inferred[vi.name].type)
    return m


def run_both(model, values):
    """Run ``model`` in ONNX Runtime and rnnfast on ``values``, compare, return rnnfast's
    (a second call, on the flat plan where the first ran the graph, gives the same bits)."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, values)
    m = rnnfast.from_onnx(model)
    got = m.run(None, values)
    for a, b in zip(got, m.run(None, values)):
        np.testing.assert_array_equal(a, b)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        if w.dtype.kind == "f":
            assert_close(g, w, np.float32)
        else:
            np.testing.assert_array_equal(g, w)
    return got


# each case with its inputs fed at run time, and with them as initializers (folded at
# load); a case whose inputs are all given values has no graph input: folded only
_PARAMS = [
    pytest.param(case, folded, id="%s-%s" % ("folded" if folded else "fed", _ids(case)))
    for case in CASES
    for folded in (False, True)
    if folded or any(kind == "x" for kind, _, _ in case[1])
]


@pytest.mark.parametrize("case, as_initializers", _PARAMS)
def test_op_matches_onnxruntime(rng, case, as_initializers):
    op, inputs, attrs, opset = case
    model, values = make_case(rng, op, inputs, attrs, opset, as_initializers)
    run_both(model, values)


def test_every_registered_op_has_a_case():
    from rnnfast.io.onnx.registry import OPS

    # (Loop and Scan: tests/test_onnx_control.py; If: tests/test_onnx_if.py)
    control = {"Loop", "Scan", "If"}
    tested = {c[0] for c in CASES} | {"LSTM", "GRU", "RNN", "Constant", "SplitToSequence", "SequenceAt"} | control
    untested = sorted(set(OPS) - tested)
    # element-wise functions numpy computes directly, tested through their siblings above
    assert set(untested) <= {
        "Mod",
        "Mean",
        "Ceil",
        "Round",
        "Sign",
        "Sin",
        "Cos",
        "And",
        "Or",
        "Xor",
        "LessOrEqual",
        "GreaterOrEqual",
        "ReduceProd",
        "ArgMin",
    }, untested


# -- shape arithmetic ------------------------------------------------------------------


def _shape_chain_model(batch):
    """x (batch, 4) -> Shape -> Gather(0) -> Unsqueeze -> Concat([b, 3]) -> ConstantOfShape(1) -> + x[:, :3]."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["b"], name="gather"),
        helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"], name="unsq"),
        helper.make_node("Constant", [], ["three"], value=numpy_helper.from_array(np.array([3], np.int64))),
        helper.make_node("Concat", ["b1", "three"], ["shp"], axis=0, name="concat"),
        helper.make_node("ConstantOfShape", ["shp"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Slice", ["x", "st", "en", "axs"], ["x3"], name="slice"),
        helper.make_node("Add", ["ones", "x3"], ["y"], name="add"),
    ]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("st", [0]), ("en", [3]), ("axs", [1]))]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_arithmetic_folds_at_load_for_fixed_shapes(rng):
    model = rnnfast.from_onnx(_shape_chain_model(1))
    assert [op.op_type for op in model.layers] == ["Slice", "Add"]
    x = rng.standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), x[:, :3] + 1)


def test_shape_arithmetic_runs_once_per_input_shape(rng):
    m = _shape_chain_model("batch")
    model = rnnfast.from_onnx(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [op.op_type for op in model._data.ops] == ["Slice", "Add"]
    for b in (1, 5, 1, 5):
        x = rng.standard_normal((b, 4)).astype(np.float32)
        np.testing.assert_array_equal(model.run(None, {"x": x})[0], sess.run(None, {"x": x})[0])
    assert len(model._shape_cache) == 2


# -- refusals ---------------------------------------------------------------------------


def _one_node(op, domain="", inputs=("x",), **attrs):
    node = helper.make_node(op, list(inputs), ["y"], name="n1", domain=domain, **attrs)
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    ops = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=ops)


def test_unknown_op_is_named_with_node_and_domain():
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"NonMaxSuppression.*'n1'.*ai\.onnx"):
        rnnfast.from_onnx(_one_node("NonMaxSuppression"))


def test_contrib_ops_named_as_such():
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"com\.microsoft\.DynamicQuantizeMatMul.*'n1'.*contrib"):
        rnnfast.from_onnx(_one_node("DynamicQuantizeMatMul", domain="com.microsoft"))


def test_unknown_attribute_is_refused():
    with pytest.raises(rnnfast.UnsupportedLayerError, match="frobnicate"):
        rnnfast.from_onnx(_one_node("Relu", frobnicate=1))


@pytest.mark.parametrize(
    "op, attrs, option",
    [
        ("MaxPool", {"kernel_shape": [2, 2]}, "kernel_shape"),
        ("MaxPool", {"kernel_shape": [1, 2], "strides": [2, 1]}, "strides"),
        ("MaxPool", {"kernel_shape": [1, 2], "pads": [1, 0, 0, 0]}, "pads"),
        ("MaxPool", {"kernel_shape": [2], "ceil_mode": 1}, "ceil_mode"),
        ("BatchNormalization", {"training_mode": 1}, "training_mode"),
    ],
)
def test_refused_attribute_values(op, attrs, option):
    inputs = ("x",) if op != "BatchNormalization" else ("x", "s", "s", "s", "s")
    m = _one_node(op, inputs=inputs, **attrs)
    m.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "s"))
    with pytest.raises(rnnfast.UnsupportedLayerError, match=option):
        rnnfast.from_onnx(m)


def test_ort_face(rng):
    model = rnnfast.from_onnx(_shape_chain_model("batch"))
    (inp,) = model.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("x", ["batch", 4], "tensor(float)")
    (out,) = model.get_outputs()
    assert (out.name, out.shape, out.type) == ("y", ["batch", 3], "tensor(float)")
    x = rng.standard_normal((2, 4)).astype(np.float32)
    (y,) = model.run(["y"], {"x": x})
    np.testing.assert_array_equal(model(x), y)
    with pytest.raises(ValueError, match="missing"):
        model.run(None, {})
    with pytest.raises(ValueError, match="unknown"):
        model.run(None, {"x": x, "z": x})
    with pytest.raises(ValueError, match="shape"):
        model.run(None, {"x": x[:, :3]})
    with pytest.raises(ValueError, match="no output"):
        model.run(["nope"], {"x": x})


def test_input_without_a_declared_shape(rng):
    node = helper.make_node("Relu", ["x"], ["y"], name="n1")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = rnnfast.from_onnx(m)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.run(None, {"x": x})[0], np.maximum(x, 0))


# -- sequences: SplitToSequence -> SequenceAt (a sequence is no model output here) ----------


@pytest.mark.parametrize(
    "split, attrs, positions",
    [
        (None, {}, [0, 2, -1]),
        (None, {"keepdims": 0, "axis": 1}, [0, 3, -4]),
        (2, {"axis": 1}, [0, 1, -1]),  # pieces of 2, the last shorter
        ([1, 3], {"axis": 1}, [0, 1]),
    ],
)
def test_split_to_sequence_and_sequence_at_match_onnxruntime(rng, split, attrs, positions):
    x = rng.standard_normal((3, 4, 2)).astype(np.float32)
    inits = []
    split_in = []
    if split is not None:
        inits.append(numpy_helper.from_array(np.array(split, np.int64), "split"))
        split_in = ["split"]
    nodes = [helper.make_node("SplitToSequence", ["x"] + split_in, ["seq"], name="s2s", **attrs)]
    outs = []
    for k, p in enumerate(positions):
        inits.append(numpy_helper.from_array(np.array(p, np.int64), "p%d" % k))
        nodes.append(helper.make_node("SequenceAt", ["seq", "p%d" % k], ["y%d" % k], name="at%d" % k))
        outs.append("y%d" % k)
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", 2])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    run_both(model, {"x": x})
    # a position past the sequence's end (or parts that do not fit) refused at the call
    bad = {"x": x[:, :1] if attrs.get("axis") == 1 else x[:1]}
    with pytest.raises(ValueError, match="position|add up"):
        rnnfast.from_onnx(model).run(None, bad)


@pytest.mark.parametrize("case, as_initializers", _PARAMS)
def test_the_flat_plan_gives_the_bits_of_the_ops_one_by_one(rng, case, as_initializers):
    """A call runs the model's flat plan (``model_onnx.flat_plan``: each op's compute bound
    at the first call, the view ops, Concat and Gather on their NumPy call alone): the
    arrays the program's ops give one by one (``run_compiled``, the executor before),
    bit for bit, on the first call, a later one and a pickled copy's."""
    import pickle

    from rnnfast.model_onnx import run_compiled, run_plan

    op, inputs, attrs, opset = case
    model, values = make_case(rng, op, inputs, attrs, opset, as_initializers)
    m = rnnfast.from_onnx(model)
    feeds = [values[n] for n in m.input_names]
    calls = [m.run(None, values), m.run(None, values), pickle.loads(pickle.dumps(m)).run(None, values)]
    full = feeds + list(m._shape_cache[m._shape_key(feeds)])
    for got in calls + [run_plan(m._plan, full, 1)]:
        for g, w in zip(got, run_compiled(m._fast, full, 1)):
            w = np.asarray(w)
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("contiguous", [True, False])
def test_conv_windows_are_read_only_views(rng, contiguous):
    """``ops._windows`` (the im2col view of a Conv): the windows as NumPy's
    ``sliding_window_view`` gives them, read-only, sharing ``x``'s memory, for a
    C-contiguous ``x`` (one ndarray constructor) and a strided one (``as_strided``)."""
    from rnnfast.ops import _windows

    base = rng.standard_normal((2, 11, 6)).astype(F)
    x = base if contiguous else base[:, :, ::2]
    w = _windows(x, 3, 2, 2)
    want = np.lib.stride_tricks.sliding_window_view(x, 5, axis=1)[:, ::2, :, ::2].transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(w, want)
    assert not w.flags.writeable and np.shares_memory(w, base)
    assert _windows(x, 20, 1, 1).shape == (2, 0, 20, x.shape[2])
