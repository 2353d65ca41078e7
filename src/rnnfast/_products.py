"""The products outside the recurrent layers -- Dense, Conv1D, attention: one home.

They run on the compiled core's packed product (``c/products.template.h``), the one
the recurrence uses, in rnnfast's own parallel region with the GIL released, on the
call's thread count (:func:`rnnfast._threads.resolve_num_threads`) and sized from the
work (:func:`rnnfast._plan.product_team`). Not NumPy's ``@``: NumPy's own OpenBLAS
starts threads of its own beside rnnfast's (oversubscription), and on a busy machine
waking them took up to 40 ms for a 0.03 ms product. Each element of a product is one
chain of multiply-adds whatever rows surround it, so the results do not depend on the
thread count. float32 and float64; other dtypes go to NumPy. A few rows on many packed
weights at two threads or more (a decoder's vocabulary head at B=1) split their columns
with ``_rowops``' partner thread instead (:data:`PARTNER_MACS`).
"""

import numpy as np

from . import _kernels, _plan, _rowops
from ._special import row_softmax
from ._threads import resolve_num_threads

__all__ = ["pack", "dense", "matmul", "ROW_SOFTMAX", "ROW_LOG_SOFTMAX"]

_CORE = (np.dtype(np.float32), np.dtype(np.float64))


def pack(kernel):
    """``kernel`` (K, N), float32 or float64, in the packed form :func:`dense` takes
    (read-only); a strided one (a transposed view: ONNX Gemm's ``transB`` weights) is
    packed as it lies, with no contiguous copy first."""
    kernel = np.asarray(kernel)
    if kernel.flags.c_contiguous:
        p = _kernels.pack_blocks(kernel[None], 1, 1)[0]
    else:
        p = _kernels.pack_columns(kernel[None], np.arange(kernel.shape[1], dtype=np.int64), 1, 1)[0]
    p.flags.writeable = False
    return p


def _team(num_threads, M, N, K, G=1):
    flops = 2 * G * M * N * K
    if flops < 2 * _plan.MIN_PRODUCT_FLOPS_PER_THREAD and (num_threads is None or type(num_threads) is int):
        return 1  # too little work for a second thread (product_team) whatever the count: not looked up
    return _plan.product_team(resolve_num_threads(num_threads), flops)


#: ``act`` of :func:`dense` (codes past the ``RNN_ACT_*`` ones): the softmax (log-softmax) over
#: the last axis of a Keras ``Dense(activation="softmax")`` and of ONNX's ``Softmax``
#: (``LogSoftmax``), the row kernel's (:func:`rnnfast._special.row_softmax`)
#: bits: after the product, or for a few rows (:data:`FEW_ROWS`) in ``_rowops.packed_rows``'
#: column tasks, each block of columns as it is written: on many weights (:data:`PARTNER_MACS`:
#: a decoder's vocabulary head) on one thread too (no second pass over the row: (1, 256) @
#: (256, 8000) and its softmax 5% faster there; on two, the partner runs half the blocks), on
#: few always on the caller's thread (one compiled call: a text classifier's (1, 256) @
#: (256, 5) and its log-softmax 7.4 -> 4.4 us, Zen 4).
ROW_SOFTMAX = 65
ROW_LOG_SOFTMAX = 66
_ROW_SOFTMAXES = (ROW_SOFTMAX, ROW_LOG_SOFTMAX)
_ROWS_SOFTMAX = {ROW_SOFTMAX: 1, ROW_LOG_SOFTMAX: 2}  # (``_rowops.packed_rows``' softmax)


