/*
 * text_norm.c — the text normalisation of the reference's preprocessing, as Python does it:
 * html.unescape, str.isupper, str.lower, str.strip (Lua-free; tables from text_tables.c).
 */
#include <stdlib.h>
#include <string.h>

#include "hr_text.h"
#include "text_unicode.h"

int hr_text_check_utf8(const char *op, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        bool ok;
        size_t k = hr_utf8_decode(u + i, len - i, &cp, &ok);
        if (!ok) return hr_fail(HR_EINVAL, "%s: invalid UTF-8 at byte %zu (0x%02X)", op, i + 1, u[i]);
        i += k;
    }
    return 0;
}

/* ------------------------------------------------------------------ growable output */

typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} outbuf;

static void put(outbuf *o, const void *s, size_t n)
{
    if (o->oom) return;
    if (o->n + n + 1 > o->cap) {
        size_t c = o->cap ? o->cap : 64;
        while (c < o->n + n + 1) c *= 2;
        char *q = realloc(o->p, c);
        if (!q) {
            o->oom = true;
            return;
        }
        o->p = q;
        o->cap = c;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static char *finish(outbuf *o, size_t *out_len, const char *op)
{
    put(o, "", 0);
    if (o->oom || !o->p) {
        free(o->p);
        return hr_fail_null(HR_ENOMEM, "%s: out of memory", op);
    }
    o->p[o->n] = '\0';
    *out_len = o->n;
    return o->p;
}

static void put_cp(outbuf *o, uint32_t cp)
{
    char u[4];
    put(o, u, hr_utf8_encode(cp, u));
}

/* ------------------------------------------------------------------ html.unescape */

static const char *find_entity(const char *name, size_t n)
{
    size_t lo = 0, hi = hr_text_tab_entities_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *e = hr_text_tab_entities[mid].name;
        size_t el = strlen(e);
        int c = memcmp(e, name, el < n ? el : n);
        if (c == 0) c = el < n ? -1 : el > n ? 1 : 0;
        if (c == 0) return hr_text_tab_entities[mid].utf8;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static bool invalid_codepoint(uint32_t cp)
{
    size_t lo = 0, hi = hr_text_tab_invalid_codepoints_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (hr_text_tab_invalid_codepoints[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return lo < hr_text_tab_invalid_codepoints_n && hr_text_tab_invalid_codepoints[lo] == cp;
}

/* html._replace_charref for a number (saturated above U+10FFFF, where Python gives U+FFFD too). */
static void put_charref(outbuf *o, uint32_t num)
{
    for (size_t i = 0; i < hr_text_tab_invalid_charrefs_n; i++)
        if (hr_text_tab_invalid_charrefs[i].num == num) {
            put(o, hr_text_tab_invalid_charrefs[i].utf8, strlen(hr_text_tab_invalid_charrefs[i].utf8));
            return;
        }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        put_cp(o, 0xFFFD);
        return;
    }
    if (invalid_codepoint(num)) return;
    put_cp(o, num);
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/*
 * Python's pattern: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) — every match is
 * replaced, the text between matches is copied; a name that is not an entity is tried shorter
 * (longest prefix of at least 2 characters that is one: "&ampx" -> "&x").
 */
char *hr_text_html_unescape(const char *s, size_t len, size_t *out_len)
{
    if (hr_text_check_utf8("html_unescape", s, len)) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    outbuf o = {0};
    size_t i = 0;
    while (i < len) {
        const unsigned char *amp = memchr(u + i, '&', len - i);
        if (!amp) {
            put(&o, u + i, len - i);
            break;
        }
        size_t a = (size_t)(amp - u);
        put(&o, u + i, a - i);
        size_t j = a + 1;
        if (j < len && u[j] == '#') {
            uint32_t num = 0;
            size_t k = j + 1;
            if (k < len && u[k] >= '0' && u[k] <= '9') {
                for (; k < len && u[k] >= '0' && u[k] <= '9'; k++) {
                    num = num * 10 + (uint32_t)(u[k] - '0');
                    if (num > 0x110000) num = 0x110000;
                }
            } else if (k + 1 < len && (u[k] == 'x' || u[k] == 'X') && hexval(u[k + 1]) >= 0) {
                for (k++; k < len && hexval(u[k]) >= 0; k++) {
                    num = num * 16 + (uint32_t)hexval(u[k]);
                    if (num > 0x110000) num = 0x110000;
                }
            } else { /* '&#' without digits matches nothing ('#' cannot start a name) */
                put(&o, "&", 1);
                i = a + 1;
                continue;
            }
            if (k < len && u[k] == ';') k++;
            put_charref(&o, num);
            i = k;
            continue;
        }
        /* a name: up to 32 characters other than \t \n \f space < & # ; then an optional ';' */
        size_t k = j, nchars = 0;
        while (k < len && nchars < 32) {
            unsigned char c = u[k];
            if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';')
                break;
            uint32_t cp;
            k += hr_utf8_next(u + k, &cp);
            nchars++;
        }
        if (nchars == 0) {
            put(&o, "&", 1);
            i = a + 1;
            continue;
        }
        if (k < len && u[k] == ';') {
            k++;
            nchars++;
        }
        const char *name = (const char *)u + j;
        size_t nlen = k - j;
        const char *val = find_entity(name, nlen);
        if (val) {
            put(&o, val, strlen(val));
        } else {
            /* prefixes of nchars-1 down to 2 characters; entity names are ASCII, so only prefixes
             * within the leading ASCII bytes can match, and there characters are bytes */
            size_t ascii = 0;
            while (ascii < nlen && u[j + ascii] < 0x80) ascii++;
            size_t x = nchars - 1 < ascii ? nchars - 1 : ascii;
            for (; x >= 2; x--)
                if ((val = find_entity(name, x)) != NULL) break;
            if (val) {
                put(&o, val, strlen(val));
                put(&o, name + x, nlen - x);
            } else {
                put(&o, "&", 1);
                put(&o, name, nlen);
            }
        }
        i = k;
    }
    return finish(&o, out_len, "html_unescape");
}

/* ------------------------------------------------------------------ case */

int hr_text_isupper(const char *s, size_t len)
{
    if (hr_text_check_utf8("isupper", s, len)) return -1;
    const unsigned char *u = (const unsigned char *)s;
    bool cased = false;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        if (u[i] < 0x80) {
            cp = u[i++];
            if (cp >= 'a' && cp <= 'z') return 0;
            if (cp >= 'A' && cp <= 'Z') cased = true;
            continue;
        }
        i += hr_utf8_next(u + i, &cp);
        if (HR_UNI_IN(lower, cp) || HR_UNI_IN(title, cp)) return 0;
        if (HR_UNI_IN(upper, cp)) cased = true;
    }
    return cased ? 1 : 0;
}

static bool is_cased(uint32_t cp) { return HR_UNI_IN(cased, cp); }
static bool is_ignorable(uint32_t cp) { return HR_UNI_IN(ignorable, cp); }

/* CPython's handle_capital_sigma: U+03A3 at byte i lowers to final ς when a cased character
 * precedes it and none follows (case-ignorable characters skipped on both sides). */
static uint32_t lower_sigma(const unsigned char *u, size_t len, size_t i)
{
    uint32_t cp = 0;
    size_t j = i;
    bool found = false;
    while (j > 0) {
        j = hr_utf8_prev(u, j);
        hr_utf8_next(u + j, &cp);
        if (!is_ignorable(cp)) {
            found = true;
            break;
        }
    }
    if (!found || !is_cased(cp)) return 0x3C3;
    for (j = i + 2; j < len;) {
        j += hr_utf8_next(u + j, &cp);
        if (!is_ignorable(cp)) return is_cased(cp) ? 0x3C3 : 0x3C2;
    }
    return 0x3C2;
}

char *hr_text_lower(const char *s, size_t len, size_t *out_len)
{
    if (hr_text_check_utf8("lower", s, len)) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    outbuf o = {0};
    size_t i = 0;
    while (i < len) {
        size_t run = i; /* ASCII without capitals is copied as a block */
        while (run < len && u[run] < 0x80 && !(u[run] >= 'A' && u[run] <= 'Z')) run++;
        put(&o, u + i, run - i);
        i = run;
        if (i >= len) break;
        if (u[i] < 0x80) {
            char c = (char)(u[i++] + 32);
            put(&o, &c, 1);
            continue;
        }
        uint32_t cp;
        size_t k = hr_utf8_next(u + i, &cp);
        if (cp == 0x3A3) {
            put_cp(&o, lower_sigma(u, len, i));
        } else {
            size_t lo = 0, hi = hr_text_tab_lower_map_n;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (hr_text_tab_lower_map[mid][0] < cp) lo = mid + 1;
                else hi = mid;
            }
            if (lo < hr_text_tab_lower_map_n && hr_text_tab_lower_map[lo][0] == cp) {
                put_cp(&o, hr_text_tab_lower_map[lo][1]);
            } else {
                const char *multi = NULL;
                for (size_t m = 0; m < hr_text_tab_lower_multi_n; m++)
                    if (hr_text_tab_lower_multi[m].cp == cp) multi = hr_text_tab_lower_multi[m].utf8;
                if (multi) put(&o, multi, strlen(multi));
                else put(&o, u + i, k);
            }
        }
        i += k;
    }
    return finish(&o, out_len, "lower");
}

int hr_text_strip(const char *s, size_t len, size_t *begin, size_t *end)
{
    if (hr_text_check_utf8("strip", s, len)) return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t b = 0, e = len;
    while (b < e) {
        uint32_t cp;
        size_t k = hr_utf8_next(u + b, &cp);
        if (!hr_uni_pyspace(cp)) break;
        b += k;
    }
    while (e > b) {
        size_t p = hr_utf8_prev(u, e);
        uint32_t cp;
        hr_utf8_next(u + p, &cp);
        if (!hr_uni_pyspace(cp)) break;
        e = p;
    }
    *begin = b;
    *end = e;
    return 0;
}
