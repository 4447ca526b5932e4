/*
 * l_common.h — helpers shared by the Lua bindings (csrc/l_*.c). Only the bindings include lua.h.
 *
 * Each binding file exports one registration function, called from luaopen_hero_core (l_hero.c):
 *     void hr_lua_open_<name>(lua_State *L, int module_idx, int methods_idx);
 * module_idx is the hero.core table (functions like hero.core.zeros), methods_idx the table of
 * tensor methods (t:sum(), t:narrow(...)); both are absolute stack indices.
 */
#ifndef HR_L_COMMON_H
#define HR_L_COMMON_H

#include <lua.h>
#include <lauxlib.h>

#include "hr_core.h"

#define HR_TENSOR_MT "hero.Tensor"

/* The userdata is a box holding one reference to a core tensor (NULL once freed). A :free() called
 * from a finalizer moves the reference to `deferred`, which the box's own __gc releases (see
 * hr_lua_in_finalizer). */
typedef struct {
    hr_tensor *t;
    hr_tensor *deferred;
} hr_tensor_box;

/* Returns the live tensor at idx or raises "op: argument #idx: expected a hero.Tensor, got X" /
 * "op: argument #idx: tensor was freed". */
hr_tensor *hr_lua_check_tensor(lua_State *L, int idx, const char *op);
/* NULL when the value at idx is not a tensor (no error). */
hr_tensor *hr_lua_to_tensor(lua_State *L, int idx);
/* Pushes a new userdata owning t (takes over the caller's reference). If t is NULL, raises the
 * core's last error. Accounts the storage bytes to the GC (see hr_lua_account). */
void hr_lua_push_tensor(lua_State *L, hr_tensor *t);
/* Whether a finalizer (__gc) is running in this state. The collector runs finalizers inside whatever
 * allocation set it off, which may be in the middle of a binding holding raw pointers to objects it
 * took from its arguments (a tensor's core, an LMDB mapping, a worker pool, a tokenizer). So an
 * explicit release (t:free(), db:close(), pool:close(), tokenizer:free()) called from a finalizer only
 * marks its object released: every later use from Lua is refused as after a release, and the memory
 * goes when the object's own __gc runs, which is when nothing, a binding's arguments included, can
 * reach it. */
bool hr_lua_in_finalizer(lua_State *L);
/* The explicit release and the __gc of a box whose object sits in box->FIELD and, once released from
 * a finalizer, in box->deferred: DESTROY(object) must accept NULL. */
#define HR_LUA_RELEASE_OR_DEFER(L, box, FIELD, DESTROY)                          \
    do {                                                                          \
        void *released_ = (void *)(box)->FIELD;                                   \
        (box)->FIELD = NULL;                                                      \
        if (released_ && hr_lua_in_finalizer(L) && !(box)->deferred)              \
            (box)->deferred = released_;                                          \
        else                                                                      \
            DESTROY(released_);                                                   \
    } while (0)
#define HR_LUA_RELEASE_ALL(box, FIELD, DESTROY)                                   \
    do {                                                                          \
        void *held_ = (void *)(box)->FIELD, *deferred_ = (void *)(box)->deferred; \
        (box)->FIELD = NULL;                                                      \
        (box)->deferred = NULL;                                                   \
        DESTROY(held_);                                                           \
        DESTROY(deferred_);                                                       \
    } while (0)
/* Raises the core's last error as a Lua error, prefixed with op. Never returns. */
int hr_lua_error(lua_State *L, const char *op);

/* Converts a Lua 1-based (or negative from the end) dimension at idx to a 0-based one. */
int hr_lua_check_dim(lua_State *L, int idx, int ndim, const char *op);
/* Reads a shape given either as a table {2,3} or as integers from idx to the top. */
int hr_lua_check_shape(lua_State *L, int idx, int64_t *size, const char *op);
/* The table at idx must be a plain list (keys 1..#t only): a keyword table such as {dim = 2} (a
 * torch habit) read as a list is empty, and the op ran over everything without a word. */
void hr_lua_check_list(lua_State *L, int idx, const char *op, const char *what);
/* Parses a dtype name at idx, or returns def when the slot is nil/none. */
hr_dtype hr_lua_opt_dtype(lua_State *L, int idx, hr_dtype def, const char *op);
/* Raises a Lua error naming op when the number (or boolean) at idx cannot be stored in dtype dt
 * without overflow, as PyTorch's checked conversion: an integer or float beyond the dtype's range,
 * NaN or an infinity into an integer dtype (u8 also takes -255..-1, which wrap, as PyTorch's). */
