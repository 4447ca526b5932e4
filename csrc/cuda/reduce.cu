/* cuda/reduce.cu — sum/mean/max/min along one dimension or over everything, softmax and
 * log_softmax, the all-finite check of the loss scaler and the sum of squares of clip_grad_norm.
 *
 * The reduced dimension is moved last and the tensor copied contiguous once (a strided gather on
 * the device), so every kernel reduces contiguous rows: one block per row, a per-thread partial,
 * then a tree in shared memory. Float sums accumulate in double (as the CPU does) and are rounded
 * once into the output dtype; integer sums wrap in int64. max/min propagate NaN and return the
 * first index of the extreme value (the first NaN when there is one), as the CPU. Float sums of a
 * few long rows are split over many blocks, and float sums over a dimension that is not the last
 * read the columns in place (partial sums added in a fixed order in both). */
#include <cmath>
#include <cstdlib>

#include "cuda/common.cuh"

namespace hrc {
namespace {

constexpr int kRowThreads = 256;

/* Rows of the contiguous [rows, n] source, each reduced by one block (grid-stride over rows). */
template <bool INT>
__global__ void sum_rows(const char *src, int dt, int el, int64_t rows, int64_t n, bool mean, char *out, int odt, int oel)
{
    __shared__ double dsum[kRowThreads];
    __shared__ int64_t isum[kRowThreads];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const char *row = src + r * n * el;
        double d = 0;
        int64_t s = 0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            if (INT) s = (int64_t)((uint64_t)s + (uint64_t)load_i64(row + i * el, dt));
            else d += load_f64(row + i * el, dt);
        }
        dsum[threadIdx.x] = d;
        isum[threadIdx.x] = s;
        __syncthreads();
        for (int w = blockDim.x / 2; w > 0; w /= 2) {
            if ((int)threadIdx.x < w) {
                dsum[threadIdx.x] += dsum[threadIdx.x + w];
                isum[threadIdx.x] = (int64_t)((uint64_t)isum[threadIdx.x] + (uint64_t)isum[threadIdx.x + w]);
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            if (INT) store_i64(out + r * oel, odt, isum[0]);
            else store_f64(out + r * oel, odt, mean ? dsum[0] / (double)n : dsum[0]);
        }
        __syncthreads();
    }
}

/* Whether candidate (v, i) beats the current best (b, j) for max (is_max) or min; NaN wins, ties
 * and NaN against NaN keep the lower index. */
template <typename T> __device__ __forceinline__ bool better(T v, int64_t i, T b, int64_t j, bool is_max)
{
    bool vn = v != v, bn = b != b;
    if (vn || bn) return vn && (!bn || i < j);
    if (v == b) return i < j;
    return is_max ? v > b : v < b;
}

template <typename T, bool INT>
__global__ void extreme_rows(const char *src, int dt, int el, int64_t rows, int64_t n, bool is_max, char *vout, int odt,
                             int oel, int64_t *iout)
{
    __shared__ T bv[kRowThreads];
    __shared__ int64_t bi[kRowThreads];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const char *row = src + r * n * el;
        T best = 0;
        int64_t bidx = -1;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            T v = INT ? (T)load_i64(row + i * el, dt) : (T)load_f64(row + i * el, dt);
            if (bidx < 0 || better<T>(v, i, best, bidx, is_max)) {
                best = v;
                bidx = i;
            }
        }
        bv[threadIdx.x] = best;
        bi[threadIdx.x] = bidx;
        __syncthreads();
        for (int w = blockDim.x / 2; w > 0; w /= 2) {
            if ((int)threadIdx.x < w) {
                int64_t j = bi[threadIdx.x + w];
                if (j >= 0 && (bi[threadIdx.x] < 0 || better<T>(bv[threadIdx.x + w], j, bv[threadIdx.x], bi[threadIdx.x], is_max))) {
                    bv[threadIdx.x] = bv[threadIdx.x + w];
                    bi[threadIdx.x] = j;
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            if (vout) {
                if (INT) store_i64(vout + r * oel, odt, (int64_t)bv[0]);
                else store_f64(vout + r * oel, odt, (double)bv[0]);
            }
            if (iout) iout[r] = bi[0];
        }
        __syncthreads();
    }
}

/* softmax / log_softmax of contiguous rows, in double: max (NaN propagates), sum of exp, write. */
__global__ void softmax_rows(const char *src, int dt, int el, int64_t rows, int64_t n, bool log_out, char *out)
{
    __shared__ double red[kRowThreads];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const char *row = src + r * n * el;
        char *orow = out + r * n * el;
        double mx = -INFINITY;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            double v = load_f64(row + i * el, dt);
            if (v > mx || v != v) mx = (mx != mx) ? mx : v;
        }
        red[threadIdx.x] = mx;
        __syncthreads();
        for (int w = blockDim.x / 2; w > 0; w /= 2) {
            if ((int)threadIdx.x < w) {
                double o = red[threadIdx.x + w], c = red[threadIdx.x];
                if (o != o || (c == c && o > c)) red[threadIdx.x] = o;
            }
            __syncthreads();
        }
        mx = red[0];
        __syncthreads();
        double s = 0;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += exp(load_f64(row + i * el, dt) - mx);
        red[threadIdx.x] = s;
        __syncthreads();
        for (int w = blockDim.x / 2; w > 0; w /= 2) {
            if ((int)threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
            __syncthreads();
        }
        s = red[0];
        __syncthreads();
        double ls = log(s), inv = 1.0 / s;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            double v = load_f64(row + i * el, dt) - mx;
            store_f64(orow + i * el, dt, log_out ? v - ls : exp(v) * inv);
        }
        __syncthreads();
    }
}

