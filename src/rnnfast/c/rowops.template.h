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

/* RNN_ROW_LANES of TYPE as one GCC vector (the sums of rows_product held in registers:
 * as an array they went through memory at every k, 2.5x slower); element-wise IEEE
 * operations, the same values as the array loop below it, which other compilers run. */
#if defined(__GNUC__)
#define RNN_ROWS_VECTOR 1
typedef TYPE RNN_INAME(lanes) __attribute__((vector_size(RNN_ROW_LANES * sizeof(TYPE))));
/* a comparison of lanes: -1 (true) or 0 per lane, an integer of TYPE's size */
typedef RNN_ROWS_INDEX RNN_INAME(mask) __attribute__((vector_size(RNN_ROW_LANES * sizeof(TYPE))));
#if defined(RNN_ROWS_YMM)
/* AVX2: the few-row product's sums in vectors of one 256-bit register each */
#define RNN_YMM_LANES (32 / (long)sizeof(TYPE))
#define RNN_YMM_VECS (RNN_PANEL_COLS / (32 / (int)sizeof(TYPE)))
typedef TYPE RNN_INAME(ymm) __attribute__((vector_size(32)));
#endif
/* The vectors the loops over lanes hold in registers (rvec; RNN_ROWS_RV of them make
 * RNN_ROW_LANES): AVX2, 256 bits (GCC splits a wider vector through memory there: a
 * row's sums in rows_product went to the stack and back at every k, the attention of a
 * B = 64 decoder step 860 us on a Zen 1); else the lanes themselves. Element-wise IEEE
 * operations: the same values whatever the width. */
#if defined(RNN_ROWS_YMM)
typedef RNN_INAME(ymm) RNN_INAME(rvec);
typedef RNN_ROWS_INDEX RNN_INAME(rmask) __attribute__((vector_size(32)));
#else
typedef RNN_INAME(lanes) RNN_INAME(rvec);
typedef RNN_INAME(mask) RNN_INAME(rmask);
#endif
#undef RNN_ROWS_RV
#define RNN_ROWS_RV ((int)(RNN_ROW_LANES * sizeof(TYPE) / sizeof(RNN_INAME(rvec))))
#else
#define RNN_ROWS_VECTOR 0
#endif

/* The row (log-)softmax in blocks of RNN_SOFTMAX_BLOCK columns (the last one shorter),
 * a partition fixed by the row's length alone, whoever computes the blocks: block b
 * alone gives its max m_b and s_b = sum exp(x - m_b) (softmax_block); then, in block
 * order, m = max_b m_b, s = sum_b s_b w_b with w_b = exp(m_b - m) (softmax_combine);
 * then y = exp(x - m_b) (w_b / s) or, for the log, y = (x - m) - log s (softmax_finish).
 * The few-row product of a decoder's head (packed_task) runs the blocks of its columns
 * as it writes them, on the caller and the partner: the bits of the product followed
 * by softmax_rows, whatever the split. */
#define RNN_SOFTMAX_BLOCK 512
/* Blocks of a row whose (m_b, s_b) softmax_row keeps on its stack (longer rows: malloc). */
#define RNN_SOFTMAX_STACK 64

/* exp(d) for d <= 0 (NaN passes), 0 below exp's range (d < low): mathfun.h's. */
RNN_INLINE TYPE RNN_INAME(exp_neg)(TYPE d)
{
    TYPE low = sizeof(TYPE) == 4 ? (TYPE)-87 : (TYPE)-708;
    return d < low ? (TYPE)0 : RNN_TNAME(exp)(d);
}

#undef RNN_ROWS_VEXP /* (this template is included once per instruction set) */
#if RNN_ROWS_VECTOR && (defined(RNN_ROWS_SHUFFLE) || defined(RNN_ROWS_YMM))
#define RNN_ROWS_VEXP 1
/* exp_neg of NE vectors of floats at once (d[0 .. NE - 1], in place; NE RNN_ROWS_RV or
 * twice that: RNN_ROW_LANES or twice as many floats), on GCC's
 * vectors (the loop over an array of lanes went through memory at every element: 4.9 us
 * against 3.2 for the block phase of 8000 columns on AVX-512): mathfun.h's Cephes
 * polynomial (a few ulp), its range reduction rounding by the addition of 1.5 * 2^23 (no
 * floor, no clamp at 88: d <= 0), a lane below -87 masked to 0 at the end (so no clamp
 * before: whatever the lane computed, its bits are dropped). Each lane's value depends
 * on its own d alone. The vectors go a step at a time, their chains interleaved (one
 * after the other the latency of the chain bound the loop). 64 rows of 8000 on a Zen 1
 * (AVX2, 1 thread, chrt): the array loop 1.15 ms, two 256-bit vectors interleaved 1.01,
 * four 0.95. */
