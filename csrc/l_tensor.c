/* l_tensor.c — the hero.Tensor userdata: lifetime, creation, shape queries, views, element access. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "hr_autograd_ops.h"
#include "hr_cuda.h"
#include "hr_queue.h"
#include "l_common.h"

/* ------------------------------------------------------------------ lifetime */

/* t:free() and the end of a `local t <close>`: the tensor is freed for Lua at once, and its memory
 * goes now, or at the box's own collection when called from a finalizer (hr_lua_in_finalizer). */
static int tensor_free(lua_State *L)
{
    hr_tensor_box *box = luaL_checkudata(L, 1, HR_TENSOR_MT);
    if (box->t) {
        hr_tensor *t = box->t;
        box->t = NULL;
        if (hr_lua_in_finalizer(L) && !box->deferred) {
            box->deferred = t;
            return 0;
        }
        hr_tensor_release(t);
        hr_lua_tensors_finalized++;
    }
    return 0;
}

/* __gc: nothing can reach the box any more, so both references go. */
static int tensor_gc(lua_State *L)
{
    hr_tensor_box *box = luaL_checkudata(L, 1, HR_TENSOR_MT);
    hr_tensor *t = box->t, *deferred = box->deferred;
    box->t = NULL;
    box->deferred = NULL;
    if (t) hr_tensor_release(t);
    if (deferred) hr_tensor_release(deferred);
    if (t || deferred) hr_lua_tensors_finalized++;
    return 0;
}

static int tensor_is_freed(lua_State *L)
{
    hr_tensor_box *box = luaL_checkudata(L, 1, HR_TENSOR_MT);
    lua_pushboolean(L, box->t == NULL || box->t->storage == NULL);
    return 1;
}

/* ------------------------------------------------------------------ creation */

static int opts_index(lua_State *L)
{
    int top = lua_gettop(L);
    return (top >= 1 && lua_istable(L, top)) ? top : 0;
}

static hr_tensor *new_filled(lua_State *L, int ndim, const int64_t *size, hr_dtype dt, hr_device dev, double v,
                             bool zero, const char *op)
{
    hr_tensor *t;
    if (zero) HR_LUA_RETRY(L, t, hr_tensor_zeros(ndim, size, dt, dev));
    else HR_LUA_RETRY(L, t, hr_tensor_empty(ndim, size, dt, dev));
    if (!t) hr_lua_error(L, op);
    if (!zero && !isnan(v) && hr_fill_(t, v)) {
        hr_tensor_release(t);
        hr_lua_error(L, op);
    }
    return t;
}

/* Tensors whose values are written by host loops (tensor, arange, eye) are made on the CPU, then
 * copied to the device asked for: replaces the tensor at the top of the stack by its copy on dev. */
static void move_top(lua_State *L, hr_device dev, const char *op)
{
    if (dev.type == HR_CPU) return;
    hr_tensor *t = hr_lua_check_tensor(L, -1, op);
    hr_tensor *d;
    HR_LUA_RETRY(L, d, hr_tensor_empty(t->ndim, t->size, t->dtype, dev));
    if (!d) hr_lua_error(L, op);
    if (hr_copy_(d, t)) {
        hr_tensor_release(d);
        hr_lua_error(L, op);
    }
    lua_pop(L, 1);
    hr_lua_push_tensor(L, d);
}

/* Shape arguments: zeros(2, 3), zeros{2, 3}, zeros({2, 3}, {dtype = "i64"}). */
static int make_filled(lua_State *L, const char *op, double value, bool zero, bool fill)
{
    int64_t size[HR_MAX_DIMS];
    int oi = opts_index(L);
    /* a lone options table is only an options table when it has no array part */
    int shape_idx = 1;
    int ndim;
    if (lua_istable(L, 1) && (oi != 1 || (lua_Integer)lua_rawlen(L, 1) > 0 || lua_gettop(L) == 1)) {
        ndim = hr_lua_check_shape(L, 1, size, op);
        if (oi == 1) oi = 0;
    } else {
        ndim = hr_lua_check_shape(L, shape_idx, size, op);
    }
    hr_dtype dt = HR_F32;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, false, op);
    hr_tensor *t = new_filled(L, ndim, size, dt, dev, fill ? value : NAN, zero, op);
    hr_lua_push_tensor(L, t);
    return 1;
}

static int l_empty(lua_State *L) { return make_filled(L, "empty", 0, false, false); }
static int l_zeros(lua_State *L) { return make_filled(L, "zeros", 0, true, false); }
static int l_ones(lua_State *L) { return make_filled(L, "ones", 1, false, true); }

/* full(shape, value, opts) */
static int l_full(lua_State *L)
{
    int64_t size[HR_MAX_DIMS];
    int ndim = hr_lua_check_shape(L, 1, size, "full");
    if (!lua_istable(L, 1)) luaL_error(L, "full: argument #1 must be a shape table such as {2, 3}");
    double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
    hr_dtype dt = lua_isboolean(L, 2) ? HR_BOOL : HR_F32; /* as torch's full and hero.tensor(true) */
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, hr_lua_opts_arg(L, 3, "full"), &dt, &dev, false, "full");
    hr_lua_check_fits(L, 2, dt, "full");
    hr_tensor *t = new_filled(L, ndim, size, dt, dev, 0, false, "full");
    /* an integer goes in as itself, as fill_'s: through a double, 2^53 + 1 would become 2^53 */
    if (lua_isinteger(L, 2) ? hr_fill_i64_(t, lua_tointeger(L, 2)) : hr_fill_(t, v)) {
        hr_tensor_release(t);
        hr_lua_error(L, "full");
    }
    hr_lua_push_tensor(L, t);
    return 1;
}

