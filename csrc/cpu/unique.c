/*
 * unique.c — the distinct values of a tensor, with each element's position among them and how
 * often each occurs (torch.unique with sorted = True, return_inverse, return_counts).
 *
 * The elements are sorted as (key, index) pairs, keys in double for float dtypes (exact for each
 * of them) and in int64 for integer dtypes; ties keep the input's order, so that a group's first
 * element is its first occurrence, whose bytes the value is copied from. NaN equals nothing, so
 * each NaN is a group of its own; they sort after +inf, in the input's order. (torch 1.13's CPU
 * unique of floats holding NaN returns values out of order with some counts of 0; hero's is
 * NumPy's rule before equal_nan, and what torch's sort-based CUDA unique gives.)
 */
#include <stdlib.h>
#include <string.h>

#include "hr_search.h"
#include "cpu/hr_rows.h"

typedef struct {
    double k;
    int64_t i;
} key_d;

typedef struct {
    int64_t k;
    int64_t i;
} key_i;

static int cmp_d(const void *pa, const void *pb)
{
    const key_d *a = pa, *b = pb;
    bool an = a->k != a->k, bn = b->k != b->k;
    if (an != bn) return an ? 1 : -1; /* NaN after everything */
    if (!an && a->k != b->k) return a->k < b->k ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static int cmp_i(const void *pa, const void *pb)
{
    const key_i *a = pa, *b = pb;
    if (a->k != b->k) return a->k < b->k ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

/* A host result moved to dev (consumed); returned as it is on the CPU. */
static hr_tensor *to_device(hr_tensor *h, hr_device dev)
{
    if (!h || dev.type == HR_CPU) return h;
    return hr_rows_back(h, dev);
}

int hr_unique(const hr_tensor *t, hr_tensor **values, hr_tensor **inverse, hr_tensor **counts)
{
    if (values) *values = NULL;
    if (inverse) *inverse = NULL;
    if (counts) *counts = NULL;
    if (hr_rows_check_input_dev(t, "unique", true)) return -1;
    hr_tensor *h = hr_host_contiguous(t);
    if (!h) return -1;
    int64_t n = hr_tensor_numel(h);
    bool int_keys = hr_dtype_is_int(h->dtype);
    size_t el = hr_dtype_size(h->dtype);
    const char *in = hr_tensor_data(h);
    void *keys = malloc((n > 0 ? (size_t)n : 1) * (int_keys ? sizeof(key_i) : sizeof(key_d)));
    int64_t *group = malloc((n > 0 ? (size_t)n : 1) * sizeof(int64_t)); /* group of the i-th sorted pair */
    hr_tensor *v = NULL, *inv = NULL, *cnt = NULL;
    int rc = -1;
    if (!keys || !group) {
        hr_fail(HR_ENOMEM, "unique: out of memory sorting %" PRId64 " elements", n);
        goto done;
    }
    key_d *kd = keys;
    key_i *ki = keys;
    for (int64_t i = 0; i < n; i++) {
        if (int_keys) ki[i] = (key_i){hr_load_i64(in + i * (int64_t)el, h->dtype), i};
        else kd[i] = (key_d){hr_load_f64(in + i * (int64_t)el, h->dtype), i};
    }
    if (n > 1) qsort(keys, (size_t)n, int_keys ? sizeof(key_i) : sizeof(key_d), int_keys ? cmp_i : cmp_d);
    int64_t groups = 0;
    for (int64_t p = 0; p < n; p++) {
        /* == is false for NaN, so every NaN opens a group */
        bool same = p > 0 && (int_keys ? ki[p].k == ki[p - 1].k : kd[p].k == kd[p - 1].k);
        if (!same) groups++;
        group[p] = groups - 1;
    }
    int64_t gshape[1] = {groups};
    if (!(v = hr_tensor_empty(1, gshape, h->dtype, hr_cpu()))) goto done;
    if (!(cnt = hr_tensor_zeros(1, gshape, HR_I64, hr_cpu()))) goto done;
    if (!(inv = hr_tensor_empty(t->ndim, t->size, HR_I64, hr_cpu()))) goto done;
    char *vo = hr_tensor_data(v);
    int64_t *co = hr_tensor_data(cnt), *io = hr_tensor_data(inv);
    for (int64_t p = 0; p < n; p++) {
        int64_t src = int_keys ? ki[p].i : kd[p].i, g = group[p];
        if (co[g]++ == 0) memcpy(vo + g * (int64_t)el, in + src * (int64_t)el, el);
        io[src] = g;
    }
    rc = 0;
done:
    free(keys);
    free(group);
    hr_tensor_release(h);
    if (rc == 0) {
        hr_device dev = hr_tensor_device(t);
        hr_tensor *outs[3] = {values ? v : NULL, inverse ? inv : NULL, counts ? cnt : NULL};
        hr_tensor **dst[3] = {values, inverse, counts};
        hr_tensor *unused[3] = {values ? NULL : v, inverse ? NULL : inv, counts ? NULL : cnt};
        for (int k = 0; k < 3; k++) hr_tensor_release(unused[k]);
        for (int k = 0; k < 3; k++) {
            if (!dst[k]) continue;
            *dst[k] = to_device(outs[k], dev);
            if (!*dst[k]) rc = -1;
        }
        if (rc) {
            for (int k = 0; k < 3; k++)
                if (dst[k]) {
                    hr_tensor_release(*dst[k]);
                    *dst[k] = NULL;
                }
        }
        return rc;
    }
    hr_tensor_release(v);
    hr_tensor_release(inv);
    hr_tensor_release(cnt);
    return -1;
}
