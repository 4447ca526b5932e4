/* ag_index.c — differentiable wrappers of the indexing and joining ops (hr_index.h). */
#include <stdlib.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_autograd_ops.h"
#include "hr_index.h"

typedef struct {
    int dim;
    int ndim;
    int64_t size[HR_MAX_DIMS];
    hr_dtype dtype;
    int n;            /* cat/stack: number of inputs */
    int64_t *extent;  /* cat: size of each input along dim */
} index_ctx;

static void index_ctx_destroy(void *p)
{
    index_ctx *c = p;
    free(c->extent);
}

static hr_node *record(const char *op, hr_backward_fn bw, int n, hr_tensor *const *inputs, hr_tensor *out,
                       const hr_tensor *shape_of, int dim)
{
    hr_node *node = hr_node_new(op, bw, n, inputs, sizeof(index_ctx));
    if (!node) return NULL;
    index_ctx *c = node->ctx;
    node->ctx_destroy = index_ctx_destroy;
    c->dim = dim;
    if (shape_of) {
        c->ndim = shape_of->ndim;
        memcpy(c->size, shape_of->size, sizeof c->size);
        c->dtype = shape_of->dtype;
    }
    (void)out;
    return node;
}

static hr_tensor *fail_release(hr_tensor *out, hr_node *node)
{
    hr_node_release(node);
    hr_tensor_release(out);
    return NULL;
}

/* ------------------------------------------------------------------ index_select / gather */

static int index_select_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    hr_tensor *idx = hr_node_saved(node, 0);
    if (!idx) return -1;
    hr_tensor *z = hr_tensor_zeros(c->ndim, c->size, g->dtype, hr_tensor_device(g));
    if (!z) return -1;
    hr_index_checks_trusted_begin(); /* the forward checked idx against this size */
    int rc = hr_index_add_(z, c->dim, idx, g, 1.0);
    hr_index_checks_trusted_end();
    if (rc) {
        hr_tensor_release(z);
        return -1;
    }
    gi[0] = z;
    return 0;
}

/* A 0-dim self is read as the one-element vector it holds, as torch does: gather then gives the
 * index's shape (a 0-dim or 1-D index), index_select of one index a 0-dim value. The reshapes are
 * on the tape, so the gradient comes back 0-dimensional. */
static hr_tensor *scalar_self(bool gather, hr_tensor *t, int dim, const hr_tensor *index)
{
    const char *op = gather ? "gather" : "index_select";
    char buf[160];
    if (dim != 0 && dim != -1)
        return hr_fail_null(HR_EINVAL, "%s: dimension %d out of range for a 0-dimensional tensor", op, dim + 1);
    if (index->ndim > 1 || (!gather && hr_tensor_numel(index) != 1))
        return hr_fail_null(HR_EINVAL, "%s: a 0-dimensional self takes %s, got %s", op,
                            gather ? "a 0-dimensional or 1-D index" : "one index (0-dimensional or of size 1)",
                            hr_tensor_desc(index, buf, sizeof buf));
    int64_t one = 1, n = hr_tensor_numel(index);
    hr_tensor *t1 = hr_ag_reshape(t, 1, &one);
    hr_tensor *i1 = hr_reshape((hr_tensor *)index, 1, &n);
    hr_tensor *out = t1 && i1 ? (gather ? hr_ag_gather(t1, 0, i1) : hr_ag_index_select(t1, 0, i1)) : NULL;
    hr_tensor_release(t1);
    hr_tensor_release(i1);
    if (!out || (gather && index->ndim == 1)) return out;
    hr_tensor *r = hr_ag_reshape(out, 0, &one);
    hr_tensor_release(out);
    return r;
}

hr_tensor *hr_ag_index_select(hr_tensor *t, int dim, const hr_tensor *index)
{
    if (t->ndim == 0) return scalar_self(false, t, dim, index);
    hr_tensor *out = hr_index_select(t, dim, index);
    if (!out || !hr_should_record(1, &t)) return out;
    hr_node *node = record("index_select", index_select_backward, 1, &t, out, t, dim);
    if (!node || hr_node_save(node, (hr_tensor *)index) < 0) return fail_release(out, node);
    hr_node_attach(node, out);
    return out;
}

static int gather_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    hr_tensor *idx = hr_node_saved(node, 0);
    if (!idx) return -1;
    hr_tensor *z = hr_tensor_zeros(c->ndim, c->size, g->dtype, hr_tensor_device(g));
    if (!z) return -1;
    hr_index_checks_trusted_begin(); /* the forward checked idx against this size */
    int rc = hr_scatter_add_(z, c->dim, idx, g);
    hr_index_checks_trusted_end();
    if (rc) {
        hr_tensor_release(z);
        return -1;
    }
    gi[0] = z;
    return 0;
}

