/* cpu/random.c — CPU kernels of the random fills: each walks Philox blocks in parallel and writes
 * the elements that block owns, following the stream mapping documented in hr_random.h. Work is
 * split by BLOCK index, so the value at element i is the same for any thread count. */
#include <math.h>

#include "hr_random.h"

/* Blocks per task; small enough that 1e5 elements use both cores, big enough to amortise. */
#define BLOCK_GRAIN 2048

typedef struct {
    void *out;
    int64_t n;
    uint32_t key[2];
    uint64_t block0;
    double a, b;     /* uniform: bounds; normal: mean, std */
    int bits;        /* uniform (f32 and halfs): the grid of u, 2^-bits */
    const double *p; /* bernoulli: per-element probabilities or NULL */
    bool invert;     /* bernoulli: write u >= p instead of u < p */
    int64_t low;     /* randint */
    uint64_t range;
} rand_job;

static void job_init(rand_job *j, void *out, int64_t n, const uint32_t key[2], uint64_t block0)
{
    j->out = out;
    j->n = n;
    j->key[0] = key[0];
    j->key[1] = key[1];
    j->block0 = block0;
    j->a = j->b = 0;
    j->p = NULL;
    j->invert = false;
    j->low = 0;
    j->range = 1;
}

/* Elements [first, last) owned by blocks [bb, be) when each block holds `per` elements. */
#define OWNED_RANGE(job, bb, be, per, first, last)                       \
    int64_t first = (bb) * (per);                                        \
    int64_t last = (be) * (per) < (job)->n ? (be) * (per) : (job)->n

/* ------------------------------------------------------------------ uniform */

static void uniform_f32_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    float *out = j->out;
    OWNED_RANGE(j, bb, be, 4, first, last);
    double width = j->b - j->a;
    int shift = 32 - j->bits;
    double unit = ldexp(1.0, -j->bits);
    uint32_t w[4];
    for (int64_t i = first; i < last; i++) {
        if (i == first || (i & 3) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 2), w);
        out[i] = (float)fma(width, (double)(w[i & 3] >> shift) * unit, j->a); /* one rounding (as the GPU's) */
    }
}

void hr_cpu_uniform_f32(float *out, int64_t n, const uint32_t key[2], uint64_t block0, double a, double b, int bits)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.a = a;
    j.b = b;
    j.bits = bits;
    hr_parallel_for((n + 3) / 4, BLOCK_GRAIN, uniform_f32_task, &j);
}

static void uniform_f64_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    double *out = j->out;
    OWNED_RANGE(j, bb, be, 2, first, last);
    double width = j->b - j->a;
    uint32_t w[4];
    for (int64_t i = first; i < last; i++) {
        if (i == first || (i & 1) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 1), w);
        int h = 2 * (int)(i & 1);
        out[i] = fma(width, hr_philox_u53(w[h], w[h + 1]), j->a); /* one rounding (as the GPU's) */
    }
}

void hr_cpu_uniform_f64(double *out, int64_t n, const uint32_t key[2], uint64_t block0, double a, double b)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.a = a;
    j.b = b;
    hr_parallel_for((n + 1) / 2, BLOCK_GRAIN, uniform_f64_task, &j);
}

/* ------------------------------------------------------------------ normal (Box-Muller) */

static const double two_pi = 6.283185307179586476925286766559;

static void normal_f32_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    float *out = j->out;
    OWNED_RANGE(j, bb, be, 4, first, last);
    uint32_t w[4];
    double r = 0, t = 0;
    for (int64_t i = first; i < last; i++) {
        if (i == first || (i & 3) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 2), w);
        if (i == first || (i & 1) == 0) {
            int q = 2 * (int)((i & 3) >> 1);
            double u1 = (double)((w[q] >> 8) + 1) * 0x1.0p-24; /* (0, 1]: log(u1) is finite */
            double u2 = (double)hr_philox_u24(w[q + 1]);
            r = sqrt(-2.0 * log(u1));
            t = two_pi * u2;
        }
        double z = (i & 1) ? r * sin(t) : r * cos(t);
        out[i] = (float)(j->a + j->b * z);
    }
}

void hr_cpu_normal_f32(float *out, int64_t n, const uint32_t key[2], uint64_t block0, double mean, double std)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.a = mean;
    j.b = std;
    hr_parallel_for((n + 3) / 4, BLOCK_GRAIN, normal_f32_task, &j);
}

static void normal_f64_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    double *out = j->out;
    OWNED_RANGE(j, bb, be, 2, first, last);
    uint32_t w[4];
    double r = 0, t = 0;
    for (int64_t i = first; i < last; i++) {
        if (i == first || (i & 1) == 0) {
            hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 1), w);
            double u1 = hr_philox_u53(w[0], w[1]) + 0x1.0p-53; /* (0, 1] */
            double u2 = hr_philox_u53(w[2], w[3]);
            r = sqrt(-2.0 * log(u1));
            t = two_pi * u2;
        }
        double z = (i & 1) ? r * sin(t) : r * cos(t);
        out[i] = j->a + j->b * z;
    }
}

void hr_cpu_normal_f64(double *out, int64_t n, const uint32_t key[2], uint64_t block0, double mean, double std)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.a = mean;
    j.b = std;
    hr_parallel_for((n + 1) / 2, BLOCK_GRAIN, normal_f64_task, &j);
}

