/*
 * io_npy.c — NumPy's .npy format: "\x93NUMPY", major, minor, header length (u16 for 1.0, u32 for
 * 2.0/3.0), then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 * padded with spaces and a newline, then the raw array bytes.
 *
 * The dict is read by a strict parser of exactly that literal (never by evaluating anything), and
 * object dtypes are refused: their payload is a pickle, which we never unpickle.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_io.h"

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6

/* "zip member x: " or "" (for messages that are not otherwise about the member). */
static const char *member_prefix(const char *member, char *buf, size_t cap)
{
    if (!member) buf[0] = '\0';
    else snprintf(buf, cap, "zip member %s: ", member);
    return buf;
}

typedef struct {
    const char *s;
    size_t len, pos;
    const char *member;
} pyparser;

static int pfail(pyparser *p, const char *msg)
{
    char pre[300];
    return hr_fail(HR_EFORMAT, "%sunparseable .npy header (%s at byte %zu of the header)",
                   member_prefix(p->member, pre, sizeof pre), msg, p->pos);
}

static void pws(pyparser *p)
{
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' ||
                               p->s[p->pos] == '\r'))
        p->pos++;
}

static char ppeek(pyparser *p)
{
    pws(p);
    return p->pos < p->len ? p->s[p->pos] : 0;
}

static int pexpect(pyparser *p, char c)
{
    if (ppeek(p) != c) {
        char msg[40];
        if (p->pos >= p->len) snprintf(msg, sizeof msg, "expected '%c', got the end", c);
        else snprintf(msg, sizeof msg, "expected '%c'", c);
        return pfail(p, msg);
    }
    p->pos++;
    return 0;
}

/* A quoted Python string without escapes (numpy never writes any in these headers). */
static int pstring(pyparser *p, char *out, size_t cap, bool *too_long)
{
    char q = ppeek(p);
    if (q != '\'' && q != '"') return pfail(p, "expected a quoted string");
    p->pos++;
    size_t n = 0;
    *too_long = false;
    while (p->pos < p->len && p->s[p->pos] != q) {
        char c = p->s[p->pos];
        if (c == '\\' || c == '\n' || (unsigned char)c < 0x20) return pfail(p, "unexpected character in a string");
        if (n + 1 < cap) out[n++] = c;
        else *too_long = true;
        p->pos++;
    }
    if (p->pos >= p->len) return pfail(p, "unterminated string");
    p->pos++;
    out[n] = '\0';
    return 0;
}

/* Skips a bracketed value (a structured descr list) honouring quotes. */
static int pskip_list(pyparser *p)
{
    int depth = 0;
    while (p->pos < p->len) {
        char c = p->s[p->pos++];
        if (c == '[' || c == '(') depth++;
        else if (c == ']' || c == ')') {
            if (--depth == 0) return 0;
        } else if (c == '\'' || c == '"') {
            while (p->pos < p->len && p->s[p->pos] != c) p->pos++;
            if (p->pos >= p->len) break;
            p->pos++;
        }
    }
    return pfail(p, "unterminated list");
}

static int pshape(pyparser *p, hr_npy_header *h)
{
    if (pexpect(p, '(')) return -1;
    h->ndim = 0;
    if (ppeek(p) == ')') {
        p->pos++;
        return 0;
    }
    for (;;) {
        pws(p);
        if (p->pos >= p->len || p->s[p->pos] < '0' || p->s[p->pos] > '9')
            return pfail(p, "expected a non-negative integer in 'shape'");
        uint64_t v = 0;
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            if (v > (UINT64_C(1) << 62) / 10) return pfail(p, "dimension too large in 'shape'");
            v = v * 10 + (uint64_t)(p->s[p->pos] - '0');
            p->pos++;
        }
        /* Python 2 wrote long integers with an L suffix. */
        if (p->pos < p->len && p->s[p->pos] == 'L') p->pos++;
        if (h->ndim >= HR_MAX_DIMS) {
            char pre[300];
            return hr_fail(HR_EFORMAT, "%s.npy array has more than %d dimensions (hero supports at most %d)",
                           member_prefix(p->member, pre, sizeof pre), HR_MAX_DIMS, HR_MAX_DIMS);
        }
        h->shape[h->ndim++] = (int64_t)v;
        char c = ppeek(p);
        if (c == ',') {
            p->pos++;
            if (ppeek(p) == ')') {
                p->pos++;
                return 0;
            }
            continue;
        }
        if (c == ')') {
            /* "(5)" is an int in Python, not a tuple. */
            if (h->ndim == 1) return pfail(p, "1-element shape without a trailing comma");
            p->pos++;
            return 0;
        }
        return pfail(p, "expected ',' or ')' in 'shape'");
    }
}

