/*
 * cellmath.template.h -- the fused element-wise gate math of one time step, written
 * once for every type and instruction set (no include guard: included once per
 * instantiation; see template.h).
 *
 * Parameters, defined by the includer:
 *   TYPE           float or double
 *   ISA_SUFFIX     the instruction set's name suffix (baseline, avx2, avx512, ...)
 *   CELLMATH_FAST  1 when the includer provides, for this TYPE and ISA, the fast paths
 *                  RNN_INAME(vtanh), RNN_INAME(vsigmoid) (return the elements done),
 *                  RNN_INAME(fused_gru), RNN_INAME(fused_lstm) (return 1 when they did
 *                  the whole step): see x86/avx512_cellmath.h; 0 otherwise.
 * Needs mathfun.h, enums.h, kernels.h (the argument struct) and blas.h (the products of
 * the cells that make their own).
 *
 * Design: the products of a time step are done by the caller (engine.template.h);
 * everything element-wise that follows them -- adding the input projection, the gate
 * activations, the state update and the masked carry-over -- happens here, one row
 * (batch element) at a time, in loops the compiler vectorizes. Row pointers carry
 * explicit leading dimensions (ld*), so a bidirectional state can be updated in
 * place in its half of a buffer. `valid` is NULL (every row steps) or one byte per
 * row: 0 means a masked step for that row: its state is carried over unchanged.
 *
 * A cell is (input, hidden, params) -> hidden: each function below is one cell's
 * step, named in the cell list (cells.def.h), taking the one argument struct
 * RNN_TNAME(cell_args) (kernels.template.h); the loop over time is the engine's.
 * `a->clip` > 0 clips every gate pre-activation to [-clip, clip] before its activation
 * (ONNX `clip`); the fused fast paths run only without it.
 *
 * Rows (b) and vector lengths (act's n) are long. The loops over a row's units (j)
 * count in int: H units come with G*H*H recurrent weights, far below 2**31 units, and
 * the vectorized int loops are the ones whose code (down to which operand a NaN is
 * taken from) bench/check_bitwise.py pins.
 */

/* v[0:n] = act(v[0:n]) in place. */
RNN_INLINE void RNN_INAME(act)(int kind, TYPE *v, long n)
{
    long j = 0;
    switch (kind) {
    case RNN_ACT_TANH:
#if CELLMATH_FAST
        j = RNN_INAME(vtanh)(v, n);
#endif
        for (; j < n; j++) v[j] = RNN_TNAME(tanh)(v[j]);
        break;
    case RNN_ACT_SIGMOID:
#if CELLMATH_FAST
        j = RNN_INAME(vsigmoid)(v, n);
#endif
        for (; j < n; j++) v[j] = RNN_TNAME(sigmoid)(v[j]);
        break;
    case RNN_ACT_HARD_SIGMOID:
        for (j = 0; j < n; j++) {
            TYPE a = v[j] + (TYPE)3;
            a = a < (TYPE)0 ? (TYPE)0 : a;
            a = a > (TYPE)6 ? (TYPE)6 : a;
            v[j] = a / (TYPE)6;
        }
        break;
    case RNN_ACT_HARD_SIGMOID_KERAS2:
        for (j = 0; j < n; j++) {
            TYPE a = (TYPE)0.2 * v[j] + (TYPE)0.5;
            a = a < (TYPE)0 ? (TYPE)0 : a;
            v[j] = a > (TYPE)1 ? (TYPE)1 : a;
        }
        break;
    case RNN_ACT_RELU:
        for (j = 0; j < n; j++) v[j] = v[j] < (TYPE)0 ? (TYPE)0 : v[j];
        break;
    case RNN_ACT_SOFTSIGN:
        for (j = 0; j < n; j++) v[j] = v[j] / ((TYPE)1 + (v[j] < (TYPE)0 ? -v[j] : v[j]));
        break;
    case RNN_ACT_SOFTPLUS:
        for (j = 0; j < n; j++)
            v[j] = v[j] > (TYPE)20 ? v[j] : RNN_TNAME(log1p)(RNN_TNAME(libm_exp)(v[j]));
        break;
    case RNN_ACT_ELU:
        for (j = 0; j < n; j++) v[j] = v[j] > (TYPE)0 ? v[j] : RNN_TNAME(expm1)(v[j]);
        break;
    case RNN_ACT_SELU:
        for (j = 0; j < n; j++)
            v[j] = (TYPE)1.0507009873554804934193349852946 *
                   (v[j] > (TYPE)0 ? v[j] : (TYPE)1.6732632423543772848170429916717 * RNN_TNAME(expm1)(v[j]));
        break;
    case RNN_ACT_EXPONENTIAL:
        for (j = 0; j < n; j++) v[j] = RNN_TNAME(libm_exp)(v[j]);
        break;
    default: /* RNN_ACT_LINEAR */
        break;
    }
}

