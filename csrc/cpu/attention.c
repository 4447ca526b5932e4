/*
 * cpu/attention.c — multi-head scaled dot-product attention as one fused node.
 *
 * q [B, Lq, H], k and v [B, Lk, H] hold `heads` heads side by side in their last dimension (head h
 * is columns h*dh .. (h+1)*dh-1, dh = H / heads), exactly as the BERT projections produce them, so
 * every per-head product is a strided GEMM on the inputs themselves: no split/permute copies.
 * For each (batch b, head a):
 *     S = scale * Q Kᵀ + mask_b,   P = softmax_rows(S),   P' = dropout(P),   O = P' V
 * The backward uses the saved P (and the dropout noise):
 *     dP' = dO Vᵀ,  dV = P'ᵀ dO,  dP = dP' * noise,  dS = P * (dP - rowsum(dP * P)),
 *     dQ = scale * dS K,  dK = scale * dSᵀ Q.
 * Work is split over the (b, a) pairs, one thread each, so no two tasks write the same element and
 * results do not depend on the thread count. f32 per-head products of at most 64 columns run on
 * the head kernels below (OpenBLAS's per-call cost exceeded their arithmetic: backward 8-15% and
 * forward 0-7% faster per layer on [20, 33, 768] x 12 heads); others on OpenBLAS, single-threaded.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "../hr_blas_guard.h"
#include "cpu/hr_simd.h"
#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_nn.h"
#include "hr_random.h"
#include "hr_linalg.h"

typedef struct {
    int64_t B, Lq, Lk, H, heads, dh;
    /* elements between rows of q, k and v, and of their gradients: H, or 3H when the three are the
     * column blocks of one packed [B, L, 3H] projection (hr_attention_packed) */
    int64_t ld;
    bool packed;
    double scale, dropout_p;
    bool has_mask, has_noise;
    int64_t mask_bstride, mask_qstride; /* additive mask [B, Lk] (qstride 0) or [B, Lq, Lk] */
} attn_ctx;

typedef struct {
    const attn_ctx *c;
    const char *q, *k, *v, *mask, *noise;
    char *p;   /* saved probabilities [B, heads, Lq, Lk] */
    char *out; /* [B, Lq, H] */
    /* backward */
    const char *g;
    char *dq, *dk, *dv;
    bool need_q, need_k, need_v;
    int failed;
} attn_job;

/* row[x] = exp(row[x] - mx) in place; returns the sum in double. f32 rows use the vector exp of
 * hr_simd.h (as softmax does for f32 rows), f64 rows libm's. */
static double exp_row_f32(float *row, int64_t n, float mx)
{
    hr_exp_shifted_f32(row, row, n, mx);
    return hr_sum_f32(row, n);
}

