/*
 * hr_random.h — hero's random numbers: one counter-based generator (Philox4x32-10) for every
 * device and every worker, the generator state, and the random fills. Lua-free.
 *
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
 * Random123 library's constants): a 128-bit counter (c0, c1, c2, c3) and a 64-bit key (k0, k1)
 * map to four 32-bit words through 10 rounds of
 *     (hi0, lo0) = 0xD2511F53 * c0,  (hi1, lo1) = 0xCD9E8D57 * c2   (32x32 -> 64-bit products)
 *     (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
 * with the key bumped by the Weyl constants (k0 += 0x9E3779B9, k1 += 0xBB67AE85) before every
 * round but the first. The specs check it against Random123's published known-answer vectors.
 *
 * THE STREAM — this mapping is part of hero's contract: the CUDA backend and the Python generator
 * of the spec fixtures reproduce it exactly, so that a seed gives the same numbers everywhere and
 * the value at element i never depends on the thread count or on how the work is chunked.
 *
 *   generator  = (seed, offset). seed is 64 bits: key k0 = seed & 0xffffffff, k1 = seed >> 32.
 *                offset counts 128-bit BLOCKS already used (starts at 0 after manual_seed).
 *   block b    = philox4x32_10(ctr = (b & 0xffffffff, b >> 32, 0, 0), key); its words W[b][0..3].
 *                (c2 and c3 are 0: reserved for sub-streams.)
 *   an op      reserves B consecutive blocks starting at the current offset o, then offset = o + B;
 *                below, W[j] means the words of block o + j. Element i is the i-th element of the
 *                output in row-major (C) order of its shape, whatever its strides.
 *   u24(x)     = (x >> 8) * 2^-24, in [0, 1) on a 2^-24 grid (exact in f32).
 *   u53(x, y)  = ((x >> 5) * 2^26 + (y >> 6)) * 2^-53, in [0, 1) on a 2^-53 grid.
 *   w64(j, h)  = W[j][h] | W[j][h+1] << 32 (h even).
 *
 *   uniform_(a, b), f32/bf16/f16:  B = ceil(n/4); element i: x = W[i/4][i%4], u = u24(x) for f32,
 *                                  and for the halfs u on the dtype's own grid, as PyTorch's:
 *                                  (x >> 24) * 2^-8 for bf16, (x >> 21) * 2^-11 for f16 (so
 *                                  rand never gives 1 in any dtype); value = fma(b - a, u, a)
 *                                  in double (one rounding, on every build and on a GPU),
 *                                  rounded to f32, then to bf16/f16.
 *   uniform_(a, b), f64:           B = ceil(n/2); element i: j = i/2, h = 2*(i%2);
 *                                  u = u53(W[j][h], W[j][h+1]); value = fma(b - a, u, a).
 *   normal_(m, s), f32/bf16/f16:   B = ceil(n/4); Box-Muller on word pairs: element i uses block
 *                                  j = i/4 and pair q = (i%4)/2:
 *                                    u1 = ((W[j][2q] >> 8) + 1) * 2^-24   in (0, 1] (log(u1) finite)
 *                                    u2 = u24(W[j][2q+1])
 *                                    r = sqrt(-2 ln u1), t = 2 pi u2 (double precision)
 *                                  even i: z = r cos t; odd i: z = r sin t; value = m + s * z rounded.
 *   normal_(m, s), f64:            B = ceil(n/2); element i: j = i/2:
 *                                    u1 = u53(W[j][0], W[j][1]) + 2^-53, u2 = u53(W[j][2], W[j][3]);
 *                                  even i: r cos t; odd i: r sin t; value = m + s * z.
 *   randint(low, high) (any dtype): range r = high - low (1 .. 2^64-1, as unsigned 64-bit);
 *                                  B = ceil(n/2); element i: x = w64(i/2, 2*(i%2));
 *                                  value = low + floor(x * r / 2^64) (128-bit product: Lemire's
 *                                  multiply-shift without rejection; the bias is below r / 2^64,
 *                                  i.e. < 2^-32 relative for every range below 2^32).
 *   randperm(n):                   Fisher-Yates with n - 1 draws, two per block: B = ceil((n-1)/2).
 *                                  p = 0, 1, ..., n-1; for t = 0 .. n-2: m = n - t,
 *                                  x = w64(t/2, 2*(t%2)), k = floor(x * m / 2^64), swap p[m-1], p[k].
 *   bernoulli_(p):                 B = ceil(n/4); element i: value = u24(W[i/4][i%4]) < p_i ? 1 : 0
 *                                  (p = 0 never gives 1, p = 1 always does; p is effectively
 *                                  quantised to 2^-24).
 *   dropout_mask(p):               the same words: keep_i = u24(W[i/4][i%4]) >= p, so the mask is
 *                                  exactly 1 - bernoulli(p) for the same generator state.
 *
 * A failing op (bad argument, out of memory) does not advance the generator.
 */
#ifndef HR_RANDOM_H
#define HR_RANDOM_H

#include <stdint.h>

#include "hr_core.h"

