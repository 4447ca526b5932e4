/*
 * io_torch.c — PyTorch checkpoints (torch.save files) in both of their formats:
 *
 *   zip container (PyTorch >= 1.6): <archive>/data.pkl (the pickle), <archive>/data/<key> (one raw
 *     storage per key), <archive>/version, optionally <archive>/byteorder ("little" / "big");
 *   legacy stream (before 1.6): five pickles back to back — magic number, protocol version (1001),
 *     system info (byte order), the object, the list of storage keys — then, per listed key, an
 *     8-byte element count and the raw elements.
 *
 * The pickle runs on the restricted machine of io_pickle.c with this policy: the only globals are
 * collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter
 * and the typed storage classes torch.<Type>Storage; the only persistent ids are storage references
 * ('storage', <type>, key, location, numel[, None]). Every tensor's size / stride / offset is checked
 * against its storage before any hero tensor exists, and storage bytes are checked against the
 * declared element counts before they are allocated. Storages land on the CPU whatever location they
 * were saved from; tensors sharing a storage in the file share one hero storage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hr_io.h"
#include "hr_torch_io.h"

/* ------------------------------------------------------------------ the allow-list */

enum { G_ODICT = 1, G_REBUILD_V2, G_REBUILD, G_PARAM, G_SIZE, G_STORAGE0 = 100 };

/* torch dtypes, which a checkpoint's config may hold as values (torch.load(weights_only=True)
 * accepts them): loaded as their names, "torch.float16" */
static const char *const torch_dtypes[] = {"float16", "float32", "float64", "bfloat16", "int64", "int32", "int16",
                                           "int8",    "uint8",   "bool",    "half",     "float", "double", "long",
                                           "int",     "short",   "complex64", "complex128", "cfloat", "cdouble"};

static const struct {
    const char *cls;   /* torch.<cls> */
    int dtype;         /* hero dtype, or -1 when hero has none */
    const char *torch; /* the element type's PyTorch name, for messages */
    size_t elsize;
} storage_types[] = {
    {"HalfStorage", HR_F16, "float16", 2},   {"FloatStorage", HR_F32, "float32", 4},
    {"DoubleStorage", HR_F64, "float64", 8}, {"BFloat16Storage", HR_BF16, "bfloat16", 2},
    {"LongStorage", HR_I64, "int64", 8},     {"IntStorage", HR_I32, "int32", 4},
    {"ShortStorage", -1, "int16", 2},        {"CharStorage", -1, "int8", 1},
    {"ByteStorage", HR_U8, "uint8", 1},      {"BoolStorage", HR_BOOL, "bool", 1},
    {"ComplexFloatStorage", -1, "complex64", 8}, {"ComplexDoubleStorage", -1, "complex128", 16},
    {"QInt8Storage", -1, "qint8", 1},        {"QUInt8Storage", -1, "quint8", 1},
    {"QInt32Storage", -1, "qint32", 4},
};
#define N_STORAGE_TYPES (sizeof storage_types / sizeof storage_types[0])

/* ------------------------------------------------------------------ loader state */

typedef struct {
    char *key;
    uint64_t nbytes;  /* numel x element size, as declared by the first reference */
    size_t elsize;    /* element size of the first reference (legacy records, byte swapping) */
    bool mixed;       /* referenced with several element sizes */
    bool as_bool;     /* referenced as a bool storage */
    bool filled;
    hr_storage *storage;
} tstorage;

typedef struct {
    tstorage *st;
    hr_dtype dt;
    int ndim;
    int64_t size[HR_MAX_DIMS], stride[HR_MAX_DIMS], offset;
    bool requires_grad;
    hr_tensor *t;
} ttensor;

typedef struct {
    tstorage **st;
    size_t nst, st_cap;
    size_t *table; /* open addressing over st: index + 1, 0 = empty */
    size_t table_cap;
    ttensor **tt;
    size_t ntt, tt_cap;
} torch_state;

static int grow(void **arr, size_t *cap, size_t need, size_t elsize)
{
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elsize) return hr_fail(HR_ENOMEM, "out of memory loading a checkpoint");
        nc *= 2;
    }
    void *p = realloc(*arr, nc * elsize);
    if (!p) return hr_fail(HR_ENOMEM, "out of memory loading a checkpoint");
    *arr = p;
    *cap = nc;
    return 0;
}

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static tstorage *find_storage(const torch_state *S, const char *key)
{
    if (!S->table_cap) return NULL;
    for (size_t h = hash_key(key) & (S->table_cap - 1);; h = (h + 1) & (S->table_cap - 1)) {
        size_t e = S->table[h];
        if (!e) return NULL;
        if (strcmp(S->st[e - 1]->key, key) == 0) return S->st[e - 1];
    }
}

