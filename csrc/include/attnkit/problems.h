// Backend-neutral problem descriptors: what an op hands to a backend after it has checked every
// argument. A descriptor holds pointers into the caller's arrays (all on one device), sizes and
// strides in elements, the element type and the options as enums. Backends (csrc/cpu,
// csrc/cuda) assume a descriptor is valid and never re-check it.
#pragma once
#include <cstdint>
#include <memory>

#include "attnkit/tensor.h"

namespace attnkit {

enum class Activation { none, relu, gelu, gelu_tanh, silu };
enum class CausalAlign { none, top_left, bottom_right };
enum class Quant { none, int8, int4 };
constexpr int kQuantCols = 16;  // columns per panel of a quantized weight

constexpr int kMaxBatchDims = 4;

// Scaled dot-product attention over the flattened batch b (batch_shape, row-major), KV head hk,
// query head h = hk * G + g with G = Hq / Hk (grouped-query attention reads K/V in place).
//   out[b, h, i, :] = softmax_j(q[b,h,i,:] . k[b,hk,j,:] * scale + mask[b,h,i,j]) v[b,hk,j,:]
// over the keys j that are visible: j < n_b = kv_length(p, b) (Lk without kv_len) and, when causal,
// j <= i (top_left) or j <= i + n_b - Lq (bottom_right).
// A row with no visible key gives zeros and lse = -inf.
struct AttnProblem {
  DType dtype = DType::f32;          // of q, k, v, out, lse and a float mask
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  void* out = nullptr;
  void* lse = nullptr;               // optional (..., Hq, Lq), natural log
  const void* mask = nullptr;        // optional: bool (1 byte, nonzero = visible) or additive, of dtype
  bool mask_bool = false;
  // optional, in [0, Lk], HOST memory on every device: one entry per distinct length, not per batch
  // index (kv_lengths broadcast over a batch dim is stored once along it); read it with kv_length
  const int64_t* kv_len = nullptr;
  int64_t kv_len_count = 0;          // entries at kv_len
  int64_t len_b[kMaxBatchDims] = {}; // strides of kv_len per batch dim; 0 on broadcast dims
  CausalAlign causal = CausalAlign::none;
  double scale = 1.0;
  int64_t B = 1, Hq = 1, Hk = 1, Lq = 0, Lk = 0, E = 0, Ev = 0;
  int nbatch = 0;                    // batch dims, row-major over batch_shape; B = their product
  int64_t batch_shape[kMaxBatchDims] = {};
  // strides in elements: per batch dim (*_b), then head, row (query i / key j), feature
  int64_t q_b[kMaxBatchDims] = {}, k_b[kMaxBatchDims] = {}, v_b[kMaxBatchDims] = {},
          o_b[kMaxBatchDims] = {}, l_b[kMaxBatchDims] = {}, m_b[kMaxBatchDims] = {};
  int64_t q_h = 0, q_i = 0, q_e = 0;
  int64_t k_h = 0, k_j = 0, k_e = 0;
  int64_t v_h = 0, v_j = 0, v_e = 0;
  int64_t o_h = 0, o_i = 0, o_e = 0;
  int64_t l_h = 0, l_i = 0;
  int64_t m_h = 0, m_i = 0, m_j = 0;  // 0 on broadcast dims
  void* stream = nullptr;            // cudaStream_t for a cuda problem; unused on the cpu
  // sliding window (causal only): key j is visible to query i only if pos(i) - j < window, where
  // pos(i) = i (top_left) or i + kv_length(p, b) - Lq (bottom_right); 0 = no window
  int64_t window = 0;
};

// The keys of flat batch index b: its kv_len entry, or Lk without kv_lengths.
static inline int64_t kv_length(const AttnProblem& p, int64_t b) {
  if (!p.kv_len) return p.Lk;
  int64_t at = 0;
  for (int d = p.nbatch - 1; d >= 0; --d) {
    at += (b % p.batch_shape[d]) * p.len_b[d];
    b /= p.batch_shape[d];
  }
  return p.kv_len[at];
}

// A weight W (N, K) in a backend's panel layout for its GEMM (attnkit.pack_linear). `layout`
// is the backend's tag for the layout (on the cpu: the instruction-set path it was packed for);
// panel_cols and depth_block describe it well enough to read W back from it.
struct PackedWeight {
  DType dtype = DType::f32;
  Device device = Device::cpu;
  int64_t N = 0, K = 0;
  int layout = -1;
  int64_t panel_cols = 0, depth_block = 0;  // W^T packed as [K / depth_block][N / panel_cols][depth][panel_cols]
  // depth_group 2 (AVX-512-BF16): each panel holds depth pairs, [depth / 2][panel_cols][2], a
  // block's depth rounded up to even with zeros
  int depth_group = 1;
  std::shared_ptr<void> data;               // kept alive by every plan that uses it
  size_t bytes = 0;
  // gated (SwiGLU): W's logical rows are [gate (F); up (F)], N = 2F; each panel holds
  // panel_cols / 2 gate columns followed by the same features' up columns (gated_column)
  bool gated = false;
  // Quantized (attnkit.quantize_linear; the same layout on every path, see below): dtype is then
  // unused (x may be float32 or bfloat16) and data holds, for npan = ceil(N / 16) panels of
  // kQuantCols columns and K padded to kp (int8: a multiple of 64; int4: of group):
  //   int8: [npan][kp / 4][16][4] int8 (W[n][k] / scale[n], rounded; 4 consecutive k of a column
  //         together, as vpdpbusd and tdpbusd read them), then float scale[npan * 16], then int32
  //         csum[npan * 16] = 128 * sum_k q[n][k] (what the u8 = s8 + 128 activations add)
  //   int4: [npan][kp / 8][64 bytes]: byte c * 4 + i of chunk j holds q + 8 of k = 8j + i (low
  //         nibble) and 8j + 4 + i (high nibble) of column c; then float scale[npan][kp / group][16]
  // Column c of panel pn is row n = pn * 16 + c, or gated_column's mapping for a gated weight.
  Quant quant = Quant::none;
  int64_t group = 0, kp = 0;                // int4: K per scale; K padded
  int64_t scale_off = 0, sum_off = 0;       // bytes into data
};

// The physical panel column of logical row n of a gated weight (N = 2F rows: gate, then up)
// with panels of pc columns: panel n' / (pc/2) holds gate features in its first pc/2 columns
// and the same up features in its last pc/2.
static inline int64_t gated_column(int64_t n, int64_t N, int64_t pc) {
  const int64_t F = N / 2, half = pc / 2, f = n < F ? n : n - F;
  return (f / half) * pc + (n < F ? 0 : half) + f % half;
}

// A quantized weight's source (attnkit.quantize_linear): q (N, K) int8 (int4: in [-8, 7]) with
// strides, and its scales (N) for int8 or (N, ceil(K / group)) for int4, float32, with strides.
struct QuantSource {
  const int8_t* q = nullptr;
  int64_t q_n = 0, q_k = 1;
  const float* scale = nullptr;
  int64_t s_n = 0, s_g = 0;
};

// out (M, N) = act(A (M, K) @ W (N, K)^T + bias (N)), out's rows ldc apart (unit stride along N). A's M rows are reached
// through up to kMaxDims leading dims with their strides (any strided x of shape (..., K)).
struct GemmProblem {
  DType dtype = DType::f32;          // of a, w, bias and out
  const void* a = nullptr;
  int nrow_dims = 1;
  int64_t row_shape[kMaxDims] = {};
  int64_t row_strides[kMaxDims] = {};
  int64_t a_k = 1;                   // stride of A along K
  const void* w = nullptr;
  int64_t w_n = 0, w_k = 1;          // strides of W
  const PackedWeight* packed = nullptr;  // instead of w: W already in the backend's layout
  const void* bias = nullptr;        // optional
  int64_t bias_s = 1;
  void* out = nullptr;
  int64_t ldc = 0;                   // out's row stride, >= N
  int64_t M = 0, N = 0, K = 0;
  Activation act = Activation::none;
  void* stream = nullptr;
  // gated (SwiGLU, packed weights with PackedWeight::gated only): out (M, N/2) =
  // silu(A W_gate^T + b_gate) * (A W_up^T + b_up); ldc is out's row stride, >= N/2
  bool gated = false;
  // Quantized (attnkit.quantize_linear; the same layout on every path, see below): dtype is then
  // unused (x may be float32 or bfloat16) and data holds, for npan = ceil(N / 16) panels of
  // kQuantCols columns and K padded to kp (int8: a multiple of 64; int4: of group):
  //   int8: [npan][kp / 4][16][4] int8 (W[n][k] / scale[n], rounded; 4 consecutive k of a column
  //         together, as vpdpbusd and tdpbusd read them), then float scale[npan * 16], then int32
  //         csum[npan * 16] = 128 * sum_k q[n][k] (what the u8 = s8 + 128 activations add)
  //   int4: [npan][kp / 8][64 bytes]: byte c * 4 + i of chunk j holds q + 8 of k = 8j + i (low
  //         nibble) and 8j + 4 + i (high nibble) of column c; then float scale[npan][kp / group][16]
  // Column c of panel pn is row n = pn * 16 + c, or gated_column's mapping for a gated weight.
  Quant quant = Quant::none;
  int64_t group = 0, kp = 0;                // int4: K per scale; K padded
  int64_t scale_off = 0, sum_off = 0;       // bytes into data
};

// Rotary position embedding over x (B, H, L, D) of any strides (a view of (B, L, H, D) too):
// the first rot = 2 * half dims of each row are rotated by the angle table row of the token's
// position (cos/sin (P, half), contiguous rows ld apart), the others copied.
//   rotate-half:  y[d] = x[d] cos - x[d + half] sin; y[d + half] = x[d + half] cos + x[d] sin
//   interleaved:  y[2d] = x[2d] cos - x[2d+1] sin;   y[2d+1] = x[2d+1] cos + x[2d] sin
// positions: int64 (B, L) with strides pos_b, pos_l (0 to broadcast), each in [0, P).
struct RopeProblem {
  DType dtype = DType::f32;          // of x, out, cos, sin
  const void* x = nullptr;
  void* out = nullptr;               // may equal x (in place), else disjoint
  const void *cos = nullptr, *sin = nullptr;
  int64_t ld = 0, P = 0, half = 0;
  const int64_t* positions = nullptr;
  int64_t pos_b = 0, pos_l = 0;
  bool interleaved = false;
  int64_t B = 0, H = 0, L = 0, D = 0;
  int64_t x_s[4] = {}, o_s[4] = {};  // strides of (B, H, L, D)
  void* stream = nullptr;
};

// Row-wise ops over every 1-D row of x along `axis` (softmax: any axis; the others: the last).
//   softmax:    out = softmax(x) along the row; entries where mask is false are excluded;
//               a row with none left gives zeros
//   layer_norm: s = x + residual (residual optional); sum = s (optional output);
//               out = (s - mean) / sqrt(var + eps) * weight + bias (weight, bias optional)
//   activation: out = act(x)
// Each operand carries strides (in elements) for the full shape; 0 on a broadcast dim (mask).
enum class RowOp { softmax, layer_norm, activation, rms_norm };
//   rms_norm:   like layer_norm without centring or bias: out = s / sqrt(mean(s^2) + eps) * weight

struct RowOperand {
  void* data = nullptr;              // const for inputs; the op never writes through an input
  int64_t strides[kMaxDims] = {};
};

struct RowProblem {
  RowOp op = RowOp::activation;
  DType dtype = DType::f32;          // of x, out, residual, sum, weight, bias
  int ndim = 1;
  int axis = 0;                      // the row axis, in [0, ndim)
  int64_t shape[kMaxDims] = {};
  int64_t rows = 0, n = 0;           // number of rows; elements per row (shape[axis])
  RowOperand x, out, residual, sum, mask;  // mask: bool (1 byte) for softmax
  const void* weight = nullptr;      // (n,) with weight_s stride; layer_norm only
  const void* bias = nullptr;
  int64_t weight_s = 1, bias_s = 1;
  double eps = 1e-5;
  Activation act = Activation::none;
  void* stream = nullptr;
};

}  // namespace attnkit
