"""rnnfast.dask on a real engine: a distributed.LocalCluster of two worker processes
with one thread each. Results equal a local predict bitwise (also with variable
lengths); each worker keeps to its thread budget (its threads counted); models travel
as objects, as scattered futures and as paths. The refusals and the thread budget's
rules are tested without a cluster."""

import logging
import os
import sys
import threading
import time

import numpy as np
import pytest

import rnnfast
from rnnfast._scaleout import ALLOCATOR_ENV, BUDGET, ThreadBudget, flatten, plan_buckets
from rnnfast.layers import RNNLayer

from _testing import count_layer_pickles, random_weights

dask = pytest.importorskip("dask", reason="install rnnfast[dask]")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed", reason="install rnnfast[dask]")
pd = pytest.importorskip("pandas")
import cloudpickle

import rnnfast.dask as rdask

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file

HERE = os.path.dirname(__file__)
DATA = os.path.join(os.path.dirname(rnnfast.__file__), "data")
KERAS2 = os.path.join(HERE, "fixtures", "keras2")


@pytest.fixture(scope="module")
def client():
    # the workers' allocator as docs/cluster.md says (rnnfast.dask.worker_config)
    with dask.config.set({"dataframe.convert-string": False, **rdask.worker_config()}):
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        ) as cluster:
            with distributed.Client(cluster) as c:
                c.run(_warm_up)
                yield c


def _warm_up():
    import rnnfast  # noqa: F401  (the workers import the compiled core once, before any count)


def _lstm(rng, batch_first=True, H=16, I=5):
    return rnnfast.TorchRNN(
        [
            RNNLayer("lstm", [random_weights(rng, "lstm", I, H) for _ in range(2)]),
            RNNLayer("lstm", [random_weights(rng, "lstm", 2 * H, H) for _ in range(2)]),
        ],
        batch_first=batch_first,
    )


def _equal(a, b):
    a, _ = flatten(a)
    b, _ = flatten(b)
    return len(a) == len(b) and all(
        u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes() for u, v in zip(a, b)
    )


def _rows(rng, n, F=None, ids=None, longest=40):
    out = []
    for _ in range(n):
        T = int(rng.integers(0 if ids is None else 1, longest))
        out.append(rng.integers(1, ids, T) if ids else rng.standard_normal((T, F)).astype(np.float32))
    return out


def _padded(rows, dtype, F=None, padding="post"):
    L = np.array([len(r) for r in rows])
    T = max(1, L.max())
    x = np.zeros((len(rows), T) + ((F,) if F else ()), dtype)
    for i, r in enumerate(rows):
        if len(r):
            if padding == "post":
                x[i, : len(r)] = r
            else:
                x[i, T - len(r) :] = r
    return x, L, T


# -- on the cluster -----------------------------------------------------------------------


def test_arrays_bitwise(client):
    rng = np.random.default_rng(0)
    keras = rnnfast.load(os.path.join(DATA, "digits_bigru.keras"))
    x = rng.standard_normal((150, 8, 8)).astype(np.float32)
    y = rdask.predict(keras, da.from_array(x, chunks=(40, 4, 8)))  # time axis split: rechunked
    assert y.shape == (150, 10) and y.dtype == np.float32 and y.chunks[0] == (40, 40, 40, 30)
    assert _equal(y.compute(), keras.predict(x, num_threads=1))

    lstm = _lstm(rng)
    x = rng.standard_normal((130, 25, 5)).astype(np.float32)
    lengths = rng.integers(0, 26, 130)
    out, (h, c) = rdask.predict(lstm, da.from_array(x, chunks=(32, 25, 5)), lengths=lengths, return_state=True)
    assert h.shape == (4, 130, 16) and h.chunks[1] == (32, 32, 32, 32, 2)
    assert _equal(dask.compute(out, h, c), lstm(x, lengths=lengths, num_threads=1))


def test_multi_output_keras_model(client):
    """Masking + Bidirectional(LSTM, merge_mode=None, return_state=True): six outputs, one
    task per block computes them all."""
    model = rnnfast.load(os.path.join(KERAS2, "bidirectional_none_state.h5"))
    x = np.random.default_rng(1).standard_normal((60, 12, 6)).astype(np.float32)
    x[::3, 8:] = 0  # masked tails
    ys = rdask.predict(model, da.from_array(x, chunks=25))
    want = model.predict(x, num_threads=1)
    assert isinstance(ys, list) and len(ys) == len(want)
    assert [y.shape for y in ys] == [w.shape for w in want]
    got = dask.compute(*ys)
    assert _equal(list(got), want)


