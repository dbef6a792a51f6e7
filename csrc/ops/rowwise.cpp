// softmax, layer_norm and activations: every check once, one RowProblem, then the backend.
#include <cmath>
#include <string>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "ops/common.h"

namespace attnkit {
namespace {

// The problem's rows: x's shape with `axis` as the row axis; x and out operands.
const Backend& start(RowPlan& plan, RowOp op, const TensorView& x, int axis, void* stream) {
  const Backend& be = backend_for(x.device, "x");
  ops::require_float(be, x, "x");
  ops::checked_numel(x.shape, x.ndim, "x");
  RowProblem& p = plan.problem;
  p = RowProblem();
  p.op = op;
  p.dtype = x.dtype;
  p.stream = stream;
  if (x.ndim == 0) {  // a scalar is one row of one element
    p.ndim = 1;
    p.shape[0] = 1;
  } else {
    p.ndim = x.ndim;
    for (int i = 0; i < x.ndim; ++i) {
      p.shape[i] = x.shape[i];
      p.x.strides[i] = x.strides[i];
    }
  }
  p.axis = axis;
  p.x.data = x.data;
  p.n = p.shape[axis];
  p.rows = 1;
  for (int d = 0; d < p.ndim; ++d)
    if (d != axis) p.rows *= p.shape[d];
  OutputSpec& out = plan.out;
  out.dtype = x.dtype;
  out.device = x.device;
  out.ndim = x.ndim;
  for (int i = 0; i < x.ndim; ++i) out.shape[i] = x.shape[i];
  return be;
}

void set_operand(RowOperand& op, const TensorView& t) {
  op.data = t.data;
  if (t.ndim == 0) op.strides[0] = 1;
  for (int i = 0; i < t.ndim; ++i) op.strides[i] = t.strides[i];
}

}  // namespace

void softmax_prepare(const TensorView& x, int axis, const TensorView& mask, RowPlan& plan, void* stream) {
  if (x.ndim == 0) throw ValueError("x: expected an array with at least 1 dim, got a 0-d array");
  if (axis < -x.ndim || axis >= x.ndim)
    throw ValueError("axis: " + std::to_string(axis) + " is out of range for an array of " + std::to_string(x.ndim) + " dims");
  if (axis < 0) axis += x.ndim;
  start(plan, RowOp::softmax, x, axis, stream);
  if (mask.present) {
    ops::require_same_device(mask, "mask", x, "x");
    if (mask.dtype != DType::boolean)
      throw TypeError(std::string("mask: expected a bool array (True = keep), got dtype ") + dtype_name(mask.dtype));
    ops::broadcast_strides(mask, x.shape, x.ndim, plan.problem.mask.strides, "mask", "x's shape " + shape_str(x));
    plan.problem.mask.data = mask.data;
  }
}

void layer_norm_prepare(const TensorView& x, const TensorView& residual, const TensorView& weight, const TensorView& bias,
                        double eps, RowPlan& plan, void* stream) {
  const Backend& be = backend_for(x.device, "x");
  ops::require_float(be, x, "x");
  if (x.ndim == 0) throw ValueError("x: expected an array of shape (..., normalized_size), got a 0-d array");
  const int64_t n = x.size(-1);
  if (residual.present) {
    ops::require_float(be, residual, "residual");
    ops::require_same_dtype(residual, "residual", x, "x");
    ops::require_same_device(residual, "residual", x, "x");
    bool same = residual.ndim == x.ndim;
    for (int i = 0; same && i < x.ndim; ++i) same = residual.shape[i] == x.shape[i];
    if (!same) throw ValueError("residual: expected x's shape " + shape_str(x) + ", got " + shape_str(residual));
  }
  const TensorView* params[2] = {&weight, &bias};
  const char* names[2] = {"weight", "bias"};
  for (int i = 0; i < 2; ++i) {
    const TensorView& t = *params[i];
    if (!t.present) continue;
    ops::require_float(be, t, names[i]);
    ops::require_same_dtype(t, names[i], x, "x");
    ops::require_same_device(t, names[i], x, "x");
    if (t.ndim != 1 || t.shape[0] != n)
      throw ValueError(std::string(names[i]) + ": expected shape (" + std::to_string(n) + ",), got " + shape_str(t));
  }
  if (!(std::isfinite(eps) && eps >= 0)) throw ValueError("eps: expected a finite number >= 0, got " + std::to_string(eps));
  start(plan, RowOp::layer_norm, x, x.ndim - 1, stream);
  RowProblem& p = plan.problem;
  if (residual.present) set_operand(p.residual, residual);
  if (weight.present) { p.weight = weight.data; p.weight_s = weight.strides[0]; }
  if (bias.present) { p.bias = bias.data; p.bias_s = bias.strides[0]; }
  p.eps = eps;
}

void rms_norm_prepare(const TensorView& x, const TensorView& residual, const TensorView& weight, double eps,
                      RowPlan& plan, void* stream) {
  if (x.present && x.device != Device::cpu)
    throw TypeError(std::string("x: rms_norm is not supported on ") + device_name(x.device));
  layer_norm_prepare(x, residual, weight, TensorView(), eps, plan, stream);  // the same checks
  plan.problem.op = RowOp::rms_norm;
}

void activation_prepare(const TensorView& x, Activation act, RowPlan& plan, void* stream) {
  start(plan, RowOp::activation, x, x.ndim == 0 ? 0 : x.ndim - 1, stream);
  plan.problem.act = act;
}

void rows_run(RowPlan& plan, const TensorView& out, const TensorView& sum) {
  RowProblem& p = plan.problem;
  ops::require_output(out, "out", plan.out);
  set_operand(p.out, out);
  if (sum.present) {
    ops::require_output(sum, "sum_out", plan.out);
    set_operand(p.sum, sum);
  }
  if (p.rows == 0 || p.n == 0) return;
  backend_for(plan.out.device, "x").rows(p);
}

}  // namespace attnkit
