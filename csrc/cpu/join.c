/* join.c — joining and splitting: cat, stack, split, chunk, flip, repeat.
 *
 * cat copies each input into a narrowed view of the result with hr_copy_, whose walk coalesces
 * the contiguous runs: a contiguous input of the result's dtype costs one memmove per run of
 * size(dim) * (product of the later sizes) elements. Splits are views, never copies. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hr_cuda.h"
#include "hr_index.h"

/* Everything here is views and hr_copy_, which runs on either device: a CUDA tensor only needs a
 * build with the CUDA backend. */
static int check_device(const char *op, const hr_tensor *t)
{
    if (hr_tensor_device(t).type != HR_CPU && !hr_cuda_compiled())
        return hr_fail(HR_EDEVICE, "%s: CUDA tensors need the CUDA backend, which this build lacks", op);
    return 0;
}

/* Tensor pos of a list: live, and on the device of the list's first tensor. */
static int check_cpu(const char *op, hr_tensor *const *ts, int pos)
{
    const hr_tensor *t = ts[pos - 1];
    if (!t || !t->storage) return hr_fail(HR_EFREED, "%s: tensor %d of the list was freed", op, pos);
    if (check_device(op, t)) return -1;
    if (pos > 1 && !hr_device_eq(hr_tensor_device(t), hr_tensor_device(ts[0]))) {
        char a[16], b[16];
        return hr_fail(HR_EDEVICE, "%s: tensor %d of the list is on %s but tensor 1 is on %s (move it with :to())", op, pos,
                       hr_device_str(hr_tensor_device(t), a, sizeof a), hr_device_str(hr_tensor_device(ts[0]), b, sizeof b));
    }
    return 0;
}

/* PyTorch keeps accepting 1-D empty tensors in cat whatever the other shapes are (old code built
 * lists starting from torch.Tensor()); they contribute nothing. */
static bool cat_skipped(const hr_tensor *t) { return t->ndim == 1 && t->size[0] == 0; }

static hr_tensor *cat_impl(const char *op, int n, hr_tensor *const *ts, int dim)
{
    if (n < 1) return hr_fail_null(HR_EINVAL, "%s: expected a non-empty list of tensors", op);
    const hr_tensor *ref = NULL;
    int ref_pos = 0;
    hr_dtype dt = HR_BOOL;
    for (int i = 0; i < n; i++) {
        if (check_cpu(op, ts, i + 1)) return NULL;
        dt = i == 0 ? ts[i]->dtype : hr_dtype_promote(dt, ts[i]->dtype);
        if (ts[i]->ndim == 0)
            return hr_fail_null(HR_EINVAL, "%s: tensor %d of the list is 0-dimensional and cannot be concatenated", op, i + 1);
        if (!ref && !cat_skipped(ts[i])) {
            ref = ts[i];
            ref_pos = i + 1;
        }
    }
    if (!ref) { /* only empty 1-D tensors */
        if (dim != 0) return hr_fail_null(HR_EINVAL, "%s: dimension %d out of range for 1-D tensors", op, dim + 1);
        int64_t zero = 0;
        return hr_tensor_empty(1, &zero, dt, hr_tensor_device(ts[0]));
    }
    if (dim < 0 || dim >= ref->ndim)
        return hr_fail_null(HR_EINVAL, "%s: dimension %d out of range for %d-D tensors", op, dim + 1, ref->ndim);
    int64_t size[HR_MAX_DIMS];
    memcpy(size, ref->size, sizeof size);
    size[dim] = 0;
    for (int i = 0; i < n; i++) {
        const hr_tensor *t = ts[i];
        if (cat_skipped(t)) continue;
        bool ok = t->ndim == ref->ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = d == dim || t->size[d] == ref->size[d];
        if (!ok) {
            char a[160], b[160];
            return hr_fail_null(HR_EINVAL,
                                "%s: tensor %d of the list has size %s but tensor %d has size %s: sizes must match except "
                                "in dimension %d",
                                op, i + 1, hr_shape_str(t->ndim, t->size, a, sizeof a), ref_pos,
                                hr_shape_str(ref->ndim, ref->size, b, sizeof b), dim + 1);
        }
        size[dim] += t->size[dim];
    }
    hr_tensor *out = hr_tensor_empty(ref->ndim, size, dt, hr_tensor_device(ref));
    if (!out) return NULL;
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        const hr_tensor *t = ts[i];
        if (cat_skipped(t) || t->size[dim] == 0) continue;
        hr_tensor *part = hr_view_narrow(out, dim, at, t->size[dim]);
        int rc = part ? hr_copy_(part, t) : -1;
        if (part) hr_tensor_release(part);
        if (rc) {
            hr_tensor_release(out);
            return NULL;
        }
        at += t->size[dim];
    }
    return out;
}

