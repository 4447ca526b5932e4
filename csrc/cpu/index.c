/* index.c — CPU kernels of the ops that read or write through index tensors and masks:
 * index_select, gather, scatter(_add), index_add_/index_copy_, masked_fill, masked_select, nonzero.
 *
 * Every index tensor is first turned into a contiguous i64 tensor and checked value by value
 * against the size of the dimension it indexes; only then does any kernel run. The kernels can
 * therefore trust the values, and an in-place op that fails has written nothing. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_cuda.h"
#include "hr_index.h"

/* ------------------------------------------------------------------ argument checks */

/* A live tensor on the CPU, or on a CUDA device in a build with the CUDA backend (every op here
 * has a CUDA path: cuda/index.cu, with the same checks made here first). */
static int check_cpu(const char *op, const hr_tensor *t, const char *what)
{
    if (!t || !t->storage) return hr_fail(HR_EFREED, "%s: %s tensor was freed", op, what);
    if (hr_tensor_device(t).type != HR_CPU && !hr_cuda_compiled())
        return hr_fail(HR_EDEVICE, "%s: the %s tensor is on a CUDA device, which needs the CUDA backend this build lacks", op,
                       what);
    return 0;
}

static bool on_cuda(const hr_tensor *t) { return hr_tensor_device(t).type == HR_CUDA; }

/* Both tensors on one device (after check_cpu on each). */
static int check_same_device(const char *op, const hr_tensor *t, const hr_tensor *other, const char *what)
{
    if (hr_device_eq(hr_tensor_device(t), hr_tensor_device(other))) return 0;
    char a[16], b[16];
    return hr_fail(HR_EDEVICE, "%s: self is on %s but the %s tensor is on %s (move one with :to())", op,
                   hr_device_str(hr_tensor_device(t), a, sizeof a), what,
                   hr_device_str(hr_tensor_device(other), b, sizeof b));
}

/* The values of ix as a contiguous tensor readable on the host: ix itself when it already is one,
 * else a host copy (the index values of a CUDA op are checked here before any kernel runs). */
static hr_tensor *host_values(const hr_tensor *ix)
{
    if (!on_cuda(ix) && hr_tensor_is_contiguous(ix)) {
        hr_tensor_retain((hr_tensor *)ix);
        return (hr_tensor *)ix;
    }
    hr_tensor *h = hr_tensor_empty(ix->ndim, ix->size, ix->dtype, hr_cpu());
    if (h && hr_copy_(h, ix)) {
        hr_tensor_release(h);
        return NULL;
    }
    return h;
}


static int check_dim(const char *op, const hr_tensor *t, int dim)
{
    if (t->ndim == 0) return hr_fail(HR_EINVAL, "%s: self must have at least one dimension, got a 0-dimensional tensor", op);
    if (dim < 0 || dim >= t->ndim)
        return hr_fail(HR_EINVAL, "%s: dimension %d out of range for a %d-D tensor", op, dim + 1, t->ndim);
    return 0;
}

/* Returns a contiguous i64 tensor holding index's values (index itself, retained, when it
 * already is one). Only i64 and i32 index tensors are accepted: a float index is a bug. */
static hr_tensor *index_as_i64(const char *op, const hr_tensor *index)
{
    if (check_cpu(op, index, "index")) return NULL;
    if (index->dtype != HR_I64 && index->dtype != HR_I32)
        return hr_fail_null(HR_EINVAL, "%s: index must be an i64 or i32 tensor, got %s", op, hr_dtype_name(index->dtype));
    if (index->dtype == HR_I64 && hr_tensor_is_contiguous(index)) {
        hr_tensor_retain((hr_tensor *)index);
        return (hr_tensor *)index;
    }
    return hr_cast(index, HR_I64);
}

/* Fails on the first value outside [0, limit), naming it, its 1-based position in the index
 * tensor (of shape ndim/size, walked in row-major order), the 1-based dim and its size. */
static int check_index_values(const char *op, const int64_t *v, int ndim, const int64_t *size, int dim, int64_t limit)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= size[i];
    for (int64_t k = 0; k < n; k++) {
        if (v[k] >= 0 && v[k] < limit) continue;
        char pos[200];
        if (ndim == 0) {
            snprintf(pos, sizeof pos, "of the scalar index");
        } else if (ndim == 1) {
            snprintf(pos, sizeof pos, "at position %" PRId64 " of the index", k + 1);
        } else {
            int64_t coord[HR_MAX_DIMS], rem = k;
            for (int i = ndim - 1; i >= 0; i--) {
                coord[i] = rem % size[i];
                rem /= size[i];
            }
            size_t used = (size_t)snprintf(pos, sizeof pos, "at position [");
            for (int i = 0; i < ndim && used < sizeof pos; i++)
                used += (size_t)snprintf(pos + used, sizeof pos - used, "%s%" PRId64, i ? ", " : "", coord[i] + 1);
            if (used < sizeof pos) snprintf(pos + used, sizeof pos - used, "] of the index");
        }
        return hr_fail(HR_EINVAL,
                       "%s: index %" PRId64 " %s is out of range for dimension %d of size %" PRId64
                       " (index values are 0-based: 0..%" PRId64 ")",
                       op, v[k], pos, dim + 1, limit, limit - 1);
    }
    return 0;
}

