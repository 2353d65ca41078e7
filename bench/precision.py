"""Reduced precision, measured: rnnfast float32 / bf16 / int8 side by side with the
reduced-precision peers on the same weights -- ONNX Runtime's dynamically quantized
LSTM (onnxruntime.quantization.quantize_dynamic: DynamicQuantizeLSTM; it has no int8
GRU), PyTorch's ``torch.ao.quantization.quantize_dynamic`` (int8 LSTM and GRU) and
OpenVINO in bf16 (``INFERENCE_PRECISION_HINT=bf16``) -- with each one's error: the
largest absolute difference from PyTorch's float32 output on the same input. ``rnnfast
int8 (ORT file)``: rnnfast running ONNX Runtime's quantized file itself (its
DynamicQuantizeLSTM on the node's int8 weights).

Grid: GRU and LSTM (one layer, input size = H), H in {128, 512, 1024}, B in {1, 64},
T = 100 (and T = 1000 at B = 1 with ``--long``), on the thread counts
given. One run per thread count is cleanest (``--threads 1`` then ``--threads
2``); every engine gets that many threads.

Each column runs in a worker process of its own (bench/compare.py's ``EngineProcess``
and ``worker_main``; a fresh set per thread count): in one process the peers' thread
pools and memory beside rnnfast made it read 20-30% slower (bench/README.md, session 13).
Per case a worker of its own exports the ONNX file (and ONNX Runtime's quantized copy),
then each worker builds the seeded layer and input (the parent checks that every worker's
weights and input hash alike) and runs it once; the errors are computed in the parent
against the ``torch float32`` worker's output. Then the turns: compare.timed_rounds (each
column in turn runs about 45 ms of calls, a pause, the order rotating every round, until
each has spent ``--budget`` seconds); medians of all calls. This machine is shared, so read
the ratios. OpenVINO's column says in the row's notes the precision it really ran (f32
where the CPU has no bf16 instructions).

Run it in the peers' environment with this checkout first on the path:

    PYTHONPATH=src /work/main/.venv-bench/bin/python bench/precision.py --threads 1 --json p1.json

Prints one table per thread count (milliseconds per call, speed-up over rnnfast
float32, max |error|) and writes JSON with ``--json``.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # bench/'s own module: the worker processes and their turns

import rnnfast

from _common import interleaved


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class OutOnly:
    """nn.LSTM / nn.GRU returning only its output sequence (for the ONNX export)."""

    def __new__(cls, torch, net):
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net(x)[0]

        return M().eval()


#: The table's columns, in order (each a worker process).
COLUMNS = (
    "rnnfast float32",
    "rnnfast bf16",
    "rnnfast int8",
    "torch float32",
    "onnxruntime float32",
    "torch int8",
    "onnxruntime int8",
    "rnnfast int8 (ORT file)",
    "openvino bf16",
)


# -- the engines, one worker process each (bench/compare.py's workers) ---------------------


def case_net(torch, case):
    """The case's PyTorch layer and input, seeded: the same in every worker."""
    cell, H, B, T = case["cell"], case["H"], case["B"], case["T"]
    torch.manual_seed(H * 7 + B)
    net = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H).eval()
    x = np.random.default_rng(H + B + T).standard_normal((T, B, H)).astype(np.float32)
    return net, x


def case_paths(case, tmp):
    """The case's ONNX export and ONNX Runtime's dynamically quantized copy of it."""
    path = os.path.join(tmp, "%s_%d_%d_%d.onnx" % (case["cell"], case["H"], case["B"], case["T"]))
    return path, path.replace(".onnx", "_q.onnx")


class Column(compare.Engine):
    """One column of the table in its worker process: ``build(case, net, x)`` returns a
    callable giving the output sequence. The parent's commands are compare.Engine's
    (``time``) and ``build``, which also returns a digest of the weights and input, for
    the parent to check that every worker runs the same ones."""

    needs = ("torch",)
    lstm_only = False

    def setup(self):
        super().setup()  # torch's threads
        return dict(version=self.version())

    def version(self):
        import torch

        return torch.__version__

    def cmd_build(self, case):
        import torch

        self.fn = None  # free the last case's model first
        net, x = case_net(torch, case)
        digest = hashlib.sha1(x.tobytes())
        for v in net.state_dict().values():
            digest.update(v.numpy().tobytes())
        fn = self.build(case, net, x)
        t0 = time.perf_counter()
        y = np.asarray(fn())
        first_s = time.perf_counter() - t0
        path = os.path.join(self.tmp, "%s-%d.npy" % (self.name.split()[0], os.getpid()))
        np.save(path, y)
        self.fn = fn
        return dict(output=path, first_s=first_s, digest=digest.hexdigest(), note=getattr(self, "note", None))


