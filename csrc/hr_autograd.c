/* hr_autograd.c — graph nodes and the backward engine of the reverse-mode tape. */
#include <stdlib.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_cuda.h"

const hr_tensor hr_grad_handled_marker;

hr_tensor *hr_leaf_grad_buffer(hr_tensor *leaf)
{
    if (!leaf->grad) leaf->grad = hr_tensor_zeros(leaf->ndim, leaf->size, leaf->dtype, hr_tensor_device(leaf));
    return leaf->grad;
}

static _Thread_local int grad_disabled; /* 0: recording (the default) */
static _Thread_local hr_leaf_ready_fn leaf_hook;
static _Thread_local void *leaf_hook_ctx;

/* the walk running on this thread (0: none), for hr_backward_leaf_pending */
static _Thread_local unsigned walk_running;
/* The walks in progress on this thread, outermost first: a Lua-defined backward or a hook may run
 * another backward, but not through nodes an enclosing walk is still accumulating into. */
enum { MAX_NESTED_WALKS = 16 };
static _Thread_local unsigned active_walks[MAX_NESTED_WALKS];
static _Thread_local int n_active_walks;

static bool in_enclosing_walk(const hr_node *n)
{
    for (int k = 0; k < n_active_walks - 1; k++)
        if (n->visit == active_walks[k]) return true;
    return false;
}

bool hr_backward_leaf_pending(const hr_tensor *t)
{
    return walk_running != 0 && t->leaf_visit == walk_running && t->leaf_pending > 0;
}

void hr_backward_set_leaf_hook(hr_leaf_ready_fn fn, void *ctx)
{
    leaf_hook = fn;
    leaf_hook_ctx = fn ? ctx : NULL;
}
/* Marks the nodes visited by one backward walk without a search through the visited list. */
static _Thread_local unsigned backward_generation;

bool hr_grad_enabled(void) { return grad_disabled == 0; }
void hr_set_grad_enabled(bool on) { grad_disabled = on ? 0 : 1; }

bool hr_requires_grad(const hr_tensor *t) { return t && (t->requires_grad || t->grad_fn != NULL); }

bool hr_should_record(int n, hr_tensor *const *inputs)
{
    if (grad_disabled) return false;
    for (int i = 0; i < n; i++)
        if (hr_requires_grad(inputs[i])) return true;
    return false;
}

void hr_node_retain(hr_node *node)
{
    if (node) node->refcount++;
}

static void free_saved(hr_node *node)
{
    for (int i = 0; i < node->nsaved; i++) {
        hr_tensor_release(node->saved[i]);
        node->saved[i] = NULL;
    }
}

/* Releasing a long chain recursively could overflow the C stack: parents whose count drops to zero
 * are queued and freed iteratively. */
void hr_node_release(struct hr_node *node)
{
    if (!node || --node->refcount > 0) return;
    hr_node **stack = NULL;
    size_t len = 0, cap = 0;
    hr_node *cur = node;
    while (cur) {
        for (int i = 0; i < cur->ninputs; i++) {
            hr_tensor_release(cur->next[i].leaf);
            hr_node *parent = cur->next[i].node;
            if (parent && --parent->refcount == 0) {
                if (len == cap) {
                    size_t ncap = cap ? cap * 2 : 16;
                    hr_node **grown = realloc(stack, ncap * sizeof *grown);
                    if (!grown) {
                        /* cannot queue: fall back to recursion for this one */
                        parent->refcount = 1;
                        hr_node_release(parent);
                        continue;
                    }
                    stack = grown;
                    cap = ncap;
                }
                stack[len++] = parent;
            }
        }
        free_saved(cur);
        hr_tensor_release(cur->grad_acc);
        if (cur->ctx_destroy) cur->ctx_destroy(cur->ctx);
        free(cur->ctx);
        free(cur->next);
        hr_pool_free(HR_POOL_NODE, cur);
        cur = len ? stack[--len] : NULL;
    }
    free(stack);
}

