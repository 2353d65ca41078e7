"""The process that loads fuzzed files: one case at a time, isolated from the fuzzer.

Started by :class:`fuzz.runner.Worker` (``python tests/fuzz/worker.py``) with an
address-space limit (``RLIMIT_AS``): a load that tries to allocate far more than the
file could justify dies with ``MemoryError`` instead of exhausting the machine, and
shows up as a finding. The protocol is one line per case on stdin (the path of the
file to load) and one JSON line per case on stdout::

    {"outcome": "loaded" | "FormatError" | "UnsupportedLayerError" | "error",
     "error": "<type>: <message>", "traceback": "...", "ran": bool, "seconds": float}

Each case is first read with ``rnnfast.read_tensors`` (every tensor of a PyTorch or
safetensors file), which must give arrays or a FormatError (else ``error`` with
``stage: read_tensors``). ``loaded`` models are also run once on a small input (finite values and the model's
input size), which must not fail either (``error`` with ``stage: run``). Segfaults
print a traceback (faulthandler) to stderr, which the runner keeps.
"""

import faulthandler
import json
import os
import resource
import sys
import time
import traceback


def _limit_memory():
    mb = int(os.environ.get("RNNFAST_FUZZ_AS_MB", "0"))
    if mb:
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash dies at once, without a core file


def _run_model(rnnfast, np, model):
    if isinstance(model, rnnfast.OnnxModel):  # the inputs its load-time run used
        if not model._shape_cache:
            return False  # inputs too large for the load-time run (or none declared): not run here either
        # (symbolic dimensions: the guess that fitted, PROBE_STEPS or 1, as _probe tries
        # them; a model that fits only one of them gives ValueError on the other, the
        # documented error for a wrong input shape)
        for steps in (rnnfast.model_onnx.PROBE_STEPS, 1):
            feed = model._example_feed(steps)
            if model._shape_key([feed[n] for n in model.input_names]) in model._shape_cache:
                model.run(None, feed)
                return True
        return False  # neither guess fitted: not run here either
    if isinstance(model, rnnfast.TorchRNN):
        x = np.linspace(-1, 1, 3 * 2 * model.input_size).reshape(3, 2, model.input_size)
        out = model(x)
        if out[0].shape[:2] != (3, 2):
            raise AssertionError("output shape %s for input %s" % (out[0].shape, x.shape))
        return True
    shape = list(model.input_shape)
    shape[0] = 2
    if len(shape) >= 2 and shape[1] is None:
        shape[1] = 3
    if len(shape) == 3 and shape[2] is None:  # features not declared: the first RNN tells
        first = model.layers[0] if model.layers else None
        rnn = getattr(first, "rnn_layers", None)
        if not rnn:
            return False
        shape[2] = rnn[0].input_size
    if len(shape) == 2:
        x = np.ones(shape, np.int64)
    else:
        x = np.linspace(-1, 1, int(np.prod(shape))).reshape(shape)
    model.predict(x)
    return True


def _selftest(path, np):
    """With RNNFAST_FUZZ_SELFTEST=1, a file starting ``SELFTEST:<what>`` misbehaves on
    purpose, so that the tests can check that the runner notices each failure."""
    with open(path, "rb") as f:
        head = f.read(32)
    if not head.startswith(b"SELFTEST:"):
        return
    what = head[9:].strip().decode()
    if what == "segv":
        import ctypes

        ctypes.string_at(0)
    elif what == "hang":
        while True:
            time.sleep(0.01)
    elif what == "alloc":
        np.ones(1 << 31)  # 16 GB: beyond the worker's address space
    elif what == "marker":
        open("PWNED", "w").close()
    elif what == "raise":
        raise KeyError("selftest")
    elif what == "outside":  # what loading a file that names outside/... would do
        import h5py

        h5py.File("outside/donor.h5", "r").close()


def main():
    faulthandler.enable(file=sys.stderr)
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing else may write to the reply stream
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np

    import rnnfast
    import rnnfast.io.keras_file
    import rnnfast.io.onnx
    import rnnfast.io.torch_file  # (the loaders load on first use: here, not in the first case)
    import rnnfast.model_onnx

    try:  # the ONNX loader's parser, imported once here rather than inside the first case's timeout
        import onnx  # noqa: F401
    except ImportError:
        pass

    rnnfast.set_num_threads(1)
    selftest = os.environ.get("RNNFAST_FUZZ_SELFTEST") == "1"
    _limit_memory()
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        path = line.rstrip("\n")
        if not path:
            continue
        t0 = time.perf_counter()
        res = {"outcome": "loaded", "ran": False}
        stage = "load"
        try:
            if selftest:
                _selftest(path, np)
            stage = "read_tensors"  # every tensor of the file: arrays, or a FormatError
            try:
                rnnfast.read_tensors(path)
            except rnnfast.FormatError:
                pass
            stage = "load"
            model = rnnfast.load(path)
            stage = "run"
            res["ran"] = _run_model(rnnfast, np, model)
        except rnnfast.FormatError as e:
            res["outcome"] = "FormatError" if stage == "load" else "error"
            res["error"] = str(e)[:300]
        except rnnfast.UnsupportedLayerError as e:
            res["outcome"] = "UnsupportedLayerError" if stage == "load" else "error"
            res["error"] = str(e)[:300]
        except BaseException as e:
            res["outcome"] = "error"
            res["error"] = "%s: %s" % (type(e).__name__, str(e)[:300])
            res["traceback"] = traceback.format_exc()[-3000:]
        if res["outcome"] == "error" or stage == "run":
            res["stage"] = stage
        model = None
        res["seconds"] = time.perf_counter() - t0
        reply.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
