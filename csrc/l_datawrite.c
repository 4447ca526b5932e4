/*
 * l_datawrite.c — Lua bindings of the database writers: MessagePack encoding of Lua values (tensors
 * as msgpack_numpy arrays), lz4 frame compression, LMDB writer handles and directory operations.
 *
 * Lua values map to MessagePack as hero.data's decoder maps them back: nil and the null marker ->
 * nil, booleans, integers -> int (smallest form), floats -> float64, strings -> str when valid UTF-8
 * (bin otherwise), tensors -> msgpack_numpy maps, tables with the array metatable or with keys
 * exactly 1..n (n >= 1) -> arrays, other tables -> maps. Map keys are written in the order listed
 * by the metatable's __order field when it has one (hero.data.ordered), else sorted: numbers
 * first (ascending), then strings (bytewise).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hr_datawrite.h"
#include "hr_io.h"
#include "l_common.h"

#define WRITER_MT "hero.data.LmdbWriter"
#define BUF_MT "hero.data.mpbuf"
#define REG_NULL "hero.data.null"
#define REG_ARRAY_MT "hero.data.array_mt"
#define MAX_DEPTH 256

/* ------------------------------------------------------------------ encoder state */

typedef struct {
    hr_mp_buf b;
} buf_box;

static int buf_gc(lua_State *L)
{
    buf_box *bb = luaL_checkudata(L, 1, BUF_MT);
    hr_mp_buf_free(&bb->b);
    return 0;
}

typedef struct {
    lua_State *L;
    hr_mp_buf *b;
    int null_idx, amt_idx;
    const char *op;
    /* path of keys down to the value being written, for messages */
    int depth;
    struct {
        bool is_int;
        lua_Integer i;
        const char *s;
    } path[MAX_DEPTH + 1];
} enc_ctx;

static const char *path_str(enc_ctx *c, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "value");
    for (int i = 0; i < c->depth && n < cap; i++) {
        /* deep paths (a cycle) show their first and last levels */
        if (c->depth > 12 && i == 4) {
            n += (size_t)snprintf(buf + n, cap - n, "...(%d levels)...", c->depth - 8);
            i = c->depth - 4;
        }
        if (c->path[i].is_int) n += (size_t)snprintf(buf + n, cap - n, "[%lld]", (long long)c->path[i].i);
        else n += (size_t)snprintf(buf + n, cap - n, ".%.60s", c->path[i].s ? c->path[i].s : "?");
    }
    return buf;
}

static int enc_fail(enc_ctx *c, const char *what)
{
    char p[400];
    return luaL_error(c->L, "%s: %s %s", c->op, path_str(c, p, sizeof p), what);
}

static void enc_check(enc_ctx *c, int rc)
{
    if (rc) hr_lua_error(c->L, c->op);
}

static bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned ch = s[i];
        if (ch < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (ch >= 0xC2 && ch <= 0xDF) n = 1;
        else if (ch == 0xE0) { n = 2; lo = 0xA0; }
        else if (ch == 0xED) { n = 2; hi = 0x9F; }
        else if (ch >= 0xE1 && ch <= 0xEF) n = 2;
        else if (ch == 0xF0) { n = 3; lo = 0x90; }
        else if (ch == 0xF4) { n = 3; hi = 0x8F; }
        else if (ch >= 0xF1 && ch <= 0xF3) n = 3;
        else return false;
        if (len - i - 1 < n) return false;
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return false;
        i += n + 1;
    }
    return true;
}

static void enc_value(enc_ctx *c, int idx);

/* Sort comparison of two keys at stack positions: numbers before strings. */
static int key_less(lua_State *L, int a, int b)
{
    int ta = lua_type(L, a), tb = lua_type(L, b);
    if (ta != tb) return ta == LUA_TNUMBER;
    if (ta == LUA_TNUMBER) return lua_compare(L, a, b, LUA_OPLT);
    size_t la, lb;
    const char *sa = lua_tolstring(L, a, &la), *sb = lua_tolstring(L, b, &lb);
    int r = memcmp(sa, sb, la < lb ? la : lb);
    return r < 0 || (r == 0 && la < lb);
}

