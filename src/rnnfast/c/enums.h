/*
 * enums.h -- the codes shared by the C core and Python, defined once, here.
 *
 * Python reads them through `cpdef enum` in _kernels.pxd: rnnfast._kernels.RNN_ACT_TANH,
 * _kernels.RNN_CELL_GRU, _kernels.RNN_ISA_AVX2, ... Never copy a value by hand.
 */
#ifndef RNNFAST_ENUMS_H
#define RNNFAST_ENUMS_H

/* Activations the gate math runs (cellmath.template.h). */
typedef enum rnn_activation {
    RNN_ACT_LINEAR = 0,
    RNN_ACT_TANH = 1,
    RNN_ACT_SIGMOID = 2,
    RNN_ACT_HARD_SIGMOID = 3,       /* Keras 3: relu6(x + 3) / 6 */
    RNN_ACT_HARD_SIGMOID_KERAS2 = 4, /* Keras 2 / tf.keras: clip(0.2 x + 0.5, 0, 1) */
    RNN_ACT_RELU = 5,
    RNN_ACT_SOFTSIGN = 6,
    RNN_ACT_SOFTPLUS = 7,
    RNN_ACT_ELU = 8,
    RNN_ACT_SELU = 9,
    RNN_ACT_EXPONENTIAL = 10,
    RNN_ACT_COUNT = 11              /* the number of activations, not one of them */
} rnn_activation;

/* Cells the engine runs: one per line of cells.def.h, codes in its order; gate order is
 * Keras' (GRU z, r, h; LSTM i, f, c, o). */
typedef enum rnn_cell {
#define RNN_CELL(CODE, name, gates, states, packed, in_place) RNN_CELL_##CODE,
#include "cells.def.h"
#undef RNN_CELL
    RNN_CELL_COUNT                  /* the number of cells, not one of them */
} rnn_cell;

/* Instruction-set levels, lowest first: the dispatcher (isa.h) runs the best one the
 * CPU supports that is not above the level asked for. A new ISA adds its value here. */
typedef enum rnn_isa_level {
    RNN_ISA_BASELINE = 0,           /* portable C: any CPU */
    RNN_ISA_AVX2 = 1,               /* x86-64 AVX2 + FMA */
    RNN_ISA_AVX512 = 2,             /* x86-64 AVX-512 F, VL, BW, DQ */
    RNN_ISA_COUNT = 3               /* the number of levels, not one of them */
} rnn_isa_level;

/* The two execution strategies of one layer call (engine.template.h). */
typedef enum rnn_strategy {
    RNN_STRATEGY_ITEM = 0,          /* (direction, batch block) work items, no per-step barrier */
    RNN_STRATEGY_BLOCKED = 1        /* (direction, batch block, unit block) tasks, a barrier per step */
} rnn_strategy;

/* The compute dtypes. */
typedef enum rnn_dtype {
    RNN_FLOAT32 = 0,
    RNN_FLOAT64 = 1
} rnn_dtype;

/* The packed product's geometry (packgemm.template.h): weights are packed in panels
 * of RNN_PANEL_COLS columns; the register tile has RNN_TILE_ROWS rows. */
typedef enum rnn_packing {
    RNN_PANEL_COLS = 64,
    RNN_TILE_ROWS = 6
} rnn_packing;

/* The CPU families whose products have a tuning of their own (isa.h: rnn_tunings[]);
 * every other CPU takes RNN_CPU_GENERIC's (tuned on Intel Sapphire Rapids). */
typedef enum rnn_cpu_family {
    RNN_CPU_GENERIC = 0,
    RNN_CPU_ZEN4 = 1,               /* AMD family 19h with AVX-512: 256-bit FMA units, 32 KiB L1d, 1 MiB L2 */
    RNN_CPU_ZEN1 = 2,               /* AMD family 17h below model 30h (Zen 1, Zen+): AVX2 on 128-bit units, 512 KiB L2 */
    RNN_CPU_FAMILY_COUNT = 3
} rnn_cpu_family;

/* Where the time goes (profile.h): the parts, and the threads counted. */
typedef enum rnn_profile_part {
    RNN_PROF_PROJECTION = 0,        /* the input projection of the chunks */
    RNN_PROF_PRODUCT = 1,           /* the per-step products h U (and h Wr) */
    RNN_PROF_STEP = 2,              /* whole steps: products, gate math, state copies, outputs */
    RNN_PROF_WAIT = 3,              /* the blocked strategy's step barrier */
    RNN_PROF_PARTS = 4,             /* the number of parts */
    RNN_PROF_SLOTS = 64             /* threads counted: thread ids from 0 to 63 */
} rnn_profile_part;

/* The precision of a layer's weights (quant.h): float32 (the compute dtype, exact),
 * or reduced: bf16 weights and activations with float32 sums, or int8 weights and
 * activations with int32 sums; gate math and state stay float32 either way. */
typedef enum rnn_precision {
    RNN_PREC_FLOAT = 0,
    RNN_PREC_BF16 = 1,
    RNN_PREC_INT8 = 2
} rnn_precision;

/* What a kernel entry returns. */
typedef enum rnn_status {
    RNN_OK = 0,
    RNN_ERR_NOMEM = 1,              /* out of memory for scratch */
    RNN_ERR_ARGS = 2                /* arguments the call cannot take together */
} rnn_status;

#endif /* RNNFAST_ENUMS_H */