static void table_insert(torch_state *S, size_t idx)
{
    size_t h = hash_key(S->st[idx]->key) & (S->table_cap - 1);
    while (S->table[h]) h = (h + 1) & (S->table_cap - 1);
    S->table[h] = idx + 1;
}

static tstorage *add_storage(torch_state *S, const char *key)
{
    if (grow((void **)&S->st, &S->st_cap, S->nst + 1, sizeof *S->st)) return NULL;
    /* Keep the table at most half full. */
    if (2 * (S->nst + 1) > S->table_cap) {
        size_t nc = S->table_cap ? 2 * S->table_cap : 64;
        size_t *t = calloc(nc, sizeof *t);
        if (!t) return hr_fail_null(HR_ENOMEM, "out of memory loading a checkpoint");
        free(S->table);
        S->table = t;
        S->table_cap = nc;
        for (size_t i = 0; i < S->nst; i++) table_insert(S, i);
    }
    tstorage *st = calloc(1, sizeof *st);
    char *k = strdup(key);
    if (!st || !k) {
        free(st);
        free(k);
        return hr_fail_null(HR_ENOMEM, "out of memory loading a checkpoint");
    }
    st->key = k;
    S->st[S->nst] = st;
    table_insert(S, S->nst);
    S->nst++;
    return st;
}

static void state_free(torch_state *S)
{
    if (!S) return;
    for (size_t i = 0; i < S->nst; i++) {
        if (S->st[i]->storage) hr_storage_release(S->st[i]->storage);
        free(S->st[i]->key);
        free(S->st[i]);
    }
    for (size_t i = 0; i < S->ntt; i++) {
        hr_tensor_release(S->tt[i]->t);
        free(S->tt[i]);
    }
    free(S->st);
    free(S->table);
    free(S->tt);
    free(S);
}

/* ------------------------------------------------------------------ pickle hooks */

static hr_pk_value *find_global(hr_pickle *p, void *ctx, const char *module, const char *name)
{
    (void)ctx;
    int id = 0;
    if (strcmp(module, "collections") == 0 && strcmp(name, "OrderedDict") == 0) {
        id = G_ODICT;
    } else if (strcmp(module, "torch._utils") == 0) {
        if (strcmp(name, "_rebuild_tensor_v2") == 0) id = G_REBUILD_V2;
        else if (strcmp(name, "_rebuild_tensor") == 0) id = G_REBUILD;
        else if (strcmp(name, "_rebuild_parameter") == 0) id = G_PARAM;
    } else if (strcmp(module, "torch") == 0) {
        for (size_t k = 0; k < N_STORAGE_TYPES; k++)
            if (strcmp(name, storage_types[k].cls) == 0) id = G_STORAGE0 + (int)k;
        if (strcmp(name, "Size") == 0) id = G_SIZE; /* torch.Size((2, 3)): its ints, as a list */
        for (size_t k = 0; k < sizeof torch_dtypes / sizeof torch_dtypes[0]; k++) {
            if (strcmp(name, torch_dtypes[k]) == 0) {
                char dname[64];
                snprintf(dname, sizeof dname, "torch.%s", name);
                return hr_pickle_str(p, HR_PK_STR, dname, strlen(dname));
            }
        }
    }
    if (!id)
        return hr_fail_null(HR_EFORMAT,
                            "refusing to unpickle global '%s.%s' (a checkpoint may only hold tensors, storages, "
                            "OrderedDict and plain values)",
                            module, name);
    char full[520];
    snprintf(full, sizeof full, "%s.%s", module, name);
    hr_pk_value *v = hr_pickle_str(p, HR_PK_GLOBAL, full, strlen(full));
    if (v) v->i = id;
    return v;
}

static int get_int(const hr_pk_value *v, const char *what, int64_t *out)
{
    if (v->type != HR_PK_INT) return hr_fail(HR_EFORMAT, "%s must be an int, got %s", what, hr_pk_type_name(v));
    if (v->len) return hr_fail(HR_EFORMAT, "%s does not fit 64 bits", what);
    *out = v->i;
    return 0;
}

