/* ag_linalg.c — differentiable wrappers of the matrix products (hr_linalg.h).
 * For c = a @ b: da = g @ bᵀ and db = aᵀ @ g, with 1-D operands promoted to matrices and batch
 * broadcasting undone by summing (hr_sum_to_size). Transposes are views: BLAS reads them in place. */
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_linalg.h"
#include "hr_pointwise.h"

typedef struct {
    int ndim[3];
    int64_t size[3][HR_MAX_DIMS];
    hr_dtype dtype[3];
    double alpha, beta;
} mm_ctx;

static hr_tensor *drop(hr_tensor *x, hr_tensor *r)
{
    hr_tensor_release(x);
    return r;
}

static hr_tensor *tr(hr_tensor *t) { return t ? hr_view_transpose(t, t->ndim - 2, t->ndim - 1) : NULL; }

/* a 1-D operand as a matrix: a [K] -> [1, K] (left), b [K] -> [K, 1] (right) */
static hr_tensor *as_matrix(hr_tensor *t, bool left)
{
    if (t->ndim != 1) return hr_view_alias(t);
    return hr_view_unsqueeze(t, left ? 0 : 1);
}

/* Gradient g of a @ b reshaped to the promoted (matrix) result shape. */
static hr_tensor *promoted_grad(const hr_tensor *g, const hr_tensor *a2, const hr_tensor *b2)
{
    int nd = a2->ndim > b2->ndim ? a2->ndim : b2->ndim;
    int64_t shape[HR_MAX_DIMS];
    int nb;
    int64_t batch[HR_MAX_DIMS];
    if (hr_broadcast_shape("matmul backward", a2->ndim - 2, a2->size, b2->ndim - 2, b2->size, &nb, batch)) return NULL;
    memcpy(shape, batch, sizeof(int64_t) * (size_t)nb);
    shape[nb] = a2->size[a2->ndim - 2];
    shape[nb + 1] = b2->size[b2->ndim - 1];
    (void)nd;
    hr_tensor *gc = hr_contiguous((hr_tensor *)g);
    if (!gc) return NULL;
    return drop(gc, hr_view_reshape_nocopy(gc, nb + 2, shape));
}

static hr_tensor *scale(hr_tensor *t, double s)
{
    if (!t || s == 1.0) return t;
    return drop(t, hr_binary(HR_MUL, hr_operand_tensor(t), hr_operand_float(s), NULL));
}

/* Sums to the input's shape, casts to its dtype; consumes t (a product's fresh result: already of
 * that shape and dtype, it is returned as it is, where hr_sum_to_size would copy it). */
static hr_tensor *fit(hr_tensor *t, int ndim, const int64_t *size, hr_dtype dt)
{
    if (!t) return NULL;
    if (t->ndim == ndim && memcmp(t->size, size, sizeof(int64_t) * (size_t)ndim) == 0 && t->dtype == dt) return t;
    hr_tensor *s = hr_sum_to_size(t, ndim, size);
    hr_tensor_release(t);
    if (!s || s->dtype == dt) return s;
    return drop(s, hr_cast(s, dt));
}

/* Gradients of alpha * (a @ b) into gi[ia], gi[ib]. */
static int product_grads(hr_node *node, const hr_tensor *g, hr_tensor **gi, int ia, int ib, hr_tensor *a,
                         hr_tensor *b, double alpha)
{
    const mm_ctx *c = node->ctx;
    hr_tensor *a2 = as_matrix(a, true), *b2 = as_matrix(b, false);
    hr_tensor *g2 = (a2 && b2) ? promoted_grad(g, a2, b2) : NULL;
    int rc = g2 ? 0 : -1;
    if (rc == 0 && hr_node_input_needs_grad(node, ia)) {
        hr_tensor *bt = tr(b2);
        hr_tensor *ga = bt ? hr_matmul(g2, bt) : NULL;
        hr_tensor_release(bt);
        ga = scale(ga, alpha);
        /* back to a's promoted shape, then a's own shape */
        ga = fit(ga, a2->ndim, a2->size, c->dtype[ia]);
        if (ga && a->ndim == 1) ga = drop(ga, hr_reshape(ga, 1, a->size));
        if (!(gi[ia] = ga)) rc = -1;
    }
    if (rc == 0 && hr_node_input_needs_grad(node, ib)) {
        hr_tensor *at = tr(a2);
        hr_tensor *gb = at ? hr_matmul(at, g2) : NULL;
        hr_tensor_release(at);
        gb = scale(gb, alpha);
        gb = fit(gb, b2->ndim, b2->size, c->dtype[ib]);
        if (gb && b->ndim == 1) gb = drop(gb, hr_reshape(gb, 1, b->size));
        if (!(gi[ib] = gb)) rc = -1;
    }
    hr_tensor_release(a2);
    hr_tensor_release(b2);
    hr_tensor_release(g2);
    return rc;
}