RNN_INLINE void RNN_INAME(vexp_neg)(RNN_INAME(rvec) *d, const int NE)
{
    typedef RNN_INAME(rvec) V;
    typedef RNN_INAME(rmask) I;
    V v[2 * RNN_ROWS_RV], t[2 * RNN_ROWS_RV], fx[2 * RNN_ROWS_RV], z[2 * RNN_ROWS_RV], y[2 * RNN_ROWS_RV];
    I small[2 * RNN_ROWS_RV], bits[2 * RNN_ROWS_RV];
    int h;
#define RNN_EACH _Pragma("GCC unroll 4") for (h = 0; h < NE; h++)
    RNN_EACH small[h] = d[h] < (TYPE)-87;                     /* (false for NaN: it passes) */
    RNN_EACH v[h] = d[h];
    RNN_EACH t[h] = v[h] * 1.44269504088896341f + 12582912.0f;
    RNN_EACH fx[h] = t[h] - 12582912.0f;
    RNN_EACH v[h] = v[h] - fx[h] * 0.693359375f;
    RNN_EACH v[h] = v[h] - fx[h] * -2.12194440e-4f;
    RNN_EACH z[h] = v[h] * v[h];
    RNN_EACH y[h] = 1.9875691500E-4f * v[h] + 1.3981999507E-3f;
    RNN_EACH y[h] = y[h] * v[h] + 8.3334519073E-3f;
    RNN_EACH y[h] = y[h] * v[h] + 4.1665795894E-2f;
    RNN_EACH y[h] = y[h] * v[h] + 1.6666665459E-1f;
    RNN_EACH y[h] = y[h] * v[h] + 5.0000001201E-1f;
    RNN_EACH y[h] = y[h] * z[h] + v[h] + 1.0f;
    RNN_EACH bits[h] = ((I)t[h] - 0x4B400000 + 127) << 23;
    RNN_EACH d[h] = (V)((I)(y[h] * (V)bits[h]) & ~small[h]);
#undef RNN_EACH
}

/* e = exp(src - m) over one group of RNN_ROW_LANES values, added lane by lane to acc;
 * e to dst where dst is not NULL. */
RNN_INLINE void RNN_INAME(vexp_group)(const TYPE *src, TYPE m, RNN_INAME(rvec) *acc, TYPE *dst)
{
    enum { EL = sizeof(RNN_INAME(rvec)) / sizeof(TYPE) };
    RNN_INAME(rvec) e[RNN_ROWS_RV];
    long h;
    _Pragma("GCC unroll 2") for (h = 0; h < RNN_ROWS_RV; h++) {    /* (a vector at a time: see vsoftmax_block) */
        memcpy(&e[h], src + h * EL, sizeof e[h]);
        e[h] -= m;
    }
    RNN_INAME(vexp_neg)(e, RNN_ROWS_RV);
    _Pragma("GCC unroll 2") for (h = 0; h < RNN_ROWS_RV; h++)
        acc[h] += e[h];
    if (dst != NULL)
        _Pragma("GCC unroll 2") for (h = 0; h < RNN_ROWS_RV; h++)
            memcpy(dst + h * EL, &e[h], sizeof e[h]);
}

/* softmax_block's phases on vectors (float): the same partition of the sum into
 * RNN_ROW_LANES lanes (on AVX2 in two vectors, lanes 0-7 and 8-15), each lane's sum in
 * order of j (the exps of two groups of lanes computed together, added one after the
 * other), the tail (n % lanes) read as a vector padded with -inf (exp 0: the sums
 * unchanged). */
static void RNN_INAME(vsoftmax_block)(const TYPE *x, TYPE *y, long n, int take_log, TYPE *mb, TYPE *sb)
{
    typedef RNN_INAME(rvec) V;
    enum { EL = sizeof(V) / sizeof(TYPE), NE = RNN_ROW_LANES / EL };
    TYPE lane[RNN_ROW_LANES], pad[RNN_ROW_LANES], m;
    long j, l, w, h, nb = n / RNN_ROW_LANES * RNN_ROW_LANES, nt = n - nb;
    V v, mx[NE], acc[NE], zero = {0};
#if !defined(RNN_ROWS_YMM)
    typedef RNN_INAME(rmask) I;
    I gt;
#endif
    for (l = 0; l < RNN_ROW_LANES; l++)
        pad[l] = l < nt ? x[nb + l] : -(TYPE)INFINITY;
    /* (1) m = max x (a comparison with NaN is false: skipped) */
    memcpy(mx, pad, sizeof mx);
    for (j = 0; j < nb; j += RNN_ROW_LANES)
        _Pragma("GCC unroll 2") for (h = 0; h < NE; h++) {
            memcpy(&v, x + j + h * EL, sizeof v);
#if defined(RNN_ROWS_YMM)
            /* vmaxps(v, mx): v > mx ? v : mx, the second operand where either is NaN;
             * GCC made the masks below a compare and a blend (a chain 4-5 cycles long
             * on Zen 1 where vmaxps's is 1) */
            typedef float F8 __attribute__((vector_size(32)));
            typedef double D4 __attribute__((vector_size(32)));
            mx[h] = sizeof(TYPE) == 4 ? (V)__builtin_ia32_maxps256((F8)v, (F8)mx[h])
                                      : (V)__builtin_ia32_maxpd256((D4)v, (D4)mx[h]);
#else
            gt = v > mx[h];
            mx[h] = (V)(((I)v & gt) | ((I)mx[h] & ~gt));
#endif
        }
    memcpy(lane, mx, sizeof lane);
    m = -(TYPE)INFINITY;
    for (l = 0; l < RNN_ROW_LANES; l++)
        m = lane[l] > m ? lane[l] : m;
    *mb = m;
    m = m == -(TYPE)INFINITY ? (TYPE)0 : m;
    /* (2) e = exp(x - m), s = sum e (e into y for the softmax): two groups of lanes at
     * a time, then the last whole group alone, then the tail */
    _Pragma("GCC unroll 2") for (h = 0; h < NE; h++)
        acc[h] = zero;
    for (j = 0; j + 2 * RNN_ROW_LANES <= nb; j += 2 * RNN_ROW_LANES) {
        V e[2 * NE];
        /* a vector at a time: one memcpy of the whole array went through the stack in
         * 16-byte halves, each vector then read back whole (a failed store-to-load
         * forward per vector) */
        _Pragma("GCC unroll 4") for (h = 0; h < 2 * NE; h++) {
            memcpy(&e[h], x + j + h * EL, sizeof e[h]);
            e[h] -= m;
        }
        RNN_INAME(vexp_neg)(e, 2 * NE);
        _Pragma("GCC unroll 2") for (h = 0; h < NE; h++)
            acc[h] = (acc[h] + e[h]) + e[NE + h];
        if (!take_log)
            _Pragma("GCC unroll 4") for (h = 0; h < 2 * NE; h++)
                memcpy(y + j + h * EL, &e[h], sizeof e[h]);
    }
    if (j < nb)
        RNN_INAME(vexp_group)(x + j, m, acc, take_log ? NULL : y + j);
    RNN_INAME(vexp_group)(pad, m, acc, lane);
    if (!take_log)
        for (l = 0; l < nt; l++)
            y[nb + l] = lane[l];
    memcpy(lane, acc, sizeof lane);
    for (w = RNN_ROW_LANES / 2; w >= 1; w /= 2)
        for (l = 0; l < w; l++)
            lane[l] += lane[l + w];
    *sb = lane[0];
}
#else
#define RNN_ROWS_VEXP 0
#endif

