/*
 * kernels.h -- the kernel table: the functions each instruction set provides, for
 * float (.f) and double (.d). Each ISA defines one `static const rnn_kernels`
 * (baseline_kernels.h, x86/avx2_kernels.h, x86/avx512_kernels.h); isa.h chooses.
 */
#ifndef RNNFAST_KERNELS_H
#define RNNFAST_KERNELS_H

#include "template.h"

#define TYPE float
#include "kernels.template.h"
#undef TYPE
#define TYPE double
#include "kernels.template.h"
#undef TYPE

typedef struct {
    rnn_kernels_f f;
    rnn_kernels_d d;
} rnn_kernels;

#endif /* RNNFAST_KERNELS_H */
