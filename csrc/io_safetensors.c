/*
 * io_safetensors.c — the safetensors format: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the data region, where every tensor owns [begin, end) and the tensors tile the region exactly.
 *
 * The JSON header is read by a small strict parser that accepts only this schema (no generic JSON
 * values), so a hostile header cannot make us build deep structures or allocate from lies.
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

#include "hr_cuda.h"
#include "hr_io.h"

/* ------------------------------------------------------------------ dtypes */

static const struct {
    const char *name;
    hr_dtype dt;
} st_dtypes[] = {
    {"F32", HR_F32}, {"F64", HR_F64}, {"BF16", HR_BF16}, {"F16", HR_F16},
    {"I64", HR_I64}, {"I32", HR_I32}, {"U8", HR_U8},     {"BOOL", HR_BOOL},
};
#define N_ST_DTYPES (sizeof st_dtypes / sizeof st_dtypes[0])

const char *hr_safetensors_dtype_name(hr_dtype dt)
{
    for (size_t i = 0; i < N_ST_DTYPES; i++)
        if (st_dtypes[i].dt == dt) return st_dtypes[i].name;
    return "?";
}

/* ------------------------------------------------------------------ UTF-8 */

/* True when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return false;
        if (i + len > n) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* ------------------------------------------------------------------ header parser */

typedef struct {
    char *name;
    hr_dtype dt;
    int ndim;
    int64_t shape[HR_MAX_DIMS];
    uint64_t begin, end;
} st_entry;

typedef struct {
    const char *s;
    size_t len, pos;
    const char *what;
} jparser;

static int jfail(jparser *p, const char *msg)
{
    return hr_fail(HR_EFORMAT, "%s: bad safetensors JSON header at byte %zu: %s", p->what, p->pos, msg);
}

