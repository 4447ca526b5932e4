/* msgpack — the MessagePack decoder (hr_msgpack_decode: every format family, UTF-8 checks, the
 * nesting limit) and the msgpack_numpy arrays built from its maps (hr_msgpack_numpy: dtype strings,
 * shapes, the data length they imply). */
#include "msgpack_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_msgpack(data, size);
    return 0;
}