int hr_npy_parse_header(const void *buf, size_t len, const char *member, hr_npy_header *h)
{
    const unsigned char *b = buf;
    char pre[300];
    memset(h, 0, sizeof *h);
    if (len < NPY_MAGIC_LEN || memcmp(b, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        if (member) return hr_fail(HR_EFORMAT, "bad .npy magic string (inside zip member %s)", member);
        return hr_fail(HR_EFORMAT, "bad .npy magic string (expected \\x93NUMPY)");
    }
    member_prefix(member, pre, sizeof pre);
    if (len < 10) return hr_fail(HR_EFORMAT, "%struncated .npy header (%zu bytes)", pre, len);
    int major = b[6], minor = b[7];
    size_t hlen, start;
    if (major == 1 && minor == 0) {
        hlen = (size_t)b[8] | (size_t)b[9] << 8;
        start = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (len < 12) return hr_fail(HR_EFORMAT, "%struncated .npy header (%zu bytes)", pre, len);
        hlen = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        start = 12;
    } else {
        return hr_fail(HR_EFORMAT, "%sunsupported .npy format version %d.%d (hero reads 1.0, 2.0 and 3.0)",
                       pre, major, minor);
    }
    if (hlen > len - start)
        return hr_fail(HR_EFORMAT, "%sunparseable .npy header (header length %zu runs past the end: %zu bytes follow)",
                       pre, hlen, len - start);
    h->version = major;
    h->data_offset = start + hlen;

    pyparser p = {(const char *)b + start, hlen, 0, member};
    bool have_descr = false, have_fortran = false, have_shape = false;
    if (pexpect(&p, '{')) return -1;
    for (;;) {
        if (ppeek(&p) == '}') {
            p.pos++;
            break;
        }
        char key[32];
        bool too_long;
        if (pstring(&p, key, sizeof key, &too_long)) return -1;
        if (pexpect(&p, ':')) return -1;
        if (!too_long && strcmp(key, "descr") == 0) {
            if (have_descr) return pfail(&p, "duplicate key 'descr'");
            have_descr = true;
            if (ppeek(&p) == '[') {
                h->structured = true;
                if (pskip_list(&p)) return -1;
            } else {
                if (pstring(&p, h->descr, sizeof h->descr, &too_long)) return -1;
                if (too_long) return pfail(&p, "'descr' string too long");
            }
        } else if (!too_long && strcmp(key, "fortran_order") == 0) {
            if (have_fortran) return pfail(&p, "duplicate key 'fortran_order'");
            have_fortran = true;
            pws(&p);
            if (p.len - p.pos >= 4 && memcmp(p.s + p.pos, "True", 4) == 0) {
                h->fortran_order = true;
                p.pos += 4;
            } else if (p.len - p.pos >= 5 && memcmp(p.s + p.pos, "False", 5) == 0) {
                h->fortran_order = false;
                p.pos += 5;
            } else {
                return pfail(&p, "'fortran_order' must be True or False");
            }
        } else if (!too_long && strcmp(key, "shape") == 0) {
            if (have_shape) return pfail(&p, "duplicate key 'shape'");
            have_shape = true;
            if (pshape(&p, h)) return -1;
        } else {
            return pfail(&p, "unknown key in the header dict");
        }
        char c = ppeek(&p);
        if (c == ',') {
            p.pos++;
            continue;
        }
        if (c == '}') {
            p.pos++;
            break;
        }
        return pfail(&p, "expected ',' or '}'");
    }
    pws(&p);
    if (p.pos != p.len) return pfail(&p, "trailing characters after the header dict");
    if (!have_descr || !have_fortran || !have_shape)
        return pfail(&p, !have_descr ? "missing key 'descr'" : !have_fortran ? "missing key 'fortran_order'"
                                                                              : "missing key 'shape'");
    return 0;
}

static const struct {
    const char *descr;
    hr_dtype dt;
} npy_dtypes[] = {
    {"<f2", HR_F16}, {"<f4", HR_F32}, {"<f8", HR_F64}, {"<i8", HR_I64}, {"<i4", HR_I32},
    {"|u1", HR_U8},  {"<u1", HR_U8},  {">u1", HR_U8},  {"|b1", HR_BOOL},
};

int hr_npy_dtype(const hr_npy_header *h, const char *member, hr_dtype *out)
{
    char pre[300];
    member_prefix(member, pre, sizeof pre);
    if (h->structured)
        return hr_fail(HR_EFORMAT, "%sunsupported dtype (structured / record arrays are not supported)", pre);
    for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
        if (strcmp(h->descr, npy_dtypes[i].descr) == 0) {
            *out = npy_dtypes[i].dt;
            return 0;
        }
    if (strchr(h->descr, 'O'))
        return hr_fail(HR_EFORMAT, "%sunsupported dtype '%s' (object arrays need pickle; never unpickle)", pre, h->descr);
    if (h->descr[0] == '>')
        return hr_fail(HR_EFORMAT, "%sunsupported dtype '%s' (big-endian arrays are not supported; save little-endian)",
                       pre, h->descr);
    return hr_fail(HR_EFORMAT, "%sunsupported dtype '%s' (hero reads <f2 <f4 <f8 <i8 <i4 |u1 |b1)", pre, h->descr);
}

/* "(100,8)", "(5,)" or "()" — the shape as a Python tuple, for messages. */
static void shape_tuple(const hr_npy_header *h, char *buf, size_t cap)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "(");
    for (int i = 0; i < h->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? "," : "", h->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, h->ndim == 1 ? ",)" : ")");
}

