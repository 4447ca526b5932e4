/*
 * matmul.c — matrix products on the CPU: one batched-GEMM engine behind matmul, mm, bmm, addmm,
 * baddbmm, dot, mv and linear.
 *
 * The engine works on "plans": a broadcast batch shape, per-operand batch strides (0 where an
 * operand is broadcast or expanded), and per-operand matrix strides. Operands go to row-major
 * OpenBLAS as they are whenever one of their two last dims is unit-stride (NoTrans or Trans with
 * the other stride as the leading dimension); only other layouts are copied. The output is always
 * a fresh contiguous tensor, so batch dims over which the second operand is broadcast can be
 * folded into the rows of one larger GEMM (x @ W for x of shape B x T x K is one GEMM).
 */
#include <cblas.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../hr_blas_guard.h"
#include "hr_cuda.h"
#include "hr_linalg.h"
#include "packed_gemm.h"
#include "skinny_gemm.h"

/* ------------------------------------------------------------------ plan */

typedef struct {
    char *data;                     /* first element of the first matrix */
    int64_t bstride[HR_MAX_DIMS];   /* element strides over the broadcast batch dims */
    bool trans;                     /* handed to BLAS as CblasTrans */
    int64_t ld;                     /* BLAS leading dimension (elements) */
    int64_t rs, cs;                 /* the matrix's own row/column strides (integer loop) */
} operand;

typedef struct {
    hr_dtype dt;                    /* F32, F64 or an integer type */
    int nb;                         /* batch dims after coalescing */
    int64_t bsize[HR_MAX_DIMS];
    int64_t nbatch;
    int64_t m, n, k;
    operand a, b;
    char *c;                        /* contiguous nbatch x m x n output */
    double alpha, beta;
    const float *bias;              /* f32 row of n added to every row (beta 0), for the packed kernels */
} gemm_plan;

static int64_t max64(int64_t x, int64_t y) { return x > y ? x : y; }

/*
 * Decides how a rows x cols matrix with element strides (rs, cs) is handed to row-major BLAS
 * without a copy. A stride along a dim of size 1 is never used, so it does not constrain the
 * choice. Returns false when neither dim is unit-stride or the leading dimension would be too
 * small (overlapping rows, e.g. an expanded matrix with stride 0) or too large for BLAS's int.
 */
static bool blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, bool *trans, int64_t *ld)
{
    int64_t nt_ld = rows <= 1 ? max64(cols, 1) : rs;
    if ((cols <= 1 || cs == 1) && nt_ld >= max64(cols, 1) && nt_ld <= INT_MAX) {
        *trans = false;
        *ld = nt_ld;
        return true;
    }
    int64_t t_ld = cols <= 1 ? max64(rows, 1) : cs;
    if ((rows <= 1 || rs == 1) && t_ld >= max64(rows, 1) && t_ld <= INT_MAX) {
        *trans = true;
        *ld = t_ld;
        return true;
    }
    return false;
}

/* Merges adjacent batch dims that both operands walk contiguously (the output always does), and
 * drops batch dims of size 1, so the loop below runs over as few dims as possible. */
static void coalesce_batch(gemm_plan *p)
{
    int n = 0;
    for (int i = 0; i < p->nb; i++) {
        if (p->bsize[i] == 1) continue;
        if (n > 0 && p->a.bstride[n - 1] == p->a.bstride[i] * p->bsize[i] &&
            p->b.bstride[n - 1] == p->b.bstride[i] * p->bsize[i]) {
            p->bsize[n - 1] *= p->bsize[i];
            p->a.bstride[n - 1] = p->a.bstride[i];
            p->b.bstride[n - 1] = p->b.bstride[i];
            continue;
        }
        p->bsize[n] = p->bsize[i];
        p->a.bstride[n] = p->a.bstride[i];
        p->b.bstride[n] = p->b.bstride[i];
        n++;
    }
    p->nb = n;
}

/* When the second operand is the same matrix for every entry of the innermost batch dim and the
 * first operand's matrices are stacked rows (NoTrans, batch stride = m * lda), the batch is really
 * more rows of one GEMM: fold it into m. The output, contiguous, is laid out the same way. */
static void fold_batch_into_rows(gemm_plan *p)
{
    while (p->nb > 0 && p->b.bstride[p->nb - 1] == 0 && !p->a.trans) {
        int64_t bs = p->a.bstride[p->nb - 1], count = p->bsize[p->nb - 1];
        int64_t ld;
        if (p->m == 1) ld = bs; /* a single row: its batch stride becomes the row stride */
        else if (bs == p->m * p->a.ld) ld = p->a.ld;
        else break;
        if (ld < max64(p->k, 1) || ld > INT_MAX || p->m * count > INT_MAX) break;
        p->a.ld = ld;
        p->a.rs = ld;
        p->m *= count;
        p->nb--;
    }
}

/* ------------------------------------------------------------------ execution */

/* Whether f32 products may use the packed kernels (hr_packed_sgemm) instead of BLAS; off only in
 * specs and benchmarks that compare the two. */
static atomic_bool packed_gemm_enabled = true;
static atomic_llong packed_gemm_calls; /* products done by the packed kernels (a test hook) */

