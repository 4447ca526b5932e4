/* cuda/blas.cu — matrix products through cuBLAS (cublasGemmStridedBatchedEx), and through cuBLASLt
 * when a linear layer's bias can ride in the GEMM's epilogue.
 *
 * hero's tensors are row-major and cuBLAS is column-major: the row-major product C = A B is computed
 * as the column-major C^T = B^T A^T, which reads the same memory with no copy. An operand is handed
 * over as it is when its matrices have one unit stride (transposed views included) and its batch
 * dims collapse into one batch stride (0 for a broadcast batch); when they do not (the heads of a
 * permuted attention view) the matrices are passed as a list of pointers; a matrix without a unit
 * stride is copied contiguous first. f32 is computed in full f32 unless TF32 was allowed; bf16/f16 multiply with f32
 * accumulation and are rounded once into the output. */
#include <cinttypes>
#include <climits>
#include <mutex>

#include "cuda/common.cuh"

namespace hrc {
namespace {

struct Operand {
    const char *ptr;
    cublasOperation_t op; /* as seen by cuBLAS (column-major) */
    int64_t ld;
    int64_t bstride;
    hr_tensor *hold; /* a contiguous copy, when one was needed */
    /* batch dims that no single stride walks (the heads of a permuted [B, heads, L, dh] view):
     * the matrices are used in place through a list of pointers, with these per-dim strides */
    bool by_pointer;
    int64_t bs[HR_MAX_DIMS];
};

/* The batch of a pointer-list product: the flat batch index i walks bsize row-major; an operand
 * that walks its batch dims with one stride has walk false and flat stride `flat`. */
struct BatchWalk {
    int nb;
    int64_t size[HR_MAX_DIMS];
    int64_t sa[HR_MAX_DIMS], sb[HR_MAX_DIMS];
    int64_t flat_a, flat_b, flat_c;
    bool walk_a, walk_b;
};

__global__ void batch_pointers(BatchWalk w, const char *a, const char *b, char *c, int el, int64_t batch, const void **pa,
                               const void **pb, void **pc)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < batch; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t oa = w.walk_a ? 0 : i * w.flat_a, ob = w.walk_b ? 0 : i * w.flat_b, rem = i;
        for (int d = w.nb - 1; d >= 0; d--) {
            int64_t coord = rem % w.size[d];
            rem /= w.size[d];
            if (w.walk_a) oa += coord * w.sa[d];
            if (w.walk_b) ob += coord * w.sb[d];
        }
        pa[i] = a + oa * el;
        pb[i] = b + ob * el;
        pc[i] = c + i * w.flat_c * el;
    }
}

/* The row-major matrix (rows x cols, strides rs/cs) as a cuBLAS operand of the transposed
 * product: row-major storage is OP_N with ld = rs, column-major storage is OP_T with ld = cs. */
bool matrix_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, cublasOperation_t *op, int64_t *ld)
{
    int64_t mr = rows > 1 ? rows : 1, mc = cols > 1 ? cols : 1;
    if (cs == 1 || cols == 1) {
        int64_t l = rows == 1 ? mc : rs;
        if (l >= mc) {
            *op = CUBLAS_OP_N;
            *ld = l;
            return true;
        }
    }
    if (rs == 1 || rows == 1) {
        int64_t l = cols == 1 ? mr : cs;
        if (l >= mr) {
            *op = CUBLAS_OP_T;
            *ld = l;
            return true;
        }
    }
    return false;
}

/* One stride for the flattened batch, when the (broadcast) batch dims allow it. */
bool batch_stride(int nb, const int64_t *bsize, const int64_t *bs, int64_t *out)
{
    int64_t sz[HR_MAX_DIMS], st[HR_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < nb; i++)
        if (bsize[i] != 1) {
            sz[n] = bsize[i];
            st[n] = bs[i];
            n++;
        }
    for (int i = 0; i + 1 < n; i++)
        if (st[i] != st[i + 1] * sz[i + 1]) return false;
    *out = n ? st[n - 1] : 0;
    return true;
}

/* Prepares operand t viewed as [batch..., rows, cols]: vec means t is 1-D (one row when left,
 * one column when right). */
