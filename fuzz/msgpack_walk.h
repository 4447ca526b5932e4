/*
 * msgpack_walk.h — checks a decoded MessagePack tree (fuzz targets msgpack and lmdb_value): the
 * nesting stays within HR_MSGPACK_MAX_DEPTH, strings and binaries point inside the input and are
 * read, and every map goes through hr_msgpack_numpy as the database readers do: an array it builds
 * is read whole, a refusal must say why.
 */
#ifndef HERO_FUZZ_MSGPACK_WALK_H
#define HERO_FUZZ_MSGPACK_WALK_H

#include "fuzz.h"
#include "hr_data.h"

static inline void fuzz_walk_msgpack(const hr_mp_node *n, int depth, const uint8_t *data, size_t size)
{
    FUZZ_CHECK(depth <= HR_MSGPACK_MAX_DEPTH + 1);
    unsigned char acc = 0;
    switch (n->type) {
    case HR_MP_NIL: case HR_MP_BOOL: case HR_MP_INT: case HR_MP_FLOAT: return;
    case HR_MP_UINT: FUZZ_CHECK(n->v.u > (uint64_t)INT64_MAX); return;
    case HR_MP_STR: case HR_MP_BIN: {
        const volatile char *s = n->v.s.ptr;
        if (n->v.s.len == 0) return;
        FUZZ_CHECK((const uint8_t *)n->v.s.ptr >= data && n->v.s.len <= size &&
                   (const uint8_t *)n->v.s.ptr - data <= (ptrdiff_t)(size - n->v.s.len));
        for (size_t i = 0; i < n->v.s.len; i++) acc ^= (unsigned char)s[i];
        (void)acc;
        return;
    }
    case HR_MP_ARRAY:
        FUZZ_CHECK(n->v.c.n <= size); /* every element takes at least one byte */
        for (size_t i = 0; i < n->v.c.n; i++) fuzz_walk_msgpack(&n->v.c.items[i], depth + 1, data, size);
        return;
    case HR_MP_MAP: {
        FUZZ_CHECK(n->v.c.n <= size / 2);
        for (size_t i = 0; i < 2 * n->v.c.n; i++) fuzz_walk_msgpack(&n->v.c.items[i], depth + 1, data, size);
        hr_tensor *t = NULL;
        fuzz_begin();
        int r = hr_msgpack_numpy(n, &t);
        FUZZ_CHECK(r >= -1 && r <= 1);
        if (r < 0) fuzz_expect_reason();
        if (r > 0) {
            fuzz_touch_tensor(t);
            hr_tensor_release(t);
        }
        return;
    }
    }
    FUZZ_CHECK(!"a MessagePack node of an unknown type");
}

/* Decodes buf (which must be the whole object) and walks the tree. */
static inline void fuzz_msgpack(const uint8_t *buf, size_t len)
{
    fuzz_begin();
    hr_mp_node *root = hr_msgpack_decode(buf, len, "'fuzz.msgpack'");
    if (!root) {
        fuzz_expect_reason();
        return;
    }
    fuzz_walk_msgpack(root, 1, buf, len);
    hr_msgpack_free(root);
}

#endif
