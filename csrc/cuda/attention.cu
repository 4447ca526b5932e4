/* cuda/attention.cu — multi-head attention over short sequences as one kernel per pass.
 *
 * HERO's attention runs over many short sequences (640 clips x 12 heads of 33 tokens in the
 * cross-modal transformer, 60 frames in the temporal one). Composed of matrix products, softmax
 * and dropout, each head became ten launches and several round trips of the [B, heads, L, L]
 * scores through device memory, plus permuted copies of q, k, v and the output. Here one block
 * does one (batch, head) pair: its Q, K and V (and dO in the backward) sit in shared memory as
 * f32, the scores never leave the block, and the head's columns of q/k/v/out are read and written
 * in place in their [B, L, H] layout.
 *
 * The arithmetic is that of cpu/attention.c, in f32 for f32/bf16/f16 inputs:
 *     S = scale * Q Kᵀ + mask,  P = softmax_rows(S) (sum of the exponentials in double),
 *     P' = P * noise,  O = P' V,
 *     dP = (dO Vᵀ) * noise,  dS = P * (dP - rowsum(dP * P)) (the row sum in double),
 *     dV = P'ᵀ dO,  dQ = scale * dS K,  dK = scale * dSᵀ Q,
 * rounded once into the output dtype. The dropout noise is the dropout kernel's: element e of
 * [B, heads, Lq, Lk] uses word e % 4 of Philox block block0 + e / 4, so a seed drops the same
 * probabilities as on the CPU and as the composed path; the backward draws it again from the
 * saved key and block instead of storing it. P is saved in f32 for the backward (each head's
 * scores a whole number of float4s apart, for 16-byte loads). bf16/f16 heads of a
 * multiple of 16 columns run their products on the tensor cores (below).
 */
#include <cmath>

#include "cuda/common.cuh"

namespace hrc {
namespace {

constexpr int kAttnThreads = 128;
constexpr int64_t kAttnMaxLen = 64;   /* Lq and Lk: a softmax row is two values per lane of a warp */
constexpr int64_t kAttnMaxHead = 128; /* head width dh (a multiple of 4, read as float4) */

struct AttnShape {
    int64_t B, Lq, Lk, H, heads, dh;
    /* elements between rows of q, k and v and of their gradients: H, or 3H when they are the column
     * blocks of one packed [B, L, 3H] projection (hr_cuda_attention_packed); out and dO keep H */
    int64_t ld;
    bool packed;
    int64_t mask_bstride, mask_qstride;
    float scale, keep;
    double p;
    bool has_noise, has_mask;
    bool vec; /* q, k, v (and dO) 16-byte aligned with H a multiple of 8: tiles load 16 bytes at a time */
    bool vec_out; /* the same of the outputs (out, or dq, dk and dv): the tensor-core kernels store 16 bytes at a time */
    int64_t pstride; /* floats between the heads' saved probabilities (Lq * Lk rounded up to whole float4s) */
    uint32_t k0, k1;
    uint64_t block0;
};

struct AttnCtx {
    AttnShape s;
};

/* Row stride of the Q/K/V/dO tiles (16-byte rows, and rows 4 banks apart so that 8 lanes reading
 * 8 rows with float4 loads touch all 32 banks once) and of the score tiles. */
__host__ __device__ inline int tile_ld(int64_t dh) { return (int)dh + 4; }
__host__ __device__ inline int score_ld(int64_t lk) { return (int)lk + 1; }

/* Loads are issued four per thread before any is used: one at a time, each thread waited for
 * every load in turn and the attention kernels spent most of their time on the latency. */
constexpr int kLoadBatch = 4;

/* rows x dh elements of a [*, H] tensor (dtype dt: f32, bf16 or f16) starting at element
 * (row0, col0) into the f32 tile (rows tile_ld(dh) apart). */
template <typename U>
__device__ void load_tile_as(float *tile, const char *src, int dt, int64_t H, int64_t row0, int64_t col0, int rows, int dh)
{
    const int ld = tile_ld(dh), n = rows * dh;
    for (int base = threadIdx.x; base < n; base += kLoadBatch * blockDim.x) {
        U raw[kLoadBatch];
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x, r = e / dh, d = e - r * dh;
            raw[j] = e < n ? ((const U *)src)[(row0 + r) * H + col0 + d] : (U)0;
        }
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x, r = e / dh, d = e - r * dh;
            if (e >= n) continue;
            float f;
            if (sizeof(U) == 4) f = __uint_as_float((uint32_t)raw[j]);
            else f = dt == HR_BF16 ? bf16_to_f32((uint16_t)raw[j]) : f16_to_f32((uint16_t)raw[j]);
            tile[r * ld + d] = f;
        }
    }
}

__device__ void load_tile(float *tile, const char *src, int dt, int64_t H, int64_t row0, int64_t col0, int rows, int dh)
{
    if (dt == HR_F32) load_tile_as<uint32_t>(tile, src, dt, H, row0, col0, rows, dh);
    else load_tile_as<uint16_t>(tile, src, dt, H, row0, col0, rows, dh);
}

/* The head's additive mask rows (one, or Lq for a per-query mask) into Ms as f32. */
__device__ void load_mask(float *Ms, const char *mask, int dt, const AttnShape &s, int64_t b)
{
    const int n = (int)((s.mask_qstride ? s.Lq : 1) * s.Lk), el = dtype_size(dt);
    const char *src = mask + b * s.mask_bstride * el;
    for (int base = threadIdx.x; base < n; base += kLoadBatch * blockDim.x) {
        float v[kLoadBatch];
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x;
            v[j] = e < n ? load_f32(src + (int64_t)e * el, dt) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++)
            if (base + j * (int)blockDim.x < n) Ms[base + j * blockDim.x] = v[j];
    }
}

/* The mask value of score (i, x), from the rows load_mask put in Ms. */
__device__ __forceinline__ float mask_at(const float *Ms, const AttnShape &s, int i, int x)
{
    return Ms[(s.mask_qstride ? i : 0) * (int)s.Lk + x];
}

/* Floats of shared memory for the mask rows (0 without a mask). */
__host__ __device__ inline int mask_floats(const AttnShape &s)
{
    return s.has_mask ? (int)((s.mask_qstride ? s.Lq : 1) * s.Lk) : 0;
}

