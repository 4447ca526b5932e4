/* io_msgpack.c — a strict MessagePack decoder (all types but ext) and msgpack_numpy arrays. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_data.h"

typedef struct {
    const unsigned char *p;
    size_t len, pos;
    const char *what;
} mp_dec;

/* Formats "msgpack[ (what)]: at byte N: <msg>". */
static int mp_fail(const mp_dec *d, size_t at, const char *msg)
{
    if (d->what && d->what[0])
        return hr_fail(HR_EFORMAT, "msgpack (%s): at byte %zu: %s", d->what, at, msg);
    return hr_fail(HR_EFORMAT, "msgpack: at byte %zu: %s", at, msg);
}

static uint64_t rd_be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* Reads an n-byte big-endian unsigned length/value after the type byte. */
static int mp_take(mp_dec *d, size_t at, int n, uint64_t *out, const char *kind)
{
    if (d->len - d->pos < (size_t)n) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s needs %d more bytes but only %zu are left (truncated input)", kind, n,
                 d->len - d->pos);
        return mp_fail(d, at, msg);
    }
    *out = rd_be(d->p + d->pos, n);
    d->pos += (size_t)n;
    return 0;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. Returns the offset of the
 * first bad byte, or len when valid. */
static size_t utf8_check(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) { n = 2; lo = 0xA0; }
        else if (c == 0xED) { n = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) n = 2;
        else if (c == 0xF0) { n = 3; lo = 0x90; }
        else if (c == 0xF4) { n = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else return i;
        if (len - i - 1 < n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        i += n + 1;
    }
    return len;
}

static int mp_parse(mp_dec *d, hr_mp_node *n, int depth);

static int mp_bytes(mp_dec *d, hr_mp_node *n, size_t at, uint64_t len, bool is_str, const char *kind)
{
    if (len > d->len - d->pos) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s length %llu runs past the end of the input (%zu bytes left)", kind,
                 (unsigned long long)len, d->len - d->pos);
        return mp_fail(d, at, msg);
    }
    n->type = is_str ? HR_MP_STR : HR_MP_BIN;
    n->v.s.ptr = (const char *)d->p + d->pos;
    n->v.s.len = (size_t)len;
    if (is_str) {
        size_t bad = utf8_check(d->p + d->pos, (size_t)len);
        if (bad != len) return mp_fail(d, d->pos + bad, "invalid UTF-8 in a str (use bin for raw bytes)");
    }
    d->pos += (size_t)len;
    return 0;
}

static int mp_container(mp_dec *d, hr_mp_node *n, size_t at, uint64_t count, bool is_map, int depth,
                        const char *kind)
{
    if (depth >= HR_MSGPACK_MAX_DEPTH) {
        char msg[120];
        snprintf(msg, sizeof msg, "nesting deeper than %d arrays/maps", HR_MSGPACK_MAX_DEPTH);
        return mp_fail(d, at, msg);
    }
    /* Every element takes at least one byte, so a count larger than what is left is a lie; checking
     * it first keeps a 5-byte input from asking for gigabytes. */
    uint64_t items = is_map ? 2 * count : count;
    if (items > d->len - d->pos) {
        char msg[200];
        snprintf(msg, sizeof msg, "%s of %llu %s runs past the end of the input (%zu bytes left)", kind,
                 (unsigned long long)count, is_map ? "pairs" : "elements", d->len - d->pos);
        return mp_fail(d, at, msg);
    }
    n->type = is_map ? HR_MP_MAP : HR_MP_ARRAY;
    n->v.c.n = 0;
    n->v.c.items = NULL;
    if (items == 0) return 0;
    n->v.c.items = calloc((size_t)items, sizeof(hr_mp_node));
    if (!n->v.c.items) return hr_fail(HR_ENOMEM, "msgpack: out of memory (%llu nodes)", (unsigned long long)items);
    n->v.c.n = (size_t)count; /* set before filling: zeroed children are NIL and free cleanly */
    for (uint64_t i = 0; i < items; i++)
        if (mp_parse(d, &n->v.c.items[i], depth + 1)) return -1;
    return 0;
}

