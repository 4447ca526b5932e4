/* cpu/optim.c — fused AdamW and gradient-norm kernels over many parameters at once. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hr_cuda.h"
#include "hr_optim.h"
#include "hr_reduce.h"

static int check_item(const hr_adamw_item *it, int i)
{
    const hr_tensor *ts[4] = {it->param, it->grad, it->exp_avg, it->exp_avg_sq};
    static const char *const names[4] = {"parameter", "gradient", "exp_avg", "exp_avg_sq"};
    for (int k = 0; k < 4; k++) {
        if (hr_tensor_check_live(ts[k], "adamw")) return hr_fail(HR_EFREED, "adamw: %s %d was freed", names[k], i + 1);
        if (!hr_tensor_is_contiguous(ts[k]))
            return hr_fail(HR_EINVAL, "adamw: %s %d is not contiguous", names[k], i + 1);
        if (!hr_device_eq(hr_tensor_device(ts[k]), hr_tensor_device(it->param))) {
            char a[160], b[160];
            return hr_fail(HR_EDEVICE, "adamw: %s %d is %s but its parameter is %s", names[k], i + 1,
                           hr_tensor_desc(ts[k], a, sizeof a), hr_tensor_desc(it->param, b, sizeof b));
        }
        if (hr_tensor_numel(ts[k]) != hr_tensor_numel(it->param)) {
            char a[160], b[160];
            return hr_fail(HR_EINVAL, "adamw: %s %d has size %s but the parameter has size %s", names[k], i + 1,
                           hr_shape_str(ts[k]->ndim, ts[k]->size, a, sizeof a),
                           hr_shape_str(it->param->ndim, it->param->size, b, sizeof b));
        }
    }
    hr_dtype pd = it->param->dtype;
    if (pd != HR_F32 && pd != HR_F64)
        return hr_fail(HR_EINVAL, "adamw: parameter %d is %s; master weights must be f32 or f64", i + 1, hr_dtype_name(pd));
    if (it->exp_avg->dtype != pd || it->exp_avg_sq->dtype != pd)
        return hr_fail(HR_EINVAL, "adamw: optimizer state of parameter %d must have the parameter's dtype %s", i + 1,
                       hr_dtype_name(pd));
    if (!hr_dtype_is_float(it->grad->dtype))
        return hr_fail(HR_EINVAL, "adamw: gradient %d has dtype %s", i + 1, hr_dtype_name(it->grad->dtype));
    if (it->grad_scale != 1.0 && it->grad->dtype != pd)
        return hr_fail(HR_EINVAL, "adamw: grad_scale needs gradient %d in its parameter's dtype %s, got %s", i + 1,
                       hr_dtype_name(pd), hr_dtype_name(it->grad->dtype));
    if (it->rule != HR_ADAM_DECOUPLED && it->rule != HR_ADAM_L2 && it->rule != HR_ADAMAX)
        return hr_fail(HR_EINVAL, "adamw: item %d has an unknown update rule %d", i + 1, (int)it->rule);
    if (it->rule == HR_ADAM_L2 && !(it->bias2_sqrt > 0))
        return hr_fail(HR_EINVAL, "adam: item %d: bias2_sqrt must be > 0, got %g", i + 1, it->bias2_sqrt);
    return 0;
}

typedef struct {
    hr_adamw_item *items;
    int n;
    int64_t *starts; /* prefix sums of element counts, n + 1 entries */
    double beta1, beta2, eps;
} adamw_job;

typedef struct {
    float b1, b2, c1, c2, eps, step, decay, bias2_sqrt;
    hr_adam_rule rule;
} adamw_f32_consts;

/* One element of the f32 update, in torch's float arithmetic and order of operations. `rule` is a
 * constant at each call site, so every rule gets a loop of its own that the compiler vectorises (a
 * rule read inside one shared loop kept AdamW's from vectorising: 2.3x slower). */
