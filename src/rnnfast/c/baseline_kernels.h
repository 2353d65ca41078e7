/*
 * baseline_kernels.h -- the portable instruction set: the templates compiled for the
 * build's default target (SSE2 on x86-64), no intrinsics. Runs on any CPU; the one
 * ISA of builds without runtime dispatch (other compilers and machines).
 */
#ifndef RNNFAST_BASELINE_KERNELS_H
#define RNNFAST_BASELINE_KERNELS_H

#include <string.h>

#include "enums.h"
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

static const rnn_kernels rnn_kernels_baseline = {
    .f = {
        .activate = rnn_activate_f_baseline,
        .gru_ra = rnn_gru_ra_f_baseline,
        .gru_rb_gates = rnn_gru_rb_gates_f_baseline,
        .gru_rb_update = rnn_gru_rb_update_f_baseline,
        .lstm = rnn_lstm_f_baseline,
        .simple = rnn_simple_f_baseline,
        .gemm_packed = rnn_gemm_packed_f_baseline,
        .packed_projection = 0,         /* BLAS is faster for large products */
    },
    .d = {
        .activate = rnn_activate_d_baseline,
        .gru_ra = rnn_gru_ra_d_baseline,
        .gru_rb_gates = rnn_gru_rb_gates_d_baseline,
        .gru_rb_update = rnn_gru_rb_update_d_baseline,
        .lstm = rnn_lstm_d_baseline,
        .simple = rnn_simple_d_baseline,
        .gemm_packed = rnn_gemm_packed_d_baseline,
        .packed_projection = 0,
    },
};

#endif /* RNNFAST_BASELINE_KERNELS_H */
