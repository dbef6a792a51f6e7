// Attention with few query rows (decode; attention.h uses it for work items of at most kFewRows
// rows, and splits the keys of such items over threads). Part of the kernel unit (kernels.cpp);
// internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attnkit/problems.h"
#include "cpu/micro_kernel.h"
#include "cpu/simd.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// Few query rows (decode): the scores of a tile are kept row-major, R[rr][jj] (one row per query,
// contiguous along the keys, padded to whole vectors with -inf), so the mask and the online softmax
// are vector operations along the keys instead of along padded query columns; K and V are streamed
// row by row (one dot product per key and row, then O += P V one V row at a time). Half precision
// is widened as it is read (K from KS = St or, when K had to be gathered, T; V and a float mask from St).
template <class T>
struct FewRows {
  const AttnProblem* p;
  int64_t n, E, Ev, EvPad;
  const T* Qr;                   // [n][E], scaled
  const void* Qk;                // bfloat16 K (few_rows_scores_half): [n][E] of Qr pair_split, or (dp) the bf16 query
  bool dp;                       // bfloat16 K on AVX-512-BF16: vdpbf16ps with the unscaled bf16 query, then * qscale
  T qscale;
  T* R;                          // [kFewRows][kTileKeys]
  T* O;                          // [n][EvPad]
  T* Vrow;                       // [EvPad]: a V row gathered when V is not read in place
  bool v_direct;                 // V rows read in place (widened as they are read)
  const int64_t *key_limit, *key_start;
  const char* const* mask_rows;
  T *row_max, *row_sum;
};

// Half-precision scores of a few rows: W keys at a time, their vectors of partial sums reduced together
// (sum_lanes). bfloat16 K is read in pairs (vload_pairs, the query rows pair_split in Qk) or, on
// AVX-512-BF16, multiplied by the bfloat16 query with vdpbf16ps (exact products, float sums), then scaled.
template <class KS>
void few_rows_scores_half(const FewRows<float>& f, int64_t nk, const KS* ka, int64_t lda) {
  typedef vf V;
  constexpr int W = Simd<float>::W;
  const int64_t E = f.E;
  alignas(64) V acc[kFewRows][W];
  auto dot = [&](int64_t rr, const KS* kr) -> V {  // partial sums of q_rr . k
    V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
    int64_t d = 0;
    if constexpr (std::is_same<KS, bf16_t>::value) {
#if defined(__AVX512BF16__)
      if (f.dp) {  // E % 32 == 0
        const bf16_t* q = static_cast<const bf16_t*>(f.Qk) + rr * E;
        __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
        for (; d + 64 <= E; d += 64) {
          b0 = _mm512_dpbf16_ps(b0, (__m512bh)_mm512_loadu_si512(q + d), (__m512bh)_mm512_loadu_si512(kr + d));
          b1 = _mm512_dpbf16_ps(b1, (__m512bh)_mm512_loadu_si512(q + d + 32), (__m512bh)_mm512_loadu_si512(kr + d + 32));
        }
        if (d < E) b0 = _mm512_dpbf16_ps(b0, (__m512bh)_mm512_loadu_si512(q + d), (__m512bh)_mm512_loadu_si512(kr + d));
        return (V)_mm512_add_ps(b0, b1);
      }
#endif
      const float* q = static_cast<const float*>(f.Qk) + rr * E;
      for (; d + 2 * W <= E; d += 2 * W) {
        V ke, ko;
        vload_pairs(kr + d, ke, ko);
        if ((d / (2 * W)) % 2 == 0) { a0 += vload(q + d) * ke; a1 += vload(q + d + W) * ko; }
        else { a2 += vload(q + d) * ke; a3 += vload(q + d + W) * ko; }
      }
      for (; d + W <= E; d += W) a0 += vload(q + d) * vload_f(kr + d);
      for (; d < E; ++d) a0[0] += q[d] * widen(kr[d]);
    } else {
      const float* q = f.Qr + rr * E;
      for (; d + 4 * W <= E; d += 4 * W) {
        a0 += vload(q + d) * vload_as<float>(kr + d);
        a1 += vload(q + d + W) * vload_as<float>(kr + d + W);
        a2 += vload(q + d + 2 * W) * vload_as<float>(kr + d + 2 * W);
        a3 += vload(q + d + 3 * W) * vload_as<float>(kr + d + 3 * W);
      }
      for (; d + W <= E; d += W) a0 += vload(q + d) * vload_as<float>(kr + d);
      for (; d < E; ++d) a0[0] += q[d] * widen(kr[d]);
    }
    return (a0 + a1) + (a2 + a3);
  };
  for (int64_t g = 0; g < nk; g += W) {
    const int64_t gn = imin(W, nk - g);
    for (int64_t i = 0; i < gn; ++i) {
      const KS* kr = ka + (g + i) * lda;
      prefetch_row(kr + kPrefetchRows * lda, E);
      for (int64_t rr = 0; rr < f.n; ++rr) acc[rr][lane_slot(static_cast<int>(i))] = dot(rr, kr);
    }
    for (int64_t rr = 0; rr < f.n; ++rr) {
      float* r = f.R + rr * kTileKeys + g;
      V sums = gn == W ? sum_lanes(acc[rr]) : V{};
      if (gn < W)
        for (int64_t i = 0; i < gn; ++i) sums[i] = hsum(acc[rr][lane_slot(static_cast<int>(i))]);
      vstore(r, f.dp ? sums * f.qscale : sums);
    }
  }
}

