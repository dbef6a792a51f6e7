// The quantized kernel unit: written once, compiled once per level (cmake/isa.cmake) as generic,
// avx2 (vpmaddubsw), avx_vnni (256-bit vpdpbusd), avx512_vnni (512-bit vpdpbusd) and amx_int8
// (+ tdpbusd tiles, ATTNKIT_AMX). qgemm.h holds the GEMM. Like kernels.cpp, everything has
// internal linkage except this level's table (checked by cmake/check_isa_symbols.cmake).
#ifndef ATTNKIT_ISA_NAMESPACE
#error "qkernels.cpp is compiled once per level with -DATTNKIT_ISA_NAMESPACE=<level> (see cmake/isa.cmake)"
#endif

#include "cpu/quant.h"

#include "cpu/qgemm.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE {
namespace {

int qgemm(const GemmProblem& p) {
  switch (p.dtype) {
    case DType::f32: return qgemm_impl<float>(p);
    case DType::bf16: return qgemm_impl<bf16_t>(p);
    default: return 2;
  }
}

const QuantKernels kQTable = {qgemm};

}  // namespace

const QuantKernels& quant_kernels() { return kQTable; }

}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE
