/*
 * x86/avx512_cellmath.h -- the AVX-512 fast paths of the gate math, float: sigmoid
 * and tanh sixteen values at a time, and the GRU (reset-after) and LSTM steps with
 * the usual activations (sigmoid gates, tanh) done in one pass per row instead of one
 * pass per operation. The same formulas as rnn_sigmoid_f / rnn_tanh_f (mathfun.h),
 * written with intrinsics; the fused steps prefetch the next row's gate inputs
 * (x86/prefetch.h).
 *
 * cellmath.template.h calls them when instantiated with CELLMATH_FAST (float, avx512):
 * each returns how much it did: the elements done (vtanh, vsigmoid) or 1 when it took
 * the whole step (fused_*); the portable body does the rest. NaN propagates: min/max
 * keep their second operand when either is NaN, and the input is always passed second.
 *
 * Included by x86/avx512_kernels.h inside its `#pragma GCC target` region only.
 */
#ifndef RNNFAST_X86_AVX512_CELLMATH_H
#define RNNFAST_X86_AVX512_CELLMATH_H

#include "prefetch.h"                   /* rnn_prefetch_row: the next row's gate inputs */

/* rnn_exp_parts_f, sixteen lanes: returns q = expm1(r), *fx = n. */
RNN_INLINE __m512 rnn_exp_parts16(__m512 t, __m512 *fx)
{
    __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(t, _mm512_set1_ps(1.44269504088896341f),
                                                    _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), t);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 z = _mm512_mul_ps(r, r);
    __m512 y = _mm512_set1_ps(1.3814540579915047E-3f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.36874544620514E-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.166838899254799E-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.666652113199234E-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.999999403953552E-1f));
    *fx = n;
    return _mm512_fmadd_ps(y, z, r);
}

RNN_INLINE __m512 rnn_sigmoid16(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f), n;
    __m512 t = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_sub_ps(_mm512_setzero_ps(), x));
    t = _mm512_max_ps(_mm512_set1_ps(-87.0f), t);
    __m512 q = rnn_exp_parts16(t, &n);
    /* (q + 1) 2^n in one instruction (vscalefps) instead of a multiply by 2^n: the same
     * value, bit for bit (n is an integer in [-126, 127] after the clamps; both round
     * once; NaN stays NaN) */
    return _mm512_div_ps(one, _mm512_add_ps(one, _mm512_scalef_ps(_mm512_add_ps(q, one), n)));
}

RNN_INLINE __m512 rnn_tanh16(__m512 x)
{
    /* rnn_tanh_f: tanh |x| = e / (e + 2), e = q 2^n + (2^n - 1), then the sign of x
     * (NaN stays NaN) */
    __m512 one = _mm512_set1_ps(1.0f), n;
    __m512 t = _mm512_abs_ps(x);
    t = _mm512_min_ps(_mm512_set1_ps(RNN_TANH_CUT), _mm512_add_ps(t, t));
    __m512 q = rnn_exp_parts16(t, &n);
    __m512 p2 = _mm512_scalef_ps(one, n);
    __m512 e = _mm512_fmadd_ps(q, p2, _mm512_sub_ps(p2, one));
    __m512 th = _mm512_div_ps(e, _mm512_add_ps(e, _mm512_set1_ps(2.0f)));
    return _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(th),
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u))));
}

/* Lanes j..j+15 of a row of n, as a load/store mask. */
RNN_INLINE __mmask16 rnn_lanes16(long j, long n)
{
    long left = n - j;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

/* Lanes at offset o of a gate row: the projection plus the product, x[o] + g[o]. */
RNN_INLINE __m512 rnn_gate16(__mmask16 k, const float *x, const float *g, long o)
{
    return _mm512_add_ps(_mm512_maskz_loadu_ps(k, x + o), _mm512_maskz_loadu_ps(k, g + o));
}

RNN_INLINE long rnn_vtanh_f_avx512(float *v, long n)
{
    long j;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = rnn_lanes16(j, n);
        _mm512_mask_storeu_ps(v + j, k, rnn_tanh16(_mm512_maskz_loadu_ps(k, v + j)));
    }
    return n;
}

