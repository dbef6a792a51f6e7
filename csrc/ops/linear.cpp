// linear: out = act(x @ weight^T + bias), PyTorch's weight layout (out_features, in_features).
// float32 runs on the per-ISA packed GEMM (csrc/cpu/kernels.cpp); float64 on Eigen.
#include <Eigen/Core>

#include <algorithm>
#include <new>
#include <vector>
#include <string>

#include "attnkit/ops.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "ops/common.h"

namespace attnkit {

void linear_check(const TensorView& x, const TensorView& weight, const TensorView& bias) {
  ops::require_float(x, "x");
  ops::require_float(weight, "weight");
  ops::require_same_dtype(weight, "weight", x, "x");
  if (x.ndim < 1) throw ValueError("x: expected an array of shape (..., in_features), got a 0-d array");
  if (weight.ndim != 2 || weight.shape[1] != x.size(-1))
    throw ValueError("weight: expected shape (out_features, in_features=" + std::to_string(x.size(-1)) + "), got " +
                     shape_str(weight));
  if (bias.present) {
    ops::require_float(bias, "bias");
    ops::require_same_dtype(bias, "bias", x, "x");
    if (bias.ndim != 1 || bias.shape[0] != weight.shape[0])
      throw ValueError("bias: expected shape (" + std::to_string(weight.shape[0]) + ",), got " + shape_str(bias));
  }
  int64_t out_shape[kMaxDims];
  for (int i = 0; i < x.ndim; ++i) out_shape[i] = x.shape[i];
  out_shape[x.ndim - 1] = weight.shape[0];
  ops::checked_numel(x.shape, x.ndim, "x");
  ops::checked_numel(weight.shape, 2, "weight");
  ops::checked_numel(out_shape, x.ndim, "output");
}

namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using StridedD = Eigen::Map<const MatD, 0, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

struct F64Linear {
  const TensorView *x, *w, *b;
  double* out;
  int64_t M, N, K;
  int act;
  std::vector<double>* rows;  // per thread: a contiguous copy of a block of x rows
};

constexpr int64_t kF64Rows = 64;

void f64_linear_task(void* ctx, int64_t begin, int64_t end, int tid) {
  F64Linear& c = *static_cast<F64Linear*>(ctx);
  const cpu::Kernels& kern = cpu::active_kernels();
  const TensorView& x = *c.x;
  StridedD W(c.w->ptr<const double>(), c.N, c.K, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(c.w->strides[0], c.w->strides[1]));
  std::vector<double>& buf = c.rows[tid];  // kF64Rows * K, sized by the caller
  for (int64_t blk = begin; blk < end; ++blk) {
    const int64_t m0 = blk * kF64Rows, mlen = std::min(kF64Rows, c.M - m0);
    for (int64_t r = 0; r < mlen; ++r) {
      const double* xr = x.ptr<const double>() + ops::row_offset(x.shape, x.strides, x.ndim, x.ndim - 1, m0 + r);
      for (int64_t kk = 0; kk < c.K; ++kk) buf[r * c.K + kk] = xr[kk * x.strides[x.ndim - 1]];
    }
    Eigen::Map<const MatD> A(buf.data(), mlen, c.K);
    Eigen::Map<MatD> O(c.out + m0 * c.N, mlen, c.N);
    O.noalias() = A * W.transpose();
    for (int64_t r = 0; r < mlen; ++r) {
      double* row = c.out + (m0 + r) * c.N;
      if (c.b->present)
        for (int64_t j = 0; j < c.N; ++j) row[j] += c.b->ptr<const double>()[j * c.b->strides[0]];
      if (c.act) kern.activation_f64(row, row, c.N, c.act);
    }
  }
}

}  // namespace

void linear(const TensorView& x, const TensorView& weight, const TensorView& bias, Activation act,
            const TensorView& out) {
  linear_check(x, weight, bias);
  int64_t out_shape[kMaxDims];
  for (int i = 0; i < x.ndim; ++i) out_shape[i] = x.shape[i];
  out_shape[x.ndim - 1] = weight.shape[0];
  ops::require_output(out, "out", x.dtype, out_shape, x.ndim);
  const int64_t K = x.size(-1), N = weight.shape[0];
  const int64_t M = ops::checked_numel(x.shape, x.ndim - 1, "x");
  if (M == 0 || N == 0) return;
  if (x.dtype == DType::f32) {
    cpu::GemmProblem p;
    p.a = x.ptr<const float>();
    p.nrow_dims = std::max(1, x.ndim - 1);
    for (int i = 0; i < x.ndim - 1; ++i) { p.row_shape[i] = x.shape[i]; p.row_strides[i] = x.strides[i]; }
    if (x.ndim == 1) { p.row_shape[0] = 1; p.row_strides[0] = 0; }
    p.a_k = x.stride(-1);
    p.w = weight.ptr<const float>(); p.w_n = weight.strides[0]; p.w_k = weight.strides[1];
    if (bias.present) { p.bias = bias.ptr<const float>(); p.bias_s = bias.strides[0]; }
    p.out = out.ptr<float>();
    p.M = M; p.N = N; p.K = K;
    p.act = static_cast<int>(act);
    if (cpu::active_kernels().gemm_f32(p) != 0) throw std::bad_alloc();
    return;
  }
  const int nt = cpu::num_threads();
  std::vector<std::vector<double>> rows(static_cast<size_t>(nt), std::vector<double>(static_cast<size_t>(kF64Rows * K)));
  F64Linear c{&x, &weight, &bias, out.ptr<double>(), M, N, K, static_cast<int>(act), rows.data()};
  cpu::parallel_for((M + kF64Rows - 1) / kF64Rows, 1, f64_linear_task, &c, nt);
}

}  // namespace attnkit
