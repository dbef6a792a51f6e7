// Quantized GEMM for one ISA level: out (M, N) = act(A (M, K) @ W (N, K)^T + bias) with W int8
// (a scale per column) or int4 (a scale per column and group of K), A float32 or bfloat16.
//   1) A's rows are quantized once per call: x_q = round(x / s_m), s_m = max|x_m| / 127, as s8
//      (or, for int8 weights on the vpdpbusd / tdpbusd levels, as u8 = x_q + 128; the packed
//      column sums csum = 128 * sum_k q then take the shift back out).
//   2) int32 dot products over the whole (padded) depth per register tile of rows x 1 or 2 panels
//      of 16 columns; int4: int32 per group, then float += (dot - 8 * sum_group x_q) * scale_g
//      (nibbles are stored as q + 8, unsigned, so vpdpbusd takes W as its u8 operand and x_q as s8).
//   3) the epilogue: one float rescale (* s_m * scale_n), bias, activation or the SwiGLU gate, the
//      narrowing to x's dtype, into out.
// Levels: 3 = 512-bit vpdpbusd (AVX-512 VNNI), 2 = 256-bit vpdpbusd (AVX-VNNI), 1 = AVX2
// vpmaddubsw + vpmaddwd, 0 = plain C++. AVX2 without VNNI: vpmaddubsw adds two u8 x s8 products
// into a saturating int16; with x_q and q in [-127, 127] the kernel multiplies |x_q| (u8 <= 127)
// by q with x_q's sign moved onto it (vpsignb), so a pair is at most 2 * 127 * 127 = 32258 < 32767:
// it cannot saturate (int4: 2 * 15 * 127). ATTNKIT_AMX (amx_int8): int8 with 32+ rows runs on tiles
// (tdpbusd, 2 x 2 tiles of 16 x 16 int32), the rest on level 3.
// Part of the quantized kernel unit (qkernels.cpp); internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "attnkit/problems.h"
#include "cpu/gemm.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"
#if defined(ATTNKIT_AMX)
#include "cpu/amx_tiles.h"
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int kQLevel = 3;
#elif defined(__AVXVNNI__)
constexpr int kQLevel = 2;
#elif defined(__AVX2__)
constexpr int kQLevel = 1;
#else
constexpr int kQLevel = 0;
#endif
#if defined(ATTNKIT_AMX)
constexpr bool kQAmx = true;
#else
constexpr bool kQAmx = false;
#endif
constexpr bool kShiftA = kQLevel >= 2;  // int8 weights: activations as u8 = x_q + 128
constexpr int kQRows8 = kQLevel == 3 ? 8 : kQLevel == 2 ? 6 : 4;   // rows per register tile, int8
constexpr int kQRows4 = kQLevel == 3 ? 4 : 2;                      // int4
constexpr int kQPanels = kQLevel == 3 ? 2 : 1;                     // panels per register tile
constexpr int kTileCols = 2 * kQuantCols;                          // the accumulator tile's row length
// int4 at 1-2 rows (decoding): each panel's weights are asked for 1 KiB ahead (16 chunks): a stream of 4-bit
// weights from DRAM went from 24.1 to 25.4-26.1 GB/s on two threads (512 B ahead: 22.8-25.4, 4 KiB: 24.9)
constexpr int kQ4Prefetch = 1024;

