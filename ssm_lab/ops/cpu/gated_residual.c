/* The gated static layers of a residual block in one pass each way on the CPU: the C twin of
 * ssm_lab.ops.gated_residual.gated_residual_ref (see there for the contract).
 *
 *   y = x + c act(v) sigmoid(g),   (v, g) = the two halves of z + bias,   act = tanh (LGLU) or identity (GLU),
 *
 * forward: reads z (rows, 2 d), bias (2 d: zeros where the layer has none), x (rows, d); writes y (rows, d).
 * backward, with dy the incoming gradient (dL/dx = dy passes through and is not written here):
 *   dL/dv = c dy sigmoid(g) act'(v),  dL/dg = c dy act(v) sigmoid(g) (1 - sigmoid(g)),
 *   per-block column sums of dL/d(v, g) (the bias's gradient) and block sums of dy act(v) sigmoid(g) (c's).
 * The torch path makes some ten passes over (rows, d) or (rows, 2 d) tensors for the same (the bias copy of
 * addmm, the activation, the residual add and their backward); these read and write each volume once.
 * Rows are split over the OpenMP threads in blocks of ROWS, the channels of a row vectorised; tanh is
 * 2 sigmoid(2 v) - 1 with fastmath.h's exp for float.
 */
#include "fastmath.h"

#define ROWS 256

/* One row's lanes: ACTIVATION(v) and SLOPE(a) (act' from a = act(v)) are expressions, so each of the two
 * activations gets its own vectorised loop (a run-time switch inside the loop kept it scalar). */
#define FORWARD_ROW(T, SUFFIX, ACTIVATION)                                                                 \
  _Pragma("omp simd")                                                                                      \
  for (long j = 0; j < d; j++) {                                                                           \
    T v = value[j] + bias[j], g = gate[j] + bias[d + j];                                                   \
    y[r * d + j] = x[r * d + j] + c * (ACTIVATION) * sigmoid_##SUFFIX(g);                                  \
  }

#define BACKWARD_ROW(T, SUFFIX, ACTIVATION, SLOPE)                                                         \
  _Pragma("omp simd reduction(+ : sum_c)")                                                                 \
  for (long j = 0; j < d; j++) {                                                                           \
    T v = value[j] + bias[j], g = gate[j] + bias[d + j];                                                   \
    T a = (ACTIVATION), s = sigmoid_##SUFFIX(g);                                                           \
    T dv = c * dy[j] * s * (SLOPE), dg = c * dy[j] * a * s * (1 - s);                                      \
    grad_value[j] = dv;                                                                                    \
    grad_gate[j] = dg;                                                                                     \
    sums[j] += dv;                                                                                         \
    sums[d + j] += dg;                                                                                     \
    sum_c += dy[j] * a * s;                                                                                \
  }

#define DEFINE_GATED_RESIDUAL(T, SUFFIX)                                                                   \
  void gated_residual_forward_##SUFFIX(const T *z, const T *bias, const T *x, T c, T *y, long rows,       \
                                       long d, int saturate, int threads) {                               \
    long blocks = (rows + ROWS - 1) / ROWS;                                                                \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                      \
    for (long block = 0; block < blocks; block++) {                                                        \
      long last = (block + 1) * ROWS < rows ? (block + 1) * ROWS : rows;                                   \
      for (long r = block * ROWS; r < last; r++) {                                                         \
        const T *value = z + r * 2 * d, *gate = value + d;                                                 \
        if (saturate) {                                                                                    \
          FORWARD_ROW(T, SUFFIX, 2 * sigmoid_##SUFFIX(2 * v) - 1)                                          \
        } else {                                                                                           \
          FORWARD_ROW(T, SUFFIX, v)                                                                        \
        }                                                                                                  \
      }                                                                                                    \
    }                                                                                                      \
  }                                                                                                        \
                                                                                                           \
  /* partial_bias: (blocks, 2 d), partial_c: (blocks) */                                                   \
  void gated_residual_backward_##SUFFIX(const T *z, const T *bias, const T *grad, T c, T *grad_z,         \
                                        double *partial_bias, double *partial_c, long rows, long d,       \
                                        int saturate, int threads) {                                      \
    long blocks = (rows + ROWS - 1) / ROWS;                                                                \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                      \
    for (long block = 0; block < blocks; block++) {                                                        \
      long last = (block + 1) * ROWS < rows ? (block + 1) * ROWS : rows;                                   \
      double *sums = partial_bias + block * 2 * d, sum_c = 0;                                              \
      for (long j = 0; j < 2 * d; j++) sums[j] = 0;                                                        \
      for (long r = block * ROWS; r < last; r++) {                                                         \
        const T *value = z + r * 2 * d, *gate = value + d, *dy = grad + r * d;                            \
        T *grad_value = grad_z + r * 2 * d, *grad_gate = grad_value + d;                                   \
        if (saturate) { /* tanh' = 1 - tanh^2 */                                                           \
          BACKWARD_ROW(T, SUFFIX, 2 * sigmoid_##SUFFIX(2 * v) - 1, 1 - a * a)                              \
        } else {                                                                                           \
          BACKWARD_ROW(T, SUFFIX, v, 1)                                                                    \
        }                                                                                                  \
      }                                                                                                    \
      partial_c[block] = sum_c;                                                                            \
    }                                                                                                      \
  }

DEFINE_GATED_RESIDUAL(float, float32)
DEFINE_GATED_RESIDUAL(double, float64)
