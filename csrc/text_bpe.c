/*
 * text_bpe.c — byte-level BPE of GPT-2 / RoBERTa (OpenAI's encoder.py, transformers 2.0.0's
 * GPT2Tokenizer/RobertaTokenizer), Lua-free.
 *
 * Pipeline of one text: (optional) split out special-token strings -> (optional) str.strip() of
 * every piece -> GPT-2's pre-tokenizer regex
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (hand-written over UTF-8; \s is Unicode White_Space, as in the `regex` module the reference
 * uses) -> each match's bytes become "symbols" (one per byte) -> merges by rank, exactly as
 * encoder.py's bpe(): repeatedly merge every occurrence of the adjacent pair with the lowest rank,
 * left to right -> vocabulary ids.
 *
 * Symbols are interned strings (the byte-mapped unicode form used by the files, e.g. "Ġthe"),
 * so BPE runs on integers: a merge is a hash lookup (first, second) -> (rank, merged symbol).
 * Symbols 0..255 are the single bytes. Everything built at load time is read-only afterwards; the
 * only mutable shared state is the word cache, guarded by a mutex, so concurrent encodes are safe.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_io.h"
#include "hr_text.h"
#include "text_unicode.h"

const char *hr_text_unicode_version(void) { return HR_TEXT_UNICODE_VERSION; }

/* ------------------------------------------------------------------ hashing */

static uint32_t hash_bytes(const unsigned char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a, then a finaliser so low bits (the slot mask) mix well */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    return h;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* ------------------------------------------------------------------ string table */

/* Interned byte strings with an int32 value each, found by content. Entry index = insertion order. */
typedef struct {
    char *arena;
    size_t alen, acap;
    uint32_t *off, *len, *hash;
    int32_t *val;
    size_t n, cap;
    uint32_t *slots; /* entry index + 1, 0 = empty; nslots is a power of two */
    size_t nslots;
} strtab;

static void strtab_free(strtab *t)
{
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->hash);
    free(t->val);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static int64_t strtab_find(const strtab *t, const void *s, size_t n, uint32_t h)
{
    if (!t->nslots) return -1;
    size_t mask = t->nslots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t e = t->slots[i];
        if (!e) return -1;
        e--;
        if (t->hash[e] == h && t->len[e] == n && memcmp(t->arena + t->off[e], s, n) == 0) return e;
    }
}

static int strtab_rehash(strtab *t, size_t nslots)
{
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots) return hr_fail(HR_ENOMEM, "out of memory (string table of %zu slots)", nslots);
    for (size_t e = 0; e < t->n; e++) {
        size_t i = t->hash[e] & (nslots - 1);
        while (slots[i]) i = (i + 1) & (nslots - 1);
        slots[i] = (uint32_t)e + 1;
    }
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    return 0;
}

static int grow(void **p, size_t *cap, size_t need, size_t elsize)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elsize);
    if (!q) return hr_fail(HR_ENOMEM, "out of memory (%zu bytes)", c * elsize);
    *p = q;
    *cap = c;
    return 0;
}

/* Adds a string that is not in the table yet; returns its index or -1. */
static int64_t strtab_add(strtab *t, const void *s, size_t n, uint32_t h, int32_t val)
{
    if (t->n >= UINT32_MAX - 1 || t->alen + n >= UINT32_MAX)
        return hr_fail(HR_EINVAL, "string table is full (%zu entries, %zu bytes)", t->n, t->alen);
    if ((t->n + 1) * 2 > t->nslots && strtab_rehash(t, t->nslots ? t->nslots * 2 : 64)) return -1;
    if (grow((void **)&t->arena, &t->acap, t->alen + n + 1, 1)) return -1;
    size_t cap = t->cap;
    if (t->n + 1 > cap) {
        size_t c = cap ? cap * 2 : 64;
        uint32_t *off = realloc(t->off, c * sizeof *off);
        if (off) t->off = off;
        uint32_t *len = realloc(t->len, c * sizeof *len);
        if (len) t->len = len;
        uint32_t *hash = realloc(t->hash, c * sizeof *hash);
        if (hash) t->hash = hash;
        int32_t *v = realloc(t->val, c * sizeof *v);
        if (v) t->val = v;
        if (!off || !len || !hash || !v) return hr_fail(HR_ENOMEM, "out of memory (string table)");
        t->cap = c;
    }
    size_t e = t->n++;
    memcpy(t->arena + t->alen, s, n);
    t->arena[t->alen + n] = '\0';
    t->off[e] = (uint32_t)t->alen;
    t->len[e] = (uint32_t)n;
    t->hash[e] = h;
    t->val[e] = val;
    t->alen += n + 1;
    size_t mask = t->nslots - 1, i = h & mask;
    while (t->slots[i]) i = (i + 1) & mask;
    t->slots[i] = (uint32_t)e + 1;
    return (int64_t)e;
}

static void strtab_reset(strtab *t)
{
    t->n = 0;
    t->alen = 0;
    if (t->slots) memset(t->slots, 0, t->nslots * sizeof *t->slots);
}

/* ------------------------------------------------------------------ pair table (merges) */

typedef struct {
    uint64_t *keys; /* (first << 32) | second; UINT64_MAX = empty */
    int32_t *rank, *result;
    size_t n, cap; /* cap: power of two */
} pairmap;

