/*
 * engine.template.h -- the two execution strategies of one layer call, for one TYPE
 * (no include guard: instantiated by engine.h, which describes them; see template.h).
 *
 * Defines RNN_TNAME(layer_forward): rnn_layer_forward_f and _d. The kernels are called
 * through the dispatcher (isa.h): RNN_TNAME(gemm_packed), RNN_TNAME(gru_ra), ...
 */

/* One call, typed: the caller's shape and plan, the derived sizes and every pointer
 * as TYPE. Read-only once built; shared by the whole team. */
typedef struct {
    rnn_shape s;
    rnn_plan p;
    long GH;                    /* gate columns: G * H */
    long ldo;                   /* the output's row stride: ndir * Ho */
    long nchunks;               /* chunks of p.chunk steps */
    long lwp, lup;              /* values per direction of the packed W and U */
    const TYPE *x, *W, *Wp, *bx, *U, *Up, *bhn, *Wr, *peep;
    const rnn_qweights *q;      /* reduced-precision weights (quant.h), or NULL */
    long serial;                /* the call's rnn_qrows_serial (quant.h: named rows) */
    const unsigned char *mask;
    const long *active;         /* io->active where the cell can use it, else NULL */
    const long *rows;           /* io->rows (with active; not on reduced-precision W), else NULL */
    int xcaller;                /* with rows, a BLAS projection: made in the caller's row order
                                 * as without right padding (BLAS's sums depend on a row's place
                                 * in the call), its live rows gathered per step (xp_live) */
    TYPE *out, *h, *c;
} RNN_TNAME(call);

/* C (M x N) = bias + A (M x K) times the block of the reduced-precision matrix m that
 * starts off elements into direction d's packed data, at column col0 (quant.h). Only
 * float layers carry reduced-precision weights (the casts never run for double). */
static inline void RNN_TNAME(qproduct)(const rnn_qweights *q, const rnn_qmat *m, long d, long off,
                                       long col0, long M, long N, long K, const TYPE *A, long lda,
                                       const TYPE *bias, TYPE *C, long ldc)
{
    rnn_qgemm(q->prec, m, d, off, col0, M, N, K, (const float *)A, lda, (const float *)bias,
              (float *)C, ldc);
}

/* Of the nb rows from b0, those that step at time t: all of them, or with right
 * padding (c->active) the ones before the first row that has ended. */
static inline long RNN_TNAME(live_rows)(const RNN_TNAME(call) *c, long t, long b0, long nb)
{
    long n;
    if (c->active == NULL)
        return nb;
    n = c->active[t] - b0;
    return n < 0 ? 0 : (n > nb ? nb : n);
}

/* The row of x and out of sorted row b at step t: c->rows maps it back to the
 * caller's order. */
static inline long RNN_TNAME(io_row)(const RNN_TNAME(call) *c, long t, long b)
{
    return rnn_row(t, c->rows != NULL ? c->rows[b] : b, c->s.T, c->s.B, c->s.bfirst);
}

/* Of the nb rows from b0, those whose next state buffer (the blocked strategy's double
 * buffer) takes a write at step st (time t): every row without right padding; with it,
 * the rows that step and those that stepped at the step before. A row that has ended
 * is copied once, in the step after its last: then both buffers hold its final state
 * and nothing needs to touch it again (at the first step, every row: the second buffer
 * starts empty). A direction running backward only gains rows. */
static inline long RNN_TNAME(carried_rows)(const RNN_TNAME(call) *c, long st, long t, int rev,
                                           long b0, long nb)
{
    long na, np;
    if (c->active == NULL || st == 0)
        return nb;
    na = RNN_TNAME(live_rows)(c, t, b0, nb);
    np = RNN_TNAME(live_rows)(c, rev ? t + 1 : t - 1, b0, nb);
    return na > np ? na : np;
}

/* Right padding (c->active): the outputs of the steps where a row does not step are
 * written once after the run, not at each step. After its last step (before its first
 * for a direction running backward, which meets its padding first) a row outputs
 * zeros where zero_output, for a backward direction or for a row of no steps -- the
 * zeros out came with (engine.h: with active, out comes zero-filled) -- else its final
 * state (its last output: Keras without zero_output_for_mask), written here. c->h
 * holds the final states; rows are sorted longest first, so a row's length is the
 * number of steps whose active count exceeds it. */
static void RNN_TNAME(emit_ended)(const RNN_TNAME(call) *c)
{
    const rnn_shape *s = &c->s;
    long T = s->T, B = s->B, Ho = s->Ho, r, t, len = 0;
    if (s->zero_output || s->reverse_first)     /* direction 1 runs backward too */
        return;
    for (r = B - 1; r >= 0; r--) {
        while (len < T && c->active[len] > r)
            len++;
        for (t = len; t < T && len > 0; t++)
            memcpy(c->out + RNN_TNAME(io_row)(c, t, r) * c->ldo, c->h + r * Ho,
                   (size_t)Ho * sizeof(TYPE));
    }
}

static void RNN_TNAME(project_rows)(long n, long In, const TYPE *x, long ldx, const TYPE *W,
                                    long ldw, const TYPE *Wp, const TYPE *bx, long N, TYPE *xp,
                                    long ldxp, const rnn_qweights *q, long d, long cb, long j0,
                                    long H, long G, long ncb);

/* xp[0:live] = the projection of the live rows of step t from sorted row b, on the
 * packed W block wpb (N columns) -- or on the reduced-precision weights' block of
 * direction d, unit block cb from unit u0 -- in one product when the rows lie in
 * order, else gathered into gx (live x In) first (already there when gathered), or
 * one by one without it. Each row of the packed product is the same whatever the
 * rows around it. */
static void RNN_TNAME(project_live)(const RNN_TNAME(call) *c, long t, long b, long live,
                                    const TYPE *W, long ldw, const TYPE *wpb, const TYPE *bx,
                                    long N, TYPE *xp, long ldxp, TYPE *gx, int gathered, long d,
                                    long cb, long u0)
{
    const rnn_shape *s = &c->s;
    long i, In = s->In, H = s->H, G = s->G, ncb = c->p.ncb;
    if (c->rows == NULL || c->xcaller) {    /* rows in the caller's order */
        RNN_TNAME(project_rows)(live, In, c->x + rnn_row(t, b, s->T, s->B, s->bfirst) * In,
                                s->bfirst ? s->T * In : In, W, ldw, wpb, bx, N, xp, ldxp, c->q, d,
                                cb, u0, H, G, ncb);
        return;
    }
    if (gx == NULL) {
        for (i = 0; i < live; i++)
            RNN_TNAME(project_rows)(1, In, c->x + RNN_TNAME(io_row)(c, t, b + i) * In, In, W, ldw,
                                    wpb, bx, N, xp + i * ldxp, ldxp, c->q, d, cb, u0, H, G, ncb);
        return;
    }
    for (i = 0; i < live && !gathered; i++)
        memcpy(gx + i * In, c->x + RNN_TNAME(io_row)(c, t, b + i) * In, (size_t)In * sizeof(TYPE));
    RNN_TNAME(project_rows)(live, In, gx, In, W, ldw, wpb, bx, N, xp, ldxp, c->q, d, cb, u0, H, G,
                            ncb);
}

