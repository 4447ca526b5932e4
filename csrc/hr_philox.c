/* hr_philox.c — generator state and the random fills: argument checks, reserving the generator's
 * blocks, and routing any view and dtype through the contiguous kernels of cpu/random.c. The
 * element -> counter mapping is documented in hr_random.h. */
#include <inttypes.h>
#include <math.h>

#include "hr_cuda.h"
#include "hr_random.h"

void hr_generator_seed(hr_generator *g, uint64_t seed)
{
    g->seed = seed;
    g->offset = 0;
}

void hr_generator_key(const hr_generator *g, uint32_t key[2])
{
    key[0] = (uint32_t)g->seed;
    key[1] = (uint32_t)(g->seed >> 32);
}

uint64_t hr_generator_reserve(hr_generator *g, uint64_t nblocks)
{
    uint64_t start = g->offset;
    g->offset += nblocks; /* wraps after 2^64 blocks, as the 64-bit block counter does */
    return start;
}

/* ------------------------------------------------------------------ common checks */

/* cuda_ok: the op takes CUDA tensors (on-device kernels for uniform_, bernoulli_ with a number and
 * dropout_mask; the others fill a host twin, see host_staged). */
static int check_target_dev(const char *op, const hr_tensor *t, bool cuda_ok)
{
    if (hr_tensor_check_live(t, op)) return -1;
    if (hr_tensor_device(t).type == HR_CUDA && hr_cuda_compiled()) return cuda_ok ? 0 : hr_cuda_unsupported(op, t);
    if (hr_tensor_device(t).type != HR_CPU) {
        char buf[160];
        return hr_fail(HR_EDEVICE, "%s: tensor %s needs the CUDA backend, which this build does not have", op,
                       hr_tensor_desc(t, buf, sizeof buf));
    }
    return 0;
}


static int check_float_target(const char *op, const hr_tensor *t, bool cuda_ok)
{
    if (check_target_dev(op, t, cuda_ok)) return -1;
    if (!hr_dtype_is_float(t->dtype)) {
        char buf[160];
        return hr_fail(HR_EINVAL, "%s: expected a floating-point tensor (f32, f64, bf16, f16), got %s", op,
                       hr_tensor_desc(t, buf, sizeof buf));
    }
    return 0;
}

/* Where a kernel writes: t's own memory when it is contiguous and of the kernel's dtype, else a
 * contiguous scratch tensor that finish() copies (and converts) into t. */
typedef struct {
    hr_tensor *scratch;
    void *data;
} target;

static int target_open(target *tg, hr_tensor *t, hr_dtype kernel_dt)
{
    tg->scratch = NULL;
    if (t->dtype == kernel_dt && hr_tensor_is_contiguous(t)) {
        tg->data = hr_tensor_data(t);
        return 0;
    }
    tg->scratch = hr_tensor_empty(t->ndim, t->size, kernel_dt, hr_cpu());
    if (!tg->scratch) return -1;
    tg->data = hr_tensor_data(tg->scratch);
    return 0;
}

static int target_finish(target *tg, hr_tensor *t)
{
    int rc = 0;
    if (tg->scratch) {
        rc = hr_copy_(t, tg->scratch);
        hr_tensor_release(tg->scratch);
        tg->scratch = NULL;
    }
    if (rc == 0) hr_tensor_bump_version(t);
    return rc;
}

static uint64_t blocks_for(int64_t n, int64_t per_block) { return (uint64_t)((n + per_block - 1) / per_block); }

static bool on_cuda(const hr_tensor *t) { return hr_tensor_device(t).type == HR_CUDA; }

/*
 * normal_, randint, randperm and bernoulli_ with a tensor of probabilities fill a CUDA tensor
 * through the host: the CPU kernel fills a twin in host memory with the generator's next blocks,
 * which is then copied to the device. The values are the CPU's for the same generator state, bit
 * for bit (a device normal_ would not be: the CPU's vector log and sin/cos are not the device's),
 * and the stream advances as it does on the CPU. These fills make parameters and test data, not
 * a training step's inner loop (dropout and uniform_ have kernels of their own).
 */
typedef struct {
    hr_tensor *twin;
    uint64_t offset; /* the generator's before the fill: restored when the fill fails */
} host_staged;

static hr_tensor *host_stage_open(host_staged *s, const hr_generator *g, const hr_tensor *t)
{
    s->offset = g->offset;
    s->twin = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_cpu());
    return s->twin;
}

/* rc: the host fill's result. Copies the twin to t on success; releases the twin. */
static int host_stage_close(host_staged *s, hr_generator *g, hr_tensor *t, int rc)
{
    if (rc == 0) rc = hr_copy_(t, s->twin);
    hr_tensor_release(s->twin);
    s->twin = NULL;
    if (rc) g->offset = s->offset;
    return rc;
}

/* ------------------------------------------------------------------ uniform / normal */

