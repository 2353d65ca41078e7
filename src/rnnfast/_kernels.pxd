# What rnnfast._kernels takes from the C core (src/rnnfast/c/, see its README.md).
#
# The codes shared with Python are defined once, in c/enums.h, and exposed as
# `cpdef enum`s: Python reads rnnfast._kernels.RNN_ACT_TANH, RNN_ISA_AVX2,
# RNN_TILE_ROWS, ... (and the enum classes rnn_activation, ...). The cell codes come
# from the cell list c/cells.def.h (RNN_CELL_GRU, ...: built at import, _kernels.pyx).

cdef extern from "c/enums.h":
    cpdef enum rnn_activation:
        RNN_ACT_LINEAR
        RNN_ACT_TANH
        RNN_ACT_SIGMOID
        RNN_ACT_HARD_SIGMOID
        RNN_ACT_HARD_SIGMOID_KERAS2
        RNN_ACT_RELU
        RNN_ACT_SOFTSIGN
        RNN_ACT_SOFTPLUS
        RNN_ACT_ELU
        RNN_ACT_SELU
        RNN_ACT_EXPONENTIAL
        RNN_ACT_COUNT

    # the cells: one per line of c/cells.def.h, which generates the enum; Python names
    # the codes from C (rnn_cell_name, _kernels.pyx), so no list of them here
    ctypedef int rnn_cell_t "rnn_cell"
    enum: RNN_CELL_COUNT

    cpdef enum rnn_isa_level:
        RNN_ISA_BASELINE
        RNN_ISA_AVX2
        RNN_ISA_AVX512
        RNN_ISA_COUNT

    cpdef enum rnn_strategy:
        RNN_STRATEGY_ITEM
        RNN_STRATEGY_BLOCKED

    cpdef enum rnn_dtype:
        RNN_FLOAT32
        RNN_FLOAT64

    cpdef enum rnn_packing:
        RNN_PANEL_COLS
        RNN_TILE_ROWS

    cpdef enum rnn_cpu_family:
        RNN_CPU_GENERIC
        RNN_CPU_ZEN4
        RNN_CPU_ZEN1
        RNN_CPU_FAMILY_COUNT

    cpdef enum rnn_profile_part:
        RNN_PROF_PROJECTION
        RNN_PROF_PRODUCT
        RNN_PROF_STEP
        RNN_PROF_WAIT
        RNN_PROF_PARTS
        RNN_PROF_SLOTS

    cpdef enum rnn_precision:
        RNN_PREC_FLOAT
        RNN_PREC_BF16
        RNN_PREC_INT8

    cpdef enum rnn_status:
        RNN_OK
        RNN_ERR_NOMEM
        RNN_ERR_ARGS


cdef extern from "c/engine.h" nogil:
    # what every cell's gate math takes (kernels.template.h), per type
    ctypedef struct rnn_cell_args_f:
        long nrows, H
        const float *xp
        long ldxp
        const float *gh
        long ldgh
        const float *bhn
        const float *peep
        long ldpeep
        const float *U
        long ldu
        float *h
        long ldh
        float *c
        long ldc
        const unsigned char *valid
        float *tmp
        float *work
        float clip
        int act, ract
        int input_forget
        const void *q
        long qdir

    ctypedef struct rnn_cell_args_d:
        long nrows, H
        const double *xp
        long ldxp
        const double *gh
        long ldgh
        const double *bhn
        const double *peep
        long ldpeep
        const double *U
        long ldu
        double *h
        long ldh
        double *c
        long ldc
        const unsigned char *valid
        double *tmp
        double *work
        double clip
        int act, ract
        int input_forget
        const void *q
        long qdir

# a cell's gate math: the entries of a kernel table's step[RNN_CELL_COUNT] array
ctypedef void (*rnn_step_fn_f)(const rnn_cell_args_f *a) noexcept nogil
ctypedef void (*rnn_step_fn_d)(const rnn_cell_args_d *a) noexcept nogil

