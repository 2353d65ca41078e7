/*
 * _cellmath.h -- fused element-wise gate math for rnnfast's recurrent kernels.
 *
 * Design: the BLAS products of a time step are done by the caller (_kernels.pyx);
 * everything element-wise that follows them -- adding the input projection, the
 * gate activations, the state update, the masked carry-over and the write of the
 * output -- happens here, one row (batch element) at a time, in loops the compiler
 * vectorizes. sigmoid and tanh use an own exp with bounded error (Cephes
 * polynomials, ~1-2 ulp, NaN propagated) so that they vectorize without
 * -ffast-math; the rarer activations call libm.
 *
 * Runtime dispatch: on x86-64 with GCC the whole body is compiled three times, for
 * AVX-512 (F, VL, BW, DQ), for AVX2 + FMA and for the baseline, under
 * `#pragma GCC target`; rnn_select_isa() fills a table of function pointers with the
 * best set the CPU supports (or a lower one asked for: RNNFAST_ISA, so that tests
 * can run every path), so one build runs on any x86-64. Other compilers and
 * machines build the baseline only. The build needs -fno-trapping-math (setup.py)
 * for the branch-free selects below to vectorize. The x86-64 baseline (SSE2) has no
 * inline floor, so there sigmoid/tanh run scalar: correct, slower, and only on CPUs
 * without AVX2.
 *
 * Everything is defined twice, for float (suffix _f) and double (suffix _d), from
 * one macro body. Row pointers carry explicit leading dimensions (ld*), so a
 * bidirectional output can be written straight into its half of the concatenated
 * output. `valid` is NULL (every row steps) or one byte per row: 0 means a masked
 * step for that row: its state is carried over unchanged.
 *
 * Gate order is Keras': GRU z, r, h; LSTM i, f, c, o.
 */
#ifndef RNNFAST_CELLMATH_H
#define RNNFAST_CELLMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && (__GNUC__ >= 8)      \
    && !defined(RNNFAST_NO_DISPATCH)
#define RNN_X86_DISPATCH 1
#else
#define RNN_X86_DISPATCH 0
#endif

/* Helpers are forced inline so that each clone compiles them for its own target. */
#if defined(__GNUC__)
#define RNN_INLINE static inline __attribute__((always_inline))
#else
#define RNN_INLINE static inline
#endif

/* Activation codes; the Python side (layers.py, ACTIVATIONS) holds the same table. */
enum {
    RNN_LINEAR = 0,
    RNN_TANH = 1,
    RNN_SIGMOID = 2,
    RNN_HARD_SIGMOID = 3,        /* Keras 3: relu6(x + 3) / 6 */
    RNN_HARD_SIGMOID_K2 = 4,     /* Keras 2 / tf.keras: clip(0.2 x + 0.5, 0, 1) */
    RNN_RELU = 5,
    RNN_SOFTSIGN = 6,
    RNN_SOFTPLUS = 7,
    RNN_ELU = 8,
    RNN_SELU = 9,
    RNN_EXPONENTIAL = 10,
    RNN_N_ACTIVATIONS = 11
};

/* ---- exp with bounded error, branch-free so that loops over it vectorize ---- */

RNN_INLINE float rnn_exp_f(float x)
{
    /* Cephes expf: range reduction by ln2 in two parts, degree-5 polynomial. */
    x = x > 88.0f ? 88.0f : x;          /* comparisons are false for NaN: it passes */
    x = x < -87.0f ? -87.0f : x;
    float fx = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - fx * 0.693359375f;
    x = x - fx * -2.12194440e-4f;
    float z = x * x;
    float y = ((((1.9875691500E-4f * x + 1.3981999507E-3f) * x + 8.3334519073E-3f) * x
                + 4.1665795894E-2f) * x + 1.6666665459E-1f) * x + 5.0000001201E-1f;
    y = y * z + x + 1.0f;
    uint32_t bits = ((uint32_t)((int32_t)fx + 127)) << 23;
    float p2;
    memcpy(&p2, &bits, sizeof p2);
    return y * p2;
}

