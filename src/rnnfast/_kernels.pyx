# The compiled core's Python face. The core itself is C, under c/ (its README.md is the
# map): the kernels per instruction set, the one dispatcher (c/isa.h) and the kernel
# entry with its two execution strategies (c/engine.h). This module selects the
# instruction set at import, hands the core its BLAS (_set_blas; _rowops hands it the partner
# thread of the few-row products, _use_partner), packs weights, checks what
# layers.py passes to rnn_forward, fills the entry's structs and releases the GIL for
# the call. The codes shared with C (c/enums.h) come through _kernels.pxd; the
# planning (strategy, blocks, chunk, team size) is rnnfast/_plan.py's.
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from cpython.pycapsule cimport PyCapsule_GetPointer
from cython cimport floating

import enum
import math
import os

import numpy as np

# the codes of c/enums.h at module level too: _kernels.RNN_ACT_TANH, RNN_ISA_AVX2, ...
for _codes in (rnn_activation, rnn_isa_level, rnn_strategy, rnn_dtype, rnn_packing,
               rnn_profile_part, rnn_status, rnn_precision, rnn_cpu_family):
    globals().update(_codes.__members__)
del _codes

#: The cells of the compiled core, one per line of the cell list c/cells.def.h, named by
#: it: rnn_cell.RNN_CELL_GRU == 1, ..., also at module level (_kernels.RNN_CELL_GRU).
rnn_cell = enum.IntEnum("rnn_cell", {"RNN_CELL_" + rnn_cell_name(<rnn_cell_t> i).decode("ascii"): i
                                     for i in range(RNN_CELL_COUNT)})
globals().update(rnn_cell.__members__)


def _set_blas(size_t sgemm, size_t dgemm, size_t sgemv, size_t dgemv):
    """Hand the core its BLAS: the addresses of the Fortran sgemm, dgemm, sgemv and dgemv
    of the OpenBLAS that rnnfast._threads.load_kernels opened (c/blas.h)."""
    if not (sgemm and dgemm and sgemv and dgemv):
        raise ValueError("a BLAS routine's address is null")
    rnn_blas_init(<rnn_sgemm_fn *> sgemm, <rnn_dgemm_fn *> dgemm, <rnn_sgemv_fn *> sgemv,
                  <rnn_dgemv_fn *> dgemv)


_partner = [None]  # the capsule _use_partner was given last


def _use_partner(capsule):
    """Hand the core the few-row products' partner thread (c/rowops.team.h's
    ``rnn_duo_run``, which ``rnnfast._rowops`` owns and hands over when imported: one
    partner per process), for the one-step calls a plan gives ``partner`` (c/engine.h);
    ``capsule``: a PyCapsule named ``rnnfast.partner_run``, or None (none: those calls
    run on the caller alone, with the same results). Returns the capsule before."""
    global rnn_engine_partner
    if capsule is None:
        rnn_engine_partner = NULL
    else:
        rnn_engine_partner = <rnn_partner_run> PyCapsule_GetPointer(capsule, b"rnnfast.partner_run")
    old, _partner[0] = _partner[0], capsule
    return old


#: Instruction-set names by level, from c/enums.h (RNN_ISA_AVX2 -> "avx2").
ISA_LEVELS = tuple(m.name[len("RNN_ISA_"):].lower()
                   for m in sorted(rnn_isa_level, key=int) if m != RNN_ISA_COUNT)


def _select_isa_from_env():
    """Pick the best supported instruction set, or the lower one RNNFAST_ISA asks for
    (baseline, avx2, avx512): a testing and debugging switch, read once at import."""
    want = os.environ.get("RNNFAST_ISA", "").strip().lower()
    if want in ("", "auto", "best"):
        return rnn_select_isa(-1)
    if want not in ISA_LEVELS:
        raise ImportError("RNNFAST_ISA=%r: expected one of %s or auto" % (want, ", ".join(ISA_LEVELS)))
    return rnn_select_isa(ISA_LEVELS.index(want))


_select_isa_from_env()


def isa():
    """The instruction set the kernels use: 'baseline', 'avx2' or 'avx512'."""
    return ISA_LEVELS[rnn_isa_level_now()]


def cpu_family():
    """The CPU family whose tuning the products use (c/isa.h): 'generic' or 'zen4'."""
    return rnn_cpu_family(rnn_cpu_family_now()).name[len("RNN_CPU_"):].lower()


def family_tunings():
    """Every CPU family's blocking of the product (c/isa.h ``rnn_tunings``), by name:
    ``{'generic': (kblock, mblock, prefetch), 'zen4': ...}``."""
    cdef int i
    return {rnn_cpu_family(i).name[len("RNN_CPU_"):].lower():
            (rnn_tunings[i].kblock, rnn_tunings[i].mblock, rnn_tunings[i].prefetch)
            for i in range(<int> RNN_CPU_FAMILY_COUNT)}


def product_tuning(long kblock=-1, long mblock=-1, int prefetch=-1, reset=False):
    """The blocking of the AVX-512 float product (c/kernels.h ``rnn_tuning``: K steps
    per block, rows per row block, prefetch of the next block 0/1), set per CPU family
    when the module is imported (c/isa.h ``rnn_tunings``); new values if given (-1:
    unchanged), or ``reset`` to the family's. The results do not depend on it: a
    benchmark and test hook. Returns ``(kblock, mblock, prefetch)``."""
    global rnn_tuning_now
    if reset:
        rnn_tuning_now = rnn_tunings[<int> rnn_cpu_family_now()]
    if kblock == 0 or mblock == 0 or kblock < -1 or mblock < -1 or prefetch < -1 or prefetch > 1:
        raise ValueError("kblock and mblock are positive, prefetch 0 or 1 (-1: unchanged)")
    if kblock > 0:
        rnn_tuning_now.kblock = kblock
    if mblock > 0:
        rnn_tuning_now.mblock = mblock
    if prefetch >= 0:
        rnn_tuning_now.prefetch = prefetch
    return rnn_tuning_now.kblock, rnn_tuning_now.mblock, rnn_tuning_now.prefetch


def best_isa():
    """The best instruction set this build and CPU support."""
    return ISA_LEVELS[rnn_isa_supported()]


def _check_cell(int cell):
    if not 0 <= cell < RNN_CELL_COUNT:
        raise ValueError("unknown cell code %d" % cell)


def cell_gates(int cell):
    """Gates per unit of kernel cell ``cell`` (an RNN_CELL_* code): GRU 3, LSTM 4,
    SimpleRNN 1 -- what the C gate math computes (the cell list, c/cells.def.h)."""
    _check_cell(cell)
    return rnn_cell_gates(<rnn_cell_t> cell)


def cell_states(int cell):
    """States of kernel cell ``cell``: 1 (h) or 2 (h, c) (c/cells.def.h)."""
    _check_cell(cell)
    return rnn_cell_states(<rnn_cell_t> cell)


def cell_packed(int cell):
    """Whether kernel cell ``cell``'s per-step product runs on packed weights in unit
    blocks (else its step makes its own products by BLAS) (c/cells.def.h)."""
    _check_cell(cell)
    return bool(rnn_cell_packed(<rnn_cell_t> cell))


def openmp_enabled():
    """True when the compiled core was built with OpenMP."""
    return bool(RNN_OPENMP_ENABLED)


def barrier_spins(int spins=-1):
    """The blocked strategy's wait for a phase to complete: spins before it sleeps
    (c/openmp.h); a new value if given. rnnfast._plan sets BARRIER_SPINS when imported."""
    global rnn_barrier_spins
    if spins >= 0:
        rnn_barrier_spins = spins
    return rnn_barrier_spins


