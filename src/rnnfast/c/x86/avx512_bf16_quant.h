/*
 * x86/avx512_bf16_quant.h -- the bf16 product for AVX512_BF16 (quant.h): each row of
 * A rounded to bf16 (vcvtneps2bf16), then vdpbf16ps: per float lane, the products of
 * a pair of bf16 values added to the float sum one after the other (2g+1, then 2g).
 * Tiles: one row against two panels (each output is one chain over k, so the
 * chains come from columns: 8), or up to four rows against one, as
 * x86/avx512_vnni_quant.h's. One row (a batch-1 step) runs its panel pairs forward
 * and backward in turn, call after call on a thread: a step starts on the pair the
 * last one read last, whose later lines are still in L1 (LSTM H = 128: 128 KB of
 * weights, a pair 32 KB; Zen 4 L1 32 KB). Only the order of the columns changes, not
 * the k order of any sum: the same bits. Against four panels in a fixed order: LSTM
 * H = 128's product 1.16x on Zen 4 (microbenchmark), H = 256 (512 KB) the same.
 *
 * Included by quant.h where runtime dispatch is built (GCC on x86-64).
 */
#ifndef RNNFAST_X86_AVX512_BF16_QUANT_H
#define RNNFAST_X86_AVX512_BF16_QUANT_H

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512bf16,avx2,fma")
#include <immintrin.h>

/* a16[0:Kp] = the row in bf16 (round to nearest even; zeros past K). */
RNN_INLINE void rnn_bf16_row_avx512(const float *a, long K, long Kp, unsigned short *a16)
{
    long k;
    for (k = 0; k < K; k += 16) {
        __mmask16 t = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(t, a + k));
        _mm256_mask_storeu_epi16(a16 + k, t, (__m256i)v);
    }
    for (k = K; k < Kp; k++) a16[k] = 0;
}

RNN_INLINE void rnn_bf16_tile(const int MR, const int NP, long Kp, long N, long p,
                              const unsigned short *a16, long lda16, const unsigned short *Bq,
                              const float *bias, float *C, long ldc)
{
    __m512 acc[RNN_VNNI_ROWS * RNN_VNNI_PANELS][4];
    long g, Kg = Kp / 2, pstride = Kp * RNN_PANEL_COLS;
    const unsigned short *bp = Bq + p * pstride;
    int r, n, q;
    for (n = 0; n < NP; n++)
        for (q = 0; q < 4; q++) {
            long col = (p + n) * RNN_PANEL_COLS + 16 * q, left = N - col;
            __mmask16 t = left >= 16 ? (__mmask16)0xFFFF
                          : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u));
            __m512 b0 = bias ? _mm512_maskz_loadu_ps(t, bias + col) : _mm512_setzero_ps();
            for (r = 0; r < MR; r++) acc[r * NP + n][q] = b0;
        }
    for (g = 0; g < Kg; g++) {
        for (r = 0; r < MR; r++) {
            int word;
            memcpy(&word, a16 + r * lda16 + 2 * g, 4);
            __m512i av = _mm512_set1_epi32(word);
            for (n = 0; n < NP; n++) {
                const unsigned short *b = bp + n * pstride + g * 2 * RNN_PANEL_COLS;
                for (q = 0; q < 4; q++)
                    acc[r * NP + n][q] = _mm512_dpbf16_ps(
                        acc[r * NP + n][q], (__m512bh)av,
                        (__m512bh)_mm512_loadu_si512((const void *)(b + 32 * q)));
            }
        }
    }
    for (r = 0; r < MR; r++)
        for (n = 0; n < NP; n++)
            for (q = 0; q < 4; q++) {
                long col = (p + n) * RNN_PANEL_COLS + 16 * q, left = N - col;
                if (left > 0)
                    _mm512_mask_storeu_ps(C + r * ldc + col,
                                          left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u),
                                          acc[r * NP + n][q]);
            }
}

/* The panel order of this thread's next one-row product (see the top of this file). */
static __thread int rnn_bf16_back;

/* The rows this thread rounded last when they were named (quant.h: rnn_qrows), up to
 * RNN_BF16_KEPT_BYTES (a blocked LSTM H = 512, B = 64 step's state: 64 KB; its chunk's
 * input rows: 128 KB), Kp apart. LSTM H = 512, B = 64, T = 100, one thread: its eight
 * unit blocks rounded the state and the input rows eight times each, 2.6% of a product
 * (C harness); kept, 133.4 -> 130.1 ms a call (interleaved A/B, chrt). */
#define RNN_BF16_KEPT_BYTES 131072
static __thread struct {
    rnn_qrows name;
    const float *A;
    long lda, M, K;
} rnn_bf16_kept_key;
static __thread unsigned short rnn_bf16_kept[RNN_BF16_KEPT_BYTES / sizeof(unsigned short)]
    __attribute__((aligned(64)));