/* arange(stop) / arange(start, stop[, step]) [, opts]: values start, start+step, ... < stop
 * (the end is exclusive, as in NumPy and PyTorch). */
static int l_arange(lua_State *L)
{
    int oi = opts_index(L);
    int nargs = oi ? oi - 1 : lua_gettop(L);
    double start = 0, stop, step = 1;
    bool all_int = true;
    for (int i = 1; i <= nargs; i++) {
        luaL_checknumber(L, i);
        if (!lua_isinteger(L, i)) all_int = false;
    }
    if (nargs == 1) stop = lua_tonumber(L, 1);
    else if (nargs >= 2) {
        start = lua_tonumber(L, 1);
        stop = lua_tonumber(L, 2);
        if (nargs >= 3) step = lua_tonumber(L, 3);
    } else {
        return luaL_error(L, "arange: expected arange(stop) or arange(start, stop[, step])");
    }
    if (step == 0 || isnan(step) || isnan(start) || isnan(stop) || isinf(start) || isinf(stop))
        return luaL_error(L, "arange: invalid range start=%f stop=%f step=%f", (lua_Number)start,
                          (lua_Number)stop, (lua_Number)step);
    hr_dtype dt = all_int ? HR_I64 : HR_F32;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, false, "arange");
    double count = ceil((stop - start) / step);
    /* integer arguments are counted and stepped exactly in 128 bits: as doubles, values past 2^53
     * would round (and stop - start can pass 64 bits) */
    __int128 istart = 0, istep = 1, istop = 0;
    bool int_range = all_int;
    if (all_int) {
        istart = nargs >= 2 ? lua_tointeger(L, 1) : 0;
        istop = lua_tointeger(L, nargs >= 2 ? 2 : 1);
        istep = nargs >= 3 ? lua_tointeger(L, 3) : 1;
    } else if (hr_dtype_is_int(dt)) {
        /* an integer dtype takes its bounds and step as integers first (truncated), as PyTorch */
        double lim = 9.2e18;
        if (fabs(start) > lim || fabs(stop) > lim || fabs(step) > lim)
            return luaL_error(L, "arange: the range does not fit in %s", hr_dtype_name(dt));
        istart = (int64_t)trunc(start);
        istop = (int64_t)trunc(stop);
        istep = (int64_t)trunc(step);
        if (istep == 0)
            return luaL_error(L, "arange: step %f is 0 as an integer of dtype %s", (lua_Number)step, hr_dtype_name(dt));
        int_range = true;
    }
    if (int_range) {
        __int128 span = istop - istart, q = span / istep;
        if (span % istep != 0 && (span > 0) == (istep > 0)) q++; /* ceil(span / step) */
        count = q < 0 ? 0 : (double)q;
    }
    if (count < 0) count = 0;
    if (count > 1e12) return luaL_error(L, "arange: range of %f elements is too large", (lua_Number)count);
    int64_t n = (int64_t)count;
    hr_tensor *t = new_filled(L, 1, &n, dt, hr_cpu(), NAN, false, "arange");
    hr_lua_push_tensor(L, t);
    char *p = hr_tensor_data(t);
    size_t el = hr_dtype_size(dt);
    for (int64_t i = 0; i < n; i++) {
        if (int_range) { /* every value lies between start and stop: it fits in 64 bits */
            int64_t v = (int64_t)(istart + (__int128)i * istep);
            if (hr_dtype_is_int(dt)) hr_store_i64(p + (size_t)i * el, dt, v);
            else hr_store_f64(p + (size_t)i * el, dt, (double)v);
        } else {
            hr_store_f64(p + (size_t)i * el, dt, start + (double)i * step);
        }
    }
    move_top(L, dev, "arange");
    return 1;
}

/* eye(n[, m][, opts]) */
static int l_eye(lua_State *L)
{
    int oi = opts_index(L);
    int64_t size[2];
    size[0] = luaL_checkinteger(L, 1);
    /* a second size is any argument before the options table */
    size[1] = (!lua_isnoneornil(L, 2) && oi != 2) ? luaL_checkinteger(L, 2) : size[0];
    hr_dtype dt = HR_F32;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, false, "eye");
    hr_tensor *t = new_filled(L, 2, size, dt, hr_cpu(), 0, true, "eye");
    hr_lua_push_tensor(L, t);
    char *p = hr_tensor_data(t);
    size_t el = hr_dtype_size(dt);
    for (int64_t i = 0; i < size[0] && i < size[1]; i++) hr_store_f64(p + (size_t)(i * size[1] + i) * el, dt, 1.0);
    move_top(L, dev, "eye");
    return 1;
}

