/* hr_threads.c — one pool of worker threads shared by every parallel CPU loop, sized together
 * with OpenBLAS's own pool so the two never run more threads than asked for. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "hr_core.h"
#include "hr_queue.h"

/* OpenBLAS's thread control (declared here to avoid depending on a particular cblas.h). */
void openblas_set_num_threads(int num_threads);

#define HR_MAX_THREADS 256

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t work_ready;
    pthread_cond_t work_done;
    int nthreads;        /* including the calling thread */
    int started;         /* workers created */
    pthread_t workers[HR_MAX_THREADS];
    /* current job */
    hr_parallel_fn fn;
    void *ctx;
    int64_t n, chunk;
    int64_t next;        /* next chunk start, taken under the lock */
    int pending;         /* workers still busy with the current job */
    unsigned generation; /* bumped for each job */
    int busy;            /* a job is running (nested calls run serially) */
} thread_pool;

static thread_pool pool = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .work_ready = PTHREAD_COND_INITIALIZER,
    .work_done = PTHREAD_COND_INITIALIZER,
    .nthreads = 0,
};

/* Set on threads that must not use the pool (hr_parallel_set_serial, hr_queue.h). */
static _Thread_local bool serial_thread;

void hr_parallel_set_serial(bool serial) { serial_thread = serial; }

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

static void *worker_main(void *arg)
{
    (void)arg;
    unsigned seen = 0;
    pthread_mutex_lock(&pool.lock);
    for (;;) {
        while (pool.generation == seen) pthread_cond_wait(&pool.work_ready, &pool.lock);
        seen = pool.generation;
        int64_t b, e;
        while (take_chunk(&b, &e)) {
            pthread_mutex_unlock(&pool.lock);
            pool.fn(pool.ctx, b, e);
            pthread_mutex_lock(&pool.lock);
        }
        if (--pool.pending == 0) pthread_cond_signal(&pool.work_done);
    }
    return NULL;
}

int hr_get_num_threads(void)
{
    if (pool.nthreads == 0) hr_set_num_threads(default_threads());
    return pool.nthreads;
}

void hr_set_num_threads(int n)
{
    if (n < 1) n = 1;
    if (n > HR_MAX_THREADS) n = HR_MAX_THREADS;
    pthread_mutex_lock(&pool.lock);
    pool.nthreads = n;
    pthread_mutex_unlock(&pool.lock);
    openblas_set_num_threads(n);
}

/* Workers are created lazily and never destroyed; a smaller thread count leaves extras idle. */
static int ensure_workers(int wanted)
{
    while (pool.started < wanted) {
        if (pthread_create(&pool.workers[pool.started], NULL, worker_main, NULL) != 0) break;
        pthread_detach(pool.workers[pool.started]);
        pool.started++;
    }
    return pool.started < wanted ? pool.started : wanted;
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
    int64_t chunks = (int64_t)(helpers + 1);
    int64_t chunk = (n + chunks - 1) / chunks;
    if (chunk < grain) chunk = grain;
    pool.busy = 1;
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.chunk = chunk;
    pool.next = 0;
    pool.pending = pool.started; /* every started worker wakes and reports back */
    pool.generation++;
    pthread_cond_broadcast(&pool.work_ready);
    int64_t b, e;
    while (take_chunk(&b, &e)) {
        pthread_mutex_unlock(&pool.lock);
        fn(ctx, b, e);
        pthread_mutex_lock(&pool.lock);
    }
    while (pool.pending > 0) pthread_cond_wait(&pool.work_done, &pool.lock);
    pool.busy = 0;
    pthread_mutex_unlock(&pool.lock);
}