__global__ void finite_kernel(Geo g, const char *p, int dt, int el, int64_t n, int *flag)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[1];
        geo_offsets<1>(g, i, off);
        double v = load_f64(p + off[0] * el, dt);
        if (!isfinite(v)) *flag = 0;
    }
}

/* Rows of at most kShortRow elements go one warp each (a block of 256 threads would leave most of
 * its threads idle on the 33-token rows of HERO's attention): kWarpsPerBlock rows per block, the
 * same double arithmetic and NaN rules as the block kernels, reductions by warp shuffles. */
constexpr int64_t kShortRow = 1024;
constexpr int kWarpsPerBlock = kRowThreads / 32;



__global__ void sum_rows_warp(const char *src, int dt, int el, int64_t rows, int64_t n, bool mean, char *out, int odt,
                              int oel)
{
    const int lane = threadIdx.x & 31;
    const int64_t step = (int64_t)gridDim.x * kWarpsPerBlock;
    for (int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5); r < rows; r += step) {
        const char *row = src + r * n * el;
        double d = 0;
        for (int64_t i = lane; i < n; i += 32) d += load_f64(row + i * el, dt);
        d = warp_sum(d);
        if (lane == 0) store_f64(out + r * oel, odt, mean ? d / (double)n : d);
    }
}

__device__ __forceinline__ float exp_of(float v) { return expf(v); }
__device__ __forceinline__ double exp_of(double v) { return exp(v); }

/* max where NaN wins, in the compute type T: every lane ends with the same value */
template <typename T> __device__ __forceinline__ T warp_max_nan_of(T v)
{
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        if (w != w || (v == v && w > v)) v = w;
    }
    return v;
}

/* One warp per row. T is the compute type of the max and the exponentials: double for f64 rows,
 * float for f32/bf16/f16 ones (the CPU's f32 rows use a float exp too; exp in double was most of
 * the time on the short rows of attention); the sum of the exponentials is always in double. */
template <typename T>
__global__ void softmax_rows_warp(const char *src, int dt, int el, int64_t rows, int64_t n, bool log_out, char *out)
{
    const int lane = threadIdx.x & 31;
    const int64_t step = (int64_t)gridDim.x * kWarpsPerBlock;
    for (int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5); r < rows; r += step) {
        const char *row = src + r * n * el;
        char *orow = out + r * n * el;
        T mx = -INFINITY;
        for (int64_t i = lane; i < n; i += 32) {
            T v = load<T>(row + i * el, dt);
            if (v > mx || v != v) mx = (mx != mx) ? mx : v;
        }
        mx = warp_max_nan_of<T>(mx);
        double s = 0;
        for (int64_t i = lane; i < n; i += 32) s += (double)exp_of(load<T>(row + i * el, dt) - mx);
        s = warp_sum(s);
        const T ls = (T)log(s), inv = (T)(1.0 / s);
        for (int64_t i = lane; i < n; i += 32) {
            T v = load<T>(row + i * el, dt) - mx;
            store(orow + i * el, dt, log_out ? v - ls : exp_of(v) * inv);
        }
    }
}