hr_node *hr_node_new(const char *op, hr_backward_fn backward, int n, hr_tensor *const *inputs, size_t ctx_size)
{
    hr_node *node = hr_pool_zalloc(HR_POOL_NODE, sizeof *node);
    if (!node) return hr_fail_null(HR_ENOMEM, "%s: out of memory recording the autograd node", op);
    node->next = hr_zalloc((size_t)(n > 0 ? n : 1), sizeof *node->next);
    node->ctx = ctx_size ? hr_zalloc(1, ctx_size) : NULL;
    if (!node->next || (ctx_size && !node->ctx)) {
        free(node->next);
        free(node->ctx);
        hr_pool_free(HR_POOL_NODE, node);
        return hr_fail_null(HR_ENOMEM, "%s: out of memory recording the autograd node", op);
    }
    node->refcount = 1;
    node->op = op;
    node->backward = backward;
    node->ninputs = n;
    for (int i = 0; i < n; i++) {
        hr_tensor *t = inputs[i];
        if (!t) continue;
        if (t->grad_fn) {
            node->next[i].node = t->grad_fn;
            hr_node_retain(t->grad_fn);
        } else if (t->requires_grad) {
            node->next[i].leaf = t;
            hr_tensor_retain(t);
        }
    }
    return node;
}

bool hr_node_input_needs_grad(const hr_node *node, int i)
{
    return i >= 0 && i < node->ninputs && (node->next[i].node || node->next[i].leaf);
}

void hr_node_input_shape(const hr_node *node, int i, int *ndim, const int64_t **size)
{
    const hr_edge *e = &node->next[i];
    if (e->leaf) {
        *ndim = e->leaf->ndim;
        *size = e->leaf->size;
    } else {
        *ndim = e->node->out_ndim;
        *size = e->node->out_size;
    }
}

int hr_node_save(hr_node *node, hr_tensor *t)
{
    if (node->nsaved >= HR_NODE_MAX_SAVED) return hr_fail(HR_EINVAL, "%s: too many saved tensors", node->op);
    /* An alias without grad_fn: saving the output itself would make output -> node -> output. */
    hr_tensor *alias = hr_view_alias(t);
    if (!alias) return -1;
    int slot = node->nsaved++;
    node->saved[slot] = alias;
    node->saved_version[slot] = t->storage->version;
    return slot;
}

hr_tensor *hr_node_saved(hr_node *node, int i)
{
    if (node->buffers_freed)
        return hr_fail_null(HR_EINVAL,
                            "backward through the graph a second time: the tensors saved by '%s' were already freed "
                            "(pass retain_graph = true to the first backward)",
                            node->op);
    if (i < 0 || i >= node->nsaved || !node->saved[i])
        return hr_fail_null(HR_EINVAL, "%s: saved tensor %d is missing", node->op, i);
    hr_tensor *t = node->saved[i];
    if (!t->storage) return hr_fail_null(HR_EFREED, "%s: a tensor saved for backward was freed", node->op);
    return t;
}

void hr_node_attach(hr_node *node, hr_tensor *out)
{
    node->out_ndim = out->ndim;
    memcpy(node->out_size, out->size, sizeof node->out_size);
    node->out_dtype = out->dtype;
    hr_node_release(out->grad_fn);
    out->grad_fn = node;
    out->requires_grad = true;
}

/* ------------------------------------------------------------------ accumulation */

typedef struct {
    hr_dtype dst, src;
} acc_ctx;

static void accumulate_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const acc_ctx *c = arg;
    if (c->dst == HR_F32 && c->src == HR_F32 && bs[0] == 4 && bs[1] == 4) {
        float *d = (float *)p[0];
        const float *s = (const float *)p[1];
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
        return;
    }
    if (c->dst == HR_F64 && c->src == HR_F64 && bs[0] == 8 && bs[1] == 8) {
        double *d = (double *)p[0];
        const double *s = (const double *)p[1];
        for (int64_t i = 0; i < n; i++) d[i] += s[i];
        return;
    }
    /* a half gradient into an f32 one (a cast's gradient, widened here instead of by a copy): the
     * half value is exact in f32, so this is the f32 sum the cast and the add would give */
    if (c->dst == HR_F32 && c->src == HR_BF16 && bs[0] == 4 && bs[1] == 2) {
        float *d = (float *)p[0];
        const uint16_t *s = (const uint16_t *)p[1];
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            float f;
            memcpy(&f, &u, sizeof f);
            d[i] += f;
        }
        return;
    }
    if (c->dst == HR_F32 && c->src == HR_F16 && bs[0] == 4 && bs[1] == 2) {
        float *d = (float *)p[0];
        const uint16_t *s = (const uint16_t *)p[1];
        for (int64_t i = 0; i < n; i++) d[i] += hr_f16_to_f32(s[i]);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        char *d = p[0] + i * bs[0];
        hr_store_f64(d, c->dst, hr_load_f64(d, c->dst) + hr_load_f64(p[1] + i * bs[1], c->src));
    }
}

