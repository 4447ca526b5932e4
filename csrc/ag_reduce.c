/* ag_reduce.c — differentiable wrappers of reductions, scans, softmax and sorting (hr_reduce.h). */
#include <math.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_cuda.h"
#include "hr_index.h"
#include "hr_pointwise.h"
#include "hr_reduce.h"

typedef struct {
    int ndim;                    /* input */
    int64_t size[HR_MAX_DIMS];
    hr_dtype dtype;
    bool reduced[HR_MAX_DIMS];   /* which input dims were reduced */
    bool keepdim;
    int dim;                     /* the single dim (softmax, cumsum, max with dim) */
    bool unbiased;
    double p;
    int slot_x, slot_out, slot_idx;
} red_ctx;

static hr_tensor *drop(hr_tensor *x, hr_tensor *r)
{
    hr_tensor_release(x);
    return r;
}

static hr_tensor *bin(hr_binary_op op, const hr_tensor *a, const hr_tensor *b)
{
    return (a && b) ? hr_binary(op, hr_operand_tensor(a), hr_operand_tensor(b), NULL) : NULL;
}

static hr_tensor *bin_s(hr_binary_op op, const hr_tensor *a, double s)
{
    return a ? hr_binary(op, hr_operand_tensor(a), hr_operand_float(s), NULL) : NULL;
}

/* The gradient of a reduction broadcast back over the input's shape (a new contiguous tensor in
 * the input's dtype). */
static hr_tensor *expand_back(const red_ctx *c, const hr_tensor *g)
{
    int64_t kshape[HR_MAX_DIMS];
    for (int i = 0; i < c->ndim; i++) kshape[i] = c->reduced[i] ? 1 : c->size[i];
    hr_tensor *gc = hr_contiguous((hr_tensor *)g);
    if (!gc) return NULL;
    hr_tensor *gk = hr_view_reshape_nocopy(gc, c->ndim, kshape);
    hr_tensor_release(gc);
    if (!gk) return NULL;
    hr_tensor *ge = hr_view_expand(gk, c->ndim, c->size);
    hr_tensor_release(gk);
    if (!ge) return NULL;
    return drop(ge, hr_cast(ge, c->dtype));
}

/* Same, kept in the keepdim shape (for broadcasting against the input). */
static hr_tensor *keep_shape(const red_ctx *c, const hr_tensor *t)
{
    int64_t kshape[HR_MAX_DIMS];
    for (int i = 0; i < c->ndim; i++) kshape[i] = c->reduced[i] ? 1 : c->size[i];
    hr_tensor *tc = hr_contiguous((hr_tensor *)t);
    if (!tc) return NULL;
    return drop(tc, hr_view_reshape_nocopy(tc, c->ndim, kshape));
}

static int64_t reduced_count(const red_ctx *c)
{
    int64_t n = 1;
    for (int i = 0; i < c->ndim; i++)
        if (c->reduced[i]) n *= c->size[i];
    return n;
}

static hr_node *new_node(const char *op, hr_backward_fn bw, hr_tensor *t, const int *dims, int ndims, bool keepdim)
{
    hr_node *node = hr_node_new(op, bw, 1, &t, sizeof(red_ctx));
    if (!node) return NULL;
    red_ctx *c = node->ctx;
    c->ndim = t->ndim;
    memcpy(c->size, t->size, sizeof c->size);
    c->dtype = t->dtype;
    c->keepdim = keepdim;
    c->slot_x = c->slot_out = c->slot_idx = -1;
    c->dim = -1;
    if (ndims < 0) { /* every dim */
        for (int i = 0; i < t->ndim; i++) c->reduced[i] = true;
    } else {
        for (int k = 0; k < ndims; k++) {
            int d = dims[k] < 0 ? dims[k] + t->ndim : dims[k];
            if (d >= 0 && d < t->ndim) c->reduced[d] = true;
        }
        if (ndims == 1) c->dim = dims[0] < 0 ? dims[0] + t->ndim : dims[0];
    }
    return node;
}