static double exp_row_f64(double *row, int64_t n, double mx)
{
    double s = 0;
    for (int64_t x = 0; x < n; x++) {
        row[x] = exp(row[x] - mx);
        s += row[x];
    }
    return s;
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

enum { HEAD_MAX_COLS = 64 }; /* widest product row the head kernels keep in registers: 8 vectors */

/* Stores alpha * acc[0..vecs) as row ci of n floats (through a scratch row when n < vecs * 8). */
static inline void head_store_row(float *ci, int64_t n, int vecs, __m256 va, const __m256 *acc)
{
    if (n == 8 * vecs) {
        for (int v = 0; v < vecs; v++) _mm256_storeu_ps(ci + 8 * v, _mm256_mul_ps(va, acc[v]));
        return;
    }
    float row[HEAD_MAX_COLS] __attribute__((aligned(32)));
    for (int v = 0; v < vecs; v++) _mm256_store_ps(row + 8 * v, _mm256_mul_ps(va, acc[v]));
    memcpy(ci, row, (size_t)n * sizeof(float));
}

/* c[i][0..n) = alpha * sum_p A(i, p) * b[p][0..n) for i < m, A(i, p) = a[i * a_rs + p * a_cs], b rows
 * ldb apart with VECS * 8 readable floats each (n <= VECS * 8). The accumulators of an output row
 * stay in registers, the A value is broadcast and the b rows are read in place; up to 6 vectors
 * wide, two rows at a time (one row of 5 vectors would wait on the multiply-adds' latency). */
#define HEAD_ROWS_KERNEL(VECS)                                                                         \
    static void head_rows_##VECS(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs, \
                                 int64_t a_cs, const float *b, int64_t ldb, float *c, int64_t ldc)     \
    {                                                                                                  \
        const __m256 va = _mm256_set1_ps(alpha);                                                       \
        int64_t i = 0;                                                                                 \
        for (; VECS <= 6 && i + 2 <= m; i += 2) {                                                      \
            __m256 acc0[VECS], acc1[VECS];                                                             \
            for (int v = 0; v < VECS; v++) acc0[v] = acc1[v] = _mm256_setzero_ps();                    \
            const float *a0 = a + i * a_rs, *a1 = a0 + a_rs;                                           \
            for (int64_t p = 0; p < k; p++) {                                                          \
                __m256 x0 = _mm256_broadcast_ss(a0 + p * a_cs), x1 = _mm256_broadcast_ss(a1 + p * a_cs); \
                const float *bp = b + p * ldb;                                                         \
                for (int v = 0; v < VECS; v++) {                                                       \
                    __m256 bv = _mm256_loadu_ps(bp + 8 * v);                                           \
                    acc0[v] = _mm256_fmadd_ps(x0, bv, acc0[v]);                                        \
                    acc1[v] = _mm256_fmadd_ps(x1, bv, acc1[v]);                                        \
                }                                                                                      \
            }                                                                                          \
            head_store_row(c + i * ldc, n, VECS, va, acc0);                                            \
            head_store_row(c + (i + 1) * ldc, n, VECS, va, acc1);                                      \
        }                                                                                              \
        for (; i < m; i++) {                                                                           \
            __m256 acc[VECS];                                                                          \
            for (int v = 0; v < VECS; v++) acc[v] = _mm256_setzero_ps();                               \
            const float *ai = a + i * a_rs;                                                            \
            for (int64_t p = 0; p < k; p++) {                                                          \
                __m256 av = _mm256_broadcast_ss(ai + p * a_cs);                                        \
                const float *bp = b + p * ldb;                                                         \
                for (int v = 0; v < VECS; v++) acc[v] = _mm256_fmadd_ps(av, _mm256_loadu_ps(bp + 8 * v), acc[v]); \
            }                                                                                          \
            head_store_row(c + i * ldc, n, VECS, va, acc);                                             \
        }                                                                                              \
    }
HEAD_ROWS_KERNEL(1)
HEAD_ROWS_KERNEL(2)
HEAD_ROWS_KERNEL(3)
HEAD_ROWS_KERNEL(4)
HEAD_ROWS_KERNEL(5)
HEAD_ROWS_KERNEL(6)
HEAD_ROWS_KERNEL(7)
HEAD_ROWS_KERNEL(8)

typedef void (*head_rows_fn)(int64_t, int64_t, int64_t, float, const float *, int64_t, int64_t, const float *,
                             int64_t, float *, int64_t);

/*
 * f32 per-head products (a few dozen rows by at most 64 columns) on the kernels above: OpenBLAS
 * spent more per call on these than their arithmetic takes. A transposed B (q kᵀ, dO vᵀ) is first
 * copied into zero-padded rows; a plain B (v, k, q, dO rows) is read in place when its width is a
 * whole number of vectors. Returns false for shapes these kernels do not take (the caller uses
 * BLAS). beta is always 0 here.
 */
