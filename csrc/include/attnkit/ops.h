// The C++ API of attnkit: one entry point per op, in two steps.
//   prepare: checks every input (TypeError / ValueError naming the argument), builds the backend
//            problem once, and says the output's shape and dtype, so the caller can allocate it;
//   run:     checks the outputs the caller passes, then hands the problem to the backend of the
//            inputs' device (csrc/include/attnkit/backend.h).
// Nothing here releases the GIL or knows about Python; the bindings do that.
#pragma once
#include <string>
#include <vector>

#include "attnkit/problems.h"
#include "attnkit/tensor.h"

namespace attnkit {

// The shape and dtype of an op's result (and of its second result: lse, sum).
struct OutputSpec {
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
};

// ---- scaled_dot_product_attention -----------------------------------------------------------
struct SdpaArgs {
  TensorView query, key, value;   // (..., Hq, Lq, E), (..., Hk, Lk, E), (..., Hk, Lk, Ev)
  TensorView attn_mask;           // optional: bool or query dtype, broadcastable to (..., Hq, Lq, Lk)
  TensorView kv_lengths;          // optional: int64 of the batch shape (...), host memory
  CausalAlign causal = CausalAlign::none;
  bool has_scale = false;
  double scale = 0.0;
  bool enable_gqa = false;
  void* stream = nullptr;         // cuda: the caller's stream
  int64_t window = 0;             // sliding window (causal only, cpu only); 0 = none
};

struct SdpaPlan {
  AttnProblem problem;
  OutputSpec out, lse;            // out (..., Hq, Lq, Ev); lse (..., Hq, Lq)
  std::vector<int64_t> kv_lengths;  // a checked copy of the distinct lengths; problem.kv_len points here
  SdpaPlan() = default;
  SdpaPlan(const SdpaPlan&) = delete;
  SdpaPlan& operator=(const SdpaPlan&) = delete;
};

void sdpa_prepare(const SdpaArgs& args, SdpaPlan& plan);
// out: (..., Hq, Lq, Ev) of the query dtype, any strides; lse optional (..., Hq, Lq).
void sdpa_run(SdpaPlan& plan, const TensorView& out, const TensorView& lse);

// ---- linear: out (..., N) = act(x (..., K) @ weight (N, K)^T + bias (N)); out contiguous -----
struct GemmPlan {
  GemmProblem problem;
  OutputSpec out;
  PackedWeight packed;            // a prepacked weight's copy (its panels kept alive); problem.packed points here
  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
};
void linear_prepare(const TensorView& x, const TensorView& weight, const TensorView& bias, Activation act,
                    GemmPlan& plan, void* stream = nullptr);
void linear_run(GemmPlan& plan, const TensorView& out);

// Prepacked weights: pack `weight` (N, K) once for the backend of its device; a plan built from
// a PackedWeight reads no W and packs nothing. If the layout in force changed since (the cpu's
// set_isa), linear_prepare_packed repacks `weight` in place first.
void linear_pack(const TensorView& weight, PackedWeight& packed);
// W back from its panels into out (N, K), contiguous, of its dtype.
void linear_unpack(const PackedWeight& weight, const TensorView& out);
// SwiGLU: pack gate_up (2F, K) = [W_gate; W_up] so that one GEMM computes both halves
// (PackedWeight::gated); linear_prepare_packed with it gives out (..., F) = silu(gate) * up.
void linear_pack_gated(const TensorView& gate_up, PackedWeight& packed);
// Quantized weights: q (N, K) int8 and scale (N,) float32 (quant int8), or q in [-8, 7] and
// scale (N, ceil(K / group)) (int4, group a multiple of 32); gated as linear_pack_gated (q = [gate; up]).
// linear_prepare_packed takes the result with x float32 or bfloat16; linear_unpack gives q * scale as float32.
void linear_pack_quantized(const TensorView& q, const TensorView& scale, Quant quant, int64_t group, bool gated,
                           PackedWeight& packed);
// q (N, K) int8 and scale (N,) or (N, ceil(K / group)) float32, contiguous, back from a quantized weight.
void linear_unpack_quantized(const PackedWeight& weight, const TensorView& q, const TensorView& scale);
// out (n, K) float32 = rows ids (n,) int64 of a quantized, ungated weight, dequantized (a tied embedding
// looked up in its quantized LM head). ValueError for an id outside [0, N).
void linear_quantized_rows(const PackedWeight& weight, const TensorView& ids, const TensorView& out);
void linear_prepare_packed(const TensorView& x, PackedWeight& weight, const TensorView& bias, Activation act,
                           GemmPlan& plan, void* stream = nullptr);

// ---- row-wise ops: softmax, layer_norm (+ fused residual), activations ------------------------
struct RowPlan {
  RowProblem problem;
  OutputSpec out;                 // x's shape and dtype; also the shape of layer_norm's sum
};
// softmax of x along axis; mask optional bool broadcastable to x (true = keep).
void softmax_prepare(const TensorView& x, int axis, const TensorView& mask, RowPlan& plan, void* stream = nullptr);
// LN(x + residual) over the last dim; residual, weight, bias optional.
void layer_norm_prepare(const TensorView& x, const TensorView& residual, const TensorView& weight,
                        const TensorView& bias, double eps, RowPlan& plan, void* stream = nullptr);
// RMSNorm(x + residual) over the last dim: s / sqrt(mean(s^2) + eps) * weight; residual, weight optional.
void rms_norm_prepare(const TensorView& x, const TensorView& residual, const TensorView& weight, double eps,
                      RowPlan& plan, void* stream = nullptr);
// act(x), elementwise.
void activation_prepare(const TensorView& x, Activation act, RowPlan& plan, void* stream = nullptr);
// out: contiguous, x's shape; sum (layer_norm only, optional): x + residual.
void rows_run(RowPlan& plan, const TensorView& out, const TensorView& sum);

// ---- rotary position embedding --------------------------------------------------------------
// x (B, H, L, D) any strides; cos, sin (P, R/2), any strides, with R = 2 * cos.shape[1] <= D rotary dims;
// positions int64 (B, L) or (L,), values in [0, P). out: x's shape and dtype (may be x itself).
struct RopePlan {
  RopeProblem problem;
  OutputSpec out;
  std::vector<int64_t> positions;  // a checked copy; problem.positions points here
  std::vector<char> tables;        // cos and sin copied, when their layouts differ or a row is strided
  RopePlan() = default;
  RopePlan(const RopePlan&) = delete;
  RopePlan& operator=(const RopePlan&) = delete;
};
void rope_prepare(const TensorView& x, const TensorView& cos, const TensorView& sin, const TensorView& positions,
                  bool interleaved, RopePlan& plan);
void rope_run(RopePlan& plan, const TensorView& out);

}  // namespace attnkit