bool hr_matmul_set_packed(bool enabled) { return atomic_exchange(&packed_gemm_enabled, enabled); }
bool hr_matmul_packed_enabled(void) { return atomic_load(&packed_gemm_enabled); }
int64_t hr_matmul_packed_calls(void) { return (int64_t)atomic_load(&packed_gemm_calls); }

static void batch_offsets(const gemm_plan *p, int64_t idx, int64_t *aoff, int64_t *boff)
{
    int64_t ao = 0, bo = 0;
    for (int d = p->nb - 1; d >= 0; d--) {
        int64_t i = idx % p->bsize[d];
        idx /= p->bsize[d];
        ao += i * p->a.bstride[d];
        bo += i * p->b.bstride[d];
    }
    *aoff = ao;
    *boff = bo;
}

/*
 * A GEMM whose output is far larger than the caches while each output element is a short sum (the
 * LM head's weight gradient: 50272 x 768 from 83 masked tokens) runs as row blocks of about 1.5 MiB
 * of output. Whole, BLAS first clears all of C (beta 0) and then streams it through memory again
 * for the products; per block, the cleared block is still in L2 when the kernel adds into it. Blocks
 * are a multiple of 96 rows, a multiple of the register-tile height of OpenBLAS's sgemm/dgemm kernels
 * (16, 24, 32 or 48 rows by architecture), so every element is computed by the same kernel code as in
 * one whole call and, on one thread, the result is bit for bit the same.
 */
enum { SPLIT_MAX_K = 256, SPLIT_MIN_OUTPUT_BYTES = 8 << 20, SPLIT_BLOCK_BYTES = 3 << 19 };

static int64_t output_row_block(const gemm_plan *p)
{
    size_t elem = p->dt == HR_F32 ? sizeof(float) : sizeof(double);
    double out_bytes = (double)p->m * (double)p->n * (double)elem;
    if (p->k > SPLIT_MAX_K || out_bytes < (double)SPLIT_MIN_OUTPUT_BYTES) return p->m;
    int64_t rows = (int64_t)SPLIT_BLOCK_BYTES / (p->n * (int64_t)elem);
    rows = rows < 96 ? 96 : rows / 96 * 96;
    return rows < p->m ? rows : p->m;
}

/* C = beta * C (0 when beta is 0, whatever C held) for product idx: BLAS's result when alpha is 0,
 * where A and B are not read. Done here because some OpenBLAS kernels (the AVX-512 small-matrix
 * ones) still multiply A by B then, so that an infinity in A gave NaN instead of beta * C. */
static void scale_product(const gemm_plan *p, int64_t idx)
{
    int64_t count = p->m * p->n;
    if (p->dt == HR_F32) {
        float *c = (float *)p->c + idx * count, beta = (float)p->beta;
        for (int64_t i = 0; i < count; i++) c[i] = beta == 0.0f ? 0.0f : beta * c[i];
    } else {
        double *c = (double *)p->c + idx * count, beta = p->beta;
        for (int64_t i = 0; i < count; i++) c[i] = beta == 0.0 ? 0.0 : beta * c[i];
    }
}

static void blas_one(const gemm_plan *p, int64_t idx)
{
    if (p->alpha == 0.0) {
        scale_product(p, idx);
        return;
    }
    int64_t ao, bo;
    batch_offsets(p, idx, &ao, &bo);
    enum CBLAS_TRANSPOSE ta = p->a.trans ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = p->b.trans ? CblasTrans : CblasNoTrans;
    int n = (int)p->n, k = (int)p->k;
    int64_t block = output_row_block(p);
    /* row r of op(A) starts at column r of a transposed operand, at row r of a plain one */
    int64_t a_row_step = p->a.trans ? 1 : p->a.ld;
    for (int64_t r = 0; r < p->m; r += block) {
        int m = (int)(p->m - r < block ? p->m - r : block);
        int64_t a_off = ao + r * a_row_step, c_off = idx * p->m * p->n + r * p->n;
        if (p->dt == HR_F32) {
            cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, (float)p->alpha, (const float *)p->a.data + a_off,
                        (int)p->a.ld, (const float *)p->b.data + bo, (int)p->b.ld, (float)p->beta,
                        (float *)p->c + c_off, n);
        } else {
            cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, p->alpha, (const double *)p->a.data + a_off, (int)p->a.ld,
                        (const double *)p->b.data + bo, (int)p->b.ld, p->beta, (double *)p->c + c_off, n);
        }
    }
}

static void blas_batch_range(void *ctx, int64_t begin, int64_t end)
{
    const gemm_plan *p = ctx;
    for (int64_t i = begin; i < end; i++) blas_one(p, i);
}

/*
 * Runs the batch. Several GEMMs that are each small, or that split evenly over the threads, run
 * one per thread with OpenBLAS single-threaded inside (no fork/join per GEMM, no
 * oversubscription); otherwise OpenBLAS threads each GEMM itself. OpenBLAS splits rows/columns,
 * not K, across its threads: results are deterministic for a given thread count, and differ across
 * thread counts only in the last bits of elements that fall in a thread's partial register tile.
 */
/* One f32 product on hero's own kernels: the packed kernels for the transformer's sizes (the LM
 * head's included), then the skinny kernels for a very long operand against a short one of under
 * 48 rows. Returns false, having done nothing, when neither takes it. These never call BLAS, so
 * they run outside the BLAS guard: a process whose first products all ran here has no BLAS work
 * space yet, and the guard must still check for it before BLAS's first call. */
