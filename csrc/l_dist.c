/*
 * l_dist.c — Lua bindings of hr_dist.h: the table hero.core.dist (extended in Lua by hero.dist).
 */
#include <string.h>

#include "l_common.h"
#include "hr_dist.h"

#define FINALIZER_KEY "hero.dist.finalizer"

/* Finalizes MPI when the Lua state closes (the end of a script), so a script that forgets
 * hero.dist.finalize() still ends cleanly. */
static int finalizer_gc(lua_State *L)
{
    (void)L;
    hr_dist_finalize();
    return 0;
}

static int l_available(lua_State *L)
{
    lua_pushboolean(L, hr_dist_available());
    return 1;
}

static int l_is_initialized(lua_State *L)
{
    lua_pushboolean(L, hr_dist_is_initialized());
    return 1;
}

/* init([{timeout = seconds}]) -> rank, world_size. timeout <= 0 turns the watchdog off. */
static int l_init(lua_State *L)
{
    double timeout = 600;
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_getfield(L, 1, "timeout");
        if (!lua_isnil(L, -1)) {
            if (!lua_isnumber(L, -1))
                return luaL_error(L, "hero.dist.init: timeout must be a number of seconds, got %s", luaL_typename(L, -1));
            timeout = lua_tonumber(L, -1);
        }
        lua_pop(L, 1);
    }
    if (hr_dist_init(timeout) != 0) return hr_lua_error(L, "hero.dist.init");
    if (lua_getfield(L, LUA_REGISTRYINDEX, FINALIZER_KEY) == LUA_TNIL) {
        lua_newuserdatauv(L, 1, 0);
        lua_newtable(L);
        lua_pushcfunction(L, finalizer_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, FINALIZER_KEY);
    }
    lua_pop(L, 1);
    lua_pushinteger(L, hr_dist_rank());
    lua_pushinteger(L, hr_dist_world_size());
    return 2;
}

static int l_rank(lua_State *L)
{
    lua_pushinteger(L, hr_dist_rank());
    return 1;
}

static int l_world_size(lua_State *L)
{
    lua_pushinteger(L, hr_dist_world_size());
    return 1;
}

static int l_all_reduce(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "hero.dist.all_reduce");
    static const char *const names[] = {"sum", "mean", "max", "min", NULL};
    int op = luaL_checkoption(L, 2, "sum", names);
    hr_lua_check_inplace(L, t, "hero.dist.all_reduce");
    if (hr_dist_all_reduce_(t, (hr_dist_op)op) != 0) return hr_lua_error(L, "hero.dist.all_reduce");
    lua_settop(L, 1);
    return 1;
}

/* all_gather(t) -> gathered tensor, {size along dim 1 of each rank's tensor} */
static int l_all_gather(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "hero.dist.all_gather");
    int world = hr_dist_world_size();
    int64_t *counts = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)(world > 0 ? world : 1), 0);
    hr_tensor *out = hr_dist_all_gather(t, counts, NULL);
    if (!out) return hr_lua_error(L, "hero.dist.all_gather");
    hr_lua_push_tensor(L, out);
    lua_createtable(L, world, 0);
    for (int r = 0; r < world; r++) {
        lua_pushinteger(L, counts[r]);
        lua_rawseti(L, -2, r + 1);
    }
    return 2;
}

static int l_broadcast(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "hero.dist.broadcast");
    lua_Integer root = luaL_optinteger(L, 2, 0);
    if (root < 0 || root >= hr_dist_world_size())
        return luaL_error(L, "hero.dist.broadcast: root %d is not a rank (0..%d)", (int)root,
                          hr_dist_world_size() - 1);
    hr_lua_check_inplace(L, t, "hero.dist.broadcast");
    if (hr_dist_broadcast_(t, (int)root) != 0) return hr_lua_error(L, "hero.dist.broadcast");
    lua_settop(L, 1);
    return 1;
}

static int l_barrier(lua_State *L)
{
    if (hr_dist_barrier() != 0) return hr_lua_error(L, "hero.dist.barrier");
    return 0;
}

static int l_finalize(lua_State *L)
{
    if (hr_dist_finalize() != 0) return hr_lua_error(L, "hero.dist.finalize");
    return 0;
}