/* Walks a nested table to find its shape (the first element at each level). */
static int nested_shape(lua_State *L, int idx, int64_t *size, bool *has_bool, bool *all_int)
{
    int ndim = 0;
    lua_pushvalue(L, idx);
    while (lua_istable(L, -1)) {
        if (ndim >= HR_MAX_DIMS) {
            lua_pop(L, 1);
            return luaL_error(L, "tensor: nested table deeper than %d levels", HR_MAX_DIMS);
        }
        size[ndim++] = (int64_t)(lua_Integer)lua_rawlen(L, -1);
        if (size[ndim - 1] == 0) break;
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
    }
    if (lua_isboolean(L, -1)) *has_bool = true;
    else if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) *all_int = false;
    lua_pop(L, 1);
    return ndim;
}

/* Whether every leaf of the nested table at idx (depth levels down, ndim in all) is a boolean; a
 * shape that is not rectangular is fill_nested's to report. */
static bool all_leaves_bool(lua_State *L, int idx, int depth, int ndim)
{
    bool all = true;
    lua_Integer n = lua_istable(L, idx) ? (lua_Integer)lua_rawlen(L, idx) : 0;
    for (lua_Integer i = 1; all && i <= n; i++) {
        int t = lua_rawgeti(L, idx, i);
        if (depth + 1 < ndim) all = all_leaves_bool(L, lua_gettop(L), depth + 1, ndim);
        else all = t == LUA_TBOOLEAN;
        lua_pop(L, 1);
    }
    return all;
}

typedef struct {
    char *data;
    hr_dtype dt;
    size_t el;
    int64_t pos;
} fill_cursor;

static void fill_nested(lua_State *L, int idx, int depth, int ndim, const int64_t *size, fill_cursor *c, int64_t *index)
{
    if (!lua_istable(L, idx) || (int64_t)(lua_Integer)lua_rawlen(L, idx) != size[depth]) {
        char path[160] = "";
        size_t used = 0;
        for (int i = 0; i < depth; i++) used += (size_t)snprintf(path + used, sizeof path - used, "[%" PRId64 "]", index[i]);
        char msg[320];
        snprintf(msg, sizeof msg, "tensor: nested table is not rectangular at %s (expected a table of %" PRId64 " entries)",
                 depth ? path : "the top level", size[depth]);
        luaL_error(L, "%s", msg);
    }
    for (int64_t i = 1; i <= size[depth]; i++) {
        index[depth] = i;
        lua_rawgeti(L, idx, i);
        if (depth + 1 < ndim) {
            fill_nested(L, lua_gettop(L), depth + 1, ndim, size, c, index);
        } else {
            char *dst = c->data + (size_t)c->pos * c->el;
            int t = lua_type(L, -1);
            if (t == LUA_TBOOLEAN) {
                hr_store_f64(dst, c->dt, lua_toboolean(L, -1) ? 1.0 : 0.0);
            } else if (t == LUA_TNUMBER) {
                hr_lua_check_fits(L, -1, c->dt, "tensor");
                if (lua_isinteger(L, -1)) hr_store_i64(dst, c->dt, lua_tointeger(L, -1));
                else hr_store_f64(dst, c->dt, lua_tonumber(L, -1));
            } else {
                char path[160] = "";
                size_t used = 0;
                for (int k = 0; k <= depth; k++)
                    used += (size_t)snprintf(path + used, sizeof path - used, "[%" PRId64 "]", index[k]);
                luaL_error(L, "tensor: element %s is a %s, expected a number or boolean", path, luaL_typename(L, -1));
            }
            c->pos++;
        }
        lua_pop(L, 1);
    }
}

/* tensor(nested_table | number [, opts]): a new tensor holding a copy of the values. */
static int l_tensor(lua_State *L)
{
    hr_dtype dt = HR_F32;
    hr_device dev = hr_cpu();
    int64_t size[HR_MAX_DIMS];
    bool has_bool = false, all_int = true;
    if (lua_type(L, 1) == LUA_TNUMBER || lua_type(L, 1) == LUA_TBOOLEAN) {
        if (lua_isboolean(L, 1)) dt = HR_BOOL;
        hr_lua_opt_dtype_device(L, hr_lua_opts_arg(L, 2, "tensor"), &dt, &dev, false, "tensor");
        hr_lua_check_fits(L, 1, dt, "tensor");
        hr_tensor *t = new_filled(L, 0, size, dt, hr_cpu(), NAN, false, "tensor");
        if (lua_isinteger(L, 1)) hr_store_i64(hr_tensor_data(t), dt, lua_tointeger(L, 1));
        else hr_store_f64(hr_tensor_data(t), dt, lua_isboolean(L, 1) ? lua_toboolean(L, 1) : lua_tonumber(L, 1));
        hr_lua_push_tensor(L, t);
        move_top(L, dev, "tensor");
        return 1;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    int ndim = nested_shape(L, 1, size, &has_bool, &all_int);
    /* bool when every element is a boolean; numbers among them make it f32 (torch's float) */
    if (has_bool) dt = ndim > 0 && !all_leaves_bool(L, 1, 0, ndim) ? HR_F32 : HR_BOOL;
    hr_lua_opt_dtype_device(L, hr_lua_opts_arg(L, 2, "tensor"), &dt, &dev, false, "tensor");
    hr_tensor *t = new_filled(L, ndim, size, dt, hr_cpu(), NAN, false, "tensor");
    /* keep t owned by a userdata while filling, so a Lua error in between cannot leak it */
    hr_lua_push_tensor(L, t);
    fill_cursor c = {hr_tensor_data(t), dt, hr_dtype_size(dt), 0};
    int64_t index[HR_MAX_DIMS];
    if (ndim > 0) fill_nested(L, 1, 0, ndim, size, &c, index);
    move_top(L, dev, "tensor");
    return 1;
}

static int l_is_tensor(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, HR_TENSOR_MT) != NULL);
    return 1;
}

