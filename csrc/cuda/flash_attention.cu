// Scaled dot-product attention on the GPU, FlashAttention-2 loop order: one block of query rows
// per thread block, K/V tiles streamed through shared memory, the online softmax in registers.
//
//   flash_fwd_tc<T, D, NW, MW, BN, MINB>  fp16/bf16 on tensor cores: NW warps x MW x 16 query
//                            rows (by default 4 warps x 16 rows; FA2's 4 warps x 32 rows measured
//                            slower here, bench/NOTES.md), BN-key tiles
//                            brought in by cp.async (double buffered), QK^T and PV as
//                            mma.sync.m16n8k16 with fp32 accumulators, softmax statistics in
//                            fp32, exp2 with scale*log2(e) folded into the scores. Tiles past the
//                            causal diagonal (or past kv_lengths) are never loaded; only the tiles
//                            that cross it are masked.
//   flash_fwd_simt<T>        the plain twin: fp32 arithmetic on CUDA cores (float32 exactly: no
//                            TF32), any strides and head dims; also fp16/bf16 inputs the tensor-core
//                            kernel does not take (a last dim that is not contiguous, head dims
//                            over 128 or not multiples of 8, rows not 16-byte aligned).
//   decode.cu                split-KV flash-decoding for few query rows per KV head.
#include <cstring>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/backend.h"
#include "cuda/mma.cuh"

namespace attnkit { namespace cuda {

namespace {

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel
// ---------------------------------------------------------------------------------------------
// NW warps, each MW x 16 query rows (MW = 1: the warp's Q fragments stay in registers; MW = 2:
// FA2's 32 rows per warp, Q fragments re-read from shared memory, so every K/V fragment that
// ldmatrix brings feeds 4 mma instead of 2).
// BN keys per K/V tile (64, or 32 where 32 rows per warp at D = 128 would not fit the registers).
template <class T, int D, int NW, int MW, int BN>
constexpr int tc_smem_bytes() { return (16 * NW * MW + 4 * BN) * D * int(sizeof(T)); }

template <class T, int D, int NW, int MW, int BN, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) flash_fwd_tc(const AttnParams p) {
  constexpr int BM = 16 * NW * MW, CH = D / 8, NT = NW * 32, WM = 16 * MW;
  constexpr bool kQinRegs = MW == 1;
  static_assert(D % 64 == 0, "the XOR swizzle needs rows of at least 8 16-byte chunks");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);
  T* Ks = Qs + BM * D;       // two stages
  T* Vs = Ks + 2 * BN * D;   // two stages
  // Row r, 16-byte chunk c of a tile with D elements per row; chunks XOR-swizzled by the row
  // so that ldmatrix's 8 row addresses hit 8 different bank groups.
  auto swz = [](int r, int c) { return r * D + ((c ^ (r & 7)) << 3); };

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t nqb = (p.Lq + BM - 1) / BM;
  int64_t bid = blockIdx.x;
  const int64_t qb = nqb - 1 - bid % nqb;   // the longest causal rows first
  bid /= nqb;
  const int64_t h = bid % p.Hq, b = bid / p.Hq;
  const int64_t m0 = qb * BM;
  const KeyRange kr = key_range(p, b);
  const int64_t last_row = (m0 + BM < p.Lq ? m0 + BM : p.Lq) - 1;
  const int64_t kv_end = kr.end(p, last_row);          // no row of the block sees a key past this
  const int ntiles = static_cast<int>((kv_end + BN - 1) / BN);

