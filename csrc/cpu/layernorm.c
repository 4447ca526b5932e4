/* cpu/layernorm.c — LayerNorm over the last dimension: forward keeps mean and 1/std per row for
 * the backward, which is the closed form of the gradient (no recomputation through the tape). */
#include <math.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_nn.h"

typedef struct {
    double eps;
    int64_t rows, cols;
    bool has_weight, has_bias;
} ln_ctx;

typedef struct {
    const void *x, *w, *b;
    void *y;
    double *mean, *rstd;
    int64_t cols;
    double eps;
    hr_dtype dt;
} ln_fwd_job;

/* Row sums in double with eight independent lanes (a fixed order: the same for any thread count):
 * one accumulator chain per row made the f32 LayerNorm wait on the latency of every addition. */
typedef double ln_v4d __attribute__((vector_size(32)));
typedef float ln_v4f __attribute__((vector_size(16)));

static inline ln_v4d ln_load4(const float *x)
{
    ln_v4f f;
    memcpy(&f, x, sizeof f);
    return __builtin_convertvector(f, ln_v4d);
}

static inline double ln_total(ln_v4d a, ln_v4d b)
{
    ln_v4d t = a + b;
    return (t[0] + t[1]) + (t[2] + t[3]);
}

/* sum of x, and of (x - mu)^2 when mu is given (square = true) */
static double ln_row_sum_f32(const float *x, int64_t n, bool square, double mu)
{
    ln_v4d a = {0, 0, 0, 0}, b = {0, 0, 0, 0}, m = {mu, mu, mu, mu};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        ln_v4d u = ln_load4(x + i), v = ln_load4(x + i + 4);
        if (square) {
            u -= m;
            v -= m;
            a += u * u;
            b += v * v;
        } else {
            a += u;
            b += v;
        }
    }
    double s = ln_total(a, b);
    for (; i < n; i++) {
        double d = square ? (double)x[i] - mu : (double)x[i];
        s += square ? d * d : d;
    }
    return s;
}

static double ln_row_sum_f64(const double *x, int64_t n, bool square, double mu)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = square ? x[i] - mu : x[i];
        s += square ? d * d : d;
    }
    return s;
}

#define LN_FORWARD_ROWS(T, ROW_SUM)                                                     \
    for (int64_t r = begin; r < end; r++) {                                             \
        const T *xr = (const T *)j->x + r * n;                                          \
        T *yr = (T *)j->y + r * n;                                                      \
        double mu = ROW_SUM(xr, n, false, 0.0) / (double)n;                             \
        double ss = ROW_SUM(xr, n, true, mu);                                           \
        double rs = 1.0 / sqrt(ss / (double)n + j->eps);                                \
        j->mean[r] = mu;                                                                \
        j->rstd[r] = rs;                                                                \
        const T *w = j->w, *b = j->b;                                                   \
        const T m_ = (T)mu, rs_ = (T)rs;                                                \
        for (int64_t i = 0; i < n; i++) {                                               \
            T v = (xr[i] - m_) * rs_;                                                   \
            if (w) v = v * w[i];                                                        \
            if (b) v = v + b[i];                                                        \
            yr[i] = v;                                                                  \
        }                                                                               \
    }

static void ln_forward_rows(void *arg, int64_t begin, int64_t end)
{
    const ln_fwd_job *j = arg;
    int64_t n = j->cols;
    if (j->dt == HR_F32) {
        LN_FORWARD_ROWS(float, ln_row_sum_f32)
    } else {
        LN_FORWARD_ROWS(double, ln_row_sum_f64)
    }
}

typedef struct {
    const void *x, *w, *g;
    void *gx;
    const double *mean, *rstd;
    int64_t rows, cols;
    hr_dtype dt;
} ln_bwd_job;

/* sum of d = g * w and of d * xhat over a row, xhat = (x - mu) * rs: in double, eight lanes for f32 */
static void ln_bwd_sums_f32(const float *x, const float *g, const float *w, int64_t n, double mu, double rs,
                            double *sum_d, double *sum_dx)
{
    ln_v4d d0 = {0, 0, 0, 0}, d1 = d0, e0 = d0, e1 = d0, m = {mu, mu, mu, mu}, r = {rs, rs, rs, rs};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        ln_v4d ga = ln_load4(g + i), gb = ln_load4(g + i + 4);
        if (w) {
            ga *= ln_load4(w + i);
            gb *= ln_load4(w + i + 4);
        }
        ln_v4d xa = (ln_load4(x + i) - m) * r, xb = (ln_load4(x + i + 4) - m) * r;
        d0 += ga;
        d1 += gb;
        e0 += ga * xa;
        e1 += gb * xb;
    }
    double sd = ln_total(d0, d1), sdx = ln_total(e0, e1);
    for (; i < n; i++) {
        double d = (double)g[i] * (w ? (double)w[i] : 1.0);
        sd += d;
        sdx += d * (((double)x[i] - mu) * rs);
    }
    *sum_d = sd;
    *sum_dx = sdx;
}

