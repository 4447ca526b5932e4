/* hr_threads.c — one pool of worker threads shared by every parallel CPU loop, sized together
 * with OpenBLAS's own pool so the two never run more threads than asked for. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "hr_blas_guard.h"
#include "hr_core.h"
#include "hr_queue.h"

/* OpenBLAS's thread control (declared here to avoid depending on a particular cblas.h). */
void openblas_set_num_threads(int num_threads);


/* How long a thread polls for the next job (a worker) or for the helpers' end (the caller)
 * before it sleeps on the condition variable, unless HERO_SPIN_US says otherwise. A sleeping
 * (v)CPU takes tens to hundreds of microseconds to wake, paid by every parallel loop of a step
 * (~400 per HERO pre-training step), while the gaps between loops are mostly shorter than this. */
#define DEFAULT_SPIN_MICROSECONDS 200

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t work_ready;
    pthread_cond_t work_done;
    /* Including the calling thread; 0 until first asked for. Read without the lock by every
     * parallel loop and kernel, on any thread (a data-loader worker's matmul too), while the Lua
     * thread may set it: atomic. Relaxed is enough, it publishes no other data (each loop hands
     * the count it read to run_pieces, which orders the job under the lock). */
    atomic_int nthreads;
    int started;         /* workers created */
    pthread_t workers[HR_MAX_THREADS];
    /* current job */
    hr_parallel_fn fn;
    void *ctx;
    int64_t n, chunk;
    int64_t next;        /* next chunk start, taken under the lock */
    int helpers;         /* workers 1..helpers take part in the current job */
    bool open;           /* the current job still takes helpers (not all its pieces are taken) */
    atomic_uint working; /* helpers that joined the current job and have not finished */
    atomic_uint generation;       /* bumped for each job */
    int busy;            /* a job is running (nested calls run serially) */
} thread_pool;

static thread_pool pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work_ready = PTHREAD_COND_INITIALIZER,
    .work_done = PTHREAD_COND_INITIALIZER,
};

/* Set on threads that must not use the pool (hr_parallel_set_serial, hr_queue.h). */
static _Thread_local bool serial_thread;

void hr_parallel_set_serial(bool serial) { serial_thread = serial; }

bool hr_parallel_is_serial(void) { return serial_thread; }

static int default_threads(void)
{
    const char *env = getenv("HERO_NUM_THREADS");
    if (!env) env = getenv("OMP_NUM_THREADS");
    if (env) {
        int n = atoi(env);
        if (n >= 1) return n < HR_MAX_THREADS ? n : HR_MAX_THREADS;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    return n < HR_MAX_THREADS ? (int)n : HR_MAX_THREADS;
}

static bool take_chunk(int64_t *begin, int64_t *end)
{
    if (pool.next >= pool.n) return false;
    *begin = pool.next;
    *end = pool.next + pool.chunk < pool.n ? pool.next + pool.chunk : pool.n;
    pool.next = *end;
    return true;
}

/* Read once, before the first worker starts (and so before any thread spins). */
static int64_t spin_nanoseconds = -1;

static void read_spin_setting(void)
{
    const char *env = getenv("HERO_SPIN_US");
    long us = env ? atol(env) : DEFAULT_SPIN_MICROSECONDS;
    if (us < 0) us = 0;
    if (us > 1000000) us = 1000000;
    spin_nanoseconds = (int64_t)us * 1000;
}

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

/* Polls, without the lock, until *word differs from `from` (when differ) or equals it (when
 * !differ), for at most spin_nanoseconds; the caller then rechecks under the lock and sleeps. */
static void spin_while(atomic_uint *word, unsigned from, bool differ)
{
    if (spin_nanoseconds == 0) return;
    int64_t deadline = 0;
    for (unsigned polls = 0;; polls++) {
        bool changed = atomic_load_explicit(word, memory_order_acquire) != from;
        if (changed == differ) return;
        if ((polls & 63) == 0) {
            int64_t t = monotonic_ns();
            if (deadline == 0) deadline = t + spin_nanoseconds;
            else if (t > deadline) return;
        }
        cpu_relax();
    }
}

/* This thread's slot: 0 on the calling thread (and any thread outside the pool), i on worker i. */
static _Thread_local int thread_slot;

int hr_parallel_slot(void) { return thread_slot; }

static void *worker_main(void *arg)
{
    int slot = (int)(intptr_t)arg;
    thread_slot = slot;
    unsigned seen = 0;
    bool takes_part = false;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        if (atomic_load(&pool.generation) == seen && takes_part) {
            pthread_mutex_unlock(&pool.lock);
            spin_while(&pool.generation, seen, true);
            pthread_mutex_lock(&pool.lock);
        }
        while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.work_ready, &pool.lock);
        seen = atomic_load(&pool.generation);
        /* workers past the job's thread count (after hr_set_num_threads lowered it) sit it out, and
         * one that wakes after the caller took the last piece has nothing to join */
        takes_part = slot <= pool.helpers;
        if (!takes_part || !pool.open) continue;
        atomic_fetch_add(&pool.working, 1u);
        int64_t b, e;
        while (take_chunk(&b, &e)) {
            pthread_mutex_unlock(&pool.lock);
            pool.fn(pool.ctx, b, e);
            pthread_mutex_lock(&pool.lock);
        }
        if (atomic_fetch_sub(&pool.working, 1u) == 1u) pthread_cond_signal(&pool.work_done);
    }
    return NULL;
}

