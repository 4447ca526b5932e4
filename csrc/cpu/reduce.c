/*
 * reduce.c — reductions over one dimension or over all elements, and the scans cumsum/cumprod.
 *
 * Plan of every reduction: the input is seen as rows along the reduced dim (hr_rows.h). Each row is
 * cut into fixed blocks of RED_BLOCK elements; a task reduces one block into a small state, tasks run
 * on the thread pool, and blocks of a row are combined in order. The blocking depends only on the
 * shape, so results do not depend on the thread count or timing.
 *
 * Element kernels work on contiguous arrays of three compute types: float (f32; bf16/f16 are widened
 * to it), double (f64) and int64 (every integer type and bool). Contiguous f32/f64/i64 rows are read
 * in place; anything else (strided rows, other dtypes) is converted piece by piece into a stack buffer.
 * Floating-point sums accumulate in double with several independent accumulators, which the compiler
 * vectorises and which is accurate well beyond f32 rounding.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hr_reduce.h"
#include "cpu/hr_rows.h"
#include "cpu/hr_simd.h"

#define RED_BLOCK 65536 /* elements per task along a long row */
#define RED_PIECE 512   /* elements converted at a time into the stack buffer */

typedef enum { OP_SUM, OP_MEAN, OP_PROD, OP_MAX, OP_MIN, OP_VAR, OP_NORM, OP_ALL, OP_ANY } red_op;
typedef enum { CT_F, CT_D, CT_I } red_ctype;

typedef struct {
    double d;    /* float accumulator: sum, product, squared deviations, norm sum, max |x|; best value */
    int64_t i;   /* integer accumulator or best integer value */
    int64_t idx; /* position of the best value (max/min); -1 while the state has seen nothing */
    bool nan;    /* a NaN was seen (max/min/norm inf) */
    bool flag;   /* all/any */
} red_state;

typedef struct {
    red_op op;
    red_ctype ct;
    double p; /* norm order */
} red_kind;

static red_ctype ctype_of(hr_dtype dt)
{
    switch (dt) {
    case HR_F64: return CT_D;
    case HR_F32:
    case HR_BF16:
    case HR_F16: return CT_F;
    default: return CT_I;
    }
}

static void state_init(const red_kind *k, red_state *st)
{
    st->d = k->op == OP_PROD ? 1.0 : 0.0;
    st->i = k->op == OP_PROD ? 1 : 0;
    st->idx = -1;
    st->nan = false;
    st->flag = k->op == OP_ALL;
}

/* ------------------------------------------------------------------ float / double pieces */

/* Best value of a piece ignoring NaN, and whether a NaN was seen (n >= 1). */
static float scan_f(const float *x, int64_t n, bool is_max, bool *has_nan)
{
    return hr_maxmin_f32(x, n, is_max, has_nan);
}

static double scan_d(const double *x, int64_t n, bool is_max, bool *has_nan)
{
    double best = x[0];
    bool bad = false;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        if (v != v) bad = true;
        else if (best != best || (is_max ? v > best : v < best)) best = v;
    }
    *has_nan = bad;
    return best;
}

