/*
 * cells.def.h -- THE list of the cells the compiled core runs: one line per cell.
 *
 *     RNN_CELL(CODE, name, gates, states, packed, in_place)
 *
 *   CODE      its code: RNN_CELL_<CODE> (enums.h), rnnfast._kernels.RNN_CELL_<CODE> in
 *             Python (cells.py's KernelCell names it in lower case)
 *   name      its gate math, one step for a block of rows: RNN_INAME(name) in
 *             cellmath.template.h, taking a `const RNN_TNAME(cell_args) *`
 *   gates     gates per unit: its weights have gates * H columns
 *   states    1 (h) or 2 (h, c)
 *   packed    1 when its per-step product runs on packed weights in unit blocks (both
 *             strategies), 0 when the step makes its own products by BLAS (item
 *             strategy only, gate-major columns)
 *   in_place  1 when its gate math reads the old state where it writes the new one
 *             (the blocked strategy then copies the old state over first)
 *
 * Everything else is generated from this list (an X-macro: the includer defines
 * RNN_CELL, includes this file, undefines RNN_CELL): the enum (enums.h), every ISA's
 * kernel table (kernels.template.h, kernel_table.template.h), the cell properties
 * (engine.h) and, through them, Python's codes and gate counts (_kernels.pyx). Codes
 * are the line numbers from 0: append new cells at the end. No include guard (it is
 * meant to be included many times); named .h so that the build's and the sdist's
 * globs of the C headers take it.
 */
RNN_CELL(SIMPLE, simple, 1, 1, 1, 0)       /* SimpleRNN: h = act(x W + h U + b) */
RNN_CELL(GRU, gru_ra, 3, 1, 1, 1)          /* GRU reset-after (PyTorch; Keras reset_after=True) */
RNN_CELL(GRU_RB, gru_rb, 3, 1, 0, 1)       /* GRU reset-before (Keras reset_after=False) */
RNN_CELL(LSTM, lstm, 4, 2, 1, 0)           /* LSTM, with or without a projection */
RNN_CELL(LSTM_PEEP, lstm_peep, 4, 2, 1, 0)  /* LSTM with ONNX peepholes and input_forget */
