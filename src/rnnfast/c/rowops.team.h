/*
 * rowops.team.h -- a partner thread for the few-row products of rowops (a second core
 * for the vocabulary head of a decoder step at B=1), included by rowops.h.
 *
 * Why not the OpenMP team: rnnfast runs OpenMP with OMP_WAIT_POLICY=PASSIVE (spinning
 * pool threads made 2 threads 10x slower than 1 on a busy machine), so a region's
 * partner sleeps between regions and its wake costs 46-138 us here: more than a second
 * core saves on a 0.1 ms product, and the region's end waits for it. ONNX Runtime's
 * pool spins while a Run is in flight. This partner does the same, bounded: after each
 * job it polls for the next one for rnn_duo_spin_us (yielding its core to any other
 * runnable thread at every poll), then sleeps on a futex. The caller never waits for
 * it to arrive: a job's tasks are claimed one at a time by whichever thread gets there
 * first (the caller too), so a partner still asleep or without a core leaves every task
 * to the caller, which then runs as on one thread (plus one futex wake). The caller
 * waits only for a task the partner claimed and is running; a wait longer than
 * RNN_DUO_WAIT_NS (the partner lost its core mid-task) backs off: jobs run on the
 * caller alone for a while (rnn_duo_backoff_after).
 *
 * Which thread runs a task never changes what it computes: the same bits whatever the
 * schedule. Linux only (the futex); elsewhere, and after a fork in the child until its
 * first job (pthread_atfork), everything runs on the caller or a new partner.
 *
 * One job at a time per process: rnn_duo_run holds rnn_duo_lock (a second caller
 * thread runs its job alone instead of waiting).
 */
#ifndef RNNFAST_ROWOPS_TEAM_H
#define RNNFAST_ROWOPS_TEAM_H

#include "openmp.h"

typedef void (*rnn_duo_fn)(void *arg, long task);

/* A caller's wait for a task the partner claimed longer than this (the partner lost
 * its core mid-task) backs off: RNN_DUO_BACKOFF_MIN_NS after a calm spell, else twice
 * the last backoff up to RNN_DUO_BACKOFF_NS (rnn_duo_backoff_after). */
#define RNN_DUO_WAIT_NS 200000LL
#define RNN_DUO_BACKOFF_MIN_NS 1000000LL
#define RNN_DUO_BACKOFF_NS 50000000LL
#define RNN_DUO_CALM 8

/* The length of a backoff that starts `since` ns after the last one (of `last` ns, 0:
 * none) ended: RNN_DUO_BACKOFF_MIN_NS after a calm spell of RNN_DUO_CALM times the last
 * one or more, else twice the last, at most RNN_DUO_BACKOFF_NS. A machine whose other
 * core is busy keeps taking the partner's core: its waits come back soon after each
 * backoff, which grows to the cap (a few waits of a few ms, then one per 50 ms). A
 * hypervisor that takes the partner's core now and then costs a short one instead: a
 * decoder step at B = 1 on a shared 2-vCPU Xeon, where a fixed 50 ms ran 7-31% of the
 * calls on one core in runs of up to 95 (bench/README.md, session 23). */
static inline long long rnn_duo_backoff_after(long long last, long long since)
{
    if (last <= 0 || since >= RNN_DUO_CALM * last)
        return RNN_DUO_BACKOFF_MIN_NS;
    return 2 * last < RNN_DUO_BACKOFF_NS ? 2 * last : RNN_DUO_BACKOFF_NS;
}

#if defined(__linux__) && defined(__GNUC__)
#define RNN_DUO_ENABLED 1
#include <pthread.h>
#include <signal.h>

/* The partner thread itself (a test's job tells it from the caller). */
static __thread int rnn_duo_on_partner;

/* The partner polls for a next job this long after its last one (microseconds;
 * _rowops.duo_spin_us reads or changes it; 0: it sleeps at once). */
static int rnn_duo_spin_us = 500;

static struct {
    /* the job word: generation << 32 | next task to claim; a claim is one
     * compare-and-swap, which fails once the caller has moved to another job */
    unsigned long long word;
    int gen32;                  /* the futex word: the generation, bumped per job */
    int sleeping;               /* the partner is asleep (or about to be) on gen32 */
    int started;                /* the partner thread exists (in this process) */
    int lock;                   /* a caller is running a job */
    long done;                  /* tasks of the current job finished */
    long ntask;
    rnn_duo_fn fn;
    void *arg;
    long long backoff_until;    /* rnn_now_ns() until which jobs run on the caller */
    long long backoff_ns;       /* the last backoff's length (0: none yet) */
    long backoffs;              /* backoffs so far (tests, bench) */
    long jobs_shared;           /* jobs in which the partner ran a task (tests, bench) */
} rnn_duo;

