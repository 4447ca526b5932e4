/*
 * skinny_gemm.c — f32 products of a short operand with a very long one.
 *
 * The LM head multiplies the masked tokens (x, 83 x 768 on the bench batch) with the tied
 * 50272 x 768 embedding: logits = x @ Wᵀ, then in backward dx = g @ W and dW = gᵀ @ x. From 48
 * masked tokens on, matmul.c hands these products to the packed kernels (packed_gemm.c, as fast
 * on the logits and input gradient, ~30% faster on the weight gradient); these kernels serve
 * fewer tokens, where packing the long operand is repaid by too few multiply-adds. In these
 * calls OpenBLAS ran at 45-70% of the rate of the model's other GEMMs (it packs the long operand
 * on every call, and each packed element then takes part in only ~100 multiply-adds). Here one
 * register kernel, 4 rows x 24 columns (12 accumulators, a broadcast times 3 vectors per step),
 * runs over panels of the short operand or of strips of the long one, packed so that they are
 * contiguous and stay in L1:
 *   x @ Wᵀ   computed as W xᵀ: rows of W broadcast in place against panels of xᵀ (k in strips of
 *            256), each tile stored transposed into the logits;
 *   g @ W    (long k): W in strips of 256 rows, each strip packed once (rows read in order) into
 *            column panels that every row of g then passes over; partial sums added into c;
 *   gᵀ @ x   (long m): x packed whole into column panels; for each 32 rows of the output, the
 *            matching columns of g copied side by side, so the broadcasts come from a few cache
 *            lines and pages instead of one page per step.
 * Measured on the bench batch's shapes, runs alternating with OpenBLAS: ~12% less time over the
 * three calls on 1 thread, ~20% on 2. Every output element is summed by one
 * thread in a fixed order, so results do not depend on the number of threads. Needs AVX2 and FMA
 * (the build uses -march=native); elsewhere the caller keeps using BLAS.
 */
#include "skinny_gemm.h"

#include "hr_core.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

enum {
    SHORT_MAX = 256, /* the short operand: at most this many rows (m, or k for gᵀ @ x) */
    LONG_MIN = 8192, /* the long operand: at least this many rows */
    DOT_MIN_K = 64,  /* shorter dot products gain nothing over BLAS */
    DOT_MAX_K = 16384, /* the dot case packs all of xᵀ: at most 11 x 16384 x 24 floats (17 MiB) */
    TILE_ROWS = 4,   /* output rows per register tile */
    TILE_COLS = 24,  /* output columns per register tile: 3 vectors of 8 */
    PANEL_K = 256,   /* rows of a packed panel: 256 x 24 floats = 24 KiB, held in L1 */
    ROW_BLOCK = 32,  /* output rows that reuse one panel before the next panel is taken */
};

typedef enum { TILE_STORE, TILE_ADD } tile_mode;

/* out[r][0..24) = Σ_p a[r * a_row + p * a_col] * panel[p][0..24) for r < 4, p < kc: twelve
 * accumulators in named registers (arrays of vectors were kept on the stack by GCC). */
/* one row of the tile: its a value broadcast, times the three panel vectors */
#define ROW_FMA(arow, c0, c1, c2)                                                                      \
    do {                                                                                               \
        __m256 av = _mm256_broadcast_ss((arow) + off);                                                 \
        c0 = _mm256_fmadd_ps(av, b0, c0);                                                              \
        c1 = _mm256_fmadd_ps(av, b1, c1);                                                              \
        c2 = _mm256_fmadd_ps(av, b2, c2);                                                              \
    } while (0)
#define ROW_STORE(r, c0, c1, c2)                                                                       \
    do {                                                                                               \
        _mm256_storeu_ps(out + (r) * TILE_COLS, c0);                                                   \
        _mm256_storeu_ps(out + (r) * TILE_COLS + 8, c1);                                               \
        _mm256_storeu_ps(out + (r) * TILE_COLS + 16, c2);                                              \
    } while (0)