static hr_pk_value *persistent_load(hr_pickle *p, void *ctx, hr_pk_value *pid)
{
    torch_state *S = ctx;
    if (pid->type != HR_PK_TUPLE || pid->n < 5 || pid->n > 6)
        return hr_fail_null(HR_EFORMAT,
                            "persistent id must be a tuple ('storage', type, key, location, numel), got a %s of %zu items",
                            hr_pk_type_name(pid), pid->type == HR_PK_STR ? pid->len : pid->n);
    hr_pk_value *const *a = pid->items;
    if (a[0]->type != HR_PK_STR || strcmp(a[0]->s, "storage") != 0)
        return hr_fail_null(HR_EFORMAT, "unknown persistent id kind (a %s, expected 'storage')", hr_pk_type_name(a[0]));
    if (a[1]->type != HR_PK_GLOBAL || a[1]->i < G_STORAGE0)
        return hr_fail_null(HR_EFORMAT, "persistent id names %s, not a storage type", hr_pk_type_name(a[1]));
    size_t k = (size_t)(a[1]->i - G_STORAGE0);
    if (storage_types[k].dtype < 0)
        return hr_fail_null(HR_EFORMAT, "storage type torch.%s holds %s elements, which no hero dtype represents",
                            storage_types[k].cls, storage_types[k].torch);
    hr_dtype dt = (hr_dtype)storage_types[k].dtype;
    if (a[2]->type != HR_PK_STR || strlen(a[2]->s) != a[2]->len || a[2]->len == 0 || a[2]->len > 1024)
        return hr_fail_null(HR_EFORMAT, "storage key must be a short non-empty string, got a %s", hr_pk_type_name(a[2]));
    if (a[3]->type != HR_PK_STR)
        return hr_fail_null(HR_EFORMAT, "storage location must be a string, got a %s", hr_pk_type_name(a[3]));
    int64_t numel = 0;
    if (get_int(a[4], "storage element count", &numel)) return NULL;
    if (pid->n == 6 && a[5]->type != HR_PK_NONE)
        return hr_fail_null(HR_EFORMAT,
                            "storage '%s' is a view of another storage (written by PyTorch < 0.4): not supported",
                            a[2]->s);
    size_t elsize = hr_dtype_size(dt);
    if (numel < 0 || (uint64_t)numel > (uint64_t)INT64_MAX / elsize)
        return hr_fail_null(HR_EFORMAT, "storage '%s' declares an impossible element count %" PRId64, a[2]->s, numel);
    uint64_t nbytes = (uint64_t)numel * elsize;
    tstorage *st = find_storage(S, a[2]->s);
    if (st) {
        if (st->nbytes != nbytes)
            return hr_fail_null(HR_EFORMAT, "storage '%s' is declared as %" PRIu64 " bytes and as %" PRIu64 " bytes",
                                st->key, st->nbytes, nbytes);
        if (st->elsize != elsize) st->mixed = true;
    } else {
        if (!(st = add_storage(S, a[2]->s))) return NULL;
        st->nbytes = nbytes;
        st->elsize = elsize;
    }
    if (dt == HR_BOOL) st->as_bool = true;
    hr_pk_value *v = hr_pickle_value(p, HR_PK_OBJECT);
    if (!v) return NULL;
    v->i = HR_PK_OBJ_STORAGE;
    v->obj = st;
    v->tag = (int)dt;
    return v;
}

static const char *ints_str(int n, const int64_t *x, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < n && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%" PRId64, i ? ", " : "", x[i]);
    if (len < cap) snprintf(buf + len, cap - len, ")");
    return buf;
}

/* An int tuple (size or stride) into out[]; *n receives its length. */
static int get_dims(const hr_pk_value *v, const char *what, int64_t *out, int *n)
{
    if (v->type != HR_PK_TUPLE && v->type != HR_PK_LIST)
        return hr_fail(HR_EFORMAT, "tensor %s must be a tuple of ints, got %s", what, hr_pk_type_name(v));
    if (v->n > HR_MAX_DIMS)
        return hr_fail(HR_EFORMAT, "tensor %s has %zu dimensions (hero supports at most %d)", what, v->n, HR_MAX_DIMS);
    for (size_t i = 0; i < v->n; i++) {
        if (get_int(v->items[i], what, &out[i])) return -1;
        if (out[i] < 0) return hr_fail(HR_EFORMAT, "tensor %s has a negative entry %" PRId64, what, out[i]);
    }
    *n = (int)v->n;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata]) and
 * _rebuild_tensor(storage, offset, size, stride). */
