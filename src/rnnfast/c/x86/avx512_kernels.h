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
#include "../blas.h"
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

/* its table, generated from the cell list (kernel_table.template.h) */
#define ISA_SUFFIX avx512
#define RNN_PACKED_PROJECTION_F 1     /* faster than BLAS here: bench/README.md */
#define RNN_PACKED_PROJECTION_D 0
#include "../kernel_table.template.h"
#undef RNN_PACKED_PROJECTION_D
#undef RNN_PACKED_PROJECTION_F
#undef ISA_SUFFIX

#endif /* RNNFAST_X86_AVX512_KERNELS_H */
