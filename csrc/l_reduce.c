/*
 * l_reduce.c — Lua bindings of reductions, scans, softmax, sort and top-k.
 *
 *   t:sum([dim | {dims}] [, keepdim])      t:mean(...)        (dim nil: over all elements, 0-dim result)
 *   t:prod([dim] [, keepdim])              t:all(...)  t:any(...)
 *   t:max([dim] [, keepdim])  t:min(...)   -> values, indices (0-based i64) with a dim; one 0-dim tensor without
 *   t:argmax([dim] [, keepdim])  t:argmin(...)
 *   t:var([dim] [, unbiased=true] [, keepdim])  t:std(...)
 *   t:norm([p=2] [, dim] [, keepdim])      p: a number >= 0, math.huge / "inf", or "fro" (= 2)
 *   t:cumsum(dim)  t:cumprod(dim)
 *   t:softmax([dim=-1])  t:log_softmax([dim=-1])
 *   t:sort([dim=-1] [, descending=false])  -> values, indices
 *   t:topk(k [, dim=-1] [, largest=true])  -> values, indices
 *   t:kthvalue(k [, dim=-1] [, keepdim])   -> values, indices (k-th smallest, k from 1)
 *   t:median()  -> 0-dim;  t:median(dim [, keepdim]) -> values, indices (the lower median)
 *   t:cummax(dim)  t:cummin(dim)           -> values, indices
 * Dimensions are 1-based (negative from the end); every function is also hero.<name>(t, ...).
 */
#include <math.h>
#include <string.h>

#include "hr_reduce.h"
#include "hr_autograd_ops.h"
#include "hr_autocast.h"
#include "l_common.h"

static bool opt_bool(lua_State *L, int idx, bool def, const char *op, const char *what)
{
    if (lua_isnoneornil(L, idx)) return def;
    if (!lua_isboolean(L, idx))
        luaL_error(L, "%s: argument #%d (%s) must be a boolean, got %s", op, idx, what, luaL_typename(L, idx));
    return lua_toboolean(L, idx);
}

/* nil -> every element; otherwise a 1-based/negative dim. */
static int opt_dim(lua_State *L, int idx, const hr_tensor *t, const char *op)
{
    if (lua_isnoneornil(L, idx)) return HR_DIM_ALL;
    if (!lua_isinteger(L, idx))
        return luaL_error(L, "%s: argument #%d (dim) must be an integer or nil, got %s", op, idx, luaL_typename(L, idx));
    return hr_lua_check_dim(L, idx, t->ndim, op);
}

static int push_result(lua_State *L, hr_tensor *r, const char *op)
{
    if (!r) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, r);
    return 1;
}

/* sum / mean accept a table of dims as well. */
static int sum_like(lua_State *L, const char *op, bool mean)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    bool keepdim = opt_bool(L, 3, false, op, "keepdim");
    hr_tensor *r;
    if (lua_istable(L, 2)) {
        hr_lua_check_list(L, 2, op, "the list of dimensions");
        int dims[HR_MAX_DIMS];
        int n = (int)(lua_Integer)lua_rawlen(L, 2);
        if (n > HR_MAX_DIMS) return luaL_error(L, "%s: at most %d dimensions in the list, got %d", op, HR_MAX_DIMS, n);
        for (int i = 0; i < n; i++) {
            lua_rawgeti(L, 2, i + 1);
            dims[i] = hr_lua_check_dim(L, lua_gettop(L), t->ndim, op);
            lua_pop(L, 1);
        }
        HR_LUA_RETRY(L, r, mean ? hr_ag_mean_dims(t, dims, n, keepdim) : hr_ag_sum_dims(t, dims, n, keepdim));
    } else {
        int dim = opt_dim(L, 2, t, op);
        HR_LUA_RETRY(L, r, mean ? hr_ag_mean(t, dim, keepdim) : hr_ag_sum(t, dim, keepdim));
    }
    return push_result(L, r, op);
}

static int l_sum(lua_State *L) { return sum_like(L, "sum", false); }
static int l_mean(lua_State *L) { return sum_like(L, "mean", true); }