def barrier_spin_time(int work_factor=-1, int max_us=-1):
    """The blocked strategy's wait for a phase, after barrier_spins(): it spins on for
    up to ``work_factor`` times the thread's own work in the phase, at most ``max_us``
    microseconds, before it sleeps (c/openmp.h); new values if given (-1: unchanged).
    Returns ``(work_factor, max_us)``. rnnfast._plan sets BARRIER_WORK_FACTOR and
    BARRIER_MAX_US when imported."""
    global rnn_barrier_work_factor, rnn_barrier_max_us
    if work_factor >= 0:
        rnn_barrier_work_factor = work_factor
    if max_us >= 0:
        rnn_barrier_max_us = max_us
    return rnn_barrier_work_factor, rnn_barrier_max_us


def steal_spins(int spins=-1):
    """The blocked strategy: spins a thread that has run its own tasks of a phase gives
    the others before it takes theirs over (c/openmp.h); a new value if given.
    rnnfast._plan sets STEAL_SPINS when imported."""
    global rnn_steal_spins
    if spins >= 0:
        rnn_steal_spins = spins
    return rnn_steal_spins


def team_backoff(bint reset=False):
    """The blocked strategy's backoff (c/openmp.h): ``(calls left on one thread, the
    next backoff's length)``; ``reset`` clears it first."""
    global rnn_backoff_left, rnn_backoff_len
    if reset:
        rnn_backoff_left, rnn_backoff_len = 0, 1
    return rnn_backoff_left, rnn_backoff_len


def team_last():
    """What the team of the last call run on several threads did (c/openmp.h), a test
    and benchmark hook: a dict with ``threads`` (0: none yet), ``keep_team``,
    ``backoff`` (the call started one), ``slept`` (phases its caller slept waiting
    for, past the partners' warm-up), ``slept_warm`` (... in their warm-up: no
    backoff), ``wait_us`` and ``own_us`` (the caller's waits to start and end its parallel
    regions, its time inside them), and for the blocked strategy, per thread of the
    team: ``ran`` (tasks), ``redo`` (tasks run again for a late partner), ``skipped``
    (phases complete when it arrived), ``arrive_us`` (its arrival after the call
    began; negative, with ``skipped``, for a kept team's partner that took no part in the
    call: the caller ran its part). Concurrent calls overwrite each other's."""
    cdef rnn_team_facts f = rnn_team_last
    cdef int n = min(f.nth, RNN_TEAM_LAST_MAX)
    return dict(threads=f.nth, keep_team=bool(f.keep_team), backoff=bool(f.backoff),
                slept=f.slept, slept_warm=f.slept_warm, wait_us=f.wait_ns / 1e3, own_us=f.own_ns / 1e3,
                ran=[f.ran[i] for i in range(n)], redo=[f.redo[i] for i in range(n)],
                skipped=[f.skipped[i] for i in range(n)],
                arrive_us=[f.arrive_ns[i] / 1e3 for i in range(n)])


def debug_delay(int tid=-1, int us=0, int every=1, bint inside=False, bint first=False):
    """Test hook: thread ``tid`` of the blocked strategy's team sleeps ``us``
    microseconds at every ``every``-th phase, before claiming its tasks (its tasks are
    then taken over by the others) or, with ``inside``, inside each task it claimed
    (the phase then waits for it); with ``first``, instead of every ``every``-th phase,
    only until it has run a task in the call (a partner slow to wake up).
    ``debug_delay()`` turns it off. Process-wide: for tests only."""
    global rnn_delay_tid, rnn_delay_us, rnn_delay_every, rnn_delay_where, rnn_delay_first
    if us < 0 or every < 1:
        raise ValueError("us must be >= 0 and every >= 1")
    rnn_delay_tid, rnn_delay_us, rnn_delay_every, rnn_delay_where = tid, us, every, 1 if inside else 0
    rnn_delay_first = first


def openmp_spins(on=None):
    """Whether the OpenMP runtime's idle threads spin (c/engine.h's ``rnn_omp_spins``:
    a kept team of two then runs on the OpenMP team, not with the partner thread);
    ``on``: set it first (rnnfast/_threads.py's ``load_kernels`` does, once)."""
    global rnn_omp_spins
    if on is not None:
        rnn_omp_spins = bool(on)
    return bool(rnn_omp_spins)


# -- where the time goes (c/profile.h) -------------------------------------------------

def profile(bint enable):
    """Start (from zero) or stop counting where the kernels' time goes; profile_times
    reads the counts. A benchmarking tool: counts from concurrent calls would mix."""
    global rnn_prof_on
    if enable:
        memset(rnn_prof, 0, RNN_PROF_SLOTS * RNN_PROF_PARTS * sizeof(double))
    rnn_prof_on = enable


def profile_times():
    """Thread-seconds since profile(True): ``projection`` (input GEMMs), ``product``
    (per-step recurrent products), ``gates`` (the rest of the steps: gate math, state
    copies, outputs) and ``wait`` (the blocked strategy's step barrier)."""
    cdef int i
    tot = [0.0] * RNN_PROF_PARTS
    for i in range(RNN_PROF_SLOTS * RNN_PROF_PARTS):
        tot[i % RNN_PROF_PARTS] += rnn_prof[i]
    return dict(projection=tot[RNN_PROF_PROJECTION], product=tot[RNN_PROF_PRODUCT],
                gates=tot[RNN_PROF_STEP] - tot[RNN_PROF_PRODUCT], wait=tot[RNN_PROF_WAIT])


# -- the kernels, by dtype and instruction set -----------------------------------------

cdef const rnn_kernels *_kernels_of(isa) except NULL:
    """The kernel table of instruction set ``isa`` (a name in ISA_LEVELS), or of the
    current one (None)."""
    cdef const rnn_kernels *t
    if isa is None:
        return rnn_isa_kernels(rnn_isa_level_now())
    if isa not in ISA_LEVELS:
        raise ValueError("unknown instruction set %r; known: %s" % (isa, ", ".join(ISA_LEVELS)))
    t = rnn_isa_kernels(ISA_LEVELS.index(isa))
    if t == NULL:
        raise ValueError("instruction set %r: not in this build or not on this CPU (best: %s)"
                         % (isa, best_isa()))
    return t


def _zeros_lines(shape, dt):
    """np.zeros on a cache-line (64-byte) boundary: the packed products load whole
    lines of their panels (an unaligned panel splits every load in two: B=1 products
    measured 1.7x slower), and threads write a layer's output in unit blocks (a line
    two blocks share would bounce between their cores)."""
    return _lines(shape, dt, np.zeros)


def _empty_lines(shape, dt):
    """:func:`_zeros_lines` left unset: for an output the kernel writes whole (the
    common call's, no mask), 0.3 us less at batch 1."""
    return _lines(shape, dt, np.empty)


cdef _lines(shape, dt, alloc):
    dt = np.dtype(dt)
    n = math.prod(shape if isinstance(shape, tuple) else (shape,)) * dt.itemsize
    buf = alloc(n + 64, np.uint8)
    # one constructor, not a slice, a view and a reshape (0.7 us at batch 1)
    return np.ndarray(shape, dt, buf, -(<size_t> _addr(buf)) % 64)


cdef inline void _pack(long K, long N, const floating *B, long ldb, floating *dst) noexcept nogil:
    if floating is float:
        rnn_pack_f(K, N, B, ldb, dst)
    else:
        rnn_pack_d(K, N, B, ldb, dst)


