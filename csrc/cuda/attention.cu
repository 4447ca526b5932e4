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
 * saved key and block instead of storing it. P is saved in f32 for the backward.
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
    int64_t mask_bstride, mask_qstride;
    float scale, keep;
    double p;
    bool has_noise;
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

/* rows x dh elements of a [*, H] tensor (dtype dt) starting at element (row0, col0) into tile. */
__device__ void load_tile(float *tile, const char *src, int dt, int64_t H, int64_t row0, int64_t col0, int rows, int dh)
{
    const int ld = tile_ld(dh), el = dtype_size(dt);
    for (int e = threadIdx.x; e < rows * dh; e += blockDim.x) {
        int r = e / dh, d = e - r * dh;
        tile[r * ld + d] = load_f32(src + ((row0 + r) * H + col0 + d) * el, dt);
    }
}

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

/* The dropout multiplier of element e of [B, heads, Lq, Lk]. */
__device__ __forceinline__ float noise_of(const AttnShape &s, int64_t e)
{
    uint32_t w[4];
    philox_block(s.k0, s.k1, s.block0 + (uint64_t)(e >> 2), w);
    return (double)u24(w[e & 3]) < s.p ? 0.0f : s.keep;
}

__device__ __forceinline__ float warp_max_f(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

__global__ void __launch_bounds__(kAttnThreads) attn_forward(AttnShape s, const char *q, const char *k, const char *v,
                                                             const char *mask, int dt, float *probs, char *out)
{
    extern __shared__ float4 smem4[];
    float *sm = (float *)smem4;
    const int Lq = (int)s.Lq, Lk = (int)s.Lk, dh = (int)s.dh, ld = tile_ld(dh), lp = score_ld(Lk);
    float *Qs = sm, *Ks = Qs + Lq * ld, *Vs = Ks + Lk * ld, *Ss = Vs + Lk * ld;
    const int64_t t = blockIdx.x, b = t / s.heads, h = t - b * s.heads;
    load_tile(Qs, q, dt, s.H, b * s.Lq, h * s.dh, Lq, dh);
    load_tile(Ks, k, dt, s.H, b * s.Lk, h * s.dh, Lk, dh);
    load_tile(Vs, v, dt, s.H, b * s.Lk, h * s.dh, Lk, dh);
    __syncthreads();
    const int el = dtype_size(dt);
    for (int e = threadIdx.x; e < Lq * Lk; e += blockDim.x) {
        int i = e / Lk, x = e - i * Lk;
        float sc = s.scale * dot_rows(Qs + i * ld, Ks + x * ld, dh);
        if (mask) sc += load_f32(mask + (b * s.mask_bstride + i * s.mask_qstride + x) * el, dt);
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
        int64_t e = (t * s.Lq + i) * s.Lk;
        if (lane < Lk) {
            float p = e0 * inv;
            if (probs) probs[e + lane] = p;
            row[lane] = s.has_noise ? p * noise_of(s, e + lane) : p;
        }
        if (lane + 32 < Lk) {
            float p = e1 * inv;
            if (probs) probs[e + lane + 32] = p;
            row[lane + 32] = s.has_noise ? p * noise_of(s, e + lane + 32) : p;
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
    const int64_t t = blockIdx.x, b = t / s.heads, h = t - b * s.heads;
    load_tile(Qs, q, dt, s.H, b * s.Lq, h * s.dh, Lq, dh);
    load_tile(Ks, k, dt, s.H, b * s.Lk, h * s.dh, Lk, dh);
    load_tile(Vs, v, dt, s.H, b * s.Lk, h * s.dh, Lk, dh);
    load_tile(Gs, g, gdt, s.H, b * s.Lq, h * s.dh, Lq, dh);
    const int64_t e0 = t * s.Lq * s.Lk;
    for (int e = threadIdx.x; e < Lq * Lk; e += blockDim.x) {
        int i = e / Lk, x = e - i * Lk;
        float p = probs[e0 + e];
        Ps[i * lp + x] = p;
        Ds[i * lp + x] = s.has_noise ? p * noise_of(s, e0 + e) : p; /* P' */
    }
    __syncthreads();
    const int el = dtype_size(dt);
    if (dv) /* dV = P'ᵀ dO */
        for (int e = threadIdx.x; e < Lk * dh; e += blockDim.x) {
            int x = e / dh, d = e - x * dh;
            float acc = 0.0f;
            for (int i = 0; i < Lq; i++) acc += Ds[i * lp + x] * Gs[i * ld + d];
            store_f32(dv + ((b * s.Lk + x) * s.H + h * s.dh + d) * el, dt, acc);
        }
    if (!dq && !dk) return;
    __syncthreads();
    for (int e = threadIdx.x; e < Lq * Lk; e += blockDim.x) { /* dP = (dO Vᵀ) * noise */
        int i = e / Lk, x = e - i * Lk;
        float d = dot_rows(Gs + i * ld, Vs + x * ld, dh);
        Ds[i * lp + x] = s.has_noise ? d * noise_of(s, e0 + e) : d;
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
            store_f32(dq + ((b * s.Lq + i) * s.H + h * s.dh + d) * el, dt, s.scale * acc);
        }
    if (dk)
        for (int e = threadIdx.x; e < Lk * dh; e += blockDim.x) {
            int x = e / dh, d = e - x * dh;
            float acc = 0.0f;
            for (int i = 0; i < Lq; i++) acc += Ds[i * lp + x] * Qs[i * ld + d];
            store_f32(dk + ((b * s.Lk + x) * s.H + h * s.dh + d) * el, dt, s.scale * acc);
        }
}

size_t forward_smem(const AttnShape &s)
{
    return sizeof(float) * (size_t)((s.Lq + 2 * s.Lk) * tile_ld(s.dh) + s.Lq * score_ld(s.Lk));
}

size_t backward_smem(const AttnShape &s)
{
    return sizeof(float) * (size_t)((2 * s.Lq + 2 * s.Lk) * tile_ld(s.dh) + 2 * s.Lq * score_ld(s.Lk));
}

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
template <typename K> int allow_smem(K kernel, size_t smem, const char *op)
{
    if (smem <= 48 * 1024) return 0;
    return check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), op,
                 "cudaFuncSetAttribute");
}

int attn_backward_node(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const AttnShape &s = ((const AttnCtx *)node->ctx)->s;
    hr_tensor *q = hr_node_saved(node, 0), *k = hr_node_saved(node, 1), *v = hr_node_saved(node, 2);
    hr_tensor *probs = hr_node_saved(node, 3);
    if (!q || !k || !v || !probs) return -1;
    cudaStream_t st = stream(dev_of(q));
    if (!st) return -1;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    bool need[3] = {hr_node_input_needs_grad(node, 0), hr_node_input_needs_grad(node, 1), hr_node_input_needs_grad(node, 2)};
    hr_tensor *outs[3] = {nullptr, nullptr, nullptr};
    const hr_tensor *like[3] = {q, k, v};
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (need[i] && !(outs[i] = empty_on(like[i], 3, like[i]->size, q->dtype))) rc = -1;
    size_t smem = backward_smem(s);
    if (rc == 0 && (need[0] || need[1] || need[2])) rc = allow_smem(attn_backward, smem, "attention backward");
    if (rc == 0 && (need[0] || need[1] || need[2])) {
        attn_backward<<<(unsigned)(s.B * s.heads), kAttnThreads, smem, st>>>(
            s, (const char *)hr_tensor_data(q), (const char *)hr_tensor_data(k), (const char *)hr_tensor_data(v), q->dtype,
            (const float *)hr_tensor_data(probs), (const char *)hr_tensor_data(g), g->dtype,
            outs[0] ? (char *)hr_tensor_data(outs[0]) : nullptr, outs[1] ? (char *)hr_tensor_data(outs[1]) : nullptr,
            outs[2] ? (char *)hr_tensor_data(outs[2]) : nullptr);
        rc = check_launch("attention backward");
    }
    for (int i = 0; i < 3; i++) {
        if (rc == 0) gi[i] = outs[i];
        else hr_tensor_release(outs[i]);
    }
    hr_tensor_release(g);
    return rc;
}

} // namespace

