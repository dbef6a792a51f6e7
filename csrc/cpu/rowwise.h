// Row-wise ops (softmax, layer_norm with a fused residual, activations) for one ISA: each row
// is copied into a per-thread buffer through its strides, computed there with vector math and
// written out. Part of the kernel unit (kernels.cpp); internal linkage only.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "attnkit/problems.h"
#include "cpu/simd.h"
#include "cpu/thread_pool.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE { namespace {

// y = softmax(x) (y may be x): entries of -inf are masked; an all -inf row gives zeros; NaN
// propagates.
inline void softmax_row(const float* x, float* y, int64_t n) {
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
    for (int64_t j = 0; j < n; ++j) y[j] = 0.0f;
    return;
  }
  const float l2e = static_cast<float>(kLog2e);
  vf sv = vf{}, sv1 = vf{};
  for (i = 0; i + 2 * W <= n; i += 2 * W) {
    vf p = exp2v((vload(x + i) - m) * l2e), p1 = exp2v((vload(x + i + W) - m) * l2e);
    vstore(y + i, p);
    vstore(y + i + W, p1);
    sv += p;
    sv1 += p1;
  }
  for (; i + W <= n; i += W) {
    vf p = exp2v((vload(x + i) - m) * l2e);
    vstore(y + i, p);
    sv += p;
  }
  float s = hsum(sv + sv1);
  for (; i < n; ++i) {
    float p = exp2v(vset((x[i] - m) * l2e))[0];
    y[i] = p;
    s += p;
  }
  float inv = 1.0f / s;
  for (i = 0; i + W <= n; i += W) vstore(y + i, vload(y + i) * inv);
  for (; i < n; ++i) y[i] *= inv;
}
inline void softmax_row(const double* x, double* y, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = (x[i] > m || x[i] != x[i]) ? x[i] : m;
  if (m == -INFINITY) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.0;
    return;
  }
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += (y[i] = ::exp(x[i] - m));
  double inv = 1.0 / s;
  for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}

// dst[0, n) = src[0, n * stride) step stride; a plain copy for unit stride.
template <class T>
inline void gather(const T* src, int64_t stride, T* dst, int64_t n) {
  if (stride == 1) std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
  else for (int64_t j = 0; j < n; ++j) dst[j] = src[j * stride];
}

template <class T>
inline void layer_norm_row(const T* x, int64_t n, const T* w, const T* b, double eps, T* y) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  // two passes (mean, then centred squares), each with four independent accumulators: one
  // chain would wait on the add latency at every vector. The mean is summed shifted by the
  // row's first element (mean = x0 + sum(x - x0) / n): a constant row gets exactly its value
  // as mean, so zero variance and y = bias exactly, and the sum's rounding scales with the
  // row's spread rather than its magnitude (large mean/std ratios stay accurate).
  const T x0 = x[0];
  const V x0v = vset(x0);
  V s4[4] = {V{}, V{}, V{}, V{}};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W)
    for (int u = 0; u < 4; ++u) s4[u] += vload(x + i + u * W) - x0v;
  for (; i + W <= n; i += W) s4[0] += vload(x + i) - x0v;
  V sv = (s4[0] + s4[1]) + (s4[2] + s4[3]);
  T s = 0;
  for (int j = 0; j < W; ++j) s += sv[j];
  for (; i < n; ++i) s += x[i] - x0;
  const T mean = x0 + s / static_cast<T>(n);
  V q4[4] = {V{}, V{}, V{}, V{}};
  for (i = 0; i + 4 * W <= n; i += 4 * W)
    for (int u = 0; u < 4; ++u) {
      V d = vload(x + i + u * W) - mean;
      q4[u] += d * d;
    }
  for (; i + W <= n; i += W) {
    V d = vload(x + i) - mean;
    q4[0] += d * d;
  }
  V qv = (q4[0] + q4[1]) + (q4[2] + q4[3]);
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

