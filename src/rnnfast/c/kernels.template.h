/*
 * kernels.template.h -- the kernel set of one type: what every instruction set
 * provides (no include guard: instantiated per TYPE by kernels.h; see template.h).
 *
 * An ISA fills one rnn_kernels (kernels.h) with its functions; the dispatcher
 * (isa.h) picks one at import. Sizes are long: nothing is cut at 2**31.
 */
typedef struct {
    /* v[0:n] = act(v[0:n]) in place (cellmath.template.h) */
    void (*activate)(int kind, TYPE *v, long n);
    /* the gate math of one step for nrows rows (cellmath.template.h) */
    void (*gru_ra)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *gh, long ldgh,
                   const TYPE *bhn, TYPE *h, long ldh, const unsigned char *valid, TYPE *tmp,
                   int act, int ract);
    void (*gru_rb_gates)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *gzr, long ldg,
                         const TYPE *h, long ldh, const unsigned char *valid, TYPE *zr, TYPE *rh,
                         int ract);
    void (*gru_rb_update)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *ghh, long ldg,
                          const TYPE *zr, TYPE *h, long ldh, const unsigned char *valid, TYPE *tmp,
                          int act);
    void (*lstm)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *gh, long ldgh, TYPE *c,
                 long ldc, TYPE *m, long ldm, const unsigned char *valid, TYPE *tmp, int act,
                 int ract);
    void (*simple)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *gh, long ldgh, TYPE *h,
                   long ldh, const unsigned char *valid, int act);
    /* C (M x N) = bias + A (M x K) times the packed block Bp (packgemm.template.h);
     * called with M, N > 0 only */
    void (*gemm_packed)(long M, long N, long K, const TYPE *A, long lda, const TYPE *Bp,
                        const TYPE *bias, TYPE *C, long ldc);
    /* 1 when the input projection runs on packed weights with gemm_packed (where that
     * measured faster than BLAS), 0 when it calls BLAS */
    int packed_projection;
} RNN_TNAME(kernels);