def test_frame_of_variable_length_rows(client):
    """A column of rows of their own lengths: padded per partition in length buckets,
    back in the original order and index, bitwise what one padded local call gives."""
    rng = np.random.default_rng(2)
    lstm = _lstm(rng)
    rows = _rows(rng, 240, F=5)
    frame = pd.DataFrame({"x": rows, "id": np.arange(240)}, index=np.arange(240)[::-1] * 10)
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(frame, npartitions=3, sort=False)
        got = rdask.predict(lstm, ddf, column="x", output_column="out").compute()
    x, L, T = _padded(rows, np.float32, 5)
    want = lstm(x, lengths=L, num_threads=1)[0]
    assert list(got.index) == list(frame.index) and list(got["id"]) == list(range(240))
    for i in range(240):
        assert got["out"].iloc[i].tobytes() == want[i, : L[i]].tobytes()

    ids_model = rnnfast.load(os.path.join(KERAS2, "embedding_mask.h5"))  # Embedding(mask_zero=True)
    rows = _rows(rng, 120, ids=9)
    with dask.config.set({"dataframe.convert-string": False}):
        got = rdask.predict(
            ids_model, dd.from_pandas(pd.Series(rows, name="ids"), npartitions=2), padding="pre"
        ).compute()
    x, L, T = _padded(rows, np.int64, padding="pre")
    want = ids_model.predict(x, num_threads=1)
    assert all(got.iloc[i].tobytes() == want[i].tobytes() for i in range(120))


def test_model_travels_as_future_and_as_path(client):
    rng = np.random.default_rng(3)
    path = os.path.join(DATA, "digits_lstm.pt")
    local = rnnfast.load(path, batch_first=True)
    x = rng.standard_normal((70, 10, 8)).astype(np.float32)
    want = local(x, num_threads=1)[1]
    future = client.scatter(local, broadcast=True)
    xd = da.from_array(x, chunks=20)
    got = rdask.predict(future, xd, return_state=True)[1][0].compute()
    assert got.tobytes() == want[0].tobytes()
    got = rdask.predict(path, xd, return_state=True, load_options=dict(batch_first=True))[1][0].compute()
    assert got.tobytes() == want[0].tobytes()
    loaded = client.run(lambda: [k[0] for k in rnnfast._scaleout._loaded])  # loaded once per worker
    assert all(v == [os.path.abspath(path)] for v in loaded.values()), loaded


def test_path_only_the_workers_can_read(client, monkeypatch):
    """A model file on the workers' storage, not the client's: the output's shape is
    worked out on a worker."""
    path = os.path.join(DATA, "digits_bigru.keras")
    model = rnnfast.load(path)

    def unreadable(self):
        raise FileNotFoundError(self.path)

    monkeypatch.setattr(rnnfast._scaleout.ModelRef, "get", unreadable)  # here only, not in the workers
    x = np.random.default_rng(9).standard_normal((30, 8, 8)).astype(np.float32)
    y = rdask.predict(path, da.from_array(x, chunks=10))
    assert y.shape == (30, 10)
    assert y.compute().tobytes() == model.predict(x, num_threads=1).tobytes()


def _count_unpickles():
    """In a worker: count RNNLayer unpickles (each rebuilds the layer's packed copies)."""
    from rnnfast.layers import RNNLayer

    if not hasattr(RNNLayer, "_unpickled"):
        real = RNNLayer.__setstate__

        def counting(self, state):
            RNNLayer._unpickled += 1
            real(self, state)

        RNNLayer._unpickled = 0
        RNNLayer.__setstate__ = counting
    return RNNLayer._unpickled


def test_model_sent_once_per_worker_not_per_job(client, monkeypatch):
    """A model object goes to the workers once (a worker plugin), whatever the number of
    blocks and jobs: pickled once in the client, unpickled (its packed copies built)
    once per worker."""
    rng = np.random.default_rng(10)
    lstm = _lstm(rng)  # two layers
    pickled = count_layer_pickles(monkeypatch)
    x = rng.standard_normal((160, 6, 5)).astype(np.float32)
    before = client.run(_count_unpickles)
    for chunk in (80, 10, 10):  # 2 blocks, then 16, twice
        y = rdask.predict(lstm, da.from_array(x, chunks=chunk)).compute()
        assert y.tobytes() == lstm(x, num_threads=1)[0].tobytes()
    after = client.run(_count_unpickles)
    assert pickled[0] == 2, pickled  # the model's two layers, once
    assert all(after[w] - before[w] == 2 for w in after), (before, after)


