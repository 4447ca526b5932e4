/* cpu/gelu.c — the erf form of GELU as one node: y = 0.5 x (1 + erf(x / sqrt 2)),
 * dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x * exp(-x^2 / 2) / sqrt(2 pi). */
#include <math.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_cuda.h"
#include "hr_nn.h"
#include "hr_pointwise.h"
#include "hr_erf.h"

typedef struct {
    const void *x, *g;
    void *y;
    hr_dtype dt;
} gelu_job;

static void gelu_forward_range(void *arg, int64_t begin, int64_t end)
{
    const gelu_job *j = arg;
    if (j->dt == HR_F32) {
        /* HR_VW lanes at a time with the vector erf; the tail is padded into one more vector
         * (lanes are independent, so a value does not depend on where a thread's chunk starts) */
        const float *x = j->x;
        float *y = j->y;
        for (int64_t i = begin; i < end; i += HR_VW) {
            size_t bytes = (size_t)(end - i < HR_VW ? end - i : HR_VW) * sizeof(float);
            hr_vwf v = hr_vwf_splat(0.0f);
            if (bytes == sizeof v) memcpy(&v, x + i, sizeof v); /* fixed size: one vector load */
            else memcpy(&v, x + i, bytes);
            hr_vwf r = 0.5f * v * (1.0f + hr_erf_vwf(v * (float)M_SQRT1_2));
            if (bytes == sizeof r) memcpy(y + i, &r, sizeof r);
            else memcpy(y + i, &r, bytes);
        }
    } else {
        const double *x = j->x;
        double *y = j->y;
        for (int64_t i = begin; i < end; i++) y[i] = 0.5 * x[i] * (1.0 + erf(x[i] * M_SQRT1_2));
    }
}

static void gelu_backward_range(void *arg, int64_t begin, int64_t end)
{
    const gelu_job *j = arg;
    const double inv_sqrt_2pi = 0.3989422804014327;
    if (j->dt == HR_F32) {
        /* e^(-x^2/2) = e^(-z^2) with z = x / sqrt 2 comes out of the erf for free */
        const float *x = j->x, *g = j->g;
        float *y = j->y;
        for (int64_t i = begin; i < end; i += HR_VW) {
            size_t bytes = (size_t)(end - i < HR_VW ? end - i : HR_VW) * sizeof(float);
            hr_vwf v = hr_vwf_splat(0.0f), gv = hr_vwf_splat(0.0f), e;
            if (bytes == sizeof v) {
                memcpy(&v, x + i, sizeof v);
                memcpy(&gv, g + i, sizeof gv);
            } else {
                memcpy(&v, x + i, bytes);
                memcpy(&gv, g + i, bytes);
            }
            hr_vwf cdf = 0.5f * (1.0f + hr_erf_exp_vwf(v * (float)M_SQRT1_2, &e));
            hr_vwf r = gv * (cdf + v * ((float)inv_sqrt_2pi * e));
            if (bytes == sizeof r) memcpy(y + i, &r, sizeof r);
            else memcpy(y + i, &r, bytes);
        }
    } else {
        const double *x = j->x, *g = j->g;
        double *y = j->y;
        for (int64_t i = begin; i < end; i++) {
            double cdf = 0.5 * (1.0 + erf(x[i] * M_SQRT1_2));
            double pdf = inv_sqrt_2pi * exp(-0.5 * x[i] * x[i]);
            y[i] = g[i] * (cdf + x[i] * pdf);
        }
    }
}

