/* l_common.c — shared binding helpers: tensor userdata boxing, argument parsing, errors, GC accounting. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "hr_autograd.h"
#include "hr_cuda.h"
#include "l_common.h"

static bool hr_grad_enabled_flag(void) { return hr_grad_enabled(); }

hr_tensor *hr_lua_to_tensor(lua_State *L, int idx)
{
    hr_tensor_box *box = luaL_testudata(L, idx, HR_TENSOR_MT);
    return box ? box->t : NULL;
}

hr_tensor *hr_lua_check_tensor(lua_State *L, int idx, const char *op)
{
    hr_tensor_box *box = luaL_testudata(L, idx, HR_TENSOR_MT);
    if (!box) {
        luaL_error(L, "%s: argument #%d: expected a hero.Tensor, got %s", op, idx, luaL_typename(L, idx));
        return NULL;
    }
    if (!box->t || !box->t->storage) {
        luaL_error(L, "%s: argument #%d: tensor was freed", op, idx);
        return NULL;
    }
    return box->t;
}

bool hr_lua_in_finalizer(lua_State *L)
{
#if LUA_VERSION_RELEASE_NUM >= 50404
    /* Lua 5.4.4 and later refuse every lua_gc request (-1) while a finalizer runs */
    return lua_gc(L, LUA_GCISRUNNING) < 0;
#else
    /* earlier 5.4 releases stop the collector while a finalizer runs; a collector stopped by the
     * program defers the releases too, which is only later, never unsafe */
    return lua_gc(L, LUA_GCISRUNNING) == 0;
#endif
}

int hr_lua_error(lua_State *L, const char *op)
{
    const char *msg = hr_last_error();
    /* Core messages usually start with the op's name already; avoid "add: add: ...". */
    size_t n = strlen(op);
    if (strncmp(msg, op, n) == 0 && msg[n] == ':') return luaL_error(L, "%s", msg);
    return luaL_error(L, "%s: %s", op, msg);
}

/* Bytes allocated since the last full collection, and the limit that triggers the next one. */
#define HR_GC_STATE_KEY "hero.gc_state"
typedef struct {
    size_t since_collect;
    size_t threshold;
    size_t since_collect_device; /* new bytes of CUDA storages, counted apart: their own threshold */
    size_t threshold_device, hard_threshold_device;
    int device_at_collect;       /* the device whose new bytes were counted last (-1: none yet) */
    int64_t mallocs_at_collect;  /* and its cudaMalloc count then */
    /* what the collections cost: profile_ops reports it (core._gc_stats) */
    uint64_t collections, device_collections, pending_collections, idle_collections;
    double seconds;
    /* the device limits as fractions of the allocated bytes (hr_lua_set_device_collect_fractions) */
    double soft_fraction, hard_fraction;
} gc_state;

static gc_state *get_gc_state(lua_State *L)
{
    gc_state *st;
    if (lua_getfield(L, LUA_REGISTRYINDEX, HR_GC_STATE_KEY) == LUA_TUSERDATA) {
        st = lua_touserdata(L, -1);
        lua_pop(L, 1);
        return st;
    }
    lua_pop(L, 1);
    st = lua_newuserdatauv(L, sizeof *st, 0);
    st->since_collect = 0;
    st->threshold = (size_t)64 << 20;
    st->since_collect_device = 0;
    st->threshold_device = (size_t)1 << 30;
    st->hard_threshold_device = (size_t)2 << 30;
    st->device_at_collect = -1;
    st->mallocs_at_collect = 0;
    st->collections = st->device_collections = st->pending_collections = st->idle_collections = 0;
    st->seconds = 0;
    st->soft_fraction = 0.25;
    st->hard_fraction = 0.5;
    lua_setfield(L, LUA_REGISTRYINDEX, HR_GC_STATE_KEY);
    return st;
}

_Thread_local uint64_t hr_lua_tensors_finalized;

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* After a collection, the device limits (account_device) from what the device's allocator has
 * handed out now, and its cudaMalloc count to tell new requests to the driver by. */
static void refresh_device_limits(gc_state *st)
{
    hr_cuda_memstats ms;
    if (st->device_at_collect < 0 || hr_cuda_memory_stats(st->device_at_collect, &ms) != 0) {
        hr_clear_error();
        memset(&ms, 0, sizeof ms);
    }
    const size_t gib = (size_t)1 << 30;
    size_t soft = (size_t)(st->soft_fraction * (double)ms.allocated);
    size_t hard = (size_t)(st->hard_fraction * (double)ms.allocated);
    st->threshold_device = soft > gib ? soft : gib;
    st->hard_threshold_device = hard > 2 * gib ? hard : 2 * gib;
    st->mallocs_at_collect = ms.num_cuda_mallocs;
}

