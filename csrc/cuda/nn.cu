/* cuda/nn.cu — fused nn ops on the device, with the same contracts, saved tensors and closed-form
 * backwards as their CPU twins (cpu/layernorm.c, embedding.c, cross_entropy.c, dropout.c,
 * attention.c, optim.c) and the Philox fills of hr_random.h. Statistics accumulate in double. */
#include <cinttypes>
#include <cmath>

#include "cuda/common.cuh"

namespace hrc {
namespace {

constexpr int kRow = 256;
constexpr int kLnWarps = 8; /* rows per block of the layer norm's warp kernels */

__device__ __forceinline__ float mul_rn(float x, float y) { return __fmul_rn(x, y); }
__device__ __forceinline__ double mul_rn(double x, double y) { return __dmul_rn(x, y); }
__device__ __forceinline__ float add_rn(float x, float y) { return __fadd_rn(x, y); }
__device__ __forceinline__ double add_rn(double x, double y) { return __dadd_rn(x, y); }
__device__ __forceinline__ float sub_rn(float x, float y) { return __fsub_rn(x, y); }
__device__ __forceinline__ double sub_rn(double x, double y) { return __dsub_rn(x, y); }

unsigned rows_grid(int64_t rows) { return (unsigned)(rows < 1 ? 1 : rows < 65535 * 16 ? rows : 65535 * 16); }

/* ================================================================== layer norm */

/* x may be bf16/f16 (autocast's layer norm of a half tensor): it is read as f32, exactly what a
 * cast to f32 gives, the output and the statistics' compute type are f32, and x's gradient is
 * rounded into x's dtype, as the cast's backward would round it. T is the compute type (float, or
 * double for f64 inputs). */
struct LnCtx {
    double eps;
    int64_t rows, cols;
    bool has_weight, has_bias;
};

template <typename T> __device__ __forceinline__ T load_as(const char *p, int dt);
template <> __device__ __forceinline__ float load_as<float>(const char *p, int dt) { return load_f32(p, dt); }
template <> __device__ __forceinline__ double load_as<double>(const char *p, int dt) { return load_f64(p, dt); }

/* An element of dtype XDT (known at compile time, so that a warp's loads are straight-line code the
 * compiler issues together rather than branches taken one load at a time). */
template <typename T, int XDT> __device__ __forceinline__ T load_fixed(const char *p)
{
    if (XDT == HR_F32) return (T) * (const float *)p;
    if (XDT == HR_F64) return (T) * (const double *)p;
    if (XDT == HR_BF16) return (T)bf16_to_f32(*(const uint16_t *)p);
    return (T)f16_to_f32(*(const uint16_t *)p);
}

/* Rows of at most 32 * PER columns: one warp per row, the row in registers (read once), sums by
 * shuffles. Up to HERO's 768 columns (PER 24) two blocks share a multiprocessor: the compiler gave
 * the f32 kernel 132 registers a thread, one block of 8 rows a multiprocessor, and the loads of a
 * row then waited for the reductions of the one before. */
template <typename T, int PER, int XDT>
__global__ void __launch_bounds__(32 * kLnWarps, PER <= 24 ? 2 : 1) ln_forward_warp(const char *x, const T *w, const T *b, T *y, double *mean, double *rstd, int64_t rows, int n,
                                double eps)
{
    const int lane = threadIdx.x & 31, el = dtype_size(XDT);
    const int64_t step = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += step) {
        const char *xr = x + r * n * el;
        T v[PER];
        double s = 0;
#pragma unroll
        for (int k = 0; k < PER; k++) {
            int i = lane + 32 * k;
            v[k] = i < n ? load_fixed<T, XDT>(xr + (int64_t)i * el) : (T)0;
            s += (double)v[k];
        }
        double mu = warp_sum(s) / (double)n;
        double ss = 0;
#pragma unroll
        for (int k = 0; k < PER; k++) {
            double d = (double)v[k] - mu;
            if (lane + 32 * k < n) ss += d * d;
        }
        double rs = 1.0 / sqrt(warp_sum(ss) / (double)n + eps);
        if (lane == 0) {
            mean[r] = mu;
            rstd[r] = rs;
        }
        const T m_ = (T)mu, rs_ = (T)rs;
        T *yr = y + r * n;
#pragma unroll
        for (int k = 0; k < PER; k++) {
            int i = lane + 32 * k;
            if (i >= n) continue;
            T o = mul_rn(sub_rn(v[k], m_), rs_);
            if (w) o = mul_rn(o, w[i]);
            if (b) o = add_rn(o, b[i]);
            yr[i] = o;
        }
    }
}

/* Longer rows: one block per row. */
template <typename T>
__global__ void ln_forward(const char *x, int xdt, const T *w, const T *b, T *y, double *mean, double *rstd, int64_t rows,
                           int64_t n, double eps)
{
    __shared__ double sh[kRow];
    const int el = dtype_size(xdt);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const char *xr = x + r * n * el;
        T *yr = y + r * n;
        double s = 0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)load_as<T>(xr + i * el, xdt);
        double mu = block_sum(s, sh) / (double)n;
        double ss = 0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            double d = (double)load_as<T>(xr + i * el, xdt) - mu;
            ss += d * d;
        }
        double rs = 1.0 / sqrt(block_sum(ss, sh) / (double)n + eps);
        if (threadIdx.x == 0) {
            mean[r] = mu;
            rstd[r] = rs;
        }
        const T m_ = (T)mu, rs_ = (T)rs;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            T v = mul_rn(sub_rn(load_as<T>(xr + i * el, xdt), m_), rs_);
            if (w) v = mul_rn(v, w[i]);
            if (b) v = add_rn(v, b[i]);
            yr[i] = v;
        }
    }
}

/* dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w; dx in x's dtype. */
template <typename T, int PER, int XDT>
__global__ void ln_backward_dx_warp(const char *x, const T *w, const T *g, char *dx, const double *mean, const double *rstd,
                                    int64_t rows, int n)
{
    const int lane = threadIdx.x & 31, el = dtype_size(XDT);
    const int64_t step = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += step) {
        const char *xr = x + r * n * el;
        const T *gr = g + r * n;
        const double mu = mean[r], rs = rstd[r];
        T xv[PER], gv[PER];
        double sd = 0, sdx = 0;
#pragma unroll
        for (int k = 0; k < PER; k++) {
            int i = lane + 32 * k;
            bool in = i < n;
            xv[k] = in ? load_fixed<T, XDT>(xr + (int64_t)i * el) : (T)0;
            gv[k] = in ? gr[i] : (T)0;
            double d = (double)gv[k] * (w && in ? (double)w[i] : 1.0);
            sd += d;
            sdx += d * (((double)xv[k] - mu) * rs);
        }
        double md = warp_sum(sd) / (double)n, mdx = warp_sum(sdx) / (double)n;
#pragma unroll
        for (int k = 0; k < PER; k++) {
            int i = lane + 32 * k;
            if (i >= n) continue;
            double d = (double)gv[k] * (w ? (double)w[i] : 1.0);
            double xh = ((double)xv[k] - mu) * rs;
            store(dx + (r * n + i) * el, XDT, (T)(rs * (d - md - xh * mdx)));
        }
    }
}

template <typename T>
__global__ void ln_backward_dx(const char *x, int xdt, const T *w, const T *g, char *dx, const double *mean,
                               const double *rstd, int64_t rows, int64_t n)
{
    __shared__ double sh[kRow];
    const int el = dtype_size(xdt);
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const char *xr = x + r * n * el;
        const T *gr = g + r * n;
        double mu = mean[r], rs = rstd[r];
        double sd = 0, sdx = 0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            double d = (double)gr[i] * (w ? (double)w[i] : 1.0);
            sd += d;
            sdx += d * (((double)load_as<T>(xr + i * el, xdt) - mu) * rs);
        }
        double md = block_sum(sd, sh) / (double)n, mdx = block_sum(sdx, sh) / (double)n;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            double d = (double)gr[i] * (w ? (double)w[i] : 1.0);
            double xh = ((double)load_as<T>(xr + i * el, xdt) - mu) * rs;
            store(dx + (r * n + i) * el, xdt, (T)(rs * (d - md - xh * mdx)));
        }
    }
}

/* Column partial sums of g*xhat and g over chunks of rows: part[chunk][col] (deterministic: a
 * fixed chunking and a serial loop per thread, then the chunks summed in order). */
template <typename T, int XDT>
__global__ void ln_param_partial(const char *x, const T *g, const double *mean, const double *rstd, int64_t rows, int64_t n,
                                 int64_t rows_per_chunk, double *pw, double *pb)
{
    int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    int64_t chunk = blockIdx.y;
    if (c >= n) return;
    const int el = dtype_size(XDT);
    int64_t r0 = chunk * rows_per_chunk, r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    double dw = 0, db = 0;
    for (int64_t r = r0; r < r1; r++) {
        double gv = (double)g[r * n + c];
        dw += gv * ((double)load_fixed<T, XDT>(x + (r * n + c) * el) - mean[r]) * rstd[r];
        db += gv;
    }
    if (pw) pw[chunk * n + c] = dw;
    if (pb) pb[chunk * n + c] = db;
}

/* out[c] = sum over chunks of part[k][c]: a block takes 32 columns, its 8 warps every 8th chunk,
 * and the 8 partial sums are added in warp order (a fixed order: deterministic). One thread per
 * column summing all chunks left a few hundred threads each waiting on 256 loads in a row. */
constexpr int kChunkGroups = 8;

__global__ void sum_chunks(const double *part, int64_t chunks, int64_t n, double *out)
{
    __shared__ double sh[kChunkGroups][33];
    const int lane = threadIdx.x & 31, grp = threadIdx.x >> 5;
    const int64_t c = blockIdx.x * 32 + lane;
    double s = 0;
    if (c < n)
        for (int64_t k = grp; k < chunks; k += kChunkGroups) s += part[k * n + c];
    sh[grp][lane] = s;
    __syncthreads();
    if (grp == 0 && c < n) {
        double t = 0;
        for (int g = 0; g < kChunkGroups; g++) t += sh[g][lane];
        out[c] = t;
    }
}

unsigned chunk_sum_grid(int64_t n) { return (unsigned)((n + 31) / 32); }


unsigned ln_warp_grid(int64_t rows)
{
    int64_t blocks = (rows + kLnWarps - 1) / kLnWarps;
    return (unsigned)(blocks < 1 ? 1 : blocks < 65535 * 16 ? blocks : 65535 * 16);
}

/* Launches the forward for compute type T: the warp kernel sized to the row when it has at most
 * 1024 columns, else the block kernel. */
