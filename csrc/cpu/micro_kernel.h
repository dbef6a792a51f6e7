// The register-tile micro-kernel shared by GEMM and attention. Part of the kernel unit
// (kernels.cpp); internal linkage only.
#pragma once
#include "cpu/simd.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// Micro-kernel: C[MR x NR] (+)= A[MR x K] * B[K x NR], NR = kNV * W, MR <= kMR.
// A is column-major (element (r, k) at a[k*lda + r]: packed panels, P^T tiles) or row-major
// (a[r*lda + k]: K rows read in place); B rows are NR contiguous elements, ldb apart.
// BT: B's storage type (T, or float16/bfloat16 widened as each row is loaded, for T = float).
template <class T, int MR, bool ACOL, bool ACC, class BT = T>
inline void micro(int64_t K, const T* a, int64_t lda, const BT* b, int64_t ldb, T* c, int64_t ldc) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  V acc[MR][kNV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[r][v] = ACC ? vload(c + r * ldc + v * W) : V{};
  int64_t k = 0;
  if constexpr (MR <= 3) {  // few rows: a second set of accumulators for odd k, or the FMA latency
    V odd[MR][kNV];         // (not the loads) would bound the k loop
    for (int r = 0; r < MR; ++r) odd[r][0] = odd[r][1] = V{};
#pragma GCC unroll 2
    for (; k + 2 <= K; k += 2) {
      V b0 = vload_as<T>(b + k * ldb), b1 = vload_as<T>(b + k * ldb + W);
      V b2 = vload_as<T>(b + (k + 1) * ldb), b3 = vload_as<T>(b + (k + 1) * ldb + W);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        V a0 = vset(ACOL ? a[k * lda + r] : a[r * lda + k]);
        V a1 = vset(ACOL ? a[(k + 1) * lda + r] : a[r * lda + k + 1]);
        acc[r][0] += a0 * b0;
        acc[r][1] += a0 * b1;
        odd[r][0] += a1 * b2;
        odd[r][1] += a1 * b3;
      }
    }
    for (int r = 0; r < MR; ++r) {
      acc[r][0] += odd[r][0];
      acc[r][1] += odd[r][1];
    }
  }
#pragma GCC unroll 4
  for (; k < K; ++k) {
    V b0 = vload_as<T>(b + k * ldb), b1 = vload_as<T>(b + k * ldb + W);
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

// One row of A against NP panels of B read as NP separate streams (decoding: a single row, a weight
// larger than the caches): C_j[1 x NR] (+)= a[1 x K] * B_j[K x NR] for j < NP, B_j's rows NR apart.
// NP streams keep more of memory's lines in flight than one panel after the other.
template <class T, int NP, bool ACC, class BT = T>
inline void micro_row_panels(int64_t K, const T* a, const BT* const* b, T* const* c) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, NR = kNV * W;
  V acc[NP][kNV];
#pragma GCC unroll 4
  for (int j = 0; j < NP; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) acc[j][v] = ACC ? vload(c[j] + v * W) : V{};
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    const V ar = vset(a[k]);
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < kNV; ++v) acc[j][v] += ar * vload_as<T>(b[j] + k * NR + v * W);
  }
#pragma GCC unroll 4
  for (int j = 0; j < NP; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) vstore(c[j] + v * W, acc[j][v]);
}

// The same for a run-time row count 1..kMR.
template <class T, bool ACOL, bool ACC, class BT = T>
inline void micro_rows(int rows, int64_t K, const T* a, int64_t lda, const BT* b, int64_t ldb, T* c, int64_t ldc) {
  switch (rows) {
#define ATTNKIT_MICRO_CASE(n) \
    case n: if constexpr (n <= kMR) micro<T, n, ACOL, ACC, BT>(K, a, lda, b, ldb, c, ldc); break;
    ATTNKIT_MICRO_CASE(1) ATTNKIT_MICRO_CASE(2) ATTNKIT_MICRO_CASE(3) ATTNKIT_MICRO_CASE(4)
    ATTNKIT_MICRO_CASE(5) ATTNKIT_MICRO_CASE(6) ATTNKIT_MICRO_CASE(7) ATTNKIT_MICRO_CASE(8)
    ATTNKIT_MICRO_CASE(9) ATTNKIT_MICRO_CASE(10) ATTNKIT_MICRO_CASE(11) ATTNKIT_MICRO_CASE(12)
    ATTNKIT_MICRO_CASE(13) ATTNKIT_MICRO_CASE(14)
#undef ATTNKIT_MICRO_CASE
    default: break;
  }
}


}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
