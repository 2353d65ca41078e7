/*
 * blas.template.h -- row-major GEMM and GEMV through the Fortran BLAS (blas.h), for
 * one TYPE (no include guard; instantiated by blas.h; see template.h).
 */

/* y (N,) = alpha x (K,) @ B (K x N, row stride ldb) + beta y. */
static inline void RNN_TNAME(gemv_rm)(int N, int K, TYPE alpha, const TYPE *x, const TYPE *B, int ldb,
                                      TYPE beta, TYPE *y)
{
    /* column-major: y = alpha B^T x + beta y  ==  gemv('N', N, K, B, ldb, x) */
    char no = 'N';
    int one = 1;
    if (N <= 0)
        return;
    RNN_TNAME(blas_gemv)(&no, &N, &K, &alpha, (TYPE *)B, &ldb, (TYPE *)x, &one, &beta, y, &one);
}

/* C (M x N, row stride ldc) = alpha A (M x K, row stride lda) @ B (K x N, row stride
 * ldb) + beta C. One row goes to gemv: a GEMM would repack all of B on every call. */
static inline void RNN_TNAME(gemm_rm)(int M, int N, int K, TYPE alpha, const TYPE *A, int lda,
                                      const TYPE *B, int ldb, TYPE beta, TYPE *C, int ldc)
{
    /* column-major: C^T = alpha B^T A^T + beta C^T  ==  gemm('N', 'N', N, M, K, B, A) */
    char no = 'N';
    if (M <= 0 || N <= 0)
        return;
    if (M == 1) {
        RNN_TNAME(gemv_rm)(N, K, alpha, A, B, ldb, beta, C);
        return;
    }
    RNN_TNAME(blas_gemm)(&no, &no, &N, &M, &K, &alpha, (TYPE *)B, &ldb, (TYPE *)A, &lda, &beta, C, &ldc);
}
