// GEMM for one ISA: out (M, N) = act(A (M, K) @ W (N, K)^T + bias), float32 and float64.
// Blocked as in GotoBLAS: W^T is packed once per call into KC x NR panels (shared by all
// threads); each work item packs an MC x KC block of A and sweeps its panels, a KC x NR panel of
// W^T staying in L1 while the A block streams from L2. For few rows and an unpacked weight (M <= kDotRows
// in float32/float64, M <= kGemvRows in half precision) the product is a set of dot products that read W
// once, in place.
// Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attnkit/problems.h"
#include "cpu/micro_kernel.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

template <class T>
struct GemmRun {
  const GemmProblem* p = nullptr;
  const T *a = nullptr, *w = nullptr, *bias = nullptr;
  T* out = nullptr;
  int64_t nmb = 0, nnb = 0, npan = 0, pan_per_nb = 0, nkc = 0;
  int64_t mc = kGemmMC;  // rows per row block (<= kGemmMC; gemm_blocks balances them over the threads)
  const T* bpack = nullptr;  // W^T as [nkc][npan][klen][NR]: prepacked, or packed for this call
  T* own_pack = nullptr;     // ... into this
  bool a_direct = false;     // A's rows read in place (row stride lda, unit stride along K)
  const GemmProblem* gated = nullptr;  // SwiGLU: the caller's problem; p then writes a scratch of gate/up panels
  int64_t lda = 0;
  Workspace ws;
  T* own_scratch = nullptr;  // gated: M x (panels * NR)
  float* biasf = nullptr;    // half precision: the bias widened (owned)
  int64_t ldcb = 0;          // half precision: row stride of the per-thread float C block
  ~GemmRun() { std::free(own_pack); std::free(own_scratch); std::free(biasf); }
};

// W[n][k] of a weight packed in any layout (panel width pc, depth block kb).
template <class T>
inline T packed_at(const PackedWeight& w, int64_t n, int64_t k) {
  const int64_t pc = w.panel_cols, kb = w.depth_block, npan = (w.N + pc - 1) / pc, g = w.depth_group;
  const int64_t kc = k / kb, klen = ceil_div(imin(kb, w.K - kc * kb), g) * g, kk = k % kb;
  const int64_t c = w.gated ? gated_column(n, w.N, pc) : n;  // the panel column of row n
  return static_cast<const T*>(w.data.get())[kc * kb * npan * pc + (c / pc) * klen * pc + (kk / g) * pc * g + (c % pc) * g + kk % g];
}

// The packed layout of W^T for storage type T on this path: [K / kDepthBlock][panels][depth /
// kDepthGroup][kPanelCols][kDepthGroup], a block's depth rounded up to the group with zeros.
// Panels are as wide as the micro-tile (half precision as wide as float's); the depth group is
// 2 for bfloat16 on AVX-512-BF16 and AMX (vdpbf16ps and tdpbf16ps multiply pairs along the
// depth); AMX packs bfloat16 in panels one B tile wide and whole tiles deep (gemm_amx.h).
template <class T> constexpr int kPanelCols = kNV * Simd<Compute<T>>::W;
template <class T> constexpr int64_t kDepthBlock = kGemmKC;
template <class T> constexpr int kDepthGroup = 1;
template <class T> constexpr bool kAmxGemm = false;  // the half precision GEMM on AMX tiles
template <class T> constexpr int64_t kRowUnit = kMR;   // row blocks are a multiple of this (gemm_blocks)
#if defined(__AVX512BF16__)
template <> constexpr int kDepthGroup<bf16_t> = 2;
#endif
#if defined(ATTNKIT_AMX)
template <> constexpr bool kAmxGemm<bf16_t> = true;
template <> constexpr int kPanelCols<bf16_t> = kAmxCols;
template <> constexpr int64_t kDepthBlock<bf16_t> = kAmxKC;
template <> constexpr int64_t kRowUnit<bf16_t> = 2 * kAmxRows;  // two row tiles a block
// bfloat16 on tiles (gemm_amx.h, included after this file by kernels.cpp)
template <class S> void gemm_task_amx(void* ctx, int64_t begin, int64_t end, int tid);
template <class S> size_t gemm_amx_workspace(int64_t ldcb);
#endif

