# Design: the small ops of ONNX graphs (rnnfast/model_onnx.py) in compiled code, on rows.
# The C is c/rowops.template.h (one body per type and instruction set), its table
# c/rowops.h; this module picks the table row of the instruction set isa.h's dispatcher
# chose (rnnfast._kernels.isa(), once, at import: the products beside these ops run on
# it), checks shapes, and releases the GIL for the loops. The caller allocates the
# outputs and says how many threads may share the rows (or the product's batch entries,
# or packed_rows' column panels: those on c/rowops.team.h's partner thread); each row (a
# panel of it) is computed by one thread in an order that depends on its length only, so
# the results never depend on the thread count nor on the other rows of the batch.
# attend and packed_rows read arrays of the common form (float32 / float64 ndarrays as
# the calls take them) through their fields (c/ndarray.h), everything else through typed
# memoryviews: the same C call on the same pointers and strides either way.
from cpython.object cimport PyObject, PyTypeObject
from cpython.pycapsule cimport PyCapsule_New
from posix.unistd cimport usleep
from cython cimport floating

import numpy as np

from . import _kernels


from rnnfast._ndarray cimport (RNNFAST_C_CONTIGUOUS, RNNFAST_WRITEABLE, rnnfast_array, rnnfast_ndarray,
                               rnnfast_rows_operands, rnnfast_rows_operands_of)


cdef extern from "c/rowops.h" nogil:
    ctypedef struct rnn_rows_args:
        long G1, G2, M, N, K
        const void *A
        long sa1, sa2, lda
        const void *B
        long sb1, sb2, ldb, cb
        const void *bias
        void *C
        long sc1, sc2, ldc

    ctypedef struct rnn_attend_args:
        long G, M, K, T, N
        const void *Q
        long sq, ldq
        const void *Kt
        long sk, ldk, ck
        const void *V
        long sv, ldv, cv
        void *S
        void *O

    ctypedef struct rnn_packed_args:
        long M, N, K
        const void *A
        long lda
        const void *Bp
        const void *bias
        void *C
        long ldc
        long per, npan
        int softmax
        int stream
        long nblk
        void *stats

    ctypedef struct rnn_rowops_table:
        void (*softmax_rows_f)(const float *x, long ldx, float *y, long ldy, long R, long n, int take_log,
                               int nth) noexcept nogil
        void (*softmax_rows_d)(const double *x, long ldx, double *y, long ldy, long R, long n, int take_log,
                               int nth) noexcept nogil
        void (*rows_products_f)(const rnn_rows_args *pr, int nth) noexcept nogil
        void (*rows_products_d)(const rnn_rows_args *pr, int nth) noexcept nogil
        void (*attend_f)(const rnn_attend_args *ar, int nth) noexcept nogil
        void (*attend_d)(const rnn_attend_args *ar, int nth) noexcept nogil
        void (*packed_few_f)(rnn_packed_args *pa, int nth) noexcept nogil
        void (*packed_few_d)(rnn_packed_args *pa, int nth) noexcept nogil

    const rnn_rowops_table rnn_rowops[]
    long rnn_packed_size(long K, long N)
    int rnn_duo_spin(int us)
    long rnn_duo_shared()
    int rnn_duo_wake()
    int rnn_duo_asleep()
    ctypedef void (*rnn_duo_fn)(void *arg, long task) noexcept nogil
    void rnn_duo_run(rnn_duo_fn fn, void *arg, long ntask, int nth) noexcept nogil
    long rnn_duo_backoffs(long long *last_ns)
    long long rnn_duo_backoff_after(long long last, long long since)
    int rnn_duo_in_partner()
    const int RNN_DUO_ENABLED
    const long long RNN_DUO_BACKOFF_MIN_NS, RNN_DUO_BACKOFF_NS

cdef const rnn_rowops_table *_table = &rnn_rowops[_kernels.ISA_LEVELS.index(_kernels.isa())]
cdef type _nd = np.ndarray
cdef PyTypeObject *_ndarray = <PyTypeObject *> _nd
cdef object _f32 = np.dtype(np.float32), _f64 = np.dtype(np.float64)  # (NumPy's own descriptors)
cdef PyObject *_F32 = <PyObject *> _f32
cdef PyObject *_F64 = <PyObject *> _f64


