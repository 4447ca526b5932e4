/*
 * packed_gemm.c — f32 matrix products for the transformer's GEMMs on AVX2/FMA CPUs.
 *
 * A HERO step is ~90% matrix products of a few hundred rows by 768..3072 columns (projections and
 * MLPs, their input and weight gradients). OpenBLAS runs each of them at close to the cores' peak
 * on one thread, but on two its kernels need ~13% more CPU time for the same products (60-row
 * products hardly gain at all), and it packs the LM head's 50272-row operands at a loss. Here the
 * classic layered algorithm (Goto/van de Geijn) is written out for these sizes; on one thread it
 * runs at OpenBLAS's rate (its register kernel at ~94% of the measured FMA peak), on two faster:
 *
 *   for each block of NC columns:                    B block (KC x NC) packed, kept in L2/L3
 *                                                    (a transposed B with <= 702 rows: per panel,
 *                                                    gemm_block_wide)
 *     for each block of KC of the inner dimension:
 *       for each block of MC rows:                   A block (MC x KC) packed, kept in L2
 *         for each 16-column panel of the B block:   the panel (KC x 16, 16 KiB) stays in L1
 *           for each 6-row panel of the A block:     6 x 16 register tile (12 accumulators)
 *
 * Packing copies both operands, whatever their strides (plain, transposed), into panels read
 * strictly in order: a transposed weight is packed with 8 x 8 register transposes. On several
 * threads the operand shared by all parts is packed once, and blocks of output columns (or rows,
 * whichever shares the smaller operand) are dealt to whichever thread is free (run_dealt). The
 * inner dimension is always cut at the same multiples of KC and summed in order, so every
 * element's value is the same on 1 or N threads and wherever its tile falls.
 * Partial tiles (at the right and bottom edges) are computed from zero-padded panels into a
 * scratch tile and copied out with the same arithmetic as whole tiles.
 */
#include "packed_gemm.h"

#include "hr_core.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum {
    MR = 6,    /* rows of the register tile */
    NR = 16,   /* columns of the register tile: two vectors of 8 */
    KC = 256,  /* inner-dimension block: a B panel is KC x NR floats = 16 KiB, in L1 */
    MC = 144,  /* row block: the packed A block is MC x KC floats = 144 KiB, in L2 */
    /* column block: the packed B block is at most KC x NC floats = 1 MiB. Products 3072 columns
     * wide with a plain B (gradients of the MLP) ran 5-7% faster with 768..1536 than with 3072,
     * timed interleaved call by call on one thread; fewer columns pack A more often */
    NC = 1024,
    /* up to this many rows, a transposed B is packed one 16-column panel at a time, used at once
     * by every row (the packed A strip, up to 702 x KC floats = 702 KiB, stays in L2 where it
     * fits; on a 512 KiB L2 it streams from L3, and KC = 128..192 measured no faster) */
    MC_WIDE = 702, /* a multiple of MR: the packed strip fills whole panels */
    /* smaller products (attention heads, 33-row subtitles) stay with BLAS; from 48 rows on (the
     * temporal transformer's 60 frames) packing both operands still pays on 2 threads and costs
     * nothing measurable on 1 */
    MIN_M = 48,
    DEEP_A_FLOATS = 1 << 20, /* 4 MiB: A packed whole for gemm_block_deep */
    MIN_N = 64,
    MIN_K = 32,
};

_Static_assert(MC % MR == 0 && MC_WIDE % MR == 0, "row blocks hold whole 6-row panels");

typedef enum {
    TILE_SET,   /* c = alpha * acc (first inner block, beta == 0: c is not read) */
    TILE_BIAS,  /* c = alpha * acc + bias[j] (first inner block of a product with a bias row) */
    TILE_SCALE, /* c = alpha * acc + beta * c (first inner block) */
    TILE_ADD,   /* c = alpha * acc + c (later inner blocks) */
} tile_mode;

/* one row of the tile: the row's packed A value broadcast, times the two B vectors */
#define ROW_FMA(pa_, r, x0, x1)                                                                        \
    do {                                                                                               \
        __m256 av = _mm256_broadcast_ss((pa_) + (r));                                                  \
        x0 = _mm256_fmadd_ps(av, b0, x0);                                                              \
        x1 = _mm256_fmadd_ps(av, b1, x1);                                                              \
    } while (0)

