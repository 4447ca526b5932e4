/*
 * hr_text.h — text preprocessing of hero, Lua-free: the byte-level BPE tokenizer of GPT-2 /
 * RoBERTa (text_bpe.c) and the normalisation helpers of the reference's preprocessing scripts
 * (text_norm.c: html.unescape, str.isupper, str.lower, str.strip of Python).
 *
 * Text is UTF-8 bytes with an explicit length (embedded NULs are ordinary characters). Functions
 * follow hr_core.h's conventions (0 / pointer on success, -1 / NULL with hr_last_error()).
 * Character classes come from generated tables (text_tables.c, csrc/gen/text_tables.py) of the
 * Unicode version named by hr_text_unicode_version().
 */
#ifndef HR_TEXT_H
#define HR_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hr_core.h"

const char *hr_text_unicode_version(void);

/* ------------------------------------------------------------------ normalisation (text_norm.c) */

/* 0 when s is valid UTF-8; otherwise fails (HR_EINVAL) naming op and the byte offset of the first
 * ill-formed sequence. */
int hr_text_check_utf8(const char *op, const char *s, size_t len);
/* Python's html.unescape: numeric references (&#39; &#x2014;, with the HTML5 replacements of
 * invalid numbers) and the full HTML5 named-entity table, including the legacy names without ';'
 * and the longest-prefix rule. Returns a malloc'ed NUL-terminated string (*out_len bytes). */
char *hr_text_html_unescape(const char *s, size_t len, size_t *out_len);
/* Python's str.isupper(): at least one cased character and no lowercase or titlecase one.
 * Returns 1 or 0, -1 on invalid UTF-8. */
int hr_text_isupper(const char *s, size_t len);
/* Python's str.lower() (full lowercase mapping, final-sigma rule). malloc'ed, NUL-terminated. */
char *hr_text_lower(const char *s, size_t len, size_t *out_len);
/* Python's str.strip() without arguments: [*begin, *end) is s without Unicode whitespace
 * (str.isspace) at both ends. Fails on invalid UTF-8. */
int hr_text_strip(const char *s, size_t len, size_t *begin, size_t *end);

/* ------------------------------------------------------------------ byte-level BPE (text_bpe.c) */

typedef struct hr_bpe hr_bpe;

/*
 * Loads a vocabulary (a JSON object token -> id: GPT-2's encoder.json, RoBERTa's vocab.json) and
 * its merges (GPT-2's vocab.bpe, RoBERTa's merges.txt: a "#version" header line then one
 * "first second" pair per line, the rank being the line order). Errors name the file and the
 * line/column (or byte offset) of the problem.
 */
hr_bpe *hr_bpe_load(const char *vocab_path, const char *merges_path);
/* The same parser on the two files' contents held in memory; the names stand for the paths in
 * errors (NULL: "vocabulary", "merges"). The buffers are not kept. */
hr_bpe *hr_bpe_load_mem(const void *vocab, size_t vocab_len, const char *vocab_name, const void *merges,
                        size_t merges_len, const char *merges_name);
void hr_bpe_free(hr_bpe *b);

/* Strings split out of the text before BPE and kept whole (transformers' special tokens, e.g.
 * "<s>" "<pad>" "</s>" "<unk>" "<mask>"). Not thread-safe: call before encoding. */
int hr_bpe_set_specials(hr_bpe *b, const char *const *tokens, const size_t *lens, int n);

size_t hr_bpe_vocab_size(const hr_bpe *b);   /* entries of the vocabulary */
size_t hr_bpe_merges_count(const hr_bpe *b);
/* id of a vocabulary string, -1 when absent */
int64_t hr_bpe_token_to_id(const hr_bpe *b, const char *tok, size_t len);
/* vocabulary string of an id (not NUL-terminated), NULL when absent */
const char *hr_bpe_id_to_token(const hr_bpe *b, int64_t id, size_t *len);
int64_t hr_bpe_unk_id(const hr_bpe *b); /* id of "<unk>", -1 when the vocabulary has none */

/* Encoding flags. Without flags the text is encoded exactly (OpenAI's GPT-2 encoder). */
#define HR_BPE_STRIP 1u    /* strip Python whitespace around every piece (transformers 2.0.0):
                              a whitespace-only piece produces nothing */
#define HR_BPE_SPECIALS 2u /* split out the strings of hr_bpe_set_specials first */

typedef struct {
    int64_t *ids;
    size_t n, cap;
} hr_bpe_ids;
void hr_bpe_ids_free(hr_bpe_ids *ids);

/* Appends the ids of text to out. Tokens missing from the vocabulary become the "<unk>" id, or
 * fail when there is none. Invalid UTF-8 fails (naming the byte offset). Thread-safe: any number
 * of threads may encode with the same hr_bpe at once (the word cache is locked). */
int hr_bpe_encode(hr_bpe *b, const char *text, size_t len, unsigned flags, hr_bpe_ids *out);
/* Calls fn with every token string (the byte-mapped form of the vocabulary, e.g. "Ġworld"), in
 * order; a non-zero return from fn stops and is returned. Thread-safe like encode. */
typedef int (*hr_bpe_token_fn)(void *ctx, const char *tok, size_t len);
int hr_bpe_tokenize(hr_bpe *b, const char *text, size_t len, unsigned flags, hr_bpe_token_fn fn, void *ctx);
/* Calls fn with every match of GPT-2's pre-tokenizer regex over text (raw UTF-8 pieces). */
int hr_bpe_pretokenize(const char *text, size_t len, hr_bpe_token_fn fn, void *ctx);
/* Concatenated token strings mapped back to bytes. Ill-formed UTF-8 in the result becomes U+FFFD
 * (Python's errors='replace', as GPT-2's decoder) or, with strict, fails. Unknown ids fail.
 * Returns a malloc'ed NUL-terminated string. */
char *hr_bpe_decode(const hr_bpe *b, const int64_t *ids, size_t n, bool strict, size_t *out_len);
/* Drops the cache of encoded words (it is also bounded and cleared automatically). */
void hr_bpe_cache_clear(hr_bpe *b);
size_t hr_bpe_cache_size(hr_bpe *b);

#endif
