/*
 * l_data.c — Lua bindings of the database readers: read-only LMDB handles, lz4 frames, MessagePack
 * (with msgpack_numpy arrays as tensors) and .npz images held in memory.
 *
 * Decoded MessagePack becomes plain Lua values: nil -> the null marker, bool, integers (uint64 above
 * 2^63-1 -> float), floats, str/bin -> strings, arrays -> tables 1..n marked with the array
 * metatable, maps -> tables (msgpack_numpy maps -> tensors). The null marker and the array
 * metatable are those of hero.json, registered by hero.data through data_set_markers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_data.h"
#include "hr_io.h"
#include "l_common.h"

#define LMDB_MT "hero.data.Lmdb"
#define GUARD_MT "hero.data.guard"
#define REG_NULL "hero.data.null"
#define REG_ARRAY_MT "hero.data.array_mt"

/* A userdata that frees a C resource when collected, so a Lua error raised while a result is being
 * built (out of memory, bad msgpack_numpy map) never leaks the tree or buffer it is built from. */
typedef struct {
    void *p;
    void (*fn)(void *);
} guard;

static int guard_gc(lua_State *L)
{
    guard *g = luaL_checkudata(L, 1, GUARD_MT);
    if (g->p && g->fn) g->fn(g->p);
    g->p = NULL;
    return 0;
}