/* Block phase of x[0:n] (n <= RNN_SOFTMAX_BLOCK): *mb = max x (NaN skipped; -inf for a
 * block of -inf and NaN only), *sb = sum exp(x - m'), m' = *mb or 0 where that is -inf
 * (so a block of -inf sums 0, a NaN passes); !take_log: y = exp(x - m') (y may be x).
 * Sums in RNN_ROW_LANES lanes (element j to lane j % lanes), folded in halves. exp is
 * mathfun.h's (a few ulp, vectorised; an argument below its range gives 0). Not
 * inlined: one body, the same bits wherever it is called from. */
RNN_ROWS_NOINLINE static void RNN_INAME(softmax_block)(const TYPE *x, TYPE *y, long n, int take_log, TYPE *mb,
                                                       TYPE *sb)
{
    TYPE lane[RNN_ROW_LANES], m, s;
    long j, l, w, nb = n / RNN_ROW_LANES * RNN_ROW_LANES;
#if RNN_ROWS_VEXP
    if (sizeof(TYPE) == 4) {
        RNN_INAME(vsoftmax_block)(x, y, n, take_log, mb, sb);
        return;
    }
#endif
    /* (1) m = max x (a comparison with NaN is false: skipped) */
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
    *mb = m;
    m = m == -(TYPE)INFINITY ? (TYPE)0 : m;
    /* (2) e = exp(x - m), s = sum e (e into y for the softmax) */
    for (l = 0; l < RNN_ROW_LANES; l++)
        lane[l] = 0;
    if (take_log)
        for (j = 0; j < nb; j += RNN_ROW_LANES)
            for (l = 0; l < RNN_ROW_LANES; l++) {
                lane[l] += RNN_INAME(exp_neg)(x[j + l] - m);
            }
    else
        for (j = 0; j < nb; j += RNN_ROW_LANES)
            for (l = 0; l < RNN_ROW_LANES; l++) {
                TYPE e = RNN_INAME(exp_neg)(x[j + l] - m);
                lane[l] += e;
                y[j + l] = e;
            }
    for (w = RNN_ROW_LANES / 2; w >= 1; w /= 2)
        for (l = 0; l < w; l++)
            lane[l] += lane[l + w];
    s = lane[0];
    for (j = nb; j < n; j++) {
        TYPE e = RNN_INAME(exp_neg)(x[j] - m);
        s += e;
        if (!take_log)
            y[j] = e;
    }
    *sb = s;
}

/* The row's max m from its blocks' (mb, sb: nblk of each), and in sb the factor of
 * each block's finish: softmax, w_b / s with w_b = exp(m_b - m) (0 below exp's range:
 * a block of -inf), s = sum_b s_b w_b in block order; log, log s. A NaN anywhere, or a
 * row of -inf only, makes the factors NaN. Returns m. */
static TYPE RNN_INAME(softmax_combine)(const TYPE *mb, TYPE *sb, long nblk, int take_log)
{
    TYPE m = -(TYPE)INFINITY, s = 0;
    long b;
    for (b = 0; b < nblk; b++)
        m = mb[b] > m ? mb[b] : m;
    for (b = 0; b < nblk; b++) {
        TYPE w = RNN_INAME(exp_neg)(mb[b] - m);
        s += sb[b] * w;
        sb[b] = w;
    }
    if (take_log) {
        TYPE ls = (TYPE)log((double)s);
        for (b = 0; b < nblk; b++)
            sb[b] = ls;
    } else
        for (b = 0; b < nblk; b++)
            sb[b] /= s;
    return m;
}

/* Finish phase of block x[0:n] -> y: softmax, y *= f (y holds the block's exp); log,
 * y = (x - m) - f. */
static void RNN_INAME(softmax_finish)(const TYPE *x, TYPE *y, long n, int take_log, TYPE m, TYPE f)
{
    long j;
    if (take_log)
        for (j = 0; j < n; j++)
            y[j] = (x[j] - m) - f;
    else
        for (j = 0; j < n; j++)
            y[j] *= f;
}

/* y[0:n] = softmax(x[0:n]) = exp(d) / sum exp(d), d = x - max (take_log: the
 * log-softmax, y = d - log(sum exp(d))), in the blocks above; y may be x. A NaN
 * anywhere makes the whole row NaN, as NumPy's softmax, and so does a row of -inf only. */
