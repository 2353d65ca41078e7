"""Score large batches on Dask: ``rnnfast.dask.predict(model, x)``.

``x`` is a ``dask.array`` of sequences chunked along the batch axis (each block is
scored where it lies, by one call of the model), or a ``dask.dataframe`` column whose
cells are variable-length sequences (each partition padded, in buckets of similar
lengths, results back in the partition's order)::

    import dask.array as da
    import rnnfast, rnnfast.dask
    from distributed import Client

    client = Client()                              # or Client("scheduler:8786")
    model = rnnfast.load("model.keras")
    x = da.from_zarr("sequences.zarr")             # (batch, time, features), chunked on batch
    y = rnnfast.dask.predict(model, x)             # a dask array: (batch, ...) as model.predict gives
    y.to_zarr("scores.zarr")

Decisions (docs/cluster.md tells the whole story):

- **Time and feature axes stay whole.** A recurrent model cannot run a sequence in
  pieces, so ``x`` is rechunked to one chunk along every axis but the batch axis (its
  batch chunks are kept: a block then holds ``rows * time * features`` elements); pass
  ``rechunk=False`` to be refused instead, with a message saying which axis is split.
- **Outputs as the model gives them**: one dask array per output, with the model's
  shape and dtype and the input's batch chunks; for several outputs (a Keras model with
  several outputs or ``return_state``, a ``TorchRNN`` with ``return_state=True``) the
  same structure (list, dict) of dask arrays, all computed by the same tasks (each block
  runs the model once, whatever you compute).
- **TorchRNN**: ``predict`` gives ``out`` (its batch axis where the module has it);
  ``return_state=True`` adds ``h_n`` (and ``c_n``), batch axis 1 as in PyTorch.
  ``lengths=`` (a dask or numpy array of shape ``(batch,)``) for variable-length rows,
  PyTorch's packed semantics. A Keras model takes its masks from the model: pad with the
  mask value instead.
- **Threads**: each worker process scores with at most its own thread budget, Dask's
  ``nthreads`` for it (``--nthreads``, ``threads_per_worker``), shared by the rnnfast tasks
  it runs at once; ``num_threads=`` sets that budget instead. Outside
  ``distributed`` (the local threaded scheduler) the budget is
  :func:`rnnfast.get_num_threads`.
- **The workers' allocator**: :func:`worker_config` gives the Dask settings that start
  worker processes with glibc's allocator reusing rnnfast's working buffers (Dask's own
  ``MALLOC_TRIM_THRESHOLD_=65536`` has it map and fault them in anew per call).
- **The model travels once per worker**: a model object given while a ``distributed``
  client is current is sent to its workers once, as a worker plugin
  (``rnnfast._dask_workers``: the tasks name it, so each block's only input is its block
  and Dask runs it where the block is); without a client it is put in the graph once (a
  delayed value); a ``distributed`` ``Future`` of one (``client.scatter(model,
  broadcast=True)``) is used as it is (a dependency of every block); a path (``str`` or
  ``os.PathLike``) is loaded once in each worker process (shared storage), with
  ``load_options``.
"""

import importlib
import operator
import os
import sys
from contextlib import contextmanager

import numpy as np

try:
    import dask  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("rnnfast.dask needs Dask: pip install 'rnnfast[dask]' (%s)" % e) from None

from ._scaleout import (
    ALLOCATOR_ENV,
    BUDGET,
    ModelRef,
    Runner,
    as_rows,
    check_padding,
    predict_rows,
    resolve_model,
    thread_total,
    unflatten,
)

__all__ = ["predict", "worker_config"]


