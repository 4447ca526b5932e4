/* cpu/cross_entropy.c — softmax cross entropy fused with its gradient (PyTorch semantics:
 * ignore_index, label smoothing, none/mean/sum). Rows are log-sum-exp'd in double. */
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_nn.h"
#include "cpu/hr_simd.h"

typedef struct {
    int64_t rows, classes, width, ignore_index, counted; /* width: the logits' columns (classes first) */
    double smoothing;
    hr_reduction reduction;
} ce_ctx;

typedef struct {
    const void *x;
    int64_t row_stride; /* elements between rows (the class dimension is contiguous) */
    const int64_t *target;
    double *lse;
    double *loss;
    int64_t classes, ignore_index;
    double smoothing;
    hr_dtype dt;
} ce_fwd_job;

typedef double hr_v8d __attribute__((vector_size(64)));

/* 8 floats as 8 doubles: one conversion with AVX-512 (GCC splits the generic one into halves and
 * reassembles them, a third of the loop below). */
static inline hr_v8d widen(hr_v8f v)
{
#if defined(__AVX512F__)
    __m256 f;
    memcpy(&f, &v, sizeof f);
    __m512d d = _mm512_cvtps_pd(f);
    hr_v8d r;
    memcpy(&r, &d, sizeof r);
    return r;
#else
    return __builtin_convertvector(v, hr_v8d);
#endif
}

/* sum of exp(x[i] - shift) over a contiguous float row: 8 lanes of the vectorised exp, each
 * exponential added in double to one of two vector accumulators (lane l of a vector to lane l),
 * which are summed at the end in a fixed order. Adding each vector's pairwise float sum to one
 * double made a chain of dependent additions that bound the loop (the LM head's 50k-class rows). */
static double sum_exp_f32(const float *x, int64_t n, float shift)
{
    hr_v8d acc0 = {0}, acc1 = {0};
    int64_t i = 0;
    const hr_v8f sh = hr_v8f_splat(shift);
    for (; i + 16 <= n; i += 16) {
        hr_v8f e0, e1; /* exp of elements i..i+7 and i+8..i+15 */
#if HR_VW == 16
        hr_vwf v;
        memcpy(&v, x + i, sizeof v);
        hr_vwf e = hr_exp_vwf(v - hr_vwf_splat(shift));
        memcpy(&e0, &e, sizeof e0);
        memcpy(&e1, (const char *)&e + sizeof e0, sizeof e1);
#else
        hr_v8f v0, v1;
        memcpy(&v0, x + i, sizeof v0);
        memcpy(&v1, x + i + 8, sizeof v1);
        e0 = hr_exp_v8f(v0 - sh);
        e1 = hr_exp_v8f(v1 - sh);
#endif
        acc0 += widen(e0);
        acc1 += widen(e1);
    }
    for (; i + 8 <= n; i += 8) {
        hr_v8f v;
        memcpy(&v, x + i, sizeof v);
        acc0 += widen(hr_exp_v8f(v - sh));
    }
    acc0 += acc1;
    double s = ((acc0[0] + acc0[1]) + (acc0[2] + acc0[3])) + ((acc0[4] + acc0[5]) + (acc0[6] + acc0[7]));
    for (; i < n; i++) s += exp((double)x[i] - shift);
    return s;
}

static void ce_forward_rows(void *arg, int64_t begin, int64_t end)
{
    const ce_fwd_job *j = arg;
    int64_t C = j->classes;
    for (int64_t r = begin; r < end; r++) {
        const int64_t off = r * j->row_stride;
        int64_t t = j->target[r];
        double lse, sum_x = 0, xt;
        if (j->dt == HR_F32) {
            const float *row = (const float *)j->x + off;
            bool nan;
            float mx = hr_maxmin_f32(row, C, true, &nan);
            if (nan) mx = NAN;
            lse = (double)mx + log(sum_exp_f32(row, C, mx));
            if (j->smoothing != 0)
                for (int64_t c = 0; c < C; c++) sum_x += row[c];
            xt = t == j->ignore_index ? 0 : row[t];
        } else {
            const double *row = (const double *)j->x + off;
            double mx = -INFINITY;
            for (int64_t c = 0; c < C; c++)
                if (row[c] > mx || row[c] != row[c]) mx = row[c];
            double s = 0;
            for (int64_t c = 0; c < C; c++) s += exp(row[c] - mx);
            lse = mx + log(s);
            /* only with smoothing, as for f32: a -inf logit would make 0 * smooth NaN */
            if (j->smoothing != 0)
                for (int64_t c = 0; c < C; c++) sum_x += row[c];
            xt = t == j->ignore_index ? 0 : row[t];
        }
        j->lse[r] = lse;
        if (t == j->ignore_index) {
            j->loss[r] = 0;
            continue;
        }
        double nll = lse - xt;
        double smooth = lse - sum_x / (double)C; /* mean over classes of -log p */
        j->loss[r] = (1.0 - j->smoothing) * nll + j->smoothing * smooth;
    }
}

