/* io_lmdb.c — read-only access to LMDB databases through liblmdb (optional: HERO_WITH_LMDB). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hr_data.h"

#ifdef HERO_WITH_LMDB
#include <lmdb.h>

struct hr_lmdb {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    char *dir; /* for messages */
};

bool hr_lmdb_available(void) { return true; }

hr_lmdb *hr_lmdb_open(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return hr_fail_null(HR_EIO, "no such LMDB directory: '%s' (%s)", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return hr_fail_null(HR_EIO, "'%s' is not a directory (an LMDB database is a directory holding data.mdb)", dir);
    size_t dl = strlen(dir);
    char *data = malloc(dl + 10);
    if (!data) return hr_fail_null(HR_ENOMEM, "out of memory opening LMDB '%s'", dir);
    memcpy(data, dir, dl);
    memcpy(data + dl, "/data.mdb", 10);
    int have_data = stat(data, &st) == 0 && S_ISREG(st.st_mode); /* st: data.mdb from here on */
    free(data);
    if (!have_data) return hr_fail_null(HR_EIO, "LMDB directory '%s' has no data.mdb", dir);
    if (st.st_size == 0) return hr_fail_null(HR_EFORMAT, "LMDB '%s': data.mdb is empty", dir);

    hr_lmdb *db = calloc(1, sizeof *db);
    if (!db) return hr_fail_null(HR_ENOMEM, "out of memory opening LMDB '%s'", dir);
    db->dir = strdup(dir);
    if (!db->dir) {
        free(db);
        return hr_fail_null(HR_ENOMEM, "out of memory opening LMDB '%s'", dir);
    }
    int rc = mdb_env_create(&db->env);
    if (rc) goto fail;
    /* Map only the file: a read-only database cannot grow, while the map size recorded by the
     * writer (often 1-4 TiB) would take that much address space per open handle, and a few dozen
     * handles (one per worker state and database) exhaust the 128 TiB of a process. */
    rc = mdb_env_set_mapsize(db->env, ((size_t)st.st_size + 65535) & ~(size_t)65535);
    if (rc) goto fail;
    /* Read-only without a lock file: the shipped databases have no lock.mdb and the directory may be
     * read-only. This is safe as long as no process writes the database while it is open. */
    rc = mdb_env_open(db->env, dir, MDB_RDONLY | MDB_NOLOCK | MDB_NORDAHEAD, 0444);
    if (rc) goto fail;
    /* A truncated data.mdb (a copy cut short, a full disk) still opens, and the first read of a
     * page past its end would kill the process with SIGBUS: the pages the header counts must all
     * be in the file. (A damaged page inside it is read as liblmdb reads it.) */
    MDB_envinfo info;
    MDB_stat es;
    if (mdb_env_info(db->env, &info) == 0 && mdb_env_stat(db->env, &es) == 0) {
        unsigned long long need = ((unsigned long long)info.me_last_pgno + 1) * es.ms_psize;
        if ((unsigned long long)st.st_size < need) {
            hr_fail(HR_EFORMAT, "LMDB '%s': data.mdb is truncated (%lld bytes; its header counts %llu pages of %u "
                                "bytes, %llu bytes)",
                    dir, (long long)st.st_size, (unsigned long long)info.me_last_pgno + 1, es.ms_psize, need);
            hr_lmdb_close(db);
            return NULL;
        }
    }
    rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, &db->txn);
    if (rc) goto fail;
    rc = mdb_dbi_open(db->txn, NULL, 0, &db->dbi);
    if (rc) goto fail;
    return db;
fail:
    hr_fail(HR_EFORMAT, "cannot open LMDB '%s': %s", dir, mdb_strerror(rc));
    hr_lmdb_close(db);
    return NULL;
}

