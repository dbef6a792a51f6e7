// bfloat16 attention on AMX tiles (amx_bf16 only; attention.h calls these for prefill blocks).
// Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#if defined(ATTNKIT_AMX)
#include <cstdint>

#include "attnkit/problems.h"
#include "cpu/amx_tiles.h"
#include "cpu/simd.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// bfloat16 prefill on AMX tiles (amx_bf16, work items of more than kFewRows rows): only the two
// products change. S^T = K Q^T takes K as the A operand and Q^T as B, so its float tiles land
// in S^T (one row per key), where the masking and the online softmax run as on every path; the
// scale is applied to S^T after the product (Q stays the caller's bfloat16). O += P V takes
// P (P^T read back by query and rounded to bfloat16, as PyTorch's bf16 flash attention does)
// as A and V as B. Products of bfloat16 values are exact in float and summed in float.
// Buffers (bfloat16, 1 KiB tiles; Ek = E rounded up to 32, depth past E and keys past nk zero):
//   Qb  [kBlockRows / 16][Ek / 32][16 depth pairs][16 queries][2]   Q^T, B tiles, packed once per block
//   Kb  [kTileKeys / 16][Ek / 32][16 keys][32 depth]                 a key tile's K, A tiles
//   Pb  [kBlockRows / 16][kTileKeys / 32][16 queries][32 keys]       P, A tiles
//   Vb  [EvPad / 16][kTileKeys / 32][16 key pairs][16 columns][2]    V, B tiles (pairs of consecutive keys)
inline int64_t amx_attn_elems(int64_t E, int64_t EvPad) {
  const int64_t Ek = ceil_div(E, kAmxDepth) * kAmxDepth;
  return (kBlockRows + kTileKeys) * Ek + kBlockRows * kTileKeys + EvPad * kTileKeys;
}

// Query row rr of a block (qr: its E elements, step q_e; nullptr: a padding row) into Qb.
inline void amx_pack_q_row(bf16_t* Qb, int64_t ket, int64_t rr, const bf16_t* qr, int64_t q_e, int64_t E) {
  bf16_t* dst = Qb + (rr / kAmxCols) * ket * kAmxTileElems + (rr % kAmxCols) * 2;
  for (int64_t d = 0; d < ket * kAmxDepth; ++d)
    dst[(d / kAmxDepth) * kAmxTileElems + (d % kAmxDepth) / 2 * 2 * kAmxCols + d % 2] =
        qr && d < E ? qr[d * q_e] : bf16_t{0};
}

// S^T[0, nk) x [0, ncols) = K Q^T, unscaled: keys ks[0, nk) (rows k_j apart) into Kb, then 2 x 2
// blocks of tiles (32 keys x 32 queries).
inline void amx_scores(const AttnProblem& p, const bf16_t* ks, int64_t nk, int64_t ncols, const bf16_t* Qb, int64_t ket,
                       bf16_t* Kb, float* S, int64_t ldS) {
  const int64_t kr = ceil_div(nk, kAmxRows), qt = ceil_div(ncols, kAmxCols);
  for (int64_t jj = 0; jj < kr * kAmxRows; ++jj) {
    bf16_t* dst = Kb + (jj / kAmxRows) * ket * kAmxTileElems + (jj % kAmxRows) * kAmxDepth;
    for (int64_t t = 0; t < ket; ++t) {
      bf16_t* d = dst + t * kAmxTileElems;
      const int64_t m = jj < nk ? imin(kAmxDepth, p.E - t * kAmxDepth) : 0;
      if (p.k_e == 1) std::memcpy(d, ks + jj * p.k_j + t * kAmxDepth, sizeof(bf16_t) * m);
      else for (int64_t e = 0; e < m; ++e) d[e] = ks[jj * p.k_j + (t * kAmxDepth + e) * p.k_e];
      std::memset(d + m, 0, sizeof(bf16_t) * (kAmxDepth - m));
    }
  }
  for (int64_t r = 0; r < kr; r += 2)
    for (int64_t c = 0; c < qt; c += 2) {
      const bf16_t* b[2] = {Qb + c * ket * kAmxTileElems, Qb + imin(c + 1, qt - 1) * ket * kAmxTileElems};
      amx_block_any(r + 1 < kr, c + 1 < qt, ket, Kb + r * ket * kAmxTileElems, b, ket, nullptr,
                    S + r * kAmxRows * ldS + c * kAmxCols, ldS, true);
    }
}

