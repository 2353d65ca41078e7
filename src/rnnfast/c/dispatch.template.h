/*
 * dispatch.template.h -- the kernels of the current instruction set (isa.h), called by
 * name: RNN_TNAME(gru_ra) is rnn_gru_ra_f or rnn_gru_ra_d (no include guard;
 * instantiated per TYPE by isa.h; see template.h). Every caller goes through these.
 */

static inline void RNN_TNAME(activate)(int kind, TYPE *v, long n)
{
    RNN_TNAME(now)->activate(kind, v, n);
}

static inline void RNN_TNAME(gru_ra)(long nrows, long H, const TYPE *xp, long ldxp,
                                     const TYPE *gh, long ldgh, const TYPE *bhn, TYPE *h, long ldh,
                                     const unsigned char *valid, TYPE *tmp, int act, int ract)
{
    RNN_TNAME(now)->gru_ra(nrows, H, xp, ldxp, gh, ldgh, bhn, h, ldh, valid, tmp, act, ract);
}

static inline void RNN_TNAME(gru_rb_gates)(long nrows, long H, const TYPE *xp, long ldxp,
                                           const TYPE *gzr, long ldg, const TYPE *h, long ldh,
                                           const unsigned char *valid, TYPE *zr, TYPE *rh, int ract)
{
    RNN_TNAME(now)->gru_rb_gates(nrows, H, xp, ldxp, gzr, ldg, h, ldh, valid, zr, rh, ract);
}

static inline void RNN_TNAME(gru_rb_update)(long nrows, long H, const TYPE *xp, long ldxp,
                                            const TYPE *ghh, long ldg, const TYPE *zr, TYPE *h,
                                            long ldh, const unsigned char *valid, TYPE *tmp, int act)
{
    RNN_TNAME(now)->gru_rb_update(nrows, H, xp, ldxp, ghh, ldg, zr, h, ldh, valid, tmp, act);
}

static inline void RNN_TNAME(lstm)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *gh,
                                   long ldgh, TYPE *c, long ldc, TYPE *m, long ldm,
                                   const unsigned char *valid, TYPE *tmp, int act, int ract)
{
    RNN_TNAME(now)->lstm(nrows, H, xp, ldxp, gh, ldgh, c, ldc, m, ldm, valid, tmp, act, ract);
}

static inline void RNN_TNAME(simple)(long nrows, long H, const TYPE *xp, long ldxp, const TYPE *gh,
                                     long ldgh, TYPE *h, long ldh, const unsigned char *valid, int act)
{
    RNN_TNAME(now)->simple(nrows, H, xp, ldxp, gh, ldgh, h, ldh, valid, act);
}

/* C (M x N, row stride ldc) = bias + A (M x K, row stride lda) times the packed K x N
 * block Bp (layout.h); bias (N,) or NULL for zeros. */
static inline void RNN_TNAME(gemm_packed)(long M, long N, long K, const TYPE *A, long lda,
                                          const TYPE *Bp, const TYPE *bias, TYPE *C, long ldc)
{
    if (M <= 0 || N <= 0)
        return;
    RNN_TNAME(now)->gemm_packed(M, N, K, A, lda, Bp, bias, C, ldc);
}

/* 1 when the input projection runs on packed weights (gemm_packed), 0: BLAS. */
static inline int RNN_TNAME(packed_projection)(void)
{
    return RNN_TNAME(now)->packed_projection;
}