static void RNN_INAME(softmax_row)(const TYPE *x, TYPE *y, long n, int take_log)
{
    TYPE stack[2 * RNN_SOFTMAX_STACK], *mb = stack, m;
    long b, nblk = (n + RNN_SOFTMAX_BLOCK - 1) / RNN_SOFTMAX_BLOCK;
    if (n <= 0)
        return;
    if (nblk > RNN_SOFTMAX_STACK && !(mb = (TYPE *)malloc(2 * (size_t)nblk * sizeof(TYPE)))) {
        for (b = 0; b < n; b++)     /* (no memory for the blocks' sums: NaN, not a crash) */
            y[b] = (TYPE)NAN;
        return;
    }
    b = 0;
    do {                        /* (at least one block: n > 0) */
        long j0 = b * RNN_SOFTMAX_BLOCK, nc = n - j0 < RNN_SOFTMAX_BLOCK ? n - j0 : RNN_SOFTMAX_BLOCK;
        RNN_INAME(softmax_block)(x + j0, y + j0, nc, take_log, mb + b, mb + nblk + b);
    } while (++b < nblk);
    m = RNN_INAME(softmax_combine)(mb, mb + nblk, nblk, take_log);
    for (b = 0; b < nblk; b++) {
        long j0 = b * RNN_SOFTMAX_BLOCK, nc = n - j0 < RNN_SOFTMAX_BLOCK ? n - j0 : RNN_SOFTMAX_BLOCK;
        RNN_INAME(softmax_finish)(x + j0, y + j0, nc, take_log, m, mb[nblk + b]);
    }
    if (mb != stack)
        free(mb);
}

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

#if RNN_ROWS_VECTOR
/* Vectors of lanes rows_product_wide sums at once (their chains interleaved: one
 * multiply-add's latency per RNN_ROWS_WIDE of them, where one chain at a time waited for
 * each), as many as the instruction set's registers hold beside the loads. */
#undef RNN_ROWS_WIDE
#if defined(RNN_ROWS_SHUFFLE)
#define RNN_ROWS_WIDE 8
#elif RNN_ROWS_FMA
#define RNN_ROWS_WIDE (sizeof(TYPE) == 4 ? 4 : 2)
#else
#define RNN_ROWS_WIDE (sizeof(TYPE) == 4 ? 2 : 1)
#endif

/* rows_product's columns 0 .. J-1, J the largest multiple of RNN_ROWS_WIDE vectors of
 * lanes <= N, for B's rows contiguous: RNN_ROWS_WIDE vectors of sums in registers
 * across all of k, each element's chain rows_product's (from its bias or zero, one
 * multiply-add per k in order: the same bits). Returns J. */
static long RNN_INAME(rows_product_wide)(long M, long N, long K, const TYPE *A, long lda, const TYPE *B, long ldb,
                                         const TYPE *bias, TYPE *C, long ldc)
{
    typedef RNN_INAME(rvec) V;
    enum { NW = RNN_ROWS_WIDE * RNN_ROWS_RV, EL = sizeof(V) / sizeof(TYPE), W = NW * EL };
    long i, k, j0, w;
    for (j0 = 0; j0 + W <= N; j0 += W)
        for (i = 0; i < M; i++) {
            const TYPE *a = A + i * lda, *b = B + j0;
            V acc[NW], zero = {0};
            _Pragma("GCC unroll 16") for (w = 0; w < NW; w++) {
                acc[w] = zero;
                if (bias)
                    memcpy(&acc[w], bias + j0 + w * EL, sizeof(V));
            }
            for (k = 0; k < K; k++, b += ldb) {
                TYPE av = a[k];
                _Pragma("GCC unroll 16") for (w = 0; w < NW; w++) {
                    V vb;
                    memcpy(&vb, b + w * EL, sizeof vb);
                    acc[w] = acc[w] + av * vb;          /* (contracted to an FMA where the ISA has one) */
                }
            }
            memcpy(C + i * ldc + j0, acc, sizeof acc);
        }
    return j0;
}
#endif

/* C (M x N, row stride ldc) = bias + A (M x K, row stride lda) B (K x N, element (k, j)
 * at B[k*ldb + j*cb], any strides): each element one chain of multiply-adds over k =
 * 0..K-1 starting from its bias (or zero), the chain of the packed product
 * (packgemm.template.h) compiled for the same instruction set, so that a row's values
 * are the packed product's whatever the batch: the few-row products (attention at
 * decoding) that packing B would cost more than. */