hr_tensor *hr_npy_decode(const void *buf, size_t len, const hr_npy_header *h, hr_dtype dt, const char *member)
{
    char pre[300], shp[200];
    member_prefix(member, pre, sizeof pre);
    shape_tuple(h, shp, sizeof shp);
    size_t esz = hr_dtype_size(dt);
    /* Bounded over the non-zero sizes: an empty array's other sizes still set its strides. */
    uint64_t need = esz;
    bool empty = false;
    for (int i = 0; i < h->ndim; i++) {
        uint64_t s = (uint64_t)h->shape[i];
        if (s == 0) {
            empty = true;
            continue;
        }
        if (need > (UINT64_MAX / 4) / s)
            return hr_fail_null(HR_EFORMAT, "%sheader shape %s overflows the element count", pre, shp);
        need *= s;
    }
    if (empty) need = 0;
    size_t avail = len - h->data_offset;
    if (need > avail) {
        char holder[300];
        if (member) snprintf(holder, sizeof holder, "zip member %s", member);
        else snprintf(holder, sizeof holder, "file");
        return hr_fail_null(HR_EFORMAT,
                            "header shape %s needs %" PRIu64 " bytes, %s holds %zu (header shape larger than the "
                            "stored data)",
                            shp, need, holder, avail);
    }
    if (need < avail)
        return hr_fail_null(HR_EFORMAT, "%sheader shape %s needs %" PRIu64 " bytes, but %zu bytes of data follow", pre,
                            shp, need, avail);
    const unsigned char *data = (const unsigned char *)buf + h->data_offset;
    int64_t size[HR_MAX_DIMS];
    /* Fortran order: the bytes are the transpose laid out row-major; read them as the reversed
     * shape, then permute back and make the result row-major. */
    for (int i = 0; i < h->ndim; i++) size[i] = h->fortran_order ? h->shape[h->ndim - 1 - i] : h->shape[i];
    hr_tensor *t = hr_tensor_empty(h->ndim, size, dt, hr_cpu());
    if (!t) return NULL;
    if (need) memcpy(hr_tensor_data(t), data, (size_t)need);
    if (dt == HR_BOOL) {
        /* NumPy treats any non-zero byte as True; hero's bools are 0/1. */
        unsigned char *d = hr_tensor_data(t);
        for (uint64_t i = 0; i < need; i++) d[i] = d[i] != 0;
    }
    if (h->fortran_order && h->ndim > 1) {
        int perm[HR_MAX_DIMS];
        for (int i = 0; i < h->ndim; i++) perm[i] = h->ndim - 1 - i;
        hr_tensor *v = hr_view_permute(t, perm);
        hr_tensor_release(t);
        if (!v) return NULL;
        hr_tensor *c = hr_cast(v, dt); /* a contiguous row-major copy */
        hr_tensor_release(v);
        return c;
    }
    return t;
}

