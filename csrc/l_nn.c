/* l_nn.c — Lua bindings of the fused neural-network nodes (hero.nn.functional in Lua). */
#include <string.h>
#include "hr_autocast.h"
#include "hr_nn.h"
#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "l_common.h"

static hr_tensor *opt_tensor(lua_State *L, int idx, const char *op)
{
    return lua_isnoneornil(L, idx) ? NULL : hr_lua_check_tensor(L, idx, op);
}

static hr_tensor *layer_norm_at(lua_State *L, int idx, int w_idx, int b_idx, double eps, const char *op);

/* layer_norm(x, weight|nil, bias|nil, eps) */
static int l_layer_norm(lua_State *L)
{
    hr_lua_check_tensor(L, 1, "layer_norm");
    opt_tensor(L, 2, "layer_norm");
    opt_tensor(L, 3, "layer_norm");
    double eps = luaL_checknumber(L, 4);
    if (!(eps >= 0)) return luaL_error(L, "layer_norm: eps must be >= 0, got %f", (lua_Number)eps);
    hr_lua_push_tensor(L, layer_norm_at(L, 1, 2, 3, eps, "layer_norm"));
    return 1;
}

/* embedding(weight, indices[, padding_idx]) — padding_idx is a 0-based row (its gradient stays 0),
 * negative from the end */
static int l_embedding(lua_State *L)
{
    hr_tensor *w = hr_lua_check_tensor(L, 1, "embedding");
    hr_tensor *idx = hr_lua_check_tensor(L, 2, "embedding");
    /* as torch: a row of the table, negative counted from the end; nil (or none) for no padding row */
    lua_Integer pad = -1;
    if (!lua_isnoneornil(L, 3)) {
        int ok;
        pad = lua_tointegerx(L, 3, &ok);
        int64_t rows = w->ndim > 0 ? w->size[0] : 0;
        if (!ok || lua_type(L, 3) != LUA_TNUMBER || pad < -rows || pad >= rows)
            return luaL_error(L, "embedding: padding_idx must be an integer row in [%I, %I) (0-based) or nil, got %s",
                              (lua_Integer)-rows, (lua_Integer)rows,
                              lua_type(L, 3) == LUA_TNUMBER ? lua_tostring(L, 3) : luaL_typename(L, 3));
        if (pad < 0) pad += rows;
    }
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_embedding(w, idx, pad));
    if (!y) return hr_lua_error(L, "embedding");
    hr_lua_push_tensor(L, y);
    return 1;
}

/* cross_entropy(logits [N, W], target [N][, {ignore_index = -100, label_smoothing = 0,
 * reduction = "mean"|"sum"|"none", classes = W}]): classes, the first columns that are classes */
static int l_cross_entropy(lua_State *L)
{
    /* the options first: reading them may run Lua code (metamethods), which must not find the
     * tensors already taken */
    lua_Integer ignore = -100, classes = 0; /* classes 0: all the columns */
    double smoothing = 0;
    hr_reduction red = HR_REDUCE_MEAN;
    static const char *const keys[] = {"ignore_index", "label_smoothing", "reduction", "classes", NULL};
    int oi = hr_lua_options(L, 3, keys, "ignore_index, label_smoothing, reduction, classes", "cross_entropy");
    if (oi) {
        static const char *const names[] = {"none", "mean", "sum", NULL};
        ignore = hr_lua_opt_field_integer(L, oi, "ignore_index", ignore, "cross_entropy");
        smoothing = hr_lua_opt_field_number(L, oi, "label_smoothing", smoothing, "cross_entropy");
        red = (hr_reduction)hr_lua_opt_field_option(L, oi, "reduction", (int)red, names, "cross_entropy");
        bool given = hr_lua_rawfield(L, oi, "classes") != LUA_TNIL;
        lua_pop(L, 1);
        if (given) {
            classes = hr_lua_opt_field_integer(L, oi, "classes", 0, "cross_entropy");
            if (classes <= 0) return luaL_error(L, "cross_entropy: option classes must be positive, got %I", classes);
        }
    }
    /* autocast's f32 loss of half GPU logits reads them as f32 in the kernel (no cast copy) */
    hr_tensor *x = hr_lua_check_tensor(L, 1, "cross_entropy");
    bool of_half = (x->dtype == HR_BF16 || x->dtype == HR_F16) && hr_tensor_device(x).type == HR_CUDA &&
                   hr_autocast_target(x, HR_AUTOCAST_F32) == HR_F32;
    if (!of_half) x = hr_lua_autocast(L, 1, HR_AUTOCAST_F32, "cross_entropy");
    hr_tensor *t = hr_lua_check_tensor(L, 2, "cross_entropy");
    hr_tensor *y;
    HR_LUA_RETRY(L, y, of_half ? hr_cross_entropy_of_half(x, t, classes, ignore, smoothing, red)
                               : hr_cross_entropy(x, t, classes, ignore, smoothing, red));
    if (!y) return hr_lua_error(L, "cross_entropy");
    hr_lua_push_tensor(L, y);
    return 1;
}

