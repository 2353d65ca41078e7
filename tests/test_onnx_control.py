"""ONNX ``Loop`` and ``Scan`` against ONNX Runtime on generated graphs: a hand-written
RNN cell as a Scan body (every scan axis and direction), a body reading outer tensors
(constants and values computed at run time), Loops with a trip count, a condition or
both, nested subgraphs; and the refusals and resource guards."""

import pickle

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_onnx_ops import run_both

import rnnfast

from _testing import assert_close

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
B, T, I, H = 3, 7, 4, 5


def _vi(name, elem=FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _weights(rng):
    return [
        numpy_helper.from_array((0.5 * rng.standard_normal((I, H))).astype(np.float32), "W"),
        numpy_helper.from_array((0.5 * rng.standard_normal((H, H))).astype(np.float32), "R"),
        numpy_helper.from_array((0.1 * rng.standard_normal(H)).astype(np.float32), "b"),
    ]


def _rnn_cell_body(x_shape=(B, I), bias="b"):
    """h' = tanh(x W + h R + bias): states [h], scan inputs [x], outputs [h', h']."""
    nodes = [
        helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
        helper.make_node("MatMul", ["h", "R"], ["hr"]),
        helper.make_node("Add", ["xw", "hr"], ["s"]),
        helper.make_node("Add", ["s", bias], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_next"]),
        helper.make_node("Identity", ["h_next"], ["y_t"]),
    ]
    return helper.make_graph(
        nodes,
        "cell",
        [_vi("h", FLOAT, [B, H]), _vi("x_t", FLOAT, list(x_shape))],
        [_vi("h_next", FLOAT, [B, H]), _vi("y_t", FLOAT, [B, H])],
    )


@pytest.mark.parametrize(
    "in_axis, in_dir, out_axis, out_dir",
    [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 1, 0, 1), (1, 0, 1, 0), (-2, 1, -1, 1)],
)
def test_scan_rnn_cell_matches_onnxruntime(rng, in_axis, in_dir, out_axis, out_dir):
    x_shape = [T, B, I] if in_axis % 3 == 0 else [B, T, I]
    scan = helper.make_node(
        "Scan",
        ["h0", "x"],
        ["h_last", "ys"],
        name="scan",
        body=_rnn_cell_body(),
        num_scan_inputs=1,
        scan_input_axes=[in_axis],
        scan_input_directions=[in_dir],
        scan_output_axes=[out_axis],
        scan_output_directions=[out_dir],
    )
    model = _model(
        [scan], [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, x_shape)], [_vi("h_last"), _vi("ys")], _weights(rng)
    )
    feeds = {"h0": rng.standard_normal((B, H)).astype(np.float32), "x": rng.standard_normal(x_shape).astype(np.float32)}
    h_last, ys = run_both(model, feeds)
    # and the float64 recurrence written out
    W, R, b = (numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer)
    x = np.moveaxis(feeds["x"].astype(np.float64), in_axis, 0)
    h, seq = feeds["h0"].astype(np.float64), []
    for t in range(T)[:: -1 if in_dir else 1]:
        h = np.tanh(x[t] @ W + h @ R + b)
        seq.append(h)
    want = np.stack(seq[::-1] if out_dir else seq)
    assert_close(h_last, h, np.float32)
    assert_close(ys, np.moveaxis(want, 0, out_axis), np.float32)


def test_scan_body_reads_outer_values_computed_at_run_time(rng):
    """The body's bias is an outer tensor computed from an input (an implicit input fed
    each call), the weights outer initializers; the time axis symbolic."""
    scan = helper.make_node(
        "Scan", ["h0", "x"], ["h_last", "ys"], name="scan", body=_rnn_cell_body(bias="bias"), num_scan_inputs=1
    )
    relu = helper.make_node("Relu", ["bias_in"], ["bias"], name="relu")
    model = _model(
        [relu, scan],
        [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, ["T", B, I]), _vi("bias_in", FLOAT, [H])],
        [_vi("h_last"), _vi("ys")],
        _weights(rng),
    )
    for steps in (1, 9):
        feeds = {
            "h0": rng.standard_normal((B, H)).astype(np.float32),
            "x": rng.standard_normal((steps, B, I)).astype(np.float32),
            "bias_in": rng.standard_normal(H).astype(np.float32),
        }
        run_both(model, feeds)


