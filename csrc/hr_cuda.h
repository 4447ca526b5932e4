/*
 * hr_cuda.h — the CUDA backend's Lua-free C API (implemented in the .cu files of csrc/cuda, compiled when the
 * build defines HERO_WITH_CUDA; csrc/hr_cuda_stub.c provides failing stand-ins otherwise, so callers
 * never need an #ifdef).
 *
 * Execution model: every device has one non-blocking stream owned by hero; every kernel, cuBLAS call
 * and copy of that device runs on it in order, so memory released by a tensor can be handed to the
 * next allocation at once (stream order makes the reuse safe). Copies that hand data to the host
 * synchronise the stream before returning; nothing else waits for the device.
 *
 * Memory: a caching allocator per device. Requests are rounded to a size class (512-byte multiples
 * below 1 MiB, then steps of 1/8 of the power of two below the size, i.e. at most 12.5% unused) and
 * released blocks go back to a free list of their class instead of to the driver. When cudaMalloc
 * fails, the device's cached blocks are returned to the driver and the allocation is tried once
 * more; a second failure is an HR_ENOMEM error that quotes the statistics (the Lua bindings then
 * collect garbage and retry once more, see HR_LUA_RETRY).
 *
 * With the backend compiled in but no usable device (no GPU, no driver), hr_cuda_device_count()
 * is 0 and creating a CUDA tensor fails with a clear error: hero keeps working on the CPU.
 */
#ifndef HR_CUDA_H
#define HR_CUDA_H

#include "hr_core.h"
#include "hr_nn.h"
#include "hr_optim.h"
#include "hr_pointwise.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ devices */

/* Whether this build contains the CUDA backend (a compile-time property). */
bool hr_cuda_compiled(void);
/* Usable devices; 0 without the backend, without a driver or without a GPU. Never fails. */
int hr_cuda_device_count(void);
/* Fails (naming op) unless dev is a usable device ordinal. */
int hr_cuda_check_device(int dev, const char *op);
int hr_cuda_device_name(int dev, char *buf, size_t cap);
int hr_cuda_mem_info(int dev, size_t *free_bytes, size_t *total_bytes);
/* Waits for all work queued on dev (dev < 0: every device that has been used). */
int hr_cuda_synchronize(int dev);
/* TF32 tensor cores for f32 matrix products (off by default: f32 products are full f32). */
void hr_cuda_set_allow_tf32(bool on);
bool hr_cuda_allow_tf32(void);

/* ------------------------------------------------------------------ memory */

typedef struct {
    size_t allocated; /* bytes of blocks handed out and not yet released (size classes) */
    size_t reserved;  /* bytes obtained from the driver: allocated + cached */
    size_t peak;      /* highest `allocated` since the start (or the last reset) */
    size_t cached;    /* reserved - allocated */
    int64_t num_allocs, num_cuda_mallocs, num_oom_retries;
} hr_cuda_memstats;

int hr_cuda_memory_stats(int dev, hr_cuda_memstats *out);
void hr_cuda_reset_peak(int dev);
/* Returns cached blocks of dev (dev < 0: all devices) to the driver; the bytes released. */
size_t hr_cuda_empty_cache(int dev);
/* Raw device memory from the caching allocator (nbytes may be 0; the pointer is then still unique). */
void *hr_cuda_malloc(int dev, size_t nbytes);
void hr_cuda_free(int dev, void *p, size_t nbytes);
/* A storage of nbytes uninitialised bytes on device dev (HR_STORAGE_EXTERNAL, freed to the cache). */
hr_storage *hr_cuda_storage_new(size_t nbytes, int dev);
/* Zeroes a whole storage (on its stream). */
int hr_cuda_memset0(hr_storage *s);
/* Page-locked host memory, for asynchronous host-to-device transfers (prefetching batches). */
void *hr_cuda_host_alloc(size_t nbytes);
void hr_cuda_host_free(void *p);

/* ------------------------------------------------------------------ copies and fills */

/* hr_copy_ when either side is on a CUDA device: broadcasting, dtype conversion, any strides,
 * cpu<->cuda and cuda<->cuda (also between devices). */
int hr_cuda_copy_(hr_tensor *dst, const hr_tensor *src);
/* Uploads on a second stream (cuda/upload.cu): between begin and end, the calling thread's copies
 * from the host to dev are queued on dev's upload stream, overlapping the device's computation, and
 * the thread waits only for its own transfers' staging. end gives a ticket; await(ticket), on the
 * thread that uses the tensors, makes dev's compute stream wait for those transfers (the host does
 * not wait). A ticket is awaited once. */
int hr_cuda_upload_begin(int dev);
int hr_cuda_upload_end(int64_t *ticket);
int hr_cuda_upload_await(int64_t ticket);
/* Writes the element `value` (hr_dtype_size(t->dtype) bytes, already in t's dtype) everywhere. */
int hr_cuda_fill_(hr_tensor *t, const void *value);