static int l_live_bytes(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)hr_live_bytes());
    return 1;
}

/* hero.memory_stats() -> {live, peak_live, cached, cached_blocks, cache_hits, cache_misses,
 * evicted, fresh, small_cached, small_cached_blocks, cache_limit, mapped_blocks}: the host allocator's counters, in bytes and counts
 * (hero.cuda.memory_stats() has the devices'). */
static int l_memory_stats(lua_State *L)
{
    hr_host_memory_stats_t s;
    hr_host_memory_stats(&s);
    lua_createtable(L, 0, 12);
    const struct {
        const char *name;
        size_t value;
    } fields[] = {{"live", s.live},
                  {"peak_live", s.peak_live},
                  {"cached", s.cached},
                  {"cached_blocks", s.cached_blocks},
                  {"cache_hits", s.cache_hits},
                  {"cache_misses", s.cache_misses},
                  {"evicted", s.evicted},
                  {"fresh", s.fresh},
                  {"small_cached", s.small_cached},
                  {"small_cached_blocks", s.small_cached_blocks},
                  {"cache_limit", s.cache_limit}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        lua_pushinteger(L, (lua_Integer)fields[i].value);
        lua_setfield(L, -2, fields[i].name);
    }
    lua_pushboolean(L, s.mapped_blocks);
    lua_setfield(L, -2, "mapped_blocks");
    return 1;
}

static int l_reset_peak_memory_stats(lua_State *L)
{
    (void)L;
    hr_reset_peak_live();
    return 0;
}

/* hero.empty_cache() -> bytes returned to the system; hero.cached_bytes() */
static int l_empty_cache(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)hr_empty_cache());
    return 1;
}

/* hero.set_cache_limit(bytes) -> the previous limit: the most bytes of released blocks kept for
 * reuse (0: the default); blocks over it go back to the system now. */
static int l_set_cache_limit(lua_State *L)
{
    lua_Integer bytes = luaL_checkinteger(L, 1);
    if (bytes < 0) return luaL_error(L, "set_cache_limit: expected a number of bytes >= 0, got %I", bytes);
    lua_pushinteger(L, (lua_Integer)hr_set_cache_limit((size_t)bytes));
    return 1;
}

static int l_cached_bytes(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)hr_cached_bytes());
    return 1;
}

static int l_set_num_threads(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    /* compared before any narrowing: 2^32 + 3 must not become 3 threads */
    if (n < 1) return luaL_error(L, "set_num_threads: need at least 1 thread, got %I", n);
    if (n > HR_MAX_THREADS)
        return luaL_error(L, "set_num_threads: at most %d threads, got %I", HR_MAX_THREADS, n);
    /* The count is the process's. Kernels size per-thread scratch by it and then run their
     * parallel region, which reads it again: set from a worker state while the main state
     * computes, a region could run on more threads than its scratch has room for. A worker
     * state's own loops run on one thread whatever the count. */
    if (hr_parallel_is_serial())
        return luaL_error(L, "set_num_threads: the thread count is the process's and a worker state (whose "
                             "loops run on one thread) cannot change it; set it from the main state");
    hr_set_num_threads((int)n);
    return 0;
}

static int l_get_num_threads(lua_State *L)
{
    lua_pushinteger(L, hr_get_num_threads());
    return 1;
}

/* ------------------------------------------------------------------ queries */

static int t_size(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "size");
    if (!lua_isnoneornil(L, 2)) {
        int d = hr_lua_check_dim(L, 2, t->ndim, "size");
        lua_pushinteger(L, t->ndim ? t->size[d] : 1);
        return 1;
    }
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, t->size[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int t_stride(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "stride");
    if (!lua_isnoneornil(L, 2)) {
        int d = hr_lua_check_dim(L, 2, t->ndim, "stride");
        lua_pushinteger(L, t->ndim ? t->stride[d] : 1);
        return 1;
    }
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, t->stride[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int t_dim(lua_State *L)
{
    lua_pushinteger(L, hr_lua_check_tensor(L, 1, "dim")->ndim);
    return 1;
}

static int t_numel(lua_State *L)
{
    lua_pushinteger(L, hr_tensor_numel(hr_lua_check_tensor(L, 1, "numel")));
    return 1;
}

static int t_len(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "#");
    if (t->ndim == 0) return luaL_error(L, "#: a 0-dimensional tensor has no length (use :item())");
    lua_pushinteger(L, t->size[0]);
    return 1;
}

static int t_dtype(lua_State *L)
{
    lua_pushstring(L, hr_dtype_name(hr_lua_check_tensor(L, 1, "dtype")->dtype));
    return 1;
}

static int t_device(lua_State *L)
{
    char buf[16];
    lua_pushstring(L, hr_device_str(hr_tensor_device(hr_lua_check_tensor(L, 1, "device")), buf, sizeof buf));
    return 1;
}

static int t_is_contiguous(lua_State *L)
{
    lua_pushboolean(L, hr_tensor_is_contiguous(hr_lua_check_tensor(L, 1, "is_contiguous")));
    return 1;
}

static int t_storage_offset(lua_State *L)
{
    lua_pushinteger(L, hr_lua_check_tensor(L, 1, "storage_offset")->offset);
    return 1;
}

static int t_element_size(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)hr_dtype_size(hr_lua_check_tensor(L, 1, "element_size")->dtype));
    return 1;
}

