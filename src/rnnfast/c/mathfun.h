/*
 * mathfun.h -- scalar math for the gate math: exp, tanh and sigmoid with bounded error,
 * branch-free so that loops over them vectorize without -ffast-math (Cephes
 * polynomials, ~1-2 ulp, NaN propagated), and the libm functions the rarer
 * activations call, under one name per type (rnn_<name>_f, rnn_<name>_d) so that
 * cellmath.template.h can name them with RNN_TNAME.
 *
 * The float and the double versions are different formulas (not one template).
 * Everything is forced inline: each ISA's instantiation compiles it for its own target.
 * The x86-64 baseline (SSE2) has no inline floor, so there sigmoid/tanh run scalar.
 */
#ifndef RNNFAST_MATHFUN_H
#define RNNFAST_MATHFUN_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "template.h"

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

/* ---- libm, for the rarer activations ---- */

RNN_INLINE float rnn_expm1_f(float x) { return expm1f(x); }
RNN_INLINE double rnn_expm1_d(double x) { return expm1(x); }
RNN_INLINE float rnn_log1p_f(float x) { return log1pf(x); }
RNN_INLINE double rnn_log1p_d(double x) { return log1p(x); }
RNN_INLINE float rnn_libm_exp_f(float x) { return expf(x); }
RNN_INLINE double rnn_libm_exp_d(double x) { return exp(x); }

#endif /* RNNFAST_MATHFUN_H */
