/*
 * hr_index.h — indexing and joining ops of the core (csrc/cpu/index.c, csrc/cpu/join.c).
 *
 * Same conventions as hr_core.h: dims are 0-based (negative dims are wrapped by the callers),
 * pointer results are new references (NULL + hr_last_error() on failure), int results are 0 / -1.
 * VALUES inside index tensors are 0-based positions and must be i64 or i32; every value is checked
 * against the size of the dimension it indexes before anything is read or written, so a failed
 * in-place op leaves its destination untouched.
 */
#ifndef HR_INDEX_H
#define HR_INDEX_H

#include "hr_core.h"

/* ------------------------------------------------------------------ gather / scatter (index.c) */

/* out = t with dimension dim replaced by the entries index (0-d or 1-D) selects; always a copy. */
hr_tensor *hr_index_select(hr_tensor *t, int dim, const hr_tensor *index);
/* out[i][j][k] = t[index[i][j][k]][j][k] for dim 0 (PyTorch's gather): index has t's ndim, its size
 * along every other dim is at most t's; the result has index's shape and t's dtype. */
hr_tensor *hr_gather(hr_tensor *t, int dim, const hr_tensor *index);
/* t[index[i][j][k]][j][k] += src[i][j][k] for dim 0 (PyTorch's scatter_add_): duplicated indices
 * accumulate. src has t's dtype; index is at most src's size everywhere and at most t's size
 * along every dim but dim. */
int hr_scatter_add_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src);
/* t[index[i][j][k]][j][k] = src[i][j][k] (PyTorch's scatter_ with a tensor source); when an index
 * repeats, the last write in row-major order of index wins. */
int hr_scatter_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src);
/* Out-of-place forms: a contiguous copy of t with the scatter applied. */
hr_tensor *hr_scatter_add(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src);
hr_tensor *hr_scatter(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src);
/* t.select(dim, index[k]) += alpha * src.select(dim, k) for every k (1-D index; src has t's shape
 * except size len(index) along dim; duplicates accumulate in index order). */
int hr_index_add_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src, double alpha);
/* t.select(dim, index[k]) = src.select(dim, k); the last of duplicated indices wins. */
int hr_index_copy_(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src);

/* The autograd's backward passes scatter with an index their forward already checked (the tape
 * refuses a saved index changed in place since): between these calls its values are not checked
 * again, so a backward on a GPU neither copies the index to the host nor waits for the device.
 * Per thread; calls nest. */
void hr_index_checks_trusted_begin(void);
void hr_index_checks_trusted_end(void);

/* ------------------------------------------------------------------ masks (index.c) */

/* The row-major positions (i64, 1-D, on dev) of the set elements of a bool/u8 mask broadcast to
 * shape (nd, size): masked_select's gather list, and where its gradient goes back. */
hr_tensor *hr_mask_positions(const hr_tensor *mask, int nd, const int64_t *shape, hr_device dev);

/* A fill value kept exact for 64-bit integers: is_int selects i (integer dtypes) or d. */
typedef struct {
    bool is_int;
    int64_t i;
    double d;
} hr_scalar;

/* t[mask] = value where mask (bool or u8) broadcasts to t's shape. */
int hr_masked_fill_(hr_tensor *t, const hr_tensor *mask, hr_scalar value);
/* Copy of t and mask broadcast together, with the fill applied. */
hr_tensor *hr_masked_fill(hr_tensor *t, const hr_tensor *mask, hr_scalar value);
/* 1-D tensor of t's elements where mask is set (t and mask broadcast together, row-major order). */
hr_tensor *hr_masked_select(hr_tensor *t, const hr_tensor *mask);
/* n x ndim i64 tensor of the (0-based) coordinates of the non-zero elements, row-major order. */
hr_tensor *hr_nonzero(hr_tensor *t);

/* ------------------------------------------------------------------ joining and splitting (join.c) */

/*
 * Concatenates n tensors along dim (0-based, of the result). The result dtype is the promotion of
 * every input dtype (hr_dtype_promote, as PyTorch's cat); all inputs must share the device, the
 * number of dims and every size except along dim. As in PyTorch, 1-D tensors of size 0 are skipped
 * whatever the other shapes are.
 */
hr_tensor *hr_cat(int n, hr_tensor *const *ts, int dim);
/*
 * Rows of n 2-D CPU tensors of one dtype and one width D, picked by a 1-D integer index into their
 * concatenation along dim 0 (row r of tensor k is at position rows(0) + ... + rows(k-1) + r); -1
 * picks a row of zeros. The result has the shape lead[0..nlead-1] + [D] (their product must be
 * index's length), or [len(index), D] when nlead is 0: hr_cat then hr_index_select in one pass,
 * each row written once and nothing else allocated (how hero.data's collates build their frame
 * tensors from the videos' features). Every index value is checked before anything is written.
 */
hr_tensor *hr_gather_rows(int n, hr_tensor *const *ts, const hr_tensor *index, int nlead, const int64_t *lead);
/* Joins n tensors of the same shape along a new dim (0..ndim). */
hr_tensor *hr_stack(int n, hr_tensor *const *ts, int dim);
/* Views of consecutive pieces of t along dim with the given sizes (their sum must be t's size);
 * out receives nsplit new references. */
int hr_split_sizes(hr_tensor *t, int dim, int nsplit, const int64_t *sizes, hr_tensor **out);
/* Number of pieces hr_split(t, dim, split_size) makes (PyTorch: ceil(size / split_size), at least
 * one); -1 when split_size is not positive for a non-empty dimension. */
int64_t hr_split_count(const hr_tensor *t, int dim, int64_t split_size);
/* Pieces of split_size elements along dim, the last one smaller when the size does not divide. */
int hr_split(hr_tensor *t, int dim, int64_t split_size, hr_tensor **out);
/* Piece size and count of chunk(chunks): PyTorch's rule (ceil(size / chunks) per piece, so fewer
 * than chunks pieces can result; a dimension of size 0 gives chunks empty pieces). */
int hr_chunk_plan(const hr_tensor *t, int dim, int64_t chunks, int64_t *piece, int64_t *count);
/* Copy of t with the order of the elements reversed along each listed dim. */
hr_tensor *hr_flip(hr_tensor *t, int ndims, const int *dims);
/* PyTorch's repeat: nreps >= t's ndim; the result's size along dim i is reps[i] times the
 * (left-padded with 1) size of t. */
hr_tensor *hr_repeat(hr_tensor *t, int nreps, const int64_t *reps);
/* NumPy's and PyTorch's tile: as repeat, but fewer counts than dims are padded with leading 1s. */
hr_tensor *hr_tile(hr_tensor *t, int nreps, const int64_t *reps);

#endif
