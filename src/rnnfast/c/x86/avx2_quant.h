/*
 * x86/avx2_quant.h -- reduced-precision products for AVX2 + FMA (quant.h).
 *
 * int8: the activations q in [-127, 127] as signed bytes and their magnitudes, the
 * weights in [-127, 127] as packed; vpmaddubsw(|q|, vpsignb(w, q)) multiplies |q| (an
 * unsigned byte) by w times the sign of q, so each pair sum is within 2 127 127 =
 * 32258 and cannot saturate; vpmaddwd by ones sums the pairs into int32 (each lane one
 * column's 4 rows of K: the packed layout, vpdpbusd's, as it is; no 128 offset, so the
 * per-column comp is not used). The int32 sums are exact, so the results are the other
 * kernel sets' bit for bit (what ggml / llama.cpp do on AVX2, bounded to 127).
 * The K-grouped product (int16 activations) keeps vpmaddwd on 16-bit values (the
 * weights sign-extended as they are loaded). bf16: its own product at the end of this
 * file (pairs widened in registers, the portable template's sums bit for bit).
 *
 * Included by quant.h where runtime dispatch is built (GCC on x86-64).
 */
#ifndef RNNFAST_X86_AVX2_QUANT_H
#define RNNFAST_X86_AVX2_QUANT_H

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "avx2_lanes.h"                 /* rnn_mask8_avx2 */

#define ISA_SUFFIX avx2
#define RNN_QUANT_OWN_I8
#define RNN_QUANT_OWN_I8G
#define RNN_QUANT_OWN_BF16
#include "../quant.template.h"
#undef RNN_QUANT_OWN_BF16
#undef RNN_QUANT_OWN_I8G
#undef RNN_QUANT_OWN_I8
#undef ISA_SUFFIX

/* s[0:Kp] = the row quantized as signed bytes, u[0:Kp] = their magnitudes (zeros past
 * K); returns sa. The arithmetic of rnn_quant_row_s16, eight lanes at a time: the same
 * max (NaN ignored: vmaxps keeps its second operand), the same product, clamp (NaN ->
 * 127: vminps keeps its second operand) and rounding (vcvtps2dq, to nearest even). */
RNN_INLINE float rnn_quant_row_i8_avx2(const float *a, long K, long Kp, signed char *s, unsigned char *u)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i pick = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
    __m256 vm = _mm256_setzero_ps(), vinv;
    __m128 m4;
    long k;
    float m;
    for (k = 0; k < K; k += 8) {
        __m256i t = rnn_mask8_avx2(K - k);
        vm = _mm256_max_ps(_mm256_and_ps(_mm256_maskload_ps(a + k, t), absmask), vm);
    }
    m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    m = _mm_cvtss_f32(m4);
    vinv = _mm256_set1_ps(rnn_quant_inv(m));
    for (k = 0; k < K; k += 8) {
        long n = K - k < 8 ? K - k : 8;
        __m256i t = rnn_mask8_avx2(n);
        __m256 v = _mm256_mul_ps(_mm256_maskload_ps(a + k, t), vinv);
        v = _mm256_max_ps(_mm256_min_ps(v, _mm256_set1_ps(127.0f)), _mm256_set1_ps(-127.0f));
        __m256i q = _mm256_cvtps_epi32(v);
        q = _mm256_packs_epi16(_mm256_packs_epi32(q, q), q); /* lane bytes 0-3 | 16-19 */
        __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(q, pick));
        if (n == 8) {
            _mm_storel_epi64((__m128i *)(s + k), b);
            _mm_storel_epi64((__m128i *)(u + k), _mm_abs_epi8(b));
        } else {
            signed char tmp[16];
            _mm_storeu_si128((__m128i *)tmp, b);
            memcpy(s + k, tmp, (size_t)n);
            _mm_storeu_si128((__m128i *)tmp, _mm_abs_epi8(b));
            memcpy(u + k, tmp, (size_t)n);
        }
    }
    for (k = K; k < Kp; k++) s[k] = 0, u[k] = 0;
    return m / 127.0f;
}