RNN_INLINE long rnn_vsigmoid_f_avx512(float *v, long n)
{
    long j;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = rnn_lanes16(j, n);
        _mm512_mask_storeu_ps(v + j, k, rnn_sigmoid16(_mm512_maskz_loadu_ps(k, v + j)));
    }
    return n;
}

/* GRU reset-after, sigmoid gates and tanh: the equations of rnn_gru_ra_* in one pass. */
RNN_INLINE int rnn_fused_gru_f_avx512(long nrows, long H, const float *xp, long ldxp,
                                      const float *gh, long ldgh, const float *bhn, float *h,
                                      long ldh, const unsigned char *valid)
{
    long b, j;
    for (b = 0; b < nrows; b++) {
        if (valid && !valid[b]) continue;
        const float *x = xp + b * ldxp, *g = gh + b * ldgh;
        float *hb = h + b * ldh;
        if (b + 1 < nrows)
            rnn_prefetch_row(x + ldxp, g + ldgh, 3 * H);
        for (j = 0; j < H; j += 16) {
            __mmask16 k = rnn_lanes16(j, H);
            __m512 z = rnn_sigmoid16(_mm512_add_ps(_mm512_maskz_loadu_ps(k, x + j),
                                                   _mm512_maskz_loadu_ps(k, g + j)));
            __m512 r = rnn_sigmoid16(_mm512_add_ps(_mm512_maskz_loadu_ps(k, x + H + j),
                                                   _mm512_maskz_loadu_ps(k, g + H + j)));
            __m512 gn = _mm512_add_ps(_mm512_maskz_loadu_ps(k, g + 2 * H + j),
                                      _mm512_maskz_loadu_ps(k, bhn + j));
            __m512 n = rnn_tanh16(_mm512_fmadd_ps(r, gn, _mm512_maskz_loadu_ps(k, x + 2 * H + j)));
            __m512 hp = _mm512_maskz_loadu_ps(k, hb + j);
            /* h = z h + (1 - z) n */
            __m512 hn = _mm512_fmadd_ps(z, hp, _mm512_mul_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), z), n));
            _mm512_mask_storeu_ps(hb + j, k, hn);
        }
    }
    return 1;
}

/* LSTM, sigmoid gates and tanh: the equations of rnn_lstm_* in one pass. */
RNN_INLINE int rnn_fused_lstm_f_avx512(long nrows, long H, const float *xp, long ldxp,
                                       const float *gh, long ldgh, float *c, long ldc, float *m,
                                       long ldm, const unsigned char *valid)
{
    long b, j;
    for (b = 0; b < nrows; b++) {
        if (valid && !valid[b]) continue;
        const float *x = xp + b * ldxp, *g = gh + b * ldgh;
        float *cb = c + b * ldc, *mb = m + b * ldm;
        if (b + 1 < nrows)
            rnn_prefetch_row(x + ldxp, g + ldgh, 4 * H);
        for (j = 0; j < H; j += 16) {
            __mmask16 k = rnn_lanes16(j, H);
            __m512 i = rnn_sigmoid16(rnn_gate16(k, x, g, 0 * H + j));
            __m512 f = rnn_sigmoid16(rnn_gate16(k, x, g, 1 * H + j));
            __m512 u = rnn_tanh16(rnn_gate16(k, x, g, 2 * H + j));
            __m512 o = rnn_sigmoid16(rnn_gate16(k, x, g, 3 * H + j));
            __m512 cn = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(k, cb + j), _mm512_mul_ps(i, u));
            _mm512_mask_storeu_ps(cb + j, k, cn);
            _mm512_mask_storeu_ps(mb + j, k, _mm512_mul_ps(o, rnn_tanh16(cn)));
        }
    }
    return 1;
}

#endif /* RNNFAST_X86_AVX512_CELLMATH_H */