int hr_grad_accumulate_(hr_tensor *dst, const hr_tensor *src)
{
    if (hr_tensor_check_live(dst, "gradient accumulation") || hr_tensor_check_live(src, "gradient accumulation"))
        return -1;
    if (dst->ndim != src->ndim || memcmp(dst->size, src->size, sizeof(int64_t) * (size_t)dst->ndim) != 0) {
        char a[160], b[160];
        return hr_fail(HR_EINVAL, "gradient accumulation: gradient of size %s does not match size %s",
                       hr_shape_str(src->ndim, src->size, a, sizeof a), hr_shape_str(dst->ndim, dst->size, b, sizeof b));
    }
    if (hr_tensor_device(dst).type != HR_CPU || hr_tensor_device(src).type != HR_CPU) {
        hr_operand a = hr_operand_tensor(dst), b = hr_operand_tensor(src);
        if (hr_cuda_binary(HR_ADD, hr_dtype_promote(dst->dtype, src->dtype), &a, &b, NULL, dst)) return -1;
        hr_tensor_bump_version(dst);
        return 0;
    }
    hr_iter it;
    hr_iter_init(&it, dst->ndim, dst->size);
    hr_iter_add(&it, hr_tensor_data(dst), hr_dtype_size(dst->dtype), dst->stride);
    hr_iter_add(&it, hr_tensor_data(src), hr_dtype_size(src->dtype), src->stride);
    acc_ctx c = {dst->dtype, src->dtype};
    hr_iter_run(&it, accumulate_kernel, &c, dst->storage != src->storage);
    hr_tensor_bump_version(dst);
    return 0;
}

/* ------------------------------------------------------------------ engine */

typedef struct {
    hr_node **items;
    size_t len, cap;
} node_list;

static int list_push(node_list *l, hr_node *n)
{
    if (l->len == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        hr_node **grown = realloc(l->items, ncap * sizeof *grown);
        if (!grown) return hr_fail(HR_ENOMEM, "backward: out of memory walking the graph");
        l->items = grown;
        l->cap = ncap;
    }
    l->items[l->len++] = n;
    return 0;
}

static int same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    return na == nb && memcmp(a, b, sizeof(int64_t) * (size_t)na) == 0;
}

bool hr_grad_is_exclusive(const hr_tensor *g)
{
    /* only the engine holds g and nothing else shares its storage: once the engine lets go of it
     * (right after the node's backward) the consumer owns it alone and may add into it in place */
    return g->refcount == 1 && g->storage && g->storage->refcount == 1 && g->storage->kind != HR_STORAGE_MMAP &&
           !g->grad_fn && !g->grad && hr_tensor_is_contiguous(g);
}

hr_tensor *hr_grad_pass_on(const hr_tensor *g)
{
    if (hr_grad_is_exclusive(g)) {
        hr_tensor_retain((hr_tensor *)g);
        return (hr_tensor *)g;
    }
    return hr_cast(g, g->dtype);
}

/* Whether a gradient of dtype narrow waits to be widened to wide: a half gradient of an f32/f64
 * output (below). */
static bool widens(hr_dtype narrow, hr_dtype wide)
{
    return (narrow == HR_BF16 || narrow == HR_F16) && (wide == HR_F32 || wide == HR_F64);
}

/* Adds g (a new reference, consumed) to *slot, the gradient of a node's output of dtype want. A cast's
 * backward passes a half gradient on as it is (cast_backward): the slot may hold it until a gradient of
 * the output's dtype arrives, which it is then added into, or until the node runs (widened_grad). The
 * widening is exact and the sum is the same either way round, so this is the sum of the cast
 * gradients, without a widened copy of each. */