def predict(
    model,
    x,
    *,
    lengths=None,
    num_threads=None,
    batch_size=None,
    return_state=False,
    rechunk=True,
    column=None,
    output_column="y",
    padding="post",
    maxlen=None,
    load_options=None,
):
    """Score ``x`` with ``model`` on Dask.

    Parameters
    ----------
    model : rnnfast model, path, or distributed.Future
        A :class:`~rnnfast.KerasModel`, :class:`~rnnfast.TorchRNN` or
        :class:`~rnnfast.Sequential` (with a ``distributed`` client current: sent to its
        workers once, as a worker plugin); a model file every worker can read (loaded
        once per worker process with ``load_options``); or a ``Future`` of a model
        (``client.scatter``).
    x : dask.array.Array, numpy array, dask.dataframe.Series or DataFrame
        An array in the model's input layout, ``(batch, time, features)`` (ids
        ``(batch, time)`` for a model that starts with an Embedding; ``(time, batch,
        features)`` for a time-major TorchRNN), chunked along the batch axis (a numpy
        array is chunked for you). Or a Series (a DataFrame with ``column=``) whose cells
        are sequences of their own lengths, ``(T_i, features)`` or ``(T_i,)`` ids.
    lengths : dask or numpy array of int, shape (batch,), optional
        Arrays, TorchRNN only: valid steps per row (post-padded rows).
    num_threads : int, optional
        The thread budget of each worker process (default: the worker's ``nthreads``).
    batch_size : int, optional
        Rows per model call inside a block (bounds memory; results are the same).
    return_state : bool
        TorchRNN only: also return ``h_n`` (and ``c_n``).
    rechunk : bool
        Arrays: merge chunks along the time and feature axes (True) or refuse them.
    column : str, optional
        DataFrame input: the column of sequences.
    output_column : str or list of str
        Frame input: the name of the result column (Series: its name); for several
        outputs, a list of names, or the default ``"<output_column>_<k>"``.
    padding : {"post", "pre"}
        Frame input: where rows are padded (TorchRNN: "post" only). Rows are padded with
        the model's mask value (Masking's ``mask_value``, else 0).
    maxlen : int, optional
        Frame input: pad every row to this many steps (as Keras' ``pad_sequences``;
        longer rows are refused). Needed for a model that does not mask its padding
        (its outputs would depend on the padding); otherwise rows are padded in buckets
        of similar lengths, each to its own longest (fewer padded steps to compute).
    load_options : dict, optional
        Options of :func:`rnnfast.load` when ``model`` is a path.

    Returns
    -------
    dask.array.Array, or the model's structure of them (arrays); dask Series or DataFrame
    (frames)
        Arrays: the model's outputs with the input's batch chunks. A Series: the outputs
        per row (an ndarray per cell; sequence outputs cut to the row's steps), named
        ``output_column`` (a DataFrame of one column per output for several); a DataFrame:
        the same with the output column(s) added.
    """
    model_arg, local = _model_argument(model, load_options)
    if _is_frame(x):
        if lengths is not None:
            raise ValueError("lengths are for arrays: in a frame each row's length is its own")
        return _predict_frame(
            model_arg,
            local,
            x,
            column=column,
            output_column=output_column,
            num_threads=num_threads,
            batch_size=batch_size,
            return_state=return_state,
            padding=padding,
            maxlen=maxlen,
        )
    if column is not None or maxlen is not None:
        raise ValueError("column= and maxlen= are for a dask DataFrame / Series input")
    return _predict_array(
        model_arg,
        local,
        x,
        lengths=lengths,
        num_threads=num_threads,
        batch_size=batch_size,
        return_state=return_state,
        rechunk=rechunk,
    )


def worker_config():
    """Dask settings for the worker processes a nanny starts (``LocalCluster``, ``dask
    worker``, ``dask-jobqueue`` ...): glibc's allocator reuses rnnfast's working buffers
    instead of mapping each of them anew per call (``ALLOCATOR_ENV``; Dask's default
    ``MALLOC_TRIM_THRESHOLD_=65536`` cost the bundled digits LSTM 1.6x its CPU time in a
    worker before its step loop's work buffer was made once per thread per call, and
    still maps the call's other buffers anew). Set them where the nannies start, before
    they do::

        with dask.config.set(rnnfast.dask.worker_config()):
            cluster = LocalCluster(n_workers=2, threads_per_worker=1)

    (for ``dask worker`` on the command line: those variables in its environment).

    Returns
    -------
    dict
        ``{"distributed.nanny.pre-spawn-environ.<NAME>": value}`` for ``dask.config.set``.
    """
    return {"distributed.nanny.pre-spawn-environ." + k: v for k, v in ALLOCATOR_ENV.items()}


# -- the model as a graph argument ------------------------------------------------------


def _model_argument(model, load_options):
    """(what the tasks get, a local model to probe or None)."""
    if isinstance(model, (str, os.PathLike)):
        ref = ModelRef(model, load_options)
        try:
            local = ref.get()
        except OSError:  # not readable here, only on the workers: probe there
            local = None
        return ref, local
    if load_options:
        raise ValueError("load_options are for a model given by its path")
    if type(model).__name__ == "Future" and type(model).__module__.startswith("distributed"):
        return model, None
    Runner(model)  # a model rnnfast knows, or a clear TypeError
    client = _current_client()
    if client is not None and not client.asynchronous:  # (an asynchronous client's calls are awaited)
        # imported by name, when a client is there: it imports distributed, which graphs for
        # Dask's local schedulers never need
        workers = importlib.import_module("._dask_workers", __package__)
        return workers.send(client, model), model
    import dask

    return dask.delayed(model, pure=True, traverse=False), model


