/* l_index.c — Lua bindings of the index ops: index_select, gather, scatter(_add)(_), index_add_,
 * index_copy_, masked_fill(_), masked_select, nonzero, cat, stack, split, chunk, unbind, flip,
 * tile/repeat. Dimensions are 1-based (negative from the end) here; index VALUES stay 0-based. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "hr_index.h"
#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "l_common.h"

static hr_tensor *check_result(lua_State *L, hr_tensor *r, const char *op)
{
    if (!r) hr_lua_error(L, op);
    return r;
}

/* The index argument: a tensor (its dtype is checked by the core, which names it). */
static hr_tensor *check_index(lua_State *L, int idx, const char *op)
{
    if (!luaL_testudata(L, idx, HR_TENSOR_MT))
        luaL_error(L, "%s: argument #%d (index) must be an i64 or i32 hero.Tensor, got %s", op, idx, luaL_typename(L, idx));
    return hr_lua_check_tensor(L, idx, op);
}

/* ------------------------------------------------------------------ gather / scatter */

static int l_index_select(lua_State *L)
{
    const char *op = "index_select";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = hr_lua_check_dim(L, 2, t->ndim, op);
    hr_tensor *index = check_index(L, 3, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_index_select(t, dim, index));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

static int l_gather(lua_State *L)
{
    const char *op = "gather";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = hr_lua_check_dim(L, 2, t->ndim, op);
    hr_tensor *index = check_index(L, 3, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_gather(t, dim, index));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

typedef hr_tensor *(*scatter_out_fn)(hr_tensor *, int, const hr_tensor *, const hr_tensor *);
typedef int (*scatter_inplace_fn)(hr_tensor *, int, const hr_tensor *, const hr_tensor *);

/* Ops without a backward refuse inputs that need gradients instead of silently cutting the graph. */
static void refuse_grad(lua_State *L, const char *op, hr_tensor *a, hr_tensor *b)
{
    hr_tensor *in[2] = {a, b};
    if (hr_should_record(b ? 2 : 1, in))
        luaL_error(L, "%s: not differentiable; detach() its inputs or run it inside hero.no_grad", op);
}

static hr_tensor *ag_scatter_add(hr_tensor *t, int dim, const hr_tensor *index, const hr_tensor *src)
{
    return hr_ag_scatter_add(t, dim, index, (hr_tensor *)src);
}

static int scatter_out(lua_State *L, const char *op, scatter_out_fn fn)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = hr_lua_check_dim(L, 2, t->ndim, op);
    hr_tensor *index = check_index(L, 3, op);
    hr_tensor *src = hr_lua_check_tensor(L, 4, op);
    if (fn != ag_scatter_add) refuse_grad(L, op, t, src);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, fn(t, dim, index, src));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

static int scatter_inplace(lua_State *L, const char *op, scatter_inplace_fn fn)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = hr_lua_check_dim(L, 2, t->ndim, op);
    hr_tensor *index = check_index(L, 3, op);
    hr_tensor *src = hr_lua_check_tensor(L, 4, op);
    hr_lua_check_inplace(L, t, op);
    refuse_grad(L, op, t, src);
    int rc;
    HR_LUA_RETRY_INT(L, rc, fn(t, dim, index, src));
    if (rc) hr_lua_error(L, op);
    lua_settop(L, 1);
    return 1;
}

static int l_scatter_add(lua_State *L) { return scatter_out(L, "scatter_add", ag_scatter_add); }
static int l_scatter(lua_State *L) { return scatter_out(L, "scatter", hr_scatter); }
static int l_scatter_add_(lua_State *L) { return scatter_inplace(L, "scatter_add_", hr_scatter_add_); }
static int l_scatter_(lua_State *L) { return scatter_inplace(L, "scatter_", hr_scatter_); }

/* alpha for index_add: any number for float tensors, an integer for integer tensors. */
static double check_alpha(lua_State *L, int idx, const hr_tensor *t, const char *op)
{
    if (lua_isnoneornil(L, idx)) return 1.0;
    double a = luaL_checknumber(L, idx);
    if (hr_dtype_is_int(t->dtype) && !lua_isinteger(L, idx)) {
        char num[64];
        snprintf(num, sizeof num, "%g", a);
        luaL_error(L, "%s: alpha must be an integer for a %s tensor, got %s", op, hr_dtype_name(t->dtype), num);
    }
    return a;
}

/* index_add_(dim, index, src[, alpha]) / index_copy_(dim, index, src); the forms without '_'
 * work on a copy of self. */
