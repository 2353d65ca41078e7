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

/* ---- the blocked strategy's work queue: phases of claimable tasks ----
 *
 * A call is a sequence of phases (a chunk's input projection, then each time step of
 * the chunk, then the next chunk's projection, ...). Every phase has the same ntask
 * tasks; phase p may start only when phase p-1 is complete. A task of a phase runs
 * exactly once, on whichever thread claims it first: each thread first claims its
 * own tasks (task % nth == tid, so each core keeps its share of the weights in its
 * cache), then any task still unclaimed. A thread the OS has not scheduled therefore
 * delays a phase by at most the one task it claimed before it stopped, never by the
 * tasks it did not reach (a fixed deal with a barrier per step waited a time slice
 * for it at every step). Which thread runs a task never changes what the task
 * computes, so results are bitwise the same for every team size and schedule.
 *
 * Claims: claim[task] counts the phases in which the task has been claimed; claiming
 * it for phase p is one compare-and-swap p -> p+1 (it fails if another thread got
 * it). Completion: `done` counts finished tasks over all phases, so phase p is
 * complete when done >= (p+1)*ntask; the thread finishing a phase bumps `gen` and
 * wakes sleepers. Waiters spin rnn_barrier_spins times, then on for as long again as
 * rnn_barrier_work_factor times the thread's own work in the phase (at most
 * rnn_barrier_max_us), then sleep on gen (a futex on Linux, sched_yield elsewhere).
 * When a waiter arrives, every task of the phase is claimed, so a partner that is
 * running finishes within about one task: scaling the spin to the work keeps a waiter
 * of a long phase (B=64: ~100 us a task) spinning instead of sleeping and paying a
 * futex wake-up every phase, and keeps the caller's sleep a sign that a partner lost
 * its core (the backoff below). A late thread skips the phases that completed without
 * it (rnn_phases_current). In a partner's first phases after it joined a call (its
 * warm-up, RNN_TEAM_WARMUP_PHASES below) the caller spins rnn_barrier_max_us whatever
 * its own work.
 *
 * A kept team (rnn_plan.keep_team: layers whose weights overflow a core's L2, which
 * never back off, below) also does not wait for a task whose thread lost its core after
 * claiming it: a step task then computes into the thread's own buffer and publishes
 * its result only if it is the first in (rnn_phases_commit: one compare-and-swap per
 * task per phase, as the claim), and a waiter whose spin ran out runs the tasks still
 * without a result itself. A result is published only while its phase is incomplete,
 * so everything it read was still the state of its step; a late duplicate is dropped.
 * The same tasks, the same arithmetic: the same bits. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* Spins before sleeping. Its value comes from rnnfast._plan (BARRIER_SPINS), set when
 * that module is imported; _kernels.barrier_spins() reads or changes it. */
static int rnn_barrier_spins = 0;
/* ... then spins on for up to this many times the thread's own work in the phase
 * (rnnfast._plan.BARRIER_WORK_FACTOR), at most rnn_barrier_max_us microseconds
 * (BARRIER_MAX_US); _kernels.barrier_spin_time() reads or changes them. */
static int rnn_barrier_work_factor = 0;
static int rnn_barrier_max_us = 0;
/* Spins a thread that has run its own tasks of a phase waits for the others to finish
 * theirs before it takes them over (rnnfast._plan.STEAL_SPINS): on an idle machine
 * the partner is microseconds away and its weights are in its own cache; a partner
 * the OS has descheduled is milliseconds away. A thread that has had to take tasks
 * over stops waiting for the partner (it takes over at once) until a phase shows the
 * partner running again. Read by the engine only (engine.template.h): `unused` keeps
 * the files that include this one for the rows' team (rowops.h) free of a warning. */
#if defined(__GNUC__)
__attribute__((unused))
#endif
static int rnn_steal_spins = 0;

/* Test hook (_kernels.debug_delay): thread rnn_delay_tid sleeps rnn_delay_us
 * microseconds at every rnn_delay_every-th phase, before claiming (where 0: its tasks
 * get taken over) or inside its first claimed task (where 1: the phase waits for it);
 * with rnn_delay_first, only until it has run a task in the call (a partner slow to
 * wake up). Off (rnn_delay_us == 0) it costs one load per phase. */
static int rnn_delay_tid = -1, rnn_delay_us = 0, rnn_delay_every = 1, rnn_delay_where = 0;
static int rnn_delay_first = 0;

static inline void rnn_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The monotonic clock, in nanoseconds. */
static inline long long rnn_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* How long a waiter whose own work in the phase took work_ns spins on after
 * rnn_barrier_spins, in nanoseconds (work_ns < 0: the most, rnn_barrier_max_us). */
