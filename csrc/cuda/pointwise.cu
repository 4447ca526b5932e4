/* cuda/pointwise.cu — elementwise kernels: binary arithmetic/predicates with broadcasting through
 * precomputed strides, unary math and clamp, where. The arithmetic mirrors cpu/pointwise.c: the same
 * compute types (float for f32/bf16/f16, double for f64, wrapping int64 for integers), the same
 * special cases, and products/sums rounded separately (no fused multiply-add) as the CPU does. */
#include <cmath>

#include "cuda/common.cuh"

namespace hrc {
namespace {

__device__ __forceinline__ float add_rn(float x, float y) { return __fadd_rn(x, y); }
__device__ __forceinline__ double add_rn(double x, double y) { return __dadd_rn(x, y); }
__device__ __forceinline__ float sub_rn(float x, float y) { return __fsub_rn(x, y); }
__device__ __forceinline__ double sub_rn(double x, double y) { return __dsub_rn(x, y); }
__device__ __forceinline__ float mul_rn(float x, float y) { return __fmul_rn(x, y); }
__device__ __forceinline__ double mul_rn(double x, double y) { return __dmul_rn(x, y); }
__device__ __forceinline__ float pow_of(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double pow_of(double x, double y) { return pow(x, y); }

__device__ __forceinline__ int64_t wrap_add(int64_t x, int64_t y) { return (int64_t)((uint64_t)x + (uint64_t)y); }
__device__ __forceinline__ int64_t wrap_sub(int64_t x, int64_t y) { return (int64_t)((uint64_t)x - (uint64_t)y); }
__device__ __forceinline__ int64_t wrap_mul(int64_t x, int64_t y) { return (int64_t)((uint64_t)x * (uint64_t)y); }

__device__ int64_t ipow(int64_t x, int64_t e)
{
    if (e < 0) {
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

__device__ __forceinline__ float f_fmod(float x, float y) { return fmodf(x, y); }
__device__ __forceinline__ double f_fmod(double x, double y) { return fmod(x, y); }
__device__ __forceinline__ float floor_of(float v) { return floorf(v); }
__device__ __forceinline__ double floor_of(double v) { return floor(v); }
__device__ __forceinline__ float f_copysign(float x, float y) { return copysignf(x, y); }
__device__ __forceinline__ double f_copysign(double x, double y) { return copysign(x, y); }
__device__ __forceinline__ float f_atan2(float x, float y) { return atan2f(x, y); }
__device__ __forceinline__ double f_atan2(double x, double y) { return atan2(x, y); }
__device__ __forceinline__ float f_hypot(float x, float y) { return hypotf(x, y); }
__device__ __forceinline__ double f_hypot(double x, double y) { return hypot(x, y); }

/* torch's remainder: fmod moved into the divisor's sign (as cpu/pointwise.c) */
template <typename T> __device__ __forceinline__ T remainder_of(T x, T y)
{
    T m = f_fmod(x, y);
    return (m != (T)0 && ((y < (T)0) != (m < (T)0))) ? add_rn(m, y) : m;
}

/* torch's floor division of floats (c10::div_floor_floating), as cpu/pointwise.c */
template <typename T> __device__ __forceinline__ T floor_divide_of(T x, T y)
{
    if (y == (T)0) return x / y;
    T mod = f_fmod(x, y);
    T div = sub_rn(x, mod) / y;
    if (mod != (T)0 && ((y < (T)0) != (mod < (T)0))) div = sub_rn(div, (T)1);
    if (div == (T)0) return f_copysign((T)0, x / y);
    T fl = floor_of(div);
    return sub_rn(div, fl) > (T)0.5 ? add_rn(fl, (T)1) : fl;
}

/* Integer remainder, fmod and floor division; zero divisors are refused on the host before a
 * launch, and INT64_MIN by -1 gives what two's complement does (as cpu/pointwise.c). */
__device__ __forceinline__ int64_t irem(int64_t x, int64_t y)
{
    if (y == 0 || y == -1) return 0;
    int64_t r = x % y;
    return (r != 0 && ((r < 0) != (y < 0))) ? r + y : r;
}
__device__ __forceinline__ int64_t ifmod(int64_t x, int64_t y) { return (y == 0 || y == -1) ? 0 : x % y; }
__device__ __forceinline__ int64_t ifloordiv(int64_t x, int64_t y)
{
    if (y == 0) return 0;
    if (y == -1) return wrap_sub(0, x);
    int64_t q = x / y, r = x % y;
    return (r != 0 && ((r < 0) != (y < 0))) ? q - 1 : q;
}

template <typename T> __device__ __forceinline__ T arith(int op, T x, T y, T al, bool square);

template <typename T> __device__ __forceinline__ T float_arith(int op, T x, T y, T al, bool square)
{
    switch (op) {
    case HR_ADD: return al == (T)1 ? add_rn(x, y) : add_rn(x, mul_rn(al, y));
    case HR_SUB: return al == (T)1 ? sub_rn(x, y) : sub_rn(x, mul_rn(al, y));
    case HR_MUL: return mul_rn(x, y);
    case HR_DIV: return x / y;
    case HR_POW: return square ? mul_rn(x, x) : pow_of(x, y);
    case HR_MAXIMUM: return (x != x || x > y) ? x : y;
    case HR_MINIMUM: return (x != x || x < y) ? x : y;
    case HR_REMAINDER: return remainder_of<T>(x, y);
    case HR_FMOD: return f_fmod(x, y);
    case HR_FLOOR_DIVIDE: return floor_divide_of<T>(x, y);
    case HR_ATAN2: return f_atan2(x, y);
    case HR_HYPOT: return f_hypot(x, y);
    default: return x;
    }
}
template <> __device__ __forceinline__ float arith<float>(int op, float x, float y, float al, bool sq)
{
    return float_arith<float>(op, x, y, al, sq);
}
template <> __device__ __forceinline__ double arith<double>(int op, double x, double y, double al, bool sq)
{
    return float_arith<double>(op, x, y, al, sq);
}
template <> __device__ __forceinline__ int64_t arith<int64_t>(int op, int64_t x, int64_t y, int64_t al, bool)
{
    switch (op) {
    case HR_ADD: return al == 1 ? wrap_add(x, y) : wrap_add(x, wrap_mul(al, y));
    case HR_SUB: return al == 1 ? wrap_sub(x, y) : wrap_sub(x, wrap_mul(al, y));
    case HR_MUL: return wrap_mul(x, y);
    case HR_POW: return ipow(x, y);
    case HR_MAXIMUM: return x > y ? x : y;
    case HR_MINIMUM: return x < y ? x : y;
    case HR_REMAINDER: return irem(x, y);
    case HR_FMOD: return ifmod(x, y);
    case HR_FLOOR_DIVIDE: return ifloordiv(x, y);
    default: return x;
    }
}

template <typename T> __device__ __forceinline__ bool predicate(int op, T x, T y)
{
    switch (op) {
    case HR_EQ: return x == y;
    case HR_NE: return x != y;
    case HR_LT: return x < y;
    case HR_LE: return x <= y;
    case HR_GT: return x > y;
    case HR_GE: return x >= y;
    case HR_LOGICAL_AND: return x != (T)0 && y != (T)0;
    case HR_LOGICAL_OR: return x != (T)0 || y != (T)0;
    default: return false;
    }
}

/* One side of a binary op: a tensor (p != NULL) or a number already in the compute type. */
template <typename T> struct Side {
    const char *p;
    int dt, el;
    T s;
};

/* Operands of g: 0 the output, 1 a, 2 b (stride 0 everywhere for numbers). */
template <typename T>
__global__ void binary_kernel(Geo g, char *out, int odt, int oel, Side<T> a, Side<T> b, int op, T al, bool square,
                              bool pred, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[3];
        geo_offsets<3>(g, i, off);
        T x = a.p ? load<T>(a.p + off[1] * a.el, a.dt) : a.s;
        T y = b.p ? load<T>(b.p + off[2] * b.el, b.dt) : b.s;
        char *o = out + off[0] * oel;
        if (pred) store_i64(o, odt, predicate<T>(op, x, y) ? 1 : 0);
        else store(o, odt, arith<T>(op, x, y, al, square));
    }
}

template <typename T> __device__ __forceinline__ T gelu_of(T v);
template <> __device__ __forceinline__ float gelu_of<float>(float v)
{
    return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2));
}
template <> __device__ __forceinline__ double gelu_of<double>(double v) { return 0.5 * v * (1.0 + erf(v * M_SQRT1_2)); }

__device__ __forceinline__ float f_abs(float v) { return fabsf(v); }
__device__ __forceinline__ double f_abs(double v) { return fabs(v); }
__device__ __forceinline__ float f_floor(float v) { return floorf(v); }
__device__ __forceinline__ double f_floor(double v) { return floor(v); }
__device__ __forceinline__ float f_ceil(float v) { return ceilf(v); }
__device__ __forceinline__ double f_ceil(double v) { return ceil(v); }
__device__ __forceinline__ float f_rint(float v) { return rintf(v); }
__device__ __forceinline__ double f_rint(double v) { return rint(v); }
__device__ __forceinline__ float f_exp(float v) { return expf(v); }
__device__ __forceinline__ double f_exp(double v) { return exp(v); }
__device__ __forceinline__ float f_log(float v) { return logf(v); }
__device__ __forceinline__ double f_log(double v) { return log(v); }
__device__ __forceinline__ float f_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double f_sqrt(double v) { return sqrt(v); }
__device__ __forceinline__ float f_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double f_tanh(double v) { return tanh(v); }
__device__ __forceinline__ float f_log1p(float v) { return log1pf(v); }
__device__ __forceinline__ double f_log1p(double v) { return log1p(v); }
__device__ __forceinline__ float f_expm1(float v) { return expm1f(v); }
__device__ __forceinline__ double f_expm1(double v) { return expm1(v); }
__device__ __forceinline__ float f_sin(float v) { return sinf(v); }
__device__ __forceinline__ double f_sin(double v) { return sin(v); }
__device__ __forceinline__ float f_cos(float v) { return cosf(v); }
__device__ __forceinline__ double f_cos(double v) { return cos(v); }
__device__ __forceinline__ float f_tan(float v) { return tanf(v); }
__device__ __forceinline__ double f_tan(double v) { return tan(v); }
__device__ __forceinline__ float f_asin(float v) { return asinf(v); }
__device__ __forceinline__ double f_asin(double v) { return asin(v); }
__device__ __forceinline__ float f_acos(float v) { return acosf(v); }
__device__ __forceinline__ double f_acos(double v) { return acos(v); }
__device__ __forceinline__ float f_atan(float v) { return atanf(v); }
__device__ __forceinline__ double f_atan(double v) { return atan(v); }
__device__ __forceinline__ float f_sinh(float v) { return sinhf(v); }
__device__ __forceinline__ double f_sinh(double v) { return sinh(v); }
__device__ __forceinline__ float f_cosh(float v) { return coshf(v); }
__device__ __forceinline__ double f_cosh(double v) { return cosh(v); }
__device__ __forceinline__ float f_asinh(float v) { return asinhf(v); }
__device__ __forceinline__ double f_asinh(double v) { return asinh(v); }
__device__ __forceinline__ float f_acosh(float v) { return acoshf(v); }
__device__ __forceinline__ double f_acosh(double v) { return acosh(v); }
__device__ __forceinline__ float f_atanh(float v) { return atanhf(v); }
__device__ __forceinline__ double f_atanh(double v) { return atanh(v); }
__device__ __forceinline__ float f_exp2(float v) { return exp2f(v); }
__device__ __forceinline__ double f_exp2(double v) { return exp2(v); }
__device__ __forceinline__ float f_trunc(float v) { return truncf(v); }
__device__ __forceinline__ double f_trunc(double v) { return trunc(v); }

template <typename T> __device__ __forceinline__ T float_unary(int op, T v)
{
    switch (op) {
    case HR_NEG: return -v;
    case HR_ABS: return f_abs(v);
    case HR_SIGN: return v > (T)0 ? (T)1 : v < (T)0 ? (T)-1 : (T)0;
    case HR_SQUARE: return mul_rn(v, v);
    case HR_RELU: return v < (T)0 ? (T)0 : v;
    case HR_FLOOR: return f_floor(v);
    case HR_CEIL: return f_ceil(v);
    case HR_ROUND: return f_rint(v);
    case HR_EXP: return f_exp(v);
    case HR_LOG: return f_log(v);
    case HR_SQRT: return f_sqrt(v);
    case HR_RSQRT: return (T)1 / f_sqrt(v);
    case HR_TANH: return f_tanh(v);
    case HR_SIGMOID: return (T)1 / ((T)1 + f_exp(-v));
    case HR_GELU: return gelu_of<T>(v);
    case HR_RECIPROCAL: return (T)1 / v;
    case HR_LOG1P: return f_log1p(v);
    case HR_EXPM1: return f_expm1(v);
    case HR_SIN: return f_sin(v);
    case HR_COS: return f_cos(v);
    case HR_TAN: return f_tan(v);
    case HR_ASIN: return f_asin(v);
    case HR_ACOS: return f_acos(v);
    case HR_ATAN: return f_atan(v);
    case HR_SINH: return f_sinh(v);
    case HR_COSH: return f_cosh(v);
    case HR_ASINH: return f_asinh(v);
    case HR_ACOSH: return f_acosh(v);
    case HR_ATANH: return f_atanh(v);
    case HR_EXP2: return f_exp2(v);
    case HR_FRAC: return sub_rn(v, f_trunc(v)); /* x - trunc(x), as torch */
    default: return v;
    }
}

template <typename T> __device__ __forceinline__ T unary_of(int op, T v);
template <> __device__ __forceinline__ float unary_of<float>(int op, float v) { return float_unary<float>(op, v); }
template <> __device__ __forceinline__ double unary_of<double>(int op, double v) { return float_unary<double>(op, v); }
template <> __device__ __forceinline__ int64_t unary_of<int64_t>(int op, int64_t v)
{
    switch (op) {
    case HR_NEG: return wrap_sub(0, v);
    case HR_ABS: return v < 0 ? wrap_sub(0, v) : v;
    case HR_SIGN: return v > 0 ? 1 : v < 0 ? -1 : 0;
    case HR_SQUARE: return wrap_mul(v, v);
    case HR_RELU: return v < 0 ? 0 : v;
    default: return v; /* floor/ceil/round of integers */
    }
}

/* Operands: 0 the output, 1 the input. clamp: lo/hi bounds when has_lo/has_hi. */
template <typename T>
__global__ void unary_kernel(Geo g, char *out, int odt, int oel, const char *in, int idt, int iel, int op, bool clamp,
                             bool has_lo, bool has_hi, T lo, T hi, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[2];
        geo_offsets<2>(g, i, off);
        T x = load<T>(in + off[1] * iel, idt);
        T y;
        if (clamp) {
            y = x;
            if (has_lo) y = y < lo ? lo : y;
            if (has_hi) y = y > hi ? hi : y;
            /* a NaN bound makes every result NaN, as PyTorch's clamp (and cpu/pointwise.c) */
            if (has_hi && hi != hi) y = hi;
            if (has_lo && lo != lo) y = lo;
        } else {
            y = unary_of<T>(op, x);
        }
        store(out + off[0] * oel, odt, y);
    }
}

/* Operands: 0 output, 1 condition, 2 a, 3 b. */
template <typename T>
__global__ void where_kernel(Geo g, char *out, int odt, int oel, const char *cond, Side<T> a, Side<T> b, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[4];
        geo_offsets<4>(g, i, off);
        bool c = cond[off[1]] != 0;
        T v = c ? (a.p ? load<T>(a.p + off[2] * a.el, a.dt) : a.s) : (b.p ? load<T>(b.p + off[3] * b.el, b.dt) : b.s);
        store(out + off[0] * oel, odt, v);
    }
}

