/* npy — a NumPy .npy image: magic, version, the header dict literal, the array bytes
 * (hr_npy_parse). An array that parses must survive a round trip through hr_npy_encode. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    hr_tensor *t = hr_npy_parse(data, size, NULL);
    if (!t) {
        fuzz_expect_reason();
        return 0;
    }
    fuzz_touch_tensor(t);
    unsigned char *img;
    size_t len;
    FUZZ_CHECK(hr_npy_encode(t, &img, &len) == 0);
    hr_tensor *u = hr_npy_parse(img, len, "roundtrip.npy");
    FUZZ_CHECK(u != NULL);
    FUZZ_CHECK(u->dtype == t->dtype && u->ndim == t->ndim);
    for (int i = 0; i < t->ndim; i++) FUZZ_CHECK(u->size[i] == t->size[i]);
    size_t nbytes = (size_t)hr_tensor_numel(t) * hr_dtype_size(t->dtype);
    FUZZ_CHECK(nbytes == 0 || memcmp(hr_tensor_data(t), hr_tensor_data(u), nbytes) == 0);
    hr_tensor_release(u);
    free(img);
    hr_tensor_release(t);
    return 0;
}
