/* Dense input-dependent recurrences step by step on the CPU: the time loops of
 * ssm_lab.ops.matrix_scan's sequential paths (_SequentialRecurrence, _BilinearRecurrence), whose Python
 * loops cost a few tensor operations (tens of microseconds each) per step; the reference twin is
 * ssm_lab.ops.matrix_scan.matrix_recurrence_ref. Rows of the batch are independent: OpenMP splits them.
 *
 * affine_steps: forward  out_t = M_t out_{t-1} + v_t (out_{-1} = h0, or 0 when NULL);
 *               reverse  out_t = M_{t+1}^T out_{t+1} + v_t (out_L = 0): the adjoint g_t = dh_t + M_{t+1}^T g_{t+1}.
 *   M: (B, L, N, N) row-major, v, out: (B, L, N), h0: (B, N), all contiguous.
 *
 * bilinear_forward: K_t = I - S_t factorised with partial pivoting, K_t = P L U (into factors: L, unit
 *   diagonal, below the diagonal, U on and above it, rows ld >= N apart; pivots 0-based: step k swapped rows
 *   k and pivots[k]), z_t = K_t^{-1} (2 h_{t-1} + u_t), h_t = z_t - h_{t-1}. One pass over S, no temporaries.
 * bilinear_adjoint: g_t = dh_t - r_{t+1} (r_L = 0), q_t = K_t^{-T} g_t, r_t = g_t - 2 q_t; writes q, r_0
 *   (dLoss/dh0 = -r_0) and, where wanted (grad_S not NULL), dS_t = -dK_t = q_t z_t^T with z_t = h_t + h_{t-1}
 *   (h_{-1} = h0 or 0).
 *   S, grad_S: (B, L, N, N); factors (B, L, N, ld); u, states, q: (B, L, N); pivots (B, L, N) int32; h0, r0:
 *   (B, N); all contiguous.
 */
#include <stddef.h>
#include <stdint.h>

