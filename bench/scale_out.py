"""Scoring many sequences past one process: rnnfast locally, on Dask and on Ray Data,
with 1 and 2 workers of one thread each, against ONNX Runtime in the same Ray
pipeline (the peer users would otherwise pick).

    .venv/bin/python bench/scale_out.py --model digits --budget 420   # the issue's job, ~5-7 min (below)
    .venv/bin/python bench/scale_out.py --model seed --rows 20000 --budget 420   # the seed-shaped model
    .venv/bin/python bench/scale_out.py --quick          # 10,000 sequences, 1 round
    .venv-bench/bin/python bench/scale_out.py --plot bench/scale_out_digits.json   # the plot only

It needs Dask, Ray, ONNX Runtime, PyTorch and psutil (``make test``'s ``.venv`` has them)
and matplotlib for the plot (else it says so and writes the JSON; ``--plot`` draws it
later where matplotlib is).

The models (``--model``), each as a PyTorch module whose weights rnnfast converts and
ONNX Runtime reads from a ``torch.onnx.export`` (native ONNX GRU / LSTM ops):

- ``seed`` (default): the seed's ``BiGRU(128) -> BiGRU(64) -> Dense(1, sigmoid)`` on 50
  features, a score per step (bench/compare.py's "seed BiGRU" case: seeded weights),
  run by rnnfast as a :class:`rnnfast.Sequential`. About 4x the CPU per row of
  ``digits``: ``--rows 20000`` keeps a run in the same budget.
- ``digits``: the bundled ``digits_lstm.pt`` (``nn.LSTM(8, 32, num_layers=2,
  bidirectional=True)``) and its head (``logits = cat(h_n[-2], h_n[-1]) @ W.T + b``), run
  by rnnfast as a :class:`rnnfast.TorchRNN` with ``return_state=True`` and the head in
  numpy.

The job: score ``--rows`` sequences (100,000) of T=50 steps, in blocks of ``--block``
rows (5,000: the local call, the Dask chunk, the Ray block and batch, the same for every
engine), and get the scores back in the driver. What is timed, per pipeline, is that
job and nothing else:

- ``rnnfast local`` / ``onnxruntime local``: one process, the model over the blocks, 1 or
  2 threads; NumPy's own BLAS (the digits head) held to as many threads
  (``threadpoolctl``: by default it runs one thread per core, and its idle threads spin).
- ``rnnfast processes``: no engine, the machine's own ceiling for 1 -> 2 workers: two
  plain worker processes (``multiprocessing``, spawned), each holding all the rows (sent
  when they start, not timed); the 1-worker job is one of them scoring every block, the
  2-worker job each scoring half the blocks, one thread each, NumPy's BLAS held to one.
  Two busy cores share the L3 cache and the memory: what this row loses from 1 to 2 no
  engine can win back.
- ``rnnfast dask``: ``rnnfast.dask.predict(model, x)`` and ``compute`` on one
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` started inside
  ``dask.config.set(rnnfast.dask.worker_config())`` (the workers' allocator, as
  docs/cluster.md says); ``x`` persisted on the workers beforehand, the model passed as
  itself (``rnnfast.dask.predict`` sends it to every worker once, as a worker plugin, in
  the warm-up job; ``--dask-model scatter`` passes ``client.scatter(model,
  broadcast=True)`` instead: a dependency of every block, with which Dask moved 3-4 of
  a job's 20 blocks to the worker without them). The 1-worker job
  runs on one of the two workers, on a copy of ``x`` held there (``workers=``,
  ``allow_other_workers=False``); the 2-worker job on both, on a copy dealt block by
  block to the two in turn.
- ``rnnfast ray`` / ``onnxruntime ray``: ``ds.map_batches(fn, fn_args=(ref, ...),
  batch_size=block, num_cpus=1, compute=TaskPoolStrategy(size=2 * w))`` on
  ``ray.init(num_cpus=2)``, the data already in the object store
  (``from_numpy(...).materialize()``): Ray Data tasks in the worker processes Ray keeps
  between jobs (``--ray-compute tasks``, the default, as docs/cluster.md recommends), two
  submitted per worker so that Ray's scheduler starts the next one on a CPU the moment a
  task ends (docs/cluster.md; the 1-worker job's tasks hold a custom resource of which
  the cluster has one, so that one runs at a time, as on a cluster of one CPU). ``fn``
  calls ``rnnfast.ray.predict_batch`` (the model sent once with ``ray.put``, kept per
  worker process) or runs an ONNX Runtime session
  with one intra-op thread, kept per worker process the same way (the ONNX bytes sent
  once with ``ray.put``). Both engines' sessions are made in the warm-up round.
  ``--ray-compute actors``: ``compute=ActorPoolStrategy(size=w)`` with
  ``rnnfast.ray.Predictor`` or an ONNX Runtime session class: Ray Data starts a new
  actor pool, in new worker processes, for every job, and their start (processes,
  imports, the model's loading or the session's creation) is inside each timed job,
  for both.

The engines run with the settings docs/cluster.md gives for a small fixed cluster (Ray
Data without per-operator resource reservation, whose zero budget until its coordinator
actor first answers held every job's second task back by about a second, and two tasks
submitted per worker, without which each worker waited 0.2-0.3 s after every task for
Ray Data's scheduling loop; Dask workers without the statistical profiler);
``--engine-defaults`` runs the engines' defaults instead (one task per worker).

Not timed, the same for every engine: starting the engine (``LocalCluster``,
``ray.init``) and its worker processes, which import what the jobs need when they start
(Dask: ``client.run``; Ray: ``worker_process_setup_hook``; both import ``rnnfast.ray``,
``ray.data`` and ``onnxruntime``), putting the data in place, and a warm-up round on a
tenth of the rows. One engine at a time: its cluster is started before its pipelines
and shut down after them, so that no engine's idle processes load the two cores while
another is timed; its pipelines run in interleaved rounds (the order rotated), medians
reported; the machine is shared, so its load average is recorded per run. ``--budget``
shares its seconds among the engines and stops each after its last round that fits (at
least one).

Scaling efficiency = (sequences/s with 2 workers) / (2 x with 1 worker). Wall time on a
shared machine says little, so the CPU seconds are counted per job, by process
(``psutil``, user + system): ``CPU s`` is what the scoring processes used (the driver
locally; the Dask worker(s) of the job; the Ray actors, from the job's start), ``driver``
this process (Dask's scheduler and nannies live in it; Ray Data's executor), and
``engine`` the engine's other processes (the idle Dask worker; Ray's raylet, GCS and
helper actors). For Ray, also ``start`` (from the job's start until its last actor was
ready) and its actors' CPU seconds until then. From these, the "CPU-bound efficiency on
idle cores": a 1-worker job cannot end before its worker's CPU seconds, a 2-worker job
before half of all the CPU seconds it needs. A second table gives each job's CPU seconds
by process (the driver, the scoring workers, idle workers, and Ray's raylet, GCS, Ray
Data's stats and autoscaling actors, agents and monitors by their command lines). Writes ``scale_out_<model>.json`` and
``scale_out_<model>.png`` to ``--out`` (default: bench/).
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
BLOCK = 5000  # rows per block (--block): 20 blocks of 100,000 rows, 10 per worker of 2
SEED_LAYERS = [(128, True), (64, True)]  # BiGRU(128) -> BiGRU(64), sequences
FEATURES = {"seed": 50, "digits": 8}
#: Ray Data tasks submitted at once per worker (docs/cluster.md), unless --engine-defaults
QUEUED = 2
#: Ray: the custom resource that holds a 1-worker job to one task at a time
ONE_WORKER = "scale_out_one_worker"
#: Dask's settings for a small box (docs/cluster.md), unless --engine-defaults
DASK_SMALL_BOX = {
    "distributed.worker.profile.enabled": False,
    # the periodic checks of every Dask process (scheduler, client, workers, nannies):
    # event-loop ticks 50 times a second, system and memory monitors (psutil) 2 and 10
    # times a second; on 2 cores with a worker on each they take from the workers
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}
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


_HEAD = []


def _digits_head():
    """The head's (W.T, b), read once per process."""
    if not _HEAD:
        h = np.load(HEAD)
        _HEAD.append((np.ascontiguousarray(h["weight"].T), h["bias"]))
    return _HEAD[0]


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


