/* cpu/dropout.c — inverted dropout from the Philox stream: noise = keep / (1 - p) with
 * keep = u >= p (hr_random_dropout_mask_), y = x * noise, and the same noise scales the gradient. */
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

static hr_tensor *times(hr_tensor *a, hr_tensor *noise)
{
    hr_tensor *ac = hr_cast(a, noise->dtype);
    if (!ac) return NULL;
    mul_job j = {hr_tensor_data(ac), hr_tensor_data(noise), hr_tensor_data(ac), noise->dtype};
    hr_parallel_for(hr_tensor_numel(ac), 1 << 15, mul_range, &j);
    return ac;
}

static int dropout_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    hr_tensor *noise = hr_node_saved(node, 0);
    if (!noise) return -1;
    gi[0] = times((hr_tensor *)grad, noise);
    return gi[0] ? 0 : -1;
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
    if (y && hr_should_record(1, &x)) {
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
