/*
 * hr_mirror.c — host copies of small integer tensors uploaded to a GPU.
 *
 * A GPU runs behind the host: reading a device tensor back means waiting until the device has
 * done everything queued before the read, and then the device waits for the host to queue more.
 * The tensors a forward pass reads back are mostly ones the host uploaded itself a moment before:
 * a batch's token ids, masks and index lists, whose values every indexing op checks before its
 * kernel runs. For those, the bytes the upload sent are kept on the host beside the device storage
 * and read instead, for as long as nothing has written the device storage since (its version, which
 * every in-place write bumps, is unchanged). Only whole storages of integers or bools up to
 * HR_MIRROR_MAX bytes are mirrored: float tensors are not indices, and big ones are not read back.
 */
#include "hr_core.h"

#define HR_MIRROR_MAX ((size_t)1 << 20)

static bool mirrored_dtype(hr_dtype dt)
{
    return dt == HR_I64 || dt == HR_I32 || dt == HR_U8 || dt == HR_BOOL;
}

void hr_mirror_upload(hr_tensor *dst, const hr_tensor *src)
{
    hr_storage *s = dst->storage;
    size_t nbytes = (size_t)hr_tensor_numel(dst) * hr_dtype_size(dst->dtype);
    if (s->device.type == HR_CPU || hr_tensor_device(src).type != HR_CPU) return;
    hr_storage_release(s->host_mirror); /* whatever happens below, an older copy is no longer the bytes */
    s->host_mirror = NULL;
    /* integers from integers only: a float source's conversion on the device is not promised to
     * match the host's for values no integer holds (NaN, out of range) */
    if (!mirrored_dtype(dst->dtype) || !mirrored_dtype(src->dtype) || dst->offset != 0 || nbytes != s->nbytes ||
        nbytes == 0 || nbytes > HR_MIRROR_MAX || !hr_tensor_is_contiguous(dst))
        return;
    hr_storage *m = hr_storage_new(nbytes, hr_cpu());
    hr_tensor *view = m ? hr_tensor_view_of(m, dst->dtype, dst->ndim, dst->size, dst->stride, 0) : NULL;
    /* the values as dst's dtype holds them (src may be another dtype or strided) */
    if (!view || hr_copy_(view, src)) {
        hr_clear_error();
        hr_tensor_release(view);
        hr_storage_release(m);
        return;
    }
    hr_tensor_release(view);
    s->host_mirror = m;
    s->mirror_version = s->version;
}

hr_tensor *hr_mirror_view(const hr_tensor *t)
{
    const hr_storage *s = t->storage;
    if (!s || !s->host_mirror || s->mirror_version != s->version) return NULL;
    hr_tensor *v = hr_tensor_view_of(s->host_mirror, t->dtype, t->ndim, t->size, t->stride, t->offset);
    if (!v) hr_clear_error();
    return v;
}