struct QRun {
  const GemmProblem* p = nullptr;
  const PackedWeight* w = nullptr;
  int64_t M = 0, npan = 0, kp = 0, ng = 0, group = 0;
  bool int4 = false, shift = false, amx = false;
  uint8_t* aq = nullptr;     // M (rounded up to 32) x kp: x_q (s8, or u8 with shift)
  float* as = nullptr;       // M: s_m (NaN for a row with a NaN or infinity)
  int32_t* asum = nullptr;   // int4: M x ng sums of x_q per group
  float* biasf = nullptr;    // N: the bias, widened
  const uint8_t* wb = nullptr;
  const float* ws = nullptr;     // scales
  const int32_t* wsum = nullptr; // int8: csum
  int64_t mc = 0, nmb = 0, npp = 0, pp_per_nb = 0, nnb = 0;
  // panel q: its int8 bytes ([kp / 4][16][4]), its int4 bytes (two a byte), its int4 group scales
  const int8_t* q8(int64_t q) const { return reinterpret_cast<const int8_t*>(wb) + q * kp * kQuantCols; }
  const uint8_t* q4(int64_t q) const { return wb + q * (kp / 2) * kQuantCols; }
  const float* scales4(int64_t q) const { return ws + q * ng * kQuantCols; }
  ~QRun() { std::free(aq); std::free(as); std::free(asum); std::free(biasf); }
};

// 1) A's rows m in [begin, end) quantized into run.aq: two passes over the row (max |x|, then
// round(x * 127 / max)), W lanes at a time where the row is contiguous. Rounding is to nearest even
// (the 1.5 * 2^23 trick, exact for |r| <= 127), as std::nearbyint in the default mode. A row with a
// NaN or an infinity quantizes to zeros with s_m = NaN: its outputs are NaN.
typedef uint8_t vu8 __attribute__((vector_size(Simd<float>::W)));

template <class S>
void q_row(const S* x, int64_t K, int64_t ak, int64_t kp, int off, uint8_t* q, float& sm) {
  constexpr int W = Simd<float>::W;
  const float fmax = std::numeric_limits<float>::max();
  int64_t k = 0;
  float amax = 0.0f;
  bool finite = true;
  if (ak == 1) {
    vf vmax = vf{};
    vi32 ok = vi32{} == 0;
    for (; k + W <= K; k += W) {
      const vf v = vload_as<float>(x + k), a = v < 0.0f ? -v : v;
      ok &= a <= fmax;
      vmax = a > vmax ? a : vmax;
    }
    amax = hmax(vmax);
    for (int i = 0; i < W; ++i) finite = finite && ok[i] != 0;
  }
  for (; k < K; ++k) {
    const float v = std::fabs(widen(x[k * ak]));
    finite = finite && v <= fmax;
    amax = v > amax ? v : amax;
  }
  if (!finite) {
    sm = std::numeric_limits<float>::quiet_NaN();
    std::memset(q, off, static_cast<size_t>(kp));
    return;
  }
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  sm = amax / 127.0f;
  k = 0;
  if (ak == 1) {
    const vf vinv = vset(inv), magic = vset(12582912.0f), hi = vset(127.0f), lo = vset(-127.0f);
    for (; k + W <= K; k += W) {
      vf r = vload_as<float>(x + k) * vinv;
      r = r > hi ? hi : r;
      r = r < lo ? lo : r;
      r = (r + magic) - magic;
      const vu8 b = __builtin_convertvector(__builtin_convertvector(r, vi32) + off, vu8);
      std::memcpy(q + k, &b, W);
    }
  }
  for (; k < K; ++k) {
    float r = widen(x[k * ak]) * inv;
    r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
    q[k] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(r)) + off);
  }
  if (kp > K) std::memset(q + K, off, static_cast<size_t>(kp - K));
}

template <class S>
void q_rows_task(void* ctx, int64_t begin, int64_t end, int) {
  QRun& run = *static_cast<QRun*>(ctx);
  const GemmProblem& p = *run.p;
  const S* a = static_cast<const S*>(p.a);
  for (int64_t m = begin; m < end; ++m) {
    uint8_t* q = run.aq + m * run.kp;
    q_row(a + gemm_row_offset(p, m), p.K, p.a_k, run.kp, run.shift ? 128 : 0, q, run.as[m]);
    if (run.int4)  // int4: no shift; the sums of x_q per group
      for (int64_t g = 0; g < run.ng; ++g) {
        int32_t s = 0;
        for (int64_t k = g * run.group; k < (g + 1) * run.group; ++k) s += static_cast<int8_t>(q[k]);
        run.asum[m * run.ng + g] = s;
      }
  }
}