static void pairmap_free(pairmap *m)
{
    free(m->keys);
    free(m->rank);
    free(m->result);
    memset(m, 0, sizeof *m);
}

static int pairmap_init(pairmap *m, size_t expected)
{
    size_t cap = 64;
    while (cap < expected * 2) cap *= 2;
    m->keys = malloc(cap * sizeof *m->keys);
    m->rank = malloc(cap * sizeof *m->rank);
    m->result = malloc(cap * sizeof *m->result);
    if (!m->keys || !m->rank || !m->result) return hr_fail(HR_ENOMEM, "out of memory (merge table)");
    memset(m->keys, 0xFF, cap * sizeof *m->keys);
    m->cap = cap;
    m->n = 0;
    return 0;
}

/* Slot of key: where it is, or the empty slot where it would go. */
static size_t pairmap_slot(const pairmap *m, uint64_t key)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)mix64(key) & mask;
    while (m->keys[i] != key && m->keys[i] != UINT64_MAX) i = (i + 1) & mask;
    return i;
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

/* ------------------------------------------------------------------ the tokenizer */

#define CACHE_MAX_WORDS 65536
#define CACHE_MAX_SYMS (1u << 20)
#define WORD_STACK 128
#define BPE_SMALL_WORD 48 /* longer words use the O(m log m) merge */

struct hr_bpe {
    strtab vocab;       /* token string -> id */
    int64_t unk_id;
    int32_t *dec_id;    /* vocabulary ids sorted ascending, for decode ... */
    uint32_t *dec_ent;  /* ... and the vocab entry of each (the last one listed for a repeated id) */
    size_t ndec;
    strtab syms;        /* symbol string -> vocabulary id (-1: none); symbols 0..255 are the bytes */
    pairmap merges;
    size_t nmerges;
    int nspecial;
    int32_t *special_sym;
    unsigned char special_first[32]; /* bitset of the first bytes of the specials */
    char byte_str[256][3];           /* byte -> its mapped character in UTF-8 */
    unsigned char byte_len[256];
    int16_t cp_byte[0x144];          /* mapped code point -> byte, -1 when none */
    /* word cache: piece bytes -> symbols; cache_syms[off] = count, followed by the symbols */
    pthread_mutex_t lock;
    strtab cache;
    int32_t *cache_syms;
    size_t cache_nsyms, cache_capsyms;
};

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100.. in increasing byte order, so every byte is a visible, non-space character. */
static void init_byte_map(hr_bpe *b)
{
    int n = 0;
    for (int i = 0; i < 0x144; i++) b->cp_byte[i] = -1;
    for (int c = 0; c < 256; c++) {
        bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        uint32_t cp = printable ? (uint32_t)c : (uint32_t)(256 + n++);
        b->byte_len[c] = (unsigned char)hr_utf8_encode(cp, b->byte_str[c]);
        b->cp_byte[cp] = (int16_t)c;
    }
}

/* Interns a symbol string; its value is its vocabulary id (or -1). */
static int64_t intern_sym(hr_bpe *b, const char *s, size_t n)
{
    uint32_t h = hash_bytes((const unsigned char *)s, n);
    int64_t e = strtab_find(&b->syms, s, n, h);
    if (e >= 0) return e;
    int64_t id = strtab_find(&b->vocab, s, n, h); /* same hash function: reuse h */
    return strtab_add(&b->syms, s, n, h, id >= 0 ? b->vocab.val[id] : -1);
}

/* ------------------------------------------------------------------ vocabulary JSON */

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    const char *path;
    char *buf; /* decoded string */
    size_t blen, bcap;
} jreader;

static int jfail(const jreader *r, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int jfail(const jreader *r, size_t at, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < r->len; i++) {
        if (r->s[i] == '\n') { line++; col = 1; }
        else if ((r->s[i] & 0xC0) != 0x80) col++;
    }
    return hr_fail(HR_EFORMAT, "vocabulary file '%s': line %zu, column %zu (byte %zu): %s", r->path, line, col, at, msg);
}