static int index_scatter(lua_State *L, const char *op, bool add, bool inplace)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int dim = hr_lua_check_dim(L, 2, t->ndim, op);
    hr_tensor *index = check_index(L, 3, op);
    hr_tensor *src = hr_lua_check_tensor(L, 4, op);
    double alpha = add ? check_alpha(L, 5, t, op) : 1.0;
    if (inplace) hr_lua_check_inplace(L, t, op);
    refuse_grad(L, op, t, src);
    hr_tensor *dst = t;
    if (!inplace) {
        HR_LUA_RETRY(L, dst, hr_cast(t, t->dtype));
        hr_lua_push_tensor(L, check_result(L, dst, op)); /* owned by Lua from here on */
    }
    int rc;
    if (add) HR_LUA_RETRY_INT(L, rc, hr_index_add_(dst, dim, index, src, alpha));
    else HR_LUA_RETRY_INT(L, rc, hr_index_copy_(dst, dim, index, src));
    if (rc) hr_lua_error(L, op);
    if (inplace) lua_settop(L, 1);
    return 1;
}

static int l_index_add_(lua_State *L) { return index_scatter(L, "index_add_", true, true); }
static int l_index_add(lua_State *L) { return index_scatter(L, "index_add", true, false); }
static int l_index_copy_(lua_State *L) { return index_scatter(L, "index_copy_", false, true); }
static int l_index_copy(lua_State *L) { return index_scatter(L, "index_copy", false, false); }

/* ------------------------------------------------------------------ masks */

/* A fill value: a number, a boolean or a 0-dimensional tensor (as in PyTorch). */
static hr_scalar check_scalar(lua_State *L, int idx, const char *op)
{
    hr_scalar s = {false, 0, 0.0};
    if (lua_isboolean(L, idx)) {
        s.is_int = true;
        s.i = lua_toboolean(L, idx);
        s.d = (double)s.i;
    } else if (lua_isinteger(L, idx)) {
        s.is_int = true;
        s.i = (int64_t)lua_tointeger(L, idx);
        s.d = (double)s.i;
    } else if (lua_type(L, idx) == LUA_TNUMBER) {
        s.d = lua_tonumber(L, idx);
    } else if (luaL_testudata(L, idx, HR_TENSOR_MT)) {
        hr_tensor *v = hr_lua_check_tensor(L, idx, op);
        if (v->ndim != 0) {
            char b[160];
            luaL_error(L, "%s: value must be a number or a 0-dimensional tensor, got a tensor of size %s", op,
                       hr_shape_str(v->ndim, v->size, b, sizeof b));
        }
        hr_tensor *h = hr_host_contiguous(v); /* a CUDA scalar is read through the host */
        if (!h) hr_lua_error(L, op);
        const void *p = hr_tensor_data(h);
        if (hr_dtype_is_int(v->dtype)) {
            s.is_int = true;
            s.i = hr_load_i64(p, v->dtype);
            s.d = (double)s.i;
        } else {
            s.d = hr_load_f64(p, v->dtype);
        }
        hr_tensor_release(h);
    } else {
        luaL_error(L, "%s: value must be a number, a boolean or a 0-dimensional tensor, got %s", op, luaL_typename(L, idx));
    }
    return s;
}

static int l_masked_fill_(lua_State *L)
{
    const char *op = "masked_fill_";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    hr_tensor *mask = hr_lua_check_tensor(L, 2, op);
    hr_scalar v = check_scalar(L, 3, op);
    hr_lua_check_fits(L, 3, t->dtype, op);
    hr_lua_check_inplace(L, t, op);
    refuse_grad(L, op, t, NULL);
    if (hr_masked_fill_(t, mask, v)) hr_lua_error(L, op);
    lua_settop(L, 1);
    return 1;
}

