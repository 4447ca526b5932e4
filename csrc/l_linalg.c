/* l_linalg.c — Lua bindings of the matrix products (csrc/cpu/matmul.c). */
#include <time.h>

#include "hr_autocast.h"
#include "hr_linalg.h"
#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "cpu/packed_gemm.h"
#include "l_common.h"

typedef hr_tensor *(*binary_fn)(hr_tensor *, hr_tensor *);
typedef hr_tensor *(*add_fn)(hr_tensor *, hr_tensor *, hr_tensor *, double, double);

static int push_result(lua_State *L, hr_tensor *r, const char *op)
{
    if (!r) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, r);
    return 1;
}

static int binary(lua_State *L, const char *op, binary_fn fn)
{
    hr_tensor *a = hr_lua_autocast(L, 1, HR_AUTOCAST_LOWER, op);
    hr_tensor *b = hr_lua_autocast(L, 2, HR_AUTOCAST_LOWER, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, fn(a, b));
    return push_result(L, r, op);
}

/* matmul(a, b[, out]): with out, the product is written into it and out itself is returned. */
static int l_matmul(lua_State *L)
{
    if (lua_isnoneornil(L, 3)) return binary(L, "matmul", hr_ag_matmul);
    hr_tensor *a = hr_lua_check_tensor(L, 1, "matmul");
    hr_tensor *b = hr_lua_check_tensor(L, 2, "matmul");
    hr_tensor *out = hr_lua_check_tensor(L, 3, "matmul");
    hr_lua_check_graph_inplace(L, out, NULL, "matmul (into out)");
    hr_lua_check_writable(L, out, "matmul (into out)");
    hr_tensor *in[2] = {a, b};
    if (hr_should_record(2, in))
        return luaL_error(L, "matmul: writing into out is not recorded for autograd; use matmul(a, b)");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_matmul_out(out, a, b));
    if (!r) return hr_lua_error(L, "matmul");
    hr_tensor_release(r); /* the same tensor as argument #3, which is returned as is */
    lua_settop(L, 3);
    return 1;
}

static int l_mm(lua_State *L) { return binary(L, "mm", hr_ag_mm); }
static int l_bmm(lua_State *L) { return binary(L, "bmm", hr_ag_bmm); }
static int l_dot(lua_State *L) { return binary(L, "dot", hr_ag_dot); }
static int l_mv(lua_State *L) { return binary(L, "mv", hr_ag_mv); }

/* Reads beta and alpha (both default 1) given either as numbers at idx, idx+1 or as an options
 * table {beta = ..., alpha = ...} at idx. */
static void opt_beta_alpha(lua_State *L, int idx, double *beta, double *alpha, const char *op)
{
    *beta = 1;
    *alpha = 1;
    if (lua_istable(L, idx)) {
        if (hr_lua_rawfield(L, idx, "beta") != LUA_TNIL) {
            if (!lua_isnumber(L, -1)) luaL_error(L, "%s: option beta must be a number, got %s", op, luaL_typename(L, -1));
            *beta = lua_tonumber(L, -1);
        }
        if (hr_lua_rawfield(L, idx, "alpha") != LUA_TNIL) {
            if (!lua_isnumber(L, -1)) luaL_error(L, "%s: option alpha must be a number, got %s", op, luaL_typename(L, -1));
            *alpha = lua_tonumber(L, -1);
        }
        lua_pop(L, 2);
        return;
    }
    if (!lua_isnoneornil(L, idx)) *beta = luaL_checknumber(L, idx);
    if (!lua_isnoneornil(L, idx + 1)) *alpha = luaL_checknumber(L, idx + 1);
}

/* addmm(input, mat1, mat2[, beta[, alpha]]) = beta * input + alpha * (mat1 @ mat2). */
static int add_product(lua_State *L, const char *op, add_fn fn)
{
    hr_tensor *c = hr_lua_autocast(L, 1, HR_AUTOCAST_LOWER, op);
    hr_tensor *a = hr_lua_autocast(L, 2, HR_AUTOCAST_LOWER, op);
    hr_tensor *b = hr_lua_autocast(L, 3, HR_AUTOCAST_LOWER, op);
    double beta, alpha;
    opt_beta_alpha(L, 4, &beta, &alpha, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, fn(c, a, b, beta, alpha));
    return push_result(L, r, op);
}