// ---------------------------------------------------------------------------------------------
// 2) Register tiles. int8: acc[r][j * 16 + c] = sum over the padded depth of a_r . q (panel j,
// column c), as int32 (u8 a: the 128-shift still in). b[j]: panel j's [kp / 4][16][4] bytes.
// int4: facc[r][j * 16 + c] = sum_g (dot_g - 8 * asum[r][g]) * scale[j][g][c].

inline int32_t load_i32(const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

template <int R, int NP>
inline void qdot8(const uint8_t* a, int64_t lda, const int8_t* const* b, int64_t k4n, int32_t* acc) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  __m512i c[R][NP] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) c[r][j] = _mm512_setzero_si512();
  for (int64_t k4 = 0; k4 < k4n; ++k4) {
    __m512i bv[NP] = {};
    for (int j = 0; j < NP; ++j) bv[j] = _mm512_loadu_si512(b[j] + k4 * 64);
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(load_i32(a + r * lda + 4 * k4));
      for (int j = 0; j < NP; ++j) c[r][j] = _mm512_dpbusd_epi32(c[r][j], av, bv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) _mm512_storeu_si512(acc + r * kTileCols + j * 16, c[r][j]);
#elif defined(__AVX2__)
  __m256i c[R][NP][2] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) c[r][j][0] = c[r][j][1] = _mm256_setzero_si256();
#if !defined(__AVXVNNI__)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  for (int64_t k4 = 0; k4 < k4n; ++k4) {
    for (int j = 0; j < NP; ++j) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j] + k4 * 64));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j] + k4 * 64 + 32));
      for (int r = 0; r < R; ++r) {
        const __m256i av = _mm256_set1_epi32(load_i32(a + r * lda + 4 * k4));
#if defined(__AVXVNNI__)
        c[r][j][0] = _mm256_dpbusd_avx_epi32(c[r][j][0], av, b0);
        c[r][j][1] = _mm256_dpbusd_avx_epi32(c[r][j][1], av, b1);
#else
        const __m256i ua = _mm256_abs_epi8(av);  // |x_q| <= 127, and x_q's sign onto q: no int16 saturation
        c[r][j][0] = _mm256_add_epi32(c[r][j][0], _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(b0, av)), ones));
        c[r][j][1] = _mm256_add_epi32(c[r][j][1], _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(b1, av)), ones));
#endif
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kTileCols + j * 16), c[r][j][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * kTileCols + j * 16 + 8), c[r][j][1]);
    }
#else
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j)
      for (int c = 0; c < kQuantCols; ++c) {
        int32_t s = 0;
        for (int64_t k4 = 0; k4 < k4n; ++k4)
          for (int i = 0; i < 4; ++i) s += static_cast<int8_t>(a[r * lda + 4 * k4 + i]) * b[j][k4 * 64 + c * 4 + i];
        acc[r * kTileCols + j * 16 + c] = s;
      }
#endif
}

