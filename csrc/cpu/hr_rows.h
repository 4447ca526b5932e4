/*
 * hr_rows.h — "rows along one dimension": the geometry shared by the reduce, scan, softmax and
 * sort kernels. A tensor seen along dim d is a set of rows (every index of the other dims, in
 * row-major order) each holding n elements spaced `stride` elements apart.
 */
#ifndef HR_ROWS_H
#define HR_ROWS_H

#include <inttypes.h>

#include "hr_core.h"
#include "hr_cuda.h"

typedef struct {
    int outer_ndim;
    int64_t outer_size[HR_MAX_DIMS];
    int64_t outer_stride[HR_MAX_DIMS];
    int64_t rows;   /* product of outer sizes */
    int64_t n;      /* elements per row */
    int64_t stride; /* element stride along the row */
} hr_rows;

/* dim must be valid for ndim >= 1; a 0-dim tensor (ndim 0) is one row of one element. */
static inline void hr_rows_init(hr_rows *g, int ndim, const int64_t *size, const int64_t *stride, int dim)
{
    g->outer_ndim = 0;
    g->rows = 1;
    g->n = 1;
    g->stride = 1;
    for (int i = 0; i < ndim; i++) {
        if (i == dim) {
            g->n = size[i];
            g->stride = stride[i];
            continue;
        }
        g->outer_size[g->outer_ndim] = size[i];
        g->outer_stride[g->outer_ndim] = stride[i];
        g->outer_ndim++;
        g->rows *= size[i];
    }
}

/* Element offset of the first element of row `row`. */
static inline int64_t hr_rows_offset(const hr_rows *g, int64_t row)
{
    int64_t off = 0;
    for (int d = g->outer_ndim - 1; d >= 0 && row > 0; d--) {
        int64_t sz = g->outer_size[d];
        off += (row % sz) * g->outer_stride[d];
        row /= sz;
    }
    return off;
}

/* The checks every op of this family starts with: a live tensor on the CPU, or on a CUDA device
 * for the ops that have a CUDA path (cuda_ok). */
static inline int hr_rows_check_input_dev(const hr_tensor *t, const char *op, bool cuda_ok)
{
    if (hr_tensor_check_live(t, op)) return -1;
    if (hr_tensor_device(t).type == HR_CUDA && hr_cuda_compiled())
        return cuda_ok ? 0 : hr_cuda_unsupported(op, t);
    if (hr_tensor_device(t).type != HR_CPU) {
        char buf[16];
        return hr_fail(HR_EDEVICE, "%s: the tensor is on %s, which needs the CUDA backend (this build has none)", op,
                       hr_device_str(hr_tensor_device(t), buf, sizeof buf));
    }
    return 0;
}

static inline int hr_rows_check_input(const hr_tensor *t, const char *op) { return hr_rows_check_input_dev(t, op, false); }

/* The ops of this family without a CUDA kernel (sorting, scans, the rarer reductions) run a CUDA
 * tensor on the host: hr_rows_on_host(t) says whether to, hr_rows_host_copy makes the host copy,
 * hr_rows_back moves a host result (consumed) to the device, or returns NULL. */
static inline bool hr_rows_on_host(const hr_tensor *t)
{
    return t && t->storage && hr_tensor_device(t).type == HR_CUDA && hr_cuda_compiled();
}

static inline hr_tensor *hr_rows_host_copy(const hr_tensor *t)
{
    hr_tensor *h = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_cpu());
    if (h && hr_copy_(h, t)) {
        hr_tensor_release(h);
        return NULL;
    }
    return h;
}

static inline hr_tensor *hr_rows_back(hr_tensor *h, hr_device dev)
{
    if (!h) return NULL;
    hr_tensor *d = hr_tensor_empty(h->ndim, h->size, h->dtype, dev);
    if (d && hr_copy_(d, h)) {
        hr_tensor_release(d);
        d = NULL;
    }
    hr_tensor_release(h);
    return d;
}

/* The (values, indices) results of a host run (each consumed) moved to dev into *values and
 * *indices, for the outputs asked for (non-NULL); 0, or -1 with nothing returned. */
static inline int hr_rows_results_back(hr_tensor *hv, hr_tensor *hi, hr_device dev, hr_tensor **values,
                                       hr_tensor **indices)
{
    hr_tensor *v = values ? hr_rows_back(hv, dev) : NULL;
    hr_tensor *i = indices ? hr_rows_back(hi, dev) : NULL;
    if ((values && !v) || (indices && !i)) {
        hr_tensor_release(v);
        hr_tensor_release(i);
        return -1;
    }
    if (values) *values = v;
    if (indices) *indices = i;
    return 0;
}

#endif
