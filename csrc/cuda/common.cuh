// Shared pieces of the CUDA backend: error checks, element conversions, the batch-offset helper.
// Kernels assume a valid problem (csrc/ops checked it); these helpers only turn device failures
// into exceptions (std::bad_alloc for out-of-memory, std::runtime_error otherwise).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>

#include "attnkit/problems.h"

namespace attnkit { namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  if (e == cudaErrorMemoryAllocation) { (void)cudaGetLastError(); throw std::bad_alloc(); }
  throw std::runtime_error(std::string("attnkit CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ")");
}
#define AK_CUDA(call) ::attnkit::cuda::check((call), #call)
#define AK_LAUNCHED(name) ::attnkit::cuda::check(cudaGetLastError(), name)

inline cudaStream_t stream_of(void* s) { return static_cast<cudaStream_t>(s); }

// Device memory ordered on a stream (cudaMallocAsync / cudaFreeAsync): freed when the owner
// goes out of scope, after the work queued on the stream.
struct StreamBuffer {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  StreamBuffer(size_t bytes, cudaStream_t s) : stream(s) {
    if (bytes) AK_CUDA(cudaMallocAsync(&ptr, bytes, s));
  }
  ~StreamBuffer() { if (ptr) (void)cudaFreeAsync(ptr, stream); }
  void allocate(size_t bytes) {   // for a buffer constructed empty
    if (bytes) AK_CUDA(cudaMallocAsync(&ptr, bytes, stream));
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;
  template <class T> T* as() const { return static_cast<T*>(ptr); }
};

// ---- element conversions --------------------------------------------------------------------
template <class T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Offset of flat batch index b through row-major batch dims with their strides.
__device__ __forceinline__ int64_t batch_offset(int64_t b, int nbatch, const int64_t* shape, const int64_t* strides) {
  int64_t off = 0;
  for (int d = nbatch - 1; d >= 0; --d) {
    const int64_t s = shape[d];
    off += (b % s) * strides[d];
    b /= s;
  }
  return off;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}}  // namespace attnkit::cuda