// y = x / sqrt(mean(x^2) + eps) * w (w optional): RMSNorm (Llama's), four independent sums.
template <class T>
inline void rms_norm_row(const T* x, int64_t n, const T* w, double eps, T* y) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  V q4[4] = {V{}, V{}, V{}, V{}};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W)
    for (int u = 0; u < 4; ++u) {
      V v = vload(x + i + u * W);
      q4[u] += v * v;
    }
  for (; i + W <= n; i += W) {
    V v = vload(x + i);
    q4[0] += v * v;
  }
  V qv = (q4[0] + q4[1]) + (q4[2] + q4[3]);
  double q = 0;
  for (int j = 0; j < W; ++j) q += static_cast<double>(qv[j]);
  for (; i < n; ++i) q += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  const T rstd = static_cast<T>(1.0 / std::sqrt(q / static_cast<double>(n) + eps));
  for (i = 0; i + W <= n; i += W) {
    V v = vload(x + i) * rstd;
    if (w) v *= vload(w + i);
    vstore(y + i, v);
  }
  for (; i < n; ++i) y[i] = w ? x[i] * rstd * w[i] : x[i] * rstd;
}

// x[0, n) += r[0, n * stride) step stride.
template <class T>
inline void add_row(T* x, const T* r, int64_t stride, int64_t n) {
  typedef typename Simd<T>::V V;
  constexpr int W = Simd<T>::W;
  int64_t j = 0;
  if (stride == 1)
    for (; j + W <= n; j += W) vstore(x + j, vload(x + j) + vload(r + j));
  for (; j < n; ++j) x[j] += r[j * stride];
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
    T* dst = os == 1 ? orow : buf;  // computed straight into the output row when it is contiguous
    const T* src = xr;              // the row's input, contiguous
    if (xs != 1 || (p.op == RowOp::softmax && p.mask.data) || ((p.op == RowOp::layer_norm || p.op == RowOp::rms_norm) && p.residual.data)) {
      gather(xr, xs, buf, n);
      src = buf;
    }
    switch (p.op) {
      case RowOp::softmax:
        if (p.mask.data) {
          const uint8_t* mr = static_cast<const uint8_t*>(p.mask.data) + row_offset(p, p.mask.strides, row);
          const int64_t ms = p.mask.strides[p.axis];
          for (int64_t j = 0; j < n; ++j)
            if (!mr[j * ms]) buf[j] = -INFINITY;
        }
        softmax_row(src, dst, n);
        break;
      case RowOp::layer_norm:
      case RowOp::rms_norm:
        if (p.residual.data) {  // buf = x + residual
          const T* rr = static_cast<const T*>(p.residual.data) + row_offset(p, p.residual.strides, row);
          add_row(buf, rr, p.residual.strides[p.axis], n);
        }
        if (p.sum.data) {
          T* sr = static_cast<T*>(p.sum.data) + row_offset(p, p.sum.strides, row);
          const int64_t ss = p.sum.strides[p.axis];
          if (ss == 1) std::memcpy(sr, src, sizeof(T) * static_cast<size_t>(n));
          else for (int64_t j = 0; j < n; ++j) sr[j * ss] = src[j];
        }
        if (p.op == RowOp::rms_norm) rms_norm_row(src, n, w, p.eps, dst);
        else layer_norm_row(src, n, w, b, p.eps, dst);
        break;
      case RowOp::activation:
        act_row(src, static_cast<const T*>(nullptr), dst, n, p.act);
        break;
    }
    if (dst != orow)
      for (int64_t j = 0; j < n; ++j) orow[j * os] = dst[j];
  }
}

// Layer norm reads weight and bias contiguously: gather strided ones into the workspace tail.
template <class T>
int rows_impl(const RowProblem& p) {
  if (p.rows == 0 || p.n == 0) return 0;
  RowRun<T> run;
  run.p = &p;
  // a row buffer per thread that gets a row, no more (a single huge row needs one), and none when
  // rows are read and written in place (contiguous, nothing to add or mask first)
  const int nt = static_cast<int>(imin(num_threads(), p.rows));
  const bool norm = p.op == RowOp::layer_norm || p.op == RowOp::rms_norm;
  const bool gather = norm && ((p.weight && p.weight_s != 1) || (p.bias && p.bias_s != 1));
  const bool row_buffer = p.x.strides[p.axis] != 1 || p.out.strides[p.axis] != 1 ||
                          (p.op == RowOp::softmax && p.mask.data) || (norm && p.residual.data);
  if (!run.ws.alloc(nt + (gather ? 2 : 0), row_buffer || gather ? sizeof(T) * static_cast<size_t>(p.n) : 0)) return 1;
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
  const int64_t work = p.op == RowOp::activation ? 16384 : p.op == RowOp::layer_norm || p.op == RowOp::rms_norm ? 8192 : 4096;
  parallel_for(p.rows, imax(1, work / p.n), row_task<T>, &run, nt);
  return 0;
}

