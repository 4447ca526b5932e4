/* hr_alloc.c — host memory for tensor storages: size classes, a cache of released big blocks whose
 * pages serve later requests of any nearby size, and the counters behind hero.memory_stats(). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hr_core.h"

/*
 * A training step allocates and releases the same buffers every time, and a fresh page costs the
 * kernel a page fault and clearing it, which is more than the arithmetic done on many of them.
 * So blocks of HR_BIG_BLOCK and more are kept in a cache after release and handed out again:
 *
 *  - for a request of the same size class, as they are;
 *  - for a request of another size (each big block is a mapping of its own), the front of the
 *    smallest larger block (the rest stays cached), or else the pages of several cached blocks
 *    moved side by side onto one new mapping (mremap moves page tables: nothing is copied or
 *    cleared). So a forward pass's activations and a backward pass's gradients, whose sizes
 *    differ, recycle the same pages, and a step in its steady state asks the system for none;
 *  - the cache never makes the process bigger than the most memory tensors ever held at once
 *    (live + cached <= that high-water mark): a request that would go over it first returns
 *    cached blocks to the system. So the footprint follows the largest live set, not the live set
 *    plus every size ever released.
 *
 * The cache holds at most HR_CACHE_ENTRIES blocks and cache.limit bytes: by default a quarter of
 * the physical memory, at least HR_CACHE_MIN_LIMIT (hr_set_cache_limit changes it). A fixed 1 GiB
 * made a HERO step of 32 videos, whose LM-head logits, their gradient and its padded copy are
 * 523 MiB each, return 1.2 GiB to the system and fault as much back in every step: from 0.1 to
 * more than 1 s per step on a virtual machine whose fresh pages, huge or not, took 80 ms to 1 s
 * per 523 MiB. The high-water bound above already keeps the footprint at the largest live set;
 * the limit bounds what stays held while nothing runs. hr_empty_cache() returns everything to the
 * system (small blocks kept for reuse too, see small_take), and the high-water mark then starts
 * again from the live set; an allocation that fails empties the cache and tries again.
 */
#define HR_BIG_BLOCK ((size_t)128 << 10)
#define HR_HUGE_ALIGN ((size_t)2 << 20)
#define HR_CACHE_ENTRIES 512
#define HR_CACHE_MIN_LIMIT ((size_t)1 << 30)

/* AddressSanitizer checks malloc'd blocks, not mappings: its builds keep every block in malloc. */
#if defined(__SANITIZE_ADDRESS__)
#define HR_MAP_BIG_BLOCKS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HR_MAP_BIG_BLOCKS 0
#endif
#endif
#ifndef HR_MAP_BIG_BLOCKS
#define HR_MAP_BIG_BLOCKS 1
#endif

typedef struct {
    void *ptr;
    size_t size; /* rounded size of the block */
} cached_block;

static atomic_size_t live_bytes, peak_live;
/* The live big blocks (those the cache serves) in their rounded sizes, as the cache counts its
 * own: the bound live + cached <= high_water must compare like with like. Counting requested
 * bytes, every release added its rounding to the sum, and counting small blocks, whatever small
 * tensors happened to be live; either way the next request found the sum a few bytes over and
 * evicted a whole block (a training step re-faulted ~2 MiB of fresh pages that way). */
static atomic_size_t live_block_bytes;

static struct {
    pthread_mutex_t lock;
    cached_block blocks[HR_CACHE_ENTRIES]; /* oldest first */
    int count;
    size_t bytes;
    size_t high_water; /* the most bytes of big blocks ever live: live + cached stays under it */
    size_t limit;      /* the most bytes cached; 0 until first needed (default_limit) */
    size_t hits, misses, evicted, fresh;
} cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* A quarter of the physical memory, at least HR_CACHE_MIN_LIMIT. */
static size_t default_limit(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t quarter = pages > 0 && page > 0 ? (size_t)pages / 4 * (size_t)page : 0;
    return quarter > HR_CACHE_MIN_LIMIT ? quarter : HR_CACHE_MIN_LIMIT;
}

/* The cache's byte limit. Called with the lock held. */
static size_t cache_limit(void)
{
    if (!cache.limit) cache.limit = default_limit();
    return cache.limit;
}

size_t hr_live_bytes(void) { return atomic_load(&live_bytes); }

