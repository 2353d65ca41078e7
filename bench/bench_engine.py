"""First benchmark of the engine: rnnfast vs the float64 numpy reference vs PyTorch.

Cases: the seed's two Keras-shaped models (batch 32, input (10, 50)); GRU and LSTM
layers with H = I = 256, T = 1000, batch 1 and 64; each at 1 and 2 threads. Every
engine runs the same weights and input; outputs are checked to agree before timing;
timings are medians of interleaved runs after warm-up. Also measures two concurrent
calls from two Python threads against the same two calls one after the other (the
GIL is released while computing).

    python bench/bench_engine.py [--repeats N] [--quick] [--out bench/results]

Writes bench_engine.json and bench_engine.png (if matplotlib is installed) to --out.
"""
import argparse
import json
import os
import platform
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import blas_report, interleaved, pyplot  # noqa: E402

import rnnfast  # noqa: E402
from rnnfast import reference  # noqa: E402
from rnnfast.demo import seed_models  # noqa: E402
from rnnfast.io.torch_convert import cell_weights_from_torch  # noqa: E402
from rnnfast.layers import RNNLayer  # noqa: E402


def torch_seed_model(torch, model, bidirectional):
    """The same weights in torch modules: list of (nn.GRU, return_sequences) + Linear."""
    mods = []
    for layer, opt in model._steps:
        if isinstance(layer, RNNLayer):
            g = torch.nn.GRU(layer.input_size, layer.units, bidirectional=bidirectional)
            sd = {}
            for d, sfx in enumerate(["", "_reverse"][: layer.num_directions]):
                W, U = layer._W[d], layer._U[d]
                H = layer.units
                # canonical (z, r, h) -> torch (r, z, n), transposed
                order = lambda a: np.concatenate([a[..., H:2 * H], a[..., :H], a[..., 2 * H:]], -1)  # noqa: E731
                sd["weight_ih_l0" + sfx] = torch.tensor(order(W).T.copy())
                sd["weight_hh_l0" + sfx] = torch.tensor(order(U).T.copy())
                bx = layer._bx[d].copy()
                sd["bias_ih_l0" + sfx] = torch.tensor(order(bx))
                bh = np.zeros(3 * H, np.float32)
                bh[2 * H:] = layer._bhn[d]
                sd["bias_hh_l0" + sfx] = torch.tensor(order(bh))
            g.load_state_dict(sd)
            mods.append((g.eval(), opt["return_sequences"]))
        else:
            lin = torch.nn.Linear(*layer.kernel.shape)
            lin.load_state_dict({"weight": torch.tensor(layer.kernel.T.copy()),
                                 "bias": torch.tensor(layer.bias.copy())})
            mods.append((lin.eval(), None))

    def run(x_bm):
        with torch.no_grad():
            y = x_bm.transpose(0, 1)
            last = False
            for m, rs in mods:
                if isinstance(m, torch.nn.GRU):
                    out, h = m(y)
                    if rs:
                        y = out
                    else:
                        y = torch.cat(list(h), -1)
                        last = True
                else:
                    y = torch.sigmoid(m(y))
            return y if last else y.transpose(0, 1)

    return run


def seed_cases(torch, threads, repeats):
    rows = []
    x = np.random.default_rng(1).standard_normal((32, 10, 50)).astype(np.float32)
    for (name, model, ref), bi in zip(seed_models(0), (False, True)):
        tfn = torch_seed_model(torch, model, bi) if torch else None
        want = ref(x.astype(np.float64))
        got = model.predict(x, num_threads=threads)
        agree = {"rnnfast": float(np.abs(got - want).max())}
        fns = {"rnnfast": lambda: model.predict(x, num_threads=threads),
               "numpy": lambda: ref(x.astype(np.float64))}
        if tfn:
            xt = torch.from_numpy(x)
            agree["torch"] = float(np.abs(tfn(xt).numpy() - want).max())
            fns["torch"] = lambda: tfn(xt)
        rows.append(dict(case=name + " B=32 T=10", threads=threads, max_abs_diff=agree,
                         ms=interleaved(fns, repeats=repeats)[0]))
    return rows