static inline __attribute__((always_inline)) void adamw_f32_one(const adamw_f32_consts *k, hr_adam_rule rule, float gi,
                                                                 float *p, float *m, float *v)
{
    float pi = *p;
    if (rule != HR_ADAM_DECOUPLED && k->decay != 0.0f) gi = gi + k->decay * pi; /* grad.add(param, alpha=wd) */
    float mi = *m * k->b1 + k->c1 * gi;
    *m = mi;
    if (rule == HR_ADAMAX) {
        float a = *v * k->b2, b = fabsf(gi) + k->eps;
        float vi = (a != a || a > b) ? a : b; /* amax: NaN wins */
        *v = vi;
        *p = pi - k->step * (mi / vi);
        return;
    }
    float vi = *v * k->b2 + (k->c2 * gi) * gi; /* addcmul: value * t1 * t2 */
    *v = vi;
    if (rule == HR_ADAM_L2) {
        *p = pi - k->step * (mi / (sqrtf(vi) / k->bias2_sqrt + k->eps));
        return;
    }
    pi = pi - k->step * (mi / (sqrtf(vi) + k->eps));
    if (k->decay != 0.0f) pi = pi - k->decay * pi;
    *p = pi;
}

/* Elements [lo, hi) of one item under one rule; f32 gradients scaled by gs (clipping folded in:
 * g * (float)scale is what scaling g in place would have stored; a scale of 1 changes no value,
 * x * 1.0f == x with NaN and -0 included), other gradient dtypes converted. */
static inline __attribute__((always_inline)) void adamw_f32_rule(const hr_adamw_item *it, const adamw_f32_consts *k,
                                                                  hr_adam_rule rule, int64_t lo, int64_t hi)
{
    float *p = hr_tensor_data(it->param);
    float *m = hr_tensor_data(it->exp_avg);
    float *v = hr_tensor_data(it->exp_avg_sq);
    if (it->grad->dtype == HR_F32) {
        const float *g = hr_tensor_data(it->grad);
        const float gs = (float)it->grad_scale;
        for (int64_t i = lo; i < hi; i++) adamw_f32_one(k, rule, g[i] * gs, &p[i], &m[i], &v[i]);
    } else {
        const char *g = hr_tensor_data(it->grad);
        size_t gsz = hr_dtype_size(it->grad->dtype);
        for (int64_t i = lo; i < hi; i++)
            adamw_f32_one(k, rule, (float)hr_load_f64(g + (size_t)i * gsz, it->grad->dtype), &p[i], &m[i], &v[i]);
    }
}

/* The f32 update mirrors torch's float arithmetic: scalars are rounded to float first. */
static void adamw_f32(const hr_adamw_item *it, int64_t lo, int64_t hi, const adamw_job *job)
{
    const adamw_f32_consts k = {(float)job->beta1, (float)job->beta2, (float)(1.0 - job->beta1),
                                (float)(1.0 - job->beta2), (float)job->eps, (float)it->step_size, (float)it->decay,
                                (float)it->bias2_sqrt, it->rule};
    switch (it->rule) {
    case HR_ADAM_L2: adamw_f32_rule(it, &k, HR_ADAM_L2, lo, hi); break;
    case HR_ADAMAX: adamw_f32_rule(it, &k, HR_ADAMAX, lo, hi); break;
    default: adamw_f32_rule(it, &k, HR_ADAM_DECOUPLED, lo, hi); break;
    }
}

static void adamw_f64(const hr_adamw_item *it, int64_t lo, int64_t hi, const adamw_job *job)
{
    double *p = hr_tensor_data(it->param);
    double *m = hr_tensor_data(it->exp_avg);
    double *v = hr_tensor_data(it->exp_avg_sq);
    const char *g = hr_tensor_data(it->grad);
    size_t gs = hr_dtype_size(it->grad->dtype);
    for (int64_t i = lo; i < hi; i++) {
        double gi = hr_load_f64(g + (size_t)i * gs, it->grad->dtype) * it->grad_scale; /* f64 when scaled */
        double pi = p[i];
        if (it->rule != HR_ADAM_DECOUPLED && it->decay != 0.0) gi = gi + it->decay * pi;
        double mi = m[i] * job->beta1 + (1.0 - job->beta1) * gi;
        m[i] = mi;
        if (it->rule == HR_ADAMAX) {
            double a = v[i] * job->beta2, b = fabs(gi) + job->eps;
            double vi = (a != a || a > b) ? a : b;
            v[i] = vi;
            p[i] = pi - it->step_size * (mi / vi);
            continue;
        }
        double vi = v[i] * job->beta2 + ((1.0 - job->beta2) * gi) * gi;
        v[i] = vi;
        if (it->rule == HR_ADAM_L2) {
            p[i] = pi - it->step_size * (mi / (sqrt(vi) / it->bias2_sqrt + job->eps));
            continue;
        }
        pi = pi - it->step_size * (mi / (sqrt(vi) + job->eps));
        if (it->decay != 0.0) pi = pi - it->decay * pi;
        p[i] = pi;
    }
}

