/*
 * dist_reducer.c — gradient averaging over the ranks, overlapped with the backward pass (see
 * hr_dist.h, hr_grad_reducer).
 *
 * The parameters are cut into buckets of about bucket_bytes, in reverse order of the list (the
 * backward pass reaches the last layers first), one dtype per bucket; each bucket is one buffer
 * holding its gradients and, after them, one has-gradient flag per parameter. While the reducer is
 * armed, the backward engine reports every leaf whose gradient is complete (hr_backward_set_leaf_
 * hook); its gradient is copied into its bucket and a bucket whose parameters are all in starts a
 * non-blocking sum over the ranks (MPI_Iallreduce) at once. The parameters the pass will not reach
 * (heads of other tasks, frozen parts) are taken as soon as the pass has found its graph. Buckets
 * start strictly in order, the same order on every rank (MPI requires it of collectives), so a
 * bucket waits for the ones before it. finish() starts what the pass left (missing gradients count as zeros with flag 0), waits for
 * everything, and writes back the means: the numbers of hero.dist.average_gradients, one bucket
 * at a time.
 */
#include "hr_autograd.h"
#include "hr_dist.h"
#include "dist_internal.h"

#include <stdlib.h>
#include <string.h>

#ifndef HERO_WITH_MPI

#define NO_MPI_MSG "hero was built without MPI (install libopenmpi-dev and rebuild)"
hr_grad_reducer *hr_grad_reducer_new(hr_tensor *const *params, int n, int64_t bucket_bytes)
{
    (void)params, (void)n, (void)bucket_bytes;
    return hr_fail_null(HR_EDEVICE, NO_MPI_MSG);
}
void hr_grad_reducer_free(hr_grad_reducer *r) { (void)r; }
int hr_grad_reducer_begin(hr_grad_reducer *r) { (void)r; return hr_fail(HR_EDEVICE, NO_MPI_MSG); }
int hr_grad_reducer_finish(hr_grad_reducer *r, double *extra, int n_extra)
{
    (void)r, (void)extra, (void)n_extra;
    return hr_fail(HR_EDEVICE, NO_MPI_MSG);
}
void hr_grad_reducer_counts(const hr_grad_reducer *r, int *buckets, int *early)
{
    (void)r;
    *buckets = *early = 0;
}

#else /* HERO_WITH_MPI */

#include <limits.h>
#include <mpi.h>

typedef struct {
    hr_dtype dt;
    int count;        /* its parameters */
    int64_t elems;    /* gradient elements; the count flags follow them */
    void *buf;
    int ready;
    bool started;
    MPI_Request req;
} bucket;

struct hr_grad_reducer {
    int n;
    hr_tensor **params;  /* retained */
    int *bucket_of;      /* per parameter */
    int64_t *offset_of;  /* per parameter: element offset in its bucket */
    int *slot_of;        /* per parameter: index among its bucket's parameters (its flag) */
    bool *ready;         /* per parameter, this pass */
    int nbuckets;
    bucket *buckets;
    int next_start;      /* buckets start in order */
    int started_early;   /* buckets started during the last pass */
    bool armed;
    int hcap;            /* open-addressing table: tensor -> parameter index */
    hr_tensor **hkey;
    int *hval;
};

static size_t hash_ptr(const void *p, int cap) { return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull % (uint64_t)cap; }

static int find_param(const hr_grad_reducer *r, const hr_tensor *t)
{
    for (size_t h = hash_ptr(t, r->hcap);; h = (h + 1) % (size_t)r->hcap) {
        if (!r->hkey[h]) return -1;
        if (r->hkey[h] == t) return r->hval[h];
    }
}

static hr_grad_reducer *reducer_layout(const char *op, hr_tensor *const *params, int n, int64_t bucket_bytes);

static void *bucket_at(const bucket *b, int64_t i) { return (char *)b->buf + (size_t)i * hr_dtype_size(b->dt); }

static MPI_Datatype type_of(hr_dtype dt) { return dt == HR_F32 ? MPI_FLOAT : MPI_DOUBLE; }

