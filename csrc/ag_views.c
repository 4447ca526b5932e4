/* ag_views.c — differentiable wrappers of the view ops, casts and copies of the core.
 *
 * Each wrapper runs the forward op and, when an input requires grad, records a node whose backward
 * maps the output gradient back onto the input's shape. */
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_index.h"
#include "hr_reduce.h"

/* ------------------------------------------------------------------ sum_to_size */

typedef struct {
    hr_dtype src;
} sum_ctx;

/* Operand 0: f64 accumulator (broadcast strides, 0 on reduced dims), operand 1: gradient. */
static void sum_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const sum_ctx *c = arg;
    for (int64_t i = 0; i < n; i++) *(double *)(p[0] + i * bs[0]) += hr_load_f64(p[1] + i * bs[1], c->src);
}

hr_tensor *hr_sum_to_size(const hr_tensor *g, int ndim, const int64_t *size)
{
    if (hr_tensor_check_live(g, "sum_to_size")) return NULL;
    if (g->ndim == ndim && memcmp(g->size, size, sizeof(int64_t) * (size_t)ndim) == 0) return hr_cast(g, g->dtype);
    if (ndim > g->ndim) return hr_fail_null(HR_EINVAL, "sum_to_size: target has more dimensions than the gradient");
    int lead = g->ndim - ndim;
    for (int i = 0; i < ndim; i++) {
        if (size[i] != 1 && size[i] != g->size[lead + i]) {
            char a[160], b[160];
            return hr_fail_null(HR_EINVAL, "sum_to_size: gradient of size %s cannot be reduced to %s",
                                hr_shape_str(g->ndim, g->size, a, sizeof a), hr_shape_str(ndim, size, b, sizeof b));
        }
    }
    if (hr_dtype_is_float(g->dtype) || hr_tensor_device(g).type != HR_CPU) {
        /* the reduction kernels (also on a GPU): double accumulation, vectorised, threaded */
        int dims[HR_MAX_DIMS], nd = 0;
        for (int i = 0; i < g->ndim; i++) {
            int j = i - lead;
            if (j < 0 || (size[j] == 1 && g->size[i] != 1)) dims[nd++] = i;
        }
        if (nd == 0) return hr_cast(g, g->dtype);
        hr_tensor *s = hr_sum_dims((hr_tensor *)g, dims, nd, true);
        if (!s) return NULL;
        hr_tensor *r = hr_reshape(s, ndim, size);
        hr_tensor_release(s);
        if (r && r->storage == g->storage) { /* never hand out a view of the incoming gradient */
            hr_tensor *c = hr_cast(r, r->dtype);
            hr_tensor_release(r);
            r = c;
        }
        return r;
    }
    /* accumulate in double so long reductions of gradients stay accurate */
    hr_tensor *acc = hr_tensor_zeros(ndim, size, HR_F64, hr_tensor_device(g));
    if (!acc) return NULL;
    int64_t astride[HR_MAX_DIMS];
    for (int i = 0; i < g->ndim; i++) {
        int j = i - lead;
        astride[i] = (j < 0 || size[j] == 1) ? 0 : acc->stride[j];
    }
    hr_iter it;
    hr_iter_init(&it, g->ndim, g->size);
    hr_iter_add(&it, hr_tensor_data(acc), 8, astride);
    hr_iter_add(&it, hr_tensor_data(g), hr_dtype_size(g->dtype), g->stride);
    sum_ctx c = {g->dtype};
    hr_iter_run(&it, sum_kernel, &c, false); /* serial: many gradient elements land in one slot */
    hr_tensor *out = hr_cast(acc, g->dtype);
    hr_tensor_release(acc);
    return out;
}

/* ------------------------------------------------------------------ shared helpers */

typedef struct {
    int ndim;
    int64_t size[HR_MAX_DIMS];
    int64_t stride[HR_MAX_DIMS];
    int64_t offset;
    hr_dtype dtype;
    int a, b;        /* op-specific integers (dims) */
    int64_t start;
    int perm[HR_MAX_DIMS];
    int64_t reps[HR_MAX_DIMS]; /* repeat/tile: one count per dim of the result */
} view_ctx;

