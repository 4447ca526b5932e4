/*
 * blas_env.c — the module hero.blas_env, which `require "hero"` loads before hero.core.
 *
 * OpenBLAS reads its settings from the environment once, while it is being loaded, that is while
 * hero.core (linked against it) is loaded: a setting must be in the environment before that, so it
 * lives in this separate module, which does not link OpenBLAS.
 *
 * The one setting: OPENBLAS_THREAD_TIMEOUT, how long an OpenBLAS worker thread spins (2^N cycles)
 * after a GEMM before it sleeps. The default, 2^28 cycles (~0.1 s), keeps the workers spinning
 * through the element-wise ops that run on hero's own thread pool between two GEMMs, so on a
 * machine with as many cores as threads hero's workers share their cores with spinning OpenBLAS
 * workers. With 2^4 they sleep at once and are woken for the next GEMM: measured on the hero
 * pre-training step, 2 threads on 2 cores, ~7% faster and steadier. A value already in the
 * environment is left as it is.
 */
#include <dlfcn.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stdlib.h>

#define THREAD_TIMEOUT_VAR "OPENBLAS_THREAD_TIMEOUT"
#define HERO_THREAD_TIMEOUT "4"

/* true when an OpenBLAS is already in the process (then its settings are fixed already) */
static bool openblas_already_loaded(void)
{
    static const char *const names[] = {"libopenblas.so.0", "libopenblasp.so.0", "libopenblaso.so.0"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *handle = dlopen(names[i], RTLD_NOW | RTLD_NOLOAD);
        if (handle) {
            dlclose(handle);
            return true;
        }
    }
    return false;
}

int luaopen_hero_blas_env(lua_State *L);

int luaopen_hero_blas_env(lua_State *L)
{
    bool loaded = openblas_already_loaded();
    const char *given = getenv(THREAD_TIMEOUT_VAR);
    if (!given && !loaded) setenv(THREAD_TIMEOUT_VAR, HERO_THREAD_TIMEOUT, 0);
    lua_createtable(L, 0, 3);
    const char *now = getenv(THREAD_TIMEOUT_VAR);
    lua_pushstring(L, now ? now : "");
    lua_setfield(L, -2, "thread_timeout");
    lua_pushstring(L, given ? "environment" : loaded ? "already loaded" : "hero");
    lua_setfield(L, -2, "thread_timeout_source");
    lua_pushboolean(L, loaded);
    lua_setfield(L, -2, "openblas_loaded_before");
    return 1;
}
