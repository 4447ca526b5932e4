/*
 * pointwise.c — CPU kernels of the elementwise ops (see hr_pointwise.h for the type rules).
 *
 * Every op runs on one of three compute types: float (f32, bf16, f16 and integer true division),
 * double (f64) and int64 (every integer dtype). The arithmetic is written once per compute type
 * as loops over contiguous blocks ("block kernels") that the compiler vectorises. Operands that
 * are already contiguous in the compute type are handed to them directly; anything else (another
 * dtype, a stride, a broadcast) is first converted into a small block buffer, and results in
 * another dtype are converted back from one. Same-shape contiguous operands take a flat path
 * split over the thread pool; broadcasting and strided layouts go through hr_iter.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "hr_cuda.h"
#include "hr_pointwise.h"
#include "hr_reduce.h"

/* Elements per block buffer: small enough for the stack and L1, large enough to amortise calls. */
#define BLK 512
/* Elements per task of the thread pool. */
#define GRAIN 32768

typedef enum { CT_F32 = 0, CT_F64, CT_I64 } compute_type;

typedef union {
    float f32;
    double f64;
    int64_t i64;
} cvalue;

static const char *const binary_names[HR_NBINARY] = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "remainder", "fmod", "floor_divide", "atan2", "hypot",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
};
static const char *const unary_names[HR_NUNARY] = {
    "neg", "abs", "sign", "square", "relu", "floor", "ceil", "round", "exp", "log",
    "sqrt", "rsqrt", "tanh", "sigmoid", "gelu", "reciprocal", "log1p", "expm1", "sin", "cos",
    "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "exp2", "frac",
};

const char *hr_binary_op_name(hr_binary_op op) { return (unsigned)op < HR_NBINARY ? binary_names[op] : "?"; }
const char *hr_unary_op_name(hr_unary_op op) { return (unsigned)op < HR_NUNARY ? unary_names[op] : "?"; }

static bool is_predicate(hr_binary_op op) { return op >= HR_EQ; }

static compute_type compute_type_of(hr_dtype dt)
{
    if (dt == HR_F64) return CT_F64;
    if (hr_dtype_is_float(dt)) return CT_F32;
    return CT_I64;
}

static hr_dtype native_dtype(compute_type ct) { return ct == CT_F32 ? HR_F32 : ct == CT_F64 ? HR_F64 : HR_I64; }

static size_t ct_size(compute_type ct) { return ct == CT_F32 ? 4 : 8; }

static cvalue scalar_value(const hr_operand *o, compute_type ct)
{
    cvalue v;
    bool exact = o->kind != HR_SCALAR_FLOAT;
    switch (ct) {
    case CT_F32: v.f32 = exact ? (float)o->i : (float)o->f; break;
    case CT_F64: v.f64 = exact ? (double)o->i : o->f; break;
    default: v.i64 = o->i; break;
    }
    return v;
}

/* ------------------------------------------------------------------ conversions to/from blocks */

static void load_f32(float *d, const char *s, int64_t bs, hr_dtype dt, int64_t n)
{
    switch (dt) {
    case HR_F32: for (int64_t i = 0; i < n; i++) d[i] = *(const float *)(s + i * bs); break;
    case HR_F64: for (int64_t i = 0; i < n; i++) d[i] = (float)*(const double *)(s + i * bs); break;
    case HR_BF16: for (int64_t i = 0; i < n; i++) d[i] = hr_bf16_to_f32(*(const uint16_t *)(s + i * bs)); break;
    case HR_F16: for (int64_t i = 0; i < n; i++) d[i] = hr_f16_to_f32(*(const uint16_t *)(s + i * bs)); break;
    case HR_I64: for (int64_t i = 0; i < n; i++) d[i] = (float)*(const int64_t *)(s + i * bs); break;
    case HR_I32: for (int64_t i = 0; i < n; i++) d[i] = (float)*(const int32_t *)(s + i * bs); break;
    case HR_U8: for (int64_t i = 0; i < n; i++) d[i] = (float)*(const uint8_t *)(s + i * bs); break;
    case HR_BOOL: for (int64_t i = 0; i < n; i++) d[i] = *(const uint8_t *)(s + i * bs) ? 1.0f : 0.0f; break;
    default: break;
    }
}

static void load_f64(double *d, const char *s, int64_t bs, hr_dtype dt, int64_t n)
{
    if (dt == HR_F64) {
        for (int64_t i = 0; i < n; i++) d[i] = *(const double *)(s + i * bs);
        return;
    }
    for (int64_t i = 0; i < n; i++) d[i] = hr_load_f64(s + i * bs, dt);
}

static void load_i64(int64_t *d, const char *s, int64_t bs, hr_dtype dt, int64_t n)
{
    switch (dt) {
    case HR_I64: for (int64_t i = 0; i < n; i++) d[i] = *(const int64_t *)(s + i * bs); break;
    case HR_I32: for (int64_t i = 0; i < n; i++) d[i] = *(const int32_t *)(s + i * bs); break;
    case HR_U8: for (int64_t i = 0; i < n; i++) d[i] = *(const uint8_t *)(s + i * bs); break;
    case HR_BOOL: for (int64_t i = 0; i < n; i++) d[i] = *(const uint8_t *)(s + i * bs) != 0; break;
    default: for (int64_t i = 0; i < n; i++) d[i] = hr_load_i64(s + i * bs, dt); break;
    }
}

static void load_block(compute_type ct, void *d, const char *s, int64_t bs, hr_dtype dt, int64_t n)
{
    switch (ct) {
    case CT_F32: load_f32(d, s, bs, dt, n); break;
    case CT_F64: load_f64(d, s, bs, dt, n); break;
    default: load_i64(d, s, bs, dt, n); break;
    }
}

static void store_f32(char *d, int64_t bs, hr_dtype dt, const float *s, int64_t n)
{
    switch (dt) {
    case HR_F32: for (int64_t i = 0; i < n; i++) *(float *)(d + i * bs) = s[i]; break;
    case HR_BF16: for (int64_t i = 0; i < n; i++) *(uint16_t *)(d + i * bs) = hr_f32_to_bf16(s[i]); break;
    case HR_F16: for (int64_t i = 0; i < n; i++) *(uint16_t *)(d + i * bs) = hr_f32_to_f16(s[i]); break;
    default: for (int64_t i = 0; i < n; i++) hr_store_f64(d + i * bs, dt, s[i]); break;
    }
}

static void store_f64(char *d, int64_t bs, hr_dtype dt, const double *s, int64_t n)
{
    if (dt == HR_F64) {
        for (int64_t i = 0; i < n; i++) *(double *)(d + i * bs) = s[i];
        return;
    }
    for (int64_t i = 0; i < n; i++) hr_store_f64(d + i * bs, dt, s[i]);
}

static void store_i64(char *d, int64_t bs, hr_dtype dt, const int64_t *s, int64_t n)
{
    switch (dt) {
    case HR_I64: for (int64_t i = 0; i < n; i++) *(int64_t *)(d + i * bs) = s[i]; break;
    case HR_I32: for (int64_t i = 0; i < n; i++) *(int32_t *)(d + i * bs) = (int32_t)(uint32_t)(uint64_t)s[i]; break;
    case HR_U8: for (int64_t i = 0; i < n; i++) *(uint8_t *)(d + i * bs) = (uint8_t)(uint64_t)s[i]; break;
    case HR_BOOL: for (int64_t i = 0; i < n; i++) *(uint8_t *)(d + i * bs) = s[i] != 0; break;
    default: for (int64_t i = 0; i < n; i++) hr_store_i64(d + i * bs, dt, s[i]); break;
    }
}

static void store_block(compute_type ct, char *d, int64_t bs, hr_dtype dt, const void *s, int64_t n)
{
    switch (ct) {
    case CT_F32: store_f32(d, bs, dt, s, n); break;
    case CT_F64: store_f64(d, bs, dt, s, n); break;
    default: store_i64(d, bs, dt, s, n); break;
    }
}

