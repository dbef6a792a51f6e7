// Rotary position embedding for one ISA (float32 and float64): each (b, h, l) row of x is
// rotated by the cos/sin table row of its token's position. Part of the kernel unit
// (kernels.cpp); internal linkage only.
#pragma once
#include <cstdint>

#include "attnkit/problems.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// S: the storage type; half precision (float16, bfloat16) is widened, rotated in float and narrowed.
template <class S>
void rope_task(void* ctx, int64_t begin, int64_t end, int) {
  typedef Compute<S> T;
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  const RopeProblem& p = *static_cast<const RopeProblem*>(ctx);
  const S* x = static_cast<const S*>(p.x);
  S* out = static_cast<S*>(p.out);
  const S* cs = static_cast<const S*>(p.cos);
  const S* sn = static_cast<const S*>(p.sin);
  const int64_t half = p.half, xe = p.x_s[3], oe = p.o_s[3];
  const bool unit = xe == 1 && oe == 1;
  for (int64_t row = begin; row < end; ++row) {  // row = (b * H + h) * L + l
    const int64_t l = row % p.L, h = (row / p.L) % p.H, b = row / (p.L * p.H);
    const S* xr = x + b * p.x_s[0] + h * p.x_s[1] + l * p.x_s[2];
    S* yr = out + b * p.o_s[0] + h * p.o_s[1] + l * p.o_s[2];
    const int64_t pos = p.positions[b * p.pos_b + l * p.pos_l];
    const S* c = cs + pos * p.ld;
    const S* s = sn + pos * p.ld;
    if (p.interleaved) {
      for (int64_t d = 0; d < half; ++d) {  // pairs (2d, 2d+1)
        const T x0 = widen(xr[2 * d * xe]), x1 = widen(xr[(2 * d + 1) * xe]), cd = widen(c[d]), sd = widen(s[d]);
        yr[2 * d * oe] = narrow<S>(x0 * cd - x1 * sd);
        yr[(2 * d + 1) * oe] = narrow<S>(x1 * cd + x0 * sd);
      }
    } else {
      int64_t d = 0;
      if (unit)
        for (; d + W <= half; d += W) {
          const V x0 = vload_as<T>(xr + d), x1 = vload_as<T>(xr + d + half), cv = vload_as<T>(c + d), sv = vload_as<T>(s + d);
          vstore_as(yr + d, x0 * cv - x1 * sv);
          vstore_as(yr + d + half, x1 * cv + x0 * sv);
        }
      for (; d < half; ++d) {
        const T x0 = widen(xr[d * xe]), x1 = widen(xr[(d + half) * xe]), cd = widen(c[d]), sd = widen(s[d]);
        yr[d * oe] = narrow<S>(x0 * cd - x1 * sd);
        yr[(d + half) * oe] = narrow<S>(x1 * cd + x0 * sd);
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