int prepare(hr_tensor *t, bool vec, bool left, int nb, const int64_t *bsize, int64_t rows, int64_t cols, Operand *o)
{
    o->hold = nullptr;
    o->by_pointer = false;
    int tb = vec ? 0 : t->ndim - 2; /* t's own batch dims */
    int64_t bs[HR_MAX_DIMS];
    for (int i = 0; i < nb; i++) {
        int it = i - (nb - tb);
        bs[i] = (it >= 0 && t->size[it] != 1) ? t->stride[it] : 0;
    }
    int64_t rs, cs;
    if (vec) {
        rs = left ? 0 : t->stride[0];
        cs = left ? t->stride[0] : 0;
    } else {
        rs = t->stride[t->ndim - 2];
        cs = t->stride[t->ndim - 1];
    }
    int64_t bstride;
    if (matrix_layout(rows, cols, rs, cs, &o->op, &o->ld) && o->ld <= INT_MAX) {
        o->ptr = (const char *)hr_tensor_data(t);
        if (batch_stride(nb, bsize, bs, &bstride)) {
            o->bstride = bstride;
            return 0;
        }
        o->by_pointer = true;
        o->bstride = 0;
        for (int i = 0; i < nb; i++) o->bs[i] = bs[i];
        return 0;
    }
    /* copy the broadcast operand into a contiguous [batch..., rows, cols] block */
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    for (int i = 0; i < nb; i++) {
        size[i] = bsize[i];
        stride[i] = bs[i];
    }
    size[nb] = rows;
    size[nb + 1] = cols;
    stride[nb] = rs;
    stride[nb + 1] = cs;
    hr_tensor *view = hr_tensor_view_of(t->storage, t->dtype, nb + 2, size, stride, t->offset);
    if (!view) return -1;
    o->hold = hr_contiguous(view);
    hr_tensor_release(view);
    if (!o->hold) return -1;
    o->ptr = (const char *)hr_tensor_data(o->hold);
    o->op = CUBLAS_OP_N;
    o->ld = cols > 1 ? cols : 1;
    o->bstride = rows * cols;
    return 0;
}

/* The batched product through lists of matrix pointers (cublasGemmBatchedEx), built on the device
 * by batch_pointers: operands whose batch dims no single stride walks are read in place instead of
 * being copied contiguous first. */
int gemm_by_pointers(int dev, cublasHandle_t h, const Operand &oa, const Operand &ob, int nb, const int64_t *bsize,
                     int64_t batch, int64_t m, int64_t n, int64_t k, cudaDataType_t dtype, cublasComputeType_t compute,
                     const void *alpha, const void *beta, int el, char *c)
{
    if (batch > INT_MAX) return hr_fail(HR_EINVAL, "matmul: %" PRId64 " matrices in one batch are too many", batch);
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    BatchWalk w;
    w.nb = nb;
    for (int i = 0; i < nb; i++) {
        w.size[i] = bsize[i];
        w.sa[i] = oa.by_pointer ? oa.bs[i] : 0;
        w.sb[i] = ob.by_pointer ? ob.bs[i] : 0;
    }
    w.walk_a = oa.by_pointer;
    w.walk_b = ob.by_pointer;
    w.flat_a = oa.bstride;
    w.flat_b = ob.bstride;
    w.flat_c = m * n;
    size_t bytes = (size_t)batch * 3 * sizeof(void *);
    void **list = (void **)hr_cuda_malloc(dev, bytes);
    if (!list) return -1;
    const void **pa = (const void **)list, **pb = (const void **)(list + batch);
    void **pc = list + 2 * batch;
    batch_pointers<<<grid_for(batch), kThreads, 0, st>>>(w, oa.ptr, ob.ptr, c, el, batch, pa, pb, pc);
    int rc = check_launch("matmul");
    if (!rc)
        rc = check_blas(cublasGemmBatchedEx(h, ob.op, oa.op, (int)n, (int)m, (int)k, alpha, pb, dtype, (int)ob.ld, pa, dtype,
                                            (int)oa.ld, beta, pc, dtype, (int)n, (int)batch, compute, CUBLAS_GEMM_DEFAULT),
                        "matmul", "cublasGemmBatchedEx");
    hr_cuda_free(dev, list, bytes); /* reused only by later work on the stream */
    return rc;
}

