/* cpu/add_layernorm.c — layer_norm(dropout(x) + residual) as one node: the end of BERT's attention
 * and feed-forward blocks (the sublayer's projection x dropped out, added to the block's input and
 * normalised). The numbers, the draws and the generator's advance are those of dropout, add and
 * layer_norm one after another (their own passes, cpu/dropout.c and cpu/layernorm.c, do the
 * work); what the fusion saves is the dropout's output and two nodes: the forward writes the sum
 * once, and the backward hands the layer norm's input gradient to the residual as it is and to x
 * through the mask drawn again. On a GPU (cuda/nn.cu) it saves a pass over the activations each
 * way, and the cast of the sum's gradient to a half x's dtype. */
#include "cpu/hr_dropout.h"
#include "cpu/hr_layernorm.h"
#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_nn.h"

typedef struct {
    hr_drop_counters drop;
    bool dropped; /* the mask applies (training with p > 0); else y = layer_norm(x + residual) */
    bool has_weight, has_bias;
} addln_ctx;

typedef struct {
    const float *a, *b;
    float *out;
} sum_job;

static void sum_range(void *arg, int64_t begin, int64_t end)
{
    const sum_job *j = arg;
    for (int64_t i = begin; i < end; i++) j->out[i] = j->a[i] + j->b[i];
}

/* Saved: the sum (the layer norm's input), its rows' mean and 1/std, and the weight. */
static int addln_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const addln_ctx *c = node->ctx;
    hr_tensor *s = hr_node_saved(node, 0), *mean = hr_node_saved(node, 1), *rstd = hr_node_saved(node, 2);
    hr_tensor *w = c->has_weight ? hr_node_saved(node, 3) : NULL;
    if (!s || !mean || !rstd || (c->has_weight && !w)) return -1;
    bool need_x = hr_node_input_needs_grad(node, 0), need_r = hr_node_input_needs_grad(node, 1);
    hr_tensor *out[3] = {NULL, NULL, NULL};
    if (hr_ln_cpu_backward(s, mean, rstd, w, grad, need_x || need_r, c->has_weight && hr_node_input_needs_grad(node, 2),
                           c->has_bias && hr_node_input_needs_grad(node, 3), out)) {
        for (int k = 0; k < 3; k++) hr_tensor_release(out[k]);
        return -1;
    }
    hr_tensor *ds = out[0]; /* the sum's gradient: the residual's as it is */
    gi[2] = out[1];
    gi[3] = out[2];
    int rc = 0;
    if (need_x && c->dropped) {
        gi[0] = hr_tensor_empty(ds->ndim, ds->size, HR_F32, hr_cpu());
        if (!gi[0]) rc = -1;
        else hr_drop_apply_f32(&c->drop, hr_tensor_data(ds), NULL, hr_tensor_data(gi[0]), hr_tensor_numel(ds));
    } else if (need_x) { /* the add's two gradients are two tensors, as the add's backward makes them */
        if (!(gi[0] = need_r ? hr_cast(ds, HR_F32) : ds)) rc = -1;
        if (!need_r) hr_tensor_retain(ds);
    }
    if (need_r) {
        gi[1] = ds;
        hr_tensor_retain(ds);
    }
    hr_tensor_release(ds);
    return rc;
}

