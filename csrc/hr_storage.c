/* hr_storage.c — refcounted byte buffers behind tensors (heap, mapped file or external). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hr_core.h"
#include "hr_cuda.h"

hr_storage *hr_storage_new(size_t nbytes, hr_device dev)
{
    if (dev.type == HR_CUDA) return hr_cuda_storage_new(nbytes, dev.index); /* the device's caching allocator */
    hr_storage *s = hr_pool_zalloc(HR_POOL_STORAGE, sizeof *s);
    if (!s) return hr_fail_null(HR_ENOMEM, "out of memory allocating a storage header");
    s->data = hr_alloc_bytes(nbytes);
    if (!s->data) {
        hr_pool_free(HR_POOL_STORAGE, s);
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
    hr_storage *s = hr_pool_zalloc(HR_POOL_STORAGE, sizeof *s);
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
    hr_storage_release(s->host_mirror);
    switch (s->kind) {
    case HR_STORAGE_HEAP: hr_free_bytes(s->data, s->nbytes); break;
    case HR_STORAGE_MMAP: munmap(s->map_base, s->map_len); break;
    case HR_STORAGE_EXTERNAL:
        if (s->destroy) s->destroy(s);
        break;
    }
    hr_pool_free(HR_POOL_STORAGE, s);
}