void hr_lua_check_fits(lua_State *L, int idx, hr_dtype dt, const char *op);
/* The stack index of an optional options table at argument idx: idx when it is a table, 0 when it
 * is absent or nil; anything else is an error naming op and the argument (a dtype name given in
 * its place, hero.tensor(v, "f64"), would silently give f32). */
int hr_lua_opts_arg(lua_State *L, int idx, const char *op);
/* Reads the fields dtype= and device= of an options table at idx (absent idx/nil: defaults). Any
 * other key is refused (a misspelt dtype would silently give f32), but generator= when
 * with_generator (hr_lua_opt_generator reads it). */
void hr_lua_opt_dtype_device(lua_State *L, int idx, hr_dtype *dt, hr_device *dev, bool with_generator,
                             const char *op);
/* Field `name` of the options table at idx (absolute), or def when it is absent; a value of the wrong
 * type is an error naming op and the option ("cross_entropy: option ignore_index must be an integer,
 * got string"). _option: one of names (NULL-terminated), returned as its index. */
lua_Integer hr_lua_opt_field_integer(lua_State *L, int idx, const char *name, lua_Integer def, const char *op);
double hr_lua_opt_field_number(lua_State *L, int idx, const char *name, double def, const char *op);
int hr_lua_opt_field_option(lua_State *L, int idx, const char *name, int def, const char *const names[],
                            const char *op);

/*
 * Out-of-memory policy: evaluate EXPR (which yields a pointer, NULL on failure); if it failed
 * with HR_ENOMEM, run a full garbage collection and evaluate it once more.
 */
#define HR_LUA_RETRY(L, var, EXPR)                                    \
    do {                                                              \
        (var) = (EXPR);                                               \
        if ((var) == NULL && hr_last_errcode() == HR_ENOMEM) {        \
            lua_gc((L), LUA_GCCOLLECT);                               \
            (var) = (EXPR);                                           \
        }                                                             \
    } while (0)

/* Same for int-returning expressions (-1 on failure). */
#define HR_LUA_RETRY_INT(L, var, EXPR)                                \
    do {                                                              \
        (var) = (EXPR);                                               \
        if ((var) != 0 && hr_last_errcode() == HR_ENOMEM) {           \
            lua_gc((L), LUA_GCCOLLECT);                               \
            (var) = (EXPR);                                           \
        }                                                             \
    } while (0)

/* Adds module functions (to hero.core) and tensor methods; either list may be NULL. */
void hr_lua_register(lua_State *L, int module_idx, int methods_idx, const luaL_Reg *module_fns,
                     const luaL_Reg *method_fns);

/* Tells the GC that nbytes of tensor memory were allocated outside Lua's heap. */
void hr_lua_account(lua_State *L, size_t nbytes);
/* A full collection if tensors of 1 MiB (64 MiB on devices) or more were made since the last one:
 * backward calls it first, so that the forward pass's dead tensors that only Lua still holds are
 * released and the memory the backward pass frees as it goes is really freed. */
void hr_lua_collect_pending(lua_State *L);
/* The full collections hero asked for in this state: all of them, those that new device bytes
 * set off, those backward set off (hr_lua_collect_pending), those made while the host was about to
 * wait for a device (hr_lua_collect_while_waiting), and the seconds they took. */
typedef struct {
    uint64_t collections, device_collections, pending_collections, idle_collections;
    double seconds;
    uint64_t finalized; /* tensor objects freed on this thread so far (by the collector or :free()) */
} hr_lua_gc_counts;
void hr_lua_gc_stats(lua_State *L, hr_lua_gc_counts *out);
/* Tensor objects freed on this thread, by the collector or :free() (l_tensor.c counts, profiles
 * read). */
extern _Thread_local uint64_t hr_lua_tensors_finalized;
/* The device collection limits as fractions of the allocated device bytes: soft (collect when the
 * allocator's cache runs low; default 0.25) and hard (collect in any case; default 0.5). */
void hr_lua_set_device_collect_fractions(lua_State *L, double soft, double hard);
/* The host is about to wait for a device (reading a value back): a full collection if 256 MiB of
 * device tensors were made since the last one. Its millisecond passes while the device still
 * works, and the collections that new device bytes would set off during the next forward pass,
 * when the host is what the device waits for, start from nothing. */
void hr_lua_collect_while_waiting(lua_State *L);
/* Counts nbytes of tensor memory that may have become garbage towards the next collection. */
void hr_lua_note_garbage(lua_State *L, size_t nbytes);

/* The generator named by the generator= field of the options table at oi (0: none), or the state's
 * default generator (l_random.c). */
struct hr_generator;
struct hr_generator *hr_lua_opt_generator(lua_State *L, int oi, const char *op);

