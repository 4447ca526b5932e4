/* l_autograd.c — Lua side of the tape: requires_grad, .grad, backward, detach, no_grad. */
#include <string.h>

#include "hr_autograd.h"
#include "hr_cuda.h"
#include "l_common.h"

/* Fields read as t.grad, t.requires_grad, t.is_leaf, t.grad_fn. Returns 1 when key was one of them. */
bool hr_lua_is_autograd_field(const char *key)
{
    return strcmp(key, "grad") == 0 || strcmp(key, "requires_grad") == 0 || strcmp(key, "is_leaf") == 0 ||
           strcmp(key, "grad_fn") == 0;
}

int hr_lua_autograd_field(lua_State *L, hr_tensor *t, const char *key)
{
    if (strcmp(key, "grad") == 0) {
        if (!t->grad) {
            lua_pushnil(L);
        } else {
            hr_tensor_retain(t->grad);
            hr_lua_push_tensor(L, t->grad);
        }
        return 1;
    }
    if (strcmp(key, "requires_grad") == 0) {
        lua_pushboolean(L, hr_requires_grad(t));
        return 1;
    }
    if (strcmp(key, "is_leaf") == 0) {
        lua_pushboolean(L, t->grad_fn == NULL);
        return 1;
    }
    if (strcmp(key, "grad_fn") == 0) {
        if (t->grad_fn) lua_pushstring(L, t->grad_fn->op);
        else lua_pushnil(L);
        return 1;
    }
    return 0;
}

/* t.grad = nil | tensor, t.requires_grad = bool. Returns 1 when key was one of them. */
int hr_lua_autograd_set_field(lua_State *L, hr_tensor *t, const char *key, int value_idx)
{
    if (strcmp(key, "grad") == 0) {
        hr_tensor *g = NULL;
        if (!lua_isnil(L, value_idx)) {
            g = hr_lua_check_tensor(L, value_idx, "grad assignment");
            if (g->ndim != t->ndim || memcmp(g->size, t->size, sizeof(int64_t) * (size_t)t->ndim) != 0) {
                char a[160], b[160];
                return luaL_error(L, "grad assignment: gradient of size %s for a tensor of size %s",
                                  hr_shape_str(g->ndim, g->size, a, sizeof a), hr_shape_str(t->ndim, t->size, b, sizeof b));
            }
            /* backward adds into the gradient in place, on the tensor's device (a float gradient of
             * another width is kept: the optimizers read half gradients of f32 parameters) */
            if (!hr_dtype_is_float(g->dtype))
                return luaL_error(L, "grad assignment: gradient of dtype %s; gradients are floating point",
                                  hr_dtype_name(g->dtype));
            if (!hr_device_eq(hr_tensor_device(g), hr_tensor_device(t))) {
                char a[64], b[64];
                return luaL_error(L, "grad assignment: gradient on %s for a tensor on %s",
                                  hr_device_str(hr_tensor_device(g), a, sizeof a),
                                  hr_device_str(hr_tensor_device(t), b, sizeof b));
            }
            if (g->storage && g->storage == t->storage)
                return luaL_error(L, "grad assignment: the gradient shares the tensor's own memory (use :clone())");
            hr_lua_check_writable(L, g, "grad assignment");
            hr_tensor_retain(g);
        }
        hr_tensor *old = t->grad;
        /* A gradient that Lua values still hold (say, from reading p.grad to clip it) lives on until
         * they are collected: its bytes count towards the next collection, so that dropping the
         * gradients before a forward pass frees them early in that pass rather than after it. */
        if (old && old != g && old->refcount > 1 && old->storage && old->storage->kind == HR_STORAGE_HEAP)
            hr_lua_note_garbage(L, old->storage->nbytes);
        hr_tensor_release(old);
        t->grad = g;
        return 1;
    }
    if (strcmp(key, "requires_grad") == 0) {
        bool on = lua_toboolean(L, value_idx);
        if (t->grad_fn && !on)
            return luaL_error(L, "requires_grad: only leaf tensors can stop requiring grad (use :detach())");
        if (on && !hr_dtype_is_float(t->dtype))
            return luaL_error(L, "requires_grad: only floating point tensors can require gradients, got %s",
                              hr_dtype_name(t->dtype));
        t->requires_grad = on || t->grad_fn != NULL;
        return 1;
    }
    return 0;
}

/* t:requires_grad_(on = true) -> t */
static int t_requires_grad_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "requires_grad_");
    if (lua_isnone(L, 2)) lua_pushboolean(L, 1);
    hr_lua_autograd_set_field(L, t, "requires_grad", 2);
    lua_settop(L, 1);
    return 1;
}

