/*
 * sort.c — stable sort and top-k along one dimension, returning values and 0-based i64 indices.
 *
 * Rows are read into (key, index) pairs: double keys for floating-point dtypes (exact for every
 * one of them) and int64 keys for integer dtypes (exact beyond 2^53). Sorting is a merge sort
 * (insertion-sorted runs, then bottom-up merges), so equal keys keep their original order in both
 * directions. NaN ranks above +inf: last when ascending, first when descending, like PyTorch.
 * top-k keeps the k best of a row in a binary heap under the total order "better key, then lower
 * index", so ties resolve to the lower index whatever k is. kthvalue and median sort each row and
 * take one position of the ascending order: among equal values the one the stable order puts there
 * (torch leaves that choice to its selection algorithm). Output values are copied byte for byte
 * from the input element each index names.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hr_reduce.h"
#include "cpu/hr_rows.h"

typedef struct {
    double k;
    int64_t i;
} pair_d;

typedef struct {
    int64_t k;
    int64_t i;
} pair_i;

#define RUN 16

/* BEFORE(a, b): a sorts strictly before b. */
#define BEFORE_ASC_D(a, b) ((a).k < (b).k || ((b).k != (b).k && (a).k == (a).k))
#define BEFORE_DESC_D(a, b) ((a).k > (b).k || ((a).k != (a).k && (b).k == (b).k))
#define BEFORE_ASC_I(a, b) ((a).k < (b).k)
#define BEFORE_DESC_I(a, b) ((a).k > (b).k)

