/* Mamba's selective scan on the CPU, forward and backward, with the discretisation fused; the C twin of
 * ssm_lab.ops.selective_scan.selective_scan_ref (see ssm_lab/ops/cpu/selective_scan.py for the contract):
 *
 *   h_t = a_t * h_{t-1} + delta_t B_t u_t,   y_t = C_t . h_t + D u_t,
 *   a_t = exp(delta_t A), or 2 exp(delta_t A) - 1 for the signed scan.
 *
 * Layout (contiguous): u, delta, y, du, ddelta: (B, L, D); A, dA rows: (D, N); B, C: (B, L, N); D: (D,) or
 * NULL; h0, final, dh0: (B, D, N); checkpoints: (B, chunks, D, N), the state entering each chunk of `steps`
 * steps; dB, dC: (blocks, B, L, N), one slice per channel block; dA: (B, D, N) and dD: (B, D), per batch row.
 *
 * One job per (batch row, block of LANES channels), the OpenMP threads splitting the jobs. A job keeps its
 * (N, LANES) state in a local buffer, channels innermost, so that every step's work is vectorised over the
 * channels (no horizontal sums for y). LANES is wide because the backward's channel sums (dB_t, dC_t) are
 * horizontal sums, one per job, step and n: fewer, wider jobs make fewer of them (64 lanes against 16 took
 * the backward from 24 to 16 ms at B=16, L=1024, D=128, N=16, float32, 2 threads). The forward writes y
 * and the state at each chunk's start. The backward walks the chunks newest first, recomputes a chunk's
 * states and decays from its checkpoint, and runs the adjoint with carry = dLoss/dh_t through later steps
 * (dLoss/dh_final at t = L - 1):
 *
 *   g_t = C_t dy_t + carry,  carry <- a_t g_t,  dx_t = g_t s_t h_{t-1} (x = delta A, s = da/dx: a, or a + 1
 *   when signed),  d delta_t = sum_n dx_t A + u_t sum_n g_t B_t,  du_t = delta_t sum_n g_t B_t + D dy_t,
 *   dB_t = sum_d g_t delta_t u_t,  dC_t = sum_d dy_t h_t,  dA = sum_t dx_t delta_t,  dD = sum_t dy_t u_t,
 *   d initial_state = carry after step 0 = a_0 g_0.
 *
 * Every sum a job makes is over its own channels or time steps, written to its own slice: the caller
 * sums the slices (over channel blocks, over batch rows) in a fixed order, so results are deterministic.
 */
#include <stdlib.h>

#include "fastmath.h"

#define LANES 64

#define MIN(x, y) ((x) < (y) ? (x) : (y))