void hr_grad_reducer_free(hr_grad_reducer *r)
{
    if (!r) return;
    if (r->armed) hr_backward_set_leaf_hook(NULL, NULL);
    for (int k = 0; k < r->nbuckets; k++) {
        /* a pass abandoned by an error: its requests must complete before the buffers go */
        if (r->buckets[k].started) MPI_Wait(&r->buckets[k].req, MPI_STATUS_IGNORE);
        free(r->buckets[k].buf);
    }
    for (int i = 0; i < r->n; i++) hr_tensor_release(r->params ? r->params[i] : NULL);
    free(r->params);
    free(r->bucket_of);
    free(r->offset_of);
    free(r->slot_of);
    free(r->ready);
    free(r->buckets);
    free(r->hkey);
    free(r->hval);
    free(r);
}

hr_grad_reducer *hr_grad_reducer_new(hr_tensor *const *list, int count, int64_t bucket_bytes)
{
    const char *op = "hero.dist.GradReducer";
    if (hr_dist_check_ready(op)) return NULL;
    if (count < 0 || bucket_bytes < 1) return hr_fail_null(HR_EINVAL, "%s: bad arguments", op);
    for (int i = 0; i < count; i++) {
        const hr_tensor *t = list[i];
        if (hr_tensor_check_live(t, op)) return NULL;
        if (hr_tensor_device(t).type != HR_CPU || (t->dtype != HR_F32 && t->dtype != HR_F64))
            return hr_fail_null(HR_EINVAL, "%s: parameter %d is %s; the reducer takes f32/f64 CPU parameters", op,
                                i + 1, hr_dtype_name(t->dtype));
        if (hr_tensor_numel(t) >= INT_MAX / 2)
            return hr_fail_null(HR_EINVAL, "%s: parameter %d has too many elements for one MPI call", op, i + 1);
    }
    /* a tensor listed twice (tied weights) is reduced once */
    hr_tensor **params = malloc(sizeof *params * (size_t)(count > 0 ? count : 1));
    if (!params) return hr_fail_null(HR_ENOMEM, "%s: out of memory", op);
    int n = 0;
    for (int i = 0; i < count; i++) {
        bool seen = false;
        for (int j = 0; j < n && !seen; j++) seen = params[j] == list[i];
        if (!seen) params[n++] = list[i];
    }
    hr_grad_reducer *r = reducer_layout(op, params, n, bucket_bytes);
    free(params);
    return r;
}

static hr_grad_reducer *reducer_layout(const char *op, hr_tensor *const *params, int n, int64_t bucket_bytes)
{
    hr_grad_reducer *r = calloc(1, sizeof *r);
    if (!r) return hr_fail_null(HR_ENOMEM, "%s: out of memory", op);
    size_t m = (size_t)(n > 0 ? n : 1);
    r->n = n;
    r->params = calloc(m, sizeof *r->params);
    r->bucket_of = calloc(m, sizeof *r->bucket_of);
    r->offset_of = calloc(m, sizeof *r->offset_of);
    r->slot_of = calloc(m, sizeof *r->slot_of);
    r->ready = calloc(m, sizeof *r->ready);
    r->buckets = calloc(m, sizeof *r->buckets);
    r->hcap = 16;
    while (r->hcap < 2 * n + 1) r->hcap *= 2;
    r->hkey = calloc((size_t)r->hcap, sizeof *r->hkey);
    r->hval = calloc((size_t)r->hcap, sizeof *r->hval);
    if (!r->params || !r->bucket_of || !r->offset_of || !r->slot_of || !r->ready || !r->buckets ||
        !r->hkey || !r->hval) {
        hr_grad_reducer_free(r);
        return hr_fail_null(HR_ENOMEM, "%s: out of memory", op);
    }
    for (int i = 0; i < n; i++) {
        hr_tensor_retain(params[i]);
        r->params[i] = params[i];
        size_t h = hash_ptr(params[i], r->hcap);
        while (r->hkey[h]) h = (h + 1) % (size_t)r->hcap;
        r->hkey[h] = params[i];
        r->hval[h] = i;
    }
    /* buckets, last parameter first; one open bucket per dtype */
    int open[2] = {-1, -1};
    int64_t total = 0;
    for (int i = n - 1; i >= 0; i--) {
        hr_dtype dt = params[i]->dtype;
        int d = dt == HR_F32 ? 0 : 1;
        int64_t numel = hr_tensor_numel(params[i]), cap = bucket_bytes / (int64_t)hr_dtype_size(dt);
        bucket *b = open[d] >= 0 ? &r->buckets[open[d]] : NULL;
        if (!b || (b->elems > 0 && b->elems + numel > cap) || b->elems + numel + b->count + 1 >= INT_MAX) {
            open[d] = r->nbuckets++;
            b = &r->buckets[open[d]];
            b->dt = dt;
        }
        r->bucket_of[i] = open[d];
        r->offset_of[i] = b->elems;
        r->slot_of[i] = b->count;
        b->elems += numel;
        b->count++;
        total += numel;
    }
    for (int k = 0; k < r->nbuckets; k++) {
        bucket *b = &r->buckets[k];
        b->buf = malloc((size_t)(b->elems + b->count) * hr_dtype_size(b->dt));
        if (!b->buf) {
            hr_grad_reducer_free(r);
            return hr_fail_null(HR_ENOMEM, "%s: out of memory for the gradient buckets", op);
        }
    }
    /* every rank must cut the same buckets, or the collectives would not match */
    int64_t vals[3] = {n, total, r->nbuckets};
    static const char *const names[3] = {"parameter counts", "parameter element totals", "bucket counts"};
    if (hr_dist_agree(op, vals, names, 3)) {
        hr_grad_reducer_free(r);
        return NULL;
    }
    return r;
}