/* check_index_values on the values of ix (i64 of shape ndim/size, any strides, either device).
 * A dim that ix repeats with stride 0 (an expanded index) holds one value: only its first
 * element is read, so an index expanded over a hidden size costs what the unexpanded one does. */
static _Thread_local int trusted_depth;

void hr_index_checks_trusted_begin(void) { trusted_depth++; }
void hr_index_checks_trusted_end(void)
{
    if (trusted_depth > 0) trusted_depth--;
}

static int check_index_tensor(const char *op, const hr_tensor *ix, int ndim, const int64_t *size, int dim, int64_t limit)
{
    if (trusted_depth > 0) return 0; /* a backward pass's index, checked by its forward */
    int64_t csize[HR_MAX_DIMS];
    bool repeated = false;
    for (int d = 0; d < ndim; d++) {
        csize[d] = ix->ndim == ndim && ix->stride[d] == 0 && size[d] > 1 ? 1 : size[d];
        repeated |= csize[d] != size[d];
    }
    hr_tensor *view = repeated ? hr_tensor_view_of(ix->storage, ix->dtype, ndim, csize, ix->stride, ix->offset) : NULL;
    if (repeated && !view) return -1;
    hr_tensor *h = host_values(view ? view : ix);
    hr_tensor_release(view);
    if (!h) return -1;
    int rc = check_index_values(op, hr_tensor_data(h), ndim, csize, dim, limit);
    hr_tensor_release(h);
    return rc;
}

/* The index as i64 for the strided kernels: an i64 index as it is (its strides are walked),
 * another integer dtype converted. */
static hr_tensor *index_i64_strided(const char *op, const hr_tensor *index)
{
    if (check_cpu(op, index, "index")) return NULL;
    if (index->dtype == HR_I64) {
        hr_tensor_retain((hr_tensor *)index);
        return (hr_tensor *)index;
    }
    return index_as_i64(op, index);
}

/* ------------------------------------------------------------------ gather-style kernel */

/* Operands: 0 = destination, 1 = source with a 0 stride along the indexed dim, 2 = i64 index.
 * dst[i] = src[i + index[i] * dim_stride]. */
typedef struct {
    int64_t dim_stride; /* bytes */
    size_t el;
} gather_ctx;

#define GATHER_LOOP(W)                                                                    \
    for (int64_t i = 0; i < n; i++) {                                                     \
        int64_t v;                                                                        \
        memcpy(&v, pi + i * bs[2], 8);                                                    \
        memcpy(pd + i * bs[0], ps + i * bs[1] + v * c->dim_stride, W);                    \
    }

static void gather_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const gather_ctx *c = arg;
    char *pd = p[0];
    const char *ps = p[1], *pi = p[2];
    switch (c->el) {
    case 1: GATHER_LOOP(1); break;
    case 2: GATHER_LOOP(2); break;
    case 4: GATHER_LOOP(4); break;
    default: GATHER_LOOP(8); break;
    }
}

/* Runs the gather kernel over shape (ndim, size): dst with dst_stride, t with its own strides
 * except 0 along dim, the i64 index ix with idx_stride (all on one device, values checked). */
static int run_gather(hr_tensor *dst, const int64_t *dst_stride, const hr_tensor *t, int dim, const hr_tensor *ix,
                      const int64_t *idx_stride, int ndim, const int64_t *size)
{
    if (on_cuda(t)) return hr_cuda_index_gather(dst, dst_stride, t, dim, ix, idx_stride, ndim, size);
    const int64_t *idx = hr_tensor_data(ix);
    int64_t tstride[HR_MAX_DIMS];
    for (int i = 0; i < ndim; i++) tstride[i] = i == dim ? 0 : t->stride[i];
    size_t el = hr_dtype_size(t->dtype);
    hr_iter it;
    hr_iter_init(&it, ndim, size);
    hr_iter_add(&it, hr_tensor_data(dst), el, dst_stride);
    hr_iter_add(&it, hr_tensor_data(t), el, tstride);
    hr_iter_add(&it, (void *)idx, 8, idx_stride);
    gather_ctx c = {t->stride[dim] * (int64_t)el, el};
    hr_iter_run(&it, gather_kernel, &c, true);
    return 0;
}

/* ------------------------------------------------------------------ index_select */

typedef struct {
    const char *src;
    char *dst;
    const int64_t *idx;
    int64_t n, size_dim;
    size_t row_bytes;
} rows_copy_ctx;

/* Item = (outer o, output row k): one memcpy of a contiguous row. */
static void rows_copy_fn(void *arg, int64_t begin, int64_t end)
{
    const rows_copy_ctx *c = arg;
    for (int64_t item = begin; item < end; item++) {
        int64_t o = item / c->n, k = item % c->n;
        memcpy(c->dst + (size_t)item * c->row_bytes, c->src + (size_t)(o * c->size_dim + c->idx[k]) * c->row_bytes,
               c->row_bytes);
    }
}

