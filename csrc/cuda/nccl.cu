/* nccl.cu — collectives between processes on CUDA tensors through NCCL (hero.dist on GPUs).
 *
 * NCCL is opened with dlopen the first time a communicator is made (libnccl.so.2, or the path in
 * HERO_NCCL_LIBRARY), so neither the build nor CPU-only runs need it: PyTorch's wheels, the CUDA
 * containers and Debian's non-free libnccl2 all ship that library. The few declarations below are
 * NCCL 2's C ABI (nccl.h), written out here because the header is not part of the CUDA toolkit.
 *
 * One communicator per process, on the device of the first tensor handed to it (one GPU per rank,
 * as hero.dist launches them). The communicator's unique id travels between ranks through MPI
 * (lua/hero/dist.lua), which is how every rank learns it. Collectives run on the device's stream,
 * in order with the kernels that produced the tensor, and the call returns once they finish, so a
 * failure (a rank that died, a mismatched call) is reported here as a Lua error.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

namespace {

typedef struct nccl_comm *nccl_comm_t;
struct nccl_unique_id {
    char internal[HR_CUDA_NCCL_ID_BYTES];
};
typedef int nccl_result;
enum { NCCL_SUCCESS = 0 };
/* ncclRedOp_t */
enum { NCCL_SUM = 0, NCCL_MAX = 2, NCCL_MIN = 3 };
/* ncclDataType_t */
enum {
    NCCL_INT8 = 0,
    NCCL_UINT8 = 1,
    NCCL_INT32 = 2,
    NCCL_INT64 = 4,
    NCCL_FLOAT16 = 6,
    NCCL_FLOAT32 = 7,
    NCCL_FLOAT64 = 8,
    NCCL_BFLOAT16 = 9,
};

struct nccl_api {
    nccl_result (*get_version)(int *);
    nccl_result (*get_unique_id)(nccl_unique_id *);
    nccl_result (*comm_init_rank)(nccl_comm_t *, int, nccl_unique_id, int);
    nccl_result (*comm_destroy)(nccl_comm_t);
    nccl_result (*comm_abort)(nccl_comm_t);
    nccl_result (*all_reduce)(const void *, void *, size_t, int, int, nccl_comm_t, cudaStream_t);
    nccl_result (*broadcast)(const void *, void *, size_t, int, int, nccl_comm_t, cudaStream_t);
    nccl_result (*all_gather)(const void *, void *, size_t, int, nccl_comm_t, cudaStream_t);
    const char *(*error_string)(nccl_result);
};

/* Process-wide: NCCL itself is process-wide state, and hero.dist has one job per process. */
nccl_api api;
void *library;
nccl_comm_t comm;
int comm_device = -1, comm_rank = -1, comm_size = 0;

int load_library(const char *op)
{
    if (library) return 0;
    const char *path = getenv("HERO_NCCL_LIBRARY");
    if (!path || !*path) path = "libnccl.so.2";
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return hr_fail(HR_EDEVICE, "%s: NCCL is needed for collectives on CUDA tensors and could not be loaded (%s); "
                                   "install libnccl2 or point HERO_NCCL_LIBRARY at libnccl.so.2",
                       op, dlerror());
    struct {
        const char *name;
        void **slot;
    } syms[] = {
        {"ncclGetVersion", (void **)&api.get_version},        {"ncclGetUniqueId", (void **)&api.get_unique_id},
        {"ncclCommInitRank", (void **)&api.comm_init_rank},   {"ncclCommDestroy", (void **)&api.comm_destroy},
        {"ncclCommAbort", (void **)&api.comm_abort},          {"ncclAllReduce", (void **)&api.all_reduce},
        {"ncclBroadcast", (void **)&api.broadcast},           {"ncclAllGather", (void **)&api.all_gather},
        {"ncclGetErrorString", (void **)&api.error_string},
    };
    for (auto &s : syms) {
        *s.slot = dlsym(h, s.name);
        if (!*s.slot) {
            dlclose(h);
            memset(&api, 0, sizeof api);
            return hr_fail(HR_EDEVICE, "%s: '%s' has no symbol %s (NCCL 2.x is needed)", op, path, s.name);
        }
    }
    int version = 0;
    if (api.get_version(&version) != NCCL_SUCCESS || version < 2000) {
        dlclose(h);
        memset(&api, 0, sizeof api);
        return hr_fail(HR_EDEVICE, "%s: '%s' reports NCCL version %d; NCCL 2.x is needed", op, path, version);
    }
    library = h;
    return 0;
}