static bool wants_grad(hr_tensor *t, hr_tensor *out) { return out && hr_should_record(1, &t) && hr_dtype_is_float(out->dtype); }

static hr_tensor *finish(hr_node *node, hr_tensor *out, bool ok)
{
    if (!node || !ok) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    hr_node_attach(node, out);
    return out;
}

/* ------------------------------------------------------------------ sum / mean */

static int sum_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    gi[0] = expand_back(node->ctx, g);
    return gi[0] ? 0 : -1;
}

static int mean_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    if (g->dtype == c->dtype) { /* divide the reduced gradient, then one pass spreads it */
        hr_tensor *q = bin_s(HR_DIV, g, (double)reduced_count(c));
        gi[0] = q ? drop(q, expand_back(c, q)) : NULL;
        return gi[0] ? 0 : -1;
    }
    hr_tensor *e = expand_back(c, g);
    gi[0] = drop(e, bin_s(HR_DIV, e, (double)reduced_count(c)));
    return gi[0] ? 0 : -1;
}

static hr_tensor *reduce_dims(bool mean, hr_tensor *t, const int *dims, int ndims, bool keepdim)
{
    hr_tensor *out;
    if (ndims == 1) out = mean ? hr_mean(t, dims[0], keepdim) : hr_sum(t, dims[0], keepdim);
    else out = mean ? hr_mean_dims(t, dims, ndims, keepdim) : hr_sum_dims(t, dims, ndims, keepdim);
    if (!wants_grad(t, out)) return out;
    bool all = ndims == 1 && dims[0] == HR_DIM_ALL;
    hr_node *node = new_node(mean ? "mean" : "sum", mean ? mean_backward : sum_backward, t, dims, all ? -1 : ndims, keepdim);
    return finish(node, out, true);
}

hr_tensor *hr_ag_sum(hr_tensor *t, int dim, bool keepdim) { return reduce_dims(false, t, &dim, 1, keepdim); }
hr_tensor *hr_ag_mean(hr_tensor *t, int dim, bool keepdim) { return reduce_dims(true, t, &dim, 1, keepdim); }
hr_tensor *hr_ag_sum_dims(hr_tensor *t, const int *dims, int n, bool keepdim) { return reduce_dims(false, t, dims, n, keepdim); }
hr_tensor *hr_ag_mean_dims(hr_tensor *t, const int *dims, int n, bool keepdim) { return reduce_dims(true, t, dims, n, keepdim); }

/* ------------------------------------------------------------------ max / min */

/* On a GPU (no scatter kernel there yet): the one-hot of the selected index along dim, times g;
 * the same values as the scatter since every output position receives one gradient at most. */
static hr_tensor *select_onehot(const red_ctx *c, hr_tensor *ik, hr_tensor *gk)
{
    int64_t n = c->size[c->dim], shape[HR_MAX_DIMS];
    for (int i = 0; i < c->ndim; i++) shape[i] = i == c->dim ? n : 1;
    hr_tensor *pos = hr_tensor_empty(c->ndim, shape, HR_I64, hr_cpu());
    if (!pos) return NULL;
    int64_t *p = hr_tensor_data(pos);
    for (int64_t i = 0; i < n; i++) p[i] = i;
    hr_tensor *pd = hr_tensor_empty(c->ndim, shape, HR_I64, hr_tensor_device(gk));
    if (pd && hr_copy_(pd, pos)) pd = drop(pd, NULL);
    hr_tensor_release(pos);
    hr_tensor *eq = bin(HR_EQ, pd, ik);
    hr_tensor *eqf = eq ? hr_cast(eq, gk->dtype) : NULL;
    hr_tensor *r = bin(HR_MUL, eqf, gk);
    hr_tensor_release(pd);
    hr_tensor_release(eq);
    hr_tensor_release(eqf);
    return r;
}

/* A selection from a 0-dim tensor picks its one element: the gradient is g itself in t's dtype
 * (scatter_add_ has no dimension to scatter along). */
