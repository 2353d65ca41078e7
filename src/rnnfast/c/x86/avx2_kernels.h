/*
 * x86/avx2_kernels.h -- x86-64 with AVX2 and FMA: the templates compiled for that
 * target (`#pragma GCC target`: GCC vectorizes the portable loops with 256-bit
 * registers and fuses multiply-adds), and float's own register-tiled product
 * (avx2_packgemm.h).
 *
 * Included by isa.h where runtime dispatch is built (GCC >= 8 on x86-64).
 */
#ifndef RNNFAST_X86_AVX2_KERNELS_H
#define RNNFAST_X86_AVX2_KERNELS_H

#include <string.h>

#include "../enums.h"
#include "../blas.h"
#include "../kernels.h"
#include "../layout.h"
#include "../mathfun.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#include "avx2_packgemm.h"              /* rnn_gemm_packed_f_avx2 */
#include "avx2_cellmath.h"              /* float's fused GRU and LSTM steps */

#define ISA_SUFFIX avx2
#define CELLMATH_FAST 1                 /* with the fused steps of avx2_cellmath.h */
#define TYPE float
#include "../cellmath.template.h"
#undef TYPE
#undef CELLMATH_FAST
#define CELLMATH_FAST 0
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

/* its table, generated from the cell list (kernel_table.template.h) */
#define ISA_SUFFIX avx2
#define RNN_PACKED_PROJECTION_F 1     /* faster than BLAS here: bench/README.md */
#define RNN_PACKED_PROJECTION_D 0
#include "../kernel_table.template.h"
#undef RNN_PACKED_PROJECTION_D
#undef RNN_PACKED_PROJECTION_F
#undef ISA_SUFFIX

#endif /* RNNFAST_X86_AVX2_KERNELS_H */