/* Whether two tensors view the same storage (useful to check that a view did not copy). */
static int t_shares_storage(lua_State *L)
{
    hr_tensor *a = hr_lua_check_tensor(L, 1, "shares_storage");
    hr_tensor *b = hr_lua_check_tensor(L, 2, "shares_storage");
    lua_pushboolean(L, a->storage == b->storage);
    return 1;
}

/* ------------------------------------------------------------------ views */

static hr_tensor *check_result(lua_State *L, hr_tensor *r, const char *op)
{
    if (!r) hr_lua_error(L, op);
    return r;
}

static int t_narrow(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "narrow");
    int d = hr_lua_check_dim(L, 2, t->ndim, "narrow");
    lua_Integer start = luaL_checkinteger(L, 3);
    lua_Integer len = luaL_checkinteger(L, 4);
    if (t->ndim && start < 0) start += t->size[d] + 1; /* negative start counts from the end */
    hr_lua_push_tensor(L, check_result(L, hr_ag_narrow(t, d, start - 1, len), "narrow"));
    return 1;
}

static int t_select(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "select");
    int d = hr_lua_check_dim(L, 2, t->ndim, "select");
    lua_Integer i = luaL_checkinteger(L, 3);
    if (t->ndim && i < 0) i += t->size[d] + 1;
    if (i == 0) return luaL_error(L, "select: index 0 is not valid (positions are 1-based; -1 is the last)");
    hr_lua_push_tensor(L, check_result(L, hr_ag_select(t, d, i - 1), "select"));
    return 1;
}

static int t_transpose(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "transpose");
    int d0, d1;
    if (lua_isnoneornil(L, 2)) {
        if (t->ndim < 2) { /* t() of a 0-D or 1-D tensor is the tensor itself, as in PyTorch */
            lua_settop(L, 1);
            return 1;
        }
        if (t->ndim != 2) return luaL_error(L, "transpose: without dimensions only 2-D tensors, got %d-D", t->ndim);
        d0 = 0;
        d1 = 1;
    } else {
        d0 = hr_lua_check_dim(L, 2, t->ndim, "transpose");
        d1 = hr_lua_check_dim(L, 3, t->ndim, "transpose");
    }
    hr_lua_push_tensor(L, check_result(L, hr_ag_transpose(t, d0, d1), "transpose"));
    return 1;
}

static int t_permute(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "permute");
    int perm[HR_MAX_DIMS];
    int64_t dims[HR_MAX_DIMS];
    int n = hr_lua_check_shape(L, 2, dims, "permute");
    if (n != t->ndim) return luaL_error(L, "permute: got %d dimensions for a %d-D tensor", n, t->ndim);
    for (int i = 0; i < n; i++) {
        int64_t d = dims[i];
        if (d == 0 || d > n || d < -n) return luaL_error(L, "permute: dimension %d out of range", (int)d);
        perm[i] = (int)(d > 0 ? d - 1 : d + n);
    }
    hr_lua_push_tensor(L, check_result(L, hr_ag_permute(t, perm), "permute"));
    return 1;
}

static int t_view(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "view");
    int64_t size[HR_MAX_DIMS];
    int n = hr_lua_check_shape(L, 2, size, "view");
    hr_lua_push_tensor(L, check_result(L, hr_ag_view(t, n, size), "view"));
    return 1;
}

static int t_reshape(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "reshape");
    int64_t size[HR_MAX_DIMS];
    int n = hr_lua_check_shape(L, 2, size, "reshape");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_reshape(t, n, size));
    hr_lua_push_tensor(L, check_result(L, r, "reshape"));
    return 1;
}

static int t_expand(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "expand");
    int64_t size[HR_MAX_DIMS];
    int n;
    hr_tensor *other = hr_lua_to_tensor(L, 2);
    if (other) {
        n = other->ndim;
        memcpy(size, other->size, sizeof size);
    } else {
        n = hr_lua_check_shape(L, 2, size, "expand");
    }
    hr_lua_push_tensor(L, check_result(L, hr_ag_expand(t, n, size), "expand"));
    return 1;
}

static int t_squeeze(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "squeeze");
    int d = lua_isnoneornil(L, 2) ? -1 : hr_lua_check_dim(L, 2, t->ndim, "squeeze");
    hr_lua_push_tensor(L, check_result(L, hr_ag_squeeze(t, d), "squeeze"));
    return 1;
}