static bool run_own_kernels(gemm_plan *p)
{
    if (p->dt != HR_F32 || p->nbatch != 1) return false;
    if (atomic_load(&packed_gemm_enabled)) {
        int64_t a_rs = p->a.trans ? 1 : p->a.ld, a_cs = p->a.trans ? p->a.ld : 1;
        int64_t b_rs = p->b.trans ? 1 : p->b.ld, b_cs = p->b.trans ? p->b.ld : 1;
        if (hr_packed_sgemm(p->m, p->n, p->k, (float)p->alpha, (const float *)p->a.data, a_rs, a_cs,
                            (const float *)p->b.data, b_rs, b_cs, (float)p->beta, p->bias, (float *)p->c, p->n)) {
            atomic_fetch_add(&packed_gemm_calls, 1);
            return true;
        }
    }
    if (p->bias) return false; /* the caller fills c with the bias rows and asks again */
    return hr_skinny_sgemm(p->a.trans, p->b.trans, p->m, p->n, p->k, (float)p->alpha, (const float *)p->a.data,
                           p->a.ld, (const float *)p->b.data, p->b.ld, (float)p->beta, (float *)p->c);
}

static void run_blas(gemm_plan *p)
{
    int threads = hr_get_num_threads();
    double work = (double)p->m * (double)p->n * (double)p->k;
    bool small = work < (double)(1 << 22);
    bool tiny = work * (double)p->nbatch < (double)(1 << 16); /* not worth waking the pool */
    int64_t per = (p->nbatch + threads - 1) / threads;
    bool even = (double)(per * threads) <= 1.15 * (double)p->nbatch;
    if (threads > 1 && p->nbatch >= 2 && !tiny && (small || even) && !hr_blas_limited()) {
        openblas_set_num_threads(1);
        hr_parallel_for(p->nbatch, 1, blas_batch_range, p);
        openblas_set_num_threads(threads);
    } else if (threads > 1 && small && !hr_blas_limited()) {
        /* Products under 2^22 multiply-adds on one thread of OpenBLAS: on two its worker had to
         * get the other core from hero's pool, whose threads poll between loops. A small model's
         * update (hidden size 64: its products are 1-2 M multiply-adds) took 4.2-4.5 ms on two
         * threads against 2.5-3.3 ms on one; 20 x 256 x 256 alone took 43 us on two, 35 on one,
         * while 40 x 768 x 768 gains from two (364 against 541 us). */
        openblas_set_num_threads(1);
        blas_batch_range(p, 0, p->nbatch);
        openblas_set_num_threads(threads);
    } else {
        blas_batch_range(p, 0, p->nbatch);
    }
}

/* Integer products: a plain loop (BLAS has none). Arithmetic wraps modulo 2^bits like PyTorch's
 * integer tensors; unsigned 64-bit accumulation keeps the wrap well defined in C. */
#define INT_GEMM_ROWS(NAME, T, TO_T)                                                                    \
    static void NAME(void *ctx, int64_t begin, int64_t end)                                            \
    {                                                                                                  \
        const gemm_plan *p = ctx;                                                                      \
        uint64_t alpha = (uint64_t)(int64_t)p->alpha, beta = (uint64_t)(int64_t)p->beta;               \
        for (int64_t r = begin; r < end; r++) {                                                        \
            int64_t bi = r / p->m, i = r % p->m, ao, bo;                                               \
            batch_offsets(p, bi, &ao, &bo);                                                            \
            const T *a = (const T *)p->a.data + ao + i * p->a.rs;                                      \
            const T *b = (const T *)p->b.data + bo;                                                    \
            T *c = (T *)p->c + r * p->n;                                                               \
            for (int64_t j = 0; j < p->n; j++) {                                                       \
                uint64_t acc = 0;                                                                      \
                for (int64_t l = 0; l < p->k; l++)                                                     \
                    acc += (uint64_t)(int64_t)a[l * p->a.cs] * (uint64_t)(int64_t)b[l * p->b.rs + j * p->b.cs]; \
                uint64_t old = p->beta != 0 ? (uint64_t)(int64_t)c[j] : 0;                             \
                c[j] = TO_T(beta * old + alpha * acc);                                                 \
            }                                                                                          \
        }                                                                                              \
    }

#define TO_I64(v) ((int64_t)(v))
#define TO_I32(v) ((int32_t)(uint32_t)(v))
#define TO_U8(v) ((uint8_t)(v))
INT_GEMM_ROWS(int_rows_i64, int64_t, TO_I64)
INT_GEMM_ROWS(int_rows_i32, int32_t, TO_I32)
INT_GEMM_ROWS(int_rows_u8, uint8_t, TO_U8)

static void run_int(gemm_plan *p)
{
    hr_parallel_fn fn = p->dt == HR_I64 ? int_rows_i64 : p->dt == HR_I32 ? int_rows_i32 : int_rows_u8;
    int64_t grain = 1 + (1 << 16) / (1 + p->n * p->k);
    hr_parallel_for(p->nbatch * p->m, grain, fn, p);
}

