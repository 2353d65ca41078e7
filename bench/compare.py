"""rnnfast against the peers: PyTorch, ONNX Runtime, OpenVINO and Keras (TensorFlow).

Every case builds one random-weight model (a PyTorch module, seeded) and gives the
same weights to every installed engine: rnnfast (through its PyTorch converter),
PyTorch itself, ONNX Runtime and OpenVINO (an ONNX export of the module; OpenVINO
forced to f32), and Keras 3 on TensorFlow (weights converted to Keras' layout, run as
``tf.function(jit_compile=True)`` around ``model(x, training=False)``).

Three whole PyTorch models follow the grid (``whole_cases``: a text classifier,
Embedding -> BiLSTM -> Linear; a speech model, Conv1d + BatchNorm -> BiGRU -> Linear; one
step of an attention decoder), at B = 1 and 64: rnnfast runs them through
``rnnfast.from_torch(module, example_inputs)`` (an in-memory ONNX export), the others
as for the grid; Keras has no row.

The ONNX columns: ``rnnfast-onnx`` loads the very ``.onnx`` file ONNX Runtime and
OpenVINO run (``rnnfast.load(path)``, then ``model.run(None, feeds)``), and the
report sets its call time and its load time (the median of five loads of the file in
the worker) against ONNX Runtime's (the session creation, timed alike) on every row,
with their geometric means. The file is exported by a worker of its own (``onnx-export``)
before any engine builds the case, so that every engine loads a file another process wrote.

Each engine runs in its own worker process, one set of workers per thread count (an
engine's thread pool, still spinning after its turn, would otherwise steal a core from
the next engine; thread settings of TensorFlow and OpenVINO are per process anyway).
The parent drives the workers over pipes: per case, each worker builds the model and
runs it once on the same seeded input, and the parent checks the outputs against
rnnfast's; then timing goes in rounds, each engine in turn running a few calls (about
45 ms' worth) with a pause between turns and the order rotating every round, until
every engine has spent its budget. Times are medians of all calls. The machine's
sgemm peak is measured by the script itself, in a process of its own.

    python bench/compare.py [--quick] [--threads 1,2] [--cases LSTM] [--out bench/results]
    python bench/compare.py --quick --engines rnnfast,onnxruntime,rnnfast-onnx   # the ONNX columns only
    python bench/compare.py --memory          # peak memory per engine, long sequence
    python bench/compare.py --models          # whole Keras models (bench/whole_models.py)

Install the peers and run with ``make compare`` / ``make compare-quick`` (a separate .venv-bench).
Writes compare.json and compare.png to --out.

``--model PATH`` (``python bench/compare.py --model my.keras``) times the user's own
model file (Keras or PyTorch) with ``rnnfast bench`` once per thread count: against
PyTorch and ONNX Runtime for a PyTorch file, against
Keras (on TensorFlow here) for a Keras file, each timed as ``rnnfast bench`` documents
(in one process, not a worker per engine). Every table ends with a line naming the
machine, rnnfast's kernels, the BLAS and the load average it was measured under.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import whole_models  # whole Keras models (--models)

from _common import blas_report, pyplot  # the script's folder is on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))

ENGINES = ("rnnfast", "torch", "onnxruntime", "openvino", "keras", "rnnfast-onnx")
#: Engines that are rnnfast itself (not peers): rnnfast-onnx loads the .onnx file that
#: ONNX Runtime and OpenVINO run (rnnfast.load), the ONNX columns of the report.
OWN = ("rnnfast", "rnnfast-onnx")
# The modules each engine's worker imports (torch everywhere: it builds the model).
NEEDS = {
    "rnnfast": ("rnnfast", "torch"),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnx", "torch"),
    "openvino": ("openvino", "onnx", "torch"),
    "keras": ("keras", "tensorflow", "torch"),
    "rnnfast-onnx": ("rnnfast", "onnx", "torch"),
    "onnx-export": ("onnx", "torch"),
}
#: Engines that run the case's exported .onnx file. The file is written by a worker of
#: its own (``onnx-export``) before any of them builds the case, so that none of them
#: loads it in a process that has just exported it (``torch.onnx.export`` leaves the
#: process warmed and its heap grown: ONNX Runtime's session creation after its own
#: export took 4.9 ms for the TextClassifier B=1 file, 9.7 ms without; session 11).
ONNX_ENGINES = ("onnxruntime", "openvino", "rnnfast-onnx")

# Timing in rounds: each engine's turn runs about TURN_S seconds of calls (at least
# one), then the parent sleeps GAP_S so a pool still spinning goes to sleep before the
# next engine runs. At least MIN_ROUNDS rounds and MIN_REPEATS calls per engine.
TURN_S = 0.045
# Quiet between two engines' turns: a pool that spins after its run (ONNX Runtime's,
# OpenVINO's, rnnfast's after a phase) loads the next engine's turn; 20 ms was too short
# (rnnfast's team saw a partner lose its core and ran its next calls on one thread: GRU
# H=512 B=1 on 2 threads 11.3 ms instead of 2.5 after an ONNX Runtime turn), 100 ms let
# every measured pool go quiet.
GAP_S = 0.1
MIN_ROUNDS = 3
MIN_REPEATS = 3
START_TIMEOUT_S = 600  # importing TensorFlow on a busy machine is slow
BUILD_TIMEOUT_S = 1800  # export, XLA compile and one call of the largest case

# -- cases ----------------------------------------------------------------------------
# A case: name, batch, time, input size, recurrent layers [(cell, units, bidirectional,
# return_sequences)], dense head units (sigmoid) or 0.


def seed_cases():
    return [
        dict(
            name="seed GRU(128)->GRU(64)->Dense",
            B=32,
            T=10,
            I=50,
            layers=[("GRU", 128, False, True), ("GRU", 64, False, False)],
            head=1,
        ),
        dict(
            name="seed stacked GRU(128)x2 seq",
            B=32,
            T=10,
            I=50,
            layers=[("GRU", 128, False, True), ("GRU", 128, False, True)],
            head=0,
        ),
        dict(
            name="seed BiGRU(128)->BiGRU(64)->Dense",
            B=32,
            T=10,
            I=50,
            layers=[("GRU", 128, True, True), ("GRU", 64, True, True)],
            head=1,
        ),
    ]


def whole_cases():
    """Three whole PyTorch models (issue 15's ONNX columns), at B = 1 and 64: the
    recurrent layer's shape in ``layers`` (for the FLOP count), the module in
    ``whole_model``, its inputs in ``case_inputs``. rnnfast runs them through
    ``rnnfast.from_torch(module, example_inputs)`` (an in-memory ONNX export), and
    ``rnnfast-onnx``, ONNX Runtime and OpenVINO the exported file; Keras has no row."""
    models = [  # name, kind, T, input size of the recurrent layer, its (cell, units, bi, sequences)
        ("TextClassifier B=%d T=100", "text", 100, 128, ("LSTM", 128, True, False)),
        ("Speech Conv+BiGRU B=%d T=100", "speech", 100, 128, ("GRU", 128, True, True)),
        ("Seq2seq decoder step B=%d", "decoder", 1, 256, ("GRU", 256, False, True)),
    ]
    cases = []
    for B in (1, 64):
        for name, kind, T, I, layer in models:
            cases.append(dict(name=name % B, whole=kind, B=B, T=T, I=I, layers=[layer], head=0))
    return cases


def grid_cases(quick):
    cases = seed_cases()
    if quick:
        shapes = [(1, 100, 256), (64, 100, 256)]
    else:
        shapes = [(B, T, H) for B in (1, 64, 256) for T in (100, 1000) for H in (128, 256, 512)]
    for cell in ("GRU", "LSTM"):
        for B, T, H in shapes:
            cases.append(
                dict(
                    name="%s B=%d T=%d H=I=%d" % (cell, B, T, H), B=B, T=T, I=H, layers=[(cell, H, False, True)], head=0
                )
            )
    for cell in ("GRU", "LSTM"):
        for B in (1,) if quick else (1, 32):
            cases.append(
                dict(
                    name="Bi%s B=%d T=100 H=I=256" % (cell, B),
                    B=B,
                    T=100,
                    I=256,
                    layers=[(cell, 256, True, True)],
                    head=0,
                )
            )
    return cases


def case_key(case):
    """A short name for a case's files (the same in every process)."""
    return hashlib.sha1(json.dumps(case, sort_keys=True).encode()).hexdigest()[:12]


#: The whole models' sizes: vocabulary, speech features, decoder vocabulary and its
#: encoder's length.
VOCAB, FEATURES, TARGET_VOCAB, SOURCE_LEN = 20000, 40, 8000, 20


def case_inputs(case):
    """The case's inputs by name, the same in every worker: ``x`` (B, T, I) float32 for
    the grid; token ids, feature frames or a decoder step's inputs for a whole model."""
    rng = np.random.default_rng(1)
    B, T = case["B"], case["T"]
    kind = case.get("whole")
    if kind == "text":
        return {"ids": rng.integers(0, VOCAB, (B, T), dtype=np.int64)}
    if kind == "speech":
        return {"x": rng.standard_normal((B, T, FEATURES)).astype(np.float32)}
    if kind == "decoder":
        H = case["layers"][0][1]
        return {
            "tok": rng.integers(0, TARGET_VOCAB, (B, 1), dtype=np.int64),
            "h": (0.5 * rng.standard_normal((1, B, H))).astype(np.float32),
            "enc": (0.5 * rng.standard_normal((B, SOURCE_LEN, H))).astype(np.float32),
        }
    return {"x": rng.standard_normal((B, T, case["I"])).astype(np.float32)}


def case_flops_split(case):
    """Multiply-adds x 2 of the recurrent layers: (input projection, recurrence)."""
    proj = rec = 0
    I = case["I"]
    for cell, H, bi, _ in case["layers"]:
        G = 3 if cell == "GRU" else 4
        D = 2 if bi else 1
        proj += 2 * case["T"] * case["B"] * D * I * G * H
        rec += 2 * case["T"] * case["B"] * D * H * G * H
        I = D * H
    return proj, rec


def case_flops(case):
    """Multiply-adds x 2 of the recurrent layers (input projection + recurrence)."""
    return sum(case_flops_split(case))


# -- the model in PyTorch, and its conversions ------------------------------------------


def whole_model(case, torch):
    """The case's whole PyTorch model (eval mode, seeded weights): a text classifier
    (Embedding -> BiLSTM -> its final states -> Linear -> log-softmax), a speech model
    (Conv1d + BatchNorm1d + ReLU -> BiGRU -> per-frame Linear -> log-softmax, CTC-shaped)
    or one step of an attention decoder (the PyTorch chatbot tutorial's Luong "dot"
    decoder: Embedding -> GRU step -> attention over the encoder's outputs -> Linear +
    tanh -> Linear -> softmax; the probabilities and the new state out)."""
    nn, F = torch.nn, torch.nn.functional
    _, H, _, _ = case["layers"][0]

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, case["I"])
            self.rnn = nn.LSTM(case["I"], H, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * H, 5)

        def forward(self, ids):
            _, (h, _) = self.rnn(self.emb(ids))
            return F.log_softmax(self.fc(torch.cat([h[0], h[1]], -1)), -1)

    class Speech(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(FEATURES, case["I"], 5, padding=2)
            self.bn = nn.BatchNorm1d(case["I"])
            self.rnn = nn.GRU(case["I"], H, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * H, 29)

        def forward(self, x):  # (B, T, features)
            y = torch.relu(self.bn(self.conv(x.transpose(1, 2)))).transpose(1, 2)
            return F.log_softmax(self.fc(self.rnn(y)[0]), -1)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(TARGET_VOCAB, H)
            self.rnn = nn.GRU(H, H, batch_first=True)
            self.concat = nn.Linear(2 * H, H)
            self.out = nn.Linear(H, TARGET_VOCAB)

        def forward(self, tok, h, enc):  # (B, 1) ids, (1, B, H) state, (B, S, H) encoder outputs
            y, h = self.rnn(self.emb(tok), h)  # y: (B, 1, H)
            attn = torch.softmax(torch.bmm(y, enc.transpose(1, 2)), -1)  # (B, 1, S)
            context = torch.bmm(attn, enc).squeeze(1)
            mixed = torch.tanh(self.concat(torch.cat([y.squeeze(1), context], -1)))
            return torch.softmax(self.out(mixed), -1), h

    torch.manual_seed(0)
    net = {"text": Text, "speech": Speech, "decoder": Decoder}[case["whole"]]().eval()
    with torch.no_grad():  # lively weights, and batch statistics as training leaves them
        for p in net.parameters():
            p.uniform_(-0.08, 0.08)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return net


def torch_model(case, torch):
    if case.get("whole"):
        return whole_model(case, torch)
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

        def forward(self, x):  # x: (B, T, I), like Keras
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
    with torch.no_grad():  # lively weights, as trained models have
        for p in net.parameters():
            p.uniform_(-0.08, 0.08)
    return net


def canonical(net):
    """Per recurrent layer: (cell, [CellWeights per direction]); and the head (W, b)."""
    from rnnfast.io.torch_convert import cell_weights_from_torch

    layers = []
    for m in net.rnns:
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        ws = [
            cell_weights_from_torch(
                m.mode, sd["weight_ih_l0" + s], sd["weight_hh_l0" + s], sd["bias_ih_l0" + s], sd["bias_hh_l0" + s]
            )
            for s in ([""] + (["_reverse"] if m.bidirectional else []))
        ]
        layers.append((m.mode, ws))
    head = None
    if net.head is not None:
        head = (net.head.weight.detach().numpy().T.copy(), net.head.bias.detach().numpy().copy())
    return layers, head


def rnnfast_model(case, net):
    from rnnfast import Sequential
    from rnnfast.layers import Dense, RNNLayer

    layers, head = canonical(net)
    steps = [
        (RNNLayer(mode.lower(), ws), dict(return_sequences=spec[3])) for (mode, ws), spec in zip(layers, case["layers"])
    ]
    if head is not None:
        steps.append(Dense(head[0], head[1], "sigmoid"))
    return Sequential(steps)


def keras_model(case, net):
    import keras

    layers, head = canonical(net)
    model = keras.Sequential([keras.Input((case["T"], case["I"]))])
    for (_mode, ws), (cell, H, bi, seq) in zip(layers, case["layers"]):
        inner = (
            keras.layers.GRU(H, return_sequences=seq, reset_after=True)
            if cell == "GRU"
            else keras.layers.LSTM(H, return_sequences=seq)
        )
        model.add(keras.layers.Bidirectional(inner, merge_mode="concat") if bi else inner)
        weights = []
        for w in ws:
            bias = np.stack([w.bias, w.recurrent_bias]) if cell == "GRU" else w.bias + w.recurrent_bias
            weights += [w.kernel, w.recurrent_kernel, bias]
        model.layers[-1].set_weights(weights)
    if head is not None:
        model.add(keras.layers.Dense(head[0].shape[1], activation="sigmoid"))
        model.layers[-1].set_weights([head[0], head[1]])
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), jit_compile=True)
    return lambda x: fn(tf.constant(x)).numpy()