/* one step of the inner dimension: the B panel's row u against the A panel's column u */
#define K_STEP(u)                                                                                      \
    do {                                                                                               \
        __m256 b0 = _mm256_load_ps(pb + (u) * NR), b1 = _mm256_load_ps(pb + (u) * NR + 8);             \
        /* keeps both B vectors in registers: folded into the FMAs as memory operands they would be    \
         * loaded six times each and the loop would wait on loads instead of multiply-adds */          \
        __asm__("" : "+x"(b0), "+x"(b1));                                                              \
        ROW_FMA(pa + (u) * MR, 0, c00, c01);                                                           \
        ROW_FMA(pa + (u) * MR, 1, c10, c11);                                                           \
        ROW_FMA(pa + (u) * MR, 2, c20, c21);                                                           \
        ROW_FMA(pa + (u) * MR, 3, c30, c31);                                                           \
        ROW_FMA(pa + (u) * MR, 4, c40, c41);                                                           \
        ROW_FMA(pa + (u) * MR, 5, c50, c51);                                                           \
    } while (0)

/* vbias: the bias of the vector's 8 columns (TILE_BIAS only) */
static inline __m256 tile_out(__m256 acc, const float *c, __m256 va, __m256 vb, __m256 vbias, tile_mode mode)
{
    if (mode == TILE_SET) return _mm256_mul_ps(va, acc);
    if (mode == TILE_BIAS) return _mm256_fmadd_ps(va, acc, vbias);
    if (mode == TILE_ADD) return _mm256_fmadd_ps(va, acc, _mm256_loadu_ps(c));
    return _mm256_fmadd_ps(va, acc, _mm256_mul_ps(vb, _mm256_loadu_ps(c)));
}

#define ROW_OUT(r, x0, x1)                                                                             \
    do {                                                                                               \
        float *cr = c + (r) * ldc;                                                                     \
        _mm256_storeu_ps(cr, tile_out(x0, cr, va, vb, vbias0, mode));                                  \
        _mm256_storeu_ps(cr + 8, tile_out(x1, cr + 8, va, vb, vbias1, mode));                          \
    } while (0)

/* The 6 x 16 tile at c (row stride ldc) from a packed A panel (kc x 6) and B panel (kc x 16);
 * twelve accumulators in named registers (arrays of vectors were kept on the stack by GCC).
 * bias: the tile's 16 columns of the bias row (read in TILE_BIAS mode only). */
static __attribute__((noinline)) void kernel_6x16(int64_t kc, const float *restrict pa, const float *restrict pb,
                                                  float *restrict c, int64_t ldc, float alpha, float beta,
                                                  const float *bias, tile_mode mode)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int r = 0; r < MR; r++) { /* the tile's rows are written at the end: fetch them meanwhile */
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + NR - 1), _MM_HINT_T0);
    }
    /* no software prefetch of the A panel: it streams in order and the hardware prefetcher keeps
     * up (a prefetch per 4 steps measured 1-3% slower) */
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        K_STEP(0);
        K_STEP(1);
        K_STEP(2);
        K_STEP(3);
        pa += 4 * MR;
        pb += 4 * NR;
    }
    for (; p < kc; p++) {
        K_STEP(0);
        pa += MR;
        pb += NR;
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta), vbias0 = vb, vbias1 = vb;
    if (mode == TILE_BIAS) {
        vbias0 = _mm256_loadu_ps(bias);
        vbias1 = _mm256_loadu_ps(bias + 8);
    }
    ROW_OUT(0, c00, c01);
    ROW_OUT(1, c10, c11);
    ROW_OUT(2, c20, c21);
    ROW_OUT(3, c30, c31);
    ROW_OUT(4, c40, c41);
    ROW_OUT(5, c50, c51);
}

/* A tile at the bottom or right edge (mr <= 6 rows, nr <= 16 columns): the whole tile into
 * scratch, then its valid part out with the arithmetic of tile_out. */
static void edge_tile(int64_t kc, const float *pa, const float *pb, float *c, int64_t ldc, int64_t mr, int64_t nr,
                      float alpha, float beta, const float *bias, tile_mode mode)
{
    float t[MR * NR] __attribute__((aligned(32)));
    kernel_6x16(kc, pa, pb, t, NR, 1.0f, 0.0f, NULL, TILE_SET);
    for (int64_t i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        const float *ti = t + i * NR;
        for (int64_t j = 0; j < nr; j++) {
            if (mode == TILE_SET) ci[j] = alpha * ti[j];
            else if (mode == TILE_BIAS) ci[j] = fmaf(alpha, ti[j], bias[j]);
            else if (mode == TILE_ADD) ci[j] = fmaf(alpha, ti[j], ci[j]);
            else ci[j] = fmaf(alpha, ti[j], beta * ci[j]);
        }
    }
}