static int scalar_selection_backward(const red_ctx *c, const hr_tensor *g, hr_tensor **gi)
{
    if (hr_tensor_numel(g) == 0) /* topk with k = 0 */
        gi[0] = hr_tensor_zeros(0, c->size, c->dtype, hr_tensor_device(g));
    else
        gi[0] = expand_back(c, g);
    return gi[0] ? 0 : -1;
}

/* With a dim: the gradient goes to the selected index. */
static int select_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    if (c->ndim == 0) return scalar_selection_backward(c, g, gi);
    hr_tensor *idx = hr_node_saved(node, c->slot_idx);
    if (!idx) return -1;
    hr_tensor *ik = keep_shape(c, idx);
    hr_tensor *gk = keep_shape(c, g);
    if ((hr_tensor_device(g).type == HR_CUDA || hr_gpu_formulations_on_cpu()) && c->ndim > 0) {
        hr_tensor *r = ik && gk ? select_onehot(c, ik, gk) : NULL;
        hr_tensor_release(ik);
        hr_tensor_release(gk);
        if (!r) return -1;
        gi[0] = r->dtype == c->dtype ? r : drop(r, hr_cast(r, c->dtype));
        return gi[0] ? 0 : -1;
    }
    hr_tensor *z = hr_tensor_zeros(c->ndim, c->size, g->dtype, hr_tensor_device(g));
    int rc = (ik && gk && z) ? hr_scatter_add_(z, c->dim, ik, gk) : -1;
    hr_tensor_release(ik);
    hr_tensor_release(gk);
    if (rc) return drop(z, NULL), -1;
    gi[0] = z->dtype == c->dtype ? z : drop(z, hr_cast(z, c->dtype));
    return gi[0] ? 0 : -1;
}

/* Over every element, or along c->dim for amax/amin: the gradient is shared by all elements equal
 * to the extreme, or by the NaNs when the extreme is NaN (PyTorch's evenly_distribute_backward and
 * amax's scale_grad_by_count, whose NaN rows get NaN where hero shares the gradient as max does). */
static int extreme_all_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, c->slot_x), *v0 = hr_node_saved(node, c->slot_out);
    if (!x || !v0) return -1;
    /* both in the keepdim shape, so that they broadcast against x */
    hr_tensor *v = keep_shape(c, v0), *gk = keep_shape(c, g);
    hr_tensor *eq = bin(HR_EQ, x, v), *x_nan = bin(HR_NE, x, x), *v_nan = bin(HR_NE, v, v);
    hr_tensor *both_nan = bin(HR_LOGICAL_AND, x_nan, v_nan);
    hr_tensor *m = bin(HR_LOGICAL_OR, eq, both_nan);
    hr_tensor_release(v);
    hr_tensor_release(eq);
    hr_tensor_release(x_nan);
    hr_tensor_release(v_nan);
    hr_tensor_release(both_nan);
    hr_tensor *mf = m ? hr_cast(m, g->dtype) : NULL;
    hr_tensor_release(m);
    hr_tensor *cnt = mf ? hr_sum(mf, c->dim >= 0 ? c->dim : HR_DIM_ALL, c->dim >= 0) : NULL;
    hr_tensor *share = bin(HR_DIV, gk, cnt);
    hr_tensor *r = bin(HR_MUL, mf, share);
    hr_tensor_release(gk);
    hr_tensor_release(mf);
    hr_tensor_release(cnt);
    hr_tensor_release(share);
    if (!r) return -1;
    gi[0] = r->dtype == c->dtype ? r : drop(r, hr_cast(r, c->dtype));
    return gi[0] ? 0 : -1;
}

/* amax / amin along dim (HR_DIM_ALL: every element): max's values with the gradient shared by tied
 * elements, where max along a dim sends it to the one its index names. */
