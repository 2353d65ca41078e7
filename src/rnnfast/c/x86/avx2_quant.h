/*
 * x86/avx2_quant.h -- reduced-precision products for AVX2 + FMA (quant.h): int8 by
 * vpmaddwd on 16-bit values (the int8 weights sign-extended as they are loaded, the
 * activations as int16): a pair of products summed into int32 cannot saturate, which
 * vpmaddubsw's int16 sums could. bf16: the portable template compiled for the target.
 *
 * Included by quant.h where runtime dispatch is built (GCC on x86-64).
 */
#ifndef RNNFAST_X86_AVX2_QUANT_H
#define RNNFAST_X86_AVX2_QUANT_H

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#define ISA_SUFFIX avx2
#define RNN_QUANT_OWN_I8
#define RNN_QUANT_OWN_I8G
#include "../quant.template.h"
#undef RNN_QUANT_OWN_I8G
#undef RNN_QUANT_OWN_I8
#undef ISA_SUFFIX

/* acc (8 x 8 int32 lanes) += the 32 columns of one half panel for the row q, over
 * Kp/4 groups: lanes 2l and 2l+1 of acc[t] are column 4t+l's two halves of a group. */
RNN_INLINE void rnn_qhalf_avx2(long Kg, const short *q, const signed char *bp, int *out32)
{
    __m256i acc[8];
    int lanes[8];
    long g;
    int t, l;
    for (t = 0; t < 8; t++) acc[t] = _mm256_setzero_si256();
    for (g = 0; g < Kg; g++) {
        long long quad;
        memcpy(&quad, q + 4 * g, 8);
        __m256i av = _mm256_set1_epi64x(quad);
        const signed char *b = bp + g * 4 * RNN_PANEL_COLS;
        for (t = 0; t < 8; t++) {
            __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16 * t)));
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(w, av));
        }
    }
    for (t = 0; t < 8; t++) {
        _mm256_storeu_si256((__m256i *)lanes, acc[t]);
        for (l = 0; l < 4; l++) out32[4 * t + l] = lanes[2 * l] + lanes[2 * l + 1];
    }
}

static void rnn_qgemm_i8_avx2(long M, long N, long K, const float *A, long lda,
                              const signed char *Bq, const float *scale, const int *comp,
                              const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, j;
    short stackq[RNN_QSTACK / sizeof(short)];
    short *q = (size_t)Kp * sizeof(short) <= sizeof stackq ? stackq
                                                           : (short *)malloc((size_t)Kp * sizeof(short));
    int acc[RNN_PANEL_COLS];
    (void)comp;
    if (q == NULL)
        return;
    for (i = 0; i < M; i++) {
        float sa = rnn_quant_row_s16(A + i * lda, K, Kp, q);
        for (p = 0; p < np; p++) {
            const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
            long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
            rnn_qhalf_avx2(Kp / 4, q, bp, acc);
            if (nc > 32)
                rnn_qhalf_avx2(Kp / 4, q, bp + 128, acc + 32);
            for (j = 0; j < nc; j++) {
                long col = p * RNN_PANEL_COLS + j;
                C[i * ldc + col] = fmaf((float)acc[j], sa * scale[col], bias ? bias[col] : 0.0f);
            }
        }
    }
    if (q != stackq)
        free(q);
}

/* The K-grouped product (quant.h), 16 columns at a time: per group, vpmaddwd sums of
 * the int16 activations and the sign-extended weights (lanes 2l, 2l+1 of acc[t]: column
 * 4t+l's two halves), their pairs added by vphaddd (and vpermq back into column order),
 * then C = fma((float)sum_g, sa_g ws[g], C) in registers, group after group, from C =
 * bias. */
RNN_INLINE void rnn_qgroup16_avx2(long Kp, long ng, long kg, const short *q, const float *sa,
                                  const signed char *bq, const float *scale, long lds, long col,
                                  long nc, const float *bias, float *c)
{
    float tmp[16];
    long g, k, j;
    int t;
    for (j = 0; j < 16; j++) tmp[j] = bias && j < nc ? bias[col + j] : 0.0f;
    __m256 f0 = _mm256_loadu_ps(tmp), f1 = _mm256_loadu_ps(tmp + 8);
    for (g = 0; g < ng; g++) {
        long k1 = (g + 1) * kg < Kp ? (g + 1) * kg : Kp;
        __m256i acc[4];
        const float *ws = scale + g * lds + col;
        for (t = 0; t < 4; t++) acc[t] = _mm256_setzero_si256();
        for (k = g * kg; k < k1; k += 4) {
            long long quad;
            memcpy(&quad, q + k, 8);
            __m256i av = _mm256_set1_epi64x(quad);
            const signed char *b = bq + k * RNN_PANEL_COLS;
            for (t = 0; t < 4; t++) {
                __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16 * t)));
                acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(w, av));
            }
        }
        __m256i s0 = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[0], acc[1]), 0xD8);
        __m256i s1 = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[2], acc[3]), 0xD8);
        __m256 w0, w1, a = _mm256_set1_ps(sa[g]);
        if (nc >= 16) {
            w0 = _mm256_loadu_ps(ws);
            w1 = _mm256_loadu_ps(ws + 8);
        } else {                    /* the scales of this group end at column nc */
            for (j = 0; j < 16; j++) tmp[j] = j < nc ? ws[j] : 0.0f;
            w0 = _mm256_loadu_ps(tmp);
            w1 = _mm256_loadu_ps(tmp + 8);
        }
        f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(a, w0), f0);
        f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(a, w1), f1);
    }
    _mm256_storeu_ps(tmp, f0);
    _mm256_storeu_ps(tmp + 8, f1);
    memcpy(c + col, tmp, (size_t)(nc < 16 ? nc : 16) * sizeof(float));
}

static void rnn_qgemm_i8g_avx2(long M, long N, long K, const float *A, long lda,
                               const signed char *Bq, const float *scale, const int *comp,
                               long lds, long kg, const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), ng = rnn_qgroups(Kp, kg), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    long i, p, g, Q;
    short stackq[RNN_QSTACK / sizeof(short)];
    float stacks[RNN_QGSCALES];
    short *q = (size_t)Kp * sizeof(short) <= sizeof stackq ? stackq
                                                           : (short *)malloc((size_t)Kp * sizeof(short));
    float *sa = ng <= RNN_QGSCALES ? stacks : (float *)malloc((size_t)ng * sizeof(float));
    (void)comp;
    if (q == NULL || sa == NULL)
        goto done;
    for (i = 0; i < M; i++) {
        for (g = 0; g < ng; g++) {
            long k0 = g * kg, n = K - k0 < kg ? K - k0 : kg, np4 = Kp - k0 < kg ? Kp - k0 : kg;
            sa[g] = rnn_quant_row_lev(A + i * lda + k0, n, np4, q + k0, RNN_QLEVELS16);
        }
        for (p = 0; p < np; p++) {
            const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
            for (Q = 0; Q < 4; Q++) {
                long col = p * RNN_PANEL_COLS + 16 * Q;
                if (col < N)
                    rnn_qgroup16_avx2(Kp, ng, kg, q, sa, bp + 64 * Q, scale, lds, col, N - col, bias,
                                      C + i * ldc);
            }
        }
    }
done:
    if (q != stackq)
        free(q);
    if (sa != stacks)
        free(sa);
}

#pragma GCC pop_options

static int rnn_cpu_has_qavx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#endif /* RNNFAST_X86_AVX2_QUANT_H */
