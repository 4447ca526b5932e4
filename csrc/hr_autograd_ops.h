/* hr_autograd_ops.h — differentiable versions of core ops (they record on the tape when needed). */
#ifndef HR_AUTOGRAD_OPS_H
#define HR_AUTOGRAD_OPS_H

#include "hr_core.h"

/* Sums g over broadcast dimensions so it has the given shape (the gradient of a broadcast). */
hr_tensor *hr_sum_to_size(const hr_tensor *g, int ndim, const int64_t *size);

hr_tensor *hr_ag_narrow(hr_tensor *t, int dim, int64_t start, int64_t length);
hr_tensor *hr_ag_select(hr_tensor *t, int dim, int64_t index);
hr_tensor *hr_ag_transpose(hr_tensor *t, int d0, int d1);
hr_tensor *hr_ag_permute(hr_tensor *t, const int *perm);
hr_tensor *hr_ag_view(hr_tensor *t, int ndim, const int64_t *size);
hr_tensor *hr_ag_reshape(hr_tensor *t, int ndim, const int64_t *size);
hr_tensor *hr_ag_squeeze(hr_tensor *t, int dim);
hr_tensor *hr_ag_unsqueeze(hr_tensor *t, int dim);
hr_tensor *hr_ag_expand(hr_tensor *t, int ndim, const int64_t *size);
/* flip, and repeat/tile (tile: fewer counts than dims are padded with leading 1s), differentiable */
hr_tensor *hr_ag_flip(hr_tensor *t, int ndims, const int *dims);
hr_tensor *hr_ag_repeat(hr_tensor *t, int nreps, const int64_t *reps, bool tile);
hr_tensor *hr_ag_contiguous(hr_tensor *t);
hr_tensor *hr_ag_clone(hr_tensor *t);
hr_tensor *hr_ag_cast(hr_tensor *t, hr_dtype dt);

/* indexing and joining (ag_index.c) */
#include "hr_index.h"
hr_tensor *hr_ag_index_select(hr_tensor *t, int dim, const hr_tensor *index);
hr_tensor *hr_ag_gather(hr_tensor *t, int dim, const hr_tensor *index);
hr_tensor *hr_ag_scatter_add(hr_tensor *t, int dim, const hr_tensor *index, hr_tensor *src);
hr_tensor *hr_ag_masked_fill(hr_tensor *t, const hr_tensor *mask, hr_scalar value);
hr_tensor *hr_ag_masked_select(hr_tensor *t, const hr_tensor *mask);
hr_tensor *hr_ag_cat(int n, hr_tensor *const *ts, int dim);
hr_tensor *hr_ag_stack(int n, hr_tensor *const *ts, int dim);

/* elementwise (ag_pointwise.c) */
#include "hr_pointwise.h"
hr_tensor *hr_ag_binary(hr_binary_op op, hr_operand a, hr_operand b, const hr_operand *alpha);
hr_tensor *hr_ag_unary(hr_unary_op op, hr_tensor *t);
hr_tensor *hr_ag_clamp(hr_tensor *t, const hr_operand *lo, const hr_operand *hi);
hr_tensor *hr_ag_where(hr_tensor *cond, hr_operand a, hr_operand b);

/* reductions (ag_reduce.c); dims as in hr_reduce.h */
hr_tensor *hr_ag_sum(hr_tensor *t, int dim, bool keepdim);
hr_tensor *hr_ag_mean(hr_tensor *t, int dim, bool keepdim);
hr_tensor *hr_ag_sum_dims(hr_tensor *t, const int *dims, int n, bool keepdim);
hr_tensor *hr_ag_mean_dims(hr_tensor *t, const int *dims, int n, bool keepdim);
int hr_ag_max_min(bool is_max, hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices);
hr_tensor *hr_ag_amax_amin(bool is_max, hr_tensor *t, int dim, bool keepdim);
hr_tensor *hr_ag_var_std(bool is_std, hr_tensor *t, int dim, bool unbiased, bool keepdim);
hr_tensor *hr_ag_norm(hr_tensor *t, double p, int dim, bool keepdim);
hr_tensor *hr_ag_cumsum(hr_tensor *t, int dim);
hr_tensor *hr_ag_softmax(hr_tensor *t, int dim);
hr_tensor *hr_ag_log_softmax(hr_tensor *t, int dim);
hr_tensor *hr_ag_cumprod(hr_tensor *t, int dim);
hr_tensor *hr_ag_prod(hr_tensor *t, int dim, bool keepdim);
int hr_ag_sort_topk(bool topk, hr_tensor *t, int64_t k, int dim, bool flag, hr_tensor **values, hr_tensor **indices);
int hr_ag_kthvalue(hr_tensor *t, int64_t k, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices);
int hr_ag_median_dim(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices);
int hr_ag_mode(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices);
hr_tensor *hr_ag_median_all(hr_tensor *t); /* the lower median of every element, 0-dim */
int hr_ag_cummax_cummin(bool is_max, hr_tensor *t, int dim, hr_tensor **values, hr_tensor **indices);

/* matrix products (ag_linalg.c) */
hr_tensor *hr_ag_matmul(hr_tensor *a, hr_tensor *b);
hr_tensor *hr_ag_mm(hr_tensor *a, hr_tensor *b);
hr_tensor *hr_ag_bmm(hr_tensor *a, hr_tensor *b);
hr_tensor *hr_ag_dot(hr_tensor *a, hr_tensor *b);
hr_tensor *hr_ag_mv(hr_tensor *a, hr_tensor *b);
hr_tensor *hr_ag_addmm(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha);
hr_tensor *hr_ag_baddbmm(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha);
hr_tensor *hr_ag_linear(hr_tensor *x, hr_tensor *w, hr_tensor *bias);

#endif
