/* Elementwise maths shared by the CPU kernels, for float (written out so that the compiler vectorises
 * them: libm's are scalar calls) and double (libm's): exp, log1p for arguments in [0, 1], sqrt, and the
 * sigmoid; each suffixed by the dtype name (exp_float32, ...) so that a kernel macro can pick by suffix.
 */
#ifndef SSM_LAB_FASTMATH_H
#define SSM_LAB_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x for float: x = k ln2 + r with |r| <= ln2 / 2 (ln2 split in a high part exact in float and a low
 * part, Cody & Waite), e^r by its Taylor polynomial to degree 7 (remainder r^8 / 8! < 2e-9 relative),
 * times 2^k built in the exponent bits. x is clamped to [-87.3, 88.37] so that 2^k stays a normal float
 * (k in [-126, 127]): below the range the result is ~1.2e-38 (within that of e^x), above it ~2.4e38 (finite,
 * so that a product with 0 stays 0). */
static inline float exp_float32(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.37f ? 88.37f : x);
  float k = rintf(x * 1.44269504088896341f);
  float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  int32_t bits = ((int32_t)k + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* log(1 + y) for float y in [0, 1]: with f = y / (2 + y) in [0, 1/3], log(1 + y) = log((1 + f) / (1 - f))
 * = 2 (f + f^3 / 3 + f^5 / 5 + ...), summed to f^17 (the next term is below 1.5e-10 relative). f comes from
 * y directly, so tiny y keep full relative precision (log1p(y) ~ y). */
static inline float log1p_float32(float y) {
  float f = y / (2.f + y), w = f * f;
  float p = 1.f / 17.f;
  p = p * w + 1.f / 15.f;
  p = p * w + 1.f / 13.f;
  p = p * w + 1.f / 11.f;
  p = p * w + 1.f / 9.f;
  p = p * w + 1.f / 7.f;
  p = p * w + 1.f / 5.f;
  p = p * w + 1.f / 3.f;
  p = p * w + 1.f;
  return 2.f * f * p;
}

static inline float sqrt_float32(float x) { return sqrtf(x); }
static inline double exp_float64(double x) { return exp(x); }
static inline double log1p_float64(double y) { return log1p(y); }
static inline double sqrt_float64(double x) { return sqrt(x); }

static inline float sigmoid_float32(float x) { return 1.f / (1.f + exp_float32(-x)); }
static inline double sigmoid_float64(double x) { return 1 / (1 + exp(-x)); }

#endif
