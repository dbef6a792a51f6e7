// Few rows (M <= kDotRows in float32/float64, M <= kGemvRows in half precision) or few columns with an
// unpacked weight: the product as dot products that read W once, in place, without packing it.
// Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include "cpu/gemm_blocked.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// s[j] = dot(x, y_j) for j < n <= kGemvRows, K long: x read once, the y_j in step with it.
// (S: the storage type; half precision is widened as it is loaded, the sums are float.)
template <class S>
inline void dots(const S* x, const S* const* ys, int64_t n, int64_t K, Compute<S>* s) {
  typedef Compute<S> T;
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  V acc[kGemvRows];
  for (int64_t j = 0; j < n; ++j) acc[j] = V{};
  int64_t kk = 0;
  for (; kk + W <= K; kk += W) {
    const V xv = vload_as<T>(x + kk);
    for (int64_t j = 0; j < n; ++j) acc[j] += vload_as<T>(ys[j] + kk) * xv;
  }
  for (int64_t j = 0; j < n; ++j) {
    T t = 0;
    for (int l = 0; l < W; ++l) t += acc[j][l];
    for (int64_t k = kk; k < K; ++k) t += widen(ys[j][k]) * widen(x[k]);
    s[j] = t;
  }
}

// out[m][n] = act(dot + bias[n]), narrowed to the storage type (both dot-product paths).
template <class T>
inline void gemv_store(const GemmRun<T>& run, int64_t m, int64_t n, Compute<T> dot) {
  const GemmProblem& p = *run.p;
  run.out[m * p.ldc + n] = narrow<T>(act_scalar(dot + (run.bias ? widen(run.bias[n * p.bias_s]) : Compute<T>(0)), p.act));
}

// Few rows (M <= kGemvRows): out[m][n] = dot(a_m, w_n) over n, each row of W read once, in place.
template <class T>
void gemv_task(void* ctx, int64_t begin, int64_t end, int) {
  const GemmRun<T>& run = *static_cast<const GemmRun<T>*>(ctx);
  const GemmProblem& p = *run.p;
  const T* rows[kGemvRows];
  Compute<T> s[kGemvRows];
  for (int64_t m = 0; m < p.M; ++m) rows[m] = run.a + gemm_row_offset(p, m);
  for (int64_t n = begin; n < end; ++n) {
    const T* wr = run.w + n * p.w_n;
    prefetch_row(wr + kPrefetchRows * p.w_n, p.K);
    dots(wr, rows, p.M, p.K, s);
    for (int64_t m = 0; m < p.M; ++m) gemv_store(run, m, n, s[m]);
  }
}

// Few columns (N <= kGemvRows): the same over m, each row of A read once (packing W into
// NR-wide panels would pad it NR / N times).
template <class T>
void gemv_columns_task(void* ctx, int64_t begin, int64_t end, int) {
  const GemmRun<T>& run = *static_cast<const GemmRun<T>*>(ctx);
  const GemmProblem& p = *run.p;
  const T* wrows[kGemvRows];
  Compute<T> s[kGemvRows];
  for (int64_t n = 0; n < p.N; ++n) wrows[n] = run.w + n * p.w_n;
  for (int64_t m = begin; m < end; ++m) {
    const T* ar = run.a + gemm_row_offset(p, m);
    dots(ar, wrows, p.N, p.K, s);
    for (int64_t n = 0; n < p.N; ++n) gemv_store(run, m, n, s[n]);
  }
}

// ---------------------------------------------------------------------------------------------
// Few rows, float32 / float64, W strided (unpacked): out = A W^T as a register tile of dot
// products, kDotA rows of A x kDotW rows of W (accumulators kDotA x kDotW vectors, one load of A
// and of W per kDotW and kDotA of their FMAs), W read once, in place, row by row as stored: no
// panel to pack (packing 9.4 MB of W costs more than 32 rows of products with it). A work item
// is kDotW rows of W against every row of A, the depth in chunks of kDotChunkBytes (kDotW rows of W stay in
// L1 while A's rows pass); the tile's vector sums wait in a per-thread buffer between chunks and are
// reduced once at the end (sum_lanes: W vectors at a time).
template <class T>
struct DotRun {
  const GemmRun<T>* run;
  const T* rows[kDotRows];  // A's rows (gemm_row_offset: any row strides)
  int64_t per_item = 0;     // row_runs_task: W rows an item
};

