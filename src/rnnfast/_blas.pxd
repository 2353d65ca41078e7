# The one BLAS shim: row-major products on top of scipy's Fortran BLAS.
#
# Row-major C (M x N) = alpha * A (M x K) @ B (K x N) + beta * C is, read column-major,
# C^T = B^T A^T: the same memory, so we call column-major BLAS with the operands
# swapped and no transposes. Leading dimensions are row strides in elements;
# float/double by the fused type. Arguments by value; nothing here allocates or takes
# the GIL.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemv_rm(int N, int K, floating alpha,
                         const floating *x,                 # IN  (K,): one row
                         const floating *B, int ldb,        # IN  (K, N), row stride ldb
                         floating beta,
                         floating *y                        # OUT (N,): y = alpha x @ B + beta y
                         ) noexcept nogil:
    # column-major: y = alpha B^T x + beta y  ==  gemv('N', N, K, B, ldb, x)
    cdef char no = b'N'
    cdef int one = 1
    if N <= 0:
        return
    if floating is float:
        sgemv(&no, &N, &K, &alpha, <float *> B, &ldb, <float *> x, &one, &beta, y, &one)
    else:
        dgemv(&no, &N, &K, &alpha, <double *> B, &ldb, <double *> x, &one, &beta, y, &one)


cdef inline void gemm_rm(int M, int N, int K, floating alpha,
                         const floating *A, int lda,      # IN  (M, K), row stride lda
                         const floating *B, int ldb,      # IN  (K, N), row stride ldb
                         floating beta,
                         floating *C, int ldc             # OUT (M, N), row stride ldc
                         ) noexcept nogil:
    # column-major: C^T = alpha B^T A^T + beta C^T  ==  gemm('N', 'N', N, M, K, B, A)
    # One row goes to gemv: a GEMM would repack all of B on every call.
    cdef char no = b'N'
    if M <= 0 or N <= 0:
        return
    if M == 1:
        gemv_rm(N, K, alpha, A, B, ldb, beta, C)
        return
    if floating is float:
        sgemm(&no, &no, &N, &M, &K, &alpha, <float *> B, &ldb, <float *> A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&no, &no, &N, &M, &K, &alpha, <double *> B, &ldb, <double *> A, &lda,
              &beta, C, &ldc)
