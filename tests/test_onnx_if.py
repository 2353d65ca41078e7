"""ONNX ``If`` against ONNX Runtime: the branch torch.onnx.export writes for a
``squeeze(dim)`` of an axis of unknown size, branches reading outer tensors computed at
run time and constants, several outputs, folding where everything is constant, a whole
PyTorch decoder step exported with a free batch axis, pickling; and the refusals."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_onnx_fast import Decoder
from test_onnx_ops import run_both

import rnnfast

from _testing import assert_close

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _vi(name, elem=FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _squeeze_if_one(axis_input="x"):
    """y = squeeze(x, 0) if x.shape[0] == 1 else x, as the TorchScript exporter writes it."""
    then = helper.make_graph(
        [
            helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
            helper.make_node("Squeeze", [axis_input, "axes"], ["sq"]),
        ],
        "then",
        [],
        [_vi("sq")],
    )
    other = helper.make_graph([helper.make_node("Identity", [axis_input], ["same"])], "else", [], [_vi("same")])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Equal", ["n", "one"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="if"),
    ]
    g = helper.make_graph(nodes, "g", [_vi("x", FLOAT, ["n", 3])], [_vi("y")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_squeeze_if_one_matches_onnxruntime(rng, n):
    x = rng.standard_normal((n, 3)).astype(np.float32)
    (y,) = run_both(_squeeze_if_one(), {"x": x})
    assert y.shape == ((3,) if n == 1 else (n, 3))


def test_branches_read_outer_values_and_constants_and_give_several_outputs(rng):
    """then: (x * w + s, s - x); else: (x - w, s * s): ``s`` computed in the outer graph
    at run time, ``w`` an initializer, ``cond`` a graph input."""
    then = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "s"], ["a"]),
            helper.make_node("Sub", ["s", "x"], ["b"]),
        ],
        "then",
        [],
        [_vi("a"), _vi("b")],
    )
    other = helper.make_graph(
        [helper.make_node("Sub", ["x", "w"], ["c"]), helper.make_node("Mul", ["s", "s"], ["d"])],
        "else",
        [],
        [_vi("c"), _vi("d")],
    )
    nodes = [
        helper.make_node("Tanh", ["x"], ["s"]),
        helper.make_node("If", ["cond"], ["y0", "y1"], then_branch=then, else_branch=other),
    ]
    w = numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "w")
    g = helper.make_graph(nodes, "g", [_vi("x", FLOAT, [2, 3]), _vi("cond", BOOL, [])], [_vi("y0"), _vi("y1")], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 3)).astype(np.float32)
    then_out = run_both(model, {"x": x, "cond": np.array(True)})
    else_out = run_both(model, {"x": x, "cond": np.array(False)})
    assert not np.allclose(then_out[0], else_out[0])
    # the same model after a pickle round trip (the branches' plans are remade)
    loaded = pickle.loads(pickle.dumps(rnnfast.from_onnx(model)))
    for cond, want in ((True, then_out), (False, else_out)):
        got = loaded.run(None, {"x": x, "cond": np.array(cond)})
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_a_constant_condition_is_folded_at_load(rng):
    """An If whose condition and branch inputs are all constants is computed at load: the
    model holds no If step."""
    x = numpy_helper.from_array(rng.standard_normal((1, 3)).astype(np.float32), "x")
    model = _squeeze_if_one()
    g = model.graph
    g.initializer.append(x)
    del g.input[:]
    g.input.extend([])
    model = helper.make_model(
        helper.make_graph(list(g.node), "g", [], [_vi("y")], [x]), opset_imports=[helper.make_opsetid("", 17)]
    )
    m = rnnfast.from_onnx(model)
    assert all(type(s.op).__name__ != "IfOp" for s in m._graph.steps)
    (y,) = run_both(model, {})
    assert y.shape == (3,)


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_decoder_step_with_a_free_batch_axis(seed, batch):
    """An attention decoder's step (the PyTorch chatbot tutorial's shape): its squeeze(1)
    of the GRU's one-step output is an If once the batch axis is free."""
    torch.manual_seed(seed % 2**31)
    m = Decoder(log=False, V=40, H=24).eval()
    g = torch.Generator().manual_seed(seed % 2**31)

    def inputs(b):
        return (
            torch.randint(0, 40, (b, 1), generator=g),
            0.5 * torch.randn(1, b, 24, generator=g),
            0.5 * torch.randn(b, 6, 24, generator=g),
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = rnnfast.from_torch(m, inputs(batch), input_names=["tok", "h", "enc"])
    assert any(s.op.op_type == "If" for s in model._graph.steps)
    for b in (1, 2, 5):  # every batch size the free axis takes, whichever branch it picks
        args = inputs(b)
        with torch.no_grad():
            want = m(*args)
        got = model.run(None, {k: v.numpy() for k, v in zip(("tok", "h", "enc"), args)})
        for a, w in zip(got, want):
            assert_close(a, w.numpy(), np.float32)


def test_malformed_if_is_a_format_error():
    one = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "b", [], [_vi("a")])
    two = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Identity", ["x"], ["b"])],
        "b",
        [],
        [_vi("a"), _vi("b")],
    )
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=one, else_branch=two, name="n1")],
        "g",
        [_vi("x", FLOAT, [2]), _vi("c", BOOL, [])],
        [_vi("y")],
    )
    with pytest.raises(rnnfast.FormatError, match=r"If node 'n1': its else_branch gives 2 outputs, the node has 1"):
        rnnfast.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_an_unsupported_op_in_a_branch_is_named():
    bad = helper.make_graph([helper.make_node("NonMaxSuppression", ["x"], ["a"], name="deep")], "b", [], [_vi("a")])
    ok = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "b", [], [_vi("a")])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=ok, else_branch=bad, name="n1")],
        "g",
        [_vi("x", FLOAT, [2]), _vi("c", BOOL, [])],
        [_vi("y")],
    )
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"NonMaxSuppression.*'deep'"):
        rnnfast.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_condition_of_several_values_is_refused():
    """Declared with two values: the load trial (zeros of the declared shapes) refuses it;
    declared without a shape: the call that feeds two values."""

    def model(cond_shape):
        g = helper.make_graph(
            [
                helper.make_node(
                    "If",
                    ["c"],
                    ["y"],
                    then_branch=helper.make_graph([helper.make_node("Neg", ["x"], ["a"])], "t", [], [_vi("a")]),
                    else_branch=helper.make_graph([helper.make_node("Abs", ["x"], ["b"])], "e", [], [_vi("b")]),
                    name="n1",
                )
            ],
            "g",
            [_vi("x", FLOAT, [2]), _vi("c", BOOL, cond_shape)],
            [_vi("y")],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    with pytest.raises(rnnfast.FormatError, match=r"If 'n1': cond must hold one value, got shape \(2,\)"):
        rnnfast.from_onnx(model([2]))
    m = rnnfast.from_onnx(model(["n"]))
    x = np.ones(2, np.float32)
    np.testing.assert_array_equal(m.run(None, {"x": x, "c": np.array([False])})[0], x)
    with pytest.raises(ValueError, match=r"If 'n1': cond must hold one value"):
        m.run(None, {"x": x, "c": np.array([True, False])})
