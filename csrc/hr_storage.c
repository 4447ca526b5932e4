/* hr_storage.c — refcounted byte buffers behind tensors (heap, mapped file or external). */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hr_core.h"

static atomic_size_t live_bytes;

size_t hr_live_bytes(void) { return atomic_load(&live_bytes); }

void *hr_alloc_bytes(size_t nbytes)
{
    /* Zero-byte tensors still get a distinct, freeable pointer. */
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    if (rounded < nbytes) return hr_fail_null(HR_ENOMEM, "allocation of %zu bytes overflows", nbytes);
    if (rounded == 0) rounded = 64;
    /* Big buffers start on a 2 MiB boundary and ask for transparent huge pages: first touching
     * fresh 4 KiB pages costs more than the arithmetic of a pointwise op on them. */
    bool huge = rounded >= ((size_t)4 << 20);
    void *p = huge ? aligned_alloc((size_t)2 << 20, (rounded + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1))
                   : aligned_alloc(64, rounded);
    if (!p) return hr_fail_null(HR_ENOMEM, "out of memory allocating %zu bytes", nbytes);
#ifdef MADV_HUGEPAGE
    if (huge) (void)madvise(p, rounded, MADV_HUGEPAGE); /* advisory: failure only costs speed */
#endif
    atomic_fetch_add(&live_bytes, nbytes);
    return p;
}

void hr_free_bytes(void *p, size_t nbytes)
{
    if (!p) return;
    free(p);
    atomic_fetch_sub(&live_bytes, nbytes);
}

hr_storage *hr_storage_new(size_t nbytes, hr_device dev)
{
    if (dev.type != HR_CPU)
        return hr_fail_null(HR_EDEVICE, "device cuda:%d: this build of hero has no CUDA backend", dev.index);
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