static hr_tensor *addln_cpu(struct hr_generator *g, hr_tensor *x, hr_tensor *residual, hr_tensor *weight,
                            hr_tensor *bias, double eps, double p, bool dropped)
{
    hr_tensor *xc = hr_contiguous(x), *rc = hr_contiguous(residual);
    hr_tensor *wc = weight ? hr_contiguous(weight) : NULL, *bc = bias ? hr_contiguous(bias) : NULL;
    hr_tensor *s = xc && rc && (!weight || wc) && (!bias || bc) ? hr_tensor_empty(x->ndim, x->size, HR_F32, hr_cpu())
                                                              : NULL;
    hr_tensor *mean = NULL, *rstd = NULL, *y = NULL;
    addln_ctx c = {.dropped = dropped, .has_weight = weight != NULL, .has_bias = bias != NULL};
    if (s) {
        int64_t n = hr_tensor_numel(s);
        if (dropped) {
            hr_drop_counters_draw(g, n, p, &c.drop);
            hr_drop_apply_f32(&c.drop, hr_tensor_data(xc), hr_tensor_data(rc), hr_tensor_data(s), n);
        } else {
            sum_job j = {hr_tensor_data(xc), hr_tensor_data(rc), hr_tensor_data(s)};
            hr_parallel_for(n, 1 << 15, sum_range, &j);
        }
        y = hr_ln_cpu_forward(s, wc, bc, eps, &mean, &rstd);
    }
    hr_tensor *inputs[4] = {x, residual, weight, bias};
    if (y && hr_should_record(4, inputs)) {
        hr_node *node = hr_node_new("dropout_add_layer_norm", addln_backward, 4, inputs, sizeof c);
        if (!node || hr_node_save(node, s) < 0 || hr_node_save(node, mean) < 0 || hr_node_save(node, rstd) < 0 ||
            (wc && hr_node_save(node, wc) < 0)) {
            hr_node_release(node);
            hr_tensor_release(y);
            y = NULL;
        } else {
            *(addln_ctx *)node->ctx = c;
            hr_node_attach(node, y);
        }
    }
    hr_tensor_release(xc);
    hr_tensor_release(rc);
    hr_tensor_release(wc);
    hr_tensor_release(bc);
    hr_tensor_release(s);
    hr_tensor_release(mean);
    hr_tensor_release(rstd);
    return y;
}

/* Why the inputs do not take the fused node (NULL when they do): a description for errors. */
static const char *unfused_reason(const hr_tensor *x, const hr_tensor *residual, const hr_tensor *weight,
                                  const hr_tensor *bias, double p, bool training)
{
    bool gpu = hr_tensor_device(x).type == HR_CUDA;
    bool half = x->dtype == HR_BF16 || x->dtype == HR_F16;
    if (x->dtype != HR_F32 && !(gpu && half)) return "x must be f32 (or bf16/f16 on a GPU)";
    if (residual->dtype != HR_F32) return "the residual must be f32";
    hr_device dev = hr_tensor_device(x);
    if (!hr_device_eq(dev, hr_tensor_device(residual)) || (weight && !hr_device_eq(dev, hr_tensor_device(weight))) ||
        (bias && !hr_device_eq(dev, hr_tensor_device(bias))))
        return "x, the residual, weight and bias must be on one device";
    if (x->ndim < 1 || x->ndim != residual->ndim) return "x and the residual must have the same shape";
    for (int d = 0; d < x->ndim; d++)
        if (x->size[d] != residual->size[d]) return "x and the residual must have the same shape";
    if (training && p >= 1) return "p must be below 1";
    return NULL;
}

bool hr_dropout_add_layer_norm_fuses(const hr_tensor *x, const hr_tensor *residual, const hr_tensor *weight,
                                     const hr_tensor *bias, double p, bool training)
{
    return unfused_reason(x, residual, weight, bias, p, training) == NULL &&
           (!weight || weight->dtype == HR_F32) && (!bias || bias->dtype == HR_F32);
}

hr_tensor *hr_dropout_add_layer_norm(struct hr_generator *g, hr_tensor *x, hr_tensor *residual, hr_tensor *weight,
                                     hr_tensor *bias, double eps, double p, bool training)
{
    static const char op[] = "dropout_add_layer_norm";
    if (hr_tensor_check_live(x, op) || hr_tensor_check_live(residual, op)) return NULL;
    if (!(p >= 0 && p <= 1)) return hr_fail_null(HR_EINVAL, "%s: probability must be in [0, 1], got %g", op, p);
    if (!(eps >= 0)) return hr_fail_null(HR_EINVAL, "%s: eps must be >= 0, got %g", op, eps);
    if ((weight && hr_tensor_check_live(weight, op)) || (bias && hr_tensor_check_live(bias, op))) return NULL;
    const char *why = unfused_reason(x, residual, weight, bias, p, training);
    if (why) {
        char a[96], b[96];
        return hr_fail_null(HR_EINVAL, "%s: %s (x %s, residual %s)", op, why, hr_tensor_desc(x, a, sizeof a),
                            hr_tensor_desc(residual, b, sizeof b));
    }
    if (hr_ln_check_params(x, weight, bias, HR_F32, op)) return NULL;
    bool dropped = training && p > 0;
    if (hr_tensor_device(x).type == HR_CUDA)
        return hr_cuda_dropout_add_layer_norm(g, x, residual, weight, bias, eps, p, dropped);
    return addln_cpu(g, x, residual, weight, bias, eps, p, dropped);
}
