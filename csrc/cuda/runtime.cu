/* cuda/runtime.cu — devices, streams, cuBLAS handles, the caching allocator, device storages,
 * pinned host memory, copies between any devices and fills. */
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda/common.cuh"

namespace hrc {

/* ------------------------------------------------------------------ errors */

int check(cudaError_t e, const char *op, const char *what)
{
    if (e == cudaSuccess) return 0;
    (void)cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    return hr_fail(e == cudaErrorMemoryAllocation ? HR_ENOMEM : HR_EDEVICE, "%s: %s failed: %s (%s)", op, what,
                   cudaGetErrorName(e), cudaGetErrorString(e));
}

int check_launch(const char *op) { return check(cudaGetLastError(), op, "kernel launch"); }

int check_blas(cublasStatus_t s, const char *op, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    return hr_fail(s == CUBLAS_STATUS_ALLOC_FAILED ? HR_ENOMEM : HR_EDEVICE, "%s: %s failed: %s", op, what,
                   cublasGetStatusString(s));
}

/* ------------------------------------------------------------------ per-device state */

struct DeviceState {
    std::mutex lock;
    std::unordered_map<size_t, std::vector<void *>> free_blocks; /* size class -> cached blocks */
    size_t allocated = 0, reserved = 0, peak = 0, cached = 0;
    int64_t num_allocs = 0, num_cuda_mallocs = 0, num_oom_retries = 0;
    /* blocks of tensors uploaded on the upload stream (cuda/upload.cu), apart from the others: each
     * free one with the event recorded on the compute stream when it was freed, so that the next
     * upload into it waits for that point only, never for the whole compute queue */
    struct UploadBlock {
        void *p;
        cudaEvent_t freed;
    };
    std::unordered_map<size_t, std::vector<UploadBlock>> upload_free;
    size_t upload_cached = 0;
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    cublasLtHandle_t blas_lt = nullptr;
    bool used = false;
};

static std::once_flag count_once;
static int device_total = 0;
static DeviceState *states = nullptr;
static bool tf32_allowed = false;

/* cudaGetDeviceCount fails without a driver or a GPU: that is "no device", never an abort. */
static void count_devices()
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        n = 0;
    }
    device_total = n;
    if (n > 0) states = new DeviceState[n];
}

static int ndevices()
{
    std::call_once(count_once, count_devices);
    return device_total;
}

int use_device(int dev, const char *op)
{
    if (hr_cuda_check_device(dev, op)) return -1;
    return check(cudaSetDevice(dev), op, "cudaSetDevice");
}