static guard *push_guard(lua_State *L, void (*fn)(void *))
{
    guard *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->p = NULL;
    g->fn = fn;
    if (luaL_newmetatable(L, GUARD_MT)) {
        lua_pushcfunction(L, guard_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return g;
}

/* Runs the guard's destructor now (the userdata at idx). */
static void guard_release(lua_State *L, int idx)
{
    guard *g = luaL_checkudata(L, idx, GUARD_MT);
    if (g->p && g->fn) g->fn(g->p);
    g->p = NULL;
}

static void free_tree(void *p) { hr_msgpack_free(p); }
static void free_list(void *p)
{
    hr_tensor_list_free(p);
    free(p);
}

/* ------------------------------------------------------------------ MessagePack -> Lua */

typedef struct {
    int null_idx;  /* stack index of the null marker (nil when unset) */
    int amt_idx;   /* stack index of the array metatable (nil when unset) */
    const char *op;
} push_ctx;

static void push_node(lua_State *L, const hr_mp_node *n, const push_ctx *c);

static void push_key(lua_State *L, const hr_mp_node *k, const push_ctx *c)
{
    switch (k->type) {
    case HR_MP_STR: case HR_MP_BIN: case HR_MP_INT: case HR_MP_UINT: case HR_MP_BOOL:
        push_node(L, k, c);
        return;
    case HR_MP_FLOAT:
        if (k->v.f != k->v.f) luaL_error(L, "%s: a map key is NaN, which cannot be a Lua table key", c->op);
        push_node(L, k, c);
        return;
    case HR_MP_NIL:
        luaL_error(L, "%s: a map key is nil, which cannot be a Lua table key", c->op);
        return;
    default:
        luaL_error(L, "%s: a map key is an %s, which cannot be a Lua table key", c->op,
                   k->type == HR_MP_ARRAY ? "array" : "map");
    }
}

static void push_node(lua_State *L, const hr_mp_node *n, const push_ctx *c)
{
    luaL_checkstack(L, 6, "decoding MessagePack");
    switch (n->type) {
    case HR_MP_NIL: lua_pushvalue(L, c->null_idx); return;
    case HR_MP_BOOL: lua_pushboolean(L, n->v.b); return;
    case HR_MP_INT: lua_pushinteger(L, (lua_Integer)n->v.i); return;
    case HR_MP_UINT: lua_pushnumber(L, (lua_Number)n->v.u); return;
    case HR_MP_FLOAT: lua_pushnumber(L, (lua_Number)n->v.f); return;
    case HR_MP_STR: case HR_MP_BIN: lua_pushlstring(L, n->v.s.ptr, n->v.s.len); return;
    case HR_MP_ARRAY:
        lua_createtable(L, n->v.c.n > 0x7fffffff ? 0x7fffffff : (int)n->v.c.n, 0);
        for (size_t i = 0; i < n->v.c.n; i++) {
            push_node(L, &n->v.c.items[i], c);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        if (!lua_isnil(L, c->amt_idx)) {
            lua_pushvalue(L, c->amt_idx);
            lua_setmetatable(L, -2);
        }
        return;
    case HR_MP_MAP: {
        hr_tensor *t;
        int r = hr_msgpack_numpy(n, &t);
        if (r < 0) hr_lua_error(L, c->op);
        if (r > 0) {
            hr_lua_push_tensor(L, t);
            return;
        }
        lua_createtable(L, 0, n->v.c.n > 0x7fffffff ? 0x7fffffff : (int)n->v.c.n);
        for (size_t i = 0; i < n->v.c.n; i++) {
            push_key(L, &n->v.c.items[2 * i], c);
            push_node(L, &n->v.c.items[2 * i + 1], c);
            lua_rawset(L, -3);
        }
        return;
    }
    }
}

/* Decodes buf and pushes the Lua value. */
static void push_msgpack(lua_State *L, const void *buf, size_t len, const char *what, const char *op)
{
    lua_getfield(L, LUA_REGISTRYINDEX, REG_NULL);
    int null_idx = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_ARRAY_MT);
    int amt_idx = lua_gettop(L);
    guard *g = push_guard(L, free_tree);
    int gi = lua_gettop(L);
    hr_mp_node *root;
    HR_LUA_RETRY(L, root, hr_msgpack_decode(buf, len, what));
    if (!root) hr_lua_error(L, op);
    g->p = root;
    push_ctx c = {null_idx, amt_idx, op};
    push_node(L, root, &c);
    guard_release(L, gi);
    lua_replace(L, null_idx); /* result where the null marker was; drop the helpers */
    lua_settop(L, null_idx);
}

static int l_decode_msgpack(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    push_msgpack(L, s, len, NULL, "decode_msgpack");
    return 1;
}

static size_t opt_max_bytes(lua_State *L, int idx, const char *op)
{
    if (lua_isnoneornil(L, idx)) return HR_LZ4_DEFAULT_MAX;
    lua_Integer m = luaL_checkinteger(L, idx);
    if (m < 0) luaL_error(L, "%s: argument #%d: max_bytes must be >= 0, got %I", op, idx, m);
    return (size_t)m;
}

static void free_buf(void *p) { free(p); }

/* Decompresses into a guarded buffer pushed on the stack; returns it. */
static unsigned char *lz4_guarded(lua_State *L, const void *src, size_t len, size_t max, size_t *outlen,
                                  const char *what, const char *op)
{
    guard *g = push_guard(L, free_buf);
    unsigned char *out;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_lz4_frame_decompress(src, len, max, &out, outlen));
    if (rc) {
        if (what) hr_error_prefix("%s", what);
        hr_lua_error(L, op);
    }
    g->p = out;
    return out;
}

static int l_lz4_frame_decompress(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t max = opt_max_bytes(L, 2, "lz4_frame_decompress");
    lua_settop(L, 2);
    size_t olen;
    unsigned char *out = lz4_guarded(L, s, len, max, &olen, NULL, "lz4_frame_decompress");
    lua_pushlstring(L, (const char *)out, olen);
    guard_release(L, 3);
    return 1;
}

/* Pushes {name = tensor} of an .npz image. */
static void push_npz(lua_State *L, const void *buf, size_t len, const char *what, const char *op)
{
    guard *g = push_guard(L, free_list);
    int gi = lua_gettop(L);
    hr_tensor_list *l = malloc(sizeof *l);
    if (!l) luaL_error(L, "%s: out of memory", op);
    hr_tensor_list_init(l);
    g->p = l;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_npz_parse(buf, len, what, l));
    if (rc) hr_lua_error(L, op);
    lua_createtable(L, 0, (int)l->n);
    for (size_t i = 0; i < l->n; i++) {
        hr_tensor_retain(l->tensors[i]);
        hr_lua_push_tensor(L, l->tensors[i]);
        lua_setfield(L, -2, l->names[i]);
    }
    guard_release(L, gi);
    lua_remove(L, gi);
}

static int l_decode_npz(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *what = luaL_optstring(L, 2, "npz bytes");
    push_npz(L, s, len, what, "decode_npz");
    return 1;
}

/* pad_rows(lists, width, pad) -> ids, mask: the Lua arrays of integers in lists as the rows of an
 * i64 [#lists, width] tensor, each filled up with pad, and the i64 mask of the entries (1, else 0).
 * The collates' token rows: one C pass over the entries instead of a Lua table of every padded
 * position converted afterwards. */