static __attribute__((noinline)) void micro_4x24(const float *a, int64_t a_row, int64_t a_col, const float *panel,
                                                 int64_t kc, float *out)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
    __m256 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
    const float *a0 = a, *a1 = a + a_row, *a2 = a + 2 * a_row, *a3 = a + 3 * a_row;
    for (int64_t p = 0; p < kc; p++) {
        const float *bp = panel + p * TILE_COLS;
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8), b2 = _mm256_load_ps(bp + 16);
        /* keeps the three panel vectors in registers: folded into each FMA as a memory operand
         * they would be loaded four times each, and the loop would wait on loads, not FMAs */
        __asm__("" : "+x"(b0), "+x"(b1), "+x"(b2));
        int64_t off = p * a_col;
        ROW_FMA(a0, c00, c01, c02);
        ROW_FMA(a1, c10, c11, c12);
        ROW_FMA(a2, c20, c21, c22);
        ROW_FMA(a3, c30, c31, c32);
    }
    ROW_STORE(0, c00, c01, c02);
    ROW_STORE(1, c10, c11, c12);
    ROW_STORE(2, c20, c21, c22);
    ROW_STORE(3, c30, c31, c32);
}
#undef ROW_FMA
#undef ROW_STORE

/* one row: the last one to three rows of a row block */
static void micro_1x24(const float *a, int64_t a_col, const float *panel, int64_t kc, float *out)
{
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0;
    for (int64_t p = 0; p < kc; p++) {
        const float *bp = panel + p * TILE_COLS;
        __m256 av = _mm256_broadcast_ss(a + p * a_col);
        c0 = _mm256_fmadd_ps(av, _mm256_load_ps(bp), c0);
        c1 = _mm256_fmadd_ps(av, _mm256_load_ps(bp + 8), c1);
        c2 = _mm256_fmadd_ps(av, _mm256_load_ps(bp + 16), c2);
    }
    _mm256_storeu_ps(out, c0);
    _mm256_storeu_ps(out + 8, c1);
    _mm256_storeu_ps(out + 16, c2);
}

/* c[r][0..ncols) for r < ni from the sums: STORE sets alpha * sum (+ beta * c when beta != 0),
 * ADD adds alpha * sum. Columns of a panel past ncols are zero padding and are not stored. */
static void store_rows(const float *sums, int ni, float *c, int64_t ldc, int ncols, tile_mode mode, float alpha,
                       float beta)
{
    if (ncols == TILE_COLS) {
        __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
        for (int r = 0; r < ni; r++) {
            float *cr = c + r * ldc;
            for (int q = 0; q < TILE_COLS; q += 8) {
                __m256 v = _mm256_mul_ps(va, _mm256_load_ps(sums + r * TILE_COLS + q));
                if (mode == TILE_ADD) v = _mm256_add_ps(_mm256_loadu_ps(cr + q), v);
                else if (beta != 0) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + q), v);
                _mm256_storeu_ps(cr + q, v);
            }
        }
        return;
    }
    for (int r = 0; r < ni; r++) {
        const float *sr = sums + r * TILE_COLS;
        float *cr = c + r * ldc;
        if (mode == TILE_ADD) {
            for (int j = 0; j < ncols; j++) cr[j] += alpha * sr[j];
        } else if (beta == 0) {
            for (int j = 0; j < ncols; j++) cr[j] = alpha * sr[j];
        } else {
            for (int j = 0; j < ncols; j++) cr[j] = alpha * sr[j] + beta * cr[j];
        }
    }
}

/* the transposed store of the dot case: c[t][j + r] for t < ncols, r < ni, from sums[r][t] */
static void store_transposed(const float *sums, int ni, float *c, int64_t ldc, int ncols, float alpha, float beta)
{
    for (int t = 0; t < ncols; t++) {
        float *ct = c + t * ldc;
        for (int r = 0; r < ni; r++) {
            float v = alpha * sums[r * TILE_COLS + t];
            ct[r] = beta == 0 ? v : v + beta * ct[r];
        }
    }
}

/* rows [i_begin, i_end) of c, all against one panel, 4 rows at a time */
static void panel_row_block(const float *a, int64_t a_row, int64_t a_col, const float *panel, int64_t kc,
                            int64_t i_begin, int64_t i_end, float *c, int64_t ldc, int ncols, tile_mode mode,
                            float alpha, float beta)
{
    _Alignas(32) float sums[TILE_ROWS * TILE_COLS];
    int64_t i = i_begin;
    for (; i + TILE_ROWS <= i_end; i += TILE_ROWS) {
        micro_4x24(a + i * a_row, a_row, a_col, panel, kc, sums);
        store_rows(sums, TILE_ROWS, c + i * ldc, ldc, ncols, mode, alpha, beta);
    }
    for (; i < i_end; i++) {
        micro_1x24(a + i * a_row, a_col, panel, kc, sums);
        store_rows(sums, 1, c + i * ldc, ldc, ncols, mode, alpha, beta);
    }
}



static int tile_width(int64_t n, int64_t j0) { return (int)(n - j0 < TILE_COLS ? n - j0 : TILE_COLS); }