/* The pieces for float and double differ only in the element type; one macro writes both. */
#define DEFINE_FLOAT_PIECES(SFX, T)                                                                  \
    static double sum_##SFX(const T *x, int64_t n)                                                 \
    {                                                                                              \
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                    \
        int64_t i = 0;                                                                             \
        for (; i + 8 <= n; i += 8)                                                                 \
            for (int j = 0; j < 8; j++) a[j] += (double)x[i + j];                                  \
        double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));              \
        for (; i < n; i++) s += (double)x[i];                                                      \
        return s;                                                                                  \
    }                                                                                              \
    static double sqdev_##SFX(const T *x, int64_t n, double mean)                                  \
    {                                                                                              \
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                    \
        int64_t i = 0;                                                                             \
        for (; i + 8 <= n; i += 8)                                                                 \
            for (int j = 0; j < 8; j++) {                                                          \
                double v = (double)x[i + j] - mean;                                                \
                a[j] += v * v;                                                                     \
            }                                                                                      \
        double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));              \
        for (; i < n; i++) {                                                                       \
            double v = (double)x[i] - mean;                                                        \
            s += v * v;                                                                            \
        }                                                                                          \
        return s;                                                                                  \
    }                                                                                              \
    static double abssum_##SFX(const T *x, int64_t n)                                              \
    {                                                                                              \
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                    \
        int64_t i = 0;                                                                             \
        for (; i + 8 <= n; i += 8)                                                                 \
            for (int j = 0; j < 8; j++) a[j] += fabs((double)x[i + j]);                            \
        double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));              \
        for (; i < n; i++) s += fabs((double)x[i]);                                                \
        return s;                                                                                  \
    }                                                                                              \
    /* max or min of a piece: a vectorised scan for the value and for NaN, then a search for the \
     * first position holding it (NaN wins: the first NaN). */                                    \
    static void maxmin_##SFX(red_state *st, const T *x, int64_t n, int64_t base, bool is_max)      \
    {                                                                                              \
        if (st->nan || n <= 0) return;                                                             \
        bool any_bad;                                                                              \
        T best = scan_##SFX(x, n, is_max, &any_bad);                                               \
        if (any_bad) {                                                                             \
            int64_t j = 0;                                                                         \
            while (x[j] == x[j]) j++;                                                              \
            st->nan = true;                                                                        \
            st->d = NAN;                                                                           \
            st->idx = base + j;                                                                    \
            return;                                                                                \
        }                                                                                          \
        if (st->idx >= 0 && !(is_max ? (double)best > st->d : (double)best < st->d)) return;      \
        int64_t j = 0;                                                                             \
        while (x[j] != best) j++;                                                                  \
        st->d = (double)best;                                                                      \
        st->idx = base + j;                                                                        \
    }                                                                                              \
    static void piece_##SFX(const red_kind *k, red_state *st, const T *x, int64_t n, int64_t base, \
                            double mean)                                                           \
    {                                                                                              \
        switch (k->op) {                                                                           \
        case OP_SUM:                                                                               \
        case OP_MEAN: st->d += sum_##SFX(x, n); break;                                             \
        case OP_VAR: st->d += sqdev_##SFX(x, n, mean); break;                                      \
        case OP_PROD:                                                                              \
            for (int64_t i = 0; i < n; i++) st->d *= (double)x[i];                                 \
            break;                                                                                 \
        case OP_MAX: maxmin_##SFX(st, x, n, base, true); break;                                    \
        case OP_MIN: maxmin_##SFX(st, x, n, base, false); break;                                   \
        case OP_NORM:                                                                              \
            if (k->p == 2) {                                                                       \
                st->d += sqdev_##SFX(x, n, 0.0);                                                   \
            } else if (k->p == 1) {                                                                \
                st->d += abssum_##SFX(x, n);                                                       \
            } else if (isinf(k->p)) {                                                              \
                for (int64_t i = 0; i < n; i++) {                                                  \
                    double v = fabs((double)x[i]);                                                 \
                    if (v != v) st->nan = true;                                                    \
                    else if (v > st->d) st->d = v;                                                 \
                }                                                                                  \
            } else if (k->p == 0) {                                                                \
                for (int64_t i = 0; i < n; i++) st->d += x[i] != 0;                                \
            } else {                                                                               \
                for (int64_t i = 0; i < n; i++) st->d += pow(fabs((double)x[i]), k->p);            \
            }                                                                                      \
            break;                                                                                 \
        case OP_ALL:                                                                               \
            for (int64_t i = 0; i < n && st->flag; i++) st->flag = x[i] != 0;                      \
            break;                                                                                 \
        case OP_ANY:                                                                               \
            for (int64_t i = 0; i < n && !st->flag; i++) st->flag = x[i] != 0;                     \
            break;                                                                                 \
        }                                                                                          \
    }

DEFINE_FLOAT_PIECES(f, float)
DEFINE_FLOAT_PIECES(d, double)

/* ------------------------------------------------------------------ int64 pieces */

/* Integer sums and products wrap around like PyTorch's int64 arithmetic (unsigned: no UB). */
static void piece_i(const red_kind *k, red_state *st, const int64_t *x, int64_t n, int64_t base)
{
    switch (k->op) {
    case OP_SUM: {
        uint64_t a[4] = {0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) a[j] += (uint64_t)x[i + j];
        uint64_t s = (uint64_t)st->i + a[0] + a[1] + a[2] + a[3];
        for (; i < n; i++) s += (uint64_t)x[i];
        st->i = (int64_t)s;
        break;
    }
    case OP_PROD: {
        uint64_t s = (uint64_t)st->i;
        for (int64_t i = 0; i < n; i++) s *= (uint64_t)x[i];
        st->i = (int64_t)s;
        break;
    }
    case OP_MAX:
    case OP_MIN:
        for (int64_t i = 0; i < n; i++) {
            if (st->idx < 0 || (k->op == OP_MAX ? x[i] > st->i : x[i] < st->i)) {
                st->i = x[i];
                st->idx = base + i;
            }
        }
        break;
    case OP_ALL:
        for (int64_t i = 0; i < n && st->flag; i++) st->flag = x[i] != 0;
        break;
    case OP_ANY:
        for (int64_t i = 0; i < n && !st->flag; i++) st->flag = x[i] != 0;
        break;
    default: break; /* float-only ops never reach here (checked up front) */
    }
}