static inline void rnn_duo_futex(int *addr, int op, int val)
{
    syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

/* Claims the next task of job generation gen; -1 when none is left or the job is over. */
static inline long rnn_duo_claim(unsigned long long gen)
{
    unsigned long long w = __atomic_load_n(&rnn_duo.word, __ATOMIC_ACQUIRE);
    for (;;) {
        long t = (long)(w & 0xffffffffULL);
        if ((w >> 32) != gen || t >= __atomic_load_n(&rnn_duo.ntask, __ATOMIC_RELAXED))
            return -1;
        if (__atomic_compare_exchange_n(&rnn_duo.word, &w, w + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return t;
    }
}

static void *rnn_duo_partner(void *unused)
{
    unsigned long long last = 0;
    (void)unused;
    rnn_duo_on_partner = 1;
    for (;;) {
        long long end = rnn_now_ns() + 1000LL * __atomic_load_n(&rnn_duo_spin_us, __ATOMIC_RELAXED);
        unsigned long long gen;
        long t, ran;
        int g32, seen = __atomic_load_n(&rnn_duo.gen32, __ATOMIC_ACQUIRE);
        /* poll for a new job, yielding the core at each poll, then sleep; a wake
         * (rnn_duo_wake: gen32 moved without a job) polls on from then */
        while ((gen = __atomic_load_n(&rnn_duo.word, __ATOMIC_ACQUIRE) >> 32) == last) {
            if ((g32 = __atomic_load_n(&rnn_duo.gen32, __ATOMIC_ACQUIRE)) != seen) {
                seen = g32;
                end = rnn_now_ns() + 1000LL * __atomic_load_n(&rnn_duo_spin_us, __ATOMIC_RELAXED);
            }
            if (rnn_now_ns() >= end) {
                g32 = __atomic_load_n(&rnn_duo.gen32, __ATOMIC_SEQ_CST);
                __atomic_store_n(&rnn_duo.sleeping, 1, __ATOMIC_SEQ_CST);
                if ((__atomic_load_n(&rnn_duo.word, __ATOMIC_SEQ_CST) >> 32) == last)
                    rnn_duo_futex(&rnn_duo.gen32, FUTEX_WAIT_PRIVATE, g32);
                __atomic_store_n(&rnn_duo.sleeping, 0, __ATOMIC_SEQ_CST);
                seen = __atomic_load_n(&rnn_duo.gen32, __ATOMIC_ACQUIRE);
                end = rnn_now_ns() + 1000LL * __atomic_load_n(&rnn_duo_spin_us, __ATOMIC_RELAXED);
            } else {
                sched_yield();
                rnn_cpu_relax();
            }
        }
        last = gen;
        /* the job's fields are read only after a claim: until that task is done the
         * caller cannot post another job */
        ran = 0;
        while ((t = rnn_duo_claim(gen)) >= 0) {
            if (!ran++)
                __atomic_add_fetch(&rnn_duo.jobs_shared, 1, __ATOMIC_RELAXED);
            rnn_duo.fn(rnn_duo.arg, t);
            __atomic_add_fetch(&rnn_duo.done, 1, __ATOMIC_RELEASE);   /* the partner's tasks only */
        }
    }
    return NULL;
}

static void rnn_duo_forked(void)
{
    rnn_duo.started = 0;        /* the child has no partner thread: the next job starts one */
    rnn_duo.sleeping = 0;
    rnn_duo.lock = 0;
}

static inline int rnn_duo_start(void)
{
    static int registered = 0;
    pthread_t th;
    pthread_attr_t at;
    sigset_t all, old;
    int ok;
    if (__atomic_load_n(&rnn_duo.started, __ATOMIC_ACQUIRE))
        return 1;
    if (!registered) {
        pthread_atfork(NULL, NULL, rnn_duo_forked);
        registered = 1;
    }
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 1 << 20);
    sigfillset(&all);           /* signals stay with the process's own threads */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    ok = pthread_create(&th, &at, rnn_duo_partner, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&at);
    if (ok)
        __atomic_store_n(&rnn_duo.started, 1, __ATOMIC_RELEASE);
    return ok;
}

/* Wakes the partner (starting it if need be) without waiting for it: a caller that
 * knows a few-row product is coming (a model call at its start) has it polling by
 * then, rnn_duo_spin_us from now. Returns 1 when there is a partner. */
static int rnn_duo_wake(void)
{
    if (!rnn_duo_start())
        return 0;
    __atomic_add_fetch(&rnn_duo.gen32, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&rnn_duo.sleeping, __ATOMIC_SEQ_CST))
        rnn_duo_futex(&rnn_duo.gen32, FUTEX_WAKE_PRIVATE, 1);
    return 1;
}

/* Runs fn(arg, t) for t = 0..ntask-1, each exactly once, on the caller and (nth > 1)
 * the partner. Returns when every task is done. */
static void rnn_duo_run(rnn_duo_fn fn, void *arg, long ntask, int nth)
{
    unsigned long long gen;
    long t, mine = 0;
    long long t0, now;
    int expect = 0, waited = 0;
    if (nth < 2 || ntask < 2 || rnn_now_ns() < __atomic_load_n(&rnn_duo.backoff_until, __ATOMIC_RELAXED)
        || !__atomic_compare_exchange_n(&rnn_duo.lock, &expect, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        for (t = 0; t < ntask; t++)
            fn(arg, t);
        return;
    }
    if (!rnn_duo_start()) {
        __atomic_store_n(&rnn_duo.lock, 0, __ATOMIC_RELEASE);
        for (t = 0; t < ntask; t++)
            fn(arg, t);
        return;
    }
    /* post the job: its fields, then the word (a new generation, task 0) */
    t0 = rnn_now_ns();
    rnn_duo.fn = fn;
    rnn_duo.arg = arg;
    __atomic_store_n(&rnn_duo.ntask, ntask, __ATOMIC_RELAXED);
    __atomic_store_n(&rnn_duo.done, 0, __ATOMIC_RELAXED);
    gen = (__atomic_load_n(&rnn_duo.word, __ATOMIC_RELAXED) >> 32) + 1;
    __atomic_store_n(&rnn_duo.word, gen << 32, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&rnn_duo.gen32, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&rnn_duo.sleeping, __ATOMIC_SEQ_CST))
        rnn_duo_futex(&rnn_duo.gen32, FUTEX_WAKE_PRIVATE, 1);
    while ((t = rnn_duo_claim(gen)) >= 0) {
        fn(arg, t);
        mine++;
    }
    /* wait for the tasks the partner claimed */
    now = rnn_now_ns();
    while (__atomic_load_n(&rnn_duo.done, __ATOMIC_ACQUIRE) < ntask - mine) {
        rnn_cpu_relax();
        if (waited || rnn_now_ns() - now > RNN_DUO_WAIT_NS) {
            waited = 1;
            sched_yield();
        }
    }
    if (waited) {   /* back off from the wait's end; the calm spell ran to the job's post */
        rnn_duo.backoff_ns = rnn_duo_backoff_after(rnn_duo.backoff_ns,
                                                   t0 - __atomic_load_n(&rnn_duo.backoff_until, __ATOMIC_RELAXED));
        rnn_duo.backoffs++;
        __atomic_store_n(&rnn_duo.backoff_until, rnn_now_ns() + rnn_duo.backoff_ns, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&rnn_duo.lock, 0, __ATOMIC_RELEASE);
}

#else
#define RNN_DUO_ENABLED 0
static int rnn_duo_spin_us = 0;
static struct {
    long long backoff_ns;
    long backoffs;
    long jobs_shared;
} rnn_duo;
static int rnn_duo_wake(void)
{
    return 0;
}
static void rnn_duo_run(rnn_duo_fn fn, void *arg, long ntask, int nth)
{
    long t;
    (void)nth;
    for (t = 0; t < ntask; t++)
        fn(arg, t);
}
#endif

/* The partner's poll after a job, in microseconds (us >= 0: set it); returns the old. */
static inline int rnn_duo_spin(int us)
{
    int old = rnn_duo_spin_us;
    if (us >= 0)
        __atomic_store_n(&rnn_duo_spin_us, us, __ATOMIC_RELAXED);
    return old;
}

/* 1 while the partner sleeps (0: polling, working, or no partner). */
static inline int rnn_duo_asleep(void)
{
#if RNN_DUO_ENABLED
    return __atomic_load_n(&rnn_duo.sleeping, __ATOMIC_ACQUIRE);
#else
    return 0;
#endif
}

/* Jobs in which the partner ran a task, so far. */
static inline long rnn_duo_shared(void)
{
    return __atomic_load_n(&rnn_duo.jobs_shared, __ATOMIC_RELAXED);
}

/* Backoffs so far; *last_ns: the last one's length (0: none). Read between jobs. */
static inline long rnn_duo_backoffs(long long *last_ns)
{
    *last_ns = rnn_duo.backoff_ns;
    return rnn_duo.backoffs;
}

/* 1 on the partner thread (a test's job tells the two threads apart). */
static inline int rnn_duo_in_partner(void)
{
#if RNN_DUO_ENABLED
    return rnn_duo_on_partner;
#else
    return 0;
#endif
}

#endif /* RNNFAST_ROWOPS_TEAM_H */