/* c->xcaller: the chunk projection xs of step t (rows in the caller's order, row
 * stride GH) of the n sorted rows from b0, columns j..j+N-1, gathered into dst (row
 * stride N). */
static inline void RNN_TNAME(xp_live)(const RNN_TNAME(call) *c, const TYPE *xs, long b0, long n,
                                      long j, long N, TYPE *dst)
{
    long r;
    for (r = 0; r < n; r++)
        memcpy(dst + r * N, xs + c->rows[b0 + r] * c->GH + j, (size_t)N * sizeof(TYPE));
}

/* Write step t's outputs of nrows sorted rows from b0 (n values each, from h) into
 * `out` (the direction's and block's first column), each row to its caller's row. */
static inline void RNN_TNAME(emit_rows)(const RNN_TNAME(call) *c, long t, long b0, long nrows, long n,
                                        const TYPE *h, long ldh, TYPE *out,
                                        const unsigned char *valid, unsigned char *seen)
{
    const rnn_shape *s = &c->s;
    long r, ld = c->ldo * (s->bfirst ? s->T : 1);
    if (c->rows == NULL) {
        RNN_TNAME(emit)(nrows, n, h, ldh, out + RNN_TNAME(io_row)(c, t, b0) * c->ldo, ld, valid, seen,
                        s->zero_output);
        return;
    }
    for (r = 0; r < nrows; r++)
        RNN_TNAME(emit)(1, n, h + r * ldh, ldh, out + RNN_TNAME(io_row)(c, t, b0 + r) * c->ldo, ld,
                        valid != NULL ? valid + r : NULL, seen + r, s->zero_output);
}

/* xp[0:n, 0:N] = x[0:n] @ W[:, 0:N] + bx[0:N] for n input rows ldx apart, on the packed
 * W when there is one (Wp: these N columns packed), else by BLAS (W, row stride ldw);
 * with reduced-precision weights q, on their block of direction d at q's unit block cb
 * (columns from j0, G gates per unit, H units in ncb blocks). */
static void RNN_TNAME(project_rows)(long n, long In, const TYPE *x, long ldx, const TYPE *W,
                                    long ldw, const TYPE *Wp, const TYPE *bx, long N, TYPE *xp,
                                    long ldxp, const rnn_qweights *q, long d, long cb, long j0,
                                    long H, long G, long ncb)
{
    long r;
    if (q != NULL && q->W.data != NULL) {
        RNN_TNAME(qproduct)(q, &q->W, d, rnn_packed_offset(rnn_qpad(q->prec, In), H, G, ncb, cb),
                            G * j0, n, N, In, x, ldx, bx, xp, ldxp);
        return;
    }
    if (Wp != NULL) {
        RNN_TNAME(gemm_packed)(n, N, In, x, ldx, Wp, bx, xp, ldxp);
        return;
    }
    for (r = 0; r < n; r++)
        memcpy(xp + r * ldxp, bx, (size_t)N * sizeof(TYPE));
    RNN_TNAME(gemm_rm)((int)n, (int)N, (int)In, (TYPE)1, x, (int)ldx, W, (int)ldw, (TYPE)1, xp,
                       (int)ldxp);
}

/* The gate math of one step of cell c->s.cell for nb rows of direction d: the unit
 * block of hb units from unit j0 (the whole layer for the cells that make their own
 * products: then U is the direction's recurrent weights and work its scratch). Gates
 * of the block are contiguous: [g0(hb), g1(hb), ...]. */
static inline void RNN_TNAME(cell_block)(const RNN_TNAME(call) *c, long d, long j0, long nb, long hb,
                                         const TYPE *xr, long ldxp,  /* IN  the block's projection */
                                         const TYPE *gh, long ldgh,  /* IN  the block's h U, or NULL */
                                         const TYPE *U,              /* IN  or the recurrent weights */
                                         TYPE *h, long ldh,          /* IN/OUT the block's state */
                                         TYPE *cs, long ldc,         /* IN/OUT LSTM cell state */
                                         const unsigned char *valid, TYPE *tmp, TYPE *work)
{
    const rnn_shape *s = &c->s;
    RNN_TNAME(cell_args) a;
    a.nrows = nb;
    a.H = hb;
    a.xp = xr;
    a.ldxp = ldxp;
    a.gh = gh;
    a.ldgh = ldgh;
    a.bhn = c->bhn + d * s->H + j0;
    a.peep = c->peep != NULL ? c->peep + d * 3 * s->H + j0 : NULL;
    a.ldpeep = s->H;
    a.U = U;
    a.ldu = c->GH;
    a.h = h;
    a.ldh = ldh;
    a.c = cs;
    a.ldc = ldc;
    a.valid = valid;
    a.tmp = tmp;
    a.work = work;
    a.q = c->q;                 /* a cell making its own products reads these when set */
    a.qdir = d;
    a.clip = (TYPE)s->clip;
    a.act = s->act;
    a.ract = s->ract;
    a.input_forget = s->input_forget;
    RNN_TNAME(cell_step)(s->cell, &a);
}

/* ==== the item strategy: (direction, batch block) work items, no per-step barrier ==== */

/* Rows r0..r1-1 of direction d's chunk projection (steps from tlo), every column:
 * xp[r] = x(t, b) @ W + bx for r = (t - tlo) * B + b, unit block by unit block (the
 * packed W is packed so). Time-major rows are contiguous; batch-major ones are taken
 * one time step at a time (the batch rows of a step are T rows apart). */
static void RNN_TNAME(item_project)(const RNN_TNAME(call) *c, long d, long tlo, long r0, long r1,
                                    TYPE *xp)
{
    const rnn_shape *s = &c->s;
    long In = s->In, T = s->T, B = s->B, H = s->H, G = s->G, GH = c->GH, ncb = c->p.ncb;
    const TYPE *W = c->W + d * In * GH, *bx = c->bx + d * GH;
    const TYPE *Wp = c->Wp != NULL ? c->Wp + d * c->lwp : NULL;
    long r, t, b, n, cb, j0, nc;
    double t0 = rnn_tick();
    /* rows to gather (sorted rows read in the caller's order); NULL: one at a time */
    TYPE *gx = c->rows != NULL && !c->xcaller ? (TYPE *)malloc((size_t)(B * In) * sizeof(TYPE))
                                              : NULL;
    for (cb = 0; cb < ncb; cb++) {
        const TYPE *wpb = Wp != NULL ? Wp + rnn_packed_offset(In, H, G, ncb, cb) : NULL;
        j0 = G * rnn_block_start(H, ncb, cb);
        nc = G * rnn_block_start(H, ncb, cb + 1) - j0;
        if (c->active != NULL && (wpb != NULL || (c->q != NULL && c->q->W.data != NULL))) {
            /* right padding: only the rows that step, one time step at a time (each row
             * of the packed product is the same whatever the rows around it) */
            for (r = r0; r < r1; r += n) {
                t = tlo + r / B;
                b = r % B;
                n = B - b < r1 - r ? B - b : r1 - r;
                long live = RNN_TNAME(live_rows)(c, t, b, n);
                if (live > 0)
                    RNN_TNAME(project_live)(c, t, b, live, W + j0, GH, wpb, bx + j0, nc,
                                            xp + r * GH + j0, GH, gx, 0, d, cb,
                                            rnn_block_start(H, ncb, cb));
            }
            continue;
        }
        if (!s->bfirst || B == 1) {
            RNN_TNAME(project_rows)(r1 - r0, In, c->x + (tlo * B + r0) * In, In, W + j0, GH, wpb,
                                    bx + j0, nc, xp + r0 * GH + j0, GH, c->q, d, cb,
                                    rnn_block_start(H, ncb, cb), H, G, ncb);
            continue;
        }
        r = r0;
        while (r < r1) {
            t = tlo + r / B;
            b = r % B;
            n = B - b < r1 - r ? B - b : r1 - r;
            RNN_TNAME(project_rows)(n, In, c->x + (b * T + t) * In, T * In, W + j0, GH, wpb, bx + j0,
                                    nc, xp + r * GH + j0, GH, c->q, d, cb,
                                    rnn_block_start(H, ncb, cb), H, G, ncb);
            r = r + n;
        }
    }
    free(gx);
    rnn_tock(RNN_PROF_PROJECTION, t0);
}