cudaStream_t stream(int dev)
{
    if (use_device(dev, "cuda")) return nullptr;
    DeviceState &s = states[dev];
    std::lock_guard<std::mutex> g(s.lock);
    if (!s.stream) {
        cudaStream_t st;
        if (check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cuda", "cudaStreamCreate")) return nullptr;
        s.stream = st;
    }
    s.used = true;
    return s.stream;
}

cublasHandle_t blas(int dev)
{
    cudaStream_t st = stream(dev);
    if (!st) return nullptr;
    DeviceState &s = states[dev];
    std::lock_guard<std::mutex> g(s.lock);
    if (!s.blas) {
        cublasHandle_t h;
        if (check_blas(cublasCreate(&h), "cuda", "cublasCreate")) return nullptr;
        if (check_blas(cublasSetStream(h, st), "cuda", "cublasSetStream")) {
            cublasDestroy(h);
            return nullptr;
        }
        s.blas = h;
    }
    /* f32 products are plain f32 unless TF32 was allowed explicitly */
    if (check_blas(cublasSetMathMode(s.blas, tf32_allowed ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "cuda",
                   "cublasSetMathMode"))
        return nullptr;
    return s.blas;
}

cublasLtHandle_t blas_lt(int dev)
{
    if (use_device(dev, "cuda")) return nullptr;
    DeviceState &s = states[dev];
    std::lock_guard<std::mutex> g(s.lock);
    if (!s.blas_lt) {
        cublasLtHandle_t h;
        if (check_blas(cublasLtCreate(&h), "cuda", "cublasLtCreate")) return nullptr;
        s.blas_lt = h;
    }
    return s.blas_lt;
}

int sync(int dev, const char *op)
{
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    return check(cudaStreamSynchronize(st), op, "cudaStreamSynchronize");
}

/* ------------------------------------------------------------------ staged uploads */

/*
 * A copy from ordinary (pageable) host memory to the device made the host wait for the device's
 * stream to drain: the caller may free its buffer as soon as the call returns. Index lists made
 * during a forward pass, AdamW's parameter table and tensors made from Lua values are small, and
 * each such wait left the GPU without queued work until the host had launched the next kernels.
 * Uploads up to kStageMax bytes now go through a pinned ring per device: the bytes are copied into
 * the ring at once (so the caller's buffer is free at once), the transfer is queued on the stream
 * behind the work before it, and an event recorded behind it tells when that part of the ring may
 * be written again. The host waits only when the ring comes round to a part whose transfer the
 * device has not reached yet (4 MiB of uploads later).
 */
constexpr size_t kStageRing = (size_t)4 << 20;
constexpr size_t kStageMax = (size_t)1 << 20;
constexpr size_t kStageAlign = 256;
constexpr int kStagePending = 256;

struct StagePending {
    size_t begin, end;
    cudaEvent_t done;
};

struct Stage {
    std::mutex lock;
    char *ring = nullptr;
    bool unavailable = false; /* the pinned ring could not be had: uploads wait as before */
    size_t head = 0;
    StagePending pending[kStagePending]; /* transfers not yet seen done, oldest first */
    int npending = 0;
    std::vector<cudaEvent_t> spare;
};

static Stage *stages = nullptr;
static std::once_flag stages_once;

/* Drops the pending transfers the device has finished (their events go back to the spares), first
 * waiting for those that overlap [begin, end) (an empty range waits for none). All of a device's
 * uploads go to its one stream, so they finish in the order they were queued: waiting for the
 * newest overlapping one covers the older ones, and polling stops at the first one not done (a
 * device running far behind would otherwise cost a driver call per pending transfer per upload). */
static int settle_pending(Stage &s, size_t begin, size_t end, const char *op)
{
    int wait_upto = -1;
    for (int i = 0; i < s.npending; i++)
        if (s.pending[i].begin < end && begin < s.pending[i].end) wait_upto = i;
    int done = 0;
    if (wait_upto >= 0) {
        if (check(cudaEventSynchronize(s.pending[wait_upto].done), op, "cudaEventSynchronize")) return -1;
        done = wait_upto + 1;
    }
    int rc = 0;
    while (done < s.npending) {
        cudaError_t e = cudaEventQuery(s.pending[done].done);
        if (e == cudaErrorNotReady) {
            (void)cudaGetLastError();
            break;
        }
        if (check(e, op, "cudaEventQuery")) {
            rc = -1; /* this one's event is not trusted again: it stays pending */
            break;
        }
        done++;
    }
    for (int i = 0; i < done; i++) s.spare.push_back(s.pending[i].done);
    memmove(s.pending, s.pending + done, sizeof(StagePending) * (size_t)(s.npending - done));
    s.npending -= done;
    return rc;
}

int stage_to_device(int dev, void *dst, const void *src, size_t nbytes, const char *op)
{
    if (nbytes == 0) return 0;
    if (nbytes > kStageMax) return 1;
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    std::call_once(stages_once, [] { stages = new Stage[device_total]; });
    Stage &s = stages[dev];
    std::lock_guard<std::mutex> g(s.lock);
    if (s.unavailable) return 1;
    if (!s.ring) {
        void *p = nullptr;
        if (cudaHostAlloc(&p, kStageRing, cudaHostAllocPortable) != cudaSuccess) {
            (void)cudaGetLastError();
            s.unavailable = true;
            return 1;
        }
        s.ring = (char *)p;
    }
    size_t need = (nbytes + kStageAlign - 1) / kStageAlign * kStageAlign;
    size_t begin = s.head + need <= kStageRing ? s.head : 0;
    if (settle_pending(s, begin, begin + need, op)) return -1;
    /* a full list: wait for its oldest transfer only (pending ranges never overlap: each waited
     * for the older ones under it when it was placed) */
    if (s.npending == kStagePending && settle_pending(s, s.pending[0].begin, s.pending[0].end, op)) return -1;
    cudaEvent_t ev;
    if (!s.spare.empty()) {
        ev = s.spare.back();
        s.spare.pop_back();
    } else if (check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), op, "cudaEventCreate")) {
        return -1;
    }
    memcpy(s.ring + begin, src, nbytes);
    if (check(cudaMemcpyAsync(dst, s.ring + begin, nbytes, cudaMemcpyHostToDevice, st), op, "cudaMemcpyAsync") ||
        check(cudaEventRecord(ev, st), op, "cudaEventRecord")) {
        /* the transfer may still be queued: wait for the stream before the ring is used again */
        (void)cudaStreamSynchronize(st);
        (void)cudaGetLastError();
        s.spare.push_back(ev);
        return -1;
    }
    s.pending[s.npending++] = StagePending{begin, begin + need, ev};
    s.head = begin + need;
    return 0;
}