int hr_random_uniform_(hr_generator *g, hr_tensor *t, double a, double b)
{
    if (check_float_target("uniform_", t, true)) return -1;
    if (!isfinite(a) || !isfinite(b) || a > b)
        return hr_fail(HR_EINVAL, "uniform_: expected finite bounds with from <= to, got from=%g to=%g", a, b);
    bool f64 = t->dtype == HR_F64;
    if (hr_tensor_device(t).type == HR_CUDA) {
        uint32_t key[2];
        hr_generator_key(g, key);
        uint64_t b0 = hr_generator_reserve(g, blocks_for(hr_tensor_numel(t), f64 ? 2 : 4));
        if (hr_cuda_uniform(t, key, b0, a, b)) {
            g->offset = b0; /* a failing op does not advance the generator */
            return -1;
        }
        hr_tensor_bump_version(t);
        return 0;
    }
    target tg;
    if (target_open(&tg, t, f64 ? HR_F64 : HR_F32)) return -1;
    int64_t n = hr_tensor_numel(t);
    uint32_t key[2];
    hr_generator_key(g, key);
    uint64_t b0 = hr_generator_reserve(g, blocks_for(n, f64 ? 2 : 4));
    if (f64) hr_cpu_uniform_f64(tg.data, n, key, b0, a, b);
    else hr_cpu_uniform_f32(tg.data, n, key, b0, a, b, t->dtype == HR_BF16 ? 8 : t->dtype == HR_F16 ? 11 : 24);
    return target_finish(&tg, t);
}

int hr_random_normal_(hr_generator *g, hr_tensor *t, double mean, double std)
{
    if (check_float_target("normal_", t, true)) return -1;
    if (!isfinite(mean) || !isfinite(std) || std < 0)
        return hr_fail(HR_EINVAL, "normal_: expected a finite mean and a finite std >= 0, got mean=%g std=%g", mean,
                       std);
    if (on_cuda(t)) {
        host_staged s;
        if (!host_stage_open(&s, g, t)) return -1;
        return host_stage_close(&s, g, t, hr_random_normal_(g, s.twin, mean, std));
    }
    bool f64 = t->dtype == HR_F64;
    target tg;
    if (target_open(&tg, t, f64 ? HR_F64 : HR_F32)) return -1;
    int64_t n = hr_tensor_numel(t);
    uint32_t key[2];
    hr_generator_key(g, key);
    uint64_t b0 = hr_generator_reserve(g, blocks_for(n, f64 ? 2 : 4));
    if (f64) hr_cpu_normal_f64(tg.data, n, key, b0, mean, std);
    else hr_cpu_normal_f32(tg.data, n, key, b0, mean, std);
    return target_finish(&tg, t);
}

/* ------------------------------------------------------------------ integers */

/* Whether every integer in [lo, hi] is representable in an integer dtype (floats take any). */
static bool int_range_fits(hr_dtype dt, int64_t lo, int64_t hi)
{
    switch (dt) {
    case HR_I32: return lo >= INT32_MIN && hi <= INT32_MAX;
    case HR_U8: return lo >= 0 && hi <= 255;
    case HR_BOOL: return lo >= 0 && hi <= 1;
    default: return true;
    }
}

int hr_random_randint_(hr_generator *g, hr_tensor *t, int64_t low, int64_t high)
{
    if (check_target_dev("randint", t, true)) return -1;
    if (low >= high)
        return hr_fail(HR_EINVAL, "randint: expected low < high (high is exclusive), got low=%" PRId64 " high=%" PRId64,
                       low, high);
    if (!int_range_fits(t->dtype, low, high - 1))
        return hr_fail(HR_EINVAL, "randint: values in [%" PRId64 ", %" PRId64 ") do not fit dtype %s", low, high,
                       hr_dtype_name(t->dtype));
    if (on_cuda(t)) {
        host_staged s;
        if (!host_stage_open(&s, g, t)) return -1;
        return host_stage_close(&s, g, t, hr_random_randint_(g, s.twin, low, high));
    }
    target tg;
    if (target_open(&tg, t, HR_I64)) return -1;
    int64_t n = hr_tensor_numel(t);
    uint32_t key[2];
    hr_generator_key(g, key);
    uint64_t b0 = hr_generator_reserve(g, blocks_for(n, 2));
    hr_cpu_randint_i64(tg.data, n, key, b0, low, (uint64_t)high - (uint64_t)low);
    return target_finish(&tg, t);
}

int hr_random_randperm_(hr_generator *g, hr_tensor *t)
{
    if (check_target_dev("randperm", t, true)) return -1;
    if (t->ndim != 1) {
        char buf[160];
        return hr_fail(HR_EINVAL, "randperm: expected a 1-D tensor, got %s", hr_tensor_desc(t, buf, sizeof buf));
    }
    int64_t n = t->size[0];
    if (n > 0 && !int_range_fits(t->dtype, 0, n - 1))
        return hr_fail(HR_EINVAL, "randperm: values 0..%" PRId64 " do not fit dtype %s", n - 1,
                       hr_dtype_name(t->dtype));
    if (t->dtype == HR_F32 && n > (INT64_C(1) << 24))
        return hr_fail(HR_EINVAL, "randperm: n=%" PRId64 " is too large for f32 (exact only up to 2^24)", n);
    if (on_cuda(t)) {
        host_staged s;
        if (!host_stage_open(&s, g, t)) return -1;
        return host_stage_close(&s, g, t, hr_random_randperm_(g, s.twin));
    }
    target tg;
    if (target_open(&tg, t, HR_I64)) return -1;
    uint32_t key[2];
    hr_generator_key(g, key);
    uint64_t b0 = hr_generator_reserve(g, n > 1 ? blocks_for(n - 1, 2) : 0);
    hr_cpu_randperm_i64(tg.data, n, key, b0);
    return target_finish(&tg, t);
}

