/* torch_pt — a whole torch.save file in either format (hr_torch_parse): the zip container with
 * data.pkl, byteorder and data/<key> members, or the legacy stream of five pickles followed by the
 * storage records; the pickle runs on the restricted unpickler under the checkpoint policy. Every
 * tensor reachable from the root must lie inside its storage. */
#include "pickle_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_torch_file f;
    fuzz_begin();
    if (hr_torch_parse(data, size, "'fuzz.pt'", &f) != 0) {
        fuzz_expect_reason();
        FUZZ_CHECK(f.pickle == NULL && f.root == NULL && f.priv == NULL); /* nothing left behind */
        return 0;
    }
    FUZZ_CHECK(f.pickle != NULL && f.root != NULL);
    size_t budget = 100000;
    fuzz_walk_pickle(f.root, 0, &budget);
    hr_torch_file_free(&f);
    return 0;
}
