/*
 * hr_datawrite.h — Lua-free writers for HERO databases, the counterparts of hr_data.h's readers:
 * LMDB writing (liblmdb), lz4 frame compression (liblz4), a MessagePack encoder that writes tensors
 * as msgpack_numpy maps, and the directory operations that make a database appear atomically.
 *
 * LMDB and lz4 are optional at build time exactly as for the readers (HERO_WITH_LMDB /
 * HERO_WITH_LZ4); without them the functions fail with a message naming the Debian package. The
 * MessagePack encoder and the directory helpers are always available.
 */
#ifndef HR_DATAWRITE_H
#define HR_DATAWRITE_H

#include "hr_core.h"

/* ------------------------------------------------------------------ MessagePack encoder */

/* A growing output buffer. Zero-initialise it; free p with free() (or hr_mp_buf_free). */
typedef struct {
    unsigned char *p;
    size_t len, cap;
} hr_mp_buf;

void hr_mp_buf_free(hr_mp_buf *b);

/* Each writes one item in the smallest form msgpack-python (use_bin_type=True) uses: non-negative
 * integers as positive fixint/uint8/16/32/64, negative ones as negative fixint/int8/16/32/64,
 * floats as float64, str and bin with the shortest length header. Return 0 or -1 (out of memory). */
int hr_mp_put_nil(hr_mp_buf *b);
int hr_mp_put_bool(hr_mp_buf *b, bool v);
int hr_mp_put_int(hr_mp_buf *b, int64_t v);
int hr_mp_put_float(hr_mp_buf *b, double v);
int hr_mp_put_str(hr_mp_buf *b, const void *s, size_t len);
int hr_mp_put_bin(hr_mp_buf *b, const void *s, size_t len);
/* Headers: the n items (arrays) or n key/value pairs (maps) follow. */
int hr_mp_put_array(hr_mp_buf *b, size_t n);
int hr_mp_put_map(hr_mp_buf *b, size_t n);

/* A tensor as msgpack_numpy writes an ndarray: {b"nd": True, b"type": "<f4", b"kind": b"",
 * b"shape": [..], b"data": <raw little-endian bytes, C order>} (keys bin, type str, kind bin), so
 * the reference's msgpack_numpy and hero's decoder both read it back. CPU tensors of dtype f16,
 * f32, f64, i64, i32, u8 and bool; any strides (written in C order). bf16 has no NumPy dtype and
 * is refused. */
int hr_mp_put_ndarray(hr_mp_buf *b, const hr_tensor *t);

/* ------------------------------------------------------------------ lz4 frame compression */

/* Compresses src into one lz4 frame (*out malloc'd) with the options python-lz4's
 * lz4.frame.compress uses by default: 64 KiB independent blocks, the content size stored, no
 * checksums; level 0 is liblz4's fast default, higher levels (up to 12) compress harder. */
int hr_lz4_frame_compress(const void *src, size_t len, int level, unsigned char **out, size_t *outlen);

/* ------------------------------------------------------------------ LMDB writing */

/* A database being written: the environment is opened read-write without a lock file (the writer
 * owns the directory, nobody reads it until it is complete) and without syncing every commit; each
 * put is its own transaction, so when the map is full the map is doubled and the put retried
 * without losing earlier values. hr_lmdb_writer_finish syncs the data to disk. */
typedef struct hr_lmdb_writer hr_lmdb_writer;

/* dir must be an existing directory (normally a fresh temporary one); data.mdb is created in it.
 * map_size is the initial map size in bytes (0: 64 MiB); it grows as needed. */
hr_lmdb_writer *hr_lmdb_writer_open(const char *dir, size_t map_size);
/* Stores key -> val. overwrite false refuses a key that is already present (returns -1 with a
 * message naming the key). Keys must be 1..511 bytes (LMDB's limit). */
int hr_lmdb_writer_put(hr_lmdb_writer *w, const void *key, size_t klen, const void *val, size_t vlen, bool overwrite);
/* Entries written so far, and the current map size. */
size_t hr_lmdb_writer_count(const hr_lmdb_writer *w);
size_t hr_lmdb_writer_map_size(const hr_lmdb_writer *w);
/* Syncs to disk and closes; the handle is freed either way. */
int hr_lmdb_writer_finish(hr_lmdb_writer *w);
/* Closes without syncing (the caller removes the directory). NULL is fine. */
void hr_lmdb_writer_abort(hr_lmdb_writer *w);

/* ------------------------------------------------------------------ directories */

/* mkdir with mode 0777 (umask applies); an existing directory is an error unless exist_ok. */
int hr_dir_create(const char *path, bool exist_ok);
/* Removes a directory tree (files, links and subdirectories; links are not followed). A missing
 * path is not an error. */
int hr_dir_remove_tree(const char *path);
/* rename(2) of a file or directory, then an fsync of the destination's parent directory so the
 * rename is durable (best effort). */
int hr_path_rename(const char *from, const char *to);
/* The entries of dir (without "." and ".."), sorted bytewise: *names is a malloc'd array of n
 * malloc'd strings and *is_dir (malloc'd) says which are directories (links followed). Free with
 * hr_dir_list_free. */
int hr_dir_list(const char *dir, char ***names, bool **is_dir, size_t *n);
void hr_dir_list_free(char **names, bool *is_dir, size_t n);
/* fsync of every regular file directly inside dir and of dir itself (best effort for dir). */
int hr_dir_sync(const char *dir);
/* fsync of one path: a regular file (its data reach the disk) or a directory (the names created,
 * renamed or removed in it do). A directory whose file system refuses fsync is not an error. */
int hr_path_sync(const char *path);

#endif