hr_tensor *hr_index_select(hr_tensor *t, int dim, const hr_tensor *index)
{
    const char *op = "index_select";
    if (check_cpu(op, t, "self") || check_dim(op, t, dim)) return NULL;
    if (!index || !index->storage) return hr_fail_null(HR_EFREED, "%s: index tensor was freed", op);
    if (index->ndim > 1) {
        char b[160];
        return hr_fail_null(HR_EINVAL, "%s: index must be 1-D (or 0-D), got size %s", op,
                            hr_shape_str(index->ndim, index->size, b, sizeof b));
    }
    if (check_cpu(op, index, "index") || check_same_device(op, t, index, "index")) return NULL;
    hr_tensor *ix = index_as_i64(op, index);
    if (!ix) return NULL;
    int64_t n = hr_tensor_numel(ix);
    if (check_index_tensor(op, ix, index->ndim, index->size, dim, t->size[dim])) {
        hr_tensor_release(ix);
        return NULL;
    }
    int64_t size[HR_MAX_DIMS];
    memcpy(size, t->size, sizeof size);
    size[dim] = n;
    hr_tensor *out = hr_tensor_empty(t->ndim, size, t->dtype, hr_tensor_device(t));
    if (!out) {
        hr_tensor_release(ix);
        return NULL;
    }
    size_t el = hr_dtype_size(t->dtype);
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= t->size[i];
    for (int i = dim + 1; i < t->ndim; i++) inner *= t->size[i];
    size_t row_bytes = (size_t)inner * el;
    int rc = 0;
    if (!on_cuda(t) && hr_tensor_is_contiguous(t) && row_bytes >= 64) {
        /* Embedding-style lookup: whole contiguous rows, one memcpy each. */
        rows_copy_ctx c = {hr_tensor_data(t), hr_tensor_data(out), hr_tensor_data(ix), n, t->size[dim], row_bytes};
        int64_t grain = (int64_t)(32768 / row_bytes) + 1;
        hr_parallel_for(outer * n, grain, rows_copy_fn, &c);
    } else {
        int64_t istride[HR_MAX_DIMS] = {0};
        istride[dim] = 1;
        rc = run_gather(out, out->stride, t, dim, ix, istride, t->ndim, size);
    }
    hr_tensor_release(ix);
    if (rc) {
        hr_tensor_release(out);
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------ gather */

static int check_same_ndim(const char *op, const hr_tensor *t, const hr_tensor *index, const char *what)
{
    if (index->ndim != t->ndim) {
        char a[160], b[160];
        return hr_fail(HR_EINVAL, "%s: %s must have as many dimensions as self (%d), got %d (self %s, %s %s)", op, what,
                       t->ndim, index->ndim, hr_shape_str(t->ndim, t->size, a, sizeof a), what,
                       hr_shape_str(index->ndim, index->size, b, sizeof b));
    }
    return 0;
}

/* index.size(d) <= other.size(d) for every d (except skip, unless skip < 0). */
static int check_index_fits(const char *op, const hr_tensor *index, const hr_tensor *other, const char *other_name, int skip)
{
    for (int d = 0; d < index->ndim; d++) {
        if (d == skip || index->size[d] <= other->size[d]) continue;
        char a[160], b[160];
        return hr_fail(HR_EINVAL, "%s: index of size %s is larger than %s of size %s in dimension %d (%" PRId64 " > %" PRId64 ")",
                       op, hr_shape_str(index->ndim, index->size, a, sizeof a), other_name,
                       hr_shape_str(other->ndim, other->size, b, sizeof b), d + 1, index->size[d], other->size[d]);
    }
    return 0;
}

hr_tensor *hr_gather(hr_tensor *t, int dim, const hr_tensor *index)
{
    const char *op = "gather";
    if (check_cpu(op, t, "self") || check_dim(op, t, dim)) return NULL;
    if (check_cpu(op, index, "index") || check_same_device(op, t, index, "index") ||
        check_same_ndim(op, t, index, "index") || check_index_fits(op, index, t, "self", dim))
        return NULL;
    hr_tensor *ix = index_i64_strided(op, index);
    if (!ix) return NULL;
    hr_tensor *out = NULL;
    if (check_index_tensor(op, ix, ix->ndim, ix->size, dim, t->size[dim]) == 0) {
        out = hr_tensor_empty(ix->ndim, ix->size, t->dtype, hr_tensor_device(t));
        if (out && run_gather(out, out->stride, t, dim, ix, ix->stride, ix->ndim, ix->size)) {
            hr_tensor_release(out);
            out = NULL;
        }
    }
    hr_tensor_release(ix);
    return out;
}

/* ------------------------------------------------------------------ scatter-style kernel */

typedef enum { SCATTER_COPY, SCATTER_ADD } scatter_mode;

/* Operands: 0 = destination with a 0 stride along dim, 1 = i64 index, 2 = source.
 * dst[i + index[i] * dim_stride] (+)= src[i]. Runs serially: duplicated indices write the same
 * element, and a fixed order keeps the result independent of the thread count. */
typedef struct {
    int64_t dim_stride; /* bytes */
    hr_dtype dt;
    scatter_mode mode;
    double alpha;
    int64_t alpha_i;
} scatter_ctx;

#define SCATTER_ADD_LOOP(T, EXPR)                                   \
    for (int64_t i = 0; i < n; i++) {                               \
        int64_t v;                                                  \
        memcpy(&v, pi + i * bs[1], 8);                              \
        T *d = (T *)(pd + i * bs[0] + v * c->dim_stride);           \
        T s = *(const T *)(ps + i * bs[2]);                         \
        *d = (EXPR);                                                \
    }

static void scatter_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const scatter_ctx *c = arg;
    char *pd = p[0];
    const char *pi = p[1], *ps = p[2];
    if (c->mode == SCATTER_COPY) {
        size_t el = hr_dtype_size(c->dt);
        for (int64_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, pi + i * bs[1], 8);
            memcpy(pd + i * bs[0] + v * c->dim_stride, ps + i * bs[2], el);
        }
        return;
    }
    /* Integer sums wrap (through unsigned arithmetic) instead of overflowing. */
    switch (c->dt) {
    case HR_F32: SCATTER_ADD_LOOP(float, *d + (float)c->alpha * s); break;
    case HR_F64: SCATTER_ADD_LOOP(double, *d + c->alpha * s); break;
    case HR_I64: SCATTER_ADD_LOOP(int64_t, (int64_t)((uint64_t)*d + (uint64_t)c->alpha_i * (uint64_t)s)); break;
    case HR_I32: SCATTER_ADD_LOOP(int32_t, (int32_t)((uint32_t)*d + (uint32_t)c->alpha_i * (uint32_t)s)); break;
    case HR_U8: SCATTER_ADD_LOOP(uint8_t, (uint8_t)(*d + (uint8_t)c->alpha_i * s)); break;
    case HR_BOOL: SCATTER_ADD_LOOP(uint8_t, (uint8_t)((*d | (c->alpha_i != 0 && s)) != 0)); break;
    default: break; /* half types are accumulated in f32 by the callers */
    }
}

