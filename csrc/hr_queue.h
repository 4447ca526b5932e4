/*
 * hr_queue.h — an ordered work queue for worker threads (Lua-free).
 *
 * One producer (the submitting thread) hands jobs to any number of worker threads and collects
 * the results in SUBMISSION order, whichever worker finishes first: job k's result is returned by
 * the k-th collect. Jobs and results are opaque pointers owned by the queue while inside it; the
 * queue frees what is left (jobs never taken, results never collected) with the free function
 * given at creation.
 *
 *   submitter: hr_workq_submit(q, job) ... hr_workq_collect(q, &result, ...)
 *   workers:   while (hr_workq_take(q, &job, &seq)) hr_workq_finish(q, seq, run(job));
 *   shutdown:  hr_workq_close(q) (takes return false), join the workers, hr_workq_free(q)
 *
 * Every function is thread-safe (one mutex); collect and take block on condition variables.
 */
#ifndef HR_QUEUE_H
#define HR_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hr_workq hr_workq;
typedef void (*hr_workq_free_fn)(void *item);

/* NULL (and hr_fail) when out of memory. free_item releases jobs and results left at free time. */
hr_workq *hr_workq_new(hr_workq_free_fn free_item);
/* Frees the queue and every job/result still inside. The workers must have been joined. */
void hr_workq_free(hr_workq *q);

/* Queues a job; returns its sequence number (0, 1, 2, ... in submission order), or -1 when the
 * queue is closed or out of memory (hr_fail says which; the job then stays the caller's). */
int64_t hr_workq_submit(hr_workq *q, void *job);
/* Worker side: blocks until a job is available (oldest first) and returns true with it, or
 * returns false once the queue is closed (the worker should exit). */
bool hr_workq_take(hr_workq *q, void **job, int64_t *seq);
/* Worker side: stores the result of job seq (ownership passes to the queue). */
void hr_workq_finish(hr_workq *q, int64_t seq, void *result);
/* Submitter side: blocks until the oldest uncollected job is finished and returns 0 with its
 * result and sequence number; *waited_s gets the seconds spent blocked. Returns -1 (hr_fail)
 * when nothing is pending or the queue is closed. */
int hr_workq_collect(hr_workq *q, void **result, int64_t *seq, double *waited_s);
/* Jobs submitted and not yet collected. */
int64_t hr_workq_pending(hr_workq *q);
/* Wakes every worker: take returns false from now on (jobs not yet taken stay queued and are
 * freed by hr_workq_free); running jobs finish normally. Idempotent. */
void hr_workq_close(hr_workq *q);

/* Makes the calling thread run hero's parallel loops serially, never entering the shared thread
 * pool (hr_threads.c): worker threads preparing data must not take the pool (and its cores) away
 * from the thread that trains. Thread-local; off by default. */
void hr_parallel_set_serial(bool serial);
/* Whether hr_parallel_set_serial(true) holds on the calling thread. */
bool hr_parallel_is_serial(void);

#endif
