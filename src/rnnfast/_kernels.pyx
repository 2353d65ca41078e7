# Design: the compiled core. One call runs one recurrent layer (one or two
# directions) over a whole sequence.
#
# - Who allocates: the Python caller (layers.py) validates shapes, makes every array
#   C-contiguous in the compute dtype, packs the weights once per layer
#   (pack_blocks) and allocates the outputs (out, h, c). This
#   module allocates only scratch, with malloc, once per chunk and work item, never
#   per time step.
# - The products: the per-step recurrent product h U of GRU (reset-after), LSTM
#   without projection and SimpleRNN runs on U packed in 64-column panels by our own
#   register-tiled kernel (_packgemm.h): BLAS would repack U on every call. The input
#   projection x W + b runs on packed W where that measured faster than BLAS
#   (packed_projection: float32 on AVX-512), else through the BLAS shim (_blas.pxd),
#   as do the products of the GRU reset-before and the LSTM with projection.
# - What runs where: the sequence is cut into chunks of `chunk` steps. For each
#   chunk, (1) the input projection of all its steps is computed over (direction,
#   row block) tasks, in parallel; then (2) each work item (direction, batch block)
#   runs its own time loop over the chunk with no barrier per step: the products of
#   the step, then one fused element-wise call from _cellmath.h per unit block that
#   updates the state in place and writes the output row straight into its
#   direction's half of `out`. Memory for the projection is bounded by the chunk, not
#   by the sequence length.
# - The blocked path (layers whose gate columns are laid out in unit blocks: GRU
#   reset-after, LSTM without projection, SimpleRNN, H >= 128; layers.py decides from
#   the shapes): each step's (direction, batch block, unit block) products and gate
#   math are tasks shared by the team, the same ones per thread every step, with one
#   barrier per step and the state double-buffered. Each core keeps its share of the
#   recurrent weights in its own cache, and a small batch still uses every core
#   (_split_worker). A task also projects its own block of each chunk's input, so
#   the projection is read where it was written; the buffers threads share are
#   aligned to cache lines.
# - Layout: x and out are time-major rows (t*B + b), or batch-major (b*T + t) with
#   `bfirst`, read and written in place either way.
# - Threads: OpenMP over tasks/items (dynamic schedule). The decomposition into
#   tasks and items depends on the shapes only, never on the thread count, so results
#   are bitwise identical for every thread count. Every BLAS call is made inside the
#   parallel region; the Python side (_threads.blas_single_threaded) holds the BLAS
#   to one thread while any rnnfast call that uses it runs, so it never spawns threads
#   of its own.
# - profile() / profile_times(): counters of where the time goes (projection,
#   products, the rest of the steps, the barrier), for the benchmarks; off, they cost
#   one branch per step and task.
# - The GIL is released for the whole call.
from cython.parallel cimport parallel, prange
from libc.stdlib cimport malloc, calloc, free
from posix.stdlib cimport posix_memalign
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cython cimport floating

from rnnfast._blas cimport gemm_rm
from rnnfast._openmp cimport (RNN_OPENMP_ENABLED, omp_get_max_threads, omp_get_num_threads,
                             omp_get_thread_num, rnn_omp_barrier, rnn_barrier, rnn_barrier_init,
                             rnn_barrier_wait, rnn_barrier_spins)

import os

import numpy as np

#: Instruction-set levels of the element-wise kernels (see _cellmath.h).
ISA_LEVELS = ("baseline", "avx2", "avx512")


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
    """The instruction set the element-wise kernels use: 'baseline', 'avx2' or 'avx512'."""
    return ISA_LEVELS[rnn_isa_level()]


def best_isa():
    """The best instruction set this build and CPU support."""
    return ISA_LEVELS[rnn_isa_supported()]

cdef extern from "_packgemm.h" nogil:
    long rnn_packed_size(long K, long N)
    void rnn_pack_f(long K, long N, const float *B, long ldb, float *dst)
    void rnn_pack_d(long K, long N, const double *B, long ldb, double *dst)
    void rnn_gemm_packed_f(int M, int N, int K, const float *A, long lda, const float *Bp,
                           const float *bias, float *C, long ldc)
    void rnn_gemm_packed_d(int M, int N, int K, const double *A, long lda, const double *Bp,
                           const double *bias, double *C, long ldc)

