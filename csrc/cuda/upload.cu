/* cuda/upload.cu — host-to-device copies on a second stream, so that a batch can be uploaded by a
 * loader thread while the device computes.
 *
 * A copy of a big host tensor to the device otherwise runs on the device's one stream and the host
 * waits for it (the caller may free its buffer on return): the training thread stood still for the
 * whole transfer, behind everything the device had queued before it. Between
 * hr_cuda_upload_begin(dev) and hr_cuda_upload_end on one thread, that thread's host-to-device
 * copies to dev go to dev's upload stream instead:
 *  - the tensors made meanwhile take their blocks from the device's upload blocks (runtime.cu), kept
 *    apart from the compute stream's cache: a freed upload block carries an event recorded on the
 *    compute stream when it was freed, and an upload into it waits for that point only. A block of
 *    the compute stream's cache may be freed by tensors whose kernels are still queued (that cache
 *    reuses blocks in stream order, and this is another stream), so a copy into a tensor made
 *    before the upload began waits for all the work queued on the compute stream so far;
 *  - the host bytes are pageable: the driver stages them and the call returns once the caller's
 *    buffer is free, blocking only this thread (a loader worker), never the training thread;
 *  - one event per upload is recorded behind each copy. hr_cuda_upload_end hands it out as a ticket;
 *    hr_cuda_upload_await(ticket), on the thread that uses the tensors, makes the compute stream
 *    wait for it: kernels queued after that read the uploaded bytes; the host does not wait;
 *  - a storage written by an upload keeps a reference to the upload's event, and its block goes back
 *    to the cache only after the compute stream was made to wait for the event, so that a batch
 *    dropped before anyone awaited it (a loader closed or moved elsewhere) cannot have its blocks
 *    reused while its transfers are still writing them.
 * Only copies are meant to run in between: a kernel this thread launched there would run on the
 * compute stream, unordered with the uploads. A copy that needs a conversion (another dtype or
 * layout) is converted on the host first and uploaded as it is.
 */
#include <atomic>
#include <cinttypes>
#include <mutex>
#include <new>
#include <unordered_map>

#include "cuda/common.cuh"

namespace hrc {
namespace {

/* One upload's event, shared by the storages it wrote and by its ticket. */
struct UploadEvent {
    cudaEvent_t done = nullptr;
    int dev = 0;
    std::atomic<int> refs{1};
};

void unref(UploadEvent *u)
{
    if (u && u->refs.fetch_sub(1) == 1) {
        /* safe while the event is still pending: the driver releases it once the device reaches it */
        if (u->done && cudaEventDestroy(u->done) != cudaSuccess) (void)cudaGetLastError();
        delete u;
    }
}

/* Makes dev's compute stream wait for u's transfers so far (queued work only: the host goes on). */
int compute_waits_for(const UploadEvent *u, const char *op)
{
    cudaStream_t st = stream(u->dev);
    if (!st) return -1;
    return check(cudaStreamWaitEvent(st, u->done, 0), op, "cudaStreamWaitEvent");
}

struct UploadStreams {
    std::mutex lock;
    std::unordered_map<int, cudaStream_t> by_device;
    std::unordered_map<int64_t, UploadEvent *> tickets;
    int64_t next_ticket = 1;
};

UploadStreams &shared_state()
{
    static UploadStreams *s = new UploadStreams; /* never destroyed: storages may be freed at exit */
    return *s;
}

cudaStream_t upload_stream(int dev, const char *op)
{
    if (use_device(dev, op)) return nullptr;
    UploadStreams &u = shared_state();
    std::lock_guard<std::mutex> g(u.lock);
    auto it = u.by_device.find(dev);
    if (it != u.by_device.end()) return it->second;
    cudaStream_t st;
    if (check(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), op, "cudaStreamCreate")) return nullptr;
    u.by_device[dev] = st;
    return st;
}

/* This thread's upload in progress, if any. */
thread_local UploadEvent *current = nullptr;

} // namespace

bool uploading(int dev) { return current && current->dev == dev; }

cudaStream_t upload_stream_of(int dev) { return upload_stream(dev, "upload"); }