/* The largest power of two (at most 256) that divides the address: cuBLASLt's heuristic only
 * offers kernels whose alignment needs the operands meet. */
uint32_t alignment_of(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && ((uintptr_t)p % a) != 0) a /= 2;
    return a;
}

constexpr size_t kLtWorkspace = (size_t)32 << 20;

/* One shape of the bias GEMM as cuBLASLt describes it, and the kernel its heuristic chose (or that
 * it offered none). Describing the case and asking the heuristic for every call took more host
 * time than a bf16 product of the transformer's size takes on an H100, and a forward pass makes
 * 39 of them: the host fell behind the device. The shapes of a model are few, so they are kept;
 * only the bias pointer changes from call to call. */
struct LtPlan {
    bool used = false;
    int dev;
    cudaDataType_t dtype;
    cublasComputeType_t compute;
    cublasOperation_t ta, tb;
    int64_t m, n, k, lda, ldb;
    uint32_t al_a, al_b, al_c, al_bias;
    const void *bias; /* the first call's: on the description while the heuristic chooses */
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
    bool offered = false; /* the heuristic found a kernel: algo and ws hold it */
    cublasLtMatmulAlgo_t algo;
    size_t ws = 0;
};

constexpr int kLtPlans = 64;
static LtPlan lt_plans[kLtPlans];
static int lt_replace = 0; /* the slot taken next when all are used (round robin) */
static std::mutex lt_lock;

static void lt_plan_clear(LtPlan &p)
{
    if (p.lc) cublasLtMatrixLayoutDestroy(p.lc);
    if (p.lb) cublasLtMatrixLayoutDestroy(p.lb);
    if (p.la) cublasLtMatrixLayoutDestroy(p.la);
    if (p.desc) cublasLtMatmulDescDestroy(p.desc);
    p = LtPlan();
}

/* Describes the plan's case (its key fields set) and asks the heuristic once; a case cuBLASLt
 * refuses to describe is a plan without a kernel (the plain path takes it). */
static void lt_plan_make(LtPlan &p, cublasLtHandle_t lt)
{
    const cublasStatus_t ok = CUBLAS_STATUS_SUCCESS;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    int32_t bias_type = p.dtype;
    size_t ws_size = kLtWorkspace;
    cublasLtMatmulPreference_t pref = nullptr;
    bool described =
        cublasLtMatmulDescCreate(&p.desc, p.compute, CUDA_R_32F) == ok &&
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &p.ta, sizeof p.ta) == ok &&
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &p.tb, sizeof p.tb) == ok &&
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) == ok &&
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type) == ok &&
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof p.bias) == ok &&
        /* stored shapes of the column-major operands: B^T is n x k (k x n when transposed), A^T k x m */
        cublasLtMatrixLayoutCreate(&p.la, p.dtype, p.ta == CUBLAS_OP_N ? p.n : p.k, p.ta == CUBLAS_OP_N ? p.k : p.n,
                                   p.lda) == ok &&
        cublasLtMatrixLayoutCreate(&p.lb, p.dtype, p.tb == CUBLAS_OP_N ? p.k : p.m, p.tb == CUBLAS_OP_N ? p.m : p.k,
                                   p.ldb) == ok &&
        cublasLtMatrixLayoutCreate(&p.lc, p.dtype, p.n, p.m, p.n) == ok && cublasLtMatmulPreferenceCreate(&pref) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size, sizeof ws_size) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &p.al_a, sizeof p.al_a) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &p.al_b, sizeof p.al_b) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &p.al_c, sizeof p.al_c) == ok &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &p.al_c, sizeof p.al_c) == ok;
    cublasLtMatmulHeuristicResult_t found;
    int count = 0;
    if (!described || cublasLtMatmulAlgoGetHeuristic(lt, p.desc, p.la, p.lb, p.lc, p.lc, pref, 1, &found, &count) != ok)
        count = 0;
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    p.offered = count > 0;
    if (p.offered) {
        p.algo = found.algo;
        p.ws = found.workspaceSize;
    }
}