cdef extern from "_cellmath.h" nogil:
    int RNN_N_ACTIVATIONS
    int rnn_select_isa(int level)
    int rnn_isa_level()
    int rnn_isa_supported()
    void rnn_activate_f(int kind, float *v, int n)
    void rnn_activate_d(int kind, double *v, int n)
    void rnn_gru_ra_f(int nrows, int H, const float *xp, long ldxp, const float *gh, long ldgh,
                      const float *bhn, float *h, long ldh, const unsigned char *valid,
                      float *tmp, int act, int ract)
    void rnn_gru_ra_d(int nrows, int H, const double *xp, long ldxp, const double *gh, long ldgh,
                      const double *bhn, double *h, long ldh, const unsigned char *valid,
                      double *tmp, int act, int ract)
    void rnn_gru_rb_gates_f(int nrows, int H, const float *xp, long ldxp, const float *gzr,
                            long ldg, const float *h, long ldh, const unsigned char *valid,
                            float *zr, float *rh, int ract)
    void rnn_gru_rb_gates_d(int nrows, int H, const double *xp, long ldxp, const double *gzr,
                            long ldg, const double *h, long ldh, const unsigned char *valid,
                            double *zr, double *rh, int ract)
    void rnn_gru_rb_update_f(int nrows, int H, const float *xp, long ldxp, const float *ghh,
                             long ldg, const float *zr, float *h, long ldh,
                             const unsigned char *valid, float *tmp, int act)
    void rnn_gru_rb_update_d(int nrows, int H, const double *xp, long ldxp, const double *ghh,
                             long ldg, const double *zr, double *h, long ldh,
                             const unsigned char *valid, double *tmp, int act)
    void rnn_lstm_f(int nrows, int H, const float *xp, long ldxp, const float *gh, long ldgh,
                    float *c, long ldc, float *m, long ldm, const unsigned char *valid,
                    float *tmp, int act, int ract)
    void rnn_lstm_d(int nrows, int H, const double *xp, long ldxp, const double *gh, long ldgh,
                    double *c, long ldc, double *m, long ldm, const unsigned char *valid,
                    double *tmp, int act, int ract)
    void rnn_simple_f(int nrows, int H, const float *xp, long ldxp, const float *gh, long ldgh,
                      float *h, long ldh, const unsigned char *valid, int act)
    void rnn_simple_d(int nrows, int H, const double *xp, long ldxp, const double *gh, long ldgh,
                      double *h, long ldh, const unsigned char *valid, int act)
    void rnn_copy_rows_f(int nrows, int n, const float *src, long lds, float *dst, long ldd,
                         const unsigned char *valid)
    void rnn_copy_rows_d(int nrows, int n, const double *src, long lds, double *dst, long ldd,
                         const unsigned char *valid)
    void rnn_emit_f(int nrows, int n, const float *h, long ldh, float *out, long ldo,
                    const unsigned char *valid, unsigned char *seen, int zero_output)
    void rnn_emit_d(int nrows, int n, const double *h, long ldh, double *out, long ldo,
                    const unsigned char *valid, unsigned char *seen, int zero_output)

# -- where the time goes (profile()): thread-seconds per part, one row per thread ------

DEF PROF_SLOTS = 64
DEF PROF_PROJECTION = 0     # the input projection of the chunks
DEF PROF_PRODUCT = 1        # the per-step products h U (and h Wr)
DEF PROF_STEP = 2           # whole steps: products, gate math, state copies, outputs
DEF PROF_WAIT = 3           # the blocked path's step barrier
DEF PROF_PARTS = 4
cdef double _prof[PROF_SLOTS * PROF_PARTS]
cdef bint _prof_on = False


cdef inline double _tick() noexcept nogil:
    """The time now when profiling, else 0 (and no clock read)."""
    cdef timespec ts
    if not _prof_on:
        return 0
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef inline void _tock(int part, double t0) noexcept nogil:
    """Add the time since t0 to this thread's part (when profiling)."""
    cdef int tid
    if _prof_on:
        tid = omp_get_thread_num()
        if tid < PROF_SLOTS:
            _prof[tid * PROF_PARTS + part] += _tick() - t0


def barrier_spins(int spins=-1):
    """The step barrier's spins before it sleeps (_openmp.h); a new value if given."""
    global rnn_barrier_spins
    if spins >= 0:
        rnn_barrier_spins = spins
    return rnn_barrier_spins


def profile(bint enable):
    """Start (from zero) or stop counting where the kernels' time goes; profile_times
    reads the counts. A benchmarking tool: counts from concurrent calls would mix."""
    global _prof_on
    if enable:
        memset(_prof, 0, sizeof(_prof))
    _prof_on = enable


def profile_times():
    """Thread-seconds since profile(True): ``projection`` (input GEMMs), ``product``
    (per-step recurrent products), ``gates`` (the rest of the steps: gate math, state
    copies, outputs) and ``wait`` (the blocked path's step barrier)."""
    cdef int i
    tot = [0.0] * PROF_PARTS
    for i in range(PROF_SLOTS * PROF_PARTS):
        tot[i % PROF_PARTS] += _prof[i]
    return dict(projection=tot[PROF_PROJECTION], product=tot[PROF_PRODUCT],
                gates=tot[PROF_STEP] - tot[PROF_PRODUCT], wait=tot[PROF_WAIT])


# Cell codes (layers.py holds the same table).
DEF CELL_SIMPLE = 0
DEF CELL_GRU = 1          # reset-after
DEF CELL_GRU_RB = 2       # reset-before
DEF CELL_LSTM = 3

# Rows per projection task, at least; at most 8 tasks per direction and chunk (so the
# seed's 320 rows are 8 even tasks for two or four threads, not 5), each a whole
# number of the packed kernel's 6-row tiles where it can be.
DEF PROJ_MIN_ROWS = 32
DEF PROJ_MAX_TASKS = 8
DEF PROJ_ROW_MULTIPLE = 6

CELL_CODES = {"simple": CELL_SIMPLE, "gru": CELL_GRU, "gru_rb": CELL_GRU_RB, "lstm": CELL_LSTM}
GATES = {"simple": 1, "gru": 3, "gru_rb": 3, "lstm": 4}

def openmp_enabled():
    """True when the compiled core was built with OpenMP."""
    return bool(RNN_OPENMP_ENABLED)


def openmp_max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return omp_get_max_threads()


def activate(int kind, floating[::1] v):
    """Apply activation ``kind`` to ``v`` in place, exactly as the kernels do (test hook)."""
    if kind < 0 or kind >= RNN_N_ACTIVATIONS:
        raise ValueError("unknown activation code %d" % kind)
    if v.shape[0] == 0:
        return
    with nogil:
        if floating is float:
            rnn_activate_f(kind, &v[0], <int> v.shape[0])
        else:
            rnn_activate_d(kind, &v[0], <int> v.shape[0])