/* A full collection; the next one comes after an eighth of the live tensor bytes (at least
 * 64 MiB, at most 256 MiB) have been allocated, or after the device limits. A model's Lua heap is
 * small: a collection takes about a millisecond. */
static void collect(lua_State *L, gc_state *st)
{
    double t0 = monotonic_seconds();
    lua_gc(L, LUA_GCCOLLECT);
    st->collections++;
    st->seconds += monotonic_seconds() - t0;
    st->since_collect = 0;
    st->since_collect_device = 0;
    size_t eighth = hr_live_bytes() / 8;
    const size_t lo = (size_t)64 << 20, hi = (size_t)256 << 20;
    st->threshold = eighth < lo ? lo : eighth > hi ? hi : eighth;
    if (st->device_at_collect >= 0) refresh_device_limits(st);
}

void hr_lua_account(lua_State *L, size_t nbytes)
{
    gc_state *st = get_gc_state(L);
    st->since_collect += nbytes;
    /* Lua cannot see tensor bytes, so it would let garbage tensors pile up: collect once enough
     * new tensor bytes have been allocated. The garbage (last step's gradients, a forward pass's
     * temporaries) then goes back to the allocator's cache in time to serve the next requests of
     * the same sizes instead of adding to the footprint. */
    if (st->since_collect > st->threshold)
        collect(L, st);
    else if (nbytes >= 1024)
        lua_gc(L, LUA_GCSTEP, (int)(nbytes >> 10 > 1 << 20 ? 1 << 20 : nbytes >> 10));
}

/* Device memory. Lua does not see device bytes, so garbage tensors would hold their blocks until
 * the device ran out; hero collects once enough new CUDA storages were made since the last
 * collection. How much is enough weighs the collection's cost (a full collection, about a
 * millisecond of host time with a model loaded; a GPU step of the bench model made five of them
 * and the device waited for the host) against the footprint:
 *  - a soft limit, a quarter of what the allocator has handed out (at least 1 GiB): past it, a
 *    collection as soon as the garbage costs device memory, that is when the allocator's cache
 *    is running low (less than the soft limit left in it) or has had to ask the driver for a
 *    block (cudaMalloc) since the last collection;
 *  - a hard limit, half of what the allocator has handed out (at least 2 GiB): past it, a
 *    collection in any case, so that garbage never holds more than about that.
 * While the cache still holds the blocks that the last steps freed, a step's garbage only reuses
 * them and the collections wait for the hard limit. Backward collects first (hr_lua_collect_pending),
 * so that the forward pass's tensors held only by dead Lua values are freed as backward goes. */
static void account_device(lua_State *L, size_t nbytes, int dev)
{
    gc_state *st = get_gc_state(L);
    st->since_collect_device += nbytes;
    if (st->since_collect_device <= st->threshold_device) return;
    hr_cuda_memstats ms;
    bool known = hr_cuda_memory_stats(dev, &ms) == 0;
    if (known && dev == st->device_at_collect && st->since_collect_device <= st->hard_threshold_device &&
        ms.num_cuda_mallocs == st->mallocs_at_collect && ms.cached >= st->threshold_device)
        return;
    st->device_collections++;
    st->device_at_collect = dev;
    collect(L, st);
}

void hr_lua_note_garbage(lua_State *L, size_t nbytes) { get_gc_state(L)->since_collect += nbytes; }

void hr_lua_collect_pending(lua_State *L)
{
    gc_state *st = get_gc_state(L);
    /* host bytes since the last collection, or device bytes (each step of a GPU model makes GiBs) */
    if (st->since_collect >= ((size_t)1 << 20) || st->since_collect_device >= ((size_t)64 << 20)) {
        st->pending_collections++;
        collect(L, st);
    }
}

void hr_lua_collect_while_waiting(lua_State *L)
{
    gc_state *st = get_gc_state(L);
    if (st->since_collect_device >= ((size_t)256 << 20)) {
        st->idle_collections++;
        collect(L, st);
    }
}

void hr_lua_set_device_collect_fractions(lua_State *L, double soft, double hard)
{
    gc_state *st = get_gc_state(L);
    st->soft_fraction = soft;
    st->hard_fraction = hard;
}

void hr_lua_gc_stats(lua_State *L, hr_lua_gc_counts *out)
{
    gc_state *st = get_gc_state(L);
    out->collections = st->collections;
    out->device_collections = st->device_collections;
    out->pending_collections = st->pending_collections;
    out->idle_collections = st->idle_collections;
    out->seconds = st->seconds;
    out->finalized = hr_lua_tensors_finalized;
}

