/* l_cuda.c — bindings of the CUDA backend: the hero.core.cuda table (device queries, memory
 * statistics, synchronisation), all_finite (the loss scaler's check) and the device methods
 * t:cuda([index]), t:cpu(), t:is_cuda(). Every function works in builds without the backend and on
 * machines without a GPU (available() is then false and moving a tensor to the GPU is an error). */
#include <math.h>
#include <string.h>

#include "hr_cuda.h"
#include "l_common.h"

static int c_available(lua_State *L)
{
    lua_pushboolean(L, hr_cuda_device_count() > 0);
    return 1;
}

static int c_compiled(lua_State *L)
{
    lua_pushboolean(L, hr_cuda_compiled());
    return 1;
}

static int c_device_count(lua_State *L)
{
    lua_pushinteger(L, hr_cuda_device_count());
    return 1;
}

/* Device ordinals are 0-based, as in "cuda:0". */
static int opt_device(lua_State *L, int idx, const char *op)
{
    if (lua_isnoneornil(L, idx)) return 0;
    if (lua_type(L, idx) == LUA_TSTRING) {
        hr_device d;
        if (hr_device_parse(lua_tostring(L, idx), &d) || d.type != HR_CUDA) {
            luaL_error(L, "%s: expected a CUDA device ordinal or 'cuda:N', got '%s'", op, lua_tostring(L, idx));
            return 0;
        }
        return d.index;
    }
    lua_Integer i = luaL_checkinteger(L, idx);
    if (i < 0 || i > 1024) luaL_error(L, "%s: device ordinal %d out of range", op, (int)i);
    return (int)i;
}

static int c_device_name(lua_State *L)
{
    int dev = opt_device(L, 1, "device_name");
    char buf[256];
    if (hr_cuda_device_name(dev, buf, sizeof buf)) return hr_lua_error(L, "cuda.device_name");
    lua_pushstring(L, buf);
    return 1;
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

/* {allocated, reserved, peak, cached, num_allocs, num_cuda_mallocs, num_oom_retries, free, total} in bytes */
static int c_memory_stats(lua_State *L)
{
    int dev = opt_device(L, 1, "memory_stats");
    hr_cuda_memstats s;
    if (hr_cuda_memory_stats(dev, &s)) return hr_lua_error(L, "cuda.memory_stats");
    size_t fr = 0, tot = 0;
    if (hr_cuda_mem_info(dev, &fr, &tot)) return hr_lua_error(L, "cuda.memory_stats");
    lua_createtable(L, 0, 9);
    set_int(L, "allocated", (lua_Integer)s.allocated);
    set_int(L, "reserved", (lua_Integer)s.reserved);
    set_int(L, "peak", (lua_Integer)s.peak);
    set_int(L, "cached", (lua_Integer)s.cached);
    set_int(L, "num_allocs", s.num_allocs);
    set_int(L, "num_cuda_mallocs", s.num_cuda_mallocs);
    set_int(L, "num_oom_retries", s.num_oom_retries);
    set_int(L, "free", (lua_Integer)fr);
    set_int(L, "total", (lua_Integer)tot);
    return 1;
}

static int c_reset_peak(lua_State *L)
{
    hr_cuda_reset_peak(opt_device(L, 1, "reset_peak_memory_stats"));
    return 0;
}

/* Collects garbage first so that unreachable tensors give their blocks back, then returns the
 * cached blocks to the driver; the number of bytes released. */
static int c_empty_cache(lua_State *L)
{
    lua_gc(L, LUA_GCCOLLECT);
    lua_pushinteger(L, (lua_Integer)hr_cuda_empty_cache(lua_isnoneornil(L, 1) ? -1 : opt_device(L, 1, "empty_cache")));
    return 1;
}

static int c_synchronize(lua_State *L)
{
    hr_lua_collect_while_waiting(L); /* the host is about to wait anyway */
    if (hr_cuda_synchronize(lua_isnoneornil(L, 1) ? -1 : opt_device(L, 1, "synchronize")))
        return hr_lua_error(L, "cuda.synchronize");
    return 0;
}

/* _upload_begin(device index): this thread's copies to that device go to its upload stream until
 * _upload_end() -> ticket; _upload_await(ticket) makes the compute stream wait for them. hero.cuda's
 * upload_async and await_upload wrap these. */
static int c_upload_begin(lua_State *L)
{
    if (hr_cuda_upload_begin(opt_device(L, 1, "upload_async"))) return hr_lua_error(L, "cuda.upload_async");
    return 0;
}

static int c_upload_end(lua_State *L)
{
    int64_t ticket;
    if (hr_cuda_upload_end(&ticket)) return hr_lua_error(L, "cuda.upload_async");
    lua_pushinteger(L, (lua_Integer)ticket);
    return 1;
}

static int c_upload_await(lua_State *L)
{
    if (hr_cuda_upload_await((int64_t)luaL_checkinteger(L, 1))) return hr_lua_error(L, "cuda.await_upload");
    return 0;
}

/* host_mirrored(t): whether t's values are also kept on the host (hr_mirror.c), so that reading
 * them back does not wait for the device. */
static int c_host_mirrored(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "cuda.host_mirrored");
    hr_tensor *mirror = hr_mirror_view(t);
    lua_pushboolean(L, mirror != NULL);
    hr_tensor_release(mirror);
    return 1;
}

