/* bpe — the byte-level BPE tokenizer's two files (hr_bpe_load_mem, the parser behind hr_bpe_load):
 * the vocabulary (a JSON object token -> id) and the merges ("#version" line, then "first second"
 * pairs). The input holds both, split at its first 0x00 byte: vocabulary before it, merges after it
 * (no 0x00: the whole input is the vocabulary, the merges are empty). A tokenizer that loads must
 * encode a fixed text (or refuse it with a reason: a token missing from a vocabulary without
 * "<unk>"), map every id back to a token, and decode the ids again (or refuse with a reason: a token
 * such as "<unk>" is not made of the 256 byte characters). */
#include "fuzz.h"
#include "hr_text.h"

static const char TEXT[] = "Hello world, it's 2024!\n  \xc3\xa9t\xc3\xa9 \xe2\x80\x94 <s>ok</s> 12345 ...";

static void exercise(hr_bpe *b, unsigned flags)
{
    hr_bpe_ids ids = {0};
    fuzz_begin();
    if (hr_bpe_encode(b, TEXT, sizeof TEXT - 1, flags, &ids) != 0) {
        fuzz_expect_reason();
        hr_bpe_ids_free(&ids);
        return;
    }
    for (size_t i = 0; i < ids.n; i++) {
        size_t len = 0;
        const char *tok = hr_bpe_id_to_token(b, ids.ids[i], &len);
        FUZZ_CHECK(tok != NULL);
        /* the id of a token string may differ (two strings can share an id) but must exist */
        FUZZ_CHECK(hr_bpe_token_to_id(b, tok, len) >= 0);
    }
    size_t olen = 0;
    fuzz_begin();
    char *s = hr_bpe_decode(b, ids.ids, ids.n, false, &olen);
    if (!s) {
        fuzz_expect_reason(); /* a token such as "<unk>" that is not made of byte characters */
    } else {
        FUZZ_CHECK(s[olen] == '\0');
        free(s);
    }
    hr_bpe_ids_free(&ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t vlen = nul ? (size_t)(nul - data) : size;
    const uint8_t *merges = nul ? nul + 1 : data + size;
    size_t mlen = size - vlen - (nul ? 1 : 0);
    fuzz_begin();
    hr_bpe *b = hr_bpe_load_mem(data, vlen, "fuzz-vocab.json", merges, mlen, "fuzz-merges.txt");
    if (!b) {
        fuzz_expect_reason();
        return 0;
    }
    FUZZ_CHECK(hr_bpe_vocab_size(b) > 0);
    exercise(b, 0);
    exercise(b, HR_BPE_STRIP);
    static const char *const specials[] = {"<s>", "</s>"};
    static const size_t lens[] = {3, 4};
    FUZZ_CHECK(hr_bpe_set_specials(b, specials, lens, 2) == 0);
    exercise(b, HR_BPE_STRIP | HR_BPE_SPECIALS);
    hr_bpe_free(b);
    return 0;
}