def activate(int kind, floating[::1] v, isa=None):
    """Apply activation ``kind`` (RNN_ACT_*) to ``v`` in place, exactly as the kernels of
    instruction set ``isa`` (default: the current one) do."""
    cdef const rnn_kernels *t = _kernels_of(isa)
    if kind < 0 or kind >= RNN_ACT_COUNT:
        raise ValueError("unknown activation code %d" % kind)
    if v.shape[0] == 0:
        return
    with nogil:
        if floating is float:
            t.f.activate(kind, &v[0], v.shape[0])
        else:
            t.d.activate(kind, &v[0], v.shape[0])


def packed_matmul(const floating[:, ::1] A, const floating[:, ::1] B, int repeat=1,
                  const floating[::1] bias=None, isa=None):
    """bias + A @ B through the packed product the recurrence uses (B packed here, once;
    the product run ``repeat`` times) on instruction set ``isa`` (default: the current
    one): a test and benchmark hook."""
    cdef const rnn_kernels *t = _kernels_of(isa)
    cdef long M = A.shape[0], K = A.shape[1], N = B.shape[1]
    cdef const floating *bp = NULL
    cdef int _rep
    if B.shape[0] != K:
        raise ValueError("shapes %s and %s do not multiply" % ((M, K), (K, N)))
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("bias of %d values for %d columns" % (bias.shape[0], N))
        if N > 0:
            bp = &bias[0]
    dt = np.float32 if floating is float else np.float64
    packed = _zeros_lines(rnn_packed_size(K, N), dt)
    out = np.zeros((M, N), dtype=dt)
    cdef floating[::1] P = packed
    cdef floating[:, ::1] C = out
    if M == 0 or N == 0:
        return out
    if K == 0:
        if bias is not None:
            out[:] = np.asarray(bias)
        return out
    with nogil:
        _pack(K, N, &B[0, 0], N, &P[0])
        for _rep in range(repeat):
            if floating is float:
                t.f.gemm_packed(M, N, K, &A[0, 0], K, &P[0], bp, &C[0, 0], N)
            else:
                t.d.gemm_packed(M, N, K, &A[0, 0], K, &P[0], bp, &C[0, 0], N)
    return out


def cell_step(int cell, int act, int ract,
              const floating[:, ::1] xp,            # IN  (nrows, G*H) the input projection
              const floating[:, ::1] gh,            # IN  (nrows, G*H) h U (ignored by cells that
                                                    #     make their own products)
              const floating[::1] bhn,              # IN  (H,) GRU reset-after's candidate bias
              floating[:, ::1] h,                   # IN/OUT (nrows, H) the state
              floating[:, ::1] c=None,              # IN/OUT (nrows, H) LSTM cell state
              const unsigned char[::1] mask=None,   # IN  (nrows,): 0 is a masked row
              const floating[:, ::1] U=None,        # IN  (H, G*H) a cell's own products' weights
              const floating[:, ::1] peep=None,     # IN  (3, H) LSTM peepholes i, f, o
              double clip=0.0, bint input_forget=False, isa=None):
    """One step of a cell's gate math (RNN_CELL_* ``cell``, RNN_ACT_* codes) for the rows
    of ``h``, through the kernels of instruction set ``isa`` (default: the current one),
    products given (``gh``; a cell that makes its own, GRU reset-before, takes the
    recurrent weights ``U``): a test hook (tests/test_isa.py). ``clip`` > 0 clips the
    gate pre-activations. Updates h (and c) in place."""
    cdef const rnn_kernels *t = _kernels_of(isa)
    cdef long nrows = h.shape[0], H = h.shape[1]
    cdef long G = cell_gates(cell)
    cdef rnn_cell_args_f af
    cdef rnn_cell_args_d ad
    if not (0 <= act < RNN_ACT_COUNT and 0 <= ract < RNN_ACT_COUNT):
        raise ValueError("unknown activation code %d or %d" % (act, ract))
    if (xp.shape[0] != nrows or gh.shape[0] != nrows or xp.shape[1] != G * H
            or gh.shape[1] != G * H or bhn.shape[0] != H):
        raise ValueError("shapes do not agree")
    if rnn_cell_states(<rnn_cell_t> cell) == 2 and (c is None or c.shape[0] != nrows or c.shape[1] != H):
        raise ValueError("this cell's step needs c of shape %s" % ((nrows, H),))
    if not rnn_cell_packed(<rnn_cell_t> cell) and (U is None or U.shape[0] != H or U.shape[1] != G * H):
        raise ValueError("this cell's step needs U of shape %s" % ((H, G * H),))
    if peep is not None and (peep.shape[0] != 3 or peep.shape[1] != H):
        raise ValueError("peepholes of shape %s, expected %s" % ((peep.shape[0], peep.shape[1]), (3, H)))
    if mask is not None and mask.shape[0] != nrows:
        raise ValueError("mask of %d rows for %d" % (mask.shape[0], nrows))
    if nrows == 0 or H == 0:
        return
    dt = np.float32 if floating is float else np.float64
    cdef floating[::1] tmp = np.zeros(4 * H, dt)
    cdef floating[::1] work = np.zeros(nrows * 4 * H, dt)
    if floating is float:
        af.nrows, af.H = nrows, H
        af.xp, af.ldxp, af.gh, af.ldgh, af.bhn = &xp[0, 0], G * H, &gh[0, 0], G * H, &bhn[0]
        af.peep, af.ldpeep = (&peep[0, 0] if peep is not None else NULL), H
        af.U, af.ldu = (&U[0, 0] if U is not None else NULL), G * H
        af.h, af.ldh = &h[0, 0], H
        af.c, af.ldc = (&c[0, 0] if c is not None else NULL), H
        af.valid = &mask[0] if mask is not None else NULL
        af.tmp, af.work, af.clip = &tmp[0], &work[0], <float> clip
        af.act, af.ract, af.input_forget = act, ract, input_forget
        af.q, af.qdir = NULL, 0
        with nogil:
            t.f.step[cell](&af)
    else:
        ad.nrows, ad.H = nrows, H
        ad.xp, ad.ldxp, ad.gh, ad.ldgh, ad.bhn = &xp[0, 0], G * H, &gh[0, 0], G * H, &bhn[0]
        ad.peep, ad.ldpeep = (&peep[0, 0] if peep is not None else NULL), H
        ad.U, ad.ldu = (&U[0, 0] if U is not None else NULL), G * H
        ad.h, ad.ldh = &h[0, 0], H
        ad.c, ad.ldc = (&c[0, 0] if c is not None else NULL), H
        ad.valid = &mask[0] if mask is not None else NULL
        ad.tmp, ad.work, ad.clip = &tmp[0], &work[0], clip
        ad.act, ad.ract, ad.input_forget = act, ract, input_forget
        ad.q, ad.qdir = NULL, 0
        with nogil:
            t.d.step[cell](&ad)


def packed_projection(dtype):
    """Whether the input projection of this dtype runs on packed weights (our kernel)
    rather than BLAS: the current instruction set's kernel table says (where that
    measured faster: float32 on AVX-512; see bench/README.md)."""
    cdef const rnn_kernels *t = _kernels_of(None)
    return bool(t.f.packed_projection if np.dtype(dtype) == np.float32 else t.d.packed_projection)


def pack_blocks(const floating[:, :, ::1] M, long G, long ncb):
    """Weights M (ndir, K, G*H) -- the recurrent U, or the input W -- in the packed form
    the products read (c/layout.h): per direction, unit block after unit block (the
    column layout of layers.py), each block cut into panels. Done once per layer."""
    cdef long ndir = M.shape[0], K = M.shape[1], GH = M.shape[2]
    cdef long H = GH // G
    cdef long size = rnn_packed_offset(K, H, G, ncb, ncb)
    cdef long d, cb, j0, j1
    packed = _zeros_lines((ndir, size), np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] P = packed
    if size == 0:
        return packed
    with nogil:
        for d in range(ndir):
            for cb in range(ncb):
                j0 = rnn_block_start(H, ncb, cb)
                j1 = rnn_block_start(H, ncb, cb + 1)
                _pack(K, G * (j1 - j0), &M[d, 0, G * j0], GH, &P[d, rnn_packed_offset(K, H, G, ncb, cb)])
    return packed