static int l_masked_fill(lua_State *L)
{
    const char *op = "masked_fill";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    hr_tensor *mask = hr_lua_check_tensor(L, 2, op);
    hr_tensor *vt = luaL_testudata(L, 3, HR_TENSOR_MT) ? hr_lua_check_tensor(L, 3, op) : NULL;
    hr_tensor *r;
    if (vt && vt->ndim == 0 && hr_should_record(1, &vt)) {
        /* a value that requires grad gets its gradient (the masked positions' sum): where() */
        if (!hr_dtype_is_float(t->dtype) || vt->dtype != t->dtype)
            return luaL_error(L, "%s: a value tensor that requires grad must have the dtype of the tensor (%s), got %s",
                              op, hr_dtype_name(t->dtype), hr_dtype_name(vt->dtype));
        HR_LUA_RETRY(L, r, hr_ag_where(mask, hr_operand_tensor(vt), hr_operand_tensor(t)));
        hr_lua_push_tensor(L, check_result(L, r, op));
        return 1;
    }
    hr_scalar v = check_scalar(L, 3, op);
    hr_lua_check_fits(L, 3, t->dtype, op);
    HR_LUA_RETRY(L, r, hr_ag_masked_fill(t, mask, v));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

static int l_masked_select(lua_State *L)
{
    const char *op = "masked_select";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    hr_tensor *mask = hr_lua_check_tensor(L, 2, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_masked_select(t, mask));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

static int l_nonzero(lua_State *L)
{
    const char *op = "nonzero";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_nonzero(t));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

/* ------------------------------------------------------------------ cat / stack */

/* Reads a Lua array of tensors at idx into a pointer array kept alive by a userdata pushed on the
 * stack (so a Lua error cannot leak it). Entries are borrowed: the table keeps them alive, and the
 * reads are raw, so that no metamethod (Lua code, a collection) runs while pointers are taken. */
static hr_tensor **check_tensor_list(lua_State *L, int idx, const char *op, int *count)
{
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: argument #%d must be a list of tensors, got %s", op, idx, luaL_typename(L, idx));
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n < 1) luaL_error(L, "%s: expected a non-empty list of tensors", op);
    if (n > (1 << 24)) luaL_error(L, "%s: list of %d tensors is too long", op, (int)n);
    hr_tensor **ts = lua_newuserdatauv(L, sizeof(hr_tensor *) * (size_t)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        hr_tensor_box *box = luaL_testudata(L, -1, HR_TENSOR_MT);
        if (!box) luaL_error(L, "%s: entry %d of the list is a %s, expected a hero.Tensor", op, (int)i, luaL_typename(L, -1));
        if (!box->t || !box->t->storage) luaL_error(L, "%s: entry %d of the list: tensor was freed", op, (int)i);
        ts[i - 1] = box->t;
        lua_pop(L, 1);
    }
    *count = (int)n;
    return ts;
}

/* Converts a 1-based (or negative) dim given as a number at idx for an ndim-D tensor; default
 * when absent. */
static int opt_dim(lua_State *L, int idx, int ndim, const char *op)
{
    if (lua_isnoneornil(L, idx)) return 0;
    return hr_lua_check_dim(L, idx, ndim, op);
}

static int l_cat(lua_State *L)
{
    const char *op = "cat";
    lua_settop(L, 2); /* the pointer array is pushed above the arguments */
    int n;
    hr_tensor **ts = check_tensor_list(L, 1, op, &n);
    /* dims count in the first tensor that is not a skipped empty 1-D tensor */
    int ndim = 1;
    for (int i = 0; i < n; i++) {
        if (!(ts[i]->ndim == 1 && ts[i]->size[0] == 0)) {
            ndim = ts[i]->ndim;
            break;
        }
    }
    int dim = opt_dim(L, 2, ndim, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_cat(n, ts, dim));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

/* gather_rows({t1, t2, ...}, index [, shape]): rows of the 2-D tensors' concatenation picked by
 * index (-1: a row of zeros), shaped shape .. {width} (hr_gather_rows). */
static int l_gather_rows(lua_State *L)
{
    const char *op = "gather_rows";
    lua_settop(L, 3);
    int n;
    hr_tensor **ts = check_tensor_list(L, 1, op, &n);
    hr_tensor *index = hr_lua_check_tensor(L, 2, op);
    int64_t lead[HR_MAX_DIMS];
    int nlead = 0;
    if (!lua_isnil(L, 3)) {
        if (!lua_istable(L, 3))
            return luaL_error(L, "%s: argument #3 (the shape before the rows' width) must be a table, got %s", op,
                              luaL_typename(L, 3));
        nlead = hr_lua_check_shape(L, 3, lead, op);
        if (nlead == 0) return luaL_error(L, "%s: argument #3 (the shape before the rows' width) is empty", op);
    }
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_gather_rows(n, ts, index, nlead, lead));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

static int l_stack(lua_State *L)
{
    const char *op = "stack";
    lua_settop(L, 2);
    int n;
    hr_tensor **ts = check_tensor_list(L, 1, op, &n);
    int dim = 0;
    if (!lua_isnoneornil(L, 2)) {
        /* a new dim: positions 1..ndim+1 (or -1..-(ndim+1)), as unsqueeze */
        lua_Integer d = luaL_checkinteger(L, 2);
        int slots = ts[0]->ndim + 1;
        if (d == 0 || d > slots || d < -slots)
            return luaL_error(L, "%s: dimension %d out of range for %d-D tensors (use 1..%d or -1..-%d)", op, (int)d,
                              ts[0]->ndim, slots, slots);
        dim = d > 0 ? (int)d - 1 : (int)(d + slots);
    }
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_stack(n, ts, dim));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

/* ------------------------------------------------------------------ split / chunk / unbind */

/* Pushes a Lua array holding the n views of pieces (taking over their references). */
static void push_pieces(lua_State *L, hr_tensor *t, int dim, hr_tensor **pieces, int64_t n)
{
    /* With recording on, each piece becomes a differentiable narrow of t. */
    if (hr_should_record(1, &t)) {
        int64_t start = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t len = pieces[i]->size[dim];
            hr_tensor *v = hr_ag_narrow(t, dim, start, len);
            if (!v) {
                for (int64_t k = i; k < n; k++) hr_tensor_release(pieces[k]);
                hr_lua_error(L, "split");
            }
            hr_tensor_release(pieces[i]);
            pieces[i] = v;
            start += len;
        }
    }
    /* Each piece is boxed (owned by Lua) before the next one; only a memory error inside this
     * loop could leave the later pieces unboxed. */
    lua_createtable(L, n > 1000000 ? 0 : (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        hr_tensor *p = pieces[i];
        pieces[i] = NULL;
        hr_lua_push_tensor(L, p);
        lua_rawseti(L, -2, i + 1);
    }
}

static hr_tensor **piece_buffer(lua_State *L, int64_t n, const char *op)
{
    if (n > ((int64_t)1 << 24)) luaL_error(L, "%s: %I pieces are too many", op, (lua_Integer)n);
    hr_tensor **buf = lua_newuserdatauv(L, sizeof(hr_tensor *) * (size_t)(n > 0 ? n : 1), 0);
    return buf;
}

/* split(size) or split({sizes...}) along dim (default 1): views. */
static int l_split(lua_State *L)
{
    const char *op = "split";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    if (t->ndim == 0) return luaL_error(L, "%s: a 0-dimensional tensor cannot be split", op);
    int dim = opt_dim(L, 3, t->ndim, op);
    if (lua_istable(L, 2)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
        if (n < 1) return luaL_error(L, "%s: the list of sizes is empty", op);
        if (n > (1 << 24)) return luaL_error(L, "%s: list of %d sizes is too long", op, (int)n);
        int64_t *sizes = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)n, 0);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, 2, i);
            int isnum;
            lua_Integer v = lua_tointegerx(L, -1, &isnum);
            if (!isnum) return luaL_error(L, "%s: size %d of the list is not an integer (%s)", op, (int)i, luaL_typename(L, -1));
            sizes[i - 1] = v;
            lua_pop(L, 1);
        }
        hr_tensor **pieces = piece_buffer(L, n, op);
        if (hr_split_sizes(t, dim, (int)n, sizes, pieces)) return hr_lua_error(L, op);
        push_pieces(L, t, dim, pieces, n);
        return 1;
    }
    int isnum;
    lua_Integer s = lua_tointegerx(L, 2, &isnum);
    if (!isnum)
        return luaL_error(L, "%s: argument #2 must be a piece size (integer) or a list of sizes, got %s", op,
                          luaL_typename(L, 2));
    int64_t count = hr_split_count(t, dim, s);
    if (count < 0) return hr_lua_error(L, op);
    hr_tensor **pieces = piece_buffer(L, count, op);
    if (hr_split(t, dim, s, pieces)) return hr_lua_error(L, op);
    push_pieces(L, t, dim, pieces, count);
    return 1;
}