/* Writes key (at kidx) then value t[key] (t at tidx). */
static void enc_pair(enc_ctx *c, int tidx, int kidx)
{
    lua_State *L = c->L;
    enc_value(c, kidx);
    lua_pushvalue(L, kidx);
    lua_rawget(L, tidx);
    c->path[c->depth].is_int = lua_type(L, kidx) == LUA_TNUMBER && lua_isinteger(L, kidx);
    c->path[c->depth].i = c->path[c->depth].is_int ? lua_tointeger(L, kidx) : 0;
    c->path[c->depth].s = lua_type(L, kidx) == LUA_TSTRING ? lua_tostring(L, kidx) : NULL;
    c->depth++;
    enc_value(c, lua_gettop(L));
    c->depth--;
    lua_pop(L, 1);
}

static void enc_table(enc_ctx *c, int idx)
{
    lua_State *L = c->L;
    if (c->depth >= MAX_DEPTH) enc_fail(c, "is nested deeper than 256 levels (a table that contains itself?)");
    luaL_checkstack(L, 8, "encoding MessagePack");
    /* Count keys, find whether they are exactly 1..n. */
    size_t count = 0;
    lua_Integer maxn = 0;
    bool all_int = true;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
            lua_Integer k = lua_tointeger(L, -1);
            if (k > maxn) maxn = k;
        } else {
            all_int = false;
        }
    }
    bool marked = false, ordered = false;
    if (lua_getmetatable(L, idx)) {
        marked = lua_rawequal(L, -1, c->amt_idx);
        lua_getfield(L, -1, "__order");
        ordered = lua_istable(L, -1);
        if (ordered) lua_replace(L, -2);
        else lua_pop(L, 2);
    }
    /* Positive integer keys starting at 1 are an array (with holes: a mistake, most likely a nil in
     * a list); other integer keys ({[10] = "x"}), and any table with an __order, are a map, as a
     * Python dict with those keys is written. */
    bool has_first = false;
    if (!marked && !ordered && count > 0 && all_int) {
        has_first = lua_rawgeti(L, idx, 1) != LUA_TNIL;
        lua_pop(L, 1);
    }
    if (marked || has_first) {
        if (!all_int) enc_fail(c, "is marked as an array but has keys other than 1..n");
        if ((size_t)maxn != count) enc_fail(c, "is an array with holes (use hero.data.null for missing values)");
        enc_check(c, hr_mp_put_array(c->b, count));
        for (lua_Integer i = 1; i <= maxn; i++) {
            lua_rawgeti(L, idx, i);
            c->path[c->depth].is_int = true;
            c->path[c->depth].i = i;
            c->depth++;
            enc_value(c, lua_gettop(L));
            c->depth--;
            lua_pop(L, 1);
        }
        return;
    }
    enc_check(c, hr_mp_put_map(c->b, count));
    if (ordered) {
        /* __order lists every key once, in the order to write. */
        int oidx = lua_gettop(L);
        size_t n = (size_t)lua_rawlen(L, oidx);
        if (n != count) {
            char msg[160];
            snprintf(msg, sizeof msg, "has %zu keys but its __order lists %zu", count, n);
            enc_fail(c, msg);
        }
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, oidx, (lua_Integer)i);
            int kidx = lua_gettop(L);
            lua_pushvalue(L, kidx);
            if (lua_rawget(L, idx) == LUA_TNIL) {
                char msg[200];
                snprintf(msg, sizeof msg, "has no key '%.80s' although its __order lists it",
                         luaL_tolstring(L, kidx, NULL));
                enc_fail(c, msg);
            }
            lua_pop(L, 1);
            enc_pair(c, idx, kidx);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        return;
    }
    /* Sorted keys: collect them in a scratch table, insertion sort through the stack-free compare
     * (maps in these databases are small). */
    lua_createtable(L, count > 0x7fffffff ? 0 : (int)count, 0);
    int keys = lua_gettop(L);
    size_t nk = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int kt = lua_type(L, -1);
        if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
            char msg[120];
            snprintf(msg, sizeof msg, "has a %s key; MessagePack maps written by hero take string or number keys",
                     lua_typename(L, kt));
            enc_fail(c, msg);
        }
        if (kt == LUA_TNUMBER && !lua_isinteger(L, -1)) {
            lua_Number x = lua_tonumber(L, -1);
            if (x != x) enc_fail(c, "has a NaN key");
        }
        lua_pushvalue(L, -1);
        lua_rawseti(L, keys, (lua_Integer)++nk);
    }
    for (size_t i = 2; i <= nk; i++) {
        lua_rawgeti(L, keys, (lua_Integer)i);
        size_t j = i;
        while (j > 1) {
            lua_rawgeti(L, keys, (lua_Integer)j - 1);
            int less = key_less(L, -2, -1);
            if (!less) {
                lua_pop(L, 1);
                break;
            }
            lua_rawseti(L, keys, (lua_Integer)j);
            j--;
        }
        lua_rawseti(L, keys, (lua_Integer)j);
    }
    for (size_t i = 1; i <= nk; i++) {
        lua_rawgeti(L, keys, (lua_Integer)i);
        enc_pair(c, idx, lua_gettop(L));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void enc_value(enc_ctx *c, int idx)
{
    lua_State *L = c->L;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: enc_check(c, hr_mp_put_nil(c->b)); return;
    case LUA_TBOOLEAN: enc_check(c, hr_mp_put_bool(c->b, lua_toboolean(L, idx))); return;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) enc_check(c, hr_mp_put_int(c->b, (int64_t)lua_tointeger(L, idx)));
        else enc_check(c, hr_mp_put_float(c->b, (double)lua_tonumber(L, idx)));
        return;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (utf8_valid((const unsigned char *)s, len)) enc_check(c, hr_mp_put_str(c->b, s, len));
        else enc_check(c, hr_mp_put_bin(c->b, s, len));
        return;
    }
    case LUA_TTABLE:
        if (lua_rawequal(L, idx, c->null_idx)) {
            enc_check(c, hr_mp_put_nil(c->b));
            return;
        }
        enc_table(c, idx);
        return;
    case LUA_TUSERDATA: {
        hr_tensor_box *box = luaL_testudata(L, idx, HR_TENSOR_MT);
        if (box) {
            if (!box->t || !box->t->storage) enc_fail(c, "is a freed tensor");
            if (hr_mp_put_ndarray(c->b, box->t)) {
                char p[400];
                hr_error_prefix("%s", path_str(c, p, sizeof p));
                hr_lua_error(L, c->op);
            }
            return;
        }
        break;
    }
    default: break;
    }
    char msg[120];
    snprintf(msg, sizeof msg, "is a %s, which MessagePack cannot hold", luaL_typename(L, idx));
    enc_fail(c, msg);
}