/* The number of an operand in compute type T, as cpu/pointwise.c's scalar_value. */
template <typename T> T scalar_of(const hr_operand *o);
template <> float scalar_of<float>(const hr_operand *o)
{
    return o->kind != HR_SCALAR_FLOAT ? (float)o->i : (float)o->f;
}
template <> double scalar_of<double>(const hr_operand *o) { return o->kind != HR_SCALAR_FLOAT ? (double)o->i : o->f; }
template <> int64_t scalar_of<int64_t>(const hr_operand *o) { return o->i; }

template <typename T> Side<T> side_of(const hr_operand *o, Geo *g, const hr_tensor *out)
{
    Side<T> s;
    int64_t st[HR_MAX_DIMS] = {0};
    if (o->t) {
        s.p = (const char *)hr_tensor_data(o->t);
        s.dt = o->t->dtype;
        s.el = (int)hr_dtype_size(o->t->dtype);
        s.s = (T)0;
        hr_broadcast_strides(o->t, out->ndim, out->size, st);
    } else {
        s.p = nullptr;
        s.dt = 0;
        s.el = 0;
        s.s = scalar_of<T>(o);
    }
    geo_add(g, st);
    return s;
}

/* Operands overlapping the output in another layout are read after being written: copy them. */
const hr_tensor *unaliased(const hr_tensor *t, const hr_tensor *out, hr_tensor **copy)
{
    *copy = nullptr;
    if (!t || t->storage != out->storage) return t;
    bool same = t->offset == out->offset && t->ndim == out->ndim && t->dtype == out->dtype;
    for (int i = 0; same && i < t->ndim; i++)
        if (t->size[i] != out->size[i] || (t->size[i] > 1 && t->stride[i] != out->stride[i])) same = false;
    if (same) return t;
    *copy = hr_cast(t, t->dtype);
    return *copy;
}