cdef inline PyObject *_float_descr(a) noexcept:
    """``a``'s dtype where ``a`` is a float32 / float64 ndarray (its descriptor NumPy's
    own); else NULL."""
    cdef PyObject *d
    if type(a) is not _nd:
        return NULL
    d = (<const rnnfast_ndarray *> <PyObject *> a).descr
    return d if d == _F32 or d == _F64 else NULL


def softmax_rows(const floating[:, ::1] x,          # IN  (R, n)
                 floating[:, ::1] y,                # OUT (R, n); may be x
                 bint take_log=False, int num_threads=1):
    """y = softmax(x) over each row, exp(d) / sum exp(d) with d = x - max(x) (take_log:
    the log-softmax, d - log(sum exp(d))). Rows split among ``num_threads`` threads at
    most. GIL released."""
    cdef long R = x.shape[0], n = x.shape[1]
    if y.shape[0] != R or y.shape[1] != n:
        raise ValueError("softmax_rows: x %s, y %s" % ((R, n), (y.shape[0], y.shape[1])))
    if R == 0 or n == 0:
        return
    with nogil:
        if floating is float:
            _table.softmax_rows_f(&x[0, 0], n, &y[0, 0], n, R, n, take_log, num_threads)
        else:
            _table.softmax_rows_d(&x[0, 0], n, &y[0, 0], n, R, n, take_log, num_threads)


def rows_products(const floating[:, :, :, :] A,     # IN  (G1, G2, M, K), rows contiguous
                  const floating[:, :, :, :] B,     # IN  (G1 or 1, G2 or 1, K, N), any strides
                  floating[:, :, :, :] C,           # OUT (G1, G2, M, N), rows contiguous
                  const floating[::1] bias=None,    # IN  (N,), or None
                  int num_threads=1):
    """C[g1, g2] = bias + A[g1, g2] @ B[g1, g2], each element one chain of multiply-adds
    over k from its bias (or zero): the packed product's chain (``_kernels.products``),
    without packing B (strided views read in place). For few rows: the loop is not
    register-tiled. The (g1, g2) split among ``num_threads`` threads at most. GIL
    released."""
    cdef Py_ssize_t isz = sizeof(floating)
    cdef long G1 = A.shape[0], G2 = A.shape[1], M = A.shape[2], K = A.shape[3], N = B.shape[3]
    cdef rnn_rows_args pr
    if (B.shape[0] not in (1, G1) or B.shape[1] not in (1, G2) or B.shape[2] != K
            or C.shape[0] != G1 or C.shape[1] != G2 or C.shape[2] != M or C.shape[3] != N
            or (bias is not None and bias.shape[0] != N)):
        raise ValueError("rows_products: A %s, B %s, C %s do not match"
                         % ([A.shape[i] for i in range(4)], [B.shape[i] for i in range(4)],
                            [C.shape[i] for i in range(4)]))
    if G1 == 0 or G2 == 0 or M == 0 or N == 0:
        return
    if K == 0:
        raise ValueError("rows_products: A has no columns")
    if (A.strides[3] != isz and K > 1) or (C.strides[3] != isz and N > 1):
        raise ValueError("rows_products: the rows of A and C must be contiguous")
    pr.G1, pr.G2, pr.M, pr.N, pr.K = G1, G2, M, N, K
    pr.A = &A[0, 0, 0, 0]
    pr.sa1, pr.sa2, pr.lda = A.strides[0] // isz, A.strides[1] // isz, A.strides[2] // isz
    pr.B = &B[0, 0, 0, 0]
    pr.sb1 = B.strides[0] // isz if B.shape[0] > 1 else 0
    pr.sb2 = B.strides[1] // isz if B.shape[1] > 1 else 0
    pr.ldb, pr.cb = B.strides[2] // isz, B.strides[3] // isz
    pr.bias = &bias[0] if bias is not None else NULL
    pr.C = &C[0, 0, 0, 0]
    pr.sc1, pr.sc2, pr.ldc = C.strides[0] // isz, C.strides[1] // isz, C.strides[2] // isz
    with nogil:
        if floating is float:
            _table.rows_products_f(&pr, num_threads)
        else:
            _table.rows_products_d(&pr, num_threads)