/* Merges the state of a later block (b) into the state of the earlier ones (a). */
static void state_combine(const red_kind *k, red_state *a, const red_state *b)
{
    switch (k->op) {
    case OP_SUM:
    case OP_MEAN:
    case OP_VAR:
        a->d += b->d;
        a->i = (int64_t)((uint64_t)a->i + (uint64_t)b->i);
        break;
    case OP_PROD:
        a->d *= b->d;
        a->i = (int64_t)((uint64_t)a->i * (uint64_t)b->i);
        break;
    case OP_MAX:
    case OP_MIN: {
        if (b->idx < 0 || a->nan) break;
        bool take;
        if (a->idx < 0 || b->nan) take = true;
        else if (k->ct == CT_I) take = k->op == OP_MAX ? b->i > a->i : b->i < a->i;
        else take = k->op == OP_MAX ? b->d > a->d : b->d < a->d;
        if (take) *a = *b;
        break;
    }
    case OP_NORM:
        if (isinf(k->p)) {
            a->nan |= b->nan;
            if (b->d > a->d) a->d = b->d;
        } else {
            a->d += b->d;
        }
        break;
    case OP_ALL: a->flag = a->flag && b->flag; break;
    case OP_ANY: a->flag = a->flag || b->flag; break;
    }
}

/* ------------------------------------------------------------------ the driver */

typedef enum { SINK_OUT, SINK_MEAN } red_sink;

typedef struct {
    red_kind k;
    hr_dtype dt;
    size_t el;
    const char *base;
    hr_rows g;
    int64_t nblocks;
    red_state *partials; /* rows * nblocks when rows are split, else NULL */
    double *means;       /* VAR: per-row means (written by pass 1, read by pass 2) */
    red_sink sink;
    bool unbiased, is_std;
    char *out;           /* values (may be NULL: argmax/argmin) */
    hr_dtype odt;
    size_t oel;
    int64_t *oidx;       /* indices (may be NULL) */
} red_job;

/* Feeds n elements of a row starting at p (element stride g.stride) into st. */
static void accumulate(const red_job *j, red_state *st, const char *p, int64_t n, int64_t base, double mean)
{
    int64_t sb = j->g.stride * (int64_t)j->el;
    bool dense = j->g.stride == 1 || n == 1;
    if (dense && j->dt == HR_F32) {
        piece_f(&j->k, st, (const float *)p, n, base, mean);
        return;
    }
    if (dense && j->dt == HR_F64) {
        piece_d(&j->k, st, (const double *)p, n, base, mean);
        return;
    }
    if (dense && j->dt == HR_I64) {
        piece_i(&j->k, st, (const int64_t *)p, n, base);
        return;
    }
    union {
        float f[RED_PIECE];
        double d[RED_PIECE];
        int64_t i[RED_PIECE];
    } buf;
    for (int64_t off = 0; off < n; off += RED_PIECE) {
        int64_t m = n - off < RED_PIECE ? n - off : RED_PIECE;
        const char *q = p + off * sb;
        switch (j->dt) {
        case HR_F32:
            for (int64_t i = 0; i < m; i++) memcpy(&buf.f[i], q + i * sb, 4);
            piece_f(&j->k, st, buf.f, m, base + off, mean);
            break;
        case HR_BF16:
        case HR_F16:
            for (int64_t i = 0; i < m; i++) {
                uint16_t h;
                memcpy(&h, q + i * sb, 2);
                buf.f[i] = j->dt == HR_BF16 ? hr_bf16_to_f32(h) : hr_f16_to_f32(h);
            }
            piece_f(&j->k, st, buf.f, m, base + off, mean);
            break;
        case HR_F64:
            for (int64_t i = 0; i < m; i++) memcpy(&buf.d[i], q + i * sb, 8);
            piece_d(&j->k, st, buf.d, m, base + off, mean);
            break;
        default:
            for (int64_t i = 0; i < m; i++) buf.i[i] = hr_load_i64(q + i * sb, j->dt);
            piece_i(&j->k, st, buf.i, m, base + off);
            break;
        }
    }
}

/* Writes a row's final state: into the outputs, or (VAR pass 1) as the row's mean. */
static void sink_row(const red_job *j, int64_t row, const red_state *st)
{
    int64_t n = j->g.n;
    if (j->sink == SINK_MEAN) {
        j->means[row] = st->d / (double)n;
        return;
    }
    if (j->oidx) j->oidx[row] = st->idx;
    if (!j->out) return;
    char *o = j->out + (size_t)row * j->oel;
    bool is_int = j->k.ct == CT_I;
    double v = 0;
    switch (j->k.op) {
    case OP_SUM:
    case OP_PROD:
    case OP_MAX:
    case OP_MIN:
        if (is_int) {
            hr_store_i64(o, j->odt, st->i);
            return;
        }
        v = st->nan ? NAN : st->d;
        break;
    case OP_MEAN: v = st->d / (double)n; break;
    case OP_VAR: {
        double div = (double)n - (j->unbiased ? 1.0 : 0.0);
        v = div > 0 ? st->d / div : NAN;
        if (j->is_std) v = sqrt(v);
        break;
    }
    case OP_NORM:
        if (st->nan) v = NAN;
        else if (j->k.p == 2) v = sqrt(st->d);
        else if (j->k.p == 1 || j->k.p == 0 || isinf(j->k.p)) v = st->d;
        else v = pow(st->d, 1.0 / j->k.p);
        break;
    case OP_ALL:
    case OP_ANY: v = st->flag ? 1.0 : 0.0; break;
    }
    hr_store_f64(o, j->odt, v);
}