static void RNN_INAME(rows_product)(long M, long N, long K, const TYPE *A, long lda, const TYPE *B,
                                    long ldb, long cb, const TYPE *bias, TYPE *C, long ldc)
{
    long i, k, j, j0 = 0, k0, nk, nc;
    TYPE acc[RNN_ROW_LANES];
#if RNN_ROWS_VECTOR
    RNN_INAME(rvec) va[RNN_ROWS_RV];            /* acc in registers across k */
    int h;
#endif
    TYPE panel[RNN_ROWS_KBLOCK * RNN_ROW_LANES];     /* a block of B's columns, gathered */
#if RNN_ROWS_VECTOR
    if (cb == 1)                /* B's rows contiguous: RNN_ROWS_WIDE vectors of columns at once */
        j0 = RNN_INAME(rows_product_wide)(M, N, K, A, lda, B, ldb, bias, C, ldc);
#endif
    for (; j0 < N; j0 += RNN_ROW_LANES) {
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
                memcpy(va, acc, sizeof va);
                for (k = 0; k < nk; k++) {
                    RNN_INAME(rvec) vb[RNN_ROWS_RV];
                    memcpy(vb, direct ? B + (k0 + k) * ldb + j0 : panel + k * RNN_ROW_LANES, sizeof vb);
                    _Pragma("GCC unroll 2") for (h = 0; h < RNN_ROWS_RV; h++)
                        va[h] = va[h] + a[k] * vb[h];   /* (contracted to an FMA where the ISA has one) */
                }
                memcpy(acc, va, sizeof va);
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

/* The attention of batch entry g (attend): S_g = Q_g Kt_g (rows_product), each row of
 * S_g softmaxed in place (softmax_row), O_g = S_g V_g (rows_product); scores: S_g given
 * (attend_scores16 computed it). */
static void RNN_INAME(attend_one)(const rnn_attend_args *ar, long g, int scores)
{
    const TYPE *q = (const TYPE *)ar->Q + g * ar->sq, *kt = (const TYPE *)ar->Kt + g * ar->sk;
    const TYPE *v = (const TYPE *)ar->V + g * ar->sv;
    TYPE *sc = (TYPE *)ar->S + g * ar->M * ar->T, *o = (TYPE *)ar->O + g * ar->M * ar->N;
    long m;
    if (!scores)
        RNN_INAME(rows_product)(ar->M, ar->T, ar->K, q, ar->ldq, kt, ar->ldk, ar->ck, NULL, sc, ar->T);
    for (m = 0; m < ar->M; m++)
        RNN_INAME(softmax_row)(sc + m * ar->T, sc + m * ar->T, ar->T, 0);
    RNN_INAME(rows_product)(ar->M, ar->N, ar->T, sc, ar->T, v, ar->ldv, ar->cv, NULL, o, ar->N);
}

#if RNN_ROWS_TRANSPOSE
/* r[l] = the first nk (<= lanes) values at p + l * stride for l < ng, zeros past them
 * (and for l >= ng). */
RNN_INLINE void RNN_INAME(rows16)(RNN_INAME(lanes) *r, const TYPE *p, long stride, long ng, long nk)
{
    TYPE buf[RNN_ROW_LANES] = {0};
    RNN_INAME(lanes) zero = {0};
    int l;
    nk = nk < RNN_ROW_LANES ? nk : RNN_ROW_LANES;
    _Pragma("GCC unroll 16") for (l = 0; l < RNN_ROW_LANES; l++) {
        r[l] = zero;
        if (l < ng) {
            memcpy(buf, p + l * stride, (size_t)nk * sizeof(TYPE));
            memcpy(&r[l], buf, sizeof r[l]);
        }
    }
}

/* Longest rows (K) attend_scores16 takes: Q's transposed rows on its stack (32 KB). */
#define RNN_ATTEND_MAXK 512
/* Fewest entries of a block that attend_scores16 sums together; a block of fewer (a
 * decoder step at B = 1, a batch's last block) goes entry by entry through rows_product
 * (the same bits): attend_scores16 transposes T x K / 16 blocks of 16 x 16 whatever the
 * block's entries, rows_product about ceil(T / 16) x K / 16 an entry. Measured, K 256,
 * T 20 (Zen 4, 1 thread, the call from Python): G 1 7.4 -> 3.5 us, G 2 8.3 -> 5.3, G 4
 * 9.3 -> 8.5; G 6 9.9 against 12.0, G 8 11.4 against 16.6 entry by entry. */
#define RNN_ATTEND_MIN_LANES 5

/* The scores S_g = Q_g Kt_g of the RNN_ROW_LANES batch entries g0 .. g0 + ng - 1 (ng <=
 * lanes) at once, Kt's k contiguous (ldk 1: attention's k^T, a transposed view of the
 * keys), K <= RNN_ATTEND_MAXK: one lane per entry, each element rows_product's chain
 * (from zero, one multiply-add per k in order: the same bits, whatever entries share the
 * vector). The lanes past ng are zeros. Per row m of Q: its 16 entries' rows transposed
 * (16 x 16 blocks in registers, Q^T in qt), then per t the keys' 16 rows transposed
 * block by block and summed straight from the registers: no panel stored and reloaded,
 * no element-by-element gather of a t tail (rows_product's lanes are t: T = 20 left 4). */
static void RNN_INAME(attend_scores16)(const rnn_attend_args *ar, long g0, long ng)
{
    typedef RNN_INAME(lanes) V;
    const TYPE *Q = (const TYPE *)ar->Q, *Kt = (const TYPE *)ar->Kt;
    TYPE *S = (TYPE *)ar->S, lane[RNN_ROW_LANES];
    long M = ar->M, K = ar->K, T = ar->T, K16 = K / RNN_ROW_LANES * RNN_ROW_LANES, m, t, k0, kk, l;
    V qt[RNN_ATTEND_MAXK], r[RNN_ROW_LANES], acc, zero = {0};
    for (m = 0; m < M; m++) {
        const TYPE *q = Q + g0 * ar->sq + m * ar->ldq;
        for (k0 = 0; k0 < K; k0 += RNN_ROW_LANES) {
            RNN_INAME(rows16)(r, q + k0, ar->sq, ng, K - k0);
            RNN_INAME(transpose16)(r);
            _Pragma("GCC unroll 16") for (kk = 0; kk < RNN_ROW_LANES; kk++)
                qt[k0 + kk] = r[kk];        /* (qt has room: K <= RNN_ATTEND_MAXK, a multiple of 16) */
        }
        for (t = 0; t < T; t++) {
            const TYPE *kt = Kt + g0 * ar->sk + t * ar->ck;
            acc = zero;
            for (k0 = 0; k0 < K16; k0 += RNN_ROW_LANES) {
                if (ng == RNN_ROW_LANES)
                    _Pragma("GCC unroll 16") for (l = 0; l < RNN_ROW_LANES; l++)
                        memcpy(&r[l], kt + l * ar->sk + k0, sizeof(V));
                else
                    RNN_INAME(rows16)(r, kt + k0, ar->sk, ng, RNN_ROW_LANES);
                RNN_INAME(transpose16)(r);
                _Pragma("GCC unroll 16") for (kk = 0; kk < RNN_ROW_LANES; kk++)
                    acc = acc + qt[k0 + kk] * r[kk];    /* (contracted to an FMA where the ISA has one) */
            }
            if (K16 < K) {          /* the last K % 16 */
                RNN_INAME(rows16)(r, kt + K16, ar->sk, ng, K - K16);
                RNN_INAME(transpose16)(r);
                _Pragma("GCC unroll 16") for (kk = 0; kk < RNN_ROW_LANES; kk++)
                    if (K16 + kk < K)
                        acc = acc + qt[K16 + kk] * r[kk];
            }
            memcpy(lane, &acc, sizeof lane);
            for (l = 0; l < ng; l++)
                S[((g0 + l) * M + m) * T + t] = lane[l];
        }
    }
}
#endif

#if defined(RNN_ROWS_YMM)
/* The scores of query row q against NG groups of eight keys (rows[gi][l]: key l of group
 * gi, k contiguous), K steps, into out[gi * 8 + l]: each score rows_product's chain (from
 * zero, one multiply-add per k in order: the same bits). Per eight k, the keys' values
 * transposed in registers: four k of key l and of key l + 4 loaded as one vector (the
 * halves inserted: no store forward), then 4 x 4 transposes within each 128-bit lane
 * (unpack, shuffle; none crosses lanes, which costs a Zen 1 eight micro-ops). The NG
 * groups' chains are independent, so their FMAs overlap (one chain is 8 FMAs of
 * latency per eight k). NG is a constant after inlining. */
RNN_INLINE void RNN_INAME(attend_keys8)(const int NG, long K, const float *q, const float *const (*rows)[8],
                                        float *out)
{
    __m256 acc[4], x[4], u[4], c[4];
    long K8 = K / 8 * 8, k;
    int gi, l, h;
    for (gi = 0; gi < NG; gi++) acc[gi] = _mm256_setzero_ps();
    for (k = 0; k < K8; k += 8)
        for (gi = 0; gi < NG; gi++)
            for (h = 0; h < 8; h += 4) {            /* k + h .. k + h + 3 */
                for (l = 0; l < 4; l++)
                    x[l] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(rows[gi][l] + k + h)),
                                                _mm_loadu_ps(rows[gi][l + 4] + k + h), 1);
                u[0] = _mm256_unpacklo_ps(x[0], x[1]), u[1] = _mm256_unpackhi_ps(x[0], x[1]);
                u[2] = _mm256_unpacklo_ps(x[2], x[3]), u[3] = _mm256_unpackhi_ps(x[2], x[3]);
                c[0] = _mm256_shuffle_ps(u[0], u[2], 0x44), c[1] = _mm256_shuffle_ps(u[0], u[2], 0xEE);
                c[2] = _mm256_shuffle_ps(u[1], u[3], 0x44), c[3] = _mm256_shuffle_ps(u[1], u[3], 0xEE);
                for (l = 0; l < 4; l++)             /* c[l]: the eight keys at k + h + l */
                    acc[gi] = _mm256_fmadd_ps(_mm256_set1_ps(q[k + h + l]), c[l], acc[gi]);
            }
    for (; k < K; k++)                              /* the last K % 8 */
        for (gi = 0; gi < NG; gi++)
            acc[gi] = _mm256_fmadd_ps(_mm256_set1_ps(q[k]),
                                      _mm256_setr_ps(rows[gi][0][k], rows[gi][1][k], rows[gi][2][k], rows[gi][3][k],
                                                     rows[gi][4][k], rows[gi][5][k], rows[gi][6][k], rows[gi][7][k]),
                                      acc[gi]);
    for (gi = 0; gi < NG; gi++) _mm256_storeu_ps(out + 8 * gi, acc[gi]);
}