def dense(x, packed, N, bias=None, act=-1, num_threads=None, stream=False, addend=None):
    """``act(x @ kernel + bias)`` on the last axis of ``x`` (..., K), with ``packed``
    from :func:`pack` (kernel (K, N)) in ``x``'s dtype; ``act`` an ``RNN_ACT_*`` code,
    :data:`ROW_SOFTMAX`, :data:`ROW_LOG_SOFTMAX` or -1. Returns a new
    (..., N) array. ``stream``: for one row, the weights are read past the caches
    (``_rowops.packed_rows``' ``stream``, the same bits): a model's weights that do not
    all fit the last-level cache (:func:`rnnfast._plan.streamed_weights`). ``addend``
    (N,), C-contiguous in ``x``'s dtype: ``act((x @ kernel + bias) + addend)``, added to
    the rounded product as NumPy's add afterwards (an ONNX MatMul's bias Add: bitwise
    the two ops), in the product's own call where it can."""
    shape = x.shape
    K = shape[-1]
    y = np.empty(shape[:-1] + (N,), x.dtype)
    if K == 0 or y.size == 0:
        return _dense_of_nothing(y, bias, act, num_threads, addend)
    if len(shape) == 2 and x.flags.c_contiguous:  # (a Gemm's rows: no views to make)
        x2, y2, M = x, y, shape[0]
    else:
        x2 = (x if x.flags.c_contiguous else np.ascontiguousarray(x)).reshape(-1, K)
        M = x2.shape[0]
        y2 = y.reshape(M, N)
    b = _NO_BIAS[x.dtype] if bias is None else bias
    row_sm = act in _ROW_SOFTMAXES
    if addend is not None:
        partner = _rowops.PARTNER and M * N * K >= PARTNER_MACS and resolve_num_threads(num_threads) > 1
        if M <= FEW_ROWS and ((stream and M == 1) or partner):
            # (the few-row kernel, as below, which takes no addend: the sum, then NumPy's add)
            _rowops.packed_rows(x2, packed, b, y2, resolve_num_threads(num_threads), 0, stream and M == 1)
            np.add(y, addend, out=y)
            return _activated(y, act, num_threads)
        _kernels.packed_rows(x2, packed, b, y2, -1 if row_sm else act, _team(num_threads, M, N, K), addend)
        return row_softmax(y, act == ROW_LOG_SOFTMAX, num_threads, out=y) if row_sm else y
    if M <= FEW_ROWS:
        streamed = stream and M == 1  # (the few-row kernel streams the weights of one row)
        if M * N * K < PARTNER_MACS and not streamed:
            if row_sm:  # a small head: the product and its softmax in one compiled call on this thread
                _rowops.packed_rows(x2, packed, b, y2, 1, _ROWS_SOFTMAX[act])
                return y
        elif streamed or row_sm or (_rowops.PARTNER and resolve_num_threads(num_threads) > 1):
            # a few rows on many weights (a decoder's head at B=1)
            nth = resolve_num_threads(num_threads)
            _rowops.packed_rows(x2, packed, b, y2, nth, _ROWS_SOFTMAX.get(act, 0), streamed)
            if act >= 0 and not row_sm:  # row by row, as the packed product applies it on one thread
                for row in y2:
                    _kernels.activate(act, row)
            return y
    _kernels.packed_rows(x2, packed, b, y2, -1 if row_sm else act, _team(num_threads, M, N, K))
    if row_sm:
        row_softmax(y, act == ROW_LOG_SOFTMAX, num_threads, out=y)
    return y


def _dense_of_nothing(y, bias, act, num_threads, addend=None):
    """:func:`dense`'s ``y`` where ``x`` has no columns (K = 0) or ``y`` no elements."""
    if y.size == 0:
        return y
    y[...] = 0 if bias is None else bias
    if addend is not None:
        np.add(y, addend, out=y)
    return _activated(y, act, num_threads)


def _activated(y, act, num_threads):
    """``y`` (a new array) with :func:`dense`'s ``act`` applied in place."""
    if act in _ROW_SOFTMAXES:
        row_softmax(y, act == ROW_LOG_SOFTMAX, num_threads, out=y)
    elif act >= 0:
        _kernels.activate(act, y.reshape(-1))
    return y


_NO_BIAS = {dt: np.zeros(0, dt) for dt in _CORE}