#define SIMPLE_REDUCTION(NAME)                                   \
    static int l_##NAME(lua_State *L)                            \
    {                                                            \
        hr_tensor *t = hr_lua_check_tensor(L, 1, #NAME);         \
        int dim = opt_dim(L, 2, t, #NAME);                       \
        bool keepdim = opt_bool(L, 3, false, #NAME, "keepdim");  \
        hr_tensor *r;                                            \
        HR_LUA_RETRY(L, r, hr_##NAME(t, dim, keepdim));          \
        return push_result(L, r, #NAME);                         \
    }
static int l_prod(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "prod");
    int dim = opt_dim(L, 2, t, "prod");
    bool keepdim = opt_bool(L, 3, false, "prod", "keepdim");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_prod(t, dim, keepdim));
    return push_result(L, r, "prod");
}
SIMPLE_REDUCTION(argmax)
SIMPLE_REDUCTION(argmin)
SIMPLE_REDUCTION(all)
SIMPLE_REDUCTION(any)

/* Values and indices with a dim; only the value over every element without one. */
static int max_like(lua_State *L, const char *op, bool is_max)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    if (hr_lua_to_tensor(L, 2))
        return luaL_error(L, "%s: argument #2 is a tensor; the elementwise %s of two tensors is hero.%s", op, op,
                          is_max ? "maximum" : "minimum");
    int dim = opt_dim(L, 2, t, op);
    bool keepdim = opt_bool(L, 3, false, op, "keepdim");
    hr_tensor *v = NULL, *i = NULL;
    int rc;
    hr_tensor **ip = dim == HR_DIM_ALL ? NULL : &i;
    HR_LUA_RETRY_INT(L, rc, hr_ag_max_min(is_max, t, dim, keepdim, &v, ip));
    if (rc) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, v);
    if (!i) return 1;
    hr_lua_push_tensor(L, i);
    return 2;
}

static int l_max(lua_State *L) { return max_like(L, "max", true); }
static int l_min(lua_State *L) { return max_like(L, "min", false); }

/* amax / amin(t[, dim][, keepdim]): the values only, the gradient shared among tied elements. */
static int amax_like(lua_State *L, const char *op, bool is_max)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = opt_dim(L, 2, t, op);
    bool keepdim = opt_bool(L, 3, false, op, "keepdim");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_amax_amin(is_max, t, dim, keepdim));
    return push_result(L, r, op);
}

static int l_amax(lua_State *L) { return amax_like(L, "amax", true); }
static int l_amin(lua_State *L) { return amax_like(L, "amin", false); }

static int var_like(lua_State *L, const char *op, bool is_std)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = opt_dim(L, 2, t, op);
    bool unbiased = opt_bool(L, 3, true, op, "unbiased");
    bool keepdim = opt_bool(L, 4, false, op, "keepdim");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_var_std(is_std, t, dim, unbiased, keepdim));
    return push_result(L, r, op);
}

static int l_var(lua_State *L) { return var_like(L, "var", false); }
static int l_std(lua_State *L) { return var_like(L, "std", true); }

static int l_norm(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "norm");
    double p = 2;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *s = lua_tostring(L, 2);
        if (strcmp(s, "inf") == 0) p = INFINITY;
        else if (strcmp(s, "fro") == 0) p = 2;
        else return luaL_error(L, "norm: unknown order '%s' (use a number, math.huge, \"inf\" or \"fro\")", s);
    } else if (!lua_isnoneornil(L, 2)) {
        if (lua_type(L, 2) != LUA_TNUMBER)
            return luaL_error(L, "norm: argument #2 (p) must be a number or string, got %s", luaL_typename(L, 2));
        p = lua_tonumber(L, 2);
    }
    int dim = opt_dim(L, 3, t, "norm");
    bool keepdim = opt_bool(L, 4, false, "norm", "keepdim");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_norm(t, p, dim, keepdim));
    return push_result(L, r, "norm");
}