/* Where a kernel finds one operand's block: directly in the tensor when it already holds the
 * compute type contiguously (step 1) or as one broadcast element (step 0), otherwise converted
 * into buf. With allow_step0 false a broadcast element is replicated (for unary kernels). */
static const void *operand_block(compute_type ct, hr_dtype dt, const char *p, int64_t bs, int64_t n, void *buf,
                                 bool allow_step0, int *step)
{
    size_t el = ct_size(ct);
    bool native = dt == native_dtype(ct);
    if (bs == 0 && allow_step0) {
        *step = 0;
        if (native) return p;
        load_block(ct, buf, p, 0, dt, 1);
        return buf;
    }
    *step = 1;
    if (native && bs == (int64_t)el) return p;
    load_block(ct, buf, p, bs, dt, n);
    return buf;
}

/* ------------------------------------------------------------------ binary block kernels */

/* Expands one elementwise expression E(x, y) over the four layouts of (a, b): both contiguous,
 * or one of them a single broadcast element (hoisted so the loop stays vectorisable). */
#define BIN_LOOP(E)                                                  \
    do {                                                             \
        if (as && bs) {                                              \
            for (int64_t i = 0; i < n; i++) o[i] = E(a[i], b[i]);    \
        } else if (as) {                                             \
            const T y = b[0];                                        \
            for (int64_t i = 0; i < n; i++) o[i] = E(a[i], y);       \
        } else if (bs) {                                             \
            const T x = a[0];                                        \
            for (int64_t i = 0; i < n; i++) o[i] = E(x, b[i]);       \
        } else {                                                     \
            const T r = E(a[0], b[0]);                               \
            for (int64_t i = 0; i < n; i++) o[i] = r;                \
        }                                                            \
    } while (0)

#define E_ADD(x, y) ((x) + (y))
#define E_SUB(x, y) ((x) - (y))
#define E_ADDA(x, y) ((x) + al * (y))
#define E_SUBA(x, y) ((x) - al * (y))
#define E_MUL(x, y) ((x) * (y))
#define E_DIV(x, y) ((x) / (y))
/* NaN-propagating maximum/minimum, as NumPy's maximum/minimum. */
#define E_MAX(x, y) (((x) != (x) || (x) > (y)) ? (x) : (y))
#define E_MIN(x, y) (((x) != (x) || (x) < (y)) ? (x) : (y))
#define E_POWF(x, y) powf((x), (y))
#define E_POWD(x, y) pow((x), (y))
#define E_EQ(x, y) ((x) == (y))
#define E_NE(x, y) ((x) != (y))
#define E_LT(x, y) ((x) < (y))
#define E_LE(x, y) ((x) <= (y))
#define E_GT(x, y) ((x) > (y))
#define E_GE(x, y) ((x) >= (y))
#define E_AND(x, y) ((x) != 0 && (y) != 0)
#define E_OR(x, y) ((x) != 0 || (y) != 0)

/* torch's remainder: fmod moved into the divisor's sign (fmod(-0, b) stays -0). */
static inline float rem_f32(float x, float y)
{
    float m = fmodf(x, y);
    return (m != 0 && ((y < 0) != (m < 0))) ? m + y : m;
}
static inline double rem_f64(double x, double y)
{
    double m = fmod(x, y);
    return (m != 0 && ((y < 0) != (m < 0))) ? m + y : m;
}

/* torch's floor division of floats (c10::div_floor_floating): the quotient of the exact
 * remainder's complement, floored, then corrected where a / b rounded across an integer; a zero
 * divisor gives IEEE's a / b, and a zero quotient keeps the sign a / b has. */
#define DEFINE_FLOOR_DIV(NAME, T, FMOD, FLOOR, COPYSIGN)                    \
    static inline T NAME(T x, T y)                                          \
    {                                                                       \
        if (y == 0) return x / y;                                           \
        T mod = FMOD(x, y);                                                 \
        T div = (x - mod) / y;                                              \
        if (mod != 0 && ((y < 0) != (mod < 0))) div -= (T)1;                \
        if (div == 0) return COPYSIGN((T)0, x / y);                         \
        T fl = FLOOR(div);                                                  \
        return div - fl > (T)0.5 ? fl + (T)1 : fl;                          \
    }
DEFINE_FLOOR_DIV(fdiv_f32, float, fmodf, floorf, copysignf)
DEFINE_FLOOR_DIV(fdiv_f64, double, fmod, floor, copysign)

