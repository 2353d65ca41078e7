/*
 * x86/amx_quant.h -- the int8 and bf16 products on AMX tiles (quant.h).
 *
 * int8 (AMX-INT8), for products of 16 rows or more (a batch's steps, the input
 * projection); fewer rows run the AVX512-VNNI kernel. The sums are exact int32 either
 * way and the epilogue is the VNNI kernel's (rnn_vnni_store), so a row's result is
 * bitwise the same whichever runs it.
 *
 * The packed int8 form is already what tdpbusd reads: a panel's group g holds 64
 * columns x 4 bytes, so a B tile (16 groups x 16 columns x 4 bytes) is 16 rows of 64
 * bytes, 256 bytes apart. Per 16 quantized rows (u8 = q + 128, zero rows padding the
 * last block) and panel: four C tiles (16 x 16 int32), one A tile (16 rows x 64 bytes
 * of K) and one B tile per 64 values of K, and a tail tile pair for K % 64.
 *
 * bf16 (AMX-BF16), for every product, one row included. tdpbf16ps does not add a
 * row's products one rounded fma at a time as vdpbf16ps does: measured on a Xeon
 * (Emerald Rapids), its sums differ from that chain in either pair order in about half
 * of the outputs at K = 128 (and from one rounding per instruction in 5%), so tiles
 * cannot give avx512_bf16's bits. Every bf16 product of this kernel set runs on tiles
 * instead: a row's sum is then the same sequence of instructions whatever rows share
 * its tile (tested: the same bits for a row alone, in 5 rows and in 64), so results do
 * not depend on the batch or the thread count here either, and differ from the other
 * kernel sets within the bf16 sums' rounding. The packed bf16 form is what tdpbf16ps
 * reads too (a pair of K per column, 64 columns: a B tile is 16 pairs x 16 columns, 256
 * bytes apart). One row against a panel: 1.6 us at K = 128, N = 512 against 2.2 on
 * AVX512_BF16; 46 against 48-50 at K = 512, N = 2048; 64 rows at K = 512, N = 2048: 570
 * GFLOP/s on one core (C harness, Xeon). In layers (bench/README.md, session 21): batch 64
 * 4.2-9.4x vdpbf16ps, batch 1 1.35-2.0x; a GRU of H = 128 at batch 1 0.74x in one run,
 * 1.04x in another.
 *
 * Linux asks a process to request the AMX tile state first (arch_prctl
 * ARCH_REQ_XCOMP_PERM); rnn_cpu_has_amx does, once. Each call configures the tiles of
 * its own thread (ldtilecfg) and releases them when done.
 *
 * Included by quant.h where runtime dispatch is built (GCC on x86-64 Linux).
 */
#ifndef RNNFAST_X86_AMX_QUANT_H
#define RNNFAST_X86_AMX_QUANT_H

#include <sys/syscall.h>
#include <unistd.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512bf16,amx-tile,amx-int8,amx-bf16,avx2,fma")
#include <immintrin.h>

#define RNN_AMX_ROWS 16

typedef struct {
    unsigned char palette, start_row;
    unsigned char reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} rnn_amx_cfg;

/* Tiles 0-3: C (rows x 16 int32 or float); 4: A (rows x 64 bytes); 5: A's K tail
 * (rows x tb bytes); 6: B (16 groups of 4 bytes x 64 bytes); 7: B's K tail (tb / 4
 * groups x 64 bytes). rows: 1 to 16. */
RNN_INLINE void rnn_amx_config(long tb, long rows)
{
    rnn_amx_cfg cfg;
    int t;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = (unsigned char)(t < 6 ? rows : RNN_AMX_ROWS);
    }
    cfg.colsb[5] = (unsigned short)(tb > 0 ? tb : 64);
    cfg.rows[7] = (unsigned char)(tb > 0 ? tb / 4 : RNN_AMX_ROWS);
    /* GCC 12 may drop stores to the parts of cfg it does not see ldtilecfg read (seen in
     * a harness: bytes 33-63 left as they were, a #GP): make all of it visible */
    __asm__ volatile("" : : "r"(&cfg) : "memory");
    _tile_loadconfig(&cfg);
}

/* One step of K for a panel's four C tiles (0-3): A tile TA from a (lda bytes apart),
 * then four B tiles TB, 64 bytes apart from b (16 columns each), each through DP. */
#define RNN_AMX_STEP4(DP, TA, TB, a, lda, b)                                                   \
    do {                                                                                   \
        const char *b_ = (const char *)(b);                                                \
        _tile_loadd(TA, a, lda);                                                           \
        _tile_loadd(TB, b_, 4 * RNN_PANEL_COLS);                                           \
        DP(0, TA, TB);                                                                     \
        _tile_loadd(TB, b_ + 64, 4 * RNN_PANEL_COLS);                                      \
        DP(1, TA, TB);                                                                     \
        _tile_loadd(TB, b_ + 128, 4 * RNN_PANEL_COLS);                                     \
        DP(2, TA, TB);                                                                     \
        _tile_loadd(TB, b_ + 192, 4 * RNN_PANEL_COLS);                                     \
        DP(3, TA, TB);                                                                     \
    } while (0)