#define DIM_OP(NAME, DIM_REQUIRED)                                                               \
    static int l_##NAME(lua_State *L)                                                            \
    {                                                                                            \
        hr_tensor *t = hr_lua_check_tensor(L, 1, #NAME);                                         \
        int dim;                                                                                 \
        if (lua_isnoneornil(L, 2)) {                                                             \
            if (DIM_REQUIRED) return luaL_error(L, #NAME ": argument #2 (dim) is required");     \
            dim = -1;                                                                            \
        } else {                                                                                 \
            dim = hr_lua_check_dim(L, 2, t->ndim, #NAME);                                        \
        }                                                                                        \
        hr_tensor *r;                                                                            \
        HR_LUA_RETRY(L, r, hr_ag_##NAME(t, dim));                                                   \
        return push_result(L, r, #NAME);                                                         \
    }
DIM_OP(cumsum, true)
DIM_OP(cumprod, true)

/* softmax / log_softmax run in f32 under autocast (hr_autocast.h) */
#define SOFTMAX_OP(NAME)                                                                         \
    static int l_##NAME(lua_State *L)                                                            \
    {                                                                                            \
        hr_tensor *t = hr_lua_autocast(L, 1, HR_AUTOCAST_F32, #NAME);                            \
        int dim = lua_isnoneornil(L, 2) ? -1 : hr_lua_check_dim(L, 2, t->ndim, #NAME);           \
        hr_tensor *r;                                                                            \
        HR_LUA_RETRY(L, r, hr_ag_##NAME(t, dim));                                                \
        return push_result(L, r, #NAME);                                                         \
    }
SOFTMAX_OP(softmax)
SOFTMAX_OP(log_softmax)

/* Pushes the values and indices a selection made (rc 0), or raises its error. */
static int push_values_indices(lua_State *L, int rc, hr_tensor *v, hr_tensor *i, const char *op)
{
    if (rc) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, v);
    hr_lua_push_tensor(L, i);
    return 2;
}

static int l_sort(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "sort");
    int dim = lua_isnoneornil(L, 2) ? -1 : hr_lua_check_dim(L, 2, t->ndim, "sort");
    bool desc = opt_bool(L, 3, false, "sort", "descending");
    hr_tensor *v, *i;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_ag_sort_topk(false, t, 0, dim, desc, &v, &i));
    return push_values_indices(L, rc, v, i, "sort");
}

static int l_topk(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "topk");
    if (!lua_isinteger(L, 2))
        return luaL_error(L, "topk: argument #2 (k) must be an integer, got %s", luaL_typename(L, 2));
    lua_Integer k = lua_tointeger(L, 2);
    int dim = lua_isnoneornil(L, 3) ? -1 : hr_lua_check_dim(L, 3, t->ndim, "topk");
    bool largest = opt_bool(L, 4, true, "topk", "largest");
    hr_tensor *v, *i;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_ag_sort_topk(true, t, (int64_t)k, dim, largest, &v, &i));
    return push_values_indices(L, rc, v, i, "topk");
}

/* t:kthvalue(k [, dim = -1] [, keepdim]) -> values, indices: the k-th smallest (k from 1). */
static int l_kthvalue(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "kthvalue");
    if (!lua_isinteger(L, 2))
        return luaL_error(L, "kthvalue: argument #2 (k) must be an integer, got %s", luaL_typename(L, 2));
    lua_Integer k = lua_tointeger(L, 2);
    int dim = lua_isnoneornil(L, 3) ? -1 : hr_lua_check_dim(L, 3, t->ndim, "kthvalue");
    bool keepdim = opt_bool(L, 4, false, "kthvalue", "keepdim");
    hr_tensor *v, *i;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_ag_kthvalue(t, (int64_t)k, dim, keepdim, &v, &i));
    return push_values_indices(L, rc, v, i, "kthvalue");
}

/* t:mode([dim = -1] [, keepdim]) -> values, indices: the most frequent value and its last index. */
static int l_mode(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "mode");
    int dim = lua_isnoneornil(L, 2) ? -1 : hr_lua_check_dim(L, 2, t->ndim, "mode");
    bool keepdim = opt_bool(L, 3, false, "mode", "keepdim");
    hr_tensor *v, *i;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_ag_mode(t, dim, keepdim, &v, &i));
    return push_values_indices(L, rc, v, i, "mode");
}

/* t:median() -> the lower median of every element (0-dim); t:median(dim [, keepdim]) -> values, indices. */
static int l_median(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "median");
    int dim = opt_dim(L, 2, t, "median");
    bool keepdim = opt_bool(L, 3, false, "median", "keepdim");
    if (dim == HR_DIM_ALL) {
        hr_tensor *r;
        HR_LUA_RETRY(L, r, hr_ag_median_all(t));
        return push_result(L, r, "median");
    }
    hr_tensor *v, *i;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_ag_median_dim(t, dim, keepdim, &v, &i));
    return push_values_indices(L, rc, v, i, "median");
}

/* t:cummax(dim) / t:cummin(dim) -> values, indices */
static int cum_extreme(lua_State *L, const char *op, bool is_max)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    if (lua_isnoneornil(L, 2)) return luaL_error(L, "%s: argument #2 (dim) is required", op);
    int dim = hr_lua_check_dim(L, 2, t->ndim, op);
    hr_tensor *v, *i;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_ag_cummax_cummin(is_max, t, dim, &v, &i));
    return push_values_indices(L, rc, v, i, op);
}

static int l_cummax(lua_State *L) { return cum_extreme(L, "cummax", true); }
static int l_cummin(lua_State *L) { return cum_extreme(L, "cummin", false); }

static const luaL_Reg reduce_functions[] = {
    {"sum", l_sum},
    {"mean", l_mean},
    {"prod", l_prod},
    {"max", l_max},
    {"min", l_min},
    {"amax", l_amax},
    {"amin", l_amin},
    {"argmax", l_argmax},
    {"argmin", l_argmin},
    {"var", l_var},
    {"std", l_std},
    {"norm", l_norm},
    {"all", l_all},
    {"any", l_any},
    {"cumsum", l_cumsum},
    {"cumprod", l_cumprod},
    {"softmax", l_softmax},
    {"log_softmax", l_log_softmax},
    {"sort", l_sort},
    {"topk", l_topk},
    {"kthvalue", l_kthvalue},
    {"median", l_median},
    {"mode", l_mode},
    {"cummax", l_cummax},
    {"cummin", l_cummin},
    {NULL, NULL},
};

void hr_lua_open_reduce(lua_State *L, int module_idx, int methods_idx)
{
    /* the same functions serve hero.sum(t, ...) and t:sum(...) */
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, reduce_functions, 0);
    lua_pop(L, 1);
    lua_pushvalue(L, methods_idx);
    luaL_setfuncs(L, reduce_functions, 0);
    lua_pop(L, 1);
}