/* Steps s0..s1-1 of one work item: direction d, batch rows b0..b0+nb-1. Per step the
 * product h U over all gate columns, then the gate math block by block, then the
 * output rows. xp: the direction's chunk projection. work: the calling thread's
 * buffer of this call (run_items frees it), made at its first item for the largest
 * item and reused by its items after: one allocation per thread per call, not one
 * calloc per item per chunk (704 KiB at 625 rows of the digits LSTM, mapped and
 * faulted in anew each time under Dask's allocator settings); every part is written
 * before it is read. Returns RNN_OK or RNN_ERR_NOMEM. */
static int RNN_TNAME(item_run)(const RNN_TNAME(call) *c, long d, long b0, long nb, long s0, long s1,
                               const TYPE *xp, unsigned char *seen, TYPE **work)
{
    const rnn_shape *s = &c->s;
    long T = s->T, B = s->B, H = s->H, Ho = s->Ho, P = s->P, G = s->G, GH = c->GH;
    long ncb = c->p.ncb;
    int rev = d == 1 || s->reverse_first;
    long tlo = rev ? T - s1 : s0;
    const TYPE *U = c->U + d * Ho * GH;
    const TYPE *Up = c->Up != NULL ? c->Up + d * c->lup : NULL;
    const TYPE *Wr = c->Wr != NULL ? c->Wr + d * H * P : NULL;
    TYPE *out = c->out != NULL ? c->out + d * Ho : NULL;
    TYPE *h = c->h + (d * B + b0) * Ho;                          /* (nb, Ho) this item's state */
    TYPE *cs = c->c != NULL ? c->c + (d * B + b0) * H : NULL;    /* (nb, H) its cell state */
    long st, t, cb, j0, j1;
    const TYPE *xr;
    const unsigned char *valid;
    double t0, t1;
    long ngh = nb * GH, nbmax = c->p.bb < B ? c->p.bb : B;
    if (*work == NULL)
        *work = (TYPE *)malloc((size_t)(nbmax * GH + 4 * H + nbmax * (2 * H + 3 * H + P) + 1
                                        + (c->xcaller ? nbmax * GH : 0)) * sizeof(TYPE));
    if (*work == NULL)
        return RNN_ERR_NOMEM;
    TYPE *gh = *work;                /* (nb, GH) h U */
    TYPE *tmp = gh + ngh;            /* 4H: the gate math's scratch */
    TYPE *zr = tmp + 4 * H;          /* (nb, 4H) the work of a cell making its own products */
    TYPE *m = zr + nb * 4 * H;       /* (nb, H)  LSTM with projection: o * act(c) */
    TYPE *hp = m + nb * H;           /* (nb, P)  ... m Wr */
    TYPE *xg = hp + nb * P;          /* (nb, GH) c->xcaller: the live rows' projection */

    for (st = s0; st < s1; st++) {
        t0 = rnn_tick();
        t = rev ? T - 1 - st : st;
        xr = xp + ((t - tlo) * B + b0) * GH;
        valid = c->mask != NULL ? c->mask + t * B + b0 : NULL;
        if (Wr != NULL) {
            /* projection: m for all units first, then h = m Wr (gate-major layout, ncb == 1) */
            if (c->q != NULL)
                RNN_TNAME(qproduct)(c->q, &c->q->U, d, 0, 0, nb, GH, Ho, h, Ho, NULL, gh, GH);
            else
                RNN_TNAME(gemm_rm)((int)nb, (int)GH, (int)Ho, 1, h, (int)Ho, U, (int)GH, 0, gh, (int)GH);
            RNN_TNAME(cell_block)(c, d, 0, nb, H, xr, GH, gh, GH, NULL, m, H, cs, H, valid, tmp, zr);
            if (c->q != NULL)
                RNN_TNAME(qproduct)(c->q, &c->q->Wr, d, 0, 0, nb, P, H, m, H, NULL, hp, P);
            else
                RNN_TNAME(gemm_rm)((int)nb, (int)P, (int)H, 1, m, (int)H, Wr, (int)P, 0, hp, (int)P);
            RNN_TNAME(copy_rows)(nb, P, hp, P, h, Ho, valid);
        } else if (!rnn_cell_packed(s->cell)) {
            /* a cell that makes its own products (GRU reset-before: r before its second
             * product; gate-major layout, ncb == 1) */
            RNN_TNAME(cell_block)(c, d, 0, nb, H, xr, GH, NULL, 0, U, h, Ho, cs, H, valid, tmp, zr);
        } else {
            /* every block's product reads the old state: all products first, then the
             * steps; with right padding only for the rows that step (na) */
            long na = RNN_TNAME(live_rows)(c, t, b0, nb);
            if (c->xcaller) {
                RNN_TNAME(xp_live)(c, xp + (t - tlo) * B * GH, b0, na, 0, GH, xg);
                xr = xg;
            }
            t1 = rnn_tick();
            for (cb = 0; cb < ncb; cb++) {
                j0 = rnn_block_start(H, ncb, cb);
                j1 = rnn_block_start(H, ncb, cb + 1);
                if (c->q != NULL)
                    RNN_TNAME(qproduct)(c->q, &c->q->U, d,
                                        rnn_packed_offset(rnn_qpad(c->q->prec, Ho), H, G, ncb, cb),
                                        G * j0, na, G * (j1 - j0), Ho, h, Ho, NULL, gh + G * j0, GH);
                else
                    RNN_TNAME(gemm_packed)(na, G * (j1 - j0), Ho, h, Ho,
                                           Up + rnn_packed_offset(Ho, H, G, ncb, cb), NULL,
                                           gh + G * j0, GH);
            }
            rnn_tock(RNN_PROF_PRODUCT, t1);
            for (cb = 0; cb < ncb; cb++) {
                j0 = rnn_block_start(H, ncb, cb);
                j1 = rnn_block_start(H, ncb, cb + 1);
                if (na > 0)
                    RNN_TNAME(cell_block)(c, d, j0, na, j1 - j0, xr + G * j0, GH, gh + G * j0, GH,
                                          NULL, h + j0, Ho, cs != NULL ? cs + j0 : NULL, H, valid,
                                          tmp, zr);
            }
        }
        if (out != NULL && c->active != NULL)   /* ended rows: emit_ended, after the run */
            RNN_TNAME(emit_rows)(c, t, b0, RNN_TNAME(live_rows)(c, t, b0, nb), Ho, h, Ho, out,
                                 NULL, seen);
        else if (out != NULL)
            RNN_TNAME(emit_rows)(c, t, b0, nb, Ho, h, Ho, out, valid, seen);
        rnn_tock(RNN_PROF_STEP, t0);
    }
    return RNN_OK;
}

