/*
 * l_workers.c — hero.core.worker_pool: Lua functions run on worker threads, each with its own
 * lua_State, fed jobs by the main state and answering in submission order.
 *
 *   local pool = hero.core.worker_pool{n = 2, init = {scale = 3}, script = [[
 *     local init, worker = ...               -- the init value (a copy) and the worker number 1..n
 *     function produce(job) return job * init.scale end   -- or: return function(job) ... end
 *   ]]}
 *   pool:submit(1); pool:submit(2)
 *   print(pool:get(), pool:get())           -- 3  6, always in submission order
 *   pool:close()                            -- also done by __gc / __close
 *
 * A Lua state is not thread-safe, so every worker has its own (luaL_newstate + the standard
 * libraries + the submitting state's package.path/cpath, so `require "hero"` works there) and
 * values cross states by serialization: nil, booleans, integers, floats, strings, tables
 * (recursively, keeping shared and cyclic references, dropping metatables except hero.json's
 * array marker, with hero.json.null kept as the marker of the receiving state) and CPU tensors.
 *
 * Tensors: the sending thread copies the tensor into a fresh contiguous storage and the message
 * owns the only reference to it; the receiving thread wraps that storage in a new tensor without
 * copying. A storage therefore belongs to one thread at a time (the hand-over goes through the
 * queue's mutex), so the core's non-atomic refcounts stay correct; the receiving state accounts
 * the bytes to its own GC (hr_lua_account is per state). Autograd information is not sent.
 *
 * With hand_over = true, a result's tensor that is the only user of its storage (contiguous over
 * all of it, no other tensor or view on it, no autograd state) is not copied: the message takes
 * the storage and the worker's tensor object is freed (using it again there is an error). A
 * PrefetchLoader batch is ~100 MiB of new tensors per job, which the copy wrote a second time.
 * Only for a produce that builds its result afresh and keeps no reference to it: a tensor also
 * held elsewhere in the worker's Lua state (a cache, a dataset's own tensor returned as it is)
 * would be freed there. Device tensors are handed over this way only (a batch a worker uploaded
 * with hero.cuda.upload_async); one that cannot be handed over is an error.
 *
 * Errors inside produce (or a result that cannot be sent) are caught in the worker with the
 * worker's traceback and raised by the :get() that collects that job; the pool stays usable.
 * :close() stops the workers: jobs not yet started are dropped, running ones finish first, then
 * the threads are joined and their states closed.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "hr_queue.h"
#include "l_common.h"

#define POOL_MT "hero.WorkerPool"
#define MSG_GUARD_MT "hero.WorkerPool.message"
#define PRODUCE_KEY "hero.worker.produce"
/* hero.json's markers, registered by hero.data (l_data.c keeps them under these keys). */
#define REG_NULL "hero.data.null"
#define REG_ARRAY_MT "hero.data.array_mt"

#define MAX_WORKERS 256
#define MAX_DEPTH 200

/* ------------------------------------------------------------------ messages */

enum { T_NIL = 0, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_TABLE, T_END, T_REF, T_TENSOR, T_NULL };
enum { MSG_VALUE = 0, MSG_ERROR = 1 };

/* A serialized value (or an error text), with the storages of its tensors (one reference each). */
typedef struct {
    int kind;
    int worker; /* results: the worker that produced it (1-based) */
    unsigned char *buf;
    size_t len, cap;
    hr_storage **stor;
    int nstor, capstor;
} wmsg;

static void msg_free(wmsg *m)
{
    if (!m) return;
    for (int i = 0; i < m->nstor; i++)
        if (m->stor[i]) hr_storage_release(m->stor[i]);
    free(m->stor);
    free(m->buf);
    free(m);
}

static void msg_free_v(void *p) { msg_free(p); }

/* A userdata owning a message until it is handed over, so a Lua error while a message is built
 * or read never leaks it. */
typedef struct {
    wmsg *m;
} msg_guard;

static int guard_gc(lua_State *L)
{
    msg_guard *g = luaL_checkudata(L, 1, MSG_GUARD_MT);
    msg_free(g->m);
    g->m = NULL;
    return 0;
}

