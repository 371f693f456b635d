/* The step matrices of the tv core on the CPU, one pass forward and one backward: the C twin of
 * ssm_lab/ops/triton/tv_steps.py (the formulas and their derivation are in its docstring and in
 * ssm_lab.cores.tv._step_matrices_backward, the torch twin). Per token t and coordinate n:
 *
 *   s = delta + delta_bias_n,  a = exp(-softplus(s) softplus(alpha_n)),  b = tanh(beta),  c = tanh(kappa),
 *   p = |a + i(b - c)|,  q = |a + i(b + c)|,  k = 1 / (max(1, (p + q) / 2) (1 + 4 eps)),
 *
 * forward writes a k, b k u (u the drive input) and c k, and the terms the backward needs beyond them,
 * (k, softplus(s), b) (the moduli and sigmoid(s) = e^(s - softplus(s)) follow from these with two
 * square roots and one exp: the backward's cost was its recomputation of the forward's four exps, log1p and
 * divisions; the Triton twin recomputes instead, GPU memory being the scarcer there); backward writes
 * dL/d(delta, beta, kappa), dL/du and per-block column sums of dL/ds and of dL/d(-rate) softplus(s) (for
 * dL/ddelta_bias and dL/dalpha).
 *
 * Layout: the pre-activations are three planes of T tokens x N channels read in place from the selection
 * layer's output (element (j, t, n) at j * component + t * token + n); u, a k, b k u, c k and the incoming
 * gradients are contiguous (T, N). Tokens are split over the OpenMP threads in blocks of ROWS; inside a
 * block the channels are walked in tiles of TILE with the tile's lanes vectorised.
 *
 * float32 uses the exp and log1p of fastmath.h, which the compiler vectorises (libm's are scalar calls);
 * float64 uses libm's. tanh is 2 sigmoid(2 x) - 1, as in the Triton kernels.
 */
#include "fastmath.h"

#define ROWS 256
#define TILE 64