/* encode_msgpack(value) -> bytes */
static int l_encode_msgpack(lua_State *L)
{
    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_NULL);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_ARRAY_MT);
    buf_box *bb = lua_newuserdatauv(L, sizeof *bb, 0);
    memset(bb, 0, sizeof *bb);
    luaL_setmetatable(L, BUF_MT);
    /* The state lives in a userdata so a Lua error raised mid-way leaks nothing. */
    enc_ctx *cc = lua_newuserdatauv(L, sizeof *cc, 0);
    memset(cc, 0, sizeof *cc);
    cc->L = L;
    cc->b = &bb->b;
    cc->null_idx = 2;
    cc->amt_idx = 3;
    cc->op = "encode_msgpack";
    enc_value(cc, 1);
    lua_pushlstring(L, (const char *)bb->b.p, bb->b.len);
    hr_mp_buf_free(&bb->b);
    return 1;
}

/* ------------------------------------------------------------------ lz4 */

static int l_lz4_frame_compress(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer level = luaL_optinteger(L, 2, 0);
    if (level < 0 || level > 12) return luaL_error(L, "lz4_frame_compress: argument #2: level must be 0..12, got %I", level);
    /* The compressed bytes sit in a GC-guarded buffer while lua_pushlstring (which may raise) copies them. */
    buf_box *bb = lua_newuserdatauv(L, sizeof *bb, 0);
    memset(bb, 0, sizeof *bb);
    luaL_setmetatable(L, BUF_MT);
    unsigned char *out;
    size_t olen;
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_lz4_frame_compress(s, len, (int)level, &out, &olen));
    if (rc) return hr_lua_error(L, "lz4_frame_compress");
    bb->b.p = out;
    bb->b.len = bb->b.cap = olen;
    lua_pushlstring(L, (const char *)out, olen);
    hr_mp_buf_free(&bb->b);
    return 1;
}