/* In-register transpose of eight 8-float rows. */
static inline void transpose_8x8(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* Packs rows [0, mc) x inner [0, kc) of A (A(i, p) = a[i * rs + p * cs]) into panels of MR rows:
 * panel q holds A(q*MR + i, p) at [q][p][i]; rows past mc are zero. */
static void pack_a(const float *a, int64_t rs, int64_t cs, int64_t mc, int64_t kc, float *dst)
{
    for (int64_t i0 = 0; i0 < mc; i0 += MR, dst += kc * MR) {
        int64_t mr = mc - i0 < MR ? mc - i0 : MR;
        const float *src = a + i0 * rs;
        int64_t p = 0;
        if (mr == MR && cs == 1) { /* rows contiguous along p: 6 rows x 8 steps transposed at once */
            for (; p + 8 <= kc; p += 8) {
                __m256 r[8];
                for (int i = 0; i < MR; i++) r[i] = _mm256_loadu_ps(src + i * rs + p);
                r[6] = r[7] = _mm256_setzero_ps();
                transpose_8x8(r);
                /* 8 floats stored for 6: each store's last two are overwritten by the next one
                 * (masked stores are slow on AMD); the last step stores exactly 4 + 2 */
                for (int q = 0; q < 7; q++) _mm256_storeu_ps(dst + (p + q) * MR, r[q]);
                _mm_storeu_ps(dst + (p + 7) * MR, _mm256_castps256_ps128(r[7]));
                _mm_storel_pi((__m64 *)(dst + (p + 7) * MR + 4), _mm256_extractf128_ps(r[7], 1));
            }
        } else if (mr == MR && rs == 1) { /* columns contiguous: 6 floats per step */
            for (; p < kc; p++) memcpy(dst + p * MR, src + p * cs, MR * sizeof(float));
        }
        for (; p < kc; p++) {
            for (int64_t i = 0; i < mr; i++) dst[p * MR + i] = src[i * rs + p * cs];
            for (int64_t i = mr; i < MR; i++) dst[p * MR + i] = 0.0f;
        }
    }
}

/* Packs inner [0, kc) x columns [0, nc) of B (B(p, j) = b[p * rs + j * cs]) into panels of NR
 * columns: panel q holds B(p, q*NR + j) at [q][p][j]; columns past nc are zero. */
static void pack_b(const float *b, int64_t rs, int64_t cs, int64_t kc, int64_t nc, float *dst)
{
    if (cs == 1) { /* rows contiguous: each row read once, in order, its 16-float pieces to the panels */
        int64_t full = nc / NR;
        for (int64_t p = 0; p < kc; p++) {
            const float *row = b + p * rs;
            float *d = dst + p * NR;
            for (int64_t q = 0; q < full; q++, d += kc * NR) {
                _mm256_store_ps(d, _mm256_loadu_ps(row + q * NR));
                _mm256_store_ps(d + 8, _mm256_loadu_ps(row + q * NR + 8));
            }
        }
    }
    for (int64_t j0 = 0; j0 < nc; j0 += NR, dst += kc * NR) {
        int64_t nr = nc - j0 < NR ? nc - j0 : NR;
        const float *src = b + j0 * cs;
        int64_t p = 0;
        if (nr == NR && cs == 1) /* packed above, row by row across all panels */
            continue;
        if (nr == NR && rs == 1) { /* a transposed operand (a weight in x @ Wᵀ): 8 x 8 blocks */
            for (; p + 8 <= kc; p += 8) {
                for (int h = 0; h < 2; h++) {
                    __m256 r[8];
                    for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_ps(src + (h * 8 + j) * cs + p);
                    transpose_8x8(r);
                    for (int q = 0; q < 8; q++) _mm256_store_ps(dst + (p + q) * NR + h * 8, r[q]);
                }
            }
        }
        for (; p < kc; p++) {
            for (int64_t j = 0; j < nr; j++) dst[p * NR + j] = src[p * rs + j * cs];
            for (int64_t j = nr; j < NR; j++) dst[p * NR + j] = 0.0f;
        }
    }
}

typedef struct {
    int64_t m, n, k;
    float alpha, beta;
    const float *a, *b;
    const float *bias; /* n values added to every row, or NULL */
    int64_t a_rs, a_cs, b_rs, b_cs;
    float *c;
    int64_t ldc;
    /* Either operand may be packed beforehand for the whole inner dimension (NULL: packed block
     * by block into a part's scratch): the block of KC starting at pc holds all rows of A at
     * packed_a + (pc / KC) * m_pad * KC (row i's panel at + i * kc), and all columns of B at
     * packed_b + (pc / KC) * n_pad * KC (column j's panel at + j * kc). */
    const float *packed_a, *packed_b;
    int64_t m_pad, n_pad;
} gemm_job;

/* The length of the block at `at` of a dimension of `total`, in blocks of `block`. */
static inline int64_t block_len(int64_t total, int64_t at, int64_t block)
{
    return total - at < block ? total - at : block;
}

/* How a tile's sums over the inner block starting at pc reach c. */
static inline tile_mode inner_block_mode(const gemm_job *g, int64_t pc)
{
    return pc > 0 ? TILE_ADD : g->bias ? TILE_BIAS : g->beta == 0.0f ? TILE_SET : TILE_SCALE;
}

/* Rows [i0, i0 + mc) x inner block [pc, pc + kc) of A as packed panels: the job's packed copy,
 * or packed now into scratch. */
static const float *a_block(const gemm_job *g, int64_t i0, int64_t mc, int64_t pc, int64_t kc, float *scratch)
{
    if (g->packed_a) return g->packed_a + (pc / KC) * g->m_pad * KC + i0 * kc;
    pack_a(g->a + i0 * g->a_rs + pc * g->a_cs, g->a_rs, g->a_cs, mc, kc, scratch);
    return scratch;
}

/* Inner block [pc, pc + kc) x columns [j0, j0 + nc) of B as packed panels, likewise. */
static const float *b_block(const gemm_job *g, int64_t pc, int64_t kc, int64_t j0, int64_t nc, float *scratch)
{
    if (g->packed_b) return g->packed_b + (pc / KC) * g->n_pad * KC + j0 * kc;
    pack_b(g->b + pc * g->b_rs + j0 * g->b_cs, g->b_rs, g->b_cs, kc, nc, scratch);
    return scratch;
}

/* One packed B panel (kc x nr, nr <= 16) times the mc rows of the packed A block: the output
 * column strip of width nr whose first row is at c and first column is column j of the product. */
static void panel_times_rows(const gemm_job *g, int64_t kc, const float *pa, int64_t mc, const float *panel_b,
                             int64_t nr, float *c, int64_t j, tile_mode mode)
{
    const float *bias = g->bias ? g->bias + j : NULL;
    for (int64_t ir = 0; ir < mc; ir += MR) {
        int64_t mr = mc - ir < MR ? mc - ir : MR;
        float *tile = c + ir * g->ldc;
        if (mr == MR && nr == NR)
            kernel_6x16(kc, pa + ir * kc, panel_b, tile, g->ldc, g->alpha, g->beta, bias, mode);
        else
            edge_tile(kc, pa + ir * kc, panel_b, tile, g->ldc, mr, nr, g->alpha, g->beta, bias, mode);
    }
}

/* Whether c[i0:i1, :] is computed a B panel at a time (gemm_block_wide). */
static bool wide_rows(const gemm_job *g, int64_t i0, int64_t i1)
{
    /* a plain B (rows contiguous) packs cheaply in whole blocks, and measured ~2% slower per panel */
    return i1 - i0 <= MC_WIDE && g->b_cs != 1 && !g->packed_b;
}

/* Floats of A packed for its whole inner dimension (gemm_block_deep), rows rounded up to MR. */
static inline size_t deep_a_floats(int64_t rows, int64_t k)
{
    return (size_t)((rows + MR - 1) / MR * MR) * (size_t)((k + KC - 1) / KC * KC);
}

/* Whether wide rows c[i0:i1, :] run B panel first (gemm_block_deep): on one thread (the parts
 * of several threads read a shared packed A, gemm_block_wide), A small enough to pack whole. */
static bool deep_rows(const gemm_job *g, int64_t i0, int64_t i1)
{
    return !g->packed_a && deep_a_floats(i1 - i0, g->k) <= DEEP_A_FLOATS;
}

/* c[i0:i1, j0:j1] of the job's product for at most MC_WIDE rows: per KC block, all rows of A
 * packed once, then each B panel packed into an L1-sized buffer and run against every row panel
 * at once. Packing a transposed B (a weight in x @ Wᵀ) as whole blocks wrote up to 3 MiB that the
 * kernels then read back from L3 once per MC rows; this way each panel is written and read while
 * in L1 (~4% faster for the transformer's 660-row forward products on one thread). The sums are
 * the same as gemm_block's, in the same order. */
static void gemm_block_wide(const gemm_job *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float *pa, float *pb)
{
    for (int64_t pc = 0; pc < g->k; pc += KC) {
        int64_t kc = block_len(g->k, pc, KC);
        const float *rows = a_block(g, i0, i1 - i0, pc, kc, pa);
        for (int64_t jr = j0; jr < j1; jr += NR) {
            pack_b(g->b + pc * g->b_rs + jr * g->b_cs, g->b_rs, g->b_cs, kc, block_len(j1, jr, NR), pb);
            panel_times_rows(g, kc, rows, i1 - i0, pb, block_len(j1, jr, NR), g->c + i0 * g->ldc + jr, jr,
                             inner_block_mode(g, pc));
        }
    }
}

/* As gemm_block_wide, with the B panel outermost, on one thread when all of A's rows for the
 * whole inner dimension fit in DEEP_A_FLOATS (pa: deep_a_floats): A packed once, then each panel
 * of B packed and run inner block after inner block while its output strip stays in cache. A
 * column of B is read whole at once instead of a KC piece per pass over B, and the output is
 * not passed over once per inner block (the LM head's 83 x 50272 output is 16 MiB). Timed in one
 * process, switched call by call: the LM head's forward 3-10% faster, 660 x 768 x 3072 2-3%,
 * while 660 rows x 3072 deep (an 8 MiB A) ran 8% slower: hence the limit. Same sums, same order. */
static void gemm_block_deep(const gemm_job *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float *pa, float *pb)
{
    int64_t mc = i1 - i0, mc_pad = (mc + MR - 1) / MR * MR; /* inner block pc at pa + mc_pad * pc */
    for (int64_t pc = 0; pc < g->k; pc += KC)
        a_block(g, i0, mc, pc, block_len(g->k, pc, KC), pa + mc_pad * pc);
    for (int64_t jr = j0; jr < j1; jr += NR) {
        int64_t nr = block_len(j1, jr, NR);
        for (int64_t pc = 0; pc < g->k; pc += KC) {
            int64_t kc = block_len(g->k, pc, KC);
            pack_b(g->b + pc * g->b_rs + jr * g->b_cs, g->b_rs, g->b_cs, kc, nr, pb);
            panel_times_rows(g, kc, pa + mc_pad * pc, mc, pb, nr, g->c + i0 * g->ldc + jr, jr, inner_block_mode(g, pc));
        }
    }
}

/* c[i0:i1, j0:j1] of the job's product, with this part's scratch (pa: MC_WIDE x KC floats, pb:
 * KC x the part's columns rounded up to NR, at most NC; each unused for an operand packed
 * beforehand). */
static void gemm_block(const gemm_job *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1, float *pa, float *pb)
{
    if (wide_rows(g, i0, i1)) {
        if (deep_rows(g, i0, i1)) gemm_block_deep(g, i0, i1, j0, j1, pa, pb);
        else gemm_block_wide(g, i0, i1, j0, j1, pa, pb);
        return;
    }
    for (int64_t jc = j0; jc < j1; jc += NC) {
        int64_t nc = j1 - jc < NC ? j1 - jc : NC;
        for (int64_t pc = 0; pc < g->k; pc += KC) {
            int64_t kc = block_len(g->k, pc, KC);
            tile_mode mode = inner_block_mode(g, pc);
            const float *cols = b_block(g, pc, kc, jc, nc, pb);
            for (int64_t ic = i0; ic < i1; ic += MC) {
                int64_t mc = i1 - ic < MC ? i1 - ic : MC;
                const float *rows = a_block(g, ic, mc, pc, kc, pa);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    int64_t nr = nc - jr < NR ? nc - jr : NR;
                    panel_times_rows(g, kc, rows, mc, cols + jr * kc, nr, g->c + ic * g->ldc + jc + jr, jc + jr, mode);
                }
            }
        }
    }
}

