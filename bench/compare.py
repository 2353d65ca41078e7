"""rnnfast against the peers: PyTorch, ONNX Runtime, OpenVINO and Keras (TensorFlow).

Every case builds one random-weight model (a PyTorch module, seeded) and gives the
same weights to every installed engine: rnnfast (through its PyTorch converter),
PyTorch itself, ONNX Runtime and OpenVINO (an ONNX export of the module; OpenVINO
forced to f32), and Keras 3 on TensorFlow (weights converted to Keras' layout, run as
``tf.function(jit_compile=True)`` around ``model(x, training=False)``). Outputs are
checked to agree; timings are medians of interleaved runs after warm-up. Each thread
count runs in its own process (thread settings of TensorFlow and OpenVINO are
per process). The machine's sgemm peak is measured by the script itself.

    python bench/compare.py [--quick] [--threads 1,2] [--out bench/results]
    python bench/compare.py --memory          # peak memory per engine, long sequence

Install the peers and run with ``make compare`` / ``make compare-quick`` (a separate .venv-bench).
Writes compare.json and compare.png to --out.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _common import blas_report, interleaved, pyplot  # noqa: E402
ENGINES = ("rnnfast", "torch", "onnxruntime", "openvino", "keras")

# -- cases ----------------------------------------------------------------------------
# A case: name, batch, time, input size, recurrent layers [(cell, units, bidirectional,
# return_sequences)], dense head units (sigmoid) or 0.


def seed_cases():
    return [
        dict(name="seed GRU(128)->GRU(64)->Dense", B=32, T=10, I=50,
             layers=[("GRU", 128, False, True), ("GRU", 64, False, False)], head=1),
        dict(name="seed stacked GRU(128)x2 seq", B=32, T=10, I=50,
             layers=[("GRU", 128, False, True), ("GRU", 128, False, True)], head=0),
        dict(name="seed BiGRU(128)->BiGRU(64)->Dense", B=32, T=10, I=50,
             layers=[("GRU", 128, True, True), ("GRU", 64, True, True)], head=1),
    ]


def grid_cases(quick):
    cases = seed_cases()
    if quick:
        shapes = [(1, 100, 256), (64, 100, 256)]
    else:
        shapes = [(B, T, H) for B in (1, 64, 256) for T in (100, 1000) for H in (128, 256, 512)
                  if not (B == 256 and T == 1000 and H == 512)]
    for cell in ("GRU", "LSTM"):
        for B, T, H in shapes:
            cases.append(dict(name="%s B=%d T=%d H=I=%d" % (cell, B, T, H), B=B, T=T, I=H,
                              layers=[(cell, H, False, True)], head=0))
    for cell in ("GRU", "LSTM"):
        for B in ((1,) if quick else (1, 32)):
            cases.append(dict(name="Bi%s B=%d T=100 H=I=256" % (cell, B), B=B, T=100, I=256,
                              layers=[(cell, 256, True, True)], head=0))
    return cases


def case_flops(case):
    """Multiply-adds x 2 of the recurrent layers (input projection + recurrence)."""
    f, I = 0, case["I"]
    for cell, H, bi, _ in case["layers"]:
        G = 3 if cell == "GRU" else 4
        D = 2 if bi else 1
        f += 2 * case["T"] * case["B"] * D * (I + H) * G * H
        I = D * H
    return f


# -- the model in PyTorch, and its conversions ------------------------------------------


def torch_model(case, torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            rnns, I = [], case["I"]
            for cell, H, bi, _ in case["layers"]:
                rnns.append((nn.GRU if cell == "GRU" else nn.LSTM)(I, H, bidirectional=bi))
                I = H * (2 if bi else 1)
            self.rnns = nn.ModuleList(rnns)
            self.head = nn.Linear(I, case["head"]) if case["head"] else None

        def forward(self, x):                       # x: (B, T, I), like Keras
            y = x.transpose(0, 1)
            last = False
            for m, (_, _, bi, seq) in zip(self.rnns, case["layers"]):
                out, st = m(y)
                if seq:
                    y = out
                else:
                    h = st[0] if isinstance(st, tuple) else st
                    y = torch.cat([h[0], h[1]], -1) if bi else h[0]
                    last = True
            if not last:
                y = y.transpose(0, 1)
            if self.head is not None:
                y = torch.sigmoid(self.head(y))
            return y

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():                           # lively weights, as trained models have
        for p in net.parameters():
            p.uniform_(-0.08, 0.08)
    return net


def canonical(net):
    """Per recurrent layer: (cell, [CellWeights per direction]); and the head (W, b)."""
    from rnnfast.io.torch_convert import cell_weights_from_torch

    layers = []
    for m in net.rnns:
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        ws = [cell_weights_from_torch(m.mode, sd["weight_ih_l0" + s], sd["weight_hh_l0" + s],
                                      sd["bias_ih_l0" + s], sd["bias_hh_l0" + s])
              for s in ([""] + (["_reverse"] if m.bidirectional else []))]
        layers.append((m.mode, ws))
    head = None
    if net.head is not None:
        head = (net.head.weight.detach().numpy().T.copy(), net.head.bias.detach().numpy().copy())
    return layers, head


def rnnfast_model(case, net):
    from rnnfast import Sequential
    from rnnfast.layers import Dense, RNNLayer

    layers, head = canonical(net)
    steps = [(RNNLayer(mode.lower(), ws), dict(return_sequences=spec[3]))
             for (mode, ws), spec in zip(layers, case["layers"])]
    if head is not None:
        steps.append(Dense(head[0], head[1], "sigmoid"))
    return Sequential(steps)


def keras_model(case, net):
    import keras

    layers, head = canonical(net)
    model = keras.Sequential([keras.Input((case["T"], case["I"]))])
    for (mode, ws), (cell, H, bi, seq) in zip(layers, case["layers"]):
        inner = (keras.layers.GRU(H, return_sequences=seq, reset_after=True) if cell == "GRU"
                 else keras.layers.LSTM(H, return_sequences=seq))
        model.add(keras.layers.Bidirectional(inner, merge_mode="concat") if bi else inner)
        weights = []
        for w in ws:
            bias = (np.stack([w.bias, w.recurrent_bias]) if cell == "GRU"
                    else w.bias + w.recurrent_bias)
            weights += [w.kernel, w.recurrent_kernel, bias]
        model.layers[-1].set_weights(weights)
    if head is not None:
        model.add(keras.layers.Dense(head[0].shape[1], activation="sigmoid"))
        model.layers[-1].set_weights([head[0], head[1]])
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), jit_compile=True)
    return lambda x: fn(tf.constant(x)).numpy()


def onnx_file(net, case, torch, tmpdir):
    path = os.path.join(tmpdir, "model.onnx")
    x = torch.zeros(case["B"], case["T"], case["I"])
    try:
        torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
    except TypeError:                                # older torch: no dynamo keyword
        torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["y"], opset_version=17)
    return path


# -- timing ---------------------------------------------------------------------------


def sgemm_peak(threads):
    """GFLOP/s of a large float32 GEMM on ``threads`` threads (numpy's BLAS)."""
    from threadpoolctl import threadpool_limits

    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.copy()
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / min(ts) / 1e9


# -- one process per thread count ------------------------------------------------------


def worker(threads, quick, budget_s):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch

    import rnnfast

    torch.set_num_threads(threads)
    rnnfast.set_num_threads(threads)
    peers = {}
    try:
        import onnxruntime as ort

        peers["onnxruntime"] = ort
    except ImportError:
        pass
    try:
        import openvino as ov

        peers["openvino"] = ov.Core()
    except ImportError:
        pass
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras  # noqa: F401

        peers["keras"] = True
    except ImportError:
        pass
    peak = sgemm_peak(threads)
    print(json.dumps(dict(kind="peak", threads=threads, gflops=peak)), flush=True)
    tmp = tempfile.mkdtemp()
    for case in grid_cases(quick):
        net = torch_model(case, torch)
        x = np.random.default_rng(1).standard_normal((case["B"], case["T"], case["I"])).astype(np.float32)
        xt = torch.from_numpy(x)
        fast = rnnfast_model(case, net)

        def run_torch():
            with torch.no_grad():
                return net(xt).numpy()

        fns = {"rnnfast": lambda: fast.predict(x), "torch": run_torch}
        notes = {}
        if "onnxruntime" in peers or "openvino" in peers:
            path = onnx_file(net, case, torch, tmp)
            if "onnxruntime" in peers:
                ort = peers["onnxruntime"]
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                fns["onnxruntime"] = lambda s=sess: s.run(None, {"x": x})[0]
            if "openvino" in peers:
                compiled = peers["openvino"].compile_model(
                    peers["openvino"].read_model(path), "CPU",
                    {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                     "PERFORMANCE_HINT": "LATENCY"})
                req = compiled.create_infer_request()
                fns["openvino"] = lambda r=req: r.infer({0: x})[0]
        if "keras" in peers:
            try:
                fns["keras"] = (lambda f: (lambda: f(x)))(keras_model(case, net))
            except Exception as e:  # noqa: BLE001 - report, don't hide: the note says why
                notes["keras"] = "%s: %s" % (type(e).__name__, e)
        want = fns["rnnfast"]()
        agree = {}
        for k, f in list(fns.items()):
            try:
                agree[k] = float(np.abs(np.asarray(f(), np.float64) - want).max())
            except Exception as e:  # noqa: BLE001
                notes[k] = "%s: %s" % (type(e).__name__, e)
                del fns[k]
        ms, repeats = interleaved(fns, budget_s)
        print(json.dumps(dict(kind="case", threads=threads, case=case["name"], flops=case_flops(case),
                              B=case["B"], ms=ms, max_abs_diff=agree, repeats=repeats, notes=notes)),
              flush=True)


# -- memory -----------------------------------------------------------------------------


def memory_worker(engine, T):
    """Peak RSS growth of one GRU(256) B=1 inference over T steps, in its own process."""
    import torch

    B, I, H = 1, 256, 256
    case = dict(B=B, T=T, I=I, layers=[("GRU", H, False, False)], head=0)
    net = torch_model(case, torch)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    if engine == "rnnfast":
        model = rnnfast_model(case, net)
        model.predict(x[:, :10])
        fn = lambda: model.predict(x)  # noqa: E731
    elif engine == "torch":
        xt = torch.from_numpy(x)

        def fn():
            with torch.no_grad():
                return net(xt)
    else:
        import onnxruntime as ort

        path = onnx_file(net, case, torch, tempfile.mkdtemp())
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        fn = lambda: sess.run(None, {"x": x})  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(engine=engine, T=T, extra_mb=(peak - base) / 1024.0,
                          input_mb=x.nbytes / 2 ** 20)))