def _preimport():
    """Ray's ``worker_process_setup_hook``: what every Ray worker process imports when it
    starts (before any job), so that no pipeline's timed job pays for imports. The same
    for both engines (rnnfast and ONNX Runtime are both imported)."""
    import ray.data  # noqa: F401  (an actor of map_batches is a ray.data MapWorker)

    import rnnfast.ray  # noqa: F401

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass


class _Accounted:
    """What both Ray scorers note (the same for rnnfast and ONNX Runtime): this process's
    CPU seconds and the time when ``__init__`` began and ended, and the CPU seconds
    spent inside ``__call__`` (the batches: by the process, Ray's own threads included,
    and by the calling thread alone, where both engines compute with one thread),
    returned as columns of every batch."""

    def _init_begins(self):
        self._t_init0, self._cpu_init0 = time.time(), cpu_seconds()
        self._batch_cpu = 0.0
        self._batch_thread_cpu = 0.0

    def _init_ends(self):
        self._t_ready, self._cpu_ready = time.time(), cpu_seconds()

    def _account(self, out, c0, t0, th0):
        self._batch_cpu += cpu_seconds() - c0
        self._batch_thread_cpu += time.thread_time() - th0
        n = len(out["y"])
        for k, v in (
            ("pid", os.getpid()),
            ("cpu", cpu_seconds()),
            ("cpu_init0", self._cpu_init0),
            ("cpu_ready", self._cpu_ready),
            ("batch_cpu", self._batch_cpu),
            ("batch_thread_cpu", self._batch_thread_cpu),
            ("t_init0", self._t_init0),
            ("t_ready", self._t_ready),
            ("t_batch0", t0),
        ):
            out[k] = np.full(n, v)
        return out