def onnx_file(net, case, torch, path):
    """Export ``net`` to ``path`` (fixed input shape), unless an earlier worker did:
    the ONNX Runtime and OpenVINO workers of every thread count share one export."""
    if os.path.exists(path):
        return path
    part = "%s.%d.part" % (path, os.getpid())
    feeds = case_inputs(case)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    names = dict(input_names=list(feeds), output_names=["y", "state"] if case.get("whole") == "decoder" else ["y"])
    try:
        torch.onnx.export(net, args, part, opset_version=17, dynamo=False, **names)
    except TypeError:  # older torch: no dynamo keyword
        torch.onnx.export(net, args, part, opset_version=17, **names)
    os.replace(part, path)  # whole files only, for the next reader
    return path


# -- the engines, each in its own worker process ------------------------------------------


#: Loads of a file timed per case and engine (the ONNX columns' load time: their median).
LOAD_REPEATS = 5


def timed_load(load):
    """``(the last result of load(), median seconds of LOAD_REPEATS calls)``: the first
    load of a file in a process pays its page faults and the loader's first-use costs,
    the others the load alone; the median of five, for rnnfast and ONNX Runtime alike."""
    times = []
    for _ in range(LOAD_REPEATS):
        t0 = time.perf_counter()
        out = load()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


class Engine:
    """One engine inside its worker process.

    ``setup`` imports the engine and sets its threads, once, before anything runs;
    ``build(case, net, feeds)`` makes a case's model and returns a callable giving its
    (first) output as numpy; ``feeds`` are the inputs by name (``case_inputs``).
    The parent sends commands, one JSON line each way: ``{"cmd": "build", ...}`` runs
    ``cmd_build(...)``, and so on, so an engine adds a command by adding a ``cmd_``
    method. Every command returns a dict (the reply) or raises (an error reply).
    """

    def __init__(self, threads, tmp):
        self.threads, self.tmp = threads, tmp
        self.fn = None

    def setup(self):
        import torch

        torch.set_num_threads(self.threads)
        return {}

    def build(self, case, net, feeds):
        raise NotImplementedError

    def cmd_build(self, case):
        """Build the case's model and run it once (the warm-up); the output goes to an
        .npy file for the parent to compare."""
        import torch

        self.fn = None  # free the last case's model first
        net = torch_model(case, torch)
        fn = self.build(case, net, case_inputs(case))
        t0 = time.perf_counter()
        y = np.asarray(fn())
        first_s = time.perf_counter() - t0
        path = os.path.join(self.tmp, "%s-%s.npy" % (self.name, case_key(case)))
        np.save(path, y)
        self.fn = fn
        return dict(output=path, first_s=first_s, load_s=getattr(self, "load_s", None))

    def cmd_time(self, k):
        """Seconds of each of ``k`` calls of the model built last."""
        fn, times = self.fn, []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return dict(times=times)


