/* npz — an .npz archive: the zip container and every .npy member inside it (hr_npz_parse). */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_tensor_list l;
    fuzz_begin();
    if (hr_npz_parse(data, size, "'fuzz.npz'", &l) != 0) {
        fuzz_expect_reason();
        FUZZ_CHECK(l.n == 0);
        return 0;
    }
    fuzz_touch_list(&l);
    hr_tensor_list_free(&l);
    return 0;
}