static hr_pk_value *rebuild_tensor(hr_pickle *p, torch_state *S, const char *fn, hr_pk_value *args, bool v2)
{
    size_t n = args->n;
    if (v2 ? (n != 6 && n != 7) : n != 4)
        return hr_fail_null(HR_EFORMAT, "%s takes %s arguments, got %zu", fn, v2 ? "6 or 7" : "4", n);
    hr_pk_value *const *a = args->items;
    if (a[0]->type != HR_PK_OBJECT || a[0]->i != HR_PK_OBJ_STORAGE)
        return hr_fail_null(HR_EFORMAT, "%s needs a storage, got %s", fn, hr_pk_type_name(a[0]));
    ttensor tt;
    memset(&tt, 0, sizeof tt);
    tt.st = a[0]->obj;
    tt.dt = (hr_dtype)a[0]->tag;
    int nstride = 0;
    if (get_int(a[1], "storage offset", &tt.offset) || get_dims(a[2], "size", tt.size, &tt.ndim) ||
        get_dims(a[3], "stride", tt.stride, &nstride))
        return NULL;
    if (tt.offset < 0) return hr_fail_null(HR_EFORMAT, "negative storage offset %" PRId64, tt.offset);
    if (nstride != tt.ndim)
        return hr_fail_null(HR_EFORMAT, "tensor size has %d dimensions but its stride %d", tt.ndim, nstride);
    if (v2) {
        if (a[4]->type != HR_PK_BOOL)
            return hr_fail_null(HR_EFORMAT, "requires_grad must be a bool, got %s", hr_pk_type_name(a[4]));
        tt.requires_grad = a[4]->b;
        if (tt.requires_grad && !hr_dtype_is_float(tt.dt))
            return hr_fail_null(HR_EFORMAT, "a %s tensor cannot require gradients", hr_dtype_name(tt.dt));
        /* backward hooks cannot be restored (PyTorch drops them too, with a warning); metadata holds
         * Python attributes of the tensor, which hero tensors do not have. */
        if (a[5]->type != HR_PK_DICT && a[5]->type != HR_PK_NONE)
            return hr_fail_null(HR_EFORMAT, "backward hooks must be a dict, got %s", hr_pk_type_name(a[5]));
    }
    /* Highest element reached, with every product and sum overflow-checked. */
    uint64_t cap = tt.st->nbytes / hr_dtype_size(tt.dt);
    int64_t numel = 1, hi = tt.offset;
    bool overflow = false;
    for (int i = 0; i < tt.ndim; i++) {
        int64_t span;
        if (__builtin_mul_overflow(numel, tt.size[i], &numel)) overflow = true;
        if (tt.size[i] > 0) {
            if (__builtin_mul_overflow(tt.size[i] - 1, tt.stride[i], &span) || __builtin_add_overflow(hi, span, &hi))
                overflow = true;
        }
    }
    char sb[256], tb[256];
    if (overflow)
        return hr_fail_null(HR_EFORMAT, "tensor of size %s, stride %s overflows 64-bit element counts",
                            ints_str(tt.ndim, tt.size, sb, sizeof sb), ints_str(tt.ndim, tt.stride, tb, sizeof tb));
    if (numel > 0 && (uint64_t)hi >= cap)
        return hr_fail_null(HR_EFORMAT,
                            "tensor of size %s, stride %s, offset %" PRId64 " reaches element %" PRId64
                            " of storage '%s', which holds %" PRIu64 " %s elements",
                            ints_str(tt.ndim, tt.size, sb, sizeof sb), ints_str(tt.ndim, tt.stride, tb, sizeof tb),
                            tt.offset, hi, tt.st->key, cap, hr_dtype_name(tt.dt));
    if (grow((void **)&S->tt, &S->tt_cap, S->ntt + 1, sizeof *S->tt)) return NULL;
    ttensor *t = malloc(sizeof *t);
    if (!t) return hr_fail_null(HR_ENOMEM, "out of memory loading a checkpoint");
    *t = tt;
    S->tt[S->ntt++] = t;
    hr_pk_value *v = hr_pickle_value(p, HR_PK_OBJECT);
    if (!v) return NULL;
    v->i = HR_PK_OBJ_TENSOR;
    v->obj = t;
    return v;
}

static hr_pk_value *reduce(hr_pickle *p, void *ctx, hr_pk_value *fn, hr_pk_value *args)
{
    torch_state *S = ctx;
    switch (fn->i) {
    case G_ODICT:
        if (args->n != 0)
            return hr_fail_null(HR_EFORMAT, "collections.OrderedDict called with %zu arguments (expected none)", args->n);
        return hr_pickle_value(p, HR_PK_DICT);
    case G_SIZE:
        if (args->n != 1 || (args->items[0]->type != HR_PK_TUPLE && args->items[0]->type != HR_PK_LIST))
            return hr_fail_null(HR_EFORMAT, "torch.Size takes one tuple of ints");
        for (size_t i = 0; i < args->items[0]->n; i++)
            if (args->items[0]->items[i]->type != HR_PK_INT)
                return hr_fail_null(HR_EFORMAT, "torch.Size holds a %s, not an int",
                                    hr_pk_type_name(args->items[0]->items[i]));
        return args->items[0];
    case G_REBUILD_V2: return rebuild_tensor(p, S, fn->s, args, true);
    case G_REBUILD: return rebuild_tensor(p, S, fn->s, args, false);
    case G_PARAM: {
        /* _rebuild_parameter(data, requires_grad, backward_hooks): the tensor itself, flagged. */
        if (args->n != 3) return hr_fail_null(HR_EFORMAT, "%s takes 3 arguments, got %zu", fn->s, args->n);
        hr_pk_value *data = args->items[0];
        if (data->type != HR_PK_OBJECT || data->i != HR_PK_OBJ_TENSOR)
            return hr_fail_null(HR_EFORMAT, "%s needs a tensor, got %s", fn->s, hr_pk_type_name(data));
        if (args->items[1]->type != HR_PK_BOOL)
            return hr_fail_null(HR_EFORMAT, "requires_grad must be a bool, got %s", hr_pk_type_name(args->items[1]));
        ttensor *tt = data->obj;
        if (args->items[1]->b && !hr_dtype_is_float(tt->dt))
            return hr_fail_null(HR_EFORMAT, "a %s tensor cannot require gradients", hr_dtype_name(tt->dt));
        tt->requires_grad = args->items[1]->b;
        return data;
    }
    default:
        return hr_fail_null(HR_EFORMAT, "refusing to call '%s'", fn->s);
    }
}