static int accumulate_into(hr_tensor **slot, hr_tensor *g, hr_dtype want)
{
    if (!*slot) {
        *slot = g;
        return 0;
    }
    hr_tensor *acc = *slot;
    if (widens(acc->dtype, want)) {
        if (g->dtype == want && hr_grad_is_exclusive(g)) { /* g becomes the slot, the half one is added into it */
            int rc = hr_grad_accumulate_(g, acc);
            hr_tensor_release(acc);
            *slot = g;
            return rc;
        }
        hr_tensor *wide = hr_cast(acc, want);
        if (!wide) {
            hr_tensor_release(g);
            return -1;
        }
        hr_tensor_release(acc);
        *slot = acc = wide;
    } else if (acc->refcount > 1 || acc->storage->refcount > 1 || acc->storage->kind == HR_STORAGE_MMAP) {
        /* the first gradient is also held elsewhere (a Lua backward handing back a tensor it keeps,
         * a view of a saved tensor): the sum goes into a copy, never into what the others see */
        hr_tensor *own = hr_cast(acc, acc->dtype);
        if (!own) {
            hr_tensor_release(g);
            return -1;
        }
        hr_tensor_release(acc);
        *slot = acc = own;
    }
    int rc = hr_grad_accumulate_(acc, g);
    hr_tensor_release(g);
    return rc;
}

/* The gradient a node receives: its output's dtype (a half gradient passed on by a cast and never
 * added to another one is widened now). Consumes g; NULL with an error when the copy fails. */
static hr_tensor *widened_grad(const hr_node *n, hr_tensor *g)
{
    if (!g || !widens(g->dtype, n->out_dtype)) return g;
    hr_tensor *wide = hr_cast(g, n->out_dtype);
    hr_tensor_release(g);
    return wide;
}

/* Whether the leaf can take g itself as its first gradient: nothing else holds g or its storage
 * (so later in-place accumulation cannot be seen elsewhere), and it is exactly what a copy would
 * be (the leaf's dtype and device, contiguous, the whole of its storage: a slice would keep the
 * rest of a bigger buffer alive). */
static bool can_adopt(const hr_tensor *leaf, const hr_tensor *g)
{
    const hr_storage *s = g->storage;
    return g->refcount == 1 && s && s->refcount == 1 && s->kind != HR_STORAGE_MMAP && g->offset == 0 &&
           s->nbytes == (size_t)hr_tensor_numel(g) * hr_dtype_size(g->dtype) && /* not a slice of a bigger buffer */
           g->dtype == leaf->dtype && !g->grad_fn && !g->grad && hr_device_eq(s->device, hr_tensor_device(leaf)) &&
           hr_tensor_is_contiguous(g);
}

static int accumulate_leaf(hr_tensor *leaf, hr_tensor *g)
{
    if (hr_tensor_check_live(leaf, "backward: a leaf that receives a gradient")) { /* freed by a Lua backward */
        hr_tensor_release(g);
        return -1;
    }
    if (!leaf->requires_grad) { /* frozen (requires_grad_(false)) after the forward pass: torch skips it too */
        hr_tensor_release(g);
        return 0;
    }
    if (!leaf->grad && can_adopt(leaf, g)) {
        g->requires_grad = false;
        leaf->grad = g; /* the reference passes to the leaf: no copy */
        return 0;
    }
    if (!leaf->grad) {
        /* the leaf keeps its own copy, contiguous and in its dtype */
        hr_tensor *own = hr_cast(g, leaf->dtype);
        hr_tensor_release(g);
        if (!own) return -1;
        leaf->grad = own;
        return 0;
    }
    int rc = hr_grad_accumulate_(leaf->grad, g);
    hr_tensor_release(g);
    return rc;
}

/* One gradient reached leaf in walk gen: the hook hears of the leaf when it was the last one. */
static int leaf_received(hr_leaf_ready_fn hook, void *ctx, hr_tensor *leaf, unsigned gen)
{
    if (!hook || !leaf || leaf->leaf_visit != gen) return 0;
    if (--leaf->leaf_pending > 0) return 0;
    return hook(leaf, ctx);
}