#define DEFINE_FLOAT_ARITH(NAME, TYPE, POW, SUFFIX, FMOD, ATAN2, HYPOT)                                   \
    static void NAME(hr_binary_op op, int64_t n, const TYPE *a, int as, const TYPE *b, int bs, TYPE *o,   \
                     TYPE al)                                                                            \
    {                                                                                                    \
        typedef TYPE T;                                                                                  \
        switch (op) {                                                                                    \
        case HR_ADD: if (al == 1) BIN_LOOP(E_ADD); else BIN_LOOP(E_ADDA); break;                          \
        case HR_SUB: if (al == 1) BIN_LOOP(E_SUB); else BIN_LOOP(E_SUBA); break;                          \
        case HR_MUL: BIN_LOOP(E_MUL); break;                                                             \
        case HR_DIV: BIN_LOOP(E_DIV); break;                                                             \
        case HR_POW:                                                                                     \
            /* x^2 is common (squares in norms, losses): exact as x*x and vectorisable */                \
            if (!bs && as && b[0] == 2) { for (int64_t i = 0; i < n; i++) o[i] = a[i] * a[i]; }          \
            else BIN_LOOP(POW);                                                                          \
            break;                                                                                       \
        case HR_MAXIMUM: BIN_LOOP(E_MAX); break;                                                         \
        case HR_MINIMUM: BIN_LOOP(E_MIN); break;                                                         \
        case HR_REMAINDER: BIN_LOOP(rem_##SUFFIX); break;                                                \
        case HR_FMOD: BIN_LOOP(FMOD); break;                                                             \
        case HR_FLOOR_DIVIDE: BIN_LOOP(fdiv_##SUFFIX); break;                                            \
        case HR_ATAN2: BIN_LOOP(ATAN2); break;                                                           \
        case HR_HYPOT: BIN_LOOP(HYPOT); break;                                                           \
        default: break;                                                                                  \
        }                                                                                                \
    }

DEFINE_FLOAT_ARITH(arith_f32, float, E_POWF, f32, fmodf, atan2f, hypotf)
DEFINE_FLOAT_ARITH(arith_f64, double, E_POWD, f64, fmod, atan2, hypot)

/* Integer arithmetic wraps around like C's unsigned arithmetic (and PyTorch), without the
 * undefined behaviour of signed overflow. */
static inline int64_t wrap_add(int64_t x, int64_t y) { return (int64_t)((uint64_t)x + (uint64_t)y); }
static inline int64_t wrap_sub(int64_t x, int64_t y) { return (int64_t)((uint64_t)x - (uint64_t)y); }
static inline int64_t wrap_mul(int64_t x, int64_t y) { return (int64_t)((uint64_t)x * (uint64_t)y); }

static int64_t ipow(int64_t x, int64_t e)
{
    if (e < 0) { /* only 1 and -1 have integer reciprocal powers; the rest truncate to 0 */
        if (x == 1) return 1;
        if (x == -1) return (e & 1) ? -1 : 1;
        return 0;
    }
    uint64_t r = 1, base = (uint64_t)x;
    while (e) {
        if (e & 1) r *= base;
        base *= base;
        e >>= 1;
    }
    return (int64_t)r;
}

/* Integer remainder, fmod and floor division. A zero divisor is refused before any kernel runs
 * (hr_binary); the guards here only keep the hardware from trapping should one slip through, and
 * INT64_MIN by -1, which overflows C's / and %, gives what two's complement does: remainder 0, the
 * quotient wrapped. */
static inline int64_t irem(int64_t x, int64_t y)
{
    if (y == 0 || y == -1) return 0;
    int64_t r = x % y;
    return (r != 0 && ((r < 0) != (y < 0))) ? r + y : r;
}
static inline int64_t ifmod(int64_t x, int64_t y) { return (y == 0 || y == -1) ? 0 : x % y; }
static inline int64_t ifloordiv(int64_t x, int64_t y)
{
    if (y == 0) return 0;
    if (y == -1) return wrap_sub(0, x);
    int64_t q = x / y, r = x % y;
    return (r != 0 && ((r < 0) != (y < 0))) ? q - 1 : q;
}

#define E_IADD(x, y) wrap_add((x), (y))
#define E_ISUB(x, y) wrap_sub((x), (y))
#define E_IADDA(x, y) wrap_add((x), wrap_mul(al, (y)))
#define E_ISUBA(x, y) wrap_sub((x), wrap_mul(al, (y)))
#define E_IMUL(x, y) wrap_mul((x), (y))
#define E_IPOW(x, y) ipow((x), (y))

static void arith_i64(hr_binary_op op, int64_t n, const int64_t *a, int as, const int64_t *b, int bs, int64_t *o,
                      int64_t al)
{
    typedef int64_t T;
    switch (op) {
    case HR_ADD: if (al == 1) BIN_LOOP(E_IADD); else BIN_LOOP(E_IADDA); break;
    case HR_SUB: if (al == 1) BIN_LOOP(E_ISUB); else BIN_LOOP(E_ISUBA); break;
    case HR_MUL: BIN_LOOP(E_IMUL); break;
    case HR_POW: BIN_LOOP(E_IPOW); break;
    case HR_MAXIMUM: BIN_LOOP(E_MAX); break;
    case HR_MINIMUM: BIN_LOOP(E_MIN); break;
    case HR_REMAINDER: BIN_LOOP(irem); break;
    case HR_FMOD: BIN_LOOP(ifmod); break;
    case HR_FLOOR_DIVIDE: BIN_LOOP(ifloordiv); break;
    default: break; /* HR_DIV, HR_ATAN2 and HR_HYPOT never compute in integers */
    }
}

#define DEFINE_PREDICATE(NAME, TYPE)                                                                     \
    static void NAME(hr_binary_op op, int64_t n, const TYPE *a, int as, const TYPE *b, int bs, uint8_t *o) \
    {                                                                                                    \
        typedef TYPE T;                                                                                  \
        switch (op) {                                                                                    \
        case HR_EQ: BIN_LOOP(E_EQ); break;                                                               \
        case HR_NE: BIN_LOOP(E_NE); break;                                                               \
        case HR_LT: BIN_LOOP(E_LT); break;                                                               \
        case HR_LE: BIN_LOOP(E_LE); break;                                                               \
        case HR_GT: BIN_LOOP(E_GT); break;                                                               \
        case HR_GE: BIN_LOOP(E_GE); break;                                                               \
        case HR_LOGICAL_AND: BIN_LOOP(E_AND); break;                                                     \
        case HR_LOGICAL_OR: BIN_LOOP(E_OR); break;                                                       \
        default: break;                                                                                  \
        }                                                                                                \
    }

DEFINE_PREDICATE(predicate_f32, float)
DEFINE_PREDICATE(predicate_f64, double)
DEFINE_PREDICATE(predicate_i64, int64_t)

/* ------------------------------------------------------------------ generic drivers */

/* One operand of a kernel: a tensor found at ptrs[slot], or (slot < 0) a number. */
typedef struct {
    int slot;
    hr_dtype dt;
    cvalue s;
} operand_info;

typedef struct {
    hr_binary_op op;
    compute_type ct;
    hr_dtype out_dt;
    operand_info a, b;
    cvalue alpha;
} binary_ctx;

/* Iterator operand 0 is always the output. */
static void binary_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const binary_ctx *c = arg;
    compute_type ct = c->ct;
    size_t el = ct_size(ct);
    bool pred = is_predicate(c->op);
    int64_t abuf[BLK], bbuf[BLK], obuf[BLK];
    bool out_direct = pred ? (c->out_dt == HR_BOOL && bs[0] == 1)
                           : (c->out_dt == native_dtype(ct) && bs[0] == (int64_t)el);
    size_t out_el = pred ? 1 : el;
    /* with every operand direct there is nothing to convert: one call covers the whole run */
    int64_t blk = BLK;
    if (out_direct && (c->a.slot < 0 || (c->a.dt == native_dtype(ct) && (bs[c->a.slot] == (int64_t)el || bs[c->a.slot] == 0))) &&
        (c->b.slot < 0 || (c->b.dt == native_dtype(ct) && (bs[c->b.slot] == (int64_t)el || bs[c->b.slot] == 0))))
        blk = n;
    for (int64_t off = 0; off < n; off += blk) {
        int64_t m = n - off < blk ? n - off : blk;
        int as, bsx;
        const void *ap, *bp;
        if (c->a.slot < 0) {
            ap = &c->a.s;
            as = 0;
        } else {
            ap = operand_block(ct, c->a.dt, p[c->a.slot] + off * bs[c->a.slot], bs[c->a.slot], m, abuf, true, &as);
        }
        if (c->b.slot < 0) {
            bp = &c->b.s;
            bsx = 0;
        } else {
            bp = operand_block(ct, c->b.dt, p[c->b.slot] + off * bs[c->b.slot], bs[c->b.slot], m, bbuf, true, &bsx);
        }
        void *op = out_direct ? (void *)(p[0] + (size_t)off * out_el) : (void *)obuf;
        if (pred) {
            switch (ct) {
            case CT_F32: predicate_f32(c->op, m, ap, as, bp, bsx, op); break;
            case CT_F64: predicate_f64(c->op, m, ap, as, bp, bsx, op); break;
            default: predicate_i64(c->op, m, ap, as, bp, bsx, op); break;
            }
            if (!out_direct) {
                const uint8_t *r = op;
                for (int64_t i = 0; i < m; i++) hr_store_i64(p[0] + (off + i) * bs[0], c->out_dt, r[i]);
            }
        } else {
            switch (ct) {
            case CT_F32: arith_f32(c->op, m, ap, as, bp, bsx, op, c->alpha.f32); break;
            case CT_F64: arith_f64(c->op, m, ap, as, bp, bsx, op, c->alpha.f64); break;
            default: arith_i64(c->op, m, ap, as, bp, bsx, op, c->alpha.i64); break;
            }
            if (!out_direct) store_block(ct, p[0] + off * bs[0], bs[0], c->out_dt, op, m);
        }
    }
}

/* A walk over operands already broadcast to one shape: a flat split over the thread pool when
 * every operand is contiguous with the output's shape, else the strided iterator. */
typedef struct {
    hr_iter_kernel kernel;
    void *ctx;
    int nops;
    char *base[HR_ITER_MAX];
    int64_t el[HR_ITER_MAX];
} flat_job;

static void flat_range(void *arg, int64_t begin, int64_t end)
{
    const flat_job *j = arg;
    char *p[HR_ITER_MAX];
    for (int k = 0; k < j->nops; k++) p[k] = j->base[k] + begin * j->el[k];
    j->kernel(j->ctx, end - begin, p, j->el);
}

typedef struct {
    int n;
    const hr_tensor *t[HR_ITER_MAX];
} operand_list;

static void run_walk(int ndim, const int64_t *size, const operand_list *ops, hr_iter_kernel kernel, void *ctx)
{
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) numel *= size[i];
    if (numel == 0) return;
    bool flat = true;
    for (int k = 0; k < ops->n; k++)
        if (!hr_tensor_is_contiguous(ops->t[k]) || hr_tensor_numel(ops->t[k]) != numel) flat = false;
    if (flat) {
        flat_job j = {kernel, ctx, ops->n, {0}, {0}};
        for (int k = 0; k < ops->n; k++) {
            j.base[k] = hr_tensor_data(ops->t[k]);
            j.el[k] = (int64_t)hr_dtype_size(ops->t[k]->dtype);
        }
        hr_parallel_for(numel, GRAIN, flat_range, &j);
        return;
    }
    hr_iter it;
    hr_iter_init(&it, ndim, size);
    for (int k = 0; k < ops->n; k++) {
        int64_t st[HR_MAX_DIMS];
        hr_broadcast_strides(ops->t[k], ndim, size, st);
        hr_iter_add(&it, hr_tensor_data(ops->t[k]), hr_dtype_size(ops->t[k]->dtype), st);
    }
    hr_iter_run(&it, kernel, ctx, true);
}