static int c_set_allow_tf32(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TBOOLEAN);
    hr_cuda_set_allow_tf32(lua_toboolean(L, 1));
    return 0;
}

static int c_allow_tf32(lua_State *L)
{
    lua_pushboolean(L, hr_cuda_allow_tf32());
    return 1;
}

/* Whether a CPU tensor holds only finite values (non-float dtypes are always finite). */
static int cpu_all_finite(lua_State *L, hr_tensor *t, bool *ok)
{
    *ok = true;
    if (!hr_dtype_is_float(t->dtype)) return 0;
    hr_tensor *c = hr_contiguous(t);
    if (!c) return hr_lua_error(L, "all_finite");
    int64_t n = hr_tensor_numel(c);
    size_t el = hr_dtype_size(c->dtype);
    const char *p = hr_tensor_data(c);
    for (int64_t i = 0; i < n && *ok; i++)
        if (!isfinite(hr_load_f64(p + (size_t)i * el, c->dtype))) *ok = false;
    hr_tensor_release(c);
    return 0;
}

/* all_finite(t) or all_finite({t1, t2, ...}) (nil entries skipped): true when no element is inf
 * or NaN. Device tensors are checked on their GPU with one flag read back per device. */
static int c_all_finite(lua_State *L)
{
    if (hr_lua_to_tensor(L, 1)) {
        lua_createtable(L, 1, 0);
        lua_pushvalue(L, 1);
        lua_rawseti(L, -2, 1);
        lua_replace(L, 1);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    hr_tensor *dev[256];
    int ndev = 0;
    bool ok = true;
    for (lua_Integer i = 1; i <= n && ok; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        hr_tensor *t = hr_lua_check_tensor(L, -1, "all_finite");
        lua_pop(L, 1); /* the table keeps it alive */
        if (hr_tensor_device(t).type == HR_CPU) {
            cpu_all_finite(L, t, &ok);
        } else {
            dev[ndev++] = t;
            if (ndev == 256) {
                if (hr_cuda_all_finite(dev, ndev, &ok)) return hr_lua_error(L, "all_finite");
                ndev = 0;
            }
        }
    }
    if (ok && ndev > 0 && hr_cuda_all_finite(dev, ndev, &ok)) return hr_lua_error(L, "all_finite");
    lua_pushboolean(L, ok);
    return 1;
}

static int push_moved(lua_State *L, hr_tensor *t, hr_device dev, const char *op)
{
    if (hr_device_eq(dev, hr_tensor_device(t))) {
        lua_settop(L, 1);
        return 1;
    }
    hr_tensor *r;
    HR_LUA_RETRY(L, r, hr_ag_to(t, t->dtype, dev));
    if (!r) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, r);
    return 1;
}

/* t:cuda([ordinal | "cuda:N"]): a copy on the GPU (self when already there); differentiable. */
static int t_cuda(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "cuda");
    hr_device dev = {HR_CUDA, opt_device(L, 2, "cuda")};
    return push_moved(L, t, dev, "cuda");
}

/* t:cpu(): a copy in host memory (self when already there); differentiable. */
static int t_cpu(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "cpu");
    return push_moved(L, t, hr_cpu(), "cpu");
}

static int t_is_cuda(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "is_cuda");
    lua_pushboolean(L, hr_tensor_device(t).type == HR_CUDA);
    return 1;
}

/* ------------------------------------------------------------------ NCCL (used by hero.dist) */

static int c_nccl_available(lua_State *L)
{
    lua_pushboolean(L, hr_cuda_nccl_available());
    return 1;
}