cdef inline void *_alloc_lines(size_t n) noexcept nogil:
    """n bytes on a cache-line boundary (64), or NULL; freed with free(). For the
    blocked path's shared buffers, whose blocks different threads write: a line
    that two blocks share would bounce between cores on every step."""
    cdef void *p = NULL
    if posix_memalign(&p, 64, n if n > 0 else 64) != 0:
        return NULL
    return p


cdef inline long _row(long t, long b, long T, long B, bint bfirst) noexcept nogil:
    """The row of (time t, batch b) in the input and the output: t*B + b, or b*T + t
    when they are batch-major."""
    return b * T + t if bfirst else t * B + b


cdef void _project_rows(long n, long I, const floating *x, long ldx, const floating *W,
                        long ldw, const floating *Wp, const floating *bx, long N,
                        floating *xp, long ldxp) noexcept nogil:
    """xp[0:n, 0:N] = x[0:n] @ W[:, 0:N] + bx[0:N] for n input rows ldx apart, on the
    packed W when there is one (Wp: these N columns packed, see packed_projection),
    else by BLAS (W with row stride ldw)."""
    cdef long r
    if Wp != NULL:
        _gemm_packed(<int> n, <int> N, <int> I, x, ldx, Wp, bx, xp, ldxp)
    else:
        for r in range(n):
            memcpy(xp + r * ldxp, bx, N * sizeof(floating))
        gemm_rm(<int> n, <int> N, <int> I, <floating> 1, x, <int> ldx,
                W, <int> ldw, <floating> 1, xp, <int> ldxp)


cdef void _project_task(const floating *x, long I, long T, long B, long tlo, bint bfirst,
                        const floating *W, const floating *Wp, const floating *bx, long H,
                        long G, long ncb, floating *xp, long r0, long r1) noexcept nogil:
    """Rows r0..r1-1 of one direction's chunk projection, every column: xp[r] =
    x(t, b) @ W + bx for r = (t - tlo) * B + b, unit block by unit block (the packed W
    is packed so). Time-major rows are contiguous; batch-major ones are taken one time
    step at a time (the batch rows of a step are T rows apart)."""
    cdef long r, t, b, n, cb, j0, nc
    cdef long GH = G * H
    cdef const floating *wpb
    cdef double t0 = _tick()
    for cb in range(ncb):
        j0 = G * _block_start(H, ncb, cb)
        nc = G * _block_start(H, ncb, cb + 1) - j0
        wpb = Wp + _packed_offset(I, H, G, ncb, cb) if Wp != NULL else NULL
        if not bfirst or B == 1:
            _project_rows(r1 - r0, I, x + (tlo * B + r0) * I, I, W + j0, GH, wpb, bx + j0, nc,
                          xp + r0 * GH + j0, GH)
        else:
            r = r0
            while r < r1:
                t = tlo + r // B
                b = r % B
                n = B - b if B - b < r1 - r else r1 - r
                _project_rows(n, I, x + (b * T + t) * I, T * I, W + j0, GH, wpb, bx + j0, nc,
                              xp + r * GH + j0, GH)
                r = r + n
    _tock(PROF_PROJECTION, t0)


cdef void _project_block(const floating *x, long I, long T, long B, long tlo, long nsteps,
                         long b0, long nb, bint bfirst, const floating *W, long GH,
                         const floating *Wp, const floating *bx, long N,
                         floating *xp) noexcept nogil:
    """The blocked path's projection of one task: rows (t, b) for the chunk's nsteps
    steps from tlo and the batch block b0..b0+nb-1, columns of one unit block (N of
    them: W, Wp, bx and xp point at the block's first column; rows of W and xp are GH
    apart). One product for the whole chunk when the block is the whole batch and the
    rows are contiguous, else one per step."""
    cdef long k, t
    cdef double t0 = _tick()
    if nb == B and (not bfirst or B == 1):
        _project_rows(nsteps * B, I, x + tlo * B * I, I, W, GH, Wp, bx, N, xp, GH)
    else:
        for k in range(nsteps):
            t = tlo + k
            _project_rows(nb, I, x + _row(t, b0, T, B, bfirst) * I, I * (T if bfirst else 1),
                          W, GH, Wp, bx, N, xp + (k * B + b0) * GH, GH)
    _tock(PROF_PROJECTION, t0)


cdef inline void _cell_block(int cell, int act, int ract, int nb, long hb,
                             const floating *xr, long ldxp,   # IN  gate block of the projection
                             const floating *gh, long ldgh,   # IN  gate block of h U
                             const floating *bhn,             # IN  (hb,) GRU candidate bias
                             floating *h, long ldh,           # IN/OUT state units of the block
                             floating *c, long ldc,           # IN/OUT LSTM cell units
                             const unsigned char *valid, floating *tmp) noexcept nogil:
    """The fused element-wise step of one unit block: GRU (reset-after), LSTM without
    projection, or SimpleRNN. Gates of the block are contiguous: [g0(hb), g1(hb), ...]."""
    if cell == CELL_GRU:
        if floating is float:
            rnn_gru_ra_f(nb, <int> hb, xr, ldxp, gh, ldgh, bhn, h, ldh, valid, tmp, act, ract)
        else:
            rnn_gru_ra_d(nb, <int> hb, xr, ldxp, gh, ldgh, bhn, h, ldh, valid, tmp, act, ract)
    elif cell == CELL_LSTM:
        if floating is float:
            rnn_lstm_f(nb, <int> hb, xr, ldxp, gh, ldgh, c, ldc, h, ldh, valid, tmp, act, ract)
        else:
            rnn_lstm_d(nb, <int> hb, xr, ldxp, gh, ldgh, c, ldc, h, ldh, valid, tmp, act, ract)
    else:
        if floating is float:
            rnn_simple_f(nb, <int> hb, xr, ldxp, gh, ldgh, h, ldh, valid, act)
        else:
            rnn_simple_d(nb, <int> hb, xr, ldxp, gh, ldgh, h, ldh, valid, act)