static bool head_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float *c, int ldc)
{
    static const head_rows_fn kernels[8] = {head_rows_1, head_rows_2, head_rows_3, head_rows_4,
                                             head_rows_5, head_rows_6, head_rows_7, head_rows_8};
    if (m < 1 || n < 1 || k < 1 || n > HEAD_MAX_COLS || k > HEAD_MAX_COLS * 8) return false;
    int vecs = (n + 7) / 8;
    int64_t a_rs = ta == CblasTrans ? 1 : lda, a_cs = ta == CblasTrans ? lda : 1;
    if (tb == CblasNoTrans) {
        if (n % 8 != 0) return false; /* the kernel reads whole vectors of each b row */
        kernels[vecs - 1](m, n, k, alpha, a, a_rs, a_cs, b, ldb, c, ldc);
        return true;
    }
    /* b stored n x k: its transpose into k rows of vecs * 8 floats, zero past n */
    float *bt = malloc(sizeof(float) * (size_t)k * (size_t)(vecs * 8));
    if (!bt) return false;
    for (int p = 0; p < k; p++) {
        float *row = bt + (size_t)p * (size_t)(vecs * 8);
        for (int j = 0; j < n; j++) row[j] = b[(size_t)j * (size_t)ldb + (size_t)p];
        for (int j = n; j < vecs * 8; j++) row[j] = 0.0f;
    }
    kernels[vecs - 1](m, n, k, alpha, a, a_rs, a_cs, bt, vecs * 8, c, ldc);
    free(bt);
    return true;
}
#else
static bool head_sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float *a,
                       int lda, const float *b, int ldb, float *c, int ldc)
{
    (void)ta, (void)tb, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda, (void)b, (void)ldb, (void)c, (void)ldc;
    return false;
}
#endif