/* C[col : col + 8] (of which `left` remain) = fma((float)acc, sa ws, bias): quant.h's
 * int8 epilogue, eight columns at a time (vcvtdq2ps rounds as (float) does). */
RNN_INLINE void rnn_i8store_avx2(__m256i acc, long col, long left, float sa, const float *scale,
                                 const float *bias, float *c)
{
    __m256 v;
    if (left >= 8) {
        v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(_mm256_set1_ps(sa), _mm256_loadu_ps(scale + col)),
                            bias ? _mm256_loadu_ps(bias + col) : _mm256_setzero_ps());
        _mm256_storeu_ps(c + col, v);
    } else if (left > 0) {
        __m256i t = rnn_mask8_avx2(left);
        v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc),
                            _mm256_mul_ps(_mm256_set1_ps(sa), _mm256_maskload_ps(scale + col, t)),
                            bias ? _mm256_maskload_ps(bias + col, t) : _mm256_setzero_ps());
        _mm256_maskstore_ps(c + col, t, v);
    }
}

/* One row (u: its magnitudes, s: its signed bytes) times one panel (bp) over Kg groups
 * of 4 rows of K: out[v] = the exact int32 sums of columns 8v..8v+7. Per group and
 * 32 bytes of weights (8 columns x 4 rows of K, one column per int32 lane): vpsignb
 * (the weights times the sign of q), vpmaddubsw(|q|, that): products within 127 127
 * and pair sums within 2 127 127 = 32258 < 32767, so no saturation; vpmaddwd by ones
 * (the pairs' sum in int32) and vpaddd. 32 weights in 4 instructions (vpmaddwd on int16
 * needed a vpmovsxbw, a vpmaddwd and a vpaddd per 16). Eight accumulators, the panel's
 * 256 bytes a group in order. */
RNN_INLINE void rnn_i8panel_avx2(long Kg, const unsigned char *u, const signed char *s, const signed char *bp,
                                 __m256i *out)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    long g;
    for (g = 0; g < Kg; g++, bp += 4 * RNN_PANEL_COLS) {
        int wu, ws;
        memcpy(&wu, u + 4 * g, 4);
        memcpy(&ws, s + 4 * g, 4);
        __m256i au = _mm256_set1_epi32(wu), as = _mm256_set1_epi32(ws);
#define RNN_I8_STEP(acc, off)                                                                           \
    acc = _mm256_add_epi32(                                                                             \
        acc, _mm256_madd_epi16(_mm256_maddubs_epi16(                                                    \
                                   au, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(bp + off)), as)), \
                               ones))
        RNN_I8_STEP(a0, 0);
        RNN_I8_STEP(a1, 32);
        RNN_I8_STEP(a2, 64);
        RNN_I8_STEP(a3, 96);
        RNN_I8_STEP(a4, 128);
        RNN_I8_STEP(a5, 160);
        RNN_I8_STEP(a6, 192);
        RNN_I8_STEP(a7, 224);
#undef RNN_I8_STEP
    }
    out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
    out[4] = a4, out[5] = a5, out[6] = a6, out[7] = a7;
}

/* Rows are quantized once, in groups of up to RNN_QGROUP (signed bytes and magnitudes,
 * 2 Kp bytes a row), then each panel runs over the group's rows, one row at a time
 * (the panel, Kp x 64 bytes, from L1 / L2). Several rows in registers over a panel
 * slice (2 x 16, 4 x 16, 2 x 32, 3 x 16, 4 x 8 columns, the weights loaded once for the
 * rows) measured no faster than one row x 64 columns on Zen 1: the product is bound by
 * its one integer-multiply pipe (vpmaddubsw and vpmaddwd, 2 cycles a 256-bit
 * instruction), which the tiles do not relieve (bench/README.md, session 15, i8). */