/* The decay a = scale e^x + offset (scale 1, offset 0; signed: 2, -1) and its slope da/dx = a - offset. */
#define DEFINE_SELECTIVE_SCAN(T, SUFFIX)                                                                      \
  /* a job's channels: A transposed to (N, LANES), zeros past the last channel */                             \
  static void load_rates_##SUFFIX(const T *A, long d0, long lanes, long N, T *rates) {                        \
    for (long n = 0; n < N; n++)                                                                              \
      for (long k = 0; k < LANES; k++) rates[n * LANES + k] = k < lanes ? A[(d0 + k) * N + n] : (T)0;         \
  }                                                                                                           \
                                                                                                              \
  /* a step's values of a job's channels, zeros past the last: the loops then run over all LANES lanes (a     \
   * trip count the compiler knows), the padded lanes holding states and gradients of 0 */                    \
  static void load_lanes_##SUFFIX(const T *x, long lanes, T *out) {                                           \
    for (long k = 0; k < LANES; k++) out[k] = k < lanes ? x[k] : (T)0;                                        \
  }                                                                                                           \
                                                                                                              \
  /* one step of a job: decays (N, LANES) <- a_t, after (N, LANES) <- a_t * before + delta_t u_t B_t (after   \
   * may be before) */                                                                                        \
  static void step_##SUFFIX(const T *rates, const T *delta, const T *drive, const T *Bt, long N, T scale,     \
                            T offset, const T *before, T *after, T *decays) {                                 \
    for (long n = 0; n < N; n++) {                                                                            \
      T *a = decays + n * LANES, b = Bt[n];                                                                   \
      const T *r = rates + n * LANES;                                                                         \
      _Pragma("omp simd")                                                                                     \
      for (long k = 0; k < LANES; k++) {                                                                      \
        a[k] = scale * exp_##SUFFIX(delta[k] * r[k]) + offset;                                                \
        after[n * LANES + k] = a[k] * before[n * LANES + k] + drive[k] * b;                                   \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  void selective_scan_forward_##SUFFIX(const T *u, const T *delta, const T *A, const T *Bm, const T *Cm,      \
                                       const T *Dv, const T *h0, T *y, T *final, T *checkpoints, long batch,  \
                                       long L, long D, long N, long steps, int is_signed, int threads) {      \
    long blocks = (D + LANES - 1) / LANES, chunks = (L + steps - 1) / steps;                                  \
    T scale = is_signed ? (T)2 : (T)1, offset = is_signed ? (T)-1 : (T)0;                                     \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long job = 0; job < batch * blocks; job++) {                                                         \
      long b = job / blocks, d0 = (job % blocks) * LANES, lanes = MIN(LANES, D - d0);                         \
      T *rates = malloc(3 * N * LANES * sizeof(T)), *state = rates + N * LANES, *decays = state + N * LANES;  \
      load_rates_##SUFFIX(A, d0, lanes, N, rates);                                                            \
      for (long n = 0; n < N; n++)                                                                            \
        for (long k = 0; k < LANES; k++)                                                                      \
          state[n * LANES + k] = h0 && k < lanes ? h0[(b * D + d0 + k) * N + n] : (T)0;                       \
      for (long t = 0; t < L; t++) {                                                                          \
        if (t % steps == 0) {                                                                                 \
          T *checkpoint = checkpoints + ((b * chunks + t / steps) * D + d0) * N;                              \
          for (long k = 0; k < lanes; k++)                                                                    \
            for (long n = 0; n < N; n++) checkpoint[k * N + n] = state[n * LANES + k];                        \
        }                                                                                                     \
        T dt[LANES], ut[LANES], drive[LANES], out[LANES];                                                     \
        load_lanes_##SUFFIX(delta + (b * L + t) * D + d0, lanes, dt);                                         \
        load_lanes_##SUFFIX(u + (b * L + t) * D + d0, lanes, ut);                                             \
        for (long k = 0; k < LANES; k++) {                                                                    \
          drive[k] = dt[k] * ut[k];                                                                           \
          out[k] = Dv && k < lanes ? Dv[d0 + k] * ut[k] : (T)0;                                               \
        }                                                                                                     \
        step_##SUFFIX(rates, dt, drive, Bm + (b * L + t) * N, N, scale, offset, state, state, decays);        \
        const T *Ct = Cm + (b * L + t) * N;                                                                   \
        for (long n = 0; n < N; n++) { /* y_t = C_t . h_t + D u_t */                                          \
          _Pragma("omp simd")                                                                                 \
          for (long k = 0; k < LANES; k++) out[k] += Ct[n] * state[n * LANES + k];                            \
        }                                                                                                     \
        for (long k = 0; k < lanes; k++) y[(b * L + t) * D + d0 + k] = out[k];                                \
      }                                                                                                       \
      for (long k = 0; k < lanes; k++)                                                                        \
        for (long n = 0; n < N; n++) final[(b * D + d0 + k) * N + n] = state[n * LANES + k];                  \
      free(rates);                                                                                            \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  void selective_scan_backward_##SUFFIX(const T *u, const T *delta, const T *A, const T *Bm, const T *Cm,     \
                                        const T *Dv, const T *checkpoints, const T *dy, const T *dfinal,      \
                                        T *du, T *ddelta, T *dA, T *dB, T *dC, T *dD, T *dh0, long batch,     \
                                        long L, long D, long N, long steps, int is_signed, int threads) {     \
    long blocks = (D + LANES - 1) / LANES, chunks = (L + steps - 1) / steps, size = N * LANES;                \
    T scale = is_signed ? (T)2 : (T)1, offset = is_signed ? (T)-1 : (T)0;                                     \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                         \
    for (long job = 0; job < batch * blocks; job++) {                                                         \
      long b = job / blocks, block = job % blocks, d0 = block * LANES, lanes = MIN(LANES, D - d0);            \
      /* rates, carry, dA sums, then steps + 1 states and steps decays of the current chunk */                \
      T *rates = calloc((3 + 2 * steps + 1) * size, sizeof(T));                                               \
      T *carry = rates + size, *grad_rates = carry + size, *states = grad_rates + size;                       \
      T *decays = states + (steps + 1) * size;                                                                \
      T grad_skip[LANES] = {0};                                                                               \
      load_rates_##SUFFIX(A, d0, lanes, N, rates);                                                            \
      for (long n = 0; n < N && dfinal; n++)                                                                  \
        for (long k = 0; k < lanes; k++) carry[n * LANES + k] = dfinal[(b * D + d0 + k) * N + n];             \
      for (long chunk = chunks - 1; chunk >= 0; chunk--) {                                                    \
        long start = chunk * steps, count = MIN(steps, L - start);                                            \
        const T *checkpoint = checkpoints + ((b * chunks + chunk) * D + d0) * N;                              \
        for (long n = 0; n < N; n++)                                                                          \
          for (long k = 0; k < LANES; k++) states[n * LANES + k] = k < lanes ? checkpoint[k * N + n] : (T)0;  \
        for (long j = 0; j < count; j++) {                                                                    \
          T dt[LANES], ut[LANES], drive[LANES];                                                               \
          load_lanes_##SUFFIX(delta + (b * L + start + j) * D + d0, lanes, dt);                               \
          load_lanes_##SUFFIX(u + (b * L + start + j) * D + d0, lanes, ut);                                   \
          for (long k = 0; k < LANES; k++) drive[k] = dt[k] * ut[k];                                          \
          step_##SUFFIX(rates, dt, drive, Bm + (b * L + start + j) * N, N, scale, offset, states + j * size,  \
                        states + (j + 1) * size, decays + j * size);                                          \
        }                                                                                                     \
        for (long j = count - 1; j >= 0; j--) {                                                               \
          long t = start + j;                                                                                 \
          const T *Bt = Bm + (b * L + t) * N, *Ct = Cm + (b * L + t) * N;                                     \
          T *dBt = dB + ((block * batch + b) * L + t) * N, *dCt = dC + ((block * batch + b) * L + t) * N;     \
          T dt[LANES], ut[LANES], dyt[LANES], drive[LANES], grad_delta[LANES] = {0}, grad_drive[LANES] = {0}; \
          load_lanes_##SUFFIX(delta + (b * L + t) * D + d0, lanes, dt);                                       \
          load_lanes_##SUFFIX(u + (b * L + t) * D + d0, lanes, ut);                                           \
          load_lanes_##SUFFIX(dy + (b * L + t) * D + d0, lanes, dyt);                                         \
          for (long k = 0; k < LANES; k++) drive[k] = dt[k] * ut[k];                                          \
          for (long n = 0; n < N; n++) {                                                                      \
            const T *r = rates + n * LANES, *before = states + j * size + n * LANES;                          \
            const T *after = before + size, *a = decays + j * size + n * LANES;                               \
            T *c = carry + n * LANES, *gr = grad_rates + n * LANES;                                           \
            T b_n = Bt[n], c_n = Ct[n], sum_B = 0, sum_C = 0;                                                 \
            _Pragma("omp simd reduction(+ : sum_B, sum_C)")                                                   \
            for (long k = 0; k < LANES; k++) {                                                                \
              T g = c_n * dyt[k] + c[k];                                                                      \
              T grad_exponent = g * (a[k] - offset) * before[k];                                              \
              grad_delta[k] += grad_exponent * r[k];                                                          \
              gr[k] += grad_exponent * dt[k];                                                                 \
              grad_drive[k] += g * b_n;                                                                       \
              sum_B += g * drive[k];                                                                          \
              sum_C += dyt[k] * after[k];                                                                     \
              c[k] = a[k] * g;                                                                                \
            }                                                                                                 \
            dBt[n] = sum_B;                                                                                   \
            dCt[n] = sum_C;                                                                                   \
          }                                                                                                   \
          for (long k = 0; k < lanes; k++) {                                                                  \
            ddelta[(b * L + t) * D + d0 + k] = grad_delta[k] + ut[k] * grad_drive[k];                         \
            du[(b * L + t) * D + d0 + k] = dt[k] * grad_drive[k] + (Dv ? Dv[d0 + k] * dyt[k] : (T)0);         \
            grad_skip[k] += dyt[k] * ut[k];                                                                   \
          }                                                                                                   \
        }                                                                                                     \
      }                                                                                                       \
      for (long k = 0; k < lanes; k++) {                                                                      \
        for (long n = 0; n < N; n++) {                                                                        \
          dA[(b * D + d0 + k) * N + n] = grad_rates[n * LANES + k];                                           \
          dh0[(b * D + d0 + k) * N + n] = carry[n * LANES + k];                                               \
        }                                                                                                     \
        dD[b * D + d0 + k] = grad_skip[k];                                                                    \
      }                                                                                                       \
      free(rates);                                                                                            \
    }                                                                                                         \
  }

DEFINE_SELECTIVE_SCAN(float, float32)
DEFINE_SELECTIVE_SCAN(double, float64)