/* The item strategy: per chunk, the projection over (direction, row block) tasks,
 * then the work items (direction, batch block of p.bb rows), each running its own
 * time loop over the chunk. */
static int RNN_TNAME(run_items)(const RNN_TNAME(call) *c)
{
    const rnn_shape *s = &c->s;
    const rnn_plan *p = &c->p;
    long T = s->T, B = s->B, GH = c->GH, chunk = p->chunk, bb = p->bb;
    long nbb = (B + bb - 1) / bb, nitems = s->ndir * nbb;
    long ch, s0, s1, R, nrb, rb, ntask, task, item;
    long long t_call, t_in = 0, t_own = 0;
    rnn_team_clock clk = {0, 0, 0};
    int err = 0;
    TYPE *xp = (TYPE *)malloc((size_t)(s->ndir * chunk * B * GH) * sizeof(TYPE));
    unsigned char *seen = (unsigned char *)calloc((size_t)(s->ndir * B), 1);
    TYPE **work = (TYPE **)calloc((size_t)p->num_threads, sizeof(TYPE *)); /* item_run's, per thread */
    if (xp == NULL || seen == NULL || work == NULL)
        err = 1;
    for (ch = 0; ch < c->nchunks && err == 0; ch++) {
        s0 = ch * chunk;
        s1 = s0 + chunk < T ? s0 + chunk : T;
        R = (s1 - s0) * B;
        nrb = rnn_proj_tasks(R, p);
        rb = rnn_proj_rows(R, nrb);
        ntask = s->ndir * nrb;
        /* (1) the input projection of this chunk's steps, every direction */
        t_call = rnn_now_ns();
        RNN_OMP(parallel num_threads(p->num_threads))
        {
            long long b0 = rnn_now_ns();
            if (omp_get_thread_num() == 0)
                t_in = b0;
            RNN_OMP(for schedule(dynamic) nowait)
            for (task = 0; task < ntask; task++) {
                long d = task / nrb, r0 = (task % nrb) * rb, r1 = r0 + rb < R ? r0 + rb : R;
                long tlo = (d == 1 || s->reverse_first) ? T - s1 : s0;
                if (r0 < r1)
                    RNN_TNAME(item_project)(c, d, tlo, r0, r1, xp + d * chunk * B * GH);
            }
            b0 = rnn_now_ns() - b0;
            rnn_team_clock_work(&clk, b0);
            if (omp_get_thread_num() == 0)
                t_own = t_in + b0;
        }
        rnn_team_clock_add(&clk, t_call, t_in, t_own);
        /* (2) the recurrence over this chunk, every (direction, batch block): a thread
         * per item at most (a partner with no item would only be woken and joined) */
        t_call = rnn_now_ns();
        RNN_OMP(parallel num_threads(nitems < p->num_threads ? nitems : p->num_threads) reduction(+:err))
        {
            long long b0 = rnn_now_ns();
            if (omp_get_thread_num() == 0)
                t_in = b0;
            RNN_OMP(for schedule(dynamic) nowait)
            for (item = 0; item < nitems; item++) {
                long d = item / nbb, b0 = (item % nbb) * bb, nb = b0 + bb <= B ? bb : B - b0;
                err += RNN_TNAME(item_run)(c, d, b0, nb, s0, s1, xp + d * chunk * B * GH,
                                           seen + d * B + b0, work + omp_get_thread_num());
            }
            b0 = rnn_now_ns() - b0;
            rnn_team_clock_work(&clk, b0);
            if (omp_get_thread_num() == 0)
                t_own = t_in + b0;
        }
        rnn_team_clock_add(&clk, t_call, t_in, t_own);
    }
    /* as the blocked strategy: a caller that waited for a partner that lost its core to
     * start or end a region makes the next calls run on one thread for a while */
    rnn_team_report((int)p->num_threads, 0, &clk);
    if (work != NULL)
        for (item = 0; item < p->num_threads; item++)
            free(work[item]);
    free(work);
    free(xp);
    free(seen);
    return err ? RNN_ERR_NOMEM : RNN_OK;
}

/* ==== the blocked strategy: (direction, batch block, unit block) tasks, claimed per
 * phase (a chunk's projection, then each step) ==== */

/* What the team shares. */
typedef struct {
    long nbb, ntask;            /* batch blocks; tasks per step (ndir * nbb * ncb) */
    long slept;                 /* phases the caller slept waiting for (past a warm-up) */
    long slept_warm;            /* ... and in a partner's warm-up (openmp.h) */
    TYPE *xp;                   /* (ndir, chunk*B, GH) the chunk's projection */
    TYPE *hbuf;                 /* (2, ndir, B, Ho) the state, double-buffered by step */
    TYPE *cbuf;                 /* (ndir, B, H) the LSTM cell state, or NULL */
    TYPE *gx;                   /* (ndir, B, chunk, In) a team of one's gathered rows of x
                                 * (sorted rows read through c->rows), or NULL */
    unsigned char *seen;        /* (ndir, ncb, B) rows that have emitted an output */
    rnn_phases q;               /* the phases' claims and completions (openmp.h) */
    long long t_call;           /* rnn_now_ns() when the call began */
    long warm_until;            /* phases before this one are a partner's first (openmp.h) */
    rnn_team_facts facts;       /* per thread: tasks run, run again, arrival (openmp.h) */
} RNN_TNAME(blocked);

/* One task's block of the chunk's input projection: rows (t, b) for the chunk's steps
 * s0..s1-1 and the task's batch block, columns of its unit block. One product for the
 * whole chunk when the block is the whole batch and the rows are contiguous, else
 * one per step. */