hr_tensor *hr_ag_amax_amin(bool is_max, hr_tensor *t, int dim, bool keepdim)
{
    hr_tensor *v = NULL, *i = NULL;
    bool all = dim == HR_DIM_ALL;
    int rc = is_max ? hr_max(t, dim, keepdim, &v, all ? NULL : &i) : hr_min(t, dim, keepdim, &v, all ? NULL : &i);
    hr_tensor_release(i);
    if (rc || !wants_grad(t, v)) return rc ? NULL : v;
    int d = dim < 0 && !all ? dim + t->ndim : dim;
    if (!all && t->ndim == 0) all = true;
    hr_node *node = all ? new_node(is_max ? "amax" : "amin", extreme_all_backward, t, NULL, -1, keepdim)
                        : new_node(is_max ? "amax" : "amin", extreme_all_backward, t, &d, 1, keepdim);
    bool ok = node && (((red_ctx *)node->ctx)->slot_x = hr_node_save(node, t)) >= 0 &&
              (((red_ctx *)node->ctx)->slot_out = hr_node_save(node, v)) >= 0;
    return finish(node, v, ok);
}

int hr_ag_max_min(bool is_max, hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    int rc = is_max ? hr_max(t, dim, keepdim, values, indices) : hr_min(t, dim, keepdim, values, indices);
    if (rc || !wants_grad(t, *values)) return rc;
    const char *op = is_max ? "max" : "min";
    hr_node *node;
    bool ok;
    if (dim == HR_DIM_ALL || !indices) {
        node = new_node(op, extreme_all_backward, t, NULL, -1, keepdim);
        ok = node && (((red_ctx *)node->ctx)->slot_x = hr_node_save(node, t)) >= 0 &&
             (((red_ctx *)node->ctx)->slot_out = hr_node_save(node, *values)) >= 0;
    } else {
        node = new_node(op, select_backward, t, &dim, 1, keepdim);
        ok = node && (((red_ctx *)node->ctx)->slot_idx = hr_node_save(node, *indices)) >= 0;
    }
    if (!finish(node, *values, ok)) {
        *values = NULL;
        if (indices) {
            hr_tensor_release(*indices);
            *indices = NULL;
        }
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ var / std / norm */

static int var_std_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi, bool is_std)
{
    const red_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, c->slot_x);
    if (!x) return -1;
    int dims[HR_MAX_DIMS], nd = 0;
    for (int i = 0; i < c->ndim; i++)
        if (c->reduced[i]) dims[nd++] = i;
    hr_tensor *mu = nd ? hr_mean_dims(x, dims, nd, true) : hr_cast(x, x->dtype);
    hr_tensor *centered = bin(HR_SUB, x, mu);
    hr_tensor_release(mu);
    double denom = (double)reduced_count(c) - (c->unbiased ? 1.0 : 0.0);
    hr_tensor *ge = expand_back(c, g);
    hr_tensor *scaled = bin_s(HR_MUL, centered, (is_std ? 1.0 : 2.0) / denom);
    hr_tensor_release(centered);
    hr_tensor *r = bin(HR_MUL, ge, scaled);
    hr_tensor_release(ge);
    hr_tensor_release(scaled);
    if (r && is_std) {
        /* d std = d var / (2 std), zero where std is 0 (PyTorch's std_backward) */
        hr_tensor *sd = hr_node_saved(node, c->slot_out);
        hr_tensor *sk = sd ? keep_shape(c, sd) : NULL;
        r = drop(r, bin(HR_DIV, r, sk));
        hr_tensor *zero = sk ? hr_binary(HR_EQ, hr_operand_tensor(sk), hr_operand_float(0.0), NULL) : NULL;
        r = zero && r ? drop(r, hr_where(zero, hr_operand_float(0.0), hr_operand_tensor(r))) : drop(r, NULL);
        hr_tensor_release(zero);
        hr_tensor_release(sk);
    }
    gi[0] = r;
    return r ? 0 : -1;
}

static int var_backward(hr_node *n, const hr_tensor *g, hr_tensor **gi) { return var_std_backward(n, g, gi, false); }
static int std_backward(hr_node *n, const hr_tensor *g, hr_tensor **gi) { return var_std_backward(n, g, gi, true); }