static int gelu_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    hr_tensor *x = hr_node_saved(node, 0);
    if (!x) return -1;
    /* a half x (autocast on a GPU) reads the gradient at its own precision, as the f32 formula
     * between two casts would */
    bool half = x->dtype == HR_BF16 || x->dtype == HR_F16;
    hr_tensor *g = half ? hr_contiguous((hr_tensor *)grad) : hr_readable_as(grad, x->dtype);
    if (!g) return -1;
    gi[0] = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_tensor_device(x));
    if (gi[0] && hr_tensor_device(x).type == HR_CUDA) {
        if (hr_cuda_gelu_backward(x, g, gi[0])) {
            hr_tensor_release(gi[0]);
            gi[0] = NULL;
        }
    } else if (gi[0] && half) {
        /* the CPU kernels are f32/f64: the f32 gradient of f32 copies, rounded once into x's dtype */
        hr_tensor_release(gi[0]);
        gi[0] = NULL;
        hr_tensor *xf = hr_cast(x, HR_F32), *gf = hr_cast(g, HR_F32);
        hr_tensor *r = xf && gf ? hr_tensor_empty(x->ndim, x->size, HR_F32, hr_cpu()) : NULL;
        if (r) {
            gelu_job j = {hr_tensor_data(xf), hr_tensor_data(gf), hr_tensor_data(r), HR_F32};
            hr_parallel_for(hr_tensor_numel(x), 1 << 14, gelu_backward_range, &j);
            gi[0] = hr_cast(r, x->dtype);
        }
        hr_tensor_release(xf);
        hr_tensor_release(gf);
        hr_tensor_release(r);
    } else if (gi[0]) {
        gelu_job j = {hr_tensor_data(x), hr_tensor_data(g), hr_tensor_data(gi[0]), x->dtype};
        hr_parallel_for(hr_tensor_numel(x), 1 << 14, gelu_backward_range, &j);
    }
    hr_tensor_release(g);
    return gi[0] ? 0 : -1;
}

/* Puts y's autograd node on the tape when x needs one; the node keeps xc (contiguous x) for its
 * backward. Returns y, or NULL (y released) when the node cannot be made. */
static hr_tensor *record_pointwise_node(hr_tensor *y, const char *op, hr_backward_fn backward, hr_tensor *x,
                                        hr_tensor *xc)
{
    if (!hr_should_record(1, &x)) return y;
    hr_node *node = hr_node_new(op, backward, 1, &x, 0);
    if (!node || hr_node_save(node, xc) < 0) {
        hr_node_release(node);
        hr_tensor_release(y);
        return NULL;
    }
    hr_node_attach(node, y);
    return y;
}

hr_tensor *hr_gelu(hr_tensor *x)
{
    if (hr_tensor_check_live(x, "gelu")) return NULL;
    if (x->dtype != HR_F32 && x->dtype != HR_F64) {
        bool half = x->dtype == HR_BF16 || x->dtype == HR_F16;
        if (half && hr_should_record(1, &x)) {
            /* computed in f32 and rounded once, forward and backward (what f32 GELU between two
             * casts gives, without the f32 copies on a GPU: autocast's case), as torch's CPU
             * kernels allow for bf16 */
            if (hr_tensor_device(x).type == HR_CUDA && !hr_cuda_compiled()) return hr_cuda_unsupported_null("gelu", x);
            hr_tensor *xc = hr_contiguous(x);
            hr_tensor *y = xc ? hr_unary(HR_GELU, xc) : NULL;
            if (y) y = record_pointwise_node(y, "gelu", gelu_backward, x, xc);
            hr_tensor_release(xc);
            return y;
        }
        /* halfs and integers: the plain elementwise kernel (no gradient: integers cannot require one) */
        return hr_unary(HR_GELU, x);
    }
    bool cuda = hr_tensor_device(x).type == HR_CUDA;
    if (cuda && !hr_cuda_compiled()) return hr_cuda_unsupported_null("gelu", x);
    hr_tensor *xc = hr_contiguous(x);
    if (!xc) return NULL;
    /* on a GPU the elementwise kernel computes the same formula */
    hr_tensor *y = cuda ? hr_unary(HR_GELU, xc) : hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu());
    if (y) {
        gelu_job j = {hr_tensor_data(xc), NULL, hr_tensor_data(y), x->dtype};
        if (!cuda) hr_parallel_for(hr_tensor_numel(x), 1 << 14, gelu_forward_range, &j);
        y = record_pointwise_node(y, "gelu", gelu_backward, x, xc);
    }
    hr_tensor_release(xc);
    return y;
}

