"""Scoring many sequences past one process: rnnfast locally, on Dask and on Ray Data,
with 1 and 2 workers of one thread each, against ONNX Runtime in the same Ray
pipeline (the peer users would otherwise pick).

    .venv/bin/python bench/scale_out.py --model digits --budget 480   # the issue's job in ~6 min (below)
    .venv/bin/python bench/scale_out.py                  # seed-shaped BiGRU, 100,000 x 50 steps, 3 rounds
    .venv/bin/python bench/scale_out.py --quick          # 10,000 sequences, 1 round
    .venv-bench/bin/python bench/scale_out.py --plot bench/scale_out_digits.json   # the plot only

It needs Dask, Ray, ONNX Runtime and PyTorch (``make test``'s ``.venv`` has them) and
matplotlib for the plot (else it says so and writes the JSON; ``--plot`` draws it later
where matplotlib is).

How long: the whole comparison (every pipeline below, 100,000 sequences of 50 steps)
with ``--model digits`` is about 10 CPU seconds per rnnfast pipeline and 12 per ONNX
Runtime one (measured on a 10,000-row slice: 1.0 and 1.2 CPU s), so a round of the nine
pipelines is about 1.5 minutes on two idle cores (Ray's actor starts, a few seconds per
Ray job, included), plus about a minute of set-up, reference and warm-up: 3 rounds in
about 6 minutes. ``--budget 480`` stops after the last round that fits in 8 minutes (at
least one). The seed-shaped model costs about 4x the CPU per pipeline (40 CPU s at
100,000 rows): one round takes most of 8 minutes there, and took 48 minutes (3 rounds)
on a loaded machine.

The models (``--model``), each as a PyTorch module whose weights rnnfast converts and
ONNX Runtime reads from a ``torch.onnx.export`` (native ONNX GRU / LSTM ops):

- ``seed`` (default): the seed's ``BiGRU(128) -> BiGRU(64) -> Dense(1, sigmoid)`` on 50
  features, a score per step (bench/compare.py's "seed BiGRU" case: seeded weights),
  run by rnnfast as a :class:`rnnfast.Sequential`.
- ``digits``: the bundled ``digits_lstm.pt`` (``nn.LSTM(8, 32, num_layers=2,
  bidirectional=True)``) and its head (``logits = cat(h_n[-2], h_n[-1]) @ W.T + b``), run
  by rnnfast as a :class:`rnnfast.TorchRNN` with ``return_state=True`` and the head in
  numpy.

The job: score 100,000 sequences of T=50 steps and get the scores back in the driver.
The pipelines (all times are wall time of the whole job):

- ``rnnfast local``: one process, the model over blocks of 2,000 rows, 1 or 2 threads.
- ``rnnfast dask``: ``rnnfast.dask.predict(model, x)`` on a ``LocalCluster(n_workers=w,
  threads_per_worker=1)``; ``x`` persisted on the workers first (blocks of 2,000 rows),
  not timed.
- ``rnnfast ray`` / ``onnxruntime ray``: ``ds.map_batches(cls, batch_size=2000,
  num_cpus=1, compute=ActorPoolStrategy(size=w))`` on ``ray.init(num_cpus=2)``, the data
  already in the object store (``from_numpy(...).materialize()``), not timed; ``cls`` is
  ``rnnfast.ray.Predictor`` (noting its process's CPU time) or an ONNX Runtime session
  with one intra-op thread. The actors' start (model loading) is part of each job, as
  it is for a user.
- ``onnxruntime local``: one ``InferenceSession`` with one thread, for reference.

Measured in interleaved rounds after a warm-up round on a tenth of the rows (each round
runs every pipeline once, the order rotated), medians reported; the machine is shared,
so its load average is recorded per run. Scaling efficiency = (sequences/s with 2
workers) / (2 x with 1 worker). Beside the wall time, the CPU seconds the workers spent
on the job (getrusage in the driver for local runs, in each Dask worker, in each Ray
actor from its model's loading on): a 2-worker run that needs no more CPU than a
1-worker run would scale perfectly on idle cores, which a shared machine cannot show in
wall time. Writes ``scale_out_<model>.json`` and ``scale_out_<model>.png`` to ``--out``
(default: bench/).
"""

import argparse
import io
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import rnnfast  # noqa: E402