cdef void _pack_gather(long K, long N, const char *src, Py_ssize_t sk, Py_ssize_t sj, const long *cols,
                       floating *dst) noexcept nogil:
    """dst = the packed form (rnn_pack's) of the K x N matrix whose (k, c) is the value at
    src + k * sk + cols[c] * sj (byte strides, any sign; values read by memcpy, so a
    source need not be aligned). Down each column where the source's rows lie closer
    than its columns (a transposed matrix: a column is contiguous), else row by row."""
    cdef long p, c, k, nc, npan = (N + RNN_PANEL_COLS - 1) // RNN_PANEL_COLS
    cdef floating *pd
    cdef const char *s
    cdef bint down = (sk if sk >= 0 else -sk) <= (sj if sj >= 0 else -sj)
    for p in range(npan):
        nc = N - p * RNN_PANEL_COLS
        if nc > RNN_PANEL_COLS:
            nc = RNN_PANEL_COLS
        pd = dst + p * K * RNN_PANEL_COLS
        if down:
            for c in range(nc):
                s = src + cols[p * RNN_PANEL_COLS + c] * sj
                for k in range(K):
                    memcpy(&pd[k * RNN_PANEL_COLS + c], s + k * sk, sizeof(floating))
        else:
            for k in range(K):
                s = src + k * sk
                for c in range(nc):
                    memcpy(&pd[k * RNN_PANEL_COLS + c], s + cols[p * RNN_PANEL_COLS + c] * sj, sizeof(floating))


cdef long _block_units(long GH, long G, long ncb) except -1:
    """H, the units of GH = G*H weight columns of G gates in ncb unit blocks; ValueError
    where the columns do not split so."""
    if G < 1 or ncb < 1 or GH % G:
        raise ValueError("%d columns for %d gates in %d blocks" % (GH, G, ncb))
    return GH // G


def packed_blocks_size(long K, long GH, long G, long ncb):
    """Values per direction in :func:`pack_blocks`'s packed form of (K, GH) weights."""
    return rnn_packed_offset(K, _block_units(GH, G, ncb), G, ncb, ncb)


def pack_columns(const floating[:, :, :] M, const long[::1] cols, long G, long ncb, out=None):
    """The columns ``cols`` of M (ndir, K, C), in :func:`pack_blocks`'s packed form:
    equal to ``pack_blocks(np.ascontiguousarray(M[:, :, cols]), G, ncb)``, made without
    that copy. M may have any strides and need not be aligned: a transposed view of the
    weights as a file stores them (ONNX's (G*H, I) per direction) is packed straight
    from the file's bytes, each value read once. ``cols`` (G*H,): the source column of
    each packed column, in the unit-block column layout of layers.py (gate order and
    unit blocks both in it). Values are copied, never computed: the packed bits are
    the source's. ``out``: an (ndir, size) array of zeros of M's dtype to write into
    (a direction's row of a layer's packed weights), returned; else a new one."""
    cdef long ndir = M.shape[0], K = M.shape[1], C = M.shape[2], GH = cols.shape[0]
    cdef long H, size, d, cb, j0, n, i
    H = _block_units(GH, G, ncb)
    for i in range(GH):
        if cols[i] < 0 or cols[i] >= C:
            raise ValueError("column %d of %d columns" % (cols[i], C))
    size = rnn_packed_offset(K, H, G, ncb, ncb)
    packed = _zeros_lines((ndir, size), np.float32 if floating is float else np.float64) if out is None else out
    cdef floating[:, ::1] P = packed
    if P.shape[0] != ndir or P.shape[1] != size:
        raise ValueError("out of shape %s, expected %s" % ((P.shape[0], P.shape[1]), (ndir, size)))
    if size == 0 or ndir == 0:
        return packed
    cdef const char *base = <const char *> &M[0, 0, 0]
    cdef Py_ssize_t sd = M.strides[0], sk = M.strides[1], sj = M.strides[2]
    with nogil:
        for d in range(ndir):
            for cb in range(ncb):
                j0 = G * rnn_block_start(H, ncb, cb)
                n = G * rnn_block_start(H, ncb, cb + 1) - j0
                _pack_gather(K, n, base + d * sd, sk, sj, &cols[j0], &P[d, rnn_packed_offset(K, H, G, ncb, cb)])
    return packed


def unpack_blocks(const floating[:, ::1] P, long K, long GH, long G, long ncb):
    """The weights (ndir, K, GH) that :func:`pack_blocks` packed into ``P`` (ndir, its
    size), back in their column layout: a copy, bitwise the weights that were packed
    (the canonical weights of a layer that keeps only its packed ones, on demand)."""
    cdef long ndir = P.shape[0], H, d, cb, j0, n, p, k, nc, off
    H = _block_units(GH, G, ncb)
    if P.shape[1] != rnn_packed_offset(K, H, G, ncb, ncb):
        raise ValueError("packed weights of %d values, expected %d"
                         % (P.shape[1], rnn_packed_offset(K, H, G, ncb, ncb)))
    out = np.empty((ndir, K, GH), np.float32 if floating is float else np.float64)
    cdef floating[:, :, ::1] M = out
    if ndir == 0 or K == 0 or GH == 0:
        return out
    with nogil:
        for d in range(ndir):
            for cb in range(ncb):
                j0 = G * rnn_block_start(H, ncb, cb)
                n = G * rnn_block_start(H, ncb, cb + 1) - j0
                off = rnn_packed_offset(K, H, G, ncb, cb)
                p = 0
                while p < n:
                    nc = n - p if n - p < RNN_PANEL_COLS else RNN_PANEL_COLS
                    for k in range(K):
                        memcpy(&M[d, k, j0 + p], &P[d, off + p * K + k * RNN_PANEL_COLS], nc * sizeof(floating))
                    p += RNN_PANEL_COLS
    return out


# -- reduced precision (c/quant.h) -----------------------------------------------------

def quant_isas():
    """The reduced-precision kernel sets this build and CPU run, lowest first
    ('baseline', 'avx2', 'avx512_vnni', 'avx512_bf16')."""
    cdef int i
    return tuple(rnn_qisas[i].name.decode() for i in range(RNN_NQISAS) if rnn_qisas[i].cpu_has())


def quant_isa():
    """The reduced-precision kernel set in use (chosen with the instruction set)."""
    return rnn_qnow.name.decode()


cdef const rnn_qkernels *_qkernels_of(isa) except NULL:
    cdef const rnn_qkernels *t
    if isa is None:
        return rnn_qnow
    t = rnn_quant_kernels(str(isa).encode())
    if t == NULL:
        raise ValueError("reduced-precision kernel set %r: not in this build or not on this CPU "
                         "(these are: %s)" % (isa, ", ".join(quant_isas())))
    return t


def qpad(int prec, long K):
    """K padded as the packed reduced-precision blocks pad it (c/quant.h)."""
    return rnn_qpad(prec, K)


def qgroups(long K, long kg):
    """Scales per column of a K-row int8 block in groups of ``kg`` rows (0: one)."""
    return rnn_qgroups(rnn_qpad(RNN_PREC_INT8, K), kg)