hr_tensor *hr_npy_parse(const void *buf, size_t len, const char *member)
{
    hr_npy_header h;
    hr_dtype dt;
    if (hr_npy_parse_header(buf, len, member, &h)) return NULL;
    if (hr_npy_dtype(&h, member, &dt)) return NULL;
    return hr_npy_decode(buf, len, &h, dt, member);
}

static const char *npy_descr(hr_dtype dt)
{
    switch (dt) {
    case HR_F32: return "<f4";
    case HR_F64: return "<f8";
    case HR_F16: return "<f2";
    case HR_I64: return "<i8";
    case HR_I32: return "<i4";
    case HR_U8: return "|u1";
    case HR_BOOL: return "|b1";
    default: return NULL;
    }
}

int hr_npy_encode(const hr_tensor *t, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (hr_tensor_check_live(t, "tensor")) return -1;
    const char *descr = npy_descr(t->dtype);
    if (!descr)
        return hr_fail(HR_EINVAL, "%s has no NumPy dtype (cast to f32 first, or use safetensors)",
                       hr_dtype_name(t->dtype));
    char dict[400];
    size_t n = (size_t)snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < t->ndim; i++)
        n += (size_t)snprintf(dict + n, sizeof dict - n, "%s%" PRId64, i ? ", " : "", t->size[i]);
    n += (size_t)snprintf(dict + n, sizeof dict - n, "%s), }", t->ndim == 1 ? "," : "");
    /* Pad with spaces and end with '\n' so the data starts on a 64-byte boundary, like NumPy. */
    size_t prefix = 10;
    size_t hlen = (prefix + n + 1 + 63) / 64 * 64 - prefix;
    int major = 1;
    if (hlen > 65535) {
        prefix = 12;
        hlen = (prefix + n + 1 + 63) / 64 * 64 - prefix;
        major = 2;
    }
    hr_tensor *c = hr_host_contiguous(t); /* a CUDA tensor is written from a host copy */
    if (!c) return -1;
    size_t nbytes = (size_t)hr_tensor_numel(c) * hr_dtype_size(c->dtype);
    size_t total = prefix + hlen + nbytes;
    unsigned char *buf = malloc(total ? total : 1);
    if (!buf) {
        hr_tensor_release(c);
        return hr_fail(HR_ENOMEM, "out of memory encoding a .npy image (%zu bytes)", total);
    }
    memcpy(buf, NPY_MAGIC, NPY_MAGIC_LEN);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    for (size_t i = 0; i < prefix - 8; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + prefix, dict, n);
    memset(buf + prefix + n, ' ', hlen - n - 1);
    buf[prefix + hlen - 1] = '\n';
    if (nbytes) memcpy(buf + prefix + hlen, hr_tensor_data(c), nbytes);
    hr_tensor_release(c);
    *out = buf;
    *outlen = total;
    return 0;
}

hr_tensor *hr_npy_load(const char *path)
{
    unsigned char *buf;
    size_t len;
    if (hr_io_read_file(path, &buf, &len)) return NULL;
    hr_tensor *t = NULL;
    if (len == 0) hr_fail(HR_EFORMAT, "empty file");
    else t = hr_npy_parse(buf, len, NULL);
    free(buf);
    if (!t) hr_error_prefix("'%s'", path);
    return t;
}

int hr_npy_save(const char *path, const hr_tensor *t)
{
    unsigned char *buf;
    size_t len;
    if (hr_npy_encode(t, &buf, &len)) return -1;
    const void *pieces[1] = {buf};
    int rc = hr_io_write_atomic(path, 1, pieces, &len);
    free(buf);
    return rc;
}
