/*
 * x86/avx512_vnni_quant.h -- the int8 product for AVX512-VNNI (quant.h): vpdpbusd
 * multiplies unsigned bytes by signed bytes, four per int32 lane, summed exactly
 * (the non-saturating form). The activations go in as u = q + 128 (1..255), and the
 * offset comes back out through the per-column comp[j] = 128 * sum_k Wq[k, j].
 *
 * Register tiles: one row against one panel, its K in four interleaved phases (16
 * accumulator chains hide vpdpbusd's latency; the weights stream from cache once per
 * step, one panel after another: a single sequential stream), or up to four rows
 * against one panel (a panel's 256-byte group is loaded once for the four rows). Rows are
 * quantized in groups of up to RNN_QGROUP, and each panel runs over the whole group
 * before the next, so that it is read from cache once per group.
 *
 * One row (a batch-1 step) runs its panels and K forward and backward in turn, call
 * after call on a thread: a layer's recurrent weights larger than L1 (LSTM H = 128:
 * 64 KB, L1 32 KB on Zen 4) are read in a cycle that evicts each line before its next
 * use when the order is always the same; reversed, a step starts on the lines the last
 * one read last, still in L1. The int32 sums are exact, so the order changes no bit.
 *
 * Included by quant.h where runtime dispatch is built (GCC on x86-64).
 */
#ifndef RNNFAST_X86_AVX512_VNNI_QUANT_H
#define RNNFAST_X86_AVX512_VNNI_QUANT_H

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma")
#include <immintrin.h>

/* Rows of the multi-row tile; panels of rnn_vnni_tile's array (bf16's tile too). */
#define RNN_VNNI_ROWS 4
#define RNN_VNNI_PANELS 4

/* u[0:Kp] = the row quantized plus 128 (zeros past K: their weights are zero rows);
 * returns sa. The same arithmetic as rnn_quant_row_s16, sixteen lanes at a time. */
RNN_INLINE float rnn_quant_row_u8_avx512(const float *a, long K, long Kp, unsigned char *u)
{
    __m512 vm = _mm512_setzero_ps(), vinv;
    long k;
    float m, inv;
    for (k = 0; k + 16 <= K; k += 16)
        vm = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(a + k)), vm);
    if (k < K) {
        __mmask16 t = (__mmask16)((1u << (K - k)) - 1u);
        vm = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(t, a + k)), vm);
    }
    m = _mm512_reduce_max_ps(vm);
    inv = rnn_quant_inv(m);
    vinv = _mm512_set1_ps(inv);
    for (k = 0; k < K; k += 16) {
        __mmask16 t = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, a + k), vinv);
        v = _mm512_max_ps(_mm512_min_ps(v, _mm512_set1_ps(127.0f)), _mm512_set1_ps(-127.0f));
        __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(128));
        _mm_mask_storeu_epi8(u + k, t, _mm512_cvtepi32_epi8(qi));
    }
    for (k = K; k < Kp; k++) u[k] = 0;
    return m / 127.0f;
}

/* The mask of 16 columns of which `left` remain (none when left <= 0). */
RNN_INLINE __mmask16 rnn_vnni_mask(long left)
{
    return left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : (__mmask16)0;
}

/* 16 columns of C from their accumulators: fma((float)(acc - comp), sa ws, bias). */
RNN_INLINE __m512 rnn_vnni_value(__m512i acc, __m512i comp, __m512 ws, float sa, __m512 bias)
{
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, comp)),
                           _mm512_mul_ps(_mm512_set1_ps(sa), ws), bias);
}

/* The biases of 16 columns (mask t), zeros without. */
RNN_INLINE __m512 rnn_vnni_bias(const float *bias, long col, __mmask16 t)
{
    return bias ? _mm512_maskz_loadu_ps(t, bias + col) : _mm512_setzero_ps();
}

