// linear: out = act(x @ weight^T + bias), PyTorch's weight layout (out_features, in_features).
#include <algorithm>
#include <string>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "ops/common.h"

namespace attnkit {

void linear_prepare(const TensorView& x, const TensorView& weight, const TensorView& bias, Activation act,
                    GemmPlan& plan, void* stream) {
  const Backend& be = backend_for(x.device, "x");
  ops::require_float(be, x, "x");
  ops::require_float(be, weight, "weight");
  ops::require_same_dtype(weight, "weight", x, "x");
  ops::require_same_device(weight, "weight", x, "x");
  ops::require_same_device(bias, "bias", x, "x");
  if (x.ndim < 1) throw ValueError("x: expected an array of shape (..., in_features), got a 0-d array");
  if (weight.ndim != 2 || weight.shape[1] != x.size(-1))
    throw ValueError("weight: expected shape (out_features, in_features=" + std::to_string(x.size(-1)) + "), got " +
                     shape_str(weight));
  if (bias.present) {
    ops::require_float(be, bias, "bias");
    ops::require_same_dtype(bias, "bias", x, "x");
    if (bias.ndim != 1 || bias.shape[0] != weight.shape[0])
      throw ValueError("bias: expected shape (" + std::to_string(weight.shape[0]) + ",), got " + shape_str(bias));
  }
  OutputSpec& out = plan.out;
  out.dtype = x.dtype;
  out.device = x.device;
  out.ndim = x.ndim;
  for (int i = 0; i < x.ndim; ++i) out.shape[i] = x.shape[i];
  out.shape[x.ndim - 1] = weight.shape[0];
  ops::checked_numel(x.shape, x.ndim, "x");
  ops::checked_numel(weight.shape, 2, "weight");
  ops::checked_numel(out.shape, x.ndim, "output");

  GemmProblem& p = plan.problem;
  p = GemmProblem();
  p.dtype = x.dtype;
  p.a = x.data;
  p.nrow_dims = std::max(1, x.ndim - 1);
  for (int i = 0; i < x.ndim - 1; ++i) { p.row_shape[i] = x.shape[i]; p.row_strides[i] = x.strides[i]; }
  if (x.ndim == 1) { p.row_shape[0] = 1; p.row_strides[0] = 0; }
  p.a_k = x.stride(-1);
  p.w = weight.data; p.w_n = weight.strides[0]; p.w_k = weight.strides[1];
  if (bias.present) { p.bias = bias.data; p.bias_s = bias.strides[0]; }
  p.M = ops::checked_numel(x.shape, x.ndim - 1, "x");
  p.N = weight.shape[0];
  p.K = x.size(-1);
  p.act = act;
  p.stream = stream;
}

void linear_run(GemmPlan& plan, const TensorView& out) {
  ops::require_output(out, "out", plan.out);
  if (!ops::is_contiguous(out)) throw ValueError("out: expected a C-contiguous array");
  GemmProblem& p = plan.problem;
  p.out = out.data;
  if (p.M == 0 || p.N == 0) return;
  backend_for(plan.out.device, "x").gemm(p);
}

}  // namespace attnkit
