"""ONNX external data (.onnx + weights file): read only from the model file's own
folder, offsets and lengths checked against the file; every refusal a FormatError.
Plus the content sniffing of ONNX files and hostile protobufs (depth, sizes)."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnfast

from _testing import assert_close


def gru_model(rng, H=32, I=16):
    W = (rng.standard_normal((1, 3 * H, I)) * 0.3).astype(np.float32)
    R = (rng.standard_normal((1, 3 * H, H)) * 0.3).astype(np.float32)
    node = helper.make_node("GRU", ["x", "W", "R"], ["y", "h"], hidden_size=H, linear_before_reset=1, name="gru")
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])


def save_external(model, folder, location="weights.bin"):
    path = os.path.join(folder, "model.onnx")
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path


def test_external_weights_load_and_match_onnxruntime(tmp_path, rng):
    path = save_external(gru_model(rng), str(tmp_path))
    assert os.path.getsize(tmp_path / "weights.bin") > 10000
    model = rnnfast.load(path)
    x = rng.standard_normal((20, 3, 16)).astype(np.float32)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for g, w in zip(model.run(None, {"x": x}), want):
        assert_close(g, w, np.float32)


def _external_entries(path):
    m = onnx.load(path, load_external_data=False)
    return m, [t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def _set(t, key, value):
    for e in t.external_data:
        if e.key == key:
            e.value = value
            return
    t.external_data.add(key=key, value=value)


@pytest.mark.parametrize(
    "location",
    ["../weights.bin", "/etc/passwd", "sub/weights.bin", "sub\\weights.bin", "", "..", "C:weights.bin"],
)
def test_locations_outside_the_folder_refused(tmp_path, rng, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    path = save_external(gru_model(rng), str(folder))
    # the same bytes where each location would find them
    data = (folder / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data)
    (folder / "sub" / "weights.bin").write_bytes(data)
    m, ts = _external_entries(path)
    _set(ts[0], "location", location)
    onnx.save_model(m, path)
    with pytest.raises(rnnfast.FormatError, match="external data"):
        rnnfast.load(path)


def test_symlink_leading_out_refused(tmp_path, rng):
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_external(gru_model(rng), str(folder))
    os.replace(folder / "weights.bin", tmp_path / "secret.bin")
    os.symlink(tmp_path / "secret.bin", folder / "weights.bin")
    with pytest.raises(rnnfast.FormatError, match="leads out"):
        rnnfast.load(path)


def test_symlink_inside_the_folder_is_fine(tmp_path, rng):
    path = save_external(gru_model(rng), str(tmp_path))
    os.replace(tmp_path / "weights.bin", tmp_path / "real.bin")
    os.symlink("real.bin", tmp_path / "weights.bin")
    rnnfast.load(path)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("offset", "999999999", "outside the file"),
        ("offset", "-4", "outside the file"),
        ("length", "12", "needs"),
        ("offset", "x", "unreadable"),
        ("location", "missing.bin", "missing"),
        ("frobnicate", "1", "unknown external data keys"),
    ],
)
def test_offsets_and_lengths_checked(tmp_path, rng, key, value, match):
    path = save_external(gru_model(rng), str(tmp_path))
    m, ts = _external_entries(path)
    _set(ts[-1], key, value)
    onnx.save_model(m, path)
    with pytest.raises(rnnfast.FormatError, match=match):
        rnnfast.load(path)


def test_truncated_weights_file(tmp_path, rng):
    path = save_external(gru_model(rng), str(tmp_path))
    with open(tmp_path / "weights.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(rnnfast.FormatError, match="outside the file"):
        rnnfast.load(path)


def test_bytes_with_external_data_refused(tmp_path, rng):
    path = save_external(gru_model(rng), str(tmp_path))
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(rnnfast.FormatError, match="external file"):
        rnnfast.from_onnx(data)


# -- sniffing and hostile protobufs -------------------------------------------------------


def test_onnx_files_are_detected_by_content(tmp_path, rng):
    path = tmp_path / "no_suffix.bin"
    onnx.save_model(gru_model(rng), str(path))
    assert isinstance(rnnfast.load(path), rnnfast.OnnxModel)
    from rnnfast.io import detect

    assert detect(str(path)) == "onnx"


def test_not_a_model_names_onnx(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x01\x02not a model at all")
    with pytest.raises(rnnfast.FormatError, match="ONNX"):
        rnnfast.load(path)


def test_damaged_protobuf_is_a_format_error(tmp_path, rng):
    data = gru_model(rng).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(rnnfast.FormatError):
        rnnfast.load(path)


def _field(num, payload):
    """A length-delimited protobuf field."""
    n, out = len(payload), bytearray()
    key = num << 3 | 2
    out.append(key)
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


def test_deeply_nested_subgraphs_refused_without_recursion(tmp_path):
    # a Loop node whose `body` graph holds a Loop node ... 5000 deep, written as raw
    # protobuf (GraphProto.node = 1, NodeProto.op_type = 4 / attribute = 5,
    # AttributeProto.name = 1 / g = 6 / type = 20)
    graph = b""
    for _ in range(5000):
        attr = _field(1, b"body") + _field(6, graph) + bytes([0xA0, 0x01, 5])
        graph = _field(1, _field(4, b"Loop") + _field(5, attr))
    data = bytes([0x08, 8]) + _field(7, graph) + _field(8, bytes([0x10, 17]))
    path = tmp_path / "deep.onnx"
    path.write_bytes(data)
    with pytest.raises(rnnfast.FormatError, match="ONNX"):
        rnnfast.load(path)


def test_huge_declared_tensor_without_bytes(rng):
    m = gru_model(rng)
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([1 << 20, 1 << 20, 1 << 10])
    with pytest.raises(rnnfast.FormatError, match="bytes|larger"):
        rnnfast.from_onnx(m)


def test_constant_folding_bomb_refused():
    # ConstantOfShape of a constant 2^40-element shape: refused before anything is allocated
    nodes = [
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64))),
        helper.make_node("ConstantOfShape", ["s"], ["big"], name="bomb"),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", 1, None)],
    )
    with pytest.raises(rnnfast.FormatError, match="bomb"):
        rnnfast.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_invalid_utf8_in_string_fields(tmp_path):
    # a fuzz finding: protobuf hands a string field holding invalid UTF-8 over as bytes
    # (here the producer name); such names read with replacement characters
    here = os.path.dirname(os.path.abspath(__file__))
    model = rnnfast.load(os.path.join(here, "fixtures", "onnx", "fuzz-invalid-utf8-names.onnx"))
    assert "\ufffd" in model.producer
    outs = model.run(None, model._example_feed())
    assert len(outs) == len(model.output_names) and all(np.isfinite(o).all() for o in outs)


def test_constant_folding_work_is_bounded():
    # 200 MatMuls of one shared 1024 x 1024 constant: 4 MB of file, 2e11 multiply-adds
    w = numpy_helper.from_array(np.ones((1024, 1024), np.float32) / 1024, "w")
    nodes, prev = [], "w"
    for i in range(200):
        nodes.append(helper.make_node("MatMul", [prev, "w"], ["m%d" % i], name="mm%d" % i))
        prev = "m%d" % i
    nodes.append(helper.make_node("Add", ["x", prev], ["y"]))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
        [helper.make_tensor_value_info("y", 1, None)],
        [w],
    )
    with pytest.raises(rnnfast.FormatError, match="operations than the budget"):
        rnnfast.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_load_time_run_skipped_when_it_would_cost_more_than_the_file():
    # 100 MatMuls of the data by one shared 1024 x 1024 weight: the load-time run would
    # cost 100 inferences' worth of weight reads for 4 MB of file; it is left to the call
    w = numpy_helper.from_array(np.zeros((1024, 1024), np.float32), "w")
    nodes, prev = [], "x"
    for i in range(100):
        nodes.append(helper.make_node("MatMul", [prev, "w"], ["m%d" % i], name="mm%d" % i))
        prev = "m%d" % i
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info(prev, 1, None)],
        [w],
    )
    model = rnnfast.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert not model._shape_cache  # not run at load
    assert model.run(None, {"x": np.ones((1, 1024), np.float32)})[0].shape == (1, 1024)
