/*
 * hr_simd.h — small vectorisable building blocks shared by the reduce and softmax kernels.
 *
 * GCC/Clang do not turn `v > m ? v : m` on floats into vector max instructions without
 * -ffast-math (their MAX_EXPR leaves NaN and -0 unspecified), so the max/min scan is written with
 * the compilers' portable vector extension: compare, then select with bit masks, which is exactly
 * the NaN-ignoring behaviour the scalar code has. NaN is tracked separately.
 */
#ifndef HR_SIMD_H
#define HR_SIMD_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef float hr_v8f __attribute__((vector_size(32)));
typedef int32_t hr_v8i __attribute__((vector_size(32)));

/* Largest (is_max) or smallest value of x[0..n), n >= 1, ignoring NaN; *has_nan tells whether
 * any element was NaN. When every element is NaN the result is NaN. */
static inline float hr_maxmin_f32(const float *x, int64_t n, bool is_max, bool *has_nan)
{
    float best = x[0];
    int32_t bad = 0;
    int64_t i = 0;
    if (n >= 16) {
        hr_v8f m0, m1;
        memcpy(&m0, x, sizeof m0);
        memcpy(&m1, x + 8, sizeof m1);
        hr_v8i b0 = m0 != m0, b1 = m1 != m1;
        for (i = 16; i + 16 <= n; i += 16) {
            hr_v8f v0, v1;
            memcpy(&v0, x + i, sizeof v0);
            memcpy(&v1, x + i + 8, sizeof v1);
            hr_v8i k0 = is_max ? v0 > m0 : v0 < m0;
            hr_v8i k1 = is_max ? v1 > m1 : v1 < m1;
            m0 = (hr_v8f)(((hr_v8i)v0 & k0) | ((hr_v8i)m0 & ~k0));
            m1 = (hr_v8f)(((hr_v8i)v1 & k1) | ((hr_v8i)m1 & ~k1));
            b0 |= v0 != v0;
            b1 |= v1 != v1;
        }
        b0 |= b1;
        for (int j = 0; j < 8; j++) {
            bad |= b0[j];
            float a = m0[j], b = m1[j];
            /* a lane that started on a NaN stays NaN; skip it, bad already knows */
            if (a == a && (best != best || (is_max ? a > best : a < best))) best = a;
            if (b == b && (best != best || (is_max ? b > best : b < best))) best = b;
        }
    }
    for (; i < n; i++) {
        float v = x[i];
        if (v != v) bad = 1;
        else if (best != best || (is_max ? v > best : v < best)) best = v;
    }
    *has_nan = bad != 0 || best != best;
    return best;
}

/* Sum of x[0..n) accumulated in double (8 independent accumulators, vectorised). */
static inline double hr_sum_f32(const float *x, int64_t n)
{
    /* Blocks of 256 floats are summed in 16 float lanes (16 terms each, so the float error stays
     * near 16 ulp of a block's magnitude), then each block total is added in double: this runs
     * at the memory's read speed, where converting every element to double does not. */
    double s = 0;
    int64_t i = 0;
    for (; i + 256 <= n; i += 256) {
        float a[16] = {0};
        for (int k = 0; k < 256; k += 16)
            for (int j = 0; j < 16; j++) a[j] += x[i + k + j];
        double b = 0;
        for (int j = 0; j < 16; j++) b += (double)a[j];
        s += b;
    }
    for (; i < n; i++) s += (double)x[i];
    return s;
}

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros). */
static inline hr_v8f hr_v8f_select(hr_v8i mask, hr_v8f a, hr_v8f b)
{
    return (hr_v8f)(((hr_v8i)a & mask) | ((hr_v8i)b & ~mask));
}

static inline hr_v8f hr_v8f_splat(float v)
{
    hr_v8f r = {v, v, v, v, v, v, v, v};
    return r;
}

/* e^x on 8 floats, for x <= 88 (softmax feeds x - max <= 0): Cody-Waite reduction x = n ln2 + r,
 * a degree-7 Taylor polynomial on |r| <= ln2/2 (relative error about 1e-7 overall) and 2^n built
 * in the exponent bits. Results below e^-87.3 (near the smallest normal float) flush to 0; NaN
 * stays NaN. Written with vector types because scalar selects followed by arithmetic are not
 * if-converted (so not vectorised) under the default -ftrapping-math. */
static inline hr_v8f hr_exp_v8f(hr_v8f x)
{
    const hr_v8f lo = hr_v8f_splat(-87.3f), hi = hr_v8f_splat(88.0f), magic = hr_v8f_splat(12582912.0f);
    hr_v8i is_nan = x != x, tiny = x < lo;
    hr_v8f xc = hr_v8f_select(tiny | is_nan, hr_v8f_splat(0.0f), x);
    xc = hr_v8f_select(xc > hi, hi, xc);
    hr_v8f n = (xc * 1.44269504088896341f + magic) - magic; /* round to nearest via 1.5*2^23 */
    hr_v8f r = xc - n * 0.693145751953125f;                  /* ln2 split: a high part exact in float */
    r = r - n * 1.42860682030941723212e-6f;                  /* and the rest */
    hr_v8f p = hr_v8f_splat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    hr_v8i e = (__builtin_convertvector(n, hr_v8i) + 127) << 23;
    hr_v8f y = p * (hr_v8f)e;
    y = hr_v8f_select(tiny, hr_v8f_splat(0.0f), y);
    return hr_v8f_select(is_nan, x, y);
}

/* The same for one float (loop tails). */
static inline float hr_exp_f32(float x)
{
    return hr_exp_v8f(hr_v8f_splat(x))[0];
}

/* y[i] = exp(x[i] - mx) for i < n (y may be x itself): the exponentials of a softmax row. */
static inline void hr_exp_shifted_f32(const float *x, float *y, int64_t n, float mx)
{
    hr_v8f vm = hr_v8f_splat(mx);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        hr_v8f v;
        memcpy(&v, x + i, sizeof v);
        v = hr_exp_v8f(v - vm);
        memcpy(y + i, &v, sizeof v);
    }
    for (; i < n; i++) y[i] = hr_exp_f32(x[i] - mx);
}

#endif