def attend(Q,                                      # IN  (G, M, K), rows contiguous
           Kt,                                     # IN  (G, K, T), any strides
           V,                                      # IN  (G, T, N), any strides
           S,                                      # OUT (G, M, T): the softmaxed scores
           O,                                      # OUT (G, M, N)
           int num_threads=1):
    """O[g] = softmax(Q[g] @ Kt[g]) @ V[g], the softmax over each row (S[g] = its
    values): the bits of ``rows_products``, ``softmax_rows`` and ``rows_products`` one
    after another, in one call. The g split among ``num_threads`` threads at most. GIL
    released. The arrays float32 or float64, one dtype, 3-D, S and O C-contiguous."""
    cdef PyObject *dt = _float_descr(Q)
    cdef const rnnfast_ndarray *q
    cdef const rnnfast_ndarray *k
    cdef const rnnfast_ndarray *v
    cdef const rnnfast_ndarray *s
    cdef const rnnfast_ndarray *o
    cdef Py_ssize_t isz
    cdef long G, M, K, T, N
    cdef rnn_attend_args ar
    if dt != NULL:  # ndarrays of the common form: their fields (a typed memoryview each cost more than the work)
        q = rnnfast_array(<PyObject *> Q, _ndarray, dt, 3, 0)
        k = rnnfast_array(<PyObject *> Kt, _ndarray, dt, 3, 0)
        v = rnnfast_array(<PyObject *> V, _ndarray, dt, 3, 0)
        s = rnnfast_array(<PyObject *> S, _ndarray, dt, 3, RNNFAST_C_CONTIGUOUS | RNNFAST_WRITEABLE)
        o = rnnfast_array(<PyObject *> O, _ndarray, dt, 3, RNNFAST_C_CONTIGUOUS | RNNFAST_WRITEABLE)
        if q != NULL and k != NULL and v != NULL and s != NULL and o != NULL:
            isz = 4 if dt == _F32 else 8
            G, M, K, T, N = q.dimensions[0], q.dimensions[1], q.dimensions[2], k.dimensions[2], v.dimensions[2]
            if (k.dimensions[0] == G and k.dimensions[1] == K and v.dimensions[0] == G and v.dimensions[1] == T
                    and s.dimensions[0] == G and s.dimensions[1] == M and s.dimensions[2] == T
                    and o.dimensions[0] == G and o.dimensions[1] == M and o.dimensions[2] == N
                    and K > 0 and T > 0 and G > 0 and M > 0 and N > 0 and (q.strides[2] == isz or K == 1)):
                ar.G, ar.M, ar.K, ar.T, ar.N = G, M, K, T, N
                ar.Q, ar.sq, ar.ldq = q.data, q.strides[0] // isz, q.strides[1] // isz
                ar.Kt, ar.sk, ar.ldk, ar.ck = k.data, k.strides[0] // isz, k.strides[1] // isz, k.strides[2] // isz
                ar.V, ar.sv, ar.ldv, ar.cv = v.data, v.strides[0] // isz, v.strides[1] // isz, v.strides[2] // isz
                ar.S, ar.O = s.data, o.data
                with nogil:
                    if isz == 4:
                        _table.attend_f(&ar, num_threads)
                    else:
                        _table.attend_d(&ar, num_threads)
                return
    _attend_views(Q, Kt, V, S, O, num_threads)  # (and its errors)


