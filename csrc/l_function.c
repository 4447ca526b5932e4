/* l_function.c — autograd functions written in Lua: a node whose backward calls a Lua function.
 *
 * core.autograd_apply(backward, ctx, output, input1, ...) makes `output` (computed by the caller with
 * recording off) the result of a node with edges to the inputs; backward(ctx, grad_output) must
 * return one gradient per input (a tensor, or nil where the input needs none). The node keeps the
 * Lua function and ctx in the registry; the running lua_State reaches the backward through the engine's
 * env argument (t:backward passes its own), never through a global. */
#include <string.h>

#include "hr_autograd.h"
#include "hr_autograd_ops.h"
#include "l_common.h"

typedef struct {
    lua_State *main; /* the state's main thread, for releasing the references */
    int fn_ref, ctx_ref;
} lua_fn_ctx;

static void lua_fn_destroy(void *p)
{
    lua_fn_ctx *c = p;
    if (!c->main) return;
    luaL_unref(c->main, LUA_REGISTRYINDEX, c->fn_ref);
    luaL_unref(c->main, LUA_REGISTRYINDEX, c->ctx_ref);
    c->main = NULL;
}

static int lua_fn_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    lua_fn_ctx *c = node->ctx;
    lua_State *L = node->env; /* the thread running t:backward() */
    if (!L || !c->main) return hr_fail(HR_EINVAL, "a Lua-defined function can only be differentiated from Lua");
    int top = lua_gettop(L);
    if (!lua_checkstack(L, node->ninputs + 4)) return hr_fail(HR_ENOMEM, "Lua stack overflow");
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->fn_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ctx_ref);
    hr_tensor *g = hr_view_alias((hr_tensor *)grad);
    if (!g) {
        lua_settop(L, top);
        return -1;
    }
    hr_tensor_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->t = g;
    box->deferred = NULL;
    luaL_setmetatable(L, HR_TENSOR_MT);
    /* the Lua backward runs ops of its own: they must not be recorded */
    bool was = hr_grad_enabled();
    hr_set_grad_enabled(false);
    int status = lua_pcall(L, 2, LUA_MULTRET, 0);
    hr_set_grad_enabled(was);
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        int rc = hr_fail(HR_EINVAL, "%s", msg ? msg : "error object is not a string");
        lua_settop(L, top);
        return rc;
    }
    /* one gradient (or nil) per input, as torch checks: more is an error; missing ones are nil */
    int nret = lua_gettop(L) - top;
    if (nret > node->ninputs) {
        lua_settop(L, top);
        return hr_fail(HR_EINVAL, "backward returned %d gradients for %d input%s", nret, node->ninputs,
                       node->ninputs == 1 ? "" : "s");
    }
    lua_settop(L, top + node->ninputs);
    int base = lua_gettop(L) - node->ninputs;
    int rc = 0;
    for (int i = 0; i < node->ninputs && rc == 0; i++) {
        int idx = base + 1 + i;
        if (lua_isnil(L, idx)) continue;
        hr_tensor *t = hr_lua_to_tensor(L, idx);
        if ((t && !t->storage) || (!t && luaL_testudata(L, idx, HR_TENSOR_MT))) {
            rc = hr_fail(HR_EINVAL, "backward returned a freed tensor for input %d", i + 1);
            break;
        }
        if (!t) {
            rc = hr_fail(HR_EINVAL, "backward returned a %s for input %d (expected a tensor or nil)",
                         luaL_typename(L, idx), i + 1);
            break;
        }
        if (!hr_node_input_needs_grad(node, i)) continue;
        /* as torch: a gradient the input's shape broadcasts to is summed down to it; any other
         * shape is an error naming the input (the engine would refuse it less clearly) */
        int nd;
        const int64_t *size;
        hr_node_input_shape(node, i, &nd, &size);
        if (t->ndim != nd || memcmp(t->size, size, sizeof(int64_t) * (size_t)nd) != 0) {
            int out_nd;
            int64_t out[HR_MAX_DIMS];
            bool expands = hr_broadcast_shape("autograd function", nd, size, t->ndim, t->size, &out_nd, out) == 0 &&
                           out_nd == t->ndim && memcmp(out, t->size, sizeof(int64_t) * (size_t)out_nd) == 0;
            if (!expands) {
                hr_clear_error();
                char a[160], b[160];
                rc = hr_fail(HR_EINVAL, "backward returned a gradient of size %s for input %d, whose size is %s",
                             hr_shape_str(t->ndim, t->size, a, sizeof a), i + 1, hr_shape_str(nd, size, b, sizeof b));
                break;
            }
            hr_tensor *summed = hr_sum_to_size(t, nd, size);
            if (!summed) {
                rc = -1;
                break;
            }
            gi[i] = summed;
            continue;
        }
        hr_tensor_retain(t);
        gi[i] = t;
    }
    lua_settop(L, top);
    if (rc == 0) {
        /* nil, as torch's None: no gradient. A leaf gets none at all (its .grad stays as it was); an
         * intermediate input gets zeros, so that what produced it still hears from every consumer */
        for (int i = 0; i < node->ninputs && rc == 0; i++) {
            if (!hr_node_input_needs_grad(node, i) || gi[i]) continue;
            if (node->next[i].leaf) {
                gi[i] = HR_GRAD_HANDLED;
                continue;
            }
            int nd;
            const int64_t *size;
            hr_node_input_shape(node, i, &nd, &size);
            hr_dtype dt = node->next[i].node ? node->next[i].node->out_dtype : grad->dtype;
            if (!(gi[i] = hr_tensor_zeros(nd, size, dt, hr_tensor_device(grad)))) rc = -1;
        }
    }
    return rc;
}