/*
 * On several threads a product is cut into more parts than threads, dealt to whichever thread is
 * free (hr_parallel_deal). One part per thread, fixed in advance, left every product waiting for
 * its slowest thread: ~4% of a two-thread training step went to the caller waiting at the end
 * of products, on a shared machine where a thread is often held up for a while. Parts shrink
 * as the product goes on (each a 1/(2 x threads) share of what is left, as guided
 * self-scheduling does), so that the last ones, whose end the others wait for, are small.
 * The operand that every part needs (A when parts are column blocks, B when row blocks) is
 * packed once beforehand, in parallel, instead of once per part.
 */
enum {
    MAX_PARTS = 256,
    MIN_COL_PART = 2, /* 16-column panels: a part runs all rows against them */
    MIN_ROW_PART = 4, /* 6-row panels */
    PACK_GROUP = MC / MR, /* panels of the shared operand packed per piece */
    MIN_PARALLEL_UNITS = 8, /* column or row panels of the smallest product run on several threads */
};
#define SHARED_CACHED ((size_t)4 << 20) /* bytes of a packed shared operand that stay in L3 */

typedef struct {
    gemm_job *g;
    bool split_cols;    /* parts are column blocks (else row blocks) */
    int64_t unit;       /* NR columns or MR rows */
    int64_t bounds[MAX_PARTS + 1]; /* part i: units [bounds[i], bounds[i + 1]) */
    float *scratch;     /* per pool slot: slot_floats */
    size_t slot_floats;
    int64_t pack_groups; /* shared operand packing: pieces of PACK_GROUP panels per KC block */
} dealt_job;

