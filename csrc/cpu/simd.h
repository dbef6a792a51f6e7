// Vectors and vector math for one ISA: GCC/Clang vector extensions sized to the ISA's register
// width (isa_config.h), so the same source becomes SSE2, AVX2 or AVX-512 code. Part of the
// kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attnkit/problems.h"
#include "cpu/isa_config.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

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
// Activations
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

inline vf act_vec(vf x, Activation act) {
  switch (act) {
    case Activation::relu: return x < 0.0f ? vf{} : x;  // NaN stays NaN
    case Activation::gelu: {  // x * Phi(x) = x * erfc(-x / sqrt 2) / 2
      vf ax = x < 0.0f ? -x : x;
      vf half_erfc = 0.5f * erfc_nonneg(ax * 0.70710678118654752f);
      return x * (x < 0.0f ? half_erfc : 1.0f - half_erfc);
    }
    case Activation::gelu_tanh: {  // 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
      vf u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return x / (1.0f + exp2v(-2.0f * static_cast<float>(kLog2e) * u));
    }
    case Activation::silu: return x / (1.0f + exp2v(-static_cast<float>(kLog2e) * x));  // x sigmoid(x)
    default: return x;
  }
}
inline float act_scalar(float x, Activation act) {
  vf v = vset(x);
  return act_vec(v, act)[0];
}
inline double act_scalar(double x, Activation act) {
  switch (act) {
    case Activation::relu: return x < 0.0 ? 0.0 : x;
    case Activation::gelu: return 0.5 * x * ::erfc(-x * 0.70710678118654752);
    case Activation::gelu_tanh: return 0.5 * x * (1.0 + ::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case Activation::silu: return x / (1.0 + ::exp(-x));
    default: return x;
  }
}

// y[0, n) = act(x[0, n) + bias[0, n)) (bias optional, contiguous); y may be x.
inline void act_row(const float* x, const float* bias, float* y, int64_t n, Activation act) {
  constexpr int W = Simd<float>::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf v = vload(x + i);
    if (bias) v += vload(bias + i);
    vstore(y + i, act_vec(v, act));
  }
  for (; i < n; ++i) y[i] = act_scalar(x[i] + (bias ? bias[i] : 0.0f), act);
}
inline void act_row(const double* x, const double* bias, double* y, int64_t n, Activation act) {
  for (int64_t i = 0; i < n; ++i) y[i] = act_scalar(x[i] + (bias ? bias[i] : 0.0), act);
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
template <class T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
}


}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
