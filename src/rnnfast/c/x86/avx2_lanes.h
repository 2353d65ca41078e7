/*
 * x86/avx2_lanes.h -- lane helpers shared by the AVX2 products (x86/avx2_packgemm.h,
 * x86/avx2_quant.h).
 *
 * Include it only inside a `#pragma GCC target("avx2,fma")` region (both includers do):
 * the first inclusion compiles these for that target.
 */
#ifndef RNNFAST_X86_AVX2_LANES_H
#define RNNFAST_X86_AVX2_LANES_H

#include <immintrin.h>

/* The lane mask of the first n (0..8) of eight int32 / float lanes. */
RNN_INLINE __m256i rnn_mask8_avx2(long n)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    n = n < 0 ? 0 : (n > 8 ? 8 : n);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), lanes);
}

#endif /* RNNFAST_X86_AVX2_LANES_H */
