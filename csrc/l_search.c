/*
 * l_search.c — Lua bindings of finding and counting values (hr_search.h):
 *
 *   t:unique([{sorted = true, return_inverse = false, return_counts = false, dim = nil}])
 *       -> values [, inverse] [, counts]   (in that order, each only when asked for)
 *   t:bincount([{weights = w, minlength = 0}])
 *   hero.searchsorted(seq, values [, {right = false, side = "left", out_int32 = false, sorter = s}])
 *   hero.bucketize(values, boundaries [, {right = false, out_int32 = false}])
 * values may be a number in searchsorted / bucketize (a 0-dim result). Every function is also a
 * method taking its first argument as self. Options tables are read raw, and unknown options are
 * refused (a typo would otherwise silently change the result).
 */
#include <string.h>

#include "hr_autograd.h"
#include "hr_search.h"
#include "l_common.h"


static bool opt_field_bool(lua_State *L, int oi, const char *name, bool def, const char *op)
{
    if (!oi) return def;
    int type = hr_lua_rawfield(L, oi, name);
    bool v = def;
    if (type == LUA_TBOOLEAN) v = lua_toboolean(L, -1);
    else if (type != LUA_TNIL) luaL_error(L, "%s: option %s must be a boolean, got %s", op, name, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

/* The tensor in option `name` (left on the stack, so that it stays alive), or NULL with a nil pushed. */
static hr_tensor *opt_field_tensor(lua_State *L, int oi, const char *name, const char *op)
{
    if (!oi) {
        lua_pushnil(L);
        return NULL;
    }
    if (hr_lua_rawfield(L, oi, name) == LUA_TNIL) return NULL;
    if (!luaL_testudata(L, -1, HR_TENSOR_MT))
        luaL_error(L, "%s: option %s must be a hero.Tensor, got %s", op, name, luaL_typename(L, -1));
    hr_tensor *t = hr_lua_to_tensor(L, -1);
    if (!t) luaL_error(L, "%s: option %s: the tensor was freed", op, name);
    return t;
}

static void refuse_grad(lua_State *L, hr_tensor *t, const char *op)
{
    if (t && hr_should_record(1, &t))
        luaL_error(L, "%s: not differentiable; detach() the input or run it inside hero.no_grad", op);
}

static int l_unique(lua_State *L)
{
    static const char *const names[] = {"sorted", "return_inverse", "return_counts", "dim", NULL};
    const char *list = "sorted, return_inverse, return_counts, dim";
    hr_tensor *t = hr_lua_check_tensor(L, 1, "unique");
    int oi = hr_lua_options(L, 2, names, list, "unique");
    /* sorted = false lets torch return any order; hero's is always the sorted one */
    (void)opt_field_bool(L, oi, "sorted", true, "unique");
    bool want_inverse = opt_field_bool(L, oi, "return_inverse", false, "unique");
    bool want_counts = opt_field_bool(L, oi, "return_counts", false, "unique");
    /* dim: the distinct slices along it (1-based, negative from the end) */
    bool by_dim = false;
    int dim = 0;
    if (oi && hr_lua_rawfield(L, oi, "dim") != LUA_TNIL) {
        if (!lua_isinteger(L, -1))
            return luaL_error(L, "unique: option dim must be an integer, got %s", luaL_typename(L, -1));
        dim = hr_lua_check_dim(L, lua_gettop(L), t->ndim, "unique");
        by_dim = true;
    }
    if (oi) lua_pop(L, 1);
    refuse_grad(L, t, "unique");
    hr_tensor *v = NULL, *inv = NULL, *cnt = NULL;
    int rc;
    if (by_dim)
        HR_LUA_RETRY_INT(L, rc, hr_unique_dim(t, dim, &v, want_inverse ? &inv : NULL, want_counts ? &cnt : NULL));
    else
        HR_LUA_RETRY_INT(L, rc, hr_unique(t, &v, want_inverse ? &inv : NULL, want_counts ? &cnt : NULL));
    if (rc) return hr_lua_error(L, "unique");
    hr_lua_push_tensor(L, v);
    int n = 1;
    if (want_inverse) {
        hr_lua_push_tensor(L, inv);
        n++;
    }
    if (want_counts) {
        hr_lua_push_tensor(L, cnt);
        n++;
    }
    return n;
}

static int l_bincount(lua_State *L)
{
    static const char *const names[] = {"weights", "minlength", NULL};
    hr_tensor *t = hr_lua_check_tensor(L, 1, "bincount");
    int oi = hr_lua_options(L, 2, names, "weights, minlength", "bincount");
    lua_Integer minlength = oi ? hr_lua_opt_field_integer(L, oi, "minlength", 0, "bincount") : 0;
    hr_tensor *w = opt_field_tensor(L, oi, "weights", "bincount");
    refuse_grad(L, w, "bincount");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_bincount(t, w, (int64_t)minlength));
    if (!r) return hr_lua_error(L, "bincount");
    hr_lua_push_tensor(L, r);
    return 1;
}

/* The values argument at idx: a tensor, or a number made into a 0-dim tensor (i64 for an integer,
 * f64 otherwise, so that it compares exactly), left at the top of the stack to stay alive. */
static hr_tensor *values_arg(lua_State *L, int idx, const char *op)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        bool integer = lua_isinteger(L, idx);
        hr_tensor *s = hr_tensor_empty(0, NULL, integer ? HR_I64 : HR_F64, hr_cpu());
        if (!s) hr_lua_error(L, op);
        if (integer) *(int64_t *)hr_tensor_data(s) = (int64_t)lua_tointeger(L, idx);
        else *(double *)hr_tensor_data(s) = (double)lua_tonumber(L, idx);
        hr_lua_push_tensor(L, s);
        return s;
    }
    hr_tensor *t = hr_lua_check_tensor(L, idx, op);
    lua_pushvalue(L, idx);
    return t;
}