/* dropout(x, p[, training = true][, {generator = g}]) */
static int l_dropout(lua_State *L)
{
    hr_tensor *x = hr_lua_autocast(L, 1, HR_AUTOCAST_CPU_F32, "dropout");
    double p = luaL_checknumber(L, 2);
    bool training = lua_isnoneornil(L, 3) ? true : lua_toboolean(L, 3);
    int oi = hr_lua_opts_arg(L, 4, "dropout");
    struct hr_generator *g = hr_lua_opt_generator(L, oi, "dropout");
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_dropout(g, x, p, training));
    if (!y) return hr_lua_error(L, "dropout");
    if (y == x) { /* the identity hands back the very same Lua value */
        hr_tensor_release(y);
        lua_pushvalue(L, 1);
        return 1;
    }
    hr_lua_push_tensor(L, y);
    return 1;
}

/* conv1d(x [N, C_in, L], weight [C_out, C_in, K][, bias][, padding = 0]) */
static int l_conv1d(lua_State *L)
{
    hr_tensor *x = hr_lua_autocast(L, 1, HR_AUTOCAST_ATTENTION, "conv1d");
    hr_tensor *w = hr_lua_autocast(L, 2, HR_AUTOCAST_ATTENTION, "conv1d");
    hr_tensor *b = lua_isnoneornil(L, 3) ? NULL : hr_lua_autocast(L, 3, HR_AUTOCAST_ATTENTION, "conv1d");
    lua_Integer pad = luaL_optinteger(L, 4, 0);
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_conv1d(x, w, b, pad));
    if (!y) return hr_lua_error(L, "conv1d");
    hr_lua_push_tensor(L, y);
    return 1;
}

/* The options of attention, a table at index idx or none: dropout probability, training and the
 * generator of the dropout draws. */
typedef struct {
    double dropout;
    bool training;
    struct hr_generator *generator;
} attention_opts;

static attention_opts attention_options(lua_State *L, int idx, const char *op)
{
    static const char *const names[] = {"dropout", "training", "generator", NULL};
    attention_opts o = {0, true, NULL};
    int oi = hr_lua_options(L, idx, names, "dropout, training, generator", op);
    if (oi) {
        o.dropout = hr_lua_opt_field_number(L, oi, "dropout", 0, op);
        if (hr_lua_rawfield(L, oi, "training") != LUA_TNIL) {
            if (!lua_isboolean(L, -1))
                luaL_error(L, "%s: option training must be a boolean, got %s", op, luaL_typename(L, -1));
            o.training = lua_toboolean(L, -1);
        }
        lua_pop(L, 1);
    }
    o.generator = hr_lua_opt_generator(L, oi, op);
    return o;
}

/* A mask that broadcasts to [B, Lk] or [B, Lq, Lk] (a size-1 batch or query dimension, as
 * `scores + mask` broadcasts in PyTorch) as a view of that full shape, pushed on the Lua stack to
 * keep it alive; any other mask is returned as it is (the kernel's check names it). */
