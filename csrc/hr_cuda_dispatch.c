/* hr_cuda_dispatch.c — the CUDA entry points of the core module in a CUDA build. The kernels and
 * cuBLAS live in a second module, hero/cuda_backend.so, next to core.so, loaded on the first call
 * that needs a GPU: linking cuBLAS into core.so would map and relocate hundreds of MiB at
 * `require "hero"` (about 155 MiB of resident memory) on every run, GPU or not. Each hr_cuda_*
 * function here forwards to the backend's table (csrc/hr_cuda_api.h); when the backend cannot be
 * loaded (no driver, libraries missing) there are no devices and every other call fails with the
 * loader's reason. */
#ifdef HERO_WITH_CUDA
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "hr_cuda.h"
#include "hr_cuda_api.h"

#define BACKEND_FILE "cuda_backend.so"

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static const hr_cuda_api *backend_api;
static char load_error[8192];

static void load_backend(void)
{
    Dl_info self;
    if (!dladdr((void *)&hr_cuda_compiled, &self) || !self.dli_fname) {
        snprintf(load_error, sizeof load_error, "cannot locate the hero core module to find " BACKEND_FILE);
        return;
    }
    /* The backend calls back into core (tensors, errors): make core's symbols visible to it.
     * Lua opened core with RTLD_LOCAL; reopening it RTLD_NOLOAD | RTLD_GLOBAL only promotes it. */
    if (!dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) {
        snprintf(load_error, sizeof load_error, "cannot expose %s to the CUDA backend: %s", self.dli_fname, dlerror());
        return;
    }
    char path[4096];
    const char *slash = strrchr(self.dli_fname, '/');
    int dir_len = slash ? (int)(slash - self.dli_fname + 1) : 0;
    if (snprintf(path, sizeof path, "%.*s%s", dir_len, self.dli_fname, BACKEND_FILE) >= (int)sizeof path) {
        snprintf(load_error, sizeof load_error, "the path of " BACKEND_FILE " is too long");
        return;
    }
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL); /* kept for the life of the process */
    if (!handle) {
        snprintf(load_error, sizeof load_error, "%s", dlerror());
        return;
    }
    const hr_cuda_api *(*get_api)(void);
    void *sym = dlsym(handle, HR_CUDA_API_SYMBOL);
    if (!sym) {
        snprintf(load_error, sizeof load_error, "%s lacks %s: %s", path, HR_CUDA_API_SYMBOL, dlerror());
        return;
    }
    memcpy(&get_api, &sym, sizeof get_api); /* object pointer to function pointer, as POSIX allows */
    const hr_cuda_api *api = get_api();
    if (!api || api->version != HR_CUDA_API_VERSION) {
        snprintf(load_error, sizeof load_error, "%s was built for another version of hero (API %d, expected %d)", path,
                 api ? api->version : -1, HR_CUDA_API_VERSION);
        return;
    }
    if (!api->signature || strcmp(api->signature, HR_CUDA_API_SIGNATURE) != 0) {
        snprintf(load_error, sizeof load_error,
                 "%s was built from other sources than this hero (its entry points differ): rebuild both", path);
        return;
    }
    backend_api = api;
}

static const hr_cuda_api *backend(void)
{
    pthread_once(&load_once, load_backend);
    return backend_api;
}

static int unavailable(void)
{
    return hr_fail(HR_EDEVICE, "the CUDA backend could not be loaded: %s", load_error);
}

bool hr_cuda_compiled(void) { return true; }

#define FALLBACK_INT return unavailable();
#define FALLBACK_PTR                                                                                                   \
    unavailable();                                                                                                     \
    return NULL;
#define FALLBACK_ZERO return 0;
#define FALLBACK_VOID return;
#define FALLBACK_FALSE return false;
#define FALLBACK_NEG return -1;
#define CALL_INT(expr) return expr;
#define CALL_PTR(expr) return expr;
#define CALL_ZERO(expr) return expr;
#define CALL_VOID(expr) expr;
#define CALL_FALSE(expr) return expr;
#define CALL_NEG(expr) return expr;

#define FORWARD(kind, ret, name, params, args)                                                                         \
    ret hr_cuda_##name params                                                                                          \
    {                                                                                                                  \
        const hr_cuda_api *api = backend();                                                                            \
        if (!api) {                                                                                                    \
            FALLBACK_##kind                                                                                            \
        }                                                                                                              \
        CALL_##kind(api->name args)                                                                                    \
    }
HR_CUDA_API_LIST(FORWARD)

#else
typedef int hr_cuda_dispatch_unused; /* ISO C wants a declaration in every file */
#endif