class RnnfastColumn(Column):
    needs = ("rnnfast", "torch")
    precision = None

    def version(self):
        return rnnfast.__version__

    def setup(self):
        info = super().setup()
        rnnfast.set_num_threads(self.threads)
        return info

    def build(self, case, net, x):
        m = rnnfast.from_torch(net, precision=self.precision)
        return lambda: m(x, num_threads=self.threads)[0]


class RnnfastFloat32(RnnfastColumn):
    name, precision = "rnnfast float32", "float32"


class RnnfastBf16(RnnfastColumn):
    name, precision = "rnnfast bf16", "bf16"


class RnnfastInt8(RnnfastColumn):
    name, precision = "rnnfast int8", "int8"


class TorchFloat32(Column):
    name = "torch float32"

    def build(self, case, net, x):
        import torch

        return self.run(torch, OutOnly(torch, net), torch.from_numpy(x))

    @staticmethod
    def run(torch, m, xt):
        def call():
            with torch.no_grad():
                return m(xt).numpy()

        return call


class TorchInt8(TorchFloat32):
    name = "torch int8"

    def build(self, case, net, x):
        import torch

        # quantize_dynamic swaps child modules only: the RNN goes in a wrapper
        qnet = torch.ao.quantization.quantize_dynamic(OutOnly(torch, net), {torch.nn.LSTM, torch.nn.GRU},
                                                      dtype=torch.qint8)  # fmt: skip
        assert "quantized" in type(qnet.net).__module__, type(qnet.net)
        return self.run(torch, qnet, torch.from_numpy(x))


class OnnxruntimeFloat32(Column):
    name = "onnxruntime float32"
    needs = ("onnxruntime", "onnx", "torch")
    file = 0  # case_paths' index: the float32 export

    def version(self):
        import onnxruntime

        return onnxruntime.__version__

    def build(self, case, net, x):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(case_paths(case, self.tmp)[self.file], so, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, {"x": x})[0]


class OnnxruntimeInt8(OnnxruntimeFloat32):
    """DynamicQuantizeLSTM (ONNX Runtime quantizes LSTM only: no DynamicQuantizeGRU)."""

    name, file, lstm_only = "onnxruntime int8", 1, True


class RnnfastOrtFile(RnnfastColumn):
    """The same quantized file in rnnfast: DynamicQuantizeLSTM on ONNX Runtime's int8 weights."""

    name, lstm_only = "rnnfast int8 (ORT file)", True
    needs = ("rnnfast", "onnx", "torch")

    def build(self, case, net, x):
        qmodel = rnnfast.load(case_paths(case, self.tmp)[1])

        def call():
            y = qmodel(x, num_threads=self.threads)
            return y[0] if isinstance(y, (list, tuple)) else y

        return call


class OpenvinoBf16(Column):
    name = "openvino bf16"
    needs = ("openvino", "onnx", "torch")

    def version(self):
        import openvino

        return openvino.__version__

    def build(self, case, net, x):
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(case_paths(case, self.tmp)[0]),
            "CPU",
            {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"},
        )
        # what it runs in: without bf16 instructions (no AVX512_BF16 / AMX) OpenVINO runs f32
        p = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.note = "inference precision %s" % getattr(p, "to_string", lambda: p)()
        req = compiled.create_infer_request()
        return lambda: req.infer({0: x})[0]


class Export(Column):
    """Writes a case's ONNX export (and for LSTM ONNX Runtime's quantized copy) before any
    engine builds it, in a process of its own (as compare.py's ``onnx-export``)."""

    name = "onnx-export"
    needs = ("onnx", "torch")

    def cmd_export(self, case):
        import torch

        path, qpath = case_paths(case, self.tmp)
        if not os.path.exists(path):  # (written at the first thread count)
            net, x = case_net(torch, case)
            torch.onnx.export(OutOnly(torch, net), (torch.from_numpy(x),), path + ".part", input_names=["x"],
                              output_names=["y"], opset_version=17, dynamo=False)  # fmt: skip
            os.replace(path + ".part", path)
        if case["cell"] == "lstm" and not os.path.exists(qpath) and importlib.util.find_spec("onnxruntime"):
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(path, qpath + ".part.onnx", weight_type=QuantType.QInt8)
            os.replace(qpath + ".part.onnx", qpath)
        return {}


