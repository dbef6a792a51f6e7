// Vectors and vector math for one ISA: GCC/Clang vector extensions sized to the ISA's register
// width (isa_config.h), so the same source becomes SSE2, AVX2 or AVX-512 code. Part of the
// kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

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
// Half precision storage (float16, bfloat16): stored as 16 bits, computed in float. Conversions
// on load (F16C where the path has it, a 16-bit shift for bf16) and rounding to nearest even on
// store. Compute<S> is the arithmetic type of storage type S.
struct half_t { uint16_t u; };  // IEEE binary16
struct bf16_t { uint16_t u; };  // bfloat16: the top half of a float32

template <class S> struct ComputeOf { typedef S type; };
template <> struct ComputeOf<half_t> { typedef float type; };
template <> struct ComputeOf<bf16_t> { typedef float type; };
template <class S> using Compute = typename ComputeOf<S>::type;
template <class S> constexpr bool is_half() { return sizeof(S) == 2; }

inline float bits_f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// scalar conversions: widen(s) -> Compute<S>, narrow<S>(x) rounds to nearest even
inline float widen(float x) { return x; }
inline double widen(double x) { return x; }
inline float widen(bf16_t h) { return bits_f(static_cast<uint32_t>(h.u) << 16); }
inline float widen(half_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h.u);
#else
  const uint32_t sign = static_cast<uint32_t>(h.u & 0x8000u) << 16, e = (h.u >> 10) & 0x1fu, m = h.u & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;
    return bits_f(f_bits(v) | sign);
  }
  if (e == 31) return bits_f(sign | 0x7f800000u | (m << 13));
  return bits_f(sign | ((e + 112) << 23) | (m << 13));
#endif
}
template <class S> inline S narrow(float x);
template <class S> inline S narrow(double x) { return static_cast<S>(x); }
template <> inline float narrow<float>(float x) { return x; }
template <> inline double narrow<double>(float x) { return x; }
template <> inline bf16_t narrow<bf16_t>(float x) {
  const uint32_t u = f_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN stays NaN
  return bf16_t{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
template <> inline half_t narrow<half_t>(float x) {
#if defined(__F16C__)
  return half_t{static_cast<uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))};
#else
  // Maratyszcza's FP16 library (fp16_ieee_from_fp32_value): the float adder does the rounding.
  float base = (std::fabs(x) * 5.192296858534828e+33f) * 7.703719777548943e-34f;  // * 2^112 * 2^-110
  const uint32_t w = f_bits(x), shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_f((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x7c00u) + (bits & 0x0fffu);
  return half_t{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign))};
#endif
}

typedef uint16_t vu16 __attribute__((vector_size(kVecBytes / 2)));
typedef uint32_t vu32 __attribute__((vector_size(kVecBytes)));

// W floats from W stored elements (a plain load for float)
inline vf vload_f(const float* p) { return vload(p); }
inline vf vload_f(const bf16_t* p) {
  // GCC 12 lowers the portable widening of 16 halves to 16 words as two 8-lane zero-extensions, an
  // extract and an insert (5 instructions where one does): the bf16 GEMV ran at half the fp16 one's rate
#if defined(__AVX512F__)  // 16-float vectors
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
#elif defined(__AVX2__) && !defined(ATTNKIT_LAYOUT_AVX512)  // 8-float vectors
  return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
#else
  vu16 h;
  std::memcpy(&h, p, sizeof h);
  return (vf)(__builtin_convertvector(h, vu32) << 16);
#endif
}
inline vf vload_f(const half_t* p) {
#if defined(__AVX512F__)
  if constexpr (kVecBytes == 64) return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
#if defined(__F16C__)
  if constexpr (kVecBytes % 32 == 0) {
    vf r;
    for (int i = 0; i < kVecBytes / 32; ++i) {
      __m256 h = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8 * i)));
      std::memcpy(reinterpret_cast<char*>(&r) + 32 * i, &h, 32);
    }
    return r;
  }
