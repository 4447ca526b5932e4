/* io_datawrite.c — writers for HERO databases: MessagePack encoding (msgpack_numpy arrays), lz4
 * frame compression, LMDB writing and the directory operations behind atomic database creation. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hr_datawrite.h"

/* ------------------------------------------------------------------ MessagePack encoder */

void hr_mp_buf_free(hr_mp_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static int mp_reserve(hr_mp_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len) return hr_fail(HR_ENOMEM, "msgpack: output larger than the address space");
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) return hr_fail(HR_ENOMEM, "msgpack: out of memory growing the output to %zu bytes", cap);
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Type byte followed by an n-byte big-endian value. */
static int mp_head(hr_mp_buf *b, unsigned char type, uint64_t v, int n)
{
    if (mp_reserve(b, 1 + (size_t)n)) return -1;
    b->p[b->len++] = type;
    for (int i = n - 1; i >= 0; i--) b->p[b->len++] = (unsigned char)(v >> (8 * i));
    return 0;
}

static int mp_raw(hr_mp_buf *b, const void *s, size_t len)
{
    if (mp_reserve(b, len)) return -1;
    if (len) memcpy(b->p + b->len, s, len);
    b->len += len;
    return 0;
}

int hr_mp_put_nil(hr_mp_buf *b) { return mp_head(b, 0xc0, 0, 0); }
int hr_mp_put_bool(hr_mp_buf *b, bool v) { return mp_head(b, v ? 0xc3 : 0xc2, 0, 0); }

int hr_mp_put_int(hr_mp_buf *b, int64_t v)
{
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u < 128) return mp_head(b, (unsigned char)u, 0, 0);
        if (u <= 0xff) return mp_head(b, 0xcc, u, 1);
        if (u <= 0xffff) return mp_head(b, 0xcd, u, 2);
        if (u <= 0xffffffffu) return mp_head(b, 0xce, u, 4);
        return mp_head(b, 0xcf, u, 8);
    }
    if (v >= -32) return mp_head(b, (unsigned char)(int8_t)v, 0, 0);
    if (v >= INT8_MIN) return mp_head(b, 0xd0, (uint8_t)(int8_t)v, 1);
    if (v >= INT16_MIN) return mp_head(b, 0xd1, (uint16_t)(int16_t)v, 2);
    if (v >= INT32_MIN) return mp_head(b, 0xd2, (uint32_t)(int32_t)v, 4);
    return mp_head(b, 0xd3, (uint64_t)v, 8);
}

int hr_mp_put_float(hr_mp_buf *b, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return mp_head(b, 0xcb, u, 8);
}

int hr_mp_put_str(hr_mp_buf *b, const void *s, size_t len)
{
    int rc;
    if (len < 32) rc = mp_head(b, (unsigned char)(0xa0 | len), 0, 0);
    else if (len <= 0xff) rc = mp_head(b, 0xd9, len, 1);
    else if (len <= 0xffff) rc = mp_head(b, 0xda, len, 2);
    else if ((uint64_t)len <= 0xffffffffu) rc = mp_head(b, 0xdb, len, 4);
    else return hr_fail(HR_EINVAL, "msgpack: a string of %zu bytes is longer than MessagePack allows (2^32-1)", len);
    return rc ? rc : mp_raw(b, s, len);
}

int hr_mp_put_bin(hr_mp_buf *b, const void *s, size_t len)
{
    int rc;
    if (len <= 0xff) rc = mp_head(b, 0xc4, len, 1);
    else if (len <= 0xffff) rc = mp_head(b, 0xc5, len, 2);
    else if ((uint64_t)len <= 0xffffffffu) rc = mp_head(b, 0xc6, len, 4);
    else return hr_fail(HR_EINVAL, "msgpack: binary data of %zu bytes is longer than MessagePack allows (2^32-1)", len);
    return rc ? rc : mp_raw(b, s, len);
}

int hr_mp_put_array(hr_mp_buf *b, size_t n)
{
    if (n < 16) return mp_head(b, (unsigned char)(0x90 | n), 0, 0);
    if (n <= 0xffff) return mp_head(b, 0xdc, n, 2);
    if ((uint64_t)n <= 0xffffffffu) return mp_head(b, 0xdd, n, 4);
    return hr_fail(HR_EINVAL, "msgpack: an array of %zu items is longer than MessagePack allows (2^32-1)", n);
}

