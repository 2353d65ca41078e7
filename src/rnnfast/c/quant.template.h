/*
 * quant.template.h -- the portable reduced-precision products, written once per
 * instruction set (no include guard; see template.h). Parameter: ISA_SUFFIX.
 * Defines rnn_qgemm_i8_<isa> and rnn_qgemm_bf16_<isa>; quant.h describes the
 * packed forms and the arithmetic every instruction set shares.
 *
 * int8: each row of A is quantized (rnn_quant_row: symmetric, per row), the
 * products summed exactly in int32, and C = fma((float)acc, sa * ws[j], bias[j]).
 * bf16: each row of A is rounded to bf16, and C[j] = bias[j] + sum over pairs of
 * a[2g+1] b[2g+1] then a[2g] b[2g], each product exact in float, each sum rounded:
 * the order of AVX512_BF16's vdpbf16ps (x86/avx512_bf16_quant.h).
 */

#ifndef RNN_QUANT_OWN_I8           /* an ISA with its own int8 product defines it */
/* C (M x N) = quantized product of A (M x K) and the packed int8 block Bq. */
static void RNN_QNAME(qgemm_i8)(long M, long N, long K, const float *A, long lda,
                                const signed char *Bq, const float *scale, const int *comp,
                                const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, g, j;
    short stackq[RNN_QSTACK / sizeof(short)];
    short *q = (size_t)Kp * sizeof(short) <= sizeof stackq ? stackq
                                                           : (short *)malloc((size_t)Kp * sizeof(short));
    (void)comp;                     /* signed activations: no offset to compensate */
    if (q == NULL)
        return;
    for (i = 0; i < M; i++) {
        float sa = rnn_quant_row_s16(A + i * lda, K, Kp, q);
        for (p = 0; p < np; p++) {
            const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
            long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
            int acc[RNN_PANEL_COLS];
            for (j = 0; j < RNN_PANEL_COLS; j++) acc[j] = 0;
            for (g = 0; g < Kp / 4; g++) {
                const signed char *b = bp + g * 4 * RNN_PANEL_COLS;
                int q0 = q[4 * g], q1 = q[4 * g + 1], q2 = q[4 * g + 2], q3 = q[4 * g + 3];
                for (j = 0; j < RNN_PANEL_COLS; j++)
                    acc[j] += q0 * b[4 * j] + q1 * b[4 * j + 1] + q2 * b[4 * j + 2] + q3 * b[4 * j + 3];
            }
            for (j = 0; j < nc; j++) {
                long col = p * RNN_PANEL_COLS + j;
                C[i * ldc + col] = fmaf((float)acc[j], sa * scale[col], bias ? bias[col] : 0.0f);
            }
        }
    }
    if (q != stackq)
        free(q);
}
#endif

#ifndef RNN_QUANT_OWN_I8G          /* an ISA with its own K-grouped int8 product defines it */
/* C (M x N) = K-grouped quantized product of A (M x K) and the packed int8 block Bq
 * (quant.h): per group of kg rows of K its own row scale and column scales. */
