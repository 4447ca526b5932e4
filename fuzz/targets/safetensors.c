/* safetensors — a whole safetensors image: the u64 header length, the JSON header (names, dtypes,
 * shapes, data_offsets, __metadata__) and the data region the offsets must tile
 * (hr_safetensors_parse). */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_tensor_list l;
    fuzz_begin();
    if (hr_safetensors_parse(data, size, "'fuzz.safetensors'", &l) != 0) {
        fuzz_expect_reason();
        FUZZ_CHECK(l.n == 0 && l.nmeta == 0); /* a failed parse leaves nothing behind */
        return 0;
    }
    fuzz_touch_list(&l);
    /* The tensors tile the data region, so together they never own more bytes than the image. */
    size_t total = 0;
    for (size_t i = 0; i < l.n; i++)
        total += (size_t)hr_tensor_numel(l.tensors[i]) * hr_dtype_size(l.tensors[i]->dtype);
    FUZZ_CHECK(total <= size);
    hr_tensor_list_free(&l);
    return 0;
}
