/*
 * hr_data.h — Lua-free readers for preprocessed HERO databases: read-only LMDB access (liblmdb),
 * lz4 frame decompression (liblz4) and a MessagePack decoder with msgpack_numpy arrays.
 *
 * LMDB and lz4 are optional at build time (HERO_WITH_LMDB / HERO_WITH_LZ4, set by csrc/Makefile when
 * the libraries are found). Without them the functions exist and fail with a message saying which
 * Debian package to install. The MessagePack decoder is self-contained and always available.
 *
 * All inputs are treated as hostile: every length is checked against the bytes present before it is
 * used or anything is allocated, and every failure is an hr_fail() naming what is wrong and where.
 */
#ifndef HR_DATA_H
#define HR_DATA_H

#include "hr_core.h"

/* ------------------------------------------------------------------ LMDB (read-only) */

bool hr_lmdb_available(void);

/* An environment opened read-only without a lock file (MDB_RDONLY | MDB_NOLOCK | MDB_NORDAHEAD) and
 * one read transaction kept for the handle's lifetime, so values returned by hr_lmdb_get stay valid
 * (they point into the file mapping) until hr_lmdb_close. */
typedef struct hr_lmdb hr_lmdb;

/* dir is the LMDB directory (holding data.mdb). */
hr_lmdb *hr_lmdb_open(const char *dir);
/* Looks key up. Returns 1 and sets *val and *vlen when found, 0 when absent, -1 on error. */
int hr_lmdb_get(hr_lmdb *db, const void *key, size_t klen, const void **val, size_t *vlen);
/* One entry of a key listing: pointers into the mapping, valid until hr_lmdb_close. */
typedef struct {
    const void *key;
    size_t klen;
    size_t vlen;
} hr_lmdb_entry;
/* Every key in LMDB (byte) order with its value size; *out is malloc'd (free() it). */
int hr_lmdb_list(hr_lmdb *db, hr_lmdb_entry **out, size_t *n);
/* Number of entries. */
int hr_lmdb_count(hr_lmdb *db, size_t *n);
void hr_lmdb_close(hr_lmdb *db);

/* ------------------------------------------------------------------ lz4 frame format */

bool hr_lz4_available(void);

/* Default limit on the decompressed size (bytes); bigger outputs are refused as a likely
 * decompression bomb unless the caller raises the limit. */
#define HR_LZ4_DEFAULT_MAX ((size_t)1 << 30)

/* Decompresses one or more concatenated lz4 frames (any valid frame: content size present or not,
 * block/content checksums, linked or independent blocks; skippable frames are skipped) into a
 * malloc'd buffer (*out, *outlen; *out is never NULL on success, even for empty output). Refuses
 * outputs larger than max_out bytes. */
int hr_lz4_frame_decompress(const void *src, size_t len, size_t max_out, unsigned char **out, size_t *outlen);

/* ------------------------------------------------------------------ MessagePack */

/* Deepest nesting of arrays/maps the decoder accepts. */
#define HR_MSGPACK_MAX_DEPTH 256

typedef enum {
    HR_MP_NIL = 0,
    HR_MP_BOOL,
    HR_MP_INT,   /* fits int64 */
    HR_MP_UINT,  /* above INT64_MAX */
    HR_MP_FLOAT, /* float32 or float64, widened */
    HR_MP_STR,
    HR_MP_BIN,
    HR_MP_ARRAY,
    HR_MP_MAP,
} hr_mp_type;

/* A decoded node. STR/BIN point into the input buffer (which must outlive the tree). A map holds
 * 2*n children: key0, value0, key1, value1, ... */
typedef struct hr_mp_node {
    hr_mp_type type;
    bool is_f32;           /* FLOAT: encoded as float32 */
    union {
        bool b;
        int64_t i;
        uint64_t u;
        double f;
        struct {
            const char *ptr;
            size_t len;
        } s;                /* STR, BIN */
        struct {
            size_t n;       /* elements (ARRAY) or pairs (MAP) */
            struct hr_mp_node *items;
        } c;
    } v;
} hr_mp_node;

/* Decodes exactly one object spanning the whole buffer (trailing bytes are an error). `what` names
 * the input in errors (may be NULL). Strings must be valid UTF-8. The tree is freed with
 * hr_msgpack_free. */
hr_mp_node *hr_msgpack_decode(const void *buf, size_t len, const char *what);
void hr_msgpack_free(hr_mp_node *root);

/* msgpack_numpy: when map is an encoded ndarray ({nd: true, type: "<f4", kind: "", shape: [...],
 * data: <bin>}, keys str or bin; nd false = numpy scalar, 0-d), builds the tensor into *out and
 * returns 1; returns 0 when the map is not one (no "nd" key holding a bool); -1 (with an error
 * naming the problem) when it claims to be one but is malformed or of an unsupported dtype.
 * Supported types: <f2 <f4 <f8 <i8 <i4 |u1 |b1. */
int hr_msgpack_numpy(const hr_mp_node *map, hr_tensor **out);

#endif
