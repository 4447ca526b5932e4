/* packed_gemm.h — f32 matrix products of the transformer's sizes on AVX2/FMA CPUs: both operands
 * packed into cache-sized panels, a 6 x 16 register kernel, threads over disjoint output blocks
 * (csrc/cpu/packed_gemm.c). */
#ifndef HR_PACKED_GEMM_H
#define HR_PACKED_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* c (m x n, row stride ldc) = alpha * A @ B + beta * c, where A(i, p) = a[i * a_rs + p * a_cs]
 * (m x k) and B(p, j) = b[p * b_rs + j * b_cs] (k x n), any strides. beta == 0 never reads c.
 * With bias (n floats; beta must be 0) c = alpha * A @ B + bias added to every row, the same
 * values as c filled with the bias rows and beta = 1, with no pass over c to fill it.
 * Returns false, having done nothing, when the product is too small to gain from packing, the
 * CPU lacks AVX2/FMA, or scratch memory cannot be had; the caller then uses BLAS. Each element
 * is summed in the same order whatever the number of threads, so results do not depend on it. */
bool hr_packed_sgemm(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs, int64_t a_cs,
                     const float *b, int64_t b_rs, int64_t b_cs, float beta, const float *bias, float *c, int64_t ldc);

/* Whether this build has the packed and skinny kernels (compiled for a CPU with AVX2 and FMA);
 * without them every f32 product goes to BLAS. */
bool hr_cpu_gemm_kernels_built(void);

#endif