int hr_mp_put_map(hr_mp_buf *b, size_t n)
{
    if (n < 16) return mp_head(b, (unsigned char)(0x80 | n), 0, 0);
    if (n <= 0xffff) return mp_head(b, 0xde, n, 2);
    if ((uint64_t)n <= 0xffffffffu) return mp_head(b, 0xdf, n, 4);
    return hr_fail(HR_EINVAL, "msgpack: a map of %zu pairs is longer than MessagePack allows (2^32-1)", n);
}

static const char *np_type_of(hr_dtype dt)
{
    switch (dt) {
    case HR_F16: return "<f2";
    case HR_F32: return "<f4";
    case HR_F64: return "<f8";
    case HR_I64: return "<i8";
    case HR_I32: return "<i4";
    case HR_U8: return "|u1";
    case HR_BOOL: return "|b1";
    default: return NULL;
    }
}

int hr_mp_put_ndarray(hr_mp_buf *b, const hr_tensor *t)
{
    if (hr_tensor_check_live(t, "msgpack_numpy: the tensor")) return -1;
    char desc[160];
    if (hr_tensor_device(t).type != HR_CPU)
        return hr_fail(HR_EINVAL, "msgpack_numpy: the tensor (%s) is on a GPU; copy it to the CPU first",
                       hr_tensor_desc(t, desc, sizeof desc));
    const char *type = np_type_of(t->dtype);
    if (!type)
        return hr_fail(HR_EINVAL, "msgpack_numpy: dtype %s has no NumPy equivalent (use f16, f32, f64, i64, i32, u8 or bool)",
                       hr_dtype_name(t->dtype));
    hr_tensor *c = hr_host_contiguous(t); /* the bytes are read on the host (a copy for a CUDA tensor) */
    if (!c) return -1;
    size_t nbytes = (size_t)hr_tensor_numel(c) * hr_dtype_size(c->dtype);
    int rc = hr_mp_put_map(b, 5);
    rc = rc ? rc : hr_mp_put_bin(b, "nd", 2);
    rc = rc ? rc : hr_mp_put_bool(b, true);
    rc = rc ? rc : hr_mp_put_bin(b, "type", 4);
    rc = rc ? rc : hr_mp_put_str(b, type, 3);
    rc = rc ? rc : hr_mp_put_bin(b, "kind", 4);
    rc = rc ? rc : hr_mp_put_bin(b, "", 0);
    rc = rc ? rc : hr_mp_put_bin(b, "shape", 5);
    rc = rc ? rc : hr_mp_put_array(b, (size_t)c->ndim);
    for (int i = 0; i < c->ndim && !rc; i++) rc = hr_mp_put_int(b, c->size[i]);
    rc = rc ? rc : hr_mp_put_bin(b, "data", 4);
    /* The host is little-endian (as every reader of these files assumes): the bytes are the data. */
    rc = rc ? rc : hr_mp_put_bin(b, nbytes ? hr_tensor_data(c) : "", nbytes);
    hr_tensor_release(c);
    return rc;
}

/* ------------------------------------------------------------------ lz4 frame compression */

#ifdef HERO_WITH_LZ4
#include <lz4frame.h>

int hr_lz4_frame_compress(const void *src, size_t len, int level, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (level < 0 || level > LZ4F_compressionLevel_max())
        return hr_fail(HR_EINVAL, "lz4: compression level %d is outside 0..%d", level, LZ4F_compressionLevel_max());
    LZ4F_preferences_t prefs;
    memset(&prefs, 0, sizeof prefs);
    prefs.frameInfo.blockSizeID = LZ4F_max64KB;
    /* linked blocks, python-lz4's lz4.frame.compress default: values over one 64 KiB block are then
     * the bytes it writes (a single block is marked independent either way) */
    prefs.frameInfo.blockMode = LZ4F_blockLinked;
    prefs.frameInfo.contentChecksumFlag = LZ4F_noContentChecksum;
    prefs.frameInfo.contentSize = (unsigned long long)len;
    prefs.compressionLevel = level;
    size_t cap = LZ4F_compressFrameBound(len, &prefs);
    if (LZ4F_isError(cap)) return hr_fail(HR_EINVAL, "lz4: cannot compress %zu bytes: %s", len, LZ4F_getErrorName(cap));
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!buf) return hr_fail(HR_ENOMEM, "lz4: out of memory (%zu bytes) compressing %zu bytes", cap, len);
    size_t n = LZ4F_compressFrame(buf, cap, src, len, &prefs);
    if (LZ4F_isError(n)) {
        free(buf);
        return hr_fail(HR_EINVAL, "lz4: compressing %zu bytes failed: %s", len, LZ4F_getErrorName(n));
    }
    *out = buf;
    *outlen = n;
    return 0;
}

