// The C++ API of attnkit: one entry point per op. Each entry point validates its arguments
// (throwing ValueError / TypeError naming the argument) and then dispatches to a kernel.
#pragma once
#include <string>
#include "attnkit/tensor.h"

namespace attnkit {

enum class Activation { none, relu, gelu, gelu_tanh };
enum class CausalAlign { none, top_left, bottom_right };

struct SdpaArgs {
  TensorView query, key, value;   // (..., Hq, Lq, E), (..., Hk, Lk, E), (..., Hk, Lk, Ev)
  TensorView attn_mask;           // optional: bool or query dtype, broadcastable to (..., Hq, Lq, Lk)
  TensorView kv_lengths;          // optional: int64 of the batch shape (...)
  TensorView out;                 // (..., Hq, Lq, Ev), allocated by the caller after sdpa_output_shape
  TensorView lse;                 // optional: (..., Hq, Lq)
  CausalAlign causal = CausalAlign::none;
  bool has_scale = false;
  double scale = 0.0;
  bool enable_gqa = false;
};

// Validates everything but the outputs; fills the output shape (ndim of query) and returns its ndim.
int sdpa_check(const SdpaArgs& a, int64_t* out_shape);
// Validates the outputs too, then computes. Releases nothing: the caller releases the GIL.
void sdpa(const SdpaArgs& a);

// softmax of x along axis into out (contiguous, x's shape); mask optional bool broadcastable to x.
void softmax(const TensorView& x, int axis, const TensorView& mask, const TensorView& out);

// out (..., N) = act(x (..., K) @ weight(N, K)^T + bias(N)); out contiguous.
void linear(const TensorView& x, const TensorView& weight, const TensorView& bias, Activation act,
            const TensorView& out);
void linear_check(const TensorView& x, const TensorView& weight, const TensorView& bias);

// out = LN(x + residual) over the last dim; sum_out (optional) = x + residual.
void layer_norm(const TensorView& x, const TensorView& residual, const TensorView& weight,
                const TensorView& bias, double eps, const TensorView& out, const TensorView& sum_out);
void layer_norm_check(const TensorView& x, const TensorView& residual, const TensorView& weight,
                      const TensorView& bias, double eps);

// out = act(x), elementwise; out contiguous with x's shape.
void activation(const TensorView& x, Activation act, const TensorView& out);

// Threads and instruction sets.
void set_num_threads(int n);
int get_num_threads();

}  // namespace attnkit