template <class T, int RA>
inline void dot_tile(const T* const* a, const T* const* w, int64_t k0, int64_t k1, typename Simd<T>::V* acc, bool first) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, RW = kDotW;
  V s[RA][RW];
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < RW; ++j) s[i][j] = first ? V{} : acc[i * RW + j];
  for (int64_t k = k0; k < k1; k += W) {
    V av[RA];
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i) av[i] = vload(a[i] + k);
#pragma GCC unroll 8
    for (int j = 0; j < RW; ++j) {
      const V wv = vload(w[j] + k);
#pragma GCC unroll 8
      for (int i = 0; i < RA; ++i) s[i][j] += av[i] * wv;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < RW; ++j) acc[i * RW + j] = s[i][j];
}

template <class T>
void dot_rows_task(void* ctx, int64_t begin, int64_t end, int tid) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, RA = kDotA, RW = kDotW;
  const DotRun<T>& dr = *static_cast<const DotRun<T>*>(ctx);
  const GemmRun<T>& run = *dr.run;
  const GemmProblem& p = *run.p;
  V* acc = run.ws.template get<V>(tid);
  const int64_t kv = p.K / W * W;  // the vector part of the depth; the rest (< W) in scalars at the end
  for (int64_t g = begin; g < end; ++g) {
    const int64_t n0 = g * RW;
    const T* w[RW];
    for (int j = 0; j < RW; ++j) w[j] = run.w + imin(n0 + j, p.N - 1) * p.w_n;  // past N: a repeat, not stored
    constexpr int64_t KC = kDotChunkBytes / static_cast<int64_t>(sizeof(T));
    for (int64_t k0 = 0; k0 < kv || k0 == 0; k0 += KC) {
      const int64_t k1 = imin(kv, k0 + KC);
      for (int64_t m = 0; m < p.M; m += RA) {
        const T* a[RA];
        for (int i = 0; i < RA; ++i) a[i] = dr.rows[imin(m + i, p.M - 1)];
        V* t = acc + m * RW;
        switch (imin(RA, p.M - m)) {  // rows past M would only repeat the last one
#define ATTNKIT_DOT_CASE(r) case r: if constexpr (r <= RA) dot_tile<T, r>(a, w, k0, k1, t, k0 == 0); break;
          ATTNKIT_DOT_CASE(1) ATTNKIT_DOT_CASE(2) ATTNKIT_DOT_CASE(3) ATTNKIT_DOT_CASE(4)
          ATTNKIT_DOT_CASE(5) ATTNKIT_DOT_CASE(6)
#undef ATTNKIT_DOT_CASE
          default: break;
        }
      }
    }
    // a tile of r < RA rows wrote r * RW vectors: vector m * RW + j is row m, W row j throughout
    const int64_t nj = imin(RW, p.N - n0), used = p.M * RW;
    for (int64_t v = used; v < ceil_div(used, W) * W; ++v) acc[v] = V{};  // what the sums below read past `used`
    for (int64_t v0 = 0; v0 < used; v0 += W) {
      T sums[W];
      if constexpr (std::is_same<T, float>::value) {
        const V r = sum_lanes(acc + v0);
        for (int l = 0; l < W; ++l) sums[lane_slot(l)] = r[l];
      } else {
        for (int l = 0; l < W; ++l) {
          T t = 0;
          for (int e = 0; e < W; ++e) t += acc[v0 + l][e];
          sums[l] = t;
        }
      }
      for (int l = 0; l < W && v0 + l < used; ++l) {
        const int64_t m = (v0 + l) / RW, j = (v0 + l) % RW;
        if (j >= nj) continue;
        T d = sums[l];
        for (int64_t k = kv; k < p.K; ++k) d += dr.rows[m][k] * w[j][k];
        gemv_store(run, m, n0 + j, d);
      }
    }
  }
}