def _attend_views(const floating[:, :, :] Q, const floating[:, :, :] Kt, const floating[:, :, :] V,
                  floating[:, :, ::1] S, floating[:, :, ::1] O, int num_threads=1):
    """:func:`attend` on typed memoryviews."""
    cdef Py_ssize_t isz = sizeof(floating)
    cdef long G = Q.shape[0], M = Q.shape[1], K = Q.shape[2], T = Kt.shape[2], N = V.shape[2]
    cdef rnn_attend_args ar
    if (Kt.shape[0] != G or Kt.shape[1] != K or V.shape[0] != G or V.shape[1] != T
            or S.shape[0] != G or S.shape[1] != M or S.shape[2] != T
            or O.shape[0] != G or O.shape[1] != M or O.shape[2] != N):
        raise ValueError("attend: Q %s, Kt %s, V %s, S %s, O %s do not match"
                         % ((G, M, K), (Kt.shape[0], Kt.shape[1], T), (V.shape[0], V.shape[1], N),
                            (S.shape[0], S.shape[1], S.shape[2]), (O.shape[0], O.shape[1], O.shape[2])))
    if K == 0 or T == 0:
        raise ValueError("attend: no columns to sum (K %d, T %d)" % (K, T))
    if Q.strides[2] != isz and K > 1:
        raise ValueError("attend: the rows of Q must be contiguous")
    if G == 0 or M == 0 or N == 0:
        return
    ar.G, ar.M, ar.K, ar.T, ar.N = G, M, K, T, N
    ar.Q, ar.sq, ar.ldq = &Q[0, 0, 0], Q.strides[0] // isz, Q.strides[1] // isz
    ar.Kt, ar.sk, ar.ldk, ar.ck = &Kt[0, 0, 0], Kt.strides[0] // isz, Kt.strides[1] // isz, Kt.strides[2] // isz
    ar.V, ar.sv, ar.ldv, ar.cv = &V[0, 0, 0], V.strides[0] // isz, V.strides[1] // isz, V.strides[2] // isz
    ar.S, ar.O = &S[0, 0, 0], &O[0, 0, 0]
    with nogil:
        if floating is float:
            _table.attend_f(&ar, num_threads)
        else:
            _table.attend_d(&ar, num_threads)


def packed_rows(A,                                 # IN  (M, K)
                Bp,                                # IN  (K, N) packed: rnnfast._products.pack
                bias,                              # IN  (N,), or (0,) for none
                C,                                 # OUT (M, N)
                int num_threads=1, int softmax=0, bint stream=False):
    """C = bias + A @ B for a few rows A: the bits of ``_kernels.packed_rows`` (each
    element the packed product's chain), its panels split between the caller and, where
    ``num_threads`` > 1, a partner thread that polls for work a while after each product
    and then sleeps (c/rowops.team.h: the caller never waits for it to wake; OpenMP's
    passive partner cost a 46-138 us wake). ``softmax`` 1 (2): then C's rows replaced by
    their softmax (log-softmax), the bits of :func:`softmax_rows` on C, its blocks of
    columns computed by the thread that wrote them (a decoder's vocabulary head).
    ``stream``: with one row, B read once and not kept in the caches (c/rowops.h:
    prefetched non-temporally), the same bits. GIL released. The arrays float32 or
    float64, one dtype, C-contiguous."""
    cdef PyObject *dt = _float_descr(A)
    cdef rnnfast_rows_operands o
    cdef rnn_packed_args pa
    if (dt != NULL and 0 <= softmax <= 2  # ndarrays of the common form: their fields
            and rnnfast_rows_operands_of(<PyObject *> A, <PyObject *> Bp, <PyObject *> bias, <PyObject *> C,
                                         _ndarray, dt, &o)):
        pa.M, pa.N, pa.K = o.M, o.N, o.K
        pa.A, pa.lda, pa.Bp = o.A, o.K, o.Bp
        pa.bias = o.bias
        pa.C, pa.ldc = o.C, o.N
        pa.softmax = softmax
        pa.stream = stream
        with nogil:
            if dt == _F32:
                _table.packed_few_f(&pa, num_threads)
            else:
                _table.packed_few_d(&pa, num_threads)
        return
    _packed_rows_views(A, Bp, bias, C, num_threads, softmax, stream)  # (and its errors)