static msg_guard *push_guard(lua_State *L, wmsg *m)
{
    msg_guard *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->m = m;
    if (luaL_newmetatable(L, MSG_GUARD_MT)) {
        lua_pushcfunction(L, guard_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return g;
}

/* A new empty message owned by a guard pushed on the stack. */
static msg_guard *new_guarded_msg(lua_State *L, const char *op)
{
    msg_guard *g = push_guard(L, NULL);
    g->m = calloc(1, sizeof *g->m);
    if (!g->m) luaL_error(L, "%s: out of memory", op);
    return g;
}

/* ------------------------------------------------------------------ encoding */

typedef struct {
    lua_State *L;
    wmsg *m;
    const char *op;
    bool hand_over;    /* tensors that alone use their storage are moved, not copied */
    int memo;          /* stack index: table/tensor -> object number */
    int null_idx;      /* stack index of hero.json.null (nil when unregistered) */
    int array_mt_idx;  /* stack index of hero.json.array_mt (nil when unregistered) */
    int nobj;
    int depth;
    int keys[MAX_DEPTH]; /* stack indices of the keys leading to the value being encoded */
} encoder;

/* Where in the value the encoder is, for error messages: "init.videos.x[2]" style. */
static const char *enc_path(encoder *e)
{
    luaL_Buffer b;
    luaL_buffinit(e->L, &b);
    luaL_addstring(&b, "value");
    for (int i = 0; i < e->depth; i++) {
        int k = e->keys[i];
        if (lua_type(e->L, k) == LUA_TSTRING) {
            luaL_addchar(&b, '.');
            luaL_addstring(&b, lua_tostring(e->L, k));
        } else if (lua_isinteger(e->L, k)) {
            char num[32];
            snprintf(num, sizeof num, "[%lld]", (long long)lua_tointeger(e->L, k));
            luaL_addstring(&b, num);
        } else {
            luaL_addstring(&b, "[?]");
        }
    }
    luaL_pushresult(&b);
    return lua_tostring(e->L, -1);
}

static void put(encoder *e, const void *p, size_t n)
{
    wmsg *m = e->m;
    if (m->cap - m->len < n) {
        size_t cap = m->cap ? m->cap : 256;
        while (cap - m->len < n) cap *= 2;
        unsigned char *nb = realloc(m->buf, cap);
        if (!nb) luaL_error(e->L, "%s: out of memory serializing a value of %I bytes", e->op, (lua_Integer)(m->len + n));
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, p, n);
    m->len += n;
}

static void put_u8(encoder *e, unsigned v)
{
    unsigned char c = (unsigned char)v;
    put(e, &c, 1);
}

static void put_i64(encoder *e, int64_t v) { put(e, &v, sizeof v); }

static void encode(encoder *e, int idx);

/* Object number of the table/tensor at idx if already sent (then writes a reference), else
 * registers it and returns -1. */
static bool encode_ref(encoder *e, int idx)
{
    lua_State *L = e->L;
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->memo) == LUA_TNUMBER) {
        int64_t id = lua_tointeger(L, -1);
        lua_pop(L, 1);
        put_u8(e, T_REF);
        put_i64(e, id);
        return true;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushinteger(L, ++e->nobj);
    lua_rawset(L, e->memo);
    return false;
}

/* Whether t can be handed over as it is: the only tensor on its storage, which it covers exactly
 * (contiguous from its start), with no autograd state to drop. */
static bool can_hand_over(const hr_tensor *t)
{
    const hr_storage *s = t->storage;
    /* host memory of hero's own, or a device block (any thread may free it into the allocator) */
    bool movable = s->kind == HR_STORAGE_HEAP || s->device.type == HR_CUDA;
    if (t->refcount != 1 || s->refcount != 1 || !movable) return false;
    if (t->requires_grad || t->grad || t->grad_fn) return false;
    if (t->offset != 0 || !hr_tensor_is_contiguous(t)) return false;
    return (size_t)hr_tensor_numel(t) * hr_dtype_size(t->dtype) == s->nbytes;
}

static void encode_tensor(encoder *e, int idx, hr_tensor_box *box)
{
    lua_State *L = e->L;
    /* a tensor met again is a reference to the first occurrence, which may have been handed over */
    if (encode_ref(e, idx)) return;
    if (!box->t || !box->t->storage)
        luaL_error(L, "%s: cannot send a freed tensor (at %s)", e->op, enc_path(e));
    hr_tensor *t = box->t;
    /* a device tensor can only move (hand_over, the only user of its whole storage): a copy would
     * be another device allocation made on this thread's behalf */
    if (hr_tensor_device(t).type != HR_CPU && !(e->hand_over && can_hand_over(t))) {
        char dev[16];
        luaL_error(L, "%s: cannot send a %s tensor between states (at %s)%s", e->op,
                   hr_device_str(hr_tensor_device(t), dev, sizeof dev), enc_path(e),
                   e->hand_over ? ": only a device tensor that alone covers its storage is handed over; move it to "
                                  "the cpu first"
                                : "; move it to the cpu first (or hand it over: worker_pool{hand_over = true})");
    }
    wmsg *m = e->m;
    if (m->nstor == m->capstor) {
        int cap = m->capstor ? 2 * m->capstor : 8;
        hr_storage **ns = realloc(m->stor, sizeof *ns * (size_t)cap);
        if (!ns) luaL_error(L, "%s: out of memory", e->op);
        m->stor = ns;
        m->capstor = cap;
    }
    put_u8(e, T_TENSOR);
    put_u8(e, (unsigned)t->dtype);
    put_u8(e, (unsigned)t->ndim);
    for (int d = 0; d < t->ndim; d++) put_i64(e, t->size[d]);
    if (e->hand_over && can_hand_over(t)) {
        /* the storage moves into the message, and the tensor object no longer refers to it */
        hr_storage_retain(t->storage);
        m->stor[m->nstor++] = t->storage;
        box->t = NULL;
        hr_tensor_release(t);
    } else {
        /* A private contiguous copy: its storage has exactly one owner, the message. */
        hr_tensor *c;
        HR_LUA_RETRY(L, c, hr_cast(t, t->dtype));
        if (!c) hr_lua_error(L, e->op);
        hr_storage_retain(c->storage);
        m->stor[m->nstor++] = c->storage;
        hr_tensor_release(c);
    }
    put_i64(e, m->nstor - 1);
}

static void encode_table(encoder *e, int idx)
{
    lua_State *L = e->L;
    if (encode_ref(e, idx)) return;
    if (e->depth >= MAX_DEPTH) luaL_error(L, "%s: value nested deeper than %d levels (at %s)", e->op, MAX_DEPTH,
                                          enc_path(e));
    unsigned flags = 0;
    if (lua_getmetatable(L, idx)) {
        if (lua_rawequal(L, -1, e->array_mt_idx)) flags = 1;
        lua_pop(L, 1);
    }
    put_u8(e, T_TABLE);
    put_u8(e, flags);
    luaL_checkstack(L, 6, "worker_pool: nesting");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int top = lua_gettop(L);
        e->keys[e->depth++] = top - 1;
        encode(e, top - 1);
        encode(e, top);
        e->depth--;
        lua_settop(L, top - 1);
    }
    put_u8(e, T_END);
}

