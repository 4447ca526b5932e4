/*
 * unique_dim.c — the distinct slices of a tensor along one dimension (torch.unique with dim):
 * slice s is t.select(dim, s); the slices are compared as their elements in row-major order,
 * lexicographically, and come out sorted in that order, with each slice's position among them
 * (inverse) and how often each occurs (counts).
 *
 * The slices are laid out as rows (dim moved first, a contiguous host copy, keys in double for
 * float dtypes and int64 for integers) and their indices merge-sorted (stable, so equal slices
 * keep the input's order). A slice holding NaN equals no other slice (as unique's NaN), sorting
 * as if NaN were above +inf.
 */
#include <stdlib.h>
#include <string.h>

#include "hr_search.h"
#include "cpu/hr_rows.h"

typedef struct {
    const double *kd;  /* float keys, n rows of m */
    const int64_t *ki; /* integer keys */
    int64_t m;
} slice_keys;

/* <0, 0 or >0 as row a sorts before, with or after row b (NaN above every number, equal to NaN
 * for the order only). */
static int compare_rows(const slice_keys *s, int64_t a, int64_t b)
{
    for (int64_t j = 0; j < s->m; j++) {
        if (s->ki) {
            int64_t x = s->ki[a * s->m + j], y = s->ki[b * s->m + j];
            if (x != y) return x < y ? -1 : 1;
        } else {
            double x = s->kd[a * s->m + j], y = s->kd[b * s->m + j];
            bool xn = x != x, yn = y != y;
            if (xn != yn) return xn ? 1 : -1;
            if (!xn && x != y) return x < y ? -1 : 1;
        }
    }
    return 0;
}

/* Whether rows a and b are the same slice: equal everywhere, and no NaN. */
static bool same_rows(const slice_keys *s, int64_t a, int64_t b)
{
    for (int64_t j = 0; j < s->m; j++) {
        if (s->ki) {
            if (s->ki[a * s->m + j] != s->ki[b * s->m + j]) return false;
        } else if (!(s->kd[a * s->m + j] == s->kd[b * s->m + j])) {
            return false;
        }
    }
    return true;
}

/* Stable merge sort of idx[0..n) by compare_rows, with tmp as work space. */
static void sort_rows(const slice_keys *s, int64_t *idx, int64_t *tmp, int64_t n)
{
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = compare_rows(s, idx[j], idx[i]) < 0 ? idx[j++] : idx[i++];
            while (i < mid) tmp[k++] = idx[i++];
            while (j < hi) tmp[k++] = idx[j++];
        }
        memcpy(idx, tmp, sizeof(int64_t) * (size_t)n);
    }
}

