// softmax, layer_norm and activations: checks here, row kernels per ISA.
#include <cmath>
#include <cstring>
#include <algorithm>
#include <string>
#include <vector>

#include "attnkit/ops.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "ops/common.h"

namespace attnkit {
namespace {

constexpr int64_t kRowsPerChunk = 16;

template <class T> void softmax_row(const cpu::Kernels& k, T* x, int64_t n);
template <> void softmax_row<float>(const cpu::Kernels& k, float* x, int64_t n) { k.softmax_row_f32(x, n); }
template <> void softmax_row<double>(const cpu::Kernels& k, double* x, int64_t n) { k.softmax_row_f64(x, n); }

struct SoftmaxCtx {
  const TensorView *x, *mask, *out;
  int axis;
  int64_t mstrides[kMaxDims];
  std::vector<std::vector<char>>* bufs;
};

template <class T>
void softmax_task(void* ctx, int64_t begin, int64_t end, int tid) {
  SoftmaxCtx& c = *static_cast<SoftmaxCtx*>(ctx);
  const TensorView &x = *c.x, &out = *c.out, &mask = *c.mask;
  const cpu::Kernels& k = cpu::active_kernels();
  const int64_t n = x.shape[c.axis];
  T* buf = reinterpret_cast<T*>((*c.bufs)[tid].data());  // sized by the caller
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x.ptr<const T>() + ops::row_offset(x.shape, x.strides, x.ndim, c.axis, row);
    for (int64_t j = 0; j < n; ++j) buf[j] = xr[j * x.strides[c.axis]];
    if (mask.present) {
      const uint8_t* mr = mask.ptr<const uint8_t>() + ops::row_offset(x.shape, c.mstrides, x.ndim, c.axis, row);
      for (int64_t j = 0; j < n; ++j)
        if (!mr[j * c.mstrides[c.axis]]) buf[j] = -INFINITY;
    }
    softmax_row<T>(k, buf, n);
    T* orow = out.ptr<T>() + ops::row_offset(out.shape, out.strides, out.ndim, c.axis, row);
    for (int64_t j = 0; j < n; ++j) orow[j * out.strides[c.axis]] = buf[j];
  }
}

struct LayerNormCtx {
  const TensorView *x, *res, *w, *b, *out, *sum;
  double eps;
  std::vector<std::vector<char>>* bufs;
};

template <class T> void ln_row(const cpu::Kernels& k, const T* x, int64_t n, const T* w, const T* b, double eps, T* y);
template <> void ln_row<float>(const cpu::Kernels& k, const float* x, int64_t n, const float* w, const float* b, double eps, float* y) {
  k.layer_norm_row_f32(x, n, w, b, eps, y);
}
template <> void ln_row<double>(const cpu::Kernels& k, const double* x, int64_t n, const double* w, const double* b, double eps, double* y) {
  k.layer_norm_row_f64(x, n, w, b, eps, y);
}

template <class T>
void layer_norm_task(void* ctx, int64_t begin, int64_t end, int tid) {
  LayerNormCtx& c = *static_cast<LayerNormCtx*>(ctx);
  const TensorView &x = *c.x, &res = *c.res, &out = *c.out, &sum = *c.sum;
  const cpu::Kernels& k = cpu::active_kernels();
  const int axis = x.ndim - 1;
  const int64_t n = x.shape[axis];
  const T* w = c.w->present ? c.w->ptr<const T>() : nullptr;
  const T* b = c.b->present ? c.b->ptr<const T>() : nullptr;
  T* buf = reinterpret_cast<T*>((*c.bufs)[tid].data());  // sized by the caller
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x.ptr<const T>() + ops::row_offset(x.shape, x.strides, x.ndim, axis, row);
    for (int64_t j = 0; j < n; ++j) buf[j] = xr[j * x.strides[axis]];
    if (res.present) {
      const T* rr = res.ptr<const T>() + ops::row_offset(res.shape, res.strides, res.ndim, axis, row);
      for (int64_t j = 0; j < n; ++j) buf[j] += rr[j * res.strides[axis]];
    }
    if (sum.present) {
      T* sr = sum.ptr<T>() + ops::row_offset(sum.shape, sum.strides, sum.ndim, axis, row);
      for (int64_t j = 0; j < n; ++j) sr[j * sum.strides[axis]] = buf[j];
    }
    T* orow = out.ptr<T>() + ops::row_offset(out.shape, out.strides, out.ndim, axis, row);
    ln_row<T>(k, buf, n, w, b, c.eps, orow);  // out is contiguous
  }
}