def _loop_body(cond_limit=None):
    """Loop body: h' = tanh(x[i] W + h R + b) with x read from the outer graph by the
    iteration number; cond_out = i < cond_limit (or the condition passed through)."""
    nodes = [
        helper.make_node("Gather", ["x", "i"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "W"], ["xw"]),
        helper.make_node("MatMul", ["h", "R"], ["hr"]),
        helper.make_node("Add", ["xw", "hr"], ["s"]),
        helper.make_node("Add", ["s", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_next"]),
        helper.make_node("ReduceSum", ["h_next"], ["total"], keepdims=0),
    ]
    if cond_limit is None:
        nodes.append(helper.make_node("Identity", ["cond"], ["cond_out"]))
    else:
        nodes.append(helper.make_node("Less", ["i", cond_limit], ["cond_out"]))
    return helper.make_graph(
        nodes,
        "body",
        [_vi("i", INT64, []), _vi("cond", BOOL, []), _vi("h", FLOAT, [B, H])],
        [_vi("cond_out", BOOL, []), _vi("h_next", FLOAT, [B, H]), _vi("total", FLOAT, [])],
    )


@pytest.mark.parametrize("form", ["trip count", "trip count and condition", "condition only", "trip count from shape"])
def test_loop_matches_onnxruntime(rng, form):
    nodes = []
    inits = _weights(rng) + [numpy_helper.from_array(np.array(4, np.int64), "limit")]
    if form == "trip count":
        inits.append(numpy_helper.from_array(np.array(T, np.int64), "M"))
        loop_in, body = ["M", ""], _loop_body()
    elif form == "trip count and condition":
        inits += [numpy_helper.from_array(np.array(T, np.int64), "M"), numpy_helper.from_array(np.array(True), "c")]
        loop_in, body = ["M", "c"], _loop_body("limit")
    elif form == "condition only":  # what tf2onnx writes: a while loop, the condition on the time step
        inits.append(numpy_helper.from_array(np.array(True), "c"))
        loop_in, body = ["", "c"], _loop_body("limit")
    else:  # M = x.shape[0], computed in the graph (shape arithmetic)
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["M"], axis=0),
        ]
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
        loop_in, body = ["M", ""], _loop_body()
    nodes.append(helper.make_node("Loop", loop_in + ["h0"], ["h_last", "totals"], name="loop", body=body))
    model = _model(
        nodes, [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, ["T", B, I])], [_vi("h_last"), _vi("totals")], inits
    )
    feeds = {
        "h0": rng.standard_normal((B, H)).astype(np.float32),
        "x": rng.standard_normal((T, B, I)).astype(np.float32),
    }
    h_last, totals = run_both(model, feeds)
    assert totals.shape == ((5,) if "condition" in form else (T,))
    model2 = pickle.loads(pickle.dumps(rnnfast.from_onnx(model)))
    np.testing.assert_array_equal(model2.run(None, feeds)[0], h_last)