  // K/V tile loads: every thread copies the same column chunk c of rows r0, r0 + RS, ... of
  // each tile, so its source pointers advance by BN rows per tile and its swizzled destinations
  // are fixed (RS is a multiple of 8: the swizzle, c ^ (r & 7), is the same for all of them).
  static_assert(NT % CH == 0 && (NT / CH) % 8 == 0, "each thread keeps one swizzled column");
  constexpr int RS = NT / CH, LOADS = BN / RS;
  static_assert(BN % RS == 0, "whole tiles per thread");
  const int r0 = tid / CH, c0 = tid % CH;
  const char* kp;                                      // &K[r0][8 c0], then + BN rows a tile
  const char* vp;
  {
    const SliceOffsets so = slice_offsets(p, b, h);
    const T* q = static_cast<const T*>(p.q) + so.q;
    kp = reinterpret_cast<const char*>(static_cast<const T*>(p.k) + so.k + r0 * p.k_j + c0 * 8);
    vp = reinterpret_cast<const char*>(static_cast<const T*>(p.v) + so.v + r0 * p.v_j + c0 * 8);
    for (int idx = tid; idx < BM * CH; idx += NT) {
      const int r = idx / CH, c = idx % CH;
      const bool ok = m0 + r < p.Lq && c * 8 < p.E;
      cp_async16(smem_u32(Qs + swz(r, c)), ok ? q + (m0 + r) * p.q_i + c * 8 : q, ok);
    }
  }
  cp_async_commit();
  const int64_t k_step = RS * p.k_j * int64_t(sizeof(T)), v_step = RS * p.v_j * int64_t(sizeof(T));
  const bool k_col = c0 * 8 < p.E, v_col = c0 * 8 < p.Ev;
  const uint32_t kv_dst = smem_u32(Ks) + uint32_t(swz(r0, c0) * sizeof(T));
  auto load_kv = [&](int t, int stage) {
    const uint32_t kd = kv_dst + uint32_t(stage * BN * D * sizeof(T)), vd = kd + uint32_t(2 * BN * D * sizeof(T));
    const int64_t j0 = int64_t(t) * BN;
    const char* ks = kp + j0 * p.k_j * int64_t(sizeof(T));
    const char* vs = vp + j0 * p.v_j * int64_t(sizeof(T));
    const int64_t left = kr.n - j0 - r0;               // rows u * RS < left exist
#pragma unroll
    for (int u = 0; u < LOADS; ++u) {
      const bool row_ok = u * RS < left;
      const bool kok = row_ok && k_col, vok = row_ok && v_col;
      cp_async16(kd + uint32_t(u * RS * D * sizeof(T)), kok ? ks + u * k_step : p.k, kok);   // p.k: nothing is read
      cp_async16(vd + uint32_t(u * RS * D * sizeof(T)), vok ? vs + u * v_step : p.v, vok);
    }
  };
  if (ntiles > 0) load_kv(0, 0);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  // ldmatrix addresses of K and V fragments: a lane's row within a 16-row step is r with r & 7 =
  // lane & 7 (= the swizzle key sw), its 16-byte chunk 2 kk + b; since 2 (kk & 3) + b < 8,
  // (2 kk + b) ^ sw = 8 (kk >> 2) + ((2 (kk & 3) + b) ^ sw): four per-lane offsets per operand,
  // the rest compile-time constants folded into the instruction.
  uint32_t k_lds[4], v_lds[4];
  {
    const int sw = lane & 7, bk = (lane >> 3) & 1, bv = lane >> 4;
    const int rk = (lane & 7) + ((lane >> 4) << 3), rv = (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      k_lds[j] = smem_u32(Ks) + uint32_t((rk * D + (((2 * j + bk) ^ sw) << 3)) * sizeof(T));
      v_lds[j] = smem_u32(Vs) + uint32_t((rv * D + (((2 * j + bv) ^ sw) << 3)) * sizeof(T));
    }
  }

  // The warp's Q fragments (A operand of QK^T), from registers (MW = 1) or shared memory.
  uint32_t qf[kQinRegs ? D / 16 : 1][4];
  if constexpr (kQinRegs) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      ldmatrix_x4(qf[kk], smem_u32(Qs + swz(warp * WM + (lane & 15), kk * 2 + (lane >> 4))));
  }

  // Exclusive key bound per row (0 past Lq), as int: a key count fits (checked at launch).
  const int g = lane >> 2, tq = lane & 3;
  const int row0 = warp * WM + g;                      // this lane's rows: m0 + row0 + 16 mi + 8 rr
  int lim[MW][2];
#pragma unroll
  for (int mi = 0; mi < MW; ++mi)
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int64_t r = m0 + row0 + mi * 16 + 8 * rr;
      lim[mi][rr] = r < p.Lq ? static_cast<int>(kr.end(p, r)) : 0;
    }
  const int64_t moff = p.mask ? slice_offsets(p, b, h).m : 0;
  int lim_min = lim[0][0];
#pragma unroll
  for (int mi = 0; mi < MW; ++mi)
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) lim_min = lim[mi][rr] < lim_min ? lim[mi][rr] : lim_min;

  float o[MW][D / 8][4];
