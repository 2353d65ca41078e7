"""Loading ONNX files: the initializers read in place from the file's bytes (not copied
by the protobuf parse), the same model as protobuf's own parse wherever the scan steps
aside, and the load-time probe that leaves symbolic shapes it cannot guess to the first
call. Every model checked against ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnfast
import rnnfast.io.onnx as onnx_io
from rnnfast.io.onnx import proto

from _testing import assert_close


def _ort(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def lstm_head_model(rng, H=8, I=5, N=3):
    """LSTM -> Squeeze -> MatMul + Add (constants the graph keeps)."""
    W = (rng.standard_normal((1, 4 * H, I)) * 0.4).astype(np.float32)
    R = (rng.standard_normal((1, 4 * H, H)) * 0.4).astype(np.float32)
    B = (rng.standard_normal((1, 8 * H)) * 0.1).astype(np.float32)
    K = rng.standard_normal((H, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "h"], hidden_size=H, name="lstm"),
        helper.make_node("Squeeze", ["y", "axes"], ["ys"], name="sq"),
        helper.make_node("MatMul", ["ys", "K"], ["p"], name="mm"),
        helper.make_node("Add", ["p", "b"], ["out"], name="add"),
    ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"), (K, "K"), (b, "b"))]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_initializers_are_read_in_place_and_the_model_owns_what_it_keeps(rng):
    m = lstm_head_model(rng)
    data = m.SerializeToString()
    stripped, raws = proto.split_initializers(data)
    assert len(raws) == len(m.graph.initializer) and all(r is not None for r in raws)
    assert len(stripped) < len(data) - sum(r[1] for r in raws) + 64  # the weights left out
    parsed, views = proto.parse_model(data, "m")
    for t, v, (off, n) in zip(m.graph.initializer, views, raws):
        assert v.tobytes() == t.raw_data == data[off : off + n]
        assert np.shares_memory(v, np.frombuffer(data, np.uint8))  # a view, no copy
    model = rnnfast.from_onnx(data)
    whole = np.frombuffer(data, np.uint8)
    for op in model.layers:
        for s in op.slots:
            if s is not None and s[0] == "const":  # (a packed weight: its array unpacked on use)
                v = np.asarray(s[1])
                assert not np.may_share_memory(v, whole) and v.flags.aligned
    x = rng.standard_normal((7, 1, 5)).astype(np.float32)
    assert_close(model.run(None, {"x": x})[0], _ort(m, {"x": x})[0], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_initializers_have_numpys_own_dtype(rng, dtype):
    """A little-endian tensor read on a little-endian machine has NumPy's own descriptor
    of its dtype, not an equal one: the compiled calls' direct array reads take only
    that (c/ndarray.h), so a MatMul's bias Add runs in the product's call, not through
    typed memoryviews."""
    a = rng.standard_normal((3, 4)).astype(dtype)
    got = proto.TensorReader(None, "m")(numpy_helper.from_array(a, "a"))
    assert got.dtype is np.dtype(dtype) and np.array_equal(got, a)
    assert not got.flags.writeable


@pytest.mark.parametrize("layout", ["graph twice", "raw_data twice", "float_data", "groups"])
def test_unusual_layouts_are_parsed_by_protobuf_with_the_same_result(rng, layout):
    m = lstm_head_model(rng)
    original = onnx.ModelProto()
    original.CopyFrom(m)
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    if layout == "graph twice":  # protobuf merges the two: the second adds nothing but a doc string
        extra = onnx.GraphProto(doc_string="merged")
        data = m.SerializeToString() + proto._varint_bytes((7 << 3) | 2) + proto._varint_bytes(extra.ByteSize())
        data += extra.SerializeToString()
    elif layout == "raw_data twice":  # the last one counts: W of zeros
        t = [t for t in m.graph.initializer if t.name == "W"][0]
        zeros = np.zeros(int(np.prod(t.dims)), np.float32).tobytes()
        body = t.SerializeToString() + proto._varint_bytes((9 << 3) | 2) + proto._varint_bytes(len(zeros)) + zeros
        g = m.graph
        others = [i for i in g.initializer if i.name != "W"]
        del g.initializer[:]
        g.initializer.extend(others)
        graph = g.SerializeToString() + proto._varint_bytes((5 << 3) | 2) + proto._varint_bytes(len(body)) + body
        head = onnx.ModelProto()
        head.CopyFrom(m)
        head.ClearField("graph")
        data = head.SerializeToString() + proto._varint_bytes((7 << 3) | 2) + proto._varint_bytes(len(graph)) + graph
    elif layout == "float_data":  # values in typed fields, not raw_data
        for t in m.graph.initializer:
            if t.data_type == TensorProto.FLOAT:
                a = numpy_helper.to_array(t)
                t.ClearField("raw_data")
                t.float_data.extend(a.reshape(-1).tolist())
        data = m.SerializeToString()
    else:  # a deprecated group (wire types 3 and 4) of an unknown field: protobuf skips it
        data = m.SerializeToString() + proto._varint_bytes((99 << 3) | 3) + proto._varint_bytes((99 << 3) | 4)
    want = onnx.ModelProto()
    want.ParseFromString(data)
    if layout != "float_data":
        assert proto.split_initializers(data) is None
    got = rnnfast.from_onnx(data).run(None, {"x": x})[0]
    assert_close(got, _ort(want, {"x": x})[0], np.float32)
    if layout == "raw_data twice":  # (the zeros counted, not the first W)
        assert not np.allclose(got, _ort(original, {"x": x})[0], atol=1e-3)


def test_truncated_file_is_refused_as_protobuf_refuses_it(rng):
    data = lstm_head_model(rng).SerializeToString()
    with pytest.raises(rnnfast.FormatError, match="not a readable ONNX model"):
        rnnfast.from_onnx(data[: len(data) // 2])


def test_fields_of_multi_byte_tags_and_lengths_are_scanned_as_protobuf_reads_them(rng):
    """The scan's one-byte fast path and its runs of kept fields: names and doc strings of
    128 bytes and more (two-byte lengths), an unknown field numbered 99 (a two-byte tag)
    at the model's and the graph's level and long initializer names: the stripped bytes
    parse to the model without its ``raw_data`` and each weight lies where the scan says."""
    m = lstm_head_model(rng)
    m.doc_string = "d" * 300
    for n in m.graph.node:
        n.doc_string = "n" * 200
    long = {t.name: t.name + "_" + "w" * 150 for t in m.graph.initializer}
    for t in m.graph.initializer:
        t.name = long[t.name]
    for n in m.graph.node:
        n.input[:] = [long.get(v, v) for v in n.input]
    unknown = proto._varint_bytes(99 << 3) + proto._varint_bytes(300)  # field 99, a varint
    graph = m.graph.SerializeToString() + unknown
    head = onnx.ModelProto()
    head.CopyFrom(m)
    head.ClearField("graph")
    data = head.SerializeToString() + unknown + proto._varint_bytes((7 << 3) | 2)
    data += proto._varint_bytes(len(graph)) + graph
    stripped, raws = proto.split_initializers(data)
    full, want, got = onnx.ModelProto(), onnx.ModelProto(), onnx.ModelProto()
    full.ParseFromString(data)
    want.ParseFromString(data)
    got.ParseFromString(stripped)
    for t, (off, n) in zip(want.graph.initializer, raws):
        assert data[off : off + n] == t.raw_data
        t.ClearField("raw_data")
    assert got == want
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    assert_close(rnnfast.from_onnx(data).run(None, {"x": x})[0], _ort(full, {"x": x})[0], np.float32)


def test_node_names_protobuf_hands_over_as_bytes_are_read_as_text():
    """A name of invalid UTF-8 (bytes, from protobuf's pure-Python reader) is decoded with
    replacement, as every other string of the file is."""
    from types import SimpleNamespace

    p = SimpleNamespace(op_type="Relu", domain="", name="", input=[b"x\xff"], output=["y"], attribute=[])
    node = onnx_io._Node(p, 3)
    assert node.inputs == ["x\ufffd"] and node.outputs == ["y"] and node.name == "Relu_3"
    p.input, p.output = ["x"], [b"\xfey"]
    assert onnx_io._Node(p, 0).outputs == ["\ufffdy"]


def _gru_with_state(I=4, H=6, batch_h="B2"):
    """GRU whose initial_h is an input with its own symbol for the batch (the exporters
    name the two batch dimensions apart)."""
    rng = np.random.default_rng(3)
    W = (rng.standard_normal((1, 3 * H, I)) * 0.4).astype(np.float32)
    R = (rng.standard_normal((1, 3 * H, H)) * 0.4).astype(np.float32)
    node = helper.make_node("GRU", ["x", "W", "R", "", "", "h0"], ["y", "h"], hidden_size=H, name="gru")
    g = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, batch_h, H]),
        ],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def test_symbols_the_probe_guesses_apart_load(rng):
    """x (T, B, 4) and h0 (1, B2, 6): the first guess gives B=1 and B2=16, which do not
    fit; the model is valid (B2 = B at every call) and loads."""
    m = _gru_with_state()
    model = rnnfast.from_onnx(m)
    for T, B in ((5, 3), (1, 1)):
        feed = {
            "x": rng.standard_normal((T, B, 4)).astype(np.float32),
            "h0": rng.standard_normal((1, B, 6)).astype(np.float32),
        }
        assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)
    with pytest.raises(ValueError, match="h0|initial_h"):
        model.run(None, {"x": np.zeros((5, 3, 4), np.float32), "h0": np.zeros((1, 2, 6), np.float32)})


def test_symbols_no_guess_fits_are_checked_at_the_first_call(rng):
    """Concat(a (n,), b (m,)) -> Reshape to (3,): fits only where n + m = 3, which no
    guess of the probe gives; the model loads and its calls check their shapes."""
    g = helper.make_graph(
        [
            helper.make_node("Concat", ["a", "b"], ["c"], axis=0, name="cat"),
            helper.make_node("Reshape", ["c", "shape"], ["out"], name="rs"),
        ],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 3], np.int64), "shape")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = rnnfast.from_onnx(m)
    feed = {"a": np.array([1.0], np.float32), "b": np.array([2.0, 3.0], np.float32)}
    np.testing.assert_array_equal(model.run(None, feed)[0], _ort(m, feed)[0])
    with pytest.raises(ValueError):
        model.run(None, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})


def test_fixed_shapes_that_do_not_fit_are_refused_at_load():
    m = _gru_with_state(batch_h=2)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    with pytest.raises(rnnfast.FormatError, match="do not fit together"):
        rnnfast.from_onnx(m)


def _fixed_graph(nodes, inputs, inits, opset=17):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _count_products(monkeypatch):
    from rnnfast import _products

    calls = []
    real = _products.dense
    monkeypatch.setattr(_products, "dense", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def test_the_trial_run_gives_products_and_activations_their_shapes_only(rng, monkeypatch):
    """Conv -> Relu -> Transpose -> MatMul (packed constant) -> Reshape -> Softmax on fixed
    shapes: the load-time run computes none of their values (zeros of the right shape),
    finds the same shapes as a full run, and the model computes what ONNX Runtime does."""
    inits = {
        "w": rng.standard_normal((6, 5, 3)).astype(np.float32),
        "cb": rng.standard_normal(6).astype(np.float32),
        "K": rng.standard_normal((6, 4)).astype(np.float32),
        "shape": np.array([4, -1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "cb"], ["c"], pads=[1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1], name="tr"),
        helper.make_node("MatMul", ["t", "K"], ["p"], name="mm"),
        helper.make_node("Reshape", ["p", "shape"], ["q"], name="rs"),
        helper.make_node("Softmax", ["q"], ["out"], axis=-1, name="sm"),
    ]
    m = _fixed_graph(nodes, [("x", [4, 5, 7])], inits)
    calls = _count_products(monkeypatch)
    model = rnnfast.from_onnx(m)
    assert calls == [(3, 15)]  # only the Conv's window at load (1 row, its span of 3 steps), not the MatMul
    feed = {"x": rng.standard_normal((4, 5, 7)).astype(np.float32)}
    values, _ = model._graph.run([np.zeros((4, 5, 7), np.float32)], 1, keep_all=True)
    assert model._shapes == {k: v.shape for k, v in values.items() if isinstance(v, np.ndarray)}
    assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)
    assert calls  # (the calls do compute it)


@pytest.mark.parametrize("what", ["matmul", "conv", "softmax", "add", "matmul of two"])
def test_the_dry_trial_run_still_refuses_what_does_not_fit(rng, what):
    x, K = ("x", [2, 3, 6]), rng.standard_normal((5, 4)).astype(np.float32)
    if what == "matmul":  # 6 columns into a (5, 4) kernel
        m = _fixed_graph([helper.make_node("MatMul", ["x", "K"], ["out"], name="mm")], [x], {"K": K})
    elif what == "conv":  # 3 channels into a kernel of 4
        w = rng.standard_normal((2, 4, 3)).astype(np.float32)
        m = _fixed_graph([helper.make_node("Conv", ["x", "w"], ["out"], name="conv")], [x], {"w": w})
    elif what == "add":  # a product's (2, 3, 4) and a bias of 5
        b = rng.standard_normal(5).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["x", "K"], ["p"], name="mm"), helper.make_node("Add", ["p", "b"], ["out"])]
        m = _fixed_graph(nodes, [x], {"K": rng.standard_normal((6, 4)).astype(np.float32), "b": b})
    elif what == "matmul of two":  # a product's (2, 3, 4) times x (2, 3, 6)
        nodes = [
            helper.make_node("MatMul", ["x", "K"], ["p"], name="mm"),
            helper.make_node("MatMul", ["p", "x"], ["out"], name="mm2"),
        ]
        m = _fixed_graph(nodes, [x], {"K": rng.standard_normal((6, 4)).astype(np.float32)})
    else:  # a softmax axis the tensor does not have
        m = _fixed_graph([helper.make_node("Softmax", ["x"], ["out"], axis=5, name="sm")], [x], {})
    with pytest.raises(rnnfast.FormatError, match="do not fit together"):
        rnnfast.from_onnx(m)


def test_the_trial_run_computes_values_an_index_depends_on(rng, monkeypatch):
    """MatMul + 100 -> Cast -> the indices of a Gather: the product's values decide
    whether the gather fits, so the load-time run computes them and refuses the file
    (index 100 of 5), as it did before products ran dry there."""
    inits = {
        "K": np.zeros((4, 3), np.float32),
        "hundred": np.array([100.0], np.float32),
        "table": np.arange(5, dtype=np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "K"], ["p"], name="mm"),
        helper.make_node("Add", ["p", "hundred"], ["q"], name="add"),
        helper.make_node("Cast", ["q"], ["i"], to=TensorProto.INT64, name="cast"),
        helper.make_node("Gather", ["table", "i"], ["out"], name="gather"),
    ]
    m = _fixed_graph(nodes, [("x", [2, 4])], inits)
    calls = _count_products(monkeypatch)
    with pytest.raises(rnnfast.FormatError, match="do not fit together"):
        rnnfast.from_onnx(m)
    assert calls  # computed, not dry


# -- weights packed straight from the file's layout -------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D, K, H, G, ncb", [(1, 37, 70, 3, 1), (2, 9, 130, 4, 3), (1, 3, 1, 1, 1), (2, 64, 64, 1, 2)])
def test_pack_columns_packs_any_strided_source_as_pack_blocks_packs_its_copy(rng, dtype, D, K, H, G, ncb):
    """``_kernels.pack_columns`` on a transposed, gate-reordered and even unaligned view
    gives pack_blocks' bits on the gathered contiguous copy; ``unpack_blocks`` gives the
    copy back."""
    from rnnfast import _kernels
    from rnnfast.layers import _column_runs, _run_columns

    src = rng.standard_normal((D, G * H, K)).astype(dtype)  # ONNX's (G*H, I) per direction
    cols = _run_columns(_column_runs(H, G, ncb, (0, 2, 3, 1) if G == 4 else None))
    want_canonical = np.ascontiguousarray(src.transpose(0, 2, 1)[:, :, cols])
    want = _kernels.pack_blocks(want_canonical, G, ncb)
    raw = np.zeros(src.nbytes + 1, np.uint8)
    raw[1:] = src.view(np.uint8).reshape(-1)
    unaligned = np.frombuffer(raw.data, dtype, src.size, 1).reshape(src.shape)
    assert not unaligned.flags.aligned
    for view in (src.transpose(0, 2, 1), np.ascontiguousarray(src.transpose(0, 2, 1)), unaligned.transpose(0, 2, 1)):
        got = _kernels.pack_columns(view, cols, G, ncb)
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    out = _kernels._zeros_lines(want.shape, dtype)
    assert _kernels.pack_columns(src.transpose(0, 2, 1), cols, G, ncb, out) is out
    assert _kernels.unpack_blocks(want, K, G * H, G, ncb).tobytes() == want_canonical.tobytes()
    assert _kernels.packed_blocks_size(K, G * H, G, ncb) == want.shape[1]
    with pytest.raises(ValueError):
        _kernels.pack_columns(src.transpose(0, 2, 1), cols + G * H, G, ncb)  # a column past the source
    with pytest.raises(ValueError):
        _kernels.unpack_blocks(want[:, 1:], K, G * H, G, ncb)


def _recurrent_layers(model):
    return [op.layer for op in model.layers if getattr(op, "recurrent", False)]


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_recurrent_weights_are_kept_once_packed_from_the_file(rng, tmp_path, op):
    """A loaded ONNX recurrent node keeps each weight the kernels read packed only
    packed, packed straight from the file's bytes: its canonical weights (``_W``,
    ``_U``, unpacked on use) are bitwise those of a layer given them in canonical order
    (float64, cast: the copying path), and the model computes, pickles and survives
    the file's change alike."""
    import pickle

    from rnnfast import _kernels
    from rnnfast.layers import CellWeights, RNNLayer

    H, I, G = 70, 6, 3 if op == "GRU" else 4
    W = (rng.standard_normal((2, G * H, I)) * 0.3).astype(np.float32)
    R = (rng.standard_normal((2, G * H, H)) * 0.3).astype(np.float32)
    B = (rng.standard_normal((2, 2 * G * H)) * 0.1).astype(np.float32)
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    node = helper.make_node(op, ["x", "W", "R", "B"], ["y"], hidden_size=H, direction="bidirectional", **extra)
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    assert path.stat().st_size >= onnx_io.MAP_MIN_BYTES  # mapped, not read
    model = rnnfast.load(str(path))
    (layer,) = _recurrent_layers(model)
    kept = vars(layer)
    assert "_U" not in kept and ("_W" not in kept) == _kernels.packed_projection(np.float32)
    order = [0, 2, 3, 1] if op == "LSTM" else list(range(G))
    cols = np.concatenate([np.arange(g * H, (g + 1) * H) for g in order])
    twin = RNNLayer(
        op.lower(),
        [
            CellWeights(W[d].T[:, cols].astype(np.float64), R[d].T[:, cols].astype(np.float64), B[d, : G * H][cols],
                        B[d, G * H :][cols])
            for d in range(2)
        ],
        reset_after=True,
    )  # fmt: skip
    for k in ("_W", "_U", "_Wp", "_Up", "_bx", "_bhn"):
        a, b = getattr(layer, k), getattr(twin, k)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
        assert not a.flags.writeable
    x = rng.standard_normal((5, 3, I)).astype(np.float32)
    want = model.run(None, {"x": x})[0]
    path.write_bytes(b"\0" * 64)  # the file changes: the model holds none of it
    assert model.run(None, {"x": x})[0].tobytes() == want.tobytes()
    back = pickle.loads(pickle.dumps(model))
    assert set(vars(_recurrent_layers(back)[0])) - {"_entry", "_plans"} == set(kept) - {"_entry", "_plans"}
    assert back.run(None, {"x": x})[0].tobytes() == want.tobytes()
    bf16 = layer.with_precision("bf16")
    assert "_W" in vars(bf16) and "_U" in vars(bf16) and "_U" not in vars(layer)  # what the reduced one packs from
    again = bf16.with_precision("float32")
    assert again._Up.tobytes() == layer._Up.tobytes() and "_U" not in vars(again)