static int l_pad_rows(lua_State *L)
{
    const char *op = "pad_rows";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer width = luaL_checkinteger(L, 2);
    lua_Integer pad = luaL_checkinteger(L, 3);
    if (width < 0) return luaL_error(L, "%s: argument #2: the width must be >= 0, got %I", op, width);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    int64_t size[2] = {n, width};
    hr_tensor *ids, *mask;
    HR_LUA_RETRY(L, ids, hr_tensor_empty(2, size, HR_I64, hr_cpu()));
    hr_lua_push_tensor(L, ids); /* owned by the stack while the rows are read: an error cannot leak it */
    HR_LUA_RETRY(L, mask, hr_tensor_empty(2, size, HR_I64, hr_cpu()));
    hr_lua_push_tensor(L, mask);
    int64_t *pi = hr_tensor_data(ids), *pm = hr_tensor_data(mask);
    for (lua_Integer r = 1; r <= n; r++, pi += width, pm += width) {
        if (lua_rawgeti(L, 1, r) != LUA_TTABLE)
            return luaL_error(L, "%s: row %I is a %s, expected an array of integers", op, r, luaL_typename(L, -1));
        lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
        if (len > width)
            return luaL_error(L, "%s: row %I has %I entries, more than the width %I", op, r, len, width);
        for (lua_Integer j = 1; j <= len; j++) {
            lua_rawgeti(L, -1, j);
            int ok;
            lua_Integer v = lua_tointegerx(L, -1, &ok);
            if (!ok) return luaL_error(L, "%s: entry %I of row %I is not an integer (%s)", op, j, r, luaL_typename(L, -1));
            lua_pop(L, 1);
            pi[j - 1] = (int64_t)v;
            pm[j - 1] = 1;
        }
        for (lua_Integer j = len; j < width; j++) {
            pi[j] = (int64_t)pad;
            pm[j] = 0;
        }
        lua_pop(L, 1);
    }
    return 2;
}

static int l_set_markers(lua_State *L)
{
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_ARRAY_MT);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_NULL);
    return 0;
}

static int l_has_lmdb(lua_State *L)
{
    lua_pushboolean(L, hr_lmdb_available());
    return 1;
}

static int l_has_lz4(lua_State *L)
{
    lua_pushboolean(L, hr_lz4_available());
    return 1;
}

static int l_has_libdeflate(lua_State *L)
{
    lua_pushboolean(L, hr_zip_has_libdeflate());
    return 1;
}

/* ------------------------------------------------------------------ LMDB handles */

typedef struct {
    hr_lmdb *db;
    hr_lmdb *deferred; /* closed from a finalizer: unmapped by the box's own __gc */
} lmdb_box;

static int l_lmdb_open(lua_State *L)
{
    const char *dir = hr_lua_check_path(L, 1, "lmdb_open");
    lmdb_box *b = lua_newuserdatauv(L, sizeof *b, 1);
    b->db = NULL;
    b->deferred = NULL;
    luaL_setmetatable(L, LMDB_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1); /* the directory, for messages and :path() */
    HR_LUA_RETRY(L, b->db, hr_lmdb_open(dir));
    if (!b->db) return hr_lua_error(L, "lmdb_open");
    return 1;
}

static hr_lmdb *check_open(lua_State *L, const char *op)
{
    lmdb_box *b = luaL_checkudata(L, 1, LMDB_MT);
    if (!b->db) {
        lua_getiuservalue(L, 1, 1);
        luaL_error(L, "%s: the LMDB handle of '%s' is closed", op, lua_tostring(L, -1));
    }
    return b->db;
}

/* Looks the key at argument 2 up; 1 when found. */
static int lookup(lua_State *L, const char *op, const void **val, size_t *vlen)
{
    hr_lmdb *db = check_open(L, op);
    size_t klen;
    const char *key = luaL_checklstring(L, 2, &klen);
    int r = hr_lmdb_get(db, key, klen, val, vlen);
    if (r < 0) hr_lua_error(L, op);
    return r;
}

/* What a value is called in error messages: "key 'k' of <dir>". */
static const char *value_name(lua_State *L, char *buf, size_t cap)
{
    lua_getiuservalue(L, 1, 1);
    snprintf(buf, cap, "key '%.200s' of '%.300s'", lua_tostring(L, 2), lua_tostring(L, -1));
    lua_pop(L, 1);
    return buf;
}

static int m_get(lua_State *L)
{
    const void *v;
    size_t vl;
    if (!lookup(L, "lmdb:get", &v, &vl)) return lua_pushnil(L), 1;
    lua_pushlstring(L, v, vl);
    return 1;
}

static int m_get_msgpack(lua_State *L)
{
    const void *v;
    size_t vl;
    if (!lookup(L, "lmdb:get_msgpack", &v, &vl)) return lua_pushnil(L), 1;
    char what[600];
    value_name(L, what, sizeof what);
    lua_settop(L, 2);
    push_msgpack(L, v, vl, what, "lmdb:get_msgpack");
    return 1;
}

