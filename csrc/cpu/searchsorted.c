/*
 * searchsorted.c — where values would be inserted into sorted rows (torch.searchsorted, and
 * torch.bucketize, which is the same search with the arguments the other way round).
 *
 * The binary searches are torch's (cus_lower_bound / cus_upper_bound): move right while
 * !(row[mid] >= v) (left) or !(row[mid] > v) (right). A NaN value compares false with everything
 * and so lands after the whole row; a NaN in the row, sorted last as sort() puts it, is passed
 * over as larger than every number.
 */
#include <string.h>

#include "hr_search.h"
#include "cpu/hr_rows.h"

typedef struct {
    bool right, int_keys;
    const char *seq;
    hr_dtype sdt;
    size_t sel;
    const int64_t *sorter;
    const char *val;
    hr_dtype vdt;
    size_t vel;
    void *out;
    bool out_int32;
    int64_t n;       /* length of a row of seq */
    int64_t per_row; /* values searched in one row (all of them for a 1-D seq) */
} search_job;

static int64_t search_one(const search_job *j, int64_t e)
{
    int64_t row = j->per_row ? e / j->per_row : 0;
    const char *s = j->seq + row * j->n * (int64_t)j->sel;
    const int64_t *order = j->sorter ? j->sorter + row * j->n : NULL;
    const char *vp = j->val + e * (int64_t)j->vel;
    int64_t lo = 0, hi = j->n;
    if (j->int_keys) {
        int64_t v = hr_load_i64(vp, j->vdt);
        while (lo < hi) {
            int64_t mid = lo + ((hi - lo) >> 1);
            int64_t m = hr_load_i64(s + (order ? order[mid] : mid) * (int64_t)j->sel, j->sdt);
            if (j->right ? !(m > v) : !(m >= v)) lo = mid + 1;
            else hi = mid;
        }
    } else {
        double v = hr_load_f64(vp, j->vdt);
        while (lo < hi) {
            int64_t mid = lo + ((hi - lo) >> 1);
            double m = hr_load_f64(s + (order ? order[mid] : mid) * (int64_t)j->sel, j->sdt);
            if (j->right ? !(m > v) : !(m >= v)) lo = mid + 1;
            else hi = mid;
        }
    }
    return lo;
}

static void search_range(void *arg, int64_t begin, int64_t end)
{
    const search_job *j = arg;
    for (int64_t e = begin; e < end; e++) {
        int64_t p = search_one(j, e);
        if (j->out_int32) ((int32_t *)j->out)[e] = (int32_t)p;
        else ((int64_t *)j->out)[e] = p;
    }
}

static int check_args(const hr_tensor *seq, const hr_tensor *values, const hr_tensor *sorter)
{
    if (hr_rows_check_input_dev(seq, "searchsorted", true)) return -1;
    if (hr_tensor_check_live(values, "values")) {
        hr_error_prefix("searchsorted");
        return -1;
    }
    char a[160], b[160];
    if (!hr_device_eq(hr_tensor_device(seq), hr_tensor_device(values)))
        return hr_fail(HR_EDEVICE, "searchsorted: the sorted sequence (%s) and the values (%s) are on different devices",
                       hr_tensor_desc(seq, a, sizeof a), hr_tensor_desc(values, b, sizeof b));
    if (seq->dtype == HR_BOOL || values->dtype == HR_BOOL)
        return hr_fail(HR_EINVAL, "searchsorted: bool tensors are not supported (%s and %s)",
                       hr_tensor_desc(seq, a, sizeof a), hr_tensor_desc(values, b, sizeof b));
    if (seq->ndim == 0)
        return hr_fail(HR_EINVAL, "searchsorted: the sorted sequence must have at least one dimension, got a 0-dim "
                                  "tensor");
    if (seq->ndim > 1) {
        bool ok = values->ndim == seq->ndim;
        for (int i = 0; ok && i < seq->ndim - 1; i++) ok = seq->size[i] == values->size[i];
        if (!ok)
            return hr_fail(HR_EINVAL,
                           "searchsorted: a sorted sequence of shape %s needs values with the same leading "
                           "dimensions (and as many of them), got shape %s; a 1-D sequence takes values of any shape",
                           hr_shape_str(seq->ndim, seq->size, a, sizeof a),
                           hr_shape_str(values->ndim, values->size, b, sizeof b));
    }
    if (!sorter) return 0;
    if (hr_tensor_check_live(sorter, "sorter")) {
        hr_error_prefix("searchsorted");
        return -1;
    }
    if (sorter->dtype != HR_I64 || sorter->ndim != seq->ndim ||
        memcmp(sorter->size, seq->size, sizeof(int64_t) * (size_t)seq->ndim) != 0 ||
        !hr_device_eq(hr_tensor_device(seq), hr_tensor_device(sorter)))
        return hr_fail(HR_EINVAL, "searchsorted: sorter must be an i64 tensor of the sequence's shape %s on its device, "
                                  "got %s",
                       hr_shape_str(seq->ndim, seq->size, a, sizeof a), hr_tensor_desc(sorter, b, sizeof b));
    return 0;
}

hr_tensor *hr_searchsorted(const hr_tensor *seq, const hr_tensor *values, bool right, bool out_int32,
                           const hr_tensor *sorter)
{
    if (check_args(seq, values, sorter)) return NULL;
    hr_tensor *hs = hr_host_contiguous(seq), *hv = hs ? hr_host_contiguous(values) : NULL;
    hr_tensor *ho = hv && sorter ? hr_host_contiguous(sorter) : NULL;
    hr_tensor *out = NULL;
    if (!hv || (sorter && !ho)) goto done;
    search_job j;
    memset(&j, 0, sizeof j);
    j.right = right;
    j.int_keys = hr_dtype_is_int(seq->dtype) && hr_dtype_is_int(values->dtype);
    j.seq = hr_tensor_data(hs);
    j.sdt = hs->dtype;
    j.sel = hr_dtype_size(hs->dtype);
    j.val = hr_tensor_data(hv);
    j.vdt = hv->dtype;
    j.vel = hr_dtype_size(hv->dtype);
    j.out_int32 = out_int32;
    j.n = seq->size[seq->ndim - 1];
    j.per_row = seq->ndim > 1 ? values->size[values->ndim - 1] : 0;
    if (ho) {
        /* a position outside the row would read outside the sequence */
        const int64_t *o = hr_tensor_data(ho);
        for (int64_t i = 0, m = hr_tensor_numel(ho); i < m; i++)
            if (o[i] < 0 || o[i] >= j.n) {
                hr_fail(HR_EINVAL, "searchsorted: sorter holds %" PRId64 " at position %" PRId64
                                   " (0-based), outside 0..%" PRId64, o[i], i, j.n - 1);
                goto done;
            }
        j.sorter = o;
    }
    if (!(out = hr_tensor_empty(values->ndim, values->size, out_int32 ? HR_I32 : HR_I64, hr_cpu()))) goto done;
    j.out = hr_tensor_data(out);
    int64_t m = hr_tensor_numel(out);
    if (m > 0) hr_parallel_for(m, 4096, search_range, &j);
    if (hr_tensor_device(seq).type != HR_CPU) out = hr_rows_back(out, hr_tensor_device(seq));
done:
    hr_tensor_release(hs);
    hr_tensor_release(hv);
    hr_tensor_release(ho);
    return out;
}