/* chunk(n[, dim]): PyTorch's chunk (pieces of ceil(size / n); possibly fewer than n pieces). */
static int l_chunk(lua_State *L)
{
    const char *op = "chunk";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    if (t->ndim == 0) return luaL_error(L, "%s: a 0-dimensional tensor cannot be split", op);
    lua_Integer chunks = luaL_checkinteger(L, 2);
    int dim = opt_dim(L, 3, t->ndim, op);
    int64_t piece, count;
    if (hr_chunk_plan(t, dim, chunks, &piece, &count)) return hr_lua_error(L, op);
    hr_tensor **pieces = piece_buffer(L, count, op);
    int rc;
    if (piece == 0) {
        int64_t *zeros = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)count, 0);
        memset(zeros, 0, sizeof(int64_t) * (size_t)count);
        rc = hr_split_sizes(t, dim, (int)count, zeros, pieces);
    } else {
        rc = hr_split(t, dim, piece, pieces);
    }
    if (rc) return hr_lua_error(L, op);
    push_pieces(L, t, dim, pieces, count);
    return 1;
}

/* unbind([dim]): the views select(dim, 1), select(dim, 2), ... */
static int l_unbind(lua_State *L)
{
    const char *op = "unbind";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    if (t->ndim == 0) return luaL_error(L, "%s: a 0-dimensional tensor cannot be unbound", op);
    int dim = opt_dim(L, 2, t->ndim, op);
    int64_t n = t->size[dim];
    lua_createtable(L, n > 1000000 ? 0 : (int)n, 0);
    for (int64_t i = 0; i < n; i++) {
        hr_lua_push_tensor(L, check_result(L, hr_ag_select(t, dim, i), op));
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ------------------------------------------------------------------ flip / tile / repeat */

/* flip(d1, d2, ...) or flip{d1, d2, ...}: a copy reversed along those dims. */
static int l_flip(lua_State *L)
{
    const char *op = "flip";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int64_t raw[HR_MAX_DIMS];
    int n = hr_lua_check_shape(L, 2, raw, op);
    int dims[HR_MAX_DIMS];
    int nd = t->ndim > 0 ? t->ndim : 1;
    for (int i = 0; i < n; i++) {
        int64_t d = raw[i];
        if (d == 0 || d > nd || d < -nd)
            return luaL_error(L, "%s: dimension %d out of range (the tensor has %d dimension%s; use 1..%d or -1..-%d)", op,
                              (int)d, t->ndim, t->ndim == 1 ? "" : "s", nd, nd);
        dims[i] = d > 0 ? (int)d - 1 : (int)(d + nd);
    }
    /* a 0-dim tensor's one nameable dim (1 or -1, as torch's 0 or -1) has nothing to reverse: a copy */
    if (t->ndim == 0) n = 0;
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_flip(t, n, dims));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

/* repeat(r1, r2, ...) as PyTorch (at least one count per dim); tile pads missing leading counts
 * with 1 as NumPy and PyTorch do. `repeat` is a Lua keyword, so t:tile(...) is the usual
 * spelling; t["repeat"](t, ...) also works. */
static int repeat_common(lua_State *L, const char *op, bool tile)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    int64_t reps[HR_MAX_DIMS];
    int n = hr_lua_check_shape(L, 2, reps, op);
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_repeat(t, n, reps, tile));
    hr_lua_push_tensor(L, check_result(L, r, op));
    return 1;
}

