/* l_optim.c — Lua bindings of the fused optimizer kernels (policy lives in lua/hero/optim). */
#include <stdlib.h>

#include "hr_optim.h"
#include "l_common.h"

/* Reads field `name` of the table on top of the stack as a live tensor. */
/* The items are read raw: no metamethod (Lua code) runs while tensor pointers are being taken. */
static int raw_field(lua_State *L, int tbl, const char *name)
{
    lua_pushstring(L, name);
    return lua_rawget(L, tbl);
}

static hr_tensor *field_tensor(lua_State *L, int tbl, const char *name, int index)
{
    raw_field(L, tbl, name);
    hr_tensor *t = hr_lua_to_tensor(L, -1);
    lua_pop(L, 1);
    if (!t || !t->storage) luaL_error(L, "adamw_step: item %d: field '%s' must be a live hero.Tensor", index, name);
    return t;
}

/* core.adamw_step(items, beta1, beta2, eps): items = array of
 * {param=, grad=, exp_avg=, exp_avg_sq=, step_size=, decay=, grad_scale = 1, rule = "adamw" | "adam" | "adamax",
 *  bias2_sqrt = (Adam) sqrt(1 - beta2^t)} (hr_optim.h). */
static int l_adamw_step(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double beta1 = luaL_checknumber(L, 2), beta2 = luaL_checknumber(L, 3), eps = luaL_checknumber(L, 4);
    int n = (int)lua_rawlen(L, 1);
    hr_adamw_item *items = lua_newuserdatauv(L, sizeof(hr_adamw_item) * (size_t)(n > 0 ? n : 1), 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        int tbl = lua_gettop(L);
        if (!lua_istable(L, tbl)) return luaL_error(L, "adamw_step: item %d is not a table", i);
        hr_adamw_item *it = &items[i - 1];
        it->param = field_tensor(L, tbl, "param", i);
        it->grad = field_tensor(L, tbl, "grad", i);
        it->exp_avg = field_tensor(L, tbl, "exp_avg", i);
        it->exp_avg_sq = field_tensor(L, tbl, "exp_avg_sq", i);
        raw_field(L, tbl, "step_size");
        it->step_size = luaL_checknumber(L, -1);
        raw_field(L, tbl, "decay");
        it->decay = luaL_optnumber(L, -1, 0.0);
        raw_field(L, tbl, "grad_scale");
        it->grad_scale = luaL_optnumber(L, -1, 1.0);
        static const char *const rules[] = {"adamw", "adam", "adamax", NULL};
        raw_field(L, tbl, "rule");
        it->rule = (hr_adam_rule)luaL_checkoption(L, -1, "adamw", rules);
        raw_field(L, tbl, "bias2_sqrt");
        it->bias2_sqrt = luaL_optnumber(L, -1, 1.0);
        lua_settop(L, tbl - 1);
    }
    if (hr_adamw_step(items, n, beta1, beta2, eps)) return hr_lua_error(L, "adamw_step");
    return 0;
}

static int collect_tensors(lua_State *L, int idx, hr_tensor ***out, const char *op)
{
    int n = (int)lua_rawlen(L, idx);
    hr_tensor **ts = lua_newuserdatauv(L, sizeof(hr_tensor *) * (size_t)(n > 0 ? n : 1), 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        ts[i - 1] = hr_lua_check_tensor(L, lua_gettop(L), op);
        lua_pop(L, 1);
    }
    *out = ts;
    return n;
}

/* core.global_norm(tensors) -> number */
static int l_global_norm(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    hr_tensor **ts;
    int n = collect_tensors(L, 1, &ts, "global_norm");
    /* on a GPU the norm is read back: the host waits for the backward pass here */
    if (n > 0 && hr_tensor_device(ts[0]).type == HR_CUDA) hr_lua_collect_while_waiting(L);
    double norm;
    if (hr_global_norm(ts, n, &norm)) return hr_lua_error(L, "global_norm");
    lua_pushnumber(L, norm);
    return 1;
}

/* core.scale_all_(tensors, scale) */
static int l_scale_all_(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double scale = luaL_checknumber(L, 2);
    hr_tensor **ts;
    int n = collect_tensors(L, 1, &ts, "scale_all_");
    for (int i = 0; i < n; i++) hr_lua_check_writable(L, ts[i], "scale_all_");
    if (hr_scale_all_(ts, n, scale)) return hr_lua_error(L, "scale_all_");
    return 0;
}

static const luaL_Reg module_functions[] = {
    {"adamw_step", l_adamw_step},
    {"global_norm", l_global_norm},
    {"scale_all_", l_scale_all_},
    {NULL, NULL},
};

void hr_lua_open_optim(lua_State *L, int module_idx, int methods_idx)
{
    hr_lua_register(L, module_idx, methods_idx, module_functions, NULL);
}
