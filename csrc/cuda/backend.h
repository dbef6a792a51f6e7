// The CUDA backend's entry points (one per problem kind) and the Backend record that
// attnkit._cuda registers for Device::cuda.
#pragma once
#include "attnkit/backend.h"
#include "attnkit/problems.h"

#include <string>

namespace attnkit { namespace cuda {

void attention(const AttnProblem& p);   // flash_attention.cu (decode.cu for few query rows)
void gemm(const GemmProblem& p);        // gemm.cu (cuBLASLt)
void rows(const RowProblem& p);         // rowwise.cu

int device_sm_count();                  // of the current device, cached per device
void set_cublaslt_path(const std::string& path);  // gemm.cu
std::string cublaslt_status();
// Once per kernel and device: allow smem_bytes of dynamic shared memory; returns how many blocks
// of `threads` threads an SM holds (cached: the launch path makes no attribute calls after that).
int prepare_kernel(const void* kernel, int threads, int smem_bytes);

extern const Backend backend;           // backend.cu

}}  // namespace attnkit::cuda
