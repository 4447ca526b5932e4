/*
 * io_zip.c — the zip container (as written by NumPy's savez / savez_compressed), .npz archives and
 * extractor feature files.
 *
 * Reading trusts only the central directory (found through the end-of-central-directory record,
 * zip64 records understood), checks every offset and size against the archive's length before use,
 * bounds the inflated size by deflate's maximum ratio before allocating, and verifies CRC-32.
 * Members are inflated by libdeflate when hero is built with it (HERO_WITH_LIBDEFLATE), by zlib
 * otherwise; zlib always deflates, so that equal inputs give byte-identical archives in either build.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#ifdef HERO_WITH_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "hr_io.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_EOCD64_LOC 0x07064b50u

/* Deflate never expands data by more than this factor (plus a little), so a directory claiming more is
 * lying and must not drive an allocation. */
#define DEFLATE_MAX_RATIO 1032u

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static void wr16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static int corrupt(const char *what, const char *detail)
{
    return hr_fail(HR_EFORMAT, "%s: corrupt or truncated zip archive (%s)", what, detail);
}

void hr_zip_close(hr_zip *z)
{
    for (size_t i = 0; i < z->n; i++) free(z->entries[i].name);
    free(z->entries);
    memset(z, 0, sizeof *z);
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Duplicate member names are found by sorting a copy of the names: comparing each entry with all the
 * earlier ones took quadratic time, minutes for a directory of 65535 entries. */
static int check_unique_names(const hr_zip *z, const char *what)
{
    if (z->n < 2) return 0;
    char **names = malloc(z->n * sizeof *names);
    if (!names) return hr_fail(HR_ENOMEM, "%s: out of memory reading the zip directory", what);
    for (size_t i = 0; i < z->n; i++) names[i] = z->entries[i].name;
    qsort(names, z->n, sizeof *names, cmp_str_ptr);
    int rc = 0;
    for (size_t i = 1; i < z->n && rc == 0; i++)
        if (strcmp(names[i - 1], names[i]) == 0) rc = hr_fail(HR_EFORMAT, "%s: duplicate zip member '%s'", what, names[i]);
    free(names);
    return rc;
}

int hr_zip_open(hr_zip *z, const void *buf, size_t len, const char *what)
{
    const unsigned char *b = buf;
    memset(z, 0, sizeof *z);
    z->buf = b;
    z->len = len;
    if (len < 22) return corrupt(what, "no end-of-central-directory record");
    /* The EOCD is 22 bytes plus a comment of at most 65535; take the last record that fits. */
    size_t lo = len - 22 > 65535 ? len - 22 - 65535 : 0;
    size_t eocd = SIZE_MAX;
    for (size_t i = len - 22 + 1; i-- > lo;) {
        if (rd32(b + i) == SIG_EOCD && i + 22 + rd16(b + i + 20) <= len) {
            eocd = i;
            break;
        }
    }
    if (eocd == SIZE_MAX) return corrupt(what, "no end-of-central-directory record");
    const unsigned char *e = b + eocd;
    if (rd16(e + 4) != 0 || rd16(e + 6) != 0 || rd16(e + 8) != rd16(e + 10))
        return corrupt(what, "multi-disk archives are not supported");
    uint64_t count = rd16(e + 10), cd_size = rd32(e + 12), cd_off = rd32(e + 16);
    if (count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        if (eocd < 20 || rd32(b + eocd - 20) != SIG_EOCD64_LOC) return corrupt(what, "zip64 locator missing");
        uint64_t off64 = rd64(b + eocd - 20 + 8);
        if (off64 > len || len - off64 < 56 || rd32(b + off64) != SIG_EOCD64)
            return corrupt(what, "bad zip64 end-of-central-directory record");
        const unsigned char *e64 = b + off64;
        count = rd64(e64 + 32);
        cd_size = rd64(e64 + 40);
        cd_off = rd64(e64 + 48);
    }
    if (cd_off > len || cd_size > len - cd_off) return corrupt(what, "central directory runs past the end");
    if (count > cd_size / 46) return corrupt(what, "central directory too small for its entry count");
    z->entries = calloc(count ? count : 1, sizeof *z->entries);
    if (!z->entries) return hr_fail(HR_ENOMEM, "%s: out of memory reading the zip directory", what);
    size_t pos = (size_t)cd_off, end = (size_t)(cd_off + cd_size);
    for (uint64_t i = 0; i < count; i++) {
        if (end - pos < 46 || rd32(b + pos) != SIG_CENTRAL) {
            hr_zip_close(z);
            return corrupt(what, "bad central directory entry");
        }
        const unsigned char *c = b + pos;
        size_t nlen = rd16(c + 28), elen = rd16(c + 30), clen = rd16(c + 32);
        if (end - pos - 46 < nlen + elen + clen) {
            hr_zip_close(z);
            return corrupt(what, "central directory entry runs past the directory");
        }
        hr_zip_entry *ent = &z->entries[z->n];
        ent->flags = rd16(c + 8);
        ent->method = rd16(c + 10);
        ent->crc32 = rd32(c + 16);
        ent->csize = rd32(c + 20);
        ent->usize = rd32(c + 24);
        ent->local_offset = rd32(c + 42);
        if (memchr(c + 46, 0, nlen)) {
            hr_zip_close(z);
            return corrupt(what, "NUL byte in a member name");
        }
        ent->name = malloc(nlen + 1);
        if (!ent->name) {
            hr_zip_close(z);
            return hr_fail(HR_ENOMEM, "%s: out of memory reading the zip directory", what);
        }
        memcpy(ent->name, c + 46, nlen);
        ent->name[nlen] = '\0';
        z->n++;
        /* zip64 extra field: the 64-bit values appear only for the fields saturated above, in order. */
        const unsigned char *x = c + 46 + nlen, *xend = x + elen;
        while (xend - x >= 4) {
            uint16_t id = rd16(x), sz = rd16(x + 2);
            if ((size_t)(xend - x - 4) < sz) break;
            if (id == 0x0001) {
                const unsigned char *f = x + 4, *fend = x + 4 + sz;
                if (ent->usize == 0xFFFFFFFFu && fend - f >= 8) { ent->usize = rd64(f); f += 8; }
                if (ent->csize == 0xFFFFFFFFu && fend - f >= 8) { ent->csize = rd64(f); f += 8; }
                if (ent->local_offset == 0xFFFFFFFFu && fend - f >= 8) { ent->local_offset = rd64(f); f += 8; }
            }
            x += 4 + sz;
        }
        pos += 46 + nlen + elen + clen;
    }
    if (check_unique_names(z, what)) {
        hr_zip_close(z);
        return -1;
    }
    return 0;
}

long hr_zip_find(const hr_zip *z, const char *name)
{
    for (size_t i = 0; i < z->n; i++)
        if (strcmp(z->entries[i].name, name) == 0) return (long)i;
    return -1;
}

/* Inflates a raw deflate stream of csize bytes into exactly usize bytes at dst with zlib. Once dst is
 * full, one more byte of output space (a scratch byte) tells a stream that is longer than the
 * directory says from one that ends exactly there. */
static int inflate_zlib(const hr_zip_entry *e, const unsigned char *src, unsigned char *dst)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) return hr_fail(HR_ENOMEM, "zlib could not start inflating zip member %s", e->name);
    size_t in_left = (size_t)e->csize, out_left = (size_t)e->usize;
    const unsigned char *ip = src;
    unsigned char *op = dst, spare;
    int ret;
    for (;;) {
        bool spare_mode = out_left == 0;
        uInt ain = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
        uInt aout = spare_mode ? 1 : out_left > (1u << 30) ? (1u << 30) : (uInt)out_left;
        zs.next_in = (Bytef *)ip;
        zs.avail_in = ain;
        zs.next_out = spare_mode ? &spare : op;
        zs.avail_out = aout;
        ret = inflate(&zs, Z_NO_FLUSH);
        size_t used = ain - zs.avail_in, made = aout - zs.avail_out;
        ip += used;
        in_left -= used;
        if (spare_mode && made) {
            inflateEnd(&zs);
            return hr_fail(HR_EFORMAT, "zip member %s inflates to more than the %" PRIu64 " bytes the directory says",
                           e->name, e->usize);
        }
        if (!spare_mode) {
            op += made;
            out_left -= made;
        }
        if (ret == Z_STREAM_END) break;
        if (ret == Z_OK && (used || made)) continue;
        if (ret == Z_BUF_ERROR || ret == Z_OK) {
            inflateEnd(&zs);
            if (in_left == 0) return hr_fail(HR_EFORMAT, "corrupt deflate stream in zip member %s (truncated)", e->name);
            return hr_fail(HR_EFORMAT, "zip member %s inflates to more than the %" PRIu64 " bytes the directory says",
                           e->name, e->usize);
        }
        inflateEnd(&zs);
        return hr_fail(HR_EFORMAT, "corrupt deflate stream in zip member %s (zlib: %s)", e->name,
                       zs.msg ? zs.msg : "data error");
    }
    inflateEnd(&zs);
    if (out_left != 0)
        return hr_fail(HR_EFORMAT, "zip member %s inflates to %zu bytes, the directory says %" PRIu64, e->name,
                       (size_t)e->usize - out_left, e->usize);
    return 0;
}

