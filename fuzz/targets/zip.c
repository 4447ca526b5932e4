/* zip — the zip container alone: end-of-central-directory search, zip64 records, the central
 * directory, local headers, stored and deflate members with their sizes and CRC-32
 * (hr_zip_open, hr_zip_find, hr_zip_extract), whatever the members hold. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_zip z;
    fuzz_begin();
    if (hr_zip_open(&z, data, size, "'fuzz.zip'") != 0) {
        fuzz_expect_reason();
        return 0;
    }
    for (size_t i = 0; i < z.n; i++) {
        /* Names are unique (checked on a few: hr_zip_find is a linear search). */
        if (i < 64) FUZZ_CHECK(hr_zip_find(&z, z.entries[i].name) == (long)i);
        unsigned char *m;
        size_t mlen;
        fuzz_begin();
        if (hr_zip_extract(&z, i, &m, &mlen) != 0) {
            fuzz_expect_reason();
            continue;
        }
        FUZZ_CHECK(mlen == z.entries[i].usize);
        FUZZ_CHECK(hr_crc32(m, mlen) == z.entries[i].crc32);
        free(m);
    }
    hr_zip_close(&z);
    return 0;
}
