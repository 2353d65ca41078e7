/*
 * rowops.template.h -- the small ops of ONNX graphs on rows (rnnfast/_rowops.pyx), for
 * one TYPE and instruction set (no include guard: instantiated by rowops.h; see
 * template.h). Defines RNN_INAME(softmax_row) and RNN_INAME(rows_product).
 *
 * Every result depends on its own row only, in a fixed order of operations that
 * depends on the row's length alone: never on the other rows of the batch, on the
 * thread that computes it nor on the thread count.
 */

/* Accumulators of a row's max and sum: element j goes to lane j % RNN_ROW_LANES (the
 * compiler keeps the lanes in vector registers), the lanes then folded in halves. */
#define RNN_ROW_LANES 16
/* Steps of k per gathered panel of strided columns (rows_product). */
#define RNN_ROWS_KBLOCK 128

/* y[0:n] = softmax(x[0:n]) = exp(d) / sum exp(d), d = x - max (take_log: the
 * log-softmax, y = d - log(sum exp(d))); y may be x. exp is mathfun.h's (a few ulp,
 * vectorised; an exp below its range is 0). A NaN anywhere makes the whole row NaN, as NumPy's
 * softmax (the max skips it, then d, exp and the sum carry it), and so does a row of
 * -inf only. */
static void RNN_INAME(softmax_row)(const TYPE *x, TYPE *y, long n, int take_log)
{
    TYPE lane[RNN_ROW_LANES], m, s, low = sizeof(TYPE) == 4 ? (TYPE)-87 : (TYPE)-708;
    long j, l, w, nb = n / RNN_ROW_LANES * RNN_ROW_LANES;
    if (n <= 0)
        return;
    /* (1) m = max x (NaN skipped: a comparison with it is false) */
    for (l = 0; l < RNN_ROW_LANES; l++)
        lane[l] = -(TYPE)INFINITY;
    for (j = 0; j < nb; j += RNN_ROW_LANES)
        for (l = 0; l < RNN_ROW_LANES; l++)
            lane[l] = x[j + l] > lane[l] ? x[j + l] : lane[l];
    m = -(TYPE)INFINITY;
    for (l = 0; l < RNN_ROW_LANES; l++)
        m = lane[l] > m ? lane[l] : m;
    for (j = nb; j < n; j++)
        m = x[j] > m ? x[j] : m;
    /* (2) e = exp(x - m) (into y, or d into y for the log), s = sum e */
    for (l = 0; l < RNN_ROW_LANES; l++)
        lane[l] = 0;
    for (j = 0; j < nb; j += RNN_ROW_LANES)
        for (l = 0; l < RNN_ROW_LANES; l++) {
            TYPE d = x[j + l] - m, e = RNN_TNAME(exp)(d);
            e = d < low ? (TYPE)0 : e;          /* (false for NaN: it passes) */
            lane[l] += e;
            y[j + l] = take_log ? d : e;
        }
    for (w = RNN_ROW_LANES / 2; w >= 1; w /= 2)
        for (l = 0; l < w; l++)
            lane[l] += lane[l + w];
    s = lane[0];
    for (j = nb; j < n; j++) {
        TYPE d = x[j] - m, e = RNN_TNAME(exp)(d);
        e = d < low ? (TYPE)0 : e;
        s += e;
        y[j] = take_log ? d : e;
    }
    /* (3) y = e / s, or y = d - log s */
    if (take_log) {
        TYPE ls = (TYPE)log((double)s);
        for (j = 0; j < n; j++)
            y[j] -= ls;
    } else {
        for (j = 0; j < n; j++)
            y[j] /= s;
    }
}

/* RNN_ROW_LANES of TYPE as one GCC vector (the sums of rows_product held in registers:
 * as an array they went through memory at every k, 2.5x slower); element-wise IEEE
 * operations, the same values as the array loop below it, which other compilers run. */
#if defined(__GNUC__)
#define RNN_ROWS_VECTOR 1
typedef TYPE RNN_INAME(lanes) __attribute__((vector_size(RNN_ROW_LANES * sizeof(TYPE))));
#else
#define RNN_ROWS_VECTOR 0
#endif

#undef RNN_ROWS_TRANSPOSE /* (this template is included once per instruction set) */
#if RNN_ROWS_VECTOR && defined(RNN_ROWS_SHUFFLE)
typedef RNN_ROWS_INDEX RNN_INAME(index) __attribute__((vector_size(RNN_ROW_LANES * sizeof(TYPE))));

/* r[0..15] (16 rows of 16 lanes) transposed in registers: four rounds of two-input
 * shuffles (round w swaps the off-diagonal w x w blocks of each 2w x 2w block; AVX-512:
 * one vpermt2ps each), 64 shuffles for 256 values where the gather copied them one by
 * one. */
