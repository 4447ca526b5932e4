/* l_random.c — Lua bindings of the random ops and of hero.Generator (a Philox stream: seed and
 * offset). Every op takes an optional `generator=` in its options table; without it the default
 * generator of this Lua state is used (hero.manual_seed reseeds it). */
#include <string.h>

#include "hr_random.h"
#include "l_common.h"

#define HR_GENERATOR_MT "hero.Generator"
#define HR_DEFAULT_GENERATOR_KEY "hero.default_generator"

/* The type of the value at idx for messages, using __name for userdata (hero.Tensor, ...). */
static const char *type_name(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    int t = luaL_getmetafield(L, idx, "__name"); /* pushes nothing when absent */
    if (t == LUA_TSTRING) {
        const char *name = lua_tostring(L, -1);
        lua_pop(L, 1); /* the string stays alive in the metatable */
        return name;
    }
    if (t != LUA_TNIL) lua_pop(L, 1);
    return luaL_typename(L, idx);
}

/* ------------------------------------------------------------------ generators */

static hr_generator *check_generator(lua_State *L, int idx, const char *op)
{
    hr_generator *g = luaL_testudata(L, idx, HR_GENERATOR_MT);
    if (!g) luaL_error(L, "%s: argument #%d: expected a hero.Generator, got %s", op, idx, type_name(L, idx));
    return g;
}

static hr_generator *push_generator(lua_State *L, uint64_t seed)
{
    hr_generator *g = lua_newuserdatauv(L, sizeof *g, 0);
    hr_generator_seed(g, seed);
    luaL_setmetatable(L, HR_GENERATOR_MT);
    return g;
}

static hr_generator *default_generator(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, HR_DEFAULT_GENERATOR_KEY);
    hr_generator *g = luaL_testudata(L, -1, HR_GENERATOR_MT);
    lua_pop(L, 1); /* the registry keeps it alive */
    if (!g) {
        push_generator(L, HR_DEFAULT_SEED);
        g = lua_touserdata(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, HR_DEFAULT_GENERATOR_KEY);
    }
    return g;
}

/* A seed is any Lua integer (or integral float); negative seeds are their 64-bit two's-complement
 * pattern, so get_state() -> set_state() round-trips every seed. */
static uint64_t check_seed(lua_State *L, int idx, const char *op)
{
    int ok;
    lua_Integer v = lua_tointegerx(L, idx, &ok);
    if (!ok || lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: seed must be an integer, got %s", op,
                   lua_type(L, idx) == LUA_TNUMBER ? "a non-integral number" : type_name(L, idx));
    return (uint64_t)v;
}

/* The generator= field of the options table at oi (0: none), or the default generator. */
hr_generator *hr_lua_opt_generator(lua_State *L, int oi, const char *op)
{
    hr_generator *g = NULL;
    if (oi && lua_istable(L, oi)) {
        if (hr_lua_rawfield(L, oi, "generator") != LUA_TNIL) {
            g = luaL_testudata(L, -1, HR_GENERATOR_MT);
            if (!g) luaL_error(L, "%s: option generator must be a hero.Generator, got %s", op, type_name(L, -1));
        }
        lua_pop(L, 1); /* still referenced by the options table */
    }
    return g ? g : default_generator(L);
}

/* hero.Generator([seed]) */
static int l_generator_new(lua_State *L)
{
    uint64_t seed = lua_isnoneornil(L, 1) ? HR_DEFAULT_SEED : check_seed(L, 1, "Generator");
    push_generator(L, seed);
    return 1;
}

static int g_manual_seed(lua_State *L)
{
    hr_generator *g = check_generator(L, 1, "Generator:manual_seed");
    hr_generator_seed(g, check_seed(L, 2, "Generator:manual_seed"));
    lua_settop(L, 1);
    return 1;
}

static int g_initial_seed(lua_State *L)
{
    hr_generator *g = check_generator(L, 1, "Generator:initial_seed");
    lua_pushinteger(L, (lua_Integer)g->seed);
    return 1;
}

static void push_state(lua_State *L, const hr_generator *g)
{
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)g->seed);
    lua_setfield(L, -2, "seed");
    lua_pushinteger(L, (lua_Integer)g->offset);
    lua_setfield(L, -2, "offset");
}

