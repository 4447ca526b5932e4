/* hr_device.c — device-independent helpers of the CUDA backend: the "no CUDA path" error and the
 * differentiable move between devices (compiled in every build). */
#include <stdatomic.h>

#include "hr_autograd.h"
#include "hr_cuda.h"

static atomic_bool gpu_formulations_on_cpu;

bool hr_gpu_formulations_on_cpu(void) { return atomic_load_explicit(&gpu_formulations_on_cpu, memory_order_relaxed); }
void hr_set_gpu_formulations_on_cpu(bool on) { atomic_store(&gpu_formulations_on_cpu, on); }

int hr_cuda_unsupported(const char *op, const hr_tensor *t)
{
    char d[160];
    const char *desc = t && t->storage ? hr_tensor_desc(t, d, sizeof d) : "a CUDA tensor";
    if (hr_cuda_compiled())
        return hr_fail(HR_EDEVICE, "%s has no CUDA implementation yet (got %s); move the tensors to the CPU with :cpu()",
                       op, desc);
    return hr_fail(HR_EDEVICE, "%s: CUDA tensors need the CUDA backend, which this build lacks (got %s)", op, desc);
}

void *hr_cuda_unsupported_null(const char *op, const hr_tensor *t)
{
    hr_cuda_unsupported(op, t);
    return NULL;
}

typedef struct {
    hr_dtype dtype;
    hr_device device;
} to_ctx;

/* The gradient goes back to the source's device and dtype. */
static int to_backward(hr_node *node, const hr_tensor *g, hr_tensor **gi)
{
    const to_ctx *c = node->ctx;
    hr_tensor *r = hr_tensor_empty(g->ndim, g->size, c->dtype, c->device);
    if (!r) return -1;
    if (hr_copy_(r, g)) {
        hr_tensor_release(r);
        return -1;
    }
    gi[0] = r;
    return 0;
}

hr_tensor *hr_ag_to(hr_tensor *t, hr_dtype dt, hr_device dev)
{
    if (hr_tensor_check_live(t, "to")) return NULL;
    if (dt == t->dtype && hr_device_eq(dev, hr_tensor_device(t))) {
        hr_tensor_retain(t);
        return t;
    }
    if (dev.type == HR_CUDA && hr_cuda_check_device(dev.index, "to")) return NULL;
    hr_tensor *out = hr_tensor_empty(t->ndim, t->size, dt, dev);
    if (!out) return NULL;
    if (hr_copy_(out, t)) {
        hr_tensor_release(out);
        return NULL;
    }
    if (hr_dtype_is_float(dt) && hr_dtype_is_float(t->dtype) && hr_should_record(1, &t)) {
        hr_node *node = hr_node_new("to", to_backward, 1, &t, sizeof(to_ctx));
        if (!node) {
            hr_tensor_release(out);
            return NULL;
        }
        to_ctx *c = node->ctx;
        c->dtype = t->dtype;
        c->device = hr_tensor_device(t);
        hr_node_attach(node, out);
    }
    return out;
}