/* Blocks of kWarpsPerBlock warps covering rows (capped: the kernels loop over the rest). */
unsigned warp_row_grid(int64_t rows)
{
    int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks < 1) return 1;
    return (unsigned)(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

unsigned row_grid(int64_t rows)
{
    if (rows < 1) return 1;
    return (unsigned)(rows < 65535 * 16 ? rows : 65535 * 16);
}

/* Rows of at most 32 * V elements (the 33-score rows of HERO's attention, 60-frame rows of the
 * temporal transformer): each lane keeps its V values and their exponentials in registers, so a row
 * is read once and each exponential computed once, and only the scale the output needs (1/sum or
 * log sum) is worked out. Every value goes through the operations of softmax_rows_warp in the same
 * order, so both give the same bits. */
template <typename T, int V>
__global__ void softmax_rows_regs(const char *src, int dt, int el, int64_t rows, int64_t n, bool log_out, char *out)
{
    const int lane = threadIdx.x & 31;
    const int64_t step = (int64_t)gridDim.x * kWarpsPerBlock;
    for (int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5); r < rows; r += step) {
        const char *row = src + r * n * el;
        char *orow = out + r * n * el;
        T v[V], e[V];
        T mx = -INFINITY;
#pragma unroll
        for (int k = 0; k < V; k++) {
            const int64_t i = lane + 32 * k;
            v[k] = i < n ? load<T>(row + i * el, dt) : (T)0;
            if (i < n && (v[k] > mx || v[k] != v[k])) mx = (mx != mx) ? mx : v[k];
        }
        mx = warp_max_nan_of<T>(mx);
        double s = 0;
#pragma unroll
        for (int k = 0; k < V; k++) {
            v[k] -= mx;
            e[k] = exp_of(v[k]);
            if (lane + 32 * k < n) s += (double)e[k];
        }
        s = warp_sum(s);
        if (log_out) {
            const T ls = (T)log(s);
#pragma unroll
            for (int k = 0; k < V; k++)
                if (lane + 32 * k < n) store(orow + (lane + 32 * k) * (int64_t)el, dt, v[k] - ls);
        } else {
            const T inv = (T)(1.0 / s);
#pragma unroll
            for (int k = 0; k < V; k++)
                if (lane + 32 * k < n) store(orow + (lane + 32 * k) * (int64_t)el, dt, e[k] * inv);
        }
    }
}

/* softmax_rows_regs for rows of at most 128 elements, softmax_rows_warp for longer ones. */
template <typename T>
void launch_softmax_short(const char *sp, int dt, int el, int64_t rows, int64_t n, bool log_out, char *dp,
                          cudaStream_t st)
{
    const unsigned grid = warp_row_grid(rows);
    if (n <= 32) softmax_rows_regs<T, 1><<<grid, kRowThreads, 0, st>>>(sp, dt, el, rows, n, log_out, dp);
    else if (n <= 64) softmax_rows_regs<T, 2><<<grid, kRowThreads, 0, st>>>(sp, dt, el, rows, n, log_out, dp);
    else if (n <= 128) softmax_rows_regs<T, 4><<<grid, kRowThreads, 0, st>>>(sp, dt, el, rows, n, log_out, dp);
    else softmax_rows_warp<T><<<grid, kRowThreads, 0, st>>>(sp, dt, el, rows, n, log_out, dp);
}

/* t with dimension d moved last, contiguous (a new reference). */
hr_tensor *rows_along(hr_tensor *t, int d)
{
    if (t->ndim == 0 || d == t->ndim - 1) return hr_contiguous(t);
    int perm[HR_MAX_DIMS], np = 0;
    for (int i = 0; i < t->ndim; i++)
        if (i != d) perm[np++] = i;
    perm[np] = d;
    hr_tensor *pv = hr_view_permute(t, perm);
    if (!pv) return nullptr;
    hr_tensor *c = hr_contiguous(pv);
    hr_tensor_release(pv);
    return c;
}

/* Few long rows (a sum over everything is one row): a block per row would leave the GPU idle, so
 * each row is cut into chunks of kChunk elements, one block each, writing double partial sums that
 * one block per row then adds in a fixed order (deterministic, like the one-pass kernels). */
constexpr int64_t kChunk = 8192;
constexpr int64_t kSplitMaxRows = 64;

__global__ void sum_row_chunks(const char *src, int dt, int el, int64_t n, double *partial)
{
    __shared__ double sh[32];
    const char *row = src + (int64_t)blockIdx.y * n * el;
    const int64_t begin = (int64_t)blockIdx.x * kChunk;
    const int64_t end = begin + kChunk < n ? begin + kChunk : n;
    double s = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) s += load_f64(row + i * el, dt);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[(int64_t)blockIdx.y * gridDim.x + blockIdx.x] = s;
}