RNN_INLINE void RNN_INAME(transpose16)(RNN_INAME(lanes) *r)
{
    /* round w: lo[l] = l's pair's first row's value, hi[l] its second's (indices >= 16:
     * the second operand) */
    static const RNN_INAME(index) lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    static const RNN_INAME(index) hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    static const RNN_INAME(index) lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    static const RNN_INAME(index) hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    static const RNN_INAME(index) lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    static const RNN_INAME(index) hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    static const RNN_INAME(index) lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    static const RNN_INAME(index) hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    RNN_INAME(lanes) a, b;
    int i;
#define RNN_ROWS_ROUND(w, lo, hi)                                                             \
    _Pragma("GCC unroll 16") for (i = 0; i < RNN_ROW_LANES; i++) if (!(i & (w))) {            \
        a = r[i], b = r[i + (w)];                                                             \
        r[i] = __builtin_shuffle(a, b, lo), r[i + (w)] = __builtin_shuffle(a, b, hi);         \
    }
    RNN_ROWS_ROUND(8, lo8, hi8)
    RNN_ROWS_ROUND(4, lo4, hi4)
    RNN_ROWS_ROUND(2, lo2, hi2)
    RNN_ROWS_ROUND(1, lo1, hi1)
#undef RNN_ROWS_ROUND
}
#define RNN_ROWS_TRANSPOSE 1
#else
#define RNN_ROWS_TRANSPOSE 0
#endif

/* c + a b: one fused multiply-add where the instruction set has it (RNN_ROWS_FMA), as
 * the packed product's chain (its intrinsics, or GCC's contraction of its loop) */
RNN_INLINE TYPE RNN_INAME(madd)(TYPE a, TYPE b, TYPE c)
{
#if RNN_ROWS_FMA
    return sizeof(TYPE) == 4 ? (TYPE)fmaf((float)a, (float)b, (float)c) : (TYPE)fma((double)a, (double)b, (double)c);
#else
    return c + a * b;
#endif
}

/* C (M x N, row stride ldc) = bias + A (M x K, row stride lda) B (K x N, element (k, j)
 * at B[k*ldb + j*cb], any strides): each element one chain of multiply-adds over k =
 * 0..K-1 starting from its bias (or zero), the chain of the packed product
 * (packgemm.template.h) compiled for the same instruction set, so that a row's values
 * are the packed product's whatever the batch: the few-row products (attention at
 * decoding) that packing B would cost more than. */
static void RNN_INAME(rows_product)(long M, long N, long K, const TYPE *A, long lda, const TYPE *B,
                                    long ldb, long cb, const TYPE *bias, TYPE *C, long ldc)
{
    long i, k, j, j0, k0, nk, nc;
    TYPE acc[RNN_ROW_LANES];
#if RNN_ROWS_VECTOR
    RNN_INAME(lanes) va;                        /* acc in a register across k */
#endif
    TYPE panel[RNN_ROWS_KBLOCK * RNN_ROW_LANES];     /* a block of B's columns, gathered */
    for (j0 = 0; j0 < N; j0 += RNN_ROW_LANES) {
        int direct;
        nc = N - j0 < RNN_ROW_LANES ? N - j0 : RNN_ROW_LANES;
        direct = cb == 1 && nc == RNN_ROW_LANES;    /* B's rows contiguous: read in place */
        if (!direct && j0 == 0)     /* the lanes past N: zeros (the sums of lanes past nc are dropped) */
            memset(panel, 0, sizeof panel);
        for (k0 = 0; k0 < K; k0 += RNN_ROWS_KBLOCK) {
            nk = K - k0 < RNN_ROWS_KBLOCK ? K - k0 : RNN_ROWS_KBLOCK;
            if (!direct && ldb == 1) {              /* B^T's rows (attention's k^T) */
                long kt = 0;
#if RNN_ROWS_TRANSPOSE
                if (sizeof(TYPE) == 4 && nc == RNN_ROW_LANES)   /* 16 x 16 blocks in registers */
                    for (; kt + RNN_ROW_LANES <= nk; kt += RNN_ROW_LANES) {
                        RNN_INAME(lanes) r[RNN_ROW_LANES];
                        for (j = 0; j < RNN_ROW_LANES; j++)
                            memcpy(&r[j], B + k0 + kt + (j0 + j) * cb, sizeof r[j]);
                        RNN_INAME(transpose16)(r);
                        memcpy(panel + kt * RNN_ROW_LANES, r, sizeof r);
                    }
#endif
                for (j = 0; j < nc; j++) {
                    const TYPE *col = B + k0 + (j0 + j) * cb;
                    for (k = kt; k < nk; k++)
                        panel[k * RNN_ROW_LANES + j] = col[k];
                }
            } else if (!direct)
                for (j = 0; j < nc; j++) {
                    const TYPE *col = B + k0 * ldb + (j0 + j) * cb;
                    for (k = 0; k < nk; k++)
                        panel[k * RNN_ROW_LANES + j] = col[k * ldb];
                }
            for (i = 0; i < M; i++) {
                const TYPE *a = A + i * lda + k0;
                TYPE *c = C + i * ldc + j0;
                for (j = 0; j < RNN_ROW_LANES; j++)     /* the sums so far (exact in C) */
                    acc[j] = j >= nc ? (TYPE)0 : k0 > 0 ? c[j] : bias ? bias[j0 + j] : (TYPE)0;
#if RNN_ROWS_VECTOR
                memcpy(&va, acc, sizeof va);
                for (k = 0; k < nk; k++) {
                    RNN_INAME(lanes) vb;
                    memcpy(&vb, direct ? B + (k0 + k) * ldb + j0 : panel + k * RNN_ROW_LANES, sizeof vb);
                    va = va + a[k] * vb;                /* (contracted to an FMA where the ISA has one) */
                }
                memcpy(acc, &va, sizeof va);
#else
                for (k = 0; k < nk; k++) {
                    TYPE av = a[k];
                    const TYPE *b = direct ? B + (k0 + k) * ldb + j0 : panel + k * RNN_ROW_LANES;
                    for (j = 0; j < RNN_ROW_LANES; j++) acc[j] = RNN_INAME(madd)(av, b[j], acc[j]);
                }
#endif
                memcpy(c, acc, (size_t)nc * sizeof(TYPE));
            }
        }
    }
}

