// The CUDA backend record: which element types it runs, and its three entry points. A problem
// carries its dtype; each entry point switches on it once (one case per dtype).
#include <map>
#include <mutex>

#include "attnkit/runtime.h"
#include "cuda/backend.h"
#include "cuda/common.cuh"

namespace attnkit { namespace cuda {

namespace {
// float64 is not offered on the GPU (consumer and datacenter GPUs alike run it far below the
// fp32 rate, and the CPU backend has it): ops raise TypeError naming the supported types.
bool supports(DType d) { return d == DType::f32 || d == DType::f16 || d == DType::bf16; }
}  // namespace

int device_sm_count() {
  static std::mutex m;
  static std::map<int, int> counts;
  int dev = 0;
  AK_CUDA(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(m);
  auto it = counts.find(dev);
  if (it != counts.end()) return it->second;
  int n = 0;
  AK_CUDA(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  counts[dev] = n;
  return n;
}

int prepare_kernel(const void* kernel, int threads, int smem_bytes) {
  static std::mutex m;
  static std::map<std::pair<const void*, int>, int> blocks;   // (kernel, device) -> blocks per SM
  int dev = 0;
  AK_CUDA(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(m);
  auto it = blocks.find({kernel, dev});
  if (it != blocks.end()) return it->second;
  AK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  int n = 0;
  AK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, static_cast<size_t>(smem_bytes)));
  blocks[{kernel, dev}] = n;
  return n;
}

const Backend backend = {"cuda", &supports, &attention, &gemm, &rows};

}  // namespace cuda

// The C++ API's doors to this backend (attnkit/backend.h, attnkit/runtime.h).
const Backend& cuda_backend() { return cuda::backend; }
void set_cublaslt_path(const std::string& path) { cuda::set_cublaslt_path(path); }
std::string cublaslt_status() { return cuda::cublaslt_status(); }

}  // namespace attnkit