__global__ void finish_row_sums(const double *partial, int64_t chunks, double divisor, char *out, int odt, int oel)
{
    __shared__ double sh[32];
    const double *p = partial + (int64_t)blockIdx.x * chunks;
    double s = 0;
    for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x) s += p[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) store_f64(out + (int64_t)blockIdx.x * oel, odt, s / divisor);
}

/* Sums along a dimension that is not the last, read in place (the bias gradient of a linear layer
 * sums [tokens, features] over the tokens): the contiguous source is [outer, n, inner]; a block
 * takes 32 neighbouring columns (coalesced reads) and kColChunk rows of one outer index, its 8
 * warps each a stride of rows, and writes a double partial per column; a second kernel adds the
 * row chunks of each column in a fixed order. No transposing copy, deterministic. */
constexpr int kColWidth = 32, kColGroups = 8;
constexpr int64_t kColChunk = 256;

__global__ void column_partials(const char *src, int dt, int el, int64_t n, int64_t inner, int64_t chunks,
                                double *partial)
{
    __shared__ double sh[kColGroups][kColWidth];
    const int lane = threadIdx.x % kColWidth, group = threadIdx.x / kColWidth;
    const int64_t col = (int64_t)blockIdx.x * kColWidth + lane, chunk = blockIdx.y, o = blockIdx.z;
    const int64_t r0 = chunk * kColChunk, r1 = r0 + kColChunk < n ? r0 + kColChunk : n;
    double s = 0;
    if (col < inner) {
        const char *base = src + (o * n * inner + col) * el;
        for (int64_t r = r0 + group; r < r1; r += kColGroups) s += load_f64(base + r * inner * el, dt);
    }
    sh[group][lane] = s;
    __syncthreads();
    if (group == 0 && col < inner) {
        double t = 0;
        for (int g = 0; g < kColGroups; g++) t += sh[g][lane];
        partial[(o * chunks + chunk) * inner + col] = t;
    }
}

/* column_partials where every row of the source is 16-byte aligned (f32/bf16/f16): a lane takes PER
 * neighbouring columns (4 f32 or 8 bf16/f16, one 16-byte load per row) instead of one, so a block
 * covers 32 * PER columns. Each column is summed over the same rows in the same order as
 * column_partials sums it (a warp per stride of rows, then the warps in turn), so the partials
 * are the same bit for bit; the bias gradients of HERO's linear layers ([21120, 3072] bf16 at 32
 * videos) read 2-byte elements one at a time before. */
template <int PER>
__global__ void column_partials_vec(const char *src, int dt, int64_t n, int64_t inner, int64_t chunks, double *partial)
{
    __shared__ double sh[kColGroups][kColWidth * PER];
    const int lane = threadIdx.x % kColWidth, group = threadIdx.x / kColWidth;
    const int64_t span0 = (int64_t)blockIdx.x * kColWidth * PER, col0 = span0 + (int64_t)lane * PER;
    const int64_t chunk = blockIdx.y, o = blockIdx.z;
    const int64_t r0 = chunk * kColChunk, r1 = r0 + kColChunk < n ? r0 + kColChunk : n;
    const int el = PER == 4 ? 4 : 2;
    double s[PER];
#pragma unroll
    for (int k = 0; k < PER; k++) s[k] = 0;
    if (col0 < inner) {
        const char *base = src + (o * n * inner + col0) * el;
#pragma unroll 4
        for (int64_t r = r0 + group; r < r1; r += kColGroups) {
            float v[8];
            if (PER == 4) {
                float4 a = *(const float4 *)(base + r * inner * el);
                v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
            } else {
                load8(base + r * inner * el, dt, 0, v);
            }
#pragma unroll
            for (int k = 0; k < PER; k++) s[k] += (double)v[k];
        }
    }
#pragma unroll
    for (int k = 0; k < PER; k++) sh[group][lane * PER + k] = s[k];
    __syncthreads();
    for (int c = threadIdx.x; c < kColWidth * PER; c += blockDim.x) {
        const int64_t col = span0 + c;
        if (col >= inner) continue;
        double t = 0;
        for (int g = 0; g < kColGroups; g++) t += sh[g][c];
        partial[(o * chunks + chunk) * inner + col] = t;
    }
}