/* The hot cases as kernels of their own: contiguous float/half operands (or numbers) and an op known
 * at compile time. The arithmetic is the same arith/unary_of call, so the results are the generic
 * kernels' bit for bit; what goes away is the stride walk and the code of every other op, whose
 * registers (pow, the trigonometric reductions) limit how many threads the generic kernels run. */
template <int OP>
__global__ void binary_contiguous(char *out, int odt, int oel, Side<float> a, Side<float> b, float al, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float x = a.p ? load_f32(a.p + i * a.el, a.dt) : a.s;
        float y = b.p ? load_f32(b.p + i * b.el, b.dt) : b.s;
        store_f32(out + i * oel, odt, arith<float>(OP, x, y, al, false));
    }
}

template <int OP> __global__ void unary_contiguous(char *out, int odt, int oel, const char *in, int idt, int iel, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        store_f32(out + i * oel, odt, unary_of<float>(OP, load_f32(in + i * iel, idt)));
}

/* The same two kernels 8 elements at a time, for 16-byte aligned f32/bf16/f16 operands (numbers
 * need no alignment); the last n % 8 elements go one by one. */
template <int OP>
__global__ void binary_vec8(char *out, int odt, Side<float> a, Side<float> b, float al, int64_t n)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, nv = n / 8;
    const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int64_t j = t0; j < nv; j += stride) {
        float x[8], y[8];
        if (a.p) load8(a.p, a.dt, j, x);
        else
            for (int k = 0; k < 8; k++) x[k] = a.s;
        if (b.p) load8(b.p, b.dt, j, y);
        else
            for (int k = 0; k < 8; k++) y[k] = b.s;
#pragma unroll
        for (int k = 0; k < 8; k++) x[k] = arith<float>(OP, x[k], y[k], al, false);
        store8(out, odt, j, x);
    }
    for (int64_t i = nv * 8 + t0; i < n; i += stride) {
        float x = a.p ? load_f32(a.p + i * a.el, a.dt) : a.s;
        float y = b.p ? load_f32(b.p + i * b.el, b.dt) : b.s;
        store_f32(out + i * dtype_size(odt), odt, arith<float>(OP, x, y, al, false));
    }
}

