/* hr_tensor.c — tensor headers: creation, reference counting, descriptions and checks. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_core.h"
#include "hr_cuda.h"

int64_t hr_tensor_numel(const hr_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->size[i];
    return n;
}

bool hr_tensor_is_contiguous(const hr_tensor *t)
{
    /* An empty tensor has no bytes to lay out: it is contiguous whatever its strides (as in PyTorch;
     * hr_contiguous_strides gives a [0, 0] tensor strides [1, 1], which the product rule rejected). */
    for (int i = 0; i < t->ndim; i++)
        if (t->size[i] == 0) return true;
    int64_t expected = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->size[i] != 1 && t->stride[i] != expected) return false;
        expected *= t->size[i];
    }
    return true;
}

int hr_tensor_check_live(const hr_tensor *t, const char *what)
{
    if (!t || !t->storage) return hr_fail(HR_EFREED, "%s: tensor was freed", what);
    return 0;
}

const char *hr_shape_str(int ndim, const int64_t *size, char *buf, size_t cap)
{
    if (ndim == 0) {
        snprintf(buf, cap, "scalar");
        return buf;
    }
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < ndim && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, i ? "x%" PRId64 : "%" PRId64, size[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    return buf;
}

const char *hr_device_str(hr_device d, char *buf, size_t cap)
{
    if (d.type == HR_CPU) snprintf(buf, cap, "cpu");
    else snprintf(buf, cap, "cuda:%d", d.index);
    return buf;
}

int hr_device_parse(const char *s, hr_device *out)
{
    if (strcmp(s, "cpu") == 0) {
        *out = hr_cpu();
        return 0;
    }
    if (strncmp(s, "cuda", 4) == 0) {
        int index = 0;
        if (s[4] == ':') {
            char *end;
            long v = strtol(s + 5, &end, 10);
            if (end == s + 5 || *end || v < 0 || v > 1024)
                return hr_fail(HR_EINVAL, "bad device '%s' (expected 'cpu', 'cuda' or 'cuda:N')", s);
            index = (int)v;
        } else if (s[4] != '\0') {
            return hr_fail(HR_EINVAL, "bad device '%s' (expected 'cpu', 'cuda' or 'cuda:N')", s);
        }
        out->type = HR_CUDA;
        out->index = index;
        return 0;
    }
    return hr_fail(HR_EINVAL, "bad device '%s' (expected 'cpu', 'cuda' or 'cuda:N')", s);
}

const char *hr_tensor_desc(const hr_tensor *t, char *buf, size_t cap)
{
    if (!t || !t->storage) {
        snprintf(buf, cap, "freed tensor");
        return buf;
    }
    char shape[160], dev[16];
    snprintf(buf, cap, "%s %s %s", hr_dtype_name(t->dtype), hr_device_str(hr_tensor_device(t), dev, sizeof dev),
             hr_shape_str(t->ndim, t->size, shape, sizeof shape));
    return buf;
}

void hr_contiguous_strides(int ndim, const int64_t *size, int64_t *stride)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        stride[i] = s;
        s *= size[i] > 0 ? size[i] : 1;
    }
}

int hr_wrap_dim(const char *op, int64_t dim, int ndim, int *out)
{
    int64_t n = ndim > 0 ? ndim : 1;
    if (dim < -n || dim >= n)
        return hr_fail(HR_EINVAL, "%s: dimension %" PRId64 " out of range for a %d-D tensor", op, dim + 1, ndim);
    *out = (int)(dim < 0 ? dim + n : dim);
    return 0;
}

static int check_shape(int ndim, const int64_t *size, int64_t *numel)
{
    if (ndim < 0 || ndim > HR_MAX_DIMS)
        return hr_fail(HR_EINVAL, "tensors have at most %d dimensions, got %d", HR_MAX_DIMS, ndim);
    /* The product of the non-zero sizes is bounded even when some size is 0: contiguous strides are
     * that product, so an empty [0, 2^62, 2^62] tensor would overflow them. */
    int64_t n = 1;
    bool empty = false;
    for (int i = 0; i < ndim; i++) {
        if (size[i] < 0) return hr_fail(HR_EINVAL, "negative size %" PRId64 " in dimension %d", size[i], i + 1);
        if (size[i] == 0) {
            empty = true;
            continue;
        }
        if (n > INT64_MAX / 8 / size[i])
            return hr_fail(HR_ENOMEM, "tensor size overflows (dimension %d of size %" PRId64 ")", i + 1, size[i]);
        n *= size[i];
    }
    *numel = empty ? 0 : n;
    return 0;
}