cdef inline void _emit(int nb, long n, const floating *h, long ldh, floating *out, long ldo,
                       const unsigned char *valid, unsigned char *seen, int zero_output) noexcept nogil:
    if floating is float:
        rnn_emit_f(nb, <int> n, h, ldh, out, ldo, valid, seen, zero_output)
    else:
        rnn_emit_d(nb, <int> n, h, ldh, out, ldo, valid, seen, zero_output)


cdef inline long _proj_tasks(long R) noexcept nogil:
    """Row blocks of a chunk's projection (R rows): a function of R only."""
    cdef long n = (R + PROJ_MIN_ROWS - 1) // PROJ_MIN_ROWS
    return PROJ_MAX_TASKS if n > PROJ_MAX_TASKS else (n if n > 0 else 1)


cdef inline long _proj_rows(long R, long nrb) noexcept nogil:
    """Rows per projection task: R over nrb tasks, rounded up to whole 6-row tiles
    (the last task may be shorter, or empty)."""
    cdef long rb = (R + nrb - 1) // nrb
    return (rb + PROJ_ROW_MULTIPLE - 1) // PROJ_ROW_MULTIPLE * PROJ_ROW_MULTIPLE


cdef inline long _block_start(long H, long ncb, long cb) noexcept nogil:
    """First unit of column block cb when H units are cut into ncb blocks."""
    return cb * H // ncb


cdef inline long _packed_offset(long K, long H, long G, long ncb, long cb) noexcept nogil:
    """Where unit block cb's panels start in one direction's packed U (_packgemm.h):
    the blocks are packed one after another, each padded to whole panels."""
    cdef long c, off = 0
    for c in range(cb):
        off += rnn_packed_size(K, G * (_block_start(H, ncb, c + 1) - _block_start(H, ncb, c)))
    return off


cdef inline void _gemm_packed(int M, int N, int K, const floating *A, long lda,
                              const floating *Bp, const floating *bias, floating *C,
                              long ldc) noexcept nogil:
    """C (M x N) = bias + A (M x K) times the packed K x N block Bp (bias NULL: zeros)."""
    if floating is float:
        rnn_gemm_packed_f(M, N, K, A, lda, Bp, bias, C, ldc)
    else:
        rnn_gemm_packed_d(M, N, K, A, lda, Bp, bias, C, ldc)


def packed_matmul(const floating[:, ::1] A, const floating[:, ::1] B, int repeat=1):
    """A @ B through the packed product the recurrence uses (B packed here, once; the
    product run ``repeat`` times): a test and benchmark hook."""
    cdef long M = A.shape[0], K = A.shape[1], N = B.shape[1]
    cdef int i
    if B.shape[0] != K:
        raise ValueError("shapes %s and %s do not multiply" % ((M, K), (K, N)))
    dt = np.float32 if floating is float else np.float64
    packed = np.zeros(rnn_packed_size(K, N), dtype=dt)
    out = np.zeros((M, N), dtype=dt)
    cdef floating[::1] P = packed
    cdef floating[:, ::1] C = out
    if M == 0 or N == 0 or K == 0:
        return out
    with nogil:
        if floating is float:
            rnn_pack_f(K, N, &B[0, 0], N, &P[0])
        else:
            rnn_pack_d(K, N, &B[0, 0], N, &P[0])
        for i in range(repeat):
            _gemm_packed(<int> M, <int> N, <int> K, &A[0, 0], K, &P[0], NULL, &C[0, 0], N)
    return out


def packed_projection(dtype):
    """Whether the input projection of this dtype runs on packed weights (our kernel)
    rather than BLAS: where it measured faster (float32 on AVX-512: 95-110 GFLOP/s
    against OpenBLAS's 55-85 on one core for the projection shapes of the benchmark
    grid); the portable kernel is slower than BLAS for large products."""
    return np.dtype(dtype) == np.float32 and rnn_isa_level() == 2


def pack_blocks(const floating[:, :, ::1] M, long G, long ncb):
    """Weights M (ndir, K, G*H) -- the recurrent U, or the input W -- in the packed form
    the products read: per direction, unit block after unit block (the column layout of
    layers.py), each block cut into panels of 64 columns (_packgemm.h). Done once per
    layer."""
    cdef long ndir = M.shape[0], K = M.shape[1], GH = M.shape[2]
    cdef long H = GH // G
    cdef long size = _packed_offset(K, H, G, ncb, ncb)
    cdef long d, cb, j0, j1
    packed = np.zeros((ndir, size), dtype=np.float32 if floating is float else np.float64)
    cdef floating[:, ::1] P = packed
    if size == 0:
        return packed
    with nogil:
        for d in range(ndir):
            for cb in range(ncb):
                j0 = _block_start(H, ncb, cb)
                j1 = _block_start(H, ncb, cb + 1)
                if floating is float:
                    rnn_pack_f(K, G * (j1 - j0), &M[d, 0, G * j0], GH,
                               &P[d, _packed_offset(K, H, G, ncb, cb)])
                else:
                    rnn_pack_d(K, G * (j1 - j0), &M[d, 0, G * j0], GH,
                               &P[d, _packed_offset(K, H, G, ncb, cb)])
    return packed


