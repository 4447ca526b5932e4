/*
 * hr_core.h — the Lua-free core of hero: errors, dtypes, devices, storage and tensor headers.
 *
 * Everything below the Lua bindings (csrc/l_*.c) includes this header and never lua.h.
 * Conventions used by every core function:
 *   - functions returning a pointer return NULL on failure, functions returning int return 0 on
 *     success and -1 on failure; in both cases the reason is in hr_last_error() (thread-local);
 *   - dimensions inside the core are 0-based (the bindings translate Lua's 1-based numbers);
 *   - sizes and strides are counted in elements, never bytes.
 */
#ifndef HR_CORE_H
#define HR_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Zeroed memory for count objects of size bytes (NULL on overflow or exhaustion). glibc's calloc
 * bypasses its per-thread cache of small chunks; tensors, storages and graph nodes are made and
 * released by the hundred per step, so they come from malloc and are cleared here. */
static inline void *hr_zalloc(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size) return NULL;
    size_t n = count * size;
    void *p = malloc(n ? n : 1);
    /* kept apart, or the compiler fuses malloc and memset back into calloc */
    __asm__("" : "+r"(p));
    if (p) memset(p, 0, n);
    return p;
}

/* Objects of a fixed size per kind, zeroed, kept on per-thread free lists when released (hr_pool.c). An
 * object of a kind must be at least as big as the kind's first request and pooled memory comes
 * from malloc: objects made with calloc may be released to a pool. */
typedef enum { HR_POOL_TENSOR, HR_POOL_STORAGE, HR_POOL_NODE, HR_POOL_KINDS } hr_pool_kind;
void *hr_pool_zalloc(hr_pool_kind kind, size_t size);
void hr_pool_free(hr_pool_kind kind, void *obj);

#define HR_MAX_DIMS 8

/* ------------------------------------------------------------------ errors */

typedef enum {
    HR_OK = 0,
    HR_EINVAL,   /* bad argument: shape, dtype, range, ... */
    HR_ENOMEM,   /* an allocation failed; the bindings collect garbage and retry once */
    HR_EIO,      /* file system error */
    HR_EFORMAT,  /* a file or buffer is corrupt, truncated or lies about itself */
    HR_EDEVICE,  /* op not available on this device (e.g. CUDA not compiled in) */
    HR_EFREED,   /* a freed tensor was used */
} hr_errcode;

/* Records an error for the calling thread (printf-style) and returns -1 so callers can write
 * `return hr_fail(HR_EINVAL, "...")`. */