// One row of A (decoding) with an unpacked float W: item `it`, a range of W's rows, split into kRowStreams
// runs of consecutive rows read side by side (RowStreams), a row of each run a step, two accumulators a
// row, each run's bytes asked for kRowPrefetchBytes ahead; a run's last row past the others' by itself.
template <class T>
void row_runs_task(void* ctx, int64_t begin, int64_t end, int) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W, NS = kRowStreams;
  const DotRun<T>& dr = *static_cast<const DotRun<T>*>(ctx);
  const GemmRun<T>& run = *dr.run;
  const GemmProblem& p = *run.p;
  const T* x = dr.rows[0];
  const int64_t kv = p.K / (2 * W) * (2 * W);
  for (int64_t it = begin; it < end; ++it) {
    const int64_t r0 = imin(p.N, it * dr.per_item);
    const RowStreams st(r0, imin(p.N, r0 + dr.per_item));
    for (int64_t i = 0; i < st.steps; ++i) {
      if (!st.full(i)) {
        for (int j = 0; j < NS; ++j) {
          if (i >= st.len(j)) continue;
          T d;
          dots(run.w + st.at(j, i) * p.w_n, &x, 1, p.K, &d);
          gemv_store(run, 0, st.at(j, i), d);
        }
        continue;
      }
      const T* w[NS];
      V a0[NS], a1[NS];
      for (int j = 0; j < NS; ++j) {
        w[j] = run.w + st.at(j, i) * p.w_n;
        a0[j] = a1[j] = V{};
      }
      for (int64_t k = 0; k < kv; k += 2 * W) {
        const V x0 = vload(x + k), x1 = vload(x + k + W);
#pragma GCC unroll 8
        for (int j = 0; j < NS; ++j)  // each run asked for kRowPrefetchBytes ahead (into the run's next row)
          for (size_t off = 0; off < 2 * sizeof(V); off += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(w[j] + k) + kRowPrefetchBytes + off);
#pragma GCC unroll 8
        for (int j = 0; j < NS; ++j) {
          a0[j] += vload(w[j] + k) * x0;
          a1[j] += vload(w[j] + k + W) * x1;
        }
      }
      for (int j = 0; j < NS; ++j) {
        const V t = a0[j] + a1[j];
        T d = 0;
        for (int l = 0; l < W; ++l) d += t[l];
        for (int64_t k = kv; k < p.K; ++k) d += x[k] * w[j][k];
        gemv_store(run, 0, st.at(j, i), d);
      }
    }
  }
}

// Strided W with few rows or few columns: dot products (dot_rows_task, gemv_task,
// gemv_columns_task). kDotsNone: not this problem; kDotsDone; kDotsNoMemory.
enum DotsStatus { kDotsNone, kDotsDone, kDotsNoMemory };
template <class T>
DotsStatus gemm_dots(const GemmProblem& p, GemmRun<T>& run, int nt) {
  if (p.packed || p.a_k != 1 || p.w_k != 1) return kDotsNone;
  if constexpr (!is_half<T>()) {
    if (p.M <= kDotRows && p.N > kGemvRows) {
      DotRun<T> dr;
      dr.run = &run;
      for (int64_t m = 0; m < p.M; ++m) dr.rows[m] = run.a + gemm_row_offset(p, m);
      if (p.M == 1) {
        const int64_t items = imin(ceil_div(p.N, kRowStreams), kDotRowItems * nt);
        dr.per_item = ceil_div(p.N, items);
        parallel_for(ceil_div(p.N, dr.per_item), 1, row_runs_task<T>, &dr, nt);
        return kDotsDone;
      }
      // a thread's accumulator vectors: M rounded up to kDotA, x kDotW, rounded up to W (the lane sums' reach)
      const int64_t nacc = ceil_div(ceil_div(p.M, kDotA) * kDotA * kDotW, Simd<T>::W) * Simd<T>::W;
      if (!run.ws.alloc(nt, sizeof(typename Simd<T>::V) * static_cast<size_t>(nacc))) return kDotsNoMemory;
      parallel_for(ceil_div(p.N, kDotW), 4, dot_rows_task<T>, &dr, nt);
      return kDotsDone;
    }
  }
  if (p.M <= kGemvRows) {
    parallel_for(p.N, 64, gemv_task<T>, &run, nt);
    return kDotsDone;
  }
  if (p.N <= kGemvRows) {
    parallel_for(p.M, 16, gemv_columns_task<T>, &run, nt);
    return kDotsDone;
  }
  return kDotsNone;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