/* n rounded up to whole float4s (so that what follows stays 16-byte aligned). */
__host__ __device__ inline int round4(int64_t n) { return (int)((n + 3) / 4 * 4); }

__device__ __forceinline__ float dot_rows(const float *a, const float *b, int dh)
{
    const float4 *a4 = (const float4 *)a, *b4 = (const float4 *)b;
    float acc = 0.0f;
    for (int d = 0; d < dh / 4; d++) {
        float4 x = a4[d], y = b4[d];
        acc += x.x * y.x;
        acc += x.y * y.y;
        acc += x.z * y.z;
        acc += x.w * y.w;
    }
    return acc;
}


/* The dropout keep flags of a head's n scores, elements e0 .. e0 + n - 1 of the stream, into
 * keep[0 .. n): element e is word e % 4 of Philox block block0 + e / 4 (the dropout kernel's map);
 * one block per thread gives four consecutive flags, so a head costs about n / 4 blocks instead
 * of a block per score each time a score's noise is read. */
__device__ void draw_keep(const AttnShape &s, int64_t e0, int n, uint8_t *keep)
{
    const int64_t first = e0 >> 2, last = (e0 + n - 1) >> 2;
    for (int64_t blk = first + threadIdx.x; blk <= last; blk += blockDim.x) {
        uint32_t w[4];
        philox_block(s.k0, s.k1, s.block0 + (uint64_t)blk, w);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int64_t j = blk * 4 + k - e0;
            if (j >= 0 && j < n) keep[j] = (double)u24(w[k]) < s.p ? 0 : 1;
        }
    }
}

/* Bytes of shared memory for the keep flags (a whole number of 16-byte units). */
__host__ __device__ inline int keep_bytes(const AttnShape &s) { return s.has_noise ? (int)((s.Lq * s.Lk + 15) / 16 * 16) : 0; }

__device__ __forceinline__ float warp_max_f(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

/* Tile strides in 16-bit elements: +8 puts consecutive rows 4 banks apart, so the fragment loads
 * of a warp (8 rows x 4 words) hit 32 distinct banks. */
__host__ __device__ inline int pad16(int64_t n) { return (int)((n + 15) / 16 * 16); }
__host__ __device__ inline int half_ld(int64_t cols) { return pad16(cols) + 8; }

/* Shared memory of each kernel: its tiles (the _base sizes, where the keep flags start) and the
 * dropout keep flags. */
__host__ __device__ inline size_t forward_smem_base(const AttnShape &s)
{
    return sizeof(float) * (size_t)((s.Lq + 2 * s.Lk) * tile_ld(s.dh) + s.Lq * score_ld(s.Lk) + mask_floats(s));
}

__host__ __device__ inline size_t backward_smem_base(const AttnShape &s)
{
    return sizeof(float) * (size_t)((2 * s.Lq + 2 * s.Lk) * tile_ld(s.dh) + 2 * s.Lq * score_ld(s.Lk));
}

__host__ __device__ inline size_t forward_smem_tc_base(const AttnShape &s)
{
    int pq = pad16(s.Lq), pk = pad16(s.Lk), ldh = half_ld(s.dh), ldk = half_ld(s.Lk);
    return sizeof(float) * (size_t)round4(s.Lq * score_ld(s.Lk) + mask_floats(s)) +
           2 * (size_t)(pq * ldh + 2 * pk * ldh + pq * ldk);
}

__host__ __device__ inline size_t backward_smem_tc_base(const AttnShape &s)
{
    int pq = pad16(s.Lq), pk = pad16(s.Lk), ldh = half_ld(s.dh), ldk = half_ld(s.Lk);
    return sizeof(float) * (size_t)round4(2 * s.Lq * score_ld(s.Lk)) + 2 * (size_t)(2 * pq * ldh + 2 * pk * ldh + 2 * pq * ldk);
}

size_t forward_smem(const AttnShape &s) { return forward_smem_base(s) + keep_bytes(s); }
size_t backward_smem(const AttnShape &s) { return backward_smem_base(s) + keep_bytes(s); }
size_t forward_smem_tc(const AttnShape &s) { return forward_smem_tc_base(s) + keep_bytes(s); }
size_t backward_smem_tc(const AttnShape &s) { return backward_smem_tc_base(s) + keep_bytes(s); }

/* The head's saved probabilities (Lq x Lk f32, contiguous) into P (rows lp apart). */
__device__ void load_probs(float *P, int lp, const float *probs, int Lq, int Lk)
{
    const int n = Lq * Lk;
    for (int base = threadIdx.x; base < n; base += kLoadBatch * blockDim.x) {
        float v[kLoadBatch];
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x;
            v[j] = e < n ? probs[e] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x, i = e / Lk;
            if (e < n) P[i * lp + e - i * Lk] = v[j];
        }
    }
}