template <int OP> __global__ void unary_vec8(char *out, int odt, const char *in, int idt, int64_t n)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, nv = n / 8;
    const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int64_t j = t0; j < nv; j += stride) {
        float v[8];
        load8(in, idt, j, v);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = unary_of<float>(OP, v[k]);
        store8(out, odt, j, v);
    }
    for (int64_t i = nv * 8 + t0; i < n; i += stride)
        store_f32(out + i * dtype_size(odt), odt, unary_of<float>(OP, load_f32(in + i * dtype_size(idt), idt)));
}

/* Whether the coalesced geometry walks every operand in order (one dim, unit or zero strides). */
bool walks_in_order(const Geo &g)
{
    if (g.ndim != 1) return false;
    for (int k = 0; k < g.nops; k++)
        if (g.stride[k][0] != 1 && g.stride[k][0] != 0) return false;
    return g.stride[0][0] == 1;
}

template <typename T>
bool binary_fast(hr_binary_op, const Geo &, char *, int, int, const Side<T> &, const Side<T> &, T, int64_t, cudaStream_t)
{
    return false;
}
template <>
bool binary_fast<float>(hr_binary_op op, const Geo &g, char *out, int odt, int oel, const Side<float> &a,
                        const Side<float> &b, float al, int64_t n, cudaStream_t st)
{
    if (!walks_in_order(g) || !hr_dtype_is_float((hr_dtype)odt)) return false;
    /* a tensor side with stride 0 is a broadcast element: the generic kernel handles it */
    if ((a.p && g.stride[1][0] != 1) || (b.p && g.stride[2][0] != 1)) return false;
    if (vec8_ok(out, odt) && (!a.p || vec8_ok(a.p, a.dt)) && (!b.p || vec8_ok(b.p, b.dt))) {
        unsigned grid8 = grid_for8(n);
        switch (op) {
        case HR_ADD: binary_vec8<HR_ADD><<<grid8, kThreads, 0, st>>>(out, odt, a, b, al, n); return true;
        case HR_SUB: binary_vec8<HR_SUB><<<grid8, kThreads, 0, st>>>(out, odt, a, b, al, n); return true;
        case HR_MUL: binary_vec8<HR_MUL><<<grid8, kThreads, 0, st>>>(out, odt, a, b, al, n); return true;
        case HR_DIV: binary_vec8<HR_DIV><<<grid8, kThreads, 0, st>>>(out, odt, a, b, al, n); return true;
        default: return false;
        }
    }
    unsigned grid = grid_for(n);
    switch (op) {
    case HR_ADD: binary_contiguous<HR_ADD><<<grid, kThreads, 0, st>>>(out, odt, oel, a, b, al, n); return true;
    case HR_SUB: binary_contiguous<HR_SUB><<<grid, kThreads, 0, st>>>(out, odt, oel, a, b, al, n); return true;
    case HR_MUL: binary_contiguous<HR_MUL><<<grid, kThreads, 0, st>>>(out, odt, oel, a, b, al, n); return true;
    case HR_DIV: binary_contiguous<HR_DIV><<<grid, kThreads, 0, st>>>(out, odt, oel, a, b, al, n); return true;
    default: return false;
    }
}