template <int R, int NP>
inline void qdot4(const uint8_t* a, int64_t lda, const uint8_t* const* b, const float* const* sc, const int32_t* asum,
                  int64_t ng, int64_t group, float* facc) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  __m512 f[R][NP] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) f[r][j] = _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi8(0x0f), mask_hi = _mm512_set1_epi8(static_cast<char>(0xf0));
  for (int64_t g = 0; g < ng; ++g) {
    // the low and high nibbles sum into separate registers: two dependency chains instead of one
    // long one (1-2 rows: the chain's latency, not the loads, bounded the weight stream). The high
    // nibbles are multiplied in place (16 q, no shift: one instruction less a chunk), their sums
    // divided by 16 once a group (exact: every term is a multiple of 16; |sum| <= 240 * 128 * K)
    __m512i c[R][NP] = {}, d[R][NP] = {};
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NP; ++j) c[r][j] = d[r][j] = _mm512_setzero_si512();
    for (int64_t ch = g * group / 8; ch < (g + 1) * group / 8; ++ch) {
      __m512i lo[NP] = {}, hi[NP] = {};
      for (int j = 0; j < NP; ++j) {
        const __m512i raw = _mm512_loadu_si512(b[j] + ch * 64);
        if (R <= 2) _mm_prefetch(reinterpret_cast<const char*>(b[j] + ch * 64 + kQ4Prefetch), _MM_HINT_T0);
        lo[j] = _mm512_and_si512(raw, mask);
        hi[j] = _mm512_and_si512(raw, mask_hi);
      }
      for (int r = 0; r < R; ++r) {
        const __m512i a0 = _mm512_set1_epi32(load_i32(a + r * lda + 8 * ch));
        const __m512i a1 = _mm512_set1_epi32(load_i32(a + r * lda + 8 * ch + 4));
        for (int j = 0; j < NP; ++j) {
          c[r][j] = _mm512_dpbusd_epi32(c[r][j], lo[j], a0);
          d[r][j] = _mm512_dpbusd_epi32(d[r][j], hi[j], a1);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512i corr = _mm512_set1_epi32(8 * asum[r * ng + g]);
      for (int j = 0; j < NP; ++j)
        f[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(c[r][j], _mm512_srai_epi32(d[r][j], 4)), corr)),
                                  _mm512_loadu_ps(sc[j] + g * 16), f[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) _mm512_storeu_ps(facc + r * kTileCols + j * 16, f[r][j]);
#elif defined(__AVX2__)
  __m256 f[R][NP][2] = {};
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) f[r][j][0] = f[r][j][1] = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0f);
#if !defined(__AVXVNNI__)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  for (int64_t g = 0; g < ng; ++g) {
    __m256i c[R][NP][2] = {};
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < NP; ++j) c[r][j][0] = c[r][j][1] = _mm256_setzero_si256();
    for (int64_t ch = g * group / 8; ch < (g + 1) * group / 8; ++ch) {
      for (int j = 0; j < NP; ++j) {
        const __m256i r0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j] + ch * 64));
        const __m256i r1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j] + ch * 64 + 32));
        const __m256i lo0 = _mm256_and_si256(r0, mask), lo1 = _mm256_and_si256(r1, mask);
        const __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(r0, 4), mask), hi1 = _mm256_and_si256(_mm256_srli_epi16(r1, 4), mask);
        for (int r = 0; r < R; ++r) {
          const __m256i a0 = _mm256_set1_epi32(load_i32(a + r * lda + 8 * ch));
          const __m256i a1 = _mm256_set1_epi32(load_i32(a + r * lda + 8 * ch + 4));
#if defined(__AVXVNNI__)
          c[r][j][0] = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(c[r][j][0], lo0, a0), hi0, a1);
          c[r][j][1] = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(c[r][j][1], lo1, a0), hi1, a1);
#else  // nibbles (u8 <= 15) x s8: pairs <= 2 * 15 * 127, no saturation
          const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(lo0, a0), _mm256_maddubs_epi16(hi0, a1));
          const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(lo1, a0), _mm256_maddubs_epi16(hi1, a1));
          c[r][j][0] = _mm256_add_epi32(c[r][j][0], _mm256_madd_epi16(p0, ones));
          c[r][j][1] = _mm256_add_epi32(c[r][j][1], _mm256_madd_epi16(p1, ones));
#endif
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256i corr = _mm256_set1_epi32(8 * asum[r * ng + g]);
      for (int j = 0; j < NP; ++j) {
        f[r][j][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[r][j][0], corr)), _mm256_loadu_ps(sc[j] + g * 16), f[r][j][0]);
        f[r][j][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[r][j][1], corr)), _mm256_loadu_ps(sc[j] + g * 16 + 8), f[r][j][1]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j) {
      _mm256_storeu_ps(facc + r * kTileCols + j * 16, f[r][j][0]);
      _mm256_storeu_ps(facc + r * kTileCols + j * 16 + 8, f[r][j][1]);
    }
