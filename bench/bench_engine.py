"""First benchmark of the engine: rnnfast vs the float64 numpy reference vs PyTorch.

Cases: the seed's two Keras-shaped models (batch 32, input (10, 50)); GRU and LSTM
layers with H = I = 256, T = 1000, batch 1 and 64; each at 1 and 2 threads. Every
engine runs the same weights and input (the PyTorch peer of the seed models is built by
the public converter rnnfast.io.torch_convert.to_torch_module); every output must agree
with the reference's to atol 1e-5, rtol 1e-4 before anything is timed (the script stops
otherwise); timings are medians of interleaved runs after warm-up. Also measures two concurrent
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

import rnnfast
from rnnfast import reference
from rnnfast._bench import disclosure
from rnnfast.demo import seed_models
from rnnfast.io.torch_convert import cell_weights_from_torch, to_torch_module
from rnnfast.layers import RNNLayer

from _common import blas_report, interleaved, pyplot  # the script's folder is on sys.path

#: Every engine's output must agree with the others' to the contract's float32 tolerance
#: (API.md, "Numerics") before anything is timed.
AGREE = {"atol": 1e-5, "rtol": 1e-4}


def check_agree(case, engine, got, want):
    """Stop the benchmark when ``engine``'s output is not the reference's: timings of
    different work mean nothing. Returns the largest absolute difference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, err_msg="%s: %s disagrees" % (case, engine), **AGREE)
    return float(np.abs(got - want).max())


def torch_seed_model(torch, model):
    """The PyTorch peer of a :class:`rnnfast.Sequential` of recurrent layers and Dense:
    each recurrent layer made into its ``nn.GRU`` / ``nn.LSTM`` / ``nn.RNN`` by the public
    converter (:func:`rnnfast.io.torch_convert.to_torch_module`), each Dense into an
    ``nn.Linear`` and its activation. Returns ``run(x)`` for a batch-major tensor."""
    acts = {
        "linear": lambda y: y,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "softmax": lambda y: torch.softmax(y, -1),
    }
    steps = []
    for layer in model.layers:
        if isinstance(layer, RNNLayer):
            steps.append(("rnn", to_torch_module(layer, batch_first=True)))
        else:
            lin = torch.nn.Linear(*layer.kernel.shape, bias=layer.bias is not None)
            sd = {"weight": torch.from_numpy(np.array(layer.kernel.T, order="C"))}  # a writable copy
            if layer.bias is not None:
                sd["bias"] = torch.from_numpy(layer.bias.copy())
            lin.load_state_dict(sd)
            lin.eval()
            steps.append(("dense", lambda y, lin=lin, act=acts[layer.activation]: act(lin(y))))
    options = [opt for _, opt in model._steps]  # return_sequences / merge_mode per layer

    def run(x_bm):
        with torch.no_grad():
            y = x_bm
            for (kind, m), opt in zip(steps, options):
                if kind == "dense":
                    y = m(y)
                    continue
                out, h = m(y)
                h = h[0] if isinstance(h, tuple) else h  # LSTM: (h_n, c_n)
                if opt["return_sequences"]:
                    y = out
                else:  # Keras' last output: the final state of each direction, side by side
                    y = torch.cat(list(h[-(2 if m.bidirectional else 1) :]), -1)
                if m.bidirectional and opt["merge_mode"] != "concat":
                    raise NotImplementedError("merge_mode=%r" % opt["merge_mode"])
            return y

    return run


def seed_cases(torch, threads, repeats):
    rows = []
    x = np.random.default_rng(1).standard_normal((32, 10, 50)).astype(np.float32)
    x64 = x.astype(np.float64)
    for name, model, ref in seed_models(0):
        case = name + " B=32 T=10"
        want = ref(x64)
        agree = {"rnnfast": check_agree(case, "rnnfast", model.predict(x, num_threads=threads), want)}
        fns = {
            "rnnfast": lambda model=model: model.predict(x, num_threads=threads),
            "numpy": lambda ref=ref: ref(x64),
        }
        if torch:
            tfn, xt = torch_seed_model(torch, model), torch.from_numpy(x)
            agree["torch"] = check_agree(case, "torch", tfn(xt).numpy(), want)
            fns["torch"] = lambda tfn=tfn, xt=xt: tfn(xt)
        rows.append(dict(case=case, threads=threads, max_abs_diff=agree, ms=interleaved(fns, repeats=repeats)[0]))
    return rows


