/*
 * baseline_kernels.h -- the portable instruction set: the templates compiled for the
 * build's default target (SSE2 on x86-64), no intrinsics. Runs on any CPU; the one
 * ISA of builds without runtime dispatch (other compilers and machines).
 */
#ifndef RNNFAST_BASELINE_KERNELS_H
#define RNNFAST_BASELINE_KERNELS_H

#include <string.h>

#include "enums.h"
#include "blas.h"
#include "kernels.h"
#include "layout.h"
#include "mathfun.h"

#define ISA_SUFFIX baseline
#define CELLMATH_FAST 0
#define TYPE float
#include "cellmath.template.h"
#include "packgemm.template.h"
#undef TYPE
#define TYPE double
#include "cellmath.template.h"
#include "packgemm.template.h"
#undef TYPE
#undef CELLMATH_FAST
#undef ISA_SUFFIX

static int rnn_cpu_has_baseline(void) { return 1; }

/* its table, generated from the cell list (kernel_table.template.h) */
#define ISA_SUFFIX baseline
#define RNN_PACKED_PROJECTION_F 1     /* BLAS sums a row by its place in the call (OpenBLAS on Zen 1):
                                       * packed, a row is the same whatever rows surround it */
#define RNN_PACKED_PROJECTION_D 0
#include "kernel_table.template.h"
#undef RNN_PACKED_PROJECTION_D
#undef RNN_PACKED_PROJECTION_F
#undef ISA_SUFFIX

#endif /* RNNFAST_BASELINE_KERNELS_H */
