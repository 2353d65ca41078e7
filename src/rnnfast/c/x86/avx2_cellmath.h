/*
 * x86/avx2_cellmath.h -- the AVX2 + FMA fast paths of the gate math, float: the GRU
 * (reset-after) and LSTM steps with the usual activations (sigmoid gates, tanh) in two
 * passes per row, eight units at a time, instead of one pass per operation.
 *
 * Same bits as the portable loops GCC vectorizes for this target (cellmath.template.h
 * on mathfun.h's rnn_sigmoid_f / rnn_tanh_f): each value is the same sequence of IEEE
 * operations, with the multiply-adds GCC contracts where it contracts them (written out
 * below), and the clamps of the sigmoid and tanh taken as GCC takes them (its code
 * computes the unclamped value and selects the clamped one's constant, which these
 * compute: sigmoid(-88) and tanh at 2|x| = 40; tests/test_isa.py's
 * test_a_units_step_does_not_depend_on_the_block_width and bench/check_bitwise.py hold
 * them to that). A NaN stays a NaN; where two different NaNs meet in one operation
 * (a NaN input and inf - inf, say) the one kept, so its sign and payload, may differ
 * from the portable loops' (the operand order of an instruction is the compiler's).
 *
 * Why: on an AMD Zen 1 (256-bit operations split in two) the portable body's pass per
 * operation over a unit block (64 units) ran one activation's dependency chain at a
 * time and set its constants up per pass; here the gates of a group are independent
 * chains side by side and a row takes two passes (bench/README.md, session 15: the
 * LSTM gate math 10.6 -> 8.4 ns per unit and row, GRU 6.4 -> 5.2). The activations
 * alone (vtanh, vsigmoid) stay the portable loops (these return 0 elements done).
 *
 * cellmath.template.h calls them when instantiated with CELLMATH_FAST (float, avx2).
 * Included by x86/avx2_kernels.h inside its `#pragma GCC target` region only.
 */
#ifndef RNNFAST_X86_AVX2_CELLMATH_H
#define RNNFAST_X86_AVX2_CELLMATH_H

#include <immintrin.h>

/* rnn_exp_parts_f at eight lanes, on u = sign * t (sign +1 or -1: the sigmoid's
 * t = -x is folded into the constants, as GCC folds it): returns q = expm1(r) and
 * *p2 = 2^n. fx = floor(t log2e + 0.5); r = t - fx hi - fx lo, as multiply-adds. */
RNN_INLINE __m256 rnn_exp_parts8(__m256 u, float sign, __m256 *p2)
{
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(u, _mm256_set1_ps(sign * 1.44269504088896341f),
                                                _mm256_set1_ps(0.5f)));
    /* r = t - fx hi: sign +1: fnmadd (t - fx hi); -1: fnmsub (-(fx hi) - x) */
    __m256 r = sign > 0 ? _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), u)
                        : _mm256_fnmsub_ps(fx, _mm256_set1_ps(0.693359375f), u);
    r = _mm256_fmadd_ps(fx, _mm256_set1_ps(2.12194440e-4f), r);     /* r - fx * -lo */
    __m256 z = _mm256_mul_ps(r, r);
    __m256 y = _mm256_fmadd_ps(r, _mm256_set1_ps(1.3814540579915047E-3f), _mm256_set1_ps(8.36874544620514E-3f));
    y = _mm256_fmadd_ps(r, y, _mm256_set1_ps(4.166838899254799E-2f));
    y = _mm256_fmadd_ps(r, y, _mm256_set1_ps(1.666652113199234E-1f));
    y = _mm256_fmadd_ps(r, y, _mm256_set1_ps(4.999999403953552E-1f));
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    *p2 = _mm256_castsi256_ps(_mm256_slli_epi32(n, 23));
    return _mm256_fmadd_ps(z, y, r);
}

/* rnn_sigmoid_f: 1 / (1 + (q + 1) 2^n) on t = -x clamped to [-87, 88] (x to [-88, 87];
 * NaN passes: max/min return their second operand, x, when it is NaN). */
RNN_INLINE __m256 rnn_sigmoid8(__m256 x)
{
    __m256 one = _mm256_set1_ps(1.0f), p2;
    x = _mm256_max_ps(_mm256_set1_ps(-88.0f), x);
    x = _mm256_min_ps(_mm256_set1_ps(87.0f), x);
    __m256 q = rnn_exp_parts8(x, -1.0f, &p2);
    return _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_add_ps(q, one), p2, one));
}

/* rnn_tanh_f: e / (e + 2), e = q 2^n + (2^n - 1) on t = min(2|x|, 40), with the sign of
 * x (NaN stays NaN). */
RNN_INLINE __m256 rnn_tanh8(__m256 x)
{
    __m256 sgn = _mm256_set1_ps(-0.0f), p2;
    __m256 t = _mm256_andnot_ps(sgn, x);
    t = _mm256_min_ps(_mm256_set1_ps(RNN_TANH_CUT), _mm256_add_ps(t, t));
    __m256 q = rnn_exp_parts8(t, 1.0f, &p2);
    __m256 e = _mm256_fmadd_ps(q, p2, _mm256_add_ps(p2, _mm256_set1_ps(-1.0f)));
    __m256 th = _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
    return _mm256_or_ps(_mm256_andnot_ps(sgn, th), _mm256_and_ps(sgn, x));
}