template <typename T>
int run_binary(hr_binary_op op, const hr_operand *a, const hr_operand *b, const hr_operand *alpha, hr_tensor *out,
               cudaStream_t st)
{
    int64_t n = hr_tensor_numel(out);
    Geo g;
    geo_init(&g, out->ndim, out->size);
    geo_add(&g, out->stride);
    Side<T> sa = side_of<T>(a, &g, out), sb = side_of<T>(b, &g, out);
    geo_coalesce(&g);
    hr_operand one = hr_operand_int(1);
    T al = scalar_of<T>(alpha ? alpha : &one);
    /* x^2 with a number exponent is x*x, as on the CPU */
    bool square = op == HR_POW && a->t && !b->t && scalar_of<T>(b) == (T)2;
    bool pred = op >= HR_EQ;
    if (!pred && binary_fast<T>(op, g, (char *)hr_tensor_data(out), out->dtype, (int)hr_dtype_size(out->dtype), sa, sb, al,
                                n, st))
        return check_launch(hr_binary_op_name(op));
    binary_kernel<T><<<grid_for(n), kThreads, 0, st>>>(g, (char *)hr_tensor_data(out), out->dtype,
                                                      (int)hr_dtype_size(out->dtype), sa, sb, op, al, square, pred, n);
    return check_launch(hr_binary_op_name(op));
}

template <typename T> constexpr bool compute_is_float() { return false; }
template <> constexpr bool compute_is_float<float>() { return true; }

