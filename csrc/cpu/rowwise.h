// Row-wise ops (softmax, layer_norm with a fused residual, activations) for one ISA: each row
// is copied into a per-thread buffer through its strides, computed there with vector math and
// written out. Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>

#include "attnkit/problems.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// In place: entries of -inf are masked; an all -inf row gives zeros; NaN propagates.
inline void softmax_row(float* x, int64_t n) {
  constexpr int W = Simd<float>::W;
  const float ninf = -INFINITY;
  vf mv = vset(ninf);
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf v = vload(x + i);
    mv = v > mv ? v : mv;
    mv = v != v ? v : mv;  // keep NaN
  }
  float m = hmax(mv);
  for (int64_t j = 0; j < W; ++j) if (mv[j] != mv[j]) m = mv[j];
  for (; i < n; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
  if (m == ninf) {
    for (int64_t j = 0; j < n; ++j) x[j] = 0.0f;
    return;
  }
  const float l2e = static_cast<float>(kLog2e);
  vf sv = vf{};
  for (i = 0; i + W <= n; i += W) {
    vf p = exp2v((vload(x + i) - m) * l2e);
    vstore(x + i, p);
    sv += p;
  }
  float s = hsum(sv);
  for (; i < n; ++i) {
    float p = exp2v(vset((x[i] - m) * l2e))[0];
    x[i] = p;
    s += p;
  }
  float inv = 1.0f / s;
  for (i = 0; i + W <= n; i += W) vstore(x + i, vload(x + i) * inv);
  for (; i < n; ++i) x[i] *= inv;
}
inline void softmax_row(double* x, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
  if (m == -INFINITY) {
    for (int64_t i = 0; i < n; ++i) x[i] = 0.0;
    return;
  }
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (x[i] = ::exp(x[i] - m));
  double inv = 1.0 / s;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

template <class T>
inline void layer_norm_row(const T* x, int64_t n, const T* w, const T* b, double eps, T* y) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  V sv = V{};
  int64_t i = 0;
  for (; i + W <= n; i += W) sv += vload(x + i);
  T s = 0;
  for (int j = 0; j < W; ++j) s += sv[j];
  for (; i < n; ++i) s += x[i];
  const T mean = s / static_cast<T>(n);
  V qv = V{};
  for (i = 0; i + W <= n; i += W) {
    V d = vload(x + i) - mean;
    qv += d * d;
  }
  T q = 0;
  for (int j = 0; j < W; ++j) q += qv[j];
  for (; i < n; ++i) q += (x[i] - mean) * (x[i] - mean);
  const T rstd = static_cast<T>(1.0 / std::sqrt(static_cast<double>(q) / static_cast<double>(n) + eps));
  for (i = 0; i + W <= n; i += W) {
    V v = (vload(x + i) - mean) * rstd;
    if (w) v *= vload(w + i);
    if (b) v += vload(b + i);
    vstore(y + i, v);
  }
  for (; i < n; ++i) {
    T v = (x[i] - mean) * rstd;
    if (w) v *= w[i];
    if (b) v += b[i];
    y[i] = v;
  }
}

// Offset (in elements) of row `row` of an operand with `strides`, rows running over every dim
// of `shape` but `axis`, row-major.
inline int64_t row_offset(const RowProblem& p, const int64_t* strides, int64_t row) {
  int64_t off = 0;
  for (int d = p.ndim - 1; d >= 0; --d) {
    if (d == p.axis) continue;
    off += (row % p.shape[d]) * strides[d];
    row /= p.shape[d];
  }
  return off;
}

template <class T>
struct RowRun {
  const RowProblem* p;
  Workspace ws;  // per thread: one row (n elements)
};

template <class T>
void row_task(void* ctx, int64_t begin, int64_t end, int tid) {
  const RowRun<T>& run = *static_cast<const RowRun<T>*>(ctx);
  const RowProblem& p = *run.p;
  const int64_t n = p.n, xs = p.x.strides[p.axis], os = p.out.strides[p.axis];
  T* buf = run.ws.template get<T>(tid);
  const T* w = static_cast<const T*>(p.weight);
  const T* b = static_cast<const T*>(p.bias);
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = static_cast<const T*>(p.x.data) + row_offset(p, p.x.strides, row);
    T* orow = static_cast<T*>(p.out.data) + row_offset(p, p.out.strides, row);
    if (p.op == RowOp::activation && xs == 1 && os == 1) {
      act_row(xr, static_cast<const T*>(nullptr), orow, n, p.act);
      continue;
    }
    for (int64_t j = 0; j < n; ++j) buf[j] = xr[j * xs];
    switch (p.op) {
      case RowOp::softmax:
        if (p.mask.data) {
          const uint8_t* mr = static_cast<const uint8_t*>(p.mask.data) + row_offset(p, p.mask.strides, row);
          const int64_t ms = p.mask.strides[p.axis];
          for (int64_t j = 0; j < n; ++j)
            if (!mr[j * ms]) buf[j] = -INFINITY;
        }
        softmax_row(buf, n);
        break;
      case RowOp::layer_norm: {
        if (p.residual.data) {
          const T* rr = static_cast<const T*>(p.residual.data) + row_offset(p, p.residual.strides, row);
          const int64_t rs = p.residual.strides[p.axis];
          for (int64_t j = 0; j < n; ++j) buf[j] += rr[j * rs];
        }
        if (p.sum.data) {
          T* sr = static_cast<T*>(p.sum.data) + row_offset(p, p.sum.strides, row);
          const int64_t ss = p.sum.strides[p.axis];
          for (int64_t j = 0; j < n; ++j) sr[j * ss] = buf[j];
        }
        if (os == 1) {  // straight into the output row
          layer_norm_row(buf, n, w, b, p.eps, orow);
          continue;
        }
        layer_norm_row(buf, n, w, b, p.eps, buf);
        break;
      }
      case RowOp::activation:
        act_row(buf, static_cast<const T*>(nullptr), buf, n, p.act);
        break;
    }
    for (int64_t j = 0; j < n; ++j) orow[j * os] = buf[j];
  }
}

// Layer norm reads weight and bias contiguously: gather strided ones into the workspace tail.
template <class T>
int rows_impl(const RowProblem& p) {
  if (p.rows == 0 || p.n == 0) return 0;
  RowRun<T> run;
  run.p = &p;
  const int nt = num_threads();
  const bool gather = p.op == RowOp::layer_norm && ((p.weight && p.weight_s != 1) || (p.bias && p.bias_s != 1));
  if (!run.ws.alloc(nt + (gather ? 2 : 0), sizeof(T) * static_cast<size_t>(p.n))) return 1;
  RowProblem q = p;
  if (gather) {
    T* wc = run.ws.template get<T>(nt);
    T* bc = run.ws.template get<T>(nt + 1);
    for (int64_t j = 0; j < p.n; ++j) {
      if (p.weight) wc[j] = static_cast<const T*>(p.weight)[j * p.weight_s];
      if (p.bias) bc[j] = static_cast<const T*>(p.bias)[j * p.bias_s];
    }
    if (p.weight) q.weight = wc;
    if (p.bias) q.bias = bc;
    run.p = &q;
  }
  // chunks of about 4-16 thousand elements
  const int64_t work = p.op == RowOp::activation ? 16384 : p.op == RowOp::layer_norm ? 8192 : 4096;
  parallel_for(p.rows, imax(1, work / p.n), row_task<T>, &run, nt);
  return 0;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