class RnnfastEngine(Engine):
    name = "rnnfast"

    def cmd_profile(self, k):
        """Where the time of ``k`` more calls goes: the kernels' counters
        (rnnfast._kernels.profile), thread-seconds per call, and the wall time per call.
        The counters read the clock a few times per step, so the profiled calls run a
        little slower than the timed ones."""
        from rnnfast import _kernels

        _kernels.profile(True)
        t0 = time.perf_counter()
        try:
            for _ in range(k):
                self.fn()
        finally:
            _kernels.profile(False)
        wall = (time.perf_counter() - t0) / k
        return dict(wall_s=wall, **{part: v / k for part, v in _kernels.profile_times().items()})

    def setup(self):
        super().setup()
        import rnnfast

        rnnfast.set_num_threads(self.threads)
        return dict(version=rnnfast.__version__, blas=blas_report())

    def build(self, case, net, feeds):
        if case.get("whole"):  # a whole module: rnnfast.from_torch exports it to ONNX in memory
            import torch

            import rnnfast

            model = rnnfast.from_torch(net, tuple(torch.from_numpy(v) for v in feeds.values()), input_names=list(feeds))
            return lambda: model.run(None, feeds)[0]
        model = rnnfast_model(case, net)
        x = feeds["x"]
        return lambda: model.predict(x)


