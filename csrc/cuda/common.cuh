/*
 * cuda/common.cuh — shared by the CUDA backend's translation units: error helpers, per-device
 * streams and cuBLAS handles, strided geometry, and dtype loads/stores that mirror hr_dtype.c
 * exactly (so a device op rounds the way the CPU op does).
 */
#ifndef HR_CUDA_COMMON_CUH
#define HR_CUDA_COMMON_CUH

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "hr_core.h"
#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "hr_nn.h"
#include "hr_optim.h"
#include "hr_pointwise.h"
#include "hr_random.h"
#include "hr_reduce.h"
}
#include "hr_cuda.h"

namespace hrc {

/* ------------------------------------------------------------------ errors, devices, streams */

/* Records a CUDA runtime failure as an hr error naming op and the call; clears the (non-sticky)
 * error state so that later calls are not blamed for it. Returns -1 (0 on success). */
int check(cudaError_t e, const char *op, const char *what);
/* The error of the last kernel launch, if any. */
int check_launch(const char *op);
int check_blas(cublasStatus_t s, const char *op, const char *what);
/* Makes dev current for the calling thread (after checking it exists). */
int use_device(int dev, const char *op);
/* The device's stream (created on first use); NULL with an error on failure. */
cudaStream_t stream(int dev);
/* The device's cuBLAS handle bound to its stream; NULL with an error on failure. */
cublasHandle_t blas(int dev);
/* The device's cuBLASLt handle (created on first use; the stream is given per call). */
cublasLtHandle_t blas_lt(int dev);
int sync(int dev, const char *op);
/* Queues a copy of nbytes host bytes at src to dst on dev's stream without waiting for the device:
 * the bytes are copied into a pinned ring first, so src may be freed on return (runtime.cu).
 * Returns 0 when queued, 1 when not staged (too big for the ring, or no pinned memory: the caller
 * copies and waits itself), -1 on an error. */
int stage_to_device(int dev, void *dst, const void *src, size_t nbytes, const char *op);
/* Whether the calling thread's copies to dev go to dev's upload stream (upload.cu). */
bool uploading(int dev);
/* Queues nbytes host bytes at src to dst (in dst_storage) on the upload stream of the calling
 * thread's upload: 0 when queued, 1 when this thread is not uploading to that device, -1 on an
 * error. src may be freed on return. */
int upload_queue(hr_storage *dst_storage, void *dst, const void *src, size_t nbytes, const char *op);
/* Before a device storage's block goes back to the cache: the compute stream waits for the upload
 * that wrote it, if any. */
void upload_settle_storage(hr_storage *s);
/* The calling thread's upload stream for dev (it is uploading to dev); NULL with an error if it
 * cannot be had. */
cudaStream_t upload_stream_of(int dev);
/* Whether a storage's block came from the upload blocks (runtime.cu): an upload into it needs no
 * wait for the compute stream. */
bool is_upload_block(const hr_storage *s);

static inline int dev_of(const hr_tensor *t) { return hr_tensor_device(t).index; }
static inline bool is_cuda(const hr_tensor *t) { return hr_tensor_device(t).type == HR_CUDA; }

/* Threads per block of the elementwise kernels and a grid that covers n elements with a
 * grid-stride loop (capped: big tensors loop inside the kernel). */
constexpr int kThreads = 256;
static inline unsigned grid_for(int64_t n, int threads = kThreads)
{
    int64_t blocks = (n + threads - 1) / threads;
    if (blocks < 1) blocks = 1;
    if (blocks > 65535 * 16) blocks = 65535 * 16;
    return (unsigned)blocks;
}

/* ------------------------------------------------------------------ geometry */

/* Up to four operands walked over one shape; strides in elements (0 on broadcast dims). */
struct Geo {
    int ndim;
    int nops;
    int64_t size[HR_MAX_DIMS];
    int64_t stride[4][HR_MAX_DIMS];
    /* Set by geo_coalesce when every linear index is below 2^31: each size then divides an index by a
     * multiply-high and a shift, q = (umulhi(i, magic) + i) >> shift, instead of a division. */
    bool fast32;
    uint32_t magic[HR_MAX_DIMS];
    uint32_t shift[HR_MAX_DIMS];
};

void geo_init(Geo *g, int ndim, const int64_t *size);
void geo_add(Geo *g, const int64_t *stride);
/* Drops size-1 dims and merges dims that every operand walks contiguously; then prepares the
 * multiply-shift divisions (fast32) when the indices fit. */
void geo_coalesce(Geo *g);

/* The element offsets of linear index i. 64-bit division is a long instruction sequence on GPUs:
 * one dim (what geo_coalesce leaves of contiguous operands) needs none, and indices and sizes
 * below 2^32 divide in 32 bits. */
template <int N>
__device__ __forceinline__ void geo_offsets(const Geo &g, int64_t i, int64_t *off)
{
    if (g.ndim == 1) {
#pragma unroll
        for (int k = 0; k < N; k++) off[k] = i * g.stride[k][0];
        return;
    }
#pragma unroll
    for (int k = 0; k < N; k++) off[k] = 0;
    if (g.fast32) {
        uint32_t r = (uint32_t)i;
        for (int d = g.ndim - 1; d >= 0; d--) {
            uint32_t q = (__umulhi(r, g.magic[d]) + r) >> g.shift[d];
            int64_t idx = (int64_t)(r - q * (uint32_t)g.size[d]);
            r = q;
#pragma unroll
            for (int k = 0; k < N; k++) off[k] += idx * g.stride[k][d];
        }
        return;
    }
    for (int d = g.ndim - 1; d >= 0; d--) {
        int64_t s = g.size[d], idx;
        if ((uint64_t)i <= 0xffffffffu && (uint64_t)s <= 0xffffffffu) {
            uint32_t q = (uint32_t)i / (uint32_t)s;
            idx = (int64_t)((uint32_t)i - q * (uint32_t)s);
            i = q;
        } else {
            idx = i % s;
            i /= s;
        }
#pragma unroll
        for (int k = 0; k < N; k++) off[k] += idx * g.stride[k][d];
    }
}

/* ------------------------------------------------------------------ dtype conversions */

__device__ __forceinline__ float bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ uint16_t f32_to_bf16(float f)
{
    uint32_t x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}
__device__ __forceinline__ float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t f32_to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }

/* Saturating float-to-integer conversion of hr_dtype.c. */
__device__ __forceinline__ int64_t double_to_i64(double v)
{
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return INT64_MAX;
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

__device__ __forceinline__ double load_f64(const char *p, int dt)
{
    switch (dt) {
    case HR_F32: return *(const float *)p;
    case HR_F64: return *(const double *)p;
    case HR_BF16: return bf16_to_f32(*(const uint16_t *)p);
    case HR_F16: return f16_to_f32(*(const uint16_t *)p);
    case HR_I64: return (double)*(const int64_t *)p;
    case HR_I32: return *(const int32_t *)p;
    case HR_U8: return *(const uint8_t *)p;
    case HR_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
    default: return 0.0;
    }
}

__device__ __forceinline__ float load_f32(const char *p, int dt)
{
    switch (dt) {
    case HR_F32: return *(const float *)p;
    case HR_BF16: return bf16_to_f32(*(const uint16_t *)p);
    case HR_F16: return f16_to_f32(*(const uint16_t *)p);
    case HR_I64: return (float)*(const int64_t *)p;
    case HR_I32: return (float)*(const int32_t *)p;
    case HR_U8: return (float)*(const uint8_t *)p;
    case HR_BOOL: return *(const uint8_t *)p ? 1.0f : 0.0f;
    default: return (float)load_f64(p, dt);
    }
}

__device__ __forceinline__ int64_t load_i64(const char *p, int dt)
{
    switch (dt) {
    case HR_I64: return *(const int64_t *)p;
    case HR_I32: return *(const int32_t *)p;
    case HR_U8: return *(const uint8_t *)p;
    case HR_BOOL: return *(const uint8_t *)p ? 1 : 0;
    default: return double_to_i64(load_f64(p, dt));
    }
}

__device__ __forceinline__ void store_f64(char *p, int dt, double v)
{
    switch (dt) {
    case HR_F32: *(float *)p = (float)v; break;
    case HR_F64: *(double *)p = v; break;
    case HR_BF16: *(uint16_t *)p = f32_to_bf16((float)v); break;
    case HR_F16: *(uint16_t *)p = f32_to_f16((float)v); break;
    case HR_I64: *(int64_t *)p = double_to_i64(v); break;
    case HR_I32: *(int32_t *)p = (int32_t)(uint32_t)(uint64_t)double_to_i64(v); break;
    case HR_U8: *(uint8_t *)p = (uint8_t)(uint64_t)double_to_i64(v); break;
    case HR_BOOL: *(uint8_t *)p = v != 0.0; break;
    default: break;
    }
}

__device__ __forceinline__ void store_f32(char *p, int dt, float v)
{
    switch (dt) {
    case HR_F32: *(float *)p = v; break;
    case HR_BF16: *(uint16_t *)p = f32_to_bf16(v); break;
    case HR_F16: *(uint16_t *)p = f32_to_f16(v); break;
    default: store_f64(p, dt, (double)v); break;
    }
}

__device__ __forceinline__ void store_i64(char *p, int dt, int64_t v)
{
    switch (dt) {
    case HR_I64: *(int64_t *)p = v; break;
    case HR_I32: *(int32_t *)p = (int32_t)(uint32_t)(uint64_t)v; break;
    case HR_U8: *(uint8_t *)p = (uint8_t)(uint64_t)v; break;
    case HR_BOOL: *(uint8_t *)p = v != 0; break;
    default: store_f64(p, dt, (double)v); break;
    }
}

__host__ __device__ __forceinline__ int dtype_size(int dt)
{
    return dt == HR_F64 || dt == HR_I64 ? 8 : dt == HR_F32 || dt == HR_I32 ? 4 : dt == HR_BF16 || dt == HR_F16 ? 2 : 1;
}

/* ------------------------------------------------------------------ 8-element vector accesses */

/* Elements 8j .. 8j+7 of a contiguous f32/bf16/f16 array p (16-byte aligned) as floats, in one
 * 16-byte load (two for f32). The dtype is a run-time value, but uniform across a launch, so the
 * switch costs a branch per 8 elements, not per element. Conversions are those of load_f32 and
 * store_f32, so a vector kernel gives its scalar twin's results bit for bit. */
__device__ __forceinline__ void load8(const char *p, int dt, int64_t j, float v[8])
{
    if (dt == HR_F32) {
        const float4 *q = (const float4 *)p + 2 * j;
        float4 a = q[0], b = q[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        return;
    }
    uint4 u = ((const uint4 *)p)[j];
    uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        uint16_t lo = (uint16_t)(w[k] & 0xffffu), hi = (uint16_t)(w[k] >> 16);
        v[2 * k] = dt == HR_BF16 ? bf16_to_f32(lo) : f16_to_f32(lo);
        v[2 * k + 1] = dt == HR_BF16 ? bf16_to_f32(hi) : f16_to_f32(hi);
    }
}

__device__ __forceinline__ void store8(char *p, int dt, int64_t j, const float v[8])
{
    if (dt == HR_F32) {
        float4 *q = (float4 *)p + 2 * j;
        q[0] = make_float4(v[0], v[1], v[2], v[3]);
        q[1] = make_float4(v[4], v[5], v[6], v[7]);
        return;
    }
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        uint32_t lo = dt == HR_BF16 ? f32_to_bf16(v[2 * k]) : f32_to_f16(v[2 * k]);
        uint32_t hi = dt == HR_BF16 ? f32_to_bf16(v[2 * k + 1]) : f32_to_f16(v[2 * k + 1]);
        w[k] = lo | (hi << 16);
    }
    ((uint4 *)p)[j] = make_uint4(w[0], w[1], w[2], w[3]);
}