ENGINES = {
    c.name: c
    for c in (
        RnnfastFloat32,
        RnnfastBf16,
        RnnfastInt8,
        TorchFloat32,
        OnnxruntimeFloat32,
        TorchInt8,
        OnnxruntimeInt8,
        RnnfastOrtFile,
        OpenvinoBf16,
        Export,
    )
}

#: The errors' reference: every column's output against this one's.
REFERENCE = "torch float32"


class Worker(compare.EngineProcess):
    script = os.path.abspath(__file__)


def run_case(case, threads, procs, budget, exporter):
    """One case on one thread count: export, build in every worker (one at a time), the
    errors against PyTorch float32, then the turns (compare.timed_rounds). Returns the row."""
    notes, outputs, first_s, digests = {}, {}, {}, {}
    try:
        exporter.ensure()
        exporter.ask("export", compare.BUILD_TIMEOUT_S, case=case)
    except compare.EngineError as err:
        notes["onnx-export"] = "export: %s" % err
    procs = {e: p for e, p in procs.items() if case["cell"] == "lstm" or not ENGINES[e].lstm_only}
    for e, p in procs.items():
        try:
            p.ensure()
            r = p.ask("build", compare.BUILD_TIMEOUT_S, case=case)
        except compare.EngineError as err:
            notes[e] = "build: %s" % err
            continue
        outputs[e], first_s[e], digests[e] = r["output"], r["first_s"], r["digest"]
        if r.get("note"):
            notes[e] = r["note"]
    if len(set(digests.values())) > 1:
        raise RuntimeError("the workers built different weights or inputs: %s" % digests)
    err = {}
    if REFERENCE in outputs:
        err = {e: compare.max_abs_diff(path, outputs[REFERENCE]) for e, path in outputs.items()}
    for path in outputs.values():
        os.remove(path)
    ms, repeats, rounds = compare.timed_rounds(procs, first_s, budget, notes)
    return dict(case, threads=threads, ms=ms, err=err, repeats=repeats, rounds=rounds, notes=notes)


def run_grid(cases, threads, budget, tmp, columns=COLUMNS):
    """The cases on one thread count, a fresh worker per column; yields the rows."""
    installed = [e for e in columns if all(importlib.util.find_spec(m) for m in ENGINES[e].needs)]
    procs = {e: Worker(e, threads, tmp) for e in installed}
    exporter = Worker("onnx-export", threads, tmp)
    workers = list(procs.values()) + [exporter]
    try:
        for p in workers:  # start them all: the imports overlap
            p.start()
        versions = {}
        for e, p in procs.items():
            try:
                p.ensure()
                versions[e] = p.info["version"]
            except compare.EngineError as err:
                print("%s %dt failed to start: %s" % (e, threads, err))
        print("%d thread(s), a worker process per column: %s" % (threads, ", ".join(
              "%s %s" % kv for kv in versions.items())), flush=True)  # fmt: skip
        for case in cases:
            yield run_case(case, threads, procs, budget, exporter)
    finally:
        for p in workers:
            p.stop()


def table(rows):
    lines = []
    head = "| cell | H | B | T | thr | " + " | ".join(COLUMNS) + " |"
    lines.append(head)
    lines.append("|" + "---|" * (5 + len(COLUMNS)))
    for r in rows:
        f32 = r["ms"].get("rnnfast float32", float("nan"))
        cells_ = []
        for c in COLUMNS:
            if c not in r["ms"]:
                cells_.append("-")
                continue
            ms = r["ms"][c]
            cells_.append("%.3g ms (%.2fx, %.0e)" % (ms, f32 / ms, r["err"].get(c, float("nan"))))
        lines.append("| %s | %d | %d | %d | %d | %s |" % (r["cell"], r["H"], r["B"], r["T"], r["threads"],
                                                          " | ".join(cells_)))  # fmt: skip
    return "\n".join(lines)