/* The size actually allocated for a request: 64-byte multiples; from HR_BIG_BLOCK on, size
 * classes of 1/8 of the power of two below (at most 12.5% unused) so that tensors of nearby sizes
 * share cached blocks. The classes are 2 MiB multiples (whole huge pages) from 16 MiB on; below
 * that a class such as 2.25 MiB stays as it is rather than growing to 4 MiB, because the huge page
 * under an unused tail would be resident all the same. */
static size_t block_size(size_t nbytes, bool *ok)
{
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    *ok = rounded >= nbytes;
    if (rounded == 0) rounded = 64;
    if (rounded >= HR_BIG_BLOCK) {
        size_t p = HR_BIG_BLOCK;
        while (p <= rounded / 2) p *= 2;
        size_t step = p / 8;
        size_t big = (rounded + step - 1) / step * step;
        *ok = *ok && big >= rounded;
        rounded = big;
    }
    return rounded;
}

static bool is_mapped(size_t size) { return HR_MAP_BIG_BLOCKS && size >= HR_BIG_BLOCK; }

/* Transparent huge pages for the whole 2 MiB pages of a block only: a partly used huge page at its
 * end would be resident in full. Advisory: failure only costs speed. */
static void advise(void *p, size_t size)
{
    size_t whole = size / HR_HUGE_ALIGN * HR_HUGE_ALIGN;
#ifdef MADV_HUGEPAGE
    if (whole) (void)madvise(p, whole, MADV_HUGEPAGE);
#endif
#ifdef MADV_NOHUGEPAGE
    if (size > whole) (void)madvise((char *)p + whole, size - whole, MADV_NOHUGEPAGE);
#endif
}

/* A mapping of `size` bytes (a page multiple), on a 2 MiB boundary from 2 MiB on; its pages are
 * not touched yet. Releasing it gives its pages back to the system at once, where a block freed
 * into malloc's heap would stay resident and fragment it. */
static void *map_block(size_t size)
{
    if (size < HR_HUGE_ALIGN) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    size_t len = size + HR_HUGE_ALIGN;
    if (len < size) return NULL;
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return NULL;
    char *p = (char *)(((uintptr_t)base + HR_HUGE_ALIGN - 1) & ~(uintptr_t)(HR_HUGE_ALIGN - 1));
    size_t head = (size_t)(p - base), tail = len - head - size;
    if (head) munmap(base, head);
    if (tail) munmap(p + size, tail);
    return p;
}

static void *system_alloc(size_t size)
{
    void *p = NULL;
    if (is_mapped(size))
        p = map_block(size);
    else if (posix_memalign(&p, size >= HR_HUGE_ALIGN ? HR_HUGE_ALIGN : 64, size) != 0) /* sizes of any multiple */
        p = NULL;
    if (p && size >= HR_HUGE_ALIGN) advise(p, size);
    return p;
}

static void system_free(void *p, size_t size)
{
    if (is_mapped(size))
        munmap(p, size);
    else
        free(p);
}

/*
 * Blocks under HR_BIG_BLOCK come from malloc aligned to 64 bytes. glibc serves aligned requests
 * outside its per-thread fast lists, splitting a larger chunk each time and merging the pieces back
 * on release: for a small layer's forward, 40% of the host time went to malloc's bins. Released
 * small blocks are kept instead on a last-in-first-out list per exact size (64-byte multiples), up
 * to HR_SMALL_CACHE_BYTES in all, and handed out again to a request of the same size: a training
 * step releases and asks for the same sizes every time. The list links live in the blocks' first
 * bytes. AddressSanitizer builds keep no blocks, so that a use after release is still reported.
 */
#define HR_SMALL_CLASSES (HR_BIG_BLOCK / 64)
#define HR_SMALL_CACHE_BYTES ((size_t)16 << 20)

typedef struct small_block {
    struct small_block *next;
} small_block;

static struct {
    pthread_mutex_t lock;
    small_block *heads[HR_SMALL_CLASSES]; /* index: size / 64 - 1 */
    size_t bytes, count;
} small = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *small_take(size_t size)
{
    if (!HR_MAP_BIG_BLOCKS) return NULL;
    size_t cls = size / 64 - 1;
    pthread_mutex_lock(&small.lock);
    small_block *b = small.heads[cls];
    if (b) {
        small.heads[cls] = b->next;
        small.bytes -= size;
        small.count--;
    }
    pthread_mutex_unlock(&small.lock);
    return b;
}