#define DEFINE_SORTS(NAME, PT, BEFORE)                                                               \
    /* Stable merge sort of a[0..n) using tmp[0..n). */                                            \
    static void NAME##_msort(PT *a, PT *tmp, int64_t n)                                            \
    {                                                                                              \
        for (int64_t lo = 0; lo < n; lo += RUN) {                                                  \
            int64_t hi = lo + RUN < n ? lo + RUN : n;                                              \
            for (int64_t i = lo + 1; i < hi; i++) {                                                \
                PT v = a[i];                                                                       \
                int64_t j = i;                                                                     \
                while (j > lo && BEFORE(v, a[j - 1])) {                                            \
                    a[j] = a[j - 1];                                                               \
                    j--;                                                                           \
                }                                                                                  \
                a[j] = v;                                                                          \
            }                                                                                      \
        }                                                                                          \
        PT *src = a, *dst = tmp;                                                                   \
        for (int64_t w = RUN; w < n; w *= 2) {                                                     \
            for (int64_t lo = 0; lo < n; lo += 2 * w) {                                            \
                int64_t mid = lo + w < n ? lo + w : n;                                             \
                int64_t hi = lo + 2 * w < n ? lo + 2 * w : n;                                      \
                int64_t l = lo, r = mid, o = lo;                                                   \
                while (l < mid && r < hi) dst[o++] = BEFORE(src[r], src[l]) ? src[r++] : src[l++]; \
                while (l < mid) dst[o++] = src[l++];                                               \
                while (r < hi) dst[o++] = src[r++];                                                \
            }                                                                                      \
            PT *s = src;                                                                           \
            src = dst;                                                                             \
            dst = s;                                                                               \
        }                                                                                          \
        if (src != a) memcpy(a, src, (size_t)n * sizeof *a);                                      \
    }                                                                                              \
    /* Moves heap[p] down a heap (worst element at the root) of m entries. */                     \
    static void NAME##_sift(PT *heap, int64_t m, int64_t p)                                        \
    {                                                                                              \
        for (;;) {                                                                                 \
            int64_t c = 2 * p + 1;                                                                 \
            if (c >= m) return;                                                                    \
            if (c + 1 < m && NAME##_better(heap[c], heap[c + 1])) c++;                             \
            if (!NAME##_better(heap[p], heap[c])) return;                                          \
            PT t = heap[p];                                                                        \
            heap[p] = heap[c];                                                                     \
            heap[c] = t;                                                                           \
            p = c;                                                                                 \
        }                                                                                          \
    }                                                                                              \
    /* The k best of the n pairs produced by get(i), best first, into heap[0..k). */              \
    static void NAME##_topk(PT *heap, int64_t k, int64_t n, const void *ctx, PT (*get)(const void *, int64_t)) \
    {                                                                                              \
        int64_t cnt = 0;                                                                           \
        for (int64_t i = 0; i < n; i++) {                                                          \
            PT v = get(ctx, i);                                                                    \
            if (cnt < k) {                                                                         \
                int64_t c = cnt++;                                                                 \
                heap[c] = v;                                                                       \
                while (c > 0 && NAME##_better(heap[(c - 1) / 2], heap[c])) {                       \
                    PT t = heap[c];                                                                \
                    heap[c] = heap[(c - 1) / 2];                                                   \
                    heap[(c - 1) / 2] = t;                                                         \
                    c = (c - 1) / 2;                                                               \
                }                                                                                  \
            } else if (k > 0 && NAME##_better(v, heap[0])) {                                       \
                heap[0] = v;                                                                       \
                NAME##_sift(heap, k, 0);                                                           \
            }                                                                                      \
        }                                                                                          \
        /* heap sort: repeatedly move the worst to the end */                                     \
        for (int64_t m = k - 1; m > 0; m--) {                                                      \
            PT t = heap[0];                                                                        \
            heap[0] = heap[m];                                                                     \
            heap[m] = t;                                                                           \
            NAME##_sift(heap, m, 0);                                                               \
        }                                                                                          \
    }

/* better(a, b): the total order used by top-k (key first, then the lower index). */
#define DEFINE_BETTER(NAME, PT, BEFORE)                                                              \
    static inline bool NAME##_better(PT a, PT b) { return BEFORE(a, b) || (!BEFORE(b, a) && a.i < b.i); }

DEFINE_BETTER(asc_d, pair_d, BEFORE_ASC_D)
DEFINE_BETTER(desc_d, pair_d, BEFORE_DESC_D)
DEFINE_BETTER(asc_i, pair_i, BEFORE_ASC_I)
DEFINE_BETTER(desc_i, pair_i, BEFORE_DESC_I)
DEFINE_SORTS(asc_d, pair_d, BEFORE_ASC_D)
DEFINE_SORTS(desc_d, pair_d, BEFORE_DESC_D)
DEFINE_SORTS(asc_i, pair_i, BEFORE_ASC_I)
DEFINE_SORTS(desc_i, pair_i, BEFORE_DESC_I)

/* ------------------------------------------------------------------ rows */

/* What a walk over the rows makes: the sorted row, its k best, or one element of the ascending
 * order (the k-th smallest, or the lower median, which a NaN in the row replaces by that NaN). */
typedef enum { ROWS_SORT, ROWS_TOPK, ROWS_KTH, ROWS_MEDIAN, ROWS_MODE } rows_mode;

typedef struct {
    rows_mode mode;
    bool topk, desc, int_keys;
    int64_t k;
    hr_dtype dt;
    size_t el;
    const char *in;
    char *vout;
    int64_t *iout;
    hr_rows gi, go; /* go: geometry of the outputs (same for values and indices) */
    atomic_int failed;
} sort_job;

typedef struct {
    const char *p;
    int64_t sb;
    hr_dtype dt;
} row_reader;

static pair_d get_d(const void *ctx, int64_t i)
{
    const row_reader *r = ctx;
    pair_d v = {hr_load_f64(r->p + i * r->sb, r->dt), i};
    return v;
}

static pair_i get_i(const void *ctx, int64_t i)
{
    const row_reader *r = ctx;
    pair_i v = {hr_load_i64(r->p + i * r->sb, r->dt), i};
    return v;
}

/* The position in a row's ascending (stable) order that kthvalue / median report: k - 1, or the
 * lower median (n - 1) / 2 unless the row holds NaN, which sorts last; then the first NaN, which the
 * stable order puts right after the other values. */
static int64_t selected_position(const sort_job *j, const pair_d *a, int64_t n)
{
    if (j->mode == ROWS_KTH) return j->k - 1;
    if (!j->int_keys && n > 0 && a[n - 1].k != a[n - 1].k) {
        int64_t p = n - 1;
        while (p > 0 && a[p - 1].k != a[p - 1].k) p--;
        return p;
    }
    return (n - 1) / 2;
}

/* mode: in the row's ascending (stable) order, the last element of the longest run of equal values
 * (the first such run, so the smallest value, when runs tie; NaNs count as one value), as torch's
 * mode: the value occurring most often, the smallest among equals, with the index of its last
 * occurrence. */
#define DEFINE_MODE(NAME, PT, SAME)                                                                \
    static int64_t NAME##_mode_position(const PT *a, int64_t n)                                    \
    {                                                                                              \
        int64_t best = 0, best_len = 0, start = 0;                                                 \
        for (int64_t i = 1; i <= n; i++) {                                                         \
            if (i < n && SAME(a[i].k, a[start].k)) continue;                                      \
            if (i - start > best_len) {                                                            \
                best_len = i - start;                                                              \
                best = i - 1;                                                                      \
            }                                                                                      \
            start = i;                                                                             \
        }                                                                                          \
        return best;                                                                               \
    }
#define SAME_D(x, y) ((x) == (y) || ((x) != (x) && (y) != (y)))
#define SAME_I(x, y) ((x) == (y))
DEFINE_MODE(d, pair_d, SAME_D)
DEFINE_MODE(i, pair_i, SAME_I)

static void sort_worker(void *arg, int64_t begin, int64_t end)
{
    sort_job *j = arg;
    bool select = j->mode == ROWS_KTH || j->mode == ROWS_MEDIAN || j->mode == ROWS_MODE;
    int64_t n = j->gi.n, m = j->topk ? j->k : select ? 1 : n;
    size_t psize = j->int_keys ? sizeof(pair_i) : sizeof(pair_d);
    /* sort: n pairs and n of merge space; top-k: a heap of k */
    char *buf = malloc(psize * (size_t)(j->topk ? (m > 0 ? m : 1) : 2 * (n > 0 ? n : 1)));
    if (!buf) {
        atomic_store(&j->failed, 1);
        return;
    }
    int64_t si = j->gi.stride * (int64_t)j->el;
    for (int64_t row = begin; row < end; row++) {
        row_reader rr = {j->in + hr_rows_offset(&j->gi, row) * (int64_t)j->el, si, j->dt};
        int64_t ooff = hr_rows_offset(&j->go, row);
        char *vo = j->vout ? j->vout + ooff * (int64_t)j->el : NULL;
        int64_t *io = j->iout ? j->iout + ooff : NULL;
        int64_t so = j->go.stride;
        if (j->int_keys) {
            pair_i *a = (pair_i *)buf;
            if (j->topk) {
                if (j->desc) desc_i_topk(a, m, n, &rr, get_i);
                else asc_i_topk(a, m, n, &rr, get_i);
            } else {
                for (int64_t i = 0; i < n; i++) a[i] = get_i(&rr, i);
                if (j->desc) desc_i_msort(a, a + n, n);
                else asc_i_msort(a, a + n, n);
                if (select)
                    a[0] = a[j->mode == ROWS_KTH ? j->k - 1 : j->mode == ROWS_MODE ? i_mode_position(a, n) : (n - 1) / 2];
            }
            for (int64_t i = 0; i < m; i++) {
                if (vo) memcpy(vo + i * so * (int64_t)j->el, rr.p + a[i].i * si, j->el);
                if (io) io[i * so] = a[i].i;
            }
        } else {
            pair_d *a = (pair_d *)buf;
            if (j->topk) {
                if (j->desc) desc_d_topk(a, m, n, &rr, get_d);
                else asc_d_topk(a, m, n, &rr, get_d);
            } else {
                for (int64_t i = 0; i < n; i++) a[i] = get_d(&rr, i);
                if (j->desc) desc_d_msort(a, a + n, n);
                else asc_d_msort(a, a + n, n);
                if (select) a[0] = a[j->mode == ROWS_MODE ? d_mode_position(a, n) : selected_position(j, a, n)];
            }
            for (int64_t i = 0; i < m; i++) {
                if (vo) memcpy(vo + i * so * (int64_t)j->el, rr.p + a[i].i * si, j->el);
                if (io) io[i * so] = a[i].i;
            }
        }
    }
    free(buf);
}

static int sort_rows(const char *name, hr_tensor *t, int dim, bool desc, rows_mode mode, int64_t k, hr_tensor **values,
                     hr_tensor **indices)
{
    bool topk = mode == ROWS_TOPK, select = mode == ROWS_KTH || mode == ROWS_MEDIAN || mode == ROWS_MODE;
    if (values) *values = NULL;
    if (indices) *indices = NULL;
    if (hr_rows_on_host(t)) {
        hr_tensor *h = hr_rows_host_copy(t), *hv = NULL, *hi = NULL;
        if (!h) return -1;
        int rc = sort_rows(name, h, dim, desc, mode, k, values ? &hv : NULL, indices ? &hi : NULL);
        hr_tensor_release(h);
        if (rc) return -1;
        return hr_rows_results_back(hv, hi, hr_tensor_device(t), values, indices);
    }
    if (hr_rows_check_input(t, name)) return -1;
    int d;
    if (hr_wrap_dim(name, dim, t->ndim, &d)) return -1;
    int64_t n = t->ndim ? t->size[d] : 1;
    if (topk && (k < 0 || k > n)) {
        char buf[160];
        return hr_fail(HR_EINVAL, "%s: k = %" PRId64 " is out of range for dimension %d of size %" PRId64 " (shape %s)",
                       name, k, d + 1, n, hr_shape_str(t->ndim, t->size, buf, sizeof buf));
    }
    if (mode == ROWS_KTH && (k < 1 || k > n)) {
        char buf[160];
        return hr_fail(HR_EINVAL, "%s: k = %" PRId64 " is out of range 1..%" PRId64 " for dimension %d (shape %s)", name,
                       k, n, d + 1, hr_shape_str(t->ndim, t->size, buf, sizeof buf));
    }
    if ((mode == ROWS_MEDIAN || mode == ROWS_MODE) && n == 0) {
        char buf[160];
        return hr_fail(HR_EINVAL, "%s: dimension %d is empty (shape %s); there is no %s", name, d + 1,
                       hr_shape_str(t->ndim, t->size, buf, sizeof buf), name);
    }
    if (select && t->dtype == HR_BOOL)
        return hr_fail(HR_EINVAL, "%s: not supported for bool tensors, as in torch (convert with :long() first)", name);
    int64_t osize[HR_MAX_DIMS];
    memcpy(osize, t->size, sizeof osize);
    if (topk && t->ndim) osize[d] = k;
    if (select && t->ndim) osize[d] = 1;
    hr_tensor *vout = NULL, *iout = NULL;
    if (values && !(vout = hr_tensor_empty(t->ndim, osize, t->dtype, hr_tensor_device(t)))) return -1;
    if (indices && !(iout = hr_tensor_empty(t->ndim, osize, HR_I64, hr_tensor_device(t)))) {
        if (vout) hr_tensor_release(vout);
        return -1;
    }
    sort_job j;
    j.mode = mode;
    j.topk = topk;
    j.desc = desc;
    j.int_keys = hr_dtype_is_int(t->dtype);
    j.k = k;
    j.dt = t->dtype;
    j.el = hr_dtype_size(t->dtype);
    j.in = hr_tensor_data(t);
    j.vout = vout ? hr_tensor_data(vout) : NULL;
    j.iout = iout ? hr_tensor_data(iout) : NULL;
    atomic_init(&j.failed, 0);
    int64_t ostride[HR_MAX_DIMS];
    hr_contiguous_strides(t->ndim, osize, ostride);
    hr_rows_init(&j.gi, t->ndim, t->size, t->stride, t->ndim ? d : -1);
    hr_rows_init(&j.go, t->ndim, osize, ostride, t->ndim ? d : -1);
    int64_t out_numel = j.gi.rows * (topk ? k : select ? 1 : n);
    if (out_numel > 0) hr_parallel_for(j.gi.rows, 16384 / (n + 1) + 1, sort_worker, &j);
    if (atomic_load(&j.failed)) {
        if (vout) hr_tensor_release(vout);
        if (iout) hr_tensor_release(iout);
        return hr_fail(HR_ENOMEM, "%s: out of memory for the work space of rows of %" PRId64 " elements", name, n);
    }
    if (values) *values = vout;
    if (indices) *indices = iout;
    return 0;
}

int hr_sort(hr_tensor *t, int dim, bool descending, hr_tensor **values, hr_tensor **indices)
{
    return sort_rows("sort", t, dim, descending, ROWS_SORT, 0, values, indices);
}

int hr_topk(hr_tensor *t, int64_t k, int dim, bool largest, hr_tensor **values, hr_tensor **indices)
{
    return sort_rows("topk", t, dim, largest, ROWS_TOPK, k, values, indices);
}

int hr_kthvalue(hr_tensor *t, int64_t k, int dim, hr_tensor **values, hr_tensor **indices)
{
    return sort_rows("kthvalue", t, dim, false, ROWS_KTH, k, values, indices);
}

int hr_median_dim(hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices)
{
    return sort_rows("median", t, dim, false, ROWS_MEDIAN, 0, values, indices);
}

int hr_mode(hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices)
{
    return sort_rows("mode", t, dim, false, ROWS_MODE, 0, values, indices);
}
