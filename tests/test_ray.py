"""rnnfast.ray.Predictor on a real engine: ray.init(num_cpus=2) here, Ray Data
map_batches with actors. Results equal a local predict bitwise (numpy and pandas
batches, variable-length rows from parquet); each actor computes with the CPUs Ray
gave it (threads counted in the actor's process). The batch logic is also tested
without Ray running."""

import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
from rnnfast.layers import RNNLayer

from _testing import count_layer_pickles, random_weights

ray = pytest.importorskip("ray", reason="install rnnfast[ray]")
pytest.importorskip("ray.data", reason="install rnnfast[ray]")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq
import ray.cloudpickle  # noqa: F811 (the submodule)

import rnnfast.ray
from rnnfast.ray import Predictor

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this file

DATA = os.path.join(os.path.dirname(rnnfast.__file__), "data")

# Ray's own modules warn about their own settings (DataContext): not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray[.].*"),
]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"worker_process_setup_hook": "rnnfast.ray.setup_worker"},  # the imports as workers start
    )
    ctx = ray.data.DataContext.get_current()
    old = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = old
        ray.shutdown()


def _tids():
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _python_tids():
    """The OS threads of this process's Python threads (Ray Data starts some of its own in
    an actor, now and then during a batch): not an OpenMP team's."""
    import threading

    return {str(t.native_id) for t in threading.enumerate()}


def _thread_name(tid):
    """An OS thread's name (Ray names its own threads; libgomp's and rnnfast's partner
    keep the process's name)."""
    try:
        with open("/proc/self/task/%s/comm" % tid) as f:
            return f.read().strip()
    except OSError:
        return "(ended)"


class CountingPredictor(Predictor):
    """The real Predictor, noting per batch its process, threads and the OS threads
    that appeared while it computed."""

    def __call__(self, batch):
        import rnnfast._scaleout as s

        before = _tids()
        out = super().__call__(batch)
        n = len(next(iter(out.values()))) if isinstance(out, dict) else len(out)
        out["pid"] = np.full(n, os.getpid())
        out["threads"] = np.full(n, self.num_threads)
        out["peak"] = np.full(n, s.BUDGET.peak)
        # (gRPC's own C++ threads, "grpc_global_timer" and the like, which Ray's runtime
        # starts now and then during a batch, are named; an OpenMP team's keep the
        # process's name)
        new = sorted(t for t in _tids() - before - _python_tids() if not _thread_name(t).startswith("grpc_"))
        out["new_os_threads"] = np.full(n, len(new))
        out["new_os_thread_names"] = np.full(n, ",".join(_thread_name(t) for t in new))
        return out


def _lstm(rng, H=16, I=5):
    return rnnfast.TorchRNN(
        [
            RNNLayer("lstm", [random_weights(rng, "lstm", I, H) for _ in range(2)]),
            RNNLayer("lstm", [random_weights(rng, "lstm", 2 * H, H) for _ in range(2)]),
        ],
        batch_first=True,
    )


def test_numpy_batches_from_a_path_one_thread_per_actor(ray_local):
    path = os.path.join(DATA, "digits_bigru.keras")
    model = rnnfast.load(path)
    x = np.random.default_rng(0).standard_normal((600, 8, 8)).astype(np.float32)
    ds = ray.data.from_numpy(np.split(x, 6)).map_batches(  # six blocks
        CountingPredictor,
        fn_constructor_args=(path,),
        fn_constructor_kwargs=dict(input_column="data", output_column="proba"),
        batch_size=100,
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_format="numpy",
    )
    got = ds.take_batch(600, batch_format="numpy")
    assert np.array_equal(got["data"], x)  # every row, in order
    assert got["proba"].dtype == np.float32 and got["proba"].tobytes() == model.predict(x, num_threads=1).tobytes()
    assert set(got["threads"]) == {1} and set(got["peak"]) == {1}
    assert set(got["new_os_threads"]) == {0}, set(got["new_os_thread_names"])  # no OpenMP team was started