template <typename T>
int run_unary(hr_unary_op op, bool clamp, const hr_operand *lo, const hr_operand *hi, const hr_tensor *t, hr_tensor *out,
              cudaStream_t st)
{
    int64_t n = hr_tensor_numel(out);
    int64_t ist[HR_MAX_DIMS];
    hr_broadcast_strides(t, out->ndim, out->size, ist);
    Geo g;
    geo_init(&g, out->ndim, out->size);
    geo_add(&g, out->stride);
    geo_add(&g, ist);
    geo_coalesce(&g);
    T l = lo ? scalar_of<T>(lo) : (T)0, h = hi ? scalar_of<T>(hi) : (T)0;
    if (!clamp && compute_is_float<T>() && hr_dtype_is_float(out->dtype) && walks_in_order(g) && g.stride[1][0] == 1) {
        char *o = (char *)hr_tensor_data(out);
        const char *in = (const char *)hr_tensor_data(t);
        int odt = out->dtype, oel = (int)hr_dtype_size(out->dtype), idt = t->dtype, iel = (int)hr_dtype_size(t->dtype);
        unsigned grid = grid_for(n);
        bool done = true;
        if (vec8_ok(o, odt) && vec8_ok(in, idt)) {
            unsigned grid8 = grid_for8(n);
            switch (op) {
            case HR_GELU: unary_vec8<HR_GELU><<<grid8, kThreads, 0, st>>>(o, odt, in, idt, n); break;
            case HR_RELU: unary_vec8<HR_RELU><<<grid8, kThreads, 0, st>>>(o, odt, in, idt, n); break;
            case HR_EXP: unary_vec8<HR_EXP><<<grid8, kThreads, 0, st>>>(o, odt, in, idt, n); break;
            case HR_NEG: unary_vec8<HR_NEG><<<grid8, kThreads, 0, st>>>(o, odt, in, idt, n); break;
            case HR_SQRT: unary_vec8<HR_SQRT><<<grid8, kThreads, 0, st>>>(o, odt, in, idt, n); break;
            case HR_TANH: unary_vec8<HR_TANH><<<grid8, kThreads, 0, st>>>(o, odt, in, idt, n); break;
            default: done = false;
            }
            if (done) return check_launch(hr_unary_op_name(op));
            done = true;
        }
        switch (op) {
        case HR_GELU: unary_contiguous<HR_GELU><<<grid, kThreads, 0, st>>>(o, odt, oel, in, idt, iel, n); break;
        case HR_RELU: unary_contiguous<HR_RELU><<<grid, kThreads, 0, st>>>(o, odt, oel, in, idt, iel, n); break;
        case HR_EXP: unary_contiguous<HR_EXP><<<grid, kThreads, 0, st>>>(o, odt, oel, in, idt, iel, n); break;
        case HR_NEG: unary_contiguous<HR_NEG><<<grid, kThreads, 0, st>>>(o, odt, oel, in, idt, iel, n); break;
        case HR_SQRT: unary_contiguous<HR_SQRT><<<grid, kThreads, 0, st>>>(o, odt, oel, in, idt, iel, n); break;
        case HR_TANH: unary_contiguous<HR_TANH><<<grid, kThreads, 0, st>>>(o, odt, oel, in, idt, iel, n); break;
        default: done = false;
        }
        if (done) return check_launch(hr_unary_op_name(op));
    }
    unary_kernel<T><<<grid_for(n), kThreads, 0, st>>>(g, (char *)hr_tensor_data(out), out->dtype,
                                                     (int)hr_dtype_size(out->dtype), (const char *)hr_tensor_data(t),
                                                     t->dtype, (int)hr_dtype_size(t->dtype), op, clamp, lo != nullptr,
                                                     hi != nullptr, l, h, n);
    return check_launch(clamp ? "clamp" : hr_unary_op_name(op));
}

template <typename T>
int run_where(const hr_tensor *cond, const hr_operand *a, const hr_operand *b, hr_tensor *out, cudaStream_t st)
{
    int64_t n = hr_tensor_numel(out);
    int64_t cst[HR_MAX_DIMS];
    hr_broadcast_strides(cond, out->ndim, out->size, cst);
    Geo g;
    geo_init(&g, out->ndim, out->size);
    geo_add(&g, out->stride);
    geo_add(&g, cst);
    Side<T> sa = side_of<T>(a, &g, out), sb = side_of<T>(b, &g, out);
    geo_coalesce(&g);
    where_kernel<T><<<grid_for(n), kThreads, 0, st>>>(g, (char *)hr_tensor_data(out), out->dtype,
                                                     (int)hr_dtype_size(out->dtype), (const char *)hr_tensor_data(cond),
                                                     sa, sb, n);
    return check_launch("where");
}

enum Compute { C_F32, C_F64, C_I64 };
Compute compute_of(hr_dtype dt)
{
    if (dt == HR_F64) return C_F64;
    return hr_dtype_is_float(dt) ? C_F32 : C_I64;
}

} // namespace
} // namespace hrc

using namespace hrc;

