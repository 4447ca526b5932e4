/* cpu/losses.c — binary cross entropy with logits and mean squared error, each one node
 * (PyTorch semantics: optional per-element weight for BCE, reductions none/mean/sum). */
#include <math.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_cuda.h"
#include "hr_nn.h"
#include "hr_pointwise.h"
#include "hr_reduce.h"

typedef struct {
    hr_reduction reduction;
    int64_t n;
    bool has_weight;
    bool is_mse;
    hr_dtype dtype;
} loss_ctx;

static double at(const hr_tensor *t, int64_t i)
{
    return hr_load_f64((const char *)hr_tensor_data(t) + (size_t)i * hr_dtype_size(t->dtype), t->dtype);
}

static int loss_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const loss_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *y = hr_node_saved(node, 1);
    hr_tensor *w = c->has_weight ? hr_node_saved(node, 2) : NULL;
    if (!x || !y || (c->has_weight && !w)) return -1;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    bool need_x = hr_node_input_needs_grad(node, 0), need_y = hr_node_input_needs_grad(node, 1);
    hr_tensor *gx = need_x ? hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu()) : NULL;
    hr_tensor *gy = need_y ? hr_tensor_empty(y->ndim, y->size, y->dtype, hr_cpu()) : NULL;
    if ((need_x && !gx) || (need_y && !gy)) {
        hr_tensor_release(gx);
        hr_tensor_release(gy);
        hr_tensor_release(g);
        return -1;
    }
    double scale = c->reduction == HR_REDUCE_MEAN ? 1.0 / (double)(c->n ? c->n : 1) : 1.0;
    for (int64_t i = 0; i < c->n; i++) {
        double up = (c->reduction == HR_REDUCE_NONE ? at(g, i) : at(g, 0)) * scale;
        double xi = at(x, i), yi = at(y, i), wi = w ? at(w, i) : 1.0;
        double dx, dy;
        if (c->is_mse) {
            dx = 2.0 * (xi - yi) * up;
            dy = -dx;
        } else { /* d/dx [max(x,0) - x y + log(1 + e^-|x|)] = sigmoid(x) - y; d/dy = -x */
            dx = (1.0 / (1.0 + exp(-xi)) - yi) * wi * up;
            dy = -xi * wi * up;
        }
        if (gx) hr_store_f64((char *)hr_tensor_data(gx) + (size_t)i * hr_dtype_size(gx->dtype), gx->dtype, dx);
        if (gy) hr_store_f64((char *)hr_tensor_data(gy) + (size_t)i * hr_dtype_size(gy->dtype), gy->dtype, dy);
    }
    hr_tensor_release(g);
    gi[0] = gx;
    gi[1] = gy;
    return 0;
}

/* On a GPU: the same formulas composed of differentiable elementwise ops and a reduction. */
static hr_tensor *composed_loss(bool is_mse, hr_tensor *x, hr_tensor *y, hr_tensor *w, hr_reduction reduction)
{
    hr_tensor *l = NULL;
    if (is_mse) {
        hr_tensor *d = hr_ag_binary(HR_SUB, hr_operand_tensor(x), hr_operand_tensor(y), NULL);
        l = d ? hr_ag_binary(HR_MUL, hr_operand_tensor(d), hr_operand_tensor(d), NULL) : NULL;
        hr_tensor_release(d);
    } else {
        /* max(x, 0) - x y + log1p(exp(-|x|)), with max(x, 0) written (x + |x|) / 2 (the same value,
         * exactly): where x = 0 the gradients of relu and abs are 0, which would make the whole
         * gradient -y; this form gives 1/2 - y = sigmoid(0) - y, as the CPU kernel does */
        hr_operand half = hr_operand_float(0.5);
        hr_tensor *ax = hr_ag_unary(HR_ABS, x);
        hr_tensor *sum = ax ? hr_ag_binary(HR_ADD, hr_operand_tensor(x), hr_operand_tensor(ax), NULL) : NULL;
        hr_tensor *pos = sum ? hr_ag_binary(HR_MUL, hr_operand_tensor(sum), half, NULL) : NULL;
        hr_tensor *xy = pos ? hr_ag_binary(HR_MUL, hr_operand_tensor(x), hr_operand_tensor(y), NULL) : NULL;
        hr_tensor *nax = xy ? hr_ag_unary(HR_NEG, ax) : NULL;
        hr_tensor *e = nax ? hr_ag_unary(HR_EXP, nax) : NULL;
        hr_tensor *soft = e ? hr_ag_unary(HR_LOG1P, e) : NULL;
        hr_tensor *a = soft ? hr_ag_binary(HR_SUB, hr_operand_tensor(pos), hr_operand_tensor(xy), NULL) : NULL;
        l = a ? hr_ag_binary(HR_ADD, hr_operand_tensor(a), hr_operand_tensor(soft), NULL) : NULL;
        hr_tensor *parts[8] = {ax, sum, pos, xy, nax, e, soft, a};
        for (int i = 0; i < 8; i++) hr_tensor_release(parts[i]);
    }
    if (l && w) { /* the weight is a constant, as in the CPU node (no gradient flows to it) */
        hr_tensor *wd = hr_view_alias(w);
        hr_tensor *lw = wd ? hr_ag_binary(HR_MUL, hr_operand_tensor(l), hr_operand_tensor(wd), NULL) : NULL;
        hr_tensor_release(wd);
        hr_tensor_release(l);
        l = lw;
    }
    if (!l || reduction == HR_REDUCE_NONE) return l;
    hr_tensor *r = reduction == HR_REDUCE_MEAN ? hr_ag_mean(l, HR_DIM_ALL, false) : hr_ag_sum(l, HR_DIM_ALL, false);
    hr_tensor_release(l);
    return r;
}

