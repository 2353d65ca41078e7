"""The OnnxModel face beyond run(): pickling (what Dask and Ray ship), calls from several
threads at once, the summary and `rnnfast info`, from_onnx's argument checks."""

import io
import pickle
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import rnnfast


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    m = torch.nn.GRU(6, 12, num_layers=2, bidirectional=True, batch_first=True).eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m, (torch.randn(2, 5, 6),), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch", 1: "time"}}
        )
    path = tmp_path_factory.mktemp("onnx") / "gru.onnx"
    path.write_bytes(f.getvalue())
    return m, f.getvalue(), path


def test_pickle_round_trip(exported, rng):
    m, data, _ = exported
    model = rnnfast.from_onnx(data)
    x = rng.standard_normal((3, 7, 6)).astype(np.float32)
    before = model.run(None, {"x": x})
    again = pickle.loads(pickle.dumps(model))
    for a, b in zip(before, again.run(None, {"x": x})):
        assert a.tobytes() == b.tobytes()
    assert [i.shape for i in again.get_inputs()] == [["batch", "time", 6]]


def test_calls_from_several_threads(exported, rng):
    _, data, _ = exported
    model = rnnfast.from_onnx(data)
    xs = [rng.standard_normal((1 + i % 3, 4 + i, 6)).astype(np.float32) for i in range(12)]
    serial = [model.run(None, {"x": x}) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda x: model.run(None, {"x": x}), xs))
    for s, p in zip(serial, parallel):
        for a, b in zip(s, p):
            assert a.tobytes() == b.tobytes()


def test_summary_and_info(exported):
    _, _, path = exported
    model = rnnfast.load(path)
    rows = model.summary_rows()
    gru = [r for r in rows if r["type"] == "GRU"]
    assert len(gru) == 2 and gru[0]["units"] == "12" and "bidirectional" in gru[0]["options"]
    assert sum(r["parameters"] for r in gru) == sum(
        p.numel() for p in torch.nn.GRU(6, 12, num_layers=2, bidirectional=True).parameters()
    )
    out = subprocess.run(
        [sys.executable, "-m", "rnnfast", "info", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert "ONNX model" in out and "GRU" in out


def test_from_onnx_argument_checks(exported):
    _, _, path = exported
    with pytest.raises(TypeError, match="rnnfast.load"):
        rnnfast.from_onnx(str(path))
    with pytest.raises(TypeError, match="ModelProto"):
        rnnfast.from_onnx(12)
    with pytest.raises(TypeError, match="no load options"):
        rnnfast.load(path, dtype="float64")
    with pytest.raises(rnnfast.FormatError):
        rnnfast.from_onnx(b"\x08\x07garbage")


def test_predict_and_cli_predict(exported, tmp_path, rng):
    m, data, path = exported
    model = rnnfast.load(path)
    x = rng.standard_normal((2, 5, 6)).astype(np.float32)
    out, h = model.predict(x)
    with torch.no_grad():
        want, want_h = m(torch.from_numpy(x))
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=1)
    np.save(tmp_path / "x.npy", x)
    subprocess.run(
        [sys.executable, "-m", "rnnfast", "predict", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz")],
        check=True,
        capture_output=True,
    )
    y = np.load(tmp_path / "y.npz")
    np.testing.assert_array_equal(y["output_0"], out)
    np.testing.assert_array_equal(y["output_1"], h)
