// Quantized linear on the CPU (not per ISA): the packing into PackedWeight's quantized layout
// (quant_pack.cpp, plain C++: the layout is the same on every path) and the table of the per-ISA
// quantized GEMMs (qkernels.cpp, compiled once per level by cmake/isa.cmake).
#pragma once
#include <cstddef>

#include "attnkit/problems.h"

namespace attnkit { namespace cpu {

void* weight_alloc(size_t bytes);  // a packed weight's memory (backend.cpp); std::free releases it
void pack_quant(const QuantSource& src, PackedWeight& dst);  // std::bad_alloc when out of memory
void unpack_quant(const PackedWeight& w, float* dst);        // W (N, K) = q * scale, row-major
void unpack_quant_raw(const PackedWeight& w, int8_t* q, float* scale);  // q (N, K), scale (N) or (N, K / group)
void quant_rows(const PackedWeight& w, const int64_t* ids, int64_t n, float* out);  // out (n, K) = W[ids] dequantized

// A quantized GEMM: p.packed is quantized, p.dtype (x, bias, out) float32 or bfloat16.
// 0 done, 1 out of memory, 2 a dtype it does not compute.
struct QuantKernels {
  int (*qgemm)(const GemmProblem& p);
};

namespace generic { const QuantKernels& quant_kernels(); }       // scalar C++
namespace avx2 { const QuantKernels& quant_kernels(); }          // vpmaddubsw + vpmaddwd (sign trick)
namespace avx_vnni { const QuantKernels& quant_kernels(); }      // 256-bit vpdpbusd (VEX)
namespace avx512_vnni { const QuantKernels& quant_kernels(); }   // 512-bit vpdpbusd
namespace amx_int8 { const QuantKernels& quant_kernels(); }      // tdpbusd for 32+ rows, else avx512_vnni's code

}}  // namespace attnkit::cpu
