/* cpu/dropout.c — inverted dropout from the Philox stream: noise = keep / (1 - p) with
 * keep = u >= p (hr_random_dropout_mask_), y = x * noise, and the same noise scales the gradient.
 * An f32 dropout keeps its Philox counters, not its noise: the backward draws the mask again. */
#include "cpu/hr_dropout.h"
#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_nn.h"
#include "hr_random.h"

typedef struct {
    const void *a, *b;
    void *out;
    hr_dtype dt;
} mul_job;

static void mul_range(void *arg, int64_t begin, int64_t end)
{
    const mul_job *j = arg;
    if (j->dt == HR_F32) {
        const float *a = j->a, *b = j->b;
        float *o = j->out;
        for (int64_t i = begin; i < end; i++) o[i] = a[i] * b[i];
    } else {
        const double *a = j->a, *b = j->b;
        double *o = j->out;
        for (int64_t i = begin; i < end; i++) o[i] = a[i] * b[i];
    }
}

/* a * noise into a new tensor (a read as it is when it already has noise's layout and dtype). */
static hr_tensor *times(hr_tensor *a, hr_tensor *noise)
{
    hr_tensor *ac = hr_readable_as(a, noise->dtype);
    hr_tensor *out = ac ? hr_tensor_empty(noise->ndim, noise->size, noise->dtype, hr_cpu()) : NULL;
    if (out) {
        mul_job j = {hr_tensor_data(ac), hr_tensor_data(noise), hr_tensor_data(out), noise->dtype};
        hr_parallel_for(hr_tensor_numel(out), 1 << 15, mul_range, &j);
    }
    hr_tensor_release(ac);
    return out;
}

/* f32 dropout in one pass: the draws of hr_random_dropout_mask_ (element i: word i % 4 of block
 * block0 + i / 4, kept when u >= p), noise = keep ? 1 / (float)(1 - p) : 0 and y = x * noise, the
 * numbers of the mask, divide and multiply passes. */
typedef struct {
    const float *x;
    float *y, *noise;
    const float *add; /* drop_add_blocks: y = x * noise + add */
    int64_t n;
    uint32_t key[2];
    uint64_t block0;
    double p;
    float keep;
} drop_job;

static void drop_blocks(void *ctx, int64_t bb, int64_t be)
{
    const drop_job *j = ctx;
    int64_t i = bb * 4, last = be * 4 < j->n ? be * 4 : j->n;
    const uint32_t bound = hr_philox_u24_bound(j->p);
    const float keep = j->keep;
    const float *restrict x = j->x;
    float *restrict y = j->y, *restrict noise = j->noise;
    uint32_t words[32];
    for (; i + 32 <= last; i += 32) {
        hr_philox_words32(j->key, j->block0 + (uint64_t)(i >> 2), words);
        if (noise) {
            for (int t = 0; t < 32; t++) { /* one vector pass: compare, select, multiply */
                float nz = (words[t] >> 8) < bound ? 0.0f : keep;
                noise[i + t] = nz;
                y[i + t] = x[i + t] * nz;
            }
        } else {
            for (int t = 0; t < 32; t++) y[i + t] = x[i + t] * ((words[t] >> 8) < bound ? 0.0f : keep);
        }
    }
    uint32_t w[4];
    for (int64_t start = i; i < last; i++) {
        if (i == start || (i & 3) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 2), w);
        float nz = (double)hr_philox_u24(w[i & 3]) < j->p ? 0.0f : j->keep;
        if (noise) noise[i] = nz;
        y[i] = x[i] * nz;
    }
}

/* The sum of drop_blocks' output and another array (drop_job.add), a stretch at a time while it is
 * in cache. The product is rounded before the sum, as the dropout and the add give it apart: the
 * add is a loop of its own over the stored products, which the compiler cannot contract into a
 * fused multiply-add. */
enum { DROP_ADD_STRETCH = 1024 }; /* counter blocks: 4096 floats of each array */

static void add_into(float *restrict y, const float *restrict add, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = y[i] + add[i];
}

static void drop_add_blocks(void *ctx, int64_t bb, int64_t be)
{
    const drop_job *j = ctx;
    for (int64_t b = bb; b < be; b += DROP_ADD_STRETCH) {
        int64_t e = be - b < DROP_ADD_STRETCH ? be : b + DROP_ADD_STRETCH;
        drop_blocks(ctx, b, e);
        int64_t i0 = b * 4, i1 = e * 4 < j->n ? e * 4 : j->n;
        add_into(j->y + i0, j->add + i0, i1 - i0);
    }
}

void hr_drop_counters_draw(struct hr_generator *g, int64_t n, double p, hr_drop_counters *c)
{
    hr_generator_key(g, c->key);
    c->block0 = hr_generator_reserve(g, (uint64_t)((n + 3) / 4));
    c->p = p;
    c->keep = 1.0f / (float)(1.0 - p);
}