int same_device(const char *op, int n, const hr_tensor *const *ts)
{
    const hr_tensor *first = nullptr;
    for (int i = 0; i < n; i++) {
        if (!ts[i]) continue;
        if (!first) {
            first = ts[i];
            continue;
        }
        if (!hr_device_eq(hr_tensor_device(first), hr_tensor_device(ts[i]))) {
            char a[160], b[160];
            return hr_fail(HR_EDEVICE, "%s: expected every tensor on one device, got %s and %s", op,
                           hr_tensor_desc(first, a, sizeof a), hr_tensor_desc(ts[i], b, sizeof b));
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ geometry */

void geo_init(Geo *g, int ndim, const int64_t *size)
{
    memset(g, 0, sizeof *g);
    g->ndim = ndim;
    for (int i = 0; i < ndim; i++) g->size[i] = size[i];
}

void geo_add(Geo *g, const int64_t *stride)
{
    int k = g->nops++;
    for (int i = 0; i < g->ndim; i++) g->stride[k][i] = stride[i];
}

void geo_coalesce(Geo *g)
{
    int n = 0;
    for (int i = 0; i < g->ndim; i++) {
        if (g->size[i] == 1) continue;
        if (n > 0) {
            bool merge = true;
            for (int k = 0; k < g->nops; k++)
                if (g->stride[k][n - 1] != g->stride[k][i] * g->size[i]) merge = false;
            if (merge) {
                g->size[n - 1] *= g->size[i];
                for (int k = 0; k < g->nops; k++) g->stride[k][n - 1] = g->stride[k][i];
                continue;
            }
        }
        g->size[n] = g->size[i];
        for (int k = 0; k < g->nops; k++) g->stride[k][n] = g->stride[k][i];
        n++;
    }
    g->ndim = n;
    /* the multiply-shift divisions, when every index and size is below 2^31 */
    int64_t total = 1;
    bool small = true;
    for (int i = 0; i < n && small; i++) {
        if (g->size[i] <= 0 || g->size[i] >= ((int64_t)1 << 31)) small = false;
        else if ((total *= g->size[i]) >= ((int64_t)1 << 31)) small = false;
    }
    g->fast32 = small;
    for (int i = 0; small && i < n; i++) {
        uint64_t d = (uint64_t)g->size[i];
        uint32_t sh = 0;
        while (((uint64_t)1 << sh) < d) sh++;
        g->shift[i] = sh;
        g->magic[i] = (uint32_t)((((uint64_t)1 << 32) * (((uint64_t)1 << sh) - d)) / d + 1);
    }
}

/* ------------------------------------------------------------------ the caching allocator */

/* 512-byte multiples below 1 MiB; above, steps of 1/8 of the power of two below the size. */
static size_t class_size(size_t n, bool *ok)
{
    size_t r = (n + 511) & ~(size_t)511;
    *ok = r >= n;
    if (r == 0) r = 512;
    if (r >= ((size_t)1 << 20)) {
        size_t p = (size_t)1 << 20;
        while (p <= r / 2) p *= 2;
        size_t step = p / 8;
        size_t big = (r + step - 1) / step * step;
        *ok = *ok && big >= r;
        r = big;
    }
    return r;
}

/* Returns the device's cached blocks to the driver (lock held). cudaFree waits for the device,
 * so blocks still read by queued kernels are safe. */
static size_t release_cached(int dev)
{
    DeviceState &s = states[dev];
    size_t released = 0;
    if (cudaSetDevice(dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    for (auto &kv : s.free_blocks) {
        for (void *p : kv.second) {
            if (cudaFree(p) == cudaSuccess) released += kv.first;
            else (void)cudaGetLastError();
        }
        kv.second.clear();
    }
    s.free_blocks.clear();
    s.reserved -= released;
    s.cached -= released;
    size_t uploads = 0;
    for (auto &kv : s.upload_free) {
        for (auto &b : kv.second) {
            if (b.freed && cudaEventDestroy(b.freed) != cudaSuccess) (void)cudaGetLastError();
            if (cudaFree(b.p) == cudaSuccess) uploads += kv.first;
            else (void)cudaGetLastError();
        }
        kv.second.clear();
    }
    s.upload_free.clear();
    s.reserved -= uploads;
    s.upload_cached -= uploads;
    return released + uploads;
}

/* A block of cls bytes handed to a storage (lock held). */
static void count_handed_out(DeviceState &s, size_t cls)
{
    s.allocated += cls;
    s.num_allocs++;
    if (s.allocated > s.peak) s.peak = s.allocated;
}

/* A new block of cls bytes from the driver (dev current, its lock held); when the device is full,
 * the cached blocks of other sizes go back to the driver first and it is asked once more. */
static cudaError_t driver_malloc(int dev, size_t cls, void **p)
{
    cudaError_t e = cudaMalloc(p, cls);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        states[dev].num_oom_retries++;
        release_cached(dev);
        e = cudaMalloc(p, cls);
    }
    return e;
}

} // namespace hrc

using namespace hrc;

extern "C" {

bool hr_cuda_compiled(void) { return true; }

int hr_cuda_device_count(void) { return ndevices(); }

int hr_cuda_check_device(int dev, const char *op)
{
    int n = ndevices();
    if (n == 0)
        return hr_fail(HR_EDEVICE, "%s: device cuda:%d: no CUDA device is available (no GPU or no driver found); "
                                   "hero runs on the CPU",
                       op, dev);
    if (dev < 0 || dev >= n)
        return hr_fail(HR_EDEVICE, "%s: device cuda:%d does not exist (%d CUDA device%s: cuda:0 .. cuda:%d)", op, dev, n,
                       n == 1 ? "" : "s", n - 1);
    return 0;
}

int hr_cuda_device_name(int dev, char *buf, size_t cap)
{
    if (cap) buf[0] = '\0';
    if (hr_cuda_check_device(dev, "device_name")) return -1;
    cudaDeviceProp prop;
    if (check(cudaGetDeviceProperties(&prop, dev), "device_name", "cudaGetDeviceProperties")) return -1;
    snprintf(buf, cap, "%s", prop.name);
    return 0;
}

int hr_cuda_mem_info(int dev, size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    if (use_device(dev, "mem_info")) return -1;
    return check(cudaMemGetInfo(free_bytes, total_bytes), "mem_info", "cudaMemGetInfo");
}

int hr_cuda_synchronize(int dev)
{
    int n = ndevices();
    if (dev >= 0) return sync(dev, "synchronize");
    for (int d = 0; d < n; d++) {
        bool used;
        {
            std::lock_guard<std::mutex> g(states[d].lock);
            used = states[d].used;
        }
        if (used && sync(d, "synchronize")) return -1;
    }
    return 0;
}

void hr_cuda_set_allow_tf32(bool on) { tf32_allowed = on; }
bool hr_cuda_allow_tf32(void) { return tf32_allowed; }

int hr_cuda_memory_stats(int dev, hr_cuda_memstats *out)
{
    memset(out, 0, sizeof *out);
    if (hr_cuda_check_device(dev, "memory_stats")) return -1;
    DeviceState &s = states[dev];
    std::lock_guard<std::mutex> g(s.lock);
    out->allocated = s.allocated;
    out->reserved = s.reserved;
    out->peak = s.peak;
    out->cached = s.cached;
    out->num_allocs = s.num_allocs;
    out->num_cuda_mallocs = s.num_cuda_mallocs;
    out->num_oom_retries = s.num_oom_retries;
    return 0;
}

void hr_cuda_reset_peak(int dev)
{
    if (dev < 0 || dev >= ndevices()) return;
    std::lock_guard<std::mutex> g(states[dev].lock);
    states[dev].peak = states[dev].allocated;
}

size_t hr_cuda_empty_cache(int dev)
{
    int n = ndevices();
    size_t released = 0;
    for (int d = 0; d < n; d++) {
        if (dev >= 0 && d != dev) continue;
        std::lock_guard<std::mutex> g(states[d].lock);
        released += release_cached(d);
    }
    return released;
}

void *hr_cuda_malloc(int dev, size_t nbytes)
{
    if (hr_cuda_check_device(dev, "cuda allocation")) return NULL;
    bool ok;
    size_t cls = class_size(nbytes, &ok);
    if (!ok) return hr_fail_null(HR_ENOMEM, "cuda:%d: allocation of %zu bytes overflows", dev, nbytes);
    DeviceState &s = states[dev];
    std::lock_guard<std::mutex> g(s.lock);
    void *p = nullptr;
    auto it = s.free_blocks.find(cls);
    if (it != s.free_blocks.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        s.cached -= cls;
    } else {
        if (check(cudaSetDevice(dev), "cuda allocation", "cudaSetDevice")) return NULL;
        cudaError_t e = driver_malloc(dev, cls, &p);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            size_t fr = 0, tot = 0;
            if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) (void)cudaGetLastError();
            return hr_fail_null(e == cudaErrorMemoryAllocation ? HR_ENOMEM : HR_EDEVICE,
                                "cuda:%d: out of memory allocating %zu bytes (%.1f MiB; hero holds %.1f MiB in live "
                                "tensors, %.1f MiB reserved, peak %.1f MiB; the device reports %.1f MiB free of %.1f "
                                "MiB): %s",
                                dev, nbytes, nbytes / 1048576.0, s.allocated / 1048576.0, s.reserved / 1048576.0,
                                s.peak / 1048576.0, fr / 1048576.0, tot / 1048576.0, cudaGetErrorString(e));
        }
        s.reserved += cls;
        s.num_cuda_mallocs++;
    }
    count_handed_out(s, cls);
    return p;
}

void hr_cuda_free(int dev, void *p, size_t nbytes)
{
    if (!p || dev < 0 || dev >= ndevices()) return;
    bool ok;
    size_t cls = class_size(nbytes, &ok);
    DeviceState &s = states[dev];
    std::lock_guard<std::mutex> g(s.lock);
    /* stream order makes immediate reuse safe: later work on this stream runs after earlier users */
    s.free_blocks[cls].push_back(p);
    s.allocated -= cls;
    s.cached += cls;
}

static void storage_destroy(hr_storage *s)
{
    upload_settle_storage(s);
    hr_cuda_free(s->device.index, s->data, s->nbytes);
}

/* A block for a tensor the calling thread uploads on dev's upload stream: a free upload block of
 * the size (the upload stream then waits for the point of the compute stream where it was freed)
 * or a new one. NULL with an error when the device has no memory left. */
static void *upload_block_take(int dev, size_t nbytes, cudaStream_t upload)
{
    const char *op = "cuda allocation (upload)";
    if (hr_cuda_check_device(dev, op)) return NULL;
    bool ok;
    size_t cls = class_size(nbytes, &ok);
    if (!ok) return hr_fail_null(HR_ENOMEM, "cuda:%d: allocation of %zu bytes overflows", dev, nbytes);
    DeviceState &s = states[dev];
    DeviceState::UploadBlock b = {nullptr, nullptr};
    {
        std::lock_guard<std::mutex> g(s.lock);
        auto it = s.upload_free.find(cls);
        if (it != s.upload_free.end() && !it->second.empty()) {
            b = it->second.back();
            it->second.pop_back();
            s.upload_cached -= cls;
            count_handed_out(s, cls);
        }
    }
    if (b.p) {
        int rc = b.freed ? check(cudaStreamWaitEvent(upload, b.freed, 0), op, "cudaStreamWaitEvent") : 0;
        if (b.freed && cudaEventDestroy(b.freed) != cudaSuccess) (void)cudaGetLastError();
        if (rc) {
            /* not known to be free on the upload stream: it goes to the compute stream's cache */
            std::lock_guard<std::mutex> g(s.lock);
            s.free_blocks[cls].push_back(b.p);
            s.allocated -= cls;
            s.cached += cls;
            return NULL;
        }
        return b.p;
    }
    void *p = nullptr;
    cudaError_t e;
    {
        std::lock_guard<std::mutex> g(s.lock);
        e = driver_malloc(dev, cls, &p);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return hr_fail_null(e == cudaErrorMemoryAllocation ? HR_ENOMEM : HR_EDEVICE,
                            "cuda:%d: out of memory allocating %zu bytes for an upload (%.1f MiB): %s", dev, nbytes,
                            nbytes / 1048576.0, cudaGetErrorString(e));
    }
    std::lock_guard<std::mutex> g(s.lock);
    s.reserved += cls;
    s.num_cuda_mallocs++;
    count_handed_out(s, cls);
    return p;
}

/* An uploaded tensor's storage freed (on any thread): its block goes back to the upload blocks,
 * free from the point of the compute stream queued now (its last reader there). */
static void upload_storage_destroy(hr_storage *st)
{
    upload_settle_storage(st);
    int dev = st->device.index;
    bool ok;
    size_t cls = class_size(st->nbytes, &ok);
    DeviceState &s = states[dev];
    cudaStream_t compute = stream(dev);
    cudaEvent_t ev = nullptr;
    if (!compute || cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventRecord(ev, compute) != cudaSuccess) {
        /* no event to order a reuse by: the block joins the compute stream's cache, whose reuse
         * is ordered by that stream */
        (void)cudaGetLastError();
        hr_clear_error();
        if (ev) (void)cudaEventDestroy(ev);
        hr_cuda_free(dev, st->data, st->nbytes);
        return;
    }
    std::lock_guard<std::mutex> g(s.lock);
    s.upload_free[cls].push_back(DeviceState::UploadBlock{st->data, ev});
    s.allocated -= cls;
    s.upload_cached += cls;
}

hr_storage *hr_cuda_storage_new(size_t nbytes, int dev)
{
    hr_storage *s = (hr_storage *)hr_pool_zalloc(HR_POOL_STORAGE, sizeof *s);
    if (!s) {
        hr_fail(HR_ENOMEM, "out of memory allocating a storage header");
        return NULL;
    }
    /* made by a thread uploading to dev (cuda/upload.cu): from the upload blocks */
    cudaStream_t upload = uploading(dev) ? upload_stream_of(dev) : nullptr;
    s->data = upload ? upload_block_take(dev, nbytes, upload) : hr_cuda_malloc(dev, nbytes);
    if (!s->data) {
        hr_pool_free(HR_POOL_STORAGE, s);
        return NULL;
    }
    s->nbytes = nbytes;
    s->device.type = HR_CUDA;
    s->device.index = dev;
    s->kind = HR_STORAGE_EXTERNAL;
    s->refcount = 1;
    s->destroy = upload ? upload_storage_destroy : storage_destroy;
    return s;
}

int hr_cuda_memset0(hr_storage *s)
{
    cudaStream_t st = stream(s->device.index);
    if (!st) return -1;
    if (s->nbytes == 0) return 0;
    return check(cudaMemsetAsync(s->data, 0, s->nbytes, st), "zeros", "cudaMemsetAsync");
}

void *hr_cuda_host_alloc(size_t nbytes)
{
    if (ndevices() == 0) return hr_fail_null(HR_EDEVICE, "host_alloc: pinned memory needs a CUDA device, and none is available");
    void *p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, nbytes ? nbytes : 1, cudaHostAllocPortable);
    if (e != cudaSuccess) {
        check(e, "host_alloc", "cudaHostAlloc");
        return NULL;
    }
    return p;
}

void hr_cuda_host_free(void *p)
{
    if (p && cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
}

} // extern "C"

/* ------------------------------------------------------------------ copies */

namespace {

/* dst (dtype ddt) <- src (dtype sdt) over geometry g (operand 0 dst, 1 src), with hr_copy_'s
 * conversion rules: same dtype copies the bytes, integer to integer is exact, the rest goes through
 * double exactly as hr_load_f64/hr_store_f64 do. */
__global__ void convert_kernel(Geo g, char *dst, int ddt, int del, const char *src, int sdt, int sel, int64_t n)
{
    bool both_int = ddt >= HR_I64 && sdt >= HR_I64;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[2];
        geo_offsets<2>(g, i, off);
        char *d = dst + off[0] * del;
        const char *s = src + off[1] * sel;
        if (ddt == sdt) {
            switch (del) {
            case 1: *(uint8_t *)d = *(const uint8_t *)s; break;
            case 2: *(uint16_t *)d = *(const uint16_t *)s; break;
            case 4: *(uint32_t *)d = *(const uint32_t *)s; break;
            default: *(uint64_t *)d = *(const uint64_t *)s; break;
            }
        } else if (both_int) {
            store_i64(d, ddt, load_i64(s, sdt));
        } else {
            store_f64(d, ddt, load_f64(s, sdt));
        }
    }
}

/* The float <-> half conversions of autocast on contiguous tensors: the dtypes are compile-time, so
 * each element is one load, one conversion (the same rounding as convert_kernel) and one store. */
template <int SDT, int DDT> __global__ void convert_contiguous(const char *src, char *dst, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        store_f32(dst + i * dtype_size(DDT), DDT, load_f32(src + i * dtype_size(SDT), SDT));
}

/* The same conversions 8 elements at a time (16-byte aligned arrays), the last n % 8 one by one. */
__global__ void convert_vec8(const char *src, int sdt, char *dst, int ddt, int64_t n)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, nv = n / 8;
    const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int64_t j = t0; j < nv; j += stride) {
        float v[8];
        load8(src, sdt, j, v);
        store8(dst, ddt, j, v);
    }
    for (int64_t i = nv * 8 + t0; i < n; i += stride)
        store_f32(dst + i * dtype_size(ddt), ddt, load_f32(src + i * dtype_size(sdt), sdt));
}