/* erf itself, on the same vector code (the GELU kernels inline it). */
typedef enum { ERF_VALUE, ERF_GRAD } erf_mode;

typedef struct {
    const void *x, *g;
    void *y;
    hr_dtype dt;
    erf_mode mode;
} erf_job;

static void erf_range(void *arg, int64_t begin, int64_t end)
{
    const erf_job *j = arg;
    const double two_over_sqrt_pi = 1.1283791670955126;
    if (j->dt == HR_F32) {
        const float *x = j->x, *g = j->g;
        float *y = j->y;
        for (int64_t i = begin; i < end; i += HR_VW) {
            size_t bytes = (size_t)(end - i < HR_VW ? end - i : HR_VW) * sizeof(float);
            hr_vwf v = hr_vwf_splat(0.0f), gv = hr_vwf_splat(0.0f), e, r;
            memcpy(&v, x + i, bytes);
            if (j->mode == ERF_VALUE) {
                r = hr_erf_vwf(v);
            } else {
                memcpy(&gv, g + i, bytes);
                /* d erf / dx = 2/sqrt(pi) e^(-x^2) */
                hr_erf_exp_vwf(v, &e);
                r = gv * ((float)two_over_sqrt_pi * e);
            }
            memcpy(y + i, &r, bytes);
        }
    } else {
        const double *x = j->x, *g = j->g;
        double *y = j->y;
        for (int64_t i = begin; i < end; i++)
            y[i] = j->mode == ERF_VALUE ? erf(x[i]) : g[i] * two_over_sqrt_pi * exp(-x[i] * x[i]);
    }
}

static int erf_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    hr_tensor *x = hr_node_saved(node, 0);
    if (!x) return -1;
    hr_tensor *gc = hr_readable_as(grad, x->dtype);
    if (!gc) return -1;
    gi[0] = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_tensor_device(x));
    if (gi[0] && hr_tensor_device(x).type == HR_CUDA) {
        if (hr_cuda_erf(x, gc, gi[0])) {
            hr_tensor_release(gi[0]);
            gi[0] = NULL;
        }
    } else if (gi[0]) {
        erf_job j = {hr_tensor_data(x), hr_tensor_data(gc), hr_tensor_data(gi[0]), x->dtype, ERF_GRAD};
        hr_parallel_for(hr_tensor_numel(x), 1 << 14, erf_range, &j);
    }
    hr_tensor_release(gc);
    return gi[0] ? 0 : -1;
}

hr_tensor *hr_erf(hr_tensor *x)
{
    if (hr_tensor_check_live(x, "erf")) return NULL;
    if (x->dtype != HR_F32 && x->dtype != HR_F64) {
        /* as torch: bf16/f16 computed in f32 and rounded once (the casts on the tape, for the
         * gradient), integers and bool give f32 */
        hr_tensor *xf = hr_ag_cast(x, HR_F32);
        hr_tensor *yf = xf ? hr_erf(xf) : NULL;
        hr_tensor_release(xf);
        if (!yf || !hr_dtype_is_float(x->dtype)) return yf;
        hr_tensor *y = hr_ag_cast(yf, x->dtype);
        hr_tensor_release(yf);
        return y;
    }
    hr_tensor *xc = hr_contiguous(x);
    if (!xc) return NULL;
    hr_tensor *y = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_tensor_device(x));
    if (y && hr_tensor_device(x).type == HR_CUDA) {
        if (hr_cuda_erf(xc, NULL, y)) {
            hr_tensor_release(y);
            y = NULL;
        } else {
            y = record_pointwise_node(y, "erf", erf_backward, x, xc);
        }
    } else if (y) {
        erf_job j = {hr_tensor_data(xc), NULL, hr_tensor_data(y), x->dtype, ERF_VALUE};
        hr_parallel_for(hr_tensor_numel(x), 1 << 14, erf_range, &j);
        y = record_pointwise_node(y, "erf", erf_backward, x, xc);
    }
    hr_tensor_release(xc);
    return y;
}