static hr_tensor *elementwise_loss(const char *op, bool is_mse, hr_tensor *x, hr_tensor *y, hr_tensor *w,
                                   hr_reduction reduction)
{
    char a[96], b[96];
    if (hr_tensor_check_live(x, op) || hr_tensor_check_live(y, op) || (w && hr_tensor_check_live(w, op))) return NULL;
    if (x->ndim != y->ndim || memcmp(x->size, y->size, sizeof(int64_t) * (size_t)x->ndim) != 0)
        return hr_fail_null(HR_EINVAL, "%s: input %s and target %s must have the same shape", op,
                            hr_tensor_desc(x, a, sizeof a), hr_tensor_desc(y, b, sizeof b));
    if (w && (w->ndim != x->ndim || memcmp(w->size, x->size, sizeof(int64_t) * (size_t)x->ndim) != 0))
        return hr_fail_null(HR_EINVAL, "%s: weight %s must have the input's shape", op, hr_tensor_desc(w, a, sizeof a));
    if (!hr_dtype_is_float(x->dtype) || !hr_dtype_is_float(y->dtype))
        return hr_fail_null(HR_EINVAL, "%s: input and target must be floating point, got %s and %s", op,
                            hr_dtype_name(x->dtype), hr_dtype_name(y->dtype));
    if ((hr_tensor_device(x).type == HR_CUDA && hr_cuda_compiled()) || hr_gpu_formulations_on_cpu()) {
        if (!hr_device_eq(hr_tensor_device(x), hr_tensor_device(y)) ||
            (w && !hr_device_eq(hr_tensor_device(x), hr_tensor_device(w))))
            return hr_fail_null(HR_EDEVICE, "%s: input %s, target %s and weight must be on one device", op,
                                hr_tensor_desc(x, a, sizeof a), hr_tensor_desc(y, b, sizeof b));
        return composed_loss(is_mse, x, y, w, reduction);
    }
    if (hr_tensor_device(x).type != HR_CPU || hr_tensor_device(y).type != HR_CPU)
        return hr_fail_null(HR_EDEVICE, "%s: CUDA tensors need the CUDA backend, which this build lacks", op);
    hr_tensor *xc = hr_contiguous(x), *yc = hr_contiguous(y), *wc = w ? hr_contiguous(w) : NULL;
    int64_t n = hr_tensor_numel(x);
    hr_tensor *out = NULL;
    if (xc && yc && (!w || wc)) {
        out = reduction == HR_REDUCE_NONE ? hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu())
                                          : hr_tensor_empty(0, NULL, x->dtype, hr_cpu());
    }
    if (out) {
        double total = 0;
        for (int64_t i = 0; i < n; i++) {
            double xi = at(xc, i), yi = at(yc, i), l;
            if (is_mse) l = (xi - yi) * (xi - yi);
            else l = (xi > 0 ? xi : 0) - xi * yi + log1p(exp(-fabs(xi)));
            if (wc) l *= at(wc, i);
            if (reduction == HR_REDUCE_NONE)
                hr_store_f64((char *)hr_tensor_data(out) + (size_t)i * hr_dtype_size(out->dtype), out->dtype, l);
            total += l;
        }
        if (reduction != HR_REDUCE_NONE)
            hr_store_f64(hr_tensor_data(out), out->dtype, reduction == HR_REDUCE_MEAN ? total / (double)n : total);
        hr_tensor *inputs[2] = {x, y};
        if (hr_should_record(2, inputs)) {
            hr_node *node = hr_node_new(op, loss_backward, 2, inputs, sizeof(loss_ctx));
            if (!node || hr_node_save(node, xc) < 0 || hr_node_save(node, yc) < 0 || (wc && hr_node_save(node, wc) < 0)) {
                hr_node_release(node);
                hr_tensor_release(out);
                out = NULL;
            } else {
                loss_ctx *c = node->ctx;
                c->reduction = reduction;
                c->n = n;
                c->has_weight = wc != NULL;
                c->is_mse = is_mse;
                c->dtype = x->dtype;
                hr_node_attach(node, out);
            }
        }
    }
    hr_tensor_release(xc);
    hr_tensor_release(yc);
    hr_tensor_release(wc);
    return out;
}

hr_tensor *hr_bce_with_logits(hr_tensor *x, hr_tensor *y, hr_tensor *weight, hr_reduction reduction)
{
    return elementwise_loss("binary_cross_entropy_with_logits", false, x, y, weight, reduction);
}

hr_tensor *hr_mse_loss(hr_tensor *x, hr_tensor *y, hr_reduction reduction)
{
    return elementwise_loss("mse_loss", true, x, y, NULL, reduction);
}