// The packed panels: for depth block kc, panel pn, depth kk < klen, column jj < kPanelCols.
template <class T>
inline int64_t gemm_panels(int64_t N) { return ceil_div(N, kPanelCols<T>); }

inline int64_t gemm_row_offset(const GemmProblem& p, int64_t m) {
  int64_t off = 0;
  for (int d = p.nrow_dims - 1; d >= 0; --d) {
    int64_t s = p.row_shape[d];
    off += (m % s) * p.row_strides[d];
    m /= s;
  }
  return off;
}

// rows x cols of C (row stride ldc) starting at column n0: += bias, then the activation.
template <class T>
void gemm_epilogue(const GemmRun<T>& run, T* c, int64_t rows, int64_t cols, int64_t n0) {
  const GemmProblem& p = *run.p;
  if (!run.bias && p.act == Activation::none) return;
  for (int64_t r = 0; r < rows; ++r) {
    T* row = c + r * p.ldc;
    if (!run.bias || p.bias_s == 1) {
      act_row(row, run.bias ? run.bias + n0 : nullptr, row, cols, p.act);
    } else {
      for (int64_t j = 0; j < cols; ++j) row[j] = act_scalar(row[j] + run.bias[(n0 + j) * p.bias_s], p.act);
    }
  }
}

// SwiGLU: rows of the scratch panel pn (gate features f0 .. f0 + NR/2 in its first half, the
// same up features in its second) -> out[m][f] = silu(gate + b_gate) * (up + b_up).
template <class T>
void gated_epilogue(const GemmRun<T>& run, const T* c, int64_t rows, int64_t m, int64_t pn) {
  constexpr int W = Simd<T>::W, NR = kNV * W, H = NR / 2;
  const GemmProblem& g = *run.gated;
  const int64_t F = g.N / 2, f0 = pn * H, nf = imin(H, F - f0);
  const T* bias = static_cast<const T*>(g.bias);
  T* out = static_cast<T*>(g.out);
  for (int64_t r = 0; r < rows; ++r) {
    const T* cr = c + r * run.p->ldc;
    T* orow = out + (m + r) * g.ldc + f0;
    int64_t j = 0;
    if constexpr (sizeof(T) == 4 && H % W == 0) {
      if (!bias && nf == H)
        for (; j < H; j += W) vstore(orow + j, act_vec(vload(cr + j), Activation::silu) * vload(cr + H + j));
    }
    for (; j < nf; ++j) {
      T gt = cr[j], up = cr[H + j];
      if (bias) { gt += bias[(f0 + j) * g.bias_s]; up += bias[(F + f0 + j) * g.bias_s]; }
      orow[j] = act_scalar(gt, Activation::silu) * up;
    }
  }
}

