/*
 * text_unicode.h — small inline UTF-8 and character-class helpers shared by the text code
 * (text_bpe.c, text_norm.c). Internal: not part of the hr_text.h API.
 */
#ifndef HR_TEXT_UNICODE_H
#define HR_TEXT_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "text_tables.h"

/* Binary search of a sorted table of inclusive [lo, hi] code point ranges. */
static inline bool hr_uni_in(const uint32_t (*tab)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < tab[mid][0]) hi = mid;
        else if (cp > tab[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

/*
 * Decodes one UTF-8 sequence at s[0..len) (len >= 1). Returns the number of bytes consumed and
 * sets *cp; *valid is false for an ill-formed sequence, in which case the return value is the
 * length of its maximal subpart (the prefix of a well-formed sequence, at least 1 byte): one
 * U+FFFD replaces exactly that many bytes, as Python's bytes.decode('utf-8', 'replace') does.
 */
static inline size_t hr_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp, bool *valid)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        *valid = true;
        return 1;
    }
    size_t need;
    uint32_t v;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) { need = 1; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;      /* no overlong forms */
        else if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else {
        *valid = false;
        *cp = 0xFFFD;
        return 1;
    }
    size_t i = 1;
    for (; i <= need; i++) {
        if (i >= len) break;
        unsigned char b = s[i];
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) break;
        v = (v << 6) | (b & 0x3F);
    }
    if (i <= need) {
        *valid = false;
        *cp = 0xFFFD;
        return i;
    }
    *valid = true;
    *cp = v;
    return need + 1;
}

/* Decodes one code point of text already known to be valid UTF-8. */
static inline size_t hr_utf8_next(const unsigned char *s, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (c < 0xF0) {
        *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
          (s[3] & 0x3F);
    return 4;
}

/* Start of the code point that ends just before position i (> 0) of valid UTF-8. */
static inline size_t hr_utf8_prev(const unsigned char *s, size_t i)
{
    do i--; while (i > 0 && (s[i] & 0xC0) == 0x80);
    return i;
}

/* Writes cp as UTF-8 into out (at least 4 bytes); returns the length. */
static inline size_t hr_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

#define HR_UNI_IN(name, cp) hr_uni_in(hr_text_tab_##name, hr_text_tab_##name##_n, (cp))

/* Python's str.isspace() (what str.strip() removes). */
static inline bool hr_uni_pyspace(uint32_t cp)
{
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
    return HR_UNI_IN(pyspace, cp);
}

#endif