def test_blocks_do_not_depend_on_the_model(client):
    """Each block's task has its block as its only input (the model is on every worker
    already): Dask's scheduler then runs it on the worker that holds the block. With the
    model as an input held by every worker, it placed a block by the workers' queued work
    instead, and moved 3-4 of 20 blocks per job (bench/scale_out.py)."""
    rng = np.random.default_rng(11)
    lstm = _lstm(rng)
    x = da.from_array(rng.standard_normal((60, 6, 5)).astype(np.float32), chunks=20)
    y = rdask.predict(lstm, x)
    graph = dict(y.__dask_graph__())
    blocks = set(dict(x.__dask_graph__()))
    keys = list(dask.core.flatten(y.__dask_keys__()))
    assert len(keys) == 3
    for key in keys:
        got = dask.core.get_dependencies(graph, key)
        assert len(got) == 1 and got <= blocks, got
    before = client.run(_count_unpickles)
    assert y.compute().tobytes() == lstm(x.compute(), num_threads=1)[0].tobytes()
    # the local schedulers too (the task's handle is the model itself in this process)
    assert y.compute(scheduler="threads").tobytes() == lstm(x.compute(), num_threads=1)[0].tobytes()
    assert client.run(_count_unpickles) == before  # sent when predict built the graph


def test_a_client_keeps_its_last_models_on_the_workers(client):
    from rnnfast import _dask_workers

    rng = np.random.default_rng(12)
    x = da.from_array(rng.standard_normal((20, 4, 5)).astype(np.float32), chunks=10)
    models = [_lstm(rng, H=4) for _ in range(_dask_workers.MAX_MODELS + 1)]
    ys = [rdask.predict(m, x) for m in models]
    held = client.run(lambda dask_worker: tuple(sorted(n for n in dask_worker.plugins if "rnnfast" in n)))
    names = set(held.values())  # the same models on both workers, the last MAX_MODELS sent
    assert len(names) == 1 and len(next(iter(names))) == _dask_workers.MAX_MODELS
    with pytest.raises(RuntimeError, match="is not on this worker.*call rnnfast.dask.predict again"):
        ys[0].compute()
    assert ys[-1].compute().tobytes() == models[-1](x.compute(), num_threads=1)[0].tobytes()
    # predicting with it again sends it again
    assert rdask.predict(models[0], x).compute().tobytes() == models[0](x.compute(), num_threads=1)[0].tobytes()


def _tids():
    return sorted(int(t) for t in os.listdir("/proc/self/task"))


def _worker_facts(dask_worker):
    import rnnfast._scaleout as s

    return dict(
        peak=s.BUDGET.peak, nthreads=dask_worker.state.nthreads, tids=_tids(), rnnfast_default=rnnfast.get_num_threads()
    )


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_each_worker_keeps_to_its_threads(client):
    """Threads per worker process counted: with one thread per worker no OpenMP thread
    is ever started (the OS threads of the process stay the same); the same count sees
    the team when the budget allows two."""
    rng = np.random.default_rng(4)
    big = _lstm(rng, H=128, I=16)  # steps large enough for two threads
    x = da.from_array(rng.standard_normal((256, 30, 16)).astype(np.float32), chunks=64)
    da.ones(4, chunks=1).sum().compute()  # the workers' task threads exist
    before = client.run(_worker_facts)
    rdask.predict(big, x).compute()
    after = client.run(_worker_facts)
    for w in before:
        assert after[w]["nthreads"] == 1 and after[w]["peak"] <= 1
        assert set(after[w]["tids"]) - set(before[w]["tids"]) == set(), (before[w], after[w])
    rdask.predict(big, x, num_threads=2).compute()
    again = client.run(_worker_facts)
    assert any(len(set(again[w]["tids"]) - set(after[w]["tids"])) == 1 for w in after), (after, again)
    assert all(again[w]["peak"] <= 2 for w in again)


# -- without a cluster --------------------------------------------------------------------


def _allocator_env():
    return {k: os.environ.get(k) for k in ALLOCATOR_ENV}


