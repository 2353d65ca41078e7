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
 * time and set its constants up per pass; here a row takes two passes (bench/README.md,
 * session 15: the LSTM gate math 10.6 -> 8.4 ns per unit and row, GRU 6.4 -> 5.2), and
 * the activations of a pass run side by side, one operation for all before the next
 * (rnn_acts8; session 17: LSTM 7.8 -> 6.2 ns, GRU 4.9 -> 3.9). The activations alone
 * (vtanh, vsigmoid: a Dense layer's, the cells without a fused step) run four groups
 * side by side too, bit for bit the portable loops' (every float).
 *
 * cellmath.template.h calls them when instantiated with CELLMATH_FAST (float, avx2).
 * Included by x86/avx2_kernels.h inside its `#pragma GCC target` region only.
 */
#ifndef RNNFAST_X86_AVX2_CELLMATH_H
#define RNNFAST_X86_AVX2_CELLMATH_H

#include <immintrin.h>

#include "prefetch.h"                 /* rnn_prefetch_row: the next row's gate inputs */

/* The activations of a fused step, n (1 to 8) vectors of eight lanes side by side,
 * in place: v[k] = sigmoid(v[k]) where bit k of `tanh_bits` is 0, tanh(v[k]) where it
 * is 1 (n and tanh_bits constants: the loops unroll and the selections fold). Each
 * value is rnn_sigmoid_f's or rnn_tanh_f's sequence of operations (mathfun.h, on
 * rnn_exp_parts_f: q = expm1(r), 2^n):
 *   sigmoid: t = -x, x clamped to [-88, 87] (NaN passes: max/min return their second
 *            operand, x, when it is NaN; the negation is folded into the constants, as
 *            GCC folds it); 1 / (1 + (q + 1) 2^n);
 *   tanh:    t = min(2|x|, 40); e = q 2^n + (2^n - 1); e / (e + 2) with the sign of x
 *            (NaN stays NaN);
 * with fx = floor(t log2e + 0.5), r = t - fx hi - fx lo as multiply-adds. 2^n is
 * (fx + 2^23 + 127) shifted left by 23: fx is a whole number in [-127, 127], so the
 * sum is exact and its low mantissa bits are fx + 127, what vcvttps2dq + vpaddd gave
 * in two instructions (for a NaN fx the two 2^n differ, finite or infinite, never NaN:
 * the result is q's NaN either way, the operand taken first by the multiply-add that
 * takes 2^n; every float checked against the portable loops).
 * Why side by side, one operation for every vector before the next: one activation is
 * a chain of ~24 dependent operations (~70 cycles), and on Zen 1 each 256-bit
 * operation takes two of the out-of-order window's entries, so chains written one after
 * another overlapped little. Zen 1 (harness, 64 rows of 64 units): the LSTM step 7.8 ->
 * 6.9 ns per unit and row from the interleaving, -> 6.2 with the 2^n above; GRU 4.9 ->
 * 4.0 -> 3.9 (bench/README.md, session 17). */
RNN_INLINE void rnn_acts8(const int n, const unsigned tanh_bits, __m256 *v)
{
    const __m256 sgn = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 t[8], fx[8], r[8], z[8], y[8], p2[8];
    int k;
#define RNN_TANH_K ((tanh_bits >> k) & 1u)
#pragma GCC unroll 8
    for (k = 0; k < n; k++) {
        if (RNN_TANH_K) {
            __m256 a = _mm256_andnot_ps(sgn, v[k]);
            t[k] = _mm256_min_ps(_mm256_set1_ps(RNN_TANH_CUT), _mm256_add_ps(a, a));
        } else {
            t[k] = _mm256_min_ps(_mm256_set1_ps(87.0f), _mm256_max_ps(_mm256_set1_ps(-88.0f), v[k]));
        }
    }
#pragma GCC unroll 8
    for (k = 0; k < n; k++)
        fx[k] = _mm256_floor_ps(_mm256_fmadd_ps(
            t[k], _mm256_set1_ps(RNN_TANH_K ? 1.44269504088896341f : -1.44269504088896341f), _mm256_set1_ps(0.5f)));
    /* r = t - fx hi: tanh fnmadd (t - fx hi); sigmoid fnmsub (-(fx hi) - x) */
#pragma GCC unroll 8
    for (k = 0; k < n; k++)
        r[k] = RNN_TANH_K ? _mm256_fnmadd_ps(fx[k], _mm256_set1_ps(0.693359375f), t[k])
                          : _mm256_fnmsub_ps(fx[k], _mm256_set1_ps(0.693359375f), t[k]);
#pragma GCC unroll 8
    for (k = 0; k < n; k++) r[k] = _mm256_fmadd_ps(fx[k], _mm256_set1_ps(2.12194440e-4f), r[k]); /* r - fx * -lo */
#pragma GCC unroll 8
    for (k = 0; k < n; k++) z[k] = _mm256_mul_ps(r[k], r[k]);
#pragma GCC unroll 8
    for (k = 0; k < n; k++)
        y[k] = _mm256_fmadd_ps(r[k], _mm256_set1_ps(1.3814540579915047E-3f), _mm256_set1_ps(8.36874544620514E-3f));
#pragma GCC unroll 8
    for (k = 0; k < n; k++) y[k] = _mm256_fmadd_ps(r[k], y[k], _mm256_set1_ps(4.166838899254799E-2f));
#pragma GCC unroll 8
    for (k = 0; k < n; k++) y[k] = _mm256_fmadd_ps(r[k], y[k], _mm256_set1_ps(1.666652113199234E-1f));
#pragma GCC unroll 8
    for (k = 0; k < n; k++) y[k] = _mm256_fmadd_ps(r[k], y[k], _mm256_set1_ps(4.999999403953552E-1f));
#pragma GCC unroll 8
    for (k = 0; k < n; k++)
        p2[k] = _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_castps_si256(_mm256_add_ps(fx[k], _mm256_set1_ps(8388735.0f))), 23));
