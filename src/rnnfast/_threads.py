"""Thread settings: how many threads rnnfast's OpenMP team uses, fork safety, and the
BLAS held to one thread.

How many threads
----------------
The default is what the host grants this process, as scikit-learn and joblib read it:

1. ``OMP_NUM_THREADS``, when set to a positive integer (for a list of them, one per
   nesting level such as ``"4,2"``: the first). Process managers set it to stop
   oversubscription (Dask's nanny, Ray, Spark, many container images). An invalid
   value (``"abc"``, ``"0"``, ``"-2"``, ``"4,x"``) is ignored with a
   ``RuntimeWarning``; an empty one counts as unset.
2. Otherwise the CPUs this process may use: the CPU affinity mask
   (``os.sched_getaffinity``; ``taskset``, ``numactl``, cpusets), limited by the
   cgroup CPU bandwidth quota of the process's own cgroup and its ancestors (cgroup v2
   ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``; Docker ``--cpus``,
   Kubernetes CPU limits), rounded up to whole CPUs.

``OMP_NUM_THREADS``, the quota and the machine's CPU count are read once per process
(as OpenMP reads its variables), again after ``set_num_threads(None)`` and in a
forked child; the affinity mask on every call (1 us).

Every count, default or asked for, is capped at :func:`~rnnfast._threads.max_threads`: four threads per
logical CPU of the machine (``4 * os.cpu_count()``). More threads than CPUs never
run faster, but a few more are harmless and useful (to test scheduling on a small
machine, or where ``OMP_NUM_THREADS`` asks for them); 50,000 would make the OpenMP
runtime fail to create them, and it then ends the process. A count above the cap is
lowered to it, silently.

``n`` in :func:`set_num_threads` and in every ``num_threads=`` argument:

* a positive int: that many threads (at most :func:`~rnnfast._threads.max_threads`), whatever the
  affinity mask, quota or ``OMP_NUM_THREADS`` say;
* ``None`` or 0: the default above (for ``set_num_threads``: go back to it);
* a negative int: relative to the default, as in scikit-learn: ``-1`` is the default,
  ``-2`` one thread fewer, and so on, never fewer than 1;
* anything else (a float, a str, a bool): ``TypeError`` naming ``num_threads``.

Fork
----
GNU OpenMP's thread pool does not survive ``fork()``: a child that starts a parallel
region on the thread that forked, after the parent ran one there, waits forever for
pool threads that do not exist in it (measured: the first 2-thread call of such a
child hangs; a 1-thread region does not touch the pool and runs; any thread the
child starts gets a fresh pool and runs in parallel). rnnfast therefore, just
before every ``os.fork()`` (and so ``multiprocessing``'s fork start method, process
pools, gunicorn's pre-forking), hands the forking thread's idle pool back to the
OpenMP runtime (``omp_pause_resource_all``): the parent builds a new one on its next
parallel call (about 20 us here), the child builds its own, and both run in parallel
with the same results. Where the runtime cannot do that (GNU OpenMP before GCC 9),
the child's forking thread runs rnnfast's calls on one thread instead (same results;
other threads of the child run in parallel). Forks that bypass Python's
``os.register_at_fork`` hooks (``fork()`` called from C) are not covered. Other
OpenMP runtimes (LLVM, Intel) handle fork themselves and are left alone.

BLAS
----
rnnfast parallelises over its own work items with OpenMP and calls BLAS from inside
that parallel region, so that BLAS must not start threads of its own there (the
oversubscription users of other engines suffer from). The BLAS it calls is the OpenBLAS
of the ``scipy-openblas32`` wheel (the build NumPy and SciPy make theirs from), a
library of its own: NumPy's is another file (``numpy.libs/libscipy_openblas64_*``), as
is SciPy's. rnnfast opens it at import with ``OPENBLAS_NUM_THREADS=1`` in the
environment (so it starts no worker threads), and keeps it at one thread (checked on
every call: ``threadpoolctl.threadpool_limits`` by the user would raise it). It does
not restore a raised count after each call: every restore wakes OpenBLAS' worker
threads, which then busy-wait and steal the cores rnnfast's own threads need. NumPy's
BLAS is left alone.
"""

