/* cpu/layernorm.c — LayerNorm over the last dimension: forward keeps mean and 1/std per row for
 * the backward, which is the closed form of the gradient (no recomputation through the tape). */
#include <math.h>
#include <string.h>

#include "cpu/hr_layernorm.h"
#include "hr_autograd.h"
#include "hr_autograd_ops.h"
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
 * one accumulator chain per row made the f32 LayerNorm wait on the latency of every addition.
 * Eight floats are loaded and widened at once (loaded as four, GCC widened them two at a time). */
typedef double ln_v8d __attribute__((vector_size(64)));
typedef float ln_v8f __attribute__((vector_size(32)));

static inline ln_v8d ln_load8(const float *x)
{
    ln_v8f f;
    memcpy(&f, x, sizeof f);
    return __builtin_convertvector(f, ln_v8d);
}

/* lane l holds the elements at l mod 8: (lanes 0+4, 1+5) + (2+6, 3+7) */
static inline double ln_total(ln_v8d a)
{
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

/* sum of x, and of (x - mu)^2 when mu is given (square = true) */
static double ln_row_sum_f32(const float *x, int64_t n, bool square, double mu)
{
    ln_v8d a = {0}, m = a + mu;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        ln_v8d u = ln_load8(x + i);
        if (square) {
            u -= m;
            a += u * u;
        } else {
            a += u;
        }
    }
    double s = ln_total(a);
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

hr_tensor *hr_ln_cpu_forward(const hr_tensor *xc, const hr_tensor *wc, const hr_tensor *bc, double eps,
                             hr_tensor **mean, hr_tensor **rstd)
{
    int64_t cols = xc->ndim ? xc->size[xc->ndim - 1] : 1, rows = cols ? hr_tensor_numel(xc) / cols : 0;
    hr_tensor *y = hr_tensor_empty(xc->ndim, xc->size, xc->dtype, hr_cpu());
    *mean = hr_tensor_empty(1, &rows, HR_F64, hr_cpu());
    *rstd = hr_tensor_empty(1, &rows, HR_F64, hr_cpu());
    if (!y || !*mean || !*rstd) {
        hr_tensor_release(y);
        hr_tensor_release(*mean);
        hr_tensor_release(*rstd);
        *mean = *rstd = NULL;
        return NULL;
    }
    ln_fwd_job j = {hr_tensor_data(xc), wc ? hr_tensor_data(wc) : NULL, bc ? hr_tensor_data(bc) : NULL,
                    hr_tensor_data(y), hr_tensor_data(*mean), hr_tensor_data(*rstd), cols, eps, xc->dtype};
    if (cols > 0) hr_parallel_for(rows, 16, ln_forward_rows, &j);
    return y;
}

typedef struct {
    const void *x, *w, *g;
    void *gx;                  /* NULL: x's gradient not wanted */
    const double *mean, *rstd;
    int64_t rows, cols;
    hr_dtype dt;
    int64_t chunk_rows;        /* rows per chunk (ln_chunk_rows) */
    double *part_dw, *part_db; /* per chunk, cols values each; NULL: not wanted */
} ln_bwd_job;

/* Rows per chunk of the parameter gradients' partial sums: 16, or more so that there are at most
 * LN_MAX_CHUNKS chunks (their partial sums, 16 bytes per column each, stay a few MiB however
 * many rows there are). It depends on the row count alone, so the sums (rows in order within a
 * chunk, then chunks in order) are the same for any number of threads. */
enum { LN_CHUNK_ROWS = 16, LN_MAX_CHUNKS = 256 };

static int64_t ln_chunk_rows(int64_t rows)
{
    int64_t spread = (rows + LN_MAX_CHUNKS - 1) / LN_MAX_CHUNKS;
    return spread > LN_CHUNK_ROWS ? spread : LN_CHUNK_ROWS;
}

typedef float ln_v16f __attribute__((vector_size(64)));

static inline ln_v16f ln_load16(const float *x)
{
    ln_v16f v;
    memcpy(&v, x, sizeof v);
    return v;
}

static inline float ln_total16(ln_v16f a, ln_v16f b)
{
    ln_v16f t = a + b;
    float s = 0;
    for (int l = 0; l < 16; l++) s += t[l];
    return s;
}

/* One f32 row, x's gradient in float as the forward pass and the reference's CPU kernel compute
 * it: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w, xhat =
 * (x - mean) * rstd, the two means summed in 32 fixed lanes (in double, with every element
 * widened, this took three times as long on Zen 4). The row's terms of the parameter gradients
 * (dw += g * xhat, db += g) are added in double, with xhat from the double mean, while the row is
 * still in L1: summed over hundreds of rows, a float xhat's error (the mean rounded to float is
 * off by the same amount in every element of a row) and float partial sums made a weight gradient
 * that cancels to small values wrong in its fifth digit. The branches stay outside the loops,
 * which vectorise. */
static void ln_backward_row_f32(const float *restrict x, const float *restrict g, const float *restrict w, int64_t n,
                                double mean, double rstd, float *restrict dx, double *restrict dw,
                                double *restrict db)
{
    const float m = (float)mean, r = (float)rstd;
    if (dx) {
        ln_v16f d0 = {0}, d1 = d0, e0 = d0, e1 = d0, mv = d0 + m, rv = d0 + r;
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            ln_v16f ga = ln_load16(g + i), gb = ln_load16(g + i + 16);
            if (w) {
                ga *= ln_load16(w + i);
                gb *= ln_load16(w + i + 16);
            }
            d0 += ga;
            d1 += gb;
            e0 += ga * ((ln_load16(x + i) - mv) * rv);
            e1 += gb * ((ln_load16(x + i + 16) - mv) * rv);
        }
        float sd = ln_total16(d0, d1), sdx = ln_total16(e0, e1);
        for (; i < n; i++) {
            float d = w ? g[i] * w[i] : g[i];
            sd += d;
            sdx += d * ((x[i] - m) * r);
        }
        const float md = sd / (float)n, mdx = sdx / (float)n;
        if (w)
            for (i = 0; i < n; i++) dx[i] = r * (g[i] * w[i] - md - ((x[i] - m) * r) * mdx);
        else
            for (i = 0; i < n; i++) dx[i] = r * (g[i] - md - ((x[i] - m) * r) * mdx);
    }
    if (dw)
        for (int64_t i = 0; i < n; i++) dw[i] += (double)g[i] * (((double)x[i] - mean) * rstd);
    if (db)
        for (int64_t i = 0; i < n; i++) db[i] += (double)g[i];
}