static void ln_bwd_sums_f64(const double *x, const double *g, const double *w, int64_t n, double mu, double rs,
                            double *sum_d, double *sum_dx)
{
    double sd = 0, sdx = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = g[i] * (w ? w[i] : 1.0);
        sd += d;
        sdx += d * ((x[i] - mu) * rs);
    }
    *sum_d = sd;
    *sum_dx = sdx;
}

/* dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w */
#define LN_BACKWARD_ROWS(T, BWD_SUMS)                                                             \
    for (int64_t r = begin; r < end; r++) {                                             \
        const T *xr = (const T *)j->x + r * n;                                          \
        const T *gr = (const T *)j->g + r * n;                                          \
        T *dxr = (T *)j->gx + r * n;                                                    \
        const T *w = j->w;                                                              \
        double mu = j->mean[r], rs = j->rstd[r];                                        \
        double sum_d, sum_dx;                                                           \
        BWD_SUMS(xr, gr, w, n, mu, rs, &sum_d, &sum_dx);                                \
        double md = sum_d / (double)n, mdx = sum_dx / (double)n;                        \
        for (int64_t i = 0; i < n; i++) {                                               \
            double d = (double)gr[i] * (w ? (double)w[i] : 1.0);                        \
            double xh = ((double)xr[i] - mu) * rs;                                      \
            dxr[i] = (T)(rs * (d - md - xh * mdx));                                     \
        }                                                                               \
    }

static void ln_backward_rows(void *arg, int64_t begin, int64_t end)
{
    const ln_bwd_job *j = arg;
    int64_t n = j->cols;
    if (j->dt == HR_F32) {
        LN_BACKWARD_ROWS(float, ln_bwd_sums_f32)
    } else {
        LN_BACKWARD_ROWS(double, ln_bwd_sums_f64)
    }
}

/* Weight and bias gradients: column sums over rows, accumulated in double, serial over rows so the
 * result does not depend on the thread count; parallel over columns. */
typedef struct {
    const ln_bwd_job *j;
    double *dw, *db;
} ln_param_job;

static void ln_param_cols(void *arg, int64_t begin, int64_t end)
{
    const ln_param_job *p = arg;
    const ln_bwd_job *j = p->j;
    int64_t n = j->cols;
    for (int64_t r = 0; r < j->rows; r++) {
        double mu = j->mean[r], rs = j->rstd[r];
        if (j->dt == HR_F32) {
            const float *x = (const float *)j->x + r * n, *g = (const float *)j->g + r * n;
            if (p->dw)
                for (int64_t i = begin; i < end; i++) p->dw[i] += (double)g[i] * (((double)x[i] - mu) * rs);
            if (p->db)
                for (int64_t i = begin; i < end; i++) p->db[i] += g[i];
        } else {
            const double *x = (const double *)j->x + r * n, *g = (const double *)j->g + r * n;
            if (p->dw)
                for (int64_t i = begin; i < end; i++) p->dw[i] += g[i] * ((x[i] - mu) * rs);
            if (p->db)
                for (int64_t i = begin; i < end; i++) p->db[i] += g[i];
        }
    }
}

static int ln_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const ln_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0);
    hr_tensor *mean = hr_node_saved(node, 1);
    hr_tensor *rstd = hr_node_saved(node, 2);
    hr_tensor *w = c->has_weight ? hr_node_saved(node, 3) : NULL;
    if (!x || !mean || !rstd || (c->has_weight && !w)) return -1;
    hr_tensor *g = hr_readable_as(grad, x->dtype); /* contiguous, in the input's dtype */
    if (!g) return -1;
    ln_bwd_job j = {hr_tensor_data(x), w ? hr_tensor_data(w) : NULL, hr_tensor_data(g), NULL,
                    hr_tensor_data(mean), hr_tensor_data(rstd), c->rows, c->cols, x->dtype};
    int rc = 0;
    if (hr_node_input_needs_grad(node, 0)) {
        gi[0] = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu());
        if (!gi[0]) rc = -1;
        else {
            j.gx = hr_tensor_data(gi[0]);
            hr_parallel_for(c->rows, 16, ln_backward_rows, &j);
        }
    }
    bool need_w = c->has_weight && hr_node_input_needs_grad(node, 1);
    bool need_b = c->has_bias && hr_node_input_needs_grad(node, 2);
    if (rc == 0 && (need_w || need_b)) {
        int64_t n = c->cols;
        hr_tensor *dw = need_w ? hr_tensor_zeros(1, &n, HR_F64, hr_cpu()) : NULL;
        hr_tensor *db = need_b ? hr_tensor_zeros(1, &n, HR_F64, hr_cpu()) : NULL;
        if ((need_w && !dw) || (need_b && !db)) rc = -1;
        else {
            ln_param_job p = {&j, dw ? hr_tensor_data(dw) : NULL, db ? hr_tensor_data(db) : NULL};
            hr_parallel_for(n, 64, ln_param_cols, &p);
            if (need_w && !(gi[1] = hr_cast(dw, x->dtype))) rc = -1;
            if (need_b && !(gi[2] = hr_cast(db, x->dtype))) rc = -1;
        }
        hr_tensor_release(dw);
        hr_tensor_release(db);
    }
    hr_tensor_release(g);
    return rc;
}

