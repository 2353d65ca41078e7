"""`rnnfast bench` times every peer the way its users run inference fast, on rnnfast's
thread count, and says which mode each ran in; `rnnfast example` / `--example` give the
bundled files wherever rnnfast is installed.

The peers tested are the ones `make test` installs: PyTorch, and Keras on the torch
backend (TensorFlow's predict_on_batch / XLA rows are exercised where TensorFlow is
installed, in bench/'s own environment)."""

import os
import re
import subprocess
import sys

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras
import torch

import rnnfast
from rnnfast import _bench, demo
from rnnfast.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]


@pytest.fixture
def torch_threads():
    """bench sets torch's thread count as it sets rnnfast's; put it back after."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def bench_lines(model, path, **kw):
    lines = []
    rows = _bench.run_bench(model, path, out=lines.append, repeats=2, **kw)
    return rows, "\n".join(lines)


def test_torch_peer_runs_no_grad_on_rnnfasts_threads(torch_threads):
    path = demo.example("digits_lstm")
    model = rnnfast.load(path, batch_first=True)
    rows, out = bench_lines(model, path, batch=3, time_steps=8, threads=1, peers=["torch"])
    assert [r["engine"] for r in rows] == ["rnnfast", "torch %s no_grad" % torch.__version__.split("+")[0]]
    assert rows[1]["max_abs_diff"] < 1e-5
    assert "how each engine ran" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  torch "))
    assert "torch.no_grad()" in line and "torch.set_num_threads(1)" in line, out
    assert torch.get_num_threads() == 1
    assert re.search(r"^  rnnfast: .*num_threads=1", out, re.M), out


def test_keras_peer_on_torch_backend_says_how_it_ran(torch_threads):
    assert keras.backend.backend() == "torch"
    path = demo.example("digits_bigru")
    model = rnnfast.load(path)
    rows, out = bench_lines(model, path, batch=2, threads=2, peers=["keras"])
    assert len(rows) == 2
    name = rows[1]["engine"]
    assert name == "keras %s (torch) no_grad" % keras.__version__
    assert rows[1]["max_abs_diff"] < 1e-5
    line = next(ln for ln in out.splitlines() if ln.startswith("  keras "))
    assert "model(x, training=False) under torch.no_grad()" in line, out
    assert "no compiled inference call" in line and "torch.set_num_threads(2)" in line, out
    assert torch.get_num_threads() == 2


def test_every_mode_is_documented():
    """The modes the table can name are the ones the --help epilog and the README explain."""
    from rnnfast.cli import EPILOG_BENCH

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for phrase in (
        "torch.no_grad()",
        "predict_on_batch",
        "jit_compile=True",
        "intra_op_num_threads",
        "torch.set_num_threads",
    ):
        assert phrase in EPILOG_BENCH and phrase in text, phrase
    assert set(_bench.MODES) == {"rnnfast", "no_grad", "session", "keras-torch", "predict_on_batch", "xla"}


def test_bench_help_epilog(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "how each peer is timed" in out and "predict_on_batch" in out and "--example" in out


def test_example_paths_and_command(capsys):
    paths = rnnfast.examples()
    assert set(paths) == set(demo.EXAMPLES)
    for name, path in paths.items():
        assert os.path.isfile(path) and os.path.isabs(path), name
        assert rnnfast.example(name) == path == rnnfast.example(os.path.basename(path))
    with pytest.raises(ValueError, match="no bundled example 'nope'; the examples are digits_bigru"):
        rnnfast.example("nope")
    assert main(["example", "digits_lstm"]) == 0
    assert capsys.readouterr().out == paths["digits_lstm"] + "\n"
    assert main(["example"]) == 0
    listed = capsys.readouterr().out
    assert all(p in listed for p in paths.values()), listed


def test_info_and_bench_take_example(capsys, torch_threads):
    assert main(["info", "--example", "digits_bigru"]) == 0
    assert "total parameters: 16,266" in capsys.readouterr().out
    assert main(["info", "--example", "digits_lstm"]) == 0  # trained batch-first: said so
    assert "LSTM(8, 32, num_layers=2, batch_first=True, bidirectional=True)" in capsys.readouterr().out
    assert (
        main(["bench", "--example", "digits_lstm", "--batch", "2", "--threads", "1", "--repeats", "2", "--vs", "torch"])
        == 0
    )
    assert "no_grad" in capsys.readouterr().out
    assert main(["info", demo.example("digits_bigru"), "--example", "digits_bigru"]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["info"]) == 1
    assert "--example NAME" in capsys.readouterr().err


def test_help_of_load_cites_no_missing_file():
    assert "API.md" not in rnnfast.load.__doc__
    assert "batch_first" in rnnfast.load.__doc__


# -- the disclosure line; bench/compare.py --model ---------------------------------------

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def expected_disclosure_parts():
    """What the disclosure line must name, read here independently of rnnfast._bench."""
    from threadpoolctl import threadpool_info

    from rnnfast import _kernels

    with open("/proc/cpuinfo") as f:
        cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return cpu, _kernels.isa(), blas


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the CPU model from /proc/cpuinfo")
def test_bench_table_ends_with_the_disclosure_line(torch_threads):
    path = demo.example("digits_lstm")
    model = rnnfast.load(path, batch_first=True)
    _, out = bench_lines(model, path, batch=2, time_steps=8, threads=1, peers=["torch"])
    cpu, isa, blas = expected_disclosure_parts()
    (line,) = [ln for ln in out.splitlines() if ln.startswith("machine: ")]
    # right under the table: the line after the last engine row
    lines = out.splitlines()
    assert lines[lines.index(line) - 1].startswith("torch "), out
    assert "machine: %s, %d logical CPUs;" % (cpu, os.cpu_count()) in line
    assert "rnnfast kernels: %s;" % isa in line
    assert any("%s %s" % (b["internal_api"], b["version"]) in line for b in blas), (line, blas)
    assert re.search(r"load average \d+\.\d\d \d+\.\d\d \d+\.\d\d$", line), line


def test_disclosure_names_a_forced_isa():
    # in a fresh process (the ISA is chosen when the core loads)
    if _bench.load_kernels().best_isa() == "baseline":
        pytest.skip("this CPU has only the baseline kernels")
    code = "from rnnfast._bench import disclosure; print(disclosure())"
    env = dict(os.environ, RNNFAST_ISA="baseline")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "rnnfast kernels: baseline (RNNFAST_ISA; the CPU has %s)" % _bench.load_kernels().best_isa() in out.stdout


def test_compare_model_benches_the_users_file(tmp_path, torch_threads):
    # bench/compare.py --model: the user's own file against the peers that run it, per thread count
    path = demo.example("digits_lstm")
    env = dict(os.environ, KERAS_BACKEND="torch")
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "compare.py"), "--quick", "--model", path, "--threads", "1,2"]
        + ["--batch", "2", "--time", "8", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    for t in (1, 2):
        assert "=== rnnfast bench %s --threads %d --batch 2 --time 8 --repeats 5" % (path, t) in text, text
        assert "input (2, 8, 8) float32, %d thread" % t in text, text
    assert len(re.findall(r"^torch \S+ no_grad ", text, re.M)) == 2, text
    assert len(re.findall(r"^machine: ", text, re.M)) == 2, text


def test_compare_batch_without_model_is_refused():
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "compare.py"), "--batch", "2"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--batch and --time go with --model" in out.stderr


# compare.py's export: the TorchScript-based exporter says it is deprecated, the tracer warns
@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning", "ignore:Exporting a model to ONNX:UserWarning"
)
def test_compare_exports_each_onnx_file_in_a_worker_that_loads_nothing(tmp_path, monkeypatch, torch_threads):
    # compare.py's ONNX columns time each engine's loads of the same file: the file is written
    # first, by the onnx-export worker, so that no engine loads it in the process that exported
    # it (ONNX Runtime's worker did, at the first thread count: session 11's TextClassifier
    # file 4.9 ms after its own export, 9.7 ms without)
    import numpy as np

    monkeypatch.syspath_prepend(BENCH_DIR)
    import compare

    monkeypatch.setattr(compare, "GAP_S", 0.0)
    asked = []

    class Worker:  # an EngineProcess's commands, answered here
        def __init__(self, name):
            self.name = name

        def ensure(self):
            pass

        def ask(self, cmd, timeout, **kw):
            asked.append((self.name, cmd))
            if cmd == "build":
                path = str(tmp_path / ("%s.npy" % self.name))
                np.save(path, np.zeros(3))
                return dict(output=path, first_s=1e-3, load_s=2e-3)
            return dict(times=[1e-3] * kw["k"]) if cmd == "time" else {}

    case = compare.grid_cases(True)[0]
    procs = {e: Worker(e) for e in ("onnxruntime", "rnnfast-onnx")}
    row = compare.run_case(case, 1, procs, 0.003, Worker("onnx-export"))
    assert asked[:3] == [("onnx-export", "export"), ("onnxruntime", "build"), ("rnnfast-onnx", "build")]
    assert sum(cmd == "export" for _, cmd in asked) == 1
    assert row["load_s"] == {"onnxruntime": 2e-3, "rnnfast-onnx": 2e-3} and not row["notes"]
    # the exporter's command writes the case's file, which the engines then find written
    eng = compare.ENGINE_CLASSES["onnx-export"](1, str(tmp_path))
    path = eng.cmd_export(case)["output"]
    assert path == str(tmp_path / ("%s.onnx" % compare.case_key(case)))
    assert rnnfast.load(path).run(None, compare.case_inputs(case))[0].shape == (case["B"], 1)