/* One f64 row: the same formulas in double. */
static void ln_backward_row_f64(const double *restrict x, const double *restrict g, const double *restrict w,
                                int64_t n, double mu, double rs, double *restrict dx, double *restrict dw,
                                double *restrict db)
{
    if (dx) {
        double sd = 0, sdx = 0;
        for (int64_t i = 0; i < n; i++) {
            double d = g[i] * (w ? w[i] : 1.0);
            sd += d;
            sdx += d * ((x[i] - mu) * rs);
        }
        double md = sd / (double)n, mdx = sdx / (double)n;
        for (int64_t i = 0; i < n; i++) dx[i] = rs * (g[i] * (w ? w[i] : 1.0) - md - ((x[i] - mu) * rs) * mdx);
    }
    if (dw)
        for (int64_t i = 0; i < n; i++) dw[i] += g[i] * ((x[i] - mu) * rs);
    if (db)
        for (int64_t i = 0; i < n; i++) db[i] += g[i];
}

/* Chunks [begin, end) of rows: x's gradient and the chunks' partial parameter sums. */
static void ln_backward_chunks(void *arg, int64_t begin, int64_t end)
{
    const ln_bwd_job *j = arg;
    int64_t n = j->cols;
    size_t es = hr_dtype_size(j->dt);
    for (int64_t c = begin; c < end; c++) {
        double *dw = j->part_dw ? j->part_dw + c * n : NULL;
        double *db = j->part_db ? j->part_db + c * n : NULL;
        if (dw) memset(dw, 0, (size_t)n * sizeof *dw);
        if (db) memset(db, 0, (size_t)n * sizeof *db);
        int64_t r0 = c * j->chunk_rows, r1 = r0 + j->chunk_rows < j->rows ? r0 + j->chunk_rows : j->rows;
        for (int64_t r = r0; r < r1; r++) {
            size_t at = (size_t)(r * n) * es;
            void *dx = j->gx ? (char *)j->gx + at : NULL;
            if (j->dt == HR_F32)
                ln_backward_row_f32((const float *)((const char *)j->x + at), (const float *)((const char *)j->g + at),
                                    j->w, n, j->mean[r], j->rstd[r], dx, dw, db);
            else
                ln_backward_row_f64((const double *)((const char *)j->x + at),
                                    (const double *)((const char *)j->g + at), j->w, n, j->mean[r], j->rstd[r], dx,
                                    dw, db);
        }
    }
}