__global__ void __launch_bounds__(kAttnThreads) attn_forward(AttnShape s, const char *q, const char *k, const char *v,
                                                             const char *mask, int dt, float *probs, char *out)
{
    extern __shared__ float4 smem4[];
    float *sm = (float *)smem4;
    const int Lq = (int)s.Lq, Lk = (int)s.Lk, dh = (int)s.dh, ld = tile_ld(dh), lp = score_ld(Lk);
    float *Qs = sm, *Ks = Qs + Lq * ld, *Vs = Ks + Lk * ld, *Ss = Vs + Lk * ld, *Ms = Ss + Lq * lp;
    uint8_t *keep = (uint8_t *)smem4 + forward_smem_base(s);
    const int64_t t = blockIdx.x, b = t / s.heads, h = t - b * s.heads;
    if (s.has_noise) draw_keep(s, t * s.Lq * s.Lk, Lq * Lk, keep);
    load_tile(Qs, q, dt, s.ld, b * s.Lq, h * s.dh, Lq, dh);
    load_tile(Ks, k, dt, s.ld, b * s.Lk, h * s.dh, Lk, dh);
    load_tile(Vs, v, dt, s.ld, b * s.Lk, h * s.dh, Lk, dh);
    if (mask) load_mask(Ms, mask, dt, s, b);
    __syncthreads();
    const int el = dtype_size(dt);
    for (int e = threadIdx.x; e < Lq * Lk; e += blockDim.x) {
        int i = e / Lk, x = e - i * Lk;
        float sc = s.scale * dot_rows(Qs + i * ld, Ks + x * ld, dh);
        if (mask) sc += mask_at(Ms, s, i, x);
        Ss[i * lp + x] = sc;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int i = threadIdx.x >> 5; i < Lq; i += warps) {
        float *row = Ss + i * lp;
        float v0 = lane < Lk ? row[lane] : -INFINITY, v1 = lane + 32 < Lk ? row[lane + 32] : -INFINITY;
        float mx = warp_max_f(v0 > v1 ? v0 : v1);
        float e0 = lane < Lk ? expf(v0 - mx) : 0.0f, e1 = lane + 32 < Lk ? expf(v1 - mx) : 0.0f;
        double sum = warp_sum((double)e0 + (double)e1);
        float inv = (float)(1.0 / sum);
        float *pr = probs ? probs + t * s.pstride + (int64_t)i * Lk : nullptr;
        const uint8_t *kr = keep + i * Lk;
        if (lane < Lk) {
            float p = e0 * inv;
            if (pr) pr[lane] = p;
            row[lane] = s.has_noise ? p * (kr[lane] ? s.keep : 0.0f) : p;
        }
        if (lane + 32 < Lk) {
            float p = e1 * inv;
            if (pr) pr[lane + 32] = p;
            row[lane + 32] = s.has_noise ? p * (kr[lane + 32] ? s.keep : 0.0f) : p;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < Lq * dh; e += blockDim.x) {
        int i = e / dh, d = e - i * dh;
        const float *pr = Ss + i * lp;
        float acc = 0.0f;
        for (int x = 0; x < Lk; x++) acc += pr[x] * Vs[x * ld + d];
        store_f32(out + ((b * s.Lq + i) * s.H + h * s.dh + d) * el, dt, acc);
    }
}

__global__ void __launch_bounds__(kAttnThreads) attn_backward(AttnShape s, const char *q, const char *k, const char *v,
                                                              int dt, const float *probs, const char *g, int gdt,
                                                              char *dq, char *dk, char *dv)
{
    extern __shared__ float4 smem4[];
    float *sm = (float *)smem4;
    const int Lq = (int)s.Lq, Lk = (int)s.Lk, dh = (int)s.dh, ld = tile_ld(dh), lp = score_ld(Lk);
    float *Qs = sm, *Ks = Qs + Lq * ld, *Vs = Ks + Lk * ld, *Gs = Vs + Lk * ld, *Ps = Gs + Lq * ld, *Ds = Ps + Lq * lp;
    uint8_t *keep = (uint8_t *)smem4 + backward_smem_base(s);
    const int64_t t = blockIdx.x, b = t / s.heads, h = t - b * s.heads;
    if (s.has_noise) draw_keep(s, t * s.Lq * s.Lk, Lq * Lk, keep);
    load_tile(Qs, q, dt, s.ld, b * s.Lq, h * s.dh, Lq, dh);
    load_tile(Ks, k, dt, s.ld, b * s.Lk, h * s.dh, Lk, dh);
    load_tile(Vs, v, dt, s.ld, b * s.Lk, h * s.dh, Lk, dh);
    load_tile(Gs, g, gdt, s.H, b * s.Lq, h * s.dh, Lq, dh);
    load_probs(Ps, lp, probs + t * s.pstride, Lq, Lk);
    __syncthreads();
    for (int e = threadIdx.x; e < Lq * Lk; e += blockDim.x) {
        int i = e / Lk, x = e - i * Lk;
        float p = Ps[i * lp + x];
        Ds[i * lp + x] = s.has_noise ? p * (keep[e] ? s.keep : 0.0f) : p; /* P' */
    }
    __syncthreads();
    const int el = dtype_size(dt);
    if (dv) /* dV = P'ᵀ dO */
        for (int e = threadIdx.x; e < Lk * dh; e += blockDim.x) {
            int x = e / dh, d = e - x * dh;
            float acc = 0.0f;
            for (int i = 0; i < Lq; i++) acc += Ds[i * lp + x] * Gs[i * ld + d];
            store_f32(dv + ((b * s.Lk + x) * s.ld + h * s.dh + d) * el, dt, acc);
        }
    if (!dq && !dk) return;
    __syncthreads();
    for (int e = threadIdx.x; e < Lq * Lk; e += blockDim.x) { /* dP = (dO Vᵀ) * noise */
        int i = e / Lk, x = e - i * Lk;
        float d = dot_rows(Gs + i * ld, Vs + x * ld, dh);
        Ds[i * lp + x] = s.has_noise ? d * (keep[e] ? s.keep : 0.0f) : d;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int i = threadIdx.x >> 5; i < Lq; i += warps) { /* dS = P * (dP - rowsum(dP * P)) */
        float *drow = Ds + i * lp;
        const float *prow = Ps + i * lp;
        double part = 0.0;
        if (lane < Lk) part += (double)drow[lane] * prow[lane];
        if (lane + 32 < Lk) part += (double)drow[lane + 32] * prow[lane + 32];
        float dot = (float)warp_sum(part);
        if (lane < Lk) drow[lane] = prow[lane] * (drow[lane] - dot);
        if (lane + 32 < Lk) drow[lane + 32] = prow[lane + 32] * (drow[lane + 32] - dot);
    }
    __syncthreads();
    if (dq)
        for (int e = threadIdx.x; e < Lq * dh; e += blockDim.x) {
            int i = e / dh, d = e - i * dh;
            float acc = 0.0f;
            for (int x = 0; x < Lk; x++) acc += Ds[i * lp + x] * Ks[x * ld + d];
            store_f32(dq + ((b * s.Lq + i) * s.ld + h * s.dh + d) * el, dt, s.scale * acc);
        }
    if (dk)
        for (int e = threadIdx.x; e < Lk * dh; e += blockDim.x) {
            int x = e / dh, d = e - x * dh;
            float acc = 0.0f;
            for (int i = 0; i < Lq; i++) acc += Ds[i * lp + x] * Qs[i * ld + d];
            store_f32(dk + ((b * s.Lk + x) * s.ld + h * s.dh + d) * el, dt, s.scale * acc);
        }
}

/* ------------------------------------------------------------------ bf16/f16 on tensor cores */

/* For half inputs the four products run on the tensor cores (mma.sync m16n8k16, f32 accumulators)
 * over 16-bit tiles in shared memory, zero-padded to multiples of 16 rows. The softmax, the
 * dropout and dS stay in f32 as above; P' and dS are rounded to the input dtype as operands of
 * the next product, as the composed path and PyTorch's autocast round them. Heads are multiples
 * of 16 wide. Every tile is kept once, row-major: a product that needs it transposed reads its
 * fragments element by element, so that a block needs little shared memory and several blocks
 * share a multiprocessor (the first version kept transposed copies and ran three). */


template <bool BF> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    if (BF)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Two consecutive-k elements of an operand as one 32-bit fragment register: t is a row-major 16-bit
 * tile; kmajor means k runs along its rows (element (j, k) at t[j * ld + k], one 32-bit load), else
 * down its columns (element (j, k) at t[k * ld + j], two 16-bit loads). */
template <bool KMAJOR> __device__ __forceinline__ uint32_t frag_pair(const uint16_t *t, int ld, int j, int k)
{
    if (KMAJOR) return *(const uint32_t *)(t + j * ld + k);
    return (uint32_t)t[k * ld + j] | ((uint32_t)t[(k + 1) * ld + j] << 16);
}

/* C = A B over 16-bit tiles, A(m, k) and B(k, n) read as frag_pair says (A_K: A's k along its tile's
 * rows; B_K: B's k along its tile's rows, i.e. the tile holds B by columns), M a multiple of 16,
 * N of 8, K of 16. The block's warps take 16x8 output tiles in turn; out(m, n, value) receives
 * each result. */
template <bool BF, bool A_K, bool B_K, typename Out>
__device__ __forceinline__ void warp_mma(const uint16_t *As, int lda, const uint16_t *Bs, int ldb, int M, int N, int K,
                                         Out out)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int g = lane >> 2, t2 = 2 * (lane & 3), nt = N / 8;
    for (int tile = warp; tile < (M / 16) * nt; tile += warps) {
        const int m0 = (tile / nt) * 16, n0 = (tile % nt) * 8;
        float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k0 = 0; k0 < K; k0 += 16) {
            uint32_t a[4], b[2];
            a[0] = frag_pair<A_K>(As, lda, m0 + g, k0 + t2);
            a[1] = frag_pair<A_K>(As, lda, m0 + g + 8, k0 + t2);
            a[2] = frag_pair<A_K>(As, lda, m0 + g, k0 + t2 + 8);
            a[3] = frag_pair<A_K>(As, lda, m0 + g + 8, k0 + t2 + 8);
            b[0] = frag_pair<B_K>(Bs, ldb, n0 + g, k0 + t2);
            b[1] = frag_pair<B_K>(Bs, ldb, n0 + g, k0 + t2 + 8);
            mma16816<BF>(c, a, b);
        }
        out(m0 + g, n0 + t2, c[0]);
        out(m0 + g, n0 + t2 + 1, c[1]);
        out(m0 + g + 8, n0 + t2, c[2]);
        out(m0 + g + 8, n0 + t2 + 1, c[3]);
    }
}