static int t_unsqueeze(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "unsqueeze");
    /* positions range over ndim+1 slots: 1..ndim+1 or -1..-(ndim+1) */
    lua_Integer d = luaL_checkinteger(L, 2);
    int n = t->ndim + 1;
    if (d == 0 || d > n || d < -n) return luaL_error(L, "unsqueeze: position %I out of range 1..%d (or -1..-%d)", d, n, n);
    int pos = d > 0 ? (int)d - 1 : (int)(d + n);
    hr_lua_push_tensor(L, check_result(L, hr_ag_unsqueeze(t, pos), "unsqueeze"));
    return 1;
}

static int t_contiguous(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "contiguous");
    if (hr_tensor_is_contiguous(t)) {
        lua_settop(L, 1);
        return 1;
    }
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_contiguous(t));
    hr_lua_push_tensor(L, check_result(L, r, "contiguous"));
    return 1;
}

static int t_clone(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "clone");
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_clone(t));
    hr_lua_push_tensor(L, check_result(L, r, "clone"));
    return 1;
}

/* to(dtype) / to{dtype=, device=} / type(dtype): a converted copy, or self when nothing changes. */
static int t_to(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "to");
    hr_dtype dt = t->dtype;
    hr_device dev = hr_tensor_device(t);
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *s = lua_tostring(L, 2);
        if (hr_dtype_from_name(s, &dt) != 0 && hr_device_parse(s, &dev) != 0)
            return luaL_error(L, "to: '%s' is neither a dtype nor a device", s);
    } else {
        hr_lua_opt_dtype_device(L, 2, &dt, &dev, false, "to");
    }
    if (!hr_device_eq(dev, hr_tensor_device(t))) { /* a differentiable move (and cast) between devices */
        hr_tensor *r;
        HR_LUA_RETRY(L, r, hr_ag_to(t, dt, dev));
        hr_lua_push_tensor(L, check_result(L, r, "to"));
        return 1;
    }
    if (dt == t->dtype) {
        lua_settop(L, 1);
        return 1;
    }
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_cast(t, dt));
    hr_lua_push_tensor(L, check_result(L, r, "to"));
    return 1;
}

#define CAST_METHOD(NAME, DT)                                           \
    static int t_##NAME(lua_State *L)                                   \
    {                                                                   \
        hr_tensor *t = hr_lua_check_tensor(L, 1, #NAME);                \
        if (t->dtype == (DT)) {                                         \
            lua_settop(L, 1);                                           \
            return 1;                                                   \
        }                                                               \
        hr_tensor *r;                                                   \
        HR_LUA_RETRY(L, r, hr_ag_cast(t, (DT)));                           \
        hr_lua_push_tensor(L, check_result(L, r, #NAME));               \
        return 1;                                                       \
    }
CAST_METHOD(float, HR_F32)
CAST_METHOD(double, HR_F64)
CAST_METHOD(half, HR_F16)
CAST_METHOD(bfloat16, HR_BF16)
CAST_METHOD(long, HR_I64)
CAST_METHOD(int, HR_I32)
CAST_METHOD(byte, HR_U8)
CAST_METHOD(bool, HR_BOOL)

static int t_copy_(lua_State *L)
{
    hr_tensor *dst = hr_lua_check_tensor(L, 1, "copy_");
    hr_tensor *src = hr_lua_check_tensor(L, 2, "copy_");
    hr_lua_check_inplace(L, dst, "copy_");
    hr_lua_check_source_detached(L, src, "copy_");
    if (hr_copy_(dst, src)) hr_lua_error(L, "copy_");
    lua_settop(L, 1);
    return 1;
}

static int t_item(lua_State *L);

static int t_fill_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "fill_");
    hr_lua_check_inplace(L, t, "fill_");
    if (luaL_testudata(L, 2, HR_TENSOR_MT)) { /* a one-element tensor gives its value, as PyTorch's fill_
                                                takes a 0-dim tensor */
        hr_tensor *v = hr_lua_check_tensor(L, 2, "fill_");
        hr_lua_check_source_detached(L, v, "fill_");
        if (hr_tensor_numel(v) != 1)
            return luaL_error(L, "fill_: the value must be a number or a one-element tensor, got %I elements",
                              (lua_Integer)hr_tensor_numel(v));
        /* t_item itself, not v.item: a method replaced in Lua could free t */
        lua_pushcfunction(L, t_item);
        lua_pushvalue(L, 2);
        lua_call(L, 1, 1);
        lua_replace(L, 2);
    }
    hr_lua_check_fits(L, 2, t->dtype, "fill_");
    int rc;
    if (lua_isinteger(L, 2)) {
        rc = hr_fill_i64_(t, lua_tointeger(L, 2)); /* exact for 64-bit integers */
    } else {
        double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
        rc = hr_fill_(t, v);
    }
    if (rc) hr_lua_error(L, "fill_");
    lua_settop(L, 1);
    return 1;
}

static int t_zero_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "zero_");
    hr_lua_check_inplace(L, t, "zero_");
    if (hr_fill_(t, 0)) hr_lua_error(L, "zero_");
    lua_settop(L, 1);
    return 1;
}

/* ------------------------------------------------------------------ element access */