static void jskip_ws(jreader *r)
{
    while (r->pos < r->len) {
        unsigned char c = r->s[r->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        r->pos++;
    }
}

static int jput(jreader *r, const char *p, size_t n)
{
    if (grow((void **)&r->buf, &r->bcap, r->blen + n + 1, 1)) return -1;
    memcpy(r->buf + r->blen, p, n);
    r->blen += n;
    return 0;
}

static int jhex4(jreader *r, size_t at, uint32_t *out)
{
    if (r->len - r->pos < 4) return jfail(r, at, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = r->s[r->pos + i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return jfail(r, at, "bad \\u escape (expected 4 hex digits)");
        v = v * 16 + (uint32_t)d;
    }
    r->pos += 4;
    *out = v;
    return 0;
}

/* Reads a JSON string at r->pos (the opening quote) into r->buf/blen. */
static int jstring(jreader *r)
{
    size_t start = r->pos;
    r->blen = 0;
    if (!r->buf && jput(r, "", 0)) return -1; /* an empty key still has a buffer */
    r->pos++;
    for (;;) {
        if (r->pos >= r->len) return jfail(r, start, "unterminated string");
        unsigned char c = r->s[r->pos];
        if (c == '"') { r->pos++; return 0; }
        if (c < 0x20) return jfail(r, r->pos, "control character 0x%02X inside a string", c);
        if (c == '\\') {
            size_t at = r->pos;
            if (r->pos + 1 >= r->len) return jfail(r, at, "truncated escape");
            unsigned char e = r->s[r->pos + 1];
            r->pos += 2;
            char ch;
            switch (e) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (jhex4(r, at, &cp)) return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (r->len - r->pos < 6 || r->s[r->pos] != '\\' || r->s[r->pos + 1] != 'u')
                        return jfail(r, at, "unpaired surrogate \\u%04X", cp);
                    r->pos += 2;
                    if (jhex4(r, at, &lo)) return -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) return jfail(r, at, "unpaired surrogate \\u%04X", cp);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return jfail(r, at, "unpaired surrogate \\u%04X", cp);
                }
                char u[4];
                if (jput(r, u, hr_utf8_encode(cp, u))) return -1;
                continue;
            }
            default:
                return jfail(r, at, "invalid escape '\\%c'", e >= 0x20 && e < 0x7F ? e : '?');
            }
            if (jput(r, &ch, 1)) return -1;
            continue;
        }
        /* a run of plain characters; multi-byte ones must be well-formed UTF-8 */
        size_t run = r->pos;
        while (run < r->len) {
            unsigned char d = r->s[run];
            if (d == '"' || d == '\\' || d < 0x20) break;
            if (d < 0x80) { run++; continue; }
            uint32_t cp;
            bool ok;
            size_t k = hr_utf8_decode(r->s + run, r->len - run, &cp, &ok);
            if (!ok) return jfail(r, run, "invalid UTF-8 inside a string");
            run += k;
        }
        if (jput(r, (const char *)r->s + r->pos, run - r->pos)) return -1;
        r->pos = run;
    }
}

static int jinteger(jreader *r, int32_t *out)
{
    size_t at = r->pos;
    if (r->pos < r->len && r->s[r->pos] == '-') return jfail(r, at, "negative token id");
    if (r->pos >= r->len || r->s[r->pos] < '0' || r->s[r->pos] > '9')
        return jfail(r, at, "expected an integer token id");
    if (r->s[r->pos] == '0' && r->pos + 1 < r->len && r->s[r->pos + 1] >= '0' && r->s[r->pos + 1] <= '9')
        return jfail(r, at, "leading zero in a number");
    uint64_t v = 0;
    while (r->pos < r->len && r->s[r->pos] >= '0' && r->s[r->pos] <= '9') {
        v = v * 10 + (uint64_t)(r->s[r->pos] - '0');
        if (v > INT32_MAX) return jfail(r, at, "token id too large (at most %d)", INT32_MAX);
        r->pos++;
    }
    if (r->pos < r->len && (r->s[r->pos] == '.' || r->s[r->pos] == 'e' || r->s[r->pos] == 'E'))
        return jfail(r, at, "token ids must be integers");
    *out = (int32_t)v;
    return 0;
}

/* Parses the vocabulary held in data[0..len) (path names it in errors). */
static int load_vocab(hr_bpe *b, const unsigned char *data, size_t len, const char *path)
{
    jreader r = {.s = data, .len = len, .path = path};
    int rc = -1;
    if (len >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF) {
        jfail(&r, 0, "starts with a UTF-8 byte order mark (not JSON)");
        goto done;
    }
    jskip_ws(&r);
    if (r.pos >= len) { jfail(&r, r.pos, "empty file (expected a JSON object token -> id)"); goto done; }
    if (data[r.pos] != '{') { jfail(&r, r.pos, "expected a JSON object '{' of token -> id"); goto done; }
    r.pos++;
    jskip_ws(&r);
    if (r.pos < len && data[r.pos] == '}') { jfail(&r, r.pos, "the vocabulary is empty"); goto done; }
    for (;;) {
        jskip_ws(&r);
        if (r.pos >= len) { jfail(&r, r.pos, "unexpected end of file inside the object"); goto done; }
        if (data[r.pos] != '"') { jfail(&r, r.pos, "expected a string key"); goto done; }
        size_t key_at = r.pos;
        if (jstring(&r)) goto done;
        jskip_ws(&r);
        if (r.pos >= len || data[r.pos] != ':') { jfail(&r, r.pos, "expected ':' after a key"); goto done; }
        r.pos++;
        jskip_ws(&r);
        int32_t id = 0;
        if (jinteger(&r, &id)) goto done;
        uint32_t h = hash_bytes((const unsigned char *)r.buf, r.blen);
        if (strtab_find(&b->vocab, r.buf, r.blen, h) >= 0) {
            jfail(&r, key_at, "duplicate token \"%.*s\"", (int)(r.blen > 60 ? 60 : r.blen), r.buf);
            goto done;
        }
        if (strtab_add(&b->vocab, r.buf, r.blen, h, id) < 0) goto done;
        jskip_ws(&r);
        if (r.pos >= len) { jfail(&r, r.pos, "unexpected end of file inside the object"); goto done; }
        if (data[r.pos] == ',') { r.pos++; continue; }
        if (data[r.pos] == '}') { r.pos++; break; }
        jfail(&r, r.pos, "expected ',' or '}'");
        goto done;
    }
    jskip_ws(&r);
    if (r.pos != len) { jfail(&r, r.pos, "unexpected data after the JSON object"); goto done; }
    rc = 0;
done:
    free(r.buf);
    return rc;
}