RNN_INLINE double rnn_exp_d(double x)
{
    /* Cephes exp: Pade form exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)). */
    x = x > 709.0 ? 709.0 : x;
    x = x < -708.0 ? -708.0 : x;
    double fx = floor(x * 1.4426950408889634073599 + 0.5);
    x = x - fx * 6.93145751953125E-1;
    x = x - fx * 1.42860682030941723212E-6;
    double xx = x * x;
    double px = x * ((1.26177193074810590878E-4 * xx + 3.02994407707441961300E-2) * xx
                     + 9.99999999999999999910E-1);
    double qx = ((3.00198505138664455042E-6 * xx + 2.52448340349684104192E-3) * xx
                 + 2.27265548208155028766E-1) * xx + 2.00000000000000000009E0;
    double y = 1.0 + 2.0 * (px / (qx - px));
    int32_t n = (int32_t)fx;            /* via int32: vectorizes without AVX512DQ */
    uint64_t bits = ((uint64_t)(int64_t)(n + 1023)) << 52;
    double p2;
    memcpy(&p2, &bits, sizeof p2);
    return y * p2;
}

RNN_INLINE float rnn_tanh_f(float x)
{
    /* |x| < 0.625: odd polynomial (Cephes tanhf); else 1 - 2 / (exp(2|x|) + 1). */
    float ax = fabsf(x);
    float z = x * x;
    float small = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z
                    + 1.33314422036E-1f) * z - 3.33332819422E-1f) * z * x + x;
    float e = rnn_exp_f(2.0f * ax);
    float big = 1.0f - 2.0f / (e + 1.0f);
    big = x < 0.0f ? -big : big;
    return ax < 0.625f ? small : big;   /* NaN: ax < 0.625 is false, big is NaN */
}

RNN_INLINE double rnn_tanh_d(double x)
{
    /* |x| < 0.625: x + x^3 P(x^2) / Q(x^2) (Cephes tanh); else via exp. */
    double ax = fabs(x);
    double s = x * x;
    double p = (-9.64399179425052238628E-1 * s - 9.92877231001918586564E1) * s
               - 1.61468768441708447952E3;
    double q = ((s + 1.12811678491632931402E2) * s + 2.23548839060100448583E3) * s
               + 4.84406305325125486048E3;
    double small = x + x * s * (p / q);
    double e = rnn_exp_d(2.0 * ax);
    double big = 1.0 - 2.0 / (e + 1.0);
    big = x < 0.0 ? -big : big;
    return ax < 0.625 ? small : big;
}

RNN_INLINE float rnn_sigmoid_f(float x) { return 1.0f / (1.0f + rnn_exp_f(-x)); }
RNN_INLINE double rnn_sigmoid_d(double x) { return 1.0 / (1.0 + rnn_exp_d(-x)); }

/* ---- fast paths: sigmoid/tanh and the fused GRU/LSTM step in AVX-512 float ----
 *
 * The same Cephes formulas as rnn_exp_f / rnn_tanh_f above, written with intrinsics
 * sixteen values at a time, and the GRU (reset-after) and LSTM steps with the usual
 * activations (sigmoid gates, tanh) done in one pass per row instead of one pass per
 * operation. Each returns how much it did: the elements done (activations) or 1 when
 * it took the whole step; the portable body finishes or does the rest. The other
 * instantiations do nothing here (they return 0). NaN propagates: min/max keep their
 * second operand when either is NaN, and the input is always passed second. */

#define RNN_NO_FAST_PATHS(T, S, I)                                                          \
RNN_INLINE int rnn_vtanh_##S##_##I(T *v, int n) { (void)v; (void)n; return 0; }            \
RNN_INLINE int rnn_vsigmoid_##S##_##I(T *v, int n) { (void)v; (void)n; return 0; }         \
RNN_INLINE int rnn_fused_gru_##S##_##I(int nrows, int H, const T *xp, long ldxp,            \
                                       const T *gh, long ldgh, const T *bhn, T *h,          \
                                       long ldh, const unsigned char *valid)                \
{                                                                                           \
    (void)nrows; (void)H; (void)xp; (void)ldxp; (void)gh; (void)ldgh; (void)bhn; (void)h;   \
    (void)ldh; (void)valid;                                                                 \
    return 0;                                                                               \
}                                                                                           \
RNN_INLINE int rnn_fused_lstm_##S##_##I(int nrows, int H, const T *xp, long ldxp,           \
                                        const T *gh, long ldgh, T *c, long ldc, T *m,       \
                                        long ldm, const unsigned char *valid)               \
{                                                                                           \
    (void)nrows; (void)H; (void)xp; (void)ldxp; (void)gh; (void)ldgh; (void)c; (void)ldc;   \
    (void)m; (void)ldm; (void)valid;                                                        \
    return 0;                                                                               \
}

