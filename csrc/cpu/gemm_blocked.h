// The panel GEMM for one ISA, float32 and float64: out (M, N) = act(A (M, K) @ W (N, K)^T + bias).
// Blocked as in GotoBLAS: W^T is packed once per call into KC x NR panels (shared by all
// threads); each work item packs an MC x KC block of A and sweeps its panels, a KC x NR panel of
// W^T staying in L1 while the A block streams from L2. The run (GemmRun), packing, the work items
// and the blocking; gemm.h picks between these and the dot products (gemm_dots.h).
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

// A one-row item's panels [p0, p1) as kRowStreams runs of consecutive panels (lengths differing by at
// most one), read side by side: step i takes panel i of every run that still has one.
struct RowStreams {
  int64_t p0, n, steps;
  RowStreams(int64_t p0_, int64_t p1) : p0(p0_), n(p1 - p0_), steps(ceil_div(p1 - p0_, kRowStreams)) {}
  int64_t start(int j) const { return n * j / kRowStreams; }
  int64_t len(int j) const { return start(j + 1) - start(j); }
  int64_t at(int j, int64_t i) const { return p0 + start(j) + i; }
  bool full(int64_t i) const { return i < n / kRowStreams; }       // every run has a panel i
  int64_t last(int64_t i) const { return at(kRowStreams - 1, i); }  // the step's highest panel
};

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
      auto panel = [&](int64_t pn) {
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
      };
      if (mlen > 1 || !run.a_direct || pn1 - pn0 < kRowStreams) {
        for (int64_t pn = pn0; pn < pn1; ++pn) panel(pn);
        continue;
      }
      // one row: the item's panels split into kRowStreams runs of consecutive panels, read side by side
      const RowStreams st(pn0, pn1);
      const T* a = run.a + m0 * run.lda + k0;
      for (int64_t i = 0; i < st.steps; ++i) {
        if (!st.full(i) || (st.last(i) + 1) * NR > p.N) {  // a run already done, or a partial panel
          for (int j = 0; j < kRowStreams; ++j)
            if (i < st.len(j)) panel(st.at(j, i));
          continue;
        }
        const T* b[kRowStreams];
        T* c[kRowStreams];
        for (int j = 0; j < kRowStreams; ++j) {
          b[j] = bk + st.at(j, i) * klen * NR;
          c[j] = run.out + m0 * p.ldc + st.at(j, i) * NR;
        }
        if (first) micro_row_panels<T, kRowStreams, false>(klen, a, b, c);
        else micro_row_panels<T, kRowStreams, true>(klen, a, b, c);
        if (last)
          for (int j = 0; j < kRowStreams; ++j) {
            gemm_epilogue(run, c[j], 1, NR, st.at(j, i) * NR);
            if (run.gated) gated_epilogue(run, c[j], 1, m0, st.at(j, i));
          }
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
  // joins late (a worker waking from sleep) still finds a share of a short call; a single row into
  // kRowItems a thread, each read as kRowStreams streams (gemm_task)
  run.nnb = imin(run.npan, imax(1, run.nmb == 1 ? (p.M == 1 ? kRowItems : 8) * nt : ceil_div(2 * nt, run.nmb)));
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

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
