/* hr_pool.c — free lists for the fixed-size objects made and released by the hundred per step:
 * tensor headers, storage headers and autograd nodes.
 *
 * These are 88-400 bytes, over glibc's fast-list limit and past its per-thread cache (7 chunks per
 * size) as soon as a forward pass makes a burst of them: each allocation then went through malloc's
 * sorted bins, splitting and merging chunks (a quarter of a small layer's forward was malloc and
 * free). A released object goes instead onto its kind's last-in-first-out list, up to a bound,
 * and the next request of that kind takes it back. AddressSanitizer builds keep nothing, so that a
 * use after release is still reported. */
#include <pthread.h>

#include "hr_core.h"

#if defined(__SANITIZE_ADDRESS__)
#define HR_POOL_KEEPS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HR_POOL_KEEPS 0
#endif
#endif
#ifndef HR_POOL_KEEPS
#define HR_POOL_KEEPS 1
#endif

typedef struct pooled {
    struct pooled *next;
} pooled;

struct hr_pool {
    pthread_mutex_t lock;
    pooled *head;
    size_t count;
};

/* At most this many released objects per kind (~4 MiB for the largest kind). */
#define HR_POOL_CAP 8192

static hr_pool pools[HR_POOL_KINDS] = {
    [HR_POOL_TENSOR] = {.lock = PTHREAD_MUTEX_INITIALIZER},
    [HR_POOL_STORAGE] = {.lock = PTHREAD_MUTEX_INITIALIZER},
    [HR_POOL_NODE] = {.lock = PTHREAD_MUTEX_INITIALIZER},
};

void *hr_pool_zalloc(hr_pool_kind kind, size_t size)
{
    pooled *obj = NULL;
    if (HR_POOL_KEEPS) {
        hr_pool *p = &pools[kind];
        pthread_mutex_lock(&p->lock);
        obj = p->head;
        if (obj) {
            p->head = obj->next;
            p->count--;
        }
        pthread_mutex_unlock(&p->lock);
    }
    if (!obj) return hr_zalloc(1, size);
    memset(obj, 0, size);
    return obj;
}

void hr_pool_free(hr_pool_kind kind, void *obj)
{
    if (!obj) return;
    if (HR_POOL_KEEPS) {
        hr_pool *p = &pools[kind];
        pthread_mutex_lock(&p->lock);
        bool kept = p->count < HR_POOL_CAP;
        if (kept) {
            pooled *o = obj;
            o->next = p->head;
            p->head = o;
            p->count++;
        }
        pthread_mutex_unlock(&p->lock);
        if (kept) return;
    }
    free(obj);
}