class TorchEngine(Engine):
    name = "torch"

    def setup(self):
        super().setup()
        import torch

        return dict(version=torch.__version__)

    def build(self, case, net, feeds):
        import torch

        args = tuple(torch.from_numpy(v) for v in feeds.values())

        def run():
            with torch.no_grad():
                y = net(*args)
                return (y[0] if isinstance(y, tuple) else y).numpy()

        return run


class OnnxruntimeEngine(Engine):
    name = "onnxruntime"

    def setup(self):
        super().setup()
        import onnxruntime

        return dict(version=onnxruntime.__version__)

    def build(self, case, net, feeds):
        import onnxruntime as ort
        import torch

        path = onnx_file(net, case, torch, os.path.join(self.tmp, "%s.onnx" % case_key(case)))
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        # session creation: the ONNX columns' load time
        sess, self.load_s = timed_load(lambda: ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
        return lambda: sess.run(None, feeds)[0]


class RnnfastOnnxEngine(RnnfastEngine):
    """rnnfast on the .onnx file ONNX Runtime runs: ``rnnfast.load(path)`` and
    ``model.run(None, {"x": x})``, as an ONNX Runtime user would switch."""

    name = "rnnfast-onnx"

    def setup(self):
        info = super().setup()
        import onnx  # noqa: F401  (imported once here, as the ONNX Runtime worker imports onnxruntime)

        import rnnfast.io.onnx  # noqa: F401  (the loader: `import rnnfast` leaves it to first use)

        return info

    def build(self, case, net, feeds):
        import torch

        import rnnfast

        path = onnx_file(net, case, torch, os.path.join(self.tmp, "%s.onnx" % case_key(case)))
        model, self.load_s = timed_load(lambda: rnnfast.load(path))
        return lambda: model.run(None, feeds)[0]


class OnnxExportEngine(Engine):
    """Writes each case's .onnx file (``onnx_file``) and loads nothing: the worker that
    exports for the engines of :data:`ONNX_ENGINES`."""

    name = "onnx-export"

    def setup(self):
        super().setup()
        import torch

        return dict(version=torch.__version__)

    def cmd_export(self, case):
        import torch

        path = os.path.join(self.tmp, "%s.onnx" % case_key(case))
        if not os.path.exists(path):  # (written at the first thread count)
            onnx_file(torch_model(case, torch), case, torch, path)
        return dict(output=path)


class OpenvinoEngine(Engine):
    name = "openvino"

    def setup(self):
        super().setup()
        import openvino as ov

        self.core = ov.Core()
        return dict(version=ov.__version__)

    def build(self, case, net, feeds):
        import torch

        path = onnx_file(net, case, torch, os.path.join(self.tmp, "%s.onnx" % case_key(case)))
        compiled = self.core.compile_model(
            self.core.read_model(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
        )
        req = compiled.create_infer_request()
        return lambda: req.infer(feeds)[0]


class KerasEngine(Engine):
    name = "keras"

    def setup(self):
        super().setup()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(self.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        return dict(version="%s (tensorflow %s)" % (keras.__version__, tf.__version__))

    def build(self, case, net, feeds):
        f = keras_model(case, net)
        x = feeds["x"]
        return lambda: f(x)


ENGINE_CLASSES = {
    c.name: c
    for c in (
        RnnfastEngine,
        TorchEngine,
        OnnxruntimeEngine,
        OpenvinoEngine,
        KerasEngine,
        RnnfastOnnxEngine,
        OnnxExportEngine,
    )
}


def describe(e):
    """An exception in one line, for a row's notes."""
    msg = str(e).strip().splitlines()
    return ("%s: %s" % (type(e).__name__, msg[0] if msg else ""))[:300]


def worker_main(engine, threads, tmp, classes=None):
    """The worker process: answer the parent's commands on stdin, one JSON line each,
    on the original stdout. The first reply says whether the engine set up. ``classes``:
    the engines by name (default ENGINE_CLASSES; bench/precision.py passes its own)."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # libraries' prints go to the log, not the pipe

    def reply(**kw):
        proto.write(json.dumps(kw) + "\n")
        proto.flush()

    eng = (classes or ENGINE_CLASSES)[engine](threads, tmp)
    try:
        reply(ok=True, **eng.setup())
    except Exception as e:
        reply(ok=False, error=describe(e))
        return 1
    for line in iter(sys.stdin.readline, ""):
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        try:
            reply(ok=True, **getattr(eng, "cmd_" + cmd)(**msg))
        except Exception as e:
            reply(ok=False, error=describe(e))
    return 0


# -- the parent's side -------------------------------------------------------------------


class EngineError(Exception):
    """An engine failed a command (its worker may have died; then it is restarted)."""


def missing_modules(engine):
    return [m for m in NEEDS[engine] if importlib.util.find_spec(m) is None]


def worker_env(threads):
    """The environment of a worker for ``threads`` threads (read by the libraries at import)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


class EngineProcess:
    """The parent's handle on one engine's worker process for one thread count.

    Replies are read by a thread into a queue, so every wait has a timeout; a worker
    that dies or hangs is killed and started again at the next ``ensure``. Its stderr
    goes to a log file in the run's temporary folder (the last line is quoted when it
    dies). The worker is ``script --_engine ENGINE THREADS TMP`` (``script``: this file;
    bench/precision.py's subclass names its own).
    """

    script = os.path.abspath(__file__)

    def __init__(self, engine, threads, tmp):
        self.engine, self.threads, self.tmp = engine, threads, tmp
        self.log_path = os.path.join(tmp, "%s-%dt.log" % (engine, threads))
        self.proc, self.info = None, None

    def start(self):
        cmd = [sys.executable, self.script, "--_engine", self.engine, str(self.threads), self.tmp]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=worker_env(self.threads), text=True
            )
        self.info, self.replies = None, queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.replies), daemon=True).start()

    @staticmethod
    def _read(stream, replies):
        for line in stream:
            replies.put(line)
        replies.put(None)  # end of file: the worker is gone

    def ensure(self):
        """Start the worker if it is not running; wait for its first reply."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        if self.info is None:
            self.info = self._receive(START_TIMEOUT_S)

    def ask(self, cmd, timeout, **kw):
        """Send one command and return the reply; EngineError if it failed."""
        try:
            self.proc.stdin.write(json.dumps(dict(kw, cmd=cmd)) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # dead: _receive says how it ended
        return self._receive(timeout)

    def _receive(self, timeout):
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise EngineError("no reply in %.0f s: worker killed" % timeout) from None
        if line is None:
            rc = self.proc.wait()
            self.info = None
            raise EngineError("worker died (exit %s)%s" % (rc, self._log_tail()))
        r = json.loads(line)
        if not r.pop("ok"):
            raise EngineError(r["error"])
        return r

    def _log_tail(self):
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [s.strip() for s in f.read().splitlines() if s.strip()]
        except OSError:
            return ""
        return "; the last line of its stderr: %s" % lines[-1][:200] if lines else ""

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.info = None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.stdin.write(json.dumps(dict(cmd="quit")) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.kill()


def max_abs_diff(path, ref_path):
    """Largest absolute difference of two saved outputs, in float64, read in slices."""
    a, b = np.load(path, mmap_mode="r"), np.load(ref_path, mmap_mode="r")
    if a.shape != b.shape:
        raise ValueError("output shape %s, rnnfast's %s" % (a.shape, b.shape))
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    step = max(1, 2**22 // max(1, a.shape[1]))
    return max(
        float(np.abs(a[i : i + step].astype(np.float64) - b[i : i + step]).max()) for i in range(0, len(a), step)
    )


def timed_rounds(procs, first_s, budget_s, notes):
    """Time the built models in rounds; returns per engine (median ms, calls) and the
    number of rounds. An engine stops when it has had MIN_ROUNDS turns, MIN_REPEATS calls
    and ``budget_s`` seconds of calls; a turn of k calls lasts about TURN_S (less with a
    small budget, so that the budget spreads over MIN_ROUNDS rounds)."""
    turn_s = min(TURN_S, budget_s / MIN_ROUNDS)
    est = dict(first_s)  # seconds per call: warm-up, then the median
    times = {e: [] for e in first_s}
    order, rounds = list(first_s), 0
    while True:
        shift = rounds % len(order) if order else 0
        todo = [
            e
            for e in order[shift:] + order[:shift]
            if e in times and not (rounds >= MIN_ROUNDS and len(times[e]) >= MIN_REPEATS and sum(times[e]) >= budget_s)
        ]
        if not todo:
            break
        for e in todo:
            k = max(1, int(round(turn_s / max(est[e], 1e-9))))
            try:
                r = procs[e].ask("time", 120 + 20 * k * est[e], k=k)
            except EngineError as err:
                notes[e] = "timing: %s" % err
                del times[e]
                continue
            times[e] += r["times"]
            est[e] = float(np.median(times[e]))
            time.sleep(GAP_S)  # let a spinning pool go to sleep
        rounds += 1
    return ({e: 1e3 * float(np.median(v)) for e, v in times.items()}, {e: len(v) for e, v in times.items()}, rounds)


def run_case(case, threads, procs, budget_s, exporter=None):
    """One case on one thread count: export (``exporter``: the ``onnx-export`` worker, where
    an engine of ONNX_ENGINES runs), build, check agreement, time. Returns the row."""
    notes, outputs, first_s, load_s = {}, {}, {}, {}
    if exporter is not None:
        try:
            exporter.ensure()
            exporter.ask("export", BUILD_TIMEOUT_S, case=case)
        except EngineError as err:  # (then the first engine to build it exports, as before)
            notes["onnx-export"] = "export: %s" % err
    if case.get("whole"):  # a whole PyTorch module has no Keras twin
        procs = {e: p for e, p in procs.items() if e != "keras"}
    for e, p in procs.items():  # one at a time: builds can be large
        try:
            p.ensure()
            r = p.ask("build", BUILD_TIMEOUT_S, case=case)
        except EngineError as err:
            notes[e] = "build: %s" % err
            continue
        outputs[e], first_s[e] = r["output"], r["first_s"]
        if r.get("load_s") is not None:
            load_s[e] = r["load_s"]
    agree = {}
    if "rnnfast" in outputs:
        for e, path in outputs.items():
            try:
                agree[e] = max_abs_diff(path, outputs["rnnfast"])
            except (ValueError, OSError) as err:
                notes[e] = "output: %s" % describe(err)
    for path in outputs.values():
        os.remove(path)
    ms, repeats, rounds = timed_rounds(procs, first_s, budget_s, notes)
    split = None
    if "rnnfast" in ms:  # where rnnfast's time goes
        k = max(1, min(20, int(round(budget_s / 2 / max(ms["rnnfast"] / 1e3, 1e-9)))))
        try:
            split = procs["rnnfast"].ask("profile", 120 + 40 * k * ms["rnnfast"] / 1e3, k=k)
        except EngineError as err:
            notes["rnnfast"] = "profile: %s" % err
    proj, rec = case_flops_split(case)
    return dict(
        kind="case",
        threads=threads,
        case=case["name"],
        flops=proj + rec,
        flops_projection=proj,
        flops_recurrence=rec,
        B=case["B"],
        ms=ms,
        max_abs_diff=agree,
        repeats=repeats,
        rounds=rounds,
        notes=notes,
        split=split,
        load_s=load_s,
    )


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
    return 2 * n**3 / min(ts) / 1e9


def measure_peak(threads):
    """sgemm_peak in a process of its own (with the workers' environment), or None."""
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_peak", str(threads)],
        capture_output=True,
        text=True,
        env=worker_env(threads),
    )
    if r.returncode:
        print("sgemm peak for %d thread(s) failed: %s" % (threads, r.stderr.strip().splitlines()[-1:]))
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["gflops"]


