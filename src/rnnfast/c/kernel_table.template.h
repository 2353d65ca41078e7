/*
 * kernel_table.template.h -- one instruction set's kernel table, generated (no include
 * guard: included once by each ISA's file, after its templates are instantiated).
 *
 * Parameters, defined by the includer:
 *   ISA_SUFFIX                 the ISA's name suffix: defines rnn_kernels_<ISA_SUFFIX>
 *   RNN_PACKED_PROJECTION_F    1 when float's input projection runs on packed weights
 *   RNN_PACKED_PROJECTION_D    the same for double
 *   RNN_TABLE_EXTRA_F / _D     optional: more designated initialisers of the float /
 *                              double table (kernels of an ISA's own, e.g. another
 *                              precision's products)
 * Every cell of cells.def.h gets its gate math RNN_INAME(<name>) of this ISA, so a new
 * cell needs no edit here nor in any ISA's file.
 */
static const rnn_kernels RNN_CAT(rnn_kernels_, ISA_SUFFIX) = {
#define TYPE float
    .f = {
        .activate = RNN_INAME(activate),
        .step = {
#define RNN_CELL(CODE, name, gates, states, packed, in_place) [RNN_CELL_##CODE] = RNN_INAME(name),
#include "cells.def.h"
#undef RNN_CELL
        },
        .gemm_packed = RNN_INAME(gemm_packed),
        .packed_projection = RNN_PACKED_PROJECTION_F,
#ifdef RNN_TABLE_EXTRA_F
        RNN_TABLE_EXTRA_F
#endif
    },
#undef TYPE
#define TYPE double
    .d = {
        .activate = RNN_INAME(activate),
        .step = {
#define RNN_CELL(CODE, name, gates, states, packed, in_place) [RNN_CELL_##CODE] = RNN_INAME(name),
#include "cells.def.h"
#undef RNN_CELL
        },
        .gemm_packed = RNN_INAME(gemm_packed),
        .packed_projection = RNN_PACKED_PROJECTION_D,
#ifdef RNN_TABLE_EXTRA_D
        RNN_TABLE_EXTRA_D
#endif
    },
#undef TYPE
};
