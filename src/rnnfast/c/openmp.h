/* openmp.h -- the one OpenMP shim: real OpenMP where the build has it, serial stubs
 * otherwise (the same sources then build serial: RNNFAST_NO_OPENMP=1), and the step
 * barrier of the blocked strategy. */
#ifndef RNNFAST_OPENMP_H
#define RNNFAST_OPENMP_H

#ifdef _OPENMP
#include <omp.h>
#define RNN_OPENMP_ENABLED 1
/* A barrier for the team of the enclosing parallel region (an orphaned directive). */
static inline void rnn_omp_barrier(void) {
    _Pragma("omp barrier")
}
/* RNN_OMP(parallel for ...): an OpenMP directive, or nothing in a serial build. */
#define RNN_PRAGMA_(...) _Pragma(#__VA_ARGS__)
#define RNN_OMP(...) RNN_PRAGMA_(omp __VA_ARGS__)
#else
#define RNN_OPENMP_ENABLED 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline void rnn_omp_barrier(void) {}
#define RNN_OMP(...)
#endif

/* ---- the step barrier: spin briefly, then sleep ----
 *
 * The blocked strategy synchronises its team once per time step. On an idle machine the
 * team arrives within microseconds, so a short spin catches it; on a busy one a
 * team member may be waiting for a core, and a waiter that keeps spinning holds the
 * very core it needs (OpenMP's default barrier spins for milliseconds). So: spin
 * rnn_barrier_spins times, then sleep on a futex (Linux) or yield (elsewhere).
 * A generation counter makes the barrier reusable; the last arrival resets the
 * count, publishes the next generation (release) and wakes the sleepers. */
#include <limits.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <sched.h>
#endif

/* Spins before sleeping. Its value comes from rnnfast._plan (BARRIER_SPINS), set when
 * that module is imported; _kernels.barrier_spins() reads or changes it. */
static int rnn_barrier_spins = 0;

typedef struct {
    int n;                 /* team size */
    int count;             /* arrivals in this generation */
    int gen;               /* generation, bumped by the last arrival */
    int sleepers;          /* threads asleep (or about to be) on gen */
} rnn_barrier;

static inline void rnn_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void rnn_barrier_init(rnn_barrier *b, int n)
{
    b->n = n;
    b->count = 0;
    b->gen = 0;
    b->sleepers = 0;
}

static inline void rnn_barrier_wait(rnn_barrier *b)
{
    int gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    int i;
    if (b->n <= 1)
        return;
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->n) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->gen, gen + 1, __ATOMIC_SEQ_CST);
#if defined(__linux__)
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST) > 0)
            syscall(SYS_futex, &b->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#endif
        return;
    }
    for (i = 0; i < rnn_barrier_spins; i++) {
        if (__atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) != gen)
            return;
        rnn_cpu_relax();
    }
#if defined(__linux__)
    __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
    while (__atomic_load_n(&b->gen, __ATOMIC_SEQ_CST) == gen)
        syscall(SYS_futex, &b->gen, FUTEX_WAIT_PRIVATE, gen, NULL, NULL, 0);
    __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
#else
    while (__atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) == gen)
        sched_yield();
#endif
}

#endif /* RNNFAST_OPENMP_H */