int hr_lmdb_get(hr_lmdb *db, const void *key, size_t klen, const void **val, size_t *vlen)
{
    if (!db || !db->txn) return hr_fail(HR_EINVAL, "LMDB handle is closed");
    if (klen == 0) return 0; /* LMDB cannot store empty keys */
    if (klen > (size_t)mdb_env_get_maxkeysize(db->env)) return 0; /* longer than any stored key */
    MDB_val k = {klen, (void *)key}, v;
    int rc = mdb_get(db->txn, db->dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return hr_fail(HR_EFORMAT, "LMDB '%s': reading a value failed: %s", db->dir, mdb_strerror(rc));
    *val = v.mv_data;
    *vlen = v.mv_size;
    return 1;
}

int hr_lmdb_count(hr_lmdb *db, size_t *n)
{
    if (!db || !db->txn) return hr_fail(HR_EINVAL, "LMDB handle is closed");
    MDB_stat st;
    int rc = mdb_stat(db->txn, db->dbi, &st);
    if (rc) return hr_fail(HR_EFORMAT, "LMDB '%s': stat failed: %s", db->dir, mdb_strerror(rc));
    *n = st.ms_entries;
    return 0;
}

int hr_lmdb_list(hr_lmdb *db, hr_lmdb_entry **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t cap;
    if (hr_lmdb_count(db, &cap)) return -1;
    /* The count comes from the file; the cursor walk below re-checks it, so a lying count can only
     * make this allocation smaller than needed (then the array grows) or larger (bounded by the
     * mapping, since every entry occupies file bytes). */
    hr_lmdb_entry *e = malloc((cap ? cap : 1) * sizeof *e);
    if (!e) return hr_fail(HR_ENOMEM, "out of memory listing LMDB '%s' (%zu entries)", db->dir, cap);
    MDB_cursor *cur;
    int rc = mdb_cursor_open(db->txn, db->dbi, &cur);
    if (rc) {
        free(e);
        return hr_fail(HR_EFORMAT, "LMDB '%s': cursor: %s", db->dir, mdb_strerror(rc));
    }
    size_t cnt = 0;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (cnt == cap) {
            size_t ncap = cap ? 2 * cap : 16;
            hr_lmdb_entry *ne = realloc(e, ncap * sizeof *e);
            if (!ne) {
                mdb_cursor_close(cur);
                free(e);
                return hr_fail(HR_ENOMEM, "out of memory listing LMDB '%s'", db->dir);
            }
            e = ne;
            cap = ncap;
        }
        e[cnt].key = k.mv_data;
        e[cnt].klen = k.mv_size;
        e[cnt].vlen = v.mv_size;
        cnt++;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) {
        free(e);
        return hr_fail(HR_EFORMAT, "LMDB '%s': iterating keys failed: %s", db->dir, mdb_strerror(rc));
    }
    *out = e;
    *n = cnt;
    return 0;
}

void hr_lmdb_close(hr_lmdb *db)
{
    if (!db) return;
    if (db->txn) mdb_txn_abort(db->txn);
    if (db->env) mdb_env_close(db->env);
    free(db->dir);
    free(db);
}

#else /* !HERO_WITH_LMDB */

#define NO_LMDB "hero was built without LMDB support (install liblmdb-dev and rebuild)"

struct hr_lmdb {
    int unused;
};

bool hr_lmdb_available(void) { return false; }
hr_lmdb *hr_lmdb_open(const char *dir) { return hr_fail_null(HR_EINVAL, NO_LMDB); }
int hr_lmdb_get(hr_lmdb *db, const void *key, size_t klen, const void **val, size_t *vlen)
{
    return hr_fail(HR_EINVAL, NO_LMDB);
}
int hr_lmdb_list(hr_lmdb *db, hr_lmdb_entry **out, size_t *n) { return hr_fail(HR_EINVAL, NO_LMDB); }
int hr_lmdb_count(hr_lmdb *db, size_t *n) { return hr_fail(HR_EINVAL, NO_LMDB); }
void hr_lmdb_close(hr_lmdb *db) { (void)db; }

#endif