/* out (contiguous) *= beta, for the K == 0 case where BLAS is not called at all. */
static void scale_output(hr_tensor *out, double beta)
{
    int64_t n = hr_tensor_numel(out);
    void *d = hr_tensor_data(out);
    switch (out->dtype) {
    case HR_F32: for (int64_t i = 0; i < n; i++) ((float *)d)[i] *= (float)beta; break;
    case HR_F64: for (int64_t i = 0; i < n; i++) ((double *)d)[i] *= beta; break;
    default: {
        uint64_t f = (uint64_t)(int64_t)beta;
        size_t el = hr_dtype_size(out->dtype);
        for (int64_t i = 0; i < n; i++) {
            char *q = (char *)d + (size_t)i * el;
            hr_store_i64(q, out->dtype, (int64_t)(f * (uint64_t)hr_load_i64(q, out->dtype)));
        }
    }
    }
}

/* ------------------------------------------------------------------ checks */

static const char *shape_of(const hr_tensor *t, char *buf, size_t cap) { return hr_shape_str(t->ndim, t->size, buf, cap); }

static int check_operand(const char *op, const hr_tensor *t, int argn, const char *name)
{
    if (!t || !t->storage) return hr_fail(HR_EFREED, "%s: argument #%d (%s): tensor was freed", op, argn, name);
    if (hr_tensor_device(t).type == HR_CUDA && hr_cuda_compiled()) return 0; /* product() dispatches */
    if (hr_tensor_device(t).type != HR_CPU) {
        char d[160];
        return hr_fail(HR_EDEVICE, "%s: argument #%d (%s) is a %s tensor, which needs the CUDA backend (this build has none)",
                       op, argn, name, hr_tensor_desc(t, d, sizeof d));
    }
    return 0;
}

static int check_same_dtype(const char *op, const hr_tensor *x, const char *xn, const hr_tensor *y, const char *yn)
{
    if (x->dtype == y->dtype) return 0;
    char s1[160], s2[160];
    return hr_fail(HR_EINVAL, "%s: expected %s and %s to have the same dtype, got %s (%s) and %s (%s); convert one first", op,
                   xn, yn, hr_dtype_name(x->dtype), shape_of(x, s1, sizeof s1), hr_dtype_name(y->dtype),
                   shape_of(y, s2, sizeof s2));
}

static int check_int_scalar(const char *op, const char *name, double v, hr_dtype dt)
{
    if (v == floor(v) && fabs(v) < 9.2e18) return 0;
    return hr_fail(HR_EINVAL, "%s: %s = %g must be an integer for %s tensors", op, name, v, hr_dtype_name(dt));
}

/* The row/column strides of operand t's matrix; a 1-D left operand is one row, a 1-D right
 * operand one column (the stride of the missing dim is never used). */
static void matrix_strides(const hr_tensor *t, bool left, int64_t *rs, int64_t *cs)
{
    if (t->ndim == 1) {
        *rs = left ? 0 : t->stride[0];
        *cs = left ? t->stride[0] : 0;
    } else {
        *rs = t->stride[t->ndim - 2];
        *cs = t->stride[t->ndim - 1];
    }
}

/* Operands copied because BLAS could not read them in place (a test hook: transposed, narrowed
 * and batch-strided operands must not be copied). Counted by every thread that multiplies (the
 * data-loader workers' states too), so atomic; relaxed, as nothing else is ordered by it. */
static atomic_llong operand_copies;

int64_t hr_matmul_operand_copies(void) { return atomic_load_explicit(&operand_copies, memory_order_relaxed); }

/* Fills o's matrix layout from t; when BLAS cannot read t's matrices as they are, *copy receives a
 * contiguous copy of t that the caller uses (and releases) instead. */
static int prepare_operand(const char *op, operand *o, hr_tensor *t, bool left, int64_t rows, int64_t cols, bool blas,
                           hr_tensor **copy)
{
    *copy = NULL;
    matrix_strides(t, left, &o->rs, &o->cs);
    if (!blas || blas_layout(rows, cols, o->rs, o->cs, &o->trans, &o->ld)) return 0;
    hr_tensor *ct = hr_contiguous(t);
    if (!ct) return -1;
    atomic_fetch_add_explicit(&operand_copies, 1, memory_order_relaxed);
    *copy = ct;
    matrix_strides(ct, left, &o->rs, &o->cs);
    if (blas_layout(rows, cols, o->rs, o->cs, &o->trans, &o->ld)) return 0;
    hr_tensor_release(ct);
    *copy = NULL;
    return hr_fail(HR_EINVAL, "%s: a %" PRId64 "x%" PRId64 " matrix is too large for BLAS's 32-bit leading dimension", op,
                   rows, cols);
}

/* Every operand (NULL: absent) on the device of the first. */
static int check_devices(const char *op, const hr_tensor *x, const hr_tensor *y, const hr_tensor *z)
{
    const hr_tensor *ts[3] = {x, y, z};
    for (int i = 1; i < 3; i++) {
        if (!ts[i] || hr_device_eq(hr_tensor_device(x), hr_tensor_device(ts[i]))) continue;
        char d1[160], d2[160];
        return hr_fail(HR_EDEVICE, "%s: operands are on different devices (%s and %s); move one with :to()", op,
                       hr_tensor_desc(x, d1, sizeof d1), hr_tensor_desc(ts[i], d2, sizeof d2));
    }
    return 0;
}

