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

#endif
