"""A bounded fuzzing run of every loader (``make fuzz`` runs the long one).

Each format gets a few seconds of hypothesis-driven mutations of the seed corpus
(tests/fuzz/corpus/), loaded in a worker process under an address-space limit and a
per-case timeout: every case must load (and run) or raise FormatError /
UnsupportedLayerError. The seeds are fixed, so a run draws the same cases each time
(how many depends on the machine's speed). See tests/fuzz/README.md.
"""

import os
import time

import pytest

from fuzz.driver import fuzz_format
from fuzz.mutators import FORMATS, seeds
from fuzz.runner import Worker

#: Seconds of fuzzing per format in `make test` (the whole file stays about a minute).
SMOKE_SECONDS = float(os.environ.get("RNNFAST_FUZZ_SMOKE_SECONDS", 7))
#: ... and at least this many cases per format, however long they take (a busy machine
#: ran 9 of the torch zip format's in 7 s).
SMOKE_CASES = 30


@pytest.fixture(scope="module")
def worker():
    with Worker(timeout=5.0) as w:
        yield w


def test_seed_corpus_loads(worker):
    """Every seed is a valid file of its format: the mutations start from models."""
    for fmt in FORMATS:
        assert len(seeds(fmt)) >= 2, fmt
        for path in seeds(fmt):
            with open(path, "rb") as f:
                data = f.read()
            assert len(data) < 100_000, path
            out = worker.run(data)
            assert out.kind == "loaded" and out.ran, (path, out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_smoke(fmt, worker, tmp_path):
    report = fuzz_format(
        fmt,
        worker,
        seconds=SMOKE_SECONDS,
        min_examples=SMOKE_CASES,
        seed=2024,
        out_dir=str(tmp_path),
        hdf5_bytes=False,
    )
    print(report)
    assert not report.findings, "\n\n".join("%s (%s)\n%s" % (k, p, d) for k, d, p in report.findings)
    assert not report.upstream, report.upstream
    # the harness really ran: a fair number of cases, with both outcomes
    assert report.executions >= SMOKE_CASES, report
    assert report.counts["FormatError"] > 0 and report.counts["loaded"] > 0, report


@pytest.mark.parametrize(
    "what,kind",
    [("segv", "crash"), ("hang", "hang"), ("alloc", "error"), ("raise", "error"), ("marker", "code-execution")],
)
def test_runner_notices_failures(what, kind):
    """The runner reports a crash, a hang, an outsized allocation, another exception
    type and a marker file, and keeps going after each."""
    from fuzz.mutators import MARKER

    os.environ["RNNFAST_FUZZ_SELFTEST"] = "1"
    try:
        with Worker(timeout=3.0) as w:
            t0 = time.monotonic()
            out = w.run(b"SELFTEST:" + what.encode())
            if os.path.exists(os.path.join(w._dir.name, MARKER)):
                out.kind = "code-execution"
            assert out.kind == kind, out
            assert not out.ok
            if what == "alloc":
                assert "MemoryError" in out.detail
            if what == "segv":
                assert "SIGSEGV" in out.detail and "Fatal Python error" in out.detail
            assert time.monotonic() - t0 < 60
            with open(seeds("safetensors")[0], "rb") as f:
                assert w.run(f.read()).kind == "loaded"  # a fresh worker after a crash
    finally:
        del os.environ["RNNFAST_FUZZ_SELFTEST"]


FINDINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz", "findings")


def test_fixed_findings(worker):
    """Every file the fuzzer once broke the contract with (tests/fuzz/findings/) is now
    refused, within the worker's timeout and memory limit."""
    paths = sorted(os.path.join(FINDINGS, f) for f in os.listdir(FINDINGS) if f.endswith(".bin"))
    assert len(paths) >= 3
    for path in paths:
        with open(path, "rb") as f:
            out = worker.run(f.read())
        assert out.kind == "FormatError", (path, out)


def _onnx_add(x_shape, c_shape):
    """An ONNX model y = x + c: input x of ``x_shape`` (ints or symbols), constant c of ones."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    c = numpy_helper.from_array(np.ones(c_shape, np.float32), "c")
    g = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "add", [x], [y], [c])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_model_that_fits_one_guess_of_its_symbolic_sizes_runs_on_that_guess(worker):
    """An ONNX model whose load-time run fitted only the second guess of its symbolic
    sizes (1, not PROBE_STEPS) runs in the worker on the feed that fitted: a ValueError
    on the other guess is the documented error of a wrong input shape, not a finding
    (two tf2onnx mutants of a 15-minute `make fuzz`, session 20). One whose declared
    input is too large for a load-time run is not run there, as before (23 mutants of a
    first version of this that built its feed anyway)."""
    out = worker.run(_onnx_add(["a", "b"], (1, 2)))  # broadcasts with b = 1 only
    assert out.kind == "loaded" and out.ran, out
    out = worker.run(_onnx_add([2**62, "b"], (1,)))
    assert out.kind == "loaded" and not out.ran, out