/* abort(msg [, code = 1]): prints msg (with the rank) and ends every process of the job. */
static int l_abort(lua_State *L)
{
    const char *msg = luaL_optstring(L, 1, "aborted");
    lua_Integer code = luaL_optinteger(L, 2, 1);
    if (hr_dist_abort(msg, (int)code) != 0) return hr_lua_error(L, "hero.dist.abort");
    return 0;
}

/* ------------------------------------------------------------------ gradient reducer */

#define REDUCER_MT "hero.dist.GradReducer"

typedef struct {
    hr_grad_reducer *r;
    hr_grad_reducer *deferred; /* freed from a finalizer (a backward may be using its hooks): __gc frees it */
} reducer_box;

static hr_grad_reducer *check_reducer(lua_State *L, const char *op)
{
    reducer_box *b = luaL_checkudata(L, 1, REDUCER_MT);
    if (!b->r) luaL_error(L, "%s: the reducer was freed", op);
    return b->r;
}

/* GradReducer(params, bucket_bytes) -> reducer; params: an array of tensors */
static int l_grad_reducer(lua_State *L)
{
    const char *op = "hero.dist.GradReducer";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer bytes = luaL_checkinteger(L, 2);
    int n = (int)lua_rawlen(L, 1);
    hr_tensor **ts = lua_newuserdatauv(L, sizeof *ts * (size_t)(n > 0 ? n : 1), 0);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 1, i + 1);
        ts[i] = hr_lua_check_tensor(L, -1, op);
        lua_pop(L, 1);
    }
    reducer_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    b->r = NULL;
    b->deferred = NULL;
    luaL_setmetatable(L, REDUCER_MT);
    b->r = hr_grad_reducer_new(ts, n, (int64_t)bytes);
    if (!b->r) return hr_lua_error(L, op);
    return 1;
}

static int reducer_begin(lua_State *L)
{
    if (hr_grad_reducer_begin(check_reducer(L, "GradReducer:begin"))) return hr_lua_error(L, "GradReducer:begin");
    return 0;
}

/* finish([extra numbers]) -> their means over the ranks */
static int reducer_finish(lua_State *L)
{
    int n = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        n = (int)lua_rawlen(L, 2);
    }
    double *extra = lua_newuserdatauv(L, sizeof(double) * (size_t)(n > 0 ? n : 1), 0);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (!lua_isnumber(L, -1)) return luaL_error(L, "GradReducer:finish: extra value %d is not a number", i + 1);
        extra[i] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    /* taken after the allocation above, whose collection may have run a finalizer freeing it */
    hr_grad_reducer *r = check_reducer(L, "GradReducer:finish");
    if (hr_grad_reducer_finish(r, extra, n)) return hr_lua_error(L, "GradReducer:finish");
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushnumber(L, extra[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* counts() -> number of buckets, buckets started during the last backward pass */
static int reducer_counts(lua_State *L)
{
    int buckets, early;
    hr_grad_reducer_counts(check_reducer(L, "GradReducer:counts"), &buckets, &early);
    lua_pushinteger(L, buckets);
    lua_pushinteger(L, early);
    return 2;
}

/* reducer:free() and the end of a `local r <close>` (see hr_lua_in_finalizer) */
static int reducer_free(lua_State *L)
{
    reducer_box *b = luaL_checkudata(L, 1, REDUCER_MT);
    HR_LUA_RELEASE_OR_DEFER(L, b, r, hr_grad_reducer_free);
    return 0;
}

static int reducer_gc(lua_State *L)
{
    reducer_box *b = luaL_checkudata(L, 1, REDUCER_MT);
    HR_LUA_RELEASE_ALL(b, r, hr_grad_reducer_free);
    return 0;
}

void hr_lua_open_dist(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg reducer_methods[] = {
        {"begin", reducer_begin}, {"finish", reducer_finish}, {"counts", reducer_counts},
        {"free", reducer_free},   {NULL, NULL},
    };
    luaL_newmetatable(L, REDUCER_MT);
    luaL_newlib(L, reducer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, reducer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, reducer_free); /* local r <close> = dist.GradReducer(...): freed at scope end */
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"available", l_available},   {"is_initialized", l_is_initialized},
        {"init", l_init},             {"rank", l_rank},
        {"world_size", l_world_size}, {"all_reduce", l_all_reduce},
        {"all_gather", l_all_gather}, {"broadcast", l_broadcast},
        {"barrier", l_barrier},       {"finalize", l_finalize},
        {"abort", l_abort},           {"GradReducer", l_grad_reducer},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lua_setfield(L, module_idx, "dist");
}