def run_grid(cases, thread_counts, budget_s, engines=ENGINES):
    """Every case on every thread count; returns rows, sgemm peaks and engine versions."""
    rows, peaks, versions, installed = [], {}, {}, []
    for e in engines:
        missing = missing_modules(e)
        if missing:
            versions[e] = "not installed"
            print("%-12s not installed (no %s): skipped" % (e, ", ".join(missing)))
        else:
            installed.append(e)
    tmp = tempfile.mkdtemp(prefix="rnnfast-compare-")
    try:
        for t in thread_counts:
            peaks[t] = measure_peak(t)  # first, on a quiet machine
            procs = {e: EngineProcess(e, t, tmp) for e in installed}
            exporter = EngineProcess("onnx-export", t, tmp) if set(installed) & set(ONNX_ENGINES) else None
            workers = list(procs.values()) + ([exporter] if exporter is not None else [])
            try:
                for p in workers:  # start them all: the imports overlap
                    p.start()
                for e, p in procs.items():
                    try:
                        p.ensure()
                        versions.setdefault(e, p.info["version"])
                    except EngineError as err:
                        print("%-12s %dt  failed to start: %s" % (e, t, err))
                    if e == "rnnfast" and p.info and t == thread_counts[0]:
                        print(
                            "rnnfast %s; BLAS: %s"
                            % (
                                p.info["version"],
                                "; ".join(
                                    "%(api)s %(version)s kernel=%(kernel)s (%(file)s)" % b for b in p.info["blas"]
                                ),
                            )
                        )
                print(
                    "%d thread(s): sgemm peak %s GFLOP/s; %s"
                    % (
                        t,
                        "%.0f" % peaks[t] if peaks[t] else "-",
                        ", ".join("%s %s" % (e, versions.get(e, "-")) for e in procs),
                    ),
                    flush=True,
                )
                for case in cases:
                    t0 = time.perf_counter()
                    r = run_case(case, t, procs, budget_s, exporter)
                    rows.append(r)
                    print(
                        "  %-36s %dt  %s  [%d rounds, %.0f s]%s"
                        % (
                            r["case"][:36],
                            t,
                            "  ".join("%s %.3f" % (k, v) for k, v in r["ms"].items()),
                            r["rounds"],
                            time.perf_counter() - t0,
                            "  (notes)" if r["notes"] else "",
                        ),
                        flush=True,
                    )
            finally:
                for p in workers:
                    p.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, peaks, versions


