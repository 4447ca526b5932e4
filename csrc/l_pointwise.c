/* l_pointwise.c — Lua bindings of the pointwise ops: hero.add(a, b) / a:add(b) / a + b, the unary
 * math functions, comparisons, clamp, where and the in-place variants (a:add_(b), t:exp_()). */
#include <time.h>

#include "hr_pointwise.h"
#include "hr_autograd_ops.h"
#include "l_common.h"

/* A tensor or a number (integer, float or boolean) at idx. */
static hr_operand check_operand(lua_State *L, int idx, const char *op)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) return hr_operand_int(lua_tointeger(L, idx));
        return hr_operand_float(lua_tonumber(L, idx));
    case LUA_TBOOLEAN: return hr_operand_bool(lua_toboolean(L, idx));
    default:
        if (!luaL_testudata(L, idx, HR_TENSOR_MT))
            luaL_error(L, "%s: argument #%d: expected a hero.Tensor or a number, got %s", op, idx, luaL_typename(L, idx));
        return hr_operand_tensor(hr_lua_check_tensor(L, idx, op));
    }
}

/* A number at idx, or NULL (into *slot) when the argument is absent or nil. */
static const hr_operand *opt_number(lua_State *L, int idx, const char *op, const char *what, hr_operand *slot)
{
    if (lua_isnoneornil(L, idx)) return NULL;
    if (lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: %s (argument #%d) must be a number or nil, got %s", op, what, idx, luaL_typename(L, idx));
    *slot = lua_isinteger(L, idx) ? hr_operand_int(lua_tointeger(L, idx)) : hr_operand_float(lua_tonumber(L, idx));
    return slot;
}

static int push_result(lua_State *L, hr_tensor *r, const char *op)
{
    if (!r) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, r);
    return 1;
}

/* ------------------------------------------------------------------ binary */

/* hero.add(a, b[, alpha]), a:add(b[, alpha]) and the operators; the op is upvalue 1. */
static int l_binary(lua_State *L)
{
    hr_binary_op op = (hr_binary_op)lua_tointeger(L, lua_upvalueindex(1));
    const char *name = hr_binary_op_name(op);
    hr_operand a = check_operand(L, 1, name);
    hr_operand b = check_operand(L, 2, name);
    hr_operand alpha_slot;
    const hr_operand *alpha = opt_number(L, 3, name, "alpha", &alpha_slot);
    if (!a.t && !b.t)
        return luaL_error(L, "%s: expected at least one hero.Tensor, got %s and %s", name, luaL_typename(L, 1),
                          luaL_typename(L, 2));
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_binary(op, a, b, alpha));
    return push_result(L, r, name);
}

/* a:add_(b[, alpha]): writes into a and returns it. */
static int l_binary_inplace(lua_State *L)
{
    hr_binary_op op = (hr_binary_op)lua_tointeger(L, lua_upvalueindex(1));
    char name[32];
    snprintf(name, sizeof name, "%s_", hr_binary_op_name(op));
    hr_tensor *self = hr_lua_check_tensor(L, 1, name);
    hr_operand b = check_operand(L, 2, name);
    hr_operand alpha_slot;
    const hr_operand *alpha = opt_number(L, 3, name, "alpha", &alpha_slot);
    hr_lua_check_graph_inplace(L, self, (hr_tensor *)b.t, name);
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_binary_(op, self, b, alpha));
    if (rc) return hr_lua_error(L, name);
    lua_settop(L, 1);
    return 1;
}

/* ------------------------------------------------------------------ unary */

static int l_unary(lua_State *L)
{
    hr_unary_op op = (hr_unary_op)lua_tointeger(L, lua_upvalueindex(1));
    const char *name = hr_unary_op_name(op);
    hr_tensor *t = hr_lua_check_tensor(L, 1, name);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_unary(op, t));
    return push_result(L, r, name);
}

