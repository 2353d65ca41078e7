/*
 * rowops.h -- rowops.template.h instantiated for float and double on every instruction
 * set the build carries (the sets and the condition of isa.h: the portable baseline,
 * and AVX2 and AVX-512 under `#pragma GCC target` where GCC >= 8 builds for x86-64),
 * and their table: rnn_rowops[level] for an rnn_isa_level (enums.h). The caller
 * (rnnfast/_rowops.pyx) takes the level isa.h's dispatcher chose (rnnfast._kernels.isa()),
 * so that these ops compute as the products beside them do. The few-row packed product
 * (packed_few) runs its tasks on rowops.team.h's partner thread and the caller; the
 * AVX-512 set also defines RNN_ROWS_SHUFFLE (rows_product's register transposes).
 */
#ifndef RNNFAST_ROWOPS_H
#define RNNFAST_ROWOPS_H

#include <math.h>
#include <string.h>

#include "enums.h"
#include "mathfun.h"
#include "openmp.h"
#include "template.h"
#include "layout.h"
#include "rowops.team.h"

/* G1 x G2 products C[g1, g2] = bias + A[g1, g2] B[g1, g2] (M x K times K x N); strides
 * in elements; a batch stride of 0 serves every entry along it; B any strides (element
 * (k, j) at B[k*ldb + j*cb]); bias (N,) or NULL. */
typedef struct {
    long G1, G2, M, N, K;
    const void *A;
    long sa1, sa2, lda;
    const void *B;
    long sb1, sb2, ldb, cb;
    const void *bias;
    void *C;
    long sc1, sc2, ldc;
} rnn_rows_args;

/* Attention over G batch entries: O_g (M x N) = softmax(Q_g (M x K) Kt_g (K x T)) V_g
 * (T x N), the softmax over each row; S (G x M x T) and O (G x M x N) C-contiguous, S
 * the softmaxed scores; Q's rows contiguous; Kt and V any strides (element (k, t) of Kt_g
 * at Kt[g*sk + k*ldk + t*ck]). */
typedef struct {
    long G, M, K, T, N;
    const void *Q;
    long sq, ldq;
    const void *Kt;
    long sk, ldk, ck;
    const void *V;
    long sv, ldv, cv;
    void *S, *O;
} rnn_attend_args;

/* C (M x N, row stride ldc) = bias + A (M x K, row stride lda) Bp, Bp a K x N block in
 * the packed form (layout.h), bias (N,) or NULL; its panels split into tasks (per
 * panels each, npan in all) run by rowops.team.h's caller and partner. softmax 1 (2):
 * then the softmax (log-softmax) of each row of C, as softmax_rows computes it, its
 * blocks' phase in the tasks (stats: their maxima and sums, M x nblk each). stream 1
 * (read with M = 1 only): Bp is read once and not kept, prefetched ahead non-temporally
 * (prefetchnta: not left in L2 / L3 to push out what the rest of a model reads;
 * _plan.streamed_weights decides which); the same bits. */
typedef struct {
    long M, N, K;
    const void *A;
    long lda;
    const void *Bp;
    const void *bias;
    void *C;
    long ldc;
    long per, npan;
    int softmax;
    int stream;
    long nblk;
    void *stats;
} rnn_packed_args;

typedef struct {
    void (*softmax_rows_f)(const float *x, long ldx, float *y, long ldy, long R, long n, int take_log, int nth);
    void (*softmax_rows_d)(const double *x, long ldx, double *y, long ldy, long R, long n, int take_log,
                           int nth);
    void (*rows_products_f)(const rnn_rows_args *pr, int nth);
    void (*rows_products_d)(const rnn_rows_args *pr, int nth);
    void (*attend_f)(const rnn_attend_args *ar, int nth);
    void (*attend_d)(const rnn_attend_args *ar, int nth);
    void (*packed_few_f)(rnn_packed_args *pa, int nth);
    void (*packed_few_d)(rnn_packed_args *pa, int nth);
} rnn_rowops_table;

/* A function compiled once, never inlined (rowops.template.h's softmax_block: the same
 * bits wherever it is called from). */
#if defined(__GNUC__)
#define RNN_ROWS_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define RNN_ROWS_NOINLINE __declspec(noinline)
#else
#define RNN_ROWS_NOINLINE
#endif

/* Prefetch the line at p into L1, non-temporally (x86: prefetchnta); nothing where the
 * compiler has no such builtin. */
#if defined(__GNUC__)
#define RNN_ROWS_PREFETCH_NTA(p) __builtin_prefetch((p), 0, 0)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define RNN_ROWS_PREFETCH_NTA(p) _mm_prefetch((const char *)(p), _MM_HINT_NTA)
#else
#define RNN_ROWS_PREFETCH_NTA(p) ((void)(p))
#endif

#define RNN_ROWS_FMA 0
#define ISA_SUFFIX baseline
#include "rowops.types.h"
#undef ISA_SUFFIX
#undef RNN_ROWS_FMA

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && (__GNUC__ >= 8) \
    && !defined(RNNFAST_NO_DISPATCH)
#define RNN_ROWOPS_X86 1
#define RNN_ROWS_FMA 1
#include <immintrin.h>              /* (the AVX2 attention scores: usable under the pragma below) */
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA_SUFFIX avx2
#define RNN_ROWS_YMM 1
#include "rowops.types.h"
#undef RNN_ROWS_YMM
#undef ISA_SUFFIX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define ISA_SUFFIX avx512
#define RNN_ROWS_SHUFFLE 1
#include "rowops.types.h"
#undef RNN_ROWS_SHUFFLE
#undef ISA_SUFFIX
#pragma GCC pop_options
#undef RNN_ROWS_FMA
#else
#define RNN_ROWOPS_X86 0
#endif

#define RNN_ROWOPS_ROW(isa)                                                                  \
    {rnn_softmax_rows_f_##isa, rnn_softmax_rows_d_##isa, rnn_rows_products_f_##isa,          \
     rnn_rows_products_d_##isa, rnn_attend_f_##isa, rnn_attend_d_##isa, rnn_packed_few_f_##isa, \
     rnn_packed_few_d_##isa}

/* Per rnn_isa_level; a level this build does not carry (isa.h never chooses it) runs
 * the baseline. */
static const rnn_rowops_table rnn_rowops[RNN_ISA_COUNT] = {
    [RNN_ISA_BASELINE] = RNN_ROWOPS_ROW(baseline),
#if RNN_ROWOPS_X86
    [RNN_ISA_AVX2] = RNN_ROWOPS_ROW(avx2),
    [RNN_ISA_AVX512] = RNN_ROWOPS_ROW(avx512),
#else
    [RNN_ISA_AVX2] = RNN_ROWOPS_ROW(baseline),
    [RNN_ISA_AVX512] = RNN_ROWOPS_ROW(baseline),
#endif
};

#endif /* RNNFAST_ROWOPS_H */