static void encode(encoder *e, int idx)
{
    lua_State *L = e->L;
    int top = lua_gettop(L);
    if (!lua_isnil(L, e->null_idx) && lua_rawequal(L, idx, e->null_idx)) {
        put_u8(e, T_NULL);
        return;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL: put_u8(e, T_NIL); break;
    case LUA_TBOOLEAN: put_u8(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            put_u8(e, T_INT);
            put_i64(e, (int64_t)lua_tointeger(L, idx));
        } else {
            double d = (double)lua_tonumber(L, idx);
            put_u8(e, T_FLOAT);
            put(e, &d, sizeof d);
        }
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_u8(e, T_STR);
        put_i64(e, (int64_t)n);
        put(e, s, n);
        break;
    }
    case LUA_TTABLE: encode_table(e, idx); break;
    case LUA_TUSERDATA: {
        hr_tensor_box *box = luaL_testudata(L, idx, HR_TENSOR_MT);
        if (box) {
            encode_tensor(e, idx, box);
            break;
        }
    }
    /* fall through */
    default:
        luaL_error(L, "%s: cannot send a %s between states (at %s); send plain values and tensors", e->op,
                   luaL_typename(L, idx), enc_path(e));
    }
    lua_settop(L, top);
}

/* Serializes the value at idx; returns the message, owned by a guard left on the stack. */
static wmsg *encode_value(lua_State *L, int idx, const char *op, bool hand_over)
{
    idx = lua_absindex(L, idx);
    msg_guard *g = new_guarded_msg(L, op);
    encoder e = {.L = L, .m = g->m, .op = op, .hand_over = hand_over};
    luaL_checkstack(L, 8, "worker_pool");
    lua_newtable(L);
    e.memo = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_NULL);
    e.null_idx = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_ARRAY_MT);
    e.array_mt_idx = lua_gettop(L);
    encode(&e, idx);
    lua_pop(L, 3);
    return g->m;
}

/* ------------------------------------------------------------------ decoding */