static bool lt_plan_matches(const LtPlan &p, const LtPlan &key)
{
    return p.used && p.dev == key.dev && p.dtype == key.dtype && p.compute == key.compute && p.ta == key.ta &&
           p.tb == key.tb && p.m == key.m && p.n == key.n && p.k == key.k && p.lda == key.lda && p.ldb == key.ldb &&
           p.al_a == key.al_a && p.al_b == key.al_b && p.al_c == key.al_c && p.al_bias == key.al_bias;
}

/* c [m, n] (row-major, contiguous) = a @ b + bias[n] as one cuBLASLt call with the bias added in
 * the epilogue, before the one rounding into c's dtype (what the CPU's GEMM with the bias in C
 * gives). Same column-major view as the cuBLAS call: D^T (n x m) = B^T A^T, whose rows are the
 * output features the bias runs along. Returns 1 when cuBLASLt offers no kernel for the case (the
 * caller takes the plain path), 0 when done, -1 on an error. */
int gemm_bias_lt(int dev, const Operand &oa, const Operand &ob, int64_t m, int64_t n, int64_t k, cudaDataType_t dtype,
                 cublasComputeType_t compute, const void *bias, char *c)
{
    const char *op = "linear";
    cublasLtHandle_t lt = blas_lt(dev);
    cudaStream_t st = stream(dev);
    if (!lt || !st) return -1;
    LtPlan key;
    key.dev = dev;
    key.dtype = dtype;
    key.compute = compute;
    key.ta = ob.op;
    key.tb = oa.op;
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = ob.ld;
    key.ldb = oa.ld;
    /* cuBLASLt's heuristic only offers kernels whose alignment needs the operands meet */
    key.al_a = alignment_of(ob.ptr);
    key.al_b = alignment_of(oa.ptr);
    key.al_c = alignment_of(c);
    /* the kernel chosen for an aligned bias may need it aligned: a bias view elsewhere is a case of
     * its own */
    key.al_bias = alignment_of(bias);
    key.bias = bias;
    std::lock_guard<std::mutex> g(lt_lock); /* the plan's description is shared: one call at a time */
    LtPlan *plan = nullptr;
    for (int i = 0; i < kLtPlans && !plan; i++)
        if (lt_plan_matches(lt_plans[i], key)) plan = &lt_plans[i];
    if (!plan) {
        int slot = -1;
        for (int i = 0; i < kLtPlans && slot < 0; i++)
            if (!lt_plans[i].used) slot = i;
        if (slot < 0) {
            slot = lt_replace;
            lt_replace = (lt_replace + 1) % kLtPlans;
        }
        plan = &lt_plans[slot];
        lt_plan_clear(*plan);
        *plan = key;
        plan->used = true;
        lt_plan_make(*plan, lt);
    }
    if (!plan->offered) return 1;
    if (cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) !=
        CUBLAS_STATUS_SUCCESS)
        return 1;
    int rc = 0;
    void *ws = plan->ws ? hr_cuda_malloc(dev, plan->ws) : nullptr;
    if (plan->ws && !ws) return -1;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t status = cublasLtMatmul(lt, plan->desc, &one, ob.ptr, plan->la, oa.ptr, plan->lb, &zero, c, plan->lc,
                                           c, plan->lc, &plan->algo, ws, plan->ws, st);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
        plan->offered = false; /* refused at run time: this case takes the plain path from now on */
        rc = 1;
    } else {
        rc = check_blas(status, op, "cublasLtMatmul");
    }
    /* back to the cache at once: later work on the stream runs after the GEMM */
    if (ws) hr_cuda_free(dev, ws, plan->ws);
    return rc;
}

} // namespace
} // namespace hrc

using namespace hrc;