extern "C" int hr_cuda_binary(hr_binary_op op, hr_dtype common, const hr_operand *a, const hr_operand *b,
                              const hr_operand *alpha, hr_tensor *out)
{
    const char *name = hr_binary_op_name(op);
    const hr_tensor *ts[3] = {out, a->t, b->t};
    if (same_device(name, 3, ts)) return -1;
    cudaStream_t st = stream(dev_of(out));
    if (!st) return -1;
    if (hr_tensor_numel(out) == 0) return 0;
    hr_tensor *ca = nullptr, *cb = nullptr;
    hr_operand ua = *a, ub = *b;
    ua.t = unaliased(a->t, out, &ca);
    ub.t = unaliased(b->t, out, &cb);
    int rc = -1;
    if ((!a->t || ua.t) && (!b->t || ub.t)) {
        switch (compute_of(common)) {
        case C_F32: rc = run_binary<float>(op, &ua, &ub, alpha, out, st); break;
        case C_F64: rc = run_binary<double>(op, &ua, &ub, alpha, out, st); break;
        default: rc = run_binary<int64_t>(op, &ua, &ub, alpha, out, st); break;
        }
    }
    hr_tensor_release(ca);
    hr_tensor_release(cb);
    return rc;
}

extern "C" int hr_cuda_unary(hr_unary_op op, bool clamp, const hr_operand *lo, const hr_operand *hi, const hr_tensor *t,
                             hr_tensor *out)
{
    const hr_tensor *ts[2] = {out, t};
    if (same_device(clamp ? "clamp" : hr_unary_op_name(op), 2, ts)) return -1;
    cudaStream_t st = stream(dev_of(out));
    if (!st) return -1;
    if (hr_tensor_numel(out) == 0) return 0;
    hr_tensor *copy = nullptr;
    const hr_tensor *in = unaliased(t, out, &copy);
    if (!in) return -1;
    int rc;
    switch (compute_of(out->dtype)) {
    case C_F32: rc = run_unary<float>(op, clamp, lo, hi, in, out, st); break;
    case C_F64: rc = run_unary<double>(op, clamp, lo, hi, in, out, st); break;
    default: rc = run_unary<int64_t>(op, clamp, lo, hi, in, out, st); break;
    }
    hr_tensor_release(copy);
    return rc;
}

extern "C" int hr_cuda_where(const hr_tensor *cond, const hr_operand *a, const hr_operand *b, hr_tensor *out)
{
    const hr_tensor *ts[4] = {out, cond, a->t, b->t};
    if (same_device("where", 4, ts)) return -1;
    cudaStream_t st = stream(dev_of(out));
    if (!st) return -1;
    if (hr_tensor_numel(out) == 0) return 0;
    switch (compute_of(out->dtype)) {
    case C_F32: return run_where<float>(cond, a, b, out, st);
    case C_F64: return run_where<double>(cond, a, b, out, st);
    default: return run_where<int64_t>(cond, a, b, out, st);
    }
}

namespace hrc {
namespace {
/* The CPU's formula (cpu/gelu.c), f32 in float and f64 in double. */
template <typename T> __global__ void gelu_backward_kernel(const T *x, const T *g, T *gx, int64_t n);
template <> __global__ void gelu_backward_kernel<float>(const float *x, const float *g, float *gx, int64_t n)
{
    const float inv_sqrt_2pi = (float)0.3989422804014327;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        gx[i] = g[i] * (cdf + v * pdf);
    }
}
template <> __global__ void gelu_backward_kernel<double>(const double *x, const double *g, double *gx, int64_t n)
{
    const double inv_sqrt_2pi = 0.3989422804014327;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        double v = x[i];
        double cdf = 0.5 * (1.0 + erf(v * M_SQRT1_2));
        double pdf = inv_sqrt_2pi * exp(-0.5 * v * v);
        gx[i] = g[i] * (cdf + v * pdf);
    }
}
/* bf16/f16 x and gx, a gradient of any float dtype: the f32 formula above on the values widened
 * to f32, rounded once into gx. */
__global__ void gelu_backward_half(const char *x, int xdt, const char *g, int gdt, char *gx, int64_t n)
{
    const float inv_sqrt_2pi = (float)0.3989422804014327;
    const int xel = dtype_size(xdt), gel = dtype_size(gdt);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = load_f32(x + i * xel, xdt);
        float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        store_f32(gx + i * xel, xdt, load_f32(g + i * gel, gdt) * (cdf + v * pdf));
    }
}
} // namespace
} // namespace hrc

namespace hrc {
namespace {
/* Both formulas above 8 elements at a time (x and gx of one dtype, 16-byte aligned operands). */
__global__ void gelu_backward_vec8(const char *x, const char *g, int gdt, char *gx, int xdt, int64_t n)
{
    const float inv_sqrt_2pi = (float)0.3989422804014327;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x, nv = n / 8;
    const int64_t t0 = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (int64_t j = t0; j < nv; j += stride) {
        float v[8], gv[8];
        load8(x, xdt, j, v);
        load8(g, gdt, j, gv);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float cdf = 0.5f * (1.0f + erff(v[k] * (float)M_SQRT1_2));
            float pdf = inv_sqrt_2pi * expf(-0.5f * v[k] * v[k]);
            v[k] = gv[k] * (cdf + v[k] * pdf);
        }
        store8(gx, xdt, j, v);
    }
    for (int64_t i = nv * 8 + t0; i < n; i += stride) {
        float v = load_f32(x + i * dtype_size(xdt), xdt);
        float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        store_f32(gx + i * dtype_size(xdt), xdt, load_f32(g + i * dtype_size(gdt), gdt) * (cdf + v * pdf));
    }
}
} // namespace
} // namespace hrc

