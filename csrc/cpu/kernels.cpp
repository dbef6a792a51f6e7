// The CPU kernel unit: written once, compiled once per instruction set (cmake/isa.cmake) as
// generic (x86-64 baseline, SSE2), avx2 (AVX2 + FMA), avx512 (AVX-512 F/DQ/BW/VL), avx512_bf16
// (+ AVX512_BF16) and amx_bf16 (+ AMX-TILE/AMX-BF16, ATTNKIT_AMX). The rooms it includes:
//   isa_config.h    every per-ISA constant (vector width, micro-tile, block sizes)
//   simd.h          vectors, exp2, activations, per-thread workspaces
//   micro_kernel.h  the register-tile product shared by GEMM and attention
//   gemm.h          linear: picks the path; half precision GEMM. It includes gemm_dots.h (few rows of an
//                   unpacked weight: dot products) and gemm_blocked.h (the packed panel GEMM)
//   gemm_amx.h      amx_bf16 only: bfloat16 linear on AMX tiles (amx_tiles.h: the tile operations and the
//                   block product, shared with attention_amx.h)
//   attention.h     flash attention: work items, prefill, the split-KV merge; it includes
//                   attention_decode.h (the few-rows tile: decode) and attention_amx.h (amx_bf16 only:
//                   bfloat16's two products on tiles)
//   rowwise.h       softmax, layer_norm, activations
// Everything has internal linkage except this ISA's kernel table, so no inline function
// compiled with AVX-512 flags can be merged by the linker into code that runs on other CPUs
// (checked at build time by cmake/check_isa_symbols.cmake). Only C++ headers without templates
// of their own are included (no Eigen). Kernels assume valid problems (csrc/ops checks them)
// and never throw.
#ifndef ATTNKIT_ISA_NAMESPACE
#error "kernels.cpp is compiled once per ISA with -DATTNKIT_ISA_NAMESPACE=<isa> (see cmake/isa.cmake)"
#endif

#include "cpu/kernels.h"

#include "cpu/attention.h"
#include "cpu/gemm.h"
#if defined(ATTNKIT_AMX)
#include "cpu/gemm_amx.h"
#endif
#include "cpu/rope.h"
#include "cpu/rowwise.h"

namespace attnkit { namespace cpu { namespace ATTNKIT_ISA_NAMESPACE {
namespace {

// One case per dtype; 0 ok, 1 out of memory, 2 a dtype this path does not compute.
int attention(const AttnProblem& p) {
  switch (p.dtype) {
    case DType::f32: return attention_impl<float>(p);
    case DType::f64: return attention_impl<double>(p);
    case DType::f16: return attention_impl<half_t>(p);
    case DType::bf16: return attention_impl<bf16_t>(p);
    default: return 2;
  }
}

int gemm(const GemmProblem& p) {
  switch (p.dtype) {
    case DType::f32: return gemm_impl<float>(p);
    case DType::f64: return gemm_impl<double>(p);
    case DType::f16: return gemm_impl_half<half_t>(p);
    case DType::bf16: return gemm_impl_half<bf16_t>(p);
    default: return 2;
  }
}

int rows(const RowProblem& p) {
  switch (p.dtype) {
    case DType::f32: return rows_impl<float>(p);
    case DType::f64: return rows_impl<double>(p);
    case DType::f16: return rows_impl_half<half_t>(p);
    case DType::bf16: return rows_impl_half<bf16_t>(p);
    default: return 2;
  }
}

size_t packed_bytes(const GemmProblem& p, int64_t* panel_cols, int64_t* depth_block, int* depth_group) {
  switch (p.dtype) {
    case DType::f32: return gemm_packed_bytes<float>(p, panel_cols, depth_block, depth_group);
    case DType::f64: return gemm_packed_bytes<double>(p, panel_cols, depth_block, depth_group);
    case DType::f16: return gemm_packed_bytes<half_t>(p, panel_cols, depth_block, depth_group);
    case DType::bf16: return gemm_packed_bytes<bf16_t>(p, panel_cols, depth_block, depth_group);
    default: return 0;
  }
}

int pack(const GemmProblem& p, void* dst) {
  switch (p.dtype) {
    case DType::f32: return gemm_pack<float>(p, static_cast<float*>(dst));
    case DType::f64: return gemm_pack<double>(p, static_cast<double*>(dst));
    case DType::f16: return gemm_pack<half_t>(p, static_cast<half_t*>(dst));
    case DType::bf16: return gemm_pack<bf16_t>(p, static_cast<bf16_t*>(dst));
    default: return 2;
  }
}

int rope(const RopeProblem& p) {
  switch (p.dtype) {
    case DType::f32: return rope_impl<float>(p);
    case DType::f64: return rope_impl<double>(p);
    case DType::f16: return rope_impl<half_t>(p);
    case DType::bf16: return rope_impl<bf16_t>(p);
    default: return 2;
  }
}

const Kernels kTable = {attention, gemm, rows, packed_bytes, pack, rope};

}  // namespace

const Kernels& kernels() { return kTable; }

}}}  // namespace attnkit::cpu::ATTNKIT_ISA_NAMESPACE