/* The head's rows x dh block of a [*, H] tensor of 16-bit elements into tile (rows ld apart),
 * rows up to pad16(rows) zero. src_dt converts another float dtype (an f32 upstream gradient) to
 * dt first. The general loader, for sources the batched one below does not take. */
__device__ void load_half_tile(uint16_t *tile, int ld, const char *src, int src_dt, int dt, int64_t H, int64_t row0,
                               int64_t col0, int rows, int dh)
{
    const int n = pad16(rows) * dh, el = dtype_size(src_dt);
    for (int base = threadIdx.x; base < n; base += kLoadBatch * blockDim.x) {
        float v[kLoadBatch];
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x, r = e / dh, d = e - r * dh;
            v[j] = e < n && r < rows ? load_f32(src + ((row0 + r) * H + col0 + d) * el, src_dt) : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < kLoadBatch; j++) {
            int e = base + j * blockDim.x, r = e / dh, d = e - r * dh;
            if (e < n) tile[r * ld + d] = dt == HR_BF16 ? f32_to_bf16(v[j]) : f32_to_f16(v[j]);
        }
    }
}

/* One head's rows of a same-dtype source (rows ld elements apart) for the batched loader. */
struct HeadRows {
    const char *src;
    int64_t ld;
    int64_t row0;
    int rows;
    uint16_t *tile;
};

/* NT heads (rows 16-byte aligned, row strides a multiple of 8) and, when probs is given, the head's n saved
 * probabilities (16-byte aligned) into their tiles: every load of a round is issued before any
 * store, so the block waits for the memory once per round instead of once per tile. */
template <int NT>
__device__ void load_heads(const HeadRows (&hr)[NT], int ld, int64_t col0, int dh, const float *probs, int n, float *P,
                           int lp, int Lk)
{
    const int per_row = dh / 8, n4 = (n + 3) / 4;
    int most = n4;
#pragma unroll
    for (int i = 0; i < NT; i++) most = max(most, pad16(hr[i].rows) * per_row);
    for (int base = threadIdx.x; base < most; base += 2 * blockDim.x) {
        uint4 v[NT][2];
        float4 pv[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int c = base + j * blockDim.x;
#pragma unroll
            for (int i = 0; i < NT; i++) {
                const int r = c / per_row;
                v[i][j] = make_uint4(0u, 0u, 0u, 0u);
                if (r < hr[i].rows)
                    v[i][j] = *(const uint4 *)((const uint16_t *)hr[i].src + (hr[i].row0 + r) * hr[i].ld + col0 +
                                               (c - r * per_row) * 8);
            }
            pv[j] = probs && c < n4 ? ((const float4 *)probs)[c] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int c = base + j * blockDim.x, r = c / per_row, d = (c - r * per_row) * 8;
#pragma unroll
            for (int i = 0; i < NT; i++)
                if (r < pad16(hr[i].rows)) *(uint4 *)(hr[i].tile + r * ld + d) = v[i][j];
            if (probs && c < n4) {
                float f[4] = {pv[j].x, pv[j].y, pv[j].z, pv[j].w};
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    int e = 4 * c + k, i = e / Lk;
                    if (e < n) P[i * lp + e - i * Lk] = f[k];
                }
            }
        }
    }
}

__device__ __forceinline__ uint16_t to_half(float f, int dt) { return dt == HR_BF16 ? f32_to_bf16(f) : f32_to_f16(f); }

