// The CPU kernels, written once and compiled once per instruction set (cmake/isa.cmake):
// generic (x86-64 baseline, SSE2), avx2 (AVX2 + FMA) and avx512 (AVX-512 F/DQ/BW/VL).
//
// SIMD comes from GCC/Clang vector extensions sized to the ISA's register width, so the same
// source becomes SSE2, AVX2 or AVX-512 code. Everything here has internal linkage except the
// kernel table; only C headers and plain functions are used, so no inline function compiled
// with AVX-512 flags can be merged by the linker into code that runs on other CPUs.
//
// Kernels assume valid arguments (csrc/ops checks them) and never throw.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

#ifndef ATTNKIT_ISA_NAMESPACE
#error "kernels.cpp is compiled once per ISA with -DATTNKIT_ISA_NAMESPACE=<isa> (see cmake/isa.cmake)"
#endif

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE {
namespace {

// ---------------------------------------------------------------------------------------------
// Vectors
// ATTNKIT_AVX512_LAYOUT (CMake option ATTNKIT_TEST_AVX512_LAYOUT) gives every path the AVX-512
// path's vector width, micro-tile and block sizes, so machines without AVX-512 test that logic.
#if defined(__AVX512F__) || defined(ATTNKIT_AVX512_LAYOUT)
constexpr int kVecBytes = 64;
constexpr int kMR = 8;  // rows of a micro-tile: 8 x 2 zmm accumulators
#elif defined(__AVX2__)
constexpr int kVecBytes = 32;
constexpr int kMR = 6;  // 6 x 2 ymm accumulators + 2 B vectors + 1 broadcast = 15 of 16 registers
#else
constexpr int kVecBytes = 16;
constexpr int kMR = 6;
#endif
constexpr int kNV = 2;  // vectors per micro-tile row

typedef float vf __attribute__((vector_size(kVecBytes)));
typedef double vd __attribute__((vector_size(kVecBytes)));
typedef int32_t vi32 __attribute__((vector_size(kVecBytes)));

template <class T> struct Simd;
template <> struct Simd<float> { typedef vf V; static constexpr int W = kVecBytes / 4; };
template <> struct Simd<double> { typedef vd V; static constexpr int W = kVecBytes / 8; };

template <class T> inline typename Simd<T>::V vload(const T* p) {
  typename Simd<T>::V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T> inline void vstore(T* p, typename Simd<T>::V v) { std::memcpy(p, &v, sizeof v); }
// x - 0 (not 0 + x, which is not an identity for -0.0) lets the compiler emit a plain broadcast.
template <class T> inline typename Simd<T>::V vset(T x) { return x - typename Simd<T>::V{}; }

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

// 2^x for a float vector: 2^n * p(f), n = round(x), f in [-1/2, 1/2], p the degree-7 Taylor
// polynomial of 2^f (relative error below 1e-8). x < -126 (and -inf) gives 0; NaN stays NaN.
inline vf exp2v(vf x) {
  const vf lo = vset(-126.0f), hi = vset(128.0f);
  vf xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vf magic = vset(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  vf n = (xc + magic) - magic;
  vf f = xc - n;
  vf p = vset(1.52527338040598e-05f);
  p = p * f + 1.54035303933816e-04f;
  p = p * f + 1.33335581464284e-03f;
  p = p * f + 9.61812910762848e-03f;
  p = p * f + 5.55041086648216e-02f;
  p = p * f + 2.40226506959101e-01f;
  p = p * f + 6.93147180559945e-01f;
  p = p * f + 1.0f;
  vi32 e = (__builtin_convertvector(n, vi32) + 127) << 23;
  vf r = p * (vf)e;
  return x < lo ? vf{} : r;
}

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < Simd<float>::W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < Simd<float>::W; ++i) s += v[i];
  return s;
}

// ---------------------------------------------------------------------------------------------
// Micro-kernel: C[MR x NR] (+)= A[MR x K] * B[K x NR], NR = kNV * W, MR <= kMR.
// A is column-major (element (r, k) at a[k*lda + r]: packed panels, P^T tiles) or row-major
// (a[r*lda + k]: K rows read in place); B rows are NR contiguous elements, ldb apart.
template <class T, int MR, bool ACOL, bool ACC>
inline void micro(int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  V acc[MR][kNV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = ACC ? vload(c + r * ldc + v * W) : V{};
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    V b0 = vload(b + k * ldb), b1 = vload(b + k * ldb + W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      V ar = vset(ACOL ? a[k * lda + r] : a[r * lda + k]);
      acc[r][0] += ar * b0;
      acc[r][1] += ar * b1;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) vstore(c + r * ldc + v * W, acc[r][v]);
}

// The same for a run-time row count 1..kMR.
template <class T, bool ACOL, bool ACC>
inline void micro_rows(int rows, int64_t K, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
  switch (rows) {
#define ATTNKIT_MICRO_CASE(n) \
    case n: if constexpr (n <= kMR) micro<T, n, ACOL, ACC>(K, a, lda, b, ldb, c, ldc); break;
    ATTNKIT_MICRO_CASE(1) ATTNKIT_MICRO_CASE(2) ATTNKIT_MICRO_CASE(3) ATTNKIT_MICRO_CASE(4)
    ATTNKIT_MICRO_CASE(5) ATTNKIT_MICRO_CASE(6) ATTNKIT_MICRO_CASE(7) ATTNKIT_MICRO_CASE(8)
#undef ATTNKIT_MICRO_CASE
    default: break;
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise math
// erfc(z) for z >= 0 by the Chebyshev-fitted formula of Numerical Recipes (erfcc), relative
// error below 1.2e-7 everywhere; exp through exp2v.
inline vf erfc_nonneg(vf z) {
  vf t = 1.0f / (1.0f + 0.5f * z);
  vf poly = vset(0.17087277f);
  poly = poly * t - 0.82215223f;
  poly = poly * t + 1.48851587f;
  poly = poly * t - 1.13520398f;
  poly = poly * t + 0.27886807f;
  poly = poly * t - 0.18628806f;
  poly = poly * t + 0.09678418f;
  poly = poly * t + 0.37409196f;
  poly = poly * t + 1.00002368f;
  poly = poly * t - 1.26551223f;
  return t * exp2v((poly - z * z) * static_cast<float>(kLog2e));
}

inline vf act_vec(vf x, int act) {
  switch (act) {
    case 1: return x < 0.0f ? vf{} : x;  // NaN stays NaN
    case 2: {  // x * Phi(x) = x * erfc(-x / sqrt 2) / 2
      vf ax = x < 0.0f ? -x : x;
      vf half_erfc = 0.5f * erfc_nonneg(ax * 0.70710678118654752f);
      return x * (x < 0.0f ? half_erfc : 1.0f - half_erfc);
    }
    case 3: {  // 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
      vf u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return x / (1.0f + exp2v(-2.0f * static_cast<float>(kLog2e) * u));
    }
    default: return x;
  }
}
inline float act_scalar(float x, int act) {
  vf v = vset(x);
  return act_vec(v, act)[0];
}
inline double act_scalar(double x, int act) {
  switch (act) {
    case 1: return x < 0.0 ? 0.0 : x;
    case 2: return 0.5 * x * ::erfc(-x * 0.70710678118654752);
    case 3: return 0.5 * x * (1.0 + ::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    default: return x;
  }
}

void activation_f32(const float* x, float* y, int64_t n, int act) {
  constexpr int W = Simd<float>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) vstore(y + i, act_vec(vload(x + i), act));
  for (; i < n; ++i) y[i] = act_scalar(x[i], act);
}
void activation_f64(const double* x, double* y, int64_t n, int act) {
  for (int64_t i = 0; i < n; ++i) y[i] = act_scalar(x[i], act);
}

void softmax_row_f32(float* x, int64_t n) {
  constexpr int W = Simd<float>::W;
  const float ninf = -INFINITY;
  vf mv = vset(ninf);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf v = vload(x + i);
    mv = v > mv ? v : mv;
    mv = v != v ? v : mv;  // keep NaN
  }
  float m = hmax(mv);
  for (int64_t j = 0; j < W; ++j) if (mv[j] != mv[j]) m = mv[j];
  for (; i < n; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
  if (m == ninf) {
    for (int64_t j = 0; j < n; ++j) x[j] = 0.0f;
    return;
  }
  const float l2e = static_cast<float>(kLog2e);
  vf sv = vf{};
  for (i = 0; i + W <= n; i += W) {
    vf p = exp2v((vload(x + i) - m) * l2e);
    vstore(x + i, p);
    sv += p;
  }
  float s = hsum(sv);
  for (; i < n; ++i) {
    float p = exp2v(vset((x[i] - m) * l2e))[0];
    x[i] = p;
    s += p;
  }
  float inv = 1.0f / s;
  for (i = 0; i + W <= n; i += W) vstore(x + i, vload(x + i) * inv);
  for (; i < n; ++i) x[i] *= inv;
}
void softmax_row_f64(double* x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
  if (m == -INFINITY) {
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0;
    return;
  }
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] = ::exp(x[i] - m));
  double inv = 1.0 / s;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

template <class T>
void layer_norm_row(const T* x, int64_t n, const T* w, const T* b, double eps, T* y) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  V sv = V{};
  int64_t i = 0;
  for (; i + W <= n; i += W) sv += vload(x + i);
  T s = 0;
  for (int j = 0; j < W; ++j) s += sv[j];
  for (; i < n; ++i) s += x[i];
  const T mean = s / static_cast<T>(n);
  V qv = V{};
  for (i = 0; i + W <= n; i += W) {
    V d = vload(x + i) - mean;
    qv += d * d;
  }
  T q = 0;
  for (int j = 0; j < W; ++j) q += qv[j];
  for (; i < n; ++i) q += (x[i] - mean) * (x[i] - mean);
  const T rstd = static_cast<T>(1.0 / std::sqrt(static_cast<double>(q) / static_cast<double>(n) + eps));
  for (i = 0; i + W <= n; i += W) {
    V v = (vload(x + i) - mean) * rstd;
    if (w) v *= vload(w + i);
    if (b) v += vload(b + i);
    vstore(y + i, v);
  }
  for (; i < n; ++i) {
    T v = (x[i] - mean) * rstd;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}
void layer_norm_row_f32(const float* x, int64_t n, const float* w, const float* b, double eps, float* y) {
  layer_norm_row<float>(x, n, w, b, eps, y);
}
void layer_norm_row_f64(const double* x, int64_t n, const double* w, const double* b, double eps, double* y) {
  layer_norm_row<double>(x, n, w, b, eps, y);
}

// ---------------------------------------------------------------------------------------------
// Per-thread workspaces: one block of `elems` elements per thread, 64-byte aligned.
struct Workspace {
  char* base = nullptr;
  size_t stride = 0;  // bytes per thread
  bool alloc(int nthreads, size_t bytes) {
    stride = (bytes + 63) / 64 * 64 + 64;
    base = static_cast<char*>(std::aligned_alloc(64, stride * static_cast<size_t>(nthreads)));
    return base != nullptr;
  }
  template <class T> T* get(int tid) const { return reinterpret_cast<T*>(base + stride * static_cast<size_t>(tid)); }
  ~Workspace() { std::free(base); }
};

// Streaming K and V row by row (decode), ask for the row kPrefetchRows ahead: one core keeps
// more cache misses in flight than the hardware prefetcher alone gives it. (A prefetch past
// the array's end is harmless: prefetches never fault.)
constexpr int64_t kPrefetchRows = 16;
template <class T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}

// ---------------------------------------------------------------------------------------------
// GEMM (float32): out(M, N) = act(A(M, K) @ W(N, K)^T + bias). Blocked as in GotoBLAS:
// W^T is packed once per call into KC x NR panels (shared by all threads); each work item packs
// an MC x KC block of A and sweeps its panels, a KC x NR panel of W^T staying in L1 while the
// A block streams from L2. For a handful of rows (M <= kGemvRows) the product is a set of dot
// products that read W once, in place.
constexpr int64_t kGemmMC = 192, kGemmKC = 512;
constexpr int64_t kGemvRows = 4;

struct GemmRun {
  const GemmProblem* p;
  int64_t nmb, nnb, npan, pan_per_nb, nkc;
  float* bpack;  // [nkc][npan][klen][NR]
  Workspace ws;
  ~GemmRun() { std::free(bpack); }
};

inline int64_t gemm_row_offset(const GemmProblem& p, int64_t m) {
  int64_t off = 0;
  for (int d = p.nrow_dims - 1; d >= 0; --d) {
    int64_t s = p.row_shape[d];
    off += (m % s) * p.row_strides[d];
    m /= s;
  }
  return off;
}

void gemm_epilogue(const GemmProblem& p, float* c, int64_t rows, int64_t cols, int64_t n0) {
  constexpr int W = Simd<float>::W;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = c + r * p.N;
    int64_t j = 0;
    if (p.bias_s == 1 || !p.bias) {
      for (; j + W <= cols; j += W) {
        vf v = vload(row + j);
        if (p.bias) v += vload(p.bias + n0 + j);
        vstore(row + j, act_vec(v, p.act));
      }
    }
    for (; j < cols; ++j) {
      float v = row[j] + (p.bias ? p.bias[(n0 + j) * p.bias_s] : 0.0f);
      row[j] = act_scalar(v, p.act);
    }
  }
}

void gemm_pack_task(void* ctx, int64_t begin, int64_t end, int) {
  GemmRun& run = *static_cast<GemmRun*>(ctx);
  const GemmProblem& p = *run.p;
  constexpr int NR = kNV * Simd<float>::W;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t kc = it / run.npan, pn = it % run.npan;
    const int64_t k0 = kc * kGemmKC, klen = imin(kGemmKC, p.K - k0);
    float* dst = run.bpack + kc * kGemmKC * run.npan * NR + pn * klen * NR;
    for (int jj = 0; jj < NR; ++jj) {
      const int64_t n = pn * NR + jj;
      if (n < p.N) {
        const float* wr = p.w + n * p.w_n + k0 * p.w_k;
        for (int64_t kk = 0; kk < klen; ++kk) dst[kk * NR + jj] = wr[kk * p.w_k];
      } else {
        for (int64_t kk = 0; kk < klen; ++kk) dst[kk * NR + jj] = 0.0f;
      }
    }
  }
}

void gemm_task(void* ctx, int64_t begin, int64_t end, int tid) {
  GemmRun& run = *static_cast<GemmRun*>(ctx);
  const GemmProblem& p = *run.p;
  constexpr int NR = kNV * Simd<float>::W;
  float* Ap = run.ws.get<float>(tid);
  float* tile = Ap + kGemmMC * kGemmKC;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t mb = it / run.nnb, nb = it % run.nnb;
    const int64_t m0 = mb * kGemmMC, mlen = imin(kGemmMC, p.M - m0);
    const int64_t pn0 = nb * run.pan_per_nb, pn1 = imin(run.npan, pn0 + run.pan_per_nb);
    const int64_t nip = ceil_div(mlen, kMR);
    for (int64_t kc = 0; kc < run.nkc; ++kc) {
      const int64_t k0 = kc * kGemmKC, klen = imin(kGemmKC, p.K - k0);
      const bool first = kc == 0, last = kc == run.nkc - 1;
      for (int64_t ip = 0; ip < nip; ++ip) {  // pack A panels: Ap[ip][k][kMR]
        float* dst = Ap + ip * klen * kMR;
        for (int r = 0; r < kMR; ++r) {
          const int64_t m = m0 + ip * kMR + r;
          if (m < m0 + mlen) {
            const float* ar = p.a + gemm_row_offset(p, m) + k0 * p.a_k;
            for (int64_t kk = 0; kk < klen; ++kk) dst[kk * kMR + r] = ar[kk * p.a_k];
          } else {
            for (int64_t kk = 0; kk < klen; ++kk) dst[kk * kMR + r] = 0.0f;
          }
        }
      }
      const float* bk = run.bpack + kc * kGemmKC * run.npan * NR;
      for (int64_t pn = pn0; pn < pn1; ++pn) {
        const int64_t cols = imin(NR, p.N - pn * NR);
        const float* b = bk + pn * klen * NR;
        for (int64_t ip = 0; ip < nip; ++ip) {
          const int64_t rows = imin(kMR, mlen - ip * kMR);
          float* c = p.out + (m0 + ip * kMR) * p.N + pn * NR;
          const float* a = Ap + ip * klen * kMR;
          if (rows == kMR && cols == NR) {
            if (first) micro<float, kMR, true, false>(klen, a, kMR, b, NR, c, p.N);
            else micro<float, kMR, true, true>(klen, a, kMR, b, NR, c, p.N);
          } else {
            if (!first)
              for (int64_t r = 0; r < rows; ++r) std::memcpy(tile + r * NR, c + r * p.N, cols * sizeof(float));
            if (first) micro<float, kMR, true, false>(klen, a, kMR, b, NR, tile, NR);
            else micro<float, kMR, true, true>(klen, a, kMR, b, NR, tile, NR);
            for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * p.N, tile + r * NR, cols * sizeof(float));
          }
          if (last) gemm_epilogue(p, c, rows, cols, pn * NR);
        }
      }
    }
  }
}