def _current_client():
    """The ``distributed`` client a graph built now will run on, or None (not imported
    here when the program does not use it)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import Client

    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def _probe(model, shape, dtype, return_state):
    """Run on one row where the model is: the output structure and leaf shapes (after
    checking the input's shape)."""
    runner = Runner(resolve_model(model), return_state)
    ba = runner.batch_axis
    if len(shape) != runner.input_ndim or (runner.features is not None and shape[-1] != runner.features):
        want = (
            "(batch, time)"
            if runner.integer_input
            else ("(time, batch, %s)" if ba == 1 else "(batch, time, %s)") % runner.features
        )
        raise ValueError("expected a dask array of shape %s, got shape %s" % (want, tuple(shape)))
    return runner.probe(shape, dtype), _runner_facts(runner)


def _runner_facts(runner):
    return dict(
        batch_axis=runner.batch_axis,
        integer_input=runner.integer_input,
        input_ndim=runner.input_ndim,
        features=runner.features,
        kind=runner.kind,
    )


def _probed(model_arg, local, shape, dtype, return_state):
    if local is not None:
        return _probe(local, shape, dtype, return_state)
    from distributed import get_client

    client = get_client()
    return client.submit(_probe, model_arg, shape, dtype, return_state, pure=False).result()


# -- threads ----------------------------------------------------------------------------


def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


@contextmanager
def _threads(num_threads):
    """Threads for one task, within this worker process's budget (module doc)."""
    w = _worker()
    if w is not None:
        state = w.state
        total = num_threads if num_threads else state.nthreads
        try:
            busy = state.executing_count + len(state.ready)
        except (AttributeError, TypeError):
            busy = total
        share = max(1, total // max(1, min(total, busy)))
    else:
        total, share = thread_total(num_threads), None
    with BUDGET.take(total, share) as n:
        yield n


# -- arrays -----------------------------------------------------------------------------

_LETTERS = "cdeghijklmnopqrsuvwxyz"


def _predict_array(model_arg, local, x, *, lengths, num_threads, batch_size, return_state, rechunk):
    import dask.array as da

    if not isinstance(x, da.Array):
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError("expected a batch of sequences, got an array of shape %s" % (x.shape,))
        facts = _probed(model_arg, local, x.shape, x.dtype, return_state)[1]
        chunks = ["auto" if a == facts["batch_axis"] else -1 for a in range(x.ndim)]
        x = da.from_array(x, chunks=tuple(chunks))
    (skeleton, leaves), facts = _probed(model_arg, local, _known_shape(x), x.dtype, return_state)
    ba = facts["batch_axis"]
    split = [a for a in range(x.ndim) if a != ba and len(x.chunks[a]) > 1]
    if split:
        if not rechunk:
            names = {0: "batch", 1: "time", 2: "features"} if ba == 0 else {0: "time", 1: "batch", 2: "features"}
            raise ValueError(
                "x is chunked along its %s axis (chunks %s): a sequence must be scored whole. "
                "Chunk it along the batch axis only (x.rechunk({%s}))"
                % (
                    " and ".join(names[a] for a in split),
                    [x.chunks[a] for a in split],
                    ", ".join("%d: -1" % a for a in split),
                )
            )
        x = x.rechunk(dict.fromkeys(split, -1))
    x_ind = "".join("b" if a == ba else "tf"[a - (a > ba)] for a in range(x.ndim))
    args = [x, x_ind]
    if lengths is not None:
        if facts["kind"] != "torch":
            raise ValueError(
                "lengths are for a TorchRNN: a Keras model takes its masks from the model "
                "(Masking, Embedding(mask_zero=True)); pad the rows with the mask value instead"
            )
        if not isinstance(lengths, da.Array):
            lengths = np.asarray(lengths)
            if any(np.isnan(c) for c in x.chunks[ba]):
                raise ValueError("x has unknown chunk sizes: give lengths as a dask array chunked like it")
            lengths = da.from_array(lengths, chunks=(x.chunks[ba],))
        if lengths.ndim != 1 or (
            not np.isnan(lengths.shape[0]) and not np.isnan(x.shape[ba]) and lengths.shape[0] != x.shape[ba]
        ):
            raise ValueError("lengths must have shape (batch,) = (%s,), got %s" % (x.shape[ba], lengths.shape))
        if lengths.chunks[0] != x.chunks[ba]:
            lengths = lengths.rechunk((x.chunks[ba],))
        args += [lengths, "b"]
    else:
        args += [None, None]
    args += [model_arg, None]
    n = len(leaves)
    kw = dict(return_state=return_state, num_threads=num_threads, batch_size=batch_size, leaves=leaves, single=n == 1)
    name = "rnnfast-predict"
    if n == 1:
        return unflatten(skeleton, [_leaf_array(_predict_block, args, leaves[0], name, kw)])
    packed = da.blockwise(
        _predict_block,
        "b",
        *args,
        dtype=object,
        meta=np.empty((0,), object),
        concatenate=True,
        name=None,
        token=name,
        **kw,
    )
    outs = [
        _leaf_array(operator.getitem, [packed, "b", k, None], leaf, name + "-%d" % k, {})
        for k, leaf in enumerate(leaves)
    ]
    return unflatten(skeleton, outs)


def _known_shape(x):
    return tuple(1 if np.isnan(s) else int(s) for s in x.shape)


def _leaf_array(fn, args, leaf, token, kw):
    import dask.array as da

    shape, dtype, ax = leaf
    letters = iter(_LETTERS)
    out_ind = "".join("b" if a == ax else next(letters) for a in range(len(shape)))
    new_axes = {c: shape[a] for a, c in enumerate(out_ind) if c != "b"}
    meta = np.empty(tuple(0 for _ in shape), dtype)
    return da.blockwise(
        fn, out_ind, *args, new_axes=new_axes, dtype=dtype, meta=meta, concatenate=True, token=token, **kw
    )


def _predict_block(x, lengths, model, *, return_state, num_threads, batch_size, leaves, single):
    model = resolve_model(model)
    runner = Runner(model, return_state)
    if x.shape[runner.batch_axis] == 0:
        out = [np.empty(tuple(0 if a == ax else s for a, s in enumerate(shape)), dtype) for shape, dtype, ax in leaves]
    else:
        with _threads(num_threads) as nt:
            out, _ = runner.run_batched(x, lengths, nt, batch_size)
    return out[0] if single else tuple(out)


# -- frames -----------------------------------------------------------------------------


def _is_frame(x):
    mod = type(x).__module__
    return (
        mod.startswith(("dask.dataframe", "dask_expr"))
        or hasattr(x, "map_partitions")
        and hasattr(x, "npartitions")
        and not hasattr(x, "chunks")
    )


def _predict_frame(
    model_arg, local, frame, *, column, output_column, num_threads, batch_size, return_state, padding, maxlen
):
    import dask.dataframe as dd
    import pandas as pd

    series = isinstance(frame, dd.Series)
    if series:
        if column is not None and column != frame.name:
            raise ValueError("column= is for a DataFrame; this Series is %r" % (frame.name,))
    elif column is None:
        raise ValueError("a DataFrame needs column=, the column of sequences (it has %s)" % list(frame.columns))
    elif column not in frame.columns:
        raise ValueError("no column %r in the DataFrame (it has %s)" % (column, list(frame.columns)))
    if local is not None:  # refuse what cannot work before building anything
        runner = Runner(local, return_state)
        check_padding(runner, padding, maxlen)
    # one row of zeros tells the number of outputs (the rows' own shapes vary)
    n_out = _frame_outputs(model_arg, local, return_state)
    if isinstance(output_column, (list, tuple)):
        names = list(output_column)
        if len(names) != n_out:
            raise ValueError("output_column names %d columns, the model gives %d outputs" % (len(names), n_out))
    else:
        names = [output_column] if n_out == 1 else ["%s_%d" % (output_column, k) for k in range(n_out)]
    if series and n_out == 1:
        meta = pd.Series(np.empty(0, object), name=names[0], dtype=object)
    elif series:
        meta = pd.DataFrame({c: pd.Series(np.empty(0, object), dtype=object) for c in names})
    else:
        meta = frame._meta.assign(**{c: pd.Series(np.empty(0, object), dtype=object) for c in names})
    return frame.map_partitions(
        _predict_partition,
        model_arg,
        column=column,
        names=names,
        series=series,
        num_threads=num_threads,
        batch_size=batch_size,
        return_state=return_state,
        padding=padding,
        maxlen=maxlen,
        meta=meta,
    )


def _frame_outputs(model_arg, local, return_state):
    def count(model):
        runner = Runner(resolve_model(model), return_state)
        shape = [1, 1] if runner.integer_input else [1, 1, runner.features]
        return len(runner.probe(shape, runner.dtype)[1])

    if local is not None:
        return count(local)
    from distributed import get_client

    return get_client().submit(count, model_arg, pure=False).result()


def _predict_partition(part, model, *, column, names, series, num_threads, batch_size, return_state, padding, maxlen):
    import pandas as pd

    s = part if series else part[column]
    runner = Runner(resolve_model(model), return_state)
    rows = as_rows(list(s), runner.integer_input, runner.features)
    with _threads(num_threads) as nt:
        per_row, _ = predict_rows(runner, rows, num_threads=nt, padding=padding, maxlen=maxlen, batch_size=batch_size)
    cols = {}
    for k, name in enumerate(names):
        cells = np.empty(len(rows), object)
        for i, r in enumerate(per_row):
            cells[i] = r[k]
        cols[name] = pd.Series(cells, index=s.index, dtype=object, name=name)
    if series:
        return cols[names[0]] if len(names) == 1 else pd.DataFrame(cols, index=s.index)
    return part.assign(**cols)
