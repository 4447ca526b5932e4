/* hr_cuda_stub.c — stand-ins for the CUDA backend's API in builds without it (no nvcc): device
 * queries report no device and everything else fails with a message saying what is missing.
 * Every entry point of csrc/hr_cuda_api.h must be defined here, or core.so would load with an
 * undefined symbol and `require "hero"` fail: the list at the end of this file refuses to compile
 * when one is missing or its type differs, and CUDA builds compile this file too, for that check
 * alone (csrc/Makefile, stub-check). */
#ifndef HERO_WITH_CUDA
#include "hr_cuda.h"
#include "hr_cuda_api.h"

#define NO_BACKEND "this build of hero has no CUDA backend (rebuild with the CUDA toolkit's nvcc available)"

bool hr_cuda_compiled(void) { return false; }
int hr_cuda_device_count(void) { return 0; }
int hr_cuda_check_device(int dev, const char *op) { return hr_fail(HR_EDEVICE, "%s: device cuda:%d: " NO_BACKEND, op, dev); }
int hr_cuda_device_name(int dev, char *buf, size_t cap)
{
    if (cap) buf[0] = '\0';
    return hr_cuda_check_device(dev, "device_name");
}
int hr_cuda_mem_info(int dev, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    return hr_cuda_check_device(dev, "mem_info");
}
int hr_cuda_synchronize(int dev)
{
    (void)dev;
    return 0; /* nothing can be queued */
}
void hr_cuda_set_allow_tf32(bool on) { (void)on; }
bool hr_cuda_allow_tf32(void) { return false; }
int hr_cuda_memory_stats(int dev, hr_cuda_memstats *out)
{
    *out = (hr_cuda_memstats){0, 0, 0, 0, 0, 0, 0};
    return hr_cuda_check_device(dev, "memory_stats");
}
void hr_cuda_reset_peak(int dev) { (void)dev; }
size_t hr_cuda_empty_cache(int dev)
{
    (void)dev;
    return 0;
}
void *hr_cuda_malloc(int dev, size_t nbytes)
{
    (void)nbytes;
    return hr_fail_null(HR_EDEVICE, "device cuda:%d: " NO_BACKEND, dev);
}
void hr_cuda_free(int dev, void *p, size_t nbytes)
{
    (void)dev;
    (void)p;
    (void)nbytes;
}
hr_storage *hr_cuda_storage_new(size_t nbytes, int dev)
{
    (void)nbytes;
    return hr_fail_null(HR_EDEVICE, "device cuda:%d: " NO_BACKEND, dev);
}
int hr_cuda_memset0(hr_storage *s)
{
    (void)s;
    return hr_fail(HR_EDEVICE, NO_BACKEND);
}
void *hr_cuda_host_alloc(size_t nbytes)
{
    (void)nbytes;
    return hr_fail_null(HR_EDEVICE, "host_alloc: pinned memory needs the CUDA backend; " NO_BACKEND);
}
void hr_cuda_host_free(void *p) { (void)p; }

