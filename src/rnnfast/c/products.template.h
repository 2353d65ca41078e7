/*
 * products.template.h -- the products outside the recurrent layers (Dense, Conv1D,
 * attention; rnnfast/_products.py), for one TYPE (no include guard: instantiated by
 * engine.h, which defines rnn_products; see template.h).
 *
 * They run on the packed product the recurrence uses (dispatch: RNN_TNAME(gemm_packed))
 * in rnnfast's own parallel region, so that no BLAS starts threads of its own (NumPy's
 * OpenBLAS, waking its threads on a busy machine, took up to 40 ms for a 0.03 ms
 * product, and ran beside rnnfast's team). Every element of C is one chain of
 * multiply-adds over k whatever rows surround it (packgemm.template.h), so the split
 * of the rows among the team never changes a result.
 */

/* dst = the packed form of B (K x N, element (k, j) at B[k*ldb + j*cb]). */
static void RNN_TNAME(pack_strided)(long K, long N, const TYPE *B, long ldb, long cb, TYPE *dst)
{
    long p, k, j, np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    if (cb == 1) {
        RNN_TNAME(pack)(K, N, B, ldb, dst);
        return;
    }
    for (p = 0; p < np; p++) {
        long j0 = p * RNN_PANEL_COLS, nc = N - j0 < RNN_PANEL_COLS ? N - j0 : RNN_PANEL_COLS;
        TYPE *d = dst + p * K * RNN_PANEL_COLS;
        for (k = 0; k < K; k++) {
            for (j = 0; j < nc; j++)
                d[k * RNN_PANEL_COLS + j] = B[k * ldb + (j0 + j) * cb];
            for (; j < RNN_PANEL_COLS; j++)
                d[k * RNN_PANEL_COLS + j] = (TYPE)0;
        }
    }
}

/* Rows per row block of a product split among threads, at least. */
#define RNN_SPLIT_ROWS 32

/* The products of pr (engine.h: rnn_products), in TYPE, on a team of nth threads at
 * most (one while the team backs off: openmp.h). Tasks: (g, row block, column block of
 * whole panels), about four per thread, where one B serves every g (packed once, here
 * or by the caller); a task per g where each g has its own B_g (packed by the task into
 * its thread's scratch). Returns an rnn_status. */
static int RNN_TNAME(products)(const rnn_products *pr, int nth)
{
    long G = pr->G1 * pr->G2, M = pr->M, N = pr->N, K = pr->K, psize = rnn_packed_size(K, N);
    long npan = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, pcols = npan * RNN_PANEL_COLS;
    long nrb = 1, rows = M, ncol = 1, per, ntask, task;
    int own = pr->Bp == NULL && G > 1 && (pr->sb1 != 0 || pr->sb2 != 0);
    const TYPE *A = (const TYPE *)pr->A, *B = (const TYPE *)pr->B, *bias = (const TYPE *)pr->bias;
    const TYPE *addend = (const TYPE *)pr->addend;
    const TYPE *Bp = (const TYPE *)pr->Bp;
    TYPE *C = (TYPE *)pr->C, *packed = NULL, *scratch = NULL;
    long long t_call, t_in = 0, t_out = 0;
    rnn_team_clock clk = {0, 0, 0};
    if (G <= 0 || M <= 0 || N <= 0)
        return RNN_OK;
    if (K <= 0)
        return RNN_ERR_ARGS;
    nth = rnn_team_for(nth < 1 ? 1 : nth);
    if (Bp == NULL && !own) {           /* one B for every g: packed once */
        packed = (TYPE *)malloc((size_t)psize * sizeof(TYPE));
        if (packed == NULL)
            return RNN_ERR_NOMEM;
        RNN_TNAME(pack_strided)(K, N, B, pr->ldb, pr->cb, packed);
        Bp = packed;
    }
    if (!own && nth > 1 && G < 4 * nth) {
        /* row blocks of RNN_SPLIT_ROWS rows at least, then column blocks of whole panels
         * (a few rows split by rows would each stream all of B); where B is the larger
         * operand (N > M) and has a panel for every block, column blocks only, so B is
         * read once (a 64-row vocabulary head, 256 x 8000, on 2 threads of a Zen 1:
         * 5.17 -> 3.95 ms; bench/README.md, "Session 16") */
        per = (4 * nth + G - 1) / G;                            /* blocks per g */
        nrb = M / RNN_SPLIT_ROWS < per ? M / RNN_SPLIT_ROWS : per;
        nrb = nrb > 0 && (N <= M || npan < per) ? nrb : 1;
        rows = (M + nrb - 1) / nrb;
        rows = (rows + RNN_TILE_ROWS - 1) / RNN_TILE_ROWS * RNN_TILE_ROWS;
        nrb = (M + rows - 1) / rows;
        ncol = (per + nrb - 1) / nrb < npan ? (per + nrb - 1) / nrb : npan;
        pcols = (npan + ncol - 1) / ncol * RNN_PANEL_COLS;
        ncol = (N + pcols - 1) / pcols;
    }
    ntask = G * nrb * ncol;
    if (nth > ntask)
        nth = (int)ntask;
    if (own) {
        scratch = (TYPE *)malloc((size_t)(nth * psize) * sizeof(TYPE));
        if (scratch == NULL)
            return RNN_ERR_NOMEM;
    }
    t_call = rnn_now_ns();
    RNN_OMP(parallel num_threads(nth))
    {
        long long b0 = rnn_now_ns();
        if (omp_get_thread_num() == 0)
            t_in = b0;
        RNN_OMP(for schedule(dynamic) nowait)
        for (task = 0; task < ntask; task++) {
            long g = task / (nrb * ncol), g1 = g / pr->G2, g2 = g % pr->G2, r;
            long r0 = (task / ncol % nrb) * rows, nr = M - r0 < rows ? M - r0 : rows;
            long j0 = (task % ncol) * pcols, nc = N - j0 < pcols ? N - j0 : pcols;
            const TYPE *a = A + g1 * pr->sa1 + g2 * pr->sa2 + r0 * pr->lda;
            TYPE *c = C + g1 * pr->sc1 + g2 * pr->sc2 + r0 * pr->ldc + j0;
            const TYPE *bp = own ? NULL : Bp + j0 * K;          /* whole panels from j0 */
            if (own) {
                TYPE *mine = scratch + omp_get_thread_num() * psize;
                RNN_TNAME(pack_strided)(K, N, B + g1 * pr->sb1 + g2 * pr->sb2, pr->ldb, pr->cb, mine);
                bp = mine;
            }
            RNN_TNAME(gemm_packed)(nr, nc, K, a, pr->lda, bp, bias != NULL ? bias + j0 : NULL, c,
                                   pr->ldc);
            if (addend != NULL) {
                long j;
                for (r = 0; r < nr; r++)
                    for (j = 0; j < nc; j++)
                        c[r * pr->ldc + j] += addend[j0 + j];
            }
            if (pr->act >= 0)
                for (r = 0; r < nr; r++)
                    RNN_TNAME(activate)(pr->act, c + r * pr->ldc, nc);
        }
        b0 = rnn_now_ns() - b0;
        rnn_team_clock_work(&clk, b0);
        if (omp_get_thread_num() == 0)
            t_out = t_in + b0;
    }
    rnn_team_clock_add(&clk, t_call, t_in, t_out);
    rnn_team_report(nth, 0, &clk);
    free(packed);
    free(scratch);
    return RNN_OK;
}