static int mp_parse(mp_dec *d, hr_mp_node *n, int depth)
{
    size_t at = d->pos;
    if (d->pos >= d->len) return mp_fail(d, at, "unexpected end of input (truncated)");
    unsigned b = d->p[d->pos++];
    uint64_t u = 0;
    memset(n, 0, sizeof *n);
    if (b <= 0x7f) {
        n->type = HR_MP_INT;
        n->v.i = (int64_t)b;
        return 0;
    }
    if (b >= 0xe0) {
        n->type = HR_MP_INT;
        n->v.i = (int64_t)(int8_t)(uint8_t)b;
        return 0;
    }
    if (b >= 0x80 && b <= 0x8f) return mp_container(d, n, at, b & 0x0f, true, depth, "fixmap");
    if (b >= 0x90 && b <= 0x9f) return mp_container(d, n, at, b & 0x0f, false, depth, "fixarray");
    if (b >= 0xa0 && b <= 0xbf) return mp_bytes(d, n, at, b & 0x1f, true, "fixstr");
    switch (b) {
    case 0xc0: n->type = HR_MP_NIL; return 0;
    case 0xc2: n->type = HR_MP_BOOL; n->v.b = false; return 0;
    case 0xc3: n->type = HR_MP_BOOL; n->v.b = true; return 0;
    case 0xc4: if (mp_take(d, at, 1, &u, "bin8")) return -1; return mp_bytes(d, n, at, u, false, "bin8");
    case 0xc5: if (mp_take(d, at, 2, &u, "bin16")) return -1; return mp_bytes(d, n, at, u, false, "bin16");
    case 0xc6: if (mp_take(d, at, 4, &u, "bin32")) return -1; return mp_bytes(d, n, at, u, false, "bin32");
    case 0xd9: if (mp_take(d, at, 1, &u, "str8")) return -1; return mp_bytes(d, n, at, u, true, "str8");
    case 0xda: if (mp_take(d, at, 2, &u, "str16")) return -1; return mp_bytes(d, n, at, u, true, "str16");
    case 0xdb: if (mp_take(d, at, 4, &u, "str32")) return -1; return mp_bytes(d, n, at, u, true, "str32");
    case 0xdc: if (mp_take(d, at, 2, &u, "array16")) return -1; return mp_container(d, n, at, u, false, depth, "array16");
    case 0xdd: if (mp_take(d, at, 4, &u, "array32")) return -1; return mp_container(d, n, at, u, false, depth, "array32");
    case 0xde: if (mp_take(d, at, 2, &u, "map16")) return -1; return mp_container(d, n, at, u, true, depth, "map16");
    case 0xdf: if (mp_take(d, at, 4, &u, "map32")) return -1; return mp_container(d, n, at, u, true, depth, "map32");
    case 0xca: {
        if (mp_take(d, at, 4, &u, "float32")) return -1;
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        n->type = HR_MP_FLOAT;
        n->is_f32 = true;
        n->v.f = (double)f;
        return 0;
    }
    case 0xcb: {
        if (mp_take(d, at, 8, &u, "float64")) return -1;
        double f;
        memcpy(&f, &u, 8);
        n->type = HR_MP_FLOAT;
        n->v.f = f;
        return 0;
    }
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        static const char *names[] = {"uint8", "uint16", "uint32", "uint64"};
        int w = 1 << (b - 0xcc);
        if (mp_take(d, at, w, &u, names[b - 0xcc])) return -1;
        if (u > (uint64_t)INT64_MAX) {
            n->type = HR_MP_UINT;
            n->v.u = u;
        } else {
            n->type = HR_MP_INT;
            n->v.i = (int64_t)u;
        }
        return 0;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        static const char *names[] = {"int8", "int16", "int32", "int64"};
        int w = 1 << (b - 0xd0);
        if (mp_take(d, at, w, &u, names[b - 0xd0])) return -1;
        /* sign-extend from w bytes */
        int shift = 64 - 8 * w;
        n->type = HR_MP_INT;
        n->v.i = shift ? (int64_t)(u << shift) >> shift : (int64_t)u;
        return 0;
    }
    case 0xc7: case 0xc8: case 0xc9:
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
        char msg[120];
        snprintf(msg, sizeof msg, "ext types are not supported (type byte 0x%02x)", b);
        return mp_fail(d, at, msg);
    }
    default: { /* 0xc1 */
        char msg[80];
        snprintf(msg, sizeof msg, "0x%02x is not a valid MessagePack type byte", b);
        return mp_fail(d, at, msg);
    }
    }
}

