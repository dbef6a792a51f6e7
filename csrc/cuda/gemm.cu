// linear on the GPU: out (M, N) = act(A (M, K) @ W (N, K)^T + bias) through cuBLASLt, with the
// bias and tanh-GELU in its epilogue (relu and erf-GELU run after it, in place). Compute type
// 32F everywhere: fp32 stays fp32 (no TF32), fp16/bf16 accumulate in fp32.
//
// cuBLAS is column-major, the output row-major: we ask for out^T (N x M) = W (N x K) * A^T.
// A whose rows are equally spaced with a contiguous last dim (any x[..., :K] view), and W with
// either dim contiguous, are read in place; anything else is first gathered into a contiguous
// copy on the device (stream-ordered scratch memory).
#include <dlfcn.h>

#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "cuda/backend.h"
#include "cuda/common.cuh"
#include "cuda/cublaslt_api.h"

namespace attnkit { namespace cuda {

// ---- the library --------------------------------------------------------------------------
namespace {

std::mutex g_lt_mutex;
std::string g_lt_path;            // set from Python (the nvidia-cublas wheel), tried first
const lt::Api* g_api = nullptr;
std::string g_lt_error;

template <class F> void sym(void* lib, F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (!f) throw std::runtime_error(std::string("cuBLASLt: symbol ") + name + " not found");
}

const lt::Api& api() {
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  if (g_api) return *g_api;
  std::string tried;
  void* lib = nullptr;
  const char* env = std::getenv("ATTNKIT_CUBLASLT");
  for (const std::string& name : {std::string(env ? env : ""), g_lt_path, std::string("libcublasLt.so.13"),
                                  std::string("libcublasLt.so.12")}) {
    if (name.empty()) continue;
    lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    tried += "\n  " + name + ": " + dlerror();
  }
  if (!lib)
    throw std::runtime_error("attnkit.linear on the GPU needs cuBLASLt (CUDA 12 or 13): install it with "
                             "'pip install nvidia-cublas' (or put libcublasLt.so on the loader path, or set "
                             "ATTNKIT_CUBLASLT to its file). Tried:" + tried);
  static lt::Api a;
  sym(lib, a.Create, "cublasLtCreate");
  sym(lib, a.MatmulDescCreate, "cublasLtMatmulDescCreate");
  sym(lib, a.MatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute");
  sym(lib, a.MatmulDescDestroy, "cublasLtMatmulDescDestroy");
  sym(lib, a.MatrixLayoutCreate, "cublasLtMatrixLayoutCreate");
  sym(lib, a.MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy");
  sym(lib, a.MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate");
  sym(lib, a.MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
  sym(lib, a.MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
  sym(lib, a.MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(lib, a.Matmul, "cublasLtMatmul");
  sym(lib, a.GetStatusString, "cublasLtGetStatusString");
  sym(lib, a.GetVersion, "cublasLtGetVersion");
  g_api = &a;
  return a;
}

void lt_check(lt::Status st, const char* what) {
  if (st == 0) return;
  if (st == 3) throw std::bad_alloc();   // CUBLAS_STATUS_ALLOC_FAILED
  throw std::runtime_error(std::string("cuBLASLt ") + what + " failed: " + (g_api ? g_api->GetStatusString(st) : "?"));
}

int current_device() {
  int d = 0;
  AK_CUDA(cudaGetDevice(&d));
  return d;
}

lt::Handle handle_for_device() {
  static std::mutex m;
  static std::map<int, lt::Handle> handles;
  const lt::Api& a = api();
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(m);
  auto it = handles.find(dev);
  if (it != handles.end()) return it->second;
  lt::Handle h = nullptr;
  lt_check(a.Create(&h), "cublasLtCreate");
  handles[dev] = h;
  return h;
}

// RAII for the descriptors of one call.
struct Descs {
  const lt::Api& a;
  lt::MatmulDesc op = nullptr;
  lt::Layout la = nullptr, lb = nullptr, lc = nullptr;
  lt::Preference pref = nullptr;
  explicit Descs(const lt::Api& api_) : a(api_) {}
  ~Descs() {
    if (pref) a.MatmulPreferenceDestroy(pref);
    if (lc) a.MatrixLayoutDestroy(lc);
    if (lb) a.MatrixLayoutDestroy(lb);
    if (la) a.MatrixLayoutDestroy(la);
    if (op) a.MatmulDescDestroy(op);
  }
};

constexpr size_t kWorkspace = size_t(32) << 20;

// Heuristic choice per shape, cached (the query costs tens of microseconds).
using AlgoKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, uint32_t, int>;
std::mutex g_algo_mutex;
std::map<AlgoKey, lt::HeuristicResult> g_algos;

// ---- gathers and the K == 0 fill ----------------------------------------------------------
struct Gather {
  const void* src;
  void* dst;
  int nd;                              // dims of the row index
  int64_t shape[kMaxDims], strides[kMaxDims];
  int64_t cols, col_stride, rows;
};

template <class T>
__global__ void gather_rows(const Gather g) {
  const int64_t total = g.rows * g.cols;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total; idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = idx / g.cols, c = idx % g.cols, off = 0;
    for (int d = g.nd - 1; d >= 0; --d) {
      off += (r % g.shape[d]) * g.strides[d];
      r /= g.shape[d];
    }
    static_cast<T*>(g.dst)[idx] = static_cast<const T*>(g.src)[off + c * g.col_stride];
  }
}

template <class T>
__global__ void fill_bias(T* out, int64_t M, int64_t N, const T* bias, int64_t bias_s, int act) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < M * N; idx += int64_t(gridDim.x) * blockDim.x) {
    float v = bias ? to_float(bias[(idx % N) * bias_s]) : 0.f;
    if (act == int(Activation::relu)) v = v < 0.f ? 0.f : v;
    else if (act == int(Activation::gelu)) v = 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    else if (act == int(Activation::gelu_tanh)) v = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    out[idx] = from_float<T>(v);
  }
}

unsigned grid_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

template <class T>
void gather(const Gather& g, cudaStream_t s) {
  gather_rows<T><<<grid_for(g.rows * g.cols), 256, 0, s>>>(g);
  AK_LAUNCHED("gather_rows");
}

void gather_dispatch(DType dt, const Gather& g, cudaStream_t s) {
  switch (dt) {
    case DType::f32: gather<float>(g, s); break;
    case DType::f16: gather<__half>(g, s); break;
    default: gather<__nv_bfloat16>(g, s); break;
  }
}

int lt_type(DType d) { return d == DType::f32 ? lt::R_32F : d == DType::f16 ? lt::R_16F : lt::R_16BF; }

// The rows of A as one stride (rs, any sign), or false when they are not equally spaced.
bool uniform_rows(const GemmProblem& p, int64_t& rs) {
  return even_row_stride(p.row_shape, p.row_strides, p.nrow_dims, p.K, &rs);
}

}  // namespace

void set_cublaslt_path(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_lt_mutex);
  g_lt_path = path;
}

std::string cublaslt_status() {
  try {
    const lt::Api& a = api();
    return "cuBLASLt " + std::to_string(a.GetVersion());
  } catch (const std::exception& e) {
    return std::string("unavailable: ") + e.what();
  }
}

void gemm(const GemmProblem& p) {
  if (p.M == 0 || p.N == 0) return;
  cudaStream_t s = stream_of(p.stream);
  const DType dt = p.dtype;
  const int esz = dtype_size(dt);
  if (p.K == 0) {
    auto go = [&](auto tag) {
      using T = decltype(tag);
      fill_bias<T><<<grid_for(p.M * p.N), 256, 0, s>>>(static_cast<T*>(p.out), p.M, p.N, static_cast<const T*>(p.bias),
                                                      p.bias_s, int(p.act));
    };
    if (dt == DType::f32) go(float()); else if (dt == DType::f16) go(__half()); else go(__nv_bfloat16());
    AK_LAUNCHED("fill_bias");
    return;
  }
  const lt::Api& a = api();
  lt::Handle handle = handle_for_device();

  // A^T as cuBLAS's B operand: K x M column-major.
  const void* A = p.a;
  int64_t rs = 0, lda = 0;
  int opb = lt::OP_N;
  StreamBuffer a_copy(0, s);
  const bool uni = uniform_rows(p, rs);
  if (uni && p.a_k == 1 && (p.M == 1 || rs >= p.K)) {
    lda = p.M == 1 ? p.K : rs;
  } else if (uni && p.M > 1 && rs == 1 && p.a_k >= p.M) {
    opb = lt::OP_T;          // A stored column-major (M x K, ld a_k)
    lda = p.a_k;
  } else {
    a_copy.allocate(size_t(p.M) * p.K * esz);
    Gather g;
    std::memset(&g, 0, sizeof(g));
    g.src = p.a; g.dst = a_copy.ptr; g.nd = p.nrow_dims; g.rows = p.M; g.cols = p.K; g.col_stride = p.a_k;
    for (int d = 0; d < p.nrow_dims; ++d) { g.shape[d] = p.row_shape[d]; g.strides[d] = p.row_strides[d]; }
    gather_dispatch(dt, g, s);
    A = a_copy.ptr;
    lda = p.K;
  }
  // W as cuBLAS's A operand: N x K.
  const void* W = p.w;
  int opa;
  int64_t ldw;
  StreamBuffer w_copy(0, s);
  if (p.w_k == 1 && (p.N == 1 || p.w_n >= p.K)) { opa = lt::OP_T; ldw = p.N == 1 ? p.K : p.w_n; }
  else if (p.w_n == 1 && (p.K == 1 || p.w_k >= p.N)) { opa = lt::OP_N; ldw = p.K == 1 ? p.N : p.w_k; }
  else {
    w_copy.allocate(size_t(p.N) * p.K * esz);
    Gather g;
    std::memset(&g, 0, sizeof(g));
    g.src = p.w; g.dst = w_copy.ptr; g.nd = 1; g.shape[0] = p.N; g.strides[0] = p.w_n;
    g.rows = p.N; g.cols = p.K; g.col_stride = p.w_k;
    gather_dispatch(dt, g, s);
    W = w_copy.ptr; opa = lt::OP_T; ldw = p.K;
  }
  // bias: contiguous for the epilogue
  const void* bias = p.bias;
  StreamBuffer b_copy(0, s);
  if (bias && p.bias_s != 1 && p.N > 1) {
    b_copy.allocate(size_t(p.N) * esz);
    Gather g;
    std::memset(&g, 0, sizeof(g));
    g.src = p.bias; g.dst = b_copy.ptr; g.nd = 1; g.shape[0] = p.N; g.strides[0] = p.bias_s; g.rows = p.N; g.cols = 1;
    gather_dispatch(dt, g, s);
    bias = b_copy.ptr;
  }
  // relu runs after the product (with erf-GELU, below): cuBLASLt's ReLU epilogue is not known to
  // keep a NaN a NaN, and relu(NaN) must be NaN as on the CPU.
  uint32_t epi = bias ? lt::EPI_BIAS : lt::EPI_DEFAULT;
  if (p.act == Activation::gelu_tanh) epi = bias ? lt::EPI_GELU_BIAS : lt::EPI_GELU;

  const int ty = lt_type(dt);
  Descs d(a);
  lt_check(a.MatmulDescCreate(&d.op, lt::COMPUTE_32F, lt::R_32F), "MatmulDescCreate");
  lt_check(a.MatmulDescSetAttribute(d.op, lt::DESC_TRANSA, &opa, sizeof(opa)), "set TRANSA");
  lt_check(a.MatmulDescSetAttribute(d.op, lt::DESC_TRANSB, &opb, sizeof(opb)), "set TRANSB");
  lt_check(a.MatmulDescSetAttribute(d.op, lt::DESC_EPILOGUE, &epi, sizeof(epi)), "set EPILOGUE");
  if (bias) {
    lt_check(a.MatmulDescSetAttribute(d.op, lt::DESC_BIAS_POINTER, &bias, sizeof(bias)), "set BIAS_POINTER");
    lt_check(a.MatmulDescSetAttribute(d.op, lt::DESC_BIAS_DATA_TYPE, &ty, sizeof(ty)), "set BIAS_DATA_TYPE");
  }
  // op(first) = W: N x K; op(second) = A^T: K x M; out^T: N x M, ld N.
  lt_check(opa == lt::OP_T ? a.MatrixLayoutCreate(&d.la, ty, p.K, p.N, ldw) : a.MatrixLayoutCreate(&d.la, ty, p.N, p.K, ldw),
           "layout W");
  lt_check(opb == lt::OP_N ? a.MatrixLayoutCreate(&d.lb, ty, p.K, p.M, lda) : a.MatrixLayoutCreate(&d.lb, ty, p.M, p.K, lda),
           "layout A");
  lt_check(a.MatrixLayoutCreate(&d.lc, ty, p.N, p.M, p.N), "layout out");

  const AlgoKey key{current_device(), ty, p.M, p.N, p.K, lda, ldw, opa, opb, epi,
                    int((reinterpret_cast<uintptr_t>(A) | reinterpret_cast<uintptr_t>(W) | reinterpret_cast<uintptr_t>(p.out) |
                         reinterpret_cast<uintptr_t>(bias)) & 15)};
  lt::HeuristicResult best;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(g_algo_mutex);
    auto it = g_algos.find(key);
    if (it != g_algos.end()) { best = it->second; cached = true; }
  }
  if (!cached) {
    lt_check(a.MatmulPreferenceCreate(&d.pref), "PreferenceCreate");
    const uint64_t ws = kWorkspace;
    lt_check(a.MatmulPreferenceSetAttribute(d.pref, lt::PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)), "set workspace");
    int returned = 0;
    lt_check(a.MatmulAlgoGetHeuristic(handle, d.op, d.la, d.lb, d.lc, d.lc, d.pref, 1, &best, &returned), "AlgoGetHeuristic");
    if (returned < 1) throw std::runtime_error("cuBLASLt found no algorithm for this linear (M, N, K, layouts)");
    std::lock_guard<std::mutex> lock(g_algo_mutex);
    g_algos[key] = best;
  }
  StreamBuffer workspace(best.workspaceSize, s);
  const float alpha = 1.f, beta = 0.f;
  lt_check(a.Matmul(handle, d.op, &alpha, W, d.la, A, d.lb, &beta, p.out, d.lc, p.out, d.lc, &best.algo, workspace.ptr,
                    best.workspaceSize, s),
           "Matmul");
  if (p.act == Activation::gelu || p.act == Activation::relu) {
    RowProblem r;
    r.op = RowOp::activation;
    r.dtype = dt;
    r.act = p.act;
    r.ndim = 2;
    r.axis = 1;
    r.shape[0] = p.M; r.shape[1] = p.N;
    r.rows = p.M; r.n = p.N;
    r.x.data = p.out; r.x.strides[0] = p.N; r.x.strides[1] = 1;
    r.out = r.x;
    r.stream = p.stream;
    rows(r);
  }
}

}}  // namespace attnkit::cuda