/* C[0:nr, panel p] for 16 quantized rows u (row stride ldu; rows past nr are zeros). */
static void rnn_amx_block(long Kp, long N, long p, const unsigned char *u, long ldu, long nr,
                          const float *sa, const signed char *Bq, const float *scale,
                          const int *comp, const float *bias, float *C, long ldc)
{
    int acc[4][RNN_AMX_ROWS * 16] __attribute__((aligned(64)));
    const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
    long kfull = Kp / 64 * 64, kk, r;
    int ct;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (kk = 0; kk < kfull; kk += 64)
        RNN_AMX_STEP4(_tile_dpbusd, 4, 6, u + kk, ldu, bp + kk * RNN_PANEL_COLS);
    if (kfull < Kp)
        RNN_AMX_STEP4(_tile_dpbusd, 5, 7, u + kfull, ldu, bp + kfull * RNN_PANEL_COLS);
    _tile_stored(0, acc[0], 64);
    _tile_stored(1, acc[1], 64);
    _tile_stored(2, acc[2], 64);
    _tile_stored(3, acc[3], 64);
    for (r = 0; r < nr; r++)
        for (ct = 0; ct < 4; ct++) {
            long col = p * RNN_PANEL_COLS + 16 * ct;
            if (col < N)
                rnn_vnni_store(_mm512_load_si512((const void *)(acc[ct] + r * 16)), col, N - col,
                               sa[r], scale, comp, bias, C + r * ldc);
        }
}

static void rnn_qgemm_i8_amx(long M, long N, long K, const float *A, long lda,
                             const signed char *Bq, const float *scale, const int *comp,
                             const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, r, r0, mg, mpad;
    long grp = rnn_qgroup_rows(Kp) / RNN_AMX_ROWS * RNN_AMX_ROWS;
    unsigned char u[RNN_QGROUP_BYTES] __attribute__((aligned(64)));
    float sa[RNN_QGROUP];
    if (M < RNN_AMX_ROWS || grp == 0) {     /* few rows (or rows too long for the stack) */
        rnn_qgemm_i8_avx512_vnni(M, N, K, A, lda, Bq, scale, comp, bias, C, ldc);
        return;
    }
    rnn_amx_config(Kp % 64, RNN_AMX_ROWS);
    for (i = 0; i < M; i += grp) {
        mg = M - i < grp ? M - i : grp;
        mpad = (mg + RNN_AMX_ROWS - 1) / RNN_AMX_ROWS * RNN_AMX_ROWS;
        for (r = 0; r < mg; r++)
            sa[r] = rnn_quant_row_u8_avx512(A + (i + r) * lda, K, Kp, u + r * Kp);
        if (mpad > mg)
            memset(u + mg * Kp, 0, (size_t)((mpad - mg) * Kp));
        for (p = 0; p < np; p++)
            for (r0 = 0; r0 < mg; r0 += RNN_AMX_ROWS)
                rnn_amx_block(Kp, N, p, u + r0 * Kp, Kp, mg - r0 < RNN_AMX_ROWS ? mg - r0 : RNN_AMX_ROWS,
                              sa + r0, Bq, scale, comp, bias, C + (i + r0) * ldc, ldc);
    }
    _tile_release();
}

/* C[0:nr, panel p] = bias + the nr rows of a16 (bf16, row stride lda16) times panel p,
 * on the configured tiles (nr: the configured rows). A panel whose 64 columns are all
 * C's loads the bias into every row of the C tiles (a stride of 0) and stores them
 * straight into C; the last, partial panel goes through a buffer. Against the buffer
 * for every panel: 64 rows, K = 128, N = 512 1.6-2.0x (37.9-42.6 -> 19.0-26.6 us;
 * K = 512, N = 2048: 1.1-1.9x; interleaved, this Xeon); layers at B = 64 within the
 * box's noise (bf16 H = 128: 1.16-1.25x, while int8, unchanged, moved 0.83-1.0x). */
