// AMX tiles for the amx_bf16 and amx_int8 paths: the only tile operations their code uses, each a
// thin inline wrapper: amx_tile_config (ldtilecfg: all eight tiles 16 rows x 64 bytes), tile_zero,
// tile_load, tile_store, tile_dpbf16 (tdpbf16ps), tile_dpbusd (tdpbusd) and amx_tile_release. Tile
// numbers are template arguments (the instructions encode them). Part of the kernel unit compiled with ATTNKIT_AMX; internal
// linkage only.
//
// ATTNKIT_AMX_EMULATE (CMake option, a test build): the same operations in plain C++ on a
// thread-local register file, with the Intel SDM's semantics, so that the path's packing,
// blocking and epilogues run (and are tested) on CPUs without AMX. Like the hardware, a tile
// operation on a thread that has not loaded a tile configuration stops the process (#UD there).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(ATTNKIT_AMX_EMULATE)
#include <cstdio>
#include <cstdlib>
#else
#include <immintrin.h>
#endif

#include "cpu/isa_config.h"
#include "cpu/simd.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

constexpr int kTileCount = 8, kTileBytes = 64;  // palette 1: 8 tiles of up to 16 rows x 64 bytes

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

inline TileConfig full_tiles() {
  TileConfig cfg;
  for (int t = 0; t < kTileCount; ++t) {
    cfg.colsb[t] = kTileBytes;
    cfg.rows[t] = kAmxRows;
  }
  return cfg;
}

#if defined(ATTNKIT_AMX_EMULATE)

struct EmulatedTiles {
  alignas(64) uint8_t tile[kTileCount][kAmxRows][kTileBytes];
  bool configured = false;
};

inline EmulatedTiles& emulated_tiles() {
  static thread_local EmulatedTiles state;
  return state;
}

inline EmulatedTiles& configured_tiles() {
  EmulatedTiles& s = emulated_tiles();
  if (!s.configured) {
    std::fputs("attnkit (AMX emulation): a tile operation on a thread without a tile configuration\n", stderr);
    std::abort();
  }
  return s;
}

// ldtilecfg: takes the configuration (only the one this path uses) and zeroes every tile.
inline void amx_tile_config() {
  const TileConfig cfg = full_tiles();
  EmulatedTiles& s = emulated_tiles();
  for (int t = 0; t < kTileCount; ++t)
    if (cfg.palette != 1 || cfg.colsb[t] != kTileBytes || cfg.rows[t] != kAmxRows) std::abort();
  std::memset(s.tile, 0, sizeof s.tile);
  s.configured = true;
}
inline void amx_tile_release() { emulated_tiles().configured = false; }

template <int T> inline void tile_zero() { std::memset(configured_tiles().tile[T], 0, sizeof(EmulatedTiles::tile[T])); }

template <int T> inline void tile_load(const void* base, int64_t stride) {
  EmulatedTiles& s = configured_tiles();
  for (int r = 0; r < kAmxRows; ++r) std::memcpy(s.tile[T][r], static_cast<const char*>(base) + r * stride, kTileBytes);
}

template <int T> inline void tile_store(void* base, int64_t stride) {
  EmulatedTiles& s = configured_tiles();
  for (int r = 0; r < kAmxRows; ++r) std::memcpy(static_cast<char*>(base) + r * stride, s.tile[T][r], kTileBytes);
}

