/*
 * engine.h -- the kernel entry: one recurrent layer (one or two directions) over a
 * whole sequence, in one call.
 *
 *     int rnn_layer_forward(const rnn_shape *, const rnn_plan *, const rnn_weights *,
 *                           const rnn_buffers *);
 *
 * The caller (_kernels.pyx, for rnnfast/layers.py) describes the call in four structs:
 * what runs (rnn_shape), how it runs (rnn_plan: the strategy and the cuts, made by
 * rnnfast/_plan.py), the weights, and the buffers. It validates shapes, makes every
 * array C-contiguous in the compute dtype, packs the weights once per layer and
 * allocates the outputs; the engine allocates only scratch, once per call (and per
 * work item), never per time step, and returns RNN_OK, RNN_ERR_NOMEM or RNN_ERR_ARGS.
 *
 * The two strategies (engine.template.h) are two functions:
 * - item: the sequence is cut into chunks of plan.chunk steps. For each chunk, (1) the
 *   input projection of all its steps is computed over (direction, row block) tasks,
 *   in parallel; then (2) each work item (direction, batch block of plan.bb rows) runs
 *   its own time loop over the chunk with no barrier per step: the products of the
 *   step, then the fused gate math per unit block, which updates the state in place,
 *   and the output rows written straight into the direction's half of `out`. Memory
 *   for the projection is bounded by the chunk, not by the sequence length.
 * - blocked: for layers whose gate columns are laid out in unit blocks (layout.h),
 *   each step's (direction, batch block, unit block) products and gate math are tasks
 *   shared by the team, the same ones per thread every step, with one barrier per
 *   step and the state double-buffered. Each core keeps its share of the recurrent
 *   weights in its cache, and a small batch still uses every core. A task also
 *   projects its own block of each chunk's input, so the projection is read where it
 *   was written; the buffers threads share are aligned to cache lines. A team of one
 *   (one thread asked for, or openmp.h's back-off) runs the same tasks without phases,
 *   one direction's steps after the other's per chunk, so that the core's cache holds
 *   one direction's recurrent weights at a time. A one-step call too small for an
 *   OpenMP team (a decoder step at B=1: its partner would sleep between calls, and wake
 *   in 46-138 us) but planned with plan.partner runs each task (its block's projection,
 *   then its step: the tasks of one step share nothing they write) on the caller or on
 *   the products' polling partner thread (rnn_engine_partner), whichever claims it.
 *   A kept team of two (plan.keep_team) runs its two threads' parts there too, not in
 *   an OpenMP region, whose end would wait for a partner that has no core.
 *
 * Layout: x and out are time-major rows (t*B + b), or batch-major (b*T + t) with
 * shape.bfirst, read and written in place either way. Direction 0 runs forward
 * (backward with shape.reverse_first), direction 1 always backward; outputs stay
 * aligned with input time.
 *
 * Threads: OpenMP over tasks and items (dynamic schedule). The decomposition depends
 * on the shapes and the plan only, never on the thread count, so results are bitwise
 * identical for every thread count. Every BLAS call is made inside the parallel
 * region; the Python side holds the BLAS to one thread while it runs.
 */
#ifndef RNNFAST_ENGINE_H
#define RNNFAST_ENGINE_H

#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "enums.h"
#include "isa.h"
#include "layout.h"
#include "openmp.h"
#include "profile.h"
#include "template.h"

/* What runs: the layer and the sequence. */
typedef struct {
    rnn_dtype dtype;            /* of every array */
    rnn_cell cell;
    rnn_activation act;         /* the activation */
    rnn_activation ract;        /* the gates' (recurrent) activation */
    long T, B;                  /* time steps, batch rows */
    long In;                    /* input features (I; not a C name: complex.h takes it) */
    long H;                     /* units */
    long G;                     /* gates: the weights have G*H columns */
    long Ho;                    /* state width: P with a projection, else H */
    long P;                     /* LSTM projection size, 0 without */
    int ndir;                   /* directions: 1 or 2 */
    int reverse_first;          /* direction 0 runs backward (go_backwards) */
    int bfirst;                 /* x and out are batch-major (row b*T + t) */
    int zero_output;            /* masked steps output zeros (else the last output) */
    double clip;                /* > 0: gate pre-activations clipped to [-clip, clip]; 0: none */
    int input_forget;           /* LSTM: f = 1 - i */
} rnn_shape;

/* How it runs: a function of the shapes only, never of the thread count (but the
 * team size itself), so that results do not depend on it. */
typedef struct {
    rnn_strategy strategy;
    long ncb;                   /* unit blocks of the gate columns (the weights' layout) */
    long bb;                    /* rows per batch block */
    long chunk;                 /* steps per projection chunk */
    long proj_min_rows;         /* item strategy: rows per projection task, at least, */
    long proj_max_tasks;        /* and tasks per direction and chunk, at most */
    int num_threads;            /* the team size */
    int keep_team;              /* blocked strategy: keep the team on a busy machine (openmp.h) */
    int partner;                /* blocked strategy, one step (T == 1), a team of one: its tasks
                                 * shared with the partner thread (rnn_engine_partner) */
} rnn_plan;