/* C[col : col + 16] (of which `left` remain) from the accumulators: rnn_vnni_value. */
RNN_INLINE void rnn_vnni_store(__m512i acc, long col, long left, float sa, const float *scale,
                               const int *comp, const float *bias, float *c)
{
    __mmask16 t = rnn_vnni_mask(left);
    _mm512_mask_storeu_ps(c + col, t, rnn_vnni_value(acc, _mm512_maskz_loadu_epi32(t, comp + col),
                                                     _mm512_maskz_loadu_ps(t, scale + col), sa,
                                                     rnn_vnni_bias(bias, col, t)));
}

/* MR rows (quantized, u: row stride ldu) times NP panels starting at panel p. */
RNN_INLINE void rnn_vnni_tile(const int MR, const int NP, long Kp, long N, long p,
                              const unsigned char *u, long ldu, const float *sa,
                              const signed char *Bq, const float *scale, const int *comp,
                              const float *bias, float *C, long ldc)
{
    __m512i acc[RNN_VNNI_ROWS * RNN_VNNI_PANELS][4];
    long g, Kg = Kp / 4, pstride = Kp * RNN_PANEL_COLS;
    const signed char *bp = Bq + p * pstride;
    int r, n, q;
    for (r = 0; r < MR * NP; r++)
        for (q = 0; q < 4; q++) acc[r][q] = _mm512_setzero_si512();
    for (g = 0; g < Kg; g++) {
        for (r = 0; r < MR; r++) {
            int word;
            memcpy(&word, u + r * ldu + 4 * g, 4);
            __m512i av = _mm512_set1_epi32(word);
            for (n = 0; n < NP; n++) {
                const signed char *b = bp + n * pstride + g * 4 * RNN_PANEL_COLS;
                for (q = 0; q < 4; q++)
                    acc[r * NP + n][q] = _mm512_dpbusd_epi32(
                        acc[r * NP + n][q], av, _mm512_loadu_si512((const void *)(b + 64 * q)));
            }
        }
    }
    for (r = 0; r < MR; r++)
        for (n = 0; n < NP; n++)
            for (q = 0; q < 4; q++) {
                long col = (p + n) * RNN_PANEL_COLS + 16 * q;
                if (col < N)
                    rnn_vnni_store(acc[r * NP + n][q], col, N - col, sa[r], scale, comp, bias,
                                   C + r * ldc);
            }
}

/* One row against panel p (batch 1's product): the panel's K in four interleaved
 * phases (groups g = 4i + s, s = 0..3, each with its own four accumulators: sixteen
 * chains hide vpdpbusd's latency), summed at the end (exact int32: the same bits in
 * any order). Each iteration reads 1 KB of the panel in order, so the product is one
 * sequential stream, the panels one after another: on Zen 4 this read LSTM H = 128's
 * 64 KB a step ~18% faster than four panels side by side (four streams 8 KB apart).
 * back: the panel from its end. */