/* ------------------------------------------------------------------ checks and type rules */

static int check_cpu(const char *op, const hr_tensor *t, const char *what)
{
    if (hr_tensor_check_live(t, what)) {
        hr_error_prefix("%s", op);
        return -1;
    }
    if (hr_tensor_device(t).type != HR_CPU) {
        char d[16];
        return hr_fail(HR_EDEVICE, "%s: %s is on %s; CUDA tensors need the CUDA backend, which this build lacks", op,
                       what, hr_device_str(hr_tensor_device(t), d, sizeof d));
    }
    return 0;
}

/* The ops with a CUDA path accept device tensors (when the backend is built); all operands must
 * then share the device, which is also the result's. */
static int check_dev(const char *op, const hr_tensor *t, const char *what)
{
    if (hr_tensor_check_live(t, what)) {
        hr_error_prefix("%s", op);
        return -1;
    }
    if (hr_tensor_device(t).type == HR_CUDA && !hr_cuda_compiled()) return check_cpu(op, t, what);
    return 0;
}

static int check_same_device(const char *op, const hr_tensor *a, const hr_tensor *b)
{
    if (!a || !b || hr_device_eq(hr_tensor_device(a), hr_tensor_device(b))) return 0;
    char x[160], y[160];
    return hr_fail(HR_EDEVICE, "%s: operands are on different devices (%s and %s); move one with :to()", op,
                   hr_tensor_desc(a, x, sizeof x), hr_tensor_desc(b, y, sizeof y));
}

static bool on_cuda(const hr_tensor *t) { return t && hr_tensor_device(t).type == HR_CUDA; }

/* Dtype of a tensor combined with a number (see hr_pointwise.h). */
static hr_dtype tensor_scalar_dtype(hr_dtype t, hr_scalar_kind k)
{
    if (k == HR_SCALAR_FLOAT) return hr_dtype_is_float(t) ? t : HR_F32;
    if (k == HR_SCALAR_INT && t == HR_BOOL) return HR_I64;
    return t;
}

/* A 0-dim tensor beside a tensor with dimensions counts as PyTorch's "dimensionless" operand: it
 * decides the result only when it is of a higher category (float over integer, integer over
 * bool), so that a f16 tensor times a 0-dim f32 stays f16 and an i32 tensor plus a 0-dim i64
 * stays i32 (c10's combine_categories). */
static hr_dtype tensor_zero_dim_dtype(hr_dtype dim, hr_dtype zero)
{
    if (hr_dtype_is_float(dim)) return dim;
    if (dim == HR_BOOL || hr_dtype_is_float(zero)) return hr_dtype_promote(dim, zero);
    return dim;
}

static hr_dtype common_dtype(const hr_operand *a, const hr_operand *b)
{
    if (a->t && b->t) {
        bool a0 = a->t->ndim == 0, b0 = b->t->ndim == 0;
        if (a0 && !b0) return tensor_zero_dim_dtype(b->t->dtype, a->t->dtype);
        if (b0 && !a0) return tensor_zero_dim_dtype(a->t->dtype, b->t->dtype);
        return hr_dtype_promote(a->t->dtype, b->t->dtype);
    }
    if (a->t) return tensor_scalar_dtype(a->t->dtype, b->kind);
    if (b->t) return tensor_scalar_dtype(b->t->dtype, a->kind);
    /* two numbers (where): integers stay i64, anything else is f32 */
    if (a->kind == HR_SCALAR_FLOAT || b->kind == HR_SCALAR_FLOAT) return HR_F32;
    return HR_I64;
}

/* Whether a result of dtype r may be written into a tensor of dtype dst in place: same kind or
 * a wider kind (int into float, anything into bool only from bool), as PyTorch allows. */
static bool can_store(hr_dtype r, hr_dtype dst)
{
    if (dst == HR_BOOL) return r == HR_BOOL;
    if (hr_dtype_is_float(r)) return hr_dtype_is_float(dst);
    return true;
}

static const char *operand_str(const hr_operand *o, char *buf, size_t cap)
{
    if (o->t) return hr_tensor_desc(o->t, buf, cap);
    snprintf(buf, cap, "%s number", o->kind == HR_SCALAR_FLOAT ? "float" : o->kind == HR_SCALAR_INT ? "integer" : "boolean");
    return buf;
}

/* Result dtype of op on a and b, with the refusals: bool arithmetic, integer alpha rules. */
static int binary_result_dtype(hr_binary_op op, const hr_operand *a, const hr_operand *b, const hr_operand *alpha,
                               hr_dtype *common, hr_dtype *result)
{
    const char *name = binary_names[op];
    hr_dtype c = common_dtype(a, b);
    hr_dtype r = c;
    if (is_predicate(op)) {
        r = HR_BOOL;
    } else if (op == HR_DIV || op == HR_ATAN2) {
        if (!hr_dtype_is_float(c)) c = r = HR_F32; /* true division, as PyTorch */
    } else if (op == HR_HYPOT && !hr_dtype_is_float(c)) {
        char x[160], y[160];
        return hr_fail(HR_EINVAL, "hypot: integer and bool operands are not supported, as in torch (%s and %s); convert "
                                  "with :float() first",
                       operand_str(a, x, sizeof x), operand_str(b, y, sizeof y));
    } else if (c == HR_BOOL && op != HR_MAXIMUM && op != HR_MINIMUM) {
        char x[160], y[160];
        return hr_fail(HR_EINVAL,
                       "%s: arithmetic on bool values is not supported (%s and %s); convert with :long() or :float() "
                       "first, or use logical_and/logical_or",
                       name, operand_str(a, x, sizeof x), operand_str(b, y, sizeof y));
    }
    if (alpha) {
        if (op != HR_ADD && op != HR_SUB) return hr_fail(HR_EINVAL, "%s: alpha is only accepted by add and sub", name);
        if (alpha->t) return hr_fail(HR_EINVAL, "%s: alpha must be a number, not a tensor", name);
        if (!hr_dtype_is_float(c) && alpha->kind == HR_SCALAR_FLOAT)
            return hr_fail(HR_EINVAL, "%s: alpha must be an integer for %s operands, got %g", name, hr_dtype_name(c),
                           alpha->f);
    }
    if (op == HR_POW && !hr_dtype_is_float(c) && !b->t && b->i < 0)
        return hr_fail(HR_EINVAL, "pow: integers to negative integer powers are not allowed (exponent %" PRId64
                       "); use a float exponent or tensor", b->i);
    *common = c;
    *result = r;
    return 0;
}

static bool is_integer_division(hr_binary_op op)
{
    return op == HR_REMAINDER || op == HR_FMOD || op == HR_FLOOR_DIVIDE;
}

/* Integer remainder, fmod and floor division by zero have no value: refused as torch does
 * ("ZeroDivisionError"), before anything is written. A divisor tensor is searched for zeros on its
 * own device; only the one-byte answer comes back. */