static void red_worker(void *arg, int64_t begin, int64_t end)
{
    const red_job *j = arg;
    for (int64_t task = begin; task < end; task++) {
        int64_t row = task / j->nblocks, blk = task % j->nblocks;
        int64_t lo = blk * RED_BLOCK;
        int64_t hi = lo + RED_BLOCK < j->g.n ? lo + RED_BLOCK : j->g.n;
        const char *p = j->base + (hr_rows_offset(&j->g, row) + lo * j->g.stride) * (int64_t)j->el;
        red_state st;
        state_init(&j->k, &st);
        double mean = j->means && j->sink == SINK_OUT ? j->means[row] : 0.0;
        if (hi > lo) accumulate(j, &st, p, hi - lo, lo, mean);
        if (j->nblocks == 1) sink_row(j, row, &st);
        else j->partials[task] = st;
    }
}

static int run_pass(red_job *j)
{
    int64_t n = j->g.n;
    j->nblocks = n > RED_BLOCK ? (n + RED_BLOCK - 1) / RED_BLOCK : 1;
    int64_t tasks = j->g.rows * j->nblocks;
    int64_t per_task = n < RED_BLOCK ? (n > 0 ? n : 1) : RED_BLOCK;
    int64_t grain = 32768 / per_task + 1;
    j->partials = NULL;
    if (j->nblocks > 1) {
        j->partials = malloc((size_t)tasks * sizeof *j->partials);
        if (!j->partials) return hr_fail(HR_ENOMEM, "out of memory for %" PRId64 " partial results", tasks);
    }
    hr_parallel_for(tasks, grain, red_worker, j);
    if (j->partials) {
        for (int64_t row = 0; row < j->g.rows; row++) {
            red_state *first = &j->partials[row * j->nblocks];
            for (int64_t b = 1; b < j->nblocks; b++) state_combine(&j->k, first, first + b);
            sink_row(j, row, first);
        }
        free(j->partials);
        j->partials = NULL;
    }
    return 0;
}

/* ------------------------------------------------------------------ column sums */

/* Summing a leading or middle dim of a contiguous tensor: seen as [outer, n, inner], a task keeps
 * up to CB double accumulators for a block of columns and streams down COL_ROWS rows, so memory is
 * read in order instead of one strided element per output at a time. Tall inputs give several row
 * chunks per column block; their partial sums are added in chunk order afterwards. Blocks and
 * chunks depend only on the shape, so results are deterministic. */
#define CB 1024
#define COL_ROWS 512

typedef struct {
    bool mean, f64;
    const char *in;
    char *out;
    int64_t n, inner, nblocks, nchunks;
    double *partial; /* tasks * CB when nchunks > 1 */
} col_job;

static void col_store(const col_job *j, int64_t at, const double *acc, int64_t m)
{
    for (int64_t c = 0; c < m; c++) {
        double v = j->mean ? (j->n ? acc[c] / (double)j->n : NAN) : acc[c];
        if (j->f64) ((double *)j->out)[at + c] = v;
        else ((float *)j->out)[at + c] = (float)v;
    }
}

static void col_worker(void *arg, int64_t begin, int64_t end)
{
    const col_job *j = arg;
    for (int64_t task = begin; task < end; task++) {
        int64_t ch = task % j->nchunks, ob = task / j->nchunks;
        int64_t o = ob / j->nblocks, c0 = (ob % j->nblocks) * CB;
        int64_t m = j->inner - c0 < CB ? j->inner - c0 : CB;
        int64_t r0 = ch * COL_ROWS, r1 = r0 + COL_ROWS < j->n ? r0 + COL_ROWS : j->n;
        double acc[CB];
        for (int64_t c = 0; c < m; c++) acc[c] = 0;
        /* four rows per sweep over the accumulators: a quarter of their loads and stores */
        int64_t in = j->inner, i = r0;
        int64_t first = (o * j->n + r0) * in + c0;
        if (j->f64) {
            const double *x = (const double *)j->in + first;
            for (; i + 4 <= r1; i += 4, x += 4 * in)
                for (int64_t c = 0; c < m; c++) acc[c] += (x[c] + x[c + in]) + (x[c + 2 * in] + x[c + 3 * in]);
            for (; i < r1; i++, x += in)
                for (int64_t c = 0; c < m; c++) acc[c] += x[c];
        } else {
            const float *x = (const float *)j->in + first;
            for (; i + 4 <= r1; i += 4, x += 4 * in)
                for (int64_t c = 0; c < m; c++)
                    acc[c] += ((double)x[c] + (double)x[c + in]) + ((double)x[c + 2 * in] + (double)x[c + 3 * in]);
            for (; i < r1; i++, x += in)
                for (int64_t c = 0; c < m; c++) acc[c] += (double)x[c];
        }
        if (j->nchunks == 1) col_store(j, o * in + c0, acc, m);
        else memcpy(j->partial + task * CB, acc, (size_t)m * sizeof *acc);
    }
}

