/* lmdb_value — the byte-level chains that turn an LMDB value of a HERO database into tensors and
 * tables (hero.data: lmdb:get_lz4_msgpack, get_msgpack, get_npz). The first input byte picks the
 * chain, the rest is the value:
 *   0: a text DB value: lz4 frame(s) -> MessagePack -> msgpack_numpy arrays
 *   1: a video DB value: MessagePack ({"features": <msgpack_numpy array>})
 *   2: a compressed video DB value: an .npz image held in memory
 * (other first bytes: their value modulo 3). */
#include "msgpack_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    const uint8_t *v = data + 1;
    size_t n = size - 1;
    switch (data[0] % 3) {
    case 0: {
        unsigned char *out;
        size_t olen;
        fuzz_begin();
        if (hr_lz4_frame_decompress(v, n, (size_t)16 << 20, &out, &olen) != 0) {
            fuzz_expect_reason();
            return 0;
        }
        fuzz_msgpack(out, olen);
        free(out);
        return 0;
    }
    case 1:
        fuzz_msgpack(v, n);
        return 0;
    default: {
        hr_tensor_list l;
        fuzz_begin();
        if (hr_npz_parse(v, n, "'fuzz value.npz'", &l) != 0) {
            fuzz_expect_reason();
            FUZZ_CHECK(l.n == 0);
            return 0;
        }
        fuzz_touch_list(&l);
        hr_tensor_list_free(&l);
        return 0;
    }
    }
}
