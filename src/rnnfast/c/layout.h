/*
 * layout.h -- where things are in the weights the products read.
 *
 * The packed form (the products of packgemm.template.h and x86/avx512_packgemm.h):
 * a recurrent layer multiplies its state by the same recurrent weights U at every
 * time step. A BLAS GEMM would repack U on every call, and a GEMV at batch 1 reads U
 * with the row stride of the whole matrix. Here U is packed once, when the layer is
 * built, into panels of RNN_PANEL_COLS (64) columns: panel p holds U[k, 64p : 64p + 64]
 * for k = 0..K-1, one contiguous row of 64 values after another, the last panel padded
 * with zeros. Each step then streams the panels once, in order, with no copy. The
 * input weights W are packed the same way where the kernel table says so
 * (packed_projection).
 *
 * Unit blocks: GRU (reset-after), LSTM without projection and SimpleRNN lay their G*H
 * gate columns out in ncb blocks of units (rnnfast/layers.py), each block holding its
 * units' gates side by side, so that a block's products and gate math are independent
 * tasks (the blocked strategy). Blocks are packed one after another, each padded to
 * whole panels.
 */
#ifndef RNNFAST_LAYOUT_H
#define RNNFAST_LAYOUT_H

#include "enums.h"

/* Values in the packed form of a K x N block. */
static inline long rnn_packed_size(long K, long N)
{
    return K * ((N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS) * RNN_PANEL_COLS;
}

/* First unit of unit block cb when H units are cut into ncb blocks. */
static inline long rnn_block_start(long H, long ncb, long cb)
{
    return cb * H / ncb;
}

/* Where unit block cb's panels start in one direction's packed weights (K rows, G
 * gates of H units in ncb blocks); cb = ncb gives the size of the whole. */
static inline long rnn_packed_offset(long K, long H, long G, long ncb, long cb)
{
    long c, off = 0;
    for (c = 0; c < cb; c++)
        off += rnn_packed_size(K, G * (rnn_block_start(H, ncb, c + 1) - rnn_block_start(H, ncb, c)));
    return off;
}

#endif /* RNNFAST_LAYOUT_H */