hr_tensor *hr_ag_gather(hr_tensor *t, int dim, const hr_tensor *index)
{
    if (t->ndim == 0) return scalar_self(true, t, dim, index);
    hr_tensor *out = hr_gather(t, dim, index);
    if (!out || !hr_should_record(1, &t)) return out;
    hr_node *node = record("gather", gather_backward, 1, &t, out, t, dim);
    if (!node || hr_node_save(node, (hr_tensor *)index) < 0) return fail_release(out, node);
    hr_node_attach(node, out);
    return out;
}

/* ------------------------------------------------------------------ scatter_add (out of place) */

static int scatter_add_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    if (hr_node_input_needs_grad(node, 0) && !(gi[0] = hr_cast(g, g->dtype))) return -1;
    if (hr_node_input_needs_grad(node, 1)) {
        hr_tensor *idx = hr_node_saved(node, 0);
        hr_tensor *picked = idx ? hr_gather((hr_tensor *)g, c->dim, idx) : NULL;
        if (!picked) return -1;
        /* src may be bigger than the index (only its leading index.size(d) entries per dim are
         * scattered): the others get a zero gradient */
        int nd;
        const int64_t *src_size;
        hr_node_input_shape(node, 1, &nd, &src_size);
        if (nd == picked->ndim && memcmp(src_size, picked->size, sizeof(int64_t) * (size_t)nd) == 0) {
            gi[1] = picked;
            return 0;
        }
        hr_tensor *full = hr_tensor_zeros(nd, src_size, picked->dtype, hr_tensor_device(picked));
        hr_tensor *corner = full ? hr_view_alias(full) : NULL;
        int rc = corner ? 0 : -1;
        for (int d = 0; d < nd && rc == 0; d++) {
            hr_tensor *narrowed = hr_view_narrow(corner, d, 0, picked->size[d]);
            hr_tensor_release(corner);
            corner = narrowed;
            if (!corner) rc = -1;
        }
        if (rc == 0) rc = hr_copy_(corner, picked);
        hr_tensor_release(corner);
        hr_tensor_release(picked);
        if (rc) {
            hr_tensor_release(full);
            return -1;
        }
        gi[1] = full;
    }
    return 0;
}

hr_tensor *hr_ag_scatter_add(hr_tensor *t, int dim, const hr_tensor *index, hr_tensor *src)
{
    hr_tensor *out = hr_scatter_add(t, dim, index, src);
    hr_tensor *inputs[2] = {t, src};
    if (!out || !hr_should_record(2, inputs)) return out;
    hr_node *node = record("scatter_add", scatter_add_backward, 2, inputs, out, t, dim);
    if (!node || hr_node_save(node, (hr_tensor *)index) < 0) return fail_release(out, node);
    hr_node_attach(node, out);
    return out;
}

/* ------------------------------------------------------------------ masked_fill / masked_select */

static int masked_fill_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    hr_tensor *mask = hr_node_saved(node, 0);
    if (!mask) return -1;
    hr_scalar zero = {false, 0, 0.0};
    hr_tensor *masked = hr_masked_fill((hr_tensor *)g, mask, zero);
    if (!masked) return -1;
    gi[0] = hr_sum_to_size(masked, c->ndim, c->size);
    hr_tensor_release(masked);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_masked_fill(hr_tensor *t, const hr_tensor *mask, hr_scalar value)
{
    hr_tensor *out = hr_masked_fill(t, mask, value);
    if (!out || !hr_should_record(1, &t)) return out;
    hr_node *node = record("masked_fill", masked_fill_backward, 1, &t, out, t, 0);
    if (!node || hr_node_save(node, (hr_tensor *)mask) < 0) return fail_release(out, node);
    hr_node_attach(node, out);
    return out;
}

typedef struct {
    const char *g;
    int64_t pos;
    hr_dtype dt;
} unselect_ctx;

/* Operand 0: the broadcast gradient (written), operand 1: the broadcast mask. */
static void unselect_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    unselect_ctx *c = arg;
    size_t el = hr_dtype_size(c->dt);
    for (int64_t i = 0; i < n; i++) {
        if (*(const uint8_t *)(p[1] + i * bs[1])) {
            memcpy(p[0] + i * bs[0], c->g + (size_t)c->pos * el, el);
            c->pos++;
        }
    }
}