typedef struct {
    lua_State *L;
    wmsg *m;
    size_t pos;
    int objs; /* stack index: object number -> table/tensor */
    int nobj;
    int depth;
} decoder;

static void get(decoder *d, void *p, size_t n)
{
    if (d->m->len - d->pos < n) luaL_error(d->L, "worker_pool: corrupt message (truncated)");
    memcpy(p, d->m->buf + d->pos, n);
    d->pos += n;
}

static unsigned get_u8(decoder *d)
{
    unsigned char c;
    get(d, &c, 1);
    return c;
}

static int64_t get_i64(decoder *d)
{
    int64_t v;
    get(d, &v, sizeof v);
    return v;
}

static void decode(decoder *d);

static void decode_tensor(decoder *d)
{
    lua_State *L = d->L;
    unsigned dt = get_u8(d), ndim = get_u8(d);
    if (dt >= HR_NDTYPES || ndim > HR_MAX_DIMS) luaL_error(L, "worker_pool: corrupt message (tensor header)");
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS];
    for (unsigned i = 0; i < ndim; i++) size[i] = get_i64(d);
    int64_t si = get_i64(d);
    if (si < 0 || si >= d->m->nstor || !d->m->stor[si]) luaL_error(L, "worker_pool: corrupt message (storage)");
    hr_contiguous_strides((int)ndim, size, stride);
    hr_tensor *t = hr_tensor_view_of(d->m->stor[si], (hr_dtype)dt, (int)ndim, size, stride, 0);
    if (!t) hr_lua_error(L, "worker_pool");
    /* The tensor now holds the storage: drop the message's reference so the new tensor is its only
     * owner (and hr_lua_push_tensor accounts its bytes to this state's GC). */
    hr_storage_release(d->m->stor[si]);
    d->m->stor[si] = NULL;
    hr_lua_push_tensor(L, t);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->objs, ++d->nobj);
}

static void decode_table(decoder *d)
{
    lua_State *L = d->L;
    unsigned flags = get_u8(d);
    if (++d->depth > MAX_DEPTH) luaL_error(L, "worker_pool: corrupt message (nesting)");
    luaL_checkstack(L, 6, "worker_pool: nesting");
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->objs, ++d->nobj);
    if (flags & 1) {
        if (lua_getfield(L, LUA_REGISTRYINDEX, REG_ARRAY_MT) == LUA_TTABLE) lua_setmetatable(L, -2);
        else lua_pop(L, 1);
    }
    for (;;) {
        if (d->pos >= d->m->len) luaL_error(L, "worker_pool: corrupt message (unterminated table)");
        if (d->m->buf[d->pos] == T_END) {
            d->pos++;
            break;
        }
        decode(d);
        decode(d);
        if (lua_isnil(L, -2)) luaL_error(L, "worker_pool: a table key is nil here (hero.json.null is not "
                                            "registered in this state: require \"hero.data\")");
        lua_rawset(L, -3);
    }
    d->depth--;
}

static void decode(decoder *d)
{
    lua_State *L = d->L;
    unsigned tag = get_u8(d);
    switch (tag) {
    case T_NIL: lua_pushnil(L); break;
    case T_FALSE: lua_pushboolean(L, 0); break;
    case T_TRUE: lua_pushboolean(L, 1); break;
    case T_INT: lua_pushinteger(L, (lua_Integer)get_i64(d)); break;
    case T_FLOAT: {
        double v;
        get(d, &v, sizeof v);
        lua_pushnumber(L, (lua_Number)v);
        break;
    }
    case T_STR: {
        int64_t n = get_i64(d);
        if (n < 0 || (uint64_t)n > d->m->len - d->pos) luaL_error(L, "worker_pool: corrupt message (string)");
        lua_pushlstring(L, (const char *)d->m->buf + d->pos, (size_t)n);
        d->pos += (size_t)n;
        break;
    }
    case T_TABLE: decode_table(d); break;
    case T_REF: {
        int64_t id = get_i64(d);
        if (id < 1 || id > d->nobj) luaL_error(L, "worker_pool: corrupt message (reference)");
        lua_rawgeti(L, d->objs, id);
        break;
    }
    case T_TENSOR: decode_tensor(d); break;
    case T_NULL: lua_getfield(L, LUA_REGISTRYINDEX, REG_NULL); break;
    default: luaL_error(L, "worker_pool: corrupt message (tag %d)", (int)tag);
    }
}

