/* hr_cuda_api.h — the CUDA backend's entry points as one list, so that the table the backend
 * exports (csrc/cuda/api_table.c) and the forwarding functions of the core module
 * (csrc/hr_cuda_dispatch.c) cannot drift apart.
 *
 * X(kind, ret, name, params, args), kind saying what a call returns while the backend cannot be
 * loaded: INT (an error naming why), PTR (NULL, same error), ZERO (0: no devices, nothing cached),
 * VOID, FALSE, NEG (-1: none). */
#define HR_CUDA_API_LIST(X)                                                                                        \
    X(ZERO, int, device_count, (void), ())                                                                          \
    X(INT, int, check_device, (int dev, const char *op), (dev, op))                                                \
    X(INT, int, device_name, (int dev, char *buf, size_t cap), (dev, buf, cap))                                    \
    X(INT, int, mem_info, (int dev, size_t *free_bytes, size_t *total_bytes), (dev, free_bytes, total_bytes))      \
    X(INT, int, synchronize, (int dev), (dev))                                                                     \
    X(VOID, void, set_allow_tf32, (bool on), (on))                                                                 \
    X(FALSE, bool, allow_tf32, (void), ())                                                                         \
    X(INT, int, memory_stats, (int dev, hr_cuda_memstats *out), (dev, out))                                        \
    X(VOID, void, reset_peak, (int dev), (dev))                                                                    \
    X(ZERO, size_t, empty_cache, (int dev), (dev))                                                                 \
    X(PTR, void *, malloc, (int dev, size_t nbytes), (dev, nbytes))                                                \
    X(VOID, void, free, (int dev, void *p, size_t nbytes), (dev, p, nbytes))                                       \
    X(PTR, hr_storage *, storage_new, (size_t nbytes, int dev), (nbytes, dev))                                     \
    X(INT, int, memset0, (hr_storage *s), (s))                                                                     \
    X(PTR, void *, host_alloc, (size_t nbytes), (nbytes))                                                          \
    X(VOID, void, host_free, (void *p), (p))                                                                       \
    X(INT, int, copy_, (hr_tensor *dst, const hr_tensor *src), (dst, src))                                         \
    X(INT, int, upload_begin, (int dev), (dev))                                                                    \
    X(INT, int, upload_end, (int64_t *ticket), (ticket))                                                           \
    X(INT, int, upload_await, (int64_t ticket), (ticket))                                                          \
    X(INT, int, fill_, (hr_tensor *t, const void *value), (t, value))                                              \
    X(INT, int, binary,                                                                                            \
      (hr_binary_op op, hr_dtype common, const hr_operand *a, const hr_operand *b, const hr_operand *alpha,        \
       hr_tensor *out),                                                                                            \
      (op, common, a, b, alpha, out))                                                                              \
    X(INT, int, unary,                                                                                             \
      (hr_unary_op op, bool clamp, const hr_operand *lo, const hr_operand *hi, const hr_tensor *t, hr_tensor *out), \
      (op, clamp, lo, hi, t, out))                                                                                 \
    X(INT, int, where, (const hr_tensor *cond, const hr_operand *a, const hr_operand *b, hr_tensor *out),          \
      (cond, a, b, out))                                                                                           \
    X(INT, int, gelu_backward, (const hr_tensor *x, const hr_tensor *g, hr_tensor *gx), (x, g, gx))                \
    X(INT, int, erf, (const hr_tensor *x, const hr_tensor *g, hr_tensor *out), (x, g, out))                        \
    X(INT, int, reduce, (hr_cuda_reduce_op op, hr_tensor *t, int dim, hr_tensor *values, hr_tensor *indices),     \
      (op, t, dim, values, indices))                                                                               \
    X(INT, int, softmax, (hr_tensor *t, int dim, bool log, hr_tensor *out), (t, dim, log, out))                    \
    X(INT, int, sum_squares, (hr_tensor *const *ts, int n, double *out), (ts, n, out))                             \
    X(INT, int, all_finite, (hr_tensor *const *ts, int n, bool *all_finite), (ts, n, all_finite))                  \
    X(INT, int, matmul,                                                                                            \
      (hr_tensor *a, hr_tensor *b, bool a_vec, bool b_vec, int nb, const int64_t *bsize, int64_t m, int64_t n,     \
       int64_t k, double alpha, double beta, const hr_tensor *bias, hr_tensor *out),                               \
      (a, b, a_vec, b_vec, nb, bsize, m, n, k, alpha, beta, bias, out))                                            \
    X(PTR, hr_tensor *, layer_norm, (hr_tensor *x, hr_tensor *weight, hr_tensor *bias, double eps),                \
      (x, weight, bias, eps))                                                                                      \
    X(PTR, hr_tensor *, embedding, (hr_tensor *weight, hr_tensor *indices, int64_t padding_idx),                   \
      (weight, indices, padding_idx))                                                                              \
    X(PTR, hr_tensor *, cross_entropy,                                                                             \
      (hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index, double label_smoothing,       \
       hr_reduction reduction),                                                                                    \
      (logits, target, classes, ignore_index, label_smoothing, reduction))                                         \
    X(PTR, hr_tensor *, dropout, (struct hr_generator *g, hr_tensor *x, double p), (g, x, p))                      \
    X(PTR, hr_tensor *, dropout_add_layer_norm,                                                                    \
      (struct hr_generator *g, hr_tensor *x, hr_tensor *residual, hr_tensor *weight, hr_tensor *bias, double eps,  \
       double p, bool dropped),                                                                                    \
      (g, x, residual, weight, bias, eps, p, dropped))                                                             \
    X(PTR, hr_tensor *, attention,                                                                                 \
      (hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads, double dropout_p, bool training, \
       struct hr_generator *gen),                                                                                  \
      (q, k, v, mask, heads, dropout_p, training, gen))                                                            \
    X(PTR, hr_tensor *, attention_packed,                                                                          \
      (hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training, struct hr_generator *gen), \
      (qkv, mask, heads, dropout_p, training, gen))                                                                \
    X(INT, int, adamw_step, (hr_adamw_item *items, int n, double beta1, double beta2, double eps),                 \
      (items, n, beta1, beta2, eps))                                                                               \
    X(INT, int, bernoulli, (hr_tensor *t, const uint32_t key[2], uint64_t block0, double p, bool invert),          \
      (t, key, block0, p, invert))                                                                                 \
    X(INT, int, uniform, (hr_tensor *t, const uint32_t key[2], uint64_t block0, double a, double b),               \
      (t, key, block0, a, b))                                                                                      \
    X(INT, int, index_gather,                                                                                      \
      (hr_tensor *dst, const int64_t *dst_stride, const hr_tensor *src, int dim, const hr_tensor *idx,             \
       const int64_t *idx_stride, int ndim, const int64_t *size),                                                  \
      (dst, dst_stride, src, dim, idx, idx_stride, ndim, size))                                                    \
    X(INT, int, index_scatter,                                                                                     \
      (hr_tensor *dst, int dim, const hr_tensor *idx, const int64_t *idx_stride, const hr_tensor *src,             \
       const int64_t *src_stride, int ndim, const int64_t *size, bool add, double alpha),                          \
      (dst, dim, idx, idx_stride, src, src_stride, ndim, size, add, alpha))                                        \
    X(INT, int, masked_fill_, (hr_tensor *t, const hr_tensor *mask, const int64_t *mask_stride, const void *value),\
      (t, mask, mask_stride, value))                                                                               \
    X(INT, int, take,                                                                                              \
      (hr_tensor *out, const hr_tensor *src, const int64_t *src_stride, int ndim, const int64_t *size,             \
       const hr_tensor *pos),                                                                                      \
      (out, src, src_stride, ndim, size, pos))                                                                     \
    X(FALSE, bool, nccl_available, (void), ())                                                                     \
    X(INT, int, nccl_unique_id, (unsigned char *out), (out))                                                       \
    X(INT, int, nccl_init, (int rank, int world_size, const unsigned char *id, int dev), (rank, world_size, id, dev)) \
    X(NEG, int, nccl_device, (void), ())                                                                           \
    X(INT, int, nccl_all_reduce_, (hr_tensor *t, int op), (t, op))                                                 \
    X(INT, int, nccl_broadcast_, (hr_tensor *t, int root), (t, root))                                              \
    X(INT, int, nccl_all_gather, (const hr_tensor *in, hr_tensor *out), (in, out))                                 \
    X(VOID, void, nccl_finalize, (void), ())

/* The table the backend module exports under HR_CUDA_API_SYMBOL. A stale backend next to a newer
 * core is refused by its signature, the whole list above as text (every entry's return type, name
 * and parameters, in order): any change to the list changes it, with no number to remember to
 * bump. HR_CUDA_API_VERSION versions the table's layout before the list (version, signature). */
#define HR_CUDA_API_VERSION 4
#define HR_CUDA_API_SYMBOL "hr_cuda_backend_api"
#define HR_CUDA_API_FIELD(kind, ret, name, params, args) ret(*name) params;
#define HR_CUDA_API_TEXT(kind, ret, name, params, args) #ret " " #name #params ";"
#define HR_CUDA_API_SIGNATURE HR_CUDA_API_LIST(HR_CUDA_API_TEXT)
typedef struct {
    int version;
    const char *signature; /* HR_CUDA_API_SIGNATURE of the backend's build */
    HR_CUDA_API_LIST(HR_CUDA_API_FIELD)
} hr_cuda_api;
