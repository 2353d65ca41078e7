"""Many live streams through one model, with continuous batching.

A simulated server: streams (say, audio feature frames of callers, or sensor feeds)
arrive at random times, send a few frames at a time, and leave. Every tick the server
takes the frames that have arrived since the last tick, runs ONE batched step over
all streams that have frames (``model.step(chunks, streams)``: different chunk
lengths in one call, streams joining and leaving between ticks), and answers each.
Latency is measured from a chunk's arrival to its answer; throughput in frames per
second. The same loop runs with PyTorch (one batched ``gru(x, h)`` call per tick,
padded, states gathered and scattered by hand) and ONNX Runtime (a one-step export
with the state as input and output, run on the padded batch), where installed.

    python examples/streaming_server.py [--quick] [--streams 8,32,128] [--out DIR]

Prints latency percentiles and throughput per engine and number of live streams and,
with matplotlib installed, plots latency against live streams (streaming_server.png).
"""

import argparse
import os
import tempfile
import time

import numpy as np

import rnnfast
from rnnfast.graph import Graph, Step
from rnnfast.layers import CellWeights, Dense, RNNLayer
from rnnfast.model_keras import DenseNode, KerasModel, RecurrentNode

I, H, N = 32, 64, 10  # features per frame, GRU units, outputs


def build_model(seed=0):
    """A GRU(64) -> Dense(10) as rnnfast runs it (the graph a Keras Sequential of
    the two layers loads into, built from canonical layers: no framework needed), and
    its weights for the peers."""
    rng = np.random.default_rng(seed)
    u = lambda *s: rng.uniform(-0.25, 0.25, s)  # noqa: E731
    w = CellWeights(u(I, 3 * H), u(H, 3 * H), u(3 * H), u(3 * H))
    gru = RecurrentNode(
        "gru",
        "GRU",
        [RNNLayer("gru", [w])],
        return_sequences=True,
        return_state=False,
        go_backwards=False,
        zero_output_for_mask=False,
    )
    dk, db = u(H, N), u(N)
    head = DenseNode("head", Dense(dk, db))
    spec = dict(name="frames", shape=(None, None, I), dtype=np.float32, integer=False, declared=None)
    model = KerasModel(
        Graph([Step(gru, ["frames"], ["h"]), Step(head, ["h"], ["y"])], ["frames"], "y"),
        inputs=[spec],
        name="streaming_gru",
        keras_version="3",
    )
    return model, (w, dk, db)


class Traffic:
    """Simulated arrivals: ``live`` streams at a time, each sending chunks of 1-4
    frames, leaving after 20-60 frames and replaced by a new one."""

    def __init__(self, live, seed=1):
        self.rng = np.random.default_rng(seed)
        self.live = live
        self.next_id = 0
        self.left = {}

    def tick(self):
        """The chunks that arrived this tick: {stream id: frames (n, I)}; ids that left."""
        left = [sid for sid, n in self.left.items() if n <= 0]
        for sid in left:
            del self.left[sid]
        while len(self.left) < self.live:
            self.left[self.next_id] = int(self.rng.integers(20, 61))
            self.next_id += 1
        chunks = {}
        for sid in list(self.left):
            if self.rng.random() < 0.7:  # not every stream sends every tick
                n = min(self.left[sid], int(self.rng.integers(1, 5)))
                chunks[sid] = self.rng.standard_normal((n, I)).astype(np.float32)
                self.left[sid] -= n
        return chunks, left


def serve_rnnfast(model, traffic, ticks):
    streams, lat, frames = {}, [], 0
    t_start = time.perf_counter()
    for _ in range(ticks):
        chunks, left = traffic.tick()
        for sid in left:
            streams.pop(sid, None)  # a stream that leaves is simply dropped
        if not chunks:
            continue
        arrived = time.perf_counter()
        ids = list(chunks)
        for sid in ids:
            if sid not in streams:
                streams[sid] = model.stream()  # joins
        ys = model.step([chunks[i] for i in ids], [streams[i] for i in ids])
        done = time.perf_counter()
        assert len(ys) == len(ids)
        lat += [done - arrived] * len(ids)
        frames += sum(len(c) for c in chunks.values())
    return np.array(lat), frames / (time.perf_counter() - t_start)


def _padded(chunks, ids):
    T = max(len(chunks[i]) for i in ids)
    x = np.zeros((T, len(ids), I), np.float32)
    lengths = np.array([len(chunks[i]) for i in ids])
    for b, i in enumerate(ids):
        x[: lengths[b], b] = chunks[i]
    return x, lengths


def serve_torch(weights, traffic, ticks):
    import torch

    w, dk, db = weights
    gru, lin = torch.nn.GRU(I, H), torch.nn.Linear(H, N)

    def reorder(a):  # canonical z, r, h -> PyTorch r, z, n
        z, r, h = np.split(a, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)

    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.as_tensor(reorder(w.kernel).T.copy()))
        gru.weight_hh_l0.copy_(torch.as_tensor(reorder(w.recurrent_kernel).T.copy()))
        gru.bias_ih_l0.copy_(torch.as_tensor(reorder(w.bias)))
        gru.bias_hh_l0.copy_(torch.as_tensor(reorder(w.recurrent_bias)))
        lin.weight.copy_(torch.as_tensor(dk.T.copy()))
        lin.bias.copy_(torch.as_tensor(db))
    states, lat, frames = {}, [], 0
    t_start = time.perf_counter()
    for _ in range(ticks):
        chunks, left = traffic.tick()
        for sid in left:
            states.pop(sid, None)
        if not chunks:
            continue
        arrived = time.perf_counter()
        ids = list(chunks)
        x, lengths = _padded(chunks, ids)
        h0 = torch.stack([states.get(i, torch.zeros(H)) for i in ids])[None]
        with torch.no_grad():
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                torch.as_tensor(x), torch.as_tensor(lengths), enforce_sorted=False
            )
            out, hn = gru(packed, h0)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
            y = lin(out)
        for b, i in enumerate(ids):
            states[i] = hn[0, b]
        done = time.perf_counter()
        assert y.shape[1] == len(ids)
        lat += [done - arrived] * len(ids)
        frames += int(lengths.sum())
    return np.array(lat), frames / (time.perf_counter() - t_start)


