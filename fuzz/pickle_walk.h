/*
 * pickle_walk.h — checks what the torch unpickler returns (fuzz targets torch_pt and pickle).
 *
 * The value graph may share nodes and even be cyclic (a list that contains itself), so the walk is
 * bounded by depth and by a node budget rather than by marking. Every string's bytes are read, and
 * every tensor is checked against its storage: the elements it can reach (offset + sum of
 * (size - 1) x stride) lie inside the storage, and the storage's bytes in that range are read so that
 * ASan sees any overrun.
 */
#ifndef HERO_FUZZ_PICKLE_WALK_H
#define HERO_FUZZ_PICKLE_WALK_H

#include "fuzz.h"
#include "hr_torch_io.h"

static inline void fuzz_check_view(const hr_tensor *t)
{
    FUZZ_CHECK(t != NULL && t->storage != NULL);
    FUZZ_CHECK(t->ndim >= 0 && t->ndim <= HR_MAX_DIMS);
    FUZZ_CHECK(t->offset >= 0);
    size_t es = hr_dtype_size(t->dtype);
    int64_t numel = 1, hi = t->offset;
    for (int i = 0; i < t->ndim; i++) {
        FUZZ_CHECK(t->size[i] >= 0 && t->stride[i] >= 0); /* the loader refuses negative ones */
        numel *= t->size[i];
        if (t->size[i] > 0) hi += (t->size[i] - 1) * t->stride[i];
    }
    FUZZ_CHECK(hr_tensor_numel(t) == numel);
    if (numel == 0) return;
    FUZZ_CHECK((uint64_t)(hi + 1) <= t->storage->nbytes / es);
    const volatile unsigned char *p = t->storage->data;
    unsigned char acc = 0;
    for (size_t i = (size_t)t->offset * es; i < (size_t)(hi + 1) * es; i++) acc ^= p[i];
    (void)acc;
}

static inline void fuzz_walk_pickle(const hr_pk_value *v, int depth, size_t *budget)
{
    FUZZ_CHECK(v != NULL);
    if (depth > 64 || *budget == 0) return;
    (*budget)--;
    const volatile char *s;
    unsigned char acc = 0;
    switch (v->type) {
    case HR_PK_NONE: case HR_PK_BOOL: case HR_PK_FLOAT: return;
    case HR_PK_INT:
        if (!v->len) return;
        __attribute__((fallthrough)); /* a big integer keeps its bytes in s */
    case HR_PK_STR: case HR_PK_BYTES: case HR_PK_GLOBAL:
        FUZZ_CHECK(v->s != NULL);
        s = v->s;
        for (size_t i = 0; i <= v->len; i++) acc ^= (unsigned char)s[i]; /* the NUL too */
        FUZZ_CHECK(s[v->len] == '\0');
        (void)acc;
        return;
    case HR_PK_TUPLE: case HR_PK_LIST: case HR_PK_DICT:
        FUZZ_CHECK(v->n <= v->cap || v->cap == 0);
        if (v->type == HR_PK_DICT) FUZZ_CHECK(v->n % 2 == 0);
        for (size_t i = 0; i < v->n; i++) fuzz_walk_pickle(v->items[i], depth + 1, budget);
        return;
    case HR_PK_OBJECT: {
        const hr_tensor *t = hr_torch_tensor(v);
        if (v->i == HR_PK_OBJ_TENSOR) FUZZ_CHECK(t != NULL);
        if (t) fuzz_check_view(t);
        return;
    }
    }
    FUZZ_CHECK(!"a pickle value of an unknown type");
}

#endif