/* The first rows x dh elements of a 16-bit tile (rows ld apart) into the head's block of dst, a
 * [*, dst_ld] tensor of 16-bit elements, from row row0 and column col0 on: 16 bytes a thread where
 * dst's rows allow (vec), else one element at a time. The products' results go through the tile
 * because each lane of a fragment holds scattered 2-byte values: stored as they came, every store
 * instruction wrote 8 rows' sectors 8 bytes at a time. */
__device__ void store_half_tile(const uint16_t *tile, int ld, char *dst, int64_t dst_ld, int64_t row0, int64_t col0,
                                int rows, int dh, bool vec)
{
    uint16_t *d16 = (uint16_t *)dst;
    if (vec) {
        const int per_row = dh / 8, n = rows * per_row;
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            const int r = c / per_row, d = (c - r * per_row) * 8;
            *(uint4 *)(d16 + (row0 + r) * dst_ld + col0 + d) = *(const uint4 *)(tile + r * ld + d);
        }
        return;
    }
    const int n = rows * dh;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int r = e / dh, d = e - r * dh;
        d16[(row0 + r) * dst_ld + col0 + d] = tile[r * ld + d];
    }
}

struct TcTiles {
    int Lq, Lk, dh, pq, pk, ldh, ldk;
};

__device__ __forceinline__ TcTiles tc_tiles(const AttnShape &s)
{
    TcTiles t;
    t.Lq = (int)s.Lq, t.Lk = (int)s.Lk, t.dh = (int)s.dh;
    t.pq = pad16(s.Lq), t.pk = pad16(s.Lk);
    t.ldh = half_ld(s.dh), t.ldk = half_ld(s.Lk);
    return t;
}

template <bool BF>
__global__ void __launch_bounds__(kAttnThreads) attn_forward_tc(AttnShape s, const char *q, const char *k, const char *v,
                                                                const char *mask, int dt, float *probs, char *out)
{
    extern __shared__ float4 smem4[];
    const TcTiles T = tc_tiles(s);
    const int lp = score_ld(T.Lk);
    float *Ss = (float *)smem4;                                              /* [Lq][lp] f32 scores */
    float *Ms = Ss + T.Lq * lp;                                              /* the mask rows */
    uint16_t *Qh = (uint16_t *)(Ss + round4(T.Lq * lp + mask_floats(s)));    /* [pq][ldh] */
    uint16_t *Kh = Qh + T.pq * T.ldh;                                        /* [pk][ldh] */
    uint16_t *Vh = Kh + T.pk * T.ldh;                                        /* [pk][ldh] */
    uint16_t *Ph = Vh + T.pk * T.ldh;                                        /* [pq][ldk]: P' in the input dtype */
    uint8_t *keep = (uint8_t *)smem4 + forward_smem_tc_base(s);              /* dropout keep flags */
    const int64_t t = blockIdx.x, b = t / s.heads, h = t - b * s.heads;
    if (s.has_noise) draw_keep(s, t * s.Lq * s.Lk, T.Lq * T.Lk, keep);
    if (s.vec) {
        const HeadRows hr[3] = {{q, s.ld, b * s.Lq, T.Lq, Qh}, {k, s.ld, b * s.Lk, T.Lk, Kh}, {v, s.ld, b * s.Lk, T.Lk, Vh}};
        load_heads<3>(hr, T.ldh, h * s.dh, T.dh, nullptr, 0, nullptr, 0, 1);
    } else {
        load_half_tile(Qh, T.ldh, q, dt, dt, s.ld, b * s.Lq, h * s.dh, T.Lq, T.dh);
        load_half_tile(Kh, T.ldh, k, dt, dt, s.ld, b * s.Lk, h * s.dh, T.Lk, T.dh);
        load_half_tile(Vh, T.ldh, v, dt, dt, s.ld, b * s.Lk, h * s.dh, T.Lk, T.dh);
    }
    if (mask) load_mask(Ms, mask, dt, s, b);
    for (int e = threadIdx.x; e < T.pq * T.ldk; e += blockDim.x) Ph[e] = 0;
    __syncthreads();
    /* S = scale Q Kᵀ + mask: A = Q (k = d along rows), B(d, x) = K[x][d] (k along rows) */
    warp_mma<BF, true, true>(Qh, T.ldh, Kh, T.ldh, T.pq, T.pk, T.dh, [&](int i, int x, float c) {
        if (i >= T.Lq || x >= T.Lk) return;
        float sc = s.scale * c;
        if (mask) sc += mask_at(Ms, s, i, x);
        Ss[i * lp + x] = sc;
    });
    __syncthreads();
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int i = threadIdx.x >> 5; i < T.Lq; i += warps) {
        float *row = Ss + i * lp;
        float v0 = lane < T.Lk ? row[lane] : -INFINITY, v1 = lane + 32 < T.Lk ? row[lane + 32] : -INFINITY;
        float mx = warp_max_f(v0 > v1 ? v0 : v1);
        float e0 = lane < T.Lk ? expf(v0 - mx) : 0.0f, e1 = lane + 32 < T.Lk ? expf(v1 - mx) : 0.0f;
        float inv = (float)(1.0 / warp_sum((double)e0 + (double)e1));
        float *pr = probs ? probs + t * s.pstride + (int64_t)i * T.Lk : nullptr;
        for (int c = 0; c < 2; c++) {
            int x = lane + 32 * c;
            if (x >= T.Lk) continue;
            float p = (c ? e1 : e0) * inv;
            if (pr) pr[x] = p;
            Ph[i * T.ldk + x] = to_half(s.has_noise ? p * (keep[i * T.Lk + x] ? s.keep : 0.0f) : p, dt);
        }
    }
    __syncthreads();
    /* O = P' V: A = P' (k = x along rows), B(x, d) = V[x][d] (k down the columns), into Q's tile (Q was
     * last read by S), then stored whole */
    warp_mma<BF, true, false>(Ph, T.ldk, Vh, T.ldh, T.pq, T.dh, T.pk, [&](int i, int d, float c) {
        if (i < T.Lq) Qh[i * T.ldh + d] = to_half(c, dt);
    });
    __syncthreads();
    store_half_tile(Qh, T.ldh, out, s.H, b * s.Lq, h * s.dh, T.Lq, T.dh, s.vec_out);
}