int check_nccl(nccl_result r, const char *op, const char *what)
{
    if (r == NCCL_SUCCESS) return 0;
    return hr_fail(HR_EDEVICE, "%s: %s failed: %s (NCCL error %d)", op, what,
                   api.error_string ? api.error_string(r) : "?", r);
}

int nccl_dtype(hr_dtype dt, const char *op)
{
    switch (dt) {
    case HR_F32: return NCCL_FLOAT32;
    case HR_F64: return NCCL_FLOAT64;
    case HR_F16: return NCCL_FLOAT16;
    case HR_BF16: return NCCL_BFLOAT16;
    case HR_I64: return NCCL_INT64;
    case HR_I32: return NCCL_INT32;
    case HR_U8: return NCCL_UINT8;
    case HR_BOOL: return NCCL_UINT8;
    default: break;
    }
    return hr_fail(HR_EINVAL, "%s: NCCL cannot exchange %s tensors", op, hr_dtype_name(dt));
}

/* The tensor must be a contiguous CUDA tensor on the communicator's device. */
int check_tensor(const hr_tensor *t, const char *op, const char *what)
{
    if (hr_tensor_check_live(t, op)) return -1;
    if (!hrc::is_cuda(t)) return hr_fail(HR_EDEVICE, "%s: %s must be a CUDA tensor", op, what);
    if (!comm) return hr_fail(HR_EINVAL, "%s: no NCCL communicator (call hero.dist.init() first)", op);
    if (hrc::dev_of(t) != comm_device)
        return hr_fail(HR_EDEVICE, "%s: %s is on cuda:%d but this rank's NCCL communicator is on cuda:%d", op, what,
                       hrc::dev_of(t), comm_device);
    if (!hr_tensor_is_contiguous(t)) return hr_fail(HR_EINVAL, "%s: %s must be contiguous", op, what);
    return 0;
}

/* Waits for the collective just queued on dev's stream, so its failure is this call's error. */
int finish(int dev, const char *op) { return hrc::sync(dev, op); }

} // namespace

bool hr_cuda_nccl_available(void) { return load_library("hero.dist") == 0; }

int hr_cuda_nccl_unique_id(unsigned char *out)
{
    const char *op = "hero.dist.init";
    if (load_library(op)) return -1;
    nccl_unique_id id;
    if (check_nccl(api.get_unique_id(&id), op, "ncclGetUniqueId")) return -1;
    memcpy(out, id.internal, HR_CUDA_NCCL_ID_BYTES);
    return 0;
}

int hr_cuda_nccl_init(int rank, int world_size, const unsigned char *id_bytes, int dev)
{
    const char *op = "hero.dist.init";
    if (load_library(op)) return -1;
    if (comm) {
        if (rank == comm_rank && world_size == comm_size && dev == comm_device) return 0;
        return hr_fail(HR_EINVAL, "%s: this process already has an NCCL communicator (rank %d of %d on cuda:%d)", op,
                       comm_rank, comm_size, comm_device);
    }
    if (world_size < 1 || rank < 0 || rank >= world_size)
        return hr_fail(HR_EINVAL, "%s: rank %d is not in 0..%d", op, rank, world_size - 1);
    if (hrc::use_device(dev, op)) return -1;
    nccl_unique_id id;
    memcpy(id.internal, id_bytes, HR_CUDA_NCCL_ID_BYTES);
    nccl_comm_t c = nullptr;
    if (check_nccl(api.comm_init_rank(&c, world_size, id, rank), op, "ncclCommInitRank")) return -1;
    comm = c;
    comm_device = dev;
    comm_rank = rank;
    comm_size = world_size;
    return 0;
}

