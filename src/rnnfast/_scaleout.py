"""What rnnfast.dask and rnnfast.ray share: the model's outputs as a flat list with
their batch axes, a process-wide thread budget, models loaded once per process from a
path, and variable-length rows padded in buckets.

Nothing here imports Dask or Ray.
"""

import os
import threading
from contextlib import contextmanager
from typing import Optional

import numpy as np

from ._threads import resolve_num_threads
from .io import load
from .model import Sequential
from .model_keras import EmbeddingNode, KerasModel, MaskingNode
from .model_torch import TorchRNN

__all__ = [
    "Runner",
    "ModelRef",
    "resolve_model",
    "BUDGET",
    "ThreadBudget",
    "plan_buckets",
    "as_rows",
    "check_padding",
    "predict_rows",
    "flatten",
    "unflatten",
    "ALLOCATOR_ENV",
    "ALLOCATOR_BYTES",
    "keep_allocations",
]


# -- the model's outputs, flat ----------------------------------------------------------


def flatten(structure):
    """Leaves of a nested list / tuple / dict, in order, and a skeleton with the leaves'
    indices in their places (for :func:`unflatten`)."""
    leaves = []

    def walk(s):
        if isinstance(s, dict):
            return {k: walk(v) for k, v in s.items()}
        if isinstance(s, (list, tuple)):
            return type(s)(walk(v) for v in s)
        leaves.append(s)
        return len(leaves) - 1

    return leaves, walk(structure)


def unflatten(skeleton, leaves):
    if isinstance(skeleton, dict):
        return {k: unflatten(v, leaves) for k, v in skeleton.items()}
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(unflatten(v, leaves) for v in skeleton)
    return leaves[skeleton]


class Runner:
    """One way to call any rnnfast model on a batch and get its outputs as a flat list.

    - :class:`~rnnfast.KerasModel` (and :class:`~rnnfast.Sequential`): what
      ``predict`` returns, batch-major; masks come from the model (``lengths`` refused).
    - :class:`~rnnfast.TorchRNN`: ``out`` as ``predict`` gives it (batch axis 0 when
      ``batch_first``, else 1); with ``return_state``, also ``h_n`` (and ``c_n``), batch
      axis 1 as in PyTorch. ``lengths`` as the module call takes them.

    Attributes
    ----------
    batch_axis : int
        The batch axis of the input (1 for a time-major TorchRNN, else 0).
    integer_input : bool
        The model takes ids ``(batch, time)`` (it starts with an Embedding).
    masks_padding : bool
        Padded steps change nothing in a row's valid outputs: TorchRNN with ``lengths``,
        or a Keras model whose first layer masks (Masking, Embedding(mask_zero=True)).
    pad_value : float
        What padding is filled with (a Masking layer's ``mask_value``, else 0).
    """

    def __init__(self, model, return_state=False):
        self.model = model
        self.return_state = bool(return_state)
        self.pad_value = 0.0
        self.masks_padding = False
        self.integer_input = False
        self.batch_axis = 0
        self.dtype = np.dtype(getattr(model, "dtype", None) or np.float32)
        if isinstance(model, TorchRNN):
            self.kind = "torch"
            self.batch_axis = 0 if model.batch_first else 1
            self.masks_padding = True
        elif isinstance(model, (KerasModel, Sequential)):
            self.kind = "keras"
            if self.return_state:
                raise ValueError(
                    "return_state is for a TorchRNN; a Keras model's outputs are its own "
                    "(a recurrent layer with return_state=True adds its states to them)"
                )
            if isinstance(model, KerasModel):
                self.integer_input = model._integer_input
                self.dtype = model._input_dtype if not self.integer_input else np.dtype(np.int64)
                first = model.layers[0] if model.layers else None
                if isinstance(first, MaskingNode):
                    self.masks_padding, self.pad_value = True, first.mask_value
                elif isinstance(first, EmbeddingNode) and first.mask_zero:
                    self.masks_padding = True
        else:
            raise TypeError(
                "expected an rnnfast model (KerasModel, TorchRNN, Sequential), got %s" % type(model).__name__
            )
        self.time_axis = 1 - self.batch_axis
        if self.kind == "torch":
            self.features = model.input_size
        elif isinstance(model, KerasModel):
            self.features = None if self.integer_input else model.input_shape[-1]
        else:
            self.features = model.layers[0].input_size if model.layers else None

    @property
    def input_ndim(self):
        return 2 if self.integer_input else 3

    def run(self, x, lengths=None, num_threads=None):
        """``x`` (the model's layout) -> (leaves, skeleton)."""
        if self.kind == "torch":
            out, states = self.model(x, lengths=lengths, num_threads=num_threads)
            if not self.return_state:
                return [out], 0
            if isinstance(states, tuple):  # as the module returns them
                return [out, states[0], states[1]], (0, (1, 2))
            return [out, states], (0, 1)
        if lengths is not None:
            raise ValueError(
                "lengths are for a TorchRNN: a Keras model takes its masks from the model "
                "(Masking, Embedding(mask_zero=True)); pad the rows with the mask value instead"
            )
        y = self.model.predict(x, num_threads=num_threads)
        leaves, skeleton = flatten(y)
        return leaves, skeleton

    def output_batch_axes(self, n):
        if self.kind == "torch":
            return [self.batch_axis] + [1] * (n - 1)
        return [0] * n

    def run_batched(self, x, lengths=None, num_threads=None, batch_size=None):
        """:meth:`run` over slices of at most ``batch_size`` rows (results bitwise the same:
        a row's outputs do not depend on the rows beside it)."""
        B = x.shape[self.batch_axis]
        if batch_size is None or B <= batch_size:
            return self.run(x, lengths, num_threads)
        parts = []
        skeleton = None
        for s in range(0, B, batch_size):
            sl = [slice(None)] * x.ndim
            sl[self.batch_axis] = slice(s, s + batch_size)
            leaves, skeleton = self.run(
                x[tuple(sl)], None if lengths is None else lengths[s : s + batch_size], num_threads
            )
            parts.append(leaves)
        axes = self.output_batch_axes(len(parts[0]))
        return [np.concatenate([p[k] for p in parts], axis=axes[k]) for k in range(len(axes))], skeleton

    def probe(self, shape, dtype):
        """Outputs for one row of zeros of the given input shape: their skeleton, and per
        leaf (shape with the batch axis, dtype, batch axis)."""
        shape = list(shape)
        shape[self.batch_axis] = 1
        x = np.zeros(shape, dtype)
        leaves, skeleton = self.run(x, None, 1)
        axes = self.output_batch_axes(len(leaves))
        return skeleton, [(leaf.shape, leaf.dtype, ax) for leaf, ax in zip(leaves, axes)]


