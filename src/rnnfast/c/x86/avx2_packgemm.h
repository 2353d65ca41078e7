/*
 * x86/avx2_packgemm.h -- the AVX2 float product on packed weights (layout.h):
 * C = bias + A Bp, the contract of packgemm.template.h, register-tiled for CPUs with
 * sixteen 256-bit registers and no AVX-512 (AMD Zen 1-3, Intel Haswell to Alder Lake).
 *
 * A register tile of up to RNN_TILE_ROWS (6) rows x 16 columns (12 accumulators, 2
 * panel loads and 6 broadcasts per k): a 64-column panel is four such slices, and
 * every row tile runs over a slice (K x 16 floats, 16 KiB at K = 256) before the next.
 * (The panel's 256-byte rows put a slice in a quarter of L1's sets, so the row tiles
 * after the first read it from L2; a contiguous copy of the slice measured no faster
 * on Zen 1: bench/README.md, "Session 16".) Many rows are K-blocked with the
 * dispatcher's kblock (rnn_tuning): the sums go to C between blocks and come back.
 * With the tuning's prefetch, a slice's first row tile prefetches the same slice of
 * the next panel into L2. One row (batch 1) runs one panel's 64 columns at once (8
 * independent chains, the panel streamed from L2 in order).
 *
 * Every element of C is one chain of fused multiply-adds over k = 0..K-1 starting
 * from its bias (or zero), whatever M, the tile, the blocking or the thread: a row's
 * result does not depend on the batch it is in nor on the thread count, and it is the
 * portable template's (packgemm.template.h compiled for AVX2 and FMA) bit for bit.
 *
 * Measured (AMD EPYC Zen 1, one thread): bench/README.md, "Session 14: the AVX2
 * product (lead)".
 *
 * Included by x86/avx2_kernels.h inside its `#pragma GCC target` region only.
 */
#ifndef RNNFAST_X86_AVX2_PACKGEMM_H
#define RNNFAST_X86_AVX2_PACKGEMM_H

#include <immintrin.h>

#include "avx2_lanes.h"                 /* rnn_mask8_avx2 */

/* v[0..2*q) = the first nc of 8*nv floats at c (the rest zero); nv registers. */
RNN_INLINE void rnn_loadn_avx2(__m256 *v, int nv, const float *c, long nc)
{
    int q;
    for (q = 0; q < nv; q++) {
        long left = nc - 8 * q;
        v[q] = left >= 8 ? _mm256_loadu_ps(c + 8 * q)
                         : _mm256_maskload_ps(c + 8 * q, rnn_mask8_avx2(left));
    }
}

/* The first nc of the 8*nv floats of v to c. */
RNN_INLINE void rnn_storen_avx2(float *c, const __m256 *v, int nv, long nc)
{
    int q;
    for (q = 0; q < nv && 8 * q < nc; q++) {
        long left = nc - 8 * q;
        if (left >= 8)
            _mm256_storeu_ps(c + 8 * q, v[q]);
        else
            _mm256_maskstore_ps(c + 8 * q, rnn_mask8_avx2(left), v[q]);
    }
}

/* C[0:MR, slice] = A[0:MR] Bp[slice] over K steps: the slice's 16 columns (ns of
 * them stored) of a panel, b = the slice's first column at k = 0 (RNN_PANEL_COLS
 * apart per k); starting from init (the bias) or, with from_c, from the sums in C.
 * With pf, one line a k of the slice pf (the same K steps of the next panel: the
 * first row tile of a slice) is prefetched into L2, so that weights too big for the
 * caches (a vocabulary head's) come from memory while this slice is computed.
 * MR is a constant after inlining, so the accumulators live in registers. */