/* The weights, in the compute dtype (shapes per direction d < ndir). */
typedef struct {
    const void *W;              /* (ndir, I, G*H) input weights, in ncb unit blocks */
    const void *Wp;             /* W packed (layout.h), or NULL: the projection calls BLAS */
    const void *bx;             /* (ndir, G*H) the input-side bias (and the biases that add) */
    const void *U;              /* (ndir, Ho, G*H) recurrent weights */
    const void *Up;             /* U packed, or NULL: GRU reset-before and LSTM with projection */
    const void *bhn;            /* (ndir, H) GRU reset-after: the candidate's recurrent bias */
    const void *Wr;             /* (ndir, H, P) LSTM projection, or NULL */
    const void *peep;           /* (ndir, 3, H) LSTM peepholes (i, f, o), or NULL */
    const rnn_qweights *q;      /* reduced-precision weights (quant.h), or NULL: float32 */
} rnn_weights;

/* The buffers: the input, the mask, the outputs and the states. */
typedef struct {
    const void *x;              /* (T*B, I), rows t*B + b (b*T + t when bfirst) */
    const unsigned char *mask;  /* (T, B): 0 is a masked step; or NULL */
    void *out;                  /* (T*B, ndir*Ho), rows as x's; or NULL */
    void *h;                    /* (ndir, B, Ho) IN/OUT: initial -> final state */
    void *c;                    /* (ndir, B, H) IN/OUT: LSTM cell state; else NULL */
    const long *active;         /* (T,) right padding: the rows valid at step t are the first
                                 * active[t] (rows sorted by length, longest first), and the
                                 * mask says the same; or NULL. Rows past them drop out of
                                 * the step's products and gate math (cells with packed
                                 * products, no projection) and of the packed projection;
                                 * out then comes zero-filled (the zeros of the steps
                                 * where a row does not step are not written). */
    const long *rows;           /* (B,) with active (not with reduced-precision input weights):
                                 * the row of x and out (the caller's order) of each sorted
                                 * row, so that the caller sorts nothing but the states and the
                                 * mask; or NULL. A BLAS projection is made in the caller's
                                 * order, as without active (the same bits). */
} rnn_buffers;

/* The products outside the recurrent layers (products.template.h): for g = (g1, g2),
 * g1 < G1, g2 < G2, C_g = act(bias + A_g B_g), or with an addend, C_g = act((bias +
 * A_g B_g) + addend): the addend added to the rounded sums, as a separate Add would
 * add it (ONNX's MatMul + Add of a bias). Offsets and strides count elements of the
 * dtype. */
typedef struct {
    rnn_dtype dtype;
    long G1, G2;                /* the batch of products, two levels (attention: batch, head) */
    long M, N, K;               /* each: (M x K) (K x N) */
    const void *A;              /* A_g at A + g1*sa1 + g2*sa2: M rows lda apart, K contiguous */
    long sa1, sa2, lda;
    const void *B;              /* B_g at B + g1*sb1 + g2*sb2: element (k, j) at k*ldb + j*cb */
    long sb1, sb2, ldb, cb;     /* (sb1 = sb2 = 0: one B for every g) */
    const void *Bp;             /* or one B packed (layout.h: rnn_packed_size(K, N)), or NULL */
    const void *bias;           /* (N,), or NULL: the sums' start */
    const void *addend;         /* (N,) added to every row after its sums, or NULL */
    int act;                    /* an RNN_ACT_* code applied to C's rows, or -1 */
    void *C;                    /* C_g at C + g1*sc1 + g2*sc2: M rows ldc apart, N contiguous */
    long sc1, sc2, ldc;
} rnn_products;

/* The cells' properties, from the cell list (cells.def.h). */
static const struct {
    const char *name;           /* its CODE: "GRU" for RNN_CELL_GRU */
    long gates, states;
    int packed, in_place;
} rnn_cells[RNN_CELL_COUNT] = {
#define RNN_CELL(CODE, name, gates, states, packed, in_place) [RNN_CELL_##CODE] = {#CODE, gates, states, packed, in_place},
#include "cells.def.h"
#undef RNN_CELL
};

/* Gates per unit of a cell: the columns of its weights are gates * H. */
static inline long rnn_cell_gates(rnn_cell cell) { return rnn_cells[cell].gates; }

/* States of a cell: 1 (h) or 2 (h, c). */
static inline long rnn_cell_states(rnn_cell cell) { return rnn_cells[cell].states; }

/* 1 when a cell's per-step product runs on packed weights (else it makes its own). */
static inline int rnn_cell_packed(rnn_cell cell) { return rnn_cells[cell].packed; }