hr_tensor *hr_cat(int n, hr_tensor *const *ts, int dim) { return cat_impl("cat", n, ts, dim); }

hr_tensor *hr_gather_rows(int n, hr_tensor *const *ts, const hr_tensor *index, int nlead, const int64_t *lead)
{
    const char *op = "gather_rows";
    if (n < 1) return hr_fail_null(HR_EINVAL, "%s: expected a non-empty list of tensors", op);
    int64_t total = 0, width = 0;
    for (int i = 0; i < n; i++) {
        const hr_tensor *t = ts[i];
        if (!t || !t->storage) return hr_fail_null(HR_EFREED, "%s: tensor %d of the list was freed", op, i + 1);
        if (hr_tensor_device(t).type != HR_CPU)
            return hr_fail_null(HR_EDEVICE, "%s: tensor %d of the list is not on the CPU", op, i + 1);
        if (t->ndim != 2) return hr_fail_null(HR_EINVAL, "%s: tensor %d of the list is %d-D, expected 2-D", op, i + 1, t->ndim);
        if (i == 0) width = t->size[1];
        if (t->dtype != ts[0]->dtype)
            return hr_fail_null(HR_EINVAL, "%s: tensor %d of the list is %s but tensor 1 is %s", op, i + 1,
                                hr_dtype_name(t->dtype), hr_dtype_name(ts[0]->dtype));
        if (t->size[1] != width)
            return hr_fail_null(HR_EINVAL, "%s: tensor %d of the list has rows of %" PRId64 " but tensor 1 of %" PRId64, op,
                                i + 1, t->size[1], width);
        total += t->size[0];
    }
    if (!index || !index->storage) return hr_fail_null(HR_EFREED, "%s: the index was freed", op);
    if (hr_tensor_device(index).type != HR_CPU) return hr_fail_null(HR_EDEVICE, "%s: the index is not on the CPU", op);
    if (index->ndim != 1 || (index->dtype != HR_I64 && index->dtype != HR_I32))
        return hr_fail_null(HR_EINVAL, "%s: the index must be a 1-D i64 or i32 tensor, got %d-D %s", op, index->ndim,
                            hr_dtype_name(index->dtype));
    int64_t m = index->size[0];
    if (nlead < 0 || nlead + 1 > HR_MAX_DIMS)
        return hr_fail_null(HR_EINVAL, "%s: the shape has %d dimensions before the rows' width, at most %d", op, nlead,
                            HR_MAX_DIMS - 1);
    int64_t size[HR_MAX_DIMS], count = 1;
    for (int d = 0; d < nlead; d++) {
        if (lead[d] < 0) return hr_fail_null(HR_EINVAL, "%s: size %d of the shape is negative", op, d + 1);
        size[d] = lead[d];
        count *= lead[d];
    }
    if (nlead == 0) size[nlead++] = m;
    else if (count != m)
        return hr_fail_null(HR_EINVAL, "%s: the shape holds %" PRId64 " rows but the index has %" PRId64, op, count, m);
    size[nlead] = width;
    /* the row each index value picks: tensor k, row r; checked before anything is written */
    int64_t *where = malloc(sizeof *where * 2 * (size_t)(m ? m : 1));
    if (!where) return hr_fail_null(HR_ENOMEM, "%s: out of memory for %" PRId64 " rows", op, m);
    const char *ip = (const char *)hr_tensor_data(index);
    for (int64_t j = 0; j < m; j++) {
        int64_t v = index->dtype == HR_I64 ? ((const int64_t *)ip)[j * index->stride[0]]
                                           : ((const int32_t *)ip)[j * index->stride[0]];
        if (v < -1 || v >= total) {
            free(where);
            return hr_fail_null(HR_EINVAL, "%s: index %" PRId64 " at position %" PRId64 " is outside -1..%" PRId64 " (%" PRId64
                                " rows in the list)", op, v, j + 1, total - 1, total);
        }
        int k = -1;
        if (v >= 0)
            for (k = 0; v >= ts[k]->size[0]; k++) v -= ts[k]->size[0];
        where[2 * j] = k;
        where[2 * j + 1] = v;
    }
    hr_tensor *out = hr_tensor_empty(nlead + 1, size, ts[0]->dtype, hr_cpu());
    if (!out) {
        free(where);
        return NULL;
    }
    size_t es = hr_dtype_size(ts[0]->dtype), row = (size_t)width * es;
    char *dst = hr_tensor_data(out);
    for (int64_t j = 0; j < m; j++, dst += row) {
        int64_t k = where[2 * j], r = where[2 * j + 1];
        if (k < 0) {
            memset(dst, 0, row);
            continue;
        }
        const hr_tensor *t = ts[k];
        const char *src = (const char *)t->storage->data + (size_t)(t->offset + r * t->stride[0]) * es;
        if (t->stride[1] == 1 || width <= 1) {
            memcpy(dst, src, row);
        } else {
            for (int64_t c = 0; c < width; c++) memcpy(dst + (size_t)c * es, src + (size_t)(c * t->stride[1]) * es, es);
        }
    }
    free(where);
    return out;
}