#pragma GCC unroll 8
    for (k = 0; k < n; k++) y[k] = _mm256_fmadd_ps(z[k], y[k], r[k]);   /* q */
#pragma GCC unroll 8
    for (k = 0; k < n; k++) {
        if (RNN_TANH_K) {
            __m256 e = _mm256_fmadd_ps(y[k], p2[k], _mm256_add_ps(p2[k], _mm256_set1_ps(-1.0f)));
            __m256 th = _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
            v[k] = _mm256_or_ps(_mm256_andnot_ps(sgn, th), _mm256_and_ps(sgn, v[k]));
        } else {
            v[k] = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_add_ps(y[k], one), p2[k], one));
        }
    }
#undef RNN_TANH_K
}

/* v[0:n] = act(v[0:n]) in place for the whole eight-lane groups (four side by side,
 * then one at a time); returns the elements done (act's scalar loop does the rest). */
RNN_INLINE long rnn_vact_f_avx2(const unsigned tanh_bits, float *v, long n)
{
    long j;
    int k;
    for (j = 0; j + 32 <= n; j += 32) {
        __m256 w[4];
#pragma GCC unroll 4
        for (k = 0; k < 4; k++) w[k] = _mm256_loadu_ps(v + j + 8 * k);
        rnn_acts8(4, tanh_bits, w);
#pragma GCC unroll 4
        for (k = 0; k < 4; k++) _mm256_storeu_ps(v + j + 8 * k, w[k]);
    }
    for (; j + 8 <= n; j += 8) {
        __m256 w = _mm256_loadu_ps(v + j);
        rnn_acts8(1, tanh_bits & 1u, &w);
        _mm256_storeu_ps(v + j, w);
    }
    return j;
}

RNN_INLINE long rnn_vtanh_f_avx2(float *v, long n) { return rnn_vact_f_avx2(15u, v, n); }

RNN_INLINE long rnn_vsigmoid_f_avx2(float *v, long n) { return rnn_vact_f_avx2(0u, v, n); }

/* Units per piece of a row in the fused steps' two passes (what the first keeps for
 * the second stays in L1). */
#define RNN_FUSED_UNITS 256

/* Lanes j..j+7 of a gate row: the projection plus the product, x[o] + g[o]. */
RNN_INLINE __m256 rnn_gate8(const float *x, const float *g, long o)
{
    return _mm256_add_ps(_mm256_loadu_ps(x + o), _mm256_loadu_ps(g + o));
}

/* GRU pass 1 for NG (1 or 2) eight-unit groups from unit j (o: j - j0, its place in
 * keep): z kept, and a = x_h + r (g_h + bhn) kept RNN_FUSED_UNITS further. */
RNN_INLINE void rnn_gru_pass1_avx2(const int NG, const float *x, const float *g, const float *bhn, long H,
                                   long j, float *keep, long o)
{
    __m256 v[4];
    int k;
#pragma GCC unroll 2
    for (k = 0; k < NG; k++) {
        v[2 * k] = rnn_gate8(x, g, j + 8 * k);               /* z */
        v[2 * k + 1] = rnn_gate8(x, g, H + j + 8 * k);       /* r */
    }
    rnn_acts8(2 * NG, 0u, v);
#pragma GCC unroll 2
    for (k = 0; k < NG; k++) {
        long u = j + 8 * k;
        __m256 gn = _mm256_add_ps(_mm256_loadu_ps(g + 2 * H + u), _mm256_loadu_ps(bhn + u));
        _mm256_storeu_ps(keep + o + 8 * k, v[2 * k]);
        _mm256_storeu_ps(keep + RNN_FUSED_UNITS + o + 8 * k, _mm256_fmadd_ps(v[2 * k + 1], gn, _mm256_loadu_ps(x + 2 * H + u)));
    }
}

