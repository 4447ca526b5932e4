/* features — an extractor feature file: an .npz whose member features.npy holds a little-endian
 * f2/f4 [n, d] array, or a bare .npy (hr_features_parse). The name ends in ".npy" so that bytes that
 * are neither a zip nor start like an .npy also reach the .npy path. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    hr_tensor *t = hr_features_parse(data, size, "fuzz.npy");
    if (!t) {
        fuzz_expect_reason();
        return 0;
    }
    fuzz_touch_tensor(t);
    FUZZ_CHECK(t->ndim == 2);
    FUZZ_CHECK(t->dtype == HR_F16 || t->dtype == HR_F32);
    hr_tensor_release(t);
    return 0;
}