bool attention_fused_fits(const hr_tensor *q, const hr_tensor *k, int64_t heads)
{
    if (q->dtype != HR_F32 && q->dtype != HR_BF16 && q->dtype != HR_F16) return false;
    int64_t Lq = q->size[1], Lk = k->size[1], dh = q->size[2] / heads;
    if (q->size[0] < 1 || Lq < 1 || Lk < 1 || Lq > kAttnMaxLen || Lk > kAttnMaxLen) return false;
    if (dh < 4 || dh > kAttnMaxHead || dh % 4) return false;
    if (q->size[0] * heads > 0x7fffffff) return false;
    AttnShape s = {};
    s.Lq = Lq, s.Lk = Lk, s.dh = dh;
    size_t need = backward_smem(s) > forward_smem(s) ? backward_smem(s) : forward_smem(s);
    return need <= smem_limit(dev_of(q));
}

hr_tensor *attention_fused(hr_tensor *q, hr_tensor *k, hr_tensor *v, hr_tensor *mask, int64_t heads, double dropout_p,
                           bool training, struct hr_generator *gen)
{
    cudaStream_t st = stream(dev_of(q));
    if (!st) return nullptr;
    AttnShape s = {};
    s.B = q->size[0], s.Lq = q->size[1], s.Lk = k->size[1], s.H = q->size[2], s.heads = heads, s.dh = s.H / heads;
    s.scale = (float)(1.0 / sqrt((double)s.dh));
    if (mask) {
        bool per_query = mask->ndim == 3;
        s.mask_bstride = per_query ? s.Lq * s.Lk : s.Lk;
        s.mask_qstride = per_query ? s.Lk : 0;
    }
    s.has_noise = training && dropout_p > 0;
    s.p = dropout_p;
    /* keep / (1 - p) in f32, as the dropout kernel and the CPU's noise hold it */
    s.keep = dropout_p < 1 ? 1.0f / (float)(1.0 - dropout_p) : 0.0f;
    hr_tensor *qc = hr_contiguous(q), *kc = hr_contiguous(k), *vc = hr_contiguous(v);
    hr_tensor *inputs[3] = {q, k, v};
    bool record = hr_should_record(3, inputs);
    int64_t psize[4] = {s.B, heads, s.Lq, s.Lk};
    hr_tensor *probs = record ? empty_on(q, 4, psize, HR_F32) : nullptr;
    hr_tensor *out = empty_on(q, 3, q->size, q->dtype);
    hr_tensor *result = nullptr;
    size_t smem = forward_smem(s);
    if (!qc || !kc || !vc || (record && !probs) || !out || allow_smem(attn_forward, smem, "attention")) goto done;
    if (s.has_noise) {
        uint32_t key[2];
        hr_generator_key(gen, key);
        s.k0 = key[0], s.k1 = key[1];
        uint64_t n = (uint64_t)(s.B * heads * s.Lq * s.Lk);
        s.block0 = hr_generator_reserve(gen, (n + 3) / 4);
    }
    attn_forward<<<(unsigned)(s.B * heads), kAttnThreads, smem, st>>>(
        s, (const char *)hr_tensor_data(qc), (const char *)hr_tensor_data(kc), (const char *)hr_tensor_data(vc),
        mask ? (const char *)hr_tensor_data(mask) : nullptr, q->dtype, probs ? (float *)hr_tensor_data(probs) : nullptr,
        (char *)hr_tensor_data(out));
    if (check_launch("attention")) goto done;
    if (record) {
        hr_node *node = hr_node_new("attention", attn_backward_node, 3, inputs, sizeof(AttnCtx));
        if (!node || hr_node_save(node, qc) < 0 || hr_node_save(node, kc) < 0 || hr_node_save(node, vc) < 0 ||
            hr_node_save(node, probs) < 0) {
            hr_node_release(node);
            goto done;
        }
        ((AttnCtx *)node->ctx)->s = s;
        hr_node_attach(node, out);
    }
    result = out;
    out = nullptr;
done:
    hr_tensor_release(qc);
    hr_tensor_release(kc);
    hr_tensor_release(vc);
    hr_tensor_release(probs);
    hr_tensor_release(out);
    return result;
}

} // namespace hrc