def test_pandas_batches_two_cpus_per_actor(ray_local):
    rng = np.random.default_rng(1)
    model = _lstm(rng, H=128, I=16)  # steps large enough for two threads
    x = rng.standard_normal((256, 12, 16)).astype(np.float32)
    lengths = rng.integers(1, 13, 256)
    items = pd.DataFrame({"x": list(x), "n": lengths})
    ds = ray.data.from_pandas([items.iloc[:128], items.iloc[128:]]).map_batches(
        CountingPredictor,
        fn_constructor_args=(model,),
        fn_constructor_kwargs=dict(input_column="x", output_column="out", lengths_column="n", drop_input=True),
        batch_size=128,
        num_cpus=2,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="pandas",
    )
    got = ds.to_pandas()
    assert "x" not in got.columns and list(got["n"]) == list(lengths)
    want = model(x, lengths=lengths, num_threads=1)[0]
    assert np.stack(got["out"].to_list()).tobytes() == want.tobytes()
    assert set(got["threads"]) == {2} and got["peak"].max() <= 2
    assert got["new_os_threads"].max() <= 1  # a team of two: one more thread at most


def test_variable_length_rows_from_parquet(ray_local, tmp_path):
    rng = np.random.default_rng(2)
    model = _lstm(rng)
    rows = [rng.standard_normal((int(rng.integers(1, 30)), 5)).astype(np.float32) for _ in range(150)]
    table = pa.table(
        {"seq": pa.array([r.tolist() for r in rows], type=pa.list_(pa.list_(pa.float32()))), "id": np.arange(150)}
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=50)
    ds = ray.data.read_parquet(str(tmp_path)).map_batches(
        Predictor,
        fn_constructor_args=(ray.put(model),),
        fn_constructor_kwargs=dict(input_column="seq", output_column=["out", "h", "c"], return_state=True),
        # one actor: the read tasks need the other CPU of the two
        batch_size=64,
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_format="numpy",
    )
    got = ds.take_batch(150, batch_format="numpy")
    L = np.array([len(r) for r in rows])
    x = np.zeros((150, L.max(), 5), np.float32)
    for i, r in enumerate(rows):
        x[i, : len(r)] = r
    out, (h, c) = model(x, lengths=L, num_threads=1)
    assert list(got["id"]) == list(range(150))
    for i in range(150):
        assert np.asarray(got["out"][i]).tobytes() == out[i, : L[i]].tobytes()
    assert got["h"].shape == (150, 4, 16) and got["h"].tobytes() == np.ascontiguousarray(h.transpose(1, 0, 2)).tobytes()
    assert got["c"].tobytes() == np.ascontiguousarray(c.transpose(1, 0, 2)).tobytes()


def test_model_pickled_once_per_job_not_per_batch(ray_local, monkeypatch):
    """A model given as an object is pickled in the driver once per job (Ray puts the
    constructor's arguments in the object store), however many batches and actors."""
    rng = np.random.default_rng(5)
    model = _lstm(rng)  # two layers
    pickled = count_layer_pickles(monkeypatch)
    x = rng.standard_normal((240, 7, 5)).astype(np.float32)
    ds = ray.data.from_numpy(np.split(x, 8)).map_batches(
        CountingPredictor,
        fn_constructor_args=(model,),
        fn_constructor_kwargs=dict(input_column="data", output_column="out"),
        batch_size=30,
        num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=2),
        batch_format="numpy",
    )
    got = ds.take_batch(240, batch_format="numpy")
    assert got["out"].tobytes() == model(x, num_threads=1)[0].tobytes()
    assert pickled[0] == 2, pickled  # the two layers, once


def _counting_task(batch, model, **options):
    """rnnfast.ray.predict_batch, noting per batch its process and whether it made a new
    Predictor (loaded the model)."""
    import rnnfast.ray as rr

    before = set(map(id, rr._predictors.values()))
    out = rr.predict_batch(batch, model, **options)
    n = len(out["out"])
    out["pid"] = np.full(n, os.getpid())
    out["new"] = np.zeros(n, np.int64)  # on the batch's first row
    out["new"][0] = len(set(map(id, rr._predictors.values())) - before)
    out["threads"] = np.full(n, max(p.num_threads for p in rr._predictors.values()))  # tasks of 1 CPU here
    return out


