/*
 * x86/avx2_kernels.h -- x86-64 with AVX2 and FMA: the templates compiled for that
 * target (`#pragma GCC target`: GCC vectorizes the portable loops with 256-bit
 * registers and fuses multiply-adds); no intrinsics of its own.
 *
 * Included by isa.h where runtime dispatch is built (GCC >= 8 on x86-64).
 */
#ifndef RNNFAST_X86_AVX2_KERNELS_H
#define RNNFAST_X86_AVX2_KERNELS_H

#include <string.h>

#include "../enums.h"
#include "../kernels.h"
#include "../layout.h"
#include "../mathfun.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#define ISA_SUFFIX avx2
#define CELLMATH_FAST 0
#define TYPE float
#include "../cellmath.template.h"
#include "../packgemm.template.h"
#undef TYPE
#define TYPE double
#include "../cellmath.template.h"
#include "../packgemm.template.h"
#undef TYPE
#undef CELLMATH_FAST
#undef ISA_SUFFIX

#pragma GCC pop_options

static int rnn_cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static const rnn_kernels rnn_kernels_avx2 = {
    .f = {
        .activate = rnn_activate_f_avx2,
        .gru_ra = rnn_gru_ra_f_avx2,
        .gru_rb_gates = rnn_gru_rb_gates_f_avx2,
        .gru_rb_update = rnn_gru_rb_update_f_avx2,
        .lstm = rnn_lstm_f_avx2,
        .simple = rnn_simple_f_avx2,
        .gemm_packed = rnn_gemm_packed_f_avx2,
        .packed_projection = 0,         /* BLAS is faster for large products */
    },
    .d = {
        .activate = rnn_activate_d_avx2,
        .gru_ra = rnn_gru_ra_d_avx2,
        .gru_rb_gates = rnn_gru_rb_gates_d_avx2,
        .gru_rb_update = rnn_gru_rb_update_d_avx2,
        .lstm = rnn_lstm_d_avx2,
        .simple = rnn_simple_d_avx2,
        .gemm_packed = rnn_gemm_packed_d_avx2,
        .packed_projection = 0,
    },
};

#endif /* RNNFAST_X86_AVX2_KERNELS_H */