template <class St, class T, class KS>
void few_rows_tile(const FewRows<T>& f, int64_t j0, int64_t nk, const KS* ka, int64_t lda, const St* vb) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  const AttnProblem& p = *f.p;
  const T ninf = -INFINITY;
  const int64_t nkv = ceil_div(nk, W) * W;
  // 1) scores: one dot product per key and row (four chains hide the FMA latency)
  if constexpr (is_half<St>()) few_rows_scores_half(f, nk, ka, lda);
  else for (int64_t jj = 0; jj < nk; ++jj) {
    const KS* kr = ka + jj * lda;
    prefetch_row(kr + kPrefetchRows * lda, f.E);
    for (int64_t rr = 0; rr < f.n; ++rr) {
      const T* qr = f.Qr + rr * f.E;
      V acc = V{}, acc1 = V{}, acc2 = V{}, acc3 = V{};
      int64_t d = 0;
      for (; d + 4 * W <= f.E; d += 4 * W) {
        acc += vload(qr + d) * vload_as<T>(kr + d);
        acc1 += vload(qr + d + W) * vload_as<T>(kr + d + W);
        acc2 += vload(qr + d + 2 * W) * vload_as<T>(kr + d + 2 * W);
        acc3 += vload(qr + d + 3 * W) * vload_as<T>(kr + d + 3 * W);
      }
      for (; d + W <= f.E; d += W) acc += vload(qr + d) * vload_as<T>(kr + d);
      acc += (acc1 + acc2) + acc3;
      T dot = 0;
      for (int t = 0; t < W; ++t) dot += acc[t];
      for (; d < f.E; ++d) dot += qr[d] * widen(kr[d]);
      f.R[rr * kTileKeys + jj] = dot;
    }
  }
  for (int64_t rr = 0; rr < f.n; ++rr) {
    T* r = f.R + rr * kTileKeys;
    // 2) mask: keys outside [key_start, key_limit), then attn_mask
    const int64_t lo = imax(0, imin(nk, f.key_start[rr] - j0)), hi = imax(0, imin(nk, f.key_limit[rr] - j0));
    for (int64_t jj = 0; jj < lo; ++jj) r[jj] = ninf;
    for (int64_t jj = hi; jj < nkv; ++jj) r[jj] = ninf;
    if (p.mask) {
      const char* mr = f.mask_rows[rr];
      if (p.mask_bool) {
        for (int64_t jj = lo; jj < hi; ++jj)
          if (!mr[(j0 + jj) * p.m_j]) r[jj] = ninf;
      } else {
        const St* mf = reinterpret_cast<const St*>(mr);
        for (int64_t jj = lo; jj < hi; ++jj) r[jj] += widen(mf[(j0 + jj) * p.m_j]);
      }
    }
    // 3) online softmax along the row (natural units; log2 e only inside exp2)
    V mv = vset(f.row_max[rr]);
    for (int64_t jj = 0; jj < nkv; jj += W) {
      const V x = vload(r + jj);
      mv = x > mv ? x : mv;
    }
    T m = mv[0];
    for (int t = 1; t < W; ++t) m = mv[t] > m ? mv[t] : m;
    const T base = m == ninf ? T(0) : m;
    V sv = V{};
    for (int64_t jj = 0; jj < nkv; jj += W) {
      V e;
      if constexpr (sizeof(T) == 4) {
        e = exp2v((vload(r + jj) - base) * static_cast<T>(kLog2e));
      } else {
        const V x = vload(r + jj) - base;
        for (int t = 0; t < W; ++t) e[t] = ::exp(x[t]);
      }
      vstore(r + jj, e);
      sv += e;
    }
    T sum = 0;
    for (int t = 0; t < W; ++t) sum += sv[t];
    T alpha;
    if constexpr (sizeof(T) == 4) alpha = exp2v(vset((f.row_max[rr] - base) * static_cast<T>(kLog2e)))[0];
    else alpha = static_cast<T>(::exp(f.row_max[rr] - base));
    f.row_sum[rr] = f.row_sum[rr] * alpha + sum;
    f.row_max[rr] = m;
    if (alpha != T(1)) {
      T* o = f.O + rr * f.EvPad;
      for (int64_t e = 0; e < f.EvPad; e += W) vstore(o + e, vload(o + e) * alpha);
    }
  }
  // 4) O += P V, each V row read once
  auto add_pv = [&](int64_t jj, auto vr) {  // vr: const St* in place, or const T* gathered
    for (int64_t rr = 0; rr < f.n; ++rr) {
      const V pj = vset(f.R[rr * kTileKeys + jj]);
      T* o = f.O + rr * f.EvPad;
      for (int64_t e = 0; e < f.EvPad; e += W) vstore(o + e, vload(o + e) + pj * vload_as<T>(vr + e));
    }
  };
  for (int64_t jj = 0; jj < nk; ++jj) {
    const St* vr = vb + (j0 + jj) * p.v_j;
    prefetch_row(vr + kPrefetchRows * p.v_j, f.Ev);
    if (f.v_direct) {
      add_pv(jj, vr);
    } else {
      for (int64_t e = 0; e < f.EvPad; ++e) f.Vrow[e] = e < f.Ev ? widen(vr[e * p.v_e]) : T(0);
      add_pv(jj, static_cast<const T*>(f.Vrow));
    }
  }
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