#endif
  vf r;
  for (int i = 0; i < Simd<float>::W; ++i) r[i] = widen(p[i]);
  return r;
}
inline void vstore_f(float* p, vf v) { vstore(p, v); }
// The bfloat16 of each float (rounded to nearest even, NaN stays NaN) in the low 16 bits of its lane.
inline vu32 bf16_bits(vf v) {
  const vu32 u = (vu32)v;
  const vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu32 nan = (u >> 16) | 0x40u;
  return ((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded;
}
inline void vstore_f(bf16_t* p, vf v) {
  const vu16 h = __builtin_convertvector(bf16_bits(v), vu16);
  std::memcpy(p, &h, sizeof h);
}
inline void vstore_f(half_t* p, vf v) {
#if defined(__AVX512F__)
  if constexpr (kVecBytes == 64) {
    __m256i h = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    std::memcpy(p, &h, 32);
    return;
  }
#endif
#if defined(__F16C__)
  if constexpr (kVecBytes % 32 == 0) {
    for (int i = 0; i < kVecBytes / 32; ++i) {
      __m256 x;
      std::memcpy(&x, reinterpret_cast<const char*>(&v) + 32 * i, 32);
      __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      std::memcpy(p + 8 * i, &h, 16);
    }
    return;
  }
#endif
  for (int i = 0; i < Simd<float>::W; ++i) p[i] = narrow<half_t>(v[i]);
}
// The same for a vector of Compute<S> where S may be the compute type itself (float, double).
template <class T, class S> inline typename Simd<T>::V vload_as(const S* p) {
  if constexpr (std::is_same<T, S>::value) return vload(p);
  else return vload_f(p);
}

template <class S, class V> inline void vstore_as(S* p, V v) {
  if constexpr (is_half<S>()) vstore_f(p, v);
  else vstore(p, v);
}

// bfloat16 in pairs: 2W stored elements read as W 32-bit words give the even elements (word << 16)
// and the odd ones (word & 0xffff0000), one instruction each, where vload_f spends two per W
// (zero-extension, shift). The other operand must be laid out alike (pair_split below).
inline void vload_pairs(const bf16_t* p, vf& even, vf& odd) {
  vu32 w;
  std::memcpy(&w, p, sizeof w);
  even = (vf)(w << 16);
  odd = (vf)(w & 0xffff0000u);
}
// src[0, n) -> dst[0, n) with each whole block of 2W elements split into its W even then W odd ones
// (the layout vload_pairs's partner operand needs); a tail shorter than 2W stays in place.
inline void pair_split(const float* src, float* dst, int64_t n) {
  constexpr int W = Simd<float>::W;
  int64_t d = 0;
  for (; d + 2 * W <= n; d += 2 * W)
    for (int t = 0; t < W; ++t) { dst[d + t] = src[d + 2 * t]; dst[d + W + t] = src[d + 2 * t + 1]; }
  for (; d < n; ++d) dst[d] = src[d];
}

// Horizontal sums of W vectors at once: lane i of sum_lanes(a) = the sum of the lanes of
// a[lane_slot(i)] (a transposing tree of shuffles and adds: about 3 instructions per vector instead
// of W - 1 dependent scalar adds). The order of the additions differs from a plain left-to-right sum.
#if defined(__AVX512F__)
constexpr int lane_slot(int i) { return kVecBytes == 64 ? 4 * (i % 4) + i / 4 : i; }
#elif defined(__AVX2__) && !defined(ATTNKIT_LAYOUT_AVX512)
constexpr int lane_slot(int i) { return i / 4 + 2 * (i % 4); }
#else
constexpr int lane_slot(int i) { return i; }
#endif
inline vf sum_lanes(const vf* a) {
#if defined(__AVX512F__)
  if constexpr (kVecBytes == 64) {
    __m512 t[8], u[4], v[2];
    for (int i = 0; i < 8; ++i) {  // 128-bit lanes: (a.0 + a.2, a.1 + a.3, b.0 + b.2, b.1 + b.3)
      const __m512 x = (__m512)a[2 * i], y = (__m512)a[2 * i + 1];
      t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xee));
    }
    for (int i = 0; i < 4; ++i)    // one 128-bit lane per vector: 4 partial sums each
      u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                           _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xdd));
    for (int i = 0; i < 2; ++i)    // two vectors per 128-bit lane: 2 partial sums each
      v[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(u[2 * i]), _mm512_castps_pd(u[2 * i + 1]))),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(u[2 * i]), _mm512_castps_pd(u[2 * i + 1]))));
    return (vf)_mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xdd));
  }
