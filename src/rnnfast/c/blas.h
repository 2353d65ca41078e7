/*
 * blas.h -- the one BLAS shim: row-major products on top of a Fortran BLAS, the
 * OpenBLAS of the scipy-openblas32 wheel (32-bit integers, symbols scipy_sgemm_, ...).
 * rnnfast._threads.load_kernels opens that library at import and hands the four
 * routines' addresses over (_kernels._set_blas -> rnn_blas_init); nothing links
 * against it, so the wheel neither vendors it nor needs it at build time. The engine
 * calls RNN_TNAME(gemm_rm), always from inside its own parallel region, with the
 * library held to one thread (rnnfast._threads.blas_single_threaded).
 *
 * Row-major C (M x N) = alpha * A (M x K) @ B (K x N) + beta * C is, read
 * column-major, C^T = B^T A^T: the same memory, so column-major BLAS is called with
 * the operands swapped and no transposes. Leading dimensions are row strides in
 * elements. Nothing here allocates.
 */
#ifndef RNNFAST_BLAS_H
#define RNNFAST_BLAS_H

#include "template.h"

typedef void rnn_sgemm_fn(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                          float *a, int *lda, float *b, int *ldb, float *beta, float *c, int *ldc);
typedef void rnn_dgemm_fn(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                          double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                          int *ldc);
typedef void rnn_sgemv_fn(char *trans, int *m, int *n, float *alpha, float *a, int *lda, float *x,
                          int *incx, float *beta, float *y, int *incy);
typedef void rnn_dgemv_fn(char *trans, int *m, int *n, double *alpha, double *a, int *lda,
                          double *x, int *incx, double *beta, double *y, int *incy);

/* The routines, by the suffix of their type (RNN_TNAME(blas_gemm): rnn_blas_gemm_f). */
static rnn_sgemm_fn *rnn_blas_gemm_f = 0;
static rnn_dgemm_fn *rnn_blas_gemm_d = 0;
static rnn_sgemv_fn *rnn_blas_gemv_f = 0;
static rnn_dgemv_fn *rnn_blas_gemv_d = 0;

static void rnn_blas_init(rnn_sgemm_fn *sgemm, rnn_dgemm_fn *dgemm, rnn_sgemv_fn *sgemv,
                          rnn_dgemv_fn *dgemv)
{
    rnn_blas_gemm_f = sgemm;
    rnn_blas_gemm_d = dgemm;
    rnn_blas_gemv_f = sgemv;
    rnn_blas_gemv_d = dgemv;
}

#define TYPE float
#include "blas.template.h"
#undef TYPE
#define TYPE double
#include "blas.template.h"
#undef TYPE

#endif /* RNNFAST_BLAS_H */
