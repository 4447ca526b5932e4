/*
 * hr_autograd.h — the reverse-mode tape.
 *
 * Every differentiable op that sees an input needing a gradient (while grad mode is on) creates one
 * node: the op's backward function, references to what it saved, and one edge per input saying where
 * that input's gradient goes (the node that produced the input, or the leaf tensor to accumulate
 * into). The output tensor holds the node; nodes hold their parents, so a graph lives exactly as long
 * as some tensor can reach it. hr_backward walks the graph once in reverse topological order.
 */
#ifndef HR_AUTOGRAD_H
#define HR_AUTOGRAD_H

#include "hr_core.h"

#define HR_NODE_MAX_SAVED 8

typedef struct hr_node hr_node;

/* Computes the gradient of each input from the gradient of the output. grads_in has node->ninputs
 * slots, all NULL on entry; fill those whose edge needs a gradient (hr_node_input_needs_grad) with
 * new references (the engine takes them over), shaped exactly like the input. Returns 0 or -1. */
typedef int (*hr_backward_fn)(hr_node *node, const hr_tensor *grad_out, hr_tensor **grads_in);

/* A backward function may store this in grads_in[i] when it accumulated input i's gradient itself
 * (only for a leaf edge: e.g. the embedding adds into the used rows of weight.grad in place). */
extern const hr_tensor hr_grad_handled_marker;
#define HR_GRAD_HANDLED ((hr_tensor *)&hr_grad_handled_marker)
/* The leaf's .grad, created as zeros if absent (for backward functions that accumulate in place). */
hr_tensor *hr_leaf_grad_buffer(hr_tensor *leaf);

typedef struct {
    hr_node *node;   /* the producer of the input (owned reference), or NULL */
    hr_tensor *leaf; /* a leaf that requires grad (owned reference), or NULL */
} hr_edge;

struct hr_node {
    int refcount;
    const char *op; /* name used in error messages */
    hr_backward_fn backward;
    int ninputs;
    hr_edge *next;
    /* tensors saved for backward: aliases (never the outputs themselves, to avoid cycles), with the
     * version they had when saved so in-place changes are detected */
    int nsaved;
    hr_tensor *saved[HR_NODE_MAX_SAVED];
    int saved_version[HR_NODE_MAX_SAVED];
    bool buffers_freed; /* set after a backward without retain_graph */
    /* shape/dtype of the output, to check incoming gradients */
    int out_ndim;
    int64_t out_size[HR_MAX_DIMS];
    hr_dtype out_dtype;
    /* op-specific payload (integers, dims, scalars), freed with the node */
    void *ctx;
    void (*ctx_destroy)(void *ctx);
    /* what backward without retain_graph frees of ctx (NULL: nothing), as it frees the saved
     * tensors: a Lua function's ctx table, which may hold the tensors its forward kept */
    void (*saved_release)(void *ctx);
    /* engine scratch; env is hr_backward's env argument, for backward functions that call back into
     * the caller (Lua-defined functions receive the running lua_State there) */
    void *env;
    unsigned visit;
    int pending;
    hr_tensor *grad_acc;
};

/* Grad mode (per thread). */
bool hr_grad_enabled(void);
void hr_set_grad_enabled(bool on);
/* True when t participates in the graph: a leaf requiring grad or the output of a recorded op. */
bool hr_requires_grad(const hr_tensor *t);
/* True when grad mode is on and any of the inputs requires grad: the op must record a node. */
bool hr_should_record(int n, hr_tensor *const *inputs);

/* New node with edges to the inputs (NULL inputs or ones not requiring grad get empty edges).
 * ctx_size bytes of zeroed payload are allocated in node->ctx. */
hr_node *hr_node_new(const char *op, hr_backward_fn backward, int n, hr_tensor *const *inputs, size_t ctx_size);
bool hr_node_input_needs_grad(const hr_node *node, int i);
/* The shape the gradient of input i must have (its leaf's, or its producer's output's); only for an
 * input that needs a gradient. */
void hr_node_input_shape(const hr_node *node, int i, int *ndim, const int64_t **size);
/* Saves t for backward (returns its slot or -1). */
int hr_node_save(hr_node *node, hr_tensor *t);
/* Returns saved tensor i, or NULL with an error when it was freed by an earlier backward or modified
 * in place since it was saved. */
hr_tensor *hr_node_saved(hr_node *node, int i);
/* Makes node the grad_fn of out (takes over the caller's reference to node). */
void hr_node_attach(hr_node *node, hr_tensor *out);
void hr_node_retain(hr_node *node);

/* Runs backward from root. grad may be NULL only for a one-element root (it is then 1). env is
 * handed to every node as node->env while its backward runs. */
int hr_backward(hr_tensor *root, const hr_tensor *grad, bool retain_graph, void *env);

/* A function the backward engine calls, on the thread running the backward pass, for every leaf of
 * the graph as soon as its .grad holds everything this pass sends it (the leaf's last incoming
 * gradient was accumulated), while the rest of the pass still runs: data-parallel training starts
 * reducing the gradients of the last layers while the first ones are still being computed. A
 * failing hook (-1 with an hr error) stops the pass with that error. Set per thread; NULL clears. */
typedef int (*hr_leaf_ready_fn)(hr_tensor *leaf, void *ctx);
void hr_backward_set_leaf_hook(hr_leaf_ready_fn fn, void *ctx);
/* Once the pass has found its graph, before any gradient flows, the hook is called with leaf NULL:
 * hr_backward_leaf_pending(t) then says whether this pass will send t a gradient (the others are
 * complete already, or get none). */
bool hr_backward_leaf_pending(const hr_tensor *t);

/* The incoming gradient g of a node's backward handed on unchanged to one input: g itself (a new
 * reference) when the engine is its only holder, else a copy. At most one input may get it. */
hr_tensor *hr_grad_pass_on(const hr_tensor *g);
/* Whether the engine is the only holder of g (a backward may then hand g itself on). */
bool hr_grad_is_exclusive(const hr_tensor *g);

/* dst += src elementwise (same shape, float dtypes, may differ in dtype); used for accumulation. */
int hr_grad_accumulate_(hr_tensor *dst, const hr_tensor *src);

/* Per-node timing of backward walks on this thread (hr_backward_profile.c), for finding where a
 * backward pass spends its time. With sync, every node waits for the GPU, so that the times are
 * device times. */
typedef struct {
    const char *op;
    int64_t calls;
    double seconds;
} hr_backward_stat;
void hr_backward_profile_start(bool sync);
/* Stops timing; returns the number of distinct ops and points *stats at them (valid until the
 * next start; a second stop returns 0). The op "(gradient accumulation)" is the time after each
 * node spent handing its gradients on. */
int hr_backward_profile_stop(const hr_backward_stat **stats);
/* 0 when profiling is off, else a start time for hr_backward_profile_add. */
double hr_backward_profile_clock(void);
void hr_backward_profile_add(const char *op, double start);

#endif
