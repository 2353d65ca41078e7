# The one BLAS shim: row-major GEMM on top of scipy's Fortran BLAS.
#
# Row-major C (M x N) = alpha * A (M x K) @ B (K x N) + beta * C is, read column-major,
# C^T = B^T A^T: the same memory, so we call column-major gemm with the operands swapped
# and no transposes. Leading dimensions are row strides in elements; float/double by
# the fused type. Arguments by value; nothing here allocates or takes the GIL.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm_rm(int M, int N, int K, floating alpha,
                         const floating *A, int lda,      # IN  (M, K), row stride lda
                         const floating *B, int ldb,      # IN  (K, N), row stride ldb
                         floating beta,
                         floating *C, int ldc             # OUT (M, N), row stride ldc
                         ) noexcept nogil:
    cdef char no = b'N'
    if M <= 0 or N <= 0:
        return
    if floating is float:
        sgemm(&no, &no, &N, &M, &K, &alpha, <float *> B, &ldb, <float *> A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&no, &no, &N, &M, &K, &alpha, <double *> B, &ldb, <double *> A, &lda,
              &beta, C, &ldc)