/* Keeps a released small block; false when the cache is full (the caller frees it). */
static bool small_put(void *p, size_t size)
{
    if (!HR_MAP_BIG_BLOCKS) return false;
    size_t cls = size / 64 - 1;
    bool kept = false;
    pthread_mutex_lock(&small.lock);
    if (small.bytes + size <= HR_SMALL_CACHE_BYTES) {
        small_block *b = p;
        b->next = small.heads[cls];
        small.heads[cls] = b;
        small.bytes += size;
        small.count++;
        kept = true;
    }
    pthread_mutex_unlock(&small.lock);
    return kept;
}

/* Returns every kept small block to malloc; the bytes released. */
static size_t small_release_all(void)
{
    small_block *lists[HR_SMALL_CLASSES];
    pthread_mutex_lock(&small.lock);
    size_t released = small.bytes;
    memcpy(lists, small.heads, sizeof lists);
    memset(small.heads, 0, sizeof small.heads);
    small.bytes = 0;
    small.count = 0;
    pthread_mutex_unlock(&small.lock);
    for (size_t i = 0; i < HR_SMALL_CLASSES; i++) {
        while (lists[i]) {
            small_block *next = lists[i]->next;
            free(lists[i]);
            lists[i] = next;
        }
    }
    return released;
}

static void remove_at(int i)
{
    cache.bytes -= cache.blocks[i].size;
    memmove(cache.blocks + i, cache.blocks + i + 1, sizeof cache.blocks[0] * (size_t)(cache.count - i - 1));
    cache.count--;
}

/* Adds a block as the newest; false when the cache has no room for it. Called with the lock held. */
static bool push_block(void *p, size_t size)
{
    if (cache.count >= HR_CACHE_ENTRIES || cache.bytes + size > cache_limit()) return false;
    cache.blocks[cache.count].ptr = p;
    cache.blocks[cache.count].size = size;
    cache.count++;
    cache.bytes += size;
    return true;
}

/* Takes blocks out of the cache until `deficit` bytes are gone, returning as few bytes as it can
 * (every byte returned now is a page cleared later): the largest blocks smaller than what is left
 * first, then the smallest block that covers the rest. Appends them to out[]; returns how many.
 * Called with the lock held. */
static int take_victims(size_t deficit, cached_block *out)
{
    int n = 0;
    while (deficit > 0 && cache.count > 0) {
        int below = -1, covering = -1;
        for (int i = 0; i < cache.count; i++) {
            size_t b = cache.blocks[i].size;
            if (b < deficit && (below < 0 || b > cache.blocks[below].size)) below = i;
            if (b >= deficit && (covering < 0 || b < cache.blocks[covering].size)) covering = i;
        }
        int i = below >= 0 ? below : covering;
        out[n++] = cache.blocks[i];
        deficit = cache.blocks[i].size >= deficit ? 0 : deficit - cache.blocks[i].size;
        cache.evicted += cache.blocks[i].size;
        remove_at(i);
    }
    return n;
}

/* The most pieces one request is put together from: each is a mapping of its own afterwards, and
 * one mremap call. HERO's step puts its 160 MiB LM-head buffers together from ~20-40 released
 * activations; at 16 pieces it faulted in 15 MiB of fresh pages every step (and evicted as much). */
#define HR_MAX_PIECES 64

typedef struct {
    cached_block pieces[HR_MAX_PIECES]; /* cached pages making up the block, in order */
    int npieces;
    size_t reused;                          /* bytes of them */
    cached_block victims[HR_CACHE_ENTRIES]; /* blocks to return to the system */
    int nvictims;
    void *split_tail;        /* part of a piece that stayed cached but could not (too small): unmap */
    size_t split_tail_size;
} plan;

/* Takes the first `want` bytes of cached block i as a piece; the rest of it stays cached (or is
 * unmapped when it is too small to be worth keeping). Called with the lock held. */