def layer_cases(torch, threads, repeats, quick):
    rows = []
    T = 200 if quick else 1000
    H = I = 256
    for mode in ("GRU", "LSTM"):
        for B in (1, 64):
            case = "%s B=%d T=%d H=I=%d" % (mode, B, T, H)
            torch.manual_seed(0)
            m = (torch.nn.GRU if mode == "GRU" else torch.nn.LSTM)(I, H).eval()
            sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
            ws = [
                cell_weights_from_torch(
                    mode, *(sd[n + "_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                )
            ]
            layer = RNNLayer(mode.lower(), ws)
            x = np.random.default_rng(2).standard_normal((T, B, I)).astype(np.float32)
            xt = torch.from_numpy(x)
            with torch.no_grad():
                t_out = m(xt)[0].numpy()
            agree = {"rnnfast": check_agree(case, "rnnfast", layer.forward(x, num_threads=threads)[0], t_out)}
            n_ref = T if B == 1 else max(T // 10, 10)  # the reference is slow: time a prefix
            check_agree(case, "numpy", reference.run_layer(mode.lower(), ws, x[:n_ref])[0], t_out[:n_ref])

            def timed_torch(m=m, xt=xt):
                with torch.no_grad():
                    m(xt)

            fns = {
                "rnnfast": lambda layer=layer, x=x: layer.forward(x, num_threads=threads),
                "torch": timed_torch,
                "numpy": lambda mode=mode, ws=ws, x=x, n=n_ref: reference.run_layer(mode.lower(), ws, x[:n]),
            }
            ms = interleaved(fns, repeats=repeats if B == 1 else max(3, repeats // 2))[0]
            ms["numpy"] *= T / n_ref  # scaled to the whole sequence
            rows.append(dict(case=case, threads=threads, max_abs_diff=agree, ms=ms, numpy_scaled_from_steps=n_ref))
    return rows


def concurrency_case(repeats):
    """Two calls at once from two Python threads vs the same two calls in sequence."""
    rng = np.random.default_rng(3)
    layer = RNNLayer(
        "gru",
        [cell_weights_from_torch("GRU", rng.uniform(-0.06, 0.06, (768, 256)), rng.uniform(-0.06, 0.06, (768, 256)))],
    )
    x = rng.standard_normal((500, 4, 256)).astype(np.float32)

    def one():
        layer.forward(x, num_threads=1)

    def two_concurrent():
        ts = [threading.Thread(target=one) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    ms, _ = interleaved({"two sequential": lambda: (one(), one()), "two concurrent": two_concurrent}, repeats=repeats)
    return dict(
        case="2 calls, 1 thread each (GRU B=4 T=500 H=256)", ms=ms, ratio=ms["two sequential"] / ms["two concurrent"]
    )


def print_table(rows):
    engines = ["rnnfast", "torch", "numpy"]
    head = (
        "%-40s %3s " % ("case", "thr")
        + " ".join("%11s" % (e + " ms") for e in engines)
        + " %12s %12s %10s" % ("vs torch", "vs numpy", "max|diff|")
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ms = r["ms"]
        cells = " ".join("%11.2f" % ms[e] if e in ms else "%11s" % "-" for e in engines)
        vt = "%11.2fx" % (ms["torch"] / ms["rnnfast"]) if "torch" in ms else "%12s" % "-"
        vn = "%11.1fx" % (ms["numpy"] / ms["rnnfast"])
        print("%-40s %3d %s %s %s %10.1e" % (r["case"], r["threads"], cells, vt, vn, r["max_abs_diff"]["rnnfast"]))
    print(disclosure())


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
    print(
        "rnnfast %s, numpy %s, torch %s, Python %s, %s, %d cores"
        % (
            rnnfast.__version__,
            np.__version__,
            torch.__version__ if torch else "-",
            platform.python_version(),
            platform.processor() or platform.machine(),
            os.cpu_count(),
        )
    )
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
    print(
        "%s: sequential %.1f ms, concurrent %.1f ms -> %.2fx"
        % (conc["case"], conc["ms"]["two sequential"], conc["ms"]["two concurrent"], conc["ratio"])
    )
    print("(numpy reference times for batch 64 are scaled up from a prefix of the sequence)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench_engine.json"), "w") as f:
        json.dump(
            dict(
                rows=rows, concurrency=conc, blas=blas, python=sys.version, torch=torch.__version__ if torch else None
            ),
            f,
            indent=1,
        )
    plot(rows, os.path.join(args.out, "bench_engine.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