/* Runs the scatter kernel over shape (ndim, size); ix is the i64 index (values checked). */
static int run_scatter(hr_tensor *t, int dim, const hr_tensor *ix, const int64_t *idx_stride, const hr_tensor *src,
                       const int64_t *src_stride, int ndim, const int64_t *size, scatter_mode mode, double alpha)
{
    if (on_cuda(t))
        return hr_cuda_index_scatter(t, dim, ix, idx_stride, src, src_stride, ndim, size, mode == SCATTER_ADD, alpha);
    const int64_t *idx = hr_tensor_data(ix);
    int64_t tstride[HR_MAX_DIMS];
    for (int i = 0; i < ndim; i++) tstride[i] = i == dim ? 0 : t->stride[i];
    size_t el = hr_dtype_size(t->dtype);
    hr_iter it;
    hr_iter_init(&it, ndim, size);
    hr_iter_add(&it, hr_tensor_data(t), el, tstride);
    hr_iter_add(&it, (void *)idx, 8, idx_stride);
    hr_iter_add(&it, hr_tensor_data(src), el, src_stride);
    scatter_ctx c = {t->stride[dim] * (int64_t)el, t->dtype, mode, alpha, (int64_t)alpha};
    hr_iter_run(&it, scatter_kernel, &c, false);
    return 0;
}

/* Common checks of src: live, on self's device, same dtype as self. */
static int check_src(const char *op, const hr_tensor *t, const hr_tensor *src)
{
    if (check_cpu(op, src, "src") || check_same_device(op, t, src, "src")) return -1;
    if (src->dtype != t->dtype)
        return hr_fail(HR_EINVAL, "%s: src dtype %s does not match self dtype %s (convert one with :to())", op,
                       hr_dtype_name(src->dtype), hr_dtype_name(t->dtype));
    return 0;
}

/* A source that shares self's storage is read while self is written: work from a copy then. */
static hr_tensor *src_snapshot(const hr_tensor *t, const hr_tensor *src)
{
    if (src->storage == t->storage) return hr_cast(src, src->dtype);
    hr_tensor_retain((hr_tensor *)src);
    return (hr_tensor *)src;
}

/* bf16/f16 sums run in f32 and are rounded once at the end: fn is called on f32 copies of t and
 * src, then the result is copied back into t. */
typedef int (*f32_body)(hr_tensor *t, const hr_tensor *src, void *ctx);

static int with_f32_accumulator(hr_tensor *t, const hr_tensor *src, f32_body fn, void *ctx)
{
    hr_tensor *t32 = hr_cast(t, HR_F32);
    if (!t32) return -1;
    hr_tensor *s32 = hr_cast(src, HR_F32);
    if (!s32) {
        hr_tensor_release(t32);
        return -1;
    }
    int rc = fn(t32, s32, ctx);
    if (rc == 0) rc = hr_copy_(t, t32);
    hr_tensor_release(s32);
    hr_tensor_release(t32);
    return rc;
}

/* ------------------------------------------------------------------ index_add_ / index_copy_ */

typedef struct {
    char *dst;
    const char *src;
    const int64_t *idx;
    int64_t n, size_dim, inner, chunk, nchunks;
    hr_dtype dt;
    scatter_mode mode;
    double alpha;
} rows_scatter_ctx;

/* Item = (outer o, column chunk): walks every index k in order, so repeated rows accumulate in
 * the same order whatever the thread count. */