def _packed_rows_views(const floating[:, ::1] A, const floating[::1] Bp, const floating[::1] bias,
                       floating[:, ::1] C, int num_threads=1, int softmax=0, bint stream=False):
    """:func:`packed_rows` on typed memoryviews."""
    cdef long M = A.shape[0], K = A.shape[1], N = C.shape[1]
    cdef rnn_packed_args pa
    if C.shape[0] != M or Bp.shape[0] != rnn_packed_size(K, N) or bias.shape[0] not in (0, N):
        raise ValueError("packed_rows: A %s, packed B of %d values, bias %d, C %s"
                         % ((M, K), Bp.shape[0], bias.shape[0], (C.shape[0], N)))
    if K == 0:
        raise ValueError("packed_rows: A has no columns")
    if softmax not in (0, 1, 2):
        raise ValueError("packed_rows: softmax %d (0, 1 or 2)" % softmax)
    if M == 0 or N == 0:
        return
    pa.M, pa.N, pa.K = M, N, K
    pa.A, pa.lda, pa.Bp = &A[0, 0], K, &Bp[0]
    pa.bias = &bias[0] if bias.shape[0] > 0 else NULL
    pa.C, pa.ldc = &C[0, 0], N
    pa.softmax = softmax
    pa.stream = stream
    with nogil:
        if floating is float:
            _table.packed_few_f(&pa, num_threads)
        else:
            _table.packed_few_d(&pa, num_threads)


def partner_spin_us(us=None):
    """The partner thread's poll for a next product after each one (microseconds; 0: it
    sleeps at once); ``us``: set it. Returns the value before."""
    return rnn_duo_spin(-1 if us is None else max(0, int(us)))


def partner_wake():
    """Wake the partner thread of ``packed_rows`` (start it if need be) and return at
    once: called when a few-row product on two threads or more is coming (a model
    call's start), it polls by then, whatever the gap since its last product. True
    where the build has the partner."""
    return bool(rnn_duo_wake())


def partner_asleep():
    """Whether the partner thread sleeps now (False while it polls or works, and where
    there is none)."""
    return bool(rnn_duo_asleep())


def partner_jobs():
    """Products in which the partner thread ran a part, so far (0 where the build has
    no partner: not Linux)."""
    return rnn_duo_shared()


def partner_backoffs():
    """``(count, seconds)``: the times a caller waited on the partner's task past the
    limit (the partner lost its core mid-task) and ran the next products alone for a
    while, so far, and the last such while (0.0: none yet)."""
    cdef long long last = 0
    cdef long n = rnn_duo_backoffs(&last)
    return n, last * 1e-9


#: The backoff's shortest and longest (seconds; :func:`partner_backoff_after`).
PARTNER_BACKOFF_MIN = RNN_DUO_BACKOFF_MIN_NS * 1e-9
PARTNER_BACKOFF_MAX = RNN_DUO_BACKOFF_NS * 1e-9


def partner_backoff_after(last, since):
    """The length (seconds) of a backoff that starts ``since`` seconds after the last one
    (``last`` seconds; 0: none) ended (c/rowops.team.h's rnn_duo_backoff_after)."""
    return rnn_duo_backoff_after(<long long> round(last * 1e9), <long long> round(since * 1e9)) * 1e-9


cdef struct _napping:
    unsigned caller_us, partner_us


cdef void _nap(void *arg, long task) noexcept nogil:
    cdef _napping *n = <_napping *> arg
    usleep(n.partner_us if rnn_duo_in_partner() else n.caller_us)


def _partner_test_job(long ntask, unsigned caller_us, unsigned partner_us):
    """A test's job of ``ntask`` tasks on two threads: a task sleeps ``partner_us`` on
    the partner thread and ``caller_us`` on the caller. True when the partner ran one."""
    cdef _napping n
    cdef long before = rnn_duo_shared()
    n.caller_us, n.partner_us = caller_us, partner_us
    with nogil:
        rnn_duo_run(_nap, &n, ntask, 2)
    return rnn_duo_shared() != before


#: Whether this build has the partner thread (Linux).
PARTNER = bool(RNN_DUO_ENABLED)

# the recurrent engine's one-step calls share this partner (one per process; _kernels
# does not import this module, so it is handed over here)
if PARTNER:
    _kernels._use_partner(PyCapsule_New(<void *> rnn_duo_run, b"rnnfast.partner_run", NULL))
