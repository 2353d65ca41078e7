/*
 * _packgemm.h -- products on pre-packed weights: the per-step recurrent product h U
 * and the input projection x W.
 *
 * Design: a recurrent layer multiplies its state by the same recurrent weights U at
 * every time step. A BLAS GEMM repacks U on every call (OpenBLAS spent 12-22% of an
 * LSTM step copying it) and a GEMV at batch 1 reads U with the row stride of the
 * whole matrix. Here U is packed once, when the layer is built (layers.py), into
 * panels of RNN_NR = 64 columns: panel p holds U[k, 64p : 64p + 64] for k = 0..K-1,
 * one contiguous row of 64 values after another, the last panel padded with zeros.
 * Each step then streams the panels once, in order, with no copy. The input weights
 * W are packed the same way where that beats BLAS (_kernels.packed_projection).
 *
 * The product C = bias + A Bp (A: M x K, row stride lda; C: M x N, row stride ldc;
 * bias: one value per column, or none) runs a register tile of up to 6 rows x 64
 * columns (24 AVX-512 accumulators, 4 panel loads and 6 broadcasts per k), panel by
 * panel, so a panel is read from cache once per 6 rows. One row (batch 1) takes two
 * panels at a time: 8 independent accumulator chains hide the FMA latency; there the
 * loads bound it (about 32 bytes a cycle on this Zen 4, in L1 as in L2: 256-bit
 * loads measured no better). Every element of C is one chain of fused multiply-adds
 * over k = 0..K-1, starting from its bias (or zero), whatever M, the tile or the
 * thread: a row's result does not depend on the batch it is in nor on the thread
 * count.
 *
 * Instruction sets: the AVX-512 float kernel uses intrinsics; every other case
 * (double, float below AVX-512) runs a portable loop the compiler vectorizes, built
 * per instruction set like _cellmath.h and chosen by the same switch (rnn_isa_level:
 * RNNFAST_ISA). Packing and sizes do not depend on the instruction set.
 */
#ifndef RNNFAST_PACKGEMM_H
#define RNNFAST_PACKGEMM_H

#include <string.h>
#include "_cellmath.h"

#define RNN_NR 64          /* columns per panel */
#define RNN_MR 6           /* rows per register tile (AVX-512 float) */

/* Values in the packed form of a K x N block. */
static inline long rnn_packed_size(long K, long N)
{
    return K * ((N + RNN_NR - 1) / RNN_NR) * RNN_NR;
}

#define RNN_DEFINE_PACK(T, S)                                                               \
/* dst = the packed form of B (K x N, row stride ldb); rnn_packed_size(K, N) values. */     \
static void rnn_pack_##S(long K, long N, const T *B, long ldb, T *dst)                      \
{                                                                                           \
    long p, k, np = (N + RNN_NR - 1) / RNN_NR;                                              \
    for (p = 0; p < np; p++) {                                                              \
        long j0 = p * RNN_NR, nc = N - j0 < RNN_NR ? N - j0 : RNN_NR;                       \
        T *d = dst + p * K * RNN_NR;                                                        \
        for (k = 0; k < K; k++) {                                                           \
            memcpy(d + k * RNN_NR, B + k * ldb + j0, (size_t)nc * sizeof(T));               \
            if (nc < RNN_NR)                                                                \
                memset(d + k * RNN_NR + nc, 0, (size_t)(RNN_NR - nc) * sizeof(T));          \
        }                                                                                   \
    }                                                                                       \
}

RNN_DEFINE_PACK(float, f)
RNN_DEFINE_PACK(double, d)

/* ---- the portable kernel: one row at a time, a panel's 64 sums in a local array ---- */