int upload_queue(hr_storage *dst_storage, void *dst, const void *src, size_t nbytes, const char *op)
{
    UploadEvent *u = current;
    if (!u || dst_storage->device.index != u->dev) return 1;
    if (nbytes == 0) return 0;
    cudaStream_t compute = stream(u->dev);
    cudaStream_t up = compute ? upload_stream(u->dev, op) : nullptr;
    if (!up) return -1;
    int rc = 0;
    if (!is_upload_block(dst_storage)) {
        /* a block of the compute stream's cache (a tensor made before the upload began): free only
         * in that stream's order, so the transfer starts after the work queued there so far */
        cudaEvent_t guard;
        if (check(cudaEventCreateWithFlags(&guard, cudaEventDisableTiming), op, "cudaEventCreate")) return -1;
        rc = check(cudaEventRecord(guard, compute), op, "cudaEventRecord");
        if (!rc) rc = check(cudaStreamWaitEvent(up, guard, 0), op, "cudaStreamWaitEvent");
        if (cudaEventDestroy(guard) != cudaSuccess) (void)cudaGetLastError();
        if (rc) return -1;
    }
    if (check(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, up), op, "cudaMemcpyAsync (upload stream)") ||
        check(cudaEventRecord(u->done, up), op, "cudaEventRecord"))
        return -1;
    UploadEvent *old = (UploadEvent *)dst_storage->destroy_ctx;
    if (old != u) {
        /* written by an earlier upload too: the compute stream waits for that one now */
        if (old) {
            rc = compute_waits_for(old, op);
            unref(old);
        }
        u->refs.fetch_add(1);
        dst_storage->destroy_ctx = u;
    }
    return rc;
}

void upload_settle_storage(hr_storage *s)
{
    UploadEvent *u = (UploadEvent *)s->destroy_ctx;
    if (!u) return;
    s->destroy_ctx = nullptr;
    /* nothing to report to: a storage being freed has no caller to fail; a failed wait leaves the
     * block to a device that has stopped anyway */
    if (compute_waits_for(u, "free")) hr_clear_error();
    unref(u);
}

} // namespace hrc

using namespace hrc;

extern "C" int hr_cuda_upload_begin(int dev)
{
    const char *op = "upload_begin";
    if (current) return hr_fail(HR_EINVAL, "%s: this thread is already uploading to cuda:%d (uploads do not nest)", op, current->dev);
    if (!upload_stream(dev, op)) return -1;
    UploadEvent *u = new (std::nothrow) UploadEvent;
    if (!u) return hr_fail(HR_ENOMEM, "%s: out of memory", op);
    u->dev = dev;
    if (check(cudaEventCreateWithFlags(&u->done, cudaEventDisableTiming), op, "cudaEventCreate")) {
        u->done = nullptr;
        unref(u);
        return -1;
    }
    current = u;
    return 0;
}

extern "C" int hr_cuda_upload_end(int64_t *ticket)
{
    const char *op = "upload_end";
    *ticket = 0;
    UploadEvent *u = current;
    if (!u) return hr_fail(HR_EINVAL, "%s: this thread has no upload in progress", op);
    current = nullptr;
    UploadStreams &s = shared_state();
    std::lock_guard<std::mutex> g(s.lock);
    *ticket = s.next_ticket++;
    s.tickets[*ticket] = u; /* the ticket holds the reference begin made */
    return 0;
}

extern "C" int hr_cuda_upload_await(int64_t ticket)
{
    const char *op = "upload_await";
    UploadEvent *u = nullptr;
    {
        UploadStreams &s = shared_state();
        std::lock_guard<std::mutex> g(s.lock);
        auto it = s.tickets.find(ticket);
        if (it != s.tickets.end()) {
            u = it->second;
            s.tickets.erase(it);
        }
    }
    if (!u)
        return hr_fail(HR_EINVAL, "%s: no upload has ticket %" PRId64 " (each ticket is awaited once, on any thread)", op,
                       ticket);
    int rc = compute_waits_for(u, op);
    unref(u);
    return rc;
}
