/* tanh and exp that vectorise: the same range reduction, polynomials and
 * constants as the Numba backend's (src/fastrnn/backends/numba_kernels.py,
 * "Elementwise math that vectorises"); in both, 2^k is built from its exponent
 * bits (below).
 *
 * A call to libm's tanh or exp keeps a loop scalar. These are straight-line
 * code with selects instead of branches, so GCC and Clang vectorise the loops
 * that call them. Both stay within 1.6 ulp of the exact value; NaN propagates,
 * ±inf saturates, exp underflows to 0.
 *
 * exp(z), z <= 0: z = k ln2 + r with |r| <= ln2/2 (ln2 split in two so that
 * k·LN2_HI is exact), exp(r) by its Taylor series (degree 13 for double, 7 for
 * float: truncation below 0.1 ulp), times 2^k built from its bits in two
 * halves, so that subnormal results are rounded once.
 * tanh(x): a = |x|; below ln(3)/2 Cody & Waite's a + a·g·P(g)/Q(g), g = a²;
 * above it 1 − 2e/(1 + e) with e = exp(−2a); the sign copied back. */
#ifndef FASTRNN_VMATH_H
#define FASTRNN_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* 2^k for k in [-126, 127] (float) / [-1022, 1023] (double), from the exponent bits. */
static inline float pow2i_f32(int32_t k)
{
    uint32_t bits = (uint32_t)(k + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline double pow2i_f64(int32_t k)
{
    uint64_t bits = (uint64_t)(uint32_t)(k + 1023) << 52;
    double f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float vexp_f32(float z)
{
    z = z > 0.0f ? 0.0f : z;
    z = z < -104.0f ? -104.0f : z;                /* exp rounds to 0 below; NaN passes */
    float w = 0.5f - z * 1.44269504088896341f;    /* k = -floor(w) = round(z / ln 2) */
    w = w < 200.0f ? w : 200.0f;                  /* also NaN: keeps the conversion defined */
    int32_t k = -(int32_t)w;                      /* w > 0, so truncation is floor */
    float kf = (float)k;
    float r = (z - kf * 0.693359375f) - kf * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;                     /* 1/7! */
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t k1 = k >> 1;                          /* 2^k = 2^k1 · 2^(k − k1), each normal */
    return p * pow2i_f32(k1) * pow2i_f32(k - k1);
}

static inline double vexp_f64(double z)
{
    z = z > 0.0 ? 0.0 : z;
    z = z < -745.5 ? -745.5 : z;
    double w = 0.5 - z * 1.4426950408889634;
    w = w < 2000.0 ? w : 2000.0;
    int32_t k = -(int32_t)w;                      /* 32 bits: converts in SIMD without AVX-512 */
    double kf = (double)k;
    double r = (z - kf * 0.6931471803691238) - kf * 1.9082149292705877e-10;
    double p = 1.0 / 6227020800.0;                /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int32_t k1 = k >> 1;
    return p * pow2i_f64(k1) * pow2i_f64(k - k1);
}

static inline float vtanh_f32(float x)
{
    float a = fabsf(x);
    a = a > 9.1f ? 9.1f : a;                      /* tanh rounds to 1 above */
    float g = a * a;
    float e = vexp_f32(-2.0f * a);
    /* Both forms as base + num/den, both computed, one selected: no branch. */
    float num_s = a * g * (-0.3831010665e-2f * g + -0.8237728127f);
    float den_s = g + 0.2471319654e1f;
    float num_l = -2.0f * e, den_l = 1.0f + e;
    int small = a < 0.549306144f;                 /* ln(3)/2 */
    float base = small ? a : 1.0f;
    float num = small ? num_s : num_l;
    float den = small ? den_s : den_l;
    return copysignf(base + num / den, x);
}

static inline double vtanh_f64(double x)
{
    double a = fabs(x);
    a = a > 19.5 ? 19.5 : a;
    double g = a * a;
    double e = vexp_f64(-2.0 * a);
    double num_s = a * g * ((-0.96437492777225469787 * g + -0.99225929672236083313e2) * g
                            + -0.16134119023996228053e4);
    double den_s = ((g + 0.11274474380534949335e3) * g + 0.22337720718962312926e4) * g
                   + 0.48402357071988688686e4;
    double num_l = -2.0 * e, den_l = 1.0 + e;
    int small = a < 0.5493061443340549;
    double base = small ? a : 1.0;
    double num = small ? num_s : num_l;
    double den = small ? den_s : den_l;
    return copysign(base + num / den, x);
}

#endif