/* Whether a tensor's elements can be read 8 at a time: f32/bf16/f16 at a 16-byte aligned address. */
static inline bool vec8_ok(const void *p, int dt)
{
    return (dt == HR_F32 || dt == HR_BF16 || dt == HR_F16) && ((uintptr_t)p & 15u) == 0;
}

/* Grid of a vector kernel over n elements: one thread per 8 (at least one block). */
static inline unsigned grid_for8(int64_t n) { return grid_for((n + 7) / 8); }

/* Compute-type dispatch: float for f32/bf16/f16, double for f64, int64 for integers and bool. */
template <typename CT> __device__ __forceinline__ CT load(const char *p, int dt);
template <> __device__ __forceinline__ float load<float>(const char *p, int dt) { return load_f32(p, dt); }
template <> __device__ __forceinline__ double load<double>(const char *p, int dt) { return load_f64(p, dt); }
template <> __device__ __forceinline__ int64_t load<int64_t>(const char *p, int dt) { return load_i64(p, dt); }
__device__ __forceinline__ void store(char *p, int dt, float v) { store_f32(p, dt, v); }
__device__ __forceinline__ void store(char *p, int dt, double v) { store_f64(p, dt, v); }
__device__ __forceinline__ void store(char *p, int dt, int64_t v) { store_i64(p, dt, v); }