/* cblas_sgemm's signature (row-major, beta 0 in every call here) over the head kernels. */
static void sgemm_head(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                       const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (beta == 0.0f && hr_matmul_packed_enabled() && head_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc))
        return;
    cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#define ATTENTION_KERNELS(T, SUFFIX, GEMM, EXP_ROW)                                                              \
    static void attn_forward_##SUFFIX(void *arg, int64_t begin, int64_t end)                                 \
    {                                                                                                        \
        attn_job *j = arg;                                                                                   \
        const attn_ctx *c = j->c;                                                                            \
        const int64_t Lq = c->Lq, Lk = c->Lk, H = c->H, dh = c->dh, ld = c->ld;                             \
        T *tmp = NULL;                                                                                       \
        if (c->has_noise && !(tmp = malloc(sizeof(T) * (size_t)(Lq * Lk > 0 ? Lq * Lk : 1)))) {              \
            j->failed = 1;                                                                                   \
            return;                                                                                          \
        }                                                                                                    \
        for (int64_t t = begin; t < end; t++) {                                                              \
            int64_t b = t / c->heads, a = t % c->heads;                                                      \
            const T *Q = (const T *)j->q + b * Lq * ld + a * dh;                                             \
            const T *K = (const T *)j->k + b * Lk * ld + a * dh;                                             \
            const T *V = (const T *)j->v + b * Lk * ld + a * dh;                                             \
            T *P = (T *)j->p + t * Lq * Lk;                                                                  \
            T *O = (T *)j->out + b * Lq * H + a * dh;                                                        \
            if (Lk == 0) {                                                                                   \
                for (int64_t i = 0; i < Lq; i++)                                                             \
                    for (int64_t d = 0; d < dh; d++) O[i * H + d] = 0;                                       \
                continue;                                                                                    \
            }                                                                                                \
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Lq, (int)Lk, (int)dh, (T)c->scale, Q, (int)ld, \
                 K, (int)ld, (T)0, P, (int)Lk);                                                              \
            for (int64_t i = 0; i < Lq; i++) {                                                               \
                T *row = P + i * Lk;                                                                         \
                if (c->has_mask) {                                                                           \
                    const T *m = (const T *)j->mask + b * c->mask_bstride + i * c->mask_qstride;             \
                    for (int64_t x = 0; x < Lk; x++) row[x] += m[x];                                         \
                }                                                                                            \
                T mx = row[0];                                                                               \
                for (int64_t x = 1; x < Lk; x++)                                                             \
                    if (row[x] > mx) mx = row[x];                                                            \
                double s = EXP_ROW(row, Lk, mx);                                                             \
                T inv = (T)(1.0 / s);                                                                        \
                for (int64_t x = 0; x < Lk; x++) row[x] *= inv;                                              \
            }                                                                                                \
            const T *Pd = P;                                                                                 \
            if (c->has_noise) {                                                                              \
                const T *n = (const T *)j->noise + t * Lq * Lk;                                              \
                for (int64_t x = 0; x < Lq * Lk; x++) tmp[x] = P[x] * n[x];                                  \
                Pd = tmp;                                                                                    \
            }                                                                                                \
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Lq, (int)dh, (int)Lk, (T)1, Pd, (int)Lk, V, \
                 (int)ld, (T)0, O, (int)H);                                                                  \
        }                                                                                                    \
        free(tmp);                                                                                           \
    }                                                                                                        \
                                                                                                             \
    static void attn_backward_##SUFFIX(void *arg, int64_t begin, int64_t end)                                \
    {                                                                                                        \
        attn_job *j = arg;                                                                                   \
        const attn_ctx *c = j->c;                                                                            \
        const int64_t Lq = c->Lq, Lk = c->Lk, H = c->H, dh = c->dh, ld = c->ld;                             \
        size_t n = (size_t)(Lq * Lk > 0 ? Lq * Lk : 1);                                                      \
        T *dP = malloc(sizeof(T) * n), *Pd = c->has_noise ? malloc(sizeof(T) * n) : NULL;                   \
        if (!dP || (c->has_noise && !Pd)) {                                                                  \
            free(dP);                                                                                        \
            free(Pd);                                                                                        \
            j->failed = 1;                                                                                   \
            return;                                                                                          \
        }                                                                                                    \
        for (int64_t t = begin; t < end; t++) {                                                              \
            int64_t b = t / c->heads, a = t % c->heads;                                                      \
            const T *Q = (const T *)j->q + b * Lq * ld + a * dh;                                             \
            const T *K = (const T *)j->k + b * Lk * ld + a * dh;                                             \
            const T *V = (const T *)j->v + b * Lk * ld + a * dh;                                             \
            const T *G = (const T *)j->g + b * Lq * H + a * dh;                                              \
            const T *P = (const T *)j->p + t * Lq * Lk;                                                      \
            const T *noise = c->has_noise ? (const T *)j->noise + t * Lq * Lk : NULL;                        \
            if (Lk == 0 || Lq == 0) continue;                                                                \
            const T *Pused = P;                                                                              \
            if (noise) {                                                                                     \
                for (int64_t x = 0; x < Lq * Lk; x++) Pd[x] = P[x] * noise[x];                               \
                Pused = Pd;                                                                                  \
            }                                                                                                \
            if (j->need_v)                                                                                   \
                GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Lk, (int)dh, (int)Lq, (T)1, Pused,        \
                     (int)Lk, G, (int)H, (T)0, (T *)j->dv + b * Lk * ld + a * dh, (int)ld);                  \
            if (!j->need_q && !j->need_k) continue;                                                          \
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)Lq, (int)Lk, (int)dh, (T)1, G, (int)H, V,     \
                 (int)ld, (T)0, dP, (int)Lk);                                                                \
            for (int64_t i = 0; i < Lq; i++) {                                                               \
                T *drow = dP + i * Lk;                                                                       \
                const T *prow = P + i * Lk;                                                                  \
                if (noise)                                                                                   \
                    for (int64_t x = 0; x < Lk; x++) drow[x] *= noise[i * Lk + x];                           \
                double dot = 0;                                                                              \
                for (int64_t x = 0; x < Lk; x++) dot += (double)drow[x] * prow[x];                          \
                T dt = (T)dot;                                                                               \
                for (int64_t x = 0; x < Lk; x++) drow[x] = prow[x] * (drow[x] - dt);                         \
            }                                                                                                \
            if (j->need_q)                                                                                   \
                GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)Lq, (int)dh, (int)Lk, (T)c->scale, dP,  \
                     (int)Lk, K, (int)ld, (T)0, (T *)j->dq + b * Lq * ld + a * dh, (int)ld);                 \
            if (j->need_k)                                                                                   \
                GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)Lk, (int)dh, (int)Lq, (T)c->scale, dP,    \
                     (int)Lk, Q, (int)ld, (T)0, (T *)j->dk + b * Lk * ld + a * dh, (int)ld);                 \
        }                                                                                                    \
        free(dP);                                                                                            \
        free(Pd);                                                                                            \
    }