RNN_INLINE void rnn_vnni_row(int back, long Kp, long N, long p, const unsigned char *u, float sa,
                             const signed char *Bq, const float *scale, const int *comp,
                             const float *bias, float *C)
{
    long i, g, Kg = Kp / 4, K4 = Kg / 4 * 4;
    const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
    __m512i a0[4], a1[4], a2[4], a3[4];
    int q;
    for (q = 0; q < 4; q++)
        a0[q] = a1[q] = a2[q] = a3[q] = _mm512_setzero_si512();
    for (i = 0; i < K4; i += 4) {
        int w[4];
        const signed char *b;
        g = back ? Kg - 4 - i : i;
        b = bp + g * 4 * RNN_PANEL_COLS;
        memcpy(w, u + 4 * g, 16);
        __m512i v0 = _mm512_set1_epi32(w[0]), v1 = _mm512_set1_epi32(w[1]);
        __m512i v2 = _mm512_set1_epi32(w[2]), v3 = _mm512_set1_epi32(w[3]);
        for (q = 0; q < 4; q++) {
            a0[q] = _mm512_dpbusd_epi32(a0[q], v0, _mm512_loadu_si512((const void *)(b + 64 * q)));
            a1[q] = _mm512_dpbusd_epi32(a1[q], v1, _mm512_loadu_si512((const void *)(b + 256 + 64 * q)));
            a2[q] = _mm512_dpbusd_epi32(a2[q], v2, _mm512_loadu_si512((const void *)(b + 512 + 64 * q)));
            a3[q] = _mm512_dpbusd_epi32(a3[q], v3, _mm512_loadu_si512((const void *)(b + 768 + 64 * q)));
        }
    }
    for (; i < Kg; i++) {
        int w;
        g = back ? Kg - 1 - i : i;
        memcpy(&w, u + 4 * g, 4);
        __m512i v = _mm512_set1_epi32(w);
        for (q = 0; q < 4; q++)
            a0[q] = _mm512_dpbusd_epi32(a0[q], v, _mm512_loadu_si512((const void *)(bp + g * 4 * RNN_PANEL_COLS + 64 * q)));
    }
    {
        __m512 out[4];
        __mmask16 t[4];
        int nq = 0;
        /* every value before the first store: the compiler cannot know that C does not
         * alias scale, comp or bias, so a store between them orders the loads after it */
        for (q = 0; q < 4; q++) {
            long col = p * RNN_PANEL_COLS + 16 * q;
            __m512i acc = _mm512_add_epi32(_mm512_add_epi32(a0[q], a1[q]), _mm512_add_epi32(a2[q], a3[q]));
            t[q] = rnn_vnni_mask(N - col);
            if (!t[q])
                break;
            out[q] = rnn_vnni_value(acc, _mm512_maskz_loadu_epi32(t[q], comp + col),
                                    _mm512_maskz_loadu_ps(t[q], scale + col), sa, rnn_vnni_bias(bias, col, t[q]));
            nq = q + 1;
        }
        for (q = 0; q < nq; q++)
            _mm512_mask_storeu_ps(C + p * RNN_PANEL_COLS + 16 * q, t[q], out[q]);
    }
}

/* One row's four accumulators of a panel += the row's 4 bytes w times q0..q3. */
#define RNN_VNNI_DP4(a0, a1, a2, a3, w)                 \
    do {                                                \
        __m512i v_ = _mm512_set1_epi32(w);              \
        a0 = _mm512_dpbusd_epi32(a0, v_, q0);           \
        a1 = _mm512_dpbusd_epi32(a1, v_, q1);           \
        a2 = _mm512_dpbusd_epi32(a2, v_, q2);           \
        a3 = _mm512_dpbusd_epi32(a3, v_, q3);           \
    } while (0)

/* Four rows against one panel p (the multi-row product): sixteen named accumulators,
 * as rnn_vnni_row (rnn_vnni_tile's array of them costs the register copies: 7% of
 * an LSTM(128)'s input projection, M = 100). */
RNN_INLINE void rnn_vnni_rows4(long Kp, long N, long p, const unsigned char *u, long ldu,
                               const float *sa, const signed char *Bq, const float *scale,
                               const int *comp, const float *bias, float *C, long ldc)
{
    long g, Kg = Kp / 4;
    const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
    const unsigned char *u0 = u, *u1 = u + ldu, *u2 = u1 + ldu, *u3 = u2 + ldu;
    __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00;
    __m512i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512i a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    __m512i a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (g = 0; g < Kg; g++) {
        int w0, w1, w2, w3;
        const signed char *b = bp + g * 4 * RNN_PANEL_COLS;
        __m512i q0 = _mm512_loadu_si512((const void *)b), q1 = _mm512_loadu_si512((const void *)(b + 64));
        __m512i q2 = _mm512_loadu_si512((const void *)(b + 128)), q3 = _mm512_loadu_si512((const void *)(b + 192));
        memcpy(&w0, u0 + 4 * g, 4);
        memcpy(&w1, u1 + 4 * g, 4);
        memcpy(&w2, u2 + 4 * g, 4);
        memcpy(&w3, u3 + 4 * g, 4);
        RNN_VNNI_DP4(a00, a01, a02, a03, w0);
        RNN_VNNI_DP4(a10, a11, a12, a13, w1);
        RNN_VNNI_DP4(a20, a21, a22, a23, w2);
        RNN_VNNI_DP4(a30, a31, a32, a33, w3);
    }
    {
        /* the four rows share a column group's scales, compensations and biases: loaded
         * once (rnn_vnni_store's arithmetic, the same bits) */
        __m512i acc[16] = {a00, a01, a02, a03, a10, a11, a12, a13,
                           a20, a21, a22, a23, a30, a31, a32, a33};
        int r, q;
        for (q = 0; q < 4; q++) {
            long col = p * RNN_PANEL_COLS + 16 * q;
            __mmask16 t = rnn_vnni_mask(N - col);
            __m512 ws, b;
            __m512i cp;
            if (!t)
                break;
            ws = _mm512_maskz_loadu_ps(t, scale + col);
            b = rnn_vnni_bias(bias, col, t);
            cp = _mm512_maskz_loadu_epi32(t, comp + col);
            for (r = 0; r < 4; r++)
                _mm512_mask_storeu_ps(C + r * ldc + col, t, rnn_vnni_value(acc[4 * r + q], cp, ws, sa[r], b));
        }
    }
}