__global__ void column_finish(const double *partial, int64_t chunks, int64_t inner, int64_t total, double divisor,
                              char *out, int odt, int oel)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t o = i / inner, col = i % inner;
        const double *p = partial + o * chunks * inner + col;
        double s = 0;
        for (int64_t c = 0; c < chunks; c++) s += p[c * inner];
        store_f64(out + i * oel, odt, s / divisor);
    }
}

/* sum/mean of the contiguous float t over dimension d (not the last) into values; 1 when the shape
 * does not suit the column kernels (the caller transposes instead). */
int sum_columns(const hr_tensor *t, int d, bool mean, hr_tensor *values, cudaStream_t st)
{
    int64_t outer = 1, inner = 1, n = t->size[d];
    for (int i = 0; i < d; i++) outer *= t->size[i];
    for (int i = d + 1; i < t->ndim; i++) inner *= t->size[i];
    int64_t chunks = (n + kColChunk - 1) / kColChunk;
    if (inner < 16 || n == 0 || outer > 65535 || chunks > 65535) return 1;
    int64_t size = outer * chunks * inner;
    hr_tensor *part = empty_on(t, 1, &size, HR_F64);
    if (!part) return -1;
    double *pp = (double *)hr_tensor_data(part);
    const char *src = (const char *)hr_tensor_data(t);
    /* lanes of PER columns where every row is 16-byte aligned */
    const int per = t->dtype == HR_F32 ? 4 : t->dtype == HR_BF16 || t->dtype == HR_F16 ? 8 : 0;
    if (per && ((uintptr_t)src & 15u) == 0 && inner % per == 0) {
        dim3 grid((unsigned)((inner + kColWidth * per - 1) / (kColWidth * per)), (unsigned)chunks, (unsigned)outer);
        if (per == 4) column_partials_vec<4><<<grid, kColWidth * kColGroups, 0, st>>>(src, t->dtype, n, inner, chunks, pp);
        else column_partials_vec<8><<<grid, kColWidth * kColGroups, 0, st>>>(src, t->dtype, n, inner, chunks, pp);
    } else {
        dim3 grid((unsigned)((inner + kColWidth - 1) / kColWidth), (unsigned)chunks, (unsigned)outer);
        column_partials<<<grid, kColWidth * kColGroups, 0, st>>>(src, t->dtype, (int)hr_dtype_size(t->dtype), n, inner,
                                                                 chunks, pp);
    }
    column_finish<<<grid_for(outer * inner), kThreads, 0, st>>>(pp, chunks, inner, outer * inner, mean ? (double)n : 1.0,
                                                                (char *)hr_tensor_data(values), values->dtype,
                                                                (int)hr_dtype_size(values->dtype));
    int rc = check_launch(mean ? "mean" : "sum");
    hr_tensor_release(part);
    return rc;
}

/* Sums of squares for clip_grad_norm: every tensor is cut into chunks of kChunk elements,
 * one block each, whose double partial sums land at fixed places of one buffer; one block then
 * adds the partials in a fixed order. Deterministic, one launch per tensor, one number read back. */
__global__ void square_sum_chunks(Geo g, const char *p, int dt, int el, int64_t n, double *partial)
{
    __shared__ double sh[32];
    const int64_t begin = (int64_t)blockIdx.x * kChunk;
    const int64_t end = begin + kChunk < n ? begin + kChunk : n;
    double s = 0;
    if (g.ndim == 1 && g.stride[0][0] == 1 && dt == HR_F32) {
        const float *f = (const float *)p;
        for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
            double v = f[i];
            s += v * v;
        }
    } else {
        for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
            int64_t off[1];
            geo_offsets<1>(g, i, off);
            double v = load_f64(p + off[0] * el, dt);
            s += v * v;
        }
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

/* The contiguous tensors of a sum of squares in one launch (a model's gradients are a hundred or
 * more tensors, most of them small: one launch each cost more than their arithmetic). Block b takes
 * chunk b - first_block of the last item whose first_block is at most b, sums it exactly as
 * square_sum_chunks does (the same elements per thread, in the same order) and writes its partial
 * at the item's place in the buffer. */
struct SquareItem {
    const char *p;
    int64_t n, first_block, out;
    int dt;
};

__global__ void square_sum_items(const SquareItem *items, int nitems, double *partial)
{
    __shared__ double sh[32];
    const int64_t b = blockIdx.x;
    int lo = 0, hi = nitems - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (items[mid].first_block <= b) lo = mid;
        else hi = mid - 1;
    }
    const SquareItem it = items[lo];
    const int64_t chunk = b - it.first_block, begin = chunk * kChunk;
    const int64_t end = begin + kChunk < it.n ? begin + kChunk : it.n;
    double s = 0;
    if (it.dt == HR_F32) {
        const float *f = (const float *)it.p;
#pragma unroll 4
        for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
            double v = f[i];
            s += v * v;
        }
    } else {
        const int el = dtype_size(it.dt);
        for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
            double v = load_f64(it.p + i * el, it.dt);
            s += v * v;
        }
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[it.out + chunk] = s;
}

