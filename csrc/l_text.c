/* l_text.c — Lua bindings of the text preprocessing (hr_text.h), in the table hero.core.text.
 * The user-facing API (hero.text.Tokenizer, prepare_subtitle, ...) is lua/hero/text/init.lua. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_text.h"
#include "l_common.h"

#define BPE_MT "hero.text.BPE"

typedef struct {
    hr_bpe *b;        /* NULL once freed */
    hr_bpe *deferred; /* freed from a finalizer: released by the box's own __gc */
} bpe_box;

static hr_bpe *check_bpe(lua_State *L, int idx, const char *op)
{
    bpe_box *box = luaL_testudata(L, idx, BPE_MT);
    if (!box) luaL_error(L, "%s: argument #%d: expected a BPE tokenizer, got %s", op, idx, luaL_typename(L, idx));
    if (!box->b) luaL_error(L, "%s: the tokenizer was freed", op);
    return box->b;
}

/* tokenizer:free(): from a finalizer, the memory waits for __gc, since a binding may be tokenizing
 * with it (hr_lua_in_finalizer) */
static int l_bpe_free(lua_State *L)
{
    bpe_box *box = luaL_checkudata(L, 1, BPE_MT);
    HR_LUA_RELEASE_OR_DEFER(L, box, b, hr_bpe_free);
    return 0;
}

static int l_bpe_gc(lua_State *L)
{
    bpe_box *box = luaL_checkudata(L, 1, BPE_MT);
    HR_LUA_RELEASE_ALL(box, b, hr_bpe_free);
    return 0;
}

static int l_bpe_load(lua_State *L)
{
    const char *vocab = hr_lua_check_path(L, 1, "bpe_load");
    const char *merges = hr_lua_check_path(L, 2, "bpe_load");
    bpe_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->b = NULL;
    box->deferred = NULL;
    luaL_setmetatable(L, BPE_MT);
    HR_LUA_RETRY(L, box->b, hr_bpe_load(vocab, merges));
    if (!box->b) return hr_lua_error(L, "Tokenizer.from_files");
    return 1;
}

static int l_bpe_set_specials(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "set_specials");
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)(lua_Integer)lua_rawlen(L, 2);
    if (n > 1024) return luaL_error(L, "set_specials: at most 1024 special tokens, got %d", n);
    const char **toks = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    size_t *lens = lua_newuserdatauv(L, sizeof(size_t) * (size_t)(n + 1), 0);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "set_specials: special token #%d is a %s, not a string", i + 1, luaL_typename(L, -1));
        toks[i] = lua_tolstring(L, -1, &lens[i]);
        lua_pop(L, 1); /* the string stays alive in the table at 2 */
    }
    if (hr_bpe_set_specials(b, toks, lens, n)) return hr_lua_error(L, "set_specials");
    return 0;
}

static unsigned check_flags(lua_State *L, int idx)
{
    lua_Integer f = luaL_optinteger(L, idx, 0);
    if (f < 0 || f > (HR_BPE_STRIP | HR_BPE_SPECIALS)) luaL_error(L, "encode: bad flags %d", (int)f);
    return (unsigned)f;
}

/* Encodes into a userdata-free buffer; on error frees it and raises. */
static void encode_or_raise(lua_State *L, hr_bpe *b, const char *text, size_t len, unsigned flags, hr_bpe_ids *ids,
                            const char *op)
{
    int rc;
    HR_LUA_RETRY_INT(L, rc, hr_bpe_encode(b, text, len, flags, ids));
    if (rc) {
        hr_bpe_ids_free(ids);
        hr_lua_error(L, op);
    }
}