typedef struct {
    const float *a, *b;
    float *c;
    int64_t m, n, k, lda, ldb;
    float alpha, beta;
    float *packed; /* panels: of x (long m), of xᵀ (dot), of a 256-row strip of W (long k) */
} skinny_job;

/* gᵀ @ x: c (m x n, m long) = alpha * aᵀ b + beta * c, a stored k x m, b = x (k x n) packed whole
 * into column-tile panels; row blocks [begin, end) of ROW_BLOCK rows, each block's columns of a
 * first copied side by side (k x 32 floats) so that its broadcasts come from a few cache lines and
 * pages instead of one page per p */
static void long_m_range(void *ctx, int64_t begin, int64_t end)
{
    const skinny_job *s = ctx;
    int64_t tiles = (s->n + TILE_COLS - 1) / TILE_COLS;
    float *a_block = malloc((size_t)(s->k * ROW_BLOCK) * sizeof(float));
    for (int64_t blk = begin; blk < end; blk++) {
        int64_t i0 = blk * ROW_BLOCK, i1 = i0 + ROW_BLOCK < s->m ? i0 + ROW_BLOCK : s->m;
        const float *a = s->a + i0;
        int64_t a_col = s->lda;
        if (a_block) {
            for (int64_t p = 0; p < s->k; p++) memcpy(a_block + p * ROW_BLOCK, s->a + p * s->lda + i0, (size_t)(i1 - i0) * sizeof(float));
            a = a_block;
            a_col = ROW_BLOCK;
        }
        for (int64_t q = 0; q < tiles; q++) {
            panel_row_block(a, 1, a_col, s->packed + q * s->k * TILE_COLS, s->k, 0, i1 - i0,
                            s->c + i0 * s->n + q * TILE_COLS, s->n, tile_width(s->n, q * TILE_COLS), TILE_STORE,
                            s->alpha, s->beta);
        }
    }
    free(a_block);
}

/* g @ W: c (m x n, m short) = alpha * a b + beta * c, k long. For each strip of 256 rows of W, this
 * thread's column tiles [begin, end) are packed (reading each row once, in order), then every row
 * of c passes over each tile's panel (24 KiB, in L1). */
static void long_k_range(void *ctx, int64_t begin, int64_t end)
{
    const skinny_job *s = ctx;
    for (int64_t p0 = 0; p0 < s->k; p0 += PANEL_K) {
        int64_t kc = s->k - p0 < PANEL_K ? s->k - p0 : PANEL_K;
        for (int64_t p = 0; p < kc; p++) {
            const float *row = s->b + (p0 + p) * s->ldb;
            for (int64_t q = begin; q < end; q++) {
                int ncols = tile_width(s->n, q * TILE_COLS);
                float *dst = s->packed + (q * PANEL_K + p) * TILE_COLS;
                memcpy(dst, row + q * TILE_COLS, (size_t)ncols * sizeof(float));
                for (int j = ncols; j < TILE_COLS; j++) dst[j] = 0;
            }
        }
        for (int64_t q = begin; q < end; q++) {
            panel_row_block(s->a + p0, s->lda, 1, s->packed + q * PANEL_K * TILE_COLS, kc, 0, s->m,
                            s->c + q * TILE_COLS, s->n, tile_width(s->n, q * TILE_COLS),
                            p0 == 0 ? TILE_STORE : TILE_ADD, s->alpha, p0 == 0 ? s->beta : 1);
        }
    }
}

/* x @ Wᵀ, computed as W xᵀ: 4 rows of W broadcast against a panel of xᵀ, k in strips of 256
 * (panel 24 KiB and the 4 rows' strips in L1), each tile added transposed into c; row blocks
 * [begin, end) of W */
static void dot_range(void *ctx, int64_t begin, int64_t end)
{
    const skinny_job *s = ctx;
    int64_t tiles = (s->m + TILE_COLS - 1) / TILE_COLS;
    _Alignas(32) float sums[TILE_ROWS * TILE_COLS];
    for (int64_t blk = begin; blk < end; blk++) {
        int64_t j0 = blk * ROW_BLOCK, j1 = j0 + ROW_BLOCK < s->n ? j0 + ROW_BLOCK : s->n;
        for (int64_t p0 = 0; p0 < s->k; p0 += PANEL_K) {
            int64_t kc = s->k - p0 < PANEL_K ? s->k - p0 : PANEL_K;
            float beta = p0 == 0 ? s->beta : 1;
            for (int64_t q = 0; q < tiles; q++) {
                const float *panel = s->packed + (q * s->k + p0) * TILE_COLS;
                int ncols = tile_width(s->m, q * TILE_COLS);
                float *cq = s->c + q * TILE_COLS * s->n;
                int64_t j = j0;
                for (; j + TILE_ROWS <= j1; j += TILE_ROWS) {
                    micro_4x24(s->b + j * s->ldb + p0, s->ldb, 1, panel, kc, sums);
                    store_transposed(sums, TILE_ROWS, cq + j, s->n, ncols, s->alpha, beta);
                }
                for (; j < j1; j++) {
                    micro_1x24(s->b + j * s->ldb + p0, 1, panel, kc, sums);
                    store_transposed(sums, 1, cq + j, s->n, ncols, s->alpha, beta);
                }
            }
        }
    }
}