bool hr_zip_has_libdeflate(void)
{
#ifdef HERO_WITH_LIBDEFLATE
    return true;
#else
    return false;
#endif
}

#ifdef HERO_WITH_LIBDEFLATE
/* The same with libdeflate, which inflates a whole buffer about 1.6x as fast as zlib's streaming
 * inflate: asked for exactly usize bytes, it succeeds only when the stream ends exactly there.
 * Anything else (LIBDEFLATE_SHORT_OUTPUT, LIBDEFLATE_INSUFFICIENT_SPACE, LIBDEFLATE_BAD_DATA) is
 * diagnosed again by zlib, whose reading is the message: libdeflate's BAD_DATA does not tell a
 * truncated stream from a corrupt one nor say what is wrong, SHORT_OUTPUT does not say how short, and
 * the two libraries may meet a stream's first fault in a different order. So a member is refused with
 * the same words in either build, at the cost of a second pass over a member that is refused anyway.
 * (libdeflate also accepts a few forms RFC 1951 forbids and zlib refuses, such as code-length counts
 * of up to 288 / 32 symbols; what it inflates from them must still match the member's CRC-32.)
 * A decompressor is not safe to share between threads (the loader's workers inflate concurrently):
 * each call allocates its own (under a microsecond, against 3 ms to inflate a video's features). */
