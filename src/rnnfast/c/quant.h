/*
 * quant.h -- reduced-precision products: int8 and bf16 weights, float32 everything
 * else (gate math, state, biases, outputs). The engine (engine.template.h) calls
 * rnn_qgemm() in place of the float product wherever a layer carries reduced-precision
 * weights (rnn_weights.q); rnnfast/_quant.py quantizes and packs them.
 *
 * Packed forms (a K x N block, panels of RNN_PANEL_COLS = 64 columns as layout.h,
 * the last panel zero-padded; K padded with zero rows to a multiple of 4 or 2):
 *   int8: panel p holds Kp/4 groups; group g holds, for each column j of the panel,
 *         the 4 bytes W[4g..4g+3, j] (the operand of vpdpbusd). Per column j: the
 *         scale ws[j] (W ~ ws[j] * Wq[:, j], symmetric, |Wq| <= 127) and comp[j] =
 *         128 * sum_k Wq[k, j] (the unsigned-offset compensation of vpdpbusd).
 *         K-grouped int8 (rnn_qmat.kg > 0, a multiple of 4): the same bytes, with
 *         ng = ceil(Kp / kg) scales and compensations per column, one per group of kg
 *         rows of K (group stride lds: the matrix's column count), ws[g][j] and
 *         comp[g][j] = 128 * sum over the group's k of Wq[k, j].
 *   bf16: panel p holds Kp/2 pairs; pair g holds, per column j, W[2g, j], W[2g+1, j]
 *         as bfloat16 (round to nearest even) (the operand of vdpbf16ps).
 * Either way a block's size is rnn_packed_size(Kp, N) elements and unit blocks
 * follow one another as in layout.h (rnn_packed_offset with Kp).
 *
 * The arithmetic, identical on every instruction set (so int8 results are bitwise
 * the same on all of them, and do not depend on the batch or the thread count; bf16
 * too, but on AMX tiles, whose sums are their own: see x86/amx_quant.h):
 *   int8: per row of A, m = max |a_k|, sa = m / 127, q_k = rint(clamp(a_k * (127 / m),
 *         -127, 127)) (0 when m == 0); acc_j = sum_k q_k Wq[k, j] exactly in int32;
 *         C_j = fma((float)acc_j, sa * ws[j], bias_j).
 *   K-grouped int8: the same per group of kg rows of K, with int16 activations: the
 *         row's values in the group quantized to q_k in [-32767, 32767] with their own
 *         scale sa_g = m_g / 32767 (int8 activations there gave the bundled digits
 *         models most of their error), summed exactly in int32 per group (|sum| <=
 *         kg 32767 127 < 2**31 for kg <= 512): C_j = bias_j, then for g = 0, 1, ...: C_j = fma((float)acc_gj,
 *         sa_g * ws[g][j], C_j).
 *   bf16: a_k rounded to bf16; C_j = bias_j + sum over k pairs (2g+1 first, then 2g)
 *         of a_k b_kj, one float rounding per sum. Intel's vdpbf16ps (and tdpbf16ps)
 *         take subnormal inputs as zero and flush subnormal sums (the SDM's "daz in,
 *         ftz out"; AMD's Zen 4 keeps them): subnormal values differ there, no other.
 *
 * The kernel sets (rnn_qisas[]): baseline (portable C), avx2 (int8 by vpmaddubsw on
 * |q| and the weights signed by q: pair sums within 2 127 127, no saturation; the
 * K-grouped product by vpmaddwd on 16-bit values; bf16 by FMA on pairs widened with an
 * and and a shift), avx512_vnni (int8 by vpdpbusd; the K-grouped
 * product's int16 activations split in two bytes, each through vpdpbusd), avx512_bf16 (bf16 by
 * vdpbf16ps), avx512_amx (int8 products of 16 rows or more on AMX-INT8 tiles, every
 * bf16 product on AMX-BF16 tiles). rnn_quant_select(level), called by the one dispatcher (isa.h) whenever
 * it selects an ISA level, makes the best set at or below that level current.
 */