# -- the worker processes' memory allocator ----------------------------------------------

#: What a worker process's glibc allocator keeps: blocks up to this size come from the
#: heap and are reused by the next call, and free memory past it at the heap's top goes
#: back to the system. glibc's default maps every block over 32 MiB anew (and its dynamic
#: threshold, below that, only after a first free): a 5,000-row block of the bundled
#: digits LSTM (outputs of 64 MiB per layer) then faults in fresh pages on every call,
#: which the kernel zeroes, 5-10% of the call's CPU time and memory traffic beside the
#: other workers (bench/README.md, "session 10").
ALLOCATOR_BYTES = 256 << 20

#: The environment of a worker process for glibc's allocator (read when the process
#: starts): both thresholds at ``ALLOCATOR_BYTES``. Dask's nanny starts its workers with
#: ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes the size above which glibc maps
#: every allocation anew at 128 KiB: then each of the engine's working buffers of a few
#: hundred KiB to a few MiB is mapped, faulted in page by page and unmapped per call --
#: 133,000 page faults and 1.6x the CPU time per 5,000-row block of the bundled digits
#: LSTM (bench/README.md, "Past one machine").
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": str(ALLOCATOR_BYTES), "MALLOC_MMAP_THRESHOLD_": str(ALLOCATOR_BYTES)}

_allocations_kept = False


def keep_allocations():
    """Set this process's glibc allocator (``mallopt``) as ``ALLOCATOR_ENV`` sets a
    process that starts with it: for a worker that already runs (Ray's), where the
    environment comes too late. Returns whether it is set: False where the C library is
    not glibc (nothing is changed there)."""
    global _allocations_kept
    if _allocations_kept:
        return True
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # no such confstr name (not glibc), or no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    _allocations_kept = bool(mallopt(M_TRIM_THRESHOLD, ALLOCATOR_BYTES) and mallopt(M_MMAP_THRESHOLD, ALLOCATOR_BYTES))
    return _allocations_kept


# -- models that travel by path ---------------------------------------------------------

# models loaded by path in this process: (path, mtime, size, options) -> model, the newest last.
_loaded: dict[tuple[str, int, int, str], object] = {}
_load_lock = threading.Lock()
_MAX_LOADED = 4


class ModelHandle:
    """What a task is given in place of a model it finds where it runs: ``get()`` returns
    the model (:class:`ModelRef`, and a Dask worker plugin's, ``rnnfast._dask_workers``)."""

    __slots__ = ()

    def get(self):  # pragma: no cover - every handle has its own
        raise NotImplementedError