/* Decode table: entries sorted by id (stable, so the last entry of a repeated id wins, as the
 * {v: k for k, v in encoder.items()} of the reference). */
static int build_decoder(hr_bpe *b)
{
    size_t n = b->vocab.n;
    b->dec_id = malloc(n * sizeof *b->dec_id);
    b->dec_ent = malloc(n * sizeof *b->dec_ent);
    if (!b->dec_id || !b->dec_ent) return hr_fail(HR_ENOMEM, "out of memory (decoder of %zu tokens)", n);
    /* counting would need the id range; an insertion-ordered merge sort keeps it simple and stable */
    uint32_t *tmp = malloc(n * sizeof *tmp);
    uint32_t *a = malloc(n * sizeof *a);
    if (!tmp || !a) {
        free(tmp);
        free(a);
        return hr_fail(HR_ENOMEM, "out of memory (decoder of %zu tokens)", n);
    }
    for (size_t i = 0; i < n; i++) a[i] = (uint32_t)i;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = b->vocab.val[a[j]] < b->vocab.val[a[i]] ? a[j++] : a[i++];
            while (i < mid) tmp[k++] = a[i++];
            while (j < hi) tmp[k++] = a[j++];
        }
        uint32_t *t = a;
        a = tmp;
        tmp = t;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = b->vocab.val[a[i]];
        if (m && b->dec_id[m - 1] == id) m--; /* a later entry with the same id replaces it */
        b->dec_id[m] = id;
        b->dec_ent[m] = a[i];
        m++;
    }
    b->ndec = m;
    free(tmp);
    free(a);
    return 0;
}

/* ------------------------------------------------------------------ merges */

static int mfail(const char *path, size_t line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int mfail(const char *path, size_t line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return hr_fail(HR_EFORMAT, "merges file '%s': line %zu: %s", path, line, msg);
}

/* Checks one merge symbol: non-empty, valid UTF-8 without whitespace (Python's str.split() would
 * cut there). */
static int check_symbol(const char *path, size_t line, const unsigned char *s, size_t n, const char *which)
{
    if (n == 0) return mfail(path, line, "empty %s symbol (expected \"first second\")", which);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        bool ok;
        size_t k = hr_utf8_decode(s + i, n - i, &cp, &ok);
        if (!ok) return mfail(path, line, "invalid UTF-8 in the %s symbol", which);
        if (hr_uni_pyspace(cp))
            return mfail(path, line, "whitespace U+%04X inside a pair (expected \"first second\")", (unsigned)cp);
        i += k;
    }
    return 0;
}

/* Parses the merges held in data[0..len) (path names it in errors). */
static int load_merges(hr_bpe *b, const unsigned char *data, size_t len, const char *path)
{
    int rc = -1;
    char *cat = NULL;
    size_t catcap = 0;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += data[i] == '\n';
    if (len == 0) { mfail(path, 1, "empty file (expected a '#version' line and merge pairs)"); goto done; }
    /* The reference reads lines [1:-1] of split('\n'): a last line without '\n' would be dropped
     * silently there, so such a file is refused rather than read differently. */
    if (data[len - 1] != '\n') { mfail(path, lines + 1, "the last line does not end with a newline"); goto done; }
    if (pairmap_init(&b->merges, lines)) goto done;
    size_t pos = 0, lineno = 0;
    int32_t rank = 0;
    while (pos < len) {
        lineno++;
        const unsigned char *line = data + pos;
        const unsigned char *nl = memchr(line, '\n', len - pos);
        size_t n = (size_t)(nl - line);
        pos += n + 1;
        if (n && line[n - 1] == '\r') n--; /* universal newlines */
        if (lineno == 1 && n && line[0] == '#') continue; /* "#version: 0.2" */
        const unsigned char *sp = memchr(line, ' ', n);
        if (!sp) {
            mfail(path, lineno, n ? "expected \"first second\" (two symbols separated by one space)"
                                  : "empty line (expected \"first second\")");
            goto done;
        }
        size_t na = (size_t)(sp - line), nb = n - na - 1;
        if (check_symbol(path, lineno, line, na, "first") || check_symbol(path, lineno, sp + 1, nb, "second"))
            goto done;
        if (grow((void **)&cat, &catcap, na + nb + 1, 1)) goto done;
        memcpy(cat, line, na);
        memcpy(cat + na, sp + 1, nb);
        int64_t sa = intern_sym(b, (const char *)line, na);
        int64_t sb = intern_sym(b, (const char *)sp + 1, nb);
        int64_t sr = intern_sym(b, cat, na + nb);
        if (sa < 0 || sb < 0 || sr < 0) goto done;
        uint64_t key = pair_key((int32_t)sa, (int32_t)sb);
        size_t slot = pairmap_slot(&b->merges, key);
        if (b->merges.keys[slot] == key) {
            mfail(path, lineno, "the pair \"%.*s %.*s\" is listed twice", (int)na, (const char *)line, (int)nb,
                  (const char *)sp + 1);
            goto done;
        }
        b->merges.keys[slot] = key;
        b->merges.rank[slot] = rank++;
        b->merges.result[slot] = (int32_t)sr;
        b->merges.n++;
    }
    b->nmerges = (size_t)rank;
    rc = 0;
done:
    free(cat);
    return rc;
}

/* ------------------------------------------------------------------ load / free */