/* the activations alone stay the portable loops */
RNN_INLINE long rnn_vtanh_f_avx2(float *v, long n)
{
    (void)v;
    (void)n;
    return 0;
}

RNN_INLINE long rnn_vsigmoid_f_avx2(float *v, long n)
{
    (void)v;
    (void)n;
    return 0;
}

/* Units per piece of a row in the fused steps' two passes (what the first keeps for
 * the second stays in L1). */
#define RNN_FUSED_UNITS 256

/* Lanes j..j+7 of a gate row: the projection plus the product, x[o] + g[o]. */
RNN_INLINE __m256 rnn_gate8(const float *x, const float *g, long o)
{
    return _mm256_add_ps(_mm256_loadu_ps(x + o), _mm256_loadu_ps(g + o));
}

/* GRU reset-after, sigmoid gates and tanh: the equations of rnn_gru_ra_* in two passes
 * over each piece of up to RNN_FUSED_UNITS units of a row (each pass of independent
 * eight-unit groups): (1) z, and a = x_h + r (g_h + bhn), kept; (2) h = z h + (1 - z)
 * tanh(a). H a multiple of 8 (else 0: the portable body runs). */
RNN_INLINE int rnn_fused_gru_f_avx2(long nrows, long H, const float *xp, long ldxp,
                                    const float *gh, long ldgh, const float *bhn, float *h,
                                    long ldh, const unsigned char *valid)
{
    float keep[2 * RNN_FUSED_UNITS];
    long b, j, j0, j1;
    if (H % 8 != 0)
        return 0;
    for (b = 0; b < nrows; b++) {
        if (valid && !valid[b]) continue;
        const float *x = xp + b * ldxp, *g = gh + b * ldgh;
        float *hb = h + b * ldh;
        for (j0 = 0; j0 < H; j0 = j1) {
            j1 = H - j0 > RNN_FUSED_UNITS ? j0 + RNN_FUSED_UNITS : H;
            for (j = j0; j < j1; j += 8) {
                __m256 z = rnn_sigmoid8(rnn_gate8(x, g, j));
                __m256 r = rnn_sigmoid8(rnn_gate8(x, g, H + j));
                __m256 gn = _mm256_add_ps(_mm256_loadu_ps(g + 2 * H + j), _mm256_loadu_ps(bhn + j));
                _mm256_storeu_ps(keep + (j - j0), z);
                _mm256_storeu_ps(keep + RNN_FUSED_UNITS + (j - j0),
                                 _mm256_fmadd_ps(r, gn, _mm256_loadu_ps(x + 2 * H + j)));
            }
            for (j = j0; j < j1; j += 8) {
                __m256 z = _mm256_loadu_ps(keep + (j - j0));
                __m256 n = rnn_tanh8(_mm256_loadu_ps(keep + RNN_FUSED_UNITS + (j - j0)));
                /* h = z h + (1 - z) n */
                __m256 hn = _mm256_fmadd_ps(z, _mm256_loadu_ps(hb + j),
                                            _mm256_mul_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), z), n));
                _mm256_storeu_ps(hb + j, hn);
            }
        }
    }
    return 1;
}

/* LSTM, sigmoid gates and tanh: the equations of rnn_lstm_* in two passes over each
 * piece of up to RNN_FUSED_UNITS units of a row (each pass of independent eight-unit
 * groups): (1) the four gates, c = f c + i u, o kept; (2) m = o tanh(c). H a multiple
 * of 8 (else 0: the portable body runs). */
RNN_INLINE int rnn_fused_lstm_f_avx2(long nrows, long H, const float *xp, long ldxp,
                                     const float *gh, long ldgh, float *c, long ldc, float *m,
                                     long ldm, const unsigned char *valid)
{
    float keep[RNN_FUSED_UNITS];
    long b, j, j0, j1;
    if (H % 8 != 0)
        return 0;
    for (b = 0; b < nrows; b++) {
        if (valid && !valid[b]) continue;
        const float *x = xp + b * ldxp, *g = gh + b * ldgh;
        float *cb = c + b * ldc, *mb = m + b * ldm;
        for (j0 = 0; j0 < H; j0 = j1) {
            j1 = H - j0 > RNN_FUSED_UNITS ? j0 + RNN_FUSED_UNITS : H;
            for (j = j0; j < j1; j += 8) {
                __m256 i = rnn_sigmoid8(rnn_gate8(x, g, j));
                __m256 f = rnn_sigmoid8(rnn_gate8(x, g, H + j));
                __m256 u = rnn_tanh8(rnn_gate8(x, g, 2 * H + j));
                __m256 o = rnn_sigmoid8(rnn_gate8(x, g, 3 * H + j));
                /* c = f c + i u */
                _mm256_storeu_ps(cb + j, _mm256_fmadd_ps(f, _mm256_loadu_ps(cb + j), _mm256_mul_ps(i, u)));
                _mm256_storeu_ps(keep + (j - j0), o);
            }
            for (j = j0; j < j1; j += 8)
                _mm256_storeu_ps(mb + j, _mm256_mul_ps(_mm256_loadu_ps(keep + (j - j0)),
                                                       rnn_tanh8(_mm256_loadu_ps(cb + j))));
        }
    }
    return 1;
}

#endif /* RNNFAST_X86_AVX2_CELLMATH_H */