def memory_table():
    print("Peak memory above the process's state before the call (GRU(256), B=1, last state only):")
    print("%-12s %8s %10s %12s" % ("engine", "T", "input MB", "extra MB"))
    rows = []
    for engine in ("rnnfast", "torch", "onnxruntime"):
        for T in (1000, 10000, 100000):
            r = subprocess.run([sys.executable, __file__, "--_memory", engine, str(T)],
                               capture_output=True, text=True)
            if r.returncode:
                print("%-12s %8d  (failed: %s)" % (engine, T, r.stderr.strip().splitlines()[-1:]))
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print("%-12s %8d %10.1f %12.1f" % (engine, T, row["input_mb"], row["extra_mb"]))
    return rows


# -- report -----------------------------------------------------------------------------


def report(rows, peaks):
    print()
    head = ("%-36s %3s" % ("case", "thr") + "".join(" %11s" % e[:11] for e in ENGINES)
            + " %9s %9s %8s %6s" % ("vs best", "best peer", "GFLOP/s", "%peak"))
    print(head)
    print("-" * len(head))
    speedups = []
    for r in rows:
        ms = r["ms"]
        peers = {k: v for k, v in ms.items() if k != "rnnfast"}
        best = min(peers, key=peers.get) if peers else None
        sp = peers[best] / ms["rnnfast"] if best else float("nan")
        gf = r["flops"] / ms["rnnfast"] / 1e6
        r.update(speedup_vs_best=sp, best_peer=best, gflops=gf,
                 pct_peak=100 * gf / peaks[r["threads"]])
        speedups.append((r, sp))
        cells = "".join(" %11.3f" % ms[e] if e in ms else " %11s" % "-" for e in ENGINES)
        print("%-36s %3d%s %8.2fx %9s %8.1f %5.0f%%" % (r["case"][:36], r["threads"], cells, sp,
                                                        best or "-", gf, r["pct_peak"]))
        bad = {k: v for k, v in r["max_abs_diff"].items() if v > 1e-4}
        if bad or r["notes"]:
            print("    !! disagreement > 1e-4: %s  notes: %s" % (bad, r["notes"]))
    print()
    for label, sel in (("B=1", lambda r: r["B"] == 1), ("B>=64", lambda r: r["B"] >= 64),
                       ("all", lambda r: True)):
        sp = [s for r, s in speedups if sel(r) and np.isfinite(s)]
        if sp:
            print("geometric-mean speed-up over the fastest peer, %-6s: %.2fx (%d cases, %d slower)"
                  % (label, float(np.exp(np.mean(np.log(sp)))), len(sp), sum(s < 1 for s in sp)))
    for t, p in sorted(peaks.items()):
        print("sgemm peak, %d thread(s): %.0f GFLOP/s" % (t, p))