/* ------------------------------------------------------------------ elementwise (cuda/pointwise.cu) */

/* out = a op b (out already of the broadcast shape, dtype result; common is the compute dtype
 * chosen by hr_pointwise's type rules). out may be a itself (in-place). */
int hr_cuda_binary(hr_binary_op op, hr_dtype common, const hr_operand *a, const hr_operand *b,
                   const hr_operand *alpha, hr_tensor *out);
/* out = op(t), or clamp(t, lo, hi) when clamp is set; out has t's shape (may be t itself). */
int hr_cuda_unary(hr_unary_op op, bool clamp, const hr_operand *lo, const hr_operand *hi, const hr_tensor *t,
                  hr_tensor *out);
/* out = cond ? a : b, out of the broadcast shape and dtype. */
int hr_cuda_where(const hr_tensor *cond, const hr_operand *a, const hr_operand *b, hr_tensor *out);

/* gx = g * (cdf(x) + x pdf(x)), the erf GELU's derivative (x, g contiguous, same dtype and shape). */
int hr_cuda_gelu_backward(const hr_tensor *x, const hr_tensor *g, hr_tensor *gx);
/* out = erf(x) (g NULL), or its backward out = g * 2/sqrt(pi) * exp(-x^2); contiguous f32/f64 tensors of
 * one dtype on one device. */
int hr_cuda_erf(const hr_tensor *x, const hr_tensor *g, hr_tensor *out);

/* ------------------------------------------------------------------ indexing (cuda/index.cu) */

/* The geometry of csrc/cpu/index.c's kernels, strides in elements, idx/pos i64 on the device,
 * values already checked by the caller. dst[dst_stride . c] = src[c with c[dim] = idx[idx_stride . c]]
 * over the coordinates c of shape (ndim, size). */
int hr_cuda_index_gather(hr_tensor *dst, const int64_t *dst_stride, const hr_tensor *src, int dim, const hr_tensor *idx,
                         const int64_t *idx_stride, int ndim, const int64_t *size);
/* dst[c with c[dim] = idx[idx_stride . c]] = (or +=, times alpha) src[src_stride . c]. */
int hr_cuda_index_scatter(hr_tensor *dst, int dim, const hr_tensor *idx, const int64_t *idx_stride, const hr_tensor *src,
                          const int64_t *src_stride, int ndim, const int64_t *size, bool add, double alpha);
/* t[c] = *value (t's dtype, raw bytes) where mask[mask_stride . c] (u8/bool). */
int hr_cuda_masked_fill_(hr_tensor *t, const hr_tensor *mask, const int64_t *mask_stride, const void *value);
/* out[k] = src at row-major position pos[k] of shape (ndim, size), src walked with src_stride. */
int hr_cuda_take(hr_tensor *out, const hr_tensor *src, const int64_t *src_stride, int ndim, const int64_t *size,
                 const hr_tensor *pos);

/* ------------------------------------------------------------------ reductions (cuda/reduce.cu) */

typedef enum { HR_CUDA_SUM = 0, HR_CUDA_MEAN, HR_CUDA_MAX, HR_CUDA_MIN } hr_cuda_reduce_op;
/* Reduces t along dim (0-based, or HR_DIM_ALL) into values (t's dtype, i64 for sums of integers)
 * and/or indices (i64), both contiguous and already shaped by the caller. */
int hr_cuda_reduce(hr_cuda_reduce_op op, hr_tensor *t, int dim, hr_tensor *values, hr_tensor *indices);
/* softmax / log_softmax along dim into out (contiguous, t's shape and dtype). */
int hr_cuda_softmax(hr_tensor *t, int dim, bool log, hr_tensor *out);
/* *out = the sum of the squares of every element of every tensor (all on one device, any dtype and
 * layout), accumulated in double in a fixed order: the global gradient norm in one pass. */
int hr_cuda_sum_squares(hr_tensor *const *ts, int n, double *out);
/* Whether every element of every tensor is finite (float dtypes); *all_finite receives the answer. */
int hr_cuda_all_finite(hr_tensor *const *ts, int n, bool *all_finite);

/* ------------------------------------------------------------------ NCCL (cuda/nccl.cu) */

