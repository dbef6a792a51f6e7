// What the attention kernels share: the launch parameters built once from an AttnProblem, and
// which keys a query row may see.
#pragma once
#include "cuda/common.cuh"

namespace attnkit { namespace cuda {

struct AttnParams {
  const void *q, *k, *v;
  void* out;
  void* lse;                         // optional
  const void* mask;                  // optional: bool (1 byte) or additive of the element type
  bool mask_bool;
  const int64_t* kv_len;             // optional, DEVICE copy of the problem's (distinct) lengths
  int64_t len_b[kMaxBatchDims];      // kv_len's strides per batch dim, 0 where kv_lengths broadcasts
  int causal;                        // 0 none, 1 top_left, 2 bottom_right
  float scale_log2;                  // scale * log2(e): scores live in the log2 domain
  int64_t B, Hq, Hk, G, Lq, Lk, E, Ev;
  int nbatch;
  int64_t batch_shape[kMaxBatchDims];
  int64_t q_b[kMaxBatchDims], k_b[kMaxBatchDims], v_b[kMaxBatchDims], o_b[kMaxBatchDims], l_b[kMaxBatchDims],
      m_b[kMaxBatchDims];
  int64_t q_h, q_i, q_e, k_h, k_j, k_e, v_h, v_j, v_e, o_h, o_i, o_e, l_h, l_i, m_h, m_i, m_j;
};

// Base offsets (in elements) of one (batch, query head) slice.
struct SliceOffsets {
  int64_t q, k, v, o, l, m;
};

__device__ __forceinline__ SliceOffsets slice_offsets(const AttnParams& p, int64_t b, int64_t h) {
  const int64_t hk = h / p.G;
  SliceOffsets s;
  s.q = batch_offset(b, p.nbatch, p.batch_shape, p.q_b) + h * p.q_h;
  s.k = batch_offset(b, p.nbatch, p.batch_shape, p.k_b) + hk * p.k_h;
  s.v = batch_offset(b, p.nbatch, p.batch_shape, p.v_b) + hk * p.v_h;
  s.o = batch_offset(b, p.nbatch, p.batch_shape, p.o_b) + h * p.o_h;
  s.l = p.lse ? batch_offset(b, p.nbatch, p.batch_shape, p.l_b) + h * p.l_h : 0;
  s.m = p.mask ? batch_offset(b, p.nbatch, p.batch_shape, p.m_b) + h * p.m_h : 0;
  return s;
}

// Keys visible to query row i of batch b: j < n (kv_lengths) and, when causal, j <= i + off.
struct KeyRange {
  int64_t n;    // kv length of this batch entry
  int64_t off;  // causal offset: 0 (top_left) or n - Lq (bottom_right)
  __device__ __forceinline__ int64_t end(const AttnParams& p, int64_t i) const {  // exclusive bound for row i
    if (!p.causal) return n;
    const int64_t e = i + off + 1;
    return e < 0 ? 0 : (e < n ? e : n);
  }
};

__device__ __forceinline__ KeyRange key_range(const AttnParams& p, int64_t b) {
  KeyRange r;
  r.n = p.kv_len ? p.kv_len[batch_offset(b, p.nbatch, p.batch_shape, p.len_b)] : p.Lk;  // as kv_length (problems.h)
  r.off = p.causal == 2 ? r.n - p.Lq : 0;
  return r;
}

// A log2-domain score x with the mask applied: -inf where a bool mask hides the key (whatever x
// is, so a NaN behind a hidden key stays hidden), else x + the additive mask times log2(e). A
// finite mask whose product with log2(e) overflows (float32's lowest, the "HF-style" masked
// value) becomes -FLT_MAX instead of -inf, so that a row masked that way everywhere still sees
// every key equally, as the float64 oracle does.
template <class T>
__device__ __forceinline__ float apply_mask(float x, const AttnParams& p, int64_t moff, int64_t i, int64_t j) {
  const int64_t at = moff + i * p.m_i + j * p.m_j;
  if (p.mask_bool) return static_cast<const unsigned char*>(p.mask)[at] ? x : -INFINITY;
  const float m = to_float(static_cast<const T*>(p.mask)[at]);
  float t = m * kLog2e;
  if (t == -INFINITY && m != -INFINITY) t = -3.402823466e38f;
  return x + t;
}

// Entry points (flash_attention.cu, decode.cu).
template <class T> bool decode_fits(const AttnParams& p);
template <class T> void launch_decode(const AttnParams& p, int num_sms, cudaStream_t s);

}}  // namespace attnkit::cuda