__global__ void sum_in_order(const double *partial, int64_t n, double *out)
{
    __shared__ double sh[32];
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) *out = s;
}

/* sum/mean of the rows of the contiguous float [rows, n] src into values, through partial sums. */
int sum_split_rows(const hr_tensor *src, int64_t rows, int64_t n, bool mean, hr_tensor *values, cudaStream_t st)
{
    int64_t chunks = (n + kChunk - 1) / kChunk, size = rows * chunks;
    hr_tensor *part = empty_on(src, 1, &size, HR_F64);
    if (!part) return -1;
    double *pp = (double *)hr_tensor_data(part);
    sum_row_chunks<<<dim3((unsigned)chunks, (unsigned)rows), kRowThreads, 0, st>>>(
        (const char *)hr_tensor_data(src), src->dtype, (int)hr_dtype_size(src->dtype), n, pp);
    finish_row_sums<<<(unsigned)rows, kRowThreads, 0, st>>>(pp, chunks, mean ? (double)n : 1.0,
                                                            (char *)hr_tensor_data(values), values->dtype,
                                                            (int)hr_dtype_size(values->dtype));
    int rc = check_launch("sum");
    hr_tensor_release(part); /* the allocator hands the block out again only in stream order */
    return rc;
}

int64_t square_chunks(const hr_tensor *t) { return (hr_tensor_numel(t) + kChunk - 1) / kChunk; }

} // namespace
} // namespace hrc

using namespace hrc;

extern "C" int hr_cuda_reduce(hr_cuda_reduce_op op, hr_tensor *t, int dim, hr_tensor *values, hr_tensor *indices)
{
    static const char *const names[4] = {"sum", "mean", "max", "min"};
    const char *name = names[op];
    cudaStream_t st = stream(dev_of(t));
    if (!st) return -1;
    int d = -1;
    if (dim != HR_DIM_ALL && t->ndim > 0 && hr_wrap_dim(name, dim, t->ndim, &d)) return -1;
    if ((op == HR_CUDA_SUM || op == HR_CUDA_MEAN) && d >= 0 && d < t->ndim - 1 && hr_dtype_is_float(t->dtype) &&
        hr_tensor_is_contiguous(t) && hr_tensor_numel(t) > 0) {
        int rc = sum_columns(t, d, op == HR_CUDA_MEAN, values, st);
        if (rc <= 0) return rc;
    }
    hr_tensor *src = d < 0 ? hr_contiguous(t) : rows_along(t, d);
    if (!src) return -1;
    int64_t numel = hr_tensor_numel(src);
    int64_t n = d < 0 ? numel : t->size[d];
    int64_t rows = d < 0 ? 1 : (n ? numel / n : 1);
    if (d >= 0 && n == 0) { /* rows of nothing: count them from the other sizes */
        rows = 1;
        for (int i = 0; i < t->ndim; i++)
            if (i != d) rows *= t->size[i];
    }
    int rc = 0;
    if (rows > 0) {
        const char *p = (const char *)hr_tensor_data(src);
        int el = (int)hr_dtype_size(src->dtype);
        bool is_int = hr_dtype_is_int(src->dtype);
        if (op == HR_CUDA_SUM || op == HR_CUDA_MEAN) {
            char *o = (char *)hr_tensor_data(values);
            int oel = (int)hr_dtype_size(values->dtype);
            if (is_int) sum_rows<true><<<row_grid(rows), kRowThreads, 0, st>>>(p, src->dtype, el, rows, n, false, o, values->dtype, oel);
            else if (rows <= kSplitMaxRows && n >= 8 * kChunk)
                rc = sum_split_rows(src, rows, n, op == HR_CUDA_MEAN, values, st);
            else if (n <= kShortRow)
                sum_rows_warp<<<warp_row_grid(rows), kRowThreads, 0, st>>>(p, src->dtype, el, rows, n, op == HR_CUDA_MEAN,
                                                                           o, values->dtype, oel);
            else sum_rows<false><<<row_grid(rows), kRowThreads, 0, st>>>(p, src->dtype, el, rows, n, op == HR_CUDA_MEAN, o,
                                                                         values->dtype, oel);
        } else {
            char *vo = values ? (char *)hr_tensor_data(values) : nullptr;
            int64_t *io = indices ? (int64_t *)hr_tensor_data(indices) : nullptr;
            int odt = values ? values->dtype : 0, oel = values ? (int)hr_dtype_size(values->dtype) : 0;
            if (is_int)
                extreme_rows<int64_t, true><<<row_grid(rows), kRowThreads, 0, st>>>(p, src->dtype, el, rows, n,
                                                                                   op == HR_CUDA_MAX, vo, odt, oel, io);
            else
                extreme_rows<double, false><<<row_grid(rows), kRowThreads, 0, st>>>(p, src->dtype, el, rows, n,
                                                                                  op == HR_CUDA_MAX, vo, odt, oel, io);
        }
        if (rc == 0) rc = check_launch(name);
    }
    hr_tensor_release(src);
    return rc;
}