/* hr_parallel_deal body: packs piece i of the shared operand (its KC block, then its panels). */
static void pack_shared_piece(void *ctx, int64_t begin, int64_t end)
{
    const dealt_job *d = ctx;
    const gemm_job *g = d->g;
    for (int64_t piece = begin; piece < end; piece++) {
        int64_t pc = piece / d->pack_groups * KC, kc = block_len(g->k, pc, KC);
        if (d->split_cols) {
            int64_t i0 = piece % d->pack_groups * PACK_GROUP * MR;
            pack_a(g->a + i0 * g->a_rs + pc * g->a_cs, g->a_rs, g->a_cs, block_len(g->m, i0, PACK_GROUP * MR), kc,
                   (float *)g->packed_a + (pc / KC) * g->m_pad * KC + i0 * kc);
        } else {
            int64_t j0 = piece % d->pack_groups * PACK_GROUP * NR;
            pack_b(g->b + pc * g->b_rs + j0 * g->b_cs, g->b_rs, g->b_cs, kc, block_len(g->n, j0, PACK_GROUP * NR),
                   (float *)g->packed_b + (pc / KC) * g->n_pad * KC + j0 * kc);
        }
    }
}

/* hr_parallel_deal body: computes part i of the output with the calling thread's scratch. */
static void compute_part(void *ctx, int64_t begin, int64_t end)
{
    const dealt_job *d = ctx;
    const gemm_job *g = d->g;
    float *scratch = d->scratch + (size_t)hr_parallel_slot() * d->slot_floats;
    for (int64_t part = begin; part < end; part++) {
        int64_t lo = d->bounds[part] * d->unit, hi = d->bounds[part + 1] * d->unit;
        /* one scratch for the operand packed part by part: B (column parts) or A (row parts) */
        if (d->split_cols) gemm_block(g, 0, g->m, lo, hi < g->n ? hi : g->n, NULL, scratch);
        else gemm_block(g, lo, hi < g->m ? hi : g->m, 0, g->n, scratch, NULL);
    }
}