typedef struct {
    const void *x;
    int64_t row_stride;
    const int64_t *target;
    const double *lse;
    const void *g; /* upstream gradient: per row (none) or one scalar */
    bool per_row;
    double scale; /* 1/count for mean */
    void *gx;
    int64_t classes, width, ignore_index; /* gx has width columns, zero past the classes */
    double smoothing;
    hr_dtype dt, gdt;
} ce_bwd_job;

static void ce_backward_rows(void *arg, int64_t begin, int64_t end)
{
    const ce_bwd_job *j = arg;
    int64_t C = j->classes, W = j->width;
    double gscalar = j->per_row ? 0 : hr_load_f64(j->g, j->gdt) * j->scale;
    for (int64_t r = begin; r < end; r++) {
        int64_t t = j->target[r];
        double gr = j->per_row ? hr_load_f64((const char *)j->g + (size_t)r * hr_dtype_size(j->gdt), j->gdt) : gscalar;
        if (j->dt == HR_F32) {
            const float *row = (const float *)j->x + r * j->row_stride;
            float *out = (float *)j->gx + r * W;
            if (t == j->ignore_index) {
                memset(out, 0, sizeof(float) * (size_t)W);
                continue;
            }
            memset(out + C, 0, sizeof(float) * (size_t)(W - C));
            /* d/dx_c = g * (p_c - smoothing / C - [c == t] (1 - smoothing)) */
            const float lse = (float)j->lse[r], gf = (float)gr, base = (float)(j->smoothing / (double)C);
            const hr_v8f lsev = hr_v8f_splat(lse), gv = hr_v8f_splat(gf), bv = hr_v8f_splat(base);
            const hr_vwf lsew = hr_vwf_splat(lse), gw = hr_vwf_splat(gf), bw = hr_vwf_splat(base);
            int64_t c = 0;
            /* the widest vectors, then 8 lanes: the same bits per element either way */
            for (; c + HR_VW <= C; c += HR_VW) {
                hr_vwf v;
                memcpy(&v, row + c, sizeof v);
                hr_vwf o = (hr_exp_vwf(v - lsew) - bw) * gw;
                memcpy(out + c, &o, sizeof o);
            }
            for (; c + 8 <= C; c += 8) {
                hr_v8f v;
                memcpy(&v, row + c, sizeof v);
                hr_v8f o = (hr_exp_v8f(v - lsev) - bv) * gv;
                memcpy(out + c, &o, sizeof o);
            }
            for (; c < C; c++) out[c] = (float)((exp((double)row[c] - j->lse[r]) - j->smoothing / (double)C) * gr);
            out[t] -= (float)((1.0 - j->smoothing) * gr);
        } else {
            const double *row = (const double *)j->x + r * j->row_stride;
            double *out = (double *)j->gx + r * W;
            memset(out + C, 0, sizeof(double) * (size_t)(W - C));
            for (int64_t c = 0; c < C; c++) {
                double v = 0;
                if (t != j->ignore_index) {
                    double p = exp(row[c] - j->lse[r]);
                    v = (p - j->smoothing / (double)C - (c == t ? 1.0 - j->smoothing : 0.0)) * gr;
                }
                out[c] = v;
            }
        }
    }
}

static int ce_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const ce_ctx *c = node->ctx;
    hr_tensor *x = hr_node_saved(node, 0), *target = hr_node_saved(node, 1), *lse = hr_node_saved(node, 2);
    if (!x || !target || !lse) return -1;
    hr_tensor *g = hr_contiguous((hr_tensor *)grad);
    if (!g) return -1;
    gi[0] = hr_tensor_empty(x->ndim, x->size, x->dtype, hr_cpu());
    if (!gi[0]) {
        hr_tensor_release(g);
        return -1;
    }
    ce_bwd_job j = {hr_tensor_data(x), x->stride[0], hr_tensor_data(target), hr_tensor_data(lse), hr_tensor_data(g),
                    c->reduction == HR_REDUCE_NONE,
                    c->reduction == HR_REDUCE_MEAN ? (c->counted ? 1.0 / (double)c->counted : NAN) : 1.0,
                    hr_tensor_data(gi[0]), c->classes, c->width, c->ignore_index, c->smoothing, x->dtype, g->dtype};
    hr_parallel_for(c->rows, 8, ce_backward_rows, &j);
    hr_tensor_release(g);
    return 0;
}

/* The checks of both entries: 2-D logits of an accepted dtype (f32/f64, or bf16/f16 on a GPU when
 * half), a matching target, a smoothing in [0, 1], at most as many classes as columns. */