/* The engine's CUDA branch: out starts as beta*c (broadcast) or zeros, cuBLAS adds alpha*(a@b). */
static hr_tensor *product_cuda(hr_tensor *a, hr_tensor *b, hr_tensor *c, double beta, double alpha, hr_tensor *dst,
                               bool a_vec, bool b_vec, int nb, const int64_t *bsize, int64_t m, int64_t n, int64_t k,
                               int rnd, const int64_t *rsize)
{
    hr_tensor *out = hr_tensor_empty(rnd, rsize, a->dtype, hr_tensor_device(a));
    if (!out) return NULL;
    bool use_c = c && beta != 0;
    bool any = hr_tensor_numel(out) > 0;
    /* alpha = 0 reads neither A nor B (BLAS's convention, as the CPU's scale_product): beta * c
     * alone, so that an infinity or NaN in A @ B does not turn into NaN through cuBLAS's 0 * x */
    bool product = k > 0 && alpha != 0;
    /* a linear layer's bias (a vector along the columns, added once): cuBLAS adds it to the product */
    const hr_tensor *bias = NULL;
    if (use_c && beta == 1 && product && any && c->ndim == 1 && c->size[0] == n && n > 1 && c->dtype == a->dtype) {
        bias = c;
        use_c = false;
    }
    int rc = 0;
    if (use_c) rc = hr_copy_(out, c);
    else if (!product && any) rc = hr_fill_(out, 0);
    if (rc == 0 && any) {
        if (!product) {
            if (use_c && beta != 1) rc = hr_binary_(HR_MUL, out, hr_operand_float(beta), NULL);
        } else {
            rc = hr_cuda_matmul(a, b, a_vec, b_vec, nb, bsize, m, n, k, alpha, use_c ? beta : 0, bias, out);
        }
    }
    if (rc == 0 && dst) {
        rc = hr_copy_(dst, out);
        hr_tensor_release(out);
        if (rc) return NULL;
        hr_tensor_retain(dst);
        return dst;
    }
    if (rc) {
        hr_tensor_release(out);
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------ the engine */

/* Checks a destination tensor given by the caller: live, CPU, the operands' dtype, the product's shape. */
static int check_dst(const char *op, const hr_tensor *dst, int argn, hr_dtype dt, int rnd, const int64_t *rsize)
{
    if (check_operand(op, dst, argn, "out")) return -1;
    char s1[160], s2[160];
    if (dst->dtype != dt)
        return hr_fail(HR_EINVAL, "%s: out has dtype %s but the product is %s", op, hr_dtype_name(dst->dtype), hr_dtype_name(dt));
    if (dst->ndim != rnd || memcmp(dst->size, rsize, sizeof(int64_t) * (size_t)rnd) != 0)
        return hr_fail(HR_EINVAL, "%s: out has size %s but the product has size %s", op, shape_of(dst, s1, sizeof s1),
                       hr_shape_str(rnd, rsize, s2, sizeof s2));
    return 0;
}

/*
 * beta * c + alpha * (a @ b) with matmul's rules (1-D promotion, batch broadcasting), into a new
 * tensor or, when dst is given, into dst (which is returned with a new reference). c may be NULL
 * (then beta is ignored) and may be dst itself (in-place accumulation). Operands are already
 * checked live, on the CPU and of one dtype; dst_arg is dst's argument number for messages.
 */
static hr_tensor *product(const char *op, hr_tensor *a, hr_tensor *b, hr_tensor *c, double beta, double alpha,
                          hr_tensor *dst, int dst_arg)
{
    char s1[160], s2[160];
    if (a->ndim == 0 || b->ndim == 0)
        return hr_fail_null(HR_EINVAL, "%s: both arguments need at least 1 dimension, got %s and %s", op,
                            shape_of(a, s1, sizeof s1), shape_of(b, s2, sizeof s2));
    hr_dtype dt = a->dtype;
    if (dt == HR_BOOL)
        return hr_fail_null(HR_EINVAL, "%s: bool tensors cannot be multiplied (convert them to an integer or float dtype)", op);
    if (!c) beta = 0;
    if (hr_dtype_is_int(dt) && (check_int_scalar(op, "alpha", alpha, dt) || check_int_scalar(op, "beta", beta, dt)))
        return NULL;

    /* The matrices: a is (m x k), b is (k x n); a 1-D a is one row, a 1-D b one column. */
    bool a_vec = a->ndim == 1, b_vec = b->ndim == 1;
    int64_t m = a_vec ? 1 : a->size[a->ndim - 2], ka = a->size[a->ndim - 1];
    int64_t kb = b_vec ? b->size[0] : b->size[b->ndim - 2], n = b_vec ? 1 : b->size[b->ndim - 1];
    if (ka != kb)
        return hr_fail_null(HR_EINVAL, "%s: %s and %s cannot be multiplied (%" PRId64 " vs %" PRId64 ")", op,
                            shape_of(a, s1, sizeof s1), shape_of(b, s2, sizeof s2), ka, kb);
    int64_t k = ka;

    /* Batch dims: everything before the matrix dims, broadcast NumPy-style. */
    int na = a->ndim > 2 ? a->ndim - 2 : 0, nbd = b->ndim > 2 ? b->ndim - 2 : 0;
    int nb = na > nbd ? na : nbd;
    int64_t bsize[HR_MAX_DIMS];
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - na), ib = i - (nb - nbd);
        int64_t x = ia >= 0 ? a->size[ia] : 1, y = ib >= 0 ? b->size[ib] : 1;
        if (x != y && x != 1 && y != 1)
            return hr_fail_null(HR_EINVAL, "%s: batch dimensions of %s and %s cannot be broadcast (%" PRId64 " vs %" PRId64 ")", op,
                                shape_of(a, s1, sizeof s1), shape_of(b, s2, sizeof s2), x, y);
        bsize[i] = x == 1 ? y : x;
    }

    /* Result shape: batch, then m unless a was a vector, then n unless b was a vector. */
    int rnd = nb;
    int64_t rsize[HR_MAX_DIMS];
    memcpy(rsize, bsize, sizeof(int64_t) * (size_t)nb);
    if (!a_vec) rsize[rnd++] = m;
    if (!b_vec) rsize[rnd++] = n;

    if (c) { /* c must broadcast to the result (it is never the one that grows) */
        bool ok = c->ndim <= rnd;
        for (int i = 0; ok && i < c->ndim; i++) {
            int64_t cs = c->size[c->ndim - 1 - i], rs = rsize[rnd - 1 - i];
            ok = cs == rs || cs == 1;
        }
        if (!ok) {
            char s3[160], s4[160];
            return hr_fail_null(HR_EINVAL, "%s: input of size %s cannot be broadcast to the product's size %s (%s @ %s)", op,
                                shape_of(c, s3, sizeof s3), hr_shape_str(rnd, rsize, s1, sizeof s1), shape_of(a, s2, sizeof s2),
                                shape_of(b, s4, sizeof s4));
        }
    }
    if (dst && check_dst(op, dst, dst_arg, dt, rnd, rsize)) return NULL;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return hr_fail_null(HR_EINVAL, "%s: matrix dimensions %" PRId64 "x%" PRId64 "x%" PRId64 " exceed BLAS's 32-bit limit", op, m, k, n);

    if (check_devices(op, a, b, c) || (dst && check_devices(op, a, dst, NULL))) return NULL;
    if (hr_tensor_device(a).type == HR_CUDA)
        return product_cuda(a, b, c, beta, alpha, dst, a_vec, b_vec, nb, bsize, m, n, k, rnd, rsize);

    /* Half types compute in f32 on converted copies and are rounded once at the end. */
    hr_dtype work_dt = (dt == HR_BF16 || dt == HR_F16) ? HR_F32 : dt;
    hr_tensor *ha = NULL, *hb = NULL, *out = NULL, *result = NULL;
    if (work_dt != dt) {
        ha = hr_cast(a, work_dt);
        hb = ha ? hr_cast(b, work_dt) : NULL;
        if (!hb) goto done;
        a = ha;
        b = hb;
    }

    /* BLAS writes straight into dst when it is a contiguous tensor of the working dtype that no
     * operand reads from (c itself is fine: it is the accumulator); otherwise into a temporary
     * that is copied (and for halfs rounded) into dst at the end. */
    bool direct = dst && work_dt == dt && hr_tensor_is_contiguous(dst) && dst->storage != a->storage &&
                  dst->storage != b->storage && (!c || c == dst || c->storage != dst->storage);
    if (direct) {
        hr_tensor_retain(dst);
        out = dst;
    } else {
        out = hr_tensor_empty(rnd, rsize, work_dt, hr_cpu());
        if (!out) goto done;
    }
    /* A bias row (c a vector of n f32 values with beta 1, as a linear layer's) is added by the
     * packed kernels as they write each tile, saving a pass that fills out with it first (and
     * their reading it back); whether they take the product is known only when asked, so the
     * fill waits until then. Otherwise out starts from c broadcast (converted for halfs). */
    bool bias_row = c && beta == 1 && c != out && dt == HR_F32 && c->dtype == HR_F32 && c->ndim == 1 &&
                    c->size[0] == n && c->stride[0] == 1 && k > 0 && hr_tensor_numel(out) > 0;
    if (c && beta != 0 && c != out && !bias_row && hr_copy_(out, c)) goto done;

    if (hr_tensor_numel(out) > 0) {
        if (k == 0) { /* an empty sum: beta * c, or zeros */
            if (c && beta != 0) scale_output(out, beta);
            else memset(hr_tensor_data(out), 0, (size_t)hr_tensor_numel(out) * hr_dtype_size(work_dt));
        } else {
            gemm_plan p;
            memset(&p, 0, sizeof p);
            bool is_blas = work_dt == HR_F32 || work_dt == HR_F64;
            hr_tensor *ca = NULL, *cb = NULL;
            if (prepare_operand(op, &p.a, a, true, m, k, is_blas, &ca) ||
                prepare_operand(op, &p.b, b, false, k, n, is_blas, &cb)) {
                if (ca) hr_tensor_release(ca);
                goto done;
            }
            const hr_tensor *ta = ca ? ca : a, *tb = cb ? cb : b;
            for (int i = 0; i < nb; i++) { /* batch strides, 0 where an operand is broadcast */
                int ia = i - (nb - na), ib = i - (nb - nbd);
                p.a.bstride[i] = (ia >= 0 && ta->size[ia] != 1) ? ta->stride[ia] : 0;
                p.b.bstride[i] = (ib >= 0 && tb->size[ib] != 1) ? tb->stride[ib] : 0;
            }
            p.dt = work_dt;
            p.nb = nb;
            memcpy(p.bsize, bsize, sizeof(int64_t) * (size_t)nb);
            p.m = m;
            p.n = n;
            p.k = k;
            p.a.data = hr_tensor_data(ta);
            p.b.data = hr_tensor_data(tb);
            p.c = hr_tensor_data(out);
            p.alpha = alpha;
            p.beta = c && !bias_row ? beta : 0;
            p.bias = bias_row ? (const float *)hr_tensor_data(c) : NULL;
            coalesce_batch(&p);
            if (is_blas) fold_batch_into_rows(&p);
            p.nbatch = 1;
            for (int i = 0; i < p.nb; i++) p.nbatch *= p.bsize[i];
            bool own = is_blas && run_own_kernels(&p);
            if (!own && bias_row) { /* the packed kernels declined: fill out with the bias after all */
                p.bias = NULL;
                p.beta = beta;
                if (hr_copy_(out, c)) {
                    if (ca) hr_tensor_release(ca);
                    if (cb) hr_tensor_release(cb);
                    goto done;
                }
                own = run_own_kernels(&p);
            }
            if (is_blas && !own) {
                /* OpenBLAS hangs when its work space cannot be allocated: fail first instead */
                if (hr_blas_begin(op)) {
                    if (ca) hr_tensor_release(ca);
                    if (cb) hr_tensor_release(cb);
                    goto done;
                }
                run_blas(&p);
                hr_blas_end();
            } else if (!is_blas) {
                run_int(&p);
            }
            if (ca) hr_tensor_release(ca);
            if (cb) hr_tensor_release(cb);
        }
    }
    if (dst) {
        if (out != dst && hr_copy_(dst, out)) goto done;
        if (out == dst) hr_tensor_bump_version(dst); /* written in place (hr_copy_ counts its own write) */
        hr_tensor_retain(dst);
        result = dst;
    } else if (work_dt != dt) {
        result = hr_cast(out, dt);
    } else {
        result = out;
        out = NULL;
    }
done:
    if (out) hr_tensor_release(out);
    if (ha) hr_tensor_release(ha);
    if (hb) hr_tensor_release(hb);
    return result;
}

