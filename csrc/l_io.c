/* l_io.c — Lua bindings of the tensor file formats (safetensors, .npy, .npz, feature files). */
#include <stdlib.h>
#include <string.h>

#include "hr_io.h"
#include "l_common.h"

/* A tensor list lives in a userdata whose __gc frees it, so a Lua error raised while it is being
 * filled (bad table entry, out of memory) never leaks the references it holds. */
#define LIST_MT "hero.io.tensor_list"

static int list_gc(lua_State *L)
{
    hr_tensor_list *l = luaL_checkudata(L, 1, LIST_MT);
    hr_tensor_list_free(l);
    return 0;
}

static hr_tensor_list *new_list(lua_State *L)
{
    hr_tensor_list *l = lua_newuserdatauv(L, sizeof *l, 0);
    hr_tensor_list_init(l);
    if (luaL_newmetatable(L, LIST_MT)) {
        lua_pushcfunction(L, list_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return l;
}

/* Fills l from the name -> tensor table at idx. */
/* The tensors of the table at idx in the order the array `order` (at oidx) names them: every
 * entry of the table exactly once. */
static void ordered_table_to_list(lua_State *L, int idx, int oidx, hr_tensor_list *l, const char *op)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, oidx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        count++;
        lua_pop(L, 1);
    }
    if (n != count)
        luaL_error(L, "%s: option 'order' names %d members for %d tensors", op, (int)n, (int)count);
    for (lua_Integer i = 1; i <= n; i++) {
        if (lua_rawgeti(L, oidx, i) != LUA_TSTRING)
            luaL_error(L, "%s: option 'order' entry %d is not a name", op, (int)i);
        const char *name = lua_tostring(L, -1);
        lua_rawget(L, idx);
        hr_tensor_box *box = luaL_testudata(L, -1, HR_TENSOR_MT);
        lua_rawgeti(L, oidx, i);
        name = lua_tostring(L, -1);
        lua_pop(L, 1);
        if (!box) luaL_error(L, "%s: option 'order' names '%s', which is not a tensor of the table", op, name);
        if (!box->t || !box->t->storage) luaL_error(L, "%s: tensor '%s' was freed", op, name);
        if (hr_tensor_list_add(l, name, box->t)) hr_lua_error(L, op);
        lua_pop(L, 1);
    }
}

static void table_to_list(lua_State *L, int idx, hr_tensor_list *l, const char *op)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s: argument #%d: keys must be strings (tensor names), got a %s key", op, idx,
                       luaL_typename(L, -2));
        size_t name_len;
        const char *name = lua_tolstring(L, -2, &name_len);
        if (strlen(name) != name_len)
            luaL_error(L, "%s: argument #%d: the name '%s...' holds a NUL byte (file formats end names there)", op,
                       idx, name);
        hr_tensor_box *box = luaL_testudata(L, -1, HR_TENSOR_MT);
        if (!box) luaL_error(L, "%s: argument #%d: entry '%s' is a %s, not a hero.Tensor", op, idx, name, luaL_typename(L, -1));
        if (!box->t || !box->t->storage) luaL_error(L, "%s: argument #%d: tensor '%s' was freed", op, idx, name);
        if (hr_tensor_list_add(l, name, box->t)) hr_lua_error(L, op);
        lua_pop(L, 1);
    }
}

/* Pushes a name -> tensor table of the list's tensors. */
static void push_tensor_table(lua_State *L, hr_tensor_list *l)
{
    lua_createtable(L, 0, (int)l->n);
    for (size_t i = 0; i < l->n; i++) {
        hr_tensor_retain(l->tensors[i]);
        hr_lua_push_tensor(L, l->tensors[i]);
        lua_setfield(L, -2, l->names[i]);
    }
}