static int check_integer_divisor(const char *name, hr_binary_op op, hr_dtype common, const hr_operand *b)
{
    if (!is_integer_division(op) || hr_dtype_is_float(common)) return 0;
    if (!b->t) {
        if (b->i != 0) return 0;
        return hr_fail(HR_EINVAL, "%s: integer division by zero (the divisor is 0)", name);
    }
    if (hr_tensor_numel(b->t) == 0) return 0;
    hr_tensor *zero = hr_binary(HR_EQ, *b, hr_operand_int(0), NULL);
    hr_tensor *any = zero ? hr_any(zero, HR_DIM_ALL, false) : NULL;
    hr_tensor *host = any ? hr_host_contiguous(any) : NULL;
    hr_tensor_release(zero);
    hr_tensor_release(any);
    if (!host) {
        hr_error_prefix("%s", name);
        return -1;
    }
    bool found = *(const uint8_t *)hr_tensor_data(host) != 0;
    hr_tensor_release(host);
    if (!found) return 0;
    char buf[160];
    return hr_fail(HR_EINVAL, "%s: integer division by zero (the divisor %s holds a 0)", name,
                   hr_tensor_desc(b->t, buf, sizeof buf));
}

/* PyTorch converts a number, and a 0-dim tensor that did not decide the dtype, to the dtype the op
 * computes in before the op: a u8 minimum with -3 compares with 253, floor_divide by -3 divides by
 * 253, an i32 minimum with a 0-dim i64 takes its low 32 bits, a bf16 pow takes its exponent rounded
 * to bf16 and an f16 product with 1e6 multiplies by inf. Only dtypes narrower than their compute
 * type need it: u8, i32 and bool (computed in int64), bf16 and f16 (in float); f32 and f64 loads
 * already round so. Comparisons keep the exact value (u8 < 256 is true, where torch converts 256
 * to 0). A number is converted in place; a 0-dim tensor is replaced by a converted copy, returned
 * in *held for the caller to release. Done once per op, never per element. */
static int narrow_operand(hr_binary_op op, hr_operand *o, hr_dtype common, hr_tensor **held)
{
    *held = NULL;
    if (is_predicate(op)) return 0;
    bool narrow_int = common == HR_U8 || common == HR_I32 || common == HR_BOOL;
    bool narrow_half = common == HR_BF16 || common == HR_F16;
    if (!narrow_int && !narrow_half) return 0;
    if (o->t) {
        hr_dtype d = o->t->dtype;
        /* bool, and u8 beside anything but bool, hold only values every narrower dtype holds */
        if (o->t->ndim != 0 || d == common || d == HR_BOOL || (d == HR_U8 && common != HR_BOOL)) return 0;
        *held = hr_cast(o->t, common);
        if (!*held) return -1;
        o->t = *held;
        return 0;
    }
    if (narrow_int) {
        /* (a float number with an integer tensor made the op f32, so o is an integer or a bool) */
        int64_t v = o->i;
        v = common == HR_U8 ? (int64_t)(uint8_t)(uint64_t)v
            : common == HR_I32 ? (int64_t)(int32_t)(uint32_t)(uint64_t)v : (int64_t)(v != 0);
        o->i = v;
        o->f = (double)v;
        return 0;
    }
    float f = o->kind == HR_SCALAR_FLOAT ? (float)o->f : (float)o->i;
    f = common == HR_BF16 ? hr_bf16_to_f32(hr_f32_to_bf16(f)) : hr_f16_to_f32(hr_f32_to_f16(f));
    o->kind = HR_SCALAR_FLOAT;
    o->f = f;
    return 0;
}

static void fill_operand(operand_info *info, const hr_operand *o, compute_type ct, int *slot)
{
    if (o->t) {
        info->slot = (*slot)++;
        info->dt = o->t->dtype;
        memset(&info->s, 0, sizeof info->s);
    } else {
        info->slot = -1;
        info->dt = native_dtype(ct);
        info->s = scalar_value(o, ct);
    }
}

static void shape_of(const hr_operand *o, int *nd, const int64_t **size)
{
    static const int64_t none[1] = {1};
    if (o->t) {
        *nd = o->t->ndim;
        *size = o->t->size;
    } else {
        *nd = 0;
        *size = none;
    }
}

/* Prepares the context of a binary op writing into out (already of the broadcast shape). */
static void binary_setup(binary_ctx *c, hr_binary_op op, hr_dtype common, const hr_operand *a, const hr_operand *b,
                         const hr_operand *alpha, const hr_tensor *out, operand_list *ops)
{
    memset(c, 0, sizeof *c);
    c->op = op;
    c->ct = compute_type_of(common);
    c->out_dt = out->dtype;
    int slot = 1;
    ops->n = 1;
    ops->t[0] = out;
    fill_operand(&c->a, a, c->ct, &slot);
    if (a->t) ops->t[ops->n++] = a->t;
    fill_operand(&c->b, b, c->ct, &slot);
    if (b->t) ops->t[ops->n++] = b->t;
    hr_operand one = hr_operand_int(1);
    c->alpha = scalar_value(alpha ? alpha : &one, c->ct);
}

hr_tensor *hr_binary(hr_binary_op op, hr_operand a, hr_operand b, const hr_operand *alpha)
{
    if ((unsigned)op >= HR_NBINARY) return hr_fail_null(HR_EINVAL, "binary op: unknown op %d", (int)op);
    const char *name = binary_names[op];
    if (!a.t && !b.t) return hr_fail_null(HR_EINVAL, "%s: at least one operand must be a tensor", name);
    if (a.t && check_dev(name, a.t, "first operand")) return NULL;
    if (b.t && check_dev(name, b.t, "second operand")) return NULL;
    if (check_same_device(name, a.t, b.t)) return NULL;
    hr_dtype common = HR_F32, result = HR_F32;
    if (binary_result_dtype(op, &a, &b, alpha, &common, &result)) return NULL;
    int na, nb, nd;
    const int64_t *sa, *sb;
    int64_t shape[HR_MAX_DIMS];
    shape_of(&a, &na, &sa);
    shape_of(&b, &nb, &sb);
    if (hr_broadcast_shape(name, na, sa, nb, sb, &nd, shape)) return NULL;
    hr_device dev = a.t ? hr_tensor_device(a.t) : hr_tensor_device(b.t);
    hr_tensor *held_a = NULL, *held_b = NULL, *out = NULL;
    if (narrow_operand(op, &a, common, &held_a) || narrow_operand(op, &b, common, &held_b) ||
        check_integer_divisor(name, op, common, &b))
        goto done;
    if (!(out = hr_tensor_empty(nd, shape, result, dev))) goto done;
    if (dev.type == HR_CUDA) {
        if (hr_cuda_binary(op, common, &a, &b, alpha, out)) {
            hr_tensor_release(out);
            out = NULL;
        }
        goto done;
    }
    binary_ctx c;
    operand_list ops;
    binary_setup(&c, op, common, &a, &b, alpha, out, &ops);
    run_walk(nd, shape, &ops, binary_kernel, &c);
done:
    hr_tensor_release(held_a);
    hr_tensor_release(held_b);
    return out;
}

/* A tensor with a stride-0 dimension of size > 1 names some elements twice: writing it in place
 * would race (and PyTorch refuses it too). */
static int check_writable(const char *op, const hr_tensor *t)
{
    for (int i = 0; i < t->ndim; i++)
        if (t->stride[i] == 0 && t->size[i] > 1) {
            char buf[160];
            return hr_fail(HR_EINVAL,
                           "%s: cannot write in place into %s: it is an expanded view whose elements overlap "
                           "(make it contiguous first)",
                           op, hr_tensor_desc(t, buf, sizeof buf));
        }
    return 0;
}

/* Same view of the same memory: elementwise in place is then safe (x:mul_(x)). */
static bool same_view(const hr_tensor *a, const hr_tensor *b)
{
    if (a->storage != b->storage || a->offset != b->offset || a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->size[i] != b->size[i] || (a->size[i] > 1 && a->stride[i] != b->stride[i])) return false;
    return true;
}

/* The in-place name of an op, e.g. "add_", for messages. */
static const char *inplace_name(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s_", name);
    return buf;
}

