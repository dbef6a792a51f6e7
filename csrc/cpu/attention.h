// Scaled dot-product attention for one ISA (float32 and float64). Part of the kernel unit
// (kernels.cpp); internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "attnkit/problems.h"
#include "cpu/attention_amx.h"     // amx_bf16: amx_scores, amx_pv
#include "cpu/attention_decode.h"  // few rows: FewRows, few_rows_tile
#include "cpu/micro_kernel.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// Attention: FlashAttention-2 loop order. A work item is (batch b, KV head hk, block of query
// rows, key range). Its rows are query rows of the G = Hq/Hk query heads that share KV head hk
// (row r = g*Lq + i), so K and V are read once per group. Scores are kept transposed, one row
// per key and one column per query, so K is read in place and every softmax step is a plain
// vector operation across queries. For each tile of kTileKeys keys:
//   S^T = K (Q * scale)^T              micro-kernel: K rows in place, Q^T packed once per block
//   mask S^T (causal bound, kv_lengths, attn_mask), only on tiles that need it
//   online softmax per query column: m' = max(m, max_j S); P = 2^((S - m') log2 e);
//   l = l 2^((m - m') log2 e) + sum_j P
//   O = O 2^((m - m') log2 e) + P V    micro-kernel, V read in place when its rows are contiguous
// and at the end out = O / l, lse = m + ln l. Scores, the mask and the running max stay in natural
// units, so every finite float mask value is added exactly as given (scaling a mask of finfo.min
// by log2 e would overflow); log2 e is applied only to the differences that go into exp2.
// On amx_bf16, bfloat16 blocks run the two products on AMX tiles (amx_scores, amx_pv: attention_amx.h).
// Tiles past every row's causal bound are never visited. For few rows (decode: attention_decode.h),
// the keys are split over threads and the partial results merged by their log-sum-exp (flash-decoding).
// Block sizes: kBlockRows x kTileKeys (isa_config.h).