def qmatmul(int prec, const float[:, ::1] A, data, long N, scale=None, comp=None,
            const float[::1] bias=None, isa=None, int repeat=1, long kg=0):
    """The reduced-precision product (c/quant.h) of A (M x K) and one packed K x N block
    (rnnfast._quant.pack_block: int8 ``data`` with its ``scale`` and ``comp``, per column
    or, ``kg`` > 0, (ng, N) per group of ``kg`` rows of K, or bf16 bits), on kernel set
    ``isa`` (default: the current one), run ``repeat`` times: a test and benchmark hook."""
    cdef const rnn_qkernels *t = _qkernels_of(isa)
    cdef long M = A.shape[0], K = A.shape[1], Kp = rnn_qpad(prec, K)
    cdef long ng = rnn_qgroups(Kp, kg)
    cdef long need = rnn_packed_size(Kp, N)
    cdef const float *bp = NULL
    cdef const float *sp = NULL
    cdef const int *cp = NULL
    cdef const signed char *d8 = NULL
    cdef const unsigned short *d16 = NULL
    cdef int _rep
    if prec not in (RNN_PREC_INT8, RNN_PREC_BF16):
        raise ValueError("precision code %d is not a reduced precision" % prec)
    data = np.ascontiguousarray(data, np.int8 if prec == RNN_PREC_INT8 else np.uint16)
    if data.ndim != 1 or data.shape[0] != need:
        raise ValueError("packed block of %s values, expected %d" % (data.shape, need))
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("bias of %d values for %d columns" % (bias.shape[0], N))
        if N > 0:
            bp = &bias[0]
    cdef const signed char[::1] v8
    cdef const unsigned short[::1] v16
    cdef const float[::1] vs
    cdef const int[::1] vc
    if prec == RNN_PREC_INT8:
        _check_groups(kg)
        vs = np.ascontiguousarray(scale, np.float32).reshape(-1)
        vc = np.ascontiguousarray(comp, np.int32).reshape(-1)
        if vs.shape[0] != ng * N or vc.shape[0] != ng * N:
            raise ValueError("int8 needs scale and comp of %d values" % (ng * N))
        if need > 0:
            v8 = data
            d8 = &v8[0]
        if N > 0:
            sp, cp = &vs[0], &vc[0]
    elif need > 0:
        v16 = data
        d16 = &v16[0]
    out = np.zeros((M, N), np.float32)
    cdef float[:, ::1] C = out
    if M == 0 or N == 0 or K == 0:
        if bias is not None and K == 0:
            out[:] = np.asarray(bias)
        return out
    with nogil:
        for _rep in range(repeat):
            if prec == RNN_PREC_INT8 and kg > 0:
                t.i8g(M, N, K, &A[0, 0], K, d8, sp, cp, N, kg, bp, &C[0, 0], N)
            elif prec == RNN_PREC_INT8:
                t.i8(M, N, K, &A[0, 0], K, d8, sp, cp, bp, &C[0, 0], N)
            else:
                t.bf16(M, N, K, &A[0, 0], K, d16, bp, &C[0, 0], N)
    return out


cdef void _check_groups(long kg) except *:
    """An int8 group size (rows of K per scale) the kernels take: 0 (one scale per
    column), or a multiple of 4 up to 512."""
    if kg < 0 or kg % 4 or kg > 512:
        raise ValueError("int8 groups of %d rows: a multiple of 4 up to 512 expected (0: per column)" % kg)


cdef const void *_addr(a) except NULL:
    """The address of a C-contiguous array's data, through the buffer protocol (what
    ``a.ctypes.data`` gives, without building a ctypes object, ~10 us each: three per
    int8 matrix made int8's fixed cost per call; ``__array_interface__`` builds a dict,
    ~3 us). The caller keeps ``a`` alive."""
    cdef Py_buffer view
    cdef const void *p
    PyObject_GetBuffer(a, &view, PyBUF_C_CONTIGUOUS)
    p = view.buf
    PyBuffer_Release(&view)
    return p


cdef void _qmat_fill(rnn_qmat *m, mat, int prec, long ndir, long per_dir, long ncols, long K) except *:
    """Point m at one matrix of a layer's reduced-precision weights (``mat``: data
    (ndir, per_dir), for int8 scale and comp (ndir, ncols), or (ndir, ng, ncols) in groups
    of ``kg`` rows of its K rows, and kg), after checking the shapes the C core relies on."""
    data, scale, comp, kg = mat
    want = np.int8 if prec == RNN_PREC_INT8 else np.uint16
    if (data.dtype != want or data.shape != (ndir, per_dir) or not data.flags.c_contiguous):
        raise ValueError("reduced-precision weights of shape %s (%s), expected %s (%s)"
                         % (data.shape, data.dtype, (ndir, per_dir), np.dtype(want)))
    m.data = _addr(data)
    m.per_dir, m.ncols = per_dir, ncols
    m.scale, m.comp, m.kg, m.ng = NULL, NULL, 0, 1
    if prec == RNN_PREC_INT8:
        _check_groups(kg)
        m.kg, m.ng = kg, rnn_qgroups(rnn_qpad(prec, K), kg)
        want = tuple([ndir, ncols] if kg == 0 else [ndir, m.ng, ncols])
        if (scale.dtype != np.float32 or comp.dtype != np.int32 or scale.shape != want
                or comp.shape != want or not scale.flags.c_contiguous
                or not comp.flags.c_contiguous):
            raise ValueError("int8 scales and compensations must be %s" % (want,))
        m.scale = <const float *> _addr(scale)
        m.comp = <const int *> _addr(comp)


cdef void _qweights_fill(rnn_qweights *qw, q, int cell, long ndir, long I, long H, long G, long ncb,
                         long Ho, long P) except *:
    """Point qw at a layer's reduced-precision weights ``q`` (rnnfast._quant.LayerWeights)
    for ``ndir`` directions of I inputs, H units of G gates in ncb unit blocks, Ho outputs
    and a projection of P columns (0: none), after checking what the C core relies on."""
    if q.prec not in (RNN_PREC_INT8, RNN_PREC_BF16):
        raise ValueError("reduced-precision weights are for float32 layers, in bf16 or int8")
    qw.prec = q.prec
    memset(&qw.W, 0, sizeof(rnn_qmat))
    if q.W is not None:         # else the input projection runs in float32
        _qmat_fill(&qw.W, q.W, q.prec, ndir, rnn_packed_offset(rnn_qpad(q.prec, I), H, G, ncb, ncb), G * H, I)
    if not rnn_cell_packed(<rnn_cell_t> cell):  # GRU reset-before: [z r] and [h] blocks
        _qmat_fill(&qw.U, q.U, q.prec, ndir, rnn_packed_size(rnn_qpad(q.prec, Ho), 2 * H)
                   + rnn_packed_size(rnn_qpad(q.prec, H), H), G * H, Ho)
    else:
        _qmat_fill(&qw.U, q.U, q.prec, ndir, rnn_packed_offset(rnn_qpad(q.prec, Ho), H, G, ncb, ncb), G * H, Ho)
    memset(&qw.Wr, 0, sizeof(rnn_qmat))
    if P > 0:
        _qmat_fill(&qw.Wr, q.Wr, q.prec, ndir, rnn_packed_size(rnn_qpad(q.prec, H), P), P, H)
    elif q.Wr is not None:
        raise ValueError("projection weights for a layer without a projection")


# -- the kernel entry (c/engine.h) -----------------------------------------------------

