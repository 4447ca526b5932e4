/*
 * bincount.c — how often each non-negative integer occurs, or the sums of the weights of its
 * occurrences (torch.bincount).
 *
 * As torch's CPU kernel: the weights are added in the input's order, in f32 for f32 weights and in
 * f64 for every other dtype (which is also the result's dtype).
 */
#include <string.h>

#include "hr_search.h"
#include "cpu/hr_rows.h"

static int check_input(const hr_tensor *t, const hr_tensor *w, int64_t minlength)
{
    if (hr_rows_check_input_dev(t, "bincount", true)) return -1;
    char buf[160];
    if (t->ndim != 1 || !hr_dtype_is_int(t->dtype) || t->dtype == HR_BOOL)
        return hr_fail(HR_EINVAL, "bincount: expected a 1-D tensor of non-negative integers (i64, i32 or u8), got %s",
                       hr_tensor_desc(t, buf, sizeof buf));
    if (minlength < 0) return hr_fail(HR_EINVAL, "bincount: minlength must not be negative, got %" PRId64, minlength);
    if (!w) return 0;
    if (hr_tensor_check_live(w, "weights")) {
        hr_error_prefix("bincount");
        return -1;
    }
    if (!hr_device_eq(hr_tensor_device(t), hr_tensor_device(w))) {
        char x[160];
        return hr_fail(HR_EDEVICE, "bincount: the input (%s) and the weights (%s) are on different devices",
                       hr_tensor_desc(t, buf, sizeof buf), hr_tensor_desc(w, x, sizeof x));
    }
    if (w->ndim != 1 || w->size[0] != t->size[0]) {
        char x[160];
        return hr_fail(HR_EINVAL, "bincount: the weights (%s) must be 1-D with the input's length %" PRId64,
                       hr_tensor_desc(w, x, sizeof x), t->size[0]);
    }
    return 0;
}

hr_tensor *hr_bincount(const hr_tensor *t, const hr_tensor *weights, int64_t minlength)
{
    if (check_input(t, weights, minlength)) return NULL;
    hr_tensor *h = hr_host_contiguous(t);
    hr_tensor *hw = h && weights ? hr_host_contiguous(weights) : NULL;
    if (!h || (weights && !hw)) {
        hr_tensor_release(h);
        return NULL;
    }
    int64_t n = h->size[0], bins = minlength;
    const char *in = hr_tensor_data(h);
    size_t el = hr_dtype_size(h->dtype);
    hr_tensor *out = NULL;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = hr_load_i64(in + i * (int64_t)el, h->dtype);
        if (v < 0) {
            hr_fail(HR_EINVAL, "bincount: expected non-negative integers, got %" PRId64 " at position %" PRId64
                               " (0-based)", v, i);
            goto done;
        }
        if (v >= bins) bins = v + 1;
    }
    hr_dtype odt = !weights ? HR_I64 : weights->dtype == HR_F32 ? HR_F32 : HR_F64;
    if (!(out = hr_tensor_zeros(1, &bins, odt, hr_cpu()))) goto done;
    const char *wp = hw ? hr_tensor_data(hw) : NULL;
    size_t wel = hw ? hr_dtype_size(hw->dtype) : 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = hr_load_i64(in + i * (int64_t)el, h->dtype);
        if (odt == HR_I64) ((int64_t *)hr_tensor_data(out))[v]++;
        else if (odt == HR_F32) ((float *)hr_tensor_data(out))[v] += *(const float *)(wp + i * (int64_t)wel);
        else ((double *)hr_tensor_data(out))[v] += hr_load_f64(wp + i * (int64_t)wel, hw->dtype);
    }
done:
    hr_tensor_release(h);
    hr_tensor_release(hw);
    if (out && hr_tensor_device(t).type != HR_CPU) out = hr_rows_back(out, hr_tensor_device(t));
    return out;
}