def test_tasks_keep_the_model_in_the_worker_process(ray_local):
    """predict_batch in map_batches tasks: bitwise the local results, a model loaded once
    per worker process and kept for the next job (from ray.put and from a path)."""
    rng = np.random.default_rng(6)
    model = _lstm(rng)
    x = rng.standard_normal((240, 7, 5)).astype(np.float32)
    want = model(x, num_threads=1)[0]
    path = os.path.join(DATA, "digits_lstm.pt")
    digits = rnnfast.load(path, batch_first=True)
    xd = rng.standard_normal((240, 6, 8)).astype(np.float32)
    ds = ray.data.from_numpy(np.split(x, 8))
    dsd = ray.data.from_numpy(np.split(xd, 8))
    for kind, data, arg, opts, expect in (
        ("ref", ds, ray.put(model), {}, want),
        ("path", dsd, path, dict(batch_first=True), digits(xd, num_threads=1)[0]),
    ):
        loaded = {}
        for _job in range(2):
            got = data.map_batches(
                _counting_task,
                fn_args=(arg,),
                fn_kwargs=dict(input_column="data", output_column="out", **opts),
                batch_size=30,
                num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=2),
                batch_format="numpy",
            ).take_batch(240, batch_format="numpy")
            assert got["out"].tobytes() == expect.tobytes(), kind
            assert set(got["threads"]) == {1}  # the task's CPUs
            for pid, new in zip(got["pid"], got["new"]):
                loaded[pid] = loaded.get(pid, 0) + new
        assert all(n == 1 for n in loaded.values()), (kind, loaded)  # once per process, both jobs


def _timed_task(batch, model, **options):
    """_counting_task, noting when the batch began and ended (in its process)."""
    import time

    t0 = time.time()
    out = _counting_task(batch, model, **options)
    n = len(out["out"])
    out["t0"] = np.full(n, t0)
    out["t1"] = np.full(n, time.time())
    return out


def test_tasks_submitted_two_per_cpu_run_one_per_cpu(ray_local):
    """docs/cluster.md's settings for a small fixed cluster: no per-operator resource
    reservation and twice as many tasks submitted as the node has CPUs. Ray still runs
    one task per CPU (never more than two of them at once here, one thread each), and the
    results are bitwise the local ones, in order."""
    ctx = ray.data.DataContext.get_current()
    old = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False  # before the dataset: it keeps a copy
    try:
        rng = np.random.default_rng(11)
        model = _lstm(rng, H=32)
        x = rng.standard_normal((16 * 40, 30, 5)).astype(np.float32)
        got = (
            ray.data.from_numpy(np.split(x, 16))
            .map_batches(
                _timed_task,
                fn_args=(ray.put(model),),
                fn_kwargs=dict(input_column="data", output_column="out"),
                batch_size=40,
                num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=2 * int(ray.cluster_resources()["CPU"])),
                batch_format="numpy",
            )
            .take_batch(len(x), batch_format="numpy")
        )
    finally:
        ctx.op_resource_reservation_enabled = old
    assert got["out"].tobytes() == model(x, num_threads=1)[0].tobytes()
    assert set(got["threads"]) == {1}
    spans = sorted(set(zip(got["t0"].tolist(), got["t1"].tolist())))
    assert len(spans) == 16  # one per batch
    events = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])
    running = np.cumsum([e for _, e in events])
    assert running.max() <= 2, spans  # the CPUs of this node