template <typename T, int XDT>
void ln_forward_fixed(const char *x, const T *w, const T *b, T *y, double *mp, double *rp, int64_t rows, int64_t cols,
                      double eps, cudaStream_t st)
{
    int per = (int)((cols + 31) / 32), n = (int)cols;
    unsigned grid = ln_warp_grid(rows), threads = 32 * kLnWarps;
    if (per <= 4) ln_forward_warp<T, 4, XDT><<<grid, threads, 0, st>>>(x, w, b, y, mp, rp, rows, n, eps);
    else if (per <= 8) ln_forward_warp<T, 8, XDT><<<grid, threads, 0, st>>>(x, w, b, y, mp, rp, rows, n, eps);
    else if (per <= 16) ln_forward_warp<T, 16, XDT><<<grid, threads, 0, st>>>(x, w, b, y, mp, rp, rows, n, eps);
    else if (per <= 24) ln_forward_warp<T, 24, XDT><<<grid, threads, 0, st>>>(x, w, b, y, mp, rp, rows, n, eps);
    else ln_forward_warp<T, 32, XDT><<<grid, threads, 0, st>>>(x, w, b, y, mp, rp, rows, n, eps);
}

/* Launches the forward for compute type T: the warp kernel for x's dtype sized to the row when it
 * has at most 1024 columns, else the block kernel. */
template <typename T>
void ln_forward_launch(const char *x, int xdt, const T *w, const T *b, T *y, double *mp, double *rp, int64_t rows,
                       int64_t cols, double eps, cudaStream_t st)
{
    if (cols > 32 * 32) ln_forward<T><<<rows_grid(rows), kRow, 0, st>>>(x, xdt, w, b, y, mp, rp, rows, cols, eps);
    else
        for_float_dtype(xdt, [&](auto d) { ln_forward_fixed<T, decltype(d)::value>(x, w, b, y, mp, rp, rows, cols, eps, st); });
}

template <typename T, int XDT>
void ln_backward_dx_fixed(const char *x, const T *w, const T *g, char *dx, const double *mp, const double *rp, int64_t rows,
                          int64_t cols, cudaStream_t st)
{
    int per = (int)((cols + 31) / 32), n = (int)cols;
    unsigned grid = ln_warp_grid(rows), threads = 32 * kLnWarps;
    if (per <= 4) ln_backward_dx_warp<T, 4, XDT><<<grid, threads, 0, st>>>(x, w, g, dx, mp, rp, rows, n);
    else if (per <= 8) ln_backward_dx_warp<T, 8, XDT><<<grid, threads, 0, st>>>(x, w, g, dx, mp, rp, rows, n);
    else if (per <= 16) ln_backward_dx_warp<T, 16, XDT><<<grid, threads, 0, st>>>(x, w, g, dx, mp, rp, rows, n);
    else if (per <= 24) ln_backward_dx_warp<T, 24, XDT><<<grid, threads, 0, st>>>(x, w, g, dx, mp, rp, rows, n);
    else ln_backward_dx_warp<T, 32, XDT><<<grid, threads, 0, st>>>(x, w, g, dx, mp, rp, rows, n);
}

template <typename T>
void ln_backward_dx_launch(const char *x, int xdt, const T *w, const T *g, char *dx, const double *mp, const double *rp,
                           int64_t rows, int64_t cols, cudaStream_t st)
{
    if (cols > 32 * 32) ln_backward_dx<T><<<rows_grid(rows), kRow, 0, st>>>(x, xdt, w, g, dx, mp, rp, rows, cols);
    else
        for_float_dtype(xdt, [&](auto d) { ln_backward_dx_fixed<T, decltype(d)::value>(x, w, g, dx, mp, rp, rows, cols, st); });
}

template <typename T>
void ln_param_launch(dim3 grid, const char *x, int xdt, const T *g, const double *mp, const double *rp, int64_t rows,
                     int64_t n, int64_t per, double *pw, double *pb, cudaStream_t st)
{
    for_float_dtype(xdt, [&](auto d) {
        ln_param_partial<T, decltype(d)::value><<<grid, kRow, 0, st>>>(x, g, mp, rp, rows, n, per, pw, pb);
    });
}

/* The dtype of the output, the parameters and the statistics' arithmetic for input dtype dt. */
hr_dtype ln_compute_dtype(hr_dtype dt) { return dt == HR_F64 ? HR_F64 : HR_F32; }

/* The gradients of the layer norm of x (the forward's contiguous input; mean, rstd and w as it kept
 * them) for the output gradient g (contiguous, in the compute dtype): gi[0] x's, gi[1] the
 * weight's, gi[2] the bias's, each when asked for. */
int ln_gradients(const LnCtx *c, hr_tensor *x, hr_tensor *mean, hr_tensor *rstd, hr_tensor *w, hr_tensor *g, bool need_x,
                 bool need_w, bool need_b, hr_tensor **gi)
{
    cudaStream_t st = stream(dev_of(x));
    if (!st) return -1;
    hr_dtype cdt = ln_compute_dtype(x->dtype);
    int rc = 0;
    bool f64 = cdt == HR_F64;
    const char *xp = (const char *)hr_tensor_data(x);
    const double *mp = (const double *)hr_tensor_data(mean), *rp = (const double *)hr_tensor_data(rstd);
    if (need_x) {
        gi[0] = empty_on(x, x->ndim, x->size, x->dtype);
        if (!gi[0]) rc = -1;
        else if (c->rows > 0 && c->cols > 0) {
            char *dxp = (char *)hr_tensor_data(gi[0]);
            if (f64)
                ln_backward_dx_launch<double>(xp, x->dtype, w ? (const double *)hr_tensor_data(w) : nullptr,
                                              (const double *)hr_tensor_data(g), dxp, mp, rp, c->rows, c->cols, st);
            else
                ln_backward_dx_launch<float>(xp, x->dtype, w ? (const float *)hr_tensor_data(w) : nullptr,
                                             (const float *)hr_tensor_data(g), dxp, mp, rp, c->rows, c->cols, st);
            rc = check_launch("layer_norm backward");
        }
    }
    if (rc == 0 && (need_w || need_b)) {
        int64_t n = c->cols;
        int64_t chunks = c->rows < 256 ? (c->rows > 0 ? c->rows : 1) : 256;
        int64_t per = (c->rows + chunks - 1) / chunks;
        if (per < 1) per = 1;
        int64_t psize[2] = {chunks, n};
        hr_tensor *pw = need_w ? empty_on(x, 2, psize, HR_F64) : nullptr;
        hr_tensor *pb = need_b ? empty_on(x, 2, psize, HR_F64) : nullptr;
        hr_tensor *dw = need_w ? empty_on(x, 1, &n, HR_F64) : nullptr;
        hr_tensor *db = need_b ? empty_on(x, 1, &n, HR_F64) : nullptr;
        if ((need_w && (!pw || !dw)) || (need_b && (!pb || !db))) rc = -1;
        else if (n > 0) {
            if (c->rows > 0) {
                dim3 grid((unsigned)((n + kRow - 1) / kRow), (unsigned)chunks);
                double *pwp = pw ? (double *)hr_tensor_data(pw) : nullptr, *pbp = pb ? (double *)hr_tensor_data(pb) : nullptr;
                if (f64)
                    ln_param_launch<double>(grid, xp, x->dtype, (const double *)hr_tensor_data(g), mp, rp, c->rows, n, per,
                                            pwp, pbp, st);
                else
                    ln_param_launch<float>(grid, xp, x->dtype, (const float *)hr_tensor_data(g), mp, rp, c->rows, n, per,
                                           pwp, pbp, st);
                if (pw) sum_chunks<<<chunk_sum_grid(n), 32 * kChunkGroups, 0, st>>>(pwp, chunks, n, (double *)hr_tensor_data(dw));
                if (pb) sum_chunks<<<chunk_sum_grid(n), 32 * kChunkGroups, 0, st>>>(pbp, chunks, n, (double *)hr_tensor_data(db));
                rc = check_launch("layer_norm backward");
            } else {
                if (dw) rc = hr_cuda_memset0(dw->storage);
                if (db && !rc) rc = hr_cuda_memset0(db->storage);
            }
        }
        if (rc == 0 && need_w && !(gi[1] = hr_cast(dw, cdt))) rc = -1;
        if (rc == 0 && need_b && !(gi[2] = hr_cast(db, cdt))) rc = -1;
        hr_tensor_release(pw);
        hr_tensor_release(pb);
        hr_tensor_release(dw);
        hr_tensor_release(db);
    }
    return rc;
}

int ln_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const LnCtx *c = (const LnCtx *)node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *mean = hr_node_saved(node, 1), *rstd = hr_node_saved(node, 2);
    hr_tensor *w = c->has_weight ? hr_node_saved(node, 3) : nullptr;
    if (!x || !mean || !rstd || (c->has_weight && !w)) return -1;
    /* read in place when it is already contiguous in the compute dtype (a copy of an activation's
     * gradient, 65 MB each way for one of the bench model's, was made here for every call) */
    hr_tensor *g = hr_readable_as(grad, ln_compute_dtype(x->dtype));
    if (!g) return -1;
    int rc = ln_gradients(c, x, mean, rstd, w, g, hr_node_input_needs_grad(node, 0),
                          c->has_weight && hr_node_input_needs_grad(node, 1),
                          c->has_bias && hr_node_input_needs_grad(node, 2), gi);
    hr_tensor_release(g);
    return rc;
}

/* ================================================================== embedding */

struct EmbCtx {
    int64_t padding_idx, vocab, hidden, count;
};

/* The first (lowest) position whose index is outside [0, vocab), in *bad (initially n). */
__global__ void index_range(const char *idx, int idt, int64_t n, int64_t vocab, unsigned long long *bad)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        int64_t v = idt == HR_I64 ? ((const int64_t *)idx)[k] : (int64_t)((const int32_t *)idx)[k];
        if (v < 0 || v >= vocab) atomicMin(bad, (unsigned long long)k);
    }
}

