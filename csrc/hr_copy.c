/* hr_copy.c — copy with broadcasting and dtype conversion; contiguous, cast, reshape and fill. */
#include <string.h>

#include "hr_core.h"
#include "hr_cuda.h"

typedef struct {
    hr_dtype dst, src;
} convert_ctx;

#define CONVERT_LOOP(DT, ST, EXPR)                                           \
    for (int64_t i = 0; i < n; i++) {                                        \
        ST v = *(const ST *)(s + i * ss);                                    \
        *(DT *)(d + i * ds) = (EXPR);                                        \
    }

/* Moves n elements of type T from s (stride ss bytes) to d (stride ds bytes); memcpy keeps the
 * accesses free of alignment and aliasing assumptions and compiles to one load and store. */
#define MOVE_LOOP(T)                                                                                   \
    do {                                                                                               \
        if (ss == 0) {                                                                                 \
            T v;                                                                                       \
            memcpy(&v, s, sizeof v);                                                                   \
            if (ds == (int64_t)sizeof v) /* a constant stride: vectorised */                          \
                for (int64_t i = 0; i < n; i++) memcpy(d + i * sizeof v, &v, sizeof v);                \
            else                                                                                       \
                for (int64_t i = 0; i < n; i++) memcpy(d + i * ds, &v, sizeof v);                      \
        } else {                                                                                       \
            for (int64_t i = 0; i < n; i++) memcpy(d + i * ds, s + i * ss, sizeof(T));                 \
        }                                                                                              \
    } while (0)

/* Operand 0 is the destination, operand 1 the source. */
static void convert_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const convert_ctx *c = arg;
    char *d = p[0];
    const char *s = p[1];
    int64_t ds = bs[0], ss = bs[1];
    size_t el = hr_dtype_size(c->dst);
    if (c->dst == c->src) {
        if (ds == (int64_t)el && ss == (int64_t)el) {
            memmove(d, s, (size_t)n * el);
            return;
        }
        /* element moves of the dtype's width (a broadcast source, ss == 0, is a fill); a memcpy
         * per element of a run-time size was a library call each, ~15x slower */
        switch (el) {
        case 8: MOVE_LOOP(uint64_t); return;
        case 4: MOVE_LOOP(uint32_t); return;
        case 2: MOVE_LOOP(uint16_t); return;
        case 1: MOVE_LOOP(uint8_t); return;
        default: break;
        }
        for (int64_t i = 0; i < n; i++) memcpy(d + i * ds, s + i * ss, el);
        return;
    }
    switch (c->dst * HR_NDTYPES + c->src) {
    case HR_F32 * HR_NDTYPES + HR_F64: CONVERT_LOOP(float, double, (float)v); return;
    case HR_F64 * HR_NDTYPES + HR_F32: CONVERT_LOOP(double, float, (double)v); return;
    case HR_F32 * HR_NDTYPES + HR_F16: CONVERT_LOOP(float, uint16_t, hr_f16_to_f32(v)); return;
    case HR_F16 * HR_NDTYPES + HR_F32: CONVERT_LOOP(uint16_t, float, hr_f32_to_f16(v)); return;
    case HR_F32 * HR_NDTYPES + HR_BF16: CONVERT_LOOP(float, uint16_t, hr_bf16_to_f32(v)); return;
    case HR_BF16 * HR_NDTYPES + HR_F32: CONVERT_LOOP(uint16_t, float, hr_f32_to_bf16(v)); return;
    case HR_F32 * HR_NDTYPES + HR_I64: CONVERT_LOOP(float, int64_t, (float)v); return;
    case HR_F32 * HR_NDTYPES + HR_I32: CONVERT_LOOP(float, int32_t, (float)v); return;
    case HR_F32 * HR_NDTYPES + HR_U8: CONVERT_LOOP(float, uint8_t, (float)v); return;
    case HR_F32 * HR_NDTYPES + HR_BOOL: CONVERT_LOOP(float, uint8_t, v ? 1.0f : 0.0f); return;
    case HR_I64 * HR_NDTYPES + HR_I32: CONVERT_LOOP(int64_t, int32_t, (int64_t)v); return;
    case HR_I32 * HR_NDTYPES + HR_I64: CONVERT_LOOP(int32_t, int64_t, (int32_t)(uint32_t)(uint64_t)v); return;
    default: break;
    }
    bool exact_int = hr_dtype_is_int(c->dst) && hr_dtype_is_int(c->src);
    for (int64_t i = 0; i < n; i++) {
        if (exact_int) hr_store_i64(d + i * ds, c->dst, hr_load_i64(s + i * ss, c->src));
        else hr_store_f64(d + i * ds, c->dst, hr_load_f64(s + i * ss, c->src));
    }
}