static int column_sum(const hr_tensor *t, int d, bool mean, hr_tensor *out)
{
    col_job j;
    j.mean = mean;
    j.f64 = t->dtype == HR_F64;
    j.in = hr_tensor_data(t);
    j.out = hr_tensor_data(out);
    j.n = t->size[d];
    j.inner = 1;
    for (int i = d + 1; i < t->ndim; i++) j.inner *= t->size[i];
    int64_t outer = 1;
    for (int i = 0; i < d; i++) outer *= t->size[i];
    j.nblocks = (j.inner + CB - 1) / CB;
    j.nchunks = j.n > COL_ROWS ? (j.n + COL_ROWS - 1) / COL_ROWS : 1;
    int64_t tasks = outer * j.nblocks * j.nchunks;
    j.partial = NULL;
    if (j.nchunks > 1) {
        j.partial = malloc((size_t)tasks * CB * sizeof *j.partial);
        if (!j.partial) return hr_fail(HR_ENOMEM, "sum: out of memory for %" PRId64 " partial column sums", tasks * CB);
    }
    int64_t rows = j.n < COL_ROWS ? (j.n > 0 ? j.n : 1) : COL_ROWS;
    int64_t per_task = rows * (j.inner < CB ? j.inner : CB);
    hr_parallel_for(tasks, 32768 / per_task + 1, col_worker, &j);
    if (j.partial) {
        for (int64_t ob = 0; ob < outer * j.nblocks; ob++) {
            int64_t o = ob / j.nblocks, c0 = (ob % j.nblocks) * CB;
            int64_t m = j.inner - c0 < CB ? j.inner - c0 : CB;
            double *acc = j.partial + ob * j.nchunks * CB;
            for (int64_t ch = 1; ch < j.nchunks; ch++)
                for (int64_t c = 0; c < m; c++) acc[c] += acc[ch * CB + c];
            col_store(&j, o * j.inner + c0, acc, m);
        }
        free(j.partial);
    }
    return 0;
}

static const char *op_name_of(red_op op, double p, bool is_std, bool want_values)
{
    switch (op) {
    case OP_SUM: return "sum";
    case OP_MEAN: return "mean";
    case OP_PROD: return "prod";
    case OP_MAX: return want_values ? "max" : "argmax";
    case OP_MIN: return want_values ? "min" : "argmin";
    case OP_VAR: return is_std ? "std" : "var";
    case OP_NORM: (void)p; return "norm";
    case OP_ALL: return "all";
    case OP_ANY: return "any";
    }
    return "reduce";
}

typedef struct {
    red_op op;
    double p;
    bool unbiased, is_std;
} red_args;