cdef int _recur_item(int cell, int act, int ract, long T, long B, long H, long Ho, long P,
                     long GH, long G, long ncb, int rev, long s0, long s1, long tlo, long b0,
                     long nb,
                     const floating *xp,       # IN  (rows of this chunk, GH) for this direction
                     const floating *U,        # IN  (Ho, GH)
                     const floating *Up,       # IN  U packed (pack_blocks), plain cells
                     const floating *bhn,      # IN  (H,)
                     const floating *Wr,       # IN  (H, P) or NULL
                     const unsigned char *mask,  # IN (T, B) or NULL
                     int zero_output,
                     floating *out, long ldo,  # OUT (T*B, ldo) at this direction's column, or NULL
                     bint bfirst,              # out is batch-major (row b*T + t)
                     floating *h,              # IN/OUT (nb rows, Ho) state of this item
                     floating *c,              # IN/OUT (nb rows, H) LSTM cell state
                     unsigned char *seen       # IN/OUT (nb,) rows that have emitted an output
                     ) noexcept nogil:
    """Run steps s0..s1-1 of one (direction, batch block) work item: per step the
    product h U over all gate columns, then the fused step block by block. Returns 0,
    or 1 when out of memory."""
    cdef long s, t, cb, j0, j1
    cdef const floating *xr
    cdef const unsigned char *valid
    cdef long ngh = nb * GH
    cdef floating *buf = <floating *> calloc(ngh + 4 * H + nb * (2 * H + 3 * H + P) + 1,
                                             sizeof(floating))
    if buf == NULL:
        return 1
    cdef floating *gh = buf
    cdef floating *tmp = gh + ngh
    cdef floating *zr = tmp + 4 * H
    cdef floating *rh = zr + nb * 2 * H
    cdef floating *g2 = rh + nb * H
    cdef floating *m = g2 + nb * H
    cdef floating *hp = m + nb * H

    cdef double t0, t1
    for s in range(s0, s1):
        t0 = _tick()
        t = T - 1 - s if rev else s
        xr = xp + ((t - tlo) * B + b0) * GH
        valid = mask + t * B + b0 if mask != NULL else NULL
        if cell == CELL_GRU_RB:
            # reset-before needs r before its second product: gate-major layout (ncb == 1)
            gemm_rm(<int> nb, <int> (2 * H), <int> Ho, 1, h, <int> Ho, U, <int> GH, 0,
                    gh, <int> (2 * H))
            if floating is float:
                rnn_gru_rb_gates_f(<int> nb, <int> H, xr, GH, gh, 2 * H, h, Ho, valid, zr, rh, ract)
            else:
                rnn_gru_rb_gates_d(<int> nb, <int> H, xr, GH, gh, 2 * H, h, Ho, valid, zr, rh, ract)
            gemm_rm(<int> nb, <int> H, <int> H, 1, rh, <int> H, U + 2 * H, <int> GH, 0,
                    g2, <int> H)
            if floating is float:
                rnn_gru_rb_update_f(<int> nb, <int> H, xr, GH, g2, H, zr, h, Ho, valid, tmp, act)
            else:
                rnn_gru_rb_update_d(<int> nb, <int> H, xr, GH, g2, H, zr, h, Ho, valid, tmp, act)
        elif cell == CELL_LSTM and Wr != NULL:
            # projection: m for all units first, then h = m Wr (gate-major layout, ncb == 1)
            gemm_rm(<int> nb, <int> GH, <int> Ho, 1, h, <int> Ho, U, <int> GH, 0, gh, <int> GH)
            if floating is float:
                rnn_lstm_f(<int> nb, <int> H, xr, GH, gh, GH, c, H, m, H, valid, tmp, act, ract)
            else:
                rnn_lstm_d(<int> nb, <int> H, xr, GH, gh, GH, c, H, m, H, valid, tmp, act, ract)
            gemm_rm(<int> nb, <int> P, <int> H, 1, m, <int> H, Wr, <int> P, 0, hp, <int> P)
            if floating is float:
                rnn_copy_rows_f(<int> nb, <int> P, hp, P, h, Ho, valid)
            else:
                rnn_copy_rows_d(<int> nb, <int> P, hp, P, h, Ho, valid)
        else:
            # every block's product reads the old state: all products first, then the steps
            t1 = _tick()
            for cb in range(ncb):
                j0 = _block_start(H, ncb, cb)
                j1 = _block_start(H, ncb, cb + 1)
                _gemm_packed(<int> nb, <int> (G * (j1 - j0)), <int> Ho, h, Ho,
                             Up + _packed_offset(Ho, H, G, ncb, cb), NULL, gh + G * j0, GH)
            _tock(PROF_PRODUCT, t1)
            for cb in range(ncb):
                j0 = _block_start(H, ncb, cb)
                j1 = _block_start(H, ncb, cb + 1)
                _cell_block(cell, act, ract, <int> nb, j1 - j0, xr + G * j0, GH, gh + G * j0, GH,
                            bhn + j0, h + j0, Ho, c + j0 if c != NULL else NULL, H, valid, tmp)
        if out != NULL:
            _emit(<int> nb, Ho, h, Ho, out + _row(t, b0, T, B, bfirst) * ldo,
                  ldo * (T if bfirst else 1), valid, seen, zero_output)
        _tock(PROF_STEP, t0)
    free(buf)
    return 0