#define RNN_DEFINE_PACKGEMM(T, S, I)                                                        \
static void rnn_gemm_packed_##S##_##I(int M, int N, int K, const T *A, long lda,            \
                                      const T *Bp, const T *bias, T *C, long ldc)           \
{                                                                                           \
    int p, i, k, j, np = (N + RNN_NR - 1) / RNN_NR;                                         \
    for (p = 0; p < np; p++) {                                                              \
        const T *bp = Bp + (long)p * K * RNN_NR;                                            \
        int nc = N - p * RNN_NR < RNN_NR ? N - p * RNN_NR : RNN_NR;                         \
        for (i = 0; i < M; i++) {                                                           \
            T acc[RNN_NR];                                                                  \
            const T *a = A + i * lda;                                                       \
            for (j = 0; j < RNN_NR; j++)                                                    \
                acc[j] = bias && j < nc ? bias[p * RNN_NR + j] : (T)0;                      \
            for (k = 0; k < K; k++) {                                                       \
                T av = a[k];                                                                \
                const T *b = bp + (long)k * RNN_NR;                                         \
                for (j = 0; j < RNN_NR; j++) acc[j] += av * b[j];                           \
            }                                                                               \
            memcpy(C + i * ldc + p * RNN_NR, acc, (size_t)nc * sizeof(T));                  \
        }                                                                                   \
    }                                                                                       \
}

RNN_DEFINE_PACKGEMM(float, f, base)
RNN_DEFINE_PACKGEMM(double, d, base)

#if RNN_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma")
RNN_DEFINE_PACKGEMM(float, f, avx2)
RNN_DEFINE_PACKGEMM(double, d, avx2)
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#include <immintrin.h>
RNN_DEFINE_PACKGEMM(double, d, avx512)

/* Store the 64 sums of one row (four registers), the first nc of them. */
RNN_INLINE void rnn_store64_avx512(float *c, const __m512 *v, int nc)
{
    int q;
    if (nc == RNN_NR) {
        for (q = 0; q < 4; q++) _mm512_storeu_ps(c + 16 * q, v[q]);
        return;
    }
    for (q = 0; q < 4 && 16 * q < nc; q++) {
        int left = nc - 16 * q;
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        _mm512_mask_storeu_ps(c + 16 * q, m, v[q]);
    }
}

/* C[0:MR, panel] = A[0:MR] Bp[panel]; MR is a constant after inlining, so the
 * accumulators live in registers. */
RNN_INLINE void rnn_tile_avx512(const int MR, int K, const float *A, long lda,
                                const float *bp, const __m512 *init, float *C, long ldc, int nc)
{
    __m512 acc[RNN_MR][4];
    int r, q, k;
    for (r = 0; r < MR; r++)
        for (q = 0; q < 4; q++) acc[r][q] = init[q];
    for (k = 0; k < K; k++) {
        const float *b = bp + (long)k * RNN_NR;
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        __m512 b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
        for (r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(A[r * lda + k]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
        }
    }
    for (r = 0; r < MR; r++) rnn_store64_avx512(C + r * ldc, acc[r], nc);
}

/* One row against two panels at once: eight independent chains. */
RNN_INLINE void rnn_row2_avx512(int K, const float *a, const float *bp0, const float *bp1,
                                const __m512 *init0, const __m512 *init1, float *c, int nc1)
{
    __m512 u[4], v[4];
    int q, k;
    for (q = 0; q < 4; q++) {
        u[q] = init0[q];
        v[q] = init1[q];
    }
    for (k = 0; k < K; k++) {
        __m512 x = _mm512_set1_ps(a[k]);
        const float *b0 = bp0 + (long)k * RNN_NR, *b1 = bp1 + (long)k * RNN_NR;
        for (q = 0; q < 4; q++) {
            u[q] = _mm512_fmadd_ps(x, _mm512_loadu_ps(b0 + 16 * q), u[q]);
            v[q] = _mm512_fmadd_ps(x, _mm512_loadu_ps(b1 + 16 * q), v[q]);
        }
    }
    rnn_store64_avx512(c, u, RNN_NR);
    rnn_store64_avx512(c + RNN_NR, v, nc1);
}

/* The starting sums of panel p: its 64 bias values (zeros past N), or zeros. */
RNN_INLINE void rnn_init64_avx512(__m512 *v, const float *bias, int p, int nc)
{
    int q;
    for (q = 0; q < 4; q++) {
        int left = nc - 16 * q;
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF
                      : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u));
        v[q] = bias ? _mm512_maskz_loadu_ps(m, bias + p * RNN_NR + 16 * q) : _mm512_setzero_ps();
    }
}

