"""Functions NumPy lacks, shared by the layers, the products and the graph ops:
:func:`softmax`, :func:`row_softmax` (compiled, for ONNX graphs), and the error
function, for the exact GELU of Keras and ONNX graphs and ONNX ``Erf``.

NumPy has no ``erf``. SciPy's (``scipy.special.erf``, vectorised) is used where SciPy is
installed; rnnfast does not depend on SciPy, and without it each element goes through
Python's ``math.erf`` (the C library's), about 5x slower on large arrays. The two agree
bit for bit on float32 results (the graphs' usual dtype; checked on 10^6 values) and
within 3 ulp on float64 (13.5% of values differ, by one ulp mostly).
"""

import math

import numpy as np

from . import _rowops
from ._threads import resolve_num_threads

_math_erf = np.frompyfunc(math.erf, 1, 1)
_scipy_erf = None  # scipy.special.erf, False without SciPy: looked up on the first call only


def erf(x):
    """``erf(x)`` elementwise, in ``x``'s floating dtype."""
    global _scipy_erf
    x = np.asarray(x)
    if _scipy_erf is None:
        try:
            from scipy.special import erf as found
        except ImportError:
            found = False
        _scipy_erf = found
    if _scipy_erf is False:
        return np.asarray(_math_erf(x.astype(np.float64)), dtype=np.float64).astype(x.dtype, copy=False)
    return np.asarray(_scipy_erf(x)).astype(x.dtype, copy=False)


def softmax(x, out=None):
    """Softmax over the last axis, ``exp(x - max) / sum(exp(x - max))``.

    Parameters
    ----------
    x : ndarray of float32 or float64
    out : ndarray, optional
        Where to write it (``x`` itself for an in-place softmax); a new array if omitted.

    Returns
    -------
    ndarray, ``x``'s shape and dtype
    """
    y = np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y


#: Elements of a softmax per thread, at least (:func:`row_softmax`): (64, 8000) float32,
#: 0.4 ms on one Zen 4 core, splits in two; a partner thread's wake costs 50-140 us.
SOFTMAX_ELEMENTS_PER_THREAD = 1 << 17
_ROW_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def row_softmax(x, log=False, num_threads=None, out=None):
    """Softmax (``log``: log-softmax, ``d - log(sum(exp(d)))``) over the last axis of a
    float32 or float64 ``x``, ``d = x - max``: a new array of ``x``'s shape, computed by
    the compiled row kernel (``_rowops.softmax_rows``: each row alone, in an order
    fixed by its length, so a row's values depend on neither its batch nor the thread
    count), on up to ``num_threads`` threads (default :func:`rnnfast.get_num_threads`)
    where the rows are many. ``out``: the array to write (``x`` itself for an in-place
    softmax), used where it is a C-contiguous array of ``x``'s shape and dtype. Other
    dtypes: NumPy's formula."""
    if x.dtype not in _ROW_DTYPES:
        if log:
            y = x - x.max(axis=-1, keepdims=True)
            return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))
        return softmax(x)
    x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    if out is not None and out.shape == x.shape and out.dtype == x.dtype and out.flags.c_contiguous:
        y = out.reshape(x2.shape)
    else:
        y = np.empty(x2.shape, x.dtype)
    nth = 1
    if x2.size >= 2 * SOFTMAX_ELEMENTS_PER_THREAD:
        nth = max(1, min(resolve_num_threads(num_threads), x2.size // SOFTMAX_ELEMENTS_PER_THREAD, x2.shape[0]))
    _rowops.softmax_rows(x2, y, log, nth)
    return y.reshape(x.shape)
