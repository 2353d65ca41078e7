"""Score datasets on Ray Data: ``rnnfast.ray.Predictor``, a callable class for
``Dataset.map_batches``.

The model is loaded once per actor (from a path every node can read, or sent once
through Ray's object store), and each actor computes with as many threads as it has
CPUs (``num_cpus=`` of ``map_batches``)::

    import numpy as np, ray
    from rnnfast.ray import Predictor

    ray.init()                                             # or ray.init("ray://head:10001")
    x = np.random.rand(100_000, 50, 8).astype(np.float32)  # (rows, time, features)
    ds = ray.data.from_numpy(x)                            # one column, "data"
    # or: ds = ray.data.read_parquet("s3://bucket/sequences/")  with a list<list<float>> column "x"
    scored = ds.map_batches(
        Predictor,
        fn_constructor_args=("/shared/models/model.keras",),   # or a loaded model, or ray.put(model)
        fn_constructor_kwargs=dict(input_column="data", output_column="score"),
        batch_size=4096,
        num_cpus=2,                                        # threads per actor
        compute=ray.data.ActorPoolStrategy(size=4),        # actors
        batch_format="numpy",                              # or "pandas"
    )
    scored.write_parquet("/shared/scores/")                # or .take_batch(), .to_pandas() ...

A column of sequences of one length (a tensor column: ``from_numpy``, or
``read_parquet`` of fixed-shape tensors; in pandas batches, cells of equal shapes) is
scored as one array per batch; a column of sequences of their own lengths (``read_parquet`` of
``list<list<float>>``, a pandas
column of arrays) is padded per batch, in buckets of similar lengths where that saves
work, exactly as :func:`rnnfast.dask.predict` does for a Dask frame (see its
``padding`` and ``maxlen``). Rows stay in their order and keep their other columns.

:func:`predict_batch` is the same as a function for Ray Data *tasks*: Ray keeps their
worker processes between jobs, and the model stays loaded in each (an actor pool is new,
in new processes, for every job).
"""

import importlib
import math
import os

import numpy as np

try:
    import ray
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("rnnfast.ray needs Ray: pip install 'rnnfast[ray]' (%s)" % e) from None

from ._scaleout import BUDGET, ModelRef, Runner, as_rows, keep_allocations, predict_rows, resolve_model
from ._threads import get_num_threads

__all__ = ["Predictor", "predict_batch", "setup_worker"]

#: What :func:`setup_worker` imports ahead of a worker's first job: the model files'
#: loaders and models (``import rnnfast`` leaves them to first use).
PRELOAD = ("rnnfast.io.keras_file", "rnnfast.model_keras", "rnnfast.io.torch_file", "rnnfast.model_torch")


def setup_worker():
    """Import what a :class:`Predictor` actor needs (Ray Data's worker side, rnnfast and
    its compiled core), for Ray's ``worker_process_setup_hook``::

        ray.init(runtime_env={"worker_process_setup_hook": "rnnfast.ray.setup_worker"})

    Ray Data starts a new actor pool for every job; its actors run in worker processes
    that Ray starts ahead of time, and with this hook those have imported everything
    already, so a job does not wait for the imports (about 1 CPU second per actor: 0.6 s
    for ``ray.data``, 0.3 s for rnnfast, measured on a 2-core Xeon).
    """
    import ray.data  # noqa: F401  (a map_batches actor is a ray.data MapWorker)

    for name in PRELOAD:
        importlib.import_module(name)


