/* io_common.c — pieces shared by the file formats: named tensor lists, whole-file reads, atomic writes. */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef HERO_WITH_LIBDEFLATE
#include <libdeflate.h>
#else
#include <zlib.h>
#endif

#include "hr_io.h"

void hr_tensor_list_init(hr_tensor_list *l) { memset(l, 0, sizeof *l); }

void hr_tensor_list_free(hr_tensor_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->names[i]);
        hr_tensor_release(l->tensors[i]);
    }
    for (size_t i = 0; i < l->nmeta; i++) {
        free(l->meta_keys[i]);
        free(l->meta_vals[i]);
    }
    free(l->names);
    free(l->tensors);
    free(l->meta_keys);
    free(l->meta_vals);
    memset(l, 0, sizeof *l);
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

int hr_tensor_list_add(hr_tensor_list *l, const char *name, hr_tensor *t)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        char **names = realloc(l->names, cap * sizeof *names);
        if (!names) return hr_fail(HR_ENOMEM, "out of memory growing a tensor list");
        l->names = names;
        hr_tensor **ts = realloc(l->tensors, cap * sizeof *ts);
        if (!ts) return hr_fail(HR_ENOMEM, "out of memory growing a tensor list");
        l->tensors = ts;
        l->cap = cap;
    }
    char *copy = dup_str(name);
    if (!copy) return hr_fail(HR_ENOMEM, "out of memory copying a tensor name");
    hr_tensor_retain(t);
    l->names[l->n] = copy;
    l->tensors[l->n] = t;
    l->n++;
    return 0;
}

int hr_tensor_list_add_meta(hr_tensor_list *l, const char *key, const char *value)
{
    if (l->nmeta == l->meta_cap) {
        size_t cap = l->meta_cap ? l->meta_cap * 2 : 4;
        char **k = realloc(l->meta_keys, cap * sizeof *k);
        if (!k) return hr_fail(HR_ENOMEM, "out of memory growing metadata");
        l->meta_keys = k;
        char **v = realloc(l->meta_vals, cap * sizeof *v);
        if (!v) return hr_fail(HR_ENOMEM, "out of memory growing metadata");
        l->meta_vals = v;
        l->meta_cap = cap;
    }
    char *kc = dup_str(key), *vc = dup_str(value);
    if (!kc || !vc) {
        free(kc);
        free(vc);
        return hr_fail(HR_ENOMEM, "out of memory copying metadata");
    }
    l->meta_keys[l->nmeta] = kc;
    l->meta_vals[l->nmeta] = vc;
    l->nmeta++;
    return 0;
}

uint32_t hr_crc32(const void *buf, size_t len)
{
#ifdef HERO_WITH_LIBDEFLATE
    /* The same CRC-32, several times faster (carry-less multiplication where the CPU has it). */
    return libdeflate_crc32(0, buf, len);
#else
    /* zlib's crc32 takes a uInt length: feed big buffers in pieces. */
    uLong crc = crc32(0L, Z_NULL, 0);
    const unsigned char *p = buf;
    while (len > 0) {
        uInt chunk = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = crc32(crc, p, chunk);
        p += chunk;
        len -= chunk;
    }
    return (uint32_t)crc;
#endif
}

int hr_io_read_file(const char *path, unsigned char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer; regular files read as ever */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) return hr_fail(HR_EIO, "no such file: '%s'", path);
        return hr_fail(HR_EIO, "cannot open '%s': %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return hr_fail(HR_EIO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return hr_fail(HR_EIO, "'%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return hr_fail(HR_ENOMEM, "out of memory reading '%s' (%zu bytes)", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return hr_fail(HR_EIO, "cannot read '%s': %s", path, strerror(e));
        }
        if (r == 0) break; /* the file shrank while we read it: use what is there */
        got += (size_t)r;
    }
    close(fd);
    *out = buf;
    *len = got;
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_atomic_at(const char *path, size_t n, const void *const *pieces, const size_t *lens);

/* Numbers the temporary files of this process: threads share the pid, and two of them writing one
 * path through the same temporary name would publish each other's (or a mixed) file. */
static atomic_ulong temp_serial;

int hr_io_write_atomic(const char *path, size_t n, const void *const *pieces, const size_t *lens)
{
    /* A symbolic link stays one: the file it names gets the new content (the rename would
     * otherwise replace the link by a plain file and leave its target as it was). A link whose
     * target does not exist is replaced, as before. */
    struct stat lst;
    if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode)) {
        char *target = realpath(path, NULL);
        if (target) {
            int rc = write_atomic_at(target, n, pieces, lens);
            free(target);
            return rc;
        }
    }
    return write_atomic_at(path, n, pieces, lens);
}

static int write_atomic_at(const char *path, size_t n, const void *const *pieces, const size_t *lens)
{
    /* Writing next to the destination keeps the final rename on one file system, so readers see
     * either the old complete file or the new complete file, never a torn one. */
    /* Only a regular file is replaced: the rename would turn a device or a FIFO into a plain file
     * (as root, hero.save("/dev/null", ...) would delete the device node) */
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return hr_fail(HR_EIO, "cannot replace '%s': it is %s, not a regular file", path,
                       S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                              : "a special file");
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 64);
    if (!tmp) return hr_fail(HR_ENOMEM, "out of memory");
    /* path.tmp.<pid>.<serial>: unique among this process's threads; O_EXCL refuses a leftover */
    snprintf(tmp, plen + 64, "%s.tmp.%ld.%lu", path, (long)getpid(), atomic_fetch_add(&temp_serial, 1) + 1);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        int e = errno;
        hr_fail(HR_EIO, "cannot create '%s': %s", tmp, strerror(e));
        free(tmp);
        return -1;
    }
    /* A file replaced keeps its permission bits (a private 0600 file must not come back 0644). */
    struct stat old;
    if (stat(path, &old) == 0 && S_ISREG(old.st_mode) && fchmod(fd, old.st_mode & 07777) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        hr_fail(HR_EIO, "cannot give '%s' the permissions of '%s': %s", tmp, path, strerror(e));
        free(tmp);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (lens[i] && write_all(fd, pieces[i], lens[i]) != 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            hr_fail(HR_EIO, "cannot write '%s': %s", tmp, strerror(e));
            free(tmp);
            return -1;
        }
    }
    int bad = fsync(fd) != 0;
    int e = errno;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(tmp);
        hr_fail(HR_EIO, "cannot flush '%s': %s", tmp, strerror(e));
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        hr_fail(HR_EIO, "cannot replace '%s': %s", path, strerror(e));
        free(tmp);
        return -1;
    }
    free(tmp);
    /* Make the rename itself durable (best effort: some file systems refuse fsync on directories). */
    char *dir = dup_str(path);
    if (dir) {
        char *slash = strrchr(dir, '/');
        const char *d = ".";
        if (slash == dir) d = "/";
        else if (slash) { *slash = '\0'; d = dir; }
        int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    return 0;
}