#define FAIL_T(op, t) hr_cuda_unsupported(op, t)
int hr_cuda_copy_(hr_tensor *dst, const hr_tensor *src)
{
    return FAIL_T("copy_", hr_tensor_device(dst).type == HR_CUDA ? dst : src);
}
int hr_cuda_upload_begin(int dev) { return hr_cuda_check_device(dev, "upload_begin"); }
int hr_cuda_upload_end(int64_t *ticket)
{
    *ticket = 0;
    return hr_fail(HR_EDEVICE, "upload_end: " NO_BACKEND);
}
int hr_cuda_upload_await(int64_t ticket)
{
    (void)ticket;
    return hr_fail(HR_EDEVICE, "upload_await: " NO_BACKEND);
}
int hr_cuda_fill_(hr_tensor *t, const void *value)
{
    (void)value;
    return FAIL_T("fill_", t);
}
int hr_cuda_binary(hr_binary_op op, hr_dtype common, const hr_operand *a, const hr_operand *b, const hr_operand *alpha,
                   hr_tensor *out)
{
    (void)common;
    (void)a;
    (void)b;
    (void)alpha;
    return FAIL_T(hr_binary_op_name(op), out);
}
int hr_cuda_unary(hr_unary_op op, bool clamp, const hr_operand *lo, const hr_operand *hi, const hr_tensor *t,
                  hr_tensor *out)
{
    (void)lo;
    (void)hi;
    (void)out;
    return FAIL_T(clamp ? "clamp" : hr_unary_op_name(op), t);
}
int hr_cuda_where(const hr_tensor *cond, const hr_operand *a, const hr_operand *b, hr_tensor *out)
{
    (void)a;
    (void)b;
    (void)out;
    return FAIL_T("where", cond);
}
int hr_cuda_gelu_backward(const hr_tensor *x, const hr_tensor *g, hr_tensor *gx)
{
    (void)g, (void)gx;
    return FAIL_T("gelu backward", x);
}
int hr_cuda_erf(const hr_tensor *x, const hr_tensor *g, hr_tensor *out)
{
    (void)g, (void)out;
    return FAIL_T("erf", x);
}
int hr_cuda_reduce(hr_cuda_reduce_op op, hr_tensor *t, int dim, hr_tensor *values, hr_tensor *indices)
{
    (void)op;
    (void)dim;
    (void)values;
    (void)indices;
    return FAIL_T("reduction", t);
}
int hr_cuda_softmax(hr_tensor *t, int dim, bool log, hr_tensor *out)
{
    (void)dim;
    (void)out;
    return FAIL_T(log ? "log_softmax" : "softmax", t);
}
int hr_cuda_sum_squares(hr_tensor *const *ts, int n, double *out)
{
    *out = 0;
    return n > 0 ? FAIL_T("clip_grad_norm", ts[0]) : 0;
}
int hr_cuda_all_finite(hr_tensor *const *ts, int n, bool *all_finite)
{
    *all_finite = true;
    return n > 0 ? FAIL_T("all_finite", ts[0]) : 0;
}
int hr_cuda_matmul(hr_tensor *a, hr_tensor *b, bool a_vec, bool b_vec, int nb, const int64_t *bsize, int64_t m,
                   int64_t n, int64_t k, double alpha, double beta, const hr_tensor *bias, hr_tensor *out)
{
    (void)b, (void)a_vec, (void)b_vec, (void)nb, (void)bsize, (void)m, (void)n, (void)k, (void)alpha, (void)beta, (void)bias;
    (void)out;
    return FAIL_T("matmul", a);
}
hr_tensor *hr_cuda_layer_norm(hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps)
{
    (void)weight, (void)bias, (void)eps;
    return hr_cuda_unsupported_null("layer_norm", x);
}
hr_tensor *hr_cuda_embedding(hr_tensor *weight, hr_tensor *indices, int64_t padding_idx)
{
    (void)indices, (void)padding_idx;
    return hr_cuda_unsupported_null("embedding", weight);
}
hr_tensor *hr_cuda_cross_entropy(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                                 double label_smoothing, hr_reduction reduction)
{
    (void)target, (void)classes, (void)ignore_index, (void)label_smoothing, (void)reduction;
    return hr_cuda_unsupported_null("cross_entropy", logits);
}
hr_tensor *hr_cuda_dropout(struct hr_generator *g, hr_tensor *x, double p)
{
    (void)g, (void)p;
    return hr_cuda_unsupported_null("dropout", x);
}
hr_tensor *hr_cuda_dropout_add_layer_norm(struct hr_generator *g, hr_tensor *x, hr_tensor *residual, hr_tensor *weight,
                                          hr_tensor *bias, double eps, double p, bool dropped)
{
    (void)g, (void)residual, (void)weight, (void)bias, (void)eps, (void)p, (void)dropped;
    return hr_cuda_unsupported_null("dropout_add_layer_norm", x);
}
hr_tensor *hr_cuda_attention(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads,
                             double dropout_p, bool training, struct hr_generator *gen)
{
    (void)k, (void)v, (void)mask, (void)heads, (void)dropout_p, (void)training, (void)gen;
    return hr_cuda_unsupported_null("attention", q);
}
hr_tensor *hr_cuda_attention_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training,
                                    struct hr_generator *gen)
{
    (void)mask, (void)heads, (void)dropout_p, (void)training, (void)gen;
    return hr_cuda_unsupported_null("attention_packed", qkv);
}
int hr_cuda_adamw_step(hr_adamw_item *items, int n, double beta1, double beta2, double eps)
{
    (void)beta1, (void)beta2, (void)eps;
    return n > 0 ? FAIL_T("adamw", items[0].param) : 0;
}
int hr_cuda_bernoulli(hr_tensor *t, const uint32_t key[2], uint64_t block0, double p, bool invert)
{
    (void)key, (void)block0, (void)p, (void)invert;
    return FAIL_T("bernoulli_", t);
}
int hr_cuda_uniform(hr_tensor *t, const uint32_t key[2], uint64_t block0, double a, double b)
{
    (void)key, (void)block0, (void)a, (void)b;
    return FAIL_T("uniform_", t);
}
int hr_cuda_index_gather(hr_tensor *dst, const int64_t *dst_stride, const hr_tensor *src, int dim, const hr_tensor *idx,
                         const int64_t *idx_stride, int ndim, const int64_t *size)
{
    (void)dst, (void)dst_stride, (void)dim, (void)idx, (void)idx_stride, (void)ndim, (void)size;
    return FAIL_T("gather", src);
}
int hr_cuda_index_scatter(hr_tensor *dst, int dim, const hr_tensor *idx, const int64_t *idx_stride, const hr_tensor *src,
                          const int64_t *src_stride, int ndim, const int64_t *size, bool add, double alpha)
{
    (void)dim, (void)idx, (void)idx_stride, (void)src, (void)src_stride, (void)ndim, (void)size, (void)alpha;
    return FAIL_T(add ? "scatter_add" : "scatter", dst);
}
int hr_cuda_masked_fill_(hr_tensor *t, const hr_tensor *mask, const int64_t *mask_stride, const void *value)
{
    (void)mask, (void)mask_stride, (void)value;
    return FAIL_T("masked_fill_", t);
}
int hr_cuda_take(hr_tensor *out, const hr_tensor *src, const int64_t *src_stride, int ndim, const int64_t *size,
                 const hr_tensor *pos)
{
    (void)out, (void)src_stride, (void)ndim, (void)size, (void)pos;
    return FAIL_T("masked_select", src);
}
bool hr_cuda_nccl_available(void) { return false; }
int hr_cuda_nccl_unique_id(unsigned char *out)
{
    (void)out;
    return hr_fail(HR_EDEVICE, "hero.dist: collectives on CUDA tensors: " NO_BACKEND);
}
int hr_cuda_nccl_init(int rank, int world_size, const unsigned char *id, int dev)
{
    (void)rank, (void)world_size, (void)id;
    return hr_cuda_check_device(dev, "hero.dist.init");
}
int hr_cuda_nccl_device(void) { return -1; }
int hr_cuda_nccl_all_reduce_(hr_tensor *t, int op)
{
    (void)t, (void)op;
    return hr_cuda_nccl_unique_id(NULL);
}
int hr_cuda_nccl_broadcast_(hr_tensor *t, int root)
{
    (void)t, (void)root;
    return hr_cuda_nccl_unique_id(NULL);
}
int hr_cuda_nccl_all_gather(const hr_tensor *in, hr_tensor *out)
{
    (void)in, (void)out;
    return hr_cuda_nccl_unique_id(NULL);
}
void hr_cuda_nccl_finalize(void) {}

/* An alias must name a function defined in this translation unit, with the same type: one per
 * entry point makes a missing or mistyped stand-in a compile error rather than a load error. */
#define DEFINED_HERE(kind, ret, name, params, args)                                                                  \
    static ret stub_of_##name params __attribute__((alias("hr_cuda_" #name), unused));
HR_CUDA_API_LIST(DEFINED_HERE)
#else
/* ISO C forbids an empty translation unit. */
typedef int hr_cuda_stub_unused;
#endif
