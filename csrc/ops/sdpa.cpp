// scaled_dot_product_attention: every check once, the problem built once, then the backend.
#include <cmath>
#include <string>
#include <vector>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "ops/common.h"

namespace attnkit {
namespace {

void require_dims(const TensorView& t, const char* name, const char* layout) {
  if (t.ndim < 3 || t.ndim > 3 + kMaxBatchDims)
    throw ValueError(std::string(name) + ": expected a " + layout + " array with 3 to " +
                     std::to_string(3 + kMaxBatchDims) + " dims, got shape " + shape_str(t));
}

// kv_lengths read through its strides into memory of our own: what the kernel uses is what was
// checked, even if the caller's array changes while the GIL is released. Only the dims it does not
// broadcast (size > 1, stride != 0) are copied, so a zero-stride array over a huge batch takes one
// entry; `strides` gets the copy's stride per dim (row-major over those dims, 0 on the others).
std::vector<int64_t> read_lengths(const TensorView& kl, int64_t* strides) {
  if (ops::checked_numel(kl.shape, kl.ndim, "kv_lengths") == 0) return {};
  int64_t kept[kMaxDims];  // kl's shape with the broadcast dims cut to 1
  int64_t n = 1;
  for (int d = kl.ndim - 1; d >= 0; --d) {
    kept[d] = kl.strides[d] == 0 ? 1 : kl.shape[d];
    strides[d] = kept[d] == 1 ? 0 : n;
    n *= kept[d];
  }
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = kl.ptr<const int64_t>()[ops::row_offset(kept, kl.strides, kl.ndim, -1, i)];
  return out;
}

void check_inputs(const Backend& be, const SdpaArgs& a) {
  const TensorView &q = a.query, &k = a.key, &v = a.value;
  ops::require_float(be, q, "query");
  ops::require_float(be, k, "key");
  ops::require_float(be, v, "value");
  ops::require_same_dtype(k, "key", q, "query");
  ops::require_same_dtype(v, "value", q, "query");
  ops::require_same_device(k, "key", q, "query");
  ops::require_same_device(v, "value", q, "query");
  ops::require_same_device(a.attn_mask, "attn_mask", q, "query");
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
  ops::checked_numel(q.shape, q.ndim, "query");
  ops::checked_numel(k.shape, k.ndim, "key");
  ops::checked_numel(v.shape, v.ndim, "value");
}

}  // namespace

void sdpa_prepare(const SdpaArgs& a, SdpaPlan& plan) {
  const TensorView &q = a.query, &k = a.key, &v = a.value;
  const Backend& be = backend_for(q.device, "query");
  check_inputs(be, a);
  const int nd = q.ndim, nb = nd - 3;

  OutputSpec& out = plan.out;
  out.dtype = q.dtype;
  out.device = q.device;
  out.ndim = nd;
  for (int i = 0; i < nd; ++i) out.shape[i] = q.shape[i];
  out.shape[nd - 1] = v.size(-1);
  ops::checked_numel(out.shape, nd, "output");
  plan.lse = out;
  plan.lse.ndim = nd - 1;

  AttnProblem& p = plan.problem;
  p = AttnProblem();
  p.dtype = q.dtype;
  p.q = q.data; p.k = k.data; p.v = v.data;
  p.B = 1;
  p.nbatch = nb;
  for (int i = 0; i < nb; ++i) {
    p.batch_shape[i] = q.shape[i];
    p.B *= q.shape[i];
    p.q_b[i] = q.strides[i]; p.k_b[i] = k.strides[i]; p.v_b[i] = v.strides[i];
  }
  p.Hq = q.size(-3); p.Lq = q.size(-2); p.E = q.size(-1);
  p.Hk = k.size(-3); p.Lk = k.size(-2); p.Ev = v.size(-1);
  p.q_h = q.stride(-3); p.q_i = q.stride(-2); p.q_e = q.stride(-1);
  p.k_h = k.stride(-3); p.k_j = k.stride(-2); p.k_e = k.stride(-1);
  p.v_h = v.stride(-3); p.v_j = v.stride(-2); p.v_e = v.stride(-1);
  p.scale = a.has_scale ? a.scale : (p.E > 0 ? 1.0 / std::sqrt(static_cast<double>(p.E)) : 1.0);
  p.causal = a.causal;
  p.stream = a.stream;
  if (a.window != 0) {
    if (a.window < 0) throw ValueError("window: expected a positive number of keys, got " + std::to_string(a.window));
    if (a.causal == CausalAlign::none)
      throw ValueError("window: a sliding window needs is_causal=True (keys j with 0 <= i - j < window)");
    if (q.device != Device::cpu)
      throw TypeError(std::string("window: sliding-window attention is not supported on ") + device_name(q.device));
    p.window = a.window;
  }

  if (a.attn_mask.present) {
    const TensorView& m = a.attn_mask;
    if (m.dtype != DType::boolean && m.dtype != q.dtype)
      throw TypeError(std::string("attn_mask: expected a bool array or a float array of the query dtype (") +
                      dtype_name(q.dtype) + "), got " + dtype_name(m.dtype));
    int64_t target[kMaxDims], strides[kMaxDims];
    TensorView t;
    t.ndim = nd;
    for (int i = 0; i < nd; ++i) t.shape[i] = target[i] = q.shape[i];
    t.shape[nd - 1] = target[nd - 1] = p.Lk;
    ops::broadcast_strides(m, target, nd, strides, "attn_mask", "(..., Hq, Lq, Lk) = " + shape_str(t));
    ops::checked_numel(target, nd, "attn_mask");
    p.mask = m.data;
    p.mask_bool = m.dtype == DType::boolean;
    for (int i = 0; i < nb; ++i) p.m_b[i] = strides[i];
    p.m_h = strides[nd - 3]; p.m_i = strides[nd - 2]; p.m_j = strides[nd - 1];
  }
  plan.kv_lengths.clear();
  if (a.kv_lengths.present) {
    const TensorView& kl = a.kv_lengths;
    if (kl.dtype != DType::i64) throw TypeError("kv_lengths: expected an integer array");
    if (kl.device != Device::cpu) throw TypeError("kv_lengths: expected a host (NumPy) array");
    bool ok = kl.ndim == nb;
    for (int i = 0; ok && i < nb; ++i) ok = kl.shape[i] == q.shape[i];
    if (!ok) {
      TensorView t;
      t.ndim = nb;
      for (int i = 0; i < nb; ++i) t.shape[i] = q.shape[i];
      throw ValueError("kv_lengths: expected the batch shape " + shape_str(t) + " of query, got " + shape_str(kl));
    }
    plan.kv_lengths = read_lengths(kl, p.len_b);
    for (int64_t len : plan.kv_lengths)
      if (len < 0 || len > p.Lk)
        throw ValueError("kv_lengths: expected values in [0, Lk=" + std::to_string(p.Lk) + "], got " + std::to_string(len));
    p.kv_len = plan.kv_lengths.data();
    p.kv_len_count = static_cast<int64_t>(plan.kv_lengths.size());
  }
}

void sdpa_run(SdpaPlan& plan, const TensorView& out, const TensorView& lse) {
  AttnProblem& p = plan.problem;
  ops::require_output(out, "out", plan.out);
  if (lse.present) ops::require_output(lse, "lse", plan.lse);
  const int nd = plan.out.ndim, nb = nd - 3;
  p.out = out.data;
  for (int i = 0; i < nb; ++i) p.o_b[i] = out.strides[i];
  p.o_h = out.stride(-3); p.o_i = out.stride(-2); p.o_e = out.stride(-1);
  p.lse = lse.present ? lse.data : nullptr;
  if (lse.present) {
    for (int i = 0; i < nb; ++i) p.l_b[i] = lse.strides[i];
    p.l_h = lse.stride(-2); p.l_i = lse.stride(-1);
  }
  if (p.B == 0 || p.Hq == 0 || p.Lq == 0) return;
  backend_for(plan.out.device, "query").attention(p);
}

}  // namespace attnkit
