/*
 * dist.c — data-parallel communication over MPI (see hr_dist.h).
 */
#include "hr_dist.h"
#include "dist_internal.h"

#include <stdio.h>
#include <string.h>

#define NO_MPI_MSG "hero was built without MPI (install libopenmpi-dev and rebuild)"

#ifndef HERO_WITH_MPI

bool hr_dist_available(void) { return false; }
int hr_dist_init(double timeout_s) { (void)timeout_s; return hr_fail(HR_EDEVICE, NO_MPI_MSG); }
bool hr_dist_is_initialized(void) { return false; }
int hr_dist_rank(void) { return 0; }
int hr_dist_world_size(void) { return 1; }
int hr_dist_all_reduce_(hr_tensor *t, hr_dist_op op) { (void)t; (void)op; return hr_fail(HR_EDEVICE, NO_MPI_MSG); }
hr_tensor *hr_dist_all_gather(hr_tensor *t, int64_t *counts, int64_t *maxsize)
{
    (void)t; (void)counts; (void)maxsize;
    return hr_fail_null(HR_EDEVICE, NO_MPI_MSG);
}
int hr_dist_broadcast_(hr_tensor *t, int root) { (void)t; (void)root; return hr_fail(HR_EDEVICE, NO_MPI_MSG); }
int hr_dist_barrier(void) { return hr_fail(HR_EDEVICE, NO_MPI_MSG); }
int hr_dist_finalize(void) { return hr_fail(HR_EDEVICE, NO_MPI_MSG); }
int hr_dist_abort(const char *msg, int code) { (void)msg; (void)code; return hr_fail(HR_EDEVICE, NO_MPI_MSG); }

#else /* HERO_WITH_MPI */

#include <mpi.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

/* MPI is process-wide, so is this state. The watchdog thread reads g_rank and g_thread_level,
 * set before it starts, and g_final, which hr_dist_finalize sets while it runs: atomic. */
static bool g_init, g_watchdog_started;
static atomic_bool g_final;
static int g_rank, g_world = 1, g_thread_level;
/* Watchdog: the monotonic time (ns) the current collective started (0: none running), its name and
 * the timeout in ns (0: off). Written by the Lua thread, read by the watchdog thread. */
static _Atomic int64_t g_busy_since;
static _Atomic(const char *) g_busy_op;
static _Atomic int64_t g_timeout_ns;

/* Largest element count handed to one MPI call (counts are C ints). */
#define CHUNK ((int64_t)1 << 30)

bool hr_dist_available(void) { return true; }
bool hr_dist_is_initialized(void) { return g_init && !g_final; }
int hr_dist_rank(void) { return g_rank; }
int hr_dist_world_size(void) { return g_world; }

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void hr_dist_busy_begin(const char *op)
{
    atomic_store(&g_busy_op, op);
    atomic_store(&g_busy_since, now_ns());
}

void hr_dist_busy_end(void) { atomic_store(&g_busy_since, 0); }

/* The watchdog ends the job on purpose: the process is blocked inside MPI and cannot raise a Lua
 * error, and a stuck collective would otherwise keep every rank waiting forever. */
static atomic_bool g_watchdog_stop;
static pthread_t g_watchdog_thread;

static void *watchdog_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_watchdog_stop)) {
        struct timespec nap = {0, 100 * 1000 * 1000};
        nanosleep(&nap, NULL);
        int64_t since = atomic_load(&g_busy_since), timeout = atomic_load(&g_timeout_ns);
        if (since == 0 || timeout <= 0 || now_ns() - since <= timeout) continue;
        fprintf(stderr,
                "hero.dist: rank %d: %s waited more than %.3g s for the other ranks (one of them died, "
                "hangs or skipped the call); aborting the job\n",
                g_rank, atomic_load(&g_busy_op), (double)timeout / 1e9);
        fflush(stderr);
        if (!atomic_load(&g_final) && g_thread_level >= MPI_THREAD_MULTIPLE) MPI_Abort(MPI_COMM_WORLD, 124);
        _exit(124); /* MPI cannot be called from this thread: a non-zero exit makes mpirun end the job */
    }
    return NULL;
}