int hr_backward(hr_tensor *root, const hr_tensor *grad, bool retain_graph, void *env)
{
    if (hr_tensor_check_live(root, "backward")) return -1;
    if (!hr_requires_grad(root))
        return hr_fail(HR_EINVAL, "backward: the tensor does not require grad and has no grad_fn (nothing to differentiate)");
    hr_tensor *seed;
    if (grad) {
        if (hr_tensor_check_live(grad, "backward (gradient)")) return -1;
        if (!same_shape(grad->ndim, grad->size, root->ndim, root->size)) {
            char a[160], b[160];
            return hr_fail(HR_EINVAL, "backward: gradient of size %s does not match the tensor's size %s",
                           hr_shape_str(grad->ndim, grad->size, a, sizeof a),
                           hr_shape_str(root->ndim, root->size, b, sizeof b));
        }
        seed = hr_cast(grad, root->dtype);
    } else {
        if (hr_tensor_numel(root) != 1) {
            char a[160];
            return hr_fail(HR_EINVAL, "backward: a gradient argument is needed for a tensor of size %s "
                                      "(only one-element tensors get the implicit gradient 1)",
                           hr_shape_str(root->ndim, root->size, a, sizeof a));
        }
        seed = hr_tensor_empty(root->ndim, root->size, root->dtype, hr_tensor_device(root));
        if (seed && hr_fill_(seed, 1.0)) {
            hr_tensor_release(seed);
            seed = NULL;
        }
    }
    if (!seed) return -1;
    if (!root->grad_fn) { /* a leaf: its gradient is the seed */
        int rc = accumulate_leaf(root, seed);
        if (rc == 0 && leaf_hook) rc = leaf_hook(NULL, leaf_hook_ctx); /* nothing pending */
        return rc;
    }

    /* 1. discover the graph and count, for each node, the consumers that will send it a gradient.
     * Every node is retained until the walk ends: a Lua-defined backward may drop the last
     * reference to the graph (free the root) while the walk still holds its nodes. */
    if (n_active_walks == MAX_NESTED_WALKS) {
        hr_tensor_release(seed);
        return hr_fail(HR_EINVAL, "backward: more than %d backward calls nested in one another", MAX_NESTED_WALKS);
    }
    node_list all = {0}, stack = {0};
    int rc = 0;
    unsigned gen = ++backward_generation;
    active_walks[n_active_walks++] = gen;
    hr_node *start = root->grad_fn;
    if (in_enclosing_walk(start)) {
        rc = hr_fail(HR_EINVAL, "backward: '%s' is part of a graph an enclosing backward call is still "
                                "differentiating (a backward inside a Lua backward or hook must use another graph)",
                     start->op);
    } else {
        start->visit = gen;
        start->pending = 0;
        start->grad_acc = NULL;
        if (list_push(&stack, start) || list_push(&all, start)) rc = -1;
        else hr_node_retain(start);
    }
    hr_leaf_ready_fn hook = leaf_hook;
    void *hook_ctx = leaf_hook_ctx;
    while (rc == 0 && stack.len) {
        hr_node *n = stack.items[--stack.len];
        for (int i = 0; i < n->ninputs; i++) {
            hr_tensor *leaf = n->next[i].leaf;
            if (hook && leaf) { /* the gradients each leaf will receive in this walk */
                if (leaf->leaf_visit != gen) {
                    leaf->leaf_visit = gen;
                    leaf->leaf_pending = 0;
                }
                leaf->leaf_pending++;
            }
            hr_node *p = n->next[i].node;
            if (!p) continue;
            if (p->visit != gen) {
                if (in_enclosing_walk(p)) {
                    rc = hr_fail(HR_EINVAL, "backward: '%s' is part of a graph an enclosing backward call is still "
                                            "differentiating (a backward inside a Lua backward or hook must use "
                                            "another graph)",
                                 p->op);
                    break;
                }
                p->visit = gen;
                p->pending = 0;
                p->grad_acc = NULL;
                if (list_push(&all, p)) {
                    rc = -1;
                    break;
                }
                hr_node_retain(p);
                if (list_push(&stack, p)) {
                    rc = -1;
                    break;
                }
            }
            p->pending++;
        }
    }

    /* the hook learns which leaves this pass will reach */
    unsigned outer_walk = walk_running;
    if (rc == 0 && hook) {
        walk_running = gen;
        rc = hook(NULL, hook_ctx);
    }

    /* 2. process nodes whose consumers have all reported */
    if (rc == 0) {
        start->grad_acc = seed;
        seed = NULL;
        stack.len = 0;
        if (list_push(&stack, start)) rc = -1;
    }
    while (rc == 0 && stack.len) {
        hr_node *n = stack.items[--stack.len];
        hr_tensor *g = n->grad_acc;
        n->grad_acc = NULL;
        const bool received = g != NULL;
        g = widened_grad(n, g);
        hr_tensor **grads_in = hr_zalloc((size_t)(n->ninputs > 0 ? n->ninputs : 1), sizeof *grads_in);
        if (!grads_in) {
            hr_tensor_release(g);
            rc = hr_fail(HR_ENOMEM, "backward: out of memory");
            break;
        }
        if (!g) {
            if (!received) rc = hr_fail(HR_EINVAL, "backward: node '%s' received no gradient", n->op);
            else rc = -1; /* the widening copy failed (out of memory): its error stands */
        } else if (n->buffers_freed && (n->nsaved > 0 || n->saved_release)) {
            /* (a Lua function's ctx, released as the saved tensors are, counts as saved) */
            rc = hr_fail(HR_EINVAL,
                         "backward through the graph a second time: the tensors saved by '%s' were already freed "
                         "(pass retain_graph = true to the first backward)",
                         n->op);
        } else {
            for (int s = 0; s < n->nsaved && rc == 0; s++) {
                const hr_tensor *sv = n->saved[s];
                if (sv && sv->storage && sv->storage->version != (unsigned)n->saved_version[s])
                    rc = hr_fail(HR_EINVAL,
                                 "backward: a tensor saved by '%s' was modified in place after it was saved "
                                 "(version %u, saved at %d)",
                                 n->op, sv->storage->version, n->saved_version[s]);
            }
            n->env = env;
            double t0 = hr_backward_profile_clock();
            if (rc == 0 && n->backward(n, g, grads_in) != 0) {
                hr_error_prefix("backward of %s", n->op);
                rc = -1;
            }
            hr_backward_profile_add(n->op, t0);
        }
        double t_acc = hr_backward_profile_clock();
        hr_tensor_release(g);
        for (int i = 0; i < n->ninputs; i++) {
            hr_tensor *gi = grads_in[i];
            grads_in[i] = NULL;
            if (gi == HR_GRAD_HANDLED) { /* accumulated into the leaf by the node itself */
                if (rc == 0) rc = leaf_received(hook, hook_ctx, n->next[i].leaf, gen);
                continue;
            }
            if (rc != 0) {
                hr_tensor_release(gi);
                continue;
            }
            if (!gi) {
                /* every input that needs a gradient must get one, or its producer would wait forever */
                if (hr_node_input_needs_grad(n, i))
                    rc = hr_fail(HR_EINVAL, "backward of %s produced no gradient for input %d", n->op, i + 1);
                continue;
            }
            /* a gradient of another shape than its input's would be adopted or added out of bounds
             * (a bug in a backward function, or a Lua-defined one returning the wrong shape) */
            const hr_tensor *into_leaf = n->next[i].leaf;
            const hr_node *into_node = n->next[i].node;
            int want_nd = into_leaf ? into_leaf->ndim : into_node ? into_node->out_ndim : gi->ndim;
            const int64_t *want = into_leaf ? into_leaf->size : into_node ? into_node->out_size : gi->size;
            if (!same_shape(gi->ndim, gi->size, want_nd, want)) {
                char a[160], b[160];
                rc = hr_fail(HR_EINVAL, "backward of %s produced a gradient of size %s for input %d, whose size is %s",
                             n->op, hr_shape_str(gi->ndim, gi->size, a, sizeof a), i + 1,
                             hr_shape_str(want_nd, want, b, sizeof b));
                hr_tensor_release(gi);
                continue;
            }
            if (n->next[i].leaf) {
                rc = accumulate_leaf(n->next[i].leaf, gi);
                if (rc == 0) rc = leaf_received(hook, hook_ctx, n->next[i].leaf, gen);
            } else if (n->next[i].node) {
                hr_node *p = n->next[i].node;
                rc = accumulate_into(&p->grad_acc, gi, p->out_dtype);
                if (rc == 0 && --p->pending == 0)
                    if (list_push(&stack, p)) rc = -1;
            } else {
                hr_tensor_release(gi);
            }
        }
        free(grads_in);
        hr_backward_profile_add("(gradient accumulation)", t_acc);
        if (!retain_graph) {
            free_saved(n);
            if (n->saved_release) n->saved_release(n->ctx);
            n->buffers_freed = true;
        }
    }
    walk_running = outer_walk;
    /* drop partial gradients left by an error, and this walk's hold on the nodes */
    for (size_t k = 0; k < all.len; k++) {
        hr_tensor_release(all.items[k]->grad_acc);
        all.items[k]->grad_acc = NULL;
        all.items[k]->pending = 0;
    }
    for (size_t k = 0; k < all.len; k++) hr_node_release(all.items[k]);
    n_active_walks--;
    hr_tensor_release(seed);
    free(all.items);
    free(stack.items);
    return rc;
}