template <bool BF>
__global__ void __launch_bounds__(kAttnThreads) attn_backward_tc(AttnShape s, const char *q, const char *k, const char *v,
                                                                 int dt, const float *probs, const char *g, int gdt,
                                                                 char *dq, char *dk, char *dv)
{
    extern __shared__ float4 smem4[];
    const TcTiles T = tc_tiles(s);
    const int lp = score_ld(T.Lk);
    float *Ps = (float *)smem4;                                 /* [Lq][lp] P */
    float *Df = Ps + T.Lq * lp;                                 /* [Lq][lp] dP, then dS */
    uint16_t *Qh = (uint16_t *)(Ps + round4(2 * T.Lq * lp));   /* rows of Q, K, V, dO: [p][ldh] */
    uint16_t *Kh = Qh + T.pq * T.ldh;
    uint16_t *Vh = Kh + T.pk * T.ldh;
    uint16_t *Gh = Vh + T.pk * T.ldh;
    uint16_t *Pd = Gh + T.pq * T.ldh;                           /* P' [pq][ldk] */
    uint16_t *Dh = Pd + T.pq * T.ldk;                           /* dS [pq][ldk] */
    uint8_t *keep = (uint8_t *)smem4 + backward_smem_tc_base(s); /* dropout keep flags */
    const int64_t t = blockIdx.x, b = t / s.heads, h = t - b * s.heads;
    const float *pr = probs + t * s.pstride;
    if (s.has_noise) draw_keep(s, t * s.Lq * s.Lk, T.Lq * T.Lk, keep);
    if (s.vec && gdt == dt) {
        const HeadRows hr[4] = {{q, s.ld, b * s.Lq, T.Lq, Qh}, {k, s.ld, b * s.Lk, T.Lk, Kh}, {v, s.ld, b * s.Lk, T.Lk, Vh},
                                {g, s.H, b * s.Lq, T.Lq, Gh}};
        load_heads<4>(hr, T.ldh, h * s.dh, T.dh, pr, T.Lq * T.Lk, Ps, lp, T.Lk);
    } else {
        load_half_tile(Qh, T.ldh, q, dt, dt, s.ld, b * s.Lq, h * s.dh, T.Lq, T.dh);
        load_half_tile(Kh, T.ldh, k, dt, dt, s.ld, b * s.Lk, h * s.dh, T.Lk, T.dh);
        load_half_tile(Vh, T.ldh, v, dt, dt, s.ld, b * s.Lk, h * s.dh, T.Lk, T.dh);
        load_half_tile(Gh, T.ldh, g, gdt, dt, s.H, b * s.Lq, h * s.dh, T.Lq, T.dh);
        load_probs(Ps, lp, pr, T.Lq, T.Lk);
    }
    for (int e = threadIdx.x; e < T.pq * T.ldk; e += blockDim.x) Pd[e] = Dh[e] = 0;
    __syncthreads();
    for (int e = threadIdx.x; e < T.Lq * T.Lk; e += blockDim.x) {
        int i = e / T.Lk, x = e - i * T.Lk;
        float p = Ps[i * lp + x];
        Pd[i * T.ldk + x] = to_half(s.has_noise ? p * (keep[e] ? s.keep : 0.0f) : p, dt);
    }
    __syncthreads();
    /* The three products go into tiles freed by then and are stored whole at the end: dS first (dP
     * reads V and dO), then dV into V's tile, dQ into dO's (dV was its last reader), dK into K's (dQ
     * was its last reader). */
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (dq || dk) {
        /* dP = (dO Vᵀ) * noise: A = dO (k = d along rows), B(d, x) = V[x][d] (k along rows) */
        warp_mma<BF, true, true>(Gh, T.ldh, Vh, T.ldh, T.pq, T.pk, T.dh, [&](int i, int x, float c) {
            if (i < T.Lq && x < T.Lk) Df[i * lp + x] = s.has_noise ? c * (keep[i * T.Lk + x] ? s.keep : 0.0f) : c;
        });
        __syncthreads();
        for (int i = threadIdx.x >> 5; i < T.Lq; i += warps) { /* dS = P * (dP - rowsum(dP * P)) */
            const float *prow = Ps + i * lp;
            float *drow = Df + i * lp;
            double part = 0.0;
            if (lane < T.Lk) part += (double)drow[lane] * prow[lane];
            if (lane + 32 < T.Lk) part += (double)drow[lane + 32] * prow[lane + 32];
            float dot = (float)warp_sum(part);
            for (int c = 0; c < 2; c++) {
                int x = lane + 32 * c;
                if (x < T.Lk) Dh[i * T.ldk + x] = to_half(prow[x] * (drow[x] - dot), dt);
            }
        }
        __syncthreads();
    }
    if (dv) /* dV = P'ᵀ dO: A(x, i) = P'[i][x] (k = i down the columns), B(i, d) = dO[i][d] (k down the columns) */
        warp_mma<BF, false, false>(Pd, T.ldk, Gh, T.ldh, T.pk, T.dh, T.pq, [&](int x, int d, float c) {
            if (x < T.Lk) Vh[x * T.ldh + d] = to_half(c, dt);
        });
    __syncthreads();
    if (dq) /* dQ = scale dS K: A = dS (k = x along rows), B(x, d) = K[x][d] (k down the columns) */
        warp_mma<BF, true, false>(Dh, T.ldk, Kh, T.ldh, T.pq, T.dh, T.pk, [&](int i, int d, float c) {
            if (i < T.Lq) Gh[i * T.ldh + d] = to_half(s.scale * c, dt);
        });
    __syncthreads();
    if (dk) /* dK = scale dSᵀ Q: A(x, i) = dS[i][x] (k down the columns), B(i, d) = Q[i][d] (k down the columns) */
        warp_mma<BF, false, false>(Dh, T.ldk, Qh, T.ldh, T.pk, T.dh, T.pq, [&](int x, int d, float c) {
            if (x < T.Lk) Kh[x * T.ldh + d] = to_half(s.scale * c, dt);
        });
    __syncthreads();
    if (dv) store_half_tile(Vh, T.ldh, dv, s.ld, b * s.Lk, h * s.dh, T.Lk, T.dh, s.vec_out);
    if (dq) store_half_tile(Gh, T.ldh, dq, s.ld, b * s.Lq, h * s.dh, T.Lq, T.dh, s.vec_out);
    if (dk) store_half_tile(Kh, T.ldh, dk, s.ld, b * s.Lk, h * s.dh, T.Lk, T.dh, s.vec_out);
}

