// The door between the ops and the devices. An op checks its arguments, builds one problem
// descriptor and calls the backend of the device its arrays live on. A backend runs the
// problem (or throws std::bad_alloc, or a std::runtime_error for a device failure); it never
// validates arguments.
#pragma once
#include "attnkit/problems.h"

namespace attnkit {

struct Backend {
  const char* name;                          // "cpu", "cuda"
  bool (*supports)(DType dtype);             // element types of attention / gemm / rows operands
  void (*attention)(const AttnProblem& p);
  void (*gemm)(const GemmProblem& p);
  void (*rows)(const RowProblem& p);
  // Prepacked weights (optional; null where the backend has none): the layout tag in force
  // now, and packing p's W (strided, or another layout's PackedWeight) into dst, whose N, K and
  // dtype are set; pack fills layout, panel_cols, depth_block, data and bytes.
  int (*weight_layout)();
  void (*pack)(const GemmProblem& p, PackedWeight& dst);
  void (*unpack)(const PackedWeight& w, void* dst);  // W (N, K), row-major, of w.dtype
  void (*rope)(const RopeProblem& p);                // optional; null: rotary embedding not supported
  // Quantized weights (optional): pack src into dst (N, K, quant, group, gated set; the layout of
  // PackedWeight, the same on every path); unpack gives W's dequantized values (N, K) float32.
  // gemm runs a problem whose packed weight is quantized (x float32 or bfloat16).
  void (*pack_quant)(const QuantSource& src, PackedWeight& dst);
  void (*unpack_quant)(const PackedWeight& w, int8_t* q, float* scale);  // q (N, K), scale (N) or (N, K / group)
  // rows ids[0, n) of W dequantized into out (n, K) float32: a tied embedding read from its quantized head
  void (*quant_rows)(const PackedWeight& w, const int64_t* ids, int64_t n, float* out);
};

// The backends, defined in csrc/cpu and csrc/cuda.
const Backend& cpu_backend();
const Backend& cuda_backend();

// Each compiled module registers the backends it carries (attnkit._core: cpu; attnkit._cuda:
// cuda) when it is imported.
void register_backend(Device device, const Backend* backend);

// The backend for `device`; TypeError naming `what` if this module has none for it.
const Backend& backend_for(Device device, const char* what);

}  // namespace attnkit