def test_the_trial_run_views_a_recurrent_output_and_shims_what_follows(rng, monkeypatch):
    """Bidirectional GRU -> Transpose -> Reshape -> MatMul (packed constant) -> Softmax, as
    torch exports it: the recurrent op's zeros count as dry, so the layout ops view them
    (no copy) and the product's values are not computed at load; the shapes are those of
    a full run and the model computes what ONNX Runtime does."""
    from rnnfast import model_onnx

    H, I, T, B = 8, 5, 6, 3
    inits = {
        "W": (rng.standard_normal((2, 3 * H, I)) * 0.4).astype(np.float32),
        "R": (rng.standard_normal((2, 3 * H, H)) * 0.4).astype(np.float32),
        "K": rng.standard_normal((2 * H, 4)).astype(np.float32),
        "shape": np.array([T, B, 2 * H], np.int64),
    }
    nodes = [
        helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=H, direction="bidirectional", name="gru"),
        helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 1, 3], name="tr"),
        helper.make_node("Reshape", ["t", "shape"], ["r"], name="rs"),
        helper.make_node("MatMul", ["r", "K"], ["p"], name="mm"),
        helper.make_node("Softmax", ["p"], ["out"], axis=-1, name="sm"),
    ]
    m = _fixed_graph(nodes, [("x", [T, B, I])], inits)
    calls = _count_products(monkeypatch)
    model = rnnfast.from_onnx(m)
    assert calls == []
    shimmed = {op.op_type for op, _ in model_onnx._dry_shims(model._graph, model._data)}
    assert {"Transpose", "Reshape", "MatMul", "Softmax"} <= shimmed
    values, _ = model._graph.run([np.zeros((T, B, I), np.float32)], 1, keep_all=True)
    assert model._shapes == {k: v.shape for k, v in values.items() if isinstance(v, np.ndarray)}
    feed = {"x": rng.standard_normal((T, B, I)).astype(np.float32)}
    assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)