cdef inline void _task_block(long task, long ncb, long nbb, long bb, long B, long *d, long *b0,
                             long *nb, long *cb) noexcept nogil:
    """The blocked path's task number -> direction, batch block (first row, rows) and
    unit block; unit blocks vary fastest."""
    cdef long k = task // ncb
    cb[0] = task % ncb
    b0[0] = (k % nbb) * bb
    d[0] = k // nbb
    nb[0] = bb if b0[0] + bb <= B else B - b0[0]


cdef void _split_worker(int tid, int nth, int cell, int act, int ract, long T, long B, long I,
                        long H, long Ho, long GH, long G, long ncb, long bb, int ndir,
                        bint reverse_first, long chunk, long nchunks,
                        const floating *x,          # IN  (T*B, I)
                        const floating *W,          # IN  (ndir, I, GH)
                        const floating *Wp,         # IN  (ndir, lwp): W packed by unit block, or NULL
                        long lwp,
                        const floating *bx,         # IN  (ndir, GH)
                        const floating *Up,         # IN  (ndir, lup): U packed (pack_blocks)
                        long lup,
                        const floating *bhn,        # IN  (ndir, H)
                        const unsigned char *mask,  # IN  (T, B) or NULL
                        int zero_output,
                        floating *out, long ldo,    # OUT (T*B, ndir*Ho) or NULL
                        bint bfirst,                # x and out batch-major (row b*T + t)
                        floating *hbuf,             # IN/OUT (2, ndir, B, Ho): state, double-buffered
                        floating *c,                # IN/OUT (ndir, B, H) or NULL
                        floating *xp,               # scratch (ndir, chunk*B, GH)
                        floating *scratch,          # scratch of this thread: bb*GH + 4*H
                        unsigned char *seen,        # IN/OUT (ndir, ncb, B)
                        rnn_barrier *barrier        # the team's step barrier (initialised)
                        ) noexcept nogil:
    """One thread's share of the blocked path: every (direction, batch block of ``bb``
    rows, unit block) of a step is a task; tasks are dealt round-robin to the team (the
    same ones every step, so each thread keeps its share of U in its cache), with one
    barrier per step. A task also projects its own block of each chunk's input, so that
    a thread's steps read only projections it wrote (they stay in its cache, and need
    no barrier). The tasks, and so the arithmetic, do not depend on the team size."""
    cdef long ch, s0, s1, task, d, cb, j0, j1, hb, t, tlo, s, r
    cdef long nbb = (B + bb - 1) // bb
    cdef long ntask = ndir * nbb * ncb
    cdef long b0, nb
    cdef int rev
    cdef floating *gh = scratch
    cdef floating *tmp = scratch + bb * GH
    cdef floating *hcur
    cdef floating *hnxt
    cdef const unsigned char *valid
    cdef double t0
    for ch in range(nchunks):
        s0 = ch * chunk
        s1 = s0 + chunk if s0 + chunk < T else T
        # (1) each task's block of the chunk's input projection
        task = tid
        while task < ntask:
            _task_block(task, ncb, nbb, bb, B, &d, &b0, &nb, &cb)
            tlo = T - s1 if (d == 1 or reverse_first) else s0
            j0 = _block_start(H, ncb, cb)
            _project_block(x, I, T, B, tlo, s1 - s0, b0, nb, bfirst, W + d * I * GH + G * j0, GH,
                           Wp + d * lwp + _packed_offset(I, H, G, ncb, cb) if Wp != NULL else NULL,
                           bx + d * GH + G * j0, G * (_block_start(H, ncb, cb + 1) - j0),
                           xp + d * chunk * B * GH + G * j0)
            task = task + nth
        # (2) the steps: tasks (direction, unit block), state read from hcur, written to hnxt
        for s in range(s0, s1):
            task = tid
            while task < ntask:
                _task_block(task, ncb, nbb, bb, B, &d, &b0, &nb, &cb)
                rev = 1 if (d == 1 or reverse_first) else 0
                t = T - 1 - s if rev else s
                tlo = T - s1 if rev else s0
                j0 = _block_start(H, ncb, cb)
                j1 = _block_start(H, ncb, cb + 1)
                hb = j1 - j0
                hcur = hbuf + (((s % 2) * ndir + d) * B + b0) * Ho
                hnxt = hbuf + ((((s + 1) % 2) * ndir + d) * B + b0) * Ho
                valid = mask + t * B + b0 if mask != NULL else NULL
                t0 = _tick()
                _gemm_packed(<int> nb, <int> (G * hb), <int> Ho, hcur, Ho,
                             Up + d * lup + _packed_offset(Ho, H, G, ncb, cb), NULL, gh,
                             G * hb)
                _tock(PROF_PRODUCT, t0)
                # the new state starts as the old: GRU updates it in place; LSTM and
                # SimpleRNN overwrite every stepped row, so only masked rows are carried
                for r in range(nb):
                    if cell == CELL_GRU or (valid != NULL and not valid[r]):
                        memcpy(hnxt + r * Ho + j0, hcur + r * Ho + j0,
                               hb * sizeof(floating))
                _cell_block(cell, act, ract, <int> nb, hb,
                            xp + d * chunk * B * GH + ((t - tlo) * B + b0) * GH + G * j0, GH,
                            gh, G * hb, bhn + d * H + j0, hnxt + j0, Ho,
                            c + (d * B + b0) * H + j0 if c != NULL else NULL, H, valid, tmp)
                if out != NULL:
                    _emit(<int> nb, hb, hnxt + j0, Ho,
                          out + _row(t, b0, T, B, bfirst) * ldo + d * Ho + j0,
                          ldo * (T if bfirst else 1), valid, seen + (d * ncb + cb) * B + b0,
                          zero_output)
                _tock(PROF_STEP, t0)
                task = task + nth
            t0 = _tick()
            rnn_barrier_wait(barrier)
            _tock(PROF_WAIT, t0)