static int inflate_into(const hr_zip_entry *e, const unsigned char *src, unsigned char *dst)
{
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!d) return hr_fail(HR_ENOMEM, "out of memory starting to inflate zip member %s", e->name);
    enum libdeflate_result r = libdeflate_deflate_decompress(d, src, (size_t)e->csize, dst, (size_t)e->usize, NULL);
    libdeflate_free_decompressor(d);
    if (r == LIBDEFLATE_SUCCESS) return 0;
    return inflate_zlib(e, src, dst);
}
#else
static int inflate_into(const hr_zip_entry *e, const unsigned char *src, unsigned char *dst)
{
    return inflate_zlib(e, src, dst);
}
#endif

/* Validates entry i (encryption, local header, bounds, sizes, method) and finds its data. Every check
 * happens before the caller allocates usize bytes. */
static int member_data(const hr_zip *z, const hr_zip_entry *e, const unsigned char **src)
{
    if (e->flags & 1) return hr_fail(HR_EFORMAT, "zip member %s is encrypted", e->name);
    if (e->local_offset > z->len || z->len - e->local_offset < 30 || rd32(z->buf + e->local_offset) != SIG_LOCAL)
        return hr_fail(HR_EFORMAT, "corrupt or truncated zip archive (bad local header of member %s)", e->name);
    const unsigned char *lh = z->buf + e->local_offset;
    uint64_t start = e->local_offset + 30 + rd16(lh + 26) + rd16(lh + 28);
    if (start > z->len || e->csize > z->len - start)
        return hr_fail(HR_EFORMAT, "corrupt or truncated zip archive (data of member %s runs past the end)", e->name);
    if (e->method == 0) {
        if (e->csize != e->usize)
            return hr_fail(HR_EFORMAT, "zip member %s is stored but its sizes differ (%" PRIu64 " vs %" PRIu64 ")",
                           e->name, e->csize, e->usize);
    } else if (e->method == 8) {
        if (e->usize > e->csize * DEFLATE_MAX_RATIO + 1024)
            return hr_fail(HR_EFORMAT,
                           "zip member %s claims %" PRIu64 " bytes from %" PRIu64
                           " compressed (more than deflate can produce)",
                           e->name, e->usize, e->csize);
    } else {
        return hr_fail(HR_EFORMAT, "zip member %s uses compression method %u (only stored and deflate are supported)",
                       e->name, e->method);
    }
    *src = z->buf + start;
    return 0;
}