ATTENTION_KERNELS(float, f32, sgemm_head, exp_row_f32)
ATTENTION_KERNELS(double, f64, cblas_dgemm, exp_row_f64)

void openblas_set_num_threads(int num_threads);

/* Runs fn over the (b, a) pairs: one GEMM sequence per task, OpenBLAS single-threaded inside. */
static void run_tasks(attn_job *j, hr_parallel_fn fn, int64_t ntasks)
{
    int threads = hr_get_num_threads();
    if (threads > 1 && ntasks > 1 && !hr_blas_limited()) {
        openblas_set_num_threads(1);
        hr_parallel_for(ntasks, 1, fn, j);
        openblas_set_num_threads(threads);
    } else {
        fn(j, 0, ntasks);
    }
}

/* Saved by the node: q, k, v (or the packed qkv alone), the probabilities, the dropout noise. */
static int attn_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const attn_ctx *c = node->ctx;
    int ninputs = c->packed ? 1 : 3, at = 0;
    hr_tensor *q = hr_node_saved(node, at++);
    hr_tensor *k = c->packed ? q : hr_node_saved(node, at++), *v = c->packed ? q : hr_node_saved(node, at++);
    hr_tensor *p = hr_node_saved(node, at++);
    hr_tensor *noise = c->has_noise ? hr_node_saved(node, at) : NULL;
    if (!q || !k || !v || !p || (c->has_noise && !noise)) return -1;
    hr_tensor *g = hr_readable_as(grad, q->dtype);
    if (!g) return -1;
    size_t el = hr_dtype_size(q->dtype);
    /* packed: q, k and v are the column blocks of one tensor, at 0, H and 2H */
    const char *qd = hr_tensor_data(q), *kd = (const char *)hr_tensor_data(k) + (c->packed ? c->H * el : 0);
    const char *vd = (const char *)hr_tensor_data(v) + (c->packed ? 2 * c->H * el : 0);
    attn_job j = {c, qd, kd, vd, NULL, noise ? hr_tensor_data(noise) : NULL, hr_tensor_data(p), NULL, hr_tensor_data(g),
                  NULL, NULL, NULL, hr_node_input_needs_grad(node, 0),
                  hr_node_input_needs_grad(node, c->packed ? 0 : 1), hr_node_input_needs_grad(node, c->packed ? 0 : 2), 0};
    hr_tensor *outs[3] = {NULL, NULL, NULL};
    hr_tensor *shapes[3] = {q, k, v};
    bool need[3] = {j.need_q, j.need_k, j.need_v};
    int rc = 0;
    /* every element of a gradient is written (each head's block of each row), so none is zeroed */
    for (int i = 0; i < ninputs && rc == 0; i++)
        if (need[i] && !(outs[i] = hr_tensor_empty(shapes[i]->ndim, shapes[i]->size, q->dtype, hr_cpu()))) rc = -1;
    if (rc == 0) {
        if (c->packed) {
            char *d = outs[0] ? hr_tensor_data(outs[0]) : NULL;
            j.dq = d;
            j.dk = d ? d + c->H * el : NULL;
            j.dv = d ? d + 2 * c->H * el : NULL;
        } else {
            j.dq = outs[0] ? hr_tensor_data(outs[0]) : NULL;
            j.dk = outs[1] ? hr_tensor_data(outs[1]) : NULL;
            j.dv = outs[2] ? hr_tensor_data(outs[2]) : NULL;
        }
        if (hr_blas_begin("attention backward")) {
            rc = -1;
        } else {
            run_tasks(&j, q->dtype == HR_F32 ? attn_backward_f32 : attn_backward_f64, c->B * c->heads);
            hr_blas_end();
        }
        if (rc == 0 && j.failed) rc = hr_fail(HR_ENOMEM, "attention backward: out of memory for scratch buffers");
    }
    hr_tensor_release(g);
    for (int i = 0; i < ninputs; i++) {
        if (rc == 0) gi[i] = outs[i];
        else hr_tensor_release(outs[i]);
    }
    return rc;
}