class Predictor:
    """A callable class for Ray Data's ``map_batches`` that scores one column.

    Parameters
    ----------
    model_or_path : rnnfast model, path, or ray.ObjectRef
        A loaded :class:`~rnnfast.KerasModel` / :class:`~rnnfast.TorchRNN` /
        :class:`~rnnfast.Sequential` (pickled to each actor), a model file every node can
        read (loaded once per actor process with ``load_options``), or an ``ObjectRef`` of
        a model (``ray.put(model)``: sent once per node through the object store).
    input_column : str
        The column of sequences: ``(time, features)`` floats, or ``(time,)`` ids for a
        model that starts with an Embedding, per row. ``ray.data.from_numpy`` names its
        column ``"data"``.
    output_column : str or list of str
        The result column; for a model with several outputs (Keras, or a TorchRNN with
        ``return_state``), a list of names, or the default ``"<output_column>_<k>"``.
    lengths_column : str, optional
        TorchRNN with a fixed-length (padded) input column: valid steps per row.
    return_state : bool
        TorchRNN: also ``h_n`` (and ``c_n``) per row, ``(num_layers * directions,
        hidden)``; the output sequence ``out`` comes first.
    num_threads : int, optional
        Threads per call (default: the CPUs Ray assigned to this actor, ``num_cpus``).
    batch_size : int, optional
        Rows per model call inside a batch (bounds memory; results are the same).
    padding, maxlen :
        For variable-length rows, as in :func:`rnnfast.dask.predict`.
    drop_input : bool
        Leave the input column out of the result (the other columns are kept).
    **load_options :
        Options of :func:`rnnfast.load` when ``model_or_path`` is a path.

    Notes
    -----
    Outputs with the model's batch axis elsewhere (a time-major TorchRNN's ``out``
    ``(time, batch, .)``, ``h_n``) come back row-first, one row per input row; the input
    column is always row-first, ``(rows, time, features)``.
    """

    def __init__(
        self,
        model_or_path,
        input_column="x",
        output_column="y",
        *,
        lengths_column=None,
        return_state=False,
        num_threads=None,
        batch_size=None,
        padding="post",
        maxlen=None,
        drop_input=False,
        **load_options,
    ):
        if isinstance(model_or_path, (str, os.PathLike)):
            model = ModelRef(model_or_path, load_options).get()
        else:
            if load_options:
                raise ValueError(
                    "options of rnnfast.load (%s) are for a model given by its path" % ", ".join(sorted(load_options))
                )
            model = model_or_path
            if type(model).__name__ == "ObjectRef":
                model = ray.get(model)
            model = resolve_model(model)
        self.model = model
        self.runner = Runner(model, return_state)
        self.input_column = input_column
        self.output_column = output_column
        self.lengths_column = lengths_column
        if lengths_column is not None and self.runner.kind != "torch":
            raise ValueError("lengths are for a TorchRNN: a Keras model takes its masks from the model")
        self.batch_size = batch_size
        self.padding, self.maxlen = padding, maxlen
        self.drop_input = bool(drop_input)
        self.num_threads = int(num_threads) if num_threads else _assigned_cpus()
        self._names = None

    def __repr__(self):
        return "Predictor(%s, input_column=%r, output_column=%r, num_threads=%d)" % (
            type(self.model).__name__,
            self.input_column,
            self.output_column,
            self.num_threads,
        )

    # -- one batch ----------------------------------------------------------------------

    def __call__(self, batch):
        """Score one batch: a dict of numpy arrays or a pandas DataFrame; returns the same
        kind with the output column(s) added."""
        pandas = not isinstance(batch, dict)
        _settle_worker(self.num_threads)
        if self.input_column not in batch:
            raise KeyError("no column %r in the batch (it has %s)" % (self.input_column, list(batch.keys())))
        col = batch[self.input_column]
        values = col.to_numpy() if pandas else col
        lengths = None
        if self.lengths_column is not None:
            lengths = np.asarray(batch[self.lengths_column])
        if (
            isinstance(values, np.ndarray)
            and values.dtype == object
            and len(values)
            and isinstance(values[0], np.ndarray)
            and _same_shapes(values)
        ):
            values = np.stack(list(values))  # a tensor column as cells (pandas batches): one length
        with BUDGET.take(self.num_threads) as nt:
            if isinstance(values, np.ndarray) and values.dtype != object and values.ndim == self.runner.input_ndim:
                leaves = self._fixed(values, lengths, nt)
                per_row = None
            else:
                if lengths is not None:
                    raise ValueError(
                        "lengths_column is for a column of padded rows of one length; a column "
                        "of rows of their own lengths needs none"
                    )
                rows = as_rows(list(values), self.runner.integer_input, self.runner.features)
                per_row, _ = predict_rows(
                    self.runner,
                    rows,
                    num_threads=nt,
                    padding=self.padding,
                    maxlen=self.maxlen,
                    batch_size=self.batch_size,
                )
                leaves = None
        n_out = len(leaves) if leaves is not None else (len(per_row[0]) if per_row else self._count())
        names = self._output_names(n_out)
        out = batch.copy() if pandas else dict(batch)
        if self.drop_input:
            del out[self.input_column]  # a column of the copy (DataFrame) or a key (dict)
        for k, name in enumerate(names):
            if leaves is not None:
                value = leaves[k]
                if pandas:
                    value = list(value) if value.ndim > 1 else value
            else:
                assert per_row is not None  # no tensor leaves: rows of their own lengths
                cells = [r[k] for r in per_row]
                value = np.stack(cells) if (not pandas and cells and _same_shapes(cells)) else _objects(cells)
            out[name] = value
        return out

    def _fixed(self, x, lengths, nt):
        """A batch of rows of one length, row-first: the model's outputs, row-first."""
        check = x.shape[-1] if not self.runner.integer_input else None
        if check is not None and self.runner.features is not None and check != self.runner.features:
            raise ValueError(
                "expected rows of shape (time, %d), got a column of shape %s" % (self.runner.features, x.shape)
            )
        if len(x) == 0:  # an empty batch: empty columns of the right shapes
            shape = (1,) + x.shape[1:]
            if self.runner.batch_axis == 1:
                shape = (shape[1], 1) + shape[2:]
            return [
                np.empty((0,) + tuple(d for a, d in enumerate(s) if a != ax), dt)
                for s, dt, ax in self.runner.probe(shape, x.dtype)[1]
            ]
        if self.runner.batch_axis == 1:
            x = np.ascontiguousarray(np.swapaxes(x, 0, 1))
        leaves, _ = self.runner.run_batched(x, lengths, nt, self.batch_size)
        axes = self.runner.output_batch_axes(len(leaves))
        return [leaf if ax == 0 else np.ascontiguousarray(np.moveaxis(leaf, ax, 0)) for leaf, ax in zip(leaves, axes)]

    def _count(self):
        shape = [1, 1] if self.runner.integer_input else [1, 1, self.runner.features]
        if self.runner.batch_axis == 1:
            shape[0], shape[1] = shape[1], shape[0]
        return len(self.runner.probe(shape, self.runner.dtype)[1])

    def _output_names(self, n):
        if isinstance(self.output_column, (list, tuple)):
            if len(self.output_column) != n:
                raise ValueError(
                    "output_column names %d columns, the model gives %d outputs" % (len(self.output_column), n)
                )
            return list(self.output_column)
        return [self.output_column] if n == 1 else ["%s_%d" % (self.output_column, k) for k in range(n)]