/* Processes the global element range [begin, end) which may span several parameters. */
static void adamw_range(void *arg, int64_t begin, int64_t end)
{
    const adamw_job *job = arg;
    /* first item containing begin */
    int lo = 0, hi = job->n;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (job->starts[mid] <= begin) lo = mid;
        else hi = mid;
    }
    for (int k = lo; k < job->n && job->starts[k] < end; k++) {
        int64_t a = begin > job->starts[k] ? begin - job->starts[k] : 0;
        int64_t b = (end < job->starts[k + 1] ? end : job->starts[k + 1]) - job->starts[k];
        if (a >= b) continue;
        const hr_adamw_item *it = &job->items[k];
        if (it->param->dtype == HR_F32) adamw_f32(it, a, b, job);
        else adamw_f64(it, a, b, job);
    }
}

int hr_adamw_step(hr_adamw_item *items, int n, double beta1, double beta2, double eps)
{
    if (n <= 0) return 0;
    for (int i = 0; i < n; i++)
        if (check_item(&items[i], i)) return -1;
    if (hr_tensor_device(items[0].param).type != HR_CPU) return hr_cuda_adamw_step(items, n, beta1, beta2, eps);
    for (int i = 1; i < n; i++)
        if (hr_tensor_device(items[i].param).type != HR_CPU)
            return hr_fail(HR_EDEVICE, "adamw: parameters 1 and %d are on different devices", i + 1);
    int64_t *starts = malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!starts) return hr_fail(HR_ENOMEM, "adamw: out of memory");
    starts[0] = 0;
    for (int i = 0; i < n; i++) starts[i + 1] = starts[i] + hr_tensor_numel(items[i].param);
    adamw_job job = {items, n, starts, beta1, beta2, eps};
    hr_parallel_for(starts[n], 1 << 15, adamw_range, &job);
    for (int i = 0; i < n; i++) {
        hr_tensor_bump_version(items[i].param);
        hr_tensor_bump_version(items[i].exp_avg);
        hr_tensor_bump_version(items[i].exp_avg_sq);
    }
    free(starts);
    return 0;
}

/* ------------------------------------------------------------------ norms */

typedef struct {
    hr_dtype dt;
    double sum;
} sumsq_ctx;

static void sumsq_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    sumsq_ctx *c = arg;
    double s = 0;
    if (c->dt == HR_F32 && bs[0] == 4) {
        const float *f = (const float *)p[0];
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) {
            s0 += (double)f[i] * f[i];
            s1 += (double)f[i + 1] * f[i + 1];
            s2 += (double)f[i + 2] * f[i + 2];
            s3 += (double)f[i + 3] * f[i + 3];
        }
        for (; i < n; i++) s0 += (double)f[i] * f[i];
        s = s0 + s1 + s2 + s3;
    } else {
        for (int64_t i = 0; i < n; i++) {
            double v = hr_load_f64(p[0] + i * bs[0], c->dt);
            s += v * v;
        }
    }
    c->sum += s;
}

/* The tensors on devices: one pass per device (hr_cuda_sum_squares), one number read back each. */
static int device_sumsq(hr_tensor *const *tensors, int n, double *total)
{
    hr_tensor **group = malloc(sizeof *group * (size_t)(n > 0 ? n : 1));
    bool *done = calloc((size_t)(n > 0 ? n : 1), sizeof *done);
    int rc = (group && done) ? 0 : hr_fail(HR_ENOMEM, "clip_grad_norm: out of memory");
    for (int i = 0; i < n && rc == 0; i++) {
        if (done[i] || hr_tensor_device(tensors[i]).type == HR_CPU) continue;
        hr_device dev = hr_tensor_device(tensors[i]);
        int m = 0;
        for (int j = i; j < n; j++) {
            hr_device dj = hr_tensor_device(tensors[j]);
            if (!done[j] && dj.type == dev.type && dj.index == dev.index) {
                group[m++] = tensors[j];
                done[j] = true;
            }
        }
        double s = 0;
        rc = hr_cuda_sum_squares(group, m, &s);
        *total += s;
    }
    free(group);
    free(done);
    return rc;
}