// Few rows: out[m][n] = dot(a_m, w_n), W read once and in place (rows of W contiguous).
void gemv_task(void* ctx, int64_t begin, int64_t end, int) {
  const GemmProblem& p = *static_cast<const GemmRun*>(ctx)->p;
  constexpr int W = Simd<float>::W;
  const float* rows[kGemvRows];
  for (int64_t m = 0; m < p.M; ++m) rows[m] = p.a + gemm_row_offset(p, m);
  for (int64_t n = begin; n < end; ++n) {
    const float* wr = p.w + n * p.w_n;
    prefetch_row(wr + kPrefetchRows * p.w_n, p.K);
    vf acc[kGemvRows];
    for (int64_t m = 0; m < p.M; ++m) acc[m] = vf{};
    int64_t kk = 0;
    for (; kk + W <= p.K; kk += W) {
      const vf wv = vload(wr + kk);
      for (int64_t m = 0; m < p.M; ++m) acc[m] += vload(rows[m] + kk) * wv;
    }
    for (int64_t m = 0; m < p.M; ++m) {
      float s = hsum(acc[m]);
      for (int64_t t = kk; t < p.K; ++t) s += rows[m][t] * wr[t];
      if (p.bias) s += p.bias[n * p.bias_s];
      p.out[m * p.N + n] = act_scalar(s, p.act);
    }
  }
}