/* -> the 128 bytes of a new communicator id, as a string */
static int c_nccl_unique_id(lua_State *L)
{
    unsigned char id[HR_CUDA_NCCL_ID_BYTES];
    if (hr_cuda_nccl_unique_id(id)) return hr_lua_error(L, "hero.dist.init");
    lua_pushlstring(L, (const char *)id, sizeof id);
    return 1;
}

/* (rank 0-based, world_size, id string, device index 0-based) */
static int c_nccl_init(lua_State *L)
{
    int rank = (int)luaL_checkinteger(L, 1), world = (int)luaL_checkinteger(L, 2);
    size_t len;
    const char *id = luaL_checklstring(L, 3, &len);
    int dev = (int)luaL_checkinteger(L, 4);
    if (len != HR_CUDA_NCCL_ID_BYTES)
        return luaL_error(L, "hero.dist.init: an NCCL id has %d bytes, got %d", HR_CUDA_NCCL_ID_BYTES, (int)len);
    if (hr_cuda_nccl_init(rank, world, (const unsigned char *)id, dev)) return hr_lua_error(L, "hero.dist.init");
    return 0;
}

static int c_nccl_device(lua_State *L)
{
    int d = hr_cuda_nccl_device();
    if (d < 0) lua_pushnil(L);
    else lua_pushinteger(L, d);
    return 1;
}

static int c_nccl_all_reduce_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "hero.dist.all_reduce");
    static const char *const names[] = {"sum", "max", "min", NULL};
    static const int codes[] = {HR_CUDA_NCCL_SUM, HR_CUDA_NCCL_MAX, HR_CUDA_NCCL_MIN};
    int op = luaL_checkoption(L, 2, "sum", names);
    if (hr_cuda_nccl_all_reduce_(t, codes[op])) return hr_lua_error(L, "hero.dist.all_reduce");
    lua_settop(L, 1);
    return 1;
}

static int c_nccl_broadcast_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "hero.dist.broadcast");
    int root = (int)luaL_checkinteger(L, 2);
    if (hr_cuda_nccl_broadcast_(t, root)) return hr_lua_error(L, "hero.dist.broadcast");
    lua_settop(L, 1);
    return 1;
}

/* (in, out) -> out */
static int c_nccl_all_gather(lua_State *L)
{
    hr_tensor *in = hr_lua_check_tensor(L, 1, "hero.dist.all_gather");
    hr_tensor *out = hr_lua_check_tensor(L, 2, "hero.dist.all_gather");
    if (hr_cuda_nccl_all_gather(in, out)) return hr_lua_error(L, "hero.dist.all_gather");
    lua_settop(L, 2);
    return 1;
}

static int c_nccl_finalize(lua_State *L)
{
    (void)L;
    hr_cuda_nccl_finalize();
    return 0;
}

void hr_lua_open_cuda(lua_State *L, int module_idx, int methods_idx)
{
    static const luaL_Reg cuda_fns[] = {
        {"available", c_available},
        {"compiled", c_compiled},
        {"device_count", c_device_count},
        {"device_name", c_device_name},
        {"memory_stats", c_memory_stats},
        {"reset_peak_memory_stats", c_reset_peak},
        {"empty_cache", c_empty_cache},
        {"synchronize", c_synchronize},
        {"host_mirrored", c_host_mirrored},
        {"_upload_begin", c_upload_begin},
        {"_upload_end", c_upload_end},
        {"_upload_await", c_upload_await},
        {"set_allow_tf32", c_set_allow_tf32},
        {"allow_tf32", c_allow_tf32},
        {"all_finite", c_all_finite},
        {"nccl_available", c_nccl_available},
        {"_nccl_unique_id", c_nccl_unique_id},
        {"_nccl_init", c_nccl_init},
        {"_nccl_device", c_nccl_device},
        {"_nccl_all_reduce_", c_nccl_all_reduce_},
        {"_nccl_broadcast_", c_nccl_broadcast_},
        {"_nccl_all_gather", c_nccl_all_gather},
        {"_nccl_finalize", c_nccl_finalize},
        {NULL, NULL},
    };
    luaL_newlib(L, cuda_fns);
    lua_setfield(L, module_idx, "cuda");
    lua_pushcfunction(L, c_all_finite);
    lua_setfield(L, module_idx, "all_finite");
    static const luaL_Reg methods[] = {
        {"cuda", t_cuda},
        {"cpu", t_cpu},
        {"is_cuda", t_is_cuda},
        {NULL, NULL},
    };
    lua_pushvalue(L, methods_idx);
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 1);
}
