/*
 * hr_linalg.h — matrix products on the CPU through OpenBLAS (csrc/cpu/matmul.c).
 *
 * Every function returns a new contiguous tensor (NULL with the reason in hr_last_error()).
 * Operands must share one dtype (no promotion, as in PyTorch) and live on the CPU.
 *   f32 -> sgemm, f64 -> dgemm, bf16/f16 -> converted to f32, sgemm, rounded once at the end,
 *   i64/i32/u8 -> a plain loop with wrapping integer arithmetic; bool is refused.
 * Strided operands are handed to BLAS as they are (transposed or not, any leading dimension,
 * any batch stride including 0 for an expanded batch); only matrices whose two last dims are
 * not unit-stride in either direction are copied first.
 */
#ifndef HR_LINALG_H
#define HR_LINALG_H

#include "hr_core.h"

/* PyTorch's matmul: 1-D·1-D dot (0-dim result), 1-D operands promoted to a row/column and the
 * added dim removed again, N-D batched with the batch dims broadcast. */
hr_tensor *hr_matmul(hr_tensor *a, hr_tensor *b);
/* 2-D x 2-D only. */
hr_tensor *hr_mm(hr_tensor *a, hr_tensor *b);
/* 3-D x 3-D with equal batch sizes (no broadcasting). */
hr_tensor *hr_bmm(hr_tensor *a, hr_tensor *b);
/* beta*c + alpha*(a@b) for 2-D a, b; c broadcasts to the result. With beta == 0, c's values are
 * ignored (NaN in c does not propagate), as in BLAS and PyTorch. */
hr_tensor *hr_addmm(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha);
/* beta*c + alpha*(a@b) for 3-D a, b with equal batch sizes; c broadcasts to the result. */
hr_tensor *hr_baddbmm(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha);
/* 1-D x 1-D of equal length; a 0-dim result. */
hr_tensor *hr_dot(hr_tensor *a, hr_tensor *b);
/* 2-D matrix times 1-D vector. */
hr_tensor *hr_mv(hr_tensor *a, hr_tensor *b);
/* matmul into an existing tensor of the product's shape and dtype (any layout; written in
 * place when contiguous and not read by a or b, else through a temporary). Returns out with a new
 * reference. */
hr_tensor *hr_matmul_out(hr_tensor *out, hr_tensor *a, hr_tensor *b);
/* In place: c = beta*c + alpha*(a@b), c of exactly the product's shape (2-D a, b for addmm_,
 * 3-D for baddbmm_). Returns c with a new reference. */
hr_tensor *hr_addmm_(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha);
hr_tensor *hr_baddbmm_(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha);
/* x @ w^T + bias for x of shape (..., K), w of shape (N, K) and bias (N) or NULL: one GEMM when x's
 * leading dims can be folded into rows, w^T handed to BLAS as a transposed operand. */
hr_tensor *hr_linear(hr_tensor *x, hr_tensor *w, hr_tensor *bias);

/* How many operands the products have copied so far because BLAS could not read them in place
 * (neither of the two last dims unit-stride); lets tests check that views are not copied. */
int64_t hr_matmul_operand_copies(void);
/* Lets f32 products use the packed AVX2 kernels (true, the default) or only BLAS; returns the
 * previous setting. For specs and benchmarks that compare the two. */
bool hr_matmul_set_packed(bool enabled);
bool hr_matmul_packed_enabled(void); /* the setting above */
int64_t hr_matmul_packed_calls(void); /* products the packed kernels have done so far */

/* Seconds per call of `batch` bare cblas_sgemm calls (row-major, no transposes) on distinct
 * M x K and K x N buffers allocated here, averaged over `repeats` calls after one warm-up call;
 * < 0 on failure. The benchmark's baseline for hr_matmul. */
double hr_bench_sgemm(int64_t m, int64_t n, int64_t k, int64_t batch, int repeats);

#endif