cdef extern from "c/engine.h" nogil:
    # the kernel table of one instruction set (kernels.template.h), per type
    ctypedef struct rnn_kernels_f:
        void (*activate)(int kind, float *v, long n) noexcept nogil
        rnn_step_fn_f *step
        void (*gemm_packed)(long M, long N, long K, const float *A, long lda, const float *Bp,
                            const float *bias, float *C, long ldc) noexcept nogil
        int packed_projection

    ctypedef struct rnn_kernels_d:
        void (*activate)(int kind, double *v, long n) noexcept nogil
        rnn_step_fn_d *step
        void (*gemm_packed)(long M, long N, long K, const double *A, long lda, const double *Bp,
                            const double *bias, double *C, long ldc) noexcept nogil
        int packed_projection

    ctypedef struct rnn_kernels:
        rnn_kernels_f f
        rnn_kernels_d d

    # the instruction set (isa.h)
    rnn_isa_level rnn_select_isa(int level)
    rnn_isa_level rnn_isa_level_now()
    rnn_isa_level rnn_isa_supported()
    const rnn_kernels *rnn_isa_kernels(int level)
    # the product's blocking, per CPU family (kernels.h, isa.h)
    ctypedef struct rnn_tuning:
        long kblock
        long mblock
        int prefetch
    rnn_tuning rnn_tuning_now
    const rnn_tuning rnn_tunings[]
    rnn_cpu_family rnn_cpu_family_now()

    # blas.h: the row-major product the engine uses (for the tests of GRU reset-before)
    void rnn_gemm_rm_f(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, float *C, int ldc)
    void rnn_gemm_rm_d(int M, int N, int K, double alpha, const double *A, int lda,
                       const double *B, int ldb, double beta, double *C, int ldc)

    # packing (layout.h, common.template.h)
    long rnn_packed_size(long K, long N)
    long rnn_block_start(long H, long ncb, long cb)
    long rnn_packed_offset(long K, long H, long G, long ncb, long cb)
    void rnn_pack_f(long K, long N, const float *B, long ldb, float *dst)
    void rnn_pack_d(long K, long N, const double *B, long ldb, double *dst)

    # BLAS (blas.h): the routines of the OpenBLAS rnnfast loads, handed over at import
    ctypedef void rnn_sgemm_fn(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                               float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                               int *ldc) noexcept nogil
    ctypedef void rnn_dgemm_fn(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                               double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                               int *ldc) noexcept nogil
    ctypedef void rnn_sgemv_fn(char *trans, int *m, int *n, float *alpha, float *a, int *lda,
                               float *x, int *incx, float *beta, float *y, int *incy) noexcept nogil
    ctypedef void rnn_dgemv_fn(char *trans, int *m, int *n, double *alpha, double *a, int *lda,
                               double *x, int *incx, double *beta, double *y, int *incy) noexcept nogil
    void rnn_blas_init(rnn_sgemm_fn *sgemm, rnn_dgemm_fn *dgemm, rnn_sgemv_fn *sgemv,
                       rnn_dgemv_fn *dgemv)

    # OpenMP (openmp.h): the blocked strategy's waits, and its test hook
    int RNN_OPENMP_ENABLED
    int rnn_barrier_spins
    int rnn_barrier_work_factor
    int rnn_barrier_max_us
    int rnn_steal_spins
    int rnn_backoff_left, rnn_backoff_len
    int rnn_delay_tid, rnn_delay_us, rnn_delay_every, rnn_delay_where, rnn_delay_first
    enum: RNN_TEAM_LAST_MAX
    ctypedef struct rnn_team_facts:
        int nth, keep_team, backoff
        long slept, slept_warm
        long long wait_ns, own_ns, work_ns
        long ran[RNN_TEAM_LAST_MAX]
        long redo[RNN_TEAM_LAST_MAX]
        long skipped[RNN_TEAM_LAST_MAX]
        long long arrive_ns[RNN_TEAM_LAST_MAX]
    rnn_team_facts rnn_team_last

    # where the time goes (profile.h)
    double rnn_prof[]
    int rnn_prof_on
    # the OpenMP runtime's idle threads spin (engine.h)
    int rnn_omp_spins

    # reduced precision (quant.h): the packed int8 / bf16 weights of a layer, and the
    # kernel sets (one per instruction set, chosen with it; by name for the tests)
    ctypedef struct rnn_qmat:
        const void *data
        const float *scale
        const int *comp
        long per_dir
        long ncols
        long kg
        long ng

    ctypedef struct rnn_qweights:
        int prec
        rnn_qmat W
        rnn_qmat U
        rnn_qmat Wr

    ctypedef void (*rnn_qgemm_i8_fn)(long M, long N, long K, const float *A, long lda,
                                     const signed char *Bq, const float *scale, const int *comp,
                                     const float *bias, float *C, long ldc) noexcept nogil
    ctypedef void (*rnn_qgemm_i8g_fn)(long M, long N, long K, const float *A, long lda,
                                      const signed char *Bq, const float *scale, const int *comp,
                                      long lds, long kg, const float *bias, float *C,
                                      long ldc) noexcept nogil
    ctypedef void (*rnn_qgemm_bf16_fn)(long M, long N, long K, const float *A, long lda,
                                       const unsigned short *Bq, const float *bias, float *C,
                                       long ldc) noexcept nogil
    ctypedef struct rnn_qkernels:
        const char *name
        int (*cpu_has)() noexcept nogil
        rnn_qgemm_i8_fn i8
        rnn_qgemm_bf16_fn bf16
        rnn_qgemm_i8g_fn i8g

    int RNN_NQISAS
    const rnn_qkernels rnn_qisas[]
    const rnn_qkernels *rnn_qnow
    const rnn_qkernels *rnn_quant_kernels(const char *name)
    long rnn_qpad(int prec, long K)
    long rnn_qgroups(long Kp, long kg)

    # the kernel entry (engine.h)
    long rnn_cell_gates(rnn_cell_t cell)
    long rnn_cell_states(rnn_cell_t cell)
    int rnn_cell_packed(rnn_cell_t cell)
    int rnn_cell_in_place(rnn_cell_t cell)
    const char *rnn_cell_name(rnn_cell_t cell)
    ctypedef struct rnn_shape:
        rnn_dtype dtype
        rnn_cell_t cell
        rnn_activation act
        rnn_activation ract
        long T, B, In, H, G, Ho, P
        int ndir
        int reverse_first
        int bfirst
        int zero_output
        double clip
        int input_forget

    ctypedef struct rnn_plan:
        rnn_strategy strategy
        long ncb, bb, chunk, proj_min_rows, proj_max_tasks
        int num_threads, keep_team, partner

    ctypedef struct rnn_weights:
        const void *W
        const void *Wp
        const void *bx
        const void *U
        const void *Up
        const void *bhn
        const void *Wr
        const void *peep
        const rnn_qweights *q

    ctypedef struct rnn_buffers:
        const void *x
        const unsigned char *mask
        void *out
        void *h
        void *c
        const long *active
        const long *rows

    int rnn_layer_forward(const rnn_shape *shape, const rnn_plan *plan, const rnn_weights *weights,
                          const rnn_buffers *buffers)
    # the products' partner thread (rowops.team.h), handed over by _rowops at import
    ctypedef void (*rnn_partner_fn)(void *arg, long task) noexcept nogil
    ctypedef void (*rnn_partner_run)(rnn_partner_fn fn, void *arg, long ntask, int nth) noexcept nogil
    rnn_partner_run rnn_engine_partner

    # the products outside the recurrent layers (products.template.h)
    ctypedef struct rnn_products:
        rnn_dtype dtype
        long G1, G2, M, N, K
        const void *A
        long sa1, sa2, lda
        const void *B
        long sb1, sb2, ldb, cb
        const void *Bp
        const void *bias
        const void *addend
        int act
        void *C
        long sc1, sc2, ldc

    int rnn_run_products(const rnn_products *pr, int nth)

# NumPy's array object as its macros read it (c/ndarray.h; _ndarray.pxd): packed_rows'
# arrays of the common form read through their fields, not typed memoryviews
from cpython.object cimport PyObject, PyTypeObject
from rnnfast._ndarray cimport (RNNFAST_C_CONTIGUOUS, rnnfast_array, rnnfast_ndarray, rnnfast_rows_operands,
                               rnnfast_rows_operands_of)