static void remember_input(view_ctx *c, const hr_tensor *in)
{
    c->ndim = in->ndim;
    memcpy(c->size, in->size, sizeof c->size);
    memcpy(c->stride, in->stride, sizeof c->stride);
    c->offset = in->offset;
    c->dtype = in->dtype;
}

/* Records a one-input node on out; on failure releases out and returns NULL. */
static hr_tensor *record_unary(const char *op, hr_backward_fn bw, hr_tensor *in, hr_tensor *out, view_ctx **ctx_out)
{
    if (!out) return NULL;
    if (!hr_should_record(1, &in)) {
        if (ctx_out) *ctx_out = NULL;
        return out;
    }
    hr_node *node = hr_node_new(op, bw, 1, &in, sizeof(view_ctx));
    if (!node) {
        hr_tensor_release(out);
        return NULL;
    }
    remember_input(node->ctx, in);
    if (ctx_out) *ctx_out = node->ctx;
    hr_node_attach(node, out);
    return out;
}

/* Zeros of the input's shape on the gradient's device. */
static hr_tensor *zeros_like_ctx(const view_ctx *c, const hr_tensor *g)
{
    return hr_tensor_zeros(c->ndim, c->size, g->dtype, hr_tensor_device(g));
}

/* ------------------------------------------------------------------ narrow / select */

/* Zeros of the input's shape with g in the narrowed part: the gradient written into its part and
 * zeros into the parts before and after it, each element once (zeroing the whole first, then
 * copying, wrote the LM head's narrowed logits gradient twice). */
static int narrow_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    if (c->ndim == 0) { /* not reached: a scalar cannot be narrowed */
        hr_tensor *z = zeros_like_ctx(c, g);
        gi[0] = z;
        return z ? 0 : -1;
    }
    hr_tensor *z = hr_tensor_empty(c->ndim, c->size, g->dtype, hr_tensor_device(g));
    if (!z) return -1;
    int64_t len = g->size[c->a], total = c->size[c->a], after = c->start + len;
    hr_tensor *slot = hr_view_narrow(z, c->a, c->start, len);
    int rc = slot ? hr_copy_(slot, g) : -1;
    hr_tensor_release(slot);
    for (int part = 0; part < 2 && rc == 0; part++) {
        int64_t from = part == 0 ? 0 : after, n = part == 0 ? c->start : total - after;
        if (n <= 0) continue;
        hr_tensor *pad = hr_view_narrow(z, c->a, from, n);
        rc = pad ? hr_fill_(pad, 0.0) : -1;
        hr_tensor_release(pad);
    }
    if (rc) {
        hr_tensor_release(z);
        return -1;
    }
    gi[0] = z;
    return 0;
}

hr_tensor *hr_ag_narrow(hr_tensor *t, int dim, int64_t start, int64_t length)
{
    view_ctx *c;
    hr_tensor *out = record_unary("narrow", narrow_backward, t, hr_view_narrow(t, dim, start, length), &c);
    if (out && c) {
        c->a = dim;
        c->start = start;
    }
    return out;
}

static int select_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    hr_tensor *z = zeros_like_ctx(c, g);
    if (!z) return -1;
    hr_tensor *slot = hr_view_select(z, c->a, c->start);
    int rc = slot ? hr_copy_(slot, g) : -1;
    hr_tensor_release(slot);
    if (rc) {
        hr_tensor_release(z);
        return -1;
    }
    gi[0] = z;
    return 0;
}

hr_tensor *hr_ag_select(hr_tensor *t, int dim, int64_t index)
{
    view_ctx *c;
    hr_tensor *out = record_unary("select", select_backward, t, hr_view_select(t, dim, index), &c);
    if (out && c) {
        c->a = dim;
        c->start = index;
    }
    return out;
}

/* ------------------------------------------------------------------ transpose / permute */