static hr_tensor *header_new(hr_storage *s, hr_dtype dt, int ndim, const int64_t *size, const int64_t *stride,
                             int64_t offset)
{
    hr_tensor *t = hr_pool_zalloc(HR_POOL_TENSOR, sizeof *t);
    if (!t) return hr_fail_null(HR_ENOMEM, "out of memory allocating a tensor header");
    t->storage = s;
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        t->size[i] = size[i];
        t->stride[i] = stride[i];
    }
    t->offset = offset;
    t->refcount = 1;
    return t;
}

hr_tensor *hr_tensor_empty(int ndim, const int64_t *size, hr_dtype dt, hr_device dev)
{
    int64_t numel;
    if ((unsigned)dt >= HR_NDTYPES) return hr_fail_null(HR_EINVAL, "invalid dtype %d", (int)dt);
    if (check_shape(ndim, size, &numel)) return NULL;
    hr_storage *s = hr_storage_new((size_t)numel * hr_dtype_size(dt), dev);
    if (!s) return NULL;
    int64_t stride[HR_MAX_DIMS];
    hr_contiguous_strides(ndim, size, stride);
    hr_tensor *t = header_new(s, dt, ndim, size, stride, 0);
    if (!t) hr_storage_release(s);
    return t;
}

hr_tensor *hr_tensor_zeros(int ndim, const int64_t *size, hr_dtype dt, hr_device dev)
{
    hr_tensor *t = hr_tensor_empty(ndim, size, dt, dev);
    if (t && dev.type == HR_CPU) memset(t->storage->data, 0, t->storage->nbytes);
    if (t && dev.type == HR_CUDA && hr_cuda_memset0(t->storage)) {
        hr_tensor_release(t);
        return NULL;
    }
    return t;
}

hr_tensor *hr_tensor_empty_like(const hr_tensor *t)
{
    return hr_tensor_empty(t->ndim, t->size, t->dtype, hr_tensor_device(t));
}

hr_tensor *hr_tensor_view_of(hr_storage *s, hr_dtype dt, int ndim, const int64_t *size, const int64_t *stride,
                             int64_t offset)
{
    int64_t numel;
    if (check_shape(ndim, size, &numel)) return NULL;
    if (offset < 0) return hr_fail_null(HR_EINVAL, "negative storage offset %" PRId64, offset);
    /* Every reachable element must lie inside the storage. */
    int64_t lo = offset, hi = offset;
    if (numel > 0) {
        bool wraps = false; /* an extent past 64 bits is outside any storage */
        for (int i = 0; i < ndim; i++) {
            int64_t span;
            if (__builtin_mul_overflow(size[i] - 1, stride[i], &span) ||
                __builtin_add_overflow(span < 0 ? lo : hi, span, span < 0 ? &lo : &hi))
                wraps = true;
        }
        size_t cap = s->nbytes / hr_dtype_size(dt);
        if (wraps || lo < 0 || (uint64_t)hi >= cap)
            return hr_fail_null(HR_EINVAL, "view reaches outside its storage of %zu elements", cap);
    }
    hr_tensor *t = header_new(s, dt, ndim, size, stride, offset);
    if (t) hr_storage_retain(s);
    return t;
}

void hr_tensor_retain(hr_tensor *t)
{
    if (t) t->refcount++;
}

void hr_tensor_free_storage(hr_tensor *t)
{
    if (!t) return;
    if (t->storage) {
        hr_storage_release(t->storage);
        t->storage = NULL;
    }
}

void hr_tensor_release(hr_tensor *t)
{
    if (!t || --t->refcount > 0) return;
    hr_tensor_free_storage(t);
    hr_tensor_release(t->grad);
    t->grad = NULL;
    hr_node_release(t->grad_fn);
    t->grad_fn = NULL;
    hr_pool_free(HR_POOL_TENSOR, t);
}