static void rows_scatter_fn(void *arg, int64_t begin, int64_t end)
{
    const rows_scatter_ctx *c = arg;
    size_t el = hr_dtype_size(c->dt);
    for (int64_t item = begin; item < end; item++) {
        int64_t o = item / c->nchunks, ch = item % c->nchunks;
        int64_t col = ch * c->chunk;
        int64_t len = c->inner - col < c->chunk ? c->inner - col : c->chunk;
        for (int64_t k = 0; k < c->n; k++) {
            int64_t drow = o * c->size_dim + c->idx[k], srow = o * c->n + k;
            char *d = c->dst + (size_t)(drow * c->inner + col) * el;
            const char *s = c->src + (size_t)(srow * c->inner + col) * el;
            if (c->mode == SCATTER_COPY) {
                memcpy(d, s, (size_t)len * el);
            } else if (c->dt == HR_F32) {
                float *restrict df = (float *)d;
                const float *restrict sf = (const float *)s;
                float a = (float)c->alpha;
                if (a == 1.0f)
                    for (int64_t i = 0; i < len; i++) df[i] += sf[i];
                else
                    for (int64_t i = 0; i < len; i++) df[i] += a * sf[i];
            } else {
                double *restrict dd = (double *)d;
                const double *restrict sd = (const double *)s;
                for (int64_t i = 0; i < len; i++) dd[i] += c->alpha * sd[i];
            }
        }
    }
}

typedef struct {
    int dim;
    const hr_tensor *ix;
    int64_t n;
    scatter_mode mode;
    double alpha;
} index_scatter_args;

/* t and src are live CPU tensors of one dtype, the index values are checked, src does not share
 * t's storage. */
static int index_scatter_body(hr_tensor *t, const hr_tensor *src, void *arg)
{
    const index_scatter_args *a = arg;
    int dim = a->dim;
    size_t el = hr_dtype_size(t->dtype);
    bool rows_ok = !on_cuda(t) && (a->mode == SCATTER_COPY || t->dtype == HR_F32 || t->dtype == HR_F64);
    if (rows_ok && hr_tensor_is_contiguous(t) && hr_tensor_is_contiguous(src)) {
        int64_t outer = 1, inner = 1;
        for (int i = 0; i < dim; i++) outer *= t->size[i];
        for (int i = dim + 1; i < t->ndim; i++) inner *= t->size[i];
        int64_t chunk = inner < 2048 ? (inner > 0 ? inner : 1) : 2048;
        int64_t nchunks = (inner + chunk - 1) / chunk;
        rows_scatter_ctx c = {hr_tensor_data(t), hr_tensor_data(src), hr_tensor_data(a->ix), a->n, t->size[dim], inner,
                              chunk, nchunks, t->dtype, a->mode, a->alpha};
        int64_t per_item = a->n * chunk * (int64_t)el;
        hr_parallel_for(outer * nchunks, 32768 / (per_item + 1) + 1, rows_scatter_fn, &c);
    } else {
        int64_t istride[HR_MAX_DIMS] = {0};
        istride[dim] = 1;
        return run_scatter(t, dim, a->ix, istride, src, src->stride, src->ndim, src->size, a->mode, a->alpha);
    }
    return 0;
}

static int index_scatter(const char *op, hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src,
                         scatter_mode mode, double alpha)
{
    if (check_cpu(op, t, "self") || check_dim(op, t, dim)) return -1;
    if (!index || !index->storage) return hr_fail(HR_EFREED, "%s: index tensor was freed", op);
    if (index->ndim > 1) {
        char b[160];
        return hr_fail(HR_EINVAL, "%s: index must be 1-D (or 0-D), got size %s", op,
                       hr_shape_str(index->ndim, index->size, b, sizeof b));
    }
    if (check_src(op, t, src)) return -1;
    int64_t n = index->ndim ? index->size[0] : 1;
    bool shape_ok = src->ndim == t->ndim;
    for (int d = 0; shape_ok && d < t->ndim; d++) shape_ok = src->size[d] == (d == dim ? n : t->size[d]);
    if (!shape_ok) {
        char a[160], b[160];
        return hr_fail(HR_EINVAL,
                       "%s: src of size %s does not match self of size %s with dimension %d of size %" PRId64
                       " (the index length)",
                       op, hr_shape_str(src->ndim, src->size, a, sizeof a), hr_shape_str(t->ndim, t->size, b, sizeof b),
                       dim + 1, n);
    }
    if (check_cpu(op, index, "index") || check_same_device(op, t, index, "index")) return -1;
    hr_tensor *ix = index_as_i64(op, index);
    if (!ix) return -1;
    int rc = check_index_tensor(op, ix, index->ndim, index->size, dim, t->size[dim]);
    hr_tensor *s = NULL;
    if (rc == 0) {
        s = src_snapshot(t, src);
        if (!s) rc = -1;
    }
    if (rc == 0) {
        index_scatter_args a = {dim, ix, n, mode, alpha};
        if (mode == SCATTER_ADD && (t->dtype == HR_F16 || t->dtype == HR_BF16))
            rc = with_f32_accumulator(t, s, index_scatter_body, &a);
        else
            rc = index_scatter_body(t, s, &a);
        if (rc == 0) hr_tensor_bump_version(t);
    }
    if (s) hr_tensor_release(s);
    hr_tensor_release(ix);
    return rc;
}

int hr_index_add_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src, double alpha)
{
    return index_scatter("index_add_", t, dim, index, src, SCATTER_ADD, alpha);
}

int hr_index_copy_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src)
{
    return index_scatter("index_copy_", t, dim, index, src, SCATTER_COPY, 1.0);
}