/* The additive mask of attention over Lq queries and Lk keys as c needs it ([B, Lk] or
 * [B, Lq, Lk], contiguous, in the compute dtype; the strides into c), or NULL with mc NULL when
 * there is none. Returns -1 on a bad mask. */
static int attention_mask(hr_tensor *mask, attn_ctx *c, hr_dtype dt, hr_tensor **mc)
{
    char m[96];
    *mc = NULL;
    if (!mask) return 0;
    bool per_query = mask->ndim == 3;
    if (!((mask->ndim == 2 && mask->size[0] == c->B && mask->size[1] == c->Lk) ||
          (per_query && mask->size[0] == c->B && mask->size[1] == c->Lq && mask->size[2] == c->Lk)))
        return hr_fail(HR_EINVAL, "attention: additive mask %s must be [B, Lk] or [B, Lq, Lk] (%lld, %lld, %lld)",
                       hr_tensor_desc(mask, m, sizeof m), (long long)c->B, (long long)c->Lq, (long long)c->Lk);
    if (hr_requires_grad(mask) && hr_grad_enabled())
        return hr_fail(HR_EINVAL, "attention: the mask is not differentiable; detach() it");
    *mc = hr_cast(mask, dt); /* contiguous, in the compute dtype */
    if (!*mc) return -1;
    c->has_mask = true;
    c->mask_bstride = per_query ? c->Lq * c->Lk : c->Lk;
    c->mask_qstride = per_query ? c->Lk : 0;
    return 0;
}

/* The CPU forward of c over the contiguous inputs held (q, k, v, or the packed qkv alone) whose
 * head blocks start at qd, kd, vd; records the node on `inputs` (ninputs of them). */