#pragma unroll
  for (int mi = 0; mi < MW; ++mi)
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[mi][i][0] = o[mi][i][1] = o[mi][i][2] = o[mi][i][3] = 0.f;
  float m_run[MW][2], l_run[MW][2];
#pragma unroll
  for (int mi = 0; mi < MW; ++mi) m_run[mi][0] = m_run[mi][1] = -INFINITY, l_run[mi][0] = l_run[mi][1] = 0.f;

  const float sl = p.scale_log2;
  float alpha[MW][2], nbase[MW][2];
  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) load_kv(t + 1, (t + 1) & 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint32_t stage_off = uint32_t((t & 1) * BN * D * sizeof(T));

    // 1) S = Q K^T for this warp's WM rows x 64 keys
    float s[MW][BN / 8][4];
#pragma unroll
    for (int mi = 0; mi < MW; ++mi)
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) s[mi][i][0] = s[mi][i][1] = s[mi][i][2] = s[mi][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MW][4];
      if constexpr (kQinRegs) {
#pragma unroll
        for (int i = 0; i < 4; ++i) qa[0][i] = qf[kk][i];
      } else {
#pragma unroll
        for (int mi = 0; mi < MW; ++mi)
          ldmatrix_x4(qa[mi], smem_u32(Qs + swz(warp * WM + mi * 16 + (lane & 15), kk * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, k_lds[kk & 3] + stage_off + uint32_t((np * 16 * D + (kk >> 2) * 64) * sizeof(T)));
#pragma unroll
        for (int mi = 0; mi < MW; ++mi) {
          mma_16816<T>(s[mi][2 * np], qa[mi], bf[0], bf[1]);
          mma_16816<T>(s[mi][2 * np + 1], qa[mi], bf[2], bf[3]);
        }
      }
    }

    // 2) scores in the log2 domain; keys a row may not see -> -inf (only on boundary tiles). On
    // full tiles (and a positive scale) the raw scores stay as they are: the row max is taken on
    // them and the scale folds into the exponent below (one FFMA a score instead of FMUL + FADD).
    const int j0 = t * BN;
    const bool fold = !p.mask && j0 + BN <= lim_min && sl > 0.f;
    if (!fold) {
#pragma unroll
      for (int mi = 0; mi < MW; ++mi)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = s[mi][nt][e] * sl;
            const int rr = e >> 1;
            const int j = j0 + nt * 8 + 2 * tq + (e & 1);
            if (j >= lim[mi][rr]) x = -INFINITY;
            else if (p.mask) x = apply_mask<T>(x, p, moff, m0 + row0 + mi * 16 + 8 * rr, j);
            s[mi][nt][e] = x;
          }
    }
    const float ssl = fold ? sl : 1.f;   // what still multiplies s in the exponent

    // 3) online softmax: new row max, rescale the running sum and O (only when a max grew), p =
    // exp2(ssl s - max)
    bool grew = false;
#pragma unroll
    for (int mi = 0; mi < MW; ++mi) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[mi][nt][0], s[mi][nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[mi][nt][2], s[mi][nt][3]));
      }
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        mx[rr] = fmaxf(m_run[mi][rr], mx[rr] * ssl);
        mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));
        mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
        const float base = mx[rr] == -INFINITY ? 0.f : mx[rr];   // a row that saw nothing yet: exp2(-inf) = 0
        alpha[mi][rr] = fast_exp2(m_run[mi][rr] - base);
        grew |= alpha[mi][rr] != 1.f;
        m_run[mi][rr] = mx[rr];
        nbase[mi][rr] = -base;
      }
      float rs[2] = {0.f, 0.f};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        s[mi][nt][0] = fast_exp2(fmaf(s[mi][nt][0], ssl, nbase[mi][0]));
        s[mi][nt][1] = fast_exp2(fmaf(s[mi][nt][1], ssl, nbase[mi][0]));
        s[mi][nt][2] = fast_exp2(fmaf(s[mi][nt][2], ssl, nbase[mi][1]));
        s[mi][nt][3] = fast_exp2(fmaf(s[mi][nt][3], ssl, nbase[mi][1]));
        rs[0] += s[mi][nt][0] + s[mi][nt][1];
        rs[1] += s[mi][nt][2] + s[mi][nt][3];
      }
      l_run[mi][0] = l_run[mi][0] * alpha[mi][0] + rs[0];
      l_run[mi][1] = l_run[mi][1] * alpha[mi][1] + rs[1];
    }
    if (__any_sync(0xffffffffu, grew)) {
#pragma unroll
      for (int mi = 0; mi < MW; ++mi)
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
          o[mi][dt][0] *= alpha[mi][0]; o[mi][dt][1] *= alpha[mi][0];
          o[mi][dt][2] *= alpha[mi][1]; o[mi][dt][3] *= alpha[mi][1];
        }
    }

    // 4) O += P V: the S accumulators of two key octets are the A fragment of one k16 step