static void rnn_qgemm_i8_avx2(long M, long N, long K, const float *A, long lda,
                              const signed char *Bq, const float *scale, const int *comp,
                              const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, r, mg;
    long grp = rnn_qgroup_rows(2 * Kp);
    unsigned char stackq[RNN_QGROUP_BYTES] __attribute__((aligned(64)));
    unsigned char *u = grp > 0 ? stackq : (unsigned char *)malloc((size_t)(2 * RNN_QGROUP * Kp));
    signed char *s;
    float sa[RNN_QGROUP];
    __m256i out[8];
    int v;
    (void)comp;                     /* signed activations: no offset to compensate */
    if (u == NULL)
        return;
    if (grp == 0)
        grp = RNN_QGROUP;
    s = (signed char *)u + grp * Kp;
    for (i = 0; i < M; i += grp) {
        mg = M - i < grp ? M - i : grp;
        for (r = 0; r < mg; r++) sa[r] = rnn_quant_row_i8_avx2(A + (i + r) * lda, K, Kp, s + r * Kp, u + r * Kp);
        for (p = 0; p < np; p++) {
            long c0 = p * RNN_PANEL_COLS;
            for (r = 0; r < mg; r++) {
                float *c = C + (i + r) * ldc;
                rnn_i8panel_avx2(Kp / 4, u + r * Kp, s + r * Kp, Bq + p * Kp * RNN_PANEL_COLS, out);
                for (v = 0; v < 8 && c0 + 8 * v < N; v++)
                    rnn_i8store_avx2(out[v], c0 + 8 * v, N - c0 - 8 * v, sa[r], scale, bias, c);
            }
        }
    }
    if (u != stackq)
        free(u);
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

/* -- bf16 (quant.h) --------------------------------------------------------------------
 * A product of two bf16 values is exact in float32, so fma(a, w, acc) with both widened
 * to float is the portable template's `acc += a * w` (one rounding per sum; that
 * template compiled for AVX2 contracts it to the same fma) -- up to products below
 * float's normal range, where the baseline build's separate multiply rounds first.
 * Widening costs two integer ops: a pair (W[2g, j], W[2g+1, j]) is one 32-bit lane,
 * `w & 0xffff0000` is W[2g+1, j] as a float and `w << 16` is W[2g, j]; one 256-bit load
 * gives 8 columns x 2 k. Each row of A is rounded to bf16 once, kept as floats; every
 * output is one chain from its bias over the pairs, 2g+1 then 2g, whatever the tile.
 * One row (a batch-1 step) runs one whole panel at a time (8 chains of 8 columns, the
 * panel streamed in order). More rows: per group of rows (rounded once, each pair
 * swapped, 2g+1 first), per 16-column slice of a panel and block of RNN_BF16_KPAIRS
 * pairs, the block is widened once into an L1 buffer (16 floats a k, in the rows' swapped
 * order) and float's 6-row x 16-column register tile runs every row tile of the group
 * over it: the same fma chain per output, half a broadcast and no widening per FMA.
 * Measured (AMD EPYC Zen 1): bench/README.md, "Session 15: ... (bf16)". */
/* Rows of a register tile (12 accumulators, as float's x86/avx2_packgemm.h). Widening in
 * the tile instead (6 rows x 8 columns, one broadcast per FMA) ran M = 64, K = 512,
 * N = 1536 at 21-28 GFLOP/s on Zen 1, 5 x 16 at 16-24 and 4 x 16 at 22-23 (four widened
 * registers); the widened buffer at 31-33. */
#define RNN_BF16_ROWS 6
/* Pairs of K per block of a many-row product: the block widened (16 KB) and a tile's rows
 * (6 KB) stay in L1 while the group's row tiles run over them (the tile widening in
 * registers, M = 64, K = 1024, N = 4096 on Zen 1: 16 GFLOP/s unblocked, 22 blocked). */
#define RNN_BF16_KPAIRS 128

#pragma GCC push_options
#pragma GCC target("avx2,fma")

/* out[0:Kp] = the row rounded to bf16 (nearest even; NaN stays NaN), as floats, zeros
 * past K: rnn_f32_to_bf16's arithmetic, eight at a time. */
RNN_INLINE void rnn_bf16_rowf_avx2(const float *a, long K, long Kp, float *out)
{
    const __m256i half = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1),
                  top = _mm256_set1_epi32((int)0xffff0000u), absm = _mm256_set1_epi32(0x7fffffff),
                  inf = _mm256_set1_epi32(0x7f800000), quiet = _mm256_set1_epi32(0x00400000);
    long k;
    for (k = 0; k + 8 <= K; k += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(a + k));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        r = _mm256_blendv_epi8(r, _mm256_or_si256(u, quiet), nan);
        _mm256_storeu_si256((__m256i *)(out + k), _mm256_and_si256(r, top));
    }
    for (; k < K; k++) out[k] = rnn_bf16_to_f32(rnn_f32_to_bf16(a[k]));
    for (; k < Kp; k++) out[k] = 0.0f;
}