/* The direction of this thread's next one-row product (see the top of this file). */
static __thread int rnn_vnni_back;

static void rnn_qgemm_i8_avx512_vnni(long M, long N, long K, const float *A, long lda,
                                     const signed char *Bq, const float *scale, const int *comp,
                                     const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, r;
    long grp = rnn_qgroup_rows(Kp);
    unsigned char stacku[RNN_QGROUP_BYTES] __attribute__((aligned(64)));
    unsigned char *u = grp > 0 ? stacku : (unsigned char *)malloc((size_t)(RNN_QGROUP * Kp));
    float sa[RNN_QGROUP];
    long mg, r0;
    int mr;
    if (u == NULL)
        return;
    if (grp == 0)
        grp = RNN_QGROUP;
    for (i = 0; i < M; i += grp) {
        mg = M - i < grp ? M - i : grp;
        for (r = 0; r < mg; r++)
            sa[r] = rnn_quant_row_u8_avx512(A + (i + r) * lda, K, Kp, u + r * Kp);
        float *ci = C + i * ldc;
        if (mg == 1) {
            /* panel after panel; every other call from the last back */
            int back = rnn_vnni_back ^= 1;
            for (p = 0; p < np; p++)
                rnn_vnni_row(back, Kp, N, back ? np - 1 - p : p, u, sa[0], Bq, scale, comp, bias, ci);
            continue;
        }
        for (p = 0; p < np; p++) {
            for (r0 = 0; r0 < mg; r0 += RNN_VNNI_ROWS) {
                const unsigned char *ur = u + r0 * Kp;
                float *cr = ci + r0 * ldc;
                mr = mg - r0 < RNN_VNNI_ROWS ? (int)(mg - r0) : RNN_VNNI_ROWS;
                switch (mr) {
                case 4: rnn_vnni_rows4(Kp, N, p, ur, Kp, sa + r0, Bq, scale, comp, bias, cr, ldc); break;
                case 3: rnn_vnni_tile(3, 1, Kp, N, p, ur, Kp, sa + r0, Bq, scale, comp, bias, cr, ldc); break;
                case 2: rnn_vnni_tile(2, 1, Kp, N, p, ur, Kp, sa + r0, Bq, scale, comp, bias, cr, ldc); break;
                default: rnn_vnni_tile(1, 1, Kp, N, p, ur, Kp, sa + r0, Bq, scale, comp, bias, cr, ldc); break;
                }
            }
        }
    }
    if (u != stacku)
        free(u);
}

/* -- the K-grouped product (quant.h: int16 activations, scales per group of kg rows) --
 * vpdpbusd multiplies unsigned bytes only, so each int16 activation q is split into
 * q = 256 qh + ql (ql = q & 255 in 0..255, qh = q >> 8 in -128..127) and both halves go
 * through vpdpbusd on the same weight bytes: the group's exact sum is 256 (hi - comp_g)
 * + lo, hi over qh + 128 (comp_g = 128 sum_k Wq[k, j] over the group), lo over ql. */

/* uh, ul [0:Kp] = the high (plus 128) and low bytes of the row quantized to +-lev
 * levels (zeros past K); returns its scale: the arithmetic of rnn_quant_row_lev. */