/* 1 when a cell's gate math updates the state in place. */
static inline int rnn_cell_in_place(rnn_cell cell) { return rnn_cells[cell].in_place; }

/* A cell's CODE ("GRU_RB"), for Python's names of the codes. */
static inline const char *rnn_cell_name(rnn_cell cell) { return rnn_cells[cell].name; }

/* The row of (time t, batch b) in the input and the output: t*B + b, or b*T + t when
 * they are batch-major. */
static inline long rnn_row(long t, long b, long T, long B, int bfirst)
{
    return bfirst ? b * T + t : t * B + b;
}

/* n bytes on a cache-line boundary (64), or NULL; freed with free(). For the blocked
 * strategy's shared buffers, whose blocks different threads write: a line that two
 * blocks share would bounce between cores on every step. */
static inline void *rnn_alloc_lines(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n > 0 ? n : 64) != 0)
        return NULL;
    return p;
}

/* The partner thread of the few-row products (rowops.team.h, in the _rowops module),
 * handed over at import (_kernels._use_partner): run(fn, arg, ntask, nth) runs fn(arg, t)
 * for t < ntask, each once, on the caller and (nth > 1) the partner, whichever claims
 * t first, and returns when all are done. NULL: none (a plan's partner runs its tasks on
 * the caller). One partner per process, so the engine does not start a second. */
typedef void (*rnn_partner_fn)(void *arg, long task);
typedef void (*rnn_partner_run)(rnn_partner_fn fn, void *arg, long ntask, int nth);
static rnn_partner_run rnn_engine_partner = NULL;
/* A kept team of two runs on the caller and that partner (engine.template.h,
 * kept_task): the caller marks its job here, so that it takes the first thread's part. */
#if defined(__GNUC__)
#define RNN_KEPT_DUO 1
static __thread const void *rnn_kept_caller = NULL;
#else
#define RNN_KEPT_DUO 0
#endif
/* 1 where the OpenMP runtime's idle threads spin (loaded before rnnfast with its default
 * wait policy, as `import torch` first does, or OMP_WAIT_POLICY=active: _threads.py sets
 * it): a kept team of two then runs its steps on the OpenMP team, not on the caller and
 * the partner, which would wait for the core a spinning pool thread holds (the seed
 * BiGRU B=32 on 2 threads, torch imported first: 4.4-7.7 ms, 3.0-4.7 with the pool
 * passive, Zen 1). */
static int rnn_omp_spins = 0;

/* One task of the blocked strategy: direction, batch block (first row, rows) and
 * unit block. */
typedef struct {
    long d, b0, nb, cb;
} rnn_task;

/* Task number -> task; unit blocks vary fastest, then batch blocks, then directions. */
static inline rnn_task rnn_blocked_task(long task, long ncb, long nbb, long bb, long B)
{
    rnn_task k;
    long q = task / ncb;
    k.cb = task % ncb;
    k.b0 = (q % nbb) * bb;
    k.d = q / nbb;
    k.nb = k.b0 + bb <= B ? bb : B - k.b0;
    return k;
}

/* Row blocks of a chunk's projection (R rows): a function of R and the plan only. */
static inline long rnn_proj_tasks(long R, const rnn_plan *p)
{
    long n = (R + p->proj_min_rows - 1) / p->proj_min_rows;
    return n > p->proj_max_tasks ? p->proj_max_tasks : (n > 0 ? n : 1);
}

/* Rows per projection task: R over nrb tasks, rounded up to whole register tiles
 * (the last task may be shorter, or empty). */
static inline long rnn_proj_rows(long R, long nrb)
{
    long rb = (R + nrb - 1) / nrb;
    return (rb + RNN_TILE_ROWS - 1) / RNN_TILE_ROWS * RNN_TILE_ROWS;
}

#define TYPE float
#include "common.template.h"
#include "engine.template.h"
#include "products.template.h"
#undef TYPE
#define TYPE double
#include "common.template.h"
#include "engine.template.h"
#include "products.template.h"
#undef TYPE

/* Run one layer call; branches on the dtype here, once. Returns an rnn_status. */
static int rnn_layer_forward(const rnn_shape *shape, const rnn_plan *plan,
                             const rnn_weights *weights, const rnn_buffers *buffers)
{
    if (shape->dtype == RNN_FLOAT64)
        return rnn_layer_forward_d(shape, plan, weights, buffers);
    return rnn_layer_forward_f(shape, plan, weights, buffers);
}

/* Run the products of pr on nth threads at most. Returns an rnn_status. */
static int rnn_run_products(const rnn_products *pr, int nth)
{
    if (pr->dtype == RNN_FLOAT64)
        return rnn_products_d(pr, nth);
    return rnn_products_f(pr, nth);
}

#endif /* RNNFAST_ENGINE_H */