/* dst <- src for one dtype over g, whose sizes and strides count units U of several elements (the
 * innermost dimension of both is contiguous and a whole number of units long): permuted copies of
 * attention heads move 16 bytes per index computation instead of 2 or 4. */
template <typename U> __global__ void copy_units(Geo g, U *dst, const U *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[2];
        geo_offsets<2>(g, i, off);
        dst[off[0]] = src[off[1]];
    }
}

/* Launches copy_units for a same-dtype copy over the coalesced g (element strides) when its
 * innermost dimension is contiguous in both operands and every address and stride is a multiple of
 * 16 or 8 bytes; false otherwise. */
bool launch_unit_copy(Geo g, char *dst, const char *src, int el, cudaStream_t st)
{
    if (g.ndim == 0 || g.stride[0][g.ndim - 1] != 1 || g.stride[1][g.ndim - 1] != 1) return false;
    for (int unit = 16; unit >= 8; unit /= 2) {
        if (unit <= el || ((uintptr_t)dst | (uintptr_t)src) % (uintptr_t)unit) continue;
        int64_t per = unit / el;
        bool fits = g.size[g.ndim - 1] % per == 0;
        for (int d = 0; fits && d < g.ndim - 1; d++)
            if (g.stride[0][d] % per || g.stride[1][d] % per) fits = false;
        if (!fits) continue;
        Geo u = g;
        u.size[u.ndim - 1] /= per;
        for (int d = 0; d < u.ndim - 1; d++) {
            u.stride[0][d] /= per;
            u.stride[1][d] /= per;
        }
        geo_coalesce(&u);
        int64_t n = 1;
        for (int d = 0; d < u.ndim; d++) n *= u.size[d];
        if (unit == 16) copy_units<uint4><<<grid_for(n), kThreads, 0, st>>>(u, (uint4 *)dst, (const uint4 *)src, n);
        else copy_units<uint2><<<grid_for(n), kThreads, 0, st>>>(u, (uint2 *)dst, (const uint2 *)src, n);
        return true;
    }
    return false;
}