int hr_cuda_nccl_device(void) { return comm ? comm_device : -1; }

int hr_cuda_nccl_all_reduce_(hr_tensor *t, int op_code)
{
    const char *op = "hero.dist.all_reduce";
    if (check_tensor(t, op, "the tensor")) return -1;
    int red;
    switch (op_code) {
    case HR_CUDA_NCCL_SUM: red = NCCL_SUM; break;
    case HR_CUDA_NCCL_MAX: red = NCCL_MAX; break;
    case HR_CUDA_NCCL_MIN: red = NCCL_MIN; break;
    default: return hr_fail(HR_EINVAL, "%s: unknown reduction %d", op, op_code);
    }
    if (t->dtype == HR_BOOL) return hr_fail(HR_EINVAL, "%s: cannot reduce bool tensors", op);
    int dt = nccl_dtype(t->dtype, op);
    if (dt < 0) return -1;
    int dev = hrc::dev_of(t);
    cudaStream_t st = hrc::stream(dev);
    if (!st) return -1;
    void *p = hr_tensor_data(t);
    hr_tensor_bump_version(t); /* written in place: a host copy of the old bytes is retired (also on failure) */
    if (check_nccl(api.all_reduce(p, p, (size_t)hr_tensor_numel(t), dt, red, comm, st), op, "ncclAllReduce")) return -1;
    return finish(dev, op);
}

int hr_cuda_nccl_broadcast_(hr_tensor *t, int root)
{
    const char *op = "hero.dist.broadcast";
    if (check_tensor(t, op, "the tensor")) return -1;
    if (root < 0 || root >= comm_size) return hr_fail(HR_EINVAL, "%s: root %d is not in 0..%d", op, root, comm_size - 1);
    int dt = nccl_dtype(t->dtype, op);
    if (dt < 0) return -1;
    int dev = hrc::dev_of(t);
    cudaStream_t st = hrc::stream(dev);
    if (!st) return -1;
    void *p = hr_tensor_data(t);
    hr_tensor_bump_version(t); /* as all_reduce_ */
    if (check_nccl(api.broadcast(p, p, (size_t)hr_tensor_numel(t), dt, root, comm, st), op, "ncclBroadcast")) return -1;
    return finish(dev, op);
}

int hr_cuda_nccl_all_gather(const hr_tensor *in, hr_tensor *out)
{
    const char *op = "hero.dist.all_gather";
    if (check_tensor(in, op, "the tensor") || check_tensor(out, op, "the output")) return -1;
    if (in->dtype != out->dtype) return hr_fail(HR_EINVAL, "%s: the output's dtype differs from the input's", op);
    int64_t n = hr_tensor_numel(in);
    if (hr_tensor_numel(out) != n * comm_size)
        return hr_fail(HR_EINVAL, "%s: the output holds %lld elements, not %d x %lld", op,
                       (long long)hr_tensor_numel(out), comm_size, (long long)n);
    int dt = nccl_dtype(in->dtype, op);
    if (dt < 0) return -1;
    int dev = hrc::dev_of(in);
    cudaStream_t st = hrc::stream(dev);
    if (!st) return -1;
    hr_tensor_bump_version(out); /* as all_reduce_ */
    if (check_nccl(api.all_gather(hr_tensor_data(in), hr_tensor_data(out), (size_t)n, dt, comm, st), op,
                   "ncclAllGather"))
        return -1;
    return finish(dev, op);
}

void hr_cuda_nccl_finalize(void)
{
    if (!comm) return;
    /* Abort rather than destroy: destroy waits for the other ranks, which may already be gone. */
    api.comm_abort(comm);
    comm = nullptr;
    comm_device = comm_rank = -1;
    comm_size = 0;
}