struct ActCtx {
  const TensorView *x, *out;
  int act;
  std::vector<std::vector<char>>* bufs;
};

template <class T> void act_row(const cpu::Kernels& k, const T* x, T* y, int64_t n, int act);
template <> void act_row<float>(const cpu::Kernels& k, const float* x, float* y, int64_t n, int act) { k.activation_f32(x, y, n, act); }
template <> void act_row<double>(const cpu::Kernels& k, const double* x, double* y, int64_t n, int act) { k.activation_f64(x, y, n, act); }

template <class T>
void act_task(void* ctx, int64_t begin, int64_t end, int tid) {
  ActCtx& c = *static_cast<ActCtx*>(ctx);
  const TensorView &x = *c.x, &out = *c.out;
  const cpu::Kernels& k = cpu::active_kernels();
  const int axis = x.ndim - 1;
  const int64_t n = x.shape[axis];
  T* buf = reinterpret_cast<T*>((*c.bufs)[tid].data());  // sized by the caller
  for (int64_t row = begin; row < end; ++row) {
    const T* xr = x.ptr<const T>() + ops::row_offset(x.shape, x.strides, x.ndim, axis, row);
    T* orow = out.ptr<T>() + ops::row_offset(out.shape, out.strides, out.ndim, axis, row);
    if (x.strides[axis] == 1) {
      act_row<T>(k, xr, orow, n, c.act);
    } else {
      for (int64_t j = 0; j < n; ++j) buf[j] = xr[j * x.strides[axis]];
      act_row<T>(k, buf, orow, n, c.act);
    }
  }
}

int64_t row_count(const TensorView& x, int axis) {
  int64_t rows = 1;
  for (int d = 0; d < x.ndim; ++d)
    if (d != axis) rows *= x.shape[d];
  return rows;
}

// One row buffer per thread, allocated before the tasks run (tasks must not allocate).
std::vector<std::vector<char>> row_buffers(int nthreads, int64_t n, DType dtype) {
  const size_t bytes = static_cast<size_t>(n) * (dtype == DType::f32 ? 4 : 8);
  return std::vector<std::vector<char>>(static_cast<size_t>(nthreads), std::vector<char>(bytes));
}

void same_shape_output(const TensorView& out, const char* name, const TensorView& x) {
  ops::require_output(out, name, x.dtype, x.shape, x.ndim);
}

}  // namespace

void softmax(const TensorView& x, int axis, const TensorView& mask, const TensorView& out) {
  ops::require_float(x, "x");
  if (x.ndim == 0) throw ValueError("x: expected an array with at least 1 dim, got a 0-d array");
  if (axis < -x.ndim || axis >= x.ndim)
    throw ValueError("axis: " + std::to_string(axis) + " is out of range for an array of " + std::to_string(x.ndim) + " dims");
  if (axis < 0) axis += x.ndim;
  ops::checked_numel(x.shape, x.ndim, "x");
  SoftmaxCtx c{&x, &mask, &out, axis, {}, nullptr};
  if (mask.present) {
    if (mask.dtype != DType::boolean)
      throw TypeError(std::string("mask: expected a bool array (True = keep), got dtype ") + dtype_name(mask.dtype));
    ops::broadcast_strides(mask, x.shape, x.ndim, c.mstrides, "mask", "x's shape " + shape_str(x));
  }
  same_shape_output(out, "out", x);
  const int64_t n = x.shape[axis];
  const int64_t rows = row_count(x, axis);
  if (n == 0 || rows == 0) return;
  const int nt = cpu::num_threads();
  std::vector<std::vector<char>> bufs = row_buffers(nt, n, x.dtype);
  c.bufs = &bufs;
  const int64_t grain = std::max<int64_t>(1, 4096 / n);
  cpu::parallel_for(rows, grain, x.dtype == DType::f32 ? softmax_task<float> : softmax_task<double>, &c, nt);
}