/* Collectives between processes on CUDA tensors (hero.dist); NCCL is loaded at run time. */
#define HR_CUDA_NCCL_ID_BYTES 128
typedef enum { HR_CUDA_NCCL_SUM = 0, HR_CUDA_NCCL_MAX = 2, HR_CUDA_NCCL_MIN = 3 } hr_cuda_nccl_op;
/* Whether libnccl.so.2 (or HERO_NCCL_LIBRARY) can be loaded. */
bool hr_cuda_nccl_available(void);
/* A new communicator id (rank 0 makes it; every rank passes it to hr_cuda_nccl_init). */
int hr_cuda_nccl_unique_id(unsigned char *out);
/* This process's communicator: rank of world_size, on device dev. Idempotent for the same arguments. */
int hr_cuda_nccl_init(int rank, int world_size, const unsigned char *id, int dev);
int hr_cuda_nccl_device(void); /* the communicator's device, -1 without one */
/* In place on a contiguous CUDA tensor on the communicator's device; returns when it is done. */
int hr_cuda_nccl_all_reduce_(hr_tensor *t, int op);
int hr_cuda_nccl_broadcast_(hr_tensor *t, int root);
/* out (contiguous, world_size times in's elements) = every rank's in, in rank order. */
int hr_cuda_nccl_all_gather(const hr_tensor *in, hr_tensor *out);
void hr_cuda_nccl_finalize(void);

/* ------------------------------------------------------------------ products (cuda/blas.cu) */

/* out [batch..., m, n] (contiguous, a's dtype) = alpha * a @ b + beta * out, where a is [..., m, k]
 * (or a vector when a_vec) and b is [..., k, n] (or a vector when b_vec), batch dims broadcast to
 * bsize[0..nb). f32 (TF32 only when allowed), f64, bf16 and f16 (f32 accumulation). With bias (a
 * vector of n, a's dtype; beta is then ignored and out need not be filled), out = alpha * a @ b +
 * bias, rounded once. */
int hr_cuda_matmul(hr_tensor *a, hr_tensor *b, bool a_vec, bool b_vec, int nb, const int64_t *bsize, int64_t m,
                   int64_t n, int64_t k, double alpha, double beta, const hr_tensor *bias, hr_tensor *out);

/* ------------------------------------------------------------------ fused nn ops (cuda/nn.cu) */

struct hr_generator;
/* The same contracts as the CPU functions of hr_nn.h / hr_optim.h / hr_random.h, on device tensors
 * (the CPU entry points dispatch here after checking their arguments). */
hr_tensor *hr_cuda_layer_norm(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps);
hr_tensor *hr_cuda_embedding(hr_tensor *weight, hr_tensor *indices, int64_t padding_idx);
hr_tensor *hr_cuda_cross_entropy(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                                 double label_smoothing, hr_reduction reduction);
hr_tensor *hr_cuda_dropout(struct hr_generator *g, hr_tensor *x, double p);
/* dropped: training with 0 < p < 1 (else no mask and no draws). */
hr_tensor *hr_cuda_dropout_add_layer_norm(struct hr_generator *g, hr_tensor *x, hr_tensor *residual, hr_tensor *weight,
                                          hr_tensor *bias, double eps, double p, bool dropped);
hr_tensor *hr_cuda_attention(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads,
                             double dropout_p, bool training, struct hr_generator *gen);
hr_tensor *hr_cuda_attention_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training,
                                    struct hr_generator *gen);
int hr_cuda_adamw_step(hr_adamw_item *items, int n, double beta1, double beta2, double eps);
/* Bernoulli draws (invert: u >= p, the dropout keep mask) into t (any dtype, any layout), from the
 * blocks starting at block0 of the stream with key: the same element-to-counter mapping as the CPU
 * (hr_random.h), so a seed gives the same mask on every device. */
int hr_cuda_bernoulli(hr_tensor *t, const uint32_t key[2], uint64_t block0, double p, bool invert);
/* uniform_(a, b) for float dtypes, the same mapping and arithmetic as the CPU (hr_random.h: f32 via u24,
 * bf16/f16 on their own grid, f64 via u53; a + (b - a) * u as one fused multiply-add). */
int hr_cuda_uniform(hr_tensor *t, const uint32_t key[2], uint64_t block0, double a, double b);

/* ------------------------------------------------------------------ autograd-aware device moves */

/* A copy of t on dev with dtype dt that records a node (the gradient moves back to t's device and
 * dtype). Returns t itself (retained) when nothing changes. */
hr_tensor *hr_ag_to(hr_tensor *t, hr_dtype dt, hr_device dev);

/* The error of an op that has no CUDA path yet (or of a build without the backend). */
int hr_cuda_unsupported(const char *op, const hr_tensor *t);
void *hr_cuda_unsupported_null(const char *op, const hr_tensor *t);

/* For the specs: while on, CPU tensors take the formulations an op uses for GPU tensors where
 * those are composed of other ops (conv1d, the elementwise losses, the max/min and masked_select
 * gradients), so that every build checks their arithmetic against the CPU kernels. Process-wide;
 * off by default. */
bool hr_gpu_formulations_on_cpu(void);
void hr_set_gpu_formulations_on_cpu(bool on);

#ifdef __cplusplus
}
#endif

#endif