def test_the_trial_run_gives_arithmetic_and_products_of_two_tensors_their_shapes_only(rng, monkeypatch):
    """A Linear on 3-D data as torch exports it (MatMul, then Add of the bias) and an
    attention's product of two computed tensors: on a dry input the trial run gives
    them zeros of their shapes (the Add on full-size zeros was most of a 64-row speech
    model's trial), the shapes are those of a full run, and the model computes what
    ONNX Runtime does."""
    from rnnfast import model_onnx

    inits = {"K": rng.standard_normal((6, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "K"], ["p"], name="mm"),
        helper.make_node("Add", ["p", "b"], ["q"], name="add"),
        helper.make_node("Transpose", ["q"], ["t"], perm=[0, 2, 1], name="tr"),
        helper.make_node("MatMul", ["q", "t"], ["s"], name="scores"),
        helper.make_node("Div", ["s", "b"], ["out"], name="div"),
    ]
    m = _fixed_graph(nodes, [("x", [2, 4, 6])], inits)
    model = rnnfast.from_onnx(m)
    shimmed = {op.name for op, _ in model_onnx._dry_shims(model._graph, model._data)}
    assert {"mm", "add", "scores", "div"} <= shimmed
    values, _ = model._graph.run([np.zeros((2, 4, 6), np.float32)], 1, keep_all=True)
    assert model._shapes == {k: v.shape for k, v in values.items() if isinstance(v, np.ndarray)}
    feed = {"x": rng.standard_normal((2, 4, 6)).astype(np.float32)}
    assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)