static int masked_select_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    hr_tensor *mask = hr_node_saved(node, 0);
    if (!mask) return -1;
    int nd;
    int64_t shape[HR_MAX_DIMS];
    if (hr_broadcast_shape("masked_select", c->ndim, c->size, mask->ndim, mask->size, &nd, shape)) return -1;
    hr_tensor *gc = hr_contiguous((hr_tensor *)g);
    if (gc && (hr_tensor_device(g).type == HR_CUDA || hr_gpu_formulations_on_cpu())) {
        /* the selected positions receive g, in order: one index_copy_ on the device */
        int64_t numel = 1;
        for (int i = 0; i < nd; i++) numel *= shape[i];
        hr_tensor *pos = hr_mask_positions(mask, nd, shape, hr_tensor_device(g));
        hr_tensor *flat = pos ? hr_tensor_zeros(1, &numel, g->dtype, hr_tensor_device(g)) : NULL;
        hr_tensor *full = flat && hr_index_copy_(flat, 0, pos, gc) == 0 ? hr_reshape(flat, nd, shape) : NULL;
        gi[0] = full ? hr_sum_to_size(full, c->ndim, c->size) : NULL;
        hr_tensor_release(full);
        hr_tensor_release(flat);
        hr_tensor_release(pos);
        hr_tensor_release(gc);
        return gi[0] ? 0 : -1;
    }
    hr_tensor *full = hr_tensor_zeros(nd, shape, g->dtype, hr_tensor_device(g));
    int rc = -1;
    if (full && gc) {
        int64_t ms[HR_MAX_DIMS];
        hr_broadcast_strides(mask, nd, shape, ms);
        hr_iter it;
        hr_iter_init(&it, nd, shape);
        hr_iter_add(&it, hr_tensor_data(full), hr_dtype_size(full->dtype), full->stride);
        hr_iter_add(&it, hr_tensor_data(mask), 1, ms);
        unselect_ctx u = {hr_tensor_data(gc), 0, g->dtype};
        hr_iter_run(&it, unselect_kernel, &u, false); /* serial: the source position is sequential */
        gi[0] = hr_sum_to_size(full, c->ndim, c->size);
        rc = gi[0] ? 0 : -1;
    }
    hr_tensor_release(full);
    hr_tensor_release(gc);
    return rc;
}

hr_tensor *hr_ag_masked_select(hr_tensor *t, const hr_tensor *mask)
{
    hr_tensor *out = hr_masked_select(t, mask);
    if (!out || !hr_should_record(1, &t)) return out;
    hr_node *node = record("masked_select", masked_select_backward, 1, &t, out, t, 0);
    /* the mask is saved as u8/bool bytes; the kernel reads one byte per element */
    hr_tensor *m8 = mask->dtype == HR_U8 || mask->dtype == HR_BOOL ? NULL : hr_cast(mask, HR_BOOL);
    if (!node || hr_node_save(node, m8 ? m8 : (hr_tensor *)mask) < 0) {
        hr_tensor_release(m8);
        return fail_release(out, node);
    }
    hr_tensor_release(m8);
    hr_node_attach(node, out);
    return out;
}

/* ------------------------------------------------------------------ cat / stack */

static int cat_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    int64_t start = 0;
    for (int i = 0; i < c->n; i++) {
        int64_t len = c->extent[i];
        if (len < 0) { /* a skipped empty 1-D input: its gradient is empty too */
            if (hr_node_input_needs_grad(node, i)) {
                int64_t none = 0;
                if (!(gi[i] = hr_tensor_zeros(1, &none, c->dtype, hr_tensor_device(g)))) return -1;
            }
            continue;
        }
        if (hr_node_input_needs_grad(node, i)) {
            hr_tensor *piece = hr_view_narrow((hr_tensor *)g, c->dim, start, len);
            if (!piece) return -1;
            gi[i] = hr_cast(piece, c->dtype);
            hr_tensor_release(piece);
            if (!gi[i]) return -1;
        }
        start += len;
    }
    return 0;
}

hr_tensor *hr_ag_cat(int n, hr_tensor *const *ts, int dim)
{
    hr_tensor *out = hr_cat(n, ts, dim);
    if (!out || !hr_should_record(n, ts)) return out;
    hr_node *node = record("cat", cat_backward, n, ts, out, NULL, dim);
    if (!node) return fail_release(out, node);
    index_ctx *c = node->ctx;
    c->n = n;
    c->dtype = out->dtype;
    c->extent = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!c->extent) return fail_release(out, node);
    for (int i = 0; i < n; i++) {
        bool skipped = ts[i]->ndim == 1 && ts[i]->size[0] == 0 && out->ndim != 1;
        c->extent[i] = skipped ? -1 : ts[i]->size[dim];
    }
    hr_node_attach(node, out);
    return out;
}

static int stack_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const index_ctx *c = node->ctx;
    for (int i = 0; i < c->n; i++) {
        if (!hr_node_input_needs_grad(node, i)) continue;
        hr_tensor *piece = hr_view_select((hr_tensor *)g, c->dim, i);
        if (!piece) return -1;
        gi[i] = hr_cast(piece, c->dtype);
        hr_tensor_release(piece);
        if (!gi[i]) return -1;
    }
    return 0;
}

hr_tensor *hr_ag_stack(int n, hr_tensor *const *ts, int dim)
{
    hr_tensor *out = hr_stack(n, ts, dim);
    if (!out || !hr_should_record(n, ts)) return out;
    hr_node *node = record("stack", stack_backward, n, ts, out, NULL, dim);
    if (!node) return fail_release(out, node);
    index_ctx *c = node->ctx;
    c->n = n;
    c->dtype = out->dtype;
    hr_node_attach(node, out);
    return out;
}
