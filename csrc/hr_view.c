/* hr_view.c — views: new headers over the same storage (narrow, select, transpose, permute,
 * reshape without copy, expand, squeeze, unsqueeze). Dimensions are 0-based here. */
#include <inttypes.h>
#include <string.h>

#include "hr_core.h"

static hr_tensor *derive(hr_tensor *t, int ndim, const int64_t *size, const int64_t *stride, int64_t offset)
{
    return hr_tensor_view_of(t->storage, t->dtype, ndim, size, stride, offset);
}

hr_tensor *hr_view_alias(hr_tensor *t)
{
    if (hr_tensor_check_live(t, "view")) return NULL;
    return derive(t, t->ndim, t->size, t->stride, t->offset);
}

hr_tensor *hr_view_narrow(hr_tensor *t, int dim, int64_t start, int64_t length)
{
    if (hr_tensor_check_live(t, "narrow")) return NULL;
    if (dim < 0 || dim >= t->ndim) return hr_fail_null(HR_EINVAL, "narrow: dimension %d out of range for a %d-D tensor", dim + 1, t->ndim);
    if (start < 0 || length < 0 || start > t->size[dim] || length > t->size[dim] - start) { /* no sum to overflow */
        int64_t start1 = start < INT64_MAX ? start + 1 : start; /* as the caller counts */
        return hr_fail_null(HR_EINVAL, "narrow: 1-based start %" PRId64 " and length %" PRId64
                            " reach outside dimension %d of size %" PRId64,
                            start1, length, dim + 1, t->size[dim]);
    }
    int64_t size[HR_MAX_DIMS];
    memcpy(size, t->size, sizeof size);
    size[dim] = length;
    return derive(t, t->ndim, size, t->stride, t->offset + (length ? start * t->stride[dim] : 0));
}

hr_tensor *hr_view_select(hr_tensor *t, int dim, int64_t index)
{
    if (hr_tensor_check_live(t, "select")) return NULL;
    if (dim < 0 || dim >= t->ndim) return hr_fail_null(HR_EINVAL, "select: dimension %d out of range for a %d-D tensor", dim + 1, t->ndim);
    if (index < 0 || index >= t->size[dim])
        return hr_fail_null(HR_EINVAL, "select: index %" PRId64 " out of range for dimension %d of size %" PRId64, index + 1,
                            dim + 1, t->size[dim]);
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (i == dim) continue;
        size[n] = t->size[i];
        stride[n] = t->stride[i];
        n++;
    }
    return derive(t, n, size, stride, t->offset + index * t->stride[dim]);
}

hr_tensor *hr_view_transpose(hr_tensor *t, int d0, int d1)
{
    if (hr_tensor_check_live(t, "transpose")) return NULL;
    if (d0 < 0 || d0 >= t->ndim || d1 < 0 || d1 >= t->ndim)
        return hr_fail_null(HR_EINVAL, "transpose: dimensions %d and %d out of range for a %d-D tensor", d0 + 1, d1 + 1, t->ndim);
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    memcpy(size, t->size, sizeof size);
    memcpy(stride, t->stride, sizeof stride);
    size[d0] = t->size[d1];
    size[d1] = t->size[d0];
    stride[d0] = t->stride[d1];
    stride[d1] = t->stride[d0];
    return derive(t, t->ndim, size, stride, t->offset);
}

hr_tensor *hr_view_permute(hr_tensor *t, const int *perm)
{
    if (hr_tensor_check_live(t, "permute")) return NULL;
    int seen[HR_MAX_DIMS] = {0};
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) {
        int p = perm[i];
        if (p < 0 || p >= t->ndim || seen[p])
            return hr_fail_null(HR_EINVAL, "permute: not a permutation of the %d dimensions (entry %d is %d)", t->ndim, i + 1, p + 1);
        seen[p] = 1;
        size[i] = t->size[p];
        stride[i] = t->stride[p];
    }
    return derive(t, t->ndim, size, stride, t->offset);
}

/* Resolves one -1 entry and checks that the element count is unchanged. */
static int infer_shape(const char *op, const hr_tensor *t, int ndim, const int64_t *in, int64_t *out)
{
    int infer = -1;
    int64_t known = 1, numel = hr_tensor_numel(t);
    char a[160], b[160];
    if (ndim > HR_MAX_DIMS) return hr_fail(HR_EINVAL, "%s: at most %d dimensions", op, HR_MAX_DIMS);
    for (int i = 0; i < ndim; i++) {
        out[i] = in[i];
        if (in[i] == -1) {
            if (infer >= 0) return hr_fail(HR_EINVAL, "%s: only one dimension can be -1", op);
            infer = i;
        } else if (in[i] < 0) {
            return hr_fail(HR_EINVAL, "%s: invalid size %" PRId64 " in dimension %d", op, in[i], i + 1);
        } else if (__builtin_mul_overflow(known, in[i], &known)) {
            /* a product past 64 bits could wrap around to the element count */
            return hr_fail(HR_EINVAL, "%s: shape %s has more elements than 64 bits count", op,
                           hr_shape_str(ndim, in, a, sizeof a));
        }
    }
    if (infer >= 0) {
        if (known == 0 || numel % known)
            return hr_fail(HR_EINVAL, "%s: shape %s is invalid for a tensor of size %s (%" PRId64 " elements)", op,
                           hr_shape_str(ndim, in, a, sizeof a), hr_shape_str(t->ndim, t->size, b, sizeof b), numel);
        out[infer] = numel / known;
        known = numel;
    }
    if (known != numel)
        return hr_fail(HR_EINVAL, "%s: shape %s is invalid for a tensor of size %s (%" PRId64 " elements)", op,
                       hr_shape_str(ndim, in, a, sizeof a), hr_shape_str(t->ndim, t->size, b, sizeof b), numel);
    return 0;
}