static void mp_free_children(hr_mp_node *n)
{
    if (n->type != HR_MP_ARRAY && n->type != HR_MP_MAP) return;
    if (!n->v.c.items) return;
    size_t items = n->type == HR_MP_MAP ? 2 * n->v.c.n : n->v.c.n;
    for (size_t i = 0; i < items; i++) mp_free_children(&n->v.c.items[i]);
    free(n->v.c.items);
    n->v.c.items = NULL;
}

void hr_msgpack_free(hr_mp_node *root)
{
    if (!root) return;
    mp_free_children(root);
    free(root);
}

hr_mp_node *hr_msgpack_decode(const void *buf, size_t len, const char *what)
{
    mp_dec d = {buf, len, 0, what};
    hr_mp_node *root = calloc(1, sizeof *root);
    if (!root) return hr_fail_null(HR_ENOMEM, "msgpack: out of memory");
    if (len == 0) {
        mp_fail(&d, 0, "empty input");
        free(root);
        return NULL;
    }
    if (mp_parse(&d, root, 0)) {
        hr_msgpack_free(root);
        return NULL;
    }
    if (d.pos != len) {
        char msg[120];
        snprintf(msg, sizeof msg, "%zu trailing bytes after the object", len - d.pos);
        mp_fail(&d, d.pos, msg);
        hr_msgpack_free(root);
        return NULL;
    }
    return root;
}

/* ------------------------------------------------------------------ msgpack_numpy */

/* The value of the map entry whose str or bin key equals name, or NULL. */
static const hr_mp_node *mp_field(const hr_mp_node *map, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < map->v.c.n; i++) {
        const hr_mp_node *k = &map->v.c.items[2 * i];
        if ((k->type == HR_MP_STR || k->type == HR_MP_BIN) && k->v.s.len == nl && memcmp(k->v.s.ptr, name, nl) == 0)
            return &map->v.c.items[2 * i + 1];
    }
    return NULL;
}

static const struct {
    const char *name;
    hr_dtype dt;
} np_types[] = {
    {"<f2", HR_F16}, {"<f4", HR_F32}, {"<f8", HR_F64}, {"<i8", HR_I64},
    {"<i4", HR_I32}, {"|u1", HR_U8},  {"|b1", HR_BOOL},
};

/* Whether map is a msgpack_numpy array: its "nd" key is bin, as msgpack_numpy writes its keys (bytes)
 * and as its decoder looks them up (b'nd'); a str "nd" is an ordinary field (an annotation's), unless
 * the map has exactly msgpack_numpy's five keys, as a writer without bin types stores them. */
static bool is_numpy_map(const hr_mp_node *map)
{
    bool str_nd = false;
    for (size_t i = 0; i < map->v.c.n; i++) {
        const hr_mp_node *k = &map->v.c.items[2 * i];
        if ((k->type == HR_MP_STR || k->type == HR_MP_BIN) && k->v.s.len == 2 && memcmp(k->v.s.ptr, "nd", 2) == 0) {
            if (k->type == HR_MP_BIN) return true;
            str_nd = true;
        }
    }
    if (!str_nd || map->v.c.n != 5) return false;
    static const char *const keys[] = {"type", "kind", "shape", "data"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!mp_field(map, keys[i])) return false;
    return true;
}