/* ------------------------------------------------------------------ LMDB writer */

typedef struct {
    hr_lmdb_writer *w;
} writer_box;

static hr_lmdb_writer *check_writer(lua_State *L, const char *op)
{
    writer_box *b = luaL_checkudata(L, 1, WRITER_MT);
    if (!b->w) {
        lua_getiuservalue(L, 1, 1);
        luaL_error(L, "%s: the LMDB writer of '%s' is closed", op, lua_tostring(L, -1));
    }
    return b->w;
}

static int l_lmdb_writer(lua_State *L)
{
    const char *dir = hr_lua_check_path(L, 1, "lmdb_writer");
    lua_Integer map = luaL_optinteger(L, 2, 0);
    if (map < 0) return luaL_error(L, "lmdb_writer: argument #2: map_size must be >= 0, got %I", map);
    writer_box *b = lua_newuserdatauv(L, sizeof *b, 1);
    b->w = NULL;
    luaL_setmetatable(L, WRITER_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    HR_LUA_RETRY(L, b->w, hr_lmdb_writer_open(dir, (size_t)map));
    if (!b->w) return hr_lua_error(L, "lmdb_writer");
    return 1;
}

/* w:put(key, value [, overwrite]) */
static int w_put(lua_State *L)
{
    size_t kl, vl;
    /* the arguments first: converting a number allocates, which may run a finalizer that aborts the
     * writer; nothing runs Lua between taking the handle and using it */
    const char *k = luaL_checklstring(L, 2, &kl);
    const char *v = luaL_checklstring(L, 3, &vl);
    bool overwrite = lua_toboolean(L, 4);
    hr_lmdb_writer *w = check_writer(L, "LmdbWriter:put");
    if (hr_lmdb_writer_put(w, k, kl, v, vl, overwrite)) return hr_lua_error(L, "LmdbWriter:put");
    return 0;
}

static int w_count(lua_State *L)
{
    hr_lmdb_writer *w = check_writer(L, "LmdbWriter:count");
    lua_pushinteger(L, (lua_Integer)hr_lmdb_writer_count(w));
    return 1;
}

static int w_map_size(lua_State *L)
{
    hr_lmdb_writer *w = check_writer(L, "LmdbWriter:map_size");
    lua_pushinteger(L, (lua_Integer)hr_lmdb_writer_map_size(w));
    return 1;
}

static int w_finish(lua_State *L)
{
    hr_lmdb_writer *w = check_writer(L, "LmdbWriter:finish");
    writer_box *b = lua_touserdata(L, 1);
    b->w = NULL;
    if (hr_lmdb_writer_finish(w)) return hr_lua_error(L, "LmdbWriter:finish");
    return 0;
}

static int w_abort(lua_State *L)
{
    writer_box *b = luaL_checkudata(L, 1, WRITER_MT);
    hr_lmdb_writer_abort(b->w);
    b->w = NULL;
    return 0;
}

static int w_closed(lua_State *L)
{
    writer_box *b = luaL_checkudata(L, 1, WRITER_MT);
    lua_pushboolean(L, b->w == NULL);
    return 1;
}

static int w_tostring(lua_State *L)
{
    writer_box *b = luaL_checkudata(L, 1, WRITER_MT);
    lua_getiuservalue(L, 1, 1);
    lua_pushfstring(L, "hero.data.LmdbWriter('%s'%s)", lua_tostring(L, -1), b->w ? "" : ", closed");
    return 1;
}

/* ------------------------------------------------------------------ directories */

static int l_fs_mkdir(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_mkdir");
    if (hr_dir_create(p, lua_toboolean(L, 2))) return hr_lua_error(L, "fs_mkdir");
    return 0;
}

static int l_fs_rmtree(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_rmtree");
    if (p[0] == 0 || strcmp(p, "/") == 0 || strcmp(p, ".") == 0 || strcmp(p, "..") == 0)
        return luaL_error(L, "fs_rmtree: refusing to remove '%s'", p);
    if (hr_dir_remove_tree(p)) return hr_lua_error(L, "fs_rmtree");
    return 0;
}

static int l_fs_rename(lua_State *L)
{
    const char *a = hr_lua_check_path(L, 1, "fs_rename"), *b = hr_lua_check_path(L, 2, "fs_rename");
    if (hr_path_rename(a, b)) return hr_lua_error(L, "fs_rename");
    return 0;
}

static int l_fs_sync_dir(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_sync_dir");
    if (hr_dir_sync(p)) return hr_lua_error(L, "fs_sync_dir");
    return 0;
}

/* fs_sync(path): fsync of a file (its bytes are on disk) or a directory (its entries are). */
static int l_fs_sync(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_sync");
    if (hr_path_sync(p)) return hr_lua_error(L, "fs_sync");
    return 0;
}

/* fs_write_atomic(path, bytes): path.tmp.<pid>.<n> beside path, fsync, rename over path, fsync of the
 * directory; readers of path see the old complete file or the new one, even after a crash. */
static int l_fs_write_atomic(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_write_atomic");
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    const void *pieces[1] = {data};
    if (hr_io_write_atomic(p, 1, pieces, &len)) return hr_lua_error(L, "fs_write_atomic");
    return 0;
}

/* fs_kind(path) -> "file", "directory" or "other" (a FIFO, a device, a socket), or nil and the
 * reason when there is nothing there: what a path is, before anything opens it (opening a FIFO to
 * read waits for a writer) */
static int l_fs_kind(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_kind");
    struct stat st;
    if (stat(p, &st) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory" : "other");
    return 1;
}

/* fs_read(path) -> the bytes of the regular file at path (anything else, a FIFO included, is refused
 * rather than waited on) */
static int l_fs_read(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_read");
    unsigned char *buf;
    size_t len;
    if (hr_io_read_file(p, &buf, &len)) return hr_lua_error(L, "fs_read");
    /* a Lua out-of-memory error in the push would leak buf once: the file was read whole already */
    lua_pushlstring(L, (const char *)buf, len);
    free(buf);
    return 1;
}

/* fs_listdir(dir) -> {names...} (sorted), {is_dir...} */
static int l_fs_listdir(lua_State *L)
{
    const char *p = hr_lua_check_path(L, 1, "fs_listdir");
    char **names;
    bool *is_dir;
    size_t n;
    if (hr_dir_list(p, &names, &is_dir, &n)) return hr_lua_error(L, "fs_listdir");
    /* The listing is freed right after the tables are built (only an out-of-memory error inside
     * Lua could skip that, leaking a small listing). */
    lua_createtable(L, (int)n, 0);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -3, (lua_Integer)i + 1);
        lua_pushboolean(L, is_dir[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    hr_dir_list_free(names, is_dir, n);
    return 2;
}

void hr_lua_open_datawrite(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    if (luaL_newmetatable(L, BUF_MT)) {
        lua_pushcfunction(L, buf_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    static const luaL_Reg wm[] = {
        {"put", w_put},     {"count", w_count}, {"map_size", w_map_size}, {"finish", w_finish},
        {"abort", w_abort}, {"closed", w_closed}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, WRITER_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, wm, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, w_abort);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, w_abort);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, w_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"encode_msgpack", l_encode_msgpack},
        {"lz4_frame_compress", l_lz4_frame_compress},
        {"lmdb_writer", l_lmdb_writer},
        {"fs_mkdir", l_fs_mkdir},
        {"fs_rmtree", l_fs_rmtree},
        {"fs_rename", l_fs_rename},
        {"fs_sync_dir", l_fs_sync_dir},
        {"fs_sync", l_fs_sync},
        {"fs_write_atomic", l_fs_write_atomic},
        {"fs_read", l_fs_read},
        {"fs_kind", l_fs_kind},
        {"fs_listdir", l_fs_listdir},
        {NULL, NULL},
    };
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}