void layer_norm_check(const TensorView& x, const TensorView& residual, const TensorView& weight,
                      const TensorView& bias, double eps) {
  ops::require_float(x, "x");
  if (x.ndim == 0) throw ValueError("x: expected an array of shape (..., normalized_size), got a 0-d array");
  const int64_t n = x.size(-1);
  if (residual.present) {
    ops::require_float(residual, "residual");
    ops::require_same_dtype(residual, "residual", x, "x");
    bool same = residual.ndim == x.ndim;
    for (int i = 0; same && i < x.ndim; ++i) same = residual.shape[i] == x.shape[i];
    if (!same)
      throw ValueError("residual: expected x's shape " + shape_str(x) + ", got " + shape_str(residual));
  }
  const TensorView* params[2] = {&weight, &bias};
  const char* names[2] = {"weight", "bias"};
  for (int i = 0; i < 2; ++i) {
    const TensorView& t = *params[i];
    if (!t.present) continue;
    ops::require_float(t, names[i]);
    ops::require_same_dtype(t, names[i], x, "x");
    if (t.ndim != 1 || t.shape[0] != n)
      throw ValueError(std::string(names[i]) + ": expected shape (" + std::to_string(n) + ",), got " + shape_str(t));
  }
  if (!(std::isfinite(eps) && eps >= 0)) throw ValueError("eps: expected a finite number >= 0, got " + std::to_string(eps));
  ops::checked_numel(x.shape, x.ndim, "x");
}

void layer_norm(const TensorView& x, const TensorView& residual, const TensorView& weight, const TensorView& bias,
                double eps, const TensorView& out, const TensorView& sum_out) {
  layer_norm_check(x, residual, weight, bias, eps);
  same_shape_output(out, "out", x);
  if (sum_out.present) same_shape_output(sum_out, "sum_out", x);
  const int64_t rows = row_count(x, x.ndim - 1), n = x.size(-1);
  if (rows == 0 || n == 0) return;
  // weight and bias as contiguous vectors (they are small)
  std::vector<char> wb;
  TensorView w = weight, b = bias;
  const size_t es = x.dtype == DType::f32 ? 4 : 8;
  wb.resize(2 * es * static_cast<size_t>(n));
  for (int i = 0; i < 2; ++i) {
    TensorView& t = i == 0 ? w : b;
    if (!t.present) continue;
    char* dst = wb.data() + i * es * n;
    for (int64_t j = 0; j < n; ++j)
      std::memcpy(dst + j * es, static_cast<const char*>(t.data) + j * t.strides[0] * static_cast<int64_t>(es), es);
    t.data = dst;
    t.strides[0] = 1;
  }
  const int nt = cpu::num_threads();
  std::vector<std::vector<char>> bufs = row_buffers(nt, n, x.dtype);
  LayerNormCtx c{&x, &residual, &w, &b, &out, &sum_out, eps, &bufs};
  const int64_t grain = std::max<int64_t>(1, 8192 / n);
  cpu::parallel_for(rows, grain, x.dtype == DType::f32 ? layer_norm_task<float> : layer_norm_task<double>, &c, nt);
}

void activation(const TensorView& x, Activation act, const TensorView& out) {
  ops::require_float(x, "x");
  ops::checked_numel(x.shape, x.ndim, "x");
  same_shape_output(out, "out", x);
  if (x.ndim == 0) {
    TensorView x1 = x, o1 = out;
    x1.ndim = o1.ndim = 1;
    x1.shape[0] = o1.shape[0] = 1;
    x1.strides[0] = o1.strides[0] = 1;
    activation(x1, act, o1);
    return;
  }
  const int64_t rows = row_count(x, x.ndim - 1), n = x.size(-1);
  if (rows == 0 || n == 0) return;
  const int nt = cpu::num_threads();
  std::vector<std::vector<char>> bufs = row_buffers(nt, n, x.dtype);
  ActCtx c{&x, &out, static_cast<int>(act), &bufs};
  const int64_t grain = std::max<int64_t>(1, 16384 / n);
  cpu::parallel_for(rows, grain, x.dtype == DType::f32 ? act_task<float> : act_task<double>, &c, nt);
}

void set_num_threads(int n) { cpu::set_num_threads(n); }
int get_num_threads() { return cpu::num_threads(); }

}  // namespace attnkit