def _digits_probabilities(model, name, x):
    """Class probabilities of a bundled digits model (the PyTorch one through its head)."""
    if name == "digits_bigru":
        return model.predict(x)
    head = np.load(rnnfast.example("digits_lstm_head"))
    _, (h, _) = model(x)
    z = np.concatenate([h[-2], h[-1]], 1) @ head["weight"].T + head["bias"]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def accuracy_tables():
    """The int8 / bf16 accuracy tables of bench/README.md (\"int8 within 1e-2\"): the bundled
    digits models against float32, and random weights against float32 with int8 per column
    everywhere (the session-5 path) beside today's choice (K-grouped small matrices, float32
    projection of small inputs: rnnfast._quant's INT8_* constants)."""
    from rnnfast import _quant
    from rnnfast.layers import CellWeights, RNNLayer

    d = np.load(rnnfast.example("digits_test"))
    x, y = d["x"], d["y"]
    print("| model | precision | accuracy | max prob diff | argmax agreement |")
    print("| --- | --- | --- | --- | --- |")
    for name, kw in (("digits_bigru", {}), ("digits_lstm", {"batch_first": True})):
        m = rnnfast.load(rnnfast.example(name), **kw)
        p32 = _digits_probabilities(m, name, x)
        for prec in ("float32", "bf16", "int8"):
            p = _digits_probabilities(m.with_precision(prec), name, x)
            print("| %s | %s | %.2f %% | %.2g | %.4f |" % (name, prec, 100 * (p.argmax(1) == y).mean(),
                  np.abs(p - p32).max(), (p.argmax(1) == p32.argmax(1)).mean()))  # fmt: skip
    print()
    print("| cell | I | H | int8 per column (session 5) | int8 | bf16 |")
    print("| --- | --- | --- | --- | --- | --- |")
    saved = _quant.INT8_GROUP_MAX_K, _quant.INT8_FLOAT_INPUT
    for cell in ("gru", "lstm"):
        G = 3 if cell == "gru" else 4
        for I, H in ((8, 32), (64, 64), (16, 128), (128, 128)):
            rng = np.random.default_rng(0)
            s = 1 / np.sqrt(H)
            w = CellWeights(*(rng.uniform(-s, s, sh) for sh in ((I, G * H), (H, G * H), (G * H,))))
            base = RNNLayer(cell, [w])
            xr = rng.standard_normal((100, 8, I)).astype(np.float32)
            want = base(xr)[0]
            try:
                _quant.INT8_GROUP_MAX_K, _quant.INT8_FLOAT_INPUT = 0, 0
                old = base.with_precision("int8")
            finally:
                _quant.INT8_GROUP_MAX_K, _quant.INT8_FLOAT_INPUT = saved
            e = [np.abs(m(xr)[0] - want).max() for m in (old, base.with_precision("int8"), base.with_precision("bf16"))]
            print("| %s | %d | %d | %.1e | %.1e | %.1e |" % (cell, I, H, *e), flush=True)


def group_cost(budget):
    """What int8's K-grouped products cost (bench/README.md, \"int8 within 1e-2\"): B = 1,
    T = 100, one thread, interleaved medians: float32, int8 per column (the session-5
    packing of the same layer) and int8 as packed now."""
    from rnnfast import _quant
    from rnnfast.layers import CellWeights, RNNLayer

    print("| cell | I | H | float32 | int8 per column | int8 now |")
    print("| --- | --- | --- | --- | --- | --- |")
    saved = _quant.INT8_GROUP_MAX_K, _quant.INT8_FLOAT_INPUT
    for cell in ("gru", "lstm"):
        G = 3 if cell == "gru" else 4
        for I, H in ((8, 32), (64, 64), (128, 128)):
            rng = np.random.default_rng(0)
            s = 1 / np.sqrt(H)
            base = RNNLayer(cell, [CellWeights(*(rng.uniform(-s, s, sh) for sh in ((I, G * H), (H, G * H), (G * H,))))])
            try:
                _quant.INT8_GROUP_MAX_K, _quant.INT8_FLOAT_INPUT = 0, 0
                old = base.with_precision("int8")
            finally:
                _quant.INT8_GROUP_MAX_K, _quant.INT8_FLOAT_INPUT = saved
            new = base.with_precision("int8")
            x = rng.standard_normal((100, 1, I)).astype(np.float32)
            fns = {k: (lambda m=m, x=x: m(x, num_threads=1)) for k, m in (("f32", base), ("col", old), ("now", new))}
            ms, _ = interleaved(fns, budget)
            print("| %s | %d | %d | %.3f ms | %.3f ms (%.2fx) | %.3f ms (%.2fx) |" % (cell, I, H, ms["f32"], ms["col"],
                  ms["f32"] / ms["col"], ms["now"], ms["f32"] / ms["now"]), flush=True)  # fmt: skip


