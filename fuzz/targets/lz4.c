/* lz4 — lz4 frame decompression (hr_lz4_frame_decompress over liblz4's frame API): frame headers,
 * linked and independent blocks, checksums, skippable and concatenated frames, truncation. The
 * output limit must hold exactly: a frame that decompresses to n bytes is refused under a limit of
 * n - 1 and gives the same bytes under a limit of n. */
#include "fuzz.h"
#include "hr_data.h"

/* The limit is small because the fuzzer soon finds frames that expand 255 to 1: a 16 MiB limit made
 * every such input cost milliseconds of page faults and copying, with nothing more to cover. */
#define LIMIT ((size_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *out;
    size_t n;
    fuzz_begin();
    if (hr_lz4_frame_decompress(data, size, LIMIT, &out, &n) != 0) {
        fuzz_expect_reason();
        FUZZ_CHECK(out == NULL && n == 0);
        return 0;
    }
    FUZZ_CHECK(out != NULL && n <= LIMIT);
    if (n > 0) {
        unsigned char *o2;
        size_t n2;
        fuzz_begin();
        FUZZ_CHECK(hr_lz4_frame_decompress(data, size, n - 1, &o2, &n2) != 0);
        fuzz_expect_reason();
        FUZZ_CHECK(hr_lz4_frame_decompress(data, size, n, &o2, &n2) == 0);
        FUZZ_CHECK(n2 == n && memcmp(o2, out, n) == 0); /* reads all n bytes of both: ASan checks them */
        free(o2);
    }
    free(out);
    return 0;
}