/* Cuts `units` into shrinking parts of at least `least` units; returns the number of parts. */
static int64_t plan_parts(int64_t units, int64_t least, int threads, int64_t bounds[MAX_PARTS + 1])
{
    int64_t parts = 0;
    for (int64_t at = 0; at < units; parts++) {
        int64_t size = (units - at + 2 * threads - 1) / (2 * threads);
        if (size < least) size = least;
        if (parts == MAX_PARTS - 1 || size > units - at) size = units - at;
        bounds[parts] = at;
        at += size;
    }
    bounds[parts] = units;
    return parts;
}

/*
 * Packing buffers are kept per thread from one product to the next, up to KEEP_SCRATCH bytes.
 * Taken from the tensor allocator for every product, buffers of a few hundred KiB to a few MiB
 * whose sizes change from call to call had their pages split off cached blocks and put together
 * again each time: for the 120 x 64 x 128 products of a small model, a quarter of a linear layer's
 * forward and backward went to the kernel (mremap, munmap, page faults), and the packed kernels
 * took 144 us where OpenBLAS took 85. Bigger buffers (a shared operand packed whole, such as the
 * LM head's) still come from the allocator, as does one asked for while the thread's is in use.
 */
#define KEEP_SCRATCH ((size_t)6 << 20)

typedef struct {
    float *p;
    size_t bytes;
    bool busy;
} kept_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_key_once = PTHREAD_ONCE_INIT;
static bool scratch_key_ok;

static void scratch_release(void *s)
{
    kept_scratch *k = s;
    free(k->p);
    free(k);
}

static void scratch_key_make(void) { scratch_key_ok = pthread_key_create(&scratch_key, scratch_release) == 0; }

/* The calling thread's kept buffer of at least `bytes` (grown when smaller), marked busy; NULL when
 * it cannot serve (too big, busy, or no memory): the caller then uses the allocator. */
static float *scratch_keep(size_t bytes)
{
    if (bytes > KEEP_SCRATCH) return NULL;
    pthread_once(&scratch_key_once, scratch_key_make);
    if (!scratch_key_ok) return NULL;
    kept_scratch *k = pthread_getspecific(scratch_key);
    if (!k) {
        if (!(k = calloc(1, sizeof *k))) return NULL;
        if (pthread_setspecific(scratch_key, k) != 0) {
            free(k);
            return NULL;
        }
    }
    if (k->busy) return NULL;
    if (k->bytes < bytes) {
        size_t want = (bytes + 4095) & ~(size_t)4095;
        void *p = NULL;
        if (posix_memalign(&p, 64, want) != 0) return NULL;
        free(k->p);
        k->p = p;
        k->bytes = want;
    }
    k->busy = true;
    return k->p;
}

/* Packing scratch of `bytes`: the thread's kept buffer when it can serve, else the allocator's.
 * NULL (error cleared) when neither has the memory. */
static float *scratch_take(size_t bytes)
{
    float *p = scratch_keep(bytes);
    if (p) return p;
    p = hr_alloc_bytes(bytes);
    if (!p) hr_clear_error();
    return p;
}

static void scratch_give(float *p, size_t bytes)
{
    kept_scratch *k = scratch_key_ok ? pthread_getspecific(scratch_key) : NULL;
    if (k && k->busy && p == k->p) k->busy = false;
    else hr_free_bytes(p, bytes);
}