#pragma unroll
    for (int ks = 0; ks < BN / 16; ++ks) {
      uint32_t a[MW][4];
#pragma unroll
      for (int mi = 0; mi < MW; ++mi) {
        a[mi][0] = pack2<T>(s[mi][2 * ks][0], s[mi][2 * ks][1]);
        a[mi][1] = pack2<T>(s[mi][2 * ks][2], s[mi][2 * ks][3]);
        a[mi][2] = pack2<T>(s[mi][2 * ks + 1][0], s[mi][2 * ks + 1][1]);
        a[mi][3] = pack2<T>(s[mi][2 * ks + 1][2], s[mi][2 * ks + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bf[4];
        ldmatrix_x4_trans(bf, v_lds[dp & 3] + stage_off + uint32_t((ks * 16 * D + (dp >> 2) * 64) * sizeof(T)));
#pragma unroll
        for (int mi = 0; mi < MW; ++mi) {
          mma_16816<T>(o[mi][2 * dp], a[mi], bf[0], bf[1]);
          mma_16816<T>(o[mi][2 * dp + 1], a[mi], bf[2], bf[3]);
        }
      }
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  // 5) normalise once; a row that saw no key gives zeros and lse = -inf
  const SliceOffsets so_end = slice_offsets(p, b, h);
  T* out = static_cast<T*>(p.out) + so_end.o;
#pragma unroll
  for (int mi = 0; mi < MW; ++mi)
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      float l = l_run[mi][rr];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l != 0.f ? 1.f / l : 0.f;   // l: 0 when the row saw no key, NaN after a NaN score
      const int64_t r = m0 + row0 + mi * 16 + 8 * rr;
      if (r >= p.Lq) continue;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        const int64_t c = dt * 8 + 2 * tq;
        if (c < p.Ev) out[r * p.o_i + c * p.o_e] = from_float<T>(l != 0.f ? o[mi][dt][2 * rr] * inv : 0.f);
        if (c + 1 < p.Ev) out[r * p.o_i + (c + 1) * p.o_e] = from_float<T>(l != 0.f ? o[mi][dt][2 * rr + 1] * inv : 0.f);
      }
      if (p.lse && tq == 0)
        static_cast<T*>(p.lse)[so_end.l + r * p.l_i] =
            from_float<T>(l != 0.f ? (m_run[mi][rr] + log2f(l)) * kLn2 : -INFINITY);
    }
}

// ---------------------------------------------------------------------------------------------
// SIMT kernel: 64 query rows x 64 keys per step, 256 threads as 16 x 16, each thread a 4 x 4
// block of scores (rows ty + 16 r, keys tx + 16 c) and a 4 x 8 block of the output (columns
// tx + 16 c of a 128-wide column group; wider values run several column groups).
// ---------------------------------------------------------------------------------------------
constexpr int kSimtBM = 64, kSimtBN = 64, kSimtEC = 32, kSimtVC = 128;
constexpr int kSimtSmem = (kSimtBM * (kSimtEC + 1) + kSimtBN * (kSimtEC + 1) + kSimtBM * (kSimtBN + 1) + kSimtBN * kSimtVC) *
                          int(sizeof(float));

