# The compiled core's Python face. The core itself is C, under c/ (its README.md is the
# map): the kernels per instruction set, the one dispatcher (c/isa.h) and the kernel
# entry with its two execution strategies (c/engine.h). This module selects the
# instruction set at import, hands the core SciPy's BLAS, packs weights, checks what
# layers.py passes to rnn_forward, fills the entry's structs and releases the GIL for
# the call. The codes shared with C (c/enums.h) come through _kernels.pxd; the
# planning (strategy, blocks, chunk, team size) is rnnfast/_plan.py's.
from libc.string cimport memset
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

import enum
import os

import numpy as np

# the codes of c/enums.h at module level too: _kernels.RNN_ACT_TANH, RNN_ISA_AVX2, ...
for _codes in (rnn_activation, rnn_isa_level, rnn_strategy, rnn_dtype, rnn_packing,
               rnn_profile_part, rnn_status):
    globals().update(_codes.__members__)
del _codes

#: The cells of the compiled core, one per line of the cell list c/cells.def.h, named by
#: it: rnn_cell.RNN_CELL_GRU == 1, ..., also at module level (_kernels.RNN_CELL_GRU).
rnn_cell = enum.IntEnum("rnn_cell", {"RNN_CELL_" + rnn_cell_name(<rnn_cell_t> i).decode("ascii"): i
                                     for i in range(RNN_CELL_COUNT)})
globals().update(rnn_cell.__members__)

rnn_blas_init(sgemm, dgemm, sgemv, dgemv)

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


def debug_delay(int tid=-1, int us=0, int every=1, bint inside=False):
    """Test hook: thread ``tid`` of the blocked strategy's team sleeps ``us``
    microseconds at every ``every``-th phase, before claiming its tasks (its tasks are
    then taken over by the others) or, with ``inside``, inside each task it claimed
    (the phase then waits for it). ``debug_delay()`` turns it off. Process-wide: for
    tests only."""
    global rnn_delay_tid, rnn_delay_us, rnn_delay_every, rnn_delay_where
    if us < 0 or every < 1:
        raise ValueError("us must be >= 0 and every >= 1")
    rnn_delay_tid, rnn_delay_us, rnn_delay_every, rnn_delay_where = tid, us, every, 1 if inside else 0


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
    packed = np.zeros(rnn_packed_size(K, N), dtype=dt)
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
    packed = np.zeros((ndir, size), dtype=np.float32 if floating is float else np.float64)
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
                const long[::1] active=None):       # IN  (T,) right padding: rows valid at step t
    """Run one recurrent layer over the whole sequence (c/engine.h says how).

    ``cell`` is an RNN_CELL_* code, ``act`` and ``ract`` RNN_ACT_* codes. Direction 0
    runs forward (backward when ``reverse_first``), direction 1 always backward;
    outputs stay aligned with input time. The gate columns of W, bx and U are laid out
    in ``plan.unit_blocks`` unit blocks (layers.py). ``batch_first``: x and out are
    batch-major, (B, T, .) flattened, so the caller need not transpose. ``plan`` (a
    rnnfast._plan.Plan) chooses the strategy, the blocks, the chunk and the team.
    ``active`` (right-padded batches whose rows are sorted by length, longest first;
    the mask must say the same): the rows valid at step t are the first ``active[t]``;
    the rest drop out of the step's work, with the same results. Shapes are checked by the caller (layers.RNNLayer), which is the only intended
    user; this checks what the C core relies on.
    """
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
    if packed and (Up.shape[0] != ndir or Up.shape[1] != rnn_packed_offset(Ho, H, G, ncb, ncb)):
        raise ValueError("packed recurrent weights of shape %s, expected %s"
                         % ((Up.shape[0], Up.shape[1]), (ndir, rnn_packed_offset(Ho, H, G, ncb, ncb))))
    if peep is not None and (peep.shape[0] != ndir or peep.shape[1] != 3 or peep.shape[2] != H):
        raise ValueError("peepholes of shape %s, expected %s"
                         % ((peep.shape[0], peep.shape[1], peep.shape[2]), (ndir, 3, H)))
    if not clip >= 0:
        raise ValueError("clip must be >= 0 (0: none), got %r" % clip)
    if active is not None and active.shape[0] != T:
        raise ValueError("active rows for %d steps, expected %d" % (active.shape[0], T))
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

    w.W, w.bx, w.U, w.bhn = &W[0, 0, 0], &bx[0, 0], &U[0, 0, 0], &bhn[0, 0]
    w.Wp = &Wp[0, 0] if Wp.shape[1] > 0 else NULL
    w.Up = &Up[0, 0] if packed else NULL
    w.Wr = &Wr[0, 0, 0] if has_proj else NULL
    w.peep = &peep[0, 0, 0] if peep is not None else NULL

    io.x, io.h = &x[0, 0], &h[0, 0, 0]
    io.mask = &mask[0, 0] if mask.shape[0] > 0 else NULL
    io.out = &out[0, 0] if out.shape[0] > 0 else NULL
    io.c = &c[0, 0, 0] if rnn_cell_states(<rnn_cell_t> cell) == 2 else NULL
    io.active = &active[0] if active is not None and T > 0 else NULL

    with nogil:
        err = rnn_layer_forward(&shape, &p, &w, &io)
    if err == RNN_ERR_NOMEM:
        raise MemoryError("rnnfast: out of memory for the recurrent kernel's scratch")