#define DEFINE_TV_STEPS(T, SUFFIX)                                                                            \
  /* torch's softplus (beta 1, threshold 20) */                                                               \
  static inline T softplus_##SUFFIX(T x) {                                                                    \
    T magnitude = x < 0 ? -x : x;                                                                             \
    return x > 20 ? x : (x > 0 ? x : 0) + log1p_##SUFFIX(exp_##SUFFIX(-magnitude));                           \
  }                                                                                                           \
                                                                                                              \
  /* delta_bias and softplus(alpha) of the channels n0 .. n0 + lanes - 1 */                                   \
  static inline void channel_parameters_##SUFFIX(const T *delta_bias, const T *alpha, long n0, long lanes,    \
                                                 T *bias, T *rate) {                                          \
    for (long j = 0; j < lanes; j++) {                                                                        \
      bias[j] = delta_bias[n0 + j];                                                                           \
      rate[j] = softplus_##SUFFIX(alpha[n0 + j]);                                                             \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* the moduli p = |a + i(b - c)|, q = |a + i(b + c)| of [[a, b], [c, 0]] */                                 \
  static inline void moduli_##SUFFIX(T a, T b, T c, T tiny, T *p, T *q) {                                     \
    T a_squared = a * a + tiny;                                                                               \
    *p = sqrt_##SUFFIX(a_squared + (b - c) * (b - c));                                                        \
    *q = sqrt_##SUFFIX(a_squared + (b + c) * (b + c));                                                        \
  }                                                                                                           \
                                                                                                              \
  void tv_steps_forward_##SUFFIX(const T *selected, long component, long token, const T *u,                   \
                                 const T *delta_bias, const T *alpha, T *a_out, T *drive_out, T *c_out,       \
                                 T *terms, long tokens, long channels, T tiny, T eps, int threads) {          \
    long blocks = (tokens + ROWS - 1) / ROWS, plane = tokens * channels;                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long block = 0; block < blocks; block++) {                                                           \
      long last = (block + 1) * ROWS < tokens ? (block + 1) * ROWS : tokens;                                  \
      for (long n0 = 0; n0 < channels; n0 += TILE) {                                                          \
        long lanes = channels - n0 < TILE ? channels - n0 : TILE;                                             \
        T bias[TILE], rate[TILE];                                                                             \
        channel_parameters_##SUFFIX(delta_bias, alpha, n0, lanes, bias, rate);                                \
        for (long t = block * ROWS; t < last; t++) {                                                          \
          const T *delta = selected + t * token + n0, *beta = delta + component, *kappa = beta + component;   \
          long at = t * channels + n0;                                                                        \
          _Pragma("omp simd")                                                                                 \
          for (long j = 0; j < lanes; j++) {                                                                  \
            T p, q, softplus_shifted = softplus_##SUFFIX(delta[j] + bias[j]);                                 \
            T a = exp_##SUFFIX(-softplus_shifted * rate[j]);                                                  \
            T b = 2 * sigmoid_##SUFFIX(2 * beta[j]) - 1, c = 2 * sigmoid_##SUFFIX(2 * kappa[j]) - 1;          \
            moduli_##SUFFIX(a, b, c, tiny, &p, &q);                                                           \
            T half = (p + q) / 2, k = 1 / ((half > 1 ? half : 1) * (1 + 4 * eps));                            \
            a_out[at + j] = a * k;                                                                            \
            c_out[at + j] = c * k;                                                                            \
            drive_out[at + j] = b * k * u[at + j];                                                            \
            terms[at + j] = k;                                                                                \
            terms[plane + at + j] = softplus_shifted;                                                         \
            terms[2 * plane + at + j] = b;                                                                    \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* selected: the delta plane only (beta and kappa enter through terms); a_norm, c_norm: the forward's a k   \
     and c k; terms: its (k, softplus(s), b) planes. partial_shifted, partial_rate: (blocks, channels), one   \
     row per block of ROWS tokens */                                                                          \
  void tv_steps_backward_##SUFFIX(const T *selected, long token, const T *u,                                  \
                                  const T *delta_bias, const T *alpha, const T *a_norm, const T *c_norm,      \
                                  const T *terms, const T *grad_a, const T *grad_drive, const T *grad_c,      \
                                  T *grad_selected, long grad_component, long grad_token, T *grad_u,          \
                                  double *partial_shifted, double *partial_rate, long tokens, long channels,  \
                                  T tiny, T eps, int threads) {                                               \
    long blocks = (tokens + ROWS - 1) / ROWS, plane = tokens * channels;                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long block = 0; block < blocks; block++) {                                                           \
      long last = (block + 1) * ROWS < tokens ? (block + 1) * ROWS : tokens;                                  \
      for (long n0 = 0; n0 < channels; n0 += TILE) {                                                          \
        long lanes = channels - n0 < TILE ? channels - n0 : TILE;                                             \
        T bias[TILE], rate[TILE];                                                                             \
        double sum_shifted[TILE] = {0}, sum_rate[TILE] = {0};                                                 \
        channel_parameters_##SUFFIX(delta_bias, alpha, n0, lanes, bias, rate);                                \
        for (long t = block * ROWS; t < last; t++) {                                                          \
          const T *delta = selected + t * token + n0;                                                         \
          T *grad_delta = grad_selected + t * grad_token + n0, *grad_beta = grad_delta + grad_component;      \
          T *grad_kappa = grad_beta + grad_component;                                                         \
          long at = t * channels + n0;                                                                        \
          _Pragma("omp simd")                                                                                 \
          for (long j = 0; j < lanes; j++) {                                                                  \
            /* (a, b, c) before normalisation from the forward's a k, c k, k and b */                         \
            T k = terms[at + j], softplus_shifted = terms[plane + at + j], b = terms[2 * plane + at + j];     \
            T scale = 1 / k, a = a_norm[at + j] * scale, c = c_norm[at + j] * scale, p, q;                    \
            moduli_##SUFFIX(a, b, c, tiny, &p, &q);                                                           \
            /* dL/d of the normalised entries (a k, b k, c k); u's gradient is d(b k u) b k */                \
            T ga = grad_a[at + j], gb = grad_drive[at + j] * u[at + j], gc = grad_c[at + j];                  \
            grad_u[at + j] = grad_drive[at + j] * b * k;                                                      \
            /* through 1 / k: dL/ds = -(g . (a, b, c)) k^2, ds/dp = ds/dq = (1 + 4 eps) / 2 if active */      \
            T grad_half = p + q >= 2 ? -(ga * a + gb * b + gc * c) * k * k * (T)(0.5 + 2 * eps) : 0;          \
            T weight_p = grad_half / p, weight_q = grad_half / q;                                             \
            T grad_raw_a = ga * k + (weight_p + weight_q) * a;                                                \
            T difference = weight_p * (b - c), total = weight_q * (b + c);                                    \
            grad_beta[j] = (gb * k + total + difference) * (1 - b * b); /* tanh' = 1 - tanh^2 */              \
            grad_kappa[j] = (gc * k + total - difference) * (1 - c * c);                                      \
            T grad_rate = grad_raw_a * a; /* dL/d(-rate), rate = softplus(s) softplus(alpha) */               \
            /* softplus' = sigmoid(s) = e^(s - softplus(s)): no cancellation at either end */                 \
            T shifted = delta[j] + bias[j];                                                                   \
            T grad_shifted = -grad_rate * exp_##SUFFIX(shifted - softplus_shifted) * rate[j];                 \
            grad_delta[j] = grad_shifted;                                                                     \
            sum_shifted[j] += grad_shifted;                                                                   \
            sum_rate[j] += grad_rate * softplus_shifted;                                                      \
          }                                                                                                   \
        }                                                                                                     \
        for (long j = 0; j < lanes; j++) {                                                                    \
          partial_shifted[block * channels + n0 + j] = sum_shifted[j];                                        \
          partial_rate[block * channels + n0 + j] = sum_rate[j];                                              \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
  }

DEFINE_TV_STEPS(float, float32)
DEFINE_TV_STEPS(double, float64)
