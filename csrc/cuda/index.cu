/* index.cu — the CUDA kernels behind index_select, gather, scatter(_add), index_add_/index_copy_,
 * masked_fill and masked_select (csrc/cpu/index.c validates the arguments and the index values,
 * then calls these with the same geometry its CPU kernels walk).
 *
 * Each kernel walks one shape with up to three strided operands (strides in elements, 0 where an
 * operand is broadcast or where the index supplies the position). Copies move raw elements of the
 * dtype's width; sums use atomics, so scatter_add/index_add_ of floats on the GPU may round
 * differently from run to run where several sources hit one element (the CPU sums in order). */
#include "common.cuh"

namespace hrc {
namespace {

/* dst[o0] = src[o1 + idx[o2] * dim_stride] */
template <typename U>
__global__ void gather_kernel(Geo g, U *dst, const U *src, const int64_t *idx, int64_t dim_stride, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[3];
        geo_offsets<3>(g, i, off);
        dst[off[0]] = src[off[1] + idx[off[2]] * dim_stride];
    }
}

/* dst[o0 + idx[o1] * dim_stride] = src[o2] */
template <typename U>
__global__ void scatter_copy_kernel(Geo g, U *dst, const int64_t *idx, const U *src, int64_t dim_stride, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[3];
        geo_offsets<3>(g, i, off);
        dst[off[0] + idx[off[1]] * dim_stride] = src[off[2]];
    }
}

__device__ __forceinline__ void atomic_add(float *p, float v, float alpha) { atomicAdd(p, alpha * v); }
__device__ __forceinline__ void atomic_add(double *p, double v, double alpha) { atomicAdd(p, alpha * v); }
/* Integer sums wrap, as on the CPU (two's complement through unsigned arithmetic). */
__device__ __forceinline__ void atomic_add(int64_t *p, int64_t v, int64_t alpha)
{
    atomicAdd((unsigned long long *)p, (unsigned long long)alpha * (unsigned long long)v);
}
__device__ __forceinline__ void atomic_add(int32_t *p, int32_t v, int32_t alpha)
{
    atomicAdd((unsigned int *)p, (unsigned int)alpha * (unsigned int)v);
}

/* dst[o0 + idx[o1] * dim_stride] += alpha * src[o2] */
template <typename T>
__global__ void scatter_add_kernel(Geo g, T *dst, const int64_t *idx, const T *src, int64_t dim_stride, T alpha, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[3];
        geo_offsets<3>(g, i, off);
        atomic_add(dst + off[0] + idx[off[1]] * dim_stride, src[off[2]], alpha);
    }
}

/* dst[o0] = value where mask[o1] */
template <typename U> __global__ void masked_fill_kernel(Geo g, U *dst, const uint8_t *mask, U value, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[2];
        geo_offsets<2>(g, i, off);
        if (mask[off[1]]) dst[off[0]] = value;
    }
}

/* out[k] = src at row-major position pos[k] of the walked shape */
template <typename U> __global__ void take_kernel(Geo g, U *out, const U *src, const int64_t *pos, int64_t n)
{
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[1];
        geo_offsets<1>(g, pos[k], off);
        out[k] = src[off[0]];
    }
}

int check_index_operand(const char *op, const hr_tensor *idx)
{
    if (idx->dtype != HR_I64) return hr_fail(HR_EINVAL, "%s: the CUDA kernels take an i64 index", op);
    return 0;
}

} // namespace
} // namespace hrc

using namespace hrc;

extern "C" int hr_cuda_index_gather(hr_tensor *dst, const int64_t *dst_stride, const hr_tensor *src, int dim,
                                    const hr_tensor *idx, const int64_t *idx_stride, int ndim, const int64_t *size)
{
    const char *op = "gather";
    const hr_tensor *ts[3] = {dst, src, idx};
    if (same_device(op, 3, ts) || check_index_operand(op, idx)) return -1;
    cudaStream_t st = stream(dev_of(dst));
    if (!st) return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= size[i];
    if (n == 0) return 0;
    int64_t sstride[HR_MAX_DIMS];
    for (int i = 0; i < ndim; i++) sstride[i] = i == dim ? 0 : src->stride[i];
    Geo g;
    geo_init(&g, ndim, size);
    geo_add(&g, dst_stride);
    geo_add(&g, sstride);
    geo_add(&g, idx_stride);
    geo_coalesce(&g);
    const int64_t *ix = (const int64_t *)hr_tensor_data(idx);
    int64_t ds = src->stride[dim];
    void *d = hr_tensor_data(dst);
    const void *s = hr_tensor_data(src);
    switch (hr_dtype_size(src->dtype)) {
    case 1: gather_kernel<uint8_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint8_t *)d, (const uint8_t *)s, ix, ds, n); break;
    case 2: gather_kernel<uint16_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint16_t *)d, (const uint16_t *)s, ix, ds, n); break;
    case 4: gather_kernel<uint32_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint32_t *)d, (const uint32_t *)s, ix, ds, n); break;
    default: gather_kernel<uint64_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint64_t *)d, (const uint64_t *)s, ix, ds, n); break;
    }
    return check_launch(op);
}