/* The one entry point: validates, shapes the outputs, runs the pass(es). */
static int reduce(const red_args *a, hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    bool want_values = values != NULL;
    const char *name = op_name_of(a->op, a->p, a->is_std, want_values);
    if (values) *values = NULL;
    if (indices) *indices = NULL;
    bool cuda_path = a->op == OP_SUM || a->op == OP_MEAN || a->op == OP_MAX || a->op == OP_MIN;
    if (!cuda_path && hr_rows_on_host(t)) {
        hr_tensor *h = hr_rows_host_copy(t), *hv = NULL, *hi = NULL;
        if (!h) return -1;
        int rc = reduce(a, h, dim, keepdim, values ? &hv : NULL, indices ? &hi : NULL);
        hr_tensor_release(h);
        if (rc) return -1;
        return hr_rows_results_back(hv, hi, hr_tensor_device(t), values, indices);
    }
    if (hr_rows_check_input_dev(t, name, cuda_path)) return -1;
    red_kind k = {a->op, ctype_of(t->dtype), a->p};
    if ((a->op == OP_MEAN || a->op == OP_VAR || a->op == OP_NORM) && k.ct == CT_I)
        return hr_fail(HR_EINVAL, "%s: expected a floating-point tensor, got %s (convert it first, e.g. with :float())",
                       name, hr_dtype_name(t->dtype));
    if (a->op == OP_NORM && !(a->p >= 0))
        return hr_fail(HR_EINVAL, "norm: p must be >= 0 or inf, got %g", a->p);

    hr_tensor *src = NULL;
    red_job j;
    memset(&j, 0, sizeof j);
    int out_ndim = 0;
    int64_t out_size[HR_MAX_DIMS];
    if (dim == HR_DIM_ALL) {
        src = hr_contiguous(t);
        if (!src) return -1;
        int64_t numel = hr_tensor_numel(src);
        hr_rows_init(&j.g, 1, &numel, (const int64_t[]){1}, 0);
        if (keepdim) {
            out_ndim = t->ndim;
            for (int i = 0; i < out_ndim; i++) out_size[i] = 1;
        }
    } else {
        int d;
        if (hr_wrap_dim(name, dim, t->ndim, &d)) return -1;
        src = t;
        hr_tensor_retain(src);
        hr_rows_init(&j.g, t->ndim, t->size, t->stride, t->ndim ? d : -1);
        for (int i = 0; i < t->ndim; i++) {
            if (i == d && !keepdim) continue;
            out_size[out_ndim++] = i == d ? 1 : t->size[i];
        }
    }
    if (j.g.n == 0 && (a->op == OP_MAX || a->op == OP_MIN)) {
        char buf[160];
        hr_tensor_release(src);
        if (dim == HR_DIM_ALL)
            return hr_fail(HR_EINVAL, "%s: cannot reduce an empty tensor (shape %s) without an identity", name,
                           hr_shape_str(t->ndim, t->size, buf, sizeof buf));
        return hr_fail(HR_EINVAL, "%s: cannot reduce over dimension %d of size 0 (shape %s): it has no identity", name,
                       dim < 0 ? dim + t->ndim + 1 : dim + 1, hr_shape_str(t->ndim, t->size, buf, sizeof buf));
    }

    hr_dtype odt = t->dtype;
    if ((a->op == OP_SUM || a->op == OP_PROD) && k.ct == CT_I) odt = HR_I64;
    if (a->op == OP_ALL || a->op == OP_ANY) odt = t->dtype == HR_U8 ? HR_U8 : HR_BOOL; /* PyTorch keeps u8 */
    hr_device dev = hr_tensor_device(t);
    hr_tensor *vout = NULL, *iout = NULL;
    if (values) vout = hr_tensor_empty(out_ndim, out_size, odt, dev);
    if (indices) iout = hr_tensor_empty(out_ndim, out_size, HR_I64, dev);
    if ((values && !vout) || (indices && !iout)) goto fail;
    if (dev.type == HR_CUDA) {
        hr_cuda_reduce_op cop = a->op == OP_SUM    ? HR_CUDA_SUM
                                : a->op == OP_MEAN ? HR_CUDA_MEAN
                                : a->op == OP_MAX  ? HR_CUDA_MAX
                                                   : HR_CUDA_MIN;
        if (hr_cuda_reduce(cop, t, dim, vout, iout)) goto fail;
        hr_tensor_release(src);
        if (values) *values = vout;
        if (indices) *indices = iout;
        return 0;
    }

    j.k = k;
    j.dt = src->dtype;
    j.el = hr_dtype_size(src->dtype);
    j.base = hr_tensor_data(src);
    j.unbiased = a->unbiased;
    j.is_std = a->is_std;
    j.out = vout ? hr_tensor_data(vout) : NULL;
    j.odt = odt;
    j.oel = hr_dtype_size(odt);
    j.oidx = iout ? hr_tensor_data(iout) : NULL;
    j.sink = SINK_OUT;
    if ((a->op == OP_SUM || a->op == OP_MEAN) && (t->dtype == HR_F32 || t->dtype == HR_F64) && dim != HR_DIM_ALL &&
        t->ndim >= 2 && hr_tensor_is_contiguous(t) && j.g.stride > 1 && vout && hr_tensor_numel(vout) > 0) {
        int d;
        hr_wrap_dim(name, dim, t->ndim, &d);
        if (column_sum(t, d, a->op == OP_MEAN, vout)) goto fail;
        hr_tensor_release(src);
        *values = vout;
        return 0;
    }
    if (a->op == OP_VAR) {
        size_t rows = (size_t)(j.g.rows > 0 ? j.g.rows : 1);
        j.means = malloc(rows * sizeof *j.means);
        if (!j.means) {
            hr_fail(HR_ENOMEM, "%s: out of memory for %zu row means", name, rows);
            goto fail;
        }
        j.k.op = OP_SUM;
        j.sink = SINK_MEAN;
        if (run_pass(&j)) goto fail;
        j.k.op = OP_VAR;
        j.sink = SINK_OUT;
    }
    if (run_pass(&j)) goto fail;
    free(j.means);
    hr_tensor_release(src);
    if (values) *values = vout;
    if (indices) *indices = iout;
    return 0;
fail:
    free(j.means);
    hr_tensor_release(src);
    if (vout) hr_tensor_release(vout);
    if (iout) hr_tensor_release(iout);
    return -1;
}

static hr_tensor *reduce_values(red_op op, double p, bool unbiased, bool is_std, hr_tensor *t, int dim, bool keepdim)
{
    red_args a = {op, p, unbiased, is_std};
    hr_tensor *v;
    return reduce(&a, t, dim, keepdim, &v, NULL) ? NULL : v;
}