/* GRU pass 2 for NG (1 or 4) groups: h = z h + (1 - z) tanh(a). */
RNN_INLINE void rnn_gru_pass2_avx2(const int NG, const float *keep, long o, float *h)
{
    __m256 v[4];
    int k;
#pragma GCC unroll 4
    for (k = 0; k < NG; k++) v[k] = _mm256_loadu_ps(keep + RNN_FUSED_UNITS + o + 8 * k);
    rnn_acts8(NG, 15u, v);
#pragma GCC unroll 4
    for (k = 0; k < NG; k++) {
        __m256 z = _mm256_loadu_ps(keep + o + 8 * k);
        _mm256_storeu_ps(h + 8 * k, _mm256_fmadd_ps(z, _mm256_loadu_ps(h + 8 * k),
                                                     _mm256_mul_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), z), v[k])));
    }
}

/* GRU reset-after, sigmoid gates and tanh: the equations of rnn_gru_ra_* in two passes
 * over each piece of up to RNN_FUSED_UNITS units of a row: (1) z, and a = x_h + r (g_h +
 * bhn), kept, two eight-unit groups side by side (four sigmoids); (2) h = z h + (1 - z)
 * tanh(a), four groups side by side. H a multiple of 8 (else 0: the portable body runs). */
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
        if (b + 1 < nrows)
            rnn_prefetch_row(x + ldxp, g + ldgh, 3 * H);
        for (j0 = 0; j0 < H; j0 = j1) {
            j1 = H - j0 > RNN_FUSED_UNITS ? j0 + RNN_FUSED_UNITS : H;
            for (j = j0; j + 16 <= j1; j += 16) rnn_gru_pass1_avx2(2, x, g, bhn, H, j, keep, j - j0);
            for (; j < j1; j += 8) rnn_gru_pass1_avx2(1, x, g, bhn, H, j, keep, j - j0);
            for (j = j0; j + 32 <= j1; j += 32) rnn_gru_pass2_avx2(4, keep, j - j0, hb + j);
            for (; j < j1; j += 8) rnn_gru_pass2_avx2(1, keep, j - j0, hb + j);
        }
    }
    return 1;
}

/* LSTM pass 2 for NG (1 or 4) groups: m = o tanh(c), o kept. */
RNN_INLINE void rnn_lstm_pass2_avx2(const int NG, const float *c, const float *keep, float *m)
{
    __m256 v[4];
    int k;
#pragma GCC unroll 4
    for (k = 0; k < NG; k++) v[k] = _mm256_loadu_ps(c + 8 * k);
    rnn_acts8(NG, 15u, v);
#pragma GCC unroll 4
    for (k = 0; k < NG; k++) _mm256_storeu_ps(m + 8 * k, _mm256_mul_ps(_mm256_loadu_ps(keep + 8 * k), v[k]));
}

/* LSTM, sigmoid gates and tanh: the equations of rnn_lstm_* in two passes over each
 * piece of up to RNN_FUSED_UNITS units of a row: (1) the four gates of an eight-unit
 * group side by side, c = f c + i u, o kept; (2) m = o tanh(c), four groups side by
 * side. H a multiple of 8 (else 0: the portable body runs). */
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
        if (b + 1 < nrows)
            rnn_prefetch_row(x + ldxp, g + ldgh, 4 * H);
        for (j0 = 0; j0 < H; j0 = j1) {
            j1 = H - j0 > RNN_FUSED_UNITS ? j0 + RNN_FUSED_UNITS : H;
            for (j = j0; j < j1; j += 8) {
                /* i, f, u (tanh: bit 2), o */
                __m256 v[4] = {rnn_gate8(x, g, j), rnn_gate8(x, g, H + j), rnn_gate8(x, g, 2 * H + j),
                               rnn_gate8(x, g, 3 * H + j)};
                rnn_acts8(4, 4u, v);
                /* c = f c + i u */
                _mm256_storeu_ps(cb + j, _mm256_fmadd_ps(v[1], _mm256_loadu_ps(cb + j), _mm256_mul_ps(v[0], v[2])));
                _mm256_storeu_ps(keep + (j - j0), v[3]);
            }
            for (j = j0; j + 32 <= j1; j += 32) rnn_lstm_pass2_avx2(4, cb + j, keep + (j - j0), mb + j);
            for (; j < j1; j += 8) rnn_lstm_pass2_avx2(1, cb + j, keep + (j - j0), mb + j);
        }
    }
    return 1;
}

#endif /* RNNFAST_X86_AVX2_CELLMATH_H */