static int build(hr_pickle *p, void *ctx, hr_pk_value *obj, hr_pk_value *state)
{
    (void)p;
    (void)ctx;
    /* An OrderedDict's instance attributes (a state_dict's _metadata: module versions) have no
     * counterpart in the loaded table; they are dropped. */
    if (obj->type == HR_PK_DICT && (state->type == HR_PK_DICT || state->type == HR_PK_NONE)) return 0;
    return hr_fail(HR_EFORMAT, "refusing to set the state of a %s from a %s", hr_pk_type_name(obj),
                   hr_pk_type_name(state));
}

/* ------------------------------------------------------------------ storages */

static hr_storage *new_storage(const tstorage *st)
{
    if (st->nbytes > SIZE_MAX / 2) return hr_fail_null(HR_ENOMEM, "storage '%s' of %" PRIu64 " bytes is too large", st->key, st->nbytes);
    return hr_storage_new((size_t)st->nbytes, hr_cpu());
}

static int swap_bytes(tstorage *st)
{
    if (st->mixed) return hr_fail(HR_EFORMAT, "big-endian storage '%s' is used with several element sizes", st->key);
    unsigned char *b = st->storage->data;
    size_t es = st->elsize;
    for (size_t i = 0; i + es <= st->nbytes; i += es)
        for (size_t j = 0; j < es / 2; j++) {
            unsigned char t = b[i + j];
            b[i + j] = b[i + es - 1 - j];
            b[i + es - 1 - j] = t;
        }
    return 0;
}

/* Checks the storages and builds the hero tensors. */
static int finish(torch_state *S, bool big_endian)
{
    for (size_t i = 0; i < S->nst; i++) {
        tstorage *st = S->st[i];
        if (!st->filled) return hr_fail(HR_EFORMAT, "storage '%s' has no data in the file", st->key);
        if (big_endian && st->elsize > 1 && swap_bytes(st)) return -1;
        if (st->as_bool && !st->mixed) {
            const unsigned char *b = st->storage->data;
            for (size_t k = 0; k < st->nbytes; k++)
                if (b[k] > 1)
                    return hr_fail(HR_EFORMAT, "bool storage '%s' holds the byte 0x%02x at %zu (bools are 0 or 1)",
                                   st->key, b[k], k);
        }
    }
    for (size_t i = 0; i < S->ntt; i++) {
        ttensor *tt = S->tt[i];
        tt->t = hr_tensor_view_of(tt->st->storage, tt->dt, tt->ndim, tt->size, tt->stride, tt->offset);
        if (!tt->t) {
            hr_error_prefix("tensor on storage '%s'", tt->st->key);
            return -1;
        }
        tt->t->requires_grad = tt->requires_grad;
    }
    return 0;
}

/* ------------------------------------------------------------------ zip container */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int cmp_entry(const void *a, const void *b, void *z)
{
    const hr_zip *zz = z;
    return strcmp(zz->entries[*(const size_t *)a].name, zz->entries[*(const size_t *)b].name);
}

