/*
 * hr_blas_guard.c — OpenBLAS (0.3.21, Debian 12) allocates a work buffer (about 128 MiB of address
 * space on x86-64) the first time it is called while all its earlier buffers are in use (one per
 * thread calling it at the same moment), and when that allocation fails it retries forever: the
 * process hangs instead of failing. Allocations only fail under an address-space limit (ulimit -v,
 * RLIMIT_AS) or strict overcommit (vm.overcommit_memory = 2). There ("limited"), hero:
 *   - runs BLAS regions one at a time, from one calling thread each, with OpenBLAS single-threaded
 *     at all times (its threaded driver mallocs per call and exits the process when that fails, and
 *     each thread it starts asks for a buffer of its own; results do not depend on the split), so
 *     OpenBLAS never needs a second buffer nor any other allocation (hr_set_num_threads leaves
 *     OpenBLAS at one thread there);
 *   - before the first region, maps and unmaps (without touching) a buffer's worth of address
 *     space: when that fails, the operation fails with an out-of-memory error and the process goes
 *     on. Once a region has run, the buffer exists and is reused.
 * Elsewhere (the usual case) the guard costs one branch and BLAS calls run as before.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "hr_blas_guard.h"
#include "hr_core.h"

/* OpenBLAS's BUFFER_SIZE on x86-64 (128 MiB) plus its alignment slack, rounded up. */
#define BLAS_BUFFER_BYTES ((size_t)136 << 20)

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool limited;
static bool have_buffer; /* a region has run: OpenBLAS holds its buffer (guarded by lock) */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

void openblas_set_num_threads(int num_threads);

static void detect(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) limited = true;
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    if (f) {
        int mode = 0;
        if (fscanf(f, "%d", &mode) == 1 && mode == 2) limited = true;
        fclose(f);
    }
}

bool hr_blas_limited(void)
{
    pthread_once(&once, detect);
    return limited;
}

int hr_blas_begin(const char *op)
{
    if (!hr_blas_limited()) return 0;
    pthread_mutex_lock(&lock);
    openblas_set_num_threads(1);
    if (have_buffer) return 0;
    void *p = mmap(NULL, BLAS_BUFFER_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED && hr_empty_cache() > 0) /* blocks kept for reuse go back first */
        p = mmap(NULL, BLAS_BUFFER_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        pthread_mutex_unlock(&lock);
        return hr_fail(HR_ENOMEM, "%s: out of memory: the BLAS library needs %zu MiB of work space and the "
                       "address space left is smaller", op, BLAS_BUFFER_BYTES >> 20);
    }
    munmap(p, BLAS_BUFFER_BYTES);
    return 0;
}

void hr_blas_end(void)
{
    if (!limited) return;
    have_buffer = true;
    pthread_mutex_unlock(&lock);
}