static void set_state(lua_State *L, hr_generator *g, int idx, const char *op)
{
    if (!lua_istable(L, idx)) luaL_error(L, "%s: expected a state table {seed=, offset=}, got %s", op, type_name(L, idx));
    lua_Integer v[2];
    const char *fields[2] = {"seed", "offset"};
    for (int i = 0; i < 2; i++) {
        hr_lua_rawfield(L, idx, fields[i]);
        int ok;
        v[i] = lua_tointegerx(L, -1, &ok);
        if (!ok || lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "%s: state field %s must be an integer, got %s", op, fields[i], type_name(L, -1));
        lua_pop(L, 1);
    }
    g->seed = (uint64_t)v[0];
    g->offset = (uint64_t)v[1];
}

static int g_get_state(lua_State *L)
{
    push_state(L, check_generator(L, 1, "Generator:get_state"));
    return 1;
}

static int g_set_state(lua_State *L)
{
    hr_generator *g = check_generator(L, 1, "Generator:set_state");
    set_state(L, g, 2, "Generator:set_state");
    lua_settop(L, 1);
    return 1;
}

static int g_tostring(lua_State *L)
{
    hr_generator *g = check_generator(L, 1, "Generator:__tostring");
    lua_pushfstring(L, "hero.Generator(seed=%I, offset=%I)", (lua_Integer)g->seed, (lua_Integer)g->offset);
    return 1;
}

static int l_default_generator(lua_State *L)
{
    default_generator(L);
    lua_getfield(L, LUA_REGISTRYINDEX, HR_DEFAULT_GENERATOR_KEY);
    return 1;
}

/* hero.manual_seed(n): reseeds the default generator (offset 0) and returns it. */
static int l_manual_seed(lua_State *L)
{
    uint64_t seed = check_seed(L, 1, "manual_seed");
    hr_generator_seed(default_generator(L), seed);
    return l_default_generator(L);
}

static int l_initial_seed(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)default_generator(L)->seed);
    return 1;
}

static int l_get_rng_state(lua_State *L)
{
    push_state(L, default_generator(L));
    return 1;
}

static int l_set_rng_state(lua_State *L)
{
    set_state(L, default_generator(L), 1, "set_rng_state");
    return 0;
}

/* hero.philox4x32_10({c0, c1, c2, c3}, {k0, k1}) -> {r0, r1, r2, r3}: the raw block function. */
static void read_words(lua_State *L, int idx, uint32_t *w, int n, const char *what)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    if ((lua_Integer)lua_rawlen(L, idx) != n) luaL_error(L, "philox4x32_10: %s must have %d words", what, n);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        int ok;
        lua_Integer v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < 0 || v > 0xffffffffLL)
            luaL_error(L, "philox4x32_10: %s word %d must be an integer in [0, 2^32)", what, i + 1);
        w[i] = (uint32_t)v;
        lua_pop(L, 1);
    }
}