// Half precision (float16, bfloat16): each row is widened into a per-thread float buffer (with
// the residual added and the mask applied there), computed in float in place and narrowed into
// the output; weight and bias are widened once.
template <class S>
struct HalfRowRun {
  const RowProblem* p;
  Workspace ws;                    // per thread: one float row
  const float *w = nullptr, *b = nullptr;
};

template <class S>
void row_task_half(void* ctx, int64_t begin, int64_t end, int tid) {
  const HalfRowRun<S>& run = *static_cast<const HalfRowRun<S>*>(ctx);
  const RowProblem& p = *run.p;
  const int64_t n = p.n;
  float* buf = run.ws.template get<float>(tid);
  float* tmp = buf + ((n + 15) / 16) * 16;  // the residual row, widened
  for (int64_t row = begin; row < end; ++row) {
    const S* xr = static_cast<const S*>(p.x.data) + row_offset(p, p.x.strides, row);
    S* orow = static_cast<S*>(p.out.data) + row_offset(p, p.out.strides, row);
    widen_row(xr, p.x.strides[p.axis], buf, n);
    switch (p.op) {
      case RowOp::softmax:
        if (p.mask.data) {
          const uint8_t* mr = static_cast<const uint8_t*>(p.mask.data) + row_offset(p, p.mask.strides, row);
          const int64_t ms = p.mask.strides[p.axis];
          for (int64_t j = 0; j < n; ++j)
            if (!mr[j * ms]) buf[j] = -INFINITY;
        }
        softmax_row(buf, buf, n);
        break;
      case RowOp::layer_norm:
      case RowOp::rms_norm:
        if (p.residual.data) {
          const S* rr = static_cast<const S*>(p.residual.data) + row_offset(p, p.residual.strides, row);
          widen_row(rr, p.residual.strides[p.axis], tmp, n);
          add_row(buf, static_cast<const float*>(tmp), 1, n);
        }
        if (p.sum.data)
          narrow_row(static_cast<const float*>(buf), static_cast<S*>(p.sum.data) + row_offset(p, p.sum.strides, row),
                     p.sum.strides[p.axis], n);
        if (p.op == RowOp::rms_norm) rms_norm_row(static_cast<const float*>(buf), n, run.w, p.eps, buf);
        else layer_norm_row(static_cast<const float*>(buf), n, run.w, run.b, p.eps, buf);
        break;
      case RowOp::activation:
        act_row(buf, static_cast<const float*>(nullptr), buf, n, p.act);
        break;
    }
    narrow_row(static_cast<const float*>(buf), orow, p.out.strides[p.axis], n);
  }
}

template <class S>
int rows_impl_half(const RowProblem& p) {
  if (p.rows == 0 || p.n == 0) return 0;
  HalfRowRun<S> run;
  run.p = &p;
  const int nt = static_cast<int>(imin(num_threads(), p.rows));
  const size_t row_bytes = sizeof(float) * static_cast<size_t>(((p.n + 15) / 16) * 16);
  // per thread: the row and the residual row; then weight and bias, widened
  if (!run.ws.alloc(nt + 1, 2 * row_bytes)) return 1;
  float* wc = run.ws.template get<float>(nt);
  float* bc = wc + row_bytes / sizeof(float);
  if (p.weight) { widen_row(static_cast<const S*>(p.weight), p.weight_s, wc, p.n); run.w = wc; }
  if (p.bias) { widen_row(static_cast<const S*>(p.bias), p.bias_s, bc, p.n); run.b = bc; }
  const int64_t work = p.op == RowOp::activation ? 16384 : p.op == RowOp::layer_norm || p.op == RowOp::rms_norm ? 8192 : 4096;
  parallel_for(p.rows, imax(1, work / p.n), row_task_half<S>, &run, nt);
  return 0;
}

}}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE::(anonymous)
