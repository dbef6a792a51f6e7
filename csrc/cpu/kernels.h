// The CPU kernel table: one instance per instruction set, compiled from kernels.cpp with that
// ISA's flags (cmake/isa.cmake). An entry takes a backend-neutral problem (attnkit/problems.h)
// and switches on its dtype; it returns 0 (done), 1 (out of memory) or 2 (dtype not computed
// on the CPU). Kernels assume valid problems and never throw.
#pragma once
#include "attnkit/problems.h"

namespace attnkit { namespace cpu {

struct Kernels {
  int (*attention)(const AttnProblem&);
  int (*gemm)(const GemmProblem&);
  int (*rows)(const RowProblem&);
};

namespace generic { const Kernels& kernels(); }
namespace avx2 { const Kernels& kernels(); }
namespace avx512 { const Kernels& kernels(); }

}}  // namespace attnkit::cpu