static hr_tensor *broadcast_mask(lua_State *L, hr_tensor *mask, int64_t B, int64_t Lq, int64_t Lk)
{
    if (!mask || (mask->ndim != 2 && mask->ndim != 3) || mask->size[mask->ndim - 1] != Lk) return mask;
    int64_t b = mask->size[0], q = mask->ndim == 3 ? mask->size[1] : 1;
    if ((b != 1 && b != B) || (q != 1 && q != Lq)) return mask;
    if ((mask->ndim == 2 && b == B) || (mask->ndim == 3 && b == B && q == Lq)) return mask;
    /* the expanded view below records nothing: a mask that requires grad is refused here, as the
     * kernel refuses one of the full shape */
    if (hr_requires_grad(mask) && hr_grad_enabled())
        luaL_error(L, "attention: the mask is not differentiable; detach() it");
    hr_tensor *base = mask->ndim == 3 && q == 1 ? hr_view_select(mask, 1, 0) : mask; /* [b, Lk] */
    if (!base) hr_lua_error(L, "attention");
    int64_t full2[2] = {B, Lk}, full3[3] = {B, Lq, Lk};
    hr_tensor *e = base->ndim == 2 ? hr_view_expand(base, 2, full2) : hr_view_expand(base, 3, full3);
    if (base != mask) hr_tensor_release(base);
    if (!e) hr_lua_error(L, "attention");
    hr_lua_push_tensor(L, e);
    return e;
}

/* layer_norm of the tensor at stack index idx with the weight and bias at w_idx and b_idx (nil:
 * none), l_layer_norm's autocast included: like torch's, it casts every half argument up to f32,
 * so a model converted to bf16 runs its layer norms in f32 under autocast as well. */
static hr_tensor *layer_norm_at(lua_State *L, int idx, int w_idx, int b_idx, double eps, const char *op)
{
    hr_tensor *x = hr_lua_check_tensor(L, idx, op);
    hr_tensor *w = opt_tensor(L, w_idx, op), *b = opt_tensor(L, b_idx, op);
    bool of_half = (x->dtype == HR_BF16 || x->dtype == HR_F16) && hr_tensor_device(x).type == HR_CUDA &&
                   hr_autocast_target(x, HR_AUTOCAST_F32) == HR_F32 && (!w || w->dtype == HR_F32) &&
                   (!b || b->dtype == HR_F32);
    if (!of_half) x = hr_lua_autocast(L, idx, HR_AUTOCAST_F32, op);
    if (w) w = hr_lua_autocast(L, w_idx, HR_AUTOCAST_F32, op);
    if (b) b = hr_lua_autocast(L, b_idx, HR_AUTOCAST_F32, op);
    hr_tensor *y;
    HR_LUA_RETRY(L, y, of_half ? hr_layer_norm_of_half(x, w, b, eps) : hr_layer_norm(x, w, b, eps));
    if (!y) hr_lua_error(L, op);
    return y;
}

/* dropout_add_layer_norm(x, residual, weight|nil, bias|nil, eps[, {dropout = p, training = bool,
 * generator = g}]): layer_norm(dropout(x, p, training) + residual, weight, bias, eps), one node for
 * the inputs hr_dropout_add_layer_norm_fuses takes, else the three ops (with their autocasts). */
static int l_dropout_add_layer_norm(lua_State *L)
{
    static const char op[] = "dropout_add_layer_norm";
    attention_opts o = attention_options(L, 6, op);
    hr_tensor *x = hr_lua_check_tensor(L, 1, op), *r = hr_lua_check_tensor(L, 2, op);
    hr_tensor *w = opt_tensor(L, 3, op), *b = opt_tensor(L, 4, op);
    double eps = luaL_checknumber(L, 5);
    if (!(eps >= 0)) return luaL_error(L, "%s: eps must be >= 0, got %f", op, (lua_Number)eps);
    if (!(o.dropout >= 0 && o.dropout <= 1))
        return luaL_error(L, "%s: dropout must be in [0, 1], got %f", op, (lua_Number)o.dropout);
    hr_tensor *y;
    bool live = x->storage && r->storage && (!w || w->storage) && (!b || b->storage);
    if (!live || hr_dropout_add_layer_norm_fuses(x, r, w, b, o.dropout, o.training)) { /* a freed one: its error */
        HR_LUA_RETRY(L, y, hr_dropout_add_layer_norm(o.generator, x, r, w, b, eps, o.dropout, o.training));
        if (!y) return hr_lua_error(L, op);
        hr_lua_push_tensor(L, y);
        return 1;
    }
    x = hr_lua_autocast(L, 1, HR_AUTOCAST_CPU_F32, op);
    hr_tensor *d;
    HR_LUA_RETRY(L, d, hr_dropout(o.generator, x, o.dropout, o.training));
    if (!d) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, d); /* Lua owns it from here, even if the add raises */
    hr_tensor *s;
    HR_LUA_RETRY(L, s, hr_ag_binary(HR_ADD, hr_operand_tensor(d), hr_operand_tensor(r), NULL));
    if (!s) return hr_lua_error(L, op);
    hr_lua_push_tensor(L, s);
    y = layer_norm_at(L, lua_gettop(L), 3, 4, eps, op);
    hr_lua_push_tensor(L, y);
    return 1;
}