/* Checks every index (contiguous i64/i32) against vocab on the device; one small read-back. */
int check_indices(const hr_tensor *idx, int64_t vocab, const char *op, cudaStream_t st)
{
    int64_t n = hr_tensor_numel(idx);
    if (n == 0) return 0;
    if (hr_tensor *mirror = hr_mirror_view(idx)) { /* uploaded from the host: checked there, no wait */
        const char *v = (const char *)hr_tensor_data(mirror);
        size_t el = hr_dtype_size(idx->dtype);
        int rc = 0;
        for (int64_t k = 0; k < n && rc == 0; k++) {
            int64_t x = hr_load_i64(v + (size_t)k * el, idx->dtype);
            if (x < 0 || x >= vocab)
                rc = hr_fail(HR_EINVAL, "%s: index %" PRId64 " at position %" PRId64 " is out of range for %" PRId64 " rows",
                             op, x, k + 1, vocab);
        }
        hr_tensor_release(mirror);
        return rc;
    }
    int dev = dev_of(idx);
    unsigned long long *bad = (unsigned long long *)hr_cuda_malloc(dev, sizeof *bad);
    if (!bad) return -1;
    unsigned long long host = (unsigned long long)n;
    /* every byte 0xff: the largest value, which any bad position lowers (no upload, no wait) */
    int rc = check(cudaMemsetAsync(bad, 0xff, sizeof *bad, st), op, "cudaMemsetAsync");
    if (!rc) {
        index_range<<<grid_for(n), kThreads, 0, st>>>((const char *)hr_tensor_data(idx), idx->dtype, n, vocab, bad);
        rc = check_launch(op);
    }
    if (!rc) rc = check(cudaMemcpyAsync(&host, bad, sizeof host, cudaMemcpyDeviceToHost, st), op, "cudaMemcpyAsync");
    if (!rc) rc = sync(dev, op);
    if (!rc && host < (unsigned long long)n) {
        int64_t v = 0;
        size_t el = hr_dtype_size(idx->dtype);
        char buf[8] = {0};
        if (!check(cudaMemcpyAsync(buf, (const char *)hr_tensor_data(idx) + host * el, el, cudaMemcpyDeviceToHost, st), op,
                   "cudaMemcpyAsync") &&
            !sync(dev, op))
            v = hr_load_i64(buf, idx->dtype);
        rc = hr_fail(HR_EINVAL, "%s: index %" PRId64 " at position %" PRId64 " is out of range for %" PRId64 " rows", op, v,
                     (int64_t)host + 1, vocab);
    }
    hr_cuda_free(dev, bad, sizeof *bad);
    return rc;
}

template <typename T>
__global__ void emb_gather(const T *w, int64_t ws0, int64_t ws1, const char *idx, int idt, int64_t count, int64_t hidden,
                           T *out)
{
    int64_t total = count * hidden;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t k = i / hidden, c = i % hidden;
        int64_t r = idt == HR_I64 ? ((const int64_t *)idx)[k] : (int64_t)((const int32_t *)idx)[k];
        out[i] = w[r * ws0 + c * ws1];
    }
}

/* Adds each token's gradient row into its row of dst (row stride ds): atomics, so tokens that share
 * a row add in an unspecified order. */
template <typename T>
__global__ void emb_scatter(const T *g, const char *idx, int idt, int64_t count, int64_t hidden, int64_t padding_idx, T *dst,
                            int64_t ds)
{
    int64_t total = count * hidden;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t k = i / hidden, c = i % hidden;
        int64_t r = idt == HR_I64 ? ((const int64_t *)idx)[k] : (int64_t)((const int32_t *)idx)[k];
        if (r == padding_idx) continue;
        atomicAdd(dst + r * ds + c, g[i]);
    }
}

int emb_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const EmbCtx *c = (const EmbCtx *)node->ctx;
    hr_tensor *idx = hr_node_saved(node, 0);
    if (!idx) return -1;
    hr_dtype dt = node->out_dtype;
    cudaStream_t st = stream(dev_of(idx));
    if (!st) return -1;
    hr_tensor *g = hr_readable_as(grad, dt); /* read in place when it can be */
    if (!g) return -1;
    hr_tensor *leaf = node->next[0].leaf;
    bool in_place = leaf && leaf->dtype == dt && hr_device_eq(hr_tensor_device(leaf), hr_tensor_device(idx)) &&
                    (!leaf->grad || hr_tensor_is_contiguous(leaf->grad));
    hr_tensor *dst;
    if (in_place) {
        dst = hr_leaf_grad_buffer(leaf);
    } else {
        int64_t size[2] = {c->vocab, c->hidden};
        dst = hr_tensor_zeros(2, size, dt, hr_tensor_device(idx));
    }
    int rc = 0;
    if (!dst) rc = -1;
    else {
        int64_t total = c->count * c->hidden;
        if (total > 0) {
            if (dt == HR_F64)
                emb_scatter<double><<<grid_for(total), kThreads, 0, st>>>((const double *)hr_tensor_data(g),
                                                                          (const char *)hr_tensor_data(idx), idx->dtype,
                                                                          c->count, c->hidden, c->padding_idx,
                                                                          (double *)hr_tensor_data(dst), c->hidden);
            else
                emb_scatter<float><<<grid_for(total), kThreads, 0, st>>>((const float *)hr_tensor_data(g),
                                                                         (const char *)hr_tensor_data(idx), idx->dtype,
                                                                         c->count, c->hidden, c->padding_idx,
                                                                         (float *)hr_tensor_data(dst), c->hidden);
            rc = check_launch("embedding backward");
        }
        if (rc == 0) {
            hr_tensor_bump_version(dst);
            gi[0] = in_place ? HR_GRAD_HANDLED : dst;
        } else if (!in_place) {
            hr_tensor_release(dst);
        }
    }
    hr_tensor_release(g);
    return rc;
}

/* ================================================================== cross entropy */

struct CeCtx {
    int64_t rows, classes, width, ignore_index, counted; /* width: the logits' columns, classes first */
    double smoothing;
    hr_reduction reduction;
};

/* exp of a shifted logit (at most 0): in double for f64 logits; for f32/bf16/f16 ones the f32
 * exponential of the argument rounded to f32, which is within 1e-7 of the double one (the sums
 * stay in double). The vocabulary-wide rows of the MLM head (137M exponentials a step, forward
 * and backward) spent 2.2 ms on double exponentials. */
template <int XDT> __device__ __forceinline__ double exp_of_logit(double v)
{
    if (XDT == HR_F64) return exp(v);
    return (double)expf((float)v);
}

/* The running maximum of a row, NaN-propagating as the CPU's (a NaN logit makes the row's NaN). */
__device__ __forceinline__ double nan_max(double mx, double v) { return (v > mx || v != v) && mx == mx ? v : mx; }

/* The rows are cut into units of 8 consecutive columns (and the last C % 8 columns), and thread t of
 * a block takes units t, t + blockDim.x, ...: the order of every sum depends only on C, not on the
 * dtype or on how the row is read, so that bf16 logits give bit for bit the loss of their f32 copy.
 * Where the rows are 16-byte aligned (vec) a unit is read in one 16-byte load (two for f32),
 * otherwise element by element. */
constexpr int kCeUnit = 8;

/* Unit j of a row of XDT as doubles: exactly the values load_fixed gives (load8's conversions). */
template <int XDT> __device__ __forceinline__ void ce_load_unit(const char *row, int64_t j, bool vec, double v[kCeUnit])
{
    constexpr int el = XDT == HR_F64 ? 8 : XDT == HR_F32 ? 4 : 2;
    if constexpr (XDT != HR_F64) {
        if (vec) {
            float f[kCeUnit];
            load8(row, XDT, j, f);
#pragma unroll
            for (int k = 0; k < kCeUnit; k++) v[k] = f[k];
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < kCeUnit; k++) v[k] = load_fixed<double, XDT>(row + (j * kCeUnit + k) * el);
}

/* Gradients o (already in the compute type) stored as unit j of a row of XDT, rounded as store_f32
 * rounds them (f64: as they are). */
template <int XDT> __device__ __forceinline__ void ce_store_unit(char *row, int64_t j, bool vec, const double o[kCeUnit])
{
    constexpr int el = XDT == HR_F64 ? 8 : XDT == HR_F32 ? 4 : 2;
    if constexpr (XDT != HR_F64) {
        if (vec) {
            float f[kCeUnit];
#pragma unroll
            for (int k = 0; k < kCeUnit; k++) f[k] = (float)o[k];
            store8(row, XDT, j, f);
            return;
        }
    }
#pragma unroll
    for (int k = 0; k < kCeUnit; k++) {
        char *p = row + (j * kCeUnit + k) * el;
        if (XDT == HR_F64) *(double *)p = o[k];
        else store_f32(p, XDT, (float)o[k]);
    }
}

/* One block per row of the forward: few enough rows in flight that the second pass over a row
 * (100 KB of the MLM head's bf16 logits) finds it in L2. */
constexpr int kCeThreads = 512;

/* NaN-propagating maximum over the block (every thread gets it); sh has 32 doubles. */
__device__ double block_nan_max(double v, double *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double w = lane < warps ? sh[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) w = nan_max(w, __shfl_xor_sync(0xffffffffu, w, o));
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    double r = sh[0];
    __syncthreads();
    return r;
}

/* Logits of dtype XDT (f32/f64, or bf16/f16 read exactly as their f32 copies), statistics in
 * double as on the CPU: the row's maximum, then the sums of exp(x - max) and of x over its first
 * C columns, in units (above). One block per row. */
template <int XDT>
__global__ void __launch_bounds__(kCeThreads) ce_forward(const char *x, int64_t rs, bool vec, const int64_t *target,
                                                         int64_t rows, int64_t C, int64_t ignore, double smoothing,
                                                         double *lse_out, double *loss)
{
    __shared__ double sh[32];
    constexpr int el = XDT == HR_F64 ? 8 : XDT == HR_F32 ? 4 : 2;
    const int64_t units = C / kCeUnit, tail0 = units * kCeUnit;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const char *row = x + r * rs * el;
        double mx = -INFINITY;
#pragma unroll 2
        for (int64_t j = threadIdx.x; j < units; j += blockDim.x) {
            double v[kCeUnit];
            ce_load_unit<XDT>(row, j, vec, v);
#pragma unroll
            for (int k = 0; k < kCeUnit; k++) mx = nan_max(mx, v[k]);
        }
        if (tail0 + threadIdx.x < C) mx = nan_max(mx, load_fixed<double, XDT>(row + (tail0 + threadIdx.x) * el));
        mx = block_nan_max(mx, sh);
        double se = 0, sx = 0;
#pragma unroll 2
        for (int64_t j = threadIdx.x; j < units; j += blockDim.x) {
            double v[kCeUnit];
            ce_load_unit<XDT>(row, j, vec, v);
#pragma unroll
            for (int k = 0; k < kCeUnit; k++) {
                se += exp_of_logit<XDT>(v[k] - mx);
                sx += v[k];
            }
        }
        if (tail0 + threadIdx.x < C) {
            double v = load_fixed<double, XDT>(row + (tail0 + threadIdx.x) * el);
            se += exp_of_logit<XDT>(v - mx);
            sx += v;
        }
        se = block_sum(se, sh);
        sx = block_sum(sx, sh);
        if (threadIdx.x == 0) {
            double lse = mx + log(se);
            int64_t t = target[r];
            lse_out[r] = lse;
            if (t == ignore) {
                loss[r] = 0;
            } else {
                double nll = lse - load_fixed<double, XDT>(row + t * el);
                /* the sum of the logits only with smoothing, as on the CPU: a -inf logit would
                 * make 0 * smooth NaN */
                double smooth = lse - (smoothing != 0 ? sx : 0.0) / (double)C;
                loss[r] = (1.0 - smoothing) * nll + smoothing * smooth;
            }
        }
    }
}

/* The gradient of one logit in double, rounded to the compute type (float for f32/bf16/f16 logits,
 * double for f64): columns past the classes, and ignored rows (gr 0 and ignored), get 0. */