// W^T's panel pn of depth block kc: dst[(kk / G) * NR * G + jj * G + kk % G] = W[n(jj)][k0 + kk], the
// depth padded to G and columns past N with zeros. float/double with unit stride along K: blocks of W
// depths x W columns loaded as W's rows and transposed in registers (3072 x 768 on one thread: 1.4 ms, a
// scalar copy of 16-deep blocks 5.0 ms; bench/NOTES.md); the rest (tails,
// half precision, depth pairs, strided W) in scalar blocks of 16 depths x the panel's columns.
template <class T>
void gemm_pack_task(void* ctx, int64_t begin, int64_t end, int) {
  GemmRun<T>& run = *static_cast<GemmRun<T>*>(ctx);
  const GemmProblem& p = *run.p;
  constexpr int NR = kPanelCols<T>, G = kDepthGroup<T>;
  constexpr int64_t KB = kDepthBlock<T>, KK = 16;
  for (int64_t it = begin; it < end; ++it) {
    const int64_t kc = it / run.npan, pn = it % run.npan;
    const int64_t k0 = kc * KB, klen = imin(KB, p.K - k0), kpad = ceil_div(klen, G) * G;
    T* dst = run.own_pack + kc * KB * run.npan * NR + pn * kpad * NR;
    int64_t src[NR];  // the W row of each panel column; -1: past N (zeros)
    for (int jj = 0; jj < NR; ++jj) {
      int64_t n = pn * NR + jj;
      if (p.gated) {  // gated: gate features pn*NR/2 + jj in the first half, the same up features after
        const int64_t F = p.N / 2, f = pn * (NR / 2) + jj % (NR / 2);
        n = f >= F ? p.N : jj < NR / 2 ? f : F + f;
      }
      src[jj] = n < p.N ? n : -1;
    }
    auto at = [&](int64_t kk, int jj) -> T& { return dst[(kk / G) * NR * G + jj * G + kk % G]; };
    if (p.packed) {  // from another layout
      for (int jj = 0; jj < NR; ++jj)
        for (int64_t kk = 0; kk < kpad; ++kk) at(kk, jj) = src[jj] >= 0 && kk < klen ? packed_at<T>(*p.packed, src[jj], k0 + kk) : T{};
      continue;
    }
    int64_t kb = 0;
    if constexpr (G == 1 && !is_half<T>()) {  // whole blocks of W depths x W columns: transposed in registers
      typedef typename Simd<T>::V V;
      constexpr int W = Simd<T>::W;
      static_assert(NR % W == 0, "panels of whole vectors");
      if (p.w_k == 1) {
        for (; kb + W <= klen; kb += W) {
          for (int jb = 0; jb < NR; jb += W) {
            V v[W];
            for (int r = 0; r < W; ++r) {
              const T* wr = src[jb + r] >= 0 ? run.w + src[jb + r] * p.w_n + k0 + kb : nullptr;
              v[r] = wr ? vload(wr) : V{};
              if (wr) __builtin_prefetch(wr + 4 * W);
            }
            transpose_square(v);
            for (int i = 0; i < W; ++i) vstore(dst + (kb + i) * NR + jb, v[i]);
          }
        }
      }
    }
    for (; kb < klen; kb += KK) {
      const int64_t kn = imin(KK, klen - kb);
      for (int jj = 0; jj < NR; ++jj) {
        if (src[jj] < 0) {
          for (int64_t kk = kb; kk < kb + kn; ++kk) at(kk, jj) = T{};
          continue;
        }
        const T* wr = run.w + src[jj] * p.w_n + (k0 + kb) * p.w_k;
        if (p.w_k == 1 && kn == KK) {
#pragma GCC unroll 16
          for (int64_t kk = 0; kk < KK; ++kk) at(kb + kk, jj) = wr[kk];
        } else {
          for (int64_t kk = 0; kk < kn; ++kk) at(kb + kk, jj) = wr[kk * p.w_k];
        }
      }
    }
    for (int64_t kk = klen; kk < kpad; ++kk)
      for (int jj = 0; jj < NR; ++jj) at(kk, jj) = T{};
  }
}

// Work item `it` of the panel GEMM: rows m0 .. m0 + mlen, panels pn0 .. pn1.
struct GemmItem { int64_t m0, mlen, pn0, pn1; };
template <class T>
inline GemmItem gemm_item(const GemmRun<T>& run, int64_t it) {
  const int64_t m0 = it / run.nnb * run.mc, pn0 = it % run.nnb * run.pan_per_nb;
  return {m0, imin(run.mc, run.p->M - m0), pn0, imin(run.npan, pn0 + run.pan_per_nb)};
}

