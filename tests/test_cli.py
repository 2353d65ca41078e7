"""The `rnnfast` command, run as a subprocess on real files: the bundled models, a .pt
written by live PyTorch, a .keras written by live Keras, .npy / .npz / .csv inputs.
Expected values come from the frameworks (their outputs, Keras' count_params(),
PyTorch's numel()); bad input must give exit status 1 and the error's message, never
a traceback."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch

from rnnfast import demo

from _testing import TOL

F32 = TOL[np.dtype(np.float32)]
KERAS_FILE = demo.data_path("digits_bigru.keras")
TORCH_FILE = demo.data_path("digits_lstm.pt")
TEST_FILE = demo.data_path("digits_test.npz")


def rnnfast(*args, ok=True, timeout=120):
    env = dict(os.environ, KERAS_BACKEND="torch")
    r = subprocess.run(
        [sys.executable, "-m", "rnnfast", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert "Traceback" not in r.stderr, r.stderr
    if ok:
        assert r.returncode == 0, (r.stdout, r.stderr)
    return r


def fails(*args, match):
    r = rnnfast(*args, ok=False)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert re.search(match, r.stderr), r.stderr
    return r


@pytest.fixture(scope="module")
def gru_file(tmp_path_factory):
    """A 2-layer bidirectional nn.GRU saved by torch.save(state_dict)."""
    torch.manual_seed(0)
    m = torch.nn.GRU(5, 7, num_layers=2, bidirectional=True).eval()
    path = tmp_path_factory.mktemp("torch") / "gru.pt"
    torch.save(m.state_dict(), path)
    return m, path


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    """A small Keras 3 model (LSTM -> GRU -> Dense) saved as .keras."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [
            keras.Input((6, 4)),
            keras.layers.LSTM(9, return_sequences=True, name="lstm"),
            keras.layers.GRU(5, name="gru"),
            keras.layers.Dense(3, activation="tanh", name="dense"),
        ],
        name="tiny",
    )  # named: Keras numbers unnamed layers per process (lstm_1, ...)
    path = tmp_path_factory.mktemp("keras") / "tiny.keras"
    m.save(path)
    return m, path


def x_keras(n=11):
    return np.random.default_rng(1).standard_normal((n, 6, 4)).astype(np.float32)


# -- info ------------------------------------------------------------------------------------


def test_info_keras_file_counts_like_keras(keras_file):
    m, path = keras_file
    out = rnnfast("info", path).stdout
    assert "Keras .keras archive" in out and "'tiny'" in out
    assert f"total parameters: {m.count_params():,}" in out
    for layer in m.layers:
        row = next(ln for ln in out.splitlines() if ln.startswith(layer.name + " "))
        assert f"{layer.count_params():,}" in row and "float32" in row
    assert re.search(r"^lstm\s+LSTM\s+9\s+return_sequences", out, re.M), out


def test_info_torch_file_counts_like_torch(gru_file):
    m, path = gru_file
    out = rnnfast("info", path).stdout
    assert "GRU(5, 7, num_layers=2, bidirectional=True)" in out and "PyTorch" in out
    assert f"total parameters: {sum(p.numel() for p in m.parameters()):,}" in out


def test_info_bundled_models():
    assert "Bidirectional(GRU)" in rnnfast("info", KERAS_FILE).stdout
    assert "LSTM(8, 32, num_layers=2, bidirectional=True)" in rnnfast("info", TORCH_FILE).stdout


# -- predict ----------------------------------------------------------------------------------


def test_predict_keras_npy_csv_npz(keras_file, tmp_path):
    m, path = keras_file
    x = x_keras()
    want = m.predict(x, verbose=0)
    np.save(tmp_path / "x.npy", x)
    r = rnnfast("predict", path, tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    assert "y.npy" in r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, **F32)

    # CSV: one sample per row, (time x features) flattened, with a header row
    np.savetxt(
        tmp_path / "x.csv",
        x.reshape(len(x), -1),
        delimiter=",",
        fmt="%.9g",
        header=",".join("c%d" % i for i in range(24)),
        comments="",
    )
    rnnfast("predict", path, tmp_path / "x.csv", "-o", tmp_path / "y.csv", "--batch-size", "4", "-q")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "y.csv", delimiter=",", ndmin=2), want, **F32)

    np.savez(tmp_path / "in.npz", a=x, b=x[:2])
    rnnfast("predict", path, tmp_path / "in.npz", "--key", "a", "-o", tmp_path / "y.npz", "--threads", "1")
    with np.load(tmp_path / "y.npz") as f:
        np.testing.assert_allclose(f["output"], want, **F32)


