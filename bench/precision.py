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
given. One process per thread count is cleanest (``--threads 1`` then ``--threads
2``); every engine gets that many threads. Medians of interleaved runs
(bench/_common.interleaved); this machine is shared, so read the ratios.

Run it in the peers' environment with this checkout first on the path:

    PYTHONPATH=src /work/main/.venv-bench/bin/python bench/precision.py --threads 1 --json p1.json

Prints one table per thread count (milliseconds per call, speed-up over rnnfast
float32, max |error|) and writes JSON with ``--json``.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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


def peers(torch, net, cell, x, threads, tmp):
    """name -> (callable returning the output sequence, note)."""
    out = {}
    xt = torch.from_numpy(x)
    torch.set_num_threads(threads)
    # quantize_dynamic swaps child modules only: the RNN goes in a wrapper
    qnet = torch.ao.quantization.quantize_dynamic(OutOnly(torch, net), {torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)
    assert "quantized" in type(qnet.net).__module__, type(qnet.net)

    def run_torch(m=qnet):
        with torch.no_grad():
            return m(xt).numpy()

    out["torch int8"] = run_torch
    out["torch float32"] = lambda: run_torch(OutOnly(torch, net))
    path = os.path.join(tmp, "%s_%d_%d_%d.onnx" % (cell, x.shape[2], x.shape[1], x.shape[0]))
    if not os.path.exists(path):
        torch.onnx.export(OutOnly(torch, net), (xt,), path, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)  # fmt: skip
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        fsess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out["onnxruntime float32"] = lambda: fsess.run(None, {"x": x})[0]
        if cell == "lstm":  # ONNX Runtime quantizes LSTM only (no DynamicQuantizeGRU)
            qpath = path.replace(".onnx", "_q.onnx")
            if not os.path.exists(qpath):
                quantize_dynamic(path, qpath, weight_type=QuantType.QInt8)
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(qpath, so, providers=["CPUExecutionProvider"])
            out["onnxruntime int8"] = lambda: sess.run(None, {"x": x})[0]
            # the same file in rnnfast: DynamicQuantizeLSTM on ONNX Runtime's int8 weights
            qmodel = rnnfast.load(qpath)

            def run_rnnfast_ort_file():
                y = qmodel(x, num_threads=threads)
                return y[0] if isinstance(y, (list, tuple)) else y

            out["rnnfast int8 (ORT file)"] = run_rnnfast_ort_file
    except ImportError:
        pass
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"},
        )
        req = compiled.create_infer_request()
        out["openvino bf16"] = lambda: req.infer({0: x})[0]
    except ImportError:
        pass
    return out


def run_case(torch, cell, H, B, T, threads, budget, tmp):
    torch.manual_seed(H * 7 + B)
    net = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(H, H).eval()
    x = np.random.default_rng(H + B + T).standard_normal((T, B, H)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[0].numpy().astype(np.float64)
    fns = {}
    for p in ("float32", "bf16", "int8"):
        m = rnnfast.from_torch(net, precision=p)
        fns["rnnfast " + p] = lambda m=m: m(x, num_threads=threads)[0]
    fns.update(peers(torch, net, cell, x, threads, tmp))
    errs = {k: float(np.abs(np.asarray(f()).reshape(ref.shape) - ref).max()) for k, f in fns.items()}
    ms, _ = interleaved(fns, budget_s=budget)
    return dict(cell=cell, H=H, B=B, T=T, threads=threads, ms=ms, err=errs)


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


def table(rows):
    lines = []
    head = "| cell | H | B | T | thr | " + " | ".join(COLUMNS) + " |"
    lines.append(head)
    lines.append("|" + "---|" * (5 + len(COLUMNS)))
    for r in rows:
        f32 = r["ms"]["rnnfast float32"]
        cells_ = []
        for c in COLUMNS:
            if c not in r["ms"]:
                cells_.append("-")
                continue
            ms = r["ms"][c]
            cells_.append("%.3g ms (%.2fx, %.0e)" % (ms, f32 / ms, r["err"][c]))
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
    args = ap.parse_args(argv)
    if args.accuracy:
        accuracy_tables()
        return
    if args.group_cost:
        group_cost(args.budget)
        return
    if args.profile:
        profile_split(args.cells, args.H, args.B, args.T, args.profile)
        return
    import torch

    print("CPU: %s; rnnfast %s, kernel set %s" % (cpu_name(), rnnfast.__version__, rnnfast._kernels.quant_isa()))
    print("cells: ms per call (speed-up over rnnfast float32, max |error| against PyTorch float32)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            for cell in args.cells:
                for H in args.H:
                    for B in args.B:
                        Ts = [args.T] + ([1000] if args.long and B == 1 and args.T != 1000 else [])
                        for T in Ts:
                            r = run_case(torch, cell, H, B, T, threads, args.budget, tmp)
                            rows.append(r)
                            print(table([r]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