extern "C" int hr_cuda_matmul(hr_tensor *a, hr_tensor *b, bool a_vec, bool b_vec, int nb, const int64_t *bsize,
                              int64_t m, int64_t n, int64_t k, double alpha, double beta, const hr_tensor *bias,
                              hr_tensor *out)
{
    const char *op = "matmul";
    const hr_tensor *ts[3] = {a, b, out};
    if (same_device(op, 3, ts)) return -1;
    cudaDataType_t dtype;
    cublasComputeType_t compute;
    bool f64 = false;
    switch (a->dtype) {
    case HR_F32:
        dtype = CUDA_R_32F;
        compute = hr_cuda_allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        break;
    case HR_F64:
        dtype = CUDA_R_64F;
        compute = CUBLAS_COMPUTE_64F;
        f64 = true;
        break;
    case HR_BF16:
        dtype = CUDA_R_16BF;
        compute = CUBLAS_COMPUTE_32F;
        break;
    case HR_F16:
        dtype = CUDA_R_16F;
        compute = CUBLAS_COMPUTE_32F;
        break;
    default: {
        char d[160];
        return hr_fail(HR_EDEVICE, "matmul has no CUDA implementation for %s tensors yet (got %s); use a float dtype",
                       hr_dtype_name(a->dtype), hr_tensor_desc(a, d, sizeof d));
    }
    }
    int64_t batch = 1;
    for (int i = 0; i < nb; i++) batch *= bsize[i];
    if (batch == 0 || m == 0 || n == 0 || k == 0) return 0; /* the caller handles empty sums */
    cublasHandle_t h = blas(dev_of(out));
    if (!h) return -1;
    Operand oa, ob;
    if (prepare(a, a_vec, true, nb, bsize, m, k, &oa)) return -1;
    if (prepare(b, b_vec, false, nb, bsize, k, n, &ob)) {
        hr_tensor_release(oa.hold);
        return -1;
    }
    /* A shared right operand (a linear layer's weight) times a batch of row blocks that follow each
     * other in memory ([B, L, in] activations): one GEMM over all B * L rows, not B small ones. In
     * cuBLAS's column-major view row r of a is column r at r * lda, and the output is contiguous. */
    if (batch > 1 && !oa.by_pointer && !ob.by_pointer && ob.bstride == 0 && oa.op == CUBLAS_OP_N &&
        oa.bstride == m * oa.ld && m * batch <= INT_MAX) {
        m *= batch;
        batch = 1;
    }
    if (bias) {
        /* one product with alpha 1: the bias in cuBLASLt's epilogue, else copied into out for beta 1 */
        int lt = 1;
        if (batch == 1 && alpha == 1 && !f64 && bias->ndim == 1 && bias->size[0] == n && bias->stride[0] == 1 &&
            bias->dtype == a->dtype)
            lt = gemm_bias_lt(dev_of(out), oa, ob, m, n, k, dtype, compute, hr_tensor_data(bias), (char *)hr_tensor_data(out));
        if (lt <= 0) {
            hr_tensor_release(oa.hold);
            hr_tensor_release(ob.hold);
            return lt;
        }
        if (hr_copy_(out, (hr_tensor *)bias)) {
            hr_tensor_release(oa.hold);
            hr_tensor_release(ob.hold);
            return -1;
        }
        beta = 1;
    }
    float af = (float)alpha, bf = (float)beta;
    const void *pa = f64 ? (const void *)&alpha : (const void *)&af;
    const void *pb = f64 ? (const void *)&beta : (const void *)&bf;
    size_t el = hr_dtype_size(a->dtype);
    char *c = (char *)hr_tensor_data(out);
    int rc = 0;
    if (oa.by_pointer || ob.by_pointer) {
        rc = gemm_by_pointers(dev_of(out), h, oa, ob, nb, bsize, batch, m, n, k, dtype, compute, pa, pb, (int)el, c);
        batch = 0; /* done */
    }
    /* cuBLAS counts batches in an int: very long batches go in slices */
    for (int64_t b0 = 0; b0 < batch && rc == 0; b0 += INT_MAX) {
        int cnt = (int)(batch - b0 < INT_MAX ? batch - b0 : INT_MAX);
        rc = check_blas(cublasGemmStridedBatchedEx(h, ob.op, oa.op, (int)n, (int)m, (int)k, pa, ob.ptr + b0 * ob.bstride * el,
                                                   dtype, (int)ob.ld, ob.bstride, oa.ptr + b0 * oa.bstride * el, dtype,
                                                   (int)oa.ld, oa.bstride, pb, c + b0 * m * n * el, dtype, (int)n, m * n,
                                                   cnt, compute, CUBLAS_GEMM_DEFAULT),
                        op, "cublasGemmStridedBatchedEx");
    }
    /* the copies may go back to the cache at once: later work on the stream runs after the GEMM */
    hr_tensor_release(oa.hold);
    hr_tensor_release(ob.hold);
    return rc;
}
