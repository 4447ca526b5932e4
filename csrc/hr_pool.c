/* hr_pool.c — free lists for the fixed-size objects made and released by the hundred per step:
 * tensor headers, storage headers and autograd nodes.
 *
 * These are 88-400 bytes, over glibc's fast-list limit and past its per-thread cache (7 chunks per
 * size) as soon as a forward pass makes a burst of them or Lua's collector releases one: each
 * allocation then went through malloc's sorted bins, splitting and merging chunks (a quarter of a
 * small layer's forward was malloc and free). A released object goes instead onto the releasing
 * thread's list for its kind, up to a bound, and that thread's next request of the kind takes it
 * back: no lock, and an object may be released on another thread than the one that made it. A
 * thread's lists are returned to malloc when it ends. AddressSanitizer builds keep nothing, so that
 * a use after release is still reported. */
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

/* At most this many released objects per kind and thread (~6 MiB for the largest kind): Lua's
 * collector releases the objects of thousands of small operations at once. */
#define HR_POOL_CAP 16384

typedef struct pooled {
    struct pooled *next;
} pooled;

typedef struct {
    pooled *head[HR_POOL_KINDS];
    int count[HR_POOL_KINDS];
    bool registered; /* the thread-exit release is set up */
} thread_pools;

static _Thread_local thread_pools pools;

static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;
static bool exit_key_ok;

/* At a thread's end: its lists back to malloc (the argument is the thread's own pools). */
static void release_thread_pools(void *arg)
{
    thread_pools *tp = arg;
    for (int k = 0; k < HR_POOL_KINDS; k++) {
        while (tp->head[k]) {
            pooled *next = tp->head[k]->next;
            free(tp->head[k]);
            tp->head[k] = next;
        }
        tp->count[k] = 0;
    }
    /* an object released later in the thread's end registers again (the destructors run again) */
    tp->registered = false;
}

static void exit_key_make(void) { exit_key_ok = pthread_key_create(&exit_key, release_thread_pools) == 0; }

void *hr_pool_zalloc(hr_pool_kind kind, size_t size)
{
    pooled *obj = HR_POOL_KEEPS ? pools.head[kind] : NULL;
    if (!obj) return hr_zalloc(1, size);
    pools.head[kind] = obj->next;
    pools.count[kind]--;
    memset(obj, 0, size);
    return obj;
}

void hr_pool_free(hr_pool_kind kind, void *obj)
{
    if (!obj) return;
    if (HR_POOL_KEEPS && pools.count[kind] < HR_POOL_CAP) {
        if (!pools.registered) { /* once per thread: without the exit release, keep nothing */
            pthread_once(&exit_key_once, exit_key_make);
            pools.registered = exit_key_ok && pthread_setspecific(exit_key, &pools) == 0;
        }
        if (pools.registered) {
            pooled *o = obj;
            o->next = pools.head[kind];
            pools.head[kind] = o;
            pools.count[kind]++;
            return;
        }
    }
    free(obj);
}