/* The job on `threads` threads; false when its buffers cannot be had. */
static bool run_dealt(gemm_job *g, int threads)
{
    dealt_job d = {.g = g, .split_cols = g->m <= g->n};
    d.unit = d.split_cols ? NR : MR;
    int64_t units = d.split_cols ? (g->n + NR - 1) / NR : (g->m + MR - 1) / MR;
    int64_t kblocks = (g->k + KC - 1) / KC;
    g->m_pad = (g->m + MR - 1) / MR * MR;
    g->n_pad = (g->n + NR - 1) / NR * NR;
    size_t shared_floats = (size_t)kblocks * KC * (size_t)(d.split_cols ? g->m_pad : g->n_pad);
    /* every part reads all of the shared operand: past SHARED_CACHED bytes it comes from memory
     * each time, so one part per thread (the LM head's input gradient, 83 x 50272 times
     * 50272 x 768, took 55-70 ms on two threads in shrinking parts, 50-55 ms in two halves) */
    int64_t least = d.split_cols ? MIN_COL_PART : MIN_ROW_PART;
    if (shared_floats * sizeof(float) > SHARED_CACHED && least < units / threads) least = units / threads;
    int64_t parts = plan_parts(units, least, threads, d.bounds);
    if (d.split_cols) { /* B: a panel at a time, or a block of the widest part's columns */
        int64_t cols = d.bounds[1] * NR < NC ? d.bounds[1] * NR : NC;
        d.slot_floats = wide_rows(g, 0, g->m) ? (size_t)KC * NR : (size_t)KC * (size_t)cols;
    } else { /* A: MC rows */
        d.slot_floats = (size_t)MC * KC;
    }
    size_t bytes = (shared_floats + d.slot_floats * (size_t)threads) * sizeof(float);
    float *buffer = scratch_take(bytes); /* the caller's: it waits for the parts, which use it */
    if (!buffer) return false;
    if (d.split_cols) g->packed_a = buffer;
    else g->packed_b = buffer;
    d.scratch = buffer + shared_floats;
    int64_t shared_panels = d.split_cols ? g->m_pad / MR : g->n_pad / NR;
    d.pack_groups = (shared_panels + PACK_GROUP - 1) / PACK_GROUP;
    hr_parallel_deal(kblocks * d.pack_groups, pack_shared_piece, &d);
    hr_parallel_deal(parts, compute_part, &d);
    scratch_give(buffer, bytes);
    return true;
}

/* Scratch floats gemm_block needs for the whole of job g on one thread. */
static size_t serial_scratch_floats(const gemm_job *g, size_t *a_floats)
{
    *a_floats = (size_t)MC_WIDE * KC;
    if (deep_rows(g, 0, g->m)) *a_floats = deep_a_floats(g->m, g->k);
    return *a_floats + (size_t)KC * (size_t)(((g->n < NC ? g->n : NC) + NR - 1) / NR * NR);
}

/*
 * A small output summed over a very deep inner dimension (the LM head's input gradient: 83 x 768
 * from 50272 products each) runs as K_CHUNKS products over fixed slices of the inner dimension,
 * added up at the end in chunk order. Split by columns instead, every thread read the whole packed
 * A (83 x 50272, 17 MB, packed once and shared): 1.55-1.62x on two threads against 1.9-2.0x for
 * the layers' products. Each chunk here packs its own slice of both operands. The slices and the
 * order of the final sums are fixed, so the result does not depend on the number of threads (it
 * differs in rounding from one pass over the whole depth, as any other blocking would).
 */
enum {
    K_CHUNKS = 4,
    K_SPLIT_MIN_K = 1 << 15,    /* inner dimensions this deep */
    K_SPLIT_MAX_OUT = 1 << 19,  /* outputs this small: the partial sums are a few MiB at most */
};

typedef struct {
    gemm_job chunk[K_CHUNKS];
    float *scratch; /* per pool slot: slot_floats */
    size_t slot_floats;
} k_split_job;

static void k_split_part(void *ctx, int64_t begin, int64_t end)
{
    k_split_job *d = ctx;
    float *scratch = d->scratch + (size_t)hr_parallel_slot() * d->slot_floats;
    for (int64_t i = begin; i < end; i++) {
        size_t a_floats;
        serial_scratch_floats(&d->chunk[i], &a_floats);
        gemm_block(&d->chunk[i], 0, d->chunk[i].m, 0, d->chunk[i].n, scratch, scratch + a_floats);
    }
}

typedef struct {
    float *c;
    int64_t ldc, n;
    const float *partial; /* K_CHUNKS - 1 blocks of m x n */
    size_t block;
} k_split_sum;

static void k_split_add_rows(void *ctx, int64_t begin, int64_t end)
{
    const k_split_sum *s = ctx;
    for (int64_t i = begin; i < end; i++) {
        float *row = s->c + i * s->ldc;
        for (int part = 0; part < K_CHUNKS - 1; part++) {
            const float *p = s->partial + (size_t)part * s->block + (size_t)i * (size_t)s->n;
            for (int64_t j = 0; j < s->n; j++) row[j] += p[j];
        }
    }
}