#: :func:`dense` of at most :data:`FEW_ROWS` rows and at least this many multiply-adds,
#: on two threads or more, runs on ``_rowops.packed_rows``: its panels split between the
#: caller and a partner thread that polls for work a while after each product
#: (``c/rowops.team.h``), the bits of the packed product. The OpenMP team's partner
#: sleeps between regions (OMP_WAIT_POLICY=PASSIVE) and its wake, 46-138 us, cost more
#: than it saved: (1, 256) @ (256, 8000) took 91 us on one thread, 80 us on two OpenMP
#: threads back to back, 55 us so (Zen 4, chrt). Below this a second core saves less than
#: a futex wake.
PARTNER_MACS = 1 << 19

#: :func:`matmul` of at most this many rows per product, with a B per batch entry or a
#: B of strided columns (each packed by the core before its product, the latter element
#: by element) and at most :data:`FEW_ROWS_MACS` multiply-adds in all, runs on
#: ``_rowops.rows_products`` (B read in place, not packed; each element the packed
#: product's chain, so a row's values are the same either way): (64, 1, 256) @ (64, 256,
#: 20) (a transposed view) took 0.52 ms packed; (1, 256) @ (256, 20) (transposed) 9.6 us
#: packed, 3.8 us so (Zen 4, 1 thread).
FEW_ROWS = 4
FEW_ROWS_MACS = 1 << 22


def matmul(a, b, bias=None, num_threads=None, act=-1):
    """``act(a @ b (+ bias))`` as ``np.matmul`` computes the product, for ``a`` (..., M,
    K) and ``b`` (..., K, N) or (K, N) with at most two batch axes (broadcast as NumPy
    does), on the core's product: ``a`` and ``b`` may be strided views (a transpose, or
    overlapping windows, read in place; ``a``'s rows contiguous). ``act``: an
    ``RNN_ACT_*`` code applied to the result (as ``_kernels.activate``), or -1.
    Returns a new C-contiguous array in ``a``'s dtype."""
    a, b = np.asarray(a), np.asarray(b)
    dt = np.result_type(a, b)
    if dt not in _CORE or a.ndim < 2 or b.ndim < 2 or max(a.ndim, b.ndim) > 4:
        y = np.matmul(a, b)
        y = y + bias if bias is not None else y
        if act >= 0 and y.dtype in _CORE:
            y = np.ascontiguousarray(y)
            _kernels.activate(act, y.reshape(-1))
        return y
    a, b = a.astype(dt, copy=False), b.astype(dt, copy=False)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if b.shape[-2] != K:
        raise ValueError("matmul: shapes %s and %s do not multiply" % (a.shape, b.shape))
    lead = (1,) * (2 - len(batch)) + batch
    a4 = (
        np.broadcast_to(a, batch + (M, K)).reshape(lead + (M, K)) if a.shape[:-2] != batch else a.reshape(lead + (M, K))
    )
    if a4.strides[-1] != a4.itemsize and K > 1:
        a4 = np.ascontiguousarray(a4)
    b4 = b.reshape((1,) * (4 - b.ndim) + b.shape)
    y = np.empty(lead + (M, N), dt)
    if y.size == 0:
        return y.reshape(batch + (M, N))
    if K == 0:
        y[...] = 0 if bias is None else bias
        if act >= 0:
            _kernels.activate(act, y.reshape(-1))
        return y.reshape(batch + (M, N))
    bb = None if bias is None else np.ascontiguousarray(bias, dt).reshape(N)
    per_b = b4.shape[0] * b4.shape[1] > 1 or (b4.strides[-1] != b4.itemsize and N > 1)
    nth = _team(num_threads, M, N, K, lead[0] * lead[1])
    if M <= FEW_ROWS and per_b and lead[0] * lead[1] * M * N * K <= FEW_ROWS_MACS:
        # a few rows against a B per batch entry, or a transposed one (attention's
        # q @ k^T at decoding): packing B would cost more than its product
        _rowops.rows_products(a4, b4, y, bb, nth)
        if act >= 0:
            _kernels.activate(act, y.reshape(-1))
        return y.reshape(batch + (M, N))
    _kernels.products(a4, b4, y, bb, act, nth)
    return y.reshape(batch + (M, N))
