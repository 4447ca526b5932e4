/* hr_iter.c — broadcasting rules and the strided N-d walk every generic CPU loop is built on. */
#include <inttypes.h>
#include <string.h>

#include "hr_core.h"

int hr_broadcast_shape(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb, int *nout, int64_t *sout)
{
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int ia = i - (n - na), ib = i - (n - nb);
        int64_t a = ia >= 0 ? sa[ia] : 1;
        int64_t b = ib >= 0 ? sb[ib] : 1;
        if (a != b && a != 1 && b != 1) {
            char x[160], y[160];
            return hr_fail(HR_EINVAL, "%s: shapes %s and %s cannot be broadcast (dimension %d: %" PRId64 " vs %" PRId64 ")",
                           op, hr_shape_str(na, sa, x, sizeof x), hr_shape_str(nb, sb, y, sizeof y), i + 1, a, b);
        }
        sout[i] = a == 1 ? b : a;
    }
    *nout = n;
    return 0;
}

void hr_broadcast_strides(const hr_tensor *t, int ndim, const int64_t *size, int64_t *stride)
{
    int lead = ndim - t->ndim;
    for (int i = 0; i < ndim; i++) {
        int j = i - lead;
        stride[i] = (j < 0 || (t->size[j] == 1 && size[i] != 1)) ? 0 : t->stride[j];
    }
}

void hr_iter_init(hr_iter *it, int ndim, const int64_t *size)
{
    memset(it, 0, sizeof *it);
    it->ndim = ndim;
    for (int i = 0; i < ndim; i++) it->size[i] = size[i];
}

void hr_iter_add(hr_iter *it, void *base, size_t elsize, const int64_t *stride)
{
    int k = it->nops++;
    it->base[k] = base;
    it->elsize[k] = elsize;
    for (int i = 0; i < it->ndim; i++) it->stride[k][i] = stride[i];
}

/* Drops size-1 dims and merges neighbours that every operand walks contiguously. */
static void coalesce(hr_iter *it)
{
    int n = 0;
    for (int i = 0; i < it->ndim; i++) {
        if (it->size[i] == 1) continue;
        it->size[n] = it->size[i];
        for (int k = 0; k < it->nops; k++) it->stride[k][n] = it->stride[k][i];
        n++;
    }
    it->ndim = n;
    if (n < 2) return;
    int out = 0;
    for (int i = 1; i < n; i++) {
        bool mergeable = true;
        for (int k = 0; k < it->nops; k++)
            if (it->stride[k][out] != it->stride[k][i] * it->size[i]) mergeable = false;
        if (mergeable) {
            it->size[out] *= it->size[i];
            for (int k = 0; k < it->nops; k++) it->stride[k][out] = it->stride[k][i];
        } else {
            out++;
            it->size[out] = it->size[i];
            for (int k = 0; k < it->nops; k++) it->stride[k][out] = it->stride[k][i];
        }
    }
    it->ndim = out + 1;
}

typedef struct {
    const hr_iter *it;
    hr_iter_kernel kernel;
    void *ctx;
} walk_job;

static void walk_rows(void *arg, int64_t begin, int64_t end)
{
    const walk_job *job = arg;
    const hr_iter *it = job->it;
    int inner = it->ndim - 1;
    int64_t byte_strides[HR_ITER_MAX];
    for (int k = 0; k < it->nops; k++) byte_strides[k] = it->stride[k][inner] * (int64_t)it->elsize[k];
    for (int64_t row = begin; row < end; row++) {
        char *ptrs[HR_ITER_MAX];
        int64_t rem = row;
        int64_t off[HR_ITER_MAX] = {0};
        for (int d = inner - 1; d >= 0; d--) {
            int64_t idx = rem % it->size[d];
            rem /= it->size[d];
            for (int k = 0; k < it->nops; k++) off[k] += idx * it->stride[k][d];
        }
        for (int k = 0; k < it->nops; k++) ptrs[k] = it->base[k] + off[k] * (int64_t)it->elsize[k];
        job->kernel(job->ctx, it->size[inner], ptrs, byte_strides);
    }
}

void hr_iter_run(hr_iter *it, hr_iter_kernel kernel, void *ctx, bool parallel)
{
    for (int i = 0; i < it->ndim; i++)
        if (it->size[i] == 0) return;
    coalesce(it);
    if (it->ndim == 0) {
        int64_t zero[HR_ITER_MAX] = {0};
        kernel(ctx, 1, it->base, zero);
        return;
    }
    int64_t rows = 1;
    for (int d = 0; d < it->ndim - 1; d++) rows *= it->size[d];
    int64_t inner = it->size[it->ndim - 1];
    walk_job job = {it, kernel, ctx};
    if (parallel && rows > 1 && rows * inner >= 32768) {
        int64_t grain = 16384 / inner + 1;
        hr_parallel_for(rows, grain, walk_rows, &job);
    } else if (parallel && rows == 1 && inner >= 65536) {
        /* one long run: split it into pieces so both cores share it */
        hr_iter split = *it;
        int64_t piece = 16384;
        split.ndim = 2;
        split.size[0] = inner / piece;
        split.size[1] = piece;
        for (int k = 0; k < it->nops; k++) {
            split.stride[k][1] = it->stride[k][0];
            split.stride[k][0] = it->stride[k][0] * piece;
        }
        walk_job sjob = {&split, kernel, ctx};
        hr_parallel_for(split.size[0], 1, walk_rows, &sjob);
        int64_t done = split.size[0] * piece;
        if (done < inner) {
            char *ptrs[HR_ITER_MAX];
            int64_t bs[HR_ITER_MAX];
            for (int k = 0; k < it->nops; k++) {
                ptrs[k] = it->base[k] + done * it->stride[k][0] * (int64_t)it->elsize[k];
                bs[k] = it->stride[k][0] * (int64_t)it->elsize[k];
            }
            kernel(ctx, inner - done, ptrs, bs);
        }
    } else {
        walk_rows(&job, 0, rows);
    }
}