template <int XDT>
__device__ __forceinline__ double ce_grad_at(double v, int64_t c, int64_t C, int64_t t, bool ignored, double l,
                                             double base, double target_term, double gr)
{
    if (ignored || c >= C) return 0.0;
    double p = exp_of_logit<XDT>(v - l);
    double g = (p - base - (c == t ? target_term : 0.0)) * gr;
    return XDT == HR_F64 ? g : (double)(float)g;
}

/* The gradient in double, rounded to the compute type and then into the logits' dtype, as the
 * cast's backward would round it, over the W columns of gx's rows (zero past the C classes and
 * for ignored rows). Rows on the grid's y axis (and a loop past 65535), units of 8 columns on x
 * (vec: x's and gx's rows 16-byte aligned), the last W % 8 columns one per thread. */
template <int XDT>
__global__ void ce_backward_kernel(const char *x, int64_t rs, bool vec, const int64_t *target, const double *lse,
                                   const char *g, int gdt, bool per_row, double scale, int64_t rows, int64_t C, int64_t W,
                                   int64_t ignore, double smoothing, char *gx)
{
    constexpr int el = XDT == HR_F64 ? 8 : XDT == HR_F32 ? 4 : 2;
    const double gs = per_row ? 0.0 : load_f64(g, gdt) * scale;
    const double base = smoothing / (double)C, target_term = 1.0 - smoothing;
    const int64_t units = W / kCeUnit, tail0 = units * kCeUnit;
    const int64_t first = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const int64_t t = target[r];
        const bool ignored = t == ignore;
        const double gr = ignored ? 0.0 : per_row ? load_f64(g + r * (int64_t)dtype_size(gdt), gdt) : gs;
        const double l = lse[r];
        const char *row = x + r * rs * el;
        char *out = gx + r * W * el;
        for (int64_t j = first; j < units; j += step) {
            double v[kCeUnit], o[kCeUnit];
            ce_load_unit<XDT>(row, j, vec, v);
#pragma unroll
            for (int k = 0; k < kCeUnit; k++)
                o[k] = ce_grad_at<XDT>(v[k], j * kCeUnit + k, C, t, ignored, l, base, target_term, gr);
            ce_store_unit<XDT>(out, j, vec, o);
        }
        if (tail0 + first < W) {
            const int64_t c = tail0 + first;
            double v = c < C ? load_fixed<double, XDT>(row + c * el) : 0.0;
            double o = ce_grad_at<XDT>(v, c, C, t, ignored, l, base, target_term, gr);
            if (XDT == HR_F64) *(double *)(out + c * el) = o;
            else store_f32(out + c * el, XDT, (float)o);
        }
    }
}

/* Whether the rows of a [rows, *] tensor at p with rs elements of el bytes between rows can be read
 * 16 bytes at a time. */
bool rows_vec_ok(const void *p, int64_t rs, int el) { return ((uintptr_t)p & 15u) == 0 && (rs * el) % 16 == 0; }

int ce_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const CeCtx *c = (const CeCtx *)node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *target = hr_node_saved(node, 1), *lse = hr_node_saved(node, 2);
    if (!x || !target || !lse) return -1;
    cudaStream_t st = stream(dev_of(x));
    if (!st) return -1;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    int64_t size[2] = {c->rows, c->width};
    gi[0] = empty_on(x, 2, size, x->dtype);
    int rc = gi[0] ? 0 : -1;
    int64_t total = c->rows * c->width;
    if (rc == 0 && total > 0) {
        bool per_row = c->reduction == HR_REDUCE_NONE;
        double scale = c->reduction == HR_REDUCE_MEAN ? (c->counted ? 1.0 / (double)c->counted : NAN) : 1.0;
        const char *xp = (const char *)hr_tensor_data(x), *gp = (const char *)hr_tensor_data(g);
        const int64_t *tp = (const int64_t *)hr_tensor_data(target);
        const double *lp = (const double *)hr_tensor_data(lse);
        char *op = (char *)hr_tensor_data(gi[0]);
        const int el = (int)hr_dtype_size(x->dtype);
        const bool vec = x->dtype != HR_F64 && rows_vec_ok(xp, x->stride[0], el) && rows_vec_ok(op, c->width, el);
        /* a unit of 8 columns per thread (the threads of the first units also take the last W % 8) */
        const int64_t units = c->width / kCeUnit;
        dim3 grid(units > kThreads ? (unsigned)((units + kThreads - 1) / kThreads) : 1u,
                  (unsigned)(c->rows < 65535 ? c->rows : 65535));
        for_float_dtype(x->dtype, [&](auto xdt) {
            ce_backward_kernel<decltype(xdt)::value><<<grid, kThreads, 0, st>>>(xp, x->stride[0], vec, tp, lp, gp, g->dtype,
                                                                               per_row, scale, c->rows, c->classes, c->width,
                                                                               c->ignore_index, c->smoothing, op);
        });
        rc = check_launch("cross_entropy backward");
    }
    hr_tensor_release(g);
    return rc;
}

/* ================================================================== dropout */

int dropout_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    hr_tensor *noise = hr_node_saved(node, 0);
    if (!noise) return -1;
    gi[0] = hr_binary(HR_MUL, hr_operand_tensor(grad), hr_operand_tensor(noise), nullptr);
    if (gi[0] && gi[0]->dtype != noise->dtype) {
        hr_tensor *c = hr_cast(gi[0], noise->dtype);
        hr_tensor_release(gi[0]);
        gi[0] = c;
    }
    return gi[0] ? 0 : -1;
}

/* ================================================================== Philox fills */

/* Calls draw(i, u) for the elements i < n of this thread's blocks: one thread per block of 4 words,
 * element i gets u = u24 of word i % 4 of block block0 + i / 4 (the CPU's element-to-counter map). */
template <typename Draw>
__device__ __forceinline__ void for_each_u24(int64_t n, uint32_t k0, uint32_t k1, uint64_t block0, Draw draw)
{
    int64_t nb = (n + 3) / 4;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nb; j += (int64_t)gridDim.x * blockDim.x) {
        uint32_t w[4];
        philox_block(k0, k1, block0 + (uint64_t)j, w);
        for (int h = 0; h < 4; h++) {
            int64_t i = j * 4 + h;
            if (i >= n) break;
            draw(i, (double)u24(w[h]));
        }
    }
}

__global__ void bernoulli_kernel(char *out, int dt, int el, int64_t n, uint32_t k0, uint32_t k1, uint64_t block0, double p,
                                 bool invert)
{
    for_each_u24(n, k0, k1, block0, [&](int64_t i, double u) {
        bool below = u < p;
        store_i64(out + i * el, dt, below != invert ? 1 : 0);
    });
}

/* v rounded to dtype dt (f32, bf16 or f16) and read back as f32. */
__device__ __forceinline__ float round_to(float v, int dt)
{
    return dt == HR_BF16 ? bf16_to_f32(f32_to_bf16(v)) : dt == HR_F16 ? f16_to_f32(f32_to_f16(v)) : v;
}

/* keep / (1 - p) as a noise tensor of dtype dt holds it. */
__device__ __forceinline__ float noise_value(float keep_value, int dt) { return round_to(keep_value, dt); }

/* Dropout in one pass for f32/bf16/f16: the keep mask (u >= p, the same counters as
 * bernoulli_kernel), noise = keep ? keep_value : 0, y = x * noise in f32 rounded once: what the
 * mask, divide and multiply kernels give one after another. noise, when given, receives the noise
 * (the forward keeps none: the backward is the same kernel over the gradient, the mask drawn again
 * from the same counters). */
__global__ void dropout_kernel(const char *x, char *y, char *noise, int dt, int el, int64_t n, uint32_t k0, uint32_t k1,
                               uint64_t block0, double p, float keep_value)
{
    keep_value = noise_value(keep_value, dt);
    for_each_u24(n, k0, k1, block0, [&](int64_t i, double u) {
        bool keep = !(u < p);
        float nz = keep ? keep_value : 0.0f;
        if (noise) store_f32(noise + i * el, dt, nz);
        store_f32(y + i * el, dt, load_f32(x + i * el, dt) * nz);
    });
}

/* The backward for a gradient of another dtype than x's (gdt): g * noise in the compute type of the
 * two (f32, or f64 for an f64 gradient), rounded into x's dtype dt, as the multiply of the saved
 * noise and the cast back to dt gave it. */
__global__ void dropout_grad_kernel(const char *g, int gdt, char *out, int dt, int64_t n, uint32_t k0, uint32_t k1,
                                    uint64_t block0, double p, float keep_value)
{
    keep_value = noise_value(keep_value, dt);
    const int gel = dtype_size(gdt), el = dtype_size(dt);
    for_each_u24(n, k0, k1, block0, [&](int64_t i, double u) {
        float nz = u < p ? 0.0f : keep_value;
        if (gdt == HR_F64) store_f64(out + i * el, dt, load_f64(g + i * gel, gdt) * (double)nz);
        else store_f32(out + i * el, dt, load_f32(g + i * gel, gdt) * nz);
    });
}

/* Elements 4j .. 4j+3 of a contiguous f32 (16-byte aligned) or bf16/f16 (8-byte aligned) array. */
__device__ __forceinline__ void load4(const char *p, int dt, int64_t j, float v[4])
{
    if (dt == HR_F32) {
        float4 a = ((const float4 *)p)[j];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        return;
    }
    uint2 u = ((const uint2 *)p)[j];
    uint16_t h[4] = {(uint16_t)(u.x & 0xffffu), (uint16_t)(u.x >> 16), (uint16_t)(u.y & 0xffffu), (uint16_t)(u.y >> 16)};
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = dt == HR_BF16 ? bf16_to_f32(h[k]) : f16_to_f32(h[k]);
}

__device__ __forceinline__ void store4(char *p, int dt, int64_t j, const float v[4])
{
    if (dt == HR_F32) {
        ((float4 *)p)[j] = make_float4(v[0], v[1], v[2], v[3]);
        return;
    }
    uint32_t h[4];
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = dt == HR_BF16 ? f32_to_bf16(v[k]) : f32_to_f16(v[k]);
    ((uint2 *)p)[j] = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
}

/* dropout_kernel with the 4 elements of a counter block read and written in one access each
 * (aligned arrays); the same numbers. */
__global__ void dropout_vec4(const char *x, char *y, char *noise, int dt, int64_t n, uint32_t k0, uint32_t k1,
                             uint64_t block0, double p, float keep_value)
{
    keep_value = noise_value(keep_value, dt);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, nb = n / 4;
    const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int64_t j = t0; j < nb; j += stride) {
        uint32_t w[4];
        philox_block(k0, k1, block0 + (uint64_t)j, w);
        float xv[4], nz[4];
        load4(x, dt, j, xv);
#pragma unroll
        for (int h = 0; h < 4; h++) {
            nz[h] = (double)u24(w[h]) < p ? 0.0f : keep_value;
            xv[h] = xv[h] * nz[h];
        }
        if (noise) store4(noise, dt, j, nz);
        store4(y, dt, j, xv);
    }
    if (t0 == 0 && nb * 4 < n) {
        uint32_t w[4];
        philox_block(k0, k1, block0 + (uint64_t)nb, w);
        const int el = dtype_size(dt);
        for (int64_t i = nb * 4; i < n; i++) {
            float nz = (double)u24(w[i - nb * 4]) < p ? 0.0f : keep_value;
            if (noise) store_f32(noise + i * el, dt, nz);
            store_f32(y + i * el, dt, load_f32(x + i * el, dt) * nz);
        }
    }
}