/* The M rows of A rounded to bf16 (Kp apart) if they are named and fit: kept from this
 * thread's last product on them, or rounded now and kept; else NULL. */
static const unsigned short *rnn_bf16_named_rows(long M, long K, long Kp, const float *A, long lda)
{
    long r;
    if (rnn_qrows_now.call == 0 || M * Kp > (long)(RNN_BF16_KEPT_BYTES / sizeof(unsigned short)))
        return NULL;
    if (rnn_bf16_kept_key.name.call == rnn_qrows_now.call && rnn_bf16_kept_key.name.part == rnn_qrows_now.part
        && rnn_bf16_kept_key.A == A && rnn_bf16_kept_key.lda == lda && rnn_bf16_kept_key.M == M
        && rnn_bf16_kept_key.K == K)
        return rnn_bf16_kept;
    for (r = 0; r < M; r++) rnn_bf16_row_avx512(A + r * lda, K, Kp, rnn_bf16_kept + r * Kp);
    rnn_bf16_kept_key.name = rnn_qrows_now;
    rnn_bf16_kept_key.A = A;
    rnn_bf16_kept_key.lda = lda;
    rnn_bf16_kept_key.M = M;
    rnn_bf16_kept_key.K = K;
    return rnn_bf16_kept;
}

/* Rows i..i+mg-1 of A in bf16, Kp apart: from the named rows, or rounded now into own. */
RNN_INLINE const unsigned short *rnn_bf16_group(const unsigned short *named, long i, long mg, const float *A,
                                                long lda, long K, long Kp, unsigned short *own)
{
    long r;
    if (named != NULL)
        return named + i * Kp;
    for (r = 0; r < mg; r++) rnn_bf16_row_avx512(A + (i + r) * lda, K, Kp, own + r * Kp);
    return own;
}

static void rnn_qgemm_bf16_avx512_bf16(long M, long N, long K, const float *A, long lda,
                                       const unsigned short *Bq, const float *bias, float *C,
                                       long ldc)
{
    long Kp = rnn_qpad_bf16(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, r0, mg;
    long grp = rnn_qgroup_rows(Kp * (long)sizeof(unsigned short));
    const unsigned short *named = rnn_bf16_named_rows(M, K, Kp, A, lda);
    unsigned short stacka[RNN_QGROUP_BYTES / sizeof(unsigned short)] __attribute__((aligned(64)));
    unsigned short *own = named != NULL || grp > 0
                              ? stacka
                              : (unsigned short *)malloc((size_t)(RNN_QGROUP * Kp) * sizeof(unsigned short));
    const unsigned short *a16;
    int mr;
    if (own == NULL)
        return;
    if (grp == 0)
        grp = RNN_QGROUP;
    for (i = 0; i < M; i += grp) {
        float *ci = C + i * ldc;
        mg = M - i < grp ? M - i : grp;
        a16 = rnn_bf16_group(named, i, mg, A, lda, K, Kp, own);
        if (mg == 1) {
            /* panels in pairs, every other call from the last pair back (see the top
             * of this file); an odd panel last going forward, first going back */
            long n2 = np / 2 * 2;
            int back = rnn_bf16_back ^= 1;
            if (back && n2 < np)
                rnn_bf16_tile(1, 1, Kp, N, n2, a16, Kp, Bq, bias, ci, ldc);
            for (p = 0; p < n2; p += 2)
                rnn_bf16_tile(1, 2, Kp, N, back ? n2 - 2 - p : p, a16, Kp, Bq, bias, ci, ldc);
            if (!back && n2 < np)
                rnn_bf16_tile(1, 1, Kp, N, n2, a16, Kp, Bq, bias, ci, ldc);
            continue;
        }
        for (p = 0; p < np; p++) {
            for (r0 = 0; r0 < mg; r0 += RNN_VNNI_ROWS) {
                const unsigned short *ar = a16 + r0 * Kp;
                float *cr = ci + r0 * ldc;
                mr = mg - r0 < RNN_VNNI_ROWS ? (int)(mg - r0) : RNN_VNNI_ROWS;
                switch (mr) {
                case 4: rnn_bf16_tile(4, 1, Kp, N, p, ar, Kp, Bq, bias, cr, ldc); break;
                case 3: rnn_bf16_tile(3, 1, Kp, N, p, ar, Kp, Bq, bias, cr, ldc); break;
                case 2: rnn_bf16_tile(2, 1, Kp, N, p, ar, Kp, Bq, bias, cr, ldc); break;
                default: rnn_bf16_tile(1, 1, Kp, N, p, ar, Kp, Bq, bias, cr, ldc); break;
                }
            }
        }
    }
    if (own != stacka)
        free(own);
}

#pragma GCC pop_options

static int rnn_cpu_has_avx512_bf16(void)
{
    __builtin_cpu_init();
    return rnn_cpu_has_avx512_vnni() && __builtin_cpu_supports("avx512bf16");
}

#endif /* RNNFAST_X86_AVX512_BF16_QUANT_H */