/* Checks weight and bias (each NULL or a live 1-D tensor of x's row length in dtype pdt). */
static int check_params(const hr_tensor *x, hr_tensor *weight, hr_tensor *bias, hr_dtype pdt)
{
    char a[96], b[96];
    int64_t cols = x->size[x->ndim - 1];
    hr_tensor *params[2] = {weight, bias};
    static const char *const pnames[2] = {"weight", "bias"};
    for (int k = 0; k < 2; k++) {
        hr_tensor *p = params[k];
        if (!p) continue;
        if (hr_tensor_check_live(p, "layer_norm")) return -1;
        if (p->ndim != 1 || p->size[0] != cols || p->dtype != pdt)
            return hr_fail(HR_EINVAL, "layer_norm: %s is %s but the input %s needs a %s vector of %lld", pnames[k],
                           hr_tensor_desc(p, a, sizeof a), hr_tensor_desc(x, b, sizeof b), hr_dtype_name(pdt),
                           (long long)cols);
    }
    return 0;
}

hr_tensor *hr_layer_norm_of_half(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps)
{
    if (hr_tensor_check_live(x, "layer_norm")) return NULL;
    if (hr_tensor_device(x).type != HR_CUDA || (x->dtype != HR_BF16 && x->dtype != HR_F16))
        return hr_fail_null(HR_EINVAL, "layer_norm: the f32 layer norm of a half tensor takes a bf16/f16 GPU tensor, not %s",
                            hr_dtype_name(x->dtype));
    if (x->ndim < 1) return hr_fail_null(HR_EINVAL, "layer_norm: input must have at least one dimension");
    if (check_params(x, weight, bias, HR_F32)) return NULL;
    return hr_cuda_layer_norm(x, weight, bias, eps);
}

hr_tensor *hr_layer_norm(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps)
{
    if (hr_tensor_check_live(x, "layer_norm")) return NULL;
    if (x->dtype != HR_F32 && x->dtype != HR_F64)
        return hr_fail_null(HR_EINVAL, "layer_norm: input is %s; f32 and f64 are supported", hr_dtype_name(x->dtype));
    if (x->ndim < 1) return hr_fail_null(HR_EINVAL, "layer_norm: input must have at least one dimension");
    int64_t cols = x->size[x->ndim - 1];
    if (check_params(x, weight, bias, x->dtype)) return NULL;
    if (hr_tensor_device(x).type != HR_CPU) return hr_cuda_layer_norm(x, weight, bias, eps);
    if ((weight && hr_tensor_device(weight).type != HR_CPU) || (bias && hr_tensor_device(bias).type != HR_CPU))
        return hr_fail_null(HR_EDEVICE, "layer_norm: the input is on the CPU but weight or bias is not");
    hr_tensor *xc = hr_contiguous(x);
    hr_tensor *wc = weight ? hr_contiguous(weight) : NULL;
    hr_tensor *bc = bias ? hr_contiguous(bias) : NULL;
    int64_t rows = cols ? hr_tensor_numel(x) / cols : 0;
    hr_tensor *y = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu());
    hr_tensor *mean = hr_tensor_empty(1, &rows, HR_F64, hr_cpu());
    hr_tensor *rstd = hr_tensor_empty(1, &rows, HR_F64, hr_cpu());
    hr_tensor *out = NULL;
    if (xc && (!weight || wc) && (!bias || bc) && y && mean && rstd) {
        ln_fwd_job j = {hr_tensor_data(xc), wc ? hr_tensor_data(wc) : NULL, bc ? hr_tensor_data(bc) : NULL,
                        hr_tensor_data(y), hr_tensor_data(mean), hr_tensor_data(rstd), cols, eps, x->dtype};
        if (cols > 0) hr_parallel_for(rows, 16, ln_forward_rows, &j);
        out = y;
        y = NULL;
        hr_tensor *inputs[3] = {x, weight, bias};
        if (hr_should_record(3, inputs)) {
            hr_node *node = hr_node_new("layer_norm", ln_backward, 3, inputs, sizeof(ln_ctx));
            if (!node || hr_node_save(node, xc) < 0 || hr_node_save(node, mean) < 0 || hr_node_save(node, rstd) < 0 ||
                (wc && hr_node_save(node, wc) < 0)) {
                hr_node_release(node);
                hr_tensor_release(out);
                out = NULL;
            } else {
                ln_ctx *c = node->ctx;
                c->eps = eps;
                c->rows = rows;
                c->cols = cols;
                c->has_weight = weight != NULL;
                c->has_bias = bias != NULL;
                hr_node_attach(node, out);
            }
        }
    }
    hr_tensor_release(y);
    hr_tensor_release(xc);
    hr_tensor_release(wc);
    hr_tensor_release(bc);
    hr_tensor_release(mean);
    hr_tensor_release(rstd);
    return out;
}