/* v[0:n] = min(max(v[0:n], -clip), clip): ONNX's cell clip, before an activation. */
RNN_INLINE void RNN_INAME(clip)(TYPE clip, TYPE *v, long n)
{
    long j;
    for (j = 0; j < n; j++) {
        TYPE a = v[j] < -clip ? -clip : v[j];
        v[j] = a > clip ? clip : a;
    }
}

/* clip (when > 0), then act, in place. */
RNN_INLINE void RNN_INAME(clip_act)(TYPE clip, int kind, TYPE *v, long n)
{
    if (clip > (TYPE)0)
        RNN_INAME(clip)(clip, v, n);
    RNN_INAME(act)(kind, v, n);
}

/* The activation exactly as the kernels apply it (also the test hook). */
static void RNN_INAME(activate)(int kind, TYPE *v, long n) { RNN_INAME(act)(kind, v, n); }

/* GRU, reset-after (PyTorch; Keras reset_after=True), one step for nrows rows:
 *   (1) z = ract(xp_z + gh_z)            (2) r = ract(xp_r + gh_r)
 *   (3) n = act(xp_h + r * (gh_h + bhn))  (4) h = z * h + (1 - z) * n
 * xp already holds x W + b (all gates) and the z, r parts of the recurrent bias;
 * gh = h_prev U; bhn is the candidate's recurrent bias. tmp: 3H scratch. */
static void RNN_INAME(gru_ra)(const RNN_TNAME(cell_args) *a)
{
    long b, nrows = a->nrows, H = a->H;
    int j;
    const TYPE *bhn = a->bhn;
    TYPE *tmp = a->tmp;
#if CELLMATH_FAST
    if (a->ract == RNN_ACT_SIGMOID && a->act == RNN_ACT_TANH && a->clip == (TYPE)0
        && RNN_INAME(fused_gru)(nrows, H, a->xp, a->ldxp, a->gh, a->ldgh, bhn, a->h, a->ldh,
                                a->valid))
        return;
#endif
    for (b = 0; b < nrows; b++) {
        if (a->valid && !a->valid[b]) continue;
        const TYPE *x = a->xp + b * a->ldxp, *g = a->gh + b * a->ldgh;
        TYPE *hb = a->h + b * a->ldh, *n = tmp + 2 * H;
        for (j = 0; j < 2 * H; j++) tmp[j] = x[j] + g[j];
        RNN_INAME(clip_act)(a->clip, a->ract, tmp, 2 * H);
        for (j = 0; j < H; j++) n[j] = x[2 * H + j] + tmp[H + j] * (g[2 * H + j] + bhn[j]);
        RNN_INAME(clip_act)(a->clip, a->act, n, H);
        for (j = 0; j < H; j++) hb[j] = tmp[j] * hb[j] + ((TYPE)1 - tmp[j]) * n[j];
    }
}

