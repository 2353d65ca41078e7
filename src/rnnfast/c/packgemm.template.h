/*
 * packgemm.template.h -- the portable product on pre-packed weights, written once
 * for every type and instruction set (no include guard; see template.h).
 *
 * Parameters: TYPE (float, double), ISA_SUFFIX. Defines RNN_INAME(gemm_packed).
 * Needs layout.h (the packed form).
 *
 * C (M x N, row stride ldc) = bias + A (M x K, row stride lda) times the packed K x N
 * block Bp; bias (N,) or NULL for zeros. One row at a time, a panel's sums in a local
 * array the compiler vectorizes. Every element of C is one chain of multiply-adds
 * over k = 0..K-1, starting from its bias (or zero), whatever M: a row's result does
 * not depend on the batch it is in nor on the thread count. Instruction sets with a
 * register-tiled kernel of their own (x86/avx512_packgemm.h) keep that property.
 */
static void RNN_INAME(gemm_packed)(long M, long N, long K, const TYPE *A, long lda,
                                   const TYPE *Bp, const TYPE *bias, TYPE *C, long ldc)
{
    long p, i, k, j, np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    for (p = 0; p < np; p++) {
        const TYPE *bp = Bp + p * K * RNN_PANEL_COLS;
        long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
        for (i = 0; i < M; i++) {
            TYPE acc[RNN_PANEL_COLS];
            const TYPE *a = A + i * lda;
            for (j = 0; j < RNN_PANEL_COLS; j++)
                acc[j] = bias && j < nc ? bias[p * RNN_PANEL_COLS + j] : (TYPE)0;
            for (k = 0; k < K; k++) {
                TYPE av = a[k];
                const TYPE *b = bp + k * RNN_PANEL_COLS;
                for (j = 0; j < RNN_PANEL_COLS; j++) acc[j] += av * b[j];
            }
            memcpy(C + i * ldc + p * RNN_PANEL_COLS, acc, (size_t)nc * sizeof(TYPE));
        }
    }
}