static int matmul_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    hr_tensor *a = hr_node_saved(node, 0), *b = hr_node_saved(node, 1);
    if (!a || !b) return -1;
    return product_grads(node, g, gi, 0, 1, a, b, 1.0);
}

static mm_ctx *remember(hr_node *node, int k, const hr_tensor *t)
{
    mm_ctx *c = node->ctx;
    c->ndim[k] = t->ndim;
    memcpy(c->size[k], t->size, sizeof c->size[k]);
    c->dtype[k] = t->dtype;
    return c;
}

static hr_tensor *record_product(const char *op, hr_tensor *out, hr_tensor *a, hr_tensor *b)
{
    hr_tensor *inputs[2] = {a, b};
    if (!out || !hr_should_record(2, inputs) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new(op, matmul_backward, 2, inputs, sizeof(mm_ctx));
    if (!node || hr_node_save(node, a) < 0 || hr_node_save(node, b) < 0) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    remember(node, 0, a);
    remember(node, 1, b);
    hr_node_attach(node, out);
    return out;
}

hr_tensor *hr_ag_matmul(hr_tensor *a, hr_tensor *b) { return record_product("matmul", hr_matmul(a, b), a, b); }
hr_tensor *hr_ag_mm(hr_tensor *a, hr_tensor *b) { return record_product("mm", hr_mm(a, b), a, b); }
hr_tensor *hr_ag_bmm(hr_tensor *a, hr_tensor *b) { return record_product("bmm", hr_bmm(a, b), a, b); }
hr_tensor *hr_ag_dot(hr_tensor *a, hr_tensor *b) { return record_product("dot", hr_dot(a, b), a, b); }
hr_tensor *hr_ag_mv(hr_tensor *a, hr_tensor *b) { return record_product("mv", hr_mv(a, b), a, b); }

/* ------------------------------------------------------------------ addmm / baddbmm */

static int addmm_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const mm_ctx *c = node->ctx;
    if (hr_node_input_needs_grad(node, 0)) {
        hr_tensor *gc = scale(hr_cast(g, g->dtype), c->beta);
        if (!(gi[0] = fit(gc, c->ndim[0], c->size[0], c->dtype[0]))) return -1;
    }
    if (hr_node_input_needs_grad(node, 1) || hr_node_input_needs_grad(node, 2)) {
        hr_tensor *a = hr_node_saved(node, 0), *b = hr_node_saved(node, 1);
        if (!a || !b) return -1;
        return product_grads(node, g, gi, 1, 2, a, b, c->alpha);
    }
    return 0;
}

