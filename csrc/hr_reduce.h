/*
 * hr_reduce.h — reductions, scans, softmax, sorting and top-k (Lua-free core API).
 *
 * Dimensions are 0-based here; a negative dim counts from the end. Passing HR_DIM_ALL reduces over
 * every element and gives a 0-dim tensor (keepdim: a tensor of the input's rank with all sizes 1).
 * A 0-dim input accepts dim 0 / -1 as if it were a 1-element vector. Every function returns new
 * contiguous tensors (NULL / -1 on failure, reason in hr_last_error()).
 *
 * Accumulation: floating-point inputs (f32, bf16, f16 through f32 values) accumulate in double
 * and round once into the output dtype, which equals the input dtype. Integer and bool inputs
 * accumulate exactly in int64; sum, prod, cumsum and cumprod of them return i64 (like PyTorch).
 * Indices written by max/min/argmax/argmin/sort/topk are 0-based i64.
 *
 * NaN: max/min/argmax/argmin propagate NaN (the result is NaN and its index is the first NaN);
 * sort and topk order NaN above +inf (last when ascending, first when descending / largest).
 */
#ifndef HR_REDUCE_H
#define HR_REDUCE_H

#include "hr_core.h"

#define HR_DIM_ALL INT32_MIN

hr_tensor *hr_sum(hr_tensor *t, int dim, bool keepdim);
hr_tensor *hr_mean(hr_tensor *t, int dim, bool keepdim);   /* floating-point inputs only */
hr_tensor *hr_prod(hr_tensor *t, int dim, bool keepdim);
/* Sum / mean over several dims at once (dims distinct; order irrelevant), one accumulator each. */
hr_tensor *hr_sum_dims(hr_tensor *t, const int *dims, int ndims, bool keepdim);
hr_tensor *hr_mean_dims(hr_tensor *t, const int *dims, int ndims, bool keepdim);

/* Values (input dtype) and, when indices is not NULL, their 0-based positions along dim.
 * Fails on an empty reduced dimension. */
int hr_max(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices);
int hr_min(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices);
hr_tensor *hr_argmax(hr_tensor *t, int dim, bool keepdim); /* HR_DIM_ALL: index into the flattened tensor */
hr_tensor *hr_argmin(hr_tensor *t, int dim, bool keepdim);

/* Variance / standard deviation, divided by n-1 (unbiased) or n. Floating-point inputs only. */
hr_tensor *hr_var(hr_tensor *t, int dim, bool unbiased, bool keepdim);
hr_tensor *hr_std(hr_tensor *t, int dim, bool unbiased, bool keepdim);
/* Vector p-norm: p = 2 (Euclidean), 1, any p > 0, 0 (count of non-zeros) or INFINITY (max |x|). */
hr_tensor *hr_norm(hr_tensor *t, double p, int dim, bool keepdim);
/* Whether all / any elements are non-zero (any dtype); bool result. */
hr_tensor *hr_all(hr_tensor *t, int dim, bool keepdim);
hr_tensor *hr_any(hr_tensor *t, int dim, bool keepdim);

/* Inclusive scans along dim (same shape). */
hr_tensor *hr_cumsum(hr_tensor *t, int dim);
hr_tensor *hr_cumprod(hr_tensor *t, int dim);

/* softmax / log_softmax along dim, max-subtracted; floating-point inputs, output in their dtype. */
hr_tensor *hr_softmax(hr_tensor *t, int dim);
hr_tensor *hr_log_softmax(hr_tensor *t, int dim);

/* Stable sort along dim: values and 0-based i64 indices (either out pointer may be NULL). */
int hr_sort(hr_tensor *t, int dim, bool descending, hr_tensor **values, hr_tensor **indices);
/* The k largest (or smallest) along dim, best first; ties keep the lower index first. */
int hr_topk(hr_tensor *t, int64_t k, int dim, bool largest, hr_tensor **values, hr_tensor **indices);

/* The k-th smallest (k counted from 1, as torch's kthvalue) along dim, NaN ranking above +inf, and
 * its index; the lower median ((n - 1) / 2 counted from 0) along dim, NaN where the row holds one,
 * with the first NaN's index. Among equal values, the one a stable sort puts at that position.
 * The outputs keep dim with size 1 (squeeze it for torch's keepdim = false). Bool is refused. */
int hr_kthvalue(hr_tensor *t, int64_t k, int dim, hr_tensor **values, hr_tensor **indices);
int hr_median_dim(hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices);
/* The most frequent value along dim (the smallest of equally frequent ones; NaNs count as one value)
 * and the index of its last occurrence, as torch.mode. */
int hr_mode(hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices);

/* The running maximum (minimum) along dim and the index where it was taken: a later equal element
 * takes it over, and so does every NaN (torch's cummax / cummin). Same shape as t. */
int hr_cummax_cummin(bool is_max, hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices);

#endif