static inline long long rnn_barrier_spin_ns(long long work_ns)
{
    long long cap = 1000LL * rnn_barrier_max_us, ns = work_ns * rnn_barrier_work_factor;
    return ns < cap && work_ns >= 0 ? ns : cap;
}

typedef struct {
    long ntask;            /* tasks per phase */
    long *claim;           /* (ntask,) phases claimed so far, per task */
    long *commit;          /* (ntask,) phases whose result is in, per task */
    long done;             /* tasks finished, all phases together */
    int gen;               /* phases complete (futex word; wraps harmlessly) */
    int sleepers;          /* threads asleep (or about to be) on gen */
} rnn_phases;

/* 0 on success; claim is calloc'ed here and freed by rnn_phases_free. */
static inline int rnn_phases_init(rnn_phases *q, long ntask)
{
    q->ntask = ntask;
    q->done = 0;
    q->gen = 0;
    q->sleepers = 0;
    q->claim = (long *) calloc(ntask > 0 ? (size_t) ntask : 1, sizeof(long));
    q->commit = (long *) calloc(ntask > 0 ? (size_t) ntask : 1, sizeof(long));
    return q->claim == NULL || q->commit == NULL;
}

static inline void rnn_phases_free(rnn_phases *q)
{
    free(q->claim);
    free(q->commit);
    q->claim = q->commit = NULL;
}

/* Move a task's phase counter from p to p + 1: 1 if this thread did, 0 if another had. */
static inline int rnn_phases_advance(long *counter, long p)
{
    long expected = p;
    if (__atomic_load_n(counter, __ATOMIC_RELAXED) != p)
        return 0;
    return __atomic_compare_exchange_n(counter, &expected, p + 1, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_RELAXED);
}

/* Claim `task` for phase p: 1 if this thread must run it, 0 if another one has it. */
static inline int rnn_phases_claim(rnn_phases *q, long task, long p)
{
    return rnn_phases_advance(&q->claim[task], p);
}

/* Commit `task` of phase p: 1 if this thread's result is the one (it publishes it and
 * calls rnn_phases_finish), 0 if another thread's is. */
static inline int rnn_phases_commit(rnn_phases *q, long task, long p)
{
    return rnn_phases_advance(&q->commit[task], p);
}

/* 1 if phase p's task `task` has no result yet. */
static inline int rnn_phases_open(rnn_phases *q, long task, long p)
{
    return __atomic_load_n(&q->commit[task], __ATOMIC_ACQUIRE) == p;
}

