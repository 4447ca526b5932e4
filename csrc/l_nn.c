/* l_nn.c — Lua bindings of the fused neural-network nodes (hero.nn.functional in Lua). */
#include "hr_nn.h"
#include "l_common.h"

static hr_tensor *opt_tensor(lua_State *L, int idx, const char *op)
{
    return lua_isnoneornil(L, idx) ? NULL : hr_lua_check_tensor(L, idx, op);
}

/* layer_norm(x, weight|nil, bias|nil, eps) */
static int l_layer_norm(lua_State *L)
{
    hr_tensor *x = hr_lua_check_tensor(L, 1, "layer_norm");
    hr_tensor *w = opt_tensor(L, 2, "layer_norm");
    hr_tensor *b = opt_tensor(L, 3, "layer_norm");
    double eps = luaL_checknumber(L, 4);
    if (!(eps >= 0)) return luaL_error(L, "layer_norm: eps must be >= 0, got %g", eps);
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_layer_norm(x, w, b, eps));
    if (!y) return hr_lua_error(L, "layer_norm");
    hr_lua_push_tensor(L, y);
    return 1;
}

static const luaL_Reg module_functions[] = {
    {"layer_norm", l_layer_norm},
    {NULL, NULL},
};

void hr_lua_open_nn(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, module_functions, 0);
    lua_pop(L, 1);
}