# -- memory -----------------------------------------------------------------------------

MEMORY_ENGINES = ("rnnfast", "torch", "onnxruntime", "openvino")
MEMORY_TS = (1000, 10000, 100000)


def _rss_kb():
    """(current RSS, peak RSS) in KiB, from /proc (Linux)."""
    v = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                v[line[:5]] = int(line.split()[1])
    return v["VmRSS"], v["VmHWM"]


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
    elif engine == "onnxruntime":
        import onnxruntime as ort

        path = onnx_file(net, case, torch, os.path.join(tempfile.mkdtemp(), "model.onnx"))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        fn = lambda: sess.run(None, {"x": x})  # noqa: E731
    else:
        import openvino as ov

        path = onnx_file(net, case, torch, os.path.join(tempfile.mkdtemp(), "model.onnx"))
        core = ov.Core()
        req = core.compile_model(
            core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        ).create_infer_request()
        fn = lambda: req.infer({0: x})  # noqa: E731
    # The peak from here on: reset the kernel's high-water mark (Linux >= 4.0), so that
    # building the model (an export, a compile) does not hide the call's own peak; where
    # it cannot be reset, the process's peak so far is the baseline, as before.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_kb()[0]
        fn()
        peak = _rss_kb()[1]
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(engine=engine, T=T, extra_mb=(peak - base) / 1024.0, input_mb=x.nbytes / 2**20)))


def memory_table():
    print("Peak memory above the process's state before the call (GRU(256), B=1, last state only;")
    print("the input is allocated before and not counted):")
    print("%-12s %8s %10s %12s" % ("engine", "T", "input MB", "extra MB"))
    rows = []
    for engine in MEMORY_ENGINES:
        missing = missing_modules(engine)
        if missing:
            print("%-12s not installed (no %s): skipped" % (engine, ", ".join(missing)))
            continue
        for T in MEMORY_TS:
            r = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--_memory", engine, str(T)], capture_output=True, text=True
            )
            if r.returncode:
                print("%-12s %8d  (failed: %s)" % (engine, T, r.stderr.strip().splitlines()[-1:]))
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print("%-12s %8d %10.1f %12.1f" % (engine, T, row["input_mb"], row["extra_mb"]))
    print(machine_line())
    print()
    print(memory_verdict(rows, "rnnfast"))
    return rows