/* Copies or inflates a validated member into dst (usize bytes) and checks its CRC-32. */
static int member_read(const hr_zip_entry *e, const unsigned char *src, unsigned char *dst)
{
    if (e->method == 0) {
        if (e->usize) memcpy(dst, src, (size_t)e->usize);
    } else if (inflate_into(e, src, dst)) {
        return -1;
    }
    uint32_t crc = hr_crc32(dst, (size_t)e->usize);
    if (crc != e->crc32)
        return hr_fail(HR_EFORMAT, "CRC-32 mismatch in zip member %s (directory says %08" PRIx32 ", data has %08" PRIx32
                       ")", e->name, e->crc32, crc);
    return 0;
}

int hr_zip_extract_to(const hr_zip *z, size_t i, void *dst, size_t cap)
{
    const hr_zip_entry *e = &z->entries[i];
    const unsigned char *src = NULL;
    if (member_data(z, e, &src)) return -1;
    if (e->usize != cap)
        return hr_fail(HR_EFORMAT, "zip member %s holds %" PRIu64 " bytes, expected %zu", e->name, e->usize, cap);
    return member_read(e, src, dst);
}

int hr_zip_extract(const hr_zip *z, size_t i, unsigned char **out, size_t *outlen)
{
    const hr_zip_entry *e = &z->entries[i];
    const unsigned char *src = NULL;
    *out = NULL;
    *outlen = 0;
    if (member_data(z, e, &src)) return -1;
    unsigned char *dst = malloc(e->usize ? (size_t)e->usize : 1);
    if (!dst) return hr_fail(HR_ENOMEM, "out of memory extracting zip member %s", e->name);
    if (member_read(e, src, dst)) {
        free(dst);
        return -1;
    }
    *out = dst;
    *outlen = (size_t)e->usize;
    return 0;
}

/* Concatenates the pieces into one malloc'd buffer. */
static int join_pieces(size_t n, const void *const *pieces, const size_t *lens, unsigned char **out, size_t *outlen)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += lens[i];
    unsigned char *buf = malloc(total ? total : 1);
    if (!buf) return hr_fail(HR_ENOMEM, "out of memory assembling a zip archive of %zu bytes", total);
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i]) memcpy(buf + at, pieces[i], lens[i]);
        at += lens[i];
    }
    *out = buf;
    *outlen = total;
    return 0;
}

/* A zip with members names[i] = data[i] (deflated when compress): written atomically to path, or,
 * when path is NULL, returned in *out (malloc'd, *outlen bytes). `what` names it in errors. */
