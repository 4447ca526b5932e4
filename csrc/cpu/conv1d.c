/* cpu/conv1d.c — 1-D convolution (cross-correlation, as PyTorch) with zero padding and stride 1:
 * out[n, o, l] = sum_{c, k} w[o, c, k] * x[n, c, l + k - padding] (+ bias[o]).
 * HERO uses it with one channel and kernel 5 for the VSM start/end predictors; sizes are small,
 * so plain loops accumulating in double are both exact enough and fast enough. */
#include <stdlib.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_cuda.h"
#include "hr_nn.h"
#include "hr_pointwise.h"

typedef struct {
    int64_t n, cin, len, cout, k, pad, out_len;
    bool has_bias;
} conv_ctx;

static double at(const hr_tensor *t, int64_t i) { return hr_load_f64((const char *)hr_tensor_data(t) + (size_t)i * hr_dtype_size(t->dtype), t->dtype); }

static int conv_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const conv_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *w = hr_node_saved(node, 1);
    if (!x || !w) return -1;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    int rc = 0;
    bool need_x = hr_node_input_needs_grad(node, 0), need_w = hr_node_input_needs_grad(node, 1);
    bool need_b = c->has_bias && hr_node_input_needs_grad(node, 2);
    hr_tensor *gx = need_x ? hr_tensor_zeros(x->ndim, x->size, HR_F64, hr_cpu()) : NULL;
    hr_tensor *gw = need_w ? hr_tensor_zeros(w->ndim, w->size, HR_F64, hr_cpu()) : NULL;
    int64_t cout = c->cout;
    hr_tensor *gb = need_b ? hr_tensor_zeros(1, &cout, HR_F64, hr_cpu()) : NULL;
    if ((need_x && !gx) || (need_w && !gw) || (need_b && !gb)) rc = -1;
    if (rc == 0) {
        double *dx = gx ? hr_tensor_data(gx) : NULL, *dw = gw ? hr_tensor_data(gw) : NULL;
        double *db = gb ? hr_tensor_data(gb) : NULL;
        for (int64_t n = 0; n < c->n; n++)
            for (int64_t o = 0; o < c->cout; o++)
                for (int64_t l = 0; l < c->out_len; l++) {
                    double gv = at(g, (n * c->cout + o) * c->out_len + l);
                    if (db) db[o] += gv;
                    for (int64_t ci = 0; ci < c->cin; ci++)
                        for (int64_t k = 0; k < c->k; k++) {
                            int64_t src = l + k - c->pad;
                            if (src < 0 || src >= c->len) continue;
                            int64_t xi = (n * c->cin + ci) * c->len + src;
                            int64_t wi = (o * c->cin + ci) * c->k + k;
                            if (dx) dx[xi] += gv * at(w, wi);
                            if (dw) dw[wi] += gv * at(x, xi);
                        }
                }
        if (need_x && !(gi[0] = hr_cast(gx, x->dtype))) rc = -1;
        if (need_w && !(gi[1] = hr_cast(gw, w->dtype))) rc = -1;
        if (need_b && !(gi[2] = hr_cast(gb, w->dtype))) rc = -1;
    }
    hr_tensor_release(gx);
    hr_tensor_release(gw);
    hr_tensor_release(gb);
    hr_tensor_release(g);
    return rc;
}

/* On a GPU: composed of differentiable ops whose nodes give the gradients: zero padding by cat,
 * the K shifted windows stacked into columns [N, C_in * K, L_out], one batched product with the
 * weight [C_out, C_in * K], the bias broadcast over the length. */
static hr_tensor *conv1d_composed(hr_tensor *x, hr_tensor *w, hr_tensor *bias, int64_t padding, int64_t out_len)
{
    int64_t n = x->size[0], cin = x->size[1], cout = w->size[0], k = w->size[2];
    hr_tensor *padded = NULL, *stacked = NULL, *cols = NULL, *w2 = NULL, *y = NULL, *b3 = NULL, *out = NULL;
    hr_tensor **windows = calloc((size_t)k, sizeof *windows);
    if (!windows) return hr_fail_null(HR_ENOMEM, "conv1d: out of memory");
    if (padding > 0) {
        int64_t zsize[3] = {n, cin, padding};
        hr_tensor *z = hr_tensor_zeros(3, zsize, x->dtype, hr_tensor_device(x));
        hr_tensor *parts[3] = {z, x, z};
        padded = z ? hr_ag_cat(3, parts, 2) : NULL;
        hr_tensor_release(z);
    } else {
        hr_tensor_retain(x);
        padded = x;
    }
    int made = 0;
    while (padded && made < k) {
        windows[made] = hr_ag_narrow(padded, 2, made, out_len);
        if (!windows[made]) break;
        made++;
    }
    if (made == k) stacked = hr_ag_stack((int)k, windows, 2); /* [N, C_in, K, L_out] */
    int64_t csize[3] = {n, cin * k, out_len}, wsize[2] = {cout, cin * k};
    if (stacked) cols = hr_ag_reshape(stacked, 3, csize);
    if (cols) w2 = hr_ag_reshape(w, 2, wsize);
    if (w2) y = hr_ag_matmul(w2, cols); /* [N, C_out, L_out] */
    if (y && bias) {
        int64_t bsize[3] = {1, cout, 1};
        b3 = hr_ag_view(bias, 3, bsize);
        if (b3) out = hr_ag_binary(HR_ADD, hr_operand_tensor(y), hr_operand_tensor(b3), NULL);
    } else if (y) {
        hr_tensor_retain(y);
        out = y;
    }
    for (int i = 0; i < made; i++) hr_tensor_release(windows[i]);
    free(windows);
    hr_tensor_release(padded);
    hr_tensor_release(stacked);
    hr_tensor_release(cols);
    hr_tensor_release(w2);
    hr_tensor_release(y);
    hr_tensor_release(b3);
    return out;
}

