/* Dense input-dependent recurrences step by step on the CPU: the time loops of
 * ssm_lab.ops.matrix_scan's sequential paths (_SequentialRecurrence, _BilinearRecurrence), whose Python
 * loops cost a few tensor operations (tens of microseconds each) per step; the reference twin is
 * ssm_lab.ops.matrix_scan.matrix_recurrence_ref. Rows of the batch are independent: OpenMP splits them.
 *
 * affine_steps: forward  out_t = M_t out_{t-1} + v_t (out_{-1} = h0, or 0 when NULL);
 *               reverse  out_t = M_{t+1}^T out_{t+1} + v_t (out_L = 0): the adjoint g_t = dh_t + M_{t+1}^T g_{t+1}.
 *   M: (B, L, N, N) row-major, v, out: (B, L, N), h0: (B, N), all contiguous.
 *
 * bilinear_forward: with K_t = I - S_t given by its LU factors (LAPACK's getrf through torch.linalg.lu_factor:
 *   K = P L U, L unit lower, pivots 1-based), z_t = K_t^{-1} (2 h_{t-1} + u_t), h_t = z_t - h_{t-1}.
 * bilinear_adjoint: g_t = dh_t - r_{t+1} (r_L = 0), q_t = K_t^{-T} g_t, r_t = g_t - 2 q_t; writes q and r_0
 *   (dLoss/dh0 = -r_0). The factors are element (i, j) of matrix (b, t) at b * lu_sb + t * lu_st + i * lu_rs
 *   + j * lu_cs (torch stores them column by column); pivots (B, L, N) int32 contiguous.
 */
#include <stddef.h>
#include <stdint.h>