static bool same_layout(const hr_tensor *a, const hr_tensor *b)
{
    if (a->dtype != b->dtype || a->offset != b->offset || a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->size[i] != b->size[i] || (a->size[i] > 1 && a->stride[i] != b->stride[i])) return false;
    return true;
}

int hr_copy_(hr_tensor *dst, const hr_tensor *src)
{
    if (hr_tensor_check_live(dst, "copy_ (destination)") || hr_tensor_check_live(src, "copy_ (source)")) return -1;
    int nd;
    int64_t shape[HR_MAX_DIMS];
    if (hr_broadcast_shape("copy_", dst->ndim, dst->size, src->ndim, src->size, &nd, shape)) return -1;
    if (nd != dst->ndim || memcmp(shape, dst->size, sizeof(int64_t) * (size_t)nd) != 0) {
        char a[160], b[160];
        return hr_fail(HR_EINVAL, "copy_: source of size %s cannot be broadcast to destination of size %s",
                       hr_shape_str(src->ndim, src->size, a, sizeof a), hr_shape_str(dst->ndim, dst->size, b, sizeof b));
    }
    /* The source is another view of the destination's memory (x:copy_(x:t())): elements written
     * early would be read back as sources later, so the source's values are taken out first.
     * (PyTorch refuses such copies; this one copies what the source held.) */
    if (dst->storage == src->storage && !same_layout(dst, src)) {
        hr_tensor *held = hr_cast(src, src->dtype);
        if (!held) return -1;
        int rc = hr_copy_(dst, held);
        hr_tensor_release(held);
        return rc;
    }
    if (hr_tensor_device(dst).type != HR_CPU || hr_tensor_device(src).type != HR_CPU) {
        hr_tensor *mirror = hr_mirror_view(src); /* src's values kept on the host (hr_mirror.c) */
        if (mirror && hr_tensor_device(dst).type == HR_CPU) { /* read back without waiting for the device */
            int rc = hr_copy_(dst, mirror);
            hr_tensor_release(mirror);
            return rc;
        }
        /* either side on a GPU: the CUDA backend copies (or says it is missing) */
        if (hr_cuda_copy_(dst, src)) {
            hr_tensor_bump_version(dst); /* part of it may have been written: no host copy stays valid */
            hr_tensor_release(mirror);
            return -1;
        }
        hr_tensor_bump_version(dst);
        /* dst's values are src's (or its mirror's) as dst holds them: kept on the host too */
        if (mirror || hr_tensor_device(src).type == HR_CPU) hr_mirror_upload(dst, mirror ? mirror : src);
        hr_tensor_release(mirror);
        return 0;
    }
    int64_t sstride[HR_MAX_DIMS];
    hr_broadcast_strides(src, dst->ndim, dst->size, sstride);
    hr_iter it;
    hr_iter_init(&it, dst->ndim, dst->size);
    hr_iter_add(&it, hr_tensor_data(dst), hr_dtype_size(dst->dtype), dst->stride);
    hr_iter_add(&it, hr_tensor_data(src), hr_dtype_size(src->dtype), sstride);
    convert_ctx c = {dst->dtype, src->dtype};
    /* Overlapping source and destination storages: copy serially to stay well defined. */
    bool same = dst->storage == src->storage;
    hr_iter_run(&it, convert_kernel, &c, !same);
    hr_tensor_bump_version(dst);
    return 0;
}