/* The first n (of 8) floats at x, the rest zero (x NULL: all zero). By value, not
 * through a pointer: accumulators whose address is taken are kept in memory. */
RNN_INLINE __m256 rnn_bf16_load8_avx2(const float *x, long n)
{
    float tmp[8];
    int j;
    if (x != NULL && n >= 8)
        return _mm256_loadu_ps(x);
    for (j = 0; j < 8; j++) tmp[j] = x != NULL && j < n ? x[j] : 0.0f;
    return _mm256_loadu_ps(tmp);
}

/* The first n (up to 8) floats of v to c. */
RNN_INLINE void rnn_bf16_store8_avx2(float *c, __m256 v, long n)
{
    float tmp[8];
    if (n >= 8) {
        _mm256_storeu_ps(c, v);
    } else if (n > 0) {
        _mm256_storeu_ps(tmp, v);
        memcpy(c, tmp, (size_t)n * sizeof(float));
    }
}

/* c[0:nc] = bias + the row a (bf16 values as floats, Kp = 2 Kg) times one packed panel.
 * The eight accumulators are named variables: as an array, GCC stored them to the stack
 * every pair (16 KB of stores a 1.5 MB product). */
RNN_INLINE void rnn_bf16_row64_avx2(long Kg, const float *a, const unsigned short *bp, const float *bias,
                                    float *c, long nc)
{
    const __m256i top = _mm256_set1_epi32((int)0xffff0000u);
    const float *b8 = bias;
#define RNN_B8(q) rnn_bf16_load8_avx2(b8 != NULL ? b8 + 8 * (q) : NULL, nc - 8 * (q))
    __m256 c0 = RNN_B8(0), c1 = RNN_B8(1), c2 = RNN_B8(2), c3 = RNN_B8(3), c4 = RNN_B8(4), c5 = RNN_B8(5),
           c6 = RNN_B8(6), c7 = RNN_B8(7);
#undef RNN_B8
    long g;
    for (g = 0; g < Kg; g++, bp += 2 * RNN_PANEL_COLS) {
        __m256 a1 = _mm256_broadcast_ss(a + 2 * g + 1), a0 = _mm256_broadcast_ss(a + 2 * g);
#define RNN_P8(q, acc)                                                                               \
    do {                                                                                             \
        __m256i w = _mm256_loadu_si256((const __m256i *)(bp + 16 * (q)));                            \
        acc = _mm256_fmadd_ps(a1, _mm256_castsi256_ps(_mm256_and_si256(w, top)), acc);              \
        acc = _mm256_fmadd_ps(a0, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)), acc);               \
    } while (0)
        RNN_P8(0, c0); RNN_P8(1, c1); RNN_P8(2, c2); RNN_P8(3, c3);
        RNN_P8(4, c4); RNN_P8(5, c5); RNN_P8(6, c6); RNN_P8(7, c7);
#undef RNN_P8
    }
    rnn_bf16_store8_avx2(c, c0, nc);
    rnn_bf16_store8_avx2(c + 8, c1, nc - 8);
    rnn_bf16_store8_avx2(c + 16, c2, nc - 16);
    rnn_bf16_store8_avx2(c + 24, c3, nc - 24);
    rnn_bf16_store8_avx2(c + 32, c4, nc - 32);
    rnn_bf16_store8_avx2(c + 40, c5, nc - 40);
    rnn_bf16_store8_avx2(c + 48, c6, nc - 48);
    rnn_bf16_store8_avx2(c + 56, c7, nc - 56);
}

/* buf[0:32 gn] = gn pairs of a 16-column slice of a panel (b: its first pair) as floats,
 * each pair's k = 2g+1 row of 16 first, then its k = 2g row. */
