/* skinny_gemm.h — f32 products of a short operand (a few hundred rows at most) with a very long
 * one: the LM head's logits, input gradient and weight gradient (csrc/cpu/skinny_gemm.c). */
#ifndef HR_SKINNY_GEMM_H
#define HR_SKINNY_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* c (m x n, row-major, leading dimension n) = alpha * op(a) @ op(b) + beta * c, where op(a) is
 * m x k (a_trans: a is stored k x m) and op(b) is k x n (b_trans: b is stored n x k); lda/ldb
 * are the stored row strides. beta == 0 never reads c. Returns false, having done nothing, when
 * the shape or layout is not one these kernels are for (or the CPU lacks AVX2/FMA); the caller
 * then uses BLAS. Results do not depend on the number of threads. */
bool hr_skinny_sgemm(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                     int64_t lda, const float *b, int64_t ldb, float beta, float *c);

#endif