hr_tensor *hr_sum(hr_tensor *t, int dim, bool keepdim) { return reduce_values(OP_SUM, 0, false, false, t, dim, keepdim); }
hr_tensor *hr_mean(hr_tensor *t, int dim, bool keepdim) { return reduce_values(OP_MEAN, 0, false, false, t, dim, keepdim); }
hr_tensor *hr_prod(hr_tensor *t, int dim, bool keepdim) { return reduce_values(OP_PROD, 0, false, false, t, dim, keepdim); }
hr_tensor *hr_all(hr_tensor *t, int dim, bool keepdim) { return reduce_values(OP_ALL, 0, false, false, t, dim, keepdim); }
hr_tensor *hr_any(hr_tensor *t, int dim, bool keepdim) { return reduce_values(OP_ANY, 0, false, false, t, dim, keepdim); }

hr_tensor *hr_var(hr_tensor *t, int dim, bool unbiased, bool keepdim)
{
    return reduce_values(OP_VAR, 0, unbiased, false, t, dim, keepdim);
}

hr_tensor *hr_std(hr_tensor *t, int dim, bool unbiased, bool keepdim)
{
    return reduce_values(OP_VAR, 0, unbiased, true, t, dim, keepdim);
}

hr_tensor *hr_norm(hr_tensor *t, double p, int dim, bool keepdim)
{
    return reduce_values(OP_NORM, p, false, false, t, dim, keepdim);
}

int hr_max(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    red_args a = {OP_MAX, 0, false, false};
    return reduce(&a, t, dim, keepdim, values, indices);
}

int hr_min(hr_tensor *t, int dim, bool keepdim, hr_tensor **values, hr_tensor **indices)
{
    red_args a = {OP_MIN, 0, false, false};
    return reduce(&a, t, dim, keepdim, values, indices);
}

hr_tensor *hr_argmax(hr_tensor *t, int dim, bool keepdim)
{
    red_args a = {OP_MAX, 0, false, false};
    hr_tensor *i;
    return reduce(&a, t, dim, keepdim, NULL, &i) ? NULL : i;
}

hr_tensor *hr_argmin(hr_tensor *t, int dim, bool keepdim)
{
    red_args a = {OP_MIN, 0, false, false};
    hr_tensor *i;
    return reduce(&a, t, dim, keepdim, NULL, &i) ? NULL : i;
}

/* ------------------------------------------------------------------ several dims at once */

/* Moves the reduced dims last, copies once into that order and reduces them as one row, so every
 * output element still has a single double accumulator. */
static hr_tensor *reduce_dims(red_op op, const char *name, hr_tensor *t, const int *dims, int ndims, bool keepdim)
{
    if (hr_rows_check_input_dev(t, name, true)) return NULL;
    if (ndims == 0 || t->ndim == 0) return reduce_values(op, 0, false, false, t, HR_DIM_ALL, keepdim);
    bool reduced[HR_MAX_DIMS] = {false};
    for (int i = 0; i < ndims; i++) {
        int d;
        if (hr_wrap_dim(name, dims[i], t->ndim, &d)) return NULL;
        if (reduced[d]) return hr_fail_null(HR_EINVAL, "%s: dimension %d appears twice in the list", name, d + 1);
        reduced[d] = true;
    }
    if (ndims == 1) {
        int d;
        hr_wrap_dim(name, dims[0], t->ndim, &d);
        return reduce_values(op, 0, false, false, t, d, keepdim);
    }
    if (hr_tensor_is_contiguous(t)) {
        /* Adjacent reduced dims of a contiguous tensor are one dim of a view: when they form a single
         * run (the leading dims, as in the bias gradient of a linear over [batch, length, features]),
         * the single-dim kernels reduce it in place, without the transposing copy below. */
        int first = -1, last = -1;
        for (int i = 0; i < t->ndim; i++)
            if (reduced[i]) {
                if (first < 0) first = i;
                last = i;
            }
        if (last - first + 1 == ndims) {
            int64_t msize[HR_MAX_DIMS];
            int nm = 0;
            for (int i = 0; i < first; i++) msize[nm++] = t->size[i];
            int64_t run = 1;
            for (int i = first; i <= last; i++) run *= t->size[i];
            msize[nm++] = run;
            for (int i = last + 1; i < t->ndim; i++) msize[nm++] = t->size[i];
            hr_tensor *merged = hr_view_reshape_nocopy(t, nm, msize);
            if (!merged) return NULL;
            hr_tensor *r = reduce_values(op, 0, false, false, merged, first, false);
            hr_tensor_release(merged);
            if (!r || !keepdim) return r;
            int64_t ksize[HR_MAX_DIMS];
            for (int i = 0; i < t->ndim; i++) ksize[i] = reduced[i] ? 1 : t->size[i];
            hr_tensor *out = hr_view_reshape_nocopy(r, t->ndim, ksize);
            hr_tensor_release(r);
            return out;
        }
    }
    int perm[HR_MAX_DIMS], np = 0, nkept = 0;
    int64_t kept_size[HR_MAX_DIMS + 1], inner = 1;
    for (int i = 0; i < t->ndim; i++)
        if (!reduced[i]) {
            perm[np++] = i;
            kept_size[nkept++] = t->size[i];
        }
    for (int i = 0; i < t->ndim; i++)
        if (reduced[i]) {
            perm[np++] = i;
            inner *= t->size[i];
        }
    hr_tensor *pv = hr_view_permute(t, perm);
    if (!pv) return NULL;
    hr_tensor *flat = NULL, *r = NULL, *out = NULL;
    kept_size[nkept] = inner;
    flat = hr_reshape(pv, nkept + 1, kept_size);
    hr_tensor_release(pv);
    if (!flat) return NULL;
    r = reduce_values(op, 0, false, false, flat, nkept, false);
    hr_tensor_release(flat);
    if (!r || !keepdim) return r;
    int64_t ksize[HR_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) ksize[i] = reduced[i] ? 1 : t->size[i];
    out = hr_view_reshape_nocopy(r, t->ndim, ksize);
    hr_tensor_release(r);
    return out;
}