static void RNN_QNAME(qgemm_i8g)(long M, long N, long K, const float *A, long lda,
                                 const signed char *Bq, const float *scale, const int *comp,
                                 long lds, long kg, const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_i8(K), ng = rnn_qgroups(Kp, kg), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS;
    long i, p, g, k, j;
    short stackq[RNN_QSTACK / sizeof(short)];
    float stacks[RNN_QGSCALES];
    short *q = (size_t)Kp * sizeof(short) <= sizeof stackq ? stackq
                                                           : (short *)malloc((size_t)Kp * sizeof(short));
    float *sa = ng <= RNN_QGSCALES ? stacks : (float *)malloc((size_t)ng * sizeof(float));
    (void)comp;                     /* signed activations: no offset to compensate */
    if (q == NULL || sa == NULL)
        goto done;
    for (i = 0; i < M; i++) {
        float *c = C + i * ldc;
        for (g = 0; g < ng; g++) {
            long k0 = g * kg, n = K - k0 < kg ? K - k0 : kg, np4 = Kp - k0 < kg ? Kp - k0 : kg;
            sa[g] = rnn_quant_row_lev(A + i * lda + k0, n, np4, q + k0, RNN_QLEVELS16);
        }
        for (j = 0; j < N; j++) c[j] = bias ? bias[j] : 0.0f;
        for (p = 0; p < np; p++) {
            const signed char *bp = Bq + p * Kp * RNN_PANEL_COLS;
            long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
            for (g = 0; g < ng; g++) {
                long k1 = (g + 1) * kg < Kp ? (g + 1) * kg : Kp;
                int acc[RNN_PANEL_COLS];
                for (j = 0; j < RNN_PANEL_COLS; j++) acc[j] = 0;
                for (k = g * kg; k < k1; k += 4) {
                    const signed char *b = bp + k * RNN_PANEL_COLS;
                    int q0 = q[k], q1 = q[k + 1], q2 = q[k + 2], q3 = q[k + 3];
                    for (j = 0; j < RNN_PANEL_COLS; j++)
                        acc[j] += q0 * b[4 * j] + q1 * b[4 * j + 1] + q2 * b[4 * j + 2] + q3 * b[4 * j + 3];
                }
                for (j = 0; j < nc; j++) {
                    long col = p * RNN_PANEL_COLS + j;
                    c[col] = fmaf((float)acc[j], sa[g] * scale[g * lds + col], c[col]);
                }
            }
        }
    }
done:
    if (q != stackq)
        free(q);
    if (sa != stacks)
        free(sa);
}
#endif

#ifndef RNN_QUANT_OWN_BF16          /* an ISA with its own bf16 product defines it */
/* C (M x N) = bias + bf16(A) (M x K) times the packed bf16 block Bq. */
static void RNN_QNAME(qgemm_bf16)(long M, long N, long K, const float *A, long lda,
                                  const unsigned short *Bq, const float *bias, float *C, long ldc)
{
    long Kp = rnn_qpad_bf16(K), np = (N + RNN_PANEL_COLS - 1) / RNN_PANEL_COLS, i, p, g, j, k;
    float stacka[RNN_QSTACK / sizeof(float)];
    float *a = (size_t)Kp * sizeof(float) <= sizeof stacka ? stacka
                                                           : (float *)malloc((size_t)Kp * sizeof(float));
    if (a == NULL)
        return;
    for (i = 0; i < M; i++) {
        for (k = 0; k < K; k++) a[k] = rnn_bf16_to_f32(rnn_f32_to_bf16(A[i * lda + k]));
        for (; k < Kp; k++) a[k] = 0.0f;
        for (p = 0; p < np; p++) {
            const unsigned short *bp = Bq + p * Kp * RNN_PANEL_COLS;
            long nc = N - p * RNN_PANEL_COLS < RNN_PANEL_COLS ? N - p * RNN_PANEL_COLS : RNN_PANEL_COLS;
            float acc[RNN_PANEL_COLS];
            for (j = 0; j < RNN_PANEL_COLS; j++)
                acc[j] = bias && j < nc ? bias[p * RNN_PANEL_COLS + j] : 0.0f;
            for (g = 0; g < Kp / 2; g++) {
                const unsigned short *b = bp + g * 2 * RNN_PANEL_COLS;
                float a0 = a[2 * g], a1 = a[2 * g + 1];
                for (j = 0; j < RNN_PANEL_COLS; j++) {
                    /* products of two bf16 values are exact in float: one rounding per sum */
                    acc[j] += a1 * rnn_bf16_to_f32(b[2 * j + 1]);
                    acc[j] += a0 * rnn_bf16_to_f32(b[2 * j]);
                }
            }
            memcpy(C + i * ldc + p * RNN_PANEL_COLS, acc, (size_t)nc * sizeof(float));
        }
    }
    if (a != stacka)
        free(a);
}
#endif