void hr_lua_push_tensor(lua_State *L, hr_tensor *t)
{
    if (!t) {
        hr_lua_error(L, "hero");
        return;
    }
    hr_tensor_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->t = NULL;
    box->deferred = NULL;
    luaL_setmetatable(L, HR_TENSOR_MT);
    box->t = t;
    /* Only fresh storages are new bytes; views share theirs. */
    if (t->storage && t->storage->refcount == 1) {
        if (t->storage->kind == HR_STORAGE_HEAP) hr_lua_account(L, t->storage->nbytes);
        else if (t->storage->device.type == HR_CUDA) account_device(L, t->storage->nbytes, t->storage->device.index);
    }
}

int hr_lua_check_dim(lua_State *L, int idx, int ndim, const char *op)
{
    lua_Integer d = luaL_checkinteger(L, idx);
    int n = ndim > 0 ? ndim : 1;
    if (d == 0 || d > n || d < -n)
        return luaL_error(L, "%s: dimension %I out of range (the tensor has %d dimension%s; use 1..%d or -1..-%d)", op,
                          d, ndim, ndim == 1 ? "" : "s", n, n);
    return d > 0 ? (int)d - 1 : (int)(d + n);
}

void hr_lua_check_list(lua_State *L, int idx, const char *op, const char *what)
{
    idx = lua_absindex(L, idx);
    lua_Unsigned len = lua_rawlen(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) { /* raw traversal: no metamethod runs */
        lua_pop(L, 1);
        lua_Integer k = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
        if (k < 1 || (lua_Unsigned)k > len) {
            const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
            if (name)
                luaL_error(L, "%s: %s must be a list such as {1, 2}, got a table with key '%s' (options by name such "
                              "as {dim = 2} are not taken: pass the values as arguments)",
                           op, what, name);
            luaL_error(L, "%s: %s must be a list such as {1, 2} (keys 1..n only)", op, what);
        }
    }
}

int hr_lua_check_shape(lua_State *L, int idx, int64_t *size, const char *op)
{
    int n = 0;
    if (lua_istable(L, idx)) {
        hr_lua_check_list(L, idx, op, "the list of sizes or dimensions");
        /* raw reads: no metamethod (Lua code) runs while the caller holds tensor pointers */
        lua_Unsigned len = lua_rawlen(L, idx);
        if (len > HR_MAX_DIMS) return luaL_error(L, "%s: at most %d dimensions, got %d", op, HR_MAX_DIMS, (int)len);
        n = (int)len;
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            int isnum;
            lua_Integer v = lua_tointegerx(L, -1, &isnum);
            if (!isnum) return luaL_error(L, "%s: size entry %d is not an integer (%s)", op, i, luaL_typename(L, -1));
            size[i - 1] = v;
            lua_pop(L, 1);
        }
        return n;
    }
    int top = lua_gettop(L);
    int i = idx;
    for (; i <= top; i++) {
        if (lua_type(L, i) != LUA_TNUMBER) break;
        if (n >= HR_MAX_DIMS) return luaL_error(L, "%s: at most %d dimensions", op, HR_MAX_DIMS);
        int isnum;
        lua_Integer v = lua_tointegerx(L, i, &isnum);
        if (!isnum) return luaL_error(L, "%s: size %d is not an integer", op, n + 1);
        size[n++] = v;
    }
    /* the sizes end at an options table or at the end: anything else (ones(2, 3, "f64"), view(6, "x"))
     * is a mistake that would otherwise be dropped silently */
    if (i <= top && !lua_istable(L, i) && !lua_isnil(L, i))
        return luaL_error(L, "%s: argument #%d: expected a size (integer) or an options table, got %s", op, i,
                          luaL_typename(L, i));
    return n;
}

hr_dtype hr_lua_opt_dtype(lua_State *L, int idx, hr_dtype def, const char *op)
{
    if (lua_isnoneornil(L, idx)) return def;
    const char *name = luaL_checkstring(L, idx);
    hr_dtype dt;
    if (hr_dtype_from_name(name, &dt)) hr_lua_error(L, op);
    return dt;
}