static void RNN_TNAME(blocked_project)(const RNN_TNAME(call) *c, const RNN_TNAME(blocked) *bk,
                                       long task, long s0, long s1)
{
    const rnn_shape *s = &c->s;
    long T = s->T, B = s->B, In = s->In, H = s->H, G = s->G, GH = c->GH, ncb = c->p.ncb;
    rnn_task k = rnn_blocked_task(task, ncb, bk->nbb, c->p.bb, B);
    long tlo = (k.d == 1 || s->reverse_first) ? T - s1 : s0, nsteps = s1 - s0;
    long j0 = rnn_block_start(H, ncb, k.cb), N = G * (rnn_block_start(H, ncb, k.cb + 1) - j0);
    const TYPE *W = c->W + k.d * In * GH + G * j0, *bx = c->bx + k.d * GH + G * j0;
    const TYPE *Wp = c->Wp != NULL ? c->Wp + k.d * c->lwp + rnn_packed_offset(In, H, G, ncb, k.cb)
                                   : NULL;
    TYPE *xp = bk->xp + k.d * c->p.chunk * B * GH + G * j0;
    long i, t;
    double t0 = rnn_tick();
    /* right padding with the packed projection: only the rows that step */
    int skip = c->active != NULL && (Wp != NULL || (c->q != NULL && c->q->W.data != NULL));
    if (k.nb == B && (!s->bfirst || B == 1) && !skip) {
        rnn_qrows_name(c->serial, -1 - s0);     /* every unit block's rows: the chunk's */
        RNN_TNAME(project_rows)(nsteps * B, In, c->x + tlo * B * In, In, W, GH, Wp, bx, N, xp, GH,
                                c->q, k.d, k.cb, j0, H, G, ncb);
        rnn_qrows_name(0, 0);
    } else {
        /* sorted rows read in the caller's order (c->rows) are gathered, the live rows of
         * a step at a time: in a team of one once per chunk for every unit block (bk->gx:
         * a batch block's tasks run in order, unit block 0 first), else per task */
        TYPE *gx = bk->gx != NULL ? bk->gx + (k.d * B + k.b0) * c->p.chunk * In : NULL;
        long ldg = gx != NULL ? k.nb * In : 0;
        if (gx == NULL && c->rows != NULL && !c->xcaller)
            gx = (TYPE *)malloc((size_t)(k.nb * In) * sizeof(TYPE));
        for (i = 0; i < nsteps; i++) {
            t = tlo + i;
            long live = skip ? RNN_TNAME(live_rows)(c, t, k.b0, k.nb) : k.nb;
            if (live > 0)
                RNN_TNAME(project_live)(c, t, k.b0, live, W, GH, Wp, bx, N, xp + (i * B + k.b0) * GH,
                                        GH, gx != NULL ? gx + i * ldg : NULL, ldg > 0 && k.cb > 0,
                                        k.d, k.cb, j0);
        }
        if (bk->gx == NULL)
            free(gx);
    }
    rnn_tock(RNN_PROF_PROJECTION, t0);
}

/* One task of step st (chunk s0..s1-1, phase p): its product, reading the state of
 * step st (hbuf half st % 2), its gate math and outputs, writing the state of step
 * st + 1. scratch: the thread's own, p.bb * GH + 4H values (then priv's, then with
 * c->xcaller p.bb * GH for the live rows' projection). With priv (the thread's
 * own 2 * p.bb * H values: a kept team, where a task may run on two threads), the new
 * state is made there and published only if this thread's result is the phase's first
 * (rnn_phases_commit): a thread that lost its core inside the task and comes back late
 * may have read a state the team has since overwritten, and its result is dropped.
 * Returns 1 if this thread's result is the task's (the caller finishes it), else 0. */
static int RNN_TNAME(blocked_step)(const RNN_TNAME(call) *c, RNN_TNAME(blocked) *bk,
                                   long task, long st, long s0, long s1, TYPE *scratch,
                                   TYPE *priv, long p)
{
    const rnn_shape *s = &c->s;
    long T = s->T, B = s->B, H = s->H, Ho = s->Ho, G = s->G, GH = c->GH, ncb = c->p.ncb;
    int ndir = s->ndir;
    rnn_task k = rnn_blocked_task(task, ncb, bk->nbb, c->p.bb, B);
    int rev = k.d == 1 || s->reverse_first;
    long t = rev ? T - 1 - st : st, tlo = rev ? T - s1 : s0;
    long j0 = rnn_block_start(H, ncb, k.cb), hb = rnn_block_start(H, ncb, k.cb + 1) - j0;
    TYPE *hcur = bk->hbuf + (((st % 2) * ndir + k.d) * B + k.b0) * Ho;
    TYPE *hnxt = bk->hbuf + ((((st + 1) % 2) * ndir + k.d) * B + k.b0) * Ho;
    const unsigned char *valid = c->mask != NULL ? c->mask + t * B + k.b0 : NULL;
    TYPE *gh = scratch, *tmp = scratch + c->p.bb * GH;
    long r, na = RNN_TNAME(live_rows)(c, t, k.b0, k.nb);   /* the rows that step */
    long nw = RNN_TNAME(carried_rows)(c, st, t, rev, k.b0, k.nb);  /* their next state written */
    long ncs = c->active != NULL ? na : k.nb;                /* cell states that may change */
    TYPE *hout = hnxt + j0, *cio = bk->cbuf != NULL ? bk->cbuf + (k.d * B + k.b0) * H + j0 : NULL;
    long ldho = Ho, ldci = H;
    double t0 = rnn_tick();
    if (priv != NULL) {
        hout = priv;
        ldho = hb;
        if (cio != NULL) {
            for (r = 0; r < ncs; r++)
                memcpy(priv + (k.nb + r) * hb, cio + r * H, (size_t)hb * sizeof(TYPE));
            cio = priv + k.nb * hb;
            ldci = hb;
        }
    }
    if (c->q != NULL) {
        rnn_qrows_name(c->serial, st);          /* every unit block's rows: step st's state */
        RNN_TNAME(qproduct)(c->q, &c->q->U, k.d,
                            rnn_packed_offset(rnn_qpad(c->q->prec, Ho), H, G, ncb, k.cb), G * j0,
                            na, G * hb, Ho, hcur, Ho, NULL, gh, G * hb);
        rnn_qrows_name(0, 0);
    } else
        RNN_TNAME(gemm_packed)(na, G * hb, Ho, hcur, Ho,
                               c->Up + k.d * c->lup + rnn_packed_offset(Ho, H, G, ncb, k.cb), NULL,
                               gh, G * hb);
    rnn_tock(RNN_PROF_PRODUCT, t0);
    /* the new state starts as the old: GRU updates it in place; LSTM and SimpleRNN
     * overwrite every stepped row, so only masked rows are carried (with right padding
     * only in the step after their last: carried_rows) */
    for (r = 0; r < nw; r++)
        if (rnn_cell_in_place(s->cell) || (valid != NULL && !valid[r]))
            memcpy(hout + r * ldho, hcur + r * Ho + j0, (size_t)hb * sizeof(TYPE));
    const TYPE *xr = bk->xp + k.d * c->p.chunk * B * GH + ((t - tlo) * B + k.b0) * GH + G * j0;
    long ldxr = GH;
    if (c->xcaller && na > 0) {     /* after priv: the block's columns of the live rows */
        TYPE *xg = scratch + c->p.bb * GH + 4 * H + 2 * c->p.bb * H;
        RNN_TNAME(xp_live)(c, bk->xp + (k.d * c->p.chunk + t - tlo) * B * GH, k.b0, na, G * j0,
                           G * hb, xg);
        xr = xg;
        ldxr = G * hb;
    }
    if (na > 0)
        RNN_TNAME(cell_block)(c, k.d, j0, na, hb, xr, ldxr, gh, G * hb, NULL, hout, ldho, cio, ldci,
                              valid, tmp, NULL);
    if (priv != NULL) {
        if (!rnn_phases_commit(&bk->q, task, p)) {
            rnn_tock(RNN_PROF_STEP, t0);
            return 0;
        }
        for (r = 0; r < nw; r++) {
            memcpy(hnxt + r * Ho + j0, hout + r * ldho, (size_t)hb * sizeof(TYPE));
            if (cio != NULL && r < ncs)
                memcpy(bk->cbuf + (k.d * B + k.b0 + r) * H + j0, cio + r * ldci,
                       (size_t)hb * sizeof(TYPE));
        }
    }
    if (c->out != NULL)     /* with right padding the live rows (ended rows: emit_ended) */
        RNN_TNAME(emit_rows)(c, t, k.b0, c->active != NULL ? na : k.nb, hb, hout, ldho,
                             c->out + k.d * Ho + j0, c->active != NULL ? NULL : valid,
                             bk->seen + (k.d * ncb + k.cb) * B + k.b0);
    rnn_tock(RNN_PROF_STEP, t0);
    return 1;
}