static void rnn_amx_bf16_block(long Kp, long N, long p, const unsigned short *a16, long lda16, long nr,
                               const unsigned short *Bq, const float *bias, float *C, long ldc)
{
    float acc[4][RNN_AMX_ROWS * 16] __attribute__((aligned(64)));
    const unsigned short *bp = Bq + p * Kp * RNN_PANEL_COLS;
    long kfull = Kp / 32 * 32, kk, r, col0 = p * RNN_PANEL_COLS;
    int ct, whole = col0 + RNN_PANEL_COLS <= N;   /* the panel's 64 columns are all C's */
    if (bias != NULL && whole) {    /* every row starts from the bias: a stride of 0 */
        _tile_loadd(0, bias + col0, 0);
        _tile_loadd(1, bias + col0 + 16, 0);
        _tile_loadd(2, bias + col0 + 32, 0);
        _tile_loadd(3, bias + col0 + 48, 0);
    } else if (bias != NULL) {
        for (ct = 0; ct < 4; ct++) {
            long col = col0 + 16 * ct;
            __m512 b0 = _mm512_maskz_loadu_ps(rnn_vnni_mask(N - col), bias + col);
            for (r = 0; r < nr; r++) _mm512_store_ps(acc[ct] + r * 16, b0);
        }
        _tile_loadd(0, acc[0], 64);
        _tile_loadd(1, acc[1], 64);
        _tile_loadd(2, acc[2], 64);
        _tile_loadd(3, acc[3], 64);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (kk = 0; kk < kfull; kk += 32)
        RNN_AMX_STEP4(_tile_dpbf16ps, 4, 6, a16 + kk, lda16 * 2, bp + kk * RNN_PANEL_COLS);
    if (kfull < Kp)
        RNN_AMX_STEP4(_tile_dpbf16ps, 5, 7, a16 + kfull, lda16 * 2, bp + kfull * RNN_PANEL_COLS);
    if (whole) {                    /* straight into C */
        _tile_stored(0, C + col0, ldc * 4);
        _tile_stored(1, C + col0 + 16, ldc * 4);
        _tile_stored(2, C + col0 + 32, ldc * 4);
        _tile_stored(3, C + col0 + 48, ldc * 4);
        return;
    }
    _tile_stored(0, acc[0], 64);
    _tile_stored(1, acc[1], 64);
    _tile_stored(2, acc[2], 64);
    _tile_stored(3, acc[3], 64);
    for (ct = 0; ct < 4; ct++) {
        long col = col0 + 16 * ct;
        if (col < N)
            for (r = 0; r < nr; r++)
                _mm512_mask_storeu_ps(C + r * ldc + col, rnn_vnni_mask(N - col), _mm512_load_ps(acc[ct] + r * 16));
    }
}

/* The bf16 product on tiles, every row count (see the top of this file). Rows are
 * rounded in groups as avx512_bf16's (or taken from this thread's kept rows); each
 * group runs every panel over its blocks of 16 rows, then its last block of fewer rows
 * on tiles configured for them. */
static void rnn_qgemm_bf16_amx(long M, long N, long K, const float *A, long lda, const unsigned short *Bq,
                               const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_bf16(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, r0, mg, full;
    long tb = (Kp % 32) * 2, rows = M < RNN_AMX_ROWS ? M : RNN_AMX_ROWS;
    long grp = rnn_qgroup_rows(Kp * (long)sizeof(unsigned short));
    const unsigned short *named = rnn_bf16_named_rows(M, K, Kp, A, lda);
    unsigned short stacka[RNN_QGROUP_BYTES / sizeof(unsigned short)] __attribute__((aligned(64)));
    unsigned short *own;
    const unsigned short *a16;
    grp = grp >= RNN_AMX_ROWS ? grp / RNN_AMX_ROWS * RNN_AMX_ROWS : grp;
    own = named != NULL || grp > 0 ? stacka
                                   : (unsigned short *)malloc((size_t)(RNN_AMX_ROWS * Kp) * sizeof(unsigned short));
    if (own == NULL)
        return;
    if (grp == 0)
        grp = RNN_AMX_ROWS;
    rnn_amx_config(tb, rows);
    for (i = 0; i < M; i += grp) {
        mg = M - i < grp ? M - i : grp;
        a16 = rnn_bf16_group(named, i, mg, A, lda, K, Kp, own);
        full = mg / rows * rows;
        for (p = 0; p < np; p++)
            for (r0 = 0; r0 < full; r0 += rows)
                rnn_amx_bf16_block(Kp, N, p, a16 + r0 * Kp, Kp, rows, Bq, bias, C + (i + r0) * ldc, ldc);
        if (full < mg) {            /* the call's last rows (groups hold whole blocks) */
            rnn_amx_config(tb, mg - full);
            for (p = 0; p < np; p++)
                rnn_amx_bf16_block(Kp, N, p, a16 + full * Kp, Kp, mg - full, Bq, bias, C + (i + full) * ldc, ldc);
        }
    }
    _tile_release();
    if (own != stacka)
        free(own);
}

#pragma GCC pop_options

/* Whether this CPU runs AMX-INT8 and AMX-BF16 and the OS gave this process the tile
 * state. */
static int rnn_cpu_has_amx(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = rnn_cpu_has_avx512_bf16() && __builtin_cpu_supports("amx-tile")
                && __builtin_cpu_supports("amx-int8") && __builtin_cpu_supports("amx-bf16")
                && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    return known;
}

#endif /* RNNFAST_X86_AMX_QUANT_H */
