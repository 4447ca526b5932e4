/*
 * l_autocast.c — autocast in the bindings (csrc/hr_autocast.h) and hero.core._autocast.
 *
 * hr_lua_autocast replaces a tensor argument on the Lua stack by its cast copy when the thread's
 * autocast state asks for one, so the copy is owned by Lua (released by the collector even when
 * the op then raises an error) and the op simply reads its arguments from the stack.
 */
#include "hr_autocast.h"
#include "hr_autograd_ops.h"
#include "l_common.h"

hr_tensor *hr_lua_autocast(lua_State *L, int idx, int kind, const char *op)
{
    hr_tensor *t = hr_lua_check_tensor(L, idx, op);
    hr_dtype want = hr_autocast_target(t, (hr_autocast_kind)kind);
    if (want == t->dtype) return t;
    hr_tensor *c;
    HR_LUA_RETRY(L, c, hr_ag_cast(t, want));
    if (!c) {
        hr_lua_error(L, op); /* raises */
        return NULL;
    }
    idx = lua_absindex(L, idx);
    hr_lua_push_tensor(L, c);
    lua_replace(L, idx);
    return c;
}

/* _autocast(dtype "bf16"|"f16" or nil) -> the previous dtype or nil (off) */
static int l_autocast(lua_State *L)
{
    bool on = !lua_isnoneornil(L, 1);
    hr_dtype dt = HR_BF16;
    if (on) {
        static const char *const names[] = {"bf16", "f16", NULL};
        dt = luaL_checkoption(L, 1, NULL, names) == 0 ? HR_BF16 : HR_F16;
    }
    hr_dtype prev;
    bool was = hr_autocast_set(on, dt, &prev);
    if (was) lua_pushstring(L, hr_dtype_name(prev));
    else lua_pushnil(L);
    return 1;
}

/* _autocast_state() -> the dtype or nil (off) */
static int l_autocast_state(lua_State *L)
{
    hr_dtype dt;
    if (hr_autocast_get(&dt)) lua_pushstring(L, hr_dtype_name(dt));
    else lua_pushnil(L);
    return 1;
}

void hr_lua_open_autocast(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg fns[] = {
        {"_autocast", l_autocast},
        {"_autocast_state", l_autocast_state},
        {NULL, NULL},
    };
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}