/* Run the tasks of phase p that this thread claims: st < s0 is the chunk's projection,
 * else step st. Its own tasks first (task % nth == tid); then, once the others have
 * had rnn_steal_spins to finish theirs (none if *eager), every task still unclaimed,
 * each thread's list from its end. Sets *eager when it took a task over, clears it
 * when there was none left to take. Returns the number of tasks it ran. */
static long RNN_TNAME(blocked_phase)(const RNN_TNAME(call) *c, RNN_TNAME(blocked) *bk, int tid,
                                     int nth, long p, long st, long s0, long s1, TYPE *scratch,
                                     TYPE *priv, int *eager, int fresh)
{
    long task, ntask = bk->ntask, target = (p + 1) * ntask;
    int k, i, took = 0, over = 0;
    long ran = 0;
    rnn_debug_delay(tid, p, 0, fresh);
    for (k = 0; k < nth && !over; k++) {
        int owner = (tid + k) % nth;
        long last = owner < ntask ? owner + (ntask - 1 - owner) / nth * nth : -1;
        if (k == 1 && !*eager) {        /* give the others a moment to run their own */
            for (i = 0; i < rnn_steal_spins && !over; i++) {
                over = __atomic_load_n(&bk->q.done, __ATOMIC_ACQUIRE) >= target;
                rnn_cpu_relax();
            }
            if (over)
                break;
        }
        /* own tasks in order, every other phase from the last back (serpentine: the
         * thread's unit blocks read last, still in its L2, come first); the others'
         * the other way, away from where their owner is */
        int back = (int)(p & 1) ^ (k != 0);
        for (task = back ? last : owner; task >= 0 && task < ntask; task += back ? -nth : nth) {
            if (!rnn_phases_claim(&bk->q, task, p))
                continue;
            if (k == 0)
                rnn_debug_delay(tid, p, 1, fresh);
            else
                took = 1;
            ran++;
            if (st < s0) {
                RNN_TNAME(blocked_project)(c, bk, task, s0, s1);
                if (priv != NULL)               /* counted as the steps' tasks are */
                    rnn_phases_commit(&bk->q, task, p);
            } else if (!RNN_TNAME(blocked_step)(c, bk, task, st, s0, s1, scratch, priv, p))
                continue;
            rnn_phases_finish(&bk->q, p);
        }
    }
    if (nth > 1 && !over)
        *eager = took;
    return ran;
}

/* One thread's part in the blocked strategy (thread tid of a team of nth): every phase
 * in order, skipping those the team completed without it, waiting for each to complete
 * before the next (the next reads what it wrote). In a kept team (p.keep_team), a
 * thread whose wait for a step outlasts its spin runs the tasks still without a result
 * itself (a partner that lost its core inside one costs about twice a phase's work,
 * not a time slice); a chunk's projection is still waited for. The wait spins for a time scaled to
 * the thread's own work in the phase (or, where it ran none, in the last phase where
 * it ran some): see rnn_phases_wait; in a partner's warm-up (its first phases after it
 * joined: RNN_TEAM_WARMUP_PHASES) it spins the longest and a sleep there is counted
 * apart, as no sign of a busy machine. Which thread runs which task changes nothing in
 * the arithmetic, so the results do not depend on the team size or on the schedule. */
static void RNN_TNAME(blocked_worker)(const RNN_TNAME(call) *c, RNN_TNAME(blocked) *bk, int tid,
                                      int nth, TYPE *scratch)
{
    TYPE *priv = c->p.keep_team && nth > 1 ? scratch + c->p.bb * c->GH + 4 * c->s.H : NULL;
    long ch, s0, s1, st, p = 0, task, d, i, per = bk->ntask / c->s.ndir, ran = 0, redo = 0, got;
    int eager = 0, warm;
    long long start = 0, work = 0;
    double t0;
    if (nth > 1 && tid > 0)     /* this partner's first phases are its warm-up */
        rnn_team_warm_up(&bk->warm_until, rnn_phases_current(&bk->q));
    if (tid < RNN_TEAM_LAST_MAX) {
        bk->facts.arrive_ns[tid] = rnn_now_ns() - bk->t_call;
        bk->facts.skipped[tid] = rnn_phases_current(&bk->q);
    }
    if (nth == 1) {
        /* a team of one: no phases to claim; per chunk, the projection's tasks, then
         * each direction's steps in a row (its tasks of each step in order), so that
         * the core's cache holds one direction's recurrent weights at a time (a
         * BiLSTM(256)'s two are 2 MB: more than L2). The same tasks: the same bits. */
        for (ch = 0; ch < c->nchunks; ch++) {
            s0 = ch * c->p.chunk;
            s1 = s0 + c->p.chunk < c->s.T ? s0 + c->p.chunk : c->s.T;
            for (task = 0; task < bk->ntask; task++)
                RNN_TNAME(blocked_project)(c, bk, task, s0, s1);
            for (d = 0; d < c->s.ndir; d++)
                for (st = s0; st < s1; st++)
                    for (i = 0; i < per; i++) {
                        /* serpentine: every other step from the last task back, so the
                         * unit blocks whose weights were read last (still in L2) come
                         * first (a step's tasks are independent: any order, same bits) */
                        task = d * per + ((st - s0) % 2 ? per - 1 - i : i);
                        RNN_TNAME(blocked_step)(c, bk, task, st, s0, s1, scratch, NULL, 0);
                    }
        }
        return;
    }
    for (ch = 0; ch < c->nchunks; ch++) {
        s0 = ch * c->p.chunk;
        s1 = s0 + c->p.chunk < c->s.T ? s0 + c->p.chunk : c->s.T;
        for (st = s0 - 1; st < s1; st++, p++) {     /* st == s0 - 1: the chunk's projection */
            if (rnn_phases_current(&bk->q) > p)
                continue;
            if (nth > 1)
                start = rnn_now_ns();
            if ((got = RNN_TNAME(blocked_phase)(c, bk, tid, nth, p, st, s0, s1, scratch, priv,
                                              &eager, ran == 0)) > 0) {
                ran += got;
                if (nth > 1)    /* (a team of one waits for nobody: no clock read) */
                    work = rnn_now_ns() - start;
            }
            t0 = rnn_tick();
            if (priv != NULL && st >= s0 && !rnn_phases_spin(&bk->q, p, rnn_barrier_spin_ns(work))) {
                /* a partner holds a task far longer than this thread's own work: run it
                 * here too; the first result in is the one (the same bits either way) */
                for (task = bk->ntask - 1; task >= 0; task--)
                    if (rnn_phases_open(&bk->q, task, p)) {
                        redo++;
                        if (RNN_TNAME(blocked_step)(c, bk, task, st, s0, s1, scratch, priv, p))
                            rnn_phases_finish(&bk->q, p);
                    }
                eager = 1;
            }
            warm = p < __atomic_load_n(&bk->warm_until, __ATOMIC_ACQUIRE);
            if (rnn_phases_wait(&bk->q, p, warm ? rnn_barrier_spin_ns(-1) : rnn_barrier_spin_ns(work))
                && tid == 0) {
                if (p < __atomic_load_n(&bk->warm_until, __ATOMIC_ACQUIRE))
                    bk->slept_warm++;   /* a partner waking up: no sign of a busy machine */
                else
                    bk->slept++;
            }
            rnn_tock(RNN_PROF_WAIT, t0);
        }
    }
    if (tid < RNN_TEAM_LAST_MAX) {
        bk->facts.ran[tid] = ran;
        bk->facts.redo[tid] = redo;
    }
}

