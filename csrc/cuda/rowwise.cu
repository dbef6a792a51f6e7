// Row-wise ops on the GPU: masked softmax (any axis), layer_norm with a fused residual add and
// an optional sum output, activations. One warp per row, four rows per block; every operand is
// read through its own strides (a broadcast mask has stride 0), statistics are fp32.
#include <cstring>

#include "cuda/backend.h"
#include "cuda/common.cuh"

namespace attnkit { namespace cuda {

namespace {

constexpr int kRowWarps = 4;

struct RowParams {
  int op;                                  // RowOp
  int act;                                 // Activation
  int ndim, axis;
  int64_t shape[kMaxDims];
  int64_t rows, n;
  const void* x; void* out; const void* residual; void* sum; const unsigned char* mask;
  int64_t xs[kMaxDims], os[kMaxDims], rs[kMaxDims], ss[kMaxDims], ms[kMaxDims];
  const void* weight; const void* bias;
  int64_t weight_s, bias_s;
  float eps;
};

// Offsets of row `row` (every dim but the axis, row-major) for the five operands.
struct RowOffsets { int64_t x, o, r, s, m; };

__device__ __forceinline__ RowOffsets row_offsets(const RowParams& p, int64_t row) {
  RowOffsets o = {0, 0, 0, 0, 0};
  for (int d = p.ndim - 1; d >= 0; --d) {
    if (d == p.axis) continue;
    const int64_t i = row % p.shape[d];
    row /= p.shape[d];
    o.x += i * p.xs[d]; o.o += i * p.os[d]; o.r += i * p.rs[d]; o.s += i * p.ss[d]; o.m += i * p.ms[d];
  }
  return o;
}

__device__ __forceinline__ float activate(float x, int act) {
  switch (act) {
    case int(Activation::relu): return x < 0.f ? 0.f : x;   // NaN stays NaN
    case int(Activation::gelu): return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case int(Activation::gelu_tanh): {
      const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.f + tanhf(u));
    }
    default: return x;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int w = 16; w >= 1; w >>= 1) v += __shfl_xor_sync(0xffffffffu, v, w);
  return v;
}

template <class T>
__global__ void __launch_bounds__(kRowWarps * 32) rows_kernel(const RowParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (row >= p.rows) return;
  const RowOffsets off = row_offsets(p, row);
  const int a = p.axis;
  const T* x = static_cast<const T*>(p.x) + off.x;
  T* out = static_cast<T*>(p.out) + off.o;
  const int64_t xa = p.xs[a], oa = p.os[a];

  if (p.op == int(RowOp::activation)) {
    for (int64_t j = lane; j < p.n; j += 32) out[j * oa] = from_float<T>(activate(to_float(x[j * xa]), p.act));
    return;
  }

  if (p.op == int(RowOp::softmax)) {
    const unsigned char* mask = p.mask ? p.mask + off.m : nullptr;
    const int64_t ma = p.ms[a];
    float m = -INFINITY, l = 0.f;               // this lane's running max and sum
    bool nan = false;                           // a visible NaN: the whole row is NaN (as in the oracle)
    for (int64_t j = lane; j < p.n; j += 32) {
      if (mask && !mask[j * ma]) continue;
      const float v = to_float(x[j * xa]);
      nan |= v != v;
      if (v > m) { l = l * expf(m - v) + 1.f; m = v; }
      else l += expf(v - m);
    }
    if (__any_sync(0xffffffffu, nan)) {
      for (int64_t j = lane; j < p.n; j += 32) out[j * oa] = from_float<T>(NAN);
      return;
    }
    float M = m;
#pragma unroll
    for (int w = 16; w >= 1; w >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, w));
    const float L = warp_sum(m == -INFINITY ? 0.f : l * expf(m - M));
    const float inv = L > 0.f ? 1.f / L : 0.f;
    for (int64_t j = lane; j < p.n; j += 32) {
      const bool keep = !mask || mask[j * ma];
      out[j * oa] = from_float<T>(keep && L > 0.f ? expf(to_float(x[j * xa]) - M) * inv : 0.f);
    }
    return;
  }

  // layer_norm of s = x + residual over the row
  const T* res = p.residual ? static_cast<const T*>(p.residual) + off.r : nullptr;
  T* sum = p.sum ? static_cast<T*>(p.sum) + off.s : nullptr;
  const int64_t ra = p.rs[a], sa = p.ss[a];
  auto value = [&](int64_t j) {
    float v = to_float(x[j * xa]);
    if (res) v = to_float(from_float<T>(v + to_float(res[j * ra])));   // the sum as stored in T
    return v;
  };
  float acc = 0.f;
  for (int64_t j = lane; j < p.n; j += 32) {
    const float v = value(j);
    if (sum) sum[j * sa] = from_float<T>(v);
    acc += v;
  }
  const float mean = warp_sum(acc) / static_cast<float>(p.n);
  float sq = 0.f;
  for (int64_t j = lane; j < p.n; j += 32) {
    const float d = value(j) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(warp_sum(sq) / static_cast<float>(p.n) + p.eps);
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  for (int64_t j = lane; j < p.n; j += 32) {
    float y = (value(j) - mean) * rstd;
    if (w) y *= to_float(w[j * p.weight_s]);
    if (bias) y += to_float(bias[j * p.bias_s]);
    out[j * oa] = from_float<T>(y);
  }
}

template <class T>
void launch_rows(const RowParams& p, cudaStream_t s) {
  const int64_t blocks = (p.rows + kRowWarps - 1) / kRowWarps;
  if (blocks > (int64_t(1) << 31) - 1) throw ValueError("x: too many rows for one CUDA launch");
  rows_kernel<T><<<static_cast<unsigned>(blocks), kRowWarps * 32, 0, s>>>(p);
  AK_LAUNCHED("rows_kernel");
}

}  // namespace

void rows(const RowProblem& pr) {
  if (pr.rows == 0 || pr.n == 0) return;
  RowParams p;
  std::memset(&p, 0, sizeof(p));
  p.op = int(pr.op);
  p.act = int(pr.act);
  p.ndim = pr.ndim;
  p.axis = pr.axis;
  p.rows = pr.rows;
  p.n = pr.n;
  for (int i = 0; i < pr.ndim; ++i) {
    p.shape[i] = pr.shape[i];
    p.xs[i] = pr.x.strides[i]; p.os[i] = pr.out.strides[i]; p.rs[i] = pr.residual.strides[i];
    p.ss[i] = pr.sum.strides[i]; p.ms[i] = pr.mask.strides[i];
  }
  p.x = pr.x.data; p.out = pr.out.data; p.residual = pr.residual.data; p.sum = pr.sum.data;
  p.mask = static_cast<const unsigned char*>(pr.mask.data);
  p.weight = pr.weight; p.bias = pr.bias; p.weight_s = pr.weight_s; p.bias_s = pr.bias_s;
  p.eps = static_cast<float>(pr.eps);
  cudaStream_t s = stream_of(pr.stream);
  switch (pr.dtype) {
    case DType::f32: launch_rows<float>(p, s); break;
    case DType::f16: launch_rows<__half>(p, s); break;
    case DType::bf16: launch_rows<__nv_bfloat16>(p, s); break;
    default: throw TypeError(std::string("x: the cuda backend has no row-wise ops for ") + dtype_name(pr.dtype));
  }
}

}}  // namespace attnkit::cuda