static hr_tensor *attention_cpu(attn_ctx *c, hr_tensor *const *held, int nheld, hr_tensor **inputs, int ninputs,
                                const char *qd, const char *kd, const char *vd, hr_tensor *mc, hr_dtype dt,
                                struct hr_generator *gen)
{
    int64_t psize[4] = {c->B, c->heads, c->Lq, c->Lk};
    int64_t osize[3] = {c->B, c->Lq, c->H};
    hr_tensor *p = hr_tensor_empty(4, psize, dt, hr_cpu());
    hr_tensor *noise = c->has_noise ? hr_tensor_empty(4, psize, dt, hr_cpu()) : NULL;
    hr_tensor *out = hr_tensor_empty(3, osize, dt, hr_cpu());
    hr_tensor *result = NULL;
    if (!p || (c->has_noise && !noise) || !out) goto done;
    if (noise) {
        if (hr_random_dropout_mask_(gen, noise, c->dropout_p)) goto done;
        int64_t nn = hr_tensor_numel(noise);
        if (dt == HR_F32) {
            float *x = hr_tensor_data(noise);
            float keep = (float)(1.0 - c->dropout_p);
            for (int64_t i = 0; i < nn; i++) x[i] = x[i] / keep;
        } else {
            double *x = hr_tensor_data(noise);
            for (int64_t i = 0; i < nn; i++) x[i] = x[i] / (1.0 - c->dropout_p);
        }
    }
    attn_job j = {c, qd, kd, vd, mc ? hr_tensor_data(mc) : NULL, noise ? hr_tensor_data(noise) : NULL,
                  hr_tensor_data(p), hr_tensor_data(out), NULL, NULL, NULL, NULL, false, false, false, 0};
    if (hr_blas_begin("attention")) goto done; /* OpenBLAS would hang out of memory */
    run_tasks(&j, dt == HR_F32 ? attn_forward_f32 : attn_forward_f64, c->B * c->heads);
    hr_blas_end();
    if (j.failed) {
        hr_fail(HR_ENOMEM, "attention: out of memory for scratch buffers");
        goto done;
    }
    if (hr_should_record(ninputs, inputs)) {
        hr_node *node = hr_node_new("attention", attn_backward, ninputs, inputs, sizeof(attn_ctx));
        bool saved = node != NULL;
        for (int i = 0; i < nheld && saved; i++) saved = hr_node_save(node, held[i]) >= 0;
        if (!saved || hr_node_save(node, p) < 0 || (noise && hr_node_save(node, noise) < 0)) {
            hr_node_release(node);
            goto done;
        }
        memcpy(node->ctx, c, sizeof *c);
        hr_node_attach(node, out);
    }
    result = out;
    out = NULL;
done:
    hr_tensor_release(p);
    hr_tensor_release(noise);
    hr_tensor_release(out);
    return result;
}

static int check_dropout(double dropout_p)
{
    if (!(dropout_p >= 0 && dropout_p < 1))
        return hr_fail(HR_EINVAL, "attention: dropout probability must be in [0, 1), got %g", dropout_p);
    return 0;
}

hr_tensor *hr_attention(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads, double dropout_p,
                        bool training, struct hr_generator *gen)
{
    char a[96], b[96], m[96];
    hr_tensor *ins[4] = {q, k, v, mask};
    for (int i = 0; i < 4; i++)
        if (ins[i] && hr_tensor_check_live(ins[i], "attention")) return NULL;
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || k->size[0] != q->size[0] || v->size[0] != q->size[0] ||
        k->size[2] != q->size[2] || v->size[2] != q->size[2] || v->size[1] != k->size[1])
        return hr_fail_null(HR_EINVAL, "attention: q %s, k %s and v %s must be [B, Lq, H], [B, Lk, H], [B, Lk, H]",
                            hr_tensor_desc(q, a, sizeof a), hr_tensor_desc(k, b, sizeof b), hr_tensor_desc(v, m, sizeof m));
    /* the GPU path also takes bf16/f16 (autocast); the CPU kernels are f32/f64 */
    bool half_ok = hr_tensor_device(q).type == HR_CUDA && (q->dtype == HR_BF16 || q->dtype == HR_F16);
    if (q->dtype != k->dtype || q->dtype != v->dtype || (q->dtype != HR_F32 && q->dtype != HR_F64 && !half_ok))
        return hr_fail_null(HR_EINVAL, "attention: q, k and v must all be f32 or all f64 (or bf16/f16 on a GPU)");
    if (heads < 1 || q->size[2] % heads)
        return hr_fail_null(HR_EINVAL, "attention: hidden size %lld is not divisible into %lld heads",
                            (long long)q->size[2], (long long)heads);
    if (check_dropout(dropout_p)) return NULL;
    bool cuda = hr_tensor_device(q).type != HR_CPU;
    for (int i = 0; i < 4; i++)
        if (ins[i] && hr_tensor_device(ins[i]).type != hr_tensor_device(q).type)
            return hr_fail_null(HR_EDEVICE, "attention: q, k, v and the mask must be on one device");
    attn_ctx c = {q->size[0], q->size[1], k->size[1], q->size[2], heads, q->size[2] / heads, q->size[2], false,
                  1.0 / sqrt((double)(q->size[2] / heads)), dropout_p, false, training && dropout_p > 0, 0, 0};
    hr_tensor *mc;
    if (attention_mask(mask, &c, q->dtype, &mc)) return NULL;
    if (cuda) { /* the device path composes differentiable ops (same dropout stream order) */
        hr_tensor *r = hr_cuda_attention(q, k, v, mc, heads, dropout_p, training, gen);
        hr_tensor_release(mc);
        return r;
    }
    hr_tensor *qc = hr_contiguous(q), *kc = hr_contiguous(k), *vc = hr_contiguous(v);
    hr_tensor *result = NULL;
    if (qc && kc && vc) {
        hr_tensor *held[3] = {qc, kc, vc}, *inputs[3] = {q, k, v};
        result = attention_cpu(&c, held, 3, inputs, 3, hr_tensor_data(qc), hr_tensor_data(kc), hr_tensor_data(vc), mc,
                               q->dtype, gen);
    }
    hr_tensor_release(qc);
    hr_tensor_release(kc);
    hr_tensor_release(vc);
    hr_tensor_release(mc);
    return result;
}