/* f32: u24 of word i % 4 of block i / 4 (bf16/f16: the word's top 8/11 bits, the dtype's grid);
 * f64: u53 of words (2h, 2h+1) of block i / 2. a + (b - a) * u is one fused multiply-add in double,
 * as cpu/random.c computes it: a product and a sum rounded apart differ from it in the last place
 * of many f64 draws (17-45% of them for uniform_(1/3, 0.7) or (-0.1, 0.1)), and of rare f32 ones. */
__global__ void uniform_kernel(char *out, int dt, int el, int64_t n, uint32_t k0, uint32_t k1, uint64_t block0, double a,
                               double b)
{
    bool f64 = dt == HR_F64;
    int per = f64 ? 2 : 4;
    int64_t nb = (n + per - 1) / per;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nb; j += (int64_t)gridDim.x * blockDim.x) {
        uint32_t w[4];
        philox_block(k0, k1, block0 + (uint64_t)j, w);
        for (int h = 0; h < per; h++) {
            int64_t i = j * per + h;
            if (i >= n) break;
            int bits = dt == HR_BF16 ? 8 : dt == HR_F16 ? 11 : 24;
            double u = f64 ? u53(w[2 * h], w[2 * h + 1]) : (double)(w[h] >> (32 - bits)) * ldexp(1.0, -bits);
            store_f64(out + i * el, dt, __fma_rn(b - a, u, a));
        }
    }
}

/* Runs fill(contiguous target) into t, through a contiguous scratch when t is a strided view. */
template <typename F> int fill_contiguous(hr_tensor *t, const char *op, F fill)
{
    cudaStream_t st = stream(dev_of(t));
    if (!st) return -1;
    int64_t n = hr_tensor_numel(t);
    if (n == 0) return 0;
    hr_tensor *scratch = hr_tensor_is_contiguous(t) ? nullptr : empty_on(t, t->ndim, t->size, t->dtype);
    if (!hr_tensor_is_contiguous(t) && !scratch) return -1;
    hr_tensor *target = scratch ? scratch : t;
    fill((char *)hr_tensor_data(target), n, st);
    int rc = check_launch(op);
    if (!rc && scratch) rc = hr_copy_(t, scratch);
    hr_tensor_release(scratch);
    return rc;
}

/* The counters of a dropout of an f32/bf16/f16 tensor, kept by its node: the backward draws the
 * mask again from them instead of reading a saved noise tensor (written and read once more per
 * dropout: 32 MB each way for a bf16 activation of the bench model, and as much device memory held
 * from the forward to the backward). */
struct DropoutCtx {
    uint32_t k0, k1;
    uint64_t block0;
    double p;
    float keep_value;
    int dtype; /* x's */
};

/* y = x * noise over n contiguous elements of dtype dt (and the noise into np when given): the
 * vector kernel where every pointer allows it. */
int launch_dropout(const char *xp, char *yp, char *np, int dt, int64_t n, const DropoutCtx &c, cudaStream_t st)
{
    const uintptr_t align = dt == HR_F32 ? 16 : 8;
    if ((((uintptr_t)xp | (uintptr_t)yp | (uintptr_t)np) % align) == 0)
        dropout_vec4<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(xp, yp, np, dt, n, c.k0, c.k1, c.block0, c.p,
                                                                c.keep_value);
    else
        dropout_kernel<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(xp, yp, np, dt, dtype_size(dt), n, c.k0, c.k1, c.block0,
                                                                  c.p, c.keep_value);
    return check_launch("dropout");
}

/* dx = g * noise with the forward's mask drawn again: for a gradient of x's dtype the forward's own
 * kernel over g (the same f32 product rounded once), else dropout_grad_kernel. */
int dropout_redraw_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const DropoutCtx *c = (const DropoutCtx *)node->ctx;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    hr_tensor *dx = empty_on(g, g->ndim, g->size, (hr_dtype)c->dtype);
    cudaStream_t st = dx ? stream(dev_of(g)) : nullptr;
    int rc = st ? 0 : -1;
    const int64_t n = hr_tensor_numel(g);
    if (rc == 0 && n > 0) {
        const char *gp = (const char *)hr_tensor_data(g);
        char *dp = (char *)hr_tensor_data(dx);
        if (g->dtype == c->dtype) {
            rc = launch_dropout(gp, dp, nullptr, c->dtype, n, *c, st);
        } else {
            dropout_grad_kernel<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(gp, g->dtype, dp, c->dtype, n, c->k0, c->k1,
                                                                           c->block0, c->p, c->keep_value);
            rc = check_launch("dropout backward");
        }
    }
    hr_tensor_release(g);
    if (rc) {
        hr_tensor_release(dx);
        return -1;
    }
    gi[0] = dx;
    return 0;
}

/* ================================================================== dropout + add + layer norm */

/* layer_norm(dropout(x) + residual) as one node (cpu/add_layernorm.c has the contract): the sum s
 * of the dropout's output and the residual is written in one pass (no dropout output), the f32
 * layer norm reads it, and the backward hands the sum's gradient to the residual and, through the
 * mask drawn again, to x. The numbers are those of the dropout, add and layer norm kernels one
 * after another. */
struct AddLnCtx {
    LnCtx ln;
    DropoutCtx drop;
    bool dropped; /* training with 0 < p < 1: the mask applies; else s = x + residual */
};

/* One element of s: the dropout's product rounded to x's dtype dt (the dropout's output), then the
 * f32 sum with the residual (the add's); the intrinsics keep the two roundings apart. */
__device__ __forceinline__ float drop_add_value(float x, float nz, float r, int dt, bool dropped)
{
    return __fadd_rn(dropped ? round_to(__fmul_rn(x, nz), dt) : x, r);
}

/* The mask factors of counter block j (keep_value, or 0 where u < p). */
__device__ __forceinline__ void block_noise(uint32_t k0, uint32_t k1, uint64_t b, double p, float keep_value, bool dropped,
                                            float nz[4])
{
    uint32_t w[4] = {0, 0, 0, 0};
    if (dropped) philox_block(k0, k1, b, w);
#pragma unroll
    for (int h = 0; h < 4; h++) nz[h] = dropped && (double)u24(w[h]) < p ? 0.0f : keep_value;
}

/* s = dropout(x) + r over n contiguous elements, 4 (a counter block) per thread and step: x of
 * dtype dt (f32 16-byte aligned, bf16/f16 8-byte aligned), r and s f32 16-byte aligned. */
__global__ void dropout_add_vec4(const char *x, int dt, const float *r, float *s, int64_t n, uint32_t k0, uint32_t k1,
                                 uint64_t block0, double p, float keep_value, bool dropped)
{
    keep_value = noise_value(keep_value, dt);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, nb = n / 4;
    const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int64_t j = t0; j < nb; j += stride) {
        float xv[4], nz[4];
        load4(x, dt, j, xv);
        const float4 rv = ((const float4 *)r)[j];
        block_noise(k0, k1, block0 + (uint64_t)j, p, keep_value, dropped, nz);
        ((float4 *)s)[j] = make_float4(drop_add_value(xv[0], nz[0], rv.x, dt, dropped),
                                       drop_add_value(xv[1], nz[1], rv.y, dt, dropped),
                                       drop_add_value(xv[2], nz[2], rv.z, dt, dropped),
                                       drop_add_value(xv[3], nz[3], rv.w, dt, dropped));
    }
    if (t0 == 0 && nb * 4 < n) {
        float nz[4];
        block_noise(k0, k1, block0 + (uint64_t)nb, p, keep_value, dropped, nz);
        const int el = dtype_size(dt);
#pragma unroll
        for (int h = 0; h < 3; h++) { /* unrolled: nz stays in registers */
            const int64_t i = nb * 4 + h;
            if (i < n) s[i] = drop_add_value(load_f32(x + i * el, dt), nz[h], r[i], dt, dropped);
        }
    }
}

/* The same for pointers the vector loads cannot take: one counter block per thread. */
__global__ void dropout_add_kernel(const char *x, int dt, const float *r, float *s, int64_t n, uint32_t k0, uint32_t k1,
                                   uint64_t block0, double p, float keep_value, bool dropped)
{
    keep_value = noise_value(keep_value, dt);
    const int el = dtype_size(dt);
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < (n + 3) / 4; j += (int64_t)gridDim.x * blockDim.x) {
        float nz[4];
        block_noise(k0, k1, block0 + (uint64_t)j, p, keep_value, dropped, nz);
        for (int h = 0; h < 4 && j * 4 + h < n; h++) {
            int64_t i = j * 4 + h;
            s[i] = drop_add_value(load_f32(x + i * el, dt), nz[h], r[i], dt, dropped);
        }
    }
}

/* x's gradient from the sum's f32 gradient g: g rounded to x's dtype dt (the add hands x's side its
 * gradient in x's dtype), times the mask drawn again, rounded to dt (the dropout's backward). */
__global__ void dropout_add_grad_kernel(const float *g, char *dx, int dt, int64_t n, uint32_t k0, uint32_t k1,
                                        uint64_t block0, double p, float keep_value, bool vec)
{
    keep_value = noise_value(keep_value, dt);
    const int el = dtype_size(dt);
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < (n + 3) / 4; j += (int64_t)gridDim.x * blockDim.x) {
        float nz[4], v[4];
        block_noise(k0, k1, block0 + (uint64_t)j, p, keep_value, true, nz);
        if (vec && j * 4 + 4 <= n) {
            const float4 gv = ((const float4 *)g)[j];
            v[0] = __fmul_rn(round_to(gv.x, dt), nz[0]);
            v[1] = __fmul_rn(round_to(gv.y, dt), nz[1]);
            v[2] = __fmul_rn(round_to(gv.z, dt), nz[2]);
            v[3] = __fmul_rn(round_to(gv.w, dt), nz[3]);
            store4(dx, dt, j, v);
            continue;
        }
        for (int h = 0; h < 4 && j * 4 + h < n; h++) {
            int64_t i = j * 4 + h;
            store_f32(dx + i * el, dt, __fmul_rn(round_to(g[i], dt), nz[h]));
        }
    }
}