static int check_args(hr_tensor *logits, hr_tensor *target, int64_t classes, double label_smoothing, bool half)
{
    char a[96], b[96];
    if (hr_tensor_check_live(logits, "cross_entropy") || hr_tensor_check_live(target, "cross_entropy")) return -1;
    if (half && (logits->ndim != 2 || (logits->dtype != HR_BF16 && logits->dtype != HR_F16) ||
                 hr_tensor_device(logits).type != HR_CUDA))
        return hr_fail(HR_EINVAL, "cross_entropy: the f32 loss of half logits takes 2-D bf16/f16 GPU logits, got %s",
                       hr_tensor_desc(logits, a, sizeof a));
    if (!half && (logits->ndim != 2 || (logits->dtype != HR_F32 && logits->dtype != HR_F64)))
        return hr_fail(HR_EINVAL, "cross_entropy: logits must be 2-D [N, C] f32 or f64, got %s",
                       hr_tensor_desc(logits, a, sizeof a));
    if (target->ndim != 1 || target->size[0] != logits->size[0] || (target->dtype != HR_I64 && target->dtype != HR_I32))
        return hr_fail(HR_EINVAL, "cross_entropy: target must be 1-D i64/i32 of %" PRId64 " class indices, got %s",
                       logits->size[0], hr_tensor_desc(target, b, sizeof b));
    if (!(label_smoothing >= 0 && label_smoothing <= 1))
        return hr_fail(HR_EINVAL, "cross_entropy: label_smoothing must be in [0, 1], got %g", label_smoothing);
    if (classes > logits->size[1])
        return hr_fail(HR_EINVAL, "cross_entropy: %" PRId64 " classes in logits %s of %" PRId64 " columns", classes,
                       hr_tensor_desc(logits, a, sizeof a), logits->size[1]);
    return 0;
}

hr_tensor *hr_cross_entropy_of_half(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                                    double label_smoothing, hr_reduction reduction)
{
    if (check_args(logits, target, classes, label_smoothing, true)) return NULL;
    return hr_cuda_cross_entropy(logits, target, classes, ignore_index, label_smoothing, reduction);
}

hr_tensor *hr_cross_entropy(hr_tensor *logits, hr_tensor *target, int64_t classes, int64_t ignore_index,
                            double label_smoothing, hr_reduction reduction)
{
    if (check_args(logits, target, classes, label_smoothing, false)) return NULL;
    if (hr_tensor_device(logits).type != HR_CPU || hr_tensor_device(target).type != HR_CPU)
        return hr_cuda_cross_entropy(logits, target, classes, ignore_index, label_smoothing, reduction);
    int64_t N = logits->size[0], W = logits->size[1], C = classes > 0 ? classes : W;
    /* rows may be strided (e.g. a narrowed vocabulary); the class dimension must be contiguous */
    hr_tensor *x = logits->stride[1] == 1 || logits->size[1] <= 1 ? hr_view_alias(logits) : hr_contiguous(logits);
    hr_tensor *t = hr_cast(target, HR_I64);
    hr_tensor *lse = hr_tensor_empty(1, &N, HR_F64, hr_cpu());
    hr_tensor *loss = hr_tensor_empty(1, &N, HR_F64, hr_cpu());
    hr_tensor *out = NULL;
    if (!x || !t || !lse || !loss) goto done;
    int64_t counted = 0;
    const int64_t *tv = hr_tensor_data(t);
    for (int64_t r = 0; r < N; r++) {
        if (tv[r] == ignore_index) continue;
        if (tv[r] < 0 || tv[r] >= C) {
            hr_fail(HR_EINVAL, "cross_entropy: target %" PRId64 " at position %" PRId64 " is out of range for %" PRId64
                               " classes (ignore_index is %" PRId64 ")",
                    tv[r], r + 1, C, ignore_index);
            goto done;
        }
        counted++;
    }
    ce_fwd_job j = {hr_tensor_data(x), x->stride[0], tv, hr_tensor_data(lse), hr_tensor_data(loss), C, ignore_index,
                    label_smoothing, x->dtype};
    if (C > 0) hr_parallel_for(N, 8, ce_forward_rows, &j);
    const double *lv = hr_tensor_data(loss);
    if (reduction == HR_REDUCE_NONE) {
        out = hr_cast(loss, logits->dtype);
    } else {
        double s = 0;
        for (int64_t r = 0; r < N; r++) s += lv[r];
        if (reduction == HR_REDUCE_MEAN) s = counted ? s / (double)counted : NAN; /* like PyTorch: 0/0 */
        out = hr_tensor_empty(0, NULL, logits->dtype, hr_cpu());
        if (out) hr_store_f64(hr_tensor_data(out), out->dtype, s);
    }
    if (!out) goto done;
    hr_tensor *inputs[2] = {logits, target};
    if (hr_should_record(1, inputs)) {
        hr_node *node = hr_node_new("cross_entropy", ce_backward, 1, inputs, sizeof(ce_ctx));
        if (!node || hr_node_save(node, x) < 0 || hr_node_save(node, t) < 0 || hr_node_save(node, lse) < 0) {
            hr_node_release(node);
            hr_tensor_release(out);
            out = NULL;
            goto done;
        }
        ce_ctx *c = node->ctx;
        c->rows = N;
        c->classes = C;
        c->width = W;
        c->ignore_index = ignore_index;
        c->counted = counted;
        c->smoothing = label_smoothing;
        c->reduction = reduction;
        hr_node_attach(node, out);
    }
done:
    hr_tensor_release(x);
    hr_tensor_release(t);
    hr_tensor_release(lse);
    hr_tensor_release(loss);
    return out;
}