def memory_verdict(rows, engine, noise_mb=1.0):
    """One sentence, from the measured rows: does ``engine``'s extra memory grow with T?
    It grows without bound if it still grows between the two largest T; it is bounded
    if it grows only below them. Differences within ``noise_mb`` (page and allocator
    granularity) count as flat."""
    got = {r["T"]: r["extra_mb"] for r in rows if r["engine"] == engine}
    if len(got) < 2:
        return "%s: fewer than two sequence lengths measured, no conclusion" % engine
    ts = sorted(got)
    lo, prev, hi = ts[0], ts[-2], ts[-1]
    per_step = (got[hi] - got[prev]) * 2**20 / (hi - prev)
    if got[hi] - got[prev] > noise_mb:
        verdict = "grows with T (%+.0f bytes per step from T=%d to T=%d)" % (per_step, prev, hi)
    elif got[hi] - got[lo] > noise_mb:
        verdict = "grows from T=%d to T=%d, then stays flat up to T=%d (bounded)" % (lo, prev, hi)
    else:
        verdict = "does not grow with T"
    return "%s: extra memory %s: %s MB at T = %s (within %.0f MB counts as flat)" % (
        engine,
        verdict,
        ", ".join("%.1f" % got[t] for t in ts),
        ", ".join(str(t) for t in ts),
        noise_mb,
    )


# -- report -----------------------------------------------------------------------------


def machine_line():
    """The disclosure line printed under every table (``rnnfast._bench.disclosure``)."""
    from rnnfast._bench import disclosure

    return disclosure()


def report(rows, peaks):
    print()
    head = (
        "%-36s %3s" % ("case", "thr")
        + "".join(" %11s" % e[:11] for e in ENGINES)
        + " %9s %9s %8s %6s" % ("vs best", "best peer", "GFLOP/s", "%peak")
    )
    print(head)
    print("-" * len(head))
    speedups = []
    for r in rows:
        ms = r["ms"]
        peers = {k: v for k, v in ms.items() if k not in OWN}
        best = min(peers, key=peers.get) if peers else None
        sp = gf = pct = None  # None where rnnfast has no time
        if "rnnfast" in ms:
            sp = peers[best] / ms["rnnfast"] if best else None
            gf = r["flops"] / ms["rnnfast"] / 1e6
            pct = 100 * gf / peaks[r["threads"]] if peaks.get(r["threads"]) else None
        r.update(speedup_vs_best=sp, best_peer=best, gflops=gf, pct_peak=pct)
        speedups.append((r, sp))
        cells = "".join(" %11.3f" % ms[e] if e in ms else " %11s" % "-" for e in ENGINES)
        print(
            "%-36s %3d%s %9s %9s %8s %6s"
            % (
                r["case"][:36],
                r["threads"],
                cells,
                "%.2fx" % sp if sp else "-",
                best or "-",
                "%.1f" % gf if gf else "-",
                "%.0f%%" % pct if pct else "-",
            )
        )
        bad = {k: v for k, v in r["max_abs_diff"].items() if v > 1e-4}
        if bad:
            print("    !! disagreement > 1e-4: %s" % bad)
        for k, note in r["notes"].items():
            print("    !! %s: %s" % (k, note))
    print()
    for label, sel in (("B=1", lambda r: r["B"] == 1), ("B>=64", lambda r: r["B"] >= 64), ("all", lambda r: True)):
        sp = [s for r, s in speedups if sel(r) and s]
        if sp:
            print(
                "geometric-mean speed-up over the fastest peer, %-6s: %.2fx (%d cases, %d slower)"
                % (label, float(np.exp(np.mean(np.log(sp)))), len(sp), sum(s < 1 for s in sp))
            )
    for t, p in sorted(peaks.items()):
        if p:
            print("sgemm peak, %d thread(s): %.0f GFLOP/s" % (t, p))
    print(machine_line())
    report_split(rows, peaks)


def report_onnx(rows):
    """The ONNX columns: rnnfast and ONNX Runtime on the same .onnx file (rnnfast.load
    against InferenceSession), call time and load time (session creation)."""
    rows = [r for r in rows if "rnnfast-onnx" in r["ms"] and "onnxruntime" in r["ms"]]
    if not rows:
        return
    print()
    print("the same .onnx file: rnnfast.load(path).run vs onnxruntime.InferenceSession(path).run")
    head = "%-36s %3s %12s %12s %8s %10s %10s %8s" % (
        "case",
        "thr",
        "rnnfast ms",
        "ORT ms",
        "speedup",
        "load ms",
        "ORT load",
        "ratio",
    )
    print(head)
    print("-" * len(head))
    sps, loads = [], []
    for r in rows:
        a, b = r["ms"]["rnnfast-onnx"], r["ms"]["onnxruntime"]
        la, lb = (r["load_s"].get(e) for e in ("rnnfast-onnx", "onnxruntime"))
        r["onnx_speedup"] = b / a
        sps.append(b / a)
        lr = None
        if la and lb:
            lr = lb / la
            loads.append(lr)
        r["onnx_load_ratio"] = lr
        print(
            "%-36s %3d %12.3f %12.3f %7.2fx %10s %10s %8s"
            % (
                r["case"][:36],
                r["threads"],
                a,
                b,
                b / a,
                "%.1f" % (1e3 * la) if la else "-",
                "%.1f" % (1e3 * lb) if lb else "-",
                "%.2fx" % lr if lr else "-",
            )
        )
    print(
        "geometric-mean speed-up over ONNX Runtime on its own files: %.2fx (%d rows, %d slower); "
        "load: %.2fx ORT's session creation time (geometric mean)"
        % (
            float(np.exp(np.mean(np.log(sps)))),
            len(sps),
            sum(s < 1 for s in sps),
            float(np.exp(np.mean(np.log(loads)))) if loads else float("nan"),
        )
    )