// bfloat16 element i of a tile row, as the hardware reads it: denormals are zero (DAZ).
inline float emulated_bf16(const uint8_t* row, int i) {
  uint16_t h;
  std::memcpy(&h, row + 2 * i, 2);
  if ((h & 0x7f80u) == 0) h &= 0x8000u;
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// tdpbf16ps C, A, B (Intel SDM): for each row m of C, depth pair k < A.colsb / 4 and column
// n < C.colsb / 4: C[m][n] += A[m][2k] * B[k][2n] + A[m][2k+1] * B[k][2n+1] (bfloat16 pairs of
// A's row m and of B's row k; products and sums in float, denormal results flushed to zero).
template <int C, int A, int B> inline void tile_dpbf16() {
  static_assert(C != A && C != B && A != B, "tdpbf16ps needs three different tiles");
  EmulatedTiles& s = configured_tiles();
  constexpr int pairs = kTileBytes / 4, cols = kTileBytes / 4;
  for (int m = 0; m < kAmxRows; ++m) {
    float acc[cols];
    std::memcpy(acc, s.tile[C][m], sizeof acc);
    for (int k = 0; k < pairs; ++k) {
      const float a0 = emulated_bf16(s.tile[A][m], 2 * k), a1 = emulated_bf16(s.tile[A][m], 2 * k + 1);
      for (int n = 0; n < cols; ++n) {
        float t = acc[n] + a0 * emulated_bf16(s.tile[B][k], 2 * n);
        t = t + a1 * emulated_bf16(s.tile[B][k], 2 * n + 1);
        uint32_t u;
        std::memcpy(&u, &t, 4);
        if ((u & 0x7f800000u) == 0) u &= 0x80000000u;  // FTZ
        std::memcpy(&acc[n], &u, 4);
      }
    }
    std::memcpy(s.tile[C][m], acc, sizeof acc);
  }
}

// tdpbusd C, A, B (Intel SDM): C[m][n] (int32) += sum over k < 16, i < 4 of A[m][4k + i] (u8) *
// B[k][4n + i] (s8), wrapping like the hardware.
template <int C, int A, int B> inline void tile_dpbusd() {
  static_assert(C != A && C != B && A != B, "tdpbusd needs three different tiles");
  EmulatedTiles& s = configured_tiles();
  for (int m = 0; m < kAmxRows; ++m) {
    int32_t acc[16];
    std::memcpy(acc, s.tile[C][m], sizeof acc);
    for (int n = 0; n < 16; ++n) {
      uint32_t t = static_cast<uint32_t>(acc[n]);
      for (int k = 0; k < 16; ++k)
        for (int i = 0; i < 4; ++i)
          t += static_cast<uint32_t>(s.tile[A][m][4 * k + i] * static_cast<int8_t>(s.tile[B][k][4 * n + i]));
      acc[n] = static_cast<int32_t>(t);
    }
    std::memcpy(s.tile[C][m], acc, sizeof acc);
  }
}

#else  // the AMX instructions

// GCC's tile intrinsics are asm statements that name the tile in the instruction text, so the
// tile number must be a literal: each wrapper picks one of eight spellings at compile time. They
// also do not tell the compiler that tileloadd reads memory (nor, for ldtilecfg, all 64 bytes
// of the configuration): the barriers make earlier stores (packed tiles) visible to them.
#define ATTNKIT_TILE_CASES(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

inline void amx_tile_config() {
  const TileConfig cfg = full_tiles();
  __asm__ volatile("" ::: "memory");
  _tile_loadconfig(&cfg);
}
inline void amx_tile_release() { _tile_release(); }

template <int T> inline void tile_zero() {
#define ATTNKIT_TILE_ZERO(n) if constexpr (T == n) _tile_zero(n);
  ATTNKIT_TILE_CASES(ATTNKIT_TILE_ZERO)
#undef ATTNKIT_TILE_ZERO
}

template <int T> inline void tile_load(const void* base, int64_t stride) {
  __asm__ volatile("" ::: "memory");
#define ATTNKIT_TILE_LOAD(n) if constexpr (T == n) _tile_loadd(n, base, stride);
  ATTNKIT_TILE_CASES(ATTNKIT_TILE_LOAD)
#undef ATTNKIT_TILE_LOAD
}

template <int T> inline void tile_store(void* base, int64_t stride) {
#define ATTNKIT_TILE_STORE(n) if constexpr (T == n) _tile_stored(n, base, stride);
  ATTNKIT_TILE_CASES(ATTNKIT_TILE_STORE)
#undef ATTNKIT_TILE_STORE
  __asm__ volatile("" ::: "memory");
}

// tdpbf16ps C, A, B for the tiles this path uses: C tile 2i + j of a 2 x 2 block takes A tile 4 + i
// and B tile 6 + j.
template <int C, int A, int B> inline void tile_dpbf16() {
  static_assert((A == 4 || A == 5) && (B == 6 || B == 7) && C == 2 * (A - 4) + (B - 6), "C = 2i + j, A = 4 + i, B = 6 + j");
  if constexpr (C == 0) _tile_dpbf16ps(0, 4, 6);
  if constexpr (C == 1) _tile_dpbf16ps(1, 4, 7);
  if constexpr (C == 2) _tile_dpbf16ps(2, 5, 6);
  if constexpr (C == 3) _tile_dpbf16ps(3, 5, 7);
}

// tdpbusd (AMX-INT8, the amx_int8 path's quantized GEMM), the same tile numbering.
template <int C, int A, int B> inline void tile_dpbusd() {
  static_assert((A == 4 || A == 5) && (B == 6 || B == 7) && C == 2 * (A - 4) + (B - 6), "C = 2i + j, A = 4 + i, B = 6 + j");
#if defined(__AMX_INT8__)
  if constexpr (C == 0) _tile_dpbusd(0, 4, 6);
  if constexpr (C == 1) _tile_dpbusd(1, 4, 7);
  if constexpr (C == 2) _tile_dpbusd(2, 5, 6);
  if constexpr (C == 3) _tile_dpbusd(3, 5, 7);
#else
  static_assert(C < 0, "tdpbusd: compile with -mamx-int8 (the amx_int8 level)");
#endif
}

#undef ATTNKIT_TILE_CASES
#endif

// ---------------------------------------------------------------------------------------------
// The block product every tile user shares (linear: gemm_amx.h; bfloat16 prefill: attention_amx.h).
// Operands in tiles of 1 KiB: A tiles 16 rows x 32 bfloat16 (one depth tile), B tiles 16 depth
// pairs x 16 columns x 2, C 16 x 16 floats.
constexpr int64_t kAmxTileElems = kAmxRows * kAmxDepth;  // bfloat16 per A or B tile (1 KiB)

// C tile 2i + j of the block: zeroed (first depth block) or loaded from the float C block.
template <int I, int J, int NRT, int NPT>
inline void amx_c_begin(float* c, int64_t ldc, bool first) {
  if constexpr (I < NRT && J < NPT) {
    if (first) tile_zero<2 * I + J>();
    else tile_load<2 * I + J>(c + I * kAmxRows * ldc + J * kAmxCols, ldc * 4);
  }
}
template <int I, int J, int NRT, int NPT>
inline void amx_c_end(float* c, int64_t ldc) {
  if constexpr (I < NRT && J < NPT) tile_store<2 * I + J>(c + I * kAmxRows * ldc + J * kAmxCols, ldc * 4);
}
template <int I, int J, int NRT, int NPT>
inline void amx_dp() {
  if constexpr (I < NRT && J < NPT) tile_dpbf16<2 * I + J, 4 + I, 6 + J>();
}

// C (NRT row tiles x NPT panels, float, row stride ldc) (+)= A B over kt depth tiles. a: the
// block's row tiles (A tiles of row tile i at a + (i * kt + t) * 512); b[j]: panel j's `full`
// whole depth tiles, then (t = full < kt) btail + j * 512.
template <int NRT, int NPT>
inline void amx_block(int64_t kt, const bf16_t* a, const bf16_t* const* b, int64_t full, const bf16_t* btail,
                      float* c, int64_t ldc, bool first) {
  amx_c_begin<0, 0, NRT, NPT>(c, ldc, first);
  amx_c_begin<0, 1, NRT, NPT>(c, ldc, first);
  amx_c_begin<1, 0, NRT, NPT>(c, ldc, first);
  amx_c_begin<1, 1, NRT, NPT>(c, ldc, first);
  for (int64_t t = 0; t < kt; ++t) {
    tile_load<6>(t < full ? b[0] + t * kAmxTileElems : btail, kTileBytes);
    if constexpr (NPT > 1) tile_load<7>(t < full ? b[1] + t * kAmxTileElems : btail + kAmxTileElems, kTileBytes);
    tile_load<4>(a + t * kAmxTileElems, kTileBytes);
    if constexpr (NRT > 1) tile_load<5>(a + (kt + t) * kAmxTileElems, kTileBytes);
    amx_dp<0, 0, NRT, NPT>();
    amx_dp<0, 1, NRT, NPT>();
    amx_dp<1, 0, NRT, NPT>();
    amx_dp<1, 1, NRT, NPT>();
  }
  amx_c_end<0, 0, NRT, NPT>(c, ldc);
  amx_c_end<0, 1, NRT, NPT>(c, ldc);
  amx_c_end<1, 0, NRT, NPT>(c, ldc);
  amx_c_end<1, 1, NRT, NPT>(c, ldc);
}

// The same for a block's run-time shape: two row tiles or one, two panels or one.
inline void amx_block_any(bool two_rows, bool two_panels, int64_t kt, const bf16_t* a, const bf16_t* const* b, int64_t full,
                          const bf16_t* btail, float* c, int64_t ldc, bool first) {
  if (two_rows && two_panels) amx_block<2, 2>(kt, a, b, full, btail, c, ldc, first);
  else if (two_rows) amx_block<2, 1>(kt, a, b, full, btail, c, ldc, first);
  else if (two_panels) amx_block<1, 2>(kt, a, b, full, btail, c, ldc, first);
  else amx_block<1, 1>(kt, a, b, full, btail, c, ldc, first);
}


}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