/* Pushes the value of message m (which stays owned by the caller's guard). */
static void decode_value(lua_State *L, wmsg *m)
{
    luaL_checkstack(L, 8, "worker_pool");
    lua_newtable(L);
    decoder d = {.L = L, .m = m, .objs = lua_gettop(L)};
    decode(&d);
    if (d.pos != m->len) luaL_error(L, "worker_pool: corrupt message (trailing bytes)");
    lua_remove(L, d.objs);
}

/* ------------------------------------------------------------------ the pool */

typedef struct pool_core pool_core;

typedef struct {
    pthread_t thread;
    bool started;
    int index; /* 1-based */
    pool_core *pc;
    wmsg *init; /* the init value for this worker (taken by the worker) */
} worker;

struct pool_core {
    hr_workq *q;
    int n;
    char *script, *chunkname, *path, *cpath;
    size_t script_len;
    pthread_mutex_t lock;
    pthread_cond_t ready_cv;
    int ready;        /* workers done with their start-up (successfully or not) */
    char *init_error; /* the first start-up error, with its traceback */
    bool hand_over;   /* results' tensors are moved when they alone use their storage */
    double waited;    /* seconds :get() spent blocked */
    int64_t collected;
    worker workers[];
};

typedef struct {
    pool_core *pc;
    pool_core *deferred; /* closed from a finalizer: shut down by the box's own __gc */
} pool_box;

static char *dup_str(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* Message handler of the workers' protected calls: the error with the worker's traceback. */
static int traceback_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) msg = lua_tostring(L, -1);
        else msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static void set_path(lua_State *L, const char *field, const char *value)
{
    if (!value) return;
    lua_getglobal(L, "package");
    if (lua_istable(L, -1)) {
        lua_pushstring(L, value);
        lua_setfield(L, -2, field);
    }
    lua_pop(L, 1);
}

/* Worker start-up, in protected mode: libraries, paths, require "hero", the script run with
 * (init, index), and produce stored in the registry. */
static int worker_init(lua_State *L)
{
    worker *w = lua_touserdata(L, 1);
    pool_core *pc = w->pc;
    luaL_openlibs(L);
    set_path(L, "path", pc->path);
    set_path(L, "cpath", pc->cpath);
    /* hero first, so the values decoded below get the tensor metatable and hero.json's markers. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "hero");
    lua_call(L, 1, 0);
    if (luaL_loadbufferx(L, pc->script, pc->script_len, pc->chunkname, "t") != LUA_OK) lua_error(L);
    int chunk = lua_gettop(L);
    wmsg *init = w->init;
    w->init = NULL;
    msg_guard *g = push_guard(L, init);
    if (init) decode_value(L, init);
    else lua_pushnil(L);
    msg_free(g->m);
    g->m = NULL;
    lua_remove(L, -2); /* the guard */
    lua_pushinteger(L, w->index);
    lua_call(L, 2, 1);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        lua_getglobal(L, "produce");
    }
    if (!lua_isfunction(L, -1))
        return luaL_error(L, "worker_pool: the script defines no produce(job) function (define a global produce "
                             "or return a function)");
    lua_setfield(L, LUA_REGISTRYINDEX, PRODUCE_KEY);
    lua_settop(L, chunk - 1);
    return 0;
}

/* One job, in protected mode: decode, produce(job), encode the result into *out. */
static int worker_job(lua_State *L)
{
    wmsg *job = lua_touserdata(L, 1);
    wmsg **out = lua_touserdata(L, 2);
    worker *w = lua_touserdata(L, 3);
    msg_guard *g = push_guard(L, job);
    lua_getfield(L, LUA_REGISTRYINDEX, PRODUCE_KEY);
    decode_value(L, job);
    msg_free(g->m);
    g->m = NULL;
    lua_call(L, 1, 1);
    wmsg *res = encode_value(L, -1, "worker_pool: the result of produce", w->pc->hand_over);
    res->worker = w->index;
    msg_guard *rg = lua_touserdata(L, -1);
    rg->m = NULL; /* handed to the caller */
    *out = res;
    return 0;
}

/* An error result holding text (NULL when even that cannot be allocated: reported as OOM). */
static wmsg *error_msg(const char *text, int worker_index)
{
    wmsg *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    size_t n = strlen(text);
    m->buf = (unsigned char *)dup_str(text, n);
    if (!m->buf) {
        free(m);
        return NULL;
    }
    m->len = n;
    m->kind = MSG_ERROR;
    m->worker = worker_index;
    return m;
}