void hr_lua_check_fits(lua_State *L, int idx, hr_dtype dt, const char *op)
{
    if (lua_type(L, idx) != LUA_TNUMBER || dt == HR_BOOL || dt == HR_F64) return;
    double lo, hi; /* the dtype's range */
    switch (dt) {
    case HR_U8: lo = -255, hi = 255; break;
    case HR_I32: lo = -2147483648.0, hi = 2147483647.0; break;
    case HR_I64: lo = -9223372036854775808.0, hi = 9223372036854775807.0; break;
    case HR_F16: lo = -65504.0, hi = 65504.0; break;
    case HR_BF16: lo = -3.38953139e38, hi = 3.38953139e38; break;
    default: lo = -3.40282347e38, hi = 3.40282347e38; break; /* f32 */
    }
    bool fits;
    if (lua_isinteger(L, idx)) {
        lua_Integer i = lua_tointeger(L, idx);
        fits = dt == HR_I64 || (dt == HR_U8 ? i >= -255 && i <= 255 : (double)i >= lo && (double)i <= hi);
    } else {
        double d = lua_tonumber(L, idx);
        if (hr_dtype_is_float(dt)) fits = isnan(d) || isinf(d) || (d >= lo && d <= hi);
        else fits = !isnan(d) && d >= lo && d < (dt == HR_I64 ? 9223372036854775808.0 : hi + 1);
    }
    if (!fits) {
        char num[64];
        if (lua_isinteger(L, idx)) snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
        else snprintf(num, sizeof num, "%.17g", (double)lua_tonumber(L, idx));
        luaL_error(L, "%s: value %s cannot be converted to %s without overflow", op, num, hr_dtype_name(dt));
    }
}

int hr_lua_opts_arg(lua_State *L, int idx, const char *op)
{
    if (lua_istable(L, idx)) return idx;
    if (lua_isnoneornil(L, idx)) return 0;
    return luaL_error(L, "%s: argument #%d must be an options table such as {dtype = \"f64\"}, got %s%s", op, idx,
                      luaL_typename(L, idx), lua_type(L, idx) == LUA_TSTRING ? " (write {dtype = ...})" : "");
}

void hr_lua_opt_dtype_device(lua_State *L, int idx, hr_dtype *dt, hr_device *dev, bool with_generator, const char *op)
{
    if (idx == 0 || !lua_istable(L, idx)) return;
    static const char *const plain[] = {"dtype", "device", NULL};
    static const char *const random[] = {"dtype", "device", "generator", NULL};
    hr_lua_options(L, idx, with_generator ? random : plain,
                   with_generator ? "dtype, device, generator" : "dtype, device", op);
    if (hr_lua_rawfield(L, idx, "dtype") != LUA_TNIL) {
        const char *name = lua_tostring(L, -1);
        if (!name) luaL_error(L, "%s: option dtype must be a string", op);
        if (hr_dtype_from_name(name, dt)) hr_lua_error(L, op);
    }
    lua_pop(L, 1);
    if (hr_lua_rawfield(L, idx, "device") != LUA_TNIL) {
        const char *name = lua_tostring(L, -1);
        if (!name) luaL_error(L, "%s: option device must be a string", op);
        if (hr_device_parse(name, dev)) hr_lua_error(L, op);
    }
    lua_pop(L, 1);
}