/* A contiguous host copy of a device tensor (a new reference), or a Lua error. */
static hr_tensor *to_host(lua_State *L, const hr_tensor *t, const char *op)
{
    hr_tensor *h;
    HR_LUA_RETRY(L, h, hr_tensor_empty(t->ndim, t->size, t->dtype, hr_cpu()));
    if (!h) hr_lua_error(L, op);
    if (hr_copy_(h, t)) {
        hr_tensor_release(h);
        hr_lua_error(L, op);
    }
    return h;
}

static void push_element(lua_State *L, const char *p, hr_dtype dt)
{
    if (dt == HR_BOOL) lua_pushboolean(L, *(const uint8_t *)p != 0);
    else if (hr_dtype_is_int(dt)) lua_pushinteger(L, hr_load_i64(p, dt));
    else lua_pushnumber(L, hr_load_f64(p, dt));
}

static int t_item(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "item");
    if (hr_tensor_numel(t) != 1) {
        char buf[160];
        return luaL_error(L, "item: only one-element tensors can be converted to a number, got size %s",
                          hr_shape_str(t->ndim, t->size, buf, sizeof buf));
    }
    if (hr_tensor_device(t).type != HR_CPU) { /* read through a host copy */
        hr_tensor *mirror = hr_mirror_view(t);
        if (!mirror) hr_lua_collect_while_waiting(L); /* the read waits for the device (a loss after backward) */
        hr_tensor_release(mirror);
        hr_tensor *h = to_host(L, t, "item");
        push_element(L, hr_tensor_data(h), h->dtype);
        hr_tensor_release(h);
        return 1;
    }
    push_element(L, hr_tensor_data(t), t->dtype);
    return 1;
}

static void push_nested(lua_State *L, const hr_tensor *t, int depth, const char *p)
{
    size_t el = hr_dtype_size(t->dtype);
    if (depth == t->ndim) {
        push_element(L, p, t->dtype);
        return;
    }
    luaL_checkstack(L, 4, "totable");
    lua_createtable(L, (int)t->size[depth], 0);
    for (int64_t i = 0; i < t->size[depth]; i++) {
        push_nested(L, t, depth + 1, p + (int64_t)el * i * t->stride[depth]);
        lua_rawseti(L, -2, i + 1);
    }
}

static int push_nested_protected(lua_State *L)
{
    const hr_tensor *h = lua_touserdata(L, 1);
    push_nested(L, h, 0, hr_tensor_data(h));
    return 1;
}

/* Nested Lua tables of the values (numbers, integers for integer dtypes, booleans for bool). */
static int t_totable(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "totable");
    if (hr_tensor_device(t).type != HR_CPU) {
        hr_tensor *h = to_host(L, t, "totable");
        lua_pushcfunction(L, push_nested_protected); /* h must be released even if a table allocation fails */
        lua_pushlightuserdata(L, h);
        int rc = lua_pcall(L, 1, 1, 0);
        hr_tensor_release(h);
        if (rc != LUA_OK) return lua_error(L);
        return 1;
    }
    push_nested(L, t, 0, hr_tensor_data(t));
    return 1;
}

/* t[i] is t:select(1, i); other keys look up methods. */
static int t_index(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TNUMBER) {
        hr_tensor *t = hr_lua_check_tensor(L, 1, "index");
        if (!lua_isinteger(L, 2)) return luaL_error(L, "index: position must be an integer, got %f", lua_tonumber(L, 2));
        if (t->ndim == 0) return luaL_error(L, "index: cannot index a 0-dimensional tensor (use :item())");
        lua_Integer i = lua_tointeger(L, 2);
        /* the position just past the end is nil, as a Lua sequence's, so that ipairs(t) stops there;
         * any other position out of range is an error */
        if (i == (lua_Integer)t->size[0] + 1) {
            lua_pushnil(L);
            return 1;
        }
        if (i < 0) i += t->size[0] + 1;
        if (i < 1 || i > t->size[0])
            return luaL_error(L, "index: position %I out of range for dimension 1 of size %I", lua_tointeger(L, 2),
                              (lua_Integer)t->size[0]);
        hr_lua_push_tensor(L, check_result(L, hr_ag_select(t, 0, i - 1), "index"));
        return 1;
    }
    if (lua_type(L, 2) != LUA_TSTRING)
        return luaL_error(L, "index: a key must be an integer position or a method name, got %s%s", luaL_typename(L, 2),
                          luaL_testudata(L, 2, HR_TENSOR_MT) ? " (index with a tensor through index_select, "
                                                               "masked_select or gather)"
                                                             : "");
    if (lua_type(L, 2) == LUA_TSTRING) {
        hr_tensor_box *box = luaL_checkudata(L, 1, HR_TENSOR_MT);
        const char *key = lua_tostring(L, 2);
        if (box->t && box->t->storage) {
            if (hr_lua_autograd_field(L, box->t, key)) return 1;
        } else if (hr_lua_is_autograd_field(key)) {
            /* a freed tensor's grad/requires_grad/... is an error, as any other use of it (nil would
             * let an optimizer skip a freed parameter silently) */
            hr_lua_check_tensor(L, 1, key); /* raises, naming what was freed */
        }
    }
    lua_pushvalue(L, 2);
    lua_gettable(L, lua_upvalueindex(1));
    return 1;
}