# Predictors of this worker process for predict_batch: key -> Predictor, the newest last
_predictors: dict = {}
_MAX_PREDICTORS = 4


def predict_batch(batch, model, **options):
    """Score one batch in a Ray Data *task*: the function form of :class:`Predictor`,
    for ``map_batches`` without an actor pool::

        scored = ds.map_batches(
            rnnfast.ray.predict_batch,
            fn_kwargs=dict(model=ray.put(model), input_column="data", output_column="score"),
            batch_size=4096,
            num_cpus=1,
            compute=ray.data.TaskPoolStrategy(size=4),       # tasks at once (`concurrency=4` before Ray 2.51)
            batch_format="numpy",
        )

    Ray Data starts a new actor pool, new worker processes, for every job (their start
    and imports: about 2 s per job on 2 cores, inside the job); tasks run in the worker
    processes Ray keeps (``worker_process_setup_hook`` imports rnnfast there once). The
    model is loaded once per worker process and kept for the jobs after (a
    :class:`Predictor` per process, model and options).

    Parameters
    ----------
    batch : dict of ndarray or pandas.DataFrame
        As :meth:`Predictor.__call__` takes it.
    model : str, os.PathLike or ray.ObjectRef
        A model file every node can read, or ``ray.put(model)``: what a process keeps
        is keyed by it (a model object would arrive as a new copy with every batch; it
        is refused).
    **options :
        :class:`Predictor`'s other arguments (``input_column``, ``output_column``,
        ``num_threads``, load options ...); threads default to the CPUs Ray assigned
        to the task (``num_cpus``).
    """
    if isinstance(model, (str, os.PathLike)):
        where = ("path", os.path.abspath(os.fspath(model)))
    elif type(model).__name__ == "ObjectRef":
        where = ("ref", model.hex())
    else:
        raise TypeError(
            "predict_batch takes a model path or ray.put(model), got %s: a model object "
            "would be sent and unpickled with every batch" % type(model).__name__
        )
    threads = options.get("num_threads") or _assigned_cpus()
    key = where + (int(threads), repr(sorted(options.items())))
    predictor = _predictors.get(key)
    if predictor is None:
        predictor = Predictor(model, **dict(options, num_threads=threads))
        while len(_predictors) >= _MAX_PREDICTORS:
            _predictors.pop(next(iter(_predictors)))
        _predictors[key] = predictor
    return predictor(batch)


