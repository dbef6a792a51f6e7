// The CPU kernel table: one instance per instruction set, compiled from kernels.cpp with that
// ISA's flags (cmake/isa.cmake). An entry takes a backend-neutral problem (attnkit/problems.h)
// and switches on its dtype; it returns 0 (done), 1 (out of memory) or 2 (dtype not computed
// on the CPU). Kernels assume valid problems and never throw.
#pragma once
#include "attnkit/problems.h"

namespace attnkit { namespace cpu {

struct Kernels {
  int (*attention)(const AttnProblem&);
  int (*gemm)(const GemmProblem&);  // W strided (p.w) or prepacked for this path (p.packed)
  int (*rows)(const RowProblem&);
  // Prepacked weights: the bytes of W (p.N x p.K, p.dtype) in this path's panel layout (and
  // that layout's panel width and depth block); and packing p's W (strided p.w, or p.packed in
  // any layout) into dst, 64-byte aligned, of that size.
  size_t (*packed_bytes)(const GemmProblem& p, int64_t* panel_cols, int64_t* depth_block, int* depth_group);
  int (*pack)(const GemmProblem& p, void* dst);
  int (*rope)(const RopeProblem&);
};

namespace generic { const Kernels& kernels(); }
namespace avx2 { const Kernels& kernels(); }
namespace avx512 { const Kernels& kernels(); }
namespace avx512_bf16 { const Kernels& kernels(); }
namespace amx_bf16 { const Kernels& kernels(); }

}}  // namespace attnkit::cpu