hr_tensor *hr_conv1d(hr_tensor *x, hr_tensor *w, hr_tensor *bias, int64_t padding)
{
    char a[96], b[96];
    if (hr_tensor_check_live(x, "conv1d") || hr_tensor_check_live(w, "conv1d")) return NULL;
    if (bias && hr_tensor_check_live(bias, "conv1d")) return NULL;
    if (x->ndim != 3 || w->ndim != 3 || x->size[1] != w->size[1])
        return hr_fail_null(HR_EINVAL, "conv1d: input %s and weight %s do not match ([N, C_in, L] and [C_out, C_in, K])",
                            hr_tensor_desc(x, a, sizeof a), hr_tensor_desc(w, b, sizeof b));
    bool cuda = hr_tensor_device(x).type == HR_CUDA && hr_cuda_compiled();
    bool float_ok = x->dtype == HR_F32 || x->dtype == HR_F64 || (cuda && (x->dtype == HR_BF16 || x->dtype == HR_F16));
    if (x->dtype != w->dtype || !float_ok)
        return hr_fail_null(HR_EINVAL, "conv1d: input %s and weight %s must both be f32 or both f64",
                            hr_tensor_desc(x, a, sizeof a), hr_tensor_desc(w, b, sizeof b));
    if (bias && (bias->ndim != 1 || bias->size[0] != w->size[0] || bias->dtype != w->dtype))
        return hr_fail_null(HR_EINVAL, "conv1d: bias %s must be a %s vector of %lld", hr_tensor_desc(bias, a, sizeof a),
                            hr_dtype_name(w->dtype), (long long)w->size[0]);
    if (padding < 0) return hr_fail_null(HR_EINVAL, "conv1d: negative padding %lld", (long long)padding);
    /* (2^40 keeps the padded length's arithmetic far from overflowing) */
    if (padding > ((int64_t)1 << 40)) return hr_fail_null(HR_EINVAL, "conv1d: padding %lld is too large", (long long)padding);
    if (w->size[2] == 0) /* as PyTorch: a kernel of size 0 has nothing to slide */
        return hr_fail_null(HR_EINVAL, "conv1d: weight %s has a kernel of size 0", hr_tensor_desc(w, b, sizeof b));
    conv_ctx c = {x->size[0], x->size[1], x->size[2], w->size[0], w->size[2], padding, 0, bias != NULL};
    c.out_len = c.len + 2 * padding - c.k + 1;
    if (c.out_len < 1) /* as PyTorch: an error, not an empty output */
        return hr_fail_null(HR_EINVAL, "conv1d: kernel %lld is longer than the padded input (%lld)", (long long)c.k,
                            (long long)(c.len + 2 * padding));
    if (cuda || hr_gpu_formulations_on_cpu()) {
        if (!hr_device_eq(hr_tensor_device(x), hr_tensor_device(w)) ||
            (bias && !hr_device_eq(hr_tensor_device(x), hr_tensor_device(bias))))
            return hr_fail_null(HR_EDEVICE, "conv1d: input %s, weight %s and bias must be on one device",
                                hr_tensor_desc(x, a, sizeof a), hr_tensor_desc(w, b, sizeof b));
        return conv1d_composed(x, w, bias, padding, c.out_len);
    }
    if (hr_tensor_device(x).type != HR_CPU || hr_tensor_device(w).type != HR_CPU)
        return hr_fail_null(HR_EDEVICE, "conv1d: CUDA tensors need the CUDA backend, which this build lacks");
    hr_tensor *xc = hr_contiguous(x), *wc = hr_contiguous(w);
    int64_t size[3] = {c.n, c.cout, c.out_len};
    hr_tensor *y = (xc && wc) ? hr_tensor_empty(3, size, x->dtype, hr_cpu()) : NULL;
    if (y) {
        for (int64_t n = 0; n < c.n; n++)
            for (int64_t o = 0; o < c.cout; o++)
                for (int64_t l = 0; l < c.out_len; l++) {
                    double s = bias ? hr_load_f64((const char *)hr_tensor_data(bias) + (size_t)(o * bias->stride[0]) *
                                                                                          hr_dtype_size(bias->dtype),
                                                  bias->dtype)
                                    : 0.0;
                    for (int64_t ci = 0; ci < c.cin; ci++)
                        for (int64_t k = 0; k < c.k; k++) {
                            int64_t src = l + k - padding;
                            if (src < 0 || src >= c.len) continue;
                            s += at(wc, (o * c.cin + ci) * c.k + k) * at(xc, (n * c.cin + ci) * c.len + src);
                        }
                    hr_store_f64((char *)hr_tensor_data(y) + (size_t)((n * c.cout + o) * c.out_len + l) * hr_dtype_size(y->dtype),
                                 y->dtype, s);
                }
        hr_tensor *inputs[3] = {x, w, bias};
        if (hr_should_record(3, inputs)) {
            hr_node *node = hr_node_new("conv1d", conv_backward, 3, inputs, sizeof(conv_ctx));
            if (!node || hr_node_save(node, xc) < 0 || hr_node_save(node, wc) < 0) {
                hr_node_release(node);
                hr_tensor_release(y);
                y = NULL;
            } else {
                memcpy(node->ctx, &c, sizeof c);
                hr_node_attach(node, y);
            }
        }
    }
    hr_tensor_release(xc);
    hr_tensor_release(wc);
    return y;
}