RNN_INLINE void rnn_tile16_avx2(const int MR, long K, const float *A, long lda, const float *b,
                                const __m256 *init, float *C, long ldc, long ns, int from_c,
                                const float *pf)
{
    __m256 acc[RNN_TILE_ROWS][2];
    long k;
    int r;
    for (r = 0; r < MR; r++) {
        if (from_c)
            rnn_loadn_avx2(acc[r], 2, C + r * ldc, ns);
        else
            acc[r][0] = init[0], acc[r][1] = init[1];
    }
    for (k = 0; k < K; k++, b += RNN_PANEL_COLS) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        if (pf != NULL)     /* (GCC unswitches the loop on it) */
            _mm_prefetch((const char *)(pf + k * RNN_PANEL_COLS), _MM_HINT_T1);
        for (r = 0; r < MR; r++) {
            __m256 a = _mm256_broadcast_ss(A + r * lda + k);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (r = 0; r < MR; r++) rnn_storen_avx2(C + r * ldc, acc[r], 2, ns);
}

/* One row against one whole panel (64 columns, nc stored): 8 chains. */
RNN_INLINE void rnn_row64_avx2(long K, const float *a, const float *bp, const __m256 *init,
                               float *c, long nc)
{
    __m256 acc[8];
    long k;
    int q;
    for (q = 0; q < 8; q++) acc[q] = init[q];
    for (k = 0; k < K; k++, bp += RNN_PANEL_COLS) {
        __m256 x = _mm256_broadcast_ss(a + k);
        for (q = 0; q < 8; q++) acc[q] = _mm256_fmadd_ps(x, _mm256_loadu_ps(bp + 8 * q), acc[q]);
    }
    rnn_storen_avx2(c, acc, 8, nc);
}

static void rnn_gemm_packed_f_avx2(long M, long N, long K, const float *A, long lda,
                                   const float *Bp, const float *bias, float *C, long ldc)
{
    long p, s, i, i0, i1, k0, kn, np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    const long kblock = rnn_tuning_now.kblock, mblock = rnn_tuning_now.mblock;
    long kb = M > RNN_TILE_ROWS && K > kblock ? kblock : (K > 0 ? K : 1);
    __m256 init[8];
    /* row blocks outermost (their rows of A stay in L2 while every panel runs over
     * them), then panel by panel, slice by slice (16 columns, none past the panel's
     * nc), K in blocks when many rows share them, the row tiles innermost */
    for (i0 = 0; i0 < M; i0 = i1) {
        i1 = M - i0 > mblock ? i0 + mblock : M;
        for (p = 0; p < np; p++) {
            const float *bp = Bp + p * K * RNN_PANEL_COLS;
            float *c = C + p * RNN_PANEL_COLS;
            long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
            if (bias != NULL)
                rnn_loadn_avx2(init, 8, bias + p * RNN_PANEL_COLS, nc);
            else
                for (s = 0; s < 8; s++) init[s] = _mm256_setzero_ps();
            if (M == 1) {
                rnn_row64_avx2(K, A, bp, init, c, nc);
                continue;
            }
            for (s = 0; 16 * s < nc; s++) {
                long ns = nc - 16 * s < 16 ? nc - 16 * s : 16;
                const float *bs = bp + 16 * s;
                float *cs = c + 16 * s;
                for (k0 = 0; k0 == 0 || k0 < K; k0 += kb) {
                    const float *a = A + k0, *b = bs + k0 * RNN_PANEL_COLS;
                    int from_c = k0 > 0;
                    kn = K - k0 < kb ? K - k0 : kb;
                    const float *pf = rnn_tuning_now.prefetch && p + 1 < np ? b + K * RNN_PANEL_COLS : NULL;
                    for (i = i0; i + RNN_TILE_ROWS <= i1; i += RNN_TILE_ROWS, pf = NULL)
                        rnn_tile16_avx2(RNN_TILE_ROWS, kn, a + i * lda, lda, b, init + 2 * s,
                                        cs + i * ldc, ldc, ns, from_c, pf);
#define RNN_T16(n) case n: rnn_tile16_avx2(n, kn, a + i * lda, lda, b, init + 2 * s, cs + i * ldc, ldc, ns, from_c, pf); break
                    switch (i1 - i) {
                    RNN_T16(5); RNN_T16(4); RNN_T16(3); RNN_T16(2); RNN_T16(1);
                    default: break;
                    }
#undef RNN_T16
                }
            }
        }
    }
}

#endif /* RNNFAST_X86_AVX2_PACKGEMM_H */