/* Saved: the sum s (the layer norm's f32 input), its rows' mean and 1/std, and the weight. */
int addln_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const AddLnCtx *c = (const AddLnCtx *)node->ctx;
    hr_tensor *s = hr_node_saved(node, 0), *mean = hr_node_saved(node, 1), *rstd = hr_node_saved(node, 2);
    hr_tensor *w = c->ln.has_weight ? hr_node_saved(node, 3) : nullptr;
    if (!s || !mean || !rstd || (c->ln.has_weight && !w)) return -1;
    bool need_x = hr_node_input_needs_grad(node, 0), need_r = hr_node_input_needs_grad(node, 1);
    hr_tensor *g = hr_readable_as(grad, HR_F32);
    if (!g) return -1;
    hr_tensor *out[3] = {nullptr, nullptr, nullptr};
    int rc = ln_gradients(&c->ln, s, mean, rstd, w, g, need_x || need_r, c->ln.has_weight && hr_node_input_needs_grad(node, 2),
                          c->ln.has_bias && hr_node_input_needs_grad(node, 3), out);
    hr_tensor_release(g);
    hr_tensor *ds = out[0]; /* the sum's gradient: the residual's as it is */
    gi[2] = out[1];
    gi[3] = out[2];
    if (rc == 0 && need_x && c->dropped) {
        const int64_t n = hr_tensor_numel(ds);
        gi[0] = empty_on(ds, ds->ndim, ds->size, (hr_dtype)c->drop.dtype);
        cudaStream_t st = gi[0] ? stream(dev_of(ds)) : nullptr;
        if (!st) rc = -1;
        else if (n > 0) {
            const float *gp = (const float *)hr_tensor_data(ds);
            char *dp = (char *)hr_tensor_data(gi[0]);
            const uintptr_t align = c->drop.dtype == HR_F32 ? 16 : 8;
            bool vec = (uintptr_t)gp % 16 == 0 && (uintptr_t)dp % align == 0;
            dropout_add_grad_kernel<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(gp, dp, c->drop.dtype, n, c->drop.k0, c->drop.k1,
                                                                               c->drop.block0, c->drop.p, c->drop.keep_value,
                                                                               vec);
            rc = check_launch("dropout_add_layer_norm backward");
        }
    } else if (rc == 0 && need_x) { /* x's gradient in its dtype, and a tensor of its own, as the add gives it */
        if (c->drop.dtype != HR_F32 || need_r) gi[0] = hr_cast(ds, (hr_dtype)c->drop.dtype);
        else hr_tensor_retain(gi[0] = ds);
        if (!gi[0]) rc = -1;
    }
    if (rc == 0 && need_r) hr_tensor_retain(gi[1] = ds);
    hr_tensor_release(ds);
    return rc;
}

/* ================================================================== AdamW */

struct AdamItem {
    void *p, *m, *v;
    const void *g;
    int64_t n;
    int pdt, gdt, rule;
    double step, decay, gscale, bias2_sqrt;
};

__global__ void adamw_kernel(const AdamItem *items, double beta1, double beta2, double eps)
{
    const AdamItem it = items[blockIdx.y];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < it.n; i += (int64_t)gridDim.x * blockDim.x) {
        if (it.pdt == HR_F32) {
            float *p = (float *)it.p, *m = (float *)it.m, *v = (float *)it.v;
            const float b1 = (float)beta1, b2 = (float)beta2, c1 = (float)(1.0 - beta1), c2 = (float)(1.0 - beta2);
            const float e = (float)eps, step = (float)it.step, decay = (float)it.decay;
            float g = it.gdt == HR_F32 ? ((const float *)it.g)[i] : (float)load_f64((const char *)it.g + i * dtype_size(it.gdt), it.gdt);
            if (it.gscale != 1.0) g = __fmul_rn(g, (float)it.gscale); /* clipping folded in (f32 gradients) */
            float pi = p[i];
            if (it.rule != HR_ADAM_DECOUPLED && decay != 0.0f) g = __fadd_rn(g, __fmul_rn(decay, pi)); /* L2 */
            float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(c1, g));
            m[i] = mi;
            if (it.rule == HR_ADAMAX) {
                float a = __fmul_rn(v[i], b2), b = __fadd_rn(fabsf(g), e);
                float vi = (a != a || a > b) ? a : b; /* amax: NaN wins */
                v[i] = vi;
                p[i] = __fsub_rn(pi, __fmul_rn(step, mi / vi));
                continue;
            }
            float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(c2, g), g));
            v[i] = vi;
            if (it.rule == HR_ADAM_L2) {
                p[i] = __fsub_rn(pi, __fmul_rn(step, mi / __fadd_rn(sqrtf(vi) / (float)it.bias2_sqrt, e)));
                continue;
            }
            pi = __fsub_rn(pi, __fmul_rn(step, mi / __fadd_rn(sqrtf(vi), e)));
            if (decay != 0.0f) pi = __fsub_rn(pi, __fmul_rn(decay, pi));
            p[i] = pi;
        } else {
            double *p = (double *)it.p, *m = (double *)it.m, *v = (double *)it.v;
            double g = __dmul_rn(load_f64((const char *)it.g + i * dtype_size(it.gdt), it.gdt), it.gscale);
            double pi = p[i];
            if (it.rule != HR_ADAM_DECOUPLED && it.decay != 0.0) g = __dadd_rn(g, __dmul_rn(it.decay, pi));
            double mi = __dadd_rn(__dmul_rn(m[i], beta1), __dmul_rn(1.0 - beta1, g));
            m[i] = mi;
            if (it.rule == HR_ADAMAX) {
                double a = __dmul_rn(v[i], beta2), b = __dadd_rn(fabs(g), eps);
                double vi = (a != a || a > b) ? a : b;
                v[i] = vi;
                p[i] = __dsub_rn(pi, __dmul_rn(it.step, mi / vi));
                continue;
            }
            double vi = __dadd_rn(__dmul_rn(v[i], beta2), __dmul_rn(__dmul_rn(1.0 - beta2, g), g));
            v[i] = vi;
            if (it.rule == HR_ADAM_L2) {
                p[i] = __dsub_rn(pi, __dmul_rn(it.step, mi / __dadd_rn(sqrt(vi) / it.bias2_sqrt, eps)));
                continue;
            }
            pi = __dsub_rn(pi, __dmul_rn(it.step, mi / __dadd_rn(sqrt(vi), eps)));
            if (it.decay != 0.0) pi = __dsub_rn(pi, __dmul_rn(it.decay, pi));
            p[i] = pi;
        }
    }
}

/* ================================================================== attention (composed) */

/* Releases a and returns b, for chains of differentiable ops. */
hr_tensor *then(hr_tensor *a, hr_tensor *b)
{
    hr_tensor_release(a);
    return b;
}

/* [B, L, H] -> [B, heads, L, dh] (a differentiable view/copy) */
hr_tensor *split_heads(hr_tensor *t, int64_t heads, bool transpose_last)
{
    int64_t B = t->size[0], L = t->size[1], H = t->size[2];
    int64_t size[4] = {B, L, heads, H / heads};
    hr_tensor *r = hr_ag_reshape(t, 4, size);
    if (!r) return nullptr;
    static const int perm_q[4] = {0, 2, 1, 3}, perm_k[4] = {0, 2, 3, 1};
    return then(r, hr_ag_permute(r, transpose_last ? perm_k : perm_q));
}

} // namespace
} // namespace hrc

using namespace hrc;

/* ------------------------------------------------------------------ entry points */

extern "C" hr_tensor *hr_cuda_layer_norm(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps)
{
    const hr_tensor *ts[3] = {x, weight, bias};
    if (same_device("layer_norm", 3, ts)) return NULL;
    cudaStream_t st = stream(dev_of(x));
    if (!st) return NULL;
    hr_dtype cdt = ln_compute_dtype(x->dtype);
    int64_t cols = x->size[x->ndim - 1];
    int64_t rows = cols ? hr_tensor_numel(x) / cols : 0;
    hr_tensor *xc = hr_contiguous(x);
    hr_tensor *wc = weight ? hr_contiguous(weight) : nullptr;
    hr_tensor *bc = bias ? hr_contiguous(bias) : nullptr;
    hr_tensor *y = empty_on(x, x->ndim, x->size, cdt);
    hr_tensor *mean = empty_on(x, 1, &rows, HR_F64);
    hr_tensor *rstd = empty_on(x, 1, &rows, HR_F64);
    hr_tensor *out = nullptr;
    if (xc && (!weight || wc) && (!bias || bc) && y && mean && rstd) {
        int rc = 0;
        if (rows > 0 && cols > 0) {
            double *mp = (double *)hr_tensor_data(mean), *rp = (double *)hr_tensor_data(rstd);
            const char *xp = (const char *)hr_tensor_data(xc);
            if (cdt == HR_F64)
                ln_forward_launch<double>(xp, x->dtype, wc ? (const double *)hr_tensor_data(wc) : nullptr,
                                          bc ? (const double *)hr_tensor_data(bc) : nullptr, (double *)hr_tensor_data(y), mp,
                                          rp, rows, cols, eps, st);
            else
                ln_forward_launch<float>(xp, x->dtype, wc ? (const float *)hr_tensor_data(wc) : nullptr,
                                         bc ? (const float *)hr_tensor_data(bc) : nullptr, (float *)hr_tensor_data(y), mp, rp,
                                         rows, cols, eps, st);
            rc = check_launch("layer_norm");
        }
        if (rc == 0) {
            out = y;
            y = nullptr;
            hr_tensor *inputs[3] = {x, weight, bias};
            if (hr_should_record(3, inputs)) {
                hr_node *node = hr_node_new("layer_norm", ln_backward, 3, inputs, sizeof(LnCtx));
                if (!node || hr_node_save(node, xc) < 0 || hr_node_save(node, mean) < 0 || hr_node_save(node, rstd) < 0 ||
                    (wc && hr_node_save(node, wc) < 0)) {
                    hr_node_release(node);
                    hr_tensor_release(out);
                    out = nullptr;
                } else {
                    LnCtx *c = (LnCtx *)node->ctx;
                    c->eps = eps;
                    c->rows = rows;
                    c->cols = cols;
                    c->has_weight = weight != nullptr;
                    c->has_bias = bias != nullptr;
                    hr_node_attach(node, out);
                }
            }
        }
    }
    hr_tensor_release(y);
    hr_tensor_release(xc);
    hr_tensor_release(wc);
    hr_tensor_release(bc);
    hr_tensor_release(mean);
    hr_tensor_release(rstd);
    return out;
}