static int l_repeat(lua_State *L) { return repeat_common(L, "repeat", false); }
static int l_tile(lua_State *L) { return repeat_common(L, "tile", true); }

/* ------------------------------------------------------------------ registration */

/* Functions that are both hero.<name>(t, ...) and t:<name>(...). */
static const luaL_Reg both[] = {
    {"index_select", l_index_select},
    {"gather", l_gather},
    {"scatter_add", l_scatter_add},
    {"scatter_add_", l_scatter_add_},
    {"scatter", l_scatter},
    {"scatter_", l_scatter_},
    {"index_add", l_index_add},
    {"index_add_", l_index_add_},
    {"index_copy", l_index_copy},
    {"index_copy_", l_index_copy_},
    {"masked_fill", l_masked_fill},
    {"masked_fill_", l_masked_fill_},
    {"masked_select", l_masked_select},
    {"nonzero", l_nonzero},
    {"split", l_split},
    {"chunk", l_chunk},
    {"unbind", l_unbind},
    {"flip", l_flip},
    {"tile", l_tile},
    {"repeat", l_repeat},
    {NULL, NULL},
};

static const luaL_Reg module_only[] = {
    {"cat", l_cat},
    {"stack", l_stack},
    {"gather_rows", l_gather_rows},
    {NULL, NULL},
};

void hr_lua_open_index(lua_State *L, int module_idx, int methods_idx)
{
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, both, 0);
    luaL_setfuncs(L, module_only, 0);
    lua_pop(L, 1);
    lua_pushvalue(L, methods_idx);
    luaL_setfuncs(L, both, 0);
    lua_pop(L, 1);
}