/* load_safetensors(path [, {mmap = false, verify = true}]) -> tensors, metadata */
static int l_load_safetensors(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "load_safetensors");
    bool use_mmap = false, verify = true;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 2)) {
            const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            if (!key || (strcmp(key, "mmap") != 0 && strcmp(key, "verify") != 0))
                return luaL_error(L, "load_safetensors: unknown option '%s' (mmap, verify)",
                                  key ? key : luaL_typename(L, -2));
            if (lua_type(L, -1) != LUA_TBOOLEAN)
                return luaL_error(L, "load_safetensors: option '%s' must be a boolean, got %s", key,
                                  luaL_typename(L, -1));
            lua_pop(L, 1);
        }
        hr_lua_rawfield(L, 2, "mmap");
        use_mmap = lua_toboolean(L, -1);
        lua_pop(L, 1);
        hr_lua_rawfield(L, 2, "verify");
        verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_settop(L, 1);
    hr_tensor_list *l = new_list(L);
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_safetensors_load(path, l, use_mmap, verify));
    if (rc) return hr_lua_error(L, "load_safetensors");
    push_tensor_table(L, l);
    lua_createtable(L, 0, (int)l->nmeta);
    for (size_t i = 0; i < l->nmeta; i++) {
        lua_pushstring(L, l->meta_vals[i]);
        lua_setfield(L, -2, l->meta_keys[i]);
    }
    hr_tensor_list_free(l);
    return 2;
}

static int l_save_safetensors(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "save_safetensors");
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3); /* the list userdata goes above the optional argument */
    hr_tensor_list *l = new_list(L);
    table_to_list(L, 2, l, "save_safetensors");
    if (!lua_isnoneornil(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "save_safetensors: argument #3: metadata must map strings to strings (got %s -> %s)",
                                  luaL_typename(L, -2), luaL_typename(L, -1));
            if (hr_tensor_list_add_meta(l, lua_tostring(L, -2), lua_tostring(L, -1)))
                return hr_lua_error(L, "save_safetensors");
            lua_pop(L, 1);
        }
    }
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_safetensors_save(path, l));
    if (rc) return hr_lua_error(L, "save_safetensors");
    hr_tensor_list_free(l);
    return 0;
}

static int l_load_npy(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "load_npy");
    hr_tensor *t;
    HR_LUA_RETRY(L, t, hr_npy_load(path));
    if (!t) return hr_lua_error(L, "load_npy");
    hr_lua_push_tensor(L, t);
    return 1;
}

static int l_save_npy(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "save_npy");
    hr_tensor *t = hr_lua_check_tensor(L, 2, "save_npy");
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_npy_save(path, t));
    if (rc) return hr_lua_error(L, "save_npy");
    return 0;
}

static int l_load_npz(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "load_npz");
    hr_tensor_list *l = new_list(L);
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_npz_load(path, l));
    if (rc) return hr_lua_error(L, "load_npz");
    push_tensor_table(L, l);
    hr_tensor_list_free(l);
    return 1;
}

/* The npz writers' options table at idx: {compress = boolean, order = {names}}; any other key is
 * refused (a typo would otherwise silently write a stored archive). Returns compress; *has_order
 * says whether the member order is given. */
static bool npz_options(lua_State *L, int idx, const char *op, bool *has_order)
{
    *has_order = false;
    if (lua_isnoneornil(L, idx)) return false;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        if (!k || (strcmp(k, "compress") != 0 && strcmp(k, "order") != 0))
            luaL_error(L, "%s: unknown option '%s' (compress, order)", op, k ? k : luaL_typename(L, -2));
        lua_pop(L, 1);
    }
    if (hr_lua_rawfield(L, idx, "order") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        *has_order = true;
    }
    lua_pop(L, 1);
    hr_lua_rawfield(L, idx, "compress");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_error(L, "%s: option 'compress' must be a boolean, got %s", op, luaL_typename(L, -1));
    bool compress = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return compress;
}

static int l_save_npz(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "save_npz");
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 3);
    bool ordered;
    bool compress = npz_options(L, 3, "save_npz", &ordered);
    hr_tensor_list *l = new_list(L);
    if (ordered) {
        hr_lua_rawfield(L, 3, "order");
        ordered_table_to_list(L, 2, lua_gettop(L), l, "save_npz");
    } else {
        table_to_list(L, 2, l, "save_npz");
    }
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_npz_save(path, l, compress, ordered));
    if (rc) return hr_lua_error(L, "save_npz");
    hr_tensor_list_free(l);
    return 0;
}