extern "C" hr_tensor *hr_cuda_embedding(hr_tensor *weight, hr_tensor *indices, int64_t padding_idx)
{
    const hr_tensor *ts[2] = {weight, indices};
    if (same_device("embedding", 2, ts)) return NULL;
    cudaStream_t st = stream(dev_of(weight));
    if (!st) return NULL;
    int64_t vocab = weight->size[0], hidden = weight->size[1];
    hr_tensor *idx = hr_contiguous(indices);
    if (!idx) return NULL;
    if (check_indices(idx, vocab, "embedding", st)) {
        hr_tensor_release(idx);
        return NULL;
    }
    int64_t count = hr_tensor_numel(indices);
    int64_t size[HR_MAX_DIMS];
    memcpy(size, indices->size, sizeof(int64_t) * (size_t)indices->ndim);
    size[indices->ndim] = hidden;
    hr_tensor *out = empty_on(weight, indices->ndim + 1, size, weight->dtype);
    if (out && count * hidden > 0) {
        if (weight->dtype == HR_F64)
            emb_gather<double><<<grid_for(count * hidden), kThreads, 0, st>>>(
                (const double *)hr_tensor_data(weight), weight->stride[0], weight->stride[1], (const char *)hr_tensor_data(idx),
                idx->dtype, count, hidden, (double *)hr_tensor_data(out));
        else
            emb_gather<float><<<grid_for(count * hidden), kThreads, 0, st>>>(
                (const float *)hr_tensor_data(weight), weight->stride[0], weight->stride[1], (const char *)hr_tensor_data(idx),
                idx->dtype, count, hidden, (float *)hr_tensor_data(out));
        if (check_launch("embedding")) {
            hr_tensor_release(out);
            out = nullptr;
        }
    }
    hr_tensor *inputs[2] = {weight, indices};
    if (out && hr_should_record(1, inputs)) {
        hr_node *node = hr_node_new("embedding", emb_backward, 1, inputs, sizeof(EmbCtx));
        if (!node || hr_node_save(node, idx) < 0) {
            hr_node_release(node);
            hr_tensor_release(out);
            out = nullptr;
        } else {
            EmbCtx *c = (EmbCtx *)node->ctx;
            c->padding_idx = padding_idx;
            c->vocab = vocab;
            c->hidden = hidden;
            c->count = count;
            hr_node_attach(node, out);
        }
    }
    hr_tensor_release(idx);
    return out;
}

extern "C" hr_tensor *hr_cuda_cross_entropy(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                                            double label_smoothing, hr_reduction reduction)
{
    const hr_tensor *ts[2] = {logits, target};
    if (same_device("cross_entropy", 2, ts)) return NULL;
    cudaStream_t st = stream(dev_of(logits));
    if (!st) return NULL;
    int64_t N = logits->size[0], W = logits->size[1], C = classes > 0 ? classes : W;
    /* bf16/f16 logits (autocast's f32 loss of half logits): read as f32, loss in f32 */
    const hr_dtype out_dtype = logits->dtype == HR_F64 ? HR_F64 : HR_F32;
    hr_tensor *x = logits->stride[1] == 1 || logits->size[1] <= 1 ? hr_view_alias(logits) : hr_contiguous(logits);
    hr_tensor *t = hr_cast(target, HR_I64);
    /* the targets are validated (and counted) on the host, exactly as the CPU does */
    hr_tensor *th = t ? hr_tensor_empty(1, &N, HR_I64, hr_cpu()) : nullptr;
    hr_tensor *lse = empty_on(logits, 1, &N, HR_F64);
    hr_tensor *loss = empty_on(logits, 1, &N, HR_F64);
    hr_tensor *out = nullptr, *sum = nullptr;
    int64_t counted = 0;
    /* from the target itself: a target uploaded from the host is read from its host copy */
    if (!x || !t || !th || !lse || !loss || hr_copy_(th, target)) goto done;
    {
        const int64_t *tv = (const int64_t *)hr_tensor_data(th);
        for (int64_t r = 0; r < N; r++) {
            if (tv[r] == ignore_index) continue;
            if (tv[r] < 0 || tv[r] >= C) {
                hr_fail(HR_EINVAL, "cross_entropy: target %" PRId64 " at position %" PRId64 " is out of range for %" PRId64
                                   " classes (ignore_index is %" PRId64 ")",
                        tv[r], r + 1, C, ignore_index);
                goto done;
            }
            counted++;
        }
    }
    if (N > 0 && C > 0) {
        const char *xp = (const char *)hr_tensor_data(x);
        const int64_t *tp = (const int64_t *)hr_tensor_data(t);
        double *lp = (double *)hr_tensor_data(lse), *lossp = (double *)hr_tensor_data(loss);
        const bool vec = x->dtype != HR_F64 && rows_vec_ok(xp, x->stride[0], (int)hr_dtype_size(x->dtype));
        for_float_dtype(x->dtype, [&](auto xdt) {
            ce_forward<decltype(xdt)::value><<<rows_grid(N), kCeThreads, 0, st>>>(xp, x->stride[0], vec, tp, N, C, ignore_index,
                                                                                  label_smoothing, lp, lossp);
        });
        if (check_launch("cross_entropy")) goto done;
    } else if (N > 0 && (hr_cuda_memset0(loss->storage) || hr_cuda_memset0(lse->storage))) {
        goto done;
    }
    if (reduction == HR_REDUCE_NONE) {
        out = hr_cast(loss, out_dtype);
    } else {
        sum = hr_sum(loss, HR_DIM_ALL, false);
        if (!sum) goto done;
        if (reduction == HR_REDUCE_MEAN) {
            /* like PyTorch: 0/0 when every target is ignored */
            hr_tensor *m = hr_binary(HR_DIV, hr_operand_tensor(sum), hr_operand_float(counted ? (double)counted : 0.0), nullptr);
            hr_tensor_release(sum);
            sum = m;
            if (!sum) goto done;
        }
        out = hr_cast(sum, out_dtype);
    }
    if (!out) goto done;
    {
        hr_tensor *inputs[2] = {logits, target};
        if (hr_should_record(1, inputs)) {
            hr_node *node = hr_node_new("cross_entropy", ce_backward, 1, inputs, sizeof(CeCtx));
            if (!node || hr_node_save(node, x) < 0 || hr_node_save(node, t) < 0 || hr_node_save(node, lse) < 0) {
                hr_node_release(node);
                hr_tensor_release(out);
                out = nullptr;
                goto done;
            }
            CeCtx *c = (CeCtx *)node->ctx;
            c->rows = N;
            c->classes = C;
            c->width = W;
            c->ignore_index = ignore_index;
            c->counted = counted;
            c->smoothing = label_smoothing;
            c->reduction = reduction;
            hr_node_attach(node, out);
        }
    }
done:
    hr_tensor_release(x);
    hr_tensor_release(t);
    hr_tensor_release(th);
    hr_tensor_release(lse);
    hr_tensor_release(loss);
    hr_tensor_release(sum);
    return out;
}

extern "C" hr_tensor *hr_cuda_dropout(struct hr_generator *g, hr_tensor *x, double p)
{
    if (x->dtype == HR_F64) { /* the composed ops, keeping the noise for the backward */
        hr_tensor *noise = empty_on(x, x->ndim, x->size, x->dtype);
        if (!noise) return NULL;
        if (hr_random_dropout_mask_(g, noise, p)) {
            hr_tensor_release(noise);
            return NULL;
        }
        /* keep / (1 - p), rounded once */
        if (p < 1 && hr_binary_(HR_DIV, noise, hr_operand_float(1.0 - p), nullptr)) {
            hr_tensor_release(noise);
            return NULL;
        }
        hr_tensor *y = hr_binary(HR_MUL, hr_operand_tensor(x), hr_operand_tensor(noise), nullptr);
        if (y && hr_should_record(1, &x)) {
            hr_node *node = hr_node_new("dropout", dropout_backward, 1, &x, 0);
            if (!node || hr_node_save(node, noise) < 0) {
                hr_node_release(node);
                hr_tensor_release(y);
                y = nullptr;
            } else {
                hr_node_attach(node, y);
            }
        }
        hr_tensor_release(noise);
        return y;
    }
    /* f32/bf16/f16: one kernel, and no noise tensor: the backward draws the mask again */
    DropoutCtx c{};
    c.p = p;
    /* keep / (1 - p) as the divide kernel gives it: in f32, rounded once to the dtype */
    c.keep_value = p < 1 ? 1.0f / (float)(1.0 - p) : 0.0f;
    c.dtype = x->dtype;
    hr_tensor *xc = hr_contiguous(x);
    hr_tensor *y = xc ? empty_on(x, x->ndim, x->size, x->dtype) : nullptr;
    cudaStream_t st = y ? stream(dev_of(x)) : nullptr;
    int64_t n = hr_tensor_numel(x);
    int rc = st ? 0 : -1;
    if (rc == 0) {
        uint32_t key[2];
        hr_generator_key(g, key);
        c.k0 = key[0], c.k1 = key[1];
        c.block0 = hr_generator_reserve(g, (uint64_t)((n + 3) / 4));
        if (n > 0) {
            rc = launch_dropout((const char *)hr_tensor_data(xc), (char *)hr_tensor_data(y), nullptr, x->dtype, n, c, st);
            if (rc) g->offset = c.block0;
        }
    }
    hr_tensor_release(xc);
    if (rc == 0 && hr_should_record(1, &x)) {
        hr_node *node = hr_node_new("dropout", dropout_redraw_backward, 1, &x, sizeof(DropoutCtx));
        if (!node) {
            rc = -1;
        } else {
            *(DropoutCtx *)node->ctx = c;
            hr_node_attach(node, y);
        }
    }
    if (rc) {
        hr_tensor_release(y);
        return NULL;
    }
    return y;
}