extern "C" int hr_cuda_gelu_backward(const hr_tensor *x, const hr_tensor *g, hr_tensor *gx)
{
    const hr_tensor *ts[3] = {x, g, gx};
    if (same_device("gelu backward", 3, ts)) return -1;
    bool half = x->dtype == HR_BF16 || x->dtype == HR_F16;
    bool layouts = hr_tensor_is_contiguous(x) && hr_tensor_is_contiguous(g) && hr_tensor_is_contiguous(gx) &&
                   hr_tensor_numel(g) == hr_tensor_numel(x);
    bool dtypes = half ? gx->dtype == x->dtype && hr_dtype_is_float(g->dtype)
                       : x->dtype == g->dtype && x->dtype == gx->dtype && (x->dtype == HR_F32 || x->dtype == HR_F64);
    if (!layouts || !dtypes)
        return hr_fail(HR_EINVAL, "gelu backward: expected contiguous f32/f64 tensors of one dtype, or bf16/f16 ones "
                                  "with a float gradient");
    cudaStream_t st = stream(dev_of(x));
    if (!st) return -1;
    int64_t n = hr_tensor_numel(x);
    if (n == 0) return 0;
    const void *xp = hr_tensor_data(x), *gp = hr_tensor_data(g);
    void *gxp = hr_tensor_data(gx);
    if (x->dtype != HR_F64 && vec8_ok(xp, x->dtype) && vec8_ok(gp, g->dtype) && vec8_ok(gxp, gx->dtype)) {
        gelu_backward_vec8<<<grid_for8(n), kThreads, 0, st>>>((const char *)xp, (const char *)gp, g->dtype, (char *)gxp,
                                                             x->dtype, n);
        return check_launch("gelu backward");
    }
    if (half) {
        gelu_backward_half<<<grid_for(n), kThreads, 0, st>>>((const char *)hr_tensor_data(x), x->dtype,
                                                            (const char *)hr_tensor_data(g), g->dtype,
                                                            (char *)hr_tensor_data(gx), n);
        return check_launch("gelu backward");
    }
    if (x->dtype == HR_F64)
        gelu_backward_kernel<double><<<grid_for(n), kThreads, 0, st>>>(
            (const double *)hr_tensor_data(x), (const double *)hr_tensor_data(g), (double *)hr_tensor_data(gx), n);
    else
        gelu_backward_kernel<float><<<grid_for(n), kThreads, 0, st>>>(
            (const float *)hr_tensor_data(x), (const float *)hr_tensor_data(g), (float *)hr_tensor_data(gx), n);
    return check_launch("gelu backward");
}

namespace hrc {
namespace {
/* The gradient in the CPU's order of operations: f32 as g * (c * e), f64 as (g * c) * e. */
__device__ inline float erf_grad(float g, float c, float e) { return g * (c * e); }
__device__ inline double erf_grad(double g, double c, double e) { return g * c * e; }

/* erf and its derivative 2/sqrt(pi) e^(-x^2) times the incoming gradient (g NULL: the value). */
template <typename T> __global__ void erf_kernel(const T *x, const T *g, T *out, int64_t n)
{
    const T two_over_sqrt_pi = (T)1.1283791670955126;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        T v = x[i];
        out[i] = g ? erf_grad(g[i], two_over_sqrt_pi, exp(-v * v)) : erf(v);
    }
}
} // namespace
} // namespace hrc

extern "C" int hr_cuda_erf(const hr_tensor *x, const hr_tensor *g, hr_tensor *out)
{
    const hr_tensor *ts[3] = {x, g ? g : x, out};
    if (same_device("erf", 3, ts)) return -1;
    bool ok = (x->dtype == HR_F32 || x->dtype == HR_F64) && out->dtype == x->dtype && (!g || g->dtype == x->dtype) &&
              hr_tensor_is_contiguous(x) && hr_tensor_is_contiguous(out) && (!g || hr_tensor_is_contiguous(g)) &&
              hr_tensor_numel(out) == hr_tensor_numel(x) && (!g || hr_tensor_numel(g) == hr_tensor_numel(x));
    if (!ok) return hr_fail(HR_EINVAL, "erf: expected contiguous f32 or f64 tensors of one dtype and size");
    cudaStream_t st = stream(dev_of(x));
    if (!st) return -1;
    int64_t n = hr_tensor_numel(x);
    if (n == 0) return 0;
    if (x->dtype == HR_F64)
        erf_kernel<double><<<grid_for(n), kThreads, 0, st>>>((const double *)hr_tensor_data(x),
                                                             g ? (const double *)hr_tensor_data(g) : nullptr,
                                                             (double *)hr_tensor_data(out), n);
    else
        erf_kernel<float><<<grid_for(n), kThreads, 0, st>>>((const float *)hr_tensor_data(x),
                                                            g ? (const float *)hr_tensor_data(g) : nullptr,
                                                            (float *)hr_tensor_data(out), n);
    return check_launch("erf");
}