/* Registration functions of each binding file. */
void hr_lua_open_tensor(lua_State *L, int module_idx, int methods_idx);     /* l_tensor.c */
void hr_lua_open_pointwise(lua_State *L, int module_idx, int methods_idx);  /* l_pointwise.c */
void hr_lua_open_reduce(lua_State *L, int module_idx, int methods_idx);     /* l_reduce.c */
void hr_lua_open_search(lua_State *L, int module_idx, int methods_idx);     /* l_search.c */
void hr_lua_open_linalg(lua_State *L, int module_idx, int methods_idx);     /* l_linalg.c */
void hr_lua_open_index(lua_State *L, int module_idx, int methods_idx);      /* l_index.c */
void hr_lua_open_random(lua_State *L, int module_idx, int methods_idx);     /* l_random.c */
void hr_lua_open_io(lua_State *L, int module_idx, int methods_idx);         /* l_io.c */
void hr_lua_open_autograd(lua_State *L, int module_idx, int methods_idx);   /* l_autograd.c */
void hr_lua_open_optim(lua_State *L, int module_idx, int methods_idx);      /* l_optim.c */
void hr_lua_open_nn(lua_State *L, int module_idx, int methods_idx);         /* l_nn.c */
void hr_lua_open_function(lua_State *L, int module_idx, int methods_idx);   /* l_function.c */
void hr_lua_open_data(lua_State *L, int module_idx, int methods_idx);       /* l_data.c */
void hr_lua_open_datawrite(lua_State *L, int module_idx, int methods_idx);  /* l_datawrite.c */
void hr_lua_open_text(lua_State *L, int module_idx, int methods_idx);       /* l_text.c */
void hr_lua_open_torchpt(lua_State *L, int module_idx, int methods_idx);    /* l_torchpt.c */
void hr_lua_open_dist(lua_State *L, int module_idx, int methods_idx);       /* l_dist.c */
void hr_lua_open_cuda(lua_State *L, int module_idx, int methods_idx);       /* l_cuda.c */
void hr_lua_open_autocast(lua_State *L, int module_idx, int methods_idx);   /* l_autocast.c */
/* The tensor argument at idx, replaced on the stack by its cast copy when autocast asks for one
 * (kind: an hr_autocast_kind of hr_autocast.h). */
hr_tensor *hr_lua_autocast(lua_State *L, int idx, int kind, const char *op);
void hr_lua_open_workers(lua_State *L, int module_idx, int methods_idx);    /* l_workers.c */
void hr_lua_open_proc(lua_State *L, int module_idx, int methods_idx);       /* l_proc.c */

/* Autograd fields of tensors (t.grad, t.requires_grad, t.is_leaf, t.grad_fn); return 1 when handled. */
int hr_lua_autograd_field(lua_State *L, hr_tensor *t, const char *key);
/* Whether key is one of the fields hr_lua_autograd_field answers (grad, requires_grad, is_leaf, grad_fn). */
bool hr_lua_is_autograd_field(const char *key);
int hr_lua_autograd_set_field(lua_State *L, hr_tensor *t, const char *key, int value_idx);
/* Raises an error when t is a leaf that requires grad and is about to be written in place. */
/* Pushes t[name] of the table at idx without metamethods and returns its type: the bindings read
 * option tables and lists raw, so that no Lua code (which could free a tensor the binding already
 * holds) runs while they parse their arguments. */
int hr_lua_rawfield(lua_State *L, int idx, const char *name);

/* The path string at idx: an error naming op when it holds a NUL byte, which the system calls would
 * take as its end (a different file than the one named). */
const char *hr_lua_check_path(lua_State *L, int idx, const char *op);

/* The options table at idx (absent or nil: none), whose keys must all be in names (NULL-terminated;
 * list names them for the error): a misspelt option would otherwise be ignored and silently change
 * the result. Returns its absolute index, or 0 when there is none; raises for a non-table. */
int hr_lua_options(lua_State *L, int idx, const char *const names[], const char *list, const char *op);
/* Raises a Lua error when t is an expanded view (a stride-0 dimension of size > 1), which an
 * in-place write would reach twice. hr_lua_check_inplace includes it. */
void hr_lua_check_writable(lua_State *L, const hr_tensor *t, const char *op);
void hr_lua_check_inplace(lua_State *L, hr_tensor *t, const char *op);
/* In-place arithmetic is not recorded on the tape: refuses when self or other takes part in a graph
 * (while recording), instead of silently producing wrong gradients. */
/* An in-place write (copy_, fill_, index assignment) of src, a value that requires grad while grad
 * mode is on, is refused: the write is not recorded, so src's gradient would be lost without a word. */
void hr_lua_check_source_detached(lua_State *L, hr_tensor *src, const char *op);
void hr_lua_check_graph_inplace(lua_State *L, hr_tensor *self, hr_tensor *other, const char *op);

#endif
