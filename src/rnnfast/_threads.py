"""Thread settings: rnnfast's own OpenMP team size, and the BLAS held to one thread.

rnnfast parallelises over its own work items with OpenMP and calls BLAS (through
``scipy.linalg.cython_blas``) from inside that parallel region, so that BLAS must not
start threads of its own there (the oversubscription users of other engines suffer
from). rnnfast therefore sets the BLAS library it calls -- SciPy's OpenBLAS, which is
a different library from NumPy's -- to one thread when it first computes, and keeps
it there (checked on every call). It does not restore the old count after each call:
every restore wakes OpenBLAS' worker threads, which then busy-wait and steal the cores
rnnfast's own threads need. NumPy's BLAS is left alone. Only where the BLAS that SciPy
uses cannot be told apart from the others (e.g. one MKL shared by NumPy and SciPy)
are all of them limited.
"""
import operator
import os
import threading
from contextlib import contextmanager

__all__ = ["set_num_threads", "get_num_threads", "resolve_num_threads", "blas_single_threaded",
           "load_kernels"]

_lock = threading.Lock()
_num_threads = None          # None: the cores this process may use
_controllers = None          # threadpoolctl controllers of the BLAS rnnfast calls


def load_kernels():
    """Import the compiled core, with OpenMP's idle threads told to sleep.

    GNU OpenMP's default lets a thread that waits (for the next parallel region, or at
    a barrier) spin for milliseconds. On a shared or busy machine that spinning holds
    the very core a team member is waiting for, and two threads become many times
    slower than one. rnnfast's own per-step barrier spins briefly and then sleeps
    (_openmp.h); for the rest, OMP_WAIT_POLICY=PASSIVE is set while the core loads
    the OpenMP runtime (which reads it once, then), unless the user has set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT. The environment is restored afterwards, so
    child processes and other libraries see the user's own.
    """
    chosen = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if not chosen:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from . import _kernels
    finally:
        if not chosen:
            del os.environ["OMP_WAIT_POLICY"]
    return _kernels


def _available_cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Set the process-wide number of threads rnnfast uses.

    Parameters
    ----------
    n : int or None
        A positive count; ``None`` (or 0) restores the default, the number of cores
        this process may run on; a negative ``n`` means "all cores but ``-n - 1``"
        (``-1`` is all cores), as in scikit-learn.
    """
    global _num_threads
    n = _check_int(n)
    _num_threads = None if n in (None, 0) else _effective(n)


def get_num_threads():
    """The number of threads rnnfast uses by default (see :func:`set_num_threads`)."""
    return _available_cores() if _num_threads is None else _num_threads


def _check_int(n):
    if n is None:
        return None
    if isinstance(n, bool):
        raise TypeError("num_threads must be an int or None, got %r" % (n,))
    try:
        return operator.index(n)
    except TypeError:
        raise TypeError("num_threads must be an int or None, got %r" % (n,)) from None


def _effective(n):
    if n > 0:
        return int(n)
    return max(1, _available_cores() + 1 + int(n))


def resolve_num_threads(n=None):
    """The thread count for one call: ``n`` if given (same meaning as in
    :func:`set_num_threads`), else the process-wide setting."""
    n = _check_int(n)
    if n is None or n == 0:
        return get_num_threads()
    return _effective(n)


def _blas_controllers():
    """The threadpoolctl controllers of the BLAS that scipy.linalg.cython_blas calls."""
    global _controllers
    if _controllers is None:
        import scipy
        from threadpoolctl import ThreadpoolController

        import scipy.linalg.cython_blas  # noqa: F401 - make sure the BLAS we call is loaded

        blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        site = os.path.dirname(os.path.dirname(os.path.realpath(scipy.__file__)))
        scipys = [c for c in blas
                  if os.path.realpath(c.filepath).startswith(os.path.join(site, "scipy"))]
        _controllers = scipys or blas
    return _controllers


@contextmanager
def blas_single_threaded():
    """Make sure the BLAS rnnfast calls runs one thread, for the block and after it."""
    with _lock:
        for c in _blas_controllers():
            n = c.get_num_threads()
            if n is not None and n > 1:
                c.set_num_threads(1)
    yield