hr_tensor *hr_stack(int n, hr_tensor *const *ts, int dim)
{
    const char *op = "stack";
    if (n < 1) return hr_fail_null(HR_EINVAL, "%s: expected a non-empty list of tensors", op);
    for (int i = 0; i < n; i++) {
        if (check_cpu(op, ts, i + 1)) return NULL;
        bool same = ts[i]->ndim == ts[0]->ndim;
        for (int d = 0; same && d < ts[0]->ndim; d++) same = ts[i]->size[d] == ts[0]->size[d];
        if (!same) {
            char a[160], b[160];
            return hr_fail_null(HR_EINVAL, "%s: every tensor must have the same size, but tensor %d has size %s and tensor 1 %s",
                                op, i + 1, hr_shape_str(ts[i]->ndim, ts[i]->size, a, sizeof a),
                                hr_shape_str(ts[0]->ndim, ts[0]->size, b, sizeof b));
        }
    }
    if (dim < 0 || dim > ts[0]->ndim)
        return hr_fail_null(HR_EINVAL, "%s: dimension %d out of range for %d-D tensors (1..%d)", op, dim + 1, ts[0]->ndim,
                            ts[0]->ndim + 1);
    if (ts[0]->ndim + 1 > HR_MAX_DIMS)
        return hr_fail_null(HR_EINVAL, "%s: the result would have %d dimensions, at most %d are supported", op,
                            ts[0]->ndim + 1, HR_MAX_DIMS);
    hr_tensor **views = calloc((size_t)n, sizeof *views);
    if (!views) return hr_fail_null(HR_ENOMEM, "%s: out of memory for %d views", op, n);
    hr_tensor *out = NULL;
    int made = 0;
    for (; made < n; made++) {
        views[made] = hr_view_unsqueeze(ts[made], dim);
        if (!views[made]) break;
    }
    if (made == n) out = cat_impl(op, n, views, dim);
    for (int i = 0; i < made; i++) hr_tensor_release(views[i]);
    free(views);
    return out;
}

static int check_split_dim(const char *op, const hr_tensor *t, int dim)
{
    if (!t || !t->storage) return hr_fail(HR_EFREED, "%s: tensor was freed", op);
    if (t->ndim == 0) return hr_fail(HR_EINVAL, "%s: a 0-dimensional tensor cannot be split", op);
    if (dim < 0 || dim >= t->ndim) return hr_fail(HR_EINVAL, "%s: dimension %d out of range for a %d-D tensor", op, dim + 1, t->ndim);
    return 0;
}