#if RNN_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#include <immintrin.h>

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
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
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
RNN_INLINE __mmask16 rnn_lanes16(int j, int n)
{
    int left = n - j;
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

RNN_INLINE int rnn_vtanh_f_avx512(float *v, int n)
{
    int j;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = rnn_lanes16(j, n);
        _mm512_mask_storeu_ps(v + j, k, rnn_tanh16(_mm512_maskz_loadu_ps(k, v + j)));
    }
    return n;
}

RNN_INLINE int rnn_vsigmoid_f_avx512(float *v, int n)
{
    int j;
    for (j = 0; j < n; j += 16) {
        __mmask16 k = rnn_lanes16(j, n);
        _mm512_mask_storeu_ps(v + j, k, rnn_sigmoid16(_mm512_maskz_loadu_ps(k, v + j)));
    }
    return n;
}

/* GRU reset-after, sigmoid gates and tanh: the equations of rnn_gru_ra_* in one pass. */
RNN_INLINE int rnn_fused_gru_f_avx512(int nrows, int H, const float *xp, long ldxp,
                                      const float *gh, long ldgh, const float *bhn, float *h,
                                      long ldh, const unsigned char *valid)
{
    int b, j;
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
RNN_INLINE int rnn_fused_lstm_f_avx512(int nrows, int H, const float *xp, long ldxp,
                                       const float *gh, long ldgh, float *c, long ldc, float *m,
                                       long ldm, const unsigned char *valid)
{
    int b, j;
    for (b = 0; b < nrows; b++) {
        if (valid && !valid[b]) continue;
        const float *x = xp + b * ldxp, *g = gh + b * ldgh;
        float *cb = c + b * ldc, *mb = m + b * ldm;
        for (j = 0; j < H; j += 16) {
            __mmask16 k = rnn_lanes16(j, H);
#define RNN_GATE16(q) _mm512_add_ps(_mm512_maskz_loadu_ps(k, x + (q) * H + j), \
                                    _mm512_maskz_loadu_ps(k, g + (q) * H + j))
            __m512 i = rnn_sigmoid16(RNN_GATE16(0));
            __m512 f = rnn_sigmoid16(RNN_GATE16(1));
            __m512 u = rnn_tanh16(RNN_GATE16(2));
            __m512 o = rnn_sigmoid16(RNN_GATE16(3));
#undef RNN_GATE16
            __m512 cn = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(k, cb + j), _mm512_mul_ps(i, u));
            _mm512_mask_storeu_ps(cb + j, k, cn);
            _mm512_mask_storeu_ps(mb + j, k, _mm512_mul_ps(o, rnn_tanh16(cn)));
        }
    }
    return 1;
}
#pragma GCC pop_options
RNN_NO_FAST_PATHS(double, d, avx512)
#endif
RNN_NO_FAST_PATHS(float, f, base)
RNN_NO_FAST_PATHS(double, d, base)
#if RNN_X86_DISPATCH
RNN_NO_FAST_PATHS(float, f, avx2)
RNN_NO_FAST_PATHS(double, d, avx2)
#endif

/* ---- the whole body, instantiated for float and double ---- */

#define RNN_DEFINE_CELLMATH(T, S, I, EXPM1, LOG1P, EXP)                                     \
                                                                                            \