bool use_tc(const AttnShape &s, int dt) { return (dt == HR_BF16 || dt == HR_F16) && s.dh % 16 == 0; }





/* The most dynamic shared memory a block of dev may ask for. */
size_t smem_limit(int dev)
{
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 48 * 1024;
    }
    return (size_t)v;
}

/* Lets kernel use smem bytes of dynamic shared memory (above the default 48 KiB needs asking). */
int allow_smem(const void *kernel, size_t smem, const char *op)
{
    if (smem <= 48 * 1024) return 0;
    return check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), op,
                 "cudaFuncSetAttribute");
}

bool aligned16(const hr_tensor *t) { return ((uintptr_t)hr_tensor_data(t) & 15u) == 0; }

/* Saved by the node: q, k, v (or the packed qkv alone), then the probabilities. */
int attn_backward_node(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    AttnShape s = ((const AttnCtx *)node->ctx)->s;
    const int ninputs = s.packed ? 1 : 3;
    hr_tensor *q = hr_node_saved(node, 0);
    hr_tensor *k = s.packed ? q : hr_node_saved(node, 1), *v = s.packed ? q : hr_node_saved(node, 2);
    hr_tensor *probs = hr_node_saved(node, ninputs);
    if (!q || !k || !v || !probs) return -1;
    cudaStream_t st = stream(dev_of(q));
    if (!st) return -1;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    bool need[3];
    for (int i = 0; i < 3; i++) need[i] = hr_node_input_needs_grad(node, s.packed ? 0 : i);
    hr_tensor *outs[3] = {nullptr, nullptr, nullptr};
    const hr_tensor *like[3] = {q, k, v};
    int rc = 0;
    /* every element of a gradient is written (each head's block of each row), so none is zeroed */
    for (int i = 0; i < ninputs && rc == 0; i++)
        if (need[i] && !(outs[i] = empty_on(like[i], 3, like[i]->size, q->dtype))) rc = -1;
    s.vec = s.vec && aligned16(g);
    if (rc == 0 && (need[0] || need[1] || need[2])) {
        const int64_t el = (int64_t)hr_dtype_size(q->dtype);
        /* packed: q, k, v and their gradients are the column blocks at 0, H and 2H of one tensor */
        const int64_t koff = s.packed ? s.H * el : 0, voff = s.packed ? 2 * s.H * el : 0;
        const char *qp = (const char *)hr_tensor_data(q), *kp = (const char *)hr_tensor_data(k) + koff;
        const char *vp = (const char *)hr_tensor_data(v) + voff, *gp = (const char *)hr_tensor_data(g);
        const float *pp = (const float *)hr_tensor_data(probs);
        char *o0 = outs[0] ? (char *)hr_tensor_data(outs[0]) : nullptr, *o1, *o2;
        if (s.packed) {
            o1 = o0 ? o0 + koff : nullptr;
            o2 = o0 ? o0 + voff : nullptr;
        } else {
            o1 = outs[1] ? (char *)hr_tensor_data(outs[1]) : nullptr;
            o2 = outs[2] ? (char *)hr_tensor_data(outs[2]) : nullptr;
        }
        s.vec_out = s.ld % 8 == 0 && (!o0 || ((uintptr_t)o0 & 15u) == 0) && (!o1 || ((uintptr_t)o1 & 15u) == 0) &&
                    (!o2 || ((uintptr_t)o2 & 15u) == 0);
        unsigned grid = (unsigned)(s.B * s.heads);
        if (use_tc(s, q->dtype)) {
            size_t smem = backward_smem_tc(s);
            if (q->dtype == HR_BF16) {
                rc = allow_smem((const void *)attn_backward_tc<true>, smem, "attention backward");
                if (rc == 0)
                    attn_backward_tc<true><<<grid, kAttnThreads, smem, st>>>(s, qp, kp, vp, q->dtype, pp, gp, g->dtype, o0,
                                                                            o1, o2);
            } else {
                rc = allow_smem((const void *)attn_backward_tc<false>, smem, "attention backward");
                if (rc == 0)
                    attn_backward_tc<false><<<grid, kAttnThreads, smem, st>>>(s, qp, kp, vp, q->dtype, pp, gp, g->dtype, o0,
                                                                             o1, o2);
            }
        } else {
            size_t smem = backward_smem(s);
            rc = allow_smem((const void *)attn_backward, smem, "attention backward");
            if (rc == 0)
                attn_backward<<<grid, kAttnThreads, smem, st>>>(s, qp, kp, vp, q->dtype, pp, gp, g->dtype, o0, o1, o2);
        }
        if (rc == 0) rc = check_launch("attention backward");
    }
    for (int i = 0; i < ninputs; i++) {
        if (rc == 0) gi[i] = outs[i];
        else hr_tensor_release(outs[i]);
    }
    hr_tensor_release(g);
    return rc;
}

/* The forward of s (its sizes and strides set) over the contiguous tensors held (q, k, v, or the
 * packed qkv alone) whose head blocks start at qp, kp, vp; records the node on `inputs`. */
