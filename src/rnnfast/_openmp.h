/* _openmp.h -- the one OpenMP shim: real OpenMP where the build has it, serial stubs otherwise. */
#ifndef RNNFAST_OPENMP_H
#define RNNFAST_OPENMP_H
#ifdef _OPENMP
#include <omp.h>
#define RNN_OPENMP_ENABLED 1
#else
#define RNN_OPENMP_ENABLED 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif
#endif