class ModelRef(ModelHandle):
    """A model file (on storage every worker can read) and the options of
    :func:`rnnfast.load`: pickles as the path, loads once per process."""

    def __init__(self, path, options=None):
        self.path = os.fspath(path)
        self.options = dict(options or {})

    def get(self):
        path = os.path.abspath(self.path)
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, repr(sorted(self.options.items())))
        with _load_lock:
            model = _loaded.get(key)
            if model is None:
                model = load(path, **self.options)
                while len(_loaded) >= _MAX_LOADED:
                    _loaded.pop(next(iter(_loaded)))
                _loaded[key] = model
        return model

    def __repr__(self):
        return "ModelRef(%r%s)" % (self.path, "".join(", %s=%r" % kv for kv in self.options.items()))


def resolve_model(model):
    return model.get() if isinstance(model, ModelHandle) else model


# -- threads ---------------------------------------------------------------------------


class ThreadBudget:
    """Threads for the rnnfast calls that several threads of one process make at once
    (a Dask worker's task threads), within a total: a call takes its share of what is
    free (at least one thread) and waits while nothing is free, so that all calls
    together never run more threads than the total.

    Attributes
    ----------
    peak : int
        The most threads in use at once so far (for tests and for the curious).
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._used = 0
        self._calls = 0
        self.peak = 0

    @contextmanager
    def take(self, total, share=None):
        """Hold threads for one call; yields how many.

        Parameters
        ----------
        total : int
            The process's budget.
        share : int, optional
            What this call should take when enough is free (default: the total divided
            among the calls in progress).
        """
        total = max(1, int(total))
        with self._cond:
            self._calls += 1
            try:
                while self._used >= total:
                    self._cond.wait()
                fair = share if share else total // self._calls
                n = max(1, min(total - self._used, fair))
                self._used += n
                self.peak = max(self.peak, self._used)
            except BaseException:
                self._calls -= 1
                raise
        try:
            yield n
        finally:
            with self._cond:
                self._used -= n
                self._calls -= 1
                self._cond.notify_all()


#: The one budget of this process.
BUDGET = ThreadBudget()


# -- variable-length rows ---------------------------------------------------------------


def as_rows(values, integer_input, features):
    """A column's cells as arrays: ``(T_i, features)`` floats, or ``(T_i,)`` ids."""
    rows = []
    want = 1 if integer_input else 2
    for i, v in enumerate(values):
        if hasattr(v, "as_py"):  # a pyarrow scalar
            v = v.as_py()
        if isinstance(v, (str, bytes)):
            raise ValueError(
                "row %d is a string, not a sequence: Dask turns a pandas column of arrays into "
                "strings unless dask.config.set({'dataframe.convert-string': False}) is in "
                "effect when the frame is made (dd.from_pandas)" % i
            )
        a = np.asarray(v)
        if a.dtype == object:  # e.g. parquet list<list<float>>: arrays in an array
            a = np.stack([np.asarray(r) for r in a]) if len(a) else np.zeros((0, features or 0))
        if a.ndim == 0 or (a.ndim != want and not (a.size == 0 and a.ndim == 1)):
            raise ValueError(
                "row %d: expected a sequence of shape %s, got shape %s"
                % (i, "(time,) of ids" if integer_input else "(time, %s)" % features, a.shape)
            )
        if a.size == 0:
            a = a.reshape((0,) if integer_input else (0, features))
        elif not integer_input and features is not None and a.shape[1] != features:
            raise ValueError("row %d: expected %d features, got shape %s" % (i, features, a.shape))
        rows.append(a)
    return rows