// O[0, 16 ceil(n / 16)) x [0, EvPad) += P V: P from P^T (S, the tile's nk keys) rounded to bfloat16
// into Pb, V rows vs[0, nk) into Vb, then 2 x 2 blocks of tiles (32 queries x 32 columns). Both are
// packed a pair of keys at a time, one 32-bit word (key 2k low, 2k + 1 high) per query or column:
// 16 queries' words of P^T scattered down a row tile's column of pairs, 16 columns of V stored whole.
inline void amx_pv(const AttnProblem& p, const float* S, int64_t ldS, int64_t n, int64_t nk, const bf16_t* vs,
                   int64_t EvPad, bf16_t* Pb, bf16_t* Vb, float* O) {
  static_assert(Simd<float>::W == kAmxRows && kAmxRows == kAmxCols, "a vector of floats is one tile row or column");
  const int64_t kt = ceil_div(nk, kAmxDepth), mt = ceil_div(n, kAmxRows), np = EvPad / kAmxCols;
  const bool v_vec = p.v_e == 1 && p.Ev % kAmxCols == 0;
  const __m512i down = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(kAmxDepth / 2));  // word offsets of 16 rows of an A tile
  for (int64_t k = 0; k < kt * kAmxDepth / 2; ++k) {
    const bool even = 2 * k < nk, odd = 2 * k + 1 < nk;
    const int64_t t = k / (kAmxDepth / 2), kk = k % (kAmxDepth / 2);
    for (int64_t i = 0; i < mt; ++i) {  // P: queries 16i .. 16i + 16
      vu32 w = even ? bf16_bits(vload(S + 2 * k * ldS + i * kAmxRows)) : vu32{};
      if (odd) w |= bf16_bits(vload(S + (2 * k + 1) * ldS + i * kAmxRows)) << 16;
      uint32_t* dst = reinterpret_cast<uint32_t*>(Pb + (i * kt + t) * kAmxTileElems) + kk;
      _mm512_i32scatter_epi32(dst, down, (__m512i)w, 4);
    }
    const bf16_t* v0 = even ? vs + 2 * k * p.v_j : vs;
    for (int64_t c = 0; c < np; ++c) {  // V: columns 16c .. 16c + 16
      bf16_t* dst = Vb + (c * kt + t) * kAmxTileElems + kk * 2 * kAmxCols;
      const int64_t e0 = c * kAmxCols;
      if (v_vec && e0 < p.Ev) {
        vu16 lo{}, hi{};
        if (even) std::memcpy(&lo, v0 + e0, sizeof lo);
        if (odd) std::memcpy(&hi, v0 + p.v_j + e0, sizeof hi);
        const vu32 w = __builtin_convertvector(lo, vu32) | (__builtin_convertvector(hi, vu32) << 16);
        std::memcpy(dst, &w, sizeof w);
      } else {
        for (int64_t e = 0; e < kAmxCols; ++e) {
          const bool in = e0 + e < p.Ev;
          dst[2 * e] = even && in ? v0[(e0 + e) * p.v_e] : bf16_t{0};
          dst[2 * e + 1] = odd && in ? v0[p.v_j + (e0 + e) * p.v_e] : bf16_t{0};
        }
      }
    }
  }
  for (int64_t r = 0; r < mt; r += 2)
    for (int64_t c = 0; c < np; c += 2) {
      const bf16_t* b[2] = {Vb + c * kt * kAmxTileElems, Vb + imin(c + 1, np - 1) * kt * kAmxTileElems};
      amx_block_any(r + 1 < mt, c + 1 < np, kt, Pb + r * kt * kAmxTileElems, b, kt, nullptr,
                    O + r * kAmxRows * EvPad + c * kAmxCols, EvPad, false);
    }
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
#endif  // ATTNKIT_AMX