import os
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Optional

from . import _validation

__all__ = [
    "set_num_threads",
    "get_num_threads",
    "resolve_num_threads",
    "default_num_threads",
    "available_cpus",
    "max_threads",
    "blas_single_threaded",
    "load_kernels",
]

_lock = threading.Lock()
_num_threads: Optional[int] = None  # None: the default (default_num_threads)
_controllers = None  # threadpoolctl controllers of the BLAS rnnfast calls


class _Local(threading.local):
    """Per thread: ``serial``, this thread must not start a parallel region (fork);
    ``released``, whether the fork's parent released its OpenMP pool. Their defaults
    are class attributes: a ``getattr`` with a default on a plain ``threading.local``
    raised and caught an AttributeError each time (1.5 us of every call on two threads
    or more, Zen 1)."""

    serial = False
    released = True


_local = _Local()
_openmp = None  # the OpenMP runtime's entry points rnnfast needs (_OpenMP)


def load_kernels():
    """Import the compiled core, with OpenMP's idle threads told to sleep.

    GNU OpenMP's default lets a thread that waits (for the next parallel region, or at
    a barrier) spin for milliseconds. On a shared or busy machine that spinning holds
    the very core a team member is waiting for, and two threads become many times
    slower than one. rnnfast's own per-step barrier spins briefly and then sleeps
    (c/openmp.h); for the rest, OMP_WAIT_POLICY=PASSIVE is set while the core loads
    the OpenMP runtime (which reads it once, then), unless the user has set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT. The environment is restored afterwards, so
    child processes and other libraries see the user's own.

    A runtime already in the process (GNU's libgomp, loaded by ``import torch`` before
    rnnfast: PyTorch's wheel bundles it under the same name) read its environment then,
    and its idle threads spin (its default) unless the user chose otherwise: the core is
    told so (``_kernels.openmp_spins``), and its kept team of two then runs on the OpenMP
    team, not beside a spinning pool thread (:func:`openmp_spins_here`).

    Also finds the runtime's pause entry point for the fork hooks (module doc), and hands
    the core its BLAS (:func:`_load_blas`).
    """
    global _openmp
    chosen = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if _openmp is None:
        spins = openmp_spins_here()
    if not chosen:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from . import _kernels
    finally:
        if not chosen:
            del os.environ["OMP_WAIT_POLICY"]
    if _openmp is None:
        _kernels._set_blas(*_load_blas())
        _kernels.openmp_spins(spins)
        _openmp = _OpenMP(_kernels)
    return _kernels


def openmp_spins_here(environ=None, maps="/proc/self/maps"):
    """Whether the OpenMP runtime rnnfast will run on spins its idle threads: the user
    chose an active wait policy (``OMP_WAIT_POLICY=active``), or GNU's runtime is
    already loaded (``maps``: this process's mappings, Linux) and no wait policy or spin
    count was chosen (its default spins; rnnfast's passive one comes too late)."""
    env = os.environ if environ is None else environ
    policy = env.get("OMP_WAIT_POLICY", "").strip().lower()
    if policy:
        return policy == "active"
    if "GOMP_SPINCOUNT" in env:
        return False
    try:
        with open(maps) as f:
            return any("libgomp" in line for line in f)
    except OSError:  # not Linux
        return False


# -- how many threads ------------------------------------------------------------------


#: Threads per logical CPU of the machine, at most (:func:`~rnnfast._threads.max_threads`).
MAX_THREADS_PER_CPU = 4


#: What is read once per process (again after set_num_threads(None) and in a forked
#: child): "cpus" (os.cpu_count()), "quota" (cgroup_cpu_limit()), "omp" (OMP_NUM_THREADS).
_host: dict[str, object] = {}
_UNREAD = object()


def _machine_cpus():
    n = _host.get("cpus")
    if n is None:
        n = _host["cpus"] = max(1, os.cpu_count() or 1)  # sysconf reads /sys: 6 us
    return n