int gemm_f32(const GemmProblem& p) {
  if (p.M == 0 || p.N == 0) return 0;
  constexpr int NR = kNV * Simd<float>::W;
  GemmRun run;
  run.p = &p;
  run.bpack = nullptr;
  if (p.M <= kGemvRows && p.a_k == 1 && p.w_k == 1) {
    parallel_for(p.N, 64, gemv_task, &run, num_threads());
    return 0;
  }
  const int nt = num_threads();
  run.nkc = imax(1, ceil_div(p.K, kGemmKC));
  run.npan = ceil_div(p.N, NR);
  run.nmb = ceil_div(p.M, kGemmMC);
  run.nnb = imin(run.npan, imax(1, ceil_div(2 * nt, run.nmb)));  // split N only when M is short
  run.pan_per_nb = ceil_div(run.npan, run.nnb);
  run.nnb = ceil_div(run.npan, run.pan_per_nb);
  run.bpack = static_cast<float*>(std::malloc(sizeof(float) * static_cast<size_t>(run.nkc * kGemmKC * run.npan * NR)));
  if (!run.bpack) return 1;
  if (!run.ws.alloc(nt, sizeof(float) * (kGemmMC * kGemmKC + kMR * NR))) return 1;
  parallel_for(run.nkc * run.npan, 4, gemm_pack_task, &run, nt);
  parallel_for(run.nmb * run.nnb, 1, gemm_task, &run, nt);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Attention: FlashAttention-2 loop order. A work item is (batch b, KV head hk, block of query
// rows, key range). Its rows are query rows of the G = Hq/Hk query heads that share KV head hk
// (row r = g*Lq + i), so K and V are read once per group. Scores are kept transposed, one row
// per key and one column per query, so K is read in place and every softmax step is a plain
// vector operation across queries. For each tile of run.bc keys:
//   S^T = K (Q * scale * log2 e)^T     micro-kernel: K rows in place, Q^T packed once per block
//   mask S^T (causal bound, kv_lengths, attn_mask), only on tiles that need it
//   online softmax in base 2, per query column: m' = max(m, max_j S); P = 2^(S - m');
//   l = l 2^(m - m') + sum_j P
//   O = O 2^(m - m') + P V             micro-kernel, V read in place when its rows are contiguous
// and at the end out = O / l, lse = (m + log2 l) ln 2. Tiles past every row's causal bound are
// never visited. For few rows (decode), the keys are split over threads and the partial
// results merged by their log-sum-exp (flash-decoding).
// Block sizes, measured (bench/NOTES.md). AVX2 (32 KiB L1d, 16 registers): 128 query rows x 64
// keys beat 64 x 128 and 64 x 64 by 5-25 %, most for head dim 128. AVX-512: 64 x 128, as measured
// on an AVX-512 machine (shared/DESIGN.md); not re-measured here (no AVX-512 on our machines).
constexpr int64_t kBR = 128;  // most query rows per block (array sizes)
constexpr int64_t kBC = 128;  // most keys per tile
#if defined(__AVX512F__) || defined(ATTNKIT_AVX512_LAYOUT)
constexpr int64_t kBlockRows = 64, kTileKeys = 128;
#else
constexpr int64_t kBlockRows = 128, kTileKeys = 64;
#endif
constexpr int64_t kFewRows = 4;     // up to this many query rows (decode), K and V are streamed row by row

template <class T>
struct AttnRun {
  const AttnProblem* p;
  int64_t G, nib, hpb, nblk, nsplit, split_keys, EvP, items;
  int64_t br, bc;  // query rows per block (<= kBR, a multiple of NR), keys per tile (<= kBC)
  bool v_direct, k_direct;
  Workspace ws;
  T* part = nullptr;    // nsplit > 1: per item kBR x (EvP + 2)
  size_t part_stride = 0;
  ~AttnRun() { std::free(part); }
};

struct BatchOffsets { int64_t q, k, v, o, l, m; };
inline BatchOffsets batch_offsets(const AttnProblem& p, int64_t b) {
  BatchOffsets r{0, 0, 0, 0, 0, 0};
  for (int d = p.nbatch - 1; d >= 0; --d) {
    const int64_t s = p.batch_shape[d], i = b % s;
    b /= s;
    r.q += i * p.q_b[d]; r.k += i * p.k_b[d]; r.v += i * p.v_b[d];
    r.o += i * p.o_b[d]; r.l += i * p.l_b[d]; r.m += i * p.m_b[d];
  }
  return r;
}

struct Block { int64_t b, hk, r0, n, s; };
template <class T>
inline Block decode_item(const AttnRun<T>& run, int64_t it) {
  const AttnProblem& p = *run.p;
  Block blk;
  blk.s = it % run.nsplit;
  int64_t t = it / run.nsplit;
  blk.hk = t % p.Hk; t /= p.Hk;
  blk.b = t % p.B;
  const int64_t bi = t / p.B;
  if (p.Lq >= run.br) {  // blocks within one head; the last query blocks (most keys if causal) first
    const int64_t g = bi % run.G, ib = run.nib - 1 - bi / run.G;
    blk.r0 = g * p.Lq + ib * run.br;
    blk.n = imin(run.br, p.Lq - ib * run.br);
  } else {            // short queries: a block holds hpb whole heads
    blk.r0 = bi * run.hpb * p.Lq;
    blk.n = imin(run.hpb * p.Lq, run.G * p.Lq - blk.r0);
  }
  return blk;
}

template <class T>
void attn_task(void* ctx, int64_t begin, int64_t end, int tid) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  constexpr int NR = kNV * W;
  constexpr int NQV = kBR / W;  // query vectors per block
  AttnRun<T>& run = *static_cast<AttnRun<T>*>(ctx);
  const AttnProblem& p = *run.p;
  const int64_t E = p.E, Ev = p.Ev, EvP = run.EvP, ldS = run.br;
  const T ninf = -INFINITY;

  T* QT = run.ws.template get<T>(tid);         // [kBR / NR][E][NR]
  T* S = QT + kBR * E;                         // [kBC][kBR]: S^T, then P^T
  T* O = S + kBC * kBR;                        // [kBR][EvP]
  T* Vp = O + kBR * EvP;                       // [EvP / NR][kBC][NR] when V is not read in place
  T* Kp = Vp + (run.v_direct ? 0 : kBC * EvP); // [kBC][E] when K is not read in place
  T* Qr = Kp + (run.k_direct ? 0 : kBC * E);   // [kFewRows][E]: Q rows, for the few-rows path
  alignas(64) T mrow[kBR], lrow[kBR], limr[kBR], alpha[kBR];  // limr: limits relative to a tile, exact
  int64_t lim[kBR];

  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  T* lse = static_cast<T*>(p.lse);
  const int64_t mask_elem = p.mask_bool ? 1 : static_cast<int64_t>(sizeof(T));
  const T qscale = static_cast<T>(p.scale * kLog2e);
  const T mscale = static_cast<T>(kLog2e);
  const char* mrows[kBR];

  for (int64_t it = begin; it < end; ++it) {
    const Block blk = decode_item(run, it);
    const BatchOffsets off = batch_offsets(p, blk.b);
    const int64_t len = p.kv_len ? p.kv_len[blk.b] : p.Lk;
    const T* kb = k + off.k + blk.hk * p.k_h;
    const T* vb = v + off.v + blk.hk * p.v_h;
    const int64_t n = blk.n, nqp = ceil_div(n, NR), ncols = nqp * NR, nqv = ncols / W;

    // rows: pack Q^T (scaled into base-2 units), causal bounds, mask rows
    int64_t lim_max = 0, lim_min = len;
    for (int64_t rr = 0; rr < ncols; ++rr) {
      T* dst = QT + (rr / NR) * E * NR + rr % NR;
      mrow[rr] = ninf;
      lrow[rr] = 0;
      if (rr >= n) {
        for (int64_t d = 0; d < E; ++d) dst[d * NR] = 0;
        lim[rr] = 0;
        lim_min = 0;
        continue;
      }
      const int64_t r = blk.r0 + rr, g = r / p.Lq, i = r % p.Lq, h = blk.hk * run.G + g;
      const T* qr = q + off.q + h * p.q_h + i * p.q_i;
      for (int64_t d = 0; d < E; ++d) dst[d * NR] = qr[d * p.q_e] * qscale;
      if (n <= kFewRows)
        for (int64_t d = 0; d < E; ++d) Qr[rr * E + d] = qr[d * p.q_e] * qscale;
      int64_t l = len;
      if (p.causal == 1) l = i + 1;
      else if (p.causal == 2) l = i + 1 + len - p.Lq;
      l = imax(0, imin(l, len));
      lim[rr] = l;
      lim_max = imax(lim_max, l);
      lim_min = imin(lim_min, l);
      if (p.mask) mrows[rr] = static_cast<const char*>(p.mask) + (off.m + h * p.m_h + i * p.m_i) * mask_elem;
    }
    std::memset(O, 0, sizeof(T) * static_cast<size_t>(n * EvP));

    const int64_t kbeg = blk.s * run.split_keys;
    const int64_t kend = imin(lim_max, kbeg + run.split_keys);
    for (int64_t j0 = kbeg; j0 < kend; j0 += run.bc) {
      const int64_t nk = imin(run.bc, kend - j0);
      // 1) S^T = K Q^T
      const T* ka = kb + j0 * p.k_j;
      int64_t lda = p.k_j;
      if (!run.k_direct) {
        for (int64_t jj = 0; jj < nk; ++jj)
          for (int64_t d = 0; d < E; ++d) Kp[jj * E + d] = ka[jj * p.k_j + d * p.k_e];
        ka = Kp;
        lda = E;
      }
      if (n <= kFewRows) {  // few rows (decode): one dot product per key, K streamed row by row
        for (int64_t jj = 0; jj < nk; ++jj) {
          const T* kr = ka + jj * lda;
          prefetch_row(kr + kPrefetchRows * lda, E);
          for (int64_t rr = 0; rr < n; ++rr) {
            const T* qr = Qr + rr * E;
            V acc = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};  // four chains hide the FMA latency
            int64_t d = 0;
            for (; d + 4 * W <= E; d += 4 * W) {
              acc += vload(qr + d) * vload(kr + d);
              acc1 += vload(qr + d + W) * vload(kr + d + W);
              acc2 += vload(qr + d + 2 * W) * vload(kr + d + 2 * W);
              acc3 += vload(qr + d + 3 * W) * vload(kr + d + 3 * W);
            }
            for (; d + W <= E; d += W) acc += vload(qr + d) * vload(kr + d);
            acc += (acc1 + acc2) + acc3;
            T dot = 0;
            for (int t = 0; t < W; ++t) dot += acc[t];
            for (; d < E; ++d) dot += qr[d] * kr[d];
            S[jj * ldS + rr] = dot;
          }
        }
      } else {
        for (int64_t j = 0; j < nk; j += kMR)
          for (int64_t pn = 0; pn < nqp; ++pn)
            micro_rows<T, false, false>(static_cast<int>(imin(kMR, nk - j)), E, ka + j * lda, lda,
                                        QT + pn * E * NR, NR, S + j * ldS + pn * NR, ldS);
      }
      // 2) mask
      if (j0 + nk > lim_min) {
        for (int64_t rr = 0; rr < ncols; ++rr) limr[rr] = static_cast<T>(imax(0, imin(nk, lim[rr] - j0)));
        for (int64_t jj = 0; jj < nk; ++jj) {
          const V jv = vset(static_cast<T>(jj));
          T* srow = S + jj * ldS;
          for (int64_t qv = 0; qv < nqv; ++qv) {
            V x = vload(srow + qv * W);
            vstore(srow + qv * W, jv < vload(limr + qv * W) ? x : vset(ninf));
          }
        }
      }
      if (p.mask) {
        for (int64_t rr = 0; rr < n; ++rr) {
          const char* mr = mrows[rr];
          const int64_t c = imin(nk, lim[rr] - j0);
          if (p.mask_bool) {
            for (int64_t jj = 0; jj < c; ++jj)
              if (!mr[(j0 + jj) * p.m_j]) S[jj * ldS + rr] = ninf;
          } else {
            const T* mf = reinterpret_cast<const T*>(mr);
            const T lowest = -std::numeric_limits<T>::max();
            for (int64_t jj = 0; jj < c; ++jj) {
              const T m = mf[(j0 + jj) * p.m_j];
              T add = m * mscale;  // finfo.min * log2 e overflows: keep it finite, as the mask was
              if (add < lowest && m >= lowest) add = lowest;
              S[jj * ldS + rr] += add;
            }
          }
        }
      }
      // 3) online softmax down each query column
      V mv[NQV], sv[NQV], base[NQV];
      for (int64_t qv = 0; qv < nqv; ++qv) { mv[qv] = vload(mrow + qv * W); sv[qv] = V{}; }
      for (int64_t jj = 0; jj < nk; ++jj) {
        const T* srow = S + jj * ldS;
        for (int64_t qv = 0; qv < nqv; ++qv) {
          V x = vload(srow + qv * W);
          mv[qv] = x > mv[qv] ? x : mv[qv];
        }
      }
      for (int64_t qv = 0; qv < nqv; ++qv) base[qv] = mv[qv] == vset(ninf) ? V{} : mv[qv];
      for (int64_t jj = 0; jj < nk; ++jj) {
        T* srow = S + jj * ldS;
        for (int64_t qv = 0; qv < nqv; ++qv) {
          V e;
          if constexpr (sizeof(T) == 4) {
            e = exp2v(vload(srow + qv * W) - base[qv]);
          } else {
            V x = vload(srow + qv * W) - base[qv];
            for (int t = 0; t < W; ++t) e[t] = ::exp2(x[t]);
          }
          vstore(srow + qv * W, e);
          sv[qv] += e;
        }
      }
      for (int64_t qv = 0; qv < nqv; ++qv) {
        V a;
        V mo = vload(mrow + qv * W) - base[qv];
        if constexpr (sizeof(T) == 4) {
          a = exp2v(mo);
        } else {
          for (int t = 0; t < W; ++t) a[t] = ::exp2(mo[t]);
        }
        vstore(alpha + qv * W, a);
        vstore(lrow + qv * W, vload(lrow + qv * W) * a + sv[qv]);
        vstore(mrow + qv * W, mv[qv]);
      }
      for (int64_t rr = 0; rr < n; ++rr) {
        if (alpha[rr] == T(1)) continue;
        T* o = O + rr * EvP;
        for (int64_t e = 0; e < EvP; e += W) vstore(o + e, vload(o + e) * alpha[rr]);
      }
      // 4) O += P V
      const T* vsrc = vb + j0 * p.v_j;
      int64_t ldv = p.v_j;
      if (!run.v_direct) {
        for (int64_t jj = 0; jj < nk; ++jj) {
          const T* vr = vb + (j0 + jj) * p.v_j;
          for (int64_t e = 0; e < EvP; ++e)
            Vp[(e / NR) * kBC * NR + jj * NR + e % NR] = e < Ev ? vr[e * p.v_e] : T(0);
        }
      }
      if (run.v_direct && n <= kFewRows) {  // few rows (decode): stream each V row once
        for (int64_t jj = 0; jj < nk; ++jj) {
          const T* vr = vsrc + jj * ldv;
          prefetch_row(vr + kPrefetchRows * ldv, Ev);
          for (int64_t rr = 0; rr < n; ++rr) {
            const V pj = vset(S[jj * ldS + rr]);
            T* o = O + rr * EvP;
            for (int64_t e = 0; e < EvP; e += W) vstore(o + e, vload(o + e) + pj * vload(vr + e));
          }
        }
        continue;
      }
      for (int64_t pn = 0; pn * NR < EvP; ++pn) {
        const T* bsrc = run.v_direct ? vsrc + pn * NR : Vp + pn * kBC * NR;
        const int64_t ldb = run.v_direct ? ldv : NR;
        for (int64_t rr = 0; rr < n; rr += kMR)
          micro_rows<T, true, true>(static_cast<int>(imin(kMR, n - rr)), nk, S + rr, ldS, bsrc, ldb,
                                    O + rr * EvP + pn * NR, EvP);
      }
    }

    // 5) results: final (normalised) or partial (for the log-sum-exp merge)
    if (run.nsplit == 1) {
      for (int64_t rr = 0; rr < n; ++rr) {
        const int64_t r = blk.r0 + rr, g = r / p.Lq, i = r % p.Lq, h = blk.hk * run.G + g;
        const T l = lrow[rr];
        T* orow = out + off.o + h * p.o_h + i * p.o_i;
        const T* o = O + rr * EvP;
        if (!(l == 0)) {  // l is NaN when a NaN reached the row: the row stays NaN
          const T inv = T(1) / l;
          for (int64_t e = 0; e < Ev; ++e) orow[e * p.o_e] = o[e] * inv;
        } else {  // no visible key: zeros, whatever P V gathered from other rows' keys
          for (int64_t e = 0; e < Ev; ++e) orow[e * p.o_e] = 0;
        }
        if (lse)
          lse[off.l + h * p.l_h + i * p.l_i] =
              l == 0 ? ninf : static_cast<T>(static_cast<double>(mrow[rr]) * kLn2 + std::log(static_cast<double>(l)));
      }
    } else {
      T* dst = run.part + static_cast<size_t>(it) * run.part_stride;
      for (int64_t rr = 0; rr < n; ++rr) {
        std::memcpy(dst + rr * (EvP + 2), O + rr * EvP, sizeof(T) * Ev);
        dst[rr * (EvP + 2) + EvP] = mrow[rr];
        dst[rr * (EvP + 2) + EvP + 1] = lrow[rr];
      }
    }
  }
}