DATA = os.path.join(os.path.dirname(rnnfast.__file__), "data")
MODEL = os.path.join(DATA, "digits_lstm.pt")
HEAD = os.path.join(DATA, "digits_lstm_head.npz")
BLOCK = 2000
SEED_LAYERS = [(128, True), (64, True)]  # BiGRU(128) -> BiGRU(64), sequences
FEATURES = {"seed": 50, "digits": 8}
MODEL_TEXT = {
    "seed": "BiGRU(128) -> BiGRU(64) -> Dense(1, sigmoid) per step, 50 features (seeded)",
    "digits": "digits_lstm.pt: LSTM(8, 32, 2 layers, bidirectional) + Linear(64, 10) on h_n",
}


def cpu_seconds():
    """CPU seconds (user + system, all threads) this process has used."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the models -----------------------------------------------------------------------------


def _digits_head():
    h = np.load(HEAD)
    return np.ascontiguousarray(h["weight"].T), h["bias"]


def _logits(h):
    """digits: h_n (L*D, B, 32) -> logits (B, 10)."""
    W, b = _digits_head()
    return np.concatenate([h[-2], h[-1]], axis=1) @ W + b


def _dask_head(hb):
    return _logits(hb)


def torch_net(name):
    """The PyTorch module: (B, T, I) -> the scores."""
    import torch

    nn = torch.nn
    if name == "digits":

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(8, 32, num_layers=2, bidirectional=True, batch_first=True)
                self.head = nn.Linear(64, 10)

            def forward(self, x):
                _, (h, _c) = self.lstm(x)
                return self.head(torch.cat([h[-2], h[-1]], dim=1))

        net = Net().eval()
        net.lstm.load_state_dict(torch.load(MODEL, weights_only=True))
        W, b = _digits_head()
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(W.T.copy()))
            net.head.bias.copy_(torch.from_numpy(b))
        return net

    class Seed(nn.Module):  # bench/compare.py's seed BiGRU case
        def __init__(self):
            super().__init__()
            rnns, I = [], FEATURES["seed"]
            for H, bi in SEED_LAYERS:
                rnns.append(nn.GRU(I, H, bidirectional=bi))
                I = 2 * H if bi else H
            self.rnns = nn.ModuleList(rnns)
            self.head = nn.Linear(I, 1)

        def forward(self, x):
            y = x.transpose(0, 1)
            for m in self.rnns:
                y = m(y)[0]
            return torch.sigmoid(self.head(y.transpose(0, 1)))

    torch.manual_seed(0)
    net = Seed().eval()
    with torch.no_grad():  # lively weights, as trained models have
        for p in net.parameters():
            p.uniform_(-0.08, 0.08)
    return net


def rnnfast_model(name, net):
    """The same weights as an rnnfast model."""
    if name == "digits":
        return rnnfast.load(MODEL, batch_first=True)
    from rnnfast.io.torch_convert import cell_weights_from_torch
    from rnnfast.layers import Dense, RNNLayer

    steps = []
    for m in net.rnns:
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        ws = [
            cell_weights_from_torch(
                "GRU", sd["weight_ih_l0" + s], sd["weight_hh_l0" + s], sd["bias_ih_l0" + s], sd["bias_hh_l0" + s]
            )
            for s in ([""] + (["_reverse"] if m.bidirectional else []))
        ]
        steps.append((RNNLayer("gru", ws), dict(return_sequences=True)))
    steps.append(Dense(net.head.weight.detach().numpy().T.copy(), net.head.bias.detach().numpy().copy(), "sigmoid"))
    return rnnfast.Sequential(steps)


def onnx_bytes(net, features):
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(4, 50, features),),
            buf,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    return buf.getvalue()


def ort_session(blob, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


# -- Ray callables ------------------------------------------------------------------------


def _ray_classes():
    from rnnfast.ray import Predictor

    class RnnfastScorer(Predictor):
        """rnnfast.ray.Predictor, noting its process's CPU time (and, for the digits
        model, the head applied to h_n)."""

        def __init__(self, model, digits):
            self.cpu0 = cpu_seconds()
            self.digits = digits
            if digits:
                super().__init__(
                    model,
                    input_column="data",
                    output_column=["out", "h", "c"],
                    return_state=True,
                    drop_input=True,
                )
            else:
                super().__init__(model, input_column="data", output_column="y", drop_input=True)

        def __call__(self, batch):
            out = super().__call__(batch)
            if self.digits:
                out = {"y": _logits(np.ascontiguousarray(out["h"].transpose(1, 0, 2)))}
            return _with_cpu(out, self.cpu0)

    class OrtScorer:
        def __init__(self, blob):
            import ray

            self.cpu0 = cpu_seconds()
            cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
            self.sess = ort_session(blob, max(1, cpus))

        def __call__(self, batch):
            return _with_cpu({"y": self.sess.run(["y"], {"x": batch["data"]})[0]}, self.cpu0)

    return RnnfastScorer, OrtScorer


def _with_cpu(out, cpu0):
    """The batch's result with this actor's pid and the CPU seconds it has used since it
    started loading its model."""
    n = len(out["y"])
    out["pid"] = np.full(n, os.getpid())
    out["cpu"] = np.full(n, cpu_seconds() - cpu0)
    return out


# -- the pipelines ------------------------------------------------------------------------


class Pipelines:
    """Every pipeline on two inputs: ``"full"`` (timed) and ``"warm"`` (a tenth, for the
    warm-up round)."""

    def __init__(self, name, x, engines):
        self.name = name
        self.digits = name == "digits"
        self.x = {"full": x, "warm": x[: max(BLOCK, len(x) // 10 // BLOCK * BLOCK)]}
        self.engines = engines
        net = torch_net(name)
        self.model = rnnfast_model(name, net)
        self.blob = onnx_bytes(net, FEATURES[name]) if "onnxruntime" in engines else None
        self.clusters = {}
        self.ray_ds = None

    def _score(self, xb, threads):
        if self.digits:
            return _logits(self.model(xb, num_threads=threads)[1][0])
        return self.model.predict(xb, num_threads=threads)

    # each pipeline returns (the scores, the CPU seconds its workers spent)
    def rnnfast_local(self, threads, which="full"):
        x = self.x[which]
        c = cpu_seconds()
        y = np.concatenate([self._score(x[s : s + BLOCK], threads) for s in range(0, len(x), BLOCK)])
        return y, cpu_seconds() - c

    def ort_local(self, threads, which="full"):
        x = self.x[which]
        c = cpu_seconds()
        sess = ort_session(self.blob, threads)
        y = np.concatenate([sess.run(["y"], {"x": x[s : s + BLOCK]})[0] for s in range(0, len(x), BLOCK)])
        return y, cpu_seconds() - c

    # Dask
    def start_dask(self, workers):
        import logging

        import dask.array as da
        import distributed

        logging.getLogger("distributed").setLevel(logging.ERROR)
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        )
        client = distributed.Client(cluster, set_as_default=False)
        xd = {k: client.persist(da.from_array(v, chunks=(BLOCK, -1, -1))) for k, v in self.x.items()}
        with client.as_current():
            distributed.wait(list(xd.values()))
        self.clusters[workers] = (cluster, client, xd)

    def rnnfast_dask(self, workers, which="full"):
        import dask.array as da

        import rnnfast.dask

        cluster, client, xd = self.clusters[workers]
        c = client.run(cpu_seconds)
        if self.digits:
            _, (h, _c) = rnnfast.dask.predict(self.model, xd[which], return_state=True)
            y = da.blockwise(_dask_head, "bk", h, "lbj", new_axes={"k": 10}, dtype=np.float32, concatenate=True)
        else:
            y = rnnfast.dask.predict(self.model, xd[which])
        y = client.compute(y).result()
        c2 = client.run(cpu_seconds)
        return y, sum(c2[w] - c[w] for w in c)

    # Ray
    def start_ray(self):
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        self.ray_ds = {k: ray.data.from_numpy(np.split(v, len(v) // BLOCK)).materialize() for k, v in self.x.items()}
        self.ray_classes = _ray_classes()
        self.model_ref = ray.put(self.model)  # sent once through the object store

    def _ray(self, cls, args, workers, which):
        import ray

        out = self.ray_ds[which].map_batches(
            cls,
            fn_constructor_args=args,
            batch_size=BLOCK,
            num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            batch_format="numpy",
        )
        batches = list(out.iter_batches(batch_size=None, batch_format="numpy"))
        cpu = {}
        for b in batches:
            for pid, t in zip(b["pid"], b["cpu"]):
                cpu[pid] = max(cpu.get(pid, 0.0), t)
        return np.concatenate([b["y"] for b in batches]), sum(cpu.values())

    def rnnfast_ray(self, workers, which="full"):
        return self._ray(self.ray_classes[0], (self.model_ref, self.digits), workers, which)

    def ort_ray(self, workers, which="full"):
        return self._ray(self.ray_classes[1], (self.blob,), workers, which)

    def close(self):
        for cluster, client, _ in self.clusters.values():
            client.close()
            cluster.close()
        if self.ray_ds is not None:
            import ray

            ray.shutdown()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("seed", "digits"), default="seed")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--time", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000 rows, 1 round")
    ap.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="stop after the last round that fits in this wall time, counted from the start "
        "(at least one round runs; the rounds run are in the JSON)",
    )
    ap.add_argument("--engines", default="local,dask,ray,onnxruntime")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--plot", metavar="JSON", help="only draw the plot of an earlier run's JSON")
    args = ap.parse_args()
    if args.plot:
        with open(args.plot) as f:
            d = json.load(f)
        _plot(d["rows"], d["scaling_efficiency"], d["meta"], args.plot[:-5] + ".png", d.get("cpu_seconds_ratio"))
        return
    if args.quick:
        args.rows, args.rounds = 10_000, 1
    args.rows -= args.rows % BLOCK
    engines = set(args.engines.split(","))
    warnings.filterwarnings("ignore")
    x = np.random.default_rng(0).standard_normal((args.rows, args.time, FEATURES[args.model])).astype(np.float32)
    load_before = os.getloadavg()
    t_start = time.time()
    p = Pipelines(args.model, x, engines)
    runs = {}
    if "local" in engines:
        runs["rnnfast local, 1 thread"] = lambda which: p.rnnfast_local(1, which)
        runs["rnnfast local, 2 threads"] = lambda which: p.rnnfast_local(2, which)
        if "onnxruntime" in engines:
            runs["onnxruntime local, 1 thread"] = lambda which: p.ort_local(1, which)
    if "dask" in engines:
        for w in (1, 2):
            p.start_dask(w)
            runs["rnnfast dask, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.rnnfast_dask(w, which)
    if "ray" in engines:
        p.start_ray()
        for w in (1, 2):
            runs["rnnfast ray, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.rnnfast_ray(w, which)
            if "onnxruntime" in engines:
                runs["onnxruntime ray, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.ort_ray(w, which)
    print(
        "model %s: %d sequences of %d steps, %d rounds; load average %.1f %.1f %.1f"
        % ((args.model, args.rows, args.time, args.rounds) + load_before),
        flush=True,
    )
    reference = {k: p.rnnfast_local(1, k)[0] for k in ("warm", "full")}
    times = {k: [] for k in runs}
    cpus = {k: [] for k in runs}
    loads = {k: [] for k in runs}
    agree = {}
    names = list(runs)
    rounds_run, round_s = 0, 0.0
    for r in range(-1, args.rounds):  # round 0: the warm-up, not counted
        if args.budget and rounds_run and time.time() - t_start + round_s > args.budget:
            print("--budget %.0f s: stopping after %d round(s)" % (args.budget, rounds_run), flush=True)
            break
        t_round = time.time()
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            which = "warm" if r < 0 else "full"
            t = time.perf_counter()
            y, dc = runs[name](which)
            dt = time.perf_counter() - t
            ref = reference[which]
            if which == "full" and name not in agree:
                agree[name] = dict(
                    bitwise=bool(y.dtype == ref.dtype and y.shape == ref.shape and y.tobytes() == ref.tobytes()),
                    max_abs_diff=float(np.abs(y.astype(np.float64) - ref).max()),
                )
            if r < 0:
                print("warm-up  %-32s %7.2f s" % (name, dt), flush=True)
                continue
            times[name].append(dt)
            cpus[name].append(dc)
            loads[name].append(os.getloadavg()[0])
            print(
                "round %d  %-32s %7.2f s  %9.0f seq/s  %6.1f cpu-s  load %.1f"
                % (r + 1, name, dt, args.rows / dt, dc, os.getloadavg()[0]),
                flush=True,
            )
        if r >= 0:
            rounds_run += 1
            round_s = time.time() - t_round  # the next round is assumed to take as long
    p.close()
    load_after = os.getloadavg()
    rows = []
    for name in names:
        med = float(np.median(times[name]))
        cpu = float(np.median(cpus[name]))
        rows.append(
            dict(
                pipeline=name,
                median_s=med,
                best_s=float(min(times[name])),
                times_s=times[name],
                seq_per_s=args.rows / med,
                cpu_s=cpu,
                cpu_s_all=cpus[name],
                seq_per_cpu_s=args.rows / cpu,
                load_average=loads[name],
                **agree[name],
            )
        )
    by = {r["pipeline"]: r for r in rows}
    eff, cpu_eff = {}, {}
    pairs = [(b, b + ", 1 worker", b + ", 2 workers") for b in ("rnnfast dask", "rnnfast ray", "onnxruntime ray")]
    pairs.append(("rnnfast local (threads)", "rnnfast local, 1 thread", "rnnfast local, 2 threads"))
    for key, a, b in pairs:
        one, two = by.get(a), by.get(b)
        if one and two:
            eff[key] = two["seq_per_s"] / (2 * one["seq_per_s"])
            cpu_eff[key] = one["cpu_s"] / two["cpu_s"]
    print()
    print(
        "| pipeline | median s | sequences/s | vs onnxruntime ray | CPU s | sequences/CPU s "
        "| agrees with rnnfast local |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        w = r["pipeline"].split(", ")[-1]
        peer = by.get("onnxruntime ray, " + w)
        vs = "%.2fx" % (r["seq_per_s"] / peer["seq_per_s"]) if peer and not r["pipeline"].startswith("onnx") else ""
        ok = "bitwise" if r["bitwise"] else "max abs diff %.1e" % r["max_abs_diff"]
        print(
            "| %s | %.2f | %.0f | %s | %.1f | %.0f | %s |"
            % (r["pipeline"], r["median_s"], r["seq_per_s"], vs, r["cpu_s"], r["seq_per_cpu_s"], ok)
        )
    print()
    for k, v in eff.items():
        print(
            "scaling 1 -> 2, %s: wall-time efficiency %.0f%%, CPU seconds 1 / 2 = %.0f%%"
            % (k, 100 * v, 100 * cpu_eff[k])
        )
    import dask
    import onnxruntime
    import ray

    meta = dict(
        rows=args.rows,
        time=args.time,
        features=FEATURES[args.model],
        block=BLOCK,
        rounds=rounds_run,
        budget_s=args.budget,
        model=args.model,
        model_description=MODEL_TEXT[args.model],
        cpu=_cpu(),
        cores=os.cpu_count(),
        load_average_before=load_before,
        load_average_after=load_after,
        wall_s=time.time() - t_start,
        date=time.strftime("%Y-%m-%d %H:%M"),
        versions=dict(
            rnnfast=rnnfast.__version__,
            dask=dask.__version__,
            ray=ray.__version__,
            onnxruntime=onnxruntime.__version__,
            python=platform.python_version(),
        ),
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scale_out_%s.json" % args.model), "w") as f:
        json.dump(dict(meta=meta, rows=rows, scaling_efficiency=eff, cpu_seconds_ratio=cpu_eff), f, indent=1)
    _plot(rows, eff, meta, os.path.join(args.out, "scale_out_%s.png" % args.model), cpu_eff)


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _plot(rows, eff, meta, path, cpu_eff=None):
    from _common import pyplot

    plt = pyplot()
    if plt is None:
        return
    groups = ["rnnfast local", "onnxruntime local", "rnnfast dask", "rnnfast ray", "onnxruntime ray"]
    by = {r["pipeline"]: r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, key, ylabel, effs in (
        (axes[0], "seq_per_s", "sequences / s (wall time)", eff),
        (axes[1], "seq_per_cpu_s", "sequences / CPU second (workers)", cpu_eff or {}),
    ):
        xs, labels = [], []
        for i, g in enumerate(groups):
            for suffix in (", 1 thread", ", 1 worker", ", 2 threads", ", 2 workers"):
                r = by.get(g + suffix)
                if r is None:
                    continue
                two = "2" in suffix
                x = i + (0.2 if two else -0.2)
                ax.bar(
                    x,
                    r[key],
                    width=0.38,
                    color="#1f77b4" if g.startswith("rnnfast") else "#ff7f0e",
                    alpha=1.0 if two else 0.55,
                    edgecolor="black",
                    linewidth=0.5,
                )
                ax.text(x, r[key], "%.0f" % r[key], ha="center", va="bottom", fontsize=7)
            k = "rnnfast local (threads)" if g == "rnnfast local" else g
            xs.append(i)
            labels.append(g.replace(" ", "\n", 1) + ("\n%.0f%%" % (100 * effs[k]) if k in effs else ""))
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(ylabel)
    axes[0].set_title("wall time; % = scaling efficiency 1 -> 2", fontsize=8)
    axes[1].set_title("CPU seconds; % = CPU(1) / CPU(2)", fontsize=8)
    fig.suptitle(
        "%d sequences x %d steps, %s; light: 1 worker (thread), dark: 2\n%s, %d cores, shared "
        "(load average %.1f before, %.1f after)"
        % (
            meta["rows"],
            meta["time"],
            meta["model_description"],
            meta["cpu"][:30],
            meta["cores"],
            meta["load_average_before"][0],
            meta["load_average_after"][0],
        ),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    main()