#endif
#if defined(__AVX2__) && !defined(ATTNKIT_LAYOUT_AVX512)
  __m256 t[4], u[2];
  for (int i = 0; i < 4; ++i) {    // one 128-bit lane per vector: 4 partial sums each
    const __m256 x = (__m256)a[2 * i], y = (__m256)a[2 * i + 1];
    t[i] = _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31));
  }
  for (int i = 0; i < 2; ++i)
    u[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t[2 * i]), _mm256_castps_pd(t[2 * i + 1]))),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t[2 * i]), _mm256_castps_pd(t[2 * i + 1]))));
  return (vf)_mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], 0x88), _mm256_shuffle_ps(u[0], u[1], 0xdd));
#else
  vf r;
  for (int i = 0; i < Simd<float>::W; ++i) r[i] = hsum(a[lane_slot(i)]);
  return r;
#endif
}

// v[0..W) as the rows of a W x W matrix -> its transpose, in log2(W) rounds of two-source shuffles:
// round s swaps the off-diagonal s x s sub-blocks of every 2s x 2s block (lanes j with j & s of row i
// trade places with lanes j - s of row i + s).
template <class V, int S> struct TransposeRound {
  static constexpr int W = sizeof(V) / sizeof(V{}[0]);
  typedef decltype(V{} < V{}) M;  // the integer vector of V's lane width
  static M lo() { M m; for (int j = 0; j < W; ++j) m[j] = (j & S) ? W + j - S : j; return m; }
  static M hi() { M m; for (int j = 0; j < W; ++j) m[j] = (j & S) ? W + j : j + S; return m; }
};
template <class V, int S = 1>
inline void transpose_square(V* v) {
  constexpr int W = sizeof(V) / sizeof(V{}[0]);
  if constexpr (S < W) {
    typedef TransposeRound<V, S> R;
    for (int i = 0; i < W; ++i) {
      if (i & S) continue;
      const V a = v[i], b = v[i + S];
#if defined(__clang__)  // no __builtin_shuffle: the same lanes one by one
      for (int j = 0; j < W; ++j) {
        v[i][j] = (j & S) ? b[j - S] : a[j];
        v[i + S][j] = (j & S) ? b[j] : a[j + S];
      }
#else
      v[i] = __builtin_shuffle(a, b, R::lo());
      v[i + S] = __builtin_shuffle(a, b, R::hi());
#endif
    }
    transpose_square<V, 2 * S>(v);
  }
}

// dst[0, n) = widen(src[0, n * stride) step stride); dst[0, n) -> narrow into out (step stride)
template <class S>
inline void widen_row(const S* src, int64_t stride, Compute<S>* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (is_half<S>()) {
    constexpr int W = Simd<float>::W;
    if (stride == 1)
      for (; i + W <= n; i += W) vstore(dst + i, vload_f(src + i));
  }
  for (; i < n; ++i) dst[i] = widen(src[i * stride]);
}
template <class S>
inline void narrow_row(const Compute<S>* src, S* dst, int64_t stride, int64_t n) {
  int64_t i = 0;
  if constexpr (is_half<S>()) {
    constexpr int W = Simd<float>::W;
    if (stride == 1)
      for (; i + W <= n; i += W) vstore_f(dst + i, vload(src + i));
  }
  for (; i < n; ++i) dst[i * stride] = narrow<S>(src[i]);
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
