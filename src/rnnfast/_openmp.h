/* _openmp.h -- the one OpenMP shim: real OpenMP where the build has it, serial stubs otherwise. */
#ifndef RNNFAST_OPENMP_H
#define RNNFAST_OPENMP_H
#ifdef _OPENMP
#include <omp.h>
#define RNN_OPENMP_ENABLED 1
/* A barrier for the team of the enclosing parallel region (an orphaned directive). */
static inline void rnn_omp_barrier(void) {
    _Pragma("omp barrier")
}
#else
static inline void rnn_omp_barrier(void) {}
#define RNN_OPENMP_ENABLED 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif
#endif