def test_predict_torch_outputs_and_layouts(gru_file, tmp_path):
    m, path = gru_file
    xb = np.random.default_rng(2).standard_normal((6, 9, 5)).astype(np.float32)  # (batch, time, F)
    with torch.no_grad():
        out, h_n = m(torch.from_numpy(xb.swapaxes(0, 1).copy()))
    np.save(tmp_path / "x.npy", xb)
    rnnfast(
        "predict",
        path,
        tmp_path / "x.npy",
        "-o",
        tmp_path / "y.npz",
        "--batch-size",
        "4",
        "--progress",
        "--batch-first",
    )
    with np.load(tmp_path / "y.npz") as f:
        np.testing.assert_allclose(f["out"], out.numpy().swapaxes(0, 1), **F32)
        np.testing.assert_allclose(f["h_n"], h_n.numpy(), **F32)
    np.save(tmp_path / "xt.npy", xb.swapaxes(0, 1))
    rnnfast("predict", path, tmp_path / "xt.npy", "--time-major", "-o", tmp_path / "yt.npy")
    np.testing.assert_allclose(np.load(tmp_path / "yt.npy"), out.numpy(), **F32)
    rnnfast("predict", path, tmp_path / "xt.npy", "-o", tmp_path / "yd.npy")  # the default: torch.nn's
    np.testing.assert_allclose(np.load(tmp_path / "yd.npy"), out.numpy(), **F32)


def test_predict_torch_lengths(gru_file, tmp_path):
    m, path = gru_file
    xb = np.random.default_rng(3).standard_normal((5, 8, 5)).astype(np.float32)
    lengths = np.array([8, 3, 5, 1, 7])
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(xb), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
        )
        mb = torch.nn.GRU(5, 7, num_layers=2, bidirectional=True, batch_first=True)
        mb.load_state_dict(m.state_dict())
        po, h_n = mb(packed)
        out = torch.nn.utils.rnn.pad_packed_sequence(po, batch_first=True, total_length=8)[0]
    np.savez(tmp_path / "in.npz", x=xb, n=lengths)
    rnnfast(
        "predict",
        path,
        tmp_path / "in.npz",
        "--key",
        "x",
        "--lengths",
        "n",
        "-o",
        tmp_path / "y.npz",
        "--batch-size",
        "2",
        "--batch-first",
    )
    with np.load(tmp_path / "y.npz") as f:
        np.testing.assert_allclose(f["out"], out.numpy(), **F32)
        np.testing.assert_allclose(f["h_n"], h_n.numpy(), **F32)


def test_predict_bundled_keras_model_from_csv(tmp_path):
    with np.load(TEST_FILE) as f:
        x, want = f["x"][:20], f["keras_proba"][:20]
    np.savetxt(tmp_path / "x.csv", x.reshape(20, 64), delimiter=",", fmt="%.9g")
    rnnfast("predict", KERAS_FILE, tmp_path / "x.csv", "-o", tmp_path / "p.npy")
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, **F32)


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_gives_messages_and_status_1(keras_file, gru_file, tmp_path):
    """By subprocess: status 1, the message on stderr, no traceback."""
    _, kpath = keras_file
    _, tpath = gru_file
    fails("info", tmp_path / "missing.pt", match=r"no such file: .*missing\.pt")
    (tmp_path / "notes.txt").write_text("hello\n")
    fails("info", tmp_path / "notes.txt", match="not a model file rnnfast knows")
    np.save(tmp_path / "bad.npy", np.zeros((3, 6, 5), np.float32))  # wrong input shape
    fails("predict", kpath, tmp_path / "bad.npy", "-o", tmp_path / "y.npy", match="expected input of shape")
    r = rnnfast("predict", kpath, ok=False)  # argparse's usage error
    assert r.returncode == 2 and "required" in r.stderr