def profile_split(cells, Hs, Bs, T, calls):
    """Where rnnfast's time goes per step, one thread (``_kernels.profile``, the counters
    of bench/README.md's profiles): the input projection, the recurrent product and the
    rest of the step (gate math, state, outputs), microseconds per step, for float32, bf16
    and int8 on the weights of the timed grid (``run_case``)."""
    import torch

    from rnnfast import _kernels

    print("| cell | H | B | T | precision | ms per call | projection us/step | product us/step | rest us/step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for cell in cells:
        for H in Hs:
            for B in Bs:
                torch.manual_seed(H * 7 + B)
                net = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H).eval()
                x = np.random.default_rng(H + B + T).standard_normal((T, B, H)).astype(np.float32)
                for p in ("float32", "bf16", "int8"):
                    m = rnnfast.from_torch(net, precision=p)
                    m(x, num_threads=1)
                    _kernels.profile(True)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        m(x, num_threads=1)
                    wall = (time.perf_counter() - t0) / calls
                    _kernels.profile(False)
                    us = {k: v / (calls * T) * 1e6 for k, v in _kernels.profile_times().items()}
                    print("| %s | %d | %d | %d | %s | %.3g | %.3g | %.3g | %.3g |" % (cell, H, B, T, p, wall * 1e3,
                          us["projection"], us["product"], us["gates"]), flush=True)  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--H", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--B", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    ap.add_argument("--long", action="store_true", help="also T = 1000 at B = 1")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per case")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--accuracy", action="store_true", help="print the accuracy tables only (no peers, no timing)")
    ap.add_argument("--group-cost", action="store_true", help="time int8's K-grouped products only (no peers)")
    ap.add_argument(
        "--profile",
        type=int,
        metavar="CALLS",
        default=0,
        help="print rnnfast's per-step split (projection, product, rest) over CALLS calls per "
        "precision, one thread (no peers, no timing table)",
    )
    ap.add_argument(
        "--columns",
        metavar="NAMES",
        help="only these columns, comma-separated (default: all installed; rnnfast float32, the "
        "speed-ups' base, and %r, the errors' reference, always run)" % REFERENCE,
    )
    ap.add_argument("--_engine", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._engine:
        return compare.worker_main(args._engine[0], int(args._engine[1]), args._engine[2], ENGINES)
    if args.accuracy:
        accuracy_tables()
        return
    if args.group_cost:
        group_cost(args.budget)
        return
    if args.profile:
        profile_split(args.cells, args.H, args.B, args.T, args.profile)
        return
    print("CPU: %s; rnnfast %s, kernel set %s" % (cpu_name(), rnnfast.__version__, rnnfast._kernels.quant_isa()))
    print("cells: ms per call (speed-up over rnnfast float32, max |error| against PyTorch float32)")
    columns = COLUMNS
    if args.columns:
        picked = {c.strip() for c in args.columns.split(",") if c.strip()} | {REFERENCE, "rnnfast float32"}
        unknown = picked - set(COLUMNS)
        if unknown:
            ap.error("unknown columns %s (known: %s)" % (sorted(unknown), ", ".join(COLUMNS)))
        columns = tuple(c for c in COLUMNS if c in picked)
    cases = [
        dict(cell=cell, H=H, B=B, T=T)
        for cell in args.cells
        for H in args.H
        for B in args.B
        for T in [args.T] + ([1000] if args.long and B == 1 and args.T != 1000 else [])
    ]
    rows = []
    tmp = tempfile.mkdtemp(prefix="rnnfast-precision-")
    try:
        for threads in args.threads:
            for r in run_grid(cases, threads, args.budget, tmp, columns):
                r["load"] = os.getloadavg()[0]
                rows.append(r)
                print(table([r]).splitlines()[-1] + "  [%d rounds, load %.1f]%s" % (r["rounds"], r["load"],
                      " notes: %s" % r["notes"] if r["notes"] else ""), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