static int l_autograd_apply(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    hr_tensor *out = hr_lua_check_tensor(L, 3, "autograd function");
    int n = lua_gettop(L) - 3;
    if (n > 64) return luaL_error(L, "autograd function: at most 64 inputs, got %d", n);
    hr_tensor *inputs[64];
    for (int i = 0; i < n; i++) inputs[i] = hr_lua_to_tensor(L, 4 + i); /* non-tensors: no edge */
    if (!hr_should_record(n, inputs)) {
        lua_settop(L, 3);
        return 1;
    }
    if (out->grad_fn || out->requires_grad)
        return luaL_error(L, "autograd function: forward must compute its output without recording (it runs "
                             "inside hero.no_grad)");
    /* an integer or bool output has no gradient (its values are steps, as PyTorch marks such outputs
     * non-differentiable): a gradient flowing into it would be truncated to integers */
    if (!hr_dtype_is_float(out->dtype)) {
        lua_settop(L, 3);
        return 1;
    }
    hr_node *node = hr_node_new("lua function", lua_fn_backward, n, inputs, sizeof(lua_fn_ctx));
    if (!node) return hr_lua_error(L, "autograd function");
    lua_fn_ctx *c = node->ctx;
    node->ctx_destroy = lua_fn_destroy;
    /* its backward ran and the graph is not kept: drop the ctx (and what it holds, often the
     * previous function's output) at once. Held until the node itself went, a chain of n
     * functions took n full collections to free. */
    node->saved_release = lua_fn_destroy;
    lua_pushvalue(L, 1);
    c->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 2);
    c->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    c->main = lua_tothread(L, -1);
    lua_pop(L, 1);
    hr_node_attach(node, out);
    lua_settop(L, 3);
    return 1;
}

static const luaL_Reg module_functions[] = {
    {"autograd_apply", l_autograd_apply},
    {NULL, NULL},
};

void hr_lua_open_function(lua_State *L, int module_idx, int methods_idx)
{
    hr_lua_register(L, module_idx, methods_idx, module_functions, NULL);
}