static int load_zip(const unsigned char *buf, size_t len, const char *what, hr_torch_file *out, torch_state *S,
                    const hr_pickle_hooks *hooks, bool *big_endian)
{
    hr_zip z;
    if (hr_zip_open(&z, buf, len, what)) return -1;
    int rc = -1;
    unsigned char *pk = NULL, *bo = NULL;
    size_t *order = NULL, norder = 0;
    char *name = NULL;
    /* data.pkl sits in the archive's one top-level folder (named after the file at save time). */
    long ipkl = -1;
    size_t plen = 0;
    for (size_t i = 0; i < z.n; i++) {
        const char *nm = z.entries[i].name;
        if (!ends_with(nm, "data.pkl")) continue;
        size_t l = strlen(nm) - strlen("data.pkl");
        if (l > 0 && (nm[l - 1] != '/' || memchr(nm, '/', l - 1))) continue;
        if (ipkl >= 0) {
            hr_fail(HR_EFORMAT, "%s: the zip archive holds several data.pkl members (%s, %s)", what,
                    z.entries[ipkl].name, nm);
            goto done;
        }
        ipkl = (long)i;
        plen = l;
    }
    if (ipkl < 0) {
        hr_fail(HR_EFORMAT, "%s: not a PyTorch checkpoint: the zip archive has no data.pkl member (%zu members)", what, z.n);
        goto done;
    }
    const char *prefix = z.entries[ipkl].name;
    size_t name_cap = plen + 2048;
    if (!(name = malloc(name_cap))) {
        hr_fail(HR_ENOMEM, "out of memory loading %s", what);
        goto done;
    }
    /* Byte order of the storages: "little" when the member is absent (files of PyTorch < 1.13). */
    snprintf(name, name_cap, "%.*sbyteorder", (int)plen, prefix);
    long ibo = hr_zip_find(&z, name);
    if (ibo >= 0) {
        size_t bl;
        if (hr_zip_extract(&z, (size_t)ibo, &bo, &bl)) goto prefixed;
        if (bl == 3 && memcmp(bo, "big", 3) == 0) *big_endian = true;
        else if (!(bl == 6 && memcmp(bo, "little", 6) == 0)) {
            hr_fail(HR_EFORMAT, "%s: member %s must say 'little' or 'big'", what, name);
            goto done;
        }
    }
    size_t pklen;
    if (hr_zip_extract(&z, (size_t)ipkl, &pk, &pklen)) goto prefixed;
    char pwhat[1024];
    snprintf(pwhat, sizeof pwhat, "%s member %s", what, z.entries[ipkl].name);
    if (!(out->pickle = hr_pickle_new(pwhat, hooks))) goto done;
    size_t used;
    if (!(out->root = hr_pickle_load(out->pickle, pk, pklen, &used))) goto done;
    if (used != pklen) {
        hr_fail(HR_EFORMAT, "%s: %zu unexpected bytes after the pickle's STOP", pwhat, pklen - used);
        goto done;
    }
    /* Storage members, sorted by name for lookup. */
    order = malloc((z.n ? z.n : 1) * sizeof *order);
    if (!order) {
        hr_fail(HR_ENOMEM, "out of memory loading %s", what);
        goto done;
    }
    for (size_t i = 0; i < z.n; i++) order[norder++] = i;
    qsort_r(order, norder, sizeof *order, cmp_entry, &z);
    for (size_t s = 0; s < S->nst; s++) {
        tstorage *st = S->st[s];
        snprintf(name, name_cap, "%.*sdata/%s", (int)plen, prefix, st->key);
        size_t lo = 0, hi = norder;
        long found = -1;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            int c = strcmp(z.entries[order[mid]].name, name);
            if (c == 0) {
                found = (long)order[mid];
                break;
            }
            if (c < 0) lo = mid + 1;
            else hi = mid;
        }
        if (found < 0) {
            hr_fail(HR_EFORMAT, "%s: storage '%s' has no zip member %s", what, st->key, name);
            goto done;
        }
        const hr_zip_entry *e = &z.entries[found];
        if (e->usize != st->nbytes) {
            hr_fail(HR_EFORMAT, "%s: zip member %s holds %" PRIu64 " bytes but the pickle declares %" PRIu64, what,
                    name, e->usize, st->nbytes);
            goto done;
        }
        if (!(st->storage = new_storage(st))) goto prefixed;
        if (hr_zip_extract_to(&z, (size_t)found, st->storage->data, (size_t)st->nbytes)) goto prefixed;
        st->filled = true;
    }
    rc = 0;
    goto done;
prefixed:
    hr_error_prefix("%s", what);
done:
    free(name);
    free(order);
    free(pk);
    free(bo);
    hr_zip_close(&z);
    return rc;
}

/* ------------------------------------------------------------------ legacy stream */