int hr_binary_(hr_binary_op op, hr_tensor *self, hr_operand b, const hr_operand *alpha)
{
    if ((unsigned)op >= HR_NBINARY) return hr_fail(HR_EINVAL, "binary op: unknown op %d", (int)op);
    char name[32];
    inplace_name(binary_names[op], name, sizeof name);
    if (is_predicate(op)) return hr_fail(HR_EINVAL, "%s: comparisons and logical ops have no in-place form", name);
    if (check_dev(name, self, "self") || (b.t && check_dev(name, b.t, "second operand"))) return -1;
    if (check_same_device(name, self, b.t)) return -1;
    hr_operand a = hr_operand_tensor(self);
    hr_dtype common = HR_F32, result = HR_F32;
    if (binary_result_dtype(op, &a, &b, alpha, &common, &result)) {
        hr_error_prefix("%s", name);
        return -1;
    }
    if (!can_store(result, self->dtype))
        return hr_fail(HR_EINVAL, "%s: the result has dtype %s, which cannot be stored in place into a %s tensor", name,
                       hr_dtype_name(result), hr_dtype_name(self->dtype));
    int nb, nd;
    const int64_t *sb;
    int64_t shape[HR_MAX_DIMS];
    shape_of(&b, &nb, &sb);
    if (hr_broadcast_shape(name, self->ndim, self->size, nb, sb, &nd, shape)) return -1;
    if (nd != self->ndim || memcmp(shape, self->size, sizeof(int64_t) * (size_t)nd) != 0) {
        char x[160], y[160];
        return hr_fail(HR_EINVAL, "%s: the result of shape %s cannot be written in place into self of shape %s", name,
                       hr_shape_str(nd, shape, x, sizeof x), hr_shape_str(self->ndim, self->size, y, sizeof y));
    }
    if (check_writable(name, self)) return -1;
    hr_tensor *copy = NULL;
    if (narrow_operand(op, &b, common, &copy)) return -1;
    if (check_integer_divisor(name, op, common, &b)) {
        hr_tensor_release(copy);
        return -1;
    }
    /* b overlapping self in another layout would be read after being overwritten: copy it first
     * (a narrowed 0-dim b is a copy already) */
    if (!copy && b.t && b.t->storage == self->storage && !same_view(b.t, self)) {
        copy = hr_cast(b.t, b.t->dtype);
        if (!copy) return -1;
        b.t = copy;
    }
    if (on_cuda(self)) {
        int rc = hr_cuda_binary(op, common, &a, &b, alpha, self);
        if (copy) hr_tensor_release(copy);
        if (rc) return -1;
        hr_tensor_bump_version(self);
        return 0;
    }
    binary_ctx c;
    operand_list ops;
    binary_setup(&c, op, common, &a, &b, alpha, self, &ops);
    run_walk(self->ndim, self->size, &ops, binary_kernel, &c);
    if (copy) hr_tensor_release(copy);
    hr_tensor_bump_version(self);
    return 0;
}

/* ------------------------------------------------------------------ unary */

typedef struct {
    hr_unary_op op;
    bool clamp;  /* clamp instead of op */
    bool has_lo, has_hi;
    cvalue lo, hi;
    compute_type ct;
    hr_dtype in_dt, out_dt;
} unary_ctx;

#define UN_LOOP(E)                                           \
    do {                                                     \
        for (int64_t i = 0; i < n; i++) y[i] = E(x[i]);      \
    } while (0)

#define U_NEG(v) (-(v))
#define U_SQUARE(v) ((v) * (v))
#define U_RELU(v) ((v) < 0 ? 0 : (v)) /* NaN stays NaN */
/* sign: both zeros and NaN give +0, as PyTorch's sign */
#define U_SIGN(v) ((v) > 0 ? 1 : (v) < 0 ? -1 : 0)
#define U_RECIP(v) (1 / (v))

static inline float gelu_f32(float v) { return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)); }
static inline double gelu_f64(double v) { return 0.5 * v * (1.0 + erf(v * M_SQRT1_2)); }
static inline float sigmoid_f32(float v) { return 1.0f / (1.0f + expf(-v)); }
static inline double sigmoid_f64(double v) { return 1.0 / (1.0 + exp(-v)); }
static inline float rsqrt_f32(float v) { return 1.0f / sqrtf(v); }
static inline double rsqrt_f64(double v) { return 1.0 / sqrt(v); }
/* x - trunc(x), as torch's frac (so frac(±inf) is NaN) */
static inline float frac_f32(float v) { return v - truncf(v); }
static inline double frac_f64(double v) { return v - trunc(v); }
/* The C library's name of a math function for each compute type: LIBM_f32(tan) is tanf. */
#define LIBM_f32(name) name##f
#define LIBM_f64(name) name

#define CLAMP_LOOP(T)                                                    \
    do {                                                                 \
        const T lo = c->has_lo ? LO : 0, hi = c->has_hi ? HI : 0;         \
        /* a NaN bound makes every result NaN, as PyTorch's clamp */      \
        if ((c->has_lo && lo != lo) || (c->has_hi && hi != hi)) {         \
            for (int64_t i = 0; i < n; i++) y[i] = c->has_lo && lo != lo ? lo : hi; \
        } else if (c->has_lo && c->has_hi) {                             \
            for (int64_t i = 0; i < n; i++) {                            \
                T v = x[i] < lo ? lo : x[i];                             \
                y[i] = v > hi ? hi : v;                                  \
            }                                                            \
        } else if (c->has_lo) {                                          \
            for (int64_t i = 0; i < n; i++) y[i] = x[i] < lo ? lo : x[i]; \
        } else {                                                         \
            for (int64_t i = 0; i < n; i++) y[i] = x[i] > hi ? hi : x[i]; \
        }                                                                \
    } while (0)