int hr_get_num_threads(void)
{
    int n = atomic_load_explicit(&pool.nthreads, memory_order_relaxed);
    if (n != 0) return n;
    /* First use: the default, unless another thread got here first or set a count meanwhile (a
     * plain store would overwrite that one). */
    int fresh = default_threads();
    if (!atomic_compare_exchange_strong_explicit(&pool.nthreads, &n, fresh, memory_order_relaxed,
                                                 memory_order_relaxed))
        return n;
    openblas_set_num_threads(hr_blas_limited() ? 1 : fresh);
    return fresh;
}

void hr_set_num_threads(int n)
{
    if (n < 1) n = 1;
    if (n > HR_MAX_THREADS) n = HR_MAX_THREADS;
    atomic_store_explicit(&pool.nthreads, n, memory_order_relaxed);
    /* Under an address-space limit OpenBLAS stays single-threaded (hr_blas_guard.c): each thread it
     * starts asks for a 128 MiB buffer and retries forever when that fails, which hung the process
     * (and kept the cores busy in the kernel) after a large count. */
    openblas_set_num_threads(hr_blas_limited() ? 1 : n);
}

/* Workers are created lazily and never destroyed; a smaller thread count leaves extras idle. */
static int ensure_workers(int wanted)
{
    if (spin_nanoseconds < 0) read_spin_setting();
    while (pool.started < wanted) {
        if (pthread_create(&pool.workers[pool.started], NULL, worker_main, (void *)(intptr_t)(pool.started + 1)) != 0)
            break;
        pthread_detach(pool.workers[pool.started]);
        pool.started++;
    }
    return pool.started < wanted ? pool.started : wanted;
}

/* Runs fn over [0, n) in pieces of `chunk` items (the last may be shorter; chunk 0: one piece
 * per thread, of at least `grain`) taken in order by whichever thread is free, the caller
 * included; returns when all are done. */
static void run_pieces(int64_t n, int64_t chunk, int64_t grain, int nthreads, hr_parallel_fn fn, void *ctx)
{
    pthread_mutex_lock(&pool.lock);
    if (pool.busy) { /* called from inside a parallel region: run serially */
        pthread_mutex_unlock(&pool.lock);
        fn(ctx, 0, n);
        return;
    }
    int helpers = ensure_workers(nthreads - 1);
    if (helpers == 0) {
        pthread_mutex_unlock(&pool.lock);
        fn(ctx, 0, n);
        return;
    }
    if (chunk == 0) {
        chunk = (n + helpers) / (helpers + 1);
        if (chunk < grain) chunk = grain;
    }
    pool.busy = 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = chunk;
    pool.next = 0;
    pool.helpers = helpers;
    pool.open = true;
    atomic_fetch_add(&pool.generation, 1);
    pthread_cond_broadcast(&pool.work_ready);
    int64_t b, e;
    while (take_chunk(&b, &e)) {
        pthread_mutex_unlock(&pool.lock);
        fn(ctx, b, e);
        pthread_mutex_lock(&pool.lock);
    }
    /* All pieces are taken: a helper still asleep (a vCPU takes a while to wake) is not waited
     * for, only those that joined and are running their pieces. */
    pool.open = false;
    if (atomic_load(&pool.working) > 0) {
        pthread_mutex_unlock(&pool.lock);
        spin_while(&pool.working, 0, false);
        pthread_mutex_lock(&pool.lock);
    }
    while (atomic_load(&pool.working) > 0) pthread_cond_wait(&pool.work_done, &pool.lock);
    pool.busy = 0;
    pthread_mutex_unlock(&pool.lock);
}

void hr_parallel_for(int64_t n, int64_t grain, hr_parallel_fn fn, void *ctx)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nthreads = serial_thread ? 1 : hr_get_num_threads();
    if (nthreads < 2 || n < 2 * grain) {
        fn(ctx, 0, n);
        return;
    }
    run_pieces(n, 0, grain, nthreads, fn, ctx);
}

void hr_parallel_deal(int64_t n, hr_parallel_fn fn, void *ctx)
{
    if (n <= 0) return;
    int nthreads = serial_thread ? 1 : hr_get_num_threads();
    if (nthreads < 2 || n < 2) {
        fn(ctx, 0, n);
        return;
    }
    run_pieces(n, 1, 1, nthreads, fn, ctx);
}