/* ------------------------------------------------------------------ bernoulli / dropout */

static int bernoulli_run(hr_generator *g, hr_tensor *t, const double *p, double p0, bool invert)
{
    bool f32 = t->dtype == HR_F32;
    if (on_cuda(t) && p) { /* probabilities per element: the host's kernel */
        host_staged s;
        if (!host_stage_open(&s, g, t)) return -1;
        return host_stage_close(&s, g, t, bernoulli_run(g, s.twin, p, p0, invert));
    }
    if (on_cuda(t)) {
        uint32_t key[2];
        hr_generator_key(g, key);
        uint64_t b0 = hr_generator_reserve(g, blocks_for(hr_tensor_numel(t), 4));
        if (hr_cuda_bernoulli(t, key, b0, p0, invert)) {
            g->offset = b0;
            return -1;
        }
        hr_tensor_bump_version(t);
        return 0;
    }
    target tg;
    if (target_open(&tg, t, f32 ? HR_F32 : (t->dtype == HR_U8 ? HR_U8 : HR_BOOL))) return -1;
    int64_t n = hr_tensor_numel(t);
    uint32_t key[2];
    hr_generator_key(g, key);
    uint64_t b0 = hr_generator_reserve(g, blocks_for(n, 4));
    if (f32) hr_cpu_bernoulli_f32(tg.data, n, key, b0, p, p0, invert);
    else hr_cpu_bernoulli_u8(tg.data, n, key, b0, p, p0, invert);
    return target_finish(&tg, t);
}

int hr_random_bernoulli_(hr_generator *g, hr_tensor *t, double p)
{
    if (check_target_dev("bernoulli_", t, true)) return -1;
    if (!(p >= 0 && p <= 1)) return hr_fail(HR_EINVAL, "bernoulli_: expected p in [0, 1], got %g", p);
    return bernoulli_run(g, t, NULL, p, false);
}

int hr_random_dropout_mask_(hr_generator *g, hr_tensor *t, double p)
{
    if (check_target_dev("dropout_mask", t, true)) return -1;
    if (!(p >= 0 && p <= 1)) return hr_fail(HR_EINVAL, "dropout_mask: expected p in [0, 1], got %g", p);
    return bernoulli_run(g, t, NULL, p, true);
}

int hr_random_bernoulli_tensor_(hr_generator *g, hr_tensor *t, const hr_tensor *p)
{
    if (check_target_dev("bernoulli_", t, true)) return -1;
    if (hr_tensor_check_live(p, "bernoulli_: probabilities")) return -1;
    char bt[160], bp[160];
    if (!hr_device_eq(hr_tensor_device(p), hr_tensor_device(t)))
        return hr_fail(HR_EDEVICE, "bernoulli_: probabilities %s and output %s are on different devices",
                       hr_tensor_desc(p, bp, sizeof bp), hr_tensor_desc(t, bt, sizeof bt));
    int nout;
    int64_t sout[HR_MAX_DIMS];
    if (hr_broadcast_shape("bernoulli_", p->ndim, p->size, t->ndim, t->size, &nout, sout)) return -1;
    bool same = nout == t->ndim;
    for (int i = 0; same && i < nout; i++) same = sout[i] == t->size[i];
    if (!same)
        return hr_fail(HR_EINVAL, "bernoulli_: probabilities %s do not broadcast to the output's shape %s",
                       hr_tensor_desc(p, bp, sizeof bp), hr_shape_str(t->ndim, t->size, bt, sizeof bt));
    /* the probabilities as a contiguous f64 array in the output's element order */
    hr_tensor *pd = hr_tensor_empty(t->ndim, t->size, HR_F64, hr_cpu());
    if (!pd) return -1;
    if (hr_copy_(pd, p)) {
        hr_tensor_release(pd);
        return -1;
    }
    const double *pv = hr_tensor_data(pd);
    int64_t n = hr_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        if (!(pv[i] >= 0 && pv[i] <= 1)) {
            double bad = pv[i];
            hr_tensor_release(pd);
            return hr_fail(HR_EINVAL, "bernoulli_: expected every probability in [0, 1], got %g at flat index %" PRId64
                           " (0-based)", bad, i);
        }
    }
    int rc = bernoulli_run(g, t, pv, 0, false);
    hr_tensor_release(pd);
    return rc;
}
