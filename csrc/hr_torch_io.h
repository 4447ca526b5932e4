/*
 * hr_torch_io.h — Lua-free readers for PyTorch checkpoints (torch.save files) and the restricted
 * pickle machine they need.
 *
 * A torch.save file is a pickle whose tensors point at raw storages kept outside the pickle: in the
 * zip container (PyTorch >= 1.6) as members <archive>/data/<key>, in the legacy stream (before 1.6)
 * as records after the pickle. Pickle is a program, so it is never run as such: the machine below
 * implements the data opcodes itself, resolves GLOBAL names only through an allow-list supplied by
 * the caller, and "calls" nothing but the caller's own rebuild functions. Every length, index and
 * size is checked against the bytes present before use; a corrupt or hostile file gives an hr_fail()
 * naming the file, the byte offset and what is wrong.
 */
#ifndef HR_TORCH_IO_H
#define HR_TORCH_IO_H

#include "hr_core.h"

/* ------------------------------------------------------------------ pickle values (io_pickle.c) */

typedef enum {
    HR_PK_NONE = 0,
    HR_PK_BOOL,
    HR_PK_INT,    /* i; an integer beyond int64 has len > 0 and its two's complement bytes in s */
    HR_PK_FLOAT,
    HR_PK_STR,    /* unicode (UTF-8 bytes as stored) */
    HR_PK_BYTES,  /* bytes, or a Python 2 str */
    HR_PK_TUPLE,
    HR_PK_LIST,
    HR_PK_DICT,   /* items[2k] = key, items[2k+1] = value, in insertion order */
    HR_PK_GLOBAL, /* an allow-listed global: s = "module.name", i = the caller's id for it */
    HR_PK_OBJECT, /* a caller-defined object (i = kind, obj = pointer owned by the caller) */
} hr_pk_type;

typedef struct hr_pk_value {
    hr_pk_type type;
    bool b;
    int64_t i;
    double f;
    char *s;  /* STR, BYTES, GLOBAL: NUL-terminated copy (may contain NULs: use len) */
    size_t len;
    size_t n, cap;                /* TUPLE, LIST, DICT: element count (DICT: 2 x pairs) */
    struct hr_pk_value **items;
    void *obj;                    /* OBJECT */
    int tag;                      /* OBJECT: the caller's own qualifier */
} hr_pk_value;

typedef struct hr_pickle hr_pickle;

/* The caller's policy. Every hook may be NULL (then the opcode is refused). Hooks return NULL / -1
 * after hr_fail(); the machine adds the byte offset. */
typedef struct {
    void *ctx;
    /* GLOBAL / STACK_GLOBAL: a value standing for module.name, or a refusal. */
    hr_pk_value *(*find_global)(hr_pickle *p, void *ctx, const char *module, const char *name);
    /* REDUCE: callable(*args); args is a TUPLE. */
    hr_pk_value *(*reduce)(hr_pickle *p, void *ctx, hr_pk_value *callable, hr_pk_value *args);
    /* BINPERSID / PERSID: the object a persistent id stands for. */
    hr_pk_value *(*persistent_load)(hr_pickle *p, void *ctx, hr_pk_value *pid);
    /* BUILD: apply state to obj (in place). */
    int (*build)(hr_pickle *p, void *ctx, hr_pk_value *obj, hr_pk_value *state);
} hr_pickle_hooks;

/* A pickle machine owns every value it creates (an arena freed by hr_pickle_free), so shared and
 * even cyclic structures need no reference counting. `what` names the pickle in errors. */
hr_pickle *hr_pickle_new(const char *what, const hr_pickle_hooks *hooks);
void hr_pickle_free(hr_pickle *p);
/* Runs one pickle from buf up to its STOP; *used receives the bytes consumed (pickles can be
 * concatenated, as in the legacy torch format). Returns the result (owned by p) or NULL. Each call
 * starts with a fresh memo. */
hr_pk_value *hr_pickle_load(hr_pickle *p, const unsigned char *buf, size_t len, size_t *used);
/* A new value of the given type in p's arena (strings are copied). */
hr_pk_value *hr_pickle_value(hr_pickle *p, hr_pk_type type);
hr_pk_value *hr_pickle_str(hr_pickle *p, hr_pk_type type, const char *s, size_t len);
/* "str", "list", "torch._utils._rebuild_tensor_v2", ... for messages. */
const char *hr_pk_type_name(const hr_pk_value *v);
/* Looks a string key up in a DICT (NULL when absent). */
hr_pk_value *hr_pk_dict_get(const hr_pk_value *dict, const char *key);

/* ------------------------------------------------------------------ torch.save files (io_torch.c) */

/* OBJECT kinds made by the torch policy. */
enum { HR_PK_OBJ_STORAGE = 1, HR_PK_OBJ_TENSOR = 2 };

/* A loaded checkpoint: the root value (usually a DICT) whose tensor leaves are OBJECTs of kind
 * HR_PK_OBJ_TENSOR; hr_torch_tensor() gives their hero tensor. Tensors that shared a storage in
 * PyTorch (tied weights, views) share one hero storage. */
typedef struct {
    hr_pickle *pickle; /* owns the values */
    hr_pk_value *root;
    void *priv;        /* storages and tensors */
} hr_torch_file;

/* The tensor of a HR_PK_OBJ_TENSOR value (borrowed: retain it to keep it), else NULL. */
hr_tensor *hr_torch_tensor(const hr_pk_value *v);

/* What a file starting with these bytes is: "zip" (a zip archive, the container of PyTorch >= 1.6
 * when it holds a data.pkl), "legacy" (the pre-1.6 stream's magic number) or NULL. The first 32 bytes
 * (or the whole file when shorter) are enough. */
const char *hr_torch_sniff(const void *head, size_t len);

/* Reads a torch.save file (either format); storages go to the CPU whatever their saved location. */
int hr_torch_load(const char *path, hr_torch_file *out);
/* Same on a buffer held in memory; `what` names it in errors. */
int hr_torch_parse(const void *buf, size_t len, const char *what, hr_torch_file *out);
/* A bare pickle (a checkpoint's data.pkl, without its container) under the same policy; the
 * storages it references hold no data here and are zero-filled, refused when together they exceed
 * max_storage_bytes. For inspecting a checkpoint's structure and for fuzzing the unpickler. */
int hr_torch_parse_pickle(const void *buf, size_t len, const char *what, size_t max_storage_bytes,
                          hr_torch_file *out);
void hr_torch_file_free(hr_torch_file *f);

#endif