hr_tensor *hr_attention_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training,
                               struct hr_generator *gen)
{
    char a[96];
    if (hr_tensor_check_live(qkv, "attention_packed") || (mask && hr_tensor_check_live(mask, "attention_packed")))
        return NULL;
    if (qkv->ndim != 3 || qkv->size[2] % 3)
        return hr_fail_null(HR_EINVAL, "attention_packed: qkv %s must be [B, L, 3H] (q, k and v side by side)",
                            hr_tensor_desc(qkv, a, sizeof a));
    int64_t H = qkv->size[2] / 3;
    bool half_ok = hr_tensor_device(qkv).type == HR_CUDA && (qkv->dtype == HR_BF16 || qkv->dtype == HR_F16);
    if (qkv->dtype != HR_F32 && qkv->dtype != HR_F64 && !half_ok)
        return hr_fail_null(HR_EINVAL, "attention_packed: qkv must be f32 or f64 (or bf16/f16 on a GPU), got %s",
                            hr_dtype_name(qkv->dtype));
    if (heads < 1 || H % heads)
        return hr_fail_null(HR_EINVAL, "attention_packed: hidden size %lld is not divisible into %lld heads",
                            (long long)H, (long long)heads);
    if (check_dropout(dropout_p)) return NULL;
    if (mask && hr_tensor_device(mask).type != hr_tensor_device(qkv).type)
        return hr_fail_null(HR_EDEVICE, "attention_packed: qkv and the mask must be on one device");
    attn_ctx c = {qkv->size[0], qkv->size[1], qkv->size[1], H, heads, H / heads, 3 * H, true,
                  1.0 / sqrt((double)(H / heads)), dropout_p, false, training && dropout_p > 0, 0, 0};
    hr_tensor *mc;
    if (attention_mask(mask, &c, qkv->dtype, &mc)) return NULL;
    if (hr_tensor_device(qkv).type != HR_CPU) {
        hr_tensor *r = hr_cuda_attention_packed(qkv, mc, heads, dropout_p, training, gen);
        hr_tensor_release(mc);
        return r;
    }
    hr_tensor *qc = hr_contiguous(qkv), *result = NULL;
    if (qc) {
        size_t el = hr_dtype_size(qkv->dtype);
        const char *base = hr_tensor_data(qc);
        result = attention_cpu(&c, &qc, 1, &qkv, 1, base, base + H * el, base + 2 * H * el, mc, qkv->dtype, gen);
    }
    hr_tensor_release(qc);
    hr_tensor_release(mc);
    return result;
}