/* Same-dtype copies whose innermost dimension is contiguous in both operands and long, but whose
 * rows are not whole 8- or 16-byte units apart (a narrowed vocabulary's gradient): rows on the
 * grid's x axis, their elements on y and the threads, so that no element needs an index division. */
template <typename U> __global__ void copy_rows(Geo outer, U *dst, const U *src, int64_t rows, int64_t inner)
{
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        int64_t off[2];
        geo_offsets<2>(outer, r, off);
        U *d = dst + off[0];
        const U *s = src + off[1];
        for (int64_t c = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; c < inner; c += (int64_t)gridDim.y * blockDim.x)
            d[c] = s[c];
    }
}

bool launch_row_copy(const Geo &g, char *dst, const char *src, int el, cudaStream_t st)
{
    if (g.ndim < 2 || g.stride[0][g.ndim - 1] != 1 || g.stride[1][g.ndim - 1] != 1 || g.size[g.ndim - 1] < 256) return false;
    Geo outer = g;
    outer.ndim = g.ndim - 1;
    geo_coalesce(&outer);
    int64_t rows = 1, inner = g.size[g.ndim - 1];
    for (int d = 0; d < outer.ndim; d++) rows *= outer.size[d];
    unsigned gx = (unsigned)(rows < 0x7fffffff ? rows : 0x7fffffff);
    int64_t per_block = 4 * (int64_t)kThreads;
    unsigned gy = (unsigned)((inner + per_block - 1) / per_block);
    if (gy > 65535) gy = 65535;
    dim3 grid(gx, gy);
    switch (el) {
    case 1: copy_rows<uint8_t><<<grid, kThreads, 0, st>>>(outer, (uint8_t *)dst, (const uint8_t *)src, rows, inner); break;
    case 2: copy_rows<uint16_t><<<grid, kThreads, 0, st>>>(outer, (uint16_t *)dst, (const uint16_t *)src, rows, inner); break;
    case 4: copy_rows<uint32_t><<<grid, kThreads, 0, st>>>(outer, (uint32_t *)dst, (const uint32_t *)src, rows, inner); break;
    default: copy_rows<uint64_t><<<grid, kThreads, 0, st>>>(outer, (uint64_t *)dst, (const uint64_t *)src, rows, inner); break;
    }
    return true;
}