static void jws(jparser *p)
{
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int jexpect(jparser *p, char c)
{
    jws(p);
    if (p->pos >= p->len) {
        char msg[48];
        snprintf(msg, sizeof msg, "expected '%c', got the end of the header", c);
        return jfail(p, msg);
    }
    if (p->s[p->pos] != c) {
        char msg[48];
        snprintf(msg, sizeof msg, "expected '%c', got '%c'", c, p->s[p->pos]);
        return jfail(p, msg);
    }
    p->pos++;
    return 0;
}

/* Next non-space char without consuming it (0 at the end). */
static char jpeek(jparser *p)
{
    jws(p);
    return p->pos < p->len ? p->s[p->pos] : 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_u4(jparser *p, uint32_t *out)
{
    if (p->pos + 4 > p->len) return jfail(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0) return jfail(p, "bad hex digit in \\u escape");
        v = v << 4 | (uint32_t)h;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

/* Parses a JSON string into a malloc'd, NUL-terminated UTF-8 string. */
static int jstring(jparser *p, char **out)
{
    *out = NULL;
    if (jexpect(p, '"')) return -1;
    /* The decoded string is never longer than its source. */
    size_t start = p->pos;
    size_t cap = 0;
    while (start + cap < p->len && p->s[start + cap] != '"') {
        if (p->s[start + cap] == '\\') cap++;
        cap++;
    }
    char *buf = malloc(cap + 1);
    if (!buf) return hr_fail(HR_ENOMEM, "out of memory parsing a safetensors header");
    size_t n = 0;
    for (;;) {
        if (p->pos >= p->len) {
            free(buf);
            return jfail(p, "unterminated string");
        }
        unsigned char c = (unsigned char)p->s[p->pos++];
        if (c == '"') break;
        if (c < 0x20) {
            free(buf);
            p->pos--;
            return jfail(p, "control character inside a string");
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            continue;
        }
        if (p->pos >= p->len) {
            free(buf);
            return jfail(p, "unterminated escape");
        }
        char e = p->s[p->pos++];
        uint32_t cp;
        switch (e) {
        case '"': buf[n++] = '"'; continue;
        case '\\': buf[n++] = '\\'; continue;
        case '/': buf[n++] = '/'; continue;
        case 'b': buf[n++] = '\b'; continue;
        case 'f': buf[n++] = '\f'; continue;
        case 'n': buf[n++] = '\n'; continue;
        case 'r': buf[n++] = '\r'; continue;
        case 't': buf[n++] = '\t'; continue;
        case 'u':
            if (read_u4(p, &cp)) { free(buf); return -1; }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (p->pos + 2 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    free(buf);
                    return jfail(p, "unpaired UTF-16 surrogate in \\u escape");
                }
                p->pos += 2;
                if (read_u4(p, &lo)) { free(buf); return -1; }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    free(buf);
                    return jfail(p, "unpaired UTF-16 surrogate in \\u escape");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                free(buf);
                return jfail(p, "unpaired UTF-16 surrogate in \\u escape");
            }
            if (cp == 0) {
                free(buf);
                return jfail(p, "\\u0000 (NUL) inside a string");
            }
            /* A 6-byte escape (or 12 for a pair) always decodes to at most 4 bytes. */
            if (cp < 0x80) buf[n++] = (char)cp;
            else if (cp < 0x800) {
                buf[n++] = (char)(0xC0 | cp >> 6);
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                buf[n++] = (char)(0xE0 | cp >> 12);
                buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                buf[n++] = (char)(0xF0 | cp >> 18);
                buf[n++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                buf[n++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                buf[n++] = (char)(0x80 | (cp & 0x3F));
            }
            continue;
        default:
            free(buf);
            p->pos--;
            return jfail(p, "unknown escape in string");
        }
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
}

/* A non-negative JSON integer (the only numbers this schema has). */
static int juint(jparser *p, uint64_t *out)
{
    jws(p);
    if (p->pos >= p->len) return jfail(p, "expected an integer, got the end of the header");
    if (p->s[p->pos] == '-') return jfail(p, "negative number where a size or offset is expected");
    if (p->s[p->pos] < '0' || p->s[p->pos] > '9') return jfail(p, "expected a non-negative integer");
    if (p->s[p->pos] == '0' && p->pos + 1 < p->len && p->s[p->pos + 1] >= '0' && p->s[p->pos + 1] <= '9')
        return jfail(p, "number with a leading zero");
    uint64_t v = 0;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        unsigned d = (unsigned)(p->s[p->pos] - '0');
        if (v > (UINT64_C(1) << 62) / 10) return jfail(p, "integer too large");
        v = v * 10 + d;
        p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == '.' || p->s[p->pos] == 'e' || p->s[p->pos] == 'E'))
        return jfail(p, "expected an integer, got a fractional number");
    *out = v;
    return 0;
}

/* [u, u, ...] with at most maxn entries. */
static int juint_array(jparser *p, uint64_t *vals, int maxn, int *n, const char *field)
{
    *n = 0;
    if (jexpect(p, '[')) return -1;
    if (jpeek(p) == ']') {
        p->pos++;
        return 0;
    }
    for (;;) {
        uint64_t v = 0;
        if (*n >= maxn) {
            char msg[96];
            snprintf(msg, sizeof msg, "'%s' has more than %d entries", field, maxn);
            return jfail(p, msg);
        }
        if (juint(p, &v)) return -1;
        vals[(*n)++] = v;
        char c = jpeek(p);
        if (c == ',') { p->pos++; continue; }
        if (c == ']') { p->pos++; return 0; }
        return jfail(p, "expected ',' or ']' in an array");
    }
}

static int parse_tensor_entry(jparser *p, st_entry *e)
{
    bool have_dtype = false, have_shape = false, have_offsets = false;
    if (jexpect(p, '{')) return -1;
    if (jpeek(p) == '}') {
        p->pos++;
        return hr_fail(HR_EFORMAT, "%s: tensor '%s' has no dtype, shape or data_offsets", p->what, e->name);
    }
    for (;;) {
        char *key;
        if (jstring(p, &key)) return -1;
        if (jexpect(p, ':')) { free(key); return -1; }
        if (strcmp(key, "dtype") == 0) {
            if (have_dtype) {
                free(key);
                return hr_fail(HR_EFORMAT, "%s: tensor '%s' has a duplicate key 'dtype'", p->what, e->name);
            }
            have_dtype = true;
            char *dt;
            if (jstring(p, &dt)) { free(key); return -1; }
            size_t i;
            for (i = 0; i < N_ST_DTYPES; i++)
                if (strcmp(dt, st_dtypes[i].name) == 0) break;
            if (i == N_ST_DTYPES) {
                hr_fail(HR_EFORMAT,
                        "%s: tensor '%s' has dtype %s, which hero does not support "
                        "(supported: F32 F64 BF16 F16 I64 I32 U8 BOOL)",
                        p->what, e->name, dt);
                free(dt);
                free(key);
                return -1;
            }
            free(dt);
            e->dt = st_dtypes[i].dt;
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape) {
                free(key);
                return hr_fail(HR_EFORMAT, "%s: tensor '%s' has a duplicate key 'shape'", p->what, e->name);
            }
            have_shape = true;
            uint64_t v[HR_MAX_DIMS] = {0};
            if (juint_array(p, v, HR_MAX_DIMS, &e->ndim, "shape")) { free(key); return -1; }
            for (int i = 0; i < e->ndim; i++) e->shape[i] = (int64_t)v[i];
        } else if (strcmp(key, "data_offsets") == 0) {
            if (have_offsets) {
                free(key);
                return hr_fail(HR_EFORMAT, "%s: tensor '%s' has a duplicate key 'data_offsets'", p->what, e->name);
            }
            have_offsets = true;
            uint64_t v[2] = {0, 0};
            int n;
            if (juint_array(p, v, 2, &n, "data_offsets")) { free(key); return -1; }
            if (n != 2) {
                free(key);
                return hr_fail(HR_EFORMAT, "%s: tensor '%s': data_offsets must be [begin, end]", p->what, e->name);
            }
            e->begin = v[0];
            e->end = v[1];
        } else {
            hr_fail(HR_EFORMAT, "%s: tensor '%s' has an unknown key '%s'", p->what, e->name, key);
            free(key);
            return -1;
        }
        free(key);
        char c = jpeek(p);
        if (c == ',') { p->pos++; continue; }
        if (c == '}') { p->pos++; break; }
        return jfail(p, "expected ',' or '}' in a tensor entry");
    }
    if (!have_dtype || !have_shape || !have_offsets)
        return hr_fail(HR_EFORMAT, "%s: tensor '%s' lacks '%s'", p->what, e->name,
                       !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Duplicate keys are found by sorting a copy of the key list: checking each new key against all the
 * earlier ones took quadratic time, minutes for a header of a few hundred thousand keys. */
static int check_metadata_unique(jparser *p, const hr_tensor_list *out)
{
    if (out->nmeta < 2) return 0;
    char **keys = malloc(out->nmeta * sizeof *keys);
    if (!keys) return hr_fail(HR_ENOMEM, "out of memory validating a safetensors header");
    memcpy(keys, out->meta_keys, out->nmeta * sizeof *keys);
    qsort(keys, out->nmeta, sizeof *keys, cmp_str_ptr);
    int rc = 0;
    for (size_t i = 1; i < out->nmeta && rc == 0; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0)
            rc = hr_fail(HR_EFORMAT, "%s: duplicate key '%s' in __metadata__", p->what, keys[i]);
    free(keys);
    return rc;
}

static int parse_metadata(jparser *p, hr_tensor_list *out)
{
    /* "__metadata__": null, which the safetensors library reads as no metadata */
    if (jpeek(p) == 'n') {
        if (p->len - p->pos >= 4 && memcmp(p->s + p->pos, "null", 4) == 0) {
            p->pos += 4;
            return 0;
        }
        return jfail(p, "expected '{' or null for __metadata__");
    }
    if (jexpect(p, '{')) return -1;
    if (jpeek(p) == '}') {
        p->pos++;
        return 0;
    }
    for (;;) {
        char *k, *v;
        if (jstring(p, &k)) return -1;
        if (jexpect(p, ':')) { free(k); return -1; }
        if (jpeek(p) != '"') {
            free(k);
            return jfail(p, "__metadata__ values must be strings");
        }
        if (jstring(p, &v)) { free(k); return -1; }
        int rc = hr_tensor_list_add_meta(out, k, v);
        free(k);
        free(v);
        if (rc) return -1;
        char c = jpeek(p);
        if (c == ',') { p->pos++; continue; }
        if (c == '}') {
            p->pos++;
            return check_metadata_unique(p, out);
        }
        return jfail(p, "expected ',' or '}' in __metadata__");
    }
}

static void free_entries(st_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) free(e[i].name);
    free(e);
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp((*(st_entry *const *)a)->name, (*(st_entry *const *)b)->name);
}

static int cmp_entry_offset(const void *a, const void *b)
{
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/*
 * Parses and validates the header of an image of `len` bytes whose first 8 + hlen bytes are at buf.
 * On success *entries holds *n validated entries (in header order) and metadata is in out.
 */
static int parse_header(const unsigned char *buf, size_t len, const char *what, hr_tensor_list *out,
                        st_entry **entries, size_t *n, size_t *data_start)
{
    *entries = NULL;
    *n = 0;
    if (len < 8)
        return hr_fail(HR_EFORMAT, "%s: file too small for a safetensors header (%zu bytes; the length prefix alone is 8)",
                       what, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > HR_SAFETENSORS_MAX_HEADER)
        return hr_fail(HR_EFORMAT, "%s: safetensors header length %" PRIu64 " exceeds the limit of %" PRIu64 " bytes",
                       what, hlen, HR_SAFETENSORS_MAX_HEADER);
    if (hlen > len - 8)
        return hr_fail(HR_EFORMAT, "%s: safetensors header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                       what, hlen, len);
    if (hlen < 2) return hr_fail(HR_EFORMAT, "%s: safetensors header of %" PRIu64 " bytes is too short", what, hlen);
    const char *hdr = (const char *)buf + 8;
    if (!utf8_valid((const unsigned char *)hdr, (size_t)hlen))
        return hr_fail(HR_EFORMAT, "%s: safetensors header is not valid UTF-8", what);
    size_t dstart = 8 + (size_t)hlen;
    uint64_t dlen = len - dstart;

    jparser p = {hdr, (size_t)hlen, 0, what};
    size_t cap = 0, cnt = 0;
    st_entry *es = NULL;
    bool have_meta = false;
    if (jexpect(&p, '{')) return -1;
    if (jpeek(&p) == '}') p.pos++;
    else {
        for (;;) {
            char *key;
            if (jstring(&p, &key)) goto fail;
            if (jexpect(&p, ':')) { free(key); goto fail; }
            if (strcmp(key, "__metadata__") == 0) {
                free(key);
                if (have_meta) {
                    hr_fail(HR_EFORMAT, "%s: duplicate key '__metadata__' in the safetensors header", what);
                    goto fail;
                }
                have_meta = true;
                if (parse_metadata(&p, out)) goto fail;
            } else {
                if (cnt == cap) {
                    size_t ncap = cap ? cap * 2 : 16;
                    st_entry *ne = realloc(es, ncap * sizeof *ne);
                    if (!ne) {
                        free(key);
                        hr_fail(HR_ENOMEM, "out of memory parsing a safetensors header");
                        goto fail;
                    }
                    es = ne;
                    cap = ncap;
                }
                memset(&es[cnt], 0, sizeof es[cnt]);
                es[cnt].name = key;
                cnt++;
                if (parse_tensor_entry(&p, &es[cnt - 1])) goto fail;
            }
            char c = jpeek(&p);
            if (c == ',') { p.pos++; continue; }
            if (c == '}') { p.pos++; break; }
            jfail(&p, "expected ',' or '}' after a top-level entry");
            goto fail;
        }
    }
    /* Writers pad the header with spaces to an 8-byte boundary; anything else is garbage. */
    jws(&p);
    if (p.pos != p.len) {
        jfail(&p, "trailing bytes after the JSON object");
        goto fail;
    }

    if (cnt > 0) {
        st_entry **order = malloc(cnt * sizeof *order);
        if (!order) {
            hr_fail(HR_ENOMEM, "out of memory validating a safetensors header");
            goto fail;
        }
        for (size_t i = 0; i < cnt; i++) order[i] = &es[i];
        qsort(order, cnt, sizeof *order, cmp_entry_name);
        for (size_t i = 1; i < cnt; i++)
            if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
                hr_fail(HR_EFORMAT, "%s: duplicate tensor name '%s' in the safetensors header", what, order[i]->name);
                free(order);
                goto fail;
            }
        /* Each extent must match its shape and dtype exactly ... */
        for (size_t i = 0; i < cnt; i++) {
            st_entry *e = &es[i];
            if (e->begin > e->end) {
                hr_fail(HR_EFORMAT, "%s: tensor '%s' has data_offsets [%" PRIu64 ", %" PRIu64 "] with begin > end", what,
                        e->name, e->begin, e->end);
                free(order);
                goto fail;
            }
            if (e->end > dlen) {
                hr_fail(HR_EFORMAT,
                        "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] run past the data region (%" PRIu64
                        " bytes)",
                        what, e->name, e->begin, e->end, dlen);
                free(order);
                goto fail;
            }
            uint64_t nbytes = hr_dtype_size(e->dt);
            char shp[160];
            shp[0] = '\0';
            for (int d = 0; d < e->ndim; d++) {
                size_t l = strlen(shp);
                snprintf(shp + l, sizeof shp - l, "%s%" PRId64, d ? ", " : "", e->shape[d]);
            }
            /* Bounded over the non-zero sizes: an empty tensor's other sizes still set its strides. */
            bool overflow = false, empty = false;
            for (int d = 0; d < e->ndim; d++) {
                uint64_t s = (uint64_t)e->shape[d];
                if (s == 0) empty = true;
                else if (nbytes > UINT64_MAX / 4 / s) overflow = true;
                else nbytes *= s;
            }
            if (empty) nbytes = 0;
            if (overflow) {
                hr_fail(HR_EFORMAT, "%s: tensor '%s': shape [%s] overflows the element count", what, e->name, shp);
                free(order);
                goto fail;
            }
            if (nbytes != e->end - e->begin) {
                hr_fail(HR_EFORMAT,
                        "%s: tensor '%s': shape [%s] of %s needs %" PRIu64 " bytes, but data_offsets [%" PRIu64
                        ", %" PRIu64 "] hold %" PRIu64,
                        what, e->name, shp, hr_safetensors_dtype_name(e->dt), nbytes, e->begin, e->end,
                        e->end - e->begin);
                free(order);
                goto fail;
            }
        }
        /* ... and the extents must tile the data region: no overlap, no gap, nothing left over. */
        qsort(order, cnt, sizeof *order, cmp_entry_offset);
        uint64_t pos = 0;
        const st_entry *prev = NULL;
        for (size_t i = 0; i < cnt; i++) {
            const st_entry *e = order[i];
            if (e->begin < pos) {
                hr_fail(HR_EFORMAT,
                        "%s: tensor '%s' data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor '%s' [%" PRIu64
                        ", %" PRIu64 "]",
                        what, e->name, e->begin, e->end, prev->name, prev->begin, prev->end);
                free(order);
                goto fail;
            }
            if (e->begin > pos) {
                hr_fail(HR_EFORMAT, "%s: gap in the data region: bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor",
                        what, pos, e->begin);
                free(order);
                goto fail;
            }
            pos = e->end;
            prev = e;
        }
        free(order);
        if (pos != dlen) {
            hr_fail(HR_EFORMAT, "%s: the tensors cover %" PRIu64 " bytes but the data region holds %" PRIu64
                    " (trailing bytes belong to no tensor)", what, pos, dlen);
            goto fail;
        }
    } else if (dlen != 0) {
        hr_fail(HR_EFORMAT, "%s: the header lists no tensors but %" PRIu64 " data bytes follow", what, dlen);
        goto fail;
    }
    *entries = es;
    *n = cnt;
    *data_start = dstart;
    return 0;
fail:
    free_entries(es, cnt);
    return -1;
}

static int check_bool_bytes(const unsigned char *d, size_t n, const char *what, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (d[i] > 1)
            return hr_fail(HR_EFORMAT, "%s: tensor '%s': BOOL element %zu holds byte %u (must be 0 or 1)", what, name, i,
                           d[i]);
    return 0;
}

/* Copies an entry's bytes into a new heap tensor. */
static hr_tensor *copy_entry(const unsigned char *data, const st_entry *e)
{
    hr_tensor *t = hr_tensor_empty(e->ndim, e->shape, e->dt, hr_cpu());
    if (!t) return NULL;
    if (e->end > e->begin) memcpy(hr_tensor_data(t), data + e->begin, (size_t)(e->end - e->begin));
    return t;
}

/*
 * Builds the tensors from a validated image. When `map` is given (the storage covering the whole
 * image), aligned tensors become views of it; the rest are copied.
 */
static int materialise(const unsigned char *img, size_t dstart, st_entry *es, size_t n, hr_storage *map,
                       const char *what, hr_tensor_list *out)
{
    const unsigned char *data = img + dstart;
    for (size_t i = 0; i < n; i++) {
        const st_entry *e = &es[i];
        size_t esz = hr_dtype_size(e->dt);
        if (e->dt == HR_BOOL && check_bool_bytes(data + e->begin, (size_t)(e->end - e->begin), what, e->name))
            return -1;
        hr_tensor *t;
        size_t byte_off = dstart + (size_t)e->begin;
        if (map && byte_off % esz == 0) {
            int64_t stride[HR_MAX_DIMS];
            hr_contiguous_strides(e->ndim, e->shape, stride);
            t = hr_tensor_view_of(map, e->dt, e->ndim, e->shape, stride, (int64_t)(byte_off / esz));
        } else {
            t = copy_entry(data, e);
        }
        if (!t) {
            hr_error_prefix("%s: tensor '%s'", what, e->name);
            return -1;
        }
        int rc = hr_tensor_list_add(out, e->name, t);
        hr_tensor_release(t);
        if (rc) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ checksums */

static int parse_hex8(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* Compares each tensor's bytes with the CRC-32 list hero's writer stores under HR_SAFETENSORS_CRC_KEY
 * (8 lowercase hex digits per tensor, in name order, space-separated). */
static int verify_crcs(const unsigned char *data, st_entry *es, size_t n, const char *list, const char *what)
{
    st_entry **order = malloc((n ? n : 1) * sizeof *order);
    if (!order) return hr_fail(HR_ENOMEM, "%s: out of memory checking the tensors' CRC-32", what);
    for (size_t i = 0; i < n; i++) order[i] = &es[i];
    qsort(order, n, sizeof *order, cmp_entry_name);
    int rc = 0;
    size_t len = strlen(list);
    if (n == 0 ? len != 0 : len != 9 * n - 1) {
        rc = hr_fail(HR_EFORMAT, "%s: the '%s' metadata holds %zu characters, not the %zu of %zu CRC-32 values", what,
                     HR_SAFETENSORS_CRC_KEY, len, n ? 9 * n - 1 : 0, n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const st_entry *e = order[i];
        const char *field = list + 9 * i;
        uint32_t stored;
        if (parse_hex8(field, &stored) || (i + 1 < n && field[8] != ' ')) {
            rc = hr_fail(HR_EFORMAT, "%s: the '%s' metadata is malformed at value %zu (8 hex digits each, separated by "
                         "spaces)", what, HR_SAFETENSORS_CRC_KEY, i + 1);
            goto done;
        }
        uint32_t read = hr_crc32(data + e->begin, (size_t)(e->end - e->begin));
        if (read != stored) {
            rc = hr_fail(HR_EFORMAT, "%s: tensor '%s' does not match the CRC-32 its writer stored (stored %08" PRIx32
                         ", read %08" PRIx32 "): the file is damaged, or another program changed its data and kept "
                         "hero's metadata; {verify = false} loads it unchecked", what, e->name, stored, read);
            goto done;
        }
    }
done:
    free(order);
    return rc;
}

/* Checks the tensors against the stored CRC-32 list when there is one and `verify` asks for it, and
 * takes the list out of the metadata: it describes the file, not its content. */
static int check_and_drop_crcs(const unsigned char *data, st_entry *es, size_t n, hr_tensor_list *out, bool verify,
                               const char *what)
{
    for (size_t k = 0; k < out->nmeta; k++) {
        if (strcmp(out->meta_keys[k], HR_SAFETENSORS_CRC_KEY) != 0) continue;
        if (verify && verify_crcs(data, es, n, out->meta_vals[k], what)) return -1;
        free(out->meta_keys[k]);
        free(out->meta_vals[k]);
        memmove(out->meta_keys + k, out->meta_keys + k + 1, (out->nmeta - k - 1) * sizeof *out->meta_keys);
        memmove(out->meta_vals + k, out->meta_vals + k + 1, (out->nmeta - k - 1) * sizeof *out->meta_vals);
        out->nmeta--;
        return 0;
    }
    return 0;
}

static int parse_image(const void *buf, size_t len, const char *what, hr_tensor_list *out, bool verify)
{
    st_entry *es;
    size_t n = 0, dstart = 0;
    hr_tensor_list_init(out);
    if (parse_header(buf, len, what, out, &es, &n, &dstart)) {
        hr_tensor_list_free(out);
        return -1;
    }
    int rc = check_and_drop_crcs((const unsigned char *)buf + dstart, es, n, out, verify, what);
    if (rc == 0) rc = materialise(buf, dstart, es, n, NULL, what, out);
    free_entries(es, n);
    if (rc) hr_tensor_list_free(out);
    return rc;
}

int hr_safetensors_parse(const void *buf, size_t len, const char *what, hr_tensor_list *out)
{
    return parse_image(buf, len, what, out, true);
}

int hr_safetensors_load(const char *path, hr_tensor_list *out, bool use_mmap, bool verify)
{
    char what[512];
    snprintf(what, sizeof what, "'%s'", path);
    hr_tensor_list_init(out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO is refused below, not waited on */
    if (fd < 0) {
        if (errno == ENOENT) return hr_fail(HR_EIO, "no such file: '%s'", path);
        return hr_fail(HR_EIO, "cannot open '%s': %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return hr_fail(HR_EIO, "'%s' is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return hr_fail(HR_EFORMAT, "%s: file too small for a safetensors header (%zu bytes; the length prefix alone is 8)",
                       what, size);
    }
    hr_storage *map;
    void *base;
    if (!use_mmap) {
        /* The file read into one buffer the tensors view: nothing refers to the file afterwards, so
         * rewriting it in place (cp over it) cannot change or fault the loaded tensors. */
        map = hr_storage_new(size, hr_cpu());
        if (!map) {
            close(fd);
            return -1;
        }
        base = map->data;
        size_t got = 0;
        while (got < size) {
            ssize_t r = read(fd, (char *)base + got, size - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                int e = errno;
                close(fd);
                hr_storage_release(map);
                return hr_fail(HR_EIO, "%s: read failed after %zu of %zu bytes: %s", what, got, size,
                               r == 0 ? "the file shrank while being read" : strerror(e));
            }
            got += (size_t)r;
        }
        close(fd);
        goto parse;
    }
    /* A private writable mapping: tensors can be modified in place (copy-on-write) without ever
     * touching the file. */
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
        /* Some file systems cannot map files: read the bytes instead. */
        unsigned char *buf;
        size_t len;
        if (hr_io_read_file(path, &buf, &len)) return -1;
        int rc = parse_image(buf, len, what, out, verify);
        free(buf);
        return rc;
    }
    map = hr_storage_new_mmap(base, size, base, size);
    if (!map) {
        munmap(base, size);
        return -1;
    }
parse:;
    st_entry *es;
    size_t n = 0, dstart = 0;
    int rc = parse_header(base, size, what, out, &es, &n, &dstart);
    if (rc == 0) {
        rc = check_and_drop_crcs((const unsigned char *)base + dstart, es, n, out, verify, what);
        if (rc == 0) rc = materialise(base, dstart, es, n, map, what, out);
        free_entries(es, n);
    }
    /* Tensors that view the mapping hold references; the mapping goes away with the last one. */
    hr_storage_release(map);
    if (rc) hr_tensor_list_free(out);
    return rc;
}

/* ------------------------------------------------------------------ writing */

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_json_string(sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"') sb_add(b, "\\\"", 2);
        else if (*c == '\\') sb_add(b, "\\\\", 2);
        else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            sb_add(b, esc, 6);
        } else sb_add(b, (const char *)c, 1);
    }
    sb_add(b, "\"", 1);
}

typedef struct {
    const char *name;
    hr_tensor *t; /* contiguous (owned reference) */
    size_t nbytes;
    uint64_t begin;
} wr_item;

static int cmp_item_name(const void *a, const void *b)
{
    return strcmp(((const wr_item *)a)->name, ((const wr_item *)b)->name);
}

/* Data layout: widest elements first so every tensor stays aligned for zero-copy loads. */
static int cmp_item_layout(const void *a, const void *b)
{
    const wr_item *x = *(wr_item *const *)a, *y = *(wr_item *const *)b;
    size_t ex = hr_dtype_size(x->t->dtype), ey = hr_dtype_size(y->t->dtype);
    if (ex != ey) return ex > ey ? -1 : 1;
    return strcmp(x->name, y->name);
}

int hr_safetensors_save(const char *path, const hr_tensor_list *in)
{
    size_t n = in->n;
    for (size_t i = 0; i < in->nmeta; i++) {
        if (!utf8_valid((const unsigned char *)in->meta_keys[i], strlen(in->meta_keys[i])) ||
            !utf8_valid((const unsigned char *)in->meta_vals[i], strlen(in->meta_vals[i])))
            return hr_fail(HR_EINVAL, "metadata entry '%s' is not valid UTF-8", in->meta_keys[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(in->meta_keys[i], in->meta_keys[j]) == 0)
                return hr_fail(HR_EINVAL, "duplicate metadata key '%s'", in->meta_keys[i]);
        if (strcmp(in->meta_keys[i], HR_SAFETENSORS_CRC_KEY) == 0)
            return hr_fail(HR_EINVAL, "metadata key '%s' is reserved: the writer stores the tensors' checksums under it",
                           HR_SAFETENSORS_CRC_KEY);
    }
    wr_item *items = calloc(n ? n : 1, sizeof *items);
    wr_item **layout = calloc(n ? n : 1, sizeof *layout);
    const void **pieces = calloc(n + 2, sizeof *pieces);
    size_t *lens = calloc(n + 2, sizeof *lens);
    /* the metadata, the CRC-32 list included, in key order */
    const char **mkeys = calloc(in->nmeta + 1, sizeof *mkeys), **mvals = calloc(in->nmeta + 1, sizeof *mvals);
    char *crcs = malloc(9 * n + 1);
    sbuf hb = {0};
    int rc = -1;
    if (!items || !layout || !pieces || !lens || !mkeys || !mvals || !crcs) {
        hr_fail(HR_ENOMEM, "out of memory saving '%s'", path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        hr_tensor *t = in->tensors[i];
        const char *name = in->names[i];
        char what[64];
        snprintf(what, sizeof what, "tensor '%.40s'", name);
        if (hr_tensor_check_live(t, what)) goto done;
        bool on_device = hr_tensor_device(t).type != HR_CPU;
        if (on_device && !hr_cuda_compiled()) {
            char dev[16];
            hr_fail(HR_EDEVICE, "tensor '%s' is on %s: saving needs the CUDA backend to copy it to the CPU first", name,
                    hr_device_str(hr_tensor_device(t), dev, sizeof dev));
            goto done;
        }
        if (strcmp(name, "__metadata__") == 0) {
            hr_fail(HR_EINVAL, "'__metadata__' is reserved and cannot name a tensor");
            goto done;
        }
        if (!utf8_valid((const unsigned char *)name, strlen(name))) {
            hr_fail(HR_EINVAL, "tensor name '%s' is not valid UTF-8", name);
            goto done;
        }
        items[i].name = name;
        if (on_device) { /* written from a host copy */
            items[i].t = hr_tensor_empty(t->ndim, t->size, t->dtype, hr_cpu());
            if (items[i].t && hr_copy_(items[i].t, t)) {
                hr_tensor_release(items[i].t);
                items[i].t = NULL;
            }
        } else {
            items[i].t = hr_contiguous(t);
        }
        if (!items[i].t) goto done;
        items[i].nbytes = (size_t)hr_tensor_numel(t) * hr_dtype_size(t->dtype);
    }
    qsort(items, n, sizeof *items, cmp_item_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(items[i - 1].name, items[i].name) == 0) {
            hr_fail(HR_EINVAL, "duplicate tensor name '%s'", items[i].name);
            goto done;
        }
    for (size_t i = 0; i < n; i++) layout[i] = &items[i];
    qsort(layout, n, sizeof *layout, cmp_item_layout);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        layout[i]->begin = off;
        off += layout[i]->nbytes;
    }

    /* Each tensor's CRC-32, in name order: loaders find a damaged byte instead of reading it. */
    crcs[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(crcs + 9 * i, 10, "%08" PRIx32 "%s", hr_crc32(hr_tensor_data(items[i].t), items[i].nbytes),
                 i + 1 < n ? " " : "");
    size_t nmeta = 0;
    for (size_t i = 0; i < in->nmeta; i++) {
        mkeys[nmeta] = in->meta_keys[i];
        mvals[nmeta++] = in->meta_vals[i];
    }
    if (n > 0) {
        mkeys[nmeta] = HR_SAFETENSORS_CRC_KEY;
        mvals[nmeta++] = crcs;
    }
    /* Metadata keys sorted too, for byte-identical files from equal inputs. */
    for (size_t i = 1; i < nmeta; i++)
        for (size_t j = i; j > 0 && strcmp(mkeys[j - 1], mkeys[j]) > 0; j--) {
            const char *k = mkeys[j], *v = mvals[j];
            mkeys[j] = mkeys[j - 1];
            mvals[j] = mvals[j - 1];
            mkeys[j - 1] = k;
            mvals[j - 1] = v;
        }
    sb_str(&hb, "{");
    bool first = true;
    if (nmeta > 0) {
        sb_str(&hb, "\"__metadata__\":{");
        for (size_t i = 0; i < nmeta; i++) {
            if (i) sb_str(&hb, ",");
            sb_json_string(&hb, mkeys[i]);
            sb_str(&hb, ":");
            sb_json_string(&hb, mvals[i]);
        }
        sb_str(&hb, "}");
        first = false;
    }
    for (size_t i = 0; i < n; i++) {
        const wr_item *it = &items[i];
        char num[64];
        if (!first) sb_str(&hb, ",");
        first = false;
        sb_json_string(&hb, it->name);
        sb_str(&hb, ":{\"dtype\":\"");
        sb_str(&hb, hr_safetensors_dtype_name(it->t->dtype));
        sb_str(&hb, "\",\"shape\":[");
        for (int d = 0; d < it->t->ndim; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", it->t->size[d]);
            sb_str(&hb, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", it->begin,
                 it->begin + it->nbytes);
        sb_str(&hb, num);
    }
    sb_str(&hb, "}");
    while ((hb.n + 8) % 8 != 0) sb_str(&hb, " ");
    if (hb.oom) {
        hr_fail(HR_ENOMEM, "out of memory building the header of '%s'", path);
        goto done;
    }
    unsigned char prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)hb.n >> (8 * i));
    pieces[0] = prefix;
    lens[0] = 8;
    pieces[1] = hb.p;
    lens[1] = hb.n;
    for (size_t i = 0; i < n; i++) {
        pieces[2 + i] = hr_tensor_data(layout[i]->t);
        lens[2 + i] = layout[i]->nbytes;
    }
    rc = hr_io_write_atomic(path, n + 2, pieces, lens);
done:
    if (items)
        for (size_t i = 0; i < n; i++) hr_tensor_release(items[i].t);
    free(items);
    free(layout);
    free(pieces);
    free(lens);
    free(mkeys);
    free(mvals);
    free(crcs);
    free(hb.p);
    return rc;
}