/* ------------------------------------------------------------------ public ops */

/* Live, CPU and dtype checks shared by every op; c (optional) is the added input. */
static int check_args(const char *op, const hr_tensor *a, const hr_tensor *b, const hr_tensor *c)
{
    int base = c ? 2 : 1;
    if (c && check_operand(op, c, 1, "input")) return -1;
    if (check_operand(op, a, base, c ? "mat1" : "self") || check_operand(op, b, base + 1, c ? "mat2" : "other")) return -1;
    if (check_same_dtype(op, a, c ? "mat1" : "self", b, c ? "mat2" : "other")) return -1;
    if (c && check_same_dtype(op, c, "input", a, "mat1")) return -1;
    return 0;
}

static int check_ndim(const char *op, const hr_tensor *t, const char *name, int want)
{
    if (t->ndim == want) return 0;
    char s[160];
    return hr_fail(HR_EINVAL, "%s: %s must be %d-D, got %s (%d-D)", op, name, want, shape_of(t, s, sizeof s), t->ndim);
}

static int check_same_batch(const char *op, const hr_tensor *a, const hr_tensor *b)
{
    if (a->size[0] == b->size[0]) return 0;
    char s1[160], s2[160];
    return hr_fail(HR_EINVAL, "%s: batch sizes differ: %s and %s (%" PRId64 " vs %" PRId64 ")", op, shape_of(a, s1, sizeof s1),
                   shape_of(b, s2, sizeof s2), a->size[0], b->size[0]);
}