static hr_tensor *record_add_product(const char *op, hr_tensor *out, hr_tensor *cin, hr_tensor *a, hr_tensor *b,
                                     double beta, double alpha)
{
    hr_tensor *inputs[3] = {cin, a, b};
    if (!out || !hr_should_record(3, inputs) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new(op, addmm_backward, 3, inputs, sizeof(mm_ctx));
    if (!node || hr_node_save(node, a) < 0 || hr_node_save(node, b) < 0) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    mm_ctx *c = remember(node, 0, cin);
    remember(node, 1, a);
    remember(node, 2, b);
    c->alpha = alpha;
    c->beta = beta;
    hr_node_attach(node, out);
    return out;
}

hr_tensor *hr_ag_addmm(hr_tensor *cin, hr_tensor *a, hr_tensor *b, double beta, double alpha)
{
    return record_add_product("addmm", hr_addmm(cin, a, b, beta, alpha), cin, a, b, beta, alpha);
}

hr_tensor *hr_ag_baddbmm(hr_tensor *cin, hr_tensor *a, hr_tensor *b, double beta, double alpha)
{
    return record_add_product("baddbmm", hr_baddbmm(cin, a, b, beta, alpha), cin, a, b, beta, alpha);
}

/* ------------------------------------------------------------------ linear */

/* Whether the weight gradient gᵀ @ x can be added straight into the leaf's existing .grad: the
 * weight is a leaf that already holds a contiguous gradient of the product's dtype, on the CPU
 * (on a GPU an in-place product goes through a temporary and two copies: no gain there). */
static bool weight_grad_in_place(const hr_tensor *leaf, const hr_tensor *g2t)
{
    const hr_tensor *grad = leaf ? leaf->grad : NULL;
    return grad && grad->dtype == leaf->dtype && grad->dtype == g2t->dtype && hr_tensor_is_contiguous(grad) &&
           hr_tensor_device(grad).type == HR_CPU && hr_tensor_device(g2t).type == HR_CPU && grad->ndim == 2 &&
           grad->size[0] == g2t->size[0];
}

/* y = x @ wᵀ + bias: dx = g @ w, dw = gᵀ @ x over all leading dims, dbias = sum of g. */
static int linear_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const mm_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *w = hr_node_saved(node, 1);
    if (!x || !w) return -1;
    int64_t out_f = w->size[0], in_f = w->size[1];
    hr_tensor *gc = hr_contiguous((hr_tensor *)g);
    if (!gc) return -1;
    int rc = 0;
    if (hr_node_input_needs_grad(node, 0)) {
        hr_tensor *gx = hr_matmul(gc, w);
        if (gx && gx->dtype != c->dtype[0]) gx = drop(gx, hr_cast(gx, c->dtype[0]));
        if (!(gi[0] = gx)) rc = -1;
    }
    if (rc == 0 && hr_node_input_needs_grad(node, 1)) {
        int64_t g2s[2] = {-1, out_f}, x2s[2] = {-1, in_f};
        hr_tensor *g2 = hr_reshape(gc, 2, g2s);
        hr_tensor *x2 = hr_reshape(x, 2, x2s);
        hr_tensor *g2t = tr(g2);
        hr_tensor *leaf = node->next[1].leaf;
        if (g2t && x2 && weight_grad_in_place(leaf, g2t)) {
            /* a later micro-batch: the product adds into the gradient the leaf already holds,
             * instead of a fresh weight-sized buffer and a second pass to add it */
            hr_tensor *r = hr_addmm_(leaf->grad, g2t, x2, 1.0, 1.0);
            if (r) gi[1] = HR_GRAD_HANDLED;
            else rc = -1;
            hr_tensor_release(r);
        } else {
            hr_tensor *gw = (g2t && x2) ? hr_matmul(g2t, x2) : NULL;
            if (gw && gw->dtype != c->dtype[1]) gw = drop(gw, hr_cast(gw, c->dtype[1]));
            if (!(gi[1] = gw)) rc = -1;
        }
        hr_tensor_release(g2);
        hr_tensor_release(x2);
        hr_tensor_release(g2t);
    }
    if (rc == 0 && hr_node_input_needs_grad(node, 2)) {
        hr_tensor *gb = hr_sum_to_size(gc, 1, &out_f);
        if (gb && gb->dtype != c->dtype[2]) gb = drop(gb, hr_cast(gb, c->dtype[2]));
        if (!(gi[2] = gb)) rc = -1;
    }
    hr_tensor_release(gc);
    return rc;
}

hr_tensor *hr_ag_linear(hr_tensor *x, hr_tensor *w, hr_tensor *bias)
{
    hr_tensor *out = hr_linear(x, w, bias);
    hr_tensor *inputs[3] = {x, w, bias};
    if (!out || !hr_should_record(3, inputs) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new("linear", linear_backward, 3, inputs, sizeof(mm_ctx));
    if (!node || hr_node_save(node, x) < 0 || hr_node_save(node, w) < 0) {
        hr_node_release(node);
        return drop(out, NULL);
    }
    remember(node, 0, x);
    remember(node, 1, w);
    if (bias) remember(node, 2, bias);
    hr_node_attach(node, out);
    return out;
}