def _second_faults():
    """Minor page faults of making and writing a 64 MiB array, the second time."""
    import resource

    import numpy as np

    for _ in range(2):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        np.ones(16 << 20, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


# a fresh process: _second_faults before and after keep_allocations()
_FAULTS = (
    inspect.getsource(_second_faults)
    + """
from rnnfast._scaleout import keep_allocations

before = _second_faults()
kept = keep_allocations()
print(before, kept, _second_faults())
"""
)


def _allocator_task(path):
    """In a one-CPU Ray task: whether this worker keeps its allocations after a batch, and
    the page faults of a 64 MiB array made for the second time after it."""
    from rnnfast import _scaleout

    rnnfast.ray.predict_batch({"x": np.zeros((3, 4, 8), np.float32)}, path)
    return _scaleout._allocations_kept, _second_faults()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_allocations_reuses_pages():
    """keep_allocations(): a 64 MiB array made again reuses the pages of the one freed
    before it (glibc's default maps it anew: fresh pages, faulted in and zeroed by the
    kernel, every time). In a fresh process started with glibc's defaults: it changes the
    whole process, and glibc reads MALLOC_* variables (which Dask's nanny sets in
    os.environ of the process that starts workers) when a process starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True, env=env)
    before, kept, after = out.stdout.split()
    assert kept == "True"
    assert int(before) >= 32, out.stdout  # 64 MiB in 2 MiB pages at the least
    assert int(after) <= 4, out.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_ray_worker_keeps_allocations(ray_local):
    """A batch in a Ray worker sets its allocator (the worker started with glibc's
    default); a batch outside Ray (this driver) changes nothing."""
    path = os.path.join(DATA, "digits_lstm.pt")
    kept, faults = ray.get(ray.remote(num_cpus=1)(_allocator_task).remote(path))
    assert kept and faults <= 4, faults
    rnnfast.ray.predict_batch({"x": np.zeros((3, 4, 8), np.float32)}, path)
    from rnnfast import _scaleout

    assert not _scaleout._allocations_kept


# -- the batch logic, without Ray running -------------------------------------------------


def _blas_task(path, raise_to):
    """In a one-CPU Ray task: NumPy's BLAS raised to ``raise_to`` threads (what a worker that
    imported NumPy before Ray set its OMP_NUM_THREADS has), then one batch; the BLAS
    pools' thread counts after it."""
    from threadpoolctl import threadpool_info, threadpool_limits

    rnnfast.ray._blas_pools = None  # as in a fresh worker process
    threadpool_limits(raise_to, user_api="blas")
    before = sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    x = np.zeros((3, 4, 8), np.float32)
    rnnfast.ray.predict_batch({"x": x}, path)
    after = sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    return before, after


def test_numpy_blas_capped_at_the_tasks_cpus(ray_local):
    """A worker whose NumPy started its OpenBLAS before Ray's per-task OMP_NUM_THREADS
    (the setup hook imports NumPy) has a BLAS thread per core: a NumPy product after
    rnnfast's in the task would spin a second thread beside the other worker. The
    Predictor caps every BLAS pool at the task's CPUs."""
    path = os.path.join(DATA, "digits_lstm.pt")
    before, after = ray.get(ray.remote(num_cpus=1)(_blas_task).remote(path, 2))
    assert before and max(before) == 2  # the condition the cap is for
    assert max(after) == 1
    # outside a Ray task (no CPUs assigned: this driver) nothing is changed
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(2, user_api="blas"):
        Predictor(path, input_column="x", num_threads=1)({"x": np.zeros((3, 4, 8), np.float32)})
        assert max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas") == 2