/* ------------------------------------------------------------------ scatter_ / scatter_add_ */

typedef struct {
    int dim;
    const hr_tensor *ix;
    scatter_mode mode;
} scatter_args;

static int scatter_body(hr_tensor *t, const hr_tensor *src, void *arg)
{
    const scatter_args *a = arg;
    return run_scatter(t, a->dim, a->ix, a->ix->stride, src, src->stride, a->ix->ndim, a->ix->size, a->mode, 1.0);
}

/* An index that only varies along dim (a 1-D index expanded over the other dims, as a gradient
 * of an embedding lookup is usually written) addresses whole rows: the 1-D view of it along dim. */
static hr_tensor *row_index_of(const hr_tensor *index, int dim)
{
    for (int d = 0; d < index->ndim; d++)
        if (d != dim && index->size[d] > 1 && index->stride[d] != 0) return NULL;
    return hr_tensor_view_of(index->storage, index->dtype, 1, &index->size[dim], &index->stride[dim], index->offset);
}

static int scatter_common(const char *op, hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src,
                          scatter_mode mode)
{
    if (check_cpu(op, t, "self") || check_dim(op, t, dim)) return -1;
    if (check_cpu(op, index, "index") || check_same_device(op, t, index, "index") ||
        check_same_ndim(op, t, index, "index"))
        return -1;
    if (check_src(op, t, src) || check_same_ndim(op, t, src, "src")) return -1;
    if (check_index_fits(op, index, src, "src", -1) || check_index_fits(op, index, t, "self", dim)) return -1;
    if (index->dtype != HR_I64 && index->dtype != HR_I32)
        return hr_fail(HR_EINVAL, "%s: index must be an i64 or i32 tensor, got %s", op, hr_dtype_name(index->dtype));

    /* Whole rows: the same work as index_add_/index_copy_ on views of the addressed block,
     * which has a contiguous fast path. */
    bool full_rows = true;
    for (int d = 0; d < t->ndim; d++)
        if (d != dim && (index->size[d] != t->size[d] || index->size[d] != src->size[d])) full_rows = false;
    if (full_rows && hr_tensor_numel(index) > 0) {
        hr_tensor *rows = row_index_of(index, dim);
        if (rows) {
            hr_tensor *s = hr_view_narrow((hr_tensor *)src, dim, 0, index->size[dim]);
            int rc = s ? index_scatter(op, t, dim, rows, s, mode, 1.0) : -1;
            if (s) hr_tensor_release(s);
            hr_tensor_release(rows);
            if (rc && hr_last_errcode() == HR_EINVAL) {
                /* report the position in the caller's index, not in its 1-D view */
                hr_clear_error();
            } else {
                return rc;
            }
        }
    }

    hr_tensor *ix = index_i64_strided(op, index);
    if (!ix) return -1;
    int rc = check_index_tensor(op, ix, ix->ndim, ix->size, dim, t->size[dim]);
    hr_tensor *s = NULL;
    if (rc == 0) {
        s = src_snapshot(t, src);
        if (!s) rc = -1;
    }
    if (rc == 0) {
        scatter_args a = {dim, ix, mode};
        if (mode == SCATTER_ADD && (t->dtype == HR_F16 || t->dtype == HR_BF16))
            rc = with_f32_accumulator(t, s, scatter_body, &a);
        else
            rc = scatter_body(t, s, &a);
        if (rc == 0) hr_tensor_bump_version(t);
    }
    if (s) hr_tensor_release(s);
    hr_tensor_release(ix);
    return rc;
}

int hr_scatter_add_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src)
{
    return scatter_common("scatter_add_", t, dim, index, src, SCATTER_ADD);
}

int hr_scatter_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src)
{
    return scatter_common("scatter_", t, dim, index, src, SCATTER_COPY);
}

static hr_tensor *scatter_copy_of(const char *op, hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src,
                                  scatter_mode mode)
{
    if (check_cpu(op, t, "self")) return NULL;
    hr_tensor *out = hr_cast(t, t->dtype);
    if (!out) return NULL;
    if (scatter_common(op, out, dim, index, src, mode)) {
        hr_tensor_release(out);
        return NULL;
    }
    return out;
}

hr_tensor *hr_scatter_add(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src)
{
    return scatter_copy_of("scatter_add", t, dim, index, src, SCATTER_ADD);
}

hr_tensor *hr_scatter(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src)
{
    return scatter_copy_of("scatter", t, dim, index, src, SCATTER_COPY);
}

/* ------------------------------------------------------------------ masks */

static int check_mask(const char *op, const hr_tensor *mask)
{
    if (check_cpu(op, mask, "mask")) return -1;
    if (mask->dtype != HR_BOOL && mask->dtype != HR_U8)
        return hr_fail(HR_EINVAL, "%s: mask must be a bool or u8 tensor, got %s", op, hr_dtype_name(mask->dtype));
    return 0;
}

typedef struct {
    size_t el;
    unsigned char value[8];
} mask_fill_ctx;

#define MASK_FILL_LOOP(W)                                                         \
    for (int64_t i = 0; i < n; i++)                                               \
        if (*(const uint8_t *)(pm + i * bs[1])) memcpy(pd + i * bs[0], c->value, W);