def layer_cases(torch, threads, repeats, quick):
    rows = []
    T = 200 if quick else 1000
    for mode in ("GRU", "LSTM"):
        for B in (1, 64):
            H = I = 256
            torch.manual_seed(0)
            m = (torch.nn.GRU if mode == "GRU" else torch.nn.LSTM)(I, H).eval()
            sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
            layer = RNNLayer(mode.lower(), [cell_weights_from_torch(
                mode, sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"])])
            x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                t_out = m(xt)[0].numpy()
            got = layer.forward(x, num_threads=threads)[0]
            fns = {"rnnfast": lambda: layer.forward(x, num_threads=threads),
                   "torch": lambda: m(xt)}
            ws = [cell_weights_from_torch(mode, sd["weight_ih_l0"], sd["weight_hh_l0"],
                                          sd["bias_ih_l0"], sd["bias_hh_l0"])]
            agree = {"rnnfast": float(np.abs(got - t_out).max())}
            n_ref = T if B == 1 else max(T // 10, 10)     # the reference is slow: time a prefix
            fns["numpy"] = lambda: reference.run_layer(mode.lower(), ws, x[:n_ref])

            def timed_torch():
                with torch.no_grad():
                    m(xt)

            fns["torch"] = timed_torch
            ms = interleaved(fns, repeats=repeats if B == 1 else max(3, repeats // 2))[0]
            ms["numpy"] *= T / n_ref                      # scaled to the whole sequence
            rows.append(dict(case="%s B=%d T=%d H=I=%d" % (mode, B, T, H), threads=threads,
                             max_abs_diff=agree, ms=ms, numpy_scaled_from_steps=n_ref))
    return rows


def concurrency_case(repeats):
    """Two calls at once from two Python threads vs the same two calls in sequence."""
    rng = np.random.default_rng(3)
    layer = RNNLayer("gru", [cell_weights_from_torch(
        "GRU", rng.uniform(-.06, .06, (768, 256)), rng.uniform(-.06, .06, (768, 256)))])
    x = rng.standard_normal((500, 4, 256)).astype(np.float32)

    def one():
        layer.forward(x, num_threads=1)

    def two_concurrent():
        ts = [threading.Thread(target=one) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    ms, _ = interleaved({"two sequential": lambda: (one(), one()), "two concurrent": two_concurrent},
                        repeats=repeats)
    return dict(case="2 calls, 1 thread each (GRU B=4 T=500 H=256)", ms=ms,
                ratio=ms["two sequential"] / ms["two concurrent"])


def print_table(rows):
    engines = ["rnnfast", "torch", "numpy"]
    head = "%-40s %3s " % ("case", "thr") + " ".join("%11s" % (e + " ms") for e in engines) \
        + " %12s %12s %10s" % ("vs torch", "vs numpy", "max|diff|")
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r["ms"]
        cells = " ".join("%11.2f" % ms[e] if e in ms else "%11s" % "-" for e in engines)
        vt = "%11.2fx" % (ms["torch"] / ms["rnnfast"]) if "torch" in ms else "%12s" % "-"
        vn = "%11.1fx" % (ms["numpy"] / ms["rnnfast"])
        print("%-40s %3d %s %s %s %10.1e" % (r["case"], r["threads"], cells, vt, vn,
                                             r["max_abs_diff"]["rnnfast"]))


def plot(rows, path):
    plt = pyplot()
    if plt is None:
        return
    labels = ["%s\n%dt" % (r["case"], r["threads"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 1.1), 5))
    w = 0.27
    for i, e in enumerate(["rnnfast", "torch", "numpy"]):
        vals = [r["ms"].get(e, np.nan) for r in rows]
        ax.bar(np.arange(len(rows)) + (i - 1) * w, vals, w, label=e)
    ax.set_yscale("log")
    ax.set_ylabel("median ms (log)")
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels(labels, fontsize=6, rotation=30, ha="right")
    ax.legend()
    ax.set_title("rnnfast vs PyTorch vs numpy reference (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("plot:", path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="T=200 for the layer cases, 5 repeats")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = 5
    try:
        import torch
    except ImportError:
        torch = None
        print("(torch not installed: PyTorch columns left empty)")
    print("rnnfast %s, numpy %s, torch %s, Python %s, %s, %d cores" % (
        rnnfast.__version__, np.__version__, torch.__version__ if torch else "-",
        platform.python_version(), platform.processor() or platform.machine(), os.cpu_count()))
    blas = blas_report()
    for b in blas:
        print("BLAS: %(api)s %(version)s kernel=%(kernel)s (%(file)s)" % b)
    rows = []
    for threads in (1, 2):
        if torch:
            torch.set_num_threads(threads)
        rows += seed_cases(torch, threads, args.repeats)
        if torch:
            rows += layer_cases(torch, threads, args.repeats, args.quick)
    print()
    print_table(rows)
    conc = concurrency_case(args.repeats)
    print()
    print("%s: sequential %.1f ms, concurrent %.1f ms -> %.2fx" % (
        conc["case"], conc["ms"]["two sequential"], conc["ms"]["two concurrent"], conc["ratio"]))
    print("(numpy reference times for batch 64 are scaled up from a prefix of the sequence)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_engine.json"), "w") as f:
        json.dump(dict(rows=rows, concurrency=conc, blas=blas, python=sys.version,
                       torch=torch.__version__ if torch else None), f, indent=1)
    plot(rows, os.path.join(args.out, "bench_engine.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