/* Contiguous f32/f64 host tensors, seen as one run of elements cut into chunks of NORM_CHUNK: each
 * chunk's sum of squares (double, fixed lane order) is computed by any thread, then the chunks are
 * added in order. The result depends on the chunking only, never on the thread count. */
enum { NORM_CHUNK = 1 << 16 };

typedef double hr_v4d __attribute__((vector_size(32)));
typedef float hr_v4f __attribute__((vector_size(16)));

typedef struct {
    const hr_tensor *const *ts;
    int n;
    const int64_t *starts; /* prefix sums of element counts, n + 1 entries */
    double *partial;       /* one per chunk */
} norm_job;

/* Four quarters of the range read side by side, one accumulator chain of four doubles each:
 * four streams keep more cache-line fetches in flight than one (the pass over a step's 120M
 * gradient values is bound by memory), and four chains hide the adds' latency. */
static double sumsq_f32(const float *f, int64_t n)
{
    hr_v4d a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
    int64_t q = n / 16 * 4; /* each quarter: a multiple of 4 */
    const float *f0 = f, *f1 = f + q, *f2 = f + 2 * q, *f3 = f + 3 * q;
    for (int64_t i = 0; i < q; i += 4) {
        hr_v4f x0, x1, x2, x3;
        memcpy(&x0, f0 + i, sizeof x0);
        memcpy(&x1, f1 + i, sizeof x1);
        memcpy(&x2, f2 + i, sizeof x2);
        memcpy(&x3, f3 + i, sizeof x3);
        hr_v4d d0 = __builtin_convertvector(x0, hr_v4d), d1 = __builtin_convertvector(x1, hr_v4d);
        hr_v4d d2 = __builtin_convertvector(x2, hr_v4d), d3 = __builtin_convertvector(x3, hr_v4d);
        a0 += d0 * d0;
        a1 += d1 * d1;
        a2 += d2 * d2;
        a3 += d3 * d3;
    }
    hr_v4d a = (a0 + a1) + (a2 + a3);
    double s = (a[0] + a[1]) + (a[2] + a[3]);
    for (int64_t i = 4 * q; i < n; i++) s += (double)f[i] * f[i];
    return s;
}

static double sumsq_f64(const double *d, int64_t n)
{
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += d[i] * d[i];
        s1 += d[i + 1] * d[i + 1];
        s2 += d[i + 2] * d[i + 2];
        s3 += d[i + 3] * d[i + 3];
    }
    for (; i < n; i++) s0 += d[i] * d[i];
    return (s0 + s1) + (s2 + s3);
}

static void norm_chunks(void *arg, int64_t c0, int64_t c1)
{
    const norm_job *j = arg;
    for (int64_t c = c0; c < c1; c++) {
        int64_t begin = c * NORM_CHUNK, end = begin + NORM_CHUNK;
        if (end > j->starts[j->n]) end = j->starts[j->n];
        int lo = 0, hi = j->n; /* the first tensor holding begin */
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (j->starts[mid] <= begin) lo = mid;
            else hi = mid;
        }
        double s = 0;
        for (int k = lo; k < j->n && j->starts[k] < end; k++) {
            int64_t a = begin > j->starts[k] ? begin - j->starts[k] : 0;
            int64_t b = (end < j->starts[k + 1] ? end : j->starts[k + 1]) - j->starts[k];
            if (a >= b) continue;
            const hr_tensor *t = j->ts[k];
            if (t->dtype == HR_F32) s += sumsq_f32((const float *)hr_tensor_data(t) + a, b - a);
            else s += sumsq_f64((const double *)hr_tensor_data(t) + a, b - a);
        }
        j->partial[c] = s;
    }
}

static bool chunked_norm_ok(const hr_tensor *t)
{
    return hr_tensor_device(t).type == HR_CPU && (t->dtype == HR_F32 || t->dtype == HR_F64) && hr_tensor_is_contiguous(t);
}