static void mask_fill_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const mask_fill_ctx *c = arg;
    char *pd = p[0];
    const char *pm = p[1];
    switch (c->el) {
    case 1: MASK_FILL_LOOP(1); break;
    case 2: MASK_FILL_LOOP(2); break;
    case 4: MASK_FILL_LOOP(4); break;
    default: MASK_FILL_LOOP(8); break;
    }
}

int hr_masked_fill_(hr_tensor *t, const hr_tensor *mask, hr_scalar value)
{
    const char *op = "masked_fill_";
    if (check_cpu(op, t, "self") || check_mask(op, mask) || check_same_device(op, t, mask, "mask")) return -1;
    int nd;
    int64_t shape[HR_MAX_DIMS];
    if (hr_broadcast_shape(op, t->ndim, t->size, mask->ndim, mask->size, &nd, shape)) return -1;
    if (nd != t->ndim || memcmp(shape, t->size, sizeof(int64_t) * (size_t)nd) != 0) {
        char a[160], b[160];
        return hr_fail(HR_EINVAL, "%s: mask of size %s cannot be broadcast to self of size %s", op,
                       hr_shape_str(mask->ndim, mask->size, a, sizeof a), hr_shape_str(t->ndim, t->size, b, sizeof b));
    }
    mask_fill_ctx c;
    c.el = hr_dtype_size(t->dtype);
    memset(c.value, 0, sizeof c.value);
    if (value.is_int && hr_dtype_is_int(t->dtype)) hr_store_i64(c.value, t->dtype, value.i);
    else hr_store_f64(c.value, t->dtype, value.d);
    int64_t mstride[HR_MAX_DIMS];
    hr_broadcast_strides(mask, t->ndim, t->size, mstride);
    if (on_cuda(t)) {
        if (hr_cuda_masked_fill_(t, mask, mstride, c.value)) return -1;
        hr_tensor_bump_version(t);
        return 0;
    }
    hr_iter it;
    hr_iter_init(&it, t->ndim, t->size);
    hr_iter_add(&it, hr_tensor_data(t), c.el, t->stride);
    hr_iter_add(&it, hr_tensor_data(mask), 1, mstride);
    /* a mask viewing self's own bytes changes as it is filled: walk it in order then */
    hr_iter_run(&it, mask_fill_kernel, &c, mask->storage != t->storage);
    hr_tensor_bump_version(t);
    return 0;
}

hr_tensor *hr_masked_fill(hr_tensor *t, const hr_tensor *mask, hr_scalar value)
{
    const char *op = "masked_fill";
    if (check_cpu(op, t, "self") || check_mask(op, mask)) return NULL;
    int nd;
    int64_t shape[HR_MAX_DIMS];
    if (hr_broadcast_shape(op, t->ndim, t->size, mask->ndim, mask->size, &nd, shape)) return NULL;
    hr_tensor *out = hr_tensor_empty(nd, shape, t->dtype, hr_tensor_device(t));
    if (!out) return NULL;
    if (hr_copy_(out, t) || hr_masked_fill_(out, mask, value)) {
        hr_tensor_release(out);
        return NULL;
    }
    return out;
}

typedef struct {
    int64_t count;
    char *dst;
    size_t el;
} mask_select_ctx;

static void mask_count_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    mask_select_ctx *c = arg;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) k += *(const uint8_t *)(p[0] + i * bs[0]) != 0;
    c->count += k;
}

/* Serial walk in row-major order: the cursor c->dst advances over the packed result. */
static void mask_select_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    mask_select_ctx *c = arg;
    for (int64_t i = 0; i < n; i++) {
        if (!*(const uint8_t *)(p[1] + i * bs[1])) continue;
        memcpy(c->dst, p[0] + i * bs[0], c->el);
        c->dst += c->el;
    }
}

/* The row-major positions of the set elements of the (host) mask walked over shape with
 * mstride, stored one after another at c->dst (as int64). */
static void mask_positions_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    mask_select_ctx *c = arg;
    for (int64_t i = 0; i < n; i++, c->count++) {
        if (!*(const uint8_t *)(p[0] + i * bs[0])) continue;
        memcpy(c->dst, &c->count, sizeof c->count);
        c->dst += sizeof c->count;
    }
}

hr_tensor *hr_mask_positions(const hr_tensor *mask, int nd, const int64_t *shape, hr_device dev)
{
    hr_tensor *hm = host_values(mask);
    if (!hm) return NULL;
    int64_t mstride[HR_MAX_DIMS];
    hr_broadcast_strides(hm, nd, shape, mstride);
    mask_select_ctx c = {0, NULL, 1};
    hr_iter it;
    hr_iter_init(&it, nd, shape);
    hr_iter_add(&it, hr_tensor_data(hm), 1, mstride);
    hr_iter_run(&it, mask_count_kernel, &c, false);
    hr_tensor *pos = hr_tensor_empty(1, &c.count, HR_I64, hr_cpu());
    if (pos) {
        c.count = 0;
        c.dst = hr_tensor_data(pos);
        hr_iter_init(&it, nd, shape);
        hr_iter_add(&it, hr_tensor_data(hm), 1, mstride);
        hr_iter_run(&it, mask_positions_kernel, &c, false);
    }
    hr_tensor_release(hm);
    if (!pos || dev.type == HR_CPU) return pos;
    hr_tensor *dpos = hr_tensor_empty(1, pos->size, HR_I64, dev);
    if (dpos && hr_copy_(dpos, pos)) {
        hr_tensor_release(dpos);
        dpos = NULL;
    }
    hr_tensor_release(pos);
    return dpos;
}