def plan_buckets(lengths, min_rows=32, overhead_rows=16, max_cuts=1024):
    """Rows sorted by length and cut into buckets each padded to its own longest row,
    where that computes fewer padded steps than one bucket.

    A bucket of ``n`` rows whose longest has ``T`` steps is costed ``(n +
    overhead_rows) * T`` (the per-call cost in row-steps); buckets have at least
    ``min_rows`` rows (fewer rows run the products less efficiently); the cheapest cut
    is found exactly (dynamic programming over cut points every ``min_rows`` rows).

    Returns
    -------
    list of ndarray of int
        Row indices per bucket; one bucket in the original order when cutting saves
        nothing.
    """
    lengths = np.asarray(lengths, np.int64)
    n = len(lengths)
    if n == 0:
        return []
    step = max(int(min_rows), -(-n // max_cuts))
    if n < 2 * step:
        return [np.arange(n)]
    order = np.argsort(lengths, kind="stable")
    L = lengths[order]
    cuts = np.concatenate([[0], np.arange(step, n - step + 1, step), [n]])
    cuts = np.unique(cuts)
    m = len(cuts)
    best = np.zeros(m)
    prev = np.zeros(m, np.int64)
    for j in range(1, m):
        cost = best[:j] + (cuts[j] - cuts[:j] + overhead_rows) * float(L[cuts[j] - 1])
        i = int(np.argmin(cost))
        best[j], prev[j] = cost[i], i
    one = (n + overhead_rows) * float(L[-1])
    if best[-1] >= 0.95 * one:  # not worth the calls: keep the rows as they are
        return [np.arange(n)]
    out = []
    j = m - 1
    while j > 0:
        i = prev[j]
        out.append(order[cuts[i] : cuts[j]])
        j = i
    return out[::-1]


def check_padding(runner, padding, maxlen, lengths=None):
    """Refuse a padding that cannot give each row its own result (``lengths``: the
    rows' lengths, when known; rows of one length need no padding)."""
    if padding not in ("post", "pre"):
        raise ValueError("padding must be 'post' or 'pre', got %r" % (padding,))
    if runner.kind == "torch" and padding == "pre":
        raise ValueError("a TorchRNN takes its rows post-padded (lengths count from the first step)")
    if lengths is not None and (len(lengths) == 0 or lengths.min() == lengths.max()):
        return
    if maxlen is None and not runner.masks_padding:
        raise ValueError(
            "this model does not mask padding (no Masking or Embedding(mask_zero=True) "
            "first), so a row's outputs depend on how much padding it gets: pass maxlen= "
            "(and padding=) as the training data was padded"
        )


def predict_rows(runner, rows, *, num_threads=None, padding="post", maxlen=None, batch_size=None):
    """Run the model on variable-length rows; per row, its outputs (a list of leaves).

    Rows are padded (``padding`` "post" or "pre", with the runner's ``pad_value``) to
    ``maxlen`` if given, else -- where padding changes nothing (a TorchRNN given the
    lengths; a Keras model that masks its input) -- in buckets of similar lengths
    (:func:`plan_buckets`), each to its own longest row. Sequence outputs (a time axis as
    long as the padded input) come back cut to each row's own steps.

    Returns
    -------
    per_row : list of list of ndarray
    skeleton : the output structure (see :func:`flatten`)
    """
    n = len(rows)
    lengths = np.array([len(r) for r in rows], np.int64)
    check_padding(runner, padding, maxlen, lengths)
    if maxlen is not None:
        maxlen = int(maxlen)
        if n and lengths.max() > maxlen:
            raise ValueError(
                "a row has %d steps, more than maxlen=%d (rnnfast does not cut rows)" % (lengths.max(), maxlen)
            )
        buckets = [np.arange(n)] if n else []
    else:
        buckets = plan_buckets(lengths)
    torch = runner.kind == "torch"
    per_row: list[Optional[list[np.ndarray]]] = [None] * n
    skeleton = None
    for idx in buckets:
        Lb = lengths[idx]
        T = max(1, maxlen if maxlen is not None else int(Lb.max()))
        if runner.integer_input:
            x = np.full((len(idx), T), runner.pad_value, np.int64)
        else:
            x = np.full((len(idx), T, runner.features), runner.pad_value, runner.dtype)
        for j, i in enumerate(idx):
            if lengths[i]:
                if padding == "post":
                    x[j, : lengths[i]] = rows[i]
                else:
                    x[j, T - lengths[i] :] = rows[i]
        if runner.batch_axis == 1:
            x = np.ascontiguousarray(np.swapaxes(x, 0, 1))
        leaves, skeleton = runner.run_batched(x, Lb if torch else None, num_threads, batch_size)
        axes = runner.output_batch_axes(len(leaves))
        for k, (leaf, ax) in enumerate(zip(leaves, axes)):
            seq = leaf.ndim == 3 and leaf.shape[1 - ax] == T and (not torch or k == 0)
            for j, i in enumerate(idx):
                r = np.take(leaf, j, axis=ax)
                if seq:
                    r = r[: lengths[i]] if padding == "post" else r[T - lengths[i] :]
                row = per_row[i]
                if row is None:
                    row = per_row[i] = []
                row.append(np.array(r))
    return per_row, skeleton


def thread_total(num_threads):
    """The process's thread budget where no engine says otherwise: ``num_threads`` or
    :func:`rnnfast.get_num_threads`."""
    return resolve_num_threads(num_threads)