static int l_philox(lua_State *L)
{
    uint32_t ctr[4], key[2], out[4];
    read_words(L, 1, ctr, 4, "counter");
    read_words(L, 2, key, 2, "key");
    hr_philox4x32_10(ctr, key, out);
    lua_createtable(L, 4, 0);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, (lua_Integer)out[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ------------------------------------------------------------------ argument helpers */

/* The index of a trailing options table (0 when the last argument is not a table). */
static int opts_index(lua_State *L, int first)
{
    int top = lua_gettop(L);
    return (top >= first && lua_istable(L, top)) ? top : 0;
}

/* Shape from idx on: a table, or integers up to the options table. Rejects negative sizes. */
static int read_shape(lua_State *L, int idx, int *oi, int64_t *size, const char *op)
{
    int ndim;
    /* A table at idx is the shape unless it is the options table (no array part) and nothing follows. */
    if (lua_istable(L, idx) && (*oi != idx || (lua_Integer)lua_rawlen(L, idx) > 0)) {
        ndim = hr_lua_check_shape(L, idx, size, op);
        if (*oi == idx) *oi = 0;
    } else {
        ndim = hr_lua_check_shape(L, idx, size, op);
    }
    for (int i = 0; i < ndim; i++)
        if (size[i] < 0) luaL_error(L, "%s: negative size %d in dimension %d", op, (int)size[i], i + 1);
    return ndim;
}

static hr_tensor *new_tensor(lua_State *L, int ndim, const int64_t *size, hr_dtype dt, hr_device dev, const char *op)
{
    hr_tensor *t;
    HR_LUA_RETRY(L, t, hr_tensor_empty(ndim, size, dt, dev));
    if (!t) hr_lua_error(L, op);
    hr_lua_push_tensor(L, t); /* owned by the userdata from here on, so errors below cannot leak it */
    return t;
}

static void need_float(lua_State *L, hr_dtype dt, const char *op)
{
    if (!hr_dtype_is_float(dt))
        luaL_error(L, "%s: dtype %s is not a floating-point type (use f32, f64, bf16 or f16)", op, hr_dtype_name(dt));
}

/* Raises the core's error under the name the user called: the core names its own functions
 * (uniform_, randint, ...), which is not what hero.rand or t:random_ users wrote. */
static int check_rc(lua_State *L, int rc, const char *op)
{
    if (!rc) return 1;
    static const char *const core_ops[] = {"uniform_", "normal_", "randint", "randperm", "bernoulli_", "dropout_mask"};
    const char *msg = hr_last_error();
    for (size_t i = 0; i < sizeof core_ops / sizeof core_ops[0]; i++) {
        size_t n = strlen(core_ops[i]);
        if (strncmp(msg, core_ops[i], n) == 0 && msg[n] == ':' && msg[n + 1] == ' ')
            return luaL_error(L, "%s: %s", op, msg + n + 2);
    }
    return hr_lua_error(L, op);
}


/* ------------------------------------------------------------------ creation */

/* rand / randn (shape..., opts) */
static int make_float(lua_State *L, const char *op, bool normal)
{
    int oi = opts_index(L, 1);
    int64_t size[HR_MAX_DIMS];
    int ndim = read_shape(L, 1, &oi, size, op);
    hr_dtype dt = HR_F32;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, true, op);
    need_float(L, dt, op);
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    hr_tensor *t = new_tensor(L, ndim, size, dt, dev, op);
    return check_rc(L, normal ? hr_random_normal_(g, t, 0, 1) : hr_random_uniform_(g, t, 0, 1), op);
}

static int l_rand(lua_State *L) { return make_float(L, "rand", false); }
static int l_randn(lua_State *L) { return make_float(L, "randn", true); }

/* rand_like / randn_like (t, opts): t's shape, dtype and device unless opts say otherwise. */
static int make_float_like(lua_State *L, const char *op, bool normal)
{
    hr_tensor *src = hr_lua_check_tensor(L, 1, op);
    int oi = hr_lua_opts_arg(L, 2, op);
    hr_dtype dt = src->dtype;
    hr_device dev = hr_tensor_device(src);
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, true, op);
    need_float(L, dt, op);
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    hr_tensor *t = new_tensor(L, src->ndim, src->size, dt, dev, op);
    return check_rc(L, normal ? hr_random_normal_(g, t, 0, 1) : hr_random_uniform_(g, t, 0, 1), op);
}

static int l_rand_like(lua_State *L) { return make_float_like(L, "rand_like", false); }
static int l_randn_like(lua_State *L) { return make_float_like(L, "randn_like", true); }

static lua_Integer check_int_arg(lua_State *L, int idx, const char *op, const char *name)
{
    int ok;
    lua_Integer v = lua_tointegerx(L, idx, &ok);
    if (!ok || lua_type(L, idx) != LUA_TNUMBER)
        luaL_error(L, "%s: %s must be an integer, got %s", op, name,
                   lua_type(L, idx) == LUA_TNUMBER ? "a non-integral number" : type_name(L, idx));
    return v;
}

/* randint(low, high, shape..., opts) or randint(high, shape, opts); high is exclusive. */
static int l_randint(lua_State *L)
{
    const char *op = "randint";
    int oi = opts_index(L, 2);
    lua_Integer low = 0, high;
    int shape_idx;
    if (lua_istable(L, 2)) {
        high = check_int_arg(L, 1, op, "high");
        shape_idx = 2;
    } else {
        low = check_int_arg(L, 1, op, "low");
        high = check_int_arg(L, 2, op, "high");
        shape_idx = 3;
    }
    if (low >= high)
        luaL_error(L, "%s: expected low < high (high is exclusive), got low=%I high=%I", op, low, high);
    if (lua_isnoneornil(L, shape_idx)) luaL_error(L, "%s: missing the shape (e.g. randint(0, 10, {2, 3}))", op);
    int64_t size[HR_MAX_DIMS];
    int ndim = read_shape(L, shape_idx, &oi, size, op);
    hr_dtype dt = HR_I64;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, true, op);
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    hr_tensor *t = new_tensor(L, ndim, size, dt, dev, op);
    return check_rc(L, hr_random_randint_(g, t, low, high), op);
}

