/* hr_queue.c — the ordered work queue of hr_queue.h.
 *
 * Jobs live in one circular array of slots indexed by sequence number: slots [collected, submitted)
 * are in flight, [taken, submitted) still wait for a worker. Workers take jobs oldest first, so a
 * job is never started after a younger one; results are stored in their job's slot and collected
 * strictly in order, which makes the result order independent of thread timing. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hr_core.h"
#include "hr_queue.h"

enum { SLOT_QUEUED = 0, SLOT_RUNNING, SLOT_DONE };

typedef struct {
    void *job;    /* SLOT_QUEUED: the job (owned by the queue) */
    void *result; /* SLOT_DONE: the result (owned by the queue) */
    int state;
} slot;

struct hr_workq {
    pthread_mutex_t lock;
    pthread_cond_t job_ready;    /* workers wait for a job or for close */
    pthread_cond_t result_ready; /* the submitter waits for the oldest result */
    hr_workq_free_fn free_item;
    slot *slots;
    int64_t cap; /* a power of two */
    int64_t submitted, taken, collected;
    bool closed;
};

static slot *at(hr_workq *q, int64_t seq) { return &q->slots[seq & (q->cap - 1)]; }

hr_workq *hr_workq_new(hr_workq_free_fn free_item)
{
    hr_workq *q = calloc(1, sizeof *q);
    if (!q) return hr_fail_null(HR_ENOMEM, "worker queue: out of memory");
    q->cap = 16;
    q->slots = calloc((size_t)q->cap, sizeof *q->slots);
    if (!q->slots) {
        free(q);
        return hr_fail_null(HR_ENOMEM, "worker queue: out of memory");
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->job_ready, NULL);
    pthread_cond_init(&q->result_ready, NULL);
    q->free_item = free_item;
    return q;
}

void hr_workq_free(hr_workq *q)
{
    if (!q) return;
    for (int64_t s = q->collected; s < q->submitted; s++) {
        slot *sl = at(q, s);
        /* A RUNNING slot cannot remain: the workers were joined, so every taken job finished. */
        void *item = sl->state == SLOT_QUEUED ? sl->job : sl->state == SLOT_DONE ? sl->result : NULL;
        if (item && q->free_item) q->free_item(item);
    }
    free(q->slots);
    pthread_cond_destroy(&q->job_ready);
    pthread_cond_destroy(&q->result_ready);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

/* Doubles the ring (under the lock): slots keep their sequence numbers. */
static int grow(hr_workq *q)
{
    int64_t ncap = q->cap * 2;
    slot *ns = calloc((size_t)ncap, sizeof *ns);
    if (!ns) return hr_fail(HR_ENOMEM, "worker queue: out of memory for %lld jobs in flight", (long long)ncap);
    for (int64_t s = q->collected; s < q->submitted; s++) ns[s & (ncap - 1)] = *at(q, s);
    free(q->slots);
    q->slots = ns;
    q->cap = ncap;
    return 0;
}

int64_t hr_workq_submit(hr_workq *q, void *job)
{
    pthread_mutex_lock(&q->lock);
    if (q->closed) {
        pthread_mutex_unlock(&q->lock);
        hr_fail(HR_EINVAL, "worker queue: closed");
        return -1;
    }
    if (q->submitted - q->collected == q->cap && grow(q) != 0) {
        pthread_mutex_unlock(&q->lock);
        return -1;
    }
    int64_t seq = q->submitted++;
    slot *sl = at(q, seq);
    sl->job = job;
    sl->result = NULL;
    sl->state = SLOT_QUEUED;
    pthread_cond_signal(&q->job_ready);
    pthread_mutex_unlock(&q->lock);
    return seq;
}

bool hr_workq_take(hr_workq *q, void **job, int64_t *seq)
{
    pthread_mutex_lock(&q->lock);
    while (!q->closed && q->taken == q->submitted) pthread_cond_wait(&q->job_ready, &q->lock);
    if (q->closed) {
        pthread_mutex_unlock(&q->lock);
        return false;
    }
    int64_t s = q->taken++;
    slot *sl = at(q, s);
    *job = sl->job;
    *seq = s;
    sl->job = NULL;
    sl->state = SLOT_RUNNING;
    pthread_mutex_unlock(&q->lock);
    return true;
}

void hr_workq_finish(hr_workq *q, int64_t seq, void *result)
{
    pthread_mutex_lock(&q->lock);
    slot *sl = at(q, seq);
    sl->result = result;
    sl->state = SLOT_DONE;
    /* Only the oldest result unblocks the submitter; waking it for others would be spurious. */
    if (seq == q->collected) pthread_cond_signal(&q->result_ready);
    pthread_mutex_unlock(&q->lock);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int hr_workq_collect(hr_workq *q, void **result, int64_t *seq, double *waited_s)
{
    *waited_s = 0;
    pthread_mutex_lock(&q->lock);
    if (q->collected == q->submitted) {
        pthread_mutex_unlock(&q->lock);
        return hr_fail(HR_EINVAL, "worker queue: no job is pending (submit one first)");
    }
    slot *sl = at(q, q->collected);
    if (sl->state != SLOT_DONE) {
        double t0 = now_s();
        while (!q->closed && sl->state != SLOT_DONE) pthread_cond_wait(&q->result_ready, &q->lock);
        *waited_s = now_s() - t0;
    }
    if (sl->state != SLOT_DONE) { /* closed while waiting */
        pthread_mutex_unlock(&q->lock);
        return hr_fail(HR_EINVAL, "worker queue: closed");
    }
    *result = sl->result;
    *seq = q->collected;
    sl->result = NULL;
    q->collected++;
    pthread_mutex_unlock(&q->lock);
    return 0;
}

int64_t hr_workq_pending(hr_workq *q)
{
    pthread_mutex_lock(&q->lock);
    int64_t n = q->submitted - q->collected;
    pthread_mutex_unlock(&q->lock);
    return n;
}

void hr_workq_close(hr_workq *q)
{
    pthread_mutex_lock(&q->lock);
    q->closed = true;
    pthread_cond_broadcast(&q->job_ready);
    pthread_cond_broadcast(&q->result_ready);
    pthread_mutex_unlock(&q->lock);
}