def _ray_classes():
    from rnnfast.ray import Predictor

    class RnnfastScorer(Predictor, _Accounted):
        """rnnfast.ray.Predictor, accounted (and, for the digits model, the head applied
        to h_n)."""

        def __init__(self, model, digits):
            self._init_begins()
            self.digits = digits
            if digits:
                super().__init__(
                    model,
                    input_column="data",
                    output_column=["out", "h", "c"],
                    return_state=True,
                    drop_input=True,
                )
                _digits_head()
            else:
                super().__init__(model, input_column="data", output_column="y", drop_input=True)
            self._init_ends()

        def __call__(self, batch):
            c0, t0, th0 = cpu_seconds(), time.time(), time.thread_time()
            out = super().__call__(batch)
            if self.digits:
                out = {"y": _logits(out["h"].transpose(1, 0, 2))}
            return self._account(out, c0, t0, th0)

    class OrtScorer(_Accounted):
        def __init__(self, blob):
            import ray

            self._init_begins()
            cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
            self.sess = ort_session(blob, max(1, cpus))
            self._init_ends()

        def __call__(self, batch):
            c0, t0, th0 = cpu_seconds(), time.time(), time.thread_time()
            return self._account({"y": self.sess.run(["y"], {"x": batch["data"]})[0]}, c0, t0, th0)

    return RnnfastScorer, OrtScorer


# Ray tasks (the default, --ray-compute tasks): the functions map_batches calls, in the
# worker processes Ray keeps between jobs; each keeps its engine per process (rnnfast:
# rnnfast.ray.predict_batch, as docs/cluster.md says; ONNX Runtime: a session per
# process, as a user would keep one), keyed by the object-store reference of the model
# (in a module of the worker process: Ray sends these functions by value, with a copy
# of this module's globals per task)


def _kept():
    """What this worker process keeps between tasks: per job its notes, per reference
    its ONNX Runtime session."""
    import types

    kept = sys.modules.get("_scale_out_kept")
    if kept is None:
        kept = sys.modules["_scale_out_kept"] = types.ModuleType("_scale_out_kept")
        kept.notes, kept.sessions = {}, {}
    return kept


def _job_notes(job):
    """This process's notes of one job (accounted as an actor's, its "start" the job's
    first batch here)."""
    notes = _kept().notes.get(job)
    if notes is None:
        notes = _kept().notes[job] = _Accounted()
        notes._init_begins()
        notes._init_ends()
    return notes


def _rnnfast_task(batch, model, digits, job):
    import rnnfast.ray

    notes = _job_notes(job)
    c0, t0, th0 = cpu_seconds(), time.time(), time.thread_time()
    if digits:
        out = rnnfast.ray.predict_batch(
            batch, model, input_column="data", output_column=["out", "h", "c"], return_state=True, drop_input=True
        )
        out = {"y": _logits(out["h"].transpose(1, 0, 2))}
    else:
        out = rnnfast.ray.predict_batch(batch, model, input_column="data", output_column="y", drop_input=True)
    return notes._account(out, c0, t0, th0)


def _ort_task(batch, blob, job):
    import ray

    notes = _job_notes(job)
    c0, t0, th0 = cpu_seconds(), time.time(), time.thread_time()
    sessions = _kept().sessions
    sess = sessions.get(blob.hex())
    if sess is None:
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        sess = sessions[blob.hex()] = ort_session(ray.get(blob), max(1, cpus))
    return notes._account({"y": sess.run(["y"], {"x": batch["data"]})[0]}, c0, t0, th0)


def _tree_cpu():
    """CPU seconds (user + system) of this process and of each of its descendants, by
    pid: what the engines' own processes (Dask's nannies and workers, Ray's raylet, GCS,
    workers and helper actors) have used so far."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


# the engines' processes by what they are (from their command lines), for the table of
# CPU seconds per process: Ray's own (raylet, GCS, its agents and monitors, Ray Data's
# helper actors) and its worker processes; Dask's are the driver (client, scheduler and
# nannies) and the worker processes
_RAY_ROLES = (
    ("raylet", "raylet"),
    ("gcs_server", "GCS"),
    ("_StatsActor", "Ray Data stats actor"),
    ("_AutoscalingCoordinator", "Ray Data autoscaling actor"),
    ("dashboard", "dashboard agents"),
    ("runtime_env", "dashboard agents"),
    ("DashboardAgent", "dashboard agents"),
    ("RuntimeEnvAgent", "dashboard agents"),
    ("log_monitor", "log monitor"),
    ("monitor.py", "monitor"),
)


def _role(pid):
    import psutil

    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "gone"
    for key, role in _RAY_ROLES:
        if key in cmd:
            return role
    return "other"


def _per_process(d, me, scoring, idle_name):
    """CPU s of one job by process kind: ``d`` (pid -> CPU s in the job), this process
    (driver), the scoring processes, the engine's other processes by role."""
    out = {"driver": d.get(me, 0.0), "scoring workers": sum(v for pid, v in d.items() if pid in scoring)}
    for pid, v in d.items():
        if pid == me or pid in scoring or v <= 0:
            continue
        role = _role(pid)
        if role == "other":
            role = idle_name
        out[role] = out.get(role, 0.0) + v
    return {"proc " + k: v for k, v in out.items()}