#define MAGNITUDE(x) ((x) < 0 ? -(x) : (x))
/* the factors' rows are padded to whole vectors of this many bytes (as matrix_recurrence.py allocates them) */
#define VECTOR_BYTES 64

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
  /* K = I - S <- P L U in lu (rows ld apart, ld a whole number of vectors; the padding columns stay zero),   \
   * with partial pivoting: step k swaps row k with the row p >= k of the largest |K[p, k]| (pivots[k] = p)   \
   * and subtracts l[i, k] = K[i, k] / K[k, k] times row k from each row i > k, and x_i -= l[i, k] x_k with   \
   * it (x <- L^{-1} P^T x, the first half of a solve). A row's update runs in whole vectors from the column  \
   * at or before k + 1 where a vector starts, against pivot_row (row k with zeros up to column k, so columns \
   * <= k stay as they are): no remainder loops. The next step's pivot search rides along. Returns whether    \
   * some U[k, k] = 0 (K singular). */                                                                        \
  static int factor_##SUFFIX(const T *S, T *lu, long ld, int32_t *pivots, T *pivot_row, T *x, long N) {       \
    const long lanes = VECTOR_BYTES / sizeof(T);                                                              \
    for (long i = 0; i < N; i++) {                                                                            \
      for (long j = 0; j < ld; j++) lu[i * ld + j] = j < N ? -S[i * N + j] : 0;                               \
      lu[i * ld + i] += 1;                                                                                    \
    }                                                                                                         \
    long p = 0;                                                                                               \
    T largest = -1;                                                                                           \
    for (long i = 0; i < N; i++) {                                                                            \
      if (MAGNITUDE(lu[i * ld]) > largest) {                                                                  \
        largest = MAGNITUDE(lu[i * ld]);                                                                      \
        p = i;                                                                                                \
      }                                                                                                       \
    }                                                                                                         \
    int singular = 0;                                                                                         \
    for (long k = 0; k < N; k++) {                                                                            \
      T *row_k = lu + k * ld;                                                                                 \
      pivots[k] = (int32_t)p;                                                                                 \
      if (p != k) {                                                                                           \
        T *row_p = lu + p * ld, swap = x[k];                                                                  \
        x[k] = x[p];                                                                                          \
        x[p] = swap;                                                                                          \
        _Pragma("omp simd")                                                                                   \
        for (long j = 0; j < ld; j++) {                                                                       \
          swap = row_k[j];                                                                                    \
          row_k[j] = row_p[j];                                                                                \
          row_p[j] = swap;                                                                                    \
        }                                                                                                     \
      }                                                                                                       \
      singular |= row_k[k] == 0;                                                                              \
      long start = (k + 1) / lanes * lanes;                                                                   \
      for (long j = start; j < ld; j++) pivot_row[j] = j > k ? row_k[j] : 0;                                  \
      T inverse = 1 / row_k[k];                                                                               \
      p = k + 1;                                                                                              \
      largest = -1;                                                                                           \
      for (long i = k + 1; i < N; i++) {                                                                      \
        T *row_i = lu + i * ld, multiplier = row_i[k] * inverse;                                              \
        for (long j = start; j < ld; j += lanes) {                                                            \
          _Pragma("omp simd")                                                                                 \
          for (long lane = 0; lane < lanes; lane++) row_i[j + lane] -= multiplier * pivot_row[j + lane];      \
        }                                                                                                     \
        row_i[k] = multiplier;                                                                                \
        x[i] -= multiplier * x[k];                                                                            \
        if (MAGNITUDE(row_i[k + 1]) > largest) {                                                              \
          largest = MAGNITUDE(row_i[k + 1]);                                                                  \
          p = i;                                                                                              \
        }                                                                                                     \
      }                                                                                                       \
    }                                                                                                         \
    return singular;                                                                                          \
  }                                                                                                           \
                                                                                                              \
  /* x <- U^{-1} x, the second half of the solve (dot products along the rows of U) */                        \
  static void upper_solve_##SUFFIX(const T *lu, long ld, T *x, long N) {                                      \
    for (long i = N - 1; i >= 0; i--) {                                                                       \
      T dot = 0;                                                                                              \
      _Pragma("omp simd reduction(+ : dot)")                                                                  \
      for (long j = i + 1; j < N; j++) dot += lu[i * ld + j] * x[j];                                          \
      x[i] = (x[i] - dot) / lu[i * ld + i];                                                                   \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* x <- K^{-T} x: K^T = U^T L^T P^T, so U^T y = x, L^T w = y (each solved unknown times its row of U or     \
   * L subtracted from the unknowns left), x = P w (the interchanges in reverse order) */                     \
  static void lu_solve_transposed_##SUFFIX(const T *lu, long ld, const int32_t *pivots, T *x, long N) {       \
    for (long i = 0; i < N; i++) {                                                                            \
      T xi = x[i] /= lu[i * ld + i];                                                                          \
      _Pragma("omp simd")                                                                                     \
      for (long j = i + 1; j < N; j++) x[j] -= lu[i * ld + j] * xi;                                           \
    }                                                                                                         \
    for (long i = N - 1; i > 0; i--) {                                                                        \
      T xi = x[i];                                                                                            \
      _Pragma("omp simd")                                                                                     \
      for (long j = 0; j < i; j++) x[j] -= lu[i * ld + j] * xi;                                               \
    }                                                                                                         \
    for (long i = N - 1; i >= 0; i--) {                                                                       \
      T swap = x[i];                                                                                          \
      x[i] = x[pivots[i]];                                                                                    \
      x[pivots[i]] = swap;                                                                                    \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* scratch: (B, ld), each batch row's pivot row; singular <- the first b * L + t whose K_t is singular,     \
   * B * L if none */                                                                                         \
  void bilinear_forward_##SUFFIX(const T *S, const T *u, const T *h0, T *factors, int32_t *pivots, T *states, \
                                 T *scratch, long *singular, long B, long L, long N, long ld, int threads) {  \
    long first_singular = B * L;                                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static) reduction(min : first_singular)")         \
    for (long b = 0; b < B; b++) {                                                                            \
      for (long t = 0; t < L; t++) {                                                                          \
        long m = b * L + t;                                                                                   \
        T *h = states + m * N, *lu = factors + m * N * ld;                                                    \
        const T *previous = t > 0 ? h - N : (h0 ? h0 + b * N : NULL), *ut = u + m * N;                        \
        for (long i = 0; i < N; i++) h[i] = ut[i] + (previous ? 2 * previous[i] : 0);                         \
        int singular_here = factor_##SUFFIX(S + m * N * N, lu, ld, pivots + m * N, scratch + b * ld, h, N);   \
        if (singular_here && m < first_singular) first_singular = m;                                          \
        upper_solve_##SUFFIX(lu, ld, h, N);                                                                   \
        if (previous)                                                                                         \
          for (long i = 0; i < N; i++) h[i] -= previous[i];                                                   \
      }                                                                                                       \
    }                                                                                                         \
    *singular = first_singular;                                                                               \
  }                                                                                                           \
                                                                                                              \
  /* scratch: (B, 2 N) zeros, each row the (r, g) of one batch row; grad_S NULL: not wanted */                \
  void bilinear_adjoint_##SUFFIX(const T *factors, const int32_t *pivots, const T *states, const T *h0,       \
                                 const T *grad_states, T *q, T *r0, T *grad_S, T *scratch, long B, long L,    \
                                 long N, long ld, int threads) {                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long b = 0; b < B; b++) {                                                                            \
      T *r = scratch + 2 * b * N, *g = r + N;                                                                 \
      for (long t = L - 1; t >= 0; t--) {                                                                     \
        long m = b * L + t;                                                                                   \
        const T *dh = grad_states + m * N;                                                                    \
        T *qt = q + m * N;                                                                                    \
        for (long i = 0; i < N; i++) qt[i] = g[i] = dh[i] - r[i];                                             \
        lu_solve_transposed_##SUFFIX(factors + m * N * ld, ld, pivots + m * N, qt, N);                        \
        for (long i = 0; i < N; i++) r[i] = g[i] - 2 * qt[i];                                                 \
        if (grad_S) { /* dS_t = q_t z_t^T, z_t = h_t + h_{t-1}; g is free again: it holds z_t */              \
          const T *h = states + m * N, *previous = t > 0 ? h - N : (h0 ? h0 + b * N : NULL);                  \
          for (long j = 0; j < N; j++) g[j] = h[j] + (previous ? previous[j] : 0);                            \
          T *dS = grad_S + m * N * N;                                                                         \
          for (long i = 0; i < N; i++) {                                                                      \
            T qi = qt[i];                                                                                     \
            _Pragma("omp simd")                                                                               \
            for (long j = 0; j < N; j++) dS[i * N + j] = qi * g[j];                                           \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
      for (long i = 0; i < N; i++) r0[b * N + i] = r[i];                                                      \
    }                                                                                                         \
  }

DEFINE_MATRIX_RECURRENCE(float, float32)
DEFINE_MATRIX_RECURRENCE(double, float64)