def test_batches_without_ray():
    rng = np.random.default_rng(3)
    tm = rnnfast.load(os.path.join(DATA, "digits_lstm.pt"))  # time-major
    p = Predictor(os.path.join(DATA, "digits_lstm.pt"), input_column="x", return_state=True, num_threads=1)
    x = rng.standard_normal((7, 6, 8)).astype(np.float32)  # rows first, always
    got = p({"x": x, "k": np.arange(7)})
    out, (h, c) = tm(np.ascontiguousarray(x.transpose(1, 0, 2)), num_threads=1)
    assert sorted(got) == ["k", "x", "y_0", "y_1", "y_2"]
    assert got["y_0"].tobytes() == np.ascontiguousarray(out.transpose(1, 0, 2)).tobytes()
    assert got["y_1"].shape == (7, 4, 32)
    frame = p(pd.DataFrame({"x": list(x)}))
    assert np.stack(frame["y_0"].to_list()).tobytes() == got["y_0"].tobytes()

    keras = rnnfast.load(os.path.join(DATA, "digits_bigru.keras"))
    with pytest.raises(ValueError, match="does not mask padding"):
        Predictor(keras, num_threads=1)({"x": np.array([x[0], x[1][:3]], dtype=object)})
    got = Predictor(keras, num_threads=1, maxlen=6)({"x": np.array([x[0], x[1][:3]], dtype=object)})
    assert got["y"].shape == (2, 10)
    with pytest.raises(ValueError, match="are for a model given by its path"):
        Predictor(keras, batch_first=True)
    with pytest.raises(KeyError, match="no column 'x'"):
        Predictor(keras, num_threads=1)({"data": x})
    assert Predictor(keras).num_threads == rnnfast.get_num_threads()  # outside Ray: the default
    empty = p({"x": np.zeros((0, 6, 8), np.float32)})  # an empty batch
    assert [empty["y_%d" % k].shape for k in range(3)] == [(0, 6, 64), (0, 4, 32), (0, 4, 32)]
    assert Predictor(keras, num_threads=1)({"x": np.empty(0, object)})["y"].shape == (0,)


def test_predict_batch_without_ray():
    path = os.path.join(DATA, "digits_bigru.keras")
    keras = rnnfast.load(path)
    x = np.random.default_rng(7).standard_normal((5, 6, 8)).astype(np.float32)
    rnnfast.ray._predictors.clear()
    got = rnnfast.ray.predict_batch({"x": x}, path, num_threads=1)
    assert got["y"].tobytes() == keras.predict(x, num_threads=1).tobytes()
    kept = list(rnnfast.ray._predictors.values())
    assert len(kept) == 1 and kept[0].num_threads == 1
    rnnfast.ray.predict_batch({"x": x}, path, num_threads=1)
    assert list(rnnfast.ray._predictors.values()) == kept  # the same Predictor, the model loaded once
    rnnfast.ray.predict_batch({"x": x}, path, num_threads=1, output_column="p")  # other options: another
    assert len(rnnfast.ray._predictors) == 2
    for k in range(6):  # a few at most per process
        rnnfast.ray.predict_batch({"x": x}, path, num_threads=1, output_column="p%d" % k)
    assert len(rnnfast.ray._predictors) == rnnfast.ray._MAX_PREDICTORS
    with pytest.raises(TypeError, match="model path or ray.put"):
        rnnfast.ray.predict_batch({"x": x}, keras)
    rnnfast.ray._predictors.clear()


def test_numpy_batch_columns_are_not_copied(monkeypatch):
    """A numpy batch (read-only, as Ray Data gives it) reaches the model as it is, and the
    model's batch-major outputs and the other columns go into the result without copies."""
    model = rnnfast.load(os.path.join(DATA, "digits_lstm.pt"), batch_first=True)
    seen = {}
    real = rnnfast.TorchRNN.forward

    def spy(self, x, *args, **kwargs):
        seen["x"] = x
        seen["result"] = real(self, x, *args, **kwargs)
        return seen["result"]

    monkeypatch.setattr(rnnfast.TorchRNN, "__call__", spy)
    x = np.random.default_rng(4).standard_normal((9, 5, 8)).astype(np.float32)
    x.flags.writeable = False
    ids = np.arange(9)
    got = Predictor(model, input_column="x", output_column=["out", "h", "c"], return_state=True, num_threads=1)(
        {"x": x, "id": ids}
    )
    assert seen["x"] is x  # no cast, no copy on the way in
    assert got["x"] is x and got["id"] is ids
    out, (h, c) = seen["result"]
    assert got["out"] is out  # batch-major already: the engine's own array
    # h_n, c_n have their batch axis second (as in PyTorch): moved to the front, a copy
    assert got["h"].tobytes() == np.ascontiguousarray(h.transpose(1, 0, 2)).tobytes()