lua_Integer hr_lua_opt_field_integer(lua_State *L, int idx, const char *name, lua_Integer def, const char *op)
{
    if (hr_lua_rawfield(L, idx, name) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "%s: option %s must be an integer, got %s", op, name,
                   lua_type(L, -1) == LUA_TNUMBER ? "a non-integral number" : luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

double hr_lua_opt_field_number(lua_State *L, int idx, const char *name, double def, const char *op)
{
    if (hr_lua_rawfield(L, idx, name) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "%s: option %s must be a number, got %s", op, name, luaL_typename(L, -1));
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

int hr_lua_opt_field_option(lua_State *L, int idx, const char *name, int def, const char *const names[],
                            const char *op)
{
    if (hr_lua_rawfield(L, idx, name) == LUA_TNIL) {
        lua_pop(L, 1);
        return def;
    }
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    for (int i = 0; v && names[i]; i++) {
        if (strcmp(v, names[i]) == 0) {
            lua_pop(L, 1);
            return i;
        }
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; names[i]; i++) {
        if (i) luaL_addstring(&b, names[i + 1] ? ", " : " or ");
        luaL_addstring(&b, names[i]);
    }
    luaL_pushresult(&b);
    if (v) luaL_error(L, "%s: option %s must be %s, got '%s'", op, name, lua_tostring(L, -1), v);
    return luaL_error(L, "%s: option %s must be %s, got a %s", op, name, lua_tostring(L, -1), luaL_typename(L, -2));
}

const char *hr_lua_check_path(lua_State *L, int idx, const char *op)
{
    /* a number would be taken for the file named by its digits ("5" in the working directory) */
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_error(L, "%s: argument #%d: expected a path string, got %s", op, idx, luaL_typename(L, idx));
    size_t len;
    const char *p = luaL_checklstring(L, idx, &len);
    const char *nul = memchr(p, '\0', len);
    if (nul) luaL_error(L, "%s: the path holds a NUL byte (at byte %d), which would cut it short", op, (int)(nul - p) + 1);
    return p;
}

int hr_lua_options(lua_State *L, int idx, const char *const names[], const char *list, const char *op)
{
    if (lua_isnoneornil(L, idx)) return 0;
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: argument #%d must be a table of options (%s), got %s", op, idx, list, luaL_typename(L, idx));
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        bool known = false;
        for (int i = 0; k && names[i]; i++) known = known || strcmp(k, names[i]) == 0;
        if (!known) luaL_error(L, "%s: unknown option '%s' (%s)", op, k ? k : luaL_typename(L, -2), list);
        lua_pop(L, 1);
    }
    return idx;
}

int hr_lua_rawfield(lua_State *L, int idx, const char *name)
{
    idx = lua_absindex(L, idx);
    lua_pushstring(L, name);
    return lua_rawget(L, idx);
}

void hr_lua_check_writable(lua_State *L, const hr_tensor *t, const char *op)
{
    /* a stride-0 dimension of size > 1 names some elements twice: a write would race or add up
     * (PyTorch refuses it too) */
    for (int i = 0; i < t->ndim; i++)
        if (t->stride[i] == 0 && t->size[i] > 1) {
            char buf[160];
            luaL_error(L, "%s: cannot write in place into %s: it is an expanded view whose elements overlap "
                          "(make it contiguous first)",
                       op, hr_tensor_desc(t, buf, sizeof buf));
        }
}

/* The leaf requiring grad whose memory the view t shares, found up the chain of first inputs of
 * t's graph (views record a node whose input is what they view), or NULL. */
static const hr_tensor *viewed_leaf(const hr_tensor *t)
{
    const hr_node *n = t->grad_fn;
    for (int depth = 0; n && n->ninputs > 0 && depth < 64; depth++) {
        const hr_tensor *leaf = n->next[0].leaf;
        if (leaf) return leaf->requires_grad && leaf->storage && leaf->storage == t->storage ? leaf : NULL;
        n = n->next[0].node;
    }
    return NULL;
}

void hr_lua_check_inplace(lua_State *L, hr_tensor *t, const char *op)
{
    if (t->requires_grad && hr_grad_enabled_flag()) {
        if (!t->grad_fn)
            luaL_error(L, "%s: a leaf tensor that requires grad cannot be modified in place "
                          "(do it inside hero.no_grad or on a detached tensor)", op);
        /* a view of such a leaf: the write would change the leaf behind autograd's back (PyTorch
         * refuses it too) */
        if (viewed_leaf(t))
            luaL_error(L, "%s: a view of a leaf tensor that requires grad cannot be modified in place "
                          "(do it inside hero.no_grad or on a detached tensor)", op);
        /* any other tensor of the graph: this write is not recorded, so the gradients through it
         * would be those of the values it replaced */
        luaL_error(L, "%s: in-place writes are not recorded for autograd and this tensor requires grad "
                      "(use an out-of-place op such as masked_fill or where, or run it inside hero.no_grad)", op);
    }
    hr_lua_check_writable(L, t, op);
}

void hr_lua_check_source_detached(lua_State *L, hr_tensor *src, const char *op)
{
    if (src && hr_grad_enabled_flag() && hr_requires_grad(src))
        luaL_error(L, "%s: the value written requires grad, and in-place writes are not recorded for autograd, so "
                      "its gradient would be lost (build the result with an op such as where, cat or index_copy, "
                      "or detach() the value)", op);
}

void hr_lua_check_graph_inplace(lua_State *L, hr_tensor *self, hr_tensor *other, const char *op)
{
    hr_tensor *in[2] = {self, other};
    if (hr_should_record(other ? 2 : 1, in))
        luaL_error(L, "%s: in-place ops are not recorded for autograd and a tensor here requires grad "
                      "(use the out-of-place form, or run it inside hero.no_grad)", op);
}

void hr_lua_register(lua_State *L, int module_idx, int methods_idx, const luaL_Reg *module_fns,
                     const luaL_Reg *method_fns)
{
    if (module_fns) {
        lua_pushvalue(L, module_idx);
        luaL_setfuncs(L, module_fns, 0);
        lua_pop(L, 1);
    }
    if (method_fns) {
        lua_pushvalue(L, methods_idx);
        luaL_setfuncs(L, method_fns, 0);
        lua_pop(L, 1);
    }
}