/* A one-step call's tasks shared with the partner thread (plan.partner): the call, the
 * team's buffers and a scratch per task (blocked_step's, p.bb * GH + 4H values each:
 * either thread may run any task). */
typedef struct {
    const RNN_TNAME(call) *c;
    RNN_TNAME(blocked) *bk;
    TYPE *scratch;
    long per_task;
} RNN_TNAME(one_step);

/* Task `task` of a one-step call, on whichever thread claimed it: its block of the input
 * projection, then its step, the functions a team runs in two phases (the same bits).
 * No barrier between them: a task's step reads the old state, which no task writes (the
 * double buffer), and its own block of the projection. */
static void RNN_TNAME(one_step_task)(void *arg, long task)
{
    const RNN_TNAME(one_step) *j = (const RNN_TNAME(one_step) *)arg;
    RNN_TNAME(blocked_project)(j->c, j->bk, task, 0, 1);
    RNN_TNAME(blocked_step)(j->c, j->bk, task, 0, 0, 1, j->scratch + task * j->per_task, NULL, 0);
}

/* A kept team of two (p.keep_team), over more than one step, on the caller and the
 * partner thread instead of an OpenMP region, whose end waits until the partner has had
 * a core and left its part, even where the caller took every task over (a partner
 * without a core: 19 ms for a 1.1 ms LSTM B=1 call beside ONNX Runtime's spinning
 * pool). Its two tasks are the two threads' parts (blocked_worker), claimed as
 * rnn_duo_run's tasks: the caller runs the first thread's, taking a late partner's
 * tasks over in the phases, and then claims the second's if the partner has not: every
 * phase is complete by then, so it has nothing to do (its facts say it never came:
 * arrive_ns -1). The caller waits only for a partner that claimed its part. */
typedef struct {
    const RNN_TNAME(call) *c;
    RNN_TNAME(blocked) *bk;
    TYPE *scratch;
    long per_thread;
    int cpu;                    /* the caller's CPU, which the partner keeps off */
    int taken[2];               /* the parts claimed */
    rnn_team_clock *clk;
    long long t_in, t_own;      /* the caller in its part, from and to */
} RNN_TNAME(kept_duo);

static void RNN_TNAME(kept_task)(void *arg, long task)
{
    RNN_TNAME(kept_duo) *j = (RNN_TNAME(kept_duo) *)arg;
    int caller = 0, tid;
    long long b0 = rnn_now_ns();
    (void)task;
#if RNN_KEPT_DUO
    caller = rnn_kept_caller == arg;
#endif
    /* the caller's first part is the first thread's, the partner's the second's,
     * unless the other has it already (two tasks: each part runs once) */
    tid = caller ? 0 : 1;
    if (__atomic_exchange_n(&j->taken[tid], 1, __ATOMIC_ACQ_REL))
        tid = 1 - tid;
    if (caller && tid == 1)
        return;                 /* the partner never came: every phase is complete */
    if (!caller)
        rnn_spread(j->cpu);
    RNN_TNAME(blocked_worker)(j->c, j->bk, tid, 2, j->scratch + tid * j->per_thread);
    if (!caller)
        rnn_unspread();
    if (caller) {
        j->t_in = b0;
        j->t_own = rnn_now_ns();
    }
    rnn_team_clock_work(j->clk, rnn_now_ns() - b0);
}

/* The blocked strategy: the state in a double buffer of our own (cache-line aligned),
 * one parallel region for the whole sequence; a one-step call planned with p.partner,
 * and a kept team of two over more than one step, on the caller and the partner thread
 * instead (not while profiling: profile.h's counters are per OpenMP thread). */