#: Target rows per (direction, batch block) work item; at most 8 blocks, and at least
#: 2 from 16 rows up (so that a batch of 16-63 still has work for two threads: the
#: seed's GRU(64) at B=32 went from 0.62 to 0.53 ms on 2 threads). Measured on
#: 2 cores (GRU/LSTM, H=256, B in {32, 64, 256}): 32 balances per-thread GEMM
#: efficiency (larger blocks) against parallelism (more blocks). A tuning knob for
#: benchmarks: the split must stay a function of the shapes only.
ROWS_PER_BLOCK = 32


def batch_blocks(long B):
    """Rows per work item for batch size B: a function of B only (never of threads)."""
    cdef long nblk = B // ROWS_PER_BLOCK
    if nblk < 2 and B >= 16:
        nblk = 2
    if nblk < 1:
        nblk = 1
    if nblk > 8:
        nblk = 8
    return (B + nblk - 1) // nblk


#: Rows per batch block on the blocked path (unit blocks as tasks): the GEMM per task
#: is (rows x gates*units of the block x Ho); 64 rows keep it efficient.
SPLIT_ROWS = 64


def split_batch_rows(long B):
    """Rows per batch block on the blocked path: a function of B only."""
    cdef long nblk = (B + SPLIT_ROWS - 1) // SPLIT_ROWS
    if nblk < 1:
        nblk = 1
    return (B + nblk - 1) // nblk