static void take_piece(plan *pl, int i, size_t want)
{
    cached_block b = cache.blocks[i];
    remove_at(i);
    size_t used = b.size < want ? b.size : want;
    pl->pieces[pl->npieces].ptr = b.ptr;
    pl->pieces[pl->npieces].size = used;
    pl->npieces++;
    pl->reused += used;
    if (b.size > used) {
        char *rest = (char *)b.ptr + used;
        size_t rest_size = b.size - used;
        if (rest_size < HR_BIG_BLOCK || !push_block(rest, rest_size)) {
            pl->split_tail = rest;
            pl->split_tail_size = rest_size;
        }
    }
}

/* Decides where the pages of a request of `size` bytes (a block size) come from, taking them out
 * of the cache. Called with the lock held. */
static void make_plan(size_t size, plan *pl)
{
    pl->npieces = 0;
    pl->reused = 0;
    pl->nvictims = 0;
    pl->split_tail = NULL;
    pl->split_tail_size = 0;
    int exact = -1, covering = -1;
    for (int i = cache.count - 1; i >= 0; i--) {
        size_t b = cache.blocks[i].size;
        if (b == size && exact < 0) exact = i;
        if (b >= size && (covering < 0 || b < cache.blocks[covering].size)) covering = i;
    }
    if (exact >= 0 || (HR_MAP_BIG_BLOCKS && covering >= 0)) {
        take_piece(pl, exact >= 0 ? exact : covering, size);
    } else if (HR_MAP_BIG_BLOCKS) {
        /* Put together from the largest cached blocks. */
        while (pl->reused < size && pl->npieces < HR_MAX_PIECES && cache.count > 0) {
            int largest = 0;
            for (int i = 1; i < cache.count; i++)
                if (cache.blocks[i].size > cache.blocks[largest].size) largest = i;
            take_piece(pl, largest, size - pl->reused);
        }
    }
    if (pl->reused > 0)
        cache.hits++;
    else
        cache.misses++;
    cache.fresh += size - pl->reused;
    /* Fresh pages must not make live + cached exceed the most ever live: return cached blocks. */
    size_t live = atomic_load(&live_block_bytes) + size;
    if (live > cache.high_water) cache.high_water = live;
    size_t over = live + cache.bytes > cache.high_water ? live + cache.bytes - cache.high_water : 0;
    pl->nvictims = take_victims(over, pl->victims);
}

/* Builds the block the plan describes: one cached block as it is, or a fresh mapping onto which
 * the pieces' pages are moved (mremap moves page tables: nothing is copied or cleared). */
static void *carry_out(const plan *pl, size_t size)
{
    if (pl->npieces == 1 && pl->reused == size) return pl->pieces[0].ptr;
    char *p = map_block(size);
    size_t at = 0;
    for (int i = 0; i < pl->npieces; i++) {
        /* mremap moves one mapping at a time: a piece that is itself made of several (a block put
         * together earlier) stays where it is and is released; that part of the new block keeps
         * the fresh pages it was mapped with. */
        if (!p || mremap(pl->pieces[i].ptr, pl->pieces[i].size, pl->pieces[i].size, MREMAP_MAYMOVE | MREMAP_FIXED,
                         p + at) == MAP_FAILED)
            munmap(pl->pieces[i].ptr, pl->pieces[i].size);
        at += pl->pieces[i].size;
    }
    if (p) advise(p, size);
    return p;
}

static void *cache_alloc(size_t size)
{
    plan pl;
    pthread_mutex_lock(&cache.lock);
    make_plan(size, &pl);
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < pl.nvictims; i++) system_free(pl.victims[i].ptr, pl.victims[i].size);
    if (pl.split_tail) munmap(pl.split_tail, pl.split_tail_size);
    if (pl.npieces == 0) return system_alloc(size);
    return carry_out(&pl, size);
}

/* Keeps a released block; when the cache is full the oldest blocks are returned to the system
 * first, so the cache follows the sizes the program currently uses. */
static bool cache_put(void *p, size_t size)
{
    cached_block evicted[HR_CACHE_ENTRIES];
    int nevicted = 0;
    pthread_mutex_lock(&cache.lock);
    if (size > cache_limit()) {
        pthread_mutex_unlock(&cache.lock);
        return false;
    }
    while (cache.count > 0 && (cache.count >= HR_CACHE_ENTRIES || cache.bytes + size > cache_limit())) {
        evicted[nevicted++] = cache.blocks[0];
        cache.evicted += cache.blocks[0].size;
        remove_at(0);
    }
    cache.blocks[cache.count].ptr = p;
    cache.blocks[cache.count].size = size;
    cache.count++;
    cache.bytes += size;
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < nevicted; i++) system_free(evicted[i].ptr, evicted[i].size);
    return true;
}