template <class T>
void gemm_task(void* ctx, int64_t begin, int64_t end, int tid) {
  GemmRun<T>& run = *static_cast<GemmRun<T>*>(ctx);
  const GemmProblem& p = *run.p;
  constexpr int NR = kNV * Simd<T>::W;
  T* tile = run.ws.template get<T>(tid);  // kMR x NR, for partial panels
  T* Ap = tile + kMR * NR;                // kGemmMC x kGemmKC, when A is packed
  for (int64_t it = begin; it < end; ++it) {
    const auto [m0, mlen, pn0, pn1] = gemm_item(run, it);
    const int64_t nip = ceil_div(mlen, kMR);
    for (int64_t kc = 0; kc < run.nkc; ++kc) {
      const int64_t k0 = kc * kGemmKC, klen = imin(kGemmKC, p.K - k0);
      const bool first = kc == 0, last = kc == run.nkc - 1;
      if (!run.a_direct) {
        for (int64_t ip = 0; ip < nip; ++ip) {  // pack A panels: Ap[ip][k][kMR]
          T* dst = Ap + ip * klen * kMR;
          for (int r = 0; r < kMR; ++r) {
            const int64_t m = m0 + ip * kMR + r;
            if (m < m0 + mlen) {
              const T* ar = run.a + gemm_row_offset(p, m) + k0 * p.a_k;
              for (int64_t kk = 0; kk < klen; ++kk) dst[kk * kMR + r] = ar[kk * p.a_k];
            } else {
              for (int64_t kk = 0; kk < klen; ++kk) dst[kk * kMR + r] = T(0);
            }
          }
        }
      }
      const T* bk = run.bpack + kc * kGemmKC * run.npan * NR;
      for (int64_t pn = pn0; pn < pn1; ++pn) {
        const int64_t cols = imin(NR, p.N - pn * NR);
        const T* b = bk + pn * klen * NR;
        // the next panel (contiguous after this one) comes from memory while this one is used:
        // each row block asks for its share of it (a model's weights are cold, read once per call)
        const char* next = pn + 1 < pn1 && nip >= 4 ? reinterpret_cast<const char*>(b + klen * NR) : nullptr;
        const int64_t share = ceil_div(klen * NR * static_cast<int64_t>(sizeof(T)), nip * 64) * 64;
        for (int64_t ip = 0; ip < nip; ++ip) {
          if (next)
            for (int64_t off = ip * share; off < (ip + 1) * share; off += 64) __builtin_prefetch(next + off);
          const int rows = static_cast<int>(imin(kMR, mlen - ip * kMR));
          T* c = run.out + (m0 + ip * kMR) * p.ldc + pn * NR;
          const T* a = run.a_direct ? run.a + (m0 + ip * kMR) * run.lda + k0 : Ap + ip * klen * kMR;
          const int64_t lda = run.a_direct ? run.lda : kMR;
          T* dst = c;
          int64_t ldc = p.ldc;
          if (cols < NR) {  // a partial panel: through a full-width tile
            dst = tile;
            ldc = NR;
            if (!first)
              for (int64_t r = 0; r < rows; ++r) std::memcpy(tile + r * NR, c + r * p.ldc, cols * sizeof(T));
          }
          if (run.a_direct) {
            if (first) micro_rows<T, false, false>(rows, klen, a, lda, b, NR, dst, ldc);
            else micro_rows<T, false, true>(rows, klen, a, lda, b, NR, dst, ldc);
          } else if (rows == kMR) {
            if (first) micro<T, kMR, true, false>(klen, a, lda, b, NR, dst, ldc);
            else micro<T, kMR, true, true>(klen, a, lda, b, NR, dst, ldc);
          } else {
            if (first) micro_rows<T, true, false>(rows, klen, a, lda, b, NR, dst, ldc);
            else micro_rows<T, true, true>(rows, klen, a, lda, b, NR, dst, ldc);
          }
          if (cols < NR)
            for (int64_t r = 0; r < rows; ++r) std::memcpy(c + r * p.ldc, tile + r * NR, cols * sizeof(T));
          if (last) gemm_epilogue(run, c, rows, cols, pn * NR);
          if (last && run.gated) gated_epilogue(run, c, rows, m0 + ip * kMR, pn);
        }
      }
    }
  }
}

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
  int64_t nacc;             // vectors per item's buffer: M rounded up to kDotA, x kDotW, rounded up to W
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
    for (int64_t v = used; v < dr.nacc; ++v) acc[v] = V{};
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