#else
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NP; ++j)
      for (int c = 0; c < kQuantCols; ++c) {
        float f = 0.0f;
        for (int64_t g = 0; g < ng; ++g) {
          int32_t s = 0;
          for (int64_t k = g * group; k < (g + 1) * group; ++k) {
            const uint8_t byte = b[j][(k / 8) * 64 + c * 4 + k % 4];
            s += ((k % 8) < 4 ? (byte & 15) : (byte >> 4)) * static_cast<int8_t>(a[r * lda + k]);
          }
          f += static_cast<float>(s - 8 * asum[r * ng + g]) * sc[j][g * 16 + c];
        }
        facc[r * kTileCols + j * 16 + c] = f;
      }
#endif
}

// ---------------------------------------------------------------------------------------------
// 3) The epilogue of a tile: rows x np panels of 16 columns (int32 dot products `acc` for int8,
// the group-summed floats `facc` for int4) -> rescale (int8: (acc - csum) * scale_n * s_m; int4:
// * s_m), bias, activation or the SwiGLU gate, narrowed into out's rows m0 ... W lanes at a time;
// a panel past N's end column by column.
template <class S>
void q_epilogue(const QRun& run, const int32_t* acc, float* facc, int rows, int64_t m0, int64_t pn, int np) {
  const GemmProblem& p = *run.p;
  S* out = static_cast<S*>(p.out);
  constexpr int W = Simd<float>::W, H = kQuantCols / 2;
  static_assert(kQuantCols % W == 0, "a panel is whole vectors");
  for (int r = 0; r < rows; ++r) {
    const float sm = run.as[m0 + r];
    float* v = facc + r * kTileCols;
    const vf vsm = vset(sm);
    for (int j = 0; j < np * kQuantCols; j += W) {
      const int64_t col = pn * kQuantCols + j;
      vf f;
      if (acc) {
        // modulo 2^32 like the hardware's sums: with u8 activations acc may have wrapped (K > 66311),
        // the difference (the true s8 dot product, |.| <= 127 * 127 * K) never does
        vu32 d;
        std::memcpy(&d, acc + r * kTileCols + j, sizeof d);
        if (run.shift) {
          vu32 cs;
          std::memcpy(&cs, run.wsum + col, sizeof cs);
          d -= cs;
        }
        f = __builtin_convertvector((vi32)d, vf) * (vload(run.ws + col) * vsm);
      } else {
        f = vload(v + j) * vsm;
      }
      vstore(v + j, f);
    }
    S* orow = out + (m0 + r) * p.ldc;
    if (!p.gated) {
      const int64_t n0 = pn * kQuantCols, cols = imin(np * kQuantCols, p.N - n0);
      int64_t c = 0;
      for (; c + W <= cols; c += W) {
        vf f = vload(v + c);
        if (run.biasf) f += vload(run.biasf + n0 + c);
        vstore_as(orow + n0 + c, act_vec(f, p.act));
      }
      if (c < cols) {
        act_row(v + c, run.biasf ? run.biasf + n0 + c : nullptr, v + c, cols - c, p.act);
        for (; c < cols; ++c) orow[n0 + c] = narrow<S>(v[c]);
      }
    } else {  // panel j: the gates of features f0 + 8j .. in columns 0..7, their up values in 8..15
      const int64_t F = p.N / 2, f0 = pn * H, nf = imin(np * H, F - f0);
      if (nf <= 0) continue;
      alignas(64) float gate[kTileCols / 2], up[kTileCols / 2];
      for (int64_t f = 0; f < nf; ++f) {
        gate[f] = v[(f / H) * kQuantCols + f % H];
        up[f] = v[(f / H) * kQuantCols + H + f % H];
      }
      if (run.biasf)
        for (int64_t f = 0; f < nf; ++f) { gate[f] += run.biasf[f0 + f]; up[f] += run.biasf[F + f0 + f]; }
      act_row(gate, nullptr, gate, nf, Activation::silu);
      for (int64_t f = 0; f < nf; ++f) gate[f] *= up[f];
      narrow_row<S>(gate, orow + f0, 1, nf);
    }
  }
}