static int l_unary_inplace(lua_State *L)
{
    hr_unary_op op = (hr_unary_op)lua_tointeger(L, lua_upvalueindex(1));
    char name[32];
    snprintf(name, sizeof name, "%s_", hr_unary_op_name(op));
    hr_tensor *t = hr_lua_check_tensor(L, 1, name);
    hr_lua_check_graph_inplace(L, t, NULL, name);
    if (hr_unary_(op, t)) return hr_lua_error(L, name);
    lua_settop(L, 1);
    return 1;
}

/* t:clamp(min, max), either bound nil. */
static int l_clamp(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "clamp");
    hr_operand lo_slot, hi_slot;
    const hr_operand *lo = opt_number(L, 2, "clamp", "min", &lo_slot);
    const hr_operand *hi = opt_number(L, 3, "clamp", "max", &hi_slot);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_clamp(t, lo, hi));
    return push_result(L, r, "clamp");
}

static int l_clamp_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "clamp_");
    hr_operand lo_slot, hi_slot;
    const hr_operand *lo = opt_number(L, 2, "clamp_", "min", &lo_slot);
    const hr_operand *hi = opt_number(L, 3, "clamp_", "max", &hi_slot);
    hr_lua_check_graph_inplace(L, t, NULL, "clamp_");
    if (hr_clamp_(t, lo, hi)) return hr_lua_error(L, "clamp_");
    lua_settop(L, 1);
    return 1;
}

/* hero.where(cond, a, b): a where cond is true, else b (tensors or numbers, broadcast). */
static int l_where(lua_State *L)
{
    hr_tensor *cond = hr_lua_check_tensor(L, 1, "where");
    hr_operand a = check_operand(L, 2, "where");
    hr_operand b = check_operand(L, 3, "where");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_where(cond, a, b));
    return push_result(L, r, "where");
}

static int l_logical_not(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "logical_not");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_logical_not(t));
    return push_result(L, r, "logical_not");
}

/* hero.core._bench_triad(n, repeats): GB/s of a STREAM-style triad on n f32 elements. */
static int l_bench_triad(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    lua_Integer repeats = luaL_optinteger(L, 2, 5);
    if (repeats < 1 || repeats > 1000000) return luaL_error(L, "_bench_triad: repeats must be in 1..1000000");
    double gbs = hr_bench_triad((int64_t)n, (int)repeats);
    if (gbs < 0) return hr_lua_error(L, "_bench_triad");
    lua_pushnumber(L, gbs);
    return 1;
}

/* hero.core._now(): monotonic wall-clock seconds, for timing benchmarks (os.clock counts CPU time
 * of every thread, and os.time has whole seconds). */
static int l_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + 1e-9 * (lua_Number)ts.tv_nsec);
    return 1;
}

/* hero.core._gc_stats() -> {collections, device_collections, pending_collections, idle_collections,
 * seconds, finalized}:
 * the full collections hero set off so far in this state (l_common.c) and the tensor objects the
 * collector finalized on this thread, for profiles. */
static int l_gc_stats(lua_State *L)
{
    hr_lua_gc_counts c;
    hr_lua_gc_stats(L, &c);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)c.collections);
    lua_setfield(L, -2, "collections");
    lua_pushinteger(L, (lua_Integer)c.device_collections);
    lua_setfield(L, -2, "device_collections");
    lua_pushinteger(L, (lua_Integer)c.pending_collections);
    lua_setfield(L, -2, "pending_collections");
    lua_pushinteger(L, (lua_Integer)c.idle_collections);
    lua_setfield(L, -2, "idle_collections");
    lua_pushnumber(L, c.seconds);
    lua_setfield(L, -2, "seconds");
    lua_pushinteger(L, (lua_Integer)c.finalized);
    lua_setfield(L, -2, "finalized");
    return 1;
}

/* hero.core._set_device_collect_fractions(soft, hard): the limits of the collections that new
 * device bytes set off, as fractions of the allocated device bytes (l_common.c; for profiles). */