static int RNN_TNAME(run_blocked)(const RNN_TNAME(call) *c)
{
    const rnn_shape *s = &c->s;
    long B = s->B, H = s->H, Ho = s->Ho, GH = c->GH, ndir = s->ndir, nth = c->p.num_threads;
    long per_thread = (c->p.bb * GH + 4 * H + 2 * c->p.bb * H + (c->xcaller ? c->p.bb * GH : 0) + 15)
                      / 16 * 16;
    size_t state = (size_t)(ndir * B * Ho) * sizeof(TYPE), cell = (size_t)(ndir * B * H) * sizeof(TYPE);
    int err = RNN_OK;
    RNN_TNAME(blocked) bk;
    TYPE *scratch;
    bk.nbb = (B + c->p.bb - 1) / c->p.bb;
    bk.slept = bk.slept_warm = 0;
    bk.warm_until = 0;
    memset(&bk.facts, 0, sizeof bk.facts);
    bk.ntask = ndir * bk.nbb * c->p.ncb;
    int duo = c->p.partner && s->T == 1 && nth == 1 && bk.ntask > 1 && rnn_engine_partner != NULL
              && !rnn_prof_on;
    /* one step (a decoder's) keeps the region: on the partner thread the ONNX decoder
     * step B=64 on 2 threads measured 10-30% slower (bench/turns.py beside a busy core;
     * cause not found), 0.91x ONNX Runtime in a quiet compare.py run */
    int kept = RNN_KEPT_DUO && c->p.keep_team && nth == 2 && s->T > 1 && rnn_engine_partner != NULL
               && !rnn_prof_on && !rnn_omp_spins;
    bk.xp = (TYPE *)rnn_alloc_lines((size_t)(ndir * c->p.chunk * B * GH) * sizeof(TYPE));
    bk.seen = (unsigned char *)calloc((size_t)(ndir * c->p.ncb * B), 1);
    bk.hbuf = (TYPE *)rnn_alloc_lines(2 * state);
    bk.cbuf = c->c != NULL ? (TYPE *)rnn_alloc_lines(cell) : NULL;
    bk.gx = c->rows != NULL && !c->xcaller && nth == 1 && !duo  /* none: the tasks gather their own */
                ? (TYPE *)rnn_alloc_lines((size_t)(ndir * B * c->p.chunk * s->In) * sizeof(TYPE))
                : NULL;
    scratch = (TYPE *)rnn_alloc_lines((size_t)((duo ? bk.ntask : nth) * per_thread) * sizeof(TYPE));
    if (rnn_phases_init(&bk.q, bk.ntask) || bk.xp == NULL || bk.seen == NULL || bk.hbuf == NULL
        || scratch == NULL || (c->c != NULL && bk.cbuf == NULL)) {
        err = RNN_ERR_NOMEM;
    } else {
        memcpy(bk.hbuf, c->h, state);
        if (c->c != NULL)
            memcpy(bk.cbuf, c->c, cell);
        int team = nth;
        int cpu = c->p.keep_team && nth > 1 ? rnn_current_cpu() : -1;
        long long t_call = rnn_now_ns(), t_in = 0, t_own = 0;
        rnn_team_clock clk = {0, 0, 0};
        bk.t_call = t_call;
        if (duo) {
            RNN_TNAME(one_step) job = {c, &bk, scratch, per_thread};
            rnn_engine_partner(RNN_TNAME(one_step_task), &job, bk.ntask, 2);
        } else if (kept) {
            RNN_TNAME(kept_duo) job = {c, &bk, scratch, per_thread, cpu, {0, 0}, &clk, 0, 0};
            bk.facts.arrive_ns[1] = -1;     /* until it comes */
            bk.facts.skipped[1] = -1;
#if RNN_KEPT_DUO
            rnn_kept_caller = &job;
#endif
            rnn_engine_partner(RNN_TNAME(kept_task), &job, 2, 2);
#if RNN_KEPT_DUO
            rnn_kept_caller = NULL;
#endif
            rnn_team_clock_add(&clk, t_call, job.t_in, job.t_own);
        } else {
            RNN_OMP(parallel num_threads(nth))
            {
                long long b0 = rnn_now_ns();
                if (omp_get_thread_num() == 0) {
                    t_in = b0;
                    team = omp_get_num_threads();
                } else if (cpu >= 0) {
                    rnn_spread(cpu);
                }
                RNN_TNAME(blocked_worker)(c, &bk, omp_get_thread_num(), omp_get_num_threads(),
                                          scratch + omp_get_thread_num() * per_thread);
                if (omp_get_thread_num() != 0 && cpu >= 0)
                    rnn_unspread();
                b0 = rnn_now_ns() - b0;
                rnn_team_clock_work(&clk, b0);
                if (omp_get_thread_num() == 0)
                    t_own = t_in + b0;
            }
            rnn_team_clock_add(&clk, t_call, t_in, t_own);
        }
        if (team > 1) {
            if (c->p.keep_team)
                rnn_team_note(team, 1, bk.slept, &clk, 0);
            else
                rnn_team_report(team, bk.slept, &clk);
            rnn_team_last.slept_warm = bk.slept_warm;
            memcpy(rnn_team_last.ran, bk.facts.ran, sizeof bk.facts.ran);
            memcpy(rnn_team_last.redo, bk.facts.redo, sizeof bk.facts.redo);
            memcpy(rnn_team_last.skipped, bk.facts.skipped, sizeof bk.facts.skipped);
            memcpy(rnn_team_last.arrive_ns, bk.facts.arrive_ns, sizeof bk.facts.arrive_ns);
        }
        memcpy(c->h, bk.hbuf + (s->T % 2) * ndir * B * Ho, state);
        if (c->c != NULL)
            memcpy(c->c, bk.cbuf, cell);
    }
    rnn_phases_free(&bk.q);
    free(bk.xp);
    free(bk.seen);
    free(bk.hbuf);
    free(bk.cbuf);
    free(bk.gx);
    free(scratch);
    return err;
}

/* ==== the entry ==== */

/* Run one layer call (engine.h): the plan's strategy. Returns an rnn_status. */
static int RNN_TNAME(layer_forward)(const rnn_shape *shape, const rnn_plan *plan,
                                    const rnn_weights *w, const rnn_buffers *io)
{
    RNN_TNAME(call) c;
    if (shape->T == 0 || shape->B == 0)
        return RNN_OK;
    c.s = *shape;
    c.p = *plan;
    if (c.p.chunk < 1)
        c.p.chunk = 1;
    if (c.p.chunk > c.s.T)
        c.p.chunk = c.s.T;
    if (c.p.num_threads < 1)
        c.p.num_threads = 1;
    if (!c.p.keep_team)
        c.p.num_threads = rnn_team_for((int)c.p.num_threads);
    c.GH = c.s.G * c.s.H;
    c.ldo = c.s.ndir * c.s.Ho;
    c.nchunks = (c.s.T + c.p.chunk - 1) / c.p.chunk;
    c.lwp = rnn_packed_offset(c.s.In, c.s.H, c.s.G, c.p.ncb, c.p.ncb);
    c.lup = rnn_packed_offset(c.s.Ho, c.s.H, c.s.G, c.p.ncb, c.p.ncb);
    c.x = (const TYPE *)io->x;
    c.W = (const TYPE *)w->W;
    c.Wp = (const TYPE *)w->Wp;
    c.bx = (const TYPE *)w->bx;
    c.U = (const TYPE *)w->U;
    c.Up = (const TYPE *)w->Up;
    c.bhn = (const TYPE *)w->bhn;
    c.Wr = (const TYPE *)w->Wr;
    c.peep = (const TYPE *)w->peep;
    c.q = sizeof(TYPE) == sizeof(float) ? w->q : NULL;  /* reduced precision: float layers only */
    c.serial = c.q != NULL ? rnn_qrows_serial() : 0;
    c.mask = io->mask;
    c.active = io->active != NULL && rnn_cell_packed(c.s.cell) && c.Wr == NULL ? io->active : NULL;
    /* reduced-precision input weights project gathered rows: the caller sorts x and out */
    c.rows = c.active != NULL && (c.Wp != NULL || c.q == NULL || c.q->W.data == NULL) ? io->rows
                                                                                    : NULL;
    c.xcaller = c.rows != NULL && c.Wp == NULL;
    if (io->rows != NULL && c.rows == NULL)
        return RNN_ERR_ARGS;    /* the caller sorts x and out itself where rows cannot be used */
    c.out = (TYPE *)io->out;
    c.h = (TYPE *)io->h;
    c.c = (TYPE *)io->c;
    int err = c.p.strategy == RNN_STRATEGY_BLOCKED ? RNN_TNAME(run_blocked)(&c)
                                                    : RNN_TNAME(run_items)(&c);
    if (err == RNN_OK && c.active != NULL && c.out != NULL)
        RNN_TNAME(emit_ended)(&c);
    return err;
}