/* The scores S_g = Q_g Kt_g of batch entry g on AVX2 (float; Kt's k contiguous:
 * attention's k^T, a transposed view of the keys), up to 32 keys at a time
 * (attend_keys8). Lanes past T repeat the group's first key (computed, not stored).
 * rows_product gathered the keys element by element into a panel: a B = 64 decoder
 * step's attention (K 256, T 20; `attend` alone, 1 thread, Zen 1) 319 -> 124-143 us
 * (bench/README.md, "Session 16"). */
static void RNN_INAME(attend_scores8)(const rnn_attend_args *ar, long g)
{
    const float *Q = (const float *)ar->Q + g * ar->sq, *Kt = (const float *)ar->Kt + g * ar->sk;
    const float *rows[4][8];
    float *S = (float *)ar->S + g * ar->M * ar->T, out[32];
    long M = ar->M, K = ar->K, T = ar->T, m, t0, t, nt, i;
    int ng, gi, l;
    for (t0 = 0; t0 < T; t0 += 32) {
        nt = T - t0 < 32 ? T - t0 : 32;
        ng = (int)((nt + 7) / 8);
        for (gi = 0; gi < ng; gi++)
            for (l = 0; l < 8; l++) {
                t = t0 + 8 * gi + l;
                rows[gi][l] = Kt + (t < T ? t : t0 + 8 * gi) * ar->ck;
            }
        for (m = 0; m < M; m++) {
            const float *q = Q + m * ar->ldq;
            switch (ng) {
            case 4: RNN_INAME(attend_keys8)(4, K, q, (const float *const (*)[8])rows, out); break;
            case 3: RNN_INAME(attend_keys8)(3, K, q, (const float *const (*)[8])rows, out); break;
            case 2: RNN_INAME(attend_keys8)(2, K, q, (const float *const (*)[8])rows, out); break;
            default: RNN_INAME(attend_keys8)(1, K, q, (const float *const (*)[8])rows, out); break;
            }
            for (i = 0; i < nt; i++)
                S[m * T + t0 + i] = out[i];
        }
    }
}
#endif

