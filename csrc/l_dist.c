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

void hr_lua_open_dist(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg fns[] = {
        {"available", l_available},   {"is_initialized", l_is_initialized},
        {"init", l_init},             {"rank", l_rank},
        {"world_size", l_world_size}, {"all_reduce", l_all_reduce},
        {"all_gather", l_all_gather}, {"broadcast", l_broadcast},
        {"barrier", l_barrier},       {"finalize", l_finalize},
        {"abort", l_abort},           {NULL, NULL},
    };
    luaL_newlib(L, fns);
    lua_setfield(L, module_idx, "dist");
}