/* Launches the conversion when (sdt, ddt) is one of the float/half pairs; false otherwise. */
bool launch_float_half(int sdt, int ddt, const char *src, char *dst, int64_t n, cudaStream_t st)
{
    if (sdt != ddt && vec8_ok(src, sdt) && vec8_ok(dst, ddt)) {
        convert_vec8<<<grid_for8(n), kThreads, 0, st>>>(src, sdt, dst, ddt, n);
        return true;
    }
    unsigned grid = grid_for(n);
#define HR_PAIR(S, D)                                                                                                  \
    if (sdt == S && ddt == D) {                                                                                        \
        convert_contiguous<S, D><<<grid, kThreads, 0, st>>>(src, dst, n);                                              \
        return true;                                                                                                   \
    }
    HR_PAIR(HR_F32, HR_BF16)
    HR_PAIR(HR_BF16, HR_F32)
    HR_PAIR(HR_F32, HR_F16)
    HR_PAIR(HR_F16, HR_F32)
#undef HR_PAIR
    return false;
}

__global__ void fill_kernel(Geo g, char *dst, int el, uint64_t bits, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[1];
        geo_offsets<1>(g, i, off);
        char *d = dst + off[0] * el;
        switch (el) {
        case 1: *(uint8_t *)d = (uint8_t)bits; break;
        case 2: *(uint16_t *)d = (uint16_t)bits; break;
        case 4: *(uint32_t *)d = (uint32_t)bits; break;
        default: *(uint64_t *)d = bits; break;
        }
    }
}

