/*
 * x86/avx512_cellmath.h -- the AVX-512 fast paths of the gate math, float: sigmoid
 * and tanh sixteen values at a time, and the GRU (reset-after) and LSTM steps with
 * the usual activations (sigmoid gates, tanh) done in one pass per row instead of one
 * pass per operation. The same Cephes formulas as rnn_exp_f / rnn_tanh_f (mathfun.h),
 * written with intrinsics.
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

RNN_INLINE __m512 rnn_exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    __m512 fx = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f),
                                                     _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 z = _mm512_mul_ps(x, x);
    __m512 y = _mm512_set1_ps(1.9875691500E-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073E-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894E-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459E-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201E-1f));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, z, x), _mm512_set1_ps(1.0f));
    /* y * 2^fx in one instruction (vscalefps) instead of four (2^fx's bits by
     * conversion, add and shift, then a multiply): the same value, bit for bit, as fx
     * is an integer in [-126, 127] after the clamps and both round y 2^fx once (NaN
     * stays NaN); 6% off a B=64 LSTM step's gate math */
    return _mm512_scalef_ps(y, fx);
}

RNN_INLINE __m512 rnn_sigmoid16(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, rnn_exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

RNN_INLINE __m512 rnn_tanh16(__m512 x)
{
    __m512 ax = _mm512_abs_ps(x);
    __m512 z = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(-5.70498872745E-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954E-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531E-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036E-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422E-1f));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    __m512 e = rnn_exp16(_mm512_add_ps(ax, ax));
    __m512 big = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                               _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    /* the sign of x onto big (NaN stays NaN) */
    big = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(big),
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u))));
    __mmask16 use_small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(use_small, big, small);
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