def _linear_file(rng, tmp_path, trans_b=1, N=300, K=64):
    """x (3, K) -> Gemm (transB) or MatMul with an (N, K) / (K, N) weight -> Relu, in a
    file the loader maps."""
    W = (rng.standard_normal((N, K) if trans_b else (K, N)) * 0.1).astype(np.float32)
    c = (rng.standard_normal(N) * 0.1).astype(np.float32)
    if trans_b is None:
        node = helper.make_node("MatMul", ["x", "W"], ["p"], name="lin")
    else:
        node = helper.make_node("Gemm", ["x", "W", "c"], ["p"], transB=trans_b, name="lin")
    m = _fixed_graph([node, helper.make_node("Relu", ["p"], ["out"])], [("x", [3, K])], {"W": W, "c": c})
    path = tmp_path / "lin.onnx"
    path.write_bytes(m.SerializeToString())
    assert path.stat().st_size >= onnx_io.MAP_MIN_BYTES  # mapped, not read
    return m, path, W


@pytest.mark.parametrize("trans_b", [1, 0, None])
def test_a_packed_product_keeps_its_weight_once(rng, tmp_path, monkeypatch, trans_b):
    """A Gemm / MatMul on a constant weight keeps it packed only (``PackedWeight``: the
    array unpacked on use, bitwise the file's), computes bitwise what the model built
    the old way (the weight copied beside the packed one) computes, on the packed path
    and on the unpacked one (float64 data), pickles with the weight once and keeps
    nothing of the file."""
    import pickle

    m, path, W = _linear_file(rng, tmp_path, trans_b)
    model = rnnfast.load(str(path))
    (op,) = [op for op in model.layers if op.name == "lin"]
    w = op.slots[1][1]
    assert isinstance(w, onnx_io.PackedWeight) and w.packed is op._packed
    assert w.shape == W.shape and w.dtype == W.dtype and w.ndim == 2 and w.size == W.size
    assert np.asarray(w).tobytes() == W.tobytes() and np.asarray(w.T).tobytes() == W.T.tobytes()
    assert not np.asarray(w).flags.writeable
    with monkeypatch.context() as mp:  # the old way: the weight copied out of the file beside the packed one
        mp.setattr(onnx_io.PackedWeight, "of", classmethod(lambda cls, op: np.array(op.slots[1][1])))
        old = rnnfast.load(str(path))
    (old_op,) = [op for op in old.layers if op.name == "lin"]
    assert type(old_op.slots[1][1]) is np.ndarray
    x = rng.standard_normal((3, W.shape[1] if trans_b else W.shape[0])).astype(np.float32)
    want = model.run(None, {"x": x})[0]
    assert want.tobytes() == old.run(None, {"x": x})[0].tobytes()
    assert_close(want, _ort(m, {"x": x})[0], np.float32)
    args = [x.astype(np.float64)] + [None if s is None else s[1] for s in op.slots[1:]]
    old_args = [args[0]] + [None if s is None else s[1] for s in old_op.slots[1:]]
    assert op.packed(args, 1) is None  # float64 data: the unpacked path
    assert op.compute(args, 1)[0].tobytes() == old_op.compute(old_args, 1)[0].tobytes()
    path.write_bytes(b"\0" * 64)  # the file changes: the model holds none of it
    assert model.run(None, {"x": x})[0].tobytes() == want.tobytes()
    data = pickle.dumps(model)
    assert len(data) < 1.5 * W.nbytes < len(pickle.dumps(old))  # once, not twice
    back = pickle.loads(data)
    assert back.run(None, {"x": x})[0].tobytes() == want.tobytes()
    (back_op,) = [op for op in back.layers if op.name == "lin"]
    assert back_op.slots[1][1].packed is back_op._packed