def rnn_forward(str cell_name, int act, int ract,
                const floating[:, ::1] x,           # IN  (T*B, I), row t*B + b (b*T + t: bfirst)
                long T, long B, bint bfirst,
                const floating[:, :, ::1] W,        # IN  (ndir, I, GH)
                const floating[:, ::1] Wp,          # IN  W packed (pack_blocks), or (0, 0)
                const floating[:, ::1] bx,          # IN  (ndir, GH)
                const floating[:, :, ::1] U,        # IN  (ndir, Ho, GH)
                const floating[:, ::1] Up,          # IN  U packed (pack_blocks), or (0, 0)
                const floating[:, ::1] bhn,         # IN  (ndir, H)
                const floating[:, :, ::1] Wr,       # IN  (ndir, H, P), or (ndir, 0, 0)
                const unsigned char[:, ::1] mask,   # IN  (T, B), or (0, 0) for none
                bint zero_output, bint reverse_first,
                floating[:, ::1] out,               # OUT (T*B, ndir*Ho), rows as x's, or (0, 0)
                floating[:, :, ::1] h,              # IN/OUT (ndir, B, Ho): initial -> final state
                floating[:, :, ::1] c,              # IN/OUT (ndir, B, H): LSTM cell state, else (0,0,0)
                long ncb, bint split, long chunk, int num_threads):
    """Run one recurrent layer over the whole sequence (see the Design note above).

    Direction 0 runs forward (backward when ``reverse_first``), direction 1 always
    backward; outputs stay aligned with input time. With ``ncb`` > 1 the gate
    columns of W, bx and U are laid out in ``ncb`` unit blocks (layers.py), each
    block holding its units' gates side by side; ``split`` runs the small-batch path
    (unit blocks as parallel tasks, one barrier per step). ``bfirst``: x and out are
    batch-major, (B, T, .) flattened, so the caller need not transpose. Shapes are
    checked by the caller (layers.RNNLayer), which is the only intended user.
    """
    cdef int cell = CELL_CODES[cell_name]
    cdef int ndir = <int> W.shape[0]
    cdef long I = W.shape[1]
    cdef long GH = W.shape[2]
    cdef long G = GATES[cell_name]
    cdef long H = GH // G
    cdef long Ho = U.shape[1]
    cdef long P = Wr.shape[2]
    cdef bint has_proj = Wr.shape[1] > 0
    # the cells whose product runs on packed weights (the rest call BLAS)
    cdef bint plain = cell != CELL_GRU_RB and not has_proj
    cdef bint has_out = out.shape[0] > 0
    cdef bint has_mask = mask.shape[0] > 0
    cdef long ldo = ndir * Ho
    cdef long bb = batch_blocks(B) if B > 0 else 1
    cdef long nbb = (B + bb - 1) // bb
    cdef long nitems = ndir * nbb
    cdef long nchunks, ch, s0, s1, R, nrb, rb, ntask, task, item, d, k, r0, r1, b0, nb
    cdef long tlo
    cdef int rev, err = 0
    cdef floating *xp = NULL
    cdef unsigned char *seen = NULL
    cdef const unsigned char *mptr = &mask[0, 0] if has_mask else NULL
    cdef floating *optr = &out[0, 0] if has_out else NULL
    cdef const floating *wrp = &Wr[0, 0, 0] if has_proj else NULL
    cdef const floating *wpp = &Wp[0, 0] if Wp.shape[1] > 0 else NULL
    cdef floating *cptr = &c[0, 0, 0] if cell == CELL_LSTM else NULL
    cdef floating *hbuf = NULL
    cdef floating *cbuf = NULL
    cdef floating *scratch = NULL
    cdef long sbb = split_batch_rows(B) if B > 0 else 1
    cdef long per_thread = sbb * GH + 4 * H
    cdef int tid
    cdef rnn_barrier barrier

    if T == 0 or B == 0:
        return
    if chunk < 1:
        chunk = 1
    if chunk > T:
        chunk = T
    nchunks = (T + chunk - 1) // chunk
    if num_threads < 1:
        num_threads = 1
    if split and not plain:
        raise ValueError("the small-batch path does not run this cell")
    if wpp != NULL and (Wp.shape[0] != ndir or Wp.shape[1] != _packed_offset(I, H, G, ncb, ncb)):
        raise ValueError("packed input weights of shape %s, expected %s"
                         % ((Wp.shape[0], Wp.shape[1]), (ndir, _packed_offset(I, H, G, ncb, ncb))))
    if plain and (Up.shape[0] != ndir or Up.shape[1] != _packed_offset(Ho, H, G, ncb, ncb)):
        raise ValueError("packed recurrent weights of shape %s, expected %s"
                         % ((Up.shape[0], Up.shape[1]), (ndir, _packed_offset(Ho, H, G, ncb, ncb))))

    if split:
        with nogil:
            xp = <floating *> _alloc_lines(ndir * chunk * B * GH * sizeof(floating))
            seen = <unsigned char *> calloc(ndir * ncb * B, 1)
            hbuf = <floating *> _alloc_lines(2 * ndir * B * Ho * sizeof(floating))
            if cptr != NULL:               # the cell state, in a buffer of our own alignment
                cbuf = <floating *> _alloc_lines(ndir * B * H * sizeof(floating))
            per_thread = (per_thread + 15) // 16 * 16
            scratch = <floating *> _alloc_lines(num_threads * per_thread * sizeof(floating))
            if (xp == NULL or seen == NULL or hbuf == NULL or scratch == NULL
                    or (cptr != NULL and cbuf == NULL)):
                err = 1
            else:
                memcpy(hbuf, &h[0, 0, 0], ndir * B * Ho * sizeof(floating))
                if cptr != NULL:
                    memcpy(cbuf, cptr, ndir * B * H * sizeof(floating))
                with parallel(num_threads=num_threads):
                    tid = omp_get_thread_num()
                    if tid == 0:
                        rnn_barrier_init(&barrier, omp_get_num_threads())
                    rnn_omp_barrier()
                    _split_worker(tid, omp_get_num_threads(), cell, act, ract, T, B, I, H, Ho,
                                  GH, G, ncb, sbb, ndir, reverse_first, chunk, nchunks, &x[0, 0],
                                  &W[0, 0, 0], wpp, Wp.shape[1], &bx[0, 0], &Up[0, 0], Up.shape[1],
                                  &bhn[0, 0], mptr,
                                  zero_output, optr, ldo, bfirst, hbuf, cbuf, xp,
                                  scratch + tid * per_thread, seen, &barrier)
                memcpy(&h[0, 0, 0], hbuf + (T % 2) * ndir * B * Ho, ndir * B * Ho * sizeof(floating))
                if cptr != NULL:
                    memcpy(cptr, cbuf, ndir * B * H * sizeof(floating))
            free(xp)
            free(seen)
            free(hbuf)
            free(cbuf)
            free(scratch)
        if err:
            raise MemoryError("rnnfast: out of memory for the recurrent kernel's scratch")
        return

    with nogil:
        xp = <floating *> malloc(ndir * chunk * B * GH * sizeof(floating))
        seen = <unsigned char *> calloc(ndir * B, 1)
        if xp == NULL or seen == NULL:
            err = 1
        ch = 0
        while ch < nchunks and err == 0:
            s0 = ch * chunk
            s1 = s0 + chunk if s0 + chunk < T else T
            R = (s1 - s0) * B
            nrb = _proj_tasks(R)
            rb = _proj_rows(R, nrb)
            ntask = ndir * nrb
            # (1) input projection of this chunk's steps, every direction
            for task in prange(ntask, num_threads=num_threads, schedule='dynamic'):
                d = task // nrb
                k = task % nrb
                r0 = k * rb
                r1 = r0 + rb if r0 + rb < R else R
                if r0 < r1:
                    tlo = (T - s1 if (d == 1 or reverse_first) else s0)
                    _project_task(&x[0, 0], I, T, B, tlo, bfirst, &W[d, 0, 0],
                                  wpp + d * Wp.shape[1] if wpp != NULL else NULL, &bx[d, 0], H, G,
                                  ncb, xp + d * chunk * B * GH, r0, r1)
            # (2) the recurrence over this chunk, every (direction, batch block)
            for item in prange(nitems, num_threads=num_threads, schedule='dynamic'):
                d = item // nbb
                b0 = (item % nbb) * bb
                nb = bb if b0 + bb <= B else B - b0
                rev = 1 if (d == 1 or reverse_first) else 0
                tlo = (T - s1 if rev else s0)
                err += _recur_item(cell, act, ract, T, B, H, Ho, P, GH, G, ncb, rev, s0, s1, tlo,
                                   b0, nb, xp + d * chunk * B * GH, &U[d, 0, 0],
                                   &Up[d, 0] if plain else NULL, &bhn[d, 0],
                                   wrp + d * H * P if has_proj else NULL, mptr, zero_output,
                                   optr + d * Ho if has_out else NULL, ldo, bfirst,
                                   &h[d, b0, 0],
                                   cptr + (d * B + b0) * H if cell == CELL_LSTM else NULL,
                                   seen + d * B + b0)
            ch = ch + 1
        free(xp)
        free(seen)
    if err:
        raise MemoryError("rnnfast: out of memory for the recurrent kernel's scratch")