def test_worker_config_sets_the_workers_allocator(client):
    """worker_config() reaches the worker processes' environment before they start
    (glibc reads it then), in place of Dask's MALLOC_TRIM_THRESHOLD_=65536."""
    assert ALLOCATOR_ENV["MALLOC_TRIM_THRESHOLD_"] != "65536" and "MALLOC_MMAP_THRESHOLD_" in ALLOCATOR_ENV
    envs = client.run(_allocator_env)
    assert len(envs) == 2 and all(env == ALLOCATOR_ENV for env in envs.values()), envs
    assert rdask.worker_config() == {"distributed.nanny.pre-spawn-environ." + k: v for k, v in ALLOCATOR_ENV.items()}


def test_refusals():
    rng = np.random.default_rng(5)
    lstm = _lstm(rng)
    x = da.from_array(rng.standard_normal((20, 10, 5)).astype(np.float32), chunks=(10, 5, 5))
    with pytest.raises(ValueError, match="chunked along its time axis"):
        rdask.predict(lstm, x, rechunk=False)
    with pytest.raises(ValueError, match="expected a dask array of shape"):
        rdask.predict(lstm, x[:, :, 0])
    keras = rnnfast.load(os.path.join(KERAS2, "lstm.h5"))  # no mask
    with pytest.raises(ValueError, match="lengths are for a TorchRNN"):
        rdask.predict(keras, da.zeros((4, 3, 6), chunks=2), lengths=np.ones(4, int))
    with pytest.raises(ValueError, match="return_state is for a TorchRNN"):
        rdask.predict(keras, da.zeros((4, 3, 6), chunks=2), return_state=True)
    with dask.config.set({"dataframe.convert-string": False}):
        rows = dd.from_pandas(pd.Series(_rows(rng, 8, F=6), name="x"), npartitions=1)
    with pytest.raises(ValueError, match="does not mask padding"):
        rdask.predict(keras, rows)
    got = rdask.predict(keras, rows, maxlen=40).compute()  # padded as pad_sequences(maxlen=40)
    assert list(got.columns) == ["y_0", "y_1", "y_2"]  # out, h, c
    with pytest.raises(ValueError, match="post-padded"):
        rdask.predict(lstm, rows, padding="pre")
    with dask.config.set({"dataframe.convert-string": True}):
        strings = dd.from_pandas(pd.Series(_rows(rng, 4, F=5), name="x"), npartitions=1)
    with pytest.raises(ValueError, match="convert-string"):
        rdask.predict(lstm, strings).compute()
    with pytest.raises(TypeError, match="expected an rnnfast model"):
        rdask.predict(object(), x)


def test_time_major_torch_and_numpy_input():
    rng = np.random.default_rng(6)
    model = rnnfast.load(os.path.join(DATA, "digits_lstm.pt"))  # (time, batch, features)
    x = rng.standard_normal((8, 90, 8)).astype(np.float32)
    out = rdask.predict(model, x)  # numpy in: chunked for us
    assert out.shape == (8, 90, 64) and len(out.chunks[0]) == 1
    assert out.compute().tobytes() == model(x, num_threads=1)[0].tobytes()


def test_thread_budget_never_exceeds_its_total():
    budget = ThreadBudget()
    inside, peak, lock = [0], [0], threading.Lock()

    def call():
        with budget.take(3) as n:
            assert n >= 1
            with lock:
                inside[0] += n
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.01)
            with lock:
                inside[0] -= n

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 3 and budget.peak <= 3 and budget._used == 0
    with budget.take(4) as n:  # alone: all of it
        assert n == 4


def test_local_scheduler_shares_the_process_budget():
    rng = np.random.default_rng(7)
    big = _lstm(rng, H=128, I=16)
    x = da.from_array(rng.standard_normal((192, 10, 16)).astype(np.float32), chunks=16)
    BUDGET.peak = 0
    with dask.config.set(scheduler="threads", num_workers=4):
        y = rdask.predict(big, x, num_threads=2).compute()
    assert BUDGET.peak <= 2
    assert y.tobytes() == big.predict(x.compute(), num_threads=1).tobytes()


def test_buckets():
    rng = np.random.default_rng(8)
    skewed = np.concatenate([rng.integers(1, 10, 900), rng.integers(200, 300, 100)])
    rng.shuffle(skewed)
    buckets = plan_buckets(skewed)
    assert 1 < len(buckets) and sorted(np.concatenate(buckets).tolist()) == list(range(1000))
    cost = sum((len(b) + 16) * skewed[b].max() for b in buckets)
    assert cost < 0.5 * 1000 * skewed.max()
    assert len(plan_buckets(np.full(1000, 50))) == 1
    assert [b.tolist() for b in plan_buckets(np.array([3, 1, 2]))] == [[0, 1, 2]]