template <class T>
struct AttnRun {
  const AttnProblem* p;
  int64_t G, qblocks, heads_per_block, blocks_per_kv_head, nsplit, split_keys, EvPad, items;
  bool v_direct, k_direct;
  Workspace ws;
  T* part = nullptr;    // nsplit > 1: per item kBlockRows x (EvPad + 2)
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

// A work item's rows: batch b, KV head hk, rows r0 .. r0+n of the group's G*Lq rows, key split s.
struct Block { int64_t b, hk, r0, n, s; };
template <class T>
inline Block block_of_item(const AttnRun<T>& run, int64_t it) {
  const AttnProblem& p = *run.p;
  Block blk;
  blk.s = it % run.nsplit;
  int64_t t = it / run.nsplit;
  blk.hk = t % p.Hk; t /= p.Hk;
  blk.b = t % p.B;
  const int64_t bi = t / p.B;
  if (p.Lq >= kBlockRows) {  // blocks within one head; the last query blocks (most keys if causal) first
    const int64_t g = bi % run.G, ib = run.qblocks - 1 - bi / run.G;
    blk.r0 = g * p.Lq + ib * kBlockRows;
    blk.n = imin(kBlockRows, p.Lq - ib * kBlockRows);
  } else {            // short queries: a block holds heads_per_block whole heads
    blk.r0 = bi * run.heads_per_block * p.Lq;
    blk.n = imin(run.heads_per_block * p.Lq, run.G * p.Lq - blk.r0);
  }
  return blk;
}


// St: the storage type of q, k, v, out, lse and a float mask; T = Compute<St> the arithmetic
// (half precision is widened as it is packed: Q^T, K and V tiles, mask values; narrowed on output).
template <class St>
void attn_task(void* ctx, int64_t begin, int64_t end, int tid) {
  typedef Compute<St> T;
  constexpr bool kSame = std::is_same<St, T>::value;
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  constexpr int NR = kNV * W;
  constexpr int kQueryVecs = kBlockRows / W;  // query vectors per block
  AttnRun<T>& run = *static_cast<AttnRun<T>*>(ctx);
  const AttnProblem& p = *run.p;
  const int64_t E = p.E, Ev = p.Ev, EvPad = run.EvPad, ldS = kBlockRows;
  const T ninf = -INFINITY;

  T* QT = run.ws.template get<T>(tid);          // [kBlockRows / NR][E][NR]: Q^T, scaled
  T* S = QT + kBlockRows * E;                    // [kTileKeys][kBlockRows]: S^T, then P^T
  T* O = S + kTileKeys * kBlockRows;             // [kBlockRows][EvPad]: the output accumulator
  T* Vp = O + kBlockRows * EvPad;                // [EvPad / NR][kTileKeys][NR] when V is not read in place
  T* Kp = Vp + (run.v_direct ? 0 : kTileKeys * EvPad);  // [kTileKeys][E] when K is not read in place
  T* Qr = Kp + (run.k_direct ? 0 : kTileKeys * E);      // [kFewRows][E]: Q rows, for the few-rows path
  T* Qk = Qr + kFewRows * E;                            // [kFewRows][E]: Q rows prepared for bfloat16 K (FewRows::Qk)
#if defined(ATTNKIT_AMX)  // bfloat16 blocks of more than kFewRows rows: both products on AMX tiles (amx_scores, amx_pv)
  constexpr bool kAmx = std::is_same<St, bf16_t>::value;
  const int64_t ket = ceil_div(E, kAmxDepth);
  bf16_t* Qb = reinterpret_cast<bf16_t*>(Qk + kFewRows * E);
  bf16_t* Kb = Qb + kBlockRows * ket * kAmxDepth;
  bf16_t* Pb = Kb + kTileKeys * ket * kAmxDepth;
  bf16_t* Vb = Pb + kBlockRows * kTileKeys;
  if constexpr (kAmx) amx_tile_config();  // this thread's tile configuration: any pool thread may run any item
#else
  constexpr bool kAmx = false;
#endif
  // per query row: running max and sum (base 2), the rescale factor of the last tile, the keys it
  // may see (key_limit, absolute; tile_limit, relative to the tile, exact in T)
  alignas(64) T row_max[kBlockRows], row_sum[kBlockRows], tile_limit[kBlockRows], alpha[kBlockRows];
  int64_t key_limit[kBlockRows];
  int64_t key_start[kBlockRows];         // sliding window: the first key each row sees (absolute)
  alignas(64) T tile_start[kBlockRows];  // ... relative to the tile

  const St* q = static_cast<const St*>(p.q);
  const St* k = static_cast<const St*>(p.k);
  const St* v = static_cast<const St*>(p.v);
  St* out = static_cast<St*>(p.out);
  St* lse = static_cast<St*>(p.lse);
  const int64_t mask_elem = p.mask_bool ? 1 : static_cast<int64_t>(sizeof(St));
  const T qscale = static_cast<T>(p.scale);
  const T l2e = static_cast<T>(kLog2e);
  const char* mask_rows[kBlockRows];
#if defined(__AVX512BF16__)  // bfloat16 K read in place: q . k on vdpbf16ps (few_rows_scores_half)
  const bool few_dp = std::is_same<St, bf16_t>::value && p.k_e == 1 && E % 32 == 0;
#else
  const bool few_dp = false;
#endif

  for (int64_t it = begin; it < end; ++it) {
    const Block blk = block_of_item(run, it);
    const BatchOffsets off = batch_offsets(p, blk.b);
    const int64_t len = kv_length(p, blk.b);
    const St* kb = k + off.k + blk.hk * p.k_h;
    const St* vb = v + off.v + blk.hk * p.v_h;
    const int64_t n = blk.n, nqp = ceil_div(n, NR), ncols = nqp * NR, nqv = ncols / W;
    const bool amx = kAmx && n > kFewRows;
    const bool pack_qt = !amx && n > kFewRows;  // few rows read Qr (row-major), not the Q^T panels

    // rows: pack Q^T (scaled; on tiles unscaled, in bfloat16), causal bounds, mask rows
    int64_t max_limit = 0, min_limit = len;
    int64_t min_start = len, max_start = 0;  // sliding window: the band's first keys over the rows
    for (int64_t rr = 0; rr < ncols; ++rr) {
      T* dst = QT + (rr / NR) * E * NR + rr % NR;
      row_max[rr] = ninf;
      row_sum[rr] = 0;
      if (rr >= n) {
#if defined(ATTNKIT_AMX)
        if (amx) amx_pack_q_row(Qb, ket, rr, nullptr, 0, E);
#endif
        for (int64_t d = 0; d < E && pack_qt; ++d) dst[d * NR] = 0;
        key_limit[rr] = 0;
        key_start[rr] = 0;
        min_limit = 0;
        continue;
      }
      const int64_t r = blk.r0 + rr, g = r / p.Lq, i = r % p.Lq, h = blk.hk * run.G + g;
      const St* qr = q + off.q + h * p.q_h + i * p.q_i;
#if defined(ATTNKIT_AMX)
      if constexpr (kAmx)
        if (amx) amx_pack_q_row(Qb, ket, rr, qr, p.q_e, E);
#endif
      for (int64_t d = 0; d < E && pack_qt; ++d) dst[d * NR] = widen(qr[d * p.q_e]) * qscale;
      if (n <= kFewRows) {
        for (int64_t d = 0; d < E; ++d) Qr[rr * E + d] = widen(qr[d * p.q_e]) * qscale;
        if constexpr (std::is_same<St, bf16_t>::value) {
          if (few_dp)
            for (int64_t d = 0; d < E; ++d) reinterpret_cast<St*>(Qk)[rr * E + d] = qr[d * p.q_e];
          else
            pair_split(Qr + rr * E, Qk + rr * E, E);
        }
      }
      int64_t l = len;
      if (p.causal == CausalAlign::top_left) l = i + 1;
      else if (p.causal == CausalAlign::bottom_right) l = i + 1 + len - p.Lq;
      l = imax(0, imin(l, len));
      key_limit[rr] = l;
      key_start[rr] = 0;
      if (p.window > 0) {  // keys j with pos(i) - j < window, pos(i) = (the causal bound) - 1
        const int64_t pos = p.causal == CausalAlign::top_left ? i : i + len - p.Lq;
        key_start[rr] = imin(imax(0, pos - p.window + 1), l);
        min_start = imin(min_start, key_start[rr]);
        max_start = imax(max_start, key_start[rr]);
      }
      max_limit = imax(max_limit, l);
      min_limit = imin(min_limit, l);
      if (p.mask) mask_rows[rr] = static_cast<const char*>(p.mask) + (off.m + h * p.m_h + i * p.m_i) * mask_elem;
    }
    std::memset(O, 0, sizeof(T) * static_cast<size_t>((amx ? ncols : n) * EvPad));  // (tiles: whole 16-row tiles)
    // (few rows read V in place whenever its rows are contiguous and whole vectors; half precision too)
    const bool few_v_direct = kSame ? run.v_direct : p.v_e == 1 && Ev % NR == 0;
    const FewRows<T> few{&p, n, E, Ev, EvPad, Qr, Qk, few_dp, qscale, S, O, Vp, few_v_direct, key_limit, key_start,
                         mask_rows, row_max, row_sum};

    int64_t kbeg = blk.s * run.split_keys;
    const int64_t kend = imin(max_limit, kbeg + run.split_keys);
    if (p.window > 0) kbeg = imax(kbeg, imin(min_start, max_limit));  // tiles before every row's band: skipped
    for (int64_t j0 = kbeg; j0 < kend; j0 += kTileKeys) {
      const int64_t nk = imin(kTileKeys, kend - j0);
      // 1) S^T = K Q^T
      const St* ks = kb + j0 * p.k_j;
      const T* ka = nullptr;
      if constexpr (kSame) ka = ks;
      int64_t lda = p.k_j;
      // few rows (decode): one dot product per key, K streamed row by row (half precision widened as it is read)
      const bool k_stream = !kSame && n <= kFewRows && p.k_e == 1;
      if (!run.k_direct && !k_stream && !amx) {
        for (int64_t jj = 0; jj < nk; ++jj) widen_row(ks + jj * p.k_j, p.k_e, Kp + jj * E, E);
        ka = Kp;
        lda = E;
      }
      if (n <= kFewRows) {  // few rows (decode): row-major scores, few_rows_tile
        if (k_stream) few_rows_tile<St>(few, j0, nk, ks, p.k_j, vb);
        else few_rows_tile<St>(few, j0, nk, ka, lda, vb);
        continue;
      }
#if defined(ATTNKIT_AMX)
      if constexpr (kAmx)
        if (amx) {
          amx_scores(p, ks, nk, ncols, Qb, ket, Kb, S, ldS);
          for (int64_t jj = 0; jj < nk; ++jj)
            for (int64_t qv = 0; qv < nqv; ++qv) vstore(S + jj * ldS + qv * W, vload(S + jj * ldS + qv * W) * qscale);
        }
#endif
      for (int64_t j = 0; j < nk && !amx; j += kMR)
        for (int64_t pn = 0; pn < nqp; ++pn)
          micro_rows<T, false, false>(static_cast<int>(imin(kMR, nk - j)), E, ka + j * lda, lda,
                                      QT + pn * E * NR, NR, S + j * ldS + pn * NR, ldS);
      // 2) mask
      if (p.window > 0 && j0 < max_start) {  // sliding window: keys before a row's band, then the causal bound
        for (int64_t rr = 0; rr < ncols; ++rr) {
          tile_limit[rr] = static_cast<T>(imax(0, imin(nk, key_limit[rr] - j0)));
          tile_start[rr] = static_cast<T>(imax(0, imin(nk, key_start[rr] - j0)));
        }
        for (int64_t jj = 0; jj < nk; ++jj) {
          const V jv = vset(static_cast<T>(jj));
          T* srow = S + jj * ldS;
          for (int64_t qv = 0; qv < nqv; ++qv) {
            V x = vload(srow + qv * W);
            x = jv < vload(tile_limit + qv * W) ? x : vset(ninf);
            vstore(srow + qv * W, jv < vload(tile_start + qv * W) ? vset(ninf) : x);
          }
        }
      } else if (j0 + nk > min_limit) {
        for (int64_t rr = 0; rr < ncols; ++rr) tile_limit[rr] = static_cast<T>(imax(0, imin(nk, key_limit[rr] - j0)));
        for (int64_t jj = 0; jj < nk; ++jj) {
          const V jv = vset(static_cast<T>(jj));
          T* srow = S + jj * ldS;
          for (int64_t qv = 0; qv < nqv; ++qv) {
            V x = vload(srow + qv * W);
            vstore(srow + qv * W, jv < vload(tile_limit + qv * W) ? x : vset(ninf));
          }
        }
      }
      if (p.mask) {
        for (int64_t rr = 0; rr < n; ++rr) {
          const char* mr = mask_rows[rr];
          const int64_t c = imin(nk, key_limit[rr] - j0);
          if (p.mask_bool) {
            for (int64_t jj = 0; jj < c; ++jj)
              if (!mr[(j0 + jj) * p.m_j]) S[jj * ldS + rr] = ninf;
          } else {
            const St* mf = reinterpret_cast<const St*>(mr);
            for (int64_t jj = 0; jj < c; ++jj) S[jj * ldS + rr] += widen(mf[(j0 + jj) * p.m_j]);
          }
        }
      }
      // 3) online softmax down each query column
      V mv[kQueryVecs], sv[kQueryVecs], base[kQueryVecs];
      for (int64_t qv = 0; qv < nqv; ++qv) { mv[qv] = vload(row_max + qv * W); sv[qv] = V{}; }
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
            e = exp2v((vload(srow + qv * W) - base[qv]) * l2e);
          } else {
            V x = vload(srow + qv * W) - base[qv];
            for (int t = 0; t < W; ++t) e[t] = ::exp(x[t]);
          }
          vstore(srow + qv * W, e);
          sv[qv] += e;
        }
      }
      for (int64_t qv = 0; qv < nqv; ++qv) {
        V a;
        V mo = vload(row_max + qv * W) - base[qv];
        if constexpr (sizeof(T) == 4) {
          a = exp2v(mo * l2e);
        } else {
          for (int t = 0; t < W; ++t) a[t] = ::exp(mo[t]);
        }
        vstore(alpha + qv * W, a);
        vstore(row_sum + qv * W, vload(row_sum + qv * W) * a + sv[qv]);
        vstore(row_max + qv * W, mv[qv]);
      }
      for (int64_t rr = 0; rr < n; ++rr) {
        if (alpha[rr] == T(1)) continue;
        T* o = O + rr * EvPad;
        for (int64_t e = 0; e < EvPad; e += W) vstore(o + e, vload(o + e) * alpha[rr]);
      }
      // 4) O += P V
      const St* vsrc = vb + j0 * p.v_j;
#if defined(ATTNKIT_AMX)
      if constexpr (kAmx)
        if (amx) {
          amx_pv(p, S, ldS, n, nk, vsrc, EvPad, Pb, Vb, O);
          continue;
        }
#endif
      int64_t ldv = p.v_j;
      if (!run.v_direct && p.v_e == 1 && Ev % W == 0) {  // rows widened W at a time
        for (int64_t jj = 0; jj < nk; ++jj) {
          const St* vr = vb + (j0 + jj) * p.v_j;
          for (int64_t e = 0; e < EvPad; e += W)
            vstore(Vp + (e / NR) * kTileKeys * NR + jj * NR + e % NR, e < Ev ? vload_as<T>(vr + e) : V{});
        }
      } else if (!run.v_direct) {
        for (int64_t jj = 0; jj < nk; ++jj) {
          const St* vr = vb + (j0 + jj) * p.v_j;
          for (int64_t e = 0; e < EvPad; ++e)
            Vp[(e / NR) * kTileKeys * NR + jj * NR + e % NR] = e < Ev ? widen(vr[e * p.v_e]) : T(0);
        }
      }
      for (int64_t pn = 0; pn * NR < EvPad; ++pn) {
        for (int64_t rr = 0; rr < n; rr += kMR) {
          const int rows = static_cast<int>(imin(kMR, n - rr));
          if (run.v_direct)  // V in place (half precision: each row widened as the micro-kernel loads it)
            micro_rows<T, true, true, St>(rows, nk, S + rr, ldS, vsrc + pn * NR, ldv, O + rr * EvPad + pn * NR, EvPad);
          else
            micro_rows<T, true, true>(rows, nk, S + rr, ldS, Vp + pn * kTileKeys * NR, NR, O + rr * EvPad + pn * NR, EvPad);
        }
      }
    }

    // 5) results: final (normalised) or partial (for the log-sum-exp merge)
    if (run.nsplit == 1) {
      for (int64_t rr = 0; rr < n; ++rr) {
        const int64_t r = blk.r0 + rr, g = r / p.Lq, i = r % p.Lq, h = blk.hk * run.G + g;
        const T l = row_sum[rr];
        St* orow = out + off.o + h * p.o_h + i * p.o_i;
        T* o = O + rr * EvPad;
        if (!(l == 0)) {  // l is NaN when a NaN reached the row: the row stays NaN
          const T inv = T(1) / l;
          if constexpr (kSame) {
            for (int64_t e = 0; e < Ev; ++e) orow[e * p.o_e] = o[e] * inv;
          } else {
            for (int64_t e = 0; e < Ev; ++e) o[e] *= inv;
            narrow_row(static_cast<const T*>(o), orow, p.o_e, Ev);
          }
        } else {  // no visible key: zeros, whatever P V gathered from other rows' keys
          for (int64_t e = 0; e < Ev; ++e) orow[e * p.o_e] = narrow<St>(T(0));
        }
        if (lse)
          lse[off.l + h * p.l_h + i * p.l_i] =
              narrow<St>(l == 0 ? ninf : static_cast<T>(static_cast<double>(row_max[rr]) + std::log(static_cast<double>(l))));
      }
    } else {
      T* dst = run.part + static_cast<size_t>(it) * run.part_stride;
      for (int64_t rr = 0; rr < n; ++rr) {
        std::memcpy(dst + rr * (EvPad + 2), O + rr * EvPad, sizeof(T) * Ev);
        dst[rr * (EvPad + 2) + EvPad] = row_max[rr];
        dst[rr * (EvPad + 2) + EvPad + 1] = row_sum[rr];
      }
    }
  }