int hr_msgpack_numpy(const hr_mp_node *map, hr_tensor **out)
{
    *out = NULL;
    if (!map || map->type != HR_MP_MAP || !is_numpy_map(map)) return 0;
    const hr_mp_node *nd = mp_field(map, "nd");
    if (!nd || nd->type != HR_MP_BOOL) return 0;
    const hr_mp_node *type = mp_field(map, "type");
    const hr_mp_node *data = mp_field(map, "data");
    if (!type || (type->type != HR_MP_STR && type->type != HR_MP_BIN))
        return hr_fail(HR_EFORMAT, "msgpack_numpy array: missing or non-string 'type' field (a structured or "
                                   "object dtype?); hero reads <f2 <f4 <f8 <i8 <i4 |u1 |b1");
    char tname[40];
    size_t tl = type->v.s.len < sizeof tname - 1 ? type->v.s.len : sizeof tname - 1;
    memcpy(tname, type->v.s.ptr, tl);
    tname[tl] = 0;
    for (size_t i = 0; i < tl; i++)
        if (tname[i] < 0x20 || tname[i] > 0x7e) tname[i] = '?';
    int ti = -1;
    for (size_t i = 0; i < sizeof np_types / sizeof np_types[0]; i++)
        if (type->v.s.len == 3 && memcmp(type->v.s.ptr, np_types[i].name, 3) == 0) ti = (int)i;
    if (ti < 0)
        return hr_fail(HR_EFORMAT, "msgpack_numpy array: unsupported dtype '%s%s' (hero reads <f2 <f4 <f8 <i8 <i4 |u1 |b1)",
                       tname, type->v.s.len > tl ? "..." : "");
    hr_dtype dt = np_types[ti].dt;
    if (!data || (data->type != HR_MP_BIN && data->type != HR_MP_STR))
        return hr_fail(HR_EFORMAT, "msgpack_numpy array: missing or non-bytes 'data' field");

    int ndim = 0;
    int64_t size[HR_MAX_DIMS] = {0};
    if (nd->v.b) {
        const hr_mp_node *shape = mp_field(map, "shape");
        if (!shape || shape->type != HR_MP_ARRAY)
            return hr_fail(HR_EFORMAT, "msgpack_numpy array: missing or non-array 'shape' field");
        if (shape->v.c.n > HR_MAX_DIMS)
            return hr_fail(HR_EFORMAT, "msgpack_numpy array: %zu dimensions, hero supports at most %d", shape->v.c.n,
                           HR_MAX_DIMS);
        ndim = (int)shape->v.c.n;
        for (int i = 0; i < ndim; i++) {
            const hr_mp_node *s = &shape->v.c.items[i];
            if (s->type != HR_MP_INT || s->v.i < 0)
                return hr_fail(HR_EFORMAT, "msgpack_numpy array: shape entry %d is not a non-negative integer", i);
            size[i] = s->v.i;
        }
    } /* nd false: a numpy scalar, stored as a 0-d tensor */

    char sbuf[256];
    hr_shape_str(ndim, size, sbuf, sizeof sbuf);
    size_t isz = hr_dtype_size(dt);
    uint64_t need = isz;
    bool overflow = false;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(need, (uint64_t)size[i], &need)) overflow = true;
    if (overflow || need != data->v.s.len)
        return hr_fail(HR_EFORMAT,
                       "msgpack_numpy array: shape %s of %s (%zu bytes each) needs %s%llu bytes but 'data' holds %zu bytes",
                       sbuf, np_types[ti].name, isz, overflow ? "more than " : "",
                       overflow ? (unsigned long long)UINT64_MAX : (unsigned long long)need, data->v.s.len);
    if (dt == HR_BOOL)
        for (size_t i = 0; i < data->v.s.len; i++)
            if ((unsigned char)data->v.s.ptr[i] > 1)
                return hr_fail(HR_EFORMAT, "msgpack_numpy array: |b1 byte %zu is %u, not 0 or 1", i,
                               (unsigned char)data->v.s.ptr[i]);
    hr_tensor *t = hr_tensor_empty(ndim, size, dt, hr_cpu());
    if (!t) return -1;
    /* The bytes sit at arbitrary offsets inside the msgpack buffer: copy (little-endian host). */
    if (data->v.s.len) memcpy(hr_tensor_data(t), data->v.s.ptr, data->v.s.len);
    *out = t;
    return 1;
}