extern "C" int hr_cuda_index_scatter(hr_tensor *dst, int dim, const hr_tensor *idx, const int64_t *idx_stride,
                                     const hr_tensor *src, const int64_t *src_stride, int ndim, const int64_t *size,
                                     bool add, double alpha)
{
    const char *op = add ? "scatter_add" : "scatter";
    const hr_tensor *ts[3] = {dst, src, idx};
    if (same_device(op, 3, ts) || check_index_operand(op, idx)) return -1;
    cudaStream_t st = stream(dev_of(dst));
    if (!st) return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= size[i];
    if (n == 0) return 0;
    int64_t dstride[HR_MAX_DIMS];
    for (int i = 0; i < ndim; i++) dstride[i] = i == dim ? 0 : dst->stride[i];
    Geo g;
    geo_init(&g, ndim, size);
    geo_add(&g, dstride);
    geo_add(&g, idx_stride);
    geo_add(&g, src_stride);
    geo_coalesce(&g);
    const int64_t *ix = (const int64_t *)hr_tensor_data(idx);
    int64_t ds = dst->stride[dim];
    void *d = hr_tensor_data(dst);
    const void *s = hr_tensor_data(src);
    unsigned grid = grid_for(n);
    if (!add) {
        switch (hr_dtype_size(dst->dtype)) {
        case 1: scatter_copy_kernel<uint8_t><<<grid, kThreads, 0, st>>>(g, (uint8_t *)d, ix, (const uint8_t *)s, ds, n); break;
        case 2: scatter_copy_kernel<uint16_t><<<grid, kThreads, 0, st>>>(g, (uint16_t *)d, ix, (const uint16_t *)s, ds, n); break;
        case 4: scatter_copy_kernel<uint32_t><<<grid, kThreads, 0, st>>>(g, (uint32_t *)d, ix, (const uint32_t *)s, ds, n); break;
        default: scatter_copy_kernel<uint64_t><<<grid, kThreads, 0, st>>>(g, (uint64_t *)d, ix, (const uint64_t *)s, ds, n); break;
        }
        return check_launch(op);
    }
    switch (dst->dtype) {
    case HR_F32:
        scatter_add_kernel<float><<<grid, kThreads, 0, st>>>(g, (float *)d, ix, (const float *)s, ds, (float)alpha, n);
        break;
    case HR_F64:
        scatter_add_kernel<double><<<grid, kThreads, 0, st>>>(g, (double *)d, ix, (const double *)s, ds, alpha, n);
        break;
    case HR_I64:
        scatter_add_kernel<int64_t><<<grid, kThreads, 0, st>>>(g, (int64_t *)d, ix, (const int64_t *)s, ds, (int64_t)alpha, n);
        break;
    case HR_I32:
        scatter_add_kernel<int32_t><<<grid, kThreads, 0, st>>>(g, (int32_t *)d, ix, (const int32_t *)s, ds, (int32_t)alpha, n);
        break;
    default:
        return hr_fail(HR_EINVAL, "%s: sums of %s tensors have no CUDA kernel (f32, f64, i64 and i32 have; bf16/f16 go "
                                  "through f32)", op, hr_dtype_name(dst->dtype));
    }
    return check_launch(op);
}

extern "C" int hr_cuda_masked_fill_(hr_tensor *t, const hr_tensor *mask, const int64_t *mask_stride, const void *value)
{
    const char *op = "masked_fill_";
    const hr_tensor *ts[2] = {t, mask};
    if (same_device(op, 2, ts)) return -1;
    cudaStream_t st = stream(dev_of(t));
    if (!st) return -1;
    int64_t n = hr_tensor_numel(t);
    if (n == 0) return 0;
    Geo g;
    geo_init(&g, t->ndim, t->size);
    geo_add(&g, t->stride);
    geo_add(&g, mask_stride);
    geo_coalesce(&g);
    const uint8_t *m = (const uint8_t *)hr_tensor_data(mask);
    void *d = hr_tensor_data(t);
    unsigned grid = grid_for(n);
    switch (hr_dtype_size(t->dtype)) {
    case 1: {
        uint8_t v;
        memcpy(&v, value, 1);
        masked_fill_kernel<uint8_t><<<grid, kThreads, 0, st>>>(g, (uint8_t *)d, m, v, n);
        break;
    }
    case 2: {
        uint16_t v;
        memcpy(&v, value, 2);
        masked_fill_kernel<uint16_t><<<grid, kThreads, 0, st>>>(g, (uint16_t *)d, m, v, n);
        break;
    }
    case 4: {
        uint32_t v;
        memcpy(&v, value, 4);
        masked_fill_kernel<uint32_t><<<grid, kThreads, 0, st>>>(g, (uint32_t *)d, m, v, n);
        break;
    }
    default: {
        uint64_t v;
        memcpy(&v, value, 8);
        masked_fill_kernel<uint64_t><<<grid, kThreads, 0, st>>>(g, (uint64_t *)d, m, v, n);
        break;
    }
    }
    return check_launch(op);
}

extern "C" int hr_cuda_take(hr_tensor *out, const hr_tensor *src, const int64_t *src_stride, int ndim,
                            const int64_t *size, const hr_tensor *pos)
{
    const char *op = "masked_select";
    const hr_tensor *ts[3] = {out, src, pos};
    if (same_device(op, 3, ts) || check_index_operand(op, pos)) return -1;
    cudaStream_t st = stream(dev_of(out));
    if (!st) return -1;
    int64_t n = hr_tensor_numel(pos);
    if (n == 0) return 0;
    Geo g;
    geo_init(&g, ndim, size);
    geo_add(&g, src_stride);
    const int64_t *p = (const int64_t *)hr_tensor_data(pos);
    void *d = hr_tensor_data(out);
    const void *s = hr_tensor_data(src);
    switch (hr_dtype_size(src->dtype)) {
    case 1: take_kernel<uint8_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint8_t *)d, (const uint8_t *)s, p, n); break;
    case 2: take_kernel<uint16_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint16_t *)d, (const uint16_t *)s, p, n); break;
    case 4: take_kernel<uint32_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint32_t *)d, (const uint32_t *)s, p, n); break;
    default: take_kernel<uint64_t><<<grid_for(n), kThreads, 0, st>>>(g, (uint64_t *)d, (const uint64_t *)s, p, n); break;
    }
    return check_launch(op);
}
