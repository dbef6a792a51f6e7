// GEMM for one ISA: out (M, N) = act(A (M, K) @ W (N, K)^T + bias), float32, float64 and half
// precision. gemm_impl: dot products for few rows of an unpacked weight (gemm_dots.h), otherwise
// the panel GEMM (gemm_blocked.h); gemm_impl_half: the same with W^T packed in half precision and
// accumulated in float (AVX-512-BF16 pairs, or AMX tiles in gemm_amx.h).
// Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include "cpu/gemm_dots.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

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