void hr_drop_apply_f32(const hr_drop_counters *c, const float *x, const float *add, float *y, int64_t n)
{
    drop_job j = {x, y, NULL, add, n, {c->key[0], c->key[1]}, c->block0, c->p, c->keep};
    hr_parallel_for((n + 3) / 4, 1 << 11, add ? drop_add_blocks : drop_blocks, &j);
}

/* The gradient: g * noise with the forward's mask drawn again (drop_blocks over g), the numbers of
 * the product with a saved noise tensor, which the forward no longer writes or keeps. */
static int dropout_redraw_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    hr_tensor *g = hr_readable_as((hr_tensor *)grad, HR_F32);
    hr_tensor *dx = g ? hr_tensor_empty(grad->ndim, grad->size, HR_F32, hr_cpu()) : NULL;
    if (!dx) {
        hr_tensor_release(g);
        return -1;
    }
    hr_drop_apply_f32(node->ctx, hr_tensor_data(g), NULL, hr_tensor_data(dx), hr_tensor_numel(dx));
    hr_tensor_release(g);
    gi[0] = dx;
    return 0;
}

static hr_tensor *dropout_f32(struct hr_generator *g, hr_tensor *x, double p)
{
    hr_tensor *xc = hr_contiguous(x);
    hr_tensor *y = xc ? hr_tensor_empty(x->ndim, x->size, HR_F32, hr_cpu()) : NULL;
    if (!y) {
        hr_tensor_release(xc);
        return NULL;
    }
    hr_drop_counters c;
    hr_drop_counters_draw(g, hr_tensor_numel(x), p, &c);
    hr_drop_apply_f32(&c, hr_tensor_data(xc), NULL, hr_tensor_data(y), hr_tensor_numel(x));
    hr_tensor_release(xc);
    if (hr_should_record(1, &x)) {
        hr_node *node = hr_node_new("dropout", dropout_redraw_backward, 1, &x, sizeof c);
        if (!node) {
            hr_tensor_release(y);
            return NULL;
        }
        *(hr_drop_counters *)node->ctx = c;
        hr_node_attach(node, y);
    }
    return y;
}

static int dropout_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    hr_tensor *noise = hr_node_saved(node, 0);
    if (!noise) return -1;
    gi[0] = times((hr_tensor *)grad, noise);
    return gi[0] ? 0 : -1;
}

/* Puts y's node on the tape when x needs one (the node keeps noise); consumes the reference to
 * noise. Returns y, or NULL (y released) when the node cannot be made. */
static hr_tensor *record_dropout(hr_tensor *x, hr_tensor *y, hr_tensor *noise)
{
    if (hr_should_record(1, &x)) {
        hr_node *node = hr_node_new("dropout", dropout_backward, 1, &x, 0);
        if (!node || hr_node_save(node, noise) < 0) {
            hr_node_release(node);
            hr_tensor_release(y);
            y = NULL;
        } else {
            hr_node_attach(node, y);
        }
    }
    hr_tensor_release(noise);
    return y;
}

hr_tensor *hr_dropout(struct hr_generator *g, hr_tensor *x, double p, bool training)
{
    if (hr_tensor_check_live(x, "dropout")) return NULL;
    if (!(p >= 0 && p <= 1)) return hr_fail_null(HR_EINVAL, "dropout: probability must be in [0, 1], got %g", p);
    if (!training || p == 0) { /* identity: the same tensor, graph included */
        hr_tensor_retain(x);
        return x;
    }
    bool half_ok = hr_tensor_device(x).type == HR_CUDA && (x->dtype == HR_BF16 || x->dtype == HR_F16);
    if (x->dtype != HR_F32 && x->dtype != HR_F64 && !half_ok)
        return hr_fail_null(HR_EINVAL, "dropout: input is %s; f32 and f64 are supported (and bf16/f16 on a GPU)",
                            hr_dtype_name(x->dtype));
    if (hr_tensor_device(x).type != HR_CPU) return hr_cuda_dropout(g, x, p);
    if (x->dtype == HR_F32 && p < 1) return dropout_f32(g, x, p);
    hr_tensor *noise = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu());
    if (!noise) return NULL;
    if (hr_random_dropout_mask_(g, noise, p)) {
        hr_tensor_release(noise);
        return NULL;
    }
    if (p < 1) {
        /* keep / (1 - p), rounded once to the dtype, as the reference's bernoulli_(1-p).div_(1-p) */
        int64_t n = hr_tensor_numel(noise);
        if (x->dtype == HR_F32) {
            float *v = hr_tensor_data(noise);
            float s = (float)(1.0 - p);
            for (int64_t i = 0; i < n; i++) v[i] = v[i] / s;
        } else {
            double *v = hr_tensor_data(noise);
            for (int64_t i = 0; i < n; i++) v[i] = v[i] / (1.0 - p);
        }
    }
    hr_tensor *y = times(x, noise);
    if (!y) {
        hr_tensor_release(noise);
        return NULL;
    }
    return record_dropout(x, y, noise);
}