/* ------------------------------------------------------------------ integers */

/* floor(x * range / 2^64): Lemire's multiply-shift, one 64x64 -> 128-bit product. */
static inline uint64_t scale64(uint64_t x, uint64_t range)
{
    return (uint64_t)(((unsigned __int128)x * range) >> 64);
}

static inline uint64_t word64(const uint32_t w[4], int h) { return (uint64_t)w[h] | ((uint64_t)w[h + 1] << 32); }

static void randint_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    int64_t *out = j->out;
    OWNED_RANGE(j, bb, be, 2, first, last);
    uint32_t w[4];
    for (int64_t i = first; i < last; i++) {
        if (i == first || (i & 1) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 1), w);
        /* unsigned arithmetic: low + k wraps correctly even when the range spans all of int64 */
        out[i] = (int64_t)((uint64_t)j->low + scale64(word64(w, 2 * (int)(i & 1)), j->range));
    }
}

void hr_cpu_randint_i64(int64_t *out, int64_t n, const uint32_t key[2], uint64_t block0, int64_t low, uint64_t range)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.low = low;
    j.range = range;
    hr_parallel_for((n + 1) / 2, BLOCK_GRAIN, randint_task, &j);
}

/* Fisher-Yates is sequential by nature; the draws come from the stream in order. */
void hr_cpu_randperm_i64(int64_t *out, int64_t n, const uint32_t key[2], uint64_t block0)
{
    for (int64_t i = 0; i < n; i++) out[i] = i;
    uint32_t w[4];
    for (int64_t t = 0; t + 1 < n; t++) {
        if ((t & 1) == 0) hr_philox_block(key, block0 + (uint64_t)(t >> 1), w);
        int64_t m = n - t;
        int64_t k = (int64_t)scale64(word64(w, 2 * (int)(t & 1)), (uint64_t)m);
        int64_t tmp = out[m - 1];
        out[m - 1] = out[k];
        out[k] = tmp;
    }
}

/* ------------------------------------------------------------------ bernoulli / dropout masks */

/* With one probability (no per-element p), the draws from element i (a multiple of 4) on: eight
 * Philox blocks (32 draws) at a time, compared as integers, through STORE(index, drawn) while 32
 * fit before last. Leaves i at the first element not drawn. */
#define BERNOULLI_BY_32(j, i, last, STORE)                                                          \
    do {                                                                                             \
        if (!(j)->p) {                                                                               \
            uint32_t bound_ = hr_philox_u24_bound((j)->a);                                           \
            uint32_t w_[32];                                                                         \
            for (; (i) + 32 <= (last); (i) += 32) {                                                  \
                hr_philox_words32((j)->key, (j)->block0 + (uint64_t)((i) >> 2), w_);                 \
                for (int t_ = 0; t_ < 32; t_++) STORE((i) + t_, ((w_[t_] >> 8) < bound_) != (j)->invert); \
            }                                                                                        \
        }                                                                                            \
    } while (0)

#define STORE_U8(idx, drawn) (out[idx] = (uint8_t)(drawn))
#define STORE_F32(idx, drawn) (out[idx] = (drawn) ? 1.0f : 0.0f)

static void bernoulli_u8_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    uint8_t *out = j->out;
    OWNED_RANGE(j, bb, be, 4, first, last);
    int64_t i = first; /* a multiple of 4: the start of a block */
    BERNOULLI_BY_32(j, i, last, STORE_U8);
    uint32_t w[4];
    for (int64_t start = i; i < last; i++) {
        if (i == start || (i & 3) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 2), w);
        double p = j->p ? j->p[i] : j->a;
        bool below = (double)hr_philox_u24(w[i & 3]) < p;
        out[i] = (uint8_t)(below != j->invert);
    }
}

static void bernoulli_f32_task(void *ctx, int64_t bb, int64_t be)
{
    const rand_job *j = ctx;
    float *out = j->out;
    OWNED_RANGE(j, bb, be, 4, first, last);
    int64_t i = first; /* a multiple of 4: the start of a block */
    BERNOULLI_BY_32(j, i, last, STORE_F32);
    uint32_t w[4];
    for (int64_t start = i; i < last; i++) {
        if (i == start || (i & 3) == 0) hr_philox_block(j->key, j->block0 + (uint64_t)(i >> 2), w);
        double p = j->p ? j->p[i] : j->a;
        bool below = (double)hr_philox_u24(w[i & 3]) < p;
        out[i] = (below != j->invert) ? 1.0f : 0.0f;
    }
}

void hr_cpu_bernoulli_u8(uint8_t *out, int64_t n, const uint32_t key[2], uint64_t block0, const double *p, double p0,
                         bool invert)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.p = p;
    j.a = p0;
    j.invert = invert;
    hr_parallel_for((n + 3) / 4, BLOCK_GRAIN, bernoulli_u8_task, &j);
}

void hr_cpu_bernoulli_f32(float *out, int64_t n, const uint32_t key[2], uint64_t block0, const double *p, double p0,
                          bool invert)
{
    rand_job j;
    job_init(&j, out, n, key, block0);
    j.p = p;
    j.a = p0;
    j.invert = invert;
    hr_parallel_for((n + 3) / 4, BLOCK_GRAIN, bernoulli_f32_task, &j);
}