def test_ops_that_read_zero_stride_dry_values_in_the_trial_run_load_and_compute(rng):
    """A chain of value-blind ops that compute in the trial run (Conv, Erf, LeakyRelu,
    Concat, Gather, Slice, Flatten, Exp) after a product whose dry output is one zero
    seen through zero strides: the model loads (no op refuses the strided zeros) and
    computes what ONNX Runtime does."""
    from rnnfast import model_onnx

    inits = {
        "K": rng.standard_normal((6, 5)).astype(np.float32),
        "w": rng.standard_normal((3, 5, 3)).astype(np.float32),
        "idx": np.array([0, 2, 5], np.int64),
        "starts": np.array([1], np.int64),
        "ends": np.array([4], np.int64),
        "axes": np.array([2], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "K"], ["p"], name="mm"),
        helper.make_node("Transpose", ["p"], ["t"], perm=[0, 2, 1], name="tr"),
        helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1], name="conv"),
        helper.make_node("Erf", ["c"], ["e"], name="erf"),
        helper.make_node("LeakyRelu", ["e"], ["l"], alpha=0.1, name="lrelu"),
        helper.make_node("Concat", ["l", "c"], ["cat"], axis=1, name="cat"),
        helper.make_node("Gather", ["cat", "idx"], ["g"], axis=1, name="gather"),
        helper.make_node("Slice", ["g", "starts", "ends", "axes"], ["s"], name="slice"),
        helper.make_node("Exp", ["s"], ["ex"], name="exp"),
        helper.make_node("Flatten", ["ex"], ["out"], axis=1, name="flat"),
    ]
    m = _fixed_graph(nodes, [("x", [2, 4, 6])], inits)
    model = rnnfast.from_onnx(m)
    assert "mm" in {op.name for op, _ in model_onnx._dry_shims(model._graph, model._data)}
    feed = {"x": rng.standard_normal((2, 4, 6)).astype(np.float32)}
    assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)


