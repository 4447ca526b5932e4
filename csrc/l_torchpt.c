/* l_torchpt.c — Lua bindings of the PyTorch checkpoint reader: load_torch and torch_sniff. */
#include <stdio.h>
#include <string.h>

#include "hr_torch_io.h"
#include "l_common.h"

/* The loaded file lives in a userdata whose __gc frees it, so a Lua error raised while its values
 * are converted never leaks it. */
#define FILE_MT "hero.io.torch_file"

/* Values nested deeper than this are refused: the conversion recurses on the C stack. */
#define MAX_DEPTH 200

static int file_gc(lua_State *L)
{
    hr_torch_file *f = luaL_checkudata(L, 1, FILE_MT);
    hr_torch_file_free(f);
    return 0;
}

typedef struct {
    lua_State *L;
    int cache;        /* table: lightuserdata(value or storage) -> converted Lua value / true */
    const char *path;
    char where[512];  /* the position being converted, e.g. ["encoder"][3] */
} conv;

static int conv_error(conv *c, const char *fmt, const char *detail)
{
    char msg[256];
    snprintf(msg, sizeof msg, fmt, detail);
    /* Deep positions show their innermost part. */
    size_t n = strlen(c->where);
    const char *where = n > 80 ? c->where + n - 80 : c->where[0] ? c->where : "the root";
    return luaL_error(c->L, "load_torch: '%s': value at %s%s: %s", c->path, n > 80 ? "..." : "", where, msg);
}

static void push_value(conv *c, const hr_pk_value *v, int depth);

/* Pushes a dict key as a Lua key; nil keys are refused. */
static void push_key(conv *c, const hr_pk_value *k)
{
    lua_State *L = c->L;
    switch (k->type) {
    case HR_PK_STR:
    case HR_PK_BYTES: lua_pushlstring(L, k->s, k->len); return;
    case HR_PK_BOOL: lua_pushboolean(L, k->b); return;
    case HR_PK_INT:
        if (k->len) conv_error(c, "%s", "a dict key is an integer beyond 64 bits");
        lua_pushinteger(L, k->i);
        return;
    case HR_PK_FLOAT:
        if (k->f != k->f) conv_error(c, "%s", "a dict key is NaN, which cannot be a Lua table key");
        lua_pushnumber(L, k->f);
        return;
    default: conv_error(c, "a dict key of type %s cannot be a Lua table key", hr_pk_type_name(k));
    }
}

/* Appends "[key]" to the position for messages; returns the previous length to restore. */
static size_t where_push(conv *c, const hr_pk_value *k, size_t index)
{
    size_t n = strlen(c->where);
    if (k && (k->type == HR_PK_STR || k->type == HR_PK_BYTES))
        snprintf(c->where + n, sizeof c->where - n, "[\"%.*s\"]", (int)(k->len > 64 ? 64 : k->len), k->s);
    else if (k && k->type == HR_PK_INT && !k->len)
        snprintf(c->where + n, sizeof c->where - n, "[%lld]", (long long)k->i);
    else
        snprintf(c->where + n, sizeof c->where - n, "[%zu]", index + 1);
    return n;
}

/* Containers are cached before they are filled, so shared values stay shared and cycles close. */
static bool push_cached(conv *c, const void *key)
{
    lua_rawgetp(c->L, c->cache, key);
    if (!lua_isnil(c->L, -1)) return true;
    lua_pop(c->L, 1);
    return false;
}

static void push_value(conv *c, const hr_pk_value *v, int depth)
{
    lua_State *L = c->L;
    if (depth > MAX_DEPTH) conv_error(c, "values nested deeper than %s levels", "200");
    if (!lua_checkstack(L, 8)) conv_error(c, "%s", "out of Lua stack");
    switch (v->type) {
    case HR_PK_NONE: lua_pushnil(L); return;
    case HR_PK_BOOL: lua_pushboolean(L, v->b); return;
    case HR_PK_INT:
        if (v->len) conv_error(c, "%s", "an integer beyond 64 bits");
        lua_pushinteger(L, v->i);
        return;
    case HR_PK_FLOAT: lua_pushnumber(L, v->f); return;
    case HR_PK_STR:
    case HR_PK_BYTES: lua_pushlstring(L, v->s, v->len); return;
    case HR_PK_GLOBAL: conv_error(c, "a bare reference to '%s', not a value", v->s); return;
    case HR_PK_OBJECT: {
        hr_tensor *t = hr_torch_tensor(v);
        if (!t) conv_error(c, "%s", "a bare storage (not wrapped in a tensor)");
        if (push_cached(c, v)) return;
        /* The storage's bytes are told to the GC once, however many tensors view them. */
        lua_rawgetp(L, c->cache, t->storage);
        bool counted = !lua_isnil(L, -1);
        lua_pop(L, 1);
        if (!counted) {
            hr_lua_account(L, t->storage->nbytes);
            lua_pushboolean(L, 1);
            lua_rawsetp(L, c->cache, t->storage);
        }
        hr_tensor_retain(t);
        hr_lua_push_tensor(L, t);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, c->cache, v);
        return;
    }
    case HR_PK_TUPLE:
    case HR_PK_LIST:
    case HR_PK_DICT: break;
    }
    if (push_cached(c, v)) return;
    bool dict = v->type == HR_PK_DICT;
    lua_createtable(L, dict ? 0 : (int)(v->n < 1u << 20 ? v->n : 0), dict ? (int)(v->n / 2 < 1u << 20 ? v->n / 2 : 0) : 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, c->cache, v);
    int tbl = lua_gettop(L);
    if (dict) {
        for (size_t i = 0; i + 1 < v->n; i += 2) {
            size_t n = where_push(c, v->items[i], i / 2);
            push_key(c, v->items[i]);
            push_value(c, v->items[i + 1], depth + 1);
            lua_rawset(L, tbl); /* None values leave the key absent; a repeated key keeps the last value */
            c->where[n] = '\0';
        }
    } else {
        for (size_t i = 0; i < v->n; i++) {
            size_t n = where_push(c, NULL, i);
            push_value(c, v->items[i], depth + 1);
            lua_rawseti(L, tbl, (lua_Integer)i + 1);
            c->where[n] = '\0';
        }
    }
}

static int l_load_torch(lua_State *L)
{
    const char *path = hr_lua_check_path(L, 1, "load_torch");
    lua_settop(L, 1);
    hr_torch_file *f = lua_newuserdatauv(L, sizeof *f, 0);
    memset(f, 0, sizeof *f);
    if (luaL_newmetatable(L, FILE_MT)) {
        lua_pushcfunction(L, file_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_torch_load(path, f));
    if (rc) return hr_lua_error(L, "load_torch");
    lua_newtable(L);
    conv c = {L, lua_gettop(L), path, {0}};
    push_value(&c, f->root, 0);
    hr_torch_file_free(f);
    return 1;
}

static int l_torch_sniff(lua_State *L)
{
    size_t len;
    const char *head = luaL_checklstring(L, 1, &len);
    const char *kind = hr_torch_sniff(head, len);
    if (kind) lua_pushstring(L, kind);
    else lua_pushnil(L);
    return 1;
}

static const luaL_Reg torch_functions[] = {
    {"load_torch", l_load_torch},
    {"torch_sniff", l_torch_sniff},
    {NULL, NULL},
};

void hr_lua_open_torchpt(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, torch_functions, 0);
    lua_pop(L, 1);
}