#if defined(ATTNKIT_AMX)
  if constexpr (kAmx) amx_tile_release();  // the thread's tile state back to its initial (unsaved) state
#endif
}

// Merge the nsplit partial results of each block: weights e^(m_s - M) / L (natural units).
template <class St>
void attn_merge_task(void* ctx, int64_t begin, int64_t end, int) {
  typedef Compute<St> T;
  AttnRun<T>& run = *static_cast<AttnRun<T>*>(ctx);
  const AttnProblem& p = *run.p;
  const int64_t EvPad = run.EvPad, ns = run.nsplit;
  St* out = static_cast<St*>(p.out);
  St* lse = static_cast<St*>(p.lse);
  for (int64_t blk_id = begin; blk_id < end; ++blk_id) {
    const Block blk = block_of_item(run, blk_id * ns);
    const BatchOffsets off = batch_offsets(p, blk.b);
    for (int64_t rr = 0; rr < blk.n; ++rr) {
      const int64_t r = blk.r0 + rr, g = r / p.Lq, i = r % p.Lq, h = blk.hk * run.G + g;
      double M = -INFINITY;
      bool nan = false;
      for (int64_t s = 0; s < ns; ++s) {
        const T* part = run.part + static_cast<size_t>(blk_id * ns + s) * run.part_stride + rr * (EvPad + 2);
        nan = nan || part[EvPad + 1] != part[EvPad + 1];
        if (part[EvPad + 1] > 0 && part[EvPad] > M) M = part[EvPad];
      }
      St* orow = out + off.o + h * p.o_h + i * p.o_i;
      if (nan) {  // a NaN reached this row in some split: the row is NaN, as without splitting
        for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] = narrow<St>(static_cast<T>(NAN));
        if (lse) lse[off.l + h * p.l_h + i * p.l_i] = narrow<St>(static_cast<T>(NAN));
        continue;
      }
      double L = 0;
      if constexpr (!std::is_same<St, T>::value) {  // half precision: sum each output in float, narrow once
        for (int64_t s = 0; s < ns; ++s) {
          const T* part = run.part + static_cast<size_t>(blk_id * ns + s) * run.part_stride + rr * (EvPad + 2);
          if (part[EvPad + 1] > 0) L += static_cast<double>(part[EvPad + 1]) * ::exp(static_cast<double>(part[EvPad]) - M);
        }
        for (int64_t e = 0; e < p.Ev; ++e) {
          double acc = 0;
          for (int64_t s = 0; L > 0 && s < ns; ++s) {
            const T* part = run.part + static_cast<size_t>(blk_id * ns + s) * run.part_stride + rr * (EvPad + 2);
            if (part[EvPad + 1] > 0) acc += static_cast<double>(part[e]) * ::exp(static_cast<double>(part[EvPad]) - M);
          }
          orow[e * p.o_e] = narrow<St>(static_cast<T>(L > 0 ? acc / L : 0.0));
        }
        if (lse) lse[off.l + h * p.l_h + i * p.l_i] = narrow<St>(L > 0 ? static_cast<T>(M + std::log(L)) : T(-INFINITY));
        continue;
      } else {
      for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] = 0;
      if (M != -INFINITY) {
        for (int64_t s = 0; s < ns; ++s) {
          const T* part = run.part + static_cast<size_t>(blk_id * ns + s) * run.part_stride + rr * (EvPad + 2);
          if (!(part[EvPad + 1] > 0)) continue;
          const T w = static_cast<T>(::exp(static_cast<double>(part[EvPad]) - M));
          L += static_cast<double>(part[EvPad + 1]) * w;
          for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] += part[e] * w;
        }
        const T inv = static_cast<T>(1.0 / L);
        for (int64_t e = 0; e < p.Ev; ++e) orow[e * p.o_e] *= inv;
      }
      if (lse) lse[off.l + h * p.l_h + i * p.l_i] = L > 0 ? static_cast<T>(M + std::log(L)) : T(-INFINITY);
      }
    }
  }
}

