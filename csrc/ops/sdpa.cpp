// scaled_dot_product_attention: every check, then one kernel call.
#include <cmath>
#include <new>
#include <string>
#include <vector>

#include "attnkit/ops.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "ops/common.h"

namespace attnkit {

std::string shape_str(const TensorView& t) {
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  if (t.ndim == 1) s += ",";
  return s + ")";
}

namespace {

using ops::require_float;
using ops::require_same_dtype;

void require_dims(const TensorView& t, const char* name, const char* layout) {
  if (t.ndim < 3 || t.ndim > 3 + cpu::kMaxBatchDims)
    throw ValueError(std::string(name) + ": expected a " + layout + " array with 3 to " +
                     std::to_string(3 + cpu::kMaxBatchDims) + " dims, got shape " + shape_str(t));
}

}  // namespace

namespace {
// kv_lengths read through its strides into memory of our own: what the kernel uses is what was
// checked, even if the caller's array changes while the GIL is released.
std::vector<int64_t> read_lengths(const TensorView& kl) {
  const int64_t n = ops::checked_numel(kl.shape, kl.ndim, "kv_lengths");
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = kl.ptr<const int64_t>()[ops::row_offset(kl.shape, kl.strides, kl.ndim, -1, i)];
  return out;
}
}  // namespace

int sdpa_check(const SdpaArgs& a, int64_t* out_shape) {
  const TensorView &q = a.query, &k = a.key, &v = a.value;
  require_float(q, "query");
  require_float(k, "key");
  require_float(v, "value");
  require_same_dtype(k, "key", q, "query");
  require_same_dtype(v, "value", q, "query");
  require_dims(q, "query", "(..., Hq, Lq, E)");
  require_dims(k, "key", "(..., Hk, Lk, E)");
  require_dims(v, "value", "(..., Hk, Lk, Ev)");
  if (k.ndim != q.ndim || v.ndim != q.ndim)
    throw ValueError("key, value: expected as many dims as query " + shape_str(q) + ", got key " + shape_str(k) +
                     " and value " + shape_str(v));
  const int nb = q.ndim - 3;
  for (int i = 0; i < nb; ++i)
    if (k.shape[i] != q.shape[i] || v.shape[i] != q.shape[i])
      throw ValueError("key, value: batch dims must equal query's: query " + shape_str(q) + ", key " + shape_str(k) +
                       ", value " + shape_str(v));
  const int64_t Hq = q.size(-3), E = q.size(-1);
  const int64_t Hk = k.size(-3), Lk = k.size(-2);
  if (k.size(-1) != E)
    throw ValueError("key: expected the last dim (E) to equal query's " + std::to_string(E) + ", got shape " + shape_str(k));
  if (v.size(-3) != Hk || v.size(-2) != Lk)
    throw ValueError("value: expected (..., Hk, Lk, Ev) with Hk=" + std::to_string(Hk) + " and Lk=" + std::to_string(Lk) +
                     " as in key, got shape " + shape_str(v));
  if (a.enable_gqa) {
    if (Hk == 0 ? Hq != 0 : Hq % Hk != 0)
      throw ValueError("enable_gqa: the number of query heads (" + std::to_string(Hq) +
                       ") must be a multiple of the number of key/value heads (" + std::to_string(Hk) + ")");
  } else if (Hq != Hk) {
    throw ValueError("key: expected as many heads as query (" + std::to_string(Hq) + "), got " + std::to_string(Hk) +
                     "; pass enable_gqa=True for grouped-query attention");
  }
  constexpr int64_t kMaxHeadDim = int64_t(1) << 31;
  if (E > kMaxHeadDim || v.size(-1) > kMaxHeadDim)
    throw ValueError("query, value: head dims (E=" + std::to_string(E) + ", Ev=" + std::to_string(v.size(-1)) +
                     ") must be at most 2^31");
  if (a.has_scale && !(std::isfinite(a.scale) && a.scale > 0))
    throw ValueError("scale: expected a finite number > 0, got " + std::to_string(a.scale));

  for (int i = 0; i < q.ndim; ++i) out_shape[i] = q.shape[i];
  out_shape[q.ndim - 1] = v.size(-1);
  ops::checked_numel(q.shape, q.ndim, "query");
  ops::checked_numel(k.shape, k.ndim, "key");
  ops::checked_numel(v.shape, v.ndim, "value");
  ops::checked_numel(out_shape, q.ndim, "output");

  if (a.attn_mask.present) {
    const TensorView& m = a.attn_mask;
    if (m.dtype != DType::boolean && m.dtype != q.dtype)
      throw TypeError(std::string("attn_mask: expected a bool array or a float array of the query dtype (") +
                      dtype_name(q.dtype) + "), got " + dtype_name(m.dtype));
    int64_t target[3 + cpu::kMaxBatchDims], strides[3 + cpu::kMaxBatchDims];
    for (int i = 0; i < q.ndim; ++i) target[i] = q.shape[i];
    target[q.ndim - 1] = Lk;
    TensorView t; t.ndim = q.ndim;
    for (int i = 0; i < q.ndim; ++i) t.shape[i] = target[i];
    ops::broadcast_strides(m, target, q.ndim, strides, "attn_mask", "(..., Hq, Lq, Lk) = " + shape_str(t));
    ops::checked_numel(target, q.ndim, "attn_mask");
  }
  if (a.kv_lengths.present) {
    const TensorView& kl = a.kv_lengths;
    if (kl.dtype != DType::i64) throw TypeError("kv_lengths: expected an integer array");
    bool ok = kl.ndim == nb;
    for (int i = 0; ok && i < nb; ++i) ok = kl.shape[i] == q.shape[i];
    if (!ok) {
      TensorView t; t.ndim = nb;
      for (int i = 0; i < nb; ++i) t.shape[i] = q.shape[i];
      throw ValueError("kv_lengths: expected the batch shape " + shape_str(t) + " of query, got " + shape_str(kl));
    }
    for (int64_t len : read_lengths(kl))
      if (len < 0 || len > Lk)
        throw ValueError("kv_lengths: expected values in [0, Lk=" + std::to_string(Lk) + "], got " + std::to_string(len));
  }
  return q.ndim;
}

void sdpa(const SdpaArgs& a) {
  int64_t out_shape[kMaxDims];
  const int nd = sdpa_check(a, out_shape);
  const TensorView &q = a.query, &k = a.key, &v = a.value;
  ops::require_output(a.out, "out", q.dtype, out_shape, nd);
  if (a.lse.present) ops::require_output(a.lse, "lse", q.dtype, out_shape, nd - 1);
  const int nb = nd - 3;

  cpu::AttnProblem p;
  p.f64 = q.dtype == DType::f64;
  p.q = q.data; p.k = k.data; p.v = v.data; p.out = a.out.data;
  p.lse = a.lse.present ? a.lse.data : nullptr;
  p.B = 1;
  p.nbatch = nb;
  for (int i = 0; i < nb; ++i) {
    p.batch_shape[i] = q.shape[i];
    p.B *= q.shape[i];
    p.q_b[i] = q.strides[i]; p.k_b[i] = k.strides[i]; p.v_b[i] = v.strides[i]; p.o_b[i] = a.out.strides[i];
    if (a.lse.present) p.l_b[i] = a.lse.strides[i];
  }
  p.Hq = q.size(-3); p.Lq = q.size(-2); p.E = q.size(-1);
  p.Hk = k.size(-3); p.Lk = k.size(-2); p.Ev = v.size(-1);
  p.q_h = q.stride(-3); p.q_i = q.stride(-2); p.q_e = q.stride(-1);
  p.k_h = k.stride(-3); p.k_j = k.stride(-2); p.k_e = k.stride(-1);
  p.v_h = v.stride(-3); p.v_j = v.stride(-2); p.v_e = v.stride(-1);
  p.o_h = a.out.stride(-3); p.o_i = a.out.stride(-2); p.o_e = a.out.stride(-1);
  if (a.lse.present) { p.l_h = a.lse.stride(-2); p.l_i = a.lse.stride(-1); }
  p.scale = a.has_scale ? a.scale : (p.E > 0 ? 1.0 / std::sqrt(static_cast<double>(p.E)) : 1.0);
  p.causal = a.causal == CausalAlign::top_left ? 1 : a.causal == CausalAlign::bottom_right ? 2 : 0;
  if (a.attn_mask.present) {
    int64_t target[kMaxDims], strides[kMaxDims];
    for (int i = 0; i < nd; ++i) target[i] = q.shape[i];
    target[nd - 1] = p.Lk;
    ops::broadcast_strides(a.attn_mask, target, nd, strides, "attn_mask", "");
    p.mask = a.attn_mask.data;
    p.mask_bool = a.attn_mask.dtype == DType::boolean;
    for (int i = 0; i < nb; ++i) p.m_b[i] = strides[i];
    p.m_h = strides[nd - 3]; p.m_i = strides[nd - 2]; p.m_j = strides[nd - 1];
  }
  std::vector<int64_t> lengths;
  if (a.kv_lengths.present) {
    lengths = read_lengths(a.kv_lengths);
    for (int64_t len : lengths)
      if (len < 0 || len > p.Lk) throw ValueError("kv_lengths: changed while the call was checked");
    p.kv_len = lengths.data();
  }
  if (p.B == 0 || p.Hq == 0 || p.Lq == 0) return;
  if (cpu::active_kernels().attention(p) != 0) throw std::bad_alloc();
}

}  // namespace attnkit