def serve_onnxruntime(weights, traffic, ticks):
    """ONNX Runtime: a one-step export (state in, state out), run once per step of the
    tick's longest chunk on the padded batch; rows whose chunk ended keep their state
    (the loop does by hand what rnnfast's step does inside)."""
    import onnxruntime as ort
    import torch

    w, dk, db = weights

    class OneStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell, self.lin = torch.nn.GRUCell(I, H), torch.nn.Linear(H, N)

        def forward(self, x, h):
            h2 = self.cell(x, h)
            return self.lin(h2), h2

    m = OneStep()

    def reorder(a):
        z, r, h = np.split(a, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)

    with torch.no_grad():
        m.cell.weight_ih.copy_(torch.as_tensor(reorder(w.kernel).T.copy()))
        m.cell.weight_hh.copy_(torch.as_tensor(reorder(w.recurrent_kernel).T.copy()))
        m.cell.bias_ih.copy_(torch.as_tensor(reorder(w.bias)))
        m.cell.bias_hh.copy_(torch.as_tensor(reorder(w.recurrent_bias)))
        m.lin.weight.copy_(torch.as_tensor(dk.T.copy()))
        m.lin.bias.copy_(torch.as_tensor(db))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "step.onnx")
        kw = dict(input_names=["x", "h"], output_names=["y", "h_new"], dynamic_axes={"x": {0: "b"}, "h": {0: "b"}})
        try:
            torch.onnx.export(m, (torch.zeros(2, I), torch.zeros(2, H)), path, dynamo=False, **kw)
        except TypeError:
            torch.onnx.export(m, (torch.zeros(2, I), torch.zeros(2, H)), path, **kw)
        so = ort.SessionOptions()
        so.intra_op_num_threads = rnnfast.get_num_threads()
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    states, lat, frames = {}, [], 0
    t_start = time.perf_counter()
    for _ in range(ticks):
        chunks, left = traffic.tick()
        for sid in left:
            states.pop(sid, None)
        if not chunks:
            continue
        arrived = time.perf_counter()
        ids = list(chunks)
        x, lengths = _padded(chunks, ids)
        h = np.stack([states.get(i, np.zeros(H, np.float32)) for i in ids])
        for t in range(x.shape[0]):
            y, h_new = sess.run(None, {"x": x[t], "h": h})
            going = (t < lengths)[:, None]
            h = np.where(going, h_new, h)
        for b, i in enumerate(ids):
            states[i] = h[b]
        done = time.perf_counter()
        lat += [done - arrived] * len(ids)
        frames += int(lengths.sum())
    return np.array(lat), frames / (time.perf_counter() - t_start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few ticks, small loads (the test's mode)")
    ap.add_argument("--streams", default="4,16,64,256", help="live streams, comma-separated")
    ap.add_argument("--ticks", type=int, default=400)
    ap.add_argument("--out", default=".", help="where the plot goes")
    args = ap.parse_args(argv)
    loads = [int(v) for v in args.streams.split(",")]
    if args.quick:
        loads, args.ticks = [2, 8], 20
    model, weights = build_model()
    engines = {"rnnfast": lambda tr, n: serve_rnnfast(model, tr, n)}
    for name, fn, module in (("PyTorch", serve_torch, "torch"), ("ONNX Runtime", serve_onnxruntime, "onnxruntime")):
        try:
            __import__(module)
            if module == "onnxruntime":
                __import__("torch")  # the export
            engines[name] = lambda tr, n, fn=fn: fn(weights, tr, n)
        except ImportError:
            print("(%s not installed: left out)" % name)
    rows = []
    print("%-13s %6s %10s %10s %10s %14s" % ("engine", "live", "p50 ms", "p90 ms", "p99 ms", "frames/s"))
    for live in loads:
        for name, serve in engines.items():
            lat, fps = serve(Traffic(live), args.ticks)
            p50, p90, p99 = (1e3 * np.percentile(lat, q) for q in (50, 90, 99))
            rows.append(dict(engine=name, live=live, p50=p50, p90=p90, p99=p99, fps=fps))
            print("%-13s %6d %10.3f %10.3f %10.3f %14.0f" % (name, live, p50, p90, p99, fps))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return rows
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in engines:
        pts = [r for r in rows if r["engine"] == name]
        ax.plot([r["live"] for r in pts], [r["p50"] for r in pts], "o-", label="%s p50" % name)
        ax.plot([r["live"] for r in pts], [r["p99"] for r in pts], "x--", label="%s p99" % name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("live streams")
    ax.set_ylabel("latency per tick (ms)")
    ax.set_title("GRU(64) -> Dense(10), one batched step per tick")
    ax.legend(fontsize=7)
    path = os.path.join(args.out, "streaming_server.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)
    return rows


if __name__ == "__main__":
    main()