/* packed[q][p][t] = a[(24 q + t) * lda + p]: xᵀ in column-tile panels, zero past m */
static void pack_transposed(float *packed, const float *a, int64_t lda, int64_t m, int64_t k)
{
    for (int64_t q = 0; q * TILE_COLS < m; q++) {
        int ncols = tile_width(m, q * TILE_COLS);
        float *panel = packed + q * k * TILE_COLS;
        for (int64_t p = 0; p < k; p++)
            for (int t = 0; t < TILE_COLS; t++) panel[p * TILE_COLS + t] = t < ncols ? a[(q * TILE_COLS + t) * lda + p] : 0;
    }
}

/* packed[q][p][j] = b[p * ldb + 24 q + j]: x in column-tile panels, zero past n */
static void pack_rows_whole(float *packed, const float *b, int64_t ldb, int64_t k, int64_t n)
{
    for (int64_t q = 0; q * TILE_COLS < n; q++) {
        int ncols = tile_width(n, q * TILE_COLS);
        for (int64_t p = 0; p < k; p++) {
            float *dst = packed + (q * k + p) * TILE_COLS;
            memcpy(dst, b + p * ldb + q * TILE_COLS, (size_t)ncols * sizeof(float));
            for (int j = ncols; j < TILE_COLS; j++) dst[j] = 0;
        }
    }
}

bool hr_skinny_sgemm(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                     int64_t lda, const float *b, int64_t ldb, float beta, float *c)
{
    skinny_job s = {.a = a, .b = b, .c = c, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .alpha = alpha,
                    .beta = beta};
    if (m < 1 || n < 1 || k < 1) return false;
    int64_t short_tiles, grain;
    hr_parallel_fn run;
    size_t packed_floats;
    if (!a_trans && b_trans && m <= SHORT_MAX && n >= LONG_MIN && k >= DOT_MIN_K && k <= DOT_MAX_K) {
        short_tiles = (m + TILE_COLS - 1) / TILE_COLS;
        packed_floats = (size_t)(short_tiles * k * TILE_COLS);
        run = dot_range;
        grain = 4;
    } else if (!b_trans && !a_trans && m <= SHORT_MAX && k >= LONG_MIN) {
        short_tiles = (n + TILE_COLS - 1) / TILE_COLS;
        packed_floats = (size_t)(short_tiles * PANEL_K * TILE_COLS);
        run = long_k_range;
        grain = 1;
    } else if (!b_trans && a_trans && k <= SHORT_MAX && m >= LONG_MIN) {
        short_tiles = (n + TILE_COLS - 1) / TILE_COLS;
        packed_floats = (size_t)(short_tiles * k * TILE_COLS);
        run = long_m_range;
        grain = 8;
    } else {
        return false;
    }
    s.packed = hr_alloc_bytes(packed_floats * sizeof(float));
    if (!s.packed) return false; /* BLAS needs no scratch of ours */
    if (run == dot_range) {
        pack_transposed(s.packed, a, lda, m, k);
        hr_parallel_for((n + ROW_BLOCK - 1) / ROW_BLOCK, grain, run, &s);
    } else if (run == long_m_range) {
        pack_rows_whole(s.packed, b, ldb, k, n);
        hr_parallel_for((m + ROW_BLOCK - 1) / ROW_BLOCK, grain, run, &s);
    } else {
        hr_parallel_for(short_tiles, grain, run, &s);
    }
    hr_free_bytes(s.packed, packed_floats * sizeof(float));
    return true;
}

#else /* no AVX2/FMA: BLAS does it all */

bool hr_skinny_sgemm(bool a_trans, bool b_trans, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                     int64_t lda, const float *b, int64_t ldb, float beta, float *c)
{
    (void)a_trans, (void)b_trans, (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)lda, (void)b, (void)ldb;
    (void)beta, (void)c;
    return false;
}

#endif