template <class T>
__global__ void __launch_bounds__(256) flash_fwd_simt(const AttnParams p) {
  constexpr int BM = kSimtBM, BN = kSimtBN, EC = kSimtEC, VC = kSimtVC;
  extern __shared__ float sm[];
  float* Qs = sm;                        // [BM][EC + 1]
  float* Ks = Qs + BM * (EC + 1);        // [BN][EC + 1]
  float* Ps = Ks + BN * (EC + 1);        // [BM][BN + 1]
  float* Vs = Ps + BM * (BN + 1);        // [BN][VC]
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

  const int64_t nqb = (p.Lq + BM - 1) / BM;
  const int64_t ncg = p.Ev > VC ? (p.Ev + VC - 1) / VC : 1;
  int64_t bid = blockIdx.x;
  const int64_t qb = nqb - 1 - bid % nqb;
  bid /= nqb;
  const int64_t cg = bid % ncg;
  bid /= ncg;
  const int64_t h = bid % p.Hq, b = bid / p.Hq;
  const int64_t m0 = qb * BM, c0 = cg * VC;
  const SliceOffsets so = slice_offsets(p, b, h);
  const KeyRange kr = key_range(p, b);
  const int64_t last_row = (m0 + BM < p.Lq ? m0 + BM : p.Lq) - 1;
  const int64_t kv_end = kr.end(p, last_row);
  const T* q = static_cast<const T*>(p.q) + so.q;
  const T* k = static_cast<const T*>(p.k) + so.k;
  const T* v = static_cast<const T*>(p.v) + so.v;

  int64_t lim[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t row = m0 + ty + 16 * r;
    lim[r] = row < p.Lq ? kr.end(p, row) : 0;
  }
  float o[4][8], m_run[4], l_run[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m_run[r] = -INFINITY;
    l_run[r] = 0.f;
#pragma unroll
    for (int c = 0; c < 8; ++c) o[r][c] = 0.f;
  }

  for (int64_t j0 = 0; j0 < kv_end; j0 += BN) {
    float s[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[r][c] = 0.f;
    for (int64_t e0 = 0; e0 < p.E; e0 += EC) {
      __syncthreads();
#pragma unroll
      for (int u = 0; u < BM * EC / 256; ++u) {
        const int idx = tid + 256 * u, r = idx / EC, e = idx % EC;
        const bool eok = e0 + e < p.E;
        Qs[r * (EC + 1) + e] = eok && m0 + r < p.Lq ? to_float(q[(m0 + r) * p.q_i + (e0 + e) * p.q_e]) : 0.f;
        Ks[r * (EC + 1) + e] = eok && j0 + r < kr.n ? to_float(k[(j0 + r) * p.k_j + (e0 + e) * p.k_e]) : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int e = 0; e < EC; ++e) {
        float a[4], bb[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = Qs[(ty + 16 * r) * (EC + 1) + e];
#pragma unroll
        for (int c = 0; c < 4; ++c) bb[c] = Ks[(tx + 16 * c) * (EC + 1) + e];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) s[r][c] = fmaf(a[r], bb[c], s[r][c]);
      }
    }
    __syncthreads();   // every thread is done with the last tile's Ps and Vs
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float mx = m_run[r];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t j = j0 + tx + 16 * c;
        float x = s[r][c] * p.scale_log2;
        if (j >= lim[r]) x = -INFINITY;
        else if (p.mask) x = apply_mask<T>(x, p, so.m, m0 + ty + 16 * r, j);
        s[r][c] = x;
        mx = fmaxf(mx, x);
      }
#pragma unroll
      for (int w = 8; w >= 1; w >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, w));
      const float base = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m_run[r] - base);
      m_run[r] = mx;
      float rs = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float pv = exp2f(s[r][c] - base);
        rs += pv;
        Ps[(ty + 16 * r) * (BN + 1) + tx + 16 * c] = pv;
      }
      l_run[r] = l_run[r] * alpha + rs;
#pragma unroll
      for (int c = 0; c < 8; ++c) o[r][c] *= alpha;
    }
    for (int idx = tid; idx < BN * VC; idx += 256) {
      const int jj = idx / VC, d = idx % VC;
      Vs[idx] = j0 + jj < kr.n && c0 + d < p.Ev ? to_float(v[(j0 + jj) * p.v_j + (c0 + d) * p.v_e]) : 0.f;
    }
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < BN; ++jj) {
      float pv[4], vv[8];
#pragma unroll
      for (int r = 0; r < 4; ++r) pv[r] = Ps[(ty + 16 * r) * (BN + 1) + jj];
#pragma unroll
      for (int c = 0; c < 8; ++c) vv[c] = Vs[jj * VC + tx + 16 * c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c) o[r][c] = fmaf(pv[r], vv[c], o[r][c]);
    }
  }

  T* out = static_cast<T*>(p.out) + so.o;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    float l = l_run[r];