/* GRU, reset-before (Keras reset_after=False; Cho et al. 2014), one step for nrows rows
 * of the whole layer (gate-major columns), making its own products by BLAS:
 *   (1) gzr = h_prev U_zr  (2) z = ract(xp_z + gzr_z)  (3) r = ract(xp_r + gzr_r)
 *   (4) ghh = (r * h_prev) U_h   (5) n = act(xp_h + ghh)   (6) h = z * h + (1 - z) * n.
 * Masked rows get r * h = 0 (their product is computed but never used). work: nrows *
 * 4H (zr: 2H, rh: H, ghh: H per row); tmp: H. */
static void RNN_INAME(gru_rb)(const RNN_TNAME(cell_args) *a)
{
    long b, nrows = a->nrows, H = a->H;
    int j;
    TYPE *zr = a->work, *rh = zr + nrows * 2 * H, *g2 = rh + nrows * H, *tmp = a->tmp;
    /* gzr into zr, then the gates in place */
    RNN_TNAME(gemm_rm)((int)nrows, (int)(2 * H), (int)H, 1, a->h, (int)a->ldh, a->U, (int)a->ldu, 0,
                       zr, (int)(2 * H));
    for (b = 0; b < nrows; b++) {
        TYPE *z = zr + b * 2 * H, *o = rh + b * H;
        if (a->valid && !a->valid[b]) {
            for (j = 0; j < H; j++) o[j] = (TYPE)0;
            continue;
        }
        const TYPE *x = a->xp + b * a->ldxp, *hb = a->h + b * a->ldh;
        for (j = 0; j < 2 * H; j++) z[j] = x[j] + z[j];
        RNN_INAME(clip_act)(a->clip, a->ract, z, 2 * H);
        for (j = 0; j < H; j++) o[j] = z[H + j] * hb[j];
    }
    RNN_TNAME(gemm_rm)((int)nrows, (int)H, (int)H, 1, rh, (int)H, a->U + 2 * H, (int)a->ldu, 0, g2,
                       (int)H);
    for (b = 0; b < nrows; b++) {
        if (a->valid && !a->valid[b]) continue;
        const TYPE *x = a->xp + b * a->ldxp + 2 * H, *g = g2 + b * H, *z = zr + b * 2 * H;
        TYPE *hb = a->h + b * a->ldh;
        for (j = 0; j < H; j++) tmp[j] = x[j] + g[j];
        RNN_INAME(clip_act)(a->clip, a->act, tmp, H);
        for (j = 0; j < H; j++) hb[j] = z[j] * hb[j] + ((TYPE)1 - z[j]) * tmp[j];
    }
}

/* LSTM, one step:  g = xp + gh  (gates i, f, c, o)
 *   (1) i = ract(g_i) (2) f = ract(g_f) (3) o = ract(g_o) (4) u = act(g_c)
 *   (5) c = f * c + i * u   (6) m = o * act(c)
 * m is written to `h` (the hidden state itself, or the input of the projection
 * h = m W_hr done by the caller). tmp: 4H scratch. */
static void RNN_INAME(lstm)(const RNN_TNAME(cell_args) *a)
{
    long b, nrows = a->nrows, H = a->H;
    int j;
    TYPE *tmp = a->tmp;
#if CELLMATH_FAST
    if (a->ract == RNN_ACT_SIGMOID && a->act == RNN_ACT_TANH && a->clip == (TYPE)0
        && RNN_INAME(fused_lstm)(nrows, H, a->xp, a->ldxp, a->gh, a->ldgh, a->c, a->ldc, a->h,
                                 a->ldh, a->valid))
        return;
#endif
    for (b = 0; b < nrows; b++) {
        if (a->valid && !a->valid[b]) continue;
        const TYPE *x = a->xp + b * a->ldxp, *g = a->gh + b * a->ldgh;
        TYPE *cb = a->c + b * a->ldc, *mb = a->h + b * a->ldh;
        TYPE *gi = tmp, *gf = tmp + H, *gc = tmp + 2 * H, *go = tmp + 3 * H;
        for (j = 0; j < 4 * H; j++) tmp[j] = x[j] + g[j];
        RNN_INAME(clip_act)(a->clip, a->ract, gi, 2 * H);
        RNN_INAME(clip_act)(a->clip, a->ract, go, H);
        RNN_INAME(clip_act)(a->clip, a->act, gc, H);
        for (j = 0; j < H; j++) cb[j] = gf[j] * cb[j] + gi[j] * gc[j];
        for (j = 0; j < H; j++) gc[j] = cb[j];
        RNN_INAME(act)(a->act, gc, H);
        for (j = 0; j < H; j++) mb[j] = go[j] * gc[j];
    }
}