#ifndef RNNFAST_QUANT_H
#define RNNFAST_QUANT_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "enums.h"
#include "layout.h"
#include "template.h"

/* Bytes of stack for a quantized row; longer rows (K beyond about 4000) take the heap. */
#define RNN_QSTACK 16384
/* Bytes of stack for a group of quantized rows (the AVX-512 products quantize up to
 * RNN_QGROUP rows, then run every panel over them, so that a panel is read from cache
 * once per group, not once per tile); longer rows take the heap (K beyond 16384). */
#define RNN_QGROUP_BYTES 65536
#define RNN_QGROUP 64

/* Rows per group for rows of `bytes` bytes: as many as fit, 1 to RNN_QGROUP, and 0
 * when one row does not fit (the caller takes the heap for RNN_QGROUP rows). */
static inline long rnn_qgroup_rows(long bytes)
{
    long n = RNN_QGROUP_BYTES / (bytes > 0 ? bytes : 1);
    return n > RNN_QGROUP ? RNN_QGROUP : n;
}

#define RNN_QNAME(name) RNN_CAT(RNN_CAT(rnn_, name), RNN_CAT(_, ISA_SUFFIX))

#if defined(_MSC_VER)
#define RNN_QTLS __declspec(thread)
#else
#define RNN_QTLS __thread
#endif

/* Named rows: the blocked strategy runs one product per unit block on the same rows of
 * A (a step's state, a chunk's input rows), so a product that prepares its rows (the
 * bf16 rounding) may keep them, per thread, for the next product on the same rows. The
 * engine names the rows around such a product (rnn_qrows_name: its call's serial,
 * rnn_qrows_serial, and a part of the call whose rows do not change, with the rows'
 * address and shape), and unnames them after (call 0). Unnamed rows are prepared by
 * every product. The kept rows are the same rounding of the same values: the same bits. */
typedef struct {
    long call, part;
} rnn_qrows;

static RNN_QTLS rnn_qrows rnn_qrows_now;
static long rnn_qrows_calls;

/* A new call's serial (never 0). */
static inline long rnn_qrows_serial(void) { return __atomic_add_fetch(&rnn_qrows_calls, 1, __ATOMIC_RELAXED); }

/* Name this thread's next products' rows (call 0: unnamed). */
static inline void rnn_qrows_name(long call, long part)
{
    rnn_qrows_now.call = call;
    rnn_qrows_now.part = part;
}

static inline long rnn_qpad_i8(long K) { return (K + 3) & ~3L; }
static inline long rnn_qpad_bf16(long K) { return (K + 1) & ~1L; }
static inline long rnn_qpad(int prec, long K)
{
    return prec == RNN_PREC_INT8 ? rnn_qpad_i8(K) : rnn_qpad_bf16(K);
}