#else

int hr_lz4_frame_compress(const void *src, size_t len, int level, unsigned char **out, size_t *outlen)
{
    (void)src, (void)len, (void)level;
    *out = NULL;
    *outlen = 0;
    return hr_fail(HR_EINVAL, "hero was built without LZ4 support (install liblz4-dev and rebuild)");
}

#endif

/* ------------------------------------------------------------------ LMDB writing */

#ifdef HERO_WITH_LMDB
#include <lmdb.h>

struct hr_lmdb_writer {
    MDB_env *env;
    MDB_dbi dbi;
    size_t map_size;
    size_t count;
    char *dir;
};

hr_lmdb_writer *hr_lmdb_writer_open(const char *dir, size_t map_size)
{
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return hr_fail_null(HR_EIO, "LMDB writer: '%s' is not an existing directory", dir);
    hr_lmdb_writer *w = calloc(1, sizeof *w);
    if (!w) return hr_fail_null(HR_ENOMEM, "LMDB writer: out of memory");
    w->dir = strdup(dir);
    w->map_size = map_size ? map_size : (size_t)64 << 20;
    if (!w->dir) {
        free(w);
        return hr_fail_null(HR_ENOMEM, "LMDB writer: out of memory");
    }
    MDB_txn *txn = NULL;
    int rc = mdb_env_create(&w->env);
    if (!rc) rc = mdb_env_set_mapsize(w->env, w->map_size);
    /* No lock file (the databases hero ships and reads have none, and nobody else opens this
     * directory while it is written); no sync per commit: finish() syncs once. */
    if (!rc) rc = mdb_env_open(w->env, dir, MDB_NOLOCK | MDB_NOSYNC, 0644);
    if (!rc) rc = mdb_txn_begin(w->env, NULL, 0, &txn);
    if (!rc) rc = mdb_dbi_open(txn, NULL, 0, &w->dbi);
    if (!rc) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (rc) {
        if (txn) mdb_txn_abort(txn);
        hr_fail(HR_EIO, "LMDB writer: cannot create a database in '%s': %s", dir, mdb_strerror(rc));
        hr_lmdb_writer_abort(w);
        return NULL;
    }
    return w;
}

/* Printable form of a key for messages. */
static void key_str(const void *key, size_t klen, char *buf, size_t cap)
{
    const unsigned char *k = key;
    size_t j = 0;
    for (size_t i = 0; i < klen && j + 5 < cap; i++) {
        if (k[i] >= 0x20 && k[i] < 0x7f && k[i] != '\'') buf[j++] = (char)k[i];
        else j += (size_t)snprintf(buf + j, cap - j, "\\x%02x", k[i]);
    }
    buf[j < cap ? j : cap - 1] = 0;
}

int hr_lmdb_writer_put(hr_lmdb_writer *w, const void *key, size_t klen, const void *val, size_t vlen, bool overwrite)
{
    if (!w || !w->env) return hr_fail(HR_EINVAL, "LMDB writer: the writer is closed");
    char ks[160];
    key_str(key, klen, ks, sizeof ks);
    if (klen == 0) return hr_fail(HR_EINVAL, "LMDB writer '%s': empty keys cannot be stored", w->dir);
    if (klen > (size_t)mdb_env_get_maxkeysize(w->env))
        return hr_fail(HR_EINVAL, "LMDB writer '%s': key '%s' is %zu bytes, LMDB keys hold at most %d", w->dir, ks,
                       klen, mdb_env_get_maxkeysize(w->env));
    for (int attempt = 0; attempt < 64; attempt++) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(w->env, NULL, 0, &txn);
        if (rc) return hr_fail(HR_EIO, "LMDB writer '%s': cannot begin a transaction: %s", w->dir, mdb_strerror(rc));
        MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
        rc = mdb_put(txn, w->dbi, &k, &v, overwrite ? 0 : MDB_NOOVERWRITE);
        if (!rc) rc = mdb_txn_commit(txn);
        else mdb_txn_abort(txn);
        if (!rc) {
            w->count++;
            return 0;
        }
        if (rc == MDB_KEYEXIST)
            return hr_fail(HR_EINVAL, "LMDB writer '%s': key '%s' is already in the database", w->dir, ks);
        if (rc != MDB_MAP_FULL)
            return hr_fail(HR_EIO, "LMDB writer '%s': storing key '%s' (%zu bytes) failed: %s", w->dir, ks, vlen,
                           mdb_strerror(rc));
        /* The map is full: this one put was rolled back; grow the map and try again. */
        if (w->map_size > SIZE_MAX / 2)
            return hr_fail(HR_EIO, "LMDB writer '%s': the map cannot grow past %zu bytes", w->dir, w->map_size);
        size_t grown = w->map_size * 2;
        while (grown - w->map_size < 2 * vlen + 65536 && grown <= SIZE_MAX / 2) grown *= 2;
        rc = mdb_env_set_mapsize(w->env, grown);
        if (rc) return hr_fail(HR_EIO, "LMDB writer '%s': growing the map to %zu bytes failed: %s", w->dir, grown,
                               mdb_strerror(rc));
        w->map_size = grown;
    }
    return hr_fail(HR_EIO, "LMDB writer '%s': key '%s' does not fit even after growing the map", w->dir, ks);
}