static void push_ids(lua_State *L, const hr_bpe_ids *ids)
{
    lua_createtable(L, (int)ids->n, 0);
    for (size_t i = 0; i < ids->n; i++) {
        lua_pushinteger(L, (lua_Integer)ids->ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static int l_bpe_encode(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "encode");
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    unsigned flags = check_flags(L, 3);
    hr_bpe_ids ids = {0};
    encode_or_raise(L, b, text, len, flags, &ids, "encode");
    push_ids(L, &ids);
    hr_bpe_ids_free(&ids);
    return 1;
}

static int l_bpe_encode_tensor(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "encode_tensor");
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    unsigned flags = check_flags(L, 3);
    hr_bpe_ids ids = {0};
    encode_or_raise(L, b, text, len, flags, &ids, "encode_tensor");
    int64_t n = (int64_t)ids.n;
    hr_tensor *t;
    HR_LUA_RETRY(L, t, hr_tensor_empty(1, &n, HR_I64, hr_cpu()));
    if (!t) {
        hr_bpe_ids_free(&ids);
        return hr_lua_error(L, "encode_tensor");
    }
    if (n) memcpy(hr_tensor_data(t), ids.ids, (size_t)n * sizeof(int64_t));
    hr_bpe_ids_free(&ids);
    hr_lua_push_tensor(L, t);
    return 1;
}

/* encode_batch: the texts are encoded on the thread pool; each slot keeps its own result or error. */
typedef struct {
    hr_bpe *b;
    unsigned flags;
    const char **texts;
    size_t *lens;
    hr_bpe_ids *out;
    char **errors;
} batch_ctx;

static char oom_marker[] = "";

static void batch_run(void *vctx, int64_t begin, int64_t end)
{
    batch_ctx *c = vctx;
    for (int64_t i = begin; i < end; i++) {
        if (hr_bpe_encode(c->b, c->texts[i], c->lens[i], c->flags, &c->out[i]) == 0) continue;
        const char *msg = hr_last_error();
        size_t n = strlen(msg) + 1;
        c->errors[i] = malloc(n);
        if (c->errors[i]) memcpy(c->errors[i], msg, n);
        else c->errors[i] = oom_marker; /* the failure stays known, its message is lost */
    }
}

static int l_bpe_encode_batch(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "encode_batch");
    luaL_checktype(L, 2, LUA_TTABLE);
    unsigned flags = check_flags(L, 3);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    /* Lua owns the scratch arrays (userdata), so a Lua error below leaks nothing but the ids,
     * which are freed before any error is raised. */
    const char **texts = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    size_t *lens = lua_newuserdatauv(L, sizeof(size_t) * (size_t)(n + 1), 0);
    hr_bpe_ids *out = lua_newuserdatauv(L, sizeof(hr_bpe_ids) * (size_t)(n + 1), 0);
    char **errors = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "encode_batch: text #%d is a %s, not a string", (int)i + 1, luaL_typename(L, -1));
        texts[i] = lua_tolstring(L, -1, &lens[i]);
        lua_pop(L, 1);
        memset(&out[i], 0, sizeof out[i]);
        errors[i] = NULL;
    }
    batch_ctx c = {b, flags, texts, lens, out, errors};
    hr_parallel_for((int64_t)n, 16, batch_run, &c);
    lua_Integer bad = -1;
    for (lua_Integer i = 0; i < n; i++)
        if (errors[i] && bad < 0) bad = i;
    if (bad >= 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", errors[bad] != oom_marker ? errors[bad] : "out of memory");
        for (lua_Integer i = 0; i < n; i++) {
            hr_bpe_ids_free(&out[i]);
            if (errors[i] != oom_marker) free(errors[i]);
        }
        return luaL_error(L, "encode_batch: text #%d: %s", (int)bad + 1, msg);
    }
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 0; i < n; i++) {
        push_ids(L, &out[i]);
        hr_bpe_ids_free(&out[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

typedef struct {
    lua_State *L;
    lua_Integer n;
} tok_ctx;

static int push_token(void *vctx, const char *tok, size_t len)
{
    tok_ctx *c = vctx;
    lua_pushlstring(c->L, tok, len);
    lua_rawseti(c->L, -2, ++c->n);
    return 0;
}

static int l_bpe_tokenize(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "tokenize");
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    unsigned flags = check_flags(L, 3);
    lua_newtable(L);
    tok_ctx c = {L, 0};
    if (hr_bpe_tokenize(b, text, len, flags, push_token, &c)) return hr_lua_error(L, "tokenize");
    return 1;
}

static int l_pretokenize(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_newtable(L);
    tok_ctx c = {L, 0};
    if (hr_bpe_pretokenize(text, len, push_token, &c)) return hr_lua_error(L, "pretokenize");
    return 1;
}

/* ids from a Lua array or a 1-D integer tensor, into a Lua-owned scratch array */
static int64_t *check_ids(lua_State *L, int idx, size_t *n, const char *op)
{
    hr_tensor *t = hr_lua_to_tensor(L, idx);
    if (t) {
        t = hr_lua_check_tensor(L, idx, op);
        char desc[96];
        if (hr_tensor_device(t).type != HR_CPU)
            luaL_error(L, "%s: the ids tensor (%s) must be on the CPU", op, hr_tensor_desc(t, desc, sizeof desc));
        if (t->ndim != 1 || !hr_dtype_is_int(t->dtype) || t->dtype == HR_BOOL)
            luaL_error(L, "%s: expected a 1-D integer tensor of ids, got %s", op, hr_tensor_desc(t, desc, sizeof desc));
        *n = (size_t)t->size[0];
        int64_t *ids = lua_newuserdatauv(L, sizeof(int64_t) * (*n + 1), 0);
        const char *base = hr_tensor_data(t);
        size_t es = hr_dtype_size(t->dtype);
        for (size_t i = 0; i < *n; i++) ids[i] = hr_load_i64(base + (int64_t)i * t->stride[0] * (int64_t)es, t->dtype);
        return ids;
    }
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s: argument #%d: expected a table or tensor of ids, got %s", op, idx, luaL_typename(L, idx));
    *n = (size_t)(lua_Integer)lua_rawlen(L, idx);
    int64_t *ids = lua_newuserdatauv(L, sizeof(int64_t) * (*n + 1), 0);
    for (size_t i = 0; i < *n; i++) {
        lua_rawgeti(L, idx, (lua_Integer)i + 1);
        int isnum;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        if (!isnum) luaL_error(L, "%s: id #%d is not an integer (%s)", op, (int)i + 1, luaL_typename(L, -1));
        ids[i] = (int64_t)v;
        lua_pop(L, 1);
    }
    return ids;
}

static int l_bpe_decode(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "decode");
    size_t n;
    int64_t *ids = check_ids(L, 2, &n, "decode");
    bool strict = lua_toboolean(L, 3);
    size_t len;
    char *s;
    HR_LUA_RETRY(L, s, hr_bpe_decode(b, ids, n, strict, &len));
    if (!s) return hr_lua_error(L, "decode");
    lua_pushlstring(L, s, len);
    free(s);
    return 1;
}

static int l_bpe_token_to_id(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "token_to_id");
    size_t len;
    const char *tok = luaL_checklstring(L, 2, &len);
    int64_t id = hr_bpe_token_to_id(b, tok, len);
    if (id < 0) lua_pushnil(L);
    else lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

static int l_bpe_id_to_token(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "id_to_token");
    lua_Integer id = luaL_checkinteger(L, 2);
    size_t len;
    const char *tok = hr_bpe_id_to_token(b, (int64_t)id, &len);
    if (!tok) lua_pushnil(L);
    else lua_pushlstring(L, tok, len);
    return 1;
}

