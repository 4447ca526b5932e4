/*
 * hr_search.h — finding and counting values (Lua-free core API): unique, bincount, searchsorted.
 *
 * These run on the host: a CUDA tensor is copied to the host, and the results go back to its
 * device. Results are new contiguous tensors; indices and counts are 0-based i64 (i32 where asked).
 * None of them is differentiable (their results are counts and positions, or values picked from
 * the input without a gradient in torch either).
 */
#ifndef HR_SEARCH_H
#define HR_SEARCH_H

#include "hr_core.h"

/* The distinct values of t in ascending order (1-D, t's dtype), as torch.unique(sorted = True):
 * inverse (t's shape) holds the position in values of each element's value, counts (1-D) how
 * often each value occurs. Any out pointer may be NULL. Equal values (0 and -0 included) are one
 * entry, whose bytes are those of its first occurrence; every NaN is an entry of its own, after
 * +inf, in the order of the input. */
int hr_unique(const hr_tensor *t, hr_tensor **values, hr_tensor **inverse, hr_tensor **counts);
/* The distinct slices of t along dim (0-based), as torch.unique(dim = dim): values (t's shape with
 * dim holding one slice per distinct one, sorted lexicographically by their elements in row-major
 * order), inverse (1-D, t's size along dim) and counts (1-D). A slice holding NaN equals no other. */
int hr_unique_dim(const hr_tensor *t, int dim, hr_tensor **values, hr_tensor **inverse, hr_tensor **counts);

/* How often each value 0, 1, ... occurs in the 1-D non-negative integer tensor t (i64), or, with
 * weights (1-D, t's length), the sum of the weights of the elements holding it: f32 for f32
 * weights, f64 for any other (torch's rule), added in the input's order. The result has
 * max(max(t) + 1, minlength) bins. */
hr_tensor *hr_bincount(const hr_tensor *t, const hr_tensor *weights, int64_t minlength);

/* For each element of values, the position in the sorted last dimension of seq where it would be
 * inserted keeping the order: before the equal elements (right = false) or after them (right =
 * true), by torch's comparisons (a NaN value goes to the end). seq is 1-D (for values of any
 * shape) or has values' leading dimensions; sorter (NULL or i64 of seq's shape) holds the
 * positions that sort seq's last dimension. Elements compare as int64 when both tensors hold
 * integers, else as doubles. The result has values' shape, i64 or (out_int32) i32. */
hr_tensor *hr_searchsorted(const hr_tensor *seq, const hr_tensor *values, bool right, bool out_int32,
                           const hr_tensor *sorter);

#endif