size_t hr_lmdb_writer_count(const hr_lmdb_writer *w) { return w ? w->count : 0; }
size_t hr_lmdb_writer_map_size(const hr_lmdb_writer *w) { return w ? w->map_size : 0; }

int hr_lmdb_writer_finish(hr_lmdb_writer *w)
{
    if (!w || !w->env) return hr_fail(HR_EINVAL, "LMDB writer: the writer is closed");
    int rc = mdb_env_sync(w->env, 1);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", w->dir);
    hr_lmdb_writer_abort(w);
    if (rc) return hr_fail(HR_EIO, "LMDB writer '%s': syncing to disk failed: %s", dir, mdb_strerror(rc));
    return 0;
}

void hr_lmdb_writer_abort(hr_lmdb_writer *w)
{
    if (!w) return;
    if (w->env) mdb_env_close(w->env);
    free(w->dir);
    free(w);
}

#else

#define NO_LMDB "hero was built without LMDB support (install liblmdb-dev and rebuild)"
struct hr_lmdb_writer {
    int unused;
};
hr_lmdb_writer *hr_lmdb_writer_open(const char *dir, size_t map_size)
{
    (void)dir, (void)map_size;
    return hr_fail_null(HR_EINVAL, NO_LMDB);
}
int hr_lmdb_writer_put(hr_lmdb_writer *w, const void *key, size_t klen, const void *val, size_t vlen, bool overwrite)
{
    (void)w, (void)key, (void)klen, (void)val, (void)vlen, (void)overwrite;
    return hr_fail(HR_EINVAL, NO_LMDB);
}
size_t hr_lmdb_writer_count(const hr_lmdb_writer *w) { return w ? 0 : 0; }
size_t hr_lmdb_writer_map_size(const hr_lmdb_writer *w) { return w ? 0 : 0; }
int hr_lmdb_writer_finish(hr_lmdb_writer *w)
{
    (void)w;
    return hr_fail(HR_EINVAL, NO_LMDB);
}
void hr_lmdb_writer_abort(hr_lmdb_writer *w) { (void)w; }

#endif

/* ------------------------------------------------------------------ directories */

int hr_dir_create(const char *path, bool exist_ok)
{
    if (mkdir(path, 0777) == 0) return 0;
    int e = errno;
    struct stat st;
    if (e == EEXIST && exist_ok && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    if (e == EEXIST) return hr_fail(HR_EIO, "cannot create the directory '%s': it already exists", path);
    return hr_fail(HR_EIO, "cannot create the directory '%s': %s", path, strerror(e));
}

static int remove_tree(const char *path, int depth)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return 0;
        return hr_fail(HR_EIO, "cannot remove '%s': %s", path, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0 && errno != ENOENT) return hr_fail(HR_EIO, "cannot remove '%s': %s", path, strerror(errno));
        return 0;
    }
    if (depth > 64) return hr_fail(HR_EIO, "cannot remove '%s': directories nested deeper than 64 levels", path);
    DIR *d = opendir(path);
    if (!d) return hr_fail(HR_EIO, "cannot open the directory '%s': %s", path, strerror(errno));
    size_t pl = strlen(path);
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        size_t nl = strlen(e->d_name);
        char *child = malloc(pl + nl + 2);
        if (!child) {
            rc = hr_fail(HR_ENOMEM, "out of memory removing '%s'", path);
            break;
        }
        memcpy(child, path, pl);
        child[pl] = '/';
        memcpy(child + pl + 1, e->d_name, nl + 1);
        rc = remove_tree(child, depth + 1);
        free(child);
    }
    closedir(d);
    if (!rc && rmdir(path) != 0) rc = hr_fail(HR_EIO, "cannot remove the directory '%s': %s", path, strerror(errno));
    return rc;
}