/* attention(q, k, v, mask|nil, heads[, {dropout = p, training = bool, generator = g}]) */
static int l_attention(lua_State *L)
{
    hr_tensor *q = hr_lua_autocast(L, 1, HR_AUTOCAST_ATTENTION, "attention");
    hr_tensor *k = hr_lua_autocast(L, 2, HR_AUTOCAST_ATTENTION, "attention");
    hr_tensor *v = hr_lua_autocast(L, 3, HR_AUTOCAST_ATTENTION, "attention");
    hr_tensor *mask = opt_tensor(L, 4, "attention");
    lua_Integer heads = luaL_checkinteger(L, 5);
    attention_opts o = attention_options(L, 6, "attention");
    if (q->ndim == 3 && k->ndim == 3) mask = broadcast_mask(L, mask, q->size[0], q->size[1], k->size[1]);
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_attention(q, k, v, mask, heads, o.dropout, o.training, o.generator));
    if (!y) return hr_lua_error(L, "attention");
    hr_lua_push_tensor(L, y);
    return 1;
}

/* attention_packed(qkv, mask|nil, heads[, {dropout = p, training = bool, generator = g}]) */
static int l_attention_packed(lua_State *L)
{
    hr_tensor *qkv = hr_lua_autocast(L, 1, HR_AUTOCAST_ATTENTION, "attention_packed");
    hr_tensor *mask = opt_tensor(L, 2, "attention_packed");
    lua_Integer heads = luaL_checkinteger(L, 3);
    attention_opts o = attention_options(L, 4, "attention_packed");
    if (qkv->ndim == 3) mask = broadcast_mask(L, mask, qkv->size[0], qkv->size[1], qkv->size[1]);
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_attention_packed(qkv, mask, heads, o.dropout, o.training, o.generator));
    if (!y) return hr_lua_error(L, "attention_packed");
    hr_lua_push_tensor(L, y);
    return 1;
}

/* query_layout(rows, B, L) -> gather, keep, lq (i64 CPU tensors), or nil when the pruned layout
 * would not be smaller: where the queries of the asked-for flat positions `rows` (1-D i64 CPU) of
 * a [B, L] batch sit when laid out [B, lq] (cpu/query_layout.c). */
static int l_query_layout(lua_State *L)
{
    hr_tensor *rows = hr_lua_check_tensor(L, 1, "query_layout");
    lua_Integer B = luaL_checkinteger(L, 2), len = luaL_checkinteger(L, 3);
    hr_tensor *gather, *keep;
    int64_t lq;
    int rc = hr_query_layout(rows, B, len, &gather, &keep, &lq);
    if (rc < 0 && hr_last_errcode() == HR_ENOMEM) {
        lua_gc(L, LUA_GCCOLLECT);
        rc = hr_query_layout(rows, B, len, &gather, &keep, &lq);
    }
    if (rc < 0) return hr_lua_error(L, "query_layout");
    if (rc == 0) {
        lua_pushnil(L);
        return 1;
    }
    hr_lua_push_tensor(L, gather);
    hr_lua_push_tensor(L, keep);
    lua_pushinteger(L, lq);
    return 3;
}

static hr_reduction opt_reduction(lua_State *L, int idx, const char *op)
{
    static const char *const names[] = {"none", "mean", "sum", NULL};
    if (!lua_istable(L, idx)) return HR_REDUCE_MEAN;
    return (hr_reduction)hr_lua_opt_field_option(L, idx, "reduction", HR_REDUCE_MEAN, names, op);
}

