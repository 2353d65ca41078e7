"""Streaming: the cost of one step of one stream, and of one batched step of many.

The model is the issue's small one, GRU(64) -> Dense(10) on 32 features, float32,
with the same random weights in every engine:

- rnnfast ``model.step(x_t, stream)`` (a KerasModel from a live Keras model);
- its arithmetic: the per-step time of the same model over a long sequence in one
  call (the fixed costs spread over many steps), and the compiled entry alone at one
  step (the kernel call without the stream's Python);
- PyTorch eager ``gru(x_t, h)`` + ``linear`` (``torch.no_grad()``, one thread);
- ONNX Runtime on a one-step export of the same module with the state as input and
  output (``sess.run(None, {"x": x_t, "h": h})``, state threaded by hand);
- Keras 3 ``stateful=True`` ``predict_on_batch`` (one step per call);
- 64 streams: one batched ``model.step([x]*64, streams)`` against 64 one-stream calls;
- the sweep: one batched step over 1, 2, 4, ... 256 live streams, per stream-step.

Calls are timed in loops of ``--calls``, the loops of all engines interleaved round
after round; medians are reported, of two clocks: wall time (``perf_counter``) and the
process's CPU time (``process_time``: what the calls cost when the machine is shared,
the time other processes hold the core left out). ``overhead`` is rnnfast's one-step
call minus its arithmetic per step: the Python and dispatch a step costs.

    python bench/streaming.py [--quick] [--threads 1] [--out bench]

Writes streaming.json and, with matplotlib, streaming.png (microseconds per
stream-step against live streams) to --out. ``--quick`` (a few rounds, ~20 s) checks
that it runs; its numbers are rough.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

import rnnfast

I, H, N, STREAMS = 32, 64, 10, 64


def build(seed=0):
    """The Keras model (live) and a torch module with the same weights."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, I))
    km = keras.Model(inp, keras.layers.Dense(N)(keras.layers.GRU(H, return_sequences=True)(inp)))
    rng = np.random.default_rng(seed)
    km.set_weights([rng.uniform(-0.3, 0.3, w.shape).astype(np.float32) for w in km.get_weights()])
    return km


def torch_twin(km):
    """nn.GRU + nn.Linear with the Keras weights (gate order z, r, h -> r, z, n)."""
    import torch

    k, rk, b, dk, db = km.get_weights()

    def reorder(w):  # (.., 3H) z r h -> r z h
        z, r, h = np.split(w, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)

    gru = torch.nn.GRU(I, H)
    lin = torch.nn.Linear(H, N)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.as_tensor(reorder(k).T.copy()))
        gru.weight_hh_l0.copy_(torch.as_tensor(reorder(rk).T.copy()))
        gru.bias_ih_l0.copy_(torch.as_tensor(reorder(b[0])))
        gru.bias_hh_l0.copy_(torch.as_tensor(reorder(b[1])))
        lin.weight.copy_(torch.as_tensor(dk.T.copy()))
        lin.bias.copy_(torch.as_tensor(db))
    return gru.eval(), lin.eval()