def main_fails(capsys, *args, match):
    """In-process (quicker): main() returns 1 and prints the message."""
    from rnnfast.cli import main

    assert main([str(a) for a in args]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert err.count("\n") == 1, err  # one line, no traceback


def test_bad_input_messages(keras_file, gru_file, tmp_path, capsys):
    _, kpath = keras_file
    _, tpath = gru_file
    np.save(tmp_path / "x.npy", x_keras())
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    main_fails(capsys, "info", tmp_path / "other.npz", match="neither a Keras .keras file .* nor a PyTorch file")
    main_fails(capsys, "info", tmp_path, match="is a directory")
    main_fails(capsys, "info", kpath, "--prefix", "rnn.", match="--prefix is for PyTorch files")
    main_fails(
        capsys, "predict", tpath, tmp_path / "x.npy", "-o", tmp_path / "y.npy", match="expected 5 input features"
    )
    y = tmp_path / "y.npy"
    main_fails(capsys, "predict", kpath, tmp_path / "missing.npy", "-o", y, match="no such file")
    main_fails(capsys, "predict", kpath, tmp_path / "x.npy", "-o", tmp_path / "y.txt", match=r"\.npy, \.npz or \.csv")
    main_fails(capsys, "predict", kpath, tmp_path / "x.npy", "-o", tmp_path / "nodir" / "y.npy", match="no such folder")
    np.savez(tmp_path / "two.npz", a=x_keras(), b=x_keras())
    main_fails(capsys, "predict", kpath, tmp_path / "two.npz", "-o", tmp_path / "y.npy", match="holds 2 arrays .*--key")
    main_fails(
        capsys, "predict", kpath, tmp_path / "two.npz", "--key", "c", "-o", tmp_path / "y.npy", match="no array 'c'"
    )
    (tmp_path / "x.csv").write_text("1,2,3\n4,5,6\n")
    main_fails(capsys, "predict", kpath, tmp_path / "x.csv", "-o", y, match="rows of 3 values")
    (tmp_path / "words.csv").write_text("a,b\nc,d\n")
    main_fails(
        capsys, "predict", kpath, tmp_path / "words.csv", "-o", tmp_path / "y.npy", match="not a CSV table of numbers"
    )
    main_fails(
        capsys,
        "predict",
        kpath,
        tmp_path / "x.npy",
        "-o",
        tmp_path / "y.npy",
        "--batch-size",
        "0",
        match="--batch-size must be at least 1",
    )
    main_fails(
        capsys,
        "predict",
        kpath,
        tmp_path / "x.npy",
        "-o",
        tmp_path / "y.npy",
        "--lengths",
        "n",
        match="--lengths is for PyTorch models",
    )
    main_fails(capsys, "bench", tpath, "--vs", "tensorflow", match="unknown peer tensorflow")
    main_fails(capsys, "bench", kpath, "--time", "0", match="--time must be at least 1")


def test_help_texts_teach(capsys):
    from rnnfast.cli import main

    for cmd in ("info", "predict", "bench", "demo"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and "rnnfast %s" % cmd in out
    out = rnnfast("--help").stdout  # the console entry point itself
    assert all(c in out for c in ("info", "predict", "bench", "demo", "examples:"))


# -- bench ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_torch_file_against_torch(gru_file, tmp_path):
    _, path = gru_file
    r = rnnfast(
        "bench",
        path,
        "--batch",
        "3",
        "--time",
        "20",
        "--threads",
        "1",
        "--repeats",
        "3",
        "--vs",
        "torch,onnxruntime,keras",
        "--plot",
        tmp_path / "b.png",
    )
    out = r.stdout
    rows = {ln.split()[0]: ln for ln in out.splitlines() if re.match(r"^(rnnfast|torch) ", ln)}
    assert set(rows) == {"rnnfast", "torch"}, out
    diff = float(rows["torch"].split()[-1])
    assert diff < 1e-5  # the torch peer runs the same weights
    assert re.search(r"\d+\.\d\dx (faster|slower)", rows["torch"])
    assert "skipped keras: runs Keras models" in out
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        assert "skipped onnxruntime:" in out and "not installed" in out
    else:
        assert "onnxruntime" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out
    else:
        assert (tmp_path / "b.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_keras_file_against_keras(keras_file):
    m, path = keras_file
    out = rnnfast("bench", path, "--batch", "2", "--time", "6", "--repeats", "2", "--vs", "keras,torch").stdout
    row = next(ln for ln in out.splitlines() if ln.startswith("keras "))
    assert float(row.split()[-1]) < 1e-5
    assert "skipped torch: runs PyTorch models" in out
    assert "input (2, 6, 4) float32" in out