template <int R>
inline void qdot8_rows(int rows, const uint8_t* a, int64_t lda, const int8_t* const* b, int np, int64_t k4n, int32_t* acc) {
  if constexpr (R > 0) {
    if (rows == R) {
      if constexpr (kQPanels == 2) {
        if (np == 2) return qdot8<R, 2>(a, lda, b, k4n, acc);
      } else if (np == 2) {
        qdot8<R, 1>(a, lda, b, k4n, acc);
        int32_t tmp[R * kTileCols];
        qdot8<R, 1>(a, lda, b + 1, k4n, tmp);
        for (int r = 0; r < R; ++r) std::memcpy(acc + r * kTileCols + 16, tmp + r * kTileCols, 16 * sizeof(int32_t));
        return;
      }
      return qdot8<R, 1>(a, lda, b, k4n, acc);
    }
    qdot8_rows<R - 1>(rows, a, lda, b, np, k4n, acc);
  }
}

template <int R>
inline void qdot4_rows(int rows, const uint8_t* a, int64_t lda, const uint8_t* const* b, const float* const* sc,
                       const int32_t* asum, int64_t ng, int64_t group, int np, float* facc) {
  if constexpr (R > 0) {
    if (rows == R) {
      if constexpr (kQPanels == 2) {
        if (np == 2) return qdot4<R, 2>(a, lda, b, sc, asum, ng, group, facc);
      } else if (np == 2) {
        qdot4<R, 1>(a, lda, b, sc, asum, ng, group, facc);
        float tmp[R * kTileCols];
        qdot4<R, 1>(a, lda, b + 1, sc + 1, asum, ng, group, tmp);
        for (int r = 0; r < R; ++r) std::memcpy(facc + r * kTileCols + 16, tmp + r * kTileCols, 16 * sizeof(float));
        return;
      }
      return qdot4<R, 1>(a, lda, b, sc, asum, ng, group, facc);
    }
    qdot4_rows<R - 1>(rows, a, lda, b, sc, asum, ng, group, np, facc);
  }
}

#if defined(ATTNKIT_AMX)
// tdpbusd: C tiles (int32, 2 row tiles x 2 panels) = A (u8 rows of aq, 64 depth a tile) x B
// (panel's 16 depth quads x 16 columns x 4, read in place from the packed weight: 1 KiB a tile).
inline void q_amx_block(const uint8_t* a, int64_t lda, const int8_t* const* b, int64_t kt, int32_t* acc) {
  tile_zero<0>();
  tile_zero<1>();
  tile_zero<2>();
  tile_zero<3>();
  for (int64_t t = 0; t < kt; ++t) {
    tile_load<6>(b[0] + t * 1024, 64);
    tile_load<7>(b[1] + t * 1024, 64);
    tile_load<4>(a + t * 64, lda);
    tile_load<5>(a + 16 * lda + t * 64, lda);
    tile_dpbusd<0, 4, 6>();
    tile_dpbusd<1, 4, 7>();
    tile_dpbusd<2, 5, 6>();
    tile_dpbusd<3, 5, 7>();
  }
  tile_store<0>(acc, kTileCols * 4);
  tile_store<1>(acc + 16, kTileCols * 4);
  tile_store<2>(acc + 16 * kTileCols, kTileCols * 4);
  tile_store<3>(acc + 16 * kTileCols + 16, kTileCols * 4);
}
#endif