// Merge the nsplit partial results of each block: weights 2^(m_s - M) / L.
template <class T>
void attn_merge_task(void* ctx, int64_t begin, int64_t end, int) {
  AttnRun<T>& run = *static_cast<AttnRun<T>*>(ctx);
  const AttnProblem& p = *run.p;
  const int64_t EvP = run.EvP, ns = run.nsplit;
  T* out = static_cast<T*>(p.out);
  T* lse = static_cast<T*>(p.lse);
  for (int64_t blk_id = begin; blk_id < end; ++blk_id) {
    const Block blk = decode_item(run, blk_id * ns);
    const BatchOffsets off = batch_offsets(p, blk.b);
    for (int64_t rr = 0; rr < blk.n; ++rr) {
      const int64_t r = blk.r0 + rr, g = r / p.Lq, i = r % p.Lq, h = blk.hk * run.G + g;
      double M = -INFINITY;
      bool nan = false;
      for (int64_t s = 0; s < ns; ++s) {
        const T* part = run.part + static_cast<size_t>(blk_id * ns + s) * run.part_stride + rr * (EvP + 2);
        nan = nan || part[EvP + 1] != part[EvP + 1];
        if (part[EvP + 1] > 0 && part[EvP] > M) M = part[EvP];
      }
      T* orow = out + off.o + h * p.o_h + i * p.o_i;
      if (nan) {  // a NaN reached this row in some split: the row is NaN, as without splitting
        for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] = static_cast<T>(NAN);
        if (lse) lse[off.l + h * p.l_h + i * p.l_i] = static_cast<T>(NAN);
        continue;
      }
      double L = 0;
      for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] = 0;
      if (M != -INFINITY) {
        for (int64_t s = 0; s < ns; ++s) {
          const T* part = run.part + static_cast<size_t>(blk_id * ns + s) * run.part_stride + rr * (EvP + 2);
          if (!(part[EvP + 1] > 0)) continue;
          const T w = static_cast<T>(::exp2(static_cast<double>(part[EvP]) - M));
          L += static_cast<double>(part[EvP + 1]) * w;
          for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] += part[e] * w;
        }
        const T inv = static_cast<T>(1.0 / L);
        for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] *= inv;
      }
      if (lse) lse[off.l + h * p.l_h + i * p.l_i] = L > 0 ? static_cast<T>(M * kLn2 + std::log(L)) : T(-INFINITY);
    }
  }
}