RNN_INLINE float rnn_quant_row16_avx512(const float *a, long K, long Kp, unsigned char *uh,
                                        unsigned char *ul, float lev)
{
    __m512 vm = _mm512_setzero_ps(), vinv;
    long k;
    float m;
    for (k = 0; k < K; k += 16) {
        __mmask16 t = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        vm = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(t, a + k)), vm);
    }
    m = _mm512_reduce_max_ps(vm);
    vinv = _mm512_set1_ps(m > 0.0f ? lev / m : 0.0f);
    for (k = 0; k < K; k += 16) {
        __mmask16 t = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(t, a + k), vinv);
        v = _mm512_max_ps(_mm512_min_ps(v, _mm512_set1_ps(lev)), _mm512_set1_ps(-lev));
        __m512i qi = _mm512_cvtps_epi32(v);
        __m512i hi = _mm512_add_epi32(_mm512_srai_epi32(qi, 8), _mm512_set1_epi32(128));
        __m512i lo = _mm512_and_si512(qi, _mm512_set1_epi32(255));
        _mm_mask_storeu_epi8(uh + k, t, _mm512_cvtepi32_epi8(hi));
        _mm_mask_storeu_epi8(ul + k, t, _mm512_cvtepi32_epi8(lo));
    }
    for (k = K; k < Kp; k++) uh[k] = ul[k] = 0;
    return m / lev;
}

/* MR rows x NP panels from panel p, every group: C = bias, then per group g
 * C = fma((float)(256 (hi - comp_g) + lo), sa_g ws[g], C), kept in registers. */
RNN_INLINE void rnn_vnni_gtile(const int MR, const int NP, long Kp, long N, long p, long ng, long kg,
                               const unsigned char *uh, const unsigned char *ul, long ldu,
                               const float *sa, const signed char *Bq, const float *scale,
                               const int *comp, long lds, const float *bias, float *C, long ldc)
{
    __m512 f[2][4];
    __m512i hi[2][4], lo[2][4];
    __mmask16 t[2][4];
    long pstride = Kp * RNN_PANEL_COLS, g, k;
    const signed char *bp = Bq + p * pstride;
    int r, n, q, i;
    for (n = 0; n < NP; n++)
        for (q = 0; q < 4; q++) {
            long col = (p + n) * RNN_PANEL_COLS + 16 * q, left = N - col;
            t[n][q] = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1u) : 0;
            for (r = 0; r < MR; r++)
                f[r * NP + n][q] = bias ? _mm512_maskz_loadu_ps(t[n][q], bias + col) : _mm512_setzero_ps();
        }
    for (g = 0; g < ng; g++) {
        long k1 = (g + 1) * kg < Kp ? (g + 1) * kg : Kp;
        for (i = 0; i < MR * NP; i++)
            for (q = 0; q < 4; q++) hi[i][q] = lo[i][q] = _mm512_setzero_si512();
        for (k = g * kg; k < k1; k += 4) {
            for (r = 0; r < MR; r++) {
                int wh, wl;
                memcpy(&wh, uh + r * ldu + k, 4);
                memcpy(&wl, ul + r * ldu + k, 4);
                __m512i ah = _mm512_set1_epi32(wh), al = _mm512_set1_epi32(wl);
                for (n = 0; n < NP; n++) {
                    const signed char *b = bp + n * pstride + k * RNN_PANEL_COLS;
                    for (q = 0; q < 4; q++) {
                        __m512i w = _mm512_loadu_si512((const void *)(b + 64 * q));
                        hi[r * NP + n][q] = _mm512_dpbusd_epi32(hi[r * NP + n][q], ah, w);
                        lo[r * NP + n][q] = _mm512_dpbusd_epi32(lo[r * NP + n][q], al, w);
                    }
                }
            }
        }
        for (n = 0; n < NP; n++)
            for (q = 0; q < 4; q++) {
                long col = (p + n) * RNN_PANEL_COLS + 16 * q;
                __m512 ws = _mm512_maskz_loadu_ps(t[n][q], scale + g * lds + col);
                __m512i cp = _mm512_maskz_loadu_epi32(t[n][q], comp + g * lds + col);
                for (r = 0; r < MR; r++) {
                    i = r * NP + n;
                    __m512i acc = _mm512_add_epi32(_mm512_slli_epi32(_mm512_sub_epi32(hi[i][q], cp), 8), lo[i][q]);
                    f[i][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc),
                                              _mm512_mul_ps(_mm512_set1_ps(sa[r * ng + g]), ws), f[i][q]);
                }
            }
    }
    for (r = 0; r < MR; r++)
        for (n = 0; n < NP; n++)
            for (q = 0; q < 4; q++)
                _mm512_mask_storeu_ps(C + r * ldc + (p + n) * RNN_PANEL_COLS + 16 * q, t[n][q], f[r * NP + n][q]);
}