/* 0x1950a86a20f9469cfc6c, the legacy format's magic number, as LONG1 stores it. */
static const unsigned char MAGIC[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
#define LEGACY_PROTOCOL 1001

static int load_legacy(const unsigned char *buf, size_t len, const char *what, hr_torch_file *out, torch_state *S,
                       const hr_pickle_hooks *hooks, bool *big_endian)
{
    char pwhat[1024];
    snprintf(pwhat, sizeof pwhat, "%s header", what);
    hr_pickle *aux = hr_pickle_new(pwhat, NULL); /* no globals, calls or persistent ids at all */
    if (!aux) return -1;
    int rc = -1;
    size_t pos = 0, used;
    hr_pk_value *v = hr_pickle_load(aux, buf, len, &used);
    if (!v) goto done;
    if (v->type != HR_PK_INT || v->len != sizeof MAGIC || memcmp(v->s, MAGIC, sizeof MAGIC) != 0) {
        hr_fail(HR_EFORMAT, "%s: not a PyTorch checkpoint (bad magic number)", what);
        goto done;
    }
    pos += used;
    if (!(v = hr_pickle_load(aux, buf + pos, len - pos, &used))) goto done;
    if (v->type != HR_PK_INT || v->len || v->i != LEGACY_PROTOCOL) {
        hr_fail(HR_EFORMAT, "%s: unsupported legacy protocol version (expected %d)", what, LEGACY_PROTOCOL);
        goto done;
    }
    pos += used;
    if (!(v = hr_pickle_load(aux, buf + pos, len - pos, &used))) goto done;
    hr_pk_value *le = hr_pk_dict_get(v, "little_endian");
    if (!le || le->type != HR_PK_BOOL) {
        hr_fail(HR_EFORMAT, "%s: the system info record lacks a boolean 'little_endian'", what);
        goto done;
    }
    *big_endian = !le->b;
    pos += used;
    snprintf(pwhat, sizeof pwhat, "%s pickle", what);
    if (!(out->pickle = hr_pickle_new(pwhat, hooks))) goto done;
    if (!(out->root = hr_pickle_load(out->pickle, buf + pos, len - pos, &used))) goto done;
    pos += used;
    snprintf(pwhat, sizeof pwhat, "%s storage key list", what);
    hr_pickle_free(aux);
    if (!(aux = hr_pickle_new(pwhat, NULL))) goto done;
    hr_pk_value *keys = hr_pickle_load(aux, buf + pos, len - pos, &used);
    if (!keys) goto done;
    if (keys->type != HR_PK_LIST && keys->type != HR_PK_TUPLE) {
        hr_fail(HR_EFORMAT, "%s: the storage key list is a %s", what, hr_pk_type_name(keys));
        goto done;
    }
    pos += used;
    for (size_t i = 0; i < keys->n; i++) {
        hr_pk_value *k = keys->items[i];
        if (k->type != HR_PK_STR) {
            hr_fail(HR_EFORMAT, "%s: storage key %zu is a %s, not a string", what, i, hr_pk_type_name(k));
            goto done;
        }
        tstorage *st = strlen(k->s) == k->len ? find_storage(S, k->s) : NULL;
        if (!st) {
            hr_fail(HR_EFORMAT, "%s: storage '%s' is listed but no tensor uses it", what, k->s);
            goto done;
        }
        if (st->filled) {
            hr_fail(HR_EFORMAT, "%s: storage '%s' is listed twice", what, st->key);
            goto done;
        }
        if (len - pos < 8) {
            hr_fail(HR_EFORMAT, "%s: truncated: the element count of storage '%s' at byte %zu is cut off", what, st->key,
                    pos);
            goto done;
        }
        uint64_t count = 0;
        for (int b = 0; b < 8; b++) count |= (uint64_t)buf[pos + (*big_endian ? 7 - b : b)] << (8 * b);
        pos += 8;
        if (count != st->nbytes / st->elsize) {
            hr_fail(HR_EFORMAT, "%s: storage '%s' has %" PRIu64 " elements in the file but the pickle declares %" PRIu64,
                    what, st->key, count, st->nbytes / st->elsize);
            goto done;
        }
        if (st->nbytes > len - pos) {
            hr_fail(HR_EFORMAT, "%s: truncated: storage '%s' needs %" PRIu64 " bytes at byte %zu, %zu left", what,
                    st->key, st->nbytes, pos, len - pos);
            goto done;
        }
        if (!(st->storage = new_storage(st))) {
            hr_error_prefix("%s", what);
            goto done;
        }
        if (st->nbytes) memcpy(st->storage->data, buf + pos, (size_t)st->nbytes);
        pos += (size_t)st->nbytes;
        st->filled = true;
    }
    if (pos != len) {
        hr_fail(HR_EFORMAT, "%s: %zu unexpected bytes after the last storage", what, len - pos);
        goto done;
    }
    rc = 0;
done:
    hr_pickle_free(aux);
    return rc;
}

/* ------------------------------------------------------------------ entry points */

const char *hr_torch_sniff(const void *head, size_t len)
{
    const unsigned char *b = head;
    if (len >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6))) return "zip";
    if (len < 2 || b[0] != 0x80 || b[1] < 2 || b[1] > 5) return NULL;
    size_t i = 2;
    if (len >= 11 && b[2] == 0x95) i = 11; /* a protocol-4 FRAME header */
    if (len - i >= 2 + sizeof MAGIC && b[i] == 0x8a && b[i + 1] == sizeof MAGIC && memcmp(b + i + 2, MAGIC, sizeof MAGIC) == 0)
        return "legacy";
    return NULL;
}

hr_tensor *hr_torch_tensor(const hr_pk_value *v)
{
    if (!v || v->type != HR_PK_OBJECT || v->i != HR_PK_OBJ_TENSOR) return NULL;
    return ((const ttensor *)v->obj)->t;
}

void hr_torch_file_free(hr_torch_file *f)
{
    if (!f) return;
    hr_pickle_free(f->pickle);
    state_free(f->priv);
    memset(f, 0, sizeof *f);
}

