/* The diagonal linear recurrence h_t = a_t * h_{t-1} + b_t on the CPU, forward and adjoint; the C twin
 * of ssm_lab.ops.scan.linear_recurrence_ref (see ssm_lab/ops/cpu/linear_scan.py for the contract).
 *
 * Layout (channels last, contiguous): b, h, dh, db: (B, L, N); a: element (i, t, n) at
 * i * a_sb + t * a_st + n, with a_sb = 0 when a is shared by the batch and a_st = 0 when a is constant
 * over time; h0: (B, N) or NULL. Complex tensors are interleaved (re, im) pairs; strides and N count
 * complex elements.
 *
 * The time loop is sequential (each step needs the last) and the independent (row, channel) lanes are
 * the parallel work: one job per (row, block of LANES channels), the OpenMP threads splitting the jobs,
 * each job keeping its LANES states in registers and running over time with the lanes vectorised. One
 * pass reads a and b and writes h: the memory floor (the chunked torch scan reads and writes its
 * volumes several times).
 *
 * Adjoint, with g_t = dLoss/dh_t accumulated over all later steps (PyTorch's convention for complex
 * gradients: the gradient of z is dLoss/d conj(z)):
 *   g_t = dh_t + conj(a_{t+1}) g_{t+1},  db_t = g_t,  da_t = g_t conj(h_{t-1}) (h_{-1} = h0 or 0),
 *   dh0 = conj(a_0) g_0;
 * for a constant over time da is the sum over t, per row (da: (B, N), summed over rows by the caller
 * when a is shared by the batch), accumulated in double.
 */
#include <stddef.h>

#define LANES 16

#define MIN(x, y) ((x) < (y) ? (x) : (y))

#define DEFINE_REAL(T, SUFFIX)                                                                             \
  void scan_forward_##SUFFIX(const T *a, long a_sb, long a_st, const T *b, const T *h0, T *h, long B,   \
                             long L, long N, int threads) {                                             \
    long blocks = (N + LANES - 1) / LANES;                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                   \
    for (long job = 0; job < B * blocks; job++) {                                                       \
      long i = job / blocks, n0 = (job % blocks) * LANES, lanes = MIN(LANES, N - n0);                   \
      T s[LANES] = {0};                                                                                 \
      for (long k = 0; k < lanes; k++) s[k] = h0 ? h0[i * N + n0 + k] : (T)0;                           \
      const T *ai = a + i * a_sb + n0, *bi = b + i * L * N + n0;                                       \
      T *hi = h + i * L * N + n0;                                                                       \
      for (long t = 0; t < L; t++) {                                                                    \
        const T *at = ai + t * a_st, *bt = bi + t * N;                                                  \
        T *ht = hi + t * N;                                                                             \
        _Pragma("omp simd")                                                                             \
        for (long k = 0; k < lanes; k++) {                                                              \
          s[k] = at[k] * s[k] + bt[k];                                                                  \
          ht[k] = s[k];                                                                                 \
        }                                                                                               \
      }                                                                                                 \
    }                                                                                                   \
  }                                                                                                     \
                                                                                                        \
  void scan_adjoint_##SUFFIX(const T *a, long a_sb, long a_st, const T *h, const T *h0, const T *dh,    \
                             T *da, T *db, T *dh0, long B, long L, long N, int threads) {               \
    long blocks = (N + LANES - 1) / LANES;                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                   \
    for (long job = 0; job < B * blocks; job++) {                                                       \
      long i = job / blocks, n0 = (job % blocks) * LANES, lanes = MIN(LANES, N - n0);                   \
      T g[LANES] = {0}, zeros[LANES] = {0};                                                             \
      double sum[LANES] = {0};                                                                          \
      const T *ai = a + i * a_sb + n0, *hi = h + i * L * N + n0, *dhi = dh + i * L * N + n0;           \
      T *dbi = db + i * L * N + n0, *dai = da + (a_st ? i * L * N : i * N) + n0;                        \
      for (long t = L - 1; t >= 0; t--) {                                                               \
        const T *next = t + 1 < L ? ai + (t + 1) * a_st : zeros; /* a_{t+1} */                          \
        const T *previous = t > 0 ? hi + (t - 1) * N : (h0 ? h0 + i * N + n0 : zeros); /* h_{t-1} */    \
        _Pragma("omp simd")                                                                             \
        for (long k = 0; k < lanes; k++) { /* g_t = dh_t + a_{t+1} g_{t+1} */                           \
          g[k] = next[k] * g[k] + dhi[t * N + k];                                                       \
          dbi[t * N + k] = g[k];                                                                        \
        }                                                                                               \
        if (a_st) { /* da_t = g_t h_{t-1} */                                                            \
          _Pragma("omp simd")                                                                           \
          for (long k = 0; k < lanes; k++) dai[t * N + k] = g[k] * previous[k];                         \
        } else {                                                                                        \
          _Pragma("omp simd")                                                                           \
          for (long k = 0; k < lanes; k++) sum[k] += g[k] * previous[k];                                \
        }                                                                                               \
      }                                                                                                 \
      for (long k = 0; k < lanes; k++) {                                                                \
        if (!a_st) dai[k] = (T)sum[k];                                                                  \
        if (dh0) dh0[i * N + n0 + k] = ai[k] * g[k];                                                    \
      }                                                                                                 \
    }                                                                                                   \
  }