size_t hr_empty_cache(void)
{
    size_t small_released = small_release_all();
    cached_block all[HR_CACHE_ENTRIES];
    pthread_mutex_lock(&cache.lock);
    size_t released = cache.bytes;
    int n = cache.count;
    memcpy(all, cache.blocks, sizeof all[0] * (size_t)n);
    cache.count = 0;
    cache.bytes = 0;
    cache.high_water = atomic_load(&live_block_bytes); /* the bound starts again from what is live */
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < n; i++) system_free(all[i].ptr, all[i].size);
    return released + small_released;
}

size_t hr_set_cache_limit(size_t bytes)
{
    cached_block evicted[HR_CACHE_ENTRIES];
    int nevicted = 0;
    pthread_mutex_lock(&cache.lock);
    size_t previous = cache_limit();
    cache.limit = bytes ? bytes : default_limit();
    while (cache.count > 0 && cache.bytes > cache.limit) { /* the oldest go first, as in cache_put */
        evicted[nevicted++] = cache.blocks[0];
        cache.evicted += cache.blocks[0].size;
        remove_at(0);
    }
    pthread_mutex_unlock(&cache.lock);
    for (int i = 0; i < nevicted; i++) system_free(evicted[i].ptr, evicted[i].size);
    return previous;
}

size_t hr_cached_bytes(void)
{
    pthread_mutex_lock(&cache.lock);
    size_t n = cache.bytes;
    pthread_mutex_unlock(&cache.lock);
    pthread_mutex_lock(&small.lock);
    n += small.bytes;
    pthread_mutex_unlock(&small.lock);
    return n;
}

void hr_host_memory_stats(hr_host_memory_stats_t *out)
{
    pthread_mutex_lock(&cache.lock);
    out->cached = cache.bytes;
    out->cached_blocks = (size_t)cache.count;
    out->cache_hits = cache.hits;
    out->cache_misses = cache.misses;
    out->evicted = cache.evicted;
    out->fresh = cache.fresh;
    out->mapped_blocks = HR_MAP_BIG_BLOCKS;
    out->cache_limit = cache_limit();
    pthread_mutex_unlock(&cache.lock);
    pthread_mutex_lock(&small.lock);
    out->small_cached = small.bytes;
    out->small_cached_blocks = small.count;
    pthread_mutex_unlock(&small.lock);
    out->cached += out->small_cached;
    out->cached_blocks += out->small_cached_blocks;
    out->live = atomic_load(&live_bytes);
    out->peak_live = atomic_load(&peak_live);
}

void hr_reset_peak_live(void) { atomic_store(&peak_live, atomic_load(&live_bytes)); }

void *hr_alloc_bytes(size_t nbytes)
{
    bool ok;
    size_t size = block_size(nbytes, &ok);
    if (!ok) return hr_fail_null(HR_ENOMEM, "allocation of %zu bytes overflows", nbytes);
    void *p = size >= HR_BIG_BLOCK ? cache_alloc(size) : small_take(size);
    if (!p && size < HR_BIG_BLOCK) p = system_alloc(size);
    if (!p && hr_empty_cache() > 0) p = system_alloc(size);
    if (!p) return hr_fail_null(HR_ENOMEM, "out of memory allocating %zu bytes", nbytes);
    if (size >= HR_BIG_BLOCK) atomic_fetch_add(&live_block_bytes, size);
    size_t live = atomic_fetch_add(&live_bytes, nbytes) + nbytes;
    size_t peak = atomic_load(&peak_live);
    while (live > peak && !atomic_compare_exchange_weak(&peak_live, &peak, live)) {
    }
    return p;
}

void hr_free_bytes(void *p, size_t nbytes)
{
    if (!p) return;
    bool ok;
    size_t size = block_size(nbytes, &ok);
    bool kept = size >= HR_BIG_BLOCK ? cache_put(p, size) : small_put(p, size);
    if (!kept) system_free(p, size);
    if (size >= HR_BIG_BLOCK) atomic_fetch_sub(&live_block_bytes, size);
    atomic_fetch_sub(&live_bytes, nbytes);
}
