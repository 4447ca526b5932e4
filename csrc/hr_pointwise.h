/*
 * hr_pointwise.h — elementwise ops: binary arithmetic with NumPy broadcasting and type promotion,
 * comparisons and logical ops, unary math, clamp and where, with in-place variants.
 *
 * Type rules (PyTorch's, as hero applies them):
 *   - two tensors: hr_dtype_promote of their dtypes;
 *   - a tensor and a number: the tensor's dtype, except that an integer or bool tensor with a
 *     non-integer number gives f32, and a bool tensor with an integer number gives i64;
 *   - true division of integers gives f32; arithmetic that would stay bool is refused;
 *   - bf16/f16 are computed in f32 and rounded once when stored;
 *   - a number, and a 0-dim tensor that does not decide the dtype, is converted to that dtype
 *     before the op (integers wrap, bf16/f16 round), as PyTorch; comparisons use the exact value;
 *   - remainder, fmod and floor_divide of integers fail on a zero divisor (an error, never SIGFPE);
 *     INT64_MIN by -1 gives 0 for remainder/fmod and wraps for floor_divide.
 * In-place variants write into self, whose shape must be the broadcast shape; the result is
 * converted to self's dtype when that loses no kind (float into int, or anything into bool, fails).
 */
#ifndef HR_POINTWISE_H
#define HR_POINTWISE_H

#include "hr_core.h"

typedef enum {
    HR_ADD = 0,
    HR_SUB,
    HR_MUL,
    HR_DIV,
    HR_POW,
    HR_MAXIMUM,
    HR_MINIMUM,
    HR_REMAINDER,    /* a - floor(a / b) * b: the divisor's sign, as Python's % and torch.remainder */
    HR_FMOD,         /* C's fmod / %: the dividend's sign */
    HR_FLOOR_DIVIDE, /* floor(a / b), as torch 1.13's floor_divide (earlier versions truncated) */
    HR_ATAN2,        /* atan2(a, b); integers give f32 like true division */
    HR_HYPOT,        /* sqrt(a^2 + b^2) without overflow; float operands only, as in torch */
    /* predicates: the result is a bool tensor */
    HR_EQ,
    HR_NE,
    HR_LT,
    HR_LE,
    HR_GT,
    HR_GE,
    HR_LOGICAL_AND,
    HR_LOGICAL_OR,
    HR_NBINARY
} hr_binary_op;

typedef enum {
    HR_NEG = 0,
    HR_ABS,
    HR_SIGN,
    HR_SQUARE,
    HR_RELU,
    HR_FLOOR,
    HR_CEIL,
    HR_ROUND, /* half to even, as NumPy and PyTorch */
    /* the ones above keep integer dtypes; the ones below give f32 for integer input */
    HR_EXP,
    HR_LOG,
    HR_SQRT,
    HR_RSQRT,
    HR_TANH,
    HR_SIGMOID,
    HR_GELU, /* exact form 0.5*x*(1+erf(x/sqrt(2))) */
    HR_RECIPROCAL,
    HR_LOG1P,
    HR_EXPM1,
    HR_SIN,
    HR_COS,
    HR_TAN,
    HR_ASIN,
    HR_ACOS,
    HR_ATAN,
    HR_SINH,
    HR_COSH,
    HR_ASINH,
    HR_ACOSH,
    HR_ATANH,
    HR_EXP2,
    HR_FRAC, /* x - trunc(x); refuses integer tensors, as torch */
    HR_NUNARY
} hr_unary_op;

const char *hr_binary_op_name(hr_binary_op op); /* "add", "eq", ... */
const char *hr_unary_op_name(hr_unary_op op);   /* "exp", ... */

/* One side of a binary op: a tensor, or a number (integer, float or boolean). */
typedef enum { HR_SCALAR_INT = 0, HR_SCALAR_FLOAT, HR_SCALAR_BOOL } hr_scalar_kind;
typedef struct {
    const hr_tensor *t; /* NULL for a number */
    hr_scalar_kind kind;
    double f;           /* the number */
    int64_t i;          /* the number exactly, for HR_SCALAR_INT and HR_SCALAR_BOOL */
} hr_operand;

static inline hr_operand hr_operand_tensor(const hr_tensor *t)
{
    hr_operand o = {t, HR_SCALAR_FLOAT, 0.0, 0};
    return o;
}
static inline hr_operand hr_operand_float(double v)
{
    hr_operand o = {NULL, HR_SCALAR_FLOAT, v, 0};
    return o;
}
static inline hr_operand hr_operand_int(int64_t v)
{
    hr_operand o = {NULL, HR_SCALAR_INT, (double)v, v};
    return o;
}
static inline hr_operand hr_operand_bool(bool v)
{
    hr_operand o = {NULL, HR_SCALAR_BOOL, v ? 1.0 : 0.0, v ? 1 : 0};
    return o;
}

/* a op b into a new tensor of the broadcast shape. alpha (NULL: 1) scales b for HR_ADD/HR_SUB
 * (a + alpha*b, a - alpha*b) and is refused for other ops. At least one side must be a tensor. */
hr_tensor *hr_binary(hr_binary_op op, hr_operand a, hr_operand b, const hr_operand *alpha);
/* self = self op b (arithmetic ops only); bumps self->version. */
int hr_binary_(hr_binary_op op, hr_tensor *self, hr_operand b, const hr_operand *alpha);

hr_tensor *hr_unary(hr_unary_op op, const hr_tensor *t);
int hr_unary_(hr_unary_op op, hr_tensor *t);

/* Elementwise min(max(x, lo), hi); either bound may be NULL (not both). NaN stays NaN; lo > hi
 * gives hi everywhere, as NumPy and PyTorch. */
hr_tensor *hr_clamp(const hr_tensor *t, const hr_operand *lo, const hr_operand *hi);
int hr_clamp_(hr_tensor *t, const hr_operand *lo, const hr_operand *hi);

/* cond ? a : b with broadcasting of all three; cond must be bool or u8. */
hr_tensor *hr_where(const hr_tensor *cond, hr_operand a, hr_operand b);
/* Bool tensor: true where t is zero (NaN counts as true-valued, so gives false). */
hr_tensor *hr_logical_not(const hr_tensor *t);

/* STREAM-style triad a[i] = b[i] + s*c[i] over n f32 elements, run `repeats` times on the thread
 * pool; returns the best rate in GB/s (12 bytes per element), or -1 with an error. */
double hr_bench_triad(int64_t n, int repeats);

#endif