static int transpose_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    hr_tensor *back = hr_view_transpose((hr_tensor *)g, c->a, c->b);
    if (!back) return -1;
    gi[0] = hr_cast(back, back->dtype);
    hr_tensor_release(back);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_transpose(hr_tensor *t, int d0, int d1)
{
    view_ctx *c;
    hr_tensor *out = record_unary("transpose", transpose_backward, t, hr_view_transpose(t, d0, d1), &c);
    if (out && c) {
        c->a = d0;
        c->b = d1;
    }
    return out;
}

static int permute_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    int inverse[HR_MAX_DIMS];
    for (int i = 0; i < c->ndim; i++) inverse[c->perm[i]] = i;
    hr_tensor *back = hr_view_permute((hr_tensor *)g, inverse);
    if (!back) return -1;
    gi[0] = hr_cast(back, back->dtype);
    hr_tensor_release(back);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_permute(hr_tensor *t, const int *perm)
{
    view_ctx *c;
    hr_tensor *out = record_unary("permute", permute_backward, t, hr_view_permute(t, perm), &c);
    if (out && c) memcpy(c->perm, perm, sizeof(int) * (size_t)t->ndim);
    return out;
}

/* ------------------------------------------------------------------ reshape family */

/* view, reshape, squeeze, unsqueeze, contiguous, clone: the gradient is reshaped back. */
static int reshape_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    hr_tensor *gc = hr_contiguous((hr_tensor *)g);
    if (!gc) return -1;
    hr_tensor *back = hr_view_reshape_nocopy(gc, c->ndim, c->size);
    hr_tensor_release(gc);
    if (!back) return -1;
    gi[0] = back;
    return 0;
}

hr_tensor *hr_ag_view(hr_tensor *t, int ndim, const int64_t *size)
{
    return record_unary("view", reshape_backward, t, hr_view_reshape_nocopy(t, ndim, size), NULL);
}

hr_tensor *hr_ag_reshape(hr_tensor *t, int ndim, const int64_t *size)
{
    return record_unary("reshape", reshape_backward, t, hr_reshape(t, ndim, size), NULL);
}

hr_tensor *hr_ag_squeeze(hr_tensor *t, int dim)
{
    return record_unary("squeeze", reshape_backward, t, hr_view_squeeze(t, dim), NULL);
}

hr_tensor *hr_ag_unsqueeze(hr_tensor *t, int dim)
{
    return record_unary("unsqueeze", reshape_backward, t, hr_view_unsqueeze(t, dim), NULL);
}

hr_tensor *hr_ag_contiguous(hr_tensor *t)
{
    if (hr_tensor_check_live(t, "contiguous")) return NULL;
    return record_unary("contiguous", reshape_backward, t, hr_cast(t, t->dtype), NULL);
}

hr_tensor *hr_ag_clone(hr_tensor *t)
{
    if (hr_tensor_check_live(t, "clone")) return NULL;
    return record_unary("clone", reshape_backward, t, hr_cast(t, t->dtype), NULL);
}

/* ------------------------------------------------------------------ expand / cast */

static int expand_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    gi[0] = hr_sum_to_size(g, c->ndim, c->size);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_expand(hr_tensor *t, int ndim, const int64_t *size)
{
    return record_unary("expand", expand_backward, t, hr_view_expand(t, ndim, size), NULL);
}

static int cast_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    /* The half gradient of an f32/f64 tensor cast down (autocast's operands) goes on as it is: the
     * engine widens it where it meets the input's other gradients (hr_autograd.c, accumulate_into),
     * reading the half values once instead of writing and reading a widened copy. */
    if ((g->dtype == HR_BF16 || g->dtype == HR_F16) && (c->dtype == HR_F32 || c->dtype == HR_F64) &&
        hr_grad_is_exclusive(g)) {
        hr_tensor_retain((hr_tensor *)g);
        gi[0] = (hr_tensor *)g;
        return 0;
    }
    gi[0] = hr_cast(g, c->dtype);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_cast(hr_tensor *t, hr_dtype dt)
{
    if (hr_tensor_check_live(t, "cast")) return NULL;
    /* to an integer dtype the result simply has no gradient, as in PyTorch */
    if (!hr_dtype_is_float(dt)) return hr_cast(t, dt);
    return record_unary("cast", cast_backward, t, hr_cast(t, dt), NULL);
}