/* The parameter gradients: the chunks' partial sums added in chunk order, a column range at a
 * time (its running sums in a buffer that stays in L1). */
typedef struct {
    const double *part;
    int64_t chunks, cols;
    void *out;
    hr_dtype dt;
} ln_param_job;

static void ln_param_cols(void *arg, int64_t begin, int64_t end)
{
    const ln_param_job *p = arg;
    enum { SPAN = 512 };
    double acc[SPAN];
    for (int64_t i0 = begin; i0 < end; i0 += SPAN) {
        int64_t len = end - i0 < SPAN ? end - i0 : SPAN;
        memset(acc, 0, sizeof acc);
        for (int64_t c = 0; c < p->chunks; c++) {
            const double *row = p->part + c * p->cols + i0;
            for (int64_t i = 0; i < len; i++) acc[i] += row[i];
        }
        if (p->dt == HR_F32)
            for (int64_t i = 0; i < len; i++) ((float *)p->out)[i0 + i] = (float)acc[i];
        else memcpy((double *)p->out + i0, acc, (size_t)len * sizeof *acc);
    }
}

/* A parameter's gradient from the chunks' partial sums, in dtype dt; NULL when out of memory. */
static hr_tensor *ln_param_grad(const double *part, int64_t chunks, int64_t cols, hr_dtype dt)
{
    hr_tensor *out = hr_tensor_empty(1, &cols, dt, hr_cpu());
    if (out) {
        ln_param_job p = {part, chunks, cols, hr_tensor_data(out), dt};
        hr_parallel_for(cols, 256, ln_param_cols, &p);
    }
    return out;
}

int hr_ln_cpu_backward(const hr_tensor *x, const hr_tensor *mean, const hr_tensor *rstd, const hr_tensor *w,
                       const hr_tensor *grad, bool need_x, bool need_w, bool need_b, hr_tensor *out[3])
{
    int64_t cols = x->ndim ? x->size[x->ndim - 1] : 1, rows = cols ? hr_tensor_numel(x) / cols : 0;
    hr_tensor *g = hr_readable_as((hr_tensor *)grad, x->dtype); /* contiguous, in the input's dtype */
    if (!g) return -1;
    int64_t chunk_rows = ln_chunk_rows(rows), chunks = (rows + chunk_rows - 1) / chunk_rows;
    int64_t part_size[1] = {chunks * cols * ((need_w ? 1 : 0) + (need_b ? 1 : 0))};
    hr_tensor *part = part_size[0] ? hr_tensor_empty(1, part_size, HR_F64, hr_cpu()) : NULL;
    if (need_x) out[0] = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu());
    int rc = (part_size[0] && !part) || (need_x && !out[0]) ? -1 : 0;
    if (rc == 0) {
        double *pd = part ? hr_tensor_data(part) : NULL;
        ln_bwd_job j = {hr_tensor_data(x), w ? hr_tensor_data(w) : NULL, hr_tensor_data(g),
                        need_x ? hr_tensor_data(out[0]) : NULL, hr_tensor_data(mean), hr_tensor_data(rstd),
                        rows, cols, x->dtype, chunk_rows, need_w ? pd : NULL,
                        need_b ? pd + (need_w ? chunks * cols : 0) : NULL};
        hr_parallel_for(chunks, 1, ln_backward_chunks, &j);
        if (need_w && !(out[1] = ln_param_grad(j.part_dw, chunks, cols, x->dtype))) rc = -1;
        if (need_b && !(out[2] = ln_param_grad(j.part_db, chunks, cols, x->dtype))) rc = -1;
    }
    hr_tensor_release(part);
    hr_tensor_release(g);
    return rc;
}

