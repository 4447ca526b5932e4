/* ag_products.c — the gradients of prod and cumprod.
 *
 * Both are computed without dividing by the input, so zeros get their true gradients (the product
 * of the other elements), as PyTorch's: along the reduced dim, with E_k = x_0 ... x_{k-1} and
 * F_k = x_{k+1} ... x_{n-1},
 *   prod:     dx_k = g E_k F_k
 *   cumprod:  dx_k = E_k S_k, S_k = g_k + x_{k+1} S_{k+1} (S_{n-1} = g_{n-1}),
 * since dx_k = sum over i >= k of g_i E_k x_{k+1} ... x_i. Each row is one pass in double on the
 * host (a device tensor makes a round trip: these are not on any hot path). */
#include <stdlib.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_reduce.h"

typedef struct {
    int ndim;
    int64_t size[HR_MAX_DIMS];
    hr_dtype dtype;
    int dim;  /* the dim of the product, or -1 for every element */
    bool keepdim;
    int slot_x;
} product_ctx;

/* One row of n elements: out = the gradient of prod (cumulative = false, g[0] the row's upstream
 * gradient) or of cumprod (g the row's n upstream gradients). */
static void product_row(const double *x, const double *g, double *out, int64_t n, bool cumulative)
{
    if (n == 0) return;
    if (!cumulative) {
        double e = 1.0; /* E_k, then F_k on the way back */
        for (int64_t k = 0; k < n; k++) {
            out[k] = e;
            e *= x[k];
        }
        double f = 1.0;
        for (int64_t k = n - 1; k >= 0; k--) {
            out[k] *= f * g[0];
            f *= x[k];
        }
        return;
    }
    double e = 1.0;
    for (int64_t k = 0; k < n; k++) {
        out[k] = e;
        e *= x[k];
    }
    double s = g[n - 1];
    out[n - 1] *= s;
    for (int64_t k = n - 2; k >= 0; k--) {
        s = g[k] + x[k + 1] * s;
        out[k] *= s;
    }
}

/* t with dim moved last, in double, contiguous, in host memory (dim -1: t flattened). */
static hr_tensor *rows_on_host(hr_tensor *t, int dim)
{
    hr_tensor *moved;
    if (dim < 0 || t->ndim == 0) {
        int64_t flat[1] = {hr_tensor_numel(t)};
        moved = hr_reshape(t, 1, flat);
    } else {
        int perm[HR_MAX_DIMS], k = 0;
        for (int i = 0; i < t->ndim; i++)
            if (i != dim) perm[k++] = i;
        perm[k] = dim;
        moved = hr_view_permute(t, perm);
    }
    if (!moved) return NULL;
    hr_tensor *d = hr_cast(moved, HR_F64);
    hr_tensor_release(moved);
    if (!d) return NULL;
    hr_tensor *h = hr_host_contiguous(d);
    hr_tensor_release(d);
    return h;
}

static int products_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi, bool cumulative)
{
    const product_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, c->slot_x);
    if (!x) return -1;
    int dim = c->ndim == 0 ? -1 : c->dim;
    /* the upstream gradient with the input's dims (a reduced dim kept, of size 1) */
    hr_tensor *gk;
    if (cumulative || c->keepdim || c->ndim == 0) {
        gk = hr_view_alias((hr_tensor *)g);
    } else {
        int64_t kshape[HR_MAX_DIMS];
        for (int i = 0; i < c->ndim; i++) kshape[i] = (dim < 0 || i == dim) ? 1 : c->size[i];
        gk = hr_reshape((hr_tensor *)g, c->ndim, kshape);
    }
    if (!gk) return -1;
    hr_tensor *xh = rows_on_host(x, dim);
    hr_tensor *gh = xh ? rows_on_host(gk, cumulative ? dim : -1) : NULL;
    hr_tensor_release(gk);
    int64_t numel = hr_tensor_numel(x);
    int64_t n = dim < 0 ? numel : c->size[dim];
    int64_t rows = n > 0 ? numel / n : 0;
    hr_tensor *oh = gh ? hr_tensor_empty(xh->ndim, xh->size, HR_F64, hr_tensor_device(xh)) : NULL;
    if (!oh) {
        hr_tensor_release(xh);
        hr_tensor_release(gh);
        return -1;
    }
    const double *xv = hr_tensor_data(xh), *gv = hr_tensor_data(gh);
    double *ov = hr_tensor_data(oh);
    for (int64_t r = 0; r < rows; r++)
        product_row(xv + r * n, cumulative ? gv + r * n : gv + r, ov + r * n, n, cumulative);
    hr_tensor_release(xh);
    hr_tensor_release(gh);
    /* back to the input's dim order, dtype and device */
    hr_tensor *back;
    if (dim < 0) {
        back = hr_reshape(oh, c->ndim, c->size);
    } else {
        int64_t moved[HR_MAX_DIMS];
        int inverse[HR_MAX_DIMS], k = 0;
        for (int i = 0; i < c->ndim; i++)
            if (i != dim) {
                moved[k] = c->size[i];
                inverse[i] = k++;
            }
        moved[k] = c->size[dim];
        inverse[dim] = k;
        hr_tensor *shaped = hr_view_reshape_nocopy(oh, c->ndim, moved);
        back = shaped ? hr_view_permute(shaped, inverse) : NULL;
        hr_tensor_release(shaped);
    }
    hr_tensor_release(oh);
    if (!back) return -1;
    hr_tensor *out = hr_tensor_empty(c->ndim, c->size, c->dtype, hr_tensor_device(x));
    if (out && hr_copy_(out, back)) {
        hr_tensor_release(out);
        out = NULL;
    }
    hr_tensor_release(back);
    gi[0] = out;
    return out ? 0 : -1;
}

static int prod_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi) { return products_backward(node, g, gi, false); }
static int cumprod_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi) { return products_backward(node, g, gi, true); }

static hr_tensor *record(const char *op, hr_backward_fn bw, hr_tensor *t, hr_tensor *out, int dim, bool keepdim)
{
    if (!out || !hr_should_record(1, &t) || !hr_dtype_is_float(out->dtype)) return out;
    hr_node *node = hr_node_new(op, bw, 1, &t, sizeof(product_ctx));
    product_ctx *c = node ? node->ctx : NULL;
    if (c) {
        c->ndim = t->ndim;
        memcpy(c->size, t->size, sizeof c->size);
        c->dtype = t->dtype;
        c->dim = dim == HR_DIM_ALL ? -1 : (dim < 0 ? dim + t->ndim : dim);
        c->keepdim = keepdim;
        c->slot_x = hr_node_save(node, t);
    }
    if (!c || c->slot_x < 0) {
        hr_node_release(node);
        hr_tensor_release(out);
        return NULL;
    }
    hr_node_attach(node, out);
    return out;
}

hr_tensor *hr_ag_prod(hr_tensor *t, int dim, bool keepdim)
{
    return record("prod", prod_backward, t, hr_prod(t, dim, keepdim), dim, keepdim);
}

hr_tensor *hr_ag_cumprod(hr_tensor *t, int dim) { return record("cumprod", cumprod_backward, t, hr_cumprod(t, dim), dim, false); }