def report_split(rows, peaks):
    """Where rnnfast's time goes per case, from its kernel counters: the input
    projection GEMMs, the per-step recurrent products, the gate math (with the state
    copies and output writes), the step barrier's wait, and the rest of the call
    (Python, the dense head, allocations). Times are thread-seconds over the thread
    count, so that they add up to the call; GFLOP/s and % of the sgemm peak are those
    of the projection and of the products alone."""
    rows = [r for r in rows if r.get("split")]
    if not rows:
        return
    print()
    print("where rnnfast's time goes (ms per call, from its kernel counters; %peak of each part):")
    head = "%-36s %3s %9s %16s %16s %9s %8s %8s" % (
        "case",
        "thr",
        "call",
        "projection",
        "products",
        "gates",
        "wait",
        "rest",
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        sp, t = r["split"], r["threads"]
        peak = peaks.get(t)
        part = {k: 1e3 * sp[k] / t for k in ("projection", "product", "gates", "wait")}
        wall = 1e3 * sp["wall_s"]
        rest = wall - sum(part.values())

        def pct(flops, ms, peak=peak):
            return "%3.0f%%" % (100 * flops / ms / 1e6 / peak) if peak and ms > 0 else "   -"

        r["split_ms"] = dict(part, call=wall, rest=rest)
        print(
            "%-36s %3d %9.3f %9.3f (%s) %9.3f (%s) %9.3f %8.3f %8.3f"
            % (
                r["case"][:36],
                t,
                wall,
                part["projection"],
                pct(r["flops_projection"], part["projection"]),
                part["product"],
                pct(r["flops_recurrence"], part["product"]),
                part["gates"],
                part["wait"],
                rest,
            )
        )
    print(machine_line())


def plot(rows, path):
    rows = [r for r in rows if r["speedup_vs_best"]]
    plt = pyplot()
    if plt is None or not rows:
        return
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 5))
    labels = ["%s %dt" % (r["case"], r["threads"]) for r in rows]
    ax.bar(
        range(len(rows)),
        [r["speedup_vs_best"] for r in rows],
        color=["tab:green" if r["speedup_vs_best"] >= 1 else "tab:red" for r in rows],
    )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_ylabel("rnnfast speed-up over the fastest peer")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print("plot:", path)


def bench_model(args):
    """``--model PATH``: ``rnnfast bench PATH`` once per thread count (its table ends with
    the disclosure line). Returns the exit status (the first failure's)."""
    from rnnfast.cli import main as rnnfast_main

    status = 0
    for t in [int(s) for s in args.threads.split(",")]:
        argv = ["bench", args.model, "--threads", str(t)]
        argv += ["--batch", str(args.batch)] if args.batch else []
        argv += ["--time", str(args.time)] if args.time else []
        argv += ["--repeats", "5"] if args.quick else []
        print("=== rnnfast bench %s" % " ".join(argv[1:]), flush=True)
        status = status or rnnfast_main(argv)
        print()
    return status


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset that runs in a few minutes")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    ap.add_argument(
        "--model",
        metavar="PATH",
        help="your own model file (.keras, .h5, .pt, .safetensors) instead of the grid: `rnnfast bench` "
        "against the peers that run it, once per thread count",
    )
    ap.add_argument("--batch", type=int, metavar="B", help="with --model: batch size (default 32)")
    ap.add_argument("--time", type=int, metavar="T", help="with --model: time steps (default: the model's, else 100)")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timing per engine and case (at least %d calls and %d rounds)" % (MIN_REPEATS, MIN_ROUNDS),
    )
    ap.add_argument("--cases", metavar="SUBSTR", help="only the cases whose name contains SUBSTR")
    ap.add_argument("--engines", default=",".join(ENGINES), help="engines, comma-separated (default: all installed)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--memory", action="store_true", help="peak memory per engine instead")
    ap.add_argument(
        "--models",
        action="store_true",
        help="whole Keras models instead (toxic BiGRU, CRNN, seq2seq decoder step): bench/whole_models.py",
    )
    ap.add_argument("--_engine", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_peak", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    budget = args.budget if args.budget is not None else (0.15 if args.quick else 0.6)
    if args.models:
        return whole_models.main((["--quick"] if args.quick else []) + ["--threads", args.threads, "--out", args.out])
    if args._engine:
        return worker_main(args._engine[0], int(args._engine[1]), args._engine[2])
    if args._peak:
        print(json.dumps(dict(gflops=sgemm_peak(args._peak))))
        return 0
    if args._memory:
        memory_worker(args._memory[0], int(args._memory[1]))
        return 0
    if args.model:
        return bench_model(args)
    if args.batch is not None or args.time is not None:
        ap.error("--batch and --time go with --model")
    os.makedirs(args.out, exist_ok=True)
    if args.memory:
        rows = memory_table()
        with open(os.path.join(args.out, "compare_memory.json"), "w") as f:
            json.dump(rows, f, indent=1)
        return 0
    cases = [c for c in grid_cases(args.quick) + whole_cases() if args.cases is None or args.cases in c["name"]]
    if not cases:
        ap.error("no case name contains %r" % args.cases)
    t0 = time.perf_counter()
    engines = tuple(e for e in args.engines.split(",") if e)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        ap.error("unknown engines %s (known: %s)" % (unknown, ", ".join(ENGINES)))
    rows, peaks, versions = run_grid(cases, [int(s) for s in args.threads.split(",")], budget, engines)
    wall_s = time.perf_counter() - t0
    report(rows, peaks)
    report_onnx(rows)
    print("wall time of the run: %.0f s" % wall_s)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(
            dict(
                rows=rows, sgemm_peak_gflops=peaks, engines=versions, budget_s=budget, wall_s=wall_s, argv=sys.argv[1:]
            ),
            f,
            indent=1,
        )
    plot(rows, os.path.join(args.out, "compare.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