void hr_grad_reducer_counts(const hr_grad_reducer *r, int *buckets, int *early)
{
    *buckets = r->nbuckets;
    *early = r->started_early;
}

static int start_bucket(hr_grad_reducer *r, int k)
{
    bucket *b = &r->buckets[k];
    int rc = MPI_Iallreduce(MPI_IN_PLACE, b->buf, (int)(b->elems + b->count), type_of(b->dt), MPI_SUM, MPI_COMM_WORLD,
                            &b->req);
    if (rc != MPI_SUCCESS) return hr_dist_mpi_fail(rc, "hero.dist: gradient bucket");
    b->started = true;
    return 0;
}

/* Copies parameter i's gradient (or zeros) and its flag into its bucket. */
static void stage(hr_grad_reducer *r, int i, bool has_grad)
{
    bucket *b = &r->buckets[r->bucket_of[i]];
    hr_tensor *p = r->params[i];
    int64_t numel = hr_tensor_numel(p);
    size_t es = hr_dtype_size(b->dt);
    void *dst = bucket_at(b, r->offset_of[i]), *flag = bucket_at(b, b->elems + r->slot_of[i]);
    if (has_grad) memcpy(dst, hr_tensor_data(p->grad), (size_t)numel * es);
    else memset(dst, 0, (size_t)numel * es);
    if (b->dt == HR_F32) *(float *)flag = has_grad ? 1.0f : 0.0f;
    else *(double *)flag = has_grad ? 1.0 : 0.0;
}

/* Parameter i's gradient, as it now is (or its absence), goes into its bucket. */
static int take(hr_grad_reducer *r, int i)
{
    hr_tensor *p = r->params[i];
    if (p->grad && (p->grad->dtype != p->dtype || !hr_tensor_is_contiguous(p->grad))) {
        hr_tensor *c = hr_cast(p->grad, p->dtype); /* the gradient the optimizer will read */
        if (!c) return -1;
        hr_tensor_release(p->grad);
        p->grad = c;
    }
    stage(r, i, p->grad != NULL);
    r->ready[i] = true;
    r->buckets[r->bucket_of[i]].ready++;
    return 0;
}

static int leaf_ready(hr_tensor *leaf, void *ctx)
{
    hr_grad_reducer *r = ctx;
    if (!leaf) {
        /* the pass found its graph: the parameters it will not reach are complete already */
        for (int i = 0; i < r->n; i++)
            if (!r->ready[i] && !hr_backward_leaf_pending(r->params[i]) && take(r, i)) return -1;
    } else {
        int i = find_param(r, leaf);
        if (i < 0 || r->ready[i]) return 0;
        if (take(r, i)) return -1;
    }
    while (r->next_start < r->nbuckets && r->buckets[r->next_start].ready == r->buckets[r->next_start].count) {
        if (start_bucket(r, r->next_start)) return -1;
        r->next_start++;
        r->started_early++;
    }
    /* let MPI move the started sums along while the pass goes on */
    for (int k = 0; k < r->next_start; k++) {
        int done = 0;
        if (r->buckets[k].started) MPI_Test(&r->buckets[k].req, &done, MPI_STATUS_IGNORE);
        if (!done) break;
    }
    return 0;
}

