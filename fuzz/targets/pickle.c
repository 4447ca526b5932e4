/* pickle — the restricted unpickler alone, without a container: the bytes are one pickle (a
 * checkpoint's data.pkl). They run twice: under no policy at all (no globals, calls or persistent
 * ids: how the legacy format's header pickles are read) and under the checkpoint policy of the torch
 * loader (hr_torch_parse_pickle: the allow-listed globals, tensor rebuilds, storage references, with
 * zero-filled storages of at most 16 MiB in all). */
#include "pickle_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    hr_pickle *p = hr_pickle_new("'fuzz.pkl'", NULL);
    FUZZ_CHECK(p != NULL);
    size_t used = 0;
    hr_pk_value *v = hr_pickle_load(p, data, size, &used);
    if (!v) {
        fuzz_expect_reason();
    } else {
        FUZZ_CHECK(used > 0 && used <= size); /* at least the STOP opcode */
        size_t budget = 100000;
        fuzz_walk_pickle(v, 0, &budget);
        /* What follows the STOP is another pickle (as in the legacy format): a fresh memo. */
        if (used < size) {
            size_t used2 = 0;
            fuzz_begin();
            hr_pk_value *w = hr_pickle_load(p, data + used, size - used, &used2);
            if (!w) fuzz_expect_reason();
            else FUZZ_CHECK(used2 > 0 && used2 <= size - used);
        }
    }
    hr_pickle_free(p);

    hr_torch_file f;
    fuzz_begin();
    if (hr_torch_parse_pickle(data, size, "'fuzz data.pkl'", (size_t)16 << 20, &f) != 0) {
        fuzz_expect_reason();
        FUZZ_CHECK(f.pickle == NULL && f.root == NULL && f.priv == NULL);
        return 0;
    }
    size_t budget = 100000;
    fuzz_walk_pickle(f.root, 0, &budget);
    hr_torch_file_free(&f);
    return 0;
}
