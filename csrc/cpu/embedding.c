/* cpu/embedding.c — embedding lookup. The backward adds each token's gradient row into the used
 * rows of weight.grad in place: a step never rebuilds a dense vocabulary x hidden gradient. */
#include <inttypes.h>
#include <string.h>

#include "hr_autograd.h"
#include "hr_cuda.h"
#include "hr_nn.h"

typedef struct {
    int64_t padding_idx;
    int64_t vocab, hidden, count;
} emb_ctx;

static int read_indices(const hr_tensor *idx, int64_t vocab, int64_t **out, const char *op)
{
    int64_t n = hr_tensor_numel(idx);
    int64_t *buf = hr_alloc_bytes((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    if (!buf) return -1;
    hr_tensor *c = hr_contiguous((hr_tensor *)idx);
    if (!c) {
        hr_free_bytes(buf, (size_t)(n > 0 ? n : 1) * sizeof(int64_t));
        return -1;
    }
    const char *p = hr_tensor_data(c);
    size_t el = hr_dtype_size(c->dtype);
    for (int64_t k = 0; k < n; k++) {
        int64_t v = hr_load_i64(p + (size_t)k * el, c->dtype);
        if (v < 0 || v >= vocab) {
            hr_tensor_release(c);
            hr_free_bytes(buf, (size_t)(n > 0 ? n : 1) * sizeof(int64_t));
            return hr_fail(HR_EINVAL, "%s: index %" PRId64 " at position %" PRId64 " is out of range for %" PRId64 " rows",
                           op, v, k + 1, vocab);
        }
        buf[k] = v;
    }
    hr_tensor_release(c);
    *out = buf;
    return 0;
}

typedef struct {
    const int64_t *idx;
    int64_t count, hidden, padding_idx;
    const char *g;  /* [count, hidden] contiguous, dtype dt */
    char *w;        /* [vocab, hidden] destination rows, dtype dt, row stride ws elements */
    int64_t ws;
    hr_dtype dt;
} emb_scatter_job;

/* Parallel over hidden columns: every thread walks all tokens, so no two threads touch one element
 * and the summation order per element is the token order (deterministic). */
static void emb_scatter_cols(void *arg, int64_t begin, int64_t end)
{
    const emb_scatter_job *j = arg;
    for (int64_t k = 0; k < j->count; k++) {
        int64_t r = j->idx[k];
        if (r == j->padding_idx) continue;
        if (j->dt == HR_F32) {
            float *dst = (float *)j->w + r * j->ws;
            const float *src = (const float *)j->g + k * j->hidden;
            for (int64_t c = begin; c < end; c++) dst[c] += src[c];
        } else {
            double *dst = (double *)j->w + r * j->ws;
            const double *src = (const double *)j->g + k * j->hidden;
            for (int64_t c = begin; c < end; c++) dst[c] += src[c];
        }
    }
}

static int emb_backward(hr_node *node, const hr_tensor *grad, hr_tensor **gi)
{
    const emb_ctx *c = node->ctx;
    hr_tensor *idx_t = hr_node_saved(node, 0);
    if (!idx_t) return -1;
    hr_dtype dt = node->out_dtype;
    hr_tensor *g = hr_readable_as(grad, dt);
    if (!g) return -1;
    int64_t *idx = NULL;
    if (read_indices(idx_t, c->vocab, &idx, "embedding backward")) {
        hr_tensor_release(g);
        return -1;
    }
    hr_tensor *dst;
    bool in_place = node->next[0].leaf != NULL && node->next[0].leaf->dtype == dt &&
                    (!node->next[0].leaf->grad || hr_tensor_is_contiguous(node->next[0].leaf->grad));
    if (in_place) {
        dst = hr_leaf_grad_buffer(node->next[0].leaf);
    } else {
        int64_t size[2] = {c->vocab, c->hidden};
        dst = hr_tensor_zeros(2, size, dt, hr_cpu());
    }
    int rc = 0;
    if (!dst) rc = -1;
    else {
        emb_scatter_job j = {idx, c->count, c->hidden, c->padding_idx, hr_tensor_data(g), hr_tensor_data(dst),
                             c->hidden, dt};
        hr_parallel_for(c->hidden, 64, emb_scatter_cols, &j);
        hr_tensor_bump_version(dst);
        gi[0] = in_place ? HR_GRAD_HANDLED : dst;
    }
    hr_free_bytes(idx, (size_t)(c->count > 0 ? c->count : 1) * sizeof(int64_t));
    hr_tensor_release(g);
    return rc;
}

hr_tensor *hr_embedding(hr_tensor *weight, hr_tensor *indices, int64_t padding_idx)
{
    char a[96], b[96];
    if (hr_tensor_check_live(weight, "embedding") || hr_tensor_check_live(indices, "embedding")) return NULL;
    if (weight->ndim != 2)
        return hr_fail_null(HR_EINVAL, "embedding: weight must be 2-D [rows, hidden], got %s",
                            hr_tensor_desc(weight, a, sizeof a));
    if (indices->dtype != HR_I64 && indices->dtype != HR_I32)
        return hr_fail_null(HR_EINVAL, "embedding: indices must be i64 or i32, got %s", hr_tensor_desc(indices, b, sizeof b));
    if (weight->dtype != HR_F32 && weight->dtype != HR_F64)
        return hr_fail_null(HR_EINVAL, "embedding: weight is %s; f32 and f64 are supported", hr_dtype_name(weight->dtype));
    if (indices->ndim + 1 > HR_MAX_DIMS) return hr_fail_null(HR_EINVAL, "embedding: indices have too many dimensions");
    if (hr_tensor_device(weight).type != HR_CPU || hr_tensor_device(indices).type != HR_CPU)
        return hr_cuda_embedding(weight, indices, padding_idx);
    int64_t vocab = weight->size[0], hidden = weight->size[1];
    int64_t *idx = NULL;
    if (read_indices(indices, vocab, &idx, "embedding")) return NULL;
    int64_t count = hr_tensor_numel(indices);
    int64_t size[HR_MAX_DIMS];
    memcpy(size, indices->size, sizeof(int64_t) * (size_t)indices->ndim);
    size[indices->ndim] = hidden;
    hr_tensor *out = hr_tensor_empty(indices->ndim + 1, size, weight->dtype, hr_cpu());
    if (out) {
        size_t el = hr_dtype_size(weight->dtype);
        char *dst = hr_tensor_data(out);
        const char *base = hr_tensor_data(weight);
        for (int64_t k = 0; k < count; k++) {
            const char *row = base + (size_t)(idx[k] * weight->stride[0]) * el;
            char *o = dst + (size_t)(k * hidden) * el;
            if (weight->stride[1] == 1) memcpy(o, row, (size_t)hidden * el);
            else
                for (int64_t c = 0; c < hidden; c++) memcpy(o + (size_t)c * el, row + (size_t)(c * weight->stride[1]) * el, el);
        }
    }
    hr_free_bytes(idx, (size_t)(count > 0 ? count : 1) * sizeof(int64_t));
    if (!out) return NULL;
    hr_tensor *inputs[2] = {weight, indices};
    if (hr_should_record(1, inputs)) {
        hr_node *node = hr_node_new("embedding", emb_backward, 1, inputs, sizeof(emb_ctx));
        if (!node || hr_node_save(node, indices) < 0) {
            hr_node_release(node);
            hr_tensor_release(out);
            return NULL;
        }
        emb_ctx *c = node->ctx;
        c->padding_idx = padding_idx;
        c->vocab = vocab;
        c->hidden = hidden;
        c->count = count;
        hr_node_attach(node, out);
    }
    return out;
}