#pragma unroll
    for (int w = 8; w >= 1; w >>= 1) l += __shfl_xor_sync(0xffffffffu, l, w);
    const int64_t row = m0 + ty + 16 * r;
    if (row >= p.Lq) continue;
    const float inv = l != 0.f ? 1.f / l : 0.f;   // l: 0 when the row saw no key, NaN after a NaN score
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int64_t col = c0 + tx + 16 * c;
      if (col < p.Ev) out[row * p.o_i + col * p.o_e] = from_float<T>(l != 0.f ? o[r][c] * inv : 0.f);   // not 0 * NaN
    }
    if (p.lse && cg == 0 && tx == 0)
      static_cast<T*>(p.lse)[so.l + row * p.l_i] = from_float<T>(l != 0.f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY);
  }
}

// ---------------------------------------------------------------------------------------------
// Choosing and launching
// ---------------------------------------------------------------------------------------------
bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

bool all_multiple_of(int64_t m, std::initializer_list<int64_t> v) {
  for (int64_t x : v) if (x % m) return false;
  return true;
}

// Every row of q, k and v starts 16-byte aligned and is contiguous along the head dim.
template <class T>
bool rows_vector_aligned(const AttnParams& p) {
  constexpr int64_t vec = 16 / sizeof(T);
  if (p.q_e != 1 || p.k_e != 1 || p.v_e != 1) return false;
  if (!aligned16(p.q) || !aligned16(p.k) || !aligned16(p.v)) return false;
  if (!all_multiple_of(vec, {p.q_h, p.q_i, p.k_h, p.k_j, p.v_h, p.v_j})) return false;
  for (int i = 0; i < p.nbatch; ++i)
    if (!all_multiple_of(vec, {p.q_b[i], p.k_b[i], p.v_b[i]})) return false;
  return true;
}

// Shape of the tensor-core kernel's block, for the benchmark (ATTNKIT_CUDA_FA_TILE): "64x1" (4 warps
// x 16 rows, the default), "64x1m3" (the same held to 168 registers and, at D = 128,
// 32-key tiles, so that 3 blocks share an SM),
// "128x1" (8 warps x 16 rows), "128x2" (4 warps x 32 rows, 32-key tiles at D = 128).
int tc_tile() {
  const char* s = std::getenv("ATTNKIT_CUDA_FA_TILE");
  if (!s) return 0;
  if (std::strcmp(s, "64x1m3") == 0) return 1;
  if (std::strcmp(s, "128x1") == 0) return 2;
  if (std::strcmp(s, "128x2") == 0) return 3;
  return 0;
}

template <class T, int D, int NW, int MW, int MINB = 1, int BN = (MW == 2 && D == 128 ? 32 : 64)>
void launch_tc(const AttnParams& p, cudaStream_t s) {
  constexpr int smem = tc_smem_bytes<T, D, NW, MW, BN>();
  constexpr int BM = 16 * NW * MW;
  auto kern = flash_fwd_tc<T, D, NW, MW, BN, MINB>;
  prepare_kernel(reinterpret_cast<const void*>(kern), NW * 32, smem);
  const int64_t blocks = (p.Lq + BM - 1) / BM * p.Hq * p.B;
  kern<<<static_cast<unsigned>(blocks), NW * 32, smem, s>>>(p);
  AK_LAUNCHED("flash_fwd_tc");
}

template <class T>
void launch_simt(const AttnParams& p, cudaStream_t s) {
  auto kern = flash_fwd_simt<T>;
  prepare_kernel(reinterpret_cast<const void*>(kern), 256, kSimtSmem);
  const int64_t ncg = p.Ev > kSimtVC ? (p.Ev + kSimtVC - 1) / kSimtVC : 1;
  const int64_t blocks = (p.Lq + kSimtBM - 1) / kSimtBM * ncg * p.Hq * p.B;
  kern<<<static_cast<unsigned>(blocks), 256, kSimtSmem, s>>>(p);
  AK_LAUNCHED("flash_fwd_simt");
}