def ort_session(gru, lin, tmp):
    """A one-step ONNX model: (x (1, 1, I), h (1, 1, H)) -> (y (1, 1, N), h_new)."""
    import onnxruntime as ort
    import torch

    class StepModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.lin = gru, lin

        def forward(self, x, h):
            y, h2 = self.gru(x, h)
            return self.lin(y), h2

    path = os.path.join(tmp, "gru_step.onnx")
    args = (torch.zeros(1, 1, I), torch.zeros(1, 1, H))
    try:
        torch.onnx.export(StepModel(), args, path, input_names=["x", "h"], output_names=["y", "h_new"], dynamo=False)
    except TypeError:  # an older torch without the dynamo switch
        torch.onnx.export(StepModel(), args, path, input_names=["x", "h"], output_names=["y", "h_new"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def keras_stateful(km):
    import keras

    inp = keras.Input((1, I), batch_size=1)
    st = keras.Model(inp, keras.layers.Dense(N)(keras.layers.GRU(H, return_sequences=True, stateful=True)(inp)))
    st.set_weights(km.get_weights())
    return st


def timed(fns, rounds):
    """Median microseconds per call of each loop, interleaved (fns: name -> (fn, calls)):
    (wall, cpu), two dicts. Each timed loop starts with one untimed call: the engines'
    loops run in turn, so a loop's first call would find its caches filled by the others
    (in ``--quick``'s loops of 10 batched steps that cold call was ~20% of the time)."""
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for f, _n in fns.values():
        f()  # warm-up
    for _ in range(rounds):
        for k, (f, n) in fns.items():
            f()  # the loop starts warm (the other engines' loops ran since its last call)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                f()
            t1, c1 = time.perf_counter(), time.process_time()
            wall[k].append((t1 - t0) / n * 1e6)
            cpu[k].append((c1 - c0) / n * 1e6)
    med = lambda d: {k: float(np.median(v)) for k, v in d.items()}  # noqa: E731
    return med(wall), med(cpu)


#: the live streams of the sweep (--quick: fewer)
SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def plot(results, path):
    """Microseconds per stream-step against live streams (CPU clock): rnnfast's batched
    step, its one call per stream, and the peers' one-step calls."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return None
    us = results["us_per_call_cpu"]
    sweep = results["sweep_us_per_stream_step_cpu"]
    n = [int(k) for k in sweep]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(n, list(sweep.values()), "o-", label="rnnfast: one batched step of n streams")
    flat = [
        ("rnnfast step", "rnnfast: one call per stream", "--"),
        ("ONNX Runtime run(x_t, h)", "ONNX Runtime: run(x_t, h) per stream", ":"),
        ("PyTorch eager gru(x_t, h) + linear", "PyTorch eager per stream", "-."),
    ]
    for key, label, style in flat:
        if key in us:
            ax.plot([n[0], n[-1]], [us[key]] * 2, style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("live streams")
    ax.set_ylabel("us per stream-step (CPU time, median)")
    ax.set_title("%s, %d thread(s)" % (results["model"], results["threads"]), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few rounds (seconds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed loop")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args(argv)
    sweep = SWEEP
    if args.quick:
        args.calls, args.rounds = 200, 5
        sweep = (1, 8, 64, 256)
    rnnfast.set_num_threads(args.threads)
    km = build()
    model = rnnfast.from_keras(km)
    rng = np.random.default_rng(1)
    x1 = rng.standard_normal((1, I)).astype(np.float32)
    long_x = rng.standard_normal((1, 2000, I)).astype(np.float32)
    s = model.stream()
    fns = {"rnnfast step": (lambda: model.step(x1, s), args.calls)}
    # the arithmetic: a long sequence in one call, per step
    T = long_x.shape[1]
    fns["rnnfast per step of a 2000-step call"] = (lambda: model.predict(long_x), max(1, args.calls // 200))
    # the compiled entry alone, one step (stream.py's kernel wrapper, no stream Python)
    kern = s._program.recurrent[0].kernels[0]
    h = np.zeros((1, 1, H), np.float32)
    out = np.empty((1, H), np.float32)
    cuts = kern.cuts(1, 1, None)
    fns["rnnfast compiled entry alone"] = (lambda: kern.entry.run(x1, 1, 1, None, out, h, None, *cuts), args.calls)
    results = dict(
        machine=dict(cpu=platform.processor() or platform.machine(), python=sys.version.split()[0]),
        threads=args.threads,
        model="GRU(%d) -> Dense(%d) on %d features, float32, B=1" % (H, N, I),
        rnnfast=rnnfast.__version__,
    )
    peers = []
    try:
        import torch

        torch.set_num_threads(args.threads)
        gru, lin = torch_twin(km)
        xt = torch.as_tensor(x1[None])
        state = {"h": torch.zeros(1, 1, H)}

        def torch_step():
            with torch.no_grad():
                y, state["h"] = gru(xt, state["h"])
                return lin(y)

        fns["PyTorch eager gru(x_t, h) + linear"] = (torch_step, args.calls)
        peers.append("torch " + torch.__version__)
        with torch.no_grad():  # same numbers
            want = lin(gru(torch.as_tensor(long_x[0, :50, None]))[0]).numpy()[:, 0]
        got = model.step(long_x[0, :50], model.stream())
        results["max_abs_diff_vs_torch"] = float(np.abs(got - want).max())
        try:
            with tempfile.TemporaryDirectory() as tmp:
                sess = ort_session(gru, lin, tmp)
            feed = {"x": x1[None], "h": np.zeros((1, 1, H), np.float32)}

            def ort_step():
                y, feed["h"] = sess.run(None, feed)
                return y

            fns["ONNX Runtime run(x_t, h)"] = (ort_step, args.calls)
            import onnxruntime

            peers.append("onnxruntime " + onnxruntime.__version__)
        except ImportError as e:
            print("(ONNX Runtime: %s)" % e)
    except ImportError as e:
        print("(PyTorch: %s)" % e)
    try:
        import keras

        st = keras_stateful(km)
        xk = x1[None]
        fns["Keras stateful predict_on_batch"] = (lambda: st.predict_on_batch(xk), max(1, args.calls // 50))
        peers.append("keras %s (%s)" % (keras.__version__, keras.backend.backend()))
    except ImportError as e:
        print("(Keras: %s)" % e)
    # many streams: one batched step of 64 against 64 one-stream calls
    streams = [model.stream() for _ in range(STREAMS)]
    xs = [rng.standard_normal((1, I)).astype(np.float32) for _ in range(STREAMS)]

    def separate():
        for x, st_ in zip(xs, streams):
            model.step(x, st_)

    fns["64 streams: one batched step"] = (lambda: model.step(xs, streams), max(1, args.calls // 20))
    fns["64 streams: 64 one-stream calls"] = (separate, max(1, args.calls // 20))
    # the sweep: one batched step over n live streams
    pool = [model.stream() for _ in range(max(sweep))]
    xpool = [rng.standard_normal((1, I)).astype(np.float32) for _ in pool]
    for n in sweep:
        calls = max(1, args.calls * 4 // (n + 8))
        fns["sweep %d" % n] = (lambda n=n: model.step(xpool[:n], pool[:n]), calls)
    us_wall, us_cpu = timed(fns, args.rounds)
    for d in (us_wall, us_cpu):
        d["rnnfast per step of a 2000-step call"] /= T
    results["peers"] = peers
    results["load_average"] = os.getloadavg()
    for clock, us in (("", us_wall), ("_cpu", us_cpu)):
        sw = {str(n): us.pop("sweep %d" % n) / n for n in sweep}
        arith = us["rnnfast per step of a 2000-step call"]
        results["us_per_call" + clock] = us
        results["sweep_us_per_stream_step" + clock] = sw
        results["overhead_us" + clock] = us["rnnfast step"] - arith
        results["kernel_entry_overhead_us" + clock] = us["rnnfast compiled entry alone"] - arith
        batched = STREAMS / us["64 streams: one batched step"] * 1e6
        separate_sps = STREAMS / us["64 streams: 64 one-stream calls"] * 1e6
        results["steps_per_s" + clock] = {
            "batched 64": batched,
            "64 separate": separate_sps,
            "ratio": batched / separate_sps,
        }
    t0 = time.perf_counter()
    for _ in range(100000):
        pass
    results["python_empty_loop_ns"] = (time.perf_counter() - t0) / 100000 * 1e9
    print("%s, %d thread(s); %s" % (results["model"], args.threads, ", ".join(peers)))
    print("load average %.2f %.2f %.2f" % results["load_average"])
    print("%-42s %12s %12s" % ("us per call (median)", "wall", "CPU"))
    for k in us_wall:
        print("%-42s %12.2f %12.2f" % (k, us_wall[k], us_cpu[k]))
    for n in sweep:
        print(
            "%-42s %12.2f %12.2f"
            % ("  per stream-step, batched %d" % n, results["sweep_us_per_stream_step"][str(n)],
               results["sweep_us_per_stream_step_cpu"][str(n)])
        )  # fmt: skip
    for clock, name in (("", "wall"), ("_cpu", "CPU")):
        us, sps = results["us_per_call" + clock], results["steps_per_s" + clock]
        print(
            "%s: rnnfast Python + dispatch per step %.2f us (step %.2f - arithmetic %.2f); "
            "64 streams %.0f steps/s batched, %.0f separately: %.1fx"
            % (name, results["overhead_us" + clock], us["rnnfast step"], us["rnnfast per step of a 2000-step call"],
               sps["batched 64"], sps["64 separate"], sps["ratio"])
        )  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "streaming.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", path)
    png = plot(results, os.path.join(args.out, "streaming.png"))
    if png:
        print("wrote", png)
    return results


if __name__ == "__main__":
    main()