def max_threads():
    """The most threads rnnfast runs in one call: ``MAX_THREADS_PER_CPU`` (4) per
    logical CPU of the machine (``os.cpu_count()``), whatever the affinity mask or quota."""
    return MAX_THREADS_PER_CPU * _machine_cpus()


def _affinity_cpus():
    """CPUs in this process's affinity mask (all of the machine's where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return _machine_cpus()


def _unescape_mount(path):
    """/proc/self/mountinfo writes space, tab, newline and backslash as octal escapes."""
    for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(esc, ch)
    return path


def _cgroup_dirs(cgroup_file, mountinfo_file):
    """[(version, directory of this process's cgroup, mount point)] for the cgroup v2
    hierarchy and the v1 hierarchy holding the ``cpu`` controller, where mounted."""
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
        with open(mountinfo_file) as f:
            mounts = f.read().splitlines()
    except OSError:
        return []
    paths: dict[int, str] = {}  # version -> cgroup path in the hierarchy
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and parts[0] == "0":
            paths.setdefault(2, path)
        elif "cpu" in controllers.split(","):
            paths.setdefault(1, path)
    out = []
    for m in mounts:
        left, sep, right = m.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        fstype, superopts = tail[0], tail[2].split(",")
        version = 2 if fstype == "cgroup2" else (1 if fstype == "cgroup" and "cpu" in superopts else None)
        if version is None or version not in paths:
            continue
        root, mountpoint = _unescape_mount(fields[3]), _unescape_mount(fields[4])
        path = paths[version]
        if root == "/" or path == root or path.startswith(root.rstrip("/") + "/"):
            rel = path[len(root.rstrip("/")) :] if root != "/" else path
            d = os.path.normpath(mountpoint + "/" + rel.lstrip("/"))
        else:  # a cgroup namespace, or a bind mount of another part
            d = mountpoint
        if not (d == mountpoint or d.startswith(mountpoint.rstrip("/") + "/")):
            d = mountpoint  # a path with ".." must not leave the mount
        out.append((version, d, mountpoint))
        del paths[version]  # the first mount of each hierarchy
    return out


def _read_quota(version, d):
    """The CPU bandwidth limit set in cgroup directory ``d``, in CPUs, or None."""
    try:
        if version == 2:
            with open(os.path.join(d, "cpu.max")) as f:
                parts = f.read().split()
            quota, period = parts[0], (parts[1] if len(parts) > 1 else "100000")
        else:
            with open(os.path.join(d, "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(d, "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        if quota == "max":
            return None
        q, p = int(quota), int(period)
    except (OSError, ValueError, IndexError):
        return None
    if q <= 0 or p <= 0:  # v1 writes -1 for "no limit"
        return None
    return q / p


def cgroup_cpu_limit(cgroup_file="/proc/self/cgroup", mountinfo_file="/proc/self/mountinfo"):
    """The CPU bandwidth quota of this process's cgroup, in CPUs (may be fractional),
    or None when there is none.

    The process's own cgroup is found through ``/proc/self/cgroup`` and
    ``/proc/self/mountinfo``; the smallest quota on the way from it up to the
    hierarchy's mount point counts (a parent's quota binds its children), over the
    cgroup v2 hierarchy and the v1 ``cpu`` hierarchy both.
    """
    limits = []
    for version, d, mountpoint in _cgroup_dirs(cgroup_file, mountinfo_file):
        while True:
            q = _read_quota(version, d)
            if q is not None:
                limits.append(q)
            if d == mountpoint or len(d) <= len(mountpoint):
                break
            d = os.path.dirname(d)
    return min(limits) if limits else None


def available_cpus():
    """The CPUs this process may use: its affinity mask, limited by its cgroup CPU
    quota rounded up (at least 1). ``OMP_NUM_THREADS`` is not consulted here."""
    quota = _host.get("quota", _UNREAD)  # (one lookup: another thread may clear _host)
    if quota is _UNREAD:
        quota = _host["quota"] = cgroup_cpu_limit()
    n = _affinity_cpus()
    if isinstance(quota, float):
        n = min(n, max(1, -int(-quota // 1)))  # ceil
    return max(1, min(n, _machine_cpus()))


_warned: set[str] = set()


def omp_num_threads():
    """``OMP_NUM_THREADS`` as a count (its first level for a list), or None when it is
    unset, empty or invalid (invalid values warn once each). Read once per process, as
    OpenMP reads it (again after ``set_num_threads(None)`` and in a forked child)."""
    n = _host.get("omp", _UNREAD)
    if n is _UNREAD:
        n = _host["omp"] = _parse_omp_num_threads(os.environ.get("OMP_NUM_THREADS"))
    return n


def _parse_omp_num_threads(raw):
    if raw is None or not raw.strip():
        return None
    levels = [v.strip() for v in raw.split(",")]
    if all(v.isascii() and v.isdigit() and int(v) > 0 for v in levels):
        return int(levels[0])
    if raw not in _warned:
        _warned.add(raw)
        warnings.warn(
            "rnnfast: ignoring OMP_NUM_THREADS=%r (not a positive integer, nor a list of "
            "them); using the CPUs this process may use" % (raw,),
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def default_num_threads():
    """The default thread count: ``OMP_NUM_THREADS`` if set, else :func:`available_cpus`;
    at most :func:`~rnnfast._threads.max_threads` (see the module doc)."""
    n = omp_num_threads()
    if n is None:
        return available_cpus()
    return min(n, max_threads())


def _resolve(n):
    """A validated ``n`` (int or None) to a thread count, before the per-thread fork rule."""
    if n is None or n == 0:
        return None
    if n > 0:
        return min(n, max_threads())
    return max(1, default_num_threads() + 1 + n)


def set_num_threads(n: Optional[int]) -> None:
    """Set the number of threads rnnfast uses by default, process-wide.

    Parameters
    ----------
    n : int or None
        A positive count (lowered to :func:`~rnnfast._threads.max_threads`, 4 per CPU of the machine,
        if above); ``None`` or 0 goes back to the default (``OMP_NUM_THREADS`` if set,
        else the CPUs this process may use: affinity mask and cgroup quota), read
        afresh; a negative ``n`` counts from that default (``-1``: all of it, ``-2``:
        all but one; at least 1), as in scikit-learn.

    Raises
    ------
    TypeError
        ``n`` is not an int or None (a bool, a float, a str...).
    """
    global _num_threads
    n = _validation.integer_option(n, "num_threads")
    if n is None or n == 0:
        _host.clear()  # read the host again: it may have changed
    _num_threads = _resolve(n)


def get_num_threads() -> int:
    """The number of threads rnnfast uses when a call does not say (see
    :func:`set_num_threads`): the count set, else the default."""
    return default_num_threads() if _num_threads is None else _num_threads


def resolve_num_threads(n=None):
    """The thread count for one call: ``n`` if given (same meaning as in
    :func:`set_num_threads`), else the process-wide setting. 1 on the thread that
    forked this process when the OpenMP runtime could not be made fork-safe (module
    doc)."""
    k = _resolve(_validation.integer_option(n, "num_threads"))
    if k is None:
        k = get_num_threads()
    if k > 1 and _local.serial:
        return 1
    return k


# -- fork ------------------------------------------------------------------------------


class _OpenMP:
    """The OpenMP runtime the compiled core links, as far as the fork hooks need it."""

    def __init__(self, kernels):
        self.gnu = False
        self.pause = None
        if not kernels.openmp_enabled():
            return
        try:
            import ctypes

            lib = ctypes.CDLL(kernels.__file__)  # symbols resolve through its dependencies
        except (ImportError, OSError):
            return
        # GNU's libgomp exports GOMP_*; LLVM's and Intel's runtimes export them too, and
        # __kmpc_* besides (and have their own fork handlers)
        self.gnu = hasattr(lib, "GOMP_parallel") and not hasattr(lib, "__kmpc_fork_call")
        if self.gnu and hasattr(lib, "omp_pause_resource_all"):  # OpenMP 5.0, GCC >= 9
            self.pause = lib.omp_pause_resource_all
            self.pause.argtypes = [ctypes.c_int]
            self.pause.restype = ctypes.c_int

    OMP_PAUSE_HARD = 2

    def release_pool(self):
        """Hand the calling thread's idle pool back (its threads exit); True if done."""
        if self.pause is None:
            return False
        return self.pause(self.OMP_PAUSE_HARD) == 0


def _before_fork():
    """Hand the forking thread's OpenMP pool back, and note (on the thread, which the
    child keeps) whether that worked."""
    if _local.serial:
        _local.released = False  # a dead pool (inherited): pausing it would wait for ever
        return
    try:
        _local.released = _openmp is None or not _openmp.gnu or _openmp.release_pool()
    except Exception:  # never let rnnfast break a fork
        _local.released = False


def _after_fork_in_child():
    global _lock
    _lock = threading.Lock()  # another thread may have held it when the process forked
    _host.clear()  # a pool's initializer may set OMP_NUM_THREADS, pin the child...
    if not _local.released:
        _local.serial = True  # this thread's pool is a dead one: parallel regions would hang


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


# -- BLAS ------------------------------------------------------------------------------


_BLAS_PACKAGE = "scipy_openblas32"  # the wheel scipy-openblas32: 32-bit integers, as c/blas.h
_BLAS_ROUTINES = ("scipy_sgemm_", "scipy_dgemm_", "scipy_sgemv_", "scipy_dgemv_")
_blas: Any = None  # the OpenBLAS the core calls (ctypes.CDLL), once _load_blas opened it


def _load_blas():
    """Open the OpenBLAS of the ``scipy-openblas32`` wheel; the addresses of its Fortran
    sgemm, dgemm, sgemv and dgemv, in the order ``_kernels._set_blas`` takes them.

    The package is found without importing it (its ``__init__`` reads its own metadata),
    and its library opened with ``OPENBLAS_NUM_THREADS=1`` set for the moment it loads
    (OpenBLAS reads it then, and starts no worker threads; the user's environment is
    restored afterwards, and NumPy's OpenBLAS, another library loaded before, is not
    affected).
    """
    global _blas
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec(_BLAS_PACKAGE)
    folder = os.path.join(spec.submodule_search_locations[0], "lib") if spec and spec.submodule_search_locations else ""
    names = sorted(n for n in os.listdir(folder) if n.startswith("libscipy_openblas")) if os.path.isdir(folder) else []
    if not names:
        raise ImportError(
            "rnnfast's compiled core calls the OpenBLAS of the scipy-openblas32 package, which is "
            "not installed: pip install scipy-openblas32"
        )
    had = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        lib = ctypes.CDLL(os.path.join(folder, names[0]))
    finally:
        if had is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = had
    lib.scipy_openblas_get_num_threads.restype = ctypes.c_int
    lib.scipy_openblas_get_num_threads.argtypes = []
    lib.scipy_openblas_set_num_threads.restype = None
    lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
    _blas = lib
    return [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _BLAS_ROUTINES]


def _blas_controllers():
    """The threadpoolctl controllers of the BLAS the core calls (:func:`_load_blas`): what
    the bench tables report (library, version, kernel, threads)."""
    global _controllers
    if _controllers is None:
        from threadpoolctl import ThreadpoolController

        load_kernels()
        path = os.path.realpath(_blas._name)
        blas = ThreadpoolController().lib_controllers
        _controllers = [c for c in blas if c.user_api == "blas" and os.path.realpath(c.filepath) == path]
    return _controllers


@contextmanager
def blas_single_threaded():
    """Make sure the BLAS rnnfast calls runs one thread, for the block and after it."""
    with _lock:
        if _blas.scipy_openblas_get_num_threads() > 1:
            _blas.scipy_openblas_set_num_threads(1)
    yield
