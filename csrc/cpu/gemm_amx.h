// bfloat16 GEMM on AMX tiles (the amx_bf16 path; compiled only with ATTNKIT_AMX): the half
// precision GEMM of gemm.h (same blocking into row blocks x panels x depth blocks, same float C
// block per thread, same epilogues) with its micro-kernel replaced by tdpbf16ps on 2 x 2 tiles
// of C (32 rows x 32 columns). The tile operations are amx_tiles.h's wrappers, so a build with
// ATTNKIT_AMX_EMULATE runs this code without AMX.
//
//   W^T (packed, gemm_pack_task): panels of 16 columns, kAmxKC deep, depth pairs:
//     [K2][16][2] per panel and depth block, so depth tile t (16 pairs) is 1 KiB at t * 512;
//     a block's last tile may be partial (K2 % 16 pairs): it is copied into a zeroed tile.
//   A (packed per item and depth block, here): row tile i, depth tile t -> 16 rows x 32 bfloat16
//     at (i * kt + t) * 512, rows past M and depth past K zero.
// Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/amx_tiles.h"
#include "cpu/gemm.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// A rows m0 .. m0 + mlen, depth k0 .. k0 + klen, into tiles (see the top): mt row tiles x kt depth tiles.
template <class S>
void amx_pack_a(const GemmRun<S>& run, int64_t m0, int64_t mlen, int64_t k0, int64_t klen, int64_t mt, int64_t kt, S* Ap) {
  const GemmProblem& p = *run.p;
  for (int64_t r = 0; r < mt * kAmxRows; ++r) {
    S* row = Ap + (r / kAmxRows) * kt * kAmxTileElems + (r % kAmxRows) * kAmxDepth;
    const S* ar = r < mlen ? run.a + gemm_row_offset(p, m0 + r) + k0 * p.a_k : nullptr;
    for (int64_t t = 0; t < kt; ++t) {
      S* d = row + t * kAmxTileElems;
      const int64_t n = ar ? imin(kAmxDepth, klen - t * kAmxDepth) : 0;
      if (n > 0 && p.a_k == 1) std::memcpy(d, ar + t * kAmxDepth, sizeof(S) * n);  // ar is null for padding rows
      else for (int64_t kk = 0; kk < n; ++kk) d[kk] = ar[(t * kAmxDepth + kk) * p.a_k];
      std::memset(d + n, 0, sizeof(S) * (kAmxDepth - n));
    }
  }
}

template <class S>
size_t gemm_amx_workspace(int64_t ldcb) {
  return sizeof(float) * static_cast<size_t>(kGemmMC * ldcb) + sizeof(S) * static_cast<size_t>(kGemmMC * kAmxKC + 2 * kAmxTileElems);
}

template <class S>
void gemm_task_amx(void* ctx, int64_t begin, int64_t end, int tid) {
  static_assert(std::is_same<S, bf16_t>::value && kPanelCols<S> == kAmxCols && kDepthGroup<S> == 2 && kAmxKC % kAmxDepth == 0 &&
                kGemmMC % (2 * kAmxRows) == 0, "the AMX layout: bfloat16 panels of 16 columns, depth pairs, whole tiles");
  GemmRun<S>& run = *static_cast<GemmRun<S>*>(ctx);
  const GemmProblem& p = *run.p;
  constexpr int NR = kAmxCols;
  const int64_t ldcb = run.ldcb;
  float* C = run.ws.template get<float>(tid);                // kGemmMC x ldcb
  S* Ap = reinterpret_cast<S*>(C + kGemmMC * ldcb);          // kGemmMC x kAmxKC, in tiles
  S* Bt = Ap + kGemmMC * kAmxKC;                             // two panels' partial last depth tile
  amx_tile_config();  // this thread's tile configuration: any pool thread may run any item
  for (int64_t it = begin; it < end; ++it) {
    const auto [m0, mlen, pn0, pn1] = gemm_item(run, it);
    const int64_t mt = ceil_div(mlen, kAmxRows);
    for (int64_t kc = 0; kc < run.nkc; ++kc) {
      const int64_t k0 = kc * kAmxKC, klen = imin(kAmxKC, p.K - k0);
      const int64_t K2 = ceil_div(klen, 2), kt = ceil_div(klen, kAmxDepth), full = K2 / kAmxRows;
      const bool first = kc == 0, last = kc == run.nkc - 1;
      amx_pack_a(run, m0, mlen, k0, klen, mt, kt, Ap);
      const S* bk = run.bpack + kc * kAmxKC * run.npan * NR;
      for (int64_t pn = pn0; pn < pn1; pn += 2) {
        const int np = static_cast<int>(imin(2, pn1 - pn));
        const S* b[2] = {bk + pn * 2 * K2 * NR, bk + (pn + np - 1) * 2 * K2 * NR};
        if (kt > full) {  // the partial last depth tile of each panel, zero-padded
          for (int j = 0; j < np; ++j) {
            const int64_t pairs = K2 - full * kAmxRows;
            std::memcpy(Bt + j * kAmxTileElems, b[j] + full * kAmxTileElems, sizeof(S) * pairs * 2 * NR);
            std::memset(Bt + j * kAmxTileElems + pairs * 2 * NR, 0, sizeof(S) * (kAmxRows - pairs) * 2 * NR);
          }
        }
        for (int64_t rt = 0; rt < mt; rt += 2) {
          const bool two_rows = rt + 1 < mt;
          float* c = C + rt * kAmxRows * ldcb + (pn - pn0) * NR;
          const S* a = Ap + rt * kt * kAmxTileElems;
          amx_block_any(two_rows, np == 2, kt, a, b, full, Bt, c, ldcb, first);
          if (!last) continue;
          const int64_t rows = imin((two_rows ? 2 : 1) * kAmxRows, mlen - rt * kAmxRows);
          for (int j = 0; j < np; ++j) half_epilogue(run, c + j * NR, ldcb, rows, m0 + rt * kAmxRows, pn + j);
        }
      }
    }
  }
  amx_tile_release();  // the thread's tile state back to its initial (unsaved) state
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