hr_tensor *hr_matmul(hr_tensor *a, hr_tensor *b)
{
    if (check_args("matmul", a, b, NULL)) return NULL;
    return product("matmul", a, b, NULL, 0, 1, NULL, 0);
}

hr_tensor *hr_mm(hr_tensor *a, hr_tensor *b)
{
    if (check_args("mm", a, b, NULL) || check_ndim("mm", a, "self", 2) || check_ndim("mm", b, "other", 2)) return NULL;
    return product("mm", a, b, NULL, 0, 1, NULL, 0);
}

hr_tensor *hr_bmm(hr_tensor *a, hr_tensor *b)
{
    if (check_args("bmm", a, b, NULL) || check_ndim("bmm", a, "self", 3) || check_ndim("bmm", b, "other", 3) ||
        check_same_batch("bmm", a, b))
        return NULL;
    return product("bmm", a, b, NULL, 0, 1, NULL, 0);
}

hr_tensor *hr_addmm(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha)
{
    if (check_args("addmm", a, b, c) || check_ndim("addmm", a, "mat1", 2) || check_ndim("addmm", b, "mat2", 2)) return NULL;
    return product("addmm", a, b, c, beta, alpha, NULL, 0);
}

hr_tensor *hr_baddbmm(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha)
{
    if (check_args("baddbmm", a, b, c) || check_ndim("baddbmm", a, "batch1", 3) || check_ndim("baddbmm", b, "batch2", 3) ||
        check_same_batch("baddbmm", a, b))
        return NULL;
    return product("baddbmm", a, b, c, beta, alpha, NULL, 0);
}