/* ------------------------------------------------------------------ flip / repeat / tile */

/* flip's gradient is the upstream gradient flipped back along the same dims. */
static int flip_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    gi[0] = hr_flip((hr_tensor *)g, c->a, c->perm);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_flip(hr_tensor *t, int ndims, const int *dims)
{
    view_ctx *c;
    hr_tensor *out = record_unary("flip", flip_backward, t, hr_flip(t, ndims, dims), &c);
    if (out && c) {
        c->a = ndims;
        memcpy(c->perm, dims, sizeof(int) * (size_t)ndims);
    }
    return out;
}

/* Sums the reps copies of g along dim (g's extent there is reps x part): g viewed as
 * [outer, reps, part, inner] summed over its second dim, so any number of dims fits the view and
 * the sum is the reduction kernels' (accumulated in double, as sum_to_size's). */
static hr_tensor *sum_repeats(hr_tensor *g, int dim, int64_t reps)
{
    int64_t outer = 1, inner = 1, part = g->size[dim] / reps;
    for (int i = 0; i < dim; i++) outer *= g->size[i];
    for (int i = dim + 1; i < g->ndim; i++) inner *= g->size[i];
    hr_tensor *gc = hr_contiguous(g);
    if (!gc) return NULL;
    int64_t four[4] = {outer, reps, part, inner};
    hr_tensor *v = hr_view_reshape_nocopy(gc, 4, four);
    hr_tensor_release(gc);
    if (!v) return NULL;
    int one = 1;
    hr_tensor *s = hr_sum_dims(v, &one, 1, false);
    hr_tensor_release(v);
    if (!s) return NULL;
    int64_t size[HR_MAX_DIMS];
    memcpy(size, g->size, sizeof(int64_t) * (size_t)g->ndim);
    size[dim] = part;
    hr_tensor *r = hr_reshape(s, g->ndim, size);
    hr_tensor_release(s);
    return r;
}

/* repeat's gradient: every input element receives the sum of the gradients of its copies. The
 * result's dims are the counts' (the input left-padded with 1s); those extra dims are dropped by
 * the final reshape to the input's shape. */
static int repeat_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const view_ctx *c = node->ctx;
    hr_tensor *acc = hr_cast(g, g->dtype); /* never a view of the incoming gradient */
    for (int i = 0; acc && i < g->ndim; i++) {
        if (c->reps[i] == 1 || g->size[i] == 0) continue;
        hr_tensor *next = sum_repeats(acc, i, c->reps[i]);
        hr_tensor_release(acc);
        acc = next;
    }
    if (!acc) return -1;
    int64_t numel = 1;
    for (int i = 0; i < c->ndim; i++) numel *= c->size[i];
    if (numel == 0 || hr_tensor_numel(acc) != numel) { /* a count of 0: no copy carried any gradient */
        hr_tensor_release(acc);
        gi[0] = zeros_like_ctx(c, g);
        return gi[0] ? 0 : -1;
    }
    gi[0] = hr_reshape(acc, c->ndim, c->size);
    hr_tensor_release(acc);
    return gi[0] ? 0 : -1;
}

/* repeat (tile = false) or tile (counts padded with leading 1s to the input's dims). */
hr_tensor *hr_ag_repeat(hr_tensor *t, int nreps, const int64_t *reps, bool tile)
{
    view_ctx *c;
    hr_tensor *out = record_unary(tile ? "tile" : "repeat", repeat_backward, t,
                                  tile ? hr_tile(t, nreps, reps) : hr_repeat(t, nreps, reps), &c);
    if (out && c) {
        /* the counts per dim of the result (tile pads them on the left to the input's dims) */
        int pad = out->ndim - nreps;
        for (int i = 0; i < out->ndim; i++) c->reps[i] = i < pad ? 1 : reps[i - pad];
    }
    return out;
}