hr_tensor *hr_cast(const hr_tensor *t, hr_dtype dt)
{
    if (hr_tensor_check_live(t, "cast")) return NULL;
    hr_tensor *out = hr_tensor_empty(t->ndim, t->size, dt, hr_tensor_device(t));
    if (!out) return NULL;
    if (hr_copy_(out, t)) {
        hr_tensor_release(out);
        return NULL;
    }
    return out;
}

hr_tensor *hr_contiguous(hr_tensor *t)
{
    if (hr_tensor_check_live(t, "contiguous")) return NULL;
    if (hr_tensor_is_contiguous(t)) {
        hr_tensor_retain(t);
        return t;
    }
    return hr_cast(t, t->dtype);
}

hr_tensor *hr_readable_as(const hr_tensor *t, hr_dtype dt)
{
    if (hr_tensor_check_live(t, "cast")) return NULL;
    if (t->dtype == dt) return hr_contiguous((hr_tensor *)t);
    return hr_cast(t, dt);
}

hr_tensor *hr_host_contiguous(const hr_tensor *t)
{
    if (hr_tensor_check_live(t, "host copy")) return NULL;
    if (hr_tensor_device(t).type == HR_CPU) return hr_contiguous((hr_tensor *)t);
    hr_tensor *h = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_cpu());
    if (h && hr_copy_(h, t)) {
        hr_tensor_release(h);
        return NULL;
    }
    return h;
}

hr_tensor *hr_reshape(hr_tensor *t, int ndim, const int64_t *size)
{
    if (hr_tensor_check_live(t, "reshape")) return NULL;
    hr_tensor *v = hr_view_reshape_nocopy(t, ndim, size);
    if (v || hr_last_errcode() != HR_EINVAL) return v;
    /* The shape itself may be invalid: only retry through a copy when the layout was the problem. */
    hr_tensor *c = hr_cast(t, t->dtype);
    if (!c) return NULL;
    v = hr_view_reshape_nocopy(c, ndim, size);
    hr_tensor_release(c);
    if (!v) {
        /* keep the message about the shape, with the op's name */
        hr_error_prefix("reshape");
    }
    return v;
}

typedef struct {
    hr_dtype dt;
    _Alignas(8) unsigned char value[8]; /* hr_store_f64 writes an int64_t/double here */
} fill_ctx;

static void fill_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const fill_ctx *c = arg;
    size_t el = hr_dtype_size(c->dt);
    char *d = p[0];
    if (c->dt == HR_F32 && bs[0] == 4) {
        float v;
        memcpy(&v, c->value, 4);
        float *f = (float *)d;
        for (int64_t i = 0; i < n; i++) f[i] = v;
        return;
    }
    for (int64_t i = 0; i < n; i++) memcpy(d + i * bs[0], c->value, el);
}

static int fill_with(hr_tensor *t, const fill_ctx *c)
{
    if (hr_tensor_check_live(t, "fill_")) return -1;
    if (hr_tensor_device(t).type != HR_CPU) {
        if (hr_cuda_fill_(t, c->value)) return -1;
        hr_tensor_bump_version(t);
        return 0;
    }
    hr_iter it;
    hr_iter_init(&it, t->ndim, t->size);
    hr_iter_add(&it, hr_tensor_data(t), hr_dtype_size(t->dtype), t->stride);
    hr_iter_run(&it, fill_kernel, (void *)c, true);
    hr_tensor_bump_version(t);
    return 0;
}

int hr_fill_(hr_tensor *t, double v)
{
    if (hr_tensor_check_live(t, "fill_")) return -1;
    fill_ctx c;
    c.dt = t->dtype;
    memset(c.value, 0, sizeof c.value);
    hr_store_f64(c.value, t->dtype, v);
    return fill_with(t, &c);
}

int hr_fill_i64_(hr_tensor *t, int64_t v)
{
    if (hr_tensor_check_live(t, "fill_")) return -1;
    fill_ctx c;
    c.dt = t->dtype;
    memset(c.value, 0, sizeof c.value);
    hr_store_i64(c.value, t->dtype, v);
    return fill_with(t, &c);
}