static void report_ready(pool_core *pc, const char *err)
{
    pthread_mutex_lock(&pc->lock);
    if (err && !pc->init_error) pc->init_error = dup_str(err, strlen(err));
    pc->ready++;
    pthread_cond_broadcast(&pc->ready_cv);
    pthread_mutex_unlock(&pc->lock);
}

/* Worker threads prepare data for the thread that computes. Under Linux's SCHED_BATCH policy a
 * woken worker does not preempt that thread (it waits for its turn instead), so handing a worker
 * a job costs the submitter a futex wake, not a slice of its CPU. Best effort: the policy needs no
 * privilege, and where it is missing the workers simply run as normal threads. */
static void deprioritise_worker_thread(void)
{
#ifdef SCHED_BATCH
    struct sched_param sp = {.sched_priority = 0};
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
#endif
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool_core *pc = w->pc;
    hr_parallel_set_serial(true);
    deprioritise_worker_thread();
    lua_State *L = luaL_newstate();
    if (!L) {
        msg_free(w->init);
        w->init = NULL;
        report_ready(pc, "worker_pool: out of memory creating a worker's Lua state");
        return NULL;
    }
    lua_pushcfunction(L, traceback_msgh);
    int msgh = lua_gettop(L);
    lua_pushcfunction(L, worker_init);
    lua_pushlightuserdata(L, w);
    if (lua_pcall(L, 1, 0, msgh) != LUA_OK) {
        const char *err = lua_tostring(L, -1);
        char buf[64];
        snprintf(buf, sizeof buf, "worker %d: ", w->index);
        lua_pushstring(L, buf);
        lua_pushstring(L, err ? err : "(error)");
        lua_concat(L, 2);
        report_ready(pc, lua_tostring(L, -1));
        msg_free(w->init); /* freed already unless the failure came first */
        w->init = NULL;
        lua_close(L);
        return NULL;
    }
    report_ready(pc, NULL);
    void *job;
    int64_t seq;
    while (hr_workq_take(pc->q, &job, &seq)) {
        wmsg *res = NULL;
        lua_settop(L, msgh);
        lua_pushcfunction(L, worker_job);
        lua_pushlightuserdata(L, job);
        lua_pushlightuserdata(L, &res);
        lua_pushlightuserdata(L, w);
        if (lua_pcall(L, 3, 0, msgh) != LUA_OK) {
            const char *err = lua_tostring(L, -1);
            res = error_msg(err ? err : "(error)", w->index);
        }
        hr_workq_finish(pc->q, seq, res);
    }
    lua_close(L);
    return NULL;
}

/* Stops and joins the workers, then frees everything (the queue frees what is still in it). */
static void pool_destroy(pool_core *pc)
{
    if (!pc) return;
    if (pc->q) hr_workq_close(pc->q);
    for (int i = 0; i < pc->n; i++)
        if (pc->workers[i].started) pthread_join(pc->workers[i].thread, NULL);
    for (int i = 0; i < pc->n; i++) msg_free(pc->workers[i].init);
    hr_workq_free(pc->q);
    pthread_cond_destroy(&pc->ready_cv);
    pthread_mutex_destroy(&pc->lock);
    free(pc->init_error);
    free(pc->script);
    free(pc->chunkname);
    free(pc->path);
    free(pc->cpath);
    free(pc);
}

static pool_core *check_pool(lua_State *L, const char *op)
{
    pool_box *b = luaL_checkudata(L, 1, POOL_MT);
    if (!b->pc) luaL_error(L, "%s: the worker pool is closed", op);
    return b->pc;
}

static char *copy_field_string(lua_State *L, int tbl, const char *field, const char *op)
{
    char *s = NULL;
    if (lua_getfield(L, tbl, field) == LUA_TSTRING) {
        size_t n;
        const char *v = lua_tolstring(L, -1, &n);
        s = dup_str(v, n);
        if (!s) luaL_error(L, "%s: out of memory", op);
    }
    lua_pop(L, 1);
    return s;
}