int hr_unique_dim(const hr_tensor *t, int dim, hr_tensor **values, hr_tensor **inverse, hr_tensor **counts)
{
    const char *op = "unique";
    if (values) *values = NULL;
    if (inverse) *inverse = NULL;
    if (counts) *counts = NULL;
    if (hr_rows_check_input_dev(t, op, true)) return -1;
    if (t->ndim == 0) return hr_fail(HR_EINVAL, "unique: dim needs a tensor with at least one dimension");
    int d;
    if (hr_wrap_dim(op, dim, t->ndim, &d)) return -1;
    int64_t n = t->size[d], m = 1;
    for (int i = 0; i < t->ndim; i++)
        if (i != d) m *= t->size[i];
    if (m == 0 && n > 0) {
        char buf[160];
        return hr_fail(HR_EINVAL, "unique: the slices along dimension %d of a %s tensor are empty (as torch, refused)",
                       d + 1, hr_shape_str(t->ndim, t->size, buf, sizeof buf));
    }
    /* the slices as rows: dim first, a contiguous host copy */
    int perm[HR_MAX_DIMS], k = 0;
    perm[k++] = d;
    for (int i = 0; i < t->ndim; i++)
        if (i != d) perm[k++] = i;
    hr_tensor *moved = hr_view_permute((hr_tensor *)t, perm);
    hr_tensor *h = moved ? hr_host_contiguous(moved) : NULL;
    if (moved && h == moved) { /* a view of the caller's tensor: copy, its bytes are read below */
        hr_tensor_release(h);
        h = hr_cast(moved, moved->dtype);
    }
    hr_tensor_release(moved);
    if (!h) return -1;
    bool int_keys = hr_dtype_is_int(h->dtype);
    size_t el = hr_dtype_size(h->dtype);
    const char *in = hr_tensor_data(h);
    size_t cells = (size_t)(n * m > 0 ? n * m : 1), rows = (size_t)(n > 0 ? n : 1);
    void *keys = malloc(cells * (int_keys ? sizeof(int64_t) : sizeof(double)));
    int64_t *idx = malloc(rows * sizeof(int64_t)), *tmp = malloc(rows * sizeof(int64_t));
    int64_t *group = malloc(rows * sizeof(int64_t));
    hr_tensor *v = NULL, *inv = NULL, *cnt = NULL, *vmoved = NULL;
    int rc = -1;
    if (!keys || !idx || !tmp || !group) {
        hr_fail(HR_ENOMEM, "unique: out of memory sorting %" PRId64 " slices of %" PRId64 " elements", n, m);
        goto done;
    }
    for (int64_t c = 0; c < n * m; c++) {
        if (int_keys) ((int64_t *)keys)[c] = hr_load_i64(in + c * (int64_t)el, h->dtype);
        else ((double *)keys)[c] = hr_load_f64(in + c * (int64_t)el, h->dtype);
    }
    slice_keys s = {int_keys ? NULL : keys, int_keys ? keys : NULL, m};
    for (int64_t r = 0; r < n; r++) idx[r] = r;
    sort_rows(&s, idx, tmp, n);
    int64_t groups = 0;
    for (int64_t p = 0; p < n; p++) {
        if (p == 0 || !same_rows(&s, idx[p], idx[p - 1])) groups++;
        group[p] = groups - 1;
    }
    int64_t vshape[HR_MAX_DIMS];
    memcpy(vshape, h->size, sizeof(int64_t) * (size_t)h->ndim);
    vshape[0] = groups;
    int64_t one[1] = {n}, gshape[1] = {groups};
    if (!(vmoved = hr_tensor_empty(h->ndim, vshape, h->dtype, hr_cpu()))) goto done;
    if (!(cnt = hr_tensor_zeros(1, gshape, HR_I64, hr_cpu()))) goto done;
    if (!(inv = hr_tensor_empty(1, one, HR_I64, hr_cpu()))) goto done;
    char *vo = hr_tensor_data(vmoved);
    int64_t *co = hr_tensor_data(cnt), *io = hr_tensor_data(inv);
    size_t row_bytes = (size_t)m * el;
    for (int64_t p = 0; p < n; p++) {
        int64_t src = idx[p], g = group[p];
        if (co[g]++ == 0 && row_bytes) memcpy(vo + g * (int64_t)row_bytes, in + src * (int64_t)row_bytes, row_bytes);
        io[src] = g;
    }
    /* the values with dim back in its place */
    int inverse_perm[HR_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) inverse_perm[perm[i]] = i;
    hr_tensor *back = hr_view_permute(vmoved, inverse_perm);
    v = back ? hr_cast(back, back->dtype) : NULL;
    hr_tensor_release(back);
    if (!v) goto done;
    rc = 0;
done:
    free(keys);
    free(idx);
    free(tmp);
    free(group);
    hr_tensor_release(h);
    hr_tensor_release(vmoved);
    if (rc == 0) {
        hr_device dev = hr_tensor_device(t);
        hr_tensor *outs[3] = {v, inv, cnt};
        hr_tensor **dst[3] = {values, inverse, counts};
        for (int j = 0; j < 3; j++) {
            if (!dst[j]) {
                hr_tensor_release(outs[j]);
                continue;
            }
            *dst[j] = dev.type == HR_CPU ? outs[j] : hr_rows_back(outs[j], dev);
            if (!*dst[j]) rc = -1;
        }
        if (rc == 0) return 0;
        for (int j = 0; j < 3; j++)
            if (dst[j]) {
                hr_tensor_release(*dst[j]);
                *dst[j] = NULL;
            }
        return -1;
    }
    hr_tensor_release(v);
    hr_tensor_release(inv);
    hr_tensor_release(cnt);
    return -1;
}