/* c:addmm_(a, b[, beta[, alpha]]): in place, returns c itself. */
static int add_product_inplace(lua_State *L, const char *op, add_fn fn)
{
    hr_tensor *c = hr_lua_check_tensor(L, 1, op);
    hr_tensor *a = hr_lua_check_tensor(L, 2, op);
    hr_tensor *b = hr_lua_check_tensor(L, 3, op);
    double beta, alpha;
    opt_beta_alpha(L, 4, &beta, &alpha, op);
    hr_lua_check_writable(L, c, op);
    hr_lua_check_graph_inplace(L, c, a, op);
    hr_lua_check_graph_inplace(L, c, b, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, fn(c, a, b, beta, alpha));
    if (!r) return hr_lua_error(L, op);
    hr_tensor_release(r);
    lua_settop(L, 1);
    return 1;
}

static int l_addmm(lua_State *L) { return add_product(L, "addmm", hr_ag_addmm); }
static int l_addmm_(lua_State *L) { return add_product_inplace(L, "addmm_", hr_addmm_); }
static int l_baddbmm_(lua_State *L) { return add_product_inplace(L, "baddbmm_", hr_baddbmm_); }
static int l_baddbmm(lua_State *L) { return add_product(L, "baddbmm", hr_ag_baddbmm); }

/* linear(x, weight[, bias]) = x @ weight^T + bias, weight of shape out_features x in_features. */
static int l_linear(lua_State *L)
{
    hr_tensor *x = hr_lua_autocast(L, 1, HR_AUTOCAST_LOWER, "linear");
    hr_tensor *w = hr_lua_autocast(L, 2, HR_AUTOCAST_LOWER, "linear");
    hr_tensor *bias = lua_isnoneornil(L, 3) ? NULL : hr_lua_autocast(L, 3, HR_AUTOCAST_LOWER, "linear");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_linear(x, w, bias));
    return push_result(L, r, "linear");
}

/* _bench_sgemm(m, n, k[, repeats[, batch]]) -> seconds per `batch` bare cblas_sgemm calls on
 * distinct buffers (the benchmark's baseline). */
static int l_bench_sgemm(lua_State *L)
{
    lua_Integer m = luaL_checkinteger(L, 1), n = luaL_checkinteger(L, 2), k = luaL_checkinteger(L, 3);
    lua_Integer reps = luaL_optinteger(L, 4, 1), batch = luaL_optinteger(L, 5, 1);
    if (reps < 1 || reps > 1000000) return luaL_error(L, "_bench_sgemm: repeats must be in 1..1000000, got %d", (int)reps);
    double s = hr_bench_sgemm(m, n, k, batch, (int)reps);
    if (s < 0) return hr_lua_error(L, "_bench_sgemm");
    lua_pushnumber(L, s);
    return 1;
}

/* _bench_now() -> monotonic wall-clock seconds (os.clock counts CPU time of all threads). */
static int l_bench_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + 1e-9 * (lua_Number)ts.tv_nsec);
    return 1;
}

/* _matmul_copies() -> operands copied so far by the products (test hook). */
static int l_matmul_copies(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)hr_matmul_operand_copies());
    return 1;
}

/* _packed_gemm([enabled]) -> previous setting, products done by the packed kernels so far, whether
 * the build has them: f32 products through the packed kernels (true) or only BLAS (test and
 * benchmark hook). */
static int l_packed_gemm(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        bool was = hr_matmul_set_packed(true);
        hr_matmul_set_packed(was);
        lua_pushboolean(L, was);
    } else {
        luaL_checktype(L, 1, LUA_TBOOLEAN);
        lua_pushboolean(L, hr_matmul_set_packed(lua_toboolean(L, 1)));
    }
    lua_pushinteger(L, (lua_Integer)hr_matmul_packed_calls());
    lua_pushboolean(L, hr_cpu_gemm_kernels_built());
    return 3;
}

void hr_lua_open_linalg(lua_State *L, int module_idx, int methods_idx)
{
    static const luaL_Reg shared[] = {
        {"matmul", l_matmul},
        {"mm", l_mm},
        {"bmm", l_bmm},
        {"dot", l_dot},
        {"mv", l_mv},
        {"addmm", l_addmm},
        {"baddbmm", l_baddbmm},
        {"addmm_", l_addmm_},
        {"baddbmm_", l_baddbmm_},
        {"linear", l_linear},
        {NULL, NULL},
    };
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, shared, 0);
    lua_pop(L, 1);
    lua_pushvalue(L, methods_idx);
    luaL_setfuncs(L, shared, 0);
    lua_pop(L, 1);
    lua_pushcfunction(L, l_bench_sgemm);
    lua_setfield(L, module_idx, "_bench_sgemm");
    lua_pushcfunction(L, l_bench_now);
    lua_setfield(L, module_idx, "_bench_now");
    lua_pushcfunction(L, l_packed_gemm);
    lua_setfield(L, module_idx, "_packed_gemm");
    lua_pushcfunction(L, l_matmul_copies);
    lua_setfield(L, module_idx, "_matmul_copies");
}