static void rnn_qgemm_i8g_avx512_vnni(long M, long N, long K, const float *A, long lda,
                                      const signed char *Bq, const float *scale, const int *comp,
                                      long lds, long kg, const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), ng = rnn_qgroups(Kp, kg), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    long grp = rnn_qgroup_rows(2 * Kp), i, p, r, g, r0, mg;
    unsigned char stacku[RNN_QGROUP_BYTES] __attribute__((aligned(64)));
    float stacks[RNN_QGSCALES];
    unsigned char *uh, *ul;
    float *sa;
    if (grp == 0)
        grp = RNN_QGROUP;
    while (grp > 1 && grp * ng > RNN_QGSCALES)
        grp--;
    uh = (size_t)(2 * grp * Kp) <= sizeof stacku ? stacku : (unsigned char *)malloc((size_t)(2 * grp * Kp));
    ul = uh ? uh + grp * Kp : NULL;
    sa = grp * ng <= RNN_QGSCALES ? stacks : (float *)malloc((size_t)(grp * ng) * sizeof(float));
    if (uh == NULL || sa == NULL)
        goto done;
    for (i = 0; i < M; i += grp) {
        float *ci = C + i * ldc;
        mg = M - i < grp ? M - i : grp;
        for (r = 0; r < mg; r++)
            for (g = 0; g < ng; g++) {
                long k0 = g * kg, n = K - k0 < kg ? K - k0 : kg, np4 = Kp - k0 < kg ? Kp - k0 : kg;
                sa[r * ng + g] = rnn_quant_row16_avx512(A + (i + r) * lda + k0, n, np4, uh + r * Kp + k0,
                                                        ul + r * Kp + k0, RNN_QLEVELS16);
            }
        if (mg == 1) {
            for (p = 0; p + 2 <= np; p += 2)
                rnn_vnni_gtile(1, 2, Kp, N, p, ng, kg, uh, ul, Kp, sa, Bq, scale, comp, lds, bias, ci, ldc);
            if (p < np)
                rnn_vnni_gtile(1, 1, Kp, N, p, ng, kg, uh, ul, Kp, sa, Bq, scale, comp, lds, bias, ci, ldc);
            continue;
        }
        for (p = 0; p < np; p++) {
            for (r0 = 0; r0 + 2 <= mg; r0 += 2)
                rnn_vnni_gtile(2, 1, Kp, N, p, ng, kg, uh + r0 * Kp, ul + r0 * Kp, Kp, sa + r0 * ng, Bq, scale,
                               comp, lds, bias, ci + r0 * ldc, ldc);
            if (r0 < mg)
                rnn_vnni_gtile(1, 1, Kp, N, p, ng, kg, uh + r0 * Kp, ul + r0 * Kp, Kp, sa + r0 * ng, Bq, scale,
                               comp, lds, bias, ci + r0 * ldc, ldc);
        }
    }
done:
    if (uh != stacku)
        free(uh);
    if (sa != stacks)
        free(sa);
}

#pragma GCC pop_options

static int rnn_cpu_has_avx512_vnni(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
           && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
           && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2")
           && __builtin_cpu_supports("fma");
}

#endif /* RNNFAST_X86_AVX512_VNNI_QUANT_H */