static int zip_assemble(const char *what, const char *path, size_t n, const char *const *names,
                        const unsigned char *const *data, const size_t *lens, bool compress, unsigned char **out,
                        size_t *outlen)
{
    /* 0xFFFF entries is zip64's marker: readers would then look for zip64 records */
    if (n >= 0xFFFF)
        return hr_fail(HR_EINVAL, "%s would hold %zu members; without zip64 records (not written) at most 65534",
                       what, n);
    /* Pieces: per member a local header and its data, then the directory and its end record. */
    size_t npieces = 2 * n + 2;
    const void **pieces = calloc(npieces, sizeof *pieces);
    size_t *plens = calloc(npieces, sizeof *plens);
    unsigned char **headers = calloc(n ? n : 1, sizeof *headers);
    unsigned char **packed = calloc(n ? n : 1, sizeof *packed);
    unsigned char *cd = NULL;
    int rc = -1;
    if (!pieces || !plens || !headers || !packed) {
        hr_fail(HR_ENOMEM, "out of memory writing %s", what);
        goto done;
    }
    size_t cd_len = 0;
    for (size_t i = 0; i < n; i++) cd_len += 46 + strlen(names[i]);
    cd = malloc(cd_len + 22);
    if (!cd) {
        hr_fail(HR_ENOMEM, "out of memory writing %s", what);
        goto done;
    }
    uint64_t offset = 0;
    size_t cdpos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t nlen = strlen(names[i]);
        if (nlen > 65535) {
            hr_fail(HR_EINVAL, "zip member name of %zu bytes is too long", nlen);
            goto done;
        }
        uint32_t crc = hr_crc32(data[i], lens[i]);
        const unsigned char *payload = data[i];
        size_t csize = lens[i];
        uint16_t method = 0;
        if (compress) {
            z_stream zs;
            memset(&zs, 0, sizeof zs);
            if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
                hr_fail(HR_ENOMEM, "zlib could not start deflating");
                goto done;
            }
            uLong bound = deflateBound(&zs, (uLong)lens[i]);
            packed[i] = malloc(bound ? bound : 1);
            if (!packed[i] || lens[i] > (1u << 30) || bound > (1u << 30)) {
                deflateEnd(&zs);
                hr_fail(packed[i] ? HR_EINVAL : HR_ENOMEM,
                        packed[i] ? "compressed npz members over 1 GiB are not supported; save uncompressed"
                                  : "out of memory deflating");
                goto done;
            }
            zs.next_in = (Bytef *)data[i];
            zs.avail_in = (uInt)lens[i];
            zs.next_out = packed[i];
            zs.avail_out = (uInt)bound;
            int ret = deflate(&zs, Z_FINISH);
            csize = zs.total_out;
            deflateEnd(&zs);
            if (ret != Z_STREAM_END) {
                hr_fail(HR_EINVAL, "zlib failed to deflate zip member %s", names[i]);
                goto done;
            }
            payload = packed[i];
            method = 8;
        }
        if (offset + 30 + nlen + csize > 0xFFFFFFFEu || lens[i] > 0xFFFFFFFEu) {
            hr_fail(HR_EINVAL, "%s would exceed 4 GiB: zip64 archives are not written (use safetensors)", what);
            goto done;
        }
        unsigned char *lh = headers[i] = malloc(30 + nlen);
        if (!lh) {
            hr_fail(HR_ENOMEM, "out of memory writing %s", what);
            goto done;
        }
        /* Fixed date (1980-01-01 00:00) keeps the archives byte-identical for equal inputs. A name
         * that is not ASCII sets flag bit 11 (the name is UTF-8), as numpy.savez's zipfile does:
         * readers take it for CP437 otherwise. */
        uint16_t flags = 0;
        for (size_t b = 0; b < nlen; b++)
            if ((unsigned char)names[i][b] >= 0x80) flags = 0x800;
        wr32(lh, SIG_LOCAL);
        wr16(lh + 4, 20);
        wr16(lh + 6, flags);
        wr16(lh + 8, method);
        wr16(lh + 10, 0);
        wr16(lh + 12, 0x21);
        wr32(lh + 14, crc);
        wr32(lh + 18, (uint32_t)csize);
        wr32(lh + 22, (uint32_t)lens[i]);
        wr16(lh + 26, (uint16_t)nlen);
        wr16(lh + 28, 0);
        memcpy(lh + 30, names[i], nlen);
        pieces[2 * i] = lh;
        plens[2 * i] = 30 + nlen;
        pieces[2 * i + 1] = payload;
        plens[2 * i + 1] = csize;

        unsigned char *c = cd + cdpos;
        wr32(c, SIG_CENTRAL);
        wr16(c + 4, 20);
        wr16(c + 6, 20);
        wr16(c + 8, flags);
        wr16(c + 10, method);
        wr16(c + 12, 0);
        wr16(c + 14, 0x21);
        wr32(c + 16, crc);
        wr32(c + 20, (uint32_t)csize);
        wr32(c + 24, (uint32_t)lens[i]);
        wr16(c + 28, (uint16_t)nlen);
        wr16(c + 30, 0);
        wr16(c + 32, 0);
        wr16(c + 34, 0);
        wr16(c + 36, 0);
        wr32(c + 38, 0);
        wr32(c + 42, (uint32_t)offset);
        memcpy(c + 46, names[i], nlen);
        cdpos += 46 + nlen;
        offset += 30 + nlen + csize;
    }
    if (offset + cd_len > 0xFFFFFFFEu) {
        hr_fail(HR_EINVAL, "%s would need zip64 records, which are not written (use safetensors)", what);
        goto done;
    }
    unsigned char *eo = cd + cdpos;
    wr32(eo, SIG_EOCD);
    wr16(eo + 4, 0);
    wr16(eo + 6, 0);
    wr16(eo + 8, (uint16_t)n);
    wr16(eo + 10, (uint16_t)n);
    wr32(eo + 12, (uint32_t)cd_len);
    wr32(eo + 16, (uint32_t)offset);
    wr16(eo + 20, 0);
    pieces[2 * n] = cd;
    plens[2 * n] = cd_len + 22;
    if (path)
        rc = hr_io_write_atomic(path, 2 * n + 1, pieces, plens);
    else
        rc = join_pieces(2 * n + 1, pieces, plens, out, outlen);