def rnn_forward(int cell, int act, int ract,
                const floating[:, ::1] x,           # IN  (T*B, I), row t*B + b (b*T + t: batch_first)
                long T, long B,
                const floating[:, :, ::1] W,        # IN  (ndir, I, G*H)
                const floating[:, ::1] Wp,          # IN  W packed (pack_blocks), or (ndir, 0)
                const floating[:, ::1] bx,          # IN  (ndir, G*H)
                const floating[:, :, ::1] U,        # IN  (ndir, Ho, G*H)
                const floating[:, ::1] Up,          # IN  U packed (pack_blocks), or (ndir, 0)
                const floating[:, ::1] bhn,         # IN  (ndir, H)
                const floating[:, :, ::1] Wr,       # IN  (ndir, H, P), or (ndir, 0, 0)
                const unsigned char[:, ::1] mask,   # IN  (T, B), or (0, 0) for none
                floating[:, ::1] out,               # OUT (T*B, ndir*Ho), rows as x's, or (0, 0)
                floating[:, :, ::1] h,              # IN/OUT (ndir, B, Ho): initial -> final state
                floating[:, :, ::1] c,              # IN/OUT (ndir, B, H): LSTM cell state, else (0, 0, 0)
                *, bint batch_first, bint zero_output, bint reverse_first, plan,
                const floating[:, :, ::1] peep=None,  # IN  (ndir, 3, H) LSTM peepholes i, f, o
                double clip=0.0, bint input_forget=False,
                const long[::1] active=None,        # IN  (T,) right padding: rows valid at step t
                const long[::1] rows=None,          # IN  (B,) with active: x's and out's row of each
                q=None):
    """Run one recurrent layer over the whole sequence (c/engine.h says how).

    ``cell`` is an RNN_CELL_* code, ``act`` and ``ract`` RNN_ACT_* codes. Direction 0
    runs forward (backward when ``reverse_first``), direction 1 always backward;
    outputs stay aligned with input time. The gate columns of W, bx and U are laid out
    in ``plan.unit_blocks`` unit blocks (layers.py). ``batch_first``: x and out are
    batch-major, (B, T, .) flattened, so the caller need not transpose. ``plan`` (a
    rnnfast._plan.Plan) chooses the strategy, the blocks, the chunk and the team.
    ``active`` (right-padded batches whose rows are sorted by length, longest first;
    the mask must say the same): the rows valid at step t are the first ``active[t]``;
    the rest drop out of the step's work, with the same results; ``out`` must then come
    zero-filled (the zero outputs of the steps where a row does not step are not
    written: layers.RNNLayer allocates it with zeros). ``rows`` (with
    ``active``, where the input projection runs on packed weights): x and out stay
    in the caller's row order, sorted row b being the caller's row ``rows[b]`` (the
    states, the mask and ``active`` are in sorted order). ``q``: reduced-precision
    weights (rnnfast._quant.LayerWeights: ``prec`` and the packed W, U and Wr of
    c/quant.h), run in place of the float ones (float32 only). Shapes are checked by
    the caller (layers.RNNLayer), which is the only intended user; this checks what
    the C core relies on.
    """
    cdef rnn_qweights qw
    cdef rnn_shape shape
    cdef rnn_plan p
    cdef rnn_weights w
    cdef rnn_buffers io
    cdef int err
    cdef long ndir = W.shape[0], GH = W.shape[2], H = bhn.shape[1]
    cdef long G, Ho = U.shape[1], ncb = plan.unit_blocks
    cdef bint has_proj = Wr.shape[1] > 0
    # the cells whose product runs on packed weights (the rest call BLAS)
    cdef bint packed

    G = cell_gates(cell)
    packed = rnn_cell_packed(<rnn_cell_t> cell) and not has_proj
    if not (0 <= act < RNN_ACT_COUNT and 0 <= ract < RNN_ACT_COUNT):
        raise ValueError("unknown activation code %d or %d" % (act, ract))
    if H < 1 or GH != G * H or ndir not in (1, 2) or ncb < 1:
        raise ValueError("weights of shape %s for %d units of %d gates in %d blocks"
                         % ((ndir, W.shape[1], GH), H, G, ncb))
    if plan.strategy == RNN_STRATEGY_BLOCKED and not packed:
        raise ValueError("the blocked strategy does not run this cell")
    if Wp.shape[1] > 0 and (Wp.shape[0] != ndir or Wp.shape[1] != rnn_packed_offset(W.shape[1], H, G, ncb, ncb)):
        raise ValueError("packed input weights of shape %s, expected %s"
                         % ((Wp.shape[0], Wp.shape[1]), (ndir, rnn_packed_offset(W.shape[1], H, G, ncb, ncb))))
    if q is not None:
        if W.itemsize != sizeof(float):
            raise ValueError("reduced-precision weights are for float32 layers, in bf16 or int8")
        _qweights_fill(&qw, q, cell, ndir, W.shape[1], H, G, ncb, Ho, Wr.shape[2] if has_proj else 0)
    elif packed and (Up.shape[0] != ndir or Up.shape[1] != rnn_packed_offset(Ho, H, G, ncb, ncb)):
        raise ValueError("packed recurrent weights of shape %s, expected %s"
                         % ((Up.shape[0], Up.shape[1]), (ndir, rnn_packed_offset(Ho, H, G, ncb, ncb))))
    if peep is not None and (peep.shape[0] != ndir or peep.shape[1] != 3 or peep.shape[2] != H):
        raise ValueError("peepholes of shape %s, expected %s"
                         % ((peep.shape[0], peep.shape[1], peep.shape[2]), (ndir, 3, H)))
    if not clip >= 0:
        raise ValueError("clip must be >= 0 (0: none), got %r" % clip)
    if active is not None and active.shape[0] != T:
        raise ValueError("active rows for %d steps, expected %d" % (active.shape[0], T))
    if rows is not None and (active is None or rows.shape[0] != B
                             or not np.array_equal(np.sort(rows), np.arange(B))):
        raise ValueError("rows must be a permutation of the %d batch rows, with active" % B)
    if T == 0 or B == 0:
        return

    shape.dtype = RNN_FLOAT32 if floating is float else RNN_FLOAT64
    shape.cell = <rnn_cell_t> cell
    shape.act = <rnn_activation> act
    shape.ract = <rnn_activation> ract
    shape.T, shape.B, shape.In, shape.H, shape.G = T, B, W.shape[1], H, G
    shape.Ho, shape.P = Ho, Wr.shape[2]
    shape.ndir = <int> ndir
    shape.reverse_first, shape.bfirst, shape.zero_output = reverse_first, batch_first, zero_output
    shape.clip, shape.input_forget = clip, input_forget

    p.strategy = <rnn_strategy> <int> plan.strategy
    p.ncb, p.bb, p.chunk = ncb, plan.batch_rows, plan.chunk
    p.proj_min_rows, p.proj_max_tasks = plan.proj_min_rows, plan.proj_max_tasks
    p.num_threads = plan.num_threads
    p.keep_team = plan.keep_team
    p.partner = plan.partner

    w.W, w.bx, w.U, w.bhn = &W[0, 0, 0], &bx[0, 0], &U[0, 0, 0], &bhn[0, 0]
    w.Wp = &Wp[0, 0] if Wp.shape[1] > 0 else NULL
    w.Up = &Up[0, 0] if packed else NULL
    w.Wr = &Wr[0, 0, 0] if has_proj else NULL
    w.peep = &peep[0, 0, 0] if peep is not None else NULL
    w.q = &qw if q is not None else NULL

    io.x, io.h = &x[0, 0], &h[0, 0, 0]
    io.mask = &mask[0, 0] if mask.shape[0] > 0 else NULL
    io.out = &out[0, 0] if out.shape[0] > 0 else NULL
    io.c = &c[0, 0, 0] if rnn_cell_states(<rnn_cell_t> cell) == 2 else NULL
    io.active = &active[0] if active is not None and T > 0 else NULL
    io.rows = &rows[0] if rows is not None and B > 0 else NULL

    with nogil:
        err = rnn_layer_forward(&shape, &p, &w, &io)
    if err == RNN_ERR_NOMEM:
        raise MemoryError("rnnfast: out of memory for the recurrent kernel's scratch")
    if err == RNN_ERR_ARGS:
        raise ValueError("rows is for a cell with packed products and float input weights")