hr_tensor *hr_sum_dims(hr_tensor *t, const int *dims, int ndims, bool keepdim)
{
    return reduce_dims(OP_SUM, "sum", t, dims, ndims, keepdim);
}

hr_tensor *hr_mean_dims(hr_tensor *t, const int *dims, int ndims, bool keepdim)
{
    return reduce_dims(OP_MEAN, "mean", t, dims, ndims, keepdim);
}

/* ------------------------------------------------------------------ scans */

typedef struct {
    bool prod;
    hr_dtype dt, odt;
    size_t el, oel;
    const char *in;
    char *out;
    hr_rows gi, go;
} scan_job;

static void scan_worker(void *arg, int64_t begin, int64_t end)
{
    const scan_job *j = arg;
    int64_t n = j->gi.n;
    for (int64_t row = begin; row < end; row++) {
        const char *p = j->in + hr_rows_offset(&j->gi, row) * (int64_t)j->el;
        char *o = j->out + hr_rows_offset(&j->go, row) * (int64_t)j->oel;
        int64_t si = j->gi.stride * (int64_t)j->el, so = j->go.stride * (int64_t)j->oel;
        if (hr_dtype_is_int(j->dt)) {
            uint64_t acc = j->prod ? 1 : 0;
            for (int64_t i = 0; i < n; i++) {
                uint64_t v = (uint64_t)hr_load_i64(p + i * si, j->dt);
                acc = j->prod ? acc * v : acc + v;
                hr_store_i64(o + i * so, j->odt, (int64_t)acc);
            }
        } else if (j->dt == HR_F32 && j->gi.stride == 1 && j->go.stride == 1) {
            const float *x = (const float *)p;
            float *y = (float *)o;
            double acc = j->prod ? 1.0 : 0.0;
            for (int64_t i = 0; i < n; i++) {
                acc = j->prod ? acc * x[i] : acc + x[i];
                y[i] = (float)acc;
            }
        } else {
            double acc = j->prod ? 1.0 : 0.0;
            for (int64_t i = 0; i < n; i++) {
                double v = hr_load_f64(p + i * si, j->dt);
                acc = j->prod ? acc * v : acc + v;
                hr_store_f64(o + i * so, j->odt, acc);
            }
        }
    }
}

static hr_tensor *scan(hr_tensor *t, int dim, bool prod)
{
    const char *name = prod ? "cumprod" : "cumsum";
    if (hr_rows_on_host(t)) {
        hr_tensor *h = hr_rows_host_copy(t);
        hr_tensor *r = h ? scan(h, dim, prod) : NULL;
        hr_tensor_release(h);
        return hr_rows_back(r, hr_tensor_device(t));
    }
    if (hr_rows_check_input(t, name)) return NULL;
    int d;
    if (hr_wrap_dim(name, dim, t->ndim, &d)) return NULL;
    hr_dtype odt = hr_dtype_is_int(t->dtype) ? HR_I64 : t->dtype;
    hr_tensor *out = hr_tensor_empty(t->ndim, t->size, odt, hr_tensor_device(t));
    if (!out) return NULL;
    scan_job j;
    j.prod = prod;
    j.dt = t->dtype;
    j.odt = odt;
    j.el = hr_dtype_size(t->dtype);
    j.oel = hr_dtype_size(odt);
    j.in = hr_tensor_data(t);
    j.out = hr_tensor_data(out);
    hr_rows_init(&j.gi, t->ndim, t->size, t->stride, t->ndim ? d : -1);
    hr_rows_init(&j.go, out->ndim, out->size, out->stride, t->ndim ? d : -1);
    if (hr_tensor_numel(t) > 0) hr_parallel_for(j.gi.rows, 32768 / (j.gi.n + 1) + 1, scan_worker, &j);
    return out;
}

hr_tensor *hr_cumsum(hr_tensor *t, int dim) { return scan(t, dim, false); }
hr_tensor *hr_cumprod(hr_tensor *t, int dim) { return scan(t, dim, true); }
