/*
 * x86/prefetch.h -- the fused gate-math steps' prefetch (x86/avx2_cellmath.h,
 * x86/avx512_cellmath.h): the next row's gate inputs into L1 while a row's gate math runs.
 *
 * A block's rows are ldxp / ldgh apart (4 KiB at LSTM H = 256): each row starts in a page
 * of its own, where the hardware's prefetchers stop, and the projection came back from L3
 * at the row's first loads (perf, Zen 1). B = 64, one thread, the step's gate math with
 * the prefetch over without (bench/README.md): Zen 1 (AVX2), H = 256, LSTM 18.3-19.3 ->
 * 13.3-14.0 ms of a ~210 ms call, GRU 11.6-12.4 -> 8.9-10.0 (session 20); Xeon (AVX-512,
 * medians of five alternated rounds, us a step), float32 LSTM H = 256 52.7 -> 47.2, GRU
 * H = 256 44.2 -> 39.6, LSTM H = 512 124 -> 106, bf16 LSTM H = 512 143 -> 123, GRU
 * H = 1024 230 -> 217 (session 22). A prefetch only: the same bits.
 *
 * SSE's prefetch: included inside either ISA's target region (the first inclusion
 * compiles it there; the other's target includes that one's).
 */
#ifndef RNNFAST_X86_PREFETCH_H
#define RNNFAST_X86_PREFETCH_H

#include <immintrin.h>

/* n floats at x and at g (the next row's projection and its h U) into L1. */
RNN_INLINE void rnn_prefetch_row(const float *x, const float *g, long n)
{
    long i;
    for (i = 0; i < n; i += 16) {
        _mm_prefetch((const char *)(x + i), _MM_HINT_T0);
        _mm_prefetch((const char *)(g + i), _MM_HINT_T0);
    }
}

#endif /* RNNFAST_X86_PREFETCH_H */
