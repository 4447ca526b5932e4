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

/*
 * The select, splat and exp below are defined for two widths from one body each (HR_DEFINE_*):
 * 8 lanes (hr_v8f, what the reduce and softmax loops use) and the widest vectors of the build's
 * target (hr_vwf, HR_VW lanes: 16 with AVX-512, else 8), for compute-bound loops such as GELU's,
 * where one 16-lane instruction does the work of two 8-lane ones (on Zen 4, whose 512-bit units
 * are 256 bits wide, GELU's forward still ran 24% faster: the loop was bound by instructions
 * issued, not by arithmetic). The lanes are independent, so both widths give the same bits.
 */
#if defined(__AVX512F__)
#define HR_VW 16
#else
#define HR_VW 8
#endif
typedef float hr_vwf __attribute__((vector_size(4 * HR_VW)));
typedef int32_t hr_vwi __attribute__((vector_size(4 * HR_VW)));

/* VF_select(mask, a, b): mask ? a : b, lane by lane (mask lanes are all ones or all zeros);
 * VF_splat(v): v in every lane. */
#define HR_DEFINE_SELECT_SPLAT(VF, VI)                                                                 \
    static inline VF VF##_select(VI mask, VF a, VF b) { return (VF)(((VI)a & mask) | ((VI)b & ~mask)); } \
    static inline VF VF##_splat(float v)                                                               \
    {                                                                                                  \
        VF r;                                                                                          \
        for (int l = 0; l < (int)(sizeof r / sizeof r[0]); l++) r[l] = v;                              \
        return r;                                                                                      \
    }

/* e^x lane by lane, for x <= 88 (softmax feeds x - max <= 0): Cody-Waite reduction x = n ln2 + r,
 * a degree-7 Taylor polynomial on |r| <= ln2/2 (relative error about 1e-7 overall) and 2^n built
 * in the exponent bits. Results below e^-87.3 (near the smallest normal float) flush to 0; NaN
 * stays NaN. Written with vector types because scalar selects followed by arithmetic are not
 * if-converted (so not vectorised) under the default -ftrapping-math. */
#define HR_DEFINE_EXP(NAME, VF, VI)                                                                    \
    static inline VF NAME(VF x)                                                                        \
    {                                                                                                  \
        const VF lo = VF##_splat(-87.3f), hi = VF##_splat(88.0f), magic = VF##_splat(12582912.0f);      \
        VI is_nan = x != x, tiny = x < lo;                                                             \
        VF xc = VF##_select(tiny | is_nan, VF##_splat(0.0f), x);                                       \
        xc = VF##_select(xc > hi, hi, xc);                                                             \
        VF n = (xc * 1.44269504088896341f + magic) - magic; /* round to nearest via 1.5*2^23 */         \
        VF r = xc - n * 0.693145751953125f;                  /* ln2 split: a high part exact */         \
        r = r - n * 1.42860682030941723212e-6f;              /* and the rest */                         \
        VF p = VF##_splat(1.0f / 5040.0f);                                                             \
        p = p * r + 1.0f / 720.0f;                                                                     \
        p = p * r + 1.0f / 120.0f;                                                                     \
        p = p * r + 1.0f / 24.0f;                                                                      \
        p = p * r + 1.0f / 6.0f;                                                                       \
        p = p * r + 0.5f;                                                                              \
        p = p * r + 1.0f;                                                                              \
        p = p * r + 1.0f;                                                                              \
        VI e = (__builtin_convertvector(n, VI) + 127) << 23;                                           \
        VF y = p * (VF)e;                                                                              \
        y = VF##_select(tiny, VF##_splat(0.0f), y);                                                    \
        return VF##_select(is_nan, x, y);                                                              \
    }

HR_DEFINE_SELECT_SPLAT(hr_v8f, hr_v8i)
HR_DEFINE_EXP(hr_exp_v8f, hr_v8f, hr_v8i)
#if HR_VW != 8
HR_DEFINE_SELECT_SPLAT(hr_vwf, hr_vwi)
HR_DEFINE_EXP(hr_exp_vwf, hr_vwf, hr_vwi)
#else
static inline hr_vwf hr_vwf_select(hr_vwi mask, hr_vwf a, hr_vwf b) { return hr_v8f_select(mask, a, b); }
static inline hr_vwf hr_vwf_splat(float v) { return hr_v8f_splat(v); }
static inline hr_vwf hr_exp_vwf(hr_vwf x) { return hr_exp_v8f(x); }
#endif

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