/* randperm(n, opts) -> a random permutation of 0..n-1 (0-based values), i64 by default. */
static int l_randperm(lua_State *L)
{
    const char *op = "randperm";
    lua_Integer n = check_int_arg(L, 1, op, "n");
    if (n < 0) luaL_error(L, "%s: n must be >= 0, got %I", op, n);
    int oi = hr_lua_opts_arg(L, 2, op);
    hr_dtype dt = HR_I64;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, true, op);
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    int64_t size = n;
    hr_tensor *t = new_tensor(L, 1, &size, dt, dev, op);
    return check_rc(L, hr_random_randperm_(g, t), op);
}

static double check_probability(lua_State *L, int idx, const char *op)
{
    double p = luaL_checknumber(L, idx);
    if (!(p >= 0 && p <= 1)) luaL_error(L, "%s: expected p in [0, 1], got %f", op, p);
    return p;
}

/* bernoulli(p, [shape...], opts): p a number (f32 result of the given shape, a scalar without one)
 * or a tensor of probabilities (result of p's float dtype, or f32, and p's shape unless a shape
 * is given that p broadcasts to). */
static int l_bernoulli(lua_State *L)
{
    const char *op = "bernoulli";
    int oi = opts_index(L, 2);
    hr_tensor *pt = lua_isuserdata(L, 1) ? hr_lua_check_tensor(L, 1, op) : NULL; /* raises for freed/foreign */
    int64_t size[HR_MAX_DIMS];
    int ndim;
    hr_dtype dt = HR_F32;
    hr_device dev = hr_cpu();
    double p = 0;
    if (pt) {
        dt = hr_dtype_is_float(pt->dtype) ? pt->dtype : HR_F32;
        dev = hr_tensor_device(pt);
    } else {
        if (lua_type(L, 1) != LUA_TNUMBER)
            luaL_error(L, "%s: argument #1: expected a probability (number) or a tensor of probabilities, got %s", op,
                       type_name(L, 1));
        p = check_probability(L, 1, op);
    }
    if (lua_isnoneornil(L, 2) || (oi == 2 && (lua_Integer)lua_rawlen(L, 2) == 0)) {
        if (pt) {
            ndim = pt->ndim;
            memcpy(size, pt->size, sizeof size);
        } else {
            ndim = 0;
        }
    } else {
        ndim = read_shape(L, 2, &oi, size, op);
    }
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, true, op);
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    hr_tensor *t = new_tensor(L, ndim, size, dt, dev, op);
    return check_rc(L, pt ? hr_random_bernoulli_tensor_(g, t, pt) : hr_random_bernoulli_(g, t, p), op);
}

/* dropout_mask(shape, p, opts): 1 where an element is kept (u >= p), else 0; f32 by default. */
static int l_dropout_mask(lua_State *L)
{
    const char *op = "dropout_mask";
    if (!lua_istable(L, 1)) luaL_error(L, "%s: argument #1 must be a shape table such as {2, 3}", op);
    int64_t size[HR_MAX_DIMS];
    int none = 0;
    int ndim = read_shape(L, 1, &none, size, op);
    double p = check_probability(L, 2, op);
    int oi = hr_lua_opts_arg(L, 3, op);
    hr_dtype dt = HR_F32;
    hr_device dev = hr_cpu();
    hr_lua_opt_dtype_device(L, oi, &dt, &dev, true, op);
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    hr_tensor *t = new_tensor(L, ndim, size, dt, dev, op);
    return check_rc(L, hr_random_dropout_mask_(g, t, p), op);
}

/* ------------------------------------------------------------------ in-place methods */

static double opt_number(lua_State *L, int idx, int oi, double def)
{
    if (idx == oi || lua_isnoneornil(L, idx)) return def;
    return luaL_checknumber(L, idx);
}