// One row (decoding): the item's panels [P0, P1) as kRowStreams runs read side by side
// (RowStreams, gemm_blocked.h), one register tile of kRowStreams panels a step; a run already done
// repeats its last panel (in cache) and stores nothing.
template <class S>
void q_row_streams(const QRun& run, int64_t m0, int64_t P0, int64_t P1, int32_t* acc, float* facc) {
  constexpr int NS = kRowStreams;
  const RowStreams st(P0, P1);
  const uint8_t* a = run.aq + m0 * run.kp;
  for (int64_t i = 0; i < st.steps; ++i) {
    int64_t q[NS];
    for (int j = 0; j < NS; ++j) q[j] = st.at(j, imin(i, st.len(j) - 1));
    if (run.int4) {
      const uint8_t* b[NS];
      const float* sc[NS];
      for (int j = 0; j < NS; ++j) {
        b[j] = run.q4(q[j]);
        sc[j] = run.scales4(q[j]);
      }
      qdot4<1, NS>(a, run.kp, b, sc, run.asum + m0 * run.ng, run.ng, run.group, facc);
    } else {
      const int8_t* b[NS];
      for (int j = 0; j < NS; ++j) b[j] = run.q8(q[j]);
      qdot8<1, NS>(a, run.kp, b, run.kp / 4, acc);
    }
    for (int j = 0; j < NS; ++j)
      if (i < st.len(j)) q_epilogue<S>(run, run.int4 ? nullptr : acc + 16 * j, facc + 16 * j, 1, m0, q[j], 1);
  }
}

template <class S>
void q_task(void* ctx, int64_t begin, int64_t end, int) {
  const QRun& run = *static_cast<const QRun*>(ctx);
  const GemmProblem& p = *run.p;
  alignas(64) int32_t acc[32 * kTileCols];
  alignas(64) float facc[32 * kTileCols];
#if defined(ATTNKIT_AMX)
  if (run.amx) amx_tile_config();
#endif
  for (int64_t it = begin; it < end; ++it) {
    const int64_t m0 = it / run.nnb * run.mc, mlen = imin(run.mc, p.M - m0);
    const int64_t pp0 = it % run.nnb * run.pp_per_nb, pp1 = imin(run.npp, pp0 + run.pp_per_nb);
    if (mlen == 1 && !run.amx && imin(run.npan, 2 * pp1) - 2 * pp0 >= kRowStreams) {
      q_row_streams<S>(run, m0, 2 * pp0, imin(run.npan, 2 * pp1), acc, facc);
      continue;
    }
    for (int64_t pp = pp0; pp < pp1; ++pp) {
      const int64_t pn = 2 * pp;
      const int np = static_cast<int>(imin(2, run.npan - pn));
      if (run.int4) {
        const uint8_t* b[2];
        const float* sc[2];
        for (int j = 0; j < 2; ++j) {
          const int64_t q = pn + imin(j, np - 1);
          b[j] = run.q4(q);
          sc[j] = run.scales4(q);
        }
        for (int64_t r0 = 0; r0 < mlen; r0 += kQRows4) {
          const int rows = static_cast<int>(imin(kQRows4, mlen - r0));
          qdot4_rows<kQRows4>(rows, run.aq + (m0 + r0) * run.kp, run.kp, b, sc, run.asum + (m0 + r0) * run.ng, run.ng,
                              run.group, np, facc);
          q_epilogue<S>(run, nullptr, facc, rows, m0 + r0, pn, np);
        }
        continue;
      }
      const int8_t* b[2];
      for (int j = 0; j < 2; ++j) b[j] = run.q8(pn + imin(j, np - 1));
      int64_t r0 = 0;
#if defined(ATTNKIT_AMX)
      if (run.amx)
        for (; r0 < mlen; r0 += 32) {  // rows past M are in aq (zeros) and not stored
          q_amx_block(run.aq + (m0 + r0) * run.kp, run.kp, b, run.kp / 64, acc);
          q_epilogue<S>(run, acc, facc, static_cast<int>(imin(32, mlen - r0)), m0 + r0, pn, np);
        }
#endif
      for (; r0 < mlen; r0 += kQRows8) {
        const int rows = static_cast<int>(imin(kQRows8, mlen - r0));
        qdot8_rows<kQRows8>(rows, run.aq + (m0 + r0) * run.kp, run.kp, b, np, run.kp / 4, acc);
        q_epilogue<S>(run, acc, facc, rows, m0 + r0, pn, np);
      }
    }
  }
#if defined(ATTNKIT_AMX)
  if (run.amx) amx_tile_release();
#endif
}