template <class St>
int attention_impl(const AttnProblem& p) {
  typedef Compute<St> T;
  constexpr int NR = kNV * Simd<T>::W;
  if (p.B == 0 || p.Hq == 0 || p.Lq == 0) return 0;
  AttnRun<T> run;
  run.p = &p;
  run.G = p.Hq / p.Hk;
  run.qblocks = ceil_div(p.Lq, kBlockRows);
  run.heads_per_block = p.Lq >= kBlockRows ? 1 : imax(1, kBlockRows / p.Lq);
  run.blocks_per_kv_head = p.Lq >= kBlockRows ? run.G * run.qblocks : ceil_div(run.G, run.heads_per_block);
  run.EvPad = ceil_div(p.Ev, NR) * NR;
  // (half precision: V is widened into the tile once, not by each row block's micro-kernel)
  run.v_direct = is_half<St>() ? false : p.v_e == 1 && p.Ev % NR == 0;
  const int nt = num_threads();
  const int64_t blocks = p.B * p.Hk * run.blocks_per_kv_head;
  run.nsplit = 1;
  run.split_keys = imax(p.Lk, 1);
  if (blocks < 2 * nt && p.Lk >= 4 * kTileKeys) {  // too few blocks to feed the threads: split the keys
    const int64_t want = ceil_div(4 * nt, blocks);
    const int64_t chunks = ceil_div(ceil_div(p.Lk, want), kTileKeys);
    run.split_keys = chunks * kTileKeys;
    run.nsplit = ceil_div(p.Lk, run.split_keys);
  }
  run.items = blocks * run.nsplit;
  run.k_direct = is_half<St>() ? false : p.k_e == 1;
  size_t ws = sizeof(T) * static_cast<size_t>(kBlockRows * p.E + kTileKeys * kBlockRows + kBlockRows * run.EvPad +
                                                     (run.v_direct ? 0 : kTileKeys * run.EvPad) + (run.k_direct ? 0 : kTileKeys * p.E) +
                                                     2 * kFewRows * p.E);
#if defined(ATTNKIT_AMX)
  if (std::is_same<St, bf16_t>::value) ws += sizeof(bf16_t) * static_cast<size_t>(amx_attn_elems(p.E, run.EvPad));  // amx_scores, amx_pv
#endif
  if (!run.ws.alloc(nt, ws)) return 1;
  if (run.nsplit > 1) {
    run.part_stride = static_cast<size_t>(kBlockRows * (run.EvPad + 2));
    run.part = static_cast<T*>(std::malloc(sizeof(T) * run.part_stride * static_cast<size_t>(run.items)));
    if (!run.part) return 1;
  }
  parallel_for(run.items, 1, attn_task<St>, &run, nt);
  if (run.nsplit > 1) parallel_for(blocks, 1, attn_merge_task<St>, &run, nt);
  return 0;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