int hr_dir_remove_tree(const char *path) { return remove_tree(path, 0); }

/* fsync of a path opened read-only; directories may refuse (ignored by callers that say so). */
static int sync_path(const char *path, int flags)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | flags);
    if (fd < 0) return -1;
    int bad = fsync(fd) != 0;
    close(fd);
    return bad ? -1 : 0;
}

int hr_path_rename(const char *from, const char *to)
{
    if (rename(from, to) != 0)
        return hr_fail(HR_EIO, "cannot rename '%s' to '%s': %s", from, to, strerror(errno));
    /* Make the rename durable: fsync the destination's parent directory (best effort). */
    const char *slash = strrchr(to, '/');
    if (slash == NULL) {
        (void)sync_path(".", O_DIRECTORY);
    } else {
        size_t n = (size_t)(slash - to);
        char *parent = malloc(n + 2);
        if (parent) {
            if (n == 0) memcpy(parent, "/", 2);
            else {
                memcpy(parent, to, n);
                parent[n] = 0;
            }
            (void)sync_path(parent, O_DIRECTORY);
            free(parent);
        }
    }
    return 0;
}

int hr_dir_sync(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return hr_fail(HR_EIO, "cannot open the directory '%s': %s", dir, strerror(errno));
    size_t dl = strlen(dir);
    int rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0))) continue;
        size_t nl = strlen(e->d_name);
        char *p = malloc(dl + nl + 2);
        if (!p) {
            rc = hr_fail(HR_ENOMEM, "out of memory syncing '%s'", dir);
            break;
        }
        memcpy(p, dir, dl);
        p[dl] = '/';
        memcpy(p + dl + 1, e->d_name, nl + 1);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && sync_path(p, 0) != 0)
            rc = hr_fail(HR_EIO, "cannot sync '%s' to disk: %s", p, strerror(errno));
        free(p);
    }
    closedir(d);
    (void)sync_path(dir, O_DIRECTORY);
    return rc;
}

int hr_path_sync(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return hr_fail(HR_EIO, "cannot open '%s' to sync it: %s", path, strerror(errno));
    struct stat st;
    int is_dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    int bad = fsync(fd) != 0;
    int e = errno;
    close(fd);
    /* Some file systems answer EINVAL for directories: their renames are as durable as they get. */
    if (bad && !(is_dir && (e == EINVAL || e == EBADF)))
        return hr_fail(HR_EIO, "cannot sync '%s' to disk: %s", path, strerror(e));
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void hr_dir_list_free(char **names, bool *is_dir, size_t n)
{
    if (names)
        for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    free(is_dir);
}

int hr_dir_list(const char *dir, char ***names_out, bool **is_dir_out, size_t *n_out)
{
    *names_out = NULL;
    *is_dir_out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) return hr_fail(HR_EIO, "cannot list the directory '%s': %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 32;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) {
                rc = hr_fail(HR_ENOMEM, "out of memory listing '%s'", dir);
                break;
            }
            names = nn;
            cap = nc;
        }
        names[n] = strdup(e->d_name);
        if (!names[n]) {
            rc = hr_fail(HR_ENOMEM, "out of memory listing '%s'", dir);
            break;
        }
        n++;
    }
    closedir(d);
    bool *is_dir = rc ? NULL : malloc((n ? n : 1) * sizeof *is_dir);
    if (!rc && !is_dir) rc = hr_fail(HR_ENOMEM, "out of memory listing '%s'", dir);
    if (rc) {
        hr_dir_list_free(names, is_dir, n);
        return rc;
    }
    if (n > 1) qsort(names, n, sizeof *names, cmp_names); /* an empty listing has names == NULL */
    size_t dl = strlen(dir);
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(names[i]);
        char *p = malloc(dl + nl + 2);
        if (!p) {
            hr_dir_list_free(names, is_dir, n);
            return hr_fail(HR_ENOMEM, "out of memory listing '%s'", dir);
        }
        memcpy(p, dir, dl);
        p[dl] = '/';
        memcpy(p + dl + 1, names[i], nl + 1);
        struct stat st;
        is_dir[i] = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
        free(p);
    }
    *names_out = names;
    *is_dir_out = is_dir;
    *n_out = n;
    return 0;
}
