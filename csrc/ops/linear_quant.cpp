// Quantized linear weights (attnkit.quantize_linear): checks q and its scales, then the backend
// packs them into the one quantized layout (attnkit/problems.h, PackedWeight). Running them goes
// through linear_prepare_packed / linear_run like any packed weight.
#include <string>

#include "attnkit/backend.h"
#include "attnkit/ops.h"
#include "ops/common.h"

namespace attnkit {

void linear_pack_quantized(const TensorView& q, const TensorView& scale, Quant quant, int64_t group, bool gated,
                           PackedWeight& packed) {
  const Backend& be = backend_for(q.device, "q");
  if (!be.pack_quant) throw TypeError(std::string("q: quantized weights are not supported on ") + device_name(q.device));
  if (q.dtype != DType::i8) throw TypeError(std::string("q: expected an int8 array, got ") + dtype_name(q.dtype));
  if (q.ndim != 2) throw ValueError("q: expected shape (out_features, in_features), got " + shape_str(q));
  ops::require_same_device(scale, "scale", q, "q");
  if (!scale.present || scale.dtype != DType::f32)
    throw TypeError(std::string("scale: expected a float32 array, got ") + (scale.present ? dtype_name(scale.dtype) : "None"));
  const int64_t N = q.shape[0], K = q.shape[1];
  if (gated && N % 2 != 0)
    throw ValueError("q: a gated weight needs an even number of rows [W_gate; W_up], got shape " + shape_str(q));
  // int32 accumulators: |sum_k q x| <= K * 127 * 127 must stay below 2^31
  if (K > 131072) throw ValueError("q: in_features " + std::to_string(K) + " is over the quantized GEMM's limit of 131072");
  QuantSource src;
  src.q = static_cast<const int8_t*>(q.data);
  src.q_n = q.strides[0];
  src.q_k = q.strides[1];
  src.scale = static_cast<const float*>(scale.data);
  if (quant == Quant::int8) {
    if (scale.ndim != 1 || scale.shape[0] != N)
      throw ValueError("scale: expected shape (" + std::to_string(N) + ",) for int8, got " + shape_str(scale));
    src.s_n = scale.strides[0];
    group = 0;
  } else if (quant == Quant::int4) {
    if (group < 32 || group % 32 != 0) throw ValueError("group_size: expected a positive multiple of 32, got " + std::to_string(group));
    const int64_t ng = (K + group - 1) / group;
    if (scale.ndim != 2 || scale.shape[0] != N || scale.shape[1] != ng)
      throw ValueError("scale: expected shape (" + std::to_string(N) + ", " + std::to_string(ng) + ") for int4 with group_size " +
                       std::to_string(group) + ", got " + shape_str(scale));
    src.s_n = scale.strides[0];
    src.s_g = scale.strides[1];
  } else {
    throw ValueError("dtype: expected 'int8' or 'int4'");
  }
  // int4: two values a byte, each must fit 4 bits; int8: symmetric, -128 left out (the AVX2 kernel
  // moves the activation's sign onto q, and -(-128) does not fit)
  const int lo = quant == Quant::int4 ? -8 : -127, hi = quant == Quant::int4 ? 7 : 127;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int v = src.q[n * src.q_n + k * src.q_k];
      if (v < lo || v > hi)
        throw ValueError(std::string("q: ") + (quant == Quant::int4 ? "int4" : "int8") + " values must lie in [" + std::to_string(lo) +
                         ", " + std::to_string(hi) + "], got " + std::to_string(v) + " at (" + std::to_string(n) + ", " +
                         std::to_string(k) + ")");
    }
  packed = PackedWeight();
  packed.dtype = DType::f32;
  packed.device = q.device;
  packed.N = N;
  packed.K = K;
  packed.gated = gated;
  packed.quant = quant;
  packed.group = group;
  be.pack_quant(src, packed);
}

void linear_unpack_quantized(const PackedWeight& weight, const TensorView& q, const TensorView& scale) {
  if (weight.quant == Quant::none) throw TypeError("weight: not a quantized weight");
  const Backend& be = backend_for(weight.device, "weight");
  OutputSpec qs, ss;
  qs.dtype = DType::i8;
  qs.device = ss.device = weight.device;
  qs.ndim = 2;
  qs.shape[0] = weight.N;
  qs.shape[1] = weight.K;
  ss.dtype = DType::f32;
  ss.ndim = weight.quant == Quant::int4 ? 2 : 1;
  ss.shape[0] = weight.N;
  ss.shape[1] = weight.quant == Quant::int4 ? (weight.K + weight.group - 1) / weight.group : 0;
  ops::require_output(q, "q", qs);
  ops::require_output(scale, "scale", ss);
  if (!ops::is_contiguous(q) || !ops::is_contiguous(scale)) throw ValueError("q, scale: expected C-contiguous arrays");
  be.unpack_quant(weight, static_cast<int8_t*>(q.data), static_cast<float*>(scale.data));
}

void linear_quantized_rows(const PackedWeight& weight, const TensorView& ids, const TensorView& out) {
  if (weight.quant == Quant::none) throw TypeError("weight: not a quantized weight");
  if (weight.gated) throw ValueError("weight: a gated (SwiGLU) weight has no rows to look up");
  const Backend& be = backend_for(weight.device, "weight");
  if (!be.quant_rows) throw TypeError(std::string("weight: row lookup is not supported on ") + device_name(weight.device));
  if (ids.dtype != DType::i64 || ids.ndim != 1 || !ops::is_contiguous(ids))
    throw TypeError("ids: expected a contiguous 1-D int64 array");
  ops::require_same_device(ids, "ids", out, "out");
  const int64_t n = ids.shape[0];
  const int64_t* id = static_cast<const int64_t*>(ids.data);
  for (int64_t i = 0; i < n; ++i)
    if (id[i] < 0 || id[i] >= weight.N)
      throw ValueError("ids: expected row indices in [0, " + std::to_string(weight.N) + "), got " + std::to_string(id[i]));
  OutputSpec os;
  os.dtype = DType::f32;
  os.device = weight.device;
  os.ndim = 2;
  os.shape[0] = n;
  os.shape[1] = weight.K;
  ops::require_output(out, "out", os);
  if (!ops::is_contiguous(out)) throw ValueError("out: expected a C-contiguous array");
  if (n > 0 && weight.K > 0) be.quant_rows(weight, id, n, static_cast<float*>(out.data));
}

}  // namespace attnkit