/* The watchdog runs code of this library: it must be gone before the library is unloaded (Lua
 * unloads C modules when its state closes), or it would wake up in unmapped memory. */
static void stop_watchdog(void)
{
    if (!g_watchdog_started) return;
    atomic_store(&g_watchdog_stop, true);
    pthread_join(g_watchdog_thread, NULL);
    g_watchdog_started = false;
}

__attribute__((destructor)) static void stop_watchdog_at_unload(void) { stop_watchdog(); }

int hr_dist_mpi_fail(int rc, const char *op)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error code %d", rc);
    return hr_fail(HR_EIO, "%s: MPI failed on rank %d: %s", op, g_rank, msg);
}

int hr_dist_check_ready(const char *op)
{
    if (g_final) return hr_fail(HR_EINVAL, "%s: hero.dist was finalized", op);
    if (!g_init) return hr_fail(HR_EINVAL, "%s: call hero.dist.init() first", op);
    return 0;
}

static int check_tensor(const hr_tensor *t, const char *op)
{
    if (hr_dist_check_ready(op) != 0) return -1;
    if (hr_tensor_check_live(t, op) != 0) return -1;
    if (hr_tensor_device(t).type != HR_CPU) {
        char buf[96];
        return hr_fail(HR_EDEVICE,
                       "%s: got a %s tensor; hero.dist exchanges CPU tensors only (CUDA tensors would need "
                       "NCCL, which hero does not support yet): copy it to the CPU first",
                       op, hr_tensor_desc(t, buf, sizeof buf));
    }
    return 0;
}

/* The dynamic loader opens Lua C modules with RTLD_LOCAL, which hides libmpi's symbols from the
 * plugins OpenMPI itself dlopens at MPI_Init ("undefined symbol" errors). Reopening libmpi with
 * RTLD_GLOBAL (NOLOAD: it is already mapped) makes them visible. The handle is kept on purpose. */
