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
 *
 * The CPU family is read here too, once (rnn_cpu_family_now): where a family measured
 * faster with other constants for the same kernels (the product's blocking), its row
 * in rnn_tunings below holds them; rnn_select_isa makes them current.
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

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
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

/* The product's blocking per CPU family (kernels.h: rnn_tuning), measured with
 * bench/ab_builds.py: bench/README.md, "What the kernels do". */
static const rnn_tuning rnn_tunings[RNN_CPU_FAMILY_COUNT] = {
    /* Intel Sapphire Rapids (48 KiB L1d, 2 MiB L2), and any CPU not named below */
    [RNN_CPU_GENERIC] = {128, 240, 1},
    /* AMD Zen 4 (32 KiB L1d, 1 MiB L2): one 512-bit FMA a cycle (two 256-bit units),
     * so the tiles take a quarter of L2's bandwidth without K blocks: 128-step blocks
     * cost the sums' round trips through C (products at M = 64..256, K = 256..512:
     * 82-101 -> 95-107 GFLOP/s, about 101 the sgemm peak); the HW prefetchers keep up */
    [RNN_CPU_ZEN4] = {512, 240, 0},
    /* AMD Zen 1 / Zen+ (family 17h below model 30h: 32 KiB L1d, 512 KiB L2, AVX2 on
     * 128-bit units): K blocks of 128 cost the sums' round trips for little, and the
     * next panel's prefetch feeds weights that come from memory (a vocabulary head):
     * bench/README.md, "Session 16: the AVX2 product's blocking and prefetch ... (lead)" */
    [RNN_CPU_ZEN1] = {512, 240, 1},
};

/* This CPU's family, for rnn_tunings: Zen 4 is AMD's family 19h with AVX-512F (its
 * Zen 3 siblings have no AVX-512, so the AVX-512 product never runs there). */
static rnn_cpu_family rnn_cpu_family_now(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    unsigned a, b, c, d, family;
    if (!__get_cpuid(0, &a, &b, &c, &d) || b != 0x68747541u || d != 0x69746e65u || c != 0x444d4163u)
        return RNN_CPU_GENERIC;                     /* not "AuthenticAMD" */
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return RNN_CPU_GENERIC;
    family = (a >> 8) & 0xFu;
    if (family == 0xFu)
        family += (a >> 20) & 0xFFu;
    if (family == 0x19u && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b >> 16) & 1u)
        return RNN_CPU_ZEN4;
    if (family == 0x17u && (((a >> 4) & 0xFu) | ((a >> 12) & 0xF0u)) < 0x30u)
        return RNN_CPU_ZEN1;
#endif
    return RNN_CPU_GENERIC;
}

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
    rnn_tuning_now = rnn_tunings[rnn_cpu_family_now()];
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