void hr_bpe_free(hr_bpe *b)
{
    if (!b) return;
    strtab_free(&b->vocab);
    strtab_free(&b->syms);
    strtab_free(&b->cache);
    pairmap_free(&b->merges);
    free(b->dec_id);
    free(b->dec_ent);
    free(b->special_sym);
    free(b->cache_syms);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

hr_bpe *hr_bpe_load_mem(const void *vocab, size_t vocab_len, const char *vocab_name, const void *merges,
                        size_t merges_len, const char *merges_name)
{
    if (!vocab_name) vocab_name = "vocabulary";
    if (!merges_name) merges_name = "merges";
    hr_bpe *b = calloc(1, sizeof *b);
    if (!b) return hr_fail_null(HR_ENOMEM, "out of memory (tokenizer)");
    if (pthread_mutex_init(&b->lock, NULL) != 0) {
        free(b);
        return hr_fail_null(HR_ENOMEM, "cannot create the tokenizer's lock");
    }
    init_byte_map(b);
    if (load_vocab(b, vocab, vocab_len, vocab_name) || build_decoder(b)) goto fail;
    b->unk_id = hr_bpe_token_to_id(b, "<unk>", 5);
    for (int c = 0; c < 256; c++) /* symbols 0..255 are the single bytes */
        if (intern_sym(b, b->byte_str[c], b->byte_len[c]) != c) goto fail;
    if (load_merges(b, merges, merges_len, merges_name)) goto fail;
    return b;
fail:
    hr_bpe_free(b);
    return NULL;
}

hr_bpe *hr_bpe_load(const char *vocab_path, const char *merges_path)
{
    /* Both files are read whole, then parsed by the one in-memory parser. */
    unsigned char *vocab, *merges;
    size_t vlen, mlen;
    if (hr_io_read_file(vocab_path, &vocab, &vlen)) {
        hr_error_prefix("vocabulary file");
        return NULL;
    }
    if (hr_io_read_file(merges_path, &merges, &mlen)) {
        free(vocab);
        hr_error_prefix("merges file");
        return NULL;
    }
    hr_bpe *b = hr_bpe_load_mem(vocab, vlen, vocab_path, merges, mlen, merges_path);
    free(vocab);
    free(merges);
    return b;
}

int hr_bpe_set_specials(hr_bpe *b, const char *const *tokens, const size_t *lens, int n)
{
    if (n < 0) return hr_fail(HR_EINVAL, "set_specials: negative count %d", n);
    int32_t *syms = n ? malloc((size_t)n * sizeof *syms) : NULL;
    if (n && !syms) return hr_fail(HR_ENOMEM, "out of memory (special tokens)");
    unsigned char first[32] = {0};
    for (int i = 0; i < n; i++) {
        if (lens[i] == 0) {
            free(syms);
            return hr_fail(HR_EINVAL, "special token #%d is empty", i + 1);
        }
        if (hr_text_check_utf8("special token", tokens[i], lens[i])) {
            free(syms);
            return -1;
        }
        int64_t s = intern_sym(b, tokens[i], lens[i]);
        if (s < 0) {
            free(syms);
            return -1;
        }
        syms[i] = (int32_t)s;
        unsigned char c = (unsigned char)tokens[i][0];
        first[c >> 3] |= (unsigned char)(1u << (c & 7));
    }
    free(b->special_sym);
    b->special_sym = syms;
    b->nspecial = n;
    memcpy(b->special_first, first, sizeof first);
    return 0;
}

size_t hr_bpe_vocab_size(const hr_bpe *b) { return b->vocab.n; }
size_t hr_bpe_merges_count(const hr_bpe *b) { return b->nmerges; }
int64_t hr_bpe_unk_id(const hr_bpe *b) { return b->unk_id; }

int64_t hr_bpe_token_to_id(const hr_bpe *b, const char *tok, size_t len)
{
    int64_t e = strtab_find(&b->vocab, tok, len, hash_bytes((const unsigned char *)tok, len));
    return e < 0 ? -1 : b->vocab.val[e];
}

const char *hr_bpe_id_to_token(const hr_bpe *b, int64_t id, size_t *len)
{
    size_t lo = 0, hi = b->ndec;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (b->dec_id[mid] < id) lo = mid + 1;
        else hi = mid;
    }
    if (lo == b->ndec || b->dec_id[lo] != id) return NULL;
    uint32_t e = b->dec_ent[lo];
    *len = b->vocab.len[e];
    return b->vocab.arena + b->vocab.off[e];
}

/* ------------------------------------------------------------------ pre-tokenizer */

enum { CL_LETTER, CL_NUMBER, CL_SPACE, CL_OTHER };

static inline int char_class(uint32_t cp)
{
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return CL_LETTER;
        if (cp >= '0' && cp <= '9') return CL_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CL_SPACE;
        return CL_OTHER;
    }
    if (HR_UNI_IN(letter, cp)) return CL_LETTER;
    if (HR_UNI_IN(number, cp)) return CL_NUMBER;
    if (HR_UNI_IN(white, cp)) return CL_SPACE;
    return CL_OTHER;
}

/* End of the regex match starting at pos (< len) of valid UTF-8. The alternatives are tried in the
 * pattern's order; each comment names the one that matches. */