def test_nested_loop_in_scan_reads_the_outermost_graph(rng):
    """A Loop inside a Scan body adds an outer tensor (computed at run time) twice per
    step: the name reaches the inner body through both nodes' implicit inputs."""
    inner = helper.make_graph(
        [helper.make_node("Add", ["acc", "bias"], ["acc_out"]), helper.make_node("Identity", ["cond"], ["cond_out"])],
        "inner",
        [_vi("i", INT64, []), _vi("cond", BOOL, []), _vi("acc", FLOAT, [B, H])],
        [_vi("cond_out", BOOL, []), _vi("acc_out", FLOAT, [B, H])],
    )
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["h", "x_t"], ["hx"]),
            helper.make_node("Loop", ["two", "", "hx"], ["h_next"], body=inner),
            helper.make_node("Tanh", ["h_next"], ["y_t"]),
        ],
        "outer",
        [_vi("h", FLOAT, [B, H]), _vi("x_t", FLOAT, [B, H])],
        [_vi("h_next", FLOAT, [B, H]), _vi("y_t", FLOAT, [B, H])],
    )
    model = _model(
        [
            helper.make_node("Neg", ["bias_in"], ["bias"]),
            helper.make_node("Scan", ["h0", "x"], ["h_last", "ys"], body=body, num_scan_inputs=1),
        ],
        [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, [T, B, H]), _vi("bias_in", FLOAT, [H])],
        [_vi("h_last"), _vi("ys")],
        [numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    feeds = {
        "h0": rng.standard_normal((B, H)).astype(np.float32),
        "x": (0.5 * rng.standard_normal((T, B, H))).astype(np.float32),
        "bias_in": (0.1 * rng.standard_normal(H)).astype(np.float32),
    }
    run_both(model, feeds)


def test_no_steps_give_the_initial_states_and_empty_scan_outputs(rng):
    """A Scan over 0 steps and a Loop of 0 iterations (ONNX Runtime fails on the
    former): the states as given, scan outputs of the body's declared shape after a 0
    axis (moved where scan_output_axes says)."""
    scan = helper.make_node(
        "Scan", ["h0", "x"], ["h_last", "ys"], body=_rnn_cell_body(), num_scan_inputs=1, scan_output_axes=[1]
    )
    model = _model(
        [scan], [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, ["T", B, I])], [_vi("h_last"), _vi("ys")], _weights(rng)
    )
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    h_last, ys = rnnfast.from_onnx(model).run(None, {"h0": h0, "x": np.zeros((0, B, I), np.float32)})
    np.testing.assert_array_equal(h_last, h0)
    assert ys.shape == (B, 0, H) and ys.dtype == np.float32
    inits = _weights(rng) + [numpy_helper.from_array(np.array(0, np.int64), "M")]
    loop = helper.make_node("Loop", ["M", "", "h0"], ["h_last", "totals"], body=_loop_body())
    model = _model(
        [loop], [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, ["T", B, I])], [_vi("h_last"), _vi("totals")], inits
    )
    feeds = {"h0": h0, "x": rng.standard_normal((T, B, I)).astype(np.float32)}
    h_last, totals = run_both(model, feeds)
    np.testing.assert_array_equal(h_last, h0)
    assert totals.shape == (0,)


# -- refusals and guards ----------------------------------------------------------------


def _scan_model(body, opset=17, **attrs):
    scan = helper.make_node("Scan", ["h0", "x"], ["h_last", "ys"], name="scan", body=body, **attrs)
    return _model(
        [scan],
        [_vi("h0", FLOAT, [B, H]), _vi("x", FLOAT, [T, B, I])],
        [_vi("h_last"), _vi("ys")],
        _weights(np.random.default_rng(0)),
        opset=opset,
    )


def test_an_unsupported_op_in_a_body_is_named():
    body = _rnn_cell_body()
    body.node[4].op_type = "NonMaxSuppression"
    body.node[4].name = "inner"
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"NonMaxSuppression.*'inner'.*ai\.onnx"):
        rnnfast.from_onnx(_scan_model(body, num_scan_inputs=1))
    body.node[4].op_type, body.node[4].domain = "Frob", "com.example"
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"com\.example\.Frob.*'inner'"):
        rnnfast.from_onnx(_scan_model(body, num_scan_inputs=1))


def test_opset_8_scan_is_refused():
    with pytest.raises(rnnfast.UnsupportedLayerError, match=r"Scan.*opset 8"):
        rnnfast.from_onnx(_scan_model(_rnn_cell_body(), opset=8, num_scan_inputs=1))


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({}, "num_scan_inputs"),
        ({"num_scan_inputs": 3}, "num_scan_inputs"),
        ({"num_scan_inputs": 1, "scan_input_axes": [0, 1]}, "scan_input_axes"),
        ({"num_scan_inputs": 1, "scan_output_directions": [2]}, "scan_output_directions"),
        ({"num_scan_inputs": 2}, "different lengths"),  # (h0 scanned too: B steps against T)
    ],
)
def test_malformed_scan_is_a_format_error(attrs, match):
    with pytest.raises(rnnfast.FormatError, match=match):
        rnnfast.from_onnx(_scan_model(_rnn_cell_body(), **attrs))