static bool run_k_split(const gemm_job *g)
{
    int threads = hr_get_num_threads();
    k_split_job d = {0};
    int64_t slice = (g->k + K_CHUNKS - 1) / K_CHUNKS;
    slice = (slice + KC - 1) / KC * KC; /* whole inner blocks, as one pass would cut them */
    size_t block = (size_t)g->m * (size_t)g->n;
    size_t slot = 0;
    for (int i = 0; i < K_CHUNKS; i++) {
        int64_t k0 = i * slice, k1 = k0 + slice < g->k ? k0 + slice : g->k;
        gemm_job *c = &d.chunk[i];
        *c = *g;
        c->a = g->a + k0 * g->a_cs;
        c->b = g->b + k0 * g->b_rs;
        c->k = k1 > k0 ? k1 - k0 : 0;
        if (i > 0) { /* alpha * A_i B_i alone, into a partial block; the first chunk takes beta or the bias */
            c->beta = 0.0f;
            c->bias = NULL;
            c->ldc = g->n;
        }
        size_t a_floats, need = serial_scratch_floats(c, &a_floats);
        if (need > slot) slot = need;
    }
    d.slot_floats = slot;
    /* the packing scratch after the partial sums starts on a 64-byte boundary (aligned stores) */
    size_t partial_floats = ((K_CHUNKS - 1) * block + 15) / 16 * 16;
    size_t bytes = (partial_floats + slot * (size_t)threads) * sizeof(float);
    float *buffer = scratch_take(bytes);
    if (!buffer) return false;
    for (int i = 1; i < K_CHUNKS; i++) d.chunk[i].c = buffer + (size_t)(i - 1) * block;
    d.scratch = buffer + partial_floats;
    /* a chunk with no depth left (k just over the split size) is an all-zero partial */
    for (int i = 1; i < K_CHUNKS; i++)
        if (d.chunk[i].k == 0) memset(d.chunk[i].c, 0, block * sizeof(float));
    hr_parallel_deal(K_CHUNKS, k_split_part, &d);
    k_split_sum sum = {g->c, g->ldc, g->n, buffer, block};
    hr_parallel_for(g->m, 8, k_split_add_rows, &sum);
    scratch_give(buffer, bytes);
    return true;
}

bool hr_packed_sgemm(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs, int64_t a_cs,
                     const float *b, int64_t b_rs, int64_t b_cs, float beta, const float *bias, float *c, int64_t ldc)
{
    /* alpha = 0: BLAS's answer is beta * c whatever A and B hold (0 * inf would make NaN here) */
    if (m < MIN_M || n < MIN_N || k < MIN_K || alpha == 0.0f) return false;
    if (bias && beta != 0.0f) return false; /* one addend or the other, not both */
    gemm_job g = {.m = m, .n = n, .k = k, .alpha = alpha, .beta = beta, .a = a, .b = b, .bias = bias, .a_rs = a_rs,
                  .a_cs = a_cs, .b_rs = b_rs, .b_cs = b_cs, .c = c, .ldc = ldc};
    /* Parts are column blocks (each needs all of A) or row blocks (all of B), whichever shares the
     * smaller operand; narrower products are not worth a second thread. */
    int64_t units = m <= n ? (n + NR - 1) / NR : (m + MR - 1) / MR;
    if (k >= K_SPLIT_MIN_K && (size_t)m * (size_t)n <= K_SPLIT_MAX_OUT) return run_k_split(&g);
    int threads = hr_get_num_threads();
    if (threads > 1 && units >= MIN_PARALLEL_UNITS) return run_dealt(&g, threads);
    size_t a_floats, scratch_floats = serial_scratch_floats(&g, &a_floats);
    float *scratch = scratch_take(scratch_floats * sizeof(float));
    if (!scratch) return false;
    gemm_block(&g, 0, m, 0, n, scratch, scratch + a_floats);
    scratch_give(scratch, scratch_floats * sizeof(float));
    return true;
}

bool hr_cpu_gemm_kernels_built(void) { return true; }

#else /* without AVX2/FMA the caller uses BLAS */

bool hr_cpu_gemm_kernels_built(void) { return false; }

bool hr_packed_sgemm(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t a_rs, int64_t a_cs,
                     const float *b, int64_t b_rs, int64_t b_cs, float beta, const float *bias, float *c, int64_t ldc)
{
    (void)m, (void)n, (void)k, (void)alpha, (void)a, (void)a_rs, (void)a_cs, (void)b, (void)b_rs, (void)b_cs;
    (void)beta, (void)bias, (void)c, (void)ldc;
    return false;
}

#endif
