/*
 * fuzz.h — helpers shared by the fuzz targets (fuzz/targets/NAME.c).
 *
 * Each target defines LLVMFuzzerTestOneInput(data, size): it hands the bytes to one Lua-free parser
 * of the core, exactly as a file's contents would arrive, then checks what came back. The targets
 * link against libFuzzer (clang -fsanitize=fuzzer) or against replay.c, which runs saved inputs
 * without libFuzzer; both builds use AddressSanitizer + UndefinedBehaviorSanitizer.
 *
 * The parsers themselves never abort. The harness does, on purpose, when an invariant breaks (a
 * failure without a message, a tensor whose bytes cannot be read): that is a finding, and aborting
 * makes libFuzzer save the input.
 */
#ifndef HERO_FUZZ_H
#define HERO_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr_core.h"
#include "hr_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

/* Call before the parser: a failure must leave its own reason behind, not an old one. */
static inline void fuzz_begin(void) { hr_clear_error(); }

/* Call when the parser reported failure: it must say why. */
static inline void fuzz_expect_reason(void)
{
    FUZZ_CHECK(hr_last_errcode() != HR_OK);
    FUZZ_CHECK(strlen(hr_last_error()) > 0);
}

/* Reads every byte a parsed tensor claims to own, so ASan sees any read past its storage. */
static inline void fuzz_touch_tensor(const hr_tensor *t)
{
    FUZZ_CHECK(t != NULL);
    FUZZ_CHECK(hr_tensor_device(t).type == HR_CPU);
    FUZZ_CHECK(t->ndim >= 0 && t->ndim <= HR_MAX_DIMS);
    int64_t numel = hr_tensor_numel(t);
    FUZZ_CHECK(numel >= 0);
    FUZZ_CHECK(hr_tensor_is_contiguous(t));
    size_t nbytes = (size_t)numel * hr_dtype_size(t->dtype);
    const volatile unsigned char *p = hr_tensor_data(t);
    unsigned char acc = 0;
    for (size_t i = 0; i < nbytes; i++) acc ^= p[i];
    (void)acc;
}

static inline void fuzz_touch_list(const hr_tensor_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        FUZZ_CHECK(l->names[i] != NULL);
        fuzz_touch_tensor(l->tensors[i]);
    }
    for (size_t i = 0; i < l->nmeta; i++) FUZZ_CHECK(l->meta_keys[i] && l->meta_vals[i]);
}

#endif