/* A malloc'd buffer owned by a userdata, so that a Lua error while its bytes are copied out frees it. */
#define OWNED_BYTES_MT "hero.io.owned_bytes"

static int owned_bytes_gc(lua_State *L)
{
    unsigned char **p = luaL_checkudata(L, 1, OWNED_BYTES_MT);
    free(*p);
    *p = NULL;
    return 0;
}

static unsigned char **new_owned_bytes(lua_State *L)
{
    unsigned char **p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = NULL;
    if (luaL_newmetatable(L, OWNED_BYTES_MT)) {
        lua_pushcfunction(L, owned_bytes_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return p;
}

/* npz_to_bytes({name = tensor, ...}, {compress = false}) -> the .npz archive's bytes as a string
 * (numpy.savez / savez_compressed into memory), e.g. a compressed video db's value. */
static int l_npz_to_bytes(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    bool ordered;
    bool compress = npz_options(L, 2, "npz_to_bytes", &ordered);
    hr_tensor_list *l = new_list(L);
    if (ordered) {
        hr_lua_rawfield(L, 2, "order");
        ordered_table_to_list(L, 1, lua_gettop(L), l, "npz_to_bytes");
    } else {
        table_to_list(L, 1, l, "npz_to_bytes");
    }
    unsigned char **owned = new_owned_bytes(L);
    size_t len = 0;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_npz_encode(l, compress, ordered, owned, &len));
    if (rc) return hr_lua_error(L, "npz_to_bytes");
    lua_pushlstring(L, (const char *)*owned, len); /* may raise: the userdata frees the bytes then */
    free(*owned);
    *owned = NULL;
    hr_tensor_list_free(l);
    return 1;
}

static int l_load_features(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "load_features");
    hr_tensor *t;
    HR_LUA_RETRY(L, t, hr_features_load(path));
    if (!t) return hr_lua_error(L, "load_features");
    hr_lua_push_tensor(L, t);
    return 1;
}

/* bytes_to_tensor(s) -> u8 tensor [#s] holding the bytes of the string s (CPU). */
static int l_bytes_to_tensor(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int64_t size[1] = {(int64_t)n};
    hr_tensor *t;
    HR_LUA_RETRY(L, t, hr_tensor_empty(1, size, HR_U8, hr_cpu()));
    if (!t) return hr_lua_error(L, "bytes_to_tensor");
    if (n) memcpy(hr_tensor_data(t), s, n);
    hr_lua_push_tensor(L, t);
    return 1;
}

/* tensor_to_bytes(t) -> the bytes of a u8 CPU tensor as a string (its elements in order). */
static int l_tensor_to_bytes(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "tensor_to_bytes");
    if (t->dtype != HR_U8 || hr_tensor_device(t).type != HR_CPU)
        return luaL_error(L, "tensor_to_bytes: expected a u8 tensor on the CPU, got %s %s", hr_dtype_name(t->dtype),
                          hr_tensor_device(t).type == HR_CPU ? "on the CPU" : "on a GPU");
    hr_tensor *c = hr_contiguous(t);
    if (!c) return hr_lua_error(L, "tensor_to_bytes");
    lua_pushlstring(L, (const char *)hr_tensor_data(c), (size_t)hr_tensor_numel(c));
    hr_tensor_release(c);
    return 1;
}

static const luaL_Reg io_functions[] = {
    {"bytes_to_tensor", l_bytes_to_tensor},
    {"tensor_to_bytes", l_tensor_to_bytes},
    {"load_safetensors", l_load_safetensors},
    {"save_safetensors", l_save_safetensors},
    {"load_npy", l_load_npy},
    {"save_npy", l_save_npy},
    {"load_npz", l_load_npz},
    {"save_npz", l_save_npz},
    {"npz_to_bytes", l_npz_to_bytes},
    {"load_features", l_load_features},
    {NULL, NULL},
};

void hr_lua_open_io(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, io_functions, 0);
    lua_pop(L, 1);
}
