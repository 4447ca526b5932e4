/* hr_dtype.c — element types: sizes, names, promotion, half-precision conversions. */
#include <math.h>
#include <string.h>

#include "hr_core.h"

static const size_t dtype_sizes[HR_NDTYPES] = {4, 8, 2, 2, 8, 4, 1, 1};
static const char *const dtype_names[HR_NDTYPES] = {"f32", "f64", "bf16", "f16", "i64", "i32", "u8", "bool"};

size_t hr_dtype_size(hr_dtype dt) { return (unsigned)dt < HR_NDTYPES ? dtype_sizes[dt] : 0; }

const char *hr_dtype_name(hr_dtype dt) { return (unsigned)dt < HR_NDTYPES ? dtype_names[dt] : "?"; }

int hr_dtype_from_name(const char *name, hr_dtype *out)
{
    static const struct { const char *name; hr_dtype dt; } aliases[] = {
        {"f32", HR_F32}, {"float32", HR_F32}, {"float", HR_F32},
        {"f64", HR_F64}, {"float64", HR_F64}, {"double", HR_F64},
        {"bf16", HR_BF16}, {"bfloat16", HR_BF16},
        {"f16", HR_F16}, {"float16", HR_F16}, {"half", HR_F16},
        {"i64", HR_I64}, {"int64", HR_I64}, {"long", HR_I64},
        {"i32", HR_I32}, {"int32", HR_I32}, {"int", HR_I32},
        {"u8", HR_U8}, {"uint8", HR_U8}, {"byte", HR_U8},
        {"bool", HR_BOOL},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++) {
        if (strcmp(name, aliases[i].name) == 0) {
            *out = aliases[i].dt;
            return 0;
        }
    }
    return hr_fail(HR_EINVAL, "unknown dtype '%s' (expected f32, f64, bf16, f16, i64, i32, u8 or bool)", name);
}

bool hr_dtype_is_float(hr_dtype dt) { return dt == HR_F32 || dt == HR_F64 || dt == HR_BF16 || dt == HR_F16; }
bool hr_dtype_is_int(hr_dtype dt) { return dt == HR_I64 || dt == HR_I32 || dt == HR_U8 || dt == HR_BOOL; }

/* Rank in the promotion lattice: bool < u8 < i32 < i64 < (halfs) < f32 < f64. */
static int promote_rank(hr_dtype dt)
{
    switch (dt) {
    case HR_BOOL: return 0;
    case HR_U8: return 1;
    case HR_I32: return 2;
    case HR_I64: return 3;
    case HR_BF16: return 4;
    case HR_F16: return 4;
    case HR_F32: return 5;
    case HR_F64: return 6;
    default: return 0;
    }
}

hr_dtype hr_dtype_promote(hr_dtype a, hr_dtype b)
{
    if (a == b) return a;
    /* bf16 with f16 has no common half type: PyTorch promotes to f32. */
    if ((a == HR_BF16 && b == HR_F16) || (a == HR_F16 && b == HR_BF16)) return HR_F32;
    return promote_rank(a) >= promote_rank(b) ? a : b;
}

float hr_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while ((man & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t hr_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) { /* inf or nan */
        if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
        return (uint16_t)(sign | 0x7c00u);
    }
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (absx < 0x38800000u) {                                     /* result is subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;            /* < half of the smallest subnormal */
        uint32_t exp = absx >> 23;
        uint32_t man = (absx & 0x7fffffu) | 0x800000u;
        /* value = man * 2^(exp-150); in units of the smallest subnormal 2^-24 that is
         * man >> (126 - exp), a shift of 14..24 here, rounded to nearest even. */
        uint32_t shift = 126 - exp;
        uint32_t result = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (result & 1u))) result++;
        return (uint16_t)(sign | result);
    }
    uint32_t result = ((absx - 0x38000000u) >> 13);
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (result & 1u))) result++;
    return (uint16_t)(sign | result);
}

float hr_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t hr_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    uint32_t lsb = (x >> 16) & 1u;
    x += 0x7fffu + lsb;
    return (uint16_t)(x >> 16);
}

double hr_load_f64(const void *p, hr_dtype dt)
{
    switch (dt) {
    case HR_F32: return *(const float *)p;
    case HR_F64: return *(const double *)p;
    case HR_BF16: return hr_bf16_to_f32(*(const uint16_t *)p);
    case HR_F16: return hr_f16_to_f32(*(const uint16_t *)p);
    case HR_I64: return (double)*(const int64_t *)p;
    case HR_I32: return *(const int32_t *)p;
    case HR_U8: return *(const uint8_t *)p;
    case HR_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
    default: return 0.0;
    }
}

/* Float-to-integer stores saturate instead of invoking undefined behaviour on out-of-range values. */
static int64_t double_to_i64(double v)
{
    if (isnan(v)) return 0;
    if (v >= 9223372036854775807.0) return INT64_MAX;
    if (v <= -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

void hr_store_f64(void *p, hr_dtype dt, double v)
{
    switch (dt) {
    case HR_F32: *(float *)p = (float)v; break;
    case HR_F64: *(double *)p = v; break;
    case HR_BF16: *(uint16_t *)p = hr_f32_to_bf16((float)v); break;
    case HR_F16: *(uint16_t *)p = hr_f32_to_f16((float)v); break;
    case HR_I64: *(int64_t *)p = double_to_i64(v); break;
    case HR_I32: {
        int64_t i = double_to_i64(v);
        *(int32_t *)p = (int32_t)(uint32_t)(uint64_t)i; /* wraps like a C cast of the integer */
        break;
    }
    case HR_U8: *(uint8_t *)p = (uint8_t)(uint64_t)double_to_i64(v); break;
    case HR_BOOL: *(uint8_t *)p = v != 0.0; break;
    default: break;
    }
}

int64_t hr_load_i64(const void *p, hr_dtype dt)
{
    switch (dt) {
    case HR_I64: return *(const int64_t *)p;
    case HR_I32: return *(const int32_t *)p;
    case HR_U8: return *(const uint8_t *)p;
    case HR_BOOL: return *(const uint8_t *)p ? 1 : 0;
    default: return double_to_i64(hr_load_f64(p, dt));
    }
}

void hr_store_i64(void *p, hr_dtype dt, int64_t v)
{
    switch (dt) {
    case HR_I64: *(int64_t *)p = v; break;
    case HR_I32: *(int32_t *)p = (int32_t)(uint32_t)(uint64_t)v; break;
    case HR_U8: *(uint8_t *)p = (uint8_t)(uint64_t)v; break;
    case HR_BOOL: *(uint8_t *)p = v != 0; break;
    default: hr_store_f64(p, dt, (double)v); break;
    }
}
