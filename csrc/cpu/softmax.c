/*
 * softmax.c — softmax and log_softmax along one dimension.
 *
 * Each row: m = max, s = sum exp(x - m) (accumulated in double), then exp(x - m) / s or
 * x - m - log(s). Subtracting the max keeps exp from overflowing. Contiguous f32 rows (softmax over
 * the last dim of a contiguous tensor, e.g. attention scores) run a vectorised float loop with the
 * polynomial exp of hr_simd.h (about 1e-7 relative error); every other
 * layout and dtype goes through a strided loop on doubles (libm exp). A row containing NaN, or whose max is
 * +inf or which is all -inf, gives NaN, as in PyTorch.
 */
#include <math.h>
#include <string.h>

#include "hr_reduce.h"
#include "cpu/hr_rows.h"
#include "cpu/hr_simd.h"

typedef struct {
    bool log;
    hr_dtype dt;
    size_t el;
    const char *in;
    char *out;
    hr_rows gi, go;
} softmax_job;

/* One contiguous f32 row: vector max, exp(x - max) into y, the sum of y in double, then scale
 * (softmax) or x - max - log(sum) (log_softmax). */
static void softmax_row_f32(const float *x, float *y, int64_t n, bool log_out)
{
    bool has_nan;
    float mx = hr_maxmin_f32(x, n, true, &has_nan);
    if (has_nan) mx = NAN; /* NaN anywhere makes the whole row NaN */
    hr_exp_shifted_f32(x, y, n, mx);
    double s = hr_sum_f32(y, n);
    int64_t i;
    if (log_out) {
        float ls = (float)log(s);
        for (i = 0; i < n; i++) y[i] = (x[i] - mx) - ls;
    } else {
        float inv = (float)(1.0 / s);
        for (i = 0; i < n; i++) y[i] *= inv;
    }
}

static void softmax_row_generic(const softmax_job *j, const char *p, char *o, int64_t si, int64_t so)
{
    int64_t n = j->gi.n;
    double mx = hr_load_f64(p, j->dt);
    for (int64_t i = 1; i < n; i++) {
        double v = hr_load_f64(p + i * si, j->dt);
        if (v > mx) mx = v;
    }
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += exp(hr_load_f64(p + i * si, j->dt) - mx);
    double ls = log(s), inv = 1.0 / s;
    for (int64_t i = 0; i < n; i++) {
        double v = hr_load_f64(p + i * si, j->dt) - mx;
        hr_store_f64(o + i * so, j->dt, j->log ? v - ls : exp(v) * inv);
    }
}

static void softmax_worker(void *arg, int64_t begin, int64_t end)
{
    const softmax_job *j = arg;
    int64_t si = j->gi.stride * (int64_t)j->el, so = j->go.stride * (int64_t)j->el;
    for (int64_t row = begin; row < end; row++) {
        const char *p = j->in + hr_rows_offset(&j->gi, row) * (int64_t)j->el;
        char *o = j->out + hr_rows_offset(&j->go, row) * (int64_t)j->el;
        if (j->dt == HR_F32 && (j->gi.stride == 1 || j->gi.n == 1) && (j->go.stride == 1 || j->go.n == 1))
            softmax_row_f32((const float *)p, (float *)o, j->gi.n, j->log);
        else
            softmax_row_generic(j, p, o, si, so);
    }
}

static hr_tensor *softmax(hr_tensor *t, int dim, bool log_out)
{
    const char *name = log_out ? "log_softmax" : "softmax";
    if (hr_rows_check_input_dev(t, name, true)) return NULL;
    if (!hr_dtype_is_float(t->dtype))
        return hr_fail_null(HR_EINVAL, "%s: expected a floating-point tensor, got %s (convert it first, e.g. with :float())",
                            name, hr_dtype_name(t->dtype));
    int d;
    if (hr_wrap_dim(name, dim, t->ndim, &d)) return NULL;
    hr_tensor *out = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_tensor_device(t));
    if (!out) return NULL;
    if (hr_tensor_device(t).type == HR_CUDA) {
        if (hr_cuda_softmax(t, dim, log_out, out)) {
            hr_tensor_release(out);
            return NULL;
        }
        return out;
    }
    softmax_job j;
    j.log = log_out;
    j.dt = t->dtype;
    j.el = hr_dtype_size(t->dtype);
    j.in = hr_tensor_data(t);
    j.out = hr_tensor_data(out);
    hr_rows_init(&j.gi, t->ndim, t->size, t->stride, t->ndim ? d : -1);
    hr_rows_init(&j.go, out->ndim, out->size, out->stride, t->ndim ? d : -1);
    if (hr_tensor_numel(t) > 0) hr_parallel_for(j.gi.rows, 8192 / (j.gi.n + 1) + 1, softmax_worker, &j);
    return out;
}

hr_tensor *hr_softmax(hr_tensor *t, int dim) { return softmax(t, dim, false); }
hr_tensor *hr_log_softmax(hr_tensor *t, int dim) { return softmax(t, dim, true); }
