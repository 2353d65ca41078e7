/*
 * x86/avx512_kernels.h -- x86-64 with AVX-512 (F, VL, BW, DQ): float has its own
 * fast paths (avx512_cellmath.h: fused GRU / LSTM steps, vector sigmoid and tanh)
 * and its own register-tiled product (avx512_packgemm.h); double runs the templates
 * compiled for the target.
 *
 * Included by isa.h where runtime dispatch is built (GCC >= 8 on x86-64).
 */
#ifndef RNNFAST_X86_AVX512_KERNELS_H
#define RNNFAST_X86_AVX512_KERNELS_H

#include <string.h>

#include "../enums.h"
#include "../kernels.h"
#include "../layout.h"
#include "../mathfun.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#include <immintrin.h>

#include "avx512_cellmath.h"
#include "avx512_packgemm.h"            /* rnn_gemm_packed_f_avx512 */

#define ISA_SUFFIX avx512
#define TYPE float
#define CELLMATH_FAST 1                 /* with the fast paths of avx512_cellmath.h */
#include "../cellmath.template.h"
#undef CELLMATH_FAST
#undef TYPE
#define TYPE double
#define CELLMATH_FAST 0
#include "../cellmath.template.h"
#include "../packgemm.template.h"
#undef CELLMATH_FAST
#undef TYPE
#undef ISA_SUFFIX

#pragma GCC pop_options

static int rnn_cpu_has_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
           && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
           && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static const rnn_kernels rnn_kernels_avx512 = {
    .f = {
        .activate = rnn_activate_f_avx512,
        .gru_ra = rnn_gru_ra_f_avx512,
        .gru_rb_gates = rnn_gru_rb_gates_f_avx512,
        .gru_rb_update = rnn_gru_rb_update_f_avx512,
        .lstm = rnn_lstm_f_avx512,
        .simple = rnn_simple_f_avx512,
        .gemm_packed = rnn_gemm_packed_f_avx512,
        .packed_projection = 1,         /* faster than BLAS here: bench/README.md */
    },
    .d = {
        .activate = rnn_activate_d_avx512,
        .gru_ra = rnn_gru_ra_d_avx512,
        .gru_rb_gates = rnn_gru_rb_gates_d_avx512,
        .gru_rb_update = rnn_gru_rb_update_d_avx512,
        .lstm = rnn_lstm_d_avx512,
        .simple = rnn_simple_d_avx512,
        .gemm_packed = rnn_gemm_packed_d_avx512,
        .packed_projection = 0,
    },
};

#endif /* RNNFAST_X86_AVX512_KERNELS_H */