template <class T>
void run_attention(const AttnParams& p, cudaStream_t s) {
  const char* force = std::getenv("ATTNKIT_CUDA_ATTN");   // testing: "simt" forces the plain twin
  const bool simt_only = force && std::strcmp(force, "simt") == 0;
  if (!simt_only && decode_fits<T>(p)) {
    launch_decode<T>(p, device_sm_count(), s);
    return;
  }
  if constexpr (!std::is_same<T, float>::value) {
    if (!simt_only && p.Lk < (int64_t(1) << 30) && p.E > 0 && p.Ev > 0 && p.E <= 128 && p.Ev <= 128 && p.E % 8 == 0 && p.Ev % 8 == 0 &&
        rows_vector_aligned<T>(p)) {
      const bool d64 = p.E <= 64 && p.Ev <= 64;
      switch (tc_tile()) {
        case 1: d64 ? launch_tc<T, 64, 4, 1, 3>(p, s) : launch_tc<T, 128, 4, 1, 3, 32>(p, s); break;
        case 2: d64 ? launch_tc<T, 64, 8, 1>(p, s) : launch_tc<T, 128, 8, 1>(p, s); break;
        case 3: d64 ? launch_tc<T, 64, 4, 2>(p, s) : launch_tc<T, 128, 4, 2>(p, s); break;
        default: d64 ? launch_tc<T, 64, 4, 1>(p, s) : launch_tc<T, 128, 4, 1>(p, s); break;
      }
      return;
    }
  }
  launch_simt<T>(p, s);
}

}  // namespace

void attention(const AttnProblem& pr) {
  if (pr.B == 0 || pr.Hq == 0 || pr.Lq == 0) return;
  cudaStream_t s = stream_of(pr.stream);
  AttnParams p;
  std::memset(&p, 0, sizeof(p));
  p.q = pr.q; p.k = pr.k; p.v = pr.v; p.out = pr.out; p.lse = pr.lse;
  p.mask = pr.mask; p.mask_bool = pr.mask_bool;
  p.causal = pr.causal == CausalAlign::top_left ? 1 : pr.causal == CausalAlign::bottom_right ? 2 : 0;
  p.scale_log2 = static_cast<float>(pr.scale * 1.4426950408889634);
  p.B = pr.B; p.Hq = pr.Hq; p.Hk = pr.Hk; p.G = pr.Hq / pr.Hk;
  p.Lq = pr.Lq; p.Lk = pr.Lk; p.E = pr.E; p.Ev = pr.Ev;
  p.nbatch = pr.nbatch;
  for (int i = 0; i < pr.nbatch; ++i) {
    p.batch_shape[i] = pr.batch_shape[i];
    p.q_b[i] = pr.q_b[i]; p.k_b[i] = pr.k_b[i]; p.v_b[i] = pr.v_b[i];
    p.o_b[i] = pr.o_b[i]; p.l_b[i] = pr.l_b[i]; p.m_b[i] = pr.m_b[i];
  }
  p.q_h = pr.q_h; p.q_i = pr.q_i; p.q_e = pr.q_e;
  p.k_h = pr.k_h; p.k_j = pr.k_j; p.k_e = pr.k_e;
  p.v_h = pr.v_h; p.v_j = pr.v_j; p.v_e = pr.v_e;
  p.o_h = pr.o_h; p.o_i = pr.o_i; p.o_e = pr.o_e;
  p.l_h = pr.l_h; p.l_i = pr.l_i;
  p.m_h = pr.m_h; p.m_i = pr.m_i; p.m_j = pr.m_j;
  if (p.B * p.Hq * ((p.Lq + 15) / 16) > (int64_t(1) << 31) - 1)
    throw ValueError("query: too many (batch, head, row block) triples for one CUDA launch");

  // kv_lengths arrive in host memory: one copy to the device, ordered on the caller's stream
  // (its distinct entries only, reached through len_b).
  const size_t len_bytes = pr.kv_len ? sizeof(int64_t) * static_cast<size_t>(pr.kv_len_count) : 0;
  StreamBuffer lengths(len_bytes, s);
  if (pr.kv_len) {
    AK_CUDA(cudaMemcpyAsync(lengths.ptr, pr.kv_len, len_bytes, cudaMemcpyHostToDevice, s));
    p.kv_len = lengths.as<int64_t>();
    for (int i = 0; i < pr.nbatch; ++i) p.len_b[i] = pr.len_b[i];
  }
  switch (pr.dtype) {
    case DType::f32: run_attention<float>(p, s); break;
    case DType::f16: run_attention<__half>(p, s); break;
    case DType::bf16: run_attention<__nv_bfloat16>(p, s); break;
    default: throw TypeError(std::string("query: the cuda backend has no attention for ") + dtype_name(pr.dtype));
  }
}

}}  // namespace attnkit::cuda