bool same_layout(const hr_tensor *a, const hr_tensor *b)
{
    return a->dtype == b->dtype && a->ndim == b->ndim && hr_tensor_numel(a) == hr_tensor_numel(b) &&
           memcmp(a->size, b->size, sizeof(int64_t) * (size_t)a->ndim) == 0 && hr_tensor_is_contiguous(a) &&
           hr_tensor_is_contiguous(b);
}

size_t nbytes_of(const hr_tensor *t) { return (size_t)hr_tensor_numel(t) * hr_dtype_size(t->dtype); }

/* Both on one device. */
int device_convert(hr_tensor *dst, const hr_tensor *src)
{
    int dev = dev_of(dst);
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    int64_t n = hr_tensor_numel(dst);
    if (n == 0) return 0;
    if (same_layout(dst, src))
        return check(cudaMemcpyAsync(hr_tensor_data(dst), hr_tensor_data(src), nbytes_of(dst), cudaMemcpyDeviceToDevice, st),
                     "copy_", "cudaMemcpyAsync");
    hr_tensor *tmp = nullptr;
    if (dst->storage == src->storage) {
        /* overlapping views: read everything before writing anything */
        tmp = hr_tensor_empty(src->ndim, src->size, src->dtype, hr_tensor_device(src));
        if (!tmp || device_convert(tmp, src)) {
            hr_tensor_release(tmp);
            return -1;
        }
        src = tmp;
    }
    if (!tmp && hr_tensor_is_contiguous(dst) && hr_tensor_is_contiguous(src) && dst->ndim == src->ndim &&
        memcmp(dst->size, src->size, sizeof(int64_t) * (size_t)dst->ndim) == 0 &&
        launch_float_half(src->dtype, dst->dtype, (const char *)hr_tensor_data(src), (char *)hr_tensor_data(dst), n, st))
        return check_launch("copy_");
    int64_t sstride[HR_MAX_DIMS];
    hr_broadcast_strides(src, dst->ndim, dst->size, sstride);
    Geo g;
    geo_init(&g, dst->ndim, dst->size);
    geo_add(&g, dst->stride);
    geo_add(&g, sstride);
    geo_coalesce(&g);
    if (!tmp && dst->dtype == src->dtype &&
        (launch_unit_copy(g, (char *)hr_tensor_data(dst), (const char *)hr_tensor_data(src), (int)hr_dtype_size(dst->dtype), st) ||
         launch_row_copy(g, (char *)hr_tensor_data(dst), (const char *)hr_tensor_data(src), (int)hr_dtype_size(dst->dtype), st)))
        return check_launch("copy_");
    convert_kernel<<<grid_for(n), kThreads, 0, st>>>(g, (char *)hr_tensor_data(dst), dst->dtype,
                                                    (int)hr_dtype_size(dst->dtype), (const char *)hr_tensor_data(src),
                                                    src->dtype, (int)hr_dtype_size(src->dtype), n);
    int rc = check_launch("copy_");
    hr_tensor_release(tmp);
    return rc;
}

/* Host bytes to the device, queued on its stream: staged (the host goes on at once) when small,
 * else copied and waited for, since the caller may release its buffer right after. */
int upload(int dev, void *dst, const void *src, size_t nbytes)
{
    int staged = stage_to_device(dev, dst, src, nbytes, "copy_");
    if (staged <= 0) return staged;
    cudaStream_t st = stream(dev);
    if (!st) return -1;
    if (check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, st), "copy_", "cudaMemcpyAsync (host to device)"))
        return -1;
    return sync(dev, "copy_");
}

} // namespace

