/*
 * profile.h -- where the kernels' time goes, for the benchmarks: thread-seconds per
 * part (enums.h: projection, products, whole steps, the barrier), one row of counters
 * per thread. _kernels.profile() starts and stops it, profile_times() reads it. Off,
 * it costs one branch per step and task (and no clock read).
 */
#ifndef RNNFAST_PROFILE_H
#define RNNFAST_PROFILE_H

#include <time.h>

#include "enums.h"
#include "openmp.h"

static double rnn_prof[RNN_PROF_SLOTS * RNN_PROF_PARTS];
static int rnn_prof_on = 0;

/* The time now when profiling, else 0 (and no clock read). */
static inline double rnn_tick(void)
{
    struct timespec ts;
    if (!rnn_prof_on)
        return 0;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

/* Add the time since t0 to this thread's part (when profiling). */
static inline void rnn_tock(rnn_profile_part part, double t0)
{
    int tid;
    if (rnn_prof_on) {
        tid = omp_get_thread_num();
        if (tid < RNN_PROF_SLOTS)
            rnn_prof[tid * RNN_PROF_PARTS + part] += rnn_tick() - t0;
    }
}

#endif /* RNNFAST_PROFILE_H */