def _ray_cpus():
    """The CPUs Ray gave this actor or task (at least 1), or None outside a Ray task or
    actor (a driver has none assigned)."""
    try:
        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(math.floor(cpus + 1e-9)))
    except Exception:  # not inside Ray, or an older Ray without these calls
        pass
    return None


def _assigned_cpus():
    """The CPUs Ray gave this actor or task (at least 1), else rnnfast's default."""
    cpus = _ray_cpus()
    return get_num_threads() if cpus is None else cpus


#: The BLAS thread pools of this process (threadpoolctl controllers, all libraries: NumPy's
#: OpenBLAS too) and the cap :func:`_settle_worker` gave them last.
_blas_pools = None


def _settle_worker(n):
    """In a Ray worker: cap every BLAS thread pool of the process at ``n`` (the CPUs Ray
    gave the task: what Ray's per-task OMP_NUM_THREADS means; never raise one), and set
    glibc's allocator to keep freed blocks for the next batch (``rnnfast._scaleout.keep_allocations``).

    Ray sets OMP_NUM_THREADS when it runs a task, but a worker that imported NumPy
    before its first task (a ``worker_process_setup_hook``, :func:`setup_worker`) has
    started NumPy's OpenBLAS with a thread per core by then: a NumPy product after
    rnnfast's (a model's head, post-processing in the same task) then runs on every core
    and its threads spin after it, beside the other workers. Measured on 2 cores (digits
    model, a NumPy head after each batch): 0.8-1.6 CPU s per 100,000 rows on a second
    thread of a one-CPU task. A Ray worker starts with glibc's default allocator (why it
    should not keep it: ``rnnfast._scaleout.ALLOCATOR_BYTES``). Outside Ray (no CPUs
    assigned) nothing is changed."""
    global _blas_pools
    if _blas_pools is not None and _blas_pools[1] == n:
        return
    if _ray_cpus() is None:
        return
    keep_allocations()
    from threadpoolctl import ThreadpoolController

    if _blas_pools is not None:
        pools = _blas_pools[0]
    else:
        pools = ThreadpoolController().select(user_api="blas").lib_controllers
    for c in pools:
        if c.num_threads > n:
            c.set_num_threads(n)
    _blas_pools = (pools, n)


def _same_shapes(cells):
    first = np.shape(cells[0])
    return all(np.shape(c) == first for c in cells)


def _objects(cells):
    a = np.empty(len(cells), object)
    for i, c in enumerate(cells):
        a[i] = c
    return a