#define DEFINE_COMPLEX(T, SUFFIX)                                                                          \
  void scan_forward_##SUFFIX(const T *a, long a_sb, long a_st, const T *b, const T *h0, T *h, long B,   \
                             long L, long N, int threads) {                                             \
    long blocks = (N + LANES - 1) / LANES;                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                   \
    for (long job = 0; job < B * blocks; job++) {                                                       \
      long i = job / blocks, n0 = (job % blocks) * LANES, lanes = MIN(LANES, N - n0);                   \
      T re[LANES] = {0}, im[LANES] = {0};                                                               \
      for (long k = 0; k < lanes && h0; k++) {                                                          \
        re[k] = h0[2 * (i * N + n0 + k)];                                                               \
        im[k] = h0[2 * (i * N + n0 + k) + 1];                                                           \
      }                                                                                                 \
      const T *ai = a + 2 * (i * a_sb + n0), *bi = b + 2 * (i * L * N + n0);                           \
      T *hi = h + 2 * (i * L * N + n0);                                                                 \
      for (long t = 0; t < L; t++) {                                                                    \
        const T *at = ai + 2 * t * a_st, *bt = bi + 2 * t * N;                                          \
        T *ht = hi + 2 * t * N;                                                                         \
        _Pragma("omp simd")                                                                             \
        for (long k = 0; k < lanes; k++) {                                                              \
          T ar = at[2 * k], aim = at[2 * k + 1];                                                        \
          T r = ar * re[k] - aim * im[k] + bt[2 * k], m = ar * im[k] + aim * re[k] + bt[2 * k + 1];     \
          re[k] = r;                                                                                    \
          im[k] = m;                                                                                    \
          ht[2 * k] = r;                                                                                \
          ht[2 * k + 1] = m;                                                                            \
        }                                                                                               \
      }                                                                                                 \
    }                                                                                                   \
  }                                                                                                     \
                                                                                                        \
  void scan_adjoint_##SUFFIX(const T *a, long a_sb, long a_st, const T *h, const T *h0, const T *dh,    \
                             T *da, T *db, T *dh0, long B, long L, long N, int threads) {               \
    long blocks = (N + LANES - 1) / LANES;                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                   \
    for (long job = 0; job < B * blocks; job++) {                                                       \
      long i = job / blocks, n0 = (job % blocks) * LANES, lanes = MIN(LANES, N - n0);                   \
      T gr[LANES] = {0}, gi[LANES] = {0}, zeros[2 * LANES] = {0};                                       \
      double sr[LANES] = {0}, si[LANES] = {0};                                                          \
      const T *ai = a + 2 * (i * a_sb + n0), *hi = h + 2 * (i * L * N + n0);                           \
      const T *dhi = dh + 2 * (i * L * N + n0);                                                         \
      T *dbi = db + 2 * (i * L * N + n0), *dai = da + 2 * ((a_st ? i * L * N : i * N) + n0);            \
      for (long t = L - 1; t >= 0; t--) {                                                               \
        const T *next = t + 1 < L ? ai + 2 * (t + 1) * a_st : zeros; /* a_{t+1} */                      \
        const T *previous = t > 0 ? hi + 2 * (t - 1) * N : (h0 ? h0 + 2 * (i * N + n0) : zeros);        \
        const T *dht = dhi + 2 * t * N;                                                                 \
        T *dbt = dbi + 2 * t * N, *dat = dai + 2 * t * N;                                               \
        _Pragma("omp simd")                                                                             \
        for (long k = 0; k < lanes; k++) { /* g_t = dh_t + conj(a_{t+1}) g_{t+1} */                     \
          T r = dht[2 * k] + next[2 * k] * gr[k] + next[2 * k + 1] * gi[k];                             \
          T m = dht[2 * k + 1] + next[2 * k] * gi[k] - next[2 * k + 1] * gr[k];                         \
          gr[k] = r;                                                                                    \
          gi[k] = m;                                                                                    \
          dbt[2 * k] = r;                                                                               \
          dbt[2 * k + 1] = m;                                                                           \
        }                                                                                               \
        if (a_st) { /* da_t = g_t conj(h_{t-1}) */                                                      \
          _Pragma("omp simd")                                                                           \
          for (long k = 0; k < lanes; k++) {                                                            \
            dat[2 * k] = gr[k] * previous[2 * k] + gi[k] * previous[2 * k + 1];                         \
            dat[2 * k + 1] = gi[k] * previous[2 * k] - gr[k] * previous[2 * k + 1];                     \
          }                                                                                             \
        } else {                                                                                        \
          _Pragma("omp simd")                                                                           \
          for (long k = 0; k < lanes; k++) {                                                            \
            sr[k] += gr[k] * previous[2 * k] + gi[k] * previous[2 * k + 1];                             \
            si[k] += gi[k] * previous[2 * k] - gr[k] * previous[2 * k + 1];                             \
          }                                                                                             \
        }                                                                                               \
      }                                                                                                 \
      for (long k = 0; k < lanes; k++) {                                                                \
        if (!a_st) {                                                                                    \
          dai[2 * k] = (T)sr[k];                                                                        \
          dai[2 * k + 1] = (T)si[k];                                                                    \
        }                                                                                               \
        if (dh0) { /* conj(a_0) g_0 */                                                                  \
          dh0[2 * (i * N + n0 + k)] = ai[2 * k] * gr[k] + ai[2 * k + 1] * gi[k];                        \
          dh0[2 * (i * N + n0 + k) + 1] = ai[2 * k] * gi[k] - ai[2 * k + 1] * gr[k];                    \
        }                                                                                               \
      }                                                                                                 \
    }                                                                                                   \
  }

DEFINE_REAL(float, float32)
DEFINE_REAL(double, float64)
DEFINE_COMPLEX(float, complex64)
DEFINE_COMPLEX(double, complex128)