template <class T>
int attention_impl(const AttnProblem& p) {
  constexpr int NR = kNV * Simd<T>::W;
  if (p.B == 0 || p.Hq == 0 || p.Lq == 0) return 0;
  AttnRun<T> run;
  run.p = &p;
  run.G = p.Hq / p.Hk;
  run.br = kBlockRows;
  run.bc = kTileKeys;
  run.nib = ceil_div(p.Lq, run.br);
  run.hpb = p.Lq >= run.br ? 1 : imax(1, run.br / p.Lq);
  run.nblk = p.Lq >= run.br ? run.G * run.nib : ceil_div(run.G, run.hpb);
  run.EvP = ceil_div(p.Ev, NR) * NR;
  run.v_direct = p.v_e == 1 && p.Ev % NR == 0;
  const int nt = num_threads();
  const int64_t blocks = p.B * p.Hk * run.nblk;
  run.nsplit = 1;
  run.split_keys = imax(p.Lk, 1);
  if (blocks < 2 * nt && p.Lk >= 4 * run.bc) {  // too few blocks to feed the threads: split the keys
    const int64_t want = ceil_div(4 * nt, blocks);
    const int64_t chunks = ceil_div(ceil_div(p.Lk, want), run.bc);
    run.split_keys = chunks * run.bc;
    run.nsplit = ceil_div(p.Lk, run.split_keys);
  }
  run.items = blocks * run.nsplit;
  run.k_direct = p.k_e == 1;
  const size_t ws = sizeof(T) * static_cast<size_t>(kBR * p.E + kBC * kBR + kBR * run.EvP +
                                                     (run.v_direct ? 0 : kBC * run.EvP) + (run.k_direct ? 0 : kBC * p.E) +
                                                     kFewRows * p.E);
  if (!run.ws.alloc(nt, ws)) return 1;
  if (run.nsplit > 1) {
    run.part_stride = static_cast<size_t>(kBR * (run.EvP + 2));
    run.part = static_cast<T*>(std::malloc(sizeof(T) * run.part_stride * static_cast<size_t>(run.items)));
    if (!run.part) return 1;
  }
  parallel_for(run.items, 1, attn_task<T>, &run, nt);
  if (run.nsplit > 1) parallel_for(blocks, 1, attn_merge_task<T>, &run, nt);
  return 0;
}

int attention(const AttnProblem& p) { return p.f64 ? attention_impl<double>(p) : attention_impl<float>(p); }

const Kernels kTable = {
#define ATTNKIT_STR2(x) #x
#define ATTNKIT_STR(x) ATTNKIT_STR2(x)
    ATTNKIT_STR(ATTNKIT_ISA_NAMESPACE),
    attention,
    gemm_f32,
    softmax_row_f32,
    softmax_row_f64,
    layer_norm_row_f32,
    layer_norm_row_f64,
    activation_f32,
    activation_f64,
    kVecBytes,
};

}  // namespace

const Kernels& kernels() { return kTable; }

}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE
