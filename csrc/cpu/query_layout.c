/*
 * cpu/query_layout.c — where the queries of a pruned transformer layer sit.
 *
 * When a loss reads only some positions of a layer's output (MLM's masked tokens), the last layer
 * projects and attends queries for those positions alone. Attention wants them as [B, lq, H]: each
 * batch entry's asked-for positions in the order asked, padded to the entry with most. This walks
 * the asked-for rows once on the host and returns the two index lists that layout needs. It ran
 * as Lua tables before: for a 32-video batch (640 entries, 2720 masked tokens) that was most of the
 * Lua time of a forward pass, time a GPU spends waiting for its next kernels.
 */
#include <stdlib.h>

#include "hr_nn.h"

int hr_query_layout(const hr_tensor *rows, int64_t B, int64_t L, hr_tensor **gather_out, hr_tensor **keep_out,
                    int64_t *lq_out)
{
    *gather_out = *keep_out = NULL;
    *lq_out = 0;
    if (hr_tensor_check_live(rows, "query_layout")) return -1;
    if (hr_tensor_device(rows).type != HR_CPU || rows->dtype != HR_I64 || rows->ndim != 1)
        return hr_fail(HR_EINVAL, "query_layout: rows must be a 1-D i64 CPU tensor");
    if (B < 1 || L < 1) return hr_fail(HR_EINVAL, "query_layout: B and L must be positive");
    int64_t n = rows->size[0], stride = rows->stride[0];
    const int64_t *r = hr_tensor_data(rows);
    if (n == 0) return 0;
    int64_t *count = calloc((size_t)B, sizeof *count);
    if (!count) return hr_fail(HR_ENOMEM, "query_layout: out of memory");
    int64_t lq = 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t p = r[i * stride];
        if (p < 0 || p >= B * L) {
            free(count);
            return hr_fail(HR_EINVAL, "row %lld is outside the %lld x %lld positions", (long long)p, (long long)B,
                           (long long)L);
        }
        if (++count[p / L] > lq) lq = count[p / L];
    }
    if (lq >= L) { /* no fewer queries than the sequence has: the full layer is as cheap */
        free(count);
        return 0;
    }
    int64_t gsize = B * lq;
    hr_tensor *gather = hr_tensor_empty(1, &gsize, HR_I64, hr_cpu());
    hr_tensor *keep = gather ? hr_tensor_empty(1, &n, HR_I64, hr_cpu()) : NULL;
    if (!keep) {
        hr_tensor_release(gather);
        free(count);
        return -1;
    }
    int64_t *g = hr_tensor_data(gather), *k = hr_tensor_data(keep);
    for (int64_t b = 0; b < B; b++) count[b] = 0;
    for (int64_t i = 0; i < n; i++) { /* each row at its entry's next slot */
        int64_t p = r[i * stride], b = p / L, slot = b * lq + count[b]++;
        g[slot] = p;
        k[i] = slot;
    }
    /* the padding slots repeat the entry's first asked-for position (or the very first of all),
     * so that they attend over a real row; their outputs are never read */
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = count[b]; s < lq; s++) g[b * lq + s] = count[b] ? g[b * lq] : r[0];
    free(count);
    *gather_out = gather;
    *keep_out = keep;
    *lq_out = lq;
    return 1;
}