#define HR_PHILOX_M0 0xD2511F53u
#define HR_PHILOX_M1 0xCD9E8D57u
#define HR_PHILOX_W0 0x9E3779B9u
#define HR_PHILOX_W1 0xBB67AE85u

/* The Philox4x32-10 block function (inline so kernels in other files can use it directly). */
static inline void hr_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += HR_PHILOX_W0;
            k1 += HR_PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)HR_PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)HR_PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

#if defined(__AVX2__)
#include <immintrin.h>
/* hi and lo words of the 32x32-bit products a * m in each of the eight 32-bit lanes. */
static inline void hr_philox_mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    __m256i even = _mm256_mul_epu32(a, m);                        /* lanes 0, 2, 4, 6 as 64-bit */
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m); /* lanes 1, 3, 5, 7 */
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}
#endif

#if defined(__AVX2__)
/* The ten rounds for blocks b .. b+7, one block per 32-bit lane: c[word] on return. */
static inline void hr_philox_rounds8(const uint32_t key[2], uint64_t b, __m256i c[4])
{
    uint32_t lo32[8], hi32[8];
    for (int l = 0; l < 8; l++) {
        uint64_t bl = b + (uint64_t)l;
        lo32[l] = (uint32_t)bl;
        hi32[l] = (uint32_t)(bl >> 32);
    }
    __m256i c0 = _mm256_loadu_si256((const __m256i *)lo32), c1 = _mm256_loadu_si256((const __m256i *)hi32);
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    const __m256i m0 = _mm256_set1_epi32((int)HR_PHILOX_M0), m1 = _mm256_set1_epi32((int)HR_PHILOX_M1);
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += HR_PHILOX_W0;
            k1 += HR_PHILOX_W1;
        }
        __m256i hi0, lo0, hi1, lo1;
        hr_philox_mulhilo8(c0, m0, &hi0, &lo0);
        hr_philox_mulhilo8(c2, m1, &hi1, &lo1);
        __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
    }
    c[0] = c0;
    c[1] = c1;
    c[2] = c2;
    c[3] = c3;
}
#endif

/* Blocks b .. b+7 at once, as w[word][block]: the same numbers as hr_philox_block, eight
 * independent counters side by side (AVX2 lanes when the build targets it). */
static inline void hr_philox_blocks8(const uint32_t key[2], uint64_t b, uint32_t w[4][8])
{
#if defined(__AVX2__)
    __m256i c[4];
    hr_philox_rounds8(key, b, c);
    for (int k = 0; k < 4; k++) _mm256_storeu_si256((__m256i *)w[k], c[k]);
#else
    uint32_t c0[8], c1[8], c2[8], c3[8];
    for (int l = 0; l < 8; l++) {
        uint64_t bl = b + (uint64_t)l;
        c0[l] = (uint32_t)bl;
        c1[l] = (uint32_t)(bl >> 32);
        c2[l] = 0;
        c3[l] = 0;
    }
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += HR_PHILOX_W0;
            k1 += HR_PHILOX_W1;
        }
        for (int l = 0; l < 8; l++) {
            uint64_t p0 = (uint64_t)HR_PHILOX_M0 * c0[l];
            uint64_t p1 = (uint64_t)HR_PHILOX_M1 * c2[l];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
            c1[l] = (uint32_t)p1;
            c3[l] = (uint32_t)p0;
            c0[l] = n0;
            c2[l] = n2;
        }
    }
    for (int l = 0; l < 8; l++) {
        w[0][l] = c0[l];
        w[1][l] = c1[l];
        w[2][l] = c2[l];
        w[3][l] = c3[l];
    }
#endif
}

/* The 32 words of blocks b .. b+7 in stream order (block l's word k at w[4 * l + k]), the order
 * in which element i of a draw takes word i % 4 of block i / 4: contiguous elements then read
 * contiguous words, and the loops over them vectorise. */
static inline void hr_philox_words32(const uint32_t key[2], uint64_t b, uint32_t w[32])
{
#if defined(__AVX2__)
    __m256i c[4];
    hr_philox_rounds8(key, b, c);
    /* a 4 x 8 transpose: pairs of words, then quads (blocks l and l + 4 in one vector's two
     * halves), then the halves regrouped */
    __m256i t0 = _mm256_unpacklo_epi32(c[0], c[1]), t1 = _mm256_unpackhi_epi32(c[0], c[1]);
    __m256i t2 = _mm256_unpacklo_epi32(c[2], c[3]), t3 = _mm256_unpackhi_epi32(c[2], c[3]);
    __m256i q0 = _mm256_unpacklo_epi64(t0, t2), q1 = _mm256_unpackhi_epi64(t0, t2); /* blocks 0|4, 1|5 */
    __m256i q2 = _mm256_unpacklo_epi64(t1, t3), q3 = _mm256_unpackhi_epi64(t1, t3); /* blocks 2|6, 3|7 */
    _mm256_storeu_si256((__m256i *)w, _mm256_permute2x128_si256(q0, q1, 0x20));
    _mm256_storeu_si256((__m256i *)(w + 8), _mm256_permute2x128_si256(q2, q3, 0x20));
    _mm256_storeu_si256((__m256i *)(w + 16), _mm256_permute2x128_si256(q0, q1, 0x31));
    _mm256_storeu_si256((__m256i *)(w + 24), _mm256_permute2x128_si256(q2, q3, 0x31));
#else
    uint32_t w8[4][8];
    hr_philox_blocks8(key, b, w8);
    for (int l = 0; l < 8; l++)
        for (int k = 0; k < 4; k++) w[4 * l + k] = w8[k][l];
#endif
}

