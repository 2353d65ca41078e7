/*
 * dispatch.template.h -- the kernels of the current instruction set (isa.h), called by
 * name: RNN_TNAME(cell_step) is rnn_cell_step_f or rnn_cell_step_d (no include guard;
 * instantiated per TYPE by isa.h; see template.h). Every caller goes through these.
 */

static inline void RNN_TNAME(activate)(int kind, TYPE *v, long n)
{
    RNN_TNAME(now)->activate(kind, v, n);
}

/* The gate math of one step of cell `cell` (an RNN_CELL_* code of cells.def.h). */
static inline void RNN_TNAME(cell_step)(rnn_cell cell, const RNN_TNAME(cell_args) *a)
{
    RNN_TNAME(now)->step[cell](a);
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