def test_unknown_scan_attribute_is_refused():
    with pytest.raises(rnnfast.UnsupportedLayerError, match="frobnicate"):
        rnnfast.from_onnx(_scan_model(_rnn_cell_body(), num_scan_inputs=1, frobnicate=1))


def _counting_loop(M=None):
    body = helper.make_graph(
        [
            helper.make_node("Add", ["v", "one"], ["v_out"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "body",
        [_vi("i", INT64, []), _vi("cond", BOOL, []), _vi("v", FLOAT, [1])],
        [_vi("cond_out", BOOL, []), _vi("v_out", FLOAT, [1])],
    )
    inits = [
        numpy_helper.from_array(np.ones(1, np.float32), "one"),
        numpy_helper.from_array(np.array(True), "c"),
    ]
    if M is not None:
        inits.append(numpy_helper.from_array(np.array(M, np.int64), "M"))
    loop = helper.make_node("Loop", ["M" if M is not None else "", "c", "x"], ["y"], name="loop", body=body)
    return _model([loop], [_vi("x", FLOAT, [1])], [_vi("y")], inits)


def test_loop_trip_counts_are_bounded(monkeypatch):
    from rnnfast.io.onnx import control

    monkeypatch.setattr(control, "MAX_LOOP_TRIPS", 50)
    assert rnnfast.from_onnx(_counting_loop(50)).run(None, {"x": np.zeros(1, np.float32)})[0][0] == 50
    with pytest.raises(rnnfast.FormatError, match="trip count 51"):
        rnnfast.from_onnx(_counting_loop(51))
    # a loop whose condition never turns false: stopped at the bound, not a hang
    with pytest.raises(rnnfast.FormatError, match="still running after 50"):
        rnnfast.from_onnx(_counting_loop())


def test_loading_runs_a_long_loop_no_longer_than_a_trial(monkeypatch):
    """A loop that the zeros of the load-time trial do not bound (its condition stays
    true) stops the trial after PROBE_LOOP_TRIPS iterations: loading stays cheap, and
    the first call runs it to the run-time bound."""
    from rnnfast import model_onnx
    from rnnfast.io.onnx import control

    monkeypatch.setattr(control, "MAX_LOOP_TRIPS", 4 * model_onnx.PROBE_LOOP_TRIPS)
    trips = []
    body = control.LoopOp._body
    monkeypatch.setattr(control.LoopOp, "_body", lambda self, *a: trips.append(1) or body(self, *a))
    model = rnnfast.from_onnx(_counting_loop())
    assert len(trips) == model_onnx.PROBE_LOOP_TRIPS
    assert not model_onnx.probing()
    with pytest.raises(ValueError, match="still running after %d" % (4 * model_onnx.PROBE_LOOP_TRIPS)):
        model.run(None, {"x": np.zeros(1, np.float32)})
    # a loop the trial bounds is still run whole at load, its shapes checked there
    trips.clear()
    rnnfast.from_onnx(_counting_loop(3))
    assert len(trips) == 3


def test_subgraph_nesting_is_bounded():
    from rnnfast.io.onnx import MAX_DEPTH

    graph = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"])],
        "g0",
        [_vi("i", INT64, []), _vi("cond", BOOL, [])],
        [_vi("cond_out", BOOL, [])],
    )
    for k in range(MAX_DEPTH + 1):
        node = helper.make_node("Loop", ["M", ""], [], body=graph)
        graph = helper.make_graph(
            [node, helper.make_node("Identity", ["cond"], ["cond_out"])],
            "g%d" % (k + 1),
            [_vi("i", INT64, []), _vi("cond", BOOL, [])],
            [_vi("cond_out", BOOL, [])],
        )
    m = _model(
        [helper.make_node("Loop", ["M", ""], ["y"], body=graph)],
        [_vi("x", FLOAT, [1])],
        [_vi("y")],
        [numpy_helper.from_array(np.array(1, np.int64), "M")],
    )
    with pytest.raises(rnnfast.UnsupportedLayerError, match="nested more than %d deep" % MAX_DEPTH):
        rnnfast.from_onnx(m)
