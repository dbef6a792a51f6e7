// The part of cuBLASLt (CUDA 12 / 13 ABI) that gemm.cu calls, loaded at run time with dlopen so
// that building attnkit._cuda needs no cuBLAS headers or libraries (the nvidia-cublas wheel is
// 440 MB): the library is found when the first GEMM runs. Values as in cublasLt.h / cublas_api.h.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace attnkit { namespace cuda { namespace lt {

using Status = int;                          // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
using Handle = struct Context*;              // cublasLtHandle_t
using MatmulDesc = struct MatmulDescOpaque*; // cublasLtMatmulDesc_t
using Layout = struct LayoutOpaque*;         // cublasLtMatrixLayout_t
using Preference = struct PrefOpaque*;       // cublasLtMatmulPreference_t

struct Algo { uint64_t data[8]; };            // cublasLtMatmulAlgo_t
struct HeuristicResult {                      // cublasLtMatmulHeuristicResult_t
  Algo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};

enum : int { R_32F = 0, R_16F = 2, R_16BF = 14 };                      // cudaDataType
enum : int { COMPUTE_32F = 68 };                                        // cublasComputeType_t (no TF32)
enum : int { OP_N = 0, OP_T = 1 };                                      // cublasOperation_t
enum : int { DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7, DESC_BIAS_POINTER = 8, DESC_BIAS_DATA_TYPE = 26 };
enum : uint32_t { EPI_DEFAULT = 1, EPI_RELU = 2, EPI_BIAS = 4, EPI_RELU_BIAS = 6, EPI_GELU = 32, EPI_GELU_BIAS = 36 };
enum : int { PREF_MAX_WORKSPACE_BYTES = 1 };

struct Api {
  Status (*Create)(Handle*);
  Status (*MatmulDescCreate)(MatmulDesc*, int compute, int scale_type);
  Status (*MatmulDescSetAttribute)(MatmulDesc, int attr, const void* buf, size_t size);
  Status (*MatmulDescDestroy)(MatmulDesc);
  Status (*MatrixLayoutCreate)(Layout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*MatrixLayoutDestroy)(Layout);
  Status (*MatmulPreferenceCreate)(Preference*);
  Status (*MatmulPreferenceSetAttribute)(Preference, int attr, const void* buf, size_t size);
  Status (*MatmulPreferenceDestroy)(Preference);
  Status (*MatmulAlgoGetHeuristic)(Handle, MatmulDesc, Layout, Layout, Layout, Layout, Preference, int requested,
                                   HeuristicResult* results, int* returned);
  Status (*Matmul)(Handle, MatmulDesc, const void* alpha, const void* A, Layout, const void* B, Layout,
                   const void* beta, const void* C, Layout, void* D, Layout, const Algo*, void* workspace,
                   size_t workspace_size, cudaStream_t);
  const char* (*GetStatusString)(Status);
  size_t (*GetVersion)();
};

}}}  // namespace attnkit::cuda::lt
