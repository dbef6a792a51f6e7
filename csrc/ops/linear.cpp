// linear: out = act(x @ weight^T + bias), PyTorch's weight layout (out_features, in_features);
// the weight either as an array or prepacked (linear_pack) in the backend's panel layout.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "ops/common.h"

namespace attnkit {
namespace {

// Checks x and bias against a weight of N x K of `wdtype`; fills the output spec and the
// problem's x, bias and sizes.
const Backend& prepare_common(const TensorView& x, DType wdtype, Device wdevice, int64_t N, int64_t K,
                              const TensorView& bias, Activation act, GemmPlan& plan, void* stream) {
  const Backend& be = backend_for(x.device, "x");
  ops::require_float(be, x, "x");
  if (wdtype != x.dtype)
    throw TypeError(std::string("weight: dtype ") + dtype_name(wdtype) + " does not match x's " + dtype_name(x.dtype) +
                    " (mixed dtypes are not allowed)");
  if (wdevice != x.device)
    throw TypeError(std::string("weight: on ") + device_name(wdevice) + ", but x is on " + device_name(x.device));
  ops::require_same_device(bias, "bias", x, "x");
  if (x.ndim < 1) throw ValueError("x: expected an array of shape (..., in_features), got a 0-d array");
  if (K != x.size(-1))
    throw ValueError("weight: expected shape (out_features, in_features=" + std::to_string(x.size(-1)) + "), got (" +
                     std::to_string(N) + ", " + std::to_string(K) + ")");
  if (bias.present) {
    ops::require_float(be, bias, "bias");
    ops::require_same_dtype(bias, "bias", x, "x");
    if (bias.ndim != 1 || bias.shape[0] != N)
      throw ValueError("bias: expected shape (" + std::to_string(N) + ",), got " + shape_str(bias));
  }
  OutputSpec& out = plan.out;
  out.dtype = x.dtype;
  out.device = x.device;
  out.ndim = x.ndim;
  for (int i = 0; i < x.ndim; ++i) out.shape[i] = x.shape[i];
  out.shape[x.ndim - 1] = N;
  ops::checked_numel(x.shape, x.ndim, "x");
  ops::checked_numel(out.shape, x.ndim, "output");

  GemmProblem& p = plan.problem;
  p = GemmProblem();
  p.dtype = x.dtype;
  p.a = x.data;
  p.nrow_dims = std::max(1, x.ndim - 1);
  for (int i = 0; i < x.ndim - 1; ++i) { p.row_shape[i] = x.shape[i]; p.row_strides[i] = x.strides[i]; }
  if (x.ndim == 1) { p.row_shape[0] = 1; p.row_strides[0] = 0; }
  p.a_k = x.stride(-1);
  if (bias.present) { p.bias = bias.data; p.bias_s = bias.strides[0]; }
  p.M = ops::checked_numel(x.shape, x.ndim - 1, "x");
  p.N = N;
  p.K = K;
  p.act = act;
  p.stream = stream;
  return be;
}

const Backend& packing_backend(Device device) {
  const Backend& be = backend_for(device, "weight");
  if (!be.pack)
    throw TypeError(std::string("weight: prepacked weights are not supported on ") + device_name(device));
  return be;
}

}  // namespace

void linear_prepare(const TensorView& x, const TensorView& weight, const TensorView& bias, Activation act,
                    GemmPlan& plan, void* stream) {
  const Backend& be = backend_for(x.device, "x");
  ops::require_float(be, x, "x");
  ops::require_float(be, weight, "weight");
  ops::require_same_dtype(weight, "weight", x, "x");
  if (x.ndim < 1) throw ValueError("x: expected an array of shape (..., in_features), got a 0-d array");
  if (weight.ndim != 2 || weight.shape[1] != x.size(-1))
    throw ValueError("weight: expected shape (out_features, in_features=" + std::to_string(x.size(-1)) + "), got " +
                     shape_str(weight));
  ops::checked_numel(weight.shape, 2, "weight");
  prepare_common(x, weight.dtype, weight.device, weight.shape[0], weight.shape[1], bias, act, plan, stream);
  GemmProblem& p = plan.problem;
  p.w = weight.data; p.w_n = weight.strides[0]; p.w_k = weight.strides[1];
}

namespace {
// W (N, K) into the backend's panels; gated: rows [gate; up] interleaved per panel (SwiGLU).
void pack_weight(const TensorView& weight, PackedWeight& packed, bool gated, const char* name) {
  const Backend& be = packing_backend(weight.device);
  ops::require_float(be, weight, name);
  if (weight.ndim != 2) throw ValueError(std::string(name) + ": expected shape (out_features, in_features), got " + shape_str(weight));
  ops::checked_numel(weight.shape, 2, name);
  GemmProblem p;
  p.dtype = weight.dtype;
  p.w = weight.data; p.w_n = weight.strides[0]; p.w_k = weight.strides[1];
  p.N = weight.shape[0];
  p.K = weight.shape[1];
  p.gated = gated;
  packed = PackedWeight();
  packed.dtype = weight.dtype;
  packed.device = weight.device;
  packed.N = p.N;
  packed.K = p.K;
  packed.gated = gated;
  be.pack(p, packed);
}
}  // namespace

void linear_pack(const TensorView& weight, PackedWeight& packed) { pack_weight(weight, packed, false, "weight"); }

void linear_pack_gated(const TensorView& gate_up, PackedWeight& packed) {
  if (gate_up.present && gate_up.ndim == 2 && gate_up.shape[0] % 2 != 0)
    throw ValueError("gate_up: expected an even number of rows [W_gate; W_up], got shape " + shape_str(gate_up));
  pack_weight(gate_up, packed, true, "gate_up");
}

void linear_unpack(const PackedWeight& weight, const TensorView& out) {
  OutputSpec spec;
  spec.dtype = weight.quant != Quant::none ? DType::f32 : weight.dtype;  // quantized: q * scale
  spec.device = weight.device;
  spec.ndim = 2;
  spec.shape[0] = weight.N;
  spec.shape[1] = weight.K;
  ops::require_output(out, "out", spec);
  if (!ops::is_contiguous(out)) throw ValueError("out: expected a C-contiguous array");
  packing_backend(weight.device).unpack(weight, out.data);
}

void linear_prepare_packed(const TensorView& x, PackedWeight& weight, const TensorView& bias, Activation act,
                           GemmPlan& plan, void* stream) {
  const bool quant = weight.quant != Quant::none;
  if (quant && x.present && x.dtype != DType::f32 && x.dtype != DType::bf16)
    throw TypeError(std::string("x: a quantized weight takes float32 or bfloat16 x, got ") + dtype_name(x.dtype));
  const Backend& be = prepare_common(x, quant ? x.dtype : weight.dtype, weight.device, weight.N, weight.K, bias, act, plan, stream);
  if (!quant && be.weight_layout() != weight.layout) {  // the layout in force changed (set_isa): repack from the old panels
    GemmProblem p;
    p.dtype = weight.dtype;
    p.N = weight.N;
    p.K = weight.K;
    p.packed = &weight;
    p.gated = weight.gated;
    PackedWeight fresh = weight;
    be.pack(p, fresh);
    weight = fresh;
  }
  plan.packed = weight;
  plan.problem.packed = &plan.packed;
  if (weight.gated) {  // SwiGLU: out (..., F) = silu(x W_gate^T + b_gate) * (x W_up^T + b_up)
    if (act != Activation::none)
      throw ValueError("activation: a gated (SwiGLU) weight applies silu itself; expected None");
    plan.problem.gated = true;
    plan.out.shape[plan.out.ndim - 1] = weight.N / 2;
  }
}

// out's rows as the GEMM writes them in place: evenly spaced (any sign) with unit stride along N.
bool direct_output(const TensorView& out, int64_t* ldc) {
  const int64_t N = out.size(-1);
  if (N > 1 && out.stride(-1) != 1) return false;
  return even_row_stride(out.shape, out.strides, out.ndim - 1, N, ldc);
}

void linear_run(GemmPlan& plan, const TensorView& out) {
  ops::require_output(out, "out", plan.out);
  GemmProblem& p = plan.problem;
  const int64_t rows = ops::checked_numel(out.shape, out.ndim, "out") == 0 ? 0 : p.M;
  if (rows == 0 || p.N == 0) return;
  const Backend& be = backend_for(plan.out.device, "x");
  if (direct_output(out, &p.ldc)) {
    p.out = out.data;
    be.gemm(p);
    return;
  }
  // Any other layout (a transposed batch, a strided last dim): the GEMM writes one contiguous
  // scratch, copied into out's strides; nothing outside out's view is touched.
  if (out.device != Device::cpu)
    throw ValueError(std::string("out: on ") + device_name(out.device) +
                     ", expected evenly spaced rows with a unit stride along the last dim");
  const int esize = dtype_size(plan.out.dtype);
  const int64_t n = out.size(-1);  // p.N, or half of it for a gated weight
  std::unique_ptr<char, void (*)(void*)> scratch(
      static_cast<char*>(std::malloc(static_cast<size_t>(p.M) * static_cast<size_t>(n) * esize)), std::free);
  if (!scratch) throw std::bad_alloc();
  ops::count_layout_copy();
  p.ldc = n;
  p.out = scratch.get();
  be.gemm(p);
  ops::copy_view(ops::contiguous_like(out, scratch.get()), out);
}

}  // namespace attnkit