/* t:uniform_([from=0, to=1], [opts]) */
static int t_uniform_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "uniform_");
    hr_lua_check_inplace(L, t, "uniform_"); /* as any write: a leaf or graph tensor is refused */
    int oi = opts_index(L, 2);
    double a = opt_number(L, 2, oi, 0), b = opt_number(L, 3, oi, 1);
    hr_generator *g = hr_lua_opt_generator(L, oi, "uniform_");
    check_rc(L, hr_random_uniform_(g, t, a, b), "uniform_");
    lua_settop(L, 1);
    return 1;
}

/* t:normal_([mean=0, std=1], [opts]) */
static int t_normal_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "normal_");
    hr_lua_check_inplace(L, t, "normal_");
    int oi = opts_index(L, 2);
    double mean = opt_number(L, 2, oi, 0), std = opt_number(L, 3, oi, 1);
    hr_generator *g = hr_lua_opt_generator(L, oi, "normal_");
    check_rc(L, hr_random_normal_(g, t, mean, std), "normal_");
    lua_settop(L, 1);
    return 1;
}

/* t:bernoulli_([p=0.5], [opts]): p a number or a tensor that broadcasts to t. */
static int t_bernoulli_(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "bernoulli_");
    hr_lua_check_inplace(L, t, "bernoulli_");
    int oi = opts_index(L, 2);
    hr_generator *g = hr_lua_opt_generator(L, oi, "bernoulli_");
    int rc;
    if (lua_isuserdata(L, 2)) {
        hr_tensor *p = hr_lua_check_tensor(L, 2, "bernoulli_");
        rc = hr_random_bernoulli_tensor_(g, t, p);
    } else {
        double p = (oi == 2 || lua_isnoneornil(L, 2)) ? 0.5 : check_probability(L, 2, "bernoulli_");
        rc = hr_random_bernoulli_(g, t, p);
    }
    check_rc(L, rc, "bernoulli_");
    lua_settop(L, 1);
    return 1;
}

/* t:random_(low, high, [opts]) or t:random_(high, [opts]): integers in [low, high). */
static int t_random_(lua_State *L)
{
    const char *op = "random_";
    hr_tensor *t = hr_lua_check_tensor(L, 1, op);
    hr_lua_check_writable(L, t, op);
    int oi = opts_index(L, 2);
    lua_Integer low = 0, high;
    if (lua_type(L, 3) == LUA_TNUMBER) {
        low = check_int_arg(L, 2, op, "low");
        high = check_int_arg(L, 3, op, "high");
    } else {
        high = check_int_arg(L, 2, op, "high");
    }
    hr_generator *g = hr_lua_opt_generator(L, oi, op);
    check_rc(L, hr_random_randint_(g, t, low, high), op);
    lua_settop(L, 1);
    return 1;
}

/* ------------------------------------------------------------------ registration */

static const luaL_Reg module_functions[] = {
    {"Generator", l_generator_new},
    {"default_generator", l_default_generator},
    {"manual_seed", l_manual_seed},
    {"initial_seed", l_initial_seed},
    {"get_rng_state", l_get_rng_state},
    {"set_rng_state", l_set_rng_state},
    {"philox4x32_10", l_philox},
    {"rand", l_rand},
    {"randn", l_randn},
    {"rand_like", l_rand_like},
    {"randn_like", l_randn_like},
    {"randint", l_randint},
    {"randperm", l_randperm},
    {"bernoulli", l_bernoulli},
    {"dropout_mask", l_dropout_mask},
    {NULL, NULL},
};

static const luaL_Reg tensor_methods[] = {
    {"uniform_", t_uniform_},
    {"normal_", t_normal_},
    {"bernoulli_", t_bernoulli_},
    {"bernoulli", l_bernoulli},
    {"random_", t_random_},
    {NULL, NULL},
};

static const luaL_Reg generator_methods[] = {
    {"manual_seed", g_manual_seed},
    {"initial_seed", g_initial_seed},
    {"get_state", g_get_state},
    {"set_state", g_set_state},
    {NULL, NULL},
};

void hr_lua_open_random(lua_State *L, int module_idx, int methods_idx)
{
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, module_functions, 0);
    lua_pop(L, 1);
    lua_pushvalue(L, methods_idx);
    luaL_setfuncs(L, tensor_methods, 0);
    lua_pop(L, 1);

    luaL_newmetatable(L, HR_GENERATOR_MT);
    luaL_newlib(L, generator_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, g_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);

    default_generator(L); /* created now, so every op of this state shares one stream */
}