static int host_sumsq_chunked(hr_tensor *const *tensors, int n, double *total)
{
    int m = 0;
    for (int i = 0; i < n; i++) m += chunked_norm_ok(tensors[i]);
    if (m == 0) return 0;
    const hr_tensor **ts = malloc(sizeof *ts * (size_t)m);
    int64_t *starts = malloc(sizeof *starts * (size_t)(m + 1));
    if (!ts || !starts) {
        free(ts);
        free(starts);
        return hr_fail(HR_ENOMEM, "clip_grad_norm: out of memory");
    }
    starts[0] = 0;
    for (int i = 0, k = 0; i < n; i++)
        if (chunked_norm_ok(tensors[i])) {
            ts[k] = tensors[i];
            starts[k + 1] = starts[k] + hr_tensor_numel(tensors[i]);
            k++;
        }
    int64_t chunks = (starts[m] + NORM_CHUNK - 1) / NORM_CHUNK;
    double *partial = malloc(sizeof *partial * (size_t)(chunks > 0 ? chunks : 1));
    if (!partial) {
        free(ts);
        free(starts);
        return hr_fail(HR_ENOMEM, "clip_grad_norm: out of memory");
    }
    norm_job j = {ts, m, starts, partial};
    hr_parallel_for(chunks, 1, norm_chunks, &j);
    for (int64_t c = 0; c < chunks; c++) *total += partial[c];
    free(partial);
    free(ts);
    free(starts);
    return 0;
}

int hr_global_norm(hr_tensor *const *tensors, int n, double *norm)
{
    double total = 0;
    bool on_device = false;
    for (int i = 0; i < n; i++)
        if (hr_tensor_check_live(tensors[i], "clip_grad_norm")) return -1;
    if (host_sumsq_chunked(tensors, n, &total)) return -1;
    for (int i = 0; i < n; i++) {
        const hr_tensor *t = tensors[i];
        if (hr_tensor_device(t).type != HR_CPU) {
            on_device = true;
            continue;
        }
        if (chunked_norm_ok(t)) continue;
        sumsq_ctx c = {t->dtype, 0};
        hr_iter it;
        hr_iter_init(&it, t->ndim, t->size);
        hr_iter_add(&it, hr_tensor_data(t), hr_dtype_size(t->dtype), t->stride);
        hr_iter_run(&it, sumsq_kernel, &c, false); /* serial: one accumulator, deterministic order */
        total += c.sum;
    }
    if (on_device && device_sumsq(tensors, n, &total)) return -1;
    *norm = sqrt(total);
    return 0;
}

typedef struct {
    hr_dtype dt;
    double scale;
} scale_ctx;

static void scale_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const scale_ctx *c = arg;
    if (c->dt == HR_F32 && bs[0] == 4) {
        float *f = (float *)p[0];
        const float s = (float)c->scale;
        for (int64_t i = 0; i < n; i++) f[i] *= s;
        return;
    }
    if (c->dt == HR_F64) {
        for (int64_t i = 0; i < n; i++) {
            char *q = p[0] + i * bs[0];
            hr_store_f64(q, c->dt, hr_load_f64(q, c->dt) * c->scale);
        }
        return;
    }
    /* f32 at any stride, and bf16/f16 through f32, multiply in float as the contiguous loop above
     * (and torch's mul_ by its f32 factor) does: a double product rounded once differs by an ulp */
    const float s = (float)c->scale;
    for (int64_t i = 0; i < n; i++) {
        char *q = p[0] + i * bs[0];
        hr_store_f64(q, c->dt, (double)((float)hr_load_f64(q, c->dt) * s));
    }
}

int hr_scale_all_(hr_tensor *const *tensors, int n, double scale)
{
    for (int i = 0; i < n; i++) {
        hr_tensor *t = tensors[i];
        if (hr_tensor_check_live(t, "clip_grad_norm")) return -1;
        if (hr_tensor_device(t).type != HR_CPU) {
            if (hr_binary_(HR_MUL, t, hr_operand_float(scale), NULL)) return -1;
            continue;
        }
        scale_ctx c = {t->dtype, scale};
        hr_iter it;
        hr_iter_init(&it, t->ndim, t->size);
        hr_iter_add(&it, hr_tensor_data(t), hr_dtype_size(t->dtype), t->stride);
        hr_iter_run(&it, scale_kernel, &c, true);
        hr_tensor_bump_version(t);
    }
    return 0;
}