RNN_INLINE void rnn_bf16_widen16_avx2(long gn, const unsigned short *b, float *buf)
{
    const __m256i top = _mm256_set1_epi32((int)0xffff0000u);
    long g;
    for (g = 0; g < gn; g++, b += 2 * RNN_PANEL_COLS, buf += 32) {
        __m256i u = _mm256_loadu_si256((const __m256i *)b), v = _mm256_loadu_si256((const __m256i *)(b + 16));
        _mm256_store_si256((__m256i *)buf, _mm256_and_si256(u, top));
        _mm256_store_si256((__m256i *)(buf + 8), _mm256_and_si256(v, top));
        _mm256_store_si256((__m256i *)(buf + 16), _mm256_slli_epi32(u, 16));
        _mm256_store_si256((__m256i *)(buf + 24), _mm256_slli_epi32(v, 16));
    }
}

/* C[0:MR, 0:ns] (ns <= 16) = the MR rows as (lda apart, each pair swapped: 2g+1 first)
 * times kn rows of widened weights (buf, 16 floats a row, in the same order), added to
 * init or, with from_c, to the sums in C: float's 6 x 16 register tile. MR (1 to 6) is a
 * constant after inlining; the accumulators are named variables (see
 * rnn_bf16_row64_avx2). */
RNN_INLINE void rnn_bf16_ftile_avx2(const int MR, long kn, const float *as, long lda, const float *buf,
                                    const __m256 *init, int from_c, float *c, long ldc, long ns)
{
    __m256 x0 = init[0], y0 = init[1], x1 = init[0], y1 = init[1], x2 = init[0], y2 = init[1];
    __m256 x3 = init[0], y3 = init[1], x4 = init[0], y4 = init[1], x5 = init[0], y5 = init[1];
    long k;
#define RNN_LD(i, x, y)                                                                              \
    if (from_c && MR > i) {                                                                          \
        x = rnn_bf16_load8_avx2(c + (i) * ldc, ns);                                                  \
        y = rnn_bf16_load8_avx2(c + (i) * ldc + 8, ns - 8);                                          \
    }
    RNN_LD(0, x0, y0) RNN_LD(1, x1, y1) RNN_LD(2, x2, y2) RNN_LD(3, x3, y3) RNN_LD(4, x4, y4) RNN_LD(5, x5, y5)
#undef RNN_LD
    for (k = 0; k < kn; k++, buf += 16) {
        __m256 b0 = _mm256_load_ps(buf), b1 = _mm256_load_ps(buf + 8);
#define RNN_FR(i, x, y)                                                                              \
    if (MR > i) {                                                                                    \
        __m256 t = _mm256_broadcast_ss(as + (i) * lda + k);                                          \
        x = _mm256_fmadd_ps(t, b0, x);                                                               \
        y = _mm256_fmadd_ps(t, b1, y);                                                               \
    }
        RNN_FR(0, x0, y0) RNN_FR(1, x1, y1) RNN_FR(2, x2, y2) RNN_FR(3, x3, y3) RNN_FR(4, x4, y4) RNN_FR(5, x5, y5)
#undef RNN_FR
    }
#define RNN_ST(i, x, y)                                                                              \
    if (MR > i) {                                                                                    \
        rnn_bf16_store8_avx2(c + (i) * ldc, x, ns);                                                  \
        rnn_bf16_store8_avx2(c + (i) * ldc + 8, y, ns - 8);                                          \
    }
    RNN_ST(0, x0, y0) RNN_ST(1, x1, y1) RNN_ST(2, x2, y2) RNN_ST(3, x3, y3) RNN_ST(4, x4, y4) RNN_ST(5, x5, y5)
#undef RNN_ST
}

/* A slice block widened for the many-row product: 2 RNN_BF16_KPAIRS k x 16 columns. */
static __thread float rnn_bf16_wide_avx2[32 * RNN_BF16_KPAIRS] __attribute__((aligned(64)));

/* The rounded rows of a group (the rows of A rounded to bf16, as floats, Kp apart): up
 * to RNN_QGROUP rows of K = 1024 (256 KB, in L2 while every panel runs over them). */