/* binary_cross_entropy_with_logits(x, y[, {weight = w, reduction = "mean"}]) */
static int l_bce_with_logits(lua_State *L)
{
    hr_tensor *x = hr_lua_autocast(L, 1, HR_AUTOCAST_F32, "binary_cross_entropy_with_logits");
    hr_tensor *y = hr_lua_autocast(L, 2, HR_AUTOCAST_F32, "binary_cross_entropy_with_logits");
    hr_tensor *w = NULL;
    if (lua_istable(L, 3)) {
        hr_lua_rawfield(L, 3, "weight");
        if (!lua_isnil(L, -1)) w = hr_lua_check_tensor(L, lua_gettop(L), "binary_cross_entropy_with_logits");
        lua_pop(L, 1);
    }
    hr_tensor *r;
    hr_reduction red = opt_reduction(L, 3, "binary_cross_entropy_with_logits");
    HR_LUA_RETRY(L, r, hr_bce_with_logits(x, y, w, red));
    if (!r) return hr_lua_error(L, "binary_cross_entropy_with_logits");
    hr_lua_push_tensor(L, r);
    return 1;
}

/* mse_loss(x, y[, {reduction = "mean"}]) */
static int l_mse_loss(lua_State *L)
{
    hr_tensor *x = hr_lua_autocast(L, 1, HR_AUTOCAST_F32, "mse_loss");
    hr_tensor *y = hr_lua_autocast(L, 2, HR_AUTOCAST_F32, "mse_loss");
    hr_tensor *r;
    hr_reduction red = opt_reduction(L, 3, "mse_loss");
    HR_LUA_RETRY(L, r, hr_mse_loss(x, y, red));
    if (!r) return hr_lua_error(L, "mse_loss");
    hr_lua_push_tensor(L, r);
    return 1;
}

static int l_gelu(lua_State *L)
{
    /* PyTorch's approximate= argument: only the exact (erf) form, "none", is implemented */
    if (!lua_isnoneornil(L, 2)) {
        const char *approximate = luaL_checkstring(L, 2);
        if (strcmp(approximate, "none") != 0)
            return luaL_error(L, "gelu: approximate '%s' is not supported (only 'none', the exact erf form)",
                              approximate);
    }
    hr_tensor *x = hr_lua_autocast(L, 1, HR_AUTOCAST_CPU_F32, "gelu");
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_gelu(x));
    if (!y) return hr_lua_error(L, "gelu");
    hr_lua_push_tensor(L, y);
    return 1;
}

static int l_erf(lua_State *L)
{
    hr_tensor *x = hr_lua_check_tensor(L, 1, "erf");
    hr_tensor *y;
    HR_LUA_RETRY(L, y, hr_erf(x));
    if (!y) return hr_lua_error(L, "erf");
    hr_lua_push_tensor(L, y);
    return 1;
}

/* t:erf_(): erf in place, as every other unary op has (erf is a fused node of its own). */
static int l_erf_inplace(lua_State *L)
{
    hr_tensor *t = hr_lua_check_tensor(L, 1, "erf_");
    hr_lua_check_graph_inplace(L, t, NULL, "erf_");
    if (!hr_dtype_is_float(t->dtype)) {
        char d[160];
        return luaL_error(L, "erf_: in place needs a floating-point tensor, got %s", hr_tensor_desc(t, d, sizeof d));
    }
    bool was = hr_grad_enabled();
    hr_set_grad_enabled(false); /* the check above refused tensors in a graph: nothing to record */
    hr_tensor *y = hr_erf(t);
    hr_set_grad_enabled(was);
    int rc = y ? hr_copy_(t, y) : -1;
    hr_tensor_release(y);
    if (rc) return hr_lua_error(L, "erf_");
    lua_settop(L, 1);
    return 1;
}

static const luaL_Reg module_functions[] = {
    {"layer_norm", l_layer_norm},
    {"embedding", l_embedding},
    {"cross_entropy", l_cross_entropy},
    {"gelu", l_gelu},
    {"erf", l_erf},
    {"erf_", l_erf_inplace},
    {"dropout", l_dropout},
    {"dropout_add_layer_norm", l_dropout_add_layer_norm},
    {"conv1d", l_conv1d},
    {"attention", l_attention},
    {"attention_packed", l_attention_packed},
    {"query_layout", l_query_layout},
    {"binary_cross_entropy_with_logits", l_bce_with_logits},
    {"mse_loss", l_mse_loss},
    {NULL, NULL},
};

static const luaL_Reg tensor_methods[] = {
    {"gelu", l_gelu},
    {"erf", l_erf},
    {"erf_", l_erf_inplace},
    {NULL, NULL},
};

void hr_lua_open_nn(lua_State *L, int module_idx, int methods_idx)
{
    hr_lua_register(L, module_idx, methods_idx, module_functions, tensor_methods);
}