/* y (R x n, row stride ldy) = the softmax (or log-softmax) of each row of x (row stride
 * ldx), the rows split among nth threads at most. */
static void RNN_INAME(softmax_rows)(const TYPE *x, long ldx, TYPE *y, long ldy, long R, long n, int take_log,
                                    int nth)
{
    long r;
    RNN_OMP(parallel for num_threads(nth) schedule(static) if(nth > 1))
    for (r = 0; r < R; r++)
        RNN_INAME(softmax_row)(x + r * ldx, y + r * ldy, n, take_log);
}

/* The products of pr (rowops.h: rnn_rows_args) in TYPE, one (g1, g2) after another,
 * those split among nth threads at most. */
static void RNN_INAME(rows_products)(const rnn_rows_args *pr, int nth)
{
    long g, G = pr->G1 * pr->G2;
    const TYPE *A = (const TYPE *)pr->A, *B = (const TYPE *)pr->B, *bias = (const TYPE *)pr->bias;
    TYPE *C = (TYPE *)pr->C;
    RNN_OMP(parallel for num_threads(nth) schedule(static) if(nth > 1))
    for (g = 0; g < G; g++) {
        long g1 = g / pr->G2, g2 = g % pr->G2;
        RNN_INAME(rows_product)(pr->M, pr->N, pr->K, A + g1 * pr->sa1 + g2 * pr->sa2, pr->lda,
                                B + g1 * pr->sb1 + g2 * pr->sb2, pr->ldb, pr->cb, bias,
                                C + g1 * pr->sc1 + g2 * pr->sc2, pr->ldc);
    }
}

/* The attention of ar (rowops.h: rnn_attend_args) in TYPE: per batch entry g, the
 * scores S_g = Q_g Kt_g (rows_product), each row of S_g softmaxed in place
 * (softmax_row), O_g = S_g V_g (rows_product): the bits of the three ops one after
 * another. The g split among nth threads at most. */
static void RNN_INAME(attend)(const rnn_attend_args *ar, int nth)
{
    long g;
    RNN_OMP(parallel for num_threads(nth) schedule(static) if(nth > 1))
    for (g = 0; g < ar->G; g++) {
        const TYPE *q = (const TYPE *)ar->Q + g * ar->sq, *kt = (const TYPE *)ar->Kt + g * ar->sk;
        const TYPE *v = (const TYPE *)ar->V + g * ar->sv;
        TYPE *sc = (TYPE *)ar->S + g * ar->M * ar->T, *o = (TYPE *)ar->O + g * ar->M * ar->N;
        long m;
        RNN_INAME(rows_product)(ar->M, ar->T, ar->K, q, ar->ldq, kt, ar->ldk, ar->ck, NULL, sc, ar->T);
        for (m = 0; m < ar->M; m++)
            RNN_INAME(softmax_row)(sc + m * ar->T, sc + m * ar->T, ar->T, 0);
        RNN_INAME(rows_product)(ar->M, ar->N, ar->T, sc, ar->T, v, ar->ldv, ar->cv, NULL, o, ar->N);
    }
}

