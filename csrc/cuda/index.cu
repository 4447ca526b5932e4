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

/* What a gather or scatter launch needs: the stream, grid and element count, the coalesced walk
 * of the three operands, their data, and the stride along dim of the operand that the index
 * addresses. */
struct Walk {
    cudaStream_t st;
    unsigned grid;
    int64_t n, dim_stride;
    Geo g;
    void *dst;
    const void *src;
    const int64_t *idx;
};

/* Checks that dst, src and idx share a device and idx is i64, and fills w for the operands'
 * strides s0, s1, s2 in the kernel's order; the NULL one stands for `indexed` (dst or src), walked
 * with a 0 stride along dim. w->n is 0 when there is nothing to do. */
int index_walk(const char *op, hr_tensor *dst, const hr_tensor *src, const hr_tensor *idx, const hr_tensor *indexed,
               int dim, int ndim, const int64_t *size, const int64_t *s0, const int64_t *s1, const int64_t *s2, Walk *w)
{
    const hr_tensor *ts[3] = {dst, src, idx};
    if (same_device(op, 3, ts) || check_index_operand(op, idx)) return -1;
    w->st = stream(dev_of(dst));
    if (!w->st) return -1;
    int64_t zeroed[HR_MAX_DIMS];
    for (int i = 0; i < ndim; i++) zeroed[i] = i == dim ? 0 : indexed->stride[i];
    w->n = 1;
    for (int i = 0; i < ndim; i++) w->n *= size[i];
    w->grid = grid_for(w->n);
    w->dim_stride = indexed->stride[dim];
    w->dst = hr_tensor_data(dst);
    w->src = hr_tensor_data(src);
    w->idx = (const int64_t *)hr_tensor_data(idx);
    geo_init(&w->g, ndim, size);
    geo_add(&w->g, s0 ? s0 : zeroed);
    geo_add(&w->g, s1 ? s1 : zeroed);
    geo_add(&w->g, s2 ? s2 : zeroed);
    geo_coalesce(&w->g);
    return 0;
}

} // namespace
} // namespace hrc

using namespace hrc;

extern "C" int hr_cuda_index_gather(hr_tensor *dst, const int64_t *dst_stride, const hr_tensor *src, int dim,
                                    const hr_tensor *idx, const int64_t *idx_stride, int ndim, const int64_t *size)
{
    const char *op = "gather";
    Walk w;
    if (index_walk(op, dst, src, idx, src, dim, ndim, size, dst_stride, nullptr, idx_stride, &w)) return -1;
    if (w.n == 0) return 0;
    switch (hr_dtype_size(src->dtype)) {
    case 1:
        gather_kernel<uint8_t><<<w.grid, kThreads, 0, w.st>>>(w.g, (uint8_t *)w.dst, (const uint8_t *)w.src, w.idx,
                                                             w.dim_stride, w.n);
        break;
    case 2:
        gather_kernel<uint16_t><<<w.grid, kThreads, 0, w.st>>>(w.g, (uint16_t *)w.dst, (const uint16_t *)w.src, w.idx,
                                                              w.dim_stride, w.n);
        break;
    case 4:
        gather_kernel<uint32_t><<<w.grid, kThreads, 0, w.st>>>(w.g, (uint32_t *)w.dst, (const uint32_t *)w.src, w.idx,
                                                              w.dim_stride, w.n);
        break;
    default:
        gather_kernel<uint64_t><<<w.grid, kThreads, 0, w.st>>>(w.g, (uint64_t *)w.dst, (const uint64_t *)w.src, w.idx,
                                                              w.dim_stride, w.n);
        break;
    }
    return check_launch(op);
}

/* One launch of the add kernel for element type T. */
template <typename T> static void launch_scatter_add(const Walk &w, T alpha)
{
    scatter_add_kernel<T><<<w.grid, kThreads, 0, w.st>>>(w.g, (T *)w.dst, w.idx, (const T *)w.src, w.dim_stride, alpha,
                                                         w.n);
}

/* One launch of the copy kernel for elements of U's width. */
template <typename U> static void launch_scatter_copy(const Walk &w)
{
    scatter_copy_kernel<U><<<w.grid, kThreads, 0, w.st>>>(w.g, (U *)w.dst, w.idx, (const U *)w.src, w.dim_stride, w.n);
}

extern "C" int hr_cuda_index_scatter(hr_tensor *dst, int dim, const hr_tensor *idx, const int64_t *idx_stride,
                                     const hr_tensor *src, const int64_t *src_stride, int ndim, const int64_t *size,
                                     bool add, double alpha)
{
    const char *op = add ? "scatter_add" : "scatter";
    Walk w;
    if (index_walk(op, dst, src, idx, dst, dim, ndim, size, nullptr, idx_stride, src_stride, &w)) return -1;
    if (w.n == 0) return 0;
    if (!add) {
        switch (hr_dtype_size(dst->dtype)) {
        case 1: launch_scatter_copy<uint8_t>(w); break;
        case 2: launch_scatter_copy<uint16_t>(w); break;
        case 4: launch_scatter_copy<uint32_t>(w); break;
        default: launch_scatter_copy<uint64_t>(w); break;
        }
        return check_launch(op);
    }
    switch (dst->dtype) {
    case HR_F32: launch_scatter_add<float>(w, (float)alpha); break;
    case HR_F64: launch_scatter_add<double>(w, alpha); break;
    case HR_I64: launch_scatter_add<int64_t>(w, (int64_t)alpha); break;
    case HR_I32: launch_scatter_add<int32_t>(w, (int32_t)alpha); break;
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
