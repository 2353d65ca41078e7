/*
 * common.template.h -- type-generic helpers that no instruction set specialises:
 * packing weights, copying and emitting state rows (no include guard; instantiated
 * per TYPE by engine.h; see template.h). Needs layout.h.
 */

/* dst = the packed form of B (K x N, row stride ldb); rnn_packed_size(K, N) values. */
static void RNN_TNAME(pack)(long K, long N, const TYPE *B, long ldb, TYPE *dst)
{
    long p, k, np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    for (p = 0; p < np; p++) {
        long j0 = p * RNN_PANEL_COLS, nc = N - j0 < RNN_PANEL_COLS ? N - j0 : RNN_PANEL_COLS;
        TYPE *d = dst + p * K * RNN_PANEL_COLS;
        for (k = 0; k < K; k++) {
            memcpy(d + k * RNN_PANEL_COLS, B + k * ldb + j0, (size_t)nc * sizeof(TYPE));
            if (nc < RNN_PANEL_COLS)
                memset(d + k * RNN_PANEL_COLS + nc, 0, (size_t)(RNN_PANEL_COLS - nc) * sizeof(TYPE));
        }
    }
}

/* Copy rows of src (valid rows only, or all when valid is NULL) into dst. */
static inline void RNN_TNAME(copy_rows)(long nrows, long n, const TYPE *src, long lds, TYPE *dst,
                                        long ldd, const unsigned char *valid)
{
    long b;
    for (b = 0; b < nrows; b++)
        if (!valid || valid[b]) memcpy(dst + b * ldd, src + b * lds, (size_t)n * sizeof(TYPE));
}

/* Write one step's output rows. A stepped row emits its new state; a masked row
 * emits zeros when zero_output (or before its first stepped row: Keras' previous
 * output starts at zero), else the state it carries (its last output). */
static inline void RNN_TNAME(emit)(long nrows, long n, const TYPE *h, long ldh, TYPE *out, long ldo,
                                   const unsigned char *valid, unsigned char *seen, int zero_output)
{
    long b;
    for (b = 0; b < nrows; b++) {
        TYPE *o = out + b * ldo;
        if (!valid || valid[b]) {
            memcpy(o, h + b * ldh, (size_t)n * sizeof(TYPE));
            if (!seen[b]) seen[b] = 1;  /* written once: threads share its cache line */
        } else if (zero_output || !seen[b]) {
            memset(o, 0, (size_t)n * sizeof(TYPE));
        } else {
            memcpy(o, h + b * ldh, (size_t)n * sizeof(TYPE));
        }
    }
}
