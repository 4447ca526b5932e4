/*
 * cumextreme.c — cummax / cummin: the running maximum (minimum) along one dimension and the
 * 0-based index where it was taken.
 *
 * As torch's cummax_cummin_helper: a later element equal to the running extreme takes it over (its
 * index is reported), and so does every NaN, which then stays the value (the index moving on to
 * each later NaN). Float dtypes compare as doubles (exact for all of them), integer dtypes as
 * int64; values are copied byte for byte from the element each index names.
 */
#include <string.h>

#include "hr_reduce.h"
#include "cpu/hr_rows.h"

typedef struct {
    bool is_max, int_keys;
    hr_dtype dt;
    size_t el;
    const char *in;
    char *vout;
    int64_t *iout;
    hr_rows gi, go;
} cum_job;

static void cum_worker(void *arg, int64_t begin, int64_t end)
{
    const cum_job *j = arg;
    int64_t n = j->gi.n, si = j->gi.stride * (int64_t)j->el, so = j->go.stride;
    for (int64_t row = begin; row < end; row++) {
        const char *p = j->in + hr_rows_offset(&j->gi, row) * (int64_t)j->el;
        int64_t ooff = hr_rows_offset(&j->go, row);
        char *vo = j->vout + ooff * (int64_t)j->el;
        int64_t *io = j->iout + ooff;
        int64_t best = 0;
        if (j->int_keys) {
            int64_t cur = hr_load_i64(p, j->dt);
            for (int64_t i = 0; i < n; i++) {
                int64_t x = hr_load_i64(p + i * si, j->dt);
                if (j->is_max ? x >= cur : x <= cur) {
                    cur = x;
                    best = i;
                }
                memcpy(vo + i * so * (int64_t)j->el, p + best * si, j->el);
                io[i * so] = best;
            }
        } else {
            double cur = hr_load_f64(p, j->dt);
            for (int64_t i = 0; i < n; i++) {
                double x = hr_load_f64(p + i * si, j->dt);
                if (x != x || (cur == cur && (j->is_max ? x >= cur : x <= cur))) {
                    cur = x;
                    best = i;
                }
                memcpy(vo + i * so * (int64_t)j->el, p + best * si, j->el);
                io[i * so] = best;
            }
        }
    }
}

int hr_cummax_cummin(bool is_max, hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices)
{
    const char *name = is_max ? "cummax" : "cummin";
    *values = *indices = NULL;
    if (hr_rows_on_host(t)) {
        hr_tensor *h = hr_rows_host_copy(t), *hv = NULL, *hi = NULL;
        if (!h) return -1;
        int rc = hr_cummax_cummin(is_max, h, dim, &hv, &hi);
        hr_tensor_release(h);
        if (rc) return -1;
        return hr_rows_results_back(hv, hi, hr_tensor_device(t), values, indices);
    }
    if (hr_rows_check_input(t, name)) return -1;
    int d;
    if (hr_wrap_dim(name, dim, t->ndim, &d)) return -1;
    hr_tensor *v = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_tensor_device(t));
    hr_tensor *i = v ? hr_tensor_empty(t->ndim, t->size, HR_I64, hr_tensor_device(t)) : NULL;
    if (!i) {
        hr_tensor_release(v);
        return -1;
    }
    cum_job j;
    j.is_max = is_max;
    j.int_keys = hr_dtype_is_int(t->dtype);
    j.dt = t->dtype;
    j.el = hr_dtype_size(t->dtype);
    j.in = hr_tensor_data(t);
    j.vout = hr_tensor_data(v);
    j.iout = hr_tensor_data(i);
    hr_rows_init(&j.gi, t->ndim, t->size, t->stride, t->ndim ? d : -1);
    hr_rows_init(&j.go, v->ndim, v->size, v->stride, t->ndim ? d : -1);
    if (hr_tensor_numel(t) > 0) hr_parallel_for(j.gi.rows, 32768 / (j.gi.n + 1) + 1, cum_worker, &j);
    *values = v;
    *indices = i;
    return 0;
}