@pytest.mark.parametrize("reader", ["value-blind", "value-reading"])
def test_a_dry_recurrent_output_is_a_zero_view_only_where_every_reader_is_value_blind(rng, monkeypatch, reader):
    """GRU -> Squeeze -> Transpose (value-blind: its zeros are a zero-stride view in the
    trial run) and GRU -> Greater -> Where (the Where reads the values: fresh zeros, as
    before); both load, leave no op dry and compute what ONNX Runtime does."""
    from rnnfast import model_onnx

    H, I, T, B = 5, 4, 6, 3
    inits = {
        "W": (rng.standard_normal((1, 3 * H, I)) * 0.4).astype(np.float32),
        "R": (rng.standard_normal((1, 3 * H, H)) * 0.4).astype(np.float32),
        "axes": np.array([1], np.int64),
        "zero": np.zeros(1, np.float32),
        "one": np.ones(1, np.float32),
    }
    nodes = [
        helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=H, name="gru"),
        helper.make_node("Squeeze", ["y", "axes"], ["s"], name="sq"),
    ]
    if reader == "value-blind":
        nodes.append(helper.make_node("Transpose", ["s"], ["out"], perm=[1, 0, 2], name="tr"))
    else:
        nodes += [
            helper.make_node("Greater", ["s", "zero"], ["pos"], name="gt"),
            helper.make_node("Where", ["pos", "s", "one"], ["out"], name="where"),
        ]
    m = _fixed_graph(nodes, [("x", [T, B, I])], inits)
    seen = []
    real = model_onnx.RecurrentOp._dry
    monkeypatch.setattr(model_onnx.RecurrentOp, "_dry", lambda self, *a: seen.append(self.dry) or real(self, *a))
    model = rnnfast.from_onnx(m)
    assert seen == (["view"] if reader == "value-blind" else [True])
    assert not any(getattr(op, "dry", False) for op in model.layers)
    feed = {"x": rng.standard_normal((T, B, I)).astype(np.float32)}
    assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)