#define DEFINE_FLOAT_UNARY(NAME, T, FIELD, SUFFIX, ABS, EXP, LOG, SQRT, TANH, FLOOR, CEIL, RINT, LOG1P, EXPM1, SIN, \
                           COS)                                                                                   \
    static void NAME(const unary_ctx *c, int64_t n, const T *x, T *y)                                             \
    {                                                                                                             \
        if (c->clamp) {                                                                                           \
            CLAMP_LOOP(T);                                                                                        \
            return;                                                                                               \
        }                                                                                                         \
        switch (c->op) {                                                                                          \
        case HR_NEG: UN_LOOP(U_NEG); break;                                                                       \
        case HR_ABS: UN_LOOP(ABS); break;                                                                         \
        case HR_SIGN: UN_LOOP(U_SIGN); break;                                                                     \
        case HR_SQUARE: UN_LOOP(U_SQUARE); break;                                                                 \
        case HR_RELU: UN_LOOP(U_RELU); break;                                                                     \
        case HR_FLOOR: UN_LOOP(FLOOR); break;                                                                     \
        case HR_CEIL: UN_LOOP(CEIL); break;                                                                       \
        case HR_ROUND: UN_LOOP(RINT); break;                                                                      \
        case HR_EXP: UN_LOOP(EXP); break;                                                                         \
        case HR_LOG: UN_LOOP(LOG); break;                                                                         \
        case HR_SQRT: UN_LOOP(SQRT); break;                                                                       \
        case HR_RSQRT: UN_LOOP(rsqrt_##SUFFIX); break;                                                            \
        case HR_TANH: UN_LOOP(TANH); break;                                                                       \
        case HR_SIGMOID: UN_LOOP(sigmoid_##SUFFIX); break;                                                        \
        case HR_GELU: UN_LOOP(gelu_##SUFFIX); break;                                                              \
        case HR_RECIPROCAL: UN_LOOP(U_RECIP); break;                                                              \
        case HR_LOG1P: UN_LOOP(LOG1P); break;                                                                     \
        case HR_EXPM1: UN_LOOP(EXPM1); break;                                                                     \
        case HR_SIN: UN_LOOP(SIN); break;                                                                         \
        case HR_COS: UN_LOOP(COS); break;                                                                         \
        case HR_TAN: UN_LOOP(LIBM_##SUFFIX(tan)); break;                                                          \
        case HR_ASIN: UN_LOOP(LIBM_##SUFFIX(asin)); break;                                                        \
        case HR_ACOS: UN_LOOP(LIBM_##SUFFIX(acos)); break;                                                        \
        case HR_ATAN: UN_LOOP(LIBM_##SUFFIX(atan)); break;                                                        \
        case HR_SINH: UN_LOOP(LIBM_##SUFFIX(sinh)); break;                                                        \
        case HR_COSH: UN_LOOP(LIBM_##SUFFIX(cosh)); break;                                                        \
        case HR_ASINH: UN_LOOP(LIBM_##SUFFIX(asinh)); break;                                                      \
        case HR_ACOSH: UN_LOOP(LIBM_##SUFFIX(acosh)); break;                                                      \
        case HR_ATANH: UN_LOOP(LIBM_##SUFFIX(atanh)); break;                                                      \
        case HR_EXP2: UN_LOOP(LIBM_##SUFFIX(exp2)); break;                                                        \
        case HR_FRAC: UN_LOOP(frac_##SUFFIX); break;                                                              \
        default: break;                                                                                           \
        }                                                                                                         \
    }

#define LO c->lo.f32
#define HI c->hi.f32
DEFINE_FLOAT_UNARY(unary_f32, float, f32, f32, fabsf, expf, logf, sqrtf, tanhf, floorf, ceilf, nearbyintf, log1pf,
                   expm1f, sinf, cosf)
#undef LO
#undef HI
#define LO c->lo.f64
#define HI c->hi.f64
DEFINE_FLOAT_UNARY(unary_f64, double, f64, f64, fabs, exp, log, sqrt, tanh, floor, ceil, nearbyint, log1p, expm1, sin,
                   cos)
#undef LO
#undef HI

static inline int64_t iabs(int64_t v) { return v < 0 ? wrap_sub(0, v) : v; }
#define U_INEG(v) wrap_sub(0, (v))
#define U_ISQUARE(v) wrap_mul((v), (v))
#define U_ID(v) (v)

static void unary_i64(const unary_ctx *c, int64_t n, const int64_t *x, int64_t *y)
{
    if (c->clamp) {
#define LO c->lo.i64
#define HI c->hi.i64
        CLAMP_LOOP(int64_t);
#undef LO
#undef HI
        return;
    }
    switch (c->op) {
    case HR_NEG: UN_LOOP(U_INEG); break;
    case HR_ABS: UN_LOOP(iabs); break;
    case HR_SIGN: UN_LOOP(U_SIGN); break;
    case HR_SQUARE: UN_LOOP(U_ISQUARE); break;
    case HR_RELU: UN_LOOP(U_RELU); break;
    default: UN_LOOP(U_ID); break; /* floor/ceil/round of integers */
    }
}

static void unary_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const unary_ctx *c = arg;
    compute_type ct = c->ct;
    size_t el = ct_size(ct);
    int64_t xbuf[BLK], ybuf[BLK];
    bool out_direct = c->out_dt == native_dtype(ct) && bs[0] == (int64_t)el;
    bool in_direct = c->in_dt == native_dtype(ct) && bs[1] == (int64_t)el;
    int64_t blk = out_direct && in_direct ? n : BLK;
    for (int64_t off = 0; off < n; off += blk) {
        int64_t m = n - off < blk ? n - off : blk;
        int step;
        const void *x = operand_block(ct, c->in_dt, p[1] + off * bs[1], bs[1], m, xbuf, false, &step);
        void *y = out_direct ? (void *)(p[0] + (size_t)off * el) : (void *)ybuf;
        switch (ct) {
        case CT_F32: unary_f32(c, m, x, y); break;
        case CT_F64: unary_f64(c, m, x, y); break;
        default: unary_i64(c, m, x, y); break;
        }
        if (!out_direct) store_block(ct, p[0] + off * bs[0], bs[0], c->out_dt, y, m);
    }
}

static bool keeps_int(hr_unary_op op) { return op <= HR_ROUND; }

static int unary_result_dtype(const char *name, hr_unary_op op, bool clamp, const hr_tensor *t, const hr_operand *lo,
                              const hr_operand *hi, hr_dtype *out)
{
    hr_dtype dt = t->dtype;
    if (clamp) {
        if (dt == HR_BOOL) return hr_fail(HR_EINVAL, "%s: not supported for bool tensors", name);
        if (!lo && !hi) return hr_fail(HR_EINVAL, "%s: at least one of min and max must be given", name);
        const hr_operand *bounds[2] = {lo, hi};
        for (int i = 0; i < 2; i++) {
            if (bounds[i] && bounds[i]->t)
                return hr_fail(HR_EINVAL, "%s: %s must be a number", name, i ? "max" : "min");
            if (bounds[i] && bounds[i]->kind == HR_SCALAR_FLOAT && !hr_dtype_is_float(dt)) dt = HR_F32;
        }
        *out = dt;
        return 0;
    }
    if (op == HR_FRAC && !hr_dtype_is_float(dt))
        return hr_fail(HR_EINVAL, "%s: not supported for %s tensors, as in torch (integers have no fractional part; "
                                  "convert with :float() first)",
                       name, hr_dtype_name(dt));
    if (keeps_int(op)) {
        if (dt == HR_BOOL)
            return hr_fail(HR_EINVAL, "%s: not supported for bool tensors (convert with :long() or :float() first%s)",
                           name, op == HR_NEG ? ", or use logical_not" : "");
        *out = dt;
        return 0;
    }
    *out = hr_dtype_is_float(dt) ? dt : HR_F32;
    return 0;
}

static void unary_setup(unary_ctx *c, hr_unary_op op, bool clamp, const hr_operand *lo, const hr_operand *hi,
                        hr_dtype in_dt, hr_dtype out_dt)
{
    memset(c, 0, sizeof *c);
    c->op = op;
    c->clamp = clamp;
    c->in_dt = in_dt;
    c->out_dt = out_dt;
    c->ct = compute_type_of(out_dt);
    c->has_lo = lo != NULL;
    c->has_hi = hi != NULL;
    if (lo) c->lo = scalar_value(lo, c->ct);
    if (hi) c->hi = scalar_value(hi, c->ct);
}

static hr_tensor *unary_out(const char *name, hr_unary_op op, bool clamp, const hr_tensor *t, const hr_operand *lo,
                            const hr_operand *hi)
{
    if (check_dev(name, t, "input")) return NULL;
    hr_dtype dt = t->dtype;
    if (unary_result_dtype(name, op, clamp, t, lo, hi, &dt)) return NULL;
    hr_tensor *out = hr_tensor_empty(t->ndim, t->size, dt, hr_tensor_device(t));
    if (!out) return NULL;
    if (on_cuda(t)) {
        if (hr_cuda_unary(op, clamp, lo, hi, t, out)) {
            hr_tensor_release(out);
            return NULL;
        }
        return out;
    }
    unary_ctx c;
    unary_setup(&c, op, clamp, lo, hi, t->dtype, dt);
    operand_list ops = {2, {out, t}};
    run_walk(t->ndim, t->size, &ops, unary_kernel, &c);
    return out;
}

static int unary_inplace(const char *name, hr_unary_op op, bool clamp, hr_tensor *t, const hr_operand *lo,
                         const hr_operand *hi)
{
    if (check_dev(name, t, "self")) return -1;
    hr_dtype dt = t->dtype;
    if (unary_result_dtype(name, op, clamp, t, lo, hi, &dt)) return -1;
    if (dt != t->dtype)
        return hr_fail(HR_EINVAL, "%s: the result has dtype %s, which cannot be stored in place into a %s tensor", name,
                       hr_dtype_name(dt), hr_dtype_name(t->dtype));
    if (check_writable(name, t)) return -1;
    if (on_cuda(t)) {
        if (hr_cuda_unary(op, clamp, lo, hi, t, t)) return -1;
        hr_tensor_bump_version(t);
        return 0;
    }
    unary_ctx c;
    unary_setup(&c, op, clamp, lo, hi, t->dtype, dt);
    operand_list ops = {2, {t, t}};
    run_walk(t->ndim, t->size, &ops, unary_kernel, &c);
    hr_tensor_bump_version(t);
    return 0;
}

hr_tensor *hr_unary(hr_unary_op op, const hr_tensor *t)
{
    if ((unsigned)op >= HR_NUNARY) return hr_fail_null(HR_EINVAL, "unary op: unknown op %d", (int)op);
    return unary_out(unary_names[op], op, false, t, NULL, NULL);
}

int hr_unary_(hr_unary_op op, hr_tensor *t)
{
    if ((unsigned)op >= HR_NUNARY) return hr_fail(HR_EINVAL, "unary op: unknown op %d", (int)op);
    char name[32];
    return unary_inplace(inplace_name(unary_names[op], name, sizeof name), op, false, t, NULL, NULL);
}

hr_tensor *hr_clamp(const hr_tensor *t, const hr_operand *lo, const hr_operand *hi)
{
    return unary_out("clamp", HR_NEG, true, t, lo, hi);
}

int hr_clamp_(hr_tensor *t, const hr_operand *lo, const hr_operand *hi)
{
    return unary_inplace("clamp_", HR_NEG, true, t, lo, hi);
}

hr_tensor *hr_logical_not(const hr_tensor *t)
{
    if (check_dev("logical_not", t, "input")) return NULL;
    /* x == 0 is exactly "not x" for every dtype (NaN is nonzero, so true-valued) */
    return hr_binary(HR_EQ, hr_operand_tensor(t), hr_operand_int(0), NULL);
}

/* ------------------------------------------------------------------ where */

typedef struct {
    compute_type ct;
    hr_dtype out_dt, cond_dt;
    operand_info a, b;
} where_ctx;

/* Operands: 0 output, 1 condition, then a and b when they are tensors. */
static void where_kernel(void *arg, int64_t n, char **p, const int64_t *bs)
{
    const where_ctx *c = arg;
    compute_type ct = c->ct;
    size_t el = ct_size(ct);
    int64_t abuf[BLK], bbuf[BLK], obuf[BLK];
    for (int64_t off = 0; off < n; off += BLK) {
        int64_t m = n - off < BLK ? n - off : BLK;
        int as = 0, bsx = 0;
        const char *ap = (const char *)&c->a.s, *bp = (const char *)&c->b.s;
        if (c->a.slot >= 0)
            ap = operand_block(ct, c->a.dt, p[c->a.slot] + off * bs[c->a.slot], bs[c->a.slot], m, abuf, true, &as);
        if (c->b.slot >= 0)
            bp = operand_block(ct, c->b.dt, p[c->b.slot] + off * bs[c->b.slot], bs[c->b.slot], m, bbuf, true, &bsx);
        const uint8_t *cond = (const uint8_t *)(p[1] + off * bs[1]);
        char *o = (char *)obuf;
        /* a pure select: copy the compute-type bytes of the chosen side */
        for (int64_t i = 0; i < m; i++) {
            const char *src = cond[i * bs[1]] ? ap + (size_t)(i * as) * el : bp + (size_t)(i * bsx) * el;
            memcpy(o + (size_t)i * el, src, el);
        }
        store_block(ct, p[0] + off * bs[0], bs[0], c->out_dt, obuf, m);
    }
}

hr_tensor *hr_where(const hr_tensor *cond, hr_operand a, hr_operand b)
{
    if (check_dev("where", cond, "condition")) return NULL;
    if (a.t && check_dev("where", a.t, "second operand")) return NULL;
    if (b.t && check_dev("where", b.t, "third operand")) return NULL;
    if (check_same_device("where", cond, a.t) || check_same_device("where", cond, b.t)) return NULL;
    if (cond->dtype != HR_BOOL && cond->dtype != HR_U8)
        return hr_fail_null(HR_EINVAL, "where: the condition must be a bool or u8 tensor, got %s",
                            hr_dtype_name(cond->dtype));
    hr_dtype dt = common_dtype(&a, &b);
    int na, nb, nab, nd;
    const int64_t *sa, *sb;
    int64_t sab[HR_MAX_DIMS], shape[HR_MAX_DIMS];
    shape_of(&a, &na, &sa);
    shape_of(&b, &nb, &sb);
    if (hr_broadcast_shape("where", na, sa, nb, sb, &nab, sab)) return NULL;
    if (hr_broadcast_shape("where", cond->ndim, cond->size, nab, sab, &nd, shape)) return NULL;
    hr_tensor *out = hr_tensor_empty(nd, shape, dt, hr_tensor_device(cond));
    if (!out) return NULL;
    if (on_cuda(cond)) {
        if (hr_cuda_where(cond, &a, &b, out)) {
            hr_tensor_release(out);
            return NULL;
        }
        return out;
    }
    where_ctx c;
    memset(&c, 0, sizeof c);
    c.ct = compute_type_of(dt);
    c.out_dt = dt;
    c.cond_dt = cond->dtype;
    operand_list ops = {2, {out, cond}};
    int slot = 2;
    fill_operand(&c.a, &a, c.ct, &slot);
    if (a.t) ops.t[ops.n++] = a.t;
    fill_operand(&c.b, &b, c.ct, &slot);
    if (b.t) ops.t[ops.n++] = b.t;
    run_walk(nd, shape, &ops, where_kernel, &c);
    return out;
}

/* ------------------------------------------------------------------ STREAM-style triad */

typedef struct {
    float *a, *b, *c;
    float s;
} triad_ctx;

static void triad_init(void *arg, int64_t begin, int64_t end)
{
    triad_ctx *t = arg;
    for (int64_t i = begin; i < end; i++) {
        t->a[i] = 0.0f;
        t->b[i] = 1.0f;
        t->c[i] = 2.0f;
    }
}

static void triad_range(void *arg, int64_t begin, int64_t end)
{
    const triad_ctx *t = arg;
    float *a = t->a;
    const float *b = t->b, *c = t->c;
    const float s = t->s;
    for (int64_t i = begin; i < end; i++) a[i] = b[i] + s * c[i];
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double hr_bench_triad(int64_t n, int repeats)
{
    if (n < 1 || repeats < 1)
        return hr_fail(HR_EINVAL, "_bench_triad: need n >= 1 and repeats >= 1, got %" PRId64 " and %d", n, repeats);
    if ((uint64_t)n > SIZE_MAX / sizeof(float))
        return hr_fail(HR_EINVAL, "_bench_triad: %" PRId64 " elements do not fit in memory", n);
    size_t bytes = (size_t)n * sizeof(float);
    triad_ctx t = {hr_alloc_bytes(bytes), hr_alloc_bytes(bytes), hr_alloc_bytes(bytes), 3.0f};
    if (!t.a || !t.b || !t.c) {
        if (t.a) hr_free_bytes(t.a, bytes);
        if (t.b) hr_free_bytes(t.b, bytes);
        if (t.c) hr_free_bytes(t.c, bytes);
        return hr_fail(HR_ENOMEM, "_bench_triad: cannot allocate 3 arrays of %zu bytes", bytes);
    }
    /* first touch from the same split as the timed loop, so pages sit near the threads using them */
    hr_parallel_for(n, GRAIN, triad_init, &t);
    double best = 1e300;
    for (int r = 0; r < repeats; r++) {
        double t0 = now_seconds();
        hr_parallel_for(n, GRAIN, triad_range, &t);
        double dt = now_seconds() - t0;
        if (dt < best) best = dt;
    }
    hr_free_bytes(t.a, bytes);
    hr_free_bytes(t.b, bytes);
    hr_free_bytes(t.c, bytes);
    if (best <= 0) best = 1e-9;
    return 3.0 * (double)bytes / best / 1e9;
}
