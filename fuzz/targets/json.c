/* json — hero's JSON reader (json.decode of lua/hero/json.lua, written in Lua): RFC 8259 syntax,
 * UTF-8 and \u escapes with surrogate pairs, number forms, the nesting limit, and the non-standard
 * NaN/Infinity of {allow_nan = true}. Each input gets a fresh Lua state (with a memory limit) into
 * which the module of the source tree (HERO_LUA_DIR, set by fuzz/Makefile) is loaded, so no input can
 * leave anything behind for the next one.
 *
 * A Lua error from decode is a rejection; the harness fails on anything else: an error that is not a
 * string or lacks the "json.decode: " prefix (e.g. a Lua stack overflow instead of the nesting
 * limit), or a decoded value that does not survive encode -> decode unchanged, or whose encoding is
 * not the same twice. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "fuzz.h"

#ifndef HERO_LUA_DIR
#error "HERO_LUA_DIR (the lua/ directory of the source tree) must be defined"
#endif

#define MEM_LIMIT ((size_t)256 << 20)

typedef struct {
    size_t used;
} mem;

/* Lua's allocator with a limit: a huge input fails with Lua's "not enough memory" error. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mem *m = ud;
    if (!ptr) osize = 0;
    if (nsize == 0) {
        free(ptr);
        m->used -= osize;
        return NULL;
    }
    if (nsize > osize && nsize - osize > MEM_LIMIT - m->used) return NULL;
    void *p = realloc(ptr, nsize);
    if (p) m->used = m->used - osize + nsize;
    return p;
}

static const char CHECK[] =
    "local json, text, allow_nan = ...\n"
    "local opts = allow_nan and {allow_nan = true} or nil\n"
    "local function oom(e) return type(e) == 'string' and e:find('not enough memory', 1, true) end\n"
    "local function same(a, b, depth)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) == 'number' then\n"
    "    if math.type(a) ~= math.type(b) then return false end\n"
    "    return a == b or (a ~= a and b ~= b)\n"
    "  end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  if a == json.null or b == json.null then return a == b end\n"
    "  if getmetatable(a) ~= getmetatable(b) or depth > 600 then return false end\n"
    "  local n = 0\n"
    "  for k, v in pairs(a) do\n"
    "    n = n + 1\n"
    "    if b[k] == nil or not same(v, b[k], depth + 1) then return false end\n"
    "  end\n"
    "  for _ in pairs(b) do n = n - 1 end\n"
    "  return n == 0\n"
    "end\n"
    "local ok, v = pcall(json.decode, text, opts)\n"
    "if not ok then\n"
    "  if type(v) ~= 'string' then return 'decode raised a ' .. type(v) .. ', not a message' end\n"
    "  if oom(v) then return nil end\n"
    "  if not v:find('^json%.decode: ') then return 'decode failed without its own message: ' .. v end\n"
    "  return nil\n"
    "end\n"
    "local ok2, s = pcall(json.encode, v, opts)\n"
    "if not ok2 and oom(s) then return nil end\n"
    "if not ok2 then return 'a decoded value does not encode: ' .. tostring(s) end\n"
    "local ok3, w = pcall(json.decode, s, opts)\n"
    "if not ok3 and oom(w) then return nil end\n"
    "if not ok3 then return 'the encoding ' .. s:sub(1, 200) .. ' does not decode: ' .. tostring(w) end\n"
    "if not same(v, w, 0) then return 'decode(encode(v)) differs from v; encode(v) = ' .. s:sub(1, 200) end\n"
    "if json.encode(w, opts) ~= s then return 'encode(decode(encode(v))) differs from encode(v)' end\n"
    "return nil\n";

/* The module and the checker compiled once to Lua bytecode (a plain byte buffer, no Lua state is
 * kept between inputs): loading bytecode into each input's fresh state is several times faster than
 * parsing the source again. */
typedef struct {
    char *b;
    size_t n, cap;
} chunk;
static chunk module_code, check_code;

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    chunk *c = ud;
    if (c->n + sz > c->cap) {
        c->cap = (c->n + sz) * 2;
        c->b = realloc(c->b, c->cap);
        FUZZ_CHECK(c->b != NULL);
    }
    memcpy(c->b + c->n, p, sz);
    c->n += sz;
    return 0;
}

static void compile_once(void)
{
    if (module_code.n) return;
    lua_State *L = luaL_newstate();
    FUZZ_CHECK(L != NULL);
    if (luaL_loadfile(L, HERO_LUA_DIR "/hero/json.lua") != LUA_OK) {
        fprintf(stderr, "fuzz json: cannot load %s: %s\n", HERO_LUA_DIR "/hero/json.lua", lua_tostring(L, -1));
        abort();
    }
    FUZZ_CHECK(lua_dump(L, dump_writer, &module_code, 0) == 0);
    FUZZ_CHECK(luaL_loadbuffer(L, CHECK, sizeof CHECK - 1, "=fuzz-json-check") == LUA_OK);
    FUZZ_CHECK(lua_dump(L, dump_writer, &check_code, 0) == 0);
    lua_close(L);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    compile_once();
    mem m = {0};
    lua_State *L = lua_newstate(limited_alloc, &m);
    FUZZ_CHECK(L != NULL);
    luaL_openlibs(L);
    FUZZ_CHECK(luaL_loadbufferx(L, module_code.b, module_code.n, "@" HERO_LUA_DIR "/hero/json.lua", "b") == LUA_OK);
    FUZZ_CHECK(lua_pcall(L, 0, 1, 0) == LUA_OK && lua_istable(L, -1));
    int json = lua_gettop(L);
    for (int allow_nan = 0; allow_nan <= 1; allow_nan++) {
        FUZZ_CHECK(luaL_loadbufferx(L, check_code.b, check_code.n, "=fuzz-json-check", "b") == LUA_OK);
        lua_pushvalue(L, json);
        lua_pushlstring(L, (const char *)data, size);
        lua_pushboolean(L, allow_nan);
        int rc = lua_pcall(L, 3, 1, 0);
        if (rc == LUA_ERRMEM) break; /* the checker itself ran out of its memory limit */
        if (rc != LUA_OK || !lua_isnil(L, -1)) {
            fprintf(stderr, "fuzz json (allow_nan = %s): %s\n", allow_nan ? "true" : "false",
                    lua_tostring(L, -1) ? lua_tostring(L, -1) : "(an error object that is not a string)");
            abort();
        }
        lua_pop(L, 1);
    }
    lua_close(L);
    return 0;
}