extern "C" int hr_cuda_softmax(hr_tensor *t, int dim, bool log_out, hr_tensor *out)
{
    const char *name = log_out ? "log_softmax" : "softmax";
    cudaStream_t st = stream(dev_of(t));
    if (!st) return -1;
    int d = 0;
    if (t->ndim > 0 && hr_wrap_dim(name, dim, t->ndim, &d)) return -1;
    if (hr_tensor_numel(t) == 0) return 0;
    bool last = t->ndim == 0 || d == t->ndim - 1;
    hr_tensor *src = rows_along(t, d);
    if (!src) return -1;
    /* rows land in `dst`: out itself when the dim is last, else a scratch in the permuted order */
    hr_tensor *dst = last ? out : hr_tensor_empty(src->ndim, src->size, src->dtype, hr_tensor_device(src));
    int rc = -1;
    if (dst) {
        int64_t n = t->ndim ? t->size[d] : 1, rows = hr_tensor_numel(t) / n;
        const char *sp = (const char *)hr_tensor_data(src);
        int el = (int)hr_dtype_size(src->dtype);
        char *dp = (char *)hr_tensor_data(dst);
        if (n <= kShortRow)
            if (src->dtype == HR_F64) launch_softmax_short<double>(sp, src->dtype, el, rows, n, log_out, dp, st);
            else launch_softmax_short<float>(sp, src->dtype, el, rows, n, log_out, dp, st);
        else
            softmax_rows<<<row_grid(rows), kRowThreads, 0, st>>>(sp, src->dtype, el, rows, n, log_out, dp);
        rc = check_launch(name);
        if (!rc && !last) {
            /* dst's last dim is d: put it back in place through the inverse permutation */
            int inv[HR_MAX_DIMS];
            for (int i = 0; i < t->ndim; i++) inv[i] = i < d ? i : (i == d ? t->ndim - 1 : i - 1);
            hr_tensor *back = hr_view_permute(dst, inv);
            rc = back ? hr_copy_(out, back) : -1;
            hr_tensor_release(back);
        }
        if (!last) hr_tensor_release(dst);
    }
    hr_tensor_release(src);
    return rc;
}

extern "C" int hr_cuda_all_finite(hr_tensor *const *ts, int n, bool *all_finite)
{
    *all_finite = true;
    int ndev = hr_cuda_device_count();
    int *flags[64] = {nullptr};
    int rc = 0;
    for (int k = 0; k < n && rc == 0; k++) {
        hr_tensor *t = ts[k];
        if (!t || !hr_dtype_is_float(t->dtype) || hr_tensor_numel(t) == 0) continue;
        if (!is_cuda(t)) {
            rc = hr_fail(HR_EINVAL, "all_finite: tensor %d is on the CPU; pass CUDA tensors only", k + 1);
            break;
        }
        int dev = dev_of(t);
        if (dev >= 64 || dev >= ndev) {
            rc = hr_cuda_check_device(dev, "all_finite");
            break;
        }
        cudaStream_t st = stream(dev);
        if (!st) {
            rc = -1;
            break;
        }
        if (!flags[dev]) {
            flags[dev] = (int *)hr_cuda_malloc(dev, sizeof(int));
            int one = 1;
            if (!flags[dev] ||
                check(cudaMemcpyAsync(flags[dev], &one, sizeof one, cudaMemcpyHostToDevice, st), "all_finite", "cudaMemcpyAsync") ||
                sync(dev, "all_finite")) {
                rc = -1;
                break;
            }
        }
        Geo g;
        geo_init(&g, t->ndim, t->size);
        geo_add(&g, t->stride);
        geo_coalesce(&g);
        int64_t numel = hr_tensor_numel(t);
        finite_kernel<<<grid_for(numel), kThreads, 0, st>>>(g, (const char *)hr_tensor_data(t), t->dtype,
                                                            (int)hr_dtype_size(t->dtype), numel, flags[dev]);
        rc = check_launch("all_finite");
    }
    for (int dev = 0; dev < 64; dev++) {
        if (!flags[dev]) continue;
        int v = 1;
        if (rc == 0) {
            cudaStream_t st = stream(dev);
            if (!st || check(cudaMemcpyAsync(&v, flags[dev], sizeof v, cudaMemcpyDeviceToHost, st), "all_finite",
                             "cudaMemcpyAsync") ||
                sync(dev, "all_finite"))
                rc = -1;
            else if (!v)
                *all_finite = false;
        }
        hr_cuda_free(dev, flags[dev], sizeof(int));
    }
    return rc;
}