/* The four words of absolute block b of the stream with key (k0, k1). */
static inline void hr_philox_block(const uint32_t key[2], uint64_t b, uint32_t out[4])
{
    uint32_t ctr[4] = {(uint32_t)b, (uint32_t)(b >> 32), 0, 0};
    hr_philox4x32_10(ctr, key, out);
}

/* u24 of the mapping above: a float in [0, 1) from the top 24 bits of a word. */
static inline float hr_philox_u24(uint32_t x) { return (float)(x >> 8) * 0x1.0p-24f; }
/* The bound t with (x >> 8) < t exactly when hr_philox_u24(x) < p (u24 is m * 2^-24, m an integer):
 * an integer comparison that vectorises, for Bernoulli draws. */
static inline uint32_t hr_philox_u24_bound(double p)
{
    if (!(p > 0)) return 0;
    if (p >= 1) return 1u << 24;
    double t = p * 16777216.0;
    uint32_t m = (uint32_t)t;
    return (double)m < t ? m + 1 : m;
}
/* u53 of the mapping above: a double in [0, 1) from 53 bits of two words. */
static inline double hr_philox_u53(uint32_t x, uint32_t y)
{
    return (double)((uint64_t)(x >> 5) * 67108864u + (y >> 6)) * 0x1.0p-53;
}

/* ------------------------------------------------------------------ generator state */

typedef struct hr_generator {
    uint64_t seed;
    uint64_t offset; /* blocks used so far */
} hr_generator;

/* The seed a generator has before anyone seeds it (the same number PyTorch uses). */
#define HR_DEFAULT_SEED UINT64_C(67280421310721)

void hr_generator_seed(hr_generator *g, uint64_t seed);  /* key from seed, offset 0 */
void hr_generator_key(const hr_generator *g, uint32_t key[2]);
/* Reserves nblocks blocks and returns the first one's index (the old offset). */
uint64_t hr_generator_reserve(hr_generator *g, uint64_t nblocks);

/* ------------------------------------------------------------------ random fills (CPU) */

/* Each fills every element of t (any view, any dtype unless said) in place, following the
 * mapping above, and advances g. */
int hr_random_uniform_(hr_generator *g, hr_tensor *t, double a, double b);   /* float dtypes */
int hr_random_normal_(hr_generator *g, hr_tensor *t, double mean, double std); /* float dtypes */
int hr_random_randint_(hr_generator *g, hr_tensor *t, int64_t low, int64_t high); /* high exclusive */
int hr_random_randperm_(hr_generator *g, hr_tensor *t);                       /* 1-D: a permutation of 0..n-1 */
int hr_random_bernoulli_(hr_generator *g, hr_tensor *t, double p);
/* p broadcasts to t's shape; every p must be in [0, 1]. */
int hr_random_bernoulli_tensor_(hr_generator *g, hr_tensor *t, const hr_tensor *p);
/* keep = u >= p as 1/0 (dropout keeps with probability 1 - p); p in [0, 1]. */
int hr_random_dropout_mask_(hr_generator *g, hr_tensor *t, double p);

/* ------------------------------------------------------------------ CPU kernels (cpu/random.c) */

/* Contiguous outputs of n elements, starting at block `block0` of the stream with `key`.
 * Parallel over blocks with hr_parallel_for; the values do not depend on the chunking. */
/* bits: the grid of u (24 for f32, 8 for bf16, 11 for f16; see uniform_ above) */
void hr_cpu_uniform_f32(float *out, int64_t n, const uint32_t key[2], uint64_t block0, double a, double b, int bits);
void hr_cpu_uniform_f64(double *out, int64_t n, const uint32_t key[2], uint64_t block0, double a, double b);
void hr_cpu_normal_f32(float *out, int64_t n, const uint32_t key[2], uint64_t block0, double mean, double std);
void hr_cpu_normal_f64(double *out, int64_t n, const uint32_t key[2], uint64_t block0, double mean, double std);
/* range = high - low as an unsigned 64-bit number (>= 1). */
void hr_cpu_randint_i64(int64_t *out, int64_t n, const uint32_t key[2], uint64_t block0, int64_t low, uint64_t range);
void hr_cpu_randperm_i64(int64_t *out, int64_t n, const uint32_t key[2], uint64_t block0);
/* out[i] = (u_i < p[i]) (invert = false) or (u_i >= p[i]) (invert = true); p == NULL: scalar p0. */
void hr_cpu_bernoulli_u8(uint8_t *out, int64_t n, const uint32_t key[2], uint64_t block0, const double *p, double p0,
                         bool invert);
void hr_cpu_bernoulli_f32(float *out, int64_t n, const uint32_t key[2], uint64_t block0, const double *p, double p0,
                          bool invert);

#endif