def _zero_state_model(cell="GRU", D=1, z_batch=1, z=0.0, opset=17, batch="B", T="T", unsqueeze_attr=False, extra=None):
    """A recurrent node whose initial_h (and an LSTM's initial_c) is computed as
    ``torch.onnx.export`` writes a zero state: Expand(Z, Concat([D], Unsqueeze(Gather(
    Shape(X), 1), [0]), [H])), ``Z`` (1, z_batch, H) filled with ``z``. ``extra``:
    (nodes, outputs) added to the graph."""
    H, I, G = 6, 4, {"GRU": 3, "LSTM": 4, "RNN": 1}[cell]
    rng = np.random.default_rng(5)
    inits = {
        "W": (rng.standard_normal((D, G * H, I)) * 0.4).astype(np.float32),
        "R": (rng.standard_normal((D, G * H, H)) * 0.4).astype(np.float32),
        "B": (rng.standard_normal((D, 2 * G * H)) * 0.1).astype(np.float32),
        "Z": np.full((1, z_batch, H), z, np.float32),
        "one": np.array(1, np.int64),
        "d": np.array([D], np.int64),
        "h": np.array([H], np.int64),
        "ax": np.array([0], np.int64),
    }
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"), helper.make_node("Gather", ["s", "one"], ["b"])]
    if unsqueeze_attr:
        nodes.append(helper.make_node("Unsqueeze", ["b"], ["b1"], axes=[0]))
    else:
        nodes.append(helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]))
    nodes += [
        helper.make_node("Concat", ["d", "b1", "h"], ["shp"], axis=0),
        helper.make_node("Expand", ["Z", "shp"], ["h0"], name="expand"),
    ]
    states = ["h0"]
    if cell == "LSTM":
        nodes.append(helper.make_node("Expand", ["Z", "shp"], ["c0"], name="expand_c"))
        states.append("c0")
    direction = "bidirectional" if D == 2 else "forward"
    nodes.append(
        helper.make_node(cell, ["x", "W", "R", "B", ""] + states, ["y", "y_h"], hidden_size=H, direction=direction)
    )
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra:
        nodes += extra[0]
        outputs += [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in extra[1]]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, batch, I])],
        outputs,
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ops(model):
    return [op.op_type for op in model.layers]


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("opset", [11, 17])
def test_an_exported_zero_state_is_an_absent_state(rng, cell, D, opset):
    """Z of batch 1: the state follows X's batch; the chain is neither converted nor run
    and every batch computes what ONNX Runtime computes."""
    m = _zero_state_model(cell, D, opset=opset, unsqueeze_attr=opset < 13)
    model = rnnfast.from_onnx(m)
    assert _ops(model) == [cell]
    assert all(op.slots[2] is None and op.slots[3] is None for op in model.layers)
    for T, B in ((5, 3), (1, 1), (7, 2)):
        feed = {"x": rng.standard_normal((T, B, 4)).astype(np.float32)}
        for a, b in zip(model.run(None, feed), _ort(m, feed)):
            assert_close(a, b, np.float32)


def test_an_exported_zero_state_of_a_traced_batch_is_a_constant(rng):
    """Z of batch 3 (torch's trace of zeros(1, 3, H)): the model runs batches of 3 only,
    the state becomes the constant zeros(1, 3, H) and other batches are refused as before."""
    m = _zero_state_model("LSTM", 2, z_batch=3)
    model = rnnfast.from_onnx(m)
    assert _ops(model) == ["LSTM"]
    for s in model.layers[0].slots[2:]:
        assert s[0] == "const" and s[1].shape == (2, 3, 6) and not s[1].any()
    feed = {"x": rng.standard_normal((5, 3, 4)).astype(np.float32)}
    for a, b in zip(model.run(None, feed), _ort(m, feed)):
        assert_close(a, b, np.float32)
    with pytest.raises(ValueError, match="h0|initial_h"):
        model.run(None, {"x": np.zeros((5, 2, 4), np.float32)})
    m = _zero_state_model("GRU", z_batch=3, batch=2, T=5)  # a fixed batch the constant does not fit
    with pytest.raises(rnnfast.FormatError, match="do not fit together"):
        rnnfast.from_onnx(m)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_an_exported_zero_state_of_constant_nodes_is_an_absent_state(rng, cell):
    """The chain's constants as ``Constant`` nodes, as torch writes them: a ``value``
    tensor (read directly) and the other value attributes (read as the node's own turn
    reads them); the chain is dropped and the model computes what ONNX Runtime computes."""
    m = _zero_state_model(cell, 2)
    g = m.graph
    as_nodes = {"Z": "value", "one": "value_int", "d": "value_ints", "h": "value", "ax": "value_ints"}
    kept = [t for t in g.initializer if t.name not in as_nodes]
    consts = []
    for t in g.initializer:
        if t.name in as_nodes:
            a = numpy_helper.to_array(t)
            kind = as_nodes[t.name]
            v = numpy_helper.from_array(a) if kind == "value" else int(a) if kind == "value_int" else a.tolist()
            consts.append(helper.make_node("Constant", [], [t.name], name="c_" + t.name, **{kind: v}))
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = consts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    model = rnnfast.from_onnx(m)
    assert _ops(model) == [cell]
    feed = {"x": rng.standard_normal((5, 3, 4)).astype(np.float32)}
    for a, b in zip(model.run(None, feed), _ort(m, feed)):
        assert_close(a, b, np.float32)