/* A claimed task of phase p is finished (its writes are published). */
static inline void rnn_phases_finish(rnn_phases *q, long p)
{
    long d = __atomic_add_fetch(&q->done, 1, __ATOMIC_ACQ_REL);
    if (d == (p + 1) * q->ntask) {
        __atomic_add_fetch(&q->gen, 1, __ATOMIC_SEQ_CST);      /* changes at every phase */
#if defined(__linux__)
        if (__atomic_load_n(&q->sleepers, __ATOMIC_SEQ_CST) > 0)
            syscall(SYS_futex, &q->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#endif
    }
}

/* The number of complete phases (the phase the team is working on). */
static inline long rnn_phases_current(rnn_phases *q)
{
    return __atomic_load_n(&q->done, __ATOMIC_ACQUIRE) / q->ntask;
}

/* Spin until phase p is complete: rnn_barrier_spins times and then for spin_ns more
 * nanoseconds (the clock read every 64 spins). Returns 1 if the phase completed in
 * that time, else 0 (a kept team then runs the tasks still open itself). */
static inline int rnn_phases_spin(rnn_phases *q, long p, long long spin_ns)
{
    long target = (p + 1) * q->ntask;
    long long end;
    int i;
    for (i = 0; i < rnn_barrier_spins; i++) {
        if (__atomic_load_n(&q->done, __ATOMIC_ACQUIRE) >= target)
            return 1;
        rnn_cpu_relax();
    }
    if (spin_ns > 0) {
        end = rnn_now_ns() + spin_ns;
        do {
            for (i = 0; i < 64; i++) {
                if (__atomic_load_n(&q->done, __ATOMIC_ACQUIRE) >= target)
                    return 1;
                rnn_cpu_relax();
            }
        } while (rnn_now_ns() < end);
    }
    return 0;
}

/* Wait until phase p is complete: rnn_phases_spin, then sleep. Returns 1 if it had to
 * sleep (the phase waited for a thread that was not running), else 0. */
static inline int rnn_phases_wait(rnn_phases *q, long p, long long spin_ns)
{
    long target = (p + 1) * q->ntask;
    int g;
    if (rnn_phases_spin(q, p, spin_ns))
        return 0;
#if defined(__linux__)
    __atomic_add_fetch(&q->sleepers, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        g = __atomic_load_n(&q->gen, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&q->done, __ATOMIC_SEQ_CST) >= target)
            break;
        syscall(SYS_futex, &q->gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
    }
    __atomic_sub_fetch(&q->sleepers, 1, __ATOMIC_SEQ_CST);
#else
    (void) g;
    while (__atomic_load_n(&q->done, __ATOMIC_ACQUIRE) < target)
        sched_yield();
#endif
    return 1;
}

/* ---- what the last multi-thread call's team did (a test and benchmark hook) ----
 *
 * _kernels.team_last() reads it: the team size, the phases the caller slept waiting
 * for, the caller's waits to start and end its regions and its time inside them,
 * whether the call started a backoff, and per thread (the first RNN_TEAM_LAST_MAX) the
 * tasks it ran, the tasks it ran again for a late partner (a kept team), the phases
 * complete when it arrived and its arrival after the call began. Written once per call
 * (a handful of stores); concurrent calls from several threads overwrite each other. */
#define RNN_TEAM_LAST_MAX 8
typedef struct {
    int nth;                        /* team size (0: no call on a team yet) */
    int keep_team;
    int backoff;                    /* 1 if the call started a backoff */
    long slept;                     /* phases the caller slept waiting for, past a warm-up */
    long slept_warm;                /* ... and in a partner's warm-up */
    long long wait_ns, own_ns, work_ns;
    long ran[RNN_TEAM_LAST_MAX];    /* tasks run, per thread */
    long redo[RNN_TEAM_LAST_MAX];   /* tasks run again for a late partner, per thread */
    long skipped[RNN_TEAM_LAST_MAX];        /* phases complete when it arrived */
    long long arrive_ns[RNN_TEAM_LAST_MAX]; /* its arrival, after the call began (-1, and
                                             * skipped -1: a kept team's partner that never
                                             * came, engine.template.h kept_task) */
} rnn_team_facts;
static rnn_team_facts rnn_team_last;

/* ---- a team whose partners are not running: fewer threads for a while ----
 *
 * A call on a team waits for every member twice whatever the tasks do: to start it and
 * to end it (libgomp docks the pool's threads at a barrier before a region starts, and
 * a region ends when all have reached its end), and a step waits for a task a member
 * claimed and then lost its core in. When the machine is busy, that member may get a
 * core back only a time slice later. A partner that is not running costs the caller
 * nothing else (it takes the partner's tasks over).
 *
 * So a call reports whether its caller waited for a partner that lost its core: it
 * slept waiting for a phase past the partners' warm-up (rnn_phases_wait: a partner
 * holds a task far longer than the caller's own work; RNN_TEAM_WARMUP_PHASES below), or it waited longer to start and end its regions than it
 * worked inside them (and over RNN_TEAM_WAIT_MIN_NS; measured with every core busy:
 * 10-35 ms for a 0.34 ms GRU H=128 B=1 call whose caller never slept in a phase). Then
 * the next calls that would use several threads use one: rnn_backoff_len calls, which
 * doubles (up to RNN_BACKOFF_MAX) while this keeps happening, and at least enough calls
 * to work RNN_BACKOFF_PAYBACK times the time the waits lost (the call's time on one
 * thread taken as the team's work inside its regions; up to
 * RNN_BACKOFF_CALLS_MAX): a call that tries the team again then costs at most about
 * 1/RNN_BACKOFF_PAYBACK of the time alone. A call whose team ran without such a wait
 * resets the length. The team size never changes a result.
 * The share of tasks the partners ran is no sign of a missing partner: on an idle
 * machine a partner waking from its passive wait finds phases taken over, and backing
 * off on a small share kept calls on one thread (2 threads = 1 thread idle, measured on
 * GRU/LSTM H=256 at B=1 and 64).
 * A kept team (rnn_plan.keep_team) neither backs off nor counts down a backoff: its
 * layer's weights overflow one core's L2, one thread streams them from L3 (LSTM H=512
 * B=1: 16 ms alone, 4.6 ms on two idle cores), and its partner's lost core costs it
 * a late task's redo (above), not a time slice. */
#define RNN_BACKOFF_MAX 256
#define RNN_BACKOFF_PAYBACK 16
#define RNN_BACKOFF_CALLS_MAX 4096
#define RNN_TEAM_WAIT_MIN_NS 200000LL
/* A partner's first phases of a call are its warm-up: it comes out of libgomp's passive
 * wait (a futex, after GOMP_SPINCOUNT spins: after a quiet gap between calls it is
 * asleep, its CPU may be halted) onto a core whose caches others may have used, and
 * its first tasks fault in its scratch pages. A first task then takes longer than the
 * waiter's spin (2x its own work: at B=1 a few microseconds), the caller slept, and the
 * call backed off, so that in a benchmark or a service with a pause before each call
 * the next call ran alone. So the caller waits for a phase in the first
 * RNN_TEAM_WARMUP_PHASES phases after a partner arrived with the longest spin
 * (rnn_barrier_max_us) and a sleep there does not count (rnn_team_facts.slept_warm); a
 * partner that loses its core for good shows it in the later phases or in the wait to
 * end the region. */
#define RNN_TEAM_WARMUP_PHASES 2

/* A partner arrived when `phase` phases were complete: the phases up to
 * phase + RNN_TEAM_WARMUP_PHASES are its warm-up (*until: the first phase past every
 * partner's warm-up). */
static inline void rnn_team_warm_up(long *until, long phase)
{
    long want = phase + RNN_TEAM_WARMUP_PHASES, cur = __atomic_load_n(until, __ATOMIC_RELAXED);
    while (cur < want
           && !__atomic_compare_exchange_n(until, &cur, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        ;
}
static int rnn_backoff_left = 0;     /* calls left to run on one thread */
static int rnn_backoff_len = 1;      /* the next backoff's length */
/* A backoff also ends RNN_BACKOFF_MAX_NS after it began, whatever calls it has left: a
 * count of calls alone outlived the load that caused it (up to RNN_BACKOFF_CALLS_MAX
 * calls of a long call on one thread: measured, GRU H=512 B=1 idle on 2 threads 11.1 ms,
 * its 1-thread time, for seconds after a busy loop stopped; 2.5 ms when the team runs).
 * On a machine that stays busy, a retry then costs one wait per RNN_BACKOFF_MAX_NS. */
#define RNN_BACKOFF_MAX_NS 250000000LL
static long long rnn_backoff_until = 0;  /* rnn_now_ns() when the backoff ends */

/* The team size for a call planned on n threads (one while backing off). */
static inline int rnn_team_for(int n)
{
    int left;
    if (n <= 1)
        return n;
    left = __atomic_load_n(&rnn_backoff_left, __ATOMIC_RELAXED);
    if (left > 0) {
        if (rnn_now_ns() >= __atomic_load_n(&rnn_backoff_until, __ATOMIC_RELAXED)) {
            __atomic_store_n(&rnn_backoff_left, 0, __ATOMIC_RELAXED);   /* outlived */
            return n;
        }
        __atomic_store_n(&rnn_backoff_left, left - 1, __ATOMIC_RELAXED);
        return 1;
    }
    return n;
}

/* The caller's time inside its parallel regions and its waits to start and end them,
 * and the time every thread of the team worked inside them (about the call's time on
 * one thread: the caller's own part is near nothing where it entered a region late and
 * its partner ran the tasks). */
typedef struct {
    long long own;
    long long wait;
    long long work;
} rnn_team_clock;

/* A thread of the team worked ns inside a region. */
static inline void rnn_team_clock_work(rnn_team_clock *k, long long ns)
{
    __atomic_add_fetch(&k->work, ns, __ATOMIC_RELAXED);
}

/* A region the caller entered at t_call (rnn_now_ns), was inside from t_in to t_out,
 * has ended now. */
static inline void rnn_team_clock_add(rnn_team_clock *k, long long t_call, long long t_in,
                                      long long t_out)
{
    long long now = rnn_now_ns();
    if (t_in < t_call || t_out < t_in)     /* no timestamps (never expected) */
        t_in = t_out = t_call;
    k->own += t_out - t_in;
    k->wait += (t_in - t_call) + (now - t_out);
}

/* Note a call on nth threads in rnn_team_last (its per-thread facts cleared: the
 * blocked strategy fills them in after). */
static inline void rnn_team_note(int nth, int keep, long slept, const rnn_team_clock *k,
                                 int backoff)
{
    rnn_team_facts f;
    memset(&f, 0, sizeof f);
    f.nth = nth;
    f.keep_team = keep;
    f.backoff = backoff;
    f.slept = slept;
    f.wait_ns = k->wait;
    f.own_ns = k->own;
    f.work_ns = k->work;
    rnn_team_last = f;
}

/* A call on nth threads is over: its caller slept waiting for a phase `slept` times,
 * and k holds its times around its regions. Returns 1 if it started a backoff. */
static inline int rnn_team_report(int nth, long slept, const rnn_team_clock *k)
{
    int len, left;
    long long calls;
    int waited = k->wait > RNN_TEAM_WAIT_MIN_NS && k->wait > k->own;
    if (nth <= 1)
        return 0;
    rnn_team_note(nth, 0, slept, k, slept > 0 || waited);
    if (slept > 0 || waited) {      /* the caller waited for a partner that lost its core */
        len = __atomic_load_n(&rnn_backoff_len, __ATOMIC_RELAXED);
        left = len;
        if (waited) {
            calls = k->work > k->own ? k->work : k->own;
            calls = RNN_BACKOFF_PAYBACK * k->wait / (calls > 0 ? calls : 1);
            calls = calls < RNN_BACKOFF_CALLS_MAX ? calls : RNN_BACKOFF_CALLS_MAX;
            left = calls > left ? (int)calls : left;
        }
        __atomic_store_n(&rnn_backoff_until, rnn_now_ns() + RNN_BACKOFF_MAX_NS, __ATOMIC_RELAXED);
        __atomic_store_n(&rnn_backoff_left, left, __ATOMIC_RELAXED);
        __atomic_store_n(&rnn_backoff_len, len < RNN_BACKOFF_MAX ? 2 * len : len, __ATOMIC_RELAXED);
        return 1;
    }
    __atomic_store_n(&rnn_backoff_len, 1, __ATOMIC_RELAXED);
    return 0;
}

/* ---- a kept team's partners keep off the caller's CPU ----
 *
 * Three runnable threads on two CPUs (a team of two beside a busy process) split two
 * and one, and the split is stable whichever two share a CPU: where the caller and its
 * partner share one, the team runs no faster than one thread (the busy process has the
 * other CPU). OpenMP's pool threads are not pinned, so a kept team's partner, at the
 * start of each call, keeps off the CPU its caller is on (its affinity mask: the one it
 * had when this first ran, less that CPU; nothing where the mask has one CPU), and at
 * the end of its part takes its mask back (rnn_unspread): a partner left pinned off
 * the previous call's CPU could run only on the CPU a caller that moved is now on, so it
 * waited for that caller to leave its CPU before it could even move (under SCHED_FIFO,
 * as the benchmarks run, the whole call: a 2-thread call at 1-thread speed, 85 ms for
 * 50, whenever the caller woke on the other CPU). The caller itself (the user's thread)
 * is never pinned. */
#if defined(__linux__) && defined(CPU_SETSIZE)
static __thread int rnn_spread_off = -1;      /* the CPU this thread keeps off */
static __thread int rnn_spread_saved = 0;
static __thread cpu_set_t rnn_spread_mask;    /* its mask before it first did */

static inline int rnn_current_cpu(void)
{
    return sched_getcpu();
}

static inline void rnn_spread(int cpu)
{
    cpu_set_t m;
    if (cpu < 0 || cpu >= CPU_SETSIZE || cpu == rnn_spread_off)
        return;
    if (!rnn_spread_saved) {
        if (sched_getaffinity(0, sizeof m, &rnn_spread_mask) != 0)
            return;
        rnn_spread_saved = 1;
    }
    m = rnn_spread_mask;
    if (CPU_ISSET(cpu, &m) && CPU_COUNT(&m) > 1)
        CPU_CLR(cpu, &m);
    if (sched_setaffinity(0, sizeof m, &m) == 0)
        rnn_spread_off = cpu;
}

/* This thread's mask as it was before rnn_spread, where it kept off a CPU. */
static inline void rnn_unspread(void)
{
    if (rnn_spread_off >= 0 && sched_setaffinity(0, sizeof rnn_spread_mask, &rnn_spread_mask) == 0)
        rnn_spread_off = -1;
}
#else
static inline int rnn_current_cpu(void) { return -1; }
static inline void rnn_spread(int cpu) { (void) cpu; }
static inline void rnn_unspread(void) {}
#endif

/* fresh: thread tid has run no task in this call yet. */
static inline void rnn_debug_delay(int tid, long p, int where, int fresh)
{
    if (rnn_delay_us > 0 && tid == rnn_delay_tid && where == rnn_delay_where
        && (rnn_delay_first ? fresh : p % (rnn_delay_every > 0 ? rnn_delay_every : 1) == 0)) {
#if defined(__linux__)
        usleep((useconds_t) rnn_delay_us);
#endif
    }
}

#endif /* RNNFAST_OPENMP_H */
