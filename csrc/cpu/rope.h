// Rotary position embedding for one ISA (float32 and float64): each (b, h, l) row of x is
// rotated by the cos/sin table row of its token's position. Part of the kernel unit
// (kernels.cpp); internal linkage only.
#pragma once
#include <cstdint>

#include "attnkit/problems.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

template <class T>
void rope_task(void* ctx, int64_t begin, int64_t end, int) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  const RopeProblem& p = *static_cast<const RopeProblem*>(ctx);
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const T* cs = static_cast<const T*>(p.cos);
  const T* sn = static_cast<const T*>(p.sin);
  const int64_t half = p.half, xe = p.x_s[3], oe = p.o_s[3];
  const bool unit = xe == 1 && oe == 1;
  for (int64_t row = begin; row < end; ++row) {  // row = (b * H + h) * L + l
    const int64_t l = row % p.L, h = (row / p.L) % p.H, b = row / (p.L * p.H);
    const T* xr = x + b * p.x_s[0] + h * p.x_s[1] + l * p.x_s[2];
    T* yr = out + b * p.o_s[0] + h * p.o_s[1] + l * p.o_s[2];
    const int64_t pos = p.positions[b * p.pos_b + l * p.pos_l];
    const T* c = cs + pos * p.ld;
    const T* s = sn + pos * p.ld;
    if (p.interleaved) {
      for (int64_t d = 0; d < half; ++d) {  // pairs (2d, 2d+1)
        const T x0 = xr[2 * d * xe], x1 = xr[(2 * d + 1) * xe];
        yr[2 * d * oe] = x0 * c[d] - x1 * s[d];
        yr[(2 * d + 1) * oe] = x1 * c[d] + x0 * s[d];
      }
    } else {
      int64_t d = 0;
      if (unit)
        for (; d + W <= half; d += W) {
          const V x0 = vload(xr + d), x1 = vload(xr + d + half), cv = vload(c + d), sv = vload(s + d);
          vstore(yr + d, x0 * cv - x1 * sv);
          vstore(yr + d + half, x1 * cv + x0 * sv);
        }
      for (; d < half; ++d) {
        const T x0 = xr[d * xe], x1 = xr[(d + half) * xe];
        yr[d * oe] = x0 * c[d] - x1 * s[d];
        yr[(d + half) * oe] = x1 * c[d] + x0 * s[d];
      }
    }
    if (xr != yr)  // the dims past the rotary ones pass through
      for (int64_t d = 2 * half; d < p.D; ++d) yr[d * oe] = xr[d * xe];
  }
}

template <class T>
int rope_impl(const RopeProblem& p) {
  const int64_t rows = p.B * p.H * p.L;
  if (rows == 0 || p.D == 0) return 0;
  parallel_for(rows, imax(1, 4096 / imax(1, p.D)), rope_task<T>, const_cast<RopeProblem*>(&p), num_threads());
  return 0;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