int hr_split_sizes(hr_tensor *t, int dim, int nsplit, const int64_t *sizes, hr_tensor **out)
{
    const char *op = "split";
    if (check_split_dim(op, t, dim)) return -1;
    int64_t total = 0;
    for (int i = 0; i < nsplit; i++) {
        if (sizes[i] < 0) return hr_fail(HR_EINVAL, "%s: size %d of the list is negative (%" PRId64 ")", op, i + 1, sizes[i]);
        if (__builtin_add_overflow(total, sizes[i], &total))
            return hr_fail(HR_EINVAL, "%s: sizes add up to more than dimension %d's size %" PRId64, op, dim + 1, t->size[dim]);
    }
    if (total != t->size[dim])
        return hr_fail(HR_EINVAL, "%s: sizes add up to %" PRId64 " but dimension %d has size %" PRId64, op, total, dim + 1,
                       t->size[dim]);
    int64_t at = 0;
    for (int i = 0; i < nsplit; i++) {
        out[i] = hr_view_narrow(t, dim, at, sizes[i]);
        if (!out[i]) {
            for (int j = 0; j < i; j++) hr_tensor_release(out[j]);
            return -1;
        }
        at += sizes[i];
    }
    return 0;
}

int64_t hr_split_count(const hr_tensor *t, int dim, int64_t split_size)
{
    const char *op = "split";
    if (check_split_dim(op, t, dim)) return -1;
    int64_t n = t->size[dim];
    if (split_size < 0 || (split_size == 0 && n > 0)) {
        hr_fail(HR_EINVAL, "%s: split size must be positive (0 only for a dimension of size 0), got %" PRId64 " for dimension %d of size %" PRId64,
                op, split_size, dim + 1, n);
        return -1;
    }
    if (split_size == 0) return 1;
    int64_t count = n / split_size + (n % split_size != 0); /* ceil, with no sum to overflow */
    return count > 1 ? count : 1;
}

int hr_split(hr_tensor *t, int dim, int64_t split_size, hr_tensor **out)
{
    int64_t count = hr_split_count(t, dim, split_size);
    if (count < 0) return -1;
    int64_t n = t->size[dim];
    for (int64_t i = 0; i < count; i++) {
        int64_t start = i * split_size;
        int64_t len = i == count - 1 ? n - start : split_size;
        out[i] = hr_view_narrow(t, dim, start, len);
        if (!out[i]) {
            for (int64_t j = 0; j < i; j++) hr_tensor_release(out[j]);
            return -1;
        }
    }
    return 0;
}

int hr_chunk_plan(const hr_tensor *t, int dim, int64_t chunks, int64_t *piece, int64_t *count)
{
    const char *op = "chunk";
    if (check_split_dim(op, t, dim)) return -1;
    if (chunks < 1) return hr_fail(HR_EINVAL, "%s: number of chunks must be at least 1, got %" PRId64, op, chunks);
    int64_t n = t->size[dim];
    if (n == 0) {
        *piece = 0;
        *count = chunks;
        return 0;
    }
    *piece = n / chunks + (n % chunks != 0); /* ceil(n / chunks), with no sum to overflow */
    *count = n / *piece + (n % *piece != 0);
    return 0;
}

hr_tensor *hr_flip(hr_tensor *t, int ndims, const int *dims)
{
    const char *op = "flip";
    if (!t || !t->storage) return hr_fail_null(HR_EFREED, "%s: tensor was freed", op);
    if (check_device(op, t)) return NULL;
    int64_t stride[HR_MAX_DIMS];
    memcpy(stride, t->stride, sizeof stride);
    int64_t offset = t->offset;
    bool seen[HR_MAX_DIMS] = {false};
    for (int i = 0; i < ndims; i++) {
        int d = dims[i];
        if (d < 0 || d >= t->ndim) return hr_fail_null(HR_EINVAL, "%s: dimension %d out of range for a %d-D tensor", op, d + 1, t->ndim);
        if (seen[d]) return hr_fail_null(HR_EINVAL, "%s: dimension %d is listed twice", op, d + 1);
        seen[d] = true;
        /* walk the dim backwards: start at its last element with the stride negated */
        if (t->size[d] > 0) offset += (t->size[d] - 1) * stride[d];
        stride[d] = -stride[d];
    }
    hr_tensor *rev = hr_tensor_view_of(t->storage, t->dtype, t->ndim, t->size, stride, offset);
    if (!rev) return NULL;
    hr_tensor *out = hr_cast(rev, t->dtype);
    hr_tensor_release(rev);
    return out;
}