template <class S>
int qgemm_impl(const GemmProblem& p) {
  if (p.M == 0 || p.N == 0) return 0;
  const PackedWeight& w = *p.packed;
  QRun run;
  run.p = &p;
  run.w = &w;
  run.M = p.M;
  run.npan = ceil_div(w.N, kQuantCols);
  run.npp = ceil_div(run.npan, 2);
  run.kp = w.kp;
  run.int4 = w.quant == Quant::int4;
  run.group = run.int4 ? w.group : 0;
  run.ng = run.int4 ? w.kp / w.group : 0;
  run.shift = !run.int4 && kShiftA;
  run.amx = kQAmx && !run.int4 && p.M >= 32;  // 1.06x avx512_vnni at 16 rows of 768 x 768, 1.2-1.3x from 32
  run.wb = static_cast<const uint8_t*>(w.data.get());
  run.ws = reinterpret_cast<const float*>(run.wb + w.scale_off);
  run.wsum = run.int4 ? nullptr : reinterpret_cast<const int32_t*>(run.wb + w.sum_off);
  const int64_t mrows = ceil_div(p.M, 32) * 32;
  run.aq = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>(imax(64, mrows * run.kp))));
  run.as = static_cast<float*>(std::malloc(sizeof(float) * static_cast<size_t>(p.M)));
  if (!run.aq || !run.as) return 1;
  if (run.int4) {
    run.asum = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * static_cast<size_t>(imax(1, p.M * run.ng))));
    if (!run.asum) return 1;
  }
  if (p.bias) {
    run.biasf = static_cast<float*>(std::malloc(sizeof(float) * static_cast<size_t>(p.N)));
    if (!run.biasf) return 1;
    widen_row(static_cast<const S*>(p.bias), p.bias_s, run.biasf, p.N);
  }
  if (mrows > p.M) std::memset(run.aq + p.M * run.kp, 0, static_cast<size_t>((mrows - p.M) * run.kp));
  const int nt = num_threads();
  parallel_for(p.M, imax(1, 16384 / imax(1, p.K)), q_rows_task<S>, &run, nt);
  // Row blocks of up to 192 rows (a multiple of the tile height), spread evenly over the
  // threads; the panel pairs split into groups when there are few row blocks.
  const int64_t unit = run.amx ? 32 : run.int4 ? kQRows4 : kQRows8;
  const int64_t nmb0 = ceil_div(p.M, 192);
  const int64_t nmb = nmb0 > 1 ? ceil_div(nmb0, nt) * nt : 1;
  run.mc = imin(imax(unit, ceil_div(ceil_div(p.M, nmb), unit) * unit), ceil_div(p.M, unit) * unit);
  run.nmb = ceil_div(p.M, run.mc);
  run.nnb = imin(run.npp, imax(1, run.nmb == 1 ? (p.M == 1 ? kRowItems : 8) * nt : ceil_div(2 * nt, run.nmb)));
  run.pp_per_nb = ceil_div(run.npp, run.nnb);
  run.nnb = ceil_div(run.npp, run.pp_per_nb);
  parallel_for(run.nmb * run.nnb, 1, q_task<S>, &run, nt);
  return 0;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