int hr_torch_parse(const void *buf, size_t len, const char *what, hr_torch_file *out)
{
    memset(out, 0, sizeof *out);
    const unsigned char *b = buf;
    if (len == 0) return hr_fail(HR_EFORMAT, "%s: empty file", what);
    torch_state *S = calloc(1, sizeof *S);
    if (!S) return hr_fail(HR_ENOMEM, "out of memory loading %s", what);
    out->priv = S;
    hr_pickle_hooks hooks = {S, find_global, reduce, persistent_load, build};
    bool big_endian = false;
    const char *kind = hr_torch_sniff(buf, len);
    int rc;
    if (kind && strcmp(kind, "zip") == 0) {
        rc = load_zip(b, len, what, out, S, &hooks, &big_endian);
    } else if (kind) {
        rc = load_legacy(b, len, what, out, S, &hooks, &big_endian);
    } else if (len >= 26 && memcmp(b, "L119547037146038801333356", 25) == 0) {
        /* the legacy magic number as pickle protocol 0/1 writes it (a text LONG) */
        rc = hr_fail(HR_EFORMAT,
                     "%s: a legacy PyTorch checkpoint written with pickle protocol 0 or 1, which hero does not read "
                     "(torch.save's default, protocol 2, and later are supported: re-save it)",
                     what);
    } else if (len >= 262 && memcmp(b + 257, "ustar", 5) == 0) {
        rc = hr_fail(HR_EFORMAT, "%s: a tar-based checkpoint (PyTorch < 0.4) is not supported: re-save it with a newer PyTorch",
                     what);
    } else {
        rc = hr_fail(HR_EFORMAT,
                     "%s: not a PyTorch checkpoint (neither a zip archive with data.pkl nor the legacy magic number)",
                     what);
    }
    if (rc == 0 && finish(S, big_endian)) {
        hr_error_prefix("%s", what);
        rc = -1;
    }
    if (rc) hr_torch_file_free(out);
    return rc;
}

int hr_torch_parse_pickle(const void *buf, size_t len, const char *what, size_t max_storage_bytes,
                          hr_torch_file *out)
{
    memset(out, 0, sizeof *out);
    torch_state *S = calloc(1, sizeof *S);
    if (!S) return hr_fail(HR_ENOMEM, "out of memory loading %s", what);
    out->priv = S;
    hr_pickle_hooks hooks = {S, find_global, reduce, persistent_load, build};
    int rc = -1;
    size_t used;
    if (!(out->pickle = hr_pickle_new(what, &hooks))) goto done;
    if (!(out->root = hr_pickle_load(out->pickle, buf, len, &used))) goto done;
    if (used != len) {
        hr_fail(HR_EFORMAT, "%s: %zu unexpected bytes after the pickle's STOP", what, len - used);
        goto done;
    }
    /* No storage bytes exist here: each storage is zero-filled, within the caller's limit, so
     * that every tensor view is still built and checked exactly as for a whole file. */
    uint64_t total = 0;
    for (size_t i = 0; i < S->nst; i++) {
        tstorage *st = S->st[i];
        if (st->nbytes > max_storage_bytes - total) {
            hr_fail(HR_EFORMAT, "%s: storage '%s' of %" PRIu64 " bytes takes the storages past the limit of %zu bytes",
                    what, st->key, st->nbytes, max_storage_bytes);
            goto done;
        }
        total += st->nbytes;
        if (!(st->storage = new_storage(st))) goto done;
        if (st->nbytes) memset(st->storage->data, 0, (size_t)st->nbytes);
        st->filled = true;
    }
    if (finish(S, false)) {
        hr_error_prefix("%s", what);
        goto done;
    }
    rc = 0;
done:
    if (rc) hr_torch_file_free(out);
    return rc;
}

int hr_torch_load(const char *path, hr_torch_file *out)
{
    memset(out, 0, sizeof *out);
    char what[512];
    snprintf(what, sizeof what, "'%s'", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO is refused below, not waited on */
    if (fd < 0) {
        if (errno == ENOENT) return hr_fail(HR_EIO, "no such file: '%s'", path);
        return hr_fail(HR_EIO, "cannot open '%s': %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return hr_fail(HR_EIO, "'%s' is not a readable regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    /* A read-only mapping: the storages are copied out of it, so the file is never held twice on the
     * heap. Fall back to reading when mapping is impossible (empty files, special file systems). */
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
    close(fd);
    if (map != MAP_FAILED) {
        int rc = hr_torch_parse(map, size, what, out);
        munmap(map, size);
        return rc;
    }
    unsigned char *buf;
    size_t len;
    if (hr_io_read_file(path, &buf, &len)) return -1;
    int rc = hr_torch_parse(buf, len, what, out);
    free(buf);
    return rc;
}