hr_tensor *hr_ag_var_std(bool is_std, hr_tensor *t, int dim, bool unbiased, bool keepdim)
{
    hr_tensor *out = is_std ? hr_std(t, dim, unbiased, keepdim) : hr_var(t, dim, unbiased, keepdim);
    if (!wants_grad(t, out)) return out;
    hr_node *node = new_node(is_std ? "std" : "var", is_std ? std_backward : var_backward, t, &dim,
                             dim == HR_DIM_ALL ? -1 : 1, keepdim);
    bool ok = node != NULL;
    if (ok) {
        red_ctx *c = node->ctx;
        c->unbiased = unbiased;
        ok = (c->slot_x = hr_node_save(node, t)) >= 0 && (!is_std || (c->slot_out = hr_node_save(node, out)) >= 0);
    }
    return finish(node, out, ok);
}

static int norm_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, c->slot_x);
    if (!x) return -1;
    hr_tensor *ge = expand_back(c, g);
    hr_tensor *r = NULL;
    if (c->p == 1) {
        hr_tensor *s = hr_unary(HR_SIGN, x);
        r = bin(HR_MUL, ge, s);
        hr_tensor_release(s);
    } else { /* p = 2: x / ||x||, 0 where the norm is 0 */
        hr_tensor *nv = hr_node_saved(node, c->slot_out);
        hr_tensor *nk = nv ? keep_shape(c, nv) : NULL;
        hr_tensor *q = bin(HR_DIV, x, nk);
        hr_tensor *zero = nk ? bin_s(HR_EQ, nk, 0.0) : NULL;
        hr_tensor *safe = (q && zero) ? hr_where(zero, hr_operand_float(0.0), hr_operand_tensor(q)) : NULL;
        r = bin(HR_MUL, ge, safe);
        hr_tensor_release(nk);
        hr_tensor_release(q);
        hr_tensor_release(zero);
        hr_tensor_release(safe);
    }
    hr_tensor_release(ge);
    gi[0] = r;
    return r ? 0 : -1;
}

hr_tensor *hr_ag_norm(hr_tensor *t, double p, int dim, bool keepdim)
{
    hr_tensor *out = hr_norm(t, p, dim, keepdim);
    if (!wants_grad(t, out)) return out;
    if (p != 1 && p != 2) {
        hr_tensor_release(out);
        return hr_fail_null(HR_EINVAL, "norm: only p = 1 and p = 2 are differentiable, got p = %g", p);
    }
    hr_node *node = new_node("norm", norm_backward, t, &dim, dim == HR_DIM_ALL ? -1 : 1, keepdim);
    bool ok = node != NULL;
    if (ok) {
        red_ctx *c = node->ctx;
        c->p = p;
        ok = (c->slot_x = hr_node_save(node, t)) >= 0 && (c->slot_out = hr_node_save(node, out)) >= 0;
    }
    return finish(node, out, ok);
}

/* ------------------------------------------------------------------ cumsum / softmax / log_softmax */

static int cumsum_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    /* reverse cumulative sum: total - cumsum + g */
    hr_tensor *total = hr_sum((hr_tensor *)g, c->dim, true);
    hr_tensor *cs = hr_cumsum((hr_tensor *)g, c->dim);
    hr_tensor *d = bin(HR_SUB, total, cs);
    hr_tensor *r = bin(HR_ADD, d, g);
    hr_tensor_release(total);
    hr_tensor_release(cs);
    hr_tensor_release(d);
    if (!r) return -1;
    gi[0] = r->dtype == c->dtype ? r : drop(r, hr_cast(r, c->dtype));
    return gi[0] ? 0 : -1;
}

static int softmax_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    hr_tensor *y = hr_node_saved(node, c->slot_out);
    if (!y) return -1;
    hr_tensor *gy = bin(HR_MUL, g, y);
    hr_tensor *s = gy ? hr_sum(gy, c->dim, true) : NULL;
    hr_tensor *d = bin(HR_SUB, g, s);
    gi[0] = bin(HR_MUL, y, d);
    hr_tensor_release(gy);
    hr_tensor_release(s);
    hr_tensor_release(d);
    return gi[0] ? 0 : -1;
}