done:
    if (headers)
        for (size_t i = 0; i < n; i++) free(headers[i]);
    if (packed)
        for (size_t i = 0; i < n; i++) free(packed[i]);
    free(headers);
    free(packed);
    free(cd);
    free(pieces);
    free(plens);
    return rc;
}

int hr_zip_write(const char *path, size_t n, const char *const *names, const unsigned char *const *data,
                 const size_t *lens, bool compress)
{
    char what[64 + 1024];
    snprintf(what, sizeof what, "'%s'", path);
    return zip_assemble(what, path, n, names, data, lens, compress, NULL, NULL);
}

/* ------------------------------------------------------------------ .npz */

static bool is_zip(const unsigned char *b, size_t len)
{
    return len >= 4 && b[0] == 'P' && b[1] == 'K' && ((b[2] == 3 && b[3] == 4) || (b[2] == 5 && b[3] == 6));
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int hr_npz_parse(const void *buf, size_t len, const char *what, hr_tensor_list *out)
{
    hr_tensor_list_init(out);
    if (len == 0) return hr_fail(HR_EFORMAT, "%s: empty file", what);
    if (!is_zip(buf, len)) return hr_fail(HR_EFORMAT, "%s: not a zip archive (an .npz file is a zip of .npy members)", what);
    hr_zip z;
    if (hr_zip_open(&z, buf, len, what)) return -1;
    for (size_t i = 0; i < z.n; i++) {
        const char *name = z.entries[i].name;
        /* NumPy writes .npy members; a member named otherwise (a zip made by other tools) is read
         * under its own name when it holds an .npy image, as numpy.load does, and refused by name
         * otherwise rather than dropped */
        bool npy_name = ends_with(name, ".npy");
        if (ends_with(name, "/")) continue; /* a directory entry */
        unsigned char *m;
        size_t mlen;
        hr_tensor *t = NULL;
        if (hr_zip_extract(&z, i, &m, &mlen) == 0) {
            t = hr_npy_parse(m, mlen, name);
            free(m);
        }
        if (!t) {
            hr_error_prefix("%s", what);
            hr_zip_close(&z);
            hr_tensor_list_free(out);
            return -1;
        }
        size_t nl = strlen(name) - (npy_name ? 4 : 0);
        char *key = malloc(nl + 1);
        int rc = -1;
        if (key) {
            memcpy(key, name, nl);
            key[nl] = '\0';
            rc = hr_tensor_list_add(out, key, t);
            free(key);
        } else {
            hr_fail(HR_ENOMEM, "out of memory");
        }
        hr_tensor_release(t);
        if (rc) {
            hr_zip_close(&z);
            hr_tensor_list_free(out);
            return -1;
        }
    }
    hr_zip_close(&z);
    return 0;
}

int hr_npz_load(const char *path, hr_tensor_list *out)
{
    unsigned char *buf;
    size_t len;
    hr_tensor_list_init(out);
    if (hr_io_read_file(path, &buf, &len)) return -1;
    char what[512];
    snprintf(what, sizeof what, "'%s'", path);
    int rc = hr_npz_parse(buf, len, what, out);
    free(buf);
    return rc;
}

static int cmp_idx_name(const void *a, const void *b, void *names)
{
    char **nm = names;
    return strcmp(nm[*(const size_t *)a], nm[*(const size_t *)b]);
}

/* The .npz of the list (members in name order, or in the list's order with keep_order), written to
 * path or, when path is NULL, returned in *out / *outlen. */
static int npz_assemble(const char *path, const hr_tensor_list *in, bool compress, bool keep_order,
                        unsigned char **out, size_t *outlen)
{
    size_t n = in->n;
    size_t *order = calloc(n ? n : 1, sizeof *order);
    char **names = calloc(n ? n : 1, sizeof *names);
    unsigned char **images = calloc(n ? n : 1, sizeof *images);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    int rc = -1;
    if (!order || !names || !images || !lens) {
        hr_fail(HR_ENOMEM, "out of memory saving %s", path ? path : "an npz archive");
        goto done;
    }
    /* Members in name order: equal inputs give byte-identical archives (or in the caller's order,
     * as numpy.savez writes its keyword arguments) */
    for (size_t i = 0; i < n; i++) order[i] = i;
    if (!keep_order) qsort_r(order, n, sizeof *order, cmp_idx_name, in->names);
    for (size_t k = 0; k < n; k++) {
        size_t i = order[k];
        for (size_t j = 0; j < k; j++) {
            if (strcmp(in->names[order[j]], in->names[i]) == 0) {
                hr_fail(HR_EINVAL, "duplicate array name '%s'", in->names[i]);
                goto done;
            }
        }
        size_t nl = strlen(in->names[i]);
        names[k] = malloc(nl + 5);
        if (!names[k]) {
            hr_fail(HR_ENOMEM, "out of memory saving %s", path ? path : "an npz archive");
            goto done;
        }
        memcpy(names[k], in->names[i], nl);
        memcpy(names[k] + nl, ".npy", 5);
        if (hr_npy_encode(in->tensors[i], &images[k], &lens[k])) {
            hr_error_prefix("array '%s'", in->names[i]);
            goto done;
        }
    }
    if (path)
        rc = hr_zip_write(path, n, (const char *const *)names, (const unsigned char *const *)images, lens, compress);
    else
        rc = zip_assemble("an npz archive", NULL, n, (const char *const *)names, (const unsigned char *const *)images,
                          lens, compress, out, outlen);
done:
    if (names)
        for (size_t i = 0; i < n; i++) free(names[i]);
    if (images)
        for (size_t i = 0; i < n; i++) free(images[i]);
    free(order);
    free(names);
    free(images);
    free(lens);
    return rc;
}

int hr_npz_save(const char *path, const hr_tensor_list *in, bool compress, bool keep_order)
{
    return npz_assemble(path, in, compress, keep_order, NULL, NULL);
}

int hr_npz_encode(const hr_tensor_list *in, bool compress, bool keep_order, unsigned char **out, size_t *outlen)
{
    return npz_assemble(NULL, in, compress, keep_order, out, outlen);
}

/* ------------------------------------------------------------------ feature files */

static hr_tensor *features_from_npy(const unsigned char *b, size_t len, const char *member)
{
    hr_npy_header h;
    if (hr_npy_parse_header(b, len, member, &h)) return NULL;
    hr_dtype dt;
    if (!h.structured && strcmp(h.descr, "<f2") == 0) dt = HR_F16;
    else if (!h.structured && strcmp(h.descr, "<f4") == 0) dt = HR_F32;
    else if (!h.structured && strchr(h.descr, 'O'))
        return hr_fail_null(HR_EFORMAT, "unsupported dtype '%s' (object arrays need pickle; never unpickle)", h.descr);
    else
        return hr_fail_null(HR_EFORMAT, "unsupported dtype '%s' (only little-endian f2/f4 features are accepted)",
                            h.structured ? "structured" : h.descr);
    if (h.ndim != 2) return hr_fail_null(HR_EFORMAT, "features must be 2-D [n, d], got %d-D", h.ndim);
    return hr_npy_decode(b, len, &h, dt, member);
}

hr_tensor *hr_features_parse(const void *buf, size_t len, const char *path)
{
    const unsigned char *b = buf;
    hr_tensor *t = NULL;
    char what[512];
    snprintf(what, sizeof what, "'%s'", path);
    bool prefixed = false;
    if (len == 0) {
        hr_fail(HR_EFORMAT, "empty file");
    } else if (is_zip(b, len)) {
        hr_zip z;
        if (hr_zip_open(&z, b, len, what) == 0) {
            long i = hr_zip_find(&z, "features.npy");
            if (i < 0) {
                char names[256];
                size_t n = 0;
                names[0] = '\0';
                for (size_t k = 0; k < z.n && n + 1 < sizeof names; k++)
                    n += (size_t)snprintf(names + n, sizeof names - n, "%s%s", k ? ", " : "", z.entries[k].name);
                hr_fail(HR_EFORMAT, "no member 'features.npy' (the archive holds: %s)", z.n ? names : "nothing");
            } else {
                unsigned char *m;
                size_t mlen;
                if (hr_zip_extract(&z, (size_t)i, &m, &mlen) == 0) {
                    t = features_from_npy(m, mlen, "features.npy");
                    free(m);
                }
            }
            hr_zip_close(&z);
        } else {
            prefixed = true; /* hr_zip_open's messages already name the file */
        }
    } else if (b[0] == 0x93 || ends_with(path, ".npy")) {
        t = features_from_npy(b, len, NULL);
    } else {
        hr_fail(HR_EFORMAT, "not a zip / npy file (a feature file is an .npz archive or an .npy array)");
    }
    if (!t && !prefixed) hr_error_prefix("%s", what);
    return t;
}

hr_tensor *hr_features_load(const char *path)
{
    unsigned char *buf;
    size_t len;
    if (hr_io_read_file(path, &buf, &len)) return NULL;
    hr_tensor *t = hr_features_parse(buf, len, path);
    free(buf);
    return t;
}
