/*
 * x86/amx_quant.h -- the int8 product on AMX-INT8 tiles (quant.h), for products of 16
 * rows or more (a batch's steps, the input projection); fewer rows run the AVX512-VNNI
 * kernel. The sums are exact int32 either way and the epilogue is the VNNI kernel's
 * (rnn_vnni_store), so a row's result is bitwise the same whichever runs it.
 *
 * The packed int8 form is already what tdpbusd reads: a panel's group g holds 64
 * columns x 4 bytes, so a B tile (16 groups x 16 columns x 4 bytes) is 16 rows of 64
 * bytes, 256 bytes apart. Per 16 quantized rows (u8 = q + 128, zero rows padding the
 * last block) and panel: four C tiles (16 x 16 int32), one A tile (16 rows x 64 bytes
 * of K) and one B tile per 64 values of K, and a tail tile pair for K % 64.
 *
 * Linux asks a process to request the AMX tile state first (arch_prctl
 * ARCH_REQ_XCOMP_PERM); rnn_cpu_has_amx_int8 does, once. Each call configures the tiles
 * of its own thread (ldtilecfg) and releases them when done.
 *
 * Included by quant.h where runtime dispatch is built (GCC on x86-64 Linux).
 */
#ifndef RNNFAST_X86_AMX_QUANT_H
#define RNNFAST_X86_AMX_QUANT_H

#include <sys/syscall.h>
#include <unistd.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512bf16,amx-tile,amx-int8,avx2,fma")
#include <immintrin.h>

#define RNN_AMX_ROWS 16

typedef struct {
    unsigned char palette, start_row;
    unsigned char reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} rnn_amx_cfg;

/* Tiles 0-3: C (16 x 16 int32); 4: A (16 x 64 bytes); 5: A's K tail (16 x tb bytes);
 * 6: B (16 groups x 64 bytes); 7: B's K tail (tb / 4 groups x 64 bytes). */
RNN_INLINE void rnn_amx_config(long tb)
{
    rnn_amx_cfg cfg;
    int t;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (t = 0; t < 7; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = RNN_AMX_ROWS;
    }
    cfg.colsb[5] = (unsigned short)(tb > 0 ? tb : 64);
    cfg.colsb[7] = 64;
    cfg.rows[7] = (unsigned char)(tb > 0 ? tb / 4 : RNN_AMX_ROWS);
    _tile_loadconfig(&cfg);
}

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
    for (kk = 0; kk < kfull; kk += 64) {
        const signed char *b = bp + (kk / 4) * 4 * RNN_PANEL_COLS;
        _tile_loadd(4, u + kk, ldu);
        _tile_loadd(6, b, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(0, 4, 6);
        _tile_loadd(6, b + 64, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(1, 4, 6);
        _tile_loadd(6, b + 128, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(2, 4, 6);
        _tile_loadd(6, b + 192, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(3, 4, 6);
    }
    if (kfull < Kp) {
        const signed char *b = bp + (kfull / 4) * 4 * RNN_PANEL_COLS;
        _tile_loadd(5, u + kfull, ldu);
        _tile_loadd(7, b, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(0, 5, 7);
        _tile_loadd(7, b + 64, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(1, 5, 7);
        _tile_loadd(7, b + 128, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(2, 5, 7);
        _tile_loadd(7, b + 192, 4 * RNN_PANEL_COLS);
        _tile_dpbusd(3, 5, 7);
    }
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
    rnn_amx_config(Kp % 64);
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

#pragma GCC pop_options

/* Whether this CPU runs AMX-INT8 and the OS gave this process the tile state. */
static int rnn_cpu_has_amx_int8(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = rnn_cpu_has_avx512_bf16() && __builtin_cpu_supports("amx-tile")
                && __builtin_cpu_supports("amx-int8")
                && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    }
    return known;
}

#endif /* RNNFAST_X86_AMX_QUANT_H */