static void rnn_gemm_packed_f_avx512(int M, int N, int K, const float *A, long lda,
                                     const float *Bp, const float *bias, float *C, long ldc)
{
    int p = 0, i, np = (N + RNN_NR - 1) / RNN_NR;
    __m512 init[4], init1[4];
    if (M == 1) {
        for (; p + 1 < np; p += 2) {
            int nc1 = N - (p + 1) * RNN_NR < RNN_NR ? N - (p + 1) * RNN_NR : RNN_NR;
            rnn_init64_avx512(init, bias, p, RNN_NR);
            rnn_init64_avx512(init1, bias, p + 1, nc1);
            rnn_row2_avx512(K, A, Bp + (long)p * K * RNN_NR, Bp + (long)(p + 1) * K * RNN_NR,
                            init, init1, C + p * RNN_NR, nc1);
        }
    }
    for (; p < np; p++) {
        const float *bp = Bp + (long)p * K * RNN_NR;
        float *c = C + p * RNN_NR;
        int nc = N - p * RNN_NR < RNN_NR ? N - p * RNN_NR : RNN_NR;
        rnn_init64_avx512(init, bias, p, nc);
        for (i = 0; i + RNN_MR <= M; i += RNN_MR)
            rnn_tile_avx512(RNN_MR, K, A + i * lda, lda, bp, init, c + i * ldc, ldc, nc);
        switch (M - i) {
        case 5: rnn_tile_avx512(5, K, A + i * lda, lda, bp, init, c + i * ldc, ldc, nc); break;
        case 4: rnn_tile_avx512(4, K, A + i * lda, lda, bp, init, c + i * ldc, ldc, nc); break;
        case 3: rnn_tile_avx512(3, K, A + i * lda, lda, bp, init, c + i * ldc, ldc, nc); break;
        case 2: rnn_tile_avx512(2, K, A + i * lda, lda, bp, init, c + i * ldc, ldc, nc); break;
        case 1: rnn_tile_avx512(1, K, A + i * lda, lda, bp, init, c + i * ldc, ldc, nc); break;
        default: break;
        }
    }
}
#pragma GCC pop_options
#endif

/* C (M x N, row stride ldc) = bias + A (M x K, row stride lda) times the packed K x N
 * block Bp, on the instruction set chosen at import; bias (N,) or NULL for zeros. */
#if RNN_X86_DISPATCH
#define RNN_PACKGEMM_ISA_CALLS(S)                                                           \
    if (rnn_isa == 2) { rnn_gemm_packed_##S##_avx512(M, N, K, A, lda, Bp, bias, C, ldc); return; } \
    if (rnn_isa == 1) { rnn_gemm_packed_##S##_avx2(M, N, K, A, lda, Bp, bias, C, ldc); return; }
#else
#define RNN_PACKGEMM_ISA_CALLS(S)
#endif

#define RNN_DEFINE_PACKGEMM_DISPATCH(T, S)                                                  \
static void rnn_gemm_packed_##S(int M, int N, int K, const T *A, long lda, const T *Bp,     \
                                const T *bias, T *C, long ldc)                              \
{                                                                                           \
    if (M <= 0 || N <= 0)                                                                   \
        return;                                                                             \
    RNN_PACKGEMM_ISA_CALLS(S)                                                               \
    rnn_gemm_packed_##S##_base(M, N, K, A, lda, Bp, bias, C, ldc);                          \
}

RNN_DEFINE_PACKGEMM_DISPATCH(float, f)
RNN_DEFINE_PACKGEMM_DISPATCH(double, d)

#endif /* RNNFAST_PACKGEMM_H */