/* The attention of ar (rowops.h: rnn_attend_args) in TYPE: per batch entry g, the
 * scores S_g = Q_g Kt_g (rows_product), each row of S_g softmaxed in place
 * (softmax_row), O_g = S_g V_g (rows_product): the bits of the three ops one after
 * another. On AVX-512 (float, k^T a transposed view, K <= RNN_ATTEND_MAXK) the scores of
 * 16 entries at a time (attend_scores16: the same bits), and O on rows_product_wide:
 * (64, 1, 256) @ (64, 256, 20) -> softmax -> @ (64, 20, 256) 157 -> 91 us alone, 326 ->
 * 130 us within a decoder step (Zen 4, 1 thread, chrt); a block of fewer than
 * RNN_ATTEND_MIN_LANES entries entry by entry. On AVX2 (float, k^T a transposed view)
 * an entry's scores eight keys at a time (attend_scores8: the same bits). The entries
 * (blocks of 16 on AVX-512) split among nth threads at most. */
static void RNN_INAME(attend)(const rnn_attend_args *ar, int nth)
{
    long g;
#if RNN_ROWS_TRANSPOSE
    if (sizeof(TYPE) == 4 && ar->ldk == 1 && ar->K <= RNN_ATTEND_MAXK) {
        long nb = (ar->G + RNN_ROW_LANES - 1) / RNN_ROW_LANES;
        RNN_OMP(parallel for num_threads(nth) schedule(static) if(nth > 1))
        for (g = 0; g < nb; g++) {
            long g0 = g * RNN_ROW_LANES, ng = ar->G - g0 < RNN_ROW_LANES ? ar->G - g0 : RNN_ROW_LANES, e;
            int scores = ng >= RNN_ATTEND_MIN_LANES;
            if (scores)
                RNN_INAME(attend_scores16)(ar, g0, ng);
            for (e = g0; e < g0 + ng; e++)
                RNN_INAME(attend_one)(ar, e, scores);
        }
        return;
    }
#endif
#if defined(RNN_ROWS_YMM)
    if (sizeof(TYPE) == 4 && ar->ldk == 1) {
        RNN_OMP(parallel for num_threads(nth) schedule(static) if(nth > 1))
        for (g = 0; g < ar->G; g++) {
            RNN_INAME(attend_scores8)(ar, g);
            RNN_INAME(attend_one)(ar, g, 1);
        }
        return;
    }
#endif
    RNN_OMP(parallel for num_threads(nth) schedule(static) if(nth > 1))
    for (g = 0; g < ar->G; g++)
        RNN_INAME(attend_one)(ar, g, 0);
}

/* Rows of a panel (k) that a streamed product (rnn_packed_args.stream) prefetches ahead
 * of the one it reads: 16 rows of 64 floats, 4 KB (Zen 1: a B=1 decoder step's GRU,
 * attention and Linear + tanh read their weights from L3 again, 235 -> 115-135 us,
 * with the 8 MB head's time unchanged; bench/README.md, session 17). */
#define RNN_STREAM_AHEAD 16

/* Prefetch, non-temporally, row RNN_STREAM_AHEAD panel rows after b (a panel row's
 * lines; past the panel's end the next panel's, or nothing: a prefetch does not fault). */