static hr_tensor *repeat_impl(const char *op, hr_tensor *t, int nreps, const int64_t *reps)
{
    if (!t || !t->storage) return hr_fail_null(HR_EFREED, "%s: tensor was freed", op);
    if (check_device(op, t)) return NULL;
    if (nreps < t->ndim)
        return hr_fail_null(HR_EINVAL, "%s: %d repeat counts given for a %d-D tensor (need at least one per dimension)", op,
                            nreps, t->ndim);
    if (nreps > HR_MAX_DIMS) return hr_fail_null(HR_EINVAL, "%s: at most %d repeat counts, got %d", op, HR_MAX_DIMS, nreps);
    /* The result, viewed as (reps[0], size[0], reps[1], size[1], ...), is a copy of t expanded with
     * 0 strides on the repeat dims; dims of extent 1 are left out of that view. */
    int64_t out_size[HR_MAX_DIMS];
    int64_t vsize[2 * HR_MAX_DIMS], vstride[2 * HR_MAX_DIMS];
    int nv = 0;
    int lead = nreps - t->ndim;
    for (int i = 0; i < nreps; i++) {
        if (reps[i] < 0) return hr_fail_null(HR_EINVAL, "%s: repeat count %d is negative (%" PRId64 ")", op, i + 1, reps[i]);
        int64_t s = i < lead ? 1 : t->size[i - lead];
        int64_t st = i < lead ? 0 : t->stride[i - lead];
        if (__builtin_mul_overflow(reps[i], s, &out_size[i]))
            return hr_fail_null(HR_EINVAL, "%s: dimension %d of the result (%" PRId64 " x %" PRId64 ") overflows", op, i + 1,
                                reps[i], s);
        if (reps[i] != 1) {
            vsize[nv] = reps[i];
            vstride[nv++] = 0;
        }
        if (s != 1) {
            vsize[nv] = s;
            vstride[nv++] = st;
        }
    }
    if (nv > HR_MAX_DIMS)
        return hr_fail_null(HR_EINVAL, "%s: this repeat needs %d internal dimensions, at most %d are supported", op, nv,
                            HR_MAX_DIMS);
    hr_tensor *out = hr_tensor_empty(nreps, out_size, t->dtype, hr_tensor_device(t));
    if (!out) return NULL;
    if (hr_tensor_numel(out) == 0) return out;
    int64_t ostride[HR_MAX_DIMS];
    hr_contiguous_strides(nv, vsize, ostride);
    hr_tensor *dst = hr_tensor_view_of(out->storage, out->dtype, nv, vsize, ostride, 0);
    hr_tensor *src = dst ? hr_tensor_view_of(t->storage, t->dtype, nv, vsize, vstride, t->offset) : NULL;
    int rc = src ? hr_copy_(dst, src) : -1;
    if (src) hr_tensor_release(src);
    if (dst) hr_tensor_release(dst);
    if (rc) {
        hr_tensor_release(out);
        return NULL;
    }
    return out;
}

hr_tensor *hr_repeat(hr_tensor *t, int nreps, const int64_t *reps) { return repeat_impl("repeat", t, nreps, reps); }

hr_tensor *hr_tile(hr_tensor *t, int nreps, const int64_t *reps)
{
    if (!t || !t->storage) return hr_fail_null(HR_EFREED, "tile: tensor was freed");
    if (nreps > HR_MAX_DIMS) return hr_fail_null(HR_EINVAL, "tile: at most %d repeat counts, got %d", HR_MAX_DIMS, nreps);
    if (nreps >= t->ndim) return repeat_impl("tile", t, nreps, reps);
    /* fewer counts than dims: the leading dims are repeated once */
    int64_t padded[HR_MAX_DIMS];
    int pad = t->ndim - nreps;
    for (int i = 0; i < pad; i++) padded[i] = 1;
    for (int i = 0; i < nreps; i++) padded[pad + i] = reps[i];
    return repeat_impl("tile", t, t->ndim, padded);
}
