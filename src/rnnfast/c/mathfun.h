/*
 * mathfun.h -- scalar math for the gate math: exp, tanh and sigmoid with bounded error,
 * branch-free so that loops over them vectorize without -ffast-math (Cephes' reduction
 * and polynomials; float sigmoid and tanh on a polynomial of one degree less: at most
 * 2.5 and 2.6 ulp; NaN propagated), and the libm functions the rarer
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

/* ---- the gate activations: sigmoid and tanh, on one reduced exp ---- */

/* For t in [-87, 88] (NaN passes): t = n ln2 + r, |r| <= ln2/2 (rnn_exp_f's two-part
 * reduction), *p2 = 2^n; returns q = expm1(r) = r + r^2 P(r), so that exp(t) =
 * (q + 1) 2^n and expm1(t) = q 2^n + (2^n - 1). P has degree 4, one multiply-add less
 * than rnn_exp_f's Cephes polynomial: fitted here (minimax of the relative error of
 * 1 + r + r^2 P on |r| <= ln2/2), 3.6e-9 with these float coefficients, below the
 * rounding of the evaluation. The gate math is bound by multiply-adds (bench/README.md,
 * session 10). */
RNN_INLINE float rnn_exp_parts_f(float t, float *p2)
{
    float fx = floorf(t * 1.44269504088896341f + 0.5f);
    float r = t - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float z = r * r;
    float y = (((1.3814540579915047E-3f * r + 8.36874544620514E-3f) * r + 4.166838899254799E-2f) * r
               + 1.666652113199234E-1f) * r + 4.999999403953552E-1f;
    uint32_t bits = ((uint32_t)((int32_t)fx + 127)) << 23;
    memcpy(p2, &bits, sizeof *p2);
    return y * z + r;
}

/* 2|x| beyond which tanh is taken at this value (float tanh is 1 from |x| = 9.02) */
#define RNN_TANH_CUT 40.0f

RNN_INLINE float rnn_tanh_f(float x)
{
    /* tanh |x| = e / (e + 2), e = expm1(2 |x|) = q 2^n + (2^n - 1) (rnn_exp_parts_f):
     * no cancellation near 0, so one polynomial serves every x (the odd polynomial that
     * served |x| < 0.625 cost five multiply-adds more); 2.4 ulp at most (float64 tanh
     * over every float in [1e-30, 20]; 1.3 before) */
    float t = 2.0f * fabsf(x), p2;
    t = t > RNN_TANH_CUT ? RNN_TANH_CUT : t;     /* NaN passes */
    float q = rnn_exp_parts_f(t, &p2);
    float e = q * p2 + (p2 - 1.0f);
    return copysignf(e / (e + 2.0f), x);          /* NaN stays NaN */
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

RNN_INLINE float rnn_sigmoid_f(float x)
{
    /* 1 / (1 + exp(-x)), exp(-x) = (q + 1) 2^n (rnn_exp_parts_f; rnn_exp_f's clamps) */
    float t = -x, p2;
    t = t > 88.0f ? 88.0f : t;          /* comparisons are false for NaN: it passes */
    t = t < -87.0f ? -87.0f : t;
    float q = rnn_exp_parts_f(t, &p2);
    return 1.0f / (1.0f + (q + 1.0f) * p2);
}
RNN_INLINE double rnn_sigmoid_d(double x) { return 1.0 / (1.0 + rnn_exp_d(-x)); }

/* ---- libm, for the rarer activations ---- */

RNN_INLINE float rnn_expm1_f(float x) { return expm1f(x); }
RNN_INLINE double rnn_expm1_d(double x) { return expm1(x); }
RNN_INLINE float rnn_log1p_f(float x) { return log1pf(x); }
RNN_INLINE double rnn_log1p_d(double x) { return log1p(x); }
RNN_INLINE float rnn_libm_exp_f(float x) { return expf(x); }
RNN_INLINE double rnn_libm_exp_d(double x) { return exp(x); }

#endif /* RNNFAST_MATHFUN_H */