/* float -> bfloat16 bits, round to nearest even (NaN stays NaN). */
static inline unsigned short rnn_f32_to_bf16(float f)
{
    unsigned int u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

static inline float rnn_bf16_to_f32(unsigned short b)
{
    unsigned int u = (unsigned int)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The row's scale parts: m = max |a_k| (NaN ignored), inv = 127 / m (0 when m == 0). */
static inline float rnn_quant_inv(float m) { return m > 0.0f ? 127.0f / m : 0.0f; }

/* a_k * inv clamped to [-127, 127] (NaN -> 127, as vminps/vmaxps give). */
static inline float rnn_quant_clamp(float v)
{
    v = v < 127.0f ? v : 127.0f;
    return v > -127.0f ? v : -127.0f;
}

/* q[0:Kp] = the row quantized (zeros past K), as int16; returns its scale sa. */
static inline float rnn_quant_row_s16(const float *a, long K, long Kp, short *q)
{
    float m = 0.0f, inv;
    long k;
    for (k = 0; k < K; k++) {
        float v = fabsf(a[k]);
        m = v > m ? v : m;
    }
    inv = rnn_quant_inv(m);
    for (k = 0; k < K; k++) q[k] = (short)nearbyintf(rnn_quant_clamp(a[k] * inv));
    for (; k < Kp; k++) q[k] = 0;
    return m / 127.0f;
}

/* The K-grouped int8 products' activation levels: int16 (quant.h, K-grouped int8). */
#define RNN_QLEVELS16 32767.0f

/* q[0:Kp] = the row quantized to +-lev levels (zeros past K), as int16; returns its
 * scale m / lev (rnn_quant_row_s16 with lev = 127; NaN -> lev, as there). */
static inline float rnn_quant_row_lev(const float *a, long K, long Kp, short *q, float lev)
{
    float m = 0.0f, inv;
    long k;
    for (k = 0; k < K; k++) {
        float v = fabsf(a[k]);
        m = v > m ? v : m;
    }
    inv = m > 0.0f ? lev / m : 0.0f;
    for (k = 0; k < K; k++) {
        float v = a[k] * inv;
        v = v < lev ? v : lev;
        q[k] = (short)nearbyintf(v > -lev ? v : -lev);
    }
    for (; k < Kp; k++) q[k] = 0;
    return m / lev;
}

typedef void (*rnn_qgemm_i8_fn)(long M, long N, long K, const float *A, long lda,
                                const signed char *Bq, const float *scale, const int *comp,
                                const float *bias, float *C, long ldc);
/* The K-grouped int8 product: scale and comp (ng, lds), groups of kg rows of K. */
typedef void (*rnn_qgemm_i8g_fn)(long M, long N, long K, const float *A, long lda,
                                 const signed char *Bq, const float *scale, const int *comp,
                                 long lds, long kg, const float *bias, float *C, long ldc);
typedef void (*rnn_qgemm_bf16_fn)(long M, long N, long K, const float *A, long lda,
                                  const unsigned short *Bq, const float *bias, float *C, long ldc);

/* One kernel set: its name, the ISA level it belongs to, whether this CPU runs it. */
typedef struct {
    const char *name;
    rnn_isa_level level;
    int (*cpu_has)(void);
    rnn_qgemm_i8_fn i8;
    rnn_qgemm_bf16_fn bf16;
    rnn_qgemm_i8g_fn i8g;
} rnn_qkernels;

/* Groups of kg rows in a K of Kp rows (kg 0: one). */
static inline long rnn_qgroups(long Kp, long kg) { return kg > 0 && Kp > 0 ? (Kp + kg - 1) / kg : 1; }

/* Floats of stack for the K-grouped products' row scales (more take the heap). */
#define RNN_QGSCALES 2048

#define ISA_SUFFIX baseline
#include "quant.template.h"
#undef ISA_SUFFIX

static int rnn_cpu_has_qbaseline(void) { return 1; }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && (__GNUC__ >= 10) \
    && !defined(RNNFAST_NO_DISPATCH)
#define RNN_X86_QUANT 1
#include "x86/avx2_quant.h"
#include "x86/avx512_vnni_quant.h"
#include "x86/avx512_bf16_quant.h"
#if defined(__linux__) && (__GNUC__ >= 11)
#define RNN_X86_AMX 1
#include "x86/amx_quant.h"
#else
#define RNN_X86_AMX 0
#endif
#else
#define RNN_X86_QUANT 0
#endif

/* Every kernel set this build carries, lowest first. */
static const rnn_qkernels rnn_qisas[] = {
    {"baseline", RNN_ISA_BASELINE, rnn_cpu_has_qbaseline, rnn_qgemm_i8_baseline, rnn_qgemm_bf16_baseline,
     rnn_qgemm_i8g_baseline},
#if RNN_X86_QUANT
    {"avx2", RNN_ISA_AVX2, rnn_cpu_has_qavx2, rnn_qgemm_i8_avx2, rnn_qgemm_bf16_avx2, rnn_qgemm_i8g_avx2},
    {"avx512_vnni", RNN_ISA_AVX512, rnn_cpu_has_avx512_vnni, rnn_qgemm_i8_avx512_vnni,
     rnn_qgemm_bf16_avx2, rnn_qgemm_i8g_avx512_vnni},
    {"avx512_bf16", RNN_ISA_AVX512, rnn_cpu_has_avx512_bf16, rnn_qgemm_i8_avx512_vnni,
     rnn_qgemm_bf16_avx512_bf16, rnn_qgemm_i8g_avx512_vnni},
#if RNN_X86_AMX
    {"avx512_amx", RNN_ISA_AVX512, rnn_cpu_has_amx, rnn_qgemm_i8_amx, rnn_qgemm_bf16_amx,
     rnn_qgemm_i8g_avx512_vnni},
#endif
#endif
};

#define RNN_NQISAS ((int)(sizeof rnn_qisas / sizeof rnn_qisas[0]))

static const rnn_qkernels *rnn_qnow = &rnn_qisas[0];

/* Make the best kernel set at or below ISA level `level` that this CPU runs current. */
static void rnn_quant_select(int level)
{
    int i;
    rnn_qnow = &rnn_qisas[0];
    for (i = 0; i < RNN_NQISAS; i++)
        if ((int)rnn_qisas[i].level <= level && rnn_qisas[i].cpu_has())
            rnn_qnow = &rnn_qisas[i];
}

/* The kernel set named `name` if this build and CPU run it, else NULL (tests). */
static const rnn_qkernels *rnn_quant_kernels(const char *name)
{
    int i;
    for (i = 0; i < RNN_NQISAS; i++)
        if (strcmp(rnn_qisas[i].name, name) == 0 && rnn_qisas[i].cpu_has())
            return &rnn_qisas[i];
    return NULL;
}

/* One reduced-precision matrix, every direction: the packed blocks (per direction
 * `per_dir` elements apart) and, for int8, the column scales and compensations
 * ((ndir, ng, N) in the layout's column order: ng = 1 per column, kg 0; else ng groups
 * of kg rows of K). */
typedef struct {
    const void *data;
    const float *scale;
    const int *comp;
    long per_dir;
    long ncols;
    long kg;                        /* int8: rows of K per scale, 0: one scale per column */
    long ng;                        /* int8: scales per column (1 when kg is 0) */
} rnn_qmat;

/* A layer's reduced-precision weights: W (input; data NULL: the input projection runs
 * in float32), U (recurrent; GRU reset-before: its [z r] and [h] columns as two
 * blocks), Wr (LSTM projection, data NULL without). */
typedef struct {
    int prec;                       /* RNN_PREC_INT8 or RNN_PREC_BF16 */
    rnn_qmat W, U, Wr;
} rnn_qweights;

/* C (M x N) = bias + A (M x K) times the block of matrix m (direction d) that starts
 * `off` elements into the direction's packed data and at column `col0`, in the
 * layer's precision, on the current kernel set. */
static inline void rnn_qgemm(int prec, const rnn_qmat *m, long d, long off, long col0, long M,
                             long N, long K, const float *A, long lda, const float *bias, float *C,
                             long ldc)
{
    if (M <= 0 || N <= 0)
        return;
    if (prec == RNN_PREC_INT8 && m->kg > 0)
        rnn_qnow->i8g(M, N, K, A, lda, (const signed char *)m->data + d * m->per_dir + off,
                      m->scale + d * m->ng * m->ncols + col0, m->comp + d * m->ng * m->ncols + col0,
                      m->ncols, m->kg, bias, C, ldc);
    else if (prec == RNN_PREC_INT8)
        rnn_qnow->i8(M, N, K, A, lda, (const signed char *)m->data + d * m->per_dir + off,
                      m->scale + d * m->ncols + col0, m->comp + d * m->ncols + col0, bias, C, ldc);
    else
        rnn_qnow->bf16(M, N, K, A, lda, (const unsigned short *)m->data + d * m->per_dir + off,
                       bias, C, ldc);
}

#endif /* RNNFAST_QUANT_H */