static int log_softmax_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    hr_tensor *y = hr_node_saved(node, c->slot_out);
    if (!y) return -1;
    hr_tensor *p = hr_unary(HR_EXP, y);
    hr_tensor *s = hr_sum((hr_tensor *)g, c->dim, true);
    hr_tensor *ps = bin(HR_MUL, p, s);
    gi[0] = bin(HR_SUB, g, ps);
    hr_tensor_release(p);
    hr_tensor_release(s);
    hr_tensor_release(ps);
    return gi[0] ? 0 : -1;
}

static hr_tensor *along_dim(const char *op, hr_tensor *out, hr_backward_fn bw, hr_tensor *t, int dim, bool save_out)
{
    if (!wants_grad(t, out)) return out;
    hr_node *node = new_node(op, bw, t, &dim, 1, true);
    bool ok = node != NULL;
    if (ok && save_out) ok = (((red_ctx *)node->ctx)->slot_out = hr_node_save(node, out)) >= 0;
    return finish(node, out, ok);
}

hr_tensor *hr_ag_cumsum(hr_tensor *t, int dim) { return along_dim("cumsum", hr_cumsum(t, dim), cumsum_backward, t, dim, false); }
hr_tensor *hr_ag_softmax(hr_tensor *t, int dim) { return along_dim("softmax", hr_softmax(t, dim), softmax_backward, t, dim, true); }
hr_tensor *hr_ag_log_softmax(hr_tensor *t, int dim)
{
    return along_dim("log_softmax", hr_log_softmax(t, dim), log_softmax_backward, t, dim, true);
}

/* ------------------------------------------------------------------ sort / topk values */

static int gather_back_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    if (c->ndim == 0) return scalar_selection_backward(c, g, gi);
    hr_tensor *idx = hr_node_saved(node, c->slot_idx);
    if (!idx) return -1;
    hr_tensor *gc = hr_contiguous((hr_tensor *)g);
    hr_tensor *z = hr_tensor_zeros(c->ndim, c->size, g->dtype, hr_tensor_device(g));
    int rc = (gc && z) ? hr_scatter_add_(z, c->dim, idx, gc) : -1;
    hr_tensor_release(gc);
    if (rc) return drop(z, NULL), -1;
    gi[0] = z->dtype == c->dtype ? z : drop(z, hr_cast(z, c->dtype));
    return gi[0] ? 0 : -1;
}