/* t:backward([grad][, {retain_graph = bool}]) */
static int t_backward(lua_State *L)
{
    /* the options first: reading them may run Lua code (metamethods), which must not find the
     * tensors already taken */
    int opts = 0;
    if (lua_istable(L, 2) && !hr_lua_to_tensor(L, 2)) opts = 2;
    else if (!lua_isnoneornil(L, 3)) opts = 3;
    /* a misspelt retain_graph, or PyTorch's create_graph / inputs (no double backward here), would
     * otherwise be ignored */
    static const char *const names[] = {"retain_graph", NULL};
    if (opts) opts = hr_lua_options(L, opts, names, "retain_graph", "backward");
    bool retain = false;
    if (opts) {
        int ty = hr_lua_rawfield(L, opts, "retain_graph");
        if (ty != LUA_TNIL && ty != LUA_TBOOLEAN)
            return luaL_error(L, "backward: option retain_graph must be a boolean, got a %s", lua_typename(L, ty));
        retain = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    hr_tensor *t = hr_lua_check_tensor(L, 1, "backward");
    hr_tensor *g = NULL;
    if (!lua_isnoneornil(L, 2) && opts != 2) g = hr_lua_check_tensor(L, 2, "backward");
    /* Not retried after a collection on out of memory (unlike allocations): a backward that failed
     * midway has already freed the saved tensors of the nodes it went through and added their
     * gradients to some leaves, so a second run would fail with a misleading message or count
     * those gradients twice. */
    hr_lua_collect_pending(L);
    if (hr_backward(t, g, retain, L)) return hr_lua_error(L, "backward");
    return 0;
}

/* t:detach(): same data, cut from the graph. */
static int t_detach(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "detach");
    hr_tensor *d = hr_view_alias(t);
    if (!d) return hr_lua_error(L, "detach");
    hr_lua_push_tensor(L, d);
    return 1;
}

/* t:detach_(): cuts t itself from the graph. */
static int t_detach_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "detach_");
    hr_node_release(t->grad_fn);
    t->grad_fn = NULL;
    t->requires_grad = false;
    lua_settop(L, 1);
    return 1;
}

/* hero.no_grad(fn, ...): runs fn with recording off, restoring the mode even when fn raises. */
static int l_no_grad(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    bool was = hr_grad_enabled();
    hr_set_grad_enabled(false);
    int nargs = lua_gettop(L) - 1;
    int status = lua_pcall(L, nargs, LUA_MULTRET, 0);
    hr_set_grad_enabled(was);
    if (status != LUA_OK) return lua_error(L);
    return lua_gettop(L);
}

static int l_is_grad_enabled(lua_State *L)
{
    lua_pushboolean(L, hr_grad_enabled());
    return 1;
}

/* _gpu_formulations_on_cpu(on): see hr_gpu_formulations_on_cpu (for the specs) */
static int l_gpu_formulations_on_cpu(lua_State *L)
{
    hr_set_gpu_formulations_on_cpu(lua_toboolean(L, 1));
    return 0;
}

static int l_set_grad_enabled(lua_State *L)
{
    hr_set_grad_enabled(lua_toboolean(L, 1));
    return 0;
}

/* backward_profile_start([sync]): time every node of the backward walks that follow, by op; with
 * sync each node waits for the GPU first and last, so the times are device times. */
static int l_backward_profile_start(lua_State *L)
{
    hr_backward_profile_start(lua_toboolean(L, 1));
    return 0;
}

/* backward_profile_stop() -> {{op =, calls =, seconds =}, ...} since the start, in the order the ops were first seen. */
static int l_backward_profile_stop(lua_State *L)
{
    const hr_backward_stat *stats;
    int n = hr_backward_profile_stop(&stats);
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_createtable(L, 0, 3);
        lua_pushstring(L, stats[i].op);
        lua_setfield(L, -2, "op");
        lua_pushinteger(L, (lua_Integer)stats[i].calls);
        lua_setfield(L, -2, "calls");
        lua_pushnumber(L, stats[i].seconds);
        lua_setfield(L, -2, "seconds");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static const luaL_Reg module_functions[] = {
    {"backward_profile_start", l_backward_profile_start},
    {"backward_profile_stop", l_backward_profile_stop},
    {"no_grad", l_no_grad},
    {"_gpu_formulations_on_cpu", l_gpu_formulations_on_cpu},
    {"is_grad_enabled", l_is_grad_enabled},
    {"set_grad_enabled", l_set_grad_enabled},
    {NULL, NULL},
};

static const luaL_Reg tensor_methods[] = {
    {"requires_grad_", t_requires_grad_},
    {"backward", t_backward},
    {"detach", t_detach},
    {"detach_", t_detach_},
    {NULL, NULL},
};

void hr_lua_open_autograd(lua_State *L, int module_idx, int methods_idx)
{
    hr_lua_register(L, module_idx, methods_idx, module_functions, tensor_methods);
}