int hr_fail(hr_errcode code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same as hr_fail but returns NULL, for pointer-returning functions. */
void *hr_fail_null(hr_errcode code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends "prefix: " to the current error message (adds context on the way up). */
void hr_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *hr_last_error(void);
hr_errcode hr_last_errcode(void);
void hr_clear_error(void);

/* ------------------------------------------------------------------ dtypes */

typedef enum {
    HR_F32 = 0,
    HR_F64,
    HR_BF16,
    HR_F16,
    HR_I64,
    HR_I32,
    HR_U8,
    HR_BOOL,
    HR_NDTYPES
} hr_dtype;

size_t hr_dtype_size(hr_dtype dt);
const char *hr_dtype_name(hr_dtype dt);          /* "f32", "f64", "bf16", "f16", "i64", "i32", "u8", "bool" */
int hr_dtype_from_name(const char *name, hr_dtype *out); /* accepts the names above and aliases
                                                            (float32, float, double, half, long, int, byte, ...) */
bool hr_dtype_is_float(hr_dtype dt);             /* f32 f64 bf16 f16 */
bool hr_dtype_is_int(hr_dtype dt);               /* i64 i32 u8 bool */
/* Type promotion for binary ops (PyTorch's rules without the 0-dim special case). */
hr_dtype hr_dtype_promote(hr_dtype a, hr_dtype b);

/* Half-precision conversions (round to nearest even; NaN preserved). */
float hr_f16_to_f32(uint16_t h);
uint16_t hr_f32_to_f16(float f);
float hr_bf16_to_f32(uint16_t h);
uint16_t hr_f32_to_bf16(float f);

/* Scalar access through a double, for generic (slow) paths, printing and item(). i64 values beyond
 * 2^53 lose precision here; exact integer paths use hr_load_i64/hr_store_i64. */
double hr_load_f64(const void *p, hr_dtype dt);
void hr_store_f64(void *p, hr_dtype dt, double v);
int64_t hr_load_i64(const void *p, hr_dtype dt);
void hr_store_i64(void *p, hr_dtype dt, int64_t v);

/* ------------------------------------------------------------------ devices */

typedef enum { HR_CPU = 0, HR_CUDA = 1 } hr_device_type;
typedef struct {
    hr_device_type type;
    int index; /* CUDA ordinal; 0 for the CPU */
} hr_device;

static inline hr_device hr_cpu(void) { hr_device d = {HR_CPU, 0}; return d; }
static inline bool hr_device_eq(hr_device a, hr_device b) { return a.type == b.type && a.index == b.index; }
/* Writes "cpu" or "cuda:N" into buf (at least 16 bytes). */
const char *hr_device_str(hr_device d, char *buf, size_t cap);
int hr_device_parse(const char *s, hr_device *out);

/* ------------------------------------------------------------------ storage */

typedef enum {
    HR_STORAGE_HEAP = 0, /* aligned malloc, freed with hr_free_bytes */
    HR_STORAGE_MMAP,     /* a mapped file region (zero-copy load); munmap on release */
    HR_STORAGE_EXTERNAL, /* borrowed: release calls the destructor (device allocators, views of buffers) */
} hr_storage_kind;

typedef struct hr_storage {
    void *data;
    size_t nbytes;
    hr_device device;
    hr_storage_kind kind;
    int refcount;            /* touched only by the thread owning the tensors (the Lua thread) */
    unsigned version;        /* bumped by every in-place write, shared by all views (autograd checks) */
    void *map_base;          /* HR_STORAGE_MMAP: the mapping to munmap */
    size_t map_len;
    void (*destroy)(struct hr_storage *); /* HR_STORAGE_EXTERNAL */
    void *destroy_ctx;
    /* A device storage uploaded whole from the host, small and of integers (an index list, a
     * mask): a host storage holding the same bytes, and the version they were taken at; any
     * later write to the device storage bumps its version and so retires them (hr_mirror.c). */
    struct hr_storage *host_mirror;
    unsigned mirror_version;
} hr_storage;

/* 64-byte aligned host allocation; the bytes are counted in hr_live_bytes(). */
void *hr_alloc_bytes(size_t nbytes);
void hr_free_bytes(void *p, size_t nbytes);
/* Bytes currently held by live tensor storages (all devices). */
size_t hr_live_bytes(void);
/* Host blocks kept for reuse after release (not counted as live), and a way to return them to
 * the system (returns the bytes released). */
size_t hr_cached_bytes(void);
/* Sets the most bytes of released big blocks kept for reuse (0: the default, a quarter of the
 * physical memory and at least 1 GiB), returning cached blocks over it to the system; returns the
 * previous limit. */
size_t hr_set_cache_limit(size_t bytes);
size_t hr_empty_cache(void);
/* The host allocator's counters: bytes live and cached now, the highest live total since start
 * (or the last hr_reset_peak_live), requests of big blocks served from cached pages (hits) or not
 * (misses), bytes the cache returned to the system, bytes of fresh pages asked of the system, and
 * whether big blocks are mappings of their own whose pages serve requests of other sizes (not in
 * AddressSanitizer builds, where every block comes from malloc). */
typedef struct {
    size_t live, peak_live, cached, cached_blocks, cache_hits, cache_misses, evicted, fresh;
    size_t small_cached, small_cached_blocks; /* the part of cached / cached_blocks under HR_BIG_BLOCK */
    size_t cache_limit;                       /* the most bytes of big blocks kept (hr_set_cache_limit) */
    bool mapped_blocks;
} hr_host_memory_stats_t;
void hr_host_memory_stats(hr_host_memory_stats_t *out);
void hr_reset_peak_live(void);

hr_storage *hr_storage_new(size_t nbytes, hr_device dev);    /* uninitialised bytes */
hr_storage *hr_storage_new_mmap(void *map_base, size_t map_len, void *data, size_t nbytes);
void hr_storage_retain(hr_storage *s);
void hr_storage_release(hr_storage *s);

/* ------------------------------------------------------------------ tensors */

/* An autograd graph node (defined in hr_autograd.c); tensors hold a reference to the node that
 * produced them. Releasing NULL is a no-op. */
struct hr_node;
void hr_node_release(struct hr_node *node);

typedef struct hr_tensor {
    hr_storage *storage;        /* NULL once freed */
    hr_dtype dtype;
    int ndim;                   /* 0 for a scalar tensor */
    int64_t size[HR_MAX_DIMS];
    int64_t stride[HR_MAX_DIMS];
    int64_t offset;             /* in elements, into storage */
    int refcount;
    /* autograd */
    bool requires_grad;
    struct hr_tensor *grad;     /* owned reference or NULL */
    struct hr_node *grad_fn;    /* owned reference or NULL */
    /* backward engine scratch for a leaf while a leaf-ready hook is set (hr_autograd.h): the walk
     * that counted it and how many gradients it still waits for */
    unsigned leaf_visit;
    int leaf_pending;
} hr_tensor;

static inline hr_device hr_tensor_device(const hr_tensor *t) { return t->storage->device; }
/* Every in-place write calls this, so autograd notices tensors modified after being saved. */
static inline void hr_tensor_bump_version(hr_tensor *t) { t->storage->version++; }
static inline void *hr_tensor_data(const hr_tensor *t)
{
    return (char *)t->storage->data + (size_t)t->offset * hr_dtype_size(t->dtype);
}
int64_t hr_tensor_numel(const hr_tensor *t);
bool hr_tensor_is_contiguous(const hr_tensor *t);
/* Fails with HR_EFREED naming `what` if t is NULL or its storage was freed. */
int hr_tensor_check_live(const hr_tensor *t, const char *what);
/* "2x3" (or "scalar"), into buf. */
const char *hr_shape_str(int ndim, const int64_t *size, char *buf, size_t cap);
/* "f32 cpu 2x3" description used in error messages. */
const char *hr_tensor_desc(const hr_tensor *t, char *buf, size_t cap);

/* New contiguous tensor with uninitialised (empty) or zeroed (zeros) data. */
hr_tensor *hr_tensor_empty(int ndim, const int64_t *size, hr_dtype dt, hr_device dev);
hr_tensor *hr_tensor_zeros(int ndim, const int64_t *size, hr_dtype dt, hr_device dev);
hr_tensor *hr_tensor_empty_like(const hr_tensor *t);
/* A header over an existing storage (retained). Checks that the view fits in the storage. */
hr_tensor *hr_tensor_view_of(hr_storage *s, hr_dtype dt, int ndim, const int64_t *size,
                             const int64_t *stride, int64_t offset);

void hr_tensor_retain(hr_tensor *t);
void hr_tensor_release(hr_tensor *t);   /* drops a reference; frees header (and storage ref) at zero */
/* Releases the storage now even if the header is still referenced (used by :free()). */
void hr_tensor_free_storage(hr_tensor *t);

/* After dst (on a GPU) was written whole from src (on the host): when dst is a small integer or
 * bool tensor covering all of its storage, keeps a host copy of its bytes beside it. Reading such
 * a tensor back (its values, an index check of an op) then needs no wait for the device. Never
 * fails: without memory there is simply no mirror. */
void hr_mirror_upload(hr_tensor *dst, const hr_tensor *src);
/* t's values as a host tensor over its storage's mirror (same dtype, shape and strides), or NULL
 * when t has no mirror or the device storage was written since. A new reference. */
hr_tensor *hr_mirror_view(const hr_tensor *t);

/* Contiguous row-major strides for a shape. */
void hr_contiguous_strides(int ndim, const int64_t *size, int64_t *stride);
/* Normalises a possibly negative 0-based dimension; fails naming op if out of range. */
int hr_wrap_dim(const char *op, int64_t dim, int ndim, int *out);

/* ------------------------------------------------------------------ views (share storage) */

hr_tensor *hr_view_narrow(hr_tensor *t, int dim, int64_t start, int64_t length);
hr_tensor *hr_view_select(hr_tensor *t, int dim, int64_t index);
hr_tensor *hr_view_transpose(hr_tensor *t, int d0, int d1);
hr_tensor *hr_view_permute(hr_tensor *t, const int *perm);
/* size may contain one -1; fails if t's strides cannot express the new shape without a copy. */
hr_tensor *hr_view_reshape_nocopy(hr_tensor *t, int ndim, const int64_t *size);
hr_tensor *hr_view_expand(hr_tensor *t, int ndim, const int64_t *size); /* -1 keeps a size */
hr_tensor *hr_view_squeeze(hr_tensor *t, int dim); /* dim < 0: every size-1 dim */
hr_tensor *hr_view_unsqueeze(hr_tensor *t, int dim);
hr_tensor *hr_view_alias(hr_tensor *t); /* same view, new header */

/* Copy if needed: returns t itself (retained) when already contiguous. */
hr_tensor *hr_contiguous(hr_tensor *t);
/* t's values in a contiguous tensor in host memory, for code that reads the bytes: t retained when
 * it already is one, else a copy (from the device for a CUDA tensor). */
hr_tensor *hr_host_contiguous(const hr_tensor *t);
/* reshape = view when possible, else contiguous copy then view. */
hr_tensor *hr_reshape(hr_tensor *t, int ndim, const int64_t *size);
/* Elementwise copy with broadcasting of src to dst's shape and dtype conversion. */
int hr_copy_(hr_tensor *dst, const hr_tensor *src);
/* New contiguous tensor of dtype dt (a copy, even when dt == t->dtype). */
hr_tensor *hr_cast(const hr_tensor *t, hr_dtype dt);
/* t's values as a contiguous tensor of dtype dt for reading only: t itself (retained) when it
 * already is one, else a converted copy. The backward functions read incoming gradients this way
 * (the caller must not write into the result: it may be the gradient another node holds). */
hr_tensor *hr_readable_as(const hr_tensor *t, hr_dtype dt);
/* Fills every element with v (converted to t's dtype). */
int hr_fill_(hr_tensor *t, double v);
/* Same with an exact 64-bit integer value (converted to t's dtype). */
int hr_fill_i64_(hr_tensor *t, int64_t v);

/* ------------------------------------------------------------------ broadcasting + iteration */

/* Broadcast shape of a and b into out (ndim and size); fails with both shapes in the message. */
int hr_broadcast_shape(const char *op, int na, const int64_t *sa, int nb, const int64_t *sb,
                       int *nout, int64_t *sout);
/* Strides of t viewed as the broadcast shape (0 on broadcast dims). t's ndim must be <= ndim. */
void hr_broadcast_strides(const hr_tensor *t, int ndim, const int64_t *size, int64_t *stride);

/*
 * A strided walk over up to HR_ITER_MAX operands sharing one shape. The walk coalesces dims where
 * every operand is contiguous across them, then calls `kernel` on the innermost run:
 *   kernel(ctx, n, ptrs, strides_in_bytes)
 * where ptrs[i] points at operand i's first element of the run. Used by every generic CPU loop.
 */
#define HR_ITER_MAX 4
typedef void (*hr_iter_kernel)(void *ctx, int64_t n, char **ptrs, const int64_t *byte_strides);
typedef struct {
    int nops;
    int ndim;
    int64_t size[HR_MAX_DIMS];
    int64_t stride[HR_ITER_MAX][HR_MAX_DIMS]; /* element strides per operand */
    char *base[HR_ITER_MAX];
    size_t elsize[HR_ITER_MAX];
} hr_iter;
/* Operand strides must already be broadcast to (ndim, size). */
void hr_iter_init(hr_iter *it, int ndim, const int64_t *size);
void hr_iter_add(hr_iter *it, void *base, size_t elsize, const int64_t *stride);
/* Runs the walk; with parallel=true large walks are split over the thread pool along the outer
 * dimension (kernels must then be free of shared mutable state). */
void hr_iter_run(hr_iter *it, hr_iter_kernel kernel, void *ctx, bool parallel);

/* ------------------------------------------------------------------ threads (hr_threads.c) */

#define HR_MAX_THREADS 256        /* the most threads a parallel region runs on */
void hr_set_num_threads(int n);  /* sets OpenBLAS's pool too */
int hr_get_num_threads(void);
/* Runs fn(ctx, begin, end) over [0, n) split in chunks of at least `grain` items across the pool.
 * Serial when n < 2*grain or one thread is set. */
typedef void (*hr_parallel_fn)(void *ctx, int64_t begin, int64_t end);
void hr_parallel_for(int64_t n, int64_t grain, hr_parallel_fn fn, void *ctx);
/* Runs fn(ctx, i, i + 1) for every i in [0, n), each item taken in order by whichever thread of
 * the pool is free: a thread held up (by the system, or by a slower item) costs the others no
 * waiting. Serial with one thread set or inside another parallel region. */
void hr_parallel_deal(int64_t n, hr_parallel_fn fn, void *ctx);
/* The calling thread's slot in the pool: 0 on the thread that started the parallel region (and
 * on any thread outside the pool), 1 .. hr_get_num_threads() - 1 on the workers taking part, so
 * that a parallel region can give each thread its own scratch. */
int hr_parallel_slot(void);

#endif