int hr_ag_sort_topk(bool topk, hr_tensor *t, int64_t k, int dim, bool flag, hr_tensor **values, hr_tensor **indices)
{
    int rc = topk ? hr_topk(t, k, dim, flag, values, indices) : hr_sort(t, dim, flag, values, indices);
    if (rc || !wants_grad(t, *values)) return rc;
    int d = dim < 0 ? dim + t->ndim : dim;
    if (t->ndim == 0) d = 0;
    hr_node *node = new_node(topk ? "topk" : "sort", gather_back_backward, t, &d, 1, true);
    bool ok = node && (((red_ctx *)node->ctx)->slot_idx = hr_node_save(node, *indices)) >= 0;
    if (!finish(node, *values, ok)) {
        *values = NULL;
        hr_tensor_release(*indices);
        *indices = NULL;
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ kthvalue / median / cummax */

/* Values and indices of an op giving one element of t per position, with the gradient sent to the
 * element each index names (torch's value_selecting_reduction_backward and cummaxmin_backward):
 * the outputs come in t's rank (the selected dim kept), and keepdim = false squeezes it after the
 * node, through the differentiable squeeze. */
static int selection_with_grad(const char *op, hr_tensor *t, int dim, bool keepdim, int rc, hr_tensor **values,
                               hr_tensor **indices)
{
    if (rc) return rc;
    int d = dim < 0 ? dim + t->ndim : dim;
    if (t->ndim == 0) d = 0;
    if (wants_grad(t, *values)) {
        hr_node *node = new_node(op, gather_back_backward, t, &d, 1, true);
        bool ok = node && (((red_ctx *)node->ctx)->slot_idx = hr_node_save(node, *indices)) >= 0;
        if (!finish(node, *values, ok)) {
            *values = NULL;
            hr_tensor_release(*indices);
            *indices = NULL;
            return -1;
        }
    }
    if (keepdim || t->ndim == 0) return 0;
    hr_tensor *v = hr_ag_squeeze(*values, d), *i = hr_view_squeeze(*indices, d);
    hr_tensor_release(*values);
    hr_tensor_release(*indices);
    *values = v;
    *indices = i;
    if (v && i) return 0;
    hr_tensor_release(v);
    hr_tensor_release(i);
    *values = *indices = NULL;
    return -1;
}

int hr_ag_kthvalue(hr_tensor *t, int64_t k, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    return selection_with_grad("kthvalue", t, dim, keepdim, hr_kthvalue(t, k, dim, values, indices), values, indices);
}

int hr_ag_median_dim(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    return selection_with_grad("median", t, dim, keepdim, hr_median_dim(t, dim, values, indices), values, indices);
}

int hr_ag_mode(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    return selection_with_grad("mode", t, dim, keepdim, hr_mode(t, dim, values, indices), values, indices);
}

int hr_ag_cummax_cummin(bool is_max, hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices)
{
    int rc = hr_cummax_cummin(is_max, t, dim, values, indices);
    return selection_with_grad(is_max ? "cummax" : "cummin", t, dim, true, rc, values, indices);
}

/* The median of every element: torch's evenly_distribute_backward shares the gradient among the
 * elements equal to the median (the NaNs, when the median is NaN). */
static int median_all_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const red_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, c->slot_x), *v = hr_node_saved(node, c->slot_out);
    if (!x || !v) return -1;
    bool v_nan = false;
    hr_tensor *vh = hr_host_contiguous(v);
    if (!vh) return -1;
    double vv = hr_load_f64(hr_tensor_data(vh), vh->dtype);
    hr_tensor_release(vh);
    v_nan = vv != vv;
    hr_tensor *mask = v_nan ? bin(HR_NE, x, x) : bin(HR_EQ, x, v);
    hr_tensor *count = mask ? hr_sum(mask, HR_DIM_ALL, false) : NULL;
    hr_tensor *share = bin(HR_DIV, g, count);
    hr_tensor *r = mask && share ? hr_where(mask, hr_operand_tensor(share), hr_operand_float(0.0)) : NULL;
    hr_tensor_release(mask);
    hr_tensor_release(count);
    hr_tensor_release(share);
    if (!r) return -1;
    gi[0] = r->dtype == c->dtype ? r : drop(r, hr_cast(r, c->dtype));
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_ag_median_all(hr_tensor *t)
{
    if (hr_tensor_check_live(t, "median")) return NULL;
    int64_t n = hr_tensor_numel(t);
    hr_tensor *flat = NULL, *v = NULL, *i = NULL;
    if (n == 0) {
        /* torch: NaN for an empty float tensor; integers have no such value */
        if (!hr_dtype_is_float(t->dtype))
            return hr_fail_null(HR_EINVAL, "median: the tensor is empty and %s has no NaN to return",
                                hr_dtype_name(t->dtype));
        v = hr_tensor_empty(0, NULL, t->dtype, hr_tensor_device(t));
        if (v && hr_fill_(v, NAN)) v = drop(v, NULL);
        return v;
    }
    int64_t len = n;
    if (!(flat = hr_reshape(t, 1, &len))) return NULL;
    int rc = hr_median_dim(flat, 0, &v, &i);
    hr_tensor_release(flat);
    hr_tensor_release(i);
    if (rc) return NULL;
    int64_t scalar_shape[1] = {1}; /* unread: a 0-dim shape has no sizes */
    hr_tensor *out = hr_reshape(v, 0, scalar_shape);
    hr_tensor_release(v);
    if (!wants_grad(t, out)) return out;
    hr_node *node = new_node("median", median_all_backward, t, NULL, -1, false);
    bool ok = node && (((red_ctx *)node->ctx)->slot_x = hr_node_save(node, t)) >= 0 &&
              (((red_ctx *)node->ctx)->slot_out = hr_node_save(node, out)) >= 0;
    return finish(node, out, ok);
}