static int ln_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const ln_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0);
    hr_tensor *mean = hr_node_saved(node, 1);
    hr_tensor *rstd = hr_node_saved(node, 2);
    hr_tensor *w = c->has_weight ? hr_node_saved(node, 3) : NULL;
    if (!x || !mean || !rstd || (c->has_weight && !w)) return -1;
    return hr_ln_cpu_backward(x, mean, rstd, w, grad, hr_node_input_needs_grad(node, 0),
                              c->has_weight && hr_node_input_needs_grad(node, 1),
                              c->has_bias && hr_node_input_needs_grad(node, 2), gi);
}

int hr_ln_check_params(const hr_tensor *x, hr_tensor *weight, hr_tensor *bias, hr_dtype pdt, const char *op)
{
    char a[96], b[96];
    int64_t cols = x->size[x->ndim - 1];
    hr_tensor *params[2] = {weight, bias};
    static const char *const pnames[2] = {"weight", "bias"};
    for (int k = 0; k < 2; k++) {
        hr_tensor *p = params[k];
        if (!p) continue;
        if (hr_tensor_check_live(p, op)) return -1;
        if (p->ndim != 1 || p->size[0] != cols || p->dtype != pdt)
            return hr_fail(HR_EINVAL, "%s: %s is %s but the input %s needs a %s vector of %lld", op, pnames[k],
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
    if (hr_ln_check_params(x, weight, bias, HR_F32, "layer_norm")) return NULL;
    return hr_cuda_layer_norm(x, weight, bias, eps);
}

/* A bf16/f16 input (and its parameters, of its dtype) as torch's CPU kernel takes it: normalised in
 * f32 and rounded once, through casts on the tape so that the gradients come back in each one's
 * dtype. */
static hr_tensor *layer_norm_via_f32(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps)
{
    if (x->ndim < 1) return hr_fail_null(HR_EINVAL, "layer_norm: input must have at least one dimension");
    if (hr_ln_check_params(x, weight, bias, x->dtype, "layer_norm")) return NULL;
    hr_tensor *xf = hr_ag_cast(x, HR_F32);
    hr_tensor *wf = weight ? hr_ag_cast(weight, HR_F32) : NULL, *bf = bias ? hr_ag_cast(bias, HR_F32) : NULL;
    hr_tensor *yf = xf && (!weight || wf) && (!bias || bf) ? hr_layer_norm(xf, wf, bf, eps) : NULL;
    hr_tensor *y = yf ? hr_ag_cast(yf, x->dtype) : NULL;
    hr_tensor_release(xf);
    hr_tensor_release(wf);
    hr_tensor_release(bf);
    hr_tensor_release(yf);
    return y;
}

hr_tensor *hr_layer_norm(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps)
{
    if (hr_tensor_check_live(x, "layer_norm")) return NULL;
    if (x->dtype == HR_BF16 || x->dtype == HR_F16) return layer_norm_via_f32(x, weight, bias, eps);
    if (x->dtype != HR_F32 && x->dtype != HR_F64)
        return hr_fail_null(HR_EINVAL, "layer_norm: input is %s; f32, f64, bf16 and f16 are supported",
                            hr_dtype_name(x->dtype));
    if (x->ndim < 1) return hr_fail_null(HR_EINVAL, "layer_norm: input must have at least one dimension");
    int64_t cols = x->size[x->ndim - 1];
    if (hr_ln_check_params(x, weight, bias, x->dtype, "layer_norm")) return NULL;
    if (hr_tensor_device(x).type != HR_CPU) return hr_cuda_layer_norm(x, weight, bias, eps);
    if ((weight && hr_tensor_device(weight).type != HR_CPU) || (bias && hr_tensor_device(bias).type != HR_CPU))
        return hr_fail_null(HR_EDEVICE, "layer_norm: the input is on the CPU but weight or bias is not");
    hr_tensor *xc = hr_contiguous(x);
    hr_tensor *wc = weight ? hr_contiguous(weight) : NULL;
    hr_tensor *bc = bias ? hr_contiguous(bias) : NULL;
    int64_t rows = cols ? hr_tensor_numel(x) / cols : 0;
    hr_tensor *mean = NULL, *rstd = NULL;
    hr_tensor *out = xc && (!weight || wc) && (!bias || bc) ? hr_ln_cpu_forward(xc, wc, bc, eps, &mean, &rstd) : NULL;
    if (out) {
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
    hr_tensor_release(xc);
    hr_tensor_release(wc);
    hr_tensor_release(bc);
    hr_tensor_release(mean);
    hr_tensor_release(rstd);
    return out;
}
