/*
 * x86/avx512_packgemm.h -- the AVX-512 float product on packed weights (layout.h):
 * C = bias + A Bp, the contract of packgemm.template.h, register-tiled.
 *
 * A register tile of up to RNN_TILE_ROWS (6) rows x 64 columns (24 accumulators, 4
 * panel loads and 6 broadcasts per k), panel by panel, so a panel is read from cache
 * once per 6 rows. One row (batch 1) takes up to four panels at a time (at least
 * two): 8 to 16 independent accumulator chains hide the FMA latency; there the
 * loads from L2 bound it. Many rows run
 * K-blocked: a block of kblock steps of a panel (rnn_tuning) stays in the L1 cache
 * while every row tile runs over it, the sums going to C between blocks and coming
 * back (the same chain, so the same bits). While they run, the tiles prefetch the
 * block the product reads next into L2, a share each: a layer's weights (an LSTM's
 * W and U of H = 256 are 2 MB) do not stay in the 2 MB L2 of a Sapphire Rapids
 * core, and the first tile over a block waited on L3 (on Sapphire Rapids, B = 64 rows
 * of an LSTM of H = 512: 130 -> 158 GFLOP/s per task's product). Every element of
 * C is one chain of fused multiply-adds over k = 0..K-1 starting from its bias (or
 * zero), whatever M, the tile or the thread: a row's result does not depend on the
 * batch it is in nor on the thread count.
 *
 * Included by x86/avx512_kernels.h inside its `#pragma GCC target` region only.
 */
#ifndef RNNFAST_X86_AVX512_PACKGEMM_H
#define RNNFAST_X86_AVX512_PACKGEMM_H

/* Store the 64 sums of one row (four registers), the first nc of them. */
RNN_INLINE void rnn_store64_avx512(float *c, const __m512 *v, long nc)
{
    long q;
    if (nc == RNN_PANEL_COLS) {
        for (q = 0; q < 4; q++) _mm512_storeu_ps(c + 16 * q, v[q]);
        return;
    }
    for (q = 0; q < 4 && 16 * q < nc; q++) {
        long left = nc - 16 * q;
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        _mm512_mask_storeu_ps(c + 16 * q, m, v[q]);
    }
}

/* The blocking of a product of more rows than one tile is the dispatcher's, per CPU
 * family (kernels.h: rnn_tuning; isa.h: rnn_tunings[]; bench/README.md):
 * - K steps per block (kblock): the block of a panel, kblock x 64 floats (32 KiB at
 *   128), stays in the L1 data cache (48 KiB on Sapphire Rapids) while every row
 *   tile runs over it, so the tiles after the first read it from there, not from L2;
 * - rows per row block (mblock): their sums (240 x 64 floats, 60 KiB) stay in L2
 *   between K blocks, however many rows the call has (a chunk's input projection has
 *   thousands), and a panel is read from L3 once per row block: a step's 64 rows and
 *   a blocked chunk's projection (128-320 rows) in one or two (48 read a layer's
 *   weights from L3 twice at B = 64);
 * - prefetch: the row tiles of a block prefetch the block read next into L2.
 * The results do not depend on any of them. */

/* Load the first nc of the 64 sums of one row (the rest zero). */
RNN_INLINE void rnn_load64_avx512(__m512 *v, const float *c, long nc)
{
    long q;
    for (q = 0; q < 4; q++) {
        long left = nc - 16 * q;
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF
                      : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u));
        v[q] = _mm512_maskz_loadu_ps(m, c + 16 * q);
    }
}

/* C[0:MR, panel] = A[0:MR] Bp[panel] over K steps, starting from init (the bias) or,
 * with from_c, from the sums in C (a K block after the first); MR is a constant after
 * inlining, so the accumulators live in registers. On the way, the npf (at most K)
 * cache lines from pf are prefetched into L2, one per K step. */