extern "C" hr_tensor *hr_cuda_dropout_add_layer_norm(struct hr_generator *g, hr_tensor *x, hr_tensor *residual,
                                                     hr_tensor *weight, hr_tensor *bias, double eps, double p, bool dropped)
{
    static const char op[] = "dropout_add_layer_norm";
    const hr_tensor *ts[4] = {x, residual, weight, bias};
    if (same_device(op, 4, ts)) return NULL;
    cudaStream_t st = stream(dev_of(x));
    if (!st) return NULL;
    const int64_t cols = x->size[x->ndim - 1], n = hr_tensor_numel(x);
    const int64_t rows = cols ? n / cols : 0;
    hr_tensor *xc = hr_contiguous(x), *rc = hr_contiguous(residual);
    hr_tensor *wc = weight ? hr_contiguous(weight) : nullptr, *bc = bias ? hr_contiguous(bias) : nullptr;
    hr_tensor *s = empty_on(x, x->ndim, x->size, HR_F32), *y = empty_on(x, x->ndim, x->size, HR_F32);
    hr_tensor *mean = empty_on(x, 1, &rows, HR_F64), *rstd = empty_on(x, 1, &rows, HR_F64);
    hr_tensor *out = nullptr;
    AddLnCtx c{};
    c.ln.eps = eps;
    c.ln.rows = rows;
    c.ln.cols = cols;
    c.ln.has_weight = weight != nullptr;
    c.ln.has_bias = bias != nullptr;
    c.dropped = dropped;
    c.drop.p = dropped ? p : 0.0;
    c.drop.keep_value = dropped ? 1.0f / (float)(1.0 - p) : 1.0f; /* as hr_cuda_dropout computes it */
    c.drop.dtype = x->dtype;
    if (xc && rc && (!weight || wc) && (!bias || bc) && s && y && mean && rstd) {
        if (dropped) {
            uint32_t key[2];
            hr_generator_key(g, key);
            c.drop.k0 = key[0], c.drop.k1 = key[1];
            c.drop.block0 = hr_generator_reserve(g, (uint64_t)((n + 3) / 4));
        }
        int status = 0;
        if (n > 0) {
            const char *xp = (const char *)hr_tensor_data(xc);
            const float *rp = (const float *)hr_tensor_data(rc);
            float *sp = (float *)hr_tensor_data(s);
            const uintptr_t align = x->dtype == HR_F32 ? 16 : 8;
            const DropoutCtx &d = c.drop;
            if ((uintptr_t)xp % align == 0 && (((uintptr_t)rp | (uintptr_t)sp) % 16) == 0)
                dropout_add_vec4<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(xp, x->dtype, rp, sp, n, d.k0, d.k1, d.block0, d.p,
                                                                            d.keep_value, dropped);
            else
                dropout_add_kernel<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(xp, x->dtype, rp, sp, n, d.k0, d.k1, d.block0,
                                                                              d.p, d.keep_value, dropped);
            if (rows > 0 && cols > 0)
                ln_forward_launch<float>((const char *)sp, HR_F32, wc ? (const float *)hr_tensor_data(wc) : nullptr,
                                         bc ? (const float *)hr_tensor_data(bc) : nullptr, (float *)hr_tensor_data(y),
                                         (double *)hr_tensor_data(mean), (double *)hr_tensor_data(rstd), rows, cols, eps, st);
            status = check_launch(op);
            if (status && dropped) g->offset = c.drop.block0; /* nothing drawn: the generator as it was */
        }
        hr_tensor *inputs[4] = {x, residual, weight, bias};
        if (status == 0) {
            out = y;
            y = nullptr;
            if (hr_should_record(4, inputs)) {
                hr_node *node = hr_node_new(op, addln_backward, 4, inputs, sizeof(AddLnCtx));
                if (!node || hr_node_save(node, s) < 0 || hr_node_save(node, mean) < 0 || hr_node_save(node, rstd) < 0 ||
                    (wc && hr_node_save(node, wc) < 0)) {
                    hr_node_release(node);
                    hr_tensor_release(out);
                    out = nullptr;
                } else {
                    *(AddLnCtx *)node->ctx = c;
                    hr_node_attach(node, out);
                }
            }
        }
    }
    hr_tensor_release(y);
    hr_tensor_release(s);
    hr_tensor_release(xc);
    hr_tensor_release(rc);
    hr_tensor_release(wc);
    hr_tensor_release(bc);
    hr_tensor_release(mean);
    hr_tensor_release(rstd);
    return out;
}

/* Sequences up to 64 long: one kernel per pass (cuda/attention.cu). Longer ones, f64 and wide
 * heads: per-head GEMMs through the differentiable matmul, an additive mask, softmax and
 * dropout on the probabilities [B, heads, Lq, Lk] (the CPU's element order, so the same seed drops
 * the same probabilities). mask is already in q's dtype and contiguous ([B, Lk] or [B, Lq, Lk]). */
extern "C" hr_tensor *hr_cuda_attention(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads,
                                        double dropout_p, bool training, struct hr_generator *gen)
{
    const hr_tensor *ts[4] = {q, k, v, mask};
    if (same_device("attention", 4, ts)) return NULL;
    if (attention_fused_fits(q, k, heads)) return attention_fused(q, k, v, mask, heads, dropout_p, training, gen);
    int64_t B = q->size[0], Lq = q->size[1], Lk = k->size[1], H = q->size[2], dh = H / heads;
    hr_tensor *qh = split_heads(q, heads, false);
    hr_tensor *kt = qh ? split_heads(k, heads, true) : nullptr;
    hr_tensor *vh = kt ? split_heads(v, heads, false) : nullptr;
    hr_tensor *s = vh ? hr_ag_matmul(qh, kt) : nullptr;
    if (s) s = then(s, hr_ag_binary(HR_MUL, hr_operand_tensor(s), hr_operand_float(1.0 / sqrt((double)dh)), nullptr));
    if (s && mask) {
        int64_t msize[4] = {B, 1, mask->ndim == 3 ? Lq : 1, Lk};
        hr_tensor *mv = hr_reshape(mask, 4, msize);
        s = mv ? then(s, hr_ag_binary(HR_ADD, hr_operand_tensor(s), hr_operand_tensor(mv), nullptr)) : then(s, nullptr);
        hr_tensor_release(mv);
    }
    hr_tensor *pr = s ? hr_ag_softmax(s, 3) : nullptr;
    hr_tensor_release(s);
    if (pr && training && dropout_p > 0) pr = then(pr, hr_dropout(gen, pr, dropout_p, true));
    hr_tensor *o = pr ? hr_ag_matmul(pr, vh) : nullptr;
    static const int back[4] = {0, 2, 1, 3};
    if (o) o = then(o, hr_ag_permute(o, back));
    int64_t osize[3] = {B, Lq, H};
    if (o) o = then(o, hr_ag_reshape(o, 3, osize));
    hr_tensor_release(pr);
    hr_tensor_release(qh);
    hr_tensor_release(kt);
    hr_tensor_release(vh);
    return o;
}

/* qkv [B, L, 3H]: q, k and v side by side (one projection of the three). Sequences up to 64: the
 * one-kernel attention reads the three column blocks in place and writes their gradients into one
 * [B, L, 3H] tensor. Longer ones: the composed path on the three column views. */
extern "C" hr_tensor *hr_cuda_attention_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p,
                                               bool training, struct hr_generator *gen)
{
    const hr_tensor *ts[2] = {qkv, mask};
    if (same_device("attention_packed", 2, ts)) return NULL;
    int64_t H = qkv->size[2] / 3;
    if (fused_shape_fits(qkv->dtype, qkv->size[0], qkv->size[1], qkv->size[1], H, heads, dev_of(qkv)))
        return attention_fused_packed(qkv, mask, heads, dropout_p, training, gen);
    hr_tensor *q = hr_ag_narrow(qkv, 2, 0, H);
    hr_tensor *k = q ? hr_ag_narrow(qkv, 2, H, H) : nullptr;
    hr_tensor *v = k ? hr_ag_narrow(qkv, 2, 2 * H, H) : nullptr;
    hr_tensor *out = v ? hr_cuda_attention(q, k, v, mask, heads, dropout_p, training, gen) : nullptr;
    hr_tensor_release(q);
    hr_tensor_release(k);
    hr_tensor_release(v);
    return out;
}

extern "C" int hr_cuda_adamw_step(hr_adamw_item *items, int n, double beta1, double beta2, double eps)
{
    if (n <= 0) return 0;
    int dev = dev_of(items[0].param);
    for (int i = 0; i < n; i++) {
        const hr_tensor *ts[5] = {items[0].param, items[i].param, items[i].grad, items[i].exp_avg, items[i].exp_avg_sq};
        if (same_device("adamw", 5, ts)) return -1;
    }
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    int rc = 0;
    /* one launch per slice of at most 65535 parameters (the grid's y dimension) */
    for (int first = 0; first < n && rc == 0; first += 65535) {
        int cnt = n - first < 65535 ? n - first : 65535;
        AdamItem *host = (AdamItem *)malloc(sizeof(AdamItem) * (size_t)cnt);
        if (!host) return hr_fail(HR_ENOMEM, "adamw: out of memory");
        int64_t maxn = 1;
        for (int i = 0; i < cnt; i++) {
            const hr_adamw_item *it = &items[first + i];
            host[i].p = hr_tensor_data(it->param);
            host[i].m = hr_tensor_data(it->exp_avg);
            host[i].v = hr_tensor_data(it->exp_avg_sq);
            host[i].g = hr_tensor_data(it->grad);
            host[i].n = hr_tensor_numel(it->param);
            host[i].pdt = it->param->dtype;
            host[i].gdt = it->grad->dtype;
            host[i].step = it->step_size;
            host[i].decay = it->decay;
            host[i].gscale = it->grad_scale;
            host[i].rule = (int)it->rule;
            host[i].bias2_sqrt = it->bias2_sqrt;
            if (host[i].n > maxn) maxn = host[i].n;
        }
        AdamItem *dev_items = (AdamItem *)hr_cuda_malloc(dev, sizeof(AdamItem) * (size_t)cnt);
        if (!dev_items) rc = -1;
        else {
            /* staged: the host array is freed below without waiting for the device */
            rc = stage_to_device(dev, dev_items, host, sizeof(AdamItem) * (size_t)cnt, "adamw");
            if (rc == 1) {
                rc = check(cudaMemcpyAsync(dev_items, host, sizeof(AdamItem) * (size_t)cnt, cudaMemcpyHostToDevice, st),
                           "adamw", "cudaMemcpyAsync");
                if (!rc) rc = sync(dev, "adamw");
            }
            if (!rc) {
                unsigned gx = grid_for(maxn);
                if (gx > 1024) gx = 1024;
                adamw_kernel<<<dim3(gx, (unsigned)cnt), kThreads, 0, st>>>(dev_items, beta1, beta2, eps);
                rc = check_launch("adamw");
            }
            hr_cuda_free(dev, dev_items, sizeof(AdamItem) * (size_t)cnt);
        }
        free(host);
    }
    for (int i = 0; i < n && rc == 0; i++) {
        hr_tensor_bump_version(items[i].param);
        hr_tensor_bump_version(items[i].exp_avg);
        hr_tensor_bump_version(items[i].exp_avg_sq);
    }
    return rc;
}

extern "C" int hr_cuda_bernoulli(hr_tensor *t, const uint32_t key[2], uint64_t block0, double p, bool invert)
{
    uint32_t k0 = key[0], k1 = key[1];
    int dt = t->dtype, el = (int)hr_dtype_size(t->dtype);
    return fill_contiguous(t, invert ? "dropout_mask" : "bernoulli_", [&](char *out, int64_t n, cudaStream_t st) {
        bernoulli_kernel<<<grid_for((n + 3) / 4), kThreads, 0, st>>>(out, dt, el, n, k0, k1, block0, p, invert);
    });
}

extern "C" int hr_cuda_uniform(hr_tensor *t, const uint32_t key[2], uint64_t block0, double a, double b)
{
    uint32_t k0 = key[0], k1 = key[1];
    int dt = t->dtype, el = (int)hr_dtype_size(t->dtype);
    int per = dt == HR_F64 ? 2 : 4;
    return fill_contiguous(t, "uniform_", [&](char *out, int64_t n, cudaStream_t st) {
        uniform_kernel<<<grid_for((n + per - 1) / per), kThreads, 0, st>>>(out, dt, el, n, k0, k1, block0, a, b);
    });
}