#define RNN_BF16_ROWS_BYTES 262144
static __thread float rnn_bf16_rows_avx2[RNN_BF16_ROWS_BYTES / sizeof(float)] __attribute__((aligned(64)));

static void rnn_qgemm_bf16_avx2(long M, long N, long K, const float *A, long lda,
                                const unsigned short *Bq, const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_bf16(K), Kg = Kp / 2, np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    long grp = RNN_BF16_ROWS_BYTES / (Kp * (long)sizeof(float)), i, r, p, s, g0, gn, mg;
    float *a = rnn_bf16_rows_avx2;
    const float *as = a;
    if (grp > RNN_QGROUP)
        grp = RNN_QGROUP;
    if (grp == 0) {                 /* K beyond 65536: the heap */
        grp = 1;
        as = a = (float *)malloc((size_t)Kp * sizeof(float));
        if (a == NULL)
            return;
    }
    /* row groups outermost (their rounded rows stay in L2), then panel by panel, slice
     * by slice, K in blocks of RNN_BF16_KPAIRS pairs (widened once), the row tiles
     * innermost (the widened block and the tile's rows in L1) */
    for (i = 0; i < M; i += grp) {
        float *ci = C + i * ldc;
        mg = M - i < grp ? M - i : grp;
        for (r = 0; r < mg; r++) rnn_bf16_rowf_avx2(A + (i + r) * lda, K, Kp, a + r * Kp);
        if (mg > 1)                 /* the widened weights' order: each pair's 2g+1 first */
            for (r = 0; r < mg * Kp; r += 2) {
                float t = a[r];
                a[r] = a[r + 1];
                a[r + 1] = t;
            }
        for (p = 0; p < np; p++) {
            const unsigned short *bp = Bq + p * Kp * RNN_PANEL_COLS;
            long col = p * RNN_PANEL_COLS, nc = N - col < RNN_PANEL_COLS ? N - col : RNN_PANEL_COLS;
            if (mg == 1) {
                rnn_bf16_row64_avx2(Kg, a, bp, bias != NULL ? bias + col : NULL, ci + col, nc);
                continue;
            }
            for (s = 0; 16 * s < nc; s++) {
                long ns = nc - 16 * s < 16 ? nc - 16 * s : 16;
                float *cs = ci + col + 16 * s;
                __m256 init[2];
                init[0] = rnn_bf16_load8_avx2(bias != NULL ? bias + col + 16 * s : NULL, ns);
                init[1] = rnn_bf16_load8_avx2(bias != NULL ? bias + col + 16 * s + 8 : NULL, ns - 8);
                for (g0 = 0; g0 == 0 || g0 < Kg; g0 += RNN_BF16_KPAIRS) {
                    const float *ak = as + 2 * g0, *w = rnn_bf16_wide_avx2;
                    int from_c = g0 > 0;
                    gn = Kg - g0 < RNN_BF16_KPAIRS ? Kg - g0 : RNN_BF16_KPAIRS;
                    rnn_bf16_widen16_avx2(gn, bp + 32 * s + g0 * 2 * RNN_PANEL_COLS, rnn_bf16_wide_avx2);
                    for (r = 0; r + RNN_BF16_ROWS <= mg; r += RNN_BF16_ROWS)
                        rnn_bf16_ftile_avx2(RNN_BF16_ROWS, 2 * gn, ak + r * Kp, Kp, w, init, from_c, cs + r * ldc, ldc, ns);
#define RNN_BT(n) case n: rnn_bf16_ftile_avx2(n, 2 * gn, ak + r * Kp, Kp, w, init, from_c, cs + r * ldc, ldc, ns); break
                    switch (mg - r) {
                    RNN_BT(5); RNN_BT(4); RNN_BT(3); RNN_BT(2); RNN_BT(1);
                    default: break;
                    }
#undef RNN_BT
                }
            }
        }
    }
    if (a != rnn_bf16_rows_avx2)
        free(a);
}

#pragma GCC pop_options

#endif /* RNNFAST_X86_AVX2_QUANT_H */