RNN_INLINE void rnn_tile_avx512(const int MR, long K, const float *A, long lda,
                                const float *bp, const __m512 *init, float *C, long ldc, long nc,
                                int from_c, const float *pf, long npf)
{
    __m512 acc[RNN_TILE_ROWS][4];
    long k;
    int r, q;
    for (r = 0; r < MR; r++) {
        if (from_c)
            rnn_load64_avx512(acc[r], C + r * ldc, nc);
        else
            for (q = 0; q < 4; q++) acc[r][q] = init[q];
    }
    for (k = 0; k < K; k++) {
        const float *b = bp + k * RNN_PANEL_COLS;
        if (k < npf)
            _mm_prefetch((const char *)(pf + 16 * k), _MM_HINT_T1);
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        __m512 b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
        for (r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(A[r * lda + k]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
        }
    }
    for (r = 0; r < MR; r++) rnn_store64_avx512(C + r * ldc, acc[r], nc);
}

/* One row against NP (2 to 4) consecutive panels at once, panel p's starting sums
 * init[4p..4p+3]: 4 NP independent chains hide the FMA latency (one panel alone has
 * four: latency-bound), and every load is a whole cache line. NP is a constant after
 * inlining; the last panel's first nc_last columns are stored. */
RNN_INLINE void rnn_rowp_avx512(const int NP, long K, const float *a, const float *bp,
                                const __m512 *init, float *c, long nc_last)
{
    __m512 acc[4][4];
    long k;
    int p, q;
    for (p = 0; p < NP; p++)
        for (q = 0; q < 4; q++) acc[p][q] = init[4 * p + q];
    for (k = 0; k < K; k++) {
        __m512 x = _mm512_set1_ps(a[k]);
        const float *b = bp + k * RNN_PANEL_COLS;
        for (p = 0; p < NP; p++)
            for (q = 0; q < 4; q++)
                acc[p][q] = _mm512_fmadd_ps(x, _mm512_loadu_ps(b + p * K * RNN_PANEL_COLS + 16 * q),
                                            acc[p][q]);
    }
    for (p = 0; p < NP; p++)
        rnn_store64_avx512(c + p * RNN_PANEL_COLS, acc[p], p == NP - 1 ? nc_last : RNN_PANEL_COLS);
}

/* Rows of a narrow tile (rnn_ntile_avx512): 12 rows x 2 registers, the 24 accumulators
 * of the wide tile. */
#define RNN_NARROW_ROWS 12

/* A panel's first 32 columns or fewer (a head of a few classes: 29 of Speech's CTC
 * head, 5 of a text classifier's) for MR rows: the wide tile's chains on the first two
 * registers of the panel only (its other 32 columns are the packed form's zeros), 12
 * rows at a time, so half the multiply-adds of the wide tile. Each element the same
 * chain from init (or from C, from_c), so the same bits: (100, 256) @ (256, 29), 34 ->
 * 19 us (Zen 4, one thread). */
RNN_INLINE void rnn_ntile_avx512(const int MR, long K, const float *A, long lda, const float *bp,
                                 const __m512 *init, float *C, long ldc, long nc, int from_c)
{
    __m512 acc[RNN_NARROW_ROWS][2], v[4];
    long k;
    int r;
    for (r = 0; r < MR; r++) {
        if (from_c) {
            rnn_load64_avx512(v, C + r * ldc, nc);
            acc[r][0] = v[0], acc[r][1] = v[1];
        } else
            acc[r][0] = init[0], acc[r][1] = init[1];
    }
    for (k = 0; k < K; k++) {
        const float *b = bp + k * RNN_PANEL_COLS;
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(A[r * lda + k]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (r = 0; r < MR; r++) {
        v[0] = acc[r][0], v[1] = acc[r][1];
        rnn_store64_avx512(C + r * ldc, v, nc);
    }
}

/* The starting sums of panel p: its 64 bias values (zeros past N), or zeros. */
RNN_INLINE void rnn_init64_avx512(__m512 *v, const float *bias, long p, long nc)
{
    int q;
    for (q = 0; q < 4; q++) {
        long left = nc - 16 * q;
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF
                      : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u));
        v[q] = bias ? _mm512_maskz_loadu_ps(m, bias + p * RNN_PANEL_COLS + 16 * q) : _mm512_setzero_ps();
    }
}

static void rnn_gemm_packed_f_avx512(long M, long N, long K, const float *A, long lda,
                                     const float *Bp, const float *bias, float *C, long ldc)
{
    long p = 0, i, np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    const long kblock = rnn_tuning_now.kblock, mblock = rnn_tuning_now.mblock;
    __m512 init[4];
    if (M == 1 && np > 1) {
        /* one row: panels in groups of four, the rest in groups of two or three (a
         * rest of five as 3 + 2): no panel runs alone */
        __m512 in[16];
        while (p < np) {
            long g = np - p == 5 ? 3 : (np - p >= 4 ? 4 : np - p), j;
            long nc = N - (p + g - 1) * RNN_PANEL_COLS;
            if (nc > RNN_PANEL_COLS)
                nc = RNN_PANEL_COLS;
            for (j = 0; j < g; j++)
                rnn_init64_avx512(in + 4 * j, bias, p + j, j == g - 1 ? nc : RNN_PANEL_COLS);
            const float *bp = Bp + p * K * RNN_PANEL_COLS;
            float *c = C + p * RNN_PANEL_COLS;
            if (g == 4)
                rnn_rowp_avx512(4, K, A, bp, in, c, nc);
            else if (g == 3)
                rnn_rowp_avx512(3, K, A, bp, in, c, nc);
            else
                rnn_rowp_avx512(2, K, A, bp, in, c, nc);
            p += g;
        }
        return;
    }
    for (; p < np; p++) {
        const float *bp = Bp + p * K * RNN_PANEL_COLS;
        float *c = C + p * RNN_PANEL_COLS;
        long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
        long kb = M > RNN_TILE_ROWS && K > kblock ? kblock : (K > 0 ? K : 1);
        long k0, kn;
        long i0, i1;
        rnn_init64_avx512(init, bias, p, nc);
        for (i0 = 0; i0 < M; i0 = i1) {
            i1 = M - i0 > mblock ? i0 + mblock : M;
            for (k0 = 0; k0 == 0 || k0 < K; k0 += kb) {
                const float *a = A + k0, *b = bp + k0 * RNN_PANEL_COLS;
                int from_c = k0 > 0;
                kn = K - k0 < kb ? K - k0 : kb;
                if (nc <= 32 && M > 1) {        /* a narrow panel: half the tile's multiply-adds */
                    for (i = i0; i + RNN_NARROW_ROWS <= i1; i += RNN_NARROW_ROWS)
                        rnn_ntile_avx512(RNN_NARROW_ROWS, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc,
                                         from_c);
#define RNN_NT(n) case n: rnn_ntile_avx512(n, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc, from_c); break
                    switch (i1 - i) {
                    RNN_NT(11); RNN_NT(10); RNN_NT(9); RNN_NT(8); RNN_NT(7); RNN_NT(6);
                    RNN_NT(5); RNN_NT(4); RNN_NT(3); RNN_NT(2); RNN_NT(1);
                    default: break;
                    }
#undef RNN_NT
                    continue;
                }
                /* the block read next (this panel's next K block, its first for the
                 * next row block, or the next panel's first), its lines shared out
                 * among this block's row tiles to prefetch, one line per K step at
                 * most; none with one tile (a few rows: their tile is bound by its
                 * loads already, and M = 5 measured 15% slower with prefetches) */
                const float *nxt = NULL;
                long lines = 0, per, t = 0, ntile = (i1 - i0 + RNN_TILE_ROWS - 1) / RNN_TILE_ROWS;
                if (rnn_tuning_now.prefetch && ntile > 1 && (k0 + kn < K || i1 < M || p + 1 < np)) {
                    nxt = k0 + kn < K ? b + kn * RNN_PANEL_COLS : (i1 < M ? bp : bp + K * RNN_PANEL_COLS);
                    lines = (k0 + kn < K && K - k0 - kn < kb ? K - k0 - kn : (K < kb ? K : kb))
                            * (RNN_PANEL_COLS / 16);
                }
                per = (lines + ntile - 1) / ntile;
                per = per < kn ? per : kn;
#define RNN_PF_SHARE nxt + 16 * per * t, lines - per * t < per ? (lines > per * t ? lines - per * t : 0) : per
                for (i = i0; i + RNN_TILE_ROWS <= i1; i += RNN_TILE_ROWS, t++)
                    rnn_tile_avx512(RNN_TILE_ROWS, kn, a + i * lda, lda, b, init, c + i * ldc, ldc,
                                    nc, from_c, RNN_PF_SHARE);
                switch (i1 - i) {
                case 5: rnn_tile_avx512(5, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc, from_c, RNN_PF_SHARE); break;
                case 4: rnn_tile_avx512(4, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc, from_c, RNN_PF_SHARE); break;
                case 3: rnn_tile_avx512(3, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc, from_c, RNN_PF_SHARE); break;
                case 2: rnn_tile_avx512(2, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc, from_c, RNN_PF_SHARE); break;
                case 1: rnn_tile_avx512(1, kn, a + i * lda, lda, b, init, c + i * ldc, ldc, nc, from_c, RNN_PF_SHARE); break;
                default: break;
                }
#undef RNN_PF_SHARE
            }
        }
    }
}

#endif /* RNNFAST_X86_AVX512_PACKGEMM_H */