cdef type _nd = np.ndarray
cdef PyTypeObject *_ndarray = <PyTypeObject *> _nd
cdef object _f32 = np.dtype(np.float32), _f64 = np.dtype(np.float64)  # (NumPy's own descriptors)
cdef PyObject *_F32 = <PyObject *> _f32
cdef PyObject *_F64 = <PyObject *> _f64


def packed_rows(A,                                 # IN  (M, K)
                Bp,                                # IN  (K, N) packed: pack_blocks(B[None], 1, 1)[0]
                bias,                              # IN  (N,), or (0,) for none
                C,                                 # OUT (M, N)
                int act=-1, int num_threads=1,
                addend=None):                      # IN  (N,), or None
    """C = act(bias + A @ B), or act((bias + A @ B) + addend) with an ``addend``: added
    to each row's rounded sums, as NumPy's add of it afterwards gives them (an ONNX
    MatMul's bias Add). Each row on its own: a row's values depend on that row only (one
    chain of multiply-adds per element, the activation applied row by row), never on M,
    on the other rows nor on the thread count -- the dense product of the streaming
    path (rnnfast/stream.py) and of rnnfast._products. ``act``: an RNN_ACT_* code, or
    -1 for none (a softmax: rnnfast._products.dense). Rows split among ``num_threads``
    threads at most (c/openmp.h's backoff applies). GIL released. The arrays float32 or
    float64, one dtype, C-contiguous: float32 / float64 ndarrays are read through their
    fields (c/ndarray.h; a typed memoryview each cost more than a small product),
    anything else through typed memoryviews, the same call."""
    cdef PyObject *dt = NULL
    cdef const rnnfast_ndarray *ad = NULL
    cdef rnnfast_rows_operands o
    cdef rnn_products pr
    if type(A) is _nd:
        dt = (<const rnnfast_ndarray *> <PyObject *> A).descr
    if addend is not None and dt != NULL:
        ad = rnnfast_array(<PyObject *> addend, _ndarray, dt, 1, RNNFAST_C_CONTIGUOUS)
    if ((dt == _F32 or dt == _F64) and -1 <= act < RNN_ACT_COUNT and (addend is None or ad != NULL)
            and rnnfast_rows_operands_of(<PyObject *> A, <PyObject *> Bp, <PyObject *> bias, <PyObject *> C,
                                         _ndarray, dt, &o)
            and (ad == NULL or ad.dimensions[0] == o.N)):
        memset(&pr, 0, sizeof(pr))
        pr.dtype = RNN_FLOAT32 if dt == _F32 else RNN_FLOAT64
        pr.G1, pr.G2, pr.M, pr.N, pr.K = 1, 1, o.M, o.N, o.K
        pr.A, pr.lda = o.A, o.K
        pr.Bp = o.Bp
        pr.bias = o.bias
        pr.addend = ad.data if ad != NULL else NULL
        pr.act = act
        pr.C, pr.ldc = o.C, o.N
        _run_products(&pr, num_threads)
        return
    _packed_rows_views(A, Bp, bias, C, act, num_threads, addend)  # (and its errors)


def _packed_rows_views(const floating[:, ::1] A, const floating[::1] Bp, const floating[::1] bias,
                       floating[:, ::1] C, int act=-1, int num_threads=1, const floating[::1] addend=None):
    """:func:`packed_rows` on typed memoryviews."""
    cdef long M = A.shape[0], K = A.shape[1], N = C.shape[1]
    cdef rnn_products pr
    if (C.shape[0] != M or Bp.shape[0] != rnn_packed_size(K, N) or bias.shape[0] not in (0, N)
            or (addend is not None and addend.shape[0] != N)):
        raise ValueError("packed_rows: A %s, packed B of %d values, bias %d, addend %s, C %s"
                         % ((M, K), Bp.shape[0], bias.shape[0], None if addend is None else addend.shape[0],
                            (C.shape[0], N)))
    if not -1 <= act < RNN_ACT_COUNT:
        raise ValueError("unknown activation code %d" % act)
    if K == 0:
        raise ValueError("packed_rows: A has no columns")
    if M == 0 or N == 0:
        return
    memset(&pr, 0, sizeof(pr))
    pr.dtype = RNN_FLOAT32 if floating is float else RNN_FLOAT64
    pr.G1, pr.G2, pr.M, pr.N, pr.K = 1, 1, M, N, K
    pr.A, pr.lda = &A[0, 0], K
    pr.Bp = &Bp[0]
    pr.bias = &bias[0] if bias.shape[0] > 0 else NULL
    pr.addend = &addend[0] if addend is not None else NULL
    pr.act = act
    pr.C, pr.ldc = &C[0, 0], N
    _run_products(&pr, num_threads)


def products(const floating[:, :, :, :] A,          # IN  (G1, G2, M, K), rows contiguous
             const floating[:, :, :, :] B,          # IN  (G1 or 1, G2 or 1, K, N), any strides
             floating[:, :, :, :] C,                # OUT (G1, G2, M, N), rows contiguous
             const floating[::1] bias=None,         # IN  (N,), or None
             int act=-1, int num_threads=1):
    """C[g1, g2] = act(bias + A[g1, g2] @ B[g1, g2]) on the packed product (each B packed
    once, here), every row on its own as in packed_rows: the results do not depend on
    the thread count. A B of size 1 on a batch axis serves every product along it.
    Strided views are read in place (attention's heads). GIL released."""
    cdef Py_ssize_t isz = sizeof(floating)
    cdef long G1 = A.shape[0], G2 = A.shape[1], M = A.shape[2], K = A.shape[3], N = B.shape[3]
    cdef rnn_products pr
    if (B.shape[0] not in (1, G1) or B.shape[1] not in (1, G2) or B.shape[2] != K
            or C.shape[0] != G1 or C.shape[1] != G2 or C.shape[2] != M or C.shape[3] != N
            or (bias is not None and bias.shape[0] != N)):
        raise ValueError("products: A %s, B %s, C %s do not match"
                         % ([A.shape[i] for i in range(4)], [B.shape[i] for i in range(4)],
                            [C.shape[i] for i in range(4)]))
    if not -1 <= act < RNN_ACT_COUNT:
        raise ValueError("unknown activation code %d" % act)
    if G1 == 0 or G2 == 0 or M == 0 or N == 0:
        return
    if K == 0:
        raise ValueError("products: A has no columns")
    if (A.strides[3] != isz and K > 1) or (C.strides[3] != isz and N > 1):
        raise ValueError("products: the rows of A and C must be contiguous")
    memset(&pr, 0, sizeof(pr))
    pr.dtype = RNN_FLOAT32 if floating is float else RNN_FLOAT64
    pr.G1, pr.G2, pr.M, pr.N, pr.K = G1, G2, M, N, K
    pr.A = &A[0, 0, 0, 0]
    pr.sa1, pr.sa2, pr.lda = A.strides[0] // isz, A.strides[1] // isz, A.strides[2] // isz
    pr.B = &B[0, 0, 0, 0]
    pr.sb1 = B.strides[0] // isz if B.shape[0] > 1 else 0
    pr.sb2 = B.strides[1] // isz if B.shape[1] > 1 else 0
    pr.ldb, pr.cb = B.strides[2] // isz, B.strides[3] // isz
    pr.bias = &bias[0] if bias is not None else NULL
    pr.act = act
    pr.C = &C[0, 0, 0, 0]
    pr.sc1, pr.sc2, pr.ldc = C.strides[0] // isz, C.strides[1] // isz, C.strides[2] // isz
    _run_products(&pr, num_threads)