/* SimpleRNN, one step: (1) h = act(xp + gh). */
static void RNN_INAME(simple)(const RNN_TNAME(cell_args) *a)
{
    long b, nrows = a->nrows, H = a->H;
    int j;
    for (b = 0; b < nrows; b++) {
        if (a->valid && !a->valid[b]) continue;
        const TYPE *x = a->xp + b * a->ldxp, *g = a->gh + b * a->ldgh;
        TYPE *hb = a->h + b * a->ldh;
        for (j = 0; j < H; j++) hb[j] = x[j] + g[j];
        RNN_INAME(clip_act)(a->clip, a->act, hb, H);
    }
}

/* LSTM as ONNX has it: peepholes, the coupled input and forget gates, and (like every
 * cell here) the cell clip. One step, g = xp + gh (gates i, f, c, o), c_prev the old c:
 *   (1) i = ract(clip(g_i + p_i * c_prev))
 *   (2) f = 1 - i with input_forget, else ract(clip(g_f + p_f * c_prev))
 *   (3) u = act(clip(g_c))      (4) c = f * c_prev + i * u
 *   (5) o = ract(clip(g_o + p_o * c))   (the new c)   (6) m = o * act(c)
 * p = a->peep: (3, H) rows i, f, o, ldpeep apart; NULL: no peepholes. m is written to
 * `h` as in rnn_lstm. tmp: 4H scratch. */
static void RNN_INAME(lstm_peep)(const RNN_TNAME(cell_args) *a)
{
    long b, nrows = a->nrows, H = a->H;
    int j;
    TYPE *tmp = a->tmp;
    const TYPE *pi = a->peep;
    const TYPE *pf = pi != NULL ? pi + a->ldpeep : NULL, *po = pi != NULL ? pi + 2 * a->ldpeep : NULL;
    for (b = 0; b < nrows; b++) {
        if (a->valid && !a->valid[b]) continue;
        const TYPE *x = a->xp + b * a->ldxp, *g = a->gh + b * a->ldgh;
        TYPE *cb = a->c + b * a->ldc, *mb = a->h + b * a->ldh;
        TYPE *gi = tmp, *gf = tmp + H, *gc = tmp + 2 * H, *go = tmp + 3 * H;
        for (j = 0; j < 4 * H; j++) tmp[j] = x[j] + g[j];
        if (a->peep != NULL)
            for (j = 0; j < H; j++) gi[j] += pi[j] * cb[j];
        RNN_INAME(clip_act)(a->clip, a->ract, gi, H);
        if (a->input_forget) {
            for (j = 0; j < H; j++) gf[j] = (TYPE)1 - gi[j];
        } else {
            if (a->peep != NULL)
                for (j = 0; j < H; j++) gf[j] += pf[j] * cb[j];
            RNN_INAME(clip_act)(a->clip, a->ract, gf, H);
        }
        RNN_INAME(clip_act)(a->clip, a->act, gc, H);
        for (j = 0; j < H; j++) cb[j] = gf[j] * cb[j] + gi[j] * gc[j];
        if (a->peep != NULL)
            for (j = 0; j < H; j++) go[j] += po[j] * cb[j];
        RNN_INAME(clip_act)(a->clip, a->ract, go, H);
        for (j = 0; j < H; j++) gc[j] = cb[j];
        RNN_INAME(act)(a->act, gc, H);
        for (j = 0; j < H; j++) mb[j] = go[j] * gc[j];
    }
}