static int l_set_device_collect_fractions(lua_State *L)
{
    double soft = luaL_checknumber(L, 1), hard = luaL_checknumber(L, 2);
    if (!(soft > 0 && hard >= soft && hard <= 64))
        return luaL_error(L, "_set_device_collect_fractions: expected 0 < soft <= hard <= 64, got %f and %f", soft, hard);
    hr_lua_set_device_collect_fractions(L, soft, hard);
    return 0;
}

/* ------------------------------------------------------------------ registration */

/* Registers f with op as upvalue under name in the module and/or the methods table. */
static void register_op(lua_State *L, int module_idx, int methods_idx, const char *name, lua_CFunction f, int op,
                        bool in_module, bool as_method)
{
    lua_pushinteger(L, op);
    lua_pushcclosure(L, f, 1);
    if (in_module) {
        lua_pushvalue(L, -1);
        lua_setfield(L, module_idx, name);
    }
    if (as_method) lua_setfield(L, methods_idx, name);
    else lua_pop(L, 1);
}

static void set_metamethod(lua_State *L, const char *event, lua_CFunction f, int op)
{
    luaL_getmetatable(L, HR_TENSOR_MT);
    lua_pushinteger(L, op);
    lua_pushcclosure(L, f, 1);
    lua_setfield(L, -2, event);
    lua_pop(L, 1);
}

void hr_lua_open_pointwise(lua_State *L, int module_idx, int methods_idx)
{
    char name[32];
    for (int op = 0; op < HR_NBINARY; op++) {
        const char *n = hr_binary_op_name((hr_binary_op)op);
        register_op(L, module_idx, methods_idx, n, l_binary, op, true, true);
        if (op < HR_EQ) { /* arithmetic has in-place forms; predicates change the dtype */
            snprintf(name, sizeof name, "%s_", n);
            register_op(L, module_idx, methods_idx, name, l_binary_inplace, op, false, true);
        }
    }
    for (int op = 0; op < HR_NUNARY; op++) {
        const char *n = hr_unary_op_name((hr_unary_op)op);
        register_op(L, module_idx, methods_idx, n, l_unary, op, true, true);
        snprintf(name, sizeof name, "%s_", n);
        register_op(L, module_idx, methods_idx, name, l_unary_inplace, op, false, true);
    }
    static const luaL_Reg both[] = {
        {"clamp", l_clamp},
        {"logical_not", l_logical_not},
        {NULL, NULL},
    };
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, both, 0);
    lua_pop(L, 1);
    lua_pushvalue(L, methods_idx);
    luaL_setfuncs(L, both, 0);
    lua_pushcfunction(L, l_clamp_);
    lua_setfield(L, -2, "clamp_");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_where);
    lua_setfield(L, module_idx, "where");
    lua_pushcfunction(L, l_bench_triad);
    lua_setfield(L, module_idx, "_bench_triad");
    lua_pushcfunction(L, l_now);
    lua_setfield(L, module_idx, "_now");
    lua_pushcfunction(L, l_gc_stats);
    lua_setfield(L, module_idx, "_gc_stats");
    lua_pushcfunction(L, l_set_device_collect_fractions);
    lua_setfield(L, module_idx, "_set_device_collect_fractions");

    /* Operators: `*` is elementwise (matmul is its own op); __eq is left alone so == stays
     * identity, and comparisons are the eq/lt/... methods. __unm receives its operand twice and
     * reads only the first. */
    set_metamethod(L, "__add", l_binary, HR_ADD);
    set_metamethod(L, "__sub", l_binary, HR_SUB);
    set_metamethod(L, "__mul", l_binary, HR_MUL);
    set_metamethod(L, "__div", l_binary, HR_DIV);
    set_metamethod(L, "__pow", l_binary, HR_POW);
    set_metamethod(L, "__unm", l_unary, HR_NEG);
}