static int l_bpe_info(lua_State *L)
{
    hr_bpe *b = check_bpe(L, 1, "info");
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)hr_bpe_vocab_size(b));
    lua_setfield(L, -2, "vocab_size");
    lua_pushinteger(L, (lua_Integer)hr_bpe_merges_count(b));
    lua_setfield(L, -2, "merges");
    int64_t unk = hr_bpe_unk_id(b);
    if (unk >= 0) {
        lua_pushinteger(L, (lua_Integer)unk);
        lua_setfield(L, -2, "unk_id");
    }
    lua_pushinteger(L, (lua_Integer)hr_bpe_cache_size(b));
    lua_setfield(L, -2, "cached_words");
    return 1;
}

static int l_bpe_cache_clear(lua_State *L)
{
    hr_bpe_cache_clear(check_bpe(L, 1, "cache_clear"));
    return 0;
}

/* ------------------------------------------------------------------ normalisation */

static int push_owned(lua_State *L, char *s, size_t len, const char *op)
{
    if (!s) return hr_lua_error(L, op);
    lua_pushlstring(L, s, len);
    free(s);
    return 1;
}

static int l_html_unescape(lua_State *L)
{
    size_t len, olen = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    char *o;
    HR_LUA_RETRY(L, o, hr_text_html_unescape(s, len, &olen));
    return push_owned(L, o, olen, "html_unescape");
}

static int l_lower(lua_State *L)
{
    size_t len, olen = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    char *o;
    HR_LUA_RETRY(L, o, hr_text_lower(s, len, &olen));
    return push_owned(L, o, olen, "lower");
}

static int l_isupper(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    int r = hr_text_isupper(s, len);
    if (r < 0) return hr_lua_error(L, "isupper");
    lua_pushboolean(L, r);
    return 1;
}

static int l_strip(lua_State *L)
{
    size_t len, lo, hi;
    const char *s = luaL_checklstring(L, 1, &len);
    if (hr_text_strip(s, len, &lo, &hi)) return hr_lua_error(L, "strip");
    lua_pushlstring(L, s + lo, hi - lo);
    return 1;
}

static int l_check_utf8(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (hr_text_check_utf8("check_utf8", s, len)) return hr_lua_error(L, "check_utf8");
    lua_pushboolean(L, 1);
    return 1;
}

void hr_lua_open_text(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg bpe_methods[] = {
        {"encode", l_bpe_encode},
        {"encode_tensor", l_bpe_encode_tensor},
        {"encode_batch", l_bpe_encode_batch},
        {"tokenize", l_bpe_tokenize},
        {"decode", l_bpe_decode},
        {"set_specials", l_bpe_set_specials},
        {"token_to_id", l_bpe_token_to_id},
        {"id_to_token", l_bpe_id_to_token},
        {"info", l_bpe_info},
        {"cache_clear", l_bpe_cache_clear},
        {"free", l_bpe_free},
        {NULL, NULL},
    };
    luaL_newmetatable(L, BPE_MT);
    luaL_newlib(L, bpe_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_bpe_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_bpe_free);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);

    static const luaL_Reg text_fns[] = {
        {"bpe_load", l_bpe_load},
        {"html_unescape", l_html_unescape},
        {"lower", l_lower},
        {"isupper", l_isupper},
        {"strip", l_strip},
        {"check_utf8", l_check_utf8},
        {"pretokenize", l_pretokenize},
        {NULL, NULL},
    };
    luaL_newlib(L, text_fns);
    lua_pushinteger(L, HR_BPE_STRIP);
    lua_setfield(L, -2, "STRIP");
    lua_pushinteger(L, HR_BPE_SPECIALS);
    lua_setfield(L, -2, "SPECIALS");
    lua_pushstring(L, hr_text_unicode_version());
    lua_setfield(L, -2, "unicode_version");
    lua_setfield(L, module_idx, "text");
}