static size_t next_piece(const unsigned char *s, size_t len, size_t pos)
{
    uint32_t c;
    size_t n = hr_utf8_next(s + pos, &c);
    if (c == '\'' && pos + 1 < len) { /* 's|'t|'re|'ve|'m|'ll|'d */
        unsigned char a = s[pos + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
        if (pos + 2 < len) {
            unsigned char z = s[pos + 2];
            if ((a == 'r' && z == 'e') || (a == 'v' && z == 'e') || (a == 'l' && z == 'l')) return pos + 3;
        }
    }
    size_t start = pos;
    int k;
    if (c == ' ' && pos + 1 < len) { /* " ?" followed by a letter, number or other character */
        uint32_t c2;
        size_t n2 = hr_utf8_next(s + pos + 1, &c2);
        k = char_class(c2);
        if (k != CL_SPACE) {
            pos += 1 + n2;
            goto run;
        }
    }
    k = char_class(c);
    if (k != CL_SPACE) {
        pos += n;
        goto run;
    }
    /* \s+(?!\S) keeps whitespace up to the end, or all but the last whitespace character before
     * a non-space; a single whitespace character before a non-space is \s+ */
    size_t last = pos;
    pos += n;
    while (pos < len) {
        size_t m = hr_utf8_next(s + pos, &c);
        if (char_class(c) != CL_SPACE) break;
        last = pos;
        pos += m;
    }
    if (pos == len) return len;
    return last > start ? last : pos;
run: /* \p{L}+, \p{N}+ or [^\s\p{L}\p{N}]+ */
    while (pos < len) {
        if (s[pos] < 0x80) {
            if (char_class(s[pos]) != k) break;
            pos++;
            continue;
        }
        size_t m = hr_utf8_next(s + pos, &c);
        if (char_class(c) != k) break;
        pos += m;
    }
    return pos;
}

int hr_bpe_pretokenize(const char *text, size_t len, hr_bpe_token_fn fn, void *ctx)
{
    if (hr_text_check_utf8("pretokenize", text, len)) return -1;
    const unsigned char *s = (const unsigned char *)text;
    for (size_t pos = 0; pos < len;) {
        size_t end = next_piece(s, len, pos);
        int rc = fn(ctx, text + pos, end - pos);
        if (rc) return rc;
        pos = end;
    }
    return 0;
}

/* ------------------------------------------------------------------ BPE of one piece */

typedef struct {
    int32_t *v;
    size_t n, cap;
} symbuf;

static int symbuf_push(symbuf *o, const int32_t *s, size_t n)
{
    if (grow((void **)&o->v, &o->cap, o->n + n, sizeof *o->v)) return -1;
    memcpy(o->v + o->n, s, n * sizeof *s);
    o->n += n;
    return 0;
}

static inline int32_t pair_rank(const pairmap *pm, int32_t a, int32_t b, int32_t *result)
{
    uint64_t key = pair_key(a, b);
    size_t slot = pairmap_slot(pm, key);
    if (pm->keys[slot] != key) return -1;
    *result = pm->result[slot];
    return pm->rank[slot];
}

/* encoder.py's bpe() on a word of m symbols, in place; returns the new length. Each round finds
 * the lowest-ranked adjacent pair and merges all its occurrences left to right. O(m^2): used for
 * short words. */
static size_t merge_word_small(const hr_bpe *b, int32_t *w, size_t m)
{
    const pairmap *pm = &b->merges;
    while (m > 1) {
        int32_t best = INT32_MAX, fa = -1, fb = -1, res = -1;
        for (size_t i = 0; i + 1 < m; i++) {
            int32_t r = -1, rr = pair_rank(pm, w[i], w[i + 1], &r);
            if (rr >= 0 && rr < best) {
                best = rr;
                fa = w[i];
                fb = w[i + 1];
                res = r;
            }
        }
        if (res < 0) break;
        size_t j = 0;
        for (size_t i = 0; i < m;) {
            if (i + 1 < m && w[i] == fa && w[i + 1] == fb) {
                w[j++] = res;
                i += 2;
            } else {
                w[j++] = w[i++];
            }
        }
        m = j;
    }
    return m;
}

/* The same rounds in O(m log m) for long words: a linked list of symbols and a min-heap of
 * (rank, position) pair entries. A round pops every entry of the lowest rank (one pair, so in
 * left-to-right order) and merges the ones still present; the pairs the merges create join the
 * heap only after the round, exactly as the next scan of the small version would see them. */
typedef struct {
    int32_t rank, pos;
} hentry;

static inline bool hless(hentry a, hentry b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void hpush(hentry *h, size_t *n, hentry e)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(e, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static hentry hpop(hentry *h, size_t *n)
{
    hentry top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && hless(h[c + 1], h[c])) c++;
        if (!hless(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int merge_word_large(const hr_bpe *b, int32_t *w, size_t m, size_t *out_m)
{
    const pairmap *pm = &b->merges;
    int32_t *next = malloc(m * sizeof *next), *prev = malloc(m * sizeof *prev);
    hentry *heap = malloc(3 * m * sizeof *heap), *pend = malloc(2 * m * sizeof *pend);
    if (!next || !prev || !heap || !pend) {
        free(next);
        free(prev);
        free(heap);
        free(pend);
        return hr_fail(HR_ENOMEM, "out of memory (BPE of a word of %zu bytes)", m);
    }
    size_t nh = 0;
    for (size_t i = 0; i < m; i++) {
        next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
        int32_t r = -1, rr;
        if (i + 1 < m && (rr = pair_rank(pm, w[i], w[i + 1], &r)) >= 0) hpush(heap, &nh, (hentry){rr, (int32_t)i});
    }
    while (nh) {
        int32_t round = heap[0].rank;
        size_t np = 0;
        while (nh && heap[0].rank == round) {
            hentry e = hpop(heap, &nh);
            int32_t i = e.pos, j;
            if (w[i] < 0 || (j = next[i]) < 0) continue;
            int32_t res = -1;
            if (pair_rank(pm, w[i], w[j], &res) != round) continue; /* stale: the pair changed */
            w[i] = res;
            w[j] = -1;
            next[i] = next[j];
            if (next[j] >= 0) prev[next[j]] = i;
            int32_t r = -1, rr;
            if (prev[i] >= 0 && (rr = pair_rank(pm, w[prev[i]], w[i], &r)) >= 0) pend[np++] = (hentry){rr, prev[i]};
            if (next[i] >= 0 && (rr = pair_rank(pm, w[i], w[next[i]], &r)) >= 0) pend[np++] = (hentry){rr, i};
        }
        for (size_t k = 0; k < np; k++) hpush(heap, &nh, pend[k]);
    }
    size_t n = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) w[n++] = w[i];
    free(next);
    free(prev);
    free(heap);
    free(pend);
    *out_m = n;
    return 0;
}

static int bpe_piece(hr_bpe *b, const unsigned char *p, size_t n, symbuf *out)
{
    if (n == 1) {
        int32_t s = p[0];
        return symbuf_push(out, &s, 1);
    }
    uint32_t h = hash_bytes(p, n);
    pthread_mutex_lock(&b->lock);
    int64_t e = strtab_find(&b->cache, p, n, h);
    if (e >= 0) {
        const int32_t *cs = b->cache_syms + b->cache.val[e];
        int rc = symbuf_push(out, cs + 1, (size_t)cs[0]);
        pthread_mutex_unlock(&b->lock);
        return rc;
    }
    pthread_mutex_unlock(&b->lock);

    int32_t stack[WORD_STACK];
    int32_t *w = n <= WORD_STACK ? stack : malloc(n * sizeof *w);
    if (!w) return hr_fail(HR_ENOMEM, "out of memory (word of %zu bytes)", n);
    for (size_t i = 0; i < n; i++) w[i] = p[i];
    size_t m = n;
    int rc = 0;
    if (n <= BPE_SMALL_WORD) m = merge_word_small(b, w, n);
    else rc = merge_word_large(b, w, n, &m);
    if (rc == 0) rc = symbuf_push(out, w, m);

    if (rc == 0 && n <= 4096) { /* remember the word; a full cache starts over */
        pthread_mutex_lock(&b->lock);
        if (strtab_find(&b->cache, p, n, h) < 0) {
            if (b->cache.n >= CACHE_MAX_WORDS || b->cache_nsyms + m + 1 > CACHE_MAX_SYMS) {
                strtab_reset(&b->cache);
                b->cache_nsyms = 0;
            }
            if (grow((void **)&b->cache_syms, &b->cache_capsyms, b->cache_nsyms + m + 1, sizeof(int32_t)) == 0 &&
                strtab_add(&b->cache, p, n, h, (int32_t)b->cache_nsyms) >= 0) {
                b->cache_syms[b->cache_nsyms] = (int32_t)m;
                memcpy(b->cache_syms + b->cache_nsyms + 1, w, m * sizeof *w);
                b->cache_nsyms += m + 1;
            }
            hr_clear_error(); /* a failed cache insert only costs speed */
        }
        pthread_mutex_unlock(&b->lock);
    }
    if (w != stack) free(w);
    return rc;
}

void hr_bpe_cache_clear(hr_bpe *b)
{
    pthread_mutex_lock(&b->lock);
    strtab_reset(&b->cache);
    b->cache_nsyms = 0;
    pthread_mutex_unlock(&b->lock);
}

size_t hr_bpe_cache_size(hr_bpe *b)
{
    pthread_mutex_lock(&b->lock);
    size_t n = b->cache.n;
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* ------------------------------------------------------------------ text -> symbols */

static int encode_segment(hr_bpe *b, const unsigned char *s, size_t len, unsigned flags, symbuf *out)
{
    if (flags & HR_BPE_STRIP) {
        size_t lo, hi;
        if (hr_text_strip((const char *)s, len, &lo, &hi)) return -1;
        s += lo;
        len = hi - lo;
    }
    for (size_t pos = 0; pos < len;) {
        size_t end = next_piece(s, len, pos);
        if (bpe_piece(b, s + pos, end - pos, out)) return -1;
        pos = end;
    }
    return 0;
}

/* Index of the special token starting at s (the longest one), or -1. */
static int special_at(const hr_bpe *b, const unsigned char *s, size_t len)
{
    if (!(b->special_first[s[0] >> 3] & (1u << (s[0] & 7)))) return -1;
    int best = -1;
    size_t best_len = 0;
    for (int i = 0; i < b->nspecial; i++) {
        int32_t sym = b->special_sym[i];
        size_t n = b->syms.len[sym];
        if (n <= len && n > best_len && memcmp(s, b->syms.arena + b->syms.off[sym], n) == 0) {
            best = i;
            best_len = n;
        }
    }
    return best;
}

static int encode_syms(hr_bpe *b, const char *op, const char *text, size_t len, unsigned flags, symbuf *out)
{
    if (hr_text_check_utf8(op, text, len)) return -1;
    const unsigned char *s = (const unsigned char *)text;
    if (!(flags & HR_BPE_SPECIALS) || b->nspecial == 0) return encode_segment(b, s, len, flags, out);
    /* transformers 2.0.0 splits on every special token and strips the pieces in between, which
     * (the RoBERTa specials never overlap) is one left-to-right scan */
    size_t seg = 0;
    for (size_t i = 0; i < len;) {
        int k = special_at(b, s + i, len - i);
        if (k < 0) {
            i++;
            continue;
        }
        if (encode_segment(b, s + seg, i - seg, flags, out)) return -1;
        int32_t sym = b->special_sym[k];
        if (symbuf_push(out, &sym, 1)) return -1;
        i += b->syms.len[sym];
        seg = i;
    }
    return encode_segment(b, s + seg, len - seg, flags, out);
}

void hr_bpe_ids_free(hr_bpe_ids *ids)
{
    free(ids->ids);
    memset(ids, 0, sizeof *ids);
}

int hr_bpe_encode(hr_bpe *b, const char *text, size_t len, unsigned flags, hr_bpe_ids *out)
{
    symbuf sb = {0};
    if (encode_syms(b, "encode", text, len, flags, &sb)) {
        free(sb.v);
        return -1;
    }
    if (grow((void **)&out->ids, &out->cap, out->n + sb.n, sizeof *out->ids)) {
        free(sb.v);
        return -1;
    }
    for (size_t i = 0; i < sb.n; i++) {
        int32_t id = b->syms.val[sb.v[i]];
        if (id < 0) {
            if (b->unk_id < 0) {
                int32_t s = sb.v[i];
                hr_fail(HR_EINVAL, "encode: token \"%.*s\" is not in the vocabulary, which has no \"<unk>\"",
                        (int)(b->syms.len[s] > 80 ? 80 : b->syms.len[s]), b->syms.arena + b->syms.off[s]);
                free(sb.v);
                return -1;
            }
            out->ids[out->n++] = b->unk_id;
        } else {
            out->ids[out->n++] = id;
        }
    }
    free(sb.v);
    return 0;
}

int hr_bpe_tokenize(hr_bpe *b, const char *text, size_t len, unsigned flags, hr_bpe_token_fn fn, void *ctx)
{
    symbuf sb = {0};
    if (encode_syms(b, "tokenize", text, len, flags, &sb)) {
        free(sb.v);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < sb.n && rc == 0; i++) {
        int32_t s = sb.v[i];
        rc = fn(ctx, b->syms.arena + b->syms.off[s], b->syms.len[s]);
    }
    free(sb.v);
    return rc;
}

/* ------------------------------------------------------------------ decode */

char *hr_bpe_decode(const hr_bpe *b, const int64_t *ids, size_t n, bool strict, size_t *out_len)
{
    unsigned char *raw = NULL;
    size_t rlen = 0, rcap = 0;
    for (size_t i = 0; i < n; i++) {
        size_t tl;
        const char *tok = hr_bpe_id_to_token(b, ids[i], &tl);
        if (!tok) {
            free(raw);
            return hr_fail_null(HR_EINVAL, "decode: id %lld (position %zu) is not in the vocabulary",
                                (long long)ids[i], i + 1);
        }
        if (grow((void **)&raw, &rcap, rlen + tl + 1, 1)) {
            free(raw);
            return NULL;
        }
        for (size_t j = 0; j < tl;) {
            uint32_t cp;
            j += hr_utf8_next((const unsigned char *)tok + j, &cp); /* vocabulary strings are valid UTF-8 */
            if (cp >= 0x144 || b->cp_byte[cp] < 0) {
                free(raw);
                return hr_fail_null(HR_EINVAL,
                                    "decode: token \"%.*s\" (id %lld) has the character U+%04X, which is not "
                                    "one of the 256 byte characters",
                                    (int)(tl > 80 ? 80 : tl), tok, (long long)ids[i], (unsigned)cp);
            }
            raw[rlen++] = (unsigned char)b->cp_byte[cp];
        }
    }
    /* bytes -> text: ill-formed sequences become U+FFFD (3 bytes for at most 1 byte) */
    char *out = malloc(rlen * 3 + 1);
    if (!out) {
        free(raw);
        return hr_fail_null(HR_ENOMEM, "out of memory (decoded text of %zu bytes)", rlen);
    }
    size_t o = 0;
    for (size_t i = 0; i < rlen;) {
        uint32_t cp;
        bool ok;
        size_t k = hr_utf8_decode(raw + i, rlen - i, &cp, &ok);
        if (ok) {
            memcpy(out + o, raw + i, k);
            o += k;
        } else if (strict) {
            free(raw);
            free(out);
            return hr_fail_null(HR_EINVAL, "decode: the tokens do not form valid UTF-8 (byte %zu of the result)", i + 1);
        } else {
            o += hr_utf8_encode(0xFFFD, out + o);
        }
        i += k;
    }
    out[o] = '\0';
    free(raw);
    *out_len = o;
    return out;
}
