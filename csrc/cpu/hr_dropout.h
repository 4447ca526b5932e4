/* hr_dropout.h — the CPU's f32 dropout from Philox counters, shared by dropout and the fused
 * dropout_add_layer_norm node (cpu/add_layernorm.c), so that the two draw the same masks. */
#ifndef HR_DROPOUT_H
#define HR_DROPOUT_H

#include "hr_core.h"

struct hr_generator;

/* What a dropout keeps for its backward: the counters of its draws (element i: word i % 4 of block
 * block0 + i / 4, kept when u >= p) and the kept elements' scale 1 / (float)(1 - p). */
typedef struct {
    uint32_t key[2];
    uint64_t block0;
    double p;
    float keep;
} hr_drop_counters;

/* The counters of a dropout of n elements with probability p (0 <= p < 1): g's key, and n / 4
 * blocks reserved from its stream, as hr_dropout draws them. */
void hr_drop_counters_draw(struct hr_generator *g, int64_t n, double p, hr_drop_counters *c);

/* y = x * noise (+ add, when add is not NULL: the product rounded first, as two ops give it) over n
 * contiguous floats, on the pool's threads. */
void hr_drop_apply_f32(const hr_drop_counters *c, const float *x, const float *add, float *y, int64_t n);

#endif