extern "C" int hr_cuda_sum_squares(hr_tensor *const *ts, int n, double *out)
{
    *out = 0;
    if (n <= 0) return 0;
    for (int k = 0; k < n; k++) {
        const hr_tensor *pair[2] = {ts[0], ts[k]};
        if (same_device("sum of squares", 2, pair)) return -1;
    }
    int dev = dev_of(ts[0]);
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    int64_t chunks = 0;
    for (int k = 0; k < n; k++) chunks += square_chunks(ts[k]);
    if (chunks == 0) return 0;
    int64_t size = chunks + 1;
    hr_tensor *part = empty_on(ts[0], 1, &size, HR_F64);
    if (!part) return -1;
    double *pp = (double *)hr_tensor_data(part);
    int rc = 0;
    /* the contiguous tensors in one launch (square_sum_items), the others one launch each; every
     * tensor's partials at the same place of the buffer either way */
    SquareItem *items = (SquareItem *)malloc(sizeof(SquareItem) * (size_t)n);
    if (!items) {
        hr_tensor_release(part);
        return hr_fail(HR_ENOMEM, "sum of squares: out of memory");
    }
    int nitems = 0;
    int64_t at = 0, blocks = 0;
    for (int k = 0; k < n && rc == 0; k++) {
        const hr_tensor *t = ts[k];
        int64_t c = square_chunks(t);
        if (c == 0) continue;
        if (hr_tensor_is_contiguous(t)) {
            items[nitems++] = SquareItem{(const char *)hr_tensor_data(t), hr_tensor_numel(t), blocks, at, t->dtype};
            blocks += c;
        } else {
            Geo g;
            geo_init(&g, t->ndim, t->size);
            geo_add(&g, t->stride);
            geo_coalesce(&g);
            square_sum_chunks<<<(unsigned)c, kRowThreads, 0, st>>>(g, (const char *)hr_tensor_data(t), t->dtype,
                                                                   (int)hr_dtype_size(t->dtype), hr_tensor_numel(t), pp + at);
            rc = check_launch("sum of squares");
        }
        at += c;
    }
    if (rc == 0 && nitems > 0) {
        const size_t bytes = sizeof(SquareItem) * (size_t)nitems;
        SquareItem *dev_items = (SquareItem *)hr_cuda_malloc(dev, bytes);
        if (!dev_items) rc = -1;
        else {
            rc = stage_to_device(dev, dev_items, items, bytes, "sum of squares");
            if (rc == 1) /* too big for the staging ring: a copy the host waits for */
                rc = check(cudaMemcpyAsync(dev_items, items, bytes, cudaMemcpyHostToDevice, st), "sum of squares",
                           "cudaMemcpyAsync") || sync(dev, "sum of squares") ? -1 : 0;
            if (rc == 0) {
                square_sum_items<<<(unsigned)blocks, kRowThreads, 0, st>>>(dev_items, nitems, pp);
                rc = check_launch("sum of squares");
            }
            hr_cuda_free(dev, dev_items, bytes);
        }
    }
    free(items);
    if (rc == 0) {
        sum_in_order<<<1, 1024, 0, st>>>(pp, chunks, pp + chunks);
        rc = check_launch("sum of squares");
    }
    if (rc == 0)
        rc = check(cudaMemcpyAsync(out, pp + chunks, sizeof *out, cudaMemcpyDeviceToHost, st), "sum of squares",
                   "cudaMemcpyAsync");
    if (rc == 0) rc = sync(dev, "sum of squares");
    hr_tensor_release(part);
    return rc;
}