def plot(rows, path):
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
    labels = ["%s %dt" % (r["case"], r["threads"]) for r in rows]
    ax.bar(range(len(rows)), [r["speedup_vs_best"] for r in rows],
           color=["tab:green" if r["speedup_vs_best"] >= 1 else "tab:red" for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("rnnfast speed-up over the fastest peer")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("plot:", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset that runs in about two minutes")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timing per engine and case")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--memory", action="store_true", help="peak memory per engine instead")
    ap.add_argument("--_worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    budget = args.budget if args.budget is not None else (0.15 if args.quick else 0.6)
    if args._worker:
        worker(args._worker, args.quick, budget)
        return 0
    if args._memory:
        memory_worker(args._memory[0], int(args._memory[1]))
        return 0
    os.makedirs(args.out, exist_ok=True)
    if args.memory:
        rows = memory_table()
        with open(os.path.join(args.out, "compare_memory.json"), "w") as f:
            json.dump(rows, f, indent=1)
        return 0
    import rnnfast

    print("rnnfast %s; BLAS: %s" % (rnnfast.__version__, "; ".join(
        "%(api)s %(version)s kernel=%(kernel)s (%(file)s)" % b for b in blas_report())))
    rows, peaks = [], {}
    for t in [int(s) for s in args.threads.split(",")]:
        cmd = [sys.executable, __file__, "--_worker", str(t), "--budget", str(budget)]
        if args.quick:
            cmd.append("--quick")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            r = json.loads(line)
            if r["kind"] == "peak":
                peaks[t] = r["gflops"]
            else:
                rows.append(r)
                print("  %-36s %dt  %s" % (r["case"][:36], t, "  ".join(
                    "%s %.3f" % (k, v) for k, v in r["ms"].items())), flush=True)
        if p.wait():
            print("worker for %d thread(s) failed (exit %d)" % (t, p.returncode))
            return 1
    report(rows, peaks)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(dict(rows=rows, sgemm_peak_gflops=peaks), f, indent=1)
    plot(rows, os.path.join(args.out, "compare.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