// A's rows in place when they are evenly spaced (any row stride: negative for reversed rows, 0
// for broadcast ones) with unit stride along K; otherwise A is packed (gemm_task reads it through
// gemm_row_offset, any strides).
inline bool uniform_rows(const GemmProblem& p, int64_t* lda) {
  return p.a_k == 1 && even_row_stride(p.row_shape, p.row_strides, p.nrow_dims, p.K, lda);
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
      dr.nacc = ceil_div(ceil_div(p.M, kDotA) * kDotA * kDotW, Simd<T>::W) * Simd<T>::W;
      if (!run.ws.alloc(nt, sizeof(typename Simd<T>::V) * static_cast<size_t>(dr.nacc))) return kDotsNoMemory;
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

// The blocking of the panel GEMM: depth blocks, panels, row blocks, and panels per work item (at most
// max_panels), N split only when M is short.
template <class T>
void gemm_blocks(const GemmProblem& p, GemmRun<T>& run, int nt, int64_t max_panels) {
  run.nkc = imax(1, ceil_div(p.K, kDepthBlock<T>));
  run.npan = gemm_panels<T>(p.N);
  run.mc = kGemmMC;
  run.nmb = ceil_div(p.M, kGemmMC);
  if (run.nmb > 1 && nt > 1) {
    // Row blocks of even height, as many as spread evenly over the threads: with blocks of
    // kGemmMC, 1024 rows are 5 x 192 + 64, and one thread of two works 576 rows while the
    // other works 448 (89 % of the pair's time). Of the block counts that are multiples of the
    // thread count (up to 4 rounds more), take the one whose busiest thread has the fewest rows.
    int64_t best = -1;
    for (int64_t n = ceil_div(run.nmb, nt) * nt; n <= ceil_div(run.nmb, nt) * nt + 4 * nt; n += nt) {
      const int64_t mc = imin(kGemmMC, ceil_div(ceil_div(p.M, n), kRowUnit<T>) * kRowUnit<T>);
      const int64_t busiest = ceil_div(ceil_div(p.M, mc), nt) * mc;
      if (best < 0 || busiest < best) { best = busiest; run.mc = mc; }
    }
    run.nmb = ceil_div(p.M, run.mc);
  }
  // split N only when M is short; a single row block into 8 items a thread, so that a thread that
  // joins late (a worker waking from sleep) still finds a share of a short call
  run.nnb = imin(run.npan, imax(1, run.nmb == 1 ? 8 * nt : ceil_div(2 * nt, run.nmb)));
  run.pan_per_nb = imin(ceil_div(run.npan, run.nnb), imax(1, max_panels));
  run.nnb = ceil_div(run.npan, run.pan_per_nb);
}

template <class T>
size_t gemm_packed_bytes(const GemmProblem& p, int64_t* panel_cols, int64_t* depth_block, int* depth_group) {
  constexpr int NR = kPanelCols<T>;
  *panel_cols = NR;
  *depth_block = kDepthBlock<T>;
  *depth_group = kDepthGroup<T>;
  return sizeof(T) * static_cast<size_t>(imax(1, ceil_div(p.K, kDepthGroup<T>) * kDepthGroup<T>) * gemm_panels<T>(p.N) * NR);
}

template <class T>
int gemm_pack(const GemmProblem& p, T* dst) {
  GemmRun<T> run;
  run.p = &p;
  run.w = static_cast<const T*>(p.w);
  run.own_pack = dst;
  run.npan = gemm_panels<T>(p.N);
  run.nkc = imax(1, ceil_div(p.K, kDepthBlock<T>));
  parallel_for(run.nkc * run.npan, 4, gemm_pack_task<T>, &run, num_threads());
  run.own_pack = nullptr;  // the caller's
  return 0;
}

// A run's pointers from its problem (both GEMMs).
template <class T>
void gemm_start(GemmRun<T>& run, const GemmProblem& p) {
  run.p = &p;
  run.a = static_cast<const T*>(p.a);
  run.w = static_cast<const T*>(p.w);
  run.bias = static_cast<const T*>(p.bias);
  run.out = static_cast<T*>(p.out);
}

// W^T's panels for the run: the prepacked weight, or W packed for this call. false: out of memory.
template <class T>
bool gemm_bpack(GemmRun<T>& run, const GemmProblem& p, int nt) {
  if (p.packed) {
    run.bpack = static_cast<const T*>(p.packed->data.get());
    return true;
  }
  run.own_pack = static_cast<T*>(std::malloc(sizeof(T) * static_cast<size_t>(run.nkc * kDepthBlock<T> * run.npan * kPanelCols<T>)));
  if (!run.own_pack) return false;
  parallel_for(run.nkc * run.npan, 4, gemm_pack_task<T>, &run, nt);
  run.bpack = run.own_pack;
  return true;
}

template <class T>
int gemm_impl(const GemmProblem& p) {
  if (p.M == 0 || p.N == 0) return 0;
  constexpr int NR = kNV * Simd<T>::W;
  GemmRun<T> run;
  gemm_start(run, p);
  const int nt = num_threads();
  GemmProblem scratch_p;  // gated: the GEMM into a scratch of whole panels, out written by gated_epilogue
  if (p.gated) {
    scratch_p = p;
    scratch_p.gated = false;
    scratch_p.bias = nullptr;
    scratch_p.act = Activation::none;
    scratch_p.N = gemm_panels<T>(p.N) * NR;
    scratch_p.ldc = scratch_p.N;
    run.own_scratch = static_cast<T*>(std::malloc(sizeof(T) * static_cast<size_t>(p.M * scratch_p.N)));
    if (!run.own_scratch) return 1;
    scratch_p.out = run.own_scratch;
    run.gated = &p;
    run.p = &scratch_p;
    run.out = run.own_scratch;
    run.bias = nullptr;
  }
  if (const DotsStatus d = gemm_dots(p, run, nt); d != kDotsNone) return d == kDotsDone ? 0 : 1;
  gemm_blocks(p, run, nt, int64_t(1) << 40);  // no cap on the panels per item
  // A read in place whenever its rows allow it: 8-20 % faster than packing it at 128-512 rows
  // (bench/NOTES.md), no slower at 4096; packed only for rows that are not evenly spaced
  run.a_direct = uniform_rows(p, &run.lda);
  if (!run.ws.alloc(nt, sizeof(T) * ((run.a_direct ? 0 : kGemmMC * kGemmKC) + kMR * NR))) return 1;
  if (!gemm_bpack(run, p, nt)) return 1;
  parallel_for(run.nmb * run.nnb, 1, gemm_task<T>, &run, nt);
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Half precision (float16, bfloat16) GEMM: W^T packed in panels of S (half the bytes; the
// micro-kernel widens each B row as it loads it), A blocks widened into float as they are packed,
// products accumulated in a per-thread float block of C (kGemmMC rows x the item's panels), bias,
// activation (or the SwiGLU gate) applied in float and the result narrowed once.
#if defined(__AVX512BF16__)
// AVX-512-BF16 micro-kernel: C[MR x 32] (+)= A[MR x 2K2] B[2K2 x 32] with vdpbf16ps (pairs of
// bf16 products summed into fp32). a: [K2][kMR] pairs of row r (32 bits each); b: [K2][32][2].
template <int MR, bool ACC>
inline void micro_dp(int64_t K2, const uint32_t* a, const bf16_t* b, float* c, int64_t ldc) {
  __m512 acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = ACC ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
    acc[r][1] = ACC ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < K2; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * 64), b1 = (__m512bh)_mm512_loadu_si512(b + k * 64 + 32);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[k * kMR + r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, acc[r][0]);
    _mm512_storeu_ps(c + r * ldc + 16, acc[r][1]);
  }
}
template <bool ACC>
inline void micro_dp_rows(int rows, int64_t K2, const uint32_t* a, const bf16_t* b, float* c, int64_t ldc) {
  switch (rows) {
#define ATTNKIT_MICRO_DP_CASE(n) \
    case n: if constexpr (n <= kMR) micro_dp<n, ACC>(K2, a, b, c, ldc); break;
    ATTNKIT_MICRO_DP_CASE(1) ATTNKIT_MICRO_DP_CASE(2) ATTNKIT_MICRO_DP_CASE(3) ATTNKIT_MICRO_DP_CASE(4)
    ATTNKIT_MICRO_DP_CASE(5) ATTNKIT_MICRO_DP_CASE(6) ATTNKIT_MICRO_DP_CASE(7) ATTNKIT_MICRO_DP_CASE(8)
#undef ATTNKIT_MICRO_DP_CASE
    default: break;
  }
}
#endif

// The end of a half precision product: rows x (panel pn) of the float C block c (row stride
// ldcb), for out's rows m.. : bias, activation or the SwiGLU gate in float, narrowed into out.
template <class S>
void half_epilogue(const GemmRun<S>& run, float* c, int64_t ldcb, int64_t rows, int64_t m, int64_t pn) {
  const GemmProblem& p = *run.p;
  constexpr int NR = kPanelCols<S>, H = NR / 2;
  S* out = static_cast<S*>(p.out);
  if (p.gated) {  // out[m][f] = silu(gate + b_gate) * (up + b_up), f = pn * H + j
    const int64_t F = p.N / 2, f0 = pn * H, nf = imin(H, F - f0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* cr = c + r * ldcb;
      S* orow = out + (m + r) * p.ldc + f0;
      for (int64_t j = 0; j < nf; ++j) {
        float gt = cr[j], up = cr[H + j];
        if (run.biasf) { gt += run.biasf[f0 + j]; up += run.biasf[F + f0 + j]; }
        orow[j] = narrow<S>(act_scalar(gt, Activation::silu) * up);
      }
    }
  } else {
    const int64_t cols = imin(NR, p.N - pn * NR);
    for (int64_t r = 0; r < rows; ++r) {
      float* cr = c + r * ldcb;
      if (run.biasf || p.act != Activation::none) act_row(cr, run.biasf ? run.biasf + pn * NR : nullptr, cr, cols, p.act);
      narrow_row(static_cast<const float*>(cr), out + (m + r) * p.ldc + pn * NR, 1, cols);
    }
  }
}

template <class S>
void gemm_task_half(void* ctx, int64_t begin, int64_t end, int tid) {
  GemmRun<S>& run = *static_cast<GemmRun<S>*>(ctx);
  const GemmProblem& p = *run.p;
  constexpr int NR = kNV * Simd<float>::W;
  const int64_t ldcb = run.ldcb;
  float* C = run.ws.template get<float>(tid);  // kGemmMC x ldcb
  float* Ap = C + kGemmMC * ldcb;              // kGemmMC x kGemmKC
  float* Bw = Ap + kGemmMC * kGemmKC;          // kGemmKC x NR: a panel of W^T, widened once for all row panels
  for (int64_t it = begin; it < end; ++it) {
    const auto [m0, mlen, pn0, pn1] = gemm_item(run, it);
    const int64_t nip = ceil_div(mlen, kMR);
    for (int64_t kc = 0; kc < run.nkc; ++kc) {
      const int64_t k0 = kc * kGemmKC, klen = imin(kGemmKC, p.K - k0);
      const bool first = kc == 0, last = kc == run.nkc - 1;
#if defined(__AVX512BF16__)
      constexpr bool kDp = kDepthGroup<S> == 2;
#else
      constexpr bool kDp = false;
#endif
      const int64_t K2 = ceil_div(klen, 2);
      for (int64_t ip = 0; kDp && ip < nip; ++ip) {  // vdpbf16ps: A panels of depth pairs, Ap[ip][k/2][kMR]
        uint32_t* dst = reinterpret_cast<uint32_t*>(Ap) + ip * K2 * kMR;
        for (int r = 0; r < kMR; ++r) {
          const int64_t m = m0 + ip * kMR + r;
          const S* ar = m < m0 + mlen ? run.a + gemm_row_offset(p, m) + k0 * p.a_k : nullptr;
          for (int64_t k2 = 0; k2 < K2; ++k2) {
            uint32_t lo = 0, hi = 0;
            if (ar) {
              std::memcpy(&lo, ar + 2 * k2 * p.a_k, 2);
              if (2 * k2 + 1 < klen) std::memcpy(&hi, ar + (2 * k2 + 1) * p.a_k, 2);
            }
            dst[k2 * kMR + r] = lo | hi << 16;
          }
        }
      }
      for (int64_t ip = 0; !kDp && ip < nip; ++ip) {  // pack A panels, widened: Ap[ip][k][kMR]
        float* dst = Ap + ip * klen * kMR;
        for (int r = 0; r < kMR; ++r) {
          const int64_t m = m0 + ip * kMR + r;
          if (m < m0 + mlen) {
            const S* ar = run.a + gemm_row_offset(p, m) + k0 * p.a_k;
            for (int64_t kk = 0; kk < klen; ++kk) dst[kk * kMR + r] = widen(ar[kk * p.a_k]);
          } else {
            for (int64_t kk = 0; kk < klen; ++kk) dst[kk * kMR + r] = 0.0f;
          }
        }
      }
      const S* bk = run.bpack + kc * kGemmKC * run.npan * NR;
      for (int64_t pn = pn0; pn < pn1; ++pn) {
        const S* b = bk + pn * (kDp ? 2 * K2 : klen) * NR;
        if (!kDp && nip > 1) widen_row(b, 1, Bw, klen * NR);
        for (int64_t ip = 0; ip < nip; ++ip) {
          const int rows = static_cast<int>(imin(kMR, mlen - ip * kMR));
          float* c = C + ip * kMR * ldcb + (pn - pn0) * NR;
          const float* a = Ap + ip * klen * kMR;
          if constexpr (kDp) {
#if defined(__AVX512BF16__)
            const uint32_t* a2 = reinterpret_cast<const uint32_t*>(Ap) + ip * K2 * kMR;
            if (rows == kMR && first) micro_dp<kMR, false>(K2, a2, b, c, ldcb);
            else if (rows == kMR) micro_dp<kMR, true>(K2, a2, b, c, ldcb);
            else if (first) micro_dp_rows<false>(rows, K2, a2, b, c, ldcb);
            else micro_dp_rows<true>(rows, K2, a2, b, c, ldcb);
#endif
          } else if (nip > 1) {
            if (rows == kMR && first) micro<float, kMR, true, false>(klen, a, kMR, Bw, NR, c, ldcb);
            else if (rows == kMR) micro<float, kMR, true, true>(klen, a, kMR, Bw, NR, c, ldcb);
            else if (first) micro_rows<float, true, false>(rows, klen, a, kMR, Bw, NR, c, ldcb);
            else micro_rows<float, true, true>(rows, klen, a, kMR, Bw, NR, c, ldcb);
          } else if (rows == kMR) {
            if (first) micro<float, kMR, true, false, S>(klen, a, kMR, b, NR, c, ldcb);
            else micro<float, kMR, true, true, S>(klen, a, kMR, b, NR, c, ldcb);
          } else {
            if (first) micro_rows<float, true, false, S>(rows, klen, a, kMR, b, NR, c, ldcb);
            else micro_rows<float, true, true, S>(rows, klen, a, kMR, b, NR, c, ldcb);
          }
          if (last) half_epilogue(run, c, ldcb, rows, m0 + ip * kMR, pn);
        }
      }
    }
  }
}

template <class S>
int gemm_impl_half(const GemmProblem& p) {
  if (p.M == 0 || p.N == 0) return 0;
  constexpr int NR = kPanelCols<S>;
  GemmRun<S> run;
  gemm_start(run, p);
  const int nt = num_threads();
  if (p.bias) {
    run.biasf = static_cast<float*>(std::malloc(sizeof(float) * static_cast<size_t>(p.N)));
    if (!run.biasf) return 1;
    widen_row(run.bias, p.bias_s, run.biasf, p.N);
  }
  if (const DotsStatus d = p.gated ? kDotsNone : gemm_dots(p, run, nt); d != kDotsNone) return d == kDotsDone ? 0 : 1;
  gemm_blocks(p, run, nt, imax(1, 1024 / NR));  // the float C block stays <= 768 KiB
  run.ldcb = run.pan_per_nb * NR;
  size_t ws = 0;
  void (*task)(void*, int64_t, int64_t, int) = nullptr;
  if constexpr (!kAmxGemm<S>) {
    ws = sizeof(float) * static_cast<size_t>(kGemmMC * run.ldcb + kGemmMC * kGemmKC + kGemmKC * NR);
    task = gemm_task_half<S>;
  } else {
#if defined(ATTNKIT_AMX)
    ws = gemm_amx_workspace<S>(run.ldcb);
    task = gemm_task_amx<S>;
#endif
  }
  if (!run.ws.alloc(nt, ws) || !gemm_bpack(run, p, nt)) return 1;
  parallel_for(run.nmb * run.nnb, 1, task, &run, nt);
  return 0;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