/* Task `task` of pa (rowops.h: rnn_packed_args): C's columns of panels task*per ..
 * task*per + per - 1, every row. Each element one chain of multiply-adds over k =
 * 0..K-1 from its bias (or zero), the packed product's (packgemm.template.h) compiled
 * for the same instruction set: the bits of _kernels.packed_rows, whatever the split. */
static void RNN_INAME(packed_task)(void *arg, long task)
{
    const rnn_packed_args *pa = (const rnn_packed_args *)arg;
    const TYPE *A = (const TYPE *)pa->A, *Bp = (const TYPE *)pa->Bp, *bias = (const TYPE *)pa->bias;
    TYPE *C = (TYPE *)pa->C;
    long K = pa->K, p, i, j, k, p1 = (task + 1) * pa->per < pa->npan ? (task + 1) * pa->per : pa->npan;
    _Static_assert(RNN_PANEL_COLS == 4 * RNN_ROW_LANES, "packed_task: a panel is four vectors of lanes");
    for (p = task * pa->per; p < p1; p++) {
        const TYPE *bp = Bp + p * K * RNN_PANEL_COLS;
        long j0 = p * RNN_PANEL_COLS, nc = pa->N - j0 < RNN_PANEL_COLS ? pa->N - j0 : RNN_PANEL_COLS;
        for (i = 0; i < pa->M; i++) {
            const TYPE *a = A + i * pa->lda;
            TYPE acc[RNN_PANEL_COLS];
#if RNN_ROWS_VECTOR
            /* the panel's sums as four vectors of lanes, each its own local: as one
             * vector of 64 they went through memory at every k (2x slower) */
            RNN_INAME(lanes) v0, v1, v2, v3;
#endif
            for (j = 0; j < RNN_PANEL_COLS; j++)
                acc[j] = bias && j < nc ? bias[j0 + j] : (TYPE)0;
#if RNN_ROWS_VECTOR
            memcpy(&v0, acc, sizeof v0);
            memcpy(&v1, acc + RNN_ROW_LANES, sizeof v1);
            memcpy(&v2, acc + 2 * RNN_ROW_LANES, sizeof v2);
            memcpy(&v3, acc + 3 * RNN_ROW_LANES, sizeof v3);
            for (k = 0; k < K; k++) {
                RNN_INAME(lanes) b0, b1, b2, b3;
                const TYPE *b = bp + k * RNN_PANEL_COLS;
                TYPE av = a[k];
                memcpy(&b0, b, sizeof b0);
                memcpy(&b1, b + RNN_ROW_LANES, sizeof b1);
                memcpy(&b2, b + 2 * RNN_ROW_LANES, sizeof b2);
                memcpy(&b3, b + 3 * RNN_ROW_LANES, sizeof b3);
                v0 = v0 + av * b0;                      /* (contracted to FMAs where the ISA has them) */
                v1 = v1 + av * b1;
                v2 = v2 + av * b2;
                v3 = v3 + av * b3;
            }
            memcpy(acc, &v0, sizeof v0);
            memcpy(acc + RNN_ROW_LANES, &v1, sizeof v1);
            memcpy(acc + 2 * RNN_ROW_LANES, &v2, sizeof v2);
            memcpy(acc + 3 * RNN_ROW_LANES, &v3, sizeof v3);
#else
            for (k = 0; k < K; k++)
                for (j = 0; j < RNN_PANEL_COLS; j++)
                    acc[j] = RNN_INAME(madd)(a[k], bp[k * RNN_PANEL_COLS + j], acc[j]);
#endif
            memcpy(C + i * pa->ldc + j0, acc, (size_t)nc * sizeof(TYPE));
        }
    }
}

/* Tasks of a few-row packed product at most (rowops.team.h: claimed one at a time). */
#ifndef RNN_PACKED_TASKS
#define RNN_PACKED_TASKS 16
#endif

/* The product of pa (its per and npan set here), on the caller and, nth > 1, the
 * partner thread of rowops.team.h. */
static void RNN_INAME(packed_few)(rnn_packed_args *pa, int nth)
{
    long ntask;
    pa->npan = (pa->N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    ntask = nth > 1 ? (pa->npan < RNN_PACKED_TASKS ? pa->npan : RNN_PACKED_TASKS) : 1;
    pa->per = (pa->npan + ntask - 1) / ntask;
    ntask = (pa->npan + pa->per - 1) / pa->per;
    rnn_duo_run(RNN_INAME(packed_task), pa, ntask, nth);
}
