/*
 * isa.h -- CPU detection and THE one dispatcher.
 *
 * The build carries one kernel table per instruction set (kernels.h): the portable
 * baseline everywhere, and on x86-64 with GCC >= 8 AVX2 and AVX-512 versions compiled
 * under `#pragma GCC target`, so that one build runs on any x86-64. rnn_select_isa(),
 * called once when the module is imported (before any kernel runs), makes the best
 * table the CPU supports the current one -- or a lower one asked for (RNNFAST_ISA, so
 * that tests can run every path). Everything calls the kernels through it
 * (dispatch.template.h).
 *
 * A new ISA: its files (kernels, CPU check, table; see README.md), its level in
 * enums.h, and one row in rnn_isas below (with the #include of its file).
 */
#ifndef RNNFAST_ISA_H
#define RNNFAST_ISA_H

#include "enums.h"
#include "kernels.h"
#include "quant.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && (__GNUC__ >= 8) \
    && !defined(RNNFAST_NO_DISPATCH)
#define RNN_X86_DISPATCH 1
#else
#define RNN_X86_DISPATCH 0
#endif

#include "baseline_kernels.h"
#if RNN_X86_DISPATCH
#include "x86/avx2_kernels.h"
#include "x86/avx512_kernels.h"
#endif

typedef struct {
    rnn_isa_level level;
    int (*cpu_has)(void);           /* 1 when this CPU runs it */
    const rnn_kernels *kernels;
} rnn_isa_entry;

/* The dispatcher: every instruction set this build carries, lowest level first. */
static const rnn_isa_entry rnn_isas[] = {
    {RNN_ISA_BASELINE, rnn_cpu_has_baseline, &rnn_kernels_baseline},
#if RNN_X86_DISPATCH
    {RNN_ISA_AVX2, rnn_cpu_has_avx2, &rnn_kernels_avx2},
    {RNN_ISA_AVX512, rnn_cpu_has_avx512, &rnn_kernels_avx512},
#endif
};

/* The current level and its kernels, per type. */
static rnn_isa_level rnn_isa_now = RNN_ISA_BASELINE;
static const rnn_kernels_f *rnn_now_f = &rnn_kernels_baseline.f;
static const rnn_kernels_d *rnn_now_d = &rnn_kernels_baseline.d;

/* The best level this build and CPU support. */
static rnn_isa_level rnn_isa_supported(void)
{
    rnn_isa_level best = RNN_ISA_BASELINE;
    size_t i;
    for (i = 0; i < sizeof rnn_isas / sizeof rnn_isas[0]; i++)
        if (rnn_isas[i].level > best && rnn_isas[i].cpu_has())
            best = rnn_isas[i].level;
    return best;
}

/* Use the best supported level not above `level` (negative: the best); returns it. */
static rnn_isa_level rnn_select_isa(int level)
{
    const rnn_isa_entry *use = &rnn_isas[0];
    size_t i;
    for (i = 0; i < sizeof rnn_isas / sizeof rnn_isas[0]; i++)
        if ((level < 0 || (int)rnn_isas[i].level <= level) && rnn_isas[i].level > use->level
            && rnn_isas[i].cpu_has())
            use = &rnn_isas[i];
    rnn_isa_now = use->level;
    rnn_quant_select((int)use->level);      /* the reduced-precision products (quant.h) */
    rnn_now_f = &use->kernels->f;
    rnn_now_d = &use->kernels->d;
    return rnn_isa_now;
}

/* The level in use. */
static rnn_isa_level rnn_isa_level_now(void) { return rnn_isa_now; }

/* The kernel table of `level`, or NULL when this build or this CPU has none: for the
 * tests, which call every ISA's kernels side by side (tests/test_isa.py). */
static const rnn_kernels *rnn_isa_kernels(int level)
{
    size_t i;
    for (i = 0; i < sizeof rnn_isas / sizeof rnn_isas[0]; i++)
        if ((int)rnn_isas[i].level == level && rnn_isas[i].cpu_has())
            return rnn_isas[i].kernels;
    return NULL;
}

/* The calls through the current table: rnn_activate_f, rnn_gemm_packed_d, ... */
#define TYPE float
#include "dispatch.template.h"
#undef TYPE
#define TYPE double
#include "dispatch.template.h"
#undef TYPE

#endif /* RNNFAST_ISA_H */