static void promote_libmpi(void)
{
    Dl_info info;
    if (dladdr((void *)&MPI_Init_thread, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

int hr_dist_init(double timeout_s)
{
    if (g_final) return hr_fail(HR_EINVAL, "hero.dist.init: MPI cannot be initialised again after finalize");
    if (!g_init) {
        int flag = 0, rc;
        MPI_Initialized(&flag);
        if (!flag) {
            promote_libmpi();
            rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &g_thread_level);
            if (rc != MPI_SUCCESS) return hr_dist_mpi_fail(rc, "hero.dist.init");
        } else {
            MPI_Query_thread(&g_thread_level);
        }
        /* errors come back as return codes (and then Lua errors) instead of MPI's default abort */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
        MPI_Comm_size(MPI_COMM_WORLD, &g_world);
        g_init = true;
    }
    atomic_store(&g_timeout_ns, timeout_s > 0 ? (int64_t)(timeout_s * 1e9) : 0);
    if (timeout_s > 0 && !g_watchdog_started) {
        pthread_t th;
        if (pthread_create(&th, NULL, watchdog_main, NULL) != 0)
            return hr_fail(HR_EIO, "hero.dist.init: cannot start the watchdog thread");
        g_watchdog_thread = th;
        g_watchdog_started = true;
    }
    return 0;
}

/* Checks that every rank passed the same values vals[0..n) (element counts, dtypes, ...): one
 * MAX all-reduce of (v, -v). Returns 0 when they agree; otherwise fails on every rank. */
int hr_dist_agree(const char *op, const int64_t *vals, const char *const *names, int n)
{
    int64_t buf[16];
    for (int i = 0; i < n; i++) {
        buf[i] = vals[i];
        buf[n + i] = -vals[i];
    }
    hr_dist_busy_begin(op);
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, 2 * n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
    hr_dist_busy_end();
    if (rc != MPI_SUCCESS) return hr_dist_mpi_fail(rc, op);
    for (int i = 0; i < n; i++) {
        if (buf[i] != -buf[n + i])
            return hr_fail(HR_EINVAL, "%s: the ranks passed different %s (from %lld to %lld; rank %d has %lld)", op,
                           names[i], (long long)-buf[n + i], (long long)buf[i], g_rank, (long long)vals[i]);
    }
    return 0;
}

static MPI_Datatype mpi_type(hr_dtype dt)
{
    switch (dt) {
    case HR_F32: return MPI_FLOAT;
    case HR_F64: return MPI_DOUBLE;
    case HR_I64: return MPI_INT64_T;
    case HR_I32: return MPI_INT32_T;
    default: return MPI_DATATYPE_NULL;
    }
}

static void divide(void *p, hr_dtype dt, int64_t n, int world)
{
    if (dt == HR_F32) {
        float *x = p;
        for (int64_t i = 0; i < n; i++) x[i] /= (float)world;
    } else {
        double *x = p;
        for (int64_t i = 0; i < n; i++) x[i] /= (double)world;
    }
}

int hr_dist_all_reduce_(hr_tensor *t, hr_dist_op op)
{
    const char *name = "hero.dist.all_reduce";
    if (check_tensor(t, name) != 0) return -1;
    if (op < HR_DIST_SUM || op > HR_DIST_MIN) return hr_fail(HR_EINVAL, "%s: unknown op %d", name, (int)op);
    int64_t n = hr_tensor_numel(t);
    int64_t vals[3] = {n, (int64_t)t->dtype, (int64_t)op};
    static const char *const names[3] = {"element counts", "dtypes", "ops"};
    if (hr_dist_agree(name, vals, names, 3) != 0) return -1;
    MPI_Datatype ty = mpi_type(t->dtype);
    if (ty == MPI_DATATYPE_NULL)
        return hr_fail(HR_EINVAL, "%s: dtype %s is not supported (f32, f64, i64 or i32)", name,
                       hr_dtype_name(t->dtype));
    if (op == HR_DIST_MEAN && !hr_dtype_is_float(t->dtype))
        return hr_fail(HR_EINVAL, "%s: op 'mean' needs a floating tensor, got %s (use 'sum')", name,
                       hr_dtype_name(t->dtype));
    bool direct = hr_tensor_is_contiguous(t);
    hr_tensor *buf = direct ? t : hr_contiguous(t);
    if (!buf) return -1;
    char *p = hr_tensor_data(buf);
    size_t es = hr_dtype_size(t->dtype);
    MPI_Op mop = op == HR_DIST_MAX ? MPI_MAX : op == HR_DIST_MIN ? MPI_MIN : MPI_SUM;
    int rc = MPI_SUCCESS;
    hr_dist_busy_begin(name);
    for (int64_t done = 0; done < n && rc == MPI_SUCCESS; done += CHUNK) {
        int64_t len = n - done < CHUNK ? n - done : CHUNK;
        rc = MPI_Allreduce(MPI_IN_PLACE, p + done * es, (int)len, ty, mop, MPI_COMM_WORLD);
    }
    hr_dist_busy_end();
    if (rc != MPI_SUCCESS) {
        if (!direct) hr_tensor_release(buf);
        return hr_dist_mpi_fail(rc, name);
    }
    if (op == HR_DIST_MEAN) divide(p, t->dtype, n, g_world);
    int ret = 0;
    if (!direct) {
        ret = hr_copy_(t, buf);
        hr_tensor_release(buf);
    }
    hr_tensor_bump_version(t);
    return ret;
}

int hr_dist_broadcast_(hr_tensor *t, int root)
{
    const char *name = "hero.dist.broadcast";
    if (check_tensor(t, name) != 0) return -1;
    if (root < 0 || root >= g_world)
        return hr_fail(HR_EINVAL, "%s: root %d is not a rank (0..%d)", name, root, g_world - 1);
    int64_t n = hr_tensor_numel(t);
    int64_t vals[3] = {n, (int64_t)t->dtype, root};
    static const char *const names[3] = {"element counts", "dtypes", "roots"};
    if (hr_dist_agree(name, vals, names, 3) != 0) return -1;
    bool direct = hr_tensor_is_contiguous(t);
    hr_tensor *buf = direct ? t : hr_contiguous(t);
    if (!buf) return -1;
    char *p = hr_tensor_data(buf);
    int64_t nbytes = n * (int64_t)hr_dtype_size(t->dtype);
    int rc = MPI_SUCCESS;
    hr_dist_busy_begin(name);
    for (int64_t done = 0; done < nbytes && rc == MPI_SUCCESS; done += CHUNK) {
        int64_t len = nbytes - done < CHUNK ? nbytes - done : CHUNK;
        rc = MPI_Bcast(p + done, (int)len, MPI_BYTE, root, MPI_COMM_WORLD);
    }
    hr_dist_busy_end();
    if (rc != MPI_SUCCESS) {
        if (!direct) hr_tensor_release(buf);
        return hr_dist_mpi_fail(rc, name);
    }
    int ret = 0;
    if (!direct) {
        ret = hr_copy_(t, buf);
        hr_tensor_release(buf);
    }
    hr_tensor_bump_version(t);
    return ret;
}

hr_tensor *hr_dist_all_gather(hr_tensor *t, int64_t *counts, int64_t *maxsize)
{
    const char *name = "hero.dist.all_gather";
    if (check_tensor(t, name) != 0) return NULL;
    /* a scalar is gathered as a 1-element vector */
    int ndim = t->ndim == 0 ? 1 : t->ndim;
    int64_t size[HR_MAX_DIMS];
    if (t->ndim == 0) size[0] = 1;
    else memcpy(size, t->size, sizeof(int64_t) * (size_t)ndim);
    enum { HDR = 2 + HR_MAX_DIMS };
    int64_t hdr[HDR] = {ndim, (int64_t)t->dtype};
    memcpy(hdr + 2, size, sizeof(int64_t) * (size_t)ndim);
    int64_t *all = hr_alloc_bytes(sizeof(int64_t) * HDR * (size_t)g_world);
    if (!all) return NULL;
    hr_dist_busy_begin(name);
    int rc = MPI_Allgather(hdr, HDR, MPI_INT64_T, all, HDR, MPI_INT64_T, MPI_COMM_WORLD);
    hr_dist_busy_end();
    if (rc != MPI_SUCCESS) {
        hr_free_bytes(all, sizeof(int64_t) * HDR * (size_t)g_world);
        hr_dist_mpi_fail(rc, name);
        return NULL;
    }
    int64_t out_size[HR_MAX_DIMS] = {0};
    int bad_rank = -1;
    for (int r = 0; r < g_world; r++) {
        const int64_t *h = all + (size_t)r * HDR;
        if (h[0] != ndim || h[1] != (int64_t)t->dtype) {
            bad_rank = r;
            break;
        }
        out_size[0] += h[2];
        for (int d = 1; d < ndim; d++)
            if (h[2 + d] > out_size[d]) out_size[d] = h[2 + d];
        if (counts) counts[r] = h[2];
    }
    int64_t other_ndim = bad_rank >= 0 ? all[(size_t)bad_rank * HDR] : 0;
    int64_t other_dt = bad_rank >= 0 ? all[(size_t)bad_rank * HDR + 1] : 0;
    int64_t row = 1; /* elements per index of dim 0, after padding */
    for (int d = 1; d < ndim; d++) row *= out_size[d];
    int64_t *byte_counts = (int64_t *)all; /* reused below: the header table is no longer needed */
    int64_t total = 0;
    size_t es = hr_dtype_size(t->dtype);
    if (bad_rank < 0) {
        for (int r = 0; r < g_world; r++) {
            int64_t c = all[(size_t)r * HDR + 2] * row * (int64_t)es;
            byte_counts[r] = c;
            total += c;
        }
    }
    if (bad_rank >= 0) {
        hr_free_bytes(all, sizeof(int64_t) * HDR * (size_t)g_world);
        return hr_fail_null(HR_EINVAL, "%s: the ranks passed different tensors: rank %d has %lld dims of %s, rank %d "
                            "%lld dims of %s", name, g_rank, (long long)ndim, hr_dtype_name(t->dtype), bad_rank,
                            (long long)other_ndim,
                            other_dt >= 0 && other_dt < HR_NDTYPES ? hr_dtype_name((hr_dtype)other_dt) : "?");
    }
    if (total > INT_MAX) {
        hr_free_bytes(all, sizeof(int64_t) * HDR * (size_t)g_world);
        return hr_fail_null(HR_EINVAL, "%s: %lld bytes in all is more than one MPI call can gather", name,
                            (long long)total);
    }
    if (maxsize) memcpy(maxsize, out_size, sizeof(int64_t) * (size_t)ndim);
    /* this rank's block, zero-padded to the common sizes after dim 0 */
    int64_t pad_size[HR_MAX_DIMS];
    memcpy(pad_size, out_size, sizeof pad_size);
    pad_size[0] = size[0];
    bool padded = false;
    for (int d = 1; d < ndim; d++) padded = padded || size[d] != out_size[d];
    hr_tensor *block = NULL;
    if (!padded && t->ndim > 0) {
        block = hr_contiguous(t);
    } else {
        block = hr_tensor_zeros(ndim, pad_size, t->dtype, hr_cpu());
        /* a view of the block's leading corner, narrowed to this rank's sizes, receives t */
        hr_tensor *dst = block, *owned = NULL;
        for (int d = 1; d < ndim && dst; d++) {
            hr_tensor *v = hr_view_narrow(dst, d, 0, size[d]);
            if (owned) hr_tensor_release(owned);
            owned = dst = v;
        }
        if (!dst || hr_copy_(dst, t) != 0) {
            if (block) hr_tensor_release(block);
            block = NULL;
        }
        if (owned) hr_tensor_release(owned);
    }
    hr_tensor *out = block ? hr_tensor_empty(ndim, out_size, t->dtype, hr_cpu()) : NULL;
    int *cnt = NULL, *disp = NULL;
    if (out) {
        cnt = hr_alloc_bytes(sizeof(int) * 2 * (size_t)g_world);
        if (cnt) {
            disp = cnt + g_world;
            int64_t off = 0;
            for (int r = 0; r < g_world; r++) {
                cnt[r] = (int)byte_counts[r];
                disp[r] = (int)off;
                off += byte_counts[r];
            }
            hr_dist_busy_begin(name);
            rc = MPI_Allgatherv(hr_tensor_data(block), cnt[g_rank], MPI_BYTE, hr_tensor_data(out), cnt, disp,
                                MPI_BYTE, MPI_COMM_WORLD);
            hr_dist_busy_end();
            hr_free_bytes(cnt, sizeof(int) * 2 * (size_t)g_world);
            if (rc != MPI_SUCCESS) {
                hr_dist_mpi_fail(rc, name);
                hr_tensor_release(out);
                out = NULL;
            }
        } else {
            hr_tensor_release(out);
            out = NULL;
        }
    }
    if (block) hr_tensor_release(block);
    hr_free_bytes(all, sizeof(int64_t) * HDR * (size_t)g_world);
    return out;
}

int hr_dist_barrier(void)
{
    if (hr_dist_check_ready("hero.dist.barrier") != 0) return -1;
    hr_dist_busy_begin("hero.dist.barrier");
    int rc = MPI_Barrier(MPI_COMM_WORLD);
    hr_dist_busy_end();
    return rc == MPI_SUCCESS ? 0 : hr_dist_mpi_fail(rc, "hero.dist.barrier");
}

int hr_dist_finalize(void)
{
    if (!g_init || g_final) return 0;
    /* MPI_Finalize synchronises with the other ranks: under the watchdog too */
    hr_dist_busy_begin("hero.dist.finalize");
    int rc = MPI_Finalize();
    atomic_store(&g_final, true);
    hr_dist_busy_end();
    return rc == MPI_SUCCESS ? 0 : hr_dist_mpi_fail(rc, "hero.dist.finalize");
}

int hr_dist_abort(const char *msg, int code)
{
    if (hr_dist_check_ready("hero.dist.abort") != 0) return -1;
    fprintf(stderr, "hero.dist: rank %d: %s\n", g_rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    return hr_fail(HR_EIO, "hero.dist.abort: MPI_Abort returned");
}

#endif /* HERO_WITH_MPI */