/* ------------------------------------------------------------------ Philox (hr_random.h) */

/* Block b of the Philox4x32-10 stream of key (k0, k1): the CPU's hr_philox words. */
__device__ __forceinline__ void philox_block(uint32_t k0, uint32_t k1, uint64_t b, uint32_t out[4])
{
    uint32_t c0 = (uint32_t)b, c1 = (uint32_t)(b >> 32), c2 = 0, c3 = 0;
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += HR_PHILOX_W0;
            k1 += HR_PHILOX_W1;
        }
        uint32_t hi0 = __umulhi(HR_PHILOX_M0, c0), lo0 = HR_PHILOX_M0 * c0;
        uint32_t hi1 = __umulhi(HR_PHILOX_M1, c2), lo1 = HR_PHILOX_M1 * c2;
        uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

__device__ __forceinline__ float u24(uint32_t x) { return (float)(x >> 8) * 0x1.0p-24f; }
__device__ __forceinline__ double u53(uint32_t x, uint32_t y)
{
    return (double)((uint64_t)(x >> 5) * 67108864u + (y >> 6)) * 0x1.0p-53;
}

/* ------------------------------------------------------------------ block reductions */

__device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum of v over the block (every thread gets the result); sh has 32 doubles; blockDim.x is a
 * multiple of 32. Warps reduce by shuffles, then the first warp adds the warps' sums: three
 * barriers instead of one per halving step. */
__device__ inline double block_sum(double v, double *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double w = lane < warps ? sh[lane] : 0.0;
        w = warp_sum(w);
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    double r = sh[0];
    __syncthreads();
    return r;
}

/* ------------------------------------------------------------------ small host helpers */

/* A new contiguous tensor on t's device (dtype dt) or NULL. */
static inline hr_tensor *empty_on(const hr_tensor *like, int ndim, const int64_t *size, hr_dtype dt)
{
    return hr_tensor_empty(ndim, size, dt, hr_tensor_device(like));
}

/* cuda/attention.cu: whether q [B, Lq, H] and k [B, Lk, H] in `heads` heads fit the one-kernel
 * attention (f32/bf16/f16, sequences of at most 64, heads of at most 128 columns), and that
 * attention (mask NULL or contiguous in q's dtype, [B, Lk] or [B, Lq, Lk]). */
bool attention_fused_fits(const hr_tensor *q, const hr_tensor *k, int64_t heads);
hr_tensor *attention_fused(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads, double dropout_p,
                           bool training, struct hr_generator *gen);
/* The same for qkv [B, L, 3H] holding q, k and v side by side: whether it fits (dt, B, Lq = Lk = L,
 * H, heads), and the attention reading the three column blocks in place, its node taking qkv and
 * giving one [B, L, 3H] gradient. */
bool fused_shape_fits(int dt, int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t heads, int dev);
hr_tensor *attention_fused_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training,
                                  struct hr_generator *gen);

/* Calls f(std::integral_constant<int, DT>{}) for the float dtype dt (f32 for anything but f64,
 * bf16 and f16), so that a kernel templated on its input dtype is launched from one call site. */
template <typename F> void for_float_dtype(int dt, F f)
{
    switch (dt) {
    case HR_F64: f(std::integral_constant<int, HR_F64>{}); break;
    case HR_BF16: f(std::integral_constant<int, HR_BF16>{}); break;
    case HR_F16: f(std::integral_constant<int, HR_F16>{}); break;
    default: f(std::integral_constant<int, HR_F32>{}); break;
    }
}

/* Fails unless every non-NULL tensor lives on the device of the first one. */
int same_device(const char *op, int n, const hr_tensor *const *ts);

} // namespace hrc

#endif
