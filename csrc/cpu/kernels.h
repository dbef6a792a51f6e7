// The kernel table: one instance per instruction set, compiled from kernels.cpp with that
// ISA's flags (cmake/isa.cmake). Problems are plain structs; kernels assume valid input
// (the ops in csrc/ops check everything) and never throw.
#pragma once
#include <cstdint>

namespace attnkit { namespace cpu {

constexpr int kMaxBatchDims = 4;

// Scaled dot-product attention over flat batch b, KV head hk, query head h = hk*G + g.
struct AttnProblem {
  bool f64 = false;
  const void *q = nullptr, *k = nullptr, *v = nullptr;
  void* out = nullptr;
  void* lse = nullptr;            // optional (..., Hq, Lq)
  const void* mask = nullptr;     // optional, bool (uint8) or the query dtype
  bool mask_bool = false;
  const int64_t* kv_len = nullptr;  // optional, per flat batch index, in [0, Lk]
  int causal = 0;                 // 0 none, 1 top-left, 2 bottom-right
  double scale = 1.0;
  int64_t B = 1, Hq = 1, Hk = 1, Lq = 0, Lk = 0, E = 0, Ev = 0;
  // batch dims (row-major over batch_shape), and strides in elements
  int nbatch = 0;
  int64_t batch_shape[kMaxBatchDims] = {};
  int64_t q_b[kMaxBatchDims] = {}, k_b[kMaxBatchDims] = {}, v_b[kMaxBatchDims] = {},
          o_b[kMaxBatchDims] = {}, l_b[kMaxBatchDims] = {}, m_b[kMaxBatchDims] = {};
  int64_t q_h = 0, q_i = 0, q_e = 0;
  int64_t k_h = 0, k_j = 0, k_e = 0;
  int64_t v_h = 0, v_j = 0, v_e = 0;
  int64_t o_h = 0, o_i = 0, o_e = 0;
  int64_t l_h = 0, l_i = 0;
  int64_t m_h = 0, m_i = 0, m_j = 0;
};

// out (M, N) contiguous = act(A (M, K) @ W(N, K)^T + bias); A's rows are reached through
// up to kMaxGemmRowDims leading dims with their strides.
constexpr int kMaxGemmRowDims = 8;
struct GemmProblem {
  const float* a = nullptr;
  int nrow_dims = 1;
  int64_t row_shape[kMaxGemmRowDims] = {};
  int64_t row_strides[kMaxGemmRowDims] = {};
  int64_t a_k = 1;
  const float* w = nullptr;
  int64_t w_n = 0, w_k = 1;
  const float* bias = nullptr;
  int64_t bias_s = 1;
  float* out = nullptr;
  int64_t M = 0, N = 0, K = 0;
  int act = 0;  // attnkit::Activation
};

struct Kernels {
  const char* name;
  int (*attention)(const AttnProblem&);  // 0 ok, 1 out of memory
  int (*gemm_f32)(const GemmProblem&);   // 0 ok, 1 out of memory
  // Rows: contiguous, in place. softmax: entries of -inf are masked; an all -inf row gives zeros.
  void (*softmax_row_f32)(float* x, int64_t n);
  void (*softmax_row_f64)(double* x, int64_t n);
  // x holds x + residual; writes LN(x) * w + b to y (w, b may be null).
  void (*layer_norm_row_f32)(const float* x, int64_t n, const float* w, const float* b, double eps, float* y);
  void (*layer_norm_row_f64)(const double* x, int64_t n, const double* w, const double* b, double eps, double* y);
  void (*activation_f32)(const float* x, float* y, int64_t n, int act);
  void (*activation_f64)(const double* x, double* y, int64_t n, int act);
  int vector_bytes;
};

namespace generic { const Kernels& kernels(); }
namespace avx2 { const Kernels& kernels(); }
namespace avx512 { const Kernels& kernels(); }

}}  // namespace attnkit::cpu