extern "C" int hr_cuda_copy_(hr_tensor *dst, const hr_tensor *src)
{
    bool dc = is_cuda(dst), sc = is_cuda(src);
    if (hr_tensor_numel(dst) == 0) return 0;
    if (dc && sc && dev_of(dst) == dev_of(src)) return device_convert(dst, src);
    int rc = -1;
    if (dc && sc) {
        /* between devices: a contiguous copy of src moves over, then converts/broadcasts on dst's device */
        hr_tensor *sc_src = hr_contiguous((hr_tensor *)src);
        hr_tensor *tmp = sc_src ? hr_tensor_empty(src->ndim, src->size, src->dtype, hr_tensor_device(dst)) : nullptr;
        cudaStream_t sst = sc_src ? stream(dev_of(src)) : nullptr, dst_st = sst ? stream(dev_of(dst)) : nullptr;
        if (tmp && dst_st && !check(cudaStreamSynchronize(sst), "copy_", "cudaStreamSynchronize") &&
            !check(cudaMemcpyPeerAsync(hr_tensor_data(tmp), dev_of(dst), hr_tensor_data(sc_src), dev_of(src), nbytes_of(tmp),
                                       dst_st),
                   "copy_", "cudaMemcpyPeerAsync") &&
            !device_convert(dst, tmp) && !sync(dev_of(dst), "copy_"))
            rc = 0;
        hr_tensor_release(tmp);
        hr_tensor_release(sc_src);
        return rc;
    }
    if (dc && !sc && uploading(dev_of(dst))) {
        /* on the upload stream (upload.cu): converted on the host first when dtypes or layouts
         * differ, since a kernel on the compute stream would not be ordered after the transfer */
        if (!hr_tensor_is_contiguous(dst))
            return hr_fail(HR_EINVAL, "copy_: a copy to the device during an upload needs a contiguous destination");
        hr_tensor *hc = nullptr;
        if (src->dtype == dst->dtype && hr_tensor_is_contiguous(src) && hr_tensor_numel(src) == hr_tensor_numel(dst) &&
            src->ndim == dst->ndim && memcmp(src->size, dst->size, sizeof(int64_t) * (size_t)dst->ndim) == 0) {
            hc = (hr_tensor *)src;
            hr_tensor_retain(hc);
        } else {
            hc = hr_tensor_empty(dst->ndim, dst->size, dst->dtype, hr_cpu());
            if (hc && hr_copy_(hc, src)) {
                hr_tensor_release(hc);
                hc = nullptr;
            }
        }
        if (!hc) return -1;
        rc = upload_queue(dst->storage, hr_tensor_data(dst), hr_tensor_data(hc), nbytes_of(dst), "copy_");
        hr_tensor_release(hc);
        return rc;
    }
    if (dc) { /* host -> device */
        hr_tensor *hc = hr_contiguous((hr_tensor *)src);
        if (!hc) return -1;
        cudaStream_t st = stream(dev_of(dst));
        if (!st) {
            hr_tensor_release(hc);
            return -1;
        }
        if (same_layout(dst, hc)) {
            rc = upload(dev_of(dst), hr_tensor_data(dst), hr_tensor_data(hc), nbytes_of(hc));
        } else {
            hr_tensor *tmp = hr_tensor_empty(hc->ndim, hc->size, hc->dtype, hr_tensor_device(dst));
            if (tmp && !upload(dev_of(dst), hr_tensor_data(tmp), hr_tensor_data(hc), nbytes_of(hc)) &&
                !device_convert(dst, tmp))
                rc = 0;
            hr_tensor_release(tmp);
        }
        hr_tensor_release(hc);
        return rc;
    }
    /* device -> host */
    hr_tensor *dcopy = hr_contiguous((hr_tensor *)src);
    if (!dcopy) return -1;
    cudaStream_t st = stream(dev_of(src));
    if (st) {
        if (same_layout(dst, dcopy)) {
            rc = check(cudaMemcpyAsync(hr_tensor_data(dst), hr_tensor_data(dcopy), nbytes_of(dcopy), cudaMemcpyDeviceToHost,
                                       st),
                       "copy_", "cudaMemcpyAsync (device to host)");
            if (!rc) rc = sync(dev_of(src), "copy_");
        } else {
            hr_tensor *tmp = hr_tensor_empty(dcopy->ndim, dcopy->size, dcopy->dtype, hr_cpu());
            if (tmp &&
                !check(cudaMemcpyAsync(hr_tensor_data(tmp), hr_tensor_data(dcopy), nbytes_of(dcopy), cudaMemcpyDeviceToHost,
                                       st),
                       "copy_", "cudaMemcpyAsync (device to host)") &&
                !sync(dev_of(src), "copy_") && !hr_copy_(dst, tmp))
                rc = 0;
            hr_tensor_release(tmp);
        }
    }
    hr_tensor_release(dcopy);
    return rc;
}

extern "C" int hr_cuda_fill_(hr_tensor *t, const void *value)
{
    int64_t n = hr_tensor_numel(t);
    cudaStream_t st = stream(dev_of(t));
    if (!st) return -1;
    if (n == 0) return 0;
    uint64_t bits = 0;
    int el = (int)hr_dtype_size(t->dtype);
    memcpy(&bits, value, (size_t)el);
    Geo g;
    geo_init(&g, t->ndim, t->size);
    geo_add(&g, t->stride);
    geo_coalesce(&g);
    fill_kernel<<<grid_for(n), kThreads, 0, st>>>(g, (char *)hr_tensor_data(t), el, bits, n);
    return check_launch("fill_");
}

namespace hrc {
bool is_upload_block(const hr_storage *s) { return s->destroy == upload_storage_destroy; }
} // namespace hrc