/* t[i] = number | tensor */
static int t_newindex(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "index assignment");
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *key = lua_tostring(L, 2);
        if (hr_lua_autograd_set_field(L, t, key, 3)) return 0;
        return luaL_error(L, "index assignment: tensors have no settable field '%s'", key);
    }
    if (!lua_isinteger(L, 2))
        return luaL_error(L, "index assignment: position must be an integer, got %s%s", luaL_typename(L, 2),
                          luaL_testudata(L, 2, HR_TENSOR_MT) ? " (assign through a tensor with masked_fill_, "
                                                               "index_copy_ or scatter_)"
                                                             : "");
    hr_lua_check_inplace(L, t, "index assignment");
    if (t->ndim == 0) return luaL_error(L, "index assignment: cannot index a 0-dimensional tensor");
    lua_Integer i = lua_tointeger(L, 2);
    if (i < 0) i += t->size[0] + 1;
    if (i < 1 || i > t->size[0])
        return luaL_error(L, "index assignment: position %I out of range for dimension 1 of size %I",
                          lua_tointeger(L, 2), (lua_Integer)t->size[0]);
    hr_lua_check_fits(L, 3, t->dtype, "index assignment"); /* as fill_: no value wrapped or saturated */
    hr_lua_check_source_detached(L, hr_lua_to_tensor(L, 3), "index assignment");
    hr_tensor *row = hr_view_select(t, 0, i - 1);
    if (!row) return hr_lua_error(L, "index assignment");
    int rc;
    hr_tensor *src = hr_lua_to_tensor(L, 3);
    if (src) rc = hr_copy_(row, src);
    else if (lua_isboolean(L, 3)) rc = hr_fill_(row, lua_toboolean(L, 3));
    else if (lua_isinteger(L, 3)) rc = hr_fill_i64_(row, lua_tointeger(L, 3)); /* exact, as fill_ */
    else if (lua_type(L, 3) == LUA_TNUMBER) rc = hr_fill_(row, lua_tonumber(L, 3));
    else {
        hr_tensor_release(row);
        return luaL_error(L, "index assignment: value must be a number or a tensor, got %s", luaL_typename(L, 3));
    }
    hr_tensor_release(row);
    if (rc) return hr_lua_error(L, "index assignment");
    return 0;
}

/* ------------------------------------------------------------------ registration */

static const luaL_Reg module_functions[] = {
    {"tensor", l_tensor},
    {"empty", l_empty},
    {"zeros", l_zeros},
    {"ones", l_ones},
    {"full", l_full},
    {"arange", l_arange},
    {"eye", l_eye},
    {"is_tensor", l_is_tensor},
    {"live_bytes", l_live_bytes},
    {"memory_stats", l_memory_stats},
    {"reset_peak_memory_stats", l_reset_peak_memory_stats},
    {"empty_cache", l_empty_cache},
    {"set_cache_limit", l_set_cache_limit},
    {"cached_bytes", l_cached_bytes},
    {"set_num_threads", l_set_num_threads},
    {"get_num_threads", l_get_num_threads},
    {NULL, NULL},
};

static const luaL_Reg tensor_methods[] = {
    {"free", tensor_free},
    {"is_freed", tensor_is_freed},
    {"size", t_size},
    {"shape", t_size},
    {"stride", t_stride},
    {"dim", t_dim},
    {"numel", t_numel},
    {"nelement", t_numel},
    {"dtype", t_dtype},
    {"device", t_device},
    {"is_contiguous", t_is_contiguous},
    {"storage_offset", t_storage_offset},
    {"element_size", t_element_size},
    {"shares_storage", t_shares_storage},
    {"narrow", t_narrow},
    {"select", t_select},
    {"transpose", t_transpose},
    {"t", t_transpose},
    {"permute", t_permute},
    {"view", t_view},
    {"reshape", t_reshape},
    {"expand", t_expand},
    {"expand_as", t_expand},
    {"squeeze", t_squeeze},
    {"unsqueeze", t_unsqueeze},
    {"contiguous", t_contiguous},
    {"clone", t_clone},
    {"to", t_to},
    {"type", t_to},
    {"float", t_float},
    {"double", t_double},
    {"half", t_half},
    {"bfloat16", t_bfloat16},
    {"long", t_long},
    {"int", t_int},
    {"byte", t_byte},
    {"bool", t_bool},
    {"copy_", t_copy_},
    {"fill_", t_fill_},
    {"zero_", t_zero_},
    {"item", t_item},
    {"totable", t_totable},
    {NULL, NULL},
};

void hr_lua_open_tensor(lua_State *L, int module_idx, int methods_idx)
{
    hr_lua_register(L, module_idx, methods_idx, module_functions, tensor_methods);

    /* metatable entries */
    luaL_getmetatable(L, HR_TENSOR_MT);
    lua_pushcfunction(L, tensor_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, tensor_free);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, t_len);
    lua_setfield(L, -2, "__len");
    lua_pushvalue(L, methods_idx);
    lua_pushcclosure(L, t_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, t_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "hero.Tensor");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}