RNN_INLINE void RNN_INAME(stream_ahead)(const TYPE *b)
{
    const char *p = (const char *)(b + RNN_STREAM_AHEAD * RNN_PANEL_COLS);
    size_t o;
    for (o = 0; o < RNN_PANEL_COLS * sizeof(TYPE); o += 64)
        RNN_ROWS_PREFETCH_NTA(p + o);
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
    const int stream = pa->stream && pa->M == 1;
    _Static_assert(RNN_PANEL_COLS == 4 * RNN_ROW_LANES, "packed_task: a panel is four vectors of lanes");
    for (p = task * pa->per; p < p1; p++) {
        const TYPE *bp = Bp + p * K * RNN_PANEL_COLS;
        long j0 = p * RNN_PANEL_COLS, nc = pa->N - j0 < RNN_PANEL_COLS ? pa->N - j0 : RNN_PANEL_COLS;
        for (i = 0; i < pa->M; i++) {
            const TYPE *a = A + i * pa->lda;
            TYPE acc[RNN_PANEL_COLS];
#if RNN_ROWS_VECTOR && defined(RNN_ROWS_YMM)
            /* the panel's sums as 256-bit vectors: GCC splits a wider vector through
             * memory on AVX2 (the four vectors of lanes below ran a (1, 256) @ (256, 8000)
             * head at 2.9 GB/s, 3x slower than the packed product, on a Zen 1) */
            RNN_INAME(ymm) y[RNN_YMM_VECS];
            int q;
#elif RNN_ROWS_VECTOR
            /* the panel's sums as four vectors of lanes, each its own local: as one
             * vector of 64 they went through memory at every k (2x slower) */
            RNN_INAME(lanes) v0, v1, v2, v3;
#endif
            for (j = 0; j < RNN_PANEL_COLS; j++)
                acc[j] = bias && j < nc ? bias[j0 + j] : (TYPE)0;
#if RNN_ROWS_VECTOR && defined(RNN_ROWS_YMM)
            memcpy(y, acc, sizeof y);
            for (k = 0; k < K; k++) {
                const TYPE *b = bp + k * RNN_PANEL_COLS;
                TYPE av = a[k];
                if (stream)
                    RNN_INAME(stream_ahead)(b);
#pragma GCC unroll 16
                for (q = 0; q < RNN_YMM_VECS; q++) {
                    RNN_INAME(ymm) bq;
                    memcpy(&bq, b + q * RNN_YMM_LANES, sizeof bq);
                    y[q] = y[q] + av * bq;              /* (contracted to FMAs) */
                }
            }
            memcpy(acc, y, sizeof y);
#elif RNN_ROWS_VECTOR
            memcpy(&v0, acc, sizeof v0);
            memcpy(&v1, acc + RNN_ROW_LANES, sizeof v1);
            memcpy(&v2, acc + 2 * RNN_ROW_LANES, sizeof v2);
            memcpy(&v3, acc + 3 * RNN_ROW_LANES, sizeof v3);
            for (k = 0; k < K; k++) {
                RNN_INAME(lanes) b0, b1, b2, b3;
                const TYPE *b = bp + k * RNN_PANEL_COLS;
                TYPE av = a[k];
                if (stream)
                    RNN_INAME(stream_ahead)(b);
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
            for (k = 0; k < K; k++) {
                if (stream)
                    RNN_INAME(stream_ahead)(bp + k * RNN_PANEL_COLS);
                for (j = 0; j < RNN_PANEL_COLS; j++)
                    acc[j] = RNN_INAME(madd)(a[k], bp[k * RNN_PANEL_COLS + j], acc[j]);
            }
#endif
            memcpy(C + i * pa->ldc + j0, acc, (size_t)nc * sizeof(TYPE));
        }
    }
    if (pa->softmax) {          /* the blocks of the task's columns (per: whole blocks) */
        TYPE *mb = (TYPE *)pa->stats, *sb = mb + pa->M * pa->nblk;
        long b, b0 = task * pa->per * RNN_PANEL_COLS / RNN_SOFTMAX_BLOCK;
        long b1 = (p1 * RNN_PANEL_COLS + RNN_SOFTMAX_BLOCK - 1) / RNN_SOFTMAX_BLOCK;
        b1 = b1 < pa->nblk ? b1 : pa->nblk;
        for (i = 0; i < pa->M; i++)
            for (b = b0; b < b1; b++) {
                long c0 = b * RNN_SOFTMAX_BLOCK, nc = pa->N - c0 < RNN_SOFTMAX_BLOCK ? pa->N - c0 : RNN_SOFTMAX_BLOCK;
                TYPE *c = C + i * pa->ldc + c0;
                RNN_INAME(softmax_block)(c, c, nc, pa->softmax == 2, mb + i * pa->nblk + b, sb + i * pa->nblk + b);
            }
    }
}

/* Tasks of a few-row packed product at most (rowops.team.h: claimed one at a time). */
#ifndef RNN_PACKED_TASKS
#define RNN_PACKED_TASKS 16
#endif

/* The product of pa (its per, npan, nblk and stats set here), on the caller and, nth >
 * 1, the partner thread of rowops.team.h; pa->softmax: then each row's (log-)softmax,
 * its blocks' phase in the tasks (a task's panels whole blocks of columns), their
 * combination and the finish on the caller. */
static void RNN_INAME(packed_few)(rnn_packed_args *pa, int nth)
{
    TYPE stack[2 * 4 * RNN_SOFTMAX_STACK];
    long ntask, i, b, unit = 1;
    pa->npan = (pa->N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    pa->nblk = (pa->N + RNN_SOFTMAX_BLOCK - 1) / RNN_SOFTMAX_BLOCK;
    pa->stats = stack;
    if (pa->softmax) {
        _Static_assert(RNN_SOFTMAX_BLOCK % RNN_PANEL_COLS == 0, "packed_few: a softmax block is whole panels");
        unit = RNN_SOFTMAX_BLOCK / RNN_PANEL_COLS;
        if (pa->M * pa->nblk > 4 * RNN_SOFTMAX_STACK
            && !(pa->stats = malloc(2 * (size_t)(pa->M * pa->nblk) * sizeof(TYPE)))) {
            int take_log = pa->softmax == 2;
            pa->softmax = 0;        /* (no memory for the blocks' sums: the product, then the row kernel) */
            RNN_INAME(packed_few)(pa, nth);
            RNN_INAME(softmax_rows)((TYPE *)pa->C, pa->ldc, (TYPE *)pa->C, pa->ldc, pa->M, pa->N, take_log, 1);
            return;
        }
    }
    /* tasks of per panels, a multiple of unit (a softmax block) */
    ntask = (pa->npan + unit - 1) / unit;
    ntask = nth > 1 ? (ntask < RNN_PACKED_TASKS ? ntask : RNN_PACKED_TASKS) : 1;
    pa->per = ((pa->npan + unit - 1) / unit + ntask - 1) / ntask * unit;
    ntask = (pa->npan + pa->per - 1) / pa->per;
    rnn_duo_run(RNN_INAME(packed_task), pa, ntask, nth);
    if (pa->softmax) {
        TYPE *mb = (TYPE *)pa->stats, *sb = mb + pa->M * pa->nblk, m;
        for (i = 0; i < pa->M; i++) {
            TYPE *c = (TYPE *)pa->C + i * pa->ldc;
            m = RNN_INAME(softmax_combine)(mb + i * pa->nblk, sb + i * pa->nblk, pa->nblk, pa->softmax == 2);
            for (b = 0; b < pa->nblk; b++) {
                long c0 = b * RNN_SOFTMAX_BLOCK, nc = pa->N - c0 < RNN_SOFTMAX_BLOCK ? pa->N - c0 : RNN_SOFTMAX_BLOCK;
                RNN_INAME(softmax_finish)(c + c0, c + c0, nc, pa->softmax == 2, m, sb[i * pa->nblk + b]);
            }
        }
        if (pa->stats != stack)
            free(pa->stats);
    }
}