cdef int _run_products(const rnn_products *pr, int num_threads) except -1:
    cdef int err
    with nogil:
        err = rnn_run_products(pr, num_threads)
    if err == RNN_ERR_NOMEM:
        raise MemoryError("rnnfast: out of memory for a product's packed weights")
    if err != RNN_OK:
        raise ValueError("rnnfast: a product the kernel cannot take (status %d)" % err)
    return 0


cdef class StepEntry:
    """``rnn_forward`` of one unidirectional layer with its weights bound once: the
    streaming step path's entry (rnnfast/stream.py), which calls it with a few small
    arrays per step, and of ``RNNLayer.forward``'s common call. The weights (and ``q``,
    reduced-precision ones, as ``rnn_forward`` takes them) are checked here, once, by
    ``rnn_forward`` itself (a call of no steps); each call checks that its arrays are C-contiguous, writable where
    written, and exactly the sizes the shapes say, then runs the engine without the GIL.
    """
    cdef rnn_shape shape
    cdef rnn_weights w
    cdef rnn_qweights qw
    cdef object keep
    cdef Py_ssize_t item
    cdef bint with_c
    cdef long proj_min_rows, proj_max_tasks

    def __init__(self, int cell, int act, int ract, W, Wp, bx, U, Up, bhn, Wr, plan,
                 peep=None, double clip=0.0, bint input_forget=False, q=None):
        dt = W.dtype
        if W.shape[0] != 1:
            raise ValueError("StepEntry runs one direction")
        H, Ho, I = bhn.shape[1], U.shape[1], W.shape[1]
        rnn_forward(cell, act, ract, np.zeros((0, I), dt), 0, 1, W, Wp, bx, U, Up, bhn, Wr,
                    np.zeros((0, 0), np.uint8), np.zeros((0, 0), dt), np.zeros((1, 1, Ho), dt),
                    np.zeros((1, 1, H), dt) if rnn_cell_states(<rnn_cell_t> cell) == 2 else np.zeros((0, 0, 0), dt),
                    batch_first=False, zero_output=False, reverse_first=False, plan=plan,
                    peep=peep, clip=clip, input_forget=input_forget, q=q)
        self.keep = (W, Wp, bx, U, Up, bhn, Wr, peep, q)
        self.proj_min_rows, self.proj_max_tasks = plan.proj_min_rows, plan.proj_max_tasks
        self.item = dt.itemsize
        self.shape.dtype = RNN_FLOAT32 if dt == np.float32 else RNN_FLOAT64
        self.shape.cell = <rnn_cell_t> cell
        self.shape.act = <rnn_activation> act
        self.shape.ract = <rnn_activation> ract
        self.shape.In, self.shape.H, self.shape.G = I, H, W.shape[2] // H
        self.shape.Ho, self.shape.P = Ho, Wr.shape[2]
        self.shape.ndir = 1
        self.shape.reverse_first = self.shape.bfirst = self.shape.zero_output = 0
        self.shape.clip, self.shape.input_forget = clip, input_forget
        self.with_c = rnn_cell_states(<rnn_cell_t> cell) == 2
        self.w.W = <const void *> <size_t> W.ctypes.data
        self.w.bx = <const void *> <size_t> bx.ctypes.data
        self.w.U = <const void *> <size_t> U.ctypes.data
        self.w.bhn = <const void *> <size_t> bhn.ctypes.data
        self.w.Wp = <const void *> <size_t> Wp.ctypes.data if Wp.shape[1] > 0 else NULL
        packed = rnn_cell_packed(<rnn_cell_t> cell) and Wr.shape[1] == 0
        self.w.Up = <const void *> <size_t> Up.ctypes.data if packed else NULL
        self.w.Wr = <const void *> <size_t> Wr.ctypes.data if Wr.shape[1] > 0 else NULL
        self.w.peep = <const void *> <size_t> peep.ctypes.data if peep is not None else NULL
        self.w.q = NULL
        if q is not None:  # reduced-precision weights (checked by rnn_forward above)
            _qweights_fill(&self.qw, q, cell, 1, I, H, self.shape.G, plan.unit_blocks, Ho,
                           Wr.shape[2] if Wr.shape[1] > 0 else 0)
            self.w.q = &self.qw

    def run(self, x, long T, long B, mask, out, h, c, int strategy, long ncb, long bb, long chunk,
            int num_threads, bint keep_team=0, bint partner=0):
        """x (T*B, I) IN; mask (T, B) uint8 or None; out (T*B, Ho) OUT or None; h (B, Ho)
        and c (B, H) IN/OUT (c None unless LSTM); the plan's fields as numbers."""
        cdef Py_buffer bx_, bm, bo, bh, bc
        cdef bint has_x = 0, has_m = 0, has_o = 0, has_h = 0, has_c = 0
        cdef rnn_plan p
        cdef rnn_buffers io
        cdef rnn_shape sh = self.shape  # a copy: threads share the entry
        cdef int err = 0
        cdef Py_ssize_t it = self.item
        if T < 1 or B < 1:
            raise ValueError("StepEntry.run: %d steps of %d rows" % (T, B))
        try:
            PyObject_GetBuffer(x, &bx_, PyBUF_C_CONTIGUOUS)
            has_x = 1
            PyObject_GetBuffer(h, &bh, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
            has_h = 1
            if bx_.len != T * B * self.shape.In * it or bh.len != B * self.shape.Ho * it:
                raise ValueError("StepEntry.run: x of %d bytes, h of %d" % (bx_.len, bh.len))
            io.x, io.h = bx_.buf, bh.buf
            io.mask, io.out, io.c = NULL, NULL, NULL
            io.active, io.rows = NULL, NULL
            if self.with_c:
                PyObject_GetBuffer(c, &bc, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
                has_c = 1
                if bc.len != B * self.shape.H * it:
                    raise ValueError("StepEntry.run: c of %d bytes" % bc.len)
                io.c = bc.buf
            if out is not None:
                PyObject_GetBuffer(out, &bo, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
                has_o = 1
                if bo.len != T * B * self.shape.Ho * it:
                    raise ValueError("StepEntry.run: out of %d bytes" % bo.len)
                io.out = bo.buf
            if mask is not None:
                PyObject_GetBuffer(mask, &bm, PyBUF_C_CONTIGUOUS)
                has_m = 1
                if bm.len != T * B:
                    raise ValueError("StepEntry.run: mask of %d bytes" % bm.len)
                io.mask = <const unsigned char *> bm.buf
            if strategy == RNN_STRATEGY_BLOCKED and self.w.Up == NULL:
                raise ValueError("the blocked strategy does not run this cell")
            sh.T, sh.B = T, B
            p.strategy = <rnn_strategy> strategy
            p.ncb, p.bb, p.chunk = ncb, bb, chunk
            p.proj_min_rows, p.proj_max_tasks = self.proj_min_rows, self.proj_max_tasks
            p.num_threads, p.keep_team, p.partner = num_threads, keep_team, partner
            with nogil:
                err = rnn_layer_forward(&sh, &p, &self.w, &io)
        finally:
            if has_x:
                PyBuffer_Release(&bx_)
            if has_h:
                PyBuffer_Release(&bh)
            if has_c:
                PyBuffer_Release(&bc)
            if has_o:
                PyBuffer_Release(&bo)
            if has_m:
                PyBuffer_Release(&bm)
        if err == RNN_ERR_NOMEM:
            raise MemoryError("rnnfast: out of memory for the recurrent kernel's scratch")