/* hero.core.worker_pool{n =, script =, init =, name =, hand_over =} */
static int l_worker_pool(lua_State *L)
{
    const char *op = "worker_pool";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    static const char *const known[] = {"n", "script", "init", "name", "hand_over", NULL};
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        bool ok = false;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (int i = 0; known[i]; i++) ok = ok || strcmp(known[i], lua_tostring(L, -2)) == 0;
        if (!ok) {
            lua_pushvalue(L, -2);
            return luaL_error(L, "%s: unknown option '%s' (n, script, init, name, hand_over)", op,
                              luaL_tolstring(L, -1, NULL));
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, 1, "n");
    int isnum;
    lua_Integer n = lua_tointegerx(L, -1, &isnum);
    if (!isnum || n < 1 || n > MAX_WORKERS)
        return luaL_error(L, "%s: opts.n must be an integer in 1..%d, got %s", op, MAX_WORKERS,
                          luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "script") != LUA_TSTRING)
        return luaL_error(L, "%s: opts.script must be a string of Lua code defining produce(job), got %s", op,
                          luaL_typename(L, -1));
    {
        /* compiled here once, so that a script that cannot compile is named at once, in the caller's
         * thread (each worker compiles it again in its own state) */
        size_t len;
        const char *src = lua_tolstring(L, -1, &len);
        if (luaL_loadbufferx(L, src, len, "=worker_pool script", "t") != LUA_OK) {
            bool path_like = len > 4 && len < 4096 && !memchr(src, '\n', len) && strcmp(src + len - 4, ".lua") == 0;
            return luaL_error(L, "%s: opts.script does not compile: %s%s", op, lua_tostring(L, -1),
                              path_like ? " (it looks like a file path: the script is Lua source, such as "
                                          "io.open(path):read(\"a\"))"
                                        : "");
        }
        lua_pop(L, 1); /* the compiled chunk */
    }
    lua_pop(L, 1);
    if (lua_getfield(L, 1, "name") != LUA_TNIL && !lua_isstring(L, -1))
        return luaL_error(L, "%s: opts.name must be a string", op);
    lua_pop(L, 1);
    int hand_over_type = lua_getfield(L, 1, "hand_over");
    if (hand_over_type != LUA_TNIL && hand_over_type != LUA_TBOOLEAN)
        return luaL_error(L, "%s: opts.hand_over must be a boolean, got %s", op, luaL_typename(L, -1));
    bool hand_over = lua_toboolean(L, -1);
    lua_pop(L, 1);

    pool_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->pc = NULL;
    box->deferred = NULL;
    luaL_setmetatable(L, POOL_MT);
    int box_idx = lua_gettop(L);
    pool_core *pc = calloc(1, sizeof *pc + sizeof(worker) * (size_t)n);
    if (!pc) return luaL_error(L, "%s: out of memory", op);
    pthread_mutex_init(&pc->lock, NULL);
    pthread_cond_init(&pc->ready_cv, NULL);
    box->pc = pc; /* from here on __gc cleans up whatever was set */
    pc->n = (int)n;
    pc->hand_over = hand_over;
    for (int i = 0; i < pc->n; i++) {
        pc->workers[i].index = i + 1;
        pc->workers[i].pc = pc;
    }
    lua_getfield(L, 1, "script");
    size_t slen;
    const char *script = lua_tolstring(L, -1, &slen);
    pc->script = dup_str(script, slen);
    pc->script_len = slen;
    lua_pop(L, 1);
    pc->chunkname = copy_field_string(L, 1, "name", op);
    if (!pc->chunkname) pc->chunkname = dup_str("=worker_pool script", strlen("=worker_pool script"));
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "package") == LUA_TTABLE) {
        pc->path = copy_field_string(L, lua_gettop(L), "path", op);
        pc->cpath = copy_field_string(L, lua_gettop(L), "cpath", op);
    }
    lua_pop(L, 2);
    pc->q = hr_workq_new(msg_free_v);
    if (!pc->script || !pc->chunkname || !pc->q) return luaL_error(L, "%s: out of memory", op);
    /* One copy of the init value per worker: a storage must never be shared between threads. */
    lua_getfield(L, 1, "init");
    int init_idx = lua_gettop(L);
    for (int i = 0; i < pc->n; i++) {
        wmsg *m = encode_value(L, init_idx, "worker_pool: opts.init", false);
        pc->workers[i].init = m;
        ((msg_guard *)lua_touserdata(L, -1))->m = NULL;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    for (int i = 0; i < pc->n; i++) {
        worker *w = &pc->workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            /* Start-up is awaited below for the threads that did start. */
            report_ready(pc, "worker_pool: could not create a thread");
            for (int j = i + 1; j < pc->n; j++) report_ready(pc, NULL);
            break;
        }
        w->started = true;
    }
    pthread_mutex_lock(&pc->lock);
    while (pc->ready < pc->n) pthread_cond_wait(&pc->ready_cv, &pc->lock);
    pthread_mutex_unlock(&pc->lock);
    if (pc->init_error) {
        lua_pushfstring(L, "worker_pool: start-up failed in %s", pc->init_error);
        box->pc = NULL;
        pool_destroy(pc);
        return lua_error(L);
    }
    lua_settop(L, box_idx);
    return 1;
}