/* A number's 0-dim tensor is on the host; beside a device sequence it goes there too. */
static hr_tensor *values_on(lua_State *L, hr_tensor *v, const hr_tensor *seq, int value_idx, const char *op)
{
    if (lua_type(L, value_idx) != LUA_TNUMBER || hr_tensor_device(seq).type == HR_CPU) return v;
    hr_tensor *d = hr_tensor_empty(0, NULL, v->dtype, hr_tensor_device(seq));
    if (!d || hr_copy_(d, v)) {
        hr_tensor_release(d);
        hr_lua_error(L, op);
    }
    hr_lua_push_tensor(L, d);
    return d;
}

/* right = true and side = "left" contradict each other (torch refuses them too). */
static bool opt_right(lua_State *L, int oi, bool allow_side, const char *op)
{
    bool right = opt_field_bool(L, oi, "right", false, op);
    if (!allow_side || !oi) return right;
    int type = hr_lua_rawfield(L, oi, "side");
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return right;
    }
    const char *side = type == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (!side || (strcmp(side, "left") != 0 && strcmp(side, "right") != 0))
        luaL_error(L, "%s: option side must be \"left\" or \"right\", got %s", op, side ? side : luaL_typename(L, -1));
    bool side_right = strcmp(side, "right") == 0;
    lua_pop(L, 1);
    if (right && !side_right) luaL_error(L, "%s: right = true and side = \"left\" contradict each other", op);
    return side_right;
}

static int search(lua_State *L, int seq_idx, int values_idx, bool bucketize)
{
    static const char *const sorted_names[] = {"right", "side", "out_int32", "sorter", NULL};
    static const char *const bucket_names[] = {"right", "out_int32", NULL};
    const char *op = bucketize ? "bucketize" : "searchsorted";
    hr_tensor *seq = hr_lua_check_tensor(L, seq_idx, op);
    int oi = bucketize ? hr_lua_options(L, 3, bucket_names, "right, out_int32", op)
                       : hr_lua_options(L, 3, sorted_names, "right, side, out_int32, sorter", op);
    bool right = opt_right(L, oi, !bucketize, op);
    bool out_int32 = opt_field_bool(L, oi, "out_int32", false, op);
    hr_tensor *sorter = bucketize ? NULL : opt_field_tensor(L, oi, "sorter", op);
    if (bucketize && seq->ndim != 1)
        return luaL_error(L, "bucketize: the boundaries must be a 1-D tensor, got %d dimensions", seq->ndim);
    hr_tensor *v = values_arg(L, values_idx, op);
    v = values_on(L, v, seq, values_idx, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_searchsorted(seq, v, right, out_int32, sorter));
    if (!r) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, r);
    return 1;
}

static int l_searchsorted(lua_State *L) { return search(L, 1, 2, false); }
static int l_bucketize(lua_State *L) { return search(L, 2, 1, true); }

static const luaL_Reg search_functions[] = {
    {"unique", l_unique},
    {"bincount", l_bincount},
    {"searchsorted", l_searchsorted},
    {"bucketize", l_bucketize},
    {NULL, NULL},
};

void hr_lua_open_search(lua_State *L, int module_idx, int methods_idx)
{
    hr_lua_register(L, module_idx, methods_idx, search_functions, search_functions);
}