static int m_get_lz4_msgpack(lua_State *L)
{
    const void *v;
    size_t vl;
    size_t max = opt_max_bytes(L, 3, "lmdb:get_lz4_msgpack");
    if (!lookup(L, "lmdb:get_lz4_msgpack", &v, &vl)) return lua_pushnil(L), 1;
    char what[600];
    value_name(L, what, sizeof what);
    lua_settop(L, 3);
    size_t olen;
    unsigned char *out = lz4_guarded(L, v, vl, max, &olen, what, "lmdb:get_lz4_msgpack");
    push_msgpack(L, out, olen, what, "lmdb:get_lz4_msgpack");
    guard_release(L, 4);
    return 1;
}

static int m_get_npz(lua_State *L)
{
    const void *v;
    size_t vl;
    if (!lookup(L, "lmdb:get_npz", &v, &vl)) return lua_pushnil(L), 1;
    char what[600];
    value_name(L, what, sizeof what);
    lua_settop(L, 2);
    push_npz(L, v, vl, what, "lmdb:get_npz");
    return 1;
}

/* keys() -> {key1, key2, ...} in LMDB order, {size1, size2, ...} (value bytes). */
static int m_keys(lua_State *L)
{
    hr_lmdb *db = check_open(L, "lmdb:keys");
    guard *g = push_guard(L, free_buf);
    int gi = lua_gettop(L);
    hr_lmdb_entry *e;
    size_t n;
    if (hr_lmdb_list(db, &e, &n)) return hr_lua_error(L, "lmdb:keys");
    g->p = e;
    int hint = n > 0x7fffffff ? 0x7fffffff : (int)n;
    lua_createtable(L, hint, 0);
    lua_createtable(L, hint, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushlstring(L, e[i].key, e[i].klen);
        lua_rawseti(L, -3, (lua_Integer)i + 1);
        lua_pushinteger(L, (lua_Integer)e[i].vlen);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    guard_release(L, gi);
    return 2;
}

static int m_count(lua_State *L)
{
    hr_lmdb *db = check_open(L, "lmdb:count");
    size_t n;
    if (hr_lmdb_count(db, &n)) return hr_lua_error(L, "lmdb:count");
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* db:close() and the end of a `local db <close>`: a close from a finalizer leaves the mapping to
 * __gc, since a binding may be reading a value out of it (hr_lua_in_finalizer) */
static int m_close(lua_State *L)
{
    lmdb_box *b = luaL_checkudata(L, 1, LMDB_MT);
    HR_LUA_RELEASE_OR_DEFER(L, b, db, hr_lmdb_close);
    return 0;
}

static int m_gc(lua_State *L)
{
    lmdb_box *b = luaL_checkudata(L, 1, LMDB_MT);
    HR_LUA_RELEASE_ALL(b, db, hr_lmdb_close);
    return 0;
}

static int m_closed(lua_State *L)
{
    lmdb_box *b = luaL_checkudata(L, 1, LMDB_MT);
    lua_pushboolean(L, b->db == NULL);
    return 1;
}

static int m_path(lua_State *L)
{
    luaL_checkudata(L, 1, LMDB_MT);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int m_tostring(lua_State *L)
{
    lmdb_box *b = luaL_checkudata(L, 1, LMDB_MT);
    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "hero.data.Lmdb('%s'%s)", lua_tostring(L, -1), b->db ? "" : ", closed");
    return 1;
}

void hr_lua_open_data(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg lmdb_methods[] = {
        {"get", m_get},
        {"get_msgpack", m_get_msgpack},
        {"get_lz4_msgpack", m_get_lz4_msgpack},
        {"get_npz", m_get_npz},
        {"keys", m_keys},
        {"count", m_count},
        {"close", m_close},
        {"closed", m_closed},
        {"path", m_path},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, LMDB_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, lmdb_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, m_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, m_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, m_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);

    static const luaL_Reg fns[] = {
        {"lmdb_open", l_lmdb_open},
        {"decode_msgpack", l_decode_msgpack},
        {"lz4_frame_decompress", l_lz4_frame_decompress},
        {"decode_npz", l_decode_npz},
        {"pad_rows", l_pad_rows},
        {"data_set_markers", l_set_markers},
        {"has_lmdb", l_has_lmdb},
        {"has_lz4", l_has_lz4},
        {"has_libdeflate", l_has_libdeflate},
        {NULL, NULL},
    };
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}
