/* The Linear CDE's exact solver on the CPU without forming any matrix exponential: every step applies the
 * flow of h' = M_t h + v_t over unit time, h_t = e^{M_t} h_{t-1} + phi_1(M_t) v_t, as the action of the
 * exponential on the state (Al-Mohy & Higham 2011, "Computing the action of the matrix exponential"): with
 * sigma = 2^-s (s from ||M_t||_1, one per step) the flow over sigma is applied 2^s times, each time as the
 * degree-m Taylor polynomial of the augmented exponential on [h; 1] evaluated by Horner in matrix-vector
 * products: r_m = u, r_k = u + sigma / (k + 1) (M r_{k+1} + v), next u = r_0. That is m 2^s products of
 * N^2 per step where forming e^{M_t} costs ~(5 + s) products of N^3. The reference twin is
 * ssm_lab.ops.matrix_scan.affine_exp followed by matrix_recurrence_ref; ssm_lab.ops.exp_action calls these.
 *
 * one_norms: the 1-norm (largest column sum of |.|) of each N x N matrix, to choose s.
 * exp_action_forward: M (B, L, N, N) row-major, v, states (B, L, N), h0 (B, N) or NULL, squarings (B, L)
 *   int32, all contiguous.
 * exp_action_backward: the adjoint, recomputing each step's substeps and Horner terms from h_{t-1} (nothing
 *   but the states is kept from the forward); writes dM (B, L, N, N) (or nothing when NULL), dv, dh0.
 * Rows of the batch are independent: OpenMP splits them.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DEFINE_EXP_ACTION(T, SUFFIX)                                                                          \
  void one_norms_##SUFFIX(const T *MT, T *norms, long count, long N, int threads) {                           \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long c = 0; c < count; c++) {                                                                        \
      T largest = 0;                                                                                          \
      for (long j = 0; j < N; j++) { /* row j of M^T is column j of M */                                      \
        const T *row = MT + (c * N + j) * N;                                                                  \
        T column = 0;                                                                                         \
        _Pragma("omp simd reduction(+ : column)")                                                             \
        for (long i = 0; i < N; i++) column += row[i] < 0 ? -row[i] : row[i];                                 \
        largest = column > largest ? column : largest;                                                        \
      }                                                                                                       \
      norms[c] = largest;                                                                                     \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* acc += sum_j weights[j * stride] rows[j] for count contiguous rows of N, eight rows per pass over acc (a \
   * pass per row spends its time loading and storing acc); a last group of fewer has zero weights added */   \
  static inline void accumulate_rows_##SUFFIX(const T *rows, const T *weights, long stride, long count,       \
                                              T *acc, long N) {                                               \
    for (long j = 0; j < count; j += 8) {                                                                     \
      const T *r[8];                                                                                          \
      T w[8];                                                                                                 \
      for (int q = 0; q < 8; q++) {                                                                           \
        int real = j + q < count;                                                                             \
        r[q] = rows + (real ? j + q : 0) * N;                                                                 \
        w[q] = real ? weights[(j + q) * stride] : 0;                                                          \
      }                                                                                                       \
      _Pragma("omp simd")                                                                                     \
      for (long i = 0; i < N; i++)                                                                            \
        acc[i] += ((r[0][i] * w[0] + r[1][i] * w[1]) + (r[2][i] * w[2] + r[3][i] * w[3])) +                   \
                  ((r[4][i] * w[4] + r[5][i] * w[5]) + (r[6][i] * w[6] + r[7][i] * w[7]));                    \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* out <- the degree-m Taylor polynomial of the flow over time sigma from u, by Horner:                     \
   * r_m = u, r_k = u + sigma / (k + 1) (M r_{k+1} + v), out = r_0, with M r = sum_j r_j (row j of M^T);      \
   * with store, r_1 .. r_m are kept there for the backward (r_{k+1} at store + k N). tmp: N scratch; out     \
   * must not alias u. */                                                                                     \
  static void flow_##SUFFIX(const T *MT, const T *v, T sigma, int degree, const T *u, T *out, T *tmp,         \
                            T *store, long N) {                                                               \
    for (long i = 0; i < N; i++) out[i] = u[i];                                                               \
    if (store)                                                                                                \
      for (long i = 0; i < N; i++) store[(degree - 1L) * N + i] = u[i];                                       \
    for (int k = degree - 1; k >= 0; k--) {                                                                   \
      for (long i = 0; i < N; i++) tmp[i] = v[i];                                                             \
      accumulate_rows_##SUFFIX(MT, out, 1, N, tmp, N);                                                        \
      T c = sigma / (T)(k + 1);                                                                               \
      for (long i = 0; i < N; i++) out[i] = u[i] + c * tmp[i];                                                \
      if (store && k > 0)                                                                                     \
        for (long i = 0; i < N; i++) store[(k - 1L) * N + i] = out[i];                                        \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  void exp_action_forward_##SUFFIX(const T *MT, const T *v, const T *h0, const int32_t *squarings, T *states, \
                                   long B, long L, long N, int degree, int threads) {                         \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long b = 0; b < B; b++) {                                                                            \
      T *scratch = calloc(4 * N, sizeof(T)), *zero = scratch, *ping = zero + N, *pong = ping + N;             \
      T *tmp = pong + N;                                                                                      \
      for (long t = 0; t < L; t++) {                                                                          \
        long at = b * L + t, substeps = 1L << squarings[at];                                                  \
        const T *mt = MT + at * N * N, *vt = v + at * N;                                                      \
        const T *u = t > 0 ? states + (at - 1) * N : (h0 ? h0 + b * N : zero);                                \
        T sigma = ldexp(1.0, -squarings[at]);                                                                 \
        for (long j = 0; j < substeps; j++) {                                                                 \
          T *out = j == substeps - 1 ? states + at * N : (j % 2 ? pong : ping);                               \
          flow_##SUFFIX(mt, vt, sigma, degree, u, out, tmp, NULL, N);                                         \
          u = out;                                                                                            \
        }                                                                                                     \
      }                                                                                                       \
      free(scratch);                                                                                          \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* Reverse sweep; carry = dLoss/dh_{t-1} through step t. Per step: the substeps are recomputed from         \
   * h_{t-1}, keeping every Horner term (substep j's r_{k+1} at row j m + k of store), then differentiated    \
   * from the last: with rho_0 = dLoss/dr_0 and p_k = sigma / (k + 1) rho_k, rho_{k+1} = M^T p_k (rows of M,  \
   * a transposed copy of M^T), dLoss/du = sum_k rho_k + rho_m and dv += sum_k p_k (p_k kept at row j m + k   \
   * of p). Last, in one pass over the step's dM^T, dM^T = sum_{j,k} r_{k+1} p_k^T: a rank-(2^s m) update.    \
   * grad_MT (dLoss/dM, transposed like MT) and grad_h0 may be NULL. */                                       \
  void exp_action_backward_##SUFFIX(const T *MT, const T *v, const T *h0, const int32_t *squarings,           \
                                    const T *states, const T *grad_states, T *grad_MT, T *grad_v, T *grad_h0, \
                                    long B, long L, long N, int degree, int max_substeps, int threads) {      \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long b = 0; b < B; b++) {                                                                            \
      long terms = (long)max_substeps * degree * N;                                                           \
      T *store = calloc(2 * terms + 7 * N + N * N, sizeof(T)), *p = store + terms, *rho = p + terms;          \
      T *carry = rho + N, *upstream = carry + N, *tmp = upstream + N, *zero = tmp + N, *ping = zero + N;      \
      T *pong = ping + N, *m = pong + N;                                                                      \
      for (long t = L - 1; t >= 0; t--) {                                                                     \
        long at = b * L + t, substeps = 1L << squarings[at];                                                  \
        const T *mt = MT + at * N * N, *vt = v + at * N;                                                      \
        const T *u = t > 0 ? states + (at - 1) * N : (h0 ? h0 + b * N : zero);                                \
        T sigma = ldexp(1.0, -squarings[at]), *dv = grad_v + at * N;                                          \
        T *dmt = grad_MT ? grad_MT + at * N * N : NULL;                                                       \
        for (long i = 0; i < N; i++) {                                                                        \
          upstream[i] = grad_states[at * N + i] + carry[i];                                                   \
          dv[i] = 0;                                                                                          \
          for (long j = 0; j < N; j++) m[i * N + j] = mt[j * N + i];                                          \
        }                                                                                                     \
        for (long j = 0; j < substeps; j++) {                                                                 \
          T *out = j % 2 ? pong : ping;                                                                       \
          flow_##SUFFIX(mt, vt, sigma, degree, u, out, tmp, store + j * degree * N, N);                       \
          u = out;                                                                                            \
        }                                                                                                     \
        for (long j = substeps - 1; j >= 0; j--) {                                                            \
          for (long i = 0; i < N; i++) {                                                                      \
            rho[i] = upstream[i];                                                                             \
            carry[i] = 0;                                                                                     \
          }                                                                                                   \
          for (int k = 0; k < degree; k++) {                                                                  \
            T c = sigma / (T)(k + 1), *pk = p + (j * degree + k) * N;                                         \
            for (long i = 0; i < N; i++) {                                                                    \
              carry[i] += rho[i];                                                                             \
              pk[i] = c * rho[i];                                                                             \
              dv[i] += pk[i];                                                                                 \
              rho[i] = 0;                                                                                     \
            }                                                                                                 \
            accumulate_rows_##SUFFIX(m, pk, 1, N, rho, N);                                                    \
          }                                                                                                   \
          for (long i = 0; i < N; i++) upstream[i] = carry[i] + rho[i];                                       \
        }                                                                                                     \
        if (dmt) { /* row i of dM^T = sum over the step's terms q of r_{q, i} p_q */                          \
          memset(dmt, 0, N * N * sizeof(T));                                                                  \
          for (long i = 0; i < N; i++)                                                                        \
            accumulate_rows_##SUFFIX(p, store + i, N, substeps * degree, dmt + i * N, N);                     \
        }                                                                                                     \
        for (long i = 0; i < N; i++) carry[i] = upstream[i];                                                  \
      }                                                                                                       \
      if (grad_h0)                                                                                            \
        for (long i = 0; i < N; i++) grad_h0[b * N + i] = carry[i];                                           \
      free(store);                                                                                            \
    }                                                                                                         \
  }

DEFINE_EXP_ACTION(float, float32)
DEFINE_EXP_ACTION(double, float64)
