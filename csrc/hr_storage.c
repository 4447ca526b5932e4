/* hr_storage.c — refcounted byte buffers behind tensors (heap, mapped file or external). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hr_core.h"
#include "hr_cuda.h"

static atomic_size_t live_bytes;

size_t hr_live_bytes(void) { return atomic_load(&live_bytes); }

/*
 * Big host buffers are cached after release and handed out again for the same rounded size: a
 * training step allocates the same activation sizes every time, and mapping fresh pages costs
 * more than the arithmetic done on them. The cache holds at most HR_CACHE_ENTRIES blocks and
 * HR_CACHE_BYTES bytes; hr_empty_cache() returns everything to the system, and an allocation that
 * fails empties the cache and tries again.
 */
#define HR_BIG_BLOCK ((size_t)128 << 10)
#define HR_HUGE_ALIGN ((size_t)2 << 20)
#define HR_CACHE_ENTRIES 256
#define HR_CACHE_BYTES ((size_t)1 << 30)

typedef struct {
    void *ptr;
    size_t size; /* rounded size of the block */
} cached_block;

static struct {
    pthread_mutex_t lock;
    cached_block blocks[HR_CACHE_ENTRIES];
    int count;
    size_t bytes;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The size actually allocated for a request: 64-byte multiples; from HR_BIG_BLOCK on, size
 * classes of 1/8 of the power of two below (at most 12.5% unused) so that tensors of nearby sizes
 * share cached blocks; 2 MiB multiples from 2 MiB on (huge pages). */
static size_t block_size(size_t nbytes, bool *ok)
{
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    *ok = rounded >= nbytes;
    if (rounded == 0) rounded = 64;
    if (rounded >= HR_BIG_BLOCK) {
        size_t p = HR_BIG_BLOCK;
        while (p <= rounded / 2) p *= 2;
        size_t step = p / 8;
        if (step < HR_HUGE_ALIGN && rounded >= HR_HUGE_ALIGN) step = HR_HUGE_ALIGN;
        size_t big = (rounded + step - 1) / step * step;
        *ok = *ok && big >= rounded;
        rounded = big;
    }
    return rounded;
}

static void *cache_take(size_t size)
{
    void *p = NULL;
    pthread_mutex_lock(&cache.lock);
    for (int i = cache.count - 1; i >= 0; i--) {
        if (cache.blocks[i].size == size) {
            p = cache.blocks[i].ptr;
            cache.bytes -= size;
            memmove(cache.blocks + i, cache.blocks + i + 1, sizeof cache.blocks[0] * (size_t)(cache.count - i - 1));
            cache.count--;
            break;
        }
    }
    pthread_mutex_unlock(&cache.lock);
    return p;
}

/* Keeps a released block; when the cache is full the oldest blocks are returned to the system
 * first, so the cache follows the sizes the program currently uses. */
static bool cache_put(void *p, size_t size)
{
    if (size > HR_CACHE_BYTES) return false;
    void *evicted[HR_CACHE_ENTRIES];
    int nevicted = 0;
    pthread_mutex_lock(&cache.lock);
    while (cache.count > 0 && (cache.count >= HR_CACHE_ENTRIES || cache.bytes + size > HR_CACHE_BYTES)) {
        evicted[nevicted++] = cache.blocks[0].ptr;
        cache.bytes -= cache.blocks[0].size;
        memmove(cache.blocks, cache.blocks + 1, sizeof cache.blocks[0] * (size_t)(cache.count - 1));
        cache.count--;
    }
    cache.blocks[cache.count].ptr = p;
    cache.blocks[cache.count].size = size;
    cache.count++;
    cache.bytes += size;
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < nevicted; i++) free(evicted[i]);
    return true;
}

size_t hr_empty_cache(void)
{
    pthread_mutex_lock(&cache.lock);
    size_t released = cache.bytes;
    for (int i = 0; i < cache.count; i++) free(cache.blocks[i].ptr);
    cache.count = 0;
    cache.bytes = 0;
    pthread_mutex_unlock(&cache.lock);
    return released;
}

size_t hr_cached_bytes(void)
{
    pthread_mutex_lock(&cache.lock);
    size_t n = cache.bytes;
    pthread_mutex_unlock(&cache.lock);
    return n;
}

static void *system_alloc(size_t size)
{
    if (size < HR_HUGE_ALIGN) return aligned_alloc(64, size);
    /* Big buffers start on a 2 MiB boundary and ask for transparent huge pages. */
    void *p = aligned_alloc(HR_HUGE_ALIGN, size);
#ifdef MADV_HUGEPAGE
    if (p) (void)madvise(p, size, MADV_HUGEPAGE); /* advisory: failure only costs speed */
#endif
    return p;
}

void *hr_alloc_bytes(size_t nbytes)
{
    bool ok;
    size_t size = block_size(nbytes, &ok);
    if (!ok) return hr_fail_null(HR_ENOMEM, "allocation of %zu bytes overflows", nbytes);
    void *p = size >= HR_BIG_BLOCK ? cache_take(size) : NULL;
    if (!p) p = system_alloc(size);
    if (!p && hr_empty_cache() > 0) p = system_alloc(size);
    if (!p) return hr_fail_null(HR_ENOMEM, "out of memory allocating %zu bytes", nbytes);
    atomic_fetch_add(&live_bytes, nbytes);
    return p;
}

void hr_free_bytes(void *p, size_t nbytes)
{
    if (!p) return;
    bool ok;
    size_t size = block_size(nbytes, &ok);
    if (!(size >= HR_BIG_BLOCK && cache_put(p, size))) free(p);
    atomic_fetch_sub(&live_bytes, nbytes);
}

hr_storage *hr_storage_new(size_t nbytes, hr_device dev)
{
    if (dev.type == HR_CUDA) return hr_cuda_storage_new(nbytes, dev.index); /* the device's caching allocator */
    hr_storage *s = calloc(1, sizeof *s);
    if (!s) return hr_fail_null(HR_ENOMEM, "out of memory allocating a storage header");
    s->data = hr_alloc_bytes(nbytes);
    if (!s->data) {
        free(s);
        return NULL;
    }
    s->nbytes = nbytes;
    s->device = dev;
    s->kind = HR_STORAGE_HEAP;
    s->refcount = 1;
    return s;
}

hr_storage *hr_storage_new_mmap(void *map_base, size_t map_len, void *data, size_t nbytes)
{
    hr_storage *s = calloc(1, sizeof *s);
    if (!s) return hr_fail_null(HR_ENOMEM, "out of memory allocating a storage header");
    s->data = data;
    s->nbytes = nbytes;
    s->device = hr_cpu();
    s->kind = HR_STORAGE_MMAP;
    s->refcount = 1;
    s->map_base = map_base;
    s->map_len = map_len;
    return s;
}

void hr_storage_retain(hr_storage *s)
{
    if (s) s->refcount++;
}

void hr_storage_release(hr_storage *s)
{
    if (!s || --s->refcount > 0) return;
    switch (s->kind) {
    case HR_STORAGE_HEAP: hr_free_bytes(s->data, s->nbytes); break;
    case HR_STORAGE_MMAP: munmap(s->map_base, s->map_len); break;
    case HR_STORAGE_EXTERNAL:
        if (s->destroy) s->destroy(s);
        break;
    }
    free(s);
}