/* pool:submit(job) -> job number (1, 2, ...) */
static int l_submit(lua_State *L)
{
    pool_core *pc = check_pool(L, "WorkerPool:submit");
    luaL_checkany(L, 2);
    wmsg *m = encode_value(L, 2, "WorkerPool:submit", false);
    int64_t seq = hr_workq_submit(pc->q, m);
    if (seq < 0) return hr_lua_error(L, "WorkerPool:submit");
    ((msg_guard *)lua_touserdata(L, -1))->m = NULL; /* the queue owns it now */
    lua_pushinteger(L, (lua_Integer)seq + 1);
    return 1;
}

/* pool:get() -> the result of the oldest job not yet collected, and its number; raises that job's
 * error (with the worker's traceback) when produce failed. */
static int l_get(lua_State *L)
{
    pool_core *pc = check_pool(L, "WorkerPool:get");
    void *r = NULL;
    int64_t seq;
    double waited;
    if (hr_workq_collect(pc->q, &r, &seq, &waited) != 0) return hr_lua_error(L, "WorkerPool:get");
    pc->waited += waited;
    pc->collected++;
    wmsg *m = r;
    if (!m) return luaL_error(L, "WorkerPool:get: job %d: a worker ran out of memory", (int)seq + 1);
    msg_guard *g = push_guard(L, m);
    if (m->kind == MSG_ERROR) {
        lua_pushfstring(L, "worker_pool: job %I failed in worker %d: ", (lua_Integer)seq + 1, m->worker);
        lua_pushlstring(L, (const char *)m->buf, m->len);
        lua_concat(L, 2);
        msg_free(g->m);
        g->m = NULL;
        return lua_error(L);
    }
    decode_value(L, m);
    msg_free(g->m);
    g->m = NULL;
    lua_pushinteger(L, (lua_Integer)seq + 1);
    return 2;
}

static int l_pending(lua_State *L)
{
    pool_core *pc = check_pool(L, "WorkerPool:pending");
    lua_pushinteger(L, (lua_Integer)hr_workq_pending(pc->q));
    return 1;
}

static int l_size(lua_State *L)
{
    pool_core *pc = check_pool(L, "WorkerPool:size");
    lua_pushinteger(L, pc->n);
    return 1;
}

/* Seconds :get() spent waiting for workers so far. */
static int l_wait_seconds(lua_State *L)
{
    pool_core *pc = check_pool(L, "WorkerPool:wait_seconds");
    lua_pushnumber(L, pc->waited);
    return 1;
}

/* pool:close(): from a finalizer, the shutdown waits for __gc, since a binding may be using the pool
 * (hr_lua_in_finalizer) */
static int l_close(lua_State *L)
{
    pool_box *b = luaL_checkudata(L, 1, POOL_MT);
    HR_LUA_RELEASE_OR_DEFER(L, b, pc, pool_destroy);
    return 0;
}

static int l_pool_gc(lua_State *L)
{
    pool_box *b = luaL_checkudata(L, 1, POOL_MT);
    HR_LUA_RELEASE_ALL(b, pc, pool_destroy);
    return 0;
}

static int l_is_closed(lua_State *L)
{
    pool_box *b = luaL_checkudata(L, 1, POOL_MT);
    lua_pushboolean(L, b->pc == NULL);
    return 1;
}

static int l_tostring(lua_State *L)
{
    pool_box *b = luaL_checkudata(L, 1, POOL_MT);
    if (!b->pc) lua_pushliteral(L, "hero.WorkerPool(closed)");
    else lua_pushfstring(L, "hero.WorkerPool(%d workers, %I pending)", b->pc->n,
                         (lua_Integer)hr_workq_pending(b->pc->q));
    return 1;
}

void hr_lua_open_workers(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg methods[] = {
        {"submit", l_submit},   {"get", l_get},     {"pending", l_pending}, {"size", l_size},
        {"wait_seconds", l_wait_seconds}, {"close", l_close}, {"is_closed", l_is_closed}, {NULL, NULL},
    };
    luaL_newmetatable(L, POOL_MT);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_pool_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_worker_pool);
    lua_setfield(L, module_idx, "worker_pool");
}