#define DEFINE_MATRIX_RECURRENCE(T, SUFFIX)                                                                   \
  void affine_steps_##SUFFIX(const T *M, const T *v, const T *h0, T *out, long B, long L, long N,             \
                             int reverse, int threads) {                                                      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long b = 0; b < B; b++) {                                                                            \
      for (long step = 0; step < L; step++) {                                                                 \
        long t = reverse ? L - 1 - step : step;                                                               \
        T *o = out + (b * L + t) * N;                                                                         \
        const T *vt = v + (b * L + t) * N;                                                                    \
        if (!reverse) { /* o_i = v_i + sum_j M_t[i, j] o_{t-1, j} */                                          \
          const T *previous = t > 0 ? o - N : (h0 ? h0 + b * N : NULL);                                       \
          const T *m = M + (b * L + t) * N * N;                                                               \
          for (long i = 0; i < N; i++) {                                                                      \
            T sum = vt[i];                                                                                    \
            if (previous) {                                                                                   \
              _Pragma("omp simd reduction(+ : sum)")                                                          \
              for (long j = 0; j < N; j++) sum += m[i * N + j] * previous[j];                                 \
            }                                                                                                 \
            o[i] = sum;                                                                                       \
          }                                                                                                   \
        } else { /* o = v + M_{t+1}^T o_{t+1}: rows of M_{t+1} scaled by o_{t+1, i}, added */                 \
          for (long j = 0; j < N; j++) o[j] = vt[j];                                                          \
          if (t + 1 < L) {                                                                                    \
            const T *m = M + (b * L + t + 1) * N * N, *later = o + N;                                         \
            for (long i = 0; i < N; i++) {                                                                    \
              T weight = later[i];                                                                            \
              _Pragma("omp simd")                                                                             \
              for (long j = 0; j < N; j++) o[j] += m[i * N + j] * weight;                                     \
            }                                                                                                 \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* the row interchange of step i of the factorisation (pivots 1-based), applied to x */                     \
  static inline void interchange_##SUFFIX(const int32_t *pivots, long i, T *x) {                              \
    long p = pivots[i] - 1;                                                                                   \
    T swap = x[i];                                                                                            \
    x[i] = x[p];                                                                                              \
    x[p] = swap;                                                                                              \
  }                                                                                                           \
                                                                                                              \
  /* x <- K^{-1} x from K = P L U (column-oriented: the factors' columns are contiguous) */                   \
  static void lu_solve_##SUFFIX(const T *lu, long rs, long cs, const int32_t *pivots, T *x, long N) {         \
    for (long i = 0; i < N; i++) interchange_##SUFFIX(pivots, i, x);                                          \
    for (long j = 0; j < N; j++) { /* L, unit diagonal */                                                     \
      T xj = x[j];                                                                                            \
      _Pragma("omp simd")                                                                                     \
      for (long i = j + 1; i < N; i++) x[i] -= lu[i * rs + j * cs] * xj;                                      \
    }                                                                                                         \
    for (long j = N - 1; j >= 0; j--) { /* U */                                                               \
      x[j] /= lu[j * rs + j * cs];                                                                            \
      T xj = x[j];                                                                                            \
      _Pragma("omp simd")                                                                                     \
      for (long i = 0; i < j; i++) x[i] -= lu[i * rs + j * cs] * xj;                                          \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* x <- K^{-T} x: K^T = U^T L^T P^T, so U^T y = x, L^T w = y, x = P w (interchanges in reverse order) */    \
  static void lu_solve_transposed_##SUFFIX(const T *lu, long rs, long cs, const int32_t *pivots, T *x,        \
                                           long N) {                                                          \
    for (long i = 0; i < N; i++) {                                                                            \
      T dot = 0;                                                                                              \
      _Pragma("omp simd reduction(+ : dot)")                                                                  \
      for (long j = 0; j < i; j++) dot += lu[j * rs + i * cs] * x[j];                                         \
      x[i] = (x[i] - dot) / lu[i * rs + i * cs];                                                              \
    }                                                                                                         \
    for (long i = N - 1; i >= 0; i--) {                                                                       \
      T dot = 0;                                                                                              \
      _Pragma("omp simd reduction(+ : dot)")                                                                  \
      for (long j = i + 1; j < N; j++) dot += lu[j * rs + i * cs] * x[j];                                     \
      x[i] -= dot;                                                                                            \
    }                                                                                                         \
    for (long i = N - 1; i >= 0; i--) interchange_##SUFFIX(pivots, i, x);                                     \
  }                                                                                                           \
                                                                                                              \
  void bilinear_forward_##SUFFIX(const T *lu, long lu_sb, long lu_st, long lu_rs, long lu_cs,                 \
                                 const int32_t *pivots, const T *u, const T *h0, T *states, long B,           \
                                 long L, long N, int threads) {                                               \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long b = 0; b < B; b++) {                                                                            \
      for (long t = 0; t < L; t++) {                                                                          \
        T *h = states + (b * L + t) * N;                                                                      \
        const T *previous = t > 0 ? h - N : (h0 ? h0 + b * N : NULL), *ut = u + (b * L + t) * N;              \
        for (long i = 0; i < N; i++) h[i] = ut[i] + (previous ? 2 * previous[i] : 0);                         \
        lu_solve_##SUFFIX(lu + b * lu_sb + t * lu_st, lu_rs, lu_cs, pivots + (b * L + t) * N, h, N);          \
        if (previous)                                                                                         \
          for (long i = 0; i < N; i++) h[i] -= previous[i];                                                   \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* scratch: (B, 2 N) zeros, each row the (r, g) of one batch row */                                         \
  void bilinear_adjoint_##SUFFIX(const T *lu, long lu_sb, long lu_st, long lu_rs, long lu_cs,                 \
                                const int32_t *pivots, const T *grad_states, T *q, T *r0, T *scratch, long B, \
                                long L, long N, int threads) {                                                \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long b = 0; b < B; b++) {                                                                            \
      T *r = scratch + 2 * b * N, *g = r + N;                                                                 \
      for (long t = L - 1; t >= 0; t--) {                                                                     \
        const T *dh = grad_states + (b * L + t) * N;                                                          \
        T *qt = q + (b * L + t) * N;                                                                          \
        for (long i = 0; i < N; i++) qt[i] = g[i] = dh[i] - r[i];                                             \
        lu_solve_transposed_##SUFFIX(lu + b * lu_sb + t * lu_st, lu_rs, lu_cs, pivots + (b * L + t) * N,      \
                                     qt, N);                                                                  \
        for (long i = 0; i < N; i++) r[i] = g[i] - 2 * qt[i];                                                 \
      }                                                                                                       \
      for (long i = 0; i < N; i++) r0[b * N + i] = r[i];                                                      \
    }                                                                                                         \
  }

DEFINE_MATRIX_RECURRENCE(float, float32)
DEFINE_MATRIX_RECURRENCE(double, float64)