hr_tensor *attention_fused_run(AttnShape s, hr_tensor *const *held, int nheld, hr_tensor **inputs, int ninputs,
                               const char *qp, const char *kp, const char *vp, hr_tensor *mask, double dropout_p,
                               bool training, struct hr_generator *gen)
{
    const hr_tensor *like = held[0];
    const int dt = like->dtype;
    cudaStream_t st = stream(dev_of(like));
    if (!st) return nullptr;
    s.scale = (float)(1.0 / sqrt((double)s.dh));
    s.has_mask = mask != nullptr;
    if (mask) {
        bool per_query = mask->ndim == 3;
        s.mask_bstride = per_query ? s.Lq * s.Lk : s.Lk;
        s.mask_qstride = per_query ? s.Lk : 0;
    }
    s.has_noise = training && dropout_p > 0;
    s.p = dropout_p;
    /* keep / (1 - p) in f32, as the dropout kernel and the CPU's noise hold it */
    s.keep = dropout_p < 1 ? 1.0f / (float)(1.0 - dropout_p) : 0.0f;
    bool record = hr_should_record(ninputs, inputs);
    s.pstride = round4(s.Lq * s.Lk);
    int64_t psize[2] = {s.B * s.heads, s.pstride}, osize[3] = {s.B, s.Lq, s.H};
    hr_tensor *probs = record ? empty_on(like, 2, psize, HR_F32) : nullptr;
    hr_tensor *out = empty_on(like, 3, osize, like->dtype);
    hr_tensor *result = nullptr;
    bool tc = use_tc(s, dt);
    size_t smem = tc ? forward_smem_tc(s) : forward_smem(s);
    if ((record && !probs) || !out) goto done;
    s.vec = s.H % 8 == 0 && s.ld % 8 == 0 && ((uintptr_t)qp & 15u) == 0 && ((uintptr_t)kp & 15u) == 0 &&
            ((uintptr_t)vp & 15u) == 0;
    if (allow_smem(tc ? (dt == HR_BF16 ? (const void *)attn_forward_tc<true> : (const void *)attn_forward_tc<false>)
                      : (const void *)attn_forward,
                   smem, "attention"))
        goto done;
    if (s.has_noise) {
        uint32_t key[2];
        hr_generator_key(gen, key);
        s.k0 = key[0], s.k1 = key[1];
        uint64_t n = (uint64_t)(s.B * s.heads * s.Lq * s.Lk);
        s.block0 = hr_generator_reserve(gen, (n + 3) / 4);
    }
    {
        const char *mp = mask ? (const char *)hr_tensor_data(mask) : nullptr;
        float *pp = probs ? (float *)hr_tensor_data(probs) : nullptr;
        char *op = (char *)hr_tensor_data(out);
        s.vec_out = s.H % 8 == 0 && ((uintptr_t)op & 15u) == 0;
        unsigned grid = (unsigned)(s.B * s.heads);
        if (!tc) attn_forward<<<grid, kAttnThreads, smem, st>>>(s, qp, kp, vp, mp, dt, pp, op);
        else if (dt == HR_BF16) attn_forward_tc<true><<<grid, kAttnThreads, smem, st>>>(s, qp, kp, vp, mp, dt, pp, op);
        else attn_forward_tc<false><<<grid, kAttnThreads, smem, st>>>(s, qp, kp, vp, mp, dt, pp, op);
    }
    if (check_launch("attention")) goto done;
    if (record) {
        hr_node *node = hr_node_new("attention", attn_backward_node, ninputs, inputs, sizeof(AttnCtx));
        bool saved = node != nullptr;
        for (int i = 0; i < nheld && saved; i++) saved = hr_node_save(node, held[i]) >= 0;
        if (!saved || hr_node_save(node, probs) < 0) {
            hr_node_release(node);
            goto done;
        }
        ((AttnCtx *)node->ctx)->s = s;
        hr_node_attach(node, out);
    }
    result = out;
    out = nullptr;
done:
    hr_tensor_release(probs);
    hr_tensor_release(out);
    return result;
}

} // namespace

/* Whether a pass of the fused kernels over Lq queries, Lk keys and heads of dh columns of dtype
 * dt fits a block's shared memory on dev. */
bool fused_shape_fits(int dt, int64_t B, int64_t Lq, int64_t Lk, int64_t H, int64_t heads, int dev)
{
    if (dt != HR_F32 && dt != HR_BF16 && dt != HR_F16) return false;
    int64_t dh = H / heads;
    if (B < 1 || Lq < 1 || Lk < 1 || Lq > kAttnMaxLen || Lk > kAttnMaxLen) return false;
    if (dh < 4 || dh > kAttnMaxHead || dh % 4) return false;
    if (B * heads > 0x7fffffff) return false;
    AttnShape s = {};
    s.Lq = Lq, s.Lk = Lk, s.dh = dh;
    s.has_mask = true, s.mask_qstride = Lk; /* the largest mask, a row per query, and dropout */
    s.has_noise = true;
    bool tc = use_tc(s, dt);
    size_t fwd = tc ? forward_smem_tc(s) : forward_smem(s), bwd = tc ? backward_smem_tc(s) : backward_smem(s);
    return (fwd > bwd ? fwd : bwd) <= smem_limit(dev);
}

bool attention_fused_fits(const hr_tensor *q, const hr_tensor *k, int64_t heads)
{
    return fused_shape_fits(q->dtype, q->size[0], q->size[1], k->size[1], q->size[2], heads, dev_of(q));
}

hr_tensor *attention_fused(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads, double dropout_p,
                           bool training, struct hr_generator *gen)
{
    AttnShape s = {};
    s.B = q->size[0], s.Lq = q->size[1], s.Lk = k->size[1], s.H = q->size[2], s.heads = heads, s.dh = s.H / heads;
    s.ld = s.H;
    hr_tensor *qc = hr_contiguous(q), *kc = hr_contiguous(k), *vc = hr_contiguous(v), *result = nullptr;
    if (qc && kc && vc) {
        hr_tensor *held[3] = {qc, kc, vc}, *inputs[3] = {q, k, v};
        result = attention_fused_run(s, held, 3, inputs, 3, (const char *)hr_tensor_data(qc), (const char *)hr_tensor_data(kc),
                                     (const char *)hr_tensor_data(vc), mask, dropout_p, training, gen);
    }
    hr_tensor_release(qc);
    hr_tensor_release(kc);
    hr_tensor_release(vc);
    return result;
}

hr_tensor *attention_fused_packed(hr_tensor *qkv, hr_tensor *mask, int64_t heads, double dropout_p, bool training,
                                  struct hr_generator *gen)
{
    AttnShape s = {};
    s.B = qkv->size[0], s.Lq = s.Lk = qkv->size[1], s.H = qkv->size[2] / 3, s.heads = heads, s.dh = s.H / heads;
    s.ld = 3 * s.H;
    s.packed = true;
    hr_tensor *qc = hr_contiguous(qkv), *result = nullptr;
    if (qc) {
        const char *base = (const char *)hr_tensor_data(qc);
        const int64_t el = (int64_t)hr_dtype_size(qkv->dtype);
        result = attention_fused_run(s, &qc, 1, &qkv, 1, base, base + s.H * el, base + 2 * s.H * el, mask, dropout_p,
                                     training, gen);
    }
    hr_tensor_release(qc);
    return result;
}

} // namespace hrc