hr_tensor *hr_dot(hr_tensor *a, hr_tensor *b)
{
    if (check_args("dot", a, b, NULL) || check_ndim("dot", a, "self", 1) || check_ndim("dot", b, "other", 1)) return NULL;
    return product("dot", a, b, NULL, 0, 1, NULL, 0);
}

hr_tensor *hr_mv(hr_tensor *a, hr_tensor *b)
{
    if (check_args("mv", a, b, NULL) || check_ndim("mv", a, "self", 2) || check_ndim("mv", b, "vec", 1)) return NULL;
    return product("mv", a, b, NULL, 0, 1, NULL, 0);
}

hr_tensor *hr_matmul_out(hr_tensor *out, hr_tensor *a, hr_tensor *b)
{
    if (check_args("matmul", a, b, NULL)) return NULL;
    return product("matmul", a, b, NULL, 0, 1, out, 3);
}

hr_tensor *hr_addmm_(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha)
{
    if (check_args("addmm_", a, b, c) || check_ndim("addmm_", a, "mat1", 2) || check_ndim("addmm_", b, "mat2", 2)) return NULL;
    return product("addmm_", a, b, c, beta, alpha, c, 1);
}

hr_tensor *hr_baddbmm_(hr_tensor *c, hr_tensor *a, hr_tensor *b, double beta, double alpha)
{
    if (check_args("baddbmm_", a, b, c) || check_ndim("baddbmm_", a, "batch1", 3) || check_ndim("baddbmm_", b, "batch2", 3) ||
        check_same_batch("baddbmm_", a, b))
        return NULL;
    return product("baddbmm_", a, b, c, beta, alpha, c, 1);
}

hr_tensor *hr_linear(hr_tensor *x, hr_tensor *w, hr_tensor *bias)
{
    const char *op = "linear";
    if (check_operand(op, x, 1, "input") || check_operand(op, w, 2, "weight")) return NULL;
    if (bias && check_operand(op, bias, 3, "bias")) return NULL;
    if (check_same_dtype(op, x, "input", w, "weight") || (bias && check_same_dtype(op, bias, "bias", w, "weight"))) return NULL;
    if (check_ndim(op, w, "weight", 2)) return NULL;
    char s1[160], s2[160];
    if (x->ndim == 0 || x->size[x->ndim - 1] != w->size[1])
        return hr_fail_null(HR_EINVAL, "%s: input of size %s does not match weight of size %s (in_features %" PRId64 ")", op,
                            shape_of(x, s1, sizeof s1), shape_of(w, s2, sizeof s2), w->size[1]);
    if (bias && (bias->ndim != 1 || bias->size[0] != w->size[0]))
        return hr_fail_null(HR_EINVAL, "%s: bias of size %s does not match weight of size %s (expected %" PRId64 ")", op,
                            shape_of(bias, s1, sizeof s1), shape_of(w, s2, sizeof s2), w->size[0]);
    hr_tensor *wt = hr_view_transpose(w, 0, 1); /* a header only: BLAS reads w transposed */
    if (!wt) return NULL;
    hr_tensor *out = product(op, x, wt, bias, 1, 1, NULL, 0);
    hr_tensor_release(wt);
    return out;
}

/* ------------------------------------------------------------------ benchmark hook */

double hr_bench_sgemm(int64_t m, int64_t n, int64_t k, int64_t batch, int repeats)
{
    if (m < 1 || n < 1 || k < 1 || batch < 1 || m > INT_MAX || n > INT_MAX || k > INT_MAX || repeats < 1 ||
        (double)batch * (double)(m * k + k * n + m * n) > 1e10)
        return hr_fail(HR_EINVAL, "bench_sgemm: sizes must be >= 1 (and fit in memory), repeats >= 1");
    size_t sa = (size_t)(m * k), sb = (size_t)(k * n), sc = (size_t)(m * n);
    size_t na = sa * (size_t)batch, nb = sb * (size_t)batch, nc = sc * (size_t)batch;
    float *a = hr_alloc_bytes(na * sizeof(float));
    float *b = a ? hr_alloc_bytes(nb * sizeof(float)) : NULL;
    float *c = b ? hr_alloc_bytes(nc * sizeof(float)) : NULL;
    double secs = -1;
    if (c) {
        /* deterministic values in [-1, 1): denormals or NaN would distort the timing */
        for (size_t i = 0; i < na; i++) a[i] = (float)((i * 2654435761u) % 2048) / 1024.0f - 1.0f;
        for (size_t i = 0; i < nb; i++) b[i] = (float)((i * 40503u) % 2048) / 1024.0f - 1.0f;
        struct timespec t0, t1;
        for (int r = -1; r < repeats; r++) { /* r == -1: warm-up (page faults, OpenBLAS buffers) */
            if (r == 0) clock_gettime(CLOCK_MONOTONIC, &t0);
            for (int64_t i = 0; i < batch; i++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a + (size_t)i * sa, (int)k,
                            b + (size_t)i * sb, (int)n, 0.0f, c + (size_t)i * sc, (int)n);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        secs = ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) / repeats;
    }
    hr_free_bytes(a, na * sizeof(float));
    hr_free_bytes(b, nb * sizeof(float));
    hr_free_bytes(c, nc * sizeof(float));
    return secs;
}