int hr_grad_reducer_begin(hr_grad_reducer *r)
{
    if (hr_dist_check_ready("hero.dist.GradReducer:begin")) return -1;
    if (r->armed) return hr_fail(HR_EINVAL, "hero.dist.GradReducer:begin: already begun (call finish first)");
    for (int k = 0; k < r->nbuckets; k++)
        if (r->buckets[k].started) return hr_fail(HR_EINVAL, "hero.dist.GradReducer:begin: a bucket is still in flight");
    memset(r->ready, 0, sizeof *r->ready * (size_t)(r->n > 0 ? r->n : 1));
    for (int k = 0; k < r->nbuckets; k++) r->buckets[k].ready = 0;
    r->next_start = 0;
    r->started_early = 0;
    r->armed = true;
    hr_backward_set_leaf_hook(leaf_ready, r);
    return 0;
}

/* The mean of bucket slice for parameter i into its gradient (made when missing). */
static int write_back(hr_grad_reducer *r, int i, int world)
{
    bucket *b = &r->buckets[r->bucket_of[i]];
    hr_tensor *p = r->params[i];
    double flag = b->dt == HR_F32 ? *(float *)bucket_at(b, b->elems + r->slot_of[i])
                                  : *(double *)bucket_at(b, b->elems + r->slot_of[i]);
    if (flag <= 0) return 0; /* no rank had a gradient */
    int64_t numel = hr_tensor_numel(p);
    if (b->dt == HR_F32) {
        float *x = bucket_at(b, r->offset_of[i]);
        for (int64_t j = 0; j < numel; j++) x[j] /= (float)world;
    } else {
        double *x = bucket_at(b, r->offset_of[i]);
        for (int64_t j = 0; j < numel; j++) x[j] /= (double)world;
    }
    if (!p->grad) {
        p->grad = hr_tensor_empty(p->ndim, p->size, p->dtype, hr_cpu());
        if (!p->grad) return -1;
    }
    if (hr_tensor_is_contiguous(p->grad) && p->grad->dtype == p->dtype) {
        memcpy(hr_tensor_data(p->grad), bucket_at(b, r->offset_of[i]), (size_t)numel * hr_dtype_size(b->dt));
    } else {
        hr_tensor *tmp = hr_tensor_empty(p->ndim, p->size, p->dtype, hr_cpu());
        if (!tmp) return -1;
        memcpy(hr_tensor_data(tmp), bucket_at(b, r->offset_of[i]), (size_t)numel * hr_dtype_size(b->dt));
        int rc = hr_copy_(p->grad, tmp);
        hr_tensor_release(tmp);
        if (rc) return -1;
    }
    hr_tensor_bump_version(p->grad);
    return 0;
}

int hr_grad_reducer_finish(hr_grad_reducer *r, double *extra, int n_extra)
{
    const char *op = "hero.dist.GradReducer:finish";
    if (!r->armed) return hr_fail(HR_EINVAL, "%s: begin was not called", op);
    hr_backward_set_leaf_hook(NULL, NULL);
    r->armed = false;
    int rc = 0;
    /* what the pass did not report (no backward ran, or it failed): taken as it is now */
    for (int i = 0; i < r->n && rc == 0; i++)
        if (!r->ready[i]) rc = take(r, i);
    for (int k = r->next_start; k < r->nbuckets && rc == 0; k++) {
        rc = start_bucket(r, k);
        if (rc == 0) r->next_start = k + 1;
    }
    hr_dist_busy_begin(op);
    for (int k = 0; k < r->nbuckets; k++) {
        if (!r->buckets[k].started) continue;
        int mrc = MPI_Wait(&r->buckets[k].req, MPI_STATUS_IGNORE);
        r->buckets[k].started = false;
        if (mrc != MPI_SUCCESS && rc == 0) rc = hr_dist_mpi_fail(mrc, op);
    }
    if (rc == 0 && n_extra > 0) {
        int mrc = MPI_Allreduce(MPI_IN_PLACE, extra, n_extra, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (mrc != MPI_SUCCESS) rc = hr_dist_mpi_fail(mrc, op);
    }
    hr_dist_busy_end();
    if (rc) return -1;
    int world = hr_dist_world_size();
    for (int i = 0; i < n_extra; i++) extra[i] /= (double)world;
    for (int i = 0; i < r->n; i++)
        if (write_back(r, i, world)) return -1;
    return 0;
}

#endif