/* masked_select of a CUDA tensor: the mask is read on the host (the result's length decides its
 * allocation), the selected positions go to the device, a kernel gathers them in row-major order. */
static hr_tensor *masked_select_cuda(const hr_tensor *t, const int64_t *tstride, const hr_tensor *mask, int nd,
                                     const int64_t *shape)
{
    hr_tensor *pos = hr_mask_positions(mask, nd, shape, hr_tensor_device(t));
    hr_tensor *out = pos ? hr_tensor_empty(1, pos->size, t->dtype, hr_tensor_device(t)) : NULL;
    if (out && pos->size[0] > 0 && hr_cuda_take(out, t, tstride, nd, shape, pos)) {
        hr_tensor_release(out);
        out = NULL;
    }
    hr_tensor_release(pos);
    return out;
}

hr_tensor *hr_masked_select(hr_tensor *t, const hr_tensor *mask)
{
    const char *op = "masked_select";
    if (check_cpu(op, t, "self") || check_mask(op, mask) || check_same_device(op, t, mask, "mask")) return NULL;
    int nd;
    int64_t shape[HR_MAX_DIMS];
    if (hr_broadcast_shape(op, t->ndim, t->size, mask->ndim, mask->size, &nd, shape)) return NULL;
    int64_t tstride[HR_MAX_DIMS], mstride[HR_MAX_DIMS];
    hr_broadcast_strides(t, nd, shape, tstride);
    hr_broadcast_strides(mask, nd, shape, mstride);
    if (on_cuda(t)) return masked_select_cuda(t, tstride, mask, nd, shape);
    mask_select_ctx c = {0, NULL, hr_dtype_size(t->dtype)};
    hr_iter it;
    hr_iter_init(&it, nd, shape);
    hr_iter_add(&it, hr_tensor_data(mask), 1, mstride);
    hr_iter_run(&it, mask_count_kernel, &c, false);
    hr_tensor *out = hr_tensor_empty(1, &c.count, t->dtype, hr_tensor_device(t));
    if (!out) return NULL;
    c.dst = hr_tensor_data(out);
    hr_iter_init(&it, nd, shape);
    hr_iter_add(&it, hr_tensor_data(t), c.el, tstride);
    hr_iter_add(&it, hr_tensor_data(mask), 1, mstride);
    hr_iter_run(&it, mask_select_kernel, &c, false);
    return out;
}

/* Zero test by value: -0.0 is zero, NaN is not. */
static bool elem_nonzero(const char *p, hr_dtype dt)
{
    switch (dt) {
    case HR_F32: return *(const float *)p != 0.0f;
    case HR_F64: return *(const double *)p != 0.0;
    case HR_F16:
    case HR_BF16: return (*(const uint16_t *)p & 0x7fffu) != 0;
    case HR_I64: return *(const int64_t *)p != 0;
    case HR_I32: return *(const int32_t *)p != 0;
    default: return *(const uint8_t *)p != 0;
    }
}

hr_tensor *hr_nonzero(hr_tensor *t)
{
    const char *op = "nonzero";
    if (check_cpu(op, t, "self")) return NULL;
    if (on_cuda(t)) { /* counted on the host: the result's length decides its allocation */
        hr_tensor *hc = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_cpu());
        hr_tensor *hidx = hc && hr_copy_(hc, t) == 0 ? hr_nonzero(hc) : NULL;
        hr_tensor *out = hidx ? hr_tensor_empty(hidx->ndim, hidx->size, HR_I64, hr_tensor_device(t)) : NULL;
        if (out && hr_copy_(out, hidx)) {
            hr_tensor_release(out);
            out = NULL;
        }
        hr_tensor_release(hidx);
        hr_tensor_release(hc);
        return out;
    }
    hr_tensor *c = hr_contiguous(t);
    if (!c) return NULL;
    int64_t numel = hr_tensor_numel(c);
    size_t el = hr_dtype_size(c->dtype);
    const char *p = hr_tensor_data(c);
    int64_t count = 0;
    for (int64_t i = 0; i < numel; i++) count += elem_nonzero(p + (size_t)i * el, c->dtype);
    int64_t size[2] = {count, c->ndim};
    hr_tensor *out = hr_tensor_empty(2, size, HR_I64, hr_cpu());
    if (!out) {
        hr_tensor_release(c);
        return NULL;
    }
    int64_t *o = hr_tensor_data(out);
    int64_t coord[HR_MAX_DIMS] = {0};
    for (int64_t i = 0; i < numel; i++) {
        if (elem_nonzero(p + (size_t)i * el, c->dtype)) {
            memcpy(o, coord, sizeof(int64_t) * (size_t)c->ndim);
            o += c->ndim;
        }
        /* advance the row-major counter */
        for (int d = c->ndim - 1; d >= 0; d--) {
            if (++coord[d] < c->size[d]) break;
            coord[d] = 0;
        }
    }
    hr_tensor_release(c);
    return out;
}