def _score_block(model, digits, xb, threads=1):
    """The model (and, for digits, the head) on one block: what every rnnfast pipeline runs."""
    if digits:
        return _logits(model(xb, num_threads=threads)[1][0])
    return model.predict(xb, num_threads=threads)


def _plain_process(conn, model, digits, x):
    """A worker process without an engine (``rnnfast processes``): holds all the rows,
    scores the rows it is told (``(which, start, stop)``), block by block on one thread,
    and sends back their scores and the CPU seconds it used."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        while True:
            msg = conn.recv()
            if msg is None:
                return
            which, a, b = msg
            c0 = cpu_seconds()
            xs = x[which]
            y = np.concatenate([_score_block(model, digits, xs[s : min(s + BLOCK, b)]) for s in range(a, b, BLOCK)])
            conn.send((y, cpu_seconds() - c0))


# -- the pipelines ------------------------------------------------------------------------


class Pipelines:
    """Every pipeline on two inputs: ``"full"`` (timed) and ``"warm"`` (a tenth, for the
    warm-up round)."""

    def __init__(self, name, x, engines):
        self.name = name
        self.digits = name == "digits"
        self.x = {"full": x, "warm": x[: max(2 * BLOCK, len(x) // 10 // BLOCK * BLOCK)]}  # a block per worker at least
        self.engines = engines
        net = torch_net(name)
        self.model = rnnfast_model(name, net)
        self.blob = onnx_bytes(net, FEATURES[name]) if "onnxruntime" in engines else None
        self.dask = None
        self.ray_compute = "tasks"
        self.ray_jobs = 0
        self.ray_ds = None
        self.engine_defaults = False
        self.dask_model = "object"

    def _score(self, xb, threads):
        return _score_block(self.model, self.digits, xb, threads)

    # each pipeline returns (the scores, what it cost: a dict with "wall" (s, the timed
    # job), "cpu" (the CPU s of the processes that score: the driver locally, the Dask
    # workers, the Ray actors from the job's start), "driver" and "services" (CPU s of
    # this process and of the engine's other processes during the job, for the engines),
    # and for Ray "start_s" (from the job's start until its last actor was ready),
    # "start_cpu" (the actors' CPU s until then) and "batch_cpu" (their CPU s inside
    # __call__)
    def rnnfast_local(self, threads, which="full"):
        from threadpoolctl import threadpool_limits

        x = self.x[which]
        # NumPy's own BLAS (the digits head's product) held to the same threads: by default
        # it runs 2 threads whose spinning cost 1.7-3 CPU s per 100,000 rows
        with threadpool_limits(threads, user_api="blas"):
            c, t = cpu_seconds(), time.perf_counter()
            y = np.concatenate([self._score(x[s : s + BLOCK], threads) for s in range(0, len(x), BLOCK)])
            return y, dict(wall=time.perf_counter() - t, cpu=cpu_seconds() - c)

    def ort_local(self, threads, which="full"):
        from threadpoolctl import threadpool_limits

        x = self.x[which]
        with threadpool_limits(threads, user_api="blas"):
            c, t = cpu_seconds(), time.perf_counter()
            sess = ort_session(self.blob, threads)
            y = np.concatenate([sess.run(["y"], {"x": x[s : s + BLOCK]})[0] for s in range(0, len(x), BLOCK)])
            return y, dict(wall=time.perf_counter() - t, cpu=cpu_seconds() - c)

    # plain processes (no engine): the machine's own ceiling for 1 -> 2 workers. Two worker
    # processes hold all the rows (sent when they start, not timed); a 1-worker job is one
    # of them scoring every block, a 2-worker job each scoring half the blocks
    def start_procs(self):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.procs = []
        for _ in range(2):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_plain_process, args=(there, self.model, self.digits, self.x), daemon=True)
            proc.start()
            self.procs.append((proc, here))
        for _proc, conn in self.procs:  # each warm (the model's first call), the rows in place
            conn.send(("warm", 0, BLOCK))
            conn.recv()

    def rnnfast_procs(self, workers, which="full"):
        n = len(self.x[which])
        half = n // BLOCK // 2 * BLOCK
        parts = [(0, n)] if workers == 1 else [(0, half), (half, n)]
        c, t = cpu_seconds(), time.perf_counter()
        for (_proc, conn), (a, b) in zip(self.procs, parts):
            conn.send((which, a, b))
        got = [conn.recv() for (_proc, conn), _ in zip(self.procs, parts)]
        wall = time.perf_counter() - t
        return np.concatenate([y for y, _ in got]), dict(
            wall=wall, cpu=sum(cpu for _, cpu in got), driver=cpu_seconds() - c, services=0.0
        )

    def close_procs(self):
        for proc, conn in self.procs:
            conn.send(None)
            proc.join(10)

    # Dask: one cluster of two workers; a 1-worker job runs on one of them, on a copy of
    # the data held there, the other worker idle (as on a 1-worker cluster, but without
    # a second cluster's processes running beside the 2-worker jobs)
    def start_dask(self):
        import logging

        import dask
        import dask.array as da
        import distributed

        import rnnfast.dask

        logging.getLogger("distributed").setLevel(logging.ERROR)
        # the workers' allocator as docs/cluster.md says (rnnfast.dask.worker_config), and
        # (unless --engine-defaults) its settings for a small box: no statistical profiler
        # in the workers (a thread sampling the task thread's stack every 10 ms)
        settings = dict(rnnfast.dask.worker_config())
        if not self.engine_defaults:
            settings.update(DASK_SMALL_BOX)
        with dask.config.set(settings):
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
            )
        client = distributed.Client(cluster, set_as_default=False)
        client.run(_preimport)  # as the Ray workers do: the imports are the cluster's start
        pids = client.run(os.getpid)
        one = sorted(pids)[0]
        xd = {}
        for k, v in self.x.items():
            # two copies (their own names): one on one worker; one dealt block by block to
            # the two in turn, as workers reading the blocks from files would hold them (a
            # plain persist left 5 and 3 of 8 blocks on the two: tasks then waited on or
            # were stolen with their block)
            x1 = da.from_array(v, chunks=(BLOCK, -1, -1), name="x1-%s" % k)
            xd[1, k] = client.persist(x1, workers=[one])
            x2 = da.from_array(v, chunks=(BLOCK, -1, -1), name="x2-%s" % k)
            xd[2, k] = da.concatenate(
                [client.persist(x2.blocks[i], workers=[sorted(pids)[i % 2]]) for i in range(x2.numblocks[0])]
            )
        # the model: itself (rnnfast.dask sends it to every worker once, docs/cluster.md),
        # or (--dask-model scatter) a Future of it on both workers
        model = client.scatter(self.model, broadcast=True) if self.dask_model == "scatter" else self.model
        with client.as_current():
            distributed.wait(list(xd.values()) + ([model] if self.dask_model == "scatter" else []))
        self.dask = (cluster, client, xd, {1: [one], 2: None}, {1: {pids[one]}, 2: set(pids.values())}, model)

    def rnnfast_dask(self, workers, which="full"):
        import dask.array as da

        import rnnfast.dask

        cluster, client, xd, where, pids, model = self.dask
        x = xd[workers, which]
        c0 = _tree_cpu()
        t = time.perf_counter()
        with client.as_current():  # the client predict sends the model to (a scattered one: probed there)
            if self.digits:
                _, (h, _c) = rnnfast.dask.predict(model, x, return_state=True)
                y = da.blockwise(_dask_head, "bk", h, "lbj", new_axes={"k": 10}, dtype=np.float32, concatenate=True)
            else:
                y = rnnfast.dask.predict(model, x)
        y = client.compute(y, workers=where[workers], allow_other_workers=False).result()
        wall = time.perf_counter() - t
        c1 = _tree_cpu()
        d = {pid: c1[pid] - c0.get(pid, 0.0) for pid in c1}
        me = os.getpid()
        return y, dict(
            wall=wall,
            cpu=sum(v for pid, v in d.items() if pid in pids[workers]),
            driver=d.get(me, 0.0),
            services=sum(v for pid, v in d.items() if pid not in pids[workers] and pid != me),
            **_per_process(d, me, pids[workers], "idle worker"),
        )

    # Ray
    def start_ray(self):
        import ray

        ray.init(
            address="local",
            num_cpus=2,
            # the 1-worker job's tasks each hold this resource, of which the cluster has
            # one: Ray runs one of them at a time, as on a cluster of one CPU, the tasks
            # queued ahead waiting at Ray's scheduler as they would there
            resources={ONE_WORKER: 1},
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"worker_process_setup_hook": _preimport},
        )
        ctx = ray.data.DataContext.get_current()
        # (unless --engine-defaults) no per-operator resource reservation: Ray Data's
        # allocator budgets each job from the cluster's resources as its autoscaling
        # coordinator actor reports them, asynchronously, refreshed once a second; until
        # the first answer the budget is zero and only one task runs (the "liveness"
        # exception), so the second worker of every job started 1.05-1.1 s late
        # (docs/cluster.md). Set before the datasets are made: each keeps a copy.
        ctx.op_resource_reservation_enabled = self.engine_defaults
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        self.ray_ds = {k: ray.data.from_numpy(np.split(v, len(v) // BLOCK)).materialize() for k, v in self.x.items()}
        self.ray_classes = _ray_classes()
        self.model_ref = ray.put(self.model)  # sent once through the object store
        self.blob_ref = ray.put(self.blob) if self.blob is not None else None

    def _ray(self, fn, args, workers, which):
        import ray

        c0 = _tree_cpu()
        t0 = time.time()
        if self.ray_compute == "tasks":
            self.ray_jobs += 1
            # (unless --engine-defaults) QUEUED tasks per worker submitted at once
            # (docs/cluster.md): Ray's scheduler runs one per CPU and starts a queued one
            # the moment a task ends; with one per worker, each worker waited 0.2-0.3 s
            # after every task for Ray Data's scheduling loop to notice and submit the next
            ahead = 1 if self.engine_defaults else QUEUED
            extra = dict(resources={ONE_WORKER: 1}) if workers == 1 and ahead > 1 else {}
            out = self.ray_ds[which].map_batches(
                fn,
                fn_args=args + (self.ray_jobs,),
                batch_size=BLOCK,
                num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=ahead * workers),
                batch_format="numpy",
                **extra,
            )
        else:
            out = self.ray_ds[which].map_batches(
                fn,
                fn_constructor_args=args,
                batch_size=BLOCK,
                num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=workers),
                batch_format="numpy",
            )
        batches = list(out.iter_batches(batch_size=None, batch_format="numpy"))
        wall = time.time() - t0
        c1 = _tree_cpu()
        last = {}  # per actor, its last batch's notes
        for b in batches:
            for i, pid in enumerate(b["pid"]):
                if pid not in last or b["cpu"][i] > last[pid]["cpu"]:
                    last[pid] = {k: float(b[k][i]) for k in b if k != "y"}
        me = os.getpid()
        # an actor's CPU in this job: from the job's start (its process may be older: a
        # worker Ray started before, idle) or from its __init__
        before = {pid: c0.get(pid, a["cpu_init0"]) for pid, a in last.items()}
        return np.concatenate([b["y"] for b in batches]), dict(
            wall=wall,
            cpu=sum(a["cpu"] - before[pid] for pid, a in last.items()),
            start_s=max(a["t_ready"] for a in last.values()) - t0,
            start_cpu=sum(a["cpu_ready"] - before[pid] for pid, a in last.items()),
            batch_cpu=sum(a["batch_cpu"] for a in last.values()),
            batch_thread_cpu=sum(a["batch_thread_cpu"] for a in last.values()),
            driver=c1.get(me, 0.0) - c0.get(me, 0.0),
            services=sum(v - c0.get(pid, 0.0) for pid, v in c1.items() if pid != me and pid not in last),
            **_per_process(
                {pid: v - (before[pid] if pid in last else c0.get(pid, 0.0)) for pid, v in c1.items()},
                me,
                set(last),
                "idle workers",
            ),
        )

    def rnnfast_ray(self, workers, which="full"):
        fn = _rnnfast_task if self.ray_compute == "tasks" else self.ray_classes[0]
        return self._ray(fn, (self.model_ref, self.digits), workers, which)

    def ort_ray(self, workers, which="full"):
        if self.ray_compute == "tasks":
            return self._ray(_ort_task, (self.blob_ref,), workers, which)
        return self._ray(self.ray_classes[1], (self.blob,), workers, which)

    def close_dask(self):
        cluster, client = self.dask[:2]
        client.close()
        cluster.close()

    def close_ray(self):
        import ray

        self.ray_ds = None
        ray.shutdown()


def main():
    global BLOCK
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
    ap.add_argument(
        "--block",
        type=int,
        default=BLOCK,
        help="rows per block: local call, Dask chunk, Ray block and batch (default %(default)s)",
    )
    ap.add_argument("--engines", default="local,procs,dask,ray,onnxruntime")
    ap.add_argument(
        "--ray-compute",
        choices=("tasks", "actors"),
        default="tasks",
        help="Ray Data map_batches with tasks in Ray's kept worker processes (rnnfast.ray.predict_batch) "
        "or an actor pool per job (rnnfast.ray.Predictor)",
    )
    ap.add_argument(
        "--dask-model",
        choices=("object", "scatter"),
        default="object",
        help="how the Dask pipeline passes the model: itself (sent to each worker once as a worker plugin) "
        "or a Future of it scattered to both workers",
    )
    ap.add_argument(
        "--engine-defaults",
        action="store_true",
        help="the engines' default settings (Ray Data's per-operator resource reservation and one task "
        "submitted per worker, Dask's worker profiler) instead of the small-box settings docs/cluster.md "
        "recommends",
    )
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--plot", metavar="JSON", help="only draw the plot of an earlier run's JSON")
    args = ap.parse_args()
    if args.plot:
        with open(args.plot) as f:
            d = json.load(f)
        _plot(
            d["rows"],
            d["scaling_efficiency"],
            d["meta"],
            args.plot[:-5] + ".png",
            d.get("cpu_seconds_ratio"),
            d.get("cpu_bound_efficiency"),
        )
        return
    if args.quick:
        args.rows, args.rounds = 10_000, 1
    BLOCK = args.block
    args.rows -= args.rows % BLOCK
    engines = set(args.engines.split(","))
    warnings.filterwarnings("ignore")
    x = np.random.default_rng(0).standard_normal((args.rows, args.time, FEATURES[args.model])).astype(np.float32)
    load_before = os.getloadavg()
    t_start = time.time()
    p = Pipelines(args.model, x, engines)
    p.ray_compute = args.ray_compute
    p.engine_defaults = args.engine_defaults
    p.dask_model = args.dask_model
    # one engine at a time (its cluster started before its pipelines and shut down after
    # them, not timed), so that no engine's idle processes load the cores while another
    # is timed; inside an engine, its pipelines in interleaved rounds
    groups = []
    if "local" in engines:
        runs = {
            "rnnfast local, 1 thread": lambda which: p.rnnfast_local(1, which),
            "rnnfast local, 2 threads": lambda which: p.rnnfast_local(2, which),
        }
        if "onnxruntime" in engines:
            runs["onnxruntime local, 1 thread"] = lambda which: p.ort_local(1, which)
        groups.append(("local", None, runs, None))
    if "procs" in engines:
        runs = {}
        for w in (1, 2):
            runs["rnnfast processes, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.rnnfast_procs(w, which)
        groups.append(("procs", p.start_procs, runs, p.close_procs))
    if "dask" in engines:
        runs = {}
        for w in (1, 2):
            runs["rnnfast dask, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.rnnfast_dask(w, which)
        groups.append(("dask", p.start_dask, runs, p.close_dask))
    if "ray" in engines:
        runs = {}
        for w in (1, 2):
            runs["rnnfast ray, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.rnnfast_ray(w, which)
            if "onnxruntime" in engines:
                runs["onnxruntime ray, %d worker%s" % (w, "s" * (w > 1))] = lambda which, w=w: p.ort_ray(w, which)
        groups.append(("ray", p.start_ray, runs, p.close_ray))
    print(
        "model %s: %d sequences of %d steps, %d rounds; load average %.1f %.1f %.1f"
        % ((args.model, args.rows, args.time, args.rounds) + load_before),
        flush=True,
    )
    reference = {k: p.rnnfast_local(1, k)[0] for k in ("warm", "full")}
    names = [n for g in groups for n in g[2]]
    times = {k: [] for k in names}
    cpus = {k: [] for k in names}
    loads = {k: [] for k in names}
    phases = {k: {} for k in names}
    agree = {}
    rounds_per_group = {}
    for gi, (group, start, runs, stop) in enumerate(groups):
        t_group = time.time()
        if start is not None:
            start()
        # the budget left, shared by this engine and the ones after it
        share = None if not args.budget else (args.budget - (t_group - t_start)) / (len(groups) - gi)
        group_names = list(runs)
        rounds_run, round_s = 0, 0.0
        for r in range(-1, args.rounds):  # round -1: the warm-up, on a tenth of the rows, not counted
            if share is not None and rounds_run and time.time() - t_group + round_s > share:
                print("--budget %.0f s: %s stops after %d round(s)" % (args.budget, group, rounds_run), flush=True)
                break
            t_round = time.time()
            order = group_names[r % len(group_names) :] + group_names[: r % len(group_names)]
            for name in order:
                which = "warm" if r < 0 else "full"
                y, info = runs[name](which)
                dt = info["wall"]
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
                cpus[name].append(info["cpu"])
                loads[name].append(os.getloadavg()[0])
                for k, v in info.items():
                    if k not in ("wall", "cpu"):
                        phases[name].setdefault(k, []).append(v)
                print(
                    "round %d  %-32s %7.2f s  %9.0f seq/s  %6.1f cpu-s  load %.1f%s"
                    % (
                        r + 1,
                        name,
                        dt,
                        args.rows / dt,
                        info["cpu"],
                        os.getloadavg()[0],
                        "".join(
                            "  %s %.2f" % kv
                            for kv in info.items()
                            if kv[0] not in ("wall", "cpu") and not kv[0].startswith("proc ")
                        ),
                    ),
                    flush=True,
                )
            if r >= 0:
                rounds_run += 1
                round_s = time.time() - t_round  # the next round is assumed to take as long
        rounds_per_group[group] = rounds_run
        if stop is not None:
            stop()
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
                phases={k: float(np.median(v)) for k, v in phases[name].items()},
                phases_all=phases[name],
                **agree[name],
            )
        )
    by = {r["pipeline"]: r for r in rows}
    eff, cpu_eff, bound_eff = {}, {}, {}
    pairs = [
        (b, b + ", 1 worker", b + ", 2 workers")
        for b in ("rnnfast processes", "rnnfast dask", "rnnfast ray", "onnxruntime ray")
    ]
    pairs.append(("rnnfast local (threads)", "rnnfast local, 1 thread", "rnnfast local, 2 threads"))
    for key, a, b in pairs:
        one, two = by.get(a), by.get(b)
        if one and two:
            eff[key] = two["seq_per_s"] / (2 * one["seq_per_s"])
            cpu_eff[key] = one["cpu_s"] / two["cpu_s"]
            # on two idle cores a job cannot end before its serial worker's CPU seconds
            # (1 worker) or before half of all the CPU seconds it needs (workers, driver,
            # engine), whatever the load was when they were counted
            t1 = max(one["cpu_s"], _all_cpu(one) / 2)
            t2 = max(two["cpu_s"] / 2, _all_cpu(two) / 2)
            bound_eff[key] = t1 / (2 * t2)
    print()
    print(
        "| pipeline | median s | sequences/s | vs onnxruntime ray | CPU s | sequences/CPU s "
        "| actors' start s (CPU s) | driver + engine CPU s | agrees with rnnfast local |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        w = r["pipeline"].split(", ")[-1]
        peer = by.get("onnxruntime ray, " + w)
        vs = "%.2fx" % (r["seq_per_s"] / peer["seq_per_s"]) if peer and not r["pipeline"].startswith("onnx") else ""
        ok = "bitwise" if r["bitwise"] else "max abs diff %.1e" % r["max_abs_diff"]
        ph = r["phases"]
        start = "%.2f (%.2f)" % (ph["start_s"], ph["start_cpu"]) if "start_s" in ph else ""
        other = "%.1f" % (ph["driver"] + ph["services"]) if "driver" in ph else ""
        print(
            "| %s | %.2f | %.0f | %s | %.1f | %.0f | %s | %s | %s |"
            % (r["pipeline"], r["median_s"], r["seq_per_s"], vs, r["cpu_s"], r["seq_per_cpu_s"], start, other, ok)
        )
    _process_table(rows)
    print()
    for k, v in eff.items():
        print(
            "scaling 1 -> 2, %s: wall-time efficiency %.0f%%, CPU seconds 1 / 2 = %.0f%%, "
            "CPU-bound efficiency on idle cores %.0f%%" % (k, 100 * v, 100 * cpu_eff[k], 100 * bound_eff[k])
        )
    import dask
    import onnxruntime
    import ray

    meta = dict(
        rows=args.rows,
        time=args.time,
        features=FEATURES[args.model],
        block=BLOCK,
        rounds=rounds_per_group,
        budget_s=args.budget,
        ray_compute=args.ray_compute,
        engine_defaults=args.engine_defaults,
        dask_model=args.dask_model,
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
        json.dump(
            dict(
                meta=meta,
                rows=rows,
                scaling_efficiency=eff,
                cpu_seconds_ratio=cpu_eff,
                cpu_bound_efficiency=bound_eff,
            ),
            f,
            indent=1,
        )
    _plot(rows, eff, meta, os.path.join(args.out, "scale_out_%s.png" % args.model), cpu_eff, bound_eff)


def _process_table(rows):
    """CPU seconds per job by process (medians of the rounds), for the engines' rows."""
    kinds = []
    for r in rows:
        for k in r["phases"]:
            if k.startswith("proc ") and k not in kinds:
                kinds.append(k)
    if not kinds:
        return
    print()
    print("CPU s per job by process (medians):")
    print()
    print("| pipeline | " + " | ".join(k[5:] for k in kinds) + " | all |")
    print("| --- |" + " ---: |" * (len(kinds) + 1))
    for r in rows:
        ph = r["phases"]
        if not any(k in ph for k in kinds):
            continue
        print(
            "| %s | " % r["pipeline"]
            + " | ".join("%.2f" % ph[k] if k in ph else "" for k in kinds)
            + " | %.2f |" % sum(ph.get(k, 0.0) for k in kinds)
        )


def _all_cpu(row):
    """A pipeline's CPU seconds, workers, driver and engine processes together."""
    ph = row["phases"]
    return row["cpu_s"] + ph.get("driver", 0.0) + ph.get("services", 0.0)


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _plot(rows, eff, meta, path, cpu_eff=None, bound_eff=None):
    from _common import pyplot

    plt = pyplot()
    if plt is None:
        return
    groups = [
        "rnnfast local",
        "onnxruntime local",
        "rnnfast processes",
        "rnnfast dask",
        "rnnfast ray",
        "onnxruntime ray",
    ]
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
            label = g.replace(" ", "\n", 1) + ("\n%.0f%%" % (100 * effs[k]) if k in effs else "")
            if effs is not eff and bound_eff and k in bound_eff and not g.endswith("local"):
                label += " (%.0f%%)" % (100 * bound_eff[k])
            labels.append(label)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(ylabel)
    axes[0].set_title("wall time; % = scaling efficiency 1 -> 2", fontsize=8)
    axes[1].set_title(
        "CPU seconds; % = CPU(1) / CPU(2)" + (" (CPU-bound efficiency on idle cores)" if bound_eff else ""),
        fontsize=8,
    )
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