@pytest.mark.parametrize(
    "what", ["nonzero", "negative zero", "read elsewhere", "an output", "layout", "other index", "other axis"]
)
def test_a_state_chain_that_is_not_the_zero_state_is_computed(rng, what):
    """Anything but the exact idiom stays in the graph and computes as ONNX Runtime does."""
    kw, extra = {}, None
    if what == "nonzero":
        kw["z"] = 0.5
    elif what == "negative zero":
        kw["z"] = -0.0
    elif what == "read elsewhere":  # the constant state of a traced batch is read by another node too
        kw["z_batch"] = 2
        extra = ([helper.make_node("Relu", ["h0"], ["r"])], ["r"])
    elif what == "an output":
        kw["z_batch"] = 2
        extra = ([], ["h0"])
    m = _zero_state_model(**kw, extra=extra)
    if what == "layout":  # batch-first: the state is (batch, D, H), not this chain's shape
        m.graph.node[-1].attribute.append(helper.make_attribute("layout", 1))
    elif what == "other index":
        m.graph.initializer[4].CopyFrom(numpy_helper.from_array(np.array(0, np.int64), "one"))
    elif what == "other axis":
        m.graph.node[3].attribute[0].i = -1
    B = 2 if what in ("read elsewhere", "an output") else 3
    feed = {"x": rng.standard_normal((5, B, 4)).astype(np.float32)}
    try:
        want = _ort(m, feed)
    except Exception:  # (ONNX Runtime refuses it: so does rnnfast)
        with pytest.raises((ValueError, rnnfast.FormatError)):
            rnnfast.from_onnx(m).run(None, feed)
        return
    model = rnnfast.from_onnx(m)
    assert "Expand" in _ops(model)
    for a, b in zip(model.run(None, feed), want):
        assert_close(a, b, np.float32)


@pytest.mark.parametrize(
    "B, T, k, attrs",
    [
        (3, 40, 5, dict(pads=[2, 2])),
        (1, 40, 3, dict(strides=[2], dilations=[3])),
        (2, 33, 4, dict(auto_pad="SAME_UPPER", strides=[3])),
        (2, 9, 4, dict(auto_pad="SAME_LOWER", strides=[2])),
        (4, 17, 2, dict(auto_pad="VALID", strides=[2], group=2)),
        (2, 3, 5, dict(pads=[1, 1])),  # shorter than the kernel: computed whole
    ],
)
def test_the_trial_run_gives_a_conv_its_shape_from_one_window(rng, monkeypatch, B, T, k, attrs):
    """In the trial run a Conv computes one row and one kernel span of steps; the steps
    out (the output shape kept for the summary) are the ones ONNX Runtime gives."""
    from rnnfast import model_onnx

    C, O = 4, 6
    w = rng.standard_normal((O, C // attrs.get("group", 1), k)).astype(np.float32)
    m = _fixed_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", **attrs),
            helper.make_node("Relu", ["c"], ["out"], name="relu"),
        ],
        [("x", [B, C, T])],
        {"w": w},
    )
    seen = []
    real = model_onnx.KERNELS["Conv"]

    def conv(args, a, n=None):
        seen.append(args[0].shape)
        return real(args, a, n)

    monkeypatch.setitem(model_onnx.KERNELS, "Conv", conv)
    model = rnnfast.from_onnx(m)
    span = (k - 1) * (attrs.get("dilations") or [1])[0] + 1
    assert seen == [(1, C, min(T, span))] if T > span else seen[0][2] == T
    feed = {"x": rng.standard_normal((B, C, T)).astype(np.float32)}
    want = _ort(m, feed)[0]
    assert model.summary_rows()[0]["output_shape"] == "(%s)" % ", ".join(map(str, want.shape))
    assert_close(model.run(None, feed)[0], want, np.float32)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_the_trial_run_allocates_no_zeros_of_the_input_shape(rng, cell):
    """A fixed input of 64 rows (torch's batch-first export: Transpose -> recurrent node):
    the trial run's input is one zero seen through zero strides, so loading allocates
    nothing of the input's size (a 64-row input's np.zeros cost 0.2-2 ms of a load:
    cleared heap or fresh pages); the model computes what ONNX Runtime does."""
    import tracemalloc

    B, T, I, H = 64, 400, 16, 4
    G = {"GRU": 3, "LSTM": 4}[cell]
    inits = {
        "W": (rng.standard_normal((1, G * H, I)) * 0.4).astype(np.float32),
        "R": (rng.standard_normal((1, G * H, H)) * 0.4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2], name="tr"),
        helper.make_node(cell, ["xt", "W", "R"], ["y"], hidden_size=H, name="rnn"),
        helper.make_node("Squeeze", ["y"], ["out"], axes=[1], name="sq"),
    ]
    m = _fixed_graph(nodes, [("x", [B, T, I])], inits, opset=11)
    data = m.SerializeToString()
    tracemalloc.start()
    try:
        model = rnnfast.from_onnx(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < B * T * I * 4 // 4  # (the input: 1.6 MB)
    feed = {"x": rng.standard_normal((B, T, I)).astype(np.float32)}
    assert_close(model.run(None, feed)[0], _ort(m, feed)[0], np.float32)