/* v[0:n] = act(v[0:n]) in place. */                                                        \
RNN_INLINE void rnn_act_##S##_##I(int kind, T *v, int n)                                    \
{                                                                                           \
    int j;                                                                                  \
    switch (kind) {                                                                         \
    case RNN_TANH:                                                                          \
        for (j = rnn_vtanh_##S##_##I(v, n); j < n; j++) v[j] = rnn_tanh_##S(v[j]);          \
        break;                                                                              \
    case RNN_SIGMOID:                                                                       \
        for (j = rnn_vsigmoid_##S##_##I(v, n); j < n; j++) v[j] = rnn_sigmoid_##S(v[j]);    \
        break;                                                                              \
    case RNN_HARD_SIGMOID:                                                                  \
        for (j = 0; j < n; j++) {                                                           \
            T a = v[j] + (T)3;                                                              \
            a = a < (T)0 ? (T)0 : a;                                                        \
            a = a > (T)6 ? (T)6 : a;                                                        \
            v[j] = a / (T)6;                                                                \
        }                                                                                   \
        break;                                                                              \
    case RNN_HARD_SIGMOID_K2:                                                               \
        for (j = 0; j < n; j++) {                                                           \
            T a = (T)0.2 * v[j] + (T)0.5;                                                   \
            a = a < (T)0 ? (T)0 : a;                                                        \
            v[j] = a > (T)1 ? (T)1 : a;                                                     \
        }                                                                                   \
        break;                                                                              \
    case RNN_RELU:                                                                          \
        for (j = 0; j < n; j++) v[j] = v[j] < (T)0 ? (T)0 : v[j];                           \
        break;                                                                              \
    case RNN_SOFTSIGN:                                                                      \
        for (j = 0; j < n; j++) v[j] = v[j] / ((T)1 + (v[j] < (T)0 ? -v[j] : v[j]));        \
        break;                                                                              \
    case RNN_SOFTPLUS:                                                                      \
        for (j = 0; j < n; j++) v[j] = v[j] > (T)20 ? v[j] : LOG1P(EXP(v[j]));              \
        break;                                                                              \
    case RNN_ELU:                                                                           \
        for (j = 0; j < n; j++) v[j] = v[j] > (T)0 ? v[j] : EXPM1(v[j]);                    \
        break;                                                                              \
    case RNN_SELU:                                                                          \
        for (j = 0; j < n; j++)                                                             \
            v[j] = (T)1.0507009873554804934193349852946 *                                   \
                   (v[j] > (T)0 ? v[j] : (T)1.6732632423543772848170429916717 * EXPM1(v[j])); \
        break;                                                                              \
    case RNN_EXPONENTIAL:                                                                   \
        for (j = 0; j < n; j++) v[j] = EXP(v[j]);                                           \
        break;                                                                              \
    default: /* RNN_LINEAR */                                                               \
        break;                                                                              \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Test hook: the activation exactly as the kernels apply it. */                            \
static void rnn_activate_##S##_##I(int kind, T *v, int n) { rnn_act_##S##_##I(kind, v, n); } \
                                                                                            \
/* GRU, reset-after (PyTorch; Keras reset_after=True), one step for nrows rows:             \
 *   (1) z = ract(xp_z + gh_z)            (2) r = ract(xp_r + gh_r)                         \
 *   (3) n = act(xp_h + r * (gh_h + bhn))  (4) h = z * h + (1 - z) * n                      \
 * xp already holds x W + b (all gates) and the z, r parts of the recurrent bias;           \
 * gh = h_prev U; bhn is the candidate's recurrent bias. tmp: 3H scratch. */                \
static void rnn_gru_ra_##S##_##I(int nrows, int H, const T *xp, long ldxp,                  \
                               const T *gh, long ldgh, const T *bhn, T *h, long ldh,        \
                               const unsigned char *valid, T *tmp, int act, int ract)       \
{                                                                                           \
    int b, j;                                                                               \
    if (ract == RNN_SIGMOID && act == RNN_TANH                                              \
        && rnn_fused_gru_##S##_##I(nrows, H, xp, ldxp, gh, ldgh, bhn, h, ldh, valid))       \
        return;                                                                             \
    for (b = 0; b < nrows; b++) {                                                           \
        if (valid && !valid[b]) continue;                                                   \
        const T *x = xp + b * ldxp, *g = gh + b * ldgh;                                     \
        T *hb = h + b * ldh, *n = tmp + 2 * H;                                              \
        for (j = 0; j < 2 * H; j++) tmp[j] = x[j] + g[j];                                   \
        rnn_act_##S##_##I(ract, tmp, 2 * H);                                                \
        for (j = 0; j < H; j++) n[j] = x[2 * H + j] + tmp[H + j] * (g[2 * H + j] + bhn[j]); \
        rnn_act_##S##_##I(act, n, H);                                                       \
        for (j = 0; j < H; j++) hb[j] = tmp[j] * hb[j] + ((T)1 - tmp[j]) * n[j];            \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* GRU, reset-before (Keras reset_after=False; Cho et al. 2014), first half:                \
 *   (1) z = ract(xp_z + gzr_z)  (2) r = ract(xp_r + gzr_r)  -> zr[b, 0:2H]                 \
 *   (3) rh = r * h_prev          -> rh[b, 0:H], for the caller's product rh U_h.           \
 * Masked rows get rh = 0 (their product is computed but never used). */                    \
static void rnn_gru_rb_gates_##S##_##I(int nrows, int H, const T *xp, long ldxp,            \
                                     const T *gzr, long ldg, const T *h, long ldh,          \
                                     const unsigned char *valid, T *zr, T *rh, int ract)    \
{                                                                                           \
    int b, j;                                                                               \
    for (b = 0; b < nrows; b++) {                                                           \
        T *z = zr + (long)b * 2 * H, *o = rh + (long)b * H;                                 \
        if (valid && !valid[b]) {                                                           \
            for (j = 0; j < H; j++) o[j] = (T)0;                                            \
            continue;                                                                       \
        }                                                                                   \
        const T *x = xp + b * ldxp, *g = gzr + b * ldg, *hb = h + b * ldh;                  \
        for (j = 0; j < 2 * H; j++) z[j] = x[j] + g[j];                                     \
        rnn_act_##S##_##I(ract, z, 2 * H);                                                  \
        for (j = 0; j < H; j++) o[j] = z[H + j] * hb[j];                                    \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* GRU, reset-before, second half, with ghh = (r * h_prev) U_h:                             \
 *   (4) n = act(xp_h + ghh)   (5) h = z * h + (1 - z) * n.  tmp: H scratch. */             \
static void rnn_gru_rb_update_##S##_##I(int nrows, int H, const T *xp, long ldxp,           \
                                      const T *ghh, long ldg, const T *zr, T *h, long ldh,  \
                                      const unsigned char *valid, T *tmp, int act)          \
{                                                                                           \
    int b, j;                                                                               \
    for (b = 0; b < nrows; b++) {                                                           \
        if (valid && !valid[b]) continue;                                                   \
        const T *x = xp + b * ldxp + 2 * H, *g = ghh + b * ldg, *z = zr + (long)b * 2 * H;  \
        T *hb = h + b * ldh;                                                                \
        for (j = 0; j < H; j++) tmp[j] = x[j] + g[j];                                       \
        rnn_act_##S##_##I(act, tmp, H);                                                     \
        for (j = 0; j < H; j++) hb[j] = z[j] * hb[j] + ((T)1 - z[j]) * tmp[j];              \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* LSTM, one step:  g = xp + gh  (gates i, f, c, o)                                         \
 *   (1) i = ract(g_i) (2) f = ract(g_f) (3) o = ract(g_o) (4) u = act(g_c)                 \
 *   (5) c = f * c + i * u   (6) m = o * act(c)                                             \
 * m is written to `m` (the hidden state itself, or the input of the projection             \
 * h = m W_hr done by the caller). tmp: 4H scratch. */                                      \
static void rnn_lstm_##S##_##I(int nrows, int H, const T *xp, long ldxp, const T *gh,       \
                             long ldgh, T *c, long ldc, T *m, long ldm,                     \
                             const unsigned char *valid, T *tmp, int act, int ract)         \
{                                                                                           \
    int b, j;                                                                               \
    if (ract == RNN_SIGMOID && act == RNN_TANH                                              \
        && rnn_fused_lstm_##S##_##I(nrows, H, xp, ldxp, gh, ldgh, c, ldc, m, ldm, valid))   \
        return;                                                                             \
    for (b = 0; b < nrows; b++) {                                                           \
        if (valid && !valid[b]) continue;                                                   \
        const T *x = xp + b * ldxp, *g = gh + b * ldgh;                                     \
        T *cb = c + b * ldc, *mb = m + b * ldm;                                             \
        T *gi = tmp, *gf = tmp + H, *gc = tmp + 2 * H, *go = tmp + 3 * H;                   \
        for (j = 0; j < 4 * H; j++) tmp[j] = x[j] + g[j];                                   \
        rnn_act_##S##_##I(ract, gi, 2 * H);                                                 \
        rnn_act_##S##_##I(ract, go, H);                                                     \
        rnn_act_##S##_##I(act, gc, H);                                                      \
        for (j = 0; j < H; j++) cb[j] = gf[j] * cb[j] + gi[j] * gc[j];                      \
        for (j = 0; j < H; j++) gc[j] = cb[j];                                              \
        rnn_act_##S##_##I(act, gc, H);                                                      \
        for (j = 0; j < H; j++) mb[j] = go[j] * gc[j];                                      \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* SimpleRNN, one step: (1) h = act(xp + gh). */                                            \
static void rnn_simple_##S##_##I(int nrows, int H, const T *xp, long ldxp, const T *gh,     \
                               long ldgh, T *h, long ldh, const unsigned char *valid,       \
                               int act)                                                     \
{                                                                                           \
    int b, j;                                                                               \
    for (b = 0; b < nrows; b++) {                                                           \
        if (valid && !valid[b]) continue;                                                   \
        const T *x = xp + b * ldxp, *g = gh + b * ldgh;                                     \
        T *hb = h + b * ldh;                                                                \
        for (j = 0; j < H; j++) hb[j] = x[j] + g[j];                                        \
        rnn_act_##S##_##I(act, hb, H);                                                      \
    }                                                                                       \
}

#define RNN_DEFINE_COMMON(T, S)                                                             \
/* Copy rows of src (valid rows only, or all when valid is NULL) into dst. */               \
static inline void rnn_copy_rows_##S(int nrows, int n, const T *src, long lds, T *dst,      \
                                     long ldd, const unsigned char *valid)                  \
{                                                                                           \
    int b;                                                                                  \
    for (b = 0; b < nrows; b++)                                                             \
        if (!valid || valid[b]) memcpy(dst + b * ldd, src + b * lds, (size_t)n * sizeof(T)); \
}                                                                                           \
                                                                                            \
/* Write one step's output rows. A stepped row emits its new state; a masked row            \
 * emits zeros when zero_output (or before its first stepped row: Keras' previous           \
 * output starts at zero), else the state it carries (its last output). */                  \
static inline void rnn_emit_##S(int nrows, int n, const T *h, long ldh, T *out, long ldo,   \
                                const unsigned char *valid, unsigned char *seen,            \
                                int zero_output)                                            \
{                                                                                           \
    int b;                                                                                  \
    for (b = 0; b < nrows; b++) {                                                           \
        T *o = out + b * ldo;                                                               \
        if (!valid || valid[b]) {                                                           \
            memcpy(o, h + b * ldh, (size_t)n * sizeof(T));                                  \
            if (!seen[b]) seen[b] = 1;  /* written once: threads share its cache line */    \
        } else if (zero_output || !seen[b]) {                                               \
            memset(o, 0, (size_t)n * sizeof(T));                                            \
        } else {                                                                            \
            memcpy(o, h + b * ldh, (size_t)n * sizeof(T));                                  \
        }                                                                                   \
    }                                                                                       \
}

RNN_DEFINE_COMMON(float, f)
RNN_DEFINE_COMMON(double, d)

/* ---- one instantiation per instruction set ---- */

RNN_DEFINE_CELLMATH(float, f, base, expm1f, log1pf, expf)
RNN_DEFINE_CELLMATH(double, d, base, expm1, log1p, exp)

#if RNN_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma")
RNN_DEFINE_CELLMATH(float, f, avx2, expm1f, log1pf, expf)
RNN_DEFINE_CELLMATH(double, d, avx2, expm1, log1p, exp)
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
RNN_DEFINE_CELLMATH(float, f, avx512, expm1f, log1pf, expf)
RNN_DEFINE_CELLMATH(double, d, avx512, expm1, log1p, exp)
#pragma GCC pop_options
#endif

/* ---- the dispatch table; the kernels call the names below ---- */

#define RNN_DEFINE_TABLE(T, S)                                                              \
typedef struct {                                                                            \
    void (*activate)(int, T *, int);                                                        \
    void (*gru_ra)(int, int, const T *, long, const T *, long, const T *, T *, long,        \
                   const unsigned char *, T *, int, int);                                   \
    void (*gru_rb_gates)(int, int, const T *, long, const T *, long, const T *, long,       \
                         const unsigned char *, T *, T *, int);                             \
    void (*gru_rb_update)(int, int, const T *, long, const T *, long, const T *, T *, long, \
                          const unsigned char *, T *, int);                                 \
    void (*lstm)(int, int, const T *, long, const T *, long, T *, long, T *, long,          \
                 const unsigned char *, T *, int, int);                                     \
    void (*simple)(int, int, const T *, long, const T *, long, T *, long,                   \
                   const unsigned char *, int);                                             \
} rnn_table_##S;

RNN_DEFINE_TABLE(float, f)
RNN_DEFINE_TABLE(double, d)

#define RNN_TABLE(S, I) { rnn_activate_##S##_##I, rnn_gru_ra_##S##_##I, rnn_gru_rb_gates_##S##_##I, \
                          rnn_gru_rb_update_##S##_##I, rnn_lstm_##S##_##I, rnn_simple_##S##_##I }

static rnn_table_f rnn_tab_f = RNN_TABLE(f, base);
static rnn_table_d rnn_tab_d = RNN_TABLE(d, base);
static int rnn_isa = 0;

/* Instruction-set levels: 0 baseline, 1 AVX2 + FMA, 2 AVX-512 (F, VL, BW, DQ). */
static int rnn_isa_supported(void)
{
#if RNN_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

/* Use the best supported level not above `level` (negative: the best). Returns it.
 * Called once, when the module is imported, before any kernel runs. */
static int rnn_select_isa(int level)
{
    int best = rnn_isa_supported();
    if (level < 0 || level > best)
        level = best;
#if RNN_X86_DISPATCH
    if (level == 2) {
        rnn_table_f tf = RNN_TABLE(f, avx512);
        rnn_table_d td = RNN_TABLE(d, avx512);
        rnn_tab_f = tf;
        rnn_tab_d = td;
    } else if (level == 1) {
        rnn_table_f tf = RNN_TABLE(f, avx2);
        rnn_table_d td = RNN_TABLE(d, avx2);
        rnn_tab_f = tf;
        rnn_tab_d = td;
    } else
#endif
    {
        rnn_table_f tf = RNN_TABLE(f, base);
        rnn_table_d td = RNN_TABLE(d, base);
        rnn_tab_f = tf;
        rnn_tab_d = td;
        level = 0;
    }
    rnn_isa = level;
    return level;
}

static int rnn_isa_level(void) { return rnn_isa; }

#define rnn_activate_f (rnn_tab_f.activate)
#define rnn_activate_d (rnn_tab_d.activate)
#define rnn_gru_ra_f (rnn_tab_f.gru_ra)
#define rnn_gru_ra_d (rnn_tab_d.gru_ra)
#define rnn_gru_rb_gates_f (rnn_tab_f.gru_rb_gates)
#define rnn_gru_rb_gates_d (rnn_tab_d.gru_rb_gates)
#define rnn_gru_rb_update_f (rnn_tab_f.gru_rb_update)
#define rnn_gru_rb_update_d (rnn_tab_d.gru_rb_update)
#define rnn_lstm_f (rnn_tab_f.lstm)
#define rnn_lstm_d (rnn_tab_d.lstm)
#define rnn_simple_f (rnn_tab_f.simple)
#define rnn_simple_d (rnn_tab_d.simple)

#endif /* RNNFAST_CELLMATH_H */