/* Computes strides for viewing t as `size` without copying, if t's layout allows it. Old dims are
 * grouped into chunks that are contiguous among themselves; each chunk must be covered exactly by
 * a run of new dims, which then get strides inside that chunk. */
static bool view_strides(const hr_tensor *t, int ndim, const int64_t *size, int64_t *stride)
{
    if (hr_tensor_numel(t) == 0 || t->ndim == 0) {
        hr_contiguous_strides(ndim, size, stride);
        return true;
    }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = t->stride[t->ndim - 1];
    int64_t tensor_numel = 1, view_numel = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        tensor_numel *= t->size[d];
        bool chunk_ends = d == 0 || (t->size[d - 1] != 1 && t->stride[d - 1] != tensor_numel * chunk_base_stride);
        if (!chunk_ends) continue;
        while (view_d >= 0 && (view_numel < tensor_numel || size[view_d] == 1)) {
            stride[view_d] = view_numel * chunk_base_stride;
            view_numel *= size[view_d];
            view_d--;
        }
        if (view_numel != tensor_numel) return false;
        if (d > 0) {
            chunk_base_stride = t->stride[d - 1];
            tensor_numel = 1;
            view_numel = 1;
        }
    }
    return view_d == -1;
}

hr_tensor *hr_view_reshape_nocopy(hr_tensor *t, int ndim, const int64_t *size)
{
    if (hr_tensor_check_live(t, "view")) return NULL;
    int64_t shape[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    if (infer_shape("view", t, ndim, size, shape)) return NULL;
    if (!view_strides(t, ndim, shape, stride)) {
        char a[160], b[160];
        return hr_fail_null(HR_EINVAL,
                            "view: a tensor of size %s with these strides cannot be viewed as %s without a copy "
                            "(use reshape or contiguous)",
                            hr_shape_str(t->ndim, t->size, a, sizeof a), hr_shape_str(ndim, shape, b, sizeof b));
    }
    return derive(t, ndim, shape, stride, t->offset);
}

hr_tensor *hr_view_expand(hr_tensor *t, int ndim, const int64_t *size)
{
    if (hr_tensor_check_live(t, "expand")) return NULL;
    char a[160], b[160];
    if (ndim < t->ndim || ndim > HR_MAX_DIMS)
        return hr_fail_null(HR_EINVAL, "expand: cannot expand a tensor of size %s to %d dimensions",
                            hr_shape_str(t->ndim, t->size, a, sizeof a), ndim);
    int64_t shape[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    int lead = ndim - t->ndim;
    for (int i = 0; i < ndim; i++) {
        int j = i - lead;
        int64_t want = size[i];
        if (want < -1)
            return hr_fail_null(HR_EINVAL, "expand: size %" PRId64 " of dimension %d is negative (-1 keeps a size)", want,
                                i + 1);
        if (j < 0) {
            if (want < 0) return hr_fail_null(HR_EINVAL, "expand: -1 is not allowed for a new leading dimension");
            shape[i] = want;
            stride[i] = 0;
        } else if (want == -1 || want == t->size[j]) {
            shape[i] = t->size[j];
            stride[i] = t->stride[j];
        } else if (t->size[j] == 1 && want >= 0) {
            shape[i] = want;
            stride[i] = 0;
        } else {
            return hr_fail_null(HR_EINVAL, "expand: cannot expand size %s to %s (dimension %d is %" PRId64 ", not 1)",
                                hr_shape_str(t->ndim, t->size, a, sizeof a), hr_shape_str(ndim, size, b, sizeof b),
                                i + 1, t->size[j]);
        }
    }
    return derive(t, ndim, shape, stride, t->offset);
}

hr_tensor *hr_view_squeeze(hr_tensor *t, int dim)
{
    if (hr_tensor_check_live(t, "squeeze")) return NULL;
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        bool drop = t->size[i] == 1 && (dim < 0 || dim == i);
        if (drop) continue;
        size[n] = t->size[i];
        stride[n] = t->stride[i];
        n++;
    }
    return derive(t, n, size, stride, t->offset);
}

hr_tensor *hr_view_unsqueeze(hr_tensor *t, int dim)
{
    if (hr_tensor_check_live(t, "unsqueeze")) return NULL;
    if (dim < 0 || dim > t->ndim || t->ndim >= HR_MAX_DIMS)
        return hr_fail_null(HR_EINVAL, "unsqueeze: position %d out of range for a %d-D tensor", dim + 1, t->ndim);
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    int n = 0;
    for (int i = 0; i <= t->ndim; i++) {
        if (i == dim) {
            size[n] = 1;
            stride[n] = (i < t->ndim) ? t->stride[i] * t->size[i] : 1;
            n++;
        }
        if (i < t->ndim) {
            size[n] = t->size[i];
            stride[n] = t->stride[i];
            n++;
        }
    }
    return derive(t, n, size, stride, t->offset);
}
